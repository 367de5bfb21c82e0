//! `tally-runtime` owns what every tally event loop needs: spawning named
//! threads pinned to configured cores, idle strategies, io_uring socket
//! helpers, huge-page-backed buffers and lock-free shared counters.
//!
//! - [`thread`]: [`thread::spawn_loop`] starts one loop on its own named
//!   thread, pinned to a core (from its first instruction) or unpinned.
//! - [`idle`]: [`idle::IdleStrategy`] (busy-spin, yield, back-off) and the
//!   per-loop [`idle::Idler`] that spins, yields or parks after an idle cycle,
//!   or hands the park time to the loop's own io_uring wait.
//! - [`pool`]: [`pool::HugeRegion`] (reserved huge pages, else THP-advised,
//!   else normal pages; pre-faulted, optionally locked) and
//!   [`pool::BufferPool`], fixed buffers with a free list.
//! - [`counters`]: [`counters::CounterFile`], counters in a memory-mapped file
//!   (layout in the module doc) that other threads and processes read with
//!   [`counters::CounterReader`].
//! - [`file`](mod@file): io_uring group commit for an append-only file, and
//!   [`file::replace_atomically`] for small files replaced whole.
//! - [`logging`]: [`logging::init_from_env`], the binaries' one logging
//!   set-up (for `main` only: it reads `RUST_LOG`).
//!
//! Threading contract: each loop owns its ring, sockets and buffers and runs on
//! one thread. Nothing here takes a lock on a hot path or reads the
//! environment; every option is passed in explicitly. Idling, pool
//! acquire/release and counter updates never allocate, lock or log; set-up
//! functions (spawning, mapping, creating files) may.

pub mod agent;
pub mod alloc_count;
pub mod clock;
pub mod counters;
pub mod file;
pub mod idle;
pub mod logging;
pub mod loss;
pub mod net;
pub mod notify;
pub mod pool;
pub mod rand;
pub mod thread;
pub mod wake;
