//! # optc-compiler
//!
//! Compiles `.opt` optimizer rules into fused per-element kernels. Pure: no unsafe, no FFI, and
//! nothing here executes generated code (the runtime does that).
//!
//! ```text
//!  source ──syntax──▶ AST ──check──▶ checked AST ──ir::lower──▶ Program (flag-generic IR)
//!                                                                   │ passes::compile(flags)
//!                                                                   ▼
//!        specialize ─▶ fold ─▶ cse ─▶ dce (dead states) ─▶ classify + hoist ─▶ Kernel
//!                                                                   │
//!                          backend::interp (meaning) ◀──────────────┼──────▶ backend::clif (CPU)
//!                                                                   └──────▶ backend::ptx (CUDA)
//! ```
//!
//! The entry point is [`Rule`]: parse and check a file once, then [`Rule::specialize`] it for
//! each flag set, and [`Rule::specialize_variant`] for each combination of its conditions on
//! hypers ([`Rule::conditions`]). [`stdlib`] holds the embedded standard rules.

pub mod backend;
pub mod check;
pub mod diag;
pub mod ir;
pub mod passes;
pub mod stdlib;
pub mod syntax;

pub use diag::{Diagnostic, Diagnostics, Severity, Span};
pub use ir::{FlagInfo, HyperInfo};
pub use optc_kernel::Kernel;
pub use optc_kernel::RankClass;
pub use optc_kernel::{Conditions, VariantId};
pub use passes::CompileOptions;

use std::fmt;

/// A parsed and checked rule, ready to be specialized for any flag set.
#[derive(Clone, Debug)]
pub struct Rule {
    program: ir::Program,
    warnings: Diagnostics,
    file_name: String,
    source: String,
}

