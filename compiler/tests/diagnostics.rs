//! The diagnostics corpus: every file in `tests/in/*.opt` is one malformed (or suspicious) rule.
//! Each is parsed and checked, and the plain-text rendering of its diagnostics (file:line:col,
//! carets, hints) is snapshotted. Files named `warn_*.opt` must compile with at least one warning
//! and no error; every other file must give at least one error. A few inputs that cannot live in a
//! text file (bad UTF-8, generated deep nesting) are built here.

use optc_compiler::{Diagnostics, Rule, Severity};

/// Parses `bytes` as the rule file `name`; gives every diagnostic, errors or warnings.
fn diagnose(name: &str, bytes: &[u8]) -> Diagnostics {
    match Rule::parse_bytes(name, bytes) {
        Ok(rule) => rule.warnings().clone(),
        Err(d) => d,
    }
}

/// Every span lies inside the source and on character boundaries.
fn assert_spans_valid(d: &Diagnostics, source: &[u8]) {
    let text = String::from_utf8_lossy(source);
    for item in d.items() {
        let spans = std::iter::once(&item.primary).chain(item.secondary.iter());
        for (span, _) in spans {
            let (s, e) = (span.start as usize, span.end as usize);
            assert!(s <= e, "{}: span {s}..{e} is reversed", item.code);
            // An unexpected end of file may point one past the last byte.
            assert!(
                e <= text.len() + 1,
                "{}: span {s}..{e} past the end ({})",
                item.code,
                text.len()
            );
            if e <= text.len() {
                assert!(
                    text.is_char_boundary(s) && text.is_char_boundary(e),
                    "{}: span {s}..{e} splits a character",
                    item.code
                );
            }
        }
    }
}

fn count(d: &Diagnostics, severity: Severity) -> usize {
    d.items().iter().filter(|x| x.severity == severity).count()
}

#[test]
fn corpus() {
    insta::glob!("in/*.opt", |path| {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
        let name = format!("in/{stem}.opt");
        let d = diagnose(&name, &bytes);
        assert_spans_valid(&d, &bytes);
        let text = d.render(false);
        if stem.starts_with("warn_") {
            assert_eq!(count(&d, Severity::Error), 0, "{name}:\n{text}");
            assert!(count(&d, Severity::Warning) > 0, "{name}: no warning");
        } else {
            assert!(
                count(&d, Severity::Error) > 0,
                "{name} compiled without error:\n{text}"
            );
        }
        // Every diagnostic points at its place.
        assert!(
            text.contains(&format!("{name}:")),
            "{name}: no location:\n{text}"
        );
        insta::assert_snapshot!(text);
    });
}

#[test]
fn non_utf8_bytes() {
    let bytes = b"optimizer sgd\nhyper lr = 1e-2 // caf\xe9\nupdate { p = p - lr * g }\n";
    let d = diagnose("latin1.opt", bytes);
    assert_spans_valid(&d, bytes);
    assert_eq!(d.items()[0].code, "E0005");
    assert_eq!(d.items()[0].primary.0.start, 36);
    insta::assert_snapshot!(d.render(false));
}

#[test]
fn non_utf8_first_byte() {
    let bytes = b"\xff\xfeo\x00p\x00t\x00";
    let d = diagnose("utf16.opt", bytes);
    assert_spans_valid(&d, bytes);
    assert_eq!(d.items()[0].code, "E0005");
    assert_eq!(d.items()[0].primary.0.start, 0);
}

#[test]
fn deep_parentheses() {
    let depth = 3000;
    let src = format!(
        "optimizer deep\nupdate {{\n    p = {}g{}\n}}\n",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    let d = diagnose("deep.opt", src.as_bytes());
    assert_spans_valid(&d, src.as_bytes());
    assert_eq!(d.items().len(), 1, "{}", d.render(false));
    assert_eq!(d.items()[0].code, "E0002");
    // The caret is on the first bracket past the limit (the update block is the first level).
    let limit = optc_compiler::syntax::MAX_DEPTH;
    let at = src.find('(').unwrap_or(0) + limit - 1;
    assert_eq!(d.items()[0].primary.0.start as usize, at);
    let text = d.render(false);
    assert!(text.contains("deep.opt:3:"), "{text}");
}

#[test]
fn nesting_at_the_limit_is_accepted() {
    let depth = optc_compiler::syntax::MAX_DEPTH - 1; // the update block is one level
    let src = format!(
        "optimizer deep\nupdate {{\n    p = {}g{}\n}}\n",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    if let Err(d) = Rule::parse("deep.opt", &src) {
        panic!("{d}");
    }
}

#[test]
fn deep_blocks() {
    let depth = 3000;
    let src = format!(
        "optimizer deep\nflag f = true\nupdate {{\n{}p = g\n{}}}\n",
        "if f {\n".repeat(depth),
        "}\n".repeat(depth)
    );
    let d = diagnose("blocks.opt", src.as_bytes());
    assert_eq!(d.items().len(), 1, "{}", d.render(false));
    assert_eq!(d.items()[0].code, "E0002");
}

#[test]
fn long_operator_chain() {
    let src = format!(
        "optimizer long\nhyper lr = 1e-3\nupdate {{\n    p = g{}\n}}\n",
        " + lr".repeat(300)
    );
    let d = diagnose("chain.opt", src.as_bytes());
    assert_eq!(d.items().len(), 1, "{}", d.render(false));
    assert_eq!(d.items()[0].code, "E0002");
    // The caret is on the operand that makes the tree one level too tall.
    let limit = optc_compiler::syntax::MAX_EXPR_DEPTH;
    let at = src.find("g +").unwrap_or(0) + 1 + limit * " + lr".len() - 2;
    assert_eq!(
        d.items()[0].primary.0.start as usize,
        at,
        "{}",
        d.render(false)
    );
}

#[test]
fn long_else_if_chain() {
    let src = format!(
        "optimizer long\nflag f = true\nupdate {{\n    if f {{ p = g }}{}\n}}\n",
        " else if f { p = -g }".repeat(100)
    );
    let d = diagnose("chain.opt", src.as_bytes());
    assert_eq!(d.items().len(), 1, "{}", d.render(false));
    assert_eq!(d.items()[0].code, "E0002");
    insta::assert_snapshot!(d.render(false));
}
