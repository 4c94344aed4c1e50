//! Contenders from `.opt` rules: a file path or a stdlib name, parsed and checked by
//! `optc-compiler`, specialized for the chosen flags, and stepped by a [`Backend`].
//!
//! Takes the command-line argument; gives a [`RuleContender`] whose hypers and flags start at the
//! rule's defaults. A file that does not parse or check is an error carrying the compiler's
//! rendered diagnostics.

use std::path::Path;

use optc_compiler::backend::interp::{self, Buffers};
use optc_kernel::{Init, Kernel};

use crate::compare::stepper::{Contender, StepError, Stepper};
use crate::compare::task::TensorSpec;
use crate::compare::{did_you_mean, CompareError};

/// What executes a compiled rule's kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The reference interpreter of `optc-compiler`: the meaning of the rule, slow.
    Interp,
}

/// A rule from a file or the stdlib, with its hyper and flag values.
#[derive(Debug, Clone)]
pub struct RuleContender {
    label: String,
    source: String,
    rule: optc_compiler::Rule,
    hypers: Vec<(String, f64)>,
    flags: Vec<(String, bool)>,
    backend: Backend,
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
            backend,
        })
    }

    /// Rename (to tell apart two contenders with the same rule name).
    pub fn set_label(&mut self, label: impl Into<String>) {
        self.label = label.into();
    }

    fn kernel(&self) -> Result<Kernel, CompareError> {
        let values: Vec<bool> = self.flags.iter().map(|&(_, v)| v).collect();
        self.rule
            .specialize_values(&values)
            .map_err(|e| CompareError::Rule {
                rule: self.source.clone(),
                message: e.to_string(),
            })
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
    fn build(&self, tensors: &[TensorSpec]) -> Result<Box<dyn Stepper>, CompareError> {
        let kernel = self.kernel()?;
        match self.backend {
            Backend::Interp => Ok(Box::new(InterpStepper {
                hypers: self.hypers.iter().map(|&(_, v)| v).collect(),
                tensors: tensors.iter().map(|_| None).collect(),
                kernel,
                t: 0,
            })),
        }
    }
}

/// One tensor's states in the interpreter stepper.
struct TensorState {
    buffers: Vec<Vec<f32>>,
    scalars: Vec<f64>,
}

/// Steps every tensor with the reference interpreter; states are made at the first step (so
/// that `Init::Param` copies the parameter as it is then, as the runtime does).
struct InterpStepper {
    kernel: Kernel,
    hypers: Vec<f64>,
    tensors: Vec<Option<TensorState>>,
    t: u64,
}

impl InterpStepper {
    fn fresh_state(&self, param: &[f32]) -> Result<TensorState, StepError> {
        let init = self.kernel.eval_init(&self.hypers)?;
        let buffers = self
            .kernel
            .states
            .iter()
            .map(|s| match s.init {
                Init::Param => param.to_vec(),
                Init::Value(h) => vec![init[h.index()] as f32; param.len()],
            })
            .collect();
        Ok(TensorState {
            buffers,
            scalars: self.kernel.initial_scalars(&self.hypers)?,
        })
    }
}

impl Stepper for InterpStepper {
    fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>]) -> Result<(), StepError> {
        if params.len() != self.tensors.len() || grads.len() != self.tensors.len() {
            return Err(format!(
                "expected {} tensors, got {} parameters and {} gradients",
                self.tensors.len(),
                params.len(),
                grads.len()
            )
            .into());
        }
        self.t += 1;
        for i in 0..params.len() {
            if self.tensors[i].is_none() {
                self.tensors[i] = Some(self.fresh_state(&params[i])?);
            }
            let Some(state) = self.tensors[i].as_mut() else {
                continue;
            };
            interp::step_f32(
                &self.kernel,
                &self.hypers,
                self.t,
                &mut state.scalars,
                Buffers {
                    param: &mut params[i],
                    grad: &grads[i],
                    states: state.buffers.iter_mut().map(|b| b.as_mut_slice()).collect(),
                },
            )?;
        }
        Ok(())
    }

    fn state_bytes(&self) -> usize {
        self.tensors
            .iter()
            .flatten()
            .map(|s| 4 * s.buffers.iter().map(Vec::len).sum::<usize>() + 8 * s.scalars.len())
            .sum()
    }
}
