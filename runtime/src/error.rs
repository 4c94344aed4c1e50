//! The runtime's one error type.
//!
//! Every failure a user can cause (a wrong name, a wrong length, a wrong dtype, a checkpoint that
//! does not fit) is a [`RuntimeError`] with a message that names the thing at fault, and a
//! did-you-mean hint where a name is close to a known one. Nothing in the runtime panics on user
//! input.

use optc_kernel::KernelError;

/// What kind of name was not found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// A hyperparameter of the rule.
    Hyper,
    /// A flag of the rule.
    Flag,
    /// A registered parameter tensor.
    Param,
    /// A rule of the embedded standard library.
    StdlibRule,
}

impl std::fmt::Display for NameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameKind::Hyper => "hyper",
            NameKind::Flag => "flag",
            NameKind::Param => "parameter",
            NameKind::StdlibRule => "stdlib rule",
        })
    }
}

/// Why a runtime operation failed. Nothing is modified when an operation returns an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// A hyper, flag, parameter or stdlib rule name is not known.
    #[error("unknown {kind} `{name}` {context}{}", hint(suggestion))]
    UnknownName {
        /// What kind of name.
        kind: NameKind,
        /// The name given.
        name: String,
        /// Where it was looked up, e.g. "in rule `adamw`".
        context: String,
        /// The closest known name, if one is close.
        suggestion: Option<String>,
    },
    /// A parameter name registered twice, or given twice in one step.
    #[error("parameter `{0}` is given twice")]
    DuplicateParam(String),
    /// A buffer has the wrong number of elements.
    #[error("{what} of parameter `{name}` has {found} elements, expected {expected}")]
    Length {
        /// The parameter.
        name: String,
        /// Which buffer ("the gradient", "the parameter", "state `m`").
        what: String,
        /// The length given.
        found: usize,
        /// The length registered.
        expected: usize,
    },
    /// The number of gradients or parameters does not match the number registered.
    #[error("got {found} {what} for {expected} registered parameters")]
    Count {
        /// "gradients" or "parameters".
        what: &'static str,
        /// How many were given.
        found: usize,
        /// How many parameters are registered.
        expected: usize,
    },
    /// A tensor given as bytes is not f32.
    #[error("tensor `{name}` has dtype {found}; optc steps f32 tensors only")]
    Dtype {
        /// The tensor.
        name: String,
        /// Its dtype, as safetensors names it.
        found: String,
    },
    /// A parameter or gradient is not in the dtype the optimizer stores it in.
    #[error("parameter `{name}`: the {what} is {found}, but the optimizer stores it as {expected} (Options::precision)")]
    BufferDtype {
        /// The parameter.
        name: String,
        /// `parameter` or `gradient`.
        what: String,
        /// The dtype given.
        found: optc_kernel::Dtype,
        /// The optimizer's.
        expected: optc_kernel::Dtype,
    },
    /// A byte buffer cannot be viewed as f32: unaligned or not a whole number of f32s.
    #[error("bytes of `{name}` cannot be read as f32: {reason}")]
    Bytes {
        /// The tensor.
        name: String,
        /// What is wrong (alignment or length).
        reason: String,
    },
    /// A flag set that a prebuilt kernel was not specialized for.
    #[error("the kernel of rule `{rule}` was built with {flag}={built}; it cannot be re-specialized (load the rule from source to choose flags)")]
    FixedFlag {
        /// The rule.
        rule: String,
        /// The flag.
        flag: String,
        /// The value it was built with.
        built: bool,
    },
    /// A group id from another optimizer or out of range.
    #[error("there is no parameter group {0}")]
    UnknownGroup(usize),
    /// The rule did not compile (diagnostics rendered as plain text).
    #[error("{0}")]
    Compile(String),
    /// The kernel is malformed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The CPU JIT failed.
    #[error(transparent)]
    #[cfg(feature = "compiler")]
    Cpu(#[from] crate::cpu::CpuError),
    /// The reference interpreter failed.
    #[error("interpreter: {0}")]
    Interp(String),
    /// The thread pool could not be built.
    #[error("cannot build the thread pool: {0}")]
    ThreadPool(String),
    /// A checkpoint does not fit this optimizer or is malformed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A torch-convention state file does not fit this optimizer or is malformed.
    #[error("torch state: {0}")]
    TorchState(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A safetensors buffer could not be read or written.
    #[error("safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// The CUDA target failed (no driver, a driver error, PTX that does not fit).
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(#[from] crate::cuda::CudaError),
    /// An artifact could not be read.
    #[error(transparent)]
    Artifact(#[from] optc_kernel::ArtifactError),
    /// A feature this build lacks.
    #[error("{0}")]
    Unsupported(String),
}

fn hint(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean `{s}`?"),
        None => String::new(),
    }
}

/// An [`RuntimeError::UnknownName`] with the closest of `known` as suggestion: a name within a
/// third of its length in edits (at least one), or with Jaro-Winkler similarity of at least 0.8.
#[cfg(any(feature = "compiler", feature = "cuda"))]
pub(crate) fn unknown_name<'a>(
    kind: NameKind,
    name: &str,
    context: impl Into<String>,
    known: impl IntoIterator<Item = &'a str>,
) -> RuntimeError {
    let suggestion = known
        .into_iter()
        .filter(|k| {
            let edits = strsim::levenshtein(&name.to_lowercase(), &k.to_lowercase());
            edits <= (k.len() / 3).max(1) || strsim::jaro_winkler(name, k) >= 0.8
        })
        .max_by(|a, b| strsim::jaro_winkler(name, a).total_cmp(&strsim::jaro_winkler(name, b)))
        .map(str::to_string);
    RuntimeError::UnknownName {
        kind,
        name: name.to_string(),
        context: context.into(),
        suggestion,
    }
}

#[cfg(all(test, feature = "compiler"))]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_name() {
        let e = unknown_name(
            NameKind::Hyper,
            "lrr",
            "in rule `adamw`",
            ["lr", "eps", "beta1"],
        );
        assert_eq!(
            e.to_string(),
            "unknown hyper `lrr` in rule `adamw`; did you mean `lr`?"
        );
        let e = unknown_name(NameKind::Hyper, "zzz", "in rule `adamw`", ["lr", "eps"]);
        assert_eq!(e.to_string(), "unknown hyper `zzz` in rule `adamw`");
    }
}
