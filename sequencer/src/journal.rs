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
//! Recovery reads the whole file, checks every record's checksum, sequence
//! continuity and block structure, and cuts a torn tail: an incomplete final
//! record, a final record whose checksum fails, or a run of zeros. A damaged
//! record with intact records after it is not a torn write: opening fails
//! rather than reuse sequence numbers that receivers may already hold.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tally_wire::mold::Session;

/// Bytes in the file header.
pub const FILE_HEADER_BYTES: usize = 64;
/// Bytes in each record header.
pub const RECORD_HEADER_BYTES: usize = 24;
/// Largest payload a record may hold: a MoldUDP64 packet's block area is
/// bounded by the UDP datagram size.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 65_507 - 20;
/// Record count value that marks the end of the session.
pub const COUNT_END_OF_SESSION: u16 = 0xFFFF;

const MAGIC: &[u8; 8] = b"TALLYJNL";
const VERSION: u32 = 1;

/// When the journal calls `fdatasync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Never: the journal survives a process crash (the page cache holds it),
    /// not a host crash.
    None,
    /// Before each packet is published: survives a host crash; costs one
    /// `fdatasync` per packet.
    Batch,
    /// At most this many nanoseconds after a write: bounds what a host crash
    /// can lose.
    Interval { interval_ns: u64 },
}

/// Why a journal could not be opened.
#[derive(Debug)]
pub enum JournalError {
    /// An I/O error, with what was being done.
    Io { context: String, source: io::Error },
    /// The file is not a tally journal, or belongs to another session.
    BadHeader { path: PathBuf, reason: String },
    /// A damaged record with intact data after it.
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

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
            } => write!(
                f,
                "{}: corrupt record at byte {offset} with intact records after it ({reason}); \
                 refusing to start so that no sequence number is reused",
                path.display()
            ),
        }
    }
}

impl std::error::Error for JournalError {}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> JournalError {
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

    fn publish(&self, end_offset: u64, next_seq: u64) {
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
        mut on_message: impl FnMut(u64, &[u8]),
    ) -> Result<(JournalWriter, Recovery), JournalError> {
        std::fs::create_dir_all(dir).map_err(io_error(format!(
            "creating journal directory {}",
            dir.display()
        )))?;
        let path = journal_path(dir, session);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(format!("opening journal {}", path.display())))?;
        let len = file
            .metadata()
            .map_err(io_error(format!("reading size of {}", path.display())))?
            .len();

        let mut recovery = Recovery {
            next_seq: 1,
            ..Recovery::default()
        };
        if len == 0 {
            let header = file_header(session, now_ns());
            file.write_all(&header)
                .map_err(io_error(format!("writing header of {}", path.display())))?;
            file.sync_all()
                .map_err(io_error(format!("syncing new journal {}", path.display())))?;
            sync_dir(dir);
            recovery.created = true;
        } else {
            let end = recover(
                &mut file,
                &path,
                session,
                len,
                &mut recovery,
                &mut on_message,
            )?;
            if end < len {
                recovery.cut_bytes = len - end;
                tracing::warn!(
                    path = %path.display(),
                    cut_bytes = recovery.cut_bytes,
                    at_offset = end,
                    "journal had a torn tail; cut it"
                );
                file.set_len(end)
                    .map_err(io_error(format!("cutting torn tail of {}", path.display())))?;
                file.sync_all()
                    .map_err(io_error(format!("syncing {}", path.display())))?;
            }
        }
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
                last_sync_ns: now_ns(),
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

/// A record found by a reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    /// File offset of the record header.
    pub offset: u64,
    /// Sequence number of the first message.
    pub first_seq: u64,
    /// Messages in the record.
    pub count: u16,
    /// Payload bytes.
    pub payload_bytes: u32,
}

impl RecordInfo {
    /// Sequence number one past the record's last message.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }

    /// File offset one past the record.
    pub fn end_offset(&self) -> u64 {
        self.offset + RECORD_HEADER_BYTES as u64 + u64::from(self.payload_bytes)
    }
}

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

