//! The harness with the plain-Rust reference optimizers: determinism and a digits accuracy bar.

use crate::compare::reference::{Reference, ReferenceKind};
use crate::compare::{apply_setting, compare, run_seed, task, Contender, RunRecord, Silent};

fn adamw() -> Box<dyn Contender> {
    Box::new(Reference::new(ReferenceKind::AdamW, "adamw"))
}

/// Everything a run computes except the timing, as bits.
fn fingerprint(r: &RunRecord) -> Vec<u64> {
    let mut bits: Vec<u64> = r.step_losses.iter().map(|x| x.to_bits()).collect();
    for p in &r.evals {
        bits.push(p.step as u64);
        bits.push(p.eval.loss.to_bits());
        bits.push(p.eval.test_accuracy.map_or(u64::MAX, f64::to_bits));
    }
    bits.push(r.steps_to_target.map_or(u64::MAX, |s| s as u64));
    bits.push(r.state_bytes as u64);
    bits
}

#[test]
fn same_seed_gives_bitwise_the_same_run_on_every_task() {
    for name in task::TASK_NAMES {
        let t = task::by_name(name).expect("built-in task");
        let c = adamw();
        let a = run_seed(&*t, &*c, 3, 40, &mut || {}).expect("runs");
        let b = run_seed(&*t, &*c, 3, 40, &mut || {}).expect("runs");
        assert_eq!(fingerprint(&a), fingerprint(&b), "{name}");
        let other = run_seed(&*t, &*c, 4, 40, &mut || {}).expect("runs");
        assert_ne!(
            fingerprint(&a),
            fingerprint(&other),
            "{name}: seeds 3 and 4 agree"
        );
    }
}

#[test]
fn adamw_reaches_90_percent_test_accuracy_on_digits_in_300_steps() {
    let t = task::by_name("digits-mlp").expect("built-in task");
    let c = compare(&*t, &[adamw()], 300, 2, &mut Silent).expect("runs");
    let s = &c.entries[0].summary;
    let acc = s.test_accuracy.expect("digits has a test split");
    assert!(acc.min > 0.90, "test accuracy {acc:?}");
    assert_eq!(s.state_bytes_per_param, 8.0, "AdamW keeps m and v in f32");
    assert_eq!(s.diverged, 0);
}

#[test]
fn steps_to_target_is_the_first_evaluation_meeting_it() {
    let t = task::by_name("digits-mlp").expect("built-in task");
    let r = run_seed(&*t, &*adamw(), 0, 600, &mut || {}).expect("runs");
    let first = r
        .evals
        .iter()
        .find(|p| p.eval.test_accuracy.is_some_and(|a| a >= 0.95))
        .map(|p| p.step);
    assert!(first.is_some(), "AdamW reaches 95% within 600 steps");
    assert_eq!(r.steps_to_target, first);
    assert_eq!(r.evals.first().map(|p| p.step), Some(0));
    assert!(r.evals.windows(2).all(|w| w[1].step - w[0].step == 10));
}

#[test]
fn a_diverging_run_stops_and_is_counted() {
    // Plain gradient descent on the quadratic is stable only for lr < 2 / lambda_max = 2e-3.
    let t = task::by_name("quadratic").expect("built-in task");
    let mut sgd = Reference::new(ReferenceKind::Sgd, "sgd");
    apply_setting(&mut sgd, "lr", "0.5").expect("sgd declares lr");
    let c = compare(&*t, &[Box::new(sgd)], 2000, 2, &mut Silent).expect("runs");
    let s = &c.entries[0].summary;
    assert_eq!(s.diverged, 2);
    assert_eq!(s.final_loss, None);
    assert!(c.entries[0].runs.iter().all(|r| r.steps_taken < 2000));
}

#[test]
fn unknown_hyper_is_an_error_with_a_suggestion() {
    let mut c = Reference::new(ReferenceKind::AdamW, "adamw");
    let err = apply_setting(&mut c, "beta_1", "0.8").expect_err("not declared");
    let msg = err.to_string();
    assert!(msg.contains("did you mean `beta1`?"), "{msg}");
}

#[test]
fn thinning_keeps_the_ends_and_an_even_stride() {
    let t = task::by_name("quadratic").expect("built-in task");
    let full = run_seed(&*t, &*adamw(), 0, 2500, &mut || {}).expect("runs");
    assert_eq!((full.evals.len(), full.step_losses.len()), (2501, 2500));
    let thin = full.thinned(1000);
    // 2501 evaluations at stride 3: indices 0, 3, ..., 2499, plus the last (2500).
    assert_eq!(thin.evals.len(), 835);
    assert_eq!(thin.evals.first().map(|p| p.step), Some(0));
    assert_eq!(thin.evals.last().map(|p| p.step), Some(2500));
    assert_eq!(thin.evals[1], full.evals[3]);
    assert_eq!((thin.step_losses.len(), thin.step_loss_every), (834, 3));
    assert_eq!(thin.step_losses[2], full.step_losses[6]);
    assert_eq!(thin.steps_taken, 2500);
    assert_eq!(full.thinned(5000), full);
}
