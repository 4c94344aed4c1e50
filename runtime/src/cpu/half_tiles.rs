//! 16-bit buffers on the CPU, tile by tile: a kernel whose parameter, gradient or states are
//! bf16 or f16 (and none int8) is compiled as if every buffer were f32, and each range runs in
//! tiles of [`TILE`] elements: the 16-bit buffers the stage loads are widened into f32 scratch
//! tiles that stay in cache, the stage's function runs on them, and the buffers it stores are
//! narrowed back. Memory still sees one read and one write of each 16-bit value.
//!
//! Why not widen and narrow inside the compiled code? Cranelift lowers x86-64 vectors to 128 bits,
//! and round-to-nearest-even narrowing with its NaN rule costs about ten integer SIMD operations
//! per four values: AdamW with bf16 parameters, gradients and states ran about 2.5 times the
//! instructions of the f32 kernel and was bound by them, not by memory. The loops here are
//! compiled by rustc for AVX-512 or AVX2 when the host has them ([`super::simd`]).
//!
//! Every conversion equals `optc_kernel::dtype`'s (the interpreter's) bit for bit, NaN, infinities,
//! subnormals and signed zeros included (the tests below walk every 16-bit pattern and the f32
//! rounding edges), so the results are those of the in-code conversions.
//!
//! A tile is one reduction block (`REDUCE_BLOCK`) so that a reducing stage's block partials are
//! those of the untiled run.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use super::simd::{self, Simd};
use optc_kernel::dtype;
use optc_kernel::{Dtype, REDUCE_BLOCK};

/// Elements per tile of a reducing stage: one reduction block.
pub(super) const TILE: usize = REDUCE_BLOCK;

/// Elements per tile of a stage without reductions: small enough that the scratch tiles of a
/// rule like AdamW (four 16-bit buffers) stay in a 32 KiB L1 cache (tiles of 256 to 65536
/// elements measured alike in AdamW's step).
pub(super) const MAP_TILE: usize = 1024;

/// How one 16-bit buffer of a stage is converted around the compiled code (whether the stage
/// loads and stores it is `Code`'s `uses`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Conv {
    /// The buffer's storage dtype (`Bf16` or `F16`).
    pub dtype: Dtype,
    /// Whether its stores round stochastically (with `sr_bits(key, element)`).
    pub stochastic: bool,
}

/// Widens the 16-bit values `src` of dtype `d` into `dst` (same length).
pub(super) fn widen(d: Dtype, src: &[u16], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    match simd::detect() {
        // SAFETY: the host has AVX-512 F and BW (`simd::detect` checked it at run time).
        Simd::Avx512 => return unsafe { widen_avx512(d, src, dst) },
        // SAFETY: the host has AVX2 (`simd::detect` checked it at run time).
        Simd::Avx2 => return unsafe { widen_avx2(d, src, dst) },
        Simd::Base => {}
    }
    widen_lanes(d, src, dst);
}

