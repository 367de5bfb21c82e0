//! The order-entry client (DESIGN.md §4): one SoupBinTCP session to the
//! gateway that logs in, numbers commands, pipelines them, surfaces their
//! `k`/`j` acks, and survives dropped connections without sending anything
//! twice.
//!
//! Numbering: Login Accepted says which client_seq comes next; the client
//! stamps each command's header with the next number (origin and timestamp
//! zero, as the gateway and sequencer stamp those) and keeps every command
//! until its ack arrives, in a ring of `window` slots. A full ring is
//! back-pressure ([`ClientError::WindowFull`]), never growth.
//!
//! Exactly once across a reconnect: after a drop the client reconnects with
//! a backoff and logs in asking for acks from its oldest unacknowledged
//! command. Login Accepted carries the appliance's next number `N`, final
//! because the gateway holds it back until none of the client's commands are
//! in flight: everything below `N` was sequenced (its ack is replayed), so
//! only commands from `N` on are sent again. A command that was sequenced is
//! never resent. When the gateway's ack history no longer reaches back far
//! enough, the commands it cannot replay are reported as
//! [`ClientEvent::AckUnavailable`] (they were sequenced; their stream numbers
//! are on the stream).
//!
//! Heartbeats go out after `heartbeat_interval_ns` without sending; a server
//! silent for `peer_timeout_ns` is dropped and the client reconnects.
//!
//! Realtime contract: one thread owns a client. The ring, the frame decoder
//! and the connection buffers are allocated at construction and at each
//! (re)connect; sending, acks and heartbeats never allocate, lock or log.
//! `connect` to the gateway blocks for at most `connect_timeout_ns` (on
//! loopback, a refused connection returns at once); everything else is
//! non-blocking except the `*_blocking`/`wait*` helpers for tools and tests.

//! ```no_run
//! use std::time::Duration;
//! use tally_client::client::{ClientConfig, ClientEvent, OrderEntryClient};
//! use tally_client::consumer::monotonic_ns;
//! use tally_wire::Order;
//! # fn run(appliance: &tally_config::ApplianceConfig) -> Result<(), tally_client::client::ClientError> {
//! let config = ClientConfig::for_appliance(appliance, "pos1", "pos1pass");
//! let mut client = OrderEntryClient::connect(config, Duration::from_secs(10))?;
//! let client_seq = client.send(Order::new(1, 0, 42, 2).as_bytes())?;
//! loop {
//!     client.poll(monotonic_ns(), |event| {
//!         if let ClientEvent::Ack(ack) = event {
//!             // ack.client_seq == client_seq, ack.stream_seq = its number
//!             let _ = (ack, client_seq);
//!         }
//!     });
//! }
//! # }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use serde::Serialize;
use tally_runtime::net::{SendError, TcpConn};
use tally_wire::mold::Session;
use tally_wire::soup::{self, FrameDecoder, ServerPacket};
use tally_wire::Header;

use crate::consumer::monotonic_ns;

/// Bytes per command slot; every stream message fits.
pub const COMMAND_BYTES_MAX: usize = 64;
const _: () = assert!(tally_wire::MAX_MESSAGE_SIZE <= COMMAND_BYTES_MAX);
/// Largest window (commands awaiting their ack).
pub const WINDOW_MAX: usize = 1 << 20;
/// Largest server frame accepted (acks are 22 bytes, Debug text short).
const FRAME_BYTES_MAX: usize = 1024;
/// Bytes of `U` frames handed to the connection in one send.
const BATCH_BYTES: usize = 8192;
/// Longest text kept from the server's last Debug packet.
const DEBUG_TEXT_BYTES_MAX: usize = 160;

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
                write!(f, "login rejected (reason {})", char::from(*reason))
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

/// A client's counters in a process's shared-memory counter file, for
/// `tally-stat`: register [`ClientCounters::NAMES`], then
/// [`publish`](Self::publish) from the client's thread now and then.
#[derive(Clone, Debug)]
pub struct ClientCounters {
    counters: Vec<tally_runtime::counters::Counter>,
}

