//! GPU results against the reference interpreter, for every stdlib rule in every flag
//! combination and the hand-built kernels, through the one `Optimizer` on `Target::Cuda`: single
//! tensors, misaligned views, many tensors in one launch, hyper changes, special values, host
//! slices, and checkpoints saved on the GPU and resumed.
//!
//! Needs an NVIDIA GPU and driver; without one each test prints why it is skipped and passes,
//! unless `OPTC_REQUIRE_GPU` is set (as on GPU CI machines), where it fails.
//! Kernels without approximate ops must match the interpreter bit for bit (both are IEEE f32
//! with round-to-nearest); `exp`, `log` and general `pow` within the budget in `docs/cuda.md`.
#![cfg(all(feature = "cuda", feature = "compiler"))]

#[path = "../../compiler/tests/ptx_kernels/mod.rs"]
mod ptx_kernels;

// Storage dtypes, factored kernels and loss scaling on the GPU live in this test binary as modules, so that the
// GPU bundle (48 MiB, every binary linking the whole runtime) holds one binary for them, not three.
#[path = "api_support/mod.rs"]
mod api_support;
#[path = "cuda_gpu/dtypes.rs"]
mod dtypes;
#[path = "cuda_gpu/factored.rs"]
mod factored;
#[path = "cuda_gpu/loss_scale.rs"]
mod loss_scale;

use optc_compiler::backend::interp::{step_f32, Buffers};
use optc_kernel::{BinaryOp, Expr, Init, Kernel, UnaryOp};
use optc_runtime::cuda::cudarc::driver::CudaStream;
use optc_runtime::cuda::{devices, driver_available};
use optc_runtime::{Optimizer, Options, Rule, Target, Update};
use std::sync::Arc;

/// Whether a GPU is present; prints the reason when not (and fails under `OPTC_REQUIRE_GPU`).
fn gpu_present(test: &str) -> bool {
    let reason = if !driver_available() {
        Some("no CUDA driver".to_string())
    } else {
        match devices() {
            Ok(d) if !d.is_empty() => None,
            Ok(_) => Some("no CUDA device".to_string()),
            Err(e) => Some(e.to_string()),
        }
    };
    match reason {
        None => true,
        Some(r) => {
            assert!(
                std::env::var_os("OPTC_REQUIRE_GPU").is_none(),
                "{test}: {r}, but OPTC_REQUIRE_GPU is set"
            );
            eprintln!("SKIPPED {test}: {r}");
            false
        }
    }
}

/// Deterministic values in [-1, 1).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Every stdlib rule in every flag combination, then the hand-built kernels.
fn kernels() -> Vec<Kernel> {
    let mut out = Vec::new();
    for name in optc_compiler::stdlib::names() {
        let rule = match optc_compiler::stdlib::rule(name) {
            Some(Ok(rule)) => rule,
            other => panic!("stdlib rule {name}: {other:?}"),
        };
        // A rule with one kernel per rank class is stepped through the optimizer, which picks
        // the kernel per tensor, by tests/cuda_fidelity.rs; its stages by launch.rs's tests.
        if rule.uses_rank() {
            continue;
        }
        for flags in rule.flag_sets() {
            out.push(
                rule.specialize_values(&flags)
                    .unwrap_or_else(|e| panic!("{name}: {e}")),
            );
        }
    }
    out.extend(ptx_kernels::elementwise());
    out
}

/// Relative tolerance: 0 (bit-exact) unless the body uses an approximated op (exp, log, or pow
/// with an exponent that is not a small constant integer).
fn tolerance(kernel: &Kernel) -> f32 {
    let approximate = kernel.stages[0].body.iter().any(|(_, e)| match *e {
        Expr::Unary(UnaryOp::Exp | UnaryOp::Log, _) => true,
        Expr::Binary(BinaryOp::Pow, _, b) => {
            !matches!(kernel.stages[0].body.get(b), Some(Expr::Const(c)) if c.fract() == 0.0 && c.abs() <= 64.0)
        }
        _ => false,
    });
    if approximate {
        2e-5
    } else {
        0.0
    }
}

