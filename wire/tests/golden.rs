//! Golden tests: bytes written by hand from DESIGN.md's offset tables (§2–§4),
//! decoded (every field checked) and re-encoded (equal bytes).
//!
//! Each fixture is written as `(offset, bytes)` rows copied from the DESIGN
//! tables; [`layout`] checks every row starts at its stated offset, so a
//! fixture cannot silently drift from the table. Field values are distinct
//! per byte so a field read from the wrong offset shows.

// Byte arrays such as `[b'W']` mirror one table row each; byte strings would hide that.
#![allow(clippy::byte_char_slices)]

use tally_wire::mold::{self, MoldPacket, PacketBuilder, PacketKind, ReRequest, Session};
use tally_wire::soup::{self, ClientPacket, FrameDecoder, ServerPacket};
use tally_wire::*;

/// Concatenates hand-written rows, asserting each starts at its offset.
fn layout(rows: &[(usize, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (offset, bytes) in rows {
        assert_eq!(
            out.len(),
            *offset,
            "fixture row does not start at offset {offset}"
        );
        out.extend_from_slice(bytes);
    }
    out
}

// Header rows shared by every message (type row differs).
const ORIGIN: &[u8] = &[0x01, 0x02];
const CLIENT_SEQ: &[u8] = &[0x03, 0x04, 0x05, 0x06];
const TIMESTAMP: &[u8] = &[0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E];
const ORIGIN_VALUE: u16 = 0x0102;
const CLIENT_SEQ_VALUE: u32 = 0x0304_0506;
const TIMESTAMP_VALUE: u64 = 0x0708_090A_0B0C_0D0E;

/// A message: the header rows of the DESIGN table, then `body` rows.
fn message_bytes(msg_type: u8, body: &[(usize, &[u8])]) -> Vec<u8> {
    let type_row = [msg_type];
    let mut rows: Vec<(usize, &[u8])> =
        vec![(0, &type_row), (1, ORIGIN), (3, CLIENT_SEQ), (7, TIMESTAMP)];
    rows.extend_from_slice(body);
    layout(&rows)
}

/// Checks the header, that the block parses as a whole and as a prefix,
/// and returns the view.
fn decode(bytes: &[u8], msg_type: u8, size: usize) -> Message<'_> {
    assert_eq!(bytes.len(), size);
    assert_eq!(message_size(msg_type), Some(size));
    let message = Message::parse(bytes).expect("golden bytes parse");
    let header = message.header();
    assert_eq!(header.msg_type, msg_type);
    assert_eq!(header.origin.get(), ORIGIN_VALUE);
    assert_eq!(header.client_seq.get(), CLIENT_SEQ_VALUE);
    assert_eq!(header.timestamp_ns.get(), TIMESTAMP_VALUE);
    assert_eq!(message.msg_type(), msg_type);
    assert_eq!(message.as_bytes(), bytes);
    let mut longer = bytes.to_vec();
    longer.extend_from_slice(b"rest");
    let (prefix, rest) = Message::parse_prefix(&longer).expect("golden bytes parse as prefix");
    assert_eq!(prefix, message);
    assert_eq!(rest, b"rest");
    message
}

fn stamp<T: WireMessage>(mut message: T) -> T {
    let header = message.header_mut();
    header.origin = ORIGIN_VALUE.into();
    header.client_seq = CLIENT_SEQ_VALUE.into();
    header.timestamp_ns = TIMESTAMP_VALUE.into();
    message
}

#[test]
fn header_alone() {
    let bytes = layout(&[(0, &[b'O']), (1, ORIGIN), (3, CLIENT_SEQ), (7, TIMESTAMP)]);
    assert_eq!(bytes.len(), Header::SIZE);
    let mut owned = bytes.clone();
    let header = header_mut(&mut owned).expect("15 bytes hold a header");
    assert_eq!(header.msg_type, b'O');
    assert_eq!(header.origin.get(), ORIGIN_VALUE);
    assert_eq!(header.client_seq.get(), CLIENT_SEQ_VALUE);
    assert_eq!(header.timestamp_ns.get(), TIMESTAMP_VALUE);
    header.origin = 0xBEEF.into();
    header.timestamp_ns = 0x1122_3344_5566_7788.into();
    assert_eq!(
        owned,
        [
            b'O', 0xBE, 0xEF, 0x03, 0x04, 0x05, 0x06, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
            0x88
        ]
    );
    assert!(header_mut(&mut owned[..14]).is_none());
    assert_eq!(MAX_MESSAGE_SIZE, 41);
}

#[test]
fn order() {
    let bytes = message_bytes(
        b'O',
        &[
            (15, &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]), // order_id u64
            (23, &[0x21, 0x22]),                                     // location u16
            (25, &[0x31, 0x32, 0x33, 0x34]),                         // sku u32
            (29, &[0x41, 0x42, 0x43, 0x44]),                         // qty u32
        ],
    );
    let Message::Order(m) = decode(&bytes, b'O', 33) else {
        panic!("not an order")
    };
    assert_eq!(m.order_id.get(), 0x1112_1314_1516_1718);
    assert_eq!(m.location.get(), 0x2122);
    assert_eq!(m.sku.get(), 0x3132_3334);
    assert_eq!(m.qty.get(), 0x4142_4344);
    let built = stamp(Order::new(
        0x1112_1314_1516_1718,
        0x2122,
        0x3132_3334,
        0x4142_4344,
    ));
    assert_eq!(built.as_bytes(), &bytes[..]);
    assert!(is_command(b'O') && !is_event(b'O'));
}

