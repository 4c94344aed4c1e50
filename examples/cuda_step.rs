//! Steps one tensor on the GPU with a compiled rule, and prints what happened.
//!
//! ```text
//! cargo run --example cuda_step --features cuda [-- ARTIFACT.optc.json]
//! ```
//!
//! With an artifact path (from `optc compile RULE --target cuda -o ARTIFACT.optc.json`) it loads
//! that, with no compiler involved; without one it uses the stdlib `adamw` (compiled to PTX in
//! process). On a machine without a CUDA driver or device it prints the error and exits with
//! status 1.

use optc_runtime::{Optimizer, Options, Rule, Target, Update};
use std::process::ExitCode;

fn rule() -> Result<Rule, String> {
    match std::env::args().nth(1) {
        Some(path) => {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
            Rule::from_artifact_json(&text).map_err(|e| format!("{path}: {e}"))
        }
        None => Rule::stdlib("adamw").map_err(|e| e.to_string()),
    }
}

fn run() -> Result<(), String> {
    let options = Options {
        target: Target::Cuda,
        ..Options::default()
    };
    let mut opt = Optimizer::with_options(rule()?, options).map_err(|e| e.to_string())?;
    let stream = opt
        .cuda_stream()
        .ok_or("a CUDA optimizer has a stream")?
        .clone();
    let n = 10;
    let p0: Vec<f32> = (0..n).map(|i| 1.0 - 0.1 * i as f32).collect();
    let g0: Vec<f32> = (0..n).map(|i| 0.05 * (i as f32 - 4.5)).collect();
    let mut p = stream.clone_htod(&p0).map_err(|e| e.to_string())?;
    let g = stream.clone_htod(&g0).map_err(|e| e.to_string())?;
    opt.add_param("w", &[n]).map_err(|e| e.to_string())?;
    println!("rule `{}` on the GPU, {n} elements", opt.rule().name());
    for h in opt.rule().hypers() {
        println!("  hyper {} = {}", h.name, h.default);
    }
    println!("p before: {p0:?}");
    for _ in 0..3 {
        opt.step([Update::cuda("w", &mut p, &g, &stream)])
            .map_err(|e| e.to_string())?;
    }
    let p1 = stream.clone_dtoh(&p).map_err(|e| e.to_string())?;
    println!(
        "p after {} steps: {p1:?}",
        opt.step_count("w").map_err(|e| e.to_string())?
    );
    for (name, values) in opt.states("w").map_err(|e| e.to_string())? {
        println!("state {name}: {values:?}");
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
