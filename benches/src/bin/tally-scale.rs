//! `tally-scale`: issue 15's scale benchmark — a retail chain's whole
//! catalogue on one stream. See `--help`.
//!
//! One run: generate the chain's inventory CSV, start the appliance
//! in-process (fresh journal), then, each in its own process (so its memory
//! is its own): the warehouse (CSV load, session-start broadcast until its
//! `S(W)` comes back on the stream, then a snapshot on stop), a full replica
//! and a one-store node joining late through the replay feed (ready time,
//! resident memory, digest checked against the warehouse's full and subset
//! digests). Last, in this process: the snapshot loaded back into a
//! warehouse, which then decides a million orders (decisions per second at
//! that size, the per-command path of the `warehouse` criterion bench).
//! Prints one JSON object per run.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use tally_benches::{stamp, Rng};
use tally_client::client::ClientConfig;
use tally_client::consumer::{ConsumerConfig, StreamConsumer};
use tally_client::replica::{LocationSet, Replica, ReplicaLimits};
use tally_config::ApplianceConfig;
use tally_sequencer::appliance::{Appliance, Control};
use tally_warehouse::app::{WarehouseApp, WarehouseAppConfig};
use tally_warehouse::decide::{CatchUp, EventBuf, Warehouse, WarehouseConfig};
use tally_wire::{Message, Order};

/// Scale benchmark: a chain's inventory (dense: 1 M SKUs × 16 locations;
/// sparse: 50 000 SKUs × 2 000 locations at 10 % fill) through the
/// warehouse's session start, late-joining replicas and store nodes,
/// snapshots and decisions.
#[derive(Parser, Debug)]
#[command(name = "tally-scale", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Step,
}

#[derive(Subcommand, Debug)]
enum Step {
    /// Runs the benchmark (the other steps are its child processes).
    Run(RunArgs),
    #[command(hide = true)]
    Warehouse(ChildArgs),
    #[command(hide = true)]
    Replica(ReplicaArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Shape {
    /// Every SKU in every location (default 1 000 000 × 16).
    Dense,
    /// Each SKU in `--fill-percent` of the locations (default 50 000 ×
    /// 2 000 at 10 %).
    Sparse,
}

#[derive(Parser, Debug)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "dense")]
    shape: Shape,
    /// SKUs (default: by shape).
    #[arg(long)]
    skus: Option<u32>,
    /// Locations (default: by shape).
    #[arg(long)]
    locations: Option<u16>,
    /// Percent of (SKU, location) cells stocked (default: by shape).
    #[arg(long)]
    fill_percent: Option<u32>,
    /// Runs (each with a fresh journal); the CSV is generated once.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Orders decided by the restored warehouse (decisions/s).
    #[arg(long, default_value_t = 1_000_000)]
    orders: u32,
    /// Working directory (CSV, journals, snapshots).
    #[arg(long, default_value = "target/tally-scale")]
    dir: PathBuf,
    /// First of four ports.
    #[arg(long, default_value_t = 31_200)]
    port_base: u16,
}

#[derive(Parser, Debug)]
struct ChildArgs {
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    inventory: PathBuf,
    #[arg(long)]
    snapshot: PathBuf,
    /// The store whose subset digest to report.
    #[arg(long)]
    store: u16,
}

#[derive(Parser, Debug)]
struct ReplicaArgs {
    #[arg(long)]
    config: PathBuf,
    /// Keep only this location (a store node); default: everything.
    #[arg(long)]
    keep: Option<u16>,
    /// Ready once this seq is applied.
    #[arg(long)]
    until_seq: u64,
}

const PASSWORD: &str = "scalepass";
const WH_ORIGIN: u16 = 900;

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Step::Run(args) => run(args),
        Step::Warehouse(args) => child_warehouse(args),
        Step::Replica(args) => child_replica(args),
    };
    if let Err(error) = result {
        eprintln!("tally-scale: error: {error:#}");
        std::process::exit(1);
    }
}

/// (VmRSS, VmHWM) of this process, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Sizes {
    skus: u32,
    locations: u16,
    fill_percent: u32,
}

