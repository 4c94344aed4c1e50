//! Compiled stdlib rules in the harness, stepped by the runtime, checked against the plain-Rust
//! references and against each other across backends.

use crate::compare::reference::{Reference, ReferenceKind};
use crate::compare::{compare, task, Backend, Contender, RuleContender, Silent};

fn stdlib(name: &str, backend: Backend) -> Box<dyn Contender> {
    Box::new(RuleContender::load(name, backend, false).expect("stdlib rule loads"))
}

/// Largest relative difference of the evaluated losses of the first run of two entries.
fn max_rel_diff(c: &crate::compare::Comparison, i: usize, j: usize) -> f64 {
    let (a, b) = (&c.entries[i].runs[0], &c.entries[j].runs[0]);
    assert_eq!(a.evals.len(), b.evals.len());
    a.evals
        .iter()
        .zip(&b.evals)
        .map(|(x, y)| (x.eval.loss - y.eval.loss).abs() / y.eval.loss.abs().max(1e-12))
        .fold(0.0, f64::max)
}

#[test]
fn stdlib_adamw_on_both_backends_tracks_the_reference_adamw_on_the_quadratic() {
    // Same equations, different f32 rounding (the stdlib rule uses torch's lerp for m; the JIT may
    // fuse multiply-adds), so the trajectories agree closely but not bit for bit.
    let t = task::by_name("quadratic").expect("task");
    let contenders = [
        stdlib("adamw", Backend::Cpu),
        stdlib("adamw", Backend::Interp),
        Box::new(Reference::new(ReferenceKind::AdamW, "ref")) as _,
    ];
    let c = compare(&*t, &contenders, 300, 1, &mut Silent).expect("runs");
    assert!(
        max_rel_diff(&c, 0, 2) < 1e-4,
        "cpu vs reference: {}",
        max_rel_diff(&c, 0, 2)
    );
    assert!(
        max_rel_diff(&c, 1, 2) < 1e-4,
        "interp vs reference: {}",
        max_rel_diff(&c, 1, 2)
    );
    let bytes: Vec<usize> = c.entries.iter().map(|e| e.runs[0].state_bytes).collect();
    assert_eq!(
        bytes,
        [800, 800, 800],
        "m and v: 2 x 4 bytes x 100 parameters"
    );
}

#[test]
fn stdlib_adamw_reaches_90_percent_test_accuracy_on_digits() {
    let t = task::by_name("digits-mlp").expect("task");
    let c = compare(&*t, &[stdlib("adamw", Backend::Cpu)], 300, 1, &mut Silent).expect("runs");
    let acc = c.entries[0]
        .summary
        .test_accuracy
        .expect("digits has a test split");
    assert!(acc.min > 0.90, "{acc:?}");
}

#[test]
fn sgd_flags_and_hypers_are_settable_and_reported() {
    let mut c = stdlib("sgd", Backend::Cpu);
    crate::compare::apply_setting(c.as_mut(), "nesterov", "true").expect("sgd has nesterov");
    crate::compare::apply_setting(c.as_mut(), "momentum", "0.9").expect("sgd has momentum");
    assert!(c.flags().contains(&("nesterov".to_string(), true)));
    assert!(c.hypers().contains(&("momentum".to_string(), 0.9)));
    let err = crate::compare::apply_setting(c.as_mut(), "nesterov", "yes").expect_err("not a bool");
    assert!(
        err.to_string().contains("a flag takes `true` or `false`"),
        "{err}"
    );
}

#[test]
fn a_flag_changes_the_trajectory() {
    // Nesterov momentum is a different update from heavy-ball momentum: the flag must reach the
    // kernel, not just the report.
    let t = task::by_name("quadratic").expect("task");
    let mut plain = stdlib("sgd", Backend::Cpu);
    let mut nesterov = stdlib("sgd", Backend::Cpu);
    for c in [&mut plain, &mut nesterov] {
        crate::compare::apply_setting(c.as_mut(), "momentum", "0.9").expect("momentum");
    }
    crate::compare::apply_setting(nesterov.as_mut(), "nesterov", "true").expect("nesterov");
    let c = compare(&*t, &[plain, nesterov], 20, 1, &mut Silent).expect("runs");
    assert!(max_rel_diff(&c, 0, 1) > 1e-3);
}

#[test]
fn muon_integer_flag_is_settable_and_reported() {
    let mut c = stdlib("muon", Backend::Cpu);
    assert!(c.counts().contains(&("ns_steps".to_string(), 5)));
    crate::compare::apply_setting(c.as_mut(), "ns_steps", "2").expect("muon has ns_steps");
    assert!(c.counts().contains(&("ns_steps".to_string(), 2)));
    for bad in ["2.5", "100", "x"] {
        let err =
            crate::compare::apply_setting(c.as_mut(), "ns_steps", bad).expect_err("not a count");
        assert!(err.to_string().contains("from 0 to 99"), "{bad}: {err}");
    }
}
