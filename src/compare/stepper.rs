//! The seam between the harness and whatever updates the parameters.
//!
//! A [`Contender`] is one optimizer entered in a comparison: a rule with its hyperparameter
//! values. For every seeded run the harness asks it for a fresh [`Stepper`] (zeroed states) over
//! the task's tensors, then calls [`Stepper::step`] once per step. The compiled `.opt` rules and
//! the plain-Rust reference optimizers in [`crate::compare::reference`] both implement these.

use crate::compare::task::TensorSpec;
use crate::compare::CompareError;

/// Why a step failed (the runtime's error, boxed; the harness adds the rule and step).
pub type StepError = Box<dyn std::error::Error + Send + Sync>;

/// Updates a fixed list of f32 tensors in place from their gradients, owning its states.
pub trait Stepper {
    /// One optimizer step: `params[i]` is updated from `grads[i]` (same lengths as registered).
    fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>]) -> Result<(), StepError>;
    /// Bytes of optimizer state held for all tensors (per-element states and scalar states).
    fn state_bytes(&self) -> usize;
}

/// One optimizer entered in a comparison.
pub trait Contender {
    /// The name shown in the table and used by `--set LABEL:name=value`.
    fn label(&self) -> &str;
    /// Where the rule came from (a path, `stdlib:adamw`, `reference:adamw`).
    fn source(&self) -> String;
    /// The hyperparameters the rule declares, with their current values, in declaration order.
    fn hypers(&self) -> Vec<(String, f64)>;
    /// Set a hyperparameter. Unknown names are an error.
    fn set_hyper(&mut self, name: &str, value: f64) -> Result<(), CompareError>;
    /// A fresh stepper (states at their initial values) for these tensors.
    fn build(&self, tensors: &[TensorSpec]) -> Result<Box<dyn Stepper>, CompareError>;
}

/// Set `name` on a contender, checking it against the declared hypers first so that the error
/// names the rule and suggests the nearest declared name.
pub fn set_checked(c: &mut dyn Contender, name: &str, value: f64) -> Result<(), CompareError> {
    let declared = c.hypers();
    if !declared.iter().any(|(n, _)| n == name) {
        return Err(CompareError::UnknownHyper {
            rule: c.label().to_string(),
            name: name.to_string(),
            suggestion: crate::compare::did_you_mean(
                name,
                declared.iter().map(|(n, _)| n.as_str()),
            ),
            declared: declared.into_iter().map(|(n, _)| n).collect(),
        });
    }
    c.set_hyper(name, value)
}
