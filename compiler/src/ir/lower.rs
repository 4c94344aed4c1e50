//! Lowering: a checked AST to a flag-generic [`Program`].
//!
//! Assumes the checker found no errors. `let` bindings and assignments become edges of the DAG;
//! an `if` evaluates both branches and merges each changed variable with a `Select` on the
//! condition (flag conditions become constant after specialization and fold away).

use super::{
    matrix_of, Builder, FlagInfo, Function, HyperInfo, MatNode, Program, ScalarInfo, StateInfo,
};
use crate::check::{DeclTable, Symbol};
use crate::diag::Span;
use crate::syntax::ast::{self, DeclKind, ExprKind, Stmt};
use optc_kernel::eval::eval_arena;
use optc_kernel::{
    Arena, BinaryOp, Expr, FlagId, Handle, HyperId, Init, ReduceOp, ScalarId, Scope, Slot, StateId,
    UnaryOp,
};

/// Lowers a checked file.
pub fn lower(file: &ast::File, table: &DeclTable) -> Program {
    lower_with_counts(file, table, &[])
}

/// Lowers a checked file with some integer flags (`flag ns_steps = 5`) given other values; the
/// caller has checked the names and that each value is a valid count.
pub fn lower_with_counts(
    file: &ast::File,
    table: &DeclTable,
    overrides: &[(&str, u32)],
) -> Program {
    let mut decl = Arena::new();
    let mut hypers = Vec::new();
    let mut flags = Vec::new();
    let mut states = Vec::new();
    let mut scalars = Vec::new();
    let mut counts = Vec::new();
    for d in &file.decls {
        match d.kind {
            DeclKind::Hyper => {
                let mut tmp = Arena::new();
                let h = decl_expr(&d.value, table, &mut tmp);
                let mut values: Vec<f64> = Vec::new();
                let default = match eval_arena(&tmp, &mut values, |_| Err(())) {
                    Ok(()) => values[h.index()],
                    Err(_) => f64::NAN,
                };
                hypers.push(HyperInfo {
                    name: d.name.name.clone(),
                    default,
                    doc: d.doc.clone(),
                });
            }
            DeclKind::Flag if matches!(d.value.kind, ExprKind::Number(_)) => {
                let given = overrides.iter().find(|(n, _)| *n == d.name.name);
                let value = match given {
                    Some(&(_, v)) => v,
                    None => crate::check::count_value(&d.value).unwrap_or(0),
                };
                counts.push((d.name.name.clone(), value));
            }
            DeclKind::Flag => flags.push(FlagInfo {
                name: d.name.name.clone(),
                default: matches!(d.value.kind, ExprKind::Bool(true)),
                doc: d.doc.clone(),
            }),
            DeclKind::State => {
                let init = match &d.value.kind {
                    ExprKind::Name(n) if n == "p" => Init::Param,
                    _ => Init::Value(decl_expr(&d.value, table, &mut decl)),
                };
                let condition = d.condition.as_ref().map(|c| decl_expr(c, table, &mut decl));
                states.push(StateInfo {
                    name: d.name.name.clone(),
                    init,
                    condition,
                    torch_name: d.torch_name.as_ref().map(|t| t.name.clone()),
                    shape: table.state_shape(states.len()),
                    span: d.name.span,
                });
            }
            DeclKind::Scalar => scalars.push(ScalarInfo {
                name: d.name.name.clone(),
                init: decl_expr(&d.value, table, &mut decl),
                span: d.name.span,
            }),
        }
    }
    let count_values: Vec<u32> = counts.iter().map(|c| c.1).collect();
    let update = Lowerer::new(table, states.len(), scalars.len(), count_values).run(&file.update);
    Program {
        name: file.name.name.clone(),
        doc: file.doc.clone(),
        hypers,
        flags,
        states,
        scalars,
        counts,
        decl,
        update,
    }
}