#[test]
fn modify_order() {
    let bytes = message_bytes(
        b'M',
        &[
            (15, &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]), // order_id u64
            (23, &[0x21, 0x22, 0x23, 0x24]),                         // new_qty u32
        ],
    );
    let Message::ModifyOrder(m) = decode(&bytes, b'M', 27) else {
        panic!()
    };
    assert_eq!(m.order_id.get(), 0x1112_1314_1516_1718);
    assert_eq!(m.new_qty.get(), 0x2122_2324);
    let built = stamp(ModifyOrder::new(0x1112_1314_1516_1718, 0x2122_2324));
    assert_eq!(built.as_bytes(), &bytes[..]);
    assert!(is_command(b'M'));
}

#[test]
fn cancel_order() {
    let bytes = message_bytes(
        b'X',
        &[(15, &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18])],
    );
    let Message::CancelOrder(m) = decode(&bytes, b'X', 23) else {
        panic!()
    };
    assert_eq!(m.order_id.get(), 0x1112_1314_1516_1718);
    assert_eq!(
        stamp(CancelOrder::new(0x1112_1314_1516_1718)).as_bytes(),
        &bytes[..]
    );
    assert!(is_command(b'X'));
}

#[test]
fn reserve() {
    let bytes = message_bytes(
        b'V',
        &[
            (15, &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]), // hold_id u64
            (23, &[0x21, 0x22]),                                     // location u16
            (25, &[0x31, 0x32, 0x33, 0x34]),                         // sku u32
            (29, &[0x41, 0x42, 0x43, 0x44]),                         // qty u32
            (33, &[0x51, 0x52, 0x53, 0x54]),                         // ttl_ms u32
        ],
    );
    let Message::Reserve(m) = decode(&bytes, b'V', 37) else {
        panic!()
    };
    assert_eq!(m.hold_id.get(), 0x1112_1314_1516_1718);
    assert_eq!(m.location.get(), 0x2122);
    assert_eq!(m.sku.get(), 0x3132_3334);
    assert_eq!(m.qty.get(), 0x4142_4344);
    assert_eq!(m.ttl_ms.get(), 0x5152_5354);
    let built = stamp(Reserve::new(
        0x1112_1314_1516_1718,
        0x2122,
        0x3132_3334,
        0x4142_4344,
        0x5152_5354,
    ));
    assert_eq!(built.as_bytes(), &bytes[..]);
    assert!(is_command(b'V'));
}

#[test]
fn confirm_hold() {
    let bytes = message_bytes(
        b'C',
        &[(15, &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18])],
    );
    let Message::ConfirmHold(m) = decode(&bytes, b'C', 23) else {
        panic!()
    };
    assert_eq!(m.hold_id.get(), 0x1112_1314_1516_1718);
    assert_eq!(
        stamp(ConfirmHold::new(0x1112_1314_1516_1718)).as_bytes(),
        &bytes[..]
    );
    assert!(is_command(b'C'));
}

#[test]
fn release_hold() {
    let bytes = message_bytes(
        b'K',
        &[(15, &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18])],
    );
    let Message::ReleaseHold(m) = decode(&bytes, b'K', 23) else {
        panic!()
    };
    assert_eq!(m.hold_id.get(), 0x1112_1314_1516_1718);
    assert_eq!(
        stamp(ReleaseHold::new(0x1112_1314_1516_1718)).as_bytes(),
        &bytes[..]
    );
    assert!(is_command(b'K'));
}

#[test]
fn transfer() {
    let bytes = message_bytes(
        b'T',
        &[
            (15, &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]), // transfer_id u64
            (23, &[0x21, 0x22]),                                     // from u16
            (25, &[0x23, 0x24]),                                     // to u16
            (27, &[0x31, 0x32, 0x33, 0x34]),                         // sku u32
            (31, &[0x41, 0x42, 0x43, 0x44]),                         // qty u32
        ],
    );
    let Message::Transfer(m) = decode(&bytes, b'T', 35) else {
        panic!()
    };
    assert_eq!(m.transfer_id.get(), 0x1112_1314_1516_1718);
    assert_eq!(m.from.get(), 0x2122);
    assert_eq!(m.to.get(), 0x2324);
    assert_eq!(m.sku.get(), 0x3132_3334);
    assert_eq!(m.qty.get(), 0x4142_4344);
    let built = stamp(Transfer::new(
        0x1112_1314_1516_1718,
        0x2122,
        0x2324,
        0x3132_3334,
        0x4142_4344,
    ));
    assert_eq!(built.as_bytes(), &bytes[..]);
    assert!(is_command(b'T'));
}

