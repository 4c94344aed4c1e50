//! `rosenbrock`: the chained N-dimensional Rosenbrock function
//! `f(x) = sum_{i<N-1} 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2`, minimum 0 at `x = 1`.
//!
//! One tensor `x [N]`. The start is the classic `(-1.2, 1, -1.2, 1, ...)` plus a perturbation
//! uniform in ±0.1 per coordinate from PCG32(seed, stream 1). The gradient is analytic, in f64.

use super::{narrow_into, widen, Eval, Target, Task, TaskRun, TensorSpec};
use crate::compare::rng::Pcg32;

/// The `rosenbrock` task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rosenbrock {
    dim: usize,
}

impl Rosenbrock {
    /// The dimension `optc compare --task rosenbrock` uses.
    pub const DEFAULT_DIM: usize = 100;

    /// An N-dimensional instance (N >= 2).
    pub fn new(dim: usize) -> Self {
        Rosenbrock { dim: dim.max(2) }
    }

    /// `f(x)` and its gradient.
    pub fn value_grad(x: &[f64]) -> (f64, Vec<f64>) {
        let mut f = 0.0;
        let mut g = vec![0.0; x.len()];
        for i in 0..x.len().saturating_sub(1) {
            let (a, b) = (x[i], x[i + 1]);
            let r = b - a * a;
            let s = 1.0 - a;
            f += 100.0 * r * r + s * s;
            g[i] += -400.0 * a * r - 2.0 * s;
            g[i + 1] += 200.0 * r;
        }
        (f, g)
    }
}

impl Task for Rosenbrock {
    fn name(&self) -> &'static str {
        "rosenbrock"
    }
    fn describe(&self) -> String {
        format!(
            "chained Rosenbrock in {} dimensions from (-1.2, 1, ...) ± 0.1, full batch",
            self.dim
        )
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        vec![TensorSpec {
            name: "x",
            shape: vec![self.dim],
        }]
    }
    fn target(&self) -> Target {
        Target::LossAtMost(1e-2)
    }
    fn eval_every(&self) -> usize {
        1
    }
    fn default_steps(&self) -> usize {
        20_000
    }
    fn start(&self, seed: u64) -> Box<dyn TaskRun + '_> {
        Box::new(RosenbrockRun {
            dim: self.dim,
            seed,
        })
    }
}

struct RosenbrockRun {
    dim: usize,
    seed: u64,
}

impl TaskRun for RosenbrockRun {
    fn init(&self) -> Vec<Vec<f32>> {
        let mut rng = Pcg32::new(self.seed, 1);
        let x = (0..self.dim)
            .map(|i| {
                let base = if i % 2 == 0 { -1.2 } else { 1.0 };
                (base + rng.uniform(-0.1, 0.1)) as f32
            })
            .collect();
        vec![x]
    }

    fn loss_grad(&mut self, params: &[Vec<f32>], grads: &mut [Vec<f32>]) -> f64 {
        let (f, g) = Rosenbrock::value_grad(&widen(params)[0]);
        narrow_into(&[g], grads);
        f
    }

    fn evaluate(&self, params: &[Vec<f32>]) -> Eval {
        Eval {
            loss: Rosenbrock::value_grad(&widen(params)[0]).0,
            test_accuracy: None,
        }
    }
}
