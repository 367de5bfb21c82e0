//! `verify`: what a journal holds and where it is damaged, in text or JSON.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tally_sequencer::journal::{
    check_file_header, scan, Damage, FileHeader, ScanSummary, FILE_HEADER_BYTES,
};

use super::{
    checkpoint_beside, read_checkpoint, CheckpointState, Json, Progress, DAMAGED, INTACT,
    USAGE_OR_IO,
};

/// Everything `verify` finds about one journal.
pub(super) struct Report {
    pub(super) path: PathBuf,
    pub(super) checkpoint_path: PathBuf,
    pub(super) checkpoint: CheckpointState,
    pub(super) file_bytes: u64,
    /// `Err(reason)`: the file header is not usable (or the file is missing).
    pub(super) header: Result<FileHeader, String>,
    pub(super) summary: Option<ScanSummary>,
}

impl Report {
    /// The end of the good part: (next_seq, end_offset).
    pub(super) fn kept(&self) -> (u64, u64) {
        match &self.summary {
            Some(summary) => (summary.next_seq, summary.end_offset),
            None => (1, self.file_bytes.min(FILE_HEADER_BYTES as u64)),
        }
    }

    pub(super) fn checkpoint_agrees(&self) -> Option<bool> {
        match &self.checkpoint {
            CheckpointState::Present(checkpoint) => {
                let (next_seq, end_offset) = self.kept();
                Some(checkpoint.is_covered_by(next_seq, end_offset))
            }
            _ => None,
        }
    }

    /// "intact", "torn-tail" or "damaged", and why when damaged.
    pub(super) fn verdict(&self) -> (&'static str, Option<String>) {
        if let Err(reason) = &self.header {
            if self.file_bytes == 0 && !self.checkpoint_has_messages() {
                return ("intact", None); // created, header not yet written
            }
            return ("damaged", Some(format!("file header: {reason}")));
        }
        if let Ok(header) = &self.header {
            let stem = self.path.file_stem().and_then(|stem| stem.to_str());
            if stem.is_some_and(|stem| stem != header.session) {
                return (
                    "damaged",
                    Some(format!(
                        "the file header names session {:?}, the file name another; the \
                         sequencer opens <session>.journal and refuses a header of another session",
                        header.session
                    )),
                );
            }
        }
        if let CheckpointState::Damaged(reason) = &self.checkpoint {
            return ("damaged", Some(format!("checkpoint damaged: {reason}")));
        }
        if self.checkpoint_agrees() == Some(false) {
            let (next_seq, end_offset) = self.kept();
            let CheckpointState::Present(checkpoint) = &self.checkpoint else {
                unreachable!()
            };
            return (
                "damaged",
                Some(format!(
                    "the journal keeps messages up to sequence number {} ({end_offset} bytes), \
                     its checkpoint says messages up to {} ({} bytes) were written",
                    next_seq - 1,
                    checkpoint.next_seq - 1,
                    checkpoint.end_offset
                )),
            );
        }
        match self.summary.as_ref().and_then(|s| s.damage.as_ref()) {
            None => ("intact", None),
            Some(damage) if damage.is_torn_tail() => ("torn-tail", None),
            Some(damage) => (
                "damaged",
                Some(format!(
                    "corrupt record at byte {} with intact records after it",
                    damage.offset
                )),
            ),
        }
    }

    pub(super) fn checkpoint_has_messages(&self) -> bool {
        matches!(&self.checkpoint, CheckpointState::Present(c) if c.has_messages())
    }
}

