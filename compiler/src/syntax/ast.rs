//! The abstract syntax tree of a rule file, with a span on every node.

use crate::diag::Span;
use optc_kernel::{BinaryOp, UnaryOp};

/// A name and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where.
    pub span: Span,
}

/// A whole rule file.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    /// The `///` lines before `optimizer`, without the slashes.
    pub doc: String,
    /// `optimizer NAME`.
    pub name: Ident,
    /// Declarations in source order.
    pub decls: Vec<Decl>,
    /// The `update { }` block.
    pub update: Block,
}

/// The kind of a declaration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclKind {
    /// `hyper NAME = number`.
    Hyper,
    /// `flag NAME = bool`.
    Flag,
    /// `state NAME = init [if FLAGS]`.
    State,
    /// `scalar NAME = init`.
    Scalar,
}

impl DeclKind {
    /// The keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            DeclKind::Hyper => "hyper",
            DeclKind::Flag => "flag",
            DeclKind::State => "state",
            DeclKind::Scalar => "scalar",
        }
    }
}

/// A `hyper`, `flag`, `state` or `scalar` declaration.
#[derive(Clone, Debug, PartialEq)]
pub struct Decl {
    /// Which kind.
    pub kind: DeclKind,
    /// The declared name.
    pub name: Ident,
    /// The default or initial value.
    pub value: Expr,
    /// For states: the flag condition under which the state exists.
    pub condition: Option<Expr>,
    /// For states: the name torch gives it (`as exp_avg`), used in torch-convention state files.
    pub torch_name: Option<Ident>,
    /// For states: the shape written after the name (`state v[rows] = 0`): `rows` or `cols`
    /// (checked: E0207); `None` for a per-element state.
    pub shape: Option<Ident>,
    /// The `///` lines before the declaration.
    pub doc: String,
    /// The whole declaration.
    pub span: Span,
}

/// A `{ ... }` block.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// The statements.
    pub stmts: Vec<Stmt>,
    /// From `{` to `}`.
    pub span: Span,
}

/// A statement of the update block.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `let NAME = expr`: a new local (it may shadow an earlier one).
    Let {
        /// The local.
        name: Ident,
        /// Its value.
        value: Expr,
    },
    /// `NAME = expr`: a new value for `p`, a state, a scalar state or a local.
    Assign {
        /// The target.
        target: Ident,
        /// The value.
        value: Expr,
    },
    /// `if cond { } else { }`, with a uniform condition.
    If {
        /// The condition.
        cond: Expr,
        /// Taken when true.
        then: Block,
        /// Taken when false (an `else if` is a block holding one `if`).
        otherwise: Option<Block>,
        /// The whole statement.
        span: Span,
    },
    /// `repeat N { }`: the block `N` times, `N` a compile-time integer.
    Repeat {
        /// The count: a literal or an integer flag.
        count: Expr,
        /// The block repeated.
        body: Block,
        /// The whole statement.
        span: Span,
    },
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where.
    pub span: Span,
}

/// The kinds of expression.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A number literal.
    Number(f64),
    /// `true` or `false`.
    Bool(bool),
    /// A name.
    Name(String),
    /// `-x` or `!b`.
    Unary(UnaryOp, Box<Expr>),
    /// `a op b`.
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `c ? a : b`.
    Ternary(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `f(args)`.
    Call(Ident, Vec<Expr>),
    /// `a @ b`, the matrix product.
    MatMul(Box<Expr>, Box<Expr>),
}
