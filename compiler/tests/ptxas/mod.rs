//! NVIDIA's `ptxas` for the PTX tests (`ptx_ptxas`, `ptx_int8`): finding it and assembling
//! modules in parallel, one ptxas per core. ptxas is found through `OPTC_PTXAS`, else on `PATH`
//! (`.ci/fetch-ptxas.sh` downloads it); without it a test is skipped with a message, except
//! under CI (env `CI` set), where a missing ptxas is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One module to assemble: its name (unique per test), its PTX text and the target arch.
pub type Job = (String, String, &'static str);

fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OPTC_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("ptxas"))
        .find(|p| p.is_file())
}

/// ptxas, or `None` after printing that the assembly is skipped. Panics under CI when ptxas is
/// missing.
pub fn find_or_skip() -> Option<PathBuf> {
    let found = find();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "ptxas not found (set OPTC_PTXAS or put it on PATH; .ci/fetch-ptxas.sh downloads it)"
        );
        eprintln!("SKIPPED: ptxas not found; set OPTC_PTXAS or run .ci/fetch-ptxas.sh");
    }
    found
}

/// This test's scratch directory `optc-ptx-<what>-<pid>` (one per test: each removes its own).
fn scratch(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("optc-ptx-{what}-{}", std::process::id()))
}

/// Runs ptxas on `source` for `arch` in `dir`; returns its stderr on failure.
fn assemble(ptxas: &Path, dir: &Path, source: &str, name: &str, arch: &str) -> Result<(), String> {
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

/// Assembles every job (ptxas is single-threaded: one per core) in the scratch directory
/// `optc-ptx-<what>-<pid>`, and gives the failures' messages. The directory is removed when
/// every job passed (kept for a look otherwise).
pub fn assemble_all(ptxas: &Path, what: &str, jobs: &[Job]) -> Vec<String> {
    let dir = scratch(what);
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
                if let Err(e) = assemble(ptxas, &dir, source, name, arch) {
                    failures.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    failures
}