pub(super) fn inspect(path: &Path, progress: bool) -> io::Result<Report> {
    let checkpoint_path = checkpoint_beside(path);
    let checkpoint = read_checkpoint(&checkpoint_path)
        .map_err(|error| with_path(error, "reading", &checkpoint_path))?;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok(Report {
                path: path.to_path_buf(),
                checkpoint_path,
                checkpoint,
                file_bytes: 0,
                header: Err("the journal file is missing".to_string()),
                summary: None,
            });
        }
        Err(error) => return Err(with_path(error, "opening", path)),
    };
    let file_bytes = file
        .metadata()
        .map_err(|error| with_path(error, "reading the size of", path))?
        .len();
    let mut header = vec![0u8; (file_bytes as usize).min(FILE_HEADER_BYTES)];
    file.read_exact_at(&mut header, 0)
        .map_err(|error| with_path(error, "reading", path))?;
    let header = check_file_header(&header);
    let summary = match header {
        Ok(_) => {
            let mut progress = Progress::new(progress, path, file_bytes);
            Some(
                scan(
                    &file,
                    file_bytes,
                    |_| ControlFlow::Continue(()),
                    |offset| progress.at(offset),
                )
                .map_err(|error| with_path(error, "reading", path))?,
            )
        }
        Err(_) => None,
    };
    Ok(Report {
        path: path.to_path_buf(),
        checkpoint_path,
        checkpoint,
        file_bytes,
        header,
        summary,
    })
}

pub(super) fn with_path(error: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{doing} {}: {error}", path.display()))
}

pub(super) fn verify(path: &Path, json: bool, progress: bool) -> io::Result<u8> {
    let metadata = std::fs::metadata(path).map_err(|error| with_path(error, "reading", path))?;
    let journals = if metadata.is_dir() {
        let mut journals = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|error| with_path(error, "listing", path))? {
            let entry_path = entry?.path();
            match entry_path.extension().and_then(|e| e.to_str()) {
                Some("journal") => journals.push(entry_path),
                // A checkpoint whose journal is gone is reported too.
                Some("checkpoint") if !entry_path.with_extension("journal").exists() => {
                    journals.push(entry_path.with_extension("journal"))
                }
                _ => {}
            }
        }
        journals.sort();
        if journals.is_empty() {
            eprintln!(
                "tally-journal: no *.journal or *.checkpoint in {}",
                path.display()
            );
            return Ok(USAGE_OR_IO);
        }
        journals
    } else {
        vec![path.to_path_buf()]
    };
    let mut status = INTACT;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for journal in journals {
        let report = inspect(&journal, progress)?;
        if report.verdict().0 == "damaged" {
            status = DAMAGED;
        }
        let written = if json {
            writeln!(out, "{}", report_json(&report))
        } else {
            write_report_text(&mut out, &report)
        };
        if written.is_err() {
            break; // stdout closed (a pager quit); the status still counts
        }
    }
    Ok(status)
}

pub(super) fn write_report_text(out: &mut impl Write, report: &Report) -> io::Result<()> {
    let (verdict, why) = report.verdict();
    writeln!(out, "{}: {}", report.path.display(), verdict.to_uppercase())?;
    match &report.header {
        Ok(header) => writeln!(
            out,
            "  session {}, created {} ns after the Unix epoch",
            header.session, header.created_ns
        )?,
        Err(reason) => writeln!(out, "  file header: {reason}")?,
    }
    if let Some(summary) = &report.summary {
        let range = if summary.messages > 0 {
            format!("sequence 1..{}", summary.next_seq - 1)
        } else {
            "no messages".to_string()
        };
        writeln!(
            out,
            "  {} bytes; {} good records, {} messages, {range}{}; good part ends at byte {}",
            summary.file_bytes,
            summary.records,
            summary.messages,
            if summary.ended { ", session ended" } else { "" },
            summary.end_offset
        )?;
        match &summary.damage {
            None => writeln!(out, "  no damage")?,
            Some(damage) => write_damage_text(out, summary, damage)?,
        }
    }
    match &report.checkpoint {
        CheckpointState::Absent => writeln!(
            out,
            "  checkpoint {}: absent (the sequencer writes one on start)",
            report.checkpoint_path.display()
        )?,
        CheckpointState::Damaged(reason) => writeln!(
            out,
            "  checkpoint {}: DAMAGED ({reason})",
            report.checkpoint_path.display()
        )?,
        CheckpointState::Present(checkpoint) => writeln!(
            out,
            "  checkpoint {}: next_seq {}, end_offset {}: {}",
            report.checkpoint_path.display(),
            checkpoint.next_seq,
            checkpoint.end_offset,
            if report.checkpoint_agrees() == Some(true) {
                "agrees (the journal holds at least that)"
            } else {
                "DISAGREES (the journal holds less: acknowledged messages are missing)"
            }
        )?,
    }
    match (verdict, why) {
        ("damaged", Some(why)) => writeln!(
            out,
            "  the sequencer refuses this journal (exit status 65): {why}; \
             see README \"When the journal is damaged\""
        )?,
        ("torn-tail", _) => writeln!(
            out,
            "  the sequencer cuts the torn tail on start; nothing its checkpoint covers is lost"
        )?,
        _ => {}
    }
    Ok(())
}

