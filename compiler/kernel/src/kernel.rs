//! The fused kernel: what the compiler hands to every backend and what an artifact stores.
//!
//! A [`Kernel`] is one optimizer rule specialized for one set of flags (and one rank class), as a
//! schedule of [`Stage`]s (see `docs/stages.md`):
//! - the **host program**, one DAG over hypers, `t`, scalar states and finalized reductions that
//!   runs in f64 per step per tensor and yields each stage's uniform arguments and the new
//!   scalar-state values;
//! - per stage, the **body**, a DAG that runs once per element in f32 over the loaded buffer
//!   elements and that stage's uniforms, its **stores**, one per written buffer, and its
//!   **reduce outputs**, the body values it folds into reductions.
//!
//! Within a stage each buffer is loaded at most once and stored at most once per element; a
//! buffer is stored by at most one stage. Buffers are passed to every stage in the order of
//! [`Kernel::buffers`].

use crate::arena::{Arena, Handle};
use crate::eval::{eval_arena, EvalError};
use crate::expr::{Expr, ReductionId, ScalarId, Slot, StateId, UniformId};
use crate::matrix::{Coef, MatExpr, MatrixProgram};
use crate::reduce::{ReductionDecl, Scope};
use crate::storage::Storage;
use crate::variant::ConditionValue;
use crate::vector::VectorProgram;
use serde::{Deserialize, Serialize};
use std::fmt::{self, Write as _};

/// The version of the serialized kernel and artifact format. Bumped on every incompatible change.
pub const FORMAT_VERSION: u32 = 9;

/// A hyperparameter: a runtime scalar with a default. Changing it never recompiles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HyperDecl {
    /// Its name, as torch.optim spells it where torch has the optimizer.
    pub name: String,
    /// The value used when the user sets none.
    #[serde(with = "crate::num")]
    pub default: f64,
}

/// A flag and the value this kernel was specialized for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlagValue {
    /// The flag's name.
    pub name: String,
    /// The value the kernel is specialized for.
    pub value: bool,
}

/// How a state starts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// A copy of the parameter (slow weights).
    Param,
    /// The value of a node of [`Kernel::init`], evaluated from the hypers when the state is made.
    Value(Handle<Expr>),
}

/// The shape of a state buffer, relative to its parameter seen as a matrix (leading dims are a
/// batch, the last dim is the row; see `docs/stages.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateShape {
    /// The parameter's shape: one value per element.
    #[default]
    Full,
    /// One value per row: the parameter's shape without its last dim.
    Rows,
    /// One value per column: the parameter's shape without its second-to-last dim.
    Cols,
}

impl StateShape {
    /// The dims of a state of this shape for a parameter of `shape`: the parameter's for `Full`;
    /// without the last dim for `Rows` (`[..., rows]`); without the second-to-last for `Cols`
    /// (`[..., cols]`). A parameter of rank < 2 keeps its shape (it has no such states).
    pub fn dims_of(self, shape: &[usize]) -> Vec<usize> {
        let n = shape.len();
        match self {
            StateShape::Full => shape.to_vec(),
            _ if n < 2 => shape.to_vec(),
            StateShape::Rows => shape[..n - 1].to_vec(),
            StateShape::Cols => shape[..n - 2]
                .iter()
                .chain(&shape[n - 1..])
                .copied()
                .collect(),
        }
    }

    /// The dims torch gives such a state (`keepdim`): `[..., rows, 1]` and `[..., 1, cols]`.
    pub fn torch_dims_of(self, shape: &[usize]) -> Vec<usize> {
        let n = shape.len();
        let mut d = shape.to_vec();
        match self {
            StateShape::Full => {}
            _ if n < 2 => {}
            StateShape::Rows => d[n - 1] = 1,
            StateShape::Cols => d[n - 2] = 1,
        }
        d
    }
}

/// A state buffer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateDecl {
    /// Its name in the rule.
    pub name: String,
    /// Its initial value.
    pub init: Init,
    /// Its shape.
    #[serde(default)]
    pub shape: StateShape,
}

/// Which tensors a kernel is for, when its rule branches on the rank (`matrix`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankClass {
    /// Every tensor (the rule does not look at the rank).
    #[default]
    Any,
    /// Tensors with at least 2 dims.
    Matrix,
    /// Tensors with at most 1 dim.
    Vector,
}

/// A body value folded into a reduction.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReduceOutput {
    /// The reduction.
    pub reduction: ReductionId,
    /// The body node whose per-element value is folded.
    pub value: Handle<Expr>,
}

