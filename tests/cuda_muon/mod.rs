//! Muon on the GPU: matrix stages through cuBLAS (`runtime/src/matrix/cuda.rs`) against the
//! interpreter and the CPU, and the torch fixtures of `tests/muon_fidelity.rs` replayed on CUDA.
//!
//! A module of `tests/cuda_fidelity.rs` (one GPU test binary in the bundle, not two), which
//! takes `tests/muon_fidelity.rs` as a module: one copy of the replay and its budgets (its CPU
//! tests therefore run there too). The comparison with the interpreter steps one Muon optimizer
//! over a mixed model (wide, tall, square and odd matrices, a 3-D tensor, vectors and a scalar
//! through the AdamW branch) on both targets with the same gradients, host slices on one and
//! device buffers on the other, and bounds each tensor's distance as `tests/muon_fidelity.rs`
//! does: matrices relative to how far the step moved them, the AdamW branch and the momentum
//! buffers by docs/fidelity.md's scaled error.
//!
//! Needs an NVIDIA GPU, its driver and cuBLAS; without a GPU each test prints why it is skipped
//! and passes, unless `OPTC_REQUIRE_GPU` is set, where it fails. `OPTC_REPO_DIR` points the
//! fixture replay at a copy of the fixtures (the GPU bundle, `docs/cuda.md`).
use super::{gpu_present, muon_fidelity};
use optc_runtime::{Optimizer, Options, Rule, Target, Update};

/// The mixed model: wide, tall, square and odd matrices (one large enough for cuBLAS's blocked
/// kernels), a 3-D tensor (seen as 4 × 30), a 1-row matrix, vectors and a scalar.
const MODEL: &[(&str, &[usize])] = &[
    ("wide", &[48, 320]),
    ("tall", &[320, 48]),
    ("square", &[96, 96]),
    ("odd", &[37, 53]),
    ("odd_tall", &[53, 37]),
    ("big", &[256, 1000]),
    ("conv", &[4, 5, 6]),
    ("row", &[1, 17]),
    ("bias", &[53]),
    ("scale", &[1]),
];

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

fn optimizer(target: Target, bf16: bool) -> Optimizer {
    let options = Options {
        target,
        flags: [("ns_bf16".to_string(), bf16)].into_iter().collect(),
        ..Options::default()
    };
    let mut opt =
        Optimizer::with_options(Rule::stdlib("muon").expect("muon"), options).expect("optimizer");
    opt.set_hyper("lr", 0.02).expect("lr");
    opt.set_hyper("adamw_lr", 0.01).expect("adamw_lr");
    for (name, shape) in MODEL {
        opt.add_param(name, shape).expect("param");
    }
    opt
}

