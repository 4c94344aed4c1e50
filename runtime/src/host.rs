//! The host executors: the reference interpreter and the CPU JIT, over states in host memory.
//!
//! Takes validated kernels; gives an [`Executor`] whose state buffers are `Vec<f32>` per
//! parameter. The CPU target runs a stage with one pass of the rayon pool over every tensor
//! ([`crate::cpu::CpuKernel`]); the interpreter runs one element at a time on one thread and is
//! the meaning every other target is judged against.

use crate::buf::BufVec;
use crate::cpu::{
    BufMut, BufRef, CpuKernel, CpuOptions, Partials, RowKernel, RowTensor, TensorArgs,
};
use crate::error::RuntimeError;
use crate::executor::{self, Executor, StageTensor, StateInit, TensorData};
use crate::matrix::{self, MatrixArgs};
use crate::state_slots;
use crate::target::Target;
use optc_kernel::artifact::PtxModule;
use optc_kernel::matrix::{reference_matmul, Mat};
use optc_kernel::ValidKernel;
use optc_kernel::{Dtype, Slot};
use std::borrow::Cow;
use std::sync::Arc;

enum Compiled {
    Cpu(Box<CpuKernel>, ValidKernel),
    /// A factored kernel on the CPU: its row form, called per row.
    CpuRows(Box<RowKernel>, ValidKernel),
    Interp(ValidKernel),
}

/// States in host memory, kernels for the CPU or the interpreter.
pub(crate) struct HostExecutor {
    target: Target,
    allow_fma: bool,
    pool: Option<Arc<rayon::ThreadPool>>,
    /// Each loaded kernel and the position of each of its states among a parameter's.
    kernels: Vec<(Compiled, Vec<usize>)>,
    /// Per registered parameter: its state buffers by position, each once it is allocated, in
    /// its storage dtype.
    states: Vec<Vec<Option<BufVec>>>,
    /// Per registered parameter: the storage dtype of each state, by position.
    dtypes: Vec<Vec<Dtype>>,
}

impl HostExecutor {
    /// An executor for `Target::Cpu` (on `pool`, or rayon's global pool) or `Target::Interp`.
    pub fn new(target: Target, allow_fma: bool, pool: Option<Arc<rayon::ThreadPool>>) -> Self {
        HostExecutor {
            target,
            allow_fma,
            pool,
            kernels: Vec::new(),
            states: Vec::new(),
            dtypes: Vec::new(),
        }
    }

    /// The storage dtype of state position `at` of parameter `param` (f32 unless set).
    fn dtype(&self, param: usize, at: usize) -> Dtype {
        state_slots::dtype(&self.dtypes, param, at)
    }
}

fn internal(what: &str) -> RuntimeError {
    RuntimeError::Unsupported(format!("internal: {what}"))
}

fn host<'s>(data: &'s mut TensorData<'_>) -> Result<(BufMut<'s>, BufRef<'s>), RuntimeError> {
    match data {
        TensorData::Host { param, grad } => Ok((param.reborrow(), *grad)),
        #[cfg(feature = "cuda")]
        TensorData::Device(_) => Err(RuntimeError::Unsupported(
            "device buffers were given to an optimizer on a host target; step them with an optimizer built for Target::Cuda".into(),
        )),
    }
}

impl Executor for HostExecutor {
    fn target(&self) -> Target {
        self.target
    }

    fn load(
        &mut self,
        kernel: ValidKernel,
        _ptx: Option<&PtxModule>,
        slots: Vec<usize>,
    ) -> Result<usize, RuntimeError> {
        let compiled = match self.target {
            Target::Interp => Compiled::Interp(kernel),
            Target::Cpu if kernel.is_factored() => Compiled::CpuRows(
                Box::new(RowKernel::compile(&kernel, self.allow_fma)?),
                kernel,
            ),
            Target::Cpu => {
                let options = CpuOptions {
                    allow_fma: self.allow_fma,
                    ..CpuOptions::default()
                };
                Compiled::Cpu(
                    Box::new(CpuKernel::compile_with(&kernel, &options)?),
                    kernel,
                )
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(internal(&format!(
                    "the host executor cannot run on {other}"
                )))
            }
        };
        self.kernels.push((compiled, slots));
        Ok(self.kernels.len() - 1)
    }