#[test]
fn recount() {
    let bytes = message_bytes(
        b'Q',
        &[
            (15, &[0x21, 0x22]),                                     // location u16
            (17, &[0x31, 0x32, 0x33, 0x34]),                         // sku u32
            (21, &[0x41, 0x42, 0x43, 0x44]),                         // on_hand u32
            (25, &[0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58]), // expected_version u64
        ],
    );
    let Message::Recount(m) = decode(&bytes, b'Q', 33) else {
        panic!()
    };
    assert_eq!(m.location.get(), 0x2122);
    assert_eq!(m.sku.get(), 0x3132_3334);
    assert_eq!(m.on_hand.get(), 0x4142_4344);
    assert_eq!(m.expected_version.get(), 0x5152_5354_5556_5758);
    let built = stamp(Recount::new(
        0x2122,
        0x3132_3334,
        0x4142_4344,
        0x5152_5354_5556_5758,
    ));
    assert_eq!(built.as_bytes(), &bytes[..]);
    assert!(is_command(b'Q'));
}

#[test]
fn adjust() {
    let bytes = message_bytes(
        b'P',
        &[
            (15, &[0x21, 0x22]),             // location u16
            (17, &[0x31, 0x32, 0x33, 0x34]), // sku u32
            (21, &[0xFF, 0xFF, 0xFF, 0xFE]), // delta i32 = -2
            (25, &[b'N']),                   // reason u8 = return
        ],
    );
    let Message::Adjust(m) = decode(&bytes, b'P', 26) else {
        panic!()
    };
    assert_eq!(m.location.get(), 0x2122);
    assert_eq!(m.sku.get(), 0x3132_3334);
    assert_eq!(m.delta.get(), -2);
    assert_eq!(m.reason, delta_reason::RETURN);
    let built = stamp(Adjust::new(0x2122, 0x3132_3334, -2, delta_reason::RETURN));
    assert_eq!(built.as_bytes(), &bytes[..]);
    assert!(is_command(b'P'));
}

#[test]
fn sku_directory() {
    let bytes = message_bytes(
        b'R',
        &[
            (15, &[0x31, 0x32, 0x33, 0x34]), // sku u32
            (19, b"WIDGET-9        "),       // symbol [16], right-padded
        ],
    );
    let Message::SkuDirectory(m) = decode(&bytes, b'R', 35) else {
        panic!()
    };
    assert_eq!(m.sku.get(), 0x3132_3334);
    assert_eq!(&m.symbol, b"WIDGET-9        ");
    assert_eq!(trim_ascii(&m.symbol), b"WIDGET-9");
    let built = stamp(SkuDirectory::new(
        0x3132_3334,
        pad_ascii("WIDGET-9").unwrap(),
    ));
    assert_eq!(built.as_bytes(), &bytes[..]);
    assert!(is_event(b'R') && !is_command(b'R'));
}

#[test]
fn location_directory() {
    let bytes = message_bytes(
        b'L',
        &[
            (15, &[0x21, 0x22]),       // location u16
            (17, b"Store 12 (north)"), // name [16], exactly full
        ],
    );
    let Message::LocationDirectory(m) = decode(&bytes, b'L', 33) else {
        panic!()
    };
    assert_eq!(m.location.get(), 0x2122);
    assert_eq!(&m.name, b"Store 12 (north)");
    let built = stamp(LocationDirectory::new(
        0x2122,
        pad_ascii("Store 12 (north)").unwrap(),
    ));
    assert_eq!(built.as_bytes(), &bytes[..]);
    assert!(is_event(b'L'));
}

#[test]
fn inventory_level() {
    let bytes = message_bytes(
        b'I',
        &[
            (15, &[0x21, 0x22]),             // location u16
            (17, &[0x31, 0x32, 0x33, 0x34]), // sku u32
            (21, &[0x41, 0x42, 0x43, 0x44]), // on_hand u32
            (25, &[0x51, 0x52, 0x53, 0x54]), // reserved u32
        ],
    );
    let Message::InventoryLevel(m) = decode(&bytes, b'I', 29) else {
        panic!()
    };
    assert_eq!(m.location.get(), 0x2122);
    assert_eq!(m.sku.get(), 0x3132_3334);
    assert_eq!(m.on_hand.get(), 0x4142_4344);
    assert_eq!(m.reserved.get(), 0x5152_5354);
    let built = stamp(InventoryLevel::new(
        0x2122,
        0x3132_3334,
        0x4142_4344,
        0x5152_5354,
    ));
    assert_eq!(built.as_bytes(), &bytes[..]);
    assert!(is_event(b'I'));
}

