//! Loss scaling, for any rule: every read of `g` becomes `g * (1 / loss_scale)` (the reciprocal
//! computed by the host in f64 and passed as an f32 uniform, as torch's `GradScaler.unscale_`
//! computes `inv_scale = scale.double().reciprocal().float()`), and a Step-scope sum of `g * 0`
//! over the raw gradients ([`NONFINITE_REDUCTION`]) tells the runtime whether some element is an
//! inf or a NaN, so that it can skip the step (`docs/loss_scaling.md`).
//!
//! The check reads only `g`, so it lands in the rule's first stage, fused with the rule's own
//! first reductions (and with clipping's norm, which then sums the unscaled gradient, as
//! `unscale_` before `clip_grad_norm_` does). [`super::hoist`] keeps every store out of the
//! check's stage, so a runtime that stops after it has written nothing.

use crate::ir::{Builder, HyperInfo, Program, Reduction};
use optc_kernel::{BinaryOp, Expr, Handle, HyperId, ReduceOp, Scope, Slot, NONFINITE_REDUCTION};

/// The hyper loss scaling adds: the factor the loss (and so every gradient) was multiplied by.
pub const LOSS_SCALE: &str = "loss_scale";

/// `program` with loss scaling: a new hyper [`LOSS_SCALE`] (default 1.0), every read of `g`
/// unscaled, and the non-finite check. Fails (with the name) when the rule already declares a
/// hyper of that name. Run after [`super::clip`], so that clipping sees unscaled gradients.
pub fn add_loss_scaling(program: &Program) -> Result<Program, String> {
    if program.hypers.iter().any(|h| h.name == LOSS_SCALE) {
        return Err(LOSS_SCALE.to_string());
    }
    let mut out = program.clone();
    let hyper = HyperId::new(out.hypers.len());
    out.hypers.push(HyperInfo {
        name: LOSS_SCALE.into(),
        default: 1.0,
        doc: "Loss scaling (added by the compiler): the gradients are divided by this, and a \
              step whose gradients hold an inf or a NaN is skipped."
            .into(),
    });
    let f = &program.update;
    let span = f.span(Handle::new(0));
    let mut b = Builder::default();
    let g = b.add(Expr::Load(Slot::Grad), span);
    let zero = b.add(Expr::Const(0.0), span);
    let probe = b.add(Expr::Binary(BinaryOp::Mul, g, zero), span);
    let one = b.add(Expr::Const(1.0), span);
    let scale = b.add(Expr::Hyper(hyper), span);
    let inv = b.add(Expr::Binary(BinaryOp::Div, one, scale), span);
    let unscaled = b.add(Expr::Binary(BinaryOp::Mul, g, inv), span);
    let mut new_of: Vec<Handle<Expr>> = Vec::with_capacity(f.exprs.len());
    for (h, e) in f.exprs.iter() {
        let nh = match *e {
            Expr::Load(Slot::Grad) => unscaled,
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
        arg: probe,
        name: NONFINITE_REDUCTION.into(),
    });
    // No node reads the check (the runtime does): `dce` keeps it by its name.
    out.update = update;
    Ok(out)
}
