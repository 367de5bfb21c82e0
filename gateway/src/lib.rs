//! `tally-gateway` owns the SoupBinTCP order-entry sessions of DESIGN.md §4:
//! login against the configured clients, role checks, message validation,
//! exactly-once numbering and the `k`/`j` acks. It hands valid commands to
//! the sequencer over an `rtrb` ring and receives acks on another.
//!
//! Threading contract: one gateway loop per thread, owning its listener and
//! sessions; it never blocks on the sequencer.

pub mod link;
