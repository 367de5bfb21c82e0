//! `tally-stat`: live counters of every tally process on this host, read from
//! their memory-mapped counter files (`tally_runtime::counters`) without
//! touching any loop. See `--help`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::{json, Value};
use tally_client::metrics::is_gauge;
use tally_runtime::counters::CounterReader;

/// Where `tally-stat` looks when no path is given, in this order. Each is
/// searched recursively (at most `SEARCH_DEPTH_MAX` levels) for `*.counters`
/// files; places that do not exist are skipped.
const DEFAULT_PLACES: &[&str] = &[
    "/var/lib/tally",
    "/run/tally",
    "/dev/shm/tally",
    "./target/tally-demo",
];
const SEARCH_DEPTH_MAX: usize = 6;
/// Most counter files shown (a bound on a directory full of them).
const FILES_MAX: usize = 256;

/// Live counters of every tally process on this host.
///
/// Finds tally counter files (the `*.counters` files every tally process
/// maps; see runtime/src/counters.rs), reads them read-only and shows one
/// row per process with per-second rates: messages, packets, retransmits,
/// gaps, rejects, ring-full events, sessions and lag. Reading a counter file
/// never touches the process that writes it.
///
/// Without PATHs it searches /var/lib/tally, /run/tally, /dev/shm/tally and
/// ./target/tally-demo (recursively). A PATH may be a counter file (any
/// name) or a directory (searched for *.counters).
///
/// A process is `running` while its pid exists and its heartbeat is fresh
/// or its counters move, `stale` when its pid exists but its heartbeat is
/// older than --stale and nothing moves (hung, or stopped without exiting),
/// and `stopped` when the pid is gone (or now belongs to a newer process):
/// the row then shows the values the process left behind.
#[derive(Parser, Debug)]
#[command(name = "tally-stat", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Counter files or directories to search (default: the well-known places above).
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,

    /// Print one report and exit (two samples --interval apart, for the rates).
    #[arg(long)]
    once: bool,

    /// JSON instead of a table: one document per report (one line each when
    /// refreshing).
    #[arg(long)]
    json: bool,

    /// Seconds between samples (rates are per second over this interval).
    /// 0 with --once: one sample, totals only, rates null.
    #[arg(long, short = 'i', default_value_t = 1.0, value_name = "SECONDS")]
    interval: f64,

    /// Heartbeat age in seconds after which a process whose counters do not
    /// move is shown as stale.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    stale: f64,

    /// Also list every counter of every process (value and rate).
    #[arg(long, short = 'a')]
    all: bool,
}

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("tally-stat: error: {error:#}");
            std::process::exit(2);
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<i32> {
    if !(cli.interval.is_finite() && cli.interval >= 0.0) {
        anyhow::bail!("--interval must be a number of seconds >= 0");
    }
    if cli.interval == 0.0 && !cli.once {
        anyhow::bail!("--interval 0 only makes sense with --once");
    }
    if !(cli.stale.is_finite() && cli.stale > 0.0) {
        anyhow::bail!("--stale must be a positive number of seconds");
    }
    let interval = Duration::from_secs_f64(cli.interval);
    let stale_ns = (cli.stale * 1e9) as u64;
    let mut watched = Watched::default();
    let mut stdout = std::io::stdout().lock();
    let refresh_screen = !cli.once && !cli.json && stdout.is_terminal();

    watched.rescan(&cli.paths);
    let mut previous = watched.sample();
    if cli.once {
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
        let current = if interval.is_zero() {
            None
        } else {
            Some(watched.sample())
        };
        let report = Report::build(
            &watched,
            &previous,
            current.as_ref(),
            stale_ns,
            host_boot_time_s(),
        );
        report.print(&mut stdout, cli.json, cli.all, false)?;
        if report.rows.is_empty() {
            eprintln!("tally-stat: {}", nothing_found(&cli.paths));
            return Ok(1);
        }
        return Ok(0);
    }
    loop {
        std::thread::sleep(interval);
        let current = watched.sample();
        let report = Report::build(
            &watched,
            &previous,
            Some(&current),
            stale_ns,
            host_boot_time_s(),
        );
        report.print(&mut stdout, cli.json, cli.all, refresh_screen)?;
        if report.rows.is_empty() && !cli.json {
            writeln!(stdout, "({})", nothing_found(&cli.paths))?;
        }
        stdout.flush()?;
        // New files (a process started), replaced files (restarted), gone
        // files: the next interval's rates start from the new sample.
        if watched.rescan(&cli.paths) {
            previous = watched.sample();
        } else {
            previous = current;
        }
    }
}

