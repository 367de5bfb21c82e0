//! The sequencer core's duty cycle allocates nothing: numbering, packing,
//! journaling (a real journal file) and publishing (a real multicast socket)
//! of thousands of orders after start-up.

use tally_gateway::link::{Inbound, Outcome};
use tally_runtime::alloc_count::{counting, CountingAllocator};
use tally_runtime::counters::CounterFile;
use tally_runtime::net::MulticastConfig;
use tally_sequencer::core::{CoreConfig, CoreCounters, SequencerCore};
use tally_sequencer::journal::{FsyncPolicy, JournalWriter};
use tally_sequencer::publisher::MulticastPublisher;
use tally_wire::mold::Session;
use tally_wire::Order;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[test]
fn the_sequencer_duty_cycle_does_not_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let session = Session::from_str("NOALLOC").unwrap();
    let (journal, recovery) = JournalWriter::open(
        dir.path(),
        session,
        FsyncPolicy::None,
        &tally_sequencer::journal::RecoveryOptions::default(),
        |_, _| {},
    )
    .unwrap();
    let multicast = MulticastConfig {
        group: "239.255.103.77".parse().unwrap(),
        port: 23_877,
        interface: "127.0.0.1".parse().unwrap(),
        ttl: 0,
        loopback: true,
    };
    let publisher = MulticastPublisher::new(&multicast, 1400).unwrap();
    let counters = CounterFile::in_memory(CoreCounters::NAMES);
    let config = CoreConfig {
        session,
        payload_limit_bytes: 1400,
        heartbeat_interval_ns: 1_000_000_000,
        batch_messages_max: 1024,
    };
    let mut core = SequencerCore::new(
        config,
        journal,
        publisher,
        recovery.next_seq,
        &[],
        CoreCounters::from_file(&counters, 0),
    );
    core.start(1).unwrap();
    let (mut to_core, mut inbound) = rtrb::RingBuffer::<Inbound>::new(1024);
    let (mut outcomes, mut from_core) = rtrb::RingBuffer::<Outcome>::new(1024);
    let mut client_seq = 0u32;
    let mut now_ns = 2u64;

    let (sequenced, allocations) = counting(|| {
        let mut sequenced = 0;
        for _ in 0..20 {
            for _ in 0..1000 {
                client_seq += 1;
                let order = Order::new(u64::from(client_seq), 1, 7, 1)
                    .with_origin(5)
                    .with_client_seq(client_seq);
                to_core
                    .push(Inbound::new(5, client_seq, 0, order.as_bytes()))
                    .unwrap();
            }
            now_ns += 1000;
            while !inbound.is_empty() {
                sequenced += core.poll(&mut inbound, &mut outcomes, now_ns).unwrap();
                while from_core.pop().is_ok() {}
            }
            // An idle cycle past the heartbeat interval sends a heartbeat.
            now_ns += 2_000_000_000;
            core.poll(&mut inbound, &mut outcomes, now_ns).unwrap();
        }
        sequenced
    });
    assert_eq!(sequenced, 20_000);
    assert_eq!(
        allocations, 0,
        "the sequencer core allocated {allocations} times"
    );
    // The counter does see allocations.
    let (_boxed, allocations) = counting(|| Box::new(1u64));
    assert_eq!(allocations, 1);
}
