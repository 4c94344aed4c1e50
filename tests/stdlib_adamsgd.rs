//! `adamsgd`, the phase-switching stdlib rule: Adam up to `switch_step`, then SGD with momentum.
//! Its expected values come from the stdlib's `adam` and `sgd` rules, run on the reference
//! interpreter as separate optimizers (each already matches torch, `tests/fidelity.rs`), and its
//! defaults from `tools/fixtures/defaults.json` (torch's classes).

use optc::{Optimizer, Options, Rule, Target, Update};
use std::collections::BTreeMap;

fn interp(rule: &str) -> Optimizer {
    let options = Options {
        target: Target::Interp,
        ..Options::default()
    };
    Optimizer::with_options(Rule::stdlib(rule).expect("stdlib rule"), options).expect("optimizer")
}

fn grad(step: usize, i: usize) -> f32 {
    // Deterministic, sign-changing gradients of varied size.
    let x = (step * 31 + i * 17) as f32;
    (x * 0.37).sin() * (1.0 + (i % 5) as f32) * 0.1
}

#[test]
fn adam_until_the_switch_then_sgd_with_momentum() {
    const N: usize = 64;
    const SWITCH: usize = 7;
    const STEPS: usize = 15;
    let (sgd_lr, momentum, lr) = (0.05, 0.8, 3e-3);

    let mut phased = interp("adamsgd");
    for (n, v) in [
        ("switch_step", SWITCH as f64),
        ("sgd_lr", sgd_lr),
        ("momentum", momentum),
        ("lr", lr),
    ] {
        phased.set_hyper(n, v).expect("hyper");
    }
    phased.add_param("w", &[N]).expect("param");
    let mut adam = interp("adam");
    adam.set_hyper("lr", lr).expect("hyper");
    adam.add_param("w", &[N]).expect("param");
    let mut sgd = interp("sgd");
    sgd.set_hyper("lr", sgd_lr).expect("hyper");
    sgd.set_hyper("momentum", momentum).expect("hyper");
    sgd.add_param("w", &[N]).expect("param");

    let start: Vec<f32> = (0..N).map(|i| (i as f32 * 0.1).cos()).collect();
    let (mut a, mut b) = (start.clone(), start);
    for step in 1..=STEPS {
        let g: Vec<f32> = (0..N).map(|i| grad(step, i)).collect();
        phased.step([Update::new("w", &mut a, &g)]).expect("step");
        let expected = if step <= SWITCH { &mut adam } else { &mut sgd };
        expected.step([Update::new("w", &mut b, &g)]).expect("step");
        assert_eq!(a, b, "step {step} (switch after {SWITCH})");
    }
    assert_eq!(phased.compile_count(), 1);
}

#[derive(serde::Deserialize)]
struct Defaults {
    rules: BTreeMap<String, RuleDefaults>,
}

#[derive(serde::Deserialize)]
struct RuleDefaults {
    hypers: BTreeMap<String, f64>,
}

/// adamsgd has no torch class of its own, so it is not in defaults.json; its Adam-phase hypers
/// take torch.optim.Adam's defaults. muon is two torch classes (Muon and AdamW for the rest):
/// its defaults are in tests/fixtures/matrix/muon/defaults.json, checked by
/// tests/muon_fidelity.rs. Every other stdlib rule is in defaults.json.
#[test]
fn defaults_are_adams_and_every_other_rule_has_a_reference() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/fixtures/defaults.json");
    let text = std::fs::read_to_string(path).expect("defaults.json");
    let defaults: Defaults = serde_json::from_str(&text).expect("defaults.json parses");
    for name in optc::stdlib::names() {
        assert!(
            name == "adamsgd" || name == "muon" || defaults.rules.contains_key(name),
            "stdlib rule `{name}` has no torch defaults in defaults.json"
        );
    }
    let adam = &defaults.rules["adam"].hypers;
    let rule = optc::stdlib::rule("adamsgd")
        .expect("in the stdlib")
        .expect("compiles");
    let own: BTreeMap<&str, f64> = rule
        .hypers()
        .iter()
        .map(|h| (h.name.as_str(), h.default))
        .collect();
    for (name, value) in adam {
        assert_eq!(own.get(name.as_str()), Some(value), "adam's `{name}`");
    }
    let extra: Vec<&str> = own
        .keys()
        .copied()
        .filter(|n| !adam.contains_key(*n))
        .collect();
    assert_eq!(extra, ["momentum", "sgd_lr", "switch_step"]);
}