/// One pass over a tensor's data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// The stage's uniform arguments: `Expr::Uniform(i)` in its body is `host[uniforms[i]]`,
    /// rounded to f32. Boolean uniforms are passed as `1.0` or `0.0`.
    pub uniforms: Vec<Handle<Expr>>,
    /// The per-element body over `Const`, `Bool`, `Uniform` and `Load` leaves, run in f32.
    pub body: Arena<Expr>,
    /// One store per buffer this stage writes.
    pub stores: Vec<Store>,
    /// The values this stage folds into reductions.
    pub reduce: Vec<ReduceOutput>,
    /// A matrix program run once per tensor before the per-element pass, which sees the
    /// buffers it writes (`crate::matrix`; matrix kernels only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<MatrixProgram>,
}

/// A scalar state: one number per parameter tensor, updated once per step by the host program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalarDecl {
    /// Its name in the rule.
    pub name: String,
    /// A node of [`Kernel::init`].
    pub init: Handle<Expr>,
}

/// A store of a stage's body value into a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Store {
    /// The buffer written.
    pub slot: Slot,
    /// The body node whose value is written.
    pub value: Handle<Expr>,
}

/// A scalar state's new value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalarUpdate {
    /// The scalar state.
    pub scalar: ScalarId,
    /// The host-program node with its new value.
    pub value: Handle<Expr>,
}

/// How a kernel (or one stage) uses a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferUse {
    /// The buffer.
    pub slot: Slot,
    /// Whether a body loads it.
    pub read: bool,
    /// Whether a body stores it.
    pub written: bool,
}

/// One optimizer rule, specialized for one flag set, fused into a schedule of stages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    /// The rule's name (`optimizer NAME`).
    pub rule: String,
    /// Every flag of the rule, with the value this kernel is specialized for.
    pub flags: Vec<FlagValue>,
    /// Every hyper of the rule, in declaration order; `Expr::Hyper` indexes this list.
    pub hypers: Vec<HyperDecl>,
    /// The states this kernel needs, in buffer order; `Slot::State` indexes this list.
    pub states: Vec<StateDecl>,
    /// The scalar states this kernel needs; `Expr::Scalar` indexes this list.
    pub scalars: Vec<ScalarDecl>,
    /// Initial values of states and scalars, over `Const` and `Hyper` leaves.
    pub init: Arena<Expr>,
    /// The tensors this kernel is for.
    #[serde(default)]
    pub rank: RankClass,
    /// The host program, over `Const`, `Bool`, `Hyper`, `Step`, `Scalar` and `Reduced` leaves,
    /// run in f64.
    pub host: Arena<Expr>,
    /// New values of scalar states, taken after the last stage (they may read every reduction).
    pub scalar_updates: Vec<ScalarUpdate>,
    /// The reductions; `Expr::Reduced` indexes this list.
    pub reductions: Vec<ReductionDecl>,
    /// The passes over the data, in order (at least one).
    pub stages: Vec<Stage>,
    /// The host's vector program: `[rows]`/`[cols]` values and state updates (matrix kernels;
    /// empty otherwise).
    #[serde(default, skip_serializing_if = "VectorProgram::is_empty")]
    pub vectors: VectorProgram,
    /// For a variant (`crate::variant`): the value each condition on hypers has in it; empty
    /// for a kernel that keeps every such condition as a select.
    #[serde(default)]
    pub variant: Vec<ConditionValue>,
    /// How each buffer is stored ([`crate::storage`]); f32 everywhere by default.
    #[serde(default, skip_serializing_if = "Storage::is_f32")]
    pub storage: Storage,
}

impl Stage {
    /// Whether this stage's body loads `slot`.
    pub fn loads(&self, slot: Slot) -> bool {
        self.body
            .iter()
            .any(|(_, e)| matches!(e, Expr::Load(s) if *s == slot))
    }

    /// Whether this stage stores `slot`.
    pub fn stores_slot(&self, slot: Slot) -> bool {
        self.stores.iter().any(|s| s.slot == slot)
    }
}

/// What the host program yields for one step of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct HostValues {
    /// The uniform arguments of each stage, in f64 (a backend rounds them to f32). Those of a
    /// stage are meaningful once every reduction of the earlier stages was given.
    pub uniforms: Vec<Vec<f64>>,
    /// The scalar states after the step.
    pub scalars: Vec<f64>,
    /// The inputs of the vector program ([`VectorProgram::inputs`]), in f64.
    pub inputs: Vec<f64>,
}

