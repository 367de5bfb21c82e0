//! The appending side of the journal, owned by the sequencer thread.
//!
//! Two ways of writing, chosen by the fsync policy:
//!
//! - `none` and `interval`: each record is written at once with one `writev`
//!   (the page cache holds it: a process crash loses nothing). `interval`
//!   calls `fdatasync` at most every `fsync_interval_ms`. A record is durable
//!   in the policy's sense as soon as it is written, so the sequencer
//!   publishes and acknowledges at once.
//! - `batch` (group commit): records are staged and written through io_uring
//!   ([`GroupCommitFile`]); one `fdatasync` covers every write that completed
//!   before it, and is followed by the checkpoint write. A record is durable
//!   only when that sync and checkpoint write completed: until then the
//!   sequencer holds its packet and acknowledgements, and keeps filling the
//!   next batch. The sequencer thread never waits for the disk.
//!
//! Readers (retransmit, replay) see a record only once it is durable in the
//! policy's sense ([`JournalProgress`]), so nothing leaves the appliance
//! before it is on disk with `batch`.
//!
//! The checkpoint beside the journal ([`Checkpoint`]) is a lower bound of
//! what the journal holds: with `batch` it is written after each sync; with
//! `interval` after each sync; with `none` at most every
//! [`CHECKPOINT_INTERVAL_NS`] and at shutdown.

use std::fs::File;
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tally_runtime::file::{GroupCommitConfig, GroupCommitFile, Position, SIDE_RECORD_BYTES};
use tally_wire::mold::Session;

use super::checkpoint::{checkpoint_path, Checkpoint, CheckpointFile, CHECKPOINT_BYTES};
use super::format::*;
use super::recover::{open_and_recover, RecoveryOptions};
use super::{io_error, FsyncPolicy, JournalError, JournalProgress, Recovery};

/// With `fsync = "none"`, the checkpoint is rewritten at most this often.
pub const CHECKPOINT_INTERVAL_NS: u64 = 10_000_000;

/// How long shutdown waits for the last writes and sync.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

const _: () = assert!(CHECKPOINT_BYTES == SIDE_RECORD_BYTES);

/// How records reach the file.
enum Mode {
    /// `none` and `interval`: one `writev` per record, on this thread.
    Direct {
        file: File,
        unsynced: bool,
        last_sync_ns: u64,
    },
    /// `batch`: group commit through io_uring.
    GroupCommit(Box<GroupCommitFile>),
}

/// A journal write or sync failed: what, and the kernel's error. Fatal for
/// the sequencer (nothing after the last good write was acknowledged).
#[derive(Debug)]
pub struct WriteError {
    /// "write", "fdatasync", "checkpoint write", ...
    pub operation: &'static str,
    /// The kernel's error.
    pub source: io::Error,
}

/// The appending side. Owned by the sequencer thread.
pub struct JournalWriter {
    mode: Mode,
    path: PathBuf,
    checkpoint_file: CheckpointFile,
    checkpoint: Checkpoint,
    last_checkpoint_ns: u64,
    /// File offset after the last record appended (staged or written).
    end_offset: u64,
    /// Sequence number the next appended message gets.
    next_seq: u64,
    /// Every message below this is durable in the policy's sense.
    durable_next_seq: u64,
    policy: FsyncPolicy,
    progress: Arc<JournalProgress>,
    fsyncs: u64,
    bytes_written: u64,
}

impl std::fmt::Debug for JournalWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalWriter")
            .field("path", &self.path)
            .field("policy", &self.policy)
            .field("end_offset", &self.end_offset)
            .field("next_seq", &self.next_seq)
            .field("durable_next_seq", &self.durable_next_seq)
            .finish_non_exhaustive()
    }
}

fn checkpoint_record(position: Position) -> [u8; SIDE_RECORD_BYTES] {
    Checkpoint {
        next_seq: position.tag,
        end_offset: position.offset,
    }
    .encode()
}

