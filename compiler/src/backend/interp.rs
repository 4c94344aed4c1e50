//! The reference interpreter: steps a fused kernel on slices, one element at a time.
//!
//! This is the meaning of a rule. Stage by stage, it evaluates the host program in f64 exactly as
//! every runtime does ([`Kernel::eval_host`]), then the stage's body per element with the op
//! definitions of [`optc_kernel::op`], in f32 ([`Precision::F32`], what backends are judged
//! against) or in f64 ([`Precision::F64`], on f64 buffers, for measuring float error itself),
//! then finalizes the stage's reductions in the order of [`optc_kernel::reduce`] (over every
//! tensor of the call for Step scope) before the next stage.

use optc_kernel::eval::eval_arena;
use optc_kernel::matrix::{self, reference_matmul, store_wide, WideView};
use optc_kernel::reduce::{
    col_partials, combine, combine_totals, finalize_cols, finalize_rows, row_partials,
};
use optc_kernel::{Expr, Kernel, KernelError, MatrixDims, Real, Scope, Slot, StateShape, VecShape};

/// The arithmetic the body runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Every body op rounds to f32, as the compiled kernels do.
    F32,
    /// Every body op in f64, on f64 buffers.
    F64,
}

/// One tensor's buffers for a step, in [`Kernel::buffers`] order: `p`, `g`, then each state.
pub struct Buffers<'a, R> {
    /// The parameter, updated in place.
    pub param: &'a mut [R],
    /// The gradient.
    pub grad: &'a [R],
    /// The states, in the kernel's state order, updated in place.
    pub states: Vec<&'a mut [R]>,
}

/// Why a step could not run.
#[derive(Debug, thiserror::Error)]
pub enum InterpError {
    /// The kernel is malformed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The buffers do not fit the kernel.
    #[error("{0}")]
    Shape(String),
}

/// One tensor of a step call: its group's hypers, its step count, its scalar states (updated in
/// place) and its buffers.
pub struct TensorStep<'a, R> {
    /// The hypers of the tensor's group, in the kernel's order.
    pub hypers: &'a [f64],
    /// The tensor's step number (starting at 1).
    pub t: u64,
    /// The tensor's scalar states, updated in place.
    pub scalars: &'a mut [f64],
    /// The buffers.
    pub bufs: Buffers<'a, R>,
    /// The tensor seen as matrices (its shape's last two dims), for kernels with `[rows]`/`[cols]`
    /// values ([`Kernel::is_factored`]); `None` otherwise.
    pub dims: Option<MatrixDims>,
    /// The tensor's matrix view, for kernels with matrix stages (`None` for the others).
    pub view: Option<WideView>,
    /// The tensor's index in the optimizer: with stochastic rounding, its key at step `t` is
    /// `sr_key(seed, t, tensor)` ([`optc_kernel::dtype::sr_key`]).
    pub tensor: u64,
}

/// What a step call computed besides the buffers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepReport {
    /// The finalized value of every reduction, per tensor (in the order given): Tensor scope is
    /// the tensor's own value, Step scope the same total for every tensor.
    pub reduced: Vec<Vec<f64>>,
}

/// Steps one tensor (a step call of one tensor): runs the kernel's stages in f32.
pub fn step_f32(
    kernel: &Kernel,
    hypers: &[f64],
    t: u64,
    scalars: &mut [f64],
    bufs: Buffers<'_, f32>,
) -> Result<(), InterpError> {
    step_many(
        kernel,
        vec![TensorStep {
            hypers,
            t,
            scalars,
            bufs,
            dims: None,
            view: None,
            tensor: 0,
        }],
    )
    .map(drop)
}

/// Like [`step_f32`], but the body runs in f64 on f64 buffers.
pub fn step_f64(
    kernel: &Kernel,
    hypers: &[f64],
    t: u64,
    scalars: &mut [f64],
    bufs: Buffers<'_, f64>,
) -> Result<(), InterpError> {
    step_many(
        kernel,
        vec![TensorStep {
            hypers,
            t,
            scalars,
            bufs,
            dims: None,
            view: None,
            tensor: 0,
        }],
    )
    .map(drop)
}

