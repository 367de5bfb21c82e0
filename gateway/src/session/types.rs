//! What the gateway core exchanges with its caller: refusals, slot ids, the
//! I/O it is driven through, ack records and recovery.

use std::fmt;

use crate::auth::AuthRequest;
use crate::link::Inbound;

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
pub struct SlotId(pub(super) u32);

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
    /// [`GatewayCore::on_closed`](super::GatewayCore::on_closed).
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
/// gateway's state at start-up (see [`GatewayCore::recover`](super::GatewayCore::recover)).
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
