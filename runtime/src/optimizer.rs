//! The optimizer: parameter groups, owned state, and the step, once for every target.
//!
//! Takes a [`Rule`], registered parameter names and shapes (in groups, each group with its flags
//! and hypers), and per step the parameters and their gradients ([`Update`]: host slices, or on
//! CUDA device buffers). Gives the updated parameters, in place, and a [`StepReport`]. Owns every
//! state, kept per parameter as torch.optim does and created at a parameter's first step from the
//! rule's initial values (`Init::Param` copies the parameter as it is then): the step count and
//! scalar states on the host, the per-element states in the target's memory, held by its
//! [`Executor`] (the only part that differs between targets).
//!
//! Guarantees: one compiled kernel per flag set, rank class and kernel variant, cached for the
//! optimizer's lifetime. A variant is chosen per step from the group's current hypers by the
//! rule's conditions on hypers alone (`if momentum != 0`; [`optc_kernel::variant`]): changing a
//! hyper compiles at most the variant it selects, the first time, and never again. A state only
//! some variants use is allocated when a step first runs a variant that needs it, from its
//! declared init evaluated at that moment (as torch allocates `momentum_buffer` at the first
//! step with momentum), and kept when the hyper changes back. A rule that reads the built-in `matrix`
//! condition has one kernel per rank class (`Matrix` for tensors of 2 or more dims, `Vector` for
//! 0 or 1), and each parameter runs the kernel of its shape's class, so a group's tensors may use
//! two kernels. Every tensor of a step goes through one pass of the target per kernel and stage;
//! a step that returns an error has changed nothing, because every name, length and host value is
//! checked before any memory is touched.

use crate::error::{unknown_name, NameKind, RuntimeError};
use crate::executor::{Executor, StageTensor, StateInit, TensorData};
use crate::rule::{GradPrep, Rule};
use crate::stages;
use crate::target::Target;
use crate::variants::Family;
use optc_kernel::matrix::WideView;
use optc_kernel::{GRAD_NORM_REDUCTION, NONFINITE_REDUCTION};

/// The hyper that clipping by global norm adds (`optc_compiler`'s clip pass).
const MAX_GRAD_NORM: &str = "max_grad_norm";
/// The hyper that loss scaling adds (`optc_compiler`'s loss_scale pass).
pub(crate) const LOSS_SCALE: &str = "loss_scale";
use crate::buf::{BufMut, BufRef};
use optc_kernel::{
    Dtype, HyperDecl, Init, Kernel, MatrixDims, Precision, RankClass, StateShape, ValidKernel,
};
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
    /// Integer flags (compile-time `repeat` counts such as Muon's `ns_steps`), overriding the
    /// rule's defaults for every group ([`Rule::with_counts`]).
    pub counts: Vec<(String, u32)>,
    /// Let the CPU JIT fuse `a * b + c` into one rounding (faster on hosts with FMA). With
    /// `false`, the CPU target gives the reference interpreter's results bit for bit.
    pub allow_fma: bool,
    /// Clip by the global gradient norm before the update, as
    /// `torch.nn.utils.clip_grad_norm_(params, max_grad_norm)` does, over every tensor of each
    /// `step` call across groups, fused into the rule's own passes. It adds the hyper
    /// `max_grad_norm` (set to this value; change it with [`Optimizer::set_hyper`]), and every
    /// step reports the total norm ([`StepReport::grad_norm`]). `f64::INFINITY` reports the norm
    /// without clipping (the gradient is multiplied by exactly 1).
    pub max_grad_norm: Option<f64>,
    /// Loss scaling with inf/NaN skip, as torch's `GradScaler` with a fused optimizer's
    /// `found_inf` (`docs/loss_scaling.md`): the gradients given to a step are the loss scale
    /// times the true ones, and every kernel reads `g * (1 / loss_scale)` (before clipping). A
    /// step whose gradients hold an inf or a NaN in any tensor writes nothing, keeps every step
    /// count and reports [`StepReport::skipped`]. The check is fused into the first pass that
    /// reads `g`. It adds the hyper `loss_scale` (set to this value; change it with
    /// [`Optimizer::set_loss_scale`], or let a [`crate::LossScaler`] do it).
    pub loss_scale: Option<f64>,
    /// Where and how the CUDA target runs (ignored by the other targets).
    #[cfg(feature = "cuda")]
    pub cuda: crate::cuda::CudaOptions,
    /// The storage dtypes of parameters, gradients and states, f32 master weights and
    /// stochastic rounding (`optc_kernel::storage`; f32 everywhere by default). Every
    /// [`Update`] then gives the parameter and gradient in [`Precision::param`].
    pub precision: Precision,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            target: Target::default(),
            threads: None,
            pool: None,
            flags: Vec::new(),
            counts: Vec::new(),
            allow_fma: true,
            max_grad_norm: None,
            loss_scale: None,
            #[cfg(feature = "cuda")]
            cuda: crate::cuda::CudaOptions::default(),
            precision: Precision::default(),
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

/// One parameter's part of a step: its name, its data (updated in place) and its gradient, in
/// host memory or (for [`Target::Cuda`](crate::Target)) in device memory.
pub struct Update<'a> {
    pub(crate) name: &'a str,
    pub(crate) data: TensorData<'a>,
}

