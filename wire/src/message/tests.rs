use super::*;

#[test]
fn sizes_match_design() {
    let table: [(u8, usize); 19] = [
        (b'O', 33),
        (b'M', 27),
        (b'X', 23),
        (b'V', 37),
        (b'C', 23),
        (b'K', 23),
        (b'T', 35),
        (b'Q', 33),
        (b'P', 26),
        (b'R', 35),
        (b'L', 33),
        (b'I', 29),
        (b'D', 34),
        (b'H', 41),
        (b'E', 34),
        (b'J', 24),
        (b'S', 16),
        (b'j', 16),
        // Ours (docs/protocol.md, "Additions").
        (b'N', 36),
    ];
    for (msg_type, size) in table {
        assert_eq!(
            message_size(msg_type),
            Some(size),
            "type {}",
            msg_type as char
        );
        assert!(is_command(msg_type) ^ is_event(msg_type));
    }
    let known = (0..=u8::MAX).filter(|&t| message_size(t).is_some()).count();
    assert_eq!(known, table.len());
    let largest = (0..=u8::MAX).filter_map(message_size).max();
    assert_eq!(largest, Some(MAX_MESSAGE_SIZE));
    assert_eq!(Header::SIZE, 15);
}

#[test]
fn with_header_keeps_the_type() {
    let header = Header {
        msg_type: b'Z',
        origin: 7.into(),
        client_seq: 8.into(),
        timestamp_ns: 9.into(),
    };
    let order = Order::new(1, 2, 3, 4).with_header(header);
    assert_eq!(order.header.msg_type, b'O');
    assert_eq!(order.header.origin.get(), 7);
    assert_eq!(order.header.client_seq.get(), 8);
    assert_eq!(order.header.timestamp_ns.get(), 9);
    let fresh = Order::new(1, 2, 3, 4);
    assert_eq!(fresh.header, Header::new(b'O'));
}