/// A kernel that does not hold together (a corrupt or hand-edited artifact).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid kernel `{rule}`: {reason}")]
pub struct KernelError {
    /// The rule's name.
    pub rule: String,
    /// What is wrong.
    pub reason: String,
}

impl Kernel {
    /// The buffers in launch order: `p`, `g`, then each state, with how any stage uses them.
    pub fn buffers(&self) -> Vec<BufferUse> {
        self.slots()
            .map(|slot| BufferUse {
                slot,
                read: self.stages.iter().any(|st| st.loads(slot)),
                written: self.stages.iter().any(|st| st.stores_slot(slot)),
            })
            .collect()
    }

    /// The buffers in launch order with how stage `stage` uses them (none if out of range).
    pub fn stage_buffers(&self, stage: usize) -> Vec<BufferUse> {
        let st = self.stages.get(stage);
        self.slots()
            .map(|slot| BufferUse {
                slot,
                read: st.is_some_and(|st| st.loads(slot)),
                written: st.is_some_and(|st| st.stores_slot(slot)),
            })
            .collect()
    }

    fn slots(&self) -> impl Iterator<Item = Slot> {
        [Slot::Param, Slot::Grad]
            .into_iter()
            .chain((0..self.states.len()).map(|i| Slot::State(StateId::new(i))))
    }

    /// Bytes moved per element by stage `stage`: the bytes of one value of each buffer it reads
    /// and of each it writes, in the buffer's storage dtype ([`Kernel::storage`]; 4 for f32, 2
    /// for bf16 and f16).
    pub fn stage_bytes_per_element(&self, stage: usize) -> usize {
        self.stage_buffers(stage)
            .iter()
            .map(|b| self.value_bytes(b.slot) * (b.read as usize + b.written as usize))
            .sum()
    }

    /// The bytes of one stored value of buffer `slot` (int8's block scales rounded away).
    pub fn value_bytes(&self, slot: Slot) -> usize {
        self.storage.dtype(slot).bytes_per_value() as usize
    }

    /// Bytes moved per element by the whole step: the sum over the stages.
    pub fn bytes_per_element(&self) -> usize {
        (0..self.stages.len())
            .map(|i| self.stage_bytes_per_element(i))
            .sum()
    }

    /// The name of a slot in this kernel.
    pub fn slot_name(&self, slot: Slot) -> &str {
        match slot {
            Slot::Param => "p",
            Slot::Grad => "g",
            Slot::State(s) => self
                .states
                .get(s.index())
                .map(|d| d.name.as_str())
                .unwrap_or("?"),
        }
    }

    /// The hypers' default values, in order.
    pub fn default_hypers(&self) -> Vec<f64> {
        self.hypers.iter().map(|h| h.default).collect()
    }

    /// Evaluates the init program. Returns one value per node of [`Kernel::init`].
    pub fn eval_init(&self, hypers: &[f64]) -> Result<Vec<f64>, KernelError> {
        let mut values = Vec::new();
        eval_arena(&self.init, &mut values, |e| match *e {
            Expr::Hyper(h) => hypers.get(h.index()).copied().ok_or(()),
            _ => Err(()),
        })
        .map_err(|e| self.error(format!("init program: {e:?}")))?;
        Ok(values)
    }

    /// Initial values of the scalar states.
    pub fn initial_scalars(&self, hypers: &[f64]) -> Result<Vec<f64>, KernelError> {
        let values = self.eval_init(hypers)?;
        Ok(self
            .scalars
            .iter()
            .map(|s| values[s.init.index()])
            .collect())
    }

    /// Runs the host program for step `t` (starting at 1) with the scalar states as they were
    /// before the step and the finalized reductions known so far, one per
    /// [`Kernel::reductions`] (`NaN` for those not yet computed; a kernel without reductions
    /// takes `&[]`).
    ///
    /// The uniforms of stage `k` are exact once `reduced` holds every reduction of the stages
    /// before `k`: a runtime calls this before each stage (or once, for a one-stage kernel).
    /// The scalar updates are exact once every reduction is known.
    pub fn eval_host(
        &self,
        hypers: &[f64],
        t: u64,
        scalars: &[f64],
        reduced: &[f64],
    ) -> Result<HostValues, KernelError> {
        self.eval_host_for(hypers, t, scalars, reduced, None)
    }

