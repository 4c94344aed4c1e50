//! Where the GPU entries of a factored stage work and write their partials (`docs/stages.md`,
//! "Row and column values"): the index math that the PTX backend emits and the CUDA runtime
//! sizes and splits its buffers by, stated once on the host.
//!
//! A factored stage has up to two entries:
//!
//! - the **rows** entry (always; it does the stores): one warp per *row block*, a run of at most
//!   [`REDUCE_BLOCK`] elements of one row; row block `rb` is block `rb % per` of row `rb / per`
//!   (`per = ceil(cols / REDUCE_BLOCK)`), so the partials of each Row-, Tensor- or Step-scope
//!   output are, in row-block order, exactly [`crate::reduce::row_partials`];
//! - the **cols** entry (only when the stage has Col-scope outputs; launched before the rows
//!   entry, since it reads the stage's inputs before they are stored): one thread per *column
//!   block*, column `c` of the block of [`COL_BLOCK_ROWS`] rows `blk` of matrix `m`, folding those
//!   rows in increasing order from the identity; thread `t = (m · blocks + blk) · cols + c`
//!   writes partial `t`, exactly the layout of [`crate::reduce::col_partials`].
//!
//! Output `q` of an entry (its position among that entry's outputs, in `Stage::reduce` order)
//! writes at `q · len + i` of the entry's partials, `len` being [`Geometry::row_blocks`] or
//! [`Geometry::col_threads`].

use crate::kernel::Kernel;
use crate::reduce::{Scope, COL_BLOCK_ROWS, REDUCE_BLOCK};
use crate::vector::MatrixDims;
use std::ops::Range;

/// The work items of a tensor's factored entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// The tensor seen as matrices.
    pub dims: MatrixDims,
}

impl Geometry {
    /// Row blocks per row: `ceil(cols / REDUCE_BLOCK)`.
    pub fn per_row(self) -> usize {
        self.dims.cols.div_ceil(REDUCE_BLOCK)
    }

    /// Row blocks of the tensor (warps' work items in the rows entry).
    pub fn row_blocks(self) -> usize {
        self.dims.batch * self.dims.rows * self.per_row()
    }

    /// The elements (memory order) of row block `rb`, and its row in `0..batch · rows`.
    pub fn row_block(self, rb: usize) -> (usize, Range<usize>) {
        let per = self.per_row().max(1);
        let (row, j) = (rb / per, rb % per);
        let start = j * REDUCE_BLOCK;
        let end = (start + REDUCE_BLOCK).min(self.dims.cols);
        let base = row * self.dims.cols;
        (row, base + start..base + end)
    }

    /// Blocks of [`COL_BLOCK_ROWS`] rows per matrix.
    pub fn col_blocks(self) -> usize {
        self.dims.rows.div_ceil(COL_BLOCK_ROWS)
    }

    /// Column blocks of the tensor (threads' work items in the cols entry).
    pub fn col_threads(self) -> usize {
        self.dims.batch * self.col_blocks() * self.dims.cols
    }

    /// Column block `t`: its column index in `0..batch · cols` (where a `[cols]` value is read)
    /// and its elements (memory order) in the order they are folded.
    pub fn col_block(self, t: usize) -> (usize, Vec<usize>) {
        let MatrixDims { rows, cols, .. } = self.dims;
        let (c, q) = (t % cols.max(1), t / cols.max(1));
        let blocks = self.col_blocks().max(1);
        let (blk, m) = (q % blocks, q / blocks);
        let r0 = blk * COL_BLOCK_ROWS;
        let r1 = (r0 + COL_BLOCK_ROWS).min(rows);
        let elements = (r0..r1).map(|r| (m * rows + r) * cols + c).collect();
        (m * cols + c, elements)
    }
}

/// Which entry writes a reduce output, and where its partials are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// The rows entry's output `q` (Row, Tensor or Step scope).
    Rows(usize),
    /// The cols entry's output `q` (Col scope).
    Cols(usize),
}

