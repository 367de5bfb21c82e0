//! The server side of SoupBinTCP that both of tally's SoupBinTCP servers
//! share: the order-entry gateway ([`crate::session`]) and the appliance's
//! replay feed (`tally_sequencer::replay`).
//!
//! Each server keeps its own connection table and its own reaction to a
//! login (the gateway admits a client for order entry, the replay feed
//! streams the journal), but what a frame *means* at a stage of a
//! connection, how a SoupBinTCP 4.1 login's heartbeat request is negotiated
//! and how a refusal is put in words are one piece of code, here:
//!
//! - [`classify`]: a frame, at a [`Stage`], is a [`Step`]: a login, data, a
//!   heartbeat, a logout, or a [`ProtocolError`] (which the server answers
//!   with a Debug packet saying it, then closes).
//! - [`HeartbeatPolicy::negotiate`]: a login's requested timeout, clamped
//!   into the configured bounds.
//! - [`format_text`]: a refusal's words into a fixed buffer (no allocation).
//!
//! Realtime contract: nothing here allocates, locks or logs.

use core::fmt::{self, Write as _};
use std::io::Write as _;

use tally_wire::mold::Session;
use tally_wire::soup::{self, ClientPacket, SoupError, DEBUG_TEXT_BYTES_MAX};

/// Where a connection is, as far as framing is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Connected; only a login request is acceptable.
    AwaitingLogin,
    /// A login was received (being checked, or accepted).
    LoggedIn,
}

/// The fields of a login request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Login<'a> {
    pub username: &'a [u8; soup::USERNAME_SIZE],
    pub password: &'a [u8; soup::PASSWORD_SIZE],
    pub session: Session,
    pub requested_seq: u64,
    /// SoupBinTCP 4.1's requested heartbeat timeout (`None` for 4.0).
    pub heartbeat_timeout_ms: Option<u32>,
}

/// What one frame asks of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<'a> {
    Login(Login<'a>),
    /// Unsequenced data (`U`), its payload.
    Data(&'a [u8]),
    Heartbeat,
    Logout,
    /// Refused: answer with a Debug packet saying it, then close.
    Error(ProtocolError),
}

/// Why a frame is refused, whatever the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// The frame does not parse as a client packet.
    Malformed(SoupError),
    /// Something else than a login request came first (its type byte).
    LoginFirst(u8),
    /// A login request on a connection that already sent one.
    SecondLogin,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Malformed(error) => write!(f, "{error}"),
            ProtocolError::LoginFirst(packet_type) => write!(
                f,
                "the first packet must be a login request, not {}",
                ByteText(*packet_type)
            ),
            ProtocolError::SecondLogin => {
                f.write_str("a second login request on a logged-in session")
            }
        }
    }
}

/// What `frame` (type byte + payload, no length prefix) asks of a
/// connection at `stage`.
pub fn classify(stage: Stage, frame: &[u8]) -> Step<'_> {
    let packet = match ClientPacket::parse(frame) {
        Ok(packet) => packet,
        Err(error) => return Step::Error(ProtocolError::Malformed(error)),
    };
    match (stage, packet) {
        (
            Stage::AwaitingLogin,
            ClientPacket::LoginRequest {
                username,
                password,
                session,
                requested_seq,
                heartbeat_timeout_ms,
            },
        ) => Step::Login(Login {
            username,
            password,
            session,
            requested_seq,
            heartbeat_timeout_ms,
        }),
        (Stage::AwaitingLogin, _) => Step::Error(ProtocolError::LoginFirst(frame[0])),
        (Stage::LoggedIn, ClientPacket::LoginRequest { .. }) => {
            Step::Error(ProtocolError::SecondLogin)
        }
        (Stage::LoggedIn, ClientPacket::Unsequenced(data)) => Step::Data(data),
        (Stage::LoggedIn, ClientPacket::Heartbeat) => Step::Heartbeat,
        (Stage::LoggedIn, ClientPacket::Logout) => Step::Logout,
    }
}

/// A server's heartbeat settings: its default peer timeout and heartbeat
/// interval, and the bounds a SoupBinTCP 4.1 login may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatPolicy {
    /// Peer timeout of a 4.0 login (or a 4.1 login asking for 0).
    pub peer_timeout_ns: u64,
    /// How often the server sends a heartbeat on a silent connection.
    pub heartbeat_interval_ns: u64,
    pub timeout_min_ns: u64,
    pub timeout_max_ns: u64,
}

