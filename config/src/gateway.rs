//! The gateway's typed configuration: listen address, stream session, the
//! clients that may log in (with their roles and password hashes), and every
//! limit the gateway enforces.
//!
//! Built once at start-up by the binary (from its TOML file), checked with
//! [`GatewayConfig::validate`], then passed by reference. Nothing here runs on
//! the hot path.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use tally_wire::ack;
use tally_wire::mold::Session;
use tally_wire::soup;

/// What a logged-in client may put on the stream (DESIGN.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A till or web shop: orders and holds (`O M X V C K`).
    Pos,
    /// Back office: transfers, recounts and adjustments (`T Q P`).
    Ops,
    /// The warehouse: every event (`R L I D H E J S`) and every command.
    Authority,
    /// The replay feed only; may not log in to the gateway at all.
    Reader,
}

impl Role {
    /// Every role, in the order of [`Role::NAMES`].
    pub const ALL: [Role; 4] = [Role::Pos, Role::Ops, Role::Authority, Role::Reader];

    /// The names [`FromStr`] accepts and [`fmt::Display`] writes.
    pub const NAMES: [&'static str; 4] = ["pos", "ops", "authority", "reader"];

    /// Whether a client with this role may submit a stream message of type
    /// `msg_type` through the gateway. Nobody may submit `j` (gateway reject):
    /// only the appliance writes it. A `reader` may submit nothing.
    #[inline]
    pub fn permits(self, msg_type: u8) -> bool {
        const POS: &[u8] = b"OMXVCK";
        const OPS: &[u8] = b"TQPN";
        const EVENTS: &[u8] = b"RLIDHEJS";
        match self {
            Role::Pos => POS.contains(&msg_type),
            Role::Ops => OPS.contains(&msg_type),
            Role::Authority => {
                POS.contains(&msg_type) || OPS.contains(&msg_type) || EVENTS.contains(&msg_type)
            }
            Role::Reader => false,
        }
    }

    /// Whether this role may log in to the order-entry gateway.
    #[inline]
    pub fn may_use_gateway(self) -> bool {
        !matches!(self, Role::Reader)
    }

    /// The configuration name of this role.
    pub fn name(self) -> &'static str {
        match self {
            Role::Pos => "pos",
            Role::Ops => "ops",
            Role::Authority => "authority",
            Role::Reader => "reader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a string is not a [`Role`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseRoleError {
    input: String,
}

impl fmt::Display for ParseRoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown role {:?}; expected one of pos, ops, authority, reader",
            self.input
        )
    }
}

impl std::error::Error for ParseRoleError {}

impl FromStr for Role {
    type Err = ParseRoleError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.name() == input)
            .ok_or_else(|| ParseRoleError {
                input: input.to_owned(),
            })
    }
}

/// One client that may log in: the login name, the hash of its password, the
/// client id the gateway stamps as `origin` on everything it submits, and its
/// role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientEntry {
    /// Login name: 1 to 6 printable ASCII characters, no spaces.
    pub username: String,
    /// An argon2 PHC string (`$argon2id$v=19$…`), from [`hash_password`].
    pub password_hash: String,
    /// The client id, stamped as `origin`; at least 1 (0 is the appliance).
    pub client_id: u16,
    /// What the client may submit.
    pub role: Role,
}

