//! Property tests: valid messages round-trip, no decoder panics on arbitrary
//! bytes, the SoupBinTCP frame decoder is independent of split points, and
//! the MoldUDP64 builder respects its limit and parses back.

use proptest::collection::vec;
use proptest::prelude::*;
use tally_wire::mold::{self, MoldPacket, PacketBuilder, ReRequest, Session};
use tally_wire::soup::{self, ClientPacket, FrameDecoder, ServerPacket, SoupError};
use tally_wire::*;

/// Every type byte DESIGN.md §3 defines.
const TYPES: &[u8] = b"OMXVCKTQPNRLIDHEJSj";

fn known_type() -> impl Strategy<Value = u8> {
    prop::sample::select(TYPES)
}

/// Any valid message as bytes: a known type byte followed by arbitrary field
/// bytes (every field of every type accepts any bit pattern).
fn valid_message() -> impl Strategy<Value = Vec<u8>> {
    (known_type(), vec(any::<u8>(), MAX_MESSAGE_SIZE)).prop_map(|(t, mut bytes)| {
        bytes[0] = t;
        bytes.truncate(message_size(t).unwrap());
        bytes
    })
}

/// A session name: up to 10 printable ASCII characters.
fn session() -> impl Strategy<Value = Session> {
    "[ -~]{0,10}".prop_map(|s| Session::from_str(&s).unwrap())
}

/// Asserts `parse(as_bytes(x)) == x` for one typed message.
fn round_trip<T: WireMessage + std::fmt::Debug + PartialEq>(message: T) {
    let bytes = message.as_bytes();
    assert_eq!(bytes.len(), T::SIZE);
    assert_eq!(bytes[0], T::TYPE);
    assert_eq!(Message::parse(bytes).unwrap(), message.as_message());
    assert_eq!(T::parse(bytes).unwrap(), &message);
    assert_eq!(
        Message::parse_prefix(bytes).unwrap(),
        (message.as_message(), &[][..])
    );
}

fn header() -> impl Strategy<Value = (u16, u32, u64)> {
    (any::<u16>(), any::<u32>(), any::<u64>())
}

