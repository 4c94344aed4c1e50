//! Storage dtypes in PTX: bf16 and f16 loads widened to f32, stores narrowed by round to nearest
//! even with `cvt.rn` (sm_80 and later for bf16) or stochastically, and the stochastic-rounding
//! hash. Every conversion matches `optc_kernel::dtype` for every value but a NaN's payload (`cvt`
//! gives the canonical NaN; docs/dtypes.md leaves payloads out of the contract):
//!
//! - the random word of element `e` is [`sr_bits`], `lowbias32(lowbias32(lo ^ key) ^ hi)` with
//!   `lo`/`hi` the halves of `e`, in 32-bit integer ops (`xor`, `shr`, `mul.lo.u32`);
//! - bf16 ([`narrow_bf16_stochastic`]) adds the word's low 16 bits to the f32 encoding and keeps
//!   the top half (infinities and NaN to nearest);
//! - f16 ([`narrow_f16_stochastic`]) finds the two f16 neighbours of `x` from the nearest one and
//!   compares `r >> 8` with `floor(2^24 · (|x| - lo) / (hi - lo))`, which is exact in f32 (the
//!   difference by Sterbenz's lemma, the gap a power of two), so it equals the f64 fraction of
//!   `dtype::narrow_f16_stochastic`; the CPU JIT (`clif/convert.rs`) does the same in f32 lanes.

use super::asm::{Asm, Reg};
use super::Error;
use optc_kernel::{Dtype, Kernel};

/// Whether buffers of `d` hold 16-bit values.
pub(crate) fn is_half(d: Dtype) -> bool {
    matches!(d, Dtype::Bf16 | Dtype::F16)
}

