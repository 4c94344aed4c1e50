//! The typing rules of matrix values (`docs/language.md`, "Matrix values").
//!
//! A per-element value is, for a matrix operation, the tensor as its wide `m × n` matrix
//! (`optc_kernel::matrix`). `a @ b` and `transpose(x)` make matrices; matrices add and subtract
//! when their shapes agree, scale by uniform numbers, and an `m × n` matrix is usable per element
//! (it has the tensor's shape). Everything else with a matrix operand is an error with a code:
//! E0801 (misuse: a product of a per-element value with a matrix, a matrix where a number is
//! needed), E0802 (shapes that do not fit).

use super::{Ty, Uniformity};
use crate::diag::{Diagnostic, Span};
use optc_kernel::matrix::Dim;
use optc_kernel::BinaryOp;

/// An operand: its type, uniformity and place.
pub(super) type Operand = (Ty, Uniformity, Span);

const WIDE: Ty = Ty::Matrix(Dim::M, Dim::N);

/// Whether `t` is a matrix.
pub(super) fn is_matrix(t: Ty) -> bool {
    matches!(t, Ty::Matrix(..))
}

fn shape(t: Ty) -> Option<(Dim, Dim)> {
    match t {
        Ty::Matrix(a, b) => Some((a, b)),
        _ => None,
    }
}

fn misuse(msg: String, at: Span, label: &str, hint: &str) -> Diagnostic {
    Diagnostic::error("E0801", msg, at, label.to_string()).hint(hint.to_string())
}

/// The matrix an operand of `@`, `transpose` or `round_bf16` stands for: a matrix, or a
/// per-element number as the tensor's `m × n` matrix.
pub(super) fn lift(what: &str, (t, u, span): Operand) -> Result<(Dim, Dim), Diagnostic> {
    match t {
        Ty::Matrix(a, b) => Ok((a, b)),
        Ty::Num if u == Uniformity::PerElement => Ok((Dim::M, Dim::N)),
        Ty::Num => Err(misuse(
            format!("{what} of a uniform number"),
            span,
            "the same for every element",
            "a matrix operation takes the tensor's values (`g`, `p`, a state, or a value computed from them) or a matrix",
        )),
        Ty::Bool => Err(Diagnostic::error(
            "E0403",
            format!("{what} needs a matrix, found a boolean"),
            span,
            "this is a boolean",
        )),
    }
}

/// `a @ b`.
pub(super) fn matmul(a: Operand, b: Operand) -> Result<Ty, Diagnostic> {
    let sa = lift("`@`", a)?;
    let sb = lift("`@`", b)?;
    if sa.1 != sb.0 {
        return Err(Diagnostic::error(
            "E0802",
            format!(
                "shape mismatch: {} @ {}",
                Ty::Matrix(sa.0, sa.1).name(),
                Ty::Matrix(sb.0, sb.1).name()
            ),
            a.2.to(b.2),
            format!("inner dimensions `{}` and `{}` differ", sa.1.name(), sb.0.name()),
        )
        .hint("a per-element value is the tensor's m×n matrix; transpose one side, as in `x @ transpose(x)`"));
    }
    Ok(Ty::Matrix(sa.0, sb.1))
}

/// A built-in function call with a matrix argument, or a matrix function: `Some` with its type
/// or diagnostic; `None` when the call is an ordinary one.
pub(super) fn call(name: &str, args: &[Operand], span: Span) -> Option<Result<Ty, Diagnostic>> {
    match name {
        "round_bf16"
            if args
                .first()
                .is_some_and(|a| a.0 == Ty::Num && a.1 == Uniformity::Uniform) =>
        {
            Some(Ok(Ty::Num))
        }
        "norm" | "sum" | "mean" | "amax" | "dot"
            if args.iter().all(|a| !is_matrix(a.0) || a.0 == WIDE) =>
        {
            // An m×n matrix has the tensor's shape: reduced like its per-element values.
            None
        }
        "transpose" | "round_bf16" => {
            let arg = *args.first()?;
            Some(lift(&format!("`{name}`"), arg).map(|(r, c)| {
                if name == "transpose" {
                    Ty::Matrix(c, r)
                } else {
                    Ty::Matrix(r, c)
                }
            }))
        }
        _ => {
            let m = args.iter().find(|a| is_matrix(a.0))?;
            let hint = if matches!(
                name,
                "norm" | "sum" | "mean" | "dot" | "amax" | "global_norm"
            ) {
                "reductions take per-element values; `norm(x)` of the tensor's values is its Frobenius norm"
            } else {
                "matrices support `@`, `transpose`, `round_bf16`, `+` and `-` of one shape, and scaling by a uniform number"
            };
            let _ = span;
            Some(Err(misuse(
                format!("`{name}` of a matrix"),
                m.2,
                &format!("this is {}", m.0.name()),
                hint,
            )))
        }
    }
}

