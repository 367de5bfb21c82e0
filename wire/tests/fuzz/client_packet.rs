//! `ClientPacket::parse` on arbitrary frames (type byte + payload): never
//! panics, and what it accepts re-encodes, through tally-wire's writers, to
//! a frame that parses to the same packet.

use tally_wire::soup::{self, packet_type, ClientPacket, SoupError};
use tally_wire::trim_ascii;

/// Field bytes as text for the writers, or `None` when not printable ASCII
/// (the writers refuse such text; the parser takes the field as it comes).
fn text(field: &[u8]) -> Option<&str> {
    let trimmed = trim_ascii(field);
    trimmed
        .iter()
        .all(|b| (b' '..=b'~').contains(b))
        .then(|| std::str::from_utf8(trimmed).expect("ASCII"))
}

/// The check libFuzzer and the suite run on one input.
pub fn check(frame: &[u8]) {
    let packet = match ClientPacket::parse(frame) {
        Ok(packet) => packet,
        Err(SoupError::EmptyFrame) => {
            assert!(frame.is_empty());
            return;
        }
        Err(SoupError::UnknownPacketType(t)) => {
            assert_eq!(t, frame[0]);
            assert!(!b"LURO".contains(&t));
            return;
        }
        Err(SoupError::BadLength { packet_type, len }) => {
            assert_eq!(packet_type, frame[0]);
            assert_eq!(len, frame.len() - 1);
            return;
        }
        Err(SoupError::BadNumber) => {
            assert_eq!(frame[0], packet_type::LOGIN_REQUEST);
            return;
        }
        Err(e) => panic!("unexpected error {e:?}"),
    };
    if frame.len() > soup::MAX_FRAME_BYTES {
        return; // accepted, but no frame can carry it
    }
    let mut buf = vec![0u8; frame.len() + 2];
    let written = match packet {
        ClientPacket::LoginRequest {
            username,
            password,
            session,
            requested_seq,
            heartbeat_timeout_ms,
        } => {
            let (Some(username), Some(password)) = (text(username), text(password)) else {
                return;
            };
            match heartbeat_timeout_ms {
                // SoupBinTCP 4.0: 46-byte payload.
                None => {
                    soup::write_login_request(&mut buf, username, password, session, requested_seq)
                }
                // 4.1: the requested heartbeat timeout follows.
                Some(timeout_ms) => soup::write_login_request_v41(
                    &mut buf,
                    username,
                    password,
                    session,
                    requested_seq,
                    timeout_ms,
                ),
            }
        }
        ClientPacket::Unsequenced(message) => {
            assert_eq!(message, &frame[1..]);
            soup::write_unsequenced(&mut buf, message)
        }
        ClientPacket::Heartbeat => soup::write_client_heartbeat(&mut buf),
        ClientPacket::Logout => soup::write_logout(&mut buf),
    }
    .expect("an accepted packet re-encodes");
    assert_eq!(written, frame.len() + 2);
    assert_eq!(
        usize::from(u16::from_be_bytes([buf[0], buf[1]])),
        frame.len()
    );
    assert_eq!(ClientPacket::parse(&buf[2..written]), Ok(packet));
}
