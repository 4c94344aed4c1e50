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
//! [`variants`] runs the same passes once more per combination of the conditions on hypers
//! alone (`if momentum != 0`), each condition a constant: the kernel variants the runtime picks
//! from per step.
//!
//! Between 4 and 5, [`matrix`] turns matrix values into matrix programs of the stages.
//!
//! With [`CompileOptions::clip`], [`clip`] first rewrites every read of `g` to the gradient
//! clipped by the global norm; with [`CompileOptions::loss_scale`], [`loss_scale`] then
//! rewrites every read of `g` (clipping's included) to the unscaled gradient and adds the
//! inf/NaN check.

pub mod classify;
pub mod clip;
pub mod cse;
pub mod dce;
pub mod fold;
pub mod hoist;
pub mod loss_scale;
pub mod matrix;
pub mod specialize;
pub mod variants;

use crate::diag::Diagnostic;
use crate::ir::Program;
use optc_kernel::{Kernel, RankClass};

/// Options of the compilation that are not flags of the rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompileOptions {
    /// Clip the gradients by their global norm (a hyper `max_grad_norm` is added; see
    /// [`clip`]).
    pub clip: bool,
    /// Unscale the gradients by a loss scale and check them for infs and NaNs (a hyper
    /// `loss_scale` is added; see [`loss_scale`]): a runtime skips a step whose check fails.
    pub loss_scale: bool,
    /// The rank class to compile for. A rule that reads `matrix` needs `Matrix` or `Vector`;
    /// any other rule gives a kernel for `Any` tensor whatever this says.
    pub rank: RankClass,
}

/// Runs the whole pipeline for the flag values `flags` (one per declared flag, in order).
pub fn compile(program: &Program, flags: &[bool]) -> Result<Kernel, Diagnostic> {
    compile_with(program, flags, &CompileOptions::default())
}

/// Like [`compile`], with options. Every condition on hypers stays a select in the kernel (the
/// flag set's description kernel); [`variants::compile_variant`] gives the kernels the runtime
/// runs.
pub fn compile_with(
    program: &Program,
    flags: &[bool],
    options: &CompileOptions,
) -> Result<Kernel, Diagnostic> {
    let front = front(program, flags, options)?;
    let for_matrices = front.rank == RankClass::Matrix;
    let live = matrix::plan(front.base.clone(), for_matrices)?;
    hoist::hoist(&front.program, flags, &live, front.rank)
}

/// The passes before hoisting, shared by the description kernel and its variants.
pub(crate) struct Front<'p> {
    /// The program, with clipping and loss scaling added when asked for.
    pub program: std::borrow::Cow<'p, Program>,
    /// The rank class compiled for.
    pub rank: RankClass,
    /// The update after specialization, folding and CSE.
    pub func: crate::ir::Function,
    /// Dead-code elimination of `func`.
    pub base: dce::Live,
}

pub(crate) fn front<'p>(
    program: &'p Program,
    flags: &[bool],
    options: &CompileOptions,
) -> Result<Front<'p>, Diagnostic> {
    let program = if options.clip {
        std::borrow::Cow::Owned(clip::add_clipping(program).map_err(|name| {
            Diagnostic::error(
                "E0701",
                format!("the rule declares a hyper `{name}`, which clipping adds"),
                Default::default(),
                "here",
            )
            .hint("rename the hyper, or compile without clipping")
        })?)
    } else {
        std::borrow::Cow::Borrowed(program)
    };
    let program = if options.loss_scale {
        std::borrow::Cow::Owned(loss_scale::add_loss_scaling(&program).map_err(|name| {
            Diagnostic::error(
                "E0703",
                format!("the rule declares a hyper `{name}`, which loss scaling adds"),
                Default::default(),
                "here",
            )
            .hint("rename the hyper, or compile without loss scaling")
        })?)
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
    let func = cse::cse(&f);
    let base = dce::dce(&func, &program, flags, matrix)?;
    Ok(Front {
        program,
        rank,
        func,
        base,
    })
}
