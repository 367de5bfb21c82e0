//! Scenario: a replica applying the stream (`tally_client::replica::Replica::apply`).
//!
//! - `stream_mixed`: the stream a warehouse really produced for 1 Mi mixed
//!   commands from 16 clients (orders, location-0 orders, modifies, holds,
//!   confirms, cancels, transfers, adjusts, recounts, rejects) — commands
//!   (remembered as pending) and events (applied, matched to their
//!   commands, orders and ids recorded) interleaved as on the wire; 10 000
//!   SKUs × 8 locations, a client-id history of 64 Ki records (as
//!   `ReplicaLimits::small()`, which the apps use). `stream_mixed_1mi_ids`:
//!   the same with a history of 1 Mi records, whose index no longer fits the
//!   cache (each new order's lookup goes to memory).
//! - `deltas`: `D` events alone on random cells of the same inventory (the
//!   cell update without any bookkeeping).
//! - `deltas_1m_x_16`: the same on a replica of 1 M SKUs × 16 locations,
//!   where almost every event misses the cache.
//!
//! Messages are parsed beforehand (parsing has its own bench,
//! `wire_decode`); `Throughput::Elements` counts messages applied, so
//! criterion reports messages per second. Target (issue 4): at least 10
//! million events per second. When a batch would run past the end of the
//! recorded stream the clock stops while the replica is reset to its starting
//! state and the stream starts over.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tally_benches::{mixed_commands, stamp, Rng, Stopwatch};
use tally_client::replica::{Replica, ReplicaLimits};
use tally_warehouse::decide::{EventBuf, Warehouse, WarehouseConfig};
use tally_wire::{
    delta_reason, pad_ascii, InventoryLevel, LocationDirectory, Message, OnHandDelta, SkuDirectory,
};

const WH: u16 = 100;
const SKUS: u32 = 10_000;
const LOCATIONS: u16 = 8;
const COMMANDS: usize = 1 << 20;
const BATCH: usize = 1024;
const T0: u64 = 1_700_000_000_000_000_000;

fn limits() -> ReplicaLimits {
    ReplicaLimits {
        skus_max: 16_384,
        locations_max: 16,
        cells_max: 16_384 * 16,
        holds_max: 1 << 16,
        orders_max: 1 << 20,
        pending_max: 1 << 16,
    }
}

/// Runs a warehouse over mixed commands and records the whole stream it
/// sees (snapshot broadcast, commands, its events), as one byte arena.
fn recorded_stream() -> (Vec<u8>, Vec<(u32, u8)>) {
    let mut csv = String::from("location,sku_symbol,quantity\n");
    for s in 1..=SKUS {
        for l in 1..=LOCATIONS {
            csv.push_str(&format!("STORE-{l},SKU-{s:06},1000000\n"));
        }
    }
    let mut wh = Warehouse::new(WarehouseConfig {
        own_origin: WH,
        limits: limits(),
    });
    wh.load_inventory(csv.as_bytes()).unwrap();
    wh.begin_run(1);
    let mut arena = Vec::new();
    let mut index = Vec::new();
    let mut push = |arena: &mut Vec<u8>, bytes: &[u8]| {
        index.push((arena.len() as u32, bytes.len() as u8));
        arena.extend_from_slice(bytes);
    };
    let mut broadcast = Vec::new();
    wh.session_start_events(&mut |e: &[u8]| broadcast.push(e.to_vec()));
    let mut seq = 0u64;
    let mut buf = EventBuf::new();
    for event in &broadcast {
        seq += 1;
        wh.on_stream(seq, &Message::parse(event).unwrap(), &mut buf);
        push(&mut arena, event);
    }
    let mut rng = Rng::new(11);
    let mut client_seq = [0u32; 17];
    let mut commands = 0usize;
    let mut g = 0u64;
    while commands < COMMANDS {
        g += 1;
        let origin = 1 + (g % 16) as u16;
        let location = 1 + rng.below(u64::from(LOCATIONS)) as u16;
        let sku = 1 + rng.below(u64::from(SKUS)) as u32;
        let group = mixed_commands(g, location, sku, LOCATIONS, SKUS);
        for command in group {
            client_seq[usize::from(origin)] += 1;
            let command = stamp(
                command,
                origin,
                client_seq[usize::from(origin)],
                T0 + seq * 1000,
            );
            seq += 1;
            buf.clear();
            wh.on_stream(seq, &Message::parse(&command).unwrap(), &mut buf);
            push(&mut arena, &command);
            commands += 1;
            let events: Vec<Vec<u8>> = buf.iter().map(<[u8]>::to_vec).collect();
            for event in events {
                seq += 1;
                let mut own = EventBuf::new();
                wh.on_stream(seq, &Message::parse(&event).unwrap(), &mut own);
                push(&mut arena, &event);
            }
        }
    }
    assert_eq!(wh.replica().oversold(), 0);
    (arena, index)
}

