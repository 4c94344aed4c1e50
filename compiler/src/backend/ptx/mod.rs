//! Kernel -> PTX text (CUDA).
//!
//! Takes a validated [`Kernel`] and gives one PTX module ([`PtxModule`]) with three entries per
//! stage, listed in the module as data ([`optc_kernel::abi`]; `docs/cuda.md` describes the ABI):
//!
//! - **vector** (`<base>_s<k>_v4`): a 64-bit grid-stride loop over groups of 4 elements with
//!   `ld.global.v4.f32`/`st.global.v4.f32`, then a scalar tail for the last `n % 4` elements.
//!   Every buffer pointer must be 16-byte aligned.
//! - **scalar** (`<base>_s<k>_scalar`): the same body, one element at a time; any 4-byte
//!   alignment.
//! - **multi** (`<base>_s<k>_multi`): steps many tensors in one launch by walking a device-side
//!   table of tensors and a chunk list ([`layout`]).
//!
//! A stage with reduce outputs also writes one f32 partial per block of 4096 elements per
//! output, in the order of `docs/stages.md` (one warp per block; see `reduce.rs`); the host
//! combines them.
//!
//! The single-tensor entries take `.param .u64` buffer pointers in [`Kernel::buffers`] order
//! (every buffer, used or not), then `.param .u64 n`, then (in a reducing stage) the partials
//! pointer, then one `.param .f32` per uniform of the stage (boolean uniforms as 1.0/0.0), then,
//! for a kernel whose stores round stochastically, `.param .u32 sr_key`.
//!
//! Storage dtypes (`docs/dtypes.md`): a 16-bit buffer is loaded and widened, and stored narrowed
//! to nearest or stochastically, in every entry (`convert.rs`); int8 states take the `_q8`
//! entries (`quant.rs`).
//!
//! Arithmetic is IEEE round-to-nearest (`.rn`) by default: `add/sub/mul/fma/div/sqrt` are
//! correctly rounded, `rsqrt` is `sqrt.rn` then `rcp.rn` (the meaning in `op.rs`), `min`/`max`
//! propagate NaN and order `-0 < +0`. `exp` and `log` use `ex2.approx`/`lg2.approx` with argument
//! scaling, within the error budget stated in `docs/cuda.md`. [`Options::fast_math`] opts into
//! `sqrt.approx`, `rsqrt.approx`, `div.full`, flush-to-zero and contraction of `mul`+`add` in the
//! body (never in the reductions' folds).
//!
//! Each buffer the body reads is loaded once per element and each written buffer stored once.
//! The output is checked with `ptxas` for `sm_80` and `sm_90` by `compiler/tests/ptx_ptxas.rs`.

mod asm;
mod body;
mod convert;
mod entries;
mod factored;
pub mod layout;
mod quant;
mod reduce;

use body::{Lowering, Plan};
use optc_kernel::abi;
use optc_kernel::artifact::{PtxEntry, PtxModule, StageEntries};
use optc_kernel::{Kernel, KernelError};

/// How to generate PTX.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The PTX ISA version written as `.version` (`"8.0"` needs a CUDA 12.0 driver or newer).
    pub version: String,
    /// The target written as `.target` (`"sm_80"` runs on Ampere and every later GPU).
    pub target: String,
    /// Trade IEEE rounding for speed: approximate `sqrt`/`rsqrt`/`div`, flush subnormals to
    /// zero, let ptxas contract `mul`+`add` into `fma`, and a shorter `exp`.
    pub fast_math: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            version: "8.0".into(),
            target: "sm_80".into(),
            fast_math: false,
        }
    }
}

/// Why PTX could not be generated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The kernel does not hold together.
    #[error(transparent)]
    InvalidKernel(#[from] KernelError),
    /// The `.version` option is not of the form `MAJOR.MINOR`, or is too old for the target.
    #[error("unsupported PTX version `{version}`: {reason}")]
    Version {
        /// The option's value.
        version: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The `.target` option is not of the form `sm_NN`, or is older than sm_52.
    #[error(
        "unsupported PTX target `{0}`: expected `sm_52` or newer, for example `sm_80` or `sm_90`"
    )]
    Target(String),
    /// The kernel uses something this backend does not lower.
    #[error("the PTX backend cannot compile this kernel: {0}")]
    Unsupported(String),
    /// A bug in this backend (the kernel was valid but could not be lowered).
    #[error("internal error in the PTX backend: {0}")]
    Internal(String),
}

/// The entry names of stage `stage` of a kernel: `optc_<rule>_s<stage>_{v4,scalar,multi}`, with
/// every character of the rule name that is not a letter, digit or `_` replaced by `_` (a
/// factored kernel's stage has `optc_<rule>_s<stage>_{rows,cols}` instead).
pub fn entry_names(kernel: &Kernel, stage: usize) -> (String, String, String) {
    let base = entry_base(kernel, stage);
    (
        format!("{base}_v4"),
        format!("{base}_scalar"),
        format!("{base}_multi"),
    )
}

/// `optc_<rule>_s<stage>`, the common prefix of a stage's entry names.
fn entry_base(kernel: &Kernel, stage: usize) -> String {
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
    format!("optc_{rule}_s{stage}")
}

