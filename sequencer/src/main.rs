//! `tally-sequencer`: the appliance binary. See `--help`.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tally_config::{ApplianceConfig, ConfigError};
use tally_runtime::counters::CounterReader;
use tally_runtime::notify::Notifier;
use tally_sequencer::appliance::{Appliance, Control};
use tally_sequencer::exit;
use tally_sequencer::journal::{JournalError, RecoveryOptions};
use tally_sequencer::rollover;
use tally_wire::mold::Session;

/// The tally sequencer appliance: SoupBinTCP order entry, one sequencer that
/// numbers every message, a MoldUDP64 multicast stream, a write-ahead journal,
/// a retransmit server and a replay feed.
///
/// Signals: SIGINT or SIGTERM stop the appliance (the current batch is
/// finished, the journal synced and closed; the session stays open and a
/// restart continues it). SIGUSR1 rolls over: the session ends (`S(E)`, the
/// warehouse's `S(F)`, `S(C)` and the end-of-session packet) and its
/// successor starts in the same process (README, "Daily session
/// rollover").
///
/// Exit statuses: 0 stopped cleanly; 1 any other failure (systemd restarts
/// it); 2 bad command line; 65 the journal or its checkpoint is damaged
/// (inspect with `tally-journal verify`); 74 a journal write or sync failed
/// (disk full, I/O error); 78 the configuration is invalid or an ended
/// session has no successor name. systemd does not restart on 65, 74 and 78.
#[derive(Parser, Debug)]
#[command(name = "tally-sequencer", version, about, long_about)]
struct Cli {
    /// The appliance configuration file (TOML; see config/tally.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,

    /// DANGER: start even though the journal lost acknowledged messages.
    ///
    /// Without this flag a damaged journal (a corrupt record with intact
    /// records after it, a journal shorter than its checkpoint, a missing
    /// journal or a damaged checkpoint) stops the start with exit status 65.
    /// With it, the journal is cut at the first damage, its checkpoint
    /// rewritten to match, and the loss logged at ERROR with the numbers.
    /// The sequence numbers after the cut are then handed out again to new
    /// messages: receivers and replicas that hold the old ones disagree with
    /// the journal from there on and must start over. Run `tally-journal
    /// verify` first, keep a copy of the journal, and prefer starting a new
    /// session. Use it for one start, then remove it.
    #[arg(long, global = true)]
    accept_journal_loss: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the appliance (the default when --config is given).
    Run {
        /// The appliance configuration file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Read a password on standard input (one line) and print the argon2id
    /// hash that a [[clients]] entry's password_hash expects.
    HashPassword,
    /// Load and validate a configuration file, then exit.
    CheckConfig {
        /// The appliance configuration file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let recovery_options = RecoveryOptions {
        accept_loss: cli.accept_journal_loss,
    };
    let result = match (cli.command, cli.config) {
        (Some(Command::HashPassword), _) => hash_password(),
        (Some(Command::CheckConfig { config }), _) => check_config(&config),
        (Some(Command::Run { config }), _) | (None, Some(config)) => {
            run(&config, &recovery_options)
        }
        (None, None) => {
            eprintln!("tally-sequencer: give --config FILE (or see --help)");
            std::process::exit(exit::USAGE);
        }
    };
    if let Err(error) = result {
        eprintln!("tally-sequencer: error: {error:#}");
        std::process::exit(exit_status(&error));
    }
}

/// The configuration file could not be read or is invalid.
#[derive(Debug)]
struct ConfigInvalid(String);

impl std::fmt::Display for ConfigInvalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigInvalid {}

fn load_config(path: &std::path::Path) -> anyhow::Result<ApplianceConfig> {
    ApplianceConfig::load(path).map_err(|reason| ConfigInvalid(reason).into())
}

/// The exit status for an error (see `exit.rs`): the first cause in the
/// chain that says what went wrong decides. io::Errors are looked into,
/// because a loop thread reports a failed journal write as an io::Error
/// wrapping [`exit::JournalWriteFailed`].
fn exit_status(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(cause);
        while let Some(current) = next {
            if let Some(journal) = current.downcast_ref::<JournalError>() {
                if journal.is_damage() {
                    return exit::JOURNAL_DAMAGED;
                }
            }
            if current.is::<exit::JournalWriteFailed>() {
                return exit::JOURNAL_WRITE_FAILED;
            }
            if current.is::<ConfigInvalid>()
                || current.is::<ConfigError>()
                || current.is::<exit::SessionEnded>()
            {
                return exit::CONFIG;
            }
            next = match current.downcast_ref::<std::io::Error>() {
                Some(io_error) => io_error
                    .get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static)),
                None => None,
            };
        }
    }
    exit::FAILURE
}