/// Steps the model `steps` times on the interpreter (host slices) and on CUDA (device buffers
/// through `Update::cuda`); returns each tensor's and each momentum buffer's worst error with
/// its budget.
fn against_interpreter(bf16: bool, steps: u64) -> Vec<(String, f64, f64)> {
    let mut reference = optimizer(Target::Interp, bf16);
    let mut cuda = optimizer(Target::Cuda, bf16);
    let stream = cuda.cuda_stream().expect("a CUDA optimizer").clone();
    let p0: Vec<Vec<f32>> = MODEL
        .iter()
        .enumerate()
        .map(|(i, (_, s))| data(s.iter().product(), 1000 + i as u64))
        .collect();
    let mut host = p0.clone();
    let mut dev: Vec<_> = p0
        .iter()
        .map(|p| stream.clone_htod(p).expect("upload"))
        .collect();
    let matrix_budget = if bf16 {
        muon_fidelity::BF16_BUDGET
    } else {
        muon_fidelity::F32_BUDGET
    };
    let mut worst: Vec<(String, f64, f64)> = Vec::new();
    for t in 1..=steps {
        let g: Vec<Vec<f32>> = MODEL
            .iter()
            .enumerate()
            .map(|(i, (_, s))| data(s.iter().product(), 100 * t + i as u64))
            .collect();
        let gd: Vec<_> = g
            .iter()
            .map(|g| stream.clone_htod(g).expect("upload"))
            .collect();
        reference
            .step(
                MODEL
                    .iter()
                    .zip(host.iter_mut())
                    .zip(&g)
                    .map(|(((n, _), p), g)| Update::new(n, p, g)),
            )
            .expect("interpreter step");
        cuda.step(
            MODEL
                .iter()
                .zip(dev.iter_mut())
                .zip(&gd)
                .map(|(((n, _), p), g)| Update::cuda(n, p, g, &stream)),
        )
        .unwrap_or_else(|e| panic!("CUDA step {t}: {e}"));
        for (i, (name, shape)) in MODEL.iter().enumerate() {
            let got = stream.clone_dtoh(&dev[i]).expect("download");
            let want = &host[i];
            let err = got.iter().zip(want).fold(0.0f64, |a, (x, r)| {
                let d = f64::from((x - r).abs());
                if d.is_nan() {
                    f64::INFINITY
                } else {
                    a.max(d)
                }
            });
            let (e, budget) = if shape.len() >= 2 {
                let moved = want
                    .iter()
                    .zip(&p0[i])
                    .fold(0.0f64, |a, (r, q)| a.max(f64::from((r - q).abs())));
                (err / moved, matrix_budget)
            } else {
                let mag = want
                    .iter()
                    .chain(&p0[i])
                    .fold(0.0f64, |a, v| a.max(f64::from(v.abs())));
                (err / mag, muon_fidelity::FIDELITY_BUDGET)
            };
            record(&mut worst, name.to_string(), e, budget);
            if shape.len() >= 2 {
                let buf = |o: &Optimizer| -> Vec<f32> {
                    let states = o.states(name).expect("states");
                    states
                        .into_iter()
                        .find(|(s, _)| *s == "buf")
                        .expect("buf")
                        .1
                };
                let (r, c) = (buf(&reference), buf(&cuda));
                let scale = r.iter().fold(0.0f64, |a, v| a.max(f64::from(v.abs())));
                let err = c
                    .iter()
                    .zip(&r)
                    .fold(0.0f64, |a, (x, r)| a.max(f64::from((x - r).abs())));
                record(
                    &mut worst,
                    format!("{name}.buf"),
                    err / scale,
                    muon_fidelity::FIDELITY_BUDGET,
                );
            }
        }
    }
    worst
}

fn record(worst: &mut Vec<(String, f64, f64)>, name: String, e: f64, budget: f64) {
    match worst.iter_mut().find(|w| w.0 == name) {
        Some(w) => w.1 = w.1.max(e),
        None => worst.push((name, e, budget)),
    }
}

fn check(worst: &[(String, f64, f64)], what: &str) {
    eprintln!("{what}: {worst:?}");
    for (n, e, budget) in worst {
        assert!(e <= budget, "{what}: `{n}` is {e:e} off, budget {budget:e}");
    }
    assert_eq!(worst.len(), MODEL.len() + 8, "{worst:?}");
}

#[test]
fn muon_on_cuda_matches_the_interpreter_on_a_mixed_model() {
    if gpu_present("muon_on_cuda_matches_the_interpreter_on_a_mixed_model") {
        check(
            &against_interpreter(false, 3),
            "f32 Newton–Schulz, CUDA vs interpreter",
        );
    }
}

#[test]
fn muon_with_bf16_newton_schulz_on_cuda_matches_the_interpreter() {
    if gpu_present("muon_with_bf16_newton_schulz_on_cuda_matches_the_interpreter") {
        check(
            &against_interpreter(true, 3),
            "bf16 Newton–Schulz, CUDA vs interpreter",
        );
    }
}

#[test]
fn muon_on_cuda_matches_torch() {
    if gpu_present("muon_on_cuda_matches_torch") {
        muon_fidelity::check("f32", Target::Cuda);
        muon_fidelity::check("plain", Target::Cuda);
        muon_fidelity::check("bf16", Target::Cuda);
    }
}
