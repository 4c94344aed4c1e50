//! Robustness: the parser, the checker and every flag specialization survive thousands of mutated
//! stdlib files and pathological nesting without panicking or overflowing the stack, and every
//! failure is a diagnostic whose spans lie inside the file.
//!
//! Everything runs on a thread with a 2 MiB stack (the default for test threads and for spawned
//! threads), so a recursion that only fits in a larger main-thread stack still fails here. The
//! mutations come from a fixed-seed PRNG: a failure reproduces exactly.

use optc_compiler::{stdlib, CompileOptions, Diagnostics, RankClass, Rule};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The stack of test threads and `std::thread::spawn`.
const STACK: usize = 2 * 1024 * 1024;

/// SplitMix64: small, fixed-seed, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Checks that every span of `d` lies inside `source` (one past the end for an unexpected end of
/// file) and that rendering works and names the file.
fn check_diagnostics(d: &Diagnostics, source_len: usize, what: &str) -> Result<(), String> {
    if d.items().is_empty() {
        return Err(format!("{what}: an error result with no diagnostic"));
    }
    for item in d.items() {
        let spans = std::iter::once(&item.primary).chain(item.secondary.iter());
        for (span, _) in spans {
            if span.start > span.end || span.end as usize > source_len + 1 {
                return Err(format!(
                    "{what}: {} span {}..{} outside 0..{source_len}",
                    item.code, span.start, span.end
                ));
            }
        }
    }
    let text = d.render(false);
    if !text.contains(&format!("{}:", d.file_name())) {
        return Err(format!("{what}: rendering has no location:\n{text}"));
    }
    Ok(())
}

/// Parses, checks and specializes `bytes` for every flag set; any panic or malformed diagnostic
/// is an error naming `what`. Gives whether the rule was accepted.
fn exercise(bytes: &[u8], what: &str) -> Result<bool, String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<bool, String> {
        // The lossy text has at least as many bytes as the input; spans index it.
        let shown_len = String::from_utf8_lossy(bytes).len();
        match Rule::parse_bytes("fuzz.opt", bytes) {
            Ok(rule) => {
                let ranks: &[RankClass] = if rule.uses_rank() {
                    &[RankClass::Matrix, RankClass::Vector]
                } else {
                    &[RankClass::Any]
                };
                for flags in rule.flag_sets() {
                    for &rank in ranks {
                        let options = CompileOptions {
                            clip: false,
                            rank,
                            ..Default::default()
                        };
                        match rule.specialize_values_with(&flags, &options) {
                            Ok(k) => k.validate().map_err(|e| {
                                format!("{what}: {flags:?} {rank:?}: invalid kernel: {e}")
                            })?,
                            Err(e) => {
                                return Err(format!(
                                    "{what}: parse accepted it but {flags:?} {rank:?} fails: {e}"
                                ))
                            }
                        }
                    }
                }
                if !rule.warnings().is_empty() {
                    check_diagnostics(rule.warnings(), shown_len, what)?;
                }
                Ok(true)
            }
            Err(d) => {
                if !d.has_errors() {
                    return Err(format!("{what}: rejected without an error"));
                }
                check_diagnostics(&d, shown_len, what).map(|()| false)
            }
        }
    }));
    match outcome {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("{what}: panicked: {msg}"))
        }
    }
}

/// Runs `f` on a thread with the default 2 MiB stack. A stack overflow aborts the whole test
/// binary, which fails the test.
fn on_small_stack(f: impl FnOnce() -> Vec<String> + Send + 'static) -> Vec<String> {
    let handle = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot spawn: {e}"));
    handle
        .join()
        .unwrap_or_else(|_| vec!["the worker thread panicked".into()])
}

/// Byte ranges of the tokens of `s`: names and numbers, punctuation, one character each.
fn tokens(s: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_' || s[i] == b'.') {
                i += 1;
            }
        } else {
            i += 1;
        }
        out.push((start, i));
    }
    out
}

