//! `tally-journal`: the operator's tool for the sequencer's journal: verify,
//! dump, repair. See `--help`.
//!
//! It reads with the same scan as the sequencer's recovery
//! (`tally_sequencer::journal::scan`), so what `verify` reports is what a
//! start would find. Files are read in windows of a few MiB, never whole.

use std::io::{self, IsTerminal, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tally_sequencer::journal::{
    check_file_header, scan, store_checkpoint, Checkpoint, Damage, FileHeader, ScanSummary,
    COUNT_END_OF_SESSION, FILE_HEADER_BYTES, RECORD_HEADER_BYTES,
};
use tally_wire::Message;

/// Inspect and repair tally journals.
///
/// A journal is one file per stream session, `<journal.dir>/<session>.journal`:
/// a 64-byte file header, then records, each a 24-byte header (payload length,
/// CRC32C, first sequence number, message count) and the MoldUDP64 blocks of
/// one published packet. Beside it, `<session>.checkpoint` says how far the
/// journal is known to reach (next_seq, end_offset); the sequencer refuses a
/// journal that holds less. The layout is in docs/protocol.md.
///
/// What the sequencer does on start, and what this tool reports: records are
/// checked in order (length, checksum, sequence number, blocks). At the first
/// record that fails, every byte offset from there to the end of the file is
/// searched for an intact record. If none is found the damage is a torn tail
/// (a crash interrupted the last write; zero fill counts as nothing) and the
/// sequencer cuts it. If one is found, the journal is corrupt in the middle
/// and the sequencer refuses to start (exit status 65) rather than hand the
/// numbers of acknowledged messages out again.
///
/// Stop the sequencer before `repair`. Keep a copy of the file first.
#[derive(Parser, Debug)]
#[command(
    name = "tally-journal",
    version,
    about,
    long_about,
    after_long_help = "Examples:
  tally-journal verify /var/lib/tally/sequencer/journal
  tally-journal verify --json D20261122.journal
  tally-journal dump D20261122.journal --from 1000 --to 1010
  tally-journal repair D20261122.journal --truncate-at 1234      (prints the plan, refuses)
  tally-journal repair D20261122.journal --truncate-at 1234 --yes-i-accept-losing-messages

See README.md, \"When the journal is damaged\"."
)]
struct Cli {
    /// Print progress on stderr about once a second while reading (the
    /// default when stderr is a terminal).
    #[arg(long, global = true)]
    progress: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Scan journals and report: session, records, messages, sequence range,
    /// bytes, the first damaged offset (torn tail or corruption) and whether
    /// the checkpoint agrees.
    ///
    /// Exit status: 0 every journal is intact, or ends in a torn tail that
    /// the sequencer cuts on start without losing anything its checkpoint
    /// covers; 1 a journal is damaged (the sequencer would refuse it with
    /// exit status 65: corruption with intact records after it, a journal
    /// shorter than its checkpoint, a damaged checkpoint, a bad header, a
    /// checkpoint whose journal is missing); 2 usage or I/O error.
    Verify {
        /// A journal file, or a directory: every `*.journal` in it, and
        /// every `*.checkpoint` whose journal is missing.
        path: PathBuf,
        /// One JSON object per journal, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Print the messages (or records) of a journal, one per line, in order,
    /// up to the first damage.
    ///
    /// A message line: seq, the record's byte offset, type letter, message
    /// kind, origin, client_seq, timestamp_ns, length and the bytes in hex.
    /// Exit status: 0 done, 1 the journal is damaged within the range asked
    /// for (everything before the damage was printed), 2 usage or I/O error.
    Dump {
        /// The journal file.
        file: PathBuf,
        /// First sequence number to print.
        #[arg(long, value_name = "SEQ")]
        from: Option<u64>,
        /// Last sequence number to print (inclusive).
        #[arg(long, value_name = "SEQ")]
        to: Option<u64>,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
        /// One line per record (offset, first seq, count, bytes) instead of
        /// one per message.
        #[arg(long)]
        records: bool,
    },
    /// Truncate a journal so that SEQ is the next sequence number, and
    /// rewrite its checkpoint to match. Everything from SEQ on is dropped
    /// (and any damage after it): those numbers are handed out again to new
    /// messages, so receivers that hold them must start over.
    ///
    /// A journal can only be cut between records: a record is one published
    /// MoldUDP64 packet, written and checksummed as a whole, so SEQ must be
    /// the first message of a record (or the next sequence number after the
    /// last good record, which drops only the damage). A SEQ inside a record
    /// is refused with the two record boundaries around it. SEQ cannot lie
    /// beyond the first damage: records after damage cannot be kept, the
    /// numbering would have a gap.
    ///
    /// Refuses without --yes-i-accept-losing-messages (and prints what it
    /// would drop). Exit status: 0 repaired or nothing to drop, 1 refused
    /// (nothing changed), 2 usage or I/O error. Stop the sequencer first.
    Repair {
        /// The journal file.
        file: PathBuf,
        /// The sequence number the journal should continue at.
        #[arg(long, value_name = "SEQ")]
        truncate_at: u64,
        /// Confirms that the messages from SEQ on may be lost.
        #[arg(long)]
        yes_i_accept_losing_messages: bool,
    },
}

/// Exit statuses.
const INTACT: u8 = 0;
const DAMAGED: u8 = 1;
const USAGE_OR_IO: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let progress = cli.progress || io::stderr().is_terminal();
    let result = match cli.command {
        Command::Verify { path, json } => verify(&path, json, progress),
        Command::Dump {
            file,
            from,
            to,
            json,
            records,
        } => dump(
            &file,
            &DumpOptions {
                from: from.unwrap_or(1),
                to: to.unwrap_or(u64::MAX),
                json,
                records,
            },
            progress,
        ),
        Command::Repair {
            file,
            truncate_at,
            yes_i_accept_losing_messages,
        } => repair(&file, truncate_at, yes_i_accept_losing_messages, progress),
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(error) => {
            eprintln!("tally-journal: error: {error}");
            ExitCode::from(USAGE_OR_IO)
        }
    }
}

