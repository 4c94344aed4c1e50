//! Every stdlib rule, for every flag set, JIT-compiled and run against the reference interpreter
//! over several steps (scalar states carried from step to step), stage by stage for staged rules
//! (`cpu_common::cpu_step`: partials combined in f64, the host program between stages).
//!
//! Without FMA every kernel is bit-exact (none of them has a per-element `exp`, `log` or `pow`;
//! `compiler/tests/stdlib.rs` checks that), with realistic inputs and with special values (zeros,
//! huge, tiny, subnormal, inf, NaN). With FMA, see `FMA_REL_BUDGET`.
#![cfg(feature = "compiler")]

mod cpu_common;

use cpu_common::*;
use optc_compiler::backend::clif;
use optc_compiler::backend::interp::{step_many, Buffers, TensorStep};
use optc_compiler::{stdlib, Rule};
use optc_kernel::matrix::WideView;
use optc_kernel::Kernel;
use optc_runtime::cpu::{CpuError, CpuKernel, CpuOptions};

/// The kernel compiled for the CPU, or `None` for a kernel the CPU backend refuses by design
/// (Row or Col scopes, row- or column-shaped states: `clif::Error::Unsupported`).
fn compile(k: &Kernel, allow_fma: bool) -> Option<CpuKernel> {
    match CpuKernel::compile_with(
        k,
        &CpuOptions {
            allow_fma,
            ..CpuOptions::default()
        },
    ) {
        Ok(c) => Some(c),
        Err(CpuError::Codegen(clif::Error::Unsupported { .. })) => None,
        Err(e) => panic!("{}: {e}", k.rule),
    }
}

/// Relative difference allowed with FMA, per element, against the largest magnitude among the
/// element's result and inputs (as in `cpu_many.rs`), after three steps. Measured at most 3.5e-7
/// (2.95 x f32::EPSILON, adamw with amsgrad and maximize) over every rule and flag set on x86-64
/// with FMA; adagrad 1.3, rmsprop 1.5, adadelta 2.0 x EPSILON.
const FMA_REL_BUDGET: f32 = 4.0 * f32::EPSILON;

fn rules() -> Vec<Rule> {
    stdlib::names()
        .map(|n| match stdlib::rule(n) {
            Some(Ok(r)) => r,
            other => panic!(
                "stdlib rule {n} does not compile: {:?}",
                other.map(|r| r.err())
            ),
        })
        .collect()
}

/// Realistic inputs: p and g of order 1, states small and non-negative (second moments).
fn realistic(k: &Kernel, n: usize, rng: &mut Rng) -> Tensor {
    Tensor {
        p: (0..n).map(|_| rng.unit() * 2.0 - 1.0).collect(),
        g: (0..n).map(|_| rng.unit() * 2.0 - 1.0).collect(),
        states: k
            .states
            .iter()
            .map(|_| (0..n).map(|_| rng.unit() * 0.01).collect())
            .collect(),
    }
}

/// A non-zero weight decay, so that the decay branches run.
fn with_weight_decay(k: &mut Kernel) {
    for h in &mut k.hypers {
        if h.name == "weight_decay" && h.default == 0.0 {
            h.default = 0.01;
        }
    }
}

/// The matrix view a kernel with matrix stages steps a tensor of `n` elements as (wide for some
/// sizes, tall for others); `None` for the other kernels.
fn view_of(k: &Kernel, n: usize) -> Option<WideView> {
    if k.stages.iter().all(|s| s.matrix.is_none()) {
        return None;
    }
    let (rows, cols) = match n {
        1 => (1, 1),
        5 => (5, 1),
        1023 => (31, 33),
        1027 => (13, 79),
        4097 => (241, 17),
        _ => panic!("no matrix view for {n} elements"),
    };
    Some(WideView { rows, cols })
}

/// Runs three steps on `input` (from element `off`) with the interpreter and with `cpu`; returns
/// (interpreter, cpu) results. A kernel with matrix stages steps the tensor as a matrix
/// ([`view_of`]); its matrix programs run as the interpreter runs them on both sides.
fn three_steps(k: &Kernel, cpu: &CpuKernel, input: &Tensor, off: usize) -> (Tensor, Tensor) {
    let hypers = k.default_hypers();
    let mut scalars = k.initial_scalars(&hypers).expect("scalars");
    let mut cpu_scalars = vec![scalars.clone()];
    let mut want = input.clone();
    let mut got = [input.clone()];
    let view = view_of(k, input.p.len() - off);
    for t in 1..=3 {
        step_many(
            k,
            vec![TensorStep {
                hypers: &hypers,
                t,
                scalars: &mut scalars,
                bufs: Buffers {
                    param: &mut want.p[off..],
                    grad: &want.g[off..],
                    states: want.states.iter_mut().map(|b| &mut b[off..]).collect(),
                },
                dims: None,
                view,
                tensor: 0,
            }],
        )
        .expect("interpreter");
        cpu_step_viewed(
            cpu,
            &mut got,
            off,
            &hypers,
            t,
            &mut cpu_scalars,
            None,
            &[view],
        );
        assert_eq!(
            scalars.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            cpu_scalars[0]
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        );
    }
    let [got] = got;
    (want, got)
}

