//! Finite-difference checks of every built-in task's gradient, in f64.
//!
//! Central differences `(f(x + h e_i) - f(x - h e_i)) / 2h` have error O(h^2 f''') plus rounding
//! O(eps f / h); with h = 1e-5 both are far below the tolerances used here on these smooth (or,
//! for ReLU, almost everywhere smooth) functions.

use crate::compare::rng::Pcg32;
use crate::compare::task::{DigitsMlp, Mlp, Quadratic, Rosenbrock};

const H: f64 = 1e-5;

/// Max over coordinates of |analytic - numeric| / max(1, |numeric|).
fn worst_error(x: &[f64], f: impl Fn(&[f64]) -> f64, grad: &[f64]) -> f64 {
    let mut worst: f64 = 0.0;
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + H;
        let up = f(&xp);
        xp[i] = x[i] - H;
        let down = f(&xp);
        xp[i] = x[i];
        let numeric = (up - down) / (2.0 * H);
        worst = worst.max((grad[i] - numeric).abs() / numeric.abs().max(1.0));
    }
    worst
}

#[test]
fn rosenbrock_gradient_matches_finite_differences() {
    let mut rng = Pcg32::new(7, 0);
    let x: Vec<f64> = (0..10).map(|_| rng.uniform(-2.0, 2.0)).collect();
    let (_, g) = Rosenbrock::value_grad(&x);
    let err = worst_error(&x, |x| Rosenbrock::value_grad(x).0, &g);
    assert!(err < 1e-7, "worst relative error {err:e}");
}

#[test]
fn rosenbrock_is_zero_with_zero_gradient_at_ones() {
    let (f, g) = Rosenbrock::value_grad(&[1.0; 7]);
    assert_eq!(f, 0.0);
    assert!(g.iter().all(|&v| v == 0.0));
}

#[test]
fn quadratic_gradient_matches_finite_differences() {
    let q = Quadratic::new(20, 1e3);
    let mut rng = Pcg32::new(8, 0);
    let x: Vec<f64> = (0..20).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let (_, g) = q.value_grad(&x);
    let err = worst_error(&x, |x| q.value_grad(x).0, &g);
    assert!(err < 1e-7, "worst relative error {err:e}");
}

#[test]
fn quadratic_matrix_is_symmetric_with_the_stated_spectrum() {
    // A = Q diag(lambda) Q^T is symmetric and keeps the trace, sum of lambda_i = 1e3^(i/(n-1)).
    let n = 20;
    let q = Quadratic::new(n, 1e3);
    let a = q.matrix();
    for r in 0..n {
        for c in 0..n {
            assert!((a[r * n + c] - a[c * n + r]).abs() < 1e-9);
        }
    }
    let trace: f64 = (0..n).map(|i| a[i * n + i]).sum();
    let expected: f64 = (0..n).map(|i| 1e3f64.powf(i as f64 / (n - 1) as f64)).sum();
    assert!((trace - expected).abs() < 1e-9 * expected);
    // The rotation is not the identity: the curvature is not axis-aligned.
    let off_diagonal = (0..n)
        .map(|r| a[r * n + (r + 1) % n].abs())
        .fold(0.0, f64::max);
    assert!(
        off_diagonal > 1.0,
        "largest sampled off-diagonal {off_diagonal}"
    );
}

#[test]
fn digits_mlp_gradient_matches_finite_differences() {
    let task = DigitsMlp::new().expect("embedded data");
    let data = task.data();
    // A narrow net on 12 real images keeps the check fast; same code as the 128-wide one.
    let model = Mlp { hidden: 8 };
    let n = 12;
    let x = &data.train_x[..n * 64];
    let y = &data.train_y[..n];
    let mut rng = Pcg32::new(9, 0);
    let params: Vec<Vec<f64>> = model
        .tensors()
        .iter()
        .map(|t| (0..t.len()).map(|_| 0.5 * rng.normal()).collect())
        .collect();
    let (_, grads) = model.loss_grad(&params, x, y);
    for (ti, tensor) in params.iter().enumerate() {
        let loss_at = |v: &[f64]| {
            let mut p = params.clone();
            p[ti] = v.to_vec();
            model.loss_grad(&p, x, y).0
        };
        let err = worst_error(tensor, loss_at, &grads[ti]);
        assert!(err < 1e-6, "tensor {ti}: worst relative error {err:e}");
    }
}

#[test]
fn digits_mlp_loss_at_zero_weights_is_ln_10() {
    // All logits equal: cross-entropy = ln(10) for every image, and accuracy = share of class 0
    // (ties go to the lowest class).
    let task = DigitsMlp::new().expect("embedded data");
    let model = task.model();
    let zeros: Vec<Vec<f64>> = model.tensors().iter().map(|t| vec![0.0; t.len()]).collect();
    let d = task.data();
    let (loss, acc) = model.loss_accuracy(&zeros, &d.test_x, &d.test_y);
    assert!((loss - 10f64.ln()).abs() < 1e-12);
    let zeros_share = d.test_y.iter().filter(|&&c| c == 0).count() as f64 / d.test_y.len() as f64;
    assert_eq!(acc, zeros_share);
}