/// Everything the gateway needs, validated by [`GatewayConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Address the SoupBinTCP listener binds.
    pub listen: SocketAddr,
    /// The current stream session; a login naming another (non-blank) one is
    /// rejected `S`.
    pub session: Session,
    /// The clients that may log in.
    pub clients: Vec<ClientEntry>,
    /// Sessions logged in at once. A login that would make one more is
    /// rejected `S` (with a debug packet saying why), unless it replaces the
    /// same client's own session. Connections that have not logged in yet
    /// do not count here: they live in the login pool.
    pub max_sessions: usize,
    /// The login pool: connections accepted and not yet logged in, held at
    /// once. More are refused at accept with a debug packet (counted).
    /// Sessions and the pool have separate slots, so a pool full of idle
    /// connections never keeps a till from logging in once it is admitted,
    /// and never takes a logged-in session's slot.
    pub max_login_connections: usize,
    /// Connections one source address may hold in the login pool at once.
    pub max_login_connections_per_source: usize,
    /// A connection must be logged in (login request received and its
    /// password checked) this long after it was accepted, or it is closed
    /// with a debug packet saying why (counted).
    pub login_timeout_ns: u64,
    /// Sustained rate of new connections one source address may open, per
    /// second; more are closed at accept with a debug packet (counted): a
    /// reconnect storm costs an accept and a close, nothing else.
    pub source_connects_per_sec: u32,
    /// Connections one source address may open back to back above the rate.
    pub source_connect_burst: u32,
    /// Failed logins a source address may have (since it was last
    /// forgiven) before it is backed off: a mistyped password costs nothing.
    pub login_failures_before_backoff: u32,
    /// Back-off after a source's first failed login past
    /// `login_failures_before_backoff`; it doubles with every further one. A login from a source still backing off is rejected
    /// `A` without its password being checked (counted).
    pub login_backoff_base_ns: u64,
    /// Longest back-off; a source that stays quiet this long after its
    /// back-off ends is forgiven its failures.
    pub login_backoff_max_ns: u64,
    /// Sustained rate of failed logins one username may take, from any
    /// address, per minute; past it logins for that username are rejected
    /// `A` without a password check (counted).
    pub username_failures_per_min: u32,
    /// Failed logins one username may take back to back.
    pub username_failure_burst: u32,
    /// Password checks one source address may have queued or running at
    /// once; a further login from it is rejected `A` unchecked (counted).
    pub auth_in_flight_per_source: usize,
    /// Buckets of the per-source throttle table (rounded up to a power of
    /// two). Addresses that hash alike share a bucket.
    pub source_table_entries: usize,
    /// Shortest peer timeout a SoupBinTCP 4.1 login may ask for (its
    /// requested heartbeat timeout is clamped to this range).
    pub heartbeat_timeout_min_ns: u64,
    /// Longest peer timeout a SoupBinTCP 4.1 login may ask for.
    pub heartbeat_timeout_max_ns: u64,
    /// Largest SoupBinTCP frame accepted (type byte + payload), in bytes; a
    /// longer one is a protocol error. At least the 47 bytes of a login.
    pub max_frame_bytes: usize,
    /// Send a heartbeat to a session after this long without sending to it.
    pub heartbeat_interval_ns: u64,
    /// Drop a session after this long without receiving anything from it.
    pub peer_timeout_ns: u64,
    /// Sustained rate of `U` messages one session may submit, per second.
    pub rate_limit_per_sec: u32,
    /// Messages a session may submit back to back above the sustained rate.
    pub rate_burst: u32,
    /// Acks remembered per client for replay on a resuming login.
    pub ack_history_per_client: usize,
    /// Receive buffer per connection, in bytes: the most one receive hands
    /// over. While a connection's frames wait (ring to the sequencer full,
    /// login pending) the gateway holds up to
    /// [`GatewayConfig::RECEIVE_BACKLOG_RECEIVES`] receives of it; a client
    /// that sends more meanwhile is disconnected (counted, nothing lost).
    pub recv_buffer_bytes: usize,
    /// Send buffer per connection, in bytes; a send that does not fit closes
    /// the connection (slow client). Must hold a full ack replay.
    pub send_buffer_bytes: usize,
    /// Login requests waiting for (or answered by) the password-checking
    /// thread at once; a login beyond this is rejected `A` and counted.
    pub auth_queue_depth: usize,
}