/// Lowers a declaration-level expression (literals, hypers, flags, arithmetic, calls).
fn decl_expr(e: &ast::Expr, table: &DeclTable, arena: &mut Arena<Expr>) -> Handle<Expr> {
    let mut b = Builder::default();
    let mut env = Env::default();
    let h = lower_expr(e, table, &mut env, &mut b);
    // Copy the builder's nodes into the shared arena.
    let base = arena.len();
    for (_, n) in b.func.exprs.iter() {
        arena.append(n.map_operands(|o| Handle::new(base + o.index())));
    }
    Handle::new(base + h.index())
}

/// Names in scope during the update block: locals, and the current value of `p`, states and
/// scalar states.
#[derive(Clone, Default)]
struct Env {
    locals: Vec<(String, Handle<Expr>)>,
    /// The load nodes made at the start, to tell unassigned buffers apart.
    initial: Vec<Handle<Expr>>,
    param: Option<Handle<Expr>>,
    states: Vec<Handle<Expr>>,
    scalars: Vec<Handle<Expr>>,
}

struct Lowerer<'a> {
    table: &'a DeclTable,
    b: Builder,
    env: Env,
    counts: Vec<u32>,
}

impl<'a> Lowerer<'a> {
    fn new(table: &'a DeclTable, n_states: usize, n_scalars: usize, counts: Vec<u32>) -> Self {
        let mut b = Builder::default();
        let param = b.add(Expr::Load(Slot::Param), Span::default());
        let states: Vec<Handle<Expr>> = (0..n_states)
            .map(|i| b.add(Expr::Load(Slot::State(StateId::new(i))), Span::default()))
            .collect();
        let scalars = (0..n_scalars)
            .map(|i| b.add(Expr::Scalar(ScalarId::new(i)), Span::default()))
            .collect();
        Lowerer {
            table,
            b,
            counts,
            env: Env {
                initial: std::iter::once(param)
                    .chain(states.iter().copied())
                    .collect(),
                locals: Vec::new(),
                param: Some(param),
                states,
                scalars,
            },
        }
    }

    fn run(mut self, block: &ast::Block) -> Function {
        self.block(block);
        let mut f = self.b.func;
        if let Some(p) = self.env.param {
            f.stores.push((Slot::Param, p));
        }
        for (i, h) in self.env.states.iter().enumerate() {
            f.stores.push((Slot::State(StateId::new(i)), *h));
        }
        for (i, h) in self.env.scalars.iter().enumerate() {
            f.scalar_stores.push((ScalarId::new(i), *h));
        }
        // Drop stores of unchanged values.
        let exprs = &f.exprs;
        f.stores.retain(|&(s, h)| exprs[h] != Expr::Load(s));
        f.scalar_stores
            .retain(|&(s, h)| exprs[h] != Expr::Scalar(s));
        f
    }

    fn block(&mut self, block: &ast::Block) {
        let mark = self.env.locals.len();
        for s in &block.stmts {
            self.stmt(s);
        }
        self.env.locals.truncate(mark);
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Let { name, value } => {
                let h = lower_expr(value, self.table, &mut self.env, &mut self.b);
                self.env.locals.push((name.name.clone(), h));
            }
            Stmt::Assign { target, value } => {
                let h = lower_expr(value, self.table, &mut self.env, &mut self.b);
                if let Some(slot) = self
                    .env
                    .locals
                    .iter_mut()
                    .rev()
                    .find(|(n, _)| *n == target.name)
                {
                    slot.1 = h;
                    return;
                }
                match self.table.get(&target.name) {
                    Some(Symbol::Param) => self.env.param = Some(h),
                    Some(Symbol::State(i)) => self.env.states[i] = h,
                    Some(Symbol::Scalar(i)) => self.env.scalars[i] = h,
                    _ => {}
                }
            }
            Stmt::If {
                cond,
                then,
                otherwise,
                span,
            } => {
                let c = lower_expr(cond, self.table, &mut self.env, &mut self.b);
                let before = self.env.clone();
                self.block(then);
                let after_then = std::mem::replace(&mut self.env, before);
                if let Some(o) = otherwise {
                    self.block(o);
                }
                let span = *span;
                let mut merge = |a: Handle<Expr>, b: Handle<Expr>| {
                    let is_m = |h: Handle<Expr>| matrix_of(&self.b.get(h)).is_some();
                    if a == b {
                        a
                    } else if is_m(a) && is_m(b) {
                        self.b.matrix(MatNode::Select(c, a, b), span)
                    } else {
                        self.b.add(Expr::Select(c, a, b), span)
                    }
                };
                let mut env = std::mem::take(&mut self.env);
                for (l, t) in env.locals.iter_mut().zip(&after_then.locals) {
                    l.1 = merge(t.1, l.1);
                }
                if let (Some(p), Some(tp)) = (env.param, after_then.param) {
                    env.param = Some(merge(tp, p));
                }
                for (s, t) in env.states.iter_mut().zip(&after_then.states) {
                    *s = merge(*t, *s);
                }
                for (s, t) in env.scalars.iter_mut().zip(&after_then.scalars) {
                    *s = merge(*t, *s);
                }
                self.env = env;
            }
            Stmt::Repeat { count, body, .. } => {
                let n = match &count.kind {
                    ExprKind::Number(_) => crate::check::count_value(count).unwrap_or(0),
                    ExprKind::Name(name) => match self.table.get(name) {
                        Some(Symbol::Count(i)) => self.counts.get(i).copied().unwrap_or(0),
                        _ => 0,
                    },
                    _ => 0,
                };
                for _ in 0..n {
                    self.block(body);
                }
            }
        }
    }
}