fn hash_password() -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("password (1 to 10 printable ASCII characters), then Enter:");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if !tally_config::gateway::password_fits_login(password) {
        anyhow::bail!(
            "a SoupBinTCP login carries 1 to {} printable ASCII characters, not ending in a space",
            tally_config::gateway::PASSWORD_BYTES_MAX
        );
    }
    println!("{}", tally_config::gateway::hash_password(password));
    Ok(())
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = load_config(path)?;
    println!(
        "{}: ok (session {}, {} clients, journal {})",
        path.display(),
        config.stream.session,
        config.clients.len(),
        config.journal.dir.display()
    );
    Ok(())
}

fn run(path: &std::path::Path, recovery_options: &RecoveryOptions) -> anyhow::Result<()> {
    tally_runtime::logging::init_from_env();
    // systemd's NOTIFY_SOCKET / WATCHDOG_USEC, read once here: library code
    // reads no environment. A no-op when not started by systemd.
    let notifier = Notifier::from_env().context("the sd_notify environment")?;
    let config = load_config(path)?;

    let stop_signal = Arc::new(AtomicBool::new(false));
    let end_signal = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop_signal))
            .context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&end_signal))
        .context("installing signal handlers")?;

    if recovery_options.accept_loss {
        tracing::error!(
            "started with --accept-journal-loss: a damaged journal will be cut at its first \
             damage and the sequence numbers after the cut handed out again"
        );
    }
    let signals = Signals {
        stop: stop_signal,
        end: end_signal,
    };
    let root = config.session()?;
    let mut session = rollover::current_session(&config.journal.dir, &root);
    loop {
        let (appliance, run_config) = start_session(&config, &mut session, recovery_options)?;
        let rolled = supervise(&appliance, &run_config, &notifier, &signals);
        if !rolled {
            notify(notifier.stopping());
            appliance.request_stop(false);
            appliance.stop()?;
            tracing::info!(session = %session, "tally-sequencer stopped");
            return Ok(());
        }
        appliance.stop()?;
        let ended = session;
        session = successor(&ended)?;
        let deleted = rollover::prune_ended(
            &config.journal.dir,
            &root,
            &session,
            config.journal.keep_ended_sessions,
        );
        tracing::info!(ended = %ended, next = %session, deleted = ?deleted, "rollover: starting the next session");
    }
}

/// The flags the signal handlers set.
struct Signals {
    /// SIGINT, SIGTERM: stop.
    stop: Arc<AtomicBool>,
    /// SIGUSR1: roll over.
    end: Arc<AtomicBool>,
}

/// The session after `ended`, or an error saying why there is none.
fn successor(ended: &Session) -> anyhow::Result<Session> {
    ended.successor().ok_or_else(|| {
        ConfigInvalid(format!(
            "session {ended:?} has no successor (its final number cannot grow within 10 \
             characters): configure a new stream.session"
        ))
        .into()
    })
}