fn sizes(args: &RunArgs) -> Sizes {
    let (skus, locations, fill) = match args.shape {
        Shape::Dense => (1_000_000, 16, 100),
        Shape::Sparse => (50_000, 2_000, 10),
    };
    Sizes {
        skus: args.skus.unwrap_or(skus),
        locations: args.locations.unwrap_or(locations),
        fill_percent: args.fill_percent.unwrap_or(fill).clamp(1, 100),
    }
}

/// Whether the cell (sku, location) is stocked: a fixed hash, so every run
/// and every size sees the same chain.
fn stocked(sku: u32, location: u16, fill_percent: u32) -> bool {
    if fill_percent >= 100 {
        return true;
    }
    let mut rng = Rng::new((u64::from(sku) << 16) | u64::from(location));
    rng.below(100) < u64::from(fill_percent)
}

/// Writes the CSV; returns the cells written.
fn generate(path: &Path, sizes: &Sizes) -> anyhow::Result<u64> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    writeln!(out, "location,sku_symbol,quantity")?;
    let mut cells = 0u64;
    for sku in 0..sizes.skus {
        for location in 0..sizes.locations {
            if stocked(sku, location, sizes.fill_percent) {
                writeln!(out, "ST{location:04},K{sku:07},1000000")?;
                cells += 1;
            }
        }
    }
    out.flush()?;
    Ok(cells)
}

fn config_text(port_base: u16, journal: &Path, limits: &ReplicaLimits) -> String {
    let hash = tally_config::gateway::hash_password(PASSWORD);
    format!(
        r#"
[stream]
session = "SCALE"
group = "239.255.98.1"
port = {stream}
interface = "127.0.0.1"
ttl = 0
loopback = true
# A tail lost on loopback during the broadcast burst is noticed at the next
# heartbeat: 100 ms instead of the default 1 s.
heartbeat_interval_ms = 100

[gateway]
listen = "127.0.0.1:{gateway}"
rate_limit_per_sec = 1000000000
rate_burst = 100000000
ring_messages = 65536

[[clients]]
username = "wh"
password_hash = "{hash}"
client_id = {WH_ORIGIN}
role = "authority"

[[clients]]
username = "reader"
password_hash = "{hash}"
client_id = 901
role = "reader"

[retransmit]
listen = "127.0.0.1:{retransmit}"

[replay]
listen = "127.0.0.1:{replay}"

[journal]
dir = "{journal}"
fsync = "none"

[limits]
skus_max = {skus}
locations_max = {locations}
cells_max = {cells}
holds_max = {holds}
orders_max = {orders}
pending_max = {pending}
"#,
        stream = port_base,
        gateway = port_base + 1,
        retransmit = port_base + 2,
        replay = port_base + 3,
        journal = journal.display(),
        skus = limits.skus_max,
        locations = limits.locations_max,
        cells = limits.cells_max,
        holds = limits.holds_max,
        orders = limits.orders_max,
        pending = limits.pending_max,
    )
}

/// A child process of this binary with a JSON line protocol on stdout.
struct ChildProcess {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl ChildProcess {
    fn spawn(args: &[String]) -> anyhow::Result<ChildProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a child")?;
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(ChildProcess { child, stdout })
    }

