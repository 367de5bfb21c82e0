//! SoupBinTCP (DESIGN.md §4): order entry and the replay feed.
//!
//! A frame is a 2-byte big-endian length (not counting itself), a 1-byte
//! packet type and the payload. [`FrameDecoder`] cuts a TCP byte stream into
//! frames (type + payload); [`ClientPacket::parse`] and
//! [`ServerPacket::parse`] give them meaning; the `write_*` functions encode
//! complete frames into a caller-owned buffer.
//!
//! Text fields are ASCII: alphanumeric fields left-aligned and right-padded
//! with spaces, numbers right-aligned and left-padded with spaces.

use core::fmt;

use crate::message::{pad_ascii, AsciiByte, TextError};
use crate::mold::Session;

/// Packet type bytes.
pub mod packet_type {
    /// Client: login request.
    pub const LOGIN_REQUEST: u8 = b'L';
    /// Client: unsequenced data (one stream message).
    pub const UNSEQUENCED: u8 = b'U';
    /// Client: heartbeat.
    pub const CLIENT_HEARTBEAT: u8 = b'R';
    /// Client: logout request.
    pub const LOGOUT: u8 = b'O';
    /// Server: login accepted.
    pub const LOGIN_ACCEPTED: u8 = b'A';
    /// Server: login rejected.
    pub const LOGIN_REJECTED: u8 = b'J';
    /// Server: sequenced data (an ack, or a stream message on the replay feed).
    pub const SEQUENCED: u8 = b'S';
    /// Server: heartbeat.
    pub const SERVER_HEARTBEAT: u8 = b'H';
    /// Server: end of session.
    pub const END_OF_SESSION: u8 = b'Z';
    /// Either side: debug text.
    pub const DEBUG: u8 = b'+';
}

/// Reason byte of a login rejected packet.
pub mod login_reject {
    /// Not authorized: bad username or password.
    pub const NOT_AUTHORIZED: u8 = b'A';
    /// The requested session is not available.
    pub const SESSION_UNAVAILABLE: u8 = b'S';
}

/// Size of the length prefix of a frame in bytes.
pub const LENGTH_PREFIX_SIZE: usize = 2;
/// Most bytes of type + payload one frame can hold (its length is a u16).
pub const MAX_FRAME_BYTES: usize = u16::MAX as usize;
/// Longest Debug (`+`) text tally's servers send, in bytes (a tally
/// addition: every refusal is explained in one); longer texts are cut.
pub const DEBUG_TEXT_BYTES_MAX: usize = 160;
/// Width of the username field of a login request.
pub const USERNAME_SIZE: usize = 6;
/// Width of the password field of a login request.
pub const PASSWORD_SIZE: usize = 10;
/// Width of a sequence number field (login request, login accepted).
pub const SEQUENCE_FIELD_SIZE: usize = 20;
/// Payload size of a SoupBinTCP 4.0 login request: username 6, password
/// 10, session 10, requested sequence number 20.
pub const LOGIN_REQUEST_PAYLOAD: usize = 46;
/// Width of the requested heartbeat timeout field that SoupBinTCP 4.1 adds
/// at the end of a login request.
pub const HEARTBEAT_TIMEOUT_FIELD_SIZE: usize = 5;
/// Payload size of a SoupBinTCP 4.1 login request: the 4.0 fields, then the
/// requested heartbeat timeout (5, numeric, milliseconds; 0 or blank = the
/// server's default).
pub const LOGIN_REQUEST_PAYLOAD_V41: usize = LOGIN_REQUEST_PAYLOAD + HEARTBEAT_TIMEOUT_FIELD_SIZE;
/// The largest login request payload a server must accept (4.1's).
pub const LOGIN_REQUEST_PAYLOAD_MAX: usize = LOGIN_REQUEST_PAYLOAD_V41;
/// The largest requested heartbeat timeout the 5-digit field can hold, in
/// milliseconds.
pub const HEARTBEAT_TIMEOUT_MS_MAX: u32 = 99_999;
/// Payload size of a login accepted: session 10, next sequence number 20.
pub const LOGIN_ACCEPTED_PAYLOAD: usize = 30;

