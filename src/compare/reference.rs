//! Plain-Rust optimizers with torch.optim's update equations: SGD (with momentum), Adam and
//! AdamW. They test the harness independently of the compiler and runtime, and serve as a
//! cross-check of compiled rules (`reference:adamw` next to `adamw`).
//!
//! Per-element arithmetic is in f32, as torch does for f32 parameters; per-step scalars (bias
//! corrections, step size) are computed in f64 and rounded once.

use crate::compare::stepper::{Contender, StepError, Stepper};
use crate::compare::task::TensorSpec;
use crate::compare::CompareError;

/// Which update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceKind {
    /// `torch.optim.SGD(lr, momentum, weight_decay)` (dampening 0, no Nesterov).
    Sgd,
    /// `torch.optim.Adam(lr, betas, eps, weight_decay)` (L2 weight decay, no AMSGrad).
    Adam,
    /// `torch.optim.AdamW(lr, betas, eps, weight_decay)` (decoupled weight decay, no AMSGrad).
    AdamW,
}

impl ReferenceKind {
    /// Parse `sgd`, `adam` or `adamw`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sgd" => Some(ReferenceKind::Sgd),
            "adam" => Some(ReferenceKind::Adam),
            "adamw" => Some(ReferenceKind::AdamW),
            _ => None,
        }
    }

    /// The names [`ReferenceKind::from_name`] accepts.
    pub const NAMES: [&'static str; 3] = ["sgd", "adam", "adamw"];

    fn name(self) -> &'static str {
        match self {
            ReferenceKind::Sgd => "sgd",
            ReferenceKind::Adam => "adam",
            ReferenceKind::AdamW => "adamw",
        }
    }

    /// torch's defaults (SGD's `lr` has none in torch; 1e-3 here).
    fn default_hypers(self) -> Vec<(String, f64)> {
        let h = |v: &[(&str, f64)]| v.iter().map(|&(n, x)| (n.to_string(), x)).collect();
        match self {
            ReferenceKind::Sgd => h(&[("lr", 1e-3), ("momentum", 0.0), ("weight_decay", 0.0)]),
            ReferenceKind::Adam => h(&[
                ("lr", 1e-3),
                ("beta1", 0.9),
                ("beta2", 0.999),
                ("eps", 1e-8),
                ("weight_decay", 0.0),
            ]),
            ReferenceKind::AdamW => h(&[
                ("lr", 1e-3),
                ("beta1", 0.9),
                ("beta2", 0.999),
                ("eps", 1e-8),
                ("weight_decay", 1e-2),
            ]),
        }
    }
}

/// A reference optimizer with its hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    kind: ReferenceKind,
    label: String,
    hypers: Vec<(String, f64)>,
}

impl Reference {
    /// The optimizer with torch's default hyperparameters, labelled `label`.
    pub fn new(kind: ReferenceKind, label: impl Into<String>) -> Self {
        Reference {
            kind,
            label: label.into(),
            hypers: kind.default_hypers(),
        }
    }

    fn get(&self, name: &str) -> f64 {
        self.hypers
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |&(_, v)| v)
    }
}

impl Contender for Reference {
    fn label(&self) -> &str {
        &self.label
    }
    fn source(&self) -> String {
        format!("reference:{}", self.kind.name())
    }
    fn hypers(&self) -> Vec<(String, f64)> {
        self.hypers.clone()
    }
    fn set_hyper(&mut self, name: &str, value: f64) -> Result<(), CompareError> {
        match self.hypers.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => {
                slot.1 = value;
                Ok(())
            }
            None => Err(crate::compare::stepper::unknown_setting(self, name)),
        }
    }
    fn build(&self, tensors: &[TensorSpec]) -> Result<Box<dyn Stepper>, CompareError> {
        let zeros = || {
            tensors
                .iter()
                .map(|t| vec![0.0f32; t.len()])
                .collect::<Vec<_>>()
        };
        let sgd_momentum = self.kind == ReferenceKind::Sgd && self.get("momentum") != 0.0;
        let (m, v) = match self.kind {
            ReferenceKind::Sgd if sgd_momentum => (zeros(), Vec::new()),
            ReferenceKind::Sgd => (Vec::new(), Vec::new()),
            ReferenceKind::Adam | ReferenceKind::AdamW => (zeros(), zeros()),
        };
        Ok(Box::new(ReferenceStepper {
            kind: self.kind,
            lr: self.get("lr"),
            momentum: self.get("momentum"),
            beta1: self.get("beta1"),
            beta2: self.get("beta2"),
            eps: self.get("eps"),
            weight_decay: self.get("weight_decay"),
            t: 0,
            m,
            v,
        }))
    }
}

