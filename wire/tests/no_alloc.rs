//! Proves the encode and decode paths allocate nothing: the shared counting
//! global allocator (`tally_runtime::alloc_count`) records allocations made by
//! this thread while they run.
//!
//! The `unsafe` of `GlobalAlloc` lives in `tally-runtime` (a dev-dependency
//! only); this library stays `#![forbid(unsafe_code)]`.

use tally_runtime::alloc_count::{counting, CountingAllocator};
use tally_wire::mold::{self, MoldPacket, PacketBuilder, ReRequest, Session};
use tally_wire::soup::{self, ClientPacket, FrameDecoder, ServerPacket};
use tally_wire::*;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn encode_and_decode_do_not_allocate() {
    let session = Session::from_str("DAY1").unwrap();
    let mut packet_buf = [0u8; 1400];
    let mut frame_buf = [0u8; 256];
    let mut decoder = FrameDecoder::new(1024); // the one allocation, at start-up
    let mut checksum = 0u64;

    let ((), allocations) = counting(|| {
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
    assert_eq!(counting(|| drop(std::hint::black_box(vec![1u8]))).1, 1);
    assert_eq!(allocations, 0, "encode/decode allocated");
}
