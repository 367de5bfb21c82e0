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

use std::path::{Path, PathBuf};

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
        Ok(Checkpoint {
            next_seq: u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")),
            end_offset: u64::from_be_bytes(bytes[16..24].try_into().expect("8 bytes")),
        })
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
    }
}