impl GatewayConfig {
    /// Default limit of logged-in sessions.
    pub const DEFAULT_MAX_SESSIONS: usize = 64;
    /// Default size of the login pool.
    pub const DEFAULT_MAX_LOGIN_CONNECTIONS: usize = 128;
    /// Default login-pool connections per source address.
    pub const DEFAULT_MAX_LOGIN_CONNECTIONS_PER_SOURCE: usize = 8;
    /// Default login deadline: 5 s.
    pub const DEFAULT_LOGIN_TIMEOUT_NS: u64 = 5_000_000_000;
    /// Default connection rate per source address, per second.
    pub const DEFAULT_SOURCE_CONNECTS_PER_SEC: u32 = 20;
    /// Default connection burst per source address.
    pub const DEFAULT_SOURCE_CONNECT_BURST: u32 = 40;
    /// Default failed logins before the back-off starts.
    pub const DEFAULT_LOGIN_FAILURES_BEFORE_BACKOFF: u32 = 3;
    /// Default first back-off after a failed login: 250 ms.
    pub const DEFAULT_LOGIN_BACKOFF_BASE_NS: u64 = 250_000_000;
    /// Default longest back-off: 30 s.
    pub const DEFAULT_LOGIN_BACKOFF_MAX_NS: u64 = 30_000_000_000;
    /// Default failed logins per username per minute.
    pub const DEFAULT_USERNAME_FAILURES_PER_MIN: u32 = 30;
    /// Default failed logins per username back to back.
    pub const DEFAULT_USERNAME_FAILURE_BURST: u32 = 20;
    /// Default password checks in flight per source address.
    pub const DEFAULT_AUTH_IN_FLIGHT_PER_SOURCE: usize = 8;
    /// Default buckets of the per-source throttle table.
    pub const DEFAULT_SOURCE_TABLE_ENTRIES: usize = 4096;
    /// Default shortest requested heartbeat timeout honoured: 3 s.
    pub const DEFAULT_HEARTBEAT_TIMEOUT_MIN_NS: u64 = 3_000_000_000;
    /// Default longest requested heartbeat timeout honoured: 60 s.
    pub const DEFAULT_HEARTBEAT_TIMEOUT_MAX_NS: u64 = 60_000_000_000;
    /// Server connections beyond the session and login slots, used only to
    /// say why a connection is refused before closing it.
    pub const REFUSAL_CONNECTIONS: usize = 64;
    /// Default frame limit: room for every packet a client needs, with slack.
    pub const DEFAULT_MAX_FRAME_BYTES: usize = 256;
    /// Default heartbeat interval: 1 s (DESIGN.md §4).
    pub const DEFAULT_HEARTBEAT_INTERVAL_NS: u64 = 1_000_000_000;
    /// Default peer timeout: 15 s (DESIGN.md §4).
    pub const DEFAULT_PEER_TIMEOUT_NS: u64 = 15_000_000_000;
    /// Default per-session sustained rate, messages per second.
    pub const DEFAULT_RATE_LIMIT_PER_SEC: u32 = 1_000_000;
    /// Default per-session burst, messages.
    pub const DEFAULT_RATE_BURST: u32 = 100_000;
    /// Default acks remembered per client.
    pub const DEFAULT_ACK_HISTORY_PER_CLIENT: usize = 4096;
    /// Default receive buffer per connection.
    pub const DEFAULT_RECV_BUFFER_BYTES: usize = 64 * 1024;
    /// Receives' worth of bytes a connection may buffer while its frames
    /// wait.
    pub const RECEIVE_BACKLOG_RECEIVES: usize = 4;
    /// Default send buffer per connection.
    pub const DEFAULT_SEND_BUFFER_BYTES: usize = 256 * 1024;
    /// Default depth of the password-checking queue.
    pub const DEFAULT_AUTH_QUEUE_DEPTH: usize = 64;

    /// Bytes one ack takes on the wire: a sequenced-data frame holding the
    /// larger ack (`k`).
    pub const ACK_FRAME_BYTES: usize = soup::LENGTH_PREFIX_SIZE + 1 + ack::Accepted::SIZE;

