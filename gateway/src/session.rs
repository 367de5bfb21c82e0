//! The deterministic gateway core: every SoupBinTCP session rule of
//! DESIGN.md §4, with no I/O and no clock.
//!
//! [`GatewayCore`] is a state machine driven by the gateway loop (or a test):
//! it is told about accepted connections, received bytes, password-check
//! results, sequencer outcomes and the time (`now_ns`, passed in), and acts
//! through a [`GatewayIo`] it is handed on every call: send bytes, close a
//! connection, forward an [`Inbound`] to the sequencer, queue a password
//! check. Everything it needs is allocated in [`GatewayCore::new`]; nothing on
//! the message path allocates, locks or logs (problems are counted in
//! [`GatewayCounters`]).
//!
//! # Connections and clients
//!
//! A connection lives in a slot ([`SlotId`], at most `max_sessions`) and goes
//! `AwaitingLogin → Authenticating → AwaitingAcks → LoggedIn → Closing`
//! ([`ConnectionState`]). A *client* (a configured username) has state that
//! outlives its connections: the last client_seq forwarded and sequenced, the
//! commands in flight to the sequencer, a ring of its last acks, and its live
//! connection, if any. A new login for a client replaces the old connection.
//!
//! # Exactly-once
//!
//! Login Accepted carries `last sequenced client_seq + 1`, and is sent only
//! once none of the client's commands are in flight to the sequencer (so the
//! number is final). A `U` whose client_seq was already forwarded is dropped
//! and counted; one that skips ahead is a protocol error. Every other `U` is
//! forwarded: as is when valid, as a `j` gateway reject when not, and each
//! gets exactly one ack when its outcome returns.
//!
//! # Hostile and careless clients
//!
//! A connection starts in the *login pool* (`max_login_connections` at once,
//! `max_login_connections_per_source` per source address) and moves to the
//! sessions (`max_sessions`) when its password is verified; the two have
//! separate slots. A connection that is not logged in `login_timeout_ns`
//! after its accept is closed with a debug packet. A source over its
//! connection rate is refused at accept ([`Refusal`]); a login from a source
//! backing off after failures, for a username that failed too often, or from
//! a source with `auth_in_flight_per_source` checks queued is rejected `A`
//! without a password check ([`Throttle`]). Every refusal is explained on the
//! wire (a debug packet before the close or the Login Rejected) and counted.
//!
//! A `U` packet that carries no usable client_seq — shorter than the 15-byte
//! message header, or client_seq 0 — cannot be numbered, so it can have no
//! `S` ack (acks are numbered by client_seq) and is not recorded on the
//! stream: it is answered with a debug packet (`+`) that starts with
//! `rejected U, no client_seq consumed:` and the reason, and the session
//! stays open with its numbering untouched.
//!
//! # Order of a resuming login's packets
//!
//! Login Accepted first (SoupBinTCP requires it to be the first packet), then,
//! if the requested sequence number is below `next`, the remembered acks from
//! there to `next − 1`, oldest first (preceded by a debug line when the
//! history no longer reaches back that far), then live acks.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;

use tally_wire::ack::{Accepted, Rejected};
use tally_wire::mold::Session;
use tally_wire::soup::{self, login_reject, FrameDecoder};
use tally_wire::{message_size, reject_reason, GatewayReject, Header};

use crate::auth::{AuthRequest, AuthResult};
use crate::counters::GatewayCounters;
use crate::link::{Inbound, Outcome, OutcomeKind, INBOUND_MESSAGE_BYTES_MAX};
use crate::soup_server::{classify, format_text, HeartbeatPolicy, Login, Stage, Step};
use crate::throttle::{Throttle, Throttled};
use tally_config::gateway::{GatewayConfig, Role};

/// Reject reason the gateway adds to DESIGN.md's list: the message was over
/// the session's rate limit (`j` with reason `R`). Answered, never dropped.
pub const RATE_LIMITED: u8 = tally_wire::reject_reason::RATE_LIMITED;

/// How the debug packet answering a `U` without a usable client_seq
/// (shorter than the header, or client_seq 0) starts; the reason follows.
pub const UNNUMBERED_REJECT_PREFIX: &str = "rejected U, no client_seq consumed:";

pub use tally_wire::soup::DEBUG_TEXT_BYTES_MAX;

/// Frames one connection may have handled per [`GatewayCore::service`] call
/// before the others get their turn.
pub const FRAMES_PER_SLOT_PER_SERVICE: usize = 64;

/// Largest frame the gateway itself sends: a debug packet.
const OUT_FRAME_BYTES_MAX: usize = soup::LENGTH_PREFIX_SIZE + 1 + DEBUG_TEXT_BYTES_MAX;

/// Bytes of one ack on the wire (a sequenced-data frame holding a `k`).
const ACK_FRAME_BYTES: usize = tally_config::gateway::GatewayConfig::ACK_FRAME_BYTES;

/// Bytes of the largest debug packet.
const DEBUG_FRAME_BYTES: usize = OUT_FRAME_BYTES_MAX;

/// Why a connection was refused at accept. The loop sends [`Refusal::text`]
/// in a debug packet, then closes the connection; each is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The source address opened connections faster than
    /// `source_connects_per_sec` (a reconnect storm).
    ConnectRate,
    /// The login pool is full (`max_login_connections`).
    LoginPoolFull,
    /// The source address holds `max_login_connections_per_source` in the
    /// login pool already.
    SourceLimit,
    /// No connection slot is free.
    NoSlot,
}

impl Refusal {
    /// The debug text that tells the client why.
    pub fn text(self) -> &'static str {
        match self {
            Refusal::ConnectRate => {
                "refused: too many connections from your address; wait before reconnecting"
            }
            Refusal::LoginPoolFull => {
                "refused: too many connections waiting to log in; try again shortly"
            }
            Refusal::SourceLimit => {
                "refused: too many connections from your address waiting to log in"
            }
            Refusal::NoSlot => "refused: no connection slot free; try again shortly",
        }
    }
}

/// A connection slot of the core, `0..max_sessions + max_login_connections`. The loop maps it to its
/// transport's connection id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(u32);

impl SlotId {
    /// The slot with this index (the loop's own per-slot tables).
    pub fn from_index(index: usize) -> SlotId {
        SlotId(index as u32)
    }

    /// The slot numbered `index`.
    pub const fn new(index: u32) -> Self {
        SlotId(index)
    }

    /// The slot's index, `0..max_sessions + max_login_connections`.
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// Why a send did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The connection's send buffer cannot take the bytes: a slow client.
    Full,
    /// The connection is already closed.
    Closed,
}

/// What the core can do to the world. The loop implements it over its TCP
/// server and rings; tests implement it with vectors.
pub trait GatewayIo {
    /// Queues `bytes` (one or more whole frames) on the connection in `slot`.
    /// Must not block: a full send buffer is [`SendError::Full`].
    fn send(&mut self, slot: SlotId, bytes: &[u8]) -> Result<(), SendError>;

    /// Closes the connection in `slot` once what was queued has been sent
    /// (best effort). The slot stays taken until the loop calls
    /// [`GatewayCore::on_closed`].
    fn close(&mut self, slot: SlotId);

