//! Fidelity of storage dtypes against torch (`tools/fixtures/bf16_adamw.py`,
//! `tests/fixtures_bf16/`; docs/fidelity.md), on the interpreter and the CPU JIT:
//!
//! - bf16 params, grads and states against torch's fused AdamW on bf16 CPU tensors: for each of
//!   p, exp_avg and exp_avg_sq, optc is no farther from fused than torch's own for-loop bf16 path
//!   is (largest difference, and number of elements that differ);
//! - bf16 params with f32 master weights follow torch's f32 AdamW on the same bf16-rounded
//!   gradients within the f32 budget of docs/fidelity.md, and the bf16 parameter is the master
//!   rounded to nearest.

use half::bf16;
use optc_kernel::{Dtype, Precision};
use optc_runtime::{Optimizer, Options, Rule, Target, Update};
use safetensors::SafeTensors;
use std::collections::BTreeMap;

/// The f32 budget of docs/fidelity.md (largest scaled error).
const BUDGET: f64 = 1e-5;

#[derive(serde::Deserialize)]
struct Manifest {
    hypers: BTreeMap<String, f64>,
    steps: usize,
    tensors: Vec<Spec>,
}

#[derive(serde::Deserialize)]
struct Spec {
    name: String,
    shape: Vec<usize>,
}

struct Fixture {
    manifest: Manifest,
    bytes: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures_bf16");
    let manifest = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest JSON");
    let bytes = std::fs::read(dir.join("adamw.safetensors")).expect("fixture");
    Fixture { manifest, bytes }
}

/// Tensor `key` widened to f32 (BF16 or F32 in the file).
fn values(st: &SafeTensors<'_>, key: &str) -> Vec<f32> {
    let v = st.tensor(key).unwrap_or_else(|_| panic!("{key}"));
    let d = v.data();
    match v.dtype() {
        safetensors::Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        safetensors::Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        other => panic!("{key}: {other:?}"),
    }
}

/// Steps the fixture's tensors through optc; returns per tensor (p, states by name).
type Run = Vec<(Vec<f32>, BTreeMap<String, Vec<f32>>)>;

fn run(f: &Fixture, target: Target, precision: Precision) -> Run {
    let st = SafeTensors::deserialize(&f.bytes).expect("safetensors");
    let options = Options {
        target,
        precision,
        allow_fma: false,
        ..Options::default()
    };
    let mut opt =
        Optimizer::with_options(Rule::stdlib("adamw").expect("adamw"), options).expect("optimizer");
    for (h, v) in &f.manifest.hypers {
        opt.set_hyper(h, *v).expect("hyper");
    }
    let mut params: Vec<Vec<bf16>> = Vec::new();
    let mut grads: Vec<Vec<bf16>> = Vec::new();
    for t in &f.manifest.tensors {
        opt.add_param(&t.name, &t.shape).expect("add");
        let to16 = |v: Vec<f32>| v.into_iter().map(bf16::from_f32).collect::<Vec<_>>();
        params.push(to16(values(&st, &format!("{}.p0", t.name))));
        grads.push(to16(values(&st, &format!("{}.grads", t.name))));
    }
    for s in 0..f.manifest.steps {
        let updates: Vec<Update<'_>> = f
            .manifest
            .tensors
            .iter()
            .zip(params.iter_mut())
            .zip(&grads)
            .map(|((t, p), g)| {
                let n = p.len();
                Update::bf16(&t.name, p, &g[s * n..(s + 1) * n])
            })
            .collect();
        opt.step(updates).expect("step");
    }
    f.manifest
        .tensors
        .iter()
        .zip(params)
        .map(|(t, p)| {
            let states = opt
                .states(&t.name)
                .expect("states")
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect();
            (p.iter().map(|x| x.to_f32()).collect(), states)
        })
        .collect()
}

/// (largest |a - b|, number of elements that differ).
fn distance(a: &[f32], b: &[f32]) -> (f64, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0.0, 0), |(m, n), (&x, &y)| {
        let d = (f64::from(x) - f64::from(y)).abs();
        (m.max(d), n + usize::from(x.to_bits() != y.to_bits()))
    })
}

#[test]
fn bf16_adamw_is_no_farther_from_torch_fused_than_torch_for_loop_is() {
    let f = fixture();
    let st = SafeTensors::deserialize(&f.bytes).expect("safetensors");
    let precision = Precision {
        param: Dtype::Bf16,
        state: Dtype::Bf16,
        ..Precision::default()
    };
    for target in [Target::Interp, Target::Cpu] {
        let got = run(&f, target, precision);
        for (t, (p, states)) in f.manifest.tensors.iter().zip(&got) {
            for (ours, torch) in [
                (p, "p"),
                (&states["m"], "exp_avg"),
                (&states["v"], "exp_avg_sq"),
            ] {
                let fused = values(&st, &format!("{}.fused.{torch}", t.name));
                let lp = values(&st, &format!("{}.loop.{torch}", t.name));
                let (d_ours, n_ours) = distance(ours, &fused);
                let (d_loop, n_loop) = distance(&lp, &fused);
                eprintln!(
                    "{target} {}.{torch}: optc vs fused: max {d_ours:.3e}, {n_ours} differ; for-loop vs fused: max {d_loop:.3e}, {n_loop} differ (of {})",
                    t.name,
                    fused.len()
                );
                assert!(
                    d_ours <= d_loop && n_ours <= n_loop,
                    "{target} {}.{torch}: optc is farther from fused ({d_ours:e}, {n_ours}) than the for-loop path ({d_loop:e}, {n_loop})",
                    t.name
                );
            }
        }
    }
}

#[test]
fn bf16_params_with_f32_masters_follow_f32_adamw_and_are_the_master_rounded() {
    let f = fixture();
    let st = SafeTensors::deserialize(&f.bytes).expect("safetensors");
    let precision = Precision {
        param: Dtype::Bf16,
        state: Dtype::F32,
        master_weights: true,
        stochastic_rounding: None,
    };
    for target in [Target::Interp, Target::Cpu] {
        let got = run(&f, target, precision);
        for (t, (p, states)) in f.manifest.tensors.iter().zip(&got) {
            let master = &states["master"];
            for (ours, torch) in [
                (master, "p"),
                (&states["m"], "exp_avg"),
                (&states["v"], "exp_avg_sq"),
            ] {
                let want = values(&st, &format!("{}.f32.{torch}", t.name));
                let worst = ours.iter().zip(&want).fold(0f64, |w, (&x, &y)| {
                    let e = (f64::from(x) - f64::from(y)).abs() / f64::from(y.abs()).max(1.0);
                    w.max(e)
                });
                eprintln!(
                    "{target} {}.{torch} (f32 master run) vs torch f32: scaled error {worst:.3e}",
                    t.name
                );
                assert!(worst <= BUDGET, "{target} {}.{torch}: {worst:e}", t.name);
            }
            for (&x, &m) in p.iter().zip(master) {
                assert_eq!(
                    x.to_bits(),
                    bf16::from_f32(m).to_f32().to_bits(),
                    "p == round(master)"
                );
            }
        }
    }
}