    /// Like [`Kernel::eval_host`], for a tensor of matrix view `view`: the leaves
    /// [`crate::matrix::ROWS`] and [`crate::matrix::COLS`] (matrix kernels only) are its dim 0
    /// and the product of its other dims.
    pub fn eval_host_for(
        &self,
        hypers: &[f64],
        t: u64,
        scalars: &[f64],
        reduced: &[f64],
        view: Option<crate::matrix::WideView>,
    ) -> Result<HostValues, KernelError> {
        if reduced.len() != self.reductions.len() {
            return Err(self.error(format!(
                "host program: {} reductions given, the kernel has {}",
                reduced.len(),
                self.reductions.len()
            )));
        }
        let mut values = Vec::new();
        eval_arena(&self.host, &mut values, |e| match *e {
            Expr::Hyper(crate::matrix::ROWS) => view.map(|v| v.rows as f64).ok_or(()),
            Expr::Hyper(crate::matrix::COLS) => view.map(|v| v.cols as f64).ok_or(()),
            Expr::Hyper(h) => hypers.get(h.index()).copied().ok_or(()),
            Expr::Step => Ok(t as f64),
            Expr::Scalar(s) => scalars.get(s.index()).copied().ok_or(()),
            Expr::Reduced(r) => reduced.get(r.index()).copied().ok_or(()),
            _ => Err(()),
        })
        .map_err(|e| self.error(format!("host program: {e:?}")))?;
        let mut new_scalars = scalars.to_vec();
        for u in &self.scalar_updates {
            new_scalars[u.scalar.index()] = values[u.value.index()];
        }
        Ok(HostValues {
            uniforms: self
                .stages
                .iter()
                .map(|st| st.uniforms.iter().map(|h| values[h.index()]).collect())
                .collect(),
            scalars: new_scalars,
            inputs: self
                .vectors
                .inputs
                .iter()
                .map(|h| values[h.index()])
                .collect(),
        })
    }

    /// The reductions stage `stage` produces, in [`Kernel::reductions`] order.
    pub fn stage_reductions(&self, stage: usize) -> Vec<ReductionId> {
        self.reductions
            .iter()
            .enumerate()
            .filter(|(_, r)| r.stage == stage)
            .map(|(i, _)| ReductionId::new(i))
            .collect()
    }

    /// The stage of a one-stage kernel without reductions (what optc had before stages), or an
    /// error naming what the kernel has, for code that handles only that form.
    pub fn only_stage(&self) -> Result<&Stage, KernelError> {
        match self.stages.as_slice() {
            [st] if self.reductions.is_empty() => Ok(st),
            _ => Err(self.error(format!(
                "this backend handles one-stage kernels without reductions; this one has {} \
                 stages and {} reductions",
                self.stages.len(),
                self.reductions.len()
            ))),
        }
    }

    /// The reduction that clipping by global norm added, if the kernel clips: the Step-scope sum
    /// of `g * g`, whose square root is the step's total gradient norm.
    pub fn grad_norm_reduction(&self) -> Option<ReductionId> {
        self.reductions
            .iter()
            .position(|r| r.name == crate::reduce::GRAD_NORM_REDUCTION && r.scope == Scope::Step)
            .map(ReductionId::new)
    }

    /// The reduction that loss scaling added, if the kernel unscales its gradients: the
    /// Step-scope sum of `g * 0` ([`crate::reduce::NONFINITE_REDUCTION`]), not zero when some
    /// gradient element of the step is an inf or a NaN. [`Kernel::validate`] checks that no
    /// stage up to the one producing it stores a buffer or runs a matrix program, so that a
    /// runtime that stops there has written nothing.
    pub fn nonfinite_reduction(&self) -> Option<ReductionId> {
        self.reductions
            .iter()
            .position(|r| r.name == crate::reduce::NONFINITE_REDUCTION && r.scope == Scope::Step)
            .map(ReductionId::new)
    }

    /// The first stage that writes a buffer (a store or a matrix program) although it is not
    /// after the stage producing the loss-scale check ([`Kernel::nonfinite_reduction`]); `None`
    /// when the kernel has no check or writes only after it, as a skipped step needs.
    pub fn writes_before_check(&self) -> Option<usize> {
        let check = self.reductions.get(self.nonfinite_reduction()?.index())?;
        let writes = |k: &Stage| !k.stores.is_empty() || k.matrix.is_some();
        self.stages.iter().take(check.stage + 1).position(writes)
    }

