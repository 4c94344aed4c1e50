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
use optc_kernel::artifact::StageEntries;
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
        }
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
}