/// Steps every tensor of one step call, in the order given (the order the tensors were
/// registered: it fixes the order of Step-scope totals). For each stage in turn: the host program
/// gives each tensor's uniforms, the body runs per element over every tensor, the reduce
/// outputs are reduced in the order of `optc_kernel::reduce`, and Tensor- and Step-scope results
/// are finalized before the next stage. Scalar states are updated after the last stage.
pub fn step_many<R: Real>(
    kernel: &Kernel,
    mut tensors: Vec<TensorStep<'_, R>>,
) -> Result<StepReport, InterpError> {
    kernel.validate()?;
    for ts in &tensors {
        check_shapes(kernel, ts)?;
    }
    let nred = kernel.reductions.len();
    let mut reduced = vec![vec![f64::NAN; nred]; tensors.len()];
    // Row- and Col-scope results, per tensor and reduction (empty until finalized).
    let mut reduced_vec = vec![vec![Vec::new(); nred]; tensors.len()];
    let factored = kernel.is_factored();
    for k in 0..kernel.stages.len() {
        let ids = kernel.stage_reductions(k);
        for (ti, ts) in tensors.iter_mut().enumerate() {
            let host = kernel.eval_host_for(ts.hypers, ts.t, ts.scalars, &reduced[ti], ts.view)?;
            let uniforms: Vec<R> = host.uniforms[k].iter().map(|&u| R::from_f64(u)).collect();
            let vectors: Vec<Vec<R>> = match ts.dims.filter(|_| factored) {
                Some(dims) => {
                    let values =
                        eval_vectors(kernel, dims, &host.inputs, &reduced_vec[ti], &ts.bufs)?;
                    kernel.stage_vectors(k, &values)
                }
                None => Vec::new(),
            };
            if kernel.stages[k].matrix.is_some() {
                let view = ts.view.ok_or_else(|| {
                    InterpError::Shape(format!(
                        "rule `{}` has matrix stages: give each tensor its matrix view",
                        kernel.rule
                    ))
                })?;
                run_matrix(kernel, k, &uniforms, &mut ts.bufs, view)?;
            }
            let bufs = Buffers {
                param: &mut *ts.bufs.param,
                grad: ts.bufs.grad,
                states: ts.bufs.states.iter_mut().map(|s| &mut **s).collect(),
            };
            let key = sr_key_of(kernel, ts.t, ts.tensor);
            let partials = run_stage_matrix(kernel, k, &uniforms, &vectors, ts.dims, bufs, key)?;
            for (parts, r) in partials.into_iter().zip(&kernel.stages[k].reduce) {
                let decl = &kernel.reductions[r.reduction.index()];
                let i = r.reduction.index();
                let bad = || InterpError::Shape(format!("internal: partials of `{}`", decl.name));
                match (decl.scope, ts.dims) {
                    (Scope::Row, Some(dims)) => {
                        reduced_vec[ti][i] = finalize_rows(decl.op, &parts, dims).ok_or_else(bad)?
                    }
                    (Scope::Col, Some(dims)) => {
                        reduced_vec[ti][i] = finalize_cols(decl.op, &parts, dims).ok_or_else(bad)?
                    }
                    _ => reduced[ti][i] = combine(decl.op, parts),
                }
            }
        }
        for id in ids {
            let decl = &kernel.reductions[id.index()];
            if decl.scope == Scope::Step {
                let total = combine_totals(decl.op, reduced.iter().map(|r| r[id.index()]));
                for r in &mut reduced {
                    r[id.index()] = total;
                }
            }
        }
    }
    for (ti, ts) in tensors.iter_mut().enumerate() {
        let host = kernel.eval_host_for(ts.hypers, ts.t, ts.scalars, &reduced[ti], ts.view)?;
        if let Some(dims) = ts.dims.filter(|_| !kernel.vectors.stores.is_empty()) {
            let values = eval_vectors(kernel, dims, &host.inputs, &reduced_vec[ti], &ts.bufs)?;
            for (s, v) in kernel.vector_stores::<R>(dims, &values) {
                ts.bufs.states[s].copy_from_slice(&v);
            }
        }
        ts.scalars.copy_from_slice(&host.scalars);
    }
    Ok(StepReport { reduced })
}