/// Why bytes are not a valid SoupBinTCP frame or packet, or a frame cannot be
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SoupError {
    /// A frame's length (type + payload, in bytes) is above the maximum. On a
    /// connection this is a protocol error: close it.
    FrameTooLarge {
        /// The frame's length in bytes.
        len: usize,
        /// The maximum in bytes.
        max: usize,
    },
    /// A frame of length 0: no packet type.
    EmptyFrame,
    /// A packet type not defined for this direction.
    UnknownPacketType(u8),
    /// A payload whose length does not fit its packet type.
    BadLength {
        /// The packet type.
        packet_type: u8,
        /// The payload length in bytes (after the type byte).
        len: usize,
    },
    /// A sequence number field that is not a right-aligned, space-padded
    /// decimal number fitting a u64.
    BadNumber,
    /// The output buffer cannot hold the frame.
    BufferTooSmall,
    /// A text field that cannot be encoded (too long, not printable ASCII).
    BadText(TextError),
}

impl fmt::Display for SoupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SoupError::FrameTooLarge { len, max } => write!(
                f,
                "SoupBinTCP frame of {len} bytes exceeds the maximum of {max}"
            ),
            SoupError::EmptyFrame => f.write_str("SoupBinTCP frame of length 0 has no packet type"),
            SoupError::UnknownPacketType(t) => {
                write!(f, "unknown SoupBinTCP packet type {}", AsciiByte(t))
            }
            SoupError::BadLength { packet_type, len } => write!(
                f,
                "SoupBinTCP packet type {} cannot have a {len}-byte payload",
                AsciiByte(packet_type)
            ),
            SoupError::BadNumber => {
                f.write_str("SoupBinTCP sequence number field is not a space-padded decimal u64")
            }
            SoupError::BufferTooSmall => f.write_str("buffer too small for the SoupBinTCP frame"),
            SoupError::BadText(e) => write!(f, "SoupBinTCP text field: {e}"),
        }
    }
}

impl std::error::Error for SoupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SoupError::BadText(e) => Some(e),
            _ => None,
        }
    }
}

impl From<TextError> for SoupError {
    fn from(e: TextError) -> Self {
        SoupError::BadText(e)
    }
}

