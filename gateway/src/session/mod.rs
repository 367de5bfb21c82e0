//! The deterministic gateway core: every SoupBinTCP session rule of
//! DESIGN.md §4, with no I/O and no clock.
//!
//! [`GatewayCore`] is a state machine driven by the gateway loop (or a test):
//! it is told about accepted connections, received bytes, password-check
//! results, sequencer outcomes and the time (`now_ns`, passed in), and acts
//! through a [`GatewayIo`] it is handed on every call: send bytes, close a
//! connection, forward an [`Inbound`](crate::link::Inbound) to the sequencer, queue a password
//! check. Everything it needs is allocated in [`GatewayCore::new`]; nothing on
//! the message path allocates, locks or logs (problems are counted in
//! [`GatewayCounters`](crate::counters::GatewayCounters)).
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
//! without a password check ([`Throttle`](crate::throttle::Throttle)). Every refusal is explained on the
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

use tally_wire::soup;

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

mod frames;
mod gateway_core;
mod outcomes;
mod send;
mod state;
#[cfg(test)]
mod tests;
mod types;
mod validate;

pub use gateway_core::*;
pub use state::ConnectionState;
use state::*;
pub use types::*;
pub use validate::validate;
