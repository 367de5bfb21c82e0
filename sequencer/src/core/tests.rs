//! The sequencer core against a recording journal and publisher.

use super::*;
use tally_runtime::counters::CounterFile;
use tally_wire::mold::MoldPacket;
use tally_wire::{Message, Order};

/// Records appends. Durable at once, or (`group_commit`) only up to
/// what the test makes durable with `sync_to`, as a group commit would.
#[derive(Default)]
struct RecordingJournal {
    records: Vec<(u64, u16, Vec<u8>)>,
    ended: bool,
    group_commit: bool,
    appended_next_seq: u64,
    durable_next_seq: u64,
}

impl RecordingJournal {
    fn sync_all(&mut self) {
        self.durable_next_seq = self.appended_next_seq;
    }
}

impl Journal for RecordingJournal {
    fn append(
        &mut self,
        first_seq: u64,
        count: u16,
        blocks: &[u8],
        _: u64,
    ) -> Result<(), WriteError> {
        self.records.push((first_seq, count, blocks.to_vec()));
        self.appended_next_seq = first_seq + u64::from(count);
        if !self.group_commit {
            self.durable_next_seq = self.appended_next_seq;
        }
        Ok(())
    }
    fn room_bytes(&self) -> usize {
        usize::MAX
    }
    fn submit(&mut self, _: u64) -> Result<(), WriteError> {
        Ok(())
    }
    fn poll_durable(&mut self) -> Result<u64, WriteError> {
        Ok(self.durable_next_seq)
    }
    fn durable_next_seq(&self) -> u64 {
        self.durable_next_seq
    }
    fn end_session(&mut self) -> Result<(), WriteError> {
        self.ended = true;
        self.sync_all();
        Ok(())
    }
    fn sync(&mut self) -> Result<(), WriteError> {
        self.sync_all();
        Ok(())
    }
}

/// Records packets. With `slots`, at most that many may be in flight
/// (sent, not yet completed); the test completes them with `complete`.
/// `wait_for_room` (the one call through which the core could wait for
/// the publisher) is counted, and completes everything.
#[derive(Default)]
struct RecordingPublisher {
    packets: Vec<Vec<u8>>,
    slots: Option<usize>,
    in_flight: usize,
    waits: usize,
}

impl RecordingPublisher {
    fn complete(&mut self) {
        self.in_flight = 0;
    }
}

impl Publisher for RecordingPublisher {
    fn publish(&mut self, packet: &[u8]) -> io::Result<()> {
        if self.slots.is_some_and(|slots| self.in_flight == slots) {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "slots full"));
        }
        self.in_flight += 1;
        self.packets.push(packet.to_vec());
        Ok(())
    }

    fn wait_for_room(&mut self, _timeout: std::time::Duration) -> io::Result<()> {
        self.waits += 1;
        self.complete();
        Ok(())
    }
}

type Core = SequencerCore<RecordingJournal, RecordingPublisher>;

fn core(payload_limit_bytes: usize) -> (Core, CounterFile) {
    let file = CounterFile::in_memory(CoreCounters::NAMES);
    let config = CoreConfig {
        session: Session::from_str("TEST").unwrap(),
        payload_limit_bytes,
        heartbeat_interval_ns: 1_000_000_000,
        batch_messages_max: 1024,
    };
    let core = SequencerCore::new(
        config,
        RecordingJournal::default(),
        RecordingPublisher::default(),
        1,
        &[],
        CoreCounters::from_file(&file, 0),
    );
    (core, file)
}

fn order(origin: u16, client_seq: u32) -> Inbound {
    let message = Order::new(u64::from(client_seq), 1, 7, 2)
        .with_origin(origin)
        .with_client_seq(client_seq);
    Inbound::new(origin, client_seq, 0, message.as_bytes())
}

/// Every (seq, message) published, in packet order.
fn stream(core: &mut Core) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for packet in &core.publisher_mut().packets {
        let packet = MoldPacket::parse(packet).unwrap();
        for (seq, message) in packet.messages() {
            out.push((seq, message.to_vec()));
        }
    }
    out
}

#[test]
fn new_stream_starts_with_start_of_session() {
    let (mut core, _) = core(1400);
    core.start(5).unwrap();
    let stream = stream(&mut core);
    assert_eq!(stream.len(), 1);
    match Message::parse(&stream[0].1).unwrap() {
        Message::SystemEvent(event) => {
            assert_eq!(event.code, system_code::START_OF_SESSION);
            assert_eq!(event.header.origin.get(), 0);
            assert_eq!(event.header.client_seq.get(), 1);
            assert_eq!(event.header.timestamp_ns.get(), 5);
        }
        other => panic!("expected S, got {other:?}"),
    }
    assert_eq!(core.next_seq(), 2);
}

