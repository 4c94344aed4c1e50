//! The compiled artifact: everything a runtime needs to launch a rule's CUDA kernels without the
//! `.opt` source and without the compiler.
//!
//! Stored as JSON (`*.optc.json`): the format version, the kernel description (buffer order, host
//! program, hyper defaults, flags) and the PTX text with, per stage, its entry points, their
//! parameters and the multi-tensor record layout as data ([`crate::abi`]).

use crate::abi::Param;
use crate::kernel::{Kernel, KernelError, FORMAT_VERSION};
use crate::table::TableLayout;
use crate::variant::{Conditions, VariantId};
use serde::{Deserialize, Serialize};

/// One entry point of a PTX module: its name and its parameters, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtxEntry {
    /// The `.entry` name.
    pub name: String,
    /// Its parameters ([`crate::abi`]); the launcher passes one argument per parameter.
    pub params: Vec<Param>,
}

/// The entries of one stage and what their launches must respect (see `docs/cuda.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageEntries {
    /// The entry with the `ld.global.v4.f32` body (every pointer 16-byte aligned).
    pub vector: PtxEntry,
    /// The one-element-at-a-time entry (any 4-byte alignment).
    pub scalar: PtxEntry,
    /// The multi-tensor entry, which walks a device-side table of tensors.
    pub multi: PtxEntry,
    /// The layout of one tensor record of the multi-tensor table.
    pub record: TableLayout,
    /// `chunk_elems` of the multi-tensor entry must be a positive multiple of this.
    pub chunk_multiple: usize,
    /// Threads per block must be a multiple of this (32 for a stage with reductions).
    pub block_multiple: u32,
}

/// The entries of one stage of a factored kernel (`[rows]`/`[cols]` values; see
/// [`crate::factored`] for where they work and write).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactoredEntries {
    /// The rows entry (one warp per row block): the stores and the Row-, Tensor- and Step-scope
    /// partials.
    pub rows: PtxEntry,
    /// The cols entry (one thread per column block), when the stage has Col-scope outputs:
    /// launched before `rows`.
    pub cols: Option<PtxEntry>,
    /// Threads per block must be a multiple of this (32: whole warps).
    pub block_multiple: u32,
}

/// PTX for one kernel: one module with three entries per stage, listed as data (or, for a
/// factored kernel, the [`FactoredEntries`] of each stage).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtxModule {
    /// `.version` of the PTX, for example `8.0`.
    pub version: String,
    /// `.target`, for example `sm_80`.
    pub target: String,
    /// The PTX source (one module holding every entry).
    pub source: String,
    /// The entries of each stage, in stage order (empty for a factored kernel).
    pub stages: Vec<StageEntries>,
    /// The entries of each stage of a factored kernel, in stage order (empty otherwise).
    #[serde(default)]
    pub factored: Vec<FactoredEntries>,
}

/// A compiled rule, as written by `optc compile --target cuda`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// [`FORMAT_VERSION`] at the time of writing.
    pub format_version: u32,
    /// The kernel description: the flag set's kernel with every condition on hypers kept as a
    /// select. Its states are every state a variant may allocate.
    pub kernel: Kernel,
    /// The PTX of `kernel`, when compiled for CUDA.
    pub ptx: Option<PtxModule>,
    /// The conditions on hypers that choose a variant (`crate::variant`); empty when the rule has
    /// none.
    #[serde(default)]
    pub conditions: Conditions,
    /// One entry per variant, in [`VariantId`] order (`2^n` for `n` conditions); empty when
    /// there are no conditions.
    #[serde(default)]
    pub variants: Vec<ArtifactVariant>,
}

/// One variant of an artifact: its kernel and, for CUDA, its PTX.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArtifactVariant {
    /// The variant's kernel.
    pub kernel: Kernel,
    /// Its PTX, when compiled for CUDA.
    pub ptx: Option<PtxModule>,
}

/// Why an artifact could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Not JSON of the right shape.
    #[error("not an optc artifact: {0}")]
    Parse(#[from] serde_json::Error),
    /// Written by another format version.
    #[error("artifact format version {found} is not supported (this build reads version {expected}); recompile the rule")]
    Version {
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// The kernel in it does not hold together.
    #[error(transparent)]
    Invalid(#[from] KernelError),
    /// Its PTX entry lists do not fit its kernel.
    #[error(
        "the PTX entries in the artifact do not fit rule `{rule}`: {reason}; recompile the rule"
    )]
    Entries {
        /// The rule's name.
        rule: String,
        /// What does not fit.
        reason: String,
    },
}