/// Starts the appliance on `session`, moving on to the successor while the
/// session has ended (at most [`Session::CHAIN_LENGTH_MAX`] steps).
fn start_session(
    config: &ApplianceConfig,
    session: &mut Session,
    recovery_options: &RecoveryOptions,
) -> anyhow::Result<(Appliance, ApplianceConfig)> {
    for _ in 0..Session::CHAIN_LENGTH_MAX {
        let mut run_config = config.clone();
        run_config.stream.session = session.as_str().to_string();
        match Appliance::start(&run_config, Arc::new(Control::default()), recovery_options) {
            Ok(appliance) => {
                tracing::info!(
                    session = %session,
                    gateway = %config.gateway.listen,
                    stream = %format!("{}:{}", config.stream.group, config.stream.port),
                    retransmit = %config.retransmit.listen,
                    replay = %config.replay.listen,
                    next_seq = appliance.recovery.next_seq,
                    "tally-sequencer running"
                );
                return Ok((appliance, run_config));
            }
            Err(error) if error.is::<exit::SessionEnded>() => {
                tracing::info!(session = %session, "session has ended; starting its successor");
                *session = successor(session)?;
            }
            Err(error) => return Err(error),
        }
    }
    anyhow::bail!(
        "no session of the chain after {} could be started",
        config.stream.session
    )
}

