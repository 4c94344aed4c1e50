//! CUDA execution through cudarc (feature `cuda`; the driver library is loaded at run time, so
//! this builds and runs without a CUDA toolkit, and returns [`CudaError::NoDriver`] on a machine
//! without one).
//!
//! Takes a compiled [`Artifact`](optc_kernel::Artifact) (or a [`Kernel`](optc_kernel::Kernel)
//! with its [`PtxModule`](optc_kernel::artifact::PtxModule)); gives a [`CudaOptimizer`] that owns
//! the optimizer state on the device and steps parameters in place:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use optc_runtime::cuda::CudaOptimizer;
//! let text = std::fs::read_to_string("adamw.optc.json").unwrap_or_default();
//! let mut opt = CudaOptimizer::from_artifact_json(&text, 0)?;
//! let stream = opt.stream().clone();
//! let mut p = stream.clone_htod(&[1.0f32; 1000])?;
//! let g = stream.clone_htod(&[0.1f32; 1000])?;
//! let id = opt.add_param(&p)?;
//! opt.set_hyper("lr", 1e-3)?;
//! opt.step(id, &mut p, &g)?;
//! let m = opt.state(id, "m")?;
//! # let _ = m; Ok(()) }
//! ```
//!
//! Guarantees: no cudarc call is made before [`driver_available`] has confirmed that the driver
//! library loads; every failure is a [`CudaError`], never a panic. Per-tensor step counts and
//! scalar states live on the host; the host program runs in f64 once per tensor per step. The
//! vector entry is used when every pointer of a tensor is 16-byte aligned, else the scalar entry;
//! [`CudaOptimizer::step_many`] steps a list of tensors with one launch of the multi-tensor entry.
//! The kernel ABI is described in `docs/cuda.md`.

mod bench;
mod driver;
mod error;
mod launch;
mod optimizer;
mod signature;
mod step;
mod table;

pub use bench::{copy_bandwidth, CopyBandwidth};
pub use driver::{devices, driver_available, DeviceInfo};
pub use error::CudaError;
pub use optimizer::{CudaOptimizer, LaunchShape, ParamId};
pub use table::{TableLayout, CHUNK_RECORD_BYTES, FLAG_ALIGNED};

/// cudarc itself, so callers can name the exact types this API takes (`CudaSlice`, `CudaStream`)
/// without depending on a second copy of the crate.
pub use cudarc;
