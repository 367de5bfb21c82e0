//! `--scenario outcome`: orders through the whole loop, till → appliance →
//! warehouse → appliance → till, measured by the tills' own round-trip
//! histograms.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use tally_client::client::ClientConfig;
use tally_client::consumer::ConsumerConfig;
use tally_client::replica::ReplicaLimits;
use tally_config::ApplianceConfig;
use tally_demo::load::{LoadConfig, LoadGenerator, Mix};
use tally_pos::{rtt_histogram, Pos, PosConfig, PosStats};
use tally_warehouse::app::{WarehouseApp, WarehouseAppConfig};

use crate::{Cli, PASSWORD};

/// A till's thread: its round trips and figures once `--seconds` passed.
type TillThread = JoinHandle<anyhow::Result<(Histogram<u64>, PosStats)>>;

/// Orders through the whole loop: till → appliance → warehouse → appliance →
/// till, measured by the tills' own round-trip histograms.
pub(crate) fn outcome(
    cli: &Cli,
    config: &ApplianceConfig,
    dir: &Path,
) -> anyhow::Result<serde_json::Value> {
    let inventory = deep_inventory(dir)?;
    let stop = Arc::new(AtomicBool::new(false));
    let warehouse = start_warehouse(config, inventory, &stop)?;
    let per_till = (cli.rate / u64::from(cli.clients)).max(1);
    let until = Instant::now() + Duration::from_secs(cli.seconds);
    let mut tills = Vec::new();
    for id in 1..=cli.clients {
        tills.push(spawn_till(config, id, per_till, until, &stop)?);
    }
    let mut histogram = rtt_histogram();
    let mut filled = 0;
    let mut rejected = 0;
    let mut skipped = 0;
    let mut result = Ok(());
    for till in tills {
        match till.join().expect("till thread") {
            Ok((h, stats)) => {
                histogram.add(&h)?;
                filled += stats.filled;
                rejected += stats.rejected + stats.gateway_rejected;
                skipped += stats.skipped_would_fail;
            }
            Err(error) => result = Err(error),
        }
    }
    stop.store(true, Ordering::Release);
    warehouse.join().expect("warehouse thread")?;
    result?;
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(serde_json::json!({
        "scenario": "outcome",
        "clients": cli.clients,
        "rate_per_sec": cli.rate,
        "orders_answered": histogram.len(),
        "filled": filled,
        "rejected": rejected,
        "skipped": skipped,
        "order_rtt_p50_us": us(0.50),
        "order_rtt_p99_us": us(0.99),
        "order_rtt_p999_us": us(0.999),
        "order_rtt_max_us": histogram.max() as f64 / 1000.0,
        "idle": cli.idle,
        "fsync": cli.fsync,
    }))
}

/// Deep stock, so orders are decided, not skipped: 4 stores x 100 SKUs,
/// written to `dir`.
fn deep_inventory(dir: &Path) -> anyhow::Result<PathBuf> {
    let inventory = dir.join("bench-inventory.csv");
    let mut csv = String::from("location,sku_symbol,quantity\n");
    for store in 1..=4 {
        for sku in 1..=100 {
            csv.push_str(&format!("STORE-{store},SKU-{sku:03},100000000\n"));
        }
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(&inventory, csv)?;
    Ok(inventory)
}

/// The warehouse (`bwh`) on its own thread until `stop`; returns once it
/// is deciding.
fn start_warehouse(
    config: &ApplianceConfig,
    inventory: PathBuf,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let warehouse_config = WarehouseAppConfig {
        consumer: ConsumerConfig::for_appliance(config, "bwh", PASSWORD),
        client: ClientConfig::for_appliance(config, "bwh", PASSWORD),
        own_origin: 900,
        limits: ReplicaLimits::small(),
        inventory: Some(inventory),
        snapshot: None,
        snapshot_interval: Duration::ZERO,
        expiry_check_interval: Duration::from_millis(100),
        catch_up_timeout: Duration::from_secs(30),
    };
    let warehouse = {
        let stop = Arc::clone(stop);
        std::thread::Builder::new()
            .name("bench-warehouse".into())
            .spawn(move || {
                let mut app = match WarehouseApp::start(warehouse_config) {
                    Ok(app) => app,
                    Err(error) => {
                        let _ = ready_tx.send(false);
                        return Err(error);
                    }
                };
                let _ = ready_tx.send(true);
                app.run(&stop)
            })?
    };
    if !ready_rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or(false)
    {
        stop.store(true, Ordering::Release);
        warehouse.join().expect("warehouse thread")?;
        bail!("the warehouse did not start");
    }
    Ok(warehouse)
}

/// Till `b{id}` sending orders only, one unit each, `per_till` a second
/// until `until`.
fn spawn_till(
    config: &ApplianceConfig,
    id: u16,
    per_till: u64,
    until: Instant,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<TillThread> {
    let pos_config = PosConfig::for_appliance(config, &format!("b{id}"), PASSWORD)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut load = LoadConfig::new(u64::from(id));
    load.rate_per_sec = per_till;
    load.qty_max = 1;
    load.mix = Mix {
        order: 1,
        modify: 0,
        cancel: 0,
        reserve: 0,
        confirm: 0,
        release: 0,
    };
    let mut load = LoadGenerator::new(load).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = Arc::clone(stop);
    Ok(std::thread::Builder::new()
        .name(format!("bench-pos-{id}"))
        .spawn(move || {
            let mut pos = Pos::new(pos_config).map_err(|e| anyhow::anyhow!("{e}"))?;
            if !pos
                .wait_ready(Duration::from_secs(30))
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                bail!("till b{id} never saw the warehouse's directory");
            }
            load.run(&mut pos, &stop, Some(until), |_| {})
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::Ok((pos.histogram().clone(), pos.stats()))
        })?)
}
