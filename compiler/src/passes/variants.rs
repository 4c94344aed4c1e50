//! Kernel variants: conditions on hypers alone become constants, one kernel per combination.
//!
//! Takes the flag set's update after specialization, folding, CSE and dead-code elimination.
//! A **condition** is the condition of a live per-element select (an `if` or `?:`) that is built
//! from hypers and literals only (`momentum != 0`, `weight_decay > 0 && amsgrad_like > 0`); one
//! that also reads `t`, a scalar state or a reduction (`t == 1`, `rho_t > 5`) is not, and stays a
//! select in the kernel, since it changes from step to step. Conditions are distinct nodes after
//! CSE, in node order; at most [`MAX_CONDITIONS`] per flag set and rank class (E0504 past it).
//!
//! [`compile_variant`] replaces each condition with its value in the variant, then folds, CSEs,
//! eliminates dead code keeping every state the flag set's kernel updates
//! ([`super::dce::dce_keeping`]) and hoists. A variant computes, bit for bit, what the kernel with
//! the selects computes for hypers that give the conditions those values: a select on a uniform
//! condition yields one of its operands exactly, and the folds are exact identities.

use super::{classify, cse, dce, fold, front, hoist, CompileOptions, Front};
use crate::check::Uniformity;
use crate::diag::Diagnostic;
use crate::ir::{rebuild, Builder, Function, Program};
use optc_kernel::kernel::fmt_num;
use optc_kernel::{
    Arena, BinaryOp, Condition, Conditions, Expr, Handle, Kernel, UnaryOp, VariantId,
    MAX_CONDITIONS,
};

/// The conditions of the flag set `flags` under `options`, or E0504 when there are more than
/// [`MAX_CONDITIONS`].
pub fn conditions(
    program: &Program,
    flags: &[bool],
    options: &CompileOptions,
) -> Result<Conditions, Diagnostic> {
    let front = front(program, flags, options)?;
    Ok(find(&front)?.0)
}

/// The kernel of `variant` of the flag set `flags` under `options`.
pub fn compile_variant(
    program: &Program,
    flags: &[bool],
    options: &CompileOptions,
    variant: VariantId,
) -> Result<Kernel, Diagnostic> {
    let front = front(program, flags, options)?;
    let (conds, nodes) = find(&front)?;
    if variant.index() >= conds.variants().count() {
        return Err(Diagnostic::error(
            "E0900",
            format!(
                "internal compiler error: variant {variant} of a rule with {} conditions",
                nodes.len()
            ),
            Default::default(),
            "here",
        ));
    }
    let matrix = front.rank == optc_kernel::RankClass::Matrix;
    let f = rebuild(&front.func, Builder::default(), |b, h, e, span| match nodes
        .iter()
        .position(|&c| c == h)
    {
        Some(i) => b.add(Expr::Bool(variant.value(i)), span),
        None => b.add(e, span),
    });
    let f = fold::fold(&f);
    let f = cse::cse(&f);
    let live = dce::dce_keeping(&f, &front.program, flags, matrix, &front.base)?;
    let live = super::matrix::plan(live, matrix)?;
    let mut kernel = hoist::hoist(&front.program, flags, &live, front.rank)?;
    kernel.variant = conds.values(variant);
    Ok(kernel)
}