/// Whether node `h` is a `[rows]` or `[cols]` value: it reads such a state or a Row- or
/// Col-scope reduction and no per-element buffer (the checker's rule; `mean` of it is the
/// per-matrix mean).
fn is_vector(b: &Builder, table: &DeclTable, h: Handle<Expr>) -> bool {
    use crate::check::Uniformity;
    let f = &b.func;
    let mut memo: Vec<Option<Uniformity>> = vec![None; h.index() + 1];
    for i in 0..=h.index() {
        let e = f.exprs[Handle::new(i)];
        let u = match e {
            Expr::Load(Slot::State(s)) => match table.state_shape(s.index()) {
                optc_kernel::StateShape::Rows => Uniformity::Rows,
                optc_kernel::StateShape::Cols => Uniformity::Cols,
                optc_kernel::StateShape::Full => Uniformity::PerElement,
            },
            Expr::Load(_) => Uniformity::PerElement,
            Expr::Reduced(r) => match f.reductions.get(r.index()).map(|r| r.scope) {
                Some(Scope::Row) => Uniformity::Rows,
                Some(Scope::Col) => Uniformity::Cols,
                _ => Uniformity::Uniform,
            },
            e => e
                .operands()
                .filter_map(|o| memo[o.index()])
                .fold(Uniformity::Uniform, Uniformity::join),
        };
        memo[i] = Some(u);
    }
    memo[h.index()].is_some_and(Uniformity::is_vector)
}

/// `h` as a matrix: itself when it is a matrix leaf, else the per-element value as the tensor's
/// `m × n` matrix.
fn as_matrix(b: &mut Builder, h: Handle<Expr>, span: Span) -> Handle<Expr> {
    if matrix_of(&b.get(h)).is_some() {
        h
    } else {
        b.matrix(MatNode::Elems(h), span)
    }
}

/// Whether `h` depends on a buffer (is per-element or a matrix), not only on uniform values.
fn reads_elements(b: &Builder, h: Handle<Expr>) -> bool {
    let mut stack = vec![h];
    let mut seen = std::collections::HashSet::new();
    while let Some(x) = stack.pop() {
        if !seen.insert(x) {
            continue;
        }
        match b.get(x) {
            Expr::Load(_) => return true,
            Expr::Reduced(_) => {}
            e => stack.extend(e.operands()),
        }
    }
    false
}

fn is_matrix(b: &Builder, h: Handle<Expr>) -> bool {
    matrix_of(&b.get(h)).is_some()
}

