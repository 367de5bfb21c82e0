//! The order-entry client against the whole appliance, in-process, over
//! real sockets: 10 000 pipelined commands acked once each in order; a
//! connection cut mid-stream and an appliance restart mid-stream, after
//! which exactly the unsequenced commands are resent (the stream holds each
//! command once); window back-pressure; login rejection; gateway rejects
//! surfaced as `j` acks; no allocation on the client's thread while it
//! sends and takes acks.
//!
//! Each test has its own ports, multicast group (239.255.102.N, see
//! `testkit`) and journal directory; every wait has a deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use tally_client::client::{Ack, ClientError, ClientEvent, OrderEntryClient};
use tally_client::consumer::monotonic_ns;
use tally_demo::{read_stream, send_all, ApplianceSpec};
use tally_runtime::alloc_count::{
    arm_current_thread, armed_allocations, counting, disarm_current_thread,
};
use tally_runtime::counters::CounterReader;
use tally_wire::{reject_reason, Message, Order, Transfer};

const LONG: Duration = Duration::from_secs(60);

#[global_allocator]
static ALLOCATOR: tally_runtime::alloc_count::CountingAllocator =
    tally_runtime::alloc_count::CountingAllocator;

fn order(order_id: u64) -> Order {
    Order::new(order_id, 1, 9, 1)
}

/// Orders of `origin` on the stream, as (client_seq, order_id), in stream
/// order, read by a fresh consumer from seq 1 up to `last_seq`.
fn orders_on_stream(spec: &ApplianceSpec, origin: u16, last_seq: u64) -> Vec<(u32, u64)> {
    read_stream(&spec.consumer_config(), last_seq, LONG)
        .iter()
        .filter_map(|(_, bytes)| match Message::parse(bytes).unwrap() {
            Message::Order(o) if o.header.origin.get() == origin => {
                Some((o.header.client_seq.get(), o.order_id.get()))
            }
            _ => None,
        })
        .collect()
}

/// The gateway counter `name` of the appliance journaling in `dir`.
fn gateway_counter(dir: &Path, name: &str) -> u64 {
    let reader = CounterReader::open(&dir.join("tally-sequencer.counters")).unwrap();
    let value = reader.read().find(|(n, _)| *n == name).map(|(_, v)| v);
    value.unwrap_or_else(|| panic!("no counter {name}"))
}

/// Checks acks are 1..=n in client_seq order with increasing stream seqs.
fn assert_acks_in_order(acks: &[Ack], first: u32, count: u32) {
    assert_eq!(acks.len(), count as usize);
    for (index, ack) in acks.iter().enumerate() {
        assert_eq!(ack.client_seq, first + index as u32, "in order, once each");
        assert_eq!(ack.reject, None);
    }
    assert!(acks.windows(2).all(|w| w[1].stream_seq > w[0].stream_seq));
}

#[test]
fn ten_thousand_pipelined_commands_are_acked_once_each_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, 20, dir.path());
    let _appliance = spec.start().unwrap();
    let mut client = OrderEntryClient::connect(spec.client_config("pos1"), LONG).unwrap();
    assert_eq!(client.next_client_seq(), 1);
    assert!(client.config().window >= 8_192);

    // Queue all 10 000 at once (within the window), write them in batches.
    let mut acks = Vec::new();
    let started = Instant::now();
    for i in 1..=10_000u64 {
        let client_seq = loop {
            match client.queue(order(i).as_bytes()) {
                Ok(client_seq) => break client_seq,
                Err(ClientError::WindowFull) => {
                    client.flush();
                    client.wait(LONG, |event| {
                        if let ClientEvent::Ack(ack) = event {
                            acks.push(ack)
                        }
                    });
                }
                Err(error) => panic!("{error}"),
            }
        };
        assert_eq!(u64::from(client_seq), i);
    }
    client.flush();
    client
        .wait_all_acked(LONG, |event| {
            if let ClientEvent::Ack(ack) = event {
                acks.push(ack)
            }
        })
        .unwrap();
    eprintln!("10 000 commands acked in {:?}", started.elapsed());
    assert_acks_in_order(&acks, 1, 10_000);
    assert_eq!(client.unacked(), 0);
    let stats = client.stats();
    assert_eq!(stats.acks_accepted, 10_000);
    assert_eq!((stats.resent, stats.disconnects), (0, 0));

    // The stream holds each once, in order.
    let last = acks.last().unwrap().stream_seq;
    let on_stream = orders_on_stream(&spec, 1, last);
    assert!(on_stream
        .iter()
        .copied()
        .eq((1..=10_000).map(|i| (i as u32, i))));
    client.logout();
    assert_eq!(client.closed(), Some(ClientError::LoggedOut));
}

