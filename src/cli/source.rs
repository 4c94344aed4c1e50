//! Loading a rule named on the command line: a `.opt` path, or a stdlib rule's name.

use optc_compiler::{stdlib, Diagnostics, Rule};
use std::fmt;
use std::path::Path;

/// Why a rule could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read.
    Io(String),
    /// The rule has errors; the rendered diagnostics.
    Diagnostics(Diagnostics),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io(m) => f.write_str(m),
            LoadError::Diagnostics(d) => {
                write!(f, "{}", d.render(super::color_stderr()).trim_end())
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Loads `spec`: a path to a `.opt` file, or the name of a stdlib rule (`adamw`).
pub fn load_rule(spec: &str) -> Result<Rule, LoadError> {
    load_rule_source(spec).map(|(rule, _)| rule)
}

/// Like [`load_rule`], and the source text it was parsed from (for timing the compiler on it).
pub fn load_rule_source(spec: &str) -> Result<(Rule, String), LoadError> {
    let path = Path::new(spec);
    // A bare stdlib name stays a stdlib name even if a folder of that name is in the way.
    let looks_like_path =
        spec.ends_with(".opt") || spec.contains(std::path::MAIN_SEPARATOR) || spec.contains('/');
    if path.is_file() || looks_like_path {
        let bytes =
            std::fs::read(path).map_err(|e| LoadError::Io(format!("cannot read `{spec}`: {e}")))?;
        let rule = Rule::parse_bytes(spec, &bytes).map_err(LoadError::Diagnostics)?;
        // Parsing succeeded, so the bytes are UTF-8.
        return Ok((rule, String::from_utf8_lossy(&bytes).into_owned()));
    }
    if let (Some(result), Some(source)) = (stdlib::rule(spec), stdlib::source(spec)) {
        return result
            .map(|rule| (rule, source.to_string()))
            .map_err(LoadError::Diagnostics);
    }
    let names: Vec<&str> = stdlib::names().collect();
    let mut msg = format!("no such file `{spec}`, and no stdlib rule of that name");
    if let Some(s) = optc_compiler::diag::did_you_mean(spec, names.iter().copied()) {
        msg.push_str(&format!(" (did you mean `{s}`?)"));
    }
    msg.push_str(&format!("; the stdlib rules are: {}", names.join(", ")));
    Err(LoadError::Io(msg))
}

/// Applies the `--set NAME=N` of `sets` that name an integer flag of `rule` (a compile-time
/// count such as Muon's `ns_steps`): returns the rule lowered with those counts, and the other
/// settings for [`split_sets`].
pub fn apply_counts(rule: Rule, sets: &[String]) -> Result<(Rule, Vec<String>), String> {
    let mut counts: Vec<(String, u32)> = Vec::new();
    let mut rest = Vec::new();
    for s in sets {
        let count = s
            .split_once('=')
            .map(|(n, v)| (n.trim(), v))
            .filter(|(n, _)| rule.counts().iter().any(|(c, _)| c == n));
        match count {
            Some((name, value)) => {
                let v = optc_compiler::check::parse_count(value)
                    .map_err(|why| format!("`--set {s}`: {why}"))?;
                if counts.iter().any(|(n, _)| n == name) {
                    return Err(format!("`--set {name}` is given twice"));
                }
                counts.push((name.to_string(), v));
            }
            None => rest.push(s.clone()),
        }
    }
    if counts.is_empty() {
        return Ok((rule, rest));
    }
    let counts: Vec<(&str, u32)> = counts.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let rule = rule.with_counts(&counts).map_err(|e| e.to_string())?;
    Ok((rule, rest))
}

/// Flag and hyper settings from `--set`: `(flags, hypers)`.
pub type Settings = (Vec<(String, bool)>, Vec<(String, f64)>);

/// The optimizer option `--set max_grad_norm=V` sets for any rule: clip by the global gradient
/// norm, as `torch.nn.utils.clip_grad_norm_(params, V)` before the step.
pub const MAX_GRAD_NORM: &str = "max_grad_norm";

/// Parses `NAME=VALUE` pairs from `--set`, split into flags (`true`/`false` for a declared flag)
/// and hypers (numbers). `max_grad_norm` is accepted for every rule (a positive number) and comes
/// back among the hypers; [`take_max_grad_norm`] takes it out.
pub fn split_sets(rule: &Rule, sets: &[String]) -> Result<Settings, String> {
    let mut flags = Vec::new();
    let mut hypers = Vec::new();
    for s in sets {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| format!("`--set {s}`: expected NAME=VALUE, as in `--set lr=1e-4`"))?;
        let (name, value) = (name.trim(), value.trim());
        if rule.flags().iter().any(|f| f.name == name) {
            let v = match value {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(format!("`--set {s}`: flag `{name}` takes true or false")),
            };
            if flags.iter().any(|(n, _): &(String, bool)| n == name) {
                return Err(format!("`--set {name}` is given twice"));
            }
            flags.push((name.to_string(), v));
        } else if rule.hypers().iter().any(|h| h.name == name) || name == MAX_GRAD_NORM {
            let v: f64 = value
                .parse()
                .map_err(|_| format!("`--set {s}`: hyper `{name}` takes a number"))?;
            if !v.is_finite() {
                return Err(format!("`--set {s}`: hyper `{name}` must be finite"));
            }
            if name == MAX_GRAD_NORM && v <= 0.0 {
                return Err(format!("`--set {s}`: `{name}` must be positive"));
            }
            if hypers.iter().any(|(n, _): &(String, f64)| n == name) {
                return Err(format!("`--set {name}` is given twice"));
            }
            hypers.push((name.to_string(), v));
        } else {
            let all = rule
                .flags()
                .iter()
                .map(|f| f.name.as_str())
                .chain(rule.counts().iter().map(|(n, _)| n.as_str()))
                .chain(rule.hypers().iter().map(|h| h.name.as_str()));
            let mut msg = format!(
                "`--set {s}`: rule `{}` has no hyper or flag `{name}`",
                rule.name()
            );
            if let Some(c) = optc_compiler::diag::did_you_mean(name, all) {
                msg.push_str(&format!(" (did you mean `{c}`?)"));
            }
            return Err(msg);
        }
    }
    Ok((flags, hypers))
}

/// Takes `max_grad_norm` out of parsed hypers, unless the rule declares a hyper of that name.
pub fn take_max_grad_norm(rule: &Rule, hypers: &mut Vec<(String, f64)>) -> Option<f64> {
    if rule.hypers().iter().any(|h| h.name == MAX_GRAD_NORM) {
        return None;
    }
    let i = hypers.iter().position(|(n, _)| n == MAX_GRAD_NORM)?;
    Some(hypers.remove(i).1)
}