    /// The next JSON line (the child prints one per step, or exits).
    fn line(&mut self) -> anyhow::Result<serde_json::Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("a child exited ({status}) without its report");
        }
        Ok(serde_json::from_str(&line)?)
    }

    fn tell_stop(&mut self) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().expect("piped");
        writeln!(stdin, "stop")?;
        stdin.flush()?;
        Ok(())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let sizes = sizes(args);
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let csv = dir.join(format!(
        "chain-{}x{}-{}pct.csv",
        sizes.skus, sizes.locations, sizes.fill_percent
    ));
    let generating = Instant::now();
    let cells = generate(&csv, &sizes)?;
    let generate_ms = generating.elapsed().as_millis() as u64;
    let dense = sizes.fill_percent >= 100;
    let limits = ReplicaLimits {
        skus_max: sizes.skus,
        locations_max: sizes.locations,
        // Dense: every cell (the dense layout); sparse: the cells plus 5 %.
        cells_max: if dense {
            (u64::from(sizes.skus) * u64::from(sizes.locations)).min(1 << 31) as u32
        } else {
            (cells + cells / 20 + 1024).min(1 << 31) as u32
        },
        holds_max: 1 << 16,
        orders_max: 1 << 20,
        pending_max: 1 << 16,
    };
    limits.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    for run in 1..=args.runs {
        let run_dir = dir.join(format!("run-{run}"));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(run_dir.join("journal"))?;
        let config_path = run_dir.join("tally.toml");
        std::fs::write(
            &config_path,
            config_text(args.port_base, &run_dir.join("journal"), &limits),
        )?;
        let report = one_run(args, &sizes, &csv, cells, &config_path, &run_dir, limits)?;
        let mut report = report;
        report["run"] = run.into();
        report["csv_generate_ms"] = generate_ms.into();
        println!("{report}");
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(())
}

fn one_run(
    args: &RunArgs,
    sizes: &Sizes,
    csv: &Path,
    cells: u64,
    config_path: &Path,
    run_dir: &Path,
    limits: ReplicaLimits,
) -> anyhow::Result<serde_json::Value> {
    let config = ApplianceConfig::load(config_path).map_err(anyhow::Error::msg)?;
    let appliance = Appliance::start(&config, Arc::new(Control::default()), &Default::default())
        .context("starting the appliance")?;
    let snapshot = run_dir.join("warehouse.snapshot");
    let Reports {
        seq,
        online,
        full,
        node,
        stopped,
    } = run_processes(config_path, csv, &snapshot)?;
    let (snapshot_load_ms, decisions_per_sec) = restore_and_decide(args, sizes, &snapshot, limits)?;
    appliance.stop().context("stopping the appliance")?;
    Ok(serde_json::json!({
        "skus": sizes.skus,
        "locations": sizes.locations,
        "fill_percent": sizes.fill_percent,
        "cells": cells,
        "limits": format!("{limits:?}"),
        "stream_seq": seq,
        "csv_load_ms": online["load_ms"],
        "broadcast_events": online["broadcast_events"],
        "broadcast_handed_ms": online["broadcast_handed_ms"],
        "broadcast_until_sw_ms": online["broadcast_until_sw_ms"],
        "warehouse_start_ms": online["start_ms"],
        "warehouse_rss_mib": online["rss_mib"],
        "warehouse_hwm_mib": online["hwm_mib"],
        "full_replica_ready_ms": full["ready_ms"],
        "full_replica_rss_mib": full["rss_mib"],
        "full_replica_hwm_mib": full["hwm_mib"],
        "store_node_ready_ms": node["ready_ms"],
        "store_node_rss_mib": node["rss_mib"],
        "store_node_hwm_mib": node["hwm_mib"],
        "store_node_cells": node["cells"],
        "snapshot_save_ms": stopped["snapshot_save_ms"],
        "snapshot_bytes": stopped["snapshot_bytes"],
        "snapshot_load_ms": snapshot_load_ms,
        "decisions_per_sec": decisions_per_sec,
        "digests_agree": true,
    }))
}

/// What the child processes reported: the warehouse once online and once
/// stopped, a full replica and a store node at the warehouse's seq.
struct Reports {
    seq: u64,
    online: serde_json::Value,
    full: serde_json::Value,
    node: serde_json::Value,
    stopped: serde_json::Value,
}

