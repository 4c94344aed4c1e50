//! The launch of one stage: every tensor in one launch of the stage's multi-tensor entry, then,
//! in a stage with reduce outputs, its block partials copied back to the host.
//!
//! Takes the stage's entry list from the artifact ([`StageEntries`]: the entry's parameters, the
//! record layout, the launch constraints), the loaded entry and the tensors (device pointers in
//! `Kernel::buffers` order, lengths, the stage's uniforms). Gives, per tensor, its partials in the
//! layout of [`table::partials_layout`]; the caller combines them in f64 (`docs/cuda.md` says why
//! the finalize is on the host).
#![allow(unsafe_code)]

use super::error::{Context, CudaError};
use super::table::{self, Tensor};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg, SyncOnDrop,
};
use optc_kernel::abi::Param;
use optc_kernel::artifact::{PtxEntry, StageEntries};
use optc_kernel::quant::QUANT_BLOCK;
use optc_kernel::reduce::REDUCE_BLOCK;
use std::sync::Arc;

/// The device buffers of a launch (tensor table, chunk list, partials), reused across launches
/// and grown when too small. Only ever used on one stream.
#[derive(Default)]
pub(crate) struct LaunchBuffers {
    table: Option<CudaSlice<u8>>,
    chunks: Option<CudaSlice<u8>>,
    partials: Option<CudaSlice<f32>>,
}

/// The grid of a launch, from the caller's preferences and the stage's constraints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grid {
    /// Threads per block (rounded up to the stage's `block_multiple`, at most 1024).
    pub block: u32,
    /// Most blocks in the grid.
    pub max_blocks: u32,
    /// Elements per chunk (rounded up to the stage's `chunk_multiple`).
    pub chunk_elems: usize,
}

impl Grid {
    /// `block` and `chunk_elems` rounded up to what `entries` needs.
    pub(crate) fn fit(block: u32, max_blocks: u32, chunk_elems: usize, e: &StageEntries) -> Grid {
        let bm = e.block_multiple.max(1);
        let cm = e.chunk_multiple.max(1);
        Grid {
            block: block.max(1).div_ceil(bm).saturating_mul(bm).min(1024),
            max_blocks: max_blocks.max(1),
            chunk_elems: chunk_elems.max(1).div_ceil(cm).saturating_mul(cm),
        }
    }
}

/// Queues one launch of `multi` (stage `entries`'s multi-tensor entry) over `tensors` on
/// `stream`; in a stage with `outputs > 0` reduce outputs, waits for it and returns each
/// tensor's block partials (empty vectors otherwise, without waiting).
///
/// Each tensor's pointers must stay valid, and their guards alive, until the launch is queued;
/// the partials copy, when there is one, orders after the launch on the stream.
pub(crate) fn launch_stage(
    stream: &Arc<CudaStream>,
    multi: &CudaFunction,
    entries: &StageEntries,
    outputs: usize,
    tensors: &[Tensor],
    grid: Grid,
    buffers: &mut LaunchBuffers,
) -> Result<Vec<Vec<f32>>, CudaError> {
    let reducing = entries.record.partials_offset().is_some();
    if reducing != (outputs > 0) {
        return Err(CudaError::Buffers(format!(
            "stage entry `{}` and its {outputs} reduce outputs do not agree",
            entries.multi.name
        )));
    }
    let plan = table::partials_layout(outputs, tensors);
    let (partials_ptr, _partials_sync) = if plan.len > 0 {
        let buf = grow(stream, &mut buffers.partials, plan.len, "the partials")?;
        let (ptr, sync) = buf.device_ptr(stream);
        (ptr, Some(sync))
    } else {
        (0, None)
    };
    let table = table::build(
        &entries.record,
        tensors,
        grid.chunk_elems,
        entries.chunk_multiple,
        reducing.then_some((partials_ptr, &plan)),
    )?;
    if table.num_chunks > 0 {
        let (records, _records_sync) = upload(
            stream,
            &mut buffers.table,
            &table.records,
            "the tensor table",
        )?;
        let (chunks, _chunks_sync) =
            upload(stream, &mut buffers.chunks, &table.chunks, "the chunk list")?;
        let args = table::multi_args(
            &entries.multi.params,
            records,
            chunks,
            table.num_chunks as u64,
            grid.chunk_elems as u64,
        )?;
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(table.num_chunks)
                    .unwrap_or(u32::MAX)
                    .clamp(1, grid.max_blocks),
                1,
                1,
            ),
            block_dim: (grid.block, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(multi);
        for a in &args {
            launch.arg(a);
        }
        // SAFETY: `args` follows the entry's parameter list from the artifact, which
        // `signature::check` matched against the kernel when the module was loaded (four u64:
        // table, chunks, count, chunk size); the table was built from the same artifact's record
        // layout, its pointers are the caller's (valid for `len` f32 each, the contract above) and
        // the partials buffer, sized by `plan` for every block of every tensor; the block size
        // and chunk size respect the stage's constraints (`Grid::fit`); the table and chunk list
        // are queued for upload on this stream before the launch and kept alive in `buffers`.
        unsafe { launch.launch(cfg) }
            .during(format!("launching `{}` (multi-tensor)", entries.multi.name))?;
    }
    if plan.len == 0 {
        return Ok(vec![Vec::new(); tensors.len()]);
    }
    drop(_partials_sync);
    let Some(buf) = buffers.partials.as_ref() else {
        return Err(CudaError::Buffers("no buffer for the partials".into()));
    };
    // Waits for the launch: the next stage's uniforms need the finalized reductions.
    let host = stream
        .clone_dtoh(&buf.slice(..plan.len))
        .during("reading the block partials back")?;
    Ok(table::split_partials(&host, &plan))
}

