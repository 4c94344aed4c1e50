//! Reductions: their declaration in a kernel and the one summation order every backend follows.
//!
//! The order is defined here, once, by [`block_partial`], [`combine`], [`reduce`],
//! [`row_reduce`] and [`col_reduce`] (see `docs/stages.md`). The interpreter is built on these
//! functions and the CPU and GPU backends are tested against them, bit for bit.

use crate::op::{BinaryOp, Real};
use crate::vector::MatrixDims;
use serde::{Deserialize, Serialize};

/// Elements per block of a Tensor-, Step- or Row-scope reduction.
pub const REDUCE_BLOCK: usize = 4096;
/// Lanes (independent f32 accumulators) within a block.
pub const REDUCE_LANES: usize = 32;
/// Rows per block of a Col-scope reduction.
pub const COL_BLOCK_ROWS: usize = 64;

/// The name of the reduction that clipping by global norm adds (the Step-scope sum of `g * g`);
/// a runtime reports `sqrt` of its value as the step's total gradient norm
/// ([`crate::Kernel::grad_norm_reduction`]).
pub const GRAD_NORM_REDUCTION: &str = "clip: sum(g * g)";

/// The name of the reduction that loss scaling adds: the Step-scope sum of `g * 0` over the raw
/// (still scaled) gradients, `±0` when every element is finite and NaN when one is an inf or a
/// NaN (`0 · ±inf` and `0 · NaN` are NaN, and NaN propagates through the sum). A runtime skips
/// the step when its value is not zero ([`crate::Kernel::nonfinite_reduction`],
/// `docs/loss_scaling.md`).
pub const NONFINITE_REDUCTION: &str = "loss scale: sum(g * 0)";

/// What a reduction computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceOp {
    /// The sum (identity `-0.0`).
    Sum,
    /// The NaN-propagating maximum of [`BinaryOp::Max`] (identity `-inf`).
    Max,
}

impl ReduceOp {
    /// The identity: `-0.0` for `Sum` (the exact additive identity), `-inf` for `Max`.
    pub fn identity(self) -> f64 {
        match self {
            ReduceOp::Sum => -0.0,
            ReduceOp::Max => f64::NEG_INFINITY,
        }
    }

    /// `a ⊕ b` in the arithmetic of `R`.
    pub fn apply<R: Real>(self, a: R, b: R) -> R {
        match self {
            ReduceOp::Sum => R::binary(BinaryOp::Add, a, b),
            ReduceOp::Max => R::binary(BinaryOp::Max, a, b),
        }
    }

    /// The name printed in IR text.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
        }
    }
}

/// Over which elements a reduction runs, and so where it is finalized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every element of one tensor: one value per tensor.
    Tensor,
    /// Every element of every tensor of one `step` call, across groups: one value per step.
    Step,
    /// Each row of a tensor seen as a matrix (the last dim is the row): one value per row.
    Row,
    /// Each column of a tensor seen as a matrix: one value per column (and per leading batch
    /// index).
    Col,
}

impl Scope {
    /// The name printed in IR text.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Tensor => "tensor",
            Scope::Step => "step",
            Scope::Row => "row",
            Scope::Col => "col",
        }
    }
}

/// A reduction of a kernel: produced by one stage (as a reduce output of that stage's body),
/// finalized by the host, then read as `Expr::Reduced(id)` by the host program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReductionDecl {
    /// A readable name (the source text of the reduction, or what the compiler added it for).
    pub name: String,
    /// What it computes.
    pub op: ReduceOp,
    /// Over which elements.
    pub scope: Scope,
    /// The stage whose body produces it.
    pub stage: usize,
}

/// The block partial of `xs` (at most [`REDUCE_BLOCK`] values) in the arithmetic of `R`:
/// [`REDUCE_LANES`] lanes from the identity, lane `k` folding `xs[k + 32 i]` in increasing `i`,
/// then the tree `lane[k] ⊕= lane[k + s]` for `s` in 16, 8, 4, 2, 1. A missing element is the
/// identity.
pub fn block_partial<R: Real>(op: ReduceOp, xs: &[R]) -> R {
    debug_assert!(xs.len() <= REDUCE_BLOCK);
    let id = R::from_f64(op.identity());
    let mut lanes = [id; REDUCE_LANES];
    for chunk in xs.chunks(REDUCE_LANES) {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = op.apply(*lane, x);
        }
    }
    let mut s = REDUCE_LANES / 2;
    while s >= 1 {
        for k in 0..s {
            lanes[k] = op.apply(lanes[k], lanes[k + s]);
        }
        s /= 2;
    }
    lanes[0]
}

/// Combines block partials in f64, in the order given: `acc = identity; acc = acc ⊕ p`.
pub fn combine<R: Real>(op: ReduceOp, partials: impl IntoIterator<Item = R>) -> f64 {
    partials
        .into_iter()
        .fold(op.identity(), |acc, p| op.apply(acc, p.to_f64()))
}

