//! Clipping by global norm, for any kernel, without editing its rule.
//!
//! Takes a validated [`Kernel`]; gives the kernel that first clips the gradient as
//! `torch.nn.utils.clip_grad_norm_(params, max_grad_norm)` does before the step (see
//! `docs/stages.md`): a new stage 0 reads `g` once and reduces `g·g` with Step scope (the sum over
//! every tensor of the step call, across groups) into [`GRAD_NORM_SQUARED`]; the host computes
//! `clip = min(1, max_grad_norm / (sqrt(total) + 1e-6))` in f64; every later load of `g` becomes
//! `g · clip` (a uniform of its stage). The rule's stages follow unchanged otherwise, so the
//! kernel moves 4 more bytes per element (AdamW: 32). The hyper [`MAX_GRAD_NORM`] is added last.
//! Applied once, in one place, to compiled rules and to prebuilt kernels alike.

use crate::arena::{Arena, Handle};
use crate::expr::{Expr, HyperId, ReductionId, Slot, UniformId};
use crate::kernel::{HyperDecl, Kernel, KernelError, ReduceOutput, Stage};
use crate::op::{BinaryOp, UnaryOp};
use crate::reduce::{ReduceOp, ReductionDecl, Scope};

/// The hyper that holds the clipping threshold.
pub const MAX_GRAD_NORM: &str = "max_grad_norm";

/// The name of the Step-scope reduction of `g·g` that clipping adds; its finalized value is the
/// squared total gradient norm, which a runtime reports as the norm (its square root).
pub const GRAD_NORM_SQUARED: &str = "max_grad_norm: sum(g * g)";

/// `torch.nn.utils.clip_grad_norm_`'s guard against a zero norm.
const NORM_EPS: f64 = 1e-6;

/// `kernel` with clipping by global norm (see the module docs). Fails when the kernel already
/// has a hyper named [`MAX_GRAD_NORM`] or does not validate.
pub fn clip_by_global_norm(kernel: &Kernel, default: f64) -> Result<Kernel, KernelError> {
    kernel.validate()?;
    if kernel.hypers.iter().any(|h| h.name == MAX_GRAD_NORM) {
        return Err(KernelError {
            rule: kernel.rule.clone(),
            reason: format!("the rule already has a hyper `{MAX_GRAD_NORM}`"),
        });
    }
    let mut k = kernel.clone();
    let hyper = HyperId::new(k.hypers.len());
    k.hypers.push(HyperDecl {
        name: MAX_GRAD_NORM.into(),
        default,
    });
    for r in &mut k.reductions {
        r.stage += 1;
    }
    let reduction = ReductionId::new(k.reductions.len());
    k.reductions.push(ReductionDecl {
        name: GRAD_NORM_SQUARED.into(),
        op: ReduceOp::Sum,
        scope: Scope::Step,
        stage: 0,
    });
    // Host: clip = min(1, max_grad_norm / (sqrt(total) + 1e-6)).
    let total = k.host.append(Expr::Reduced(reduction));
    let norm = k.host.append(Expr::Unary(UnaryOp::Sqrt, total));
    let eps = k.host.append(Expr::Const(NORM_EPS));
    let den = k.host.append(Expr::Binary(BinaryOp::Add, norm, eps));
    let max = k.host.append(Expr::Hyper(hyper));
    let ratio = k.host.append(Expr::Binary(BinaryOp::Div, max, den));
    let one = k.host.append(Expr::Const(1.0));
    let clip = k.host.append(Expr::Binary(BinaryOp::Min, one, ratio));
    // Every later stage reads g · clip.
    for stage in &mut k.stages {
        if stage.loads(Slot::Grad) {
            let u = UniformId::new(stage.uniforms.len());
            stage.uniforms.push(clip);
            scale_grad(stage, u);
        }
    }
    // The new stage 0: g·g into the Step-scope sum.
    let mut body = Arena::new();
    let g = body.append(Expr::Load(Slot::Grad));
    let gg = body.append(Expr::Binary(BinaryOp::Mul, g, g));
    k.stages.insert(
        0,
        Stage {
            uniforms: Vec::new(),
            body,
            stores: Vec::new(),
            reduce: vec![ReduceOutput {
                reduction,
                value: gg,
            }],
        },
    );
    k.validate()?;
    Ok(k)
}

/// Rebuilds `stage`'s body so that every use of `g` reads `g · u` instead.
fn scale_grad(stage: &mut Stage, u: UniformId) {
    let mut body = Arena::new();
    let mut map: Vec<Handle<Expr>> = Vec::with_capacity(stage.body.len());
    for (_, e) in stage.body.iter() {
        let new = match e {
            Expr::Load(Slot::Grad) => {
                let g = body.append(Expr::Load(Slot::Grad));
                let clip = body.append(Expr::Uniform(u));
                body.append(Expr::Binary(BinaryOp::Mul, g, clip))
            }
            other => body.append(other.map_operands(|o| map[o.index()])),
        };
        map.push(new);
    }
    for s in &mut stage.stores {
        s.value = map[s.value.index()];
    }
    for r in &mut stage.reduce {
        r.value = map[r.value.index()];
    }
    stage.body = body;
}
