//! [`CudaOptimizer`]: a loaded kernel, its hypers, and the device state of every parameter.
#![allow(unsafe_code)]

use super::driver;
use super::error::{Context, CudaError};
use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nvrtc::Ptx;
use optc_kernel::artifact::PtxModule;
use optc_kernel::{Artifact, Init, Kernel};
use std::sync::Arc;

/// A parameter tensor registered with a [`CudaOptimizer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub(crate) usize);

impl ParamId {
    /// The registration order, from 0.
    pub fn index(self) -> usize {
        self.0
    }
}

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

/// The device state of one parameter tensor, with its host-side step count and scalars.
pub(crate) struct ParamSlot {
    pub len: usize,
    /// Steps taken so far (the next step is `t + 1`).
    pub t: u64,
    pub scalars: Vec<f64>,
    pub states: Vec<CudaSlice<f32>>,
}

/// An optimizer rule loaded on one CUDA device: steps parameter tensors in place and owns their
/// per-element states (device) and step counts and scalar states (host).
pub struct CudaOptimizer {
    pub(crate) kernel: Kernel,
    pub(crate) hypers: Vec<f64>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) vector: CudaFunction,
    pub(crate) scalar: CudaFunction,
    pub(crate) multi: CudaFunction,
    _module: Arc<CudaModule>,
    pub(crate) params: Vec<ParamSlot>,
    pub(crate) shape: LaunchShape,
    pub(crate) multiprocessors: u32,
    pub(crate) table_buf: Option<CudaSlice<u8>>,
    pub(crate) chunk_buf: Option<CudaSlice<u8>>,
}

impl CudaOptimizer {
    /// Loads a compiled artifact (with PTX) on device `ordinal`. Needs no compiler.
    pub fn from_artifact(artifact: &Artifact, ordinal: usize) -> Result<Self, CudaError> {
        artifact.kernel.validate()?;
        let ptx = artifact
            .ptx
            .as_ref()
            .ok_or_else(|| CudaError::NoPtx(artifact.kernel.rule.clone()))?;
        Self::new(artifact.kernel.clone(), ptx, ordinal)
    }

    /// Parses an artifact's JSON (`*.optc.json`) and loads it on device `ordinal`.
    pub fn from_artifact_json(json: &str, ordinal: usize) -> Result<Self, CudaError> {
        Self::from_artifact(&Artifact::from_json(json)?, ordinal)
    }

    /// Loads a kernel and its PTX on device `ordinal`, on a new stream.
    pub fn new(kernel: Kernel, ptx: &PtxModule, ordinal: usize) -> Result<Self, CudaError> {
        kernel.validate()?;
        let ctx = driver::context(ordinal)?;
        let stream = ctx.new_stream().during("creating a stream")?;
        Self::with_stream(kernel, ptx, stream)
    }

    /// Loads a kernel and its PTX on the device of `stream`, and does all its work on `stream`
    /// (for example a stream shared with candle or another cudarc user).
    pub fn with_stream(
        kernel: Kernel,
        ptx: &PtxModule,
        stream: Arc<CudaStream>,
    ) -> Result<Self, CudaError> {
        kernel.validate()?;
        kernel.only_stage()?;
        super::signature::check(&kernel, ptx)?;
        let ctx = stream.context().clone();
        let module = ctx
            .load_module(Ptx::from_src(ptx.source.clone()))
            .during(format!(
                "loading the PTX module (.version {}, .target {}; the driver must support both)",
                ptx.version, ptx.target
            ))?;
        let function = |name: &str| {
            module
                .load_function(name)
                .during(format!("finding entry `{name}` in the PTX module"))
        };
        let (vector, scalar, multi) = (
            function(&ptx.vector_entry)?,
            function(&ptx.scalar_entry)?,
            function(&ptx.multi_entry)?,
        );
        let multiprocessors = u32::try_from(driver::multiprocessors(&ctx)?).unwrap_or(u32::MAX);
        Ok(CudaOptimizer {
            hypers: kernel.default_hypers(),
            kernel,
            stream,
            vector,
            scalar,
            multi,
            _module: module,
            params: Vec::new(),
            shape: LaunchShape::default(),
            multiprocessors,
            table_buf: None,
            chunk_buf: None,
        })
    }

