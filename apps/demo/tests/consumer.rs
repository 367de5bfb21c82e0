//! The stream consumer against the whole appliance, in-process, over real
//! sockets: in-order exactly-once delivery under seeded loss (gap fill by
//! re-request), fallback to the replay feed when re-requests go unanswered
//! or the reorder buffer overflows, late join from seq 1 and from a
//! snapshot's seq, staleness when the appliance stops, end of session, and
//! no allocation on the consumer's thread while it recovers.
//!
//! Each test has its own ports, multicast group (239.255.102.N, see
//! `testkit`) and journal directory; every wait has a deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tally_client::client::OrderEntryClient;
use tally_client::consumer::{monotonic_ns, ConsumerConfig, RecoveryMode, StreamConsumer};
use tally_demo::{send_all, ApplianceSpec};
use tally_runtime::alloc_count::{
    arm_current_thread, armed_allocations, counting, disarm_current_thread,
};
use tally_wire::{Message, Order};

const LONG: Duration = Duration::from_secs(60);

#[global_allocator]
static ALLOCATOR: tally_runtime::alloc_count::CountingAllocator =
    tally_runtime::alloc_count::CountingAllocator;

/// Orders `first..first + count` (order_id = its index) as stream messages.
fn orders(first: u32, count: u32) -> impl Iterator<Item = Order> {
    (first..first + count).map(|i| Order::new(u64::from(i), 1, 9, 1))
}

/// Sends `count` orders as `username` and returns the last stream seq.
fn send_orders(spec: &ApplianceSpec, username: &str, first: u32, count: u32) -> u64 {
    let mut client = OrderEntryClient::connect(spec.client_config(username), LONG).unwrap();
    let messages = orders(first, count).map(|order| order.as_bytes().to_vec());
    let acks = send_all(&mut client, messages, LONG).unwrap();
    assert_eq!(acks.len(), count as usize);
    client.logout();
    acks.last().map_or(0, |ack| ack.stream_seq)
}

/// One delivered message: (seq, type, origin, client_seq, order_id or 0).
type Seen = (u64, u8, u16, u32, u64);

fn seen(seq: u64, message: Message<'_>) -> Seen {
    let header = message.header();
    let order_id = match message {
        Message::Order(order) => order.order_id.get(),
        _ => 0,
    };
    (
        seq,
        header.msg_type,
        header.origin.get(),
        header.client_seq.get(),
        order_id,
    )
}

/// Checks that `delivered` starts at `first`, has no gap or duplicate, and
/// holds pos1's orders `1..=orders` exactly once, in order.
fn assert_complete(delivered: &[Seen], first: u64, orders: u32) {
    for (index, entry) in delivered.iter().enumerate() {
        assert_eq!(entry.0, first + index as u64, "no gap, no duplicate");
    }
    let pos1: Vec<u32> = delivered
        .iter()
        .filter(|entry| entry.1 == b'O' && entry.2 == 1)
        .map(|entry| entry.3)
        .collect();
    assert_eq!(pos1.len(), orders as usize, "every order once");
    assert!(
        pos1.iter().copied().eq(1..=orders),
        "orders in client_seq order"
    );
}

/// Waits until the consumer follows live multicast (the late join from seq
/// 1 of a fresh stream ends at the first heartbeat).
fn wait_live(consumer: &mut StreamConsumer, delivered: &mut Vec<Seen>) {
    let live = consumer
        .run_until(
            LONG,
            |seq, message| delivered.push(seen(seq, message)),
            |c| c.mode() == RecoveryMode::Live && c.delivered_seq() >= 1,
        )
        .unwrap();
    assert!(live, "the consumer reaches live multicast");
}

/// Consumes while another thread sends `count` orders as pos1; returns what
/// was delivered once the last order's seq was.
fn consume_while_sending(
    spec: &ApplianceSpec,
    consumer: &mut StreamConsumer,
    delivered: &mut Vec<Seen>,
    count: u32,
) {
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let sender = {
        let spec = spec.clone();
        let target = Arc::clone(&target);
        thread::spawn(move || {
            let last = send_orders(&spec, "pos1", 1, count);
            target.store(last, Ordering::Release);
        })
    };
    let done = consumer
        .run_until(
            LONG,
            |seq, message| delivered.push(seen(seq, message)),
            |c| c.delivered_seq() >= target.load(Ordering::Acquire),
        )
        .unwrap();
    sender.join().unwrap();
    assert!(
        done,
        "delivered up to {} of {} ({:?})",
        consumer.delivered_seq(),
        target.load(Ordering::Acquire),
        consumer.stats()
    );
}