/// For each reduce output of stage `stage` of `kernel` (in `Stage::reduce` order), the entry
/// that writes it and its position among that entry's outputs.
pub fn outputs(kernel: &Kernel, stage: usize) -> Vec<Output> {
    let (mut rows, mut cols) = (0, 0);
    let Some(st) = kernel.stages.get(stage) else {
        return Vec::new();
    };
    st.reduce
        .iter()
        .map(|out| {
            let col = kernel
                .reductions
                .get(out.reduction.index())
                .is_some_and(|d| d.scope == Scope::Col);
            if col {
                cols += 1;
                Output::Cols(cols - 1)
            } else {
                rows += 1;
                Output::Rows(rows - 1)
            }
        })
        .collect()
}

/// One tensor's partials of a factored stage, as one buffer: the rows entry's outputs, then
/// the cols entry's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialsLayout {
    /// Where each reduce output's partials lie in the buffer, in `Stage::reduce` order.
    pub outputs: Vec<Range<usize>>,
    /// Where the cols entry's partials start (its `Partials` argument), in f32s.
    pub cols_start: usize,
    /// The buffer's length in f32s.
    pub len: usize,
}

/// The partials layout of stage `stage` of `kernel` for a tensor of `dims`.
pub fn partials_layout(kernel: &Kernel, stage: usize, dims: MatrixDims) -> PartialsLayout {
    let g = Geometry { dims };
    let outs = outputs(kernel, stage);
    let n_rows = outs.iter().filter(|o| matches!(o, Output::Rows(_))).count();
    let n_cols = outs.len() - n_rows;
    let cols_start = n_rows * g.row_blocks();
    let outputs = outs
        .iter()
        .map(|o| match *o {
            Output::Rows(q) => q * g.row_blocks()..(q + 1) * g.row_blocks(),
            Output::Cols(q) => {
                cols_start + q * g.col_threads()..cols_start + (q + 1) * g.col_threads()
            }
        })
        .collect();
    PartialsLayout {
        outputs,
        cols_start,
        len: cols_start + n_cols * g.col_threads(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::{block_partial, col_partials, row_partials, ReduceOp};

    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + 13) % 1009) as f32 * 1e-3 - 0.5)
            .collect()
    }

    /// The work items, walked as the entries walk them (row blocks folded with
    /// `block_partial`, column blocks folded row by row from the identity), give exactly
    /// `row_partials` and `col_partials`, for shapes with a short last row block, rows above
    /// and not a multiple of `COL_BLOCK_ROWS`, batches, and one row or column.
    #[test]
    fn work_items_give_the_reference_partials() {
        let shapes = [
            (1, 67, 1031),
            (3, 130, 5),
            (2, 3, 4100),
            (1, 1, 1),
            (2, 64, 1),
            (1, 1, 9000),
            (4, 65, 33),
        ];
        for (batch, rows, cols) in shapes {
            let dims = MatrixDims { batch, rows, cols };
            let g = Geometry { dims };
            let xs = data(dims.numel());
            for op in [ReduceOp::Sum, ReduceOp::Max] {
                let by_rows: Vec<f32> = (0..g.row_blocks())
                    .map(|rb| {
                        let (row, range) = g.row_block(rb);
                        assert_eq!(row, dims.row_of(range.start));
                        block_partial(op, &xs[range])
                    })
                    .collect();
                assert_eq!(by_rows, row_partials(op, &xs, dims), "{dims:?}");
                let by_cols: Vec<f32> = (0..g.col_threads())
                    .map(|t| {
                        let (col, elements) = g.col_block(t);
                        assert!(elements.iter().all(|&e| dims.col_of(e) == col));
                        elements
                            .iter()
                            .fold(op.identity() as f32, |acc, &e| op.apply(acc, xs[e]))
                    })
                    .collect();
                assert_eq!(by_cols, col_partials(op, &xs, dims), "{dims:?}");
            }
        }
    }
}
