//! The storage-dtype options of `optc run`, `bench` and `compare`, in one place:
//! `--param-dtype`, `--state-dtype`, `--master-weights`, `--stochastic-rounding` and `--sr-seed`
//! (docs/dtypes.md). They give an [`optc_kernel::Precision`].

use clap::{Args, ValueEnum};
use optc_kernel::{Dtype, Precision};

/// The dtypes of parameters and gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ParamDtype {
    /// IEEE binary32.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE binary16.
    F16,
}

/// The dtypes of optimizer states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateDtype {
    /// IEEE binary32.
    F32,
    /// bfloat16.
    Bf16,
}

/// The storage-dtype options.
#[derive(Args, Clone, Debug)]
pub struct PrecisionArgs {
    /// The dtype of parameters and gradients in memory (and in `optc run`'s files).
    #[arg(long, value_enum, default_value_t = ParamDtype::F32)]
    pub param_dtype: ParamDtype,
    /// The dtype of the per-element optimizer states (row and column states stay f32).
    #[arg(long, value_enum, default_value_t = StateDtype::F32)]
    pub state_dtype: StateDtype,
    /// Keep an f32 master copy of each 16-bit parameter as optimizer state; the parameter is
    /// written as the master rounded to nearest, in the same pass.
    #[arg(long)]
    pub master_weights: bool,
    /// Round stores to a 16-bit parameter (without a master) stochastically, unbiased.
    #[arg(long)]
    pub stochastic_rounding: bool,
    /// The seed of stochastic rounding's counter hash.
    #[arg(
        long,
        value_name = "SEED",
        default_value_t = 0,
        requires = "stochastic_rounding"
    )]
    pub sr_seed: u64,
}

impl PrecisionArgs {
    /// The options, checked (a bad combination is an error naming the flags).
    pub fn precision(&self) -> Result<Precision, String> {
        let p = Precision {
            param: match self.param_dtype {
                ParamDtype::F32 => Dtype::F32,
                ParamDtype::Bf16 => Dtype::Bf16,
                ParamDtype::F16 => Dtype::F16,
            },
            state: match self.state_dtype {
                StateDtype::F32 => Dtype::F32,
                StateDtype::Bf16 => Dtype::Bf16,
            },
            master_weights: self.master_weights,
            stochastic_rounding: self.stochastic_rounding.then_some(self.sr_seed),
        };
        p.check()?;
        Ok(p)
    }
}