#[test]
fn on_hand_delta() {
    let bytes = message_bytes(
        b'D',
        &[
            (15, &[0x21, 0x22]),                                     // location u16
            (17, &[0x31, 0x32, 0x33, 0x34]),                         // sku u32
            (21, &[0xFE, 0xFD, 0xFC, 0xFC]),                         // delta i32 = -0x01020304
            (25, &[b'T']),                                           // reason u8 = transfer
            (26, &[0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68]), // cmd_seq u64
        ],
    );
    let Message::OnHandDelta(m) = decode(&bytes, b'D', 34) else {
        panic!()
    };
    assert_eq!(m.location.get(), 0x2122);
    assert_eq!(m.sku.get(), 0x3132_3334);
    assert_eq!(m.delta.get(), -0x0102_0304);
    assert_eq!(m.reason, delta_reason::TRANSFER);
    assert_eq!(m.cmd_seq.get(), 0x6162_6364_6566_6768);
    let built = stamp(OnHandDelta::new(
        0x2122,
        0x3132_3334,
        -0x0102_0304,
        delta_reason::TRANSFER,
        0x6162_6364_6566_6768,
    ));
    assert_eq!(built.as_bytes(), &bytes[..]);
    assert!(is_event(b'D'));
}

#[test]
fn hold_placed() {
    let bytes = message_bytes(
        b'H',
        &[
            (15, &[0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68]), // cmd_seq u64
            (23, &[0x21, 0x22]),                                     // location u16
            (25, &[0x31, 0x32, 0x33, 0x34]),                         // sku u32
            (29, &[0x41, 0x42, 0x43, 0x44]),                         // qty u32
            (33, &[0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78]), // expires_at u64 ns
        ],
    );
    let Message::HoldPlaced(m) = decode(&bytes, b'H', 41) else {
        panic!()
    };
    assert_eq!(m.cmd_seq.get(), 0x6162_6364_6566_6768);
    assert_eq!(m.location.get(), 0x2122);
    assert_eq!(m.sku.get(), 0x3132_3334);
    assert_eq!(m.qty.get(), 0x4142_4344);
    assert_eq!(m.expires_at_ns.get(), 0x7172_7374_7576_7778);
    let built = stamp(HoldPlaced::new(
        0x6162_6364_6566_6768,
        0x2122,
        0x3132_3334,
        0x4142_4344,
        0x7172_7374_7576_7778,
    ));
    assert_eq!(built.as_bytes(), &bytes[..]);
    assert!(is_event(b'H'));
}

#[test]
fn hold_ended() {
    let bytes = message_bytes(
        b'E',
        &[
            (15, &[0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68]), // cmd_seq u64
            (23, &[0x21, 0x22]),                                     // location u16
            (25, &[0x31, 0x32, 0x33, 0x34]),                         // sku u32
            (29, &[0x41, 0x42, 0x43, 0x44]),                         // qty u32
            (33, &[b'X']),                                           // outcome u8 = expired
        ],
    );
    let Message::HoldEnded(m) = decode(&bytes, b'E', 34) else {
        panic!()
    };
    assert_eq!(m.cmd_seq.get(), 0x6162_6364_6566_6768);
    assert_eq!(m.location.get(), 0x2122);
    assert_eq!(m.sku.get(), 0x3132_3334);
    assert_eq!(m.qty.get(), 0x4142_4344);
    assert_eq!(m.outcome, hold_outcome::EXPIRED);
    let built = stamp(HoldEnded::new(
        0x6162_6364_6566_6768,
        0x2122,
        0x3132_3334,
        0x4142_4344,
        hold_outcome::EXPIRED,
    ));
    assert_eq!(built.as_bytes(), &bytes[..]);
    assert!(is_event(b'E'));
}

#[test]
fn command_rejected() {
    let bytes = message_bytes(
        b'J',
        &[
            (15, &[0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68]), // cmd_seq u64
            (23, &[b'V']),                                           // reason u8
        ],
    );
    let Message::CommandRejected(m) = decode(&bytes, b'J', 24) else {
        panic!()
    };
    assert_eq!(m.cmd_seq.get(), 0x6162_6364_6566_6768);
    assert_eq!(m.reason, reject_reason::VERSION_CONFLICT);
    let built = stamp(CommandRejected::new(
        0x6162_6364_6566_6768,
        reject_reason::VERSION_CONFLICT,
    ));
    assert_eq!(built.as_bytes(), &bytes[..]);
    assert!(is_event(b'J'));
}

