//! [`OptcOptimizer`]: an optc rule as a [`candle_nn::Optimizer`].
//!
//! Takes vars (in groups, see [`Builder`]) and a [`Config`]; per step a [`GradStore`]. Gives the
//! vars updated in place by the rule's fused kernel, and checkpoints in optc's format (see
//! `optc_runtime::checkpoint`). Every var and gradient is checked before any is touched: a var
//! that is not f32, a gradient of another shape, dtype or device, or a non-contiguous tensor is an
//! error that names the var, and the step then changes nothing.

use crate::config::{Config, Group};
use crate::inplace::{self, Item};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use optc_runtime::{GroupId, Optimizer, RuntimeError};
use std::collections::HashSet;
use std::path::Path;

/// The hyper that [`candle_nn::Optimizer::learning_rate`] reads and writes.
pub const LR: &str = "lr";

/// An optc rule stepping candle vars in place. Build it with [`candle_nn::Optimizer::new`] (one
/// group) or [`OptcOptimizer::builder`] (several).
pub struct OptcOptimizer {
    opt: Optimizer,
    /// Every var with its optc name, in registration order.
    vars: Vec<(String, Var)>,
}

/// Builds an [`OptcOptimizer`] from a [`Config`] and parameter groups.
#[derive(Debug)]
pub struct Builder {
    config: Config,
    groups: Vec<Group>,
}

