//! `optc tune`: successive halving against random search at the same budget of optimizer steps
//! on digits-mlp, determinism, and the command line (the best setting reproduces in `compare`).

use crate::compare::task;
use crate::compare::tune::{tune, Strategy, TuneConfig, TuneResult};
use crate::compare::tune_space::Dimension;
use crate::compare::{Backend, CompareError, Contender, HyperValue, RuleContender};

fn search(task_name: &str, rule: &str, space: &str, config: &TuneConfig) -> TuneResult {
    let task = task::by_name(task_name).expect("task");
    let base = RuleContender::load(rule, Backend::Cpu, false).expect("rule");
    let make = |setting: &[HyperValue]| -> Result<Box<dyn Contender>, CompareError> {
        let mut c = base.clone();
        for h in setting {
            c.set_hyper(&h.name, h.value)?;
        }
        Ok(Box::new(c))
    };
    let space = [Dimension::parse(space).expect("space")];
    tune(&*task, &make, &space, config).expect("tune")
}

fn best_loss(r: &TuneResult) -> f64 {
    let best = r.best().expect("a best trial");
    let last = best.last().expect("ran");
    assert_eq!(last.steps, r.config.steps, "the best ran the full length");
    last.loss
}

/// Over 3 search seeds, halving's best setting (trained for the full length) has a final loss at
/// least as low as random search's best, when random search gets as many optimizer steps as
/// halving used (rounded down to whole runs). Both draw from the same sampler, so random search's
/// settings are the first of halving's.
#[test]
fn halving_is_at_least_as_good_as_random_search_on_digits_at_the_same_budget() {
    const STEPS: usize = 90;
    let (mut sha_sum, mut random_sum) = (0.0, 0.0);
    for seed in 0..3 {
        let halving = TuneConfig {
            trials: 9,
            seeds: 1,
            steps: STEPS,
            eta: 3,
            search_seed: seed,
            strategy: Strategy::Halving,
        };
        let sha = search("digits-mlp", "adam", "lr=log:1e-4:1", &halving);
        let random = TuneConfig {
            trials: sha.budget / STEPS,
            strategy: Strategy::Random,
            ..halving
        };
        let rnd = search("digits-mlp", "adam", "lr=log:1e-4:1", &random);
        assert!(rnd.budget <= sha.budget, "{} > {}", rnd.budget, sha.budget);
        let (a, b) = (best_loss(&sha), best_loss(&rnd));
        eprintln!(
            "search seed {seed}: halving {a:.4e} ({} steps, {} trials), random {b:.4e} ({} steps, {} trials)",
            sha.budget, sha.config.trials, rnd.budget, rnd.config.trials
        );
        sha_sum += a;
        random_sum += b;
    }
    assert!(
        sha_sum <= random_sum,
        "mean best loss: halving {}, random {}",
        sha_sum / 3.0,
        random_sum / 3.0
    );
}

#[test]
fn a_search_is_the_same_for_the_same_seed_on_any_number_of_threads() {
    let config = TuneConfig {
        trials: 6,
        seeds: 2,
        steps: 60,
        eta: 2,
        search_seed: 7,
        strategy: Strategy::Halving,
    };
    let a = search("quadratic", "sgd", "lr=log:1e-5:1e-2", &config);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let b = one.install(|| search("quadratic", "sgd", "lr=log:1e-5:1e-2", &config));
    assert_eq!(a, b);
    assert_eq!(a.rung_steps, [15, 30, 60]);
    // 6 trials, then 3, then 1; 2 seeds each.
    assert_eq!(a.budget, 2 * (6 * 15 + 3 * 30 + 60));
    let other = search(
        "quadratic",
        "sgd",
        "lr=log:1e-5:1e-2",
        &TuneConfig {
            search_seed: 8,
            ..config
        },
    );
    assert_ne!(a.trials[0].setting, other.trials[0].setting);
}