fn nothing_found(paths: &[PathBuf]) -> String {
    let places: Vec<String> = if paths.is_empty() {
        DEFAULT_PLACES.iter().map(|p| (*p).to_owned()).collect()
    } else {
        paths.iter().map(|p| p.display().to_string()).collect()
    };
    format!(
        "no tally counter file found in {} (give the file or directory as an argument)",
        places.join(", ")
    )
}

/// The counter files being watched, and the paths that failed to open.
#[derive(Default)]
struct Watched {
    files: Vec<Opened>,
    errors: Vec<(PathBuf, String)>,
}

struct Opened {
    path: PathBuf,
    /// (device, inode) of the file mapped: a restarted process replaces the
    /// file by rename, and then the path is reopened.
    identity: (u64, u64),
    reader: CounterReader,
}

/// One read of every watched file: values in index order, heartbeat, when.
struct Sample {
    at: Instant,
    files: Vec<(Vec<u64>, u64)>,
}

impl Watched {
    /// Finds counter files again; reopens replaced ones. Returns whether the
    /// set of mapped files changed.
    fn rescan(&mut self, paths: &[PathBuf]) -> bool {
        let found = find_counter_files(paths);
        let mut changed = found.len() != self.files.len();
        let mut files = Vec::with_capacity(found.len());
        self.errors.clear();
        for path in found {
            let identity = match std::fs::metadata(&path) {
                Ok(metadata) => (metadata.dev(), metadata.ino()),
                Err(error) => {
                    self.errors.push((path, error.to_string()));
                    continue;
                }
            };
            if let Some(index) = self
                .files
                .iter()
                .position(|open| open.path == path && open.identity == identity)
            {
                files.push(self.files.swap_remove(index));
                continue;
            }
            changed = true;
            match CounterReader::open(&path) {
                Ok(reader) => files.push(Opened {
                    path,
                    identity,
                    reader,
                }),
                Err(error) => self.errors.push((path, error.to_string())),
            }
        }
        changed |= !self.files.is_empty();
        self.files = files;
        changed
    }

    fn sample(&self) -> Sample {
        Sample {
            at: Instant::now(),
            files: self
                .files
                .iter()
                .map(|open| {
                    let values = (0..open.reader.len())
                        .map(|index| open.reader.value(index))
                        .collect();
                    (values, open.reader.heartbeat_ns())
                })
                .collect(),
        }
    }
}

/// Explicit files as given; directories (and, without paths, the default
/// places) searched for `*.counters`, skipping the hidden temporary files a
/// writer renames into place. Sorted, without duplicates, at most
/// [`FILES_MAX`].
fn find_counter_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if paths.is_empty() {
        for place in DEFAULT_PLACES {
            search(Path::new(place), 0, &mut found);
        }
    }
    for path in paths {
        if path.is_dir() {
            search(path, 0, &mut found);
        } else {
            found.push(path.clone());
        }
    }
    found.sort();
    found.dedup();
    found.truncate(FILES_MAX);
    found
}

fn search(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && depth < SEARCH_DEPTH_MAX {
            search(&entry.path(), depth + 1, found);
        } else if kind.is_file() && name.ends_with(".counters") && !name.starts_with('.') {
            found.push(entry.path());
        }
    }
}

