//! # optc-runtime
//!
//! Runs compiled optimizer kernels: the CPU JIT on a rayon pool, the reference interpreter for
//! checking, and CUDA through cudarc (feature `cuda`). All unsafe code and FFI of optc lives in
//! this crate.
//!
//! The API a training loop uses:
//!
//! - [`Rule`]: where kernels come from (a prebuilt [`optc_kernel::Kernel`], or with the feature
//!   `compiler` a `.opt` file, a string, or a rule of the embedded standard library);
//! - [`Optimizer`]: parameter groups (each with its flags and hypers), registered parameters, the
//!   optimizer state it owns, and [`Optimizer::step`]; checkpoints with [`Optimizer::save`] and
//!   [`Optimizer::load`] (layout in [`checkpoint`]);
//! - [`Update`]: one parameter and its gradient for a step, from f32 slices or bytes;
//! - [`RuntimeError`]: every error, with a clear message.
//!
//! ```no_run
//! # fn main() -> Result<(), optc_runtime::RuntimeError> {
//! # let kernel: optc_kernel::Kernel = unimplemented!();
//! use optc_runtime::{Optimizer, Rule, Update};
//! let mut opt = Optimizer::new(Rule::from_kernel(kernel)?)?;
//! opt.add_param("w", &[2, 3])?;
//! let (mut w, g) = (vec![0.5f32; 6], vec![0.1f32; 6]);
//! opt.set_hyper("lr", 1e-3)?;
//! opt.step([Update::new("w", &mut w, &g)])?;
//! let checkpoint = opt.to_bytes()?;
//! # Ok(()) }
//! ```

pub mod bytes;
pub mod checkpoint;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
mod optimizer;
#[cfg(feature = "compiler")]
pub mod probe;
mod rule;
mod target;

pub use error::{NameKind, RuntimeError};
pub use optimizer::{GroupId, Optimizer, Options, Update};
pub use rule::Rule;
pub use target::Target;