/// The grid of a `_q8` launch over a tensor of `n` elements: `(blocks, threads per block)`, the
/// block whole warps (at most 1024), one warp per quantization block (per reduction block in a
/// stage with reduce outputs), at most `max_blocks` blocks (the entry's loop strides over warps).
pub(crate) fn q8_grid(n: usize, reducing: bool, block: u32, max_blocks: u32) -> (u32, u32) {
    let block = block.max(1).div_ceil(32).saturating_mul(32).min(1024);
    let per_warp = if reducing { REDUCE_BLOCK } else { QUANT_BLOCK };
    let warps = n.div_ceil(per_warp);
    let blocks = u32::try_from(warps.div_ceil(block as usize / 32))
        .unwrap_or(u32::MAX)
        .clamp(1, max_blocks.max(1));
    (blocks, block)
}

/// One argument of a single-tensor entry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Arg {
    /// `.u64`.
    U64(u64),
    /// `.u32`.
    U32(u32),
    /// `.f32`.
    F32(f32),
}

/// The arguments of a single-tensor entry (`_q8`: the scalar entry's parameter list) for
/// `tensor`, its partials at `partials`, in the order of the list from the artifact.
pub(crate) fn single_args(
    params: &[Param],
    tensor: &Tensor,
    partials: u64,
) -> Result<Vec<Arg>, CudaError> {
    let bad = |what: String| CudaError::Buffers(format!("single-tensor entry: {what}"));
    params
        .iter()
        .map(|p| {
            Ok(match *p {
                Param::Buffer { index } => Arg::U64(
                    *tensor
                        .pointers
                        .get(index)
                        .ok_or_else(|| bad(format!("no buffer {index}")))?,
                ),
                Param::Len => Arg::U64(tensor.len as u64),
                Param::Partials => Arg::U64(partials),
                Param::SrKey => Arg::U32(tensor.sr_key),
                Param::Uniform { index } => Arg::F32(
                    *tensor
                        .uniforms
                        .get(index)
                        .ok_or_else(|| bad(format!("no uniform {index}")))?,
                ),
                other => return Err(bad(format!("unexpected parameter {other:?}"))),
            })
        })
        .collect()
}

/// Queues one launch of `func` (a stage's `_q8` entry, `entry` its parameter list) over one
/// tensor whose int8 states are quantized; in a stage with `outputs > 0` reduce outputs, waits
/// for it and returns the tensor's block partials (`output * blocks + block`), else an empty
/// vector without waiting. The tensor's pointers must stay valid, and their guards alive, until
/// the launch is queued.
pub(crate) fn launch_q8(
    stream: &Arc<CudaStream>,
    func: &CudaFunction,
    entry: &PtxEntry,
    outputs: usize,
    tensor: &Tensor,
    block: u32,
    max_blocks: u32,
) -> Result<Vec<f32>, CudaError> {
    let blocks = outputs * tensor.len.div_ceil(REDUCE_BLOCK);
    let partials = if blocks > 0 {
        Some(
            stream
                .alloc_zeros::<f32>(blocks)
                .during("allocating the partials")?,
        )
    } else {
        None
    };
    if tensor.len > 0 {
        let (pp, _sync) = match &partials {
            Some(b) => {
                let (p, s) = b.device_ptr(stream);
                (p, Some(s))
            }
            None => (0, None),
        };
        let args = single_args(&entry.params, tensor, pp)?;
        let (grid, block) = q8_grid(tensor.len, outputs > 0, block, max_blocks);
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(func);
        for a in &args {
            match a {
                Arg::U64(v) => launch.arg(v),
                Arg::U32(v) => launch.arg(v),
                Arg::F32(v) => launch.arg(v),
            };
        }
        // SAFETY: `args` follows the entry's parameter list from the artifact, which
        // `signature::check` matched against the kernel when the module was loaded; every buffer
        // pointer is the caller's (`len` values of its dtype; an int8 state's codes and scales,
        // `int8::device_bytes(len)` bytes, checked by the executor), the partials buffer holds
        // `outputs · ceil(len / 4096)` f32; the block is whole warps (`q8_grid`).
        unsafe { launch.launch(cfg) }.during(format!("launching `{}` (int8)", entry.name))?;
    }
    match partials {
        Some(b) => Ok(stream
            .clone_dtoh(&b)
            .during("reading the block partials back")?),
        None => Ok(Vec::new()),
    }
}

