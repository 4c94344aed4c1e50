//! A loaded optimizer rule: where kernels come from.
//!
//! Takes a prebuilt [`Kernel`] (for example from an artifact) or, with the feature `compiler`, a
//! `.opt` rule from a file, a string, the embedded standard library, or an already parsed
//! `optc_compiler::Rule`. Gives the rule's name, its
//! hypers and flags with their defaults, and one specialized [`Kernel`] per flag set. A rule from a
//! prebuilt kernel has its flags fixed: asking for other values is an error, not a silent
//! mismatch.

use crate::error::{unknown_name, NameKind, RuntimeError};
use optc_kernel::artifact::PtxModule;
use optc_kernel::{Artifact, Conditions, FlagValue, HyperDecl, Kernel, RankClass, VariantId};

/// What an optimizer adds to every kernel of a rule, around the rule's own math: clipping by
/// global norm (the hyper `max_grad_norm`) and loss scaling (the hyper `loss_scale` and the
/// inf/NaN check).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GradPrep {
    /// Clip by the global gradient norm.
    pub clip: bool,
    /// Unscale the gradients and check them for infs and NaNs.
    pub loss_scale: bool,
}

#[cfg(feature = "compiler")]
impl GradPrep {
    /// The compiler's options for a kernel of rank class `rank` with this preparation.
    fn options(self, rank: RankClass) -> optc_compiler::CompileOptions {
        optc_compiler::CompileOptions {
            clip: self.clip,
            loss_scale: self.loss_scale,
            rank,
        }
    }
}

/// An optimizer rule, ready to be specialized into kernels. See the module docs.
pub struct Rule {
    name: String,
    hypers: Vec<HyperDecl>,
    flags: Vec<FlagValue>,
    /// Each state's torch name, by state name; `None` for a rule from a prebuilt kernel.
    torch_names: Option<Vec<(String, String)>>,
    source: Source,
}

enum Source {
    /// A prebuilt kernel, or an artifact with its variants.
    Kernel(Box<Artifact>),
    #[cfg(feature = "compiler")]
    Compiler(Box<optc_compiler::Rule>),
}

impl Rule {
    /// A rule made of one prebuilt kernel. Its flags are the ones it was specialized for.
    ///
    /// Fails when the kernel does not validate.
    pub fn from_kernel(kernel: Kernel) -> Result<Rule, RuntimeError> {
        kernel.validate()?;
        Ok(Rule {
            name: kernel.rule.clone(),
            hypers: kernel.hypers.clone(),
            flags: kernel.flags.clone(),
            torch_names: None,
            source: Source::Kernel(Box::new(Artifact::new(kernel, None))),
        })
    }

    /// A rule from a compiled artifact (`optc compile --target cuda`): its kernel and, for the
    /// CUDA target, its PTX. Needs no compiler. Fails when the kernel does not validate.
    pub fn from_artifact(artifact: Artifact) -> Result<Rule, RuntimeError> {
        artifact.kernel.validate()?;
        for v in &artifact.variants {
            v.kernel.validate()?;
        }
        artifact
            .conditions
            .validate(artifact.kernel.hypers.len())
            .map_err(|e| RuntimeError::Unsupported(e.to_string()))?;
        Ok(Rule {
            name: artifact.kernel.rule.clone(),
            hypers: artifact.kernel.hypers.clone(),
            flags: artifact.kernel.flags.clone(),
            torch_names: None,
            source: Source::Kernel(Box::new(artifact)),
        })
    }

    /// Parses an artifact's JSON (`*.optc.json`) into a rule ([`Rule::from_artifact`]).
    pub fn from_artifact_json(json: &str) -> Result<Rule, RuntimeError> {
        Rule::from_artifact(Artifact::from_json(json)?)
    }

    /// A rule parsed and checked by the compiler; kernels are specialized from it on demand.
    #[cfg(feature = "compiler")]
    pub fn from_compiled(rule: optc_compiler::Rule) -> Rule {
        Rule {
            name: rule.name().to_string(),
            hypers: rule
                .hypers()
                .iter()
                .map(|h| HyperDecl {
                    name: h.name.clone(),
                    default: h.default,
                })
                .collect(),
            flags: rule
                .flags()
                .iter()
                .map(|f| FlagValue {
                    name: f.name.clone(),
                    value: f.default,
                })
                .collect(),
            torch_names: Some(
                rule.program()
                    .states
                    .iter()
                    .map(|s| {
                        let torch = s.torch_name.clone().unwrap_or_else(|| s.name.clone());
                        (s.name.clone(), torch)
                    })
                    .collect(),
            ),
            source: Source::Compiler(Box::new(rule)),
        }
    }

