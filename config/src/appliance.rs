//! The appliance's one configuration file (TOML), loaded once at start-up,
//! validated, then passed by reference. Every error names the key that is
//! wrong: unknown keys and type errors come from the TOML parser with their
//! line; value errors from [`ApplianceConfig::validate`].
//!
//! The documented example is `config/tally.toml` at the repository root.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
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

/// `[limits]`: table sizes of the inventory state (the warehouse's and every
/// replica's), allocated once at start. The sequencer itself does not use
/// them; the applications check them (`tally_client::replica::ReplicaLimits`)
/// and say at start which one is too small for the stream, with the numbers.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// SKUs in the directory.
    #[serde(default = "default_limits_skus_max")]
    pub skus_max: u32,
    /// Locations in the directory.
    #[serde(default = "default_limits_locations_max")]
    pub locations_max: u16,
    /// Cells (location, sku) that exist; memory grows with this, not with
    /// skus_max × locations_max.
    #[serde(default = "default_limits_cells_max")]
    pub cells_max: u32,
    /// Open holds.
    #[serde(default = "default_limits_holds_max")]
    pub holds_max: u32,
    /// Order, hold and transfer ids remembered (modify/cancel, duplicates).
    #[serde(default = "default_limits_orders_max")]
    pub orders_max: u32,
    /// Commands remembered until their outcome arrives.
    #[serde(default = "default_limits_pending_max")]
    pub pending_max: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            skus_max: default_limits_skus_max(),
            locations_max: default_limits_locations_max(),
            cells_max: default_limits_cells_max(),
            holds_max: default_limits_holds_max(),
            orders_max: default_limits_orders_max(),
            pending_max: default_limits_pending_max(),
        }
    }
}

fn default_limits_skus_max() -> u32 {
    4096
}
fn default_limits_locations_max() -> u16 {
    16
}
fn default_limits_cells_max() -> u32 {
    4096 * 16
}
fn default_limits_holds_max() -> u32 {
    4096
}
fn default_limits_orders_max() -> u32 {
    1 << 16
}
fn default_limits_pending_max() -> u32 {
    1 << 16
}

/// `[stream]`: the multicast stream.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Session name, up to 10 printable ASCII characters (e.g. a trading day).
    pub session: String,
    /// Multicast group address.
    pub group: Ipv4Addr,
    /// UDP port of the stream.
    pub port: u16,
    /// Address of the interface multicast is sent through.
    pub interface: Ipv4Addr,
    /// Multicast TTL (1 = the local segment).
    #[serde(default = "default_ttl")]
    pub ttl: u8,
    /// Whether local receivers on the sending host hear the stream.
    #[serde(default = "default_true")]
    pub loopback: bool,
    /// Largest datagram, MoldUDP64 header included.
    #[serde(default = "default_payload_bytes_max")]
    pub payload_bytes_max: usize,
    /// Heartbeat after this long without traffic.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
}

