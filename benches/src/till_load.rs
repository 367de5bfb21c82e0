//! `tally-bench --scenario till-load`: the random load generator
//! ([`tally_demo::load`]) driving one till against a running appliance —
//! what `tally-pos --rate` did before the till became the store node
//! (issue 12). It logs in as `--user`, sends a seeded random mix of orders,
//! modifies, cancels, reservations, confirms and releases at `--rate` per
//! second (0 = as fast as answers come back) once the warehouse's directory
//! is on the stream, prints a line a second and a summary at the end
//! (`--seconds`, 0 = until SIGINT/SIGTERM: stop sending, wait for the
//! outstanding answers, print).
//!
//! Under systemd (Type=notify) it sends READY=1 once it is ready to send,
//! a STATUS= line a second and STOPPING=1 at shutdown; its counters go to
//! a counter file for tally-stat (`--counters`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tally_client::cli::ConnectArgs;
use tally_client::client::ClientConfig;
use tally_client::consumer::ConsumerConfig;
use tally_client::credentials::Credentials;
use tally_demo::load::{LoadConfig, LoadGenerator, Mix};
use tally_pos::{Idle, Pos, PosConfig, PosCounterFile, PosStats, RttSummary};
use tally_runtime::notify::Notifier;

/// The till-load scenario's own options (with `--rate`, `--seconds` and
/// `--json` of tally-bench).
#[derive(Args, Debug, Clone)]
pub struct TillLoadArgs {
    /// Client id of the login (default: the one the configuration gives
    /// --user).
    #[arg(long, value_name = "ID")]
    pub origin: Option<u16>,
    /// Seed of the random choices (default: the origin).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Drop this percentage of received stream packets (seeded), to show
    /// gap fill at work.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub loss: f64,
    /// Command mix as kind=weight pairs, e.g.
    /// order=50,modify=10,cancel=10,reserve=15,confirm=8,release=7.
    #[arg(long, value_name = "SPEC")]
    pub mix: Option<Mix>,
    /// Quantities are 1..=N.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub qty_max: u32,
    /// Reservations live between N/5 and N milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub hold_ttl_ms: u32,
    /// Commands awaiting their outcome, at most (default: the gateway's
    /// ack history).
    #[arg(long, value_name = "N")]
    pub in_flight: Option<usize>,
    /// Busy-poll instead of sleeping between sends (lowest latency; burns a
    /// core).
    #[arg(long)]
    pub spin: bool,
    /// No per-second lines.
    #[arg(long)]
    pub quiet: bool,
    /// Longest wait at start for the gateway and the warehouse's directory.
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub ready_timeout: u64,
    /// Counter file for tally-stat.
    #[arg(long, value_name = "FILE")]
    pub counters: Option<PathBuf>,
    /// After --seconds of load (and the wait for the outcomes), keep
    /// following the stream until SIGINT/SIGTERM (STATUS= names the seq as
    /// it moves), then catch up with the newest seq the stream announced and
    /// print the summary: its digest is then the replica's at the session's
    /// final seq, comparable with every other replica's.
    #[arg(long)]
    pub follow: bool,
}

/// What the scenario is given: the connection, its options, and the
/// bench's `--rate`, `--seconds` (0 = until a signal) and `--json`.
pub struct TillLoad<'a> {
    pub connect: &'a ConnectArgs,
    pub args: &'a TillLoadArgs,
    pub rate_per_sec: u64,
    pub seconds: u64,
    pub json: bool,
}

