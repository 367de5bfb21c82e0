//! Recovery: reads an existing journal at start-up, checks every record,
//! tells a torn tail (cut) from corruption (refused), and holds the journal
//! to its checkpoint.
//!
//! The scan ([`scan`]) is shared with the operator's `tally-journal`. It reads
//! the file in windows of [`SCAN_WINDOW_BYTES`] and walks records in order.
//! At the first record that fails (length, checksum, sequence number, block
//! structure, or anything after the end-of-session record) it looks at every
//! byte offset from that record to the end of the file for an intact record
//! (one whose length, header and checksum hold, whatever its sequence
//! number). Zero fill, garbage and a partly written record are not intact.
//! If nothing intact follows, the damage is a torn tail: the crash interrupted
//! the last write. If something does, the damage is in the middle of the
//! journal, and cutting there would drop acknowledged messages and hand their
//! numbers out again.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tally_wire::mold::Session;

use super::checkpoint::{self, checkpoint_path, Checkpoint};
use super::format::*;
use super::{io_error, journal_path, now_ns, sync_dir, JournalError, Recovery};

/// What the operator allows recovery to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryOptions {
    /// Accept a journal that lost acknowledged messages (the operator's
    /// explicit, loudly named flag): cut it at the first damage and rewrite
    /// the checkpoint to match. Never set by default.
    pub accept_loss: bool,
}

/// Bytes the scan reads at a time (a multiple of the largest record, so a
/// record always fits in one window).
pub const SCAN_WINDOW_BYTES: usize = 4 << 20;
const RECORD_BYTES_MAX: usize = RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX;
const _: () = assert!(SCAN_WINDOW_BYTES >= 2 * RECORD_BYTES_MAX);

/// Something the scan can read at an offset: a file, or bytes in memory
/// (tests).
pub trait ReadAt {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = (offset as usize).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// A record the scan found intact and in sequence.
#[derive(Clone, Copy, Debug)]
pub struct ScannedRecord<'a> {
    /// Where it is and what it holds.
    pub info: RecordInfo,
    /// Its MoldUDP64 blocks (empty for the end-of-session record).
    pub payload: &'a [u8],
}

/// Intact records found after a damaged one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntactAfter {
    /// File offset of the first.
    pub offset: u64,
    /// Sequence number of its first message.
    pub first_seq: u64,
    /// Intact records from there to the end of the file.
    pub records: u64,
    /// Messages in them.
    pub messages: u64,
    /// One past the highest sequence number among them.
    pub end_seq: u64,
}

/// The first damaged record and what follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// File offset of the damaged record (where the good part ends).
    pub offset: u64,
    /// What is wrong with it.
    pub reason: String,
    /// Every byte from `offset` to the end of the file is zero.
    pub zero_fill: bool,
    /// Intact records after the damage; `None` means a torn tail.
    pub after: Option<IntactAfter>,
}

impl Damage {
    /// A torn tail: nothing intact follows the damage.
    pub fn is_torn_tail(&self) -> bool {
        self.after.is_none()
    }
}

/// What a scan found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanSummary {
    /// The file's length.
    pub file_bytes: u64,
    /// Intact records in sequence before any damage (end of session included).
    pub records: u64,
    /// Messages in them.
    pub messages: u64,
    /// Sequence number after the last good message.
    pub next_seq: u64,
    /// File offset one past the last good record.
    pub end_offset: u64,
    /// The end-of-session record was found.
    pub ended: bool,
    /// The first damage, if any.
    pub damage: Option<Damage>,
    /// The caller stopped the scan early (no damage was looked for after).
    pub stopped: bool,
}

