//! Steps one tensor on the GPU with a compiled rule, and prints what happened.
//!
//! ```text
//! cargo run --example cuda_step --features cuda [-- ARTIFACT.optc.json]
//! ```
//!
//! With an artifact path (from `optc compile RULE --target cuda -o ARTIFACT.optc.json`) it loads
//! that, with no compiler involved; without one it compiles the stdlib `adamw` to PTX first. On a
//! machine without a CUDA driver or device it prints the error and exits with status 1.

use optc_compiler::backend::ptx;
use optc_kernel::Artifact;
use optc_runtime::cuda::CudaOptimizer;
use std::process::ExitCode;

fn artifact() -> Result<Artifact, String> {
    if let Some(path) = std::env::args().nth(1) {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
        return Artifact::from_json(&text).map_err(|e| format!("{path}: {e}"));
    }
    let rule = match optc_compiler::stdlib::rule("adamw") {
        Some(Ok(rule)) => rule,
        Some(Err(d)) => return Err(d.to_string()),
        None => return Err("the stdlib has no adamw".into()),
    };
    let kernel = rule.specialize(&[]).map_err(|e| e.to_string())?;
    let module = ptx::emit(&kernel, &ptx::Options::default()).map_err(|e| e.to_string())?;
    Ok(Artifact::new(kernel, Some(module)))
}

fn run() -> Result<(), String> {
    let artifact = artifact()?;
    let mut opt = CudaOptimizer::from_artifact(&artifact, 0).map_err(|e| e.to_string())?;
    let stream = opt.stream().clone();
    let n = 10;
    let p0: Vec<f32> = (0..n).map(|i| 1.0 - 0.1 * i as f32).collect();
    let g0: Vec<f32> = (0..n).map(|i| 0.05 * (i as f32 - 4.5)).collect();
    let mut p = stream.clone_htod(&p0).map_err(|e| e.to_string())?;
    let g = stream.clone_htod(&g0).map_err(|e| e.to_string())?;
    let id = opt.add_param(&p).map_err(|e| e.to_string())?;
    println!("rule `{}` on the GPU, {n} elements", opt.kernel().rule);
    for (name, value) in opt.hypers() {
        println!("  hyper {name} = {value}");
    }
    println!("p before: {p0:?}");
    for _ in 0..3 {
        opt.step(id, &mut p, &g).map_err(|e| e.to_string())?;
    }
    let p1 = stream.clone_dtoh(&p).map_err(|e| e.to_string())?;
    println!(
        "p after {} steps: {p1:?}",
        opt.steps(id).map_err(|e| e.to_string())?
    );
    for state in &opt.kernel().states {
        let values = opt.state(id, &state.name).map_err(|e| e.to_string())?;
        println!("state {}: {values:?}", state.name);
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
