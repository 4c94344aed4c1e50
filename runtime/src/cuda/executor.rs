//! The CUDA executor: the [`Optimizer`](crate::Optimizer)'s target for one device.
//!
//! Takes validated kernels with their PTX (from an artifact, or emitted in process with the
//! feature `compiler`); holds each parameter's per-element states as `CudaSlice<f32>` on the
//! device and steps tensors given as device pointers ([`crate::Update::cuda`]) or as host slices
//! (copied to the device for the launch and the parameter copied back). Every stage of a step is
//! one launch of the multi-tensor entry over every tensor of the kernel, queued on one stream (a
//! factored kernel's stages run in `super::factored`, whose `[rows]`/`[cols]` states stay here);
//! a stage with a matrix program first queues it per tensor on the same stream (cuBLAS,
//! `crate::matrix::cuda`).
//!
//! Guarantees: no cudarc call is made before the driver library has been found to load; every
//! failure is a [`CudaError`]; the read/write guards of every buffer of a launch (the caller's
//! parameters and gradients, and the states) live until the launch is queued, so work ordered
//! after a buffer's last write on another stream waits for the step.
#![allow(unsafe_code)]

use super::driver;
use super::error::{Context, CudaError};
use super::launch::{launch_stage, Grid, LaunchBuffers};
use super::table::Tensor;
use crate::buf::BufRef;
use crate::error::RuntimeError;
use crate::executor::{Executor, Partials, StageTensor, StateInit, TensorData};
use crate::matrix::cuda::{CudaMatrix, DeviceBuffers};
use crate::target::Target;
use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop,
};
use cudarc::nvrtc::Ptx;
use optc_kernel::artifact::{PtxModule, StageEntries};
use optc_kernel::ValidKernel;
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
    /// Kept until the update is dropped, after every launch of the step is queued.
    _guards: Vec<SyncOnDrop<'a>>,
}

impl<'a> crate::Update<'a> {
    /// An update of parameter `name` from device buffers of the optimizer's context, ordered on
    /// `stream` (the optimizer's [`Optimizer::cuda_stream`](crate::Optimizer::cuda_stream)).
    pub fn cuda<P: DevicePtrMut<f32>, G: DevicePtr<f32>>(
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
        crate::Update {
            name,
            data: TensorData::Device(DeviceTensor {
                param,
                grad,
                param_len: len,
                grad_len: len,
                _guards: Vec::new(),
            }),
        }
    }
}

/// A kernel loaded on the device.
struct Loaded {
    kernel: ValidKernel,
    /// The position of each of the kernel's states among a parameter's.
    slots: Vec<usize>,
    /// Each stage's multi-tensor entry, with the stage's entry list from the artifact.
    stages: Vec<(CudaFunction, StageEntries)>,
    /// A factored kernel's entries, per stage (empty otherwise; `super::factored`).
    factored: Vec<super::factored::FactoredStage>,
    _module: Arc<CudaModule>,
}

/// States on one CUDA device, kernels loaded from PTX. See the module docs.
pub(crate) struct CudaExecutor {
    stream: Arc<CudaStream>,
    shape: LaunchShape,
    multiprocessors: u32,
    kernels: Vec<Loaded>,
    /// Per registered parameter: its state buffers by position, each once it is allocated.
    states: Vec<Vec<Option<CudaSlice<f32>>>>,
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

    fn upload(&self, values: &[f32], what: &str) -> Result<CudaSlice<f32>, CudaError> {
        if values.is_empty() {
            return self.stream.null::<f32>().during(format!("creating {what}"));
        }
        self.stream
            .clone_htod(values)
            .during(format!("uploading {what}"))
    }