    /// Whether some reduction has Step scope (the runtime must finish stage 0 on every tensor
    /// of the step before it can go on).
    pub fn has_step_reduction(&self) -> bool {
        self.reductions.iter().any(|r| r.scope == Scope::Step)
    }

    fn error(&self, reason: String) -> KernelError {
        KernelError {
            rule: self.rule.clone(),
            reason,
        }
    }

    /// Checks that every handle and id is in range, operands precede their users, each program
    /// uses only the leaves it may, each buffer is stored at most once (by one stage), each
    /// reduction is produced exactly once by its stage, and a stage's uniforms read only
    /// reductions of earlier stages. Backends assume a valid kernel; the runtime validates every
    /// kernel it loads.
    pub fn validate(&self) -> Result<(), KernelError> {
        let states = self.states.len();
        let scalars = self.scalars.len();
        let hypers = self.hypers.len();
        let check = |arena: &Arena<Expr>, what: &str, leaf_ok: &dyn Fn(&Expr) -> bool| {
            for (h, e) in arena.iter() {
                if e.operands().any(|o| o.index() >= h.index()) {
                    return Err(self.error(format!("{what}: node {} uses a later node", h.index())));
                }
                let ok = match e {
                    Expr::Unary(..) | Expr::Binary(..) | Expr::Select(..) => true,
                    leaf => leaf_ok(leaf),
                };
                if !ok {
                    return Err(self.error(format!(
                        "{what}: node {} is not allowed here: {e:?}",
                        h.index()
                    )));
                }
            }
            Ok(())
        };
        let hyper_ok = |e: &Expr| matches!(e, Expr::Hyper(h) if h.index() < hypers);
        check(&self.init, "init", &|e| {
            matches!(e, Expr::Const(_) | Expr::Bool(_)) || hyper_ok(e)
        })?;
        let scalar_scope = |r: &crate::ReductionId| {
            self.reductions
                .get(r.index())
                .is_some_and(|d| matches!(d.scope, Scope::Tensor | Scope::Step))
        };
        let matrix_kernel = self.rank == RankClass::Matrix;
        check(&self.host, "host", &|e| match e {
            Expr::Const(_) | Expr::Bool(_) | Expr::Step => true,
            Expr::Hyper(crate::matrix::ROWS | crate::matrix::COLS) => matrix_kernel,
            Expr::Scalar(s) => s.index() < scalars,
            // Row and Col results are vectors: the vector program reads them.
            Expr::Reduced(r) => scalar_scope(r),
            other => hyper_ok(other),
        })?;
        if self.stages.is_empty() {
            return Err(self.error("the kernel has no stage".into()));
        }
        for r in &self.reductions {
            if r.stage >= self.stages.len() {
                return Err(self.error(format!(
                    "reduction `{}` names stage {}, the kernel has {}",
                    r.name,
                    r.stage,
                    self.stages.len()
                )));
            }
            let matrix_only = matches!(r.scope, Scope::Row | Scope::Col);
            if matrix_only && self.rank != RankClass::Matrix {
                return Err(self.error(format!(
                    "reduction `{}` has {} scope in a kernel that is not for matrices",
                    r.name,
                    r.scope.name()
                )));
            }
        }
        if self.rank != RankClass::Matrix && self.states.iter().any(|s| s.shape != StateShape::Full)
        {
            return Err(self.error("a row or column state in a kernel not for matrices".into()));
        }
        if self.rank != RankClass::Matrix && !self.vectors.is_empty() {
            return Err(self.error("a vector program in a kernel not for matrices".into()));
        }
        // The latest stage whose reductions each host node reads (`None`: none).
        let mut after: Vec<Option<usize>> = Vec::with_capacity(self.host.len());
        for (_, e) in self.host.iter() {
            let own = match e {
                Expr::Reduced(r) => Some(self.reductions[r.index()].stage),
                _ => None,
            };
            let v = e.operands().map(|o| after[o.index()]).fold(own, Ord::max);
            after.push(v);
        }
        let in_range = |h: Handle<Expr>, a: &Arena<Expr>| h.index() < a.len();
        let mut stored = Vec::new();
        for (k, st) in self.stages.iter().enumerate() {
            let nu = st.uniforms.len();
            if st
                .body
                .iter()
                .any(|(_, e)| matches!(e, Expr::Unary(crate::op::UnaryOp::RoundBf16, _)))
            {
                return Err(self.error(format!("stage {k} body: round_bf16 is a host-only op")));
            }
            check(&st.body, &format!("stage {k} body"), &|e| match e {
                Expr::Const(_) | Expr::Bool(_) => true,
                Expr::Uniform(u) => u.index() < nu,
                Expr::Vector(_) => true,
                Expr::Load(Slot::State(s)) => s.index() < states,
                Expr::Load(_) => true,
                _ => false,
            })?;
            for h in &st.uniforms {
                if !in_range(*h, &self.host) {
                    return Err(self.error(format!(
                        "a uniform of stage {k} refers outside the host program"
                    )));
                }
                if after[h.index()].is_some_and(|s| s >= k) {
                    return Err(self.error(format!(
                        "a uniform of stage {k} reads a reduction of stage {k} or later"
                    )));
                }
            }
            for s in &st.stores {
                if !in_range(s.value, &st.body) {
                    return Err(self.error(format!("a store of stage {k} refers outside its body")));
                }
                if s.slot == Slot::Grad {
                    return Err(self.error("the gradient is read-only".into()));
                }
                if let Slot::State(id) = s.slot {
                    if id.index() >= states {
                        return Err(self.error("a store names an unknown state".into()));
                    }
                }
                if stored.contains(&s.slot) {
                    return Err(self.error(format!(
                        "buffer `{}` is stored twice",
                        self.slot_name(s.slot)
                    )));
                }
                stored.push(s.slot);
            }
            for out in &st.reduce {
                let decl = self.reductions.get(out.reduction.index());
                if decl.is_none_or(|d| d.stage != k) || !in_range(out.value, &st.body) {
                    return Err(self.error(format!("a reduce output of stage {k} is out of range")));
                }
            }
        }
        for (k, st) in self.stages.iter().enumerate() {
            let Some(mp) = &st.matrix else { continue };
            if self.rank != RankClass::Matrix {
                return Err(self.error(format!(
                    "stage {k} has a matrix program in a kernel that is not for matrices"
                )));
            }
            mp.shapes(st.uniforms.len())
                .map_err(|e| self.error(format!("stage {k}: {e}")))?;
            let slot_ok = |s: Slot| match s {
                Slot::State(id) => id.index() < states,
                _ => true,
            };
            if !mp.reads().into_iter().all(slot_ok) {
                return Err(self.error(format!(
                    "stage {k}: a matrix program reads an unknown state"
                )));
            }
            for o in &mp.outputs {
                if !slot_ok(o.slot) || stored.contains(&o.slot) {
                    return Err(self.error(format!(
                        "stage {k}: a matrix output writes a buffer that is unknown or stored twice"
                    )));
                }
                stored.push(o.slot);
            }
        }
        for (i, r) in self.reductions.iter().enumerate() {
            let outputs = self.stages[r.stage]
                .reduce
                .iter()
                .filter(|o| o.reduction.index() == i)
                .count();
            if outputs != 1 {
                return Err(self.error(format!(
                    "reduction `{}` has {outputs} outputs in stage {}, not 1",
                    r.name, r.stage
                )));
            }
        }
        for u in &self.scalar_updates {
            if u.scalar.index() >= scalars || !in_range(u.value, &self.host) {
                return Err(self.error("a scalar update is out of range".into()));
            }
        }
        for s in &self.states {
            if let Init::Value(h) = s.init {
                if !in_range(h, &self.init) {
                    return Err(self.error(format!("state `{}` has an invalid init", s.name)));
                }
            }
        }
        if !self.scalars.iter().all(|s| in_range(s.init, &self.init)) {
            return Err(self.error("a scalar init is out of range".into()));
        }
        self.storage.check(self).map_err(|e| self.error(e))?;
        self.validate_vectors()
    }

