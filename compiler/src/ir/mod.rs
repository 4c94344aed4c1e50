//! The IR: a rule as pure expression DAGs in arenas, plus effectful stores.
//!
//! Takes a checked AST (see [`lower`]), gives a [`Program`]: the declarations, and the update
//! block as one [`Function`] whose stores give the final value of `p`, of each state and of each
//! scalar state. The program is flag-generic (flags appear as `Expr::Flag` leaves); the passes
//! specialize it for one flag set and split it into a [`optc_kernel::Kernel`].
//!
//! Spans live in a side table parallel to the arena, so diagnostics after lowering still point at
//! the source.

pub mod lower;

use crate::diag::Span;
use optc_kernel::{Arena, Expr, Handle, Init, ReduceOp, ScalarId, Scope, Slot};
use std::collections::HashMap;

/// A hyper as declared.
#[derive(Clone, Debug, PartialEq)]
pub struct HyperInfo {
    /// Name.
    pub name: String,
    /// Default value.
    pub default: f64,
    /// Its `///` doc comment.
    pub doc: String,
}

/// A flag as declared.
#[derive(Clone, Debug, PartialEq)]
pub struct FlagInfo {
    /// Name.
    pub name: String,
    /// Default value.
    pub default: bool,
    /// Its `///` doc comment.
    pub doc: String,
}

/// A per-element state as declared.
#[derive(Clone, Debug, PartialEq)]
pub struct StateInfo {
    /// Name.
    pub name: String,
    /// Initial value; `Init::Value` refers to [`Program::decl`].
    pub init: Init,
    /// The flag condition under which it exists: a node of [`Program::decl`].
    pub condition: Option<Handle<Expr>>,
    /// The name torch gives it (`state m = 0 as exp_avg`); `None` when it has the same name.
    pub torch_name: Option<String>,
    /// Its shape: per element, or one value per row or column of a matrix.
    pub shape: optc_kernel::StateShape,
    /// Where it was declared.
    pub span: Span,
}

/// A scalar state as declared.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalarInfo {
    /// Name.
    pub name: String,
    /// Initial value: a node of [`Program::decl`].
    pub init: Handle<Expr>,
    /// Where it was declared.
    pub span: Span,
}

/// A whole rule, flag-generic.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    /// `optimizer NAME`.
    pub name: String,
    /// The doc comment above `optimizer`.
    pub doc: String,
    /// Hypers in declaration order (`Expr::Hyper` indexes this).
    pub hypers: Vec<HyperInfo>,
    /// Flags in declaration order (`Expr::Flag` indexes this).
    pub flags: Vec<FlagInfo>,
    /// States in declaration order (`Slot::State` indexes this).
    pub states: Vec<StateInfo>,
    /// Scalar states in declaration order (`Expr::Scalar` indexes this).
    pub scalars: Vec<ScalarInfo>,
    /// Integer flags (`flag ns_steps = 5`): compile-time `repeat` counts, with their defaults.
    pub counts: Vec<(String, u32)>,
    /// Initial values and state conditions, over `Const`, `Bool`, `Hyper` and `Flag` leaves.
    pub decl: Arena<Expr>,
    /// The update block.
    pub update: Function,
}

/// The flag id of the built-in `matrix` condition: true when the tensor has at least 2 dims.
/// Specialized per tensor rank class like a flag (see [`optc_kernel::RankClass`]).
pub const MATRIX_FLAG: optc_kernel::FlagId = optc_kernel::FlagId(u32::MAX);

impl Program {
    /// Whether the rule reads the built-in `matrix` condition, so that it compiles to one kernel
    /// per rank class.
    pub fn uses_rank(&self) -> bool {
        let is_matrix = |e: &Expr| *e == Expr::Flag(MATRIX_FLAG);
        self.update.exprs.iter().any(|(_, e)| is_matrix(e))
            || self.decl.iter().any(|(_, e)| is_matrix(e))
    }
}

/// A DAG with its stores. Operands precede users; `spans[i]` is the source of node `i`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Function {
    /// The nodes.
    pub exprs: Arena<Expr>,
    /// The source span of each node.
    pub spans: Vec<Span>,
    /// The final value of each written per-element buffer, at most one per slot.
    pub stores: Vec<(Slot, Handle<Expr>)>,
    /// The final value of each written scalar state.
    pub scalar_stores: Vec<(ScalarId, Handle<Expr>)>,
    /// The reductions: `Expr::Reduced(i)` is the result of `reductions[i]`, whose argument is a
    /// node before it.
    pub reductions: Vec<Reduction>,
    /// The matrix values: the leaf [`matrix_leaf`]`(i)` stands for `matrices[i]` (see
    /// [`MatNode`]).
    pub matrices: Vec<MatNode>,
}