#[test]
fn system_event() {
    let bytes = message_bytes(b'S', &[(15, &[b'W'])]); // code u8
    let Message::SystemEvent(m) = decode(&bytes, b'S', 16) else {
        panic!()
    };
    assert_eq!(m.code, system_code::AUTHORITY_ONLINE);
    assert_eq!(
        stamp(SystemEvent::new(system_code::AUTHORITY_ONLINE)).as_bytes(),
        &bytes[..]
    );
    assert!(is_event(b'S'));
}

#[test]
fn gateway_reject() {
    let bytes = message_bytes(b'j', &[(15, &[b'W'])]); // reason u8
    let Message::GatewayReject(m) = decode(&bytes, b'j', 16) else {
        panic!()
    };
    assert_eq!(m.reason, reject_reason::WRONG_LENGTH);
    let built = stamp(GatewayReject::new(reject_reason::WRONG_LENGTH));
    assert_eq!(built.as_bytes(), &bytes[..]);
    assert!(is_event(b'j'));
}

#[test]
fn reason_and_code_constants_match_design() {
    use delta_reason as d;
    assert_eq!(
        [
            d::ORDER,
            d::MODIFY,
            d::CANCEL,
            d::HOLD_CONFIRMED,
            d::TRANSFER,
            d::ADJUST,
            d::RETURN,
            d::RECOUNT
        ],
        *b"OMXCTANQ"
    );
    use reject_reason as r;
    assert_eq!(
        [
            r::INSUFFICIENT,
            r::UNKNOWN_SKU,
            r::UNKNOWN_LOCATION,
            r::VERSION_CONFLICT,
            r::DUPLICATE_ID,
            r::NO_SUCH,
            r::INVALID_QUANTITY,
            r::NOT_PERMITTED,
            r::UNKNOWN_TYPE,
            r::WRONG_LENGTH
        ],
        *b"IULVDNZPTW"
    );
    use hold_outcome as h;
    assert_eq!([h::CONFIRMED, h::RELEASED, h::EXPIRED], *b"CRX");
    use system_code as s;
    assert_eq!(
        [s::START_OF_SESSION, s::END_OF_SESSION, s::AUTHORITY_ONLINE],
        *b"OCW"
    );
}

// ---- MoldUDP64 (§2) ---------------------------------------------------------

#[test]
fn mold_data_packet() {
    let bytes = layout(&[
        (0, b"TALLY1    "),                                      // session [10]
        (10, &[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]), // sequence u64
        (18, &[0x00, 0x03]),                                     // count u16
        (20, &[0x00, 0x03]),                                     // block 0 length
        (22, b"abc"),                                            // block 0
        (25, &[0x00, 0x01]),                                     // block 1 length
        (27, b"z"),                                              // block 1
        (28, &[0x00, 0x00]),                                     // block 2 length (empty)
    ]);
    let packet = MoldPacket::parse(&bytes).unwrap();
    assert_eq!(packet.session(), Session::from_str("TALLY1").unwrap());
    assert_eq!(packet.session().as_str(), "TALLY1");
    assert_eq!(packet.sequence(), 0x0102_0304_0506_0708);
    assert_eq!(packet.count(), 3);
    assert_eq!(packet.kind(), PacketKind::Data);
    assert_eq!(packet.next_seq(), 0x0102_0304_0506_070B);
    let messages: Vec<_> = packet.messages().collect();
    assert_eq!(
        messages,
        [
            (0x0102_0304_0506_0708, &b"abc"[..]),
            (0x0102_0304_0506_0709, &b"z"[..]),
            (0x0102_0304_0506_070A, &b""[..]),
        ]
    );

    let mut buf = [0u8; 64];
    let mut builder = PacketBuilder::new(
        &mut buf,
        mold::DEFAULT_PAYLOAD_LIMIT,
        Session::from_str("TALLY1").unwrap(),
        0x0102_0304_0506_0708,
    );
    builder.append(b"abc").unwrap();
    builder.append_with(1, |out| out[0] = b'z').unwrap();
    builder.append(b"").unwrap();
    assert_eq!(builder.next_seq(), 0x0102_0304_0506_070B);
    let len = builder.finish();
    assert_eq!(&buf[..len], &bytes[..]);
}

#[test]
fn mold_packet_with_stream_messages() {
    let order = message_bytes(
        b'O',
        &[
            (15, &[0, 0, 0, 0, 0, 0, 0, 9]),
            (23, &[0, 4]),
            (25, &[0, 0, 0, 7]),
            (29, &[0, 0, 0, 2]),
        ],
    );
    let event = message_bytes(b'S', &[(15, &[b'O'])]);
    let bytes = layout(&[
        (0, b"DAY       "),
        (10, &[0, 0, 0, 0, 0, 0, 0, 1]),
        (18, &[0x00, 0x02]),
        (20, &[0x00, 33]),
        (22, &order),
        (55, &[0x00, 16]),
        (57, &event),
    ]);
    let packet = MoldPacket::parse(&bytes).unwrap();
    let mut messages = packet.messages();
    let (seq, block) = messages.next().unwrap();
    assert_eq!(seq, 1);
    let Ok(Message::Order(o)) = Message::parse(block) else {
        panic!()
    };
    assert_eq!(
        (o.order_id.get(), o.location.get(), o.sku.get(), o.qty.get()),
        (9, 4, 7, 2)
    );
    let (seq, block) = messages.next().unwrap();
    assert_eq!(seq, 2);
    assert!(matches!(Message::parse(block), Ok(Message::SystemEvent(s)) if s.code == b'O'));
    assert!(messages.next().is_none());
}