struct ReferenceStepper {
    kind: ReferenceKind,
    lr: f64,
    momentum: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    t: u64,
    /// SGD momentum buffer, or Adam's first moment.
    m: Vec<Vec<f32>>,
    /// Adam's second moment.
    v: Vec<Vec<f32>>,
}

impl Stepper for ReferenceStepper {
    fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>]) -> Result<(), StepError> {
        self.t += 1;
        let t = self.t;
        match self.kind {
            ReferenceKind::Sgd => {
                let (lr, mu, wd) = (
                    self.lr as f32,
                    self.momentum as f32,
                    self.weight_decay as f32,
                );
                for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
                    for (j, (p, &g)) in p.iter_mut().zip(g).enumerate() {
                        let mut d = g + wd * *p;
                        if let Some(buf) = self.m.get_mut(i) {
                            // torch initializes the buffer with the first gradient.
                            buf[j] = if t == 1 { d } else { mu * buf[j] + d };
                            d = buf[j];
                        }
                        *p -= lr * d;
                    }
                }
            }
            ReferenceKind::Adam | ReferenceKind::AdamW => {
                let decoupled = self.kind == ReferenceKind::AdamW;
                let bc1 = 1.0 - self.beta1.powi(t as i32);
                let bc2 = 1.0 - self.beta2.powi(t as i32);
                let step_size = (self.lr / bc1) as f32;
                let sqrt_bc2 = bc2.sqrt() as f32;
                let (b1, b2, eps) = (self.beta1 as f32, self.beta2 as f32, self.eps as f32);
                let (wd, decay) = (
                    self.weight_decay as f32,
                    (self.lr * self.weight_decay) as f32,
                );
                for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
                    let (m, v) = (&mut self.m[i], &mut self.v[i]);
                    for (j, (p, &g)) in p.iter_mut().zip(g).enumerate() {
                        let g = if decoupled {
                            *p -= decay * *p;
                            g
                        } else {
                            g + wd * *p
                        };
                        m[j] = b1 * m[j] + (1.0 - b1) * g;
                        v[j] = b2 * v[j] + (1.0 - b2) * g * g;
                        let denom = v[j].sqrt() / sqrt_bc2 + eps;
                        *p -= step_size * m[j] / denom;
                    }
                }
            }
        }
        Ok(())
    }

    fn set_hyper(&mut self, name: &str, value: f64) -> Result<(), StepError> {
        let has_buffer = !self.m.is_empty();
        let slot = match name {
            "lr" => &mut self.lr,
            "beta1" => &mut self.beta1,
            "beta2" => &mut self.beta2,
            "eps" => &mut self.eps,
            "weight_decay" => &mut self.weight_decay,
            // The buffer exists only when the run started with momentum.
            "momentum" if (value != 0.0) == has_buffer => &mut self.momentum,
            "momentum" => {
                return Err(format!(
                    "reference sgd cannot switch momentum on or off during a run (to {value})"
                )
                .into())
            }
            _ => return Err(format!("reference optimizer has no hyper `{name}`").into()),
        };
        *slot = value;
        Ok(())
    }

    fn state_bytes(&self) -> usize {
        let bytes = |s: &Vec<Vec<f32>>| s.iter().map(|t| t.len() * 4).sum::<usize>();
        bytes(&self.m) + bytes(&self.v)
    }
}
