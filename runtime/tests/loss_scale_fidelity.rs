//! Loss scaling against torch: replays `fixtures/loss_scale.json` (torch.optim.AdamW under
//! torch.amp.GradScaler, an inf gradient at step 4 and a NaN at step 8; made by
//! `tools/fixtures/loss_scale.py`) through [`LossScaler`] and the optimizer, on the interpreter
//! and the CPU JIT. The scale of every step and which steps are skipped match torch exactly; the
//! final parameters and states are within the fidelity budget of `docs/fidelity.md`; the step
//! counts are torch's.
#![cfg(feature = "compiler")]

use optc_runtime::{LossScaler, Optimizer, Options, Rule, Target, Update};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The budget of docs/fidelity.md: largest scaled error allowed for any parameter or state.
const BUDGET: f64 = 1e-5;

#[derive(Deserialize)]
struct Fixture {
    hypers: BTreeMap<String, f64>,
    scaler: Scaler,
    steps: usize,
    tensors: Vec<Tensor>,
    scales: Vec<f64>,
    skipped: Vec<bool>,
    grads: Vec<BTreeMap<String, Vec<u32>>>,
    #[serde(rename = "final")]
    last: BTreeMap<String, Final>,
}

#[derive(Deserialize)]
struct Scaler {
    init_scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u64,
}

#[derive(Deserialize)]
struct Tensor {
    name: String,
    shape: Vec<usize>,
    init: Vec<u32>,
}

#[derive(Deserialize)]
struct Final {
    param: Vec<u32>,
    exp_avg: Vec<u32>,
    exp_avg_sq: Vec<u32>,
    step: f64,
}

fn floats(bits: &[u32]) -> Vec<f32> {
    bits.iter().map(|&b| f32::from_bits(b)).collect()
}

/// The largest absolute error over the largest magnitude of the reference (docs/fidelity.md).
fn scaled_error(x: &[f32], r: &[f32]) -> f64 {
    let scale = r.iter().fold(0.0f64, |a, v| a.max(f64::from(v.abs())));
    let err = x.iter().zip(r).fold(0.0f64, |a, (x, r)| {
        let d = f64::from(*x) - f64::from(*r);
        if d.is_nan() {
            f64::INFINITY
        } else {
            a.max(d.abs())
        }
    });
    err / scale.max(f64::MIN_POSITIVE)
}

fn replay(target: Target, allow_fma: bool) {
    let text = include_str!("fixtures/loss_scale.json");
    let fx: Fixture = serde_json::from_str(text).expect("fixture");
    let mut scaler = LossScaler::new(fx.scaler.init_scale)
        .and_then(|s| s.with_growth_factor(fx.scaler.growth_factor))
        .and_then(|s| s.with_backoff_factor(fx.scaler.backoff_factor))
        .and_then(|s| s.with_growth_interval(fx.scaler.growth_interval))
        .expect("scaler");
    let options = Options {
        target,
        threads: Some(2),
        allow_fma,
        loss_scale: Some(scaler.scale()),
        ..Options::default()
    };
    let mut opt =
        Optimizer::with_options(Rule::stdlib("adamw").expect("rule"), options).expect("optimizer");
    for (name, value) in &fx.hypers {
        opt.set_hyper(name, *value).expect("hyper");
    }
    let mut params: Vec<Vec<f32>> = fx.tensors.iter().map(|t| floats(&t.init)).collect();
    for t in &fx.tensors {
        opt.add_param(&t.name, &t.shape).expect("param");
    }
    let (mut scales, mut skipped) = (Vec::new(), Vec::new());
    for k in 0..fx.steps {
        let grads: Vec<Vec<f32>> = fx
            .tensors
            .iter()
            .map(|t| floats(&fx.grads[k][&t.name]))
            .collect();
        scales.push(scaler.scale());
        let updates = fx
            .tensors
            .iter()
            .zip(params.iter_mut())
            .zip(&grads)
            .map(|((t, p), g)| Update::new(&t.name, p, g));
        skipped.push(scaler.step(&mut opt, updates).expect("step").skipped);
    }
    assert_eq!(scales, fx.scales, "{target}: the scale of each step");
    assert_eq!(skipped, fx.skipped, "{target}: which steps are skipped");
    let mut worst = 0.0f64;
    for (t, p) in fx.tensors.iter().zip(&params) {
        let r = &fx.last[&t.name];
        assert_eq!(
            opt.step_count(&t.name).expect("ok") as f64,
            r.step,
            "{}",
            t.name
        );
        let states = opt.states(&t.name).expect("states");
        let state = |n: &str| {
            states
                .iter()
                .find(|(s, _)| *s == n)
                .expect("state")
                .1
                .clone()
        };
        for (what, x, reference) in [
            ("param", p.clone(), &r.param),
            ("exp_avg", state("m"), &r.exp_avg),
            ("exp_avg_sq", state("v"), &r.exp_avg_sq),
        ] {
            let e = scaled_error(&x, &floats(reference));
            assert!(
                e <= BUDGET,
                "{target}: `{}` {what}: scaled error {e:.3e}",
                t.name
            );
            worst = worst.max(e);
        }
    }
    eprintln!("{target} (fma {allow_fma}): worst scaled error {worst:.3e}");
}

#[test]
fn the_interpreter_skips_as_torch_and_matches_it() {
    replay(Target::Interp, false);
}

#[test]
fn the_cpu_jit_skips_as_torch_and_matches_it() {
    replay(Target::Cpu, true);
    replay(Target::Cpu, false);
}
