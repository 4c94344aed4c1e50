//! Kernel families: one flag set and rank class of a rule, and its variants.
//!
//! A [`Family`] holds the flag set's description kernel (every condition on hypers kept as a
//! select; its states are every state a variant may use, in the order the optimizer, the
//! executors and checkpoints keep them), the [`Conditions`] that choose a variant from the
//! hypers, and the executor's index of each variant, loaded the first time a step selects it.
//! Variants share the description's hypers and scalar states (the compiler keeps every scalar
//! of the flag set in each variant, so scalar lists are identical); a variant's states are a
//! subset of the description's, matched by name.

use crate::error::RuntimeError;
use optc_kernel::{Conditions, Kernel, RankClass, VariantId};

/// One flag set and rank class of a rule. See the module docs.
pub(crate) struct Family {
    /// The flag vector, in the rule's order.
    pub flags: Vec<bool>,
    /// The rank class.
    pub rank: RankClass,
    /// The description kernel (states and scalars of every variant).
    pub base: Kernel,
    /// What chooses a variant.
    pub conditions: Conditions,
    /// The executor's kernel index of each variant, by [`VariantId`], once loaded.
    pub loaded: Vec<Option<usize>>,
}

impl Family {
    /// A family with no variant loaded yet.
    pub fn new(flags: Vec<bool>, rank: RankClass, base: Kernel, conditions: Conditions) -> Self {
        let n = if conditions.is_empty() {
            1
        } else {
            conditions.variants().count()
        };
        Family {
            flags,
            rank,
            base,
            conditions,
            loaded: vec![None; n],
        }
    }

    /// The variant `hypers` select.
    pub fn select(&self, hypers: &[f64]) -> Result<VariantId, RuntimeError> {
        self.conditions
            .select(hypers)
            .map_err(|e| RuntimeError::Unsupported(format!("internal: {e}")))
    }

    /// The position among the family's states of each state of `variant`, checking that the
    /// variant fits the family (same hypers and scalar states, states a subset).
    pub fn slots(&self, variant: &Kernel) -> Result<Vec<usize>, RuntimeError> {
        let names = |k: &Kernel| k.scalars.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        let hypers = |k: &Kernel| k.hypers.iter().map(|h| h.name.clone()).collect::<Vec<_>>();
        if names(variant) != names(&self.base) || hypers(variant) != hypers(&self.base) {
            return Err(RuntimeError::Unsupported(format!(
                "internal: a variant of rule `{}` has scalars {:?} and hypers {:?}, its flag set {:?} and {:?}",
                self.base.rule,
                names(variant),
                hypers(variant),
                names(&self.base),
                hypers(&self.base)
            )));
        }
        variant
            .states
            .iter()
            .map(|s| {
                self.base
                    .states
                    .iter()
                    .position(|b| b.name == s.name && b.shape == s.shape)
                    .ok_or_else(|| {
                        RuntimeError::Unsupported(format!(
                            "internal: state `{}` of a variant of rule `{}` is not a state of its flag set",
                            s.name, self.base.rule
                        ))
                    })
            })
            .collect()
    }
}
