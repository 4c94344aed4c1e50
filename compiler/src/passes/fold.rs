//! Constant folding and exact algebraic identities.
//!
//! A node whose operands are all literals is evaluated (in f64, the host's precision) and becomes
//! a literal. Selects on a literal condition pick their branch, which is how flag-specialized
//! branches disappear. Identities are applied only where they are exact for every input,
//! NaN, infinities and signed zeros included: `x * 1`, `x / 1`, `x - 0`, `--x`, `!!b`,
//! `x ^ 0 = 1`, `x ^ 1 = x`, and `x ^ 2`, `x ^ 3`, `x ^ -1` as products and a quotient (which
//! round at least as well as `powf`). `x + 0` is not folded: it turns `-0` into `+0`.

use crate::ir::{rebuild, Builder, Function};
use optc_kernel::{BinaryOp, Expr, Handle, Real, UnaryOp};

fn literal(b: &Builder, h: Handle<Expr>) -> Option<f64> {
    match b.get(h) {
        Expr::Const(c) => Some(c),
        Expr::Bool(v) => Some(if v { 1.0 } else { 0.0 }),
        _ => None,
    }
}

fn is_bool(b: &Builder, h: Handle<Expr>) -> bool {
    match b.get(h) {
        Expr::Bool(_) => true,
        Expr::Unary(op, _) => op.is_logical(),
        Expr::Binary(op, _, _) => op.is_comparison() || op.is_logical(),
        Expr::Select(_, a, _) => is_bool(b, a),
        _ => false,
    }
}

/// `f` with literals folded and identities applied.
pub fn fold(f: &Function) -> Function {
    rebuild(f, Builder::default(), |b, _, e, span| {
        let simplified = simplify(b, e);
        match simplified {
            Simplified::To(h) => h,
            Simplified::Node(e) => b.add(e, span),
            Simplified::Value(v, boolean) => {
                let e = if boolean {
                    Expr::Bool(v != 0.0)
                } else {
                    Expr::Const(v)
                };
                b.add(e, span)
            }
        }
    })
}

enum Simplified {
    To(Handle<Expr>),
    Node(Expr),
    Value(f64, bool),
}

fn simplify(b: &mut Builder, e: Expr) -> Simplified {
    use Simplified::*;
    match e {
        Expr::Unary(op, a) => {
            if let Some(x) = literal(b, a) {
                return Value(f64::unary(op, x), op.is_logical());
            }
            match (op, b.get(a)) {
                (UnaryOp::Neg, Expr::Unary(UnaryOp::Neg, x))
                | (UnaryOp::Not, Expr::Unary(UnaryOp::Not, x)) => To(x),
                _ => Node(e),
            }
        }
        Expr::Binary(op, x, y) => {
            let (lx, ly) = (literal(b, x), literal(b, y));
            if let (Some(u), Some(v)) = (lx, ly) {
                return Value(f64::binary(op, u, v), op.is_comparison() || op.is_logical());
            }
            match (op, lx, ly) {
                (BinaryOp::Mul, Some(1.0), _) => To(y),
                (BinaryOp::Mul, _, Some(1.0)) => To(x),
                (BinaryOp::Div, _, Some(1.0)) => To(x),
                (BinaryOp::Sub, _, Some(0.0)) => To(x),
                (BinaryOp::And, Some(c), _) => {
                    if c != 0.0 {
                        To(y)
                    } else {
                        Value(0.0, true)
                    }
                }
                (BinaryOp::And, _, Some(c)) => {
                    if c != 0.0 {
                        To(x)
                    } else {
                        Value(0.0, true)
                    }
                }
                (BinaryOp::Or, Some(c), _) => {
                    if c != 0.0 {
                        Value(1.0, true)
                    } else {
                        To(y)
                    }
                }
                (BinaryOp::Or, _, Some(c)) => {
                    if c != 0.0 {
                        Value(1.0, true)
                    } else {
                        To(x)
                    }
                }
                (BinaryOp::Pow, _, Some(0.0)) => Value(1.0, false),
                (BinaryOp::Pow, _, Some(1.0)) => To(x),
                (BinaryOp::Pow, _, Some(2.0)) => Node(Expr::Binary(BinaryOp::Mul, x, x)),
                (BinaryOp::Pow, _, Some(3.0)) => {
                    let sq = b.add(Expr::Binary(BinaryOp::Mul, x, x), Default::default());
                    Node(Expr::Binary(BinaryOp::Mul, sq, x))
                }
                (BinaryOp::Pow, _, Some(-1.0)) => {
                    let one = b.add(Expr::Const(1.0), Default::default());
                    Node(Expr::Binary(BinaryOp::Div, one, x))
                }
                _ => Node(e),
            }
        }
        Expr::Select(c, x, y) => {
            if let Some(v) = literal(b, c) {
                return To(if v != 0.0 { x } else { y });
            }
            if x == y {
                return To(x);
            }
            if let (Some(u), Some(v)) = (literal(b, x), literal(b, y)) {
                if u.to_bits() == v.to_bits() && is_bool(b, x) == is_bool(b, y) {
                    return To(x);
                }
            }
            Node(e)
        }
        other => Node(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Span;
    use optc_kernel::Slot;

    fn func(build: impl FnOnce(&mut Builder) -> Handle<Expr>) -> Function {
        let mut b = Builder::default();
        let h = build(&mut b);
        let mut f = b.func;
        f.stores.push((Slot::Param, h));
        f
    }

    fn stored(f: &Function) -> Expr {
        f.exprs[f.stores[0].1]
    }

    #[test]
    fn folds_literals() {
        let s = Span::default();
        let f = fold(&func(|b| {
            let one = b.add(Expr::Const(1.0), s);
            let beta = b.add(Expr::Const(0.9), s);
            b.add(Expr::Binary(BinaryOp::Sub, one, beta), s)
        }));
        assert_eq!(stored(&f), Expr::Const(1.0 - 0.9));
    }

    #[test]
    fn select_on_literal_picks_branch() {
        let s = Span::default();
        let f = fold(&func(|b| {
            let c = b.add(Expr::Bool(false), s);
            let p = b.add(Expr::Load(Slot::Param), s);
            let g = b.add(Expr::Load(Slot::Grad), s);
            b.add(Expr::Select(c, p, g), s)
        }));
        assert_eq!(stored(&f), Expr::Load(Slot::Grad));
    }

    #[test]
    fn exact_identities_only() {
        let s = Span::default();
        let f = fold(&func(|b| {
            let g = b.add(Expr::Load(Slot::Grad), s);
            let one = b.add(Expr::Const(1.0), s);
            let m = b.add(Expr::Binary(BinaryOp::Mul, g, one), s);
            let two = b.add(Expr::Const(2.0), s);
            b.add(Expr::Binary(BinaryOp::Pow, m, two), s)
        }));
        let g = f
            .exprs
            .iter()
            .find(|(_, e)| **e == Expr::Load(Slot::Grad))
            .map(|(h, _)| h);
        assert_eq!(
            stored(&f),
            Expr::Binary(BinaryOp::Mul, g.unwrap(), g.unwrap())
        );
        // x + 0 stays: it would turn -0 into +0.
        let f = fold(&func(|b| {
            let g = b.add(Expr::Load(Slot::Grad), s);
            let z = b.add(Expr::Const(0.0), s);
            b.add(Expr::Binary(BinaryOp::Add, g, z), s)
        }));
        assert!(matches!(stored(&f), Expr::Binary(BinaryOp::Add, ..)));
    }
}