fn lower_expr(e: &ast::Expr, table: &DeclTable, env: &mut Env, b: &mut Builder) -> Handle<Expr> {
    let span = e.span;
    match &e.kind {
        ExprKind::Number(x) => b.add(Expr::Const(*x), span),
        ExprKind::Bool(x) => b.add(Expr::Bool(*x), span),
        ExprKind::Name(n) => {
            if let Some((_, h)) = env.locals.iter().rev().find(|(name, _)| name == n) {
                return *h;
            }
            let node = match table.get(n) {
                // An unassigned buffer gets a load node at the use, so later diagnostics can point
                // there; CSE merges the loads.
                Some(Symbol::Param) => match env.param {
                    Some(h) if !env.initial.contains(&h) => return h,
                    _ => Expr::Load(Slot::Param),
                },
                Some(Symbol::Grad) => Expr::Load(Slot::Grad),
                Some(Symbol::Step) => Expr::Step,
                Some(Symbol::Hyper(i)) => Expr::Hyper(HyperId::new(i)),
                Some(Symbol::Flag(i)) => Expr::Flag(FlagId::new(i)),
                Some(Symbol::State(i)) => match env.states.get(i) {
                    Some(h) if !env.initial.contains(h) => return *h,
                    _ => Expr::Load(Slot::State(StateId::new(i))),
                },
                Some(Symbol::Scalar(i)) => match env.scalars.get(i) {
                    Some(h) => return *h,
                    None => Expr::Scalar(ScalarId::new(i)),
                },
                // Unreachable after a clean check; NaN keeps lowering total.
                Some(Symbol::Count(_)) | None => Expr::Const(f64::NAN),
            };
            b.add(node, span)
        }
        ExprKind::Unary(op, a) => {
            let a = lower_expr(a, table, env, b);
            if is_matrix(b, a) {
                return b.matrix(MatNode::Neg(a), span);
            }
            b.add(Expr::Unary(*op, a), span)
        }
        ExprKind::Binary(op, x, y) => {
            let x = lower_expr(x, table, env, b);
            let y = lower_expr(y, table, env, b);
            // The checker allowed only the combinations below; an `m × n` matrix added to a
            // per-element value is used per element (its leaf).
            match (op, is_matrix(b, x), is_matrix(b, y)) {
                (BinaryOp::Add, true, true) => return b.matrix(MatNode::Add(x, y), span),
                (BinaryOp::Sub, true, true) => return b.matrix(MatNode::Sub(x, y), span),
                (BinaryOp::Mul, true, false) => return b.matrix(MatNode::Scale(y, x), span),
                (BinaryOp::Mul, false, true) => return b.matrix(MatNode::Scale(x, y), span),
                (BinaryOp::Div, true, false) => {
                    let one = b.add(Expr::Const(1.0), span);
                    let r = b.add(Expr::Binary(BinaryOp::Div, one, y), span);
                    return b.matrix(MatNode::Scale(r, x), span);
                }
                _ => {}
            }
            b.add(Expr::Binary(*op, x, y), span)
        }
        ExprKind::Ternary(c, x, y) => {
            let c = lower_expr(c, table, env, b);
            let x = lower_expr(x, table, env, b);
            let y = lower_expr(y, table, env, b);
            if is_matrix(b, x) || is_matrix(b, y) {
                let x = as_matrix(b, x, span);
                let y = as_matrix(b, y, span);
                return b.matrix(MatNode::Select(c, x, y), span);
            }
            b.add(Expr::Select(c, x, y), span)
        }
        ExprKind::MatMul(x, y) => {
            let x = lower_expr(x, table, env, b);
            let y = lower_expr(y, table, env, b);
            let x = as_matrix(b, x, span);
            let y = as_matrix(b, y, span);
            b.matrix(MatNode::MatMul(x, y), span)
        }
        ExprKind::Call(f, args) => {
            let a: Vec<Handle<Expr>> = args.iter().map(|x| lower_expr(x, table, env, b)).collect();
            let arg = |i: usize| a.get(i).copied();
            let un = |op| arg(0).map(|x| Expr::Unary(op, x));
            let sq =
                |b: &mut Builder, x: Handle<Expr>| b.add(Expr::Binary(BinaryOp::Mul, x, x), span);
            let node = match f.name.as_str() {
                "round_bf16" if a.len() == 1 && !reads_elements(b, a[0]) => {
                    Some(Expr::Unary(UnaryOp::RoundBf16, a[0]))
                }
                "transpose" | "round_bf16" if a.len() == 1 => {
                    let m = as_matrix(b, a[0], span);
                    return b.matrix(
                        if f.name == "transpose" {
                            MatNode::Transpose(m)
                        } else {
                            MatNode::RoundBf16(m)
                        },
                        span,
                    );
                }
                "sum" | "amax" if a.len() == 1 => {
                    let op = if f.name == "sum" {
                        ReduceOp::Sum
                    } else {
                        ReduceOp::Max
                    };
                    return b.reduce(op, Scope::Tensor, a[0], &f.name, span);
                }
                "row_mean" | "col_mean" if a.len() == 1 => {
                    let scope = if f.name == "row_mean" {
                        Scope::Row
                    } else {
                        Scope::Col
                    };
                    let s = b.reduce(ReduceOp::Sum, scope, a[0], &f.name, span);
                    let one = b.add(Expr::Const(1.0), span);
                    let count = if f.name == "row_mean" {
                        "row count"
                    } else {
                        "col count"
                    };
                    let n = b.reduce(ReduceOp::Sum, scope, one, count, span);
                    Some(Expr::Binary(BinaryOp::Div, s, n))
                }
                "mean" if a.len() == 1 && is_vector(b, table, a[0]) => Some(Expr::VecMean(a[0])),
                "mean" if a.len() == 1 => {
                    let s = b.reduce(ReduceOp::Sum, Scope::Tensor, a[0], "mean", span);
                    let one = b.add(Expr::Const(1.0), span);
                    let n = b.reduce(ReduceOp::Sum, Scope::Tensor, one, "numel", span);
                    Some(Expr::Binary(BinaryOp::Div, s, n))
                }
                "norm" | "global_norm" if a.len() == 1 => {
                    let scope = if f.name == "norm" {
                        Scope::Tensor
                    } else {
                        Scope::Step
                    };
                    let x2 = sq(b, a[0]);
                    let s = b.reduce(ReduceOp::Sum, scope, x2, &f.name, span);
                    Some(Expr::Unary(UnaryOp::Sqrt, s))
                }
                "dot" if a.len() == 2 => {
                    let xy = b.add(Expr::Binary(BinaryOp::Mul, a[0], a[1]), span);
                    return b.reduce(ReduceOp::Sum, Scope::Tensor, xy, "dot", span);
                }
                "sqrt" => un(UnaryOp::Sqrt),
                "rsqrt" => un(UnaryOp::Rsqrt),
                "abs" => un(UnaryOp::Abs),
                "sign" => un(UnaryOp::Sign),
                "exp" => un(UnaryOp::Exp),
                "log" => un(UnaryOp::Log),
                "min" => arg(0)
                    .zip(arg(1))
                    .map(|(x, y)| Expr::Binary(BinaryOp::Min, x, y)),
                "max" => arg(0)
                    .zip(arg(1))
                    .map(|(x, y)| Expr::Binary(BinaryOp::Max, x, y)),
                "clamp" => match (arg(0), arg(1), arg(2)) {
                    (Some(x), Some(lo), Some(hi)) => {
                        let m = b.add(Expr::Binary(BinaryOp::Max, x, lo), span);
                        Some(Expr::Binary(BinaryOp::Min, m, hi))
                    }
                    _ => None,
                },
                "lerp" => match (arg(0), arg(1), arg(2)) {
                    (Some(x), Some(y), Some(w)) => {
                        let d = b.add(Expr::Binary(BinaryOp::Sub, y, x), span);
                        let s = b.add(Expr::Binary(BinaryOp::Mul, w, d), span);
                        Some(Expr::Binary(BinaryOp::Add, x, s))
                    }
                    _ => None,
                },
                _ => None,
            };
            b.add(node.unwrap_or(Expr::Const(f64::NAN)), span)
        }
    }
}
