//! Compiled stdlib rules in the harness, checked against the plain-Rust references.

use optc::compare::reference::{Reference, ReferenceKind};
use optc::compare::{compare, task, Backend, Contender, RuleContender, Silent};

fn stdlib(name: &str) -> Box<dyn Contender> {
    Box::new(RuleContender::load(name, Backend::Interp, false).expect("stdlib rule loads"))
}

#[test]
fn stdlib_adamw_tracks_the_reference_adamw_on_the_quadratic() {
    // Same equations, different f32 rounding order (torch's lerp for m in the stdlib rule), so
    // the two trajectories agree closely but not bit for bit.
    let t = task::by_name("quadratic").expect("task");
    let contenders = [
        stdlib("adamw"),
        Box::new(Reference::new(ReferenceKind::AdamW, "ref")) as _,
    ];
    let c = compare(&*t, &contenders, 300, 1, &mut Silent).expect("runs");
    let (a, b) = (&c.entries[0].runs[0], &c.entries[1].runs[0]);
    for (x, y) in a.evals.iter().zip(&b.evals) {
        let rel = (x.eval.loss - y.eval.loss).abs() / y.eval.loss.abs().max(1e-12);
        assert!(
            rel < 1e-4,
            "step {}: {} vs {}",
            x.step,
            x.eval.loss,
            y.eval.loss
        );
    }
    assert_eq!(a.state_bytes, b.state_bytes);
}

#[test]
fn stdlib_adamw_reaches_90_percent_test_accuracy_on_digits() {
    let t = task::by_name("digits-mlp").expect("task");
    let c = compare(&*t, &[stdlib("adamw")], 300, 1, &mut Silent).expect("runs");
    let acc = c.entries[0]
        .summary
        .test_accuracy
        .expect("digits has a test split");
    assert!(acc.min > 0.90, "{acc:?}");
}

#[test]
fn sgd_flags_and_hypers_are_settable_and_reported() {
    let mut c = stdlib("sgd");
    optc::compare::apply_setting(c.as_mut(), "nesterov", "true").expect("sgd has nesterov");
    optc::compare::apply_setting(c.as_mut(), "momentum", "0.9").expect("sgd has momentum");
    assert!(c.flags().contains(&("nesterov".to_string(), true)));
    assert!(c.hypers().contains(&("momentum".to_string(), 0.9)));
    let err = optc::compare::apply_setting(c.as_mut(), "nesterov", "yes").expect_err("not a bool");
    assert!(
        err.to_string().contains("a flag takes `true` or `false`"),
        "{err}"
    );
}
