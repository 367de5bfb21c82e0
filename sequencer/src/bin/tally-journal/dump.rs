//! `dump`: every record and message, one line each.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::Path;

use tally_sequencer::journal::{scan, ScanSummary, COUNT_END_OF_SESSION, RECORD_HEADER_BYTES};
use tally_wire::Message;

use super::{read_file_header, with_path, Json, Progress, DAMAGED, INTACT, USAGE_OR_IO};

pub(super) struct DumpOptions {
    pub(super) from: u64,
    pub(super) to: u64,
    pub(super) json: bool,
    pub(super) records: bool,
}

pub(super) fn dump(path: &Path, options: &DumpOptions, progress: bool) -> io::Result<u8> {
    if options.from > options.to {
        eprintln!(
            "tally-journal: --from {} is after --to {}",
            options.from, options.to
        );
        return Ok(USAGE_OR_IO);
    }
    let file = std::fs::File::open(path).map_err(|error| with_path(error, "opening", path))?;
    let file_bytes = file.metadata()?.len();
    if let Err(reason) = read_file_header(&file, file_bytes, path)? {
        eprintln!(
            "tally-journal: {}: not a usable journal: {reason}",
            path.display()
        );
        return Ok(DAMAGED);
    }
    let stdout = io::stdout();
    let mut lines = Lines {
        out: io::BufWriter::new(stdout.lock()),
        line: String::with_capacity(512),
        write_error: None,
        options,
    };
    let mut progress = Progress::new(progress, path, file_bytes);
    let summary = scan(
        &file,
        file_bytes,
        |record| lines.record(record),
        |offset| progress.at(offset),
    )
    .map_err(|error| with_path(error, "reading", path))?;
    if let Some(error) = lines.write_error.take() {
        if error.kind() == io::ErrorKind::BrokenPipe {
            return Ok(INTACT);
        }
        return Err(error);
    }
    if let Err(error) = lines.out.flush() {
        if error.kind() != io::ErrorKind::BrokenPipe {
            return Err(error);
        }
    }
    Ok(report_damage(path, &summary, options))
}

/// Writes the lines of the records and messages within `--from..=--to`.
struct Lines<'a, W: Write> {
    out: W,
    line: String,
    /// The first write error (a closed pipe ends the dump quietly).
    write_error: Option<io::Error>,
    options: &'a DumpOptions,
}

impl<W: Write> Lines<'_, W> {
    /// One record: its own line (`--records`, or the end of session), or a
    /// line per message in range.
    fn record(&mut self, record: &tally_sequencer::journal::ScannedRecord<'_>) -> ControlFlow<()> {
        let info = record.info;
        if info.first_seq > self.options.to {
            return ControlFlow::Break(());
        }
        let is_end = info.count == COUNT_END_OF_SESSION;
        if !is_end && info.end_seq() <= self.options.from {
            return ControlFlow::Continue(());
        }
        if self.options.records || is_end {
            self.line.clear();
            record_line(&mut self.line, record, self.options.json);
            return self.write_line();
        }
        let mut seq = info.first_seq;
        let mut at = 0usize;
        let payload = record.payload;
        while at < payload.len() {
            let len = usize::from(u16::from_be_bytes([payload[at], payload[at + 1]]));
            let message = &payload[at + 2..at + 2 + len];
            at += 2 + len;
            if seq >= self.options.from && seq <= self.options.to {
                self.line.clear();
                message_line(&mut self.line, seq, info.offset, message, self.options.json);
                self.write_line()?;
            }
            seq += 1;
        }
        ControlFlow::Continue(())
    }

    fn write_line(&mut self) -> ControlFlow<()> {
        match writeln!(self.out, "{}", self.line) {
            Ok(()) => ControlFlow::Continue(()),
            Err(error) => {
                self.write_error = Some(error);
                ControlFlow::Break(())
            }
        }
    }
}

/// Says where the dump stopped at damage before `--to`; the exit status.
fn report_damage(path: &Path, summary: &ScanSummary, options: &DumpOptions) -> u8 {
    let Some(damage) = &summary.damage else {
        return INTACT;
    };
    if summary.next_seq > options.to {
        return INTACT;
    }
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
    DAMAGED
}

pub(super) fn record_line(
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

pub(super) fn message_line(
    line: &mut String,
    seq: u64,
    record_offset: u64,
    message: &[u8],
    json: bool,
) {
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