fn parse_record_header(offset: u64, header: &[u8; RECORD_HEADER_BYTES]) -> RecordInfo {
    RecordInfo {
        offset,
        payload_bytes: u32::from_be_bytes(header[0..4].try_into().unwrap()),
        first_seq: u64::from_be_bytes(header[8..16].try_into().unwrap()),
        count: u16::from_be_bytes(header[16..18].try_into().unwrap()),
    }
}

fn record_header(first_seq: u64, count: u16, blocks: &[u8]) -> [u8; RECORD_HEADER_BYTES] {
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[0..4].copy_from_slice(&(blocks.len() as u32).to_be_bytes());
    header[8..16].copy_from_slice(&first_seq.to_be_bytes());
    header[16..18].copy_from_slice(&count.to_be_bytes());
    let crc = record_crc(&header, blocks);
    header[4..8].copy_from_slice(&crc.to_be_bytes());
    header
}

fn record_crc(header: &[u8; RECORD_HEADER_BYTES], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header[0..4]);
    let crc = crc32c::crc32c_append(crc, &header[8..RECORD_HEADER_BYTES]);
    crc32c::crc32c_append(crc, payload)
}

fn file_header(session: Session, created_ns: u64) -> [u8; FILE_HEADER_BYTES] {
    let mut header = [0u8; FILE_HEADER_BYTES];
    header[0..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_be_bytes());
    header[12..16].copy_from_slice(&(FILE_HEADER_BYTES as u32).to_be_bytes());
    header[16..26].copy_from_slice(session.as_bytes());
    header[32..40].copy_from_slice(&created_ns.to_be_bytes());
    header
}

/// Walks the blocks of a payload: Some(count) when they tile it exactly.
fn count_blocks(payload: &[u8]) -> Option<u64> {
    let mut at = 0usize;
    let mut count = 0u64;
    while at < payload.len() {
        if at + 2 > payload.len() {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([payload[at], payload[at + 1]]));
        at += 2 + len;
        count += 1;
    }
    (at == payload.len()).then_some(count)
}

/// Reads and checks every record; returns the offset where valid data ends.
fn recover(
    file: &mut File,
    path: &Path,
    session: Session,
    len: u64,
    recovery: &mut Recovery,
    on_message: &mut impl FnMut(u64, &[u8]),
) -> Result<u64, JournalError> {
    let bad_header = |reason: &str| JournalError::BadHeader {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if len < FILE_HEADER_BYTES as u64 {
        return Err(bad_header("shorter than the 64-byte file header"));
    }
    let mut contents = Vec::with_capacity(len as usize);
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut contents))
        .map_err(io_error(format!("reading {}", path.display())))?;
    if &contents[0..8] != MAGIC {
        return Err(bad_header("wrong magic (expected TALLYJNL)"));
    }
    let version = u32::from_be_bytes(contents[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(bad_header(&format!(
            "version {version}, this build reads {VERSION}"
        )));
    }
    if &contents[16..26] != session.as_bytes() {
        return Err(bad_header(&format!(
            "it belongs to session {:?}, not {:?}",
            String::from_utf8_lossy(&contents[16..26]).trim_end(),
            session.as_str()
        )));
    }

    let mut offset = FILE_HEADER_BYTES;
    let mut next_seq = 1u64;
    loop {
        if offset == contents.len() {
            break;
        }
        let rest = &contents[offset..];
        let fail = match check_record(rest, next_seq) {
            Ok((record_len, count)) => {
                let payload = &rest[RECORD_HEADER_BYTES..record_len];
                if recovery.ended {
                    Some("a record follows the end of session".to_string())
                } else if count == COUNT_END_OF_SESSION {
                    recovery.ended = true;
                    recovery.records += 1;
                    offset += record_len;
                    None
                } else {
                    let mut at = 0usize;
                    while at < payload.len() {
                        let len = usize::from(u16::from_be_bytes([payload[at], payload[at + 1]]));
                        on_message(next_seq, &payload[at + 2..at + 2 + len]);
                        next_seq += 1;
                        recovery.messages += 1;
                        at += 2 + len;
                    }
                    recovery.records += 1;
                    offset += record_len;
                    None
                }
            }
            Err(reason) => Some(reason),
        };
        if let Some(reason) = fail {
            if is_torn_tail(rest) {
                break;
            }
            return Err(JournalError::Corrupt {
                path: path.to_path_buf(),
                offset: offset as u64,
                reason,
            });
        }
    }
    recovery.next_seq = next_seq;
    Ok(offset as u64)
}

