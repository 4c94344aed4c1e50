//! Factored kernels (`[rows]`/`[cols]` values, Adafactor's matrices) on CUDA: each stage of each
//! tensor is one launch of the stage's cols entry (when it has Col-scope outputs) and then one
//! of its rows entry, over the whole tensor (`docs/stages.md`, "Row and column values";
//! [`optc_kernel::factored`] says where each entry works and writes).
//!
//! Takes the loaded entries and the stage's tensors (their stage vectors, computed by the host's
//! vector program, are uploaded per stage, one buffer per tensor); the `[rows]`/`[cols]` states
//! live on the device at their own lengths and only they cross PCIe between stages
//! ([`read_state`], [`write_vector_states`]). Gives each tensor's partials in the layout of
//! `optc_kernel::reduce::{row_partials, col_partials}` (one copy back per stage).
//!
//! Guarantees: every length is checked before anything is queued (a mismatch is an error, never
//! an out-of-bounds launch); the guards of every buffer a launch touches live until the stage's
//! launches are queued.
#![allow(unsafe_code)]

use super::buffers::{check_alignment, DeviceBuf, Staged};
use super::error::{Context, CudaError};
use crate::buf::BufVec;
use crate::error::RuntimeError;
use crate::executor::{Partials, StageTensor, TensorData};
use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig,
    PushKernelArg, SyncOnDrop,
};
use optc_kernel::abi::Param;
use optc_kernel::artifact::{FactoredEntries, PtxModule};
use optc_kernel::factored::{partials_layout, Geometry};
use optc_kernel::{Dtype, Kernel, MatrixDims, StateShape, VecShape};
use std::sync::Arc;

/// The loaded entries of one stage of a factored kernel.
pub(crate) struct FactoredStage {
    rows: CudaFunction,
    cols: Option<CudaFunction>,
    entries: FactoredEntries,
}

/// Finds every stage's entries in `module` (a factored kernel's module: `ptx.factored`).
pub(crate) fn load(
    module: &Arc<CudaModule>,
    ptx: &PtxModule,
) -> Result<Vec<FactoredStage>, CudaError> {
    let find = |name: &str| {
        module
            .load_function(name)
            .during(format!("finding entry `{name}` in the PTX module"))
    };
    ptx.factored
        .iter()
        .map(|e| {
            Ok(FactoredStage {
                rows: find(&e.rows.name)?,
                cols: e.cols.as_ref().map(|c| find(&c.name)).transpose()?,
                entries: e.clone(),
            })
        })
        .collect()
}

/// The launch grid of a tensor's entries: threads per block (whole warps) and the blocks of the
/// rows and cols launches (0: nothing to launch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grids {
    /// Threads per block.
    pub block: u32,
    /// Blocks of the rows entry (one warp per row block, grid-stride beyond `max_blocks`).
    pub rows: u32,
    /// Blocks of the cols entry (one thread per column block).
    pub cols: u32,
}

impl Grids {
    /// The grids for a tensor of `dims`, `block` rounded up to whole warps (at most 1024).
    pub(crate) fn new(dims: MatrixDims, block: u32, max_blocks: u32) -> Grids {
        let block = block.max(1).div_ceil(32).saturating_mul(32).min(1024);
        let g = Geometry { dims };
        let fit = |items: usize, per_block: usize| {
            u32::try_from(items.div_ceil(per_block))
                .unwrap_or(u32::MAX)
                .min(max_blocks.max(1))
        };
        Grids {
            block,
            rows: fit(g.row_blocks(), block as usize / 32),
            cols: fit(g.col_threads(), block as usize),
        }
    }
}

/// One launch argument.
enum Arg {
    U64(u64),
    U32(u32),
    F32(f32),
}

