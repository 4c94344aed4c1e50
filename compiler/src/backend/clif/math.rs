//! `exp`, `log` and `pow` on f32x4 without libcalls.
//!
//! Each f32x4 is widened to two f64x2 halves; the function is evaluated in f64 with a range
//! reduction and a polynomial whose truncation error is far below f32 resolution, and the result
//! is rounded back to f32 once. So the f32 result is the correctly rounded value except when the
//! exact value lies within about 2^-40 (relative) of a rounding boundary.
//!
//! - `exp(x)`: `n = round(x / ln 2)`, `r = x - n ln 2` (`|r| <= 0.347`), `e^r` by its Taylor
//!   polynomial of degree 10 (truncation `< 2^-42` relative), times `2^n` built in the exponent
//!   bits. `x` is clamped to `[-120, 100]` first, which keeps `2^n` a normal f64 and still
//!   rounds to `0` / `inf` in f32 exactly where `expf` does.
//! - `log(x)`: `x = m 2^e` with `m` in `[sqrt(1/2), sqrt(2))` (subnormals scaled by `2^23`
//!   first), `s = (m - 1) / (m + 1)` (`|s| <= 0.1716`), `ln m = 2 atanh(s)` by its series up to
//!   `s^15` (truncation `< 2^-39` relative), plus `e ln 2`. `log(0) = -inf`, `log(x < 0) = NaN`,
//!   `log(inf) = inf`, `log(NaN) = NaN`.
//! - `pow(x, y)`: `exp(y ln|x|)` evaluated as above (the product in f64, so no error
//!   amplification for large `|y ln|x||`), then the C99 special cases: `pow(x, ±0) = 1`,
//!   `pow(1, y) = 1`, `pow(-1, ±inf) = 1`, sign for negative `x` (and `-0`, `-inf`) with odd
//!   integer `y`, NaN for finite negative `x` with non-integer `y`.
//! - `pow(x, n)` with a constant integer `|n| <= 8`: square-and-multiply (`1 / x` first when
//!   `n < 0`): at most 4 multiplies; `n = 0, 1, 2, -1` are exact (one rounding or none).
//!
//! Measured against Rust's `f32::exp`, `ln`, `powf` (glibc), see `compiler/tests/clif_*` and
//! `runtime/tests/cpu_*` (`ULP_BUDGET_*`): `exp`, `log` at most 1 ulp; general `pow` at most
//! 1 ulp; integer `pow` at most 2 ulp for `|n| <= 8`.

use super::gen::Gen;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32X4, F64X2, I32X4, I64X2};
use cranelift_codegen::ir::{InstBuilder, Value};

/// The largest `|n|` for which `pow(x, n)` with a constant integer `n` is a multiply chain.
pub const MAX_POWI: i32 = 8;

/// `c` as an exponent for [`powi`], when it is an integer with `|c| <= MAX_POWI`.
pub fn small_int(c: f64) -> Option<i32> {
    (c == c.trunc() && c.abs() <= f64::from(MAX_POWI)).then_some(c as i32)
}

const LN2: f64 = std::f64::consts::LN_2;
const LOG2E: f64 = std::f64::consts::LOG2_E;
/// `1.5 * 2^52`: adding it rounds an f64 of magnitude `< 2^51` to an integer in the low bits.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

/// Horner's rule: `c[0] + x (c[1] + x (c[2] + ...))`, on f64x2.
fn horner(g: &mut Gen, x: Value, coeffs: &[f64]) -> Value {
    let mut iter = coeffs.iter().rev();
    let last = iter.next().copied().unwrap_or(0.0);
    let mut p = g.f64s(last);
    for &c in iter {
        let cv = g.f64s(c);
        let px = g.b.ins().fmul(p, x);
        p = g.b.ins().fadd(px, cv);
    }
    p
}

/// `e^z` on f64x2 (accurate to about 2^-42 relative; see the module docs).
fn exp_f64(g: &mut Gen, z: Value) -> Value {
    let (hi, lo) = (g.f64s(100.0), g.f64s(-120.0));
    let over = g.cmp(FloatCC::GreaterThan, z, hi);
    let z = g.sel(over, hi, z);
    let under = g.cmp(FloatCC::LessThan, z, lo);
    let z = g.sel(under, lo, z);
    let (log2e, magic, ln2) = (g.f64s(LOG2E), g.f64s(ROUND_MAGIC), g.f64s(LN2));
    let zl = g.b.ins().fmul(z, log2e);
    let t = g.b.ins().fadd(zl, magic);
    let nf = g.b.ins().fsub(t, magic);
    let nl = g.b.ins().fmul(nf, ln2);
    let r = g.b.ins().fsub(z, nl);
    let mut coeffs = [1.0f64; 11];
    for k in 1..coeffs.len() {
        coeffs[k] = coeffs[k - 1] / k as f64;
    }
    let p = horner(g, r, &coeffs);
    let t_bits = g.cast(I64X2, t);
    let bias = g.i64s(1023 - ROUND_MAGIC.to_bits() as i64);
    let biased = g.b.ins().iadd(t_bits, bias);
    let scale_bits = g.b.ins().ishl_imm_u(biased, 52);
    let scale = g.cast(F64X2, scale_bits);
    g.b.ins().fmul(p, scale)
}

