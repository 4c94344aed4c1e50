//! # optc
//!
//! Write an optimizer's update rule as a small `.opt` file; get one fused per-element kernel for
//! the CPU (Cranelift JIT) or CUDA (PTX). This crate is the facade: it re-exports the small API a
//! Rust user needs and holds the `optc` command-line tool.
//!
//! - [`compiler`]: parse, check and compile rules ([`Rule`], [`stdlib`]).
//! - [`runtime`]: run compiled kernels.
//! - [`kernel`]: the fused-kernel description and the artifact format.

pub use optc_compiler as compiler;
pub use optc_compiler::{stdlib, CompileError, Diagnostics, Rule};
pub use optc_kernel as kernel;
pub use optc_kernel::{Artifact, Kernel};
pub use optc_runtime as runtime;

pub mod cli;
pub mod compare;