/// Reads records from `source` (a journal of `file_bytes` bytes whose file
/// header the caller has checked) in order, calling `on_record` for each
/// intact record in sequence until it breaks, and at the first damaged one
/// looks for intact records after it. `on_progress(offset)` is called each
/// time a new window is read.
pub fn scan<S: ReadAt + ?Sized>(
    source: &S,
    file_bytes: u64,
    mut on_record: impl FnMut(&ScannedRecord<'_>) -> ControlFlow<()>,
    mut on_progress: impl FnMut(u64),
) -> io::Result<ScanSummary> {
    assert!(file_bytes >= FILE_HEADER_BYTES as u64);
    let mut window = Window::new(source, file_bytes);
    let mut summary = ScanSummary {
        file_bytes,
        records: 0,
        messages: 0,
        next_seq: 1,
        end_offset: FILE_HEADER_BYTES as u64,
        ended: false,
        damage: None,
        stopped: false,
    };
    let mut offset = FILE_HEADER_BYTES as u64;
    while offset < file_bytes {
        let rest = window.at(offset, &mut on_progress)?;
        let reason = match check_record(rest, summary.next_seq) {
            Ok(_) if summary.ended => "a record follows the end-of-session record".to_string(),
            Ok((record_len, count)) => {
                let info =
                    parse_record_header(offset, rest[..RECORD_HEADER_BYTES].try_into().unwrap());
                let record = ScannedRecord {
                    info,
                    payload: &rest[RECORD_HEADER_BYTES..record_len],
                };
                let flow = on_record(&record);
                summary.records += 1;
                if count == COUNT_END_OF_SESSION {
                    summary.ended = true;
                } else {
                    summary.messages += u64::from(count);
                    summary.next_seq = info.end_seq();
                }
                offset += record_len as u64;
                summary.end_offset = offset;
                if flow.is_break() {
                    summary.stopped = true;
                    return Ok(summary);
                }
                continue;
            }
            Err(reason) => reason,
        };
        summary.damage = Some(look_past_damage(
            &mut window,
            offset,
            reason,
            &mut on_progress,
        )?);
        break;
    }
    Ok(summary)
}

/// From the damaged record at `damage_offset` to the end of the file: every
/// intact record (skipping over each one found), one byte at a time between
/// them.
fn look_past_damage<S: ReadAt + ?Sized>(
    window: &mut Window<'_, S>,
    damage_offset: u64,
    reason: String,
    on_progress: &mut impl FnMut(u64),
) -> io::Result<Damage> {
    let file_bytes = window.file_bytes;
    let mut after: Option<IntactAfter> = None;
    let mut zero_fill = true;
    let mut at = damage_offset;
    while at < file_bytes {
        let rest = window.at(at, on_progress)?;
        if rest[0] == 0 {
            // Zero fill: a record's count (bytes 16..18) is not zero, so no
            // record starts more than 17 bytes before the next non-zero
            // byte. Skip to there (within this window).
            let zeros = rest
                .iter()
                .position(|&byte| byte != 0)
                .unwrap_or(rest.len());
            if zeros > 17 {
                at += (zeros - 17) as u64;
                continue;
            }
        } else {
            zero_fill = false;
        }
        if !could_be_record(rest) {
            at += 1;
            continue;
        }
        match intact_record(rest) {
            Ok((info, record_len)) => {
                zero_fill = false;
                let messages = if info.count == COUNT_END_OF_SESSION {
                    0
                } else {
                    u64::from(info.count)
                };
                let found = after.get_or_insert(IntactAfter {
                    offset: at,
                    first_seq: info.first_seq,
                    records: 0,
                    messages: 0,
                    end_seq: info.first_seq,
                });
                found.records += 1;
                found.messages += messages;
                found.end_seq = found.end_seq.max(info.first_seq + messages);
                at += record_len as u64;
            }
            Err(_) => at += 1,
        }
    }
    Ok(Damage {
        offset: damage_offset,
        reason,
        zero_fill,
        after,
    })
}

/// A window of the file: the bytes at an offset, at least a whole largest
/// record's worth or all up to the end of the file.
struct Window<'s, S: ?Sized> {
    source: &'s S,
    file_bytes: u64,
    buf: Vec<u8>,
    start: u64,
    len: usize,
}

impl<'s, S: ReadAt + ?Sized> Window<'s, S> {
    fn new(source: &'s S, file_bytes: u64) -> Self {
        let capacity = (SCAN_WINDOW_BYTES as u64).min(file_bytes) as usize;
        Window {
            source,
            file_bytes,
            buf: vec![0u8; capacity],
            start: 0,
            len: 0,
        }
    }

    fn at(&mut self, offset: u64, on_progress: &mut impl FnMut(u64)) -> io::Result<&[u8]> {
        assert!(offset < self.file_bytes);
        let want_end = (offset + RECORD_BYTES_MAX as u64).min(self.file_bytes);
        if offset < self.start || want_end > self.start + self.len as u64 {
            let len = (self.buf.len() as u64).min(self.file_bytes - offset) as usize;
            let mut filled = 0usize;
            while filled < len {
                match self
                    .source
                    .read_at(&mut self.buf[filled..len], offset + filled as u64)
                {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "the file ended at byte {} while being read \
                                 (was it truncated meanwhile?)",
                                offset + filled as u64
                            ),
                        ))
                    }
                    Ok(n) => filled += n,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
            self.start = offset;
            self.len = len;
            on_progress(offset);
        }
        let from = (offset - self.start) as usize;
        Ok(&self.buf[from..self.len])
    }
}