    /// Free places in the ring to the sequencer. The core forwards only when
    /// this is at least 1, so [`GatewayIo::forward`] never finds it full.
    fn sequencer_capacity(&self) -> usize;

    /// Pushes `inbound` onto the ring to the sequencer; hands it back when full.
    fn forward(&mut self, inbound: Inbound) -> Result<(), Inbound>;

    /// Free bytes in the send buffer of the connection in `slot`. The core
    /// forwards a client's command only when the acks of everything it has
    /// in flight, plus this one, are sure to fit: a client that sends faster
    /// than it reads its acks is slowed down, not disconnected.
    fn send_room(&self, slot: SlotId) -> usize;

    /// Queues a password check; hands the request back when the queue is full.
    fn authenticate(&mut self, request: AuthRequest) -> Result<(), AuthRequest>;
}

/// One remembered ack: what a client's command became.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckRecord {
    /// The stream sequence number the message got.
    pub stream_seq: u64,
    /// The sequencer's timestamp, nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// 0 for a `k` (sequenced as sent); the reason for a `j` (recorded as a
    /// gateway reject).
    pub reject_reason: u8,
}

/// What the sequencer knows about one client from its journal, to rebuild the
/// gateway's state at start-up (see [`GatewayCore::recover`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientRecovery {
    /// The client id (`origin`).
    pub client_id: u16,
    /// The last client_seq sequenced for this client (0 = none).
    pub last_client_seq: u32,
    /// Its last acks, `(client_seq, record)`, in increasing client_seq order;
    /// only the newest `ack_history_per_client` are kept.
    pub acks: Vec<(u32, AckRecord)>,
}

/// Why recovery data was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryError {
    /// No configured client has this id (e.g. removed from the configuration
    /// since the journal was written). Its state is not needed; skip it.
    UnknownClient(u16),
    /// A client_seq at or below one already recovered for this client.
    OutOfOrder {
        /// The client.
        client_id: u16,
        /// The client_seq offered.
        client_seq: u32,
        /// The last client_seq already recovered.
        last_client_seq: u32,
    },
    /// Recovery must happen before the first connection is accepted.
    AfterStart,
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RecoveryError::UnknownClient(id) => write!(f, "no configured client has id {id}"),
            RecoveryError::OutOfOrder {
                client_id,
                client_seq,
                last_client_seq,
            } => write!(
                f,
                "client {client_id}: client_seq {client_seq} is not after {last_client_seq}"
            ),
            RecoveryError::AfterStart => {
                f.write_str("gateway state recovered after the first connection")
            }
        }
    }
}

impl std::error::Error for RecoveryError {}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Accepted; the first frame must be a login request.
    AwaitingLogin,
    /// Login request received; the password is being checked. Further
    /// frames wait in the connection's buffer.
    Authenticating,
    /// Authenticated; Login Accepted waits until none of the client's
    /// commands are in flight to the sequencer. Frames wait.
    AwaitingAcks,
    /// Logged in: `U`, `R` and `O` are served.
    LoggedIn,
    /// Being closed; the slot is freed by [`GatewayCore::on_closed`].
    Closing,
}

/// A connection slot's state. `Free` slots are not exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    Open(ConnectionState),
}

struct Connection {
    state: SlotState,
    /// Changes on every accept: a password-check answer for an earlier
    /// occupant of the slot is ignored.
    ticket: u32,
    /// Client index, once a login named a configured username.
    client: Option<u16>,
    requested_session: Session,
    requested_seq: u64,
    /// The peer's address; `None` when the transport did not say (tests).
    peer: Option<IpAddr>,
    /// In the login pool (accepted, password not yet verified); otherwise
    /// counted among the sessions.
    in_login_pool: bool,
    accepted_ns: u64,
    /// Silence after which the peer is dropped: the configured one, or what
    /// a SoupBinTCP 4.1 login asked for within the configured bounds.
    peer_timeout_ns: u64,
    last_received_ns: u64,
    last_sent_ns: u64,
    /// Rate limiter (GCRA): theoretical arrival time of the next message.
    rate_tat_ns: u64,
    /// In the pending queue.
    queued: bool,
    /// Marked to be closed by the next `service`, to make room in a full
    /// login pool (see [`GatewayCore::on_accept_from`]).
    evicting: bool,
    /// Stopped reading because the sequencer ring was full.
    blocked: bool,
}

struct ClientState {
    client_id: u16,
    role: Role,
    /// Username, right-padded with spaces as in a login request.
    username: [u8; soup::USERNAME_SIZE],
    /// Last client_seq handed to the sequencer (or recovered).
    last_forwarded: u32,
    /// Last client_seq the sequencer sequenced (from outcomes or recovery).
    last_sequenced: u32,
    /// Messages forwarded whose outcome has not come back.
    in_flight: u32,
    /// Oldest client_seq in the ack history (0 = history empty). The history
    /// holds `history_first ..= last_sequenced`.
    history_first: u32,
    /// The connection logged in (or logging in) for this client.
    live: Option<SlotId>,
}

/// Everything but the frame decoders, so a frame borrowed from a decoder can
/// be handled while the rest of the core changes.
struct Core {
    session: Session,
    heartbeat_interval_ns: u64,
    peer_timeout_ns: u64,
    heartbeat_timeout_min_ns: u64,
    heartbeat_timeout_max_ns: u64,
    login_timeout_ns: u64,
    max_sessions: usize,
    max_login_connections: usize,
    max_login_connections_per_source: usize,
    auth_in_flight_per_source: usize,
    /// Slots held by login-pool connections (until `on_closed`).
    login_held: usize,
    /// Slots held by sessions (until `on_closed`).
    session_held: usize,
    /// Login-pool connections marked for eviction and not yet closed.
    evicting: usize,
    /// Slots to evict at the next `service` (capacity: every slot).
    evictions: Vec<u32>,
    throttle: Throttle,
    timer_period_ns: u64,
    next_timer_ns: u64,
    rate_interval_ns: u64,
    rate_tolerance_ns: u64,
    history_capacity: usize,
    connections: Vec<Connection>,
    free: Vec<u32>,
    pending: VecDeque<u32>,
    clients: Vec<ClientState>,
    /// `(client_id, client index)` sorted by client id.
    client_ids: Vec<(u16, u16)>,
    /// `clients.len() × history_capacity` records; client `c`'s ack for
    /// client_seq `s` is at `c × capacity + s % capacity`.
    history: Vec<AckRecord>,
    next_ticket: u32,
    logged_in: u64,
    accepted_any: bool,
    counters: GatewayCounters,
}

/// The gateway's session logic (see the module doc). One per gateway loop.
pub struct GatewayCore {
    decoders: Vec<FrameDecoder>,
    /// Buffered bytes above which a waiting connection might not take one
    /// more receive: see [`GatewayCore::is_stalled`].
    stall_buffered_bytes: usize,
    core: Core,
}

impl fmt::Debug for GatewayCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayCore")
            .field("slots", &self.decoders.len())
            .field("clients", &self.core.clients.len())
            .field("logged_in", &self.core.logged_in)
            .finish_non_exhaustive()
    }
}

