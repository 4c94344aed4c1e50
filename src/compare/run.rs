//! The harness: train one contender on one task for one seed, and record what happened.
//!
//! Per step: the task gives the loss and gradient at the current parameters (the next minibatch),
//! then the stepper updates the parameters; only the `Stepper::step` call is timed. The
//! parameters are evaluated before the first step and every `Task::eval_every` steps after, and
//! after the last. A non-finite loss or evaluation stops the run and marks it diverged.

use std::time::Instant;

use serde::Serialize;

use crate::compare::stepper::Contender;
use crate::compare::task::{Eval, Target, Task, TaskRun};
use crate::compare::CompareError;

/// An evaluation after `step` updates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalPoint {
    /// Updates applied so far.
    pub step: usize,
    /// The evaluation.
    #[serde(flatten)]
    pub eval: Eval,
}

/// What one seeded run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// The seed (initial parameters and minibatch order).
    pub seed: u64,
    /// The (minibatch) loss seen at each step, before that step's update.
    pub step_losses: Vec<f64>,
    /// Evaluations, at step 0, every `eval_every` steps, and after the last step.
    pub evals: Vec<EvalPoint>,
    /// First evaluated step at which the task's target was met.
    pub steps_to_target: Option<usize>,
    /// The step at which the loss or an evaluation became non-finite.
    pub diverged_at: Option<usize>,
    /// Total wall time spent inside `Stepper::step`, in seconds.
    pub optimizer_seconds: f64,
    /// Optimizer state bytes.
    pub state_bytes: usize,
    /// Number of parameters (elements over all tensors).
    pub params: usize,
}

impl RunRecord {
    /// The last evaluation.
    pub fn final_eval(&self) -> Option<Eval> {
        self.evals.last().map(|p| p.eval)
    }

    /// Steps actually taken.
    pub fn steps_taken(&self) -> usize {
        self.step_losses.len()
    }

    /// Mean optimizer wall time per step, in seconds.
    pub fn seconds_per_step(&self) -> f64 {
        self.optimizer_seconds / self.steps_taken().max(1) as f64
    }

    /// State bytes per parameter element.
    pub fn state_bytes_per_param(&self) -> f64 {
        self.state_bytes as f64 / self.params.max(1) as f64
    }
}

fn is_finite(e: &Eval) -> bool {
    e.loss.is_finite() && e.test_accuracy.is_none_or(f64::is_finite)
}

/// Train `contender` on `task` for `steps` steps from `seed`. `on_step` is called after every
/// step (for a progress bar), outside the timed region.
pub fn run_seed(
    task: &dyn Task,
    contender: &dyn Contender,
    seed: u64,
    steps: usize,
    on_step: &mut dyn FnMut(),
) -> Result<RunRecord, CompareError> {
    let tensors = task.tensors();
    let mut stepper = contender.build(&tensors)?;
    let mut run = task.start(seed);
    let mut params = run.init();
    let mut grads: Vec<Vec<f32>> = tensors.iter().map(|t| vec![0.0; t.len()]).collect();
    let target = task.target();
    let every = task.eval_every().max(1);

    let mut record = RunRecord {
        seed,
        step_losses: Vec::with_capacity(steps),
        evals: Vec::new(),
        steps_to_target: None,
        diverged_at: None,
        optimizer_seconds: 0.0,
        state_bytes: 0,
        params: tensors.iter().map(|t| t.len()).sum(),
    };
    evaluate(&mut record, &*run, target, &params, 0);

    let mut step = 0;
    while step < steps && record.diverged_at.is_none() {
        let loss = run.loss_grad(&params, &mut grads);
        record.step_losses.push(loss);
        if !loss.is_finite() {
            record.diverged_at = Some(step);
            break;
        }
        let start = Instant::now();
        let stepped = stepper.step(&mut params, &grads);
        record.optimizer_seconds += start.elapsed().as_secs_f64();
        stepped.map_err(|e| CompareError::Step {
            rule: contender.label().to_string(),
            step: step + 1,
            message: e.to_string(),
        })?;
        step += 1;
        on_step();
        if step % every == 0 || step == steps {
            evaluate(&mut record, &*run, target, &params, step);
        }
    }
    record.state_bytes = stepper.state_bytes();
    Ok(record)
}

/// Evaluate `params` after `step` updates and update the record's target and divergence marks.
fn evaluate(
    record: &mut RunRecord,
    run: &dyn TaskRun,
    target: Target,
    params: &[Vec<f32>],
    step: usize,
) {
    let eval = run.evaluate(params);
    record.evals.push(EvalPoint { step, eval });
    if record.steps_to_target.is_none() && target.is_met(&eval) {
        record.steps_to_target = Some(step);
    }
    if !is_finite(&eval) {
        record.diverged_at.get_or_insert(step);
    }
}
