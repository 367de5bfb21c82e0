//! `tally-client`: what every tally application is built on.
//!
//! Depends on `tally-wire`, `tally-runtime` and `tally-config` only: a till
//! or a web shop links this crate, never the appliance.
//!
//! - [`consumer`]: the stream consumer (MoldUDP64 multicast, gap fill from the
//!   retransmit server, catch-up from the replay feed); every message once, in
//!   order.
//! - [`follow`]: following the stream from one session to the next.
//! - [`client`]: the order-entry client (SoupBinTCP to the gateway, exactly
//!   once numbering, acks).
//! - [`replica`]: the inventory state rebuilt from the stream, and
//!   [`snapshot`]: that state on disk.
//! - [`text`]: messages as one line of text (tools, logs).
//! - [`command`]: send a command exactly once and wait for the warehouse's
//!   decision on the stream (`tally-ctl` and the HTTP service's writes).
//! - [`credentials`]: `--user` / `--password-file` / `TALLY_USER` …, never
//!   a default.
//! - [`cli`]: the command-line options every application shares.
//! - [`metrics`]: an application's counters as Prometheus metrics.
pub mod cli;
pub mod client;
pub mod command;
pub mod consumer;
pub mod credentials;
pub mod follow;
pub mod metrics;
pub mod replica;
pub mod snapshot;
pub mod text;

/// The configuration crate, for applications that depend on this one only.
pub use tally_config;
/// The runtime crate (counter files, clocks), for applications that depend
/// on this one only.
pub use tally_runtime;
/// The wire crate, for applications that depend on this one only.
pub use tally_wire;