/// `[gateway]`: SoupBinTCP order entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    pub listen: SocketAddr,
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    #[serde(default = "default_rate_limit_per_sec")]
    pub rate_limit_per_sec: u32,
    #[serde(default = "default_rate_burst")]
    pub rate_burst: u32,
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "default_peer_timeout_ms")]
    pub peer_timeout_ms: u64,
    #[serde(default = "default_ack_history")]
    pub ack_history_per_client: usize,
    /// Depth of each gateway ↔ sequencer ring, in messages.
    #[serde(default = "default_ring_messages")]
    pub ring_messages: usize,
    /// Receive buffer per connection, bytes.
    #[serde(default = "default_gateway_recv_buffer_bytes")]
    pub recv_buffer_bytes: usize,
    /// Send buffer per connection, bytes (must hold a full ack replay).
    #[serde(default = "default_gateway_send_buffer_bytes")]
    pub send_buffer_bytes: usize,
    /// Password checks queued at once, all sources together.
    #[serde(default = "default_gateway_auth_queue_depth")]
    pub auth_queue_depth: usize,
    /// Connections accepted and not yet logged in, held at once.
    #[serde(default = "default_gateway_max_login_connections")]
    pub max_login_connections: usize,
    /// Of those, from one source address.
    #[serde(default = "default_gateway_max_login_connections_per_source")]
    pub max_login_connections_per_source: usize,
    /// Deadline for a connection to log in after its accept.
    #[serde(default = "default_gateway_login_timeout_ms")]
    pub login_timeout_ms: u64,
    /// New connections per second one source address may open.
    #[serde(default = "default_gateway_source_connects_per_sec")]
    pub source_connects_per_sec: u32,
    /// New connections one source address may open back to back.
    #[serde(default = "default_gateway_source_connect_burst")]
    pub source_connect_burst: u32,
    /// Failed logins from one address before its back-off starts.
    #[serde(default = "default_gateway_login_failures_before_backoff")]
    pub login_failures_before_backoff: u32,
    /// Back-off after a source's first failed login (doubles per failure).
    #[serde(default = "default_gateway_login_backoff_base_ms")]
    pub login_backoff_base_ms: u64,
    /// Longest back-off after failed logins.
    #[serde(default = "default_gateway_login_backoff_max_ms")]
    pub login_backoff_max_ms: u64,
    /// Failed logins one username may take per minute, from anywhere.
    #[serde(default = "default_gateway_username_failures_per_min")]
    pub username_failures_per_min: u32,
    /// Failed logins one username may take back to back.
    #[serde(default = "default_gateway_username_failure_burst")]
    pub username_failure_burst: u32,
    /// Password checks one source address may have in flight.
    #[serde(default = "default_gateway_auth_in_flight_per_source")]
    pub auth_in_flight_per_source: usize,
    /// Buckets of the per-source throttle table.
    #[serde(default = "default_gateway_source_table_entries")]
    pub source_table_entries: usize,
    /// Bounds on a SoupBinTCP 4.1 login's requested heartbeat timeout.
    #[serde(default = "default_gateway_heartbeat_timeout_min_ms")]
    pub heartbeat_timeout_min_ms: u64,
    #[serde(default = "default_gateway_heartbeat_timeout_max_ms")]
    pub heartbeat_timeout_max_ms: u64,
}

/// `[[clients]]`: one entry per client that may log in.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    pub username: String,
    /// argon2 PHC string from `tally-sequencer hash-password`.
    pub password_hash: String,
    /// The client's origin on the stream, 1..=65535.
    pub client_id: u16,
    /// `pos`, `ops`, `authority` or `reader`.
    pub role: String,
}

/// `[retransmit]`: the MoldUDP64 re-request server.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetransmitConfig {
    pub listen: SocketAddrV4,
    /// Most messages answered per request (a larger count is capped).
    #[serde(default = "default_retransmit_messages_max")]
    pub messages_per_request_max: u16,
    /// Requests per second allowed from one address (token bucket).
    #[serde(default = "default_retransmit_rate")]
    pub requests_per_sec_per_requester: u32,
    /// Burst allowance of that bucket.
    #[serde(default = "default_retransmit_burst")]
    pub request_burst: u32,
    /// Cells per row of the per-source table (request buckets and reply
    /// byte budgets; `retransmit::SOURCE_TABLE_ROWS` rows, hashed, never
    /// evicted). More cells: fewer innocent sources sharing a cell with a
    /// flooder.
    #[serde(default = "default_requesters_max")]
    pub requesters_max: usize,
    /// Networks (CIDR, e.g. `"10.1.0.0/16"`) whose requests are answered;
    /// any other source gets nothing (counted). Absent: loopback and the
    /// subnet of the interface holding `stream.interface`.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Reply bytes (MoldUDP64 datagram bytes) per second one source address
    /// may receive, sustained.
    #[serde(default = "default_reply_bytes_per_sec_per_source")]
    pub reply_bytes_per_sec_per_source: u64,
    /// Reply bytes one source address may receive back to back.
    #[serde(default = "default_reply_burst_bytes_per_source")]
    pub reply_burst_bytes_per_source: u64,
    /// Reply bytes per second for all sources together.
    #[serde(default = "default_reply_bytes_per_sec")]
    pub reply_bytes_per_sec: u64,
    /// Reply bytes all sources together may receive back to back.
    #[serde(default = "default_reply_burst_bytes")]
    pub reply_burst_bytes: u64,
}

