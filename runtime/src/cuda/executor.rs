//! The CUDA executor: the [`Optimizer`](crate::Optimizer)'s target for one device.
//!
//! Takes validated kernels with their PTX (from an artifact, or emitted in process with the
//! feature `compiler`); holds each parameter's per-element states on the device in their storage
//! dtypes (`super::buffers`: f32, bf16, or an int8 state's codes and scales) and steps tensors
//! given as device pointers ([`crate::Update::cuda`], f32, bf16 or f16) or as host buffers
//! (copied to the device in their dtype for the launch and the parameter copied back). Every
//! stage of a step is one launch of the multi-tensor entry over every tensor of the kernel whose
//! states are not quantized, and one launch of the stage's `_q8` entry per tensor whose int8
//! states are ([`entry_for`]), queued on one stream (a factored kernel's stages run in
//! `super::factored`, whose `[rows]`/`[cols]` states stay here); a stage with a matrix program
//! first queues it per tensor on the same stream (cuBLAS, `crate::matrix::cuda`). States start
//! as the host executor's do (`BufVec::splat` / `BufVec::from_f32` of the parameter: one place).
//!
//! Guarantees: no cudarc call is made before the driver library has been found to load; every
//! failure is a [`CudaError`]; the read/write guards of every buffer of a launch (the caller's
//! parameters and gradients, and the states) live until the launch is queued, so work ordered
//! after a buffer's last write on another stream waits for the step.
#![allow(unsafe_code)]

use super::buffers::{check_alignment, DeviceBuf, Staged};
use super::driver;
use super::error::{Context, CudaError};
use super::launch::{launch_q8, launch_stage, Grid, LaunchBuffers};
use super::table::Tensor;
use crate::buf::{BufRef, BufVec};
use crate::error::RuntimeError;
use crate::executor::{Executor, Partials, StageTensor, StateInit, TensorData};
use crate::matrix::cuda::{CudaMatrix, DeviceBuffers};
use crate::state_slots;
use crate::target::Target;
use cudarc::driver::{CudaFunction, CudaModule, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};
use cudarc::nvrtc::Ptx;
use optc_kernel::artifact::{PtxModule, StageEntries};
use optc_kernel::{int8, Dtype, Kernel, Slot, StateId, ValidKernel};
use std::sync::Arc;

/// How kernels are launched. The defaults follow `shared/design/performance.md`: 256 threads
/// per block, at most 8 blocks per multiprocessor (grid-stride loops cover the rest), and chunks
/// of 32768 elements for the multi-tensor entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchShape {
    /// Threads per block.
    pub block: u32,
    /// Most blocks per multiprocessor.
    pub blocks_per_sm: u32,
    /// Elements per chunk of the multi-tensor entry (a positive multiple of 4).
    pub chunk_elems: usize,
}

impl Default for LaunchShape {
    fn default() -> Self {
        LaunchShape {
            block: 256,
            blocks_per_sm: 8,
            chunk_elems: 32768,
        }
    }
}

impl LaunchShape {
    /// Errors unless the shape can be launched.
    pub fn check(&self) -> Result<(), CudaError> {
        if self.block == 0 || self.block > 1024 || self.blocks_per_sm == 0 {
            return Err(CudaError::Buffers(format!("invalid launch shape {self:?}")));
        }
        if self.chunk_elems == 0 || !self.chunk_elems.is_multiple_of(4) {
            return Err(CudaError::Buffers(format!(
                "chunk size {} is not a positive multiple of 4",
                self.chunk_elems
            )));
        }
        Ok(())
    }
}

/// Where the CUDA target runs ([`crate::Options::cuda`]).
#[derive(Clone, Debug, Default)]
pub struct CudaOptions {
    /// The device, when `stream` is `None`.
    pub ordinal: usize,
    /// A stream to do all work on (for example one shared with candle or another cudarc user);
    /// `None` makes a new stream on device `ordinal`.
    pub stream: Option<Arc<CudaStream>>,
    /// The launch shape.
    pub launch: LaunchShape,
}

