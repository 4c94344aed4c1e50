//! The three products of one Newton–Schulz step (`A = X·Xᵀ`, `A·A`, `B·X`) on each GPT-2 small
//! matrix shape, with `gemm` (what runtime/src/matrix/cpu.rs calls, with the same arguments) and
//! with `faer`, back to back in one process on the same rayon pool and the same inputs: for each
//! product, `reps` rounds of (gemm, faer), alternating which goes first, medians reported. Both
//! are row-major f32 `C = A·B` with the transposed operand materialized, as optc's matrix
//! programs give it. Prints one line per product and shape, and the totals per crate.
//!
//! Usage: gemm-faer-bench [--threads N] [--reps R]

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use std::num::NonZeroUsize;
use std::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// `c = a·b`, `m × k` by `k × n`, row-major, with gemm as `matrix::cpu::matmul` calls it.
fn with_gemm(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, threads: usize) {
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n);
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the lengths are checked above; row-major strides; `c` does not alias the inputs;
    // `read_dst = false`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// `c = a·b` with faer, on row-major views of the same buffers.
fn with_faer(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, threads: usize) {
    let par = match NonZeroUsize::new(threads) {
        Some(t) if threads > 1 => Par::Rayon(t),
        _ => Par::Seq,
    };
    let a = MatRef::from_row_major_slice(a, m, k);
    let b = MatRef::from_row_major_slice(b, k, n);
    let c = MatMut::from_row_major_slice_mut(c, m, n);
    matmul(c, Accum::Replace, a, b, 1.0f32, par);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let threads = arg("--threads", 2);
    let reps = arg("--reps", 5).max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    // GPT-2 small's matrix shapes as Muon sees them (wide: m <= n), with how many of each.
    let shapes: [(&str, usize, usize, usize); 6] = [
        ("768x768 (attn c_proj)", 768, 768, 12),
        ("768x2304 (attn c_attn)", 768, 2304, 12),
        ("768x3072 (mlp c_fc)", 768, 3072, 12),
        ("3072x768 (mlp c_proj, seen as 768x3072)", 768, 3072, 12),
        ("1024x768 (wpe, seen as 768x1024)", 768, 1024, 1),
        ("50257x768 (wte, seen as 768x50257)", 768, 50257, 1),
    ];
    println!("threads {threads}, reps {reps}; medians in ms; GFLOP/s = 2mkn / time");
    let (mut total_gemm, mut total_faer) = (0.0, 0.0);
    pool.install(|| {
        for (label, m, n, count) in shapes {
            let x = data(m * n, 1);
            let xt = {
                let mut t = vec![0.0; m * n];
                for i in 0..m {
                    for j in 0..n {
                        t[j * m + i] = x[i * n + j];
                    }
                }
                t
            };
            let a = data(m * m, 2);
            // (what, lhs, rhs, m, k, n)
            let products: [(&str, &[f32], &[f32], usize, usize, usize); 3] = [
                ("X·Xᵀ", &x, &xt, m, n, m),
                ("A·A", &a, &a, m, m, m),
                ("B·X", &a, &x, m, m, n),
            ];
            for (what, lhs, rhs, pm, pk, pn) in products {
                let mut c1 = vec![0.0f32; pm * pn];
                let mut c2 = vec![0.0f32; pm * pn];
                // Warm-up (page faults, packing buffers).
                with_gemm(lhs, rhs, &mut c1, pm, pk, pn, threads);
                with_faer(lhs, rhs, &mut c2, pm, pk, pn, threads);
                let (mut tg, mut tf) = (Vec::new(), Vec::new());
                for r in 0..reps {
                    let mut g = || {
                        let t0 = Instant::now();
                        with_gemm(lhs, rhs, &mut c1, pm, pk, pn, threads);
                        tg.push(t0.elapsed().as_secs_f64());
                    };
                    let mut f = || {
                        let t0 = Instant::now();
                        with_faer(lhs, rhs, &mut c2, pm, pk, pn, threads);
                        tf.push(t0.elapsed().as_secs_f64());
                    };
                    if r % 2 == 0 {
                        g();
                        f();
                    } else {
                        f();
                        g();
                    }
                }
                // Both computed the same product (to f32 summation-order differences).
                let scale = c1.iter().fold(0.0f32, |s, v| s.max(v.abs()));
                let diff = c1
                    .iter()
                    .zip(&c2)
                    .fold(0.0f32, |s, (u, v)| s.max((u - v).abs()));
                assert!(diff <= 1e-4 * scale.max(1.0), "{label} {what}: {diff} vs {scale}");
                let (g, f) = (median(tg), median(tf));
                let flops = 2.0 * (pm * pk * pn) as f64;
                total_gemm += g * count as f64;
                total_faer += f * count as f64;
                println!(
                    "{label:42} {what:5} gemm {:9.2} ms {:6.1} GFLOP/s | faer {:9.2} ms {:6.1} GFLOP/s | faer/gemm time {:.2}",
                    g * 1e3,
                    flops / g / 1e9,
                    f * 1e3,
                    flops / f / 1e9,
                    f / g
                );
            }
        }
    });
    println!(
        "one Newton-Schulz step over GPT-2 small's 50 matrices (products only): gemm {:.2} s, faer {:.2} s, faer/gemm {:.2}",
        total_gemm,
        total_faer,
        total_faer / total_gemm
    );
}
