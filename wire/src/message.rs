//! Stream messages (DESIGN.md §3): the 15-byte [`Header`], one zerocopy struct
//! per command and event type, the borrowed typed view [`Message`], and the
//! reason/code constants that fill their `u8` fields.
//!
//! Every struct is `#[repr(C)]`, unaligned, big-endian and exactly as wide as
//! the DESIGN table says (a compile-time assertion checks each `SIZE`). Bodies
//! are fixed width, so a message's length is implied by its type byte:
//! [`message_size`].

use core::fmt;
use core::mem::size_of;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub use zerocopy::byteorder::network_endian::{I32, U16, U32, U64};

/// The header every stream message starts with (DESIGN.md §3), 15 bytes.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | `msg_type`: ASCII letter naming the message type |
/// | 1 | 2 | `origin`: client id of the submitter (0 = the appliance), stamped by the gateway |
/// | 3 | 4 | `client_seq`: the submitter's message number (1, 2, 3… per client) |
/// | 7 | 8 | `timestamp_ns`: nanoseconds since the Unix epoch, stamped by the sequencer |
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq, Hash,
)]
pub struct Header {
    /// Message type: one ASCII letter (`b'O'`, `b'D'`, …).
    pub msg_type: u8,
    /// Client id of the submitter; 0 = the appliance itself. Stamped by the gateway.
    pub origin: U16,
    /// The submitter's message number, 1, 2, 3… per client. Stamped by the client.
    pub client_seq: U32,
    /// Nanoseconds since the Unix epoch. Stamped by the sequencer.
    pub timestamp_ns: U64,
}

const _: () = assert!(size_of::<Header>() == Header::SIZE);

impl Header {
    /// Size of the header in bytes.
    pub const SIZE: usize = 15;

    /// A header of type `msg_type` with origin 0, client_seq 0 and timestamp 0
    /// (what a client sends before the gateway and sequencer stamp it).
    pub fn new(msg_type: u8) -> Self {
        Self {
            msg_type,
            origin: U16::ZERO,
            client_seq: U32::ZERO,
            timestamp_ns: U64::ZERO,
        }
    }

    /// The header's wire bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        IntoBytes::as_bytes(self)
    }
}

/// What every stream message struct has in common: its type byte, its fixed
/// size in bytes, and a leading [`Header`].
pub trait WireMessage: FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned + Copy {
    /// The type byte (offset 0) of this message.
    const TYPE: u8;
    /// The exact size of this message in bytes, header included.
    const SIZE: usize;

    /// The leading header.
    fn header(&self) -> &Header;

    /// The leading header, mutable (to stamp origin, client_seq or timestamp).
    fn header_mut(&mut self) -> &mut Header;

    /// The typed view of this message.
    fn as_message(&self) -> Message<'_>;

    /// Views `block` as this message type. Validates that `block` is exactly
    /// [`Self::SIZE`] bytes and starts with [`Self::TYPE`]; never panics.
    fn parse(block: &[u8]) -> Result<&Self, MessageError> {
        let Some(&msg_type) = block.first() else {
            return Err(MessageError::Truncated {
                needed: 1,
                available: 0,
            });
        };
        if msg_type != Self::TYPE {
            return Err(MessageError::UnexpectedType {
                expected: Self::TYPE,
                actual: msg_type,
            });
        }
        view::<Self>(block)
    }
}

/// Views exactly `block` as `T`, with the length errors of [`Message::parse`].
fn view<T: WireMessage>(block: &[u8]) -> Result<&T, MessageError> {
    if block.len() < T::SIZE {
        return Err(MessageError::Truncated {
            needed: T::SIZE,
            available: block.len(),
        });
    }
    T::ref_from_bytes(block).map_err(|_| MessageError::WrongLength {
        msg_type: T::TYPE,
        expected: T::SIZE,
        actual: block.len(),
    })
}

