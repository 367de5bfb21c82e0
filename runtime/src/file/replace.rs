//! Replacing a small file atomically and durably: the one way tally writes a
//! snapshot, a checkpoint or a state file that must be either the old one or
//! the new one after a crash, never a mix.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Replaces `path`: `write` fills `<path>.tmp` (created or truncated), which
/// is then synced, renamed over `path`, and the directory synced, so after a
/// crash `path` is the old file or the new one. Returns what `write`
/// returned; on an error `path` is untouched (a `.tmp` may stay behind and
/// is overwritten next time).
///
/// Synchronous and allocating: for start-up, snapshots and tools, never a
/// hot path.
pub fn replace_atomically<T, E: From<io::Error>>(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, E> {
    let temporary = temporary_path(path);
    let mut file = File::create(&temporary)?;
    let written = write(&mut file)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()?;
    Ok(written)
}

/// `<path>.tmp`.
fn temporary_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".tmp");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn the_new_content_replaces_the_old_and_no_temporary_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, b"old").unwrap();
        let n = replace_atomically(&path, |file| {
            file.write_all(b"new")?;
            io::Result::Ok(3)
        })
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!dir.path().join("state.tmp").exists());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, b"old").unwrap();
        let result: io::Result<()> = replace_atomically(&path, |file| {
            file.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(result.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn the_temporary_sits_beside_the_file() {
        assert_eq!(temporary_path(Path::new("name")), PathBuf::from("name.tmp"));
        assert_eq!(
            temporary_path(Path::new("/a/b.snapshot")),
            PathBuf::from("/a/b.snapshot.tmp")
        );
    }
}
