//! Matrix programs: on host memory with the interpreter's reference product or the CPU's GEMM
//! (this file and [`cpu`]), on CUDA with cuBLAS ([`cuda`]).
//!
//! On the host, takes a stage's [`MatrixProgram`] and one tensor's buffers (as the host executor holds them)
//! with its [`WideView`] and the stage's uniforms; runs the program
//! ([`optc_kernel::matrix::run`]) and writes each output into its scratch state through the
//! wide view. The interpreter target computes products with
//! [`optc_kernel::matrix::reference_matmul`] (the meaning); the CPU target with [`cpu::matmul`].

#[cfg(feature = "compiler")]
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

#[cfg(feature = "compiler")]
use crate::error::RuntimeError;
#[cfg(feature = "compiler")]
use optc_kernel::matrix::{self, Mat, MatrixProgram, WideView};
#[cfg(feature = "compiler")]
use optc_kernel::Slot;

/// One tensor's buffers for a matrix program.
#[cfg(feature = "compiler")]
pub(crate) struct MatrixArgs<'s, 'a> {
    /// The parameter.
    pub param: &'s [f32],
    /// The gradient.
    pub grad: &'s [f32],
    /// The states, in kernel order (outputs are written here).
    pub states: &'s mut [&'a mut [f32]],
}

/// Runs `program` on one tensor with the product `matmul`.
#[cfg(feature = "compiler")]
pub(crate) fn run_program(
    rule: &str,
    program: &MatrixProgram,
    uniforms: &[f32],
    view: Option<WideView>,
    args: MatrixArgs<'_, '_>,
    matmul: &mut dyn FnMut(&Mat, &Mat) -> Mat,
) -> Result<(), RuntimeError> {
    let internal =
        |what: String| RuntimeError::Unsupported(format!("internal: rule `{rule}`: {what}"));
    let view = view.ok_or_else(|| internal("a matrix stage for a tensor without 2 dims".into()))?;
    let MatrixArgs {
        param,
        grad,
        states,
    } = args;
    let outs = {
        let states_ro: &[&mut [f32]] = states;
        let read = |slot: Slot| -> Option<Vec<f32>> {
            Some(match slot {
                Slot::Param => param.to_vec(),
                Slot::Grad => grad.to_vec(),
                Slot::State(s) => states_ro.get(s.index())?.to_vec(),
            })
        };
        matrix::run(program, uniforms, view, &read, matmul).map_err(internal)?
    };
    for (o, m) in program.outputs.iter().zip(outs) {
        let Slot::State(s) = o.slot else {
            return Err(internal("a matrix output writes p or g".into()));
        };
        let target = states
            .get_mut(s.index())
            .ok_or_else(|| internal("a matrix output has no buffer".into()))?;
        matrix::store_wide(&m, target, view);
    }
    Ok(())
}
