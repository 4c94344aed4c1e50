//! The reducing entries of the PTX backend: their structure, and a model of their warp schedule
//! checked against the reference order.
//!
//! No GPU runs here. [`warp_partial`] replays, in Rust, the schedule the emitted code follows
//! for one block (the instructions it models are checked to be in the PTX): the 4-wide path
//! (lane `m` computes elements `128 j + 4 m ..`, stores them to its warp's shared slot at byte
//! `16 m`, lane `k` reads bytes `4 k + 128 c`) and the one-element path, then the `shfl.down`
//! tree. It must give `optc_kernel::reduce::block_partial` bit for bit on any data: that shows
//! the transposition keeps the documented fold order. `runtime/tests/cuda_gpu.rs` runs the real
//! code against the interpreter when a GPU is present.

mod ptx_kernels;

use optc_compiler::backend::ptx::{emit, Options};
use optc_kernel::reduce::{block_partial, ReduceOp, REDUCE_BLOCK, REDUCE_LANES};

/// The schedule of one block of `xs` (at most 4096 values), as the emitted code runs it.
fn warp_partial(op: ReduceOp, xs: &[f32], vector: bool) -> f32 {
    let id = op.identity() as f32;
    let mut lanes = [id; REDUCE_LANES];
    if vector && xs.len() == REDUCE_BLOCK {
        // 32 groups of 128 elements; each lane computes 4 consecutive ones.
        for j in 0..REDUCE_BLOCK / 128 {
            let mut shared = [0f32; 128];
            for m in 0..REDUCE_LANES {
                for q in 0..4 {
                    // st.shared.v4.f32 [slot + 16 m]
                    shared[(16 * m) / 4 + q] = xs[128 * j + 4 * m + q];
                }
            }
            for (k, lane) in lanes.iter_mut().enumerate() {
                for c in 0..4 {
                    // ld.shared.f32 [slot + 4 k + 128 c]
                    *lane = op.apply(*lane, shared[(4 * k + 128 * c) / 4]);
                }
            }
        }
    } else {
        for (k, lane) in lanes.iter_mut().enumerate() {
            let mut i = k;
            while i < xs.len() {
                *lane = op.apply(*lane, xs[i]);
                i += REDUCE_LANES;
            }
        }
    }
    // shfl.sync.down by s: lane k gets lane k + s (its own value past lane 31).
    let mut s = REDUCE_LANES / 2;
    while s >= 1 {
        let before = lanes;
        for k in 0..REDUCE_LANES {
            let other = if k + s < REDUCE_LANES {
                before[k + s]
            } else {
                before[k]
            };
            lanes[k] = op.apply(before[k], other);
        }
        s /= 2;
    }
    lanes[0]
}

/// Deterministic values: mostly in [-1, 1), with values that tell orders apart (huge and tiny
/// magnitudes, signed zeros) sprinkled in, and for every third seed infinities and NaN too.
fn data(n: usize, seed: u64) -> Vec<f32> {
    let specials = seed.is_multiple_of(3);
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            match (s >> 8) % 97 {
                0 => 3.0e7 * u,
                1 => 1e-30 * u,
                2 => -0.0,
                3 if specials && i % 5 == 0 => f32::INFINITY,
                4 if specials && i % 7 == 0 => f32::NAN,
                _ => u,
            }
        })
        .collect()
}

#[test]
fn the_warp_schedule_folds_in_the_documented_order() {
    for op in [ReduceOp::Sum, ReduceOp::Max] {
        for len in [0usize, 1, 31, 32, 33, 127, 128, 129, 4095, 4096] {
            for seed in 0..6 {
                let xs = data(len, seed * 1000 + len as u64);
                let want = block_partial(op, &xs);
                for vector in [false, true] {
                    let got = warp_partial(op, &xs, vector);
                    let same = got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan());
                    assert!(
                        same,
                        "{op:?} len {len} seed {seed} vector {vector}: {got:e} vs {want:e}"
                    );
                }
            }
        }
    }
    // Sums of values whose order shows: a huge value and ones in different lanes.
    let mut xs = vec![0.0f32; REDUCE_BLOCK];
    xs[0] = 16_777_216.0;
    xs[1] = 1.0;
    xs[32] = 1.0;
    xs[4] = 1.0;
    assert_eq!(
        warp_partial(ReduceOp::Sum, &xs, true).to_bits(),
        block_partial(ReduceOp::Sum, &xs).to_bits()
    );
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// The text of entry `name` (from its `.entry` line to the next entry or shared array).
fn entry<'a>(source: &'a str, name: &str) -> &'a str {
    let start = source
        .find(&format!(".entry {name}("))
        .unwrap_or_else(|| panic!("no entry {name}"));
    let rest = &source[start..];
    let end = rest[1..]
        .find(".visible .entry")
        .or_else(|| rest[1..].find(".shared"))
        .map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