/// Sends `total` orders; after `cut_after` acks, `cut` breaks the
/// connection (or the appliance). Returns the acks and the client.
fn send_with_a_cut(
    client: &mut OrderEntryClient,
    total: u64,
    cut_after: usize,
    mut cut: impl FnMut(&mut OrderEntryClient),
) -> (Vec<Ack>, u64) {
    let mut acks: Vec<Ack> = Vec::new();
    let mut unavailable = 0u64;
    let mut logins = 0;
    let mut next = 1u64;
    let mut cut_done = false;
    let deadline = Instant::now() + LONG;
    while next <= total || client.unacked() > 0 {
        assert!(Instant::now() < deadline, "stuck: {:?}", client.stats());
        while next <= total {
            match client.queue(order(next).as_bytes()) {
                Ok(client_seq) => {
                    assert_eq!(u64::from(client_seq), next);
                    next += 1;
                }
                Err(ClientError::WindowFull | ClientError::Disconnected) => break,
                Err(error) => panic!("{error}"),
            }
            if next % 64 == 0 {
                client.flush();
            }
        }
        client.flush();
        client.wait(Duration::from_millis(20), |event| match event {
            ClientEvent::Ack(ack) => acks.push(ack),
            ClientEvent::AckUnavailable { .. } => unavailable += 1,
            ClientEvent::LoggedIn { .. } => logins += 1,
            ClientEvent::Disconnected => {}
            ClientEvent::Closed(error) => panic!("closed: {error}"),
        });
        if !cut_done && acks.len() >= cut_after {
            cut(client);
            cut_done = true;
        }
    }
    assert!(cut_done);
    assert!(logins >= 1, "logged in again");
    (acks, unavailable)
}

#[test]
fn a_connection_cut_mid_stream_resends_exactly_the_unsequenced_commands() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, 21, dir.path());
    let _appliance = spec.start().unwrap();
    let mut client = OrderEntryClient::connect(spec.client_config("pos1"), LONG).unwrap();
    let (acks, unavailable) = send_with_a_cut(&mut client, 20_000, 5_000, |client| {
        let fd = client.connection_fd().expect("connected");
        // SAFETY: shutdown(2) on the client's own open socket; the client
        // notices the end of the stream and reconnects.
        assert_eq!(unsafe { libc::shutdown(fd, libc::SHUT_RDWR) }, 0);
    });
    let stats = client.stats();
    eprintln!("{stats:?}");
    assert_eq!(unavailable, 0, "the ack history covers the window");
    assert_acks_in_order(&acks, 1, 20_000);
    assert_eq!(stats.disconnects, 1);
    assert_eq!(stats.logins, 2);
    assert_eq!(stats.duplicate_acks + stats.unexpected_acks, 0);

    // Each command is on the stream exactly once, in order; the gateway
    // never saw a duplicate (nothing sequenced was resent).
    let on_stream = orders_on_stream(&spec, 1, acks.last().unwrap().stream_seq);
    assert!(on_stream
        .iter()
        .copied()
        .eq((1..=20_000).map(|i| (i as u32, i))));
    assert_eq!(gateway_counter(&spec.journal_dir, "duplicates_dropped"), 0);
    assert_eq!(gateway_counter(&spec.journal_dir, "protocol_errors"), 0);
}

#[test]
fn an_appliance_restart_mid_stream_resends_exactly_the_unsequenced_commands() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, 22, dir.path());
    let mut appliance = Some(spec.start().unwrap());
    let mut client = OrderEntryClient::connect(spec.client_config("pos1"), LONG).unwrap();
    let (acks, unavailable) = send_with_a_cut(&mut client, 20_000, 5_000, |_| {
        // Stop with commands in flight, start again on the same journal.
        appliance.take().unwrap().stop().unwrap();
        appliance = Some(spec.start().unwrap());
    });
    let stats = client.stats();
    eprintln!("{stats:?}");
    assert_eq!(unavailable, 0);
    assert_acks_in_order(&acks, 1, 20_000);
    assert!(stats.disconnects >= 1);
    assert_eq!(stats.duplicate_acks + stats.unexpected_acks, 0);
    let on_stream = orders_on_stream(&spec, 1, acks.last().unwrap().stream_seq);
    assert!(on_stream
        .iter()
        .copied()
        .eq((1..=20_000).map(|i| (i as u32, i))));
    // Counters restart with the appliance: these are the second run's.
    assert_eq!(gateway_counter(&spec.journal_dir, "duplicates_dropped"), 0);
    drop(appliance);
}

#[test]
fn a_full_window_is_back_pressure() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, 23, dir.path());
    let _appliance = spec.start().unwrap();
    let mut config = spec.client_config("pos2");
    config.window = 4;
    let mut client = OrderEntryClient::connect(config, LONG).unwrap();
    for i in 1..=4 {
        client.queue(order(i).as_bytes()).unwrap();
    }
    assert!(!client.has_room());
    assert_eq!(
        client.queue(order(5).as_bytes()),
        Err(ClientError::WindowFull)
    );
    assert_eq!(
        client.send(&[b'O'; 3]),
        Err(ClientError::InvalidMessage { len: 3 })
    );
    // send_blocking waits out the full window (polling writes the four).
    assert_eq!(
        client.send_blocking(order(5).as_bytes(), LONG, |_| {}),
        Ok(5)
    );
    client.wait_acked(5, LONG, |_| {}).unwrap();

    // Dropped while idle: send_blocking waits out the reconnect too.
    client.drop_connection();
    assert!(!client.is_ready());
    assert_eq!(
        client.send(order(6).as_bytes()),
        Err(ClientError::Disconnected)
    );
    let mut logged_in = Vec::new();
    let sent = client.send_blocking(order(6).as_bytes(), LONG, |event| {
        if let ClientEvent::LoggedIn {
            next_client_seq,
            resending,
        } = event
        {
            logged_in.push((next_client_seq, resending));
        }
    });
    assert_eq!(sent, Ok(6));
    assert_eq!(logged_in, [(6, 0)]);
    client.wait_acked(6, LONG, |_| {}).unwrap();
    assert_eq!(client.stats().disconnects, 1);
}

