//! The checkpoint beside a journal: how far the journal is known to reach.
//!
//! `<dir>/<session>.checkpoint`, 32 bytes, rewritten in place:
//!
//! ```text
//!  0  [8]  magic "TALLYCKP"
//!  8  u64  next_seq: every message below it is in the journal
//! 16  u64  end_offset: the journal's length when next_seq was reached
//! 24  u32  CRC32C over bytes 0..24
//! 28  [4]  zero
//! ```
//!
//! Big-endian like the journal. The writer stores it after the journal data
//! it describes is as durable as the fsync policy makes it (after each
//! `fdatasync` with `batch` and `interval`; periodically with `none`), so the
//! checkpoint is a lower bound of the journal's length. A journal found
//! shorter than its checkpoint lost acknowledged messages, and recovery
//! refuses it instead of handing their numbers out again.
//!
//! Two ways to store it:
//!
//! - [`store`] replaces the file atomically (a temporary file, `fsync`,
//!   `rename`, `fsync` of the directory): a crash leaves the old checkpoint
//!   or the new one, never a mix or none. Recovery uses it when it creates a
//!   journal, cuts one, or repairs one; `tally-journal repair` too. It costs
//!   two syncs and a rename, which is fine once per start.
//! - [`CheckpointFile`] rewrites the 32 bytes in place with one `pwrite` at
//!   offset 0, not synced itself: the journal writer's path, after every
//!   journal sync (with `batch` the same write goes through io_uring, linked
//!   behind the sync, on the file's handle). 32 bytes at the start of a file lie in one 512-byte sector, which
//!   disks write whole, so the write is not torn in practice; if it ever is,
//!   the CRC says so and recovery refuses with "checkpoint damaged" rather
//!   than trust it. A rename per sync would double the syncs on the hot
//!   path for no gain in safety.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tally_runtime::file::replace_atomically;
use tally_wire::mold::Session;

/// Bytes in the checkpoint file.
pub const CHECKPOINT_BYTES: usize = 32;
const CHECKPOINT_MAGIC: &[u8; 8] = b"TALLYCKP";

/// How far the journal is known to reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every message below this sequence number is in the journal.
    pub next_seq: u64,
    /// The journal's length in bytes when `next_seq` was reached.
    pub end_offset: u64,
}

impl Checkpoint {
    /// The 32 bytes stored on disk.
    pub fn encode(&self) -> [u8; CHECKPOINT_BYTES] {
        let mut bytes = [0u8; CHECKPOINT_BYTES];
        bytes[0..8].copy_from_slice(CHECKPOINT_MAGIC);
        bytes[8..16].copy_from_slice(&self.next_seq.to_be_bytes());
        bytes[16..24].copy_from_slice(&self.end_offset.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[0..24]);
        bytes[24..28].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// Parses stored bytes; the reason when they are not a checkpoint.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        if bytes.len() != CHECKPOINT_BYTES {
            return Err(format!(
                "{} bytes, a checkpoint is {CHECKPOINT_BYTES}",
                bytes.len()
            ));
        }
        if &bytes[0..8] != CHECKPOINT_MAGIC {
            return Err("wrong magic (expected TALLYCKP)".to_string());
        }
        let stored = u32::from_be_bytes(bytes[24..28].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[0..24]) != stored {
            return Err("checksum mismatch".to_string());
        }
        let checkpoint = Checkpoint {
            next_seq: u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")),
            end_offset: u64::from_be_bytes(bytes[16..24].try_into().expect("8 bytes")),
        };
        if checkpoint.next_seq == 0 || checkpoint.end_offset < super::FILE_HEADER_BYTES as u64 {
            return Err(format!(
                "next_seq {} and end_offset {} cannot describe a journal",
                checkpoint.next_seq, checkpoint.end_offset
            ));
        }
        Ok(checkpoint)
    }

    /// Reads the checkpoint at `path`: `Ok(None)` when there is none.
    pub fn read(path: &Path) -> std::io::Result<Option<Result<Checkpoint, String>>> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(Checkpoint::decode(&bytes))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }
}