pub(super) fn write_damage_text(
    out: &mut impl Write,
    summary: &ScanSummary,
    damage: &Damage,
) -> io::Result<()> {
    writeln!(
        out,
        "  first damage at byte {}: {}; last good sequence number {}",
        damage.offset,
        damage.reason,
        summary.next_seq - 1
    )?;
    match &damage.after {
        None => writeln!(
            out,
            "  torn tail: {} bytes with no intact record after them{}",
            summary.file_bytes - damage.offset,
            if damage.zero_fill { " (zero fill)" } else { "" }
        ),
        Some(after) => writeln!(
            out,
            "  CORRUPT: intact records follow the damage: the first at byte {} (sequence {}); \
             {} intact records after the damage, {} messages, up to sequence {}",
            after.offset,
            after.first_seq,
            after.records,
            after.messages,
            after.end_seq.saturating_sub(1)
        ),
    }
}

pub(super) fn report_json(report: &Report) -> String {
    let (verdict, why) = report.verdict();
    let mut json = Json::object();
    json.string("path", &report.path.display().to_string());
    json.string("verdict", verdict);
    json.optional_string("reason", why.as_deref());
    json.number("file_bytes", report.file_bytes);
    match &report.header {
        Ok(header) => {
            json.string("session", &header.session);
            json.number("created_ns", header.created_ns);
        }
        Err(reason) => json.string("header_error", reason),
    }
    if let Some(summary) = &report.summary {
        json.number("records", summary.records);
        json.number("messages", summary.messages);
        if summary.messages > 0 {
            json.number("first_seq", 1);
            json.number("last_seq", summary.next_seq - 1);
        }
        json.number("next_seq", summary.next_seq);
        json.number("end_offset", summary.end_offset);
        json.boolean("ended", summary.ended);
        match &summary.damage {
            None => json.raw("damage", "null"),
            Some(damage) => {
                let mut inner = Json::object();
                inner.number("offset", damage.offset);
                inner.string("reason", &damage.reason);
                inner.boolean("torn_tail", damage.is_torn_tail());
                inner.boolean("zero_fill", damage.zero_fill);
                inner.number("last_good_seq", summary.next_seq - 1);
                match &damage.after {
                    None => inner.raw("intact_after", "null"),
                    Some(after) => {
                        let mut found = Json::object();
                        found.number("offset", after.offset);
                        found.number("first_seq", after.first_seq);
                        found.number("records", after.records);
                        found.number("messages", after.messages);
                        found.number("end_seq", after.end_seq);
                        inner.raw("intact_after", &found.finish());
                    }
                }
                json.raw("damage", &inner.finish());
            }
        }
    }
    let mut checkpoint = Json::object();
    checkpoint.string("path", &report.checkpoint_path.display().to_string());
    match &report.checkpoint {
        CheckpointState::Absent => checkpoint.string("state", "absent"),
        CheckpointState::Damaged(reason) => {
            checkpoint.string("state", "damaged");
            checkpoint.string("reason", reason);
        }
        CheckpointState::Present(present) => {
            checkpoint.string("state", "present");
            checkpoint.number("next_seq", present.next_seq);
            checkpoint.number("end_offset", present.end_offset);
            checkpoint.boolean("agrees", report.checkpoint_agrees() == Some(true));
        }
    }
    json.raw("checkpoint", &checkpoint.finish());
    json.finish()
}
