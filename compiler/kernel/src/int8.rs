//! int8 optimizer states: how a state stored as [`Dtype::Int8`] is kept, block by block, and the
//! one definition of its loads and stores that every backend reproduces bit for bit
//! (`docs/dtypes.md`, "int8 states").
//!
//! A tensor's int8 state is one byte per value (a code) and one f32 word per block of
//! [`QUANT_BLOCK`] values (the last block may be short), in the format of [`crate::quant`]
//! (bitsandbytes' block-wise dynamic quantization). Which of the two dynamic maps a block uses is
//! chosen per block when it is stored, with no sign analysis of the rule: the **unsigned** map
//! when every new value of the block is `>= 0`, else the **signed** map. The choice is kept in
//! the sign bit of the block's stored scale (a set sign bit: the signed map); the scale's
//! magnitude is the block's absmax. A second moment (`v = β·v + (1-β)·g²`) therefore always uses
//! the unsigned map, as bitsandbytes' Adam does, and a momentum the signed one unless a whole
//! block happens to be non-negative, where the unsigned map's finer codes on `[0, 1]` only help.
//!
//! - **Load**: `map[code] · |scale|`, with the map the scale's sign bit names ([`load_block`]).
//! - **Store**: the block's new values are quantized together ([`store_block`]): codes and scale
//!   are those of [`crate::quant::quantize_block`] with the chosen map (checked by the tests),
//!   except that a block holding a NaN gets a NaN scale, so it loads as NaN rather than hiding it
//!   (an infinity gives an infinite scale, and the block loads as infinities and NaNs).
//! - Tensors of fewer than [`MIN_QUANT_ELEMENTS`] elements keep the state in f32
//!   ([`stored_dtype`]), as bitsandbytes does for small tensors.

use crate::code_table::CodeTable;
use crate::dtype::Dtype;
use crate::expr::Slot;
use crate::quant::{DynamicMap, MIN_QUANT_ELEMENTS, QUANT_BLOCK};
use crate::storage::Storage;
use std::sync::OnceLock;

/// The signed and unsigned dynamic maps, built once.
#[inline]
fn maps() -> &'static (DynamicMap, DynamicMap) {
    static MAPS: OnceLock<(DynamicMap, DynamicMap)> = OnceLock::new();
    MAPS.get_or_init(|| (DynamicMap::signed(), DynamicMap::unsigned()))
}

/// The bucket tables of the signed and unsigned maps (the store's fast exact code), when they
/// can be built (always, for these maps: `code_table`'s tests).
#[inline]
fn tables() -> &'static Option<(CodeTable, CodeTable)> {
    static TABLES: OnceLock<Option<(CodeTable, CodeTable)>> = OnceLock::new();
    TABLES.get_or_init(|| {
        let (signed, unsigned) = maps();
        Some((CodeTable::new(signed)?, CodeTable::new(unsigned)?))
    })
}

/// The map a block whose stored scale is `scale` uses: signed when its sign bit is set.
#[inline]
pub fn map_of(scale: f32) -> &'static DynamicMap {
    let (signed, unsigned) = maps();
    if scale.is_sign_negative() {
        signed
    } else {
        unsigned
    }
}

/// The dtype buffer `slot` of a tensor of `len` elements is kept in: the storage's dtype, except
/// that an int8 state of a tensor under [`MIN_QUANT_ELEMENTS`] elements stays f32.
pub fn stored_dtype(storage: &Storage, slot: Slot, len: usize) -> Dtype {
    dtype_for_len(storage.dtype(slot), len)
}

/// The dtype a buffer of storage dtype `d` and `len` elements is kept in: int8 under
/// [`MIN_QUANT_ELEMENTS`] elements is f32, every other dtype itself.
pub fn dtype_for_len(d: Dtype, len: usize) -> Dtype {
    match d {
        Dtype::Int8 if len < MIN_QUANT_ELEMENTS => Dtype::F32,
        d => d,
    }
}

/// The bytes of memory an int8 state of `len` elements takes (codes and scales) on the host.
pub fn host_bytes(len: usize) -> usize {
    len + 4 * scale_count(len)
}