/// Why bytes are not a valid stream message (or ack, see [`crate::ack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageError {
    /// Fewer bytes than the message needs: `needed` is the size of the type
    /// named by the first byte, or 1 when there is no byte at all.
    Truncated {
        /// Bytes the message needs.
        needed: usize,
        /// Bytes there were.
        available: usize,
    },
    /// The type byte names no known message.
    UnknownType(u8),
    /// The block is longer than the fixed size of its type.
    WrongLength {
        /// The type byte.
        msg_type: u8,
        /// The type's size in bytes.
        expected: usize,
        /// The block's length in bytes.
        actual: usize,
    },
    /// A known type, but not the one asked for (from [`WireMessage::parse`]).
    UnexpectedType {
        /// The type asked for.
        expected: u8,
        /// The type byte found.
        actual: u8,
    },
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MessageError::Truncated { needed, available } => write!(
                f,
                "message truncated: needs {needed} bytes, only {available} available"
            ),
            MessageError::UnknownType(t) => {
                write!(f, "unknown message type {}", AsciiByte(t))
            }
            MessageError::WrongLength {
                msg_type,
                expected,
                actual,
            } => write!(
                f,
                "wrong length for message type {}: expected {expected} bytes, got {actual}",
                AsciiByte(msg_type)
            ),
            MessageError::UnexpectedType { expected, actual } => write!(
                f,
                "unexpected message type {}: expected {}",
                AsciiByte(actual),
                AsciiByte(expected)
            ),
        }
    }
}

impl std::error::Error for MessageError {}

/// Displays a type byte as `'O'` when printable, `0x07` otherwise.
pub(crate) struct AsciiByte(pub(crate) u8);

impl fmt::Display for AsciiByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", self.0 as char)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

macro_rules! messages {
    ($(
        $(#[$meta:meta])*
        $name:ident = $type:literal, $size:literal {
            $( $(#[$fmeta:meta])* $field:ident : $wire:ty => $native:ty ),* $(,)?
        }
    )*) => {
        $(
            $(#[$meta])*
            #[repr(C)]
            #[derive(
                FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
                Clone, Copy, Debug, PartialEq, Eq, Hash,
            )]
            pub struct $name {
                /// The common header; `header.msg_type` is [`Self::TYPE`].
                pub header: Header,
                $( $(#[$fmeta])* pub $field: $wire, )*
            }

            const _: () = assert!(size_of::<$name>() == $name::SIZE);
            const _: () = assert!($name::SIZE <= MAX_MESSAGE_SIZE);

            impl $name {
                /// The type byte of this message.
                pub const TYPE: u8 = $type;
                /// The size of this message in bytes, header included.
                pub const SIZE: usize = $size;

                /// Builds the message with a fresh header: this type, origin 0,
                /// client_seq 0, timestamp 0.
                #[allow(clippy::too_many_arguments)]
                pub fn new($($field: $native),*) -> Self {
                    Self {
                        header: Header::new(Self::TYPE),
                        $( $field: $field.into(), )*
                    }
                }

                /// Replaces origin, client_seq and timestamp with those of
                /// `header`; the type byte stays [`Self::TYPE`].
                pub fn with_header(mut self, header: Header) -> Self {
                    self.header = Header { msg_type: Self::TYPE, ..header };
                    self
                }

                /// Sets the origin (client id; 0 = the appliance).
                pub fn with_origin(mut self, origin: u16) -> Self {
                    self.header.origin = origin.into();
                    self
                }

                /// Sets the client's message number.
                pub fn with_client_seq(mut self, client_seq: u32) -> Self {
                    self.header.client_seq = client_seq.into();
                    self
                }

                /// Sets the timestamp, nanoseconds since the Unix epoch.
                pub fn with_timestamp_ns(mut self, timestamp_ns: u64) -> Self {
                    self.header.timestamp_ns = timestamp_ns.into();
                    self
                }

                /// The message's wire bytes ([`Self::SIZE`] of them).
                #[inline]
                pub fn as_bytes(&self) -> &[u8] {
                    IntoBytes::as_bytes(self)
                }
            }

            impl WireMessage for $name {
                const TYPE: u8 = $type;
                const SIZE: usize = $size;

                fn header(&self) -> &Header {
                    &self.header
                }

                fn header_mut(&mut self) -> &mut Header {
                    &mut self.header
                }

                fn as_message(&self) -> Message<'_> {
                    Message::$name(self)
                }
            }

            impl<'a> From<&'a $name> for Message<'a> {
                fn from(message: &'a $name) -> Self {
                    Message::$name(message)
                }
            }
        )*

        /// A validated stream message borrowed from a byte buffer: one variant
        /// per message type, named like its struct.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Message<'a> {
            $(
                #[doc = concat!("Type `", stringify!($type), "`: [`", stringify!($name), "`].")]
                $name(&'a $name),
            )*
        }

        /// The fixed size in bytes of messages of type `msg_type` (header
        /// included), or `None` when the type is unknown.
        #[inline]
        pub fn message_size(msg_type: u8) -> Option<usize> {
            match msg_type {
                $( $type => Some($size), )*
                _ => None,
            }
        }

        impl<'a> Message<'a> {
            /// Views `block`, which must be exactly one message, as a typed
            /// message. Validates the type byte and that the length equals the
            /// type's size; never panics.
            ///
            /// Errors: empty input is `Truncated { needed: 1, available: 0 }`;
            /// an unknown type byte is `UnknownType`; fewer bytes than the
            /// type's size is `Truncated`; more is `WrongLength`.
            #[inline]
            pub fn parse(block: &'a [u8]) -> Result<Self, MessageError> {
                let Some(&msg_type) = block.first() else {
                    return Err(MessageError::Truncated { needed: 1, available: 0 });
                };
                match msg_type {
                    $( $type => view::<$name>(block).map(Message::$name), )*
                    _ => Err(MessageError::UnknownType(msg_type)),
                }
            }

            /// The header.
            #[inline]
            pub fn header(&self) -> &'a Header {
                match *self {
                    $( Message::$name(m) => &m.header, )*
                }
            }

            /// The message's bytes, exactly its type's size.
            #[inline]
            pub fn as_bytes(&self) -> &'a [u8] {
                match *self {
                    $( Message::$name(m) => IntoBytes::as_bytes(m), )*
                }
            }
        }
    };
}

