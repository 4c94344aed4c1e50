//! f32 arithmetic with the PTX ISA's semantics.
//!
//! `.rn` ops are IEEE round-to-nearest-even (Rust's f32 ops, `f32::mul_add` for `fma.rn`,
//! `f32::sqrt`); `.ftz` flushes subnormal inputs and results to a zero of the same sign. The
//! `.approx`/`.full` ops are computed exactly (in f64, rounded once to f32): the hardware is
//! within the error PTX documents of that (ex2 2 ulp, lg2 2^-22 absolute near 1, rsqrt/sqrt
//! approx 1-2 ulp, div.full 2 ulp), so a module that uses them can only be compared within a
//! budget, never bit for bit.

use super::parse::{Cmp, Rnd, Ty, F1, F2};

/// A subnormal `x` flushed to a zero of its sign, when `ftz`.
pub fn flush(ftz: bool, x: f32) -> f32 {
    if ftz && x.is_subnormal() {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

/// The canonical NaN PTX returns from arithmetic.
const NAN: f32 = f32::from_bits(0x7FFF_FFFF);

pub fn unary(op: F1, ftz: bool, x: f32) -> f32 {
    // neg/abs are sign-bit operations (with .ftz the input is flushed first).
    let x = flush(ftz, x);
    let r = match op {
        F1::Neg => return f32::from_bits(x.to_bits() ^ 0x8000_0000),
        F1::Abs => return f32::from_bits(x.to_bits() & 0x7FFF_FFFF),
        F1::SqrtRn => x.sqrt(),
        F1::SqrtApprox => (x as f64).sqrt() as f32,
        F1::RcpRn => 1.0 / x,
        F1::RcpApprox => (1.0 / x as f64) as f32,
        F1::RsqrtApprox => (1.0 / (x as f64).sqrt()) as f32,
        F1::Ex2Approx => (x as f64).exp2() as f32,
        F1::Lg2Approx => (x as f64).log2() as f32,
    };
    flush(ftz, r)
}

pub fn binary(op: F2, ftz: bool, nan: bool, x: f32, y: f32) -> f32 {
    let (x, y) = (flush(ftz, x), flush(ftz, y));
    let r = match op {
        F2::Add => x + y,
        F2::Sub => x - y,
        F2::Mul => x * y,
        F2::DivRn => x / y,
        F2::DivApprox | F2::DivFull => (x as f64 / y as f64) as f32,
        F2::Min | F2::Max => {
            if x.is_nan() || y.is_nan() {
                if nan || (x.is_nan() && y.is_nan()) {
                    NAN
                } else if x.is_nan() {
                    y
                } else {
                    x
                }
            } else if x == y {
                // Which zero min/max give for +0 and -0 is not something optc relies on (its
                // lowering fixes the sign itself): the emulator returns the first operand, so a
                // lowering that forgot the fix-up shows.
                x
            } else if (x < y) == (op == F2::Min) {
                x
            } else {
                y
            }
        }
        // copysign d, a, b: b's magnitude with a's sign.
        F2::Copysign => f32::from_bits((y.to_bits() & 0x7FFF_FFFF) | (x.to_bits() & 0x8000_0000)),
    };
    if r.is_nan() && !matches!(op, F2::Copysign | F2::Min | F2::Max) {
        return NAN;
    }
    flush(ftz, r)
}

pub fn compare(cmp: Cmp, a: f64, b: f64) -> bool {
    let unordered = a.is_nan() || b.is_nan();
    match cmp {
        Cmp::Eq => a == b,
        Cmp::Ne => !unordered && a != b,
        Cmp::Lt => a < b,
        Cmp::Le => a <= b,
        Cmp::Gt => a > b,
        Cmp::Ge => a >= b,
        Cmp::Equ => unordered || a == b,
        Cmp::Neu => a != b,
        Cmp::Ltu => unordered || a < b,
        Cmp::Leu => unordered || a <= b,
        Cmp::Gtu => unordered || a > b,
        Cmp::Geu => unordered || a >= b,
        Cmp::Num => !unordered,
        Cmp::Nan => unordered,
    }
}

fn round_int(r: Option<Rnd>, x: f64) -> Result<f64, String> {
    Ok(match r {
        Some(Rnd::Rni) => x.round_ties_even(),
        Some(Rnd::Rzi) => x.trunc(),
        Some(Rnd::Rmi) => x.floor(),
        Some(Rnd::Rpi) => x.ceil(),
        other => {
            return Err(format!(
                "float-to-integer cvt needs an integer rounding, got {other:?}"
            ))
        }
    })
}

/// `cvt.dst.src` of the raw bits `v`.
pub fn convert(
    dst: Ty,
    src: Ty,
    rnd: Option<Rnd>,
    ftz: bool,
    sat: bool,
    v: u64,
) -> Result<u64, String> {
    use optc_kernel::dtype::{narrow_bf16, narrow_f16, widen_bf16, widen_f16};
    if sat && !(dst == Ty::F32 && src == Ty::F32) {
        return Err(".sat conversions other than f32.f32 are not emulated".into());
    }
    // The source as f64 (exact for every source type but u64/s64 beyond 2^53, handled apart).
    let as_f = |v: u64| -> f64 {
        match src {
            Ty::F32 => flush(ftz, f32::from_bits(v as u32)) as f64,
            Ty::F64 => f64::from_bits(v),
            Ty::F16 => widen_f16(v as u16) as f64,
            Ty::Bf16 => widen_bf16(v as u16) as f64,
            _ => f64::NAN,
        }
    };
    Ok(match (dst.is_float(), src.is_float()) {
        (false, false) => {
            if rnd.is_some() {
                return Err("integer-to-integer cvt with a rounding modifier".into());
            }
            let n = src.bytes();
            let wide = if src.signed() {
                let s = 64 - 8 * n as u32;
                (((v << s) as i64) >> s) as u64
            } else if n == 8 {
                v
            } else {
                v & ((1u64 << (8 * n)) - 1)
            };
            match dst.bytes() {
                8 => wide,
                m => wide & ((1u64 << (8 * m)) - 1),
            }
        }
        (false, true) => {
            let x = round_int(rnd, as_f(v))?;
            // PTX float-to-integer conversions saturate, NaN gives 0 (as Rust's `as`).
            match dst {
                Ty::U8 => x as u8 as u64,
                Ty::U16 => x as u16 as u64,
                Ty::U32 => x as u32 as u64,
                Ty::U64 => x as u64,
                Ty::S8 => x as i8 as u8 as u64,
                Ty::S16 => x as i16 as u16 as u64,
                Ty::S32 => x as i32 as u32 as u64,
                Ty::S64 => x as i64 as u64,
                _ => return Err(format!("cvt to .{dst:?}")),
            }
        }
        (true, false) => {
            if rnd != Some(Rnd::Rn) {
                return Err(format!(
                    "integer-to-float cvt with rounding {rnd:?} is not emulated"
                ));
            }
            let n = src.bytes();
            let f: f32 = if src.signed() {
                let s = 64 - 8 * n as u32;
                (((v << s) as i64) >> s) as f32
            } else {
                let m = if n == 8 {
                    v
                } else {
                    v & ((1u64 << (8 * n)) - 1)
                };
                m as f32
            };
            match dst {
                Ty::F32 => f.to_bits() as u64,
                _ => return Err(format!("integer-to-.{dst:?} cvt is not emulated")),
            }
        }
        (true, true) => {
            let x = as_f(v);
            match (dst, src) {
                (Ty::F32, Ty::F32) => {
                    let mut r = flush(ftz, f32::from_bits(v as u32));
                    if let Some(rnd) = rnd {
                        r = round_int(Some(rnd), r as f64)
                            .map(|y| y as f32)
                            .map_err(|_| format!("cvt.f32.f32 with {rnd:?}"))?;
                    }
                    if sat {
                        r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
                    }
                    r.to_bits() as u64
                }
                (Ty::F32, Ty::F16 | Ty::Bf16) if rnd.is_none() => (x as f32).to_bits() as u64,
                (Ty::F64, Ty::F32) if rnd.is_none() => x.to_bits(),
                (Ty::F32, Ty::F64) if rnd == Some(Rnd::Rn) => flush(ftz, x as f32).to_bits() as u64,
                (Ty::F16, Ty::F32) if rnd == Some(Rnd::Rn) => narrow_f16(x as f32) as u64,
                (Ty::Bf16, Ty::F32) if rnd == Some(Rnd::Rn) => narrow_bf16(x as f32) as u64,
                _ => return Err(format!("cvt.{rnd:?}.{dst:?}.{src:?} is not emulated")),
            }
        }
    })
}
