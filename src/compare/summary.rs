//! Aggregates over seeds: mean, sample standard deviation, min and max.

use serde::Serialize;

use crate::compare::run::RunRecord;

/// Mean ± sample standard deviation (n - 1 in the denominator; 0 for one value), and the range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation.
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// How many values.
    pub n: usize,
}

impl Spread {
    /// The spread of `values`, or `None` if there are none.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Some(Spread {
            mean,
            std: var.sqrt(),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n,
        })
    }
}

/// One contender's results over all seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Number of seeded runs.
    pub runs: usize,
    /// Runs that met the target.
    pub reached: usize,
    /// Steps to target, over the runs that met it.
    pub steps_to_target: Option<Spread>,
    /// Runs stopped by a non-finite loss.
    pub diverged: usize,
    /// Final full-batch training loss, over the runs that did not diverge.
    pub final_loss: Option<Spread>,
    /// Final test accuracy (fraction), over the runs that did not diverge, for tasks with one.
    pub test_accuracy: Option<Spread>,
    /// Optimizer wall time per step in microseconds (mean of each run), over all runs.
    pub micros_per_step: Option<Spread>,
    /// Optimizer state bytes per parameter (the largest over runs; they agree).
    pub state_bytes_per_param: f64,
}

impl Summary {
    /// Summarize the runs of one contender.
    pub fn of(runs: &[RunRecord]) -> Summary {
        let steps: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.steps_to_target.map(|s| s as f64))
            .collect();
        let healthy: Vec<&RunRecord> = runs.iter().filter(|r| r.diverged_at.is_none()).collect();
        let finals: Vec<_> = healthy.iter().filter_map(|r| r.final_eval()).collect();
        let losses: Vec<f64> = finals.iter().map(|e| e.loss).collect();
        let accs: Vec<f64> = finals.iter().filter_map(|e| e.test_accuracy).collect();
        let micros: Vec<f64> = runs.iter().map(|r| r.seconds_per_step() * 1e6).collect();
        Summary {
            runs: runs.len(),
            reached: steps.len(),
            steps_to_target: Spread::of(&steps),
            diverged: runs.len() - healthy.len(),
            final_loss: Spread::of(&losses),
            test_accuracy: Spread::of(&accs),
            micros_per_step: Spread::of(&micros),
            state_bytes_per_param: runs
                .iter()
                .map(RunRecord::state_bytes_per_param)
                .fold(0.0, f64::max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn sample_std_uses_n_minus_one() {
        // Values 1, 2, 3, 4: mean 2.5, squared deviations sum to 5, 5 / 3 under the root.
        let s = Spread::of(&[1.0, 2.0, 3.0, 4.0]).expect("non-empty");
        assert_eq!(s.mean, 2.5);
        assert!((s.std - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!((s.min, s.max, s.n), (1.0, 4.0, 4));
        assert_eq!(Spread::of(&[7.0]).map(|s| s.std), Some(0.0));
        assert_eq!(Spread::of(&[]), None);
    }
}
