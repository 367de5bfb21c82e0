//! The write-ahead journal: every packet the sequencer publishes is appended
//! here first.
//!
//! One file per stream session, `<dir>/<session>.journal`:
//!
//! ```text
//! file header, 64 bytes
//!   0  [8]  magic "TALLYJNL"
//!   8  u32  version (1)
//!  12  u32  header length (64)
//!  16  [10] session, space padded
//!  26  [6]  zero
//!  32  u64  created, ns since the Unix epoch
//!  40  [24] zero
//! records, back to back
//!   0  u32  payload length in bytes
//!   4  u32  CRC32C over bytes 0..4 and 8..24+payload length
//!   8  u64  sequence number of the first message in the record
//!  16  u16  message count; 0xFFFF marks the end of the session
//!  18  [6]  zero
//!  24  payload: `count` MoldUDP64 message blocks (u16 length, bytes)
//! ```
//!
//! All integers are big-endian, like the wire. A record's payload is exactly
//! the block area of the MoldUDP64 packet that carried it, so a retransmit is
//! a copy. Appends are single `writev` calls; the fsync policy decides when
//! `fdatasync` runs. Readers on other threads never read past the end the
//! writer has published in [`JournalProgress`].
//!
//! Recovery (`recover`) streams the file, checks every record's length,
//! checksum, sequence continuity and block structure, and at the first record
//! that fails looks at every byte offset from there to the end of the file
//! for an intact record. None (an incomplete record, garbage, zero fill): a
//! torn tail, cut. One: corruption, refused with the offsets and sequence
//! numbers, rather than reuse numbers that receivers may already hold. The
//! [`Checkpoint`] beside the journal is a lower bound of what was written; a
//! journal that holds less is refused too. Only the operator's
//! `--accept-journal-loss` ([`RecoveryOptions`]) turns a refusal into a cut.

mod checkpoint;
mod format;
mod reader;
mod recover;
#[cfg(test)]
pub(crate) mod test_records;
mod window;
mod writer;

pub use checkpoint::{
    checkpoint_path, store as store_checkpoint, Checkpoint, CheckpointFile, CHECKPOINT_BYTES,
};
pub use format::{
    check_file_header, FileHeader, RecordInfo, COUNT_END_OF_SESSION, FILE_HEADER_BYTES,
    RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX,
};
pub use reader::{Cursor, JournalReader, INDEX_STRIDE_BYTES};
pub use recover::{scan, Damage, IntactAfter, ReadAt, RecoveryOptions, ScanSummary, ScannedRecord};
pub use window::{RecentWindow, RECENT_WINDOW_BYTES};
pub use writer::{JournalWriter, WriteError, CHECKPOINT_INTERVAL_NS};

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tally_wire::mold::Session;

pub use tally_config::FsyncPolicy;

/// Why a journal could not be opened.
#[derive(Debug)]
pub enum JournalError {
    /// An I/O error, with what was being done.
    Io { context: String, source: io::Error },
    /// The file is not a tally journal, or belongs to another session.
    BadHeader { path: PathBuf, reason: String },
    /// A damaged record with intact records after it: not a torn tail.
    Corrupt {
        path: PathBuf,
        /// File offset of the damaged record.
        offset: u64,
        /// What is wrong with it.
        reason: String,
        /// The last message before the damage (0: none).
        last_good_seq: u64,
        /// File offset of the first intact record after the damage.
        intact_offset: u64,
        /// Sequence number of the first message of that record.
        intact_seq: u64,
    },
    /// The checkpoint beside the journal cannot be read as one.
    CheckpointDamaged { path: PathBuf, reason: String },
    /// The journal holds less than its checkpoint says was written (cut,
    /// truncated to its header, or replaced).
    BehindCheckpoint {
        path: PathBuf,
        checkpoint_path: PathBuf,
        /// What the journal holds (after cutting a torn tail).
        journal_next_seq: u64,
        journal_end_offset: u64,
        /// What the checkpoint says was written.
        checkpoint: Checkpoint,
    },
    /// The journal file is missing (or empty) while its checkpoint says
    /// messages were written.
    Missing {
        path: PathBuf,
        checkpoint_path: PathBuf,
        checkpoint: Checkpoint,
    },
}

impl JournalError {
    /// Whether the error says the journal or its checkpoint is damaged (a
    /// restart cannot fix it; the operator must look), rather than an I/O
    /// failure.
    pub fn is_damage(&self) -> bool {
        !matches!(self, JournalError::Io { .. })
    }
}

