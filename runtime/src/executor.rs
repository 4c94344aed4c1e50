//! The executor: what a target (interpreter, CPU JIT, CUDA) implements so that one
//! [`Optimizer`](crate::Optimizer) runs on it.
//!
//! The optimizer owns everything that is the same on every target: names, groups, hypers, step
//! counts, scalar states, the host program, the stage schedule, all-or-nothing checks and
//! checkpoints. An executor owns what lives in the target's memory: the loaded kernels and each
//! parameter's per-element state buffers (keyed by the parameter's registration index, each
//! state allocated on its first use by some kernel variant), and it
//! runs one stage of one kernel over a list of tensors whose uniforms are already computed,
//! returning the stage's block partials.
//!
//! Contract: the optimizer checks every name, length and count before it calls an executor, so an
//! executor may treat a mismatch as an internal error. An executor never changes a buffer unless
//! the call succeeds, except `run_stage`, which fails only on a device error (a driver fault),
//! never on user input.

use crate::error::RuntimeError;
use crate::target::Target;
use optc_kernel::artifact::PtxModule;
use optc_kernel::ValidKernel;

/// A parameter and its gradient as the caller holds them for one step.
pub(crate) enum TensorData<'a> {
    /// Host memory (the interpreter and CPU targets; CUDA copies to and from the device).
    Host {
        /// The parameter, updated in place, in its storage dtype.
        param: crate::buf::BufMut<'a>,
        /// Its gradient, in its storage dtype.
        grad: crate::buf::BufRef<'a>,
    },
    /// Device memory of the optimizer's CUDA context.
    #[cfg(feature = "cuda")]
    Device(crate::cuda::DeviceTensor<'a>),
}

impl TensorData<'_> {
    /// The dtypes of the parameter and the gradient, as given (host or device memory).
    pub fn dtypes(&self) -> (optc_kernel::Dtype, optc_kernel::Dtype) {
        match self {
            TensorData::Host { param, grad } => (param.dtype(), grad.dtype()),
            #[cfg(feature = "cuda")]
            TensorData::Device(d) => (d.param_dtype, d.grad_dtype),
        }
    }

    /// Elements of the parameter and of the gradient.
    pub fn lens(&self) -> (usize, usize) {
        match self {
            TensorData::Host { param, grad } => (param.len(), grad.len()),
            #[cfg(feature = "cuda")]
            TensorData::Device(d) => (d.param_len, d.grad_len),
        }
    }
}

/// One tensor's part of a stage.
pub(crate) struct StageTensor<'s, 'a> {
    /// The parameter's registration index (the executor finds its states by it).
    pub param: usize,
    /// The parameter and gradient.
    pub data: &'s mut TensorData<'a>,
    /// The stage's uniforms for this tensor, rounded to f32.
    pub uniforms: Vec<f32>,
    /// The stage's `[rows]`/`[cols]` values for this tensor (`Kernel::stage_vectors`), rounded
    /// to f32; empty for kernels without them.
    #[cfg_attr(not(feature = "compiler"), allow(dead_code))]
    pub vectors: Vec<Vec<f32>>,
    /// The tensor seen as matrices (its last two dims), for kernels with `[rows]`/`[cols]` values.
    #[cfg_attr(not(feature = "compiler"), allow(dead_code))]
    pub dims: Option<optc_kernel::MatrixDims>,
    /// The tensor's matrix view (tensors of 2 or more dims), for matrix programs (the host
    /// executors run them on the host, the CUDA one through cuBLAS).
    #[cfg_attr(not(feature = "compiler"), allow(dead_code))]
    pub view: Option<optc_kernel::matrix::WideView>,
    /// The tensor's stochastic-rounding key for this step (`Storage::sr_key`; 0 without).
    #[cfg_attr(not(feature = "compiler"), allow(dead_code))]
    pub sr_key: u32,
}

/// A stage's block partials: `[tensor][reduce output][block]` (for a Row- or Col-scope output,
/// the layout of `optc_kernel::reduce::{row_partials, col_partials}`).
pub(crate) type Partials = Vec<Vec<Vec<f32>>>;

/// How a new state buffer starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum StateInit {
    /// Every element is this value.
    Value(f32),
    /// A copy of the parameter as it is before the first step.
    Param,
}

/// A target's memory and kernels. See the module docs.
pub(crate) trait Executor: Send {
    /// The target this executor runs on.
    fn target(&self) -> Target;

    /// Compiles or loads `kernel` for this target, with its PTX where the rule came with one
    /// (an artifact); returns its index for [`Executor::run_stage`]. `slots[i]` is the position
    /// of the kernel's state `i` among the parameter's states (its flag set's state list: a
    /// kernel variant uses some of them).
    fn load(
        &mut self,
        kernel: ValidKernel,
        ptx: Option<&PtxModule>,
        slots: Vec<usize>,
    ) -> Result<usize, RuntimeError>;

    /// The kernel of index `kernel`.
    fn kernel(&self, kernel: usize) -> &ValidKernel;

    /// The number of loaded kernels.
    fn kernel_count(&self) -> usize;

    /// The position of each state of kernel `kernel` among a parameter's states.
    fn positions(&self, kernel: usize) -> Result<&[usize], RuntimeError>;

