//! # optc
//!
//! Write an optimizer's update rule as a small `.opt` file; get one fused per-element kernel for
//! the CPU (Cranelift JIT) or CUDA (PTX). This crate is the facade: it re-exports the small API a
//! Rust user needs and holds the `optc` command-line tool.
//!
//! ```no_run
//! use optc::{Optimizer, Rule, Update};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut opt = Optimizer::new(Rule::stdlib("adamw")?)?;
//! opt.add_param("w", &[3])?;
//! let mut w = vec![1.0f32, 2.0, 3.0];
//! let g = vec![0.1f32, -0.2, 0.3];
//! opt.set_hyper("lr", 1e-2)?; // an LR schedule changes a hyper; nothing recompiles
//! opt.step([Update::new("w", &mut w, &g)])?;
//! # Ok(()) }
//! ```
//!
//! - [`Optimizer`], [`Rule`], [`Update`]: load a rule, register parameters, step them.
//! - [`Schedule`], [`HyperSchedule`], [`Scheduler`]: hyper schedules set once per step (never a
//!   recompile); `docs/schedules.md`.
//! - [`compiler`]: parse, check and compile rules (`compiler::Rule`, [`stdlib`]).
//! - [`runtime`]: the runtime in full (CPU executor, CUDA behind the feature `cuda`, checkpoints).
//! - [`kernel`]: the fused-kernel description and the artifact format.

pub use optc_compiler as compiler;
pub use optc_compiler::stdlib;
pub use optc_kernel as kernel;
pub use optc_kernel::{Artifact, Kernel};
pub use optc_runtime as runtime;
pub use optc_runtime::{
    GroupId, HyperSchedule, Optimizer, Options, Rule, RuntimeError, Schedule, ScheduleError,
    Scheduler, Target, Update,
};

pub mod cli;
pub mod compare;
