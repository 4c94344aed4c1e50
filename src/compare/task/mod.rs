//! The built-in objectives that `optc compare` trains on.
//!
//! A [`Task`] is a fixed problem (data, model or function, target); [`Task::start`] gives a
//! [`TaskRun`]: one seeded trajectory's initial parameters and its (possibly minibatch) loss and
//! gradient. Every gradient is computed in plain Rust, in f64, from f32 parameters, and is checked
//! against finite differences in `tests/compare_grad.rs`. Everything is a function of the seed
//! alone: the same seed gives bitwise the same numbers.

mod digits;
mod digits_data;
mod quadratic;
mod rosenbrock;

#[allow(unused_imports)]
// the harness's surface (private to the binary; parts serve only its tests)
pub use digits::{DigitsMlp, Mlp};
#[allow(unused_imports)]
// the harness's surface (private to the binary; parts serve only its tests)
pub use digits_data::{Digits, DIGITS_TEST, DIGITS_TRAIN};
pub use quadratic::Quadratic;
pub use rosenbrock::Rosenbrock;

use crate::compare::CompareError;

/// What "reached the target" means for a task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Test accuracy (fraction in [0, 1]) at least this.
    TestAccuracyAtLeast(f64),
    /// Loss at most this.
    LossAtMost(f64),
}

impl Target {
    /// Whether an evaluation meets the target.
    pub fn is_met(&self, eval: &Eval) -> bool {
        match *self {
            Target::TestAccuracyAtLeast(a) => eval.test_accuracy.is_some_and(|x| x >= a),
            Target::LossAtMost(l) => eval.loss <= l,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Target::TestAccuracyAtLeast(a) => write!(f, "test accuracy >= {:.1}%", a * 100.0),
            Target::LossAtMost(l) => write!(f, "loss <= {l:e}"),
        }
    }
}

/// An evaluation of the current parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Eval {
    /// Full-batch training loss (for the analytic tasks: the objective itself).
    pub loss: f64,
    /// Accuracy on the held-out test split, for tasks that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
}

/// One parameter tensor of a task's model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name, for messages (`w1`, `b1`, `x`).
    pub name: &'static str,
    /// Shape; the data is row-major.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    #[allow(dead_code)] // part of the harness's surface; not every item has a caller
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A built-in problem.
pub trait Task: Send + Sync {
    /// The name used on the command line.
    fn name(&self) -> &'static str;
    /// One line saying what it is.
    fn describe(&self) -> String;
    /// The parameter tensors, in the order `TaskRun` uses.
    fn tensors(&self) -> Vec<TensorSpec>;
    /// The target that "steps to target" counts to.
    fn target(&self) -> Target;
    /// Evaluate every this many steps (and after the last step).
    fn eval_every(&self) -> usize;
    /// Default number of optimizer steps.
    fn default_steps(&self) -> usize;
    /// Start one seeded trajectory.
    fn start(&self, seed: u64) -> Box<dyn TaskRun + '_>;
}

/// One seeded trajectory of a task.
pub trait TaskRun {
    /// The initial parameters (a function of the seed).
    fn init(&self) -> Vec<Vec<f32>>;
    /// The loss at `params` on the next minibatch, writing its gradient to `grads` (same shapes).
    /// Each call advances to the next minibatch.
    fn loss_grad(&mut self, params: &[Vec<f32>], grads: &mut [Vec<f32>]) -> f64;
    /// Evaluate `params` (full training set; test split if any). Does not advance anything.
    fn evaluate(&self, params: &[Vec<f32>]) -> Eval;
}

/// Names of the built-in tasks, for help text and errors.
pub const TASK_NAMES: [&str; 3] = ["digits-mlp", "rosenbrock", "quadratic"];

/// Look a built-in task up by name.
pub fn by_name(name: &str) -> Result<Box<dyn Task>, CompareError> {
    match name {
        "digits-mlp" => Ok(Box::new(DigitsMlp::new()?)),
        "rosenbrock" => Ok(Box::new(Rosenbrock::new(Rosenbrock::DEFAULT_DIM))),
        "quadratic" => Ok(Box::new(Quadratic::new(
            Quadratic::DEFAULT_DIM,
            Quadratic::DEFAULT_CONDITION,
        ))),
        _ => Err(CompareError::UnknownTask {
            name: name.to_string(),
            suggestion: crate::compare::did_you_mean(name, TASK_NAMES.iter().copied()),
        }),
    }
}

/// f32 parameters widened to f64, the precision every task computes in.
pub(crate) fn widen(params: &[Vec<f32>]) -> Vec<Vec<f64>> {
    params
        .iter()
        .map(|t| t.iter().map(|&x| f64::from(x)).collect())
        .collect()
}

/// Write f64 gradients into f32 buffers (round to nearest).
pub(crate) fn narrow_into(src: &[Vec<f64>], dst: &mut [Vec<f32>]) {
    for (s, d) in src.iter().zip(dst.iter_mut()) {
        for (x, y) in s.iter().zip(d.iter_mut()) {
            *y = *x as f32;
        }
    }
}