impl ClientCounters {
    /// Counter names, in the order [`publish`](Self::publish) writes them.
    /// `client.sessions_active` (1 while logged in) is a gauge.
    pub const NAMES: &'static [&'static str] = &[
        "client.sessions_active",
        "client.commands",
        "client.acks_accepted",
        "client.acks_rejected",
        "client.acks_unavailable",
        "client.resent",
        "client.connects",
        "client.disconnects",
        "client.heartbeats_sent",
        "client.send_full",
    ];

    /// Handles to `NAMES` at `first_index..` of `file`.
    ///
    /// # Panics
    /// When the file holds other names there (a bug in how it was made).
    pub fn from_file(file: &tally_runtime::counters::CounterFile, first_index: usize) -> Self {
        ClientCounters {
            counters: file.counters_at(first_index, Self::NAMES),
        }
    }

    /// Writes the client's counters.
    pub fn publish(&self, client: &OrderEntryClient) {
        let stats = client.stats();
        let values = [
            u64::from(client.is_ready()),
            stats.commands,
            stats.acks_accepted,
            stats.acks_rejected,
            stats.acks_unavailable,
            stats.resent,
            stats.connects,
            stats.disconnects,
            stats.heartbeats_sent,
            stats.send_full,
        ];
        const _: () = assert!(ClientCounters::NAMES.len() == 10);
        for (counter, value) in self.counters.iter().zip(values) {
            counter.set(value);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// No connection; connect at `retry_at_ns`.
    Down,
    LoggingIn,
    Ready,
    /// Stopped for good.
    Closed(ClientError),
}

/// Everything but the connection and the decoder, so the connection's
/// receive callback can borrow it.
struct State {
    link: Link,
    logged_in_once: bool,
    /// The number the next new command gets.
    next_client_seq: u32,
    /// The oldest command without an ack (== next_client_seq when none).
    first_unacked: u32,
    /// The next command to write on the current connection.
    sent_up_to: u32,
    /// One past the highest command ever written (to count resends).
    written_high: u32,
    /// Command `client_seq` lives in slot `client_seq & mask`.
    slots: Box<[[u8; COMMAND_BYTES_MAX]]>,
    lens: Box<[u8]>,
    mask: u32,
    window: u32,
    since_ns: u64,
    last_recv_ns: u64,
    last_sent_ns: u64,
    sent_since_poll: bool,
    retry_at_ns: u64,
    backoff_ns: u64,
    /// Drop the connection (protocol error).
    broken: bool,
    last_connect_error: Option<io::ErrorKind>,
    debug_text: [u8; DEBUG_TEXT_BYTES_MAX],
    debug_len: usize,
    stats: ClientStats,
}

impl State {
    fn slot(&self, client_seq: u32) -> &[u8] {
        let index = (client_seq & self.mask) as usize;
        &self.slots[index][..usize::from(self.lens[index])]
    }

    fn close(&mut self, error: ClientError, on_event: &mut impl FnMut(ClientEvent)) {
        if !matches!(self.link, Link::Closed(_)) {
            self.link = Link::Closed(error);
            on_event(ClientEvent::Closed(error));
        }
    }

    fn on_frame(&mut self, frame: &[u8], on_event: &mut impl FnMut(ClientEvent)) {
        let Ok(packet) = ServerPacket::parse(frame) else {
            self.stats.protocol_errors += 1;
            self.broken = true;
            return;
        };
        match packet {
            ServerPacket::LoginAccepted { next_seq, .. } => {
                if self.link != Link::LoggingIn {
                    self.stats.protocol_errors += 1;
                    self.broken = true;
                    return;
                }
                self.on_login_accepted(next_seq, on_event);
            }
            ServerPacket::LoginRejected { reason } => {
                self.close(ClientError::LoginRejected(reason), on_event);
            }
            ServerPacket::Sequenced(payload) => {
                if self.link != Link::Ready {
                    self.stats.protocol_errors += 1;
                    self.broken = true;
                    return;
                }
                let ack = match tally_wire::Ack::parse(payload) {
                    Ok(tally_wire::Ack::Accepted(a)) => Ack {
                        client_seq: a.client_seq.get(),
                        stream_seq: a.stream_seq.get(),
                        timestamp_ns: a.timestamp_ns.get(),
                        reject: None,
                    },
                    Ok(tally_wire::Ack::Rejected(r)) => Ack {
                        client_seq: r.client_seq.get(),
                        stream_seq: r.stream_seq.get(),
                        timestamp_ns: 0,
                        reject: Some(r.reason),
                    },
                    Err(_) => {
                        self.stats.protocol_errors += 1;
                        self.broken = true;
                        return;
                    }
                };
                self.on_ack(ack, on_event);
            }
            ServerPacket::Heartbeat => {}
            ServerPacket::EndOfSession => self.close(ClientError::SessionEnded, on_event),
            ServerPacket::Debug(text) => {
                self.stats.debug_packets += 1;
                let len = text.len().min(DEBUG_TEXT_BYTES_MAX);
                self.debug_text[..len].copy_from_slice(&text[..len]);
                self.debug_len = len;
                tracing::warn!(text = %String::from_utf8_lossy(text), "gateway debug packet");
            }
        }
    }

    fn on_login_accepted(&mut self, next_seq: u64, on_event: &mut impl FnMut(ClientEvent)) {
        if !self.logged_in_once {
            let Ok(next) = u32::try_from(next_seq) else {
                self.close(
                    ClientError::NumberingConflict {
                        appliance_next: next_seq,
                        client_next: 0,
                    },
                    on_event,
                );
                return;
            };
            self.next_client_seq = next;
            self.first_unacked = next;
            self.written_high = next;
        } else if next_seq < u64::from(self.first_unacked)
            || next_seq > u64::from(self.next_client_seq)
        {
            // Below: the appliance forgot commands it acknowledged. Above: it
            // sequenced numbers this client never sent. Either way resending
            // would be a guess.
            self.close(
                ClientError::NumberingConflict {
                    appliance_next: next_seq,
                    client_next: self.next_client_seq,
                },
                on_event,
            );
            return;
        }
        let next = next_seq as u32;
        self.sent_up_to = next;
        self.link = Link::Ready;
        self.logged_in_once = true;
        self.stats.logins += 1;
        on_event(ClientEvent::LoggedIn {
            next_client_seq: next,
            resending: self.next_client_seq - next,
        });
    }

    fn on_ack(&mut self, ack: Ack, on_event: &mut impl FnMut(ClientEvent)) {
        let client_seq = ack.client_seq;
        if client_seq < self.first_unacked {
            self.stats.duplicate_acks += 1;
            return;
        }
        if client_seq >= self.next_client_seq {
            self.stats.unexpected_acks += 1;
            return;
        }
        while self.first_unacked < client_seq {
            // Sequenced before a reconnect; the gateway's history no longer
            // holds its ack.
            self.stats.acks_unavailable += 1;
            on_event(ClientEvent::AckUnavailable {
                client_seq: self.first_unacked,
            });
            self.first_unacked += 1;
        }
        self.first_unacked = client_seq + 1;
        self.sent_up_to = self.sent_up_to.max(self.first_unacked);
        if ack.reject.is_some() {
            self.stats.acks_rejected += 1;
        } else {
            self.stats.acks_accepted += 1;
        }
        on_event(ClientEvent::Ack(ack));
    }

    /// Writes the commands not yet written on this connection, in batches,
    /// as far as the send buffer takes them. False when the connection is
    /// closed.
    fn pump(&mut self, conn: &mut TcpConn, send_buffer_bytes: usize) -> bool {
        let mut batch = [0u8; BATCH_BYTES];
        while self.sent_up_to < self.next_client_seq {
            let free = send_buffer_bytes.saturating_sub(conn.pending_send_bytes());
            let room = free.min(BATCH_BYTES);
            let mut len = 0;
            let mut seq = self.sent_up_to;
            while seq < self.next_client_seq {
                let message = self.slot(seq);
                let frame_len = soup::LENGTH_PREFIX_SIZE + 1 + message.len();
                if len + frame_len > room {
                    break;
                }
                len += soup::write_unsequenced(&mut batch[len..], message).expect("fits");
                seq += 1;
            }
            if len == 0 {
                self.stats.send_full += 1;
                return true;
            }
            match conn.send(&batch[..len]) {
                Ok(()) => {
                    let resent = seq.min(self.written_high).saturating_sub(self.sent_up_to);
                    self.stats.resent += u64::from(resent);
                    self.written_high = self.written_high.max(seq);
                    self.sent_up_to = seq;
                    self.sent_since_poll = true;
                }
                Err(SendError::Full) => {
                    self.stats.send_full += 1;
                    return true;
                }
                Err(SendError::Closed) => return false,
            }
        }
        true
    }
}

/// Feeds received bytes through the decoder into the state.
fn feed(
    decoder: &mut FrameDecoder,
    state: &mut State,
    bytes: &[u8],
    now_ns: u64,
    on_event: &mut impl FnMut(ClientEvent),
) {
    state.last_recv_ns = now_ns;
    let mut rest = bytes;
    while !state.broken && !matches!(state.link, Link::Closed(_)) {
        let taken = decoder.extend(rest);
        rest = &rest[taken..];
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => state.on_frame(frame, on_event),
                Ok(None) => break,
                Err(_) => {
                    state.stats.protocol_errors += 1;
                    state.broken = true;
                }
            }
            if state.broken || matches!(state.link, Link::Closed(_)) {
                break;
            }
        }
        if rest.is_empty() {
            break;
        }
        if taken == 0 && decoder.room() == 0 {
            state.broken = true;
        }
    }
}