impl JournalWriter {
    /// Opens (or creates) the journal of `session` in `dir`, recovers it and
    /// calls `on_message(seq, message)` for every journaled message in order,
    /// so the caller can rebuild per-client state.
    pub fn open(
        dir: &Path,
        session: Session,
        policy: FsyncPolicy,
        options: &RecoveryOptions,
        mut on_message: impl FnMut(u64, &[u8]),
    ) -> Result<(JournalWriter, Recovery), JournalError> {
        let (mut file, path, recovery) = open_and_recover(dir, session, options, &mut on_message)?;
        let end_offset = file
            .seek(SeekFrom::End(0))
            .map_err(io_error(format!("seeking {}", path.display())))?;
        // Recovery has stored the checkpoint for what it found (synced):
        // from here on it is rewritten in place.
        let checkpoint_at = checkpoint_path(dir, session);
        let checkpoint_file = CheckpointFile::open(&checkpoint_at).map_err(io_error(format!(
            "opening checkpoint {}",
            checkpoint_at.display()
        )))?;
        let checkpoint = Checkpoint {
            next_seq: recovery.next_seq,
            end_offset,
        };
        let mode = write_mode(
            file,
            policy,
            &checkpoint_file,
            &checkpoint_at,
            end_offset,
            recovery.next_seq,
        )?;
        let window = recent_window(end_offset);
        let progress = Arc::new(JournalProgress {
            window,
            ..JournalProgress::default()
        });
        progress.publish(end_offset, recovery.next_seq);
        progress.ended.store(recovery.ended, Ordering::Release);
        Ok((
            JournalWriter {
                mode,
                path,
                checkpoint_file,
                checkpoint,
                last_checkpoint_ns: 0,
                end_offset,
                next_seq: recovery.next_seq,
                durable_next_seq: recovery.next_seq,
                policy,
                progress,
                fsyncs: 0,
                bytes_written: 0,
            },
            recovery,
        ))
    }

    /// Makes every journal completion signal `eventfd` (the sequencer loop's
    /// waker), so a parked loop wakes when a group commit completes. No-op
    /// for policies that do not write through io_uring.
    pub fn register_eventfd(&self, eventfd: std::os::fd::RawFd) -> io::Result<()> {
        match &self.mode {
            Mode::GroupCommit(group) => group.register_eventfd(eventfd),
            Mode::Direct { .. } => Ok(()),
        }
    }

    /// Appends one record holding `count` messages, the first numbered
    /// `first_seq`, whose MoldUDP64 blocks are `blocks`. With `none` and
    /// `interval` the record is written (and readers see it) at once; with
    /// `batch` it is staged and becomes durable through [`Self::submit`] and
    /// [`Self::poll_durable`]. Check [`Self::room_bytes`] first. An error is
    /// fatal for the sequencer.
    pub fn append(
        &mut self,
        first_seq: u64,
        count: u16,
        blocks: &[u8],
        now_ns: u64,
    ) -> Result<(), WriteError> {
        assert_eq!(first_seq, self.next_seq, "journal append out of order");
        assert!(count != COUNT_END_OF_SESSION && count > 0);
        assert!(blocks.len() <= RECORD_PAYLOAD_BYTES_MAX);
        let header = record_header(first_seq, count, blocks);
        let next_seq = first_seq + u64::from(count);
        self.write_record(&header, blocks, next_seq)?;
        self.next_seq = next_seq;
        if let Mode::Direct { .. } = self.mode {
            if let FsyncPolicy::Interval { .. } = self.policy {
                self.sync_if_due(now_ns)?;
            }
            self.durable_next_seq = self.next_seq;
            self.progress.publish(self.end_offset, self.next_seq);
        }
        Ok(())
    }

    /// Journal bytes that can be appended before a write must complete
    /// (`usize::MAX` for policies that write at once).
    pub fn room_bytes(&self) -> usize {
        match &self.mode {
            Mode::GroupCommit(group) => group.room_bytes(),
            Mode::Direct { .. } => usize::MAX,
        }
    }

    /// End of a duty cycle: hands staged records to the kernel (`batch`),
    /// syncs when the interval is due (`interval`), rewrites the checkpoint
    /// when due (`none`).
    pub fn submit(&mut self, now_ns: u64) -> Result<(), WriteError> {
        match &mut self.mode {
            Mode::GroupCommit(group) => group.submit().map_err(|source| WriteError {
                operation: "io_uring submit",
                source,
            }),
            Mode::Direct { .. } => match self.policy {
                FsyncPolicy::Interval { .. } => self.sync_if_due(now_ns),
                _ => {
                    if now_ns.saturating_sub(self.last_checkpoint_ns) >= CHECKPOINT_INTERVAL_NS {
                        self.store_checkpoint(now_ns)?;
                    }
                    Ok(())
                }
            },
        }
    }

    /// Reaps group-commit completions and returns the sequence number below
    /// which every message is durable in the policy's sense; publishes that
    /// to readers.
    pub fn poll_durable(&mut self) -> Result<u64, WriteError> {
        if let Mode::GroupCommit(group) = &mut self.mode {
            let durable = group.poll().map_err(|error| WriteError {
                operation: error.operation,
                source: io::Error::new(error.error.kind(), error.error.to_string()),
            })?;
            self.fsyncs = group.syncs();
            if durable.tag > self.durable_next_seq {
                self.durable_next_seq = durable.tag;
                self.progress.publish(durable.offset, durable.tag);
            }
        }
        Ok(self.durable_next_seq)
    }

