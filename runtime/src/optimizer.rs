//! The optimizer: parameter groups, owned state, and the step.
//!
//! Takes a [`Rule`], registered parameter names and shapes (in groups, each group with its flags
//! and hypers), and per step the parameters and their gradients as f32 slices. Gives the updated
//! parameters, in place. Owns every state: per-element buffers, scalar states and the step count,
//! all kept per parameter as torch.optim does, and created at a parameter's first step from the
//! rule's initial values (`Init::Param` copies the parameter as it is then).
//!
//! Guarantees: one compiled kernel per flag set, cached for the optimizer's lifetime (changing a
//! hyper never recompiles); every tensor of a step goes through one pass of the thread pool per
//! kernel; a step that returns an error has changed nothing, because every name, length and host
//! value is checked before any memory is touched.

use crate::cpu::TensorArgs;
use crate::error::{unknown_name, NameKind, RuntimeError};
use crate::rule::Rule;
use crate::target::{Executor, Job, Target};
use optc_kernel::{HostValues, Init, Kernel};
use std::collections::HashMap;
use std::sync::Arc;

/// How an [`Optimizer`] is built.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the kernels run.
    pub target: Target,
    /// Worker threads for the CPU target, in a pool of the optimizer's own; `None` uses
    /// [`Options::pool`] or else rayon's global pool.
    pub threads: Option<usize>,
    /// A rayon pool to share (for example with a benchmark's own loops); used when `threads` is
    /// `None`.
    pub pool: Option<Arc<rayon::ThreadPool>>,
    /// Flags of the first group (group 0), overriding the rule's defaults.
    pub flags: Vec<(String, bool)>,
    /// Let the CPU JIT fuse `a * b + c` into one rounding (faster on hosts with FMA). With
    /// `false`, the CPU target gives the reference interpreter's results bit for bit.
    pub allow_fma: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            target: Target::default(),
            threads: None,
            pool: None,
            flags: Vec::new(),
            allow_fma: true,
        }
    }
}

/// A parameter group, as returned by [`Optimizer::add_group`]. Group 0 always exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupId(pub(crate) usize);

impl GroupId {
    /// The first group, made with the optimizer.
    pub const DEFAULT: GroupId = GroupId(0);

    /// The group's position, in creation order.
    pub fn index(self) -> usize {
        self.0
    }
}

/// One parameter's part of a step: its name, its data (updated in place) and its gradient.
#[derive(Debug)]
pub struct Update<'a> {
    /// The name the parameter was registered under.
    pub name: &'a str,
    /// The parameter, updated in place.
    pub param: &'a mut [f32],
    /// Its gradient.
    pub grad: &'a [f32],
}

impl<'a> Update<'a> {
    /// An update of parameter `name`.
    pub fn new(name: &'a str, param: &'a mut [f32], grad: &'a [f32]) -> Self {
        Update { name, param, grad }
    }

    /// An update from little-endian f32 bytes (viewed without copying). Fails when a buffer is
    /// not 4-byte aligned or not a whole number of f32s.
    pub fn from_bytes(
        name: &'a str,
        param: &'a mut [u8],
        grad: &'a [u8],
    ) -> Result<Self, RuntimeError> {
        Ok(Update {
            name,
            param: crate::bytes::f32_slice_mut(name, param)?,
            grad: crate::bytes::f32_slice(name, grad)?,
        })
    }
}

pub(crate) struct Group {
    /// Index into `Optimizer::kernels`.
    pub kernel: usize,
    /// Hyper values, in the rule's order.
    pub hypers: Vec<f64>,
}

/// The state of one parameter after at least one step.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ParamState {
    /// Steps taken (`t` of the last step).
    pub step: u64,
    /// Scalar states, in the kernel's order.
    pub scalars: Vec<f64>,
    /// Per-element states, in the kernel's order.
    pub buffers: Vec<Vec<f32>>,
}

pub(crate) struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub len: usize,
    pub group: usize,
    /// `None` until the first step.
    pub state: Option<ParamState>,
}

pub(crate) struct CachedKernel {
    pub flags: Vec<bool>,
    pub executor: Executor,
}

/// An optimizer: a rule, its compiled kernels, parameter groups and all optimizer state.
/// See the module docs.
pub struct Optimizer {
    pub(crate) rule: Rule,
    target: Target,
    allow_fma: bool,
    pool: Option<Arc<rayon::ThreadPool>>,
    pub(crate) kernels: Vec<CachedKernel>,
    compiles: usize,
    pub(crate) defaults: Vec<f64>,
    pub(crate) groups: Vec<Group>,
    pub(crate) params: Vec<Param>,
    by_name: HashMap<String, usize>,
}