/// The size in bytes of the largest stream message ([`HoldPlaced`]).
pub const MAX_MESSAGE_SIZE: usize = 41;

messages! {
    // ---- Commands -------------------------------------------------------

    /// `O` order: take `qty` of `sku` from `location` (0 = the warehouse
    /// chooses). 33 bytes.
    Order = b'O', 33 {
        /// Client-chosen id, unique per origin. Offset 15.
        order_id: U64 => u64,
        /// Location id; 0 = any. Offset 23.
        location: U16 => u16,
        /// SKU id. Offset 25.
        sku: U32 => u32,
        /// Quantity in units. Offset 29.
        qty: U32 => u32,
    }

    /// `M` modify order quantity. 27 bytes.
    ModifyOrder = b'M', 27 {
        /// The order to modify. Offset 15.
        order_id: U64 => u64,
        /// The new quantity in units. Offset 23.
        new_qty: U32 => u32,
    }

    /// `X` cancel order. 23 bytes.
    CancelOrder = b'X', 23 {
        /// The order to cancel. Offset 15.
        order_id: U64 => u64,
    }

    /// `V` reserve: a hold with a time-to-live. 37 bytes.
    Reserve = b'V', 37 {
        /// Client-chosen id, unique per origin. Offset 15.
        hold_id: U64 => u64,
        /// Location id. Offset 23.
        location: U16 => u16,
        /// SKU id. Offset 25.
        sku: U32 => u32,
        /// Quantity in units. Offset 29.
        qty: U32 => u32,
        /// Time to live in milliseconds. Offset 33.
        ttl_ms: U32 => u32,
    }

    /// `C` confirm hold (it becomes a sale). 23 bytes.
    ConfirmHold = b'C', 23 {
        /// The hold to confirm. Offset 15.
        hold_id: U64 => u64,
    }

    /// `K` release hold. 23 bytes.
    ReleaseHold = b'K', 23 {
        /// The hold to release. Offset 15.
        hold_id: U64 => u64,
    }

    /// `T` transfer between locations. 35 bytes.
    Transfer = b'T', 35 {
        /// Client-chosen id, unique per origin. Offset 15.
        transfer_id: U64 => u64,
        /// Source location id. Offset 23.
        from: U16 => u16,
        /// Destination location id. Offset 25.
        to: U16 => u16,
        /// SKU id. Offset 27.
        sku: U32 => u32,
        /// Quantity in units. Offset 31.
        qty: U32 => u32,
    }

    /// `Q` recount: set on-hand. 33 bytes.
    Recount = b'Q', 33 {
        /// Location id. Offset 15.
        location: U16 => u16,
        /// SKU id. Offset 17.
        sku: U32 => u32,
        /// Counted on-hand quantity in units. Offset 21.
        on_hand: U32 => u32,
        /// The cell version (stream sequence number) the count assumes;
        /// 0 = unconditional. Offset 25.
        expected_version: U64 => u64,
    }

    /// `P` adjust: restock, return, shrink. 26 bytes.
    Adjust = b'P', 26 {
        /// Location id. Offset 15.
        location: U16 => u16,
        /// SKU id. Offset 17.
        sku: U32 => u32,
        /// Signed change of on-hand, in units. Offset 21.
        delta: I32 => i32,
        /// Why: a [`delta_reason`] byte. Offset 25.
        reason: u8 => u8,
    }

    // ---- Events ---------------------------------------------------------

    /// `N` add to a directory (an addition to DESIGN.md, role `ops`): a new
    /// SKU or location while trading. The warehouse decides it and answers
    /// with the directory event every replica applies (`R` or `L`), or
    /// `J`. 36 bytes.
    DirectoryAdd = b'N', 36 {
        /// Which directory: [`directory_kind`] `R` (SKU) or `L` (location).
        /// Offset 15.
        kind: u8 => u8,
        /// The id to give it; 0 = the warehouse picks the lowest free one.
        /// A location id must fit in 16 bits. Offset 16.
        id: U32 => u32,
        /// Symbol or name, ASCII right-padded with spaces ([`pad_ascii`]).
        /// Offset 20.
        name: [u8; 16] => [u8; 16],
    }

    /// `R` SKU directory entry. 35 bytes.
    SkuDirectory = b'R', 35 {
        /// SKU id. Offset 15.
        sku: U32 => u32,
        /// Symbol, ASCII right-padded with spaces ([`pad_ascii`]). Offset 19.
        symbol: [u8; 16] => [u8; 16],
    }

    /// `L` location directory entry. 33 bytes.
    LocationDirectory = b'L', 33 {
        /// Location id. Offset 15.
        location: U16 => u16,
        /// Name, ASCII right-padded with spaces ([`pad_ascii`]). Offset 17.
        name: [u8; 16] => [u8; 16],
    }

    /// `I` inventory level (absolute). 29 bytes.
    InventoryLevel = b'I', 29 {
        /// Location id. Offset 15.
        location: U16 => u16,
        /// SKU id. Offset 17.
        sku: U32 => u32,
        /// On-hand quantity in units. Offset 21.
        on_hand: U32 => u32,
        /// Reserved (held) quantity in units. Offset 25.
        reserved: U32 => u32,
    }

    /// `D` on-hand delta. 34 bytes.
    OnHandDelta = b'D', 34 {
        /// Location id. Offset 15.
        location: U16 => u16,
        /// SKU id. Offset 17.
        sku: U32 => u32,
        /// Signed change of on-hand, in units. Offset 21.
        delta: I32 => i32,
        /// Why: a [`delta_reason`] byte. Offset 25.
        reason: u8 => u8,
        /// Stream sequence number of the command this answers. Offset 26.
        cmd_seq: U64 => u64,
    }

    /// `H` hold placed. 41 bytes.
    HoldPlaced = b'H', 41 {
        /// Stream sequence number of the `V` command. Offset 15.
        cmd_seq: U64 => u64,
        /// Location id. Offset 23.
        location: U16 => u16,
        /// SKU id. Offset 25.
        sku: U32 => u32,
        /// Quantity in units. Offset 29.
        qty: U32 => u32,
        /// Expiry, nanoseconds since the Unix epoch. Offset 33.
        expires_at_ns: U64 => u64,
    }

    /// `E` hold ended. 34 bytes.
    HoldEnded = b'E', 34 {
        /// Stream sequence number of the `V` command. Offset 15.
        cmd_seq: U64 => u64,
        /// Location id. Offset 23.
        location: U16 => u16,
        /// SKU id. Offset 25.
        sku: U32 => u32,
        /// Quantity in units. Offset 29.
        qty: U32 => u32,
        /// How: a [`hold_outcome`] byte. Offset 33.
        outcome: u8 => u8,
    }

    /// `J` command rejected. 24 bytes.
    CommandRejected = b'J', 24 {
        /// Stream sequence number of the rejected command. Offset 15.
        cmd_seq: U64 => u64,
        /// Why: a [`reject_reason`] byte. Offset 23.
        reason: u8 => u8,
    }

    /// `S` system event. 16 bytes.
    SystemEvent = b'S', 16 {
        /// What: a [`system_code`] byte. Offset 15.
        code: u8 => u8,
    }

    /// `j` gateway reject: origin and client_seq are the rejected client's;
    /// written by the appliance. 16 bytes.
    GatewayReject = b'j', 16 {
        /// Why: a [`reject_reason`] byte. Offset 15.
        reason: u8 => u8,
    }
}

