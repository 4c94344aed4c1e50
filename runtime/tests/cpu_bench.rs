//! A microbenchmark to run by hand (not a timed assertion):
//!
//! ```text
//! cargo test --release -p optc-runtime --test cpu_bench -- --ignored --nocapture
//! ```
//!
//! AdamW (4 reads, 3 writes per element) over 64M elements on a 2-thread rayon pool, against a
//! plain Rust loop with the same memory traffic, split the same way on the same pool. Prints
//! elements per second for both (best of the rounds) and the median of the per-round ratios; the
//! two alternate so both see the same machine load. `cpu_bench_staged_vs_probe` does the same for
//! two-stage kernels (clipped SGD, a LAMB-like rule) against `BandwidthProbe::for_kernel`.
//! `OPTC_BENCH_N`, `OPTC_BENCH_THREADS` and `OPTC_BENCH_ROUNDS` override the size, the thread
//! count and the number of rounds.
#![cfg(feature = "compiler")]

mod cpu_common;

use cpu_common::kernels;
use cpu_common::uniforms;
use optc_runtime::cpu::{CpuKernel, TensorArgs};
use rayon::prelude::*;
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The probe: the AdamW memory pattern (read p, g, m, v; write p, m, v) with trivial math.
fn probe_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    for i in 0..p.len() {
        let gi = g[i];
        let mi = 0.9 * m[i] + 0.1 * gi;
        let vi = 0.999 * v[i] + 0.001 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= 0.001 * mi / (vi + 1e-8);
    }
}

#[test]
#[ignore = "benchmark: run by hand with --release --ignored --nocapture"]
fn cpu_bench_adamw_vs_probe() {
    let n = env("OPTC_BENCH_N", 64 << 20);
    let threads = env("OPTC_BENCH_THREADS", 2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let k = kernels::adamw();
    let cpu = CpuKernel::compile(&k).expect("compiles");
    let u = uniforms(&k, 10);
    let mut p = vec![0.5f32; n];
    let g = vec![0.25f32; n];
    let mut m = vec![0.0f32; n];
    let mut v = vec![0.0f32; n];
    // Same chunking as step_many: contiguous chunks, 4 per thread.
    let chunk = n.div_ceil(threads * 4).div_ceil(16) * 16;

    let rounds = env("OPTC_BENCH_ROUNDS", 11);
    let mut jit_times = Vec::new();
    let mut probe_times = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        let args = TensorArgs::f32(&mut p, &g, vec![&mut m, &mut v], u.clone());
        cpu.step_many(vec![args], Some(&pool)).expect("step");
        jit_times.push(t0.elapsed().as_secs_f64());

        let t0 = Instant::now();
        pool.install(|| {
            p.par_chunks_mut(chunk)
                .zip(g.par_chunks(chunk))
                .zip(m.par_chunks_mut(chunk))
                .zip(v.par_chunks_mut(chunk))
                .for_each(|(((p, g), m), v)| probe_chunk(p, g, m, v));
        });
        probe_times.push(t0.elapsed().as_secs_f64());
    }
    // The first round touches fresh pages; leave it out.
    let mut ratios: Vec<f64> = probe_times[1..]
        .iter()
        .zip(&jit_times[1..])
        .map(|(p, j)| p / j)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let best = |t: &[f64]| t[1..].iter().copied().fold(f64::INFINITY, f64::min);
    let jit = n as f64 / best(&jit_times);
    let probe = n as f64 / best(&probe_times);
    println!(
        "AdamW {n} elements, {threads} threads, fma={}: best JIT {:.3} G elem/s ({:.1} GB/s), best probe {:.3} G elem/s ({:.1} GB/s), best/best {:.3}, median paired ratio {:.3}",
        cpu.uses_fma(),
        jit / 1e9,
        jit * 28.0 / 1e9,
        probe / 1e9,
        probe * 28.0 / 1e9,
        jit / probe,
        ratios[ratios.len() / 2]
    );
    assert!(p.iter().all(|x| x.is_finite()));
}

/// A staged kernel's whole step (every stage, the partials combined and the host program run in
/// between) against [`optc_runtime::probe::BandwidthProbe::for_kernel`] (one pass per stage with
/// the stage's traffic), alternating, on the same pool: prints the median paired ratio.
fn bench_staged(k: &optc_kernel::Kernel) {
    use optc_kernel::reduce::combine;
    use optc_runtime::cpu::Partials;
    let n = env("OPTC_BENCH_N", 64 << 20);
    let threads = env("OPTC_BENCH_THREADS", 2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let cpu = CpuKernel::compile(k).expect("compiles");
    let mut p = vec![0.5f32; n];
    let g = vec![0.25f32; n];
    let mut states: Vec<Vec<f32>> = k.states.iter().map(|_| vec![0.125f32; n]).collect();
    let mut probe = optc_runtime::probe::BandwidthProbe::for_kernel(k, &[n]);
    let mut partials = Partials::new();
    let rounds = env("OPTC_BENCH_ROUNDS", 11);
    let (mut jit_times, mut probe_times) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t0 = Instant::now();
        let mut reduced = vec![f64::NAN; k.reductions.len()];
        for (s, stage) in k.stages.iter().enumerate() {
            let mut args = [TensorArgs::f32(
                &mut p,
                &g,
                states.iter_mut().map(|s| s.as_mut_slice()).collect(),
                cpu_common::stage_uniforms(k, s, &reduced),
            )];
            cpu.run_stage(s, &mut args, &mut partials, Some(&pool))
                .expect("stage");
            for (o, out) in stage.reduce.iter().enumerate() {
                let op = k.reductions[out.reduction.index()].op;
                reduced[out.reduction.index()] = combine(op, partials.get(0, o).iter().copied());
            }
        }
        jit_times.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        probe.run(Some(&pool));
        probe_times.push(t0.elapsed().as_secs_f64());
    }
    let mut ratios: Vec<f64> = probe_times[1..]
        .iter()
        .zip(&jit_times[1..])
        .map(|(p, j)| p / j)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let best = jit_times[1..].iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{} {n} elements, {threads} threads, {} B/elem over {} stages: best {:.3} G elem/s, median paired fraction of the probe {:.3}",
        k.rule,
        k.bytes_per_element(),
        k.stages.len(),
        n as f64 / best / 1e9,
        ratios[ratios.len() / 2]
    );
    assert!(p.iter().all(|x| x.is_finite()));
}

#[test]
#[ignore = "benchmark: run by hand with --release --ignored --nocapture"]
fn cpu_bench_staged_vs_probe() {
    bench_staged(&kernels::clipped_sgd());
    bench_staged(&kernels::two_stage());
}
