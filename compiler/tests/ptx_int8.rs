//! int8 states on the PTX backend (`backend/ptx/quant.rs`): every stdlib rule, in every flag
//! combination and rank class, with `--state-dtype int8`, emits an `_q8` entry per stage (also
//! with a bf16 or f16 parameter, an f32 master, stochastic rounding), listed in the module's
//! stage entries, and its `.const` tables are the dynamic maps of `optc_kernel::quant`, entry for
//! entry. NVIDIA's `ptxas` assembles one module per rule for sm_80 (AdamW's and LAMB's for sm_90
//! too, AdamW's fast-math one, and AdamW's and LAMB's with each 16-bit parameter setting), in
//! parallel: well under a minute on 2 cores. ptxas is found
//! through `OPTC_PTXAS`, else on `PATH`; without it the assembly is skipped with a message,
//! except under CI (env `CI` set), where a missing ptxas is a failure. (`ptx_sim` runs the `_q8`
//! entries against the interpreter.)

mod ptxas;

use optc_compiler::backend::ptx::{emit, Options};
use optc_compiler::passes::CompileOptions;
use optc_compiler::{stdlib, Kernel};
use optc_kernel::abi;
use optc_kernel::quant::DynamicMap;
use optc_kernel::{Dtype, Precision, RankClass};

/// Every stdlib kernel with int8 states (factored kernels keep f32 states and are skipped).
fn kernels() -> Vec<(String, Kernel)> {
    let mut out = Vec::new();
    for name in stdlib::names() {
        let rule = stdlib::rule(name)
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("{name}"));
        let ranks = if rule.uses_rank() {
            vec![RankClass::Matrix, RankClass::Vector]
        } else {
            vec![RankClass::Any]
        };
        for rank in ranks {
            for (i, flags) in rule.flag_sets().into_iter().enumerate() {
                for clip in [false, true] {
                    if clip && i > 0 {
                        continue;
                    }
                    let base = rule
                        .specialize_values_with(
                            &flags,
                            &CompileOptions {
                                clip,
                                rank,
                                loss_scale: false,
                            },
                        )
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    // With 16-bit parameters (a master, stochastic rounding): the first flag
                    // set, unclipped.
                    let settings: &[(&str, Dtype, bool, Option<u64>)] = if i == 0 && !clip {
                        &[
                            ("int8", Dtype::F32, false, None),
                            ("bf16-master-int8", Dtype::Bf16, true, None),
                            ("f16-int8", Dtype::F16, false, None),
                            ("bf16-sr-int8", Dtype::Bf16, false, Some(5)),
                            ("f16-sr-int8", Dtype::F16, false, Some(6)),
                        ]
                    } else {
                        &[("int8", Dtype::F32, false, None)]
                    };
                    for &(tag, param, master, sr) in settings {
                        let k = Precision {
                            param,
                            state: Dtype::Int8,
                            master_weights: master,
                            stochastic_rounding: sr,
                        }
                        .apply(&base)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                        if k.storage.states.contains(&Dtype::Int8) {
                            let bits: String =
                                flags.iter().map(|f| if *f { '1' } else { '0' }).collect();
                            let clip = if clip { "-clip" } else { "" };
                            out.push((format!("{name}-{bits}-{rank:?}{clip}-{tag}"), k));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The words of the `.const` table `name` in `source`.
fn table(source: &str, name: &str) -> Vec<u32> {
    let start = source
        .find(&format!("{name}[512] = {{"))
        .unwrap_or_else(|| panic!("no table {name}"));
    let rest = &source[start..];
    let body = &rest[rest.find('{').expect("{") + 1..rest.find('}').expect("}")];
    body.split(',')
        .map(|w| u32::from_str_radix(w.trim().trim_start_matches("0x"), 16).expect("hex"))
        .collect()
}

#[test]
fn every_stdlib_rule_with_int8_states_has_q8_entries_that_ptxas_accepts() {
    let kernels = kernels();
    // Every rule with per-element states (all but a few variants) is here.
    let rules: std::collections::BTreeSet<&str> =
        kernels.iter().map(|(_, k)| k.rule.as_str()).collect();
    assert!(rules.len() >= 15, "{rules:?}");
    let mut jobs = Vec::new();
    let mut assembled = std::collections::BTreeSet::new();
    for (label, kernel) in &kernels {
        for fast_math in [false, true] {
            let opts = Options {
                fast_math,
                ..Options::default()
            };
            let module = emit(kernel, &opts).unwrap_or_else(|e| panic!("{label}: {e}"));
            for (k, st) in module.stages.iter().enumerate() {
                let e = st
                    .int8
                    .as_ref()
                    .unwrap_or_else(|| panic!("{label}: stage {k} has no int8 entry"));
                assert!(
                    module.source.contains(&format!(".entry {}(", e.name)),
                    "{label}"
                );
            }
            let values = table(&module.source, "optc_q8_values");
            let want: Vec<u32> = [DynamicMap::signed(), DynamicMap::unsigned()]
                .iter()
                .flat_map(|m| m.values().map(f32::to_bits))
                .collect();
            assert_eq!(values, want, "{label}");
            let name = format!("{label}-{}", if fast_math { "fast" } else { "rn" });
            // ptxas takes about a second a module (CI has 2 cores): every module above is
            // emitted and checked, and ptxas assembles the first module of each rule for sm_80
            // (its first flag set and rank class, unclipped, round-to-nearest), plus AdamW's and
            // LAMB's (a staged rule) for sm_90 and AdamW's fast-math one for sm_80.
            // With a 16-bit parameter, AdamW's and LAMB's modules of each setting for sm_80
            // (`ptx_ptxas` assembles every rule under these settings).
            if kernel.storage.param != Dtype::F32 {
                if !fast_math && matches!(kernel.rule.as_str(), "adamw" | "lamb") {
                    assert!(module.source.contains("ld.global.b16"), "{label}");
                    if abi::stochastic(kernel) {
                        assert!(module.source.contains("mul.lo.u32"), "{label}: no hash");
                    }
                    jobs.push((name.clone(), module.source.clone(), "sm_80"));
                }
                continue;
            }
            let first = !fast_math && assembled.insert(kernel.rule.clone());
            if first {
                jobs.push((name.clone(), module.source.clone(), "sm_80"));
                if matches!(kernel.rule.as_str(), "adamw" | "lamb") {
                    jobs.push((name.clone(), module.source.clone(), "sm_90"));
                }
            }
            if fast_math && kernel.rule == "adamw" && assembled.insert(format!("{label}-fast")) {
                jobs.push((name.clone(), module.source.clone(), "sm_80"));
            }
        }
    }
    let Some(ptxas) = ptxas::find_or_skip() else {
        return;
    };
    let failures = ptxas::assemble_all(&ptxas, "int8", &jobs);
    // Every rule with int8 states is assembled.
    let covered: std::collections::BTreeSet<&str> = kernels
        .iter()
        .filter(|(_, k)| k.storage.param == Dtype::F32)
        .map(|(_, k)| k.rule.as_str())
        .collect();
    assert!(
        covered.iter().all(|r| assembled.contains(*r)),
        "{covered:?}"
    );
    assert!(
        failures.is_empty(),
        "{}",
        &failures[..failures.len().min(3)].join("\n\n")
    );
    eprintln!("ptxas accepted {} int8 modules", jobs.len());
}
