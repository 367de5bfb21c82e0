//! Scenario: cut a SoupBinTCP byte stream into frames
//! (`tally_wire::FrameDecoder`).
//!
//! The gateway reads a client's TCP stream in chunks whose size the network
//! decides, and cuts it into frames: mostly `U` frames of one order each (36
//! bytes on the wire). Frames straddle chunk boundaries. This bench feeds a
//! stream of [`FRAMES`] such frames in chunks of several realistic sizes (one
//! TCP segment of 1448 bytes, a 16 KiB socket read, and a pathological 7
//! bytes) through [`FrameDecoder::extend`] (the copy a `recv` into
//! [`FrameDecoder::spare`] would do) and drains every complete frame after
//! each chunk. `Throughput::Elements` is the number of frames, so the
//! per-frame time is the reported time divided by [`FRAMES`].

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tally_wire::soup::{self, ClientPacket, FrameDecoder};
use tally_wire::*;

/// Frames in the stream.
const FRAMES: usize = 4096;
/// The decoder's maximum frame (type + payload) in bytes: the largest
/// message plus the type byte, with room to spare, as the gateway configures.
const MAX_FRAME_BYTES: usize = 64;

/// `FRAMES` `U` frames, each carrying a distinct order.
fn stream() -> Vec<u8> {
    let mut stream = Vec::with_capacity(FRAMES * (3 + Order::SIZE));
    let mut frame = [0u8; 3 + Order::SIZE];
    for i in 0..FRAMES as u64 {
        let order = Order::new(i, 7, 1000 + (i % 97) as u32, 1 + (i % 5) as u32)
            .with_client_seq(i as u32 + 1);
        let len = soup::write_unsequenced(&mut frame, order.as_bytes()).unwrap();
        stream.extend_from_slice(&frame[..len]);
    }
    stream
}

/// Feeds `stream` to `decoder` in `chunk_bytes` pieces and calls `on_frame`
/// for every frame; returns the number of frames.
#[inline(always)]
fn feed(
    decoder: &mut FrameDecoder,
    stream: &[u8],
    chunk_bytes: usize,
    mut on_frame: impl FnMut(&[u8]),
) -> usize {
    let mut frames = 0;
    for chunk in stream.chunks(chunk_bytes) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let taken = decoder.extend(rest);
            rest = &rest[taken..];
            while let Some(frame) = decoder.next_frame().expect("well-formed stream") {
                on_frame(frame);
                frames += 1;
            }
        }
    }
    frames
}

fn decode(c: &mut Criterion) {
    let stream = stream();
    let mut group = c.benchmark_group("soup_decode");
    group.throughput(Throughput::Elements(FRAMES as u64));
    for chunk_bytes in [1448, 16 * 1024, 7] {
        let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
        // Frames only: find each frame's bounds.
        group.bench_with_input(
            BenchmarkId::new("next_frame", chunk_bytes),
            &chunk_bytes,
            |b, &chunk_bytes| {
                b.iter(|| {
                    let frames = feed(
                        &mut decoder,
                        black_box(&stream),
                        black_box(chunk_bytes),
                        |frame| {
                            black_box(frame);
                        },
                    );
                    assert_eq!(frames, FRAMES);
                    assert_eq!(decoder.buffered(), 0);
                })
            },
        );
        // The gateway's path: frame, packet type, message validation.
        group.bench_with_input(
            BenchmarkId::new("next_frame+ClientPacket+Message", chunk_bytes),
            &chunk_bytes,
            |b, &chunk_bytes| {
                b.iter(|| {
                    feed(
                        &mut decoder,
                        black_box(&stream),
                        black_box(chunk_bytes),
                        |frame| {
                            if let Ok(ClientPacket::Unsequenced(message)) =
                                ClientPacket::parse(frame)
                            {
                                let _ = black_box(Message::parse(message));
                            }
                        },
                    )
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
