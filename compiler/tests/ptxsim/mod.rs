//! A PTX emulator for the subset optc's PTX backend emits, for tests: checks what the emitted
//! code computes, on the CPU, without a GPU (ptxas only proves it assembles).
//!
//! [`parse`] reads a module (entries, `.reg` declarations, module-scope `.shared` and `.const`
//! variables) into decoded instructions; anything outside the subset is an error that names the
//! instruction, never a silent skip. [`launch`] runs an entry over a 1-D grid: CTAs one after
//! another; in a CTA each thread runs until it exits or reaches a collective (`shfl.sync`,
//! `bar.warp.sync`, `bar.sync`), which executes for the whole warp (CTA) once every lane is
//! there, so shuffles see the values of the lanes in lockstep. Global memory is byte buffers at
//! distinct addresses (an access outside them, or misaligned, is an error); shared memory is per
//! CTA, starts as NaN bytes, and a read of a word another thread wrote with no barrier between
//! them is reported as a race. Registers hold raw bits, typed per instruction; a register used
//! with an instruction type of another size is an error at parse time, and reading a register
//! nothing wrote is an error at run time.
//!
//! Float semantics are in `float.rs`: `.rn` ops bit exact, `.approx`/`.full` ops exact values
//! (so not bit exact against hardware; compare such modules within a budget).
//!
//! Not modelled: the driver and cudarc launches, memory ordering between threads of different
//! CTAs (CTAs run one after another), timing, `.approx` ops' exact bits, ptxas's contraction of
//! `mul`+`add` without `.rn` into `fma` (fast math).
#![allow(dead_code)]

mod exec;
mod float;
mod parse;

pub use exec::{launch, Arg, Device};
pub use parse::{parse, Module};