const DAMAGE_HINT: &str = "refusing to start so that no sequence number is reused; \
     inspect with `tally-journal verify`, see README \"When the journal is damaged\"";

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalError::Io { context, source } => write!(f, "{context}: {source}"),
            JournalError::BadHeader { path, reason } => {
                write!(f, "{}: not a usable journal: {reason}", path.display())
            }
            JournalError::Corrupt {
                path,
                offset,
                reason,
                last_good_seq,
                intact_offset,
                intact_seq,
            } => write!(
                f,
                "journal {}: damaged record at byte {offset} ({reason}) after last good \
                 sequence number {last_good_seq}, with intact records after it (the first at \
                 byte {intact_offset}, sequence number {intact_seq}): not a torn tail; \
                 {DAMAGE_HINT}",
                path.display()
            ),
            JournalError::CheckpointDamaged { path, reason } => write!(
                f,
                "checkpoint {}: damaged ({reason}); {DAMAGE_HINT}",
                path.display()
            ),
            JournalError::BehindCheckpoint {
                path,
                checkpoint_path,
                journal_next_seq,
                journal_end_offset,
                checkpoint,
            } => write!(
                f,
                "journal {}: holds {} ({journal_end_offset} bytes), but its checkpoint {} says \
                 {} ({} bytes) were written: acknowledged messages are missing; {DAMAGE_HINT}",
                path.display(),
                MessagesUpTo(*journal_next_seq),
                checkpoint_path.display(),
                MessagesUpTo(checkpoint.next_seq),
                checkpoint.end_offset
            ),
            JournalError::Missing {
                path,
                checkpoint_path,
                checkpoint,
            } => write!(
                f,
                "journal {}: missing or empty, but its checkpoint {} says {} ({} bytes) were \
                 written; {DAMAGE_HINT}",
                path.display(),
                checkpoint_path.display(),
                MessagesUpTo(checkpoint.next_seq),
                checkpoint.end_offset
            ),
        }
    }
}

impl std::error::Error for JournalError {}

/// "messages up to N" for a next sequence number, or "no messages".
struct MessagesUpTo(u64);

impl std::fmt::Display for MessagesUpTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 | 1 => f.write_str("no messages"),
            next_seq => write!(f, "messages up to sequence number {}", next_seq - 1),
        }
    }
}

pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> JournalError {
    let context = context.into();
    move |source| JournalError::Io { context, source }
}

/// What the writer has made visible to readers. Written by the sequencer
/// thread only, read by the retransmit and replay threads.
#[derive(Debug, Default)]
pub struct JournalProgress {
    /// File offset one past the last complete record.
    end_offset: AtomicU64,
    /// Sequence number the next message will get.
    next_seq: AtomicU64,
    /// The session has ended (end-of-session record written).
    ended: AtomicBool,
    /// The newest journal bytes in memory, which readers try before the
    /// file (none when it could not be mapped).
    window: Option<RecentWindow>,
    /// Readers ignore the window ([`JournalProgress::bypass_window`]).
    window_bypassed: AtomicBool,
}

impl JournalProgress {
    /// File offset one past the last complete record.
    pub fn end_offset(&self) -> u64 {
        self.end_offset.load(Ordering::Acquire)
    }

    /// Sequence number the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Acquire)
    }

    /// Whether the session has ended.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The window of recent journal bytes, if the writer has one (and it
    /// is not bypassed).
    pub fn window(&self) -> Option<&RecentWindow> {
        if self.window_bypassed.load(Ordering::Relaxed) {
            return None;
        }
        self.window.as_ref()
    }

    /// From now on readers read every record from the file, as written on
    /// disk (tests that damage the file under a live writer; the window
    /// holds what was written, so it would serve the undamaged bytes).
    pub fn bypass_window(&self) {
        self.window_bypassed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn publish(&self, end_offset: u64, next_seq: u64) {
        // next_seq first: a reader that sees the new end offset also sees a
        // next_seq at least as new.
        self.next_seq.store(next_seq, Ordering::Release);
        self.end_offset.store(end_offset, Ordering::Release);
    }
}

/// What recovery found in an existing journal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Sequence number the next message gets.
    pub next_seq: u64,
    /// Records read.
    pub records: u64,
    /// Messages read.
    pub messages: u64,
    /// Bytes cut from a torn tail.
    pub cut_bytes: u64,
    /// The session already ended.
    pub ended: bool,
    /// The file was created by this open.
    pub created: bool,
}

/// The path of a session's journal in `dir`.
pub fn journal_path(dir: &Path, session: Session) -> PathBuf {
    dir.join(format!("{}.journal", session.as_str()))
}

pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
}

pub(crate) use tally_runtime::clock::wall_ns as now_ns;
