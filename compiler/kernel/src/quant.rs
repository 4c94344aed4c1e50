//! 8-bit block quantization of optimizer states, in the style of bitsandbytes (Dettmers et al.,
//! 2022, "8-bit Optimizers via Block-wise Quantization").
//!
//! A state stored as `int8` is cut into blocks of [`QUANT_BLOCK`] consecutive values (the last
//! may be short). Each block keeps one f32 scale, its largest magnitude (`absmax`), and each value
//! one byte: the index of the entry of a sorted 256-entry **dynamic map** nearest to
//! `value / absmax`. A state whose values can be negative uses the signed map; one that cannot
//! (a second moment) uses the unsigned map, which spends every code on `[0, 1]`.
//!
//! The maps are bitsandbytes' `create_dynamic_map(signed)` (checked entry for entry by
//! `tests/dtypes.rs`), and the rounding is that of its `quantize_blockwise`: the scaled value
//! `clamp(x · (1 / max(absmax, 1e-38)), -1, 1)` takes the code `i` with
//! `mid[i-1] < scaled <= mid[i]`, where `mid[i]` is the f32 midpoint of map entries `i` and
//! `i + 1` (so a tie goes to the lower code). Dequantizing gives `map[code] · absmax` in f32.
//!
//! Tensors with fewer than [`MIN_QUANT_ELEMENTS`] elements keep f32 states, as bitsandbytes does:
//! their state is small, and the quantization error would be a large share of it.

/// Values per quantization block (one f32 scale each).
pub const QUANT_BLOCK: usize = 256;

/// Tensors with fewer elements than this keep f32 states even when `int8` is asked for.
pub const MIN_QUANT_ELEMENTS: usize = 4096;

/// A sorted table of 256 f32 values in `[-1, 1]` that 8-bit codes index.
#[derive(Clone, Debug, PartialEq)]
pub struct DynamicMap {
    values: [f32; 256],
    /// `mids[i]` = f32 midpoint of `values[i]` and `values[i + 1]`.
    mids: [f32; 255],
}

/// `n` values evenly spaced from `start` to `end` in f32, as `torch.linspace` computes them on the
/// CPU: `step = (end - start) / (n - 1)` in f32, then the first half as `start + step · i`, the
/// second as `end - step · (n - 1 - i)`, each with one rounding (a fused multiply-add).
fn linspace(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

impl DynamicMap {
    /// bitsandbytes' `create_dynamic_map(signed, max_exponent_bits = 7, total_bits = 8)`: for each
    /// exponent `e` in `0..7`, the midpoints of an f32 `linspace(0.1, 1)` scaled by `10^(e - 6)`
    /// (and their negatives, when signed), then 0 and 1, padded with zeros and sorted.
    pub fn new(signed: bool) -> DynamicMap {
        const EXPONENT_BITS: i32 = 7;
        const NON_SIGN_BITS: i32 = 7;
        let mut data: Vec<f32> = Vec::with_capacity(256);
        for i in 0..EXPONENT_BITS {
            let shift = if signed { 0 } else { 1 };
            let items = (1usize << (i + NON_SIGN_BITS - EXPONENT_BITS + shift)) + 1;
            let bounds = linspace(0.1, 1.0, items);
            // Python's `10 ** (i - 6)` times an f32 tensor: torch multiplies in f32, by the
            // scale rounded to f32.
            let scale = [1e-6f32, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0][i as usize];
            for w in bounds.windows(2) {
                let mean = (w[0] + w[1]) / 2.0;
                data.push(scale * mean);
                if signed {
                    data.push(-scale * mean);
                }
            }
        }
        // bitsandbytes' `additional_items` is 2^(7 - 7) - 1 = 0: none.
        data.push(0.0);
        data.push(1.0);
        data.resize(256, 0.0);
        let mut values = data;
        values.sort_by(f32::total_cmp);
        // Sorting by total order puts -0.0 before 0.0; the maps hold only +0.0.
        let mut table = [0f32; 256];
        table.copy_from_slice(&values);
        DynamicMap::from_values(table)
    }

    /// The signed map (first moments, momenta).
    pub fn signed() -> DynamicMap {
        DynamicMap::new(true)
    }

    /// The unsigned map (second moments and other non-negative states).
    pub fn unsigned() -> DynamicMap {
        DynamicMap::new(false)
    }

    fn from_values(values: [f32; 256]) -> DynamicMap {
        let mut mids = [0f32; 255];
        for (i, m) in mids.iter_mut().enumerate() {
            *m = (values[i] + values[i + 1]) / 2.0;
        }
        DynamicMap { values, mids }
    }

    /// The 256 values, sorted.
    pub fn values(&self) -> &[f32; 256] {
        &self.values
    }

    /// The code of a scaled value in `[-1, 1]`: the number of midpoints below it.
    pub fn code(&self, scaled: f32) -> u8 {
        // partition_point: the first midpoint that is not below `scaled` (NaN codes as 0).
        self.mids.partition_point(|&m| m < scaled) as u8
    }

    /// The 255 midpoints, sorted (`mids[i]` between values `i` and `i + 1`).
    pub(crate) fn mids(&self) -> &[f32; 255] {
        &self.mids
    }

    /// The value of a code.
    pub fn value(&self, code: u8) -> f32 {
        self.values[code as usize]
    }
}

/// Quantizes one block (at most [`QUANT_BLOCK`] values) into `codes`; returns its absmax scale.
pub fn quantize_block(map: &DynamicMap, xs: &[f32], codes: &mut [u8]) -> f32 {
    let absmax = xs.iter().fold(0f32, |m, x| m.max(x.abs()));
    let inv = 1.0 / absmax.max(1e-38);
    for (c, &x) in codes.iter_mut().zip(xs) {
        *c = map.code((x * inv).clamp(-1.0, 1.0));
    }
    absmax
}

/// Dequantizes one block.
pub fn dequantize_block(map: &DynamicMap, codes: &[u8], absmax: f32, out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = map.value(c) * absmax;
    }
}