    /// A configuration with every limit at its default.
    pub fn new(listen: SocketAddr, session: Session, clients: Vec<ClientEntry>) -> Self {
        GatewayConfig {
            listen,
            session,
            clients,
            max_sessions: Self::DEFAULT_MAX_SESSIONS,
            max_login_connections: Self::DEFAULT_MAX_LOGIN_CONNECTIONS,
            max_login_connections_per_source: Self::DEFAULT_MAX_LOGIN_CONNECTIONS_PER_SOURCE,
            login_timeout_ns: Self::DEFAULT_LOGIN_TIMEOUT_NS,
            source_connects_per_sec: Self::DEFAULT_SOURCE_CONNECTS_PER_SEC,
            source_connect_burst: Self::DEFAULT_SOURCE_CONNECT_BURST,
            login_failures_before_backoff: Self::DEFAULT_LOGIN_FAILURES_BEFORE_BACKOFF,
            login_backoff_base_ns: Self::DEFAULT_LOGIN_BACKOFF_BASE_NS,
            login_backoff_max_ns: Self::DEFAULT_LOGIN_BACKOFF_MAX_NS,
            username_failures_per_min: Self::DEFAULT_USERNAME_FAILURES_PER_MIN,
            username_failure_burst: Self::DEFAULT_USERNAME_FAILURE_BURST,
            auth_in_flight_per_source: Self::DEFAULT_AUTH_IN_FLIGHT_PER_SOURCE,
            source_table_entries: Self::DEFAULT_SOURCE_TABLE_ENTRIES,
            heartbeat_timeout_min_ns: Self::DEFAULT_HEARTBEAT_TIMEOUT_MIN_NS,
            heartbeat_timeout_max_ns: Self::DEFAULT_HEARTBEAT_TIMEOUT_MAX_NS,
            max_frame_bytes: Self::DEFAULT_MAX_FRAME_BYTES,
            heartbeat_interval_ns: Self::DEFAULT_HEARTBEAT_INTERVAL_NS,
            peer_timeout_ns: Self::DEFAULT_PEER_TIMEOUT_NS,
            rate_limit_per_sec: Self::DEFAULT_RATE_LIMIT_PER_SEC,
            rate_burst: Self::DEFAULT_RATE_BURST,
            ack_history_per_client: Self::DEFAULT_ACK_HISTORY_PER_CLIENT,
            recv_buffer_bytes: Self::DEFAULT_RECV_BUFFER_BYTES,
            send_buffer_bytes: Self::DEFAULT_SEND_BUFFER_BYTES,
            auth_queue_depth: Self::DEFAULT_AUTH_QUEUE_DEPTH,
        }
    }

    /// Connection slots of the gateway core: sessions plus the login pool.
    pub fn connection_slots(&self) -> usize {
        self.max_sessions + self.max_login_connections
    }

    /// Connections the TCP server holds: the core's slots plus
    /// [`Self::REFUSAL_CONNECTIONS`] for refusals on their way out.
    pub fn server_connections(&self) -> usize {
        self.connection_slots() + Self::REFUSAL_CONNECTIONS
    }

    /// Bytes buffered per connection for frames not yet handled:
    /// [`Self::RECEIVE_BACKLOG_RECEIVES`] receives plus a frame, at least the
    /// SoupBinTCP decoder's minimum.
    pub fn receive_backlog_bytes(&self) -> usize {
        (Self::RECEIVE_BACKLOG_RECEIVES * self.recv_buffer_bytes
            + soup::LENGTH_PREFIX_SIZE
            + self.max_frame_bytes)
            .max(soup::FrameDecoder::MIN_BUFFER_BYTES)
    }

    /// Bytes a login that resumes from the oldest remembered ack sends at
    /// once: login accepted, a debug line, and the whole ack history.
    pub fn replay_bytes_max(&self) -> usize {
        let login_accepted = soup::LENGTH_PREFIX_SIZE + 1 + soup::LOGIN_ACCEPTED_PAYLOAD;
        let debug = soup::LENGTH_PREFIX_SIZE + 1 + soup::DEBUG_TEXT_BYTES_MAX;
        login_accepted + debug + self.ack_history_per_client * Self::ACK_FRAME_BYTES
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_clients()?;
        self.check_login_limits()?;
        self.check_session_limits()?;
        Ok(())
    }

