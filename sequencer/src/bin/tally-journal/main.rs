//! `tally-journal`: the operator's tool for the sequencer's journal: verify,
//! dump, repair. See `--help`.
//!
//! It reads with the same scan as the sequencer's recovery
//! (`tally_sequencer::journal::scan`), so what `verify` reports is what a
//! start would find. Files are read in windows of a few MiB, never whole.

use std::io::{self, IsTerminal};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tally_sequencer::journal::{check_file_header, Checkpoint, FILE_HEADER_BYTES};

mod dump;
mod json;
mod repair;
mod report;

use dump::*;
use json::*;
use repair::*;
use report::*;

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

/// Reads and checks the journal's file header: `Err(reason)` when the file
/// is not a usable journal.
fn read_file_header(
    file: &std::fs::File,
    file_bytes: u64,
    path: &Path,
) -> io::Result<Result<(), String>> {
    let mut header = vec![0u8; (file_bytes as usize).min(FILE_HEADER_BYTES)];
    file.read_exact_at(&mut header, 0)
        .map_err(|error| with_path(error, "reading", path))?;
    Ok(check_file_header(&header)
        .map(|_| ())
        .map_err(|reason| reason.to_string()))
}