    /// The uniform id of position `i`.
    pub fn uniform(i: usize) -> UniformId {
        UniformId::new(i)
    }
}

impl fmt::Display for Kernel {
    /// The readable text form printed by `optc compile --emit ir`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags: Vec<String> = self
            .flags
            .iter()
            .map(|fl| format!("{}={}", fl.name, fl.value))
            .collect();
        let rank = match self.rank {
            RankClass::Any => "",
            RankClass::Matrix => " for matrices",
            RankClass::Vector => " for vectors",
        };
        let variant = if self.variant.is_empty() {
            String::new()
        } else {
            let v: Vec<String> = self
                .variant
                .iter()
                .map(|c| format!("({}) = {}", c.text, c.value))
                .collect();
            format!(" variant {{{}}}", v.join(", "))
        };
        writeln!(
            f,
            "kernel {} [{}]{rank}{variant}",
            self.rule,
            flags.join(", ")
        )?;
        for h in &self.hypers {
            writeln!(f, "  hyper {} = {}", h.name, fmt_num(h.default))?;
        }
        if !self.storage.is_f32() {
            let states: Vec<String> = (0..self.states.len())
                .map(|i| {
                    let slot = Slot::State(crate::expr::StateId::new(i));
                    format!("{} {}", self.slot_name(slot), self.storage.dtype(slot))
                })
                .collect();
            let rounding = match self.storage.stochastic_seed() {
                Some(seed) => format!("; p rounds stochastically (seed {seed})"),
                None => String::new(),
            };
            writeln!(
                f,
                "  storage p {}, g {}{}{}{rounding}",
                self.storage.param,
                self.storage.grad,
                if states.is_empty() { "" } else { ", " },
                states.join(", ")
            )?;
        }
        for s in &self.states {
            let shape = match s.shape {
                StateShape::Full => "",
                StateShape::Rows => " [rows]",
                StateShape::Cols => " [cols]",
            };
            match s.init {
                Init::Param => writeln!(f, "  state {}{shape} = p", s.name)?,
                Init::Value(h) => writeln!(f, "  state {}{shape} = init%{}", s.name, h.index())?,
            }
        }
        for s in &self.scalars {
            writeln!(f, "  scalar {} = init%{}", s.name, s.init.index())?;
        }
        for (i, r) in self.reductions.iter().enumerate() {
            writeln!(
                f,
                "  reduction r{i} = {} over {}, stage {}: {}",
                r.op.name(),
                r.scope.name(),
                r.stage,
                r.name
            )?;
        }
        if !self.init.is_empty() {
            writeln!(f, "init (f64, once per tensor):")?;
            self.write_arena(f, &self.init)?;
        }
        writeln!(f, "host (f64, once per step):")?;
        self.write_arena(f, &self.host)?;
        for u in &self.scalar_updates {
            let name = self
                .scalars
                .get(u.scalar.index())
                .map(|s| s.name.as_str())
                .unwrap_or("?");
            writeln!(f, "  scalar {name} <- %{}", u.value.index())?;
        }
        if !self.vectors.is_empty() {
            let shapes = self.vector_shapes().unwrap_or_default();
            writeln!(
                f,
                "vectors (f64, once per step, per row or column; stores rounded to f32):"
            )?;
            for (i, h) in self.vectors.inputs.iter().enumerate() {
                writeln!(f, "  input u{i} = %{}", h.index())?;
            }
            self.write_arena_with(f, &self.vectors.nodes, |i| match shapes.get(i) {
                Some(crate::vector::VecShape::Rows) => " [rows]",
                Some(crate::vector::VecShape::Cols) => " [cols]",
                _ => "",
            })?;
            for s in &self.vectors.stores {
                writeln!(
                    f,
                    "  store {} <- %{} (after the last stage)",
                    self.slot_name(s.slot),
                    s.value.index()
                )?;
            }
        }
        for (k, st) in self.stages.iter().enumerate() {
            let names = |pick: fn(&BufferUse) -> bool| {
                let v: Vec<&str> = self
                    .stage_buffers(k)
                    .iter()
                    .filter(|b| pick(b))
                    .map(|b| self.slot_name(b.slot))
                    .collect();
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(" ")
                }
            };
            writeln!(
                f,
                "stage {k} (f32, per element; reads {}; writes {}; {} bytes/element):",
                names(|b| b.read),
                names(|b| b.written),
                self.stage_bytes_per_element(k)
            )?;
            for (i, h) in st.uniforms.iter().enumerate() {
                writeln!(f, "  uniform u{i} = %{}", h.index())?;
            }
            for (i, h) in self.vectors.stage(k).iter().enumerate() {
                writeln!(f, "  vector v{i} = vectors %{}", h.index())?;
            }
            if let Some(mp) = &st.matrix {
                self.write_matrix(f, mp)?;
            }
            self.write_arena(f, &st.body)?;
            for s in &st.stores {
                writeln!(
                    f,
                    "  store {} <- %{}",
                    self.slot_name(s.slot),
                    s.value.index()
                )?;
            }
            for r in &st.reduce {
                writeln!(
                    f,
                    "  reduce r{} <- %{}",
                    r.reduction.index(),
                    r.value.index()
                )?;
            }
        }
        writeln!(
            f,
            "total: {} bytes/element in {} stage{}",
            self.bytes_per_element(),
            self.stages.len(),
            if self.stages.len() == 1 { "" } else { "s" }
        )?;
        Ok(())
    }
}

