//! What a client with a role may submit.

use tally_config::gateway::Role;
use tally_wire::{message_size, reject_reason, Header};

use crate::link::INBOUND_MESSAGE_BYTES_MAX;

/// The `j` reason for a stream message a client with `role` submits, or 0
/// when it is valid: unknown type `T`, wrong length `W`, not permitted `P`.
pub fn validate(message: &[u8], role: Role) -> u8 {
    let Some(&msg_type) = message.first() else {
        return reject_reason::UNKNOWN_TYPE;
    };
    let Some(size) = message_size(msg_type) else {
        return reject_reason::UNKNOWN_TYPE;
    };
    if message.len() != size {
        return reject_reason::WRONG_LENGTH;
    }
    if !role.permits(msg_type) {
        return reject_reason::NOT_PERMITTED;
    }
    debug_assert!((Header::SIZE..=INBOUND_MESSAGE_BYTES_MAX).contains(&size));
    0
}
