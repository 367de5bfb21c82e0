//! `ServerPacket::parse` on arbitrary frames (type byte + payload): never
//! panics, and what it accepts re-encodes, through tally-wire's writers, to
//! a frame that parses to the same packet.

use tally_wire::soup::{self, packet_type, ServerPacket, SoupError};

/// The check libFuzzer and the suite run on one input.
pub fn check(frame: &[u8]) {
    let packet = match ServerPacket::parse(frame) {
        Ok(packet) => packet,
        Err(SoupError::EmptyFrame) => {
            assert!(frame.is_empty());
            return;
        }
        Err(SoupError::UnknownPacketType(t)) => {
            assert_eq!(t, frame[0]);
            assert!(!b"AJSHZ+".contains(&t));
            return;
        }
        Err(SoupError::BadLength { packet_type, len }) => {
            assert_eq!(packet_type, frame[0]);
            assert_eq!(len, frame.len() - 1);
            return;
        }
        Err(SoupError::BadNumber) => {
            assert_eq!(frame[0], packet_type::LOGIN_ACCEPTED);
            return;
        }
        Err(e) => panic!("unexpected error {e:?}"),
    };
    if frame.len() > soup::MAX_FRAME_BYTES {
        return; // accepted, but no frame can carry it
    }
    let mut buf = vec![0u8; frame.len() + 2];
    let written = match packet {
        ServerPacket::LoginAccepted { session, next_seq } => {
            soup::write_login_accepted(&mut buf, session, next_seq)
        }
        ServerPacket::LoginRejected { reason } => soup::write_login_rejected(&mut buf, reason),
        ServerPacket::Sequenced(payload) => {
            assert_eq!(payload, &frame[1..]);
            soup::write_sequenced(&mut buf, payload)
        }
        ServerPacket::Heartbeat => soup::write_server_heartbeat(&mut buf),
        ServerPacket::EndOfSession => soup::write_end_of_session(&mut buf),
        ServerPacket::Debug(text) => {
            assert_eq!(text, &frame[1..]);
            soup::write_debug(&mut buf, text)
        }
    }
    .expect("an accepted packet re-encodes");
    assert_eq!(written, frame.len() + 2);
    assert_eq!(ServerPacket::parse(&buf[2..written]), Ok(packet));
    // A sequenced payload may be an ack: decoding it must not panic.
    if let ServerPacket::Sequenced(payload) = packet {
        let _ = tally_wire::Ack::parse(payload);
    }
}
