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
//! The public API, in full (the `optc` command-line tool and its `compare`/`tune` harness are
//! private to the binary):
//!
//! - [`Rule`]: a rule from a `.opt` file, a string, the embedded [`stdlib`], or a compiled
//!   [`Artifact`] (a [`Kernel`] plus PTX);
//! - [`Optimizer`], built with [`Options`] (its [`Target`], threads, flags, `max_grad_norm`,
//!   `loss_scale`, moved by a [`LossScaler`]):
//!   parameter groups ([`GroupId`]), hypers, [`Optimizer::step`] over [`Update`]s returning a
//!   [`StepReport`], checkpoints (`save`/`load`) and torch-convention state
//!   (`save_state`/`resume`, [`StateFormat`]);
//! - [`Schedule`], [`HyperSchedule`], [`Scheduler`]: hyper schedules set once per step, never a
//!   recompile (`docs/schedules.md`);
//! - errors: [`RuntimeError`] (every runtime error), [`CompileError`] and [`Diagnostics`] (rule
//!   files, rendered with `file:line:col`), [`ScheduleError`], [`ArtifactError`];
//! - with the feature `cuda`, `cuda`: devices, the driver check and device-buffer updates.

pub use optc_compiler::stdlib;
pub use optc_compiler::{CompileError, Diagnostics};
pub use optc_kernel::{Artifact, ArtifactError, Kernel};
#[cfg(feature = "cuda")]
pub use optc_runtime::cuda;
pub use optc_runtime::{
    GroupId, HyperSchedule, LossScaler, Optimizer, Options, Rule, RuntimeError, Schedule,
    ScheduleError, Scheduler, StateFormat, StepReport, Target, Update,
};