/// Starts the warehouse (keeping store 1's digest too) from `csv`, then a
/// full replica and a store node up to its seq; stops the warehouse (it
/// saves `snapshot`). Fails unless the digests agree.
fn run_processes(config_path: &Path, csv: &Path, snapshot: &Path) -> anyhow::Result<Reports> {
    let store: u16 = 1;
    let path = |p: &Path| p.display().to_string();
    let mut warehouse = ChildProcess::spawn(&[
        "warehouse".into(),
        "--config".into(),
        path(config_path),
        "--inventory".into(),
        path(csv),
        "--snapshot".into(),
        path(snapshot),
        "--store".into(),
        store.to_string(),
    ])?;
    let online = warehouse.line()?;
    let seq = online["seq"].as_u64().context("seq")?;
    let replica = |keep: Option<u16>| -> anyhow::Result<serde_json::Value> {
        let mut argv = vec![
            "replica".to_string(),
            "--config".into(),
            path(config_path),
            "--until-seq".into(),
            seq.to_string(),
        ];
        if let Some(location) = keep {
            argv.extend(["--keep".to_string(), location.to_string()]);
        }
        let mut child = ChildProcess::spawn(&argv)?;
        child.line()
    };
    let full = replica(None)?;
    let node = replica(Some(store))?;
    warehouse.tell_stop()?;
    let stopped = warehouse.line()?;
    drop(warehouse);
    anyhow::ensure!(
        full["digest"] == online["digest"],
        "full replica digest {} != warehouse {}",
        full["digest"],
        online["digest"]
    );
    anyhow::ensure!(
        node["digest"] == online["store_digest"],
        "store node digest {} != warehouse's subset {}",
        node["digest"],
        online["store_digest"]
    );
    Ok(Reports {
        seq,
        online,
        full,
        node,
        stopped,
    })
}

/// Snapshot load, then decisions at this size: the load's ms and the
/// decisions per second.
fn restore_and_decide(
    args: &RunArgs,
    sizes: &Sizes,
    snapshot: &Path,
    limits: ReplicaLimits,
) -> anyhow::Result<(u64, f64)> {
    let engine_config = WarehouseConfig {
        own_origin: WH_ORIGIN,
        limits,
    };
    let loading = Instant::now();
    let (mut engine, info) = Warehouse::restore(snapshot, engine_config)
        .map_err(|e| anyhow::anyhow!("restoring {}: {e}", snapshot.display()))?;
    let snapshot_load_ms = loading.elapsed().as_millis() as u64;
    let mut buf = EventBuf::new();
    match engine.finish_catch_up(&mut buf) {
        Ok(CatchUp::Done { .. }) => {}
        other => bail!("the restored warehouse did not go live: {other:?}"),
    }
    let decisions_per_sec = decide(&mut engine, info.seq + 1, sizes, args.orders);
    Ok((snapshot_load_ms, decisions_per_sec))
}

