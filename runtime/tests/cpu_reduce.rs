//! Stages with reduce outputs on the CPU: every block partial equals, bit for bit, optc_kernel's
//! reference `block_partial` over the same per-element values (computed here in plain f32), for
//! lengths around every boundary (lanes, blocks, chunks), unaligned buffers, special values, and
//! 1, 2 and 3 threads; a max over negative values and a sum of `-0.0`s with short tails; and a
//! two-stage kernel run stage by stage (partials, f64 combine, host program, next stage) equals
//! the reference interpreter.
#![cfg(feature = "compiler")]

mod cpu_common;

use cpu_common::kernels;
use cpu_common::*;
use optc_compiler::backend::interp::{step_many, Buffers, TensorStep};
use optc_kernel::reduce::{block_partial, reduce};
use optc_kernel::{ReduceOp, REDUCE_BLOCK};
use optc_runtime::cpu::{CpuKernel, Partials, TensorArgs, MIN_CHUNK};

/// Lengths around every boundary: lanes (32), blocks (4096), and chunks (split over threads).
fn lengths() -> Vec<usize> {
    vec![
        0,
        1,
        31,
        32,
        33,
        4095,
        4096,
        4097,
        3 * 4096 + 5,
        2 * MIN_CHUNK + 3 * REDUCE_BLOCK + 17,
        5 * MIN_CHUNK + 1,
    ]
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool")
}

/// The per-element values of each reduce output of [`kernels::reducer`], in plain f32: `g`,
/// `g`, `g * g`, `g > p ? 1 : 0` and `p * g` (`p` as it was before the step).
fn reducer_values(p: &[f32], g: &[f32]) -> Vec<(ReduceOp, Vec<f32>)> {
    vec![
        (ReduceOp::Sum, g.to_vec()),
        (ReduceOp::Max, g.to_vec()),
        (ReduceOp::Sum, g.iter().map(|&x| x * x).collect()),
        (
            ReduceOp::Sum,
            p.iter()
                .zip(g)
                .map(|(&p, &g)| if g > p { 1.0 } else { 0.0 })
                .collect(),
        ),
        (
            ReduceOp::Max,
            p.iter().zip(g).map(|(&p, &g)| p * g).collect(),
        ),
    ]
}

/// The reference partials of one output over one tensor: `block_partial` of each block.
fn reference(op: ReduceOp, xs: &[f32]) -> Vec<f32> {
    xs.chunks(REDUCE_BLOCK)
        .map(|b| block_partial(op, b))
        .collect()
}

fn assert_partials(
    partials: &Partials,
    tensor: usize,
    expected: &[(ReduceOp, Vec<f32>)],
    what: &str,
) {
    for (r, (op, xs)) in expected.iter().enumerate() {
        let want = reference(*op, xs);
        let got = partials.get(tensor, r);
        assert_eq!(got.len(), want.len(), "{what}: output {r}: block count");
        for (b, (&x, &y)) in got.iter().zip(&want).enumerate() {
            assert!(
                same(x, y),
                "{what}: output {r} ({op:?}) block {b}: {x:e} ({:#010x}) vs reference {y:e} ({:#010x})",
                x.to_bits(),
                y.to_bits()
            );
        }
    }
}

/// Runs stage 0 of `k` on `inputs` (from element `off` on) on `threads` threads.
fn run(cpu: &CpuKernel, inputs: &mut [Tensor], off: usize, u: &[f32], threads: usize) -> Partials {
    let mut partials = Partials::new();
    let mut args: Vec<TensorArgs> = inputs.iter_mut().map(|t| t.args(off, u.to_vec())).collect();
    cpu.run_stage(0, &mut args, &mut partials, Some(&pool(threads)))
        .expect("run_stage");
    partials
}

