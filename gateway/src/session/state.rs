//! The connection table and the per-client state of the gateway core.

use std::collections::VecDeque;
use std::net::IpAddr;

use tally_config::gateway::Role;
use tally_wire::mold::Session;
use tally_wire::soup;

use crate::counters::GatewayCounters;
use crate::throttle::Throttle;
use crate::{AckRecord, SlotId};

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
    /// Being closed; the slot is freed by [`GatewayCore::on_closed`](super::GatewayCore::on_closed).
    Closing,
}

/// A connection slot's state. `Free` slots are not exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotState {
    Free,
    Open(ConnectionState),
}

pub(super) struct Connection {
    pub(super) state: SlotState,
    /// Changes on every accept: a password-check answer for an earlier
    /// occupant of the slot is ignored.
    pub(super) ticket: u32,
    /// Client index, once a login named a configured username.
    pub(super) client: Option<u16>,
    pub(super) requested_session: Session,
    pub(super) requested_seq: u64,
    /// The peer's address; `None` when the transport did not say (tests).
    pub(super) peer: Option<IpAddr>,
    /// In the login pool (accepted, password not yet verified); otherwise
    /// counted among the sessions.
    pub(super) in_login_pool: bool,
    pub(super) accepted_ns: u64,
    /// Silence after which the peer is dropped: the configured one, or what
    /// a SoupBinTCP 4.1 login asked for within the configured bounds.
    pub(super) peer_timeout_ns: u64,
    pub(super) last_received_ns: u64,
    pub(super) last_sent_ns: u64,
    /// Rate limiter (GCRA): theoretical arrival time of the next message.
    pub(super) rate_tat_ns: u64,
    /// In the pending queue.
    pub(super) queued: bool,
    /// Marked to be closed by the next `service`, to make room in a full
    /// login pool (see [`GatewayCore::on_accept_from`]).
    pub(super) evicting: bool,
    /// Stopped reading because the sequencer ring was full.
    pub(super) blocked: bool,
}

pub(super) struct ClientState {
    pub(super) client_id: u16,
    pub(super) role: Role,
    /// Username, right-padded with spaces as in a login request.
    pub(super) username: [u8; soup::USERNAME_SIZE],
    /// Last client_seq handed to the sequencer (or recovered).
    pub(super) last_forwarded: u32,
    /// Last client_seq the sequencer sequenced (from outcomes or recovery).
    pub(super) last_sequenced: u32,
    /// Messages forwarded whose outcome has not come back.
    pub(super) in_flight: u32,
    /// Oldest client_seq in the ack history (0 = history empty). The history
    /// holds `history_first ..= last_sequenced`.
    pub(super) history_first: u32,
    /// The connection logged in (or logging in) for this client.
    pub(super) live: Option<SlotId>,
}

/// Everything but the frame decoders, so a frame borrowed from a decoder can
/// be handled while the rest of the core changes.
pub(super) struct Core {
    pub(super) session: Session,
    pub(super) heartbeat_interval_ns: u64,
    pub(super) peer_timeout_ns: u64,
    pub(super) heartbeat_timeout_min_ns: u64,
    pub(super) heartbeat_timeout_max_ns: u64,
    pub(super) login_timeout_ns: u64,
    pub(super) max_sessions: usize,
    pub(super) max_login_connections: usize,
    pub(super) max_login_connections_per_source: usize,
    pub(super) auth_in_flight_per_source: usize,
    /// Slots held by login-pool connections (until `on_closed`).
    pub(super) login_held: usize,
    /// Slots held by sessions (until `on_closed`).
    pub(super) session_held: usize,
    /// Login-pool connections marked for eviction and not yet closed.
    pub(super) evicting: usize,
    /// Slots to evict at the next `service` (capacity: every slot).
    pub(super) evictions: Vec<u32>,
    pub(super) throttle: Throttle,
    pub(super) timer_period_ns: u64,
    pub(super) next_timer_ns: u64,
    pub(super) rate_interval_ns: u64,
    pub(super) rate_tolerance_ns: u64,
    pub(super) history_capacity: usize,
    pub(super) connections: Vec<Connection>,
    pub(super) free: Vec<u32>,
    pub(super) pending: VecDeque<u32>,
    pub(super) clients: Vec<ClientState>,
    /// `(client_id, client index)` sorted by client id.
    pub(super) client_ids: Vec<(u16, u16)>,
    /// `clients.len() × history_capacity` records; client `c`'s ack for
    /// client_seq `s` is at `c × capacity + s % capacity`.
    pub(super) history: Vec<AckRecord>,
    pub(super) next_ticket: u32,
    pub(super) logged_in: u64,
    pub(super) accepted_any: bool,
    pub(super) counters: GatewayCounters,
}