/// Opens (or creates) the journal of `session` in `dir`, recovers it, calls
/// `on_message(seq, message)` for every journaled message in order, and
/// returns the file (positioned anywhere: the writer seeks to its end), its
/// path and what recovery found. Creates or refreshes the checkpoint (after
/// syncing the journal) before returning.
pub(crate) fn open_and_recover(
    dir: &Path,
    session: Session,
    options: &RecoveryOptions,
    on_message: &mut impl FnMut(u64, &[u8]),
) -> Result<(File, PathBuf, Recovery), JournalError> {
    std::fs::create_dir_all(dir).map_err(io_error(format!(
        "creating journal directory {}",
        dir.display()
    )))?;
    let path = journal_path(dir, session);
    let checkpoint_path = checkpoint_path(dir, session);
    let checkpoint = read_checkpoint(&checkpoint_path, options)?;
    let (existing, len) = open_existing(&path)?;
    if is_empty_journal(existing.as_ref(), len) {
        let files = JournalFiles {
            dir,
            path,
            checkpoint_path,
        };
        return start_fresh(files, session, existing, len, checkpoint, options);
    }
    let file = existing.expect("a non-empty journal exists");
    check_header(&file, len, &path, session)?;
    let mut recovery = Recovery::default();
    let summary = scan(
        &file,
        len,
        |record| {
            if record.info.count != COUNT_END_OF_SESSION {
                for_each_message(record, &mut *on_message);
            }
            ControlFlow::Continue(())
        },
        |_| {},
    )
    .map_err(io_error(format!("reading {}", path.display())))?;
    recovery.next_seq = summary.next_seq;
    recovery.records = summary.records;
    recovery.messages = summary.messages;
    recovery.ended = summary.ended;
    // Decide everything before changing anything.
    let losing = losses(&summary, checkpoint, options, &path, &checkpoint_path)?;
    cut_and_checkpoint(
        &file,
        &path,
        &checkpoint_path,
        &summary,
        len,
        &losing,
        checkpoint,
        &mut recovery,
    )?;
    Ok((file, path, recovery))
}

/// The journal's and its checkpoint's paths.
struct JournalFiles<'a> {
    dir: &'a Path,
    path: PathBuf,
    checkpoint_path: PathBuf,
}

/// The journal file if it exists, and its length (0 when it does not).
fn open_existing(path: &Path) -> Result<(Option<File>, u64), JournalError> {
    let existing = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => Some(file),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => {
            return Err(io_error(format!("opening journal {}", path.display()))(
                error,
            ))
        }
    };
    let len = match &existing {
        Some(file) => file
            .metadata()
            .map_err(io_error(format!("reading size of {}", path.display())))?
            .len(),
        None => 0,
    };
    Ok((existing, len))
}

/// A file shorter than its header (and a prefix of one) holds no message: a
/// crash while the journal was being created.
fn is_empty_journal(existing: Option<&File>, len: u64) -> bool {
    len < FILE_HEADER_BYTES as u64
        && existing.is_none_or(|file| {
            let mut head = vec![0u8; len as usize];
            file.read_exact_at(&mut head, 0).is_ok()
                && MAGIC.starts_with(&head[..head.len().min(8)])
        })
}

/// Starts the journal again, unless the checkpoint says messages were
/// written (then only with `--accept-journal-loss`).
fn start_fresh(
    files: JournalFiles<'_>,
    session: Session,
    existing: Option<File>,
    len: u64,
    checkpoint: Option<Checkpoint>,
    options: &RecoveryOptions,
) -> Result<(File, PathBuf, Recovery), JournalError> {
    let JournalFiles {
        dir,
        path,
        checkpoint_path,
    } = files;
    if let Some(checkpoint) = checkpoint.filter(Checkpoint::has_messages) {
        if !options.accept_loss {
            return Err(JournalError::Missing {
                path,
                checkpoint_path,
                checkpoint,
            });
        }
        tracing::error!(
            journal = %path.display(),
            checkpoint = %checkpoint_path.display(),
            lost_up_to_seq = checkpoint.next_seq - 1,
            lost_bytes = checkpoint.end_offset,
            "ACCEPTING JOURNAL LOSS (--accept-journal-loss): the journal is missing or \
             empty but its checkpoint says messages up to this sequence number were \
             written; starting a new journal at sequence number 1, so those numbers \
             WILL BE REUSED for different messages"
        );
    } else if existing.is_some() {
        tracing::warn!(
            journal = %path.display(),
            bytes = len,
            "journal shorter than its header and no message checkpointed: \
             a crash while it was created; writing it again"
        );
    }
    let file = create_journal(dir, &path, session, existing)?;
    store_checkpoint(&checkpoint_path, &Checkpoint::FRESH)?;
    let recovery = Recovery {
        next_seq: 1,
        created: true,
        ..Recovery::default()
    };
    Ok((file, path, recovery))
}