    /// A new state buffer of `len` elements, every one `init` or a copy of `data`'s parameter.
    fn new_state(
        &self,
        len: usize,
        init: StateInit,
        data: &TensorData<'_>,
        name: &str,
    ) -> Result<CudaSlice<f32>, CudaError> {
        let what = format!("state `{name}` ({len} floats)");
        match (init, data) {
            (StateInit::Param, TensorData::Host { param, .. }) => {
                self.upload(&BufRef::from(param).to_f32(), &what)
            }
            _ if len == 0 => self.stream.null::<f32>().during(format!("creating {what}")),
            (StateInit::Value(x), _) => {
                // SAFETY: every element is written by the memset below before any read.
                let mut buf = unsafe { self.stream.alloc::<f32>(len) }
                    .during(format!("allocating {what}"))?;
                let (dst, _sync) = buf.device_ptr_mut(&self.stream);
                // SAFETY: `dst` holds `len` 32-bit words, and the memset is queued on the stream
                // that owns the allocation while `_sync` is alive.
                unsafe {
                    cudarc::driver::sys::cuMemsetD32Async(
                        dst,
                        x.to_bits(),
                        len,
                        self.stream.cu_stream(),
                    )
                }
                .result()
                .during(format!("filling {what}"))?;
                drop(_sync);
                Ok(buf)
            }
            (StateInit::Param, TensorData::Device(d)) => {
                // SAFETY: as above; every element is written by the copy below.
                let mut buf = unsafe { self.stream.alloc::<f32>(len) }
                    .during(format!("allocating {what}"))?;
                let (dst, _sync) = buf.device_ptr_mut(&self.stream);
                // SAFETY: `dst` holds `len` f32 (just allocated); `d.param` holds `len` f32 on
                // this context (the optimizer checked the length; `Update::cuda` or the caller of
                // `Update::cuda_raw` guarantees the memory); both are ordered on the stream.
                unsafe {
                    cudarc::driver::result::memcpy_dtod_async(
                        dst,
                        d.param,
                        len * 4,
                        self.stream.cu_stream(),
                    )
                }
                .during(format!("copying p into {what}"))?;
                drop(_sync);
                Ok(buf)
            }
        }
    }

