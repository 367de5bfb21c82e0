//! `tally-demo --serve`: the whole stack on loopback with the sample
//! inventory and no load (the appliance, the warehouse, the HTTP service
//! with its dashboard and `/v1` API), until interrupted.
//!
//! Ports: `port_base` is the stream, `+1` the gateway, `+2` the retransmit
//! server, `+3` the replay feed, `+4` the HTTP service. The configuration
//! it runs with is written to `dir/tally.toml` (a fresh session each run);
//! the demo users' passwords to `dir/USER.password`, for `tally-ctl
//! --password-file`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tally_client::consumer::ConsumerConfig;
use tally_client::replica::ReplicaLimits;
use tally_config::ApplianceConfig;
use tally_monitor::{HttpAuthConfig, Monitor, MonitorConfig, MonitorHandle, WritesConfig};

use crate::{demo_client, ApplianceSpec, RunningAppliance, RunningWarehouse, DEMO_CLIENTS};

/// The multicast group `--serve` streams on by default.
pub const SERVE_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 1);

/// What `--serve` needs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Stream port; the other ports follow it (module docs).
    pub port_base: u16,
    /// The stream's multicast group.
    pub group: Ipv4Addr,
    /// Journal, configuration and password files.
    pub dir: PathBuf,
    /// The initial inventory (CSV: location,sku_symbol,quantity).
    pub inventory: PathBuf,
}

/// The running stack; dropping it stops everything (HTTP first).
pub struct Served {
    pub config_path: PathBuf,
    pub config: ApplianceConfig,
    pub monitor: MonitorHandle,
    pub warehouse: RunningWarehouse,
    pub appliance: RunningAppliance,
}

impl Served {
    /// `http://127.0.0.1:PORT`.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.monitor.local_addr())
    }

    /// The first line `--serve --json` prints.
    pub fn summary(&self, dir: &Path) -> Value {
        let mut credentials = serde_json::Map::new();
        for role in ["pos", "ops", "reader", "authority"] {
            if let Some(client) = DEMO_CLIENTS.iter().find(|c| c.role == role) {
                credentials.insert(
                    role.into(),
                    json!({
                        "user": client.username,
                        "password": client.password,
                        "password_file": password_file(dir, client.username),
                    }),
                );
            }
        }
        json!({
            "http": self.http_base(),
            "dashboard": format!("{}/", self.http_base()),
            "config": self.config_path,
            "gateway": self.config.gateway.listen,
            "credentials": credentials,
        })
    }

    /// Stops everything: HTTP, warehouse, appliance.
    pub fn stop(self) -> anyhow::Result<()> {
        let Served {
            monitor,
            warehouse,
            appliance,
            ..
        } = self;
        monitor.stop().context("stopping the HTTP service")?;
        warehouse.stop().context("stopping the warehouse")?;
        appliance.stop().context("stopping the appliance")
    }
}

/// Where the password of `user` is written.
pub fn password_file(dir: &Path, user: &str) -> PathBuf {
    dir.join(format!("{user}.password"))
}

/// Starts the whole stack (see the module docs).
pub fn serve(options: &ServeOptions) -> anyhow::Result<Served> {
    if options.port_base == 0 || options.port_base > u16::MAX - 4 {
        bail!("--port-base must be 1..={}", u16::MAX - 4);
    }
    if !options.group.is_multicast() {
        bail!("--group {} is not a multicast group", options.group);
    }
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let dir = std::fs::canonicalize(&options.dir)?;
    let mut spec = ApplianceSpec::new(options.port_base, options.group, dir.join("journal"));
    spec.session = "DEMO".to_string();
    spec.heartbeat_interval_ms = 1000;
    let http: SocketAddr = (Ipv4Addr::LOCALHOST, options.port_base + 4).into();
    let config_path = dir.join("tally.toml");
    let text = format!(
        "# Written by tally-demo --serve (the HTTP service listens on {http}).\n{}",
        spec.toml()
    );
    // A fresh session each run: the journal directory is the demo's own.
    for old in [spec.journal_dir.clone(), dir.join("http-state")] {
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    std::fs::write(&config_path, text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    for client in DEMO_CLIENTS {
        std::fs::write(password_file(&dir, client.username), client.password)?;
    }
    let config = ApplianceConfig::load(&config_path).map_err(anyhow::Error::msg)?;
    let appliance = RunningAppliance::start(&config).context("starting the appliance")?;
    let limits = ReplicaLimits::from_config(&config.limits);
    let warehouse = RunningWarehouse::start(&spec, &options.inventory, limits);
    let reader = demo_client("read1");
    let mut monitor_config = MonitorConfig::new(
        http,
        ConsumerConfig::for_appliance(&config, reader.username, reader.password),
    );
    monitor_config.consumer.start_seq = 1;
    monitor_config.limits = limits;
    monitor_config.auth = HttpAuthConfig::from_appliance(&config).map_err(anyhow::Error::msg)?;
    monitor_config.writes = Some(WritesConfig::new(config.clone(), dir.join("http-state")));
    let monitor = Monitor::start(monitor_config)
        .with_context(|| format!("starting the HTTP service on {http}"))?;
    let ready = monitor.wait_until(Duration::from_secs(30), |model, now_ns| {
        model.readiness(now_ns).is_ok()
    });
    if !ready {
        bail!("the HTTP service's replica did not catch up within 30 s");
    }
    Ok(Served {
        config_path,
        config,
        monitor,
        warehouse,
        appliance,
    })
}
