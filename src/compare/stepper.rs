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
    /// Set a hyperparameter for the following steps (what a schedule calls once per step).
    fn set_hyper(&mut self, name: &str, value: f64) -> Result<(), StepError>;
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
    /// The flags the rule declares, with their current values (none by default).
    fn flags(&self) -> Vec<(String, bool)> {
        Vec::new()
    }
    /// Set a flag. Unknown names are an error.
    fn set_flag(&mut self, name: &str, value: bool) -> Result<(), CompareError> {
        let _ = value;
        Err(unknown_setting(self, name))
    }
    /// The integer flags (compile-time counts) the rule declares, with their current values
    /// (none by default).
    fn counts(&self) -> Vec<(String, u32)> {
        Vec::new()
    }
    /// Set an integer flag (recompiles the rule). Unknown names are an error.
    fn set_count(&mut self, name: &str, value: u32) -> Result<(), CompareError> {
        let _ = value;
        Err(unknown_setting(self, name))
    }
    /// Clip by the global gradient norm (`--set max_grad_norm=V`, as
    /// `torch.nn.utils.clip_grad_norm_` before each step). Contenders that cannot clip say so.
    fn set_max_grad_norm(&mut self, value: f64) -> Result<(), CompareError> {
        let _ = value;
        Err(unknown_setting(self, MAX_GRAD_NORM))
    }
    /// Whether [`Contender::set_max_grad_norm`] is supported (an unlabeled `--set
    /// max_grad_norm=V` applies to every contender that can clip).
    fn clips(&self) -> bool {
        false
    }
    /// Keep the per-element states in `dtype` (`--state-dtype`, `docs/dtypes.md`). Contenders
    /// that keep f32 states only say so.
    fn set_state_dtype(&mut self, dtype: optc_kernel::Dtype) -> Result<(), CompareError> {
        Err(CompareError::Rule {
            rule: self.label().to_string(),
            message: format!("keeps f32 states; it cannot keep them in {dtype}"),
        })
    }
    /// Loss scaling with inf/NaN skip (`--loss-scale`): each step's gradients are scaled as a
    /// scaled loss would make them, and the optimizer unscales them. Only compiled rules take
    /// it (`optc compare` gives it to every one of them); the default refuses.
    fn set_loss_scale(
        &mut self,
        scale: crate::cli::loss_scale::LossScale,
    ) -> Result<(), CompareError> {
        let _ = scale;
        Err(unknown_setting(self, "loss_scale"))
    }
    /// Whether [`Contender::set_loss_scale`] is supported.
    fn scales_loss(&self) -> bool {
        false
    }
    /// The hypers that follow a schedule in this contender's runs (none by default; see
    /// [`crate::compare::schedule::Scheduled`]).
    fn schedules(&self) -> Vec<optc_runtime::HyperSchedule> {
        Vec::new()
    }
    /// A fresh stepper (states at their initial values) for these tensors.
    fn build(&self, tensors: &[TensorSpec]) -> Result<Box<dyn Stepper>, CompareError>;
}

/// The optimizer option every compiled rule takes (`Options::max_grad_norm`).
pub const MAX_GRAD_NORM: &str = "max_grad_norm";

/// The error for a name that is neither a hyper nor a flag of `c`, with the nearest one.
pub fn unknown_setting<C: Contender + ?Sized>(c: &C, name: &str) -> CompareError {
    let mut declared: Vec<String> = c.hypers().into_iter().map(|(n, _)| n).collect();
    declared.extend(c.flags().into_iter().map(|(n, _)| n));
    declared.extend(c.counts().into_iter().map(|(n, _)| n));
    CompareError::UnknownHyper {
        rule: c.label().to_string(),
        name: name.to_string(),
        suggestion: crate::compare::did_you_mean(name, declared.iter().map(String::as_str)),
        declared,
    }
}

/// Apply `name=raw` to a contender: a hyper takes a number, a flag `true` or `false`, an integer
/// flag a count from 0 to 99. Unknown
/// names and unparsable values are errors that name the rule (and the nearest declared name).
pub fn apply_setting(c: &mut dyn Contender, name: &str, raw: &str) -> Result<(), CompareError> {
    let bad = |why: String| CompareError::BadValue {
        rule: c.label().to_string(),
        name: name.to_string(),
        raw: raw.to_string(),
        why,
    };
    if c.hypers().iter().any(|(n, _)| n == name) {
        let value: f64 = raw
            .trim()
            .parse()
            .map_err(|_| bad("a hyper takes a number".to_string()))?;
        if !value.is_finite() {
            return Err(bad("a hyper must be finite".to_string()));
        }
        c.set_hyper(name, value)
    } else if c.flags().iter().any(|(n, _)| n == name) {
        let value = match raw.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(bad("a flag takes `true` or `false`".to_string())),
        };
        c.set_flag(name, value)
    } else if c.counts().iter().any(|(n, _)| n == name) {
        let value = optc_compiler::check::parse_count(raw).map_err(bad)?;
        c.set_count(name, value)
    } else if name == MAX_GRAD_NORM {
        let value: f64 = raw
            .trim()
            .parse()
            .map_err(|_| bad("max_grad_norm takes a number".to_string()))?;
        if value.is_nan() || value <= 0.0 {
            return Err(bad("max_grad_norm must be positive".to_string()));
        }
        c.set_max_grad_norm(value)
    } else {
        Err(unknown_setting(c, name))
    }
}
