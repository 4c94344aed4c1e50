//! Kernel -> Cranelift IR for the CPU.
//!
//! Takes a validated [`Kernel`] and gives one Cranelift [`Function`] with the C ABI
//! `extern "C" fn(bufs: *const *mut f32, n: u64, uniforms: *const f32)`:
//!
//! - `bufs[i]` points at the first element to process of buffer `i` in [`Kernel::buffers`] order
//!   (`p`, `g`, then each state); any 4-byte-aligned address is fine (loads and stores are
//!   unaligned-safe);
//! - `n` is the number of elements to process;
//! - `uniforms[j]` is `Expr::Uniform(j)` rounded to f32 (booleans as `1.0`/`0.0`).
//!
//! The function has an f32x4 main loop (optionally unrolled) and a tail for the last `n % 4`
//! elements. The tail copies those elements into a 4-lane stack buffer, runs the very same vector
//! body on it and copies the written lanes back, so tail and main loop agree bit for bit by
//! construction. Every buffer the body reads is loaded once per element, every written buffer is
//! stored once. Uniforms and constants are splat before the loop. No op becomes a libcall: `fma` is
//! only used with [`Options::fma`], and `exp`, `log` and `pow` are polynomials (see [`math`]).
//!
//! Pure: this module builds IR and never runs it (the runtime JIT-compiles it).

mod body;
mod gen;
pub mod math;
mod plan;

use cranelift_codegen::ir::{Function, UserFuncName};
use cranelift_codegen::isa::CallConv;
use optc_kernel::Kernel;

/// Code generation options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Fuse `a * b + c` (and `a * b - c`, `c - a * b`) into one `fma`. Only set this when the
    /// target has a native FMA (`has_fma` on x86-64), or Cranelift lowers `fma` to a libcall.
    pub fma: bool,
    /// How many f32x4 vectors the main loop processes per iteration (1 or 2; 2 by default).
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

/// Lowers `kernel` to one Cranelift function (see the module documentation for its ABI).
pub fn emit(kernel: &Kernel, opts: &Options) -> Result<Function, Error> {
    kernel.validate()?;
    kernel.only_stage()?;
    if !(1..=2).contains(&opts.unroll) {
        return Err(Error::Options(format!(
            "unroll must be 1 or 2, got {}",
            opts.unroll
        )));
    }
    let func = body::build(kernel, opts, UserFuncName::testcase(func_name(kernel)));
    let flags = cranelift_codegen::settings::Flags::new(cranelift_codegen::settings::builder());
    cranelift_codegen::verify_function(&func, &flags).map_err(|e| Error::Verify {
        rule: kernel.rule.clone(),
        message: e.to_string(),
    })?;
    Ok(func)
}

/// The CLIF text of [`emit`]'s function, as `optc compile --target cpu --emit clif` prints it.
pub fn emit_text(kernel: &Kernel, opts: &Options) -> Result<String, Error> {
    Ok(emit(kernel, opts)?.display().to_string())
}

/// The function's name: `optc_` and the rule name with every character outside `[A-Za-z0-9_]`
/// replaced by `_`.
pub fn func_name(kernel: &Kernel) -> String {
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
    format!("optc_{rule}")
}
