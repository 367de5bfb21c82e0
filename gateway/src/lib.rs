//! `tally-gateway` owns the SoupBinTCP order-entry sessions of DESIGN.md §4:
//! login against the configured clients, role checks, message validation,
//! exactly-once numbering and the `k`/`j` acks. It hands valid commands to
//! the sequencer over an `rtrb` ring and receives acks on another.
//!
//! Threading contract: one gateway loop per thread, owning its listener and
//! sessions; it never blocks on the sequencer.

pub mod auth;
pub mod config;
pub mod counters;
pub mod gateway_loop;
pub mod link;
pub mod session;

pub use auth::{AuthRequest, AuthResult, AuthThread, Authenticator, InlineAuthenticator};
pub use config::{hash_password, verify_password, ClientEntry, ConfigError, GatewayConfig, Role};
pub use counters::GatewayCounters;
pub use gateway_loop::GatewayLoop;
pub use link::{Inbound, Outcome, OutcomeKind};
pub use session::{AckRecord, ClientRecovery, GatewayCore, GatewayIo, RecoveryError, SlotId};
