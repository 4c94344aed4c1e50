//! Analysis of a kernel body before lowering: which nodes are live, which are the same for every
//! element (computed once before the loop), which are booleans (lane masks), in which forms each
//! node is used, and which `a * b ± c` become one `fma`.

use optc_kernel::{Arena, BinaryOp, Expr, Handle, Slot, Store, UnaryOp};

/// How a reduce output folds its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fold {
    /// f32 `+` from `-0.0`.
    Sum,
    /// The `max` op (NaN-propagating, `-0 < +0`) from `-inf`.
    Max,
}

/// What the lowering needs of one stage of a kernel.
pub(super) struct StageView<'k> {
    /// The per-element body.
    pub body: &'k Arena<Expr>,
    /// Its stores.
    pub stores: &'k [Store],
    /// Its reduce outputs, in stage order: how each folds, and the body value folded.
    pub reduce: Vec<(Fold, Handle<Expr>)>,
    /// The number of buffers (`p`, `g`, then each state).
    pub buffers: usize,
    /// Each buffer's storage dtype, in buffer order.
    pub dtypes: Vec<optc_kernel::Dtype>,
    /// For a stage whose store of `p` rounds stochastically: its uniform count (the key and the
    /// first element's index follow the uniforms).
    pub stochastic: Option<usize>,
}

/// How a node's value is represented natively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// An f32x4 of numbers.
    Num,
    /// An i32x4 lane mask (all ones = true), for booleans.
    Mask,
}

/// A multiply fused with an add or subtract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fused {
    /// `x * y + c`.
    MulAdd(Handle<Expr>, Handle<Expr>, Handle<Expr>),
    /// `x * y - c`.
    MulSub(Handle<Expr>, Handle<Expr>, Handle<Expr>),
    /// `c - x * y`.
    NegMulAdd(Handle<Expr>, Handle<Expr>, Handle<Expr>),
}

/// The result of the analysis, indexed by body node.
pub(super) struct Plan {
    /// Native representation.
    pub kind: Vec<Kind>,
    /// Needed by some store or reduce output.
    pub live: Vec<bool>,
    /// Depends on no `Load`: computed once before the loop.
    pub invariant: Vec<bool>,
    /// Some live user wants it as numbers.
    pub need_num: Vec<bool>,
    /// Some live user wants it as a lane mask.
    pub need_mask: Vec<bool>,
    /// FMA fusion of this `Add`/`Sub` node, if any.
    pub fused: Vec<Option<Fused>>,
    /// Buffer index (in [`Kernel::buffers`] order) of each live-loaded buffer.
    pub read: Vec<bool>,
    /// Whether each buffer is stored.
    pub written: Vec<bool>,
}

/// The position of a buffer in [`Kernel::buffers`] order.
pub(super) fn buffer_index(slot: Slot) -> usize {
    match slot {
        Slot::Param => 0,
        Slot::Grad => 1,
        Slot::State(s) => 2 + s.index(),
    }
}

impl Plan {
    /// The operands lowering actually reads (those of the fused form for fused nodes).
    pub fn operands(&self, body: &optc_kernel::Arena<Expr>, h: Handle<Expr>) -> Vec<Handle<Expr>> {
        match self.fused[h.index()] {
            Some(Fused::MulAdd(x, y, c) | Fused::MulSub(x, y, c) | Fused::NegMulAdd(x, y, c)) => {
                vec![x, y, c]
            }
            None => body[h].operands().collect(),
        }
    }

    /// Analyses the body of one stage of a validated kernel.
    pub fn new(stage: &StageView<'_>, fma: bool) -> Plan {
        let body = stage.body;
        let n = body.len();
        let mut kind = Vec::with_capacity(n);
        for (_, e) in body.iter() {
            let k = match *e {
                Expr::Bool(_) => Kind::Mask,
                Expr::Unary(UnaryOp::Not, _) => Kind::Mask,
                Expr::Binary(op, ..) if op.is_comparison() || op.is_logical() => Kind::Mask,
                Expr::Select(_, a, b)
                    if kind[a.index()] == Kind::Mask && kind[b.index()] == Kind::Mask =>
                {
                    Kind::Mask
                }
                _ => Kind::Num,
            };
            kind.push(k);
        }

        let mut uses = vec![0usize; n];
        for (_, e) in body.iter() {
            for o in e.operands() {
                uses[o.index()] += 1;
            }
        }
        for s in stage.stores {
            uses[s.value.index()] += 1;
        }
        for &(_, v) in &stage.reduce {
            uses[v.index()] += 1;
        }
        let single_mul = |h: Handle<Expr>| match body[h] {
            Expr::Binary(BinaryOp::Mul, x, y) if uses[h.index()] == 1 => Some((x, y)),
            _ => None,
        };
        let fused: Vec<Option<Fused>> = body
            .iter()
            .map(|(_, e)| match *e {
                _ if !fma => None,
                Expr::Binary(BinaryOp::Add, a, b) => match (single_mul(a), single_mul(b)) {
                    (Some((x, y)), _) => Some(Fused::MulAdd(x, y, b)),
                    (None, Some((x, y))) => Some(Fused::MulAdd(x, y, a)),
                    _ => None,
                },
                Expr::Binary(BinaryOp::Sub, a, b) => match (single_mul(a), single_mul(b)) {
                    (Some((x, y)), _) => Some(Fused::MulSub(x, y, b)),
                    (None, Some((x, y))) => Some(Fused::NegMulAdd(x, y, a)),
                    _ => None,
                },
                _ => None,
            })
            .collect();

        let mut plan = Plan {
            kind,
            live: vec![false; n],
            invariant: vec![false; n],
            need_num: vec![false; n],
            need_mask: vec![false; n],
            fused,
            read: vec![false; stage.buffers],
            written: vec![false; stage.buffers],
        };

        for s in stage.stores {
            plan.live[s.value.index()] = true;
            plan.need_num[s.value.index()] = true;
            plan.written[buffer_index(s.slot)] = true;
        }
        for &(_, v) in &stage.reduce {
            plan.live[v.index()] = true;
            plan.need_num[v.index()] = true;
        }
        for h in body.handles().rev() {
            if !plan.live[h.index()] {
                continue;
            }
            for o in plan.operands(body, h) {
                plan.live[o.index()] = true;
            }
            let e = body[h];
            let mask_operands = match e {
                Expr::Unary(UnaryOp::Not, _) => true,
                Expr::Binary(op, ..) => op.is_logical(),
                _ => false,
            };
            match e {
                Expr::Select(c, a, b) => {
                    plan.need_mask[c.index()] = true;
                    let branch = if plan.kind[h.index()] == Kind::Mask {
                        &mut plan.need_mask
                    } else {
                        &mut plan.need_num
                    };
                    branch[a.index()] = true;
                    branch[b.index()] = true;
                }
                _ => {
                    for o in plan.operands(body, h) {
                        if mask_operands {
                            plan.need_mask[o.index()] = true;
                        } else {
                            plan.need_num[o.index()] = true;
                        }
                    }
                }
            }
            if let Expr::Load(slot) = e {
                plan.read[buffer_index(slot)] = true;
            }
        }
        for (h, e) in body.iter() {
            plan.invariant[h.index()] = match e {
                Expr::Load(_) => false,
                Expr::Unary(..) | Expr::Binary(..) | Expr::Select(..) => plan
                    .operands(body, h)
                    .iter()
                    .all(|o| plan.invariant[o.index()]),
                _ => true,
            };
        }
        plan
    }
}
