//! The device-to-device copy probe: the memory bandwidth an optimizer step can hope for, measured
//! in the same run as the step (`optc bench --target cuda`).

use super::driver;
use super::error::{Context, CudaError};
use cudarc::driver::sys::CUevent_flags;

/// What the copy probe measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CopyBandwidth {
    /// Bytes of each copy.
    pub bytes: usize,
    /// Timed copies.
    pub iterations: u32,
    /// Total time of the timed copies, from CUDA events.
    pub seconds: f64,
    /// Bytes moved per second, counting each copy's read and write: `2 * bytes * iterations /
    /// seconds`, comparable with `Kernel::bytes_per_element` times elements per second.
    pub bytes_per_second: f64,
}

/// Copies a `bytes`-byte buffer to another on device `ordinal`, once to warm up and then
/// `iterations` times between two events.
pub fn copy_bandwidth(
    ordinal: usize,
    bytes: usize,
    iterations: u32,
) -> Result<CopyBandwidth, CudaError> {
    if bytes == 0 || iterations == 0 {
        return Err(CudaError::Buffers(
            "the copy probe needs a positive size and iteration count".into(),
        ));
    }
    let ctx = driver::context(ordinal)?;
    let stream = ctx.new_stream().during("creating a stream")?;
    let src = stream
        .alloc_zeros::<u8>(bytes)
        .during("allocating the probe's source")?;
    let mut dst = stream
        .alloc_zeros::<u8>(bytes)
        .during("allocating the probe's destination")?;
    stream
        .memcpy_dtod(&src, &mut dst)
        .during("warming up the copy")?;
    let start = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .during("creating an event")?;
    let end = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .during("creating an event")?;
    start.record(&stream).during("recording an event")?;
    for _ in 0..iterations {
        stream.memcpy_dtod(&src, &mut dst).during("copying")?;
    }
    end.record(&stream).during("recording an event")?;
    end.synchronize().during("waiting for the copies")?;
    let ms = start.elapsed_ms(&end).during("reading the event timer")?;
    let seconds = f64::from(ms) / 1e3;
    Ok(CopyBandwidth {
        bytes,
        iterations,
        seconds,
        bytes_per_second: 2.0 * bytes as f64 * f64::from(iterations)
            / seconds.max(f64::MIN_POSITIVE),
    })
}
