//! A fast exact [`DynamicMap::code`]: a table indexed by the top bits of the scaled value's f32
//! encoding gives the few codes its bucket of values can take, and at most two midpoint compares
//! pick the code (the CPU's int8 store, `crate::int8::store_block`, runs this per value).
//!
//! A bucket is the f32 values sharing their sign, exponent and top [`MANT_BITS`] mantissa bits:
//! an interval `[a, b]` in value order. `code` is non-decreasing, so a value `x` of the bucket has
//! `code(a) <= code(x) <= code(b)`, and `code(x)` is `code(a)` plus the number of midpoints
//! `mids[code(a)..code(b)]` below `x`: the same count of midpoints below `x` that the binary
//! search makes, hence the same code bit for bit. Magnitudes under `2^(LO_EXP - 127)` share one
//! bucket (no midpoint lies there); magnitudes of 2 or more, infinities and NaNs (never met after
//! the store's clamp, but well defined) take the binary search.

use crate::quant::DynamicMap;

/// Mantissa bits of a bucket index.
const MANT_BITS: u32 = 7;
/// The smallest biased exponent with buckets of its own (`2^-32`).
const LO_EXP: u32 = 95;
/// The largest biased exponent with buckets (`[1, 2)`).
const HI_EXP: u32 = 127;
/// Buckets per sign.
const PER_SIGN: usize = ((HI_EXP - LO_EXP + 1) << MANT_BITS) as usize;

/// The bucket table of one map.
pub(crate) struct CodeTable {
    /// Per bucket: its first possible code (low byte) and how many midpoints follow it (high
    /// byte). The last entry is the bucket of the tiny magnitudes.
    entries: Vec<u16>,
    mids: [f32; 255],
}

/// The bucket of the value with encoding `bits`, if it has one.
fn bucket(bits: u32) -> Option<usize> {
    let exp = (bits >> 23) & 0xFF;
    if exp > HI_EXP {
        None
    } else if exp < LO_EXP {
        Some(2 * PER_SIGN)
    } else {
        let sign = (bits >> 31) as usize;
        let m = (bits >> (23 - MANT_BITS)) & ((1 << MANT_BITS) - 1);
        Some(sign * PER_SIGN + (((exp - LO_EXP) << MANT_BITS) | m) as usize)
    }
}

impl CodeTable {
    /// The table of `map`.
    pub(crate) fn new(map: &DynamicMap) -> CodeTable {
        let mut entries = vec![0u16; 2 * PER_SIGN + 1];
        let low = (1u32 << (23 - MANT_BITS)) - 1;
        let mut fill = |i: usize, a: f32, b: f32| {
            let (start, end) = (map.code(a), map.code(b));
            entries[i] = u16::from(start) | (u16::from(end - start) << 8);
        };
        for sign in 0..2u32 {
            for exp in LO_EXP..=HI_EXP {
                for m in 0..1u32 << MANT_BITS {
                    let first = (sign << 31) | (exp << 23) | (m << (23 - MANT_BITS));
                    let (lo, hi) = (f32::from_bits(first), f32::from_bits(first | low));
                    let i = bucket(first).unwrap_or(2 * PER_SIGN);
                    // Negative buckets run from their largest magnitude up.
                    if sign == 0 {
                        fill(i, lo, hi);
                    } else {
                        fill(i, hi, lo);
                    }
                }
            }
        }
        let tiny = f32::from_bits((LO_EXP << 23) - 1);
        fill(2 * PER_SIGN, -tiny, tiny);
        CodeTable {
            entries,
            mids: *map.mids(),
        }
    }

    /// `map.code(scaled)` for the map this table was built from.
    #[inline]
    pub(crate) fn code(&self, map: &DynamicMap, scaled: f32) -> u8 {
        let Some(i) = bucket(scaled.to_bits()) else {
            return map.code(scaled);
        };
        let e = self.entries[i];
        let start = usize::from(e & 0xFF);
        let n = usize::from(e >> 8);
        let mut code = start;
        for &m in &self.mids[start..start + n] {
            code += usize::from(m < scaled);
        }
        code as u8
    }

    /// The most midpoints any bucket leaves to compare.
    #[cfg(test)]
    fn widest(&self) -> u16 {
        self.entries.iter().map(|e| e >> 8).max().unwrap_or(0)
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
        for exp in LO_EXP - 1..=HI_EXP + 1 {
            for m in 0..1u32 << MANT_BITS {
                let first = (exp << 23) | (m << (23 - MANT_BITS));
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

    #[test]
    fn the_table_codes_every_sampled_value_as_the_binary_search_does() {
        for map in [DynamicMap::signed(), DynamicMap::unsigned()] {
            let t = CodeTable::new(&map);
            assert!(t.widest() <= 2, "a bucket needs {} compares", t.widest());
            let xs = samples(&map);
            assert!(xs.len() > 4_000_000, "{}", xs.len());
            for x in xs {
                assert_eq!(
                    t.code(&map, x),
                    map.code(x),
                    "{x:e} ({:#010x})",
                    x.to_bits()
                );
            }
        }
    }

    /// Every f32 in [-1, 1] (2 x 1.07e9 values): run with `--release --ignored` (a minute).
    #[test]
    #[ignore]
    fn the_table_codes_every_f32_in_the_unit_interval_as_the_binary_search_does() {
        for map in [DynamicMap::signed(), DynamicMap::unsigned()] {
            let t = CodeTable::new(&map);
            for bits in 0..=1.0f32.to_bits() {
                for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                    assert_eq!(t.code(&map, x), map.code(x), "{x:e}");
                }
            }
        }
    }
}
