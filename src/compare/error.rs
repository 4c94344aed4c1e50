//! The errors of `optc compare`, each a complete message for the user.

use std::path::PathBuf;

/// Why a comparison could not run.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// `--task` names no built-in task.
    #[error("unknown task `{name}`{}; the tasks are: {}", hint(suggestion), crate::compare::task::TASK_NAMES.join(", "))]
    UnknownTask {
        /// What was asked for.
        name: String,
        /// The nearest task name, if one is close.
        suggestion: Option<String>,
    },
    /// A rule argument could not be loaded or compiled; `message` holds the rendered diagnostics.
    #[error("cannot load rule `{rule}`:\n{message}")]
    Rule {
        /// The argument as given.
        rule: String,
        /// The compiler's diagnostics or the I/O error, rendered.
        message: String,
    },
    /// `--set` names a rule that is not in the comparison.
    #[error("`--set {arg}`: no rule labelled `{label}`{}; the rules are: {}", hint(suggestion), known.join(", "))]
    UnknownRule {
        /// The whole `--set` argument.
        arg: String,
        /// The label it names.
        label: String,
        /// The nearest label, if one is close.
        suggestion: Option<String>,
        /// The labels in the comparison.
        known: Vec<String>,
    },
    /// A hyperparameter or flag the rule does not declare.
    #[error("rule `{rule}` has no hyper or flag `{name}`{}; it declares: {}", hint(suggestion), declared.join(", "))]
    UnknownHyper {
        /// The rule's label.
        rule: String,
        /// The name asked for.
        name: String,
        /// The nearest declared name, if one is close.
        suggestion: Option<String>,
        /// The declared names.
        declared: Vec<String>,
    },
    /// A value that does not fit the hyper or flag it is given to.
    #[error("rule `{rule}`: `{name}={raw}`: {why}")]
    BadValue {
        /// The rule's label.
        rule: String,
        /// The hyper or flag.
        name: String,
        /// The value as given.
        raw: String,
        /// What is wrong.
        why: String,
    },
    /// A malformed `--set` argument.
    #[error("`--set {arg}`: {why} (expected RULE:NAME=VALUE or NAME=VALUE, e.g. `adamw:lr=3e-3`)")]
    BadSet {
        /// The whole argument.
        arg: String,
        /// What is wrong with it.
        why: String,
    },
    /// A bad command-line value other than the above.
    #[error("{0}")]
    Usage(String),
    /// The optimizer failed while stepping.
    #[error("rule `{rule}` failed at step {step}: {message}")]
    Step {
        /// The rule's label.
        rule: String,
        /// The step (1-based).
        step: usize,
        /// The runtime's message.
        message: String,
    },
    /// Writing an output file failed.
    #[error("cannot write {}: {message}", path.display())]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A bug in optc (for example, corrupt embedded data).
    #[error("internal error: {0}")]
    Internal(String),
}

fn hint(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

/// The candidate nearest to `name` by Jaro–Winkler similarity, if it is close enough to be a
/// likely typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|&(score, _)| score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}