/// Parses a 20-byte sequence number field: a decimal number, right-aligned
/// and padded with spaces (surrounding spaces on either side accepted);
/// all spaces = 0.
pub fn parse_sequence_field(field: &[u8]) -> Result<u64, SoupError> {
    let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
    let end = field
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    let mut value: u64 = 0;
    for &b in &field[start..end] {
        if !b.is_ascii_digit() {
            return Err(SoupError::BadNumber);
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(SoupError::BadNumber)?;
    }
    Ok(value)
}

/// Writes `value` as a 20-byte decimal field, right-aligned, space-padded.
pub fn sequence_field(value: u64) -> [u8; SEQUENCE_FIELD_SIZE] {
    let mut field = [b' '; SEQUENCE_FIELD_SIZE];
    let mut rest = value;
    // u64::MAX has 20 digits, so the field always has room.
    for slot in field.iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    field
}

/// A packet from client to server, borrowed from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientPacket<'a> {
    /// `L` login request.
    LoginRequest {
        /// Username, ASCII right-padded with spaces.
        username: &'a [u8; USERNAME_SIZE],
        /// Password, ASCII right-padded with spaces.
        password: &'a [u8; PASSWORD_SIZE],
        /// Requested session; blank = the current one.
        session: Session,
        /// Requested sequence number; a blank field is 0.
        requested_seq: u64,
        /// SoupBinTCP 4.1's requested heartbeat timeout, in milliseconds:
        /// `None` for a 4.0 (46-byte) login request, `Some(0)` for a 4.1
        /// request that leaves it to the server (a blank or zero field).
        heartbeat_timeout_ms: Option<u32>,
    },
    /// `U` unsequenced data: one stream message (not validated here).
    Unsequenced(&'a [u8]),
    /// `R` client heartbeat.
    Heartbeat,
    /// `O` logout request.
    Logout,
}

impl<'a> ClientPacket<'a> {
    /// Parses `frame` (type byte + payload, length prefix removed). Validates
    /// the type and the payload length of fixed-size packets, and the login's
    /// numeric fields. A login request is either SoupBinTCP 4.0's (46-byte
    /// payload) or 4.1's (51 bytes: the requested heartbeat timeout added).
    /// Never panics.
    pub fn parse(frame: &'a [u8]) -> Result<Self, SoupError> {
        let (&packet_type, payload) = frame.split_first().ok_or(SoupError::EmptyFrame)?;
        let bad_length = SoupError::BadLength {
            packet_type,
            len: payload.len(),
        };
        match packet_type {
            packet_type::LOGIN_REQUEST => {
                let (fields, heartbeat_timeout_ms) = match payload.len() {
                    LOGIN_REQUEST_PAYLOAD => (payload, None),
                    LOGIN_REQUEST_PAYLOAD_V41 => {
                        let (fields, timeout) = payload.split_at(LOGIN_REQUEST_PAYLOAD);
                        // Five digits: always below u32::MAX.
                        (fields, Some(parse_sequence_field(timeout)? as u32))
                    }
                    _ => return Err(bad_length),
                };
                let fields: &[u8; LOGIN_REQUEST_PAYLOAD] =
                    fields.try_into().map_err(|_| bad_length)?;
                let (username, rest) = fields
                    .split_first_chunk::<USERNAME_SIZE>()
                    .ok_or(bad_length)?;
                let (password, rest) = rest
                    .split_first_chunk::<PASSWORD_SIZE>()
                    .ok_or(bad_length)?;
                let (session, seq) = rest
                    .split_first_chunk::<{ Session::SIZE }>()
                    .ok_or(bad_length)?;
                Ok(ClientPacket::LoginRequest {
                    username,
                    password,
                    session: Session(*session),
                    requested_seq: parse_sequence_field(seq)?,
                    heartbeat_timeout_ms,
                })
            }
            packet_type::UNSEQUENCED => Ok(ClientPacket::Unsequenced(payload)),
            packet_type::CLIENT_HEARTBEAT if payload.is_empty() => Ok(ClientPacket::Heartbeat),
            packet_type::LOGOUT if payload.is_empty() => Ok(ClientPacket::Logout),
            packet_type::CLIENT_HEARTBEAT | packet_type::LOGOUT => Err(bad_length),
            other => Err(SoupError::UnknownPacketType(other)),
        }
    }
}

/// A packet from server to client, borrowed from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerPacket<'a> {
    /// `A` login accepted.
    LoginAccepted {
        /// The session the client is in.
        session: Session,
        /// Sequence number of the next sequenced packet.
        next_seq: u64,
    },
    /// `J` login rejected, with a [`login_reject`] reason.
    LoginRejected {
        /// A [`login_reject`] byte.
        reason: u8,
    },
    /// `S` sequenced data: an ack, or a stream message on the replay feed.
    Sequenced(&'a [u8]),
    /// `H` server heartbeat.
    Heartbeat,
    /// `Z` end of session.
    EndOfSession,
    /// `+` debug text.
    Debug(&'a [u8]),
}

impl<'a> ServerPacket<'a> {
    /// Parses `frame` (type byte + payload, length prefix removed). Validates
    /// the type and the payload length of fixed-size packets, and the
    /// sequence number field. Never panics.
    pub fn parse(frame: &'a [u8]) -> Result<Self, SoupError> {
        let (&packet_type, payload) = frame.split_first().ok_or(SoupError::EmptyFrame)?;
        let bad_length = SoupError::BadLength {
            packet_type,
            len: payload.len(),
        };
        match packet_type {
            packet_type::LOGIN_ACCEPTED => {
                let fields: &[u8; LOGIN_ACCEPTED_PAYLOAD] =
                    payload.try_into().map_err(|_| bad_length)?;
                let (session, seq) = fields
                    .split_first_chunk::<{ Session::SIZE }>()
                    .ok_or(bad_length)?;
                Ok(ServerPacket::LoginAccepted {
                    session: Session(*session),
                    next_seq: parse_sequence_field(seq)?,
                })
            }
            packet_type::LOGIN_REJECTED => match payload {
                &[reason] => Ok(ServerPacket::LoginRejected { reason }),
                _ => Err(bad_length),
            },
            packet_type::SEQUENCED => Ok(ServerPacket::Sequenced(payload)),
            packet_type::SERVER_HEARTBEAT if payload.is_empty() => Ok(ServerPacket::Heartbeat),
            packet_type::END_OF_SESSION if payload.is_empty() => Ok(ServerPacket::EndOfSession),
            packet_type::SERVER_HEARTBEAT | packet_type::END_OF_SESSION => Err(bad_length),
            packet_type::DEBUG => Ok(ServerPacket::Debug(payload)),
            other => Err(SoupError::UnknownPacketType(other)),
        }
    }
}

/// Reserves a frame of `payload_len` payload bytes in `buf`, writes its
/// length prefix and type, and returns the payload slice and the frame length.
#[inline]
fn frame(
    buf: &mut [u8],
    packet_type: u8,
    payload_len: usize,
) -> Result<(&mut [u8], usize), SoupError> {
    let len = 1 + payload_len;
    if len > MAX_FRAME_BYTES {
        return Err(SoupError::FrameTooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    let total = LENGTH_PREFIX_SIZE + len;
    let out = buf.get_mut(..total).ok_or(SoupError::BufferTooSmall)?;
    out[..LENGTH_PREFIX_SIZE].copy_from_slice(&(len as u16).to_be_bytes());
    out[LENGTH_PREFIX_SIZE] = packet_type;
    Ok((&mut out[LENGTH_PREFIX_SIZE + 1..], total))
}

/// Writes a complete frame (length prefix, `packet_type`, `payload`) into
/// `buf` and returns its length in bytes. Errors when `buf` is too small or
/// the payload is longer than 65 534 bytes.
#[inline]
pub fn write_frame(buf: &mut [u8], packet_type: u8, payload: &[u8]) -> Result<usize, SoupError> {
    let (out, total) = frame(buf, packet_type, payload.len())?;
    out.copy_from_slice(payload);
    Ok(total)
}

/// Writes a frame whose `payload_len` payload bytes `fill` writes in place;
/// returns its length in bytes. `fill` runs only when the frame fits.
#[inline]
pub fn write_frame_with(
    buf: &mut [u8],
    packet_type: u8,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Result<usize, SoupError> {
    let (out, total) = frame(buf, packet_type, payload_len)?;
    fill(out);
    Ok(total)
}

/// Writes an `L` login request: `username` (≤ 6) and `password` (≤ 10)
/// printable ASCII, right-padded; `requested_seq` right-aligned in 20 bytes.
/// Returns the frame length (49).
pub fn write_login_request(
    buf: &mut [u8],
    username: &str,
    password: &str,
    session: Session,
    requested_seq: u64,
) -> Result<usize, SoupError> {
    let username = pad_ascii::<USERNAME_SIZE>(username)?;
    let password = pad_ascii::<PASSWORD_SIZE>(password)?;
    write_frame_with(
        buf,
        packet_type::LOGIN_REQUEST,
        LOGIN_REQUEST_PAYLOAD,
        |out| {
            out[..6].copy_from_slice(&username);
            out[6..16].copy_from_slice(&password);
            out[16..26].copy_from_slice(&session.0);
            out[26..46].copy_from_slice(&sequence_field(requested_seq));
        },
    )
}

/// Writes a SoupBinTCP 4.1 `L` login request: the 4.0 fields as in
/// [`write_login_request`], then `heartbeat_timeout_ms` (0 = the server's
/// default) right-aligned in 5 bytes. Returns the frame length (54). Errors
/// with [`SoupError::BadNumber`] above [`HEARTBEAT_TIMEOUT_MS_MAX`].
pub fn write_login_request_v41(
    buf: &mut [u8],
    username: &str,
    password: &str,
    session: Session,
    requested_seq: u64,
    heartbeat_timeout_ms: u32,
) -> Result<usize, SoupError> {
    if heartbeat_timeout_ms > HEARTBEAT_TIMEOUT_MS_MAX {
        return Err(SoupError::BadNumber);
    }
    let username = pad_ascii::<USERNAME_SIZE>(username)?;
    let password = pad_ascii::<PASSWORD_SIZE>(password)?;
    let timeout = sequence_field(u64::from(heartbeat_timeout_ms));
    write_frame_with(
        buf,
        packet_type::LOGIN_REQUEST,
        LOGIN_REQUEST_PAYLOAD_V41,
        |out| {
            out[..6].copy_from_slice(&username);
            out[6..16].copy_from_slice(&password);
            out[16..26].copy_from_slice(&session.0);
            out[26..46].copy_from_slice(&sequence_field(requested_seq));
            out[46..51]
                .copy_from_slice(&timeout[SEQUENCE_FIELD_SIZE - HEARTBEAT_TIMEOUT_FIELD_SIZE..]);
        },
    )
}

/// Writes a `U` unsequenced data frame holding `message`.
pub fn write_unsequenced(buf: &mut [u8], message: &[u8]) -> Result<usize, SoupError> {
    write_frame(buf, packet_type::UNSEQUENCED, message)
}

/// Writes an `R` client heartbeat (3 bytes).
pub fn write_client_heartbeat(buf: &mut [u8]) -> Result<usize, SoupError> {
    write_frame(buf, packet_type::CLIENT_HEARTBEAT, &[])
}

/// Writes an `O` logout request (3 bytes).
pub fn write_logout(buf: &mut [u8]) -> Result<usize, SoupError> {
    write_frame(buf, packet_type::LOGOUT, &[])
}

/// Writes an `A` login accepted: `session` and `next_seq` right-aligned in
/// 20 bytes. Returns the frame length (33).
pub fn write_login_accepted(
    buf: &mut [u8],
    session: Session,
    next_seq: u64,
) -> Result<usize, SoupError> {
    write_frame_with(
        buf,
        packet_type::LOGIN_ACCEPTED,
        LOGIN_ACCEPTED_PAYLOAD,
        |out| {
            out[..10].copy_from_slice(&session.0);
            out[10..30].copy_from_slice(&sequence_field(next_seq));
        },
    )
}

/// Writes a `J` login rejected with a [`login_reject`] `reason` (4 bytes).
pub fn write_login_rejected(buf: &mut [u8], reason: u8) -> Result<usize, SoupError> {
    write_frame(buf, packet_type::LOGIN_REJECTED, &[reason])
}

/// Writes an `S` sequenced data frame holding `payload`.
pub fn write_sequenced(buf: &mut [u8], payload: &[u8]) -> Result<usize, SoupError> {
    write_frame(buf, packet_type::SEQUENCED, payload)
}

/// Writes an `H` server heartbeat (3 bytes).
pub fn write_server_heartbeat(buf: &mut [u8]) -> Result<usize, SoupError> {
    write_frame(buf, packet_type::SERVER_HEARTBEAT, &[])
}

/// Writes a `Z` end of session (3 bytes).
pub fn write_end_of_session(buf: &mut [u8]) -> Result<usize, SoupError> {
    write_frame(buf, packet_type::END_OF_SESSION, &[])
}

/// Writes a `+` debug packet holding `text`.
pub fn write_debug(buf: &mut [u8], text: &[u8]) -> Result<usize, SoupError> {
    write_frame(buf, packet_type::DEBUG, text)
}

/// Cuts a TCP byte stream into SoupBinTCP frames, handling frames split
/// across reads and several frames in one read.
///
/// One buffer is allocated in [`new`](Self::new), never after. Read into
/// [`spare`](Self::spare), [`commit`](Self::commit) what was read, then call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)` before reading
/// again. An error is sticky (the same error again on every call): the
/// connection must close.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Box<[u8]>,
    /// First unconsumed byte.
    start: usize,
    /// One past the last received byte.
    end: usize,
    max_frame_bytes: usize,
}

impl FrameDecoder {
    /// Smallest buffer [`new`](Self::new) allocates, in bytes.
    pub const MIN_BUFFER_BYTES: usize = 4096;

    /// A decoder for frames of at most `max_frame_bytes` bytes of type +
    /// payload (at most 65 535). Allocates a buffer of two maximum frames
    /// with their prefixes, at least [`MIN_BUFFER_BYTES`](Self::MIN_BUFFER_BYTES).
    ///
    /// # Panics
    /// When `max_frame_bytes` is 0 or above 65 535 (a configuration bug).
    pub fn new(max_frame_bytes: usize) -> Self {
        let buffer_bytes = (2 * (LENGTH_PREFIX_SIZE + max_frame_bytes)).max(Self::MIN_BUFFER_BYTES);
        Self::with_buffer_bytes(max_frame_bytes, buffer_bytes)
    }

    /// Like [`new`](Self::new) with an explicit buffer size in bytes.
    ///
    /// # Panics
    /// When `max_frame_bytes` is 0 or above 65 535, or `buffer_bytes` cannot
    /// hold one maximum frame with its length prefix.
    pub fn with_buffer_bytes(max_frame_bytes: usize, buffer_bytes: usize) -> Self {
        assert!(
            (1..=MAX_FRAME_BYTES).contains(&max_frame_bytes),
            "SoupBinTCP max frame {max_frame_bytes} must be 1..=65535 bytes"
        );
        assert!(
            buffer_bytes >= LENGTH_PREFIX_SIZE + max_frame_bytes,
            "SoupBinTCP decoder buffer of {buffer_bytes} bytes cannot hold a {max_frame_bytes}-byte frame"
        );
        Self {
            buf: vec![0; buffer_bytes].into_boxed_slice(),
            start: 0,
            end: 0,
            max_frame_bytes,
        }
    }

    /// The maximum frame length (type + payload) in bytes.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// The writable tail of the buffer, to receive into. Moves unconsumed
    /// bytes to the front first when the tail could not hold a maximum frame.
    /// Empty only when the caller has not drained complete frames (or after
    /// an error).
    #[inline]
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0
            && self.buf.len() - self.end < LENGTH_PREFIX_SIZE + self.max_frame_bytes
        {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written at the start of [`spare`](Self::spare).
    ///
    /// # Panics
    /// When `n` is larger than the spare tail (a bug).
    #[inline]
    pub fn commit(&mut self, n: usize) {
        assert!(
            n <= self.buf.len() - self.end,
            "committed {n} bytes into a spare tail of {}",
            self.buf.len() - self.end
        );
        self.end += n;
    }

    /// Copies as much of `data` as fits and returns how many bytes it took.
    #[inline]
    pub fn extend(&mut self, data: &[u8]) -> usize {
        let spare = self.spare();
        let n = spare.len().min(data.len());
        spare[..n].copy_from_slice(&data[..n]);
        self.commit(n);
        n
    }

    /// The next complete frame (type + payload, without the length prefix),
    /// `Ok(None)` when more bytes are needed, or an error when the length
    /// prefix is 0 ([`SoupError::EmptyFrame`]) or above the maximum
    /// ([`SoupError::FrameTooLarge`]). Never panics.
    #[inline]
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, SoupError> {
        let available = &self.buf[self.start..self.end];
        let Some((length, rest)) = available.split_first_chunk::<LENGTH_PREFIX_SIZE>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes(*length));
        if len == 0 {
            return Err(SoupError::EmptyFrame);
        }
        if len > self.max_frame_bytes {
            return Err(SoupError::FrameTooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        if rest.len() < len {
            return Ok(None);
        }
        let frame_start = self.start + LENGTH_PREFIX_SIZE;
        self.start = frame_start + len;
        Ok(Some(&self.buf[frame_start..frame_start + len]))
    }

    /// Bytes received and not yet returned as frames.
    #[inline]
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Bytes the decoder can still take (after compacting), i.e. the most
    /// that [`spare`](Self::spare) or [`extend`](Self::extend) can accept.
    #[inline]
    pub fn room(&self) -> usize {
        self.buf.len() - self.buffered()
    }

    /// Forgets everything buffered (and so any sticky error), so the decoder
    /// can serve a new connection without reallocating.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_field_is_right_aligned() {
        assert_eq!(&sequence_field(0), b"                   0");
        assert_eq!(&sequence_field(42), b"                  42");
        assert_eq!(&sequence_field(u64::MAX), b"18446744073709551615");
        for value in [0, 1, 9, 10, 99, 100, 12_345_678, u64::MAX / 3, u64::MAX] {
            assert_eq!(parse_sequence_field(&sequence_field(value)), Ok(value));
        }
        assert_eq!(parse_sequence_field(b"                    "), Ok(0));
        assert_eq!(parse_sequence_field(b""), Ok(0));
    }

    #[test]
    fn login_requests_of_both_versions_parse() {
        let mut buf = [0u8; 64];
        let session = Session::from_str("DAY1").unwrap();
        let n = write_login_request(&mut buf, "pos1", "pw", session, 7).unwrap();
        assert_eq!(n, 49);
        let Ok(ClientPacket::LoginRequest {
            requested_seq,
            heartbeat_timeout_ms,
            ..
        }) = ClientPacket::parse(&buf[2..n])
        else {
            panic!("4.0 login does not parse")
        };
        assert_eq!((requested_seq, heartbeat_timeout_ms), (7, None));
        let n = write_login_request_v41(&mut buf, "pos1", "pw", session, 7, 2500).unwrap();
        assert_eq!(n, 54);
        assert_eq!(&buf[49..54], b" 2500");
        let Ok(ClientPacket::LoginRequest {
            requested_seq,
            heartbeat_timeout_ms,
            ..
        }) = ClientPacket::parse(&buf[2..n])
        else {
            panic!("4.1 login does not parse")
        };
        assert_eq!((requested_seq, heartbeat_timeout_ms), (7, Some(2500)));
        assert_eq!(
            write_login_request_v41(&mut buf, "pos1", "pw", session, 7, 100_000),
            Err(SoupError::BadNumber)
        );
        // Any other length is still wrong.
        for len in [45, 47, 50, 52] {
            let mut frame = vec![b'L'];
            frame.resize(1 + len, b' ');
            assert_eq!(
                ClientPacket::parse(&frame),
                Err(SoupError::BadLength {
                    packet_type: b'L',
                    len
                })
            );
        }
    }

    #[test]
    fn decoder_compacts_and_reuses_its_buffer() {
        // Buffer of exactly one maximum frame: every partial frame must move
        // to the front before the rest of it can arrive.
        let mut decoder = FrameDecoder::with_buffer_bytes(8, 10);
        let mut frame = [0u8; 10];
        let n = write_frame(&mut frame, b'S', b"1234567").unwrap();
        assert_eq!(n, 10);
        for round in 0..5 {
            // Offset the stream by `round` bytes of a 1-byte-payload frame.
            let small = [0x00, 0x02, b'S', b'x'];
            assert_eq!(decoder.extend(&small), 4);
            assert_eq!(decoder.next_frame(), Ok(Some(&b"Sx"[..])));
            let taken = decoder.extend(&frame[..round + 3]);
            assert_eq!(decoder.next_frame(), Ok(None));
            let rest = decoder.extend(&frame[taken..]);
            assert_eq!(taken + rest, n);
            assert_eq!(decoder.next_frame(), Ok(Some(&frame[2..n])));
            assert_eq!(decoder.next_frame(), Ok(None));
            assert_eq!(decoder.buffered(), 0);
            assert_eq!(decoder.spare().len(), 10);
        }
    }

    #[test]
    #[should_panic(expected = "committed 11 bytes")]
    fn commit_past_spare_is_a_bug() {
        let mut decoder = FrameDecoder::with_buffer_bytes(8, 10);
        decoder.commit(11);
    }
}
