//! Targets: where an optimizer runs its kernels, and the executor that each one gets.
//!
//! Takes [`Options`]; gives the target's [`Executor`]: the host executor (CPU JIT or the
//! reference interpreter, feature `compiler`) or the CUDA executor (feature `cuda`). A new target
//! adds a variant here and an executor of its own; the optimizer does not change.

use crate::error::RuntimeError;
use crate::executor::Executor;
use crate::optimizer::Options;
#[cfg(feature = "compiler")]
use std::sync::Arc;

/// Where the optimizer runs its kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// The CPU: Cranelift JIT, one pass of a rayon pool per stage.
    #[cfg(feature = "compiler")]
    Cpu,
    /// The reference interpreter: one element at a time, one thread. For checking, not speed.
    #[cfg(feature = "compiler")]
    Interp,
    /// An NVIDIA GPU through CUDA ([`Options::cuda`] says which, and on which stream).
    #[cfg(feature = "cuda")]
    Cuda,
}

#[allow(clippy::derivable_impls)]
impl Default for Target {
    /// The CPU where the JIT is built in, else CUDA.
    fn default() -> Self {
        #[cfg(feature = "compiler")]
        return Target::Cpu;
        #[cfg(all(not(feature = "compiler"), feature = "cuda"))]
        return Target::Cuda;
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            #[cfg(feature = "compiler")]
            Target::Cpu => "cpu",
            #[cfg(feature = "compiler")]
            Target::Interp => "interp",
            #[cfg(feature = "cuda")]
            Target::Cuda => "cuda",
        })
    }
}

/// The executor for `options.target`.
pub(crate) fn executor(options: &Options) -> Result<Box<dyn Executor>, RuntimeError> {
    match options.target {
        #[cfg(feature = "compiler")]
        Target::Cpu | Target::Interp => {
            let pool = match options.threads {
                Some(n) => Some(Arc::new(
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(n)
                        .build()
                        .map_err(|e| RuntimeError::ThreadPool(e.to_string()))?,
                )),
                None => options.pool.clone(),
            };
            Ok(Box::new(crate::host::HostExecutor::new(
                options.target,
                options.allow_fma,
                pool,
            )))
        }
        #[cfg(feature = "cuda")]
        Target::Cuda => Ok(Box::new(crate::cuda::CudaExecutor::new(&options.cuda)?)),
    }
}