/// Refuses a file that is not this session's journal.
fn check_header(file: &File, len: u64, path: &Path, session: Session) -> Result<(), JournalError> {
    if len < FILE_HEADER_BYTES as u64 {
        return Err(JournalError::BadHeader {
            path: path.to_path_buf(),
            reason: format!("{len} bytes, shorter than the {FILE_HEADER_BYTES}-byte file header"),
        });
    }
    let bad_header = |reason: String| JournalError::BadHeader {
        path: path.to_path_buf(),
        reason,
    };
    let mut header = [0u8; FILE_HEADER_BYTES];
    file.read_exact_at(&mut header, 0)
        .map_err(io_error(format!(
            "reading the header of {}",
            path.display()
        )))?;
    let file_header = check_file_header(&header).map_err(&bad_header)?;
    if header[16..26] != *session.as_bytes() {
        return Err(bad_header(format!(
            "it belongs to session {:?}, not {:?}",
            file_header.session,
            session.as_str()
        )));
    }
    Ok(())
}

/// What recovering would lose beyond a torn tail: intact records after
/// damage, or messages the checkpoint says were written. Refused (an error
/// naming it) unless the operator accepts loss; then each is one line.
fn losses(
    summary: &ScanSummary,
    checkpoint: Option<Checkpoint>,
    options: &RecoveryOptions,
    path: &Path,
    checkpoint_path: &Path,
) -> Result<Vec<String>, JournalError> {
    let mut losing = Vec::new();
    if let Some(damage) = &summary.damage {
        if let Some(after) = &damage.after {
            if !options.accept_loss {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    offset: damage.offset,
                    reason: damage.reason.clone(),
                    last_good_seq: summary.next_seq - 1,
                    intact_offset: after.offset,
                    intact_seq: after.first_seq,
                });
            }
            losing.push(format!(
                "a damaged record at byte {} ({}) followed by {} intact records \
                 (messages {}..{}, first at byte {})",
                damage.offset,
                damage.reason,
                after.records,
                after.first_seq,
                after.end_seq,
                after.offset
            ));
        }
    }
    if let Some(checkpoint) = checkpoint {
        if !checkpoint.is_covered_by(summary.next_seq, summary.end_offset) {
            if !options.accept_loss {
                return Err(JournalError::BehindCheckpoint {
                    path: path.to_path_buf(),
                    checkpoint_path: checkpoint_path.to_path_buf(),
                    journal_next_seq: summary.next_seq,
                    journal_end_offset: summary.end_offset,
                    checkpoint,
                });
            }
            losing.push(format!(
                "the checkpoint says messages up to {} ({} bytes) were written, the journal \
                 keeps messages up to {} ({} bytes)",
                checkpoint.next_seq - 1,
                checkpoint.end_offset,
                summary.next_seq - 1,
                summary.end_offset
            ));
        }
    }
    Ok(losing)
}

