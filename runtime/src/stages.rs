//! The host side of the stage schedule: block partials in, finalized reductions out.
//!
//! Takes, after each stage, every tensor's block partials (per reduce output of the stage, one
//! f32 per block, in block order, as an executor returns them); gives each reduction's f64 value
//! as `docs/stages.md` defines it: the blocks combined in f64 in block order; a `Tensor`-scope
//! reduction is that tensor's total; a `Step`-scope one is finalized once per step over every
//! tensor of the step call, across groups, in registration order, by [`combine_step`] (the one
//! place a cross-rank all-reduce will go).

use crate::error::RuntimeError;
use crate::target::Target;
use optc_kernel::reduce::{combine, combine_totals, finalize_cols, finalize_rows, ReduceOp, Scope};
use optc_kernel::{Kernel, MatrixDims, StateShape};

/// Whether `target` runs Row- and Col-scope reductions and `[rows]`/`[cols]` values
/// (`docs/stages.md`, "Row and column values"): the interpreter, the CPU JIT (through the row
/// form) and CUDA (through the factored entries) all do. A new target says here whether it does.
fn runs_factored(target: Target) -> bool {
    match target {
        #[cfg(feature = "compiler")]
        Target::Cpu | Target::Interp => true,
        #[cfg(feature = "cuda")]
        Target::Cuda => true,
    }
}

/// Errors, when a kernel is loaded on `target` (before any step), unless the target runs its
/// Row- and Col-scope reductions and `[rows]`/`[cols]` values ([`runs_factored`]), so that a
/// target that cannot says so here rather than at the first step.
pub(crate) fn check_supported(kernel: &Kernel, target: Target) -> Result<(), RuntimeError> {
    if runs_factored(target) {
        return Ok(());
    }
    if !kernel.is_factored() {
        return Ok(());
    }
    let what = match kernel
        .reductions
        .iter()
        .find(|r| matches!(r.scope, Scope::Row | Scope::Col))
    {
        Some(r) => format!("its {}-scope reduction `{}`", r.scope.name(), r.name),
        None => match kernel.states.iter().find(|s| s.shape != StateShape::Full) {
            Some(s) => format!("its row or column state `{}`", s.name),
            None => "its [rows]/[cols] values".to_string(),
        },
    };
    Err(RuntimeError::Unsupported(format!(
        "rule `{}` cannot run on {target}: {what} needs a target that runs row and column values",
        kernel.rule
    )))
}

/// Errors, when a kernel with the loss-scale check is loaded, unless it writes nothing up to
/// the stage that makes the check (a skipped step stops there; the compiler builds kernels so).
pub(crate) fn check_skip_order(kernel: &Kernel) -> Result<(), RuntimeError> {
    match kernel.writes_before_check() {
        None => Ok(()),
        Some(k) => Err(RuntimeError::Unsupported(format!(
            "kernel of rule `{}` writes buffers in stage {k}, before its inf/NaN check is known; a skipped step would not be all or nothing (recompile it with this optc)",
            kernel.rule
        ))),
    }
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

/// Where one tensor's finalized reductions go.
pub(crate) struct Finalized<'a> {
    /// Tensor- and Step-scope values, by reduction.
    pub reduced: &'a mut [f64],
    /// Row- and Col-scope values, by reduction (`batch · rows` or `batch · cols` values).
    pub vectors: &'a mut [Vec<f64>],
    /// The tensor's matrix view, for Row and Col scopes.
    pub dims: Option<MatrixDims>,
}

/// Finalizes the reductions that stage `stage` of `kernel` produced for one tensor (the
/// `tensor`-th of the step, parameter `param`): Tensor scope into `out.reduced`, Row and Col
/// scopes into `out.vectors` (`optc_kernel::reduce::{finalize_rows, finalize_cols}`), Step scope
/// onto `step` for [`combine_step`].
pub(crate) fn finalize_tensor(
    kernel: &Kernel,
    stage: usize,
    tensor: usize,
    param: usize,
    partials: &[Vec<f32>],
    out: Finalized<'_>,
    step: &mut Vec<StepPart>,
) -> Result<(), RuntimeError> {
    let Finalized {
        reduced,
        vectors,
        dims,
    } = out;
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
        let total = || combine(decl.op, parts.iter().copied());
        let bad = || {
            RuntimeError::Unsupported(format!(
                "internal: the {}-scope partials of `{}` do not fit the tensor",
                decl.scope.name(),
                decl.name
            ))
        };
        match decl.scope {
            Scope::Tensor => reduced[r] = total(),
            Scope::Step => step.push(StepPart {
                name: decl.name.clone(),
                op: decl.op,
                param,
                slot: (tensor, r),
                total: total(),
            }),
            Scope::Row => {
                let dims = dims.ok_or_else(bad)?;
                vectors[r] = finalize_rows(decl.op, parts, dims).ok_or_else(bad)?;
            }
            Scope::Col => {
                let dims = dims.ok_or_else(bad)?;
                vectors[r] = finalize_cols(decl.op, parts, dims).ok_or_else(bad)?;
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
            storage: Default::default(),
            scalar_updates: vec![],
            vectors: Default::default(),
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

    /// Every target of this build runs factored kernels (adafactor's matrix kernel).
    #[cfg(all(feature = "compiler", feature = "cuda"))]
    #[test]
    fn factored_kernels_run_on_every_target() {
        let rule = optc_compiler::stdlib::rule("adafactor")
            .and_then(Result::ok)
            .expect("stdlib");
        let options = optc_compiler::CompileOptions {
            rank: RankClass::Matrix,
            ..Default::default()
        };
        let k = rule.specialize_with(&[], &options).expect("kernel");
        assert!(k.is_factored());
        for target in [Target::Interp, Target::Cpu, Target::Cuda] {
            assert!(check_supported(&k, target).is_ok(), "{target}");
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
