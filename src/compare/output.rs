//! Writing output files atomically: the bytes go to a temporary file in the same folder, which
//! is flushed to disk and then renamed over the target, so a reader sees the old file or the
//! whole new one, never a part.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::compare::CompareError;

fn output(path: &Path, e: &dyn std::fmt::Display) -> CompareError {
    CompareError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A temporary path next to `path`, keeping its extension (plotters picks the image format
/// from it).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{}.tmp-{name}", std::process::id()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CompareError> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(output(path, &e));
    }
    commit(&tmp, path)
}

/// Flushes the finished file `tmp` to disk and renames it over `path`.
pub fn commit(tmp: &Path, path: &Path) -> Result<(), CompareError> {
    let result = std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .and_then(|_| std::fs::rename(tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(tmp);
        return Err(output(path, &e));
    }
    Ok(())
}
