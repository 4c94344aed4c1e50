//! The storage settings the PTX tests run (`ptx_ptxas`, `ptx_sim`): those of
//! `runtime/tests/api_dtypes.rs`, to which each test adds its int8 ones.

use optc_kernel::{Dtype, Precision};

/// A storage setting: parameter and state dtypes, master weights, stochastic-rounding seed.
pub fn precision(
    param: Dtype,
    state: Dtype,
    master_weights: bool,
    stochastic_rounding: Option<u64>,
) -> Precision {
    Precision {
        param,
        state,
        master_weights,
        stochastic_rounding,
    }
}

/// The settings of `runtime/tests/api_dtypes.rs` (`settings()`): bf16/bf16, f16/f32, f32/bf16,
/// masters, stochastic rounding with bf16 and f16 parameters.
pub fn api_dtypes() -> Vec<Precision> {
    let p = precision;
    vec![
        p(Dtype::Bf16, Dtype::Bf16, false, None),
        p(Dtype::F16, Dtype::F32, false, None),
        p(Dtype::F32, Dtype::Bf16, false, None),
        p(Dtype::Bf16, Dtype::Bf16, true, None),
        p(Dtype::F16, Dtype::Bf16, true, None),
        p(Dtype::Bf16, Dtype::F32, false, Some(3)),
        p(Dtype::F16, Dtype::Bf16, false, Some(4)),
    ]
}