/// What one tensor's launches take, other than the entry.
struct Launch {
    pointers: Vec<u64>,
    dims: MatrixDims,
    vectors: Vec<u64>,
    uniforms: Vec<f32>,
    /// The tensor's stochastic-rounding key for this step.
    sr_key: u32,
    /// f32 offset of the tensor's partials in the stage's buffer.
    at: usize,
    cols_start: usize,
}

fn internal(what: &str) -> RuntimeError {
    RuntimeError::Unsupported(format!("internal: {what}"))
}

/// The arguments of an entry whose parameter list is `params`.
fn args(params: &[Param], l: &Launch, partials: u64) -> Result<Vec<Arg>, CudaError> {
    let bad = |what: String| CudaError::Buffers(format!("factored entry: {what}"));
    params
        .iter()
        .map(|p| {
            Ok(match *p {
                Param::Buffer { index } => Arg::U64(
                    *l.pointers
                        .get(index)
                        .ok_or_else(|| bad(format!("no buffer {index}")))?,
                ),
                Param::Batch => Arg::U64(l.dims.batch as u64),
                Param::Rows => Arg::U64(l.dims.rows as u64),
                Param::Cols => Arg::U64(l.dims.cols as u64),
                Param::Vector { index } => Arg::U64(
                    *l.vectors
                        .get(index)
                        .ok_or_else(|| bad(format!("no stage vector {index}")))?,
                ),
                Param::Partials => Arg::U64(partials),
                Param::SrKey => Arg::U32(l.sr_key),
                Param::Uniform { index } => Arg::F32(
                    *l.uniforms
                        .get(index)
                        .ok_or_else(|| bad(format!("no uniform {index}")))?,
                ),
                other => return Err(bad(format!("unexpected parameter {other:?}"))),
            })
        })
        .collect()
}

/// Queues one launch of `func` with `args`.
fn launch(
    stream: &CudaStream,
    func: &CudaFunction,
    name: &str,
    args: &[Arg],
    grid: u32,
    block: u32,
) -> Result<(), CudaError> {
    let mut b = stream.launch_builder(func);
    for a in args {
        match a {
            Arg::U64(v) => b.arg(v),
            Arg::U32(v) => b.arg(v),
            Arg::F32(v) => b.arg(v),
        };
    }
    let cfg = LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: `args` follows the entry's parameter list from the artifact, which
    // `signature::check` matched against the kernel when the module was loaded; every buffer
    // pointer holds the tensor's `batch · rows · cols` f32 (parameter, gradient and full states,
    // checked by `run_stage`) or its state's length (`[rows]`/`[cols]` states, never read by the
    // entries); each stage vector pointer holds the `batch · rows` or `batch · cols` f32 its shape
    // gives (checked); the partials pointer has room for the tensor's `partials_layout`; the
    // block size is whole warps (`Grids::new`); every guard is held by the caller until this is
    // queued.
    unsafe { b.launch(cfg) }.during(format!("launching `{name}`"))?;
    Ok(())
}

/// What a stage's launches need of the executor.
pub(crate) struct Device<'a> {
    /// The stream all work is queued on.
    pub stream: &'a Arc<CudaStream>,
    /// Threads per block asked for (rounded up to whole warps).
    pub block: u32,
    /// Most blocks of a launch.
    pub max_blocks: u32,
    /// Each parameter's state buffers by position.
    pub states: &'a mut [Vec<Option<DeviceBuf>>],
}

