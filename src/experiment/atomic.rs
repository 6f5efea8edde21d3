//! Atomic file writes for run outputs: a reader (or a crash, or Ctrl-C)
//! sees either the old file or the complete new one, never half of it.
//!
//! The bytes go to a temporary file in the SAME directory (a rename is only
//! atomic within one file system), which is flushed to disk (`fsync`) and
//! then renamed over the target. On Unix the directory is synced too, so the
//! rename itself survives a power loss. Errors are [`Error::File`] naming
//! the target path and the step that failed.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Distinguishes temp files of concurrent writers within one process;
/// the process id distinguishes processes.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically, replacing an existing file.
///
/// The parent directory must exist (see [`create_dir_all`]); a missing one
/// is an error naming `path`. No temporary file is left behind, on success
/// or on failure.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "not a file path (it has no file name)"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::file(
            path,
            format!("cannot write: directory {} does not exist", dir.display()),
        ));
    }
    // Hidden, and named after the target, so a leftover (after a kill -9)
    // says what it was.
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_then_rename(&tmp, path, bytes);
    if result.is_err() {
        // Best effort: the error that matters is the one already in hand.
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(&dir);
    Ok(())
}

/// Writes `text` to `path` atomically (UTF-8); see [`write_atomic`].
pub fn write_atomic_str(path: impl AsRef<Path>, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes())
}

/// Creates a directory and its parents, with an error naming the path.
pub fn create_dir_all(path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    fs::create_dir_all(path).map_err(|e| Error::file(path, format!("cannot create directory: {e}")))
}

fn write_then_rename(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| {
            Error::file(
                path,
                format!("cannot create temporary file {}: {e}", tmp.display()),
            )
        })?;
    file.write_all(bytes)
        .map_err(|e| Error::file(path, format!("writing {}: {e}", tmp.display())))?;
    file.sync_all()
        .map_err(|e| Error::file(path, format!("syncing {}: {e}", tmp.display())))?;
    drop(file);
    fs::rename(tmp, path).map_err(|e| {
        Error::file(
            path,
            format!("cannot rename {} over it: {e}", tmp.display()),
        )
    })
}

/// Makes the rename durable. Not every platform or file system lets a
/// directory be opened or synced, and the data is already complete and in
/// place, so failures here are ignored.
fn sync_dir(dir: &Path) {
    if cfg!(unix) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}