/// Cuts the journal after its last good record (logging a torn tail, or the
/// accepted loss), syncs it, then stores the checkpoint that matches it.
#[allow(clippy::too_many_arguments)]
fn cut_and_checkpoint(
    file: &File,
    path: &Path,
    checkpoint_path: &Path,
    summary: &ScanSummary,
    len: u64,
    losing: &[String],
    checkpoint: Option<Checkpoint>,
    recovery: &mut Recovery,
) -> Result<(), JournalError> {
    let end = summary.end_offset;
    if end < len {
        recovery.cut_bytes = len - end;
        if losing.is_empty() {
            let damage = summary.damage.as_ref().expect("a cut follows damage");
            tracing::warn!(
                path = %path.display(),
                cut_bytes = recovery.cut_bytes,
                at_offset = end,
                next_seq = summary.next_seq,
                zero_fill = damage.zero_fill,
                reason = %damage.reason,
                "journal had a torn tail (nothing intact after it); cut it"
            );
        }
    }
    if !losing.is_empty() {
        tracing::error!(
            journal = %path.display(),
            cut_at_offset = end,
            cut_bytes = recovery.cut_bytes,
            last_kept_seq = summary.next_seq - 1,
            next_seq = summary.next_seq,
            "ACCEPTING JOURNAL LOSS (--accept-journal-loss): {}; the journal now ends there \
             and the checkpoint is rewritten to match. Sequence numbers from {} on WILL BE \
             REUSED for different messages: receivers that hold the old ones must start over",
            losing.join("; "),
            summary.next_seq
        );
    }
    if end < len {
        file.set_len(end).map_err(io_error(format!(
            "cutting {} at byte {end}",
            path.display()
        )))?;
    }
    // The checkpoint may only claim what is on disk: sync first (after a
    // process crash with fsync = "none" the page cache may hold the tail).
    file.sync_all()
        .map_err(io_error(format!("syncing {}", path.display())))?;
    let recovered = Checkpoint {
        next_seq: summary.next_seq,
        end_offset: end,
    };
    if checkpoint.is_none() {
        tracing::warn!(
            checkpoint = %checkpoint_path.display(),
            next_seq = recovered.next_seq,
            end_offset = recovered.end_offset,
            "journal had no checkpoint (written by an older version, or deleted); writing one"
        );
    }
    if checkpoint != Some(recovered) {
        store_checkpoint(checkpoint_path, &recovered)?;
    }
    Ok(())
}

/// Reads the checkpoint; a damaged one is refused unless the operator
/// accepts loss (then it is ignored and rewritten from the journal).
fn read_checkpoint(
    checkpoint_path: &Path,
    options: &RecoveryOptions,
) -> Result<Option<Checkpoint>, JournalError> {
    match Checkpoint::read(checkpoint_path) {
        Ok(None) => Ok(None),
        Ok(Some(Ok(checkpoint))) => Ok(Some(checkpoint)),
        Ok(Some(Err(reason))) if options.accept_loss => {
            tracing::error!(
                checkpoint = %checkpoint_path.display(),
                %reason,
                "ACCEPTING JOURNAL LOSS (--accept-journal-loss): the checkpoint is damaged; \
                 ignoring it and rewriting it from the journal, so a journal shorter than what \
                 was acknowledged cannot be detected this time"
            );
            Ok(None)
        }
        Ok(Some(Err(reason))) => Err(JournalError::CheckpointDamaged {
            path: checkpoint_path.to_path_buf(),
            reason,
        }),
        Err(source) => Err(JournalError::Io {
            context: format!("reading checkpoint {}", checkpoint_path.display()),
            source,
        }),
    }
}

fn store_checkpoint(path: &Path, checkpoint: &Checkpoint) -> Result<(), JournalError> {
    checkpoint::store(path, checkpoint).map_err(io_error(format!(
        "writing checkpoint {} (next_seq {}, end_offset {})",
        path.display(),
        checkpoint.next_seq,
        checkpoint.end_offset
    )))
}

/// Writes a new file header over `existing` (or a new file) and syncs it.
fn create_journal(
    dir: &Path,
    path: &Path,
    session: Session,
    existing: Option<File>,
) -> Result<File, JournalError> {
    let mut file = match existing {
        Some(file) => file,
        None => OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io_error(format!("creating journal {}", path.display())))?,
    };
    file.set_len(0)
        .map_err(io_error(format!("emptying {}", path.display())))?;
    let header = file_header(session, now_ns());
    file.write_all_at(&header, 0)
        .and_then(|()| file.flush())
        .map_err(io_error(format!("writing header of {}", path.display())))?;
    file.sync_all()
        .map_err(io_error(format!("syncing new journal {}", path.display())))?;
    sync_dir(dir);
    Ok(file)
}

/// Hands every message of a (checked) record to `on_message(seq, message)`.
pub(crate) fn for_each_message(
    record: &ScannedRecord<'_>,
    on_message: &mut impl FnMut(u64, &[u8]),
) {
    let payload = record.payload;
    let mut seq = record.info.first_seq;
    let mut at = 0usize;
    while at < payload.len() {
        let len = usize::from(u16::from_be_bytes([payload[at], payload[at + 1]]));
        on_message(seq, &payload[at + 2..at + 2 + len]);
        seq += 1;
        at += 2 + len;
    }
}

#[cfg(test)]
mod tests;
