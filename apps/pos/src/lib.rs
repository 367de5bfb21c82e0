//! The point of sale (DESIGN.md §6): a till that keeps its own inventory
//! replica from the stream, checks it before sending a command, and matches
//! the warehouse's answers to its commands ([`Pos`]); and the store node
//! built on it ([`store`]), which serves one location's checkouts over a
//! local HTTP port and an interactive till, and keeps answering stock reads
//! (marked stale) while the appliance is out of reach. The random load
//! generator that used to live here is `tally_demo::load` (run by
//! `tally-bench --scenario till-load` and the demo).
//!
//! One [`Pos`] owns
//! - a [`StreamConsumer`] feeding a [`Replica`] (the whole session, from seq
//!   1: the warehouse's session-start broadcast is the directory);
//! - an [`OrderEntryClient`] logged in as a `pos` client;
//! - a ring of its commands awaiting their outcome, indexed by client_seq;
//! - bounded tables of its own open orders (for modify/cancel) and open
//!   holds (for confirm/release).
//!
//! **Never sends what it can see would fail.** Before each command the
//! replica is asked: an unknown SKU or location, less available than the
//! quantity at the given location (or at every location for location 0), an
//! order or hold that is not open (or a hold already past its expiry) — the
//! command is not sent and is counted in [`PosStats::skipped_would_fail`].
//! Commands can still be rejected: other tills race for the same stock.
//!
//! **Matching outcomes.** The warehouse's events carry the `cmd_seq` of the
//! command they answer (`D`, `J`, `H`; `E(R)` answers the oldest pending
//! release, which the replica resolves). The replica reports which command an
//! event answered ([`Applied::Event`]); that command's header on the stream
//! holds its origin and client_seq, so an outcome is ours when the origin is
//! ours and the client_seq is one we sent in this run — whether its ack came
//! before or after. A gateway reject (`j` ack, or the `j` on the stream) is
//! the outcome of a command the gateway refused. Round-trip latency is the
//! time from queueing a command to seeing its outcome on the stream.
//!
//! Order and hold ids are the client_seq of the `O`/`V` that opens them:
//! unique per origin within a session, also across restarts of the till.
//!
//! Realtime contract: one thread owns a `Pos`. Every table (replica, pending
//! ring, open orders and holds, histograms) is allocated in [`Pos::new`];
//! the duty cycle ([`Pos::poll`], [`Pos::queue`]) does not allocate, lock or
//! log (the consumer's and client's own contracts apply to their recoveries).
//! Times passed to `poll` are [`monotonic_ns`] readings; hold expiry is
//! compared with the wall clock, as the sequencer stamps it. A till relies
//! on its replica's pending-command ring (`ReplicaLimits::pending_max`
//! stream messages) to attribute outcomes: an answer arriving later than
//! that is not matched, and its command stays in flight.
//!
//! [`StreamConsumer`]: tally_client::consumer::StreamConsumer
//! [`Replica`]: tally_client::replica::Replica
//! [`OrderEntryClient`]: tally_client::client::OrderEntryClient
//! [`Applied::Event`]: tally_client::replica::Applied::Event
//! [`monotonic_ns`]: tally_client::consumer::monotonic_ns

mod check;
mod config;
mod core;
mod counters;
mod error;
mod outcome;
pub mod store;
mod till;

pub use check::Request;
pub use config::{Idle, PosConfig};
pub use core::{OpenHold, OpenOrder};
pub use counters::PosCounterFile;
pub use error::PosError;
pub use outcome::{
    rtt_histogram, CommandKind, KindCounts, Outcome, OutcomeReport, PosStats, ReasonCounts,
    Refused, RttSummary, RTT_NS_MAX,
};
pub use till::{Pos, PARK_NS_MAX};
