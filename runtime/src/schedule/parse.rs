//! The textual form of schedules: `NAME(PARAM=VALUE, ...)`, with schedules as positional
//! arguments of `seq` and `[a, b]` lists for its `at`. Takes the text; gives a [`Schedule`] or a
//! [`ScheduleError`] that points at the offending characters, with the nearest name when a name
//! is misspelt.

use super::{HyperSchedule, Schedule};
use std::fmt;

/// A spec that does not parse or whose values do not fit: what is wrong and where.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleError {
    /// The whole text that was parsed.
    pub text: String,
    /// The byte range of `text` the error is about.
    pub span: (usize, usize),
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is something to say (a close name, the accepted names).
    pub hint: Option<String>,
}

impl fmt::Display for ScheduleError {
    /// The message, the text, and a caret line under the span with the hint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = self.span;
        let col = self.text.get(..a).map_or(0, |p| p.chars().count());
        let width = self.text.get(a..b).map_or(1, |p| p.chars().count()).max(1);
        write!(
            f,
            "{}\n  {}\n  {}{}",
            self.message,
            self.text,
            " ".repeat(col),
            "^".repeat(width)
        )?;
        if let Some(h) = &self.hint {
            write!(f, " {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScheduleError {}

/// What a parameter holds.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A step count: an integer >= 0.
    Steps,
    /// A finite number.
    Number,
    /// A list of step counts.
    List,
}

/// A byte range of the text.
type Span = (usize, usize);

/// A parameter: name, kind, default (`None`: required).
type Param = (&'static str, Kind, Option<f64>);

/// Every schedule: its name and parameters.
const SCHEDULES: &[(&str, &[Param])] = &[
    ("constant", &[]),
    (
        "linear",
        &[
            ("steps", Kind::Steps, None),
            ("start", Kind::Number, Some(1.0 / 3.0)),
            ("end", Kind::Number, Some(1.0)),
        ],
    ),
    (
        "warmup",
        &[
            ("steps", Kind::Steps, None),
            ("start", Kind::Number, Some(0.0)),
        ],
    ),
    (
        "cosine",
        &[
            ("total", Kind::Steps, None),
            ("warmup", Kind::Steps, Some(0.0)),
            ("floor", Kind::Number, Some(0.0)),
            ("start", Kind::Number, Some(0.0)),
        ],
    ),
    (
        "step",
        &[
            ("every", Kind::Steps, None),
            ("gamma", Kind::Number, Some(0.1)),
        ],
    ),
    ("exponential", &[("gamma", Kind::Number, None)]),
    ("inverse_time", &[("rate", Kind::Number, None)]),
    (
        "polynomial",
        &[
            ("total", Kind::Steps, None),
            ("power", Kind::Number, Some(1.0)),
        ],
    ),
    (
        "wsd",
        &[
            ("total", Kind::Steps, None),
            ("decay", Kind::Steps, None),
            ("warmup", Kind::Steps, Some(0.0)),
            ("floor", Kind::Number, Some(0.0)),
            ("start", Kind::Number, Some(0.0)),
        ],
    ),
    ("seq", &[("at", Kind::List, None)]),
];

/// The names of the schedules, as written in a spec.
fn schedule_names() -> impl Iterator<Item = &'static str> + Clone {
    SCHEDULES.iter().map(|(n, _)| *n)
}

/// Parses `NAME=SPEC`.
pub(super) fn parse_assignment(arg: &str) -> Result<HyperSchedule, ScheduleError> {
    let mut p = Parser { text: arg, pos: 0 };
    p.skip_ws();
    let (name, span) = p
        .ident()
        .ok_or_else(|| p.error_here("expected a hyper's name, as in `lr=cosine(total=1000)`"))?;
    p.skip_ws();
    if !p.eat('=') {
        return Err(p.error(
            span.1,
            span.1 + 1,
            format!("expected `=` after `{name}`"),
            Some("write NAME=SPEC, as in `lr=cosine(total=1000)`".into()),
        ));
    }
    let schedule = p.spec()?;
    Ok(HyperSchedule { name, schedule })
}

/// Parses a spec alone.
pub(super) fn parse_spec(spec: &str) -> Result<Schedule, ScheduleError> {
    Parser { text: spec, pos: 0 }.spec()
}

/// One argument inside `(...)`.
enum Arg {
    /// `NAME=VALUE`, with the spans of the name and of the value.
    Named {
        name: String,
        name_span: (usize, usize),
        value: Value,
        value_span: (usize, usize),
    },
    /// A schedule (for `seq`), with its span.
    Positional(Schedule, (usize, usize)),
}

enum Value {
    Number(f64),
    List(Vec<(f64, (usize, usize))>),
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, a: usize, b: usize, message: String, hint: Option<String>) -> ScheduleError {
        let end = self.text.len();
        ScheduleError {
            text: self.text.to_string(),
            span: (a.min(end), b.min(end.max(a.min(end) + 1))),
            message,
            hint,
        }
    }

    fn error_here(&self, message: &str) -> ScheduleError {
        let b = self.pos + self.peek().map_or(1, char::len_utf8);
        self.error(self.pos, b, message.to_string(), None)
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += self.peek().map_or(0, char::len_utf8);
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Option<(String, (usize, usize))> {
        self.skip_ws();
        let start = self.pos;
        let rest = &self.text[start..];
        if !rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            return None;
        }
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        self.pos += len;
        Some((
            self.text[start..start + len].to_string(),
            (start, start + len),
        ))
    }

    /// A whole spec: one schedule, then the end of the text.
    fn spec(&mut self) -> Result<Schedule, ScheduleError> {
        let (s, _) = self.schedule()?;
        self.skip_ws();
        if self.pos < self.text.len() {
            return Err(self.error(
                self.pos,
                self.text.len(),
                "unexpected text after the schedule".into(),
                Some("combine schedules with `seq(A, B, at=[STEP])`".into()),
            ));
        }
        Ok(s)
    }

    fn schedule(&mut self) -> Result<(Schedule, (usize, usize)), ScheduleError> {
        self.skip_ws();
        let start = self.pos;
        let Some((name, name_span)) = self.ident() else {
            return Err(self.error_here_hint(
                "expected a schedule",
                format!(
                    "the schedules are: {}",
                    schedule_names().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        let Some((_, params)) = SCHEDULES.iter().find(|(n, _)| *n == name) else {
            return Err(self.error(
                name_span.0,
                name_span.1,
                format!("unknown schedule `{name}`"),
                Some(suggest(&name, schedule_names(), "the schedules are")),
            ));
        };
        let mut args = Vec::new();
        let mut close = name_span.1;
        if self.eat('(') {
            if !self.eat(')') {
                loop {
                    args.push(self.arg()?);
                    if self.eat(')') {
                        break;
                    }
                    if !self.eat(',') {
                        return Err(self.error_here_hint(
                            "expected `,` or `)`",
                            "arguments are separated by commas".into(),
                        ));
                    }
                }
            }
            close = self.pos;
        }
        let span = (start, close);
        let schedule = build(self, &name, name_span, params, args, span)?;
        Ok((schedule, span))
    }

    fn error_here_hint(&self, message: &str, hint: String) -> ScheduleError {
        let mut e = self.error_here(message);
        e.hint = Some(hint);
        e
    }

    fn arg(&mut self) -> Result<Arg, ScheduleError> {
        self.skip_ws();
        let save = self.pos;
        if let Some((name, name_span)) = self.ident() {
            if self.eat('=') {
                self.skip_ws();
                let vstart = self.pos;
                let value = self.value()?;
                return Ok(Arg::Named {
                    name,
                    name_span,
                    value,
                    value_span: (vstart, self.pos),
                });
            }
            self.pos = save;
            let (s, span) = self.schedule()?;
            return Ok(Arg::Positional(s, span));
        }
        Err(self.error_here("expected NAME=VALUE or a schedule"))
    }

    fn value(&mut self) -> Result<Value, ScheduleError> {
        if self.eat('[') {
            let mut items = Vec::new();
            if !self.eat(']') {
                loop {
                    items.push(self.number()?);
                    if self.eat(']') {
                        break;
                    }
                    if !self.eat(',') {
                        return Err(self.error_here("expected `,` or `]`"));
                    }
                }
            }
            return Ok(Value::List(items));
        }
        Ok(Value::Number(self.number()?.0))
    }

    fn number(&mut self) -> Result<(f64, (usize, usize)), ScheduleError> {
        self.skip_ws();
        let start = self.pos;
        let rest = &self.text[start..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '_')))
            .unwrap_or(rest.len());
        let raw = &rest[..len];
        let span = (start, start + len.max(1));
        let bad = |p: &Self| {
            p.error(
                span.0,
                span.1,
                if raw.is_empty() {
                    "expected a number".to_string()
                } else {
                    format!("`{raw}` is not a number")
                },
                Some("write a finite number, as in `1e-5` or `100`".into()),
            )
        };
        if raw.is_empty()
            || raw
                .chars()
                .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        {
            return Err(bad(self));
        }
        let v: f64 = raw.parse().map_err(|_| bad(self))?;
        if !v.is_finite() {
            return Err(bad(self));
        }
        self.pos += len;
        Ok((v, span))
    }
}

/// `did you mean `x`?` for a close name, else the list of names.
fn suggest<'a>(name: &str, names: impl Iterator<Item = &'a str> + Clone, list: &str) -> String {
    let close = names
        .clone()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|&(score, _)| score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c);
    match close {
        Some(c) => format!("did you mean `{c}`?"),
        None => format!("{list}: {}", names.collect::<Vec<_>>().join(", ")),
    }
}

/// Checks the arguments of schedule `name` and builds it.
fn build(
    p: &Parser<'_>,
    name: &str,
    name_span: (usize, usize),
    params: &[Param],
    args: Vec<Arg>,
    span: (usize, usize),
) -> Result<Schedule, ScheduleError> {
    let mut values: Vec<Option<(f64, (usize, usize))>> = vec![None; params.len()];
    let mut list: Option<(Vec<(f64, Span)>, Span)> = None;
    let mut parts: Vec<(Schedule, (usize, usize))> = Vec::new();
    let param_names = || params.iter().map(|(n, _, _)| *n);
    let takes = || {
        if params.is_empty() {
            format!("`{name}` takes no parameters")
        } else {
            format!(
                "`{name}` takes: {}",
                param_names().collect::<Vec<_>>().join(", ")
            )
        }
    };
    for arg in args {
        match arg {
            Arg::Positional(s, sspan) => {
                if name != "seq" {
                    return Err(p.error(
                        sspan.0,
                        sspan.1,
                        format!("`{name}` takes no schedules as arguments"),
                        Some(takes()),
                    ));
                }
                parts.push((s, sspan));
            }
            Arg::Named {
                name: pname,
                name_span: pspan,
                value,
                value_span,
            } => {
                let Some(i) = params.iter().position(|(n, _, _)| *n == pname) else {
                    let hint = match suggest(&pname, param_names(), "") {
                        h if h.starts_with("did you mean") => h,
                        _ => takes(),
                    };
                    return Err(p.error(
                        pspan.0,
                        pspan.1,
                        format!("`{name}` has no parameter `{pname}`"),
                        Some(hint),
                    ));
                };
                if values[i].is_some() || (params[i].1 == Kind::List && list.is_some()) {
                    return Err(p.error(
                        pspan.0,
                        pspan.1,
                        format!("`{pname}` is given twice"),
                        None,
                    ));
                }
                let kind = params[i].1;
                match (kind, value) {
                    (Kind::List, Value::List(items)) => {
                        for &(v, s) in &items {
                            check_steps(p, v, s)?;
                        }
                        list = Some((items, value_span));
                        values[i] = Some((0.0, value_span));
                    }
                    (Kind::List, Value::Number(_)) => {
                        return Err(p.error(
                            value_span.0,
                            value_span.1,
                            format!("`{pname}` takes a list of steps"),
                            Some(format!("write `{pname}=[100]` or `{pname}=[100, 500]`")),
                        ))
                    }
                    (_, Value::List(_)) => {
                        return Err(p.error(
                            value_span.0,
                            value_span.1,
                            format!("`{pname}` takes one number, not a list"),
                            None,
                        ))
                    }
                    (Kind::Steps, Value::Number(v)) => {
                        check_steps(p, v, value_span)?;
                        values[i] = Some((v, value_span));
                    }
                    (Kind::Number, Value::Number(v)) => values[i] = Some((v, value_span)),
                }
            }
        }
    }
    for (i, (pname, _, default)) in params.iter().enumerate() {
        if values[i].is_none() {
            match default {
                Some(d) => values[i] = Some((*d, name_span)),
                None => {
                    return Err(p.error(
                        name_span.0,
                        name_span.1,
                        format!("`{name}` needs `{pname}`"),
                        Some(example(name)),
                    ))
                }
            }
        }
    }
    let get = |n: &str| -> (f64, (usize, usize)) {
        params
            .iter()
            .position(|(pn, _, _)| *pn == n)
            .and_then(|i| values[i])
            .unwrap_or((0.0, span))
    };
    let steps = |n: &str| get(n).0 as u64;
    let at_least = |n: &str, min: f64, why: &str| -> Result<f64, ScheduleError> {
        let (v, s) = get(n);
        if v < min {
            Err(p.error(s.0, s.1, format!("`{n}` must be {why}"), None))
        } else {
            Ok(v)
        }
    };
    let positive = |n: &str| -> Result<f64, ScheduleError> {
        let (v, s) = get(n);
        if v > 0.0 {
            Ok(v)
        } else {
            Err(p.error(s.0, s.1, format!("`{n}` must be greater than 0"), None))
        }
    };
    let s = match name {
        "constant" => Schedule::Constant,
        "linear" => {
            at_least("steps", 1.0, "at least 1")?;
            Schedule::Linear {
                start: at_least("start", 0.0, "at least 0")?,
                end: at_least("end", 0.0, "at least 0")?,
                steps: steps("steps"),
            }
        }
        "warmup" => {
            at_least("steps", 1.0, "at least 1")?;
            Schedule::Linear {
                start: at_least("start", 0.0, "at least 0")?,
                end: 1.0,
                steps: steps("steps"),
            }
        }
        "cosine" => {
            let (total, warmup) = (steps("total"), steps("warmup"));
            if warmup >= total {
                let s = get("warmup").1;
                return Err(p.error(
                    s.0,
                    s.1,
                    format!("`warmup` ({warmup}) must be less than `total` ({total})"),
                    Some("`total` counts the warmup steps too".into()),
                ));
            }
            Schedule::Cosine {
                total,
                warmup,
                floor: get("floor").0,
                start: at_least("start", 0.0, "at least 0")?,
            }
        }
        "step" => {
            at_least("every", 1.0, "at least 1")?;
            Schedule::Step {
                every: steps("every"),
                gamma: positive("gamma")?,
            }
        }
        "exponential" => Schedule::Exponential {
            gamma: positive("gamma")?,
        },
        "inverse_time" => Schedule::InverseTime {
            rate: at_least("rate", 0.0, "at least 0")?,
        },
        "polynomial" => {
            at_least("total", 1.0, "at least 1")?;
            Schedule::Polynomial {
                total: steps("total"),
                power: at_least("power", 0.0, "at least 0")?,
            }
        }
        "wsd" => {
            let (total, warmup, decay) = (steps("total"), steps("warmup"), steps("decay"));
            if warmup.saturating_add(decay) > total {
                let s = get("decay").1;
                return Err(p.error(
                    s.0,
                    s.1,
                    format!("`warmup` + `decay` ({warmup} + {decay}) exceeds `total` ({total})"),
                    Some("`total` counts the warmup and decay steps too".into()),
                ));
            }
            Schedule::WarmupStableDecay {
                warmup,
                decay,
                total,
                floor: get("floor").0,
                start: at_least("start", 0.0, "at least 0")?,
            }
        }
        "seq" => {
            let (at, at_span) = list.unwrap_or((Vec::new(), span));
            if parts.len() < 2 {
                return Err(p.error(
                    span.0,
                    span.1,
                    "`seq` needs at least two schedules".into(),
                    Some(example("seq")),
                ));
            }
            if at.len() + 1 != parts.len() {
                return Err(p.error(
                    at_span.0,
                    at_span.1,
                    format!(
                        "{} schedules need {} steps in `at`, found {}",
                        parts.len(),
                        parts.len() - 1,
                        at.len()
                    ),
                    Some(
                        "`at` lists the step at which each schedule after the first begins".into(),
                    ),
                ));
            }
            let mut prev = 0.0;
            for &(v, s) in &at {
                if v <= prev {
                    return Err(p.error(
                        s.0,
                        s.1,
                        "the steps in `at` must be greater than 0 and increasing".into(),
                        None,
                    ));
                }
                prev = v;
            }
            Schedule::Sequence {
                parts: parts.into_iter().map(|(s, _)| s).collect(),
                at: at.into_iter().map(|(v, _)| v as u64).collect(),
            }
        }
        _ => {
            return Err(p.error(
                name_span.0,
                name_span.1,
                format!("unknown schedule `{name}`"),
                None,
            ))
        }
    };
    Ok(s)
}

fn check_steps(p: &Parser<'_>, v: f64, s: (usize, usize)) -> Result<(), ScheduleError> {
    if v < 0.0 || v.fract() != 0.0 || v > 9.0e15 {
        return Err(p.error(
            s.0,
            s.1,
            format!("a step count must be a whole number from 0 up, not {v}"),
            None,
        ));
    }
    Ok(())
}

/// A correct use of schedule `name`.
fn example(name: &str) -> String {
    let e = match name {
        "linear" => "linear(start=0.1, end=1, steps=100)",
        "warmup" => "warmup(steps=100)",
        "cosine" => "cosine(total=1000, warmup=100, floor=1e-5)",
        "step" => "step(every=300, gamma=0.1)",
        "exponential" => "exponential(gamma=0.999)",
        "inverse_time" => "inverse_time(rate=0.01)",
        "polynomial" => "polynomial(total=1000, power=2)",
        "wsd" => "wsd(total=1000, warmup=100, decay=200)",
        "seq" => "seq(warmup(steps=100), cosine(total=900), at=[100])",
        _ => "constant",
    };
    format!("for example `{e}`")
}
