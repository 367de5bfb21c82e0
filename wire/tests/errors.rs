//! Every way a decoder rejects bytes gives its specific error value, with a
//! clear `Display` message.

use tally_wire::mold::{self, MoldPacket, ReRequest, Session};
use tally_wire::soup::{self, ClientPacket, ServerPacket, SoupError};
use tally_wire::*;

/// A packet header for `count` messages starting at sequence 5.
fn mold_header(count: u16) -> Vec<u8> {
    let mut bytes = b"S1        ".to_vec();
    bytes.extend_from_slice(&5u64.to_be_bytes());
    bytes.extend_from_slice(&count.to_be_bytes());
    bytes
}

#[test]
fn mold_count_past_the_datagram() {
    // Count 3, but only two blocks follow.
    let mut bytes = mold_header(3);
    bytes.extend_from_slice(&[0x00, 0x02, b'a', b'b', 0x00, 0x01, b'c']);
    assert_eq!(
        MoldPacket::parse(&bytes),
        Err(MoldError::BlockPastEnd {
            index: 2,
            offset: 27
        })
    );
    // Count 1 with no block at all.
    assert_eq!(
        MoldPacket::parse(&mold_header(1)),
        Err(MoldError::BlockPastEnd {
            index: 0,
            offset: 20
        })
    );
    // The largest data count with one block.
    let mut bytes = mold_header(0xFFFE);
    bytes.extend_from_slice(&[0x00, 0x00]);
    assert_eq!(
        MoldPacket::parse(&bytes),
        Err(MoldError::BlockPastEnd {
            index: 1,
            offset: 22
        })
    );
}

#[test]
fn mold_block_length_past_the_datagram() {
    // Second block claims 5 bytes, 4 are there.
    let mut bytes = mold_header(2);
    bytes.extend_from_slice(&[0x00, 0x01, b'a', 0x00, 0x05, b'b', b'c', b'd', b'e']);
    assert_eq!(
        MoldPacket::parse(&bytes),
        Err(MoldError::BlockPastEnd {
            index: 1,
            offset: 23
        })
    );
    // A length of 0xFFFF in a small datagram.
    let mut bytes = mold_header(1);
    bytes.extend_from_slice(&[0xFF, 0xFF, b'x']);
    assert_eq!(
        MoldPacket::parse(&bytes),
        Err(MoldError::BlockPastEnd {
            index: 0,
            offset: 20
        })
    );
    // The length prefix itself is cut in half.
    let mut bytes = mold_header(2);
    bytes.extend_from_slice(&[0x00, 0x01, b'a', 0x00]);
    assert_eq!(
        MoldPacket::parse(&bytes),
        Err(MoldError::BlockPastEnd {
            index: 1,
            offset: 23
        })
    );
}

#[test]
fn mold_trailing_bytes_and_short_datagrams() {
    let mut bytes = mold_header(1);
    bytes.extend_from_slice(&[0x00, 0x01, b'a', 0xEE, 0xEE]);
    assert_eq!(
        MoldPacket::parse(&bytes),
        Err(MoldError::TrailingBytes { extra: 2 })
    );
    // A heartbeat or end of session carries nothing.
    let mut bytes = mold_header(mold::COUNT_HEARTBEAT);
    bytes.push(0);
    assert_eq!(
        MoldPacket::parse(&bytes),
        Err(MoldError::TrailingBytes { extra: 1 })
    );
    let mut bytes = mold_header(mold::COUNT_END_OF_SESSION);
    bytes.extend_from_slice(&[0x00, 0x01, b'a']);
    assert_eq!(
        MoldPacket::parse(&bytes),
        Err(MoldError::TrailingBytes { extra: 3 })
    );
    for len in 0..20 {
        assert_eq!(
            MoldPacket::parse(&mold_header(0)[..len]),
            Err(MoldError::TooShort { len })
        );
    }
}

