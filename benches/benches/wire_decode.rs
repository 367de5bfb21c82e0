//! Scenario: decode and validate stream messages (`tally_wire::Message`).
//!
//! Every receiver of the stream (replicas, the gateway's ack path, the
//! retransmit server) turns each message block into a typed view with
//! [`Message::parse`]: check the type byte, check the length against the
//! type's fixed size, borrow the bytes as the zerocopy struct. Target: under
//! 5 ns per order (issue 2).
//!
//! Each iteration decodes a batch of [`BATCH`] messages laid out as they are
//! in a datagram (one after another); the per-message time is the reported
//! time divided by the batch (`Throughput::Elements`). Every message's input
//! goes through `std::hint::black_box` (so no check can be hoisted or
//! vectorised across messages) and every output is used (a field read into
//! a checksum that is itself `black_box`ed).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tally_wire::*;

/// Messages decoded per iteration.
const BATCH: usize = 1024;

/// `BATCH` distinct orders, back to back.
fn orders() -> Vec<u8> {
    let mut bytes = Vec::with_capacity(BATCH * Order::SIZE);
    for i in 0..BATCH as u64 {
        let order = Order::new(
            i,
            (i % 16) as u16,
            1000 + (i % 97) as u32,
            1 + (i % 5) as u32,
        )
        .with_origin(12)
        .with_client_seq(i as u32 + 1)
        .with_timestamp_ns(1_704_164_645_000_000_000 + i);
        bytes.extend_from_slice(order.as_bytes());
    }
    bytes
}

/// One message of each of the 18 types, in the given order.
fn one_of_each() -> Vec<Vec<u8>> {
    let symbol = pad_ascii::<16>("WIDGET-BLUE").unwrap();
    vec![
        Order::new(1, 7, 1001, 3).as_bytes().to_vec(),
        ModifyOrder::new(1, 2).as_bytes().to_vec(),
        CancelOrder::new(1).as_bytes().to_vec(),
        Reserve::new(2, 7, 1001, 5, 60_000).as_bytes().to_vec(),
        ConfirmHold::new(2).as_bytes().to_vec(),
        ReleaseHold::new(2).as_bytes().to_vec(),
        Transfer::new(3, 7, 8, 1001, 10).as_bytes().to_vec(),
        Recount::new(8, 1001, 10, 0).as_bytes().to_vec(),
        Adjust::new(7, 1001, 20, delta_reason::ADJUST)
            .as_bytes()
            .to_vec(),
        SkuDirectory::new(1001, symbol).as_bytes().to_vec(),
        LocationDirectory::new(7, symbol).as_bytes().to_vec(),
        InventoryLevel::new(7, 1001, 500, 5).as_bytes().to_vec(),
        OnHandDelta::new(7, 1001, -3, delta_reason::ORDER, 6)
            .as_bytes()
            .to_vec(),
        HoldPlaced::new(8, 7, 1001, 5, 1).as_bytes().to_vec(),
        HoldEnded::new(8, 7, 1001, 5, hold_outcome::CONFIRMED)
            .as_bytes()
            .to_vec(),
        CommandRejected::new(13, reject_reason::NO_SUCH)
            .as_bytes()
            .to_vec(),
        SystemEvent::new(system_code::START_OF_SESSION)
            .as_bytes()
            .to_vec(),
        GatewayReject::new(reject_reason::WRONG_LENGTH)
            .as_bytes()
            .to_vec(),
    ]
}

/// `BATCH` messages of all types back to back, with the `(start, end)` of
/// each: in a fixed pseudo-random order when `shuffled` (the type dispatch
/// cannot be predicted), else cycling through the 18 types in turn (a
/// pattern the branch predictor learns).
fn mixed(shuffled: bool) -> (Vec<u8>, Vec<(usize, usize)>) {
    let kinds = one_of_each();
    let mut bytes = Vec::new();
    let mut bounds = Vec::with_capacity(BATCH);
    // xorshift32: deterministic, no dependency.
    let mut state = 0x9e37_79b9u32;
    for i in 0..BATCH {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let pick = if shuffled { state as usize } else { i };
        let message = &kinds[pick % kinds.len()];
        bounds.push((bytes.len(), bytes.len() + message.len()));
        bytes.extend_from_slice(message);
    }
    (bytes, bounds)
}

/// What a consumer does with a decoded message: read a field. Folding it
/// into a checksum keeps the result live without copying the whole 24-byte
/// `Result` through memory (see BENCHMARKS.md on why that matters).
#[inline(always)]
fn consume(parsed: Result<Message<'_>, MessageError>) -> u64 {
    match parsed {
        Ok(Message::Order(order)) => u64::from(order.qty.get()),
        Ok(message) => u64::from(message.header().client_seq.get()),
        Err(_) => 1 << 40,
    }
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire_decode");
    group.throughput(Throughput::Elements(BATCH as u64));

    let orders = orders();
    // The target: each order block made opaque (`black_box`) so the type
    // and length checks run for every message, then one field read.
    group.bench_function("order/Message::parse", |b| {
        b.iter(|| {
            let mut checksum = 0u64;
            for block in orders.chunks_exact(Order::SIZE) {
                checksum = checksum.wrapping_add(consume(Message::parse(black_box(block))));
            }
            black_box(checksum)
        })
    });
    // The same, but the whole `Result` handed to `black_box` per message:
    // the strictest reading of "black_box the output", and the slowest.
    group.bench_function("order/Message::parse/black_box_result", |b| {
        b.iter(|| {
            for block in orders.chunks_exact(Order::SIZE) {
                let _ = black_box(Message::parse(black_box(block)));
            }
        })
    });
    // Typed parse when the caller expects an order (`WireMessage::parse`).
    group.bench_function("order/Order::parse", |b| {
        b.iter(|| {
            let mut checksum = 0u64;
            for block in orders.chunks_exact(Order::SIZE) {
                if let Ok(order) = <Order as WireMessage>::parse(black_box(block)) {
                    checksum = checksum.wrapping_add(u64::from(order.qty.get()));
                }
            }
            black_box(checksum)
        })
    });

    for (name, shuffled) in [("mixed_shuffled", true), ("mixed_cyclic", false)] {
        let (mixed, bounds) = mixed(shuffled);
        // All 18 types, each block's bounds known (as in a MoldUDP64 packet).
        group.bench_function(format!("{name}/Message::parse"), |b| {
            b.iter(|| {
                let mut checksum = 0u64;
                for &(start, end) in &bounds {
                    let block = black_box(&mixed[start..end]);
                    checksum = checksum.wrapping_add(consume(Message::parse(block)));
                }
                black_box(checksum)
            })
        });
        // All 18 types concatenated, each length implied by its type.
        group.bench_function(format!("{name}/Message::parse_prefix"), |b| {
            b.iter(|| {
                let mut checksum = 0u64;
                let mut rest = black_box(mixed.as_slice());
                while let Ok((message, after)) = Message::parse_prefix(rest) {
                    checksum = checksum.wrapping_add(consume(Ok(message)));
                    rest = black_box(after);
                }
                assert!(rest.is_empty());
                black_box(checksum)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