/// Checks one record at the start of `rest`: Ok((record bytes, count)).
fn check_record(rest: &[u8], expected_seq: u64) -> Result<(usize, u16), String> {
    if rest.len() < RECORD_HEADER_BYTES {
        return Err(format!("{} bytes left, a record header is 24", rest.len()));
    }
    let header: &[u8; RECORD_HEADER_BYTES] = rest[..RECORD_HEADER_BYTES].try_into().unwrap();
    let info = parse_record_header(0, header);
    let payload_len = info.payload_bytes as usize;
    if payload_len > RECORD_PAYLOAD_BYTES_MAX {
        return Err(format!("payload length {payload_len} is over the maximum"));
    }
    let record_len = RECORD_HEADER_BYTES + payload_len;
    if rest.len() < record_len {
        return Err(format!("record of {record_len} bytes, {} left", rest.len()));
    }
    let payload = &rest[RECORD_HEADER_BYTES..record_len];
    let stored_crc = u32::from_be_bytes(header[4..8].try_into().unwrap());
    if record_crc(header, payload) != stored_crc {
        return Err("checksum mismatch".to_string());
    }
    if info.first_seq != expected_seq {
        return Err(format!(
            "record starts at sequence {}, expected {expected_seq}",
            info.first_seq
        ));
    }
    if info.count == COUNT_END_OF_SESSION {
        if payload_len != 0 {
            return Err("end-of-session record with a payload".to_string());
        }
        return Ok((record_len, info.count));
    }
    match count_blocks(payload) {
        Some(blocks) if blocks == u64::from(info.count) && blocks > 0 => {
            Ok((record_len, info.count))
        }
        _ => Err(format!("blocks do not match the count {}", info.count)),
    }
}

/// A failed record is a torn tail when nothing valid can follow it: it runs
/// past the end of the file, it is exactly the last record, or everything from
/// it on is zero.
fn is_torn_tail(rest: &[u8]) -> bool {
    if rest.iter().all(|&byte| byte == 0) {
        return true;
    }
    if rest.len() < RECORD_HEADER_BYTES {
        return true;
    }
    let payload_len = u32::from_be_bytes(rest[0..4].try_into().unwrap()) as usize;
    RECORD_HEADER_BYTES + payload_len >= rest.len()
}

fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (_, recovery) =
            JournalWriter::open(dir, session(), FsyncPolicy::None, |seq, message| {
                seen.push((seq, message.to_vec()))
            })
            .unwrap();
        (seen, recovery)
    }

    #[test]
    fn append_reopen_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut writer, recovery) =
                JournalWriter::open(dir.path(), session(), FsyncPolicy::Batch, |_, _| {}).unwrap();
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
            let (mut writer, _) =
                JournalWriter::open(dir.path(), session(), FsyncPolicy::None, |_, _| {}).unwrap();
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
            let (mut writer, _) =
                JournalWriter::open(dir.path(), session(), FsyncPolicy::None, |_, _| {}).unwrap();
            writer.append(1, 1, &blocks(&[b"first"]), 0).unwrap();
            writer.append(2, 1, &blocks(&[b"second"]), 0).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 3] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let error =
            JournalWriter::open(dir.path(), session(), FsyncPolicy::None, |_, _| {}).unwrap_err();
        assert!(matches!(error, JournalError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn zero_filled_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(dir.path(), session());
        {
            let (mut writer, _) =
                JournalWriter::open(dir.path(), session(), FsyncPolicy::None, |_, _| {}).unwrap();
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
        let error =
            JournalWriter::open(dir.path(), session(), FsyncPolicy::None, |_, _| {}).unwrap_err();
        assert!(error.to_string().contains("wrong magic"), "{error}");
    }

    #[test]
    fn end_of_session_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut writer, _) =
                JournalWriter::open(dir.path(), session(), FsyncPolicy::None, |_, _| {}).unwrap();
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
        let (mut writer, _) =
            JournalWriter::open(dir.path(), session(), FsyncPolicy::None, |_, _| {}).unwrap();
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
