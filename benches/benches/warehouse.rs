//! Scenario: the warehouse's decisions (`tally_warehouse::decide::Warehouse`).
//!
//! A warehouse holding 10 000 SKUs × 8 locations (plenty of stock) consumes
//! a pre-built stream of commands from 16 clients. Each command goes through
//! the whole per-command path of the authority: `on_stream` records it as
//! pending, decides it, applies the resulting events to its own state and
//! writes them to an `EventBuf`; those events then come back through
//! `on_stream` as its own stream messages (version stamping), as they would
//! from the sequencer. `Throughput::Elements` is the number of commands, so
//! criterion reports decisions per second. Target (issue 4): at least
//! 1 million decisions per second.
//!
//! Scenarios: `orders` (orders at a named location, all accepted), `orders_any_location`
//! (location 0: the warehouse scans 8 locations for the most available),
//! `mixed` (orders, location-0 orders, modifies, reserves, confirms, cancels,
//! transfers, adjusts, recounts and unknown-SKU rejects, in equal parts).
//!
//! Every command carries a fresh id, so the stream is long (1 Mi commands);
//! when a batch would run past its end, the clock stops while the warehouse
//! is reset to its starting state (a clone) and the stream starts over.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tally_benches::{mixed_commands, stamp, Rng, Stopwatch};
use tally_client::replica::ReplicaLimits;
use tally_warehouse::decide::{EventBuf, Warehouse, WarehouseConfig};
use tally_wire::{Message, Order};

const WH: u16 = 100;
const SKUS: u32 = 10_000;
const LOCATIONS: u16 = 8;
const COMMANDS: usize = 1 << 20;
const BATCH: usize = 1024;
const T0: u64 = 1_700_000_000_000_000_000;

/// A live warehouse with its snapshot broadcast already back from the
/// stream; returns it and the next stream seq.
fn warehouse() -> (Warehouse, u64) {
    let mut csv = String::from("location,sku_symbol,quantity\n");
    for s in 1..=SKUS {
        for l in 1..=LOCATIONS {
            csv.push_str(&format!("STORE-{l},SKU-{s:06},1000000\n"));
        }
    }
    let mut wh = Warehouse::new(WarehouseConfig {
        own_origin: WH,
        limits: ReplicaLimits {
            skus_max: 16_384,
            locations_max: 16,
            cells_max: 16_384 * 16,
            holds_max: 1 << 16,
            orders_max: 1 << 20,
            pending_max: 1 << 16,
        },
    });
    wh.load_inventory(csv.as_bytes()).unwrap();
    wh.begin_run(1);
    let mut broadcast = Vec::new();
    wh.session_start_events(&mut |e: &[u8]| broadcast.push(e.to_vec()));
    let mut buf = EventBuf::new();
    for (i, event) in broadcast.iter().enumerate() {
        wh.on_stream(i as u64 + 1, &Message::parse(event).unwrap(), &mut buf);
    }
    assert!(buf.is_empty() && wh.in_flight() == 0);
    (wh, broadcast.len() as u64 + 1)
}

#[derive(Clone, Copy)]
enum Mix {
    Orders,
    OrdersAnyLocation,
    Mixed,
}

fn commands(mix: Mix) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(7);
    let mut client_seq = [0u32; 17];
    let mut out = Vec::with_capacity(COMMANDS);
    let mut g = 0u64;
    while out.len() < COMMANDS {
        g += 1;
        let origin = 1 + (g % 16) as u16;
        let location = 1 + rng.below(u64::from(LOCATIONS)) as u16;
        let sku = 1 + rng.below(u64::from(SKUS)) as u32;
        let group: Vec<Vec<u8>> = match mix {
            Mix::Orders => vec![Order::new(g, location, sku, 1).as_bytes().to_vec()],
            Mix::OrdersAnyLocation => vec![Order::new(g, 0, sku, 1).as_bytes().to_vec()],
            Mix::Mixed => mixed_commands(g, location, sku, LOCATIONS, SKUS).to_vec(),
        };
        for bytes in group {
            client_seq[usize::from(origin)] += 1;
            let seq = client_seq[usize::from(origin)];
            out.push(stamp(bytes, origin, seq, T0 + out.len() as u64 * 1000));
        }
    }
    out.truncate(COMMANDS);
    out
}

fn bench_mix(c: &mut Criterion, stopwatch: Stopwatch, name: &str, mix: Mix) {
    let (start, first_seq) = warehouse();
    let bytes = commands(mix);
    let messages: Vec<Message> = bytes.iter().map(|b| Message::parse(b).unwrap()).collect();
    let mut group = c.benchmark_group("warehouse");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(name, |b| {
        let mut wh = start.clone();
        let mut seq = first_seq;
        let mut cursor = 0usize;
        let mut buf = EventBuf::new();
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut clock = stopwatch.now();
            for _ in 0..iters {
                if cursor + BATCH > messages.len() {
                    elapsed += stopwatch.now() - clock;
                    wh = start.clone();
                    seq = first_seq;
                    cursor = 0;
                    clock = stopwatch.now();
                }
                for message in &messages[cursor..cursor + BATCH] {
                    buf.clear();
                    wh.on_stream(seq, black_box(message), &mut buf);
                    seq += 1;
                    // The events come back on the stream (the warehouse's
                    // own: only their versions are stamped).
                    let mut own = EventBuf::new();
                    for event in buf.iter() {
                        let event = Message::parse(event).unwrap();
                        wh.on_stream(seq, &event, &mut own);
                        seq += 1;
                    }
                }
                cursor += BATCH;
            }
            black_box(wh.counters().decided);
            elapsed + (stopwatch.now() - clock)
        });
        assert_eq!(wh.replica().oversold(), 0);
        assert_eq!(wh.counters().own_out_of_order, 0);
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let stopwatch = Stopwatch::from_env();
    bench_mix(c, stopwatch, "orders", Mix::Orders);
    bench_mix(c, stopwatch, "orders_any_location", Mix::OrdersAnyLocation);
    bench_mix(c, stopwatch, "mixed", Mix::Mixed);
}

criterion_group!(benches, bench);
criterion_main!(benches);