/// Runs `appliance` until a stop signal (returns false) or the end of its
/// session after a rollover request (returns true), keeping systemd's
/// status and watchdog.
fn supervise(
    appliance: &Appliance,
    config: &ApplianceConfig,
    notifier: &Notifier,
    signals: &Signals,
) -> bool {
    // Start returned: every socket is bound and every loop runs.
    let mut health = Health::new(config);
    notify(notifier.ready());
    notify(notifier.status(&health.status_line()));
    let status_interval = Duration::from_secs(1);
    // systemd kills the service when no WATCHDOG=1 arrives within the
    // interval; ping four times per interval, each time only if alive.
    let watchdog_interval = notifier.watchdog_interval().map(|interval| interval / 4);
    let mut next_status = Instant::now() + status_interval;
    let mut next_watchdog = Instant::now();
    loop {
        if signals.stop.load(Ordering::Acquire) || appliance.any_stopped() {
            return false;
        }
        if signals.end.swap(false, Ordering::AcqRel) {
            tracing::info!("rollover requested (SIGUSR1)");
            appliance
                .control()
                .end_requested
                .store(true, Ordering::Release);
        }
        if appliance.session_ended() {
            return true;
        }
        let now = Instant::now();
        if now >= next_status {
            notify(notifier.status(&health.status_line()));
            next_status = now + status_interval;
        }
        if let Some(interval) = watchdog_interval.filter(|_| now >= next_watchdog) {
            match health.stalled_loop(appliance) {
                None => notify(notifier.watchdog()),
                Some(what) => {
                    tracing::warn!(what, "loop not making progress; withholding WATCHDOG=1");
                    notify(notifier.status(&format!("stalled: {what}")));
                }
            }
            next_watchdog = now + interval;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reports a failed notification and carries on: systemd's bookkeeping must
/// never stop the appliance.
fn notify(result: std::io::Result<()>) {
    if let Err(error) = result {
        tracing::warn!(%error, "sd_notify failed");
    }
}

/// What the main thread reads for `STATUS=` and the watchdog: the appliance's
/// own counter file, read like `tally-stat` reads it (never touching a loop).
struct Health {
    session: String,
    counters: Option<CounterReader>,
    next_seq: Option<usize>,
    sequenced: Option<usize>,
    packets: Option<usize>,
    sessions: Option<usize>,
    last_status: (Instant, u64),
    /// Heartbeat and progress counters at the previous watchdog check.
    last_liveness: Option<(u64, u64, u64)>,
}

impl Health {
    fn new(config: &ApplianceConfig) -> Health {
        let path = config.counters_path();
        let counters = CounterReader::open(&path)
            .map_err(|error| tracing::warn!(%error, "status and watchdog see no counters"))
            .ok();
        let find = |name: &str| {
            let reader = counters.as_ref()?;
            (0..reader.len()).find(|&index| reader.name(index) == name)
        };
        let mut health = Health {
            session: config.stream.session.to_string(),
            next_seq: find("sequencer.next_seq"),
            sequenced: find("sequencer.messages_sequenced"),
            packets: find("sequencer.packets_sent"),
            sessions: find("sessions_active"),
            counters,
            last_status: (Instant::now(), 0),
            last_liveness: None,
        };
        health.last_status.1 = health.value(health.sequenced);
        health
    }

    fn value(&self, index: Option<usize>) -> u64 {
        match (&self.counters, index) {
            (Some(reader), Some(index)) => reader.value(index),
            _ => 0,
        }
    }

    /// `session DEMO, seq 1234, 56 msg/s, 2 sessions`: the last sequence
    /// number assigned, the rate since the previous line, client sessions.
    fn status_line(&mut self) -> String {
        let now = Instant::now();
        let sequenced = self.value(self.sequenced);
        let (then, before) = self.last_status;
        let seconds = now.duration_since(then).as_secs_f64();
        let rate = if seconds > 0.0 {
            sequenced.saturating_sub(before) as f64 / seconds
        } else {
            0.0
        };
        self.last_status = (now, sequenced);
        format!(
            "session {}, seq {}, {rate:.0} msg/s, {} sessions",
            self.session,
            self.value(self.next_seq).saturating_sub(1),
            self.value(self.sessions)
        )
    }

    /// Which loop is stuck, if any: a loop thread that ended, or a
    /// sequencer loop whose heartbeat (stored each idle cycle) and progress
    /// counters (moving while it is busy) both stood still since the
    /// previous check. Comparing values rather than heartbeat age keeps a
    /// wall-clock step from looking like a hang.
    fn stalled_loop(&mut self, appliance: &Appliance) -> Option<&'static str> {
        if appliance.any_stopped() {
            return Some("a loop thread has ended");
        }
        let reader = self.counters.as_ref()?;
        let now = (
            reader.heartbeat_ns(),
            self.value(self.next_seq),
            self.value(self.packets),
        );
        let previous = self.last_liveness.replace(now);
        (previous == Some(now)).then_some("the sequencer loop's heartbeat is stale")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_follows_the_error_chain() {
        let corrupt = JournalError::Corrupt {
            path: PathBuf::from("j"),
            offset: 100,
            reason: "checksum mismatch".to_string(),
            last_good_seq: 3,
            intact_offset: 200,
            intact_seq: 5,
        };
        let error = anyhow::Error::new(corrupt).context("starting");
        assert_eq!(exit_status(&error), exit::JOURNAL_DAMAGED);
        let io = JournalError::Io {
            context: "opening".to_string(),
            source: std::io::Error::other("boom"),
        };
        assert_eq!(exit_status(&anyhow::Error::new(io)), exit::FAILURE);

        let failed = exit::JournalWriteFailed {
            path: PathBuf::from("j"),
            operation: "fdatasync",
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            free_bytes: Some(0),
        };
        // As a loop thread reports it: an io::Error wrapping it.
        let error = anyhow::Error::new(std::io::Error::other(failed)).context("sequencer loop");
        assert_eq!(exit_status(&error), exit::JOURNAL_WRITE_FAILED);

        let ended = exit::SessionEnded {
            session: "S".to_string(),
            journal: PathBuf::from("j"),
        };
        assert_eq!(exit_status(&anyhow::Error::new(ended)), exit::CONFIG);
        let invalid = ConfigInvalid("bad".to_string());
        assert_eq!(exit_status(&anyhow::Error::new(invalid)), exit::CONFIG);
        let key = ConfigError {
            key: "stream.group".to_string(),
            reason: "not multicast".to_string(),
        };
        let error = anyhow::Error::new(key).context("placement");
        assert_eq!(exit_status(&error), exit::CONFIG);
        assert_eq!(
            exit_status(&anyhow::anyhow!("lost a socket")),
            exit::FAILURE
        );
    }
}