#[test]
fn every_stage_has_its_entries_and_reducing_ones_write_partials() {
    let k = ptx_kernels::trust_ratio();
    let m = emit(&k, &Options::default()).expect("emit");
    assert_eq!(m.stages.len(), 2);
    let outputs = k.stages[0].reduce.len();
    assert_eq!(outputs, 3);
    // Stage 0 reduces: every entry has the 5-step tree per output, the partials store, and the
    // shared slot of the 4-wide path (vector and multi entries only).
    for (e, transposes) in [
        (&m.stages[0].vector, true),
        (&m.stages[0].scalar, false),
        (&m.stages[0].multi, true),
    ] {
        let text = entry(&m.source, &e.name);
        assert_eq!(count(text, "shfl.sync.down.b32"), 5 * outputs, "{}", e.name);
        for s in [16, 8, 4, 2, 1] {
            assert!(
                text.contains(&format!(", {s}, 31, -1;")),
                "{}: shfl by {s}",
                e.name
            );
        }
        assert_eq!(
            count(text, "st.global.f32"),
            outputs,
            "{}: one partial each",
            e.name
        );
        // p and g are read, nothing is stored: no stores besides the partials.
        assert_eq!(count(text, "st.global.v4.f32"), 0, "{}", e.name);
        assert_eq!(
            count(text, "st.shared.v4.f32"),
            if transposes { outputs } else { 0 }
        );
        if transposes {
            for off in ["+128]", "+256]", "+384]"] {
                assert_eq!(count(text, off), outputs, "{}: ld.shared {off}", e.name);
            }
            assert!(text.contains("bar.warp.sync -1"));
        }
        // Sum folds are IEEE adds, the Max fold the NaN-propagating max.
        assert!(text.contains("add.rn.f32") && text.contains("max.NaN.f32"));
        assert!(
            text.contains("mov.f32") && text.contains("0fFF800000"),
            "-inf identity"
        );
        assert!(text.contains("0f80000000"), "-0.0 identity");
    }
    assert!(m.stages[0]
        .vector
        .params
        .contains(&optc_kernel::abi::Param::Partials));
    assert!(!m.stages[1]
        .vector
        .params
        .contains(&optc_kernel::abi::Param::Partials));
    assert_eq!(
        m.stages[0].record.partials_offset(),
        Some(32),
        "p, g, n, flags"
    );
    assert_eq!(m.stages[0].chunk_multiple, REDUCE_BLOCK);
    assert_eq!(m.stages[0].block_multiple, 32);
    // Stage 1 is elementwise: the v4 body stores p once per group, no reduction machinery.
    let s1 = entry(&m.source, &m.stages[1].vector.name);
    assert_eq!(count(s1, "st.global.v4.f32"), 1);
    assert_eq!(count(s1, "shfl"), 0);
    assert_eq!(m.stages[1].chunk_multiple, 4);
    optc_kernel::abi::check(&k, &m).expect("the module's lists fit the kernel");
}

#[test]
fn fast_math_does_not_touch_the_folds() {
    let k = ptx_kernels::store_and_reduce();
    let fast = Options {
        fast_math: true,
        ..Options::default()
    };
    let m = emit(&k, &fast).expect("emit");
    let text = entry(&m.source, &m.stages[0].scalar.name);
    // The Max fold stays exact (no .ftz), the Sum fold stays `.rn` (never contracted).
    assert!(text.contains("max.NaN.f32"), "{text}");
    assert!(!text.contains("max.ftz"), "{text}");
    assert!(text.contains("add.rn.f32"), "{text}");
}

