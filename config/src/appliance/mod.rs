//! The appliance's one configuration file (TOML), loaded once at start-up,
//! validated, then passed by reference. Every error names the key that is
//! wrong: unknown keys and type errors come from the TOML parser with their
//! line; value errors from [`ApplianceConfig::validate`].
//!
//! The documented example is `config/tally.toml` at the repository root.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::gateway::{ClientEntry, GatewayConfig, Role};
use serde::Deserialize;
use tally_runtime::idle::IdleStrategy;
use tally_runtime::net::AllowList;
use tally_runtime::net::MulticastConfig;
use tally_wire::mold::Session;

/// When the journal calls `fdatasync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Never: the journal survives a process crash (the page cache holds it),
    /// not a host crash.
    None,
    /// Before each packet is published: survives a host crash; costs one
    /// `fdatasync` per packet.
    Batch,
    /// At most this many nanoseconds after a write: bounds what a host crash
    /// can lose.
    Interval { interval_ns: u64 },
}

/// Largest `retransmit.reply_burst_bytes*` (the retransmit server's token
/// buckets count nano-bytes in a u64).
pub const REPLY_BURST_BYTES_MAX: u64 = 1 << 33;

mod sections;
#[cfg(test)]
mod tests;
mod validate;

pub use sections::*;

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    pub stream: StreamConfig,
    pub gateway: GatewaySection,
    #[serde(default)]
    pub clients: Vec<ClientSection>,
    pub retransmit: RetransmitConfig,
    pub replay: ReplayConfig,
    pub journal: JournalConfig,
    #[serde(default)]
    pub loops: LoopsConfig,
    #[serde(default)]
    pub counters: CountersConfig,
    /// `[http]`: the HTTP read side (`tally-monitor`); absent = defaults.
    #[serde(default)]
    pub http: HttpConfig,
    /// `[limits]`: the capacity of the inventory state every application
    /// rebuilds (the one place for it; flags may override it for one
    /// process); absent = small defaults.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// A configuration that cannot be used; names the key.
#[derive(Debug)]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn bad(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// How the order path's loops are laid out on threads (after Aeron's
/// threading modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threading {
    /// The gateway and the sequencer (with the publisher and the journal)
    /// run on one thread: a command goes from its TCP receive to its ack and
    /// its multicast packet without a thread hand-off or a wake-up. Placed
    /// and idled as `[loops.sequencer]` says. The retransmit server and the
    /// replay feed keep their own (mostly parked) threads.
    Shared,
    /// Every loop on its own thread (for hosts with a core per loop, pinned,
    /// `busy-spin`).
    Dedicated,
}

impl Threading {
    /// `auto`: shared on hosts with fewer than 6 CPUs available to the
    /// process (four loops and a client cannot each have a core there, and
    /// hand-offs between parked threads cost more than the work), dedicated
    /// on larger hosts.
    pub fn auto(cpus: usize) -> Threading {
        if cpus < 6 {
            Threading::Shared
        } else {
            Threading::Dedicated
        }
    }

    /// The name used in the configuration and the logs.
    pub fn name(self) -> &'static str {
        match self {
            Threading::Shared => "shared",
            Threading::Dedicated => "dedicated",
        }
    }
}

/// Placement of one loop, parsed.
#[derive(Clone, Copy, Debug)]
pub struct LoopPlacement {
    pub core: Option<usize>,
    pub idle: IdleStrategy,
}

