//! The host side of the stage schedule: block partials in, finalized reductions out.
//!
//! Takes, after each stage, every tensor's block partials (per reduce output of the stage, one
//! f32 per block, in block order, as an executor returns them); gives each reduction's f64 value
//! as `docs/stages.md` defines it: the blocks combined in f64 in block order; a `Tensor`-scope
//! reduction is that tensor's total; a `Step`-scope one is finalized once per step over every
//! tensor of the step call, across groups, in registration order, by [`combine_step`] (the one
//! place a cross-rank all-reduce will go).

use crate::error::RuntimeError;
use optc_kernel::reduce::{combine, combine_totals, ReduceOp, Scope};
use optc_kernel::{Kernel, StateShape};

/// Errors, when a kernel is loaded (before any step), unless every reduction of `kernel` has a
/// scope this schedule finalizes (Tensor or Step) and every state has the parameter's shape.
///
/// Row and Col scopes (Adafactor) are refused because no compiler produces them yet and the
/// kernel contract does not yet say how a later stage reads a `[rows]` or `[cols]` value (the
/// open question of `docs/stages.md`, "Not done yet"). Once it does, this module gets
/// `finalize_rows`/`finalize_cols` (`optc_kernel::reduce::{row_reduce, col_reduce}` over a tensor
/// viewed as `[batch, rows, cols]`, the last two dims, leading dims as batch), the executors
/// create `StateShape::Rows`/`Cols` buffers of `batch * rows` / `batch * cols` elements, and
/// [`crate::executor::Partials`] carries per-row (blocks of a row) and per-column (blocks of
/// `COL_BLOCK_ROWS` rows) partials; the interpreter (`optc_compiler::backend::interp`) refuses
/// them too.
pub(crate) fn check_supported(kernel: &Kernel) -> Result<(), RuntimeError> {
    if let Some(r) = kernel
        .reductions
        .iter()
        .find(|r| matches!(r.scope, Scope::Row | Scope::Col))
    {
        return Err(RuntimeError::Unsupported(format!(
            "reduction `{}` of rule `{}` has {} scope; the optimizer finalizes tensor and step scopes only",
            r.name,
            kernel.rule,
            r.scope.name()
        )));
    }
    if let Some(s) = kernel.states.iter().find(|s| s.shape != StateShape::Full) {
        return Err(RuntimeError::Unsupported(format!(
            "state `{}` of rule `{}` is a row or column vector; the optimizer holds full-shape states only",
            s.name, kernel.rule
        )));
    }
    Ok(())
}

/// Errors, when `kernel` is loaded next to `loaded` (the optimizer's other kernels: other flag
/// sets and rank classes), unless each of its Step-scope reductions is produced in the same stage
/// as the reduction of that name and op in every other kernel, so that one combine per stage
/// covers every tensor of a step.
pub(crate) fn check_step_stages<'k>(
    kernel: &Kernel,
    loaded: impl Iterator<Item = &'k Kernel>,
) -> Result<(), RuntimeError> {
    let steps = |k: &'k Kernel| k.reductions.iter().filter(|r| r.scope == Scope::Step);
    for other in loaded {
        for r in kernel.reductions.iter().filter(|r| r.scope == Scope::Step) {
            if let Some(o) = steps(other).find(|o| o.name == r.name && o.op == r.op) {
                if o.stage != r.stage {
                    return Err(RuntimeError::Unsupported(format!(
                        "step-scope reduction `{}` of rule `{}` is made in stage {} of one kernel and in stage {} of another; one step must finalize it once, for every tensor",
                        r.name, kernel.rule, o.stage, r.stage
                    )));
                }
            }
        }
    }
    Ok(())
}

/// One tensor's contribution to a Step-scope reduction.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StepPart {
    /// Which reduction, across kernels: its name and op (the same in every specialization).
    pub name: String,
    /// The op.
    pub op: ReduceOp,
    /// The parameter's registration index (the combine order).
    pub param: usize,
    /// The tensor's position in the step (where the result goes) and the reduction's id in its
    /// kernel.
    pub slot: (usize, usize),
    /// The tensor's total, combined from its block partials in f64.
    pub total: f64,
}