#[test]
fn mold_re_request_must_be_20_bytes() {
    let request = ReRequest::new(Session::from_str("S1").unwrap(), 9, 3);
    let bytes = request.as_bytes();
    assert_eq!(
        ReRequest::parse(&bytes[..19]),
        Err(MoldError::ReRequestLength { len: 19 })
    );
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert_eq!(
        ReRequest::parse(&longer),
        Err(MoldError::ReRequestLength { len: 21 })
    );
    assert_eq!(
        ReRequest::parse(&[]),
        Err(MoldError::ReRequestLength { len: 0 })
    );
}

#[test]
fn mold_builder_count_limit() {
    // Zero-length messages: 65 534 fit by bytes in a big buffer, the count caps them.
    let mut buf = vec![0u8; 20 + 2 * 0x10000];
    let mut builder = PacketBuilder::new(&mut buf, usize::MAX, Session::BLANK, 1);
    for _ in 0..mold::MAX_COUNT {
        builder.append(&[]).unwrap();
    }
    assert_eq!(builder.append(&[]), Err(Full));
    assert_eq!(builder.count(), 0xFFFE);
    let len = builder.finish();
    let packet = MoldPacket::parse(&buf[..len]).unwrap();
    assert_eq!(packet.kind(), mold::PacketKind::Data);
    assert_eq!(packet.messages().len(), 0xFFFE);
    // A message longer than a u16 length can say never fits.
    let mut buf = vec![0u8; 0x20000];
    let mut builder = PacketBuilder::new(&mut buf, usize::MAX, Session::BLANK, 1);
    assert_eq!(builder.append(&[0u8; 0x10000]), Err(Full));
    assert_eq!(
        builder.append_with(0x10000, |_| panic!("must not run")),
        Err(Full)
    );
    builder.append(&[0u8; 0xFFFF]).unwrap();
}

#[test]
fn mold_builder_exact_fit() {
    let mut buf = [0u8; 64];
    let mut builder = PacketBuilder::new(&mut buf, 30, Session::BLANK, 1);
    assert_eq!(builder.remaining_bytes(), 10);
    assert_eq!(builder.append(&[1; 9]), Err(Full));
    builder.append(&[1; 8]).unwrap();
    assert_eq!(builder.append(&[]), Err(Full));
    assert_eq!(builder.finish(), 30);
    // The buffer bounds the limit too.
    let mut small = [0u8; 24];
    let mut builder = PacketBuilder::new(&mut small, 1400, Session::BLANK, 1);
    assert_eq!(builder.limit_bytes(), 24);
    builder.append(&[1, 2]).unwrap();
    assert_eq!(builder.append(&[]), Err(Full));
}

#[test]
#[should_panic(expected = "below the 20-byte header")]
fn mold_builder_limit_below_header_is_a_bug() {
    let mut buf = [0u8; 64];
    let _ = PacketBuilder::new(&mut buf, 19, Session::BLANK, 1);
}

#[test]
fn message_errors() {
    assert_eq!(
        Message::parse(&[]),
        Err(MessageError::Truncated {
            needed: 1,
            available: 0
        })
    );
    assert_eq!(
        Message::parse_prefix(&[]).unwrap_err(),
        MessageError::Truncated {
            needed: 1,
            available: 0
        }
    );
    assert_eq!(Message::parse(b"Z"), Err(MessageError::UnknownType(b'Z')));
    assert_eq!(
        Message::parse_prefix(b"Zabc").unwrap_err(),
        MessageError::UnknownType(b'Z')
    );
    assert_eq!(
        Message::parse(b"O"),
        Err(MessageError::Truncated {
            needed: 33,
            available: 1
        })
    );
    assert_eq!(
        Message::parse_prefix(&[b'O'; 32]).unwrap_err(),
        MessageError::Truncated {
            needed: 33,
            available: 32
        }
    );
    assert_eq!(
        Message::parse(&[b'S'; 17]),
        Err(MessageError::WrongLength {
            msg_type: b'S',
            expected: 16,
            actual: 17
        })
    );
    let order = Order::new(1, 2, 3, 4);
    assert_eq!(
        CancelOrder::parse(order.as_bytes()),
        Err(MessageError::UnexpectedType {
            expected: b'X',
            actual: b'O'
        })
    );
    assert_eq!(message_size(b'Z'), None);
    assert!(!is_command(b'Z') && !is_event(b'Z'));
    assert_eq!(
        Ack::parse(&[]),
        Err(MessageError::Truncated {
            needed: 1,
            available: 0
        })
    );
    assert_eq!(Ack::parse(b"O"), Err(MessageError::UnknownType(b'O')));
    assert_eq!(
        Ack::parse(b"kabc"),
        Err(MessageError::Truncated {
            needed: 21,
            available: 4
        })
    );
    assert_eq!(
        Ack::parse(&[b'j'; 15]),
        Err(MessageError::WrongLength {
            msg_type: b'j',
            expected: 14,
            actual: 15
        })
    );
}

