//! `tally-monitor`: the read side over HTTP/JSON. See `--help`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tally_client::cli::{ConnectArgs, LimitsArgs, Login, Need};
use tally_client::tally_config::ApplianceConfig;
use tally_monitor::counters::MonitorCounterFile;
use tally_monitor::{
    HttpAuthConfig, IndexLimits, Monitor, MonitorConfig, MonitorHandle, WritesConfig,
};
use tally_runtime::notify::Notifier;

/// The monitor: a replica of the stream served over HTTP/JSON. It rebuilds
/// the session from the replay feed (seq 1 on), then follows the multicast
/// stream, and answers
///
///   GET /availability/{symbol}[?location=NAME_OR_ID][&after=LOCATION_ID][&limit=N]
///   GET /cells/{location}/{symbol}/history[?limit=N]
///   GET /orders/{origin}/{order_id}
///   GET /holds/{origin}/{hold_id}
///   GET /depleted[?scope=all|any][&after=POSITION][&limit=N]
///   GET /digest[?locations=NAME_OR_ID,...]   (the replica's digest, or a
///                  store's subset digest, and the seq it reflects; cached)
///   GET /health   (503 when the stream is stale)
///   GET /ready    (503 until the authority's snapshot broadcast is applied
///                  and the lag is small)
///   GET /metrics  (Prometheus text format)
///
/// Listings are paged: at most `limit` entries (default 100, at most 1000),
/// and "next", the `after` of the next page (null on the last).
///
/// The replica's limits come from the --config file's [limits] section (the
/// same as the warehouse's); a --*-max flag overrides one for this process.
/// A limit the stream meets (a directory, hold or cell table too small)
/// stops it with an error that names the limit with the numbers (/ready
/// answers 503 with the same reason meanwhile).
///
/// Every JSON answer carries "seq" (the stream sequence number it reflects),
/// "lag" (newest seq seen − seq) and "stale" (true when the stream went
/// silent: sequencer stopped or link cut). SIGINT/SIGTERM stop it.
///
/// Every endpoint but /health and /ready needs HTTP Basic credentials of a
/// [[clients]] entry of the --config file whose role may read ([http]
/// read_roles; default reader, ops, authority): 401 without or with wrong
/// ones, 403 for another role, 429 when one address causes too many password
/// checks. [http] metrics_public = true opens /metrics to a scraper.
#[derive(Parser, Debug)]
#[command(
    name = "tally-monitor",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    /// HTTP listen address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// HTTP worker threads.
    #[arg(long, value_name = "N", default_value_t = 2)]
    workers: usize,
    /// /ready answers 200 only within this many messages of the newest.
    #[arg(long, value_name = "MESSAGES", default_value_t = 1000)]
    ready_lag_max: u64,
    /// Events kept per cell for /cells/…/history.
    #[arg(long, value_name = "N", default_value_t = IndexLimits::DEFAULT.history_depth)]
    history_depth: u32,
    /// Cells with a history.
    #[arg(long, value_name = "N", default_value_t = IndexLimits::DEFAULT.history_cells_max)]
    history_cells: u32,
    /// Order timelines kept (most recently active).
    #[arg(long, value_name = "N", default_value_t = IndexLimits::DEFAULT.orders_max)]
    order_timelines: u32,
    /// Hold timelines kept (most recently active).
    #[arg(long, value_name = "N", default_value_t = IndexLimits::DEFAULT.holds_max)]
    hold_timelines: u32,
    /// Decisions and notifications /v1/events can replay (the newest); a
    /// Last-Event-ID older than they reach is answered 410.
    #[arg(long, value_name = "N", default_value_t = IndexLimits::DEFAULT.events_max)]
    events_max: u32,
    /// Enables the /v1 writes (orders, holds, transfers, recounts,
    /// adjustments): the idempotency keys are kept here (fsync'd). Each
    /// writing user gets its own gateway session, logged in with the
    /// password of its HTTP Basic credentials.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<std::path::PathBuf>,
    /// How long a write waits for the warehouse's decision before it is
    /// answered 202 with a Location to poll.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    decision_timeout_ms: u64,
    /// Open HTTP connections at most, and from one address.
    #[arg(long, value_name = "N", default_value_t = tally_monitor::HttpLimits::DEFAULT.connections_max)]
    connections_max: usize,
    #[arg(long, value_name = "N", default_value_t = tally_monitor::HttpLimits::DEFAULT.connections_per_source_max)]
    connections_per_source_max: usize,
    #[command(flatten)]
    limits: LimitsArgs,
    /// Counter file for tally-stat (default:
    /// $RUNTIME_DIRECTORY/tally-monitor.counters when systemd sets it, else
    /// none; /metrics works either way).
    #[arg(long, value_name = "FILE")]
    counters: Option<std::path::PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tally_client::cli::finish("tally-monitor", run(&cli))
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    tally_client::cli::init_logging();
    let notifier = Notifier::from_env().context("the sd_notify environment")?;
    let appliance = cli.connect.appliance()?;
    // Its own login reads the stream (any configured role may); checked
    // before anything starts, so a wrong password stops it at once.
    let login = cli.connect.login(&appliance, Need::Read)?;
    let config = monitor_config(cli, &appliance, &login)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let counters_path = cli.counters.clone().or_else(|| {
        std::env::var_os("RUNTIME_DIRECTORY")
            .map(|dir| std::path::PathBuf::from(dir).join("tally-monitor.counters"))
    });
    let counters = MonitorCounterFile::create(counters_path.as_deref(), "tally-monitor")
        .context("creating the counter file")?;
    let monitor = Monitor::start(config).context("starting the monitor")?;
    tracing::info!(listen = %monitor.local_addr(), "tally-monitor serving");
    let failure = supervise(&monitor, &notifier, &counters, &stop);
    counters.publish(&monitor);
    notify(notifier.stopping());
    let status = monitor.status();
    monitor.stop().context("stopping the monitor")?;
    tracing::info!(
        seq = status.freshness.seq,
        messages = status.messages,
        oversold = status.oversold,
        "tally-monitor stopped"
    );
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// The monitor's configuration from the command line and the appliance's.
fn monitor_config(
    cli: &Cli,
    appliance: &ApplianceConfig,
    login: &Login,
) -> anyhow::Result<MonitorConfig> {
    let mut config = MonitorConfig::new(cli.listen, login.consumer(appliance));
    config.consumer.start_seq = 1;
    // One place for limits: the configuration's [limits] (as the warehouse
    // and the tills read them); a flag overrides one for this process.
    let limits = cli.limits.limits(appliance, "replica")?;
    tracing::info!(?limits, "replica limits");
    config.limits = limits;
    config.indexes = IndexLimits {
        history_depth: cli.history_depth,
        history_cells_max: cli.history_cells,
        orders_max: cli.order_timelines,
        holds_max: cli.hold_timelines,
        events_max: cli.events_max,
        ..IndexLimits::DEFAULT
    };
    config
        .indexes
        .validate()
        .map_err(|error| anyhow::anyhow!("index limits: {error}"))?;
    config.auth = HttpAuthConfig::from_appliance(appliance)
        .map_err(|error| anyhow::anyhow!("[http] in {}: {error}", cli.connect.config.display()))?;
    config.http_workers = cli.workers;
    config.http.connections_max = cli.connections_max;
    config.http.connections_per_source_max = cli.connections_per_source_max;
    if let Some(dir) = &cli.state_dir {
        let mut writes = WritesConfig::new(appliance.clone(), dir.clone());
        writes.decision_timeout = Duration::from_millis(cli.decision_timeout_ms);
        config.writes = Some(writes);
    }
    config.ready_lag_max = cli.ready_lag_max;
    Ok(config)
}

