//! Checking: names, kinds, types and uniformity of a parsed rule.
//!
//! Takes an [`ast::File`], gives the diagnostics (errors and warnings) and, when there are no
//! errors, guarantees to the lowering that every name resolves, every expression is well typed,
//! every `if` condition and scalar-state value is uniform, and every declaration's value has the
//! form its kind needs. See `docs/language.md` for the meaning of each code.

mod decls;
mod matrix;
mod update;

use crate::diag::Diagnostic;
use crate::syntax::ast;

/// The type of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// A number.
    Num,
    /// A boolean.
    Bool,
    /// A matrix of the given shape, in the tensor's wide view (`m × n`, `m <= n`; see
    /// `optc_kernel::matrix`).
    Matrix(Dim, Dim),
}

impl Ty {
    /// How diagnostics name it.
    pub fn name(self) -> &'static str {
        match self {
            Ty::Num => "a number",
            Ty::Bool => "a boolean",
            Ty::Matrix(Dim::M, Dim::M) => "an m×m matrix",
            Ty::Matrix(Dim::M, Dim::N) => "an m×n matrix",
            Ty::Matrix(Dim::N, Dim::M) => "an n×m matrix",
            Ty::Matrix(Dim::N, Dim::N) => "an n×n matrix",
        }
    }
}

use optc_kernel::matrix::Dim;

/// The matrix functions: name and number of arguments. `transpose(x)` and `round_bf16(x)` take
/// a matrix, or a per-element value as the tensor's `m × n` matrix.
pub const MATRIX_FUNCTIONS: &[(&str, usize)] = &[("transpose", 1), ("round_bf16", 1)];

/// Whether a value is the same for every element of a tensor, for every element of a row or
/// column of a matrix, or per element. Combine two with [`Uniformity::join`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uniformity {
    /// Computed from literals, hypers, flags, `t` and scalar states only.
    Uniform,
    /// One value per row of a matrix (`[rows]`: a row mean, a `[rows]` state).
    Rows,
    /// One value per column of a matrix (`[cols]`).
    Cols,
    /// Depends on `p`, `g` or a per-element state.
    PerElement,
}

impl Uniformity {
    /// The uniformity of a value computed from values of uniformity `self` and `other`: a
    /// `[rows]` value with a `[cols]` one is per element (the outer broadcast, as torch's
    /// `row_var @ col_var`).
    pub fn join(self, other: Uniformity) -> Uniformity {
        use Uniformity::*;
        match (self, other) {
            (a, b) if a == b => a,
            (Uniform, x) | (x, Uniform) => x,
            _ => PerElement,
        }
    }

    /// Whether the value is a `[rows]` or `[cols]` one.
    pub fn is_vector(self) -> bool {
        matches!(self, Uniformity::Rows | Uniformity::Cols)
    }

    /// How diagnostics name a value of this uniformity.
    pub fn name(self) -> &'static str {
        match self {
            Uniformity::Uniform => "a uniform value",
            Uniformity::Rows => "a [rows] value",
            Uniformity::Cols => "a [cols] value",
            Uniformity::PerElement => "a per-element value",
        }
    }
}

/// The built-in functions: name and number of arguments.
pub const FUNCTIONS: &[(&str, usize)] = &[
    ("sqrt", 1),
    ("rsqrt", 1),
    ("abs", 1),
    ("sign", 1),
    ("exp", 1),
    ("log", 1),
    ("min", 2),
    ("max", 2),
    ("clamp", 3),
    ("lerp", 3),
];

/// The built-in reductions: name and number of arguments. Each takes per-element values and
/// gives one value (uniform): `sum`, `mean`, `norm` (L2), `dot` and `amax` (the largest element)
/// over the tensor, `global_norm` (L2) over every tensor of the step; `row_mean` and `col_mean`
/// give the mean of each row (a `[rows]` value) and of each column (`[cols]`) of a matrix.
/// `mean` of a `[rows]` (`[cols]`) value is its mean over the rows (columns) of each matrix.
pub const REDUCTIONS: &[(&str, usize)] = &[
    ("sum", 1),
    ("mean", 1),
    ("norm", 1),
    ("dot", 2),
    ("amax", 1),
    ("global_norm", 1),
    ("row_mean", 1),
    ("col_mean", 1),
];

/// The names bound by the runtime.
pub const BUILTIN_NAMES: &[&str] = &["p", "g", "t", "matrix", "rows", "cols"];

/// Checks a parsed rule. Returns every diagnostic found, errors and warnings.
pub fn check(file: &ast::File) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let table = decls::check_decls(file, &mut out);
    update::check_update(file, &table, &mut out);
    out
}

pub use decls::{count_value, parse_count, DeclTable, Symbol, MAX_REPEAT};

/// The file-level names of a rule, for the lowering. Diagnostics are discarded: call [`check`]
/// first.
pub fn decl_table(file: &ast::File) -> DeclTable {
    decls::check_decls(file, &mut Vec::new())
}