impl GatewayCore {
    /// A core for `config` (which must have passed
    /// [`GatewayConfig::validate`]) with every table allocated, then the
    /// clients' state rebuilt from `recovery` (see [`GatewayCore::recover`]).
    ///
    /// # Panics
    ///
    /// On a configuration `validate` rejects (a bug in the caller).
    pub fn new(
        config: &GatewayConfig,
        counters: GatewayCounters,
        recovery: &[ClientRecovery],
    ) -> Result<Self, RecoveryError> {
        if let Err(error) = config.validate() {
            panic!("GatewayCore::new on an invalid configuration: {error}");
        }
        let slots = config.connection_slots();
        let decoder_bytes = config.receive_backlog_bytes();
        let clients: Vec<ClientState> = config
            .clients
            .iter()
            .map(|entry| ClientState {
                client_id: entry.client_id,
                role: entry.role,
                username: tally_wire::pad_ascii(&entry.username)
                    .expect("validated usernames fit the login field"),
                last_forwarded: 0,
                last_sequenced: 0,
                in_flight: 0,
                history_first: 0,
                live: None,
            })
            .collect();
        let mut client_ids: Vec<(u16, u16)> = clients
            .iter()
            .enumerate()
            .map(|(index, client)| (client.client_id, index as u16))
            .collect();
        client_ids.sort_unstable();
        let history_capacity = config.ack_history_per_client;
        let rate_interval_ns = (1_000_000_000 / u64::from(config.rate_limit_per_sec)).max(1);
        let mut core = GatewayCore {
            decoders: (0..slots)
                .map(|_| FrameDecoder::with_buffer_bytes(config.max_frame_bytes, decoder_bytes))
                .collect(),
            stall_buffered_bytes: decoder_bytes
                - config.recv_buffer_bytes
                - soup::LENGTH_PREFIX_SIZE
                - config.max_frame_bytes,
            core: Core {
                session: config.session,
                heartbeat_interval_ns: config.heartbeat_interval_ns,
                peer_timeout_ns: config.peer_timeout_ns,
                heartbeat_timeout_min_ns: config.heartbeat_timeout_min_ns,
                heartbeat_timeout_max_ns: config.heartbeat_timeout_max_ns,
                login_timeout_ns: config.login_timeout_ns,
                max_sessions: config.max_sessions,
                max_login_connections: config.max_login_connections,
                max_login_connections_per_source: config.max_login_connections_per_source,
                auth_in_flight_per_source: config.auth_in_flight_per_source,
                login_held: 0,
                evicting: 0,
                evictions: Vec::with_capacity(slots),
                session_held: 0,
                throttle: Throttle::new(config),
                // Check timers four times per heartbeat interval: a heartbeat
                // is late by at most a quarter interval.
                timer_period_ns: (config.heartbeat_interval_ns / 4).max(1),
                next_timer_ns: 0,
                rate_interval_ns,
                rate_tolerance_ns: rate_interval_ns * u64::from(config.rate_burst - 1),
                history_capacity,
                connections: (0..slots)
                    .map(|_| Connection {
                        state: SlotState::Free,
                        ticket: 0,
                        client: None,
                        requested_session: Session::BLANK,
                        requested_seq: 0,
                        peer: None,
                        in_login_pool: false,
                        accepted_ns: 0,
                        peer_timeout_ns: config.peer_timeout_ns,
                        last_received_ns: 0,
                        last_sent_ns: 0,
                        rate_tat_ns: 0,
                        queued: false,
                        blocked: false,
                        evicting: false,
                    })
                    .collect(),
                // Lowest slot first.
                free: (0..slots as u32).rev().collect(),
                pending: VecDeque::with_capacity(slots),
                history: vec![AckRecord::default(); clients.len() * history_capacity],
                clients,
                client_ids,
                next_ticket: 1,
                logged_in: 0,
                accepted_any: false,
                counters,
            },
        };
        for client in recovery {
            core.recover(client)?;
        }
        Ok(core)
    }

    /// Rebuilds one client's state from the journal: its acks (oldest first;
    /// only the newest `ack_history_per_client` are kept), then its last
    /// sequenced client_seq (which may be above the last ack given, e.g. when
    /// older journal segments are gone). Only before the first connection.
    pub fn recover(&mut self, recovery: &ClientRecovery) -> Result<(), RecoveryError> {
        for &(client_seq, record) in &recovery.acks {
            self.recover_ack(recovery.client_id, client_seq, record)?;
        }
        self.recover_last_client_seq(recovery.client_id, recovery.last_client_seq)
    }

    /// Records one journaled message of `client_id` (call for each, in stream
    /// order): its ack joins the client's history and `client_seq` becomes
    /// its last sequenced (and forwarded) client_seq. Only before the first
    /// connection.
    pub fn recover_ack(
        &mut self,
        client_id: u16,
        client_seq: u32,
        record: AckRecord,
    ) -> Result<(), RecoveryError> {
        let index = self.recoverable_client(client_id)?;
        let client = &self.core.clients[index];
        if client_seq == 0 || client_seq <= client.last_sequenced {
            return Err(RecoveryError::OutOfOrder {
                client_id,
                client_seq,
                last_client_seq: client.last_sequenced,
            });
        }
        self.core.record_ack(index, client_seq, record);
        let client = &mut self.core.clients[index];
        client.last_forwarded = client.last_sequenced;
        Ok(())
    }

    /// Sets `client_id`'s last sequenced client_seq to `last_client_seq` when
    /// that is above what was recovered so far (acks for the numbers in
    /// between are then unknown and not replayable). Only before the first
    /// connection.
    pub fn recover_last_client_seq(
        &mut self,
        client_id: u16,
        last_client_seq: u32,
    ) -> Result<(), RecoveryError> {
        let index = self.recoverable_client(client_id)?;
        let client = &mut self.core.clients[index];
        if last_client_seq > client.last_sequenced {
            client.last_sequenced = last_client_seq;
            client.last_forwarded = last_client_seq;
            // The history must end at last_sequenced: what it held is older
            // than a gap, so it can no longer be replayed contiguously.
            client.history_first = 0;
        }
        Ok(())
    }

    fn recoverable_client(&self, client_id: u16) -> Result<usize, RecoveryError> {
        if self.core.accepted_any {
            return Err(RecoveryError::AfterStart);
        }
        self.core
            .client_index(client_id)
            .ok_or(RecoveryError::UnknownClient(client_id))
    }

    /// The counters this core writes.
    pub fn counters(&self) -> &GatewayCounters {
        &self.core.counters
    }

    /// The last client_seq sequenced for `client_id` (what the next Login
    /// Accepted carries, minus one), or `None` for an unknown client.
    pub fn last_sequenced(&self, client_id: u16) -> Option<u32> {
        let index = self.core.client_index(client_id)?;
        Some(self.core.clients[index].last_sequenced)
    }

    /// Commands of `client_id` forwarded and not yet answered by the sequencer.
    pub fn in_flight(&self, client_id: u16) -> Option<u32> {
        let index = self.core.client_index(client_id)?;
        Some(self.core.clients[index].in_flight)
    }

    /// The state of the connection in `slot`, `None` when the slot is free.
    pub fn connection_state(&self, slot: SlotId) -> Option<ConnectionState> {
        match self.core.connections.get(slot.index())?.state {
            SlotState::Free => None,
            SlotState::Open(state) => Some(state),
        }
    }

