//! Storage dtypes: how a buffer's values are kept in memory, and the one definition of every
//! conversion between a stored value and the f32 arithmetic of a kernel body.
//!
//! Arithmetic is always f32 in a body (f64 on the host). A load widens the stored value to f32
//! exactly; a store narrows the f32 result:
//!
//! - by **round to nearest, ties to even** ([`narrow_bf16`], [`narrow_f16`]), the default, which is
//!   what torch's `Tensor.to(torch.bfloat16)` and `.to(torch.float16)` do (checked bit for bit
//!   against torch by `tests/dtypes.rs`);
//! - or by **stochastic rounding** ([`narrow_bf16_stochastic`], [`narrow_f16_stochastic`]): the
//!   value rounds away from zero with probability equal to its distance from the value below (in
//!   magnitude) over the gap between the two neighbours, so the rounding is unbiased. The random
//!   bits come from [`sr_bits`], a counter-based hash of (seed, step, tensor, element): no RNG
//!   state is kept, and every backend computes the same bits.
//!
//! Infinities and NaN stay what they are (a NaN stays a NaN; its payload is not kept), and the
//! sign of zero is kept. `int8` block quantization is in [`crate::quant`].

use serde::{Deserialize, Serialize};

/// How a buffer's values are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    /// IEEE binary32.
    #[default]
    F32,
    /// bfloat16: the top 16 bits of an f32.
    Bf16,
    /// IEEE binary16.
    F16,
    /// 8-bit codes into a dynamic map, in blocks of [`crate::quant::QUANT_BLOCK`] values with one
    /// f32 absmax scale per block (states only; see [`crate::quant`]).
    Int8,
}

impl Dtype {
    /// Every dtype, in the order of the `--*-dtype` help texts.
    pub const ALL: [Dtype; 4] = [Dtype::F32, Dtype::Bf16, Dtype::F16, Dtype::Int8];

    /// Its name on the command line and in files (`f32`, `bf16`, `f16`, `int8`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
            Dtype::Int8 => "int8",
        }
    }

    /// The dtype called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bytes of memory per stored value, the block scales of `int8` included.
    pub fn bytes_per_value(self) -> f64 {
        match self {
            Dtype::F32 => 4.0,
            Dtype::Bf16 | Dtype::F16 => 2.0,
            Dtype::Int8 => 1.0 + 4.0 / crate::quant::QUANT_BLOCK as f64,
        }
    }
}