    /// The session and the clients: names, roles, password hashes.
    fn check_clients(&self) -> Result<(), ConfigError> {
        if self.session.is_blank() {
            return Err(ConfigError::new("session", "must not be blank"));
        }
        if self.clients.is_empty() {
            return Err(ConfigError::new("clients", "must name at least one client"));
        }
        if self.clients.len() > usize::from(u16::MAX) {
            return Err(ConfigError::new("clients", "at most 65535 clients"));
        }
        for (index, client) in self.clients.iter().enumerate() {
            client.validate(index)?;
            for (other_index, other) in self.clients[..index].iter().enumerate() {
                if other.username == client.username {
                    return Err(ConfigError::new(
                        format!("clients[{index}].username"),
                        format!(
                            "{:?} is also the username of clients[{other_index}]",
                            client.username
                        ),
                    ));
                }
                if other.client_id == client.client_id {
                    return Err(ConfigError::new(
                        format!("clients[{index}].client_id"),
                        format!(
                            "{} is also the client_id of clients[{other_index}]",
                            client.client_id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Sessions, logins and the throttles in front of the password check.
    fn check_login_limits(&self) -> Result<(), ConfigError> {
        self.check_connection_limits()?;
        self.check_failure_limits()
    }

    /// Sessions, connections in login and how fast a source may connect.
    fn check_connection_limits(&self) -> Result<(), ConfigError> {
        if !(1..=65_535).contains(&self.max_sessions) {
            return Err(ConfigError::new("max_sessions", "must be 1..=65535"));
        }
        if !(1..=65_535).contains(&self.max_login_connections) {
            return Err(ConfigError::new(
                "max_login_connections",
                "must be 1..=65535",
            ));
        }
        if !(1..=self.max_login_connections).contains(&self.max_login_connections_per_source) {
            return Err(ConfigError::new(
                "max_login_connections_per_source",
                "must be 1..=max_login_connections",
            ));
        }
        if self.login_timeout_ns == 0 {
            return Err(ConfigError::new("login_timeout_ns", "must be above 0"));
        }
        if self.source_connects_per_sec == 0 || self.source_connects_per_sec > 1_000_000_000 {
            return Err(ConfigError::new(
                "source_connects_per_sec",
                "must be 1..=1000000000",
            ));
        }
        if self.source_connect_burst == 0 {
            return Err(ConfigError::new(
                "source_connect_burst",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Backing off failed logins, the per-source tables and heartbeats.
    fn check_failure_limits(&self) -> Result<(), ConfigError> {
        if self.login_failures_before_backoff > 1000 {
            return Err(ConfigError::new(
                "login_failures_before_backoff",
                "must be 0..=1000",
            ));
        }
        if self.login_backoff_base_ns == 0 {
            return Err(ConfigError::new("login_backoff_base_ns", "must be above 0"));
        }
        if self.login_backoff_max_ns < self.login_backoff_base_ns {
            return Err(ConfigError::new(
                "login_backoff_max_ns",
                "must be at least login_backoff_base_ns",
            ));
        }
        if self.username_failures_per_min == 0 || self.username_failures_per_min > 60_000_000 {
            return Err(ConfigError::new(
                "username_failures_per_min",
                "must be 1..=60000000",
            ));
        }
        if self.username_failure_burst == 0 {
            return Err(ConfigError::new(
                "username_failure_burst",
                "must be at least 1",
            ));
        }
        if self.auth_in_flight_per_source == 0 {
            return Err(ConfigError::new(
                "auth_in_flight_per_source",
                "must be at least 1",
            ));
        }
        if !(1..=1 << 24).contains(&self.source_table_entries) {
            return Err(ConfigError::new(
                "source_table_entries",
                "must be 1..=16777216",
            ));
        }
        if self.heartbeat_timeout_min_ns <= self.heartbeat_interval_ns {
            return Err(ConfigError::new(
                "heartbeat_timeout_min_ns",
                "must be longer than heartbeat_interval_ns",
            ));
        }
        if self.heartbeat_timeout_max_ns < self.heartbeat_timeout_min_ns {
            return Err(ConfigError::new(
                "heartbeat_timeout_max_ns",
                "must be at least heartbeat_timeout_min_ns",
            ));
        }
        Ok(())
    }

    /// Frames, heartbeats, rates, ack history and socket buffers of a logged-in session.
    fn check_session_limits(&self) -> Result<(), ConfigError> {
        let login_frame = 1 + soup::LOGIN_REQUEST_PAYLOAD_MAX;
        if !(login_frame..=soup::MAX_FRAME_BYTES).contains(&self.max_frame_bytes) {
            return Err(ConfigError::new(
                "max_frame_bytes",
                format!(
                    "must be {login_frame}..={} (a SoupBinTCP 4.1 login request is {login_frame} bytes)",
                    soup::MAX_FRAME_BYTES
                ),
            ));
        }
        if self.heartbeat_interval_ns == 0 {
            return Err(ConfigError::new("heartbeat_interval_ns", "must be above 0"));
        }
        if self.peer_timeout_ns <= self.heartbeat_interval_ns {
            return Err(ConfigError::new(
                "peer_timeout_ns",
                "must be longer than heartbeat_interval_ns",
            ));
        }
        if self.rate_limit_per_sec == 0 || self.rate_limit_per_sec > 1_000_000_000 {
            return Err(ConfigError::new(
                "rate_limit_per_sec",
                "must be 1..=1000000000",
            ));
        }
        if self.rate_burst == 0 {
            return Err(ConfigError::new("rate_burst", "must be at least 1"));
        }
        if self.ack_history_per_client == 0 || self.ack_history_per_client > 1 << 24 {
            return Err(ConfigError::new(
                "ack_history_per_client",
                "must be 1..=16777216",
            ));
        }
        if self.recv_buffer_bytes < soup::LENGTH_PREFIX_SIZE + self.max_frame_bytes {
            return Err(ConfigError::new(
                "recv_buffer_bytes",
                "must hold at least one frame of max_frame_bytes",
            ));
        }
        if self.send_buffer_bytes < self.replay_bytes_max() {
            return Err(ConfigError::new(
                "send_buffer_bytes",
                format!(
                    "must hold a full ack replay: at least {} bytes for ack_history_per_client = {}",
                    self.replay_bytes_max(),
                    self.ack_history_per_client
                ),
            ));
        }
        if self.auth_queue_depth == 0 {
            return Err(ConfigError::new("auth_queue_depth", "must be at least 1"));
        }
        Ok(())
    }
}

impl ClientEntry {
    fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let field = |name: &str| format!("clients[{index}].{name}");
        let name = &self.username;
        if name.is_empty() || name.len() > soup::USERNAME_SIZE {
            return Err(ConfigError::new(
                field("username"),
                format!("{name:?} must be 1 to 6 characters"),
            ));
        }
        if !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                field("username"),
                format!("{name:?} must be printable ASCII without spaces"),
            ));
        }
        if let Err(error) = parse_argon2_hash(&self.password_hash) {
            return Err(ConfigError::new(field("password_hash"), error));
        }
        if self.client_id == 0 {
            return Err(ConfigError::new(
                field("client_id"),
                "must be at least 1 (0 is the appliance itself)",
            ));
        }
        Ok(())
    }
}

/// A configuration value that is not acceptable: names the field (e.g.
/// `clients[2].password_hash`) and says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field, as named in the configuration.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gateway configuration: {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Longest password a SoupBinTCP login can carry, in bytes.
pub const PASSWORD_BYTES_MAX: usize = soup::PASSWORD_SIZE;

/// Whether `password` can be typed into a SoupBinTCP login: 1 to 10 printable
/// ASCII characters, not ending in a space (the field is space-padded).
pub fn password_fits_login(password: &str) -> bool {
    !password.is_empty()
        && password.len() <= PASSWORD_BYTES_MAX
        && password.bytes().all(|b| (b' '..=b'~').contains(&b))
        && !password.ends_with(' ')
}

/// Hashes `password` with argon2id (default parameters) and a fresh random
/// salt; returns the PHC string the configuration stores. Takes tens of
/// milliseconds: never call it on a loop thread. A password a login can
/// carry is at most 10 characters ([`password_fits_login`]).
pub fn hash_password(password: &str) -> String {
    Argon2::default()
        .hash_password(password.as_bytes())
        .expect("argon2id with default parameters and a random salt cannot fail")
        .to_string()
}

/// Whether `password` matches the PHC string `password_hash`. False for a
/// hash that does not parse. Takes tens of milliseconds: never call it on a
/// loop thread (the gateway calls it on its auth thread).
pub fn verify_password(password: &[u8], password_hash: &str) -> bool {
    match PasswordHash::new(password_hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

fn parse_argon2_hash(password_hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(password_hash)
        .map_err(|e| format!("not a PHC password hash string ({e})"))?;
    let algorithm = parsed.algorithm.as_str();
    if !matches!(algorithm, "argon2id" | "argon2i" | "argon2d") {
        return Err(format!(
            "algorithm {algorithm:?} is not argon2 (make one with `tally-sequencer hash-password`)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