fn lossy_receiver_recovers_through_re_requests(id: u8, ratio: f64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, id, dir.path());
    let _appliance = spec.start().unwrap();
    let mut config = spec.consumer_config();
    config.loss = Some((seed, ratio));
    let mut consumer = StreamConsumer::new(&config).unwrap();
    let mut delivered = Vec::with_capacity(40_000);
    wait_live(&mut consumer, &mut delivered);

    consume_while_sending(&spec, &mut consumer, &mut delivered, 20_000);
    assert_complete(&delivered, 1, 20_000);
    let stats = consumer.stats();
    eprintln!("{ratio}: {stats:?}");
    assert!(
        stats.datagrams_dropped_by_loss_filter as f64 > 0.5 * ratio * stats.datagrams as f64,
        "the filter dropped about {ratio} of the datagrams: {stats:?}"
    );
    assert!(stats.gaps_detected > 0 && stats.re_requests_sent > 0);
    assert!(stats.recovered_by_retransmit > 0, "{stats:?}");
    assert_eq!(
        stats.messages_delivered,
        delivered.len() as u64,
        "every message counted once"
    );
}

#[test]
fn every_message_arrives_once_in_order_with_5_percent_loss() {
    lossy_receiver_recovers_through_re_requests(1, 0.05, 0x5eed_0001);
}

#[test]
fn every_message_arrives_once_in_order_with_20_percent_loss() {
    lossy_receiver_recovers_through_re_requests(2, 0.20, 0x5eed_0002);
}

#[test]
fn unanswered_re_requests_fall_back_to_the_replay_feed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, 3, dir.path());
    let _appliance = spec.start().unwrap();
    let mut config = spec.consumer_config();
    // Nobody listens there (port_base + 4 is unused by the address plan).
    config.retransmit.set_port(spec.port_base + 4);
    config.loss = Some((0x5eed_0003, 0.05));
    config.re_request_timeout_ns = 20_000_000;
    config.re_request_retries = 2;
    let mut consumer = StreamConsumer::new(&config).unwrap();
    let mut delivered = Vec::with_capacity(40_000);
    wait_live(&mut consumer, &mut delivered);

    consume_while_sending(&spec, &mut consumer, &mut delivered, 20_000);
    assert_complete(&delivered, 1, 20_000);
    let stats = consumer.stats();
    eprintln!("{stats:?}");
    assert!(stats.re_request_timeouts > 0);
    assert!(stats.replay_for_unanswered > 0, "{stats:?}");
    assert_eq!(stats.recovered_by_retransmit, 0);
    assert!(stats.recovered_by_replay > 0);
    // Back on multicast once caught up (a heartbeat at the latest).
    assert!(consumer
        .run_until(LONG, |_, _| {}, |c| c.mode() == RecoveryMode::Live)
        .unwrap());
    assert!(consumer.stats().replay_switchbacks >= stats.replay_recoveries());
}

#[test]
fn a_reorder_buffer_overflow_recovers_through_the_replay_feed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, 4, dir.path());
    let _appliance = spec.start().unwrap();
    let mut config = spec.consumer_config();
    config.loss = Some((0x5eed_0004, 0.2));
    config.reorder_capacity = 16;
    // Slow answers: the stream runs past 16 messages before a gap is filled.
    config.re_request_timeout_ns = 200_000_000;
    config.retransmit.set_port(spec.port_base + 4);
    let mut consumer = StreamConsumer::new(&config).unwrap();
    let mut delivered = Vec::with_capacity(40_000);
    wait_live(&mut consumer, &mut delivered);

    consume_while_sending(&spec, &mut consumer, &mut delivered, 20_000);
    assert_complete(&delivered, 1, 20_000);
    let stats = consumer.stats();
    eprintln!("{stats:?}");
    assert!(stats.reorder_overflows > 0);
    assert!(stats.replay_for_overflow > 0, "{stats:?}");
}