/// The stochastic-rounding key of tensor `tensor` at step `t` (0 without stochastic rounding).
pub fn sr_key_of(kernel: &Kernel, t: u64, tensor: u64) -> u32 {
    kernel.storage.sr_key(t, tensor)
}

/// The vector program of one tensor, reading its `[rows]`/`[cols]` states from `bufs`.
fn eval_vectors<R: Real>(
    kernel: &Kernel,
    dims: MatrixDims,
    inputs: &[f64],
    reduced: &[Vec<f64>],
    bufs: &Buffers<'_, R>,
) -> Result<Vec<Vec<f64>>, InterpError> {
    let states: Vec<&[R]> = kernel
        .states
        .iter()
        .zip(&bufs.states)
        .map(|(d, b)| {
            if d.shape == StateShape::Full {
                &[][..]
            } else {
                &**b
            }
        })
        .collect();
    Ok(kernel.eval_vectors(dims, inputs, reduced, &states)?)
}

/// Runs stage `stage` of `kernel` over one tensor whose uniforms for the stage are already
/// computed (`uniforms`, from [`Kernel::eval_host`]): the body per element, the stores, and, per
/// reduce output of the stage (in `Stage::reduce` order), the block partials in block order by
/// [`optc_kernel::reduce::block_partial`]. For runtimes that run the host program and finalize
/// the reductions themselves; the kernel is assumed validated. `sr_key` is the tensor's
/// stochastic-rounding key for this step ([`sr_key_of`]; unused without stochastic rounding).
///
/// Storage dtypes ([`Kernel::storage`]): the buffers hold f32 (or f64) values, and a buffer
/// stored as bf16 or f16 holds values of that dtype. A load takes the value rounded to the
/// buffer's dtype (to nearest even: exact for a value of the dtype), and a store writes the value
/// the dtype keeps ([`optc_kernel::Storage::narrow`], with the random word
/// `sr_bits(sr_key, element)` for a stochastic store), so a later stage sees what memory holds.
pub fn run_stage<R: Real>(
    kernel: &Kernel,
    stage: usize,
    uniforms: &[R],
    bufs: Buffers<'_, R>,
    sr_key: u32,
) -> Result<Vec<Vec<R>>, InterpError> {
    run_stage_matrix(kernel, stage, uniforms, &[], None, bufs, sr_key)
}

