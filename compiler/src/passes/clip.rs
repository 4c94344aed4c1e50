//! Clipping by global norm, for any rule: `g` becomes `g * clip` with
//! `clip = min(1, max_grad_norm / (sqrt(total) + 1e-6))` and `total` the Step-scope sum of
//! `g * g`, as `torch.nn.utils.clip_grad_norm_` computes it (see `docs/stages.md`). The sum is
//! computed from the raw gradient, so it lands in the rule's first stage, fused with the rule's
//! own first reductions.

use crate::ir::{Builder, HyperInfo, Program, Reduction};
use optc_kernel::{
    BinaryOp, Expr, Handle, HyperId, ReduceOp, ReductionId, Scope, Slot, UnaryOp,
    GRAD_NORM_REDUCTION,
};

/// The hyper clipping adds: the largest total gradient norm of a step.
pub const MAX_GRAD_NORM: &str = "max_grad_norm";

/// `program` with clipping: a new hyper [`MAX_GRAD_NORM`] (default 1.0) and every read of `g`
/// scaled. Fails (with the name) when the rule already declares a hyper of that name.
pub fn add_clipping(program: &Program) -> Result<Program, String> {
    if program.hypers.iter().any(|h| h.name == MAX_GRAD_NORM) {
        return Err(MAX_GRAD_NORM.to_string());
    }
    let mut out = program.clone();
    let hyper = HyperId::new(out.hypers.len());
    out.hypers.push(HyperInfo {
        name: MAX_GRAD_NORM.into(),
        default: 1.0,
        doc: "Clipping by global norm (added by the compiler): the gradients of a step are \
              scaled so that their total L2 norm is at most this."
            .into(),
    });
    // The clipped gradient first, then the rule with every `g` replaced by it.
    let f = &program.update;
    let span = f.span(Handle::new(0));
    let mut b = Builder::default();
    let g = b.add(Expr::Load(Slot::Grad), span);
    let g2 = b.add(Expr::Binary(BinaryOp::Mul, g, g), span);
    let id = ReductionId::new(f.reductions.len());
    let total = b.add(Expr::Reduced(id), span);
    let norm = b.add(Expr::Unary(UnaryOp::Sqrt, total), span);
    let tiny = b.add(Expr::Const(1e-6), span);
    let denom = b.add(Expr::Binary(BinaryOp::Add, norm, tiny), span);
    let max = b.add(Expr::Hyper(hyper), span);
    let coef = b.add(Expr::Binary(BinaryOp::Div, max, denom), span);
    let one = b.add(Expr::Const(1.0), span);
    let clip = b.add(Expr::Binary(BinaryOp::Min, coef, one), span);
    let clipped = b.add(Expr::Binary(BinaryOp::Mul, g, clip), span);
    let mut new_of: Vec<Handle<Expr>> = Vec::with_capacity(f.exprs.len());
    for (h, e) in f.exprs.iter() {
        let nh = match *e {
            Expr::Load(Slot::Grad) => clipped,
            ref e => b.add(e.map_operands(|o| new_of[o.index()]), f.span(h)),
        };
        new_of.push(nh);
    }
    let mut update = b.func;
    let map = |h: Handle<Expr>| new_of[h.index()];
    update.stores = f.stores.iter().map(|&(s, h)| (s, map(h))).collect();
    update.scalar_stores = f.scalar_stores.iter().map(|&(s, h)| (s, map(h))).collect();
    update.reductions = f
        .reductions
        .iter()
        .map(|r| Reduction {
            arg: map(r.arg),
            ..r.clone()
        })
        .collect();
    update.matrices = f.matrices.iter().map(|m| m.map(map)).collect();
    update.reductions.push(Reduction {
        op: ReduceOp::Sum,
        scope: Scope::Step,
        arg: g2,
        name: GRAD_NORM_REDUCTION.into(),
    });
    out.update = update;
    Ok(out)
}
