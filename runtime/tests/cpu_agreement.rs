//! The JIT-compiled CPU kernels against the reference interpreter (`step_f32`).
//!
//! Agreement budget, measured on x86-64 (see `ULP_BUDGET_*`): without FMA every op except
//! `exp`, `log` and `pow` is bit-exact (+, -, *, /, sqrt, rsqrt, neg, abs, sign, min, max,
//! comparisons, logic, select, and `pow` with constant exponent 0 or 1). The tail (`n % 4`
//! elements) runs the same vector code as the main loop, so lengths and offsets never change a
//! result.
#![cfg(feature = "compiler")]

mod cpu_common;

use cpu_common::kernels::{self, Kb};
use cpu_common::*;
use optc_kernel::{BinaryOp, Kernel, UnaryOp};

/// Max ULPs of `exp` and `log` against Rust's `f32::exp` / `f32::ln`.
const ULP_BUDGET_EXP_LOG: u32 = 1;
/// Max ULPs of `pow` with a non-constant or non-integer exponent against `f32::powf`.
const ULP_BUDGET_POW: u32 = 1;
/// Max ULPs of `pow` with a constant exponent -1, 2, 3 or 4 (a division or a multiply chain).
const ULP_BUDGET_POWI: u32 = 2;

const LENGTHS: [usize; 7] = [0, 1, 3, 4, 5, 1023, 4097];

/// Runs `k` on random inputs of every test length and offset through both paths and returns the
/// worst ULP distance; with `exact`, panics on the first difference.
fn agree(k: &Kernel, seed: u64, specials: bool, exact: bool) -> u32 {
    let cpu = compile_exact(k);
    let mut rng = Rng::new(seed);
    let mut worst = 0;
    for &n in &LENGTHS {
        for off in 0..4 {
            for step in [1, 7] {
                let input = Tensor::random(k, n + off, &mut rng, specials);
                let mut want = input.clone();
                step_ref(k, &mut want, off, step);
                let mut got = input.clone();
                cpu.step(got.args(off, uniforms(k, step)))
                    .expect("cpu step");
                let what = format!("rule {} n={n} off={off} t={step}", k.rule);
                if exact {
                    assert_same(&got, &want, &what);
                }
                let (d, b, i) = max_ulps(&got, &want);
                if d > worst {
                    worst = d;
                    eprintln!("{what}: {d} ulps at buffer {b} element {i}");
                }
            }
        }
    }
    worst
}

#[test]
fn cpu_adamw_amsgrad_is_exact_without_fma() {
    let k = kernels::adamw_amsgrad();
    agree(&k, 1, false, true);
    agree(&k, 2, true, true);
}

#[test]
fn cpu_sgd_is_exact() {
    let k = kernels::sgd();
    agree(&k, 3, true, true);
}

#[test]
fn cpu_logic_is_exact() {
    let k = kernels::logic();
    agree(&k, 4, true, true);
    // The boolean uniform, false.
    let mut k = k;
    k.hypers[1].default = 0.0;
    agree(&k, 5, true, true);
}

#[test]
fn cpu_elementary_is_exact() {
    agree(&kernels::elementary(), 6, true, true);
}

#[test]
fn cpu_every_exact_op_alone() {
    for op in [
        UnaryOp::Neg,
        UnaryOp::Not,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Abs,
        UnaryOp::Sign,
    ] {
        agree(&kernels::unary_op(op), 7, true, true);
    }
    for op in [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Min,
        BinaryOp::Max,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::And,
        BinaryOp::Or,
    ] {
        agree(&kernels::binary_op(op), 8, true, true);
    }
    for n in [0.0, 1.0] {
        agree(&kernels::pow_const(n), 9, true, true);
    }
}

#[test]
fn cpu_min_max_zero_signs_and_nan() {
    for op in [BinaryOp::Min, BinaryOp::Max] {
        let k = kernels::binary_op(op);
        let cpu = compile_exact(&k);
        let cases = [
            (0.0f32, -0.0f32),
            (-0.0, 0.0),
            (f32::NAN, 1.0),
            (1.0, f32::NAN),
            (-1.0, 2.0),
            (f32::INFINITY, f32::NEG_INFINITY),
        ];
        let g: Vec<f32> = cases.iter().map(|c| c.0).collect();
        let s: Vec<f32> = cases.iter().map(|c| c.1).collect();
        let input = Tensor {
            p: vec![0.0; g.len()],
            g,
            states: vec![s],
        };
        let mut want = input.clone();
        step_ref(&k, &mut want, 0, 1);
        let mut got = input.clone();
        cpu.step(got.args(0, vec![])).expect("step");
        assert_same(&got, &want, &format!("{op}"));
    }
}