    /// Every message below this is durable in the policy's sense.
    pub fn durable_next_seq(&self) -> u64 {
        self.durable_next_seq
    }

    /// Writes the end-of-session marker and makes everything durable. No
    /// append may follow.
    pub fn end_session(&mut self) -> Result<(), WriteError> {
        let header = record_header(self.next_seq, COUNT_END_OF_SESSION, &[]);
        self.write_record(&header, &[], self.next_seq)?;
        self.sync()?;
        self.progress.ended.store(true, Ordering::Release);
        self.progress.publish(self.end_offset, self.next_seq);
        Ok(())
    }

    /// Makes everything appended durable, waiting for it (shutdown), and
    /// rewrites the checkpoint.
    pub fn sync(&mut self) -> Result<(), WriteError> {
        match &mut self.mode {
            Mode::GroupCommit(group) => {
                group.flush(FLUSH_TIMEOUT).map_err(|source| WriteError {
                    operation: "write and fdatasync",
                    source,
                })?;
                self.poll_durable()?;
            }
            Mode::Direct { file, unsynced, .. } => {
                if *unsynced {
                    file.sync_data().map_err(|source| WriteError {
                        operation: "fdatasync",
                        source,
                    })?;
                    *unsynced = false;
                    self.fsyncs += 1;
                }
                self.store_checkpoint(super::now_ns())?;
            }
        }
        Ok(())
    }

    /// The progress shared with readers.
    pub fn progress(&self) -> Arc<JournalProgress> {
        Arc::clone(&self.progress)
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sequence number the next message gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// `fdatasync` calls so far.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs
    }

    /// Bytes appended so far by this writer.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Syncs if the interval policy says a sync is due, then rewrites the
    /// checkpoint.
    fn sync_if_due(&mut self, now_ns: u64) -> Result<(), WriteError> {
        let FsyncPolicy::Interval { interval_ns } = self.policy else {
            return Ok(());
        };
        let Mode::Direct {
            file,
            unsynced,
            last_sync_ns,
        } = &mut self.mode
        else {
            return Ok(());
        };
        if *unsynced && now_ns.saturating_sub(*last_sync_ns) >= interval_ns {
            file.sync_data().map_err(|source| WriteError {
                operation: "fdatasync",
                source,
            })?;
            *unsynced = false;
            *last_sync_ns = now_ns;
            self.fsyncs += 1;
            self.store_checkpoint(now_ns)?;
        }
        Ok(())
    }

    /// Rewrites the checkpoint (direct modes) when it moved.
    fn store_checkpoint(&mut self, now_ns: u64) -> Result<(), WriteError> {
        self.last_checkpoint_ns = now_ns;
        let checkpoint = Checkpoint {
            next_seq: self.next_seq,
            end_offset: self.end_offset,
        };
        if checkpoint == self.checkpoint {
            return Ok(());
        }
        self.checkpoint_file
            .write(&checkpoint)
            .map_err(|source| WriteError {
                operation: "checkpoint write",
                source,
            })?;
        self.checkpoint = checkpoint;
        Ok(())
    }

    fn write_record(
        &mut self,
        header: &[u8; RECORD_HEADER_BYTES],
        blocks: &[u8],
        next_seq: u64,
    ) -> Result<(), WriteError> {
        let total = RECORD_HEADER_BYTES + blocks.len();
        // Into the window before anything publishes the record's end.
        if let Some(window) = self.progress.window() {
            window.write(self.end_offset, &[header, blocks]);
        }
        match &mut self.mode {
            Mode::GroupCommit(group) => {
                group
                    .stage(&[header, blocks], next_seq)
                    .map_err(|source| WriteError {
                        operation: "staging (no room: the caller checks room_bytes)",
                        source,
                    })?;
            }
            Mode::Direct { file, unsynced, .. } => {
                write_all_vectored(file, header, blocks).map_err(|source| WriteError {
                    operation: "write",
                    source,
                })?;
                *unsynced = true;
            }
        }
        self.end_offset += total as u64;
        self.bytes_written += total as u64;
        Ok(())
    }
}

