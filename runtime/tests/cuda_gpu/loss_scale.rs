//! Loss scaling with inf/NaN skip on the GPU (docs/loss_scaling.md): the same `Optimizer` on
//! `Target::Cuda` against the interpreter, with device buffers, for staged and single-pass rules,
//! clipped and not: a step with an inf or a NaN in any tensor writes nothing (the checkpoint and
//! every parameter bit-identical, no step count moved) and is reported; the other steps match
//! the interpreter.
//!
//! Needs an NVIDIA GPU and driver; without one each test prints why it is skipped and passes,
//! unless `OPTC_REQUIRE_GPU` is set (as on GPU CI machines), where it fails.
#![cfg(all(feature = "cuda", feature = "compiler"))]

use super::api_support::data;
use super::gpu_present;
use optc_runtime::{Optimizer, Options, Rule, Target, Update};

const S: f64 = 4096.0;
const LENS: [usize; 3] = [5000, 7, 4096];

fn optimizer(rule: &str, target: Target, clip: Option<f64>) -> Optimizer {
    let options = Options {
        target,
        allow_fma: false,
        loss_scale: Some(S),
        max_grad_norm: clip,
        ..Options::default()
    };
    let mut opt =
        Optimizer::with_options(Rule::stdlib(rule).expect("rule"), options).expect("optimizer");
    opt.add_param("a", &[LENS[0]]).expect("a");
    let g = opt.add_group(&[]).expect("group");
    opt.add_param_to(g, "b", &[LENS[1]]).expect("b");
    opt.add_param("c", &[LENS[2]]).expect("c");
    opt
}

/// Step `k`'s scaled gradients, with an inf (step 1) or a NaN (step 3) in one tensor.
fn grads(k: u32) -> Vec<Vec<f32>> {
    let mut g: Vec<Vec<f32>> = LENS
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            data(n, 50 * k + i as u32)
                .iter()
                .map(|x| x * 0.01 * S as f32)
                .collect()
        })
        .collect();
    match k {
        1 => g[2][4095] = f32::INFINITY,
        3 => g[1][0] = f32::NAN,
        _ => {}
    }
    g
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    for (i, (x, y)) in got.iter().zip(want).enumerate() {
        let tol = 1e-6 * y.abs().max(1.0);
        assert!(
            (x - y).abs() <= tol,
            "{what}[{i}]: gpu {x} vs interpreter {y}"
        );
    }
}

#[test]
fn skipped_steps_write_nothing_on_the_gpu_and_the_rest_match_the_interpreter() {
    if !gpu_present("skipped_steps_write_nothing_on_the_gpu_and_the_rest_match_the_interpreter") {
        return;
    }
    for (rule, clip) in [
        ("adamw", None),
        ("adamw", Some(0.5)),
        ("lamb", None),
        ("sgd", None),
        ("lion", Some(1.0)),
    ] {
        let mut gpu = optimizer(rule, Target::Cuda, clip);
        let mut cpu = optimizer(rule, Target::Interp, clip);
        let stream = gpu.cuda_stream().expect("stream").clone();
        let p0: Vec<Vec<f32>> = LENS
            .iter()
            .enumerate()
            .map(|(i, &n)| data(n, 7 + i as u32))
            .collect();
        let mut pd: Vec<_> = p0
            .iter()
            .map(|p| stream.clone_htod(p).expect("upload"))
            .collect();
        let mut ph = p0.clone();
        for k in 0..5u32 {
            let g = grads(k);
            let gd: Vec<_> = g
                .iter()
                .map(|g| stream.clone_htod(g).expect("upload"))
                .collect();
            let before = gpu.to_bytes().expect("checkpoint");
            let before_p: Vec<Vec<f32>> = pd
                .iter()
                .map(|p| stream.clone_dtoh(p).expect("p"))
                .collect();
            let [pa, pb, pc] = &mut pd[..] else { panic!() };
            let r = gpu
                .step([
                    Update::cuda("a", pa, &gd[0], &stream),
                    Update::cuda("b", pb, &gd[1], &stream),
                    Update::cuda("c", pc, &gd[2], &stream),
                ])
                .expect("gpu step");
            let [ha, hb, hc] = &mut ph[..] else { panic!() };
            let q = cpu
                .step([
                    Update::new("a", ha, &g[0]),
                    Update::new("b", hb, &g[1]),
                    Update::new("c", hc, &g[2]),
                ])
                .expect("interp step");
            assert_eq!(r.skipped, q.skipped, "{rule} step {k}");
            assert_eq!(r.skipped, k == 1 || k == 3, "{rule} step {k}");
            let now: Vec<Vec<f32>> = pd
                .iter()
                .map(|p| stream.clone_dtoh(p).expect("p"))
                .collect();
            if r.skipped {
                assert!(
                    before == gpu.to_bytes().expect("checkpoint"),
                    "{rule} step {k} wrote"
                );
                let bits = |v: &[Vec<f32>]| -> Vec<Vec<u32>> {
                    v.iter()
                        .map(|t| t.iter().map(|x| x.to_bits()).collect())
                        .collect()
                };
                assert_eq!(bits(&before_p), bits(&now), "{rule} step {k}: params moved");
            }
            for (i, n) in ["a", "b", "c"].iter().enumerate() {
                close(&format!("{rule} step {k} {n}"), &now[i], &ph[i]);
                assert_eq!(
                    gpu.step_count(n).expect("ok"),
                    cpu.step_count(n).expect("ok")
                );
            }
        }
    }
}
