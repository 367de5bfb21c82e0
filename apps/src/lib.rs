//! `tally-apps` owns the foundation types for stream consumers and senders, the
//! inventory replica, and the applications (warehouse, pos, monitor, tap,
//! demo).
