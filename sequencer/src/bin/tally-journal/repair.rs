//! `repair`: cut a journal at a damaged record, with confirmation.

use std::io;
use std::ops::ControlFlow;
use std::path::Path;

use tally_sequencer::journal::{
    scan, store_checkpoint, Checkpoint, ScanSummary, COUNT_END_OF_SESSION,
};

use super::{
    checkpoint_beside, read_checkpoint, read_file_header, with_path, CheckpointState, Progress,
    DAMAGED, INTACT, USAGE_OR_IO,
};

/// A step that stops the repair with an exit status (its message printed).
type Stop = u8;

pub(super) fn repair(
    path: &Path,
    truncate_at: u64,
    confirmed: bool,
    progress: bool,
) -> io::Result<u8> {
    if truncate_at == 0 {
        eprintln!("tally-journal: --truncate-at 0: sequence numbers start at 1");
        return Ok(USAGE_OR_IO);
    }
    let (file, file_bytes) = match open_journal(path)? {
        Ok(opened) => opened,
        Err(status) => return Ok(status),
    };
    let (cut_offset, summary) = match find_cut(&file, file_bytes, path, truncate_at, progress)? {
        Ok(found) => found,
        Err(status) => return Ok(status),
    };
    let checkpoint_path = checkpoint_beside(path);
    let new_checkpoint = Checkpoint {
        next_seq: truncate_at,
        end_offset: cut_offset,
    };
    if file_bytes == cut_offset {
        return nothing_to_drop(path, &summary, &checkpoint_path, &new_checkpoint, confirmed);
    }
    let plan = plan_text(
        path,
        &summary,
        &checkpoint_path,
        &new_checkpoint,
        file_bytes,
    );
    if !confirmed {
        eprintln!("tally-journal: would {plan}");
        eprintln!(
            "tally-journal: refused: add --yes-i-accept-losing-messages to do it (stop the \
             sequencer and copy the file first). Nothing changed."
        );
        return Ok(DAMAGED);
    }
    file.set_len(cut_offset)
        .and_then(|()| file.sync_all())
        .map_err(|error| with_path(error, "truncating", path))?;
    store_checkpoint(&checkpoint_path, &new_checkpoint)
        .map_err(|error| with_path(error, "writing", &checkpoint_path))?;
    println!("repaired: {plan}");
    Ok(INTACT)
}

/// Opens the journal for writing and checks its file header: repair only
/// cuts records, never a file that is not a usable journal.
fn open_journal(path: &Path) -> io::Result<Result<(std::fs::File, u64), Stop>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|error| with_path(error, "opening", path))?;
    let file_bytes = file.metadata()?.len();
    if let Err(reason) = read_file_header(&file, file_bytes, path)? {
        eprintln!(
            "tally-journal: {}: not a usable journal ({reason}); repair only cuts records \
             and will not touch it",
            path.display()
        );
        return Ok(Err(DAMAGED));
    }
    Ok(Ok((file, file_bytes)))
}