/// The order-entry client. See the module documentation.
pub struct OrderEntryClient {
    config: ClientConfig,
    conn: Option<TcpConn>,
    decoder: FrameDecoder,
    state: State,
}

impl OrderEntryClient {
    /// A client that connects and logs in on its first [`poll`](Self::poll);
    /// [`send`](Self::send) answers `Disconnected` until then.
    pub fn new(config: ClientConfig) -> Result<OrderEntryClient, ClientError> {
        let mut login = [0u8; 64];
        soup::write_login_request(
            &mut login,
            &config.username,
            &config.password,
            config.session,
            0,
        )
        .map_err(|_| ClientError::InvalidCredentials)?;
        assert!(
            (1..=WINDOW_MAX).contains(&config.window),
            "window {} must be 1..={WINDOW_MAX}",
            config.window
        );
        let capacity = config.window.next_power_of_two();
        let state = State {
            link: Link::Down,
            logged_in_once: false,
            next_client_seq: 0,
            first_unacked: 0,
            sent_up_to: 0,
            written_high: 0,
            slots: vec![[0u8; COMMAND_BYTES_MAX]; capacity].into_boxed_slice(),
            lens: vec![0u8; capacity].into_boxed_slice(),
            mask: capacity as u32 - 1,
            window: config.window as u32,
            since_ns: 0,
            last_recv_ns: 0,
            last_sent_ns: 0,
            sent_since_poll: false,
            retry_at_ns: 0,
            backoff_ns: config.reconnect_backoff_min_ns,
            broken: false,
            last_connect_error: None,
            debug_text: [0; DEBUG_TEXT_BYTES_MAX],
            debug_len: 0,
            stats: ClientStats::default(),
        };
        let decoder = FrameDecoder::with_buffer_bytes(
            FRAME_BYTES_MAX,
            config.recv_buffer_bytes.max(4 * FRAME_BYTES_MAX),
        );
        Ok(OrderEntryClient {
            config,
            conn: None,
            decoder,
            state,
        })
    }

