//! One client connection of the replay feed: its phase, its position in the
//! journal, its heartbeat and its stall deadline.

use tally_runtime::net::ConnId;
use tally_wire::mold::Session;

use super::{INBOUND_BUFFER_BYTES, PEER_TIMEOUT_NS};
use crate::journal::Cursor;

/// Where a connection is in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// No connection in this slot.
    Free,
    /// Connected; the first frame must be a login.
    AwaitingLogin,
    /// Login handed to the auth thread; waiting for its verdict.
    Authenticating,
    /// Logged in: replaying, then tailing.
    Streaming,
    /// Close requested; waiting for the server's `Closed` event.
    Closing,
}

/// One connection's state, in a fixed array indexed by [`ConnId::index`].
#[derive(Debug)]
pub(super) struct ClientSlot {
    pub(super) conn: Option<ConnId>,
    pub(super) phase: Phase,
    /// A partly received frame (length prefix included).
    pub(super) inbound: [u8; INBOUND_BUFFER_BYTES],
    pub(super) inbound_bytes: usize,
    /// Changes with every login submitted, so a verdict for an earlier
    /// connection in this slot is recognised and ignored.
    pub(super) ticket: u32,
    pub(super) requested_session: Session,
    /// The peer's IPv4 address as bits (0 for IPv6): the per-source limit
    /// on connections not logged in yet.
    pub(super) peer_bits: u32,
    /// The configured client that logged in (or is logging in).
    pub(super) client_index: Option<u16>,
    /// When the connection was accepted (the login deadline runs from it).
    pub(super) accepted_ns: u64,
    /// This client's negotiated timeouts.
    pub(super) peer_timeout_ns: u64,
    pub(super) heartbeat_interval_ns: u64,
    /// Bytes queued for the kernel after this loop's last sends.
    pub(super) queued_bytes: usize,
    /// Last time the kernel took some of the queued bytes (or none waited).
    pub(super) drained_ns: u64,
    /// Next message to send to the client.
    pub(super) next_seq: u64,
    /// Journal position; `None` until positioned at `next_seq`. May trail
    /// `next_seq` while scanning from the start of the journal.
    pub(super) cursor: Option<Cursor>,
    pub(super) last_recv_ns: u64,
    pub(super) last_send_ns: u64,
    /// Open while the send buffer limits what the client is sent.
    pub(super) stall: Option<Stall>,
}

/// A client's send buffer has been limiting what it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stall {
    /// When the buffer first limited a poll's sending.
    pub(super) since_ns: u64,
    /// Bytes the client has drained since (appended into freed space).
    pub(super) drained_bytes: usize,
}

impl ClientSlot {
    pub(super) fn free() -> Self {
        ClientSlot {
            conn: None,
            phase: Phase::Free,
            inbound: [0; INBOUND_BUFFER_BYTES],
            inbound_bytes: 0,
            ticket: 0,
            requested_session: Session::BLANK,
            peer_bits: 0,
            client_index: None,
            accepted_ns: 0,
            peer_timeout_ns: PEER_TIMEOUT_NS,
            heartbeat_interval_ns: 1_000_000_000,
            queued_bytes: 0,
            drained_ns: 0,
            next_seq: 1,
            cursor: None,
            last_recv_ns: 0,
            last_send_ns: 0,
            stall: None,
        }
    }

    pub(super) fn reset(&mut self, conn: Option<ConnId>, phase: Phase, now_ns: u64) {
        let ticket = self.ticket;
        *self = ClientSlot::free();
        self.ticket = ticket;
        self.conn = conn;
        self.phase = phase;
        self.last_recv_ns = now_ns;
        self.last_send_ns = now_ns;
        self.accepted_ns = now_ns;
        self.drained_ns = now_ns;
    }
}
