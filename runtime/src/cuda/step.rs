//! The launch of one stage: every tensor of a kernel in one launch of the multi-tensor entry.
#![allow(unsafe_code)]

use super::error::{Context, CudaError};
use super::executor::LaunchShape;
use super::table::{self, TableLayout, Tensor};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use optc_kernel::Kernel;
use std::sync::Arc;

/// Blocks for `work` units of `block` threads each, between 1 and `max_blocks`.
pub(crate) fn grid(work: u64, block: u32, max_blocks: u32) -> u32 {
    let blocks = work.div_ceil(u64::from(block.max(1)));
    u32::try_from(blocks)
        .unwrap_or(u32::MAX)
        .clamp(1, max_blocks.max(1))
}

/// The device copies of a launch's tensor table and chunk list, reused across launches (grown
/// when too small). Only ever used on the executor's stream.
#[derive(Default)]
pub(crate) struct LaunchBuffers {
    table: Option<CudaSlice<u8>>,
    chunks: Option<CudaSlice<u8>>,
}

/// Queues one launch of `multi` (the multi-tensor entry of `kernel`) over `tensors` on `stream`.
/// Each tensor's pointers are in `Kernel::buffers` order and must stay valid (and their guards
/// alive) until the launch is queued, which is when this returns.
pub(crate) fn launch_multi(
    stream: &Arc<CudaStream>,
    multi: &CudaFunction,
    kernel: &Kernel,
    tensors: &[Tensor],
    shape: LaunchShape,
    max_blocks: u32,
    buffers: &mut LaunchBuffers,
) -> Result<(), CudaError> {
    let table = table::build(TableLayout::of(kernel), tensors, shape.chunk_elems)?;
    if table.num_chunks == 0 {
        return Ok(());
    }
    let records = upload(
        stream,
        &mut buffers.table,
        &table.records,
        "the tensor table",
    )?;
    let chunks = upload(stream, &mut buffers.chunks, &table.chunks, "the chunk list")?;
    let num_chunks = table.num_chunks as u64;
    let chunk_elems = shape.chunk_elems as u64;
    let cfg = LaunchConfig {
        grid_dim: (grid(num_chunks, 1, max_blocks), 1, 1),
        block_dim: (shape.block, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = stream.launch_builder(multi);
    launch
        .arg(&records)
        .arg(&chunks)
        .arg(&num_chunks)
        .arg(&chunk_elems);
    // SAFETY: the arguments match the multi-tensor entry (table, chunks, count, chunk size;
    // checked by `signature::check` at load, with the record size); the table was built with the
    // layout the PTX backend reads (one definition, `optc_kernel::table`), its pointers are the
    // caller's (valid for `len` f32 each, the executor's contract) and the executor's state
    // allocations, and both arrays are queued for upload on this stream before the launch and
    // kept alive in `buffers`.
    unsafe { launch.launch(cfg) }.during(format!("launching `{}` (multi-tensor)", kernel.rule))?;
    Ok(())
}

/// Copies `bytes` into `buf` (grown when too small) and returns its device address.
fn upload(
    stream: &Arc<CudaStream>,
    buf: &mut Option<CudaSlice<u8>>,
    bytes: &[u8],
    what: &str,
) -> Result<u64, CudaError> {
    if buf.as_ref().is_none_or(|b| b.len() < bytes.len()) {
        let cap = bytes.len().next_power_of_two().max(256);
        *buf = Some(
            stream
                .alloc_zeros::<u8>(cap)
                .during(format!("allocating {what}"))?,
        );
    }
    let Some(dst) = buf.as_mut() else {
        return Err(CudaError::Buffers(format!("no buffer for {what}")));
    };
    let mut view = dst.slice_mut(..bytes.len());
    stream
        .memcpy_htod(bytes, &mut view)
        .during(format!("uploading {what}"))?;
    // The buffer is ours and only used on `stream`: stream order alone keeps the upload before
    // the launch and the launch before the next upload.
    let (ptr, _sync) = dst.device_ptr(stream);
    Ok(ptr)
}

#[cfg(test)]
mod tests {
    use super::grid;

    #[test]
    fn grids_cover_the_work_within_the_cap() {
        assert_eq!(grid(0, 256, 1056), 1);
        assert_eq!(grid(256, 256, 1056), 1);
        assert_eq!(grid(257, 256, 1056), 2);
        assert_eq!(grid(1 << 30, 256, 1056), 1056);
        assert_eq!(grid(5, 1, 0), 1);
    }
}