    /// Bytes the connection in `slot` can still buffer before its frames are
    /// handled. The loop stops receiving on a connection when this is less
    /// than one receive, and resumes when it is back.
    pub fn receive_room(&self, slot: SlotId) -> usize {
        self.decoders[slot.index()].room()
    }

    /// Sessions logged in now.
    pub fn sessions_logged_in(&self) -> u64 {
        self.core.logged_in
    }

    /// Whether a connection whose frames wait to be handled (for room in the
    /// sequencer ring, or for their turn) has so much buffered that one more
    /// receive might not fit. The loop then takes no more bytes from the
    /// network (so TCP flow control pushes back on the clients) until the
    /// core has worked the backlog down.
    pub fn is_stalled(&self) -> bool {
        self.core.pending.iter().any(|&index| {
            self.core.is_readable(index as usize)
                && self.decoders[index as usize].buffered() > self.stall_buffered_bytes
        })
    }

    /// Slots (connections) in use, whatever their state.
    pub fn slots_in_use(&self) -> usize {
        self.core.connections.len() - self.core.free.len()
    }

    /// Takes a login-pool slot for a newly accepted connection whose source
    /// address is unknown (tests, tools: only the pool and slot limits
    /// apply), or `None` when it is refused (counted).
    pub fn on_accept(&mut self, now_ns: u64) -> Option<SlotId> {
        self.on_accept_from(None, now_ns).ok()
    }

    /// Takes a login-pool slot for a connection newly accepted from `peer`,
    /// or says why it is refused: the source is over its connection rate,
    /// the login pool is full, the source holds its share of the pool, or
    /// no slot is free. Each refusal is counted; the loop sends
    /// [`Refusal::text`] and closes the connection.
    pub fn on_accept_from(&mut self, peer: Option<IpAddr>, now_ns: u64) -> Result<SlotId, Refusal> {
        let core = &mut self.core;
        core.accepted_any = true;
        if let Some(source) = peer {
            if !core.throttle.on_connect(source, now_ns) {
                core.counters.connects_throttled.increment();
                return Err(Refusal::ConnectRate);
            }
        }
        if let Some(source) = peer {
            let held = core
                .connections
                .iter()
                .filter(|c| c.in_login_pool && c.peer == Some(source))
                .take(core.max_login_connections_per_source)
                .count();
            if held >= core.max_login_connections_per_source {
                core.counters.login_source_refused.increment();
                return Err(Refusal::SourceLimit);
            }
        }
        if core.free.is_empty() {
            core.counters.sessions_refused.increment();
            return Err(Refusal::NoSlot);
        }
        debug_assert!(core.evicting <= core.login_held);
        if core.login_held.saturating_sub(core.evicting) >= core.max_login_connections {
            // Full: make room by evicting the oldest connection that has not
            // sent a whole login request yet (idle, or dribbling one) and has
            // had a fair share of its deadline, so that a fresh till is not
            // kept out until the idlers time out. Young ones are never
            // evicted: a client's login request follows its connect at once.
            let min_age_ns = core.login_timeout_ns / 8;
            let victim = core
                .connections
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.in_login_pool
                        && !c.evicting
                        && c.state == SlotState::Open(ConnectionState::AwaitingLogin)
                        && now_ns.saturating_sub(c.accepted_ns) >= min_age_ns
                })
                .min_by_key(|(_, c)| c.accepted_ns)
                .map(|(index, _)| index);
            let Some(victim) = victim else {
                core.counters.login_pool_refused.increment();
                return Err(Refusal::LoginPoolFull);
            };
            core.connections[victim].evicting = true;
            core.evicting += 1;
            core.evictions.push(victim as u32);
            core.counters.login_pool_evictions.increment();
        }
        let index = core.free.pop().expect("checked above");
        let ticket = core.next_ticket;
        core.next_ticket = core.next_ticket.wrapping_add(1);
        let connection = &mut core.connections[index as usize];
        debug_assert_eq!(connection.state, SlotState::Free);
        // A freed slot may still sit in the pending queue; keep its flag so
        // it is never queued twice.
        let queued = connection.queued;
        *connection = Connection {
            state: SlotState::Open(ConnectionState::AwaitingLogin),
            ticket,
            client: None,
            requested_session: Session::BLANK,
            requested_seq: 0,
            peer,
            in_login_pool: true,
            accepted_ns: now_ns,
            peer_timeout_ns: core.peer_timeout_ns,
            last_received_ns: now_ns,
            last_sent_ns: now_ns,
            rate_tat_ns: 0,
            queued,
            blocked: false,
            evicting: false,
        };
        core.login_held += 1;
        core.counters.login_pool_active.set(core.login_held as u64);
        Ok(SlotId(index))
    }

    /// The transport has released the connection in `slot` (closed by the
    /// peer, by an error, or after [`GatewayIo::close`]): frees the slot.
    /// Call exactly once per slot [`GatewayCore::on_accept`] gave out.
    pub fn on_closed(&mut self, slot: SlotId) {
        let index = slot.index();
        if self.core.connections[index].state == SlotState::Free {
            debug_assert!(false, "on_closed for free slot {index}");
            return;
        }
        self.core.detach(slot);
        // Drop whatever partial frame the closed connection left behind.
        self.decoders[index].clear();
        let connection = &mut self.core.connections[index];
        connection.state = SlotState::Free;
        connection.client = None;
        if connection.evicting {
            connection.evicting = false;
            self.core.evicting -= 1;
        }
        if connection.in_login_pool {
            connection.in_login_pool = false;
            self.core.login_held -= 1;
            self.core
                .counters
                .login_pool_active
                .set(self.core.login_held as u64);
        } else {
            self.core.session_held -= 1;
        }
        // `queued` stays: service() skips free slots and clears it.
        self.core.free.push(slot.0);
    }

    /// The writable tail of `slot`'s receive buffer, for a transport that
    /// receives straight into it; report what was written with
    /// [`GatewayCore::on_received`]. Empty while the connection is stalled
    /// (its buffered frames wait for room in the sequencer ring).
    pub fn receive_buffer(&mut self, slot: SlotId) -> &mut [u8] {
        self.decoders[slot.index()].spare()
    }

    /// `n` bytes were written into [`GatewayCore::receive_buffer`]: handles
    /// the frames they complete.
    pub fn on_received(&mut self, io: &mut impl GatewayIo, slot: SlotId, n: usize, now_ns: u64) {
        let index = slot.index();
        if !self.core.is_readable(index) {
            return;
        }
        self.decoders[index].commit(n);
        self.core.connections[index].last_received_ns = now_ns;
        self.drain(io, slot, usize::MAX, now_ns);
    }

    /// Bytes received on `slot`: buffers and handles them. Returns how many
    /// were taken; fewer than `data.len()` only when the connection is
    /// stalled (frames waiting for room in the sequencer ring, or for a login
    /// to complete) and its buffer is full: the caller keeps the rest and
    /// offers it again later. Data for a closing connection is discarded
    /// (reported as taken).
    pub fn on_data(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        data: &[u8],
        now_ns: u64,
    ) -> usize {
        let index = slot.index();
        if !self.core.is_readable(index) {
            return data.len();
        }
        self.core.connections[index].last_received_ns = now_ns;
        let mut taken = 0;
        while taken < data.len() {
            let n = self.decoders[index].extend(&data[taken..]);
            taken += n;
            self.drain(io, slot, usize::MAX, now_ns);
            if n == 0 || !self.core.is_readable(index) {
                break;
            }
        }
        if !self.core.is_readable(index) {
            return data.len();
        }
        taken
    }

    /// The transport could not hand over received bytes because
    /// [`GatewayCore::on_data`] took fewer than offered (the connection's
    /// buffer is full while its frames wait) and it cannot keep them: closes
    /// the connection with a debug packet saying so; counted. Nothing is
    /// lost: the client reconnects and resends from Login Accepted's next
    /// client_seq.
    pub fn on_receive_overflow(&mut self, io: &mut impl GatewayIo, slot: SlotId, now_ns: u64) {
        if !self.core.is_readable(slot.index()) {
            return;
        }
        self.core.counters.receive_overflows.increment();
        self.core.send_debug(
            io,
            slot,
            now_ns,
            format_args!(
                "receive buffer full while the sequencer is busy: closing; \
                 log in again and resend from the next client_seq"
            ),
        );
        self.core.close(io, slot);
    }

    /// A password check finished.
    pub fn on_auth_result(&mut self, io: &mut impl GatewayIo, result: AuthResult, now_ns: u64) {
        self.core.on_auth_result(io, result, now_ns);
    }

    /// The sequencer's answer for one forwarded message.
    pub fn on_outcome(&mut self, io: &mut impl GatewayIo, outcome: Outcome, now_ns: u64) {
        self.core.on_outcome(io, outcome, now_ns);
    }

    /// Periodic duties, once per loop cycle: resumes connections that
    /// stopped reading (ring full, login just completed, frame budget used),
    /// and every quarter heartbeat interval sends heartbeats and drops silent
    /// peers. Returns the work done (frames handled, heartbeats, timeouts).
    pub fn service(&mut self, io: &mut impl GatewayIo, now_ns: u64) -> usize {
        let mut work = 0;
        // Connections evicted from a full login pool by on_accept_from.
        while let Some(index) = self.core.evictions.pop() {
            let index = index as usize;
            let connection = &mut self.core.connections[index];
            if !connection.evicting {
                continue; // closed meanwhile
            }
            if connection.state != SlotState::Open(ConnectionState::AwaitingLogin) {
                // Its login arrived in time: spared.
                connection.evicting = false;
                self.core.evicting -= 1;
                continue;
            }
            work += 1;
            let slot = SlotId(index as u32);
            self.core.send_debug(
                io,
                slot,
                now_ns,
                format_args!("closed: the login pool is full and no login arrived"),
            );
            self.core.close(io, slot);
        }
        // Each slot queued now gets one turn; those that re-queue wait for
        // the next call.
        for _ in 0..self.core.pending.len() {
            let Some(index) = self.core.pending.pop_front() else {
                break;
            };
            self.core.connections[index as usize].queued = false;
            if !self.core.is_readable(index as usize) {
                continue;
            }
            work += self.drain(io, SlotId(index), FRAMES_PER_SLOT_PER_SERVICE, now_ns);
        }
        if now_ns >= self.core.next_timer_ns {
            self.core.next_timer_ns = now_ns.saturating_add(self.core.timer_period_ns);
            work += self.core.run_timers(io, now_ns);
        }
        work
    }

    /// Handles up to `max_frames` frames buffered on `slot`; queues the slot
    /// for [`GatewayCore::service`] when frames may remain. Returns the frames
    /// handled.
    fn drain(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        max_frames: usize,
        now_ns: u64,
    ) -> usize {
        let index = slot.index();
        let mut handled = 0;
        loop {
            let state = match self.core.connections[index].state {
                SlotState::Open(state) => state,
                SlotState::Free => return handled,
            };
            match state {
                ConnectionState::AwaitingLogin | ConnectionState::LoggedIn => {}
                // Frames wait until the login completes (the core queues the
                // slot then) or are dropped with the connection.
                ConnectionState::Authenticating
                | ConnectionState::AwaitingAcks
                | ConnectionState::Closing => return handled,
            }
            if self.decoders[index].buffered() == 0 {
                self.core.connections[index].blocked = false;
                return handled;
            }
            if handled >= max_frames {
                self.core.enqueue(index);
                return handled;
            }
            if state == ConnectionState::LoggedIn
                && (io.sequencer_capacity() == 0 || !self.core.has_ack_room(io, index))
            {
                // Back-pressure: leave the frames where they are.
                let connection = &mut self.core.connections[index];
                if !connection.blocked {
                    connection.blocked = true;
                    self.core.counters.ring_full.increment();
                }
                self.core.enqueue(index);
                return handled;
            }
            match self.decoders[index].next_frame() {
                Ok(Some(frame)) => {
                    handled += 1;
                    self.core.connections[index].blocked = false;
                    self.core.on_frame(io, slot, state, frame, now_ns);
                }
                Ok(None) => {
                    self.core.connections[index].blocked = false;
                    return handled;
                }
                Err(error) => {
                    handled += 1;
                    self.core
                        .protocol_error(io, slot, now_ns, format_args!("{error}"));
                    return handled;
                }
            }
        }
    }
}

