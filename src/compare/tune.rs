//! `optc tune`: search a rule's hypers on a task with successive halving.
//!
//! Takes a task, a way to make the contender for a setting, a search space of
//! [`Dimension`]s, a number of trials, seeds per trial, the longest run and a search seed. Gives a
//! [`TuneResult`]: every trial with its setting and its result at each rung it ran, the steps
//! spent in all, and the trials ranked.
//!
//! Successive halving (synchronous, as in Jamieson & Talwalkar 2016; ASHA's promotion rule
//! without its asynchrony): `n` settings are sampled; rung 0 runs all of them for
//! `steps / eta^(k-1)` steps, each later rung runs the best `1/eta` of the previous one for
//! `eta` times longer, and the last rung runs for `steps`. Every run starts from scratch with
//! the task's seeds `0..K`, and a setting's score at a rung is its mean final training loss
//! over those seeds (a diverged run scores infinity; ties go to the earlier trial). The runs of
//! a rung go to the rayon pool together; each run is deterministic, so the whole search is too
//! for a given search seed, whatever the number of threads. Random search ([`Strategy::Random`])
//! runs every setting for `steps`, as the baseline.

use rayon::prelude::*;
use serde::Serialize;

use crate::compare::rng::Pcg32;
use crate::compare::tune_space::Dimension;
use crate::compare::{run_seed, CompareError, Contender, HyperValue, RunRecord, Task};

/// How settings are searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Successive halving: many short runs, the best promoted to longer ones.
    #[default]
    Halving,
    /// Every setting for the full number of steps.
    Random,
}

/// The search's parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TuneConfig {
    /// Settings to sample.
    pub trials: usize,
    /// Seeds per run, `0..seeds`.
    pub seeds: u64,
    /// Steps of the longest runs (the last rung).
    pub steps: usize,
    /// The halving factor (at least 2).
    pub eta: usize,
    /// The seed of the sampler.
    pub search_seed: u64,
    /// Halving or random search.
    pub strategy: Strategy,
}

/// A setting's result after one rung.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RungResult {
    /// The rung (0 first).
    pub rung: usize,
    /// Steps per run at this rung.
    pub steps: usize,
    /// Mean final training loss over the seeds (infinity when any seed diverged).
    pub loss: f64,
    /// Mean steps to the task's target over the seeds that reached it.
    pub steps_to_target: Option<f64>,
    /// Seeds that reached the target.
    pub reached: usize,
    /// Mean final test accuracy (tasks with a test split).
    pub test_accuracy: Option<f64>,
    /// Seeds that diverged.
    pub diverged: usize,
}

/// One sampled setting and how it did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trial {
    /// Its index, in sampling order.
    pub id: usize,
    /// The hyper values.
    pub setting: Vec<HyperValue>,
    /// Its result at each rung it ran, in order.
    pub rungs: Vec<RungResult>,
}

impl Trial {
    /// The result at the last rung it reached.
    pub fn last(&self) -> Option<&RungResult> {
        self.rungs.last()
    }
}

/// What `results.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TuneResult {
    /// The task's name.
    pub task: String,
    /// The rule's label.
    pub rule: String,
    /// Where the rule came from.
    pub source: String,
    /// The task's target.
    pub target: String,
    /// The search space.
    pub space: Vec<Dimension>,
    /// The search's parameters.
    pub config: TuneConfig,
    /// Steps per run at each rung.
    pub rung_steps: Vec<usize>,
    /// Optimizer steps taken over every run and seed.
    pub budget: usize,
    /// Every trial.
    pub trials: Vec<Trial>,
    /// Trial ids, best first: by last rung reached (later first), then loss there.
    pub leaderboard: Vec<usize>,
}

impl TuneResult {
    /// The best trial.
    pub fn best(&self) -> Option<&Trial> {
        self.leaderboard.first().map(|&i| &self.trials[i])
    }
}

/// Makes the contender for a setting (the rule with `--set` and schedules, then the setting).
pub type MakeContender<'a> =
    dyn Fn(&[HyperValue]) -> Result<Box<dyn Contender>, CompareError> + Sync + 'a;

/// Steps per run at each rung for `trials` settings: `steps / eta^(k-1), ..., steps`, with as
/// many rungs as halving `trials` allows while the first rung keeps at least `min_steps` steps.
pub fn rung_steps(trials: usize, steps: usize, eta: usize, min_steps: usize) -> Vec<usize> {
    let eta = eta.max(2);
    let mut rungs = 1;
    while trials / eta.pow(rungs as u32) >= 1 && steps / eta.pow(rungs as u32) >= min_steps.max(1) {
        rungs += 1;
    }
    (0..rungs)
        .map(|i| {
            let div = eta.pow((rungs - 1 - i) as u32) as f64;
            ((steps as f64 / div).round() as usize).max(1)
        })
        .collect()
}