/// Decides `orders` orders at random (location, SKU) — both ids present, so
/// some land on cells that do not exist in a sparse chain and are rejected —
/// through `on_stream`, each decision's events coming back as its own stream
/// messages, as in the `warehouse` criterion bench. Returns decisions/s.
fn decide(engine: &mut Warehouse, first_seq: u64, sizes: &Sizes, orders: u32) -> f64 {
    let mut rng = Rng::new(11);
    let mut client_seq = [0u32; 17];
    let bytes: Vec<Vec<u8>> = (0..u64::from(orders))
        .map(|g| {
            let origin = 1 + (g % 16) as u16;
            let location = 1 + rng.below(u64::from(sizes.locations)) as u16;
            let sku = 1 + rng.below(u64::from(sizes.skus)) as u32;
            client_seq[usize::from(origin)] += 1;
            stamp(
                Order::new(g + 1, location, sku, 1).as_bytes().to_vec(),
                origin,
                client_seq[usize::from(origin)],
                1_700_000_000_000_000_000 + g * 1000,
            )
        })
        .collect();
    let messages: Vec<Message> = bytes.iter().map(|b| Message::parse(b).unwrap()).collect();
    let mut seq = first_seq;
    let mut buf = EventBuf::new();
    let mut own = EventBuf::new();
    let started = Instant::now();
    for message in &messages {
        buf.clear();
        engine.on_stream(seq, message, &mut buf);
        seq += 1;
        for event in buf.iter() {
            own.clear();
            engine.on_stream(seq, &Message::parse(event).unwrap(), &mut own);
            seq += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(engine.replica().oversold(), 0);
    f64::from(orders) / seconds
}

/// The warehouse, in its own process: start (load, broadcast), report when
/// its `S(W)` is back on the stream, run until told to stop, save the
/// snapshot, report.
fn child_warehouse(args: &ChildArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let appliance = ApplianceConfig::load(&args.config).map_err(anyhow::Error::msg)?;
    let limits = ReplicaLimits::from_config(&appliance.limits);
    let config = WarehouseAppConfig {
        consumer: ConsumerConfig::for_appliance(&appliance, "reader", PASSWORD),
        client: ClientConfig::for_appliance(&appliance, "wh", PASSWORD),
        own_origin: WH_ORIGIN,
        limits,
        inventory: Some(args.inventory.clone()),
        snapshot: Some(args.snapshot.clone()),
        snapshot_interval: Duration::ZERO,
        expiry_check_interval: Duration::from_millis(100),
        catch_up_timeout: Duration::from_secs(300),
    };
    let mut app = WarehouseApp::start(config)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while app.engine().replica().authority_online_seq() == 0 || !app.is_quiet() {
        anyhow::ensure!(Instant::now() < deadline, "S(W) never came back");
        app.poll()?;
    }
    let start_ms = started.elapsed().as_millis() as u64;
    let stats = app.stats();
    let engine = app.engine();
    let (rss, hwm) = rss_mib();
    let online = serde_json::json!({
        "seq": engine.replica().last_seq(),
        "digest": format!("{:016x}", engine.digest()),
        "store_digest": format!("{:016x}", engine.digest_of(&LocationSet::of(&[args.store]))),
        "load_ms": stats.inventory_load_ms,
        "broadcast_events": stats.broadcast_events,
        "broadcast_handed_ms": stats.broadcast_handed_ms,
        // From the broadcast's start (after the load) until S(W) is back.
        "broadcast_until_sw_ms": start_ms.saturating_sub(stats.inventory_load_ms),
        "start_ms": start_ms,
        "rss_mib": rss,
        "hwm_mib": hwm,
    });
    println!("{online}");
    std::io::stdout().flush()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            stop.store(true, Ordering::Release);
        });
    }
    app.run(&stop)?;
    let bytes = std::fs::metadata(&args.snapshot)
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "snapshot_save_ms": app.stats().snapshot_save_ms,
            "snapshot_bytes": bytes,
        })
    );
    Ok(())
}

/// A replica joining late, in its own process: from seq 1 through the
/// replay feed until `until_seq`; reports time, memory and digest.
fn child_replica(args: &ReplicaArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let appliance = ApplianceConfig::load(&args.config).map_err(anyhow::Error::msg)?;
    let mut limits = ReplicaLimits::from_config(&appliance.limits);
    if args.keep.is_some() {
        // A store node: room for one location's cells and few ids.
        limits.cells_max = limits.skus_max;
        limits.orders_max = 4096;
        limits.holds_max = 4096;
        limits.pending_max = 1 << 16;
    }
    // A store node's cell table is sized for its location only from the
    // start (Replica::keeping), so its peak memory is its own.
    let mut replica = match args.keep {
        Some(location) => Replica::keeping(limits, LocationSet::of(&[location])),
        None => Replica::new(limits),
    };
    let mut config = ConsumerConfig::for_appliance(&appliance, "reader", PASSWORD);
    config.start_seq = 1;
    let mut consumer = StreamConsumer::new(&config)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while replica.last_seq() < args.until_seq {
        anyhow::ensure!(
            Instant::now() < deadline,
            "replica at {} of {}",
            replica.last_seq(),
            args.until_seq
        );
        consumer.wait(Duration::from_millis(10), |seq, message| {
            replica.apply(seq, &message);
        })?;
    }
    let ready_ms = started.elapsed().as_millis() as u64;
    let (rss, hwm) = rss_mib();
    println!(
        "{}",
        serde_json::json!({
            "ready_ms": ready_ms,
            "digest": format!("{:016x}", replica.digest()),
            "cells": replica.cell_count(),
            "rss_mib": rss,
            "hwm_mib": hwm,
            "dropped_events": replica.counters().dropped_events,
        })
    );
    Ok(())
}
