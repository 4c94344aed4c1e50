//! Passes: from a flag-generic [`Program`] to a fused [`Kernel`] for one flag set.
//!
//! The pipeline, in order:
//! 1. [`specialize`]: each `Flag` leaf becomes the flag's value;
//! 2. [`fold`]: constant folding and exact algebraic identities (selects on constants vanish);
//! 3. [`cse`]: identical nodes are shared;
//! 4. [`dce`]: nodes no live store needs are dropped, and so are states that no live value reads;
//!    a state that survives although its flag condition is false is an error;
//! 5. [`classify`] and [`hoist`]: each node is uniform or per-element; the update is cut into
//!    stages at its reductions; every uniform value that a per-element node needs becomes a
//!    host-program value and a stage argument, so each body does per-element work only.
//!
//! Between 4 and 5, [`matrix`] turns matrix values into matrix programs of the stages.
//!
//! With [`CompileOptions::clip`], [`clip`] first rewrites every read of `g` to the gradient
//! clipped by the global norm.

pub mod classify;
pub mod clip;
pub mod cse;
pub mod dce;
pub mod fold;
pub mod hoist;
pub mod matrix;
pub mod specialize;

use crate::diag::Diagnostic;
use crate::ir::Program;
use optc_kernel::{Kernel, RankClass};

/// Options of the compilation that are not flags of the rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompileOptions {
    /// Clip the gradients by their global norm (a hyper `max_grad_norm` is added; see
    /// [`clip`]).
    pub clip: bool,
    /// The rank class to compile for. A rule that reads `matrix` needs `Matrix` or `Vector`;
    /// any other rule gives a kernel for `Any` tensor whatever this says.
    pub rank: RankClass,
}

/// Runs the whole pipeline for the flag values `flags` (one per declared flag, in order).
pub fn compile(program: &Program, flags: &[bool]) -> Result<Kernel, Diagnostic> {
    compile_with(program, flags, &CompileOptions::default())
}

/// Like [`compile`], with options.
pub fn compile_with(
    program: &Program,
    flags: &[bool],
    options: &CompileOptions,
) -> Result<Kernel, Diagnostic> {
    let clipped;
    let program = if options.clip {
        clipped = clip::add_clipping(program).map_err(|name| {
            Diagnostic::error(
                "E0701",
                format!("the rule declares a hyper `{name}`, which clipping adds"),
                Default::default(),
                "here",
            )
            .hint("rename the hyper, or compile without clipping")
        })?;
        &clipped
    } else {
        program
    };
    let rank = match (program.uses_rank(), options.rank) {
        (false, _) => RankClass::Any,
        (true, RankClass::Any) => {
            return Err(Diagnostic::error(
                "E0702",
                format!(
                    "rule `{}` reads `matrix`, so it compiles to one kernel per rank class",
                    program.name
                ),
                Default::default(),
                "here",
            )
            .hint("compile it for matrices (2 or more dims) or for vectors (0 or 1 dim)"))
        }
        (true, r) => r,
    };
    let matrix = rank == RankClass::Matrix;
    let f = specialize::specialize_rank(&program.update, flags, matrix);
    let f = fold::fold(&f);
    let f = cse::cse(&f);
    let live = dce::dce(&f, program, flags, matrix)?;
    let live = matrix::plan(live, matrix)?;
    let mut kernel = hoist::hoist(program, flags, &live)?;
    kernel.rank = rank;
    Ok(kernel)
}