/// What a summary column adds up. The first rule that names at least one
/// counter of a file decides the column for that file; every counter it
/// names is summed. `*x` matches names ending in `x`.
struct Column {
    key: &'static str,
    heading: &'static str,
    /// Gauges show their value; counters show a rate per second.
    gauge: bool,
    rules: &'static [&'static [&'static str]],
}

const COLUMNS: &[Column] = &[
    Column {
        key: "messages",
        heading: "MSG/s",
        gauge: false,
        rules: &[
            &["sequencer.messages_sequenced"],
            &["*messages_delivered"],
            &["*messages_sequenced", "*messages_applied"],
            &["*.messages"],
        ],
    },
    Column {
        key: "packets",
        heading: "PKT/s",
        gauge: false,
        rules: &[
            &["sequencer.packets_sent"],
            &["*.datagrams", "*packets_received"],
            &["*packets_sent"],
        ],
    },
    Column {
        key: "retransmits",
        heading: "RETX/s",
        gauge: false,
        rules: &[
            &["retransmit.requests_served"],
            &["*re_requests_sent"],
            &["*retransmits"],
        ],
    },
    Column {
        key: "gaps",
        heading: "GAP/s",
        gauge: false,
        rules: &[&["*gaps_detected", "*.gaps"]],
    },
    Column {
        key: "rejects",
        heading: "REJ/s",
        gauge: false,
        rules: &[
            &[
                "gateway_rejects",
                "logins_rejected",
                "replay.logins_rejected",
            ],
            &["*.rejects", "*_rejects", "*.rejected", "*acks_rejected"],
        ],
    },
    Column {
        key: "ring_full",
        heading: "RINGFULL/s",
        gauge: false,
        rules: &[&["*ring_full"]],
    },
    Column {
        key: "sessions",
        heading: "SESS",
        gauge: true,
        rules: &[&["*sessions_active", "*clients_active"]],
    },
    Column {
        key: "lag",
        heading: "LAG",
        gauge: true,
        rules: &[&["*lag_messages", "*.lag"]],
    },
];

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => name.ends_with(suffix),
        None => name == pattern,
    }
}

/// The counter indexes a column sums for a file with these names.
fn column_indexes(column: &Column, names: &[&str]) -> Vec<usize> {
    for rule in column.rules {
        let indexes: Vec<usize> = names
            .iter()
            .enumerate()
            .filter(|(_, name)| rule.iter().any(|pattern| matches(pattern, name)))
            .map(|(index, _)| index)
            .collect();
        if !indexes.is_empty() {
            return indexes;
        }
    }
    Vec::new()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Stale,
    Stopped,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stale => "stale",
            State::Stopped => "stopped",
        }
    }
}

struct Row {
    path: PathBuf,
    process: String,
    pid: u32,
    state: State,
    start_time_ns: u64,
    heartbeat_ns: u64,
    heartbeat_age_ns: u64,
    /// The last sequence number this process assigned or applied.
    seq: Option<u64>,
    /// Per column: value (gauges) or total, and rate per second.
    summary: Vec<(u64, Option<f64>, bool)>,
    counters: Vec<(String, u64, Option<f64>)>,
}

struct Report {
    time_ns: u64,
    interval_s: Option<f64>,
    rows: Vec<Row>,
    errors: Vec<(PathBuf, String)>,
}

/// Per column of [`COLUMNS`]: the value (gauges) or total, the rate per
/// second, and whether the process has the column at all.
fn summary_of(
    names: &[&str],
    values: &[u64],
    rate: &impl Fn(usize) -> Option<f64>,
) -> Vec<(u64, Option<f64>, bool)> {
    COLUMNS
        .iter()
        .map(|column| {
            let indexes = column_indexes(column, names);
            if indexes.is_empty() {
                return (0, None, false);
            }
            let total = indexes.iter().map(|&i| values[i]).sum();
            let per_sec = if column.gauge {
                None
            } else {
                indexes.iter().map(|&i| rate(i)).sum::<Option<f64>>()
            };
            (total, per_sec, true)
        })
        .collect()
}

/// The last sequence number the process assigned or applied: one below its
/// `sequencer.next_seq` (or another `…next_seq`).
fn seq_of(names: &[&str], values: &[u64]) -> Option<u64> {
    names
        .iter()
        .position(|name| *name == "sequencer.next_seq")
        .or_else(|| names.iter().position(|name| name.ends_with("next_seq")))
        .map(|i| values[i].saturating_sub(1))
}

/// Every counter: name, value and (not for gauges) rate per second.
fn counters_of(
    names: &[&str],
    values: &[u64],
    rate: &impl Fn(usize) -> Option<f64>,
) -> Vec<(String, u64, Option<f64>)> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let per_sec = if is_gauge(name) { None } else { rate(i) };
            ((*name).to_owned(), values[i], per_sec)
        })
        .collect()
}