#[test]
fn a_late_joiner_replays_from_seq_1_then_follows_live_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, 5, dir.path());
    let _appliance = spec.start().unwrap();
    let history_end = send_orders(&spec, "pos1", 1, 50_000);
    assert!(history_end > 50_000);

    // Join from 1 while more orders arrive live.
    let mut consumer = StreamConsumer::new(&spec.consumer_config()).unwrap();
    assert_eq!(consumer.mode(), RecoveryMode::Replay);
    let mut delivered = Vec::with_capacity(80_000);
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let sender = {
        let spec = spec.clone();
        let target = Arc::clone(&target);
        thread::spawn(move || {
            let last = send_orders(&spec, "pos1", 50_001, 10_000);
            target.store(last, Ordering::Release);
        })
    };
    let done = consumer
        .run_until(
            LONG,
            |seq, message| delivered.push(seen(seq, message)),
            |c| {
                c.delivered_seq() >= target.load(Ordering::Acquire)
                    && c.mode() == RecoveryMode::Live
            },
        )
        .unwrap();
    sender.join().unwrap();
    assert!(done, "{:?}", consumer.stats());
    let stats = consumer.stats();
    eprintln!("{stats:?}");
    assert_eq!(stats.replay_for_late_join, 1);
    assert!(stats.replay_switchbacks >= 1);
    assert!(stats.recovered_by_replay >= history_end);

    // Live now: more orders come by multicast alone.
    let replayed = stats.recovered_by_replay;
    let last = {
        let target = send_orders(&spec, "pos1", 60_001, 2_000);
        assert!(consumer
            .run_until(
                LONG,
                |seq, message| delivered.push(seen(seq, message)),
                |c| c.delivered_seq() >= target,
            )
            .unwrap());
        target
    };
    assert_complete(&delivered, 1, 62_000);
    assert_eq!(delivered.last().unwrap().0, last);
    assert_eq!(
        consumer.stats().recovered_by_replay,
        replayed,
        "live by multicast"
    );
    assert_eq!(consumer.stats().replay_for_late_join, 1);

    // A consumer resuming from a snapshot's seq starts exactly there.
    let mut config = spec.consumer_config();
    config.start_seq = 25_001;
    let mut resumed = StreamConsumer::new(&config).unwrap();
    let mut from_snapshot = Vec::new();
    assert!(resumed
        .run_until(
            LONG,
            |seq, message| from_snapshot.push(seen(seq, message)),
            |c| c.delivered_seq() >= last && c.mode() == RecoveryMode::Live,
        )
        .unwrap());
    assert_eq!(from_snapshot.first().unwrap().0, 25_001);
    assert_eq!(&from_snapshot[..], &delivered[25_000..]);
}

#[test]
fn the_stream_goes_stale_when_the_appliance_stops_and_fresh_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, 6, dir.path());
    let appliance = spec.start().unwrap();
    let config = spec.consumer_config();
    assert_eq!(config.stale_timeout_ns, 600_000_000, "3 heartbeats");
    let mut consumer = StreamConsumer::new(&config).unwrap();
    let mut delivered = Vec::new();
    wait_live(&mut consumer, &mut delivered);
    let first_end = send_orders(&spec, "pos1", 1, 1_000);
    assert!(consumer
        .run_until(
            LONG,
            |s, m| delivered.push(seen(s, m)),
            |c| c.delivered_seq() >= first_end
        )
        .unwrap());
    // Heartbeats keep it fresh while idle.
    let idle_until = Instant::now() + Duration::from_millis(1_000);
    while Instant::now() < idle_until {
        consumer
            .wait(Duration::from_millis(50), |s, m| delivered.push(seen(s, m)))
            .unwrap();
        assert!(
            !consumer.is_stale(monotonic_ns()),
            "fresh while heartbeats come"
        );
    }
    assert_eq!(consumer.stats().stale_transitions, 0);
    assert_eq!(consumer.lag(), 0);

    appliance.stop().unwrap();
    assert!(consumer
        .run_until(
            LONG,
            |s, m| delivered.push(seen(s, m)),
            |c| c.is_stale(monotonic_ns())
        )
        .unwrap());
    let silent_ns = monotonic_ns() - consumer.last_activity_ns();
    assert!(silent_ns > 600_000_000, "stale only past the timeout");
    assert_eq!(consumer.stats().stale_transitions, 1);

    // The appliance comes back on the same journal: fresh again, and the
    // stream continues without a gap or duplicate.
    let appliance = spec.start().unwrap();
    assert!(consumer
        .run_until(
            LONG,
            |s, m| delivered.push(seen(s, m)),
            |c| !c.is_stale(monotonic_ns())
        )
        .unwrap());
    let second_end = send_orders(&spec, "pos1", 1_001, 1_000);
    assert!(consumer
        .run_until(
            LONG,
            |s, m| delivered.push(seen(s, m)),
            |c| c.delivered_seq() >= second_end
        )
        .unwrap());
    assert_complete(&delivered, 1, 2_000);
    assert_eq!(consumer.stats().stale_transitions, 1);

    // End of session is surfaced once everything before it was delivered.
    appliance.end_session_and_stop().unwrap();
    assert!(consumer
        .run_until(LONG, |s, m| delivered.push(seen(s, m)), |c| c.is_ended())
        .unwrap());
    let end = consumer.end_seq().unwrap();
    assert_eq!(consumer.next_seq(), end);
    let last = delivered.last().unwrap();
    assert_eq!(
        (last.0, last.1),
        (end - 1, b'S'),
        "the last message is the end-of-session event"
    );
}