#[test]
fn soup_packet_errors() {
    assert_eq!(ClientPacket::parse(&[]), Err(SoupError::EmptyFrame));
    assert_eq!(ServerPacket::parse(&[]), Err(SoupError::EmptyFrame));
    // Server types are unknown from a client and the reverse.
    assert_eq!(
        ClientPacket::parse(b"S"),
        Err(SoupError::UnknownPacketType(b'S'))
    );
    assert_eq!(
        ServerPacket::parse(b"U"),
        Err(SoupError::UnknownPacketType(b'U'))
    );
    assert_eq!(
        ClientPacket::parse(b"Lshort"),
        Err(SoupError::BadLength {
            packet_type: b'L',
            len: 5
        })
    );
    assert_eq!(
        ClientPacket::parse(b"R!"),
        Err(SoupError::BadLength {
            packet_type: b'R',
            len: 1
        })
    );
    assert_eq!(
        ClientPacket::parse(b"O!"),
        Err(SoupError::BadLength {
            packet_type: b'O',
            len: 1
        })
    );
    assert_eq!(
        ServerPacket::parse(b"J"),
        Err(SoupError::BadLength {
            packet_type: b'J',
            len: 0
        })
    );
    assert_eq!(
        ServerPacket::parse(b"JAA"),
        Err(SoupError::BadLength {
            packet_type: b'J',
            len: 2
        })
    );
    assert_eq!(
        ServerPacket::parse(b"H "),
        Err(SoupError::BadLength {
            packet_type: b'H',
            len: 1
        })
    );
    assert_eq!(
        ServerPacket::parse(b"Z "),
        Err(SoupError::BadLength {
            packet_type: b'Z',
            len: 1
        })
    );
    assert_eq!(
        ServerPacket::parse(b"A"),
        Err(SoupError::BadLength {
            packet_type: b'A',
            len: 0
        })
    );

    let mut login = b"Lalice s3cret    TALLY1    ".to_vec();
    for (field, ok) in [
        (&b"                  42"[..], Some(42)),
        (b"42                  ", Some(42)),
        (b"00000000000000000042", Some(42)),
        (b"18446744073709551615", Some(u64::MAX)),
        (b"18446744073709551616", None),
        (b"99999999999999999999", None),
        (b"               4 2  ", None),
        (b"                 -42", None),
        (b"                0x2a", None),
    ] {
        login.truncate(27);
        login.extend_from_slice(field);
        match (ClientPacket::parse(&login), ok) {
            (Ok(ClientPacket::LoginRequest { requested_seq, .. }), Some(v)) => {
                assert_eq!(requested_seq, v)
            }
            (Err(SoupError::BadNumber), None) => {}
            (other, _) => panic!("{field:?}: {other:?}"),
        }
    }
}