impl Core {
    fn client_index(&self, client_id: u16) -> Option<usize> {
        self.client_ids
            .binary_search_by_key(&client_id, |&(id, _)| id)
            .ok()
            .map(|position| usize::from(self.client_ids[position].1))
    }

    fn username_index(&self, username: &[u8; soup::USERNAME_SIZE]) -> Option<u16> {
        self.clients
            .iter()
            .position(|client| &client.username == username)
            .map(|index| index as u16)
    }

    fn state(&self, slot: SlotId) -> Option<ConnectionState> {
        match self.connections[slot.index()].state {
            SlotState::Open(state) => Some(state),
            SlotState::Free => None,
        }
    }

    /// Whether received bytes for this slot are still of interest.
    fn is_readable(&self, index: usize) -> bool {
        matches!(
            self.connections[index].state,
            SlotState::Open(
                ConnectionState::AwaitingLogin
                    | ConnectionState::Authenticating
                    | ConnectionState::AwaitingAcks
                    | ConnectionState::LoggedIn
            )
        )
    }

    fn enqueue(&mut self, index: usize) {
        let connection = &mut self.connections[index];
        if !connection.queued {
            connection.queued = true;
            // Capacity is max_sessions and a slot is queued at most once.
            debug_assert!(self.pending.len() < self.pending.capacity());
            self.pending.push_back(index as u32);
        }
    }

    // ---- sending ---------------------------------------------------------

    /// Whether the send buffer of connection `index` has room for the acks
    /// of everything its client has in flight plus one more command, and a
    /// debug packet besides.
    fn has_ack_room(&self, io: &impl GatewayIo, index: usize) -> bool {
        let Some(client) = self.connections[index].client else {
            return true;
        };
        let in_flight = self.clients[usize::from(client)].in_flight as usize;
        let needed = (in_flight + 1) * ACK_FRAME_BYTES + DEBUG_FRAME_BYTES;
        io.send_room(SlotId(index as u32)) >= needed
    }

