//! The values that cross between the gateway loop and the sequencer loop.
//!
//! Both directions are `rtrb` SPSC rings of fixed-size `Copy` values: nothing
//! is allocated per message and a full ring hands the value back (back-pressure,
//! counted by the producer). The gateway never waits on the sequencer.

/// Largest stream message a client may submit, in bytes. Every type in
/// DESIGN.md §3 fits (the largest, `H`, is 41 bytes); the slack keeps the
/// struct at one cache line.
pub const INBOUND_MESSAGE_BYTES_MAX: usize = 48;

/// A message on its way to the sequencer (gateway → sequencer ring).
///
/// `bytes[..len]` is a complete stream message whose header already carries
/// the submitter's origin (stamped by the gateway from the login) and
/// client_seq. A message the gateway found invalid arrives here as a `j`
/// (gateway reject) message, so that it is recorded on the stream too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Inbound {
    /// Submitter's client id (same as the header's origin), for the ack route.
    pub origin: u16,
    /// Length of the message in `bytes`.
    pub len: u8,
    /// 0 when the message is a valid command or event; the reject reason when
    /// the gateway turned it into a `j` message. Echoed back in the outcome so
    /// the sequencer never reads message bodies.
    pub reject_reason: u8,
    /// Submitter's client_seq (same as the header's), for the ack route.
    pub client_seq: u32,
    /// The message bytes; only `..len` is meaningful.
    pub bytes: [u8; INBOUND_MESSAGE_BYTES_MAX],
}

impl Inbound {
    /// The message bytes.
    pub fn message(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The message bytes, for stamping the header in place.
    pub fn message_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..usize::from(self.len)]
    }

    /// Builds an inbound value from a message. Panics (a bug) when the message
    /// is larger than [`INBOUND_MESSAGE_BYTES_MAX`]: the gateway validates the
    /// length before it gets here.
    pub fn new(origin: u16, client_seq: u32, reject_reason: u8, message: &[u8]) -> Self {
        assert!(message.len() <= INBOUND_MESSAGE_BYTES_MAX);
        let mut bytes = [0u8; INBOUND_MESSAGE_BYTES_MAX];
        bytes[..message.len()].copy_from_slice(message);
        Inbound {
            origin,
            len: message.len() as u8,
            reject_reason,
            client_seq,
            bytes,
        }
    }
}

/// What happened to one [`Inbound`] (sequencer → gateway ring).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Submitter's client id.
    pub origin: u16,
    /// Submitter's client_seq.
    pub client_seq: u32,
    /// Stream sequence number the message got; 0 when it was dropped.
    pub stream_seq: u64,
    /// Sequencer timestamp, nanoseconds since the Unix epoch; 0 when dropped.
    pub timestamp_ns: u64,
    /// What the sequencer did with it.
    pub kind: OutcomeKind,
}

/// The sequencer's verdict on one inbound message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Sequenced; answer with a `k` ack.
    Accepted,
    /// Sequenced as a `j` gateway reject with this reason; answer with a `j` ack.
    Rejected { reason: u8 },
    /// Not sequenced: its client_seq was already sequenced (a resend). The
    /// gateway filters these first, so this is only seen after a race.
    Duplicate,
    /// Not sequenced: its client_seq skipped ahead of the last sequenced one.
    /// A protocol error; the gateway closes the session.
    SkippedAhead,
}

const _: () = assert!(std::mem::size_of::<Inbound>() == 64);