/// [`run_stage`] for a kernel with `[rows]`/`[cols]` values: `vectors` are the stage's
/// (`Kernel::stage_vectors`) and `dims` the tensor's matrix view. A Row-scope reduce output gives
/// [`row_partials`], a Col-scope one [`col_partials`]; the others block partials as
/// [`run_stage`] does. `[rows]`/`[cols]` state buffers are not touched.
pub fn run_stage_matrix<R: Real>(
    kernel: &Kernel,
    stage: usize,
    uniforms: &[R],
    vectors: &[Vec<R>],
    dims: Option<MatrixDims>,
    bufs: Buffers<'_, R>,
    sr_key: u32,
) -> Result<Vec<Vec<R>>, InterpError> {
    use optc_kernel::reduce::{block_partial, REDUCE_BLOCK};
    let st = kernel.stages.get(stage).ok_or_else(|| {
        InterpError::Shape(format!("rule `{}` has no stage {stage}", kernel.rule))
    })?;
    let Buffers {
        param,
        grad,
        mut states,
    } = bufs;
    let n = param.len();
    let lens_ok = kernel.states.iter().zip(&states).all(|(d, s)| {
        s.len()
            == match dims {
                Some(dims) => dims.len(d.shape),
                None => n,
            }
    });
    if grad.len() != n
        || states.len() != kernel.states.len()
        || !lens_ok
        || dims.is_some_and(|d| d.numel() != n)
    {
        return Err(InterpError::Shape(format!(
            "rule `{}` needs p, g and {} states of one length; got p {n}, g {}, states {:?}",
            kernel.rule,
            kernel.states.len(),
            grad.len(),
            states.iter().map(|s| s.len()).collect::<Vec<_>>()
        )));
    }
    let shapes = kernel.stage_vector_shapes(stage)?;
    let needs_dims = !shapes.is_empty()
        || st.reduce.iter().any(|r| {
            matches!(
                kernel.reductions[r.reduction.index()].scope,
                Scope::Row | Scope::Col
            )
        });
    let dims = match dims {
        Some(d) => d,
        None if needs_dims => {
            return Err(InterpError::Shape(format!(
                "stage {stage} of rule `{}` has [rows]/[cols] values, which need the tensor's matrix shape",
                kernel.rule
            )))
        }
        None => MatrixDims { batch: 1, rows: 1, cols: n },
    };
    let full = |s: Slot| match s {
        Slot::State(id) => kernel.states[id.index()].shape == StateShape::Full,
        _ => true,
    };
    let storage = &kernel.storage;
    // The value memory holds after storing `x` to `slot` (element `i`), and the value a load of
    // `x` from `slot` gives.
    let stored = |slot: Slot, x: R, i: usize| -> R {
        if storage.dtype(slot) == optc_kernel::Dtype::F32 {
            return x;
        }
        let r = optc_kernel::dtype::sr_bits(sr_key, i as u64);
        R::from_f64(f64::from(storage.narrow(slot, x.to_f64() as f32, r)))
    };
    let loaded = |slot: Slot, x: R| -> R {
        if storage.dtype(slot) == optc_kernel::Dtype::F32 {
            return x;
        }
        R::from_f64(f64::from(storage.dtype(slot).round(x.to_f64() as f32)))
    };
    let mut outputs: Vec<Vec<R>> = st.reduce.iter().map(|_| Vec::with_capacity(n)).collect();
    let mut values: Vec<R> = Vec::with_capacity(st.body.len());
    for i in 0..n {
        let (row, col) = (dims.row_of(i), dims.col_of(i));
        eval_arena(&st.body, &mut values, |e| match *e {
            Expr::Uniform(u) => uniforms.get(u.index()).copied().ok_or(()),
            Expr::Vector(v) => {
                let at = match shapes.get(v.index()) {
                    Some(VecShape::Rows) => row,
                    Some(VecShape::Cols) => col,
                    _ => return Err(()),
                };
                vectors
                    .get(v.index())
                    .and_then(|x| x.get(at))
                    .copied()
                    .ok_or(())
            }
            Expr::Load(s) if !full(s) => Err(()),
            Expr::Load(Slot::Param) => Ok(loaded(Slot::Param, param[i])),
            Expr::Load(Slot::Grad) => Ok(loaded(Slot::Grad, grad[i])),
            Expr::Load(slot @ Slot::State(s)) => Ok(loaded(slot, states[s.index()][i])),
            _ => Err(()),
        })
        .map_err(|e| {
            InterpError::Kernel(KernelError {
                rule: kernel.rule.clone(),
                reason: format!("stage {stage} body: {e:?}"),
            })
        })?;
        for (out, r) in outputs.iter_mut().zip(&st.reduce) {
            out.push(values[r.value.index()]);
        }
        for s in &st.stores {
            let v = stored(s.slot, values[s.value.index()], i);
            match s.slot {
                Slot::Param => param[i] = v,
                Slot::Grad => {}
                Slot::State(id) => states[id.index()][i] = v,
            }
        }
    }
    Ok(outputs
        .iter()
        .zip(&st.reduce)
        .map(|(xs, r)| {
            let decl = &kernel.reductions[r.reduction.index()];
            match decl.scope {
                Scope::Row => row_partials(decl.op, xs, dims),
                Scope::Col => col_partials(decl.op, xs, dims),
                // A factored kernel runs row by row: its tensor sums are blocked per row.
                Scope::Tensor | Scope::Step if kernel.is_factored() => {
                    row_partials(decl.op, xs, dims)
                }
                Scope::Tensor | Scope::Step => xs
                    .chunks(REDUCE_BLOCK)
                    .map(|b| block_partial(decl.op, b))
                    .collect(),
            }
        })
        .collect())
}