/// `buf`, grown to at least `len` elements (its contents are not kept).
fn grow<'a, T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    buf: &'a mut Option<CudaSlice<T>>,
    len: usize,
    what: &str,
) -> Result<&'a mut CudaSlice<T>, CudaError> {
    if buf.as_ref().is_none_or(|b| b.len() < len) {
        let cap = len.next_power_of_two().max(256);
        *buf = Some(
            stream
                .alloc_zeros::<T>(cap)
                .during(format!("allocating {what}"))?,
        );
    }
    buf.as_mut()
        .ok_or_else(|| CudaError::Buffers(format!("no buffer for {what}")))
}

/// Copies `bytes` into `buf` (grown when too small) and returns its device address, with the
/// guard that records the launch as a read of it (kept until the launch is queued).
fn upload<'a>(
    stream: &'a Arc<CudaStream>,
    buf: &'a mut Option<CudaSlice<u8>>,
    bytes: &[u8],
    what: &str,
) -> Result<(u64, SyncOnDrop<'a>), CudaError> {
    let dst = grow(stream, buf, bytes.len(), what)?;
    let mut view = dst.slice_mut(..bytes.len());
    stream
        .memcpy_htod(bytes, &mut view)
        .during(format!("uploading {what}"))?;
    Ok(dst.device_ptr(stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use optc_kernel::abi::{multi_params, Param};
    use optc_kernel::artifact::PtxEntry;
    use optc_kernel::table::TableLayout;

    fn entries(reducing: bool) -> StageEntries {
        let entry = |name: &str, params: Vec<Param>| PtxEntry {
            name: name.into(),
            params,
        };
        StageEntries {
            vector: entry("v", vec![]),
            scalar: entry("s", vec![]),
            multi: entry("m", multi_params()),
            record: TableLayout::new(2, reducing, 0),
            chunk_multiple: if reducing { 4096 } else { 4 },
            block_multiple: if reducing { 32 } else { 1 },
            int8: None,
        }
    }

    /// One warp per 256-block (per 4096-block when reducing), whole warps, at most `max_blocks`.
    #[test]
    fn int8_grids_cover_every_block_with_whole_warps() {
        assert_eq!(q8_grid(4096, false, 256, 100), (2, 256));
        assert_eq!(q8_grid(4097, false, 256, 100), (3, 256));
        assert_eq!(q8_grid(4097, true, 256, 100), (1, 256));
        assert_eq!(q8_grid(8 * 4096 + 1, true, 256, 100), (2, 256));
        assert_eq!(q8_grid(1 << 24, false, 100, 64), (64, 128));
        assert_eq!(q8_grid(1 << 20, false, 2000, 0), (1, 1024));
    }

    /// The `_q8` entry's arguments follow its parameter list: buffers, length, partials, then
    /// uniforms (the scalar entry's list).
    #[test]
    fn single_entry_arguments_follow_the_list() {
        let params = vec![
            Param::Buffer { index: 0 },
            Param::Buffer { index: 1 },
            Param::Buffer { index: 2 },
            Param::Len,
            Param::Partials,
            Param::Uniform { index: 1 },
            Param::Uniform { index: 0 },
            Param::SrKey,
        ];
        let t = Tensor {
            pointers: vec![16, 32, 4096],
            len: 5000,
            uniforms: vec![0.5, 2.0],
            sr_key: 7,
        };
        let args = single_args(&params, &t, 999).expect("args");
        assert_eq!(
            args,
            vec![
                Arg::U64(16),
                Arg::U64(32),
                Arg::U64(4096),
                Arg::U64(5000),
                Arg::U64(999),
                Arg::F32(2.0),
                Arg::F32(0.5),
                Arg::U32(7)
            ]
        );
        assert!(single_args(&[Param::Buffer { index: 3 }], &t, 0).is_err());
        assert!(single_args(&[Param::Table], &t, 0).is_err());
    }

    #[test]
    fn grids_respect_the_stage_constraints() {
        let g = Grid::fit(100, 0, 1000, &entries(true));
        assert_eq!((g.block, g.max_blocks, g.chunk_elems), (128, 1, 4096));
        let g = Grid::fit(256, 1056, 32768, &entries(true));
        assert_eq!((g.block, g.max_blocks, g.chunk_elems), (256, 1056, 32768));
        let g = Grid::fit(100, 8, 6, &entries(false));
        assert_eq!((g.block, g.chunk_elems), (100, 8));
        assert_eq!(Grid::fit(1024, 1, 4, &entries(true)).block, 1024);
    }

    /// Whether a GPU is present; prints why not (and fails under `OPTC_REQUIRE_GPU`).
    #[cfg(feature = "compiler")]
    fn gpu_present(test: &str) -> bool {
        let reason = if !super::super::driver_available() {
            Some("no CUDA driver".to_string())
        } else {
            match super::super::devices() {
                Ok(d) if !d.is_empty() => None,
                Ok(_) => Some("no CUDA device".to_string()),
                Err(e) => Some(e.to_string()),
            }
        };
        match reason {
            None => true,
            Some(r) => {
                assert!(
                    std::env::var_os("OPTC_REQUIRE_GPU").is_none(),
                    "{test}: {r}, but OPTC_REQUIRE_GPU is set"
                );
                eprintln!("SKIPPED {test}: {r}");
                false
            }
        }
    }

    /// Deterministic values in [-1, 1).
    #[cfg(feature = "compiler")]
    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005) | 1;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Stage 0 of every staged stdlib rule (and of AdamW clipped by the global norm) on the GPU,
    /// through its vector and scalar entries (raw launches with the arguments their lists name)
    /// and through [`launch_stage`] (the multi-tensor entry), against the reference: the stage
    /// body evaluated per element by `optc_kernel::eval` (the interpreter's evaluator) for the
    /// stores, and `optc_kernel::reduce::block_partial` of each block, bit for bit. Skips without
    /// a GPU.
    #[cfg(feature = "compiler")]
    #[test]
    fn reducing_stages_match_the_reference_order_on_a_gpu() {
        use cudarc::driver::CudaContext;
        use cudarc::nvrtc::Ptx;
        use optc_compiler::CompileOptions;
        use optc_kernel::eval::eval_arena;
        use optc_kernel::reduce::{block_partial, REDUCE_BLOCK};
        use optc_kernel::{Expr, RankClass, Slot};
        if !gpu_present("reducing_stages_match_the_reference_order_on_a_gpu") {
            return;
        }
        let mut kernels = Vec::new();
        for name in optc_compiler::stdlib::names() {
            let rule = optc_compiler::stdlib::rule(name)
                .and_then(Result::ok)
                .unwrap_or_else(|| panic!("{name}"));
            // The rules with reductions (staged at their defaults, or one kernel per rank class),
            // and AdamW, which is staged once clipped.
            let staged =
                rule.uses_rank() || rule.specialize(&[]).is_ok_and(|k| !k.reductions.is_empty());
            if !staged && name != "adamw" {
                continue;
            }
            let rank = if rule.uses_rank() {
                RankClass::Matrix
            } else {
                RankClass::Any
            };
            let options = CompileOptions {
                clip: name == "adamw",
                rank,
                ..Default::default()
            };
            let k = rule.specialize_with(&[], &options).expect("specialize");
            // Factored kernels (adafactor's matrices) have rows/cols entries, not these:
            // `runtime/tests/cuda_gpu/factored.rs` checks them against the interpreter.
            if !k.stages[0].reduce.is_empty() && !k.is_factored() {
                kernels.push(k);
            }
        }
        let buffer = |slot: Slot| match slot {
            Slot::Param => 0,
            Slot::Grad => 1,
            Slot::State(s) => 2 + s.index(),
        };
        let ctx = CudaContext::new(0).expect("context");
        let stream = ctx.default_stream();
        for k in kernels {
            let m = optc_compiler::backend::ptx::emit(&k, &Default::default()).expect("emit");
            let module = ctx
                .load_module(Ptx::from_src(m.source.clone()))
                .expect("load");
            let (stage, e) = (&k.stages[0], &m.stages[0]);
            let hypers = k.default_hypers();
            let scalars = k.initial_scalars(&hypers).expect("scalars");
            let unknown = vec![f64::NAN; k.reductions.len()];
            // A matrix kernel's host program reads the tensor's rows and cols (Muon's ratio, not
            // stage 0's uniforms): any view does.
            let view = k
                .stages
                .iter()
                .any(|s| s.matrix.is_some())
                .then_some(optc_kernel::matrix::WideView { rows: 1, cols: 1 });
            let host = k
                .eval_host_for(&hypers, 1, &scalars, &unknown, view)
                .expect("host");
            let uniforms: Vec<f32> = host.uniforms[0].iter().map(|u| *u as f32).collect();
            for n in [1usize, 31, 4095, 4096, 4097, 3 * 4096 + 5, 70_001] {
                let mut bufs = vec![data(n, 5), data(n, 6)];
                bufs.extend(k.states.iter().map(|_| data(n, 7)));
                let mut stored = bufs.clone();
                let mut values: Vec<f32> = Vec::new();
                let mut reduced = vec![Vec::with_capacity(n); stage.reduce.len()];
                for i in 0..n {
                    eval_arena(&stage.body, &mut values, |x| match *x {
                        Expr::Uniform(u) => uniforms.get(u.index()).copied().ok_or(()),
                        Expr::Load(slot) => Ok(bufs[buffer(slot)][i]),
                        _ => Err(()),
                    })
                    .expect("eval");
                    for (r, out) in stage.reduce.iter().enumerate() {
                        reduced[r].push(values[out.value.index()]);
                    }
                    for s in &stage.stores {
                        stored[buffer(s.slot)][i] = values[s.value.index()];
                    }
                }
                let want: Vec<f32> = stage
                    .reduce
                    .iter()
                    .zip(&reduced)
                    .flat_map(|(out, xs)| {
                        let op = k.reductions[out.reduction.index()].op;
                        xs.chunks(REDUCE_BLOCK)
                            .map(move |b| block_partial(op, b))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let same = |a: &[f32], b: &[f32]| {
                    a.len() == b.len()
                        && a.iter()
                            .zip(b)
                            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
                };
                for which in ["vector", "scalar", "multi"] {
                    let mut dev: Vec<CudaSlice<f32>> = bufs
                        .iter()
                        .map(|b| stream.clone_htod(b).expect("upload"))
                        .collect();
                    let ptrs: Vec<u64> = dev.iter().map(|b| b.device_ptr(&stream).0).collect();
                    let got = if which == "multi" {
                        let tensor = Tensor {
                            pointers: ptrs.clone(),
                            len: n,
                            uniforms: uniforms.clone(),
                            sr_key: 0,
                        };
                        let grid = Grid::fit(256, 2, 2 * REDUCE_BLOCK, e);
                        let mut scratch = LaunchBuffers::default();
                        let mut parts = launch_stage(
                            &stream,
                            &module.load_function(&e.multi.name).expect("entry"),
                            e,
                            stage.reduce.len(),
                            &[tensor],
                            grid,
                            &mut scratch,
                        )
                        .expect("launch_stage");
                        parts.pop().unwrap_or_default()
                    } else {
                        let entry = if which == "vector" {
                            &e.vector
                        } else {
                            &e.scalar
                        };
                        let func = module.load_function(&entry.name).expect("entry");
                        let partials = stream.alloc_zeros::<f32>(want.len()).expect("partials");
                        let pp = partials.device_ptr(&stream).0;
                        let len = n as u64;
                        let mut launch = stream.launch_builder(&func);
                        for p in &entry.params {
                            match *p {
                                Param::Buffer { index } => launch.arg(&ptrs[index]),
                                Param::Len => launch.arg(&len),
                                Param::Partials => launch.arg(&pp),
                                Param::Uniform { index } => launch.arg(&uniforms[index]),
                                other => panic!("single entry parameter {other:?}"),
                            };
                        }
                        let cfg = LaunchConfig {
                            grid_dim: (3, 1, 1),
                            block_dim: (256, 1, 1),
                            shared_mem_bytes: 0,
                        };
                        // SAFETY: the arguments follow the entry's parameter list; every pointer
                        // is a live allocation of `n` f32 (the buffers) or of every partial.
                        unsafe { launch.launch(cfg) }.expect("launch");
                        stream.clone_dtoh(&partials).expect("partials back")
                    };
                    let what = format!("{} n={n} {which}", k.rule);
                    assert!(same(&got, &want), "{what}: partials {got:?} vs {want:?}");
                    for (i, d) in dev.iter_mut().enumerate() {
                        let back = stream.clone_dtoh(d).expect("download");
                        assert!(same(&back, &stored[i]), "{what}: buffer {i}");
                    }
                }
            }
        }
    }
}
