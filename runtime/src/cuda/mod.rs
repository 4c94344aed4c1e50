//! CUDA execution through cudarc (feature `cuda`; the driver library is loaded at run time, so
//! this builds and runs without a CUDA toolkit, and returns [`CudaError::NoDriver`] on a machine
//! without one).
//!
//! The CUDA target of the one [`Optimizer`](crate::Optimizer): `Options { target: Target::Cuda,
//! cuda: CudaOptions { .. }, .. }` with a rule from an artifact ([`Rule::from_artifact`], no
//! compiler needed) or, with the feature `compiler`, from source. The optimizer then has groups,
//! hypers, checkpoints and step reports exactly as on the CPU; its states live on the device:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use optc_runtime::{Optimizer, Options, Rule, Target, Update};
//! let text = std::fs::read_to_string("adamw.optc.json").unwrap_or_default();
//! let options = Options { target: Target::Cuda, ..Options::default() };
//! let mut opt = Optimizer::with_options(Rule::from_artifact_json(&text)?, options)?;
//! let stream = opt.cuda_stream().expect("a CUDA optimizer").clone();
//! let mut p = stream.clone_htod(&[1.0f32; 1000])?;
//! let g = stream.clone_htod(&[0.1f32; 1000])?;
//! opt.add_param("w", &[1000])?;
//! opt.set_hyper("lr", 1e-3)?;
//! opt.step([Update::cuda("w", &mut p, &g, &stream)])?;
//! let states = opt.states("w")?; // copied back to the host
//! # let _ = states; Ok(()) }
//! ```
//!
//! [`Rule::from_artifact`]: crate::Rule::from_artifact
//!
//! Guarantees: no cudarc call is made before [`driver_available`] has confirmed that the driver
//! library loads; every failure is a [`CudaError`], never a panic. Per-tensor step counts and
//! scalar states live on the host; the host program runs in f64 once per tensor per step. Each
//! stage of a step is one launch of the multi-tensor entry over every tensor of a kernel (for a
//! kernel with `[rows]`/`[cols]` values, one or two launches per tensor: `factored.rs`). The
//! kernel ABI is described in `docs/cuda.md`.

mod bench;
mod buffers;
mod driver;
mod error;
mod executor;
mod factored;
mod launch;
mod signature;
mod table;

pub use bench::{copy_bandwidth, CopyBandwidth};
pub use driver::{devices, driver_available, DeviceInfo};
pub(crate) use error::Context;
pub use error::CudaError;
pub(crate) use executor::CudaExecutor;
pub use executor::{CudaOptions, DeviceDtype, DeviceTensor, LaunchShape};
pub use table::{TableLayout, CHUNK_RECORD_BYTES, FLAG_ALIGNED};

/// cudarc itself, so callers can name the exact types this API takes (`CudaSlice`, `CudaStream`)
/// without depending on a second copy of the crate.
pub use cudarc;
