//! Contenders from `.opt` rules: a file path or a stdlib name, parsed and checked by
//! `optc-compiler`, and stepped by an `optc_runtime::Optimizer` on a [`Backend`] (the optimizer
//! specializes the kernel for the chosen flags and owns the states).
//!
//! Takes the command-line argument; gives a [`RuleContender`] whose hypers and flags start at the
//! rule's defaults. A file that does not parse or check is an error carrying the compiler's
//! rendered diagnostics.

use std::path::Path;

use crate::cli::loss_scale::LossScale;
use optc_kernel::{Dtype, Precision};
use optc_runtime::buf::BufVec;
use optc_runtime::{LossScaler, Optimizer, Options, Rule, RuntimeError, Target, Update};

use crate::compare::stepper::{Contender, StepError, Stepper};
use crate::compare::task::TensorSpec;
use crate::compare::{did_you_mean, CompareError};

/// What executes a compiled rule's kernel (through `optc_runtime::Optimizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// The CPU JIT (Cranelift, SIMD, rayon): what a training loop uses.
    #[default]
    Cpu,
    /// The reference interpreter: the meaning of the rule, one element at a time. For checking.
    Interp,
}

impl Backend {
    fn target(self) -> Target {
        match self {
            Backend::Cpu => Target::Cpu,
            Backend::Interp => Target::Interp,
        }
    }
}

/// A rule from a file or the stdlib, with its hyper and flag values.
#[derive(Debug, Clone)]
pub struct RuleContender {
    label: String,
    source: String,
    rule: optc_compiler::Rule,
    hypers: Vec<(String, f64)>,
    flags: Vec<(String, bool)>,
    max_grad_norm: Option<f64>,
    loss_scale: Option<LossScale>,
    backend: Backend,
    precision: Precision,
}

impl RuleContender {
    /// Load `arg`: a path when it names an existing file, ends in `.opt` or contains a path
    /// separator; otherwise a stdlib rule name. `color` colours the diagnostics.
    pub fn load(arg: &str, backend: Backend, color: bool) -> Result<Self, CompareError> {
        let looks_like_path = arg.ends_with(".opt")
            || arg.contains('/')
            || arg.contains('\\')
            || Path::new(arg).is_file();
        let (rule, source) =
            if looks_like_path {
                let bytes = std::fs::read(arg).map_err(|e| CompareError::Rule {
                    rule: arg.to_string(),
                    message: format!("cannot read {arg}: {e}"),
                })?;
                let rule = optc_compiler::Rule::parse_bytes(arg, &bytes);
                (rule, arg.to_string())
            } else {
                match optc_compiler::stdlib::rule(arg) {
                    Some(rule) => (rule, format!("stdlib:{arg}")),
                    None => {
                        let hint = did_you_mean(arg, optc_compiler::stdlib::names())
                            .map(|s| format!(" (did you mean `{s}`?)"))
                            .unwrap_or_default();
                        return Err(CompareError::Rule {
                            rule: arg.to_string(),
                            message: format!(
                            "no file `{arg}` and no stdlib rule `{arg}`{hint}; the stdlib has: {}",
                            optc_compiler::stdlib::names().collect::<Vec<_>>().join(", ")
                        ),
                        });
                    }
                }
            };
        let rule = rule.map_err(|d| CompareError::Rule {
            rule: arg.to_string(),
            message: d.render(color).trim_end().to_string(),
        })?;
        Ok(RuleContender {
            label: rule.name().to_string(),
            source,
            hypers: rule
                .hypers()
                .iter()
                .map(|h| (h.name.clone(), h.default))
                .collect(),
            flags: rule
                .flags()
                .iter()
                .map(|f| (f.name.clone(), f.default))
                .collect(),
            rule,
            max_grad_norm: None,
            loss_scale: None,
            backend,
            precision: Precision::default(),
        })
    }

    /// Keep parameters, gradients and states in these storage dtypes (`optc_kernel::Precision`).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Rename (to tell apart two contenders with the same rule name).
    pub fn set_label(&mut self, label: impl Into<String>) {
        self.label = label.into();
    }

    fn optimizer(&self, tensors: &[TensorSpec]) -> Result<(Optimizer, Vec<String>), RuntimeError> {
        let options = Options {
            target: self.backend.target(),
            flags: self.flags.clone(),
            max_grad_norm: self.max_grad_norm,
            precision: self.precision,
            loss_scale: self.loss_scale.map(|s| match s {
                LossScale::Fixed(v) => v,
                LossScale::Dynamic => LossScaler::default().scale(),
            }),
            ..Options::default()
        };
        let mut optimizer =
            Optimizer::with_options(Rule::from_compiled(self.rule.clone()), options)?;
        for (name, value) in &self.hypers {
            optimizer.set_hyper(name, *value)?;
        }
        let names: Vec<String> = tensors.iter().map(|t| t.name.to_string()).collect();
        for (name, t) in names.iter().zip(tensors) {
            optimizer.add_param(name, &t.shape)?;
        }
        Ok((optimizer, names))
    }
}