    /// Sends `bytes`; on a full send buffer closes the connection as a slow
    /// client. Returns whether the bytes were queued.
    fn send(&mut self, io: &mut impl GatewayIo, slot: SlotId, bytes: &[u8], now_ns: u64) -> bool {
        match io.send(slot, bytes) {
            Ok(()) => {
                self.connections[slot.index()].last_sent_ns = now_ns;
                true
            }
            Err(SendError::Full) => {
                self.counters.slow_clients_closed.increment();
                self.close(io, slot);
                false
            }
            Err(SendError::Closed) => {
                self.close(io, slot);
                false
            }
        }
    }

    fn send_debug(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        now_ns: u64,
        args: fmt::Arguments<'_>,
    ) -> bool {
        let mut text = [0u8; DEBUG_TEXT_BYTES_MAX];
        let text = format_text(&mut text, args);
        let mut frame = [0u8; OUT_FRAME_BYTES_MAX];
        let len = soup::write_debug(&mut frame, text).expect("debug text fits its frame");
        self.send(io, slot, &frame[..len], now_ns)
    }

    fn send_ack(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        client_seq: u32,
        record: AckRecord,
        now_ns: u64,
    ) -> bool {
        let mut frame = [0u8; OUT_FRAME_BYTES_MAX];
        let len = if record.reject_reason == 0 {
            let ack = Accepted::new(client_seq, record.stream_seq, record.timestamp_ns);
            soup::write_sequenced(&mut frame, ack.as_bytes())
        } else {
            let ack = Rejected::new(client_seq, record.stream_seq, record.reject_reason);
            soup::write_sequenced(&mut frame, ack.as_bytes())
        }
        .expect("an ack fits its frame");
        let sent = self.send(io, slot, &frame[..len], now_ns);
        if sent {
            self.counters.acks_out.increment();
        }
        sent
    }

    // ---- closing ---------------------------------------------------------

    /// Detaches the connection from its client and the logged-in count.
    fn detach(&mut self, slot: SlotId) {
        let connection = &mut self.connections[slot.index()];
        if connection.state == SlotState::Open(ConnectionState::LoggedIn) {
            self.logged_in -= 1;
            self.counters.sessions_active.set(self.logged_in);
        }
        if let Some(client) = connection.client {
            let client = &mut self.clients[usize::from(client)];
            if client.live == Some(slot) {
                client.live = None;
            }
        }
    }

    /// Closes the connection (idempotent): no more frames are handled, no
    /// more packets sent; the slot is freed by `on_closed`.
    fn close(&mut self, io: &mut impl GatewayIo, slot: SlotId) {
        match self.connections[slot.index()].state {
            SlotState::Free | SlotState::Open(ConnectionState::Closing) => return,
            SlotState::Open(_) => {}
        }
        self.detach(slot);
        self.connections[slot.index()].state = SlotState::Open(ConnectionState::Closing);
        io.close(slot);
    }

    /// A debug packet saying what was wrong, then close. Counted.
    fn protocol_error(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        now_ns: u64,
        args: fmt::Arguments<'_>,
    ) {
        self.counters.protocol_errors.increment();
        self.send_debug(io, slot, now_ns, format_args!("protocol error: {args}"));
        self.close(io, slot);
    }

    /// Login Rejected with `reason`, then close. Counted.
    fn reject_login(&mut self, io: &mut impl GatewayIo, slot: SlotId, reason: u8, now_ns: u64) {
        self.counters.logins_rejected.increment();
        let mut frame = [0u8; OUT_FRAME_BYTES_MAX];
        let len = soup::write_login_rejected(&mut frame, reason).expect("fits");
        self.send(io, slot, &frame[..len], now_ns);
        self.close(io, slot);
    }

    /// Login Rejected with `reason` (the login's answer comes first, as
    /// SoupBinTCP clients expect), then a debug packet saying why, then
    /// close. Counted.
    fn reject_login_saying(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        reason: u8,
        now_ns: u64,
        args: fmt::Arguments<'_>,
    ) {
        self.counters.logins_rejected.increment();
        let mut frame = [0u8; OUT_FRAME_BYTES_MAX];
        let len = soup::write_login_rejected(&mut frame, reason).expect("fits");
        if self.send(io, slot, &frame[..len], now_ns) {
            self.send_debug(io, slot, now_ns, args);
        }
        self.close(io, slot);
    }

    // ---- frames ----------------------------------------------------------

    fn on_frame(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        state: ConnectionState,
        frame: &[u8],
        now_ns: u64,
    ) {
        let stage = match state {
            ConnectionState::AwaitingLogin => Stage::AwaitingLogin,
            ConnectionState::LoggedIn => Stage::LoggedIn,
            state => unreachable!("drain hands no frames to a {state:?} connection"),
        };
        match classify(stage, frame) {
            Step::Login(login) => self.start_login(io, slot, login, now_ns),
            Step::Data(message) => self.on_message(io, slot, message, now_ns),
            Step::Heartbeat => {}
            Step::Logout => self.close(io, slot),
            Step::Error(error) => self.protocol_error(io, slot, now_ns, format_args!("{error}")),
        }
    }

    fn start_login(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        login: Login<'_>,
        now_ns: u64,
    ) {
        let client = self.username_index(login.username);
        let peer = self.connections[slot.index()].peer;
        // Throttles first: a refused attempt costs no password check.
        if let Err(throttled) = self.throttle.login_allowed(peer, client, now_ns) {
            self.counters.logins_throttled.increment();
            let (what, retry_in_ns) = match throttled {
                Throttled::SourceBackoff { retry_in_ns } => {
                    ("too many failed logins from your address", retry_in_ns)
                }
                Throttled::UsernameFailures { retry_in_ns } => {
                    ("too many failed logins for this username", retry_in_ns)
                }
            };
            return self.reject_login_saying(
                io,
                slot,
                login_reject::NOT_AUTHORIZED,
                now_ns,
                format_args!(
                    "login throttled: {what}; retry in {} ms",
                    retry_in_ns.div_ceil(1_000_000)
                ),
            );
        }
        if let Some(source) = peer {
            let checking = self
                .connections
                .iter()
                .filter(|c| {
                    c.peer == Some(source)
                        && c.state == SlotState::Open(ConnectionState::Authenticating)
                })
                .take(self.auth_in_flight_per_source)
                .count();
            if checking >= self.auth_in_flight_per_source {
                self.counters.logins_throttled.increment();
                return self.reject_login_saying(
                    io,
                    slot,
                    login_reject::NOT_AUTHORIZED,
                    now_ns,
                    format_args!(
                        "login throttled: {checking} logins from your address are being checked"
                    ),
                );
            }
        }
        let policy = HeartbeatPolicy {
            peer_timeout_ns: self.peer_timeout_ns,
            heartbeat_interval_ns: self.heartbeat_interval_ns,
            timeout_min_ns: self.heartbeat_timeout_min_ns,
            timeout_max_ns: self.heartbeat_timeout_max_ns,
        };
        // The gateway keeps one heartbeat interval for every session (below
        // every allowed timeout's third, see the configuration's checks).
        let peer_timeout_ns = policy.negotiate(login.heartbeat_timeout_ms).peer_timeout_ns;
        let connection = &mut self.connections[slot.index()];
        connection.client = client;
        connection.requested_session = login.session;
        connection.requested_seq = login.requested_seq;
        connection.peer_timeout_ns = peer_timeout_ns;
        let request = AuthRequest {
            slot: slot.0,
            ticket: connection.ticket,
            client_index: client,
            password: *login.password,
        };
        // Every login, known username or not, goes through the same check:
        // the answer's timing does not tell which usernames exist.
        match io.authenticate(request) {
            Ok(()) => {
                connection.state = SlotState::Open(ConnectionState::Authenticating);
                self.counters.password_checks.increment();
            }
            Err(_) => {
                self.counters.auth_busy.increment();
                self.reject_login(io, slot, login_reject::NOT_AUTHORIZED, now_ns);
            }
        }
    }