/// A parameter and gradient in device memory, with the guards that order their use on the
/// optimizer's stream (see [`crate::Update::cuda`]).
pub struct DeviceTensor<'a> {
    pub(crate) param: u64,
    pub(crate) grad: u64,
    pub(crate) param_len: usize,
    pub(crate) grad_len: usize,
    pub(crate) param_dtype: Dtype,
    pub(crate) grad_dtype: Dtype,
    /// Kept until the update is dropped, after every launch of the step is queued.
    _guards: Vec<SyncOnDrop<'a>>,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// The element types of a parameter or gradient in device memory: `f32`, `half::bf16` and
/// `half::f16` (the storage dtypes of [`crate::Options::precision`]'s `param`).
pub trait DeviceDtype: cudarc::driver::DeviceRepr + sealed::Sealed {
    /// The storage dtype of the values.
    const DTYPE: Dtype;
}

impl DeviceDtype for f32 {
    const DTYPE: Dtype = Dtype::F32;
}

impl DeviceDtype for half::bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
}

impl DeviceDtype for half::f16 {
    const DTYPE: Dtype = Dtype::F16;
}

impl<'a> crate::Update<'a> {
    /// An update of parameter `name` from device buffers of the optimizer's context, ordered on
    /// `stream` (the optimizer's [`Optimizer::cuda_stream`](crate::Optimizer::cuda_stream)), of
    /// `f32`, `half::bf16` or `half::f16` values: the optimizer's parameter dtype, or the step is
    /// [`RuntimeError::BufferDtype`].
    pub fn cuda<T: DeviceDtype, P: DevicePtrMut<T>, G: DevicePtr<T>>(
        name: &'a str,
        param: &'a mut P,
        grad: &'a G,
        stream: &'a CudaStream,
    ) -> Self {
        let (param_len, grad_len) = (param.len(), grad.len());
        let (p, ps) = param.device_ptr_mut(stream);
        let (g, gs) = grad.device_ptr(stream);
        crate::Update {
            name,
            data: TensorData::Device(DeviceTensor {
                param: p,
                grad: g,
                param_len,
                grad_len,
                param_dtype: T::DTYPE,
                grad_dtype: T::DTYPE,
                _guards: vec![ps, gs],
            }),
        }
    }

    /// An update of parameter `name` from raw device pointers (from candle, PyTorch, or any CUDA
    /// allocation on the optimizer's context), each holding `len` f32.
    ///
    /// # Safety
    /// `param` and `grad` must each point to `len` f32 in device memory of the optimizer's
    /// context, `param` writable, valid until the step has run on the optimizer's stream, and not
    /// used by other work meanwhile.
    pub unsafe fn cuda_raw(name: &'a str, param: u64, grad: u64, len: usize) -> Self {
        // SAFETY: the caller's guarantee, for f32 values.
        unsafe { Self::cuda_raw_as(name, Dtype::F32, param, grad, len) }
    }

    /// [`Update::cuda_raw`](crate::Update::cuda_raw) with `len` values of `dtype` (`F32`, `Bf16`
    /// or `F16`; another dtype than the optimizer's parameter dtype is
    /// [`RuntimeError::BufferDtype`] at the step).
    ///
    /// # Safety
    /// `param` and `grad` must each point to `len` values of `dtype` in device memory of the
    /// optimizer's context, `param` writable, valid until the step has run on the optimizer's
    /// stream, and not used by other work meanwhile.
    pub unsafe fn cuda_raw_as(
        name: &'a str,
        dtype: Dtype,
        param: u64,
        grad: u64,
        len: usize,
    ) -> Self {
        crate::Update {
            name,
            data: TensorData::Device(DeviceTensor {
                param,
                grad,
                param_len: len,
                grad_len: len,
                param_dtype: dtype,
                grad_dtype: dtype,
                _guards: Vec::new(),
            }),
        }
    }
}

/// Which entry of a stage steps a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// The multi-tensor entry (every state f32 or 16-bit; with the other tensors of the kernel).
    Multi,
    /// The `_q8` entry, alone: the tensor's int8 states are quantized.
    Int8,
}

/// The entry that steps a tensor of `len` elements with `kernel`: `_q8` when some state is
/// stored as int8 for that length (`optc_kernel::int8::stored_dtype`, the one place that
/// decides it: tensors under `MIN_QUANT_ELEMENTS` keep f32 states), the multi-tensor entry
/// otherwise.
pub(crate) fn entry_for(kernel: &Kernel, len: usize) -> Entry {
    let quantized = (0..kernel.states.len()).any(|i| {
        int8::stored_dtype(&kernel.storage, Slot::State(StateId::new(i)), len) == Dtype::Int8
    });
    if quantized {
        Entry::Int8
    } else {
        Entry::Multi
    }
}

