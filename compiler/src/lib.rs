//! # optc-compiler
//!
//! Compiles `.opt` optimizer rules into fused per-element kernels. Pure: no unsafe, no FFI, and
//! nothing here executes generated code (the runtime does that).

pub mod backend;
