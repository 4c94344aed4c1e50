//! Every PTX module the backend emits is assembled by NVIDIA's `ptxas` for sm_80 and sm_90,
//! with and without fast math. ptxas is found through `OPTC_PTXAS`, else on `PATH`
//! (`.ci/fetch-ptxas.sh` downloads it). Without it the test is skipped with a message, except
//! under CI (env `CI` set), where a missing ptxas is a failure.

mod ptx_kernels;

use optc_compiler::backend::ptx::{emit, Options};
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

#[test]
fn ptxas_accepts_every_hand_built_kernel() {
    let Some(ptxas) = find_ptxas() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "ptxas not found (set OPTC_PTXAS or put it on PATH; .ci/fetch-ptxas.sh downloads it)"
        );
        eprintln!("SKIPPED: ptxas not found; set OPTC_PTXAS or run .ci/fetch-ptxas.sh");
        return;
    };
    let mut failures = Vec::new();
    let mut checked = 0;
    for kernel in ptx_kernels::all() {
        for fast_math in [false, true] {
            let opts = Options {
                fast_math,
                ..Options::default()
            };
            let module = emit(&kernel, &opts).unwrap_or_else(|e| panic!("{}: {e}", kernel.rule));
            let name = format!(
                "{}-{}",
                kernel.rule.replace(' ', "_"),
                if fast_math { "fast" } else { "rn" }
            );
            for arch in ["sm_80", "sm_90"] {
                checked += 1;
                if let Err(e) = assemble(&ptxas, &module.source, &name, arch) {
                    failures.push(e);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("optc-ptx-test-{}", std::process::id())),
    );
    eprintln!("ptxas accepted {checked} modules");
}
