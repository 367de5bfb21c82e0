//! Proves the encode and decode paths allocate nothing: a counting global
//! allocator records allocations made by this thread while they run.
//!
//! This test crate needs `unsafe` to implement `GlobalAlloc`; the library
//! itself stays `#![forbid(unsafe_code)]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tally_wire::mold::{self, MoldPacket, PacketBuilder, ReRequest, Session};
use tally_wire::soup::{self, ClientPacket, FrameDecoder, ServerPacket};
use tally_wire::*;

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` with the caller's arguments, so
// `System` upholds the `GlobalAlloc` contract; the counter is a const-initialised
// thread-local `Cell`, which itself never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: forwarded unchanged; `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations this thread made while running `f`.
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn encode_and_decode_do_not_allocate() {
    let session = Session::from_str("DAY1").unwrap();
    let mut packet_buf = [0u8; 1400];
    let mut frame_buf = [0u8; 256];
    let mut decoder = FrameDecoder::new(1024); // the one allocation, at start-up
    let mut checksum = 0u64;

    let allocations = allocations_in(|| {
        for i in 0..1000u64 {
            // Stream messages: build, stamp in place, parse.
            let order = Order::new(i, 1, 2, 3).with_client_seq(i as u32);
            let mut bytes = [0u8; Order::SIZE];
            bytes.copy_from_slice(order.as_bytes());
            header_mut(&mut bytes).unwrap().timestamp_ns = i.into();
            let Ok(Message::Order(parsed)) = Message::parse(&bytes) else {
                panic!()
            };
            checksum += parsed.order_id.get();
            let _ = Message::parse_prefix(&bytes).unwrap();

            // MoldUDP64: build, parse, iterate.
            let mut builder = PacketBuilder::new(&mut packet_buf, 1400, session, i);
            while builder.append(order.as_bytes()).is_ok() {}
            let len = builder.finish();
            let packet = MoldPacket::parse(&packet_buf[..len]).unwrap();
            for (seq, message) in packet.messages() {
                checksum += seq + Message::parse(message).unwrap().header().client_seq.get() as u64;
            }
            let n = mold::write_heartbeat(&mut packet_buf, session, i);
            let _ = MoldPacket::parse(&packet_buf[..n]).unwrap();
            let request = ReRequest::new(session, i, 10);
            let _ = ReRequest::parse(request.as_bytes()).unwrap();

            // SoupBinTCP: encode, frame-decode, parse; acks.
            let n = soup::write_login_request(&mut frame_buf, "alice", "pw", session, i).unwrap();
            decoder.extend(&frame_buf[..n]);
            let n = soup::write_unsequenced(&mut frame_buf, order.as_bytes()).unwrap();
            decoder.extend(&frame_buf[..n]);
            while let Some(frame) = decoder.next_frame().unwrap() {
                match ClientPacket::parse(frame).unwrap() {
                    ClientPacket::LoginRequest { requested_seq, .. } => checksum += requested_seq,
                    ClientPacket::Unsequenced(m) => {
                        checksum += Message::parse(m).unwrap().as_bytes().len() as u64
                    }
                    _ => unreachable!(),
                }
            }
            let ack = Accepted::new(i as u32, i, i);
            let n = soup::write_sequenced(&mut frame_buf, ack.as_bytes()).unwrap();
            let ServerPacket::Sequenced(payload) = ServerPacket::parse(&frame_buf[2..n]).unwrap()
            else {
                panic!()
            };
            checksum += Ack::parse(payload).unwrap().stream_seq();
            let n = soup::write_login_accepted(&mut frame_buf, session, i).unwrap();
            let _ = ServerPacket::parse(&frame_buf[2..n]).unwrap();
        }
    });
    assert!(checksum > 0);
    // The counter does see allocations.
    assert_eq!(allocations_in(|| drop(std::hint::black_box(vec![1u8]))), 1);
    assert_eq!(allocations, 0, "encode/decode allocated");
}