/// How the journal writes: one io_uring group commit with the checkpoint
/// beside it (`FsyncPolicy::Batch`), or plain writes with their own syncs.
fn write_mode(
    file: File,
    policy: FsyncPolicy,
    checkpoint_file: &CheckpointFile,
    checkpoint_at: &Path,
    end_offset: u64,
    next_seq: u64,
) -> Result<Mode, JournalError> {
    Ok(match policy {
        FsyncPolicy::Batch => {
            let side = checkpoint_file
                .file()
                .try_clone()
                .map_err(io_error(format!(
                    "opening checkpoint {}",
                    checkpoint_at.display()
                )))?;
            let group = GroupCommitFile::new(
                file,
                side,
                Position {
                    offset: end_offset,
                    tag: next_seq,
                },
                GroupCommitConfig::default(),
                checkpoint_record,
            )
            .map_err(io_error("setting up the journal's io_uring"))?;
            Mode::GroupCommit(Box::new(group))
        }
        FsyncPolicy::None | FsyncPolicy::Interval { .. } => Mode::Direct {
            file,
            unsynced: false,
            last_sync_ns: super::now_ns(),
        },
    })
}

/// The in-memory window of recent records retransmit and replay read, or
/// none (logged) when it cannot be set up: they read the file then.
fn recent_window(end_offset: u64) -> Option<super::RecentWindow> {
    match super::RecentWindow::new(super::RECENT_WINDOW_BYTES, end_offset) {
        Ok(window) => {
            tracing::info!(
                bytes = window.capacity_bytes(),
                pages = %window.page_kind(),
                "journal window: retransmit and replay read recent records from memory"
            );
            Some(window)
        }
        Err(error) => {
            tracing::warn!(%error, "no journal window; retransmit and replay read the file");
            None
        }
    }
}

