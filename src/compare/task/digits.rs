//! `digits-mlp`: a 64-128-10 ReLU MLP with softmax cross-entropy on the digits data set.
//!
//! Parameters (row-major): `w1 [64][128]`, `b1 [128]`, `w2 [128][10]`, `b2 [10]`, initialized as
//! torch's `nn.Linear` does (weights and biases uniform in ±1/sqrt(fan_in)) from PCG32(seed,
//! stream 1). Training uses minibatches of [`DigitsMlp::BATCH`] drawn without replacement: each
//! epoch is a fresh PCG32(seed, stream 2) permutation of the 1,437 training images, cut into 22
//! batches, the last 29 images of the epoch left out. Forward and backward are written out by hand
//! in f64.

use super::digits_data::{Digits, DIGITS_CLASSES, DIGITS_FEATURES, DIGITS_TRAIN};
use super::{narrow_into, widen, Eval, Target, Task, TaskRun, TensorSpec};
use crate::compare::rng::Pcg32;
use crate::compare::CompareError;

/// A one-hidden-layer ReLU perceptron from 64 pixels to 10 logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mlp {
    /// Hidden width.
    pub hidden: usize,
}

impl Mlp {
    /// The tensors `w1`, `b1`, `w2`, `b2`.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let h = self.hidden;
        vec![
            TensorSpec {
                name: "w1",
                shape: vec![DIGITS_FEATURES, h],
            },
            TensorSpec {
                name: "b1",
                shape: vec![h],
            },
            TensorSpec {
                name: "w2",
                shape: vec![h, DIGITS_CLASSES],
            },
            TensorSpec {
                name: "b2",
                shape: vec![DIGITS_CLASSES],
            },
        ]
    }

    /// torch `nn.Linear` initialization: every entry uniform in ±1/sqrt(fan_in).
    pub fn init(&self, rng: &mut Pcg32) -> Vec<Vec<f32>> {
        let fan_in = [DIGITS_FEATURES, DIGITS_FEATURES, self.hidden, self.hidden];
        self.tensors()
            .iter()
            .zip(fan_in)
            .map(|(t, fan)| {
                let bound = 1.0 / (fan as f64).sqrt();
                (0..t.len())
                    .map(|_| rng.uniform(-bound, bound) as f32)
                    .collect()
            })
            .collect()
    }

    /// Logits for `n` images (`x` row-major `[n][64]`), and the hidden activations.
    fn forward(&self, p: &[Vec<f64>], x: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (h, c) = (self.hidden, DIGITS_CLASSES);
        let n = x.len() / DIGITS_FEATURES;
        let (w1, b1, w2, b2) = (&p[0], &p[1], &p[2], &p[3]);
        let mut hid = vec![0.0; n * h];
        let mut logits = vec![0.0; n * c];
        for i in 0..n {
            let xi = &x[i * DIGITS_FEATURES..(i + 1) * DIGITS_FEATURES];
            let hi = &mut hid[i * h..(i + 1) * h];
            hi.copy_from_slice(b1);
            for (k, &xk) in xi.iter().enumerate() {
                if xk != 0.0 {
                    for (a, &w) in hi.iter_mut().zip(&w1[k * h..(k + 1) * h]) {
                        *a += xk * w;
                    }
                }
            }
            for a in hi.iter_mut() {
                *a = a.max(0.0);
            }
            let zi = &mut logits[i * c..(i + 1) * c];
            zi.copy_from_slice(b2);
            for (j, &hj) in hi.iter().enumerate() {
                if hj != 0.0 {
                    for (z, &w) in zi.iter_mut().zip(&w2[j * c..(j + 1) * c]) {
                        *z += hj * w;
                    }
                }
            }
        }
        (logits, hid)
    }

    /// Softmax probabilities and cross-entropy of one row of logits (numerically stable).
    fn softmax_ce(z: &[f64], label: u8, probs: &mut [f64]) -> f64 {
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for (p, &zj) in probs.iter_mut().zip(z) {
            *p = (zj - m).exp();
            sum += *p;
        }
        for p in probs.iter_mut() {
            *p /= sum;
        }
        m + sum.ln() - z[usize::from(label)]
    }

    /// Mean cross-entropy over the images and its gradient with respect to every tensor.
    pub fn loss_grad(&self, p: &[Vec<f64>], x: &[f64], y: &[u8]) -> (f64, Vec<Vec<f64>>) {
        let (h, c) = (self.hidden, DIGITS_CLASSES);
        let n = y.len();
        let (logits, hid) = self.forward(p, x);
        let mut g: Vec<Vec<f64>> = self.tensors().iter().map(|t| vec![0.0; t.len()]).collect();
        let mut loss = 0.0;
        let mut dz = vec![0.0; c];
        let mut dh = vec![0.0; h];
        let inv_n = 1.0 / n as f64;
        for i in 0..n {
            loss += Self::softmax_ce(&logits[i * c..(i + 1) * c], y[i], &mut dz);
            dz[usize::from(y[i])] -= 1.0;
            for d in dz.iter_mut() {
                *d *= inv_n;
            }
            let hi = &hid[i * h..(i + 1) * h];
            // Output layer: dW2 += h^T dz, db2 += dz, dh = W2 dz masked by ReLU.
            for (b, &d) in g[3].iter_mut().zip(&dz) {
                *b += d;
            }
            for j in 0..h {
                let w2j = &p[2][j * c..(j + 1) * c];
                dh[j] = if hi[j] > 0.0 {
                    w2j.iter().zip(&dz).map(|(w, d)| w * d).sum()
                } else {
                    0.0
                };
                if hi[j] != 0.0 {
                    for (gw, &d) in g[2][j * c..(j + 1) * c].iter_mut().zip(&dz) {
                        *gw += hi[j] * d;
                    }
                }
            }
            // Hidden layer: dW1 += x^T dh, db1 += dh.
            for (b, &d) in g[1].iter_mut().zip(&dh) {
                *b += d;
            }
            let xi = &x[i * DIGITS_FEATURES..(i + 1) * DIGITS_FEATURES];
            for (k, &xk) in xi.iter().enumerate() {
                if xk != 0.0 {
                    for (gw, &d) in g[0][k * h..(k + 1) * h].iter_mut().zip(&dh) {
                        *gw += xk * d;
                    }
                }
            }
        }
        (loss * inv_n, g)
    }

    /// Mean cross-entropy and accuracy (fraction correct; ties go to the lower class).
    pub fn loss_accuracy(&self, p: &[Vec<f64>], x: &[f64], y: &[u8]) -> (f64, f64) {
        let c = DIGITS_CLASSES;
        let (logits, _) = self.forward(p, x);
        let mut probs = vec![0.0; c];
        let (mut loss, mut correct) = (0.0, 0usize);
        for (i, &label) in y.iter().enumerate() {
            let z = &logits[i * c..(i + 1) * c];
            loss += Self::softmax_ce(z, label, &mut probs);
            let best = (0..c).fold(0, |b, j| if z[j] > z[b] { j } else { b });
            correct += usize::from(best == usize::from(label));
        }
        let n = y.len() as f64;
        (loss / n, correct as f64 / n)
    }
}