#[test]
fn cpu_every_stdlib_rule_and_flag_set_is_exact_without_fma() {
    let mut rng = Rng::new(2024);
    for r in rules() {
        for (flags, mut k) in rule_kernels(&r) {
            with_weight_decay(&mut k);
            let Some(cpu) = compile(&k, false) else {
                continue;
            };
            for (n, off, specials) in [
                (1, 0, false),
                (5, 3, false),
                (1023, 1, false),
                (4097, 2, true),
            ] {
                let input = if specials {
                    Tensor::random(&k, n + off, &mut rng, true)
                } else {
                    realistic(&k, n + off, &mut rng)
                };
                let (want, got) = three_steps(&k, &cpu, &input, off);
                assert_same(
                    &got,
                    &want,
                    &format!("{} {flags:?} n={n} off={off}", r.name()),
                );
            }
        }
    }
}

/// With FMA, a kernel with matrix stages (Muon) carries each per-element rounding difference
/// through its matrix programs (Newton–Schulz, which amplifies it, and with bfloat16 rounding a
/// flipped rounding is a bfloat16 ulp), so it is held to `tests/muon_fidelity.rs`'s budgets: each
/// buffer's worst difference relative to how far three steps moved it, 1e-4 in f32 and 1e-2 where
/// the programs round to bfloat16, on top of `FMA_REL_BUDGET` of the buffer's magnitude (the
/// pass's own rounding, as for every other kernel).
fn matrix_kernel_is_close(k: &Kernel, input: &Tensor, want: &Tensor, got: &Tensor, what: &str) {
    let bf16 = k.stages.iter().filter_map(|s| s.matrix.as_ref()).any(|p| {
        p.nodes
            .iter()
            .any(|n| matches!(n, optc_kernel::matrix::MatExpr::RoundBf16(_)))
    });
    let budget = if bf16 { 1e-2 } else { 1e-4 };
    let (x, y, p0) = (got.buffers(), want.buffers(), input.buffers());
    for bi in 0..x.len() {
        let max = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .fold(0.0f64, |m, (u, v)| m.max(f64::from((u - v).abs())))
        };
        let (err, moved) = (max(x[bi], y[bi]), max(y[bi], p0[bi]));
        // The pass's own FMA rounding, as for the other kernels, on the buffer's magnitude.
        let mag = y[bi]
            .iter()
            .chain(p0[bi])
            .fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
        let allowed = f64::from(FMA_REL_BUDGET) * mag + budget * moved;
        assert!(
            err <= allowed,
            "{what} buffer {bi}: {err:e} off after moving {moved:e} (magnitude {mag:e}; allowed {allowed:e})"
        );
    }
}

#[test]
fn cpu_every_stdlib_rule_and_flag_set_with_fma_is_close() {
    let mut rng = Rng::new(7);
    let mut worst = 0.0f32;
    for r in rules() {
        for (flags, mut k) in rule_kernels(&r) {
            with_weight_decay(&mut k);
            let Some(cpu) = compile(&k, true) else {
                continue;
            };
            let input = realistic(&k, 1027, &mut rng);
            let (want, got) = three_steps(&k, &cpu, &input, 0);
            if view_of(&k, 1027).is_some() {
                matrix_kernel_is_close(&k, &input, &want, &got, &format!("{} {flags:?}", r.name()));
                continue;
            }
            for (bi, (x, y)) in got.buffers().iter().zip(want.buffers()).enumerate() {
                for i in 0..x.len() {
                    if x[i].is_nan() && y[i].is_nan() {
                        continue;
                    }
                    let scale = input
                        .buffers()
                        .iter()
                        .map(|b| b[i].abs())
                        .fold(y[i].abs(), f32::max);
                    let rel = (x[i] - y[i]).abs() / scale;
                    worst = worst.max(rel);
                    assert!(
                        rel <= FMA_REL_BUDGET,
                        "{} {flags:?} buffer {bi} element {i}: {} vs {} (fma={})",
                        r.name(),
                        x[i],
                        y[i],
                        cpu.uses_fma()
                    );
                }
            }
        }
    }
    eprintln!("worst relative difference with FMA: {worst:e}");
}