#[test]
fn a_wrong_password_is_rejected_and_the_client_stops() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, 24, dir.path());
    let _appliance = spec.start().unwrap();
    let mut config = spec.client_config("pos1");
    config.password = "wrong".to_string();
    let error = OrderEntryClient::connect(config, LONG).err();
    assert_eq!(error, Some(ClientError::LoginRejected(b'A')));
    // In words, with what to do.
    let text = ClientError::LoginRejected(b'A').to_string();
    assert!(
        text.contains("username or password is wrong") && text.contains("check --user"),
        "{text}"
    );
    // Nobody listening: the first connection never succeeds.
    let mut config = spec.client_config("pos1");
    config.gateway.set_port(spec.port_base + 4);
    let error = OrderEntryClient::connect(config, Duration::from_millis(300)).err();
    assert!(
        matches!(error, Some(ClientError::Unreachable(_))),
        "{error:?}"
    );
}

#[test]
fn a_command_outside_the_role_gets_a_j_ack_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, 25, dir.path());
    let _appliance = spec.start().unwrap();
    let mut client = OrderEntryClient::connect(spec.client_config("pos3"), LONG).unwrap();
    // A transfer is an ops command: a pos gets `j` reason P.
    let transfer = Transfer::new(1, 1, 2, 9, 1);
    let messages = [order(1).as_bytes().to_vec(), transfer.as_bytes().to_vec()];
    let acks = send_all(&mut client, messages, LONG).unwrap();
    assert_eq!(acks.len(), 2);
    assert_eq!(acks[0].reject, None);
    assert!(acks[0].timestamp_ns > 0);
    assert_eq!(acks[1].client_seq, 2);
    assert_eq!(acks[1].reject, Some(reject_reason::NOT_PERMITTED));
    assert_eq!(client.stats().acks_rejected, 1);
    // The `j` is on the stream at the seq its ack names.
    let stream = read_stream(&spec.consumer_config(), acks[1].stream_seq, LONG);
    let (_, bytes) = stream.last().unwrap();
    match Message::parse(bytes).unwrap() {
        Message::GatewayReject(j) => {
            assert_eq!(j.header.client_seq.get(), 2);
            assert_eq!(j.reason, reject_reason::NOT_PERMITTED);
        }
        other => panic!("expected j, got {other:?}"),
    }
}

#[test]
fn a_reconnecting_client_keeps_its_numbering_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, 26, dir.path());
    let _appliance = spec.start().unwrap();
    let mut first = OrderEntryClient::connect(spec.client_config("pos4"), LONG).unwrap();
    let acks = send_all(
        &mut first,
        (1..=10).map(|i| order(i).as_bytes().to_vec()),
        LONG,
    )
    .unwrap();
    assert_eq!(acks.last().unwrap().client_seq, 10);
    first.logout();
    // A new client (a restarted till) learns 11 from Login Accepted.
    let mut second = OrderEntryClient::connect(spec.client_config("pos4"), LONG).unwrap();
    assert_eq!(second.next_client_seq(), 11);
    assert_eq!(second.send(order(11).as_bytes()), Ok(11));
    second.wait_acked(11, LONG, |_| {}).unwrap();
}

#[test]
fn the_client_thread_does_not_allocate_while_it_sends_and_takes_acks() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, 27, dir.path());
    let _appliance = spec.start().unwrap();
    let mut client = OrderEntryClient::connect(spec.client_config("pos1"), LONG).unwrap();
    let mut acked = 0u64;
    let mut next = 1u64;
    let deadline = Instant::now() + LONG;
    let (_boxed, seen) = counting(|| Box::new(7u64));
    assert_eq!(seen, 1, "the counting allocator is installed");
    let before = armed_allocations();
    arm_current_thread();
    while acked < 20_000 && Instant::now() < deadline {
        while next <= 20_000 && client.has_room() {
            client.queue(order(next).as_bytes()).unwrap();
            next += 1;
        }
        client.poll(monotonic_ns(), |event| {
            if let ClientEvent::Ack(_) = event {
                acked += 1;
            }
        });
    }
    disarm_current_thread();
    let allocations = armed_allocations() - before;
    assert_eq!(acked, 20_000);
    assert_eq!(allocations, 0, "allocations on the client thread");
}