/// Runs the scenario; prints its lines and summary itself.
pub fn run(cli: &TillLoad<'_>) -> anyhow::Result<()> {
    let args = cli.args;
    if !(0.0..=100.0).contains(&args.loss) {
        anyhow::bail!("--loss must be a percentage, 0 to 100");
    }
    // No default credentials: --user and a password (file or environment).
    let credentials = cli.connect.credentials()?;
    let user = credentials.username.clone();
    let (config, seed) = till_config(cli, &credentials)?;
    let mut load = LoadConfig::new(seed);
    load.rate_per_sec = cli.rate_per_sec;
    load.mix = args.mix.unwrap_or_default();
    load.qty_max = args.qty_max;
    load.ttl_ms_max = args.hold_ttl_ms.max(1);
    load.ttl_ms_min = (args.hold_ttl_ms / 5).max(1);
    let mut load = LoadGenerator::new(load)?;

    let notifier = Notifier::from_env().context("the sd_notify environment")?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let mut pos = Pos::new(config).context("starting the till")?;
    let counters = match &args.counters {
        Some(path) => Some(
            PosCounterFile::create(path, &format!("tally-bench {user}"))
                .with_context(|| format!("creating the counter file {}", path.display()))?,
        ),
        None => None,
    };
    tracing::info!(
        user,
        origin = pos.origin(),
        seed,
        "waiting for the gateway and the warehouse's directory"
    );
    if !wait_ready(&mut pos, args.ready_timeout, &stop)? {
        return Ok(());
    }
    tracing::info!(seq = pos.replica().last_seq(), "ready: sending");
    notify(notifier.ready());

    let started = Instant::now();
    let until = (cli.seconds > 0).then(|| started + Duration::from_secs(cli.seconds));
    let mut previous = pos.stats();
    let mut second = 0u64;
    load.run_load(&mut pos, &stop, until, |pos| {
        second += 1;
        let line = tick_line(second, &previous, &pos.stats(), pos);
        report_second(cli, &line, counters.as_ref(), &notifier, pos);
        previous = pos.stats();
        pos.reset_interval();
    })?;
    let elapsed = started.elapsed();
    notify(notifier.stopping());
    let drained = pos.drain(pos.drain_timeout())?;
    if !drained {
        tracing::warn!(
            in_flight = pos.in_flight(),
            "stopped with commands still awaiting their outcome"
        );
    }
    pos.logout();
    if args.follow && !stop.load(std::sync::atomic::Ordering::Acquire) {
        follow(&mut pos, &stop, &notifier)?;
    }
    if let Some(counters) = &counters {
        counters.publish(&pos);
    }
    let mut summary = summary(&user, pos.origin(), seed, elapsed, drained, &pos);
    summary["pacing_dropped"] = load.pacing_dropped().into();
    if cli.json {
        println!("{summary}");
    } else {
        print_summary(&summary)?;
    }
    Ok(())
}

/// The per-second line (stdout, or stderr with --json), the counters and
/// systemd's status.
fn report_second(
    cli: &TillLoad<'_>,
    line: &str,
    counters: Option<&PosCounterFile>,
    notifier: &Notifier,
    pos: &Pos,
) {
    if !cli.args.quiet {
        if cli.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    if let Some(counters) = counters {
        counters.publish(pos);
    }
    notify(notifier.status(line));
    notify(notifier.watchdog());
}

/// The till's configuration from the command line, and the seed.
fn till_config(cli: &TillLoad<'_>, credentials: &Credentials) -> anyhow::Result<(PosConfig, u64)> {
    let args = cli.args;
    let appliance = cli.connect.appliance()?;
    let (user, password) = (&credentials.username, &credentials.password);
    let mut config = match args.origin {
        Some(origin) => {
            let mut consumer = ConsumerConfig::for_appliance(&appliance, user, password);
            consumer.session = tally_wire::mold::Session::BLANK;
            let client = ClientConfig::for_appliance(&appliance, user, password);
            PosConfig::new(consumer, client, origin)
        }
        None => PosConfig::for_appliance(&appliance, user, password)?,
    };
    config.consumer.start_seq = 1;
    let seed = args.seed.unwrap_or(u64::from(config.origin));
    if args.loss > 0.0 {
        config.consumer.loss = Some((seed ^ 0x6c6f_7373, args.loss / 100.0));
    }
    if let Some(in_flight) = args.in_flight {
        config.in_flight_max = in_flight;
    }
    config.idle = if args.spin { Idle::Spin } else { Idle::Park };
    Ok((config, seed))
}

/// Waits until the till can send; `Ok(false)` when stopped first.
fn wait_ready(pos: &mut Pos, timeout_s: u64, stop: &AtomicBool) -> anyhow::Result<bool> {
    let ready_deadline = Instant::now() + Duration::from_secs(timeout_s);
    while !pos.wait_ready(Duration::from_millis(200))? {
        if stop.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(false);
        }
        if Instant::now() >= ready_deadline {
            anyhow::bail!(
                "not ready after {timeout_s} s (logged in: {}, directory seen: {}, stream at seq {})",
                pos.client().is_ready(),
                pos.replica().authority_online_seq() != 0,
                pos.replica().last_seq()
            );
        }
    }
    Ok(true)
}