/// Adafactor's matrix kernel: stage 0 (Row and Col outputs) gets a cols entry then a rows
/// entry, the later stages (no Col outputs) a rows entry only; the lists are checked as data and
/// a list that does not fit is refused.
#[test]
fn factored_stages_get_rows_and_cols_entries() {
    use optc_kernel::abi::{check, factored_params, FactoredEntry, Param};
    let options = optc_compiler::CompileOptions {
        rank: optc_kernel::RankClass::Matrix,
        ..Default::default()
    };
    let k = optc_compiler::stdlib::rule("adafactor")
        .and_then(Result::ok)
        .expect("stdlib")
        .specialize_with(&[], &options)
        .expect("kernel");
    let m = emit(&k, &Options::default()).expect("emit");
    assert!(m.stages.is_empty());
    assert_eq!(m.factored.len(), k.stages.len());
    check(&k, &m).expect("fits");
    let cols = m.factored[0]
        .cols
        .as_ref()
        .expect("stage 0 has Col outputs");
    assert_eq!(cols.name, "optc_adafactor_s0_cols");
    assert_eq!(cols.params, factored_params(&k, 0, FactoredEntry::Cols));
    assert!(cols.params.contains(&Param::Partials));
    assert!(m.factored[1..].iter().all(|e| e.cols.is_none()));
    // Stage 2 stores p and reduces nothing: no partials pointer.
    assert!(!m.factored[2].rows.params.contains(&Param::Partials));
    for e in &m.factored {
        assert!(m
            .source
            .contains(&format!(".visible .entry {}(", e.rows.name)));
    }
    let mut no_cols = m.clone();
    no_cols.factored[0].cols = None;
    assert!(check(&k, &no_cols).is_err());
    let mut fewer = m.clone();
    fewer.factored.pop();
    assert!(check(&k, &fewer).is_err());
    let elementwise = emit(&ptx_kernels::trust_ratio(), &Options::default()).expect("emit");
    assert!(check(&k, &elementwise).is_err());
    assert!(check(&ptx_kernels::trust_ratio(), &m).is_err());
}

#[test]
fn lists_that_do_not_fit_the_kernel_are_refused() {
    let k = ptx_kernels::trust_ratio();
    let m = emit(&k, &Options::default()).expect("emit");
    let mut fewer = m.clone();
    fewer.stages.pop();
    assert!(optc_kernel::abi::check(&k, &fewer).is_err());
    let mut no_partials = m.clone();
    no_partials.stages[0]
        .vector
        .params
        .retain(|p| *p != optc_kernel::abi::Param::Partials);
    assert!(optc_kernel::abi::check(&k, &no_partials).is_err());
    let mut record = m.clone();
    record.stages[0].record = optc_kernel::table::TableLayout::new(4, false, 0);
    assert!(optc_kernel::abi::check(&k, &record).is_err());
    // An elementwise kernel's module does not fit a reducing kernel.
    let other = emit(&ptx_kernels::slow_weights(), &Options::default()).expect("emit");
    assert!(optc_kernel::abi::check(&k, &other).is_err());
}

#[test]
fn reducing_stage_snapshot() {
    let m = emit(&ptx_kernels::trust_ratio(), &Options::default()).expect("emit");
    insta::assert_snapshot!(m.source);
}

#[test]
fn artifacts_carry_the_entry_lists_and_refuse_lists_that_do_not_fit() {
    use optc_kernel::{Artifact, ArtifactError};
    let k = ptx_kernels::trust_ratio();
    let m = emit(&k, &Options::default()).expect("emit");
    let text = Artifact::new(k.clone(), Some(m.clone()))
        .to_json()
        .expect("json");
    assert!(text.contains(r#""kind": "partials""#), "{text}");
    let back = Artifact::from_json(&text).expect("reads back");
    assert_eq!(back.ptx.as_ref(), Some(&m));
    // Another stage's list swapped in: the artifact is refused before any runtime sees it.
    let mut wrong = m.clone();
    wrong.stages.swap(0, 1);
    let text = Artifact::new(k, Some(wrong)).to_json().expect("json");
    let err = Artifact::from_json(&text).expect_err("lists do not fit");
    assert!(matches!(err, ArtifactError::Entries { .. }), "{err}");
    assert!(err.to_string().contains("recompile the rule"), "{err}");
}
