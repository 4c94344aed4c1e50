//! `--schedule` on `optc run` and `optc compare`, end to end: values reach the kernel with the
//! documented step convention, errors are located, and results.json records the schedules.

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;
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

fn scratch(name: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// SGD (lr 1, no momentum) from p = 0 with g = 1 moves p by the lr of each step; with
/// `exponential(gamma=0.5)` the steps use 1, 0.5, 0.25 (s = 0, 1, 2), so p = -1.75, exactly.
#[test]
fn run_applies_the_schedule_from_s_equal_0() {
    let dir = scratch("schedule-run");
    let (p, g, out) = (dir.join("p.st"), dir.join("g.st"), dir.join("out.st"));
    let pb = f32_bytes(&[0.0; 4]);
    let gb = f32_bytes(&[1.0; 12]);
    safetensors::serialize_to_file(
        [(
            "w",
            TensorView::new(Dtype::F32, vec![4], &pb).expect("view"),
        )],
        None,
        &p,
    )
    .expect("write");
    safetensors::serialize_to_file(
        [(
            "w",
            TensorView::new(Dtype::F32, vec![3, 4], &gb).expect("view"),
        )],
        None,
        &g,
    )
    .expect("write");
    for target in ["cpu", "interp"] {
        let o = optc(&[
            "run",
            "sgd",
            "--params",
            p.to_str().expect("utf-8"),
            "--grads",
            g.to_str().expect("utf-8"),
            "--steps",
            "3",
            "--set",
            "lr=1",
            "--schedule",
            "lr=exponential(gamma=0.5)",
            "--target",
            target,
            "-o",
            out.to_str().expect("utf-8"),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let bytes = std::fs::read(&out).expect("output");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        let w: Vec<f32> = st
            .tensor("w")
            .expect("w")
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(w, [-1.75; 4], "{target}");
    }
}

#[test]
fn run_rejects_a_bad_spec_and_an_unknown_hyper() {
    let o = optc(&[
        "run",
        "adamw",
        "--params",
        "x",
        "--grads",
        "y",
        "--steps",
        "1",
        "-o",
        "z",
        "--schedule",
        "lr=cosine(warmpu=100)",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("`cosine` has no parameter `warmpu`\n  lr=cosine(warmpu=100)\n            ^^^^^^ did you mean `warmup`?"),
        "{e}"
    );
    let o = optc(&[
        "run",
        "adamw",
        "--params",
        "x",
        "--grads",
        "y",
        "--steps",
        "1",
        "-o",
        "z",
        "--schedule",
        "betta1=constant",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("no hyper `betta1` (did you mean `beta1`?)"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
}

fn losses(dir: &std::path::Path, entry: usize) -> Vec<f64> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("results.json")).expect("results.json"))
            .expect("json");
    json["entries"][entry]["runs"][0]["evals"]
        .as_array()
        .expect("evals")
        .iter()
        .map(|e| e["loss"].as_f64().expect("loss"))
        .collect()
}

/// On the quadratic (evaluated every step), a schedule leaves the evaluation after step 1 alone
/// (it uses the base lr, s = 0) and changes the next; the compiled sgd and the plain-Rust
/// reference get the same schedule through different code and agree.
#[test]
fn compare_schedules_compiled_rules_and_references_alike() {
    let plain = scratch("schedule-compare-plain");
    let sched = scratch("schedule-compare-sched");
    let common = [
        "compare",
        "sgd",
        "reference:sgd",
        "--task",
        "quadratic",
        "--steps",
        "20",
        "--seeds",
        "1",
        "--set",
        "lr=1e-3",
    ];
    let o = optc(&[&common[..], &["--out", plain.to_str().expect("utf-8")]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = optc(
        &[
            &common[..],
            &[
                "--schedule",
                "lr=exponential(gamma=0.5)",
                "--out",
                sched.to_str().expect("utf-8"),
            ],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (p, s) = (losses(&plain, 0), losses(&sched, 0));
    assert_eq!(p[0], s[0], "before any step");
    assert_eq!(p[1], s[1], "step 1 uses the base lr");
    assert!(s[2] > p[2], "step 2 uses half the lr: {} vs {}", s[2], p[2]);
    let r = losses(&sched, 1);
    for (k, (a, b)) in s.iter().zip(&r).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs(),
            "eval {k}: sgd {a}, reference {b}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sched.join("results.json")).expect("json"))
            .expect("json");
    assert_eq!(
        json["entries"][0]["schedules"][0],
        "lr=exponential(gamma=0.5)"
    );
}

#[test]
fn compare_reports_bad_schedules_with_a_caret_or_a_suggestion() {
    let o = optc(&[
        "compare",
        "adamw",
        "--task",
        "quadratic",
        "--schedule",
        "adamw:lr=cosin(total=5)",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("unknown schedule `cosin`\n  adamw:lr=cosin(total=5)\n           ^^^^^ did you mean `cosine`?"),
        "{e}"
    );
    let o = optc(&[
        "compare",
        "adamw",
        "--task",
        "quadratic",
        "--schedule",
        "adamx:lr=constant",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no rule labelled `adamx` (did you mean `adamw`?)"),
        "{}",
        stderr(&o)
    );
    let o = optc(&[
        "compare",
        "adamw",
        "--task",
        "quadratic",
        "--schedule",
        "lrr=constant",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("(did you mean `lr`?)"),
        "{}",
        stderr(&o)
    );
}

/// The phase-switching stdlib rule races next to adam and sgd.
#[test]
fn adamsgd_runs_in_compare_next_to_adam_and_sgd() {
    let dir = scratch("schedule-adamsgd");
    let o = optc(&[
        "compare",
        "adamsgd",
        "adam",
        "sgd",
        "--task",
        "quadratic",
        "--steps",
        "40",
        "--seeds",
        "1",
        "--set",
        "adamsgd:switch_step=20",
        "--set",
        "adamsgd:sgd_lr=1e-3",
        "--set",
        "sgd:lr=1e-3",
        "--out",
        dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    for rule in ["adamsgd", "adam", "sgd"] {
        assert!(table.lines().any(|l| l.starts_with(rule)), "{table}");
    }
    let (phased, adam) = (losses(&dir, 0), losses(&dir, 1));
    assert_eq!(phased[..=20], adam[..=20], "Adam for the first 20 steps");
    assert_ne!(phased[21], adam[21], "SGD from step 21");
    assert!(dir.join("curves.png").exists());
}
