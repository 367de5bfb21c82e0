//! The reading side of the journal, for the retransmit and replay threads.
//! Recent records come from the writer's window in memory
//! ([`super::RecentWindow`]); older ones, or all of them when there is no
//! window, from the file in batched `pread`s.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::format::*;
use super::JournalProgress;

/// Where a reader is: the next record to read and the message to start at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// File offset of the next record to read.
    pub offset: u64,
    /// Sequence number of the next message to hand out.
    pub next_seq: u64,
}

/// A reading side for the retransmit and replay threads: its own file handle,
/// a sparse index (one entry per `INDEX_STRIDE_BYTES` of journal) built by
/// following the writer's published end, and one read-ahead buffer. All
/// memory is allocated in [`JournalReader::open`].
///
/// Reads are batched: one `pread` fills `READ_AHEAD_BYTES` of journal,
/// which serves many records (and, while following the writer, many
/// headers). Data below the writer's published end never changes (the
/// journal is append-only; a torn tail is cut before any reader opens), so
/// what the buffer holds stays valid.
///
/// Every record is checked (CRC32C, sequence number, block structure) before
/// any of its messages is handed out: a damaged record is an
/// [`io::ErrorKind::InvalidData`] error naming its byte offset, never data.
#[derive(Debug)]
pub struct JournalReader {
    file: File,
    progress: Arc<JournalProgress>,
    /// (first_seq, offset) of records at least `INDEX_STRIDE_BYTES` apart.
    index: Vec<(u64, u64)>,
    index_capacity: usize,
    /// How far the index has followed the journal.
    indexed: Cursor,
    last_indexed_offset: u64,
    /// Read-ahead buffer: journal bytes `chunk_offset..chunk_offset + chunk_len`.
    chunk: Box<[u8]>,
    chunk_offset: u64,
    chunk_len: usize,
    /// `pread` calls made (tests and counters: reads are batched).
    preads: u64,
    /// Read-ahead fills served from the journal's window of recent bytes.
    window_reads: u64,
}

/// Journal bytes one `pread` fetches ahead.
pub const READ_AHEAD_BYTES: usize = 256 * 1024;

/// Spacing of the reader's sparse index, in journal bytes.
pub const INDEX_STRIDE_BYTES: u64 = 64 * 1024;

impl JournalReader {
    /// Opens a reader on the journal at `path`, following `progress`.
    /// `index_capacity` bounds the sparse index (entries of 16 bytes; each
    /// covers `INDEX_STRIDE_BYTES` of journal).
    pub fn open(
        path: &Path,
        progress: Arc<JournalProgress>,
        index_capacity: usize,
    ) -> io::Result<JournalReader> {
        let file = File::open(path)?;
        Ok(JournalReader {
            file,
            progress,
            index: Vec::with_capacity(index_capacity),
            index_capacity,
            indexed: Cursor {
                offset: FILE_HEADER_BYTES as u64,
                next_seq: 1,
            },
            last_indexed_offset: 0,
            chunk: vec![0u8; READ_AHEAD_BYTES + RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX]
                .into_boxed_slice(),
            chunk_offset: 0,
            chunk_len: 0,
            preads: 0,
            window_reads: 0,
        })
    }

    /// Sequence number the next published message will get.
    pub fn next_seq(&self) -> u64 {
        self.progress.next_seq()
    }

    /// Whether the session has ended.
    pub fn ended(&self) -> bool {
        self.progress.ended()
    }

    /// Sequence number one past the last indexed message.
    pub fn indexed_next_seq(&self) -> u64 {
        self.indexed.next_seq
    }

    /// First sequence number of the oldest indexed record (None before any).
    pub fn oldest_indexed_seq(&self) -> Option<u64> {
        self.index.first().map(|&(first_seq, _)| first_seq)
    }

    /// A cursor at the start of the journal.
    pub fn start(&self) -> Cursor {
        Cursor {
            offset: FILE_HEADER_BYTES as u64,
            next_seq: 1,
        }
    }