impl Artifact {
    /// Wraps a kernel (and its PTX) with the current format version, without variants.
    pub fn new(kernel: Kernel, ptx: Option<PtxModule>) -> Self {
        Artifact {
            format_version: FORMAT_VERSION,
            kernel,
            ptx,
            conditions: Conditions::default(),
            variants: Vec::new(),
        }
    }

    /// Adds the conditions and one variant per [`VariantId`] of them, in order.
    pub fn with_variants(mut self, conditions: Conditions, variants: Vec<ArtifactVariant>) -> Self {
        self.conditions = conditions;
        self.variants = variants;
        self
    }

    /// The kernel and PTX of `variant` (the description kernel when there are no conditions).
    pub fn variant(&self, variant: VariantId) -> Option<(&Kernel, Option<&PtxModule>)> {
        if self.conditions.is_empty() {
            return (variant == VariantId(0)).then_some((&self.kernel, self.ptx.as_ref()));
        }
        self.variants
            .get(variant.index())
            .map(|v| (&v.kernel, v.ptx.as_ref()))
    }

    /// Serializes to JSON text.
    pub fn to_json(&self) -> Result<String, ArtifactError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Parses and validates JSON text.
    pub fn from_json(text: &str) -> Result<Self, ArtifactError> {
        #[derive(Deserialize)]
        struct Header {
            format_version: u32,
        }
        let header: Header = serde_json::from_str(text)?;
        if header.format_version != FORMAT_VERSION {
            return Err(ArtifactError::Version {
                found: header.format_version,
                expected: FORMAT_VERSION,
            });
        }
        let artifact: Artifact = serde_json::from_str(text)?;
        let rule = artifact.kernel.rule.clone();
        let entries = |reason: String| ArtifactError::Entries {
            rule: rule.clone(),
            reason,
        };
        artifact
            .conditions
            .validate(artifact.kernel.hypers.len())
            .map_err(|e| entries(e.to_string()))?;
        let want = if artifact.conditions.is_empty() {
            0
        } else {
            artifact.conditions.variants().count()
        };
        if artifact.variants.len() != want {
            return Err(entries(format!(
                "{} variants for {} conditions (expected {want})",
                artifact.variants.len(),
                artifact.conditions.conditions.len()
            )));
        }
        let all = std::iter::once((&artifact.kernel, artifact.ptx.as_ref())).chain(
            artifact
                .variants
                .iter()
                .map(|v| (&v.kernel, v.ptx.as_ref())),
        );
        for (kernel, ptx) in all {
            kernel.validate()?;
            if kernel.hypers != artifact.kernel.hypers || kernel.flags != artifact.kernel.flags {
                return Err(entries("a variant has other hypers or flags".into()));
            }
            if artifact.ptx.is_some() != ptx.is_some() {
                return Err(entries("some variants have PTX and some do not".into()));
            }
            if let Some(ptx) = ptx {
                crate::abi::check(kernel, ptx).map_err(entries)?;
            }
        }
        Ok(artifact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arena, Expr, HyperDecl, Stage};

    #[test]
    fn non_finite_numbers_round_trip() {
        let mut host = Arena::new();
        host.append(Expr::Const(f64::INFINITY));
        host.append(Expr::Const(f64::NEG_INFINITY));
        host.append(Expr::Const(f64::NAN));
        let kernel = Kernel {
            rule: "r".into(),
            flags: vec![],
            hypers: vec![HyperDecl {
                name: "h".into(),
                default: f64::INFINITY,
            }],
            states: vec![],
            scalars: vec![],
            init: Arena::new(),
            rank: Default::default(),
            host,
            variant: Vec::new(),
            scalar_updates: vec![],
            vectors: Default::default(),
            reductions: vec![],
            stages: vec![Stage::default()],
        };
        let text = Artifact::new(kernel, None).to_json().expect("serializes");
        let back = Artifact::from_json(&text).expect("reads back");
        assert_eq!(back.kernel.hypers[0].default, f64::INFINITY);
        let consts: Vec<f64> = back
            .kernel
            .host
            .iter()
            .filter_map(|(_, e)| match e {
                Expr::Const(c) => Some(*c),
                _ => None,
            })
            .collect();
        assert_eq!(consts[0], f64::INFINITY);
        assert_eq!(consts[1], f64::NEG_INFINITY);
        assert!(consts[2].is_nan());
    }
}
