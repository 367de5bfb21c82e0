//! The acks the gateway sends as SoupBinTCP sequenced-data payloads
//! (DESIGN.md §4): one per command, numbered by the client's `client_seq`.
//!
//! | type | name | body | size |
//! |---|---|---|---|
//! | `k` | accepted | 1 client_seq u32, 5 stream_seq u64, 13 timestamp u64 | 21 |
//! | `j` | rejected by the gateway | 1 client_seq u32, 5 stream_seq u64, 13 reason u8 | 14 |

use core::mem::size_of;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::message::{MessageError, U32, U64};

/// `k`: the command was sequenced. 21 bytes.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq, Hash,
)]
pub struct Accepted {
    /// Always [`Accepted::TYPE`] (`b'k'`). Offset 0.
    pub msg_type: u8,
    /// The command's client_seq. Offset 1.
    pub client_seq: U32,
    /// The stream sequence number the command got. Offset 5.
    pub stream_seq: U64,
    /// The sequencer's timestamp, nanoseconds since the Unix epoch. Offset 13.
    pub timestamp_ns: U64,
}

const _: () = assert!(size_of::<Accepted>() == Accepted::SIZE);

impl Accepted {
    /// The ack's wire bytes ([`Self::SIZE`] of them).
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        IntoBytes::as_bytes(self)
    }

    /// Type byte.
    pub const TYPE: u8 = b'k';
    /// Size in bytes.
    pub const SIZE: usize = 21;

    /// An accepted ack for `client_seq`, sequenced as `stream_seq` at
    /// `timestamp_ns` (nanoseconds since the Unix epoch).
    pub fn new(client_seq: u32, stream_seq: u64, timestamp_ns: u64) -> Self {
        Self {
            msg_type: Self::TYPE,
            client_seq: client_seq.into(),
            stream_seq: stream_seq.into(),
            timestamp_ns: timestamp_ns.into(),
        }
    }
}

/// `j`: the gateway rejected the command and recorded a `j` message on the
/// stream. 14 bytes.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq, Hash,
)]
pub struct Rejected {
    /// Always [`Rejected::TYPE`] (`b'j'`). Offset 0.
    pub msg_type: u8,
    /// The command's client_seq. Offset 1.
    pub client_seq: U32,
    /// Stream sequence number of the recorded `j` message. Offset 5.
    pub stream_seq: U64,
    /// A [`crate::message::reject_reason`] byte. Offset 13.
    pub reason: u8,
}

const _: () = assert!(size_of::<Rejected>() == Rejected::SIZE);

impl Rejected {
    /// The ack's wire bytes ([`Self::SIZE`] of them).
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        IntoBytes::as_bytes(self)
    }

    /// Type byte.
    pub const TYPE: u8 = b'j';
    /// Size in bytes.
    pub const SIZE: usize = 14;

    /// A rejected ack for `client_seq`, recorded as `stream_seq`, with a
    /// [`crate::message::reject_reason`].
    pub fn new(client_seq: u32, stream_seq: u64, reason: u8) -> Self {
        Self {
            msg_type: Self::TYPE,
            client_seq: client_seq.into(),
            stream_seq: stream_seq.into(),
            reason,
        }
    }
}

/// A validated ack borrowed from a sequenced-data payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ack<'a> {
    /// `k`.
    Accepted(&'a Accepted),
    /// `j`.
    Rejected(&'a Rejected),
}

impl<'a> Ack<'a> {
    /// Views `payload`, which must be exactly one ack. Errors like
    /// [`crate::Message::parse`]: empty or short = `Truncated`, a type other
    /// than `k`/`j` = `UnknownType`, long = `WrongLength`. Never panics.
    pub fn parse(payload: &'a [u8]) -> Result<Self, MessageError> {
        let Some(&msg_type) = payload.first() else {
            return Err(MessageError::Truncated {
                needed: 1,
                available: 0,
            });
        };
        let expected = match msg_type {
            Accepted::TYPE => Accepted::SIZE,
            Rejected::TYPE => Rejected::SIZE,
            other => return Err(MessageError::UnknownType(other)),
        };
        if payload.len() < expected {
            return Err(MessageError::Truncated {
                needed: expected,
                available: payload.len(),
            });
        }
        let wrong_length = MessageError::WrongLength {
            msg_type,
            expected,
            actual: payload.len(),
        };
        if msg_type == Accepted::TYPE {
            Accepted::ref_from_bytes(payload)
                .map(Ack::Accepted)
                .map_err(|_| wrong_length)
        } else {
            Rejected::ref_from_bytes(payload)
                .map(Ack::Rejected)
                .map_err(|_| wrong_length)
        }
    }

    /// The client_seq the ack answers.
    pub fn client_seq(&self) -> u32 {
        match self {
            Ack::Accepted(a) => a.client_seq.get(),
            Ack::Rejected(r) => r.client_seq.get(),
        }
    }

    /// The stream sequence number (of the command, or of the recorded `j`).
    pub fn stream_seq(&self) -> u64 {
        match self {
            Ack::Accepted(a) => a.stream_seq.get(),
            Ack::Rejected(r) => r.stream_seq.get(),
        }
    }

    /// The ack's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Ack::Accepted(a) => IntoBytes::as_bytes(a),
            Ack::Rejected(r) => IntoBytes::as_bytes(r),
        }
    }
}
