//! Storage dtypes in the vector code: loads that widen bf16 and f16 to f32x4, stores that narrow
//! f32x4 by round to nearest even or stochastically, and the stochastic-rounding hash in i32x4
//! lanes. Every function matches `optc_kernel::dtype` bit for bit, NaN and subnormals included
//! (`runtime/tests/cpu_dtypes.rs` checks it): the conversions are integer SIMD ops, and the one
//! float add (f16's subnormal rounding) and multiply (f16's exact widening) are exact or round to
//! nearest even as IEEE says.

use super::gen::Gen;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F32X4, I16, I32, I32X4, I64, I64X2};
use cranelift_codegen::ir::{ConstantData, InstBuilder, MemFlagsData, Value};
use optc_kernel::Dtype;

/// Buffer element loads and stores: may be unaligned, never trap.
fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// `log2` of the bytes of one value of a buffer of dtype `d`.
pub(super) fn shift(d: Dtype) -> i64 {
    match d {
        Dtype::Bf16 | Dtype::F16 => 1,
        Dtype::F32 | Dtype::Int8 => 2,
    }
}

/// Four values of dtype `d` at `addr + offset`, widened to an f32x4.
pub(super) fn load(g: &mut Gen, d: Dtype, addr: Value, offset: i32) -> Value {
    match d {
        Dtype::F32 | Dtype::Int8 => g.b.ins().load(F32X4, flags(), addr, offset),
        Dtype::Bf16 => {
            let h = g.b.ins().uload16x4(flags(), addr, offset);
            let bits = g.b.ins().ishl_imm_u(h, 16);
            g.cast(F32X4, bits)
        }
        Dtype::F16 => {
            let h = g.b.ins().uload16x4(flags(), addr, offset);
            widen_f16(g, h)
        }
    }
}

/// Stores the f32x4 `x` as four values of dtype `d` at `addr + offset`: rounded to nearest even,
/// or stochastically with the random words `r` (an i32x4) when given.
pub(super) fn store(g: &mut Gen, d: Dtype, x: Value, addr: Value, offset: i32, r: Option<Value>) {
    let h = match (d, r) {
        (Dtype::F32 | Dtype::Int8, _) => {
            g.b.ins().store(flags(), x, addr, offset);
            return;
        }
        (Dtype::Bf16, None) => narrow_bf16(g, x),
        (Dtype::Bf16, Some(r)) => narrow_bf16_stochastic(g, x, r),
        (Dtype::F16, None) => narrow_f16(g, x),
        (Dtype::F16, Some(r)) => narrow_f16_stochastic(g, x, r),
    };
    // The four 16-bit results (each in 0..=0xFFFF, so the saturating narrow keeps them) into the
    // low 64 bits, stored at once.
    let packed = g.b.ins().unarrow(h, h);
    let packed = g.cast(I64X2, packed);
    let low = g.b.ins().extractlane(packed, 0);
    g.b.ins().store(flags(), low, addr, offset);
}

/// One value of a buffer of dtype `d`, copied between two addresses (the tail's stack copies move
/// the stored bits unchanged).
pub(super) fn copy_one(
    g: &mut Gen,
    d: Dtype,
    from: Value,
    to: Value,
    (ff, tf): (MemFlagsData, MemFlagsData),
) {
    let ty = if shift(d) == 1 { I16 } else { F32 };
    let v = g.b.ins().load(ty, ff, from, 0);
    g.b.ins().store(tf, v, to, 0);
}

fn and(g: &mut Gen, x: Value, m: i32) -> Value {
    let m = g.i32s(m);
    g.b.ins().band(x, m)
}

fn add(g: &mut Gen, x: Value, c: i32) -> Value {
    let c = g.i32s(c);
    g.b.ins().iadd(x, c)
}

fn icmp(g: &mut Gen, cc: IntCC, x: Value, c: i32) -> Value {
    let c = g.i32s(c);
    g.b.ins().icmp(cc, x, c)
}

/// `m ? a : b` on i32x4 values.
fn pick(g: &mut Gen, m: Value, a: Value, b: Value) -> Value {
    g.b.ins().bitselect(m, a, b)
}

/// f16 bits (in the low half of each i32 lane) to f32, exactly as `widen_f16`: a NaN keeps its
/// payload with the quiet bit set.
pub(super) fn widen_f16(g: &mut Gen, h: Value) -> Value {
    let sign = and(g, h, 0x8000);
    let sign = g.b.ins().ishl_imm_u(sign, 16);
    let em = and(g, h, 0x7FFF);
    let shifted = g.b.ins().ishl_imm_u(em, 13);
    // Finite values (subnormals too): the f32 with these bits, times 2^112, exactly.
    let f = g.cast(F32X4, shifted);
    let scale = g.f32s(f32::from_bits(0x7780_0000));
    let finite = g.b.ins().fmul(f, scale);
    let finite = g.cast(I32X4, finite);
    // Infinities and NaN: all exponent bits, the payload, the quiet bit for a NaN.
    let special = g.i32s(0x7F80_0000);
    let special = g.b.ins().bor(shifted, special);
    let is_nan = icmp(g, IntCC::SignedGreaterThan, em, 0x7C00);
    let quiet = and(g, is_nan, 0x0040_0000);
    let special = g.b.ins().bor(special, quiet);
    let is_special = icmp(g, IntCC::SignedGreaterThan, em, 0x7BFF);
    let bits = pick(g, is_special, special, finite);
    let bits = g.b.ins().bor(bits, sign);
    g.cast(F32X4, bits)
}