const GARBAGE: &[&[u8]] = &[
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b"\0",
    "µ".as_bytes(),
    "\u{2028}".as_bytes(),
    "🦀".as_bytes(),
    "\u{feff}".as_bytes(),
    b"{",
    b"}",
    b"(",
    b")",
    b"?",
    b":",
    b"^",
    b"//",
    b"///",
    b"\r",
    b"1e999",
    b"0.",
    b".5e-3",
    b"if",
    b"else",
    b"let",
    b"state",
    b"scalar",
    b"flag",
    b"hyper",
    b"update",
    b"optimizer",
    b"p",
    b"g",
    b"t",
    b"=",
    b"==",
    b";",
    b",",
    b"!",
    b"&&",
    b"||",
    b"sqrt(",
    b"-",
];

/// The mutated variants of one stdlib file.
fn mutants(src: &[u8], rng: &mut Rng) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    // Truncations at every 7th byte.
    for n in (0..src.len()).step_by(7) {
        out.push((format!("truncated at {n}"), src[..n].to_vec()));
    }
    let toks = tokens(src);
    for _ in 0..60 {
        let (a, b) = toks[rng.below(toks.len())];
        let mut v = src.to_vec();
        v.drain(a..b);
        out.push((format!("token {a}..{b} deleted"), v));
        let (a, b) = toks[rng.below(toks.len())];
        let mut v = src.to_vec();
        let dup = src[a..b].to_vec();
        v.splice(b..b, dup);
        out.push((format!("token {a}..{b} duplicated"), v));
        let (a, b) = toks[rng.below(toks.len())];
        let (c, d) = toks[rng.below(toks.len())];
        let mut v = src.to_vec();
        let other = src[c..d].to_vec();
        v.splice(a..b, other);
        out.push((format!("token {a}..{b} replaced by {c}..{d}"), v));
    }
    for _ in 0..40 {
        let at = rng.below(src.len() + 1);
        let junk = GARBAGE[rng.below(GARBAGE.len())];
        let mut v = src.to_vec();
        v.splice(at..at, junk.iter().copied());
        out.push((format!("{junk:?} inserted at {at}"), v));
    }
    for _ in 0..40 {
        let mut v = src.to_vec();
        let flips = 1 + rng.below(4);
        let mut at = Vec::new();
        for _ in 0..flips {
            let i = rng.below(v.len());
            v[i] ^= 1 << rng.below(8);
            at.push(i);
        }
        out.push((format!("bits flipped at {at:?}"), v));
    }
    out
}

