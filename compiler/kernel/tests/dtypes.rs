//! optc's storage conversions against torch and bitsandbytes, bit for bit, on the references
//! `tools/fixtures/dtypes.py` wrote (`compiler/kernel/tests/fixtures/dtypes/`); and stochastic rounding's
//! unbiasedness, against the exact mean of the values it rounds.

use optc_kernel::dtype::{
    narrow_bf16, narrow_bf16_stochastic, narrow_f16, narrow_f16_stochastic, sr_bits, sr_key,
    widen_bf16, widen_f16,
};
use optc_kernel::quant::{dequantize, quantize, DynamicMap};

struct Fixture(Vec<u8>);

impl Fixture {
    fn load() -> Fixture {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/dtypes/conversions.safetensors"
        );
        Fixture(std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}")))
    }
    fn bytes(&self, name: &str) -> Vec<u8> {
        let st = safetensors::SafeTensors::deserialize(&self.0).expect("safetensors");
        st.tensor(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .data()
            .to_vec()
    }
    fn f32s(&self, name: &str) -> Vec<f32> {
        self.bytes(name)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
    fn u16s(&self, name: &str) -> Vec<u16> {
        self.bytes(name)
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect()
    }
}

#[test]
fn narrowing_matches_torch_bit_for_bit() {
    let f = Fixture::load();
    let x = f.f32s("x");
    assert!(x.len() > 10_000);
    for (name, torch, narrow, widen) in [
        (
            "bf16",
            f.u16s("bf16"),
            narrow_bf16 as fn(f32) -> u16,
            widen_bf16 as fn(u16) -> f32,
        ),
        ("f16", f.u16s("f16"), narrow_f16, widen_f16),
    ] {
        assert_eq!(torch.len(), x.len());
        for (&x, &want) in x.iter().zip(&torch) {
            let got = narrow(x);
            if x.is_nan() {
                // torch's NaN payload differs between its scalar and vector paths; NaN stays NaN.
                assert!(widen(got).is_nan() && widen(want).is_nan(), "{name} NaN");
            } else {
                assert_eq!(got, want, "{name}: {x:e} ({:#010x})", x.to_bits());
            }
            // Widening is exact: narrowing again gives the same bits.
            assert_eq!(narrow(widen(got)), got, "{name} round trip of {got:#06x}");
        }
    }
}

#[test]
fn dynamic_maps_are_bitsandbytes_maps() {
    let f = Fixture::load();
    for (map, name) in [
        (DynamicMap::signed(), "map_signed"),
        (DynamicMap::unsigned(), "map_unsigned"),
    ] {
        let want = f.f32s(name);
        for (i, (got, want)) in map.values().iter().zip(&want).enumerate() {
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{name}[{i}]: {got:e} vs {want:e}"
            );
        }
    }
}

#[test]
fn block_quantization_matches_bitsandbytes() {
    let f = Fixture::load();
    for (prefix, map) in [
        ("q", DynamicMap::signed()),
        ("q_pos", DynamicMap::unsigned()),
    ] {
        let x = f.f32s(&format!("{prefix}_in"));
        let (codes, scales) = quantize(&map, &x);
        assert_eq!(
            scales,
            f.f32s(&format!("{prefix}_absmax")),
            "{prefix} scales"
        );
        let want = f.bytes(prefix);
        let wrong = codes.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            wrong,
            0,
            "{prefix}: {wrong} of {} codes differ",
            codes.len()
        );
        let back = dequantize(&map, &codes, &scales);
        let want = f.f32s(&format!("{prefix}_deq"));
        for (i, (g, w)) in back.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{prefix} dequantized [{i}]");
        }
    }
}

/// 4096 values of 1.0, each stepped 1000 times by -1e-4 · (1 + small per-element jitter), far
/// below half a bf16 ulp at 1.0 (2^-8 = 3.9e-3 below 1): round to nearest never moves them, and
/// stochastic rounding moves their mean by the sum of the steps, within its standard error.
#[test]
fn stochastic_rounding_is_unbiased_where_round_to_nearest_is_stuck() {
    for (name, narrow, widen, stochastic) in [
        (
            "bf16",
            narrow_bf16 as fn(f32) -> u16,
            widen_bf16 as fn(u16) -> f32,
            narrow_bf16_stochastic as fn(f32, u32) -> u16,
        ),
        ("f16", narrow_f16, widen_f16, narrow_f16_stochastic),
    ] {
        let n = 4096usize;
        let steps = 1000u64;
        let delta = |e: usize| -1e-4f32 * (1.0 + (e % 7) as f32 * 0.01);
        let mut nearest = vec![narrow(1.0); n];
        let mut sr = nearest.clone();
        for t in 1..=steps {
            let key = sr_key(42, t, 0);
            for e in 0..n {
                nearest[e] = narrow(widen(nearest[e]) + delta(e));
                sr[e] = stochastic(widen(sr[e]) + delta(e), sr_bits(key, e as u64));
            }
        }
        assert!(
            nearest.iter().all(|&b| widen(b) == 1.0),
            "{name}: RNE moved"
        );
        let expected: f64 = (0..n)
            .map(|e| 1.0 + steps as f64 * delta(e) as f64)
            .sum::<f64>()
            / n as f64;
        let mean: f64 = sr.iter().map(|&b| widen(b) as f64).sum::<f64>() / n as f64;
        // Each rounding adds an error of at most one ulp (2^-8 below 1 for bf16), with mean 0:
        // the error of one value after 1000 steps has a standard deviation below
        // sqrt(1000) · 2^-8 / 2 ≈ 0.062, so the mean of 4096 is within 0.062 / 64 ≈ 1e-3 (1σ).
        let tolerance = 5.0 * 0.062 / 64.0;
        assert!(
            (mean - expected).abs() < tolerance,
            "{name}: mean {mean} vs expected {expected} (tolerance {tolerance})"
        );
        assert!(
            expected < 0.91,
            "the test must move the values far ({expected})"
        );
    }
}