    /// Follows the writer: indexes records published since the last call.
    /// Bounded work: at most `records_max` records.
    pub fn follow(&mut self, records_max: usize) -> io::Result<usize> {
        let end = self.progress.end_offset();
        let mut done = 0;
        while done < records_max && self.indexed.offset < end {
            let info = self.read_header(self.indexed.offset, end)?;
            if info.count == COUNT_END_OF_SESSION {
                self.indexed.offset = info.end_offset();
                break;
            }
            if self.index.is_empty() || info.offset - self.last_indexed_offset >= INDEX_STRIDE_BYTES
            {
                if self.index.len() == self.index_capacity {
                    // Oldest half goes: requests that old fall outside
                    // retention anyway and a scan from an older entry works.
                    let keep_from = self.index.len() / 2;
                    self.index.drain(..keep_from);
                }
                self.index.push((info.first_seq, info.offset));
                self.last_indexed_offset = info.offset;
            }
            self.indexed = Cursor {
                offset: info.end_offset(),
                next_seq: info.end_seq(),
            };
            done += 1;
        }
        Ok(done)
    }

    /// A cursor positioned so that the next [`read`](Self::read) starts at
    /// message `seq`. `seq` must be below the published next_seq (call
    /// [`follow`](Self::follow) first); `None` when it is not, or is before
    /// the oldest indexed record.
    pub fn seek(&mut self, seq: u64) -> io::Result<Option<Cursor>> {
        // Published but not indexed yet (a reader that just started on a
        // long journal): index up to it first.
        while seq >= self.indexed.next_seq && seq < self.progress.next_seq() {
            if self.follow(4096)? == 0 {
                break;
            }
        }
        if seq == 0 || seq >= self.indexed.next_seq {
            return Ok(None);
        }
        let slot = self
            .index
            .partition_point(|&(first_seq, _)| first_seq <= seq);
        if slot == 0 {
            return Ok(None);
        }
        let (_, mut offset) = self.index[slot - 1];
        let end = self.progress.end_offset();
        loop {
            let info = self.read_header(offset, end)?;
            if info.count == COUNT_END_OF_SESSION {
                return Ok(None);
            }
            if seq < info.end_seq() {
                return Ok(Some(Cursor {
                    offset,
                    next_seq: seq,
                }));
            }
            offset = info.end_offset();
        }
    }

    /// Hands messages from `cursor` on to `on_message(seq, message)` until it
    /// returns false, `messages_max` were handed out, or the published end is
    /// reached. Advances the cursor past what was handed out. Returns the
    /// number handed out. A record that fails its check is an
    /// [`io::ErrorKind::InvalidData`] error (its messages are not handed out;
    /// the cursor stays before it).
    pub fn read(
        &mut self,
        cursor: &mut Cursor,
        messages_max: usize,
        mut on_message: impl FnMut(u64, &[u8]) -> bool,
    ) -> io::Result<usize> {
        let end = self.progress.end_offset();
        let mut handed = 0usize;
        while handed < messages_max && cursor.offset < end {
            let (info, payload) = self.checked_record(cursor.offset, end)?;
            if info.count == COUNT_END_OF_SESSION {
                break;
            }
            let mut at = 0usize;
            let mut seq = info.first_seq;
            let mut stopped = false;
            while at + 2 <= payload.len() {
                let len = usize::from(u16::from_be_bytes([payload[at], payload[at + 1]]));
                let message = &payload[at + 2..at + 2 + len];
                at += 2 + len;
                if seq >= cursor.next_seq {
                    if handed == messages_max || !on_message(seq, message) {
                        stopped = true;
                        break;
                    }
                    handed += 1;
                    cursor.next_seq = seq + 1;
                }
                seq += 1;
            }
            if stopped || cursor.next_seq < info.end_seq() {
                break;
            }
            cursor.offset = info.end_offset();
        }
        Ok(handed)
    }

    /// `pread` calls made so far (each fills the read-ahead buffer).
    pub fn preads(&self) -> u64 {
        self.preads
    }

    /// Read-ahead fills served from the journal's window of recent bytes
    /// instead of a `pread`.
    pub fn window_reads(&self) -> u64 {
        self.window_reads
    }