#[test]
fn mold_heartbeat() {
    let bytes = layout(&[
        (0, b"TALLY1    "),
        (10, &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x30, 0x39]), // next sequence 12345
        (18, &[0x00, 0x00]),                                     // count 0
    ]);
    let packet = MoldPacket::parse(&bytes).unwrap();
    assert_eq!(packet.kind(), PacketKind::Heartbeat);
    assert_eq!(packet.sequence(), 12345);
    assert_eq!(packet.count(), 0);
    assert_eq!(packet.next_seq(), 12345);
    assert_eq!(packet.messages().count(), 0);
    assert_eq!(packet.session().as_str(), "TALLY1");
    let mut buf = [0u8; 20];
    let n = mold::write_heartbeat(&mut buf, Session::from_str("TALLY1").unwrap(), 12345);
    assert_eq!(&buf[..n], &bytes[..]);
    // An empty builder finishes as a heartbeat too.
    let mut buf = [0u8; 1400];
    let n =
        PacketBuilder::new(&mut buf, 1400, Session::from_str("TALLY1").unwrap(), 12345).finish();
    assert_eq!(&buf[..n], &bytes[..]);
}

#[test]
fn mold_end_of_session() {
    let bytes = layout(&[
        (0, b"TALLY1    "),
        (10, &[0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]), // next sequence 65536
        (18, &[0xFF, 0xFF]),                                     // count 0xFFFF
    ]);
    let packet = MoldPacket::parse(&bytes).unwrap();
    assert_eq!(packet.kind(), PacketKind::EndOfSession);
    assert_eq!(packet.sequence(), 65536);
    assert_eq!(packet.count(), 0);
    assert_eq!(packet.messages().count(), 0);
    let mut buf = [0u8; 32];
    let n = mold::write_end_of_session(&mut buf, Session::from_str("TALLY1").unwrap(), 65536);
    assert_eq!(&buf[..n], &bytes[..]);
}

#[test]
fn mold_re_request() {
    let bytes = layout(&[
        (0, b"TALLY1    "),                                      // session [10]
        (10, &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02]), // first sequence 258
        (18, &[0x00, 0x10]),                                     // count 16
    ]);
    let request = ReRequest::parse(&bytes).unwrap();
    assert_eq!(request.session(), Session::from_str("TALLY1").unwrap());
    assert_eq!(request.sequence.get(), 258);
    assert_eq!(request.count.get(), 16);
    assert_eq!(
        ReRequest::new(Session::from_str("TALLY1").unwrap(), 258, 16).as_bytes(),
        &bytes[..]
    );
}

// ---- SoupBinTCP (§4) --------------------------------------------------------

/// Runs a hand-written frame through the decoder and returns type + payload.
fn one_frame(bytes: &[u8]) -> Vec<u8> {
    let mut decoder = FrameDecoder::new(1024);
    assert_eq!(decoder.extend(bytes), bytes.len());
    let frame = decoder
        .next_frame()
        .unwrap()
        .expect("a complete frame")
        .to_vec();
    assert_eq!(decoder.next_frame(), Ok(None));
    assert_eq!(decoder.buffered(), 0);
    frame
}

#[test]
fn soup_login_request() {
    let bytes = layout(&[
        (0, &[0x00, 47]),              // length: type + 46
        (2, b"L"),                     // packet type
        (3, b"alice "),                // username [6]
        (9, b"s3cret    "),            // password [10]
        (19, b"TALLY1    "),           // requested session [10]
        (29, b"                  42"), // requested sequence [20], right-aligned
    ]);
    let frame = one_frame(&bytes);
    let ClientPacket::LoginRequest {
        username,
        password,
        session,
        requested_seq,
        heartbeat_timeout_ms,
    } = ClientPacket::parse(&frame).unwrap()
    else {
        panic!("not a login request")
    };
    assert_eq!(username, b"alice ");
    assert_eq!(password, b"s3cret    ");
    assert_eq!(session.as_str(), "TALLY1");
    assert_eq!(requested_seq, 42);
    assert_eq!(heartbeat_timeout_ms, None, "4.0 has no heartbeat timeout");
    let mut buf = [0u8; 64];
    let n = soup::write_login_request(&mut buf, "alice", "s3cret", session, 42).unwrap();
    assert_eq!(&buf[..n], &bytes[..]);
    assert_eq!(soup::LOGIN_REQUEST_PAYLOAD, 46);
}

