//! Storage dtypes in PTX: bf16 and f16 loads widened to f32 and stores narrowed by round to
//! nearest even with `cvt.rn` (sm_80 and later for bf16), matching `optc_kernel::dtype` for every
//! value but a NaN's payload (`cvt` gives the canonical NaN; docs/dtypes.md leaves payloads out
//! of the contract). Stochastic rounding is not lowered to PTX yet ([`check`] refuses it).

use super::asm::{Asm, Reg};
use super::Error;
use optc_kernel::{Dtype, Kernel};

/// Whether buffers of `d` hold 16-bit values.
pub(crate) fn is_half(d: Dtype) -> bool {
    matches!(d, Dtype::Bf16 | Dtype::F16)
}

/// Errors unless this backend lowers `kernel`'s storage for `sm`: 16-bit buffers round to
/// nearest (stochastic rounding is CPU-only so far), bf16 needs sm_80 (`cvt.rn.bf16.f32`), and a
/// factored kernel keeps f32 storage.
pub(crate) fn check(kernel: &Kernel, sm: u32) -> Result<(), Error> {
    let s = &kernel.storage;
    if s.is_f32() {
        return Ok(());
    }
    if s.stochastic_seed().is_some() {
        return Err(Error::Unsupported(
            "stochastic rounding runs on the interpreter and the CPU only so far".into(),
        ));
    }
    if kernel.is_factored() {
        return Err(Error::Unsupported(
            "a factored kernel with 16-bit storage runs on the interpreter and the CPU only so far"
                .into(),
        ));
    }
    let bf16 = [s.param, s.grad]
        .into_iter()
        .chain(s.states.iter().copied())
        .any(|d| d == Dtype::Bf16);
    if bf16 && sm < 80 {
        return Err(Error::Unsupported(format!(
            "bf16 storage needs sm_80 or newer (cvt.rn.bf16.f32), not sm_{sm}"
        )));
    }
    Ok(())
}

/// Loads `lanes` (4 or 1) 16-bit values of dtype `d` at `addr` (8-byte aligned for 4) and widens
/// them to f32 registers, exactly.
pub(crate) fn load(asm: &mut Asm, d: Dtype, addr: &Reg, lanes: usize) -> Vec<Reg> {
    let halves: Vec<Reg> = (0..lanes).map(|_| asm.h()).collect();
    if lanes == 4 {
        asm.ins(format!(
            "ld.global.v4.b16 {{{}, {}, {}, {}}}, [{addr}]",
            halves[0], halves[1], halves[2], halves[3]
        ));
    } else {
        asm.ins(format!("ld.global.b16 {}, [{addr}]", halves[0]));
    }
    halves
        .iter()
        .map(|h| {
            let f = asm.f();
            match d {
                Dtype::F16 => asm.ins(format!("cvt.f32.f16 {f}, {h}")),
                _ => {
                    // bf16 is the top half of an f32.
                    let r = asm.r();
                    asm.ins(format!("cvt.u32.u16 {r}, {h}"));
                    asm.ins(format!("shl.b32 {r}, {r}, 16"));
                    asm.ins(format!("mov.b32 {f}, {r}"));
                }
            }
            f
        })
        .collect()
}

/// Narrows the f32 registers `values` to dtype `d` by round to nearest even and stores them at
/// `addr` (one or four consecutive values).
pub(crate) fn store(asm: &mut Asm, d: Dtype, addr: &Reg, values: &[Reg]) {
    let ty = if d == Dtype::F16 { "f16" } else { "bf16" };
    let halves: Vec<Reg> = values
        .iter()
        .map(|v| {
            let h = asm.h();
            asm.ins(format!("cvt.rn.{ty}.f32 {h}, {v}"));
            h
        })
        .collect();
    if let [a, b, c, e] = halves.as_slice() {
        asm.ins(format!("st.global.v4.b16 [{addr}], {{{a}, {b}, {c}, {e}}}"));
    } else {
        for (k, h) in halves.iter().enumerate() {
            asm.ins(format!("st.global.b16 [{addr}+{}], {h}", 2 * k));
        }
    }
}
