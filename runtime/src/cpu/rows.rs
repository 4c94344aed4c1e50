//! Factored kernels on the CPU: the row form of `optc_compiler::backend::clif::rows`, called once
//! per row of each tensor (`docs/stages.md`, "Row and column values").
//!
//! A tensor's rows are cut into work items of [`COL_BLOCK_ROWS`] rows of one matrix; an item runs
//! its rows in order on one thread, and owns the Col accumulators of its row block, so every
//! partial is the same with any thread count. Row, Tensor and Step partials land at the row's own
//! place ([`optc_kernel::reduce::row_partials`] order); Col partials are the accumulators
//! ([`optc_kernel::reduce::col_partials`] order).
#![allow(unsafe_code)]

use super::{jit, CpuError, TensorArgs};
use optc_compiler::backend::clif::rows::{row_form, RowForm};
use optc_kernel::{Kernel, MatrixDims, Slot, StateId, StateShape, COL_BLOCK_ROWS, REDUCE_BLOCK};

/// A factored kernel compiled in its row form.
pub struct RowKernel {
    kernel: Kernel,
    form: RowForm,
    code: jit::Code,
}

/// One tensor of a factored stage: its buffers and uniforms, the stage's `[rows]`/`[cols]`
/// values (`Kernel::stage_vectors`) and its matrix view.
pub struct RowTensor<'a> {
    /// The buffers and the stage's uniforms (`[rows]`/`[cols]` states at their own lengths).
    pub args: TensorArgs<'a>,
    /// The stage's vectors, in `Expr::Vector` order.
    pub vectors: Vec<Vec<f32>>,
    /// The matrix view.
    pub dims: MatrixDims,
}

/// The slot of buffer `i` of the original kernel (`p`, `g`, then the states).
fn slot_of(i: usize) -> Slot {
    match i {
        0 => Slot::Param,
        1 => Slot::Grad,
        _ => Slot::State(StateId::new(i - 2)),
    }
}

