//! Loss scaling with inf/NaN skip for any rule (`Options::loss_scale`, `docs/loss_scaling.md`):
//! unscaled results equal a plain optimizer run on `g * (1 / S)`, bit for bit; a step whose
//! gradients hold an inf or a NaN in any tensor, of any group, writes nothing (every buffer and
//! step count bit-identical) and is reported; the check costs no pass of its own where clipping
//! already reads `g`. On the interpreter and the CPU JIT, for every stdlib rule.
#![cfg(feature = "compiler")]

mod api_support;

use api_support::{bits, data};
use optc_runtime::{LossScaler, Optimizer, Options, Rule, Target, Update};

const S: f64 = 1024.0;
const NAMES: [&str; 3] = ["a", "b", "c"];
/// A matrix over two reduce blocks, a vector, a small matrix (matrix and vector kernels both
/// run, for rules with rank classes).
const SHAPES: [&[usize]; 3] = [&[70, 64], &[5], &[3, 4]];

fn rules() -> Vec<&'static str> {
    optc_compiler::stdlib::names().collect()
}

fn optimizer(rule: &str, target: Target, scale: Option<f64>, clip: Option<f64>) -> Optimizer {
    let options = Options {
        target,
        threads: Some(2),
        allow_fma: false,
        loss_scale: scale,
        max_grad_norm: clip,
        ..Options::default()
    };
    let mut opt =
        Optimizer::with_options(Rule::stdlib(rule).expect("rule"), options).expect("optimizer");
    // `a` and `c` in group 0, `b` in a second group: the check spans groups.
    opt.add_param(NAMES[0], SHAPES[0]).expect("a");
    let g = opt.add_group(&[]).expect("group");
    opt.add_param_to(g, NAMES[1], SHAPES[1]).expect("b");
    opt.add_param(NAMES[2], SHAPES[2]).expect("c");
    opt
}

fn len(i: usize) -> usize {
    SHAPES[i].iter().product()
}

fn params() -> Vec<Vec<f32>> {
    (0..3).map(|i| data(len(i), 10 + i as u32)).collect()
}

/// The scaled gradients of step `k`: `S` times small values.
fn scaled_grads(k: u32) -> Vec<Vec<f32>> {
    (0..3)
        .map(|i| {
            data(len(i), 100 * k + i as u32)
                .iter()
                .map(|x| x * 0.01 * S as f32)
                .collect()
        })
        .collect()
}

/// What the kernel reads: each element times the f32 reciprocal (torch's `inv_scale`).
fn unscaled(g: &[Vec<f32>], scale: f64) -> Vec<Vec<f32>> {
    let inv = (1.0 / scale) as f32;
    g.iter()
        .map(|t| t.iter().map(|x| x * inv).collect())
        .collect()
}

fn step(opt: &mut Optimizer, p: &mut [Vec<f32>], g: &[Vec<f32>]) -> optc_runtime::StepReport {
    let [pa, pb, pc] = p else { panic!("three") };
    opt.step([
        Update::new(NAMES[2], pc, &g[2]),
        Update::new(NAMES[0], pa, &g[0]),
        Update::new(NAMES[1], pb, &g[1]),
    ])
    .expect("step")
}

/// Every bit an optimizer holds: its checkpoint (states, scalars, step counts) and the params.
fn snapshot(opt: &Optimizer, p: &[Vec<f32>]) -> (Vec<u8>, Vec<Vec<u32>>) {
    (
        opt.to_bytes().expect("checkpoint"),
        p.iter().map(|t| bits(t)).collect(),
    )
}

fn states(opt: &Optimizer) -> Vec<Vec<(String, Vec<u32>)>> {
    NAMES
        .iter()
        .map(|n| {
            opt.states(n)
                .expect("states")
                .into_iter()
                .map(|(s, v)| (s.to_string(), bits(&v)))
                .collect()
        })
        .collect()
}

/// The bad element of step `k`, if any: (tensor, index, value). Step 0 is a first step.
fn poison(k: u32) -> Option<(usize, usize, f32)> {
    match k {
        0 => Some((2, 3, f32::INFINITY)),
        2 => Some((1, 4, f32::NAN)),
        3 => Some((0, 4095, f32::NEG_INFINITY)),
        _ => None,
    }
}

