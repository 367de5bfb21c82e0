//! What every application binary asks on its command line: where the
//! appliance is and who to log in as. The appliance's own configuration file
//! names every address (stream, gateway, retransmit, replay), so an
//! application on the same host — or with a copy of that file — needs only
//! `--config` and its credentials.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tally_config::ApplianceConfig;

use crate::client::ClientConfig;
use crate::consumer::ConsumerConfig;
use crate::replica::ReplicaLimits;

/// `--config`, `--user`, `--password` / `--password-file`.
#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    /// The appliance configuration file (it names the stream, gateway,
    /// retransmit and replay addresses).
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        default_value = "config/tally.toml"
    )]
    pub config: PathBuf,
    /// Username to log in with (gateway for senders, replay feed for
    /// readers).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Password (prefer --password-file: the command line is visible to
    /// other users of the host).
    #[arg(long, value_name = "PASSWORD", conflicts_with = "password_file")]
    pub password: Option<String>,
    /// File whose first line is the password.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

impl ConnectArgs {
    /// The appliance configuration.
    pub fn appliance(&self) -> anyhow::Result<ApplianceConfig> {
        ApplianceConfig::load(&self.config).map_err(anyhow::Error::msg)
    }

    /// The username, or `default` when none was given.
    pub fn user_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.user.as_deref().unwrap_or(default)
    }

    /// The password, or `default` when none was given.
    pub fn password_or(&self, default: &str) -> anyhow::Result<String> {
        if let Some(password) = &self.password {
            return Ok(password.clone());
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the password file {}", path.display()))?;
            return Ok(text.lines().next().unwrap_or("").to_string());
        }
        Ok(default.to_string())
    }

    /// A stream consumer for this appliance, reading the replay feed as
    /// (`default_user`, `default_password`) unless told otherwise. It joins
    /// the appliance's current session (blank session: the replay feed's or
    /// the first packet's), which after rollovers is a later one than the
    /// configured `[stream] session` ([`crate::follow`]).
    pub fn consumer(
        &self,
        appliance: &ApplianceConfig,
        default_user: &str,
        default_password: &str,
    ) -> anyhow::Result<ConsumerConfig> {
        let mut config = ConsumerConfig::for_appliance(
            appliance,
            self.user_or(default_user),
            &self.password_or(default_password)?,
        );
        config.session = tally_wire::mold::Session::BLANK;
        Ok(config)
    }

    /// An order-entry client for this appliance.
    pub fn client(
        &self,
        appliance: &ApplianceConfig,
        default_user: &str,
        default_password: &str,
    ) -> anyhow::Result<ClientConfig> {
        Ok(ClientConfig::for_appliance(
            appliance,
            self.user_or(default_user),
            &self.password_or(default_password)?,
        ))
    }
}

/// Logs to stderr through `tracing`, `RUST_LOG` deciding the level (default
/// `info`), without colours when stderr is not a terminal.
pub fn init_logging() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// `--skus-max` … `--pending-max`: one process's overrides of the
/// configuration's `[limits]`, the one place the state's capacity lives.
#[derive(Args, Clone, Debug, Default)]
pub struct LimitsArgs {
    /// SKUs the state can hold (default: the configuration's [limits]).
    #[arg(long)]
    pub skus_max: Option<u32>,
    /// Locations the state can hold (default: [limits]).
    #[arg(long)]
    pub locations_max: Option<u16>,
    /// Cells (location, sku) the state can hold (default: [limits]).
    #[arg(long)]
    pub cells_max: Option<u32>,
    /// Open holds the state can hold (default: [limits]).
    #[arg(long)]
    pub holds_max: Option<u32>,
    /// Order, hold and transfer ids remembered, for modify/cancel and
    /// duplicate checks (default: [limits]).
    #[arg(long)]
    pub orders_max: Option<u32>,
    /// Commands remembered until their outcome arrives (default: [limits]).
    #[arg(long)]
    pub pending_max: Option<u32>,
}

impl LimitsArgs {
    /// The configuration's `[limits]` with this process's overrides,
    /// validated; `what` names the table in the error ("replica", "state").
    pub fn limits(&self, appliance: &ApplianceConfig, what: &str) -> anyhow::Result<ReplicaLimits> {
        let mut limits = ReplicaLimits::from_config(&appliance.limits);
        let overrides = [
            (self.skus_max, &mut limits.skus_max),
            (self.cells_max, &mut limits.cells_max),
            (self.holds_max, &mut limits.holds_max),
            (self.orders_max, &mut limits.orders_max),
            (self.pending_max, &mut limits.pending_max),
        ];
        for (flag, limit) in overrides {
            if let Some(value) = flag {
                *limit = value;
            }
        }
        if let Some(value) = self.locations_max {
            limits.locations_max = value;
        }
        limits
            .validate()
            .map_err(|error| anyhow::anyhow!("{what} limits {limits:?}: {error}"))?;
        Ok(limits)
    }
}