    /// The record at `offset` (below `end`), its payload checked: CRC32C,
    /// blocks that tile the payload and match the count.
    fn checked_record(&mut self, offset: u64, end: u64) -> io::Result<(RecordInfo, &[u8])> {
        let info = self.read_header(offset, end)?;
        let record_len = RECORD_HEADER_BYTES + info.payload_bytes as usize;
        let at = self.buffered(offset, record_len, end)?;
        let record = &self.chunk[at..at + record_len];
        let header: &[u8; RECORD_HEADER_BYTES] =
            record[..RECORD_HEADER_BYTES].try_into().expect("24 bytes");
        let payload = &record[RECORD_HEADER_BYTES..];
        let stored_crc = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
        let reason = if record_crc(header, payload) != stored_crc {
            Some("checksum mismatch")
        } else if info.count == COUNT_END_OF_SESSION {
            (!payload.is_empty()).then_some("end-of-session record with a payload")
        } else if count_blocks(payload) != Some(u64::from(info.count)) || info.count == 0 {
            Some("blocks do not match the count")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(corrupt(offset, reason));
        }
        Ok((info, payload))
    }

    /// The header of the record at `offset`, its length checked against the
    /// published end.
    fn read_header(&mut self, offset: u64, end: u64) -> io::Result<RecordInfo> {
        let at = self.buffered(offset, RECORD_HEADER_BYTES, end)?;
        let header: &[u8; RECORD_HEADER_BYTES] = self.chunk[at..at + RECORD_HEADER_BYTES]
            .try_into()
            .expect("24 bytes");
        let info = parse_record_header(offset, header);
        if info.payload_bytes as usize > RECORD_PAYLOAD_BYTES_MAX || info.end_offset() > end {
            return Err(corrupt(offset, "length runs past the published end"));
        }
        Ok(info)
    }

    /// Makes journal bytes `offset..offset + len` (all below `end`) present
    /// in the read-ahead buffer; returns where they start in it. One `pread`
    /// fetches up to [`READ_AHEAD_BYTES`] more than asked.
    fn buffered(&mut self, offset: u64, len: usize, end: u64) -> io::Result<usize> {
        debug_assert!(offset + len as u64 <= end);
        let chunk_end = self.chunk_offset + self.chunk_len as u64;
        if offset >= self.chunk_offset && offset + len as u64 <= chunk_end {
            return Ok((offset - self.chunk_offset) as usize);
        }
        let want = (end - offset).min(self.chunk.len() as u64) as usize;
        assert!(want >= len, "a record fits the read-ahead buffer");
        let from_window = self
            .progress
            .window()
            .is_some_and(|window| window.read(offset, &mut self.chunk[..want]));
        if from_window {
            self.window_reads += 1;
        } else {
            self.file.read_exact_at(&mut self.chunk[..want], offset)?;
            self.preads += 1;
        }
        self.chunk_offset = offset;
        self.chunk_len = want;
        Ok(0)
    }
}