impl<'a> Update<'a> {
    /// An update of parameter `name` from host slices.
    pub fn new(name: &'a str, param: &'a mut [f32], grad: &'a [f32]) -> Self {
        Update::typed(name, param.into(), grad.into())
    }

    /// An update from bf16 host slices (an optimizer built with `param` dtype bf16).
    pub fn bf16(name: &'a str, param: &'a mut [half::bf16], grad: &'a [half::bf16]) -> Self {
        Update::typed(name, param.into(), grad.into())
    }

    /// An update from f16 host slices (an optimizer built with `param` dtype f16).
    pub fn f16(name: &'a str, param: &'a mut [half::f16], grad: &'a [half::f16]) -> Self {
        Update::typed(name, param.into(), grad.into())
    }

    /// An update from host buffers of any storage dtype ([`crate::buf`]). A step checks that
    /// they are in the dtype the optimizer stores parameters and gradients in.
    pub fn typed(name: &'a str, param: BufMut<'a>, grad: BufRef<'a>) -> Self {
        Update {
            name,
            data: TensorData::Host { param, grad },
        }
    }

    /// An update from little-endian bytes of dtype `dtype` (f32, bf16 or f16), viewed without
    /// copying. Fails when a buffer is not aligned to the value size or not a whole number of
    /// values, or the dtype is not one a parameter can have.
    pub fn from_bytes_as(
        name: &'a str,
        dtype: Dtype,
        param: &'a mut [u8],
        grad: &'a [u8],
    ) -> Result<Self, RuntimeError> {
        Ok(Update::typed(
            name,
            crate::bytes::buf_mut(name, dtype, param)?,
            crate::bytes::buf_ref(name, dtype, grad)?,
        ))
    }

    /// An update from little-endian f32 bytes (viewed without copying). Fails when a buffer is
    /// not 4-byte aligned or not a whole number of f32s.
    pub fn from_bytes(
        name: &'a str,
        param: &'a mut [u8],
        grad: &'a [u8],
    ) -> Result<Self, RuntimeError> {
        Ok(Update::new(
            name,
            crate::bytes::f32_slice_mut(name, param)?,
            crate::bytes::f32_slice(name, grad)?,
        ))
    }

    /// The parameter's name.
    pub fn name(&self) -> &str {
        self.name
    }
}

impl std::fmt::Debug for Update<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (p, g) = self.data.lens();
        f.debug_struct("Update")
            .field("name", &self.name)
            .field("param_len", &p)
            .field("grad_len", &g)
            .finish_non_exhaustive()
    }
}

/// What a step computed besides the update itself.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct StepReport {
    /// The total gradient norm over every tensor of the step (what
    /// `torch.nn.utils.clip_grad_norm_` returns), when the step computed it: with
    /// `max_grad_norm` set, before clipping.
    pub grad_norm: Option<f64>,
    /// Whether the step was skipped because a gradient held an inf or a NaN (loss scaling
    /// only): nothing was written and no step count advanced.
    pub skipped: bool,
}

pub(crate) struct Group {
    /// The group's flag vector, in the rule's order.
    pub flags: Vec<bool>,
    /// The optimizer's family (flag set and rank class) for each rank class the rule has (one
    /// entry, `Any`, unless the rule reads `matrix`), in [`Rule::rank_classes`] order.
    pub kernels: Vec<(RankClass, usize)>,
    /// Hyper values, in the rule's order.
    pub hypers: Vec<f64>,
}

/// A parameter's host-side progress after at least one step: its step count and scalar states.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Progress {
    /// Steps taken (`t` of the last step).
    pub step: u64,
    /// Scalar states, in the order of its family's kernels.
    pub scalars: Vec<f64>,
}

/// A parameter's state as read from a file: its progress and its states by position (`None`:
/// not allocated), or `None` for a parameter not stepped yet.
pub(crate) type SavedState = Option<(Progress, Vec<Option<Vec<f32>>>)>;

pub(crate) struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub len: usize,
    pub group: usize,
    /// The family of kernels it runs (its group's, for its rank class).
    pub family: usize,
    /// `None` until the first step (and then the executor holds no states for it).
    pub progress: Option<Progress>,
}

/// An optimizer: a rule, its compiled kernels, parameter groups and all optimizer state, on one
/// target. See the module docs.
pub struct Optimizer {
    pub(crate) rule: Rule,
    pub(crate) exec: Box<dyn Executor>,
    /// Each flag set and rank class in use, with its variants.
    pub(crate) families: Vec<Family>,
    /// The hypers every kernel takes, in order: the rule's (and those options add).
    pub(crate) hypers: Vec<HyperDecl>,
    pub(crate) defaults: Vec<f64>,
    /// `Options::max_grad_norm`: whether kernels clip, and the hyper's initial value.
    max_grad_norm: Option<f64>,
    /// `Options::precision`, applied to every kernel.
    precision: Precision,
    /// `Options::loss_scale`: whether kernels unscale and check, and the hyper's initial value.
    loss_scale: Option<f64>,
    pub(crate) groups: Vec<Group>,
    pub(crate) params: Vec<Param>,
    by_name: HashMap<String, usize>,
}

