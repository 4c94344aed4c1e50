//! One Muon step over the GPT-2 small shapes on the CPU: `stdlib/muon.opt` through one optimizer
//! (Muon on the 2-D tensors, its AdamW branch on the others), timed; the Newton–Schulz share is
//! the step minus the same rule compiled with `flag ns_steps = 0`, and the products' GFLOP/s are
//! `MatrixProgram::product_flops` over that time, next to a large square `gemm` product on the
//! same threads (the machine's measured GEMM peak). See BENCHMARKS.md for the command.
//!
//! Usage: muon_step [--threads N] [--steps S] [--bf16]   (prints one JSON line)

use optc_kernel::matrix::WideView;
use optc_runtime::{shapes, Optimizer, Options, Rule, Target, Update};
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds per step (median of `steps` after one warm-up step) of `rule` on the GPT-2 shapes.
fn time_steps(rule: Rule, threads: usize, steps: usize, bf16: bool) -> f64 {
    let options = Options {
        target: Target::Cpu,
        threads: Some(threads),
        flags: vec![("ns_bf16".into(), bf16)],
        ..Options::default()
    };
    let mut opt = Optimizer::with_options(rule, options).expect("optimizer");
    opt.set_hyper("lr", 0.02).expect("lr");
    let shapes = shapes::gpt2_small();
    let mut params: Vec<Vec<f32>> = Vec::new();
    let mut grads: Vec<Vec<f32>> = Vec::new();
    let mut x = 12345u32;
    let mut next = || {
        x = x.wrapping_mul(1664525).wrapping_add(1013904223);
        (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    };
    for (name, shape) in &shapes {
        opt.add_param(name, shape).expect("param");
        let n: usize = shape.iter().product();
        params.push((0..n).map(|_| next() * 0.04).collect());
        grads.push((0..n).map(|_| next() * 1e-3).collect());
    }
    let mut times = Vec::new();
    for s in 0..=steps {
        let t0 = Instant::now();
        let updates = shapes
            .iter()
            .zip(params.iter_mut())
            .zip(&grads)
            .map(|(((n, _), p), g)| Update::new(n, p, g));
        opt.step(updates).expect("step");
        if s > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    median(times)
}

/// GFLOP/s of one large square product on `threads` threads (best of 3).
fn gemm_peak(threads: usize) -> f64 {
    let n = 2048;
    let a = optc_kernel::matrix::Mat {
        rows: n,
        cols: n,
        data: (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect(),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        pool.install(|| optc_runtime::cpu::matrix_product(&a, &a, threads));
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

fn main() {
    let threads: usize = arg("--threads").map_or(2, |s| s.parse().expect("--threads N"));
    let steps: usize = arg("--steps").map_or(3, |s| s.parse().expect("--steps S"));
    let bf16 = std::env::args().any(|a| a == "--bf16");
    let source = optc_compiler::stdlib::source("muon").expect("muon");
    let no_ns = source.replace("flag ns_steps = 5", "flag ns_steps = 0");
    assert_ne!(
        no_ns, source,
        "muon.opt no longer declares `flag ns_steps = 5`"
    );
    let full = time_steps(Rule::stdlib("muon").expect("muon"), threads, steps, bf16);
    let base = time_steps(
        Rule::from_source("muon_ns0.opt", &no_ns).expect("muon, 0 steps"),
        threads,
        steps,
        bf16,
    );
    // The products of one step: the matrix program of the matrix kernel, per 2-D tensor.
    let rule = optc_compiler::stdlib::rule("muon")
        .expect("muon")
        .expect("checks");
    let flags: Vec<bool> = rule
        .flags()
        .iter()
        .map(|f| if f.name == "ns_bf16" { bf16 } else { f.default })
        .collect();
    let kernel = rule
        .specialize_values_with(
            &flags,
            &optc_compiler::CompileOptions {
                rank: optc_kernel::RankClass::Matrix,
                ..Default::default()
            },
        )
        .expect("matrix kernel");
    let flops: f64 = shapes::gpt2_small()
        .iter()
        .filter_map(|(_, s)| WideView::of_shape(s))
        .map(|v| {
            kernel
                .stages
                .iter()
                .filter_map(|st| st.matrix.as_ref())
                .map(|m| m.product_flops(v))
                .sum::<f64>()
        })
        .sum();
    let ns = full - base;
    println!(
        "{{\"threads\":{threads},\"steps\":{steps},\"bf16\":{bf16},\"step_s\":{full:.4},\"no_ns_step_s\":{base:.4},\"ns_share\":{:.4},\"product_gflop\":{:.1},\"ns_gflops\":{:.2},\"gemm_peak_gflops\":{:.2}}}",
        ns / full,
        flops / 1e9,
        flops / ns / 1e9,
        gemm_peak(threads)
    );
}
