//! `MoldPacket::parse` and its message iterator on arbitrary datagrams:
//! never panic; an accepted packet's blocks tile the datagram exactly, are
//! numbered consecutively, and `PacketBuilder` (or the heartbeat and
//! end-of-session writers) rebuild the same bytes from them.

use tally_wire::mold::{self, MoldError, MoldHeader, MoldPacket, PacketBuilder, PacketKind};
use tally_wire::Message;

/// The check libFuzzer and the suite run on one input.
pub fn check(data: &[u8]) {
    let packet = match MoldPacket::parse(data) {
        Ok(packet) => packet,
        Err(MoldError::TooShort { len }) => {
            assert_eq!(len, data.len());
            assert!(len < MoldHeader::SIZE);
            return;
        }
        Err(MoldError::BlockPastEnd { index, offset }) => {
            assert!(offset >= MoldHeader::SIZE && offset <= data.len());
            assert!(index < u16::from_be_bytes([data[18], data[19]]));
            return;
        }
        Err(MoldError::TrailingBytes { extra }) => {
            assert!(extra > 0 && extra <= data.len() - MoldHeader::SIZE);
            return;
        }
        Err(e) => panic!("unexpected error {e:?}"),
    };
    assert_eq!(packet.header().as_bytes(), &data[..MoldHeader::SIZE]);

    let mut blocks_bytes = 0;
    let mut expected_seq = packet.sequence();
    let mut count = 0u16;
    for (seq, message) in packet.messages() {
        assert_eq!(seq, expected_seq);
        expected_seq = expected_seq.wrapping_add(1);
        blocks_bytes += mold::BLOCK_LENGTH_SIZE + message.len();
        count += 1;
        // Blocks are opaque to the packet layer; decoding them must not panic.
        let _ = Message::parse(message);
    }
    assert_eq!(count, packet.count());
    assert_eq!(packet.messages().len(), usize::from(count));
    assert_eq!(MoldHeader::SIZE + blocks_bytes, data.len());
    assert_eq!(packet.next_seq(), expected_seq);

    let mut buf = vec![0u8; data.len().max(MoldHeader::SIZE)];
    let rebuilt = match packet.kind() {
        PacketKind::EndOfSession => {
            assert_eq!(count, 0);
            mold::write_end_of_session(&mut buf, packet.session(), packet.sequence())
        }
        PacketKind::Heartbeat => {
            assert_eq!(count, 0);
            mold::write_heartbeat(&mut buf, packet.session(), packet.sequence())
        }
        PacketKind::Data => {
            let mut builder =
                PacketBuilder::new(&mut buf, data.len(), packet.session(), packet.sequence());
            for (_, message) in packet.messages() {
                builder
                    .append(message)
                    .expect("the same blocks fit the same length");
            }
            assert_eq!(builder.next_seq(), packet.next_seq());
            assert_eq!(builder.remaining_bytes(), 0);
            builder.finish()
        }
    };
    assert_eq!(&buf[..rebuilt], data);
}