#[test]
fn burst_fills_packets_in_order_and_acks_after_journal() {
    let (mut core, counters) = core(400);
    core.start(1).unwrap();
    let (mut to_core, mut inbound) = rtrb::RingBuffer::new(4096);
    let (mut outcomes, mut from_core) = rtrb::RingBuffer::new(4096);
    for client_seq in 1..=1000 {
        to_core.push(order(9, client_seq)).unwrap();
    }
    let mut done = 0;
    while done < 1000 {
        done += core.poll(&mut inbound, &mut outcomes, 100).unwrap();
    }
    let stream = stream(&mut core);
    assert_eq!(stream.len(), 1001);
    for (index, (seq, message)) in stream.iter().enumerate() {
        assert_eq!(*seq, index as u64 + 1);
        if index > 0 {
            let header = Message::parse(message).unwrap().header();
            assert_eq!(header.client_seq.get(), index as u32);
            assert_eq!(header.origin.get(), 9);
            assert_eq!(header.timestamp_ns.get(), 100);
        }
    }
    // Packets respect the limit and are as full as the limit allows.
    let packets = &core.publisher_mut().packets;
    assert!(packets.iter().all(|p| p.len() <= 400));
    let per_packet = (400 - 20) / (2 + Order::SIZE);
    assert_eq!(packets.len(), 1 + 1000_usize.div_ceil(per_packet));
    // The journal holds exactly what was published.
    let journal = core.journal_mut().records.clone();
    let packets = core.publisher_mut().packets.clone();
    assert_eq!(journal.len(), packets.len());
    for ((first_seq, count, blocks), packet) in journal.iter().zip(&packets) {
        let parsed = MoldPacket::parse(packet).unwrap();
        assert_eq!(*first_seq, parsed.sequence());
        assert_eq!(*count, parsed.count());
        assert_eq!(blocks.as_slice(), &packet[20..]);
    }
    for client_seq in 1..=1000u32 {
        let outcome = from_core.pop().unwrap();
        assert_eq!(outcome.client_seq, client_seq);
        assert_eq!(outcome.stream_seq, u64::from(client_seq) + 1);
        assert_eq!(outcome.kind, OutcomeKind::Accepted);
    }
    assert_eq!(counters.counter(0).get(), 1001);
}

#[test]
fn lone_message_goes_out_at_once() {
    let (mut core, _) = core(1400);
    let (mut to_core, mut inbound) = rtrb::RingBuffer::new(16);
    let (mut outcomes, mut from_core) = rtrb::RingBuffer::new(16);
    to_core.push(order(3, 1)).unwrap();
    assert_eq!(core.poll(&mut inbound, &mut outcomes, 7).unwrap(), 1);
    assert_eq!(core.publisher_mut().packets.len(), 1);
    assert_eq!(from_core.pop().unwrap().stream_seq, 1);
}

#[test]
fn duplicates_and_skips_are_not_sequenced() {
    let (mut core, _) = core(1400);
    let (mut to_core, mut inbound) = rtrb::RingBuffer::new(16);
    let (mut outcomes, mut from_core) = rtrb::RingBuffer::new(16);
    for inbound in [order(3, 1), order(3, 1), order(3, 3), order(3, 2)] {
        to_core.push(inbound).unwrap();
    }
    core.poll(&mut inbound, &mut outcomes, 7).unwrap();
    let kinds: Vec<_> = std::iter::from_fn(|| from_core.pop().ok())
        .map(|o| (o.client_seq, o.kind, o.stream_seq))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (1, OutcomeKind::Accepted, 1),
            (1, OutcomeKind::Duplicate, 0),
            (3, OutcomeKind::SkippedAhead, 0),
            (2, OutcomeKind::Accepted, 2),
        ]
    );
    assert_eq!(stream(&mut core).len(), 2);
    assert_eq!(core.last_client_seq(3), 2);
}

#[test]
fn gateway_reject_is_sequenced_and_answered_rejected() {
    let (mut core, _) = core(1400);
    let (mut to_core, mut inbound) = rtrb::RingBuffer::new(16);
    let (mut outcomes, mut from_core) = rtrb::RingBuffer::new(16);
    let reject = tally_wire::GatewayReject::new(b'P')
        .with_origin(4)
        .with_client_seq(1);
    to_core
        .push(Inbound::new(4, 1, b'P', reject.as_bytes()))
        .unwrap();
    core.poll(&mut inbound, &mut outcomes, 7).unwrap();
    let outcome = from_core.pop().unwrap();
    assert_eq!(outcome.kind, OutcomeKind::Rejected { reason: b'P' });
    assert_eq!(outcome.stream_seq, 1);
    assert!(matches!(
        Message::parse(&stream(&mut core)[0].1).unwrap(),
        Message::GatewayReject(_)
    ));
}

