//! Kernel variants: the conditions on hypers alone that choose a specialized kernel per step.
//!
//! A rule that branches on a condition made only of hypers (`if momentum != 0`, `if weight_decay
//! != 0`) compiles, for each flag set and rank class, to one kernel per combination of those
//! conditions' values: its **variants**. [`Conditions`] is that list of conditions as a small f64
//! program over `Const`, `Bool` and `Hyper` leaves; the runtime evaluates it on the host from the
//! current hyper values before every step ([`Conditions::select`]) and runs the variant of that
//! [`VariantId`], so a schedule that changes a hyper also changes the variant. In a variant each
//! condition is a constant: the untaken branch, and any state only it used, are gone.
//!
//! Conditions that read `t`, a scalar state or a reduction stay selects inside the kernel: they
//! change from step to step (`t == 1`) and would recompile or cycle between variants.

use crate::arena::{Arena, Handle};
use crate::eval::eval_arena;
use crate::expr::Expr;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The most conditions one flag set (and rank class) of a rule may branch on: at most
/// `2^MAX_CONDITIONS` = 16 variants, each compiled at most once.
pub const MAX_CONDITIONS: usize = 4;

/// Which value each condition takes: bit `i` is condition `i`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct VariantId(pub u32);

impl VariantId {
    /// The position of the variant among [`Conditions::variants`].
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The value of condition `i` in this variant.
    pub fn value(self, i: usize) -> bool {
        i < 32 && self.0 & (1 << i) != 0
    }
}

/// One condition on hypers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// The node of [`Conditions::program`] with its value (`1.0` true, `0.0` false).
    pub value: Handle<Expr>,
    /// How it reads, with hyper names (`momentum != 0`).
    pub text: String,
}

/// The conditions that choose a variant. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Conditions {
    /// The f64 program the conditions are nodes of, over `Const`, `Bool` and `Hyper` leaves.
    pub program: Arena<Expr>,
    /// The conditions, in the order of their bits in a [`VariantId`].
    pub conditions: Vec<Condition>,
}

/// A condition's value in one variant, as a kernel records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionValue {
    /// The condition ([`Condition::text`]).
    pub text: String,
    /// Its value in this kernel.
    pub value: bool,
}

/// Conditions that do not hold together (a corrupt artifact), or hypers that do not fit them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("kernel variant conditions: {0}")]
pub struct ConditionError(pub String);

impl Conditions {
    /// Whether the rule has no conditions (one variant, `VariantId(0)`).
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Every variant, in id order: `2^n` for `n` conditions.
    pub fn variants(&self) -> impl Iterator<Item = VariantId> {
        (0..1u32 << self.conditions.len().min(MAX_CONDITIONS)).map(VariantId)
    }

    /// The values of every condition in `variant`, for a kernel's [`crate::Kernel::variant`].
    pub fn values(&self, variant: VariantId) -> Vec<ConditionValue> {
        self.conditions
            .iter()
            .enumerate()
            .map(|(i, c)| ConditionValue {
                text: c.text.clone(),
                value: variant.value(i),
            })
            .collect()
    }

    /// The variant the hypers `hypers` (in the rule's order) select: bit `i` set when condition
    /// `i` is non-zero, as a select in the kernel would decide.
    pub fn select(&self, hypers: &[f64]) -> Result<VariantId, ConditionError> {
        if self.conditions.is_empty() {
            return Ok(VariantId(0));
        }
        let mut values = Vec::new();
        eval_arena(&self.program, &mut values, |e| match *e {
            Expr::Hyper(h) => hypers.get(h.index()).copied().ok_or(()),
            _ => Err(()),
        })
        .map_err(|e| ConditionError(format!("{e:?}")))?;
        let mut bits = 0u32;
        for (i, c) in self.conditions.iter().enumerate() {
            let v = values
                .get(c.value.index())
                .ok_or_else(|| ConditionError(format!("condition {i} is out of range")))?;
            if *v != 0.0 {
                bits |= 1 << i;
            }
        }
        Ok(VariantId(bits))
    }