/// `[replay]`: the SoupBinTCP replay feed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    pub listen: SocketAddr,
    #[serde(default = "default_replay_clients_max")]
    pub clients_max: usize,
    /// Per-client send buffer; a client that keeps it full past
    /// `stall_timeout_ms` is cut off.
    #[serde(default = "default_replay_send_buffer_bytes")]
    pub send_buffer_bytes: usize,
    /// A client that drains none of what waits for it for this long (or
    /// less than half its send buffer while the buffer is full) is cut off.
    #[serde(default = "default_replay_stall_timeout_ms")]
    pub stall_timeout_ms: u64,
    /// Sessions one username may hold at once; a further login is refused.
    #[serde(default = "default_replay_sessions_per_client_max")]
    pub sessions_per_client_max: usize,
    /// A connection that has not sent its Login Request this long after
    /// connecting is closed.
    #[serde(default = "default_replay_login_timeout_ms")]
    pub login_timeout_ms: u64,
    /// Connections not logged in yet that one source address may hold; a
    /// further one is closed at accept.
    #[serde(default = "default_replay_logins_pending_per_source_max")]
    pub logins_pending_per_source_max: usize,
    /// Bounds of the heartbeat timeout a SoupBinTCP 4.1 client may request
    /// (a request outside is clamped; none, or 0, keeps 15 s).
    #[serde(default = "default_replay_heartbeat_timeout_min_ms")]
    pub heartbeat_timeout_min_ms: u64,
    #[serde(default = "default_replay_heartbeat_timeout_max_ms")]
    pub heartbeat_timeout_max_ms: u64,
}

/// `[http]`: the HTTP read side (`tally-monitor`). Every endpoint but
/// `/health` and `/ready` needs HTTP Basic credentials of a `[[clients]]`
/// entry whose role may read.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Roles whose credentials may read (`reader`, `ops`, `authority`,
    /// `pos`); others get 403.
    #[serde(default = "default_http_read_roles")]
    pub read_roles: Vec<String>,
    /// Whether `/metrics` answers without credentials (for a scraper).
    #[serde(default)]
    pub metrics_public: bool,
    /// Verified credentials remembered, so a request costs no argon2 run.
    #[serde(default = "default_http_credential_cache_entries")]
    pub credential_cache_entries: usize,
    /// How long a verified credential is remembered.
    #[serde(default = "default_http_credential_cache_ttl_ms")]
    pub credential_cache_ttl_ms: u64,
    /// Password verifications (argon2 runs) per second one source address
    /// may cause; beyond it, 429 without a verification.
    #[serde(default = "default_http_verifications_per_sec_per_source")]
    pub verifications_per_sec_per_source: u32,
    /// Verifications one source may cause back to back.
    #[serde(default = "default_http_verification_burst")]
    pub verification_burst: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            read_roles: default_http_read_roles(),
            metrics_public: false,
            credential_cache_entries: default_http_credential_cache_entries(),
            credential_cache_ttl_ms: default_http_credential_cache_ttl_ms(),
            verifications_per_sec_per_source: default_http_verifications_per_sec_per_source(),
            verification_burst: default_http_verification_burst(),
        }
    }
}

impl HttpConfig {
    /// The read roles, parsed.
    pub fn roles(&self) -> Result<Vec<Role>, ConfigError> {
        self.read_roles
            .iter()
            .enumerate()
            .map(|(index, name)| {
                name.parse::<Role>()
                    .map_err(|error| bad(format!("http.read_roles[{index}]"), error.to_string()))
            })
            .collect()
    }
}

/// `[journal]`: the write-ahead journal.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Directory of the journal files (relative paths are relative to the
    /// directory of the configuration file).
    pub dir: PathBuf,
    /// `none`, `batch` or `interval`.
    #[serde(default = "default_fsync")]
    pub fsync: String,
    /// With `fsync = "interval"`: the longest a write stays unsynced.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// Re-requests for messages older than `next_seq - retention_messages`
    /// are ignored (counted); the replay feed still serves them.
    #[serde(default = "default_retention_messages")]
    pub retention_messages: u64,
}