fn replay(rule: &str, target: Target, clip: Option<f64>) {
    let mut scaled = optimizer(rule, target, Some(S), clip);
    let mut plain = optimizer(rule, target, None, clip);
    let (mut ps, mut pp) = (params(), params());
    for k in 0..6u32 {
        let mut g = scaled_grads(k);
        if let Some((t, i, bad)) = poison(k) {
            g[t][i] = bad;
            let before = snapshot(&scaled, &ps);
            let counts: Vec<u64> = NAMES
                .iter()
                .map(|n| scaled.step_count(n).expect("ok"))
                .collect();
            let report = step(&mut scaled, &mut ps, &g);
            assert!(report.skipped, "{rule} on {target}: step {k} not skipped");
            assert!(
                before == snapshot(&scaled, &ps),
                "{rule} on {target}: step {k} wrote"
            );
            let after: Vec<u64> = NAMES
                .iter()
                .map(|n| scaled.step_count(n).expect("ok"))
                .collect();
            assert_eq!(counts, after, "{rule}: the step count moved");
            if clip.is_some() {
                assert!(!report.grad_norm.expect("norm").is_finite());
            }
            continue;
        }
        let r = step(&mut scaled, &mut ps, &g);
        let q = step(&mut plain, &mut pp, &unscaled(&g, S));
        assert!(
            !r.skipped && !q.skipped,
            "{rule}: a finite step was skipped"
        );
        assert_eq!(
            r.grad_norm.map(f64::to_bits),
            q.grad_norm.map(f64::to_bits),
            "{rule} on {target}: step {k}: the norm is not the unscaled one"
        );
        for i in 0..3 {
            assert_eq!(
                bits(&ps[i]),
                bits(&pp[i]),
                "{rule} on {target}: step {k}: `{}`",
                NAMES[i]
            );
        }
        assert_eq!(
            states(&scaled),
            states(&plain),
            "{rule} on {target}: step {k}: states"
        );
        for n in NAMES {
            assert_eq!(
                scaled.step_count(n).expect("ok"),
                plain.step_count(n).expect("ok")
            );
            assert_eq!(
                scaled.scalars(n).expect("ok"),
                plain.scalars(n).expect("ok")
            );
        }
    }
    assert_eq!(
        scaled.step_count("a").expect("ok"),
        3,
        "{rule}: 6 calls, 3 skipped"
    );
}

#[test]
fn every_rule_unscales_exactly_and_skips_without_writing_on_the_interpreter() {
    for rule in rules() {
        replay(rule, Target::Interp, None);
    }
}

#[test]
fn every_rule_unscales_exactly_and_skips_without_writing_on_the_cpu() {
    for rule in rules() {
        replay(rule, Target::Cpu, None);
    }
}

#[test]
fn clipped_rules_clip_the_unscaled_gradients() {
    for rule in ["adamw", "lamb", "adafactor", "sgd"] {
        for target in [Target::Interp, Target::Cpu] {
            replay(rule, target, Some(0.5));
        }
    }
}

#[test]
fn the_check_shares_the_first_pass_that_reads_g() {
    let bytes = |rule: &str, scale: Option<f64>, clip: Option<f64>| {
        let opt = optimizer(rule, Target::Interp, scale, clip);
        let k = opt.param_kernel("b").expect("kernel");
        let per_stage: Vec<usize> = (0..k.stages.len())
            .map(|s| k.stage_bytes_per_element(s))
            .collect();
        (per_stage, k.bytes_per_element())
    };
    // No reduction pass: one more read of g (4 bytes), before every store.
    assert_eq!(bytes("adamw", None, None), (vec![28], 28));
    assert_eq!(bytes("adamw", Some(S), None), (vec![4, 28], 32));
    // Clipping already reads g first: the check costs nothing.
    assert_eq!(bytes("adamw", None, Some(1.0)), (vec![4, 28], 32));
    assert_eq!(bytes("adamw", Some(S), Some(1.0)), (vec![4, 28], 32));
    // LAMB's first pass stores m and v: the stores wait for the check, g is read once more.
    let (lamb, lamb_scaled) = (bytes("lamb", None, None), bytes("lamb", Some(S), None));
    assert_eq!(lamb_scaled.1, lamb.1 + 4, "{lamb:?} {lamb_scaled:?}");
}

#[test]
fn a_scaler_backs_off_on_a_skip_and_the_optimizer_follows_it() {
    let mut opt = optimizer("adamw", Target::Cpu, Some(1.0), None);
    let mut scaler = LossScaler::new(S)
        .and_then(|s| s.with_growth_interval(2))
        .expect("scaler");
    let mut p = params();
    let mut seen = Vec::new();
    for k in 0..5u32 {
        let mut g = scaled_grads(k);
        if k == 1 {
            g[0][7] = f32::INFINITY;
        }
        let [pa, pb, pc] = &mut p[..] else { panic!() };
        let updates = [
            Update::new("a", pa, &g[0]),
            Update::new("b", pb, &g[1]),
            Update::new("c", pc, &g[2]),
        ];
        let used = scaler.scale();
        let report = scaler.step(&mut opt, updates).expect("step");
        assert_eq!(opt.loss_scale(), Some(used));
        seen.push((used, report.skipped));
    }
    // Skip at 1: 1024 -> 512; two good steps (2, 3) -> 1024.
    assert_eq!(
        seen,
        [
            (1024.0, false),
            (1024.0, true),
            (512.0, false),
            (512.0, false),
            (1024.0, false)
        ]
    );
    assert_eq!(opt.step_count("a").expect("ok"), 4);
}

#[test]
fn bad_loss_scales_are_refused() {
    let mut opt = optimizer("adamw", Target::Interp, Some(S), None);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = opt.set_loss_scale(bad).expect_err("bad scale");
        assert!(err.to_string().contains("loss scale"), "{err}");
    }
    let mut plain = optimizer("adamw", Target::Interp, None, None);
    let err = plain.set_loss_scale(2.0).expect_err("no scaling");
    assert!(err.to_string().contains("without loss scaling"), "{err}");
    let options = Options {
        loss_scale: Some(0.0),
        ..Options::default()
    };
    assert!(Optimizer::with_options(Rule::stdlib("sgd").expect("ok"), options).is_err());
}