    /// Checks the bound, the leaves (`Const`, `Bool`, `Hyper` below `hypers`) and the ranges.
    pub fn validate(&self, hypers: usize) -> Result<(), ConditionError> {
        if self.conditions.len() > MAX_CONDITIONS {
            return Err(ConditionError(format!(
                "{} conditions, at most {MAX_CONDITIONS}",
                self.conditions.len()
            )));
        }
        for (h, e) in self.program.iter() {
            let ok = match e {
                Expr::Const(_) | Expr::Bool(_) => true,
                Expr::Hyper(x) => x.index() < hypers,
                Expr::Unary(..) | Expr::Binary(..) | Expr::Select(..) => {
                    e.operands().all(|o| o.index() < h.index())
                }
                _ => false,
            };
            if !ok {
                return Err(ConditionError(format!(
                    "node {} is not allowed: {e:?}",
                    h.index()
                )));
            }
        }
        if self
            .conditions
            .iter()
            .any(|c| c.value.index() >= self.program.len())
        {
            return Err(ConditionError("a condition is out of range".into()));
        }
        Ok(())
    }
}

/// The table `optc compile --emit ir` prints above the variants: each condition, then per
/// variant its condition values, stages and bytes per element. `kernels` are the variants in
/// [`VariantId`] order.
pub fn listing(conditions: &Conditions, kernels: &[crate::Kernel]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let n = conditions.conditions.len();
    let _ = if n == 0 {
        writeln!(out, "variants: no conditions on hypers, one kernel")
    } else {
        writeln!(
            out,
            "variants: {n} condition{} on hypers, {} kernels; each step runs the one its hypers select",
            if n == 1 { "" } else { "s" },
            kernels.len()
        )
    };
    for (i, c) in conditions.conditions.iter().enumerate() {
        let _ = writeln!(out, "  c{i} = {}", c.text);
    }
    for (v, k) in conditions.variants().zip(kernels) {
        let values: Vec<String> = (0..conditions.conditions.len())
            .map(|i| format!("c{i}={}", v.value(i)))
            .collect();
        let stages: Vec<String> = (0..k.stages.len())
            .map(|j| {
                let names = |pick: fn(&crate::BufferUse) -> bool| {
                    let n: Vec<&str> = k
                        .stage_buffers(j)
                        .iter()
                        .filter(|b| pick(b))
                        .map(|b| k.slot_name(b.slot))
                        .collect();
                    if n.is_empty() {
                        "-".to_string()
                    } else {
                        n.join(" ")
                    }
                };
                format!(
                    "stage {j}: reads {}; writes {}; {} bytes",
                    names(|b| b.read),
                    names(|b| b.written),
                    k.stage_bytes_per_element(j)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  {v} ({}): {} bytes/element in {} stage{} ({})",
            values.join(", "),
            k.bytes_per_element(),
            k.stages.len(),
            if k.stages.len() == 1 { "" } else { "s" },
            stages.join(" | ")
        );
    }
    out
}

impl fmt::Display for VariantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BinaryOp, HyperId};

    fn two() -> Conditions {
        let mut program = Arena::new();
        let m = program.append(Expr::Hyper(HyperId(0)));
        let z = program.append(Expr::Const(0.0));
        let a = program.append(Expr::Binary(BinaryOp::Ne, m, z));
        let w = program.append(Expr::Hyper(HyperId(1)));
        let b = program.append(Expr::Binary(BinaryOp::Gt, w, z));
        Conditions {
            program,
            conditions: vec![
                Condition {
                    value: a,
                    text: "momentum != 0".into(),
                },
                Condition {
                    value: b,
                    text: "wd > 0".into(),
                },
            ],
        }
    }

    #[test]
    fn hypers_select_the_variant_bits() {
        let c = two();
        assert_eq!(c.validate(2), Ok(()));
        assert_eq!(c.variants().count(), 4);
        assert_eq!(c.select(&[0.0, 0.0]), Ok(VariantId(0)));
        assert_eq!(c.select(&[0.9, 0.0]), Ok(VariantId(1)));
        assert_eq!(c.select(&[0.0, 1e-2]), Ok(VariantId(2)));
        assert_eq!(c.select(&[-0.0, -1.0]), Ok(VariantId(0)));
        // NaN != 0 is true, NaN > 0 is false: IEEE comparisons, as in the kernel.
        assert_eq!(c.select(&[f64::NAN, f64::NAN]), Ok(VariantId(1)));
        assert!(c.select(&[0.0]).is_err());
        assert!(c.validate(1).is_err());
        let values = c.values(VariantId(2));
        assert!(!values[0].value && values[1].value);
    }
}