/// The file offset to cut at so that the next sequence number is
/// `truncate_at`: the start of the data record that begins there, or the
/// end of the good part when it is the next one. The end-of-session record
/// is never the cut point: truncating at the next sequence number keeps an
/// ended session ended (it only drops damage). Refused inside a record or
/// beyond the good part.
fn find_cut(
    file: &std::fs::File,
    file_bytes: u64,
    path: &Path,
    truncate_at: u64,
    progress: bool,
) -> io::Result<Result<(u64, ScanSummary), Stop>> {
    let mut cut: Option<u64> = None;
    let mut inside: Option<(u64, u64)> = None; // (first_seq, end_seq) of the record
    let mut progress_line = Progress::new(progress, path, file_bytes);
    let summary = scan(
        file,
        file_bytes,
        |record| {
            let info = record.info;
            let is_end = info.count == COUNT_END_OF_SESSION;
            if !is_end && info.first_seq == truncate_at {
                cut = Some(info.offset);
            } else if !is_end && info.first_seq < truncate_at && truncate_at < info.end_seq() {
                inside = Some((info.first_seq, info.end_seq()));
            }
            ControlFlow::Continue(())
        },
        |offset| progress_line.at(offset),
    )
    .map_err(|error| with_path(error, "reading", path))?;
    if let Some((first_seq, end_seq)) = inside {
        eprintln!(
            "tally-journal: refused: sequence number {truncate_at} is inside a record that \
             holds {first_seq}..{}; a record is one published packet, written and checksummed \
             as a whole, so the journal can only be cut before it (--truncate-at {first_seq}) \
             or after it (--truncate-at {end_seq}). Nothing changed.",
            end_seq - 1
        );
        return Ok(Err(DAMAGED));
    }
    match cut {
        Some(cut) => Ok(Ok((cut, summary))),
        None if truncate_at == summary.next_seq => Ok(Ok((summary.end_offset, summary))),
        None => {
            eprintln!(
                "tally-journal: refused: sequence number {truncate_at} is beyond the good part \
                 of the journal, which ends at sequence {} (byte {}){}; the highest you can \
                 truncate at is {}. Nothing changed.",
                summary.next_seq - 1,
                summary.end_offset,
                match &summary.damage {
                    Some(damage) => format!(", before damage at byte {}", damage.offset),
                    None => String::new(),
                },
                summary.next_seq
            );
            Ok(Err(DAMAGED))
        }
    }
}

/// The journal already ends where asked: nothing to cut; the checkpoint is
/// rewritten to match when confirmed.
fn nothing_to_drop(
    path: &Path,
    summary: &ScanSummary,
    checkpoint_path: &Path,
    new_checkpoint: &Checkpoint,
    confirmed: bool,
) -> io::Result<u8> {
    println!(
        "{}: nothing to drop; it ends at sequence {} already",
        path.display(),
        summary.next_seq - 1
    );
    let matches = matches!(
        read_checkpoint(checkpoint_path)?,
        CheckpointState::Present(c) if c == *new_checkpoint
    );
    if !matches && confirmed {
        store_checkpoint(checkpoint_path, new_checkpoint)
            .map_err(|error| with_path(error, "writing", checkpoint_path))?;
        println!(
            "checkpoint {} rewritten to match",
            checkpoint_path.display()
        );
    }
    Ok(INTACT)
}

/// What the cut drops, in words: bytes, good messages, the end-of-session
/// record, the damage and what follows it, the checkpoint's new value.
fn plan_text(
    path: &Path,
    summary: &ScanSummary,
    checkpoint_path: &Path,
    new_checkpoint: &Checkpoint,
    file_bytes: u64,
) -> String {
    let (truncate_at, cut_offset) = (new_checkpoint.next_seq, new_checkpoint.end_offset);
    let dropped_bytes = file_bytes - cut_offset;
    let dropped_messages = summary.next_seq - truncate_at;
    let mut plan = format!(
        "{}: cut at byte {cut_offset} so that the next sequence number is {truncate_at}: \
         drops {dropped_bytes} bytes",
        path.display()
    );
    if dropped_messages > 0 {
        plan.push_str(&format!(
            "; {dropped_messages} good messages {truncate_at}..{}",
            summary.next_seq - 1
        ));
    }
    if summary.ended && cut_offset < summary.end_offset {
        plan.push_str("; the end-of-session record (the session can be continued)");
    }
    if let Some(damage) = &summary.damage {
        plan.push_str(&format!(
            "; the damage from byte {} ({})",
            damage.offset, damage.reason
        ));
        if let Some(after) = &damage.after {
            plan.push_str(&format!(
                " and the {} intact records after it ({} messages, sequence {}..{})",
                after.records,
                after.messages,
                after.first_seq,
                after.end_seq.saturating_sub(1)
            ));
        }
    }
    plan.push_str(&format!(
        "; checkpoint {} rewritten to next_seq {}, end_offset {}",
        checkpoint_path.display(),
        new_checkpoint.next_seq,
        new_checkpoint.end_offset
    ));
    plan
}