/// One record with `writev`, retried on a short write.
fn write_all_vectored(file: &mut File, header: &[u8], blocks: &[u8]) -> io::Result<()> {
    let total = header.len() + blocks.len();
    let mut written = 0usize;
    while written < total {
        let result = if written < header.len() {
            let slices = [IoSlice::new(&header[written..]), IoSlice::new(blocks)];
            file.write_vectored(&slices)
        } else {
            file.write(&blocks[written - header.len()..])
        };
        match result {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "journal write returned 0",
                ))
            }
            Ok(n) => written += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::test_records::blocks;
    use crate::journal::{journal_path, JournalReader, RecoveryOptions};

    fn session() -> Session {
        Session::from_str("TEST01").unwrap()
    }

    /// A fresh or reopened writer with `fsync = "none"`.
    fn writer_with_no_fsync(dir: &Path) -> JournalWriter {
        let (writer, _) = JournalWriter::open(
            dir,
            session(),
            FsyncPolicy::None,
            &RecoveryOptions::default(),
            |_, _| {},
        )
        .unwrap();
        writer
    }

    fn collect(dir: &Path) -> (Vec<(u64, Vec<u8>)>, Recovery) {
        let mut seen = Vec::new();
        let (_, recovery) = JournalWriter::open(
            dir,
            session(),
            FsyncPolicy::None,
            &RecoveryOptions::default(),
            |seq, message| seen.push((seq, message.to_vec())),
        )
        .unwrap();
        (seen, recovery)
    }

    #[test]
    fn append_reopen_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut writer, recovery) = JournalWriter::open(
                dir.path(),
                session(),
                FsyncPolicy::Batch,
                &RecoveryOptions::default(),
                |_, _| {},
            )
            .unwrap();
            assert!(recovery.created);
            assert_eq!(recovery.next_seq, 1);
            writer.append(1, 2, &blocks(&[b"one", b"two"]), 0).unwrap();
            writer.append(3, 1, &blocks(&[b"three"]), 0).unwrap();
            assert_eq!(writer.next_seq(), 4);
            // Group commit: staged, durable only once written and synced.
            assert_eq!(writer.durable_next_seq(), 1);
            assert_eq!(writer.progress().next_seq(), 1, "readers see nothing yet");
            writer.submit(0).unwrap();
            writer.sync().unwrap();
            assert_eq!(writer.durable_next_seq(), 4);
            assert_eq!(writer.progress().next_seq(), 4);
            assert!(writer.fsyncs() >= 1);
        }
        let checkpoint = Checkpoint::read(&checkpoint_path(dir.path(), session()))
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(checkpoint.next_seq, 4, "the checkpoint follows the sync");
        let (seen, recovery) = collect(dir.path());
        assert_eq!(recovery.next_seq, 4);
        assert_eq!(recovery.messages, 3);
        assert_eq!(recovery.cut_bytes, 0);
        assert_eq!(
            seen,
            vec![
                (1, b"one".to_vec()),
                (2, b"two".to_vec()),
                (3, b"three".to_vec())
            ]
        );
    }

    #[test]
    fn torn_tail_is_cut_at_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(dir.path(), session());
        {
            let mut writer = writer_with_no_fsync(dir.path());
            writer.append(1, 1, &blocks(&[b"first"]), 0).unwrap();
            writer
                .append(2, 2, &blocks(&[b"second", b"third"]), 0)
                .unwrap();
        }
        let full = std::fs::read(&path).unwrap();
        let first_end = FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 2 + 5;
        for cut in first_end + 1..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (seen, recovery) = collect(dir.path());
            assert_eq!(recovery.next_seq, 2, "cut at {cut}");
            assert_eq!(seen.len(), 1);
            assert_eq!(recovery.cut_bytes, (cut - first_end) as u64);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), first_end as u64);
        }
    }

    #[test]
    fn damaged_record_with_data_after_it_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(dir.path(), session());
        {
            let mut writer = writer_with_no_fsync(dir.path());
            writer.append(1, 1, &blocks(&[b"first"]), 0).unwrap();
            writer.append(2, 1, &blocks(&[b"second"]), 0).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 3] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let error = JournalWriter::open(
            dir.path(),
            session(),
            FsyncPolicy::None,
            &RecoveryOptions::default(),
            |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(error, JournalError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn zero_filled_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(dir.path(), session());
        {
            let mut writer = writer_with_no_fsync(dir.path());
            writer.append(1, 1, &blocks(&[b"first"]), 0).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &bytes).unwrap();
        let (_, recovery) = collect(dir.path());
        assert_eq!(recovery.cut_bytes, 4096);
        assert_eq!(recovery.next_seq, 2);
    }

    #[test]
    fn other_session_or_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            journal_path(dir.path(), session()),
            b"definitely not a journal file, no sir, not at all, nope nope nope",
        )
        .unwrap();
        let error = JournalWriter::open(
            dir.path(),
            session(),
            FsyncPolicy::None,
            &RecoveryOptions::default(),
            |_, _| {},
        )
        .unwrap_err();
        assert!(error.to_string().contains("wrong magic"), "{error}");
    }

    #[test]
    fn end_of_session_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut writer = writer_with_no_fsync(dir.path());
            writer.append(1, 1, &blocks(&[b"first"]), 0).unwrap();
            writer.end_session().unwrap();
        }
        let (_, recovery) = collect(dir.path());
        assert!(recovery.ended);
        assert_eq!(recovery.next_seq, 2);
    }

    #[test]
    fn reader_follows_seeks_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = writer_with_no_fsync(dir.path());
        let mut reader = JournalReader::open(writer.path(), writer.progress(), 4).unwrap();
        let mut seq = 1u64;
        // Enough records to span several index strides and force index trimming.
        for record in 0..2000u64 {
            let payload: Vec<Vec<u8>> = (0..10)
                .map(|i| format!("message {record} {i} {}", "x".repeat(40)).into_bytes())
                .collect();
            let refs: Vec<&[u8]> = payload.iter().map(|m| m.as_slice()).collect();
            writer.append(seq, 10, &blocks(&refs), 0).unwrap();
            seq += 10;
        }
        while reader.follow(100).unwrap() > 0 {}
        assert_eq!(reader.next_seq(), seq);
        // Seek into the middle of a record near the end.
        let mut cursor = reader.seek(seq - 15).unwrap().expect("indexed");
        let mut got = Vec::new();
        reader
            .read(&mut cursor, 100, |s, m| {
                got.push((s, m.to_vec()));
                true
            })
            .unwrap();
        assert_eq!(got.len(), 15);
        assert_eq!(got[0].0, seq - 15);
        assert_eq!(
            got[0].1,
            format!("message 1998 5 {}", "x".repeat(40)).into_bytes()
        );
        assert_eq!(cursor.next_seq, seq);
        // The future is not there.
        assert_eq!(reader.seek(seq).unwrap(), None);
        // A bounded read stops and resumes exactly.
        let mut cursor = reader.seek(seq - 15).unwrap().unwrap();
        let n = reader.read(&mut cursor, 7, |_, _| true).unwrap();
        assert_eq!(n, 7);
        assert_eq!(cursor.next_seq, seq - 8);
        let mut next = Vec::new();
        reader
            .read(&mut cursor, 100, |s, _| {
                next.push(s);
                true
            })
            .unwrap();
        assert_eq!(next, ((seq - 8)..seq).collect::<Vec<_>>());
    }
}