#[test]
fn soup_4_1_login_request_with_heartbeat_timeout() {
    let bytes = layout(&[
        (0, &[0x00, 52]),              // length: type + 51
        (2, b"L"),                     // packet type
        (3, b"alice "),                // username [6]
        (9, b"s3cret    "),            // password [10]
        (19, b"TALLY1    "),           // requested session [10]
        (29, b"                  42"), // requested sequence [20], right-aligned
        (49, b" 5000"),                // requested heartbeat timeout [5], ms
    ]);
    let frame = one_frame(&bytes);
    let ClientPacket::LoginRequest {
        username,
        requested_seq,
        heartbeat_timeout_ms,
        session,
        ..
    } = ClientPacket::parse(&frame).unwrap()
    else {
        panic!("not a login request")
    };
    assert_eq!(username, b"alice ");
    assert_eq!(requested_seq, 42);
    assert_eq!(heartbeat_timeout_ms, Some(5000));
    let mut buf = [0u8; 64];
    let n = soup::write_login_request_v41(&mut buf, "alice", "s3cret", session, 42, 5000).unwrap();
    assert_eq!(&buf[..n], &bytes[..]);
    assert_eq!(soup::LOGIN_REQUEST_PAYLOAD_V41, 51);
    // A blank or zero timeout leaves it to the server.
    for field in [b"     ", b"    0", b"00000"] {
        let mut frame = frame.clone();
        frame[47..52].copy_from_slice(field);
        assert!(matches!(
            ClientPacket::parse(&frame),
            Ok(ClientPacket::LoginRequest {
                heartbeat_timeout_ms: Some(0),
                ..
            })
        ));
    }
    // Not a number: rejected like a bad sequence number.
    let mut bad = frame.clone();
    bad[47..52].copy_from_slice(b"  x12");
    assert_eq!(ClientPacket::parse(&bad), Err(SoupError::BadNumber));
}

#[test]
fn soup_login_request_blank_sequence_and_session() {
    let bytes = layout(&[
        (0, &[0x00, 47]),
        (2, b"L"),
        (3, b"bob   "),
        (9, b"pw        "),
        (19, b"          "),           // blank session: the current one
        (29, b"                    "), // blank sequence = 0
    ]);
    let frame = one_frame(&bytes);
    let Ok(ClientPacket::LoginRequest {
        session,
        requested_seq,
        ..
    }) = ClientPacket::parse(&frame)
    else {
        panic!()
    };
    assert!(session.is_blank());
    assert_eq!(session, Session::BLANK);
    assert_eq!(requested_seq, 0);
}

#[test]
fn soup_unsequenced() {
    let order = message_bytes(
        b'O',
        &[
            (15, &[0, 0, 0, 0, 0, 0, 0, 1]),
            (23, &[0, 0]),
            (25, &[0, 0, 0, 5]),
            (29, &[0, 0, 0, 1]),
        ],
    );
    let bytes = layout(&[(0, &[0x00, 34]), (2, b"U"), (3, &order)]);
    let frame = one_frame(&bytes);
    assert_eq!(
        ClientPacket::parse(&frame),
        Ok(ClientPacket::Unsequenced(&order[..]))
    );
    let mut buf = [0u8; 64];
    let n = soup::write_unsequenced(&mut buf, &order).unwrap();
    assert_eq!(&buf[..n], &bytes[..]);
}

#[test]
fn soup_client_heartbeat_and_logout() {
    let heartbeat = [0x00, 0x01, b'R'];
    assert_eq!(
        ClientPacket::parse(&one_frame(&heartbeat)),
        Ok(ClientPacket::Heartbeat)
    );
    let mut buf = [0u8; 8];
    let n = soup::write_client_heartbeat(&mut buf).unwrap();
    assert_eq!(&buf[..n], &heartbeat);

    let logout = [0x00, 0x01, b'O'];
    assert_eq!(
        ClientPacket::parse(&one_frame(&logout)),
        Ok(ClientPacket::Logout)
    );
    let n = soup::write_logout(&mut buf).unwrap();
    assert_eq!(&buf[..n], &logout);
}

#[test]
fn soup_login_accepted() {
    let bytes = layout(&[
        (0, &[0x00, 31]),              // length: type + 30
        (2, b"A"),                     // packet type
        (3, b"TALLY1    "),            // session [10]
        (13, b"             1234567"), // next sequence [20], right-aligned
    ]);
    let frame = one_frame(&bytes);
    assert_eq!(
        ServerPacket::parse(&frame),
        Ok(ServerPacket::LoginAccepted {
            session: Session::from_str("TALLY1").unwrap(),
            next_seq: 1_234_567
        })
    );
    let mut buf = [0u8; 64];
    let n = soup::write_login_accepted(&mut buf, Session::from_str("TALLY1").unwrap(), 1_234_567)
        .unwrap();
    assert_eq!(&buf[..n], &bytes[..]);
}