/// A kernel loaded on the device.
struct Loaded {
    kernel: ValidKernel,
    /// The position of each of the kernel's states among a parameter's.
    slots: Vec<usize>,
    /// Each stage's multi-tensor entry, with the stage's entry list from the artifact, and its
    /// `_q8` entry for a kernel with int8 states.
    stages: Vec<Stage>,
    /// A factored kernel's entries, per stage (empty otherwise; `super::factored`).
    factored: Vec<super::factored::FactoredStage>,
    _module: Arc<CudaModule>,
}

/// One stage's loaded entries.
struct Stage {
    multi: CudaFunction,
    entries: StageEntries,
    int8: Option<CudaFunction>,
}

/// States on one CUDA device, kernels loaded from PTX. See the module docs.
pub(crate) struct CudaExecutor {
    stream: Arc<CudaStream>,
    shape: LaunchShape,
    multiprocessors: u32,
    kernels: Vec<Loaded>,
    /// Per registered parameter: its state buffers by position, each once it is allocated.
    states: Vec<Vec<Option<DeviceBuf>>>,
    /// Per registered parameter: the storage dtype of each state, by position.
    dtypes: Vec<Vec<Dtype>>,
    buffers: LaunchBuffers,
    /// cuBLAS and the matrix scratch pool, once a kernel with matrix stages is loaded.
    matrix: Option<CudaMatrix>,
}

fn internal(what: &str) -> RuntimeError {
    RuntimeError::Unsupported(format!("internal: {what}"))
}

impl CudaExecutor {
    /// An executor on `options.stream`, or on a new stream of device `options.ordinal`.
    pub fn new(options: &CudaOptions) -> Result<CudaExecutor, CudaError> {
        options.launch.check()?;
        let stream = match &options.stream {
            Some(s) => s.clone(),
            None => {
                let ctx = driver::context(options.ordinal)?;
                ctx.new_stream().during("creating a stream")?
            }
        };
        let multiprocessors =
            u32::try_from(driver::multiprocessors(stream.context())?).unwrap_or(u32::MAX);
        Ok(CudaExecutor {
            stream,
            shape: options.launch,
            multiprocessors,
            kernels: Vec::new(),
            states: Vec::new(),
            dtypes: Vec::new(),
            buffers: LaunchBuffers::default(),
            matrix: None,
        })
    }

    /// The stream all work is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Sets the launch shape for later steps.
    pub fn set_launch_shape(&mut self, shape: LaunchShape) -> Result<(), CudaError> {
        shape.check()?;
        self.shape = shape;
        Ok(())
    }

    /// The launch shape in use.
    pub fn launch_shape(&self) -> LaunchShape {
        self.shape
    }

    /// The storage dtype of state position `at` of parameter `param` (f32 unless set).
    fn dtype(&self, param: usize, at: usize) -> Dtype {
        state_slots::dtype(&self.dtypes, param, at)
    }

    /// A new state buffer of `len` elements of storage dtype `d`, every one `init` or a copy of
    /// `data`'s parameter, rounded as the host executor rounds it (`BufVec::splat`,
    /// `BufVec::from_f32`).
    fn new_state(
        &self,
        len: usize,
        d: Dtype,
        init: StateInit,
        data: &TensorData<'_>,
        name: &str,
    ) -> Result<DeviceBuf, RuntimeError> {
        let what = format!("state `{name}` ({len} values)");
        let stream = &self.stream;
        Ok(match (init, data) {
            (StateInit::Value(x), _) => DeviceBuf::splat(stream, d, x, len, &what)?,
            (StateInit::Param, TensorData::Host { param, .. }) => {
                if param.len() != len {
                    return Err(internal("a state copies a parameter of another length"));
                }
                let p = BufRef::from(param).to_f32();
                DeviceBuf::upload(stream, &BufVec::from_f32(d, &p), &what)?
            }
            (StateInit::Param, TensorData::Device(t)) => {
                if t.param_len != len {
                    return Err(internal("a state copies a parameter of another length"));
                }
                let stored = int8::dtype_for_len(d, len);
                let copy = DeviceBuf::copy_of(stream, t.param_dtype, t.param, len, &what)?;
                if stored == t.param_dtype {
                    copy
                } else {
                    // Another dtype (an f32 master of a bf16 parameter): widened on the host,
                    // exactly as the host executor does, once.
                    let p = copy.download(stream)?.to_f32();
                    DeviceBuf::upload(stream, &BufVec::from_f32(d, &p), &what)?
                }
            }
        })
    }