/// Why a rule could not be specialized.
#[derive(Debug)]
pub enum CompileError {
    /// Problems in the rule file, with locations.
    Diagnostics(Diagnostics),
    /// A flag that the rule does not declare.
    UnknownFlag {
        /// The rule's name.
        rule: String,
        /// The name given.
        name: String,
        /// A close declared name.
        suggestion: Option<String>,
    },
    /// An integer flag (a compile-time count) that the rule does not declare, or a value it
    /// cannot take; the message says which.
    Count(String),
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompileError::Diagnostics(d) => write!(f, "{d}"),
            CompileError::UnknownFlag {
                rule,
                name,
                suggestion,
            } => {
                write!(f, "rule `{rule}` has no flag `{name}`")?;
                if let Some(s) = suggestion {
                    write!(f, " (did you mean `{s}`?)")?;
                }
                Ok(())
            }
            CompileError::Count(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CompileError {}

impl Rule {
    /// Parses and checks `source`, reporting problems against `file_name`. Warnings are kept in
    /// [`Rule::warnings`]; any error fails.
    pub fn parse(file_name: &str, source: &str) -> Result<Rule, Diagnostics> {
        Rule::parse_with_counts(file_name, source, &[])
    }

    /// The same rule with integer flags (`flag ns_steps = 5`, compile-time `repeat` counts) set
    /// to other values: `overrides` are `(name, count)`. Like a boolean flag, a count picks a
    /// specialization; it is fixed for every kernel of the rule returned. Fails, naming the
    /// problem, for a name the rule does not declare as an integer flag or a count above
    /// [`check::MAX_REPEAT`].
    pub fn with_counts(&self, overrides: &[(&str, u32)]) -> Result<Rule, CompileError> {
        let declared = || self.program.counts.iter().map(|(n, _)| n.as_str());
        for &(name, value) in overrides {
            if !declared().any(|n| n == name) {
                let mut msg = format!("rule `{}` has no integer flag `{name}`", self.name());
                match diag::did_you_mean(name, declared()) {
                    Some(s) => msg.push_str(&format!(" (did you mean `{s}`?)")),
                    None if self.program.counts.is_empty() => msg.push_str(" (it declares none)"),
                    None => msg.push_str(&format!(
                        " (it declares {})",
                        declared()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
                return Err(CompileError::Count(msg));
            }
            if value > check::MAX_REPEAT {
                return Err(CompileError::Count(format!(
                    "integer flag `{name}` of rule `{}` is a repeat count from 0 to {}; {value} is too large",
                    self.name(),
                    check::MAX_REPEAT
                )));
            }
            if overrides.iter().filter(|(n, _)| *n == name).count() > 1 {
                return Err(CompileError::Count(format!(
                    "integer flag `{name}` is given twice"
                )));
            }
        }
        Rule::parse_with_counts(&self.file_name, &self.source, overrides)
            .map_err(CompileError::Diagnostics)
    }

    /// The integer flags (compile-time counts) and the values this rule was lowered with, in
    /// declaration order.
    pub fn counts(&self) -> &[(String, u32)] {
        &self.program.counts
    }

    fn parse_with_counts(
        file_name: &str,
        source: &str,
        counts: &[(&str, u32)],
    ) -> Result<Rule, Diagnostics> {
        let mut diags = Diagnostics::new(file_name, source);
        let file = match syntax::parse(source) {
            Ok(f) => f,
            Err(d) => {
                diags.push(d);
                return Err(diags);
            }
        };
        let found = check::check(&file);
        for d in found {
            diags.push(d);
        }
        if diags.has_errors() {
            return Err(diags);
        }
        let table = check::decl_table(&file);
        let program = ir::lower::lower_with_counts(&file, &table, counts);
        let rule = Rule {
            program,
            warnings: diags,
            file_name: file_name.to_string(),
            source: source.to_string(),
        };
        // Every flag combination (and rank class) must compile; report the first that does not,
        // located.
        let ranks: &[RankClass] = if rule.program.uses_rank() {
            &[RankClass::Matrix, RankClass::Vector]
        } else {
            &[RankClass::Any]
        };
        for flags in rule.flag_sets() {
            for &rank in ranks {
                let options = CompileOptions {
                    clip: false,
                    rank,
                    ..Default::default()
                };
                let checked = passes::compile_with(&rule.program, &flags, &options)
                    .and_then(|_| passes::variants::conditions(&rule.program, &flags, &options));
                if let Err(d) = checked {
                    let mut diags = Diagnostics::new(file_name, source);
                    diags.push(d);
                    return Err(diags);
                }
            }
        }
        Ok(rule)
    }

    /// Like [`Rule::parse`] for raw bytes: text that is not UTF-8 is an error at the first bad
    /// byte.
    pub fn parse_bytes(file_name: &str, bytes: &[u8]) -> Result<Rule, Diagnostics> {
        match std::str::from_utf8(bytes) {
            Ok(s) => Rule::parse(file_name, s),
            Err(e) => {
                let at = e.valid_up_to();
                let shown = String::from_utf8_lossy(bytes);
                let mut diags = Diagnostics::new(file_name, &shown);
                // Lossy decoding keeps the valid prefix byte for byte and shows the bad byte as
                // U+FFFD, so the span covers that whole character.
                diags.push(
                    Diagnostic::error(
                        "E0005",
                        "the file is not valid UTF-8",
                        Span::new(at, at + char::REPLACEMENT_CHARACTER.len_utf8()),
                        "invalid byte here",
                    )
                    .hint("save the rule file as UTF-8 text"),
                );
                Err(diags)
            }
        }
    }

    /// The rule's name (`optimizer NAME`).
    pub fn name(&self) -> &str {
        &self.program.name
    }
    /// The doc comment above `optimizer`.
    pub fn doc(&self) -> &str {
        &self.program.doc
    }
    /// The hypers, in declaration order.
    pub fn hypers(&self) -> &[HyperInfo] {
        &self.program.hypers
    }
    /// The flags, in declaration order.
    pub fn flags(&self) -> &[FlagInfo] {
        &self.program.flags
    }
    /// Whether the rule reads the built-in `matrix` condition: it then compiles to one kernel
    /// per rank class ([`CompileOptions::rank`]), and the runtime picks the kernel per tensor.
    pub fn uses_rank(&self) -> bool {
        self.program.uses_rank()
    }
    /// The flag-generic IR.
    pub fn program(&self) -> &ir::Program {
        &self.program
    }
    /// Warnings found while checking.
    pub fn warnings(&self) -> &Diagnostics {
        &self.warnings
    }
    /// The file name diagnostics refer to.
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// Every combination of flag values, as vectors in declaration order (all false first).
    pub fn flag_sets(&self) -> Vec<Vec<bool>> {
        let n = self.program.flags.len().min(16);
        (0..1u32 << n)
            .map(|bits| (0..n).map(|i| bits & (1 << i) != 0).collect())
            .collect()
    }

    /// The flag values with `overrides` applied to the defaults.
    pub fn flag_values(&self, overrides: &[(&str, bool)]) -> Result<Vec<bool>, CompileError> {
        let mut values: Vec<bool> = self.program.flags.iter().map(|f| f.default).collect();
        for (name, v) in overrides {
            match self.program.flags.iter().position(|f| f.name == *name) {
                Some(i) => values[i] = *v,
                None => {
                    return Err(CompileError::UnknownFlag {
                        rule: self.name().to_string(),
                        name: name.to_string(),
                        suggestion: diag::did_you_mean(
                            name,
                            self.program.flags.iter().map(|f| f.name.as_str()),
                        )
                        .map(String::from),
                    })
                }
            }
        }
        Ok(values)
    }

    /// Compiles the kernel for the default flags with `overrides` applied.
    pub fn specialize(&self, overrides: &[(&str, bool)]) -> Result<Kernel, CompileError> {
        let values = self.flag_values(overrides)?;
        self.specialize_values(&values)
    }

    /// Compiles the kernel for explicit flag values, one per flag in declaration order.
    pub fn specialize_values(&self, flags: &[bool]) -> Result<Kernel, CompileError> {
        self.specialize_values_with(flags, &CompileOptions::default())
    }

    /// Like [`Rule::specialize`], with compile options (such as clipping by global norm).
    pub fn specialize_with(
        &self,
        overrides: &[(&str, bool)],
        options: &CompileOptions,
    ) -> Result<Kernel, CompileError> {
        let values = self.flag_values(overrides)?;
        self.specialize_values_with(&values, options)
    }

    /// Like [`Rule::specialize_values`], with compile options. The kernel keeps every condition
    /// on hypers as a select: it describes the flag set (its states are all those a variant may
    /// use); [`Rule::specialize_variant`] gives the kernels a runtime runs.
    pub fn specialize_values_with(
        &self,
        flags: &[bool],
        options: &CompileOptions,
    ) -> Result<Kernel, CompileError> {
        passes::compile_with(&self.program, flags, options).map_err(|d| self.located(d))
    }

    /// The conditions on hypers alone that choose a kernel variant for the flag values `flags`
    /// (see [`optc_kernel::variant`]).
    pub fn conditions(
        &self,
        flags: &[bool],
        options: &CompileOptions,
    ) -> Result<Conditions, CompileError> {
        passes::variants::conditions(&self.program, flags, options).map_err(|d| self.located(d))
    }

    /// The kernel of `variant` (of [`Rule::conditions`]) for the flag values `flags`.
    pub fn specialize_variant(
        &self,
        flags: &[bool],
        options: &CompileOptions,
        variant: VariantId,
    ) -> Result<Kernel, CompileError> {
        passes::variants::compile_variant(&self.program, flags, options, variant)
            .map_err(|d| self.located(d))
    }

    fn located(&self, d: Diagnostic) -> CompileError {
        let mut diags = Diagnostics::new(&self.file_name, &self.source);
        diags.push(d);
        CompileError::Diagnostics(diags)
    }
}
