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
//!   [`Optimizer::load`] (layout in [`checkpoint`]); torch-convention state in and out with
//!   [`Optimizer::save_state`] and [`Optimizer::resume`] (layout in [`torch_state`]);
//! - [`Update`]: one parameter and its gradient for a step, from f32 slices or bytes;
//! - [`RuntimeError`]: every error, with a clear message.
//!
//! ```
//! # fn main() -> Result<(), optc_runtime::RuntimeError> {
//! use optc_runtime::{Optimizer, Rule, Update};
//! let mut opt = Optimizer::new(Rule::stdlib("adamw")?)?;
//! opt.add_param("w", &[2, 3])?;
//! let (mut w, g) = (vec![0.5f32; 6], vec![0.1f32; 6]);
//! opt.set_hyper("lr", 1e-3)?; // a hyper change never recompiles
//! opt.step([Update::new("w", &mut w, &g)])?;
//! let checkpoint = opt.to_bytes()?;
//! opt.load_bytes(&checkpoint)?;
//! assert_eq!(opt.step_count("w")?, 1);
//! # Ok(()) }
//! ```
//!
//! [`probe`] holds the bandwidth probe `optc bench` compares kernels with.

// Without the default feature `compiler`, only what loading a compiled artifact needs is built:
// the CUDA runtime (feature `cuda`), byte views and errors. The CPU JIT, the interpreter target and
// the `Optimizer` compile rules in process and need the compiler.
pub mod bytes;
#[cfg(feature = "compiler")]
pub mod checkpoint;
#[cfg(feature = "compiler")]
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
#[cfg(feature = "compiler")]
mod file;
#[cfg(feature = "compiler")]
mod optimizer;
#[cfg(feature = "compiler")]
pub mod probe;
#[cfg(feature = "compiler")]
mod rule;
#[cfg(feature = "compiler")]
mod target;
#[cfg(feature = "compiler")]
pub mod torch_state;

pub use error::{NameKind, RuntimeError};
#[cfg(feature = "compiler")]
pub use optimizer::{GroupId, Optimizer, Options, Update};
#[cfg(feature = "compiler")]
pub use rule::Rule;
#[cfg(feature = "compiler")]
pub use target::Target;
#[cfg(feature = "compiler")]
pub use torch_state::StateFormat;
