//! Fidelity on the GPU: the PyTorch fixtures of `tests/fixtures/` replayed through the CUDA target,
//! against the same budget as the CPU (`docs/fidelity.md`), and Muon's matrix stages through
//! cuBLAS (`cuda_muon`).
//!
//! Takes: `tests/fidelity.rs` as a module, so the fixture loader, the replay and the budget are
//! the one copy the CPU backends use (its CPU tests therefore run here too; they take a few
//! seconds). Gives: one test, every fixture (clipped cases included) through the one `Optimizer`
//! with `Target::Cuda` on device 0. Guarantees: each step runs on the device; the replay hands
//! host slices to `Optimizer::step`, which copies them up and the results back, and reads the
//! states through `Optimizer::states`, so it sees exactly what the kernels wrote.
//!
//! Needs an NVIDIA GPU and driver; without one the test prints why it is skipped and passes,
//! unless `OPTC_REQUIRE_GPU` is set, where it fails. `OPTC_REPO_DIR` points the replay at a copy
//! of the fixtures (the GPU bundle, `docs/cuda.md`).
#![cfg(feature = "cuda")]

#[path = "fidelity.rs"]
mod fidelity;

#[path = "muon_fidelity.rs"]
mod muon_fidelity;

/// Muon's matrix stages on CUDA (cuBLAS).
#[path = "cuda_muon/mod.rs"]
mod cuda_muon;

use optc_runtime::cuda::{devices, driver_available};
use optc_runtime::Target;

/// Whether a GPU is present; prints the reason when not (and fails under `OPTC_REQUIRE_GPU`).
fn gpu_present(test: &str) -> bool {
    let reason = if !driver_available() {
        Some("no CUDA driver".to_string())
    } else {
        match devices() {
            Ok(d) if !d.is_empty() => None,
            Ok(_) => Some("no CUDA device".to_string()),
            Err(e) => Some(e.to_string()),
        }
    };
    match reason {
        None => true,
        Some(r) => {
            assert!(
                std::env::var_os("OPTC_REQUIRE_GPU").is_none(),
                "{test}: {r}, but OPTC_REQUIRE_GPU is set"
            );
            eprintln!("SKIPPED {test}: {r}");
            false
        }
    }
}

#[test]
fn every_stdlib_rule_matches_torch_on_cuda() {
    if gpu_present("every_stdlib_rule_matches_torch_on_cuda") {
        fidelity::replay_all(fidelity::Backend {
            name: "cuda",
            target: Target::Cuda,
        });
    }
}
