//! Kernel -> Cranelift IR for the CPU.
//!
//! Takes a validated [`Kernel`] and gives one Cranelift [`Function`] per stage. A stage without
//! reduce outputs has the C ABI `extern "C" fn(bufs: *const *mut f32, n: u64, uniforms: *const
//! f32)`; a stage with reduce outputs takes two more arguments, `extern "C" fn(bufs, n, uniforms,
//! partials: *mut f32, stride: u64)`:
//!
//! - `bufs[i]` points at the first element to process of buffer `i` in [`Kernel::buffers`] order
//!   (`p`, `g`, then each state), stored in the buffer's dtype ([`Kernel::storage`]: 4 bytes per
//!   f32, 2 per bf16 or f16; loads widen exactly, stores round to nearest even or, for a
//!   stochastic `p`, as [`stores_stochastic`] says); any address aligned to the value size is
//!   fine (loads and stores are unaligned-safe);
//! - `n` is the number of elements to process;
//! - `uniforms[j]` is the stage's `Expr::Uniform(j)` rounded to f32 (booleans as `1.0`/`0.0`);
//! - `partials[r * stride + b]` receives the f32 block partial of the stage's reduce output `r`
//!   (in [`optc_kernel::Stage::reduce`] order) over block `b` of the range, a block being
//!   [`optc_kernel::REDUCE_BLOCK`] elements from the start of the range (the last may be short):
//!   the range must start on a block boundary of the tensor. `stride >= n.div_ceil(REDUCE_BLOCK)`.
//!   Tensor- and Step-scope reductions lower the same way (per-tensor block partials; the Step
//!   combine over tensors is the runtime's). Row and Col scopes, and row- or column-shaped
//!   states, are refused with [`Error::Unsupported`]: a factored kernel is lowered through its
//!   row form ([`rows::row_form`]), run one call per row.
//!
//! A stage without reduce outputs has an f32x4 main loop (optionally unrolled) and a tail for the
//! last `n % 4` elements. The tail copies those elements into a 4-lane stack buffer, runs the very
//! same vector body on it and copies the written lanes back, so tail and main loop agree bit for
//! bit by construction. A stage with reduce outputs runs blocked loops (`reduce.rs`), in
//! exactly the order of `docs/stages.md`. Every buffer the body reads is loaded once per element,
//! every written buffer is stored once. Uniforms and constants are splat before the loop. No op
//! becomes a libcall: `fma` is only used with [`Options::fma`], and `exp`, `log` and `pow` are
//! polynomials (see [`math`]).
//!
//! Pure: this module builds IR and never runs it (the runtime JIT-compiles it).

mod body;
mod convert;
mod gen;
pub mod math;
mod plan;
mod reduce;
pub mod rows;

use cranelift_codegen::ir::{Function, UserFuncName};
use cranelift_codegen::isa::CallConv;
use optc_kernel::{Kernel, ReduceOp, Scope, StateShape};

/// Code generation options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Fuse `a * b + c` (and `a * b - c`, `c - a * b`) into one `fma`. Only set this when the
    /// target has a native FMA (`has_fma` on x86-64), or Cranelift lowers `fma` to a libcall.
    pub fma: bool,
    /// How many f32x4 vectors the main loop of a stage without reduce outputs processes per
    /// iteration (1 or 2; 2 by default). A stage with reduce outputs always processes 8 (the 32
    /// lanes of a reduction).
    pub unroll: u32,
    /// The calling convention of the generated function (the host's C convention).
    pub call_conv: CallConv,
}

impl Default for Options {
    /// No FMA, 2x unrolled, System V (the fixed options of the snapshot tests).
    fn default() -> Self {
        Options {
            fma: false,
            unroll: 2,
            call_conv: CallConv::SystemV,
        }
    }
}

/// Why a kernel could not be lowered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The kernel does not hold together.
    #[error(transparent)]
    Kernel(#[from] optc_kernel::KernelError),
    /// The options are out of range.
    #[error("invalid Cranelift backend options: {0}")]
    Options(String),
    /// The kernel needs what this backend does not lower: reductions over rows or columns, or
    /// row- or column-shaped states (Adafactor's factored moments).
    #[error("rule `{rule}`: the CPU backend cannot lower {what}")]
    Unsupported {
        /// The rule's name.
        rule: String,
        /// What it has.
        what: String,
    },
    /// The generated function failed Cranelift's verifier (a bug in this backend).
    #[error(
        "internal error: the generated Cranelift IR for rule `{rule}` does not verify: {message}"
    )]
    Verify {
        /// The rule's name.
        rule: String,
        /// The verifier's report.
        message: String,
    },
}

