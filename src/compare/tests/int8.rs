//! Fidelity of int8 optimizer states (issue 13, `docs/dtypes.md`): AdamW with 8-bit block
//! quantized states trains the digits MLP to the test accuracy of f32 states.

use crate::compare::{compare, task, Backend, Contender, RuleContender, Silent};
use optc_kernel::Dtype;

#[test]
fn adamw_with_int8_states_reaches_the_f32_test_accuracy_on_digits_within_half_a_point() {
    let t = task::by_name("digits-mlp").expect("built-in task");
    let f32_states = RuleContender::load("adamw", Backend::Cpu, false).expect("adamw");
    let mut int8 = RuleContender::load("adamw", Backend::Cpu, false).expect("adamw");
    int8.set_label("adamw-int8");
    int8.set_state_dtype(Dtype::Int8).expect("int8 states");
    let contenders: Vec<Box<dyn Contender>> = vec![Box::new(f32_states), Box::new(int8)];
    let c = compare(&*t, &contenders, t.default_steps(), 3, &mut Silent).expect("runs");
    let (f, q) = (&c.entries[0].summary, &c.entries[1].summary);
    let (fa, qa) = (
        f.test_accuracy.expect("test split"),
        q.test_accuracy.expect("test split"),
    );
    assert!(
        (fa.mean - qa.mean).abs() <= 0.005,
        "f32 {fa:?} vs int8 {qa:?}"
    );
    assert_eq!((f.diverged, q.diverged), (0, 0));
    // State bytes: the 64x128 first layer (8192 elements, 32 blocks) keeps m and v as codes and
    // scales; the 128x10 layer and the biases (under 4096 elements) keep f32 states.
    let params = 64 * 128 + 128 + 128 * 10 + 10;
    let int8_bytes = 2 * (64 * 128 + 4 * 32) + 8 * (128 + 128 * 10 + 10);
    assert_eq!(f.state_bytes_per_param, 8.0);
    assert_eq!(q.state_bytes_per_param, int8_bytes as f64 / params as f64);
    // The runs are not the f32 runs: the states are quantized.
    assert_ne!(
        c.entries[0].runs[0].step_losses,
        c.entries[1].runs[0].step_losses
    );
    eprintln!(
        "digits-mlp test accuracy over 3 seeds: f32 states {:.4} ± {:.4}, int8 states {:.4} ± {:.4}; state B/param {} vs {:.3}",
        fa.mean, fa.std, qa.mean, qa.std, f.state_bytes_per_param, q.state_bytes_per_param
    );
}
