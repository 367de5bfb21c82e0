//! `tally-wire` owns every byte format tally puts on a wire or in a file that
//! another program reads. All integers are big-endian, all text fields are
//! right-padded ASCII, every struct is a `zerocopy` type whose `SIZE` is
//! checked at compile time.
//!
//! - [`message`] (re-exported here): the stream messages of DESIGN.md §3 — the
//!   15-byte [`Header`], one struct per command and event, the typed view
//!   [`Message`], and the reason/code constants.
//! - [`mold`]: MoldUDP64 (§2) — [`mold::PacketBuilder`] into a caller-owned
//!   buffer, [`mold::MoldPacket`] with its message iterator, heartbeat and
//!   end-of-session packets, the 20-byte [`mold::ReRequest`].
//! - [`soup`]: SoupBinTCP (§4) — client and server packets, frame encoders,
//!   and the incremental [`soup::FrameDecoder`] for a TCP byte stream.
//! - [`ack`]: the `k`/`j` acks carried in SoupBinTCP sequenced data (§4).
//!
//! Contract: no I/O, no `unsafe`, no allocation in any encode or decode path
//! (the one allocation is the buffer of [`soup::FrameDecoder::new`], made once).
//! Decoders take untrusted bytes and return a small error enum for every way
//! the bytes can be wrong; they never panic. Encoders that can be handed a too
//! small buffer return an error; `assert!`s guard only caller bugs (a packet
//! limit below the header size). Types are plain data and may be used from
//! any thread.
#![forbid(unsafe_code)]

pub mod ack;
pub mod message;
pub mod mold;
pub mod soup;

/// The `zerocopy` version the wire structs derive from, for callers that
/// need its traits (`FromBytes`, `IntoBytes`, …) by name.
pub use zerocopy;

pub use ack::{Accepted, Ack, Rejected};
pub use message::*;
pub use mold::{
    Full, MoldError, MoldHeader, MoldMessages, MoldPacket, PacketBuilder, PacketKind, ReRequest,
    Session,
};
pub use soup::{ClientPacket, FrameDecoder, ServerPacket, SoupError};
