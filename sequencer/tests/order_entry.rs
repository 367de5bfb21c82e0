//! Order entry against the real `tally-sequencer` binary: logins, acks,
//! gateway rejects recorded on the stream, protocol errors, exactly-once
//! resubmission after a cut connection.

mod support;

use std::time::Duration;

use support::*;
use tally_wire::{reject_reason, Ack, CancelOrder, Message, Order, Recount};

const LONG: Duration = Duration::from_secs(20);

fn order(client_seq: u32, order_id: u64) -> Order {
    Order::new(order_id, 1, 42, 3).with_client_seq(client_seq)
}

fn ack(reply: Option<Reply>) -> (u32, u64, Option<u8>) {
    match reply {
        Some(Reply::Sequenced(payload)) => match Ack::parse(&payload).expect("an ack") {
            Ack::Accepted(a) => (a.client_seq.get(), a.stream_seq.get(), None),
            Ack::Rejected(r) => (r.client_seq.get(), r.stream_seq.get(), Some(r.reason)),
        },
        other => panic!("expected an ack, got {other:?}"),
    }
}

#[test]
fn logins_are_accepted_or_rejected_with_the_right_reason() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(1, dir.path());
    let _appliance = Appliance::start(&setup);

    let mut client = SoupClient::connect(setup.gateway);
    client.login("pos1", "wrong", "", 0);
    assert_eq!(client.recv(LONG), Some(Reply::LoginRejected(b'A')));
    assert!(client.closed_within(LONG), "closed after a rejected login");

    let mut client = SoupClient::connect(setup.gateway);
    client.login("nobody", POS_PASSWORD, "", 0);
    assert_eq!(client.recv(LONG), Some(Reply::LoginRejected(b'A')));

    let mut client = SoupClient::connect(setup.gateway);
    client.login("pos1", POS_PASSWORD, "OTHERDAY", 0);
    assert_eq!(client.recv(LONG), Some(Reply::LoginRejected(b'S')));

    let mut client = SoupClient::connect(setup.gateway);
    client.login("read1", READER_PASSWORD, "", 0);
    assert_eq!(
        client.recv(LONG),
        Some(Reply::LoginRejected(b'A')),
        "a reader may not use the gateway"
    );

    let mut client = SoupClient::connect(setup.gateway);
    client.login("pos1", POS_PASSWORD, &setup.session, 0);
    match client.recv(LONG) {
        Some(Reply::LoginAccepted { session, next_seq }) => {
            assert_eq!(session, setup.session);
            assert_eq!(next_seq, 1);
        }
        other => panic!("expected login accepted, got {other:?}"),
    }
}

#[test]
fn an_order_is_acked_and_appears_on_the_stream_stamped() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(2, dir.path());
    let mut stream = StreamReader::join(&setup);
    let _appliance = Appliance::start(&setup);

    let mut pos = SoupClient::connect(setup.gateway);
    assert_eq!(pos.login_ok("pos1", POS_PASSWORD), 1);
    let sent = order(1, 77);
    pos.send(sent.as_bytes());
    let (client_seq, stream_seq, reject) = ack(pos.recv(LONG));
    assert_eq!((client_seq, reject), (1, None));
    assert!(stream_seq >= 2, "seq 1 is the start-of-session event");

    assert!(
        stream.read_until(LONG, |s| s.next_seq > stream_seq),
        "order reached the stream"
    );
    let (_, bytes) = &stream.messages[(stream_seq - 1) as usize];
    let Message::Order(on_stream) = Message::parse(bytes).unwrap() else {
        panic!("expected an order at {stream_seq}");
    };
    assert_eq!(
        on_stream.header.origin.get(),
        1,
        "origin stamped from the login"
    );
    assert_eq!(on_stream.header.client_seq.get(), 1);
    assert!(
        on_stream.header.timestamp_ns.get() > 1_600_000_000_000_000_000,
        "timestamp stamped"
    );
    assert_eq!(on_stream.order_id.get(), 77);
    assert_eq!(on_stream.sku.get(), 42);
    assert_eq!(on_stream.qty.get(), 3);
    // The first message of a new session is the appliance's start-of-session.
    match Message::parse(&stream.messages[0].1).unwrap() {
        Message::SystemEvent(event) => assert_eq!(event.code, b'O'),
        other => panic!("expected S(O), got {other:?}"),
    }
}

