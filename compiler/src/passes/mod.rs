//! Passes: from a flag-generic [`Program`] to a fused [`Kernel`] for one flag set.
//!
//! The pipeline, in order:
//! 1. [`specialize`]: each `Flag` leaf becomes the flag's value;
//! 2. [`fold`]: constant folding and exact algebraic identities (selects on constants vanish);
//! 3. [`cse`]: identical nodes are shared;
//! 4. [`dce`]: nodes no live store needs are dropped, and so are states that no live value reads;
//!    a state that survives although its flag condition is false is an error;
//! 5. [`classify`] and [`hoist`]: each node is uniform or per-element; every uniform value that a
//!    per-element node needs becomes a host-program value and a kernel argument, so the body does
//!    per-element work only.

pub mod classify;
pub mod cse;
pub mod dce;
pub mod fold;
pub mod hoist;
pub mod specialize;

use crate::diag::Diagnostic;
use crate::ir::Program;
use optc_kernel::Kernel;

/// Runs the whole pipeline for the flag values `flags` (one per declared flag, in order).
pub fn compile(program: &Program, flags: &[bool]) -> Result<Kernel, Diagnostic> {
    let f = specialize::specialize(&program.update, flags);
    let f = fold::fold(&f);
    let f = cse::cse(&f);
    let live = dce::dce(&f, program, flags)?;
    hoist::hoist(program, flags, &live)
}