/// A progress line on stderr at most once a second, when enabled.
struct Progress {
    enabled: bool,
    label: String,
    total_bytes: u64,
    next_print: Instant,
}

impl Progress {
    fn new(enabled: bool, label: &Path, total_bytes: u64) -> Progress {
        Progress {
            enabled,
            label: label.display().to_string(),
            total_bytes,
            next_print: Instant::now() + Duration::from_secs(1),
        }
    }

    fn at(&mut self, offset: u64) {
        if !self.enabled || Instant::now() < self.next_print {
            return;
        }
        self.next_print = Instant::now() + Duration::from_secs(1);
        let percent = offset as f64 * 100.0 / self.total_bytes.max(1) as f64;
        eprintln!(
            "tally-journal: {}: {} of {} MiB read ({percent:.0}%)",
            self.label,
            offset >> 20,
            self.total_bytes >> 20
        );
    }
}

/// The path of the checkpoint beside a journal file.
fn checkpoint_beside(journal: &Path) -> PathBuf {
    journal.with_extension("checkpoint")
}

/// What the checkpoint beside a journal says.
#[derive(Debug)]
enum CheckpointState {
    Absent,
    Damaged(String),
    Present(Checkpoint),
}

fn read_checkpoint(path: &Path) -> io::Result<CheckpointState> {
    Ok(match Checkpoint::read(path)? {
        None => CheckpointState::Absent,
        Some(Err(reason)) => CheckpointState::Damaged(reason),
        Some(Ok(checkpoint)) => CheckpointState::Present(checkpoint),
    })
}

/// Everything `verify` finds about one journal.
struct Report {
    path: PathBuf,
    checkpoint_path: PathBuf,
    checkpoint: CheckpointState,
    file_bytes: u64,
    /// `Err(reason)`: the file header is not usable (or the file is missing).
    header: Result<FileHeader, String>,
    summary: Option<ScanSummary>,
}

impl Report {
    /// The end of the good part: (next_seq, end_offset).
    fn kept(&self) -> (u64, u64) {
        match &self.summary {
            Some(summary) => (summary.next_seq, summary.end_offset),
            None => (1, self.file_bytes.min(FILE_HEADER_BYTES as u64)),
        }
    }

    fn checkpoint_agrees(&self) -> Option<bool> {
        match &self.checkpoint {
            CheckpointState::Present(checkpoint) => {
                let (next_seq, end_offset) = self.kept();
                Some(checkpoint.is_covered_by(next_seq, end_offset))
            }
            _ => None,
        }
    }

