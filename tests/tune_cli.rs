//! `optc tune` on the command line: the best setting reproduces in `compare`; bad arguments.

use std::process::{Command, Output};

fn optc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_optc"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("the optc binary runs")
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The printed best setting, passed to `optc compare` as it is, gives the loss the leaderboard
/// reports for it.
#[test]
fn the_best_setting_passes_straight_to_compare() {
    let dir = scratch("tune-cli");
    let o = optc(&[
        "tune",
        "sgd",
        "--task",
        "quadratic",
        "--steps",
        "90",
        "--trials",
        "9",
        "--space",
        "lr=log:1e-5:1e-2",
        "--out",
        dir.to_str().expect("utf-8"),
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("rank  trial  lr"), "{out}");
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("optc compare "))
        .expect("a compare line");
    let args: Vec<&str> = line.split_whitespace().skip(1).collect();
    assert!(args.contains(&"--set"), "{line}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("optc run sgd --set lr=")),
        "{out}"
    );

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("results.json")).expect("results.json"))
            .expect("json");
    let best = json["leaderboard"][0].as_u64().expect("best") as usize;
    let rungs = json["trials"][best]["rungs"].as_array().expect("rungs");
    let reported = rungs.last().expect("a rung")["loss"]
        .as_f64()
        .expect("loss");
    assert!(dir.join("search.png").exists());

    let cdir = scratch("tune-cli-compare");
    let mut cargs = args.clone();
    cargs.extend([
        "--steps",
        "90",
        "--seeds",
        "1",
        "--out",
        cdir.to_str().expect("utf-8"),
    ]);
    let c = optc(&cargs);
    assert_eq!(
        c.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&c.stderr)
    );
    let cjson: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cdir.join("results.json")).expect("results.json"))
            .expect("json");
    let evals = cjson["entries"][0]["runs"][0]["evals"]
        .as_array()
        .expect("evals");
    let last = evals.last().expect("eval")["loss"].as_f64().expect("loss");
    assert_eq!(
        last, reported,
        "compare with the best setting reproduces tune's loss"
    );
}

#[test]
fn bad_arguments_are_clear_errors() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["--space", "lr=lgo:1e-4:1"],
            "the scales are `log` and `lin`",
        ),
        (&["--space", "lrr=log:1e-4:1"], "(did you mean `lr`?)"),
        (&["--space", "lr=log:0:1"], "LO > 0"),
        (
            &[
                "--space",
                "lr=log:1e-4:1",
                "--schedule",
                "lr=cosine(warmpu=1)",
            ],
            "did you mean `warmup`?",
        ),
        (
            &["--space", "lr=log:1e-4:1", "--eta", "1"],
            "--eta must be at least 2",
        ),
    ];
    for (extra, want) in cases {
        let o = optc(
            &[
                &["tune", "adamw", "--task", "quadratic", "--steps", "5"][..],
                extra,
            ]
            .concat(),
        );
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {e}");
        assert!(e.contains(want), "{extra:?}: {e}");
        assert!(!e.contains("panicked"), "{e}");
    }
}
