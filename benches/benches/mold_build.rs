//! Scenario: build and read full MoldUDP64 packets (`tally_wire::mold`).
//!
//! The sequencer appends each sequenced message to the packet being built
//! until it is full (1400 bytes: 39 orders of 33 bytes with their 2-byte
//! length prefixes), then sends it; receivers validate the packet and walk
//! its blocks. Target: under 5 ns per message appended (issue 2).
//!
//! Each iteration builds (or reads) one full packet; `Throughput::Elements`
//! is the number of messages in it, so the per-message time is the reported
//! time divided by that count. Every appended message goes through
//! `std::hint::black_box`, and so do the finished packet's length and every
//! message read back, so nothing is folded away.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tally_wire::mold::{self, MoldPacket, PacketBuilder, Session};
use tally_wire::*;

/// Orders a 1400-byte packet holds: (1400 − 20) / (2 + 33).
const ORDERS_PER_PACKET: usize = (mold::DEFAULT_PAYLOAD_LIMIT - mold::MoldHeader::SIZE)
    / (mold::BLOCK_LENGTH_SIZE + Order::SIZE);

/// Enough distinct orders to fill one packet, plus one that does not fit.
fn orders() -> Vec<Order> {
    (0..ORDERS_PER_PACKET as u64 + 1)
        .map(|i| {
            Order::new(i, 7, 1000 + i as u32, 1 + (i % 5) as u32)
                .with_origin(12)
                .with_client_seq(i as u32 + 1)
                .with_timestamp_ns(1_704_164_645_000_000_000 + i)
        })
        .collect()
}

fn build(c: &mut Criterion) {
    let session = Session::from_str("TALLY-D1").unwrap();
    let orders = orders();
    let mut buf = [0u8; mold::DEFAULT_PAYLOAD_LIMIT];

    let mut group = c.benchmark_group("mold_build");
    group.throughput(Throughput::Elements(ORDERS_PER_PACKET as u64));

    // Append orders until the builder says Full, then finish: the target.
    group.bench_function("append_until_full", |b| {
        b.iter(|| {
            let mut packet = PacketBuilder::new(
                black_box(&mut buf[..]),
                mold::DEFAULT_PAYLOAD_LIMIT,
                session,
                black_box(1_000),
            );
            for order in &orders {
                // Opaque per message: the length check runs for each.
                if packet.append(black_box(order.as_bytes())).is_err() {
                    break;
                }
            }
            debug_assert_eq!(usize::from(packet.count()), ORDERS_PER_PACKET);
            black_box(packet.finish())
        })
    });
    // The same with the message written in place by `append_with`, its
    // length known from its type (what the sequencer does).
    group.bench_function("append_with_until_full", |b| {
        b.iter(|| {
            let mut packet = PacketBuilder::new(
                black_box(&mut buf[..]),
                mold::DEFAULT_PAYLOAD_LIMIT,
                session,
                black_box(1_000),
            );
            for order in &orders {
                let order = black_box(order);
                let appended = packet.append_with(Order::SIZE, |out| {
                    out.copy_from_slice(order.as_bytes());
                });
                if appended.is_err() {
                    break;
                }
            }
            black_box(packet.finish())
        })
    });

    // A full packet, as received.
    let mut packet = PacketBuilder::new(&mut buf, mold::DEFAULT_PAYLOAD_LIMIT, session, 1_000);
    for order in &orders[..ORDERS_PER_PACKET] {
        packet.append(order.as_bytes()).unwrap();
    }
    let len = packet.finish();
    let datagram = buf[..len].to_vec();
    assert_eq!(datagram.len(), 20 + ORDERS_PER_PACKET * 35);

    // Validate the packet and walk its blocks.
    group.bench_function("parse_iterate", |b| {
        b.iter(|| {
            let packet = MoldPacket::parse(black_box(datagram.as_slice())).unwrap();
            for (seq, message) in packet.messages() {
                black_box((seq, message));
            }
        })
    });
    // A receiver's whole path: validate, walk, decode each message.
    group.bench_function("parse_iterate_decode", |b| {
        b.iter(|| {
            let packet = MoldPacket::parse(black_box(datagram.as_slice())).unwrap();
            for (seq, message) in packet.messages() {
                let _ = black_box((seq, Message::parse(message)));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, build);
criterion_main!(benches);
