//! # optc-runtime
//!
//! Runs compiled optimizer kernels: the CPU JIT on a rayon pool, and CUDA through cudarc (feature
//! `cuda`). All unsafe code and FFI of optc lives in this crate.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
