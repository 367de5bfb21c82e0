//! `tally-gateway` owns the SoupBinTCP order-entry sessions of DESIGN.md §4:
//! login against the configured clients (argon2 hashes, checked off the
//! loop), role checks, message validation, exactly-once numbering by
//! client_seq, the `k`/`j` acks and their replay on a resuming login,
//! heartbeats, timeouts, rate limits. It hands every accepted `U` message to
//! the sequencer over an `rtrb` ring (valid ones stamped with the client's
//! origin, invalid ones turned into `j` gateway rejects so that they are
//! recorded too) and turns the sequencer's outcomes into acks.
//!
//! - `tally_config::gateway` (its own crate): [`GatewayConfig`](tally_config::gateway::GatewayConfig),
//!   [`Role`](tally_config::gateway::Role) and its permissions, password hashing.
//! - [`auth`]: the password-checking thread ([`AuthThread`]) behind the
//!   [`Authenticator`] trait, and a blocking [`InlineAuthenticator`] for tests.
//! - [`session`]: [`GatewayCore`], the deterministic session logic (no I/O, no
//!   clock: time is passed in), acting through a [`GatewayIo`].
//! - [`gateway_loop`]: [`GatewayLoop`], the core over an io_uring
//!   `TcpServer`, the two rings and the authenticator.
//! - [`link`]: the [`Inbound`]/[`Outcome`] values on the rings.
//! - [`throttle`]: per-source and per-username budgets for connections and
//!   failed logins (hostile clients: see the README's operations section).
//! - [`counters`]: [`GatewayCounters`], in the process's counter file.
//!
//! What the sequencer does: build a [`GatewayCore`] from the configuration
//! and each client's state recovered from its journal ([`ClientRecovery`], or
//! [`GatewayCore::recover_ack`] per journaled message), wrap it in a
//! [`GatewayLoop`] with the producer of the gateway → sequencer ring, the
//! consumer of the sequencer → gateway ring and an [`AuthThread`], and run it
//! on its own thread. For every [`Inbound`] it pops it must push exactly one
//! [`Outcome`], in the order it popped them.
//!
//! Threading contract: one gateway loop per thread, owning its listener,
//! sessions and ring ends; it never blocks on the sequencer (a full ring
//! stops it reading from the network until there is room: TCP flow control
//! does the rest), never allocates, locks or logs per message, and never
//! verifies a password itself.

pub mod auth;
pub mod counters;
pub mod gateway_loop;
pub mod link;
pub mod session;
pub mod soup_server;
pub mod throttle;

pub use auth::{AuthRequest, AuthResult, AuthThread, Authenticator, InlineAuthenticator};
pub use counters::GatewayCounters;
pub use gateway_loop::GatewayLoop;
pub use link::{Inbound, Outcome, OutcomeKind};
pub use session::{
    AckRecord, ClientRecovery, GatewayCore, GatewayIo, RecoveryError, Refusal, SlotId,
};
pub use throttle::{Throttle, Throttled};
