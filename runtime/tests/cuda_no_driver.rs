//! Without a CUDA driver every entry point returns an error (never panics); errors that need no
//! driver (a bad artifact, no PTX) come first.
#![cfg(all(feature = "cuda", feature = "compiler"))]

#[path = "../../compiler/tests/ptx_kernels/mod.rs"]
mod ptx_kernels;

use optc_compiler::backend::ptx::{emit, Options};
use optc_kernel::Artifact;
use optc_runtime::cuda::{copy_bandwidth, devices, driver_available, CudaError, CudaOptimizer};

#[test]
fn entry_points_fail_cleanly_without_a_driver() {
    if driver_available() {
        eprintln!("SKIPPED: a CUDA driver is present; this test covers machines without one");
        return;
    }
    let kernel = ptx_kernels::adamw();
    let ptx = emit(&kernel, &Options::default()).expect("emit");
    let err = CudaOptimizer::new(kernel.clone(), &ptx, 0)
        .err()
        .expect("no driver");
    assert!(matches!(err, CudaError::NoDriver), "{err}");
    assert!(err.to_string().contains("no CUDA driver"), "{err}");
    let artifact = Artifact::new(kernel, Some(ptx));
    let err = CudaOptimizer::from_artifact_json(&artifact.to_json().expect("serialize"), 0)
        .err()
        .expect("no driver");
    assert!(matches!(err, CudaError::NoDriver), "{err}");
    assert!(matches!(devices(), Err(CudaError::NoDriver)));
    assert!(matches!(
        copy_bandwidth(0, 1 << 20, 3),
        Err(CudaError::NoDriver)
    ));
}

#[test]
fn artifact_problems_are_reported_before_touching_the_driver() {
    let kernel = ptx_kernels::sgd_selects();
    let no_ptx = Artifact::new(kernel.clone(), None);
    let err = CudaOptimizer::from_artifact(&no_ptx, 0)
        .err()
        .expect("no PTX");
    assert!(matches!(err, CudaError::NoPtx(_)), "{err}");
    assert!(err.to_string().contains("--target cuda"), "{err}");
    let err = CudaOptimizer::from_artifact_json("{ not json", 0)
        .err()
        .expect("bad json");
    assert!(matches!(err, CudaError::Artifact(_)), "{err}");
    let mut broken = kernel;
    let dup = broken.stages[0].stores[0];
    broken.stages[0].stores.push(dup);
    let ptx = emit(&ptx_kernels::sgd_selects(), &Options::default()).expect("emit");
    let err = CudaOptimizer::new(broken, &ptx, 0)
        .err()
        .expect("invalid kernel");
    assert!(matches!(err, CudaError::Kernel(_)), "{err}");
}