fn run(
    c: &mut Criterion,
    stopwatch: Stopwatch,
    name: &str,
    start: &Replica,
    messages: &[Message],
    reset_on_wrap: bool,
) {
    let mut group = c.benchmark_group("replica_apply");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(name, |b| {
        let mut replica = start.clone();
        let first_seq = replica.last_seq() + 1;
        let mut seq = first_seq;
        let mut cursor = 0usize;
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut clock = stopwatch.now();
            for _ in 0..iters {
                if cursor + BATCH > messages.len() {
                    if reset_on_wrap {
                        elapsed += stopwatch.now() - clock;
                        replica = start.clone();
                        seq = first_seq;
                        clock = stopwatch.now();
                    }
                    cursor = 0;
                }
                for message in &messages[cursor..cursor + BATCH] {
                    replica.apply(seq, black_box(message));
                    seq += 1;
                }
                cursor += BATCH;
            }
            black_box(replica.last_seq());
            elapsed + (stopwatch.now() - clock)
        });
        assert_eq!(replica.oversold(), 0);
    });
    group.finish();
}

/// A replica holding `skus` × `locations` cells of 1 000 000 units, with
/// the pre-built deltas for it: each cell −1 and +1 once per pass, in random
/// order, so passes can repeat forever.
fn deltas_for(skus: u32, locations: u16, count: usize) -> (Replica, Vec<u8>) {
    let mut replica = Replica::new(ReplicaLimits {
        skus_max: skus,
        locations_max: locations,
        cells_max: skus * u32::from(locations),
        holds_max: 16,
        orders_max: 16,
        pending_max: 16,
    });
    let mut seq = 0u64;
    let mut apply = |r: &mut Replica, bytes: &[u8]| {
        seq += 1;
        r.apply(seq, &Message::parse(bytes).unwrap());
    };
    for l in 1..=locations {
        let name = pad_ascii(&format!("STORE-{l}")).unwrap();
        apply(&mut replica, LocationDirectory::new(l, name).as_bytes());
    }
    for s in 1..=skus {
        let symbol = pad_ascii(&format!("SKU-{s:07}")).unwrap();
        apply(&mut replica, SkuDirectory::new(s, symbol).as_bytes());
        for l in 1..=locations {
            apply(
                &mut replica,
                InventoryLevel::new(l, s, 1_000_000, 0).as_bytes(),
            );
        }
    }
    let mut rng = Rng::new(3);
    let mut deltas = Vec::with_capacity(count);
    for _ in 0..count / 2 {
        let l = 1 + rng.below(u64::from(locations)) as u16;
        let s = 1 + rng.below(u64::from(skus)) as u32;
        for delta in [-1, 1] {
            deltas.push(
                OnHandDelta::new(l, s, delta, delta_reason::ORDER, 0)
                    .as_bytes()
                    .to_vec(),
            );
        }
    }
    // Shuffle (Fisher–Yates): a cell's −1 and +1 land anywhere in the pass.
    for i in (1..deltas.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        deltas.swap(i, j);
    }
    // Back to back in one buffer, as in a datagram.
    (replica, deltas.concat())
}

fn bench(c: &mut Criterion) {
    let stopwatch = Stopwatch::from_env();
    let (arena, index) = recorded_stream();
    let messages: Vec<Message> = index
        .iter()
        .map(|&(offset, len)| {
            Message::parse(&arena[offset as usize..offset as usize + usize::from(len)]).unwrap()
        })
        .collect();
    let events = messages.iter().filter(|m| m.is_event()).count();
    eprintln!(
        "recorded stream: {} messages, {} events ({:.1} %)",
        messages.len(),
        events,
        100.0 * events as f64 / messages.len() as f64
    );
    // Start after the snapshot broadcast (L, R, I…, S).
    let broadcast = messages
        .iter()
        .position(|m| m.msg_type() == b'S')
        .expect("S(W)")
        + 1;
    // The client-id history as the apps size it (64 Ki records, an index
    // that stays in cache), and sixteen times that (1 Mi records: the index
    // lookup of each new order then misses the cache).
    for (name, orders_max) in [("stream_mixed", 1 << 16), ("stream_mixed_1mi_ids", 1 << 20)] {
        let mut start = Replica::new(ReplicaLimits {
            orders_max,
            ..limits()
        });
        for (i, m) in messages[..broadcast].iter().enumerate() {
            start.apply(i as u64 + 1, m);
        }
        run(c, stopwatch, name, &start, &messages[broadcast..], true);
    }

    let (start, deltas) = deltas_for(SKUS, LOCATIONS, 1 << 20);
    let messages: Vec<Message> = deltas
        .chunks(OnHandDelta::SIZE)
        .map(|b| Message::parse(b).unwrap())
        .collect();
    run(c, stopwatch, "deltas", &start, &messages, false);
    drop(start);

    let (start, deltas) = deltas_for(1_000_000, 16, 1 << 22);
    let messages: Vec<Message> = deltas
        .chunks(OnHandDelta::SIZE)
        .map(|b| Message::parse(b).unwrap())
        .collect();
    run(c, stopwatch, "deltas_1m_x_16", &start, &messages, false);
}

criterion_group!(benches, bench);
criterion_main!(benches);
