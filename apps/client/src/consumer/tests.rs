use tally_runtime::net::MulticastConfig;
use tally_wire::mold::ReRequest;

use super::*;

fn new_core(capacity: usize) -> Core {
    Core {
        session: Session::from_str("TEST").unwrap(),
        session_known: true,
        retransmit_addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
        synced: true,
        next_seq: 1,
        newest_seq: 0,
        slots: vec![[0u8; SLOT_BYTES]; capacity].into_boxed_slice(),
        lens: vec![0u8; capacity].into_boxed_slice(),
        mask: capacity as u64 - 1,
        buffered: 0,
        overflow_max: 0,
        requests: vec![Request::default(); 4].into_boxed_slice(),
        requests_active: 0,
        watermark: 0,
        mode: RecoveryMode::Live,
        live_seen: true,
        end_seq: None,
        last_activity_ns: 0,
        stale: false,
        loss: None,
        stats: ConsumerStats::default(),
        stale_timeout_ns: 1_000,
        re_request_timeout_ns: 1_000,
        re_request_retries: 1,
        replay_gap_messages: 100,
        retention_messages: u64::MAX,
        replay_phase: ReplayPhase::Idle,
        replay_target: 0,
        replay_early_exit: false,
        replay_expected_seq: 0,
        replay_retry_at_ns: 0,
        replay_backoff_ns: REPLAY_BACKOFF_MIN_NS,
        replay_since_ns: 0,
        replay_last_recv_ns: 0,
        replay_last_sent_ns: 0,
        replay_broken: false,
    }
}

fn system(code: u8, seq: u64) -> Vec<u8> {
    tally_wire::SystemEvent::new(code)
        .with_client_seq(seq as u32)
        .as_bytes()
        .to_vec()
}

fn insert_all(core: &mut Core, seqs: &[u64], delivered: &mut Vec<u64>) {
    for &seq in seqs {
        let message = system(b'O', seq);
        core.insert(seq, &message, Source::Multicast, &mut |seq, m| {
            assert_eq!(u64::from(m.header().client_seq.get()), seq);
            delivered.push(seq)
        });
    }
}

#[test]
fn out_of_order_messages_are_delivered_in_order_once() {
    let mut core = new_core(8);
    let mut delivered = Vec::new();
    insert_all(&mut core, &[3, 2, 5, 3, 1, 4, 4, 2], &mut delivered);
    assert_eq!(delivered, [1, 2, 3, 4, 5]);
    assert_eq!(core.stats.duplicates_discarded, 3);
    assert_eq!(core.buffered, 0);
    assert_eq!(core.next_seq, 6);
}

#[test]
fn a_message_past_the_reorder_window_is_an_overflow() {
    let mut core = new_core(4);
    let mut delivered = Vec::new();
    insert_all(&mut core, &[2, 3, 4, 5, 6], &mut delivered);
    assert!(delivered.is_empty());
    assert_eq!(
        core.stats.reorder_overflows, 2,
        "5 and 6 do not fit behind 1"
    );
    assert_eq!(core.overflow_max, 6);
    insert_all(&mut core, &[1], &mut delivered);
    assert_eq!(delivered, [1, 2, 3, 4]);
    assert!(!core.caught_up(), "6 was dropped and is still ahead");
    insert_all(&mut core, &[5, 6], &mut delivered);
    assert_eq!(delivered, [1, 2, 3, 4, 5, 6]);
    core.note_newest(6);
    assert!(core.caught_up());
}

#[test]
fn an_undecodable_message_still_takes_its_number() {
    let mut core = new_core(8);
    let mut delivered = Vec::new();
    core.insert(2, &[b'?'; 70], Source::Multicast, &mut |s, _| {
        delivered.push(s)
    });
    insert_all(&mut core, &[1, 3], &mut delivered);
    assert_eq!(delivered, [1, 3]);
    assert_eq!(core.stats.undecodable_messages, 1);
    assert_eq!(core.next_seq, 4);
}

#[test]
fn recovered_messages_are_counted_by_source() {
    let mut core = new_core(8);
    let mut n = 0;
    let message = system(b'O', 0);
    core.insert(2, &message, Source::Retransmit, &mut |_, _| n += 1);
    core.insert(1, &message, Source::Replay, &mut |_, _| n += 1);
    core.insert(3, &message, Source::Multicast, &mut |_, _| n += 1);
    assert_eq!(n, 3);
    assert_eq!(core.stats.recovered_by_retransmit, 1);
    assert_eq!(core.stats.recovered_by_replay, 1);
}

