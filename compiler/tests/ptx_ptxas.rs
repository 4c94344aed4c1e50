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

/// Runs ptxas on `source` for `arch`; returns its stderr on failure.
fn assemble(ptxas: &PathBuf, source: &str, name: &str, arch: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("optc-ptx-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
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
                if let Err(e) = assemble(&ptxas, source, name, arch) {
                    failures.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("optc-ptx-test-{}", std::process::id())),
    );
    eprintln!("ptxas accepted {} modules", jobs.len());
}

/// Storage dtypes (docs/dtypes.md): every stdlib rule's first flag set (variants included) with
/// bf16 or f16 params and grads, bf16 or f32 states and f32 master weights, assembled for sm_80;
/// what PTX does not lower yet (stochastic rounding, factored kernels with 16-bit
/// storage, bf16 before sm_80) is a clear error, never wrong code.
#[test]
fn ptxas_accepts_every_stdlib_rule_under_storage_dtypes() {
    use optc_kernel::{Dtype, Precision};
    let settings = [
        (Dtype::Bf16, Dtype::Bf16, false),
        (Dtype::F16, Dtype::F32, false),
        (Dtype::F16, Dtype::Bf16, true),
        (Dtype::Bf16, Dtype::F32, true),
    ];
    let mut jobs = Vec::new();
    for (label, kernel) in kernels() {
        // Stdlib kernels of the default flag set (labels `NAME-BITS-...`, BITS all 0).
        if !label
            .split('-')
            .nth(1)
            .is_some_and(|b| !b.is_empty() && !b.contains('1'))
        {
            continue;
        }
        for (param, state, master_weights) in settings {
            let precision = Precision {
                param,
                state,
                master_weights,
                stochastic_rounding: None,
            };
            let Ok(k) = precision.apply(&kernel) else {
                continue;
            };
            match emit(&k, &Options::default()) {
                Ok(module) => {
                    // The 16-bit conversions are sm_80 instructions (sm_90 adds nothing here).
                    assert!(module.source.contains(".b16"), "{label}: no 16-bit access");
                    let narrow = if param == Dtype::Bf16 {
                        "cvt.rn.bf16.f32"
                    } else {
                        "cvt.rn.f16.f32"
                    };
                    assert!(module.source.contains(narrow), "{label}: no {narrow}");
                    let name = format!("{label}-{param}-{state}-{master_weights}");
                    jobs.push((name, module.source.clone(), "sm_80"));
                }
                Err(e) => {
                    assert!(k.is_factored(), "{label} {precision:?}: {e}");
                    assert!(
                        e.to_string()
                            .contains("factored kernel with 16-bit storage"),
                        "{e}"
                    );
                }
            }
        }
        // Stochastic rounding and bf16 before sm_80 are refused.
        let sr = Precision {
            param: Dtype::Bf16,
            stochastic_rounding: Some(1),
            ..Precision::default()
        };
        if let Ok(k) = sr.apply(&kernel) {
            let e = emit(&k, &Options::default()).expect_err("stochastic rounding");
            assert!(e.to_string().contains("cannot compile this kernel"), "{e}");
        }
    }
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
                if let Err(e) = assemble(&ptxas, source, &format!("dtype-{name}"), arch) {
                    failures.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!("ptxas accepted {} storage-dtype modules", jobs.len());
}