    fn kernel(&self, kernel: usize) -> &ValidKernel {
        match &self.kernels[kernel].0 {
            Compiled::Cpu(_, k) | Compiled::CpuRows(_, k) | Compiled::Interp(k) => k,
        }
    }

    fn kernel_count(&self) -> usize {
        self.kernels.len()
    }

    fn create_states(
        &mut self,
        param: usize,
        lens: &[usize],
        init: &[(usize, StateInit)],
        data: &TensorData<'_>,
    ) -> Result<(), RuntimeError> {
        let p: Vec<f32> = match data {
            TensorData::Host { param, .. } => param.to_f32(),
            #[cfg(feature = "cuda")]
            TensorData::Device(_) => Vec::new(),
        };
        let buffers = init
            .iter()
            .map(|&(at, i)| {
                let len = *lens
                    .get(at)
                    .ok_or_else(|| internal("a state position out of range"))?;
                let d = self.dtype(param, at);
                match i {
                    StateInit::Value(x) => Ok((at, BufVec::splat(d, x, len))),
                    StateInit::Param if p.len() == len => Ok((at, BufVec::from_f32(d, &p))),
                    StateInit::Param => {
                        Err(internal("a state copies a parameter of another length"))
                    }
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        state_slots::place(&mut self.states, param, lens.len(), buffers);
        Ok(())
    }

    fn drop_states(&mut self, param: usize, which: Option<&[usize]>) {
        state_slots::drop(&mut self.states, param, which);
    }

    fn allocated(&self, param: usize) -> Vec<bool> {
        state_slots::allocated(&self.states, param)
    }

    fn run_stage(
        &mut self,
        kernel: usize,
        stage: usize,
        tensors: &mut [StageTensor<'_, '_>],
    ) -> Result<executor::Partials, RuntimeError> {
        let n = tensors.len();
        let mut vecs = Vec::with_capacity(n);
        let views: Vec<_> = tensors.iter().map(|t| t.view).collect();
        if let Some(last) = tensors.iter().map(|t| t.param).max() {
            state_slots::slot(&mut self.states, last);
        }
        let (compiled, positions) = &self.kernels[kernel];
        // Borrow every tensor's states at once: each parameter appears at most once per step.
        let mut slots: Vec<Option<&mut Vec<Option<BufVec>>>> =
            self.states.iter_mut().map(Some).collect();
        let mut args = Vec::with_capacity(n);
        for t in tensors.iter_mut() {
            let states = slots
                .get_mut(t.param)
                .and_then(Option::take)
                .ok_or_else(|| internal("a stepped parameter has no states"))?;
            let mut mine: Vec<Option<BufMut<'_>>> = states
                .iter_mut()
                .map(|b| b.as_mut().map(BufVec::view))
                .collect();
            let states = positions
                .iter()
                .map(|&at| {
                    mine.get_mut(at)
                        .and_then(Option::take)
                        .ok_or_else(|| internal("a kernel's state is not allocated"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (param, grad) = host(t.data)?;
            args.push(TensorArgs {
                param,
                grad,
                states,
                uniforms: std::mem::take(&mut t.uniforms),
                sr_key: t.sr_key,
            });
            vecs.push((std::mem::take(&mut t.vectors), t.dims));
        }
        let (valid, cpu) = match compiled {
            Compiled::Cpu(_, k) | Compiled::CpuRows(_, k) => (k, true),
            Compiled::Interp(k) => (k, false),
        };
        if let Some(program) = &valid.stages[stage].matrix {
            let threads = self
                .pool
                .as_deref()
                .map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
            for (a, view) in args.iter_mut().zip(&views) {
                // A matrix program reads and writes f32 states only (`Storage::check`); a 16-bit
                // `p` or `g` it reads is widened (exactly), one it does not read is not copied, and
                // a 16-bit state (never one a program touches) is passed empty: `matrix::run`
                // checks every length it reads.
                let reads = program.reads();
                let param: Cow<'_, [f32]> = match a.param.as_f32_ref() {
                    Some(x) => Cow::Borrowed(x),
                    None if reads.contains(&Slot::Param) => Cow::Owned(a.param.to_f32()),
                    None => Cow::Owned(Vec::new()),
                };
                let grad: Cow<'_, [f32]> = match a.grad.as_f32() {
                    Some(x) => Cow::Borrowed(x),
                    None if reads.contains(&Slot::Grad) => Cow::Owned(a.grad.to_f32()),
                    None => Cow::Owned(Vec::new()),
                };
                let mut states: Vec<&mut [f32]> = a
                    .states
                    .iter_mut()
                    .map(|s| s.as_f32().unwrap_or(&mut []))
                    .collect();
                let margs = MatrixArgs {
                    param: &param,
                    grad: &grad,
                    states: &mut states,
                };
                let run = || {
                    let mut mm = |x: &Mat, y: &Mat| {
                        if cpu {
                            matrix::cpu::matmul(x, y, threads)
                        } else {
                            reference_matmul(x, y)
                        }
                    };
                    matrix::run_program(&valid.rule, program, &a.uniforms, *view, margs, &mut mm)
                };
                match self.pool.as_deref() {
                    Some(pool) if cpu => pool.install(run)?,
                    _ => run()?,
                }
            }
        }
        match compiled {
            Compiled::Cpu(k, valid) => {
                let mut partials = Partials::new();
                k.run_stage(stage, &mut args, &mut partials, self.pool.as_deref())?;
                let outputs = valid.stages[stage].reduce.len();
                Ok((0..n)
                    .map(|t| (0..outputs).map(|o| partials.get(t, o).to_vec()).collect())
                    .collect())
            }
            Compiled::CpuRows(k, _) => {
                let mut rows = Vec::with_capacity(n);
                for (a, (vectors, dims)) in args.into_iter().zip(vecs) {
                    let dims = dims.ok_or_else(|| internal("a factored stage without dims"))?;
                    rows.push(RowTensor {
                        args: a,
                        vectors,
                        dims,
                    });
                }
                Ok(k.run_stage(stage, &mut rows, self.pool.as_deref())?)
            }
            Compiled::Interp(k) => args
                .into_iter()
                .zip(vecs)
                .map(|(a, (vectors, dims))| interp_stage(k, stage, a, &vectors, dims))
                .collect(),
        }
    }

    fn read_states(&self, param: usize) -> Result<Vec<Option<Vec<f32>>>, RuntimeError> {
        Ok(self
            .states
            .get(param)
            .map(|s| s.iter().map(|b| b.as_ref().map(BufVec::to_f32)).collect())
            .unwrap_or_default())
    }

    fn write_states(
        &mut self,
        states: Vec<(usize, Vec<Option<Vec<f32>>>)>,
    ) -> Result<(), RuntimeError> {
        for (param, values) in states {
            let typed = values
                .iter()
                .enumerate()
                .map(|(at, v)| {
                    v.as_ref()
                        .map(|v| BufVec::from_f32(self.dtype(param, at), v))
                })
                .collect();
            *state_slots::slot(&mut self.states, param) = typed;
        }
        Ok(())
    }

    fn read_state_bufs(&self, param: usize) -> Result<Vec<Option<BufVec>>, RuntimeError> {
        Ok(self.states.get(param).cloned().unwrap_or_default())
    }

    fn write_state_bufs(
        &mut self,
        states: Vec<(usize, Vec<Option<BufVec>>)>,
    ) -> Result<(), RuntimeError> {
        for (param, bufs) in states {
            *state_slots::slot(&mut self.states, param) = bufs;
        }
        Ok(())
    }

    fn set_state_dtypes(&mut self, param: usize, dtypes: Vec<Dtype>) -> Result<(), RuntimeError> {
        state_slots::set_dtypes(&mut self.dtypes, param, dtypes);
        Ok(())
    }

    fn state_bytes(&self, param: usize) -> usize {
        state_slots::bytes(&self.states, param, BufVec::bytes)
    }

    fn read_state(
        &self,
        param: usize,
        kernel: usize,
        state: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        let at = self.positions(kernel)?.get(state).copied();
        at.and_then(|at| {
            self.states
                .get(param)?
                .get(at)?
                .as_ref()
                .map(BufVec::to_f32)
        })
        .ok_or_else(|| internal("a stepped parameter has no such state"))
    }

    fn write_vector_states(
        &mut self,
        param: usize,
        kernel: usize,
        values: Vec<(usize, Vec<f32>)>,
    ) -> Result<(), RuntimeError> {
        let positions = self.positions(kernel)?.to_vec();
        let states = self
            .states
            .get_mut(param)
            .ok_or_else(|| internal("a stepped parameter has no states"))?;
        let mut at = Vec::with_capacity(values.len());
        for (s, v) in &values {
            match positions
                .get(*s)
                .and_then(|&p| Some((p, states.get(p)?.as_ref()?)))
            {
                Some((p, b)) if b.len() == v.len() => at.push(p),
                _ => return Err(internal("a vector state of another length")),
            }
        }
        for (p, (_, v)) in at.into_iter().zip(values) {
            let d = states[p].as_ref().map(BufVec::dtype).unwrap_or_default();
            states[p] = Some(BufVec::from_f32(d, &v));
        }
        Ok(())
    }

    fn positions(&self, kernel: usize) -> Result<&[usize], RuntimeError> {
        self.kernels
            .get(kernel)
            .map(|(_, p)| p.as_slice())
            .ok_or_else(|| internal("no such kernel"))
    }
}

/// One tensor through one stage of the interpreter, with the stage's uniforms already computed:
/// `optc_compiler::backend::interp::run_stage`, the one meaning of a stage.
fn interp_stage(
    kernel: &ValidKernel,
    stage: usize,
    args: TensorArgs<'_>,
    vectors: &[Vec<f32>],
    dims: Option<optc_kernel::MatrixDims>,
) -> Result<Vec<Vec<f32>>, RuntimeError> {
    use optc_compiler::backend::interp::{run_stage_matrix, Buffers};
    let TensorArgs {
        param,
        grad,
        states,
        uniforms,
        sr_key,
    } = args;
    // The interpreter steps f32 values of the storage dtypes: widen, step, narrow (exact).
    let mut param = param;
    let mut states = states;
    let mut p = param.to_f32();
    let g = grad.to_f32();
    let mut s: Vec<Vec<f32>> = states.iter().map(BufMut::to_f32).collect();
    let bufs = Buffers {
        param: &mut p,
        grad: &g,
        states: s.iter_mut().map(Vec::as_mut_slice).collect(),
    };
    // Quantized int8 states: the interpreter runs with them as f32 and each one the stage stores
    // is quantized from its new values here (`optc_kernel::int8::store`, what the interpreter's
    // own int8 store does), so the codes are those of the values, not of their round trip.
    let quantized = states.iter().any(|b| matches!(b, BufMut::Int8(_)));
    let unquantized;
    let run_kernel: &optc_kernel::Kernel = if quantized {
        let mut k = optc_kernel::Kernel::clone(kernel);
        for d in &mut k.storage.states {
            if *d == Dtype::Int8 {
                *d = Dtype::F32;
            }
        }
        unquantized = k;
        &unquantized
    } else {
        kernel
    };
    let out = run_stage_matrix(run_kernel, stage, &uniforms, vectors, dims, bufs, sr_key)
        .map_err(|e| RuntimeError::Interp(e.to_string()))?;
    param.set_from_f32(&p);
    let st = &kernel.stages[stage];
    for (i, (b, v)) in states.iter_mut().zip(&s).enumerate() {
        let slot = optc_kernel::Slot::State(optc_kernel::StateId::new(i));
        if !matches!(b, BufMut::Int8(_)) || st.stores_slot(slot) {
            b.set_from_f32(v);
        }
    }
    Ok(out)
}
