//! `optc compare`: train optimizers on built-in tasks and compare them.
//!
//! Takes contenders (rules with hyperparameter values, see [`Contender`]), a [`Task`], a number
//! of steps and of seeds. Gives a [`Comparison`]: for every contender and seed, the loss curve,
//! evaluations, steps to the task's target, optimizer time per step (the `Stepper::step` call
//! only) and optimizer state bytes; and per contender a [`Summary`] over seeds. Runs are
//! sequential, so timings are not disturbed by each other, and deterministic: the same seed
//! gives bitwise the same numbers (timings aside).
//!
//! Pipeline: [`task`] (objectives and gradients) → [`run`] (one seed) → [`summary`] (over seeds)
//! → [`table`], [`plot`] and JSON (the `Comparison` itself, serialized).

mod error;
pub mod plot;
pub mod reference;
pub mod rng;
pub mod rule;
pub mod run;
pub mod schedule;
pub mod stepper;
pub mod summary;
pub mod table;
pub mod task;
pub mod tune;
pub mod tune_plot;
pub mod tune_space;

pub use error::{did_you_mean, CompareError};
pub use rule::{Backend, RuleContender};
#[allow(unused_imports)]
// the harness's surface (private to the binary; parts serve only its tests)
pub use run::{run_seed, EvalPoint, RunRecord};
#[allow(unused_imports)]
// the harness's surface (private to the binary; parts serve only its tests)
pub use schedule::Scheduled;
#[allow(unused_imports)]
// the harness's surface (private to the binary; parts serve only its tests)
pub use stepper::{apply_setting, Contender, StepError, Stepper};
#[allow(unused_imports)]
// the harness's surface (private to the binary; parts serve only its tests)
pub use summary::{Spread, Summary};
#[allow(unused_imports)]
// the harness's surface (private to the binary; parts serve only its tests)
pub use task::{Eval, Target, Task};

use serde::Serialize;

/// One hyperparameter value as used in a comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HyperValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: f64,
}

/// One flag value as used in a comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagValue {
    /// Name.
    pub name: String,
    /// Value.
    pub value: bool,
}

/// One contender's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// The contender's label.
    pub label: String,
    /// Where its rule came from.
    pub source: String,
    /// Its hyperparameter values.
    pub hypers: Vec<HyperValue>,
    /// Its flag values.
    pub flags: Vec<FlagValue>,
    /// Its scheduled hypers, as `NAME=SPEC` (absent from the JSON when there are none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<String>,
    /// The aggregate over seeds.
    pub summary: Summary,
    /// Every seeded run.
    pub runs: Vec<RunRecord>,
}

/// The results of a comparison: what `results.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The task's name.
    pub task: String,
    /// What the task is.
    pub description: String,
    /// The target that steps-to-target counts to.
    pub target: String,
    /// Steps per run.
    pub steps: usize,
    /// Evaluation interval in steps.
    pub eval_every: usize,
    /// The seeds, `0..K`.
    pub seeds: Vec<u64>,
    /// One entry per contender, in the order given.
    pub entries: Vec<Entry>,
}

impl Comparison {
    /// A copy whose runs keep at most about `max_points` losses and evaluations each (see
    /// [`RunRecord::thinned`]); summaries are unchanged, as they were computed from every step.
    pub fn thinned(&self, max_points: usize) -> Comparison {
        let mut c = self.clone();
        for e in &mut c.entries {
            for r in &mut e.runs {
                *r = r.thinned(max_points);
            }
        }
        c
    }
}

/// Told about the progress of a comparison (for a progress bar).
pub trait Progress {
    /// A run of contender `label` with `seed` begins.
    fn run_started(&mut self, label: &str, seed: u64);
    /// One optimizer step was taken.
    fn stepped(&mut self);
}

/// Progress that goes nowhere.
#[allow(dead_code)] // part of the harness's surface; not every item has a caller
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn run_started(&mut self, _: &str, _: u64) {}
    fn stepped(&mut self) {}
}

/// Run every contender on `task` for `steps` steps with seeds `0..seeds`, one run after another.
pub fn compare(
    task: &dyn Task,
    contenders: &[Box<dyn Contender>],
    steps: usize,
    seeds: u64,
    progress: &mut dyn Progress,
) -> Result<Comparison, CompareError> {
    let mut entries = Vec::with_capacity(contenders.len());
    for c in contenders {
        let mut runs = Vec::with_capacity(seeds as usize);
        for seed in 0..seeds {
            progress.run_started(c.label(), seed);
            runs.push(run_seed(task, c.as_ref(), seed, steps, &mut || {
                progress.stepped()
            })?);
        }
        entries.push(Entry {
            label: c.label().to_string(),
            source: c.source(),
            hypers: c
                .hypers()
                .into_iter()
                .map(|(name, value)| HyperValue { name, value })
                .collect(),
            flags: c
                .flags()
                .into_iter()
                .map(|(name, value)| FlagValue { name, value })
                .collect(),
            schedules: c.schedules().iter().map(ToString::to_string).collect(),
            summary: Summary::of(&runs),
            runs,
        });
    }
    Ok(Comparison {
        task: task.name().to_string(),
        description: task.describe(),
        target: task.target().to_string(),
        steps,
        eval_every: task.eval_every(),
        seeds: (0..seeds).collect(),
        entries,
    })
}

#[cfg(test)]
mod tests;