impl Contender for RuleContender {
    fn label(&self) -> &str {
        &self.label
    }
    fn source(&self) -> String {
        self.source.clone()
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
    fn flags(&self) -> Vec<(String, bool)> {
        self.flags.clone()
    }
    fn set_flag(&mut self, name: &str, value: bool) -> Result<(), CompareError> {
        match self.flags.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => {
                slot.1 = value;
                Ok(())
            }
            None => Err(crate::compare::stepper::unknown_setting(self, name)),
        }
    }
    fn counts(&self) -> Vec<(String, u32)> {
        self.rule.counts().to_vec()
    }
    fn set_count(&mut self, name: &str, value: u32) -> Result<(), CompareError> {
        if !self.rule.counts().iter().any(|(n, _)| n == name) {
            return Err(crate::compare::stepper::unknown_setting(self, name));
        }
        self.rule =
            self.rule
                .with_counts(&[(name, value)])
                .map_err(|e| CompareError::BadValue {
                    rule: self.label.clone(),
                    name: name.to_string(),
                    raw: value.to_string(),
                    why: e.to_string(),
                })?;
        Ok(())
    }
    fn set_max_grad_norm(&mut self, value: f64) -> Result<(), CompareError> {
        self.max_grad_norm = Some(value);
        Ok(())
    }
    fn clips(&self) -> bool {
        true
    }
    fn set_state_dtype(&mut self, dtype: optc_kernel::Dtype) -> Result<(), CompareError> {
        let precision = optc_kernel::Precision {
            state: dtype,
            ..self.precision
        };
        precision.check().map_err(|message| CompareError::Rule {
            rule: self.label.clone(),
            message,
        })?;
        self.precision = precision;
        Ok(())
    }
    fn set_loss_scale(&mut self, scale: LossScale) -> Result<(), CompareError> {
        self.loss_scale = Some(scale);
        Ok(())
    }
    fn scales_loss(&self) -> bool {
        true
    }
    fn build(&self, tensors: &[TensorSpec]) -> Result<Box<dyn Stepper>, CompareError> {
        let (optimizer, names) = self.optimizer(tensors).map_err(|e| CompareError::Rule {
            rule: self.source.clone(),
            message: e.to_string(),
        })?;
        let dtype = self.precision.param;
        let scaling = self.loss_scale.map(|s| match s {
            LossScale::Fixed(v) => Scaling::Fixed(v as f32),
            LossScale::Dynamic => Scaling::Dynamic(LossScaler::default()),
        });
        Ok(Box::new(RuntimeStepper {
            optimizer,
            names,
            dtype,
            scaling,
        }))
    }
}

/// Steps every tensor through an `optc_runtime::Optimizer`, which owns the states (made at
/// the first step).
struct RuntimeStepper {
    optimizer: Optimizer,
    names: Vec<String>,
    /// The parameters' storage dtype: the task's f32 parameters are held in it between steps.
    dtype: Dtype,
    scaling: Option<Scaling>,
}

/// How a stepper scales the gradients (`--loss-scale`).
enum Scaling {
    Fixed(f32),
    Dynamic(LossScaler),
}

impl Stepper for RuntimeStepper {
    fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>]) -> Result<(), StepError> {
        // The gradients of the loss times the scale, rounded to f32 (an overflow is an inf the
        // step skips).
        let scaled: Vec<Vec<f32>>;
        let grads = match &self.scaling {
            None => grads,
            Some(Scaling::Fixed(s)) => {
                scaled = scale(grads, *s);
                &scaled
            }
            Some(Scaling::Dynamic(scaler)) => {
                scaled = scale(grads, scaler.scale() as f32);
                &scaled
            }
        };
        if self.dtype == Dtype::F32 {
            let updates = self
                .names
                .iter()
                .zip(params.iter_mut())
                .zip(grads)
                .map(|((name, p), g)| Update::new(name, p, g));
            match &mut self.scaling {
                Some(Scaling::Dynamic(scaler)) => scaler.step(&mut self.optimizer, updates)?,
                _ => self.optimizer.step(updates)?,
            };
            return Ok(());
        }
        // 16-bit parameters: the task's values rounded to the dtype (exact after the first
        // step), stepped, and widened back for the next forward pass.
        let mut p16: Vec<BufVec> = params
            .iter()
            .map(|p| BufVec::from_f32(self.dtype, p))
            .collect();
        let g16: Vec<BufVec> = grads
            .iter()
            .map(|g| BufVec::from_f32(self.dtype, g))
            .collect();
        let updates = self
            .names
            .iter()
            .zip(p16.iter_mut())
            .zip(&g16)
            .map(|((name, p), g)| Update::typed(name, p.view(), g.into()));
        match &mut self.scaling {
            Some(Scaling::Dynamic(scaler)) => scaler.step(&mut self.optimizer, updates)?,
            _ => self.optimizer.step(updates)?,
        };
        for (p, b) in params.iter_mut().zip(&p16) {
            *p = b.to_f32();
        }
        Ok(())
    }

    fn state_bytes(&self) -> usize {
        // The per-element states in their storage dtypes, and the f64 scalar states.
        let scalars: usize = self
            .names
            .iter()
            .map(|name| self.optimizer.scalars(name).map_or(0, |s| 8 * s.len()))
            .sum();
        self.optimizer.state_bytes().0 + scalars
    }

    fn set_hyper(&mut self, name: &str, value: f64) -> Result<(), StepError> {
        // Never recompiles: the kernel reads hypers through the host program.
        Ok(self.optimizer.set_hyper(name, value)?)
    }
}

/// Each gradient times `s`.
fn scale(grads: &[Vec<f32>], s: f32) -> Vec<Vec<f32>> {
    grads
        .iter()
        .map(|g| g.iter().map(|x| x * s).collect())
        .collect()
}
