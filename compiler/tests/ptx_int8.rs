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

use optc_compiler::backend::ptx::{emit, Options};
use optc_compiler::passes::CompileOptions;
use optc_compiler::{stdlib, Kernel};
use optc_kernel::abi;
use optc_kernel::quant::DynamicMap;
use optc_kernel::{Dtype, Precision, RankClass};
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

fn assemble(ptxas: &PathBuf, source: &str, name: &str, arch: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("optc-ptx-int8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let input = dir.join(format!("{name}.ptx"));
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
                if let Err(e) = assemble(&ptxas, source, name, arch) {
                    failures.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
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
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("optc-ptx-int8-{}", std::process::id())),
    );
    eprintln!("ptxas accepted {} int8 modules", jobs.len());
}