    /// Most blocks of a launch.
    fn max_blocks(&self) -> u32 {
        self.multiprocessors
            .saturating_mul(self.shape.blocks_per_sm)
    }
}

impl Executor for CudaExecutor {
    fn target(&self) -> Target {
        Target::Cuda
    }

    fn load(
        &mut self,
        kernel: ValidKernel,
        ptx: Option<&PtxModule>,
        slots: Vec<usize>,
    ) -> Result<usize, RuntimeError> {
        if self.matrix.is_none() && kernel.stages.iter().any(|s| s.matrix.is_some()) {
            let blocks = self.max_blocks();
            self.matrix = Some(CudaMatrix::new(&self.stream, blocks, &kernel.rule)?);
        }
        #[cfg(feature = "compiler")]
        let emitted;
        let ptx = match ptx {
            Some(p) => p,
            #[cfg(feature = "compiler")]
            None => {
                emitted = optc_compiler::backend::ptx::emit(&kernel, &Default::default())
                    .map_err(|e| RuntimeError::Compile(e.to_string()))?;
                &emitted
            }
            #[cfg(not(feature = "compiler"))]
            None => return Err(CudaError::NoPtx(kernel.rule.clone()).into()),
        };
        super::signature::check(&kernel, ptx)?;
        let module = self
            .stream
            .context()
            .load_module(Ptx::from_src(ptx.source.clone()))
            .during(format!(
                "loading the PTX module (.version {}, .target {}; the driver must support both)",
                ptx.version, ptx.target
            ))?;
        let find = |name: &str| {
            module
                .load_function(name)
                .during(format!("finding entry `{name}` in the PTX module"))
        };
        let mut stages = Vec::with_capacity(ptx.stages.len());
        for e in &ptx.stages {
            stages.push(Stage {
                multi: find(&e.multi.name)?,
                int8: e.int8.as_ref().map(|q| find(&q.name)).transpose()?,
                entries: e.clone(),
            });
        }
        let factored = super::factored::load(&module, ptx)?;
        self.kernels.push(Loaded {
            kernel,
            slots,
            stages,
            factored,
            _module: module,
        });
        Ok(self.kernels.len() - 1)
    }

    fn kernel(&self, kernel: usize) -> &ValidKernel {
        &self.kernels[kernel].kernel
    }

    fn kernel_count(&self) -> usize {
        self.kernels.len()
    }

    fn positions(&self, kernel: usize) -> Result<&[usize], RuntimeError> {
        self.kernels
            .get(kernel)
            .map(|k| k.slots.as_slice())
            .ok_or_else(|| internal("no such kernel"))
    }

    fn create_states(
        &mut self,
        param: usize,
        lens: &[usize],
        init: &[(usize, StateInit)],
        data: &TensorData<'_>,
    ) -> Result<(), RuntimeError> {
        let mut buffers = Vec::with_capacity(init.len());
        for &(at, i) in init {
            let len = *lens
                .get(at)
                .ok_or_else(|| internal("a state position out of range"))?;
            // The state's name, from a loaded kernel that uses it (for error messages).
            let name = self
                .kernels
                .iter()
                .find_map(|k| {
                    let i = k.slots.iter().position(|&s| s == at)?;
                    k.kernel.states.get(i).map(|d| d.name.clone())
                })
                .unwrap_or_else(|| format!("#{at}"));
            let d = self.dtype(param, at);
            buffers.push((at, self.new_state(len, d, i, data, &name)?));
        }
        state_slots::place(&mut self.states, param, lens.len(), buffers);
        Ok(())
    }

    fn set_state_dtypes(&mut self, param: usize, dtypes: Vec<Dtype>) -> Result<(), RuntimeError> {
        state_slots::set_dtypes(&mut self.dtypes, param, dtypes);
        Ok(())
    }

