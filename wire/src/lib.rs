//! `tally-wire` owns every byte format tally puts on a wire or in a file that
//! another program reads: the stream messages of DESIGN.md §3, MoldUDP64
//! packets and re-requests (§2), and SoupBinTCP packets and the `k`/`j` acks
//! (§4). All integers are big-endian, all text fields are right-padded ASCII.
//!
//! Contract: no I/O, no `unsafe`, no allocation in any encode or decode path.
//! Decoders take untrusted bytes and return a small error enum for every way
//! the bytes can be wrong; they never panic. Types are plain data and may be
//! used from any thread.
#![forbid(unsafe_code)]