impl<'a> Message<'a> {
    /// Views the first message of `bytes` (its length implied by its type)
    /// and returns it with the bytes after it. Never panics.
    ///
    /// Errors: empty input is `Truncated { needed: 1, available: 0 }`; an
    /// unknown type byte is `UnknownType`; fewer bytes than the type's size is
    /// `Truncated`.
    #[inline]
    pub fn parse_prefix(bytes: &'a [u8]) -> Result<(Self, &'a [u8]), MessageError> {
        let Some(&msg_type) = bytes.first() else {
            return Err(MessageError::Truncated {
                needed: 1,
                available: 0,
            });
        };
        let Some(size) = message_size(msg_type) else {
            return Err(MessageError::UnknownType(msg_type));
        };
        let Some((block, rest)) = bytes.split_at_checked(size) else {
            return Err(MessageError::Truncated {
                needed: size,
                available: bytes.len(),
            });
        };
        Ok((Self::parse(block)?, rest))
    }

    /// The type byte.
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.header().msg_type
    }

    /// Whether this is a command (from clients, decided by the warehouse).
    #[inline]
    pub fn is_command(&self) -> bool {
        is_command(self.msg_type())
    }

    /// Whether this is an event (applied by every replica).
    #[inline]
    pub fn is_event(&self) -> bool {
        is_event(self.msg_type())
    }
}