/// Supervision until `stop` or a failure (returned): READY=1 once caught
/// up with the stream (or once it is known to be stale: nothing to catch up
/// with, and the monitor says so on every answer), STATUS= every second,
/// WATCHDOG=1 while the stream thread publishes; the counter file every
/// second.
fn supervise(
    monitor: &MonitorHandle,
    notifier: &Notifier,
    counters: &MonitorCounterFile,
    stop: &AtomicBool,
) -> Option<anyhow::Error> {
    let watchdog = notifier.watchdog_interval().map(|interval| interval / 4);
    let mut notified_ready = false;
    let mut next_status = Instant::now();
    let mut last_batches = 0;
    let mut last_watchdog = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let status = monitor.status();
        if let Some(error) = status.failed {
            return Some(anyhow::anyhow!("the stream consumer failed: {error}"));
        }
        // A limit smaller than the stream needs: the replica holds less
        // than the stream, so its answers would be wrong. Say which, with
        // the numbers, and stop (as the warehouse and the tills do).
        if let Some(limit) = monitor.read(|model| model.replica().limit_met()) {
            return Some(anyhow::anyhow!(
                "limit met: {limit} (raise it in the configuration's [limits] section or \
                 with the --*-max flags)"
            ));
        }
        if !notified_ready && (status.caught_up || status.freshness.stale) {
            notify(notifier.ready());
            notified_ready = true;
            tracing::info!(
                seq = status.freshness.seq,
                stale = status.freshness.stale,
                ready = status.ready,
                "tally-monitor caught up"
            );
        }
        let now = Instant::now();
        if now >= next_status {
            next_status = now + Duration::from_secs(1);
            counters.publish(monitor);
            notify(notifier.status(&format!(
                "seq {} lag {}{}{}",
                status.freshness.seq,
                status.freshness.lag,
                if status.freshness.stale { " STALE" } else { "" },
                if status.ready { "" } else { " (not ready)" },
            )));
        }
        let batches = monitor.read(|model| model.liveness().batches);
        if let Some(interval) = watchdog {
            if batches != last_batches && now.duration_since(last_watchdog) >= interval {
                notify(notifier.watchdog());
                last_watchdog = now;
            }
        }
        last_batches = batches;
        monitor.wait_until(Duration::from_millis(250), |model, _| {
            stop.load(Ordering::Acquire) || model.liveness().failed.is_some()
        });
    }
    None
}

/// sd_notify errors are logged, never fatal.
fn notify(result: std::io::Result<()>) {
    if let Err(error) = result {
        tracing::warn!(%error, "sd_notify");
    }
}