/// `x = m 2^e` for f32x4 `x > 0`, with `m` in `[sqrt(1/2), sqrt(2))` and `e` an integer, both as
/// f32x4 (exact). Lanes with `x <= 0`, inf or NaN get meaningless values.
fn split(g: &mut Gen, x: Value) -> (Value, Value) {
    let (tiny, two23) = (g.f32s(f32::MIN_POSITIVE), g.f32s(8_388_608.0));
    let sub = g.cmp(FloatCC::LessThan, x, tiny);
    let scaled = g.b.ins().fmul(x, two23);
    let x = g.sel(sub, scaled, x);
    let bits = g.cast(I32X4, x);
    let exp_field = g.b.ins().ushr_imm_u(bits, 23);
    let (ff, bias) = (g.i32s(0xff), g.i32s(127));
    let exp_field = g.b.ins().band(exp_field, ff);
    let ei = g.b.ins().isub(exp_field, bias);
    let (mant_mask, one_bits) = (g.i32s(0x007f_ffff), g.i32s(0x3f80_0000));
    let mant = g.b.ins().band(bits, mant_mask);
    let mant = g.b.ins().bor(mant, one_bits);
    let m = g.cast(F32X4, mant);
    let e = g.b.ins().fcvt_from_sint(F32X4, ei);
    let (minus23, zero) = (g.f32s(-23.0), g.f32s(0.0));
    let adj = g.sel(sub, minus23, zero);
    let e = g.b.ins().fadd(e, adj);
    let (sqrt2, half, one) = (g.f32s(std::f32::consts::SQRT_2), g.f32s(0.5), g.f32s(1.0));
    let big = g.cmp(FloatCC::GreaterThan, m, sqrt2);
    let mh = g.b.ins().fmul(m, half);
    let m = g.sel(big, mh, m);
    let inc = g.sel(big, one, zero);
    let e = g.b.ins().fadd(e, inc);
    (m, e)
}

/// `ln x` on one f64x2 half, from the half of `x`, `m` and `e` (see [`split`]).
fn ln_f64(g: &mut Gen, x: Value, m: Value, e: Value) -> Value {
    let one = g.f64s(1.0);
    let num = g.b.ins().fsub(m, one);
    let den = g.b.ins().fadd(m, one);
    let s = g.b.ins().fdiv(num, den);
    let z = g.b.ins().fmul(s, s);
    let coeffs: Vec<f64> = (0..8).map(|k| 1.0 / f64::from(2 * k + 1)).collect();
    let p = horner(g, z, &coeffs);
    let s2 = g.b.ins().fadd(s, s);
    let lnm = g.b.ins().fmul(s2, p);
    let ln2 = g.f64s(LN2);
    let el = g.b.ins().fmul(e, ln2);
    let r = g.b.ins().fadd(el, lnm);
    let (inf, ninf, nan, zero) = (
        g.f64s(f64::INFINITY),
        g.f64s(f64::NEG_INFINITY),
        g.f64s(f64::NAN),
        g.f64s(0.0),
    );
    let is_inf = g.cmp(FloatCC::Equal, x, inf);
    let r = g.sel(is_inf, inf, r);
    let is_zero = g.cmp(FloatCC::Equal, x, zero);
    let r = g.sel(is_zero, ninf, r);
    let not_neg = g.cmp(FloatCC::GreaterThanOrEqual, x, zero);
    g.sel(not_neg, r, nan)
}

/// `exp(x)` on f32x4.
pub(super) fn exp(g: &mut Gen, x: Value) -> Value {
    let (lo, hi) = g.widen(x);
    let lo = exp_f64(g, lo);
    let hi = exp_f64(g, hi);
    g.narrow(lo, hi)
}