#[test]
fn cpu_block_partials_equal_the_reference_bit_for_bit() {
    let k = kernels::reducer();
    let cpu = compile_exact(&k);
    let u = stage_uniforms(&k, 0, &[]);
    for specials in [false, true] {
        for off in [0, 1, 3] {
            let mut rng = Rng::new(7 + off as u64);
            let inputs: Vec<Tensor> = lengths()
                .iter()
                .map(|&n| Tensor::random(&k, n + off, &mut rng, specials))
                .collect();
            let expected: Vec<_> = inputs
                .iter()
                .map(|t| reducer_values(&t.p[off..], &t.g[off..]))
                .collect();
            let mut first: Option<Vec<Tensor>> = None;
            for threads in [1, 2, 3] {
                let mut data = inputs.clone();
                let partials = run(&cpu, &mut data, off, &u, threads);
                assert_eq!(partials.tensors(), inputs.len());
                for (t, e) in expected.iter().enumerate() {
                    let what = format!(
                        "tensor of {} (offset {off}, specials {specials}, {threads} threads)",
                        lengths()[t]
                    );
                    assert_partials(&partials, t, e, &what);
                }
                // The elementwise store next to the reductions: the same on every thread count,
                // and the interpreter's.
                match &first {
                    None => first = Some(data),
                    Some(f) => {
                        for (a, b) in data.iter().zip(f) {
                            assert_same(a, b, &format!("stores on {threads} threads"));
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn cpu_padded_tail_never_pollutes_a_reduction() {
    let k = kernels::reducer();
    let cpu = compile_exact(&k);
    let u = stage_uniforms(&k, 0, &[]);
    for n in [1, 5, 31, 33, 4097, 4096 + 37, 3 * 4096 + 5] {
        // Every value negative: a zero-filled lane would make the max 0 (or -0).
        let mut t = Tensor {
            p: vec![1.0; n],
            g: (0..n).map(|i| -1.0 - (i % 1000) as f32).collect(),
            states: vec![],
        };
        let want: Vec<f32> =
            t.g.chunks(REDUCE_BLOCK)
                .map(|b| b.iter().copied().fold(f32::NEG_INFINITY, f32::max))
                .collect();
        assert!(want.iter().all(|&m| m < 0.0));
        let partials = run(&cpu, std::slice::from_mut(&mut t), 0, &u, 2);
        assert_eq!(partials.get(0, 1), want.as_slice(), "{n}");
        // Every value -0.0: the sum keeps its sign only if no +0.0 is ever added.
        let mut z = Tensor {
            p: vec![1.0; n],
            g: vec![-0.0; n],
            states: vec![],
        };
        let partials = run(&cpu, std::slice::from_mut(&mut z), 0, &u, 2);
        for &s in partials.get(0, 0) {
            assert!(
                s == 0.0 && s.is_sign_negative(),
                "{n}: sum of -0.0s is {s:e}"
            );
        }
    }
}

#[test]
fn cpu_reductions_are_identical_across_runs() {
    let k = kernels::reducer();
    let cpu = compile_exact(&k);
    let u = stage_uniforms(&k, 0, &[]);
    let mut rng = Rng::new(99);
    let inputs: Vec<Tensor> = [3 * MIN_CHUNK + 11, 4097]
        .iter()
        .map(|&n| Tensor::random(&k, n, &mut rng, false))
        .collect();
    let runs: Vec<Vec<u32>> = (0..3)
        .map(|i| {
            let mut data = inputs.clone();
            let p = run(&cpu, &mut data, 0, &u, 1 + i);
            let mut bits = Vec::new();
            for t in 0..2 {
                for r in 0..5 {
                    bits.extend(p.get(t, r).iter().map(|x| x.to_bits()));
                }
            }
            bits
        })
        .collect();
    assert!(runs.windows(2).all(|w| w[0] == w[1]));
}

/// Runs every stage of `k` on `inputs` (one step call, step 1, default hypers) with
/// [`cpu_step`] on `threads` threads; returns every tensor's finalized reductions.
fn run_all_stages(cpu: &CpuKernel, inputs: &mut [Tensor], threads: usize) -> Vec<Vec<f64>> {
    let k = cpu.kernel();
    let hypers = k.default_hypers();
    let mut scalars = vec![k.initial_scalars(&hypers).expect("scalars"); inputs.len()];
    cpu_step(
        cpu,
        inputs,
        0,
        &hypers,
        1,
        &mut scalars,
        Some(&pool(threads)),
    )
}

#[test]
fn cpu_two_stages_run_stage_by_stage_match_plain_math() {
    let k = kernels::two_stage();
    let cpu = compile_exact(&k);
    let (lr, beta) = (0.1f64, 0.9f64);
    let mut rng = Rng::new(3);
    let lens = [0, 33, 4097, 3 * MIN_CHUNK + 4096 + 5];
    let inputs: Vec<Tensor> = lens
        .iter()
        .map(|&n| Tensor::random(&k, n, &mut rng, false))
        .collect();
    // The expected result in plain f32 (stage 0) and f64 (the host program), with the reference
    // reduction order.
    let expected: Vec<(Tensor, f64, f64)> = inputs
        .iter()
        .map(|t| {
            let m2: Vec<f32> = t.states[0]
                .iter()
                .zip(&t.g)
                .map(|(&m, &g)| beta as f32 * m + g)
                .collect();
            let pp: Vec<f32> = t.p.iter().map(|&p| p * p).collect();
            let mm: Vec<f32> = m2.iter().map(|&m| m * m).collect();
            let (p_sq, m_sq) = (reduce(ReduceOp::Sum, &pp), reduce(ReduceOp::Sum, &mm));
            let (pn, mn) = (p_sq.sqrt(), m_sq.sqrt());
            let ratio = if pn * mn > 0.0 { lr * (pn / mn) } else { lr };
            let p2 =
                t.p.iter()
                    .zip(&m2)
                    .map(|(&p, &m)| p - ratio as f32 * m)
                    .collect();
            let out = Tensor {
                p: p2,
                g: t.g.clone(),
                states: vec![m2],
            };
            (out, p_sq, m_sq)
        })
        .collect();
    for threads in [1, 2, 3] {
        let mut data = inputs.clone();
        let reduced = run_all_stages(&cpu, &mut data, threads);
        for (i, ((got, r), (want, p_sq, m_sq))) in
            data.iter().zip(&reduced).zip(&expected).enumerate()
        {
            assert_eq!(
                r[0].to_bits(),
                p_sq.to_bits(),
                "tensor {i}: sum p² on {threads} threads"
            );
            assert_eq!(
                r[1].to_bits(),
                m_sq.to_bits(),
                "tensor {i}: sum m² on {threads} threads"
            );
            assert_same(got, want, &format!("tensor {i} on {threads} threads"));
        }
    }
}

#[test]
fn probe_of_a_staged_kernel_moves_the_kernels_bytes() {
    let k = kernels::two_stage();
    // Stage 0 reads p, g, m and writes m; stage 1 reads p, m and writes p.
    assert_eq!(k.bytes_per_element(), 16 + 12);
    let mut probe = optc_runtime::probe::BandwidthProbe::for_kernel(&k, &[MIN_CHUNK + 5, 3]);
    assert_eq!(probe.bytes_per_element(), k.bytes_per_element());
    probe.run(Some(&pool(2)));
}

#[test]
fn cpu_staged_kernels_equal_the_interpreter_bit_for_bit() {
    for k in [
        kernels::reducer(),
        kernels::two_stage(),
        kernels::clipped_sgd(),
    ] {
        let cpu = compile_exact(&k);
        for specials in [false, true] {
            let mut rng = Rng::new(11);
            let inputs: Vec<Tensor> = [4097, 0, 2 * MIN_CHUNK + 4096 + 7, 31]
                .iter()
                .map(|&n| Tensor::random(&k, n, &mut rng, specials))
                .collect();
            let hypers = k.default_hypers();
            let mut want = inputs.clone();
            let mut scalars: Vec<Vec<f64>> = want
                .iter()
                .map(|_| k.initial_scalars(&hypers).expect("scalars"))
                .collect();
            let steps: Vec<TensorStep<f32>> = want
                .iter_mut()
                .zip(&mut scalars)
                .map(|(t, s)| TensorStep {
                    hypers: &hypers,
                    t: 1,
                    scalars: s,
                    view: None,
                    tensor: 0,
                    bufs: Buffers {
                        param: &mut t.p,
                        grad: &t.g,
                        states: t.states.iter_mut().map(|s| s.as_mut_slice()).collect(),
                    },
                    dims: None,
                })
                .collect();
            let report = step_many(&k, steps).expect("interpreter");
            for threads in [1, 2, 3] {
                let mut got = inputs.clone();
                let reduced = run_all_stages(&cpu, &mut got, threads);
                let what = format!("{} (specials {specials}, {threads} threads)", k.rule);
                for (t, (a, b)) in reduced.iter().zip(&report.reduced).enumerate() {
                    for (r, (&x, &y)) in a.iter().zip(b).enumerate() {
                        assert!(
                            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                            "{what}: tensor {t} reduction {r}: {x:e} vs interpreter {y:e}"
                        );
                    }
                }
                for (a, b) in got.iter().zip(&want) {
                    assert_same(a, b, &what);
                }
            }
        }
    }
}

#[test]
fn cpu_stage_arguments_are_checked_before_anything_runs() {
    use optc_runtime::cpu::CpuError;
    let k = kernels::two_stage();
    let cpu = compile_exact(&k);
    let mut rng = Rng::new(1);
    let input = Tensor::random(&k, 100, &mut rng, false);
    let mut partials = Partials::new();

    let mut t = input.clone();
    let err = cpu
        .run_stage(2, &mut [t.args(0, vec![])], &mut partials, None)
        .expect_err("no stage 2");
    assert!(
        matches!(
            err,
            CpuError::Stage {
                stage: 2,
                stages: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "rule `two_stage` has 2 stages; there is no stage 2"
    );

    // Stage 1 takes one uniform; stage 0's count is not accepted for it.
    let err = cpu
        .run_stage(1, &mut [t.args(0, vec![0.5, 0.5])], &mut partials, None)
        .expect_err("uniform count");
    assert!(
        matches!(
            err,
            CpuError::UniformCount {
                stage: 1,
                expected: 1,
                found: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_same(&t, &input, "nothing ran");

    // A staged kernel cannot be stepped as a one-stage kernel.
    let err = cpu
        .step_many(vec![t.args(0, vec![0.9])], None)
        .expect_err("staged kernel through step_many");
    assert!(matches!(err, CpuError::Kernel(_)), "{err}");
    assert_same(&t, &input, "nothing ran");
}
