//! `tally-sequencer` is the appliance: the sequencer loop that numbers every
//! message, the write-ahead journal, the MoldUDP64 multicast publisher, the
//! retransmit server and the replay feed. It composes the gateway.
//!
//! Threading contract: each loop is single-threaded and owns its sockets; loops
//! talk only through `rtrb` rings and the journal.

pub mod appliance;
pub mod core;
pub mod exit;
pub mod journal;
pub mod publisher;
pub mod replay;
pub mod retransmit;
pub mod rollover;
