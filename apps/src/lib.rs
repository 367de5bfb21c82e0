//! `tally-apps` owns the foundation types for stream consumers and senders, the
//! inventory replica, and the applications (warehouse, pos, monitor, tap,
//! demo).
pub mod cli;
pub mod client;
pub mod consumer;
pub mod handler;
pub mod loss;
pub mod monitor;
pub mod pos;
pub mod replica;
pub mod snapshot;
pub mod testkit;
pub mod text;
pub mod warehouse;
pub mod warehouse_app;
