//! Slots of the client-id history, the hold table and the pending-command
//! ring.

use tally_wire::Message;

use super::{Hold, COMMAND_SIZE_MAX};

/// Kinds of client id in the history.
pub mod id_kind {
    pub const ORDER: u8 = b'O';
    pub const HOLD: u8 = b'V';
    pub const TRANSFER: u8 = b'T';
}

/// One record of the client-id history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdRecord {
    pub id: u64,
    pub cmd_seq: u64,
    pub last_cmd_seq: u64,
    pub sku: u32,
    pub qty: u32,
    pub remaining: u32,
    pub location: u16,
    pub origin: u16,
    pub kind: u8,
}

/// Hold slot flags.
pub const HOLD_IN_USE: u8 = 1;
pub const HOLD_CLIENT_KNOWN: u8 = 2;

/// One slot of the hold table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldSlot {
    pub cmd_seq: u64,
    pub expires_at_ns: u64,
    pub hold_id: u64,
    pub sku: u32,
    pub qty: u32,
    pub heap_pos: u32,
    pub location: u16,
    pub origin: u16,
    pub flags: u8,
}

impl HoldSlot {
    pub(super) fn public(&self) -> Hold {
        Hold {
            cmd_seq: self.cmd_seq,
            client: (self.flags & HOLD_CLIENT_KNOWN != 0).then_some((self.origin, self.hold_id)),
            location: self.location,
            sku: self.sku,
            qty: self.qty,
            expires_at_ns: self.expires_at_ns,
        }
    }

    #[inline]
    pub(super) fn expiry_key(&self) -> (u64, u64) {
        (self.expires_at_ns, self.cmd_seq)
    }
}

/// Pending slot states.
pub const PENDING_EMPTY: u8 = 0;
pub const PENDING_UNRESOLVED: u8 = 1;
pub const PENDING_RESOLVED: u8 = 2;

/// One slot of the pending-command ring: the command's bytes, verbatim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingSlot {
    pub seq: u64,
    pub state: u8,
    pub len: u8,
    pub bytes: [u8; COMMAND_SIZE_MAX],
}

impl PendingSlot {
    pub(super) const EMPTY: Self = Self {
        seq: 0,
        state: PENDING_EMPTY,
        len: 0,
        bytes: [0; COMMAND_SIZE_MAX],
    };

    #[inline]
    pub fn message(&self) -> Message<'_> {
        Message::parse(&self.bytes[..usize::from(self.len)])
            .expect("pending slots hold validated commands")
    }
}

/// How an outcome event finds the command it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolve {
    /// A replica: by the event's cmd_seq, or for `E(R)`/`I` the oldest
    /// pending command when it matches.
    Stream,
    /// The warehouse applying its own decision about the command at this seq.
    Command(u64),
    /// The warehouse applying an event that answers no command (expiry,
    /// snapshot broadcast).
    Nothing,
}
