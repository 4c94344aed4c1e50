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
//!   optimizer state it owns, and [`Optimizer::step`] (which runs the kernel's stages and returns a
//!   [`StepReport`]); checkpoints with [`Optimizer::save`] and [`Optimizer::load`] (layout in
//!   [`checkpoint`]); one optimizer for every [`Target`], each with an executor that holds the
//!   states in its own memory; [`Options::max_grad_norm`] clips any rule by the global norm;
//!   [`Options::loss_scale`] unscales the gradients of any rule and skips a step whose gradients
//!   hold an inf or a NaN, with [`LossScaler`] (torch's `GradScaler` policy) to move the scale;
//!   torch-convention state in and out with [`Optimizer::save_state`] and [`Optimizer::resume`]
//!   (layout in [`torch_state`]);
//! - [`Update`]: one parameter and its gradient for a step, from f32 slices or bytes (or device
//!   buffers on CUDA);
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
//! [`atomic`] is how optc writes files (checkpoints and every CLI output): a temporary file,
//! fsync, rename. [`probe`] holds the bandwidth probe `optc bench` compares kernels with.
//!
//! [`schedule`] holds hyper schedules (`cosine(warmup=100, total=1000)`), applied per step by a
//! [`schedule::Scheduler`] without recompiling.

// Without the default feature `compiler`, only what loading a compiled artifact needs is built:
// the `Optimizer` on the CUDA target (feature `cuda`), checkpoints, byte views and errors. The CPU
// JIT and the interpreter target compile rules in process and need the compiler.
pub mod atomic;
pub mod buf;
pub mod bytes;
#[cfg(any(feature = "compiler", feature = "cuda"))]
pub mod checkpoint;
#[cfg(feature = "compiler")]
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
#[cfg(any(feature = "compiler", feature = "cuda"))]
mod executor;
#[cfg(feature = "compiler")]
mod host;
pub mod int8;
#[cfg(any(feature = "compiler", feature = "cuda"))]
mod loss_scale;
#[cfg(any(feature = "compiler", feature = "cuda"))]
mod matrix;
#[cfg(any(feature = "compiler", feature = "cuda"))]
mod optimizer;
#[cfg(feature = "compiler")]
pub mod probe;
#[cfg(any(feature = "compiler", feature = "cuda"))]
mod rule;
pub mod schedule;
pub mod shapes;
#[cfg(any(feature = "compiler", feature = "cuda"))]
mod stages;
#[cfg(any(feature = "compiler", feature = "cuda"))]
mod state_slots;
#[cfg(any(feature = "compiler", feature = "cuda"))]
mod target;
#[cfg(feature = "compiler")]
pub mod torch_state;
#[cfg(any(feature = "compiler", feature = "cuda"))]
mod variants;

pub use error::{NameKind, RuntimeError};
#[cfg(any(feature = "compiler", feature = "cuda"))]
pub use loss_scale::LossScaler;
pub use optimizer::{GroupId, Optimizer, Options, StepReport, Update};
#[cfg(any(feature = "compiler", feature = "cuda"))]
pub use rule::Rule;
#[cfg(any(feature = "compiler", feature = "cuda"))]
pub use schedule::Scheduler;
pub use schedule::{HyperSchedule, Schedule, ScheduleError};
#[cfg(any(feature = "compiler", feature = "cuda"))]
pub use target::Target;
#[cfg(feature = "compiler")]
pub use torch_state::StateFormat;
