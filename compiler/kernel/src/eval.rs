//! Evaluation of an expression arena on one lane of values.

use crate::arena::{Arena, Handle};
use crate::expr::Expr;
use crate::op::{select, Real};

/// Evaluates every node of `arena` in order into `values` (cleared first), resolving leaves with
/// `leaf`. Returns `Err` with the offending node when an operand refers forward or out of range, or
/// when `leaf` rejects a leaf.
pub fn eval_arena<R: Real, E>(
    arena: &Arena<Expr>,
    values: &mut Vec<R>,
    mut leaf: impl FnMut(&Expr) -> Result<R, E>,
) -> Result<(), EvalError<E>> {
    values.clear();
    values.reserve(arena.len());
    for (h, e) in arena.iter() {
        let get = |x: Handle<Expr>| -> Result<R, EvalError<E>> {
            if x.index() < h.index() {
                Ok(values[x.index()])
            } else {
                Err(EvalError::Order(h.index()))
            }
        };
        let v = match *e {
            Expr::Const(c) => R::from_f64(c),
            Expr::Bool(b) => R::from_f64(if b { 1.0 } else { 0.0 }),
            Expr::Unary(op, a) => R::unary(op, get(a)?),
            Expr::Binary(op, a, b) => R::binary(op, get(a)?, get(b)?),
            Expr::Select(c, a, b) => select(get(c)?, get(a)?, get(b)?),
            ref other => leaf(other).map_err(EvalError::Leaf)?,
        };
        values.push(v);
    }
    Ok(())
}

/// Why an arena could not be evaluated.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalError<E> {
    /// Node `.0` names an operand that is not before it.
    Order(usize),
    /// The leaf resolver refused a leaf.
    Leaf(E),
}
