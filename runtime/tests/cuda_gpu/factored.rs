//! Factored kernels on the GPU (stdlib `adafactor`: Row and Col scopes, `[rows]`/`[cols]`
//! states) through the one `Optimizer` on `Target::Cuda`, against the reference interpreter bit
//! for bit (adafactor's stage bodies have no approximated op, and the GPU entries fold in the
//! order of `optc_kernel::reduce::{row_partials, col_partials}`; `docs/stages.md`).
//!
//! The shapes: a vector (the 1-D fallback kernel), 67 × 1031 (odd sizes), 130 × 5 (rows above
//! and not a multiple of `COL_BLOCK_ROWS`), a batched 3-D tensor, 2 × 4100 (more than one
//! `REDUCE_BLOCK` per row), 1 × 1, all in one step call; host slices and device buffers; launch
//! shapes that change the grid but not the bits; states read back at their factored lengths;
//! a checkpoint saved on the GPU resumes exactly.
//!
//! Needs an NVIDIA GPU and driver; without one each test prints why it is skipped and passes,
//! unless `OPTC_REQUIRE_GPU` is set (as on GPU CI machines), where it fails.
#![cfg(all(feature = "cuda", feature = "compiler"))]

use super::api_support::{bits, data};
use super::gpu_present;
use optc_runtime::cuda::LaunchShape;
use optc_runtime::{Optimizer, Options, Rule, Target, Update};

const SHAPES: [&[usize]; 7] = [
    &[1000],
    &[67, 1031],
    &[130, 5],
    &[3, 65, 33],
    &[2, 4100],
    &[1, 1],
    &[64, 3],
];

/// Parameters and states (name, bits) of every tensor after the steps.
type Run = (Vec<Vec<u32>>, Vec<Vec<(String, Vec<u32>)>>);

fn optimizer(target: Target, maximize: bool, launch: LaunchShape) -> Optimizer {
    let mut options = Options {
        target,
        allow_fma: false,
        flags: vec![("maximize".into(), maximize)],
        ..Options::default()
    };
    options.cuda.launch = launch;
    let mut opt =
        Optimizer::with_options(Rule::stdlib("adafactor").expect("stdlib"), options).expect("opt");
    opt.set_hyper("weight_decay", 0.1).expect("hyper");
    for (i, s) in SHAPES.iter().enumerate() {
        opt.add_param(&format!("t{i}"), s).expect("add");
    }
    opt
}

fn start() -> Vec<Vec<f32>> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| data(s.iter().product(), 7 + i as u32))
        .collect()
}

fn grads(params: &[Vec<f32>], k: u32) -> Vec<Vec<f32>> {
    params
        .iter()
        .enumerate()
        .map(|(i, p)| data(p.len(), 100 * k + i as u32))
        .collect()
}

fn names() -> Vec<String> {
    (0..SHAPES.len()).map(|i| format!("t{i}")).collect()
}

/// `count` steps from step `from`, with host slices.
fn host_steps(opt: &mut Optimizer, params: &mut [Vec<f32>], from: u32, count: u32) {
    let names = names();
    for k in from..from + count {
        let g = grads(params, k);
        let updates = names
            .iter()
            .zip(params.iter_mut())
            .zip(&g)
            .map(|((n, p), g)| Update::new(n, p, g));
        opt.step(updates).expect("step");
    }
}

