//! CPU execution: a kernel's stages JIT-compiled by Cranelift, run on slices, split over a rayon
//! pool.
//!
//! [`CpuKernel::compile`] validates an [`optc_kernel::Kernel`], lowers each of its stages with
//! [`optc_compiler::backend::clif`] for the host ISA (FMA where the host has it) and JIT-compiles
//! them. [`CpuKernel::run_stage`] runs one stage on many tensors in one parallel pass: every
//! tensor becomes one work item, or several contiguous chunks when it is large (see
//! [`MIN_CHUNK`]); for a stage with reduce outputs the chunks are whole blocks of
//! [`optc_kernel::REDUCE_BLOCK`] elements and each writes the [`Partials`] of its blocks, so the
//! partials do not depend on the chunking or the thread count. The caller combines them and runs
//! the host program between stages. [`CpuKernel::step`] and [`CpuKernel::step_many`] are the
//! shortcuts for a one-stage kernel without reductions.
//!
//! Every length and count is checked before any element is touched; a mismatch is a
//! [`CpuError`] and leaves all data as it was.

mod half_tiles;
mod int8_tiles;
mod jit;
mod partials;
mod rows;
mod simd;
mod split;

pub use crate::buf::{BufMut, BufRef};
use optc_kernel::{Kernel, KernelError, Slot, StateId};
pub use partials::Partials;
pub use rows::{RowKernel, RowTensor};
pub use split::{WorkItem, CHUNK_ALIGN, MIN_CHUNK};

/// One tensor's buffers and uniforms for one step. Each buffer is in its storage dtype
/// ([`Kernel::storage`]; f32 slices convert with `.into()`).
pub struct TensorArgs<'a> {
    /// The parameter, updated in place.
    pub param: BufMut<'a>,
    /// The gradient.
    pub grad: BufRef<'a>,
    /// The per-element states, in `kernel.states` order, updated in place.
    pub states: Vec<BufMut<'a>>,
    /// The uniform arguments of the stage being run: [`Kernel::eval_host`]'s values for that
    /// stage rounded to f32, booleans as 1.0/0.0.
    pub uniforms: Vec<f32>,
    /// The tensor's stochastic-rounding key for this step (`sr_key(seed, t, tensor)`,
    /// [`optc_kernel::dtype::sr_key`]); unused unless the kernel's parameter store rounds
    /// stochastically.
    pub sr_key: u32,
}

impl<'a> TensorArgs<'a> {
    /// f32 buffers, with no stochastic-rounding key.
    pub fn f32(
        param: &'a mut [f32],
        grad: &'a [f32],
        states: Vec<&'a mut [f32]>,
        uniforms: Vec<f32>,
    ) -> TensorArgs<'a> {
        TensorArgs {
            param: param.into(),
            grad: grad.into(),
            states: states.into_iter().map(BufMut::from).collect(),
            uniforms,
            sr_key: 0,
        }
    }
}

/// How to compile a [`CpuKernel`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuOptions {
    /// Fuse `a * b ± c` into `fma` when the host has FMA. With `false` (or without host FMA)
    /// every op rounds separately, exactly as the reference interpreter does.
    pub allow_fma: bool,
    /// Run a kernel with bf16 or f16 buffers (and no int8 state) as all-f32 code, widening and
    /// narrowing its 16-bit buffers tile by tile around the calls (the default: faster, as the
    /// conversion loops use the host's widest vectors), rather than converting inside the
    /// compiled code. The results are the same bit for bit.
    pub half_tiles: bool,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions {
            allow_fma: true,
            half_tiles: true,
        }
    }
}