/// `--follow`: applies the stream until `stop` (a till follows a rollover
/// into the next session, so a session's end does not stop it), telling
/// systemd the seq whenever it moves, then catches up with the
/// newest seq the stream announced.
fn follow(pos: &mut Pos, stop: &AtomicBool, notifier: &Notifier) -> anyhow::Result<()> {
    const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);
    tracing::info!(
        seq = pos.replica().last_seq(),
        "load done: following the stream until SIGINT/SIGTERM"
    );
    let mut reported_seq = None;
    while !stop.load(std::sync::atomic::Ordering::Acquire) && !pos.consumer().is_ended() {
        let seq = pos.replica().last_seq();
        if reported_seq != Some(seq) {
            notify(notifier.status(&format!("following: seq {seq}")));
            reported_seq = Some(seq);
        }
        pos.poll_until(Duration::from_millis(100), |_| false)?;
    }
    let newest_seq = pos.consumer().newest_seq();
    if !pos.catch_up(newest_seq, CATCH_UP_TIMEOUT)? {
        tracing::warn!(
            seq = pos.replica().last_seq(),
            newest_seq,
            "stopped following before catching up with the stream"
        );
    }
    Ok(())
}

/// Reports a failed notification and carries on (systemd's bookkeeping
/// must not stop the till).
fn notify(result: std::io::Result<()>) {
    if let Err(error) = result {
        tracing::warn!(%error, "sd_notify failed");
    }
}

/// One line a second: rates over the last second, totals, RTT of the last
/// second.
fn tick_line(second: u64, previous: &PosStats, stats: &PosStats, pos: &Pos) -> String {
    let rtt = RttSummary::of(pos.interval_histogram());
    let mut rejects = String::new();
    for (letter, n) in stats.rejects.nonzero() {
        rejects.push_str(&format!(" {letter}={n}"));
    }
    if rejects.is_empty() {
        rejects.push_str(" 0");
    }
    format!(
        "{second:>4}s sent/s={} outcomes/s={} fills={} rejects:{rejects} skipped={} \
         rtt_us p50={:.0} p99={:.0} in_flight={} seq={} gaps={}",
        stats.sent.total() - previous.sent.total(),
        stats.outcomes - previous.outcomes,
        stats.filled,
        stats.skipped_would_fail,
        rtt.rtt_p50_us,
        rtt.rtt_p99_us,
        stats.in_flight,
        pos.replica().last_seq(),
        pos.consumer().stats().gaps_detected,
    )
}

fn summary(
    user: &str,
    origin: u16,
    seed: u64,
    elapsed: Duration,
    drained: bool,
    pos: &Pos,
) -> serde_json::Value {
    let stats = pos.stats();
    let rtt = RttSummary::of(pos.histogram());
    let consumer = pos.consumer().stats();
    json!({
        "user": user,
        "origin": origin,
        "seed": seed,
        "seconds": elapsed.as_secs_f64(),
        "sent": stats.sent.total(),
        "sent_by_kind": stats.sent,
        "outcomes": stats.outcomes,
        "in_flight": stats.in_flight,
        "drained": drained,
        "filled": stats.filled,
        "modified": stats.modified,
        "cancelled": stats.cancelled,
        "holds_placed": stats.holds_placed,
        "holds_confirmed": stats.holds_confirmed,
        "holds_released": stats.holds_released,
        "holds_expired": stats.holds_expired,
        "rejected": stats.rejected,
        "rejects": stats.rejects,
        "gateway_rejected": stats.gateway_rejected,
        "skipped_would_fail": stats.skipped_would_fail,
        "skipped": stats.skipped,
        "units_sold": stats.units_sold,
        "duplicate_outcomes": stats.duplicate_outcomes,
        "rtt_count": rtt.count,
        "rtt_p50_us": rtt.rtt_p50_us,
        "rtt_p99_us": rtt.rtt_p99_us,
        "rtt_p999_us": rtt.rtt_p999_us,
        "rtt_max_us": rtt.rtt_max_us,
        "final_seq": pos.replica().last_seq(),
        "digest": format!("{:016x}", pos.replica().digest()),
        "oversold": pos.replica().oversold(),
        "gaps_detected": consumer.gaps_detected,
        "recovered": consumer.recovered(),
        "datagrams_dropped_by_loss_filter": consumer.datagrams_dropped_by_loss_filter,
    })
}

fn print_summary(summary: &serde_json::Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "summary:")?;
    if let Some(fields) = summary.as_object() {
        for (name, value) in fields {
            writeln!(out, "  {name}: {value}")?;
        }
    }
    Ok(())
}