impl ApplianceConfig {
    /// Reads, parses and validates `path`. Relative paths inside are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<ApplianceConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("reading {}: {error}", path.display()))?;
        let mut config =
            Self::parse(&text).map_err(|error| format!("{}: {error}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if config.journal.dir.is_relative() {
            config.journal.dir = base.join(&config.journal.dir);
        }
        if let Some(counters) = &mut config.counters.path {
            if counters.is_relative() {
                *counters = base.join(&*counters);
            }
        }
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<ApplianceConfig, String> {
        let config: ApplianceConfig = toml::from_str(text).map_err(|error| error.to_string())?;
        config.validate().map_err(|error| error.to_string())?;
        Ok(config)
    }

    /// The retransmit server's allow-list: `retransmit.allow`, or loopback
    /// and the stream interface's subnet.
    pub fn retransmit_allow(&self) -> Result<AllowList, ConfigError> {
        AllowList::from_texts(self.retransmit.allow.as_deref(), self.stream.interface).map_err(
            |(index, reason)| ConfigError {
                key: match index {
                    Some(index) => format!("retransmit.allow[{index}]"),
                    None => "retransmit.allow".into(),
                },
                reason,
            },
        )
    }

    /// The session name, parsed.
    pub fn session(&self) -> Result<Session, ConfigError> {
        let session = Session::from_str(&self.stream.session)
            .map_err(|error| bad("stream.session", error.to_string()))?;
        if session.is_blank() {
            return Err(bad("stream.session", "must not be blank"));
        }
        Ok(session)
    }

    /// The multicast settings for the publisher and local receivers.
    pub fn multicast(&self) -> MulticastConfig {
        MulticastConfig {
            group: self.stream.group,
            port: self.stream.port,
            interface: self.stream.interface,
            ttl: self.stream.ttl,
            loopback: self.stream.loopback,
        }
    }

    /// The fsync policy, parsed.
    pub fn fsync_policy(&self) -> Result<FsyncPolicy, ConfigError> {
        match self.journal.fsync.as_str() {
            "none" => Ok(FsyncPolicy::None),
            "batch" => Ok(FsyncPolicy::Batch),
            "interval" => {
                if self.journal.fsync_interval_ms == 0 {
                    return Err(bad("journal.fsync_interval_ms", "must be at least 1"));
                }
                Ok(FsyncPolicy::Interval {
                    interval_ns: self.journal.fsync_interval_ms * 1_000_000,
                })
            }
            other => Err(bad(
                "journal.fsync",
                format!("{other:?} is not one of \"none\", \"batch\", \"interval\""),
            )),
        }
    }

    fn loop_configs(&self) -> [(&'static str, &LoopConfig); 4] {
        [
            ("gateway", &self.loops.gateway),
            ("sequencer", &self.loops.sequencer),
            ("retransmit", &self.loops.retransmit),
            ("replay", &self.loops.replay),
        ]
    }

    /// The threading mode: `[loops] threading`, or chosen from the CPUs
    /// available to this process when absent or `auto`. The second value
    /// says whether it was chosen automatically.
    pub fn threading(&self) -> Result<(Threading, bool), ConfigError> {
        match self.loops.threading.as_deref() {
            None | Some("auto") => {
                let cpus = tally_runtime::thread::available_cores().len().max(1);
                Ok((Threading::auto(cpus), true))
            }
            Some("shared") => Ok((Threading::Shared, false)),
            Some("dedicated") => Ok((Threading::Dedicated, false)),
            Some(other) => Err(bad(
                "loops.threading",
                format!("{other:?} is not one of auto, shared, dedicated"),
            )),
        }
    }

    /// The placement of loop `name` (`gateway`, `sequencer`, `retransmit`,
    /// `replay`).
    pub fn placement(&self, name: &str) -> Result<LoopPlacement, ConfigError> {
        let (_, config) = self
            .loop_configs()
            .into_iter()
            .find(|(loop_name, _)| *loop_name == name)
            .expect("a known loop name");
        let idle = match &config.idle {
            None => IdleStrategy::DEFAULT_BACK_OFF,
            Some(text) => text
                .parse()
                .map_err(|error| bad(format!("loops.{name}.idle"), format!("{error}")))?,
        };
        if let Some(core) = config.core {
            let cores = tally_runtime::thread::available_cores();
            if !cores.contains(&core) {
                return Err(bad(
                    format!("loops.{name}.core"),
                    format!("core {core} is not available to this process (available: {cores:?})"),
                ));
            }
        }
        Ok(LoopPlacement {
            core: config.core,
            idle,
        })
    }

    /// The gateway's typed configuration.
    pub fn gateway_config(&self) -> GatewayConfig {
        let session = self.session().unwrap_or(Session::BLANK);
        let mut config = GatewayConfig::new(self.gateway.listen, session, self.client_entries());
        config.max_sessions = self.gateway.max_sessions;
        config.max_frame_bytes = self.gateway.max_frame_bytes;
        config.heartbeat_interval_ns = self.gateway.heartbeat_interval_ms * 1_000_000;
        config.peer_timeout_ns = self.gateway.peer_timeout_ms * 1_000_000;
        config.rate_limit_per_sec = self.gateway.rate_limit_per_sec;
        config.rate_burst = self.gateway.rate_burst;
        config.ack_history_per_client = self.gateway.ack_history_per_client;
        let gateway = &self.gateway;
        config.recv_buffer_bytes = gateway.recv_buffer_bytes;
        config.send_buffer_bytes = gateway.send_buffer_bytes;
        config.auth_queue_depth = gateway.auth_queue_depth;
        config.max_login_connections = gateway.max_login_connections;
        config.max_login_connections_per_source = gateway.max_login_connections_per_source;
        config.login_timeout_ns = gateway.login_timeout_ms.saturating_mul(1_000_000);
        config.source_connects_per_sec = gateway.source_connects_per_sec;
        config.source_connect_burst = gateway.source_connect_burst;
        config.login_failures_before_backoff = gateway.login_failures_before_backoff;
        config.login_backoff_base_ns = gateway.login_backoff_base_ms.saturating_mul(1_000_000);
        config.login_backoff_max_ns = gateway.login_backoff_max_ms.saturating_mul(1_000_000);
        config.username_failures_per_min = gateway.username_failures_per_min;
        config.username_failure_burst = gateway.username_failure_burst;
        config.auth_in_flight_per_source = gateway.auth_in_flight_per_source;
        config.source_table_entries = gateway.source_table_entries;
        config.heartbeat_timeout_min_ns =
            gateway.heartbeat_timeout_min_ms.saturating_mul(1_000_000);
        config.heartbeat_timeout_max_ns =
            gateway.heartbeat_timeout_max_ms.saturating_mul(1_000_000);
        config
    }

    /// Clients as the gateway sees them. An unknown role name becomes a
    /// validation error naming `clients[i].role`.
    fn client_entries(&self) -> Vec<ClientEntry> {
        self.clients
            .iter()
            .map(|client| ClientEntry {
                username: client.username.clone(),
                password_hash: client.password_hash.clone(),
                client_id: client.client_id,
                role: client.role.parse().unwrap_or(Role::Reader),
            })
            .collect()
    }

    /// Validates role names.
    fn check_roles(&self) -> Result<(), ConfigError> {
        for (index, client) in self.clients.iter().enumerate() {
            client
                .role
                .parse::<Role>()
                .map_err(|error| bad(format!("clients[{index}].role"), error.to_string()))?;
        }
        Ok(())
    }

    /// Where the counter file goes.
    pub fn counters_path(&self) -> PathBuf {
        self.counters
            .path
            .clone()
            .unwrap_or_else(|| self.journal.dir.join("tally-sequencer.counters"))
    }
}