fn wrap(e: RuntimeError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

fn msg(text: String) -> candle_core::Error {
    candle_core::Error::Msg(text)
}

impl Builder {
    /// Adds a parameter group. The first group added is optc's group 0.
    pub fn group(mut self, group: Group) -> Builder {
        self.groups.push(group);
        self
    }

    /// Compiles one kernel per distinct flag set and registers every var. Fails on an unknown
    /// hyper or flag, a rule without `lr`, a var that is not f32 or not on a supported device, or
    /// a var or name given twice.
    pub fn build(self) -> candle_core::Result<OptcOptimizer> {
        let Builder { config, groups } = self;
        let Config {
            rule,
            mut options,
            hypers,
        } = config;
        let defaults = std::mem::take(&mut options.flags);
        let flags_of = |g: Option<&Group>| -> Vec<(String, bool)> {
            let mut f = defaults.clone();
            f.extend(g.map(|g| g.flags.clone()).unwrap_or_default());
            f
        };
        options.flags = flags_of(groups.first());
        let mut opt = Optimizer::with_options(rule, options).map_err(wrap)?;
        if opt.rule().hypers().iter().all(|h| h.name != LR) {
            return Err(msg(format!(
                "rule `{}` has no hyper `{LR}`, which candle_nn::Optimizer's learning_rate reads",
                opt.rule().name()
            )));
        }
        for (name, value) in &hypers {
            opt.set_hyper(name, *value).map_err(wrap)?;
        }
        let mut vars = Vec::new();
        let mut ids = HashSet::new();
        let mut device: Option<Device> = None;
        for (k, group) in groups.iter().enumerate() {
            let id = if k == 0 {
                GroupId::DEFAULT
            } else {
                let flags = flags_of(Some(group));
                let flags: Vec<(&str, bool)> =
                    flags.iter().map(|(n, v)| (n.as_str(), *v)).collect();
                opt.add_group(&flags).map_err(wrap)?
            };
            for (name, value) in &group.hypers {
                opt.set_group_hyper(id, name, *value).map_err(wrap)?;
            }
            for (name, var) in &group.vars {
                let name = name.clone().unwrap_or_else(|| vars.len().to_string());
                check_var(&name, var, &mut device)?;
                if !ids.insert(var.as_tensor().id()) {
                    return Err(msg(format!("var `{name}` is given twice")));
                }
                opt.add_param_to(id, &name, var.dims()).map_err(wrap)?;
                vars.push((name, var.clone()));
            }
        }
        Ok(OptcOptimizer { opt, vars })
    }
}

fn device_name(d: &Device) -> String {
    format!("{:?}", d.location())
}

/// A var must be f32 on a device this build steps, the same device as the others.
fn check_var(name: &str, var: &Var, device: &mut Option<Device>) -> candle_core::Result<()> {
    if var.dtype() != DType::F32 {
        return Err(msg(format!(
            "var `{name}` is {:?}; optc steps f32 tensors",
            var.dtype()
        )));
    }
    let d = var.device();
    if !d.is_cpu() {
        return Err(msg(format!(
            "var `{name}` is on {}; this build of optc-candle steps CPU vars (docs/candle.md: CUDA)",
            device_name(d)
        )));
    }
    match device {
        Some(first) if !first.same_device(d) => Err(msg(format!(
            "var `{name}` is on {}, the others on {}; one optimizer steps vars of one device",
            device_name(d),
            device_name(first)
        ))),
        Some(_) => Ok(()),
        None => {
            *device = Some(d.clone());
            Ok(())
        }
    }
}

/// A gradient must match its var: shape, dtype, device, and both contiguous.
fn check_grad(name: &str, var: &Tensor, grad: &Tensor) -> candle_core::Result<()> {
    if grad.dims() != var.dims() {
        return Err(msg(format!(
            "the gradient of `{name}` has shape {:?}, the var {:?}",
            grad.dims(),
            var.dims()
        )));
    }
    if grad.dtype() != DType::F32 {
        return Err(msg(format!(
            "the gradient of `{name}` is {:?}; optc steps f32 tensors",
            grad.dtype()
        )));
    }
    if !grad.device().same_device(var.device()) {
        return Err(msg(format!(
            "the gradient of `{name}` is on {}, the var on {}",
            device_name(grad.device()),
            device_name(var.device())
        )));
    }
    for (what, t) in [("var", var), ("gradient", grad)] {
        if !t.is_contiguous() {
            return Err(msg(format!(
                "the {what} of `{name}` is not contiguous; optc steps contiguous tensors in place (call .contiguous() first)"
            )));
        }
    }
    Ok(())
}

impl OptcOptimizer {
    /// A builder: add groups with [`Builder::group`], then [`Builder::build`].
    pub fn builder(config: Config) -> Builder {
        Builder {
            config,
            groups: Vec::new(),
        }
    }

    /// The optc optimizer inside: hypers per group, states, step counts.
    pub fn optimizer(&self) -> &Optimizer {
        &self.opt
    }

    /// The optc optimizer inside, to set hypers (`set_hyper`, `set_group_hyper`).
    pub fn optimizer_mut(&mut self) -> &mut Optimizer {
        &mut self.opt
    }

    /// Every var with its optc name, in registration order.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.vars.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Writes all optimizer state to a safetensors file in optc's checkpoint format.
    pub fn save(&self, path: impl AsRef<Path>) -> candle_core::Result<()> {
        self.opt.save(path).map_err(wrap)
    }

    /// Reads optimizer state written by [`OptcOptimizer::save`] for the same rule, groups and
    /// vars; on error nothing has changed.
    pub fn load(&mut self, path: impl AsRef<Path>) -> candle_core::Result<()> {
        self.opt.load(path).map_err(wrap)
    }
}

impl candle_nn::Optimizer for OptcOptimizer {
    type Config = Config;

    /// One group holding `vars`, named `"0"`, `"1"`, ... in order.
    fn new(vars: Vec<Var>, config: Config) -> candle_core::Result<Self> {
        OptcOptimizer::builder(config)
            .group(Group::new().vars(vars))
            .build()
    }

    /// Steps every var that has a gradient in `grads` (the others are skipped, as torch skips
    /// parameters without a gradient), in place.
    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        let mut items = Vec::with_capacity(self.vars.len());
        for (name, var) in &self.vars {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            check_grad(name, var.as_tensor(), grad)?;
            items.push(Item {
                name: name.clone(),
                param: var.as_tensor().clone(),
                grad: grad.clone(),
            });
        }
        inplace::step(&mut self.opt, &items)
    }

    /// The `lr` of group 0.
    fn learning_rate(&self) -> f64 {
        // `build` checked that the rule has `lr`, and group 0 always exists.
        self.opt.hyper(GroupId::DEFAULT, LR).unwrap_or(f64::NAN)
    }

    /// Sets `lr` in every group.
    fn set_learning_rate(&mut self, lr: f64) {
        // Cannot fail: `build` checked that the rule has `lr`.
        let _ = self.opt.set_hyper(LR, lr);
    }
}

impl std::fmt::Debug for OptcOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OptcOptimizer")
            .field("opt", &self.opt)
            .field("vars", &self.vars.len())
            .finish()
    }
}