/// Lowers every stage of `kernel`, in order (see the module documentation for their ABI).
pub fn emit(kernel: &Kernel, opts: &Options) -> Result<Vec<Function>, Error> {
    kernel.validate()?;
    (0..kernel.stages.len())
        .map(|k| emit_valid_stage(kernel, k, opts))
        .collect()
}

/// Lowers stage `stage` of `kernel` to one Cranelift function.
pub fn emit_stage(kernel: &Kernel, stage: usize, opts: &Options) -> Result<Function, Error> {
    kernel.validate()?;
    emit_valid_stage(kernel, stage, opts)
}

fn emit_valid_stage(kernel: &Kernel, stage: usize, opts: &Options) -> Result<Function, Error> {
    if !(1..=2).contains(&opts.unroll) {
        return Err(Error::Options(format!(
            "unroll must be 1 or 2, got {}",
            opts.unroll
        )));
    }
    let st = kernel.stages.get(stage).ok_or_else(|| {
        Error::Options(format!(
            "stage {stage} does not exist: rule `{}` has {} stages",
            kernel.rule,
            kernel.stages.len()
        ))
    })?;
    let unsupported = |what: String| Error::Unsupported {
        rule: kernel.rule.clone(),
        what,
    };
    if let Some(s) = kernel.states.iter().find(|s| s.shape != StateShape::Full) {
        return Err(unsupported(format!(
            "the row- or column-shaped state `{}`",
            s.name
        )));
    }
    if !kernel.vectors.is_empty() {
        return Err(unsupported(
            "[rows]/[cols] values (a vector program)".into(),
        ));
    }
    let mut reduce = Vec::with_capacity(st.reduce.len());
    for out in &st.reduce {
        let decl = &kernel.reductions[out.reduction.index()];
        if matches!(decl.scope, Scope::Row | Scope::Col) {
            return Err(unsupported(format!(
                "the {}-scope reduction `{}`",
                decl.scope.name(),
                decl.name
            )));
        }
        let fold = match decl.op {
            ReduceOp::Sum => plan::Fold::Sum,
            ReduceOp::Max => plan::Fold::Max,
        };
        reduce.push((fold, out.value));
    }
    let view = plan::StageView {
        body: &st.body,
        stores: &st.stores,
        reduce,
        buffers: 2 + kernel.states.len(),
        dtypes: kernel
            .buffers()
            .iter()
            .map(|b| kernel.storage.dtype(b.slot))
            .collect(),
        stochastic: stores_stochastic(kernel, st).then_some(st.uniforms.len()),
    };
    let func = body::build(view, opts, UserFuncName::testcase(func_name(kernel, stage)));
    let flags = cranelift_codegen::settings::Flags::new(cranelift_codegen::settings::builder());
    cranelift_codegen::verify_function(&func, &flags).map_err(|e| Error::Verify {
        rule: kernel.rule.clone(),
        message: e.to_string(),
    })?;
    Ok(func)
}

/// Whether stage `st` of `kernel` stores `p` with stochastic rounding; its function then reads
/// three more words after its uniforms: the tensor's key (`sr_key(seed, t, tensor)`, as `u32`
/// bits) and the low and high halves of the index, in the tensor, of the call's first element.
pub fn stores_stochastic(kernel: &Kernel, st: &optc_kernel::Stage) -> bool {
    kernel.storage.is_stochastic(optc_kernel::Slot::Param)
        && st.stores_slot(optc_kernel::Slot::Param)
}

/// The CLIF text of [`emit`]'s functions, as `optc compile --target cpu --emit clif` prints it
/// (the stages in order, separated by a blank line).
pub fn emit_text(kernel: &Kernel, opts: &Options) -> Result<String, Error> {
    let funcs = emit(kernel, opts)?;
    Ok(funcs
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The name of stage `stage`'s function: `optc_` and the rule name with every character outside
/// `[A-Za-z0-9_]` replaced by `_`, then `_s` and the stage number when the kernel has more than one
/// stage.
pub fn func_name(kernel: &Kernel, stage: usize) -> String {
    let rule: String = kernel
        .rule
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if kernel.stages.len() > 1 {
        format!("optc_{rule}_s{stage}")
    } else {
        format!("optc_{rule}")
    }
}