    /// Connects and logs in, waiting up to `timeout` for Login Accepted
    /// (retrying refused connections with the backoff meanwhile).
    pub fn connect(
        config: ClientConfig,
        timeout: Duration,
    ) -> Result<OrderEntryClient, ClientError> {
        let mut client = OrderEntryClient::new(config)?;
        let deadline = Instant::now() + timeout;
        loop {
            client.wait(deadline.saturating_duration_since(Instant::now()), |_| {});
            match client.state.link {
                Link::Ready => return Ok(client),
                Link::Closed(error) => return Err(error),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(match client.state.last_connect_error {
                    Some(kind) if client.conn.is_none() => ClientError::Unreachable(kind),
                    _ => ClientError::Timeout,
                });
            }
        }
    }

    /// Takes `message` (a stream message: header + body), stamps the next
    /// client_seq into its header (origin and timestamp zero) and writes it
    /// at once. Returns its client_seq.
    pub fn send(&mut self, message: &[u8]) -> Result<u32, ClientError> {
        let client_seq = self.queue(message)?;
        self.flush();
        Ok(client_seq)
    }

    /// As [`send`](Self::send), but the write waits for the next
    /// [`flush`](Self::flush) or poll: many commands go out in one write.
    pub fn queue(&mut self, message: &[u8]) -> Result<u32, ClientError> {
        match self.state.link {
            Link::Ready => {}
            Link::Closed(error) => return Err(error),
            Link::Down | Link::LoggingIn => return Err(ClientError::Disconnected),
        }
        if message.len() < Header::SIZE || message.len() > COMMAND_BYTES_MAX {
            return Err(ClientError::InvalidMessage { len: message.len() });
        }
        let state = &mut self.state;
        if state.next_client_seq - state.first_unacked >= state.window {
            return Err(ClientError::WindowFull);
        }
        let client_seq = state.next_client_seq;
        let index = (client_seq & state.mask) as usize;
        let slot = &mut state.slots[index];
        slot[..message.len()].copy_from_slice(message);
        // Header: origin (1..3) and timestamp (7..15) zero, client_seq (3..7).
        slot[1..3].fill(0);
        slot[3..7].copy_from_slice(&client_seq.to_be_bytes());
        slot[7..15].fill(0);
        state.lens[index] = message.len() as u8;
        state.next_client_seq += 1;
        state.stats.commands += 1;
        Ok(client_seq)
    }

