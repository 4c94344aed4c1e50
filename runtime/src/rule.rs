//! A loaded optimizer rule: where kernels come from.
//!
//! Takes a prebuilt [`Kernel`] (for example from an artifact) or, with the feature `compiler`, a
//! `.opt` rule from a file, a string or the embedded standard library. Gives the rule's name, its
//! hypers and flags with their defaults, and one specialized [`Kernel`] per flag set. A rule from a
//! prebuilt kernel has its flags fixed: asking for other values is an error, not a silent
//! mismatch.

use crate::error::{unknown_name, NameKind, RuntimeError};
use optc_kernel::{FlagValue, HyperDecl, Kernel};

/// An optimizer rule, ready to be specialized into kernels. See the module docs.
pub struct Rule {
    name: String,
    hypers: Vec<HyperDecl>,
    flags: Vec<FlagValue>,
    source: Source,
}

enum Source {
    Kernel(Box<Kernel>),
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
            source: Source::Kernel(Box::new(kernel)),
        })
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

    /// The position of hyper `name`, or an error with a did-you-mean hint.
    pub(crate) fn hyper_index(&self, name: &str) -> Result<usize, RuntimeError> {
        self.hypers
            .iter()
            .position(|h| h.name == name)
            .ok_or_else(|| {
                unknown_name(
                    NameKind::Hyper,
                    name,
                    format!("in rule `{}`", self.name),
                    self.hypers.iter().map(|h| h.name.as_str()),
                )
            })
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

    /// The kernel specialized for `flags` (a full vector from [`Rule::resolve_flags`]).
    pub(crate) fn specialize(&self, flags: &[bool]) -> Result<Kernel, RuntimeError> {
        match &self.source {
            Source::Kernel(kernel) => {
                for (decl, &want) in self.flags.iter().zip(flags) {
                    if decl.value != want {
                        return Err(RuntimeError::FixedFlag {
                            rule: self.name.clone(),
                            flag: decl.name.clone(),
                            built: decl.value,
                        });
                    }
                }
                Ok((**kernel).clone())
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