#[test]
fn soup_login_rejected() {
    for (reason, bytes) in [
        (soup::login_reject::NOT_AUTHORIZED, [0x00, 0x02, b'J', b'A']),
        (
            soup::login_reject::SESSION_UNAVAILABLE,
            [0x00, 0x02, b'J', b'S'],
        ),
    ] {
        assert_eq!(
            ServerPacket::parse(&one_frame(&bytes)),
            Ok(ServerPacket::LoginRejected { reason })
        );
        let mut buf = [0u8; 8];
        let n = soup::write_login_rejected(&mut buf, reason).unwrap();
        assert_eq!(&buf[..n], &bytes);
    }
}

#[test]
fn soup_sequenced_with_acks() {
    let accepted = layout(&[
        (0, b"k"),                                               // type
        (1, &[0x00, 0x00, 0x00, 0x07]),                          // client_seq u32
        (5, &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00]),  // stream_seq u64
        (13, &[0x17, 0x2B, 0x3C, 0x4D, 0x5E, 0x6F, 0x70, 0x81]), // timestamp u64 ns
    ]);
    let bytes = layout(&[(0, &[0x00, 22]), (2, b"S"), (3, &accepted)]);
    let frame = one_frame(&bytes);
    let Ok(ServerPacket::Sequenced(payload)) = ServerPacket::parse(&frame) else {
        panic!()
    };
    let Ok(Ack::Accepted(ack)) = Ack::parse(payload) else {
        panic!()
    };
    assert_eq!(ack.msg_type, b'k');
    assert_eq!(ack.client_seq.get(), 7);
    assert_eq!(ack.stream_seq.get(), 256);
    assert_eq!(ack.timestamp_ns.get(), 0x172B_3C4D_5E6F_7081);
    assert_eq!(Ack::parse(payload).unwrap().client_seq(), 7);
    assert_eq!(Ack::parse(payload).unwrap().stream_seq(), 256);
    let built = Accepted::new(7, 256, 0x172B_3C4D_5E6F_7081);
    assert_eq!(built.as_bytes(), &accepted[..]);
    let mut buf = [0u8; 64];
    let n = soup::write_sequenced(&mut buf, built.as_bytes()).unwrap();
    assert_eq!(&buf[..n], &bytes[..]);

    let rejected = layout(&[
        (0, b"j"),                                              // type
        (1, &[0x00, 0x00, 0x01, 0x02]),                         // client_seq u32
        (5, &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x01]), // stream_seq u64 of the `j`
        (13, b"P"),                                             // reason u8
    ]);
    let bytes = layout(&[(0, &[0x00, 15]), (2, b"S"), (3, &rejected)]);
    let frame = one_frame(&bytes);
    let Ok(ServerPacket::Sequenced(payload)) = ServerPacket::parse(&frame) else {
        panic!()
    };
    let Ok(Ack::Rejected(ack)) = Ack::parse(payload) else {
        panic!()
    };
    assert_eq!(ack.msg_type, b'j');
    assert_eq!(ack.client_seq.get(), 258);
    assert_eq!(ack.stream_seq.get(), 513);
    assert_eq!(ack.reason, reject_reason::NOT_PERMITTED);
    let built = Rejected::new(258, 513, reject_reason::NOT_PERMITTED);
    assert_eq!(built.as_bytes(), &rejected[..]);
    let n = soup::write_sequenced(&mut buf, built.as_bytes()).unwrap();
    assert_eq!(&buf[..n], &bytes[..]);
}

#[test]
fn soup_server_heartbeat_end_of_session_debug() {
    let mut buf = [0u8; 64];
    let heartbeat = [0x00, 0x01, b'H'];
    assert_eq!(
        ServerPacket::parse(&one_frame(&heartbeat)),
        Ok(ServerPacket::Heartbeat)
    );
    let n = soup::write_server_heartbeat(&mut buf).unwrap();
    assert_eq!(&buf[..n], &heartbeat);

    let end = [0x00, 0x01, b'Z'];
    assert_eq!(
        ServerPacket::parse(&one_frame(&end)),
        Ok(ServerPacket::EndOfSession)
    );
    let n = soup::write_end_of_session(&mut buf).unwrap();
    assert_eq!(&buf[..n], &end);

    let debug = layout(&[(0, &[0x00, 0x0A]), (2, b"+"), (3, b"seq skip!")]);
    assert_eq!(
        ServerPacket::parse(&one_frame(&debug)),
        Ok(ServerPacket::Debug(b"seq skip!"))
    );
    let n = soup::write_debug(&mut buf, b"seq skip!").unwrap();
    assert_eq!(&buf[..n], &debug[..]);
}