/// `ln|x|` (or `ln x`) on f32x4 as two f64x2 halves.
fn ln_halves(g: &mut Gen, x: Value) -> (Value, Value) {
    let (m, e) = split(g, x);
    let (x0, x1) = g.widen(x);
    let (m0, m1) = g.widen(m);
    let (e0, e1) = g.widen(e);
    (ln_f64(g, x0, m0, e0), ln_f64(g, x1, m1, e1))
}

/// `log(x)` on f32x4.
pub(super) fn log(g: &mut Gen, x: Value) -> Value {
    let (lo, hi) = ln_halves(g, x);
    g.narrow(lo, hi)
}

/// `pow(x, y)` on f32x4, with the special cases of C99 `powf`.
pub(super) fn pow(g: &mut Gen, x: Value, y: Value) -> Value {
    let ax = g.b.ins().fabs(x);
    let (l0, l1) = ln_halves(g, ax);
    let (y0, y1) = g.widen(y);
    let z0 = g.b.ins().fmul(y0, l0);
    let z1 = g.b.ins().fmul(y1, l1);
    let r0 = exp_f64(g, z0);
    let r1 = exp_f64(g, z1);
    let r = g.narrow(r0, r1);

    // Is `y` an integer, an odd one? `|y| >= 2^23` is an even integer (or inf); below, adding
    // 2^23 rounds to an integer whose parity is the lowest mantissa bit.
    let ay = g.b.ins().fabs(y);
    let two23 = g.f32s(8_388_608.0);
    let big = g.cmp(FloatCC::GreaterThanOrEqual, ay, two23);
    let t = g.b.ins().fadd(ay, two23);
    let rounded = g.b.ins().fsub(t, two23);
    let integral = g.cmp(FloatCC::Equal, rounded, ay);
    let is_int = g.b.ins().bor(big, integral);
    let t_bits = g.cast(I32X4, t);
    let one_i = g.i32s(1);
    let low = g.b.ins().band(t_bits, one_i);
    let odd_bit = g.b.ins().icmp(IntCC::Equal, low, one_i);
    let small_int = g.b.ins().band_not(integral, big);
    let odd = g.b.ins().band(small_int, odd_bit);

    // Negative base (sign bit set, including -0 and -inf) with an odd exponent: negative result.
    let x_bits = g.cast(I32X4, x);
    let zero_i = g.i32s(0);
    let x_neg_sign = g.b.ins().icmp(IntCC::SignedLessThan, x_bits, zero_i);
    let flip = g.b.ins().band(x_neg_sign, odd);
    let neg_r = g.b.ins().fneg(r);
    let r = g.sel(flip, neg_r, r);

    // Finite negative base with a non-integer exponent: NaN.
    let (zero, ninf, nan, one, inf) = (
        g.f32s(0.0),
        g.f32s(f32::NEG_INFINITY),
        g.f32s(f32::NAN),
        g.f32s(1.0),
        g.f32s(f32::INFINITY),
    );
    let lt0 = g.cmp(FloatCC::LessThan, x, zero);
    let finite = g.cmp(FloatCC::GreaterThan, x, ninf);
    let neg_finite = g.b.ins().band(lt0, finite);
    let bad = g.b.ins().band_not(neg_finite, is_int);
    let r = g.sel(bad, nan, r);

    // pow(±1, ±inf) = 1, pow(1, y) = 1, pow(x, ±0) = 1.
    let ax_one = g.cmp(FloatCC::Equal, ax, one);
    let ay_inf = g.cmp(FloatCC::Equal, ay, inf);
    let unit_inf = g.b.ins().band(ax_one, ay_inf);
    let x_one = g.cmp(FloatCC::Equal, x, one);
    let y_zero = g.cmp(FloatCC::Equal, y, zero);
    let ones = g.b.ins().bor(x_one, y_zero);
    let ones = g.b.ins().bor(ones, unit_inf);
    g.sel(ones, one, r)
}

/// `pow(x, n)` for a constant integer `n` with `|n| <= MAX_POWI` (see [`small_int`]).
pub(super) fn powi(g: &mut Gen, x: Value, n: i32) -> Value {
    if n == 0 {
        return g.f32s(1.0);
    }
    let mut base = if n < 0 {
        let one = g.f32s(1.0);
        g.b.ins().fdiv(one, x)
    } else {
        x
    };
    let mut k = n.unsigned_abs();
    let mut acc: Option<Value> = None;
    loop {
        if k & 1 == 1 {
            acc = Some(match acc {
                Some(a) => g.b.ins().fmul(a, base),
                None => base,
            });
        }
        k >>= 1;
        if k == 0 {
            break;
        }
        base = g.b.ins().fmul(base, base);
    }
    acc.unwrap_or(base)
}