impl Dtype {
    /// `x` rounded to this dtype to nearest, ties to even, as an f32 (the value a store keeps and
    /// a later load gives back): `x` itself for f32 and int8 (whose rounding is per block, in
    /// [`crate::quant`]).
    pub fn round(self, x: f32) -> f32 {
        match self {
            Dtype::Bf16 => widen_bf16(narrow_bf16(x)),
            Dtype::F16 => widen_f16(narrow_f16(x)),
            Dtype::F32 | Dtype::Int8 => x,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The f32 value of the bf16 with bits `b` (exact).
pub fn widen_bf16(b: u16) -> f32 {
    half::bf16::from_bits(b).to_f32()
}

/// The f32 value of the f16 with bits `b` (exact).
pub fn widen_f16(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

/// `x` rounded to the nearest bf16, ties to even; the bits.
pub fn narrow_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// `x` rounded to the nearest f16, ties to even (overflow gives an infinity); the bits.
pub fn narrow_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// `x` rounded stochastically to bf16 with the random bits `r` (see [`sr_bits`]).
///
/// The low 16 bits of `r` are added to the low 16 bits of `x`'s f32 encoding, and the result is
/// truncated: `x` rounds away from zero exactly when `r mod 2^16 >= 2^16 - (x's low 16 bits)`,
/// which for uniform `r` has probability `(x's low 16 bits) / 2^16`, the fraction of the gap
/// `x` lies above the bf16 below it (in magnitude). A value that is already a bf16 is kept.
/// Rounding up past the largest finite bf16 gives an infinity, as rounding to nearest would.
pub fn narrow_bf16_stochastic(x: f32, r: u32) -> u16 {
    if !x.is_finite() {
        return narrow_bf16(x);
    }
    let bits = x.to_bits();
    // The carry out of the low half moves the magnitude up by one bf16 ulp (or into the next
    // binade, or to infinity); the sign bit is never reached, since |x| is finite.
    (bits.wrapping_add(r & 0xFFFF) >> 16) as u16
}

/// `x` rounded stochastically to f16 with the random bits `r` (see [`sr_bits`]).
///
/// With `lo` and `hi` the f16 values on either side of `x` (`lo` toward zero), `x` rounds to `hi`
/// when `(r >> 8) < ((|x| - |lo|) / (|hi| - |lo|)) · 2^24` (the fraction is exact in f64, and
/// rounded down to a multiple of 2^-24), else to `lo`. Past the largest finite f16 (65504), `hi`
/// is infinity, taken when `x` is beyond the rounding-to-nearest overflow threshold (65520), as
/// round to nearest does.
pub fn narrow_f16_stochastic(x: f32, r: u32) -> u16 {
    if !x.is_finite() {
        return narrow_f16(x);
    }
    let near = half::f16::from_f32(x);
    let near_f = near.to_f32();
    if near_f == x {
        return near.to_bits();
    }
    let ax = x.abs();
    let sign = if x.is_sign_negative() { 0x8000 } else { 0 };
    if near.is_infinite() {
        return near.to_bits();
    }
    // The magnitudes of the two neighbours, as f16 bit patterns (monotone in magnitude).
    let near_mag = near.to_bits() & 0x7FFF;
    let (lo_mag, hi_mag) = if near_f.abs() > ax {
        (near_mag - 1, near_mag)
    } else {
        (near_mag, near_mag + 1)
    };
    let lo = half::f16::from_bits(lo_mag).to_f32() as f64;
    let hi = half::f16::from_bits(hi_mag).to_f32() as f64;
    if hi_mag >= 0x7C00 {
        // |x| is between 65504 and the overflow threshold: round to nearest keeps 65504.
        return sign | lo_mag;
    }
    let frac = (ax as f64 - lo) / (hi - lo);
    let threshold = (frac * (1u64 << 24) as f64) as u64;
    if u64::from(r >> 8) < threshold {
        sign | hi_mag
    } else {
        sign | lo_mag
    }
}

/// The 32-bit finalizer of Chris Wellons' "lowbias32" hash: a bijection on `u32` with low bias.
pub fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// SplitMix64's finalizer, for the per-tensor key on the host.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of one tensor at one step, computed on the host and passed to a kernel as a uniform:
/// a hash of the user's seed, the step count and the tensor's index in the optimizer.
pub fn sr_key(seed: u64, step: u64, tensor: u64) -> u32 {
    (mix64(mix64(mix64(seed) ^ step) ^ tensor.wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 32) as u32
}

/// The random bits for element `element` of the tensor whose key is `key` (see [`sr_key`]):
/// `lowbias32(lowbias32(lo ^ key) ^ hi)` with `lo` and `hi` the two halves of the element index.
/// Two 32-bit hashes per element: cheap in SIMD lanes and on a GPU, where 64-bit multiplies are
/// not.
pub fn sr_bits(key: u32, element: u64) -> u32 {
    lowbias32(lowbias32(element as u32 ^ key) ^ (element >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::from_name(d.name()), Some(d));
        }
        assert_eq!(Dtype::from_name("fp32"), None);
    }

    #[test]
    fn bf16_stochastic_keeps_representable_values_and_brackets_the_others() {
        for x in [1.0f32, -2.5, 0.0, -0.0, 3.0e38, 1.0e-40] {
            let b = narrow_bf16(x);
            if widen_bf16(b) == x {
                for r in [0, 1, 0xFFFF, 0xDEAD_BEEF] {
                    assert_eq!(narrow_bf16_stochastic(x, r), b, "{x}");
                }
            }
        }
        let x = 1.0f32 + f32::EPSILON * 3.0;
        let down = widen_bf16(narrow_bf16_stochastic(x, 0));
        let up = widen_bf16(narrow_bf16_stochastic(x, 0xFFFF));
        assert_eq!(down, 1.0);
        assert!(up > x && up - 1.0 == 2f32.powi(-7), "{up}");
        assert_eq!(widen_bf16(narrow_bf16_stochastic(-x, 0xFFFF)), -up);
    }

    #[test]
    fn f16_stochastic_brackets_and_handles_the_overflow_edge() {
        let x = 1.0f32 + 2f32.powi(-12); // a quarter of the f16 ulp above 1
        assert_eq!(widen_f16(narrow_f16_stochastic(x, 0)), 1.0 + 2f32.powi(-10));
        assert_eq!(widen_f16(narrow_f16_stochastic(x, u32::MAX)), 1.0);
        assert_eq!(
            widen_f16(narrow_f16_stochastic(-x, 0)),
            -(1.0 + 2f32.powi(-10))
        );
        assert_eq!(widen_f16(narrow_f16_stochastic(65510.0, 0)), 65504.0);
        assert!(widen_f16(narrow_f16_stochastic(70000.0, u32::MAX)).is_infinite());
        assert!(widen_f16(narrow_f16_stochastic(f32::NAN, 7)).is_nan());
        // Below the smallest f16 subnormal (2^-24): either 0 or 2^-24.
        let tiny = 2f32.powi(-26);
        assert_eq!(widen_f16(narrow_f16_stochastic(tiny, u32::MAX)), 0.0);
        assert_eq!(widen_f16(narrow_f16_stochastic(tiny, 0)), 2f32.powi(-24));
    }

    #[test]
    fn the_hash_has_no_visible_bias() {
        // Mean and per-bit frequency over 2^16 consecutive elements of one key: the mean of
        // uniform 32-bit values is 2^31 with a standard error of about 2^32 / sqrt(12 * 2^16)
        // ≈ 4.8e6, and each bit is set half the time (standard error 0.002).
        let key = sr_key(1234, 7, 3);
        let n = 1u64 << 16;
        let mut sum = 0f64;
        let mut ones = [0u32; 32];
        for e in 0..n {
            let r = sr_bits(key, e);
            sum += r as f64;
            for (b, c) in ones.iter_mut().enumerate() {
                *c += (r >> b) & 1;
            }
        }
        let mean = sum / n as f64;
        assert!((mean - 2f64.powi(31)).abs() < 5.0 * 4.8e6, "{mean}");
        for c in ones {
            assert!((c as f64 / n as f64 - 0.5).abs() < 0.01, "{c}");
        }
        assert_ne!(sr_key(1234, 7, 3), sr_key(1234, 8, 3));
        assert_ne!(sr_key(1234, 7, 3), sr_key(1234, 7, 4));
        assert_ne!(sr_key(1234, 7, 3), sr_key(1235, 7, 3));
    }
}
