//! The appending side of the journal, owned by the sequencer thread.

use std::fs::File;
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tally_wire::mold::Session;

use super::format::*;
use super::recover::{open_and_recover, RecoveryOptions};
use super::{io_error, FsyncPolicy, JournalError, JournalProgress, Recovery};

/// The appending side. Owned by the sequencer thread.
#[derive(Debug)]
pub struct JournalWriter {
    file: File,
    path: PathBuf,
    end_offset: u64,
    next_seq: u64,
    policy: FsyncPolicy,
    unsynced: bool,
    last_sync_ns: u64,
    progress: Arc<JournalProgress>,
    fsyncs: u64,
    bytes_written: u64,
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
        let progress = Arc::new(JournalProgress::default());
        progress.publish(end_offset, recovery.next_seq);
        progress.ended.store(recovery.ended, Ordering::Release);
        Ok((
            JournalWriter {
                file,
                path,
                end_offset,
                next_seq: recovery.next_seq,
                policy,
                unsynced: false,
                last_sync_ns: super::now_ns(),
                progress,
                fsyncs: 0,
                bytes_written: 0,
            },
            recovery,
        ))
    }

    /// Appends one record holding `count` messages, the first numbered
    /// `first_seq`, whose MoldUDP64 blocks are `blocks`. Syncs when the
    /// policy says so, then publishes the new end to readers. An error here is
    /// fatal for the sequencer: nothing may be published that is not
    /// journaled.
    pub fn append(
        &mut self,
        first_seq: u64,
        count: u16,
        blocks: &[u8],
        now_ns: u64,
    ) -> io::Result<()> {
        assert_eq!(first_seq, self.next_seq, "journal append out of order");
        assert!(count != COUNT_END_OF_SESSION && count > 0);
        assert!(blocks.len() <= RECORD_PAYLOAD_BYTES_MAX);
        let header = record_header(first_seq, count, blocks);
        self.write_record(&header, blocks)?;
        self.next_seq = first_seq + u64::from(count);
        self.sync_for_policy(now_ns)?;
        self.progress.publish(self.end_offset, self.next_seq);
        Ok(())
    }

    /// Writes the end-of-session marker and syncs. No append may follow.
    pub fn end_session(&mut self) -> io::Result<()> {
        let header = record_header(self.next_seq, COUNT_END_OF_SESSION, &[]);
        self.write_record(&header, &[])?;
        self.sync()?;
        self.progress.ended.store(true, Ordering::Release);
        self.progress.publish(self.end_offset, self.next_seq);
        Ok(())
    }

    /// Syncs if the interval policy says a sync is due. Call from the loop
    /// when idle.
    pub fn sync_if_due(&mut self, now_ns: u64) -> io::Result<()> {
        if let FsyncPolicy::Interval { interval_ns } = self.policy {
            if self.unsynced && now_ns.saturating_sub(self.last_sync_ns) >= interval_ns {
                self.sync()?;
                self.last_sync_ns = now_ns;
            }
        }
        Ok(())
    }

    /// Syncs whatever is unsynced (shutdown).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
            self.fsyncs += 1;
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

    fn write_record(
        &mut self,
        header: &[u8; RECORD_HEADER_BYTES],
        blocks: &[u8],
    ) -> io::Result<()> {
        let total = RECORD_HEADER_BYTES + blocks.len();
        let mut written = 0usize;
        while written < total {
            let result = if written < RECORD_HEADER_BYTES {
                let slices = [IoSlice::new(&header[written..]), IoSlice::new(blocks)];
                self.file.write_vectored(&slices)
            } else {
                self.file.write(&blocks[written - RECORD_HEADER_BYTES..])
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
        self.end_offset += total as u64;
        self.bytes_written += total as u64;
        self.unsynced = true;
        Ok(())
    }

    fn sync_for_policy(&mut self, now_ns: u64) -> io::Result<()> {
        match self.policy {
            FsyncPolicy::None => Ok(()),
            FsyncPolicy::Batch => self.sync(),
            FsyncPolicy::Interval { .. } => self.sync_if_due(now_ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{journal_path, JournalReader, RecoveryOptions};

    fn session() -> Session {
        Session::from_str("TEST01").unwrap()
    }

    fn blocks(messages: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for message in messages {
            out.extend_from_slice(&(message.len() as u16).to_be_bytes());
            out.extend_from_slice(message);
        }
        out
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
            assert_eq!(writer.fsyncs(), 2);
        }
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
            let (mut writer, _) = JournalWriter::open(
                dir.path(),
                session(),
                FsyncPolicy::None,
                &RecoveryOptions::default(),
                |_, _| {},
            )
            .unwrap();
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
            let (mut writer, _) = JournalWriter::open(
                dir.path(),
                session(),
                FsyncPolicy::None,
                &RecoveryOptions::default(),
                |_, _| {},
            )
            .unwrap();
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
            let (mut writer, _) = JournalWriter::open(
                dir.path(),
                session(),
                FsyncPolicy::None,
                &RecoveryOptions::default(),
                |_, _| {},
            )
            .unwrap();
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
            let (mut writer, _) = JournalWriter::open(
                dir.path(),
                session(),
                FsyncPolicy::None,
                &RecoveryOptions::default(),
                |_, _| {},
            )
            .unwrap();
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
        let (mut writer, _) = JournalWriter::open(
            dir.path(),
            session(),
            FsyncPolicy::None,
            &RecoveryOptions::default(),
            |_, _| {},
        )
        .unwrap();
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
