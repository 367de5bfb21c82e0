//! `Ack::parse` on arbitrary sequenced-data payloads: never panics, accepts
//! exactly a 21-byte `k` or a 14-byte `j`, and re-encodes to the same bytes.

use tally_wire::*;

/// The check libFuzzer and the suite run on one input.
pub fn check(data: &[u8]) {
    match Ack::parse(data) {
        Ok(ack) => {
            assert_eq!(ack.as_bytes(), data);
            let again = match ack {
                Ack::Accepted(a) => {
                    assert_eq!(data.len(), Accepted::SIZE);
                    Accepted::new(a.client_seq.get(), a.stream_seq.get(), a.timestamp_ns.get())
                        .as_bytes()
                        .to_vec()
                }
                Ack::Rejected(r) => {
                    assert_eq!(data.len(), Rejected::SIZE);
                    Rejected::new(r.client_seq.get(), r.stream_seq.get(), r.reason)
                        .as_bytes()
                        .to_vec()
                }
            };
            assert_eq!(again, data);
            assert_eq!(ack.client_seq().to_be_bytes(), data[1..5]);
            assert_eq!(ack.stream_seq().to_be_bytes(), data[5..13]);
        }
        Err(MessageError::Truncated { needed, available }) => {
            assert_eq!(available, data.len());
            assert!(needed > available);
        }
        Err(MessageError::UnknownType(t)) => {
            assert_eq!(t, data[0]);
            assert!(t != Accepted::TYPE && t != Rejected::TYPE);
        }
        Err(MessageError::WrongLength {
            msg_type,
            expected,
            actual,
        }) => {
            assert_eq!(msg_type, data[0]);
            assert_eq!(actual, data.len());
            assert!(actual > expected);
        }
        Err(e) => panic!("unexpected error {e:?}"),
    }
}