#[test]
fn a_live_joiner_starts_with_the_first_packet_it_sees() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, 7, dir.path());
    let _appliance = spec.start().unwrap();
    let before = send_orders(&spec, "pos1", 1, 500);
    let mut config = spec.consumer_config();
    config.start_seq = 0;
    let mut consumer = StreamConsumer::new(&config).unwrap();
    assert_eq!(consumer.mode(), RecoveryMode::Live);
    // The first heartbeat tells it where the stream is.
    assert!(consumer
        .run_until(LONG, |_, _| {}, |c| c.next_seq() == before + 1)
        .unwrap());
    let mut delivered = Vec::new();
    let after = send_orders(&spec, "pos1", 501, 500);
    assert!(consumer
        .run_until(
            LONG,
            |s, m| delivered.push(seen(s, m)),
            |c| c.delivered_seq() >= after
        )
        .unwrap());
    assert_eq!(delivered.first().unwrap().0, before + 1);
    assert_eq!(delivered.len() as u64, after - before);
    assert_eq!(consumer.stats().replay_recoveries(), 0);
}

#[test]
fn the_consumer_thread_does_not_allocate_while_it_fills_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(102, 8, dir.path());
    let _appliance = spec.start().unwrap();
    let mut config: ConsumerConfig = spec.consumer_config();
    config.loss = Some((0x5eed_0008, 0.05));
    // Gap fill only (a replay fallback opens a connection, which allocates),
    // even if a loaded machine makes the kernel drop a long run of packets.
    config.re_request_timeout_ns = 20_000_000;
    config.re_request_retries = 1_000;
    config.replay_gap_messages = u64::MAX;
    config.reorder_capacity = 1 << 20;
    let mut consumer = StreamConsumer::new(&config).unwrap();
    let mut warm_up = Vec::new();
    wait_live(&mut consumer, &mut warm_up);

    let mut seqs: Vec<u64> = Vec::with_capacity(100_000);
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let sender = {
        let spec = spec.clone();
        let target = Arc::clone(&target);
        thread::spawn(move || {
            let last = send_orders(&spec, "pos1", 1, 20_000);
            target.store(last, Ordering::Release);
        })
    };
    let deadline = Instant::now() + LONG;
    let (_boxed, seen) = counting(|| Box::new(7u64));
    assert_eq!(seen, 1, "the counting allocator is installed");
    let before = armed_allocations();
    arm_current_thread();
    while consumer.delivered_seq() < target.load(Ordering::Acquire) && Instant::now() < deadline {
        consumer
            .poll(monotonic_ns(), |seq, message| {
                assert!(message.header().msg_type != 0);
                seqs.push(seq);
            })
            .unwrap();
    }
    disarm_current_thread();
    let allocations = armed_allocations() - before;
    sender.join().unwrap();
    let stats = consumer.stats();
    assert!(
        consumer.delivered_seq() >= target.load(Ordering::Acquire),
        "{stats:?}"
    );
    assert!(stats.recovered_by_retransmit > 0, "{stats:?}");
    assert_eq!(
        stats.replay_recoveries(),
        1,
        "the late join only: {stats:?}"
    );
    assert_eq!(allocations, 0, "allocations on the consumer thread");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
}