    /// Writes queued commands now (as far as the send buffer takes them).
    pub fn flush(&mut self) {
        if self.state.link != Link::Ready {
            return;
        }
        if let Some(conn) = &mut self.conn {
            if !self.state.pump(conn, self.config.send_buffer_bytes) {
                // Noticed as a drop by the next poll.
                self.state.broken = true;
            }
        }
    }

    /// One bounded round: (re)connects when due, reads acks, writes what is
    /// queued, sends a heartbeat when due, notices a dead connection.
    /// Returns the work done (0 = idle). `now_ns` is [`monotonic_ns`].
    pub fn poll(&mut self, now_ns: u64, mut on_event: impl FnMut(ClientEvent)) -> usize {
        let mut work = 0;
        match self.state.link {
            Link::Closed(_) => return 0,
            Link::Down => {
                if now_ns < self.state.retry_at_ns {
                    return 0;
                }
                self.open(now_ns);
                work += 1;
            }
            Link::LoggingIn | Link::Ready => {}
        }
        let Some(conn) = &mut self.conn else {
            return work;
        };
        let state = &mut self.state;
        let decoder = &mut self.decoder;
        let received = conn.poll_recv(|bytes| feed(decoder, state, bytes, now_ns, &mut on_event));
        let mut lost = match received {
            Ok(n) => {
                work += usize::from(n > 0);
                false
            }
            Err(_) => true,
        };
        if matches!(state.link, Link::Closed(_)) {
            self.conn = None;
            return work + 1;
        }
        lost |= state.broken
            || (state.link == Link::LoggingIn
                && now_ns.saturating_sub(state.since_ns) > self.config.login_timeout_ns)
            || now_ns.saturating_sub(state.last_recv_ns) > self.config.peer_timeout_ns;
        if !lost && state.link == Link::Ready {
            let before = state.sent_up_to;
            lost = !state.pump(conn, self.config.send_buffer_bytes);
            work += (state.sent_up_to - before) as usize;
        }
        if state.sent_since_poll {
            state.sent_since_poll = false;
            state.last_sent_ns = now_ns;
        }
        // Only once logged in: anything before Login Accepted is a protocol
        // error for the gateway.
        if !lost
            && state.link == Link::Ready
            && now_ns.saturating_sub(state.last_sent_ns) >= self.config.heartbeat_interval_ns
        {
            let mut frame = [0u8; 8];
            let len = soup::write_client_heartbeat(&mut frame).expect("fits");
            match conn.send(&frame[..len]) {
                Ok(()) => state.stats.heartbeats_sent += 1,
                Err(SendError::Full) => {}
                Err(SendError::Closed) => lost = true,
            }
            state.last_sent_ns = now_ns;
        }
        if lost {
            self.lose_connection(now_ns, &mut on_event);
            work += 1;
        }
        work
    }