/// A re-request socket and a stand-in retransmit server reading it.
fn request_sockets(core: &mut Core) -> (UdpSocketRing, std::net::UdpSocket) {
    let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let std::net::SocketAddr::V4(addr) = server.local_addr().unwrap() else {
        unreachable!()
    };
    core.retransmit_addr = addr;
    let socket = UdpSocketRing::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 4, 2048).unwrap();
    (socket, server)
}

/// The next request the stand-in server received: (first seq, count).
fn next_request(server: &std::net::UdpSocket) -> (u64, u16) {
    let mut buf = [0u8; 64];
    loop {
        match server.recv(&mut buf) {
            Ok(n) => {
                let request = ReRequest::parse(&buf[..n]).unwrap();
                assert_eq!(request.session().as_str(), "TEST");
                return (request.sequence.get(), request.count.get());
            }
            // io_uring task work of this thread's ring can interrupt it.
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => panic!("no request: {error}"),
        }
    }
}

fn buffer(core: &mut Core, seqs: impl IntoIterator<Item = u64>) {
    for seq in seqs {
        let message = system(b'O', seq);
        core.insert(seq, &message, Source::Multicast, &mut |_, _| {});
        core.note_newest(seq);
    }
}

#[test]
fn a_gap_is_re_requested_retried_on_timeout_then_left_to_the_replay_feed() {
    let mut core = new_core(64);
    let (mut socket, server) = request_sockets(&mut core);
    buffer(&mut core, [1, 2, 5, 6]);
    assert_eq!(core.next_seq, 3);
    core.maintain_live(0, &mut socket).unwrap();
    assert_eq!(next_request(&server), (3, 2));
    assert_eq!((core.stats.gaps_detected, core.requests_active), (1, 1));
    core.maintain_live(999, &mut socket).unwrap();
    assert_eq!(core.stats.re_requests_sent, 1, "not before the timeout");
    core.maintain_live(1_000, &mut socket).unwrap();
    assert_eq!(next_request(&server), (3, 2));
    assert_eq!(core.stats.re_request_timeouts, 1);
    core.maintain_live(2_000, &mut socket).unwrap();
    assert_eq!(core.mode, RecoveryMode::Replay, "retries spent");
    assert_eq!(core.stats.replay_for_unanswered, 1);
    assert_eq!(core.requests_active, 0);
    assert!(
        !core.replay_early_exit,
        "full catch-up after unanswered requests"
    );
}

#[test]
fn a_partial_answer_is_followed_at_once_by_a_request_for_the_rest() {
    let mut core = new_core(64);
    let (mut socket, server) = request_sockets(&mut core);
    buffer(&mut core, [1, 11]);
    core.maintain_live(0, &mut socket).unwrap();
    assert_eq!(next_request(&server), (2, 9));
    let mut delivered = Vec::new();
    for seq in 2..=4 {
        let message = system(b'O', seq);
        core.insert(seq, &message, Source::Retransmit, &mut |s, _| {
            delivered.push(s)
        });
    }
    assert_eq!(delivered, [2, 3, 4]);
    core.maintain_live(10, &mut socket).unwrap();
    assert_eq!(next_request(&server), (5, 6));
    assert_eq!(core.stats.gaps_detected, 1, "the same gap");
    assert_eq!(core.stats.re_request_timeouts, 0);
    for seq in 5..=10 {
        let message = system(b'O', seq);
        core.insert(seq, &message, Source::Retransmit, &mut |s, _| {
            delivered.push(s)
        });
    }
    core.maintain_live(20, &mut socket).unwrap();
    assert_eq!(core.requests_active, 0);
    assert_eq!(core.next_seq, 12);
    assert_eq!(core.stats.recovered_by_retransmit, 9);
}

#[test]
fn requests_in_flight_are_bounded() {
    let mut core = new_core(64);
    let (mut socket, server) = request_sockets(&mut core);
    // Holes at 1, 3, 5, 7, 9, 11; four request slots.
    buffer(&mut core, [2, 4, 6, 8, 10, 12]);
    core.maintain_live(0, &mut socket).unwrap();
    let first: Vec<_> = (0..4).map(|_| next_request(&server)).collect();
    assert_eq!(first, [(1, 1), (3, 1), (5, 1), (7, 1)]);
    assert_eq!(core.requests_active, 4);
    core.maintain_live(1, &mut socket).unwrap();
    assert_eq!(
        core.stats.re_requests_sent, 4,
        "no fifth while four are out"
    );
    let message = system(b'O', 1);
    core.insert(1, &message, Source::Retransmit, &mut |_, _| {});
    core.maintain_live(2, &mut socket).unwrap();
    assert_eq!(next_request(&server), (9, 1), "a slot freed: the next gap");
    assert_eq!(core.requests_active, 4);
}

