//! The file's sections, one struct each, with their defaults.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use serde::Deserialize;

use super::{bad, ConfigError};
use crate::gateway::{GatewayConfig, Role};

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

pub(super) fn default_limits_skus_max() -> u32 {
    4096
}
pub(super) fn default_limits_locations_max() -> u16 {
    16
}
pub(super) fn default_limits_cells_max() -> u32 {
    4096 * 16
}
pub(super) fn default_limits_holds_max() -> u32 {
    4096
}
pub(super) fn default_limits_orders_max() -> u32 {
    1 << 16
}
pub(super) fn default_limits_pending_max() -> u32 {
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
    /// Rollover: after `S(E)`, how long to wait for the authority's `S(F)`
    /// before ending the session without it.
    #[serde(default = "default_close_grace_ms")]
    pub close_grace_ms: u64,
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
    /// Ended sessions whose journal pair is kept at a rollover (the
    /// newest ones of the session chain); older pairs are deleted.
    /// 0 keeps them all.
    #[serde(default)]
    pub keep_ended_sessions: u32,
}

/// `[loops.*]`: placement and idle strategy of each loop.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopsConfig {
    /// `auto` (default), `shared` or `dedicated`: see [`Threading`](super::Threading).
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

pub(super) fn default_ttl() -> u8 {
    1
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_payload_bytes_max() -> usize {
    tally_wire::mold::DEFAULT_PAYLOAD_LIMIT
}
pub(super) fn default_heartbeat_interval_ms() -> u64 {
    1000
}
pub(super) fn default_max_sessions() -> usize {
    GatewayConfig::DEFAULT_MAX_SESSIONS
}
pub(super) fn default_max_frame_bytes() -> usize {
    GatewayConfig::DEFAULT_MAX_FRAME_BYTES
}
pub(super) fn default_rate_limit_per_sec() -> u32 {
    GatewayConfig::DEFAULT_RATE_LIMIT_PER_SEC
}
pub(super) fn default_rate_burst() -> u32 {
    GatewayConfig::DEFAULT_RATE_BURST
}
pub(super) fn default_peer_timeout_ms() -> u64 {
    15_000
}
pub(super) fn default_ack_history() -> usize {
    GatewayConfig::DEFAULT_ACK_HISTORY_PER_CLIENT
}
pub(super) fn default_ring_messages() -> usize {
    16_384
}
pub(super) fn default_gateway_recv_buffer_bytes() -> usize {
    GatewayConfig::DEFAULT_RECV_BUFFER_BYTES
}
pub(super) fn default_gateway_send_buffer_bytes() -> usize {
    GatewayConfig::DEFAULT_SEND_BUFFER_BYTES
}
pub(super) fn default_gateway_auth_queue_depth() -> usize {
    GatewayConfig::DEFAULT_AUTH_QUEUE_DEPTH
}
pub(super) fn default_gateway_max_login_connections() -> usize {
    GatewayConfig::DEFAULT_MAX_LOGIN_CONNECTIONS
}
pub(super) fn default_gateway_max_login_connections_per_source() -> usize {
    GatewayConfig::DEFAULT_MAX_LOGIN_CONNECTIONS_PER_SOURCE
}
pub(super) fn default_gateway_login_timeout_ms() -> u64 {
    GatewayConfig::DEFAULT_LOGIN_TIMEOUT_NS / 1_000_000
}
pub(super) fn default_gateway_source_connects_per_sec() -> u32 {
    GatewayConfig::DEFAULT_SOURCE_CONNECTS_PER_SEC
}
pub(super) fn default_gateway_source_connect_burst() -> u32 {
    GatewayConfig::DEFAULT_SOURCE_CONNECT_BURST
}
pub(super) fn default_gateway_login_failures_before_backoff() -> u32 {
    GatewayConfig::DEFAULT_LOGIN_FAILURES_BEFORE_BACKOFF
}
pub(super) fn default_gateway_login_backoff_base_ms() -> u64 {
    GatewayConfig::DEFAULT_LOGIN_BACKOFF_BASE_NS / 1_000_000
}
pub(super) fn default_gateway_login_backoff_max_ms() -> u64 {
    GatewayConfig::DEFAULT_LOGIN_BACKOFF_MAX_NS / 1_000_000
}
pub(super) fn default_gateway_username_failures_per_min() -> u32 {
    GatewayConfig::DEFAULT_USERNAME_FAILURES_PER_MIN
}
pub(super) fn default_gateway_username_failure_burst() -> u32 {
    GatewayConfig::DEFAULT_USERNAME_FAILURE_BURST
}
pub(super) fn default_gateway_auth_in_flight_per_source() -> usize {
    GatewayConfig::DEFAULT_AUTH_IN_FLIGHT_PER_SOURCE
}
pub(super) fn default_gateway_source_table_entries() -> usize {
    GatewayConfig::DEFAULT_SOURCE_TABLE_ENTRIES
}
pub(super) fn default_gateway_heartbeat_timeout_min_ms() -> u64 {
    GatewayConfig::DEFAULT_HEARTBEAT_TIMEOUT_MIN_NS / 1_000_000
}
pub(super) fn default_gateway_heartbeat_timeout_max_ms() -> u64 {
    GatewayConfig::DEFAULT_HEARTBEAT_TIMEOUT_MAX_NS / 1_000_000
}
pub(super) fn default_retransmit_messages_max() -> u16 {
    1000
}
pub(super) fn default_retransmit_rate() -> u32 {
    1000
}
pub(super) fn default_retransmit_burst() -> u32 {
    200
}
pub(super) fn default_requesters_max() -> usize {
    16_384
}
pub(super) fn default_reply_bytes_per_sec_per_source() -> u64 {
    2_000_000
}
pub(super) fn default_reply_burst_bytes_per_source() -> u64 {
    256 * 1024
}
pub(super) fn default_reply_bytes_per_sec() -> u64 {
    50_000_000
}
pub(super) fn default_reply_burst_bytes() -> u64 {
    1 << 20
}
pub(super) fn default_replay_clients_max() -> usize {
    64
}
pub(super) fn default_replay_send_buffer_bytes() -> usize {
    4 << 20
}
pub(super) fn default_replay_stall_timeout_ms() -> u64 {
    10_000
}
pub(super) fn default_replay_sessions_per_client_max() -> usize {
    8
}
pub(super) fn default_replay_login_timeout_ms() -> u64 {
    5_000
}
pub(super) fn default_replay_logins_pending_per_source_max() -> usize {
    8
}
pub(super) fn default_replay_heartbeat_timeout_min_ms() -> u64 {
    3_000
}
pub(super) fn default_replay_heartbeat_timeout_max_ms() -> u64 {
    60_000
}
pub(super) fn default_http_read_roles() -> Vec<String> {
    vec!["reader".into(), "ops".into(), "authority".into()]
}
pub(super) fn default_http_credential_cache_entries() -> usize {
    256
}
pub(super) fn default_http_credential_cache_ttl_ms() -> u64 {
    600_000
}
pub(super) fn default_http_verifications_per_sec_per_source() -> u32 {
    2
}
pub(super) fn default_http_verification_burst() -> u32 {
    5
}
pub(super) fn default_fsync() -> String {
    "none".to_string()
}
pub(super) fn default_fsync_interval_ms() -> u64 {
    10
}
pub(super) fn default_close_grace_ms() -> u64 {
    10_000
}

fn default_retention_messages() -> u64 {
    100_000_000
}