#[test]
fn soup_encoder_errors() {
    let mut buf = [0u8; 64];
    assert_eq!(
        soup::write_login_request(&mut buf, "toolong", "pw", Session::BLANK, 1),
        Err(SoupError::BadText(TextError::TooLong { len: 7, max: 6 }))
    );
    assert_eq!(
        soup::write_login_request(&mut buf, "bob", "pass\nword", Session::BLANK, 1),
        Err(SoupError::BadText(TextError::NotPrintable {
            index: 4,
            byte: b'\n'
        }))
    );
    assert_eq!(
        soup::write_login_request(&mut buf[..48], "bob", "pw", Session::BLANK, 1),
        Err(SoupError::BufferTooSmall)
    );
    assert_eq!(
        soup::write_client_heartbeat(&mut buf[..2]),
        Err(SoupError::BufferTooSmall)
    );
    let mut big = vec![0u8; 70_000];
    let payload = vec![0u8; 65_535];
    assert_eq!(
        soup::write_sequenced(&mut big, &payload),
        Err(SoupError::FrameTooLarge {
            len: 65_536,
            max: 65_535
        })
    );
    assert_eq!(soup::write_sequenced(&mut big, &payload[1..]), Ok(65_537));
}

#[test]
fn text_helpers() {
    assert_eq!(pad_ascii::<6>("ab"), Ok(*b"ab    "));
    assert_eq!(
        pad_ascii::<2>("abc"),
        Err(TextError::TooLong { len: 3, max: 2 })
    );
    assert_eq!(
        pad_ascii::<4>("é"),
        Err(TextError::NotPrintable {
            index: 0,
            byte: 0xC3
        })
    );
    assert_eq!(trim_ascii(b"ab  "), b"ab");
    assert_eq!(trim_ascii(b" a b "), b" a b");
    assert_eq!(trim_ascii(b"    "), b"");
    assert_eq!(
        Session::from_str("ABCDEFGHIJK"),
        Err(TextError::TooLong { len: 11, max: 10 })
    );
    assert_eq!("DAY".parse::<Session>().unwrap().as_str(), "DAY");
    assert_eq!(Session::BLANK.as_str(), "");
    // Bytes off the wire that are not UTF-8 stop as_str, never panic.
    assert_eq!(Session(*b"AB\xFFCD     ").as_str(), "AB");
    assert_eq!(Session(*b"AB\xFFCD     ").to_string(), "AB\\xffCD");
}

#[test]
fn display_messages_are_specific() {
    let cases: Vec<(Box<dyn std::error::Error>, &str)> = vec![
        (
            Box::new(MessageError::Truncated {
                needed: 33,
                available: 4,
            }),
            "message truncated: needs 33 bytes, only 4 available",
        ),
        (
            Box::new(MessageError::UnknownType(b'Z')),
            "unknown message type 'Z'",
        ),
        (
            Box::new(MessageError::UnknownType(0x07)),
            "unknown message type 0x07",
        ),
        (
            Box::new(MessageError::WrongLength {
                msg_type: b'S',
                expected: 16,
                actual: 17,
            }),
            "wrong length for message type 'S': expected 16 bytes, got 17",
        ),
        (
            Box::new(MoldError::BlockPastEnd {
                index: 2,
                offset: 27,
            }),
            "MoldUDP64 message block 2 at offset 27 runs past the end of the datagram",
        ),
        (
            Box::new(MoldError::TooShort { len: 3 }),
            "MoldUDP64 datagram of 3 bytes is shorter than the 20-byte header",
        ),
        (
            Box::new(SoupError::FrameTooLarge {
                len: 5000,
                max: 1024,
            }),
            "SoupBinTCP frame of 5000 bytes exceeds the maximum of 1024",
        ),
        (
            Box::new(SoupError::UnknownPacketType(b'Q')),
            "unknown SoupBinTCP packet type 'Q'",
        ),
        (Box::new(Full), "MoldUDP64 packet full"),
        (
            Box::new(TextError::TooLong { len: 7, max: 6 }),
            "text is 7 bytes, the field holds at most 6",
        ),
    ];
    for (error, text) in cases {
        assert_eq!(error.to_string(), text);
    }
    let text_error = SoupError::BadText(TextError::TooLong { len: 7, max: 6 });
    assert!(std::error::Error::source(&text_error).is_some());
}
