//! Atomic file writes: the one way optc writes a file (checkpoints and every CLI output).
//!
//! Takes a destination path and the bytes (or a function that writes a file at a given path);
//! writes them to a fresh temporary file in the destination's directory, flushes it to disk
//! (`fsync`), and renames it over the destination, then syncs the directory. A crash or an error
//! at any point before the rename leaves the old file byte-identical, and an error removes the
//! temporary file, so no `*.tmp` file is left behind.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` atomically (see the module docs).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> io::Result<()> {
    replace_with(path.as_ref(), |tmp| {
        let mut file = OpenOptions::new().write(true).truncate(true).open(tmp)?;
        file.write_all(bytes)
    })
}

/// Replaces `path` atomically with the file that `write` creates at the temporary path it is
/// given (for writers that only take a path, such as an image encoder). The temporary file
/// exists, empty, when `write` is called; `write` may truncate or recreate it. On error from
/// `write`, the temporary file is removed and `path` is untouched.
pub fn replace_with(path: &Path, write: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    let tmp = create_temp(path)?;
    let result = write(&tmp)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(path);
    Ok(())
}

/// Creates a new, empty temporary file next to `path`: `.tmp-PID-N.NAME` in the same directory,
/// so the rename never crosses a file system (and the extension, which some encoders read, is
/// kept).
fn create_temp(path: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` does not name a file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = std::ffi::OsString::from(format!(".tmp-{}-{n}.", std::process::id()));
        tmp_name.push(name);
        let tmp = dir.join(tmp_name);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(_) => return Ok(tmp),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Makes the rename durable where the platform allows opening a directory (Unix); elsewhere,
/// and on error, the rename is still atomic, only perhaps not yet on disk.
fn sync_dir(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("optc-atomic-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_default();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn writes_and_replaces() {
        let dir = scratch("replace");
        let path = dir.join("out.bin");
        write_atomic(&path, b"first").expect("first write");
        write_atomic(&path, b"second, longer").expect("second write");
        assert_eq!(
            std::fs::read(&path).ok().as_deref(),
            Some(&b"second, longer"[..])
        );
        assert_eq!(entries(&dir), vec!["out.bin".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failing_writer_leaves_the_old_file_and_no_temp_file() {
        let dir = scratch("fail");
        let path = dir.join("ckpt.safetensors");
        write_atomic(&path, b"old contents").expect("write");
        let err = replace_with(&path, |tmp| {
            std::fs::write(tmp, b"half of the new")?;
            Err(io::Error::other("disk full"))
        })
        .expect_err("the writer fails");
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(
            std::fs::read(&path).ok().as_deref(),
            Some(&b"old contents"[..])
        );
        assert_eq!(entries(&dir), vec!["ckpt.safetensors".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_directory_is_an_error_and_creates_nothing() {
        let dir = scratch("missing");
        let path = dir.join("no/such/dir/out.bin");
        assert!(write_atomic(&path, b"x").is_err());
        assert_eq!(entries(&dir), Vec::<String>::new());
        assert!(write_atomic(Path::new("/"), b"x").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