    fn state_bytes(&self, param: usize) -> usize {
        state_slots::bytes(&self.states, param, DeviceBuf::bytes)
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
    ) -> Result<Partials, RuntimeError> {
        let stream = self.stream.clone();
        if let Some(last) = tensors.iter().map(|t| t.param).max() {
            state_slots::slot(&mut self.states, last);
        }
        let max_blocks = self.max_blocks();
        let loaded = &self.kernels[kernel];
        if let Some(fs) = loaded.factored.get(stage) {
            let device = super::factored::Device {
                stream: &self.stream,
                block: self.shape.block,
                max_blocks,
                states: &mut self.states,
            };
            return super::factored::run_stage(
                device,
                &loaded.kernel,
                &loaded.slots,
                stage,
                fs,
                tensors,
            );
        }
        let Some(st) = loaded.stages.get(stage) else {
            return Err(internal(&format!("kernel {kernel} has no stage {stage}")));
        };
        let outputs = loaded.kernel.stages[stage].reduce.len();
        let program = loaded.kernel.stages[stage].matrix.as_ref();
        let writes_p = loaded.kernel.buffers().first().is_some_and(|b| b.written);
        // Host tensors are staged in device copies (in their dtypes) for the launch.
        let mut staged = Vec::with_capacity(tensors.len());
        for t in tensors.iter() {
            staged.push(Staged::of(&stream, t.data)?);
        }
        let mut slots: Vec<Option<&mut Vec<Option<DeviceBuf>>>> =
            self.states.iter_mut().map(Some).collect();
        // Per tensor: its entry and its launch.
        let mut launch = Vec::with_capacity(tensors.len());
        // Every guard lives until the launches below are queued.
        let mut guards: Vec<SyncOnDrop<'_>> = Vec::new();
        for (t, copy) in tensors.iter().zip(staged.iter_mut()) {
            let states = slots
                .get_mut(t.param)
                .and_then(Option::take)
                .ok_or_else(|| internal("a stepped parameter has no states"))?;
            let (pd, gd) = t.data.dtypes();
            let (p, g, len, grad_len) = match (&*t.data, copy) {
                (TensorData::Device(d), _) => (d.param, d.grad, d.param_len, d.grad_len),
                (TensorData::Host { param, grad }, Some(c)) => {
                    let ((pp, ps), (gp, gs)) = c.pointers(&stream);
                    guards.push(ps);
                    guards.push(gs);
                    (pp, gp, param.len(), grad.len())
                }
                (TensorData::Host { .. }, None) => return Err(internal("an unstaged host tensor")),
            };
            let entry = entry_for(&loaded.kernel, len);
            let mut pointers = vec![p, g];
            let mut lens = vec![len, grad_len];
            let mut dtypes = vec![pd, gd];
            let mut mine: Vec<Option<&mut DeviceBuf>> =
                states.iter_mut().map(Option::as_mut).collect();
            for (i, &at) in loaded.slots.iter().enumerate() {
                let s = mine
                    .get_mut(at)
                    .and_then(Option::take)
                    .ok_or_else(|| internal("a kernel's state is not allocated"))?;
                let slot = Slot::State(StateId::new(i));
                if s.len() != len
                    || s.dtype() != int8::stored_dtype(&loaded.kernel.storage, slot, len)
                {
                    return Err(internal(&format!(
                        "state {i} holds {} {} values, not {len} as the kernel stores them",
                        s.len(),
                        s.dtype()
                    )));
                }
                lens.push(s.len());
                dtypes.push(s.dtype());
                let (ptr, sync) = s.ptr_mut(&stream);
                pointers.push(ptr);
                guards.push(sync);
            }
            check_alignment(&pointers, &dtypes)?;
            if let Some(program) = program {
                let matrix = self
                    .matrix
                    .as_mut()
                    .ok_or_else(|| internal("a matrix stage without cuBLAS"))?;
                let buffers = DeviceBuffers {
                    pointers: &pointers,
                    lens: &lens,
                    dtypes: &dtypes,
                };
                matrix.run(
                    &stream,
                    &loaded.kernel.rule,
                    program,
                    &t.uniforms,
                    t.view,
                    buffers,
                )?;
            }
            launch.push((
                entry,
                Tensor {
                    pointers,
                    len,
                    uniforms: t.uniforms.clone(),
                    sr_key: t.sr_key,
                },
            ));
        }
        let multi: Vec<Tensor> = launch
            .iter()
            .filter(|(e, _)| *e == Entry::Multi)
            .map(|(_, t)| t.clone())
            .collect();
        let grid = Grid::fit(
            self.shape.block,
            max_blocks,
            self.shape.chunk_elems,
            &st.entries,
        );
        let mut from_multi = if multi.is_empty() {
            Vec::new()
        } else {
            launch_stage(
                &stream,
                &st.multi,
                &st.entries,
                outputs,
                &multi,
                grid,
                &mut self.buffers,
            )?
        }
        .into_iter();
        let mut flat = Vec::with_capacity(launch.len());
        for (entry, t) in &launch {
            flat.push(match entry {
                Entry::Multi => from_multi
                    .next()
                    .ok_or_else(|| internal("a tensor's partials are missing"))?,
                Entry::Int8 => {
                    let (Some(func), Some(e)) = (&st.int8, &st.entries.int8) else {
                        return Err(internal("a kernel with int8 states has no `_q8` entry"));
                    };
                    launch_q8(&stream, func, e, outputs, t, grid.block, max_blocks)?
                }
            });
        }
        drop(guards);
        // `[tensor][output * blocks + block]` into `[tensor][output][block]`.
        let partials: Partials = flat
            .into_iter()
            .zip(&launch)
            .map(|(v, (_, t))| {
                let blocks = t.len.div_ceil(optc_kernel::REDUCE_BLOCK);
                (0..outputs)
                    .map(|r| v.get(r * blocks..(r + 1) * blocks).unwrap_or(&[]).to_vec())
                    .collect()
            })
            .collect();
        if writes_p {
            for (t, copy) in tensors.iter_mut().zip(&staged) {
                if let Some(c) = copy {
                    c.read_back(&stream, t.data)?;
                }
            }
        }
        Ok(partials)
    }

