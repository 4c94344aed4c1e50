//! `optc compare` end to end: the binary's errors and exit codes, and a small run's outputs.

use std::process::{Command, Output};

fn optc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_optc"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("the optc binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh, empty directory under the target dir's tmp (removed first if left over).
fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn unknown_task_exits_1_with_a_suggestion() {
    let o = optc(&["compare", "adamw", "--task", "digits", "--out", "unused"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("unknown task `digits` (did you mean `digits-mlp`?)"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn a_rule_that_does_not_check_prints_the_compiler_diagnostics() {
    let dir = scratch_dir("compare-bad-rule");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let rule = dir.join("bad.opt");
    std::fs::write(
        &rule,
        "optimizer bad\nhyper lr = 1e-3\nupdate {\n    p = p - lr * gg\n}\n",
    )
    .expect("write rule");
    let rule = rule.to_string_lossy().into_owned();
    let o = optc(&["compare", &rule, "adamw", "--task", "quadratic"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains(&format!("cannot load rule `{rule}`")), "{e}");
    assert!(e.contains("unknown name `gg`"), "{e}");
    assert!(e.contains("bad.opt:4:18"), "{e}");
    assert!(e.contains("did you mean `g`?"), "{e}");
    assert!(!dir.join("curves.png").exists());
}

#[test]
fn unknown_stdlib_rule_and_unknown_hyper_are_errors_with_suggestions() {
    let o = optc(&["compare", "adamq", "--task", "quadratic"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no stdlib rule `adamq` (did you mean `adam`?)"),
        "{}",
        stderr(&o)
    );

    let o = optc(&[
        "compare",
        "adamw",
        "--task",
        "quadratic",
        "--set",
        "adamw:betta1=0.8",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("rule `adamw` has no hyper or flag `betta1` (did you mean `beta1`?)"),
        "{e}"
    );

    let o = optc(&[
        "compare",
        "adamw",
        "--task",
        "quadratic",
        "--set",
        "adamx:lr=1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no rule labelled `adamx` (did you mean `adamw`?)"));

    let o = optc(&[
        "compare",
        "adamw",
        "--task",
        "quadratic",
        "--set",
        "adamw:lr=fast",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("`lr=fast`: a hyper takes a number"));
}

#[test]
fn a_small_run_prints_the_table_and_writes_curves_and_results() {
    let dir = scratch_dir("compare-run");
    let out = dir.to_string_lossy().into_owned();
    let o = optc(&[
        "compare",
        "adamw",
        "sgd",
        "reference:adamw",
        "--task",
        "quadratic",
        "--steps",
        "50",
        "--seeds",
        "2",
        "--set",
        "sgd:lr=1e-3",
        "--set",
        "weight_decay=0",
        "--out",
        &out,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    for label in [
        "adamw",
        "sgd",
        "ref-adamw",
        "steps to target",
        "state B/param",
    ] {
        assert!(table.contains(label), "{table}");
    }

    let png = std::fs::read(dir.join("curves.png")).expect("curves.png written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("results.json")).expect("results.json"))
            .expect("valid JSON");
    assert_eq!(json["task"], "quadratic");
    assert_eq!(json["steps"], 50);
    let entries = json["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 3);
    let hyper = |e: &serde_json::Value, name: &str| {
        e["hypers"]
            .as_array()
            .and_then(|h| h.iter().find(|h| h["name"] == name))
            .map(|h| h["value"].clone())
    };
    // `--set weight_decay=0` reached every rule; `sgd:lr` only sgd.
    assert!(entries
        .iter()
        .all(|e| hyper(e, "weight_decay") == Some(0.0.into())));
    assert_eq!(hyper(&entries[1], "lr"), Some(1e-3.into()));
    assert_eq!(entries[0]["runs"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        entries[0]["runs"][0]["evals"].as_array().map(Vec::len),
        Some(51)
    );
    // AdamW keeps two f32 states (m, v) per parameter.
    assert_eq!(entries[0]["summary"]["state_bytes_per_param"], 8.0);
}

/// Issue 14: one Muon optimizer trains the whole digits MLP (Muon on the two weight matrices,
/// its AdamW branch on the biases) and reaches the task's target accuracy (95%) within 200 steps
/// at lr = 0.02 (the learning rate of Muon's reference and torch's example), on both seeds.
#[test]
fn muon_reaches_the_digits_target() {
    let dir = scratch_dir("compare-muon");
    let out = dir.to_string_lossy().into_owned();
    let o = optc(&[
        "compare",
        "muon",
        "--task",
        "digits-mlp",
        "--steps",
        "200",
        "--seeds",
        "2",
        "--set",
        "muon:lr=0.02",
        "--out",
        &out,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("results.json")).expect("results.json"))
            .expect("valid JSON");
    let summary = &json["entries"][0]["summary"];
    assert_eq!(summary["reached"], 2, "{summary}");
    assert!(
        summary["test_accuracy"]["min"].as_f64().expect("accuracy") >= 0.95,
        "{summary}"
    );
}

/// `--param-dtype`/`--state-dtype`/`--master-weights` reach every compiled rule: the state bytes
/// per parameter follow the dtypes (the reference stays f32), and a bad combination is an error.
#[test]
fn storage_dtypes_set_the_state_bytes_per_parameter() {
    let dir = scratch_dir("compare-dtypes");
    let out = dir.to_string_lossy().into_owned();
    for (extra, bytes) in [
        (&["--param-dtype", "bf16", "--state-dtype", "bf16"][..], 4.0),
        (
            &[
                "--param-dtype",
                "bf16",
                "--state-dtype",
                "bf16",
                "--master-weights",
            ][..],
            8.0,
        ),
        (&["--param-dtype", "f16"][..], 8.0),
    ] {
        let mut args = vec![
            "compare",
            "adamw",
            "reference:adamw",
            "--task",
            "quadratic",
            "--steps",
            "20",
            "--seeds",
            "1",
            "--out",
            &out,
        ];
        args.extend_from_slice(extra);
        let o = optc(&args);
        assert_eq!(o.status.code(), Some(0), "{extra:?}: {}", stderr(&o));
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("results.json")).expect("results.json"))
                .expect("valid JSON");
        let entries = json["entries"].as_array().expect("entries");
        assert_eq!(
            entries[0]["summary"]["state_bytes_per_param"], bytes,
            "{extra:?}"
        );
        assert_eq!(
            entries[1]["summary"]["state_bytes_per_param"], 8.0,
            "the f32 reference"
        );
    }
    let o = optc(&[
        "compare",
        "adamw",
        "--task",
        "quadratic",
        "--master-weights",
        "--out",
        &out,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--master-weights needs a 16-bit parameter"),
        "{}",
        stderr(&o)
    );
}