/// Runs the search.
pub fn tune(
    task: &dyn Task,
    make: &MakeContender<'_>,
    space: &[Dimension],
    config: &TuneConfig,
) -> Result<TuneResult, CompareError> {
    if config.trials == 0 || config.seeds == 0 || config.steps == 0 {
        return Err(CompareError::Usage(
            "--trials, --seeds and --steps must be at least 1".into(),
        ));
    }
    if config.eta < 2 {
        return Err(CompareError::Usage("--eta must be at least 2".into()));
    }
    let mut rng = Pcg32::new(config.search_seed, 0x7475_6e65);
    let mut trials: Vec<Trial> = (0..config.trials)
        .map(|id| Trial {
            id,
            setting: space
                .iter()
                .map(|d| HyperValue {
                    name: d.name.clone(),
                    value: d.sample(&mut rng),
                })
                .collect(),
            rungs: Vec::new(),
        })
        .collect();
    let rungs = match config.strategy {
        Strategy::Halving => rung_steps(config.trials, config.steps, config.eta, task.eval_every()),
        Strategy::Random => vec![config.steps],
    };
    let label = make(&[])?;
    let (rule, source) = (label.label().to_string(), label.source());

    let mut alive: Vec<usize> = (0..trials.len()).collect();
    let mut budget = 0;
    for (rung, &steps) in rungs.iter().enumerate() {
        if rung > 0 {
            let keep = (trials.len() / config.eta.pow(rung as u32)).max(1);
            alive.sort_by(|&a, &b| rank(&trials[a], &trials[b]));
            alive.truncate(keep);
            alive.sort_unstable();
        }
        let jobs: Vec<(usize, u64)> = alive
            .iter()
            .flat_map(|&t| (0..config.seeds).map(move |s| (t, s)))
            .collect();
        let records: Vec<Result<RunRecord, CompareError>> = jobs
            .par_iter()
            .map(|&(t, seed)| {
                let contender = make(&trials[t].setting)?;
                run_seed(task, contender.as_ref(), seed, steps, &mut || {})
            })
            .collect();
        let mut by_trial: Vec<Vec<RunRecord>> = vec![Vec::new(); trials.len()];
        for (&(t, _), r) in jobs.iter().zip(records) {
            let r = r?;
            budget += r.steps_taken;
            by_trial[t].push(r);
        }
        for &t in &alive {
            let result = summarize(rung, steps, &by_trial[t]);
            trials[t].rungs.push(result);
        }
    }
    let mut leaderboard: Vec<usize> = (0..trials.len()).collect();
    leaderboard.sort_by(|&a, &b| rank(&trials[a], &trials[b]));
    Ok(TuneResult {
        task: task.name().to_string(),
        rule,
        source,
        target: task.target().to_string(),
        space: space.to_vec(),
        config: config.clone(),
        rung_steps: rungs,
        budget,
        trials,
        leaderboard,
    })
}

/// Better first: the later rung reached, then the lower loss there, then the earlier trial.
fn rank(a: &Trial, b: &Trial) -> std::cmp::Ordering {
    let key = |t: &Trial| {
        t.last()
            .map_or((0, f64::INFINITY), |r| (r.rung + 1, r.loss))
    };
    let (ra, la) = key(a);
    let (rb, lb) = key(b);
    rb.cmp(&ra).then(la.total_cmp(&lb)).then(a.id.cmp(&b.id))
}

fn summarize(rung: usize, steps: usize, runs: &[RunRecord]) -> RungResult {
    let n = runs.len().max(1) as f64;
    let diverged = runs.iter().filter(|r| r.diverged_at.is_some()).count();
    let finals: Vec<_> = runs.iter().filter_map(RunRecord::final_eval).collect();
    let loss = if diverged > 0 || finals.len() < runs.len() {
        f64::INFINITY
    } else {
        finals.iter().map(|e| e.loss).sum::<f64>() / n
    };
    let reached: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.steps_to_target.map(|s| s as f64))
        .collect();
    let accs: Vec<f64> = finals.iter().filter_map(|e| e.test_accuracy).collect();
    RungResult {
        rung,
        steps,
        loss,
        steps_to_target: (!reached.is_empty())
            .then(|| reached.iter().sum::<f64>() / reached.len() as f64),
        reached: reached.len(),
        test_accuracy: (!accs.is_empty()).then(|| accs.iter().sum::<f64>() / accs.len() as f64),
        diverged,
    }
}

#[cfg(test)]
mod tests {
    use super::rung_steps;

    #[test]
    fn rungs_grow_by_eta_and_end_at_steps() {
        assert_eq!(rung_steps(9, 900, 3, 10), [100, 300, 900]);
        assert_eq!(rung_steps(27, 1000, 3, 10), [37, 111, 333, 1000]);
        assert_eq!(rung_steps(2, 1000, 3, 10), [1000]);
        // The first rung keeps at least `min_steps`.
        assert_eq!(rung_steps(81, 100, 3, 10), [11, 33, 100]);
    }
}