/// Finalizes the reductions that stage `stage` of `kernel` produced for one tensor (the
/// `tensor`-th of the step, parameter `param`): Tensor scope into `reduced`, Step scope onto
/// `step` for [`combine_step`].
pub(crate) fn finalize_tensor(
    kernel: &Kernel,
    stage: usize,
    tensor: usize,
    param: usize,
    partials: &[Vec<f32>],
    reduced: &mut [f64],
    step: &mut Vec<StepPart>,
) -> Result<(), RuntimeError> {
    let outputs = &kernel.stages[stage].reduce;
    if partials.len() != outputs.len() {
        return Err(RuntimeError::Unsupported(format!(
            "internal: stage {stage} of `{}` gave {} partial lists for {} reductions",
            kernel.rule,
            partials.len(),
            outputs.len()
        )));
    }
    for (out, parts) in outputs.iter().zip(partials) {
        let r = out.reduction.index();
        let decl = &kernel.reductions[r];
        let total = combine(decl.op, parts.iter().copied());
        match decl.scope {
            Scope::Tensor => reduced[r] = total,
            Scope::Step => step.push(StepPart {
                name: decl.name.clone(),
                op: decl.op,
                param,
                slot: (tensor, r),
                total,
            }),
            Scope::Row | Scope::Col => {
                return Err(RuntimeError::Unsupported(format!(
                    "reduction `{}` of rule `{}` has {} scope, which this runtime does not finalize yet",
                    decl.name,
                    kernel.rule,
                    decl.scope.name()
                )))
            }
        }
    }
    Ok(())
}

/// Finalizes every Step-scope reduction of a step: for each reduction (by name and op), the
/// tensors' totals combined in f64 in registration order from the op's identity, written into
/// `reduced[tensor][reduction]` of every tensor that has it. Returns each reduction's value.
pub(crate) fn combine_step(
    mut parts: Vec<StepPart>,
    reduced: &mut [&mut Vec<f64>],
) -> Vec<(String, f64)> {
    parts.sort_by_key(|p| p.param);
    let mut keys: Vec<(String, ReduceOp)> = Vec::new();
    for p in &parts {
        if !keys.iter().any(|(n, o)| *n == p.name && *o == p.op) {
            keys.push((p.name.clone(), p.op));
        }
    }
    let mut results = Vec::with_capacity(keys.len());
    for (name, op) in keys {
        let mine = || parts.iter().filter(|p| p.name == name && p.op == op);
        let value = combine_totals(op, mine().map(|p| p.total));
        for p in mine() {
            reduced[p.slot.0][p.slot.1] = value;
        }
        results.push((name, value));
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use optc_kernel::reduce::ReductionDecl;
    use optc_kernel::{Arena, RankClass};

    /// A kernel whose only interesting part is its reductions (`check_step_stages` reads no
    /// more).
    fn with_reductions(rank: RankClass, reductions: Vec<ReductionDecl>) -> Kernel {
        Kernel {
            rule: "r".into(),
            flags: vec![],
            hypers: vec![],
            states: vec![],
            scalars: vec![],
            init: Arena::new(),
            rank,
            host: Arena::new(),
            variant: Vec::new(),
            scalar_updates: vec![],
            reductions,
            stages: vec![],
        }
    }

    fn decl(name: &str, scope: Scope, stage: usize) -> ReductionDecl {
        ReductionDecl {
            name: name.into(),
            op: ReduceOp::Sum,
            scope,
            stage,
        }
    }

    #[test]
    fn a_step_reduction_must_be_made_in_the_same_stage_by_every_kernel() {
        let matrix = with_reductions(
            RankClass::Matrix,
            vec![decl("n", Scope::Tensor, 0), decl("total", Scope::Step, 1)],
        );
        let same = with_reductions(RankClass::Vector, vec![decl("total", Scope::Step, 1)]);
        let other = with_reductions(RankClass::Vector, vec![decl("total", Scope::Step, 0)]);
        let tensor = with_reductions(RankClass::Vector, vec![decl("n", Scope::Tensor, 3)]);
        assert!(check_step_stages(&same, [&matrix].into_iter()).is_ok());
        assert!(check_step_stages(&tensor, [&matrix].into_iter()).is_ok());
        let err = check_step_stages(&other, [&matrix].into_iter()).expect_err("stages differ");
        assert!(err.to_string().contains("`total`"), "{err}");
    }
}