#[test]
fn full_outcome_ring_holds_input_back() {
    let (mut core, counters) = core(1400);
    let (mut to_core, mut inbound) = rtrb::RingBuffer::new(16);
    let (mut outcomes, mut from_core) = rtrb::RingBuffer::new(2);
    for client_seq in 1..=5 {
        to_core.push(order(3, client_seq)).unwrap();
    }
    assert_eq!(core.poll(&mut inbound, &mut outcomes, 7).unwrap(), 2);
    assert_eq!(core.poll(&mut inbound, &mut outcomes, 7).unwrap(), 0);
    assert_eq!(counters.counter(8).get(), 1);
    from_core.pop().unwrap();
    from_core.pop().unwrap();
    assert_eq!(core.poll(&mut inbound, &mut outcomes, 7).unwrap(), 2);
    assert_eq!(inbound.slots(), 1);
}

#[test]
fn heartbeat_after_idle_interval_carries_next_seq() {
    let (mut core, _) = core(1400);
    core.start(0).unwrap();
    let (_to_core, mut inbound) = rtrb::RingBuffer::<Inbound>::new(16);
    let (mut outcomes, _from_core) = rtrb::RingBuffer::new(16);
    assert_eq!(
        core.poll(&mut inbound, &mut outcomes, 999_999_999).unwrap(),
        0
    );
    assert_eq!(
        core.poll(&mut inbound, &mut outcomes, 1_000_000_000)
            .unwrap(),
        1
    );
    let packet = MoldPacket::parse(core.publisher_mut().packets.last().unwrap()).unwrap();
    assert_eq!(packet.kind(), tally_wire::mold::PacketKind::Heartbeat);
    assert_eq!(packet.sequence(), 2);
}

#[test]
fn end_session_sequences_event_then_end_packet() {
    let (mut core, _) = core(1400);
    core.start(0).unwrap();
    let (mut outcomes, _from_core) = rtrb::RingBuffer::new(16);
    core.end_session(&mut outcomes, 10).unwrap();
    assert!(core.journal_mut().ended);
    let packets = &core.publisher_mut().packets;
    let last = MoldPacket::parse(packets.last().unwrap()).unwrap();
    assert_eq!(last.kind(), tally_wire::mold::PacketKind::EndOfSession);
    assert_eq!(last.sequence(), 3);
    let stream = stream(&mut core);
    match Message::parse(&stream[1].1).unwrap() {
        Message::SystemEvent(event) => assert_eq!(event.code, system_code::END_OF_SESSION),
        other => panic!("expected S(C), got {other:?}"),
    }
}

#[test]
fn group_commit_holds_packets_and_acks_until_durable_then_releases_in_order() {
    let (mut core, file) = core(200);
    core.journal_mut().group_commit = true;
    core.start(0).unwrap();
    assert!(
        core.publisher_mut().packets.is_empty(),
        "S(O) waits for the sync"
    );
    let (mut to_core, mut inbound) = rtrb::RingBuffer::new(4096);
    let (mut outcomes, mut from_core) = rtrb::RingBuffer::new(4096);
    for client_seq in 1..=50u32 {
        to_core.push(order(1, client_seq)).unwrap();
    }
    assert_eq!(core.poll(&mut inbound, &mut outcomes, 1).unwrap(), 50);
    assert!(
        core.publisher_mut().packets.is_empty(),
        "nothing published before the sync"
    );
    assert!(from_core.is_empty(), "nothing acknowledged before the sync");
    // A second batch while the first is being synced.
    for client_seq in 51..=60u32 {
        to_core.push(order(1, client_seq)).unwrap();
    }
    assert_eq!(core.poll(&mut inbound, &mut outcomes, 2).unwrap(), 10);
    assert!(from_core.is_empty());
    // The sync of the first batch completes: exactly its packets and acks go.
    let first_batch_end = core.journal_mut().records[..]
        .iter()
        .find(|(first, count, _)| first + u64::from(*count) == 52)
        .map(|_| 52)
        .expect("the first batch ends a record at 52 (S(O) + 50 orders)");
    core.journal_mut().durable_next_seq = first_batch_end;
    let released = core.poll(&mut inbound, &mut outcomes, 3).unwrap();
    assert!(
        released > 50,
        "packets and 50 acks released, got {released}"
    );
    let published = stream(&mut core);
    assert_eq!(
        published.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (1..52).collect::<Vec<_>>()
    );
    let mut acked = Vec::new();
    while let Ok(outcome) = from_core.pop() {
        acked.push((outcome.client_seq, outcome.stream_seq));
    }
    assert_eq!(
        acked,
        (1..=50u32)
            .map(|c| (c, u64::from(c) + 1))
            .collect::<Vec<_>>()
    );
    // Then the rest.
    core.journal_mut().sync_all();
    core.poll(&mut inbound, &mut outcomes, 4).unwrap();
    assert_eq!(stream(&mut core).len(), 61);
    let rest: Vec<u32> = std::iter::from_fn(|| from_core.pop().ok())
        .map(|outcome| outcome.client_seq)
        .collect();
    assert_eq!(rest, (51..=60).collect::<Vec<_>>());
    let counters = CoreCounters::from_file(&file, 0);
    assert!(counters.packets_held.get() > 0);
}

