//! The fused kernel: what the compiler hands to every backend and what an artifact stores.
//!
//! A [`Kernel`] is one optimizer rule specialized for one set of flags, split in two:
//! - the **host program**, a DAG over hypers, `t` and scalar states that runs once per step per
//!   tensor in f64 and yields the kernel's uniform arguments and the new scalar-state values;
//! - the **body**, a DAG that runs once per element in f32 over the loaded buffer elements and the
//!   uniforms, and the **stores**, one per written buffer.
//!
//! Each buffer is loaded at most once and stored at most once per element. Buffers are passed to
//! a kernel in the order of [`Kernel::buffers`].

use crate::arena::{Arena, Handle};
use crate::eval::{eval_arena, EvalError};
use crate::expr::{Expr, ScalarId, Slot, StateId, UniformId};
use serde::{Deserialize, Serialize};
use std::fmt::{self, Write as _};

/// The version of the serialized kernel and artifact format. Bumped on every incompatible change.
pub const FORMAT_VERSION: u32 = 1;

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

/// A per-element state buffer, with the parameter's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateDecl {
    /// Its name in the rule.
    pub name: String,
    /// Its initial value.
    pub init: Init,
}

/// A scalar state: one number per parameter tensor, updated once per step by the host program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalarDecl {
    /// Its name in the rule.
    pub name: String,
    /// A node of [`Kernel::init`].
    pub init: Handle<Expr>,
}

/// A store of a body value into a buffer.
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

/// How a kernel uses a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferUse {
    /// The buffer.
    pub slot: Slot,
    /// Whether the body loads it.
    pub read: bool,
    /// Whether the body stores it.
    pub written: bool,
}

/// One optimizer rule, specialized for one flag set, fused into one per-element kernel.
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
    /// The host program, over `Const`, `Bool`, `Hyper`, `Step` and `Scalar` leaves, run in f64.
    pub host: Arena<Expr>,
    /// The kernel's uniform arguments: `Expr::Uniform(i)` in the body is `host[uniforms[i]]`,
    /// rounded to f32. Boolean uniforms are passed as `1.0` or `0.0`.
    pub uniforms: Vec<Handle<Expr>>,
    /// New values of scalar states, taken after the uniforms are computed.
    pub scalar_updates: Vec<ScalarUpdate>,
    /// The per-element body over `Const`, `Bool`, `Uniform` and `Load` leaves, run in f32.
    pub body: Arena<Expr>,
    /// One store per written buffer.
    pub stores: Vec<Store>,
}

