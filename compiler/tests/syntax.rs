//! Syntax accepted beyond the stdlib's style.

use optc_compiler::Rule;

#[test]
fn semicolons_may_end_declarations_and_statements() {
    let src =
        "optimizer sgd;\nhyper lr = 1e-3;\nstate m = 0;;\nupdate { m = g; p = p - lr * m; };\n";
    let rule = Rule::parse("semi.opt", src).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(rule.hypers()[0].name, "lr");
    assert!(rule.specialize(&[]).is_ok());
}