    /// Parses and checks `.opt` source; `file_name` is what diagnostics refer to. The error holds
    /// the rendered diagnostics.
    #[cfg(feature = "compiler")]
    pub fn from_source(file_name: &str, source: &str) -> Result<Rule, RuntimeError> {
        optc_compiler::Rule::parse(file_name, source)
            .map(Rule::from_compiled)
            .map_err(|d| RuntimeError::Compile(d.render(false)))
    }

    /// Reads, parses and checks a `.opt` file.
    #[cfg(feature = "compiler")]
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Rule, RuntimeError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| RuntimeError::Io {
            path: path.display().to_string(),
            source,
        })?;
        optc_compiler::Rule::parse_bytes(&path.display().to_string(), &bytes)
            .map(Rule::from_compiled)
            .map_err(|d| RuntimeError::Compile(d.render(false)))
    }

    /// A rule of the embedded standard library, by name (`"adamw"`, `"sgd"`, ...).
    #[cfg(feature = "compiler")]
    pub fn stdlib(name: &str) -> Result<Rule, RuntimeError> {
        match optc_compiler::stdlib::rule(name) {
            Some(parsed) => parsed
                .map(Rule::from_compiled)
                .map_err(|d| RuntimeError::Compile(d.render(false))),
            None => Err(unknown_name(
                NameKind::StdlibRule,
                name,
                format!(
                    "(the stdlib has {})",
                    optc_compiler::stdlib::names()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                optc_compiler::stdlib::names(),
            )),
        }
    }

    /// The rule's name (`optimizer NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hypers, in declaration order, with their defaults.
    pub fn hypers(&self) -> &[HyperDecl] {
        &self.hypers
    }

    /// The flags, in declaration order, with their default values (for a prebuilt kernel: the
    /// values it was built with).
    pub fn flags(&self) -> &[FlagValue] {
        &self.flags
    }

    /// The same rule with integer flags (`flag ns_steps = 5`: compile-time `repeat` counts) set
    /// to other values, `(name, count)`: like a boolean flag, a count picks a specialization. A
    /// name the rule does not declare as an integer flag, or a count above 99, is an error naming
    /// it; so is any count for a rule from a prebuilt kernel or artifact, whose counts were fixed
    /// when it was compiled.
    pub fn with_counts(self, counts: &[(&str, u32)]) -> Result<Rule, RuntimeError> {
        if counts.is_empty() {
            return Ok(self);
        }
        match &self.source {
            #[cfg(feature = "compiler")]
            Source::Compiler(rule) => rule
                .with_counts(counts)
                .map(Rule::from_compiled)
                .map_err(|e| match e {
                    optc_compiler::CompileError::Diagnostics(d) => {
                        RuntimeError::Compile(d.render(false))
                    }
                    other => RuntimeError::Unsupported(other.to_string()),
                }),
            Source::Kernel(_) => Err(RuntimeError::Unsupported(format!(
                "rule `{}` is a prebuilt kernel: its integer flags (`{}`) were fixed when it was compiled; compile it again with other values (`optc compile --set NAME=N`)",
                self.name,
                counts[0].0
            ))),
        }
    }

    /// The name torch gives state `state` (`exp_avg` for adamw's `m`): its `as` name, or its own.
    /// `None` for a state the rule does not declare, and for every state of a rule made from a
    /// prebuilt kernel (kernels do not record torch names).
    pub fn torch_name(&self, state: &str) -> Option<&str> {
        self.torch_names
            .as_ref()?
            .iter()
            .find(|(s, _)| s == state)
            .map(|(_, t)| t.as_str())
    }

    /// The full flag vector (declaration order) for the defaults overridden by `set`.
    pub(crate) fn resolve_flags(&self, set: &[(&str, bool)]) -> Result<Vec<bool>, RuntimeError> {
        let mut values: Vec<bool> = self.flags.iter().map(|f| f.value).collect();
        for &(name, value) in set {
            let i = self
                .flags
                .iter()
                .position(|f| f.name == name)
                .ok_or_else(|| {
                    unknown_name(
                        NameKind::Flag,
                        name,
                        format!("in rule `{}`", self.name),
                        self.flags.iter().map(|f| f.name.as_str()),
                    )
                })?;
            values[i] = value;
        }
        Ok(values)
    }

    /// The rank classes this rule has one kernel each for: `[Matrix, Vector]` for a rule that
    /// reads the built-in `matrix` condition, else `[Any]`; a prebuilt kernel has its own class.
    pub(crate) fn rank_classes(&self) -> Vec<RankClass> {
        match &self.source {
            Source::Kernel(a) => vec![a.kernel.rank],
            #[cfg(feature = "compiler")]
            Source::Compiler(rule) if rule.uses_rank() => {
                vec![RankClass::Matrix, RankClass::Vector]
            }
            #[cfg(feature = "compiler")]
            Source::Compiler(_) => vec![RankClass::Any],
        }
    }

    /// The kernel specialized for `flags` (a full vector from [`Rule::resolve_flags`]) and the
    /// rank class `rank` (one of [`Rule::rank_classes`]), with what `prep` adds.
    pub(crate) fn specialize(
        &self,
        flags: &[bool],
        rank: RankClass,
        prep: GradPrep,
    ) -> Result<Kernel, RuntimeError> {
        match &self.source {
            Source::Kernel(a) => {
                let kernel = &a.kernel;
                if kernel.rank != rank {
                    return Err(RuntimeError::Unsupported(format!(
                        "internal: the prebuilt kernel of rule `{}` is for {:?} tensors, not {rank:?}",
                        self.name, kernel.rank
                    )));
                }
                if prep.clip && kernel.grad_norm_reduction().is_none() {
                    return Err(RuntimeError::Unsupported(format!(
                        "the prebuilt kernel of rule `{}` was compiled without clipping; compile it with `optc compile --set max_grad_norm=V` to clip",
                        self.name
                    )));
                }
                if prep.loss_scale && kernel.nonfinite_reduction().is_none() {
                    return Err(RuntimeError::Unsupported(format!(
                        "the prebuilt kernel of rule `{}` was compiled without loss scaling; compile it with `optc compile --loss-scale` to scale",
                        self.name
                    )));
                }
                for (decl, &want) in self.flags.iter().zip(flags) {
                    if decl.value != want {
                        return Err(RuntimeError::FixedFlag {
                            rule: self.name.clone(),
                            flag: decl.name.clone(),
                            built: decl.value,
                        });
                    }
                }
                Ok(kernel.clone())
            }
            #[cfg(feature = "compiler")]
            Source::Compiler(rule) => {
                let options = prep.options(rank);
                rule.specialize_values_with(flags, &options)
                    .map_err(|e| RuntimeError::Compile(e.to_string()))
            }
        }
    }

    /// The conditions on hypers that choose among the variants of the kernel
    /// [`Rule::specialize`] gives for the same arguments (which it checks).
    pub(crate) fn conditions(
        &self,
        flags: &[bool],
        rank: RankClass,
        prep: GradPrep,
    ) -> Result<Conditions, RuntimeError> {
        match &self.source {
            Source::Kernel(a) => {
                // The artifact is for one flag set, rank class, clipping and loss scaling:
                // `specialize` checks.
                let _ = (flags, rank, prep);
                Ok(a.conditions.clone())
            }
            #[cfg(feature = "compiler")]
            Source::Compiler(rule) => {
                let options = prep.options(rank);
                rule.conditions(flags, &options)
                    .map_err(|e| RuntimeError::Compile(e.to_string()))
            }
        }
    }

    /// The kernel of `variant` (of [`Rule::conditions`]) and, for an artifact, its PTX. The
    /// arguments are those [`Rule::specialize`] accepted.
    pub(crate) fn specialize_variant(
        &self,
        flags: &[bool],
        rank: RankClass,
        prep: GradPrep,
        variant: VariantId,
    ) -> Result<(Kernel, Option<PtxModule>), RuntimeError> {
        match &self.source {
            Source::Kernel(a) => {
                let _ = (flags, rank, prep);
                a.variant(variant)
                    .map(|(k, ptx)| (k.clone(), ptx.cloned()))
                    .ok_or_else(|| {
                        RuntimeError::Unsupported(format!(
                            "internal: the artifact of rule `{}` has no variant {variant}",
                            self.name
                        ))
                    })
            }
            #[cfg(feature = "compiler")]
            Source::Compiler(rule) => {
                let options = prep.options(rank);
                rule.specialize_variant(flags, &options, variant)
                    .map(|k| (k, None))
                    .map_err(|e| RuntimeError::Compile(e.to_string()))
            }
        }
    }
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("name", &self.name)
            .field("hypers", &self.hypers)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}