/// What the host program yields for one step of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct HostValues {
    /// The uniform arguments, in f64 (a backend rounds them to f32).
    pub uniforms: Vec<f64>,
    /// The scalar states after the step.
    pub scalars: Vec<f64>,
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
    /// The buffers in launch order: `p`, `g`, then each state, with how the body uses them.
    pub fn buffers(&self) -> Vec<BufferUse> {
        let mut slots = vec![Slot::Param, Slot::Grad];
        slots.extend((0..self.states.len()).map(|i| Slot::State(StateId::new(i))));
        slots
            .into_iter()
            .map(|slot| BufferUse {
                slot,
                read: self
                    .body
                    .iter()
                    .any(|(_, e)| matches!(e, Expr::Load(s) if *s == slot)),
                written: self.stores.iter().any(|s| s.slot == slot),
            })
            .collect()
    }

    /// Bytes moved per element in fp32: 4 for each buffer read and 4 for each written.
    pub fn bytes_per_element(&self) -> usize {
        self.buffers()
            .iter()
            .map(|b| 4 * (b.read as usize + b.written as usize))
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
    /// before the step.
    pub fn eval_host(
        &self,
        hypers: &[f64],
        t: u64,
        scalars: &[f64],
    ) -> Result<HostValues, KernelError> {
        let mut values = Vec::new();
        eval_arena(&self.host, &mut values, |e| match *e {
            Expr::Hyper(h) => hypers.get(h.index()).copied().ok_or(()),
            Expr::Step => Ok(t as f64),
            Expr::Scalar(s) => scalars.get(s.index()).copied().ok_or(()),
            _ => Err(()),
        })
        .map_err(|e| self.error(format!("host program: {e:?}")))?;
        let mut new_scalars = scalars.to_vec();
        for u in &self.scalar_updates {
            new_scalars[u.scalar.index()] = values[u.value.index()];
        }
        Ok(HostValues {
            uniforms: self.uniforms.iter().map(|h| values[h.index()]).collect(),
            scalars: new_scalars,
        })
    }

    fn error(&self, reason: String) -> KernelError {
        KernelError {
            rule: self.rule.clone(),
            reason,
        }
    }

    /// Checks that every handle and id is in range, operands precede their users, each program
    /// uses only the leaves it may, and each buffer is stored at most once. Backends assume a valid
    /// kernel; the runtime validates every kernel it loads.
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
        check(&self.host, "host", &|e| match e {
            Expr::Const(_) | Expr::Bool(_) | Expr::Step => true,
            Expr::Scalar(s) => s.index() < scalars,
            other => hyper_ok(other),
        })?;
        let nu = self.uniforms.len();
        check(&self.body, "body", &|e| match e {
            Expr::Const(_) | Expr::Bool(_) => true,
            Expr::Uniform(u) => u.index() < nu,
            Expr::Load(Slot::State(s)) => s.index() < states,
            Expr::Load(_) => true,
            _ => false,
        })?;
        let in_range = |h: Handle<Expr>, a: &Arena<Expr>| h.index() < a.len();
        if !self.uniforms.iter().all(|h| in_range(*h, &self.host)) {
            return Err(self.error("a uniform refers outside the host program".into()));
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
        let mut seen = Vec::new();
        for s in &self.stores {
            if !in_range(s.value, &self.body) {
                return Err(self.error("a store refers outside the body".into()));
            }
            if s.slot == Slot::Grad {
                return Err(self.error("the gradient is read-only".into()));
            }
            if let Slot::State(id) = s.slot {
                if id.index() >= states {
                    return Err(self.error("a store names an unknown state".into()));
                }
            }
            if seen.contains(&s.slot) {
                return Err(self.error(format!(
                    "buffer `{}` is stored twice",
                    self.slot_name(s.slot)
                )));
            }
            seen.push(s.slot);
        }
        Ok(())
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
        writeln!(f, "kernel {} [{}]", self.rule, flags.join(", "))?;
        for h in &self.hypers {
            writeln!(f, "  hyper {} = {}", h.name, fmt_num(h.default))?;
        }
        for s in &self.states {
            match s.init {
                Init::Param => writeln!(f, "  state {} = p", s.name)?,
                Init::Value(h) => writeln!(f, "  state {} = init%{}", s.name, h.index())?,
            }
        }
        for s in &self.scalars {
            writeln!(f, "  scalar {} = init%{}", s.name, s.init.index())?;
        }
        if !self.init.is_empty() {
            writeln!(f, "init (f64, once per tensor):")?;
            self.write_arena(f, &self.init)?;
        }
        writeln!(f, "host (f64, once per step):")?;
        self.write_arena(f, &self.host)?;
        for (i, h) in self.uniforms.iter().enumerate() {
            writeln!(f, "  uniform u{i} = %{}", h.index())?;
        }
        for u in &self.scalar_updates {
            let name = self
                .scalars
                .get(u.scalar.index())
                .map(|s| s.name.as_str())
                .unwrap_or("?");
            writeln!(f, "  scalar {name} <- %{}", u.value.index())?;
        }
        writeln!(
            f,
            "body (f32, per element; {} bytes/element):",
            self.bytes_per_element()
        )?;
        self.write_arena(f, &self.body)?;
        for s in &self.stores {
            writeln!(
                f,
                "  store {} <- %{}",
                self.slot_name(s.slot),
                s.value.index()
            )?;
        }
        Ok(())
    }
}

impl Kernel {
    fn write_arena(&self, f: &mut fmt::Formatter<'_>, arena: &Arena<Expr>) -> fmt::Result {
        for (h, e) in arena.iter() {
            let mut line = String::new();
            let _ = write!(line, "  %{} = ", h.index());
            let _ = match *e {
                Expr::Const(c) => write!(line, "const {}", fmt_num(c)),
                Expr::Bool(b) => write!(line, "const {b}"),
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
                Expr::Load(slot) => write!(line, "load {}", self.slot_name(slot)),
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