    /// Polls until at least one event happened or `timeout` passed; returns
    /// the number of events.
    pub fn wait(&mut self, timeout: Duration, mut on_event: impl FnMut(ClientEvent)) -> usize {
        let deadline = Instant::now() + timeout;
        let mut events = 0;
        loop {
            self.poll(monotonic_ns(), |event| {
                events += 1;
                on_event(event)
            });
            if events > 0 || matches!(self.state.link, Link::Closed(_)) {
                return events;
            }
            let now = Instant::now();
            if now >= deadline {
                return 0;
            }
            let mut slice = deadline - now;
            match &mut self.conn {
                Some(conn) => {
                    let heartbeat_due = (self.state.last_sent_ns
                        + self.config.heartbeat_interval_ns)
                        .saturating_sub(monotonic_ns());
                    slice = slice.min(Duration::from_nanos(heartbeat_due.max(1_000_000)));
                    let state = &mut self.state;
                    let decoder = &mut self.decoder;
                    // A closed connection is noticed by the next poll.
                    let _ = conn.wait_recv(slice, |bytes| {
                        feed(decoder, state, bytes, monotonic_ns(), &mut |event| {
                            events += 1;
                            on_event(event)
                        })
                    });
                    if events > 0 {
                        return events;
                    }
                }
                None => {
                    let until_retry = self.state.retry_at_ns.saturating_sub(monotonic_ns());
                    std::thread::sleep(slice.min(Duration::from_nanos(until_retry)));
                }
            }
        }
    }

    /// Sends `message`, waiting (and polling) while the window is full or
    /// the client is reconnecting, up to `timeout`.
    pub fn send_blocking(
        &mut self,
        message: &[u8],
        timeout: Duration,
        mut on_event: impl FnMut(ClientEvent),
    ) -> Result<u32, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.send(message) {
                Err(ClientError::WindowFull | ClientError::Disconnected) => {}
                other => return other,
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            self.wait(deadline - now, &mut on_event);
        }
    }

    /// Polls until command `client_seq` (and every one before it) has its
    /// ack, up to `timeout`.
    pub fn wait_acked(
        &mut self,
        client_seq: u32,
        timeout: Duration,
        mut on_event: impl FnMut(ClientEvent),
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.state.first_unacked > client_seq {
                return Ok(());
            }
            if let Link::Closed(error) = self.state.link {
                return Err(error);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            self.wait(deadline - now, &mut on_event);
        }
    }

    /// Polls until every command sent has its ack, up to `timeout`.
    pub fn wait_all_acked(
        &mut self,
        timeout: Duration,
        on_event: impl FnMut(ClientEvent),
    ) -> Result<(), ClientError> {
        if self.state.first_unacked == self.state.next_client_seq {
            return Ok(());
        }
        let last = self.state.next_client_seq - 1;
        self.wait_acked(last, timeout, on_event)
    }

    /// Sends Logout and closes the connection; the client stops.
    pub fn logout(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let mut frame = [0u8; 8];
            let len = soup::write_logout(&mut frame).expect("fits");
            if conn.send(&frame[..len]).is_ok() {
                let _ = conn.flush(Duration::from_millis(100));
            }
        }
        self.state.link = Link::Closed(ClientError::LoggedOut);
    }

    /// Drops the connection now, as a network failure would; the client
    /// reconnects and resends on its own (for tools and tests).
    pub fn drop_connection(&mut self) {
        if self.conn.is_some() {
            self.lose_connection(monotonic_ns(), &mut |_| {});
        }
    }

    fn open(&mut self, now_ns: u64) {
        let connected = TcpConn::connect_timeout(
            self.config.gateway,
            self.config.recv_buffer_bytes,
            self.config.send_buffer_bytes,
            Duration::from_nanos(self.config.connect_timeout_ns),
        );
        let state = &mut self.state;
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(error) => {
                state.stats.connect_failures += 1;
                state.last_connect_error = Some(error.kind());
                state.retry_at_ns = now_ns + state.backoff_ns;
                state.backoff_ns = (state.backoff_ns * 2).min(self.config.reconnect_backoff_max_ns);
                return;
            }
        };
        // Resuming: ask for the acks of everything still unacknowledged.
        let requested = if state.logged_in_once {
            u64::from(state.first_unacked)
        } else {
            0
        };
        let mut login = [0u8; 64];
        let len = soup::write_login_request(
            &mut login,
            &self.config.username,
            &self.config.password,
            self.config.session,
            requested,
        )
        .expect("credentials checked in new");
        if conn.send(&login[..len]).is_err() {
            state.stats.connect_failures += 1;
            state.retry_at_ns = now_ns + state.backoff_ns;
            return;
        }
        state.stats.connects += 1;
        state.link = Link::LoggingIn;
        state.broken = false;
        state.since_ns = now_ns;
        state.last_recv_ns = now_ns;
        state.last_sent_ns = now_ns;
        state.backoff_ns = self.config.reconnect_backoff_min_ns;
        self.decoder.clear();
        self.conn = Some(conn);
    }

    fn lose_connection(&mut self, now_ns: u64, on_event: &mut impl FnMut(ClientEvent)) {
        self.conn = None;
        let state = &mut self.state;
        if matches!(state.link, Link::Closed(_)) {
            return;
        }
        state.link = Link::Down;
        state.broken = false;
        state.stats.disconnects += 1;
        state.retry_at_ns = now_ns + state.backoff_ns;
        state.backoff_ns = (state.backoff_ns * 2).min(self.config.reconnect_backoff_max_ns);
        on_event(ClientEvent::Disconnected);
    }

    /// The client_seq the next new command gets (0 before the first login).
    pub fn next_client_seq(&self) -> u32 {
        self.state.next_client_seq
    }

    /// The oldest command without an ack (== `next_client_seq` when none).
    pub fn first_unacked(&self) -> u32 {
        self.state.first_unacked
    }

    /// Commands awaiting their ack.
    pub fn unacked(&self) -> u32 {
        self.state.next_client_seq - self.state.first_unacked
    }

    /// Whether another command fits the window now.
    pub fn has_room(&self) -> bool {
        self.unacked() < self.state.window
    }

    /// Logged in and able to send.
    pub fn is_ready(&self) -> bool {
        self.state.link == Link::Ready
    }

    /// Why the client stopped, once it has.
    pub fn closed(&self) -> Option<ClientError> {
        match self.state.link {
            Link::Closed(error) => Some(error),
            _ => None,
        }
    }

    /// The text of the server's last Debug packet.
    pub fn last_debug(&self) -> &str {
        std::str::from_utf8(&self.state.debug_text[..self.state.debug_len]).unwrap_or("")
    }

    pub fn stats(&self) -> ClientStats {
        self.state.stats
    }

    /// The connection's socket, while connected (tests cut it with
    /// `shutdown(2)` to simulate a network failure).
    pub fn connection_fd(&self) -> Option<RawFd> {
        self.conn.as_ref().map(|conn| conn.as_raw_fd())
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }
}

