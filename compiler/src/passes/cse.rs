//! Common-subexpression elimination: rebuilds the function with hash-consing, so structurally
//! identical nodes (commutative operands in canonical order) become one.

use crate::ir::{rebuild, Builder, Function};

/// `f` with identical nodes shared.
pub fn cse(f: &Function) -> Function {
    rebuild(f, Builder::sharing(), |b, _, e, span| b.add(e, span))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Span;
    use optc_kernel::{BinaryOp, Expr, Slot};

    #[test]
    fn shares_identical_and_commuted_nodes() {
        let mut b = Builder::default();
        let s = Span::default();
        let p = b.add(Expr::Load(Slot::Param), s);
        let g = b.add(Expr::Load(Slot::Grad), s);
        let x = b.add(Expr::Binary(BinaryOp::Mul, p, g), s);
        let g2 = b.add(Expr::Load(Slot::Grad), s);
        let y = b.add(Expr::Binary(BinaryOp::Mul, g2, p), s);
        let z = b.add(Expr::Binary(BinaryOp::Add, x, y), s);
        let mut f = b.func;
        f.stores.push((Slot::Param, z));
        let out = cse(&f);
        assert_eq!(out.exprs.len(), 4, "{:?}", out.exprs);
        // Non-commutative ops keep their order.
        let mut b = Builder::default();
        let p = b.add(Expr::Load(Slot::Param), s);
        let g = b.add(Expr::Load(Slot::Grad), s);
        b.add(Expr::Binary(BinaryOp::Sub, p, g), s);
        b.add(Expr::Binary(BinaryOp::Sub, g, p), s);
        assert_eq!(cse(&b.func).exprs.len(), 4);
    }
}