/// The number of scale words of an int8 state of `len` elements.
pub fn scale_count(len: usize) -> usize {
    len.div_ceil(QUANT_BLOCK)
}

/// Where the scales of an int8 state of `len` elements start in a device buffer that holds the
/// codes and scales together (the CUDA layout): the first multiple of 16 bytes after the codes.
pub fn device_scales_offset(len: usize) -> usize {
    len.div_ceil(16) * 16
}

/// The bytes of a device buffer holding an int8 state of `len` elements: codes, padding, scales.
pub fn device_bytes(len: usize) -> usize {
    device_scales_offset(len) + 4 * scale_count(len)
}

/// Quantizes one block (at most [`QUANT_BLOCK`] values; `codes` as long as `xs`) and returns its
/// stored scale: the absmax (NaN if a value is NaN), negated when the block uses the signed map.
#[inline(always)]
pub fn store_block(xs: &[f32], codes: &mut [u8]) -> f32 {
    let Summary {
        absmax,
        nan,
        negative,
    } = summarize(xs);
    let signed_map = negative || nan;
    let absmax = if nan { f32::NAN } else { absmax };
    // As `quant::quantize_block`: one reciprocal per block, then a clamped product per value,
    // coded by the bucket table (exactly `map.code`, see `code_table`).
    let inv = 1.0 / absmax.max(1e-38);
    match tables() {
        Some((signed, unsigned)) => {
            let table = if signed_map { signed } else { unsigned };
            table.code_block(xs, inv, codes);
        }
        None => {
            let map = map_of(if signed_map { -1.0 } else { 1.0 });
            for (c, &x) in codes.iter_mut().zip(xs) {
                *c = map.code((x * inv).clamp(-1.0, 1.0));
            }
        }
    }
    if signed_map {
        -absmax
    } else {
        absmax
    }
}

/// What the store needs to know of a block before coding it.
struct Summary {
    /// The largest magnitude (meaningless when `nan`).
    absmax: f32,
    /// Whether a value is NaN.
    nan: bool,
    /// Whether a value is below zero (meaningless when `nan`).
    negative: bool,
}

/// Lanes of [`summarize`]'s accumulators (two 128-bit vectors, one 256-bit).
const LANES: usize = 8;

/// The [`Summary`] of `xs`, from two integer maxima the compiler vectorizes in any build: the
/// largest magnitude's encoding (the encodings of magnitudes order as their values, and NaN's
/// are above infinity's), and the largest encoding with the sign bit flipped, as `i32` (above
/// zero exactly when some value is below zero or is a NaN with its sign bit set, which the
/// store treats alike: either way the block takes the signed map).
#[inline(always)]
fn summarize(xs: &[f32]) -> Summary {
    const INF: i32 = 0x7F80_0000;
    let mut mag = [0i32; LANES];
    let mut flipped = [i32::MIN; LANES];
    let mut lane = |l: usize, x: f32| {
        let bits = x.to_bits();
        mag[l] = mag[l].max((bits & 0x7FFF_FFFF) as i32);
        flipped[l] = flipped[l].max((bits ^ 0x8000_0000) as i32);
    };
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (l, &x) in chunk.iter().enumerate() {
            lane(l, x);
        }
    }
    for (l, &x) in rest.iter().enumerate() {
        lane(l, x);
    }
    let mag = mag.iter().copied().fold(0, i32::max);
    let flipped = flipped.iter().copied().fold(i32::MIN, i32::max);
    let nan = mag > INF;
    Summary {
        absmax: f32::from_bits(mag as u32),
        nan,
        negative: flipped > 0,
    }
}

/// Dequantizes one block stored with scale word `scale` into `out` (as long as `codes`).
#[inline(always)]
pub fn load_block(codes: &[u8], scale: f32, out: &mut [f32]) {
    let map = map_of(scale);
    let absmax = scale.abs();
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = map.value(c) * absmax;
    }
}