    /// The kernel being run.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The stream all work is queued on. Steps are asynchronous; reading a state back or
    /// [`CudaOptimizer::synchronize`] waits.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits for every queued step.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().during("synchronizing the stream")
    }

    /// The launch shape in use.
    pub fn launch_shape(&self) -> LaunchShape {
        self.shape
    }

    /// Changes the launch shape (for tuning); `chunk_elems` must be a positive multiple of 4.
    pub fn set_launch_shape(&mut self, shape: LaunchShape) -> Result<(), CudaError> {
        if shape.block == 0 || shape.block > 1024 || shape.blocks_per_sm == 0 {
            return Err(CudaError::Buffers(format!(
                "invalid launch shape {shape:?}"
            )));
        }
        if shape.chunk_elems == 0 || !shape.chunk_elems.is_multiple_of(4) {
            return Err(CudaError::Buffers(format!(
                "chunk size {} is not a positive multiple of 4",
                shape.chunk_elems
            )));
        }
        self.shape = shape;
        Ok(())
    }

    fn hyper_index(&self, name: &str) -> Result<usize, CudaError> {
        self.kernel
            .hypers
            .iter()
            .position(|h| h.name == name)
            .ok_or_else(|| CudaError::UnknownHyper {
                rule: self.kernel.rule.clone(),
                name: name.into(),
                known: self
                    .kernel
                    .hypers
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Sets a hyperparameter for every later step (no reload, no recompilation).
    pub fn set_hyper(&mut self, name: &str, value: f64) -> Result<(), CudaError> {
        let i = self.hyper_index(name)?;
        self.hypers[i] = value;
        Ok(())
    }

    /// A hyperparameter's current value.
    pub fn hyper(&self, name: &str) -> Result<f64, CudaError> {
        Ok(self.hypers[self.hyper_index(name)?])
    }

    /// Every hyperparameter with its current value, in declaration order.
    pub fn hypers(&self) -> Vec<(String, f64)> {
        self.kernel
            .hypers
            .iter()
            .zip(&self.hypers)
            .map(|(h, v)| (h.name.clone(), *v))
            .collect()
    }

    /// Registers a parameter tensor and creates its states on the device, initialized as the
    /// rule says (a copy of `p`, or a value computed from the current hypers).
    pub fn add_param<P: DevicePtr<f32>>(&mut self, p: &P) -> Result<ParamId, CudaError> {
        let len = p.len();
        let stream = self.stream.clone();
        let (ptr, _sync) = p.device_ptr(&stream);
        // SAFETY: `ptr` is the device address of `p`, a live cudarc buffer of `len` f32 on this
        // context, and `_sync` keeps the read ordered until the copies are queued.
        unsafe { self.add_param_raw(ptr, len) }
    }

    /// Like [`CudaOptimizer::add_param`], for a raw device pointer (from candle, PyTorch, or
    /// any CUDA allocation on this context).
    ///
    /// # Safety
    /// `p` must point to `len` readable f32 in device memory of this optimizer's context, and
    /// stay valid until this optimizer's stream has run the queued copy.
    pub unsafe fn add_param_raw(&mut self, p: u64, len: usize) -> Result<ParamId, CudaError> {
        if !p.is_multiple_of(4) {
            return Err(CudaError::Buffers(format!(
                "parameter pointer {p:#x} is not 4-byte aligned"
            )));
        }
        let init = self.kernel.eval_init(&self.hypers)?;
        let scalars = self.kernel.initial_scalars(&self.hypers)?;
        let mut states = Vec::with_capacity(self.kernel.states.len());
        for decl in &self.kernel.states {
            let mut buf = if len == 0 {
                self.stream
                    .null::<f32>()
                    .during("creating an empty state")?
            } else {
                // SAFETY: every element is written below (copy or memset) before any read.
                unsafe { self.stream.alloc::<f32>(len) }
                    .during(format!("allocating state `{}` ({len} floats)", decl.name))?
            };
            if len > 0 {
                let stream = self.stream.clone();
                let (dst, _sync) = buf.device_ptr_mut(&stream);
                match decl.init {
                    Init::Param => {
                        // SAFETY: `dst` holds `len` f32 (just allocated); the caller guarantees
                        // `p` holds `len` f32 on this context; both are ordered on `stream`.
                        unsafe {
                            cudarc::driver::result::memcpy_dtod_async(
                                dst,
                                p,
                                len * 4,
                                stream.cu_stream(),
                            )
                        }
                        .during(format!("copying p into state `{}`", decl.name))?;
                    }
                    Init::Value(h) => {
                        let bits = (init.get(h.index()).copied().unwrap_or(0.0) as f32).to_bits();
                        // SAFETY: `dst` holds `len` 32-bit words, and the memset is queued on the
                        // stream that owns the allocation.
                        unsafe {
                            cudarc::driver::sys::cuMemsetD32Async(
                                dst,
                                bits,
                                len,
                                stream.cu_stream(),
                            )
                        }
                        .result()
                        .during(format!("filling state `{}`", decl.name))?;
                    }
                }
            }
            states.push(buf);
        }
        self.params.push(ParamSlot {
            len,
            t: 0,
            scalars,
            states,
        });
        Ok(ParamId(self.params.len() - 1))
    }

    pub(crate) fn slot(&self, id: ParamId) -> Result<&ParamSlot, CudaError> {
        self.params.get(id.0).ok_or(CudaError::UnknownParam(id.0))
    }

    pub(crate) fn slot_mut(&mut self, id: ParamId) -> Result<&mut ParamSlot, CudaError> {
        self.params
            .get_mut(id.0)
            .ok_or(CudaError::UnknownParam(id.0))
    }

    fn state_index(&self, name: &str) -> Result<usize, CudaError> {
        self.kernel
            .states
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| CudaError::UnknownState {
                rule: self.kernel.rule.clone(),
                name: name.into(),
                known: self
                    .kernel
                    .states
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The number of elements of a parameter.
    pub fn param_len(&self, id: ParamId) -> Result<usize, CudaError> {
        Ok(self.slot(id)?.len)
    }

    /// Steps taken by a parameter so far.
    pub fn steps(&self, id: ParamId) -> Result<u64, CudaError> {
        Ok(self.slot(id)?.t)
    }

    /// A parameter's scalar states, in the kernel's order.
    pub fn scalars(&self, id: ParamId) -> Result<&[f64], CudaError> {
        Ok(&self.slot(id)?.scalars)
    }

    /// Restores a parameter's step count and scalar states (from a checkpoint).
    pub fn set_progress(
        &mut self,
        id: ParamId,
        steps: u64,
        scalars: &[f64],
    ) -> Result<(), CudaError> {
        let expected = self.kernel.scalars.len();
        if scalars.len() != expected {
            return Err(CudaError::Buffers(format!(
                "{} scalar states given; rule `{}` has {expected}",
                scalars.len(),
                self.kernel.rule
            )));
        }
        let slot = self.slot_mut(id)?;
        slot.t = steps;
        slot.scalars = scalars.to_vec();
        Ok(())
    }

    /// A per-element state on the device (for example to pass on to another cudarc user).
    pub fn state_slice(&self, id: ParamId, name: &str) -> Result<&CudaSlice<f32>, CudaError> {
        let i = self.state_index(name)?;
        Ok(&self.slot(id)?.states[i])
    }

    /// Copies a per-element state back to the host (waits for queued steps).
    pub fn state(&self, id: ParamId, name: &str) -> Result<Vec<f32>, CudaError> {
        let buf = self.state_slice(id, name)?;
        if buf.is_empty() {
            return Ok(Vec::new());
        }
        self.stream
            .clone_dtoh(buf)
            .during(format!("reading state `{name}` back"))
    }

    /// Overwrites a per-element state from the host (from a checkpoint).
    pub fn set_state(&mut self, id: ParamId, name: &str, values: &[f32]) -> Result<(), CudaError> {
        let i = self.state_index(name)?;
        let stream = self.stream.clone();
        let slot = self.slot_mut(id)?;
        if values.len() != slot.len {
            return Err(CudaError::Buffers(format!(
                "state `{name}` has {} elements; {} given",
                slot.len,
                values.len()
            )));
        }
        if values.is_empty() {
            return Ok(());
        }
        stream
            .memcpy_htod(values, &mut slot.states[i])
            .during(format!("writing state `{name}`"))
    }
}
