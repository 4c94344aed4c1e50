//! The operations of the IR and their meaning.
//!
//! This module is the single definition of what every op computes. The reference interpreter
//! evaluates these functions directly; every backend must agree with them within the error budget
//! stated in `docs/language.md`. Booleans are represented as `1.0` (true) and `0.0` (false); any
//! non-zero value counts as true.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An operation with one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnaryOp {
    /// `-x`.
    Neg,
    /// `!b`, on booleans.
    Not,
    /// `sqrt(x)`, correctly rounded.
    Sqrt,
    /// `rsqrt(x)`: `1 / sqrt(x)`, each step correctly rounded.
    Rsqrt,
    /// `abs(x)`.
    Abs,
    /// `sign(x)`: `1` for positive, `-1` for negative, and `x` itself for `±0` and NaN.
    Sign,
    /// `exp(x)`.
    Exp,
    /// `log(x)`, the natural logarithm.
    Log,
    /// `round_bf16(x)`: `x` rounded to f32, then to the nearest bfloat16 (ties to even), as
    /// torch's `.to(torch.bfloat16)` of an f32 value. Host programs only (`Kernel::validate`
    /// refuses it in a body); matrices round with `MatExpr::RoundBf16`.
    RoundBf16,
}

/// An operation with two operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// `a ^ b`: `powf`.
    Pow,
    /// `min(a, b)`: NaN if either is NaN; `-0 < +0`.
    Min,
    /// `max(a, b)`: NaN if either is NaN; `-0 < +0`.
    Max,
    /// `a < b`.
    Lt,
    /// `a <= b`.
    Le,
    /// `a > b`.
    Gt,
    /// `a >= b`.
    Ge,
    /// `a == b`.
    Eq,
    /// `a != b`.
    Ne,
    /// `a && b`, on booleans.
    And,
    /// `a || b`, on booleans.
    Or,
}

impl UnaryOp {
    /// The op's name as the IR text and the language spell it.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Not => "not",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Abs => "abs",
            UnaryOp::Sign => "sign",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::RoundBf16 => "round_bf16",
        }
    }
    /// Whether the result is a boolean.
    pub fn is_logical(self) -> bool {
        matches!(self, UnaryOp::Not)
    }
}

impl BinaryOp {
    /// The op's name in IR text.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Min => "min",
            BinaryOp::Max => "max",
            BinaryOp::Lt => "lt",
            BinaryOp::Le => "le",
            BinaryOp::Gt => "gt",
            BinaryOp::Ge => "ge",
            BinaryOp::Eq => "eq",
            BinaryOp::Ne => "ne",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
        }
    }
    /// The op as `.opt` source spells it: the infix operator (`+`, `<=`, `&&`, ...), or the
    /// function name for `min` and `max`.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Pow => "^",
            BinaryOp::Min => "min",
            BinaryOp::Max => "max",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::And => "&&",
            BinaryOp::Or => "||",
        }
    }
    /// Whether the op compares two numbers and gives a boolean.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge | BinaryOp::Eq | BinaryOp::Ne
        )
    }
    /// Whether the op takes and gives booleans.
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or)
    }
    /// Whether `a op b == b op a` exactly (used by CSE to canonicalize operand order).
    pub fn is_commutative(self) -> bool {
        matches!(
            self,
            BinaryOp::Add
                | BinaryOp::Mul
                | BinaryOp::Min
                | BinaryOp::Max
                | BinaryOp::Eq
                | BinaryOp::Ne
                | BinaryOp::And
                | BinaryOp::Or
        )
    }
}

impl fmt::Display for UnaryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
impl fmt::Display for BinaryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The floating-point types the ops are defined on: `f32` (kernels) and `f64` (host program, and
/// the interpreter's f64 mode).
pub trait Real: Copy + PartialOrd + fmt::Debug + Send + Sync + 'static {
    /// Converts from f64, rounding to nearest.
    fn from_f64(x: f64) -> Self;
    /// Converts to f64 (exact).
    fn to_f64(self) -> f64;
    /// The op on this type.
    fn unary(op: UnaryOp, x: Self) -> Self;
    /// The op on this type.
    fn binary(op: BinaryOp, a: Self, b: Self) -> Self;
}