impl Kernel {
    fn write_matrix(&self, f: &mut fmt::Formatter<'_>, mp: &MatrixProgram) -> fmt::Result {
        let shapes = mp.shapes(usize::MAX).unwrap_or_default();
        writeln!(
            f,
            "  matrix program (f32, once per tensor, before the per-element pass):"
        )?;
        for (i, e) in mp.nodes.iter().enumerate() {
            let coef = |c: Coef| match c {
                Coef::Const(x) => fmt_num(x),
                Coef::Uniform(u) => format!("u{}", u.index()),
            };
            let text = match *e {
                MatExpr::Buffer(s) => format!("wide {}", self.slot_name(s)),
                MatExpr::Transpose(a) => format!("transpose @{a}"),
                MatExpr::MatMul(a, b) => format!("matmul @{a}, @{b}"),
                MatExpr::Scale(c, a) => format!("scale {}, @{a}", coef(c)),
                MatExpr::Add(a, b) => format!("add @{a}, @{b}"),
                MatExpr::Sub(a, b) => format!("sub @{a}, @{b}"),
                MatExpr::Neg(a) => format!("neg @{a}"),
                MatExpr::RoundBf16(a) => format!("round_bf16 @{a}"),
            };
            let shape = shapes
                .get(i)
                .map(|(r, c)| format!("{}×{}", r.name(), c.name()))
                .unwrap_or_default();
            writeln!(f, "  @{i} = {text}  ({shape})")?;
        }
        for o in &mp.outputs {
            writeln!(f, "  write {} <- @{}", self.slot_name(o.slot), o.node)?;
        }
        Ok(())
    }

