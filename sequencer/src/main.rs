//! `tally-sequencer`: the appliance binary. See `--help`.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tally_sequencer::appliance::{Appliance, Control};
use tally_sequencer::config::ApplianceConfig;

/// The tally sequencer appliance: SoupBinTCP order entry, one sequencer that
/// numbers every message, a MoldUDP64 multicast stream, a write-ahead journal,
/// a retransmit server and a replay feed.
///
/// Signals: SIGINT or SIGTERM stop the appliance (the current batch is
/// finished, the journal synced and closed; the session stays open and a
/// restart continues it). SIGUSR1 ends the session (the end-of-session event
/// and packet are sent) and then stops.
#[derive(Parser, Debug)]
#[command(name = "tally-sequencer", version, about, long_about)]
struct Cli {
    /// The appliance configuration file (TOML; see config/tally.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,

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
    let result = match (cli.command, cli.config) {
        (Some(Command::HashPassword), _) => hash_password(),
        (Some(Command::CheckConfig { config }), _) => check_config(&config),
        (Some(Command::Run { config }), _) | (None, Some(config)) => run(&config),
        (None, None) => {
            eprintln!("tally-sequencer: give --config FILE (or see --help)");
            std::process::exit(2);
        }
    };
    if let Err(error) = result {
        eprintln!("tally-sequencer: error: {error:#}");
        std::process::exit(1);
    }
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
    if !tally_gateway::config::password_fits_login(password) {
        anyhow::bail!(
            "a SoupBinTCP login carries 1 to {} printable ASCII characters, not ending in a space",
            tally_gateway::config::PASSWORD_BYTES_MAX
        );
    }
    println!("{}", tally_gateway::config::hash_password(password));
    Ok(())
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = ApplianceConfig::load(path).map_err(anyhow::Error::msg)?;
    println!(
        "{}: ok (session {}, {} clients, journal {})",
        path.display(),
        config.stream.session,
        config.clients.len(),
        config.journal.dir.display()
    );
    Ok(())
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = ApplianceConfig::load(path).map_err(anyhow::Error::msg)?;

    let stop_signal = Arc::new(AtomicBool::new(false));
    let end_signal = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop_signal))
            .context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&end_signal))
        .context("installing signal handlers")?;

    let appliance = Appliance::start(&config, Arc::new(Control::default()))?;
    tracing::info!(
        session = %config.stream.session,
        gateway = %config.gateway.listen,
        stream = %format!("{}:{}", config.stream.group, config.stream.port),
        retransmit = %config.retransmit.listen,
        replay = %config.replay.listen,
        next_seq = appliance.recovery.next_seq,
        "tally-sequencer running"
    );
    loop {
        if stop_signal.load(Ordering::Acquire)
            || end_signal.load(Ordering::Acquire)
            || appliance.any_stopped()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let end_session = end_signal.load(Ordering::Acquire);
    appliance.request_stop(end_session);
    appliance.stop()?;
    tracing::info!(end_session, "tally-sequencer stopped");
    Ok(())
}