/// Whether `msg_type` is a command type: `O M X V C K T Q P N`.
#[inline]
pub fn is_command(msg_type: u8) -> bool {
    matches!(
        msg_type,
        b'O' | b'M' | b'X' | b'V' | b'C' | b'K' | b'T' | b'Q' | b'P' | b'N'
    )
}

/// Whether `msg_type` is an event type: `R L I D H E J S j`.
#[inline]
pub fn is_event(msg_type: u8) -> bool {
    matches!(
        msg_type,
        b'R' | b'L' | b'I' | b'D' | b'H' | b'E' | b'J' | b'S' | b'j'
    )
}

/// The header of `message` for stamping in place (origin by the gateway,
/// timestamp by the sequencer), or `None` when `message` is shorter than
/// [`Header::SIZE`]. Does not check the type byte.
#[inline]
pub fn header_mut(message: &mut [u8]) -> Option<&mut Header> {
    Header::mut_from_prefix(message)
        .ok()
        .map(|(header, _)| header)
}

/// `reason` of [`OnHandDelta`] and [`Adjust`].
pub mod delta_reason {
    /// Order placed.
    pub const ORDER: u8 = b'O';
    /// Order quantity modified.
    pub const MODIFY: u8 = b'M';
    /// Order cancelled.
    pub const CANCEL: u8 = b'X';
    /// Hold confirmed (became a sale).
    pub const HOLD_CONFIRMED: u8 = b'C';
    /// Transfer between locations.
    pub const TRANSFER: u8 = b'T';
    /// Adjustment or restock.
    pub const ADJUST: u8 = b'A';
    /// Customer return.
    pub const RETURN: u8 = b'N';
    /// Recount correction.
    pub const RECOUNT: u8 = b'Q';
}