#[test]
fn a_pos_recount_is_answered_j_and_recorded_on_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(3, dir.path());
    let mut stream = StreamReader::join(&setup);
    let _appliance = Appliance::start(&setup);

    let mut pos = SoupClient::connect(setup.gateway);
    pos.login_ok("pos1", POS_PASSWORD);
    pos.send(Recount::new(1, 42, 10, 0).with_client_seq(1).as_bytes());
    let (client_seq, stream_seq, reject) = ack(pos.recv(LONG));
    assert_eq!(client_seq, 1);
    assert_eq!(reject, Some(reject_reason::NOT_PERMITTED));

    // Unknown type and wrong length: recorded too.
    pos.send(&[b'?', 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(ack(pos.recv(LONG)).2, Some(reject_reason::UNKNOWN_TYPE));
    let mut short = CancelOrder::new(5).with_client_seq(3).as_bytes().to_vec();
    short.pop();
    pos.send(&short);
    assert_eq!(ack(pos.recv(LONG)).2, Some(reject_reason::WRONG_LENGTH));

    assert!(stream.read_until(LONG, |s| s.next_seq > stream_seq));
    let (_, bytes) = &stream.messages[(stream_seq - 1) as usize];
    let Message::GatewayReject(reject) = Message::parse(bytes).unwrap() else {
        panic!("expected j at {stream_seq}");
    };
    assert_eq!(reject.header.origin.get(), 1);
    assert_eq!(reject.header.client_seq.get(), 1);
    assert_eq!(reject.reason, reject_reason::NOT_PERMITTED);
}

#[test]
fn protocol_errors_close_only_that_connection_and_consume_no_number() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(4, dir.path());
    let mut stream = StreamReader::join(&setup);
    let _appliance = Appliance::start(&setup);

    let mut pos = SoupClient::connect(setup.gateway);
    pos.login_ok("pos1", POS_PASSWORD);
    pos.send(order(1, 1).as_bytes());
    let (_, first_seq, _) = ack(pos.recv(LONG));

    // Garbage: an unknown packet type.
    let mut bad = SoupClient::connect(setup.gateway);
    bad.send_raw(&[0, 3, b'Q', 1, 2]);
    assert!(matches!(bad.recv(LONG), Some(Reply::Debug(_))));
    assert!(bad.closed_within(LONG));
    // Data before login.
    let mut bad = SoupClient::connect(setup.gateway);
    bad.send(order(1, 2).as_bytes());
    assert!(matches!(bad.recv(LONG), Some(Reply::Debug(_))));
    assert!(bad.closed_within(LONG));
    // An oversize frame.
    let mut bad = SoupClient::connect(setup.gateway);
    let mut frame = vec![0xFF, 0xF0, b'U'];
    frame.extend(std::iter::repeat_n(0u8, 1000));
    bad.send_raw(&frame);
    assert!(matches!(bad.recv(LONG), Some(Reply::Debug(_))));
    assert!(bad.closed_within(LONG));
    // A second login on a logged-in session (the ops client).
    let mut ops = SoupClient::connect(setup.gateway);
    ops.login_ok("ops1", OPS_PASSWORD);
    ops.login("ops1", OPS_PASSWORD, "", 0);
    assert!(matches!(ops.recv(LONG), Some(Reply::Debug(_))));
    assert!(ops.closed_within(LONG));
    // A client_seq that skips ahead.
    pos.send(order(5, 3).as_bytes());
    assert!(matches!(pos.recv(LONG), Some(Reply::Debug(_))));
    assert!(pos.closed_within(LONG));

    // The good client carries on, and its next order takes the next number.
    let mut pos = SoupClient::connect(setup.gateway);
    assert_eq!(pos.login_ok("pos1", POS_PASSWORD), 2);
    pos.send(order(2, 4).as_bytes());
    let (_, second_seq, _) = ack(pos.recv(LONG));
    assert_eq!(
        second_seq,
        first_seq + 1,
        "nothing in between was sequenced"
    );
    assert!(stream.read_until(LONG, |s| s.next_seq > second_seq));
    assert_eq!(stream.messages.len() as u64, second_seq);
}

#[test]
fn a_resent_stream_after_a_cut_holds_every_command_exactly_once() {
    const TOTAL: u32 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(5, dir.path());
    let mut stream = StreamReader::join(&setup);
    let _appliance = Appliance::start(&setup);

    let mut pos = SoupClient::connect(setup.gateway);
    assert_eq!(pos.login_ok("pos1", POS_PASSWORD), 1);
    // Send the first 6000 and drop the connection without reading acks.
    for client_seq in 1..=6000 {
        pos.queue(order(client_seq, u64::from(client_seq)).as_bytes());
    }
    pos.flush();
    drop(pos);

    // Reconnect: Login Accepted says where to resume; resend from there.
    let mut pos = SoupClient::connect(setup.gateway);
    let next = pos.login_ok("pos1", POS_PASSWORD) as u32;
    assert!((1..=6001).contains(&next), "next {next}");
    // Resend an overlap on purpose: those are duplicates and must be dropped.
    let resend_from = next.saturating_sub(50).max(1);
    for client_seq in resend_from..=TOTAL {
        pos.queue(order(client_seq, u64::from(client_seq)).as_bytes());
    }
    pos.flush();
    let mut acked = next - 1;
    while acked < TOTAL {
        let (client_seq, _, reject) = ack(pos.recv(LONG));
        assert_eq!(reject, None);
        assert_eq!(client_seq, acked + 1, "acks in order, one per command");
        acked = client_seq;
    }
    assert!(stream.read_until(
        LONG,
        |s| s.messages.iter().filter(|(_, m)| m[0] == b'O').count() as u32 >= TOTAL
    ));
    let mut seen: Vec<u32> = stream
        .messages
        .iter()
        .filter(|(_, m)| m[0] == b'O')
        .map(|(_, m)| u32::from_be_bytes([m[3], m[4], m[5], m[6]]))
        .collect();
    assert_eq!(seen.len() as u32, TOTAL, "every command exactly once");
    let in_order = seen.clone();
    seen.sort_unstable();
    assert_eq!(seen, in_order, "in client order");
    assert_eq!(seen, (1..=TOTAL).collect::<Vec<_>>());
}
