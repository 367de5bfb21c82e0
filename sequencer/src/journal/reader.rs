//! The reading side of the journal, for the retransmit and replay threads.

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
/// following the writer's published end, and one record buffer. All memory is
/// allocated in [`JournalReader::open`].
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
    record: Box<[u8]>,
}

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
            record: vec![0u8; RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX].into_boxed_slice(),
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
            let info = self.read_header(self.indexed.offset)?;
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
        loop {
            let info = self.read_header(offset)?;
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
    /// number handed out.
    pub fn read(
        &mut self,
        cursor: &mut Cursor,
        messages_max: usize,
        mut on_message: impl FnMut(u64, &[u8]) -> bool,
    ) -> io::Result<usize> {
        let end = self.progress.end_offset();
        let mut handed = 0usize;
        while handed < messages_max && cursor.offset < end {
            let info = self.read_header(cursor.offset)?;
            if info.count == COUNT_END_OF_SESSION {
                break;
            }
            let payload_len = info.payload_bytes as usize;
            let payload_start = RECORD_HEADER_BYTES;
            self.file.read_exact_at(
                &mut self.record[payload_start..payload_start + payload_len],
                cursor.offset + RECORD_HEADER_BYTES as u64,
            )?;
            let payload = &self.record[payload_start..payload_start + payload_len];
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

    fn read_header(&self, offset: u64) -> io::Result<RecordInfo> {
        let mut header = [0u8; RECORD_HEADER_BYTES];
        self.file.read_exact_at(&mut header, offset)?;
        Ok(parse_record_header(offset, &header))
    }
}
