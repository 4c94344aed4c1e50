//! Stepping candle tensors in place: one optc step over the storages of many Vars, through
//! candle's in-place custom-op API ([`InplaceOp2`]), with no copy of a parameter or a gradient.
//!
//! Takes checked [`Item`]s (a var, its gradient, its optc name; f32, contiguous, same shape and
//! device) and the optc [`Optimizer`]. candle hands one storage to an op at a time, under its lock,
//! so the op for item `k` borrows its param and gradient slices and then runs the op of item
//! `k + 1` from inside its own; the innermost op steps every borrowed tensor in one optc step (one
//! pass of the thread pool per kernel). The nesting is at most [`NEST`] deep; longer lists are
//! stepped in batches of [`NEST`]. When two items share a storage (which candle would lock twice),
//! every item is stepped by itself instead: slower, never a deadlock.

use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor};
use optc_runtime::{Optimizer, Update};
use std::cell::RefCell;

/// The deepest nesting of in-place ops (each level holds one storage lock and a few stack frames).
pub(crate) const NEST: usize = 64;

/// One var to step, already checked.
pub(crate) struct Item {
    /// The name the var is registered under in the optc optimizer.
    pub name: String,
    /// The var's tensor (updated in place).
    pub param: Tensor,
    /// Its gradient.
    pub grad: Tensor,
}

/// What is handed from one level to the next: the optimizer and the tensors borrowed so far.
struct Carry<'a> {
    opt: &'a mut Optimizer,
    updates: Vec<Update<'a>>,
}

/// The in-place op of one level: borrows `items[0]`, then runs the op of `items[1..]`.
struct Nest<'a> {
    items: &'a [Item],
    carry: RefCell<Option<Carry<'a>>>,
}

/// Steps `items` with one optc step per batch of [`NEST`] items.
pub(crate) fn step(opt: &mut Optimizer, items: &[Item]) -> candle_core::Result<()> {
    let shared = shares_storage(items);
    if (shared || items.len() > NEST) && step_wide(opt, items)? {
        // A step-wide reduction (clipping by global norm, `global_norm`) must see every tensor in
        // one optc step; batches would each get their own norm, silently.
        return Err(candle_core::Error::Msg(format!(
            "this rule reduces over the whole step (global norm), so optc-candle must step all {} vars in one call, but {}; use at most {NEST} vars without shared storage per optimizer, or clip per group",
            items.len(),
            if shared {
                "two of them share a storage".to_string()
            } else {
                format!("it steps at most {NEST} vars per call")
            }
        )));
    }
    if shared {
        for item in items {
            run(opt, std::slice::from_ref(item))?;
        }
        return Ok(());
    }
    for batch in items.chunks(NEST) {
        run(opt, batch)?;
    }
    Ok(())
}

/// Whether the kernel of some item has a Step-scope reduction.
fn step_wide(opt: &Optimizer, items: &[Item]) -> candle_core::Result<bool> {
    for item in items {
        let kernel = opt
            .param_kernel(&item.name)
            .map_err(candle_core::Error::wrap)?;
        if kernel.has_step_reduction() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn run(opt: &mut Optimizer, items: &[Item]) -> candle_core::Result<()> {
    let Some(first) = items.first() else {
        return Ok(());
    };
    let nest = Nest {
        items,
        carry: RefCell::new(Some(Carry {
            opt,
            updates: Vec::with_capacity(items.len()),
        })),
    };
    first.param.inplace_op2(&first.grad, &nest)
}

/// Whether two tensors among all params and grads share one storage.
fn shares_storage(items: &[Item]) -> bool {
    let mut keys: Vec<usize> = items
        .iter()
        .flat_map(|i| [storage_key(&i.param), storage_key(&i.grad)])
        .collect();
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
}

/// The address of a tensor's storage: equal for tensors that share one.
fn storage_key(t: &Tensor) -> usize {
    let (storage, _) = t.storage_and_layout();
    std::ptr::from_ref(&*storage).addr()
}

fn internal(what: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("optc-candle internal error: {what}"))
}

/// The contiguous f32 range a layout covers, checked against the storage's length.
fn range(
    name: &str,
    what: &str,
    layout: &Layout,
    len: usize,
) -> candle_core::Result<(usize, usize)> {
    match layout.contiguous_offsets() {
        Some((a, b)) if b <= len => Ok((a, b)),
        Some(_) => Err(internal(&format!("the {what} of `{name}` is out of its storage"))),
        None => Err(candle_core::Error::Msg(format!(
            "the {what} of `{name}` is not contiguous; optc steps contiguous tensors in place (call .contiguous() first)"
        ))),
    }
}

impl InplaceOp2 for Nest<'_> {
    fn name(&self) -> &'static str {
        "optc-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let Some((item, rest)) = self.items.split_first() else {
            return Err(internal("an op with no tensor"));
        };
        let Some(carry) = self.carry.borrow_mut().take() else {
            return Err(internal("an op run twice"));
        };
        let CpuStorage::F32(param) = s1 else {
            return Err(candle_core::Error::Msg(format!(
                "var `{}` is not f32; optc steps f32 tensors",
                item.name
            )));
        };
        let grad: &[f32] = s2.as_slice()?;
        let (a, b) = range(&item.name, "var", l1, param.len())?;
        let (c, d) = range(&item.name, "gradient", l2, grad.len())?;
        let Carry { opt, updates } = carry;
        // Shorten the borrows of the outer levels to this call's (`Update` is covariant).
        let mut updates: Vec<Update<'_>> = updates;
        updates.push(Update::new(&item.name, &mut param[a..b], &grad[c..d]));
        match rest.first() {
            None => opt
                .step(updates)
                .map(|_report| ())
                .map_err(candle_core::Error::wrap),
            Some(next) => {
                let nest = Nest {
                    items: rest,
                    carry: RefCell::new(Some(Carry { opt, updates })),
                };
                next.param.inplace_op2(&next.grad, &nest)
            }
        }
    }
}