const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<OrderEntryClient>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use tally_wire::Order;

    fn client() -> OrderEntryClient {
        let config = ClientConfig::new("127.0.0.1:1".parse().unwrap(), "pos1", "pos1pass");
        OrderEntryClient::new(config).unwrap()
    }

    fn login(client: &mut OrderEntryClient, next_seq: u64) -> Vec<ClientEvent> {
        let mut events = Vec::new();
        client.state.link = Link::LoggingIn;
        client
            .state
            .on_login_accepted(next_seq, &mut |event| events.push(event));
        events
    }

    fn ack(client: &mut OrderEntryClient, client_seq: u32) -> Vec<ClientEvent> {
        let mut events = Vec::new();
        let ack = Ack {
            client_seq,
            stream_seq: 100 + u64::from(client_seq),
            timestamp_ns: 1,
            reject: None,
        };
        client.state.on_ack(ack, &mut |event| events.push(event));
        events
    }

    #[test]
    fn commands_are_numbered_from_login_accepted_and_stamped() {
        let mut client = client();
        assert_eq!(
            client.queue(Order::new(1, 1, 9, 1).as_bytes()),
            Err(ClientError::Disconnected)
        );
        let events = login(&mut client, 5);
        assert_eq!(
            events,
            [ClientEvent::LoggedIn {
                next_client_seq: 5,
                resending: 0
            }]
        );
        let mut stamped = Order::new(1, 1, 9, 1);
        stamped.header.origin.set(77);
        stamped.header.timestamp_ns.set(123);
        assert_eq!(client.queue(stamped.as_bytes()), Ok(5));
        assert_eq!(client.queue(stamped.as_bytes()), Ok(6));
        let slot = client.state.slot(6);
        let order = tally_wire::Message::parse(slot).unwrap();
        assert_eq!(order.header().client_seq.get(), 6);
        assert_eq!(order.header().origin.get(), 0);
        assert_eq!(order.header().timestamp_ns.get(), 0);
        assert_eq!(&slot[15..], &stamped.as_bytes()[15..], "body untouched");
        assert_eq!(client.unacked(), 2);
    }

    #[test]
    fn acks_retire_commands_in_order_and_a_skipped_one_is_reported() {
        let mut client = client();
        login(&mut client, 1);
        for i in 1..=4 {
            client.queue(Order::new(i, 1, 9, 1).as_bytes()).unwrap();
        }
        assert!(matches!(
            ack(&mut client, 1)[..],
            [ClientEvent::Ack(Ack { client_seq: 1, .. })]
        ));
        let events = ack(&mut client, 3);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0], ClientEvent::AckUnavailable { client_seq: 2 });
        assert!(matches!(
            events[1],
            ClientEvent::Ack(Ack { client_seq: 3, .. })
        ));
        assert!(ack(&mut client, 3).is_empty(), "a duplicate ack is dropped");
        assert!(
            ack(&mut client, 9).is_empty(),
            "an ack for nothing sent is dropped"
        );
        let stats = client.stats();
        assert_eq!((stats.duplicate_acks, stats.unexpected_acks), (1, 1));
        assert_eq!(client.first_unacked(), 4);
    }

    #[test]
    fn a_reconnect_resends_from_the_appliance_next_number_only() {
        let mut client = client();
        login(&mut client, 1);
        for i in 1..=6 {
            client.queue(Order::new(i, 1, 9, 1).as_bytes()).unwrap();
        }
        client.state.sent_up_to = 7; // all written on the first connection
        ack(&mut client, 1);
        ack(&mut client, 2);
        // The connection drops; 3 and 4 were sequenced, 5 and 6 were not.
        let events = login(&mut client, 5);
        assert_eq!(
            events,
            [ClientEvent::LoggedIn {
                next_client_seq: 5,
                resending: 2
            }]
        );
        assert_eq!(client.state.sent_up_to, 5, "resend from 5");
        assert_eq!(
            client.first_unacked(),
            3,
            "3 and 4 await their replayed acks"
        );
    }

    #[test]
    fn a_login_that_contradicts_the_numbering_stops_the_client() {
        for next in [2u64, 9] {
            let mut client = client();
            login(&mut client, 1);
            for i in 1..=4 {
                client.queue(Order::new(i, 1, 9, 1).as_bytes()).unwrap();
            }
            ack(&mut client, 1);
            ack(&mut client, 2);
            let events = login(&mut client, next);
            let expected = ClientError::NumberingConflict {
                appliance_next: next,
                client_next: 5,
            };
            assert_eq!(events, [ClientEvent::Closed(expected)], "next {next}");
            assert_eq!(client.closed(), Some(expected));
            assert_eq!(
                client.send(Order::new(9, 1, 9, 1).as_bytes()),
                Err(expected)
            );
        }
    }

    #[test]
    fn the_window_bounds_unacknowledged_commands() {
        let mut config = ClientConfig::new("127.0.0.1:1".parse().unwrap(), "pos1", "pos1pass");
        config.window = 3;
        let mut client = OrderEntryClient::new(config).unwrap();
        login(&mut client, 1);
        for _ in 0..3 {
            client.queue(Order::new(1, 1, 9, 1).as_bytes()).unwrap();
        }
        assert_eq!(
            client.queue(Order::new(1, 1, 9, 1).as_bytes()),
            Err(ClientError::WindowFull)
        );
        ack(&mut client, 1);
        assert_eq!(client.queue(Order::new(1, 1, 9, 1).as_bytes()), Ok(4));
    }

    #[test]
    fn counters_are_published_under_their_names() {
        let file = tally_runtime::counters::CounterFile::in_memory(ClientCounters::NAMES);
        let counters = ClientCounters::from_file(&file, 0);
        let mut client = client();
        login(&mut client, 1);
        client.queue(Order::new(1, 1, 9, 1).as_bytes()).unwrap();
        counters.publish(&client);
        assert_eq!(
            file.counter_by_name("client.sessions_active")
                .unwrap()
                .get(),
            1
        );
        assert_eq!(file.counter_by_name("client.commands").unwrap().get(), 1);
    }

    #[test]
    fn credentials_that_do_not_fit_a_login_are_refused_up_front() {
        let config = ClientConfig::new("127.0.0.1:1".parse().unwrap(), "toolongname", "x");
        assert!(matches!(
            OrderEntryClient::new(config),
            Err(ClientError::InvalidCredentials)
        ));
    }
}