fn check(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if rel == 0.0 {
            g.to_bits() == w.to_bits()
        } else {
            g == w || (g - w).abs() <= rel * w.abs() + f32::MIN_POSITIVE
        };
        assert!(
            ok,
            "{what}[{i}]: GPU {g:e} ({:#x}), interpreter {w:e} ({:#x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

/// One tensor as the interpreter sees it.
struct Reference {
    p: Vec<f32>,
    states: Vec<Vec<f32>>,
    scalars: Vec<f64>,
    t: u64,
}

impl Reference {
    fn new(k: &Kernel, hypers: &[f64], p: &[f32]) -> Reference {
        let init = k.eval_init(hypers).expect("init");
        let states = k
            .states
            .iter()
            .map(|s| match s.init {
                Init::Param => p.to_vec(),
                Init::Value(h) => vec![init[h.index()] as f32; p.len()],
            })
            .collect();
        Reference {
            p: p.to_vec(),
            states,
            scalars: k.initial_scalars(hypers).expect("scalars"),
            t: 0,
        }
    }

    fn step(&mut self, k: &Kernel, hypers: &[f64], g: &[f32]) {
        self.t += 1;
        let bufs = Buffers {
            param: &mut self.p,
            grad: g,
            states: self.states.iter_mut().map(|s| s.as_mut_slice()).collect(),
        };
        step_f32(k, hypers, self.t, &mut self.scalars, bufs).expect("interpreter step");
    }

    fn compare(&self, k: &Kernel, opt: &Optimizer, name: &str, p: &[f32], what: &str) {
        let rel = tolerance(k);
        check(&format!("{} {what}: p", k.rule), p, &self.p, rel);
        let states = opt.states(name).expect("states");
        assert_eq!(states.len(), self.states.len(), "{what}: state count");
        for ((s, got), want) in states.iter().zip(&self.states) {
            check(&format!("{} {what}: state {s}", k.rule), got, want, rel);
        }
        assert_eq!(opt.step_count(name).expect("steps"), self.t);
        let scalars: Vec<f64> = opt
            .scalars(name)
            .expect("scalars")
            .iter()
            .map(|s| s.1)
            .collect();
        assert_eq!(scalars, self.scalars);
    }
}

fn load(k: &Kernel) -> (Optimizer, Arc<CudaStream>) {
    let options = Options {
        target: Target::Cuda,
        ..Options::default()
    };
    let opt = Optimizer::with_options(Rule::from_kernel(k.clone()).expect("rule"), options)
        .expect("load on device 0");
    let stream = opt.cuda_stream().expect("a CUDA optimizer").clone();
    (opt, stream)
}

#[test]
fn single_tensor_steps_match_the_interpreter() {
    if !gpu_present("single_tensor_steps_match_the_interpreter") {
        return;
    }
    for k in kernels() {
        for n in [0usize, 1, 3, 4, 1027, 70_001] {
            let (mut opt, stream) = load(&k);
            let mut hypers = k.default_hypers();
            let p0 = data(n, 1);
            let mut p = stream.clone_htod(&p0).expect("upload p");
            opt.add_param("w", &[n]).expect("add_param");
            let mut reference = Reference::new(&k, &hypers, &p0);
            for step in 0..3u64 {
                if step == 2 {
                    // A hyper change takes effect without reloading.
                    let name = k.hypers[0].name.clone();
                    hypers[0] *= 0.5;
                    opt.set_hyper(&name, hypers[0]).expect("set_hyper");
                }
                let g0 = data(n, 100 + step);
                let g = stream.clone_htod(&g0).expect("upload g");
                opt.step([Update::cuda("w", &mut p, &g, &stream)])
                    .expect("step");
                reference.step(&k, &hypers, &g0);
                let got = stream.clone_dtoh(&p).expect("download p");
                reference.compare(&k, &opt, "w", &got, &format!("n={n} step {}", step + 1));
            }
        }
    }
}

#[test]
fn host_slices_step_on_the_gpu_and_match() {
    if !gpu_present("host_slices_step_on_the_gpu_and_match") {
        return;
    }
    for k in kernels() {
        let n = 5000;
        let (mut opt, _stream) = load(&k);
        let hypers = k.default_hypers();
        let mut p = data(n, 21);
        opt.add_param("w", &[n]).expect("add_param");
        let mut reference = Reference::new(&k, &hypers, &p);
        for step in 0..2u64 {
            let g = data(n, 200 + step);
            opt.step([Update::new("w", &mut p, &g)]).expect("step");
            reference.step(&k, &hypers, &g);
        }
        reference.compare(&k, &opt, "w", &p, "host slices");
    }
}

#[test]
fn misaligned_buffers_match() {
    if !gpu_present("misaligned_buffers_match") {
        return;
    }
    for k in kernels() {
        let n = 4099;
        let (mut opt, stream) = load(&k);
        let hypers = k.default_hypers();
        let p0 = data(n + 1, 7);
        let g0 = data(n + 1, 8);
        let mut p_all = stream.clone_htod(&p0).expect("upload");
        let g_all = stream.clone_htod(&g0).expect("upload");
        // Views that start one element in: 4-byte but not 16-byte aligned.
        let mut p = p_all.slice_mut(1..);
        let g = g_all.slice(1..);
        opt.add_param("w", &[n]).expect("add_param");
        let mut reference = Reference::new(&k, &hypers, &p0[1..]);
        for _ in 0..2 {
            opt.step([Update::cuda("w", &mut p, &g, &stream)])
                .expect("step");
            reference.step(&k, &hypers, &g0[1..]);
        }
        let got = stream.clone_dtoh(&p).expect("download");
        reference.compare(&k, &opt, "w", &got, "misaligned");
    }
}

#[test]
fn one_launch_over_many_tensors_matches_per_tensor_interpretation() {
    if !gpu_present("one_launch_over_many_tensors_matches_per_tensor_interpretation") {
        return;
    }
    for k in kernels() {
        let lens = [5usize, 4096, 33_001, 1, 0, 100_003];
        let names: Vec<String> = (0..lens.len()).map(|i| format!("t{i}")).collect();
        let (mut opt, stream) = load(&k);
        let hypers = k.default_hypers();
        let mut ps = Vec::new();
        let mut refs = Vec::new();
        for (i, &n) in lens.iter().enumerate() {
            let p0 = data(n, 10 + i as u64);
            ps.push(stream.clone_htod(&p0).expect("upload"));
            opt.add_param(&names[i], &[n]).expect("add_param");
            refs.push(Reference::new(&k, &hypers, &p0));
        }
        // Tensor 1 takes a step alone first, so its step count (and uniforms) differ.
        let g1 = data(lens[1], 99);
        let g1_dev = stream.clone_htod(&g1).expect("upload");
        opt.step([Update::cuda(&names[1], &mut ps[1], &g1_dev, &stream)])
            .expect("step");
        refs[1].step(&k, &hypers, &g1);
        for round in 0..2u64 {
            let gs0: Vec<Vec<f32>> = lens
                .iter()
                .enumerate()
                .map(|(i, &n)| data(n, 1000 * round + i as u64))
                .collect();
            let gs: Vec<_> = gs0
                .iter()
                .map(|g| stream.clone_htod(g).expect("upload"))
                .collect();
            let updates = names
                .iter()
                .zip(ps.iter_mut())
                .zip(&gs)
                .map(|((n, p), g)| Update::cuda(n, p, g, &stream));
            opt.step(updates).expect("step");
            for (r, g) in refs.iter_mut().zip(&gs0) {
                r.step(&k, &hypers, g);
            }
        }
        for ((r, p), name) in refs.iter().zip(&ps).zip(&names) {
            let got = stream.clone_dtoh(p).expect("download");
            r.compare(&k, &opt, name, &got, &format!("multi tensor {name}"));
        }
    }
}

#[test]
fn special_values_follow_the_op_definitions() {
    if !gpu_present("special_values_follow_the_op_definitions") {
        return;
    }
    let specials = [
        0.0f32,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-40,
        -1e-40,
        3e38,
        -2.5,
        1.0,
        -1.0,
        0.5,
    ];
    for k in [
        ptx_kernels::lion_minmax_sign(),
        ptx_kernels::exp_log_pow(),
        ptx_kernels::adamw(),
    ] {
        let (mut opt, stream) = load(&k);
        let hypers = k.default_hypers();
        let mut p0 = Vec::new();
        let mut g0 = Vec::new();
        for a in specials {
            for b in specials {
                p0.push(a);
                g0.push(b);
            }
        }
        let mut p = stream.clone_htod(&p0).expect("upload");
        let g = stream.clone_htod(&g0).expect("upload");
        opt.add_param("w", &[p0.len()]).expect("add_param");
        let mut reference = Reference::new(&k, &hypers, &p0);
        opt.step([Update::cuda("w", &mut p, &g, &stream)])
            .expect("step");
        reference.step(&k, &hypers, &g0);
        let got = stream.clone_dtoh(&p).expect("download");
        reference.compare(&k, &opt, "w", &got, "special values");
    }
}

#[test]
fn checkpoints_saved_on_the_gpu_resume_exactly() {
    if !gpu_present("checkpoints_saved_on_the_gpu_resume_exactly") {
        return;
    }
    let k = ptx_kernels::exp_log_pow();
    let hypers = k.default_hypers();
    let (mut opt, stream) = load(&k);
    let p0 = data(1000, 3);
    let mut p = stream.clone_htod(&p0).expect("upload");
    opt.add_param("w", &[1000]).expect("add_param");
    let mut reference = Reference::new(&k, &hypers, &p0);
    let g0 = data(1000, 4);
    let g = stream.clone_htod(&g0).expect("upload");
    opt.step([Update::cuda("w", &mut p, &g, &stream)])
        .expect("step");
    reference.step(&k, &hypers, &g0);
    let saved = opt.to_bytes().expect("save");
    let (mut resumed, _) = load(&k);
    resumed.add_param("w", &[1000]).expect("add_param");
    resumed.load_bytes(&saved).expect("load");
    let after_one = stream.clone_dtoh(&p).expect("download");
    let mut q = stream.clone_htod(&after_one).expect("upload");
    opt.step([Update::cuda("w", &mut p, &g, &stream)])
        .expect("step");
    resumed
        .step([Update::cuda("w", &mut q, &g, &stream)])
        .expect("step");
    reference.step(&k, &hypers, &g0);
    let got = stream.clone_dtoh(&q).expect("download");
    reference.compare(&k, &resumed, "w", &got, "resumed");
    assert_eq!(
        resumed.states("w").expect("states"),
        opt.states("w").expect("states")
    );
    assert!(opt.set_hyper("nope", 1.0).is_err());
}
