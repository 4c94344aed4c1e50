//! Times one optimizer step of optc's `adamw` through `optc-candle` against `candle_nn::AdamW` on
//! the 148 parameter tensors of GPT-2 small (124,439,808 f32 parameters), the same vars and
//! gradients for both, alternated step by step in one process. Prints the median of each and the
//! ratio (candle_nn time / optc time) as the last line, in JSON.
//!
//! Run with `cargo run --release -p optc-candle --example gpt2_step -- [--threads T] [--iters N]`.
//! `--threads` sizes optc's pool (default: all cores). Needs about 3 GiB of memory.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer as _, ParamsAdamW};
use optc_candle::{Config, Group, OptcOptimizer, Options, Rule};
use std::time::Instant;

fn arg(name: &str) -> Result<Option<usize>, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .filter(|&v: &usize| v >= 1)
            .map(Some)
            .ok_or_else(|| format!("{name} needs a whole number >= 1")),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads = arg("--threads")?;
    let iters = arg("--iters")?.unwrap_or(10);
    let shapes = optc_runtime::shapes::gpt2_small();
    let elements: usize = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    let mut vars = Vec::with_capacity(shapes.len());
    let mut grads = GradStore::default();
    for (_, shape) in &shapes {
        let v = Var::from_tensor(&Tensor::randn(0f32, 0.02, shape.clone(), &Device::Cpu)?)?;
        let g = Tensor::randn(0f32, 1e-3, shape.clone(), &Device::Cpu)?;
        grads.insert(v.as_tensor(), g);
        vars.push(v);
    }
    let hypers = ParamsAdamW::default();
    let options = Options {
        threads,
        ..Options::default()
    };
    let config = Config::new(Rule::stdlib("adamw")?)
        .options(options)
        .hyper("lr", hypers.lr)
        .hyper("weight_decay", hypers.weight_decay);
    let mut group = Group::new();
    for ((name, _), v) in shapes.iter().zip(&vars) {
        group = group.named(name, v.clone());
    }
    let mut optc = OptcOptimizer::builder(config).group(group).build()?;
    let mut candle = AdamW::new(vars.clone(), hypers)?;
    // One warm-up step each: creates the states.
    optc.step(&grads)?;
    candle.step(&grads)?;
    let (mut t_optc, mut t_candle) = (Vec::new(), Vec::new());
    for _ in 0..iters {
        let t = Instant::now();
        optc.step(&grads)?;
        t_optc.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        candle.step(&grads)?;
        t_candle.push(t.elapsed().as_secs_f64());
    }
    let (a, b) = (median(t_optc), median(t_candle));
    let pool = threads.map_or_else(|| "all cores".to_string(), |t| t.to_string());
    println!(
        "GPT-2 small, {} tensors, {elements} parameters, optc threads: {pool}",
        shapes.len()
    );
    println!(
        "optc-candle adamw:  {:.1} ms per step (median of {iters})",
        a * 1e3
    );
    println!(
        "candle_nn::AdamW:   {:.1} ms per step (median of {iters})",
        b * 1e3
    );
    println!(
        "{{\"tensors\": {}, \"elements\": {elements}, \"iters\": {iters}, \"optc_threads\": {}, \"optc_s\": {a:.6}, \"candle_s\": {b:.6}, \"ratio\": {:.2}}}",
        shapes.len(),
        threads.map_or_else(|| "null".to_string(), |t| t.to_string()),
        b / a
    );
    Ok(())
}