/// The conditions of `front` and their nodes in `front.func`.
fn find(front: &Front<'_>) -> Result<(Conditions, Vec<Handle<Expr>>), Diagnostic> {
    let f = &front.func;
    let reached = &front.base.reached;
    let cls = classify::classify(f);
    // Whether a node is built from hypers and literals only, and reads at least one hyper.
    let mut pure = Vec::with_capacity(f.exprs.len());
    let mut hyper = Vec::with_capacity(f.exprs.len());
    for (_, e) in f.exprs.iter() {
        let (p, h) = match e {
            Expr::Const(_) | Expr::Bool(_) => (true, false),
            Expr::Hyper(_) => (true, true),
            Expr::Unary(..) | Expr::Binary(..) | Expr::Select(..) => (
                e.operands().all(|o| pure[o.index()]),
                e.operands().any(|o| hyper[o.index()]),
            ),
            _ => (false, false),
        };
        pure.push(p);
        hyper.push(h);
    }
    let mut nodes: Vec<Handle<Expr>> = f
        .exprs
        .iter()
        .filter_map(|(h, e)| match *e {
            Expr::Select(c, _, _)
                if reached[h.index()]
                    && cls[h.index()] == Uniformity::PerElement
                    && pure[c.index()]
                    && hyper[c.index()] =>
            {
                Some(c)
            }
            _ => None,
        })
        .collect();
    nodes.sort();
    nodes.dedup();
    if nodes.len() > MAX_CONDITIONS {
        let extra = nodes[MAX_CONDITIONS];
        let mut d = Diagnostic::error(
            "E0504",
            format!(
                "{} conditions on hypers choose kernel variants; a rule may have at most \
                 {MAX_CONDITIONS} ({} variants) per flag set",
                nodes.len(),
                1 << MAX_CONDITIONS
            ),
            f.span(extra),
            "one condition too many",
        );
        for &c in &nodes[..MAX_CONDITIONS] {
            d = d.with(f.span(c), "a condition on hypers");
        }
        return Err(d.hint(
            "make one of them a flag (`flag NAME = false`), or combine conditions into one \
             (`if a != 0 && b != 0`)",
        ));
    }
    // Copy each condition's DAG into the conditions program.
    let mut program = Arena::new();
    let mut new_of: Vec<Option<Handle<Expr>>> = vec![None; f.exprs.len()];
    let mut conditions = Vec::with_capacity(nodes.len());
    for &c in &nodes {
        let value = copy(f, c, &mut program, &mut new_of);
        conditions.push(Condition {
            value,
            text: text(f, c, &front.program),
        });
    }
    Ok((
        Conditions {
            program,
            conditions,
        },
        nodes,
    ))
}

fn copy(
    f: &Function,
    h: Handle<Expr>,
    out: &mut Arena<Expr>,
    new_of: &mut Vec<Option<Handle<Expr>>>,
) -> Handle<Expr> {
    if let Some(n) = new_of[h.index()] {
        return n;
    }
    // Conditions are shallow (the language bounds expression height), so recursion is safe.
    let e = f.exprs[h];
    let ops: Vec<Handle<Expr>> = e.operands().collect();
    for o in ops {
        copy(f, o, out, new_of);
    }
    let e = e.map_operands(|o| new_of[o.index()].unwrap_or(o));
    let n = out.append(e);
    new_of[h.index()] = Some(n);
    n
}

/// A condition as text with hyper names, literals on the right where the op allows it.
fn text(f: &Function, h: Handle<Expr>, program: &Program) -> String {
    let paren = |x: Handle<Expr>| {
        let t = text(f, x, program);
        match f.exprs[x] {
            Expr::Binary(op, ..) if !matches!(op, BinaryOp::Min | BinaryOp::Max) => {
                format!("({t})")
            }
            Expr::Select(..) => format!("({t})"),
            _ => t,
        }
    };
    match f.exprs[h] {
        Expr::Const(c) => {
            let s = fmt_num(c);
            s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
        }
        Expr::Bool(b) => b.to_string(),
        Expr::Hyper(id) => program
            .hypers
            .get(id.index())
            .map_or_else(|| "?".into(), |x| x.name.clone()),
        Expr::Unary(UnaryOp::Neg, a) => format!("-{}", paren(a)),
        Expr::Unary(UnaryOp::Not, a) => format!("!{}", paren(a)),
        Expr::Unary(op, a) => format!("{}({})", op.name(), text(f, a, program)),
        Expr::Binary(op, a, b) => {
            let is_lit = |x: Handle<Expr>| matches!(f.exprs[x], Expr::Const(_));
            let (op, a, b) = if is_lit(a) && !is_lit(b) {
                match op {
                    BinaryOp::Lt => (BinaryOp::Gt, b, a),
                    BinaryOp::Le => (BinaryOp::Ge, b, a),
                    BinaryOp::Gt => (BinaryOp::Lt, b, a),
                    BinaryOp::Ge => (BinaryOp::Le, b, a),
                    BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Add | BinaryOp::Mul => (op, b, a),
                    _ => (op, a, b),
                }
            } else {
                (op, a, b)
            };
            if matches!(op, BinaryOp::Min | BinaryOp::Max) {
                return format!(
                    "{}({}, {})",
                    op.symbol(),
                    text(f, a, program),
                    text(f, b, program)
                );
            }
            let sym = op.symbol();
            format!("{} {sym} {}", paren(a), paren(b))
        }
        Expr::Select(c, a, b) => format!("{} ? {} : {}", paren(c), paren(a), paren(b)),
        _ => "?".into(),
    }
}
