//! The host executors: the reference interpreter and the CPU JIT, over states in host memory.
//!
//! Takes validated kernels; gives an [`Executor`] whose state buffers are `Vec<f32>` per
//! parameter. The CPU target runs a stage with one pass of the rayon pool over every tensor
//! ([`crate::cpu::CpuKernel`]); the interpreter runs one element at a time on one thread and is
//! the meaning every other target is judged against.

use crate::cpu::{BufMut, CpuKernel, CpuOptions, Partials, RowKernel, RowTensor, TensorArgs};
use crate::error::RuntimeError;
use crate::executor::{self, Executor, StageTensor, StateInit, TensorData};
use crate::matrix::{self, MatrixArgs};
use crate::target::Target;
use optc_kernel::artifact::PtxModule;
use optc_kernel::matrix::{reference_matmul, Mat};
use optc_kernel::ValidKernel;
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
    /// Per registered parameter: its state buffers by position, each once it is allocated.
    states: Vec<Vec<Option<Vec<f32>>>>,
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
        }
    }

    fn slot(&mut self, param: usize) -> &mut Vec<Option<Vec<f32>>> {
        if self.states.len() <= param {
            self.states.resize_with(param + 1, Vec::new);
        }
        &mut self.states[param]
    }
}

fn internal(what: &str) -> RuntimeError {
    RuntimeError::Unsupported(format!("internal: {what}"))
}

fn host<'s>(data: &'s mut TensorData<'_>) -> Result<(&'s mut [f32], &'s [f32]), RuntimeError> {
    match data {
        TensorData::Host { param, grad } => Ok((param, grad)),
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
        if !kernel.storage.is_f32() {
            return Err(RuntimeError::Unsupported(format!(
                "rule `{}` stores buffers in 16-bit dtypes: the Optimizer keeps f32 buffers; \
                 run such a kernel with optc_runtime::cpu::CpuKernel on bf16/f16 slices",
                kernel.rule
            )));
        }
        let compiled = match self.target {
            Target::Interp => Compiled::Interp(kernel),
            Target::Cpu if kernel.is_factored() => Compiled::CpuRows(
                Box::new(RowKernel::compile(&kernel, self.allow_fma)?),
                kernel,
            ),
            Target::Cpu => {
                let options = CpuOptions {
                    allow_fma: self.allow_fma,
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
        let p: &[f32] = match data {
            TensorData::Host { param, .. } => param,
            #[cfg(feature = "cuda")]
            TensorData::Device(_) => &[],
        };
        let buffers = init
            .iter()
            .map(|&(at, i)| {
                let len = *lens
                    .get(at)
                    .ok_or_else(|| internal("a state position out of range"))?;
                match i {
                    StateInit::Value(x) => Ok((at, vec![x; len])),
                    StateInit::Param if p.len() == len => Ok((at, p.to_vec())),
                    StateInit::Param => {
                        Err(internal("a state copies a parameter of another length"))
                    }
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let states = self.slot(param);
        states.resize_with(lens.len(), || None);
        for (at, b) in buffers {
            states[at] = Some(b);
        }
        Ok(())
    }

    fn drop_states(&mut self, param: usize, which: Option<&[usize]>) {
        if let Some(s) = self.states.get_mut(param) {
            match which {
                None => s.clear(),
                Some(which) => {
                    for &i in which {
                        if let Some(b) = s.get_mut(i) {
                            *b = None;
                        }
                    }
                    if s.iter().all(Option::is_none) {
                        s.clear();
                    }
                }
            }
        }
    }

    fn allocated(&self, param: usize) -> Vec<bool> {
        self.states
            .get(param)
            .map(|s| s.iter().map(Option::is_some).collect())
            .unwrap_or_default()
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
            self.slot(last);
        }
        let (compiled, positions) = &self.kernels[kernel];
        // Borrow every tensor's states at once: each parameter appears at most once per step.
        let mut slots: Vec<Option<&mut Vec<Option<Vec<f32>>>>> =
            self.states.iter_mut().map(Some).collect();
        let mut args = Vec::with_capacity(n);
        for t in tensors.iter_mut() {
            let states = slots
                .get_mut(t.param)
                .and_then(Option::take)
                .ok_or_else(|| internal("a stepped parameter has no states"))?;
            let mut mine: Vec<Option<&mut [f32]>> = states
                .iter_mut()
                .map(|b| b.as_mut().map(Vec::as_mut_slice))
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
            args.push((param, grad, states, std::mem::take(&mut t.uniforms)));
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
                let margs = MatrixArgs {
                    param: a.0,
                    grad: a.1,
                    states: &mut a.2,
                };
                let run = || {
                    let mut mm = |x: &Mat, y: &Mat| {
                        if cpu {
                            matrix::cpu::matmul(x, y, threads)
                        } else {
                            reference_matmul(x, y)
                        }
                    };
                    matrix::run_program(&valid.rule, program, &a.3, *view, margs, &mut mm)
                };
                match self.pool.as_deref() {
                    Some(pool) if cpu => pool.install(run)?,
                    _ => run()?,
                }
            }
        }
        let mut args: Vec<TensorArgs<'_>> = args
            .into_iter()
            .map(|(p, g, s, u)| TensorArgs::f32(p, g, s, u))
            .collect();
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
        Ok(self.states.get(param).cloned().unwrap_or_default())
    }

    fn write_states(
        &mut self,
        states: Vec<(usize, Vec<Option<Vec<f32>>>)>,
    ) -> Result<(), RuntimeError> {
        for (param, values) in states {
            *self.slot(param) = values;
        }
        Ok(())
    }

    fn read_state(
        &self,
        param: usize,
        kernel: usize,
        state: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        let at = self.positions(kernel)?.get(state).copied();
        at.and_then(|at| self.states.get(param)?.get(at)?.clone())
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
            states[p] = Some(v);
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
    let not_f32 = || internal("a 16-bit buffer on the host executor");
    let BufMut::F32(param) = param else {
        return Err(not_f32());
    };
    let grad = grad.as_f32().ok_or_else(not_f32)?;
    let states = states
        .into_iter()
        .map(|s| match s {
            BufMut::F32(s) => Ok(s),
            _ => Err(not_f32()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bufs = Buffers {
        param,
        grad,
        states,
    };
    run_stage_matrix(kernel, stage, &uniforms, vectors, dims, bufs, sr_key)
        .map_err(|e| RuntimeError::Interp(e.to_string()))
}
