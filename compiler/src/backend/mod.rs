//! Backends: each takes a validated [`optc_kernel::Kernel`] and gives executable meaning or code.
//!
//! - [`interp`]: the reference interpreter, which defines what every rule computes;
//! - [`clif`]: Cranelift IR for the CPU (an f32x4 body and a scalar tail), JIT-compiled by the runtime;
//! - [`ptx`]: PTX text for CUDA.
//!
//! Every code-generating backend has the same shape: an `Options` type, an `Error` type, and
//! `emit(&Kernel, &Options)`.

pub mod clif;
pub mod interp;
pub mod ptx;
