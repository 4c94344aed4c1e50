//! Uniformity classification: each node is uniform (the same for every element: literals, hypers,
//! flags, `t`, scalar states and what is computed from them only) or per-element (it reads `p`,
//! `g` or a state).

use crate::check::Uniformity;
use crate::ir::Function;
use optc_kernel::Expr;

/// The uniformity of every node of `f`, indexed like `f.exprs`.
pub fn classify(f: &Function) -> Vec<Uniformity> {
    let mut out: Vec<Uniformity> = Vec::with_capacity(f.exprs.len());
    for (_, e) in f.exprs.iter() {
        let u = match e {
            Expr::Load(_) => Uniformity::PerElement,
            e => e
                .operands()
                .map(|o| out[o.index()])
                .fold(Uniformity::Uniform, Uniformity::join),
        };
        out.push(u);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Span;
    use crate::ir::Builder;
    use optc_kernel::{BinaryOp, HyperId, Slot};

    #[test]
    fn loads_make_values_per_element() {
        let s = Span::default();
        let mut b = Builder::default();
        let lr = b.add(Expr::Hyper(HyperId(0)), s);
        let t = b.add(Expr::Step, s);
        let u = b.add(Expr::Binary(BinaryOp::Div, lr, t), s);
        let g = b.add(Expr::Load(Slot::Grad), s);
        let v = b.add(Expr::Binary(BinaryOp::Mul, u, g), s);
        let c = classify(&b.func);
        assert_eq!(c[u.index()], Uniformity::Uniform);
        assert_eq!(c[g.index()], Uniformity::PerElement);
        assert_eq!(c[v.index()], Uniformity::PerElement);
    }
}
