//! `tally-tap`: prints the stream, one decoded message a line. See `--help`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use clap::Parser;
use tally_client::cli::{ConnectArgs, Need};
use tally_client::consumer::{monotonic_ns, ConsumerCounters, StreamConsumer};
use tally_client::follow::SessionFollower;
use tally_client::text;
use tally_runtime::counters::{Counter, CounterFile};

/// Prints every stream message as one line:
/// `seq type origin/client_seq time field=value…` (or one JSON object per
/// line with --json). Joins the multicast stream; with --from it first
/// replays history from the replay feed, then follows live without a gap.
/// Missed packets are recovered through re-requests. At the end of a
/// session it follows the next one (the stream numbers from 1 again; with
/// --one-session it stops there instead). Stops after --count messages, or
/// on Ctrl-C. With --counters (or $RUNTIME_DIRECTORY set) it keeps a
/// counter file for tally-stat: tap.printed, tap.sessions_followed and its
/// consumer's consumer.*.
#[derive(Parser, Debug)]
#[command(name = "tally-tap", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    /// First sequence number to print (history comes from the replay feed);
    /// without it, tap starts with the first packet it hears.
    #[arg(long, value_name = "SEQ")]
    from: Option<u64>,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Stop at the end of the session instead of following the next one.
    #[arg(long)]
    one_session: bool,
    /// Counter file for tally-stat (default:
    /// $RUNTIME_DIRECTORY/tally-tap.counters when that is set, else none).
    #[arg(long, value_name = "FILE")]
    counters: Option<PathBuf>,
}

/// The tap's counters in a counter file: its own (`tap.*`), then its
/// consumer's (`consumer.*`).
struct TapCounters {
    file: CounterFile,
    printed: Counter,
    sessions_followed: Counter,
    consumer: ConsumerCounters,
}

impl TapCounters {
    const NAMES: &'static [&'static str] = &["tap.printed", "tap.sessions_followed"];

    fn create(path: &Path) -> std::io::Result<TapCounters> {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .chain(ConsumerCounters::NAMES)
            .copied()
            .collect();
        let file = CounterFile::create(path, "tally-tap", &names)?;
        Ok(TapCounters {
            printed: file.counter(0),
            sessions_followed: file.counter(1),
            consumer: ConsumerCounters::from_file(&file, Self::NAMES.len()),
            file,
        })
    }

    fn publish(&self, printed: u64, consumer: &StreamConsumer) {
        self.printed.set(printed);
        self.consumer.publish(consumer);
        self.file.set_heartbeat(tally_runtime::clock::wall_ns());
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tally_client::cli::finish("tally-tap", run(&cli))
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    tally_client::cli::init_logging();
    let appliance = cli.connect.appliance()?;
    // The stream is readable by anyone who hears it; the login is checked
    // anyway, so a wrong password says so instead of tapping silently.
    let login = cli.connect.login(&appliance, Need::Read)?;
    // The appliance's current session (the configured one may have rolled
    // over since): the first packet's, or the replay feed's.
    let mut config = login.consumer(&appliance);
    config.start_seq = cli.from.unwrap_or(0);
    let follower = SessionFollower::new(config.clone());
    let mut consumer = StreamConsumer::new(&config)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let stdout = std::io::stdout();
    let mut printer = Printer {
        out: std::io::BufWriter::new(stdout.lock()),
        json: cli.json,
        printed: 0,
        limit: cli.count.unwrap_or(u64::MAX),
        error: None,
    };
    let counters_path = cli.counters.clone().or_else(|| {
        std::env::var_os("RUNTIME_DIRECTORY")
            .map(|dir| PathBuf::from(dir).join("tally-tap.counters"))
    });
    let counters = counters_path
        .as_deref()
        .map(TapCounters::create)
        .transpose()
        .context("creating the counter file")?;
    let mut next_publish = Instant::now();
    while !stop.load(Ordering::Acquire) && !printer.done() {
        if let Some(counters) = &counters {
            if Instant::now() >= next_publish {
                counters.publish(printer.printed, &consumer);
                next_publish = Instant::now() + Duration::from_secs(1);
            }
        }
        if consumer.is_ended() {
            if cli.one_session {
                break;
            }
            if follower.follow(&mut consumer)?.is_some() {
                if let Some(counters) = &counters {
                    counters.sessions_followed.add_shared(1);
                }
            }
        }
        let work = consumer.poll(monotonic_ns(), |seq, message| printer.print(seq, &message))?;
        if work == 0 {
            printer.out.flush()?;
            consumer.wait(Duration::from_millis(100), |seq, message| {
                printer.print(seq, &message)
            })?;
        }
        if let Some(error) = printer.error.take() {
            // A closed pipe (`tally-tap | head`) ends the tap quietly.
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(error.into());
        }
    }
    printer.out.flush()?;
    if let Some(counters) = &counters {
        counters.publish(printer.printed, &consumer);
    }
    Ok(())
}

/// Writes lines until the limit; remembers the first write error.
struct Printer<W: Write> {
    out: W,
    json: bool,
    printed: u64,
    limit: u64,
    error: Option<std::io::Error>,
}

impl<W: Write> Printer<W> {
    fn done(&self) -> bool {
        self.printed >= self.limit || self.error.is_some()
    }

    fn print(&mut self, seq: u64, message: &tally_wire::Message) {
        if self.done() {
            return;
        }
        let result = if self.json {
            writeln!(self.out, "{}", text::json(seq, message))
        } else {
            writeln!(self.out, "{}", text::line(seq, message))
        };
        match result {
            Ok(()) => self.printed += 1,
            Err(error) => self.error = Some(error),
        }
    }
}