    /// Allocates states of parameter `param`, which has `lens.len()` states in all, state `i`
    /// of `lens[i]` elements (the parameter's length, or a `[rows]`/`[cols]` state's): each
    /// `(position, init)` of `init`, from `data` where a state starts as a copy of the
    /// parameter. The parameter's other states are kept (or, for its first, not allocated).
    fn create_states(
        &mut self,
        param: usize,
        lens: &[usize],
        init: &[(usize, StateInit)],
        data: &TensorData<'_>,
    ) -> Result<(), RuntimeError>;

    /// Sets the storage dtype of each state of parameter `param`, by position (called once, when
    /// the parameter is registered, before any of its states exists). An executor that keeps
    /// only f32 states refuses any other dtype.
    fn set_state_dtypes(
        &mut self,
        param: usize,
        dtypes: Vec<optc_kernel::Dtype>,
    ) -> Result<(), RuntimeError> {
        let _ = param;
        match dtypes.iter().find(|&&d| d != optc_kernel::Dtype::F32) {
            None => Ok(()),
            Some(d) => Err(RuntimeError::Unsupported(format!(
                "{} keeps f32 states only; a {d} state runs on the interpreter and the CPU",
                self.target()
            ))),
        }
    }

    /// The bytes of memory parameter `param`'s allocated states take.
    fn state_bytes(&self, param: usize) -> usize {
        let _ = param;
        0
    }

    /// Forgets the states of parameter `param` at `which` positions, or all of them with `None`
    /// (none is not an error).
    fn drop_states(&mut self, param: usize, which: Option<&[usize]>);

    /// Which states of parameter `param` are allocated, by position (empty when none is).
    fn allocated(&self, param: usize) -> Vec<bool>;

    /// Runs stage `stage` of kernel `kernel` over `tensors` (each of which has the states the
    /// kernel uses). Returns the stage's block partials: per tensor, per reduce output of the
    /// stage (in `Stage::reduce` order), one f32 per block of `REDUCE_BLOCK` elements in block
    /// order, each computed in the order of `optc_kernel::reduce::block_partial`.
    fn run_stage(
        &mut self,
        kernel: usize,
        stage: usize,
        tensors: &mut [StageTensor<'_, '_>],
    ) -> Result<Partials, RuntimeError>;

    /// Copies parameter `param`'s states to the host, by position (`None`: not allocated).
    fn read_states(&self, param: usize) -> Result<Vec<Option<Vec<f32>>>, RuntimeError>;

    /// Replaces the states of each `(param, values)` (from a checkpoint), by position, creating
    /// them where a parameter had none. All or nothing: on error no parameter's states have
    /// changed.
    fn write_states(
        &mut self,
        states: Vec<(usize, Vec<Option<Vec<f32>>>)>,
    ) -> Result<(), RuntimeError>;

    /// Copies parameter `param`'s states to the host in their storage dtypes, by position (an
    /// int8 state as its codes and scales); an executor of f32 states gives them as f32.
    fn read_state_bufs(
        &self,
        param: usize,
    ) -> Result<Vec<Option<crate::buf::BufVec>>, RuntimeError> {
        Ok(self
            .read_states(param)?
            .into_iter()
            .map(|b| b.map(crate::buf::BufVec::F32))
            .collect())
    }

    /// [`Executor::write_states`] with buffers in their storage dtypes (exact: an int8 state's
    /// codes and scales are kept as given).
    fn write_state_bufs(
        &mut self,
        states: Vec<(usize, Vec<Option<crate::buf::BufVec>>)>,
    ) -> Result<(), RuntimeError> {
        let f32s = states
            .into_iter()
            .map(|(p, bufs)| (p, bufs.into_iter().map(|b| b.map(|b| b.to_f32())).collect()))
            .collect();
        self.write_states(f32s)
    }

    /// Copies state `state` of kernel `kernel` of parameter `param` to the host (a
    /// `[rows]`/`[cols]` state the host's vector program reads).
    fn read_state(
        &self,
        param: usize,
        kernel: usize,
        state: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        let at = *self
            .positions(kernel)?
            .get(state)
            .ok_or_else(|| RuntimeError::Unsupported("internal: no such state".into()))?;
        self.read_states(param)?
            .into_iter()
            .nth(at)
            .flatten()
            .ok_or_else(|| RuntimeError::Unsupported("internal: a state is not allocated".into()))
    }

    /// Replaces states of parameter `param` (`(state, values)` with `state` a state of kernel
    /// `kernel`: the new `[rows]`/`[cols]` states the host's vector program computed).
    fn write_vector_states(
        &mut self,
        param: usize,
        kernel: usize,
        values: Vec<(usize, Vec<f32>)>,
    ) -> Result<(), RuntimeError> {
        let positions = self.positions(kernel)?.to_vec();
        let mut all = self.read_states(param)?;
        for (s, v) in values {
            match positions.get(s).and_then(|&at| all.get_mut(at)?.as_mut()) {
                Some(slot) if slot.len() == v.len() => *slot = v,
                _ => return Err(RuntimeError::Unsupported("internal: no such state".into())),
            }
        }
        self.write_states(vec![(param, all)])
    }

    /// The CUDA executor, when this is one (for the optimizer's CUDA-only accessors).
    #[cfg(feature = "cuda")]
    fn cuda(&mut self) -> Option<&mut crate::cuda::CudaExecutor> {
        None
    }

    /// The CUDA executor, when this is one.
    #[cfg(feature = "cuda")]
    fn cuda_ref(&self) -> Option<&crate::cuda::CudaExecutor> {
        None
    }
}
