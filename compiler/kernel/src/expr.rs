//! Expressions: the nodes of every DAG in the IR.
//!
//! One `Expr` type serves three programs, each of which allows only some leaves:
//! - the compiler's whole-rule IR: any leaf but `Uniform`;
//! - the host program (uniform, f64, once per step): `Const`, `Bool`, `Hyper`, `Step`, `Scalar`,
//!   `Reduced`;
//! - the kernel body (per element, f32): `Const`, `Bool`, `Uniform`, `Load`.
//!
//! Operands always come before their users in an arena, so evaluating an arena in order is a
//! valid schedule.

use crate::arena::Handle;
use crate::op::{BinaryOp, UnaryOp};
use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u32);
        impl $name {
            /// The position in its declaration list.
            pub fn index(self) -> usize {
                self.0 as usize
            }
            /// The id of position `i`.
            pub fn new(i: usize) -> Self {
                $name(u32::try_from(i).unwrap_or(u32::MAX))
            }
        }
    };
}

id_type!(
    /// A hyperparameter, by position in the rule's `hyper` declarations.
    HyperId
);
id_type!(
    /// A compile-time flag, by position in the rule's `flag` declarations.
    FlagId
);
id_type!(
    /// A per-element state, by position in the state list of its program.
    StateId
);
id_type!(
    /// A scalar state (one number per parameter tensor), by position.
    ScalarId
);
id_type!(
    /// A kernel argument computed by the host program.
    UniformId
);
id_type!(
    /// A reduction of a kernel, by position in [`crate::Kernel::reductions`].
    ReductionId
);
id_type!(
    /// A `[rows]` or `[cols]` value of a stage, by position in the stage's list of [`crate::VectorProgram::stages`].
    VectorId
);

/// A per-element buffer the kernel reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// The parameter `p`.
    Param,
    /// The gradient `g` (read only).
    Grad,
    /// A per-element state.
    State(StateId),
}

/// A node of an expression DAG.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expr {
    /// A number literal.
    Const(#[serde(with = "crate::num")] f64),
    /// A boolean literal.
    Bool(bool),
    /// A hyperparameter's current value (uniform).
    Hyper(HyperId),
    /// A flag's value; removed by flag specialization before any backend sees it.
    Flag(FlagId),
    /// The step number `t`, starting at 1 (uniform).
    Step,
    /// A scalar state's value at the start of the step (uniform).
    Scalar(ScalarId),
    /// A kernel argument (kernel bodies only).
    Uniform(UniformId),
    /// The finalized value of a reduction (host programs only, f64; uniform).
    Reduced(ReductionId),
    /// The element of a buffer, as it was when the step began (per element). In the host vector
    /// program ([`crate::VectorProgram`]), the row (column) of a `[rows]` (`[cols]`) state.
    Load(Slot),
    /// A `[rows]` or `[cols]` value of the stage (kernel bodies only): node
    /// `VectorProgram::stages[stage][i]` at this element's row or column.
    Vector(VectorId),
    /// The mean of a `[rows]` (`[cols]`) value over the rows (columns) of each matrix, the same for
    /// every row (column) of that matrix (host vector programs and the whole-rule IR only).
    VecMean(Handle<Expr>),
    /// A unary op.
    Unary(UnaryOp, Handle<Expr>),
    /// A binary op.
    Binary(BinaryOp, Handle<Expr>, Handle<Expr>),
    /// `cond ? a : b`.
    Select(Handle<Expr>, Handle<Expr>, Handle<Expr>),
}

impl Expr {
    /// The operands of this node.
    pub fn operands(&self) -> impl Iterator<Item = Handle<Expr>> {
        let (a, b, c) = match *self {
            Expr::Unary(_, a) => (Some(a), None, None),
            Expr::Binary(_, a, b) => (Some(a), Some(b), None),
            Expr::Select(c, a, b) => (Some(c), Some(a), Some(b)),
            Expr::VecMean(a) => (Some(a), None, None),
            _ => (None, None, None),
        };
        a.into_iter().chain(b).chain(c)
    }

    /// This node with each operand replaced by `f(operand)`.
    pub fn map_operands(&self, mut f: impl FnMut(Handle<Expr>) -> Handle<Expr>) -> Expr {
        match *self {
            Expr::Unary(op, a) => Expr::Unary(op, f(a)),
            Expr::Binary(op, a, b) => {
                let a = f(a);
                Expr::Binary(op, a, f(b))
            }
            Expr::Select(c, a, b) => {
                let c = f(c);
                let a = f(a);
                Expr::Select(c, a, f(b))
            }
            Expr::VecMean(a) => Expr::VecMean(f(a)),
            other => other,
        }
    }

    /// Whether the node is a leaf that is the same for every element.
    pub fn is_uniform_leaf(&self) -> bool {
        matches!(
            self,
            Expr::Const(_)
                | Expr::Bool(_)
                | Expr::Hyper(_)
                | Expr::Flag(_)
                | Expr::Step
                | Expr::Scalar(_)
                | Expr::Uniform(_)
                | Expr::Reduced(_)
        )
    }
}