    fn on_auth_result(&mut self, io: &mut impl GatewayIo, result: AuthResult, now_ns: u64) {
        let Some(connection) = self.connections.get(result.slot as usize) else {
            debug_assert!(false, "auth result for slot {} out of range", result.slot);
            return;
        };
        if connection.state != SlotState::Open(ConnectionState::Authenticating)
            || connection.ticket != result.ticket
        {
            // The connection closed (and the slot may serve another) meanwhile.
            return;
        }
        let slot = SlotId(result.slot);
        let requested_session = connection.requested_session;
        let peer = connection.peer;
        let client_index = match connection.client {
            Some(index) if result.verified => usize::from(index),
            client => {
                self.counters.login_failures.increment();
                self.throttle.on_login_failed(peer, client, now_ns);
                return self.reject_login(io, slot, login_reject::NOT_AUTHORIZED, now_ns);
            }
        };
        if !self.clients[client_index].role.may_use_gateway() {
            return self.reject_login(io, slot, login_reject::NOT_AUTHORIZED, now_ns);
        }
        if !requested_session.is_blank() && requested_session != self.session {
            return self.reject_login(io, slot, login_reject::SESSION_UNAVAILABLE, now_ns);
        }
        // Leave the login pool for the sessions; a client replacing its own
        // session may take one over the limit until the old one is gone.
        if self.session_held >= self.max_sessions && self.clients[client_index].live.is_none() {
            self.counters.sessions_refused.increment();
            let max_sessions = self.max_sessions;
            return self.reject_login_saying(
                io,
                slot,
                login_reject::SESSION_UNAVAILABLE,
                now_ns,
                format_args!("{max_sessions} sessions are logged in: no room for another"),
            );
        }
        let connection = &mut self.connections[slot.index()];
        debug_assert!(connection.in_login_pool);
        connection.in_login_pool = false;
        if connection.evicting {
            // Marked while it was still idle; its login won the race.
            connection.evicting = false;
            self.evicting -= 1;
        }
        self.login_held -= 1;
        self.session_held += 1;
        self.counters.login_pool_active.set(self.login_held as u64);
        if let Some(old) = self.clients[client_index].live {
            debug_assert_ne!(old, slot);
            self.send_debug(io, old, now_ns, format_args!("replaced by a new login"));
            self.close(io, old);
        }
        self.clients[client_index].live = Some(slot);
        self.connections[slot.index()].state = SlotState::Open(ConnectionState::AwaitingAcks);
        if self.clients[client_index].in_flight == 0 {
            self.complete_login(io, slot, client_index, now_ns);
        }
    }

    /// Login Accepted, then the requested ack replay; the connection is then
    /// logged in and its waiting frames are queued for handling.
    fn complete_login(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        client_index: usize,
        now_ns: u64,
    ) {
        debug_assert_eq!(self.clients[client_index].in_flight, 0);
        let client = &mut self.clients[client_index];
        // Nothing in flight: what was forwarded is exactly what was
        // sequenced (a rejected skip-ahead may have left them apart).
        client.last_forwarded = client.last_sequenced;
        let next = u64::from(client.last_sequenced) + 1;
        let history_first = client.history_first;
        let requested_seq = self.connections[slot.index()].requested_seq;

        let mut frame = [0u8; OUT_FRAME_BYTES_MAX];
        let len = soup::write_login_accepted(&mut frame, self.session, next).expect("fits");
        if !self.send(io, slot, &frame[..len], now_ns) {
            return;
        }
        self.counters.logins_accepted.increment();
        let connection = &mut self.connections[slot.index()];
        connection.state = SlotState::Open(ConnectionState::LoggedIn);
        connection.rate_tat_ns = 0;
        self.logged_in += 1;
        self.counters.sessions_active.set(self.logged_in);

        if requested_seq >= 1 && requested_seq < next {
            let mut from = requested_seq as u32;
            if history_first == 0 || from < history_first {
                let available = if history_first == 0 {
                    next
                } else {
                    u64::from(history_first)
                };
                if !self.send_debug(
                    io,
                    slot,
                    now_ns,
                    format_args!(
                        "acks before client_seq {available} are no longer held; \
                         replay starts at client_seq {available}"
                    ),
                ) {
                    return;
                }
                from = available as u32;
            }
            for client_seq in u64::from(from)..next {
                let client_seq = client_seq as u32;
                let record = self.history_at(client_index, client_seq);
                if !self.send_ack(io, slot, client_seq, record, now_ns) {
                    return;
                }
            }
        }
        // Frames that arrived during the login wait in the buffer.
        self.enqueue(slot.index());
    }

    fn on_message(&mut self, io: &mut impl GatewayIo, slot: SlotId, message: &[u8], now_ns: u64) {
        self.counters.messages_in.increment();
        let client_index = usize::from(
            self.connections[slot.index()]
                .client
                .expect("a logged-in connection has a client"),
        );
        let client = &self.clients[client_index];
        let expected = u64::from(client.last_forwarded) + 1;
        // A message without a whole header has no usable client_seq: it
        // cannot be numbered, acked or recorded. Say so; consume nothing.
        if message.len() < Header::SIZE {
            return self.reject_unnumbered(
                io,
                slot,
                now_ns,
                format_args!(
                    "{}-byte message is shorter than the {}-byte header; next client_seq {expected}",
                    message.len(),
                    Header::SIZE
                ),
            );
        }
        let client_seq = u32::from_be_bytes(message[3..7].try_into().expect("4 bytes"));
        if client_seq == 0 {
            return self.reject_unnumbered(
                io,
                slot,
                now_ns,
                format_args!("client_seq 0 is not a message number; next client_seq {expected}"),
            );
        }
        if client_seq <= client.last_forwarded {
            self.counters.duplicates_dropped.increment();
            return;
        }
        if u64::from(client_seq) > expected {
            return self.protocol_error(
                io,
                slot,
                now_ns,
                format_args!("client_seq {client_seq} skips ahead of the expected {expected}"),
            );
        }
        let client_id = client.client_id;
        let reason = validate(message, client.role);
        let within_rate = self.take_rate_token(slot, now_ns);
        let reason = match reason {
            0 if !within_rate => RATE_LIMITED,
            reason => reason,
        };
        let inbound = if reason == 0 {
            let mut inbound = Inbound::new(client_id, client_seq, 0, message);
            let header = tally_wire::header_mut(inbound.message_mut())
                .expect("a valid message holds a header");
            header.origin = client_id.into();
            header.timestamp_ns = 0.into();
            inbound
        } else {
            self.counters.gateway_rejects.increment();
            if reason == RATE_LIMITED {
                self.counters.rate_limited.increment();
            }
            let reject = GatewayReject::new(reason)
                .with_origin(client_id)
                .with_client_seq(client_seq);
            Inbound::new(client_id, client_seq, reason, reject.as_bytes())
        };
        // drain() checked that the ring has room, and this loop is its only
        // producer.
        assert!(
            io.forward(inbound).is_ok(),
            "sequencer ring full after its capacity was checked"
        );
        let client = &mut self.clients[client_index];
        client.last_forwarded = client_seq;
        client.in_flight += 1;
    }