#[test]
fn a_large_or_old_gap_goes_straight_to_the_replay_feed() {
    let mut core = new_core(1024);
    let (mut socket, _server) = request_sockets(&mut core);
    buffer(&mut core, [200]);
    core.maintain_live(0, &mut socket).unwrap();
    assert_eq!(core.mode, RecoveryMode::Replay);
    assert_eq!(core.stats.replay_for_large_gap, 1);
    assert_eq!(core.stats.re_requests_sent, 0);
    assert!(core.replay_early_exit);
    assert_eq!(core.replay_target, 200);
    // Once the replay delivered past what was newest, live takes over
    // even with later loss open (re-requests handle that).
    buffer(&mut core, 1..=200);
    buffer(&mut core, [205]);
    assert!(core.caught_up());

    let mut old = new_core(1024);
    let (mut socket, _server) = request_sockets(&mut old);
    old.retention_messages = 10;
    buffer(&mut old, 2..=50);
    old.maintain_live(0, &mut socket).unwrap();
    assert_eq!(old.stats.replay_for_retention, 1);
    assert_eq!(old.stats.re_requests_sent, 0);
}

#[test]
fn a_stream_ahead_of_the_reorder_buffer_goes_to_the_replay_feed() {
    let mut core = new_core(8);
    let (mut socket, _server) = request_sockets(&mut core);
    buffer(&mut core, [3, 20]);
    core.maintain_live(0, &mut socket).unwrap();
    assert_eq!(core.stats.replay_for_overflow, 1);
    assert!(!core.caught_up(), "20 was dropped");
    buffer(&mut core, 1..=20);
    assert!(core.caught_up());
}

proptest::proptest! {
    /// Whatever order, repetition and overflow the stream and the
    /// recovery paths produce, once every number has arrived at least
    /// once each is delivered exactly once, in order.
    #[test]
    fn any_arrival_order_delivers_each_message_once_in_order(
        arrivals in proptest::collection::vec((1u64..=200, 0u8..3), 0..600),
        capacity_log2 in 0u32..9,
    ) {
        let mut core = new_core(1 << capacity_log2);
        let mut delivered = Vec::new();
        let sources = [Source::Multicast, Source::Retransmit, Source::Replay];
        for (seq, source) in arrivals {
            let message = system(b'O', seq);
            core.insert(seq, &message, sources[usize::from(source)], &mut |s, m| {
                assert_eq!(u64::from(m.header().client_seq.get()), s);
                delivered.push(s)
            });
        }
        // The replay feed's in-order pass supplies whatever is missing.
        for seq in 1..=200 {
            let message = system(b'O', seq);
            core.insert(seq, &message, Source::Replay, &mut |s, _| delivered.push(s));
        }
        proptest::prop_assert!(delivered.iter().copied().eq(1..=200));
        proptest::prop_assert_eq!(core.buffered, 0);
        proptest::prop_assert_eq!(core.stats.messages_delivered, 200);
    }
}

#[test]
fn counters_are_published_under_their_names() {
    let mut names = vec!["other"];
    names.extend_from_slice(ConsumerCounters::NAMES);
    let file = tally_runtime::counters::CounterFile::in_memory(&names);
    let counters = ConsumerCounters::from_file(&file, 1);
    let multicast = MulticastConfig {
        group: Ipv4Addr::new(239, 255, 102, 250),
        port: 21_999,
        interface: Ipv4Addr::LOCALHOST,
        ttl: 0,
        loopback: true,
    };
    let config = ConsumerConfig::new(
        multicast,
        Session::from_str("TEST").unwrap(),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
        "127.0.0.1:1".parse().unwrap(),
        "read1",
        "readpass",
    );
    let mut consumer = StreamConsumer::new(&config).unwrap();
    consumer.core.stats.gaps_detected = 7;
    counters.publish(&consumer);
    assert_eq!(file.counter_by_name("consumer.next_seq").unwrap().get(), 1);
    assert_eq!(
        file.counter_by_name("consumer.gaps_detected")
            .unwrap()
            .get(),
        7
    );
    assert_eq!(file.counter_by_name("other").unwrap().get(), 0);
}

#[test]
fn staleness_follows_the_last_activity() {
    let mut core = new_core(8);
    core.last_activity_ns = 10_000;
    assert!(!core.is_stale(10_500));
    assert!(!core.is_stale(11_000));
    assert!(core.is_stale(11_001));
}