/// Why a CPU kernel could not be compiled or run.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// The kernel does not hold together.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// Lowering to Cranelift IR failed.
    #[error("CPU code generation failed: {0}")]
    Codegen(#[from] optc_compiler::backend::clif::Error),
    /// The JIT could not compile for this host.
    #[error("CPU JIT failed: {0}")]
    Jit(String),
    /// A buffer's length differs from the parameter's.
    #[error("tensor {tensor} of rule `{rule}`: buffer `{buffer}` has {found} elements, but `p` has {expected}")]
    Length {
        /// The rule's name.
        rule: String,
        /// The tensor's position in the list (0 for [`CpuKernel::step`]).
        tensor: usize,
        /// The buffer's name (`g` or a state's name).
        buffer: String,
        /// The parameter's length.
        expected: usize,
        /// The buffer's length.
        found: usize,
    },
    /// An int8 state without one scale word per block of its codes.
    #[error("tensor {tensor} of rule `{rule}`: int8 state `{state}` has {found} block scales, but its {codes} codes need {expected}")]
    Scales {
        /// The rule's name.
        rule: String,
        /// The tensor's position in the list.
        tensor: usize,
        /// The state's name.
        state: String,
        /// The number of codes.
        codes: usize,
        /// The number of scales the codes need (`codes.div_ceil(256)`).
        expected: usize,
        /// The number given.
        found: usize,
    },
    /// The wrong number of state buffers.
    #[error(
        "tensor {tensor}: rule `{rule}` needs {expected} state buffers ({names}), got {found}"
    )]
    StateCount {
        /// The rule's name.
        rule: String,
        /// The tensor's position in the list.
        tensor: usize,
        /// The number of states the kernel has.
        expected: usize,
        /// Their names, comma-separated.
        names: String,
        /// The number given.
        found: usize,
    },
    /// No such stage.
    #[error("rule `{rule}` has {stages} stages; there is no stage {stage}")]
    Stage {
        /// The rule's name.
        rule: String,
        /// The stage asked for.
        stage: usize,
        /// The number of stages.
        stages: usize,
    },
    /// A buffer is not in the dtype the kernel stores it in.
    #[error("tensor {tensor} of rule `{rule}`: buffer `{buffer}` is {found}, but the kernel stores it as {expected}")]
    Dtype {
        /// The rule's name.
        rule: String,
        /// The tensor's position in the list.
        tensor: usize,
        /// The buffer's name.
        buffer: String,
        /// The kernel's dtype for it.
        expected: optc_kernel::Dtype,
        /// The dtype given.
        found: optc_kernel::Dtype,
    },
    /// The wrong number of uniforms.
    #[error("tensor {tensor}: stage {stage} of rule `{rule}` takes {expected} uniform arguments, got {found} (compute them with Kernel::eval_host)")]
    UniformCount {
        /// The rule's name.
        rule: String,
        /// The stage.
        stage: usize,
        /// The tensor's position in the list.
        tensor: usize,
        /// The number the kernel takes.
        expected: usize,
        /// The number given.
        found: usize,
    },
}

/// A kernel compiled to native code for this CPU. `Send + Sync`: one compiled kernel serves
/// every thread.
pub struct CpuKernel {
    kernel: Kernel,
    code: jit::Code,
}

impl CpuKernel {
    /// Validates and JIT-compiles `kernel` for the host (with FMA where the host has it).
    pub fn compile(kernel: &Kernel) -> Result<CpuKernel, CpuError> {
        Self::compile_with(kernel, &CpuOptions::default())
    }

    /// Like [`CpuKernel::compile`], with options.
    pub fn compile_with(kernel: &Kernel, options: &CpuOptions) -> Result<CpuKernel, CpuError> {
        kernel.validate()?;
        let code = jit::Code::compile(kernel, options.allow_fma, options.half_tiles)?;
        Ok(CpuKernel {
            kernel: kernel.clone(),
            code,
        })
    }

    /// The kernel this was compiled from.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Whether the compiled code fuses multiply-adds (so results may differ from the reference
    /// interpreter by the rounding of the dropped products).
    pub fn uses_fma(&self) -> bool {
        self.code.fma
    }

    /// Checks one tensor's arguments against stage `stage` (in range) of the kernel.
    fn check(&self, stage: usize, tensor: usize, args: &TensorArgs<'_>) -> Result<(), CpuError> {
        let k = &self.kernel;
        let nu = k.stages[stage].uniforms.len();
        check_state_count(k, tensor, args)?;
        if args.uniforms.len() != nu {
            return Err(CpuError::UniformCount {
                rule: k.rule.clone(),
                stage,
                tensor,
                expected: nu,
                found: args.uniforms.len(),
            });
        }
        let n = args.param.len();
        let lengths = std::iter::once(("g", args.grad.len())).chain(
            k.states
                .iter()
                .zip(&args.states)
                .map(|(d, s)| (d.name.as_str(), s.len())),
        );
        check_dtypes(k, tensor, args)?;
        for (name, len) in lengths {
            if len != n {
                return Err(CpuError::Length {
                    rule: k.rule.clone(),
                    tensor,
                    buffer: name.to_string(),
                    expected: n,
                    found: len,
                });
            }
        }
        Ok(())
    }