/// A pointer shared by the threads of one pass, each touching its own part.
#[derive(Clone, Copy)]
struct Shared(*mut u8);
// SAFETY: every pointer comes from a buffer borrowed (mutably, or shared and never written) for
// the whole pass, and threads access disjoint rows and row blocks of it (see `run_stage`).
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl RowKernel {
    /// The row form of `kernel` (valid and factored), JIT-compiled.
    pub fn compile(kernel: &Kernel, allow_fma: bool) -> Result<RowKernel, CpuError> {
        kernel.validate()?;
        let form = row_form(kernel)?;
        let code = jit::Code::compile(&form.kernel, allow_fma, false)?;
        Ok(RowKernel {
            kernel: kernel.clone(),
            form,
            code,
        })
    }

    /// Whether the code fuses multiply-adds.
    pub fn uses_fma(&self) -> bool {
        self.code.fma
    }

    fn check(&self, stage: usize, tensor: usize, t: &RowTensor<'_>) -> Result<(), CpuError> {
        let k = &self.kernel;
        let rs = &self.form.stages[stage];
        let length = |buffer: &str, expected: usize, found: usize| CpuError::Length {
            rule: k.rule.clone(),
            tensor,
            buffer: buffer.to_string(),
            expected,
            found,
        };
        let d = t.dims;
        let n = d.numel();
        super::check_dtypes(k, tensor, &t.args)?;
        if t.args.param.len() != n {
            return Err(length("p", n, t.args.param.len()));
        }
        if t.args.grad.len() != n {
            return Err(length("g", n, t.args.grad.len()));
        }
        super::check_state_count(k, tensor, &t.args)?;
        for (decl, s) in k.states.iter().zip(&t.args.states) {
            if s.len() != d.len(decl.shape) {
                return Err(length(&decl.name, d.len(decl.shape), s.len()));
            }
        }
        if t.args.uniforms.len() != rs.uniforms {
            return Err(CpuError::UniformCount {
                rule: k.rule.clone(),
                stage,
                tensor,
                expected: rs.uniforms,
                found: t.args.uniforms.len(),
            });
        }
        let shapes = k.stage_vector_shapes(stage)?;
        if t.vectors.len() != shapes.len() {
            return Err(length("the stage's vectors", shapes.len(), t.vectors.len()));
        }
        for (v, s) in t.vectors.iter().zip(&shapes) {
            let want = d.len(s.state_shape());
            if v.len() != want {
                return Err(length("a [rows]/[cols] value", want, v.len()));
            }
        }
        Ok(())
    }

    /// Runs stage `stage` on `tensors` over `pool` (rayon's global pool when `None`). Returns,
    /// per tensor and per reduce output of the stage (in `Stage::reduce` order), its partials:
    /// [`optc_kernel::reduce::row_partials`] order for Row, Tensor and Step scopes,
    /// [`optc_kernel::reduce::col_partials`] order for Col scope. Nothing is touched unless every
    /// tensor's arguments fit.
    pub fn run_stage(
        &self,
        stage: usize,
        tensors: &mut [RowTensor<'_>],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<Vec<Vec<Vec<f32>>>, CpuError> {
        if stage >= self.kernel.stages.len() {
            return Err(CpuError::Stage {
                rule: self.kernel.rule.clone(),
                stage,
                stages: self.kernel.stages.len(),
            });
        }
        for (i, t) in tensors.iter().enumerate() {
            self.check(stage, i, t)?;
        }
        let rs = &self.form.stages[stage];
        let (col_first, acc_first) = self.form.buffers_of(stage);
        let buffers = 2 + self.form.kernel.states.len();
        // Per tensor: the row-form outputs' partials (one region, `per_output` each), then one
        // accumulator buffer per Col output, starting at the op's identity.
        let mut outs: Vec<Vec<f32>> = Vec::with_capacity(tensors.len());
        let mut accs: Vec<Vec<Vec<f32>>> = Vec::with_capacity(tensors.len());
        for t in tensors.iter() {
            let d = t.dims;
            let per_output = d.batch * d.rows * d.cols.div_ceil(REDUCE_BLOCK);
            outs.push(vec![f32::NAN; rs.outputs.len() * per_output]);
            let len = d.batch * d.rows.div_ceil(COL_BLOCK_ROWS) * d.cols;
            accs.push(
                rs.col_outputs
                    .iter()
                    .map(|&(_, op)| vec![op.identity() as f32; len])
                    .collect(),
            );
        }
        // The work: (tensor, first row, rows), each a block of COL_BLOCK_ROWS rows of a matrix.
        let mut items: Vec<(usize, usize, usize)> = Vec::new();
        for (ti, t) in tensors.iter().enumerate() {
            let d = t.dims;
            if d.cols == 0 {
                continue;
            }
            for m in 0..d.batch {
                for start in (0..d.rows).step_by(COL_BLOCK_ROWS) {
                    items.push((ti, m * d.rows + start, COL_BLOCK_ROWS.min(d.rows - start)));
                }
            }
        }
        // Every pointer, once, as shared raw pointers.
        struct Raw {
            bufs: Vec<Shared>,
            vectors: Vec<Shared>,
            accs: Vec<Shared>,
            out: Shared,
            uniforms: Vec<f32>,
            key: u32,
            row_values: Vec<Shared>,
            dims: MatrixDims,
            full: Vec<bool>,
            per_output: usize,
        }
        let raws: Vec<Raw> = tensors
            .iter_mut()
            .zip(outs.iter_mut())
            .zip(accs.iter_mut())
            .map(|((t, out), acc)| {
                let d = t.dims;
                let mut bufs = vec![
                    Shared(t.args.param.as_mut_ptr()),
                    Shared(t.args.grad.as_ptr().cast_mut()),
                ];
                bufs.extend(t.args.states.iter_mut().map(|s| Shared(s.as_mut_ptr())));
                Raw {
                    bufs,
                    vectors: rs
                        .col_vectors
                        .iter()
                        .map(|&v| Shared(t.vectors[v].as_ptr().cast_mut().cast()))
                        .collect(),
                    accs: acc
                        .iter_mut()
                        .map(|a| Shared(a.as_mut_ptr().cast()))
                        .collect(),
                    out: Shared(out.as_mut_ptr().cast()),
                    uniforms: t.args.uniforms.clone(),
                    key: t.args.sr_key,
                    row_values: rs
                        .row_vectors
                        .iter()
                        .map(|&v| Shared(t.vectors[v].as_ptr().cast_mut().cast()))
                        .collect(),
                    dims: d,
                    full: self
                        .kernel
                        .states
                        .iter()
                        .map(|s| s.shape == StateShape::Full)
                        .collect(),
                    per_output: d.batch * d.rows * d.cols.div_ceil(REDUCE_BLOCK),
                }
            })
            .collect();
        let run_item = |&(ti, first, rows): &(usize, usize, usize)| {
            let raw = &raws[ti];
            let d = raw.dims;
            let (m, blk) = (
                first / d.rows.max(1),
                (first % d.rows.max(1)) / COL_BLOCK_ROWS,
            );
            let blocks = d.rows.div_ceil(COL_BLOCK_ROWS);
            let per_row = d.cols.div_ceil(REDUCE_BLOCK);
            let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); buffers];
            let mut uniforms = raw.uniforms.clone();
            uniforms.resize(rs.uniforms + rs.row_vectors.len(), 0.0);
            for r in first..first + rows {
                // SAFETY (all `add`s below): `r < batch · rows`, so `r · cols + cols <= numel`
                // for the full-shape buffers; `m < batch`, so `m · cols + cols <= batch · cols`
                // for the [cols] values; the accumulator offset is below `batch · blocks · cols`;
                // the out offset `r · per_row` is below `per_output`. [rows]/[cols] states are
                // passed at their base and never accessed by the row form.
                unsafe {
                    for (i, b) in raw.bufs.iter().enumerate() {
                        let full = i < 2 || raw.full[i - 2];
                        let size = self.kernel.value_bytes(slot_of(i));
                        ptrs[i] = if full {
                            b.0.add(r * d.cols * size)
                        } else {
                            b.0
                        };
                    }
                    for (j, v) in raw.vectors.iter().enumerate() {
                        ptrs[col_first + j] = v.0.add(4 * m * d.cols);
                    }
                    for (j, a) in raw.accs.iter().enumerate() {
                        ptrs[acc_first + j] = a.0.add(4 * (m * blocks + blk) * d.cols);
                    }
                    for (j, v) in raw.row_values.iter().enumerate() {
                        uniforms[rs.uniforms + j] = *v.0.cast::<f32>().add(r);
                    }
                    let words = self
                        .code
                        .stage_uniforms(stage, &uniforms, raw.key, r * d.cols);
                    let out = raw.out.0.cast::<f32>().add(r * per_row);
                    // SAFETY: every pointer has `cols` valid elements after it (above); this
                    // item is the only one touching row `r` of the written buffers, its
                    // partials, and the accumulators of row block (m, blk) (one item per
                    // block, rows in order); `uniforms` has one value per uniform of the row
                    // form's stage.
                    self.code
                        .call(stage, &ptrs, d.cols, &words, out, raw.per_output);
                }
            }
        };
        let total: usize = tensors.iter().map(|t| t.dims.numel()).sum();
        if total <= super::MIN_CHUNK {
            items.iter().for_each(run_item);
        } else {
            let run = || {
                use rayon::prelude::*;
                items.par_iter().for_each(run_item);
            };
            match pool {
                Some(p) => p.install(run),
                None => run(),
            }
        }
        drop(raws);
        // Back to the stage's reduce order.
        let n_out = self.kernel.stages[stage].reduce.len();
        Ok(tensors
            .iter()
            .zip(outs)
            .zip(accs)
            .map(|((t, out), acc)| {
                let d = t.dims;
                let per_output = d.batch * d.rows * d.cols.div_ceil(REDUCE_BLOCK);
                let mut parts = vec![Vec::new(); n_out];
                for (j, &pos) in rs.outputs.iter().enumerate() {
                    parts[pos] = out[j * per_output..(j + 1) * per_output].to_vec();
                }
                for ((pos, _), a) in rs.col_outputs.iter().zip(acc) {
                    parts[*pos] = a;
                }
                parts
            })
            .collect())
    }
}