impl Report {
    fn build(
        watched: &Watched,
        previous: &Sample,
        current: Option<&Sample>,
        stale_ns: u64,
        boot_time_s: Option<u64>,
    ) -> Report {
        let now_ns = wall_clock_ns();
        let latest = current.unwrap_or(previous);
        let seconds = current.map(|current| current.at.duration_since(previous.at).as_secs_f64());
        let mut rows = Vec::with_capacity(watched.files.len());
        for (index, open) in watched.files.iter().enumerate() {
            let reader = &open.reader;
            let names: Vec<&str> = (0..reader.len()).map(|i| reader.name(i)).collect();
            let (values, heartbeat_ns) = &latest.files[index];
            let before = current.map(|_| &previous.files[index].0);
            let rate = |i: usize| -> Option<f64> {
                let seconds = seconds.filter(|s| *s > 0.0)?;
                let before = before?;
                Some(values[i].wrapping_sub(before[i]) as f64 / seconds)
            };
            let moved =
                current.is_some_and(|current| current.files[index] != previous.files[index]);
            let heartbeat_age_ns = now_ns.saturating_sub(*heartbeat_ns);
            let state = if !pid_is_the_writer(reader.pid(), reader.start_time_ns(), boot_time_s) {
                State::Stopped
            } else if heartbeat_age_ns > stale_ns && !moved {
                State::Stale
            } else {
                State::Running
            };
            let summary = summary_of(&names, values, &rate);
            let seq = seq_of(&names, values);
            let counters = counters_of(&names, values, &rate);
            rows.push(Row {
                path: open.path.clone(),
                process: reader.process_name().to_owned(),
                pid: reader.pid(),
                state,
                start_time_ns: reader.start_time_ns(),
                heartbeat_ns: *heartbeat_ns,
                heartbeat_age_ns,
                seq,
                summary,
                counters,
            });
        }
        derive_lag(&mut rows);
        Report {
            time_ns: now_ns,
            interval_s: seconds,
            rows,
            errors: watched.errors.clone(),
        }
    }

    fn print(
        &self,
        out: &mut impl Write,
        as_json: bool,
        all: bool,
        refresh_screen: bool,
    ) -> anyhow::Result<()> {
        if as_json {
            serde_json::to_writer(&mut *out, &self.to_json())?;
            writeln!(out)?;
            return Ok(());
        }
        if refresh_screen {
            // Home the cursor and clear the screen.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        let mut text = String::new();
        text.push_str(&format!(
            "{:<16} {:>8} {:<12} {:>12}",
            "PROCESS", "PID", "STATE", "SEQ"
        ));
        for column in COLUMNS {
            text.push_str(&format!(" {:>10}", column.heading));
        }
        text.push_str("  FILE\n");
        for row in &self.rows {
            let state = match row.state {
                State::Running => row.state.as_str().to_owned(),
                _ => format!("{} {}", row.state.as_str(), age(row.heartbeat_age_ns)),
            };
            text.push_str(&format!(
                "{:<16} {:>8} {:<12} {:>12}",
                row.process,
                row.pid,
                state,
                row.seq.map_or("-".to_owned(), |seq| seq.to_string())
            ));
            for (column, (total, per_sec, present)) in COLUMNS.iter().zip(&row.summary) {
                let cell = match (present, column.gauge, per_sec) {
                    (false, _, _) => "-".to_owned(),
                    (true, true, _) => total.to_string(),
                    (true, false, Some(rate)) => format_rate(*rate),
                    (true, false, None) => format!("({total})"),
                };
                text.push_str(&format!(" {cell:>10}"));
            }
            text.push_str(&format!("  {}\n", row.path.display()));
            if all {
                for (name, value, per_sec) in &row.counters {
                    let rate =
                        per_sec.map_or(String::new(), |rate| format!("{}/s", format_rate(rate)));
                    text.push_str(&format!("    {name:<40} {value:>20} {rate:>12}\n"));
                }
            }
        }
        for (path, error) in &self.errors {
            text.push_str(&format!("! {}: {error}\n", path.display()));
        }
        if !refresh_screen {
            text.push('\n');
        }
        out.write_all(text.as_bytes())
            .context("writing the report")?;
        Ok(())
    }

    fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let summary: serde_json::Map<String, Value> = COLUMNS
                    .iter()
                    .zip(&row.summary)
                    .map(|(column, (total, per_sec, present))| {
                        let value = match (present, column.gauge) {
                            (false, _) => Value::Null,
                            (true, true) => json!(total),
                            (true, false) => json!({ "total": total, "per_sec": per_sec }),
                        };
                        (column.key.to_owned(), value)
                    })
                    .collect();
                let counters: BTreeMap<&str, Value> = row
                    .counters
                    .iter()
                    .map(|(name, value, per_sec)| {
                        (name.as_str(), json!({ "value": value, "per_sec": per_sec }))
                    })
                    .collect();
                json!({
                    "file": row.path.display().to_string(),
                    "process": row.process,
                    "pid": row.pid,
                    "state": row.state.as_str(),
                    "start_time_ns": row.start_time_ns,
                    "heartbeat_ns": row.heartbeat_ns,
                    "heartbeat_age_ms": row.heartbeat_age_ns / 1_000_000,
                    "seq": row.seq,
                    "summary": summary,
                    "counters": counters,
                })
            })
            .collect();
        let errors: Vec<Value> = self
            .errors
            .iter()
            .map(|(path, error)| json!({ "file": path.display().to_string(), "error": error }))
            .collect();
        json!({
            "time_ns": self.time_ns,
            "interval_s": self.interval_s,
            "processes": rows,
            "errors": errors,
        })
    }
}

