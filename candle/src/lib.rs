//! # optc-candle
//!
//! Any optc rule as a [`candle_nn::Optimizer`]. The rule's fused kernel steps each [`Var`]'s
//! storage in place, through candle's in-place custom-op API, with no copy of a parameter or a
//! gradient; every var of a step goes through one optc step (one pass of the thread pool per
//! kernel on the CPU).
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use candle_core::{Device, Tensor, Var};
//! use candle_nn::Optimizer as _;
//! use optc_candle::{Config, Group, OptcOptimizer, Rule};
//!
//! let w = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0, 3.0], &Device::Cpu)?)?;
//! let b = Var::from_tensor(&Tensor::new(&[0.5f32], &Device::Cpu)?)?;
//! let rule = Rule::stdlib("adamw").map_err(candle_core::Error::wrap)?;
//! let mut opt = OptcOptimizer::builder(Config::new(rule).hyper("lr", 1e-2))
//!     .group(Group::new().named("w", w.clone()))
//!     .group(Group::new().named("b", b.clone()).hyper("weight_decay", 0.0))
//!     .build()?;
//! let loss = (w.as_tensor().sqr()?.sum_all()? + b.as_tensor().sum_all()?)?;
//! opt.backward_step(&loss)?;                  // w and b are updated in place
//! opt.set_learning_rate(5e-3);                // `lr` of every group; nothing recompiles
//! assert_eq!(opt.optimizer().step_count("w").map_err(candle_core::Error::wrap)?, 1);
//! # Ok(()) }
//! ```
//!
//! - [`OptcOptimizer`]: `new(vars, config)` (vars named `"0"`, `"1"`, ...), `step(&GradStore)`,
//!   `learning_rate`/`set_learning_rate` (the rule's `lr`), [`OptcOptimizer::save`] and
//!   [`OptcOptimizer::load`] (optc's checkpoint format);
//! - [`Config`]: the rule, run options, hypers and flags of every group;
//! - [`Group`] and [`Builder`]: parameter groups, each with its own hypers and flags.
//!
//! Vars must be f32, contiguous and on the CPU; anything else is a clear error before any var is
//! touched. `docs/candle.md` says why CUDA vars are not supported yet.

mod config;
mod inplace;
mod optimizer;

pub use candle_core::Var;
pub use config::{Config, Group};
pub use optc_runtime::{Options, Rule, Target};
pub use optimizer::{Builder, OptcOptimizer, LR};