fn stamp<T: WireMessage>(mut message: T, (origin, client_seq, timestamp_ns): (u16, u32, u64)) -> T {
    let header = message.header_mut();
    header.origin = origin.into();
    header.client_seq = client_seq.into();
    header.timestamp_ns = timestamp_ns.into();
    message
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    // ---- round trips ----------------------------------------------------

    #[test]
    fn any_valid_message_round_trips(bytes in valid_message()) {
        let message = Message::parse(&bytes).unwrap();
        prop_assert_eq!(message.as_bytes(), &bytes[..]);
        prop_assert_eq!(message.msg_type(), bytes[0]);
        prop_assert_eq!(message.header().as_bytes(), &bytes[..Header::SIZE]);
        prop_assert!(message.is_command() != message.is_event());
        // One byte more or less is a distinct error, never a panic.
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert_eq!(
            Message::parse(&longer),
            Err(MessageError::WrongLength { msg_type: bytes[0], expected: bytes.len(), actual: bytes.len() + 1 })
        );
        prop_assert_eq!(
            Message::parse(&bytes[..bytes.len() - 1]),
            Err(MessageError::Truncated { needed: bytes.len(), available: bytes.len() - 1 })
        );
    }

    #[test]
    fn concatenated_messages_parse_as_prefixes(messages in vec(valid_message(), 0..20)) {
        let stream: Vec<u8> = messages.concat();
        let mut rest = &stream[..];
        for expected in &messages {
            let (message, after) = Message::parse_prefix(rest).unwrap();
            prop_assert_eq!(message.as_bytes(), &expected[..]);
            rest = after;
        }
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn commands_round_trip(
        h in header(), a in any::<u64>(), b in any::<u16>(), c in any::<u16>(),
        d in any::<u32>(), e in any::<u32>(), f in any::<i32>(), g in any::<u8>(), k in any::<u64>(),
    ) {
        round_trip(stamp(Order::new(a, b, d, e), h));
        round_trip(stamp(ModifyOrder::new(a, d), h));
        round_trip(stamp(CancelOrder::new(a), h));
        round_trip(stamp(Reserve::new(a, b, d, e, d ^ e), h));
        round_trip(stamp(ConfirmHold::new(a), h));
        round_trip(stamp(ReleaseHold::new(a), h));
        round_trip(stamp(Transfer::new(a, b, c, d, e), h));
        round_trip(stamp(Recount::new(b, d, e, k), h));
        round_trip(stamp(Adjust::new(b, d, f, g), h));
    }

    #[test]
    fn events_round_trip(
        h in header(), a in any::<u64>(), b in any::<u16>(), d in any::<u32>(), e in any::<u32>(),
        f in any::<i32>(), g in any::<u8>(), k in any::<u64>(), text in any::<[u8; 16]>(),
    ) {
        round_trip(stamp(SkuDirectory::new(d, text), h));
        round_trip(stamp(LocationDirectory::new(b, text), h));
        round_trip(stamp(InventoryLevel::new(b, d, e, d ^ e), h));
        round_trip(stamp(OnHandDelta::new(b, d, f, g, a), h));
        round_trip(stamp(HoldPlaced::new(a, b, d, e, k), h));
        round_trip(stamp(HoldEnded::new(a, b, d, e, g), h));
        round_trip(stamp(CommandRejected::new(a, g), h));
        round_trip(stamp(SystemEvent::new(g), h));
        round_trip(stamp(GatewayReject::new(g), h));
    }

    #[test]
    fn acks_round_trip(client_seq in any::<u32>(), stream_seq in any::<u64>(), x in any::<u64>(), reason in any::<u8>()) {
        let accepted = Accepted::new(client_seq, stream_seq, x);
        prop_assert_eq!(Ack::parse(accepted.as_bytes()), Ok(Ack::Accepted(&accepted)));
        let rejected = Rejected::new(client_seq, stream_seq, reason);
        prop_assert_eq!(Ack::parse(rejected.as_bytes()), Ok(Ack::Rejected(&rejected)));
    }

    #[test]
    fn soup_packets_round_trip(
        user in "[!-~]{0,6}", password in "[!-~]{0,10}", session in session(),
        seq in any::<u64>(), payload in vec(any::<u8>(), 0..300), reason in any::<u8>(),
    ) {
        let mut buf = [0u8; 512];
        let n = soup::write_login_request(&mut buf, &user, &password, session, seq).unwrap();
        prop_assert_eq!(usize::from(u16::from_be_bytes([buf[0], buf[1]])), n - 2);
        let Ok(ClientPacket::LoginRequest { username, password: pw, session: s, requested_seq, heartbeat_timeout_ms }) =
            ClientPacket::parse(&buf[2..n]) else { panic!("login request does not parse") };
        prop_assert_eq!(trim_ascii(username), user.as_bytes());
        prop_assert_eq!(trim_ascii(pw), password.as_bytes());
        prop_assert_eq!((s, requested_seq, heartbeat_timeout_ms), (session, seq, None));

        // SoupBinTCP 4.1: the same fields plus the requested heartbeat timeout.
        let timeout = (seq % 100_000) as u32;
        let n = soup::write_login_request_v41(&mut buf, &user, &password, session, seq, timeout).unwrap();
        prop_assert_eq!(n, 2 + 1 + soup::LOGIN_REQUEST_PAYLOAD_V41);
        let Ok(ClientPacket::LoginRequest { username, password: pw, session: s, requested_seq, heartbeat_timeout_ms }) =
            ClientPacket::parse(&buf[2..n]) else { panic!("4.1 login request does not parse") };
        prop_assert_eq!(trim_ascii(username), user.as_bytes());
        prop_assert_eq!(trim_ascii(pw), password.as_bytes());
        prop_assert_eq!((s, requested_seq, heartbeat_timeout_ms), (session, seq, Some(timeout)));

        let n = soup::write_login_accepted(&mut buf, session, seq).unwrap();
        prop_assert_eq!(ServerPacket::parse(&buf[2..n]), Ok(ServerPacket::LoginAccepted { session, next_seq: seq }));
        let n = soup::write_login_rejected(&mut buf, reason).unwrap();
        prop_assert_eq!(ServerPacket::parse(&buf[2..n]), Ok(ServerPacket::LoginRejected { reason }));
        let n = soup::write_unsequenced(&mut buf, &payload).unwrap();
        prop_assert_eq!(ClientPacket::parse(&buf[2..n]), Ok(ClientPacket::Unsequenced(&payload)));
        let n = soup::write_sequenced(&mut buf, &payload).unwrap();
        prop_assert_eq!(ServerPacket::parse(&buf[2..n]), Ok(ServerPacket::Sequenced(&payload)));
        let n = soup::write_debug(&mut buf, &payload).unwrap();
        prop_assert_eq!(ServerPacket::parse(&buf[2..n]), Ok(ServerPacket::Debug(&payload)));
        // Too small a buffer is an error, not a panic or a partial frame.
        prop_assert_eq!(soup::write_sequenced(&mut buf[..n - 1], &payload), Err(SoupError::BufferTooSmall));
    }

    // ---- arbitrary bytes never panic -------------------------------------

    #[test]
    fn message_decoders_never_panic(bytes in vec(any::<u8>(), 0..128)) {
        if let Ok(message) = Message::parse(&bytes) {
            prop_assert_eq!(message.as_bytes(), &bytes[..]);
        }
        let mut rest = &bytes[..];
        while let Ok((message, after)) = Message::parse_prefix(rest) {
            prop_assert_eq!(message.as_bytes().len() + after.len(), rest.len());
            rest = after;
        }
        let _ = Ack::parse(&bytes);
        let _ = Order::parse(&bytes);
        let _ = HoldPlaced::parse(&bytes);
        let mut owned = bytes.clone();
        let _ = header_mut(&mut owned);
    }

    #[test]
    fn message_decoders_never_panic_on_known_types(t in known_type(), mut bytes in vec(any::<u8>(), 0..64)) {
        // Arbitrary bytes rarely start with a known type; force one.
        if let Some(first) = bytes.first_mut() { *first = t; }
        match Message::parse(&bytes) {
            Ok(message) => prop_assert_eq!(message.as_bytes().len(), message_size(t).unwrap()),
            Err(MessageError::Truncated { needed, available }) => prop_assert!(available < needed),
            Err(MessageError::WrongLength { expected, actual, .. }) => prop_assert!(actual > expected),
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
        let _ = Message::parse_prefix(&bytes);
    }

    #[test]
    fn mold_decoders_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        if let Ok(packet) = MoldPacket::parse(&bytes) {
            let messages: Vec<_> = packet.messages().collect();
            prop_assert_eq!(messages.len(), usize::from(packet.count()));
            for (_, message) in messages { let _ = Message::parse(message); }
        }
        if let Ok(request) = ReRequest::parse(&bytes) {
            prop_assert_eq!(request.as_bytes(), &bytes[..]);
        }
    }

    /// Arbitrary bytes are mostly too short or trailing; this starts from a
    /// valid packet and corrupts one byte of its count or blocks, or cuts it.
    #[test]
    fn mold_parse_never_panics_on_corrupted_packets(
        messages in vec(vec(any::<u8>(), 0..50), 0..10),
        index in any::<prop::sample::Index>(), value in any::<u8>(), cut in any::<prop::sample::Index>(),
    ) {
        let mut buf = [0u8; 1400];
        let mut builder = PacketBuilder::new(&mut buf, 1400, Session::BLANK, u64::MAX - 3);
        for message in &messages { builder.append(message).unwrap(); }
        let len = builder.finish();
        let mut packet = buf[..len].to_vec();
        let at = 18 + index.index(len - 18);
        packet[at] = value;
        packet.truncate(len - cut.index(len.min(30)));
        if let Ok(parsed) = MoldPacket::parse(&packet) {
            let total: usize = parsed.messages().map(|(_, m)| 2 + m.len()).sum();
            if parsed.kind() == mold::PacketKind::Data {
                prop_assert_eq!(20 + total, packet.len());
            }
        }
    }

    #[test]
    fn soup_decoders_never_panic(bytes in vec(any::<u8>(), 0..128)) {
        let _ = ClientPacket::parse(&bytes);
        let _ = ServerPacket::parse(&bytes);
    }

    #[test]
    fn soup_decoders_never_panic_on_known_types(t in prop::sample::select(&b"LURO AJSHZ+"[..]), mut bytes in vec(any::<u8>(), 0..64)) {
        if let Some(first) = bytes.first_mut() { *first = t; }
        let _ = ClientPacket::parse(&bytes);
        let _ = ServerPacket::parse(&bytes);
    }

    #[test]
    fn login_with_arbitrary_fields_never_panics(fields in vec(any::<u8>(), 46), digits in "[ 0-9]{20}") {
        let mut frame = vec![b'L'];
        frame.extend_from_slice(&fields);
        let _ = ClientPacket::parse(&frame);
        frame[27..47].copy_from_slice(digits.as_bytes());
        match ClientPacket::parse(&frame) {
            Ok(ClientPacket::LoginRequest { .. }) | Err(SoupError::BadNumber) => {}
            other => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn login_4_1_with_arbitrary_fields_never_panics(fields in vec(any::<u8>(), 51), digits in "[ 0-9]{20}", timeout in "[ 0-9]{5}") {
        let mut frame = vec![b'L'];
        frame.extend_from_slice(&fields);
        let _ = ClientPacket::parse(&frame);
        frame[27..47].copy_from_slice(digits.as_bytes());
        frame[47..52].copy_from_slice(timeout.as_bytes());
        match ClientPacket::parse(&frame) {
            Ok(ClientPacket::LoginRequest { heartbeat_timeout_ms: Some(ms), .. }) => {
                prop_assert!(ms <= soup::HEARTBEAT_TIMEOUT_MS_MAX)
            }
            Err(SoupError::BadNumber) => {}
            other => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn frame_decoder_never_panics(
        max in 1usize..300, bytes in vec(any::<u8>(), 0..1024), chunk in 1usize..100,
    ) {
        let mut decoder = FrameDecoder::new(max);
        let mut fed = 0;
        'feed: while fed < bytes.len() {
            let end = (fed + chunk).min(bytes.len());
            fed += decoder.extend(&bytes[fed..end]);
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => prop_assert!(!frame.is_empty() && frame.len() <= max),
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
            prop_assert!(!decoder.spare().is_empty());
        }
    }

    // ---- frame decoder: split points do not matter --------------------------

    #[test]
    fn frame_decoder_independent_of_split_points(
        frames in vec((any::<u8>(), vec(any::<u8>(), 0..200)), 0..30),
        splits in vec(1usize..64, 1..50),
        tight in any::<bool>(),
        trailing_oversize in any::<bool>(),
    ) {
        let max = 256;
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (packet_type, payload) in &frames {
            let mut frame = vec![0u8; payload.len() + 3];
            let n = soup::write_frame(&mut frame, *packet_type, payload).unwrap();
            prop_assert_eq!(n, frame.len());
            stream.extend_from_slice(&frame);
            expected.push(frame[2..].to_vec());
        }
        if trailing_oversize {
            stream.extend_from_slice(&[0x01, 0x01, b'S']); // length 257 > 256
        }
        let new_decoder = || if tight { FrameDecoder::with_buffer_bytes(max, max + 2) } else { FrameDecoder::new(max) };
        let want_error = trailing_oversize.then_some(SoupError::FrameTooLarge { len: 257, max });

        // One read holding the whole stream (as far as the buffer takes it).
        let (got, error) = decode_all(new_decoder(), &stream, std::iter::repeat(stream.len().max(1)));
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(error, want_error);
        // Byte by byte.
        let (got, error) = decode_all(new_decoder(), &stream, std::iter::repeat(1));
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(error, want_error);
        // Arbitrary split points.
        let (got, error) = decode_all(new_decoder(), &stream, splits.iter().copied().cycle());
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(error, want_error);
    }

    // ---- MoldUDP64 builder --------------------------------------------------

    #[test]
    fn packet_builder_respects_limit_and_parses_back(
        messages in vec(vec(any::<u8>(), 0..120), 0..60),
        limit in 20usize..700,
        session in session(),
        first_seq in any::<u64>(),
        in_place in any::<bool>(),
    ) {
        const SENTINEL: u8 = 0xA5;
        let mut buf = [SENTINEL; 1024];
        let mut builder = PacketBuilder::new(&mut buf, limit, session, first_seq);
        let mut appended = Vec::new();
        for message in &messages {
            let before = (builder.len(), builder.count());
            let fits = builder.len() + 2 + message.len() <= limit;
            let result = if in_place {
                builder.append_with(message.len(), |out| out.copy_from_slice(message))
            } else {
                builder.append(message)
            };
            prop_assert_eq!(result.is_ok(), fits);
            if result.is_err() {
                prop_assert_eq!((builder.len(), builder.count()), before);
                break;
            }
            appended.push(message.clone());
            prop_assert!(builder.len() <= limit);
        }
        prop_assert_eq!(builder.next_seq(), first_seq.wrapping_add(appended.len() as u64));
        let len = builder.finish();
        prop_assert!(len <= limit);
        prop_assert!(buf[limit..].iter().all(|&b| b == SENTINEL), "wrote past the limit");
        prop_assert!(buf[len..].iter().all(|&b| b == SENTINEL), "wrote past the packet");
        let packet = MoldPacket::parse(&buf[..len]).unwrap();
        prop_assert_eq!(packet.session(), session);
        prop_assert_eq!(packet.sequence(), first_seq);
        prop_assert_eq!(usize::from(packet.count()), appended.len());
        let got: Vec<(u64, Vec<u8>)> = packet.messages().map(|(s, m)| (s, m.to_vec())).collect();
        let want: Vec<(u64, Vec<u8>)> = appended
            .into_iter()
            .enumerate()
            .map(|(i, m)| (first_seq.wrapping_add(i as u64), m))
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn re_request_round_trips(session in session(), seq in any::<u64>(), count in any::<u16>()) {
        let request = ReRequest::new(session, seq, count);
        let parsed = ReRequest::parse(request.as_bytes()).unwrap();
        prop_assert_eq!(parsed, &request);
        prop_assert_eq!((parsed.session(), parsed.sequence.get(), parsed.count.get()), (session, seq, count));
    }
}

/// Feeds `stream` in reads of the sizes `splits` yields (each read limited to
/// the decoder's spare room), draining frames after each read; returns the
/// frames and the first error.
fn decode_all(
    mut decoder: FrameDecoder,
    stream: &[u8],
    mut splits: impl Iterator<Item = usize>,
) -> (Vec<Vec<u8>>, Option<SoupError>) {
    let mut frames = Vec::new();
    let mut fed = 0;
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame.to_vec()),
                Ok(None) => break,
                Err(e) => {
                    // Sticky: the same error again.
                    assert_eq!(decoder.next_frame(), Err(e));
                    return (frames, Some(e));
                }
            }
        }
        if fed == stream.len() {
            return (frames, None);
        }
        let want = splits.next().unwrap().max(1);
        let end = (fed + want).min(stream.len());
        // Through spare()/commit() like a socket read.
        let spare = decoder.spare();
        assert!(!spare.is_empty(), "drained decoder has no room");
        let n = spare.len().min(end - fed);
        spare[..n].copy_from_slice(&stream[fed..fed + n]);
        decoder.commit(n);
        fed += n;
    }
}

#[test]
fn frame_decoder_error_values() {
    let mut decoder = FrameDecoder::new(10);
    decoder.extend(&[0x00, 0x00]);
    assert_eq!(decoder.next_frame(), Err(SoupError::EmptyFrame));
    let mut decoder = FrameDecoder::new(10);
    decoder.extend(&[0x00, 0x0B]);
    assert_eq!(
        decoder.next_frame(),
        Err(SoupError::FrameTooLarge { len: 11, max: 10 })
    );
    let mut decoder = FrameDecoder::new(10);
    decoder.extend(&[0x00, 0x0A, b'U']);
    assert_eq!(decoder.next_frame(), Ok(None));
    assert_eq!(decoder.buffered(), 3);
}
