//! `optc check`: exit codes, located diagnostics on stderr, and never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `optc check ARGS` from the repository root, without colour.
fn check(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_optc"))
        .arg("check")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run optc: {e}"));
    for (name, stream) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(stream);
        assert!(
            !text.contains("panicked"),
            "optc panicked ({name}):\n{text}"
        );
    }
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The `.opt` files directly under `dir` (relative to the repository root), sorted.
fn opt_files(dir: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(root.join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "opt"))
        .filter_map(|p| {
            p.file_name()
                .map(|n| format!("{dir}/{}", n.to_string_lossy()))
        })
        .collect();
    files.sort();
    files
}

/// A file under the test's scratch directory with `bytes` as contents.
fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

#[test]
fn stdlib_checks_clean() {
    let files = opt_files("stdlib");
    assert!(files.len() >= 10, "{files:?}");
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let out = check(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        out.stderr.is_empty(),
        "stdlib has diagnostics:\n{}",
        stderr(&out)
    );
}

#[test]
fn malformed_file_exits_1_with_location() {
    let file = "compiler/tests/in/unknown_name_suggest.opt";
    let out = check(&[file]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("{file}:9:9")), "{err}");
    assert!(err.contains("error[E0104]: unknown name `beta`"), "{err}");
    assert!(err.contains("did you mean `beta1`?"), "{err}");
    assert!(!err.contains('\u{1b}'), "colour on a pipe:\n{err}");
}

#[test]
fn missing_file_exits_1_with_a_clear_message() {
    let out = check(&["no/such/rule.opt"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot read `no/such/rule.opt`"), "{err}");
}

#[test]
fn directory_argument_is_an_error_not_a_panic() {
    let out = check(&["stdlib"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read `stdlib`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn warnings_alone_exit_0() {
    let file = "compiler/tests/in/warn_state_never_written.opt";
    let out = check(&[file]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("warning[W0001]"), "{err}");
    assert!(err.contains(&format!("{file}:8:19")), "{err}");
}

#[test]
fn one_bad_file_among_good_ones_fails_and_is_named() {
    let out = check(&[
        "stdlib/adam.opt",
        "compiler/tests/in/assign_g.opt",
        "stdlib/sgd.opt",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("compiler/tests/in/assign_g.opt:7:5"), "{err}");
    assert!(!err.contains("stdlib/"), "{err}");
}

#[test]
fn whole_diagnostics_corpus_fails_located_without_panic() {
    let files: Vec<String> = opt_files("compiler/tests/in")
        .into_iter()
        .filter(|f| !f.contains("/warn_"))
        .collect();
    assert!(files.len() >= 25);
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let out = check(&args);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for f in &files {
        assert!(
            err.contains(&format!("{f}:")),
            "no diagnostic for {f}:\n{err}"
        );
    }
}

#[test]
fn non_utf8_file_is_located() {
    let path = scratch("latin1.opt", b"optimizer caf\xe9\nupdate { p = g }\n");
    let arg = path.to_string_lossy().into_owned();
    let out = check(&[&arg]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("error[E0005]"), "{err}");
    assert!(err.contains(&format!("{arg}:1:14")), "{err}");
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let src = format!(
        "optimizer deep\nupdate {{ p = {}g{} }}\n",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    let path = scratch("deep.opt", src.as_bytes());
    let arg = path.to_string_lossy().into_owned();
    let out = check(&[&arg]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("error[E0002]"), "{}", stderr(&out));
}

#[test]
fn no_file_is_a_usage_error() {
    let out = check(&[]);
    // Bad arguments exit with 1, like every other error.
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Usage"), "{}", stderr(&out));
}

#[test]
fn help_is_not_an_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_optc"))
        .args(["check", "--help"])
        .output()
        .expect("run optc");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
}

/// `optc list` shows every stdlib rule, muon with its integer flag among them.
#[test]
fn list_shows_every_stdlib_rule_with_its_integer_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_optc"))
        .arg("list")
        .output()
        .expect("run optc");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for name in optc_compiler::stdlib::names() {
        assert!(
            text.lines().any(|l| l == name),
            "`{name}` is not listed:\n{text}"
        );
    }
    let muon = text
        .split("\n\n")
        .find(|b| b.starts_with("muon\n"))
        .expect("muon");
    assert!(
        muon.contains("  counts: ns_steps=5 (integer flags)"),
        "{muon}"
    );
    assert!(muon.contains("nesterov=true"), "{muon}");
}
