//! `tally-apps` owns the foundation types for stream consumers and senders, the
//! inventory replica, and the applications (warehouse, pos, monitor, tap,
//! demo).
pub mod consumer;
pub mod client;
pub mod loss;
pub mod testkit;
pub mod handler;
pub mod replica;
pub mod snapshot;
pub mod warehouse;
