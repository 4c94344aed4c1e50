//! Without a CUDA driver every entry point returns an error (never panics); errors that need no
//! driver (a bad artifact, no PTX) come first.
#![cfg(all(feature = "cuda", feature = "compiler"))]

#[path = "../../compiler/tests/ptx_kernels/mod.rs"]
mod ptx_kernels;

use optc_compiler::backend::ptx::{emit, Options as PtxOptions};
use optc_kernel::Artifact;
use optc_runtime::cuda::{copy_bandwidth, devices, driver_available, CudaError};
use optc_runtime::{Optimizer, Options, Rule, RuntimeError, Target};

fn cuda() -> Options {
    Options {
        target: Target::Cuda,
        ..Options::default()
    }
}

#[test]
fn entry_points_fail_cleanly_without_a_driver() {
    if driver_available() {
        eprintln!("SKIPPED: a CUDA driver is present; this test covers machines without one");
        return;
    }
    let kernel = ptx_kernels::adamw();
    let rule = Rule::from_kernel(kernel.clone()).expect("rule");
    let err = Optimizer::with_options(rule, cuda()).expect_err("no driver");
    assert!(
        matches!(err, RuntimeError::Cuda(CudaError::NoDriver)),
        "{err}"
    );
    assert!(err.to_string().contains("no CUDA driver"), "{err}");
    let ptx = emit(&kernel, &PtxOptions::default()).expect("emit");
    let artifact = Artifact::new(kernel, Some(ptx));
    let rule = Rule::from_artifact_json(&artifact.to_json().expect("serialize")).expect("rule");
    let err = Optimizer::with_options(rule, cuda()).expect_err("no driver");
    assert!(
        matches!(err, RuntimeError::Cuda(CudaError::NoDriver)),
        "{err}"
    );
    assert!(matches!(devices(), Err(CudaError::NoDriver)));
    assert!(matches!(
        copy_bandwidth(0, 1 << 20, 3),
        Err(CudaError::NoDriver)
    ));
}

#[test]
fn artifact_problems_are_reported_before_touching_the_driver() {
    let err = Rule::from_artifact_json("{ not json").expect_err("bad json");
    assert!(matches!(err, RuntimeError::Artifact(_)), "{err}");
    let mut broken = ptx_kernels::sgd_selects();
    let ptx = emit(&broken, &PtxOptions::default()).expect("emit");
    let dup = broken.stages[0].stores[0];
    broken.stages[0].stores.push(dup);
    let err = Rule::from_artifact(Artifact::new(broken, Some(ptx))).expect_err("invalid kernel");
    assert!(matches!(err, RuntimeError::Kernel(_)), "{err}");
}

/// Every storage setting reaches the CUDA executor: without a driver the error is the driver's,
/// not a refusal of the dtypes.
#[test]
fn storage_dtypes_on_cuda_fail_with_the_driver_error_only() {
    use optc_kernel::{Dtype, Precision};
    if driver_available() {
        eprintln!("SKIPPED: a CUDA driver is present; this test covers machines without one");
        return;
    }
    let p = |param, state, master_weights, stochastic_rounding| Precision {
        param,
        state,
        master_weights,
        stochastic_rounding,
    };
    for rule in ["adamw", "adafactor", "muon", "lamb"] {
        for precision in [
            p(Dtype::Bf16, Dtype::Bf16, false, None),
            p(Dtype::F16, Dtype::F32, true, None),
            p(Dtype::Bf16, Dtype::F32, false, Some(3)),
            p(Dtype::F32, Dtype::Int8, false, None),
            p(Dtype::Bf16, Dtype::Int8, false, None),
        ] {
            let options = Options {
                precision,
                ..cuda()
            };
            let err = Optimizer::with_options(Rule::stdlib(rule).expect("stdlib"), options)
                .expect_err("no driver");
            assert!(
                matches!(err, RuntimeError::Cuda(CudaError::NoDriver)),
                "{rule} {precision:?}: {err}"
            );
        }
    }
}
