//! A fast exact [`DynamicMap::code`] of a clamped scaled value, a block at a time: a table
//! indexed by the top 16 bits of the value's f32 encoding gives the first code its bucket of
//! values can take and the one midpoint that may follow it in the bucket, and one integer compare
//! picks the code (the CPU's int8 store, `crate::int8::store_block`, codes every value so).
//!
//! A bucket is the f32 values sharing their sign, exponent and top [`MANT_BITS`] mantissa bits:
//! an interval `[a, b]` in value order. `code` is non-decreasing, so a value `x` of the bucket has
//! `code(a) <= code(x) <= code(b)`; the maps' midpoints are far enough apart that a bucket holds
//! at most one (`code(b) - code(a) <= 1`, checked when the table is built), so `code(x)` is
//! `code(a)`, plus one when that midpoint `mids[code(a)]` is below `x`: the count of midpoints
//! below `x` that the binary search makes, hence the same code bit for bit. Inside a bucket the
//! order of values is that of the low [`LOW_BITS`] bits of the encoding (reversed for negative
//! values), so the compare is one of two 16-bit integers, done as a carry: an entry holds the
//! first code in its high half and `0xFFFF - threshold` in its low half, so adding the value's
//! ordered low bits carries one into the code exactly when they are above the threshold. The
//! store clamps its scaled values to
//! `[-1, 1]`, so of the magnitudes of 2 or more only NaN reaches the table: those buckets code
//! as 0, NaN's code in the binary search.
//!
//! [`CodeTable::code_block`] runs in three passes over a block so that two of them vectorize:
//! the clamped products' bucket and ordered low bits (vector), the table lookups (one scalar load
//! per value), the carrying add and the narrowing to bytes (vector).

use crate::quant::{DynamicMap, QUANT_BLOCK};

/// Mantissa bits of a bucket index.
const MANT_BITS: u32 = 7;
/// The low encoding bits that order the values of a bucket.
const LOW_BITS: u32 = 23 - MANT_BITS;
/// The mask of [`LOW_BITS`].
const LOW_MASK: u32 = (1 << LOW_BITS) - 1;
/// Buckets: every value of the top 16 bits of an encoding.
const BUCKETS: usize = 1 << (32 - LOW_BITS);
/// The low half of the entry of a bucket without a midpoint: no ordered low bits carry.
const NO_MID: u32 = 0;

/// The bucket table of one map.
pub(crate) struct CodeTable {
    /// Per bucket (the top 16 bits of an encoding): its first code in bits 16..24, and in the
    /// low 16 bits `0xFFFF` minus the ordered low bits ([`ordered_low`]) of the midpoint that
    /// may follow it in the bucket, or [`NO_MID`].
    entries: Box<[u32; BUCKETS]>,
}

/// The low [`LOW_BITS`] of the encoding `bits`, flipped for a negative value, so that within a
/// bucket they grow with the value.
#[inline]
fn ordered_low(bits: u32) -> u32 {
    let flip = ((bits as i32 >> 31) as u32) & LOW_MASK;
    (bits & LOW_MASK) ^ flip
}

impl CodeTable {
    /// The table of `map`, or `None` if a bucket would hold more than one midpoint (never for
    /// the two dynamic maps: see the tests).
    pub(crate) fn new(map: &DynamicMap) -> Option<CodeTable> {
        let mids = map.mids();
        let mut entries = Box::new([0u32; BUCKETS]);
        for (top, entry) in (0u32..).zip(entries.iter_mut()) {
            let first = top << LOW_BITS;
            let (lo, hi) = (f32::from_bits(first), f32::from_bits(first | LOW_MASK));
            if !lo.is_finite() || lo.abs() >= 2.0 {
                // Only NaN gets here after the clamp (a start of 0 and no midpoint).
                *entry = NO_MID;
                continue;
            }
            // Negative buckets run from their largest magnitude up.
            let (a, b) = if lo.is_sign_negative() {
                (hi, lo)
            } else {
                (lo, hi)
            };
            let (start, end) = (map.code(a), map.code(b));
            let thr = match end - start {
                0 => NO_MID,
                1 => LOW_MASK - ordered_low(mids[usize::from(start)].to_bits()),
                _ => return None,
            };
            *entry = (u32::from(start) << 16) | thr;
        }
        Some(CodeTable { entries })
    }

