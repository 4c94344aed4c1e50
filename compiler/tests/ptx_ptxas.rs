//! Every PTX module the backend emits (every stdlib rule in every flag combination, the kernel
//! variants of its default-off flag set, and the
//! hand-built kernels of `ptx_kernels`, staged ones with reductions included), with the entries
//! of every stage, is assembled by NVIDIA's `ptxas` for sm_80 and sm_90, with and without fast
//! math. ptxas is found through `OPTC_PTXAS`, else on `PATH`
//! (`.ci/fetch-ptxas.sh` downloads it). Without it the test is skipped with a message, except
//! under CI (env `CI` set), where a missing ptxas is a failure.

mod ptx_kernels;

use optc_compiler::backend::ptx::{emit, Options};
use optc_compiler::passes::CompileOptions;
use optc_compiler::{stdlib, Kernel};
use optc_kernel::RankClass;
use std::path::PathBuf;
use std::process::Command;

fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OPTC_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("ptxas"))
        .find(|p| p.is_file())
}

/// This test's scratch directory `optc-ptx-<what>-<pid>` (one per test: each removes its own).
fn scratch(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("optc-ptx-{what}-{}", std::process::id()))
}

/// Runs ptxas on `source` for `arch` in `dir`; returns its stderr on failure.
fn assemble(
    ptxas: &PathBuf,
    dir: &std::path::Path,
    source: &str,
    name: &str,
    arch: &str,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    // One input per job: the sm_80 and sm_90 jobs of a module run at the same time.
    let input = dir.join(format!("{name}-{arch}.ptx"));
    let output = dir.join(format!("{name}-{arch}.cubin"));
    std::fs::write(&input, source).map_err(|e| e.to_string())?;
    let out = Command::new(ptxas)
        .arg(format!("-arch={arch}"))
        .arg("-o")
        .arg(&output)
        .arg(&input)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", ptxas.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ptxas -arch={arch} failed ({}) on {}:\n{}",
            out.status,
            input.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Every stdlib rule (staged ones included) in every flag combination and rank class, each
/// also clipped by the global norm, loss-scaled, and both, with its default flags (and the
/// variants of each), then the hand-built kernels.
fn kernels() -> Vec<(String, Kernel)> {
    let mut out = Vec::new();
    for name in stdlib::names() {
        let rule = match stdlib::rule(name) {
            Some(Ok(rule)) => rule,
            other => panic!("stdlib rule {name} does not compile: {other:?}"),
        };
        let ranks = if rule.uses_rank() {
            vec![RankClass::Matrix, RankClass::Vector]
        } else {
            vec![RankClass::Any]
        };
        for rank in ranks {
            for (i, flags) in rule.flag_sets().into_iter().enumerate() {
                for (clip, loss_scale) in
                    [(false, false), (true, false), (false, true), (true, true)]
                {
                    if (clip || loss_scale) && i > 0 {
                        continue;
                    }
                    let options = CompileOptions {
                        clip,
                        loss_scale,
                        rank,
                    };
                    let kernel = rule
                        .specialize_values_with(&flags, &options)
                        .unwrap_or_else(|e| panic!("{name} {flags:?} {options:?}: {e}"));
                    let bits: String = flags.iter().map(|f| if *f { '1' } else { '0' }).collect();
                    let tag = format!(
                        "{rank:?}{}{}",
                        if clip { "-clip" } else { "" },
                        if loss_scale { "-scale" } else { "" }
                    );
                    out.push((format!("{name}-{bits}-{tag}"), kernel));
                    // The kernel variants the runtime picks between (the first flag set's).
                    if i == 0 && !clip {
                        // (With loss scaling too: its variants keep the check in stage 0.)
                        let conds = rule.conditions(&flags, &options).expect("ok");
                        for v in conds.variants().filter(|_| !conds.is_empty()) {
                            let k = rule
                                .specialize_variant(&flags, &options, v)
                                .unwrap_or_else(|e| panic!("{name} {v}: {e}"));
                            out.push((format!("{name}-{bits}-{tag}-{v}"), k));
                        }
                    }
                }
            }
        }
    }
    for kernel in ptx_kernels::all() {
        out.push((kernel.rule.replace(' ', "_"), kernel));
    }
    out
}

#[test]
fn ptxas_accepts_every_stdlib_rule_and_hand_built_kernel() {
    let Some(ptxas) = find_ptxas() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "ptxas not found (set OPTC_PTXAS or put it on PATH; .ci/fetch-ptxas.sh downloads it)"
        );
        eprintln!("SKIPPED: ptxas not found; set OPTC_PTXAS or run .ci/fetch-ptxas.sh");
        return;
    };
    let mut jobs = Vec::new();
    for (label, kernel) in kernels() {
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
    // ptxas is single-threaded; run one per core.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, source, arch)) = jobs.get(i) else {
                    break;
                };
                if let Err(e) = assemble(&ptxas, &scratch("test"), source, name, arch) {
                    failures.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let _ = std::fs::remove_dir_all(scratch("test"));
    eprintln!("ptxas accepted {} modules", jobs.len());
}

/// The storage settings of `runtime/tests/api_dtypes.rs` (`settings()`: param, state, master
/// weights, stochastic-rounding seed), then int8 states with f32 and 16-bit parameters.
fn storage_settings() -> Vec<optc_kernel::Precision> {
    use optc_kernel::{Dtype, Precision};
    let p = |param, state, master_weights, stochastic_rounding| Precision {
        param,
        state,
        master_weights,
        stochastic_rounding,
    };
    vec![
        p(Dtype::Bf16, Dtype::Bf16, false, None),
        p(Dtype::F16, Dtype::F32, false, None),
        p(Dtype::F32, Dtype::Bf16, false, None),
        p(Dtype::Bf16, Dtype::Bf16, true, None),
        p(Dtype::F16, Dtype::Bf16, true, None),
        p(Dtype::Bf16, Dtype::F32, false, Some(3)),
        p(Dtype::F16, Dtype::Bf16, false, Some(4)),
        p(Dtype::F32, Dtype::Int8, false, None),
        p(Dtype::Bf16, Dtype::Int8, true, None),
        p(Dtype::F16, Dtype::Int8, false, Some(5)),
        p(Dtype::Bf16, Dtype::Int8, false, Some(6)),
    ]
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
    for (label, kernel) in kernels() {
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
    let Some(ptxas) = find_ptxas() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "ptxas not found (set OPTC_PTXAS or put it on PATH; .ci/fetch-ptxas.sh downloads it)"
        );
        eprintln!("SKIPPED: ptxas not found; set OPTC_PTXAS or run .ci/fetch-ptxas.sh");
        return;
    };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, source, arch)) = jobs.get(i) else {
                    break;
                };
                if let Err(e) = assemble(&ptxas, &scratch("dtype"), source, name, arch) {
                    failures.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let _ = std::fs::remove_dir_all(scratch("dtype"));
    eprintln!(
        "ptxas accepted {} storage-dtype modules ({} rules x {} settings)",
        jobs.len(),
        rules.len(),
        storage_settings().len()
    );
}