#[test]
fn mutated_stdlib_files() {
    let failures = on_small_stack(|| {
        let mut rng = Rng(0x6f70_7463);
        let mut failures = Vec::new();
        let (mut total, mut accepted) = (0, 0);
        for (name, src) in stdlib::RULES {
            for (what, bytes) in mutants(src.as_bytes(), &mut rng) {
                total += 1;
                match exercise(&bytes, &format!("{name}: {what}")) {
                    Ok(ok) => accepted += usize::from(ok),
                    Err(e) => failures.push(e),
                }
            }
        }
        // Enough inputs, and enough of them reach the passes.
        assert!(total > 3000, "only {total} mutants");
        assert!(accepted > 300, "only {accepted} of {total} mutants compile");
        failures
    });
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A rule whose update is `p = EXPR`, with the usual declarations in scope.
fn with_expr(expr: &str) -> String {
    format!(
        "optimizer deep\nhyper lr = 1e-3\nflag f = true\nstate m = 0\n\
         update {{\n    m = m + g\n    p = {expr}\n}}\n"
    )
}

/// A rule whose update block is `stmts`.
fn with_stmts(stmts: &str) -> String {
    format!("optimizer deep\nhyper lr = 1e-3\nflag f = true\nstate m = 0\nupdate {{\n{stmts}\n}}\n")
}

/// Pathological nesting and very long chains, each at sizes below and far above the nesting
/// limit.
fn deep_inputs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for n in [10, 63, 64, 65, 255, 256, 1000, 5000, 20000] {
        let parens = format!("{}g{}", "(".repeat(n), ")".repeat(n));
        out.push((format!("{n} parens"), with_expr(&parens)));
        out.push((format!("{n} unclosed parens"), with_expr(&"(".repeat(n))));
        out.push((
            format!("{n} closing parens"),
            with_expr(&format!("g{}", ")".repeat(n))),
        ));
        out.push((
            format!("{n} nested blocks"),
            with_stmts(&format!(
                "{}p = g\n{}",
                "if f {\n".repeat(n),
                "}\n".repeat(n)
            )),
        ));
        out.push((
            format!("{n} unclosed blocks"),
            with_stmts(&"if f {\n".repeat(n)),
        ));
        out.push((
            format!("{n} nested ternaries"),
            with_expr(&format!("{}g", "g > 0 ? lr : ".repeat(n))),
        ));
        out.push((
            format!("{n} ternaries in the middle"),
            with_expr(&format!("{}g{}", "f ? ".repeat(n), " : g".repeat(n))),
        ));
        out.push((
            format!("{n} prefix minus"),
            with_expr(&format!("{}g", "-".repeat(n))),
        ));
        out.push((
            format!("{n} spaced minus"),
            with_expr(&format!("{}g", "- ".repeat(n))),
        ));
        out.push((
            format!("{n} prefix not"),
            with_expr(&format!("{}f ? g : p", "!".repeat(n))),
        ));
        out.push((
            format!("{n} ^ chain"),
            with_expr(&format!("g{}", " ^ 1".repeat(n))),
        ));
        out.push((
            format!("{n} ^ -chain"),
            with_expr(&format!("g{}", " ^ -1".repeat(n))),
        ));
        out.push((
            format!("{n} + chain"),
            with_expr(&format!("g{}", " + lr".repeat(n))),
        ));
        out.push((
            format!("{n} * chain"),
            with_expr(&format!("p{}", " * g".repeat(n))),
        ));
        out.push((
            format!("{n} && chain"),
            with_expr(&format!("f{} ? g : p", " && f".repeat(n))),
        ));
        out.push((
            format!("{n} comparisons"),
            with_expr(&format!("g{}", " < g".repeat(n))),
        ));
        out.push((
            format!("{n} nested calls"),
            with_expr(&format!("{}g{}", "abs(".repeat(n), ")".repeat(n))),
        ));
        out.push((
            format!("{n} let chain"),
            with_stmts(&format!(
                "let x = g\n{}p = p - lr * x",
                "x = x * 2 + 1\n".repeat(n)
            )),
        ));
        out.push((
            format!("{n} else-if chain"),
            with_stmts(&format!(
                "if f {{ p = g }}{} else {{ p = p }}",
                " else if f { p = p - g }".repeat(n)
            )),
        ));
        out.push((
            format!("{n} sequential ifs"),
            with_stmts(&format!("{}p = m", "if f { m = m * 2 }\n".repeat(n))),
        ));
        out.push((
            format!("{n} hyper declarations"),
            format!(
                "optimizer many\n{}update {{ p = p - h0 * g }}\n",
                (0..n)
                    .map(|i| format!("hyper h{i} = {i}\n"))
                    .collect::<String>()
            ),
        ));
        out.push((
            format!("{n} parens in a hyper default"),
            format!(
                "optimizer deep\nhyper lr = {}1{}\nupdate {{ p = p - lr * g }}\n",
                "(".repeat(n),
                ")".repeat(n)
            ),
        ));
        out.push((
            format!("{n} minus in a state init"),
            format!(
                "optimizer deep\nstate m = {}1\nupdate {{ m = m + g\n p = p - m }}\n",
                "-".repeat(n)
            ),
        ));
        out.push((
            format!("{n} nots in a state condition"),
            format!(
                "optimizer deep\nflag f = false\nstate m = 0 if {}f\nupdate {{ m = m + g\n p = p - (f ? m : g) }}\n",
                "!".repeat(n)
            ),
        ));
    }
    out.push(("only comments".into(), "// a\n/// b\n".repeat(1000)));
    out.push((
        "unterminated comment at end".into(),
        "optimizer x update { p = g } //".into(),
    ));
    out
}

#[test]
fn deep_nesting_and_long_chains() {
    let failures = on_small_stack(|| {
        deep_inputs()
            .into_iter()
            .filter_map(|(what, src)| exercise(src.as_bytes(), &what).err())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