#[test]
fn cpu_transcendental_within_budget() {
    for (k, budget) in [
        (kernels::unary_op(UnaryOp::Exp), ULP_BUDGET_EXP_LOG),
        (kernels::unary_op(UnaryOp::Log), ULP_BUDGET_EXP_LOG),
        (kernels::binary_op(BinaryOp::Pow), ULP_BUDGET_POW),
        (kernels::pow_const(0.5), ULP_BUDGET_POW),
        (kernels::pow_const(-2.5), ULP_BUDGET_POW),
        (kernels::pow_const(2.0), ULP_BUDGET_POWI),
        (kernels::pow_const(-1.0), ULP_BUDGET_POWI),
        (kernels::pow_const(3.0), ULP_BUDGET_POWI),
        (kernels::pow_const(4.0), ULP_BUDGET_POWI),
        (kernels::pow_const(-3.0), ULP_BUDGET_POW),
        (kernels::pow_const(8.0), ULP_BUDGET_POW),
        (kernels::pow_const(-7.0), ULP_BUDGET_POW),
        (kernels::transcendental(), ULP_BUDGET_POWI),
    ] {
        let worst = agree(&k, 10, true, false).max(agree(&k, 11, false, false));
        eprintln!("{}: max {worst} ulps", k.rule);
        assert!(worst <= budget, "{}: {worst} ulps > {budget}", k.rule);
    }
}

/// Dense sweeps of the transcendental ops over their whole domains, for the error budget.
#[test]
fn cpu_transcendental_sweep() {
    let mut rng = Rng::new(99);
    let n = 200_000;
    let sweeps: Vec<(Kernel, Vec<f32>, Vec<f32>, u32)> = vec![
        (
            kernels::unary_op(UnaryOp::Exp),
            (0..n).map(|_| rng.unit() * 220.0 - 115.0).collect(),
            vec![],
            ULP_BUDGET_EXP_LOG,
        ),
        (
            kernels::unary_op(UnaryOp::Log),
            (0..n)
                .map(|_| f32::from_bits(rng.next_u64() as u32 & 0x7fff_ffff))
                .collect(),
            vec![],
            ULP_BUDGET_EXP_LOG,
        ),
        (
            kernels::binary_op(BinaryOp::Pow),
            (0..n)
                .map(|_| f32::from_bits(rng.next_u64() as u32))
                .collect(),
            (0..n)
                .map(|i| match i % 3 {
                    0 => rng.unit() * 8.0 - 4.0,
                    1 => (rng.below(41) as f32) - 20.0,
                    _ => f32::from_bits(rng.next_u64() as u32),
                })
                .collect(),
            ULP_BUDGET_POW,
        ),
    ];
    for (k, g, s, budget) in sweeps {
        let cpu = compile_exact(&k);
        let input = Tensor {
            p: vec![0.0; g.len()],
            states: if s.is_empty() { vec![] } else { vec![s] },
            g,
        };
        let mut want = input.clone();
        step_ref(&k, &mut want, 0, 1);
        let mut got = input.clone();
        cpu.step(got.args(0, vec![])).expect("step");
        let (d, _, i) = max_ulps(&got, &want);
        let arg = input.g[i];
        eprintln!(
            "{}: max {d} ulps (at g={arg:e}, s={:?}: got {:e}, want {:e})",
            k.rule,
            input.states.first().map(|s| s[i]),
            got.p[i],
            want.p[i]
        );
        assert!(d <= budget, "{}: {d} ulps > {budget}", k.rule);
    }
}

#[test]
fn cpu_pow_special_cases() {
    let k = kernels::binary_op(BinaryOp::Pow);
    let cpu = compile_exact(&k);
    let vals = [
        0.0f32,
        -0.0,
        1.0,
        -1.0,
        2.0,
        -2.0,
        0.5,
        -0.5,
        3.0,
        -3.0,
        2.5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-45,
        8_388_609.0,
        16_777_216.0,
    ];
    let mut g = vec![];
    let mut s = vec![];
    for &x in &vals {
        for &y in &vals {
            g.push(x);
            s.push(y);
        }
    }
    let input = Tensor {
        p: vec![0.0; g.len()],
        g,
        states: vec![s],
    };
    let mut want = input.clone();
    step_ref(&k, &mut want, 0, 1);
    let mut got = input.clone();
    cpu.step(got.args(0, vec![])).expect("step");
    for i in 0..got.p.len() {
        assert!(
            ulps(got.p[i], want.p[i]) <= ULP_BUDGET_POW
                && got.p[i].is_sign_negative() == want.p[i].is_sign_negative()
                || (got.p[i].is_nan() && want.p[i].is_nan()),
            "pow({:e}, {:e}) = {:e}, want {:e}",
            input.g[i],
            input.states[0][i],
            got.p[i],
            want.p[i]
        );
    }
}

#[test]
fn cpu_dead_nodes_and_unused_buffers() {
    // A kernel that reads a state it never uses in a store and computes a dead exp.
    let mut k = Kb::new("dead", &[], &["s"]);
    let g = k.load(optc_kernel::Slot::Grad);
    let s = k.load(kernels::st(0));
    let _dead = k.un(UnaryOp::Exp, s);
    let two = k.c(2.0);
    let r = k.bin(BinaryOp::Mul, g, two);
    k.store(optc_kernel::Slot::Param, r);
    agree(&k.finish(), 12, true, true);
}
