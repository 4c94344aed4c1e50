//! Finding the driver and the devices, before any other cudarc call.
#![allow(unsafe_code)]

use super::error::{Context, CudaError};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::CudaContext;
use std::sync::Arc;

/// Whether the CUDA driver library can be loaded. Every entry point of this module checks this
/// first: with dynamic loading, cudarc panics on the first call into a missing library.
pub fn driver_available() -> bool {
    // SAFETY: `is_culib_present` only tries to open the library with libloading and closes it
    // again; it calls no function of the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// A CUDA device, as reported by the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its ordinal.
    pub ordinal: usize,
    /// Its name, for example `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// `(major, minor)` compute capability; PTX for `sm_80` needs at least `(8, 0)`.
    pub compute_capability: (i32, i32),
    /// Global memory in bytes.
    pub total_memory: usize,
    /// Streaming multiprocessors.
    pub multiprocessors: usize,
}

/// The number of devices; [`CudaError::NoDriver`] without a driver.
pub(crate) fn device_count() -> Result<usize, CudaError> {
    if !driver_available() {
        return Err(CudaError::NoDriver);
    }
    let count = CudaContext::device_count().during("counting devices")?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// A context on device `ordinal`, after checking that the driver and the device exist.
pub(crate) fn context(ordinal: usize) -> Result<Arc<CudaContext>, CudaError> {
    let count = device_count()?;
    if ordinal >= count {
        return Err(CudaError::NoDevice { ordinal, count });
    }
    CudaContext::new(ordinal).during(format!("creating a context on device {ordinal}"))
}

/// Streaming multiprocessors of a context's device.
pub(crate) fn multiprocessors(ctx: &Arc<CudaContext>) -> Result<usize, CudaError> {
    let n = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .during("reading the multiprocessor count")?;
    Ok(usize::try_from(n).unwrap_or(1).max(1))
}

/// Every device; [`CudaError::NoDriver`] without a driver.
pub fn devices() -> Result<Vec<DeviceInfo>, CudaError> {
    (0..device_count()?)
        .map(|ordinal| {
            let ctx = CudaContext::new(ordinal).during(format!("opening device {ordinal}"))?;
            Ok(DeviceInfo {
                ordinal,
                name: ctx.name().during("reading the device name")?,
                compute_capability: ctx
                    .compute_capability()
                    .during("reading the compute capability")?,
                total_memory: ctx.total_mem().during("reading the memory size")?,
                multiprocessors: multiprocessors(&ctx)?,
            })
        })
        .collect()
}