fn parse_version(version: &str) -> Option<(u32, u32)> {
    let (major, minor) = version.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn parse_target(target: &str) -> Option<u32> {
    let digits = target.strip_prefix("sm_")?;
    let digits = digits.strip_suffix('a').unwrap_or(digits);
    digits.parse().ok()
}

/// Generates the PTX module of a kernel.
pub fn emit(kernel: &Kernel, opts: &Options) -> Result<PtxModule, Error> {
    kernel.validate()?;
    let sm = parse_target(&opts.target)
        .filter(|sm| *sm >= 52)
        .ok_or_else(|| Error::Target(opts.target.clone()))?;
    let version = parse_version(&opts.version).ok_or_else(|| Error::Version {
        version: opts.version.clone(),
        reason: "expected MAJOR.MINOR, for example 8.0".into(),
    })?;
    let needed = if sm >= 90 {
        (7, 8)
    } else if sm >= 80 {
        (7, 0)
    } else {
        (6, 0)
    };
    convert::check(kernel, sm)?;
    if version < needed {
        return Err(Error::Version {
            version: opts.version.clone(),
            reason: format!(
                "{} needs PTX {}.{} or later",
                opts.target, needed.0, needed.1
            ),
        });
    }
    let flags: Vec<String> = kernel
        .flags
        .iter()
        .map(|f| format!("{}={}", f.name, f.value))
        .collect();
    let buffers: Vec<String> = kernel
        .buffers()
        .iter()
        .map(|b| kernel.slot_name(b.slot).to_string())
        .collect();
    let then = if kernel.is_factored() {
        "then batch, rows, cols (.u64), the stage's [rows]/[cols] values (.u64); when the entry\n\
         // reduces, the partials pointer (.u64); then the stage's uniforms (.f32). See\n\
         // docs/stages.md (Row and column values)"
    } else {
        "then n (.u64); in a stage with reductions the partials\n\
         // pointer (.u64); then the stage's uniforms (.f32). See docs/cuda.md"
    };
    let mut source = format!(
        "//\n// Generated by optc from rule `{}` [{}]{}. Do not edit.\n\
         // Buffers (.u64, in order): {}; {then}.\n",
        kernel.rule,
        flags.join(", "),
        if opts.fast_math { ", fast math" } else { "" },
        buffers.join(", "),
    );
    let mut entries = Vec::with_capacity(kernel.stages.len());
    let mut factored = Vec::new();
    let mut text = String::new();
    for (k, stage) in kernel.stages.iter().enumerate() {
        if kernel.is_factored() {
            let (t, e) =
                factored::stage_entries(kernel, k, &entry_base(kernel, k), opts, sm >= 80)?;
            source.push_str(&format!(
                "// Stage {k} (factored): {} uniforms, {} stage vectors, {} reduce outputs; \
                 entries {}{}.\n",
                stage.uniforms.len(),
                kernel.vectors.stage(k).len(),
                stage.reduce.len(),
                e.cols
                    .as_ref()
                    .map(|c| format!("{} then ", c.name))
                    .unwrap_or_default(),
                e.rows.name
            ));
            text.push_str(&t);
            factored.push(e);
            continue;
        }
        let plan = Plan::new(stage)?;
        let low = Lowering {
            kernel,
            stage,
            stage_index: k,
            plan: &plan,
            opts,
            nan_minmax: sm >= 80,
        };
        let (vector, scalar, multi) = entry_names(kernel, k);
        let record = layout::TableLayout::of_stage(kernel, k);
        source.push_str(&format!(
            "// Stage {k}: {} uniforms, {} reduce outputs, multi-tensor table record {} bytes.\n",
            stage.uniforms.len(),
            stage.reduce.len(),
            record.stride()
        ));
        if stage.reduce.is_empty() {
            text.push_str(&low.vector_entry(&vector)?);
            text.push('\n');
            text.push_str(&low.scalar_entry(&scalar)?);
            text.push('\n');
            text.push_str(&low.multi_entry(&multi)?);
        } else {
            text.push_str(&low.reduce_single_entry(&vector, true)?);
            text.push('\n');
            text.push_str(&low.reduce_single_entry(&scalar, false)?);
            text.push('\n');
            text.push_str(&low.reduce_multi_entry(&multi)?);
        }
        text.push('\n');
        let int8 = if quant::has_int8(kernel) {
            let name = format!("{}_q8", vector.trim_end_matches("_v4"));
            text.push_str(&low.int8_entry(&name)?);
            text.push('\n');
            Some(PtxEntry {
                name,
                params: abi::single_params(kernel, k),
            })
        } else {
            None
        };
        let single = abi::single_params(kernel, k);
        entries.push(StageEntries {
            vector: PtxEntry {
                name: vector,
                params: single.clone(),
            },
            scalar: PtxEntry {
                name: scalar,
                params: single,
            },
            multi: PtxEntry {
                name: multi,
                params: abi::multi_params(),
            },
            record,
            chunk_multiple: abi::chunk_multiple(kernel, k),
            block_multiple: abi::block_multiple(kernel, k),
            int8,
        });
    }
    source.push_str(&format!(
        "//\n\n.version {}\n.target {}\n.address_size 64\n\n",
        opts.version, opts.target
    ));
    if quant::has_int8(kernel) {
        source.push_str(&quant::tables());
    }
    source.push_str(text.trim_end());
    source.push('\n');
    Ok(PtxModule {
        version: opts.version.clone(),
        target: opts.target.clone(),
        source,
        stages: entries,
        factored,
    })
}