/// Errors unless this backend lowers `kernel`'s storage for `sm`: bf16 needs sm_80
/// (`cvt.rn.bf16.f32`).
pub(crate) fn check(kernel: &Kernel, sm: u32) -> Result<(), Error> {
    let s = &kernel.storage;
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

/// The f32 value of the 16-bit `h` of dtype `d`, exactly.
pub(crate) fn widen(asm: &mut Asm, d: Dtype, h: &Reg) -> Reg {
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
}

/// `lowbias32(x)` into a fresh register.
fn lowbias32(asm: &mut Asm, x: &Reg) -> Reg {
    let mut v = x.clone();
    for (shift, mul) in [
        (16, Some(0x7feb_352d_u32)),
        (15, Some(0x846c_a68b)),
        (16, None),
    ] {
        let (s, d) = (asm.r(), asm.r());
        asm.ins(format!("shr.u32 {s}, {v}, {shift}"));
        asm.ins(format!("xor.b32 {d}, {v}, {s}"));
        v = d;
        if let Some(m) = mul {
            let d = asm.r();
            asm.ins(format!("mul.lo.u32 {d}, {v}, {m}"));
            v = d;
        }
    }
    v
}

/// `sr_bits(key, e)` (`optc_kernel::dtype::sr_bits`) for the u64 element index `e`.
pub(crate) fn sr_bits(asm: &mut Asm, key: &Reg, e: &Reg) -> Reg {
    let (lo, hi64, hi, a) = (asm.r(), asm.rd(), asm.r(), asm.r());
    asm.ins(format!("cvt.u32.u64 {lo}, {e}"));
    asm.ins(format!("shr.u64 {hi64}, {e}, 32"));
    asm.ins(format!("cvt.u32.u64 {hi}, {hi64}"));
    asm.ins(format!("xor.b32 {a}, {lo}, {key}"));
    let a = lowbias32(asm, &a);
    let b = asm.r();
    asm.ins(format!("xor.b32 {b}, {a}, {hi}"));
    lowbias32(asm, &b)
}

/// Whether the f32 bits `bits` are an infinity or NaN.
fn non_finite(asm: &mut Asm, bits: &Reg) -> Reg {
    let (mag, p) = (asm.r(), asm.p());
    asm.ins(format!("and.b32 {mag}, {bits}, 2147483647"));
    asm.ins(format!("setp.gt.u32 {p}, {mag}, 2139095039"));
    p
}

/// `x` rounded stochastically to bf16 with the random word `r`, as
/// `dtype::narrow_bf16_stochastic`.
fn narrow_bf16_stochastic(asm: &mut Asm, x: &Reg, r: &Reg) -> Reg {
    let (bits, low, sum, top, up, near, h) = (
        asm.r(),
        asm.r(),
        asm.r(),
        asm.r(),
        asm.h(),
        asm.h(),
        asm.h(),
    );
    asm.ins(format!("mov.b32 {bits}, {x}"));
    asm.ins(format!("and.b32 {low}, {r}, 65535"));
    asm.ins(format!("add.u32 {sum}, {bits}, {low}"));
    asm.ins(format!("shr.u32 {top}, {sum}, 16"));
    asm.ins(format!("cvt.u16.u32 {up}, {top}"));
    asm.ins(format!("cvt.rn.bf16.f32 {near}, {x}"));
    let special = non_finite(asm, &bits);
    asm.ins(format!("selp.b16 {h}, {near}, {up}, {special}"));
    h
}

/// The f32 value of the f16 whose bits are the low half of the 32-bit `m`.
fn widen_f16_word(asm: &mut Asm, m: &Reg) -> Reg {
    let h = asm.h();
    asm.ins(format!("cvt.u16.u32 {h}, {m}"));
    widen(asm, Dtype::F16, &h)
}

/// `x` rounded stochastically to f16 with the random word `r`, as
/// `dtype::narrow_f16_stochastic` (see the module docs).
fn narrow_f16_stochastic(asm: &mut Asm, x: &Reg, r: &Reg) -> Reg {
    let near = asm.h();
    asm.ins(format!("cvt.rn.f16.f32 {near}, {x}"));
    let near_f = widen(asm, Dtype::F16, &near);
    let (bits, sign, nm32, nm) = (asm.r(), asm.r(), asm.r(), asm.r());
    asm.ins(format!("mov.b32 {bits}, {x}"));
    asm.ins(format!("shr.u32 {sign}, {bits}, 16"));
    asm.ins(format!("and.b32 {sign}, {sign}, 32768"));
    asm.ins(format!("cvt.u32.u16 {nm32}, {near}"));
    asm.ins(format!("and.b32 {nm}, {nm32}, 32767"));
    // The neighbours' magnitudes: the nearest one is `hi` when it is above |x|, else `lo`.
    let (ax, anf, above) = (asm.f(), asm.f(), asm.p());
    asm.ins(format!("abs.f32 {ax}, {x}"));
    asm.ins(format!("abs.f32 {anf}, {near_f}"));
    asm.ins(format!("setp.gt.f32 {above}, {anf}, {ax}"));
    let (dec, inc, lo_mag, hi_mag) = (asm.r(), asm.r(), asm.r(), asm.r());
    asm.ins(format!("sub.u32 {dec}, {nm}, 1"));
    asm.ins(format!("add.u32 {inc}, {nm}, 1"));
    asm.ins(format!("selp.b32 {lo_mag}, {dec}, {nm}, {above}"));
    asm.ins(format!("selp.b32 {hi_mag}, {nm}, {inc}, {above}"));
    let lo = widen_f16_word(asm, &lo_mag);
    let hi = widen_f16_word(asm, &hi_mag);
    // floor(2^24 · (|x| - lo) / (hi - lo)), every step exact.
    let (gap, d, frac, t, thr, rr, up) = (
        asm.f(),
        asm.f(),
        asm.f(),
        asm.f(),
        asm.r(),
        asm.r(),
        asm.p(),
    );
    asm.ins(format!("sub.rn.f32 {gap}, {hi}, {lo}"));
    asm.ins(format!("sub.rn.f32 {d}, {ax}, {lo}"));
    asm.ins(format!("div.rn.f32 {frac}, {d}, {gap}"));
    asm.ins(format!("mul.rn.f32 {t}, {frac}, 0f4B800000"));
    asm.ins(format!("cvt.rzi.s32.f32 {thr}, {t}"));
    asm.ins(format!("shr.u32 {rr}, {r}, 8"));
    asm.ins(format!("setp.lt.s32 {up}, {rr}, {thr}"));
    let (mag, edge, res) = (asm.r(), asm.p(), asm.r());
    asm.ins(format!("selp.b32 {mag}, {hi_mag}, {lo_mag}, {up}"));
    // Between 65504 and the overflow threshold: 65504, as round to nearest.
    asm.ins(format!("setp.gt.u32 {edge}, {hi_mag}, 31743"));
    asm.ins(format!("selp.b32 {mag}, {lo_mag}, {mag}, {edge}"));
    asm.ins(format!("or.b32 {res}, {mag}, {sign}"));
    // A value f16 holds, an infinity from rounding to nearest, infinities and NaN: to nearest.
    let (exact, near_inf, keep) = (asm.p(), asm.p(), asm.p());
    asm.ins(format!("setp.eq.f32 {exact}, {near_f}, {x}"));
    asm.ins(format!("setp.eq.u32 {near_inf}, {nm}, 31744"));
    let special = non_finite(asm, &bits);
    asm.ins(format!("or.pred {keep}, {exact}, {near_inf}"));
    asm.ins(format!("or.pred {keep}, {keep}, {special}"));
    let (resh, h) = (asm.h(), asm.h());
    asm.ins(format!("cvt.u16.u32 {resh}, {res}"));
    asm.ins(format!("selp.b16 {h}, {near}, {resh}, {keep}"));
    h
}

/// `x` narrowed to the 16-bit dtype `d`: to nearest even, or stochastically with the random word
/// `r` when given.
pub(crate) fn narrow(asm: &mut Asm, d: Dtype, x: &Reg, r: Option<&Reg>) -> Reg {
    match (d, r) {
        (Dtype::F16, Some(r)) => narrow_f16_stochastic(asm, x, r),
        (_, Some(r)) => narrow_bf16_stochastic(asm, x, r),
        (_, None) => {
            let ty = if d == Dtype::F16 { "f16" } else { "bf16" };
            let h = asm.h();
            asm.ins(format!("cvt.rn.{ty}.f32 {h}, {x}"));
            h
        }
    }
}

/// Loads one 16-bit value of dtype `d` at `addr` when `guard` holds (0 otherwise) and widens it.
pub(crate) fn load_guarded(asm: &mut Asm, d: Dtype, addr: &Reg, guard: &Reg) -> Reg {
    let h = asm.h();
    asm.ins(format!("mov.b16 {h}, 0"));
    asm.ins(format!("@{guard} ld.global.b16 {h}, [{addr}]"));
    widen(asm, d, &h)
}

/// Narrows `x` to the 16-bit dtype `d` (stochastically with `r` when given) and stores it at
/// `addr` when `guard` holds.
pub(crate) fn store_guarded(
    asm: &mut Asm,
    d: Dtype,
    addr: &Reg,
    x: &Reg,
    r: Option<&Reg>,
    guard: &Reg,
) {
    let h = narrow(asm, d, x, r);
    asm.ins(format!("@{guard} st.global.b16 [{addr}], {h}"));
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
    halves.iter().map(|h| widen(asm, d, h)).collect()
}

/// Narrows the f32 registers `values` to dtype `d` and stores them at `addr` (one or four
/// consecutive values): to nearest even, or stochastically with the random words `rs` (one per
/// value) when given.
pub(crate) fn store(asm: &mut Asm, d: Dtype, addr: &Reg, values: &[Reg], rs: Option<&[Reg]>) {
    let halves: Vec<Reg> = values
        .iter()
        .enumerate()
        .map(|(k, v)| narrow(asm, d, v, rs.and_then(|rs| rs.get(k))))
        .collect();
    if let [a, b, c, e] = halves.as_slice() {
        asm.ins(format!("st.global.v4.b16 [{addr}], {{{a}, {b}, {c}, {e}}}"));
    } else {
        for (k, h) in halves.iter().enumerate() {
            asm.ins(format!("st.global.b16 [{addr}+{}], {h}", 2 * k));
        }
    }
}
