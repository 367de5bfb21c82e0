//! Scenario: the sequencer core with a null journal and a null transport
//! (`tally_sequencer::core`).
//!
//! Each iteration pushes a batch of 33-byte orders from 8 clients onto the
//! gateway→sequencer ring, runs one duty cycle of the core (exactly-once
//! check, timestamp stamp, numbering, MoldUDP64 packing up to 1400 bytes,
//! journal and publish calls), and takes the outcomes off the ack ring: the
//! whole per-message path of the sequencer thread except the system calls.
//! `Throughput::Elements` is the batch size, so criterion reports messages
//! per second. Target (issue 3): at least 20 million messages per second.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tally_gateway::link::{Inbound, Outcome};
use tally_runtime::counters::CounterFile;
use tally_sequencer::core::{CoreConfig, CoreCounters, NullJournal, NullPublisher, SequencerCore};
use tally_wire::mold::Session;
use tally_wire::Order;

const CLIENTS: u16 = 8;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("sequencer_core");
    for batch in [64usize, 1024, 4096] {
        let counters = CounterFile::in_memory(CoreCounters::NAMES);
        let config = CoreConfig {
            session: Session::from_str("BENCH").unwrap(),
            payload_limit_bytes: 1400,
            heartbeat_interval_ns: u64::MAX,
            batch_messages_max: batch,
        };
        let mut core = SequencerCore::new(
            config,
            NullJournal,
            NullPublisher,
            1,
            &[],
            CoreCounters::from_file(&counters, 0),
        );
        let (mut to_core, mut inbound) = rtrb::RingBuffer::<Inbound>::new(batch);
        let (mut outcomes, mut from_core) = rtrb::RingBuffer::<Outcome>::new(batch);
        let mut client_seq = [0u32; CLIENTS as usize + 1];
        let template: Vec<Inbound> = (1..=CLIENTS)
            .map(|origin| {
                let order = Order::new(1, 3, 1234, 2).with_origin(origin);
                Inbound::new(origin, 0, 0, order.as_bytes())
            })
            .collect();
        let mut now_ns = 1_700_000_000_000_000_000u64;
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::new("orders", batch), |b| {
            b.iter(|| {
                for i in 0..batch {
                    let origin = (i % CLIENTS as usize) + 1;
                    client_seq[origin] += 1;
                    let mut message = template[origin - 1];
                    message.client_seq = client_seq[origin];
                    message.bytes[3..7].copy_from_slice(&client_seq[origin].to_be_bytes());
                    to_core.push(message).unwrap();
                }
                now_ns += 1000;
                let done = core.poll(&mut inbound, &mut outcomes, now_ns).unwrap();
                debug_assert_eq!(done, batch);
                let chunk = from_core.read_chunk(done).unwrap();
                for outcome in chunk {
                    black_box(outcome);
                }
                black_box(done)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
