//! The errors of the CUDA runtime.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;
use optc_kernel::{ArtifactError, KernelError};

/// Why a CUDA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// The CUDA driver library (`libcuda.so`) cannot be loaded.
    #[error(
        "no CUDA driver: libcuda could not be loaded. Install the NVIDIA driver (or run on a \
         machine with an NVIDIA GPU); the CPU target works without one"
    )]
    NoDriver,
    /// The driver loads but there is no such device.
    #[error("no CUDA device {ordinal}: the driver reports {count} device(s)")]
    NoDevice {
        /// The device asked for.
        ordinal: usize,
        /// The number of devices present.
        count: usize,
    },
    /// A driver call failed.
    #[error("CUDA driver error while {action}: {source}")]
    Driver {
        /// What was being done.
        action: String,
        /// The driver's error.
        source: DriverError,
    },
    /// The artifact could not be read.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The kernel is malformed, or its host program failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The artifact was compiled without PTX.
    #[error(
        "the artifact for rule `{0}` holds no PTX: compile it with `optc compile --target cuda`"
    )]
    NoPtx(String),
    /// The PTX's entry points do not take the arguments this kernel passes.
    #[error("the PTX does not fit rule `{rule}`: {reason}; recompile it with `optc compile --target cuda`")]
    PtxMismatch {
        /// The rule.
        rule: String,
        /// What does not fit.
        reason: String,
    },
    /// Buffers that do not fit: wrong lengths, misaligned pointers, a tensor twice in one launch.
    #[error("{0}")]
    Buffers(String),
    /// cuBLAS (`libcublas`), which matrix stages need, cannot be loaded.
    #[error(
        "cuBLAS is not available: libcublas (libcublas.so.12, from the CUDA toolkit or the \
         nvidia-cublas-cu12 wheel) could not be loaded, and rule `{0}` has matrix stages (matrix \
         products), which the CUDA target runs through it. Put its folder on LD_LIBRARY_PATH, or \
         step this optimizer on Target::Cpu"
    )]
    NoCublas(String),
    /// A cuBLAS call failed.
    #[error("cuBLAS error while {action}: {source}")]
    Cublas {
        /// What was being done.
        action: String,
        /// cuBLAS's status.
        source: CublasError,
    },
}

/// Adds what was being done to a driver error.
pub(crate) trait Context<T> {
    /// Maps a [`DriverError`] to [`CudaError::Driver`].
    fn during(self, action: impl Into<String>) -> Result<T, CudaError>;
}

impl<T> Context<T> for Result<T, DriverError> {
    fn during(self, action: impl Into<String>) -> Result<T, CudaError> {
        self.map_err(|source| CudaError::Driver {
            action: action.into(),
            source,
        })
    }
}