/// The first state id of matrix leaves: `Expr::Load(Slot::State(StateId(MATRIX_BASE + i)))` is
/// matrix value `i` of [`Function::matrices`] (a per-element value where it is used per
/// element: it is `m × n`, the tensor's shape). `passes::matrix` replaces them with scratch
/// states before the kernel is built.
pub const MATRIX_BASE: u32 = 1 << 30;

/// The leaf of matrix value `i`.
pub fn matrix_leaf(i: usize) -> Expr {
    Expr::Load(Slot::State(optc_kernel::StateId(MATRIX_BASE + i as u32)))
}

/// Which matrix value a leaf is, if it is one.
pub fn matrix_of(e: &Expr) -> Option<usize> {
    match *e {
        Expr::Load(Slot::State(s)) if s.0 >= MATRIX_BASE => Some((s.0 - MATRIX_BASE) as usize),
        _ => None,
    }
}

/// A matrix value in the whole-rule IR. Matrix operands are matrix leaves; every handle is a
/// node of the function before the leaf of this value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MatNode {
    /// The tensor's per-element value `.0` as its wide `m × n` matrix.
    Elems(Handle<Expr>),
    /// The transpose.
    Transpose(Handle<Expr>),
    /// The matrix product.
    MatMul(Handle<Expr>, Handle<Expr>),
    /// A matrix times a uniform number (the first handle).
    Scale(Handle<Expr>, Handle<Expr>),
    /// A sum.
    Add(Handle<Expr>, Handle<Expr>),
    /// A difference.
    Sub(Handle<Expr>, Handle<Expr>),
    /// The negation.
    Neg(Handle<Expr>),
    /// Rounded to bfloat16.
    RoundBf16(Handle<Expr>),
    /// `cond ? a : b` on matrices; `cond` must fold to a constant (flags only).
    Select(Handle<Expr>, Handle<Expr>, Handle<Expr>),
}

impl MatNode {
    /// The node with every handle mapped.
    pub fn map(self, mut f: impl FnMut(Handle<Expr>) -> Handle<Expr>) -> MatNode {
        match self {
            MatNode::Elems(a) => MatNode::Elems(f(a)),
            MatNode::Transpose(a) => MatNode::Transpose(f(a)),
            MatNode::MatMul(a, b) => MatNode::MatMul(f(a), f(b)),
            MatNode::Scale(a, b) => MatNode::Scale(f(a), f(b)),
            MatNode::Add(a, b) => MatNode::Add(f(a), f(b)),
            MatNode::Sub(a, b) => MatNode::Sub(f(a), f(b)),
            MatNode::Neg(a) => MatNode::Neg(f(a)),
            MatNode::RoundBf16(a) => MatNode::RoundBf16(f(a)),
            MatNode::Select(c, a, b) => MatNode::Select(f(c), f(a), f(b)),
        }
    }

    /// Every handle the node reads.
    pub fn handles(self) -> Vec<Handle<Expr>> {
        let mut v = Vec::new();
        self.map(|h| {
            v.push(h);
            h
        });
        v
    }
}

/// A reduction in the whole-rule IR: `op` of the per-element values `arg` over `scope`.
#[derive(Clone, Debug, PartialEq)]
pub struct Reduction {
    /// What it computes.
    pub op: ReduceOp,
    /// Over which elements.
    pub scope: Scope,
    /// The per-element value reduced.
    pub arg: Handle<Expr>,
    /// What the source called (for the IR text), such as `norm`.
    pub name: String,
}

impl Function {
    /// The span of a node.
    pub fn span(&self, h: Handle<Expr>) -> Span {
        self.spans.get(h.index()).copied().unwrap_or_default()
    }
}

/// Appends nodes to a new function, optionally sharing identical nodes (hash-consing).
#[derive(Default)]
pub struct Builder {
    /// The function being built.
    pub func: Function,
    dedup: Option<HashMap<Key, Handle<Expr>>>,
}

type Key = (u8, u64, u32, u32, u32);