/// The whole reduction of `xs` (a tensor in memory order, or one row): block partials of
/// [`REDUCE_BLOCK`] consecutive elements, combined in f64 in block order.
pub fn reduce<R: Real>(op: ReduceOp, xs: &[R]) -> f64 {
    combine(op, xs.chunks(REDUCE_BLOCK).map(|b| block_partial(op, b)))
}

/// Row-scope results of a row-major `rows × cols` matrix `xs`: [`reduce`] of each row.
pub fn row_reduce<R: Real>(op: ReduceOp, xs: &[R], cols: usize) -> Vec<f64> {
    if cols == 0 {
        return Vec::new();
    }
    xs.chunks(cols).map(|row| reduce(op, row)).collect()
}

/// Col-scope results of a row-major `rows × cols` matrix `xs`: rows cut into blocks of
/// [`COL_BLOCK_ROWS`]; within a block each column folds its rows in increasing order from the
/// identity in the arithmetic of `R`; the block partials of a column are combined in f64 in
/// block order.
pub fn col_reduce<R: Real>(op: ReduceOp, xs: &[R], cols: usize) -> Vec<f64> {
    if cols == 0 {
        return Vec::new();
    }
    let mut acc = vec![op.identity(); cols];
    for block in xs.chunks(COL_BLOCK_ROWS * cols) {
        let mut part = vec![R::from_f64(op.identity()); cols];
        for row in block.chunks(cols) {
            for (p, &x) in part.iter_mut().zip(row) {
                *p = op.apply(*p, x);
            }
        }
        for (a, p) in acc.iter_mut().zip(part) {
            *a = op.apply(*a, p.to_f64());
        }
    }
    acc
}

/// The partials of a Row-scope reduction of a tensor of `dims` (`xs` in memory order): for each
/// row in order, the [`block_partial`]s of its [`REDUCE_BLOCK`]-element blocks in block order
/// (`ceil(cols / REDUCE_BLOCK)` per row). [`finalize_rows`] combines them.
pub fn row_partials<R: Real>(op: ReduceOp, xs: &[R], dims: MatrixDims) -> Vec<R> {
    if dims.cols == 0 {
        return Vec::new();
    }
    xs.chunks(dims.cols)
        .flat_map(|row| row.chunks(REDUCE_BLOCK).map(move |b| block_partial(op, b)))
        .collect()
}

/// The Row-scope results (`batch · rows` values) from [`row_partials`]: each row's partials
/// combined in f64 in block order ([`row_reduce`] of each matrix). `None` if `partials` does not
/// have the length `dims` gives.
pub fn finalize_rows<R: Real>(op: ReduceOp, partials: &[R], dims: MatrixDims) -> Option<Vec<f64>> {
    let rows = dims.batch * dims.rows;
    let per = dims.cols.div_ceil(REDUCE_BLOCK);
    if partials.len() != rows * per {
        return None;
    }
    if per == 0 {
        return Some(vec![op.identity(); rows]);
    }
    Some(
        partials
            .chunks(per)
            .map(|p| combine(op, p.iter().copied()))
            .collect(),
    )
}

/// The partials of a Col-scope reduction of a tensor of `dims`: for each matrix of the batch,
/// for each block of [`COL_BLOCK_ROWS`] rows, one f32 per column (the column folded over the
/// block's rows in increasing order from the identity). [`finalize_cols`] combines them.
pub fn col_partials<R: Real>(op: ReduceOp, xs: &[R], dims: MatrixDims) -> Vec<R> {
    let per_matrix = dims.rows * dims.cols;
    if per_matrix == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for m in xs.chunks(per_matrix) {
        for block in m.chunks(COL_BLOCK_ROWS * dims.cols) {
            let mut part = vec![R::from_f64(op.identity()); dims.cols];
            for row in block.chunks(dims.cols) {
                for (p, &x) in part.iter_mut().zip(row) {
                    *p = op.apply(*p, x);
                }
            }
            out.extend(part);
        }
    }
    out
}

/// The Col-scope results (`batch · cols` values) from [`col_partials`]: each column's block
/// partials combined in f64 in block order ([`col_reduce`] of each matrix). `None` if `partials`
/// does not have the length `dims` gives.
pub fn finalize_cols<R: Real>(op: ReduceOp, partials: &[R], dims: MatrixDims) -> Option<Vec<f64>> {
    let blocks = dims.rows.div_ceil(COL_BLOCK_ROWS);
    let (b, c) = (dims.batch, dims.cols);
    if partials.len() != b * blocks * c {
        return None;
    }
    let mut out = vec![op.identity(); b * c];
    for m in 0..b {
        for blk in 0..blocks {
            for j in 0..c {
                let acc = &mut out[m * c + j];
                *acc = op.apply(*acc, partials[(m * blocks + blk) * c + j].to_f64());
            }
        }
    }
    Some(out)
}