/// The `digits-mlp` task.
#[derive(Debug, Clone)]
pub struct DigitsMlp {
    data: Digits,
    model: Mlp,
}

impl DigitsMlp {
    /// Minibatch size.
    pub const BATCH: usize = 64;
    /// Hidden width.
    pub const HIDDEN: usize = 128;

    /// Load the embedded data.
    pub fn new() -> Result<Self, CompareError> {
        Ok(DigitsMlp {
            data: Digits::load()?,
            model: Mlp {
                hidden: Self::HIDDEN,
            },
        })
    }

    /// The data set.
    #[allow(dead_code)] // part of the harness's surface; not every item has a caller
    pub fn data(&self) -> &Digits {
        &self.data
    }

    /// The model.
    #[allow(dead_code)] // part of the harness's surface; not every item has a caller
    pub fn model(&self) -> Mlp {
        self.model
    }
}

impl Task for DigitsMlp {
    fn name(&self) -> &'static str {
        "digits-mlp"
    }
    fn describe(&self) -> String {
        format!(
            "MLP 64-{}-10 (ReLU, softmax cross-entropy) on 8x8 digits: {} train / {} test images, \
             minibatch {}",
            self.model.hidden,
            DIGITS_TRAIN,
            self.data.test_y.len(),
            Self::BATCH
        )
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        self.model.tensors()
    }
    fn target(&self) -> Target {
        Target::TestAccuracyAtLeast(0.95)
    }
    fn eval_every(&self) -> usize {
        10
    }
    fn default_steps(&self) -> usize {
        1000
    }
    fn start(&self, seed: u64) -> Box<dyn TaskRun + '_> {
        Box::new(DigitsRun {
            task: self,
            seed,
            order: Pcg32::new(seed, 2),
            perm: Vec::new(),
            next: 0,
            batch_x: Vec::with_capacity(Self::BATCH * DIGITS_FEATURES),
            batch_y: Vec::with_capacity(Self::BATCH),
        })
    }
}

struct DigitsRun<'a> {
    task: &'a DigitsMlp,
    seed: u64,
    order: Pcg32,
    perm: Vec<usize>,
    next: usize,
    batch_x: Vec<f64>,
    batch_y: Vec<u8>,
}

impl DigitsRun<'_> {
    fn next_batch(&mut self) {
        let batch = DigitsMlp::BATCH;
        if self.perm.is_empty() || self.next + batch > self.perm.len() {
            self.perm = (0..DIGITS_TRAIN).collect();
            self.order.shuffle(&mut self.perm);
            self.next = 0;
        }
        let data = &self.task.data;
        self.batch_x.clear();
        self.batch_y.clear();
        for &r in &self.perm[self.next..self.next + batch] {
            self.batch_x
                .extend_from_slice(&data.train_x[r * DIGITS_FEATURES..(r + 1) * DIGITS_FEATURES]);
            self.batch_y.push(data.train_y[r]);
        }
        self.next += batch;
    }
}

impl TaskRun for DigitsRun<'_> {
    fn init(&self) -> Vec<Vec<f32>> {
        self.task.model.init(&mut Pcg32::new(self.seed, 1))
    }

    fn loss_grad(&mut self, params: &[Vec<f32>], grads: &mut [Vec<f32>]) -> f64 {
        self.next_batch();
        let (loss, g) = self
            .task
            .model
            .loss_grad(&widen(params), &self.batch_x, &self.batch_y);
        narrow_into(&g, grads);
        loss
    }

    fn evaluate(&self, params: &[Vec<f32>]) -> Eval {
        let p = widen(params);
        let d = &self.task.data;
        let (loss, _) = self.task.model.loss_accuracy(&p, &d.train_x, &d.train_y);
        let (_, acc) = self.task.model.loss_accuracy(&p, &d.test_x, &d.test_y);
        Eval {
            loss,
            test_accuracy: Some(acc),
        }
    }
}