impl Checkpoint {
    /// The checkpoint of a freshly created journal: no messages, header only.
    pub const FRESH: Checkpoint = Checkpoint {
        next_seq: 1,
        end_offset: super::FILE_HEADER_BYTES as u64,
    };

    /// Whether a journal ending at `end_offset` with `next_seq` holds at
    /// least what this checkpoint says was written.
    pub fn is_covered_by(&self, next_seq: u64, end_offset: u64) -> bool {
        next_seq >= self.next_seq && end_offset >= self.end_offset
    }

    /// Whether the checkpoint says messages were written.
    pub fn has_messages(&self) -> bool {
        self.next_seq > 1 || self.end_offset > super::FILE_HEADER_BYTES as u64
    }
}

/// Replaces the checkpoint at `path` atomically and durably: writes
/// `<path>.tmp`, syncs it, renames it over `path` and syncs the directory.
/// Synchronous; for start-up and repair, not for the hot path (see
/// [`CheckpointFile`]).
pub fn store(path: &Path, checkpoint: &Checkpoint) -> io::Result<()> {
    replace_atomically(path, |file| file.write_all(&checkpoint.encode()))
}

/// An open checkpoint file, rewritten in place: one `pwrite` of 32 bytes at
/// offset 0 per [`write`](Self::write).
#[derive(Debug)]
pub struct CheckpointFile {
    file: File,
    path: PathBuf,
}

impl CheckpointFile {
    /// Opens the existing checkpoint at `path` for rewriting (recovery has
    /// created it by the time the writer opens it).
    pub fn open(path: &Path) -> io::Result<CheckpointFile> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(CheckpointFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Writes `checkpoint` over the old one (no sync: the checkpoint is a
    /// lower bound, written only once the journal data it describes is as
    /// durable as the fsync policy makes it; a lost rewrite leaves an older,
    /// smaller claim).
    pub fn write(&self, checkpoint: &Checkpoint) -> io::Result<()> {
        self.file.write_all_at(&checkpoint.encode(), 0)
    }

    /// The open file (for a writer that submits the write and the sync
    /// through io_uring itself: write [`Checkpoint::encode`] at offset 0).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The checkpoint's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The path of a session's checkpoint in `dir`.
pub fn checkpoint_path(dir: &Path, session: Session) -> PathBuf {
    dir.join(format!("{}.checkpoint", session.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_detected() {
        let checkpoint = Checkpoint {
            next_seq: 1234,
            end_offset: 99_000,
        };
        let bytes = checkpoint.encode();
        assert_eq!(Checkpoint::decode(&bytes), Ok(checkpoint));
        for byte in 0..24 {
            let mut damaged = bytes;
            damaged[byte] ^= 0x10;
            assert!(Checkpoint::decode(&damaged).is_err(), "byte {byte}");
        }
        assert!(Checkpoint::decode(&bytes[..31]).is_err());
        let zero = Checkpoint {
            next_seq: 0,
            end_offset: 64,
        };
        assert!(Checkpoint::decode(&zero.encode()).is_err());
    }

    #[test]
    fn store_then_rewrite_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("S.checkpoint");
        assert_eq!(Checkpoint::read(&path).unwrap(), None);
        store(&path, &Checkpoint::FRESH).unwrap();
        assert_eq!(
            Checkpoint::read(&path).unwrap(),
            Some(Ok(Checkpoint::FRESH))
        );
        let later = Checkpoint {
            next_seq: 10,
            end_offset: 500,
        };
        CheckpointFile::open(&path).unwrap().write(&later).unwrap();
        assert_eq!(Checkpoint::read(&path).unwrap(), Some(Ok(later)));
        assert!(later.is_covered_by(10, 500));
        assert!(!later.is_covered_by(9, 600));
        assert!(!later.is_covered_by(11, 499));
        assert!(!Checkpoint::FRESH.has_messages());
        assert!(later.has_messages());
    }
}