/// Runs stage `stage` of factored kernel `kernel` (loaded as `fs`, its states at positions
/// `slots`) over `tensors`. See the module docs.
pub(crate) fn run_stage(
    device: Device<'_>,
    kernel: &Kernel,
    slots: &[usize],
    stage: usize,
    fs: &FactoredStage,
    tensors: &mut [StageTensor<'_, '_>],
) -> Result<Partials, RuntimeError> {
    let Device {
        stream,
        block,
        max_blocks,
        states,
    } = device;
    let stream = stream.clone();
    let shapes = kernel.stage_vector_shapes(stage).map_err(CudaError::from)?;
    let writes_p = kernel
        .stages
        .get(stage)
        .is_some_and(|s| s.stores_slot(optc_kernel::Slot::Param));
    // Host tensors are staged in device copies; stage vectors are uploaded, one buffer per
    // tensor. Every length is checked first.
    let mut staged: Vec<Option<Staged>> = Vec::new();
    let mut uploads: Vec<(CudaSlice<f32>, Vec<usize>)> = Vec::new();
    let mut layouts = Vec::with_capacity(tensors.len());
    let mut total = 0usize;
    for t in tensors.iter() {
        let dims = t
            .dims
            .ok_or_else(|| internal("a factored kernel's tensor without matrix dims"))?;
        let (plen, glen) = t.data.lens();
        if plen != dims.numel() || glen != dims.numel() {
            return Err(CudaError::Buffers(format!(
                "a parameter of {plen} and a gradient of {glen} elements for matrices {dims:?}"
            ))
            .into());
        }
        if t.vectors.len() != shapes.len() {
            return Err(internal("the stage's vectors do not fit the kernel"));
        }
        let mut flat = Vec::new();
        let mut offsets = Vec::with_capacity(shapes.len());
        for (v, s) in t.vectors.iter().zip(&shapes) {
            let want = match s {
                VecShape::Rows => dims.len(StateShape::Rows),
                VecShape::Cols => dims.len(StateShape::Cols),
                VecShape::One => return Err(internal("a uniform stage vector")),
            };
            if v.len() != want {
                return Err(internal("a stage vector's length does not fit the tensor"));
            }
            offsets.push(flat.len());
            flat.extend_from_slice(v);
        }
        let buf = if flat.is_empty() {
            stream.null::<f32>().during("creating the stage vectors")?
        } else {
            stream
                .clone_htod(&flat)
                .during("uploading the stage vectors")?
        };
        uploads.push((buf, offsets));
        staged.push(Staged::of(&stream, t.data)?);
        let layout = partials_layout(kernel, stage, dims);
        layouts.push((total, layout.clone()));
        total += layout.len;
    }
    let mut partials_buf = if total > 0 {
        Some(
            stream
                .alloc_zeros::<f32>(total)
                .during("allocating the partials")?,
        )
    } else {
        None
    };
    {
        let mut guards: Vec<SyncOnDrop<'_>> = Vec::new();
        let partials_base = match partials_buf.as_mut() {
            Some(b) => {
                let (ptr, sync) = b.device_ptr_mut(&stream);
                guards.push(sync);
                ptr
            }
            None => 0,
        };
        let mut states: Vec<Option<&mut Vec<Option<DeviceBuf>>>> =
            states.iter_mut().map(Some).collect();
        let mut launches = Vec::with_capacity(tensors.len());
        for (((t, copy), (vbuf, offsets)), (at, layout)) in tensors
            .iter()
            .zip(staged.iter_mut())
            .zip(uploads.iter())
            .zip(&layouts)
        {
            let dims = t.dims.ok_or_else(|| internal("no matrix dims"))?;
            let mine = states
                .get_mut(t.param)
                .and_then(Option::take)
                .ok_or_else(|| internal("a stepped parameter has no states"))?;
            let (pd, gd) = t.data.dtypes();
            let (p, g) = match (&*t.data, copy) {
                (TensorData::Device(d), _) => (d.param, d.grad),
                (TensorData::Host { .. }, Some(c)) => {
                    let ((pp, ps), (gp, gs)) = c.pointers(&stream);
                    guards.push(ps);
                    guards.push(gs);
                    (pp, gp)
                }
                (TensorData::Host { .. }, None) => return Err(internal("an unstaged host tensor")),
            };
            let mut pointers = vec![p, g];
            let mut dtypes = vec![pd, gd];
            let mut bufs: Vec<Option<&mut DeviceBuf>> =
                mine.iter_mut().map(Option::as_mut).collect();
            for (decl, &pos) in kernel.states.iter().zip(slots) {
                let s = bufs
                    .get_mut(pos)
                    .and_then(Option::take)
                    .ok_or_else(|| internal("a kernel's state is not allocated"))?;
                if s.len() != dims.len(decl.shape) || s.dtype() == Dtype::Int8 {
                    return Err(internal(
                        "a state's length or dtype does not fit the factored tensor",
                    ));
                }
                dtypes.push(s.dtype());
                let (ptr, sync) = s.ptr_mut(&stream);
                pointers.push(ptr);
                guards.push(sync);
            }
            check_alignment(&pointers, &dtypes)?;
            let (vbase, vsync) = vbuf.device_ptr(&stream);
            guards.push(vsync);
            launches.push(Launch {
                pointers,
                dims,
                vectors: offsets.iter().map(|o| vbase + 4 * *o as u64).collect(),
                uniforms: t.uniforms.clone(),
                sr_key: t.sr_key,
                at: *at,
                cols_start: layout.cols_start,
            });
        }
        for l in &launches {
            let grids = Grids::new(l.dims, block, max_blocks);
            let part = |off: usize| partials_base + 4 * (l.at + off) as u64;
            if let (Some(func), Some(entry)) = (&fs.cols, &fs.entries.cols) {
                if grids.cols > 0 {
                    let a = args(&entry.params, l, part(l.cols_start))?;
                    launch(&stream, func, &entry.name, &a, grids.cols, grids.block)?;
                }
            }
            if grids.rows > 0 {
                let entry = &fs.entries.rows;
                let a = args(&entry.params, l, part(0))?;
                launch(&stream, &fs.rows, &entry.name, &a, grids.rows, grids.block)?;
            }
        }
        drop(guards);
    }
    if writes_p {
        for (t, copy) in tensors.iter_mut().zip(&staged) {
            if let Some(c) = copy {
                c.read_back(&stream, t.data)?;
            }
        }
    }
    let host = match &partials_buf {
        Some(b) => stream
            .clone_dtoh(b)
            .during("reading the block partials back")?,
        None => Vec::new(),
    };
    layouts
        .iter()
        .map(|(at, layout)| {
            layout
                .outputs
                .iter()
                .map(|r| {
                    host.get(at + r.start..at + r.end)
                        .map(<[f32]>::to_vec)
                        .ok_or_else(|| internal("the partials do not fit their layout"))
                })
                .collect()
        })
        .collect()
}