impl Optimizer {
    /// An optimizer on the CPU with the rule's default flags in group 0.
    pub fn new(rule: Rule) -> Result<Optimizer, RuntimeError> {
        Optimizer::with_options(rule, Options::default())
    }

    /// An optimizer built with `options`. Compiles group 0's kernel.
    pub fn with_options(rule: Rule, options: Options) -> Result<Optimizer, RuntimeError> {
        let pool = match options.threads {
            Some(n) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| RuntimeError::ThreadPool(e.to_string()))?,
            )),
            None => options.pool,
        };
        let defaults = rule.hypers().iter().map(|h| h.default).collect();
        let mut opt = Optimizer {
            rule,
            target: options.target,
            allow_fma: options.allow_fma,
            pool,
            kernels: Vec::new(),
            compiles: 0,
            defaults,
            groups: Vec::new(),
            params: Vec::new(),
            by_name: HashMap::new(),
        };
        let flags: Vec<(&str, bool)> = options
            .flags
            .iter()
            .map(|(n, v)| (n.as_str(), *v))
            .collect();
        opt.add_group(&flags)?;
        Ok(opt)
    }

    /// The rule.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// The target the kernels run on.
    pub fn target(&self) -> Target {
        self.target
    }

    /// How many kernels this optimizer has compiled: one per distinct flag set, never more.
    pub fn compile_count(&self) -> usize {
        self.compiles
    }

    /// Adds a parameter group with the rule's default flags overridden by `flags`, and the current
    /// default hypers (see [`Optimizer::set_hyper`]). Compiles a kernel unless one for the same
    /// flag set is cached.
    pub fn add_group(&mut self, flags: &[(&str, bool)]) -> Result<GroupId, RuntimeError> {
        let flags = self.rule.resolve_flags(flags)?;
        let kernel = match self.kernels.iter().position(|k| k.flags == flags) {
            Some(i) => i,
            None => {
                let kernel = self.rule.specialize(&flags)?;
                let executor = Executor::compile(self.target, &kernel, self.allow_fma)?;
                self.compiles += 1;
                self.kernels.push(CachedKernel { flags, executor });
                self.kernels.len() - 1
            }
        };
        self.groups.push(Group {
            kernel,
            hypers: self.defaults.clone(),
        });
        Ok(GroupId(self.groups.len() - 1))
    }

    /// The number of parameter groups.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The kernel a group runs.
    pub fn kernel(&self, group: GroupId) -> Result<&Kernel, RuntimeError> {
        let g = self.group(group)?;
        Ok(self.kernels[g.kernel].executor.kernel())
    }

    /// Registers parameter `name` of `shape` in group 0.
    pub fn add_param(&mut self, name: &str, shape: &[usize]) -> Result<(), RuntimeError> {
        self.add_param_to(GroupId::DEFAULT, name, shape)
    }

    /// Registers parameter `name` of `shape` in `group`. Its state is created at its first step.
    pub fn add_param_to(
        &mut self,
        group: GroupId,
        name: &str,
        shape: &[usize],
    ) -> Result<(), RuntimeError> {
        self.group(group)?;
        if self.by_name.contains_key(name) {
            return Err(RuntimeError::DuplicateParam(name.to_string()));
        }
        let len = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                RuntimeError::Unsupported(format!("the shape {shape:?} of `{name}` is too large"))
            })?;
        self.by_name.insert(name.to_string(), self.params.len());
        self.params.push(Param {
            name: name.to_string(),
            shape: shape.to_vec(),
            len,
            group: group.0,
            state: None,
        });
        Ok(())
    }

    /// The registered parameter names, in registration order.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// The shape parameter `name` was registered with.
    pub fn param_shape(&self, name: &str) -> Result<&[usize], RuntimeError> {
        Ok(&self.params[self.param_index(name)?].shape)
    }

    /// Sets hyper `name` in every group, and as the default of groups added later. Never
    /// recompiles.
    pub fn set_hyper(&mut self, name: &str, value: f64) -> Result<(), RuntimeError> {
        let i = self.rule.hyper_index(name)?;
        self.defaults[i] = value;
        for g in &mut self.groups {
            g.hypers[i] = value;
        }
        Ok(())
    }

    /// Sets hyper `name` in one group. Never recompiles.
    pub fn set_group_hyper(
        &mut self,
        group: GroupId,
        name: &str,
        value: f64,
    ) -> Result<(), RuntimeError> {
        let i = self.rule.hyper_index(name)?;
        self.group(group)?;
        self.groups[group.0].hypers[i] = value;
        Ok(())
    }

    /// The value of hyper `name` in `group`.
    pub fn hyper(&self, group: GroupId, name: &str) -> Result<f64, RuntimeError> {
        let i = self.rule.hyper_index(name)?;
        Ok(self.group(group)?.hypers[i])
    }

    /// The number of steps parameter `name` has taken.
    pub fn step_count(&self, name: &str) -> Result<u64, RuntimeError> {
        Ok(self.params[self.param_index(name)?]
            .state
            .as_ref()
            .map_or(0, |s| s.step))
    }

    /// The per-element states of parameter `name` as `(state name, values)`, in the kernel's order;
    /// empty before its first step.
    pub fn states(&self, name: &str) -> Result<Vec<(&str, &[f32])>, RuntimeError> {
        let p = &self.params[self.param_index(name)?];
        let kernel = self.kernels[self.groups[p.group].kernel].executor.kernel();
        Ok(match &p.state {
            None => Vec::new(),
            Some(s) => kernel
                .states
                .iter()
                .zip(&s.buffers)
                .map(|(d, b)| (d.name.as_str(), b.as_slice()))
                .collect(),
        })
    }

    /// The scalar states of parameter `name` as `(name, value)`; empty before its first step.
    pub fn scalars(&self, name: &str) -> Result<Vec<(&str, f64)>, RuntimeError> {
        let p = &self.params[self.param_index(name)?];
        let kernel = self.kernels[self.groups[p.group].kernel].executor.kernel();
        Ok(match &p.state {
            None => Vec::new(),
            Some(s) => kernel
                .scalars
                .iter()
                .zip(&s.scalars)
                .map(|(d, &v)| (d.name.as_str(), v))
                .collect(),
        })
    }

    /// Steps every parameter in `updates` once (parameters left out are not stepped, as torch
    /// skips parameters without a gradient). All tensors sharing a kernel go through one pass of
    /// the thread pool. On error nothing has changed.
    pub fn step<'a>(
        &mut self,
        updates: impl IntoIterator<Item = Update<'a>>,
    ) -> Result<(), RuntimeError> {
        let updates: Vec<Update<'a>> = updates.into_iter().collect();
        let plans = self.plan(&updates)?;
        self.execute(updates, plans)
    }

    /// Steps every registered parameter, given in registration order, with its gradient.
    pub fn step_all(
        &mut self,
        params: &mut [&mut [f32]],
        grads: &[&[f32]],
    ) -> Result<(), RuntimeError> {
        if params.len() != self.params.len() {
            return Err(RuntimeError::Count {
                what: "parameters",
                found: params.len(),
                expected: self.params.len(),
            });
        }
        if grads.len() != self.params.len() {
            return Err(RuntimeError::Count {
                what: "gradients",
                found: grads.len(),
                expected: self.params.len(),
            });
        }
        let names: Vec<String> = self.params.iter().map(|p| p.name.clone()).collect();
        let updates = names
            .iter()
            .zip(params.iter_mut())
            .zip(grads)
            .map(|((name, p), g)| Update::new(name, p, g));
        self.step(updates)
    }

    pub(crate) fn group(&self, group: GroupId) -> Result<&Group, RuntimeError> {
        self.groups
            .get(group.0)
            .ok_or(RuntimeError::UnknownGroup(group.0))
    }

    pub(crate) fn param_index(&self, name: &str) -> Result<usize, RuntimeError> {
        self.by_name.get(name).copied().ok_or_else(|| {
            unknown_name(
                NameKind::Param,
                name,
                "in this optimizer",
                self.params.iter().map(|p| p.name.as_str()),
            )
        })
    }

    /// Checks every update and computes everything fallible, touching nothing.
    fn plan(&self, updates: &[Update<'_>]) -> Result<Vec<Plan>, RuntimeError> {
        let mut seen = vec![false; self.params.len()];
        let mut plans = Vec::with_capacity(updates.len());
        for u in updates {
            let index = self.param_index(u.name)?;
            if std::mem::replace(&mut seen[index], true) {
                return Err(RuntimeError::DuplicateParam(u.name.to_string()));
            }
            let p = &self.params[index];
            for (what, found) in [
                ("the parameter", u.param.len()),
                ("the gradient", u.grad.len()),
            ] {
                if found != p.len {
                    return Err(RuntimeError::Length {
                        name: p.name.clone(),
                        what: what.to_string(),
                        found,
                        expected: p.len,
                    });
                }
            }
            let group = &self.groups[p.group];
            let kernel = self.kernels[group.kernel].executor.kernel();
            let (t, scalars, init) = match &p.state {
                Some(s) => (
                    s.step.checked_add(1).ok_or_else(|| {
                        RuntimeError::Checkpoint(format!(
                            "parameter `{}` is at the last step count",
                            p.name
                        ))
                    })?,
                    s.scalars.clone(),
                    None,
                ),
                None => {
                    let values = kernel.eval_init(&group.hypers)?;
                    let scalars = kernel.initial_scalars(&group.hypers)?;
                    let init: Vec<Option<f32>> = kernel
                        .states
                        .iter()
                        .map(|s| match s.init {
                            Init::Param => None,
                            Init::Value(h) => Some(values[h.index()] as f32),
                        })
                        .collect();
                    (1, scalars, Some(init))
                }
            };
            let host = kernel.eval_host(&group.hypers, t, &scalars, &[])?;
            plans.push(Plan {
                index,
                kernel: group.kernel,
                t,
                scalars,
                init,
                host,
            });
        }
        Ok(plans)
    }

    /// Creates missing states, runs one pass per kernel, then commits scalars and step counts.
    fn execute(&mut self, updates: Vec<Update<'_>>, plans: Vec<Plan>) -> Result<(), RuntimeError> {
        for (u, plan) in updates.iter().zip(&plans) {
            if let Some(init) = &plan.init {
                let buffers = init
                    .iter()
                    .map(|v| match v {
                        Some(x) => vec![*x; u.param.len()],
                        None => u.param.to_vec(),
                    })
                    .collect();
                self.params[plan.index].state = Some(ParamState {
                    step: 0,
                    scalars: plan.scalars.clone(),
                    buffers,
                });
            }
        }
        let mut slots: Vec<Option<&mut Param>> = self.params.iter_mut().map(Some).collect();
        let mut jobs: Vec<Vec<Job<'_>>> = (0..self.kernels.len()).map(|_| Vec::new()).collect();
        for (u, plan) in updates.into_iter().zip(&plans) {
            let Some(Some(param)) = slots.get_mut(plan.index).map(Option::take) else {
                return Err(RuntimeError::DuplicateParam(u.name.to_string()));
            };
            let group = &self.groups[param.group];
            let Some(state) = param.state.as_mut() else {
                return Err(RuntimeError::Unsupported(format!(
                    "internal: `{}` has no state",
                    u.name
                )));
            };
            jobs[plan.kernel].push(Job {
                args: TensorArgs {
                    param: u.param,
                    grad: u.grad,
                    states: state.buffers.iter_mut().map(Vec::as_mut_slice).collect(),
                    uniforms: plan.host.uniforms[0].iter().map(|&x| x as f32).collect(),
                },
                hypers: &group.hypers,
                t: plan.t,
                scalars: &plan.scalars,
            });
        }
        let mut result = Ok(());
        for (kernel, jobs) in self.kernels.iter().zip(jobs) {
            if !jobs.is_empty() && result.is_ok() {
                result = kernel.executor.run(jobs, self.pool.as_deref());
            }
        }
        if let Err(e) = result {
            // Not reachable with a validated kernel; keep first-step parameters stateless so that
            // no half-made state is ever stepped or saved.
            for plan in plans.iter().filter(|p| p.init.is_some()) {
                self.params[plan.index].state = None;
            }
            return Err(e);
        }
        for plan in plans {
            if let Some(state) = self.params[plan.index].state.as_mut() {
                state.step = plan.t;
                state.scalars = plan.host.scalars;
            }
        }
        Ok(())
    }
}

/// What [`Optimizer::plan`] computed for one update.
struct Plan {
    index: usize,
    kernel: usize,
    t: u64,
    /// Scalar states before the step.
    scalars: Vec<f64>,
    /// For a first step: each state's constant initial value, or `None` for a copy of `p`.
    init: Option<Vec<Option<f32>>>,
    host: HostValues,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("rule", &self.rule.name())
            .field("target", &self.target)
            .field("groups", &self.groups.len())
            .field("params", &self.params.len())
            .finish_non_exhaustive()
    }
}