#[test]
fn a_journal_that_never_syncs_pushes_back_instead_of_growing() {
    let (mut core, file) = core(200);
    core.journal_mut().group_commit = true;
    core.start(0).unwrap();
    let (mut to_core, mut inbound) = rtrb::RingBuffer::new(1 << 16);
    let (mut outcomes, mut from_core) = rtrb::RingBuffer::new(1 << 17);
    let mut client_seq = 0u32;
    let mut taken = 0usize;
    // Far more than may be held: the core stops taking, it never panics,
    // sleeps or drops.
    for round in 0..200u64 {
        while to_core.slots() > 0 {
            client_seq += 1;
            to_core.push(order(1, client_seq)).unwrap();
        }
        taken += core.poll(&mut inbound, &mut outcomes, round).unwrap();
    }
    let (packets, acks) = core.held();
    assert!(packets <= HELD_PACKETS_MAX && acks <= HELD_OUTCOMES_MAX);
    assert!(taken <= HELD_OUTCOMES_MAX, "took {taken}");
    assert!(CoreCounters::from_file(&file, 0).durability_waits.get() > 0);
    assert!(from_core.is_empty());
    // The sync comes: everything taken is published and acknowledged, in order.
    core.journal_mut().sync_all();
    while core.poll(&mut inbound, &mut outcomes, 1_000).unwrap() > 0 {
        core.journal_mut().sync_all();
        while from_core.pop().is_ok() {}
    }
    let published = stream(&mut core);
    for (index, (seq, _)) in published.iter().enumerate() {
        assert_eq!(*seq, index as u64 + 1, "no gap, no reorder");
    }
}

#[test]
fn full_publisher_slots_push_back_without_sleeping_losing_or_reordering() {
    let (mut core, file) = core(200);
    core.publisher_mut().slots = Some(4);
    core.start(0).unwrap();
    let (mut to_core, mut inbound) = rtrb::RingBuffer::new(1 << 16);
    let (mut outcomes, mut from_core) = rtrb::RingBuffer::new(1 << 17);
    let mut client_seq = 0u32;
    let mut acked = Vec::new();
    let mut rounds_input_left = 0usize;
    // Far more than four slots' worth, while the "kernel" completes
    // sends only every tenth cycle. Every poll returns at once.
    for round in 0..2_000u64 {
        while to_core.slots() > 0 && client_seq < 200_000 {
            client_seq += 1;
            to_core.push(order(1, client_seq)).unwrap();
        }
        core.poll(&mut inbound, &mut outcomes, round).unwrap();
        // Not timed: the only way the core can wait for the publisher
        // is `wait_for_room` (shutdown and end of session only).
        assert_eq!(core.publisher_mut().waits, 0, "a poll never waits");
        rounds_input_left += usize::from(!inbound.is_empty());
        if round % 10 == 9 {
            core.publisher_mut().complete();
        }
        while let Ok(outcome) = from_core.pop() {
            // An ack only for a message already handed to the publisher.
            let published = stream(&mut core).last().map_or(0, |(seq, _)| *seq);
            assert!(outcome.stream_seq <= published, "ack before its packet");
            acked.push(outcome.client_seq);
        }
    }
    let counters = CoreCounters::from_file(&file, 0);
    assert!(counters.publisher_full.get() > 0, "the slots were full");
    assert!(counters.packets_held.get() > 0);
    // Pushing back: while the slots were full the core left input in
    // the ring (bounded holding, no unbounded buffering).
    assert!(
        rounds_input_left > 0,
        "the core stopped taking input while it could not publish"
    );
    // Drain the rest.
    for round in 0..100_000u64 {
        core.publisher_mut().complete();
        let work = core
            .poll(&mut inbound, &mut outcomes, 10_000 + round)
            .unwrap();
        while let Ok(outcome) = from_core.pop() {
            acked.push(outcome.client_seq);
        }
        if work == 0 && inbound.is_empty() && core.held() == (0, 0) {
            break;
        }
    }
    assert_eq!(
        acked,
        (1..=client_seq).collect::<Vec<_>>(),
        "every ack, in order"
    );
    let published = stream(&mut core);
    assert_eq!(
        published.len(),
        client_seq as usize + 1,
        "S(O) and every order"
    );
    for (index, (seq, _)) in published.iter().enumerate() {
        assert_eq!(*seq, index as u64 + 1, "no gap, no reorder, nothing twice");
    }
}