fn key(e: &Expr) -> Key {
    let h = |x: Handle<Expr>| x.index() as u32;
    match *e {
        Expr::Const(c) => (0, c.to_bits(), 0, 0, 0),
        Expr::Bool(b) => (1, b as u64, 0, 0, 0),
        Expr::Hyper(i) => (2, i.0 as u64, 0, 0, 0),
        Expr::Flag(i) => (3, i.0 as u64, 0, 0, 0),
        Expr::Step => (4, 0, 0, 0, 0),
        Expr::Scalar(i) => (5, i.0 as u64, 0, 0, 0),
        Expr::Uniform(i) => (6, i.0 as u64, 0, 0, 0),
        Expr::Load(Slot::Param) => (7, 0, 0, 0, 0),
        Expr::Load(Slot::Grad) => (7, 1, 0, 0, 0),
        Expr::Load(Slot::State(s)) => (7, 2 + s.0 as u64, 0, 0, 0),
        Expr::Unary(op, a) => (8, op as u64, h(a), 0, 0),
        Expr::Binary(op, a, b) => (9, op as u64, h(a), h(b), 0),
        Expr::Select(c, a, b) => (10, 0, h(c), h(a), h(b)),
        Expr::Reduced(i) => (11, i.0 as u64, 0, 0, 0),
        Expr::Vector(i) => (12, i.0 as u64, 0, 0, 0),
        Expr::VecMean(a) => (13, 0, h(a), 0, 0),
    }
}

impl Builder {
    /// A builder that shares identical nodes.
    pub fn sharing() -> Self {
        Builder {
            func: Function::default(),
            dedup: Some(HashMap::new()),
        }
    }
    /// Appends `e` (or finds an identical node) and returns its handle.
    pub fn add(&mut self, e: Expr, span: Span) -> Handle<Expr> {
        let e = canonical(e);
        if let Some(map) = &self.dedup {
            if let Some(&h) = map.get(&key(&e)) {
                // Keep a real source place when the first copy had none (the loads made at the
                // start of the update block), so later diagnostics point at a use.
                if let Some(s) = self.func.spans.get_mut(h.index()) {
                    if *s == Span::default() {
                        *s = span;
                    }
                }
                return h;
            }
        }
        let h = self.func.exprs.append(e);
        self.func.spans.push(span);
        if let Some(map) = &mut self.dedup {
            map.insert(key(&e), h);
        }
        h
    }
    /// Adds the reduction `op` of `arg` over `scope` (or finds an identical one) and returns
    /// its `Expr::Reduced` node.
    pub fn reduce(
        &mut self,
        op: ReduceOp,
        scope: Scope,
        arg: Handle<Expr>,
        name: &str,
        span: Span,
    ) -> Handle<Expr> {
        let reds = &mut self.func.reductions;
        let i = match reds
            .iter()
            .position(|r| r.op == op && r.scope == scope && r.arg == arg)
        {
            Some(i) => i,
            None => {
                reds.push(Reduction {
                    op,
                    scope,
                    arg,
                    name: name.to_string(),
                });
                reds.len() - 1
            }
        };
        self.add(Expr::Reduced(optc_kernel::ReductionId::new(i)), span)
    }
    /// Adds matrix value `m` and returns its leaf.
    pub fn matrix(&mut self, m: MatNode, span: Span) -> Handle<Expr> {
        self.func.matrices.push(m);
        let leaf = matrix_leaf(self.func.matrices.len() - 1);
        self.add(leaf, span)
    }
    /// The node behind a handle.
    pub fn get(&self, h: Handle<Expr>) -> Expr {
        self.func.exprs[h]
    }
}

/// Orders the operands of commutative ops, so that `a + b` and `b + a` share a node.
fn canonical(e: Expr) -> Expr {
    match e {
        Expr::Binary(op, a, b) if op.is_commutative() && b < a => Expr::Binary(op, b, a),
        other => other,
    }
}

/// Rebuilds `f` node by node in order: `map` gets the builder, the old handle and the node with
/// operands already mapped, and returns the new handle. Stores are mapped; stores that write a
/// slot's own unchanged load are dropped.
pub fn rebuild(
    f: &Function,
    mut b: Builder,
    mut map: impl FnMut(&mut Builder, Handle<Expr>, Expr, Span) -> Handle<Expr>,
) -> Function {
    let mut new_of: Vec<Handle<Expr>> = Vec::with_capacity(f.exprs.len());
    for (h, e) in f.exprs.iter() {
        let e = e.map_operands(|o| new_of[o.index()]);
        let nh = map(&mut b, h, e, f.span(h));
        new_of.push(nh);
    }
    let mut out = b.func;
    out.stores = f
        .stores
        .iter()
        .map(|&(s, h)| (s, new_of[h.index()]))
        .filter(|&(s, h)| out.exprs[h] != Expr::Load(s))
        .collect();
    out.scalar_stores = f
        .scalar_stores
        .iter()
        .map(|&(s, h)| (s, new_of[h.index()]))
        .filter(|&(s, h)| out.exprs[h] != Expr::Scalar(s))
        .collect();
    out.reductions = f
        .reductions
        .iter()
        .map(|r| Reduction {
            arg: new_of[r.arg.index()],
            ..r.clone()
        })
        .collect();
    out.matrices = f
        .matrices
        .iter()
        .map(|m| m.map(|h| new_of[h.index()]))
        .collect();
    out
}