/// Quantizes `xs` block by block into `codes` (one per value) and `scales` (one per block).
#[inline(always)]
pub fn store(xs: &[f32], codes: &mut [u8], scales: &mut [f32]) {
    for ((x, c), s) in xs
        .chunks(QUANT_BLOCK)
        .zip(codes.chunks_mut(QUANT_BLOCK))
        .zip(scales.iter_mut())
    {
        *s = store_block(x, c);
    }
}

/// Dequantizes `codes` and `scales` (as [`store`] writes them) into `out`.
#[inline(always)]
pub fn load(codes: &[u8], scales: &[f32], out: &mut [f32]) {
    for ((c, o), &s) in codes
        .chunks(QUANT_BLOCK)
        .zip(out.chunks_mut(QUANT_BLOCK))
        .zip(scales)
    {
        load_block(c, s, o);
    }
}

/// What memory holds after storing `xs` to an int8 state, widened back to f32, in place: each
/// block quantized ([`store_block`]) and loaded ([`load_block`]). The reference interpreter keeps
/// int8 states so.
pub fn round_trip(xs: &mut [f32]) {
    let mut codes = [0u8; QUANT_BLOCK];
    for block in xs.chunks_mut(QUANT_BLOCK) {
        let c = &mut codes[..block.len()];
        let scale = store_block(block, c);
        load_block(c, scale, block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_block;

    fn block(seed: u32, scale: f32, shift: f32) -> Vec<f32> {
        (0..QUANT_BLOCK as u32)
            .map(|i| {
                let h = crate::dtype::lowbias32(i ^ seed.wrapping_mul(0x9e37_79b9));
                ((h >> 8) as f32 / (1u32 << 24) as f32 - 0.5 + shift) * scale
            })
            .collect()
    }

    #[test]
    fn finite_blocks_match_quant_with_the_map_of_their_sign() {
        for (seed, scale, shift) in [(1, 1.0, 0.0), (2, 1e-6, 0.5), (3, 1e3, 0.7), (4, 3.0, -0.2)] {
            let xs = block(seed, scale, shift);
            let mut codes = vec![0u8; xs.len()];
            let s = store_block(&xs, &mut codes);
            let nonneg = xs.iter().all(|&x| x >= 0.0);
            let map = if nonneg {
                DynamicMap::unsigned()
            } else {
                DynamicMap::signed()
            };
            let mut want = vec![0u8; xs.len()];
            let absmax = quantize_block(&map, &xs, &mut want);
            assert_eq!(codes, want, "seed {seed}");
            assert_eq!(s.abs().to_bits(), absmax.to_bits());
            assert_eq!(s.is_sign_negative(), !nonneg);
            let mut back = vec![0f32; xs.len()];
            load_block(&codes, s, &mut back);
            let deq = crate::quant::dequantize(&map, &want, &[absmax]);
            assert_eq!(
                back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                deq.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn zero_and_non_finite_blocks() {
        let mut zeros = vec![0.0f32; 100];
        round_trip(&mut zeros);
        assert!(zeros.iter().all(|&x| x.to_bits() == 0));
        let mut xs = vec![1.0f32; 300];
        xs[7] = f32::NAN;
        round_trip(&mut xs);
        assert!(xs[..256].iter().all(|x| x.is_nan()));
        assert!(xs[256..].iter().all(|&x| x == 1.0));
        let mut xs = vec![1.0f32; 10];
        xs[3] = f32::INFINITY;
        round_trip(&mut xs);
        assert!(xs.iter().all(|x| !x.is_finite()));
    }

    #[test]
    fn small_tensors_stay_f32() {
        let storage = Storage {
            states: vec![Dtype::Int8],
            ..Storage::default()
        };
        let s = Slot::State(crate::expr::StateId::new(0));
        assert_eq!(
            stored_dtype(&storage, s, MIN_QUANT_ELEMENTS - 1),
            Dtype::F32
        );
        assert_eq!(stored_dtype(&storage, s, MIN_QUANT_ELEMENTS), Dtype::Int8);
        assert_eq!(stored_dtype(&storage, Slot::Param, 1 << 20), Dtype::F32);
        assert_eq!(scale_count(257), 2);
    }
}
