//! Targets: where a step runs, and the compiled form of a kernel for each.
//!
//! Takes a validated [`Kernel`] and a [`Target`]; gives an [`Executor`] that steps a list of
//! tensors whose uniforms are already computed. The optimizer validates every buffer before it
//! calls an executor, so an executor never sees a length mismatch. A CUDA target adds a variant
//! here and one arm in each match.

use crate::cpu::{CpuKernel, CpuOptions, TensorArgs};
use crate::error::RuntimeError;
use optc_kernel::Kernel;

/// Where the optimizer runs its kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// The CPU: Cranelift JIT, one pass of a rayon pool per step.
    #[default]
    Cpu,
    /// The reference interpreter: one element at a time, one thread. For checking, not speed.
    #[cfg(feature = "compiler")]
    Interp,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Target::Cpu => "cpu",
            #[cfg(feature = "compiler")]
            Target::Interp => "interp",
        })
    }
}

/// One tensor's part of a step: its buffers, and what the host program needs.
pub(crate) struct Job<'a> {
    /// Buffers and f32 uniforms.
    pub args: TensorArgs<'a>,
    /// The group's hypers (the interpreter recomputes the host program from them).
    #[cfg_attr(not(feature = "compiler"), allow(dead_code))]
    pub hypers: &'a [f64],
    /// The step number.
    #[cfg_attr(not(feature = "compiler"), allow(dead_code))]
    pub t: u64,
    /// Scalar states before the step.
    #[cfg_attr(not(feature = "compiler"), allow(dead_code))]
    pub scalars: &'a [f64],
}

/// A kernel compiled for one target.
pub(crate) enum Executor {
    Cpu(Box<CpuKernel>),
    #[cfg(feature = "compiler")]
    Interp(Box<Kernel>),
}

impl Executor {
    /// Compiles `kernel` for `target`.
    pub fn compile(
        target: Target,
        kernel: &Kernel,
        allow_fma: bool,
    ) -> Result<Executor, RuntimeError> {
        kernel.validate()?;
        kernel.only_stage()?;
        Ok(match target {
            Target::Cpu => {
                let options = CpuOptions { allow_fma };
                Executor::Cpu(Box::new(CpuKernel::compile_with(kernel, &options)?))
            }
            #[cfg(feature = "compiler")]
            Target::Interp => Executor::Interp(Box::new(kernel.clone())),
        })
    }

    /// The kernel this executor runs.
    pub fn kernel(&self) -> &Kernel {
        match self {
            Executor::Cpu(k) => k.kernel(),
            #[cfg(feature = "compiler")]
            Executor::Interp(k) => k,
        }
    }

    /// Steps every job: one pass of `pool` (or the global pool) on the CPU.
    pub fn run(
        &self,
        jobs: Vec<Job<'_>>,
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<(), RuntimeError> {
        match self {
            Executor::Cpu(k) => Ok(k.step_many(jobs.into_iter().map(|j| j.args).collect(), pool)?),
            #[cfg(feature = "compiler")]
            Executor::Interp(kernel) => {
                use optc_compiler::backend::interp::{step_f32, Buffers};
                for job in jobs {
                    let mut scalars = job.scalars.to_vec();
                    let bufs = Buffers {
                        param: job.args.param,
                        grad: job.args.grad,
                        states: job.args.states,
                    };
                    step_f32(kernel, job.hypers, job.t, &mut scalars, bufs)
                        .map_err(|e| RuntimeError::Interp(e.to_string()))?;
                }
                Ok(())
            }
        }
    }
}