    fn slot(&mut self, param: usize) -> &mut Vec<Option<CudaSlice<f32>>> {
        if self.states.len() <= param {
            self.states.resize_with(param + 1, Vec::new);
        }
        &mut self.states[param]
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
            let blocks = self
                .multiprocessors
                .saturating_mul(self.shape.blocks_per_sm);
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
        let mut stages = Vec::with_capacity(ptx.stages.len());
        for e in &ptx.stages {
            let multi = module.load_function(&e.multi.name).during(format!(
                "finding entry `{}` in the PTX module",
                e.multi.name
            ))?;
            stages.push((multi, e.clone()));
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
            buffers.push((at, self.new_state(len, i, data, &name)?));
        }
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
    ) -> Result<Partials, RuntimeError> {
        let stream = self.stream.clone();
        if let Some(last) = tensors.iter().map(|t| t.param).max() {
            self.slot(last);
        }
        let loaded = &self.kernels[kernel];
        if let Some(fs) = loaded.factored.get(stage) {
            let device = super::factored::Device {
                stream: &self.stream,
                block: self.shape.block,
                max_blocks: self
                    .multiprocessors
                    .saturating_mul(self.shape.blocks_per_sm),
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
        let Some((multi, entries)) = loaded.stages.get(stage) else {
            return Err(internal(&format!("kernel {kernel} has no stage {stage}")));
        };
        let outputs = loaded.kernel.stages[stage].reduce.len();
        let program = loaded.kernel.stages[stage].matrix.as_ref();
        let writes_p = loaded.kernel.buffers().first().is_some_and(|b| b.written);
        // Host tensors are staged in device copies for the launch.
        let mut staged: Vec<Option<(CudaSlice<f32>, CudaSlice<f32>)>> = Vec::new();
        for t in tensors.iter() {
            staged.push(match &*t.data {
                TensorData::Host { param, grad } => {
                    // 16-bit storage never loads on CUDA (stages::check_storage).
                    let (Some(param), Some(grad)) = (param.as_f32_ref(), grad.as_f32()) else {
                        return Err(internal("a 16-bit host buffer on CUDA"));
                    };
                    let p = if param.is_empty() {
                        stream.null::<f32>().during("creating an empty parameter")?
                    } else {
                        stream.clone_htod(param).during("uploading a parameter")?
                    };
                    let g = if grad.is_empty() {
                        stream.null::<f32>().during("creating an empty gradient")?
                    } else {
                        stream.clone_htod(grad).during("uploading a gradient")?
                    };
                    Some((p, g))
                }
                TensorData::Device(_) => None,
            });
        }
        let mut slots: Vec<Option<&mut Vec<Option<CudaSlice<f32>>>>> =
            self.states.iter_mut().map(Some).collect();
        let mut launch = Vec::with_capacity(tensors.len());
        // Every guard lives until the launch below is queued.
        let mut guards: Vec<SyncOnDrop<'_>> = Vec::new();
        for (t, copy) in tensors.iter().zip(staged.iter_mut()) {
            let states = slots
                .get_mut(t.param)
                .and_then(Option::take)
                .ok_or_else(|| internal("a stepped parameter has no states"))?;
            let (p, g, len, grad_len) = match (&*t.data, copy) {
                (TensorData::Device(d), _) => (d.param, d.grad, d.param_len, d.grad_len),
                (TensorData::Host { param, .. }, Some((p, g))) => {
                    let grad_len = g.len();
                    let (pp, ps) = p.device_ptr_mut(&stream);
                    let (gp, gs) = g.device_ptr(&stream);
                    guards.push(ps);
                    guards.push(gs);
                    (pp, gp, param.len(), grad_len)
                }
                (TensorData::Host { .. }, None) => return Err(internal("an unstaged host tensor")),
            };
            let mut pointers = vec![p, g];
            let mut lens = vec![len, grad_len];
            let mut mine: Vec<Option<&mut CudaSlice<f32>>> =
                states.iter_mut().map(Option::as_mut).collect();
            for &at in &loaded.slots {
                let s = mine
                    .get_mut(at)
                    .and_then(Option::take)
                    .ok_or_else(|| internal("a kernel's state is not allocated"))?;
                lens.push(s.len());
                let (ptr, sync) = s.device_ptr_mut(&stream);
                pointers.push(ptr);
                guards.push(sync);
            }
            if let Some(bad) = pointers.iter().find(|p| !p.is_multiple_of(4)) {
                return Err(CudaError::Buffers(format!(
                    "device pointer {bad:#x} is not 4-byte aligned"
                ))
                .into());
            }
            if let Some(program) = program {
                let matrix = self
                    .matrix
                    .as_mut()
                    .ok_or_else(|| internal("a matrix stage without cuBLAS"))?;
                let buffers = DeviceBuffers {
                    pointers: &pointers,
                    lens: &lens,
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
            launch.push(Tensor {
                pointers,
                len,
                uniforms: t.uniforms.clone(),
            });
        }
        let max_blocks = self
            .multiprocessors
            .saturating_mul(self.shape.blocks_per_sm);
        let grid = Grid::fit(
            self.shape.block,
            max_blocks,
            self.shape.chunk_elems,
            entries,
        );
        let flat = launch_stage(
            &stream,
            multi,
            entries,
            outputs,
            &launch,
            grid,
            &mut self.buffers,
        )?;
        drop(guards);
        // `[tensor][output * blocks + block]` into `[tensor][output][block]`.
        let partials: Partials = flat
            .into_iter()
            .zip(&launch)
            .map(|(v, t)| {
                let blocks = t.len.div_ceil(optc_kernel::REDUCE_BLOCK);
                (0..outputs)
                    .map(|r| v.get(r * blocks..(r + 1) * blocks).unwrap_or(&[]).to_vec())
                    .collect()
            })
            .collect();
        if writes_p {
            for (t, copy) in tensors.iter_mut().zip(staged) {
                if let (TensorData::Host { param, .. }, Some((p, _))) = (&mut *t.data, copy) {
                    let Some(param) = param.as_f32() else {
                        return Err(internal("a 16-bit host buffer on CUDA"));
                    };
                    if !param.is_empty() {
                        stream
                            .memcpy_dtoh(&p, param)
                            .during("reading a parameter back")?;
                    }
                }
            }
        }
        Ok(partials)
    }

    fn read_states(&self, param: usize) -> Result<Vec<Option<Vec<f32>>>, RuntimeError> {
        let Some(states) = self.states.get(param) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(states.len());
        for s in states {
            out.push(match s {
                None => None,
                Some(s) if s.is_empty() => Some(Vec::new()),
                Some(s) => Some(self.stream.clone_dtoh(s).during("reading a state back")?),
            });
        }
        Ok(out)
    }

    fn write_states(
        &mut self,
        states: Vec<(usize, Vec<Option<Vec<f32>>>)>,
    ) -> Result<(), RuntimeError> {
        let mut uploaded = Vec::with_capacity(states.len());
        for (param, values) in states {
            let mut bufs = Vec::with_capacity(values.len());
            for v in &values {
                bufs.push(match v {
                    Some(v) => Some(self.upload(v, "a state")?),
                    None => None,
                });
            }
            uploaded.push((param, bufs));
        }
        for (param, bufs) in uploaded {
            *self.slot(param) = bufs;
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
