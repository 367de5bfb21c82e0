//! Recovery: reads an existing journal at start-up, checks every record,
//! and tells a torn tail (cut) from corruption (refused).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tally_wire::mold::Session;

use super::format::*;
use super::{io_error, journal_path, now_ns, sync_dir, JournalError, Recovery};

/// What the operator allows recovery to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryOptions {
    /// Accept a journal that lost acknowledged messages (the operator's
    /// explicit, loudly named flag). Never set by default.
    pub accept_loss: bool,
}

/// Opens (or creates) the journal of `session` in `dir`, recovers it, calls
/// `on_message(seq, message)` for every journaled message in order, and
/// returns the file (positioned anywhere: the writer seeks to its end), its
/// path and what recovery found.
pub(crate) fn open_and_recover(
    dir: &Path,
    session: Session,
    _options: &RecoveryOptions,
    mut on_message: &mut impl FnMut(u64, &[u8]),
) -> Result<(File, PathBuf, Recovery), JournalError> {
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
    Ok((file, path, recovery))
}

/// Reads and checks every record; returns the offset where valid data ends.
pub(crate) fn recover(
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