    fn write_arena(&self, f: &mut fmt::Formatter<'_>, arena: &Arena<Expr>) -> fmt::Result {
        self.write_arena_with(f, arena, |_| "")
    }

    fn write_arena_with(
        &self,
        f: &mut fmt::Formatter<'_>,
        arena: &Arena<Expr>,
        suffix: impl Fn(usize) -> &'static str,
    ) -> fmt::Result {
        for (h, e) in arena.iter() {
            let mut line = String::new();
            let _ = write!(line, "  %{} = ", h.index());
            let _ = match *e {
                Expr::Const(c) => write!(line, "const {}", fmt_num(c)),
                Expr::Bool(b) => write!(line, "const {b}"),
                Expr::Hyper(crate::matrix::ROWS) => write!(line, "rows"),
                Expr::Hyper(crate::matrix::COLS) => write!(line, "cols"),
                Expr::Hyper(id) => write!(
                    line,
                    "hyper {}",
                    self.hypers
                        .get(id.index())
                        .map(|h| h.name.as_str())
                        .unwrap_or("?")
                ),
                Expr::Flag(id) => write!(line, "flag #{}", id.index()),
                Expr::Step => write!(line, "step"),
                Expr::Scalar(id) => write!(
                    line,
                    "scalar {}",
                    self.scalars
                        .get(id.index())
                        .map(|s| s.name.as_str())
                        .unwrap_or("?")
                ),
                Expr::Uniform(id) => write!(line, "uniform u{}", id.index()),
                Expr::Reduced(id) => write!(line, "reduced r{}", id.index()),
                Expr::Load(slot) => write!(line, "load {}", self.slot_name(slot)),
                Expr::Vector(id) => write!(line, "vector v{}", id.index()),
                Expr::VecMean(a) => write!(line, "mean %{}", a.index()),
                Expr::Unary(op, a) => write!(line, "{op} %{}", a.index()),
                Expr::Binary(op, a, b) => write!(line, "{op} %{}, %{}", a.index(), b.index()),
                Expr::Select(c, a, b) => {
                    write!(
                        line,
                        "select %{}, %{}, %{}",
                        c.index(),
                        a.index(),
                        b.index()
                    )
                }
            };
            line.push_str(suffix(h.index()));
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Formats a number the way IR text and generated code show it: the shortest text that reads back
/// to the same f64.
pub fn fmt_num(x: f64) -> String {
    if x.is_finite() && x == x.trunc() && x.abs() < 1e15 {
        format!("{x:.1}")
    } else {
        format!("{x:?}")
    }
}

impl<E: fmt::Debug> fmt::Display for EvalError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}