    /// `codes[i] = map.code((xs[i] * inv).clamp(-1.0, 1.0))` for the map this table was built
    /// from, for a block (at most [`QUANT_BLOCK`] values; `codes` as long as `xs`).
    #[inline(always)]
    pub(crate) fn code_block(&self, xs: &[f32], inv: f32, codes: &mut [u8]) {
        let mut buf = [0u32; QUANT_BLOCK];
        let n = xs.len().min(QUANT_BLOCK);
        // The bucket in the high half, the ordered low bits in the low half.
        for (b, &x) in buf[..n].iter_mut().zip(xs) {
            let bits = (x * inv).clamp(-1.0, 1.0).to_bits();
            *b = (bits & !LOW_MASK) | ordered_low(bits);
        }
        for b in &mut buf[..n] {
            *b = self.entries[(*b >> LOW_BITS) as usize] + (*b & LOW_MASK);
        }
        for (c, &b) in codes.iter_mut().zip(&buf[..n]) {
            *c = (b >> 16) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value the test walks: a dense sample of [-1, 1] (every 509th encoding of each
    /// sign), every midpoint and map value with 4 encodings either side, every bucket's edges with
    /// their neighbours, and specials.
    fn samples(map: &DynamicMap) -> Vec<f32> {
        let mut out = Vec::new();
        let one = 1.0f32.to_bits();
        for bits in (0..=one).step_by(509) {
            out.push(f32::from_bits(bits));
            out.push(-f32::from_bits(bits));
        }
        let near = |x: f32, out: &mut Vec<f32>| {
            let b = x.to_bits() as i64;
            for d in -4..=4i64 {
                if let Ok(bits) = u32::try_from(b + d) {
                    out.push(f32::from_bits(bits));
                }
            }
        };
        for &m in map.mids().iter().chain(map.values()) {
            near(m, &mut out);
        }
        for exp in 0..=128 {
            for m in 0..1u32 << MANT_BITS {
                let first = (exp << 23) | (m << LOW_BITS);
                near(f32::from_bits(first), &mut out);
                near(-f32::from_bits(first), &mut out);
            }
        }
        out.extend([
            0.0,
            -0.0,
            1.0,
            -1.0,
            2.0,
            -2.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
        ]);
        out
    }

    /// Checks [`CodeTable::code_block`] (with `inv = 1`, which leaves every value as it is) on
    /// `xs` against the binary search on the clamped values.
    fn check(t: &CodeTable, map: &DynamicMap, xs: &[f32]) {
        let mut codes = [0u8; QUANT_BLOCK];
        for block in xs.chunks(QUANT_BLOCK) {
            let codes = &mut codes[..block.len()];
            t.code_block(block, 1.0, codes);
            for (&x, &c) in block.iter().zip(codes.iter()) {
                assert_eq!(
                    c,
                    map.code(x.clamp(-1.0, 1.0)),
                    "{x:e} ({:#010x})",
                    x.to_bits()
                );
            }
        }
    }

    #[test]
    fn the_table_codes_every_sampled_value_as_the_binary_search_does() {
        for map in [DynamicMap::signed(), DynamicMap::unsigned()] {
            let t = CodeTable::new(&map).expect("at most one midpoint per bucket");
            let xs = samples(&map);
            assert!(xs.len() > 4_000_000, "{}", xs.len());
            check(&t, &map, &xs);
            // Short blocks, and the clamp at both ends.
            check(&t, &map, &[0.5, -3.0, 7.0, f32::NAN, -f32::INFINITY]);
        }
    }

    /// Every f32 in [-1, 1] (2 x 1.07e9 values): run with `--release --ignored` (a minute).
    #[test]
    #[ignore]
    fn the_table_codes_every_f32_in_the_unit_interval_as_the_binary_search_does() {
        for map in [DynamicMap::signed(), DynamicMap::unsigned()] {
            let t = CodeTable::new(&map).expect("at most one midpoint per bucket");
            let mut xs = Vec::with_capacity(1 << 20);
            for bits in 0..=1.0f32.to_bits() {
                xs.push(f32::from_bits(bits));
                xs.push(-f32::from_bits(bits));
                if xs.len() == 1 << 20 || bits == 1.0f32.to_bits() {
                    check(&t, &map, &xs);
                    xs.clear();
                }
            }
        }
    }
}
