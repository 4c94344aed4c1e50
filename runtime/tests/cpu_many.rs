//! `step_many` against `step`, argument checking, and FMA builds.
#![cfg(feature = "compiler")]

mod cpu_common;

use cpu_common::kernels;
use cpu_common::*;
use optc_runtime::cpu::{CpuError, CpuKernel, TensorArgs, MIN_CHUNK};

/// Tensors of mixed sizes: empty, tiny, odd, and large enough to be split into chunks.
fn sizes() -> Vec<usize> {
    vec![
        0,
        1,
        5,
        4097,
        MIN_CHUNK - 3,
        2 * MIN_CHUNK + 1,
        5 * MIN_CHUNK + 13,
        3,
    ]
}

#[test]
fn cpu_step_many_equals_step_bit_for_bit() {
    for k in [
        kernels::adamw_amsgrad(),
        kernels::logic(),
        kernels::transcendental(),
    ] {
        let cpu = CpuKernel::compile(&k).expect("compiles");
        let mut rng = Rng::new(21);
        let inputs: Vec<Tensor> = sizes()
            .iter()
            .map(|&n| Tensor::random(&k, n, &mut rng, true))
            .collect();
        let u = uniforms(&k, 3);

        let mut one_by_one = inputs.clone();
        for t in &mut one_by_one {
            cpu.step(t.args(0, u.clone())).expect("step");
        }
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let mut many = inputs.clone();
            let args: Vec<TensorArgs> = many.iter_mut().map(|t| t.args(0, u.clone())).collect();
            cpu.step_many(args, Some(&pool)).expect("step_many");
            for (a, b) in many.iter().zip(&one_by_one) {
                assert_same(a, b, &format!("{} on {threads} threads", k.rule));
            }
        }
        // The global pool.
        let mut many = inputs.clone();
        let args: Vec<TensorArgs> = many.iter_mut().map(|t| t.args(0, u.clone())).collect();
        cpu.step_many(args, None).expect("step_many");
        for (a, b) in many.iter().zip(&one_by_one) {
            assert_same(a, b, "global pool");
        }
    }
}

#[test]
fn cpu_bad_arguments_are_errors_and_touch_nothing() {
    let k = kernels::adamw_amsgrad();
    let cpu = CpuKernel::compile(&k).expect("compiles");
    let mut rng = Rng::new(5);
    let u = uniforms(&k, 1);
    let good = Tensor::random(&k, 100, &mut rng, false);

    // A state one element short, in the second tensor of two.
    let mut a = good.clone();
    let mut b = good.clone();
    b.states[1].pop();
    let args = vec![a.args(0, u.clone()), b.args(0, u.clone())];
    let err = cpu.step_many(args, None).expect_err("length mismatch");
    assert!(matches!(err, CpuError::Length { tensor: 1, .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("exp_avg_sq") && msg.contains("99") && msg.contains("100"),
        "{msg}"
    );
    assert_same(&a, &good, "first tensor untouched");

    // A short gradient.
    let mut c = good.clone();
    c.g.pop();
    let err = cpu.step(c.args(0, u.clone())).expect_err("short g");
    assert!(err.to_string().contains("`g`"), "{err}");

    // Wrong number of states.
    let mut d = good.clone();
    d.states.pop();
    let err = cpu.step(d.args(0, u.clone())).expect_err("states");
    assert!(
        matches!(
            err,
            CpuError::StateCount {
                expected: 3,
                found: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("max_exp_avg_sq"), "{err}");

    // Wrong number of uniforms.
    let mut e = good.clone();
    let err = cpu.step(e.args(0, vec![1.0])).expect_err("uniforms");
    assert!(
        matches!(
            err,
            CpuError::UniformCount {
                expected: 8,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_same(&e, &good, "untouched");
}

#[test]
fn cpu_invalid_kernel_is_an_error() {
    let mut k = kernels::sgd();
    k.stages[0].stores[0].value = optc_kernel::Handle::new(999);
    assert!(matches!(CpuKernel::compile(&k), Err(CpuError::Kernel(_))));
}

#[test]
fn cpu_kernel_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<CpuKernel>();
}

/// With FMA (where the host has it), AdamW stays within a few ULPs of the interpreter except
/// where a fused `b1 * m + (1 - b1) * g` cancels; measured: see `FMA_REL_BUDGET`.
#[test]
fn cpu_adamw_with_fma_is_close() {
    /// Relative difference allowed per element, against the larger of the result and the
    /// largest input magnitude of that element (cancellation makes plain ULPs meaningless).
    /// Measured: 1.09e-7 (0.92 ulp of 1.0) at most, on x86-64 with FMA.
    const FMA_REL_BUDGET: f32 = 2.0 * f32::EPSILON;
    let k = kernels::adamw_amsgrad();
    let cpu = CpuKernel::compile(&k).expect("compiles");
    let mut rng = Rng::new(77);
    let n = 4097;
    let input = Tensor {
        p: (0..n).map(|_| rng.unit() * 2.0 - 1.0).collect(),
        g: (0..n).map(|_| rng.unit() * 2.0 - 1.0).collect(),
        states: vec![
            (0..n).map(|_| rng.unit() * 0.2 - 0.1).collect(),
            (0..n).map(|_| rng.unit() * 0.01).collect(),
            (0..n).map(|_| rng.unit() * 0.01).collect(),
        ],
    };
    let mut want = input.clone();
    step_ref(&k, &mut want, 0, 5);
    let mut got = input.clone();
    cpu.step(got.args(0, uniforms(&k, 5))).expect("step");
    let mut worst = 0.0f32;
    for (bi, (x, y)) in got.buffers().iter().zip(want.buffers()).enumerate() {
        for i in 0..n {
            let scale = input
                .buffers()
                .iter()
                .map(|b| b[i].abs())
                .fold(y[i].abs(), f32::max);
            let rel = (x[i] - y[i]).abs() / scale;
            worst = worst.max(rel);
            assert!(
                rel <= FMA_REL_BUDGET,
                "buffer {bi} element {i}: {} vs {}",
                x[i],
                y[i]
            );
        }
    }
    eprintln!(
        "fma={}: worst relative difference {worst:e}",
        cpu.uses_fma()
    );
}