/// Runs the matrix program of stage `stage` (if it has one) for one tensor of `view`, with the
/// stage's uniforms: `optc_kernel::matrix::run` with the reference triple-loop product, in f32
/// (the meaning every backend is judged against). Call it before [`run_stage`] of that stage.
pub fn run_matrix<R: Real>(
    kernel: &Kernel,
    stage: usize,
    uniforms: &[R],
    bufs: &mut Buffers<'_, R>,
    view: WideView,
) -> Result<(), InterpError> {
    let Some(program) = kernel.stages.get(stage).and_then(|s| s.matrix.as_ref()) else {
        return Ok(());
    };
    let n = view.rows * view.cols;
    if bufs.param.len() != n {
        return Err(InterpError::Shape(format!(
            "rule `{}`: a tensor of {} elements viewed as {}×{}",
            kernel.rule,
            bufs.param.len(),
            view.rows,
            view.cols
        )));
    }
    let to32 = |xs: &[R]| xs.iter().map(|x| x.to_f64() as f32).collect::<Vec<f32>>();
    let read = |slot: Slot| -> Option<Vec<f32>> {
        Some(match slot {
            Slot::Param => to32(bufs.param),
            Slot::Grad => to32(bufs.grad),
            Slot::State(s) => to32(bufs.states.get(s.index())?),
        })
    };
    let u32s: Vec<f32> = uniforms.iter().map(|u| u.to_f64() as f32).collect();
    let outs = matrix::run(program, &u32s, view, &read, &mut |a, b| {
        reference_matmul(a, b)
    })
    .map_err(InterpError::Shape)?;
    for (o, m) in program.outputs.iter().zip(outs) {
        let mut data = vec![0.0f32; n];
        store_wide(&m, &mut data, view);
        let target: &mut [R] = match o.slot {
            Slot::State(s) => bufs
                .states
                .get_mut(s.index())
                .ok_or_else(|| InterpError::Shape("a matrix output has no buffer".into()))?,
            _ => return Err(InterpError::Shape("a matrix output writes p or g".into())),
        };
        for (t, x) in target.iter_mut().zip(data) {
            *t = R::from_f64(x as f64);
        }
    }
    Ok(())
}

fn check_shapes<R>(kernel: &Kernel, ts: &TensorStep<'_, R>) -> Result<(), InterpError> {
    let bufs = &ts.bufs;
    let n = bufs.param.len();
    if kernel.is_factored() {
        let Some(dims) = ts.dims else {
            return Err(InterpError::Shape(format!(
                "rule `{}` has [rows]/[cols] values, so each tensor needs its matrix shape (`TensorStep::dims`)",
                kernel.rule
            )));
        };
        let lens_ok = kernel
            .states
            .iter()
            .zip(&bufs.states)
            .all(|(d, s)| s.len() == dims.len(d.shape));
        if dims.numel() != n
            || bufs.grad.len() != n
            || !lens_ok
            || bufs.states.len() != kernel.states.len()
        {
            return Err(InterpError::Shape(format!(
                "buffer lengths do not fit {dims:?}: p has {n}, g has {}, states have {:?}",
                bufs.grad.len(),
                bufs.states.iter().map(|s| s.len()).collect::<Vec<_>>()
            )));
        }
    } else if bufs.grad.len() != n || bufs.states.iter().any(|s| s.len() != n) {
        return Err(InterpError::Shape(format!(
            "buffer lengths differ: p has {n}, g has {}, states have {:?}",
            bufs.grad.len(),
            bufs.states.iter().map(|s| s.len()).collect::<Vec<_>>()
        )));
    }
    if bufs.states.len() != kernel.states.len() {
        return Err(InterpError::Shape(format!(
            "rule `{}` needs {} state buffers, got {}",
            kernel.rule,
            kernel.states.len(),
            bufs.states.len()
        )));
    }
    if ts.scalars.len() != kernel.scalars.len() || ts.hypers.len() != kernel.hypers.len() {
        return Err(InterpError::Shape(format!(
            "rule `{}` needs {} hypers and {} scalar states, got {} and {}",
            kernel.rule,
            kernel.hypers.len(),
            kernel.scalars.len(),
            ts.hypers.len(),
            ts.scalars.len()
        )));
    }
    Ok(())
}