/// `reason` of [`CommandRejected`], [`GatewayReject`] and the `j` ack.
pub mod reject_reason {
    /// Insufficient stock.
    pub const INSUFFICIENT: u8 = b'I';
    /// Unknown SKU.
    pub const UNKNOWN_SKU: u8 = b'U';
    /// Unknown location.
    pub const UNKNOWN_LOCATION: u8 = b'L';
    /// `expected_version` differs from the cell's version.
    pub const VERSION_CONFLICT: u8 = b'V';
    /// The order/hold/transfer id was already used by this origin.
    pub const DUPLICATE_ID: u8 = b'D';
    /// No such order or hold.
    pub const NO_SUCH: u8 = b'N';
    /// Zero or invalid quantity.
    pub const INVALID_QUANTITY: u8 = b'Z';
    /// Not permitted for this client's role.
    pub const NOT_PERMITTED: u8 = b'P';
    /// Unknown message type.
    pub const UNKNOWN_TYPE: u8 = b'T';
    /// Wrong length for its message type.
    pub const WRONG_LENGTH: u8 = b'W';
    /// Over the session's rate limit (gateway only). An addition to
    /// DESIGN.md's list: excess input is answered, never silently dropped.
    pub const RATE_LIMITED: u8 = b'R';
}

/// `kind` of [`DirectoryAdd`].
pub mod directory_kind {
    /// A SKU (answered with `R`).
    pub const SKU: u8 = b'R';
    /// A location (answered with `L`).
    pub const LOCATION: u8 = b'L';
}

/// `outcome` of [`HoldEnded`].
pub mod hold_outcome {
    /// Confirmed: became a sale.
    pub const CONFIRMED: u8 = b'C';
    /// Released by the client.
    pub const RELEASED: u8 = b'R';
    /// Expired past its TTL.
    pub const EXPIRED: u8 = b'X';
}

/// `code` of [`SystemEvent`].
pub mod system_code {
    /// Start of session.
    pub const START_OF_SESSION: u8 = b'O';
    /// End of session.
    pub const END_OF_SESSION: u8 = b'C';
    /// The authority (warehouse) is online; its snapshot broadcast is complete.
    pub const AUTHORITY_ONLINE: u8 = b'W';
    /// An addition to DESIGN.md: the appliance was asked to end the session
    /// (rollover). Every command sequenced before it is decided; none after
    /// it is (written by the appliance, origin 0).
    pub const END_REQUESTED: u8 = b'E';
    /// An addition to DESIGN.md: the authority has decided everything
    /// before `E` and decides nothing more in this session (written by the
    /// warehouse, its last event of the session). The appliance ends the
    /// session right after it.
    pub const AUTHORITY_CLOSED: u8 = b'F';
}

/// Why a string cannot fill a space-padded ASCII field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextError {
    /// Longer than the field.
    TooLong {
        /// Length of the text in bytes.
        len: usize,
        /// Width of the field in bytes.
        max: usize,
    },
    /// A byte outside printable ASCII (0x20..=0x7E).
    NotPrintable {
        /// Position of the byte in the text.
        index: usize,
        /// The byte.
        byte: u8,
    },
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TextError::TooLong { len, max } => {
                write!(f, "text is {len} bytes, the field holds at most {max}")
            }
            TextError::NotPrintable { index, byte } => write!(
                f,
                "byte 0x{byte:02x} at index {index} is not printable ASCII"
            ),
        }
    }
}

impl std::error::Error for TextError {}

/// `s` as an `N`-byte field: printable ASCII (0x20..=0x7E), right-padded with
/// spaces. Errors when `s` is longer than `N` bytes or holds another byte.
pub fn pad_ascii<const N: usize>(s: &str) -> Result<[u8; N], TextError> {
    let bytes = s.as_bytes();
    if bytes.len() > N {
        return Err(TextError::TooLong {
            len: bytes.len(),
            max: N,
        });
    }
    if let Some(index) = bytes.iter().position(|b| !(b' '..=b'~').contains(b)) {
        return Err(TextError::NotPrintable {
            index,
            byte: bytes[index],
        });
    }
    let mut field = [b' '; N];
    field[..bytes.len()].copy_from_slice(bytes);
    Ok(field)
}

/// `field` without its right padding (trailing spaces).
pub fn trim_ascii(field: &[u8]) -> &[u8] {
    let end = field.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    &field[..end]
}

#[cfg(test)]
mod tests;
