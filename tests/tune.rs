//! `optc tune`: successive halving against random search at the same budget of optimizer steps
//! on digits-mlp, determinism, and the command line (the best setting reproduces in `compare`).

use optc::compare::task;
use optc::compare::tune::{tune, Strategy, TuneConfig, TuneResult};
use optc::compare::tune_space::Dimension;
use optc::compare::{Backend, CompareError, Contender, HyperValue, RuleContender};
use std::process::{Command, Output};

fn search(task_name: &str, rule: &str, space: &str, config: &TuneConfig) -> TuneResult {
    let task = task::by_name(task_name).expect("task");
    let base = RuleContender::load(rule, Backend::Cpu, false).expect("rule");
    let make = |setting: &[HyperValue]| -> Result<Box<dyn Contender>, CompareError> {
        let mut c = base.clone();
        for h in setting {
            c.set_hyper(&h.name, h.value)?;
        }
        Ok(Box::new(c))
    };
    let space = [Dimension::parse(space).expect("space")];
    tune(&*task, &make, &space, config).expect("tune")
}

fn best_loss(r: &TuneResult) -> f64 {
    let best = r.best().expect("a best trial");
    let last = best.last().expect("ran");
    assert_eq!(last.steps, r.config.steps, "the best ran the full length");
    last.loss
}

/// Over 3 search seeds, halving's best setting (trained for the full length) has a final loss at
/// least as low as random search's best, when random search gets as many optimizer steps as
/// halving used (rounded down to whole runs). Both draw from the same sampler, so random search's
/// settings are the first of halving's.
#[test]
fn halving_is_at_least_as_good_as_random_search_on_digits_at_the_same_budget() {
    const STEPS: usize = 90;
    let (mut sha_sum, mut random_sum) = (0.0, 0.0);
    for seed in 0..3 {
        let halving = TuneConfig {
            trials: 9,
            seeds: 1,
            steps: STEPS,
            eta: 3,
            search_seed: seed,
            strategy: Strategy::Halving,
        };
        let sha = search("digits-mlp", "adam", "lr=log:1e-4:1", &halving);
        let random = TuneConfig {
            trials: sha.budget / STEPS,
            strategy: Strategy::Random,
            ..halving
        };
        let rnd = search("digits-mlp", "adam", "lr=log:1e-4:1", &random);
        assert!(rnd.budget <= sha.budget, "{} > {}", rnd.budget, sha.budget);
        let (a, b) = (best_loss(&sha), best_loss(&rnd));
        eprintln!(
            "search seed {seed}: halving {a:.4e} ({} steps, {} trials), random {b:.4e} ({} steps, {} trials)",
            sha.budget, sha.config.trials, rnd.budget, rnd.config.trials
        );
        sha_sum += a;
        random_sum += b;
    }
    assert!(
        sha_sum <= random_sum,
        "mean best loss: halving {}, random {}",
        sha_sum / 3.0,
        random_sum / 3.0
    );
}

#[test]
fn a_search_is_the_same_for_the_same_seed_on_any_number_of_threads() {
    let config = TuneConfig {
        trials: 6,
        seeds: 2,
        steps: 60,
        eta: 2,
        search_seed: 7,
        strategy: Strategy::Halving,
    };
    let a = search("quadratic", "sgd", "lr=log:1e-5:1e-2", &config);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let b = one.install(|| search("quadratic", "sgd", "lr=log:1e-5:1e-2", &config));
    assert_eq!(a, b);
    assert_eq!(a.rung_steps, [15, 30, 60]);
    // 6 trials, then 3, then 1; 2 seeds each.
    assert_eq!(a.budget, 2 * (6 * 15 + 3 * 30 + 60));
    let other = search(
        "quadratic",
        "sgd",
        "lr=log:1e-5:1e-2",
        &TuneConfig {
            search_seed: 8,
            ..config
        },
    );
    assert_ne!(a.trials[0].setting, other.trials[0].setting);
}

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
