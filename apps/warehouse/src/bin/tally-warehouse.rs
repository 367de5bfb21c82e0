//! `tally-warehouse`: the authority. See `--help`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tally_client::cli::{ConnectArgs, LimitsArgs, Need};
use tally_client::metrics::{serve as serve_metrics, MetricSet};
use tally_warehouse::app::{BroadcastPacing, WarehouseApp, WarehouseAppConfig};
use tally_warehouse::counters::WarehouseCounterFile;

/// The warehouse: the one application that decides. It follows the stream,
/// decides every order, modify, cancel, reservation, confirmation, release,
/// transfer, recount and adjustment exactly as DESIGN.md §3 says, and
/// announces each outcome on the stream. A new session starts with its
/// snapshot broadcast (locations, SKUs, levels, open holds, then "authority
/// online") built from --inventory; a restart resumes from --snapshot and the
/// stream without deciding anything twice. SIGINT/SIGTERM: stop deciding,
/// wait for its events to come back, save the snapshot, exit.
#[derive(Parser, Debug)]
#[command(name = "tally-warehouse", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Initial inventory for a new session (CSV: location,sku_symbol,quantity).
    #[arg(long, value_name = "CSV", default_value = "apps/data/inventory.csv")]
    inventory: PathBuf,
    /// Snapshot file (read at start when present; written periodically and
    /// on shutdown).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "target/tally-demo/warehouse.snapshot"
    )]
    snapshot: PathBuf,
    /// Seconds between snapshots (0 = only on shutdown).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    snapshot_interval: u64,
    #[command(flatten)]
    limits: LimitsArgs,
    /// At exit, print a JSON summary on stdout: the seq the authoritative
    /// state reflects, its digest (compare replicas' digests at that seq),
    /// oversold units and the decision counters.
    #[arg(long)]
    json: bool,
    /// Counter file for tally-stat (default:
    /// $RUNTIME_DIRECTORY/tally-warehouse.counters when systemd sets it,
    /// else none).
    #[arg(long, value_name = "FILE")]
    counters: Option<PathBuf>,
    /// Serve the counters as Prometheus metrics on GET /metrics at this
    /// address (e.g. 127.0.0.1:9101).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tally_client::cli::finish("tally-warehouse", run(&cli))
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    tally_client::cli::init_logging();
    let appliance = cli.connect.appliance()?;
    // One login, no default: the authority's (role authority), for the
    // gateway and the replay feed; checked before anything starts.
    let login = cli.connect.login(
        &appliance,
        Need::Send {
            msg_type: tally_wire::SystemEvent::TYPE,
            what: "put the warehouse's decisions on the stream (the warehouse logs in as a user \
                   of role authority)",
        },
    )?;
    let own_origin = login.identity.client_id;
    // One place for limits: the configuration's [limits]; a flag overrides
    // one for this process.
    let limits = cli.limits.limits(&appliance, "table")?;
    tracing::info!(?limits, "state limits");
    let config = WarehouseAppConfig {
        consumer: login.consumer(&appliance),
        client: login.client(&appliance),
        own_origin,
        limits,
        inventory: Some(cli.inventory.clone()),
        snapshot: Some(cli.snapshot.clone()),
        snapshot_interval: Duration::from_secs(cli.snapshot_interval),
        expiry_check_interval: Duration::from_millis(100),
        catch_up_timeout: Duration::from_secs(120),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let notifier =
        tally_runtime::notify::Notifier::from_env().context("the sd_notify environment")?;
    // The session-start broadcast stays within the gateway's rate limit.
    let pacing = BroadcastPacing::for_appliance(&appliance);
    let mut app = WarehouseApp::start_paced(config, Some(pacing))?;
    tracing::info!(
        seq = app.consumer().delivered_seq(),
        "tally-warehouse deciding"
    );
    // Ready for systemd only once caught up and deciding live.
    let _ = notifier.ready();
    let _ = notifier.status(&format!(
        "deciding from seq {}",
        app.consumer().delivered_seq()
    ));
    run_counted(cli, &mut app, &stop)?;
    let _ = notifier.stopping();
    report_stopped(cli, &app);
    Ok(())
}

/// Runs `app` until `stop`, publishing its counters (and serving them on
/// --metrics) as it goes.
fn run_counted(cli: &Cli, app: &mut WarehouseApp, stop: &AtomicBool) -> anyhow::Result<()> {
    let counters_path = cli.counters.clone().or_else(|| {
        std::env::var_os("RUNTIME_DIRECTORY")
            .map(|dir| PathBuf::from(dir).join("tally-warehouse.counters"))
    });
    let counters = WarehouseCounterFile::create(counters_path.as_deref(), "tally-warehouse")
        .context("creating the counter file")?;
    let metrics_stop = Arc::new(AtomicBool::new(false));
    let metrics = match cli.metrics {
        Some(listen) => {
            let set = MetricSet::of(counters.file(), "tally-warehouse");
            let (addr, thread) = serve_metrics(listen, set, Arc::clone(&metrics_stop))?;
            tracing::info!(%addr, "serving metrics on /metrics");
            Some(thread)
        }
        None => None,
    };
    let result = app.run_with(stop, |app| counters.publish(app));
    metrics_stop.store(true, std::sync::atomic::Ordering::Release);
    if let Some(thread) = metrics {
        let _ = thread.join();
    }
    result
}

/// Logs the final state (and prints it with --json).
fn report_stopped(cli: &Cli, app: &WarehouseApp) {
    let engine = app.engine();
    let counters = engine.counters();
    let seq = engine.replica().last_seq();
    let digest = format!("{:016x}", engine.digest());
    tracing::info!(
        seq,
        digest,
        decided = counters.decided,
        accepted = counters.accepted,
        rejected = counters.rejected(),
        "tally-warehouse stopped"
    );
    if cli.json {
        let summary = serde_json::json!({
            "final_seq": seq,
            "digest": digest,
            "oversold": engine.replica().oversold(),
            "decided": counters.decided,
            "accepted": counters.accepted,
            "rejected": counters.rejected(),
            "snapshots_saved": app.stats().snapshots_saved,
        });
        println!("{summary}");
    }
}
