//! Every PTX module the backend emits (every stdlib rule in every flag combination, the kernel
//! variants of its default-off flag set, and the
//! hand-built kernels of `ptx_kernels`, staged ones with reductions included), with the entries
//! of every stage, is assembled by NVIDIA's `ptxas` for sm_80 and sm_90, with and without fast
//! math. ptxas is found through `OPTC_PTXAS`, else on `PATH`
//! (`.ci/fetch-ptxas.sh` downloads it). Without it the test is skipped with a message, except
//! under CI (env `CI` set), where a missing ptxas is a failure.

mod ptx_kernels;
mod ptxas;
mod storage_settings;

use optc_compiler::backend::ptx::{emit, Options};
use optc_compiler::stdlib;

#[test]
fn ptxas_accepts_every_stdlib_rule_and_hand_built_kernel() {
    let Some(ptxas) = ptxas::find_or_skip() else {
        return;
    };
    let mut jobs = Vec::new();
    for (label, kernel, _) in ptx_kernels::every::kernels() {
        for fast_math in [false, true] {
            let opts = Options {
                fast_math,
                ..Options::default()
            };
            // Factored kernels (adafactor's matrices) included: their rows/cols entries.
            let module = emit(&kernel, &opts).unwrap_or_else(|e| panic!("{label}: {e}"));
            let name = format!("{label}-{}", if fast_math { "fast" } else { "rn" });
            for arch in ["sm_80", "sm_90"] {
                jobs.push((name.clone(), module.source.clone(), arch));
            }
        }
    }
    let failures = ptxas::assemble_all(&ptxas, "test", &jobs);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!("ptxas accepted {} modules", jobs.len());
}

/// The storage settings of `runtime/tests/api_dtypes.rs` ([`storage_settings::api_dtypes`]),
/// then int8 states with f32 and 16-bit parameters.
fn storage_settings() -> Vec<optc_kernel::Precision> {
    use optc_kernel::Dtype;
    use storage_settings::precision as p;
    let mut out = storage_settings::api_dtypes();
    out.extend([
        p(Dtype::F32, Dtype::Int8, false, None),
        p(Dtype::Bf16, Dtype::Int8, true, None),
        p(Dtype::F16, Dtype::Int8, false, Some(5)),
        p(Dtype::Bf16, Dtype::Int8, false, Some(6)),
    ]);
    out
}

/// Storage dtypes (docs/dtypes.md): every stdlib rule's first flag set (variants included) under
/// every setting of [`storage_settings`], factored kernels and `_q8` entries included, emits
/// PTX (no refusal: bf16 before sm_80 is the only one) that ptxas assembles for sm_80 (in
/// parallel, one module per kernel and setting), AdamW's and Adafactor's first for sm_90 too.
#[test]
fn ptxas_accepts_every_stdlib_rule_under_storage_dtypes() {
    use optc_kernel::{abi, Dtype};
    let mut jobs = Vec::new();
    let mut rules = std::collections::BTreeSet::new();
    let mut first = std::collections::BTreeSet::new();
    for (label, kernel, _) in ptx_kernels::every::kernels() {
        // Stdlib kernels of the default flag set (labels `NAME-BITS-...`, BITS all 0).
        if !label
            .split('-')
            .nth(1)
            .is_some_and(|b| !b.is_empty() && !b.contains('1'))
        {
            continue;
        }
        for (i, precision) in storage_settings().into_iter().enumerate() {
            let k = match precision.apply(&kernel) {
                Ok(k) => k,
                // Only where the storage does not fit the rule (int8 states of a rule whose
                // states are all row, column or matrix states stay f32, which applies).
                Err(e) => panic!("{label} {precision:?}: {e}"),
            };
            let module = emit(&k, &Options::default())
                .unwrap_or_else(|e| panic!("{label} {precision:?}: {e}"));
            if precision.param != Dtype::F32 {
                assert!(module.source.contains(".b16"), "{label}: no 16-bit access");
                let narrow = if precision.param == Dtype::Bf16 {
                    "bf16.f32"
                } else {
                    "f16.f32"
                };
                assert!(module.source.contains(narrow), "{label}: no {narrow}");
            }
            if abi::stochastic(&k) {
                assert!(
                    module.source.contains("mul.lo.u32") && module.source.contains("_sr_key"),
                    "{label}: no stochastic rounding"
                );
            }
            // Every kernel above is emitted and checked; ptxas (about a second a module, CI has
            // 2 cores) assembles the first kernel of each rule under each setting (its first
            // rank class, unclipped: Adafactor's factored matrix kernel), AdamW's and
            // Adafactor's for sm_90 too.
            if !first.insert((k.rule.clone(), i)) {
                continue;
            }
            let name = format!("{label}-{i}");
            jobs.push((name.clone(), module.source.clone(), "sm_80"));
            if matches!(k.rule.as_str(), "adamw" | "adafactor") {
                jobs.push((name, module.source, "sm_90"));
            }
            rules.insert(k.rule.clone());
        }
        // bf16 before sm_80 is refused with a clear error.
        if let Ok(k) = storage_settings()[0].apply(&kernel) {
            let old = Options {
                target: "sm_70".into(),
                version: "7.0".into(),
                ..Options::default()
            };
            let e = emit(&k, &old).expect_err("bf16 on sm_70");
            assert!(e.to_string().contains("bf16 storage needs sm_80"), "{e}");
        }
    }
    assert_eq!(
        rules.len(),
        stdlib::names().count(),
        "every stdlib rule: {rules:?}"
    );
    assert!(!jobs.is_empty());
    let Some(ptxas) = ptxas::find_or_skip() else {
        return;
    };
    let failures = ptxas::assemble_all(&ptxas, "dtype", &jobs);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!(
        "ptxas accepted {} storage-dtype modules ({} rules x {} settings)",
        jobs.len(),
        rules.len(),
        storage_settings().len()
    );
}