    fn read_states(&self, param: usize) -> Result<Vec<Option<Vec<f32>>>, RuntimeError> {
        Ok(self
            .read_state_bufs(param)?
            .into_iter()
            .map(|b| b.map(|b| b.to_f32()))
            .collect())
    }

    fn write_states(
        &mut self,
        states: Vec<(usize, Vec<Option<Vec<f32>>>)>,
    ) -> Result<(), RuntimeError> {
        let typed = states
            .into_iter()
            .map(|(param, values)| {
                let bufs = values
                    .iter()
                    .enumerate()
                    .map(|(at, v)| {
                        v.as_ref()
                            .map(|v| BufVec::from_f32(self.dtype(param, at), v))
                    })
                    .collect();
                (param, bufs)
            })
            .collect();
        self.write_state_bufs(typed)
    }

    fn read_state_bufs(&self, param: usize) -> Result<Vec<Option<BufVec>>, RuntimeError> {
        let Some(states) = self.states.get(param) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(states.len());
        for s in states {
            out.push(match s {
                None => None,
                Some(s) => Some(s.download(&self.stream)?),
            });
        }
        Ok(out)
    }

    fn write_state_bufs(
        &mut self,
        states: Vec<(usize, Vec<Option<BufVec>>)>,
    ) -> Result<(), RuntimeError> {
        // Everything is uploaded before any parameter's states are replaced: all or nothing.
        let mut uploaded = Vec::with_capacity(states.len());
        for (param, values) in states {
            let mut bufs = Vec::with_capacity(values.len());
            for v in &values {
                bufs.push(match v {
                    Some(v) => Some(DeviceBuf::upload(&self.stream, v, "a state")?),
                    None => None,
                });
            }
            uploaded.push((param, bufs));
        }
        for (param, bufs) in uploaded {
            *state_slots::slot(&mut self.states, param) = bufs;
        }
        Ok(())
    }

    fn read_state(
        &self,
        param: usize,
        kernel: usize,
        state: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        let slots = self.positions(kernel)?;
        super::factored::read_state(&self.stream, &self.states, param, slots, state)
    }

    fn write_vector_states(
        &mut self,
        param: usize,
        kernel: usize,
        values: Vec<(usize, Vec<f32>)>,
    ) -> Result<(), RuntimeError> {
        let slots = self
            .kernels
            .get(kernel)
            .map(|k| k.slots.as_slice())
            .ok_or_else(|| internal("no such kernel"))?;
        super::factored::write_vector_states(&self.stream, &mut self.states, param, slots, values)
    }