    /// "intact", "torn-tail" or "damaged", and why when damaged.
    fn verdict(&self) -> (&'static str, Option<String>) {
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

    fn checkpoint_has_messages(&self) -> bool {
        matches!(&self.checkpoint, CheckpointState::Present(c) if c.has_messages())
    }
}

fn inspect(path: &Path, progress: bool) -> io::Result<Report> {
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

fn with_path(error: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{doing} {}: {error}", path.display()))
}

fn verify(path: &Path, json: bool, progress: bool) -> io::Result<u8> {
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

fn write_report_text(out: &mut impl Write, report: &Report) -> io::Result<()> {
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

fn write_damage_text(
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

fn report_json(report: &Report) -> String {
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

struct DumpOptions {
    from: u64,
    to: u64,
    json: bool,
    records: bool,
}

fn dump(path: &Path, options: &DumpOptions, progress: bool) -> io::Result<u8> {
    if options.from > options.to {
        eprintln!(
            "tally-journal: --from {} is after --to {}",
            options.from, options.to
        );
        return Ok(USAGE_OR_IO);
    }
    let file = std::fs::File::open(path).map_err(|error| with_path(error, "opening", path))?;
    let file_bytes = file.metadata()?.len();
    let mut header = vec![0u8; (file_bytes as usize).min(FILE_HEADER_BYTES)];
    file.read_exact_at(&mut header, 0)
        .map_err(|error| with_path(error, "reading", path))?;
    if let Err(reason) = check_file_header(&header) {
        eprintln!(
            "tally-journal: {}: not a usable journal: {reason}",
            path.display()
        );
        return Ok(DAMAGED);
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut write_error: Option<io::Error> = None;
    let mut line = String::with_capacity(512);
    let mut progress = Progress::new(progress, path, file_bytes);
    let summary = scan(
        &file,
        file_bytes,
        |record| {
            let info = record.info;
            if info.first_seq > options.to {
                return ControlFlow::Break(());
            }
            let is_end = info.count == COUNT_END_OF_SESSION;
            if !is_end && info.end_seq() <= options.from {
                return ControlFlow::Continue(());
            }
            line.clear();
            if options.records || is_end {
                record_line(&mut line, record, options.json);
                if let Err(error) = writeln!(out, "{line}") {
                    write_error = Some(error);
                    return ControlFlow::Break(());
                }
                return ControlFlow::Continue(());
            }
            let mut seq = info.first_seq;
            let mut at = 0usize;
            let payload = record.payload;
            while at < payload.len() {
                let len = usize::from(u16::from_be_bytes([payload[at], payload[at + 1]]));
                let message = &payload[at + 2..at + 2 + len];
                at += 2 + len;
                if seq >= options.from && seq <= options.to {
                    line.clear();
                    message_line(&mut line, seq, info.offset, message, options.json);
                    if let Err(error) = writeln!(out, "{line}") {
                        write_error = Some(error);
                        return ControlFlow::Break(());
                    }
                }
                seq += 1;
            }
            ControlFlow::Continue(())
        },
        |offset| progress.at(offset),
    )
    .map_err(|error| with_path(error, "reading", path))?;
    if let Some(error) = write_error {
        if error.kind() == io::ErrorKind::BrokenPipe {
            return Ok(INTACT);
        }
        return Err(error);
    }
    if let Err(error) = out.flush() {
        if error.kind() != io::ErrorKind::BrokenPipe {
            return Err(error);
        }
    }
    if let Some(damage) = &summary.damage {
        if summary.next_seq <= options.to {
            eprintln!(
                "tally-journal: {}: stopped at damage at byte {} ({}); last good sequence \
                 number {}; {}",
                path.display(),
                damage.offset,
                damage.reason,
                summary.next_seq - 1,
                match &damage.after {
                    None => "a torn tail (nothing intact after it)".to_string(),
                    Some(after) => format!(
                        "intact records follow (first at byte {}, sequence {}): run verify",
                        after.offset, after.first_seq
                    ),
                }
            );
            return Ok(DAMAGED);
        }
    }
    Ok(INTACT)
}

fn record_line(
    line: &mut String,
    record: &tally_sequencer::journal::ScannedRecord<'_>,
    json: bool,
) {
    use std::fmt::Write as _;
    let info = record.info;
    let is_end = info.count == COUNT_END_OF_SESSION;
    if json {
        let mut object = Json::object();
        object.string("record", if is_end { "end-of-session" } else { "data" });
        object.number("offset", info.offset);
        object.number("first_seq", info.first_seq);
        object.number("count", if is_end { 0 } else { u64::from(info.count) });
        object.number("payload_bytes", u64::from(info.payload_bytes));
        object.number("end_offset", info.end_offset());
        line.push_str(&object.finish());
    } else if is_end {
        let _ = write!(
            line,
            "record offset={} end-of-session next_seq={}",
            info.offset, info.first_seq
        );
    } else {
        let _ = write!(
            line,
            "record offset={} first_seq={} count={} payload_bytes={} bytes={}",
            info.offset,
            info.first_seq,
            info.count,
            info.payload_bytes,
            RECORD_HEADER_BYTES as u64 + u64::from(info.payload_bytes)
        );
    }
}

fn message_line(line: &mut String, seq: u64, record_offset: u64, message: &[u8], json: bool) {
    use std::fmt::Write as _;
    let parsed = Message::parse(message).ok();
    let kind = parsed.map(|message| {
        let debug = format!("{message:?}");
        debug.split('(').next().unwrap_or("").to_string()
    });
    let type_letter = message
        .first()
        .map(|&byte| char::from(byte).to_string())
        .unwrap_or_default();
    let header = (message.len() >= 15).then(|| {
        (
            u16::from_be_bytes([message[1], message[2]]),
            u32::from_be_bytes(message[3..7].try_into().unwrap()),
            u64::from_be_bytes(message[7..15].try_into().unwrap()),
        )
    });
    let mut hex = String::with_capacity(message.len() * 2);
    for byte in message {
        let _ = write!(hex, "{byte:02x}");
    }
    if json {
        let mut object = Json::object();
        object.number("seq", seq);
        object.number("record_offset", record_offset);
        object.string("type", &type_letter);
        object.optional_string("kind", kind.as_deref());
        if let Some((origin, client_seq, timestamp_ns)) = header {
            object.number("origin", u64::from(origin));
            object.number("client_seq", u64::from(client_seq));
            object.number("timestamp_ns", timestamp_ns);
        }
        object.number("bytes", message.len() as u64);
        object.string("hex", &hex);
        line.push_str(&object.finish());
    } else {
        let _ = write!(
            line,
            "seq={seq} record_offset={record_offset} type={type_letter} kind={}",
            kind.as_deref().unwrap_or("?")
        );
        if let Some((origin, client_seq, timestamp_ns)) = header {
            let _ = write!(
                line,
                " origin={origin} client_seq={client_seq} timestamp_ns={timestamp_ns}"
            );
        }
        let _ = write!(line, " bytes={} hex={hex}", message.len());
    }
}

fn repair(path: &Path, truncate_at: u64, confirmed: bool, progress: bool) -> io::Result<u8> {
    if truncate_at == 0 {
        eprintln!("tally-journal: --truncate-at 0: sequence numbers start at 1");
        return Ok(USAGE_OR_IO);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|error| with_path(error, "opening", path))?;
    let file_bytes = file.metadata()?.len();
    let mut header = vec![0u8; (file_bytes as usize).min(FILE_HEADER_BYTES)];
    file.read_exact_at(&mut header, 0)
        .map_err(|error| with_path(error, "reading", path))?;
    if let Err(reason) = check_file_header(&header) {
        eprintln!(
            "tally-journal: {}: not a usable journal ({reason}); repair only cuts records \
             and will not touch it",
            path.display()
        );
        return Ok(DAMAGED);
    }
    // The record boundary holding truncate_at, if it is one.
    // The offset of the data record that starts at truncate_at. The
    // end-of-session record is never the cut point: truncating at the next
    // sequence number keeps an ended session ended (it only drops damage).
    let mut cut: Option<u64> = None;
    let mut inside: Option<(u64, u64)> = None; // (first_seq, end_seq) of the record
    let mut progress_line = Progress::new(progress, path, file_bytes);
    let summary = scan(
        &file,
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
        return Ok(DAMAGED);
    }
    let cut = match cut {
        Some(cut) => cut,
        None if truncate_at == summary.next_seq => summary.end_offset,
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
            return Ok(DAMAGED);
        }
    };
    let cut_offset = cut;
    let dropped_bytes = file_bytes - cut_offset;
    let dropped_messages = summary.next_seq - truncate_at;
    let checkpoint_path = checkpoint_beside(path);
    let new_checkpoint = Checkpoint {
        next_seq: truncate_at,
        end_offset: cut_offset,
    };

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
    if dropped_bytes == 0 {
        println!(
            "{}: nothing to drop; it ends at sequence {} already",
            path.display(),
            summary.next_seq - 1
        );
        if !matches!(read_checkpoint(&checkpoint_path)?, CheckpointState::Present(c) if c == new_checkpoint)
            && confirmed
        {
            store_checkpoint(&checkpoint_path, &new_checkpoint)
                .map_err(|error| with_path(error, "writing", &checkpoint_path))?;
            println!(
                "checkpoint {} rewritten to match",
                checkpoint_path.display()
            );
        }
        return Ok(INTACT);
    }
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

/// A JSON object written field by field (the tool needs nothing more).
struct Json {
    text: String,
}

impl Json {
    fn object() -> Json {
        Json {
            text: String::from("{"),
        }
    }

    fn key(&mut self, key: &str) {
        if self.text.len() > 1 {
            self.text.push(',');
        }
        push_json_string(&mut self.text, key);
        self.text.push(':');
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        push_json_string(&mut self.text, value);
    }

    fn optional_string(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(value) => self.string(key, value),
            None => self.raw(key, "null"),
        }
    }

    fn number(&mut self, key: &str, value: u64) {
        self.key(key);
        self.text.push_str(&value.to_string());
    }

    fn boolean(&mut self, key: &str, value: bool) {
        self.raw(key, if value { "true" } else { "false" });
    }

    fn raw(&mut self, key: &str, value: &str) {
        self.key(key);
        self.text.push_str(value);
    }

    fn finish(mut self) -> String {
        self.text.push('}');
        self.text
    }
}

fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for character in value.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            control if (control as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", control as u32));
            }
            other => out.push(other),
        }
    }
    out.push('"');
}
