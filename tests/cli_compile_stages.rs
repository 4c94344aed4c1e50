//! `optc compile --emit ir` on staged rules: the stages and bytes it prints, `--clip`, and
//! `--rank` for rules that read `matrix`.

use std::process::{Command, Output};

fn compile(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_optc"))
        .arg("compile")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run optc: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "optc panicked:\n{err}");
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn staged_rules_print_their_stages_and_bytes() {
    let o = compile(&["lamb", "--emit", "ir"]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(text.contains("stage 1 (f32, per element; reads p m v; writes p; 16 bytes/element)"));
    assert!(
        text.contains("total: 40 bytes/element in 2 stages"),
        "{text}"
    );
    let o = compile(&["adamw", "--emit", "ir", "--clip"]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(text.contains("hyper max_grad_norm = 1.0"), "{text}");
    assert!(text.contains("over step, stage 0"), "{text}");
    assert!(
        text.contains("total: 32 bytes/element in 2 stages"),
        "{text}"
    );
}

#[test]
fn a_rule_reading_matrix_needs_a_rank() {
    let o = compile(&["lars", "--emit", "ir"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--rank matrix"), "{err}");
    let o = compile(&["lars", "--emit", "ir", "--rank", "matrix"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("for matrices"));
    assert!(stdout(&o).contains("in 2 stages"));
    let o = compile(&["lars", "--emit", "ir", "--rank", "vector"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("total: 20 bytes/element in 1 stage"));
}
