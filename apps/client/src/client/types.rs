//! What an order-entry client is configured with and what it reports: its
//! configuration, errors, acks, events, statistics and counters.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use serde::Serialize;
use tally_wire::mold::Session;

use super::{OrderEntryClient, WINDOW_MAX};
use crate::credentials::login_refusal_words;

/// Everything a client needs; [`ClientConfig::new`] fills in defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The gateway's SoupBinTCP address.
    pub gateway: SocketAddr,
    pub username: String,
    pub password: String,
    /// The session to log in to; blank = the appliance's current one.
    pub session: Session,
    /// Commands sent and not yet acknowledged, at most. Keep it within the
    /// gateway's `ack_history_per_client` so a reconnect can replay every
    /// missing ack.
    pub window: usize,
    /// Client heartbeat after this long without sending (§4: 1 s).
    pub heartbeat_interval_ns: u64,
    /// Reconnect after this long without a byte from the server (§4: 15 s).
    pub peer_timeout_ns: u64,
    /// A TCP connect blocks at most this long.
    pub connect_timeout_ns: u64,
    /// Give up on a login unanswered this long, and reconnect.
    pub login_timeout_ns: u64,
    /// First and largest wait between connection attempts.
    pub reconnect_backoff_min_ns: u64,
    pub reconnect_backoff_max_ns: u64,
    /// The connection's send and receive buffers.
    pub send_buffer_bytes: usize,
    pub recv_buffer_bytes: usize,
}

impl ClientConfig {
    /// Defaults: a window of 4 096 commands (the gateway's default ack
    /// history), heartbeat after 1 s, peer timeout 15 s, connect timeout 1 s,
    /// login timeout 10 s, reconnect backoff 20 ms doubling to 1 s, 1 MiB
    /// send buffer, 256 KiB receive buffer.
    pub fn new(gateway: SocketAddr, username: &str, password: &str) -> ClientConfig {
        ClientConfig {
            gateway,
            username: username.to_string(),
            password: password.to_string(),
            session: Session::BLANK,
            window: 4096,
            heartbeat_interval_ns: 1_000_000_000,
            peer_timeout_ns: 15_000_000_000,
            connect_timeout_ns: 1_000_000_000,
            login_timeout_ns: 10_000_000_000,
            reconnect_backoff_min_ns: 20_000_000,
            reconnect_backoff_max_ns: 1_000_000_000,
            send_buffer_bytes: 1 << 20,
            recv_buffer_bytes: 256 * 1024,
        }
    }

    /// The configuration for the gateway of `appliance` (a listen address
    /// on 0.0.0.0 is reached on loopback), its session, and a window within
    /// its ack history.
    pub fn for_appliance(
        appliance: &tally_config::ApplianceConfig,
        username: &str,
        password: &str,
    ) -> ClientConfig {
        let mut config = ClientConfig::new(
            crate::consumer::reachable(appliance.gateway.listen),
            username,
            password,
        );
        config.session = appliance.session().unwrap_or(Session::BLANK);
        config.window = appliance
            .gateway
            .ack_history_per_client
            .clamp(1, WINDOW_MAX);
        config
    }
}

