//! io_uring socket helpers (being written)