    /// Answers a `U` that has no usable client_seq with a debug packet
    /// (within the session's rate limit; counted either way). Nothing is
    /// forwarded and the client's numbering does not move.
    fn reject_unnumbered(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        now_ns: u64,
        args: fmt::Arguments<'_>,
    ) {
        self.counters.unnumbered_rejects.increment();
        if self.take_rate_token(slot, now_ns) {
            self.send_debug(
                io,
                slot,
                now_ns,
                format_args!("{UNNUMBERED_REJECT_PREFIX} {args}"),
            );
        } else {
            self.counters.rate_limited.increment();
        }
    }

    /// GCRA: at most `rate_burst` messages at once, refilled at
    /// `rate_limit_per_sec`. Returns whether the message is within the limit.
    fn take_rate_token(&mut self, slot: SlotId, now_ns: u64) -> bool {
        let connection = &mut self.connections[slot.index()];
        let tat_ns = connection.rate_tat_ns.max(now_ns);
        if tat_ns - now_ns > self.rate_tolerance_ns {
            return false;
        }
        connection.rate_tat_ns = tat_ns + self.rate_interval_ns;
        true
    }

    // ---- outcomes --------------------------------------------------------

    fn history_at(&self, client_index: usize, client_seq: u32) -> AckRecord {
        let capacity = self.history_capacity;
        self.history[client_index * capacity + client_seq as usize % capacity]
    }

    /// Adds the ack of `client_seq` (above the client's last sequenced) to
    /// its history and makes it the last sequenced.
    fn record_ack(&mut self, client_index: usize, client_seq: u32, record: AckRecord) {
        let capacity = self.history_capacity;
        let client = &mut self.clients[client_index];
        debug_assert!(client_seq > client.last_sequenced);
        if client.history_first == 0 || client_seq != client.last_sequenced + 1 {
            // First ack, or a gap: the history restarts here.
            client.history_first = client_seq;
        } else if (client_seq - client.history_first) as usize >= capacity {
            client.history_first += 1;
        }
        client.last_sequenced = client_seq;
        self.history[client_index * capacity + client_seq as usize % capacity] = record;
    }

    fn on_outcome(&mut self, io: &mut impl GatewayIo, outcome: Outcome, now_ns: u64) {
        let Some(client_index) = self.client_index(outcome.origin) else {
            debug_assert!(false, "outcome for unknown client {}", outcome.origin);
            return;
        };
        let client = &mut self.clients[client_index];
        debug_assert!(client.in_flight > 0, "outcome with nothing in flight");
        client.in_flight = client.in_flight.saturating_sub(1);
        let live = client.live;
        let logged_in = live.filter(|&slot| self.state(slot) == Some(ConnectionState::LoggedIn));
        let record = match outcome.kind {
            OutcomeKind::Accepted => Some(AckRecord {
                stream_seq: outcome.stream_seq,
                timestamp_ns: outcome.timestamp_ns,
                reject_reason: 0,
            }),
            OutcomeKind::Rejected { reason } => Some(AckRecord {
                stream_seq: outcome.stream_seq,
                timestamp_ns: outcome.timestamp_ns,
                reject_reason: reason,
            }),
            OutcomeKind::Duplicate => {
                self.counters.duplicates_dropped.increment();
                None
            }
            OutcomeKind::SkippedAhead => {
                if let Some(slot) = live {
                    self.protocol_error(
                        io,
                        slot,
                        now_ns,
                        format_args!(
                            "client_seq {} is not the next the sequencer expects",
                            outcome.client_seq
                        ),
                    );
                } else {
                    self.counters.protocol_errors.increment();
                }
                None
            }
        };
        if let Some(record) = record {
            if outcome.client_seq > self.clients[client_index].last_sequenced {
                self.record_ack(client_index, outcome.client_seq, record);
                if let Some(slot) = logged_in {
                    self.send_ack(io, slot, outcome.client_seq, record, now_ns);
                }
            } else {
                debug_assert!(
                    false,
                    "outcome for client {} client_seq {} at or below the last sequenced",
                    outcome.origin, outcome.client_seq
                );
            }
        }
        let client = &self.clients[client_index];
        if client.in_flight == 0 {
            if let Some(slot) = client.live {
                if self.state(slot) == Some(ConnectionState::AwaitingAcks) {
                    self.complete_login(io, slot, client_index, now_ns);
                }
            }
        }
    }

    // ---- timers ----------------------------------------------------------

    fn run_timers(&mut self, io: &mut impl GatewayIo, now_ns: u64) -> usize {
        let mut work = 0;
        for index in 0..self.connections.len() {
            let connection = &self.connections[index];
            let SlotState::Open(state) = connection.state else {
                continue;
            };
            if state == ConnectionState::Closing {
                continue;
            }
            let slot = SlotId(index as u32);
            if connection.in_login_pool
                && now_ns.saturating_sub(connection.accepted_ns) >= self.login_timeout_ns
            {
                work += 1;
                self.counters.login_timeouts.increment();
                let login_timeout_ms = self.login_timeout_ns / 1_000_000;
                self.send_debug(
                    io,
                    slot,
                    now_ns,
                    format_args!("not logged in within {login_timeout_ms} ms: closing"),
                );
                self.close(io, slot);
                continue;
            }
            let silent_ns = now_ns.saturating_sub(connection.last_received_ns);
            if silent_ns >= connection.peer_timeout_ns {
                work += 1;
                self.counters.sessions_timed_out.increment();
                self.send_debug(
                    io,
                    slot,
                    now_ns,
                    format_args!("nothing received for {} ms: closing", silent_ns / 1_000_000),
                );
                self.close(io, slot);
                continue;
            }
            if state == ConnectionState::LoggedIn
                && now_ns.saturating_sub(connection.last_sent_ns) >= self.heartbeat_interval_ns
            {
                work += 1;
                let mut frame = [0u8; 8];
                let len = soup::write_server_heartbeat(&mut frame).expect("fits");
                if self.send(io, slot, &frame[..len], now_ns) {
                    self.counters.heartbeats_sent.increment();
                }
            }
        }
        work
    }
}

/// The `j` reason for a stream message a client with `role` submits, or 0
/// when it is valid: unknown type `T`, wrong length `W`, not permitted `P`.
pub fn validate(message: &[u8], role: Role) -> u8 {
    let Some(&msg_type) = message.first() else {
        return reject_reason::UNKNOWN_TYPE;
    };
    let Some(size) = message_size(msg_type) else {
        return reject_reason::UNKNOWN_TYPE;
    };
    if message.len() != size {
        return reject_reason::WRONG_LENGTH;
    }
    if !role.permits(msg_type) {
        return reject_reason::NOT_PERMITTED;
    }
    debug_assert!((Header::SIZE..=INBOUND_MESSAGE_BYTES_MAX).contains(&size));
    0
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