fn truth<R: Real>(b: bool) -> R {
    R::from_f64(if b { 1.0 } else { 0.0 })
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn unary(op: UnaryOp, x: Self) -> Self {
                match op {
                    UnaryOp::Neg => -x,
                    UnaryOp::Not => truth(x == 0.0),
                    UnaryOp::Sqrt => x.sqrt(),
                    UnaryOp::Rsqrt => 1.0 / x.sqrt(),
                    UnaryOp::Abs => x.abs(),
                    UnaryOp::Sign => {
                        if x > 0.0 {
                            1.0
                        } else if x < 0.0 {
                            -1.0
                        } else {
                            x
                        }
                    }
                    UnaryOp::Exp => x.exp(),
                    UnaryOp::Log => x.ln(),
                    UnaryOp::RoundBf16 => crate::matrix::round_bf16(x as f32) as $t,
                }
            }
            fn binary(op: BinaryOp, a: Self, b: Self) -> Self {
                match op {
                    BinaryOp::Add => a + b,
                    BinaryOp::Sub => a - b,
                    BinaryOp::Mul => a * b,
                    BinaryOp::Div => a / b,
                    BinaryOp::Pow => a.powf(b),
                    BinaryOp::Min => {
                        if a.is_nan() || b.is_nan() {
                            <$t>::NAN
                        } else if a < b || (a == b && a.is_sign_negative()) {
                            a
                        } else {
                            b
                        }
                    }
                    BinaryOp::Max => {
                        if a.is_nan() || b.is_nan() {
                            <$t>::NAN
                        } else if a > b || (a == b && a.is_sign_positive()) {
                            a
                        } else {
                            b
                        }
                    }
                    BinaryOp::Lt => truth(a < b),
                    BinaryOp::Le => truth(a <= b),
                    BinaryOp::Gt => truth(a > b),
                    BinaryOp::Ge => truth(a >= b),
                    BinaryOp::Eq => truth(a == b),
                    BinaryOp::Ne => truth(a != b),
                    BinaryOp::And => truth(a != 0.0 && b != 0.0),
                    BinaryOp::Or => truth(a != 0.0 || b != 0.0),
                }
            }
        }
    };
}
impl_real!(f32);
impl_real!(f64);

/// `cond ? a : b` on this type: any non-zero `cond` selects `a`.
pub fn select<R: Real>(cond: R, a: R, b: R) -> R {
    if cond.to_f64() != 0.0 {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_propagate_nan_and_order_zeros() {
        assert!(f32::binary(BinaryOp::Max, f32::NAN, 1.0).is_nan());
        assert!(f32::binary(BinaryOp::Min, 1.0, f32::NAN).is_nan());
        assert!(f32::binary(BinaryOp::Max, -0.0, 0.0).is_sign_positive());
        assert!(f32::binary(BinaryOp::Max, 0.0, -0.0).is_sign_positive());
        assert!(f32::binary(BinaryOp::Min, 0.0, -0.0).is_sign_negative());
        assert_eq!(f64::binary(BinaryOp::Max, 2.0, 3.0), 3.0);
    }

    #[test]
    fn sign_keeps_zero_and_nan() {
        assert_eq!(f32::unary(UnaryOp::Sign, -3.0), -1.0);
        assert_eq!(f32::unary(UnaryOp::Sign, 0.5), 1.0);
        assert!(f32::unary(UnaryOp::Sign, -0.0).is_sign_negative());
        assert!(f32::unary(UnaryOp::Sign, f32::NAN).is_nan());
    }

    #[test]
    fn booleans_are_one_and_zero() {
        assert_eq!(f64::binary(BinaryOp::Lt, 1.0, 2.0), 1.0);
        assert_eq!(f64::binary(BinaryOp::And, 1.0, 0.0), 0.0);
        assert_eq!(f64::unary(UnaryOp::Not, 0.0), 1.0);
        assert_eq!(select(0.0f32, 1.0, 2.0), 2.0);
    }
}