fn states(opt: &Optimizer) -> Vec<Vec<(String, Vec<u32>)>> {
    names()
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

fn host_run(target: Target, maximize: bool, launch: LaunchShape) -> Run {
    let mut opt = optimizer(target, maximize, launch);
    let mut params = start();
    host_steps(&mut opt, &mut params, 0, 3);
    (params.iter().map(|p| bits(p)).collect(), states(&opt))
}

/// The same steps with the parameters and gradients in device memory.
fn device_run(maximize: bool) -> Run {
    let mut opt = optimizer(Target::Cuda, maximize, LaunchShape::default());
    let stream = opt.cuda_stream().expect("a CUDA optimizer").clone();
    let host = start();
    let mut params: Vec<_> = host
        .iter()
        .map(|p| stream.clone_htod(p).expect("upload"))
        .collect();
    let names = names();
    for k in 0..3 {
        let g: Vec<_> = grads(&host, k)
            .iter()
            .map(|g| stream.clone_htod(g).expect("upload"))
            .collect();
        let updates: Vec<Update<'_>> = names
            .iter()
            .zip(params.iter_mut())
            .zip(&g)
            .map(|((n, p), g)| Update::cuda(n, p, g, &stream))
            .collect();
        opt.step(updates).expect("step");
    }
    let p = params
        .iter()
        .map(|p| bits(&stream.clone_dtoh(p).expect("download")))
        .collect();
    (p, states(&opt))
}

fn assert_same(what: &str, got: &Run, want: &Run) {
    for (i, (g, w)) in got.0.iter().zip(&want.0).enumerate() {
        let first = g.iter().zip(w).position(|(a, b)| a != b);
        assert!(
            g.len() == w.len() && first.is_none(),
            "{what}: parameter t{i} {:?}: first difference at {first:?}",
            SHAPES[i]
        );
    }
    assert_eq!(got.0.len(), want.0.len(), "{what}: tensors");
    assert_eq!(got.1, want.1, "{what}: states");
}

#[test]
fn adafactor_on_the_gpu_gives_the_interpreters_bits() {
    if !gpu_present("adafactor_on_the_gpu_gives_the_interpreters_bits") {
        return;
    }
    for maximize in [false, true] {
        let want = host_run(Target::Interp, maximize, LaunchShape::default());
        // The states have their factored lengths.
        let lens: Vec<usize> = want.1[1].iter().map(|(_, v)| v.len()).collect();
        assert_eq!(lens, vec![67, 1031]);
        let lens: Vec<usize> = want.1[3].iter().map(|(_, v)| v.len()).collect();
        assert_eq!(lens, vec![3 * 65, 3 * 33]);
        let what = format!("maximize={maximize}");
        let got = host_run(Target::Cuda, maximize, LaunchShape::default());
        assert_same(&format!("{what} host slices"), &got, &want);
        assert_same(
            &format!("{what} device buffers"),
            &device_run(maximize),
            &want,
        );
        // Another grid (blocks not a multiple of 32 threads asked for, few blocks: the
        // grid-stride loops take several row and column blocks each) gives the same bits.
        let small = LaunchShape {
            block: 40,
            blocks_per_sm: 1,
            chunk_elems: 4096,
        };
        assert_same(
            &format!("{what} small grid"),
            &host_run(Target::Cuda, maximize, small),
            &want,
        );
    }
}

#[test]
fn a_checkpoint_saved_on_the_gpu_resumes_exactly() {
    if !gpu_present("a_checkpoint_saved_on_the_gpu_resumes_exactly") {
        return;
    }
    let mut opt = optimizer(Target::Cuda, false, LaunchShape::default());
    let mut params = start();
    host_steps(&mut opt, &mut params, 0, 2);
    let saved = opt.to_bytes().expect("checkpoint");
    let mut tail = params.clone();
    host_steps(&mut opt, &mut tail, 2, 2);
    // Resumed on the interpreter and on the GPU: the interpreter's bits both times.
    let mut reference = optimizer(Target::Interp, false, LaunchShape::default());
    reference
        .load_bytes(&saved)
        .expect("load on the interpreter");
    let mut want = params.clone();
    host_steps(&mut reference, &mut want, 2, 2);
    let mut again = optimizer(Target::Cuda, false, LaunchShape::default());
    again.load_bytes(&saved).expect("load on the GPU");
    let mut resumed = params.clone();
    host_steps(&mut again, &mut resumed, 2, 2);
    let b = |x: &[Vec<f32>]| x.iter().map(|p| bits(p)).collect::<Vec<_>>();
    assert_eq!(b(&tail), b(&want), "the GPU's own steps 3 and 4");
    assert_eq!(b(&resumed), b(&want), "resumed on the GPU");
    assert_eq!(states(&again), states(&reference), "states after resuming");
}
