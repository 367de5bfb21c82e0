//! `tally-config`: the one configuration file every tally process reads.
//!
//! The appliance (`tally-sequencer`) and every client application read the
//! same TOML file (`config/tally.toml` is the documented example): the
//! appliance for everything, a client for the stream, the gateway's and the
//! feeds' addresses, the `[limits]` of the inventory state, `[http]` and the
//! `[[clients]]` credentials. Both sides depend on this crate, so a till does
//! not link the appliance to read its configuration.
//!
//! - [`appliance`]: the file's schema ([`ApplianceConfig`]) and its validation;
//!   every error names the key that is wrong.
//! - [`gateway`]: the gateway's typed view of it ([`GatewayConfig`](gateway::GatewayConfig)), roles,
//!   client entries and password hashing (argon2id).
//!
//! Nothing here runs on a hot path: the file is read once at start-up.

pub mod appliance;
pub mod gateway;

pub use appliance::{
    ApplianceConfig, ConfigError, CountersConfig, FsyncPolicy, HttpConfig, JournalConfig,
    LimitsConfig, LoopConfig, LoopPlacement, LoopsConfig, ReplayConfig, RetransmitConfig,
    StreamConfig, Threading, REPLY_BURST_BYTES_MAX,
};
