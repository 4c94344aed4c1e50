//! Flag specialization: replaces each `Flag(i)` leaf with `Bool(flags[i])`.

use crate::ir::{rebuild, Builder, Function, MATRIX_FLAG};
use optc_kernel::Expr;

/// `f` with every flag replaced by its value. A flag missing from `flags` counts as false, and
/// so does `matrix`.
pub fn specialize(f: &Function, flags: &[bool]) -> Function {
    specialize_rank(f, flags, false)
}

/// Like [`specialize`], with the value of the built-in `matrix` condition.
pub fn specialize_rank(f: &Function, flags: &[bool], matrix: bool) -> Function {
    rebuild(f, Builder::default(), |b, _, e, span| match e {
        Expr::Flag(MATRIX_FLAG) => b.add(Expr::Bool(matrix), span),
        Expr::Flag(i) => b.add(
            Expr::Bool(flags.get(i.index()).copied().unwrap_or(false)),
            span,
        ),
        other => b.add(other, span),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Span;
    use optc_kernel::{FlagId, Slot};

    #[test]
    fn flags_become_constants() {
        let mut b = Builder::default();
        let fl = b.add(Expr::Flag(FlagId(0)), Span::default());
        let p = b.add(Expr::Load(Slot::Param), Span::default());
        let g = b.add(Expr::Load(Slot::Grad), Span::default());
        let s = b.add(Expr::Select(fl, g, p), Span::default());
        let mut f = b.func;
        f.stores.push((Slot::Param, s));
        let on = specialize(&f, &[true]);
        assert!(on.exprs.iter().any(|(_, e)| *e == Expr::Bool(true)));
        assert!(!on.exprs.iter().any(|(_, e)| matches!(e, Expr::Flag(_))));
        let off = specialize(&f, &[false]);
        assert!(off.exprs.iter().any(|(_, e)| *e == Expr::Bool(false)));
    }
}