    fn cuda(&mut self) -> Option<&mut CudaExecutor> {
        Some(self)
    }

    fn cuda_ref(&self) -> Option<&CudaExecutor> {
        Some(self)
    }
}

#[cfg(all(test, feature = "compiler"))]
mod tests {
    use super::*;

    /// AdamW's kernel with its states stored as `state`.
    fn adam_with(state: Dtype) -> Kernel {
        let rule = optc_compiler::stdlib::rule("adamw")
            .and_then(Result::ok)
            .expect("stdlib");
        let k = rule.specialize(&[]).expect("kernel");
        optc_kernel::Precision {
            state,
            ..optc_kernel::Precision::default()
        }
        .apply(&k)
        .expect("precision")
    }

    /// A device update of `len` values of the given dtypes (never dereferenced: the steps below
    /// are refused before any executor touches them).
    fn device(name: &str, param: Dtype, grad: Dtype, len: usize) -> crate::Update<'_> {
        crate::Update {
            name,
            data: TensorData::Device(DeviceTensor {
                param: 0x1000,
                grad: 0x2000,
                param_len: len,
                grad_len: len,
                param_dtype: param,
                grad_dtype: grad,
                _guards: Vec::new(),
            }),
        }
    }

    /// The optimizer checks a device parameter's and gradient's dtypes against its own before
    /// anything runs: another dtype is `BufferDtype`, naming which buffer; nothing changes.
    #[test]
    fn device_buffers_of_another_dtype_are_refused() {
        use crate::{Optimizer, Options, Rule};
        use optc_kernel::Precision;
        let options = Options {
            target: Target::Interp,
            precision: Precision {
                param: Dtype::Bf16,
                ..Precision::default()
            },
            ..Options::default()
        };
        let mut opt =
            Optimizer::with_options(Rule::stdlib("adamw").expect("stdlib"), options).expect("opt");
        opt.add_param("b", &[37]).expect("add");
        for (p, g, what, found) in [
            (Dtype::F32, Dtype::F32, "parameter", Dtype::F32),
            (Dtype::F16, Dtype::Bf16, "parameter", Dtype::F16),
            (Dtype::Bf16, Dtype::F32, "gradient", Dtype::F32),
        ] {
            let err = opt
                .step([device("b", p, g, 37)])
                .expect_err("a dtype mismatch");
            match &err {
                RuntimeError::BufferDtype {
                    what: w,
                    found: f,
                    expected: Dtype::Bf16,
                    ..
                } => assert_eq!((w.as_str(), *f), (what, found), "{err}"),
                other => panic!("{other}"),
            }
            assert!(err.to_string().contains("Options::precision"), "{err}");
        }
        // The right dtype passes the check; a host optimizer then refuses device memory.
        let err = opt
            .step([device("b", Dtype::Bf16, Dtype::Bf16, 37)])
            .expect_err("device buffers on a host target");
        assert!(err.to_string().contains("Target::Cuda"), "{err}");
        assert!(opt
            .states("b")
            .expect("states")
            .iter()
            .all(|(_, s)| s.is_empty()));
    }

    /// Tensors of at least `MIN_QUANT_ELEMENTS` elements with int8 states take the `_q8`
    /// entry; smaller ones (whose int8 states are f32) and every other storage take the
    /// multi-tensor entry.
    #[test]
    fn the_int8_entry_steps_tensors_with_quantized_states() {
        use optc_kernel::quant::MIN_QUANT_ELEMENTS;
        let q = adam_with(Dtype::Int8);
        assert_eq!(entry_for(&q, MIN_QUANT_ELEMENTS), Entry::Int8);
        assert_eq!(entry_for(&q, 70_001), Entry::Int8);
        assert_eq!(entry_for(&q, MIN_QUANT_ELEMENTS - 1), Entry::Multi);
        assert_eq!(entry_for(&q, 0), Entry::Multi);
        for d in [Dtype::F32, Dtype::Bf16] {
            assert_eq!(entry_for(&adam_with(d), 1 << 20), Entry::Multi, "{d}");
        }
    }
}
