//! `Message::parse`, `Message::parse_prefix` and the typed
//! `WireMessage::parse` on arbitrary bytes: never panic, and agree with each
//! other and with the fixed size of each type.

use tally_wire::*;

/// The check libFuzzer and the suite run on one input.
pub fn check(data: &[u8]) {
    // Whole block.
    match Message::parse(data) {
        Ok(message) => {
            assert_eq!(message.as_bytes(), data);
            assert_eq!(message.msg_type(), data[0]);
            assert_eq!(message_size(data[0]), Some(data.len()));
            assert_eq!(message.header().as_bytes(), &data[..Header::SIZE]);
            assert!(message.is_command() ^ message.is_event());
        }
        Err(MessageError::Truncated { needed, available }) => {
            assert_eq!(available, data.len());
            assert!(needed > available);
        }
        Err(MessageError::UnknownType(t)) => {
            assert_eq!(t, data[0]);
            assert_eq!(message_size(t), None);
        }
        Err(MessageError::WrongLength {
            msg_type,
            expected,
            actual,
        }) => {
            assert_eq!(msg_type, data[0]);
            assert_eq!(message_size(msg_type), Some(expected));
            assert!(actual > expected);
        }
        Err(e @ MessageError::UnexpectedType { .. }) => panic!("Message::parse gave {e:?}"),
    }

    // The typed view agrees with the enum.
    let typed = <Order as WireMessage>::parse(data);
    match (Message::parse(data), typed) {
        (Ok(Message::Order(a)), Ok(b)) => assert_eq!(a, b),
        (Ok(Message::Order(_)), Err(e)) => panic!("Order::parse failed ({e:?}) on an order"),
        (_, Ok(_)) => panic!("Order::parse accepted what Message::parse did not call an order"),
        (_, Err(_)) => {}
    }

    // A stream of messages, each length implied by its type.
    let mut rest = data;
    while !rest.is_empty() {
        match Message::parse_prefix(rest) {
            Ok((message, after)) => {
                let len = message.as_bytes().len();
                assert_eq!(len + after.len(), rest.len());
                assert_eq!(message.as_bytes(), &rest[..len]);
                assert_eq!(Message::parse(&rest[..len]), Ok(message));
                rest = after;
            }
            Err(e) => {
                // Only an unknown type or too few bytes stop a stream, and
                // the whole-block parse says the same.
                assert_eq!(Message::parse(rest).err(), Some(e));
                break;
            }
        }
    }
}
