//! Storage dtypes per buffer: the one place that says how each buffer of a kernel is kept in
//! memory, and the precision options an optimizer is built with (see `docs/dtypes.md`).
//!
//! The `.opt` math never changes. A kernel's [`Storage`] names the dtype of `p`, `g` and each
//! state; every backend widens a load exactly and narrows a store as [`Storage::narrow`] says
//! (round to nearest even, or stochastically for a 16-bit `p`), with the conversions of
//! [`crate::dtype`]. [`Precision`] is what a user picks (`--param-dtype`, `--state-dtype`,
//! `--master-weights`, `--stochastic-rounding`); [`Precision::apply`] turns a kernel built for
//! f32 into one with that storage, adding the f32 master copy of the parameter when asked: one
//! rewrite of the IR that every backend shares.

use crate::dtype::{self, Dtype};
use crate::expr::{Expr, Slot, StateId};
use crate::kernel::{Init, Kernel, KernelError, StateDecl, StateShape, Store};
use crate::matrix::MatExpr;
use serde::{Deserialize, Serialize};

/// The name of the f32 master copy of the parameter that [`Precision::apply`] adds.
pub const MASTER_STATE: &str = "master";

/// How a store to the parameter narrows an f32 value to a 16-bit dtype.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Round to nearest, ties to even (every other store always rounds so).
    #[default]
    Nearest,
    /// Stochastic rounding with the random bits `sr_bits(sr_key(seed, t, tensor), element)`
    /// ([`crate::dtype::sr_key`], [`crate::dtype::sr_bits`]).
    Stochastic {
        /// The user's seed.
        seed: u64,
    },
}

/// The storage dtype of every buffer of a kernel. The default is f32 everywhere.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storage {
    /// The parameter's dtype (`f32`, `bf16` or `f16`).
    pub param: Dtype,
    /// The gradient's dtype (`f32`, `bf16` or `f16`).
    pub grad: Dtype,
    /// Each state's dtype, in [`Kernel::states`] order (`f32` or `bf16`); empty means f32 for
    /// every state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<Dtype>,
    /// How stores to the parameter round.
    #[serde(default)]
    pub rounding: Rounding,
}

impl Storage {
    /// Whether every buffer is f32 (the storage of a kernel built without precision options).
    pub fn is_f32(&self) -> bool {
        self.param == Dtype::F32
            && self.grad == Dtype::F32
            && self.states.iter().all(|&d| d == Dtype::F32)
            && self.rounding == Rounding::Nearest
    }

    /// The dtype of buffer `slot`.
    pub fn dtype(&self, slot: Slot) -> Dtype {
        match slot {
            Slot::Param => self.param,
            Slot::Grad => self.grad,
            Slot::State(s) => self.states.get(s.index()).copied().unwrap_or_default(),
        }
    }

    /// The seed of stochastic rounding, when stores to the parameter round so.
    pub fn stochastic_seed(&self) -> Option<u64> {
        match self.rounding {
            Rounding::Stochastic { seed } => Some(seed),
            Rounding::Nearest => None,
        }
    }

    /// The stochastic-rounding key of tensor `tensor` (its index in the optimizer) at step `t`:
    /// `sr_key(seed, t, tensor)` ([`crate::dtype::sr_key`]), or 0 without stochastic rounding.
    pub fn sr_key(&self, t: u64, tensor: u64) -> u32 {
        self.stochastic_seed()
            .map_or(0, |seed| dtype::sr_key(seed, t, tensor))
    }

    /// Whether a store to `slot` rounds stochastically.
    pub fn is_stochastic(&self, slot: Slot) -> bool {
        slot == Slot::Param && self.stochastic_seed().is_some()
    }

    /// The value a store of `x` to `slot` leaves in memory, widened back to f32: `x` itself for
    /// an f32 buffer, else `x` narrowed to the slot's dtype (round to nearest even, or
    /// stochastically with the random word `r` where [`Storage::is_stochastic`]) and widened.
    /// This is the definition every backend matches bit for bit (NaN stays a NaN).
    pub fn narrow(&self, slot: Slot, x: f32, r: u32) -> f32 {
        let d = self.dtype(slot);
        if !self.is_stochastic(slot) {
            return d.round(x);
        }
        match d {
            Dtype::Bf16 => dtype::widen_bf16(dtype::narrow_bf16_stochastic(x, r)),
            Dtype::F16 => dtype::widen_f16(dtype::narrow_f16_stochastic(x, r)),
            Dtype::F32 | Dtype::Int8 => x,
        }
    }

