//! GPU results against the reference interpreter, for every stdlib rule in every flag
//! combination and the hand-built kernels: single tensors (vector and scalar entries),
//! many tensors in one multi-tensor launch, hyper changes, special values, state round trips.
//!
//! Needs an NVIDIA GPU and driver; without one each test prints why it is skipped and passes,
//! unless `OPTC_REQUIRE_GPU` is set (as on GPU CI machines), where it fails.
//! Kernels without approximate ops must match the interpreter bit for bit (both are IEEE f32
//! with round-to-nearest); `exp`, `log` and general `pow` within the budget in `docs/cuda.md`.
#![cfg(all(feature = "cuda", feature = "compiler"))]

#[path = "../../compiler/tests/ptx_kernels/mod.rs"]
mod ptx_kernels;

use optc_compiler::backend::interp::{step_f32, Buffers};
use optc_compiler::backend::ptx::{emit, Options};
use optc_kernel::{BinaryOp, Expr, Init, Kernel, UnaryOp};
use optc_runtime::cuda::{devices, driver_available, CudaOptimizer, ParamId};

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
        for flags in rule.flag_sets() {
            out.push(
                rule.specialize_values(&flags)
                    .unwrap_or_else(|e| panic!("{name}: {e}")),
            );
        }
    }
    out.extend(ptx_kernels::all());
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

    fn compare(&self, k: &Kernel, opt: &CudaOptimizer, id: ParamId, p: &[f32], what: &str) {
        let rel = tolerance(k);
        check(&format!("{} {what}: p", k.rule), p, &self.p, rel);
        for (s, want) in k.states.iter().zip(&self.states) {
            let got = opt.state(id, &s.name).expect("state");
            check(
                &format!("{} {what}: state {}", k.rule, s.name),
                &got,
                want,
                rel,
            );
        }
        assert_eq!(opt.steps(id).expect("steps"), self.t);
        assert_eq!(opt.scalars(id).expect("scalars"), self.scalars.as_slice());
    }
}

fn load(k: &Kernel) -> CudaOptimizer {
    let ptx = emit(k, &Options::default()).expect("emit");
    CudaOptimizer::new(k.clone(), &ptx, 0).expect("load on device 0")
}

#[test]
fn single_tensor_steps_match_the_interpreter() {
    if !gpu_present("single_tensor_steps_match_the_interpreter") {
        return;
    }
    for k in kernels() {
        for n in [0usize, 1, 3, 4, 1027, 70_001] {
            let mut opt = load(&k);
            let stream = opt.stream().clone();
            let mut hypers = k.default_hypers();
            let p0 = data(n, 1);
            let mut p = stream.clone_htod(&p0).expect("upload p");
            let id = opt.add_param(&p).expect("add_param");
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
                opt.step(id, &mut p, &g).expect("step");
                reference.step(&k, &hypers, &g0);
                let got = stream.clone_dtoh(&p).expect("download p");
                reference.compare(&k, &opt, id, &got, &format!("n={n} step {}", step + 1));
            }
        }
    }
}

#[test]
fn misaligned_buffers_use_the_scalar_entry_and_match() {
    if !gpu_present("misaligned_buffers_use_the_scalar_entry_and_match") {
        return;
    }
    for k in kernels() {
        let n = 4099;
        let mut opt = load(&k);
        let stream = opt.stream().clone();
        let hypers = k.default_hypers();
        let p0 = data(n + 1, 7);
        let g0 = data(n + 1, 8);
        let mut p_all = stream.clone_htod(&p0).expect("upload");
        let g_all = stream.clone_htod(&g0).expect("upload");
        // Views that start one element in: 4-byte but not 16-byte aligned.
        let mut p = p_all.slice_mut(1..);
        let g = g_all.slice(1..);
        let id = opt.add_param(&p).expect("add_param");
        let mut reference = Reference::new(&k, &hypers, &p0[1..]);
        for _ in 0..2 {
            opt.step(id, &mut p, &g).expect("step");
            reference.step(&k, &hypers, &g0[1..]);
        }
        let got = stream.clone_dtoh(&p).expect("download");
        reference.compare(&k, &opt, id, &got, "misaligned");
    }
}

#[test]
fn one_multi_tensor_launch_matches_per_tensor_interpretation() {
    if !gpu_present("one_multi_tensor_launch_matches_per_tensor_interpretation") {
        return;
    }
    for k in kernels() {
        let lens = [5usize, 4096, 33_001, 1, 0, 100_003];
        let mut opt = load(&k);
        let stream = opt.stream().clone();
        let hypers = k.default_hypers();
        let mut ps = Vec::new();
        let mut refs = Vec::new();
        let mut ids = Vec::new();
        for (i, &n) in lens.iter().enumerate() {
            let p0 = data(n, 10 + i as u64);
            let p = stream.clone_htod(&p0).expect("upload");
            ids.push(opt.add_param(&p).expect("add_param"));
            refs.push(Reference::new(&k, &hypers, &p0));
            ps.push(p);
        }
        // Tensor 1 takes a step alone first, so its step count (and uniforms) differ.
        let g1 = data(lens[1], 99);
        let g1_dev = stream.clone_htod(&g1).expect("upload");
        opt.step(ids[1], &mut ps[1], &g1_dev).expect("step");
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
            let mut items: Vec<_> = ps
                .iter_mut()
                .zip(&gs)
                .zip(&ids)
                .map(|((p, g), id)| (*id, p, g))
                .collect();
            opt.step_many(&mut items).expect("step_many");
            for (r, g) in refs.iter_mut().zip(&gs0) {
                r.step(&k, &hypers, g);
            }
        }
        for ((r, p), id) in refs.iter().zip(&ps).zip(&ids) {
            let got = stream.clone_dtoh(p).expect("download");
            r.compare(&k, &opt, *id, &got, &format!("multi tensor {}", id.index()));
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
        let mut opt = load(&k);
        let stream = opt.stream().clone();
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
        let id = opt.add_param(&p).expect("add_param");
        let mut reference = Reference::new(&k, &hypers, &p0);
        opt.step(id, &mut p, &g).expect("step");
        reference.step(&k, &hypers, &g0);
        let got = stream.clone_dtoh(&p).expect("download");
        reference.compare(&k, &opt, id, &got, "special values");
    }
}

#[test]
fn states_and_progress_round_trip() {
    if !gpu_present("states_and_progress_round_trip") {
        return;
    }
    let k = ptx_kernels::exp_log_pow();
    let mut opt = load(&k);
    let stream = opt.stream().clone();
    let p = stream.clone_htod(&data(10, 3)).expect("upload");
    let id = opt.add_param(&p).expect("add_param");
    let acc = data(10, 4);
    opt.set_state(id, "acc", &acc).expect("set_state");
    assert_eq!(opt.state(id, "acc").expect("state"), acc);
    opt.set_progress(id, 7, &[0.25]).expect("set_progress");
    assert_eq!(opt.steps(id).expect("steps"), 7);
    assert!(opt.set_state(id, "acc", &acc[..3]).is_err());
    assert!(opt.state(id, "nope").is_err());
    assert!(opt.set_hyper("nope", 1.0).is_err());
}