fn corrupt(offset: u64, reason: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("journal record at byte {offset} fails its check ({reason}); not served"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{FsyncPolicy, JournalWriter, RecoveryOptions};
    use tally_wire::mold::Session;

    fn blocks(record: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..10u64 {
            let message = format!("message {record} {i} {}", "y".repeat(30));
            out.extend_from_slice(&(message.len() as u16).to_be_bytes());
            out.extend_from_slice(message.as_bytes());
        }
        out
    }

    fn journal(records: u64) -> (tempfile::TempDir, JournalWriter) {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = JournalWriter::open(
            dir.path(),
            Session::from_str("READ01").unwrap(),
            FsyncPolicy::None,
            &RecoveryOptions::default(),
            |_, _| {},
        )
        .unwrap();
        for record in 0..records {
            writer
                .append(1 + record * 10, 10, &blocks(record), 0)
                .unwrap();
        }
        (dir, writer)
    }

    #[test]
    fn reads_are_batched_not_one_pread_per_record() {
        // 5 000 records of ~450 bytes: ~2.3 MB of journal.
        let (_dir, writer) = journal(5_000);
        let mut reader = JournalReader::open(writer.path(), writer.progress(), 64).unwrap();
        let mut cursor = reader.start();
        let mut next = 1u64;
        while reader
            .read(&mut cursor, 1_000, |seq, _| {
                assert_eq!(seq, next);
                next += 1;
                true
            })
            .unwrap()
            > 0
        {}
        assert_eq!(next, 50_001);
        let bytes = writer.progress().end_offset();
        let preads_max = bytes / READ_AHEAD_BYTES as u64 + 2;
        assert!(
            reader.preads() <= preads_max,
            "{} preads for {bytes} bytes (at most {preads_max})",
            reader.preads()
        );
    }

    #[test]
    fn recent_records_come_from_the_window_older_ones_from_the_file() {
        let (dir, writer) = journal(100);
        let path = writer.path().to_path_buf();
        drop(writer);
        // Reopened: the window starts at the end; the first 1 000 messages
        // are only in the file.
        let (mut writer, _) = JournalWriter::open(
            dir.path(),
            Session::from_str("READ01").unwrap(),
            FsyncPolicy::None,
            &RecoveryOptions::default(),
            |_, _| {},
        )
        .unwrap();
        assert!(writer.progress().window().is_some());
        let mut reader = JournalReader::open(&path, writer.progress(), 64).unwrap();
        let mut cursor = reader.start();
        assert_eq!(reader.read(&mut cursor, 2_000, |_, _| true).unwrap(), 1_000);
        assert!(reader.preads() > 0);
        assert_eq!(reader.window_reads(), 0);
        while reader.follow(1_000).unwrap() > 0 {}
        // Appended since: followed and read from memory, one record at a
        // time (as the stream grows), no pread.
        let preads = reader.preads();
        for record in 100..150u64 {
            writer
                .append(1 + record * 10, 10, &blocks(record), 0)
                .unwrap();
            assert_eq!(reader.follow(16).unwrap(), 1);
            let mut seen = Vec::new();
            let n = reader
                .read(&mut cursor, 100, |seq, message| {
                    seen.push((seq, message.to_vec()));
                    true
                })
                .unwrap();
            assert_eq!(n, 10);
            assert_eq!(seen[0].0, 1 + record * 10);
            assert_eq!(
                seen[0].1,
                format!("message {record} 0 {}", "y".repeat(30)).into_bytes()
            );
        }
        assert_eq!(reader.preads(), preads, "no pread for recent records");
        assert!(reader.window_reads() >= 50);
    }

    #[test]
    fn a_damaged_record_is_refused_not_served() {
        let (dir, writer) = journal(20);
        let path = writer.path().to_path_buf();
        let progress = writer.progress();
        progress.bypass_window();
        drop(writer);
        // Flip one payload byte of record 7 (messages 71..=80).
        let mut bytes = std::fs::read(&path).unwrap();
        let record_len = RECORD_HEADER_BYTES + blocks(0).len();
        let at = FILE_HEADER_BYTES + 7 * record_len + RECORD_HEADER_BYTES + 5;
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();

        let mut reader = JournalReader::open(&path, progress, 64).unwrap();
        let mut cursor = reader.seek(60).unwrap().expect("indexed");
        let mut served = Vec::new();
        let error = reader
            .read(&mut cursor, 1_000, |seq, _| {
                served.push(seq);
                true
            })
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let offset = FILE_HEADER_BYTES + 7 * record_len;
        assert!(
            error.to_string().contains(&format!("byte {offset}")),
            "{error}"
        );
        assert_eq!(
            served,
            (60..=70).collect::<Vec<_>>(),
            "nothing of the bad record"
        );
        assert_eq!(cursor.next_seq, 71);
        // The records after it are still served to a reader that skips it.
        let mut cursor = reader.seek(81).unwrap().expect("indexed");
        let n = reader.read(&mut cursor, 1_000, |_, _| true).unwrap();
        assert_eq!(n, 120);
        drop(dir);
    }
}