/// What [`OrderEntryClient::send`] and the helpers can fail with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// `window` commands await their acks: poll, then try again.
    WindowFull,
    /// Not logged in right now (connecting, reconnecting): poll, then try
    /// again. Nothing was taken.
    Disconnected,
    /// Shorter than a header or longer than any stream message.
    InvalidMessage { len: usize },
    /// The gateway refused the login (`A` not authorized, `S` session
    /// unavailable). The client stops.
    LoginRejected(u8),
    /// Login Accepted's next number does not fit what this client sent
    /// (another process using the same client, or a new session). The
    /// client stops rather than guess.
    NumberingConflict {
        appliance_next: u64,
        client_next: u32,
    },
    /// The server ended the session (End of Session). The client stops.
    SessionEnded,
    /// The client was logged out by [`OrderEntryClient::logout`].
    LoggedOut,
    /// A blocking helper's deadline passed.
    Timeout,
    /// The username (1..=6) or password (1..=10 printable ASCII) cannot be
    /// sent in a login.
    InvalidCredentials,
    /// The first connection could not be made (the last error's kind).
    Unreachable(io::ErrorKind),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::WindowFull => f.write_str("window full: too many commands await acks"),
            ClientError::Disconnected => f.write_str("not logged in (reconnecting)"),
            ClientError::InvalidMessage { len } => {
                write!(f, "a {len}-byte message is not a stream message")
            }
            ClientError::LoginRejected(reason) => {
                write!(f, "login rejected: {}", login_refusal_words(*reason, ""))?;
                if *reason == b'A' {
                    f.write_str("; a user of role reader may not use the gateway at all")?;
                }
                Ok(())
            }
            ClientError::NumberingConflict {
                appliance_next,
                client_next,
            } => write!(
                f,
                "the appliance expects client_seq {appliance_next}, this client is at \
                 {client_next}: another process uses this client, or the session changed"
            ),
            ClientError::SessionEnded => f.write_str("the session ended"),
            ClientError::LoggedOut => f.write_str("logged out"),
            ClientError::Timeout => f.write_str("timed out"),
            ClientError::InvalidCredentials => {
                f.write_str("username or password does not fit a SoupBinTCP login")
            }
            ClientError::Unreachable(kind) => write!(f, "gateway unreachable: {kind}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A command's ack: `k` (accepted, `reject` None) or `j` (rejected by the
/// gateway with `reject` as reason; recorded on the stream at `stream_seq`,
/// `timestamp_ns` 0 as the `j` ack carries none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Ack {
    pub client_seq: u32,
    pub stream_seq: u64,
    pub timestamp_ns: u64,
    pub reject: Option<u8>,
}

/// What [`OrderEntryClient::poll`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Logged in; `resending` commands (from `next_client_seq` on) are sent
    /// again because they were never sequenced.
    LoggedIn {
        next_client_seq: u32,
        resending: u32,
    },
    /// A command's ack, in client_seq order.
    Ack(Ack),
    /// Command `client_seq` was sequenced before a reconnect, but the
    /// gateway no longer holds its ack.
    AckUnavailable { client_seq: u32 },
    /// The connection dropped; the client reconnects by itself.
    Disconnected,
    /// The client stopped for good (login rejected, numbering conflict, end
    /// of session).
    Closed(ClientError),
}

/// The client's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientStats {
    pub connects: u64,
    pub connect_failures: u64,
    pub logins: u64,
    pub disconnects: u64,
    /// Commands taken by `send`/`queue`.
    pub commands: u64,
    /// Commands written again after a reconnect.
    pub resent: u64,
    pub acks_accepted: u64,
    pub acks_rejected: u64,
    pub acks_unavailable: u64,
    /// Acks for commands already acknowledged, or never sent.
    pub duplicate_acks: u64,
    pub unexpected_acks: u64,
    pub heartbeats_sent: u64,
    /// Times the connection's send buffer could not take a batch.
    pub send_full: u64,
    pub debug_packets: u64,
    pub protocol_errors: u64,
}

tally_runtime::counter_set! {
    /// A client's counters in a process's shared-memory counter file, for
    /// `tally-stat`: register [`ClientCounters::NAMES`], then
    /// [`publish`](Self::publish) from the client's thread now and then.
    pub struct ClientCounters, prefix "client.";
    /// Gauge: 1 while logged in.
    sessions_active,
    commands,
    acks_accepted,
    acks_rejected,
    acks_unavailable,
    resent,
    connects,
    disconnects,
    heartbeats_sent,
    send_full,
}

impl ClientCounters {
    /// Writes the client's counters.
    pub fn publish(&self, client: &OrderEntryClient) {
        let stats = client.stats();
        self.sessions_active.set(u64::from(client.is_ready()));
        self.commands.set(stats.commands);
        self.acks_accepted.set(stats.acks_accepted);
        self.acks_rejected.set(stats.acks_rejected);
        self.acks_unavailable.set(stats.acks_unavailable);
        self.resent.set(stats.resent);
        self.connects.set(stats.connects);
        self.disconnects.set(stats.disconnects);
        self.heartbeats_sent.set(stats.heartbeats_sent);
        self.send_full.set(stats.send_full);
    }
}