/// A consumer that counts its position (`*.next_seq`) but no lag of its own
/// lags behind the newest running sequencer on this host by the difference.
fn derive_lag(rows: &mut [Row]) {
    let Some(lag_column) = COLUMNS.iter().position(|column| column.key == "lag") else {
        return;
    };
    let head = rows
        .iter()
        .filter(|row| row.state == State::Running && row.process == "tally-sequencer")
        .filter_map(|row| row.seq)
        .max();
    let Some(head) = head else {
        return;
    };
    for row in rows.iter_mut() {
        if row.process == "tally-sequencer" || row.summary[lag_column].2 {
            continue;
        }
        if let Some(seq) = row.seq {
            row.summary[lag_column] = (head.saturating_sub(seq), None, true);
        }
    }
}

fn format_rate(rate: f64) -> String {
    if rate >= 10_000_000.0 {
        format!("{:.1}M", rate / 1e6)
    } else if rate >= 10.0 || rate == 0.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.1}")
    }
}

fn age(ns: u64) -> String {
    let seconds = ns / 1_000_000_000;
    match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m", seconds / 60),
        7200..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

use tally_runtime::clock::wall_ns as wall_clock_ns;

/// Whether `pid` is still the process that wrote the counter file: it exists
/// and did not start after the file was made (a reused pid did).
fn pid_is_the_writer(pid: u32, file_start_ns: u64, boot_time_s: Option<u64>) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // A zombie has exited; only its parent has not reaped it yet.
    if matches!(process_state(&stat), Some('Z' | 'X')) {
        return false;
    }
    let (Some(boot_time_s), Some(start_ticks)) = (boot_time_s, process_start_ticks(&stat)) else {
        return true;
    };
    // SAFETY: sysconf reads a constant; no memory is passed.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_s <= 0 {
        return true;
    }
    let process_start_ns =
        boot_time_s * 1_000_000_000 + start_ticks * (1_000_000_000 / ticks_per_s as u64);
    // The process starts before it creates its file; boot time has one-second
    // resolution, hence the slack.
    process_start_ns <= file_start_ns + 2_000_000_000
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks after boot); the
/// command name in field 2 may hold spaces and parentheses, so count from
/// the last `)`.
fn process_start_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Field 3 of `/proc/PID/stat`: `R`, `S`, `D`, `Z` (zombie), ...
fn process_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// `btime` of `/proc/stat`: when the host booted, seconds since the epoch.
fn host_boot_time_s() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

// Beside this file: a crate root's modules would otherwise sit in src/bin/,
// where cargo takes every file for a binary of its own.
#[cfg(test)]
#[path = "tally-stat/tests.rs"]
mod tests;
