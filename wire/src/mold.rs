//! MoldUDP64 (DESIGN.md §2): the stream's datagrams, built with
//! [`PacketBuilder`] into a caller-owned buffer and read with
//! [`MoldPacket::parse`]; heartbeat and end-of-session packets; the 20-byte
//! [`ReRequest`] a receiver sends to fill a gap.
//!
//! Packet layout (big-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 10 | session, ASCII right-padded with spaces |
//! | 10 | 8 | sequence number of the first message |
//! | 18 | 2 | message count; 0 = heartbeat, 0xFFFF = end of session |
//! | 20 | … | blocks: 2-byte length, then that many bytes of message |

use core::fmt;
use core::mem::size_of;
use core::str::FromStr;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::message::{TextError, U16, U64};

/// A MoldUDP64 session name: 10 bytes of ASCII right-padded with spaces.
///
/// Built from text with [`Session::from_str`] (validated); a session read off
/// the wire is kept as the raw 10 bytes, whatever they are.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Session(pub [u8; 10]);

impl Session {
    /// Width of the field in bytes.
    pub const SIZE: usize = 10;

    /// Ten spaces: no session named.
    pub const BLANK: Session = Session([b' '; 10]);

    /// `s` as a session: at most 10 bytes of printable ASCII, right-padded
    /// with spaces.
    #[allow(clippy::should_implement_trait)] // also implemented; this one needs no import
    pub fn from_str(s: &str) -> Result<Session, TextError> {
        crate::message::pad_ascii::<10>(s).map(Session)
    }

    /// The name without its padding. Bytes that are not UTF-8 (only possible
    /// in a session read off the wire) end the string there.
    pub fn as_str(&self) -> &str {
        let trimmed = crate::message::trim_ascii(&self.0);
        match core::str::from_utf8(trimmed) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&trimmed[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    /// The raw 10 bytes.
    pub fn as_bytes(&self) -> &[u8; 10] {
        &self.0
    }

    /// Whether all 10 bytes are spaces.
    pub fn is_blank(&self) -> bool {
        *self == Self::BLANK
    }

    /// The session that follows this one at a rollover (an addition to
    /// DESIGN.md; every application and the appliance apply the same rule,
    /// so no name travels on the wire): the number the name ends with, plus
    /// one, its width kept (`D20261122` → `D20261123`, `DAY0099` →
    /// `DAY0100`, `DAY9` → `DAY10`); a name without a final number gets `1`
    /// appended (`DEMO` → `DEMO1`). `None` when the result would not fit in
    /// 10 bytes, or for a blank name.
    pub fn successor(&self) -> Option<Session> {
        let name = crate::message::trim_ascii(&self.0);
        if name.is_empty() {
            return None;
        }
        let digits = name.iter().rev().take_while(|b| b.is_ascii_digit()).count();
        let (prefix, number) = name.split_at(name.len() - digits);
        let mut next = [b' '; 10];
        next[..prefix.len()].copy_from_slice(prefix);
        let mut len = prefix.len();
        if number.is_empty() {
            *next.get_mut(len)? = b'1';
            return Some(Session(next));
        }
        // Decimal increment with carry, right to left.
        let mut incremented = number.to_vec();
        let mut carry = true;
        for digit in incremented.iter_mut().rev() {
            if !carry {
                break;
            }
            if *digit == b'9' {
                *digit = b'0';
            } else {
                *digit += 1;
                carry = false;
            }
        }
        if carry {
            *next.get_mut(len)? = b'1';
            len += 1;
        }
        let end = len + incremented.len();
        next.get_mut(len..end)?.copy_from_slice(&incremented);
        Some(Session(next))
    }

    /// Where `self` stands in the chain of [`Session::successor`]s that
    /// starts at `root`: 0 for `root` itself, n for its n-th successor;
    /// `None` when it is not in that chain (or lies more than
    /// [`Session::CHAIN_LENGTH_MAX`] steps along it).
    pub fn chain_position(&self, root: &Session) -> Option<u64> {
        fn number(session: &Session) -> Option<(&[u8], u64)> {
            let name = crate::message::trim_ascii(&session.0);
            let digits = name.iter().rev().take_while(|b| b.is_ascii_digit()).count();
            let (prefix, number) = name.split_at(name.len() - digits);
            let number = core::str::from_utf8(number).ok()?;
            // A name without a number stands just before 1.
            Some((
                prefix,
                if number.is_empty() {
                    0
                } else {
                    number.parse().ok()?
                },
            ))
        }
        let (root_prefix, root_number) = number(root)?;
        let (prefix, own_number) = number(self)?;
        if prefix != root_prefix {
            return None;
        }
        let steps = own_number.checked_sub(root_number)?;
        if steps > Self::CHAIN_LENGTH_MAX {
            return None;
        }
        // Widths and leading zeros: walk to be exact (cheap, and bounded).
        let mut at = *root;
        for _ in 0..steps {
            at = at.successor()?;
        }
        (at == *self).then_some(steps)
    }

    /// The longest chain of sessions [`Session::chain_position`] follows
    /// (about 270 years of daily sessions).
    pub const CHAIN_LENGTH_MAX: u64 = 100_000;
}

impl FromStr for Session {
    type Err = TextError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Session::from_str(s)
    }
}

impl fmt::Display for Session {
    /// The trimmed name; bytes outside printable ASCII are escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in crate::message::trim_ascii(&self.0) {
            write!(f, "{}", core::ascii::escape_default(b))?;
        }
        Ok(())
    }
}