/// `x` rounded to bf16, to nearest even, as `narrow_bf16`: the bits in each i32 lane's low half.
pub(super) fn narrow_bf16(g: &mut Gen, x: Value) -> Value {
    let bits = g.cast(I32X4, x);
    let hi = g.b.ins().ushr_imm_u(bits, 16);
    let lsb = and(g, hi, 1);
    let biased = add(g, bits, 0x7FFF);
    let biased = g.b.ins().iadd(biased, lsb);
    let rounded = g.b.ins().ushr_imm_u(biased, 16);
    let quiet = g.i32s(0x40);
    let nan = g.b.ins().bor(hi, quiet);
    let mag = and(g, bits, 0x7FFF_FFFF);
    let is_nan = icmp(g, IntCC::SignedGreaterThan, mag, 0x7F80_0000);
    pick(g, is_nan, nan, rounded)
}

/// `x` rounded to bf16 stochastically with the random words `r`, as `narrow_bf16_stochastic`.
pub(super) fn narrow_bf16_stochastic(g: &mut Gen, x: Value, r: Value) -> Value {
    let bits = g.cast(I32X4, x);
    let low = and(g, r, 0xFFFF);
    let sum = g.b.ins().iadd(bits, low);
    let rounded = g.b.ins().ushr_imm_u(sum, 16);
    let nearest = narrow_bf16(g, x);
    let mag = and(g, bits, 0x7FFF_FFFF);
    let special = icmp(g, IntCC::SignedGreaterThan, mag, 0x7F7F_FFFF);
    pick(g, special, nearest, rounded)
}

/// `x` rounded to f16, to nearest even, as `narrow_f16` (F. Giesen's `float_to_half_fast3_rtne`,
/// with a NaN's payload kept as `half` keeps it): the bits in each i32 lane's low half.
pub(super) fn narrow_f16(g: &mut Gen, x: Value) -> Value {
    let bits = g.cast(I32X4, x);
    let sign = g.b.ins().ushr_imm_u(bits, 16);
    let sign = and(g, sign, 0x8000);
    let f = and(g, bits, 0x7FFF_FFFF);
    // Infinity (every f32 of magnitude >= 65536) or NaN (quiet, payload kept).
    let payload = g.b.ins().ushr_imm_u(f, 13);
    let payload = and(g, payload, 0x3FF);
    let nan = g.i32s(0x7E00);
    let nan = g.b.ins().bor(nan, payload);
    let is_nan = icmp(g, IntCC::SignedGreaterThan, f, 0x7F80_0000);
    let inf = g.i32s(0x7C00);
    let special = pick(g, is_nan, nan, inf);
    // Subnormal or zero results: the float add rounds to nearest even at the f16 ulp.
    let ff = g.cast(F32X4, f);
    let magic = g.f32s(f32::from_bits(126 << 23));
    let sum = g.b.ins().fadd(ff, magic);
    let sum = g.cast(I32X4, sum);
    let sub = add(g, sum, -(126 << 23));
    // Normal results: rebias the exponent and round to nearest even in integer arithmetic.
    let odd = g.b.ins().ushr_imm_u(f, 13);
    let odd = and(g, odd, 1);
    let n = add(g, f, ((15 - 127) << 23) + 0xFFF);
    let n = g.b.ins().iadd(n, odd);
    let normal = g.b.ins().ushr_imm_u(n, 13);
    let is_sub = icmp(g, IntCC::SignedLessThan, f, 113 << 23);
    let finite = pick(g, is_sub, sub, normal);
    let is_special = icmp(g, IntCC::SignedGreaterThan, f, ((127 + 16) << 23) - 1);
    let mag = pick(g, is_special, special, finite);
    g.b.ins().bor(mag, sign)
}

