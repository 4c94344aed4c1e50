//! `quadratic`: an ill-conditioned convex quadratic `f(x) = 0.5 x^T A x`, minimum 0 at `x = 0`.
//!
//! `A = Q diag(lambda) Q^T` with eigenvalues log-spaced from 1 to the condition number (`1e3` by
//! default) and `Q` a fixed random rotation (Gram–Schmidt of a Gaussian matrix from PCG32(0,
//! stream 3)), so the curvature is not aligned with the axes and a per-coordinate preconditioner
//! gets no free win. The run seed only moves the start: `x` uniform in ±1 from PCG32(seed,
//! stream 1). The gradient `A x` is exact, in f64.

use super::{narrow_into, widen, Eval, Target, Task, TaskRun, TensorSpec};
use crate::compare::rng::Pcg32;

/// The `quadratic` task.
#[derive(Debug, Clone, PartialEq)]
pub struct Quadratic {
    dim: usize,
    condition: f64,
    /// Row-major `[dim][dim]`, symmetric positive definite.
    a: Vec<f64>,
}

impl Quadratic {
    /// The dimension `optc compare --task quadratic` uses.
    pub const DEFAULT_DIM: usize = 100;
    /// The condition number `optc compare --task quadratic` uses.
    pub const DEFAULT_CONDITION: f64 = 1e3;

    /// An instance of dimension `dim >= 2` and condition number `condition >= 1`.
    pub fn new(dim: usize, condition: f64) -> Self {
        let n = dim.max(2);
        let condition = condition.max(1.0);
        let q = random_rotation(n, &mut Pcg32::new(0, 3));
        let lambda: Vec<f64> = (0..n)
            .map(|i| condition.powf(i as f64 / (n - 1) as f64))
            .collect();
        let mut a = vec![0.0; n * n];
        for r in 0..n {
            for c in 0..n {
                // Column k of Q is q[k*n..]: A[r][c] = sum_k lambda_k Q[r][k] Q[c][k].
                a[r * n + c] = (0..n)
                    .map(|k| lambda[k] * q[k * n + r] * q[k * n + c])
                    .sum();
            }
        }
        Quadratic {
            dim: n,
            condition,
            a,
        }
    }

    /// The matrix `A`, row-major.
    #[allow(dead_code)] // part of the harness's surface; not every item has a caller
    pub fn matrix(&self) -> &[f64] {
        &self.a
    }

    /// `f(x)` and its gradient `A x`.
    pub fn value_grad(&self, x: &[f64]) -> (f64, Vec<f64>) {
        let n = self.dim;
        let g: Vec<f64> = (0..n)
            .map(|r| {
                self.a[r * n..(r + 1) * n]
                    .iter()
                    .zip(x)
                    .map(|(a, x)| a * x)
                    .sum()
            })
            .collect();
        let f = 0.5 * g.iter().zip(x).map(|(g, x)| g * x).sum::<f64>();
        (f, g)
    }
}

/// `n` orthonormal vectors (stored one after another), by modified Gram–Schmidt of Gaussian ones.
fn random_rotation(n: usize, rng: &mut Pcg32) -> Vec<f64> {
    let mut q: Vec<f64> = (0..n * n).map(|_| rng.normal()).collect();
    for k in 0..n {
        for j in 0..k {
            let dot: f64 = (0..n).map(|i| q[k * n + i] * q[j * n + i]).sum();
            for i in 0..n {
                q[k * n + i] -= dot * q[j * n + i];
            }
        }
        let norm = (0..n).map(|i| q[k * n + i].powi(2)).sum::<f64>().sqrt();
        for i in 0..n {
            q[k * n + i] /= norm;
        }
    }
    q
}

impl Task for Quadratic {
    fn name(&self) -> &'static str {
        "quadratic"
    }
    fn describe(&self) -> String {
        format!(
            "0.5 x^T A x in {} dimensions, A rotated, eigenvalues log-spaced 1..{:e} \
             (condition number {:e}), full batch",
            self.dim, self.condition, self.condition
        )
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        vec![TensorSpec {
            name: "x",
            shape: vec![self.dim],
        }]
    }
    fn target(&self) -> Target {
        Target::LossAtMost(1e-3)
    }
    fn eval_every(&self) -> usize {
        1
    }
    fn default_steps(&self) -> usize {
        15_000
    }
    fn start(&self, seed: u64) -> Box<dyn TaskRun + '_> {
        Box::new(QuadraticRun { task: self, seed })
    }
}

struct QuadraticRun<'a> {
    task: &'a Quadratic,
    seed: u64,
}

impl TaskRun for QuadraticRun<'_> {
    fn init(&self) -> Vec<Vec<f32>> {
        let mut rng = Pcg32::new(self.seed, 1);
        vec![(0..self.task.dim)
            .map(|_| rng.uniform(-1.0, 1.0) as f32)
            .collect()]
    }

    fn loss_grad(&mut self, params: &[Vec<f32>], grads: &mut [Vec<f32>]) -> f64 {
        let (f, g) = self.task.value_grad(&widen(params)[0]);
        narrow_into(&[g], grads);
        f
    }

    fn evaluate(&self, params: &[Vec<f32>]) -> Eval {
        Eval {
            loss: self.task.value_grad(&widen(params)[0]).0,
            test_accuracy: None,
        }
    }
}