/// The 20-byte MoldUDP64 packet header.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq, Hash,
)]
pub struct MoldHeader {
    /// Session name, ASCII right-padded with spaces. Offset 0.
    pub session: [u8; 10],
    /// Sequence number of the first message (for a heartbeat or end of
    /// session: the next sequence number). Offset 10.
    pub sequence: U64,
    /// Message count; [`COUNT_HEARTBEAT`] or [`COUNT_END_OF_SESSION`] for
    /// those packets. Offset 18.
    pub count: U16,
}

const _: () = assert!(size_of::<MoldHeader>() == MoldHeader::SIZE);

impl MoldHeader {
    /// Size of the header in bytes.
    pub const SIZE: usize = 20;

    /// A header for `session`, first sequence number `sequence`, `count` messages.
    pub fn new(session: Session, sequence: u64, count: u16) -> Self {
        Self {
            session: session.0,
            sequence: sequence.into(),
            count: count.into(),
        }
    }

    /// The wire bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        IntoBytes::as_bytes(self)
    }
}

/// Message count of a heartbeat packet.
pub const COUNT_HEARTBEAT: u16 = 0;
/// Message count of an end-of-session packet.
pub const COUNT_END_OF_SESSION: u16 = 0xFFFF;
/// Default limit of a packet in bytes (MoldUDP64 header and blocks; not the
/// IP/UDP headers), small enough for a 1500-byte Ethernet MTU.
pub const DEFAULT_PAYLOAD_LIMIT: usize = 1400;
/// Most messages a data packet can hold (0xFFFF means end of session).
pub const MAX_COUNT: u16 = 0xFFFE;
/// Size of a block's length prefix in bytes.
pub const BLOCK_LENGTH_SIZE: usize = 2;

/// The packet has no room for that message (by bytes or by count). Send the
/// packet and start another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Full;

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MoldUDP64 packet full")
    }
}

impl std::error::Error for Full {}

/// Builds one MoldUDP64 data packet in a caller-owned buffer, never writing
/// past `limit_bytes`. Nothing is allocated.
///
/// ```
/// use tally_wire::mold::{PacketBuilder, Session, MoldPacket};
/// let mut buf = [0u8; 1400];
/// let mut packet = PacketBuilder::new(&mut buf, 1400, Session::from_str("DAY1").unwrap(), 7);
/// packet.append(b"hello").unwrap();
/// let len = packet.finish();
/// let parsed = MoldPacket::parse(&buf[..len]).unwrap();
/// assert_eq!(parsed.messages().next(), Some((7, &b"hello"[..])));
/// ```
#[derive(Debug)]
pub struct PacketBuilder<'b> {
    buf: &'b mut [u8],
    limit_bytes: usize,
    len: usize,
    count: u16,
    session: Session,
    first_seq: u64,
}

impl<'b> PacketBuilder<'b> {
    /// Starts a packet for `session` whose first message will be `first_seq`.
    /// The packet may use `min(limit_bytes, buf.len())` bytes of `buf`.
    ///
    /// # Panics
    /// When that is less than [`MoldHeader::SIZE`] (20): a configuration bug.
    pub fn new(buf: &'b mut [u8], limit_bytes: usize, session: Session, first_seq: u64) -> Self {
        let limit_bytes = limit_bytes.min(buf.len());
        assert!(
            limit_bytes >= MoldHeader::SIZE,
            "MoldUDP64 packet limit {limit_bytes} is below the 20-byte header"
        );
        Self {
            buf,
            limit_bytes,
            len: MoldHeader::SIZE,
            count: 0,
            session,
            first_seq,
        }
    }

