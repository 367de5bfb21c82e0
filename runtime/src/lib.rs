//! `tally-runtime` owns what every tally event loop needs: spawning named
//! threads pinned to configured cores, idle strategies, io_uring socket
//! helpers, huge-page-backed buffers and lock-free shared counters.
//!
//! Threading contract: each loop owns its ring, sockets and buffers and runs on
//! one thread. Nothing here takes a lock on a hot path or reads the
//! environment; every option is passed in explicitly.

pub mod counters;
pub mod idle;
pub mod net;
pub mod pool;
pub mod thread;