/// A binary operator with a matrix operand: `Some` with its type and uniformity or diagnostic;
/// `None` when neither operand is a matrix.
pub(super) fn binary(
    op: BinaryOp,
    a: Operand,
    b: Operand,
    span: Span,
) -> Option<Result<(Ty, Uniformity), Diagnostic>> {
    if !is_matrix(a.0) && !is_matrix(b.0) {
        return None;
    }
    let per = Uniformity::PerElement;
    let scalar = |x: Operand| x.0 == Ty::Num && x.1 == Uniformity::Uniform;
    let elems = |x: Operand| x.0 == Ty::Num && x.1 == per;
    Some(match op {
        BinaryOp::Add | BinaryOp::Sub => {
            let sym = if op == BinaryOp::Add { "+" } else { "-" };
            match (shape(a.0), shape(b.0)) {
                (Some(x), Some(y)) if x == y => Ok((a.0, per)),
                (Some(_), Some(_)) => Err(Diagnostic::error(
                    "E0802",
                    format!("shape mismatch: {} {sym} {}", a.0.name(), b.0.name()),
                    span,
                    "the shapes differ",
                )
                .hint("`+` and `-` take two matrices of one shape")),
                _ => {
                    let (m, other) = if is_matrix(a.0) { (a, b) } else { (b, a) };
                    if elems(other) && m.0 == WIDE {
                        // An m×n matrix is the tensor's shape: used per element.
                        Ok((Ty::Num, per))
                    } else if elems(other) {
                        Err(Diagnostic::error(
                            "E0802",
                            format!("shape mismatch: a per-element value {sym} {}", m.0.name()),
                            m.2,
                            format!("this is {}, the tensor is m×n", m.0.name()),
                        )
                        .hint(
                            "only an m×n matrix (the tensor's own shape) can be used per element",
                        ))
                    } else {
                        Err(misuse(
                            format!("`{sym}` of a matrix and {}", other.0.name()),
                            other.2,
                            &format!("this is {}", other.0.name()),
                            "a matrix adds to a matrix of its shape, or to the tensor's per-element values when it is m×n",
                        ))
                    }
                }
            }
        }
        BinaryOp::Mul => {
            let (m, other) = if is_matrix(a.0) { (a, b) } else { (b, a) };
            if scalar(other) {
                Ok((m.0, per))
            } else {
                Err(misuse(
                    format!(
                        "a product of {} with a matrix",
                        if elems(other) {
                            "a per-element value"
                        } else {
                            other.0.name()
                        }
                    ),
                    span,
                    "`*` with a matrix",
                    "`*` scales a matrix by a uniform number; `@` is the matrix product",
                ))
            }
        }
        BinaryOp::Div if is_matrix(a.0) && scalar(b) => Ok((a.0, per)),
        _ => {
            let m = if is_matrix(a.0) { a } else { b };
            Err(misuse(
                format!("this operator does not apply to {}", m.0.name()),
                m.2,
                "a matrix",
                "matrices support `@`, `transpose`, `round_bf16`, `+` and `-` of one shape, and scaling by a uniform number",
            ))
        }
    })
}

/// A value stored in `p`, a state or a scalar, or used where a per-element number is needed:
/// an `m × n` matrix is (it has the tensor's shape); other matrices are E0802.
pub(super) fn as_elements((t, _, span): Operand) -> Result<(), Diagnostic> {
    match t {
        Ty::Matrix(Dim::M, Dim::N) | Ty::Num | Ty::Bool => Ok(()),
        other => Err(Diagnostic::error(
            "E0802",
            format!(
                "shape mismatch: {} where the tensor's values go",
                other.name()
            ),
            span,
            format!("this is {}, the tensor is m×n", other.name()),
        )
        .hint("only an m×n matrix (the tensor's own shape) can be stored or used per element")),
    }
}