    /// Checks this storage against `kernel` (see [`Kernel::validate`]): one dtype per state at
    /// most, `p` and `g` in f32/bf16/f16, states in f32/bf16 and row, column and matrix-program
    /// states in f32, and stochastic rounding only for a 16-bit parameter.
    pub fn check(&self, kernel: &Kernel) -> Result<(), String> {
        let sixteen = |d: Dtype| matches!(d, Dtype::Bf16 | Dtype::F16);
        for (what, d) in [("p", self.param), ("g", self.grad)] {
            if d == Dtype::Int8 {
                return Err(format!(
                    "`{what}` cannot be stored as int8 (f32, bf16 or f16)"
                ));
            }
        }
        if !self.states.is_empty() && self.states.len() != kernel.states.len() {
            return Err(format!(
                "the storage names {} state dtypes, the kernel has {} states",
                self.states.len(),
                kernel.states.len()
            ));
        }
        let matrix_slots: Vec<Slot> = kernel
            .stages
            .iter()
            .filter_map(|st| st.matrix.as_ref())
            .flat_map(|mp| {
                mp.reads()
                    .into_iter()
                    .chain(mp.outputs.iter().map(|o| o.slot))
            })
            .collect();
        for (i, (decl, &d)) in kernel.states.iter().zip(&self.states).enumerate() {
            let slot = Slot::State(StateId::new(i));
            match d {
                Dtype::F32 => {}
                Dtype::Bf16 if decl.shape == StateShape::Full && !matrix_slots.contains(&slot) => {}
                Dtype::Bf16 => {
                    return Err(format!(
                        "state `{}` is a row, column or matrix-program state: it stays f32",
                        decl.name
                    ))
                }
                Dtype::F16 | Dtype::Int8 => {
                    return Err(format!(
                        "state `{}` cannot be stored as {d} (f32 or bf16)",
                        decl.name
                    ))
                }
            }
        }
        if self.stochastic_seed().is_some() && !sixteen(self.param) {
            return Err("stochastic rounding needs a 16-bit parameter (bf16 or f16)".into());
        }
        Ok(())
    }
}

/// The precision options an optimizer is built with: what `--param-dtype`, `--state-dtype`,
/// `--master-weights` and `--stochastic-rounding` choose. The default is f32 everywhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precision {
    /// The dtype of parameters and gradients (`f32`, `bf16` or `f16`).
    pub param: Dtype,
    /// The dtype of every per-element state (`f32` or `bf16`). Row and column states and the
    /// buffers of matrix programs stay f32, as does the master copy.
    pub state: Dtype,
    /// Keep an f32 master copy of a 16-bit parameter as a state (`master`), which the rule reads
    /// and writes in place of `p`; `p` is written as the master rounded to nearest, in the same
    /// pass.
    pub master_weights: bool,
    /// Round stores to a 16-bit parameter without a master stochastically, with this seed.
    pub stochastic_rounding: Option<u64>,
}

impl Precision {
    /// Whether these are the default options (nothing to rewrite).
    pub fn is_default(&self) -> bool {
        *self == Precision::default()
    }

    /// Checks the combination: `p` in f32/bf16/f16, states in f32/bf16, master weights and
    /// stochastic rounding only with a 16-bit parameter, and not both.
    pub fn check(&self) -> Result<(), String> {
        let sixteen = matches!(self.param, Dtype::Bf16 | Dtype::F16);
        if self.param == Dtype::Int8 {
            return Err("--param-dtype must be f32, bf16 or f16".into());
        }
        if !matches!(self.state, Dtype::F32 | Dtype::Bf16) {
            return Err(format!(
                "--state-dtype {} is not available: states are f32 or bf16",
                self.state
            ));
        }
        if self.master_weights && !sixteen {
            return Err(
                "--master-weights needs a 16-bit parameter (--param-dtype bf16|f16)".into(),
            );
        }
        if self.stochastic_rounding.is_some() && !sixteen {
            return Err(
                "--stochastic-rounding needs a 16-bit parameter (--param-dtype bf16|f16)".into(),
            );
        }
        if self.stochastic_rounding.is_some() && self.master_weights {
            return Err(
                "--stochastic-rounding is for parameters without a master: with --master-weights \
                 the parameter is the master rounded to nearest"
                    .into(),
            );
        }
        Ok(())
    }