    /// Reserves a block of `len` bytes, or `None` when it does not fit.
    #[inline]
    fn reserve(&mut self, len: usize) -> Option<&mut [u8]> {
        if self.count >= MAX_COUNT || len > u16::MAX as usize {
            return None;
        }
        let start = self.len;
        let end = start + BLOCK_LENGTH_SIZE + len;
        if end > self.limit_bytes {
            return None;
        }
        let block = &mut self.buf[start..end];
        block[..BLOCK_LENGTH_SIZE].copy_from_slice(&(len as u16).to_be_bytes());
        self.len = end;
        self.count += 1;
        Some(&mut block[BLOCK_LENGTH_SIZE..])
    }

    /// Appends `message` as the next block (sequence number
    /// [`next_seq`](Self::next_seq)). Returns [`Full`], writing nothing, when
    /// its 2-byte length prefix and bytes would pass the limit, when the
    /// packet already holds [`MAX_COUNT`] messages, or when `message` is
    /// longer than 65 535 bytes. `Full` on an empty packet means the message
    /// can never fit.
    #[inline]
    pub fn append(&mut self, message: &[u8]) -> Result<(), Full> {
        let block = self.reserve(message.len()).ok_or(Full)?;
        block.copy_from_slice(message);
        Ok(())
    }

    /// Like [`append`](Self::append), but `fill` writes the `len` bytes of
    /// the message in place. `fill` runs only when the block fits; whatever
    /// it leaves in the slice is the message.
    #[inline]
    pub fn append_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), Full> {
        let block = self.reserve(len).ok_or(Full)?;
        fill(block);
        Ok(())
    }

    /// Messages appended so far.
    #[inline]
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Sequence number of the first message.
    #[inline]
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Sequence number the next appended message gets (first of the next
    /// packet once this one is finished).
    #[inline]
    pub fn next_seq(&self) -> u64 {
        self.first_seq.wrapping_add(u64::from(self.count))
    }

    /// Packet length so far in bytes, header included (20 when empty).
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no message has been appended.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The byte limit of this packet.
    #[inline]
    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    /// Bytes left before the limit (a block needs 2 of them for its length).
    #[inline]
    pub fn remaining_bytes(&self) -> usize {
        self.limit_bytes - self.len
    }

    /// Writes the header and returns the packet's length; the packet is
    /// `buf[..len]`. A packet with no message is a heartbeat for `first_seq`.
    #[inline]
    pub fn finish(self) -> usize {
        let header = MoldHeader::new(self.session, self.first_seq, self.count);
        self.buf[..MoldHeader::SIZE].copy_from_slice(IntoBytes::as_bytes(&header));
        self.len
    }
}

/// Writes a heartbeat packet (count 0, sequence = `next_seq`, the next
/// sequence number to be sent) and returns its length, 20.
///
/// # Panics
/// When `buf` is shorter than 20 bytes (a bug).
pub fn write_heartbeat(buf: &mut [u8], session: Session, next_seq: u64) -> usize {
    write_header(buf, MoldHeader::new(session, next_seq, COUNT_HEARTBEAT))
}

/// Writes an end-of-session packet (count 0xFFFF, sequence = `next_seq`) and
/// returns its length, 20.
///
/// # Panics
/// When `buf` is shorter than 20 bytes (a bug).
pub fn write_end_of_session(buf: &mut [u8], session: Session, next_seq: u64) -> usize {
    write_header(
        buf,
        MoldHeader::new(session, next_seq, COUNT_END_OF_SESSION),
    )
}

fn write_header(buf: &mut [u8], header: MoldHeader) -> usize {
    assert!(
        buf.len() >= MoldHeader::SIZE,
        "buffer of {} bytes cannot hold a 20-byte MoldUDP64 packet",
        buf.len()
    );
    buf[..MoldHeader::SIZE].copy_from_slice(header.as_bytes());
    MoldHeader::SIZE
}