/// `x` rounded to f16 stochastically with the random words `r`, as `narrow_f16_stochastic`:
/// between the f16 neighbours `lo` (toward zero) and `hi` of `x`, `hi` when `(r >> 8)` is below
/// `floor(2^24 · (|x| - |lo|) / (|hi| - |lo|))`. Every f32 step of that is exact: the difference
/// (the neighbours are within a factor of two of `x`, or zero), and the division and product by
/// powers of two.
pub(super) fn narrow_f16_stochastic(g: &mut Gen, x: Value, r: Value) -> Value {
    let bits = g.cast(I32X4, x);
    let near = narrow_f16(g, x);
    let near_f = widen_f16(g, near);
    let sign = g.b.ins().ushr_imm_u(bits, 16);
    let sign = and(g, sign, 0x8000);
    let nm = and(g, near, 0x7FFF);
    let ax = g.b.ins().fabs(x);
    let anf = g.b.ins().fabs(near_f);
    let above = g.cmp(FloatCC::GreaterThan, anf, ax);
    let above = g.cast(I32X4, above);
    let nm_dec = add(g, nm, -1);
    let nm_inc = add(g, nm, 1);
    let lo_mag = pick(g, above, nm_dec, nm);
    let hi_mag = pick(g, above, nm, nm_inc);
    let lo = widen_f16(g, lo_mag);
    let hi = widen_f16(g, hi_mag);
    let gap = g.b.ins().fsub(hi, lo);
    let d = g.b.ins().fsub(ax, lo);
    let frac = g.b.ins().fdiv(d, gap);
    let scale = g.f32s(16_777_216.0);
    let t = g.b.ins().fmul(frac, scale);
    let threshold = g.b.ins().fcvt_to_sint_sat(I32X4, t);
    let rr = g.b.ins().ushr_imm_u(r, 8);
    let up = g.b.ins().icmp(IntCC::SignedLessThan, rr, threshold);
    let mag = pick(g, up, hi_mag, lo_mag);
    // Between 65504 and the overflow threshold: 65504.
    let edge = icmp(g, IntCC::SignedGreaterThan, hi_mag, 0x7BFF);
    let mag = pick(g, edge, lo_mag, mag);
    let res = g.b.ins().bor(mag, sign);
    // A value f16 holds, an infinity from rounding to nearest, infinities and NaN: to nearest.
    let exact = g.cmp(FloatCC::Equal, near_f, x);
    let exact = g.cast(I32X4, exact);
    let near_inf = icmp(g, IntCC::Equal, nm, 0x7C00);
    let fmag = and(g, bits, 0x7FFF_FFFF);
    let special = icmp(g, IntCC::SignedGreaterThan, fmag, 0x7F7F_FFFF);
    let keep = g.b.ins().bor(exact, near_inf);
    let keep = g.b.ins().bor(keep, special);
    pick(g, keep, near, res)
}

/// `lowbias32` in every lane.
fn lowbias32(g: &mut Gen, x: Value) -> Value {
    let s = g.b.ins().ushr_imm_u(x, 16);
    let x = g.b.ins().bxor(x, s);
    let m = g.i32s(0x7feb_352d);
    let x = g.b.ins().imul(x, m);
    let s = g.b.ins().ushr_imm_u(x, 15);
    let x = g.b.ins().bxor(x, s);
    let m = g.i32s(0x846c_a68b_u32 as i32);
    let x = g.b.ins().imul(x, m);
    let s = g.b.ins().ushr_imm_u(x, 16);
    g.b.ins().bxor(x, s)
}

/// `sr_bits(key, e)` for the four elements `e = first, first + 1, first + 2, first + 3`: `key` an
/// i32x4 splat, `first` an i64 element index.
pub(super) fn sr_bits(g: &mut Gen, key: Value, first: Value) -> Value {
    let lo = g.b.ins().ireduce(I32, first);
    let hi = g.b.ins().ushr_imm_u(first, 32);
    let hi = g.b.ins().ireduce(I32, hi);
    let lo0 = g.b.ins().splat(I32X4, lo);
    let bytes: Vec<u8> = (0u32..4).flat_map(u32::to_le_bytes).collect();
    let c = g.b.func.dfg.constants.insert(ConstantData::from(bytes));
    let lanes = g.b.ins().vconst(I32X4, c);
    let lo4 = g.b.ins().iadd(lo0, lanes);
    // A lane past a 2^32 boundary carries into the high half.
    let carry = g.b.ins().icmp(IntCC::UnsignedLessThan, lo4, lo0);
    let hi4 = g.b.ins().splat(I32X4, hi);
    let hi4 = g.b.ins().isub(hi4, carry);
    let a = g.b.ins().bxor(lo4, key);
    let a = lowbias32(g, a);
    let a = g.b.ins().bxor(a, hi4);
    lowbias32(g, a)
}

/// The stochastic-rounding key (an i32x4 splat) and the index of the first element of the call
/// (an i64), from the three uniform words after the stage's `nu` uniforms.
pub(super) fn sr_args(g: &mut Gen, uniforms: Value, nu: usize) -> (Value, Value) {
    let off = |k: usize| i32::try_from(4 * (nu + k)).unwrap_or(i32::MAX);
    let key =
        g.b.ins()
            .load(I32, MemFlagsData::trusted(), uniforms, off(0));
    let key = g.b.ins().splat(I32X4, key);
    let lo = g.b.ins().uload32(MemFlagsData::trusted(), uniforms, off(1));
    let hi = g.b.ins().uload32(MemFlagsData::trusted(), uniforms, off(2));
    let hi = g.b.ins().ishl_imm_u(hi, 32);
    let base = g.b.ins().bor(lo, hi);
    debug_assert_eq!(g.b.func.dfg.value_type(base), I64);
    (key, base)
}