/// Copies state `state` of kernel `slots`'s kernel of parameter `param` to the host: that one
/// state, not the parameter's others.
pub(crate) fn read_state(
    stream: &Arc<CudaStream>,
    states: &[Vec<Option<DeviceBuf>>],
    param: usize,
    slots: &[usize],
    state: usize,
) -> Result<Vec<f32>, RuntimeError> {
    let s = slots
        .get(state)
        .and_then(|&at| states.get(param)?.get(at)?.as_ref())
        .ok_or_else(|| internal("a state is not allocated"))?;
    Ok(s.download(stream)?.to_f32())
}

/// Writes the new `[rows]`/`[cols]` states of parameter `param` (`(state, values)`, states of
/// the kernel whose states are at `slots`) into their device buffers. Every length is checked
/// before anything is copied.
pub(crate) fn write_vector_states(
    stream: &Arc<CudaStream>,
    states: &mut [Vec<Option<DeviceBuf>>],
    param: usize,
    slots: &[usize],
    values: Vec<(usize, Vec<f32>)>,
) -> Result<(), RuntimeError> {
    let states = states
        .get_mut(param)
        .ok_or_else(|| internal("a parameter has no states"))?;
    for (s, v) in &values {
        let ok = slots
            .get(*s)
            .and_then(|&at| states.get(at)?.as_ref())
            .is_some_and(|b| b.len() == v.len());
        if !ok {
            return Err(internal("no such state"));
        }
    }
    for (s, v) in values {
        let buf = slots.get(s).and_then(|&at| states.get_mut(at)?.as_mut());
        if let Some(buf) = buf {
            let typed = BufVec::from_f32(buf.dtype(), &v);
            buf.overwrite(stream, &typed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adafactor's stage partials as this file lays them out (`partials_layout`) have, output by
    /// output, the lengths of `row_partials` (Row and Tensor scopes) and `col_partials` (Col
    /// scope), and `finalize_tensor` accepts them; the cols entry's part follows the rows entry's.
    #[cfg(feature = "compiler")]
    #[test]
    fn partials_layouts_fit_the_reference_partials() {
        use optc_kernel::reduce::{col_partials, row_partials, ReduceOp, Scope};
        let options = optc_compiler::CompileOptions {
            rank: optc_kernel::RankClass::Matrix,
            ..Default::default()
        };
        let k = optc_compiler::stdlib::rule("adafactor")
            .and_then(Result::ok)
            .and_then(|r| r.specialize_with(&[], &options).ok())
            .expect("adafactor's matrix kernel");
        for (batch, rows, cols) in [(1, 67, 1031), (3, 130, 5), (2, 1, 4100)] {
            let dims = MatrixDims { batch, rows, cols };
            let xs = vec![1.0f32; dims.numel()];
            for stage in 0..k.stages.len() {
                let layout = partials_layout(&k, stage, dims);
                let outputs = &k.stages[stage].reduce;
                assert_eq!(layout.outputs.len(), outputs.len());
                let mut end_rows = 0;
                for (out, range) in outputs.iter().zip(&layout.outputs) {
                    let scope = k.reductions[out.reduction.index()].scope;
                    let want = if scope == Scope::Col {
                        assert!(range.start >= layout.cols_start);
                        col_partials(ReduceOp::Sum, &xs, dims).len()
                    } else {
                        end_rows = end_rows.max(range.end);
                        row_partials(ReduceOp::Sum, &xs, dims).len()
                    };
                    assert_eq!(range.len(), want, "stage {stage} {scope:?} {dims:?}");
                }
                assert_eq!(end_rows, layout.cols_start);
                // The split partials finalize (every length fits).
                let parts: Vec<Vec<f32>> =
                    layout.outputs.iter().map(|r| vec![1.0; r.len()]).collect();
                let mut reduced = vec![0.0; k.reductions.len()];
                let mut vectors = vec![Vec::new(); k.reductions.len()];
                let mut step = Vec::new();
                crate::stages::finalize_tensor(
                    &k,
                    stage,
                    0,
                    0,
                    &parts,
                    crate::stages::Finalized {
                        reduced: &mut reduced,
                        vectors: &mut vectors,
                        dims: Some(dims),
                    },
                    &mut step,
                )
                .expect("the partials fit");
            }
        }
    }

    /// The grids cover every work item with whole warps and never exceed the block limit.
    #[test]
    fn grids_cover_the_work_items() {
        let dims = MatrixDims {
            batch: 2,
            rows: 67,
            cols: 1031,
        };
        let g = Grids::new(dims, 100, 1000);
        assert_eq!(g.block, 128);
        // 134 row blocks, 4 warps a block; 2 · 2 · 1031 column blocks, 128 threads a block.
        assert_eq!(g.rows, 134u32.div_ceil(4));
        assert_eq!(g.cols, 4124u32.div_ceil(128));
        let capped = Grids::new(dims, 256, 3);
        assert_eq!((capped.rows, capped.cols), (3, 3));
        let empty = Grids::new(
            MatrixDims {
                batch: 1,
                rows: 0,
                cols: 5,
            },
            256,
            8,
        );
        assert_eq!((empty.rows, empty.cols), (0, 0));
        assert_eq!(Grids::new(dims, 4096, 8).block, 1024);
    }
}