/// Why a datagram is not a valid MoldUDP64 packet or re-request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MoldError {
    /// Shorter than the 20-byte header.
    TooShort {
        /// Datagram length in bytes.
        len: usize,
    },
    /// Block `index` (0-based) starts at byte `offset` but its length prefix
    /// or its bytes run past the end of the datagram: the count or a length
    /// is wrong.
    BlockPastEnd {
        /// Index of the block within the packet.
        index: u16,
        /// Offset of the block's length prefix in the datagram.
        offset: usize,
    },
    /// Bytes left over after the last block the count announces (or after
    /// the header of a heartbeat or end-of-session packet).
    TrailingBytes {
        /// Number of extra bytes.
        extra: usize,
    },
    /// A re-request that is not exactly 20 bytes.
    ReRequestLength {
        /// Datagram length in bytes.
        len: usize,
    },
}

impl fmt::Display for MoldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MoldError::TooShort { len } => write!(
                f,
                "MoldUDP64 datagram of {len} bytes is shorter than the 20-byte header"
            ),
            MoldError::BlockPastEnd { index, offset } => write!(
                f,
                "MoldUDP64 message block {index} at offset {offset} runs past the end of the datagram"
            ),
            MoldError::TrailingBytes { extra } => write!(
                f,
                "MoldUDP64 datagram has {extra} bytes after its last message block"
            ),
            MoldError::ReRequestLength { len } => write!(
                f,
                "MoldUDP64 re-request is {len} bytes, expected exactly 20"
            ),
        }
    }
}

impl std::error::Error for MoldError {}

/// What a MoldUDP64 packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// Messages (count 1..=0xFFFE).
    Data,
    /// No messages; the sequence is the next one expected (count 0).
    Heartbeat,
    /// The session has ended; the sequence is one past the last (count 0xFFFF).
    EndOfSession,
}

/// A validated MoldUDP64 packet borrowed from a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoldPacket<'a> {
    header: &'a MoldHeader,
    blocks: &'a [u8],
}

impl<'a> MoldPacket<'a> {
    /// Validates `datagram`: at least the 20-byte header; for a data packet,
    /// exactly `count` blocks whose length prefixes and bytes all lie within
    /// the datagram and nothing after them; for a heartbeat or end of
    /// session, nothing after the header. Walks every block once, so
    /// [`messages`](Self::messages) cannot fail. Zero-length blocks are
    /// allowed here (the message layer rejects them). Never panics.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, MoldError> {
        let Ok((header, blocks)) = MoldHeader::ref_from_prefix(datagram) else {
            return Err(MoldError::TooShort {
                len: datagram.len(),
            });
        };
        let count = header.count.get();
        let announced = if count == COUNT_END_OF_SESSION {
            0
        } else {
            count
        };
        let mut rest = blocks;
        for index in 0..announced {
            let offset = datagram.len() - rest.len();
            let past_end = MoldError::BlockPastEnd { index, offset };
            let Some((length, after)) = rest.split_first_chunk::<BLOCK_LENGTH_SIZE>() else {
                return Err(past_end);
            };
            let length = usize::from(u16::from_be_bytes(*length));
            let Some((_, after)) = after.split_at_checked(length) else {
                return Err(past_end);
            };
            rest = after;
        }
        if !rest.is_empty() {
            return Err(MoldError::TrailingBytes { extra: rest.len() });
        }
        Ok(Self { header, blocks })
    }

    /// The header.
    #[inline]
    pub fn header(&self) -> &'a MoldHeader {
        self.header
    }

    /// The session name.
    #[inline]
    pub fn session(&self) -> Session {
        Session(self.header.session)
    }

    /// The header's sequence number: the first message's, or for a heartbeat
    /// or end of session the next one expected.
    #[inline]
    pub fn sequence(&self) -> u64 {
        self.header.sequence.get()
    }

    /// Number of messages: 0 for heartbeat and end of session.
    #[inline]
    pub fn count(&self) -> u16 {
        match self.kind() {
            PacketKind::Data => self.header.count.get(),
            PacketKind::Heartbeat | PacketKind::EndOfSession => 0,
        }
    }

    /// The sequence number after this packet's last message (for a heartbeat
    /// or end of session, its sequence). Wraps at `u64::MAX`.
    #[inline]
    pub fn next_seq(&self) -> u64 {
        self.sequence().wrapping_add(u64::from(self.count()))
    }

    /// What the packet carries.
    #[inline]
    pub fn kind(&self) -> PacketKind {
        match self.header.count.get() {
            COUNT_HEARTBEAT => PacketKind::Heartbeat,
            COUNT_END_OF_SESSION => PacketKind::EndOfSession,
            _ => PacketKind::Data,
        }
    }

    /// The messages with their sequence numbers, in order. Sequence numbers
    /// wrap at `u64::MAX` rather than panic.
    #[inline]
    pub fn messages(&self) -> MoldMessages<'a> {
        MoldMessages {
            rest: self.blocks,
            next_seq: self.sequence(),
            remaining: self.count(),
        }
    }
}