impl Optimizer {
    /// An optimizer on the CPU with the rule's default flags in group 0.
    pub fn new(rule: Rule) -> Result<Optimizer, RuntimeError> {
        Optimizer::with_options(rule, Options::default())
    }

    /// An optimizer built with `options`. Compiles (or loads) group 0's kernel.
    pub fn with_options(rule: Rule, options: Options) -> Result<Optimizer, RuntimeError> {
        if let Some(v) = options.max_grad_norm {
            if v.is_nan() || v <= 0.0 {
                return Err(RuntimeError::Unsupported(format!(
                    "max_grad_norm must be positive (or infinite, to report the norm without clipping); got {v}"
                )));
            }
        }
        options
            .precision
            .check()
            .map_err(RuntimeError::Unsupported)?;
        if let Some(v) = options.loss_scale {
            check_loss_scale(v)?;
        }
        let counts: Vec<(&str, u32)> = options
            .counts
            .iter()
            .map(|(n, v)| (n.as_str(), *v))
            .collect();
        let rule = rule.with_counts(&counts)?;
        let exec = crate::target::executor(&options)?;
        let hypers = rule.hypers().to_vec();
        let defaults = hypers.iter().map(|h| h.default).collect();
        let mut opt = Optimizer {
            rule,
            exec,
            families: Vec::new(),
            hypers,
            defaults,
            max_grad_norm: options.max_grad_norm,
            precision: options.precision,
            loss_scale: options.loss_scale,
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
        self.exec.target()
    }

    /// How many kernels this optimizer has compiled: one per distinct flag set, rank class and
    /// kernel variant that a step (or a group's creation) has selected, never more.
    pub fn compile_count(&self) -> usize {
        self.exec.kernel_count()
    }

    /// Adds a parameter group with the rule's default flags overridden by `flags`, and the current
    /// default hypers (see [`Optimizer::set_hyper`]). Compiles the kernels those hypers select
    /// (one per rank class of the rule) unless they are cached.
    pub fn add_group(&mut self, flags: &[(&str, bool)]) -> Result<GroupId, RuntimeError> {
        let flags = self.rule.resolve_flags(flags)?;
        let mut families = Vec::new();
        for rank in self.rule.rank_classes() {
            families.push((rank, self.family_index(&flags, rank)?));
        }
        for &(_, family) in &families {
            let hypers = self.defaults.clone();
            self.variant_kernel(family, &hypers)?;
        }
        self.groups.push(Group {
            flags,
            kernels: families,
            hypers: self.defaults.clone(),
        });
        Ok(GroupId(self.groups.len() - 1))
    }

    /// The index of the family for `flags` and `rank`, made (its description kernel compiled,
    /// not loaded) unless it exists.
    fn family_index(&mut self, flags: &[bool], rank: RankClass) -> Result<usize, RuntimeError> {
        if let Some(i) = self
            .families
            .iter()
            .position(|f| f.flags == flags && f.rank == rank)
        {
            return Ok(i);
        }
        let prep = self.prep();
        let base = self
            .precision
            .apply(&self.rule.specialize(flags, rank, prep)?)?;
        let conditions = self.rule.conditions(flags, rank, prep)?;
        let names = |h: &[HyperDecl]| h.iter().map(|h| h.name.clone()).collect::<Vec<_>>();
        if self.families.is_empty() {
            // The first kernel defines the hypers: the rule's and those options add.
            self.hypers = base.hypers.clone();
            self.defaults = base.default_hypers();
            if let Some(v) = self.max_grad_norm {
                let i = self.hyper_index(MAX_GRAD_NORM)?;
                self.defaults[i] = v;
            }
            if let Some(v) = self.loss_scale {
                let i = self.hyper_index(LOSS_SCALE)?;
                self.defaults[i] = v;
            }
        } else if names(&base.hypers) != names(&self.hypers) {
            return Err(RuntimeError::Unsupported(format!(
                "internal: the kernel of rule `{}` takes hypers {:?}, the optimizer has {:?}",
                self.rule.name(),
                names(&base.hypers),
                names(&self.hypers)
            )));
        }
        self.families
            .push(Family::new(flags.to_vec(), rank, base, conditions));
        Ok(self.families.len() - 1)
    }

    /// The executor's index of the variant of `family` that `hypers` select, compiled and loaded
    /// unless it is cached.
    pub(crate) fn variant_kernel(
        &mut self,
        family: usize,
        hypers: &[f64],
    ) -> Result<usize, RuntimeError> {
        let fam = &self.families[family];
        let variant = fam.select(hypers)?;
        if let Some(i) = fam.loaded.get(variant.index()).copied().flatten() {
            return Ok(i);
        }
        let (kernel, ptx) =
            self.rule
                .specialize_variant(&fam.flags, fam.rank, self.prep(), variant)?;
        let kernel = self.precision.apply(&kernel)?;
        let slots = fam.slots(&kernel)?;
        let kernel = ValidKernel::new(kernel)?;
        stages::check_supported(&kernel, self.exec.target())?;
        stages::check_skip_order(&kernel)?;
        let loaded = (0..self.exec.kernel_count()).map(|i| self.exec.kernel(i).kernel());
        stages::check_step_stages(&kernel, loaded)?;
        let index = self.exec.load(kernel, ptx.as_ref(), slots)?;
        if let Some(slot) = self.families[family].loaded.get_mut(variant.index()) {
            *slot = Some(index);
        }
        Ok(index)
    }

    /// What the options add to every kernel.
    fn prep(&self) -> GradPrep {
        GradPrep {
            clip: self.max_grad_norm.is_some(),
            loss_scale: self.loss_scale.is_some(),
        }
    }

    /// Sets the loss scale of every group (the hyper `loss_scale`): the factor the gradients of
    /// the next steps were multiplied by. Fails unless the optimizer was built with
    /// [`Options::loss_scale`], and for a scale that is not positive and finite.
    pub fn set_loss_scale(&mut self, scale: f64) -> Result<(), RuntimeError> {
        if self.loss_scale.is_none() {
            return Err(RuntimeError::Unsupported(
                "this optimizer was built without loss scaling; set Options::loss_scale (`--loss-scale`) to scale"
                    .into(),
            ));
        }
        check_loss_scale(scale)?;
        self.set_hyper(LOSS_SCALE, scale)
    }

    /// The loss scale of group 0 (`None` without loss scaling).
    pub fn loss_scale(&self) -> Option<f64> {
        self.loss_scale?;
        let i = self.hyper_index(LOSS_SCALE).ok()?;
        self.groups.first().map(|g| g.hypers[i])
    }

    /// The stream a CUDA optimizer queues all its work on (`None` on other targets). Steps are
    /// asynchronous; reading states back waits for them.
    #[cfg(feature = "cuda")]
    pub fn cuda_stream(&self) -> Option<&Arc<crate::cuda::cudarc::driver::CudaStream>> {
        self.exec.cuda_ref().map(|c| c.stream())
    }

    /// The launch shape of a CUDA optimizer (`None` on other targets).
    #[cfg(feature = "cuda")]
    pub fn launch_shape(&self) -> Option<crate::cuda::LaunchShape> {
        self.exec.cuda_ref().map(|c| c.launch_shape())
    }

    /// Changes the launch shape of a CUDA optimizer (for tuning; results do not depend on it).
    #[cfg(feature = "cuda")]
    pub fn set_launch_shape(
        &mut self,
        shape: crate::cuda::LaunchShape,
    ) -> Result<(), RuntimeError> {
        match self.exec.cuda() {
            Some(c) => Ok(c.set_launch_shape(shape)?),
            None => Err(RuntimeError::Unsupported(format!(
                "a launch shape is a CUDA setting; this optimizer runs on {}",
                self.exec.target()
            ))),
        }
    }

    /// The number of parameter groups.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The kernel a group runs with its current hypers: for a rule with rank classes (one that
    /// reads `matrix`), the one for matrices; [`Optimizer::param_kernel`] gives the one a
    /// parameter runs. When those hypers select a variant no step has compiled yet, this is the
    /// flag set's description kernel (every condition on hypers a select), which moves at least
    /// the bytes of any variant.
    pub fn kernel(&self, group: GroupId) -> Result<&Kernel, RuntimeError> {
        let g = self.group(group)?;
        Ok(self.selected(g.kernels[0].1, &g.hypers))
    }

    /// The kernel parameter `name` runs with its group's current hypers: its group's, for the
    /// rank class of its shape (see [`Optimizer::kernel`] for a variant not compiled yet).
    pub fn param_kernel(&self, name: &str) -> Result<&Kernel, RuntimeError> {
        let p = &self.params[self.param_index(name)?];
        Ok(self.selected(p.family, &self.groups[p.group].hypers))
    }

    fn selected(&self, family: usize, hypers: &[f64]) -> &Kernel {
        let fam = &self.families[family];
        match fam.select(hypers) {
            Ok(v) => match fam.loaded.get(v.index()).copied().flatten() {
                Some(k) => self.exec.kernel(k).kernel(),
                None => &fam.base,
            },
            Err(_) => &fam.base,
        }
    }

    /// The family of the parameter of registration index `param`.
    pub(crate) fn family_of(&self, param: usize) -> &Family {
        &self.families[self.params[param].family]
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
        let g = self.group(group)?;
        if self.by_name.contains_key(name) {
            return Err(RuntimeError::DuplicateParam(name.to_string()));
        }
        let len = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                RuntimeError::Unsupported(format!("the shape {shape:?} of `{name}` is too large"))
            })?;
        let rank = rank_class(shape);
        let family = g
            .kernels
            .iter()
            .find(|(r, _)| *r == RankClass::Any || *r == rank)
            .map(|&(_, k)| k)
            .ok_or_else(|| {
                RuntimeError::Unsupported(format!(
                    "parameter `{name}` of shape {shape:?} needs the {} kernel of rule `{}`, which was prebuilt for {} tensors only; compile the rule with `--rank {}` for it",
                    rank_name(rank),
                    self.rule.name(),
                    rank_name(g.kernels[0].0),
                    rank_name(rank)
                ))
            })?;
        let base = &self.families[family].base;
        let dtypes = (0..base.states.len())
            .map(|i| {
                base.storage
                    .dtype(optc_kernel::Slot::State(optc_kernel::StateId::new(i)))
            })
            .collect();
        self.exec.set_state_dtypes(self.params.len(), dtypes)?;
        self.by_name.insert(name.to_string(), self.params.len());
        self.params.push(Param {
            name: name.to_string(),
            shape: shape.to_vec(),
            len,
            group: group.0,
            family,
            progress: None,
        });
        Ok(())
    }

    /// The precision options the optimizer was built with.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The bytes of memory the per-element states of every registered parameter take, once
    /// allocated (in their storage dtypes), and the number of parameter elements: their ratio is
    /// the optimizer state's bytes per parameter. Before a parameter's first step, its states
    /// are counted as its kernels will allocate them.
    pub fn state_bytes(&self) -> (usize, usize) {
        let mut bytes = 0;
        let mut elements = 0;
        for (i, p) in self.params.iter().enumerate() {
            elements += p.len;
            bytes += match p.progress {
                Some(_) => self.exec.state_bytes(i),
                None => {
                    let base = &self.families[p.family].base;
                    base.states
                        .iter()
                        .enumerate()
                        .map(|(s, d)| {
                            let slot = optc_kernel::Slot::State(optc_kernel::StateId::new(s));
                            let len = match d.shape {
                                StateShape::Full => p.len,
                                shape => MatrixDims::of_shape(&p.shape).map_or(0, |m| m.len(shape)),
                            };
                            match optc_kernel::int8::dtype_for_len(base.storage.dtype(slot), len) {
                                Dtype::Int8 => optc_kernel::int8::host_bytes(len),
                                d => len * d.bytes_per_value() as usize,
                            }
                        })
                        .sum()
                }
            };
        }
        (bytes, elements)
    }

    /// The registered parameter names, in registration order.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// The shape parameter `name` was registered with.
    pub fn param_shape(&self, name: &str) -> Result<&[usize], RuntimeError> {
        Ok(&self.params[self.param_index(name)?].shape)
    }

    /// Sets hyper `name` in every group, and as the default of groups added later. Compiles
    /// only a kernel variant that the new value selects for the first time (then cached).
    pub fn set_hyper(&mut self, name: &str, value: f64) -> Result<(), RuntimeError> {
        let i = self.hyper_index(name)?;
        self.defaults[i] = value;
        for g in &mut self.groups {
            g.hypers[i] = value;
        }
        for g in 0..self.groups.len() {
            self.load_selected(g)?;
        }
        Ok(())
    }

    /// Loads the variants group `group`'s hypers select, so that [`Optimizer::kernel`] shows
    /// them.
    fn load_selected(&mut self, group: usize) -> Result<(), RuntimeError> {
        let families: Vec<usize> = self.groups[group].kernels.iter().map(|k| k.1).collect();
        let hypers = self.groups[group].hypers.clone();
        for f in families {
            self.variant_kernel(f, &hypers)?;
        }
        Ok(())
    }

    /// Sets hyper `name` in one group. Compiles only a kernel variant that the new value selects
    /// for the first time (then cached).
    pub fn set_group_hyper(
        &mut self,
        group: GroupId,
        name: &str,
        value: f64,
    ) -> Result<(), RuntimeError> {
        let i = self.hyper_index(name)?;
        self.group(group)?;
        self.groups[group.0].hypers[i] = value;
        self.load_selected(group.0)
    }

    /// The value of hyper `name` in `group`.
    pub fn hyper(&self, group: GroupId, name: &str) -> Result<f64, RuntimeError> {
        let i = self.hyper_index(name)?;
        Ok(self.group(group)?.hypers[i])
    }

    /// The number of steps parameter `name` has taken.
    pub fn step_count(&self, name: &str) -> Result<u64, RuntimeError> {
        Ok(self.params[self.param_index(name)?]
            .progress
            .as_ref()
            .map_or(0, |s| s.step))
    }

    /// The per-element states of parameter `name` that are allocated, as `(state name,
    /// values)`, in the order of its flag set's kernel, copied to the host (on CUDA this waits
    /// for queued steps); empty before its first step. A state that no step has needed yet
    /// (`buf` of SGD while `momentum` is 0) is not listed.
    pub fn states(&self, name: &str) -> Result<Vec<(&str, Vec<f32>)>, RuntimeError> {
        let index = self.param_index(name)?;
        if self.params[index].progress.is_none() {
            return Ok(Vec::new());
        }
        let family = self.family_of(index);
        let values = self.exec.read_states(index)?;
        Ok(family
            .base
            .states
            .iter()
            .zip(values)
            .filter_map(|(d, b)| b.map(|b| (d.name.as_str(), b)))
            .collect())
    }

    /// The scalar states of parameter `name` as `(name, value)`; empty before its first step.
    pub fn scalars(&self, name: &str) -> Result<Vec<(&str, f64)>, RuntimeError> {
        let index = self.param_index(name)?;
        let kernel = &self.family_of(index).base;
        Ok(match &self.params[index].progress {
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
    /// the target per stage. On error nothing has changed.
    pub fn step<'a>(
        &mut self,
        updates: impl IntoIterator<Item = Update<'a>>,
    ) -> Result<StepReport, RuntimeError> {
        let mut updates: Vec<Update<'a>> = updates.into_iter().collect();
        let kernels = self.select_variants(&updates)?;
        let plans = self.plan(&updates, &kernels)?;
        self.execute(&mut updates, plans)
    }

    /// Steps every registered parameter, given in registration order, with its gradient.
    pub fn step_all(
        &mut self,
        params: &mut [&mut [f32]],
        grads: &[&[f32]],
    ) -> Result<StepReport, RuntimeError> {
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

    /// The position of hyper `name`, or an error with a did-you-mean hint.
    fn hyper_index(&self, name: &str) -> Result<usize, RuntimeError> {
        self.hypers
            .iter()
            .position(|h| h.name == name)
            .ok_or_else(|| {
                unknown_name(
                    NameKind::Hyper,
                    name,
                    format!("in rule `{}`", self.rule.name()),
                    self.hypers.iter().map(|h| h.name.as_str()),
                )
            })
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

    /// The kernel each update runs: the variant its group's hypers select, compiled (and cached)
    /// where no step has used it yet. Changes no state.
    fn select_variants(&mut self, updates: &[Update<'_>]) -> Result<Vec<usize>, RuntimeError> {
        let mut kernels = Vec::with_capacity(updates.len());
        for u in updates {
            let p = &self.params[self.param_index(u.name)?];
            let (family, group) = (p.family, p.group);
            let hypers = self.groups[group].hypers.clone();
            kernels.push(self.variant_kernel(family, &hypers)?);
        }
        Ok(kernels)
    }

    /// Checks every update and computes everything fallible, touching nothing.
    fn plan(&self, updates: &[Update<'_>], kernels: &[usize]) -> Result<Vec<Plan>, RuntimeError> {
        let mut seen = vec![false; self.params.len()];
        let mut plans = Vec::with_capacity(updates.len());
        for (u, &kernel_index) in updates.iter().zip(kernels) {
            let index = self.param_index(u.name)?;
            if std::mem::replace(&mut seen[index], true) {
                return Err(RuntimeError::DuplicateParam(u.name.to_string()));
            }
            let p = &self.params[index];
            // Host and device buffers alike are in the optimizer's parameter dtype.
            let (param, grad) = u.data.dtypes();
            let want = self.precision.param;
            for (what, found) in [("parameter", param), ("gradient", grad)] {
                if found != want {
                    return Err(RuntimeError::BufferDtype {
                        name: p.name.clone(),
                        what: what.to_string(),
                        found,
                        expected: want,
                    });
                }
            }
            let (param_len, grad_len) = u.data.lens();
            for (what, found) in [("the parameter", param_len), ("the gradient", grad_len)] {
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
            let kernel = self.exec.kernel(kernel_index);
            let family = &self.families[p.family];
            let (t, scalars) = match &p.progress {
                Some(s) => (
                    s.step.checked_add(1).ok_or_else(|| {
                        RuntimeError::Checkpoint(format!(
                            "parameter `{}` is at the last step count",
                            p.name
                        ))
                    })?,
                    s.scalars.clone(),
                ),
                None => (1, kernel.initial_scalars(&group.hypers)?),
            };
            // The states this variant uses that the parameter does not have yet.
            let allocated = match p.progress {
                Some(_) => self.exec.allocated(index),
                None => Vec::new(),
            };
            let slots = family.slots(kernel)?;
            let mut init = Vec::new();
            if slots
                .iter()
                .any(|&at| !allocated.get(at).copied().unwrap_or(false))
            {
                let values = kernel.eval_init(&group.hypers)?;
                for (s, &at) in kernel.states.iter().zip(&slots) {
                    if !allocated.get(at).copied().unwrap_or(false) {
                        init.push((
                            at,
                            match s.init {
                                Init::Param => StateInit::Param,
                                Init::Value(h) => StateInit::Value(values[h.index()] as f32),
                            },
                        ));
                    }
                }
            }
            // Stage 0's uniforms (and, without reductions, the new scalars) are known now; the
            // host program of a validated kernel cannot fail later with more reductions known.
            let reduced = vec![f64::NAN; kernel.reductions.len()];
            let host = kernel.eval_host_for(
                &group.hypers,
                t,
                &scalars,
                &reduced,
                WideView::of_shape(&p.shape),
            )?;
            let dims = if kernel.is_factored() {
                Some(MatrixDims::of_shape(&p.shape).ok_or_else(|| {
                    RuntimeError::Unsupported(format!(
                        "internal: parameter `{}` of shape {:?} runs a kernel for matrices",
                        p.name, p.shape
                    ))
                })?)
            } else {
                None
            };
            let state_lens = family
                .base
                .states
                .iter()
                .map(|s| match s.shape {
                    StateShape::Full => Ok(p.len),
                    shape => MatrixDims::of_shape(&p.shape)
                        .map(|d| d.len(shape))
                        .ok_or_else(|| {
                            RuntimeError::Unsupported(format!(
                                "internal: parameter `{}` of shape {:?} has a row or column state",
                                p.name, p.shape
                            ))
                        }),
                })
                .collect::<Result<Vec<_>, _>>()?;
            plans.push(Plan {
                dims,
                reduced_vec: vec![Vec::new(); kernel.reductions.len()],
                vector_states: Vec::new(),
                index,
                group: p.group,
                kernel: kernel_index,
                state_lens,
                t,
                first: p.progress.is_none(),
                init,
                uniforms: host.uniforms[0].iter().map(|&x| x as f32).collect(),
                scalars_before: scalars,
                scalars: host.scalars,
                reduced,
                view: WideView::of_shape(&p.shape),
            });
        }
        Ok(plans)
    }

    /// Runs the stage schedule, then commits scalars and step counts. A failure here is a device
    /// fault (never user input); first-step parameters are then left stateless so that no
    /// half-made state is ever stepped or saved.
    fn execute(
        &mut self,
        updates: &mut [Update<'_>],
        mut plans: Vec<Plan>,
    ) -> Result<StepReport, RuntimeError> {
        let report = match self.run_schedule(updates, &mut plans) {
            Ok(report) => report,
            Err(e) => {
                self.drop_new_states(&plans);
                return Err(e);
            }
        };
        if report.skipped {
            // Nothing was stored (the check comes before every store): the states this step
            // created go too, so the parameters are as if the step had not been called.
            self.drop_new_states(&plans);
            return Ok(report);
        }
        for plan in plans {
            self.params[plan.index].progress = Some(Progress {
                step: plan.t,
                scalars: plan.scalars,
            });
        }
        Ok(report)
    }

    /// Drops the states the step of `plans` allocated (all of a first-step parameter's).
    fn drop_new_states(&mut self, plans: &[Plan]) {
        for plan in plans.iter().filter(|p| !p.init.is_empty()) {
            let made: Vec<usize> = plan.init.iter().map(|(at, _)| *at).collect();
            let which = if plan.first {
                None
            } else {
                Some(made.as_slice())
            };
            self.exec.drop_states(plan.index, which);
        }
    }

    /// The stage schedule of one step (`docs/stages.md`): create missing states; then for each
    /// stage, every tensor that has it in one pass of the executor per kernel, its partials
    /// finalized (Tensor scope per tensor, Step scope once over every tensor of the call), and
    /// the host program run for the next stage's uniforms; finally the scalar updates.
    fn run_schedule(
        &mut self,
        updates: &mut [Update<'_>],
        plans: &mut [Plan],
    ) -> Result<StepReport, RuntimeError> {
        for (u, plan) in updates.iter().zip(plans.iter_mut()) {
            let shapes: Vec<StateShape> = self
                .exec
                .kernel(plan.kernel)
                .states
                .iter()
                .map(|s| s.shape)
                .collect();
            if !plan.init.is_empty() {
                self.exec
                    .create_states(plan.index, &plan.state_lens, &plan.init, &u.data)?;
            }
            if plan.dims.is_some() {
                let mut states = Vec::with_capacity(shapes.len());
                for (i, s) in shapes.iter().enumerate() {
                    states.push(if *s == StateShape::Full {
                        Vec::new()
                    } else {
                        self.exec.read_state(plan.index, plan.kernel, i)?
                    });
                }
                plan.vector_states = states;
            }
        }
        let depth = plans
            .iter()
            .map(|p| self.exec.kernel(p.kernel).stages.len())
            .max()
            .unwrap_or(0);
        let mut report = StepReport::default();
        for stage in 0..depth {
            // This stage's uniforms (and [rows]/[cols] values) of every tensor that has the stage.
            let mut uniforms: Vec<Option<StageArgs>> = Vec::with_capacity(plans.len());
            for plan in plans.iter_mut() {
                let kernel = self.exec.kernel(plan.kernel);
                uniforms.push(if stage >= kernel.stages.len() {
                    None
                } else if stage == 0 && plan.dims.is_none() {
                    Some((std::mem::take(&mut plan.uniforms), Vec::new()))
                } else {
                    let hypers = &self.groups[plan.group].hypers;
                    let host = kernel.eval_host_for(
                        hypers,
                        plan.t,
                        &plan.scalars_before,
                        &plan.reduced,
                        plan.view,
                    )?;
                    let vectors = match plan.dims {
                        Some(dims) => {
                            let values = eval_vectors(kernel, dims, &host, plan)?;
                            kernel.stage_vectors::<f32>(stage, &values)
                        }
                        None => Vec::new(),
                    };
                    Some((
                        host.uniforms[stage].iter().map(|&x| x as f32).collect(),
                        vectors,
                    ))
                });
            }
            let mut by_kernel: Vec<(Vec<usize>, Vec<StageTensor<'_, '_>>)> =
                (0..self.exec.kernel_count())
                    .map(|_| Default::default())
                    .collect();
            for (i, (u, plan)) in updates.iter_mut().zip(plans.iter()).enumerate() {
                if let Some((uniforms, vectors)) = uniforms[i].take() {
                    let (who, tensors) = &mut by_kernel[plan.kernel];
                    who.push(i);
                    tensors.push(StageTensor {
                        param: plan.index,
                        data: &mut u.data,
                        uniforms,
                        vectors,
                        dims: plan.dims,
                        view: plan.view,
                        sr_key: self
                            .exec
                            .kernel(plan.kernel)
                            .storage
                            .sr_key(plan.t, plan.index as u64),
                    });
                }
            }
            let mut step_parts = Vec::new();
            for (kernel, (who, mut tensors)) in by_kernel.into_iter().enumerate() {
                if tensors.is_empty() {
                    continue;
                }
                let partials = self.exec.run_stage(kernel, stage, &mut tensors)?;
                drop(tensors);
                let k = self.exec.kernel(kernel);
                for (&i, parts) in who.iter().zip(&partials) {
                    let plan = &mut plans[i];
                    stages::finalize_tensor(
                        k,
                        stage,
                        i,
                        plan.index,
                        parts,
                        stages::Finalized {
                            reduced: &mut plan.reduced,
                            vectors: &mut plan.reduced_vec,
                            dims: plan.dims,
                        },
                        &mut step_parts,
                    )?;
                }
            }
            if !step_parts.is_empty() {
                let mut reduced: Vec<&mut Vec<f64>> =
                    plans.iter_mut().map(|p| &mut p.reduced).collect();
                for (name, value) in stages::combine_step(step_parts, &mut reduced) {
                    if name == GRAD_NORM_REDUCTION {
                        report.grad_norm = Some(value.sqrt());
                    }
                    // `±0` when every gradient element is finite, NaN otherwise.
                    if name == NONFINITE_REDUCTION && value != 0.0 {
                        report.skipped = true;
                    }
                }
            }
            if report.skipped {
                // Every kernel makes the check before its first store (`stages::check_skip_order`).
                return Ok(report);
            }
        }
        for plan in plans.iter_mut() {
            let kernel = self.exec.kernel(plan.kernel);
            if !kernel.reductions.is_empty() {
                let hypers = &self.groups[plan.group].hypers;
                let host = kernel.eval_host_for(
                    hypers,
                    plan.t,
                    &plan.scalars_before,
                    &plan.reduced,
                    plan.view,
                )?;
                if let Some(dims) = plan.dims.filter(|_| !kernel.vectors.stores.is_empty()) {
                    let values = eval_vectors(kernel, dims, &host, plan)?;
                    let stores = kernel.vector_stores::<f32>(dims, &values);
                    self.exec
                        .write_vector_states(plan.index, plan.kernel, stores)?;
                }
                plan.scalars = host.scalars;
            }
        }
        Ok(report)
    }
}

/// The host's vector program of one tensor (`docs/stages.md`, "Row and column values"), with the
/// reductions finalized so far and the `[rows]`/`[cols]` states as the step began.
fn eval_vectors(
    kernel: &Kernel,
    dims: MatrixDims,
    host: &optc_kernel::HostValues,
    plan: &Plan,
) -> Result<Vec<Vec<f64>>, RuntimeError> {
    let states: Vec<&[f32]> = plan.vector_states.iter().map(Vec::as_slice).collect();
    Ok(kernel.eval_vectors(dims, &host.inputs, &plan.reduced_vec, &states)?)
}

/// One tensor's arguments of a stage: its uniforms and its `[rows]`/`[cols]` values.
type StageArgs = (Vec<f32>, Vec<Vec<f32>>);

/// What [`Optimizer::plan`] computed for one update, and what the schedule adds.
struct Plan {
    index: usize,
    group: usize,
    kernel: usize,
    /// The length of each state of the parameter's family, by position (the parameter's, or a
    /// `[rows]`/`[cols]` state's).
    state_lens: Vec<usize>,
    t: u64,
    /// Whether this is the parameter's first step.
    first: bool,
    /// The states to allocate before the step (by position in the family), and how each starts.
    init: Vec<(usize, StateInit)>,
    /// Stage 0's uniforms, rounded to f32.
    uniforms: Vec<f32>,
    /// Scalar states before the step.
    scalars_before: Vec<f64>,
    /// Scalar states after the step (final once every reduction is known).
    scalars: Vec<f64>,
    /// The kernel's reductions finalized so far (NaN before their stage).
    reduced: Vec<f64>,
    /// The tensor's matrix view, for a kernel with `[rows]`/`[cols]` values.
    dims: Option<MatrixDims>,
    /// The kernel's Row- and Col-scope reductions finalized so far (empty before their stage).
    reduced_vec: Vec<Vec<f64>>,
    /// The kernel's `[rows]`/`[cols]` states as they were when the step began (empty for the
    /// others, and for kernels without them).
    vector_states: Vec<Vec<f32>>,
    /// The tensor's matrix view (tensors of 2 or more dims).
    view: Option<WideView>,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("rule", &self.rule.name())
            .field("target", &self.exec.target())
            .field("groups", &self.groups.len())
            .field("params", &self.params.len())
            .finish_non_exhaustive()
    }
}

/// The rank class of a tensor of `shape`: `Matrix` for 2 or more dims, `Vector` for 0 or 1
/// (the built-in `matrix` condition of the language).
fn rank_class(shape: &[usize]) -> RankClass {
    if shape.len() >= 2 {
        RankClass::Matrix
    } else {
        RankClass::Vector
    }
}

/// How `--rank` spells a rank class.
fn rank_name(rank: RankClass) -> &'static str {
    match rank {
        RankClass::Any => "any",
        RankClass::Matrix => "matrix",
        RankClass::Vector => "vector",
    }
}

/// Errors unless `scale` is a usable loss scale: positive and finite.
fn check_loss_scale(scale: f64) -> Result<(), RuntimeError> {
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(RuntimeError::Unsupported(format!(
            "a loss scale must be positive and finite; got {scale}"
        )))
    }
}
