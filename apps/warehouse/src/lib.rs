//! `tally-warehouse`: the authority application.
//!
//! - [`decide`]: the deterministic decisions (orders, holds, transfers,
//!   recounts) over the inventory state: no I/O, no clock.
//! - [`app`]: the process around them: the stream consumer feeding the
//!   decisions, the order-entry client announcing the outcomes, snapshots.
pub mod app;
pub mod counters;
pub mod decide;