    /// `kernel` (built with f32 storage) with these options: each buffer's storage dtype set,
    /// and with [`Precision::master_weights`] a new f32 state [`MASTER_STATE`] initialized from
    /// the parameter, which every load of `p` (in bodies and matrix programs) now reads and every
    /// store of `p` now writes, with `p` stored from the same value (so `p` is the master
    /// rounded to nearest, every step). The result validates.
    pub fn apply(&self, kernel: &Kernel) -> Result<Kernel, KernelError> {
        let err = |reason: String| KernelError {
            rule: kernel.rule.clone(),
            reason,
        };
        self.check().map_err(err)?;
        if !kernel.storage.is_f32() {
            return Err(err(
                "the kernel already has a storage; apply precision once".into(),
            ));
        }
        let mut k = kernel.clone();
        if self.is_default() {
            return Ok(k);
        }
        let matrix_slots: Vec<Slot> = k
            .stages
            .iter()
            .filter_map(|st| st.matrix.as_ref())
            .flat_map(|mp| {
                mp.reads()
                    .into_iter()
                    .chain(mp.outputs.iter().map(|o| o.slot))
            })
            .collect();
        let mut states: Vec<Dtype> = k
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let slot = Slot::State(StateId::new(i));
                if s.shape == StateShape::Full && !matrix_slots.contains(&slot) {
                    self.state
                } else {
                    Dtype::F32
                }
            })
            .collect();
        if self.master_weights {
            if k.states.iter().any(|s| s.name == MASTER_STATE) {
                return Err(err(format!(
                    "the rule has a state named `{MASTER_STATE}`, the name of the master copy"
                )));
            }
            let master = Slot::State(StateId::new(k.states.len()));
            k.states.push(StateDecl {
                name: MASTER_STATE.into(),
                init: Init::Param,
                shape: StateShape::Full,
            });
            states.push(Dtype::F32);
            for st in &mut k.stages {
                for e in st.body.values_mut() {
                    if *e == Expr::Load(Slot::Param) {
                        *e = Expr::Load(master);
                    }
                }
                let mut stores = Vec::with_capacity(st.stores.len() + 1);
                for s in &st.stores {
                    if s.slot == Slot::Param {
                        stores.push(Store {
                            slot: master,
                            value: s.value,
                        });
                    }
                    stores.push(*s);
                }
                st.stores = stores;
                if let Some(mp) = &mut st.matrix {
                    for e in &mut mp.nodes {
                        if *e == MatExpr::Buffer(Slot::Param) {
                            *e = MatExpr::Buffer(master);
                        }
                    }
                }
            }
        }
        k.storage = Storage {
            param: self.param,
            grad: self.param,
            states,
            rounding: match self.stochastic_rounding {
                Some(seed) => Rounding::Stochastic { seed },
                None => Rounding::Nearest,
            },
        };
        k.validate()?;
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::Arena;
    use crate::kernel::{RankClass, Stage};

    /// `state m = 0; m = m + g; p = p - m` as a one-stage kernel.
    fn kernel() -> Kernel {
        let mut init = Arena::new();
        let zero = init.append(Expr::Const(0.0));
        let mut body = Arena::new();
        let p = body.append(Expr::Load(Slot::Param));
        let g = body.append(Expr::Load(Slot::Grad));
        let m = body.append(Expr::Load(Slot::State(StateId::new(0))));
        let m2 = body.append(Expr::Binary(crate::BinaryOp::Add, m, g));
        let p2 = body.append(Expr::Binary(crate::BinaryOp::Sub, p, m2));
        Kernel {
            rule: "toy".into(),
            flags: Vec::new(),
            hypers: Vec::new(),
            states: vec![StateDecl {
                name: "m".into(),
                init: Init::Value(zero),
                shape: StateShape::Full,
            }],
            scalars: Vec::new(),
            init,
            rank: RankClass::Any,
            host: Arena::new(),
            scalar_updates: Vec::new(),
            reductions: Vec::new(),
            stages: vec![Stage {
                uniforms: Vec::new(),
                body,
                stores: vec![
                    Store {
                        slot: Slot::State(StateId::new(0)),
                        value: m2,
                    },
                    Store {
                        slot: Slot::Param,
                        value: p2,
                    },
                ],
                reduce: Vec::new(),
                matrix: None,
            }],
            vectors: Default::default(),
            variant: Vec::new(),
            storage: Storage::default(),
        }
    }

    fn prec(param: Dtype, state: Dtype, master: bool, sr: Option<u64>) -> Precision {
        Precision {
            param,
            state,
            master_weights: master,
            stochastic_rounding: sr,
        }
    }

    #[test]
    fn master_weights_read_and_write_the_master_and_store_p_from_it() {
        let k = prec(Dtype::Bf16, Dtype::Bf16, true, None)
            .apply(&kernel())
            .expect("applies");
        let master = Slot::State(StateId::new(1));
        assert_eq!(k.states[1].name, MASTER_STATE);
        assert_eq!(k.states[1].init, Init::Param);
        let st = &k.stages[0];
        assert!(!st.loads(Slot::Param) && st.loads(master));
        let value = |slot| st.stores.iter().find(|s| s.slot == slot).map(|s| s.value);
        assert_eq!(value(Slot::Param), value(master));
        assert_eq!(k.storage.dtype(Slot::Param), Dtype::Bf16);
        assert_eq!(k.storage.dtype(Slot::Grad), Dtype::Bf16);
        assert_eq!(k.storage.dtype(Slot::State(StateId::new(0))), Dtype::Bf16);
        assert_eq!(k.storage.dtype(master), Dtype::F32);
        // p written 2 (no longer read), g 2, m r/w 2 + 2, master r/w 4 + 4.
        assert_eq!(k.bytes_per_element(), 16);
        assert!(k
            .to_string()
            .contains("storage p bf16, g bf16, m bf16, master f32"));
        // Applying twice is refused.
        assert!(prec(Dtype::Bf16, Dtype::F32, false, None)
            .apply(&k)
            .is_err());
    }

    #[test]
    fn the_default_changes_nothing_and_bad_options_are_refused() {
        let k = kernel();
        assert_eq!(Precision::default().apply(&k).expect("default"), k);
        assert_eq!(k.bytes_per_element(), 20);
        for bad in [
            prec(Dtype::F32, Dtype::F32, true, None),
            prec(Dtype::F32, Dtype::F32, false, Some(1)),
            prec(Dtype::Bf16, Dtype::F32, true, Some(1)),
            prec(Dtype::Bf16, Dtype::F16, false, None),
            prec(Dtype::Bf16, Dtype::Int8, false, None),
            prec(Dtype::Int8, Dtype::F32, false, None),
        ] {
            assert!(bad.apply(&k).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn validation_refuses_storage_that_does_not_fit() {
        let mut k = kernel();
        k.storage.states = vec![Dtype::Bf16, Dtype::Bf16];
        assert!(k.validate().is_err());
        k.storage.states = vec![Dtype::F16];
        assert!(k.validate().is_err());
        k.storage.states = Vec::new();
        k.storage.rounding = Rounding::Stochastic { seed: 1 };
        assert!(k.validate().is_err(), "stochastic rounding of an f32 p");
        k.storage.param = Dtype::F16;
        k.validate().expect("stochastic f16 p");
        assert!(k.storage.is_stochastic(Slot::Param));
        assert!(!k.storage.is_stochastic(Slot::Grad));
        assert_eq!(k.storage.sr_key(3, 2), crate::dtype::sr_key(1, 3, 2));
    }

    #[test]
    fn narrow_is_round_to_nearest_or_stochastic() {
        let s = Storage {
            param: Dtype::Bf16,
            grad: Dtype::F16,
            states: Vec::new(),
            rounding: Rounding::Stochastic { seed: 9 },
        };
        let x = 1.0 + 2f32.powi(-9); // a quarter of a bf16 ulp above 1
        assert_eq!(s.narrow(Slot::Grad, 1.0 + 2f32.powi(-12), 0), 1.0);
        assert_eq!(s.narrow(Slot::Param, x, 0), 1.0);
        assert_eq!(s.narrow(Slot::Param, x, 0xFFFF), 1.0 + 2f32.powi(-7));
        assert_eq!(s.narrow(Slot::State(StateId::new(0)), x, 0xFFFF), x);
    }
}
