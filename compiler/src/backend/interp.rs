//! The reference interpreter: steps a fused kernel on slices, one element at a time.
//!
//! This is the meaning of a rule. It evaluates the host program in f64 exactly as every runtime
//! does ([`Kernel::eval_host`]), then the body per element with the op definitions of
//! [`optc_kernel::op`], in f32 ([`Precision::F32`], what backends are judged against) or in f64
//! ([`Precision::F64`], on f64 buffers, for measuring float error itself).

use optc_kernel::eval::eval_arena;
use optc_kernel::{Expr, Kernel, KernelError, Real, Slot};

/// The arithmetic the body runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Every body op rounds to f32, as the compiled kernels do.
    F32,
    /// Every body op in f64, on f64 buffers.
    F64,
}

/// One tensor's buffers for a step, in [`Kernel::buffers`] order: `p`, `g`, then each state.
pub struct Buffers<'a, R> {
    /// The parameter, updated in place.
    pub param: &'a mut [R],
    /// The gradient.
    pub grad: &'a [R],
    /// The states, in the kernel's state order, updated in place.
    pub states: Vec<&'a mut [R]>,
}

/// Why a step could not run.
#[derive(Debug, thiserror::Error)]
pub enum InterpError {
    /// The kernel is malformed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The buffers do not fit the kernel.
    #[error("{0}")]
    Shape(String),
}

/// Steps one tensor: runs the host program for step `t` with `scalars` (updated in place), then
/// the body over every element in f32.
pub fn step_f32(
    kernel: &Kernel,
    hypers: &[f64],
    t: u64,
    scalars: &mut [f64],
    bufs: Buffers<'_, f32>,
) -> Result<(), InterpError> {
    step_generic::<f32>(kernel, hypers, t, scalars, bufs)
}

/// Like [`step_f32`], but the body runs in f64 on f64 buffers.
pub fn step_f64(
    kernel: &Kernel,
    hypers: &[f64],
    t: u64,
    scalars: &mut [f64],
    bufs: Buffers<'_, f64>,
) -> Result<(), InterpError> {
    step_generic::<f64>(kernel, hypers, t, scalars, bufs)
}

fn step_generic<R: Real>(
    kernel: &Kernel,
    hypers: &[f64],
    t: u64,
    scalars: &mut [f64],
    bufs: Buffers<'_, R>,
) -> Result<(), InterpError> {
    kernel.validate()?;
    let n = bufs.param.len();
    if bufs.grad.len() != n || bufs.states.iter().any(|s| s.len() != n) {
        return Err(InterpError::Shape(format!(
            "buffer lengths differ: p has {n}, g has {}, states have {:?}",
            bufs.grad.len(),
            bufs.states.iter().map(|s| s.len()).collect::<Vec<_>>()
        )));
    }
    if bufs.states.len() != kernel.states.len() {
        return Err(InterpError::Shape(format!(
            "rule `{}` needs {} state buffers, got {}",
            kernel.rule,
            kernel.states.len(),
            bufs.states.len()
        )));
    }
    if scalars.len() != kernel.scalars.len() || hypers.len() != kernel.hypers.len() {
        return Err(InterpError::Shape(format!(
            "rule `{}` needs {} hypers and {} scalar states, got {} and {}",
            kernel.rule,
            kernel.hypers.len(),
            kernel.scalars.len(),
            hypers.len(),
            scalars.len()
        )));
    }
    let stage = kernel.only_stage()?;
    let host = kernel.eval_host(hypers, t, scalars, &[])?;
    let uniforms: Vec<R> = host.uniforms[0].iter().map(|&u| R::from_f64(u)).collect();
    let Buffers {
        param,
        grad,
        mut states,
    } = bufs;
    let mut values: Vec<R> = Vec::with_capacity(stage.body.len());
    for i in 0..n {
        let load = |slot: Slot| match slot {
            Slot::Param => param[i],
            Slot::Grad => grad[i],
            Slot::State(s) => states[s.index()][i],
        };
        eval_arena(&stage.body, &mut values, |e| match *e {
            Expr::Uniform(u) => uniforms.get(u.index()).copied().ok_or(()),
            Expr::Load(slot) => Ok(load(slot)),
            _ => Err(()),
        })
        .map_err(|e| {
            InterpError::Kernel(KernelError {
                rule: kernel.rule.clone(),
                reason: format!("body: {e:?}"),
            })
        })?;
        for s in &stage.stores {
            let v = values[s.value.index()];
            match s.slot {
                Slot::Param => param[i] = v,
                Slot::Grad => {}
                Slot::State(id) => states[id.index()][i] = v,
            }
        }
    }
    scalars.copy_from_slice(&host.scalars);
    Ok(())
}