/// `[loops.*]`: placement and idle strategy of each loop.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopsConfig {
    /// `auto` (default), `shared` or `dedicated`: see [`Threading`].
    pub threading: Option<String>,
    #[serde(default)]
    pub gateway: LoopConfig,
    #[serde(default)]
    pub sequencer: LoopConfig,
    #[serde(default)]
    pub retransmit: LoopConfig,
    #[serde(default)]
    pub replay: LoopConfig,
}

/// One loop's placement.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// CPU core to pin to; unpinned when absent.
    pub core: Option<usize>,
    /// `busy-spin`, `yield` or `back-off` (default).
    pub idle: Option<String>,
}

/// `[counters]`: the shared-memory counter file for `tally-stat`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountersConfig {
    /// Path of the counter file; default `<journal.dir>/tally-sequencer.counters`.
    pub path: Option<PathBuf>,
}

fn default_ttl() -> u8 {
    1
}
fn default_true() -> bool {
    true
}
fn default_payload_bytes_max() -> usize {
    tally_wire::mold::DEFAULT_PAYLOAD_LIMIT
}
fn default_heartbeat_interval_ms() -> u64 {
    1000
}
fn default_max_sessions() -> usize {
    GatewayConfig::DEFAULT_MAX_SESSIONS
}
fn default_max_frame_bytes() -> usize {
    GatewayConfig::DEFAULT_MAX_FRAME_BYTES
}
fn default_rate_limit_per_sec() -> u32 {
    GatewayConfig::DEFAULT_RATE_LIMIT_PER_SEC
}
fn default_rate_burst() -> u32 {
    GatewayConfig::DEFAULT_RATE_BURST
}
fn default_peer_timeout_ms() -> u64 {
    15_000
}
fn default_ack_history() -> usize {
    GatewayConfig::DEFAULT_ACK_HISTORY_PER_CLIENT
}
fn default_ring_messages() -> usize {
    16_384
}
fn default_gateway_recv_buffer_bytes() -> usize {
    GatewayConfig::DEFAULT_RECV_BUFFER_BYTES
}
fn default_gateway_send_buffer_bytes() -> usize {
    GatewayConfig::DEFAULT_SEND_BUFFER_BYTES
}
fn default_gateway_auth_queue_depth() -> usize {
    GatewayConfig::DEFAULT_AUTH_QUEUE_DEPTH
}
fn default_gateway_max_login_connections() -> usize {
    GatewayConfig::DEFAULT_MAX_LOGIN_CONNECTIONS
}
fn default_gateway_max_login_connections_per_source() -> usize {
    GatewayConfig::DEFAULT_MAX_LOGIN_CONNECTIONS_PER_SOURCE
}
fn default_gateway_login_timeout_ms() -> u64 {
    GatewayConfig::DEFAULT_LOGIN_TIMEOUT_NS / 1_000_000
}
fn default_gateway_source_connects_per_sec() -> u32 {
    GatewayConfig::DEFAULT_SOURCE_CONNECTS_PER_SEC
}
fn default_gateway_source_connect_burst() -> u32 {
    GatewayConfig::DEFAULT_SOURCE_CONNECT_BURST
}
fn default_gateway_login_failures_before_backoff() -> u32 {
    GatewayConfig::DEFAULT_LOGIN_FAILURES_BEFORE_BACKOFF
}
fn default_gateway_login_backoff_base_ms() -> u64 {
    GatewayConfig::DEFAULT_LOGIN_BACKOFF_BASE_NS / 1_000_000
}
fn default_gateway_login_backoff_max_ms() -> u64 {
    GatewayConfig::DEFAULT_LOGIN_BACKOFF_MAX_NS / 1_000_000
}
fn default_gateway_username_failures_per_min() -> u32 {
    GatewayConfig::DEFAULT_USERNAME_FAILURES_PER_MIN
}
fn default_gateway_username_failure_burst() -> u32 {
    GatewayConfig::DEFAULT_USERNAME_FAILURE_BURST
}
fn default_gateway_auth_in_flight_per_source() -> usize {
    GatewayConfig::DEFAULT_AUTH_IN_FLIGHT_PER_SOURCE
}
fn default_gateway_source_table_entries() -> usize {
    GatewayConfig::DEFAULT_SOURCE_TABLE_ENTRIES
}
fn default_gateway_heartbeat_timeout_min_ms() -> u64 {
    GatewayConfig::DEFAULT_HEARTBEAT_TIMEOUT_MIN_NS / 1_000_000
}
fn default_gateway_heartbeat_timeout_max_ms() -> u64 {
    GatewayConfig::DEFAULT_HEARTBEAT_TIMEOUT_MAX_NS / 1_000_000
}
fn default_retransmit_messages_max() -> u16 {
    1000
}
fn default_retransmit_rate() -> u32 {
    1000
}
fn default_retransmit_burst() -> u32 {
    200
}
fn default_requesters_max() -> usize {
    16_384
}
fn default_reply_bytes_per_sec_per_source() -> u64 {
    2_000_000
}
fn default_reply_burst_bytes_per_source() -> u64 {
    256 * 1024
}
fn default_reply_bytes_per_sec() -> u64 {
    50_000_000
}
fn default_reply_burst_bytes() -> u64 {
    1 << 20
}
fn default_replay_clients_max() -> usize {
    64
}
fn default_replay_send_buffer_bytes() -> usize {
    4 << 20
}
fn default_replay_stall_timeout_ms() -> u64 {
    10_000
}
fn default_replay_sessions_per_client_max() -> usize {
    8
}
fn default_replay_login_timeout_ms() -> u64 {
    5_000
}
fn default_replay_logins_pending_per_source_max() -> usize {
    8
}
fn default_replay_heartbeat_timeout_min_ms() -> u64 {
    3_000
}
fn default_replay_heartbeat_timeout_max_ms() -> u64 {
    60_000
}
fn default_http_read_roles() -> Vec<String> {
    vec!["reader".into(), "ops".into(), "authority".into()]
}
fn default_http_credential_cache_entries() -> usize {
    256
}
fn default_http_credential_cache_ttl_ms() -> u64 {
    600_000
}
fn default_http_verifications_per_sec_per_source() -> u32 {
    2
}
fn default_http_verification_burst() -> u32 {
    5
}
fn default_fsync() -> String {
    "none".to_string()
}
fn default_fsync_interval_ms() -> u64 {
    10
}
fn default_retention_messages() -> u64 {
    100_000_000
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

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.session()?;
        self.check_roles()?;
        let stream = &self.stream;
        if !stream.group.is_multicast() {
            return Err(bad(
                "stream.group",
                format!("{} is not a multicast address", stream.group),
            ));
        }
        if stream.port == 0 {
            return Err(bad("stream.port", "must not be 0"));
        }
        let smallest = tally_wire::mold::MoldHeader::SIZE + 2 + tally_wire::MAX_MESSAGE_SIZE;
        if !(smallest + 1..=65_507).contains(&stream.payload_bytes_max) {
            return Err(bad(
                "stream.payload_bytes_max",
                format!("must be between {} and 65507 bytes", smallest + 1),
            ));
        }
        if stream.heartbeat_interval_ms == 0 {
            return Err(bad("stream.heartbeat_interval_ms", "must be at least 1"));
        }
        if self.gateway.ring_messages < 2 {
            return Err(bad("gateway.ring_messages", "must be at least 2"));
        }
        self.gateway_config().validate().map_err(|error| {
            let key = if error.field.starts_with("clients") {
                error.field.clone()
            } else {
                format!("gateway.{}", error.field)
            };
            bad(key, error.reason)
        })?;
        if self.retransmit.messages_per_request_max == 0 {
            return Err(bad(
                "retransmit.messages_per_request_max",
                "must be at least 1",
            ));
        }
        if self.retransmit.requests_per_sec_per_requester == 0 {
            return Err(bad(
                "retransmit.requests_per_sec_per_requester",
                "must be at least 1",
            ));
        }
        if self.retransmit.request_burst == 0 {
            return Err(bad("retransmit.request_burst", "must be at least 1"));
        }
        if self.retransmit.requesters_max == 0 {
            return Err(bad("retransmit.requesters_max", "must be at least 1"));
        }
        if self.retransmit.requesters_max > 1 << 24 {
            return Err(bad("retransmit.requesters_max", "must be at most 16777216"));
        }
        self.retransmit_allow()?;
        for (key, value) in [
            (
                "retransmit.reply_bytes_per_sec_per_source",
                self.retransmit.reply_bytes_per_sec_per_source,
            ),
            (
                "retransmit.reply_bytes_per_sec",
                self.retransmit.reply_bytes_per_sec,
            ),
        ] {
            if value == 0 {
                return Err(bad(key, "must be at least 1"));
            }
        }
        let smallest_reply =
            (tally_wire::mold::MoldHeader::SIZE + 2 + tally_wire::MAX_MESSAGE_SIZE) as u64;
        for (key, value) in [
            (
                "retransmit.reply_burst_bytes_per_source",
                self.retransmit.reply_burst_bytes_per_source,
            ),
            (
                "retransmit.reply_burst_bytes",
                self.retransmit.reply_burst_bytes,
            ),
        ] {
            if value < smallest_reply {
                return Err(bad(
                    key,
                    format!("must be at least {smallest_reply} (one reply of the largest message)"),
                ));
            }
            if value > REPLY_BURST_BYTES_MAX {
                return Err(bad(key, "must be at most 8589934592 (8 GiB)"));
            }
        }
        if self.replay.clients_max == 0 {
            return Err(bad("replay.clients_max", "must be at least 1"));
        }
        if self.replay.sessions_per_client_max == 0 {
            return Err(bad("replay.sessions_per_client_max", "must be at least 1"));
        }
        if self.replay.login_timeout_ms == 0 {
            return Err(bad("replay.login_timeout_ms", "must be at least 1"));
        }
        if self.replay.logins_pending_per_source_max == 0 {
            return Err(bad(
                "replay.logins_pending_per_source_max",
                "must be at least 1",
            ));
        }
        if self.replay.stall_timeout_ms == 0 {
            return Err(bad("replay.stall_timeout_ms", "must be at least 1"));
        }
        if self.replay.heartbeat_timeout_min_ms < 1000
            || self.replay.heartbeat_timeout_min_ms > self.replay.heartbeat_timeout_max_ms
        {
            return Err(bad(
                "replay.heartbeat_timeout_min_ms",
                "must be at least 1000 and at most replay.heartbeat_timeout_max_ms",
            ));
        }
        self.http.roles()?;
        if self.http.credential_cache_entries == 0 || self.http.credential_cache_entries > 65_536 {
            return Err(bad("http.credential_cache_entries", "must be in 1..=65536"));
        }
        if self.http.verifications_per_sec_per_source == 0 {
            return Err(bad(
                "http.verifications_per_sec_per_source",
                "must be at least 1",
            ));
        }
        if self.http.verification_burst == 0 {
            return Err(bad("http.verification_burst", "must be at least 1"));
        }
        if self.replay.send_buffer_bytes < 64 * 1024 {
            return Err(bad("replay.send_buffer_bytes", "must be at least 65536"));
        }
        self.fsync_policy()?;
        if self.journal.retention_messages == 0 {
            return Err(bad("journal.retention_messages", "must be at least 1"));
        }
        self.threading()?;
        for (name, _) in self.loop_configs() {
            self.placement(name)?;
        }
        let listens = [
            ("gateway.listen", self.gateway.listen),
            ("retransmit.listen", SocketAddr::V4(self.retransmit.listen)),
            ("replay.listen", self.replay.listen),
        ];
        for (index, (key, addr)) in listens.iter().enumerate() {
            for (other_key, other) in &listens[..index] {
                if addr == other && addr.port() != 0 {
                    return Err(bad(*key, format!("{addr} is also {other_key}")));
                }
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$hmIkIn7P32nSp0oF7ibLSQqvtQ0iT4AdYnCsgEG1+Yo";

    fn minimal() -> String {
        format!(
            r#"
[stream]
session = "DAY1"
group = "239.255.0.1"
port = 31001
interface = "127.0.0.1"

[gateway]
listen = "127.0.0.1:31000"

[[clients]]
username = "pos1"
password_hash = "{HASH}"
client_id = 1
role = "pos"

[retransmit]
listen = "127.0.0.1:31002"

[replay]
listen = "127.0.0.1:31003"

[journal]
dir = "journal"
"#
        )
    }

    #[test]
    fn minimal_file_parses_with_defaults() {
        let config = ApplianceConfig::parse(&minimal()).unwrap();
        assert_eq!(config.stream.payload_bytes_max, 1400);
        assert_eq!(config.fsync_policy().unwrap(), FsyncPolicy::None);
        assert_eq!(
            config.placement("sequencer").unwrap().idle,
            IdleStrategy::DEFAULT_BACK_OFF
        );
        assert_eq!(config.session().unwrap().as_str(), "DAY1");
    }

    fn error_for(from: &str, to: &str) -> String {
        let text = minimal().replacen(from, to, 1);
        assert_ne!(text, minimal(), "replacement {from:?} did not apply");
        ApplianceConfig::parse(&text).unwrap_err()
    }

    /// The documented example parses, with the hostile-client defaults it
    /// shows.
    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../tally.toml");
        let config = ApplianceConfig::parse(text).unwrap();
        assert_eq!(config.retransmit.allow, None);
        let allow = config.retransmit_allow().unwrap();
        assert!(allow.allows(Ipv4Addr::new(127, 9, 9, 9)));
        assert!(!allow.allows(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(config.replay.sessions_per_client_max, 8);
        assert_eq!(config.http.roles().unwrap().len(), 3);
        assert!(!config.http.metrics_public);
        // Absent sections and keys: the same safe defaults.
        let minimal = ApplianceConfig::parse(&minimal()).unwrap();
        assert_eq!(
            minimal.replay.login_timeout_ms,
            config.replay.login_timeout_ms
        );
        assert_eq!(
            minimal.retransmit.reply_burst_bytes_per_source,
            config.retransmit.reply_burst_bytes_per_source
        );
        assert_eq!(minimal.http.read_roles, config.http.read_roles);
    }

    #[test]
    fn hostile_client_keys_are_checked() {
        let retransmit = "listen = \"127.0.0.1:31002\"";
        assert!(error_for(
            retransmit,
            &format!("{retransmit}\nallow = [\"10.0.0.0/33\"]")
        )
        .contains("retransmit.allow[0]"));
        assert!(error_for(retransmit, &format!("{retransmit}\nallow = []"))
            .contains("retransmit.allow"));
        assert!(error_for(
            retransmit,
            &format!("{retransmit}\nreply_burst_bytes_per_source = 10")
        )
        .contains("retransmit.reply_burst_bytes_per_source"));
        let replay = "listen = \"127.0.0.1:31003\"";
        assert!(
            error_for(replay, &format!("{replay}\nsessions_per_client_max = 0"))
                .contains("replay.sessions_per_client_max")
        );
        assert!(
            error_for(replay, &format!("{replay}\nheartbeat_timeout_min_ms = 500"))
                .contains("replay.heartbeat_timeout_min_ms")
        );
        assert!(
            error_for("[journal]", "[http]\nread_roles = [\"king\"]\n[journal]")
                .contains("http.read_roles[0]")
        );
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            error_for("group = \"239.255.0.1\"", "group = \"10.0.0.1\"").contains("stream.group")
        );
        assert!(
            error_for("session = \"DAY1\"", "session = \"MUCH-TOO-LONG\"")
                .contains("stream.session")
        );
        assert!(
            error_for("[journal]", "[journal]\nfsync = \"sometimes\"").contains("journal.fsync")
        );
        assert!(error_for("role = \"pos\"", "role = \"king\"").contains("clients[0].role"));
        assert!(error_for("client_id = 1", "client_id = 0").contains("clients[0].client_id"));
        assert!(error_for("[gateway]", "[gateway]\nbogus = 1").contains("bogus"));
        assert!(error_for(
            "listen = \"127.0.0.1:31003\"",
            "listen = \"127.0.0.1:31002\""
        )
        .contains("replay.listen"));
        assert!(
            error_for("[journal]", "[loops.gateway]\nidle = \"nap\"\n[journal]")
                .contains("loops.gateway.idle")
        );
        assert!(
            error_for("[journal]", "[loops.sequencer]\ncore = 4096\n[journal]")
                .contains("loops.sequencer.core")
        );
        assert!(error_for("password_hash = ", "password_hash = \"plain\" #")
            .contains("clients[0].password_hash"));
    }
}