    /// Runs stage `stage` on `tensors` in one pass over `pool` (rayon's global pool when
    /// `None`), and lays out `partials` for them and fills it with the block partials of the
    /// stage's reduce outputs (none for a stage without). Large tensors are split into contiguous
    /// chunks (multiples of [`CHUNK_ALIGN`] elements, or of [`optc_kernel::REDUCE_BLOCK`] for a
    /// stage with reduce outputs; at least [`MIN_CHUNK`]); small ones stay whole. Every element
    /// and every partial is the same, bit for bit, with any pool. Nothing is touched unless every
    /// tensor's arguments fit.
    pub fn run_stage(
        &self,
        stage: usize,
        tensors: &mut [TensorArgs<'_>],
        partials: &mut Partials,
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<(), CpuError> {
        if stage >= self.kernel.stages.len() {
            return Err(CpuError::Stage {
                rule: self.kernel.rule.clone(),
                stage,
                stages: self.kernel.stages.len(),
            });
        }
        for (i, t) in tensors.iter().enumerate() {
            self.check(stage, i, t)?;
        }
        let lens: Vec<usize> = tensors.iter().map(|t| t.param.len()).collect();
        partials.layout(&lens, self.code.outputs(stage));
        self.code.run_stage(stage, tensors, partials, pool);
        Ok(())
    }

    /// Steps one tensor on the current thread: a one-stage kernel without reductions only.
    pub fn step(&self, args: TensorArgs<'_>) -> Result<(), CpuError> {
        self.kernel.only_stage()?;
        self.check(0, 0, &args)?;
        let mut args = args;
        self.code.run_one(&mut args);
        Ok(())
    }

    /// Steps many tensors in one pass over `pool` (rayon's global pool when `None`): a one-stage
    /// kernel without reductions only (see [`CpuKernel::run_stage`] for the others). The result
    /// equals calling [`CpuKernel::step`] on each tensor, bit for bit.
    pub fn step_many(
        &self,
        tensors: Vec<TensorArgs<'_>>,
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<(), CpuError> {
        self.kernel.only_stage()?;
        let mut tensors = tensors;
        self.run_stage(0, &mut tensors, &mut Partials::new(), pool)
    }
}

/// Checks that `args` holds one buffer per state of `kernel`.
fn check_state_count(
    kernel: &Kernel,
    tensor: usize,
    args: &TensorArgs<'_>,
) -> Result<(), CpuError> {
    let k = kernel;
    if args.states.len() != k.states.len() {
        return Err(CpuError::StateCount {
            rule: k.rule.clone(),
            tensor,
            expected: k.states.len(),
            names: k
                .states
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            found: args.states.len(),
        });
    }
    Ok(())
}

/// Checks that each buffer of `args` is in the dtype `kernel` stores it in.
fn check_dtypes(kernel: &Kernel, tensor: usize, args: &TensorArgs<'_>) -> Result<(), CpuError> {
    let k = kernel;
    let dtypes = [
        (Slot::Param, args.param.dtype()),
        (Slot::Grad, args.grad.dtype()),
    ]
    .into_iter()
    .chain(
        args.states
            .iter()
            .enumerate()
            .map(|(i, s)| (Slot::State(StateId::new(i)), s.dtype())),
    );
    let n = args.param.len();
    for (slot, found) in dtypes {
        let expected = optc_kernel::int8::stored_dtype(&k.storage, slot, n);
        if found != expected {
            return Err(CpuError::Dtype {
                rule: k.rule.clone(),
                tensor,
                buffer: k.slot_name(slot).to_string(),
                expected,
                found,
            });
        }
    }
    for (i, s) in args.states.iter().enumerate() {
        if let BufMut::Int8(q) = s {
            let q = q.as_ref();
            if !q.is_well_formed() {
                return Err(CpuError::Scales {
                    rule: k.rule.clone(),
                    tensor,
                    state: k.states[i].name.clone(),
                    codes: q.codes.len(),
                    expected: optc_kernel::int8::scale_count(q.codes.len()),
                    found: q.scales.len(),
                });
            }
        }
    }
    Ok(())
}

/// The CPU target's matrix product (matrix stages, `docs/stages.md`): `a · b` with the `gemm`
/// crate on `threads` threads of the current rayon pool (1: this thread).
pub fn matrix_product(
    a: &optc_kernel::matrix::Mat,
    b: &optc_kernel::matrix::Mat,
    threads: usize,
) -> optc_kernel::matrix::Mat {
    crate::matrix::cpu::matmul(a, b, threads)
}