/// Quantizes a whole state: codes for every value and one scale per block.
pub fn quantize(map: &DynamicMap, xs: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut codes = vec![0u8; xs.len()];
    let scales = xs
        .chunks(QUANT_BLOCK)
        .zip(codes.chunks_mut(QUANT_BLOCK))
        .map(|(x, c)| quantize_block(map, x, c))
        .collect();
    (codes, scales)
}

/// Dequantizes a whole state.
pub fn dequantize(map: &DynamicMap, codes: &[u8], scales: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; codes.len()];
    for ((c, o), &s) in codes
        .chunks(QUANT_BLOCK)
        .zip(out.chunks_mut(QUANT_BLOCK))
        .zip(scales)
    {
        dequantize_block(map, c, s, o);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_sorted_span_the_unit_interval_and_hold_zero() {
        for (map, lo) in [
            (DynamicMap::signed(), -1.0f32),
            (DynamicMap::unsigned(), 0.0),
        ] {
            let v = map.values();
            assert!(v.windows(2).all(|w| w[0] <= w[1]));
            assert!(v[0] >= lo - 1e-2 && v[0] <= lo + 1e-2, "{}", v[0]);
            assert_eq!(v[255], 1.0);
            assert!(v.contains(&0.0));
            assert_eq!(map.value(map.code(1.0)), 1.0);
            assert_eq!(map.value(map.code(0.0)), 0.0);
        }
    }

    #[test]
    fn a_block_round_trips_within_half_a_code_gap() {
        let map = DynamicMap::signed();
        let xs: Vec<f32> = (0..300)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let (codes, scales) = quantize(&map, &xs);
        assert_eq!(scales.len(), 2);
        let back = dequantize(&map, &codes, &scales);
        for (b, (x, &s)) in back.iter().zip(
            xs.iter().zip(
                scales
                    .iter()
                    .flat_map(|s| std::iter::repeat_n(s, QUANT_BLOCK)),
            ),
        ) {
            let scaled = x / s;
            let i = map.code(scaled) as usize;
            let gap = if i == 0 {
                map.values()[1] - map.values()[0]
            } else {
                (map.values()[i] - map.values()[i - 1]).max(if i < 255 {
                    map.values()[i + 1] - map.values()[i]
                } else {
                    0.0
                })
            };
            assert!((b - x).abs() <= gap * s * 0.5 + 1e-6 * s, "{x} -> {b}");
        }
        // An all-zero block: scale 0, every value back to 0.
        let (c, s) = quantize(&map, &[0.0; 10]);
        assert_eq!(dequantize(&map, &c, &s), vec![0.0; 10]);
    }
}