/// A login's negotiated heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Silence after which the server drops the peer.
    pub peer_timeout_ns: u64,
    /// The server's heartbeat interval for this peer: at least three
    /// heartbeats per peer timeout.
    pub heartbeat_interval_ns: u64,
}

impl HeartbeatPolicy {
    /// The heartbeat of a login that asked for `requested_ms` (`None`: a
    /// 4.0 login; `Some(0)`: the server's default): the request clamped
    /// into the bounds.
    pub fn negotiate(&self, requested_ms: Option<u32>) -> Negotiated {
        let peer_timeout_ns = match requested_ms {
            Some(ms) if ms > 0 => {
                (u64::from(ms) * 1_000_000).clamp(self.timeout_min_ns, self.timeout_max_ns)
            }
            _ => self.peer_timeout_ns,
        };
        Negotiated {
            peer_timeout_ns,
            heartbeat_interval_ns: self.heartbeat_interval_ns.min(peer_timeout_ns / 3).max(1),
        }
    }
}

/// Formats `args` into `buf`, cut at its length; returns the text. Writing
/// to a slice does not allocate; an error only means the text was cut.
pub fn format_text<'b>(
    buf: &'b mut [u8; DEBUG_TEXT_BYTES_MAX],
    args: fmt::Arguments<'_>,
) -> &'b [u8] {
    let mut cursor: &mut [u8] = &mut buf[..];
    let _ = cursor.write_fmt(args);
    let written = DEBUG_TEXT_BYTES_MAX - cursor.len();
    &buf[..written]
}

/// Shows a byte as a character when printable (`'U'`), else in hex (`0x01`).
pub struct ByteText(pub u8);

impl fmt::Display for ByteText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            f.write_char('\'')?;
            f.write_char(self.0 as char)?;
            f.write_char('\'')
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(write: impl FnOnce(&mut [u8]) -> Result<usize, SoupError>) -> Vec<u8> {
        let mut buf = [0u8; 128];
        let n = write(&mut buf).unwrap();
        // Without the 2-byte length prefix.
        buf[2..n].to_vec()
    }

    #[test]
    fn a_frame_means_what_its_stage_allows() {
        let heartbeat = frame(soup::write_client_heartbeat);
        assert_eq!(
            classify(Stage::AwaitingLogin, &heartbeat),
            Step::Error(ProtocolError::LoginFirst(b'R'))
        );
        assert_eq!(classify(Stage::LoggedIn, &heartbeat), Step::Heartbeat);
        let data = frame(|b| soup::write_unsequenced(b, b"hi"));
        assert_eq!(classify(Stage::LoggedIn, &data), Step::Data(b"hi"));
        assert!(matches!(
            classify(Stage::LoggedIn, b"?"),
            Step::Error(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            classify(Stage::AwaitingLogin, b""),
            Step::Error(_)
        ));
    }

    #[test]
    fn refusals_are_in_words() {
        let mut buf = [0u8; DEBUG_TEXT_BYTES_MAX];
        let text = format_text(
            &mut buf,
            format_args!("{}", ProtocolError::LoginFirst(b'U')),
        );
        assert_eq!(text, b"the first packet must be a login request, not 'U'");
        let text = format_text(&mut buf, format_args!("{}", ProtocolError::LoginFirst(1)));
        assert!(text.ends_with(b"not 0x01"));
        let long = "x".repeat(1000);
        assert_eq!(
            format_text(&mut buf, format_args!("{long}")).len(),
            DEBUG_TEXT_BYTES_MAX
        );
    }

    #[test]
    fn a_requested_timeout_is_clamped_and_sets_the_heartbeat() {
        let policy = HeartbeatPolicy {
            peer_timeout_ns: 15_000_000_000,
            heartbeat_interval_ns: 1_000_000_000,
            timeout_min_ns: 3_000_000_000,
            timeout_max_ns: 60_000_000_000,
        };
        assert_eq!(policy.negotiate(None).peer_timeout_ns, 15_000_000_000);
        assert_eq!(policy.negotiate(Some(0)).peer_timeout_ns, 15_000_000_000);
        assert_eq!(policy.negotiate(Some(1)).peer_timeout_ns, 3_000_000_000);
        assert_eq!(
            policy.negotiate(Some(99_999)).peer_timeout_ns,
            60_000_000_000
        );
        let short = HeartbeatPolicy {
            heartbeat_interval_ns: 5_000_000_000,
            ..policy
        };
        assert_eq!(
            short.negotiate(Some(3000)).heartbeat_interval_ns,
            1_000_000_000
        );
    }
}