/// Narrows `src` into the 16-bit values `dst` of dtype `d` (same length): to nearest even, or,
/// with `sr = Some((key, first))`, stochastically with `sr_bits(key, first + i)` for value `i`.
pub(super) fn narrow(d: Dtype, src: &[f32], dst: &mut [u16], sr: Option<(u32, u64)>) {
    debug_assert_eq!(src.len(), dst.len());
    if let (Dtype::F16, Some((key, first))) = (d, sr) {
        // Rare (f16 parameters with stochastic rounding): the reference function itself.
        for (i, (o, &x)) in dst.iter_mut().zip(src).enumerate() {
            *o = dtype::narrow_f16_stochastic(x, dtype::sr_bits(key, first + i as u64));
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    match simd::detect() {
        // SAFETY: the host has AVX-512 F and BW (`simd::detect` checked it at run time).
        Simd::Avx512 => return unsafe { narrow_avx512(d, src, dst, sr) },
        // SAFETY: the host has AVX2 (`simd::detect` checked it at run time).
        Simd::Avx2 => return unsafe { narrow_avx2(d, src, dst, sr) },
        Simd::Base => {}
    }
    narrow_lanes(d, src, dst, sr);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn widen_avx512(d: Dtype, src: &[u16], dst: &mut [f32]) {
    widen_lanes(d, src, dst);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn narrow_avx512(d: Dtype, src: &[f32], dst: &mut [u16], sr: Option<(u32, u64)>) {
    narrow_lanes(d, src, dst, sr);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn widen_avx2(d: Dtype, src: &[u16], dst: &mut [f32]) {
    widen_lanes(d, src, dst);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn narrow_avx2(d: Dtype, src: &[f32], dst: &mut [u16], sr: Option<(u32, u64)>) {
    narrow_lanes(d, src, dst, sr);
}

/// The loops, written lane by lane without branches so that rustc vectorizes them.
#[inline(always)]
fn widen_lanes(d: Dtype, src: &[u16], dst: &mut [f32]) {
    match d {
        Dtype::F16 => {
            for (o, &h) in dst.iter_mut().zip(src) {
                *o = f32::from_bits(widen_f16_bits(u32::from(h)));
            }
        }
        _ => {
            for (o, &h) in dst.iter_mut().zip(src) {
                // A NaN gets its quiet bit, as `half` (the reference) gives it.
                let h = u32::from(h);
                *o = f32::from_bits(pick((h & 0x7FFF) > 0x7F80, h | 0x40, h) << 16);
            }
        }
    }
}

#[inline(always)]
fn narrow_lanes(d: Dtype, src: &[f32], dst: &mut [u16], sr: Option<(u32, u64)>) {
    match (d, sr) {
        (Dtype::F16, _) => {
            for (o, &x) in dst.iter_mut().zip(src) {
                *o = narrow_f16_bits(x.to_bits()) as u16;
            }
        }
        (_, None) => {
            for (o, &x) in dst.iter_mut().zip(src) {
                *o = narrow_bf16_bits(x.to_bits()) as u16;
            }
        }
        (_, Some((key, first))) => {
            // `sr_bits(key, e)` with `e = first + i`: the high half of `e` changes at most once
            // in a tile, so the loop runs per run of equal high halves.
            let mut i = 0;
            while i < src.len() {
                let e = first + i as u64;
                let hi = (e >> 32) as u32;
                let lo = e as u32;
                let run = (src.len() - i).min((u64::from(u32::MAX - lo) + 1) as usize);
                for j in 0..run {
                    let r = lowbias32(lowbias32(lo.wrapping_add(j as u32) ^ key) ^ hi);
                    dst[i + j] = narrow_bf16_stochastic_bits(src[i + j].to_bits(), r) as u16;
                }
                i += run;
            }
        }
    }
}

/// `dtype::lowbias32`, inlined for the vector loop.
#[inline(always)]
fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// `m ? a : b` without a branch.
#[inline(always)]
fn pick(m: bool, a: u32, b: u32) -> u32 {
    let m = (m as u32).wrapping_neg();
    (a & m) | (b & !m)
}

/// The f32 bits of the f16 with bits `h` (`dtype::widen_f16`): the finite values by an exact
/// product (`h`'s exponent and fraction moved into an f32, times 2^112), infinities and NaN (quiet
/// bit set, payload kept) by bits.
#[inline(always)]
fn widen_f16_bits(h: u32) -> u32 {
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7FFF;
    let shifted = em << 13;
    let finite = (f32::from_bits(shifted) * f32::from_bits(0x7780_0000)).to_bits();
    let special = shifted | 0x7F80_0000 | pick(em > 0x7C00, 0x0040_0000, 0);
    pick(em > 0x7BFF, special, finite) | sign
}

/// `dtype::narrow_bf16`'s bits, in the low half: round to nearest even, a NaN kept quiet.
#[inline(always)]
fn narrow_bf16_bits(bits: u32) -> u32 {
    let hi = bits >> 16;
    let rounded = bits.wrapping_add(0x7FFF + (hi & 1)) >> 16;
    pick((bits & 0x7FFF_FFFF) > 0x7F80_0000, hi | 0x40, rounded)
}

/// `dtype::narrow_bf16_stochastic`'s bits with the random word `r`.
#[inline(always)]
fn narrow_bf16_stochastic_bits(bits: u32, r: u32) -> u32 {
    let up = bits.wrapping_add(r & 0xFFFF) >> 16;
    pick(
        (bits & 0x7FFF_FFFF) > 0x7F7F_FFFF,
        narrow_bf16_bits(bits),
        up,
    )
}

/// `dtype::narrow_f16`'s bits (F. Giesen's `float_to_half_fast3_rtne`, the NaN payload kept as
/// `half` keeps it), in the low half.
#[inline(always)]
fn narrow_f16_bits(bits: u32) -> u32 {
    let sign = (bits >> 16) & 0x8000;
    let f = bits & 0x7FFF_FFFF;
    let nan = 0x7E00 | ((f >> 13) & 0x3FF);
    let special = pick(f > 0x7F80_0000, nan, 0x7C00);
    // Subnormal or zero results: the float add rounds to nearest even at the f16 ulp.
    let sum = (f32::from_bits(f) + f32::from_bits(126 << 23)).to_bits();
    let sub = sum.wrapping_sub(126 << 23);
    // Normal results: rebias the exponent and round to nearest even in integers.
    let odd = (f >> 13) & 1;
    let normal = f
        .wrapping_add((((15i32 - 127) << 23) + 0xFFF) as u32)
        .wrapping_add(odd)
        >> 13;
    let finite = pick(f < (113 << 23), sub, normal);
    pick(f > ((127 + 16) << 23) - 1, special, finite) | sign
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f32 values around every rounding edge a 16-bit narrowing has: each 16-bit pattern's f32
    /// value, the midpoints to its neighbour, and a few units in the last place either side of
    /// both, plus infinities, NaNs with payloads, zeros and the overflow thresholds.
    fn edges(d: Dtype) -> Vec<f32> {
        let mut xs = vec![
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7F80_0001),
            f32::from_bits(0xFFC0_1234),
            f32::from_bits(0x7FBF_FFFF),
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            65504.0,
            65519.99,
            65520.0,
            3.4e38,
        ];
        for h in 0..=u16::MAX {
            let (a, b) = match d {
                Dtype::F16 => (dtype::widen_f16(h), dtype::widen_f16(h.wrapping_add(1))),
                _ => (dtype::widen_bf16(h), dtype::widen_bf16(h.wrapping_add(1))),
            };
            xs.push(a);
            if a.is_finite() && b.is_finite() && a.is_sign_negative() == b.is_sign_negative() {
                let mid = ((f64::from(a) + f64::from(b)) / 2.0) as f32;
                for k in -2i32..=2 {
                    xs.push(f32::from_bits(mid.to_bits().wrapping_add(k as u32)));
                    xs.push(f32::from_bits(a.to_bits().wrapping_add(k as u32)));
                }
            }
        }
        xs
    }

    fn bits(xs: &[f32]) -> Vec<u32> {
        xs.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn widening_every_16_bit_pattern_equals_the_reference() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        for d in [Dtype::Bf16, Dtype::F16] {
            let mut got = vec![0f32; all.len()];
            widen(d, &all, &mut got);
            let mut lanes = vec![0f32; all.len()];
            widen_lanes(d, &all, &mut lanes);
            let want: Vec<f32> = all
                .iter()
                .map(|&h| match d {
                    Dtype::F16 => dtype::widen_f16(h),
                    _ => dtype::widen_bf16(h),
                })
                .collect();
            assert_eq!(bits(&got), bits(&want), "{d}");
            assert_eq!(bits(&lanes), bits(&want), "{d}");
        }
    }

    #[test]
    fn narrowing_to_nearest_equals_the_reference_at_every_edge() {
        for d in [Dtype::Bf16, Dtype::F16] {
            let xs = edges(d);
            let mut got = vec![0u16; xs.len()];
            narrow(d, &xs, &mut got, None);
            let mut lanes = vec![0u16; xs.len()];
            narrow_lanes(d, &xs, &mut lanes, None);
            for (i, &x) in xs.iter().enumerate() {
                let want = match d {
                    Dtype::F16 => dtype::narrow_f16(x),
                    _ => dtype::narrow_bf16(x),
                };
                assert_eq!(got[i], want, "{d} {x:e} ({:#010x})", x.to_bits());
                assert_eq!(lanes[i], want, "{d} {x:e} ({:#010x})", x.to_bits());
            }
        }
    }

    #[test]
    fn stochastic_narrowing_equals_the_reference_across_a_high_half_change() {
        for d in [Dtype::Bf16, Dtype::F16] {
            let xs = edges(d);
            // Elements `first + i` cross from high half 0 to 1 (and the key is arbitrary).
            for (key, first) in [(0x1234_5678u32, u64::from(u32::MAX) - 1000), (7, 0)] {
                let mut got = vec![0u16; xs.len()];
                narrow(d, &xs, &mut got, Some((key, first)));
                for (i, &x) in xs.iter().enumerate() {
                    let r = dtype::sr_bits(key, first + i as u64);
                    let want = match d {
                        Dtype::F16 => dtype::narrow_f16_stochastic(x, r),
                        _ => dtype::narrow_bf16_stochastic(x, r),
                    };
                    assert_eq!(got[i], want, "{d} {x:e} element {}", first + i as u64);
                }
            }
        }
    }

    #[test]
    fn a_wrong_rounding_would_be_caught() {
        // The edge set holds ties: truncation (no rounding) differs from the reference on it.
        let xs = edges(Dtype::Bf16);
        assert!(xs
            .iter()
            .any(|&x| (x.to_bits() >> 16) as u16 != dtype::narrow_bf16(x)));
    }
}