/// Iterator over `(sequence number, message bytes)` of a [`MoldPacket`].
#[derive(Debug, Clone)]
pub struct MoldMessages<'a> {
    rest: &'a [u8],
    next_seq: u64,
    remaining: u16,
}

impl<'a> Iterator for MoldMessages<'a> {
    type Item = (u64, &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        // `MoldPacket::parse` walked these blocks, so both splits succeed; a
        // failure would end the iteration rather than panic.
        let (length, after) = self.rest.split_first_chunk::<BLOCK_LENGTH_SIZE>()?;
        let (message, after) = after.split_at_checked(usize::from(u16::from_be_bytes(*length)))?;
        let seq = self.next_seq;
        self.rest = after;
        self.next_seq = seq.wrapping_add(1);
        self.remaining -= 1;
        Some((seq, message))
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::from(self.remaining);
        (n, Some(n))
    }
}

impl ExactSizeIterator for MoldMessages<'_> {}

/// The 20-byte re-request a receiver sends to the retransmit server (by UDP
/// unicast) to fill a gap.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq, Hash,
)]
pub struct ReRequest {
    /// Session name, ASCII right-padded with spaces. Offset 0.
    pub session: [u8; 10],
    /// First sequence number wanted. Offset 10.
    pub sequence: U64,
    /// Number of messages wanted. Offset 18.
    pub count: U16,
}

const _: () = assert!(size_of::<ReRequest>() == ReRequest::SIZE);

impl ReRequest {
    /// Size in bytes.
    pub const SIZE: usize = 20;

    /// A request for `count` messages of `session` from `sequence` on.
    pub fn new(session: Session, sequence: u64, count: u16) -> Self {
        Self {
            session: session.0,
            sequence: sequence.into(),
            count: count.into(),
        }
    }

    /// Views `datagram`, which must be exactly 20 bytes, as a re-request.
    /// Never panics.
    pub fn parse(datagram: &[u8]) -> Result<&ReRequest, MoldError> {
        ReRequest::ref_from_bytes(datagram).map_err(|_| MoldError::ReRequestLength {
            len: datagram.len(),
        })
    }

    /// The session name.
    pub fn session(&self) -> Session {
        Session(self.session)
    }

    /// The wire bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        IntoBytes::as_bytes(self)
    }
}

#[cfg(test)]
mod session_tests {
    use super::Session;

    fn s(name: &str) -> Session {
        Session::from_str(name).unwrap()
    }

    #[test]
    fn successor_increments_the_final_number_keeping_its_width() {
        let next = |name: &str| s(name).successor().map(|next| next.as_str().to_string());
        assert_eq!(next("D20261122").as_deref(), Some("D20261123"));
        assert_eq!(next("DAY0099").as_deref(), Some("DAY0100"));
        assert_eq!(next("DAY9").as_deref(), Some("DAY10"));
        assert_eq!(next("DEMO").as_deref(), Some("DEMO1"));
        assert_eq!(next("7").as_deref(), Some("8"));
        assert_eq!(next("ABCDEFGHIJ"), None, "no room to append");
        assert_eq!(next("ABCDEFGHI9"), None, "no room for the carry");
        assert_eq!(next("ABCDEFGH19").as_deref(), Some("ABCDEFGH20"));
        assert_eq!(Session::BLANK.successor(), None);
    }

    #[test]
    fn chain_position_counts_successors_and_refuses_strangers() {
        assert_eq!(s("DEMO").chain_position(&s("DEMO")), Some(0));
        assert_eq!(s("DEMO3").chain_position(&s("DEMO")), Some(3));
        assert_eq!(s("DAY10").chain_position(&s("DAY8")), Some(2));
        assert_eq!(s("D20261201").chain_position(&s("D20261122")), Some(79));
        assert_eq!(
            s("DAY7").chain_position(&s("DAY8")),
            None,
            "before the root"
        );
        assert_eq!(s("OTHER1").chain_position(&s("DEMO")), None);
        assert_eq!(s("DAY02").chain_position(&s("DAY1")), None, "width differs");
        assert_eq!(s("DEMO").chain_position(&s("DEMO1")), None);
    }
}