/// Combines finalized values of several tensors (Step scope) in f64, in the order given (the
/// order the tensors were registered with the optimizer).
pub fn combine_totals(op: ReduceOp, totals: impl IntoIterator<Item = f64>) -> f64 {
    combine(op, totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Integers below 2^24 add exactly in f32, so the sum is the f64 sum computed by formula.
    #[test]
    fn exact_sum_of_integers() {
        let n = 3 * REDUCE_BLOCK + 77;
        let xs: Vec<f32> = (0..n).map(|i| (i % 100) as f32).collect();
        let expected: f64 = (0..n).map(|i| (i % 100) as f64).sum();
        assert_eq!(reduce(ReduceOp::Sum, &xs), expected);
    }

    #[test]
    fn sum_identity_keeps_negative_zero() {
        assert!(reduce::<f32>(ReduceOp::Sum, &[]).is_sign_negative());
        assert!(reduce(ReduceOp::Sum, &[-0.0f32, -0.0]).is_sign_negative());
        assert!(reduce(ReduceOp::Sum, &[-0.0f32, 0.0]).is_sign_positive());
    }

    #[test]
    fn max_of_negatives_with_short_tail() {
        // The last block has 5 elements, so most lanes stay at -inf; a zero fill would give 0.
        let xs: Vec<f32> = (0..REDUCE_BLOCK + 5).map(|i| -1.0 - i as f32).collect();
        assert_eq!(reduce(ReduceOp::Max, &xs), -1.0);
        assert_eq!(reduce(ReduceOp::Max, &xs[REDUCE_BLOCK..]), -4097.0);
        assert!(reduce(ReduceOp::Max, &[1.0f32, f32::NAN, 2.0]).is_nan());
    }

    /// The lane order is observable: 1 + 2^-24 ... shows which values meet first.
    #[test]
    fn lane_order_is_the_documented_one() {
        // Lane 0 gets 2^24 then 1.0 (lost: 2^24 + 1 rounds to 2^24); lane 1 gets 1.0. A plain
        // left-to-right sum would lose both ones.
        let big = 16_777_216.0f32;
        let mut xs = vec![0.0f32; 33];
        xs[0] = big;
        xs[32] = 1.0;
        xs[1] = 1.0;
        // lanes: l0 = big + 1 = big (f32), l1 = 1; tree: ... l0 + l1 = big + 1 = big.
        assert_eq!(block_partial(ReduceOp::Sum, &xs), big);
        let mut ys = vec![0.0f32; 64];
        ys[0] = big;
        ys[16] = 1.0;
        ys[48] = 1.0;
        // l16 = 1 + 1 = 2 (lane 16 folds 16 and 48); tree step s=16: l0 = big + 2, exact.
        assert_eq!(block_partial(ReduceOp::Sum, &ys), big + 2.0);
    }

    #[test]
    fn rows_and_cols() {
        let (rows, cols) = (130, 3);
        let xs: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let r = row_reduce(ReduceOp::Sum, &xs, cols);
        assert_eq!(r.len(), rows);
        assert_eq!(r[1], 3.0 + 4.0 + 5.0);
        let c = col_reduce(ReduceOp::Sum, &xs, cols);
        let expected: Vec<f64> = (0..cols)
            .map(|j| (0..rows).map(|i| (i * cols + j) as f64).sum())
            .collect();
        assert_eq!(c, expected);
        let m = col_reduce(ReduceOp::Max, &xs, cols);
        assert_eq!(m[2], ((rows - 1) * cols + 2) as f64);
    }

    /// The partial forms give what `row_reduce` and `col_reduce` give, matrix by matrix.
    #[test]
    fn partials_finalize_to_the_reductions() {
        let dims = MatrixDims {
            batch: 3,
            rows: 130,
            cols: 4100,
        };
        let xs: Vec<f32> = (0..dims.numel())
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let per = dims.rows * dims.cols;
        for op in [ReduceOp::Sum, ReduceOp::Max] {
            let rows = finalize_rows(op, &row_partials(op, &xs, dims), dims).expect("length");
            let cols = finalize_cols(op, &col_partials(op, &xs, dims), dims).expect("length");
            let want_rows: Vec<f64> = xs
                .chunks(per)
                .flat_map(|m| row_reduce(op, m, dims.cols))
                .collect();
            let want_cols: Vec<f64> = xs
                .chunks(per)
                .flat_map(|m| col_reduce(op, m, dims.cols))
                .collect();
            assert_eq!(rows, want_rows);
            assert_eq!(cols, want_cols);
        }
    }
}
