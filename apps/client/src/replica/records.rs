//! What a replica shows outside (cells, holds, orders, what `apply` did, its
//! counters) and the 16-byte cell it stores.

/// One inventory cell (location, sku) as seen from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Cell {
    /// Units on hand.
    pub on_hand: u32,
    /// Units held by open holds.
    pub reserved: u32,
    /// `on_hand − reserved` (never below 0; a replica counts a violation if an
    /// event makes reserved exceed on_hand).
    pub available: u32,
    /// Sequence number of the last event that changed the cell; 0 = no event
    /// ever named it. In a warehouse's own replica a version with
    /// [`PROVISIONAL_VERSION_BIT`](super::PROVISIONAL_VERSION_BIT) set means "changed by a decision not yet
    /// back from the stream".
    pub version: u64,
}

/// An open hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hold {
    /// Its key: the stream sequence number of the `V` that placed it (with
    /// [`CARRIED_HOLD_BIT`](super::CARRIED_HOLD_BIT) for holds carried over from an earlier session).
    pub cmd_seq: u64,
    /// The client that placed it, `(origin, hold_id)`, when this replica saw
    /// the `V` (always, unless it joined mid-stream or forgot the command).
    pub client: Option<(u16, u64)>,
    /// Location id.
    pub location: u16,
    /// SKU id.
    pub sku: u32,
    /// Units held.
    pub qty: u32,
    /// When the warehouse expires it, nanoseconds since the Unix epoch.
    pub expires_at_ns: u64,
}

/// An accepted order, from the client-id history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrderRecord {
    /// The client that placed it.
    pub origin: u16,
    /// The client's order id.
    pub order_id: u64,
    /// Location the stock was taken from (chosen by the warehouse for
    /// location 0).
    pub location: u16,
    /// SKU id.
    pub sku: u32,
    /// Quantity when accepted.
    pub qty: u32,
    /// Quantity now (after modifies; 0 once cancelled).
    pub remaining: u32,
    /// Stream sequence number of the `O`.
    pub cmd_seq: u64,
    /// Stream sequence number of the last command that changed it (the `O`
    /// itself, or its latest accepted `M`/`X`).
    pub last_cmd_seq: u64,
}

/// What [`Replica::apply`](super::Replica::apply) did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Applied {
    /// `seq` was not after [`Replica::last_seq`](super::Replica::last_seq): already applied, skipped.
    Ignored,
    /// A command, remembered as pending until its outcome arrives.
    Recorded,
    /// An event, applied. `answers` is the sequence number of the pending
    /// command this event answered (resolved), if any.
    Event {
        /// The command this event answered, if it answered one.
        answers: Option<u64>,
    },
}

/// Counts of everything unusual a replica met. All zero on a healthy stream
/// with adequate limits, except the plain tallies (`messages`, `commands`,
/// `events`, `rejects`, `gateway_rejects`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReplicaCounters {
    /// Messages applied (commands and events).
    pub messages: u64,
    /// Commands recorded.
    pub commands: u64,
    /// Events applied.
    pub events: u64,
    /// `J` events.
    pub rejects: u64,
    /// `j` events.
    pub gateway_rejects: u64,
    /// Messages skipped because their seq was not after `last_seq`.
    pub stale: u64,
    /// Events that would have made on_hand or reserved negative, on_hand
    /// overflow, or reserved exceed on_hand (see [`Replica::oversold`](super::Replica::oversold)).
    pub violations: u64,
    /// Cell events naming a SKU or location missing from the directory (the
    /// id is registered on the fly with a blank symbol or name).
    pub unknown_refs: u64,
    /// Cell events that could not be applied (location 0, or no room to
    /// register an unknown SKU or location).
    pub dropped_events: u64,
    /// Directory entries dropped because the SKU table was full.
    pub sku_overflow: u64,
    /// Directory entries dropped because the location table was full, or
    /// naming location 0.
    pub location_overflow: u64,
    /// Holds not recorded because the hold table was full (reserved is still
    /// exact).
    pub hold_overflow: u64,
    /// Client-id records evicted from the full history.
    pub ids_evicted: u64,
    /// Pending commands overwritten before their outcome arrived.
    pub pending_evicted: u64,
    /// Outcomes whose command this replica no longer remembered (so the order
    /// or id could not be recorded).
    pub unattributed: u64,
    /// Events that contradict the replica's records (an id recorded twice, a
    /// hold placed twice): signs of a faulty authority.
    pub anomalies: u64,
}

// ---------------------------------------------------------------------------
// Internal storage.

/// One cell as stored: 16 bytes, so 1 M SKUs × 16 locations take 256 MiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CellState {
    pub on_hand: u32,
    pub reserved: u32,
    pub version: u64,
}

impl CellState {
    #[inline]
    pub fn available(&self) -> u32 {
        self.on_hand.saturating_sub(self.reserved)
    }

    #[inline]
    pub(super) fn public(&self) -> Cell {
        Cell {
            on_hand: self.on_hand,
            reserved: self.reserved,
            available: self.available(),
            version: self.version,
        }
    }
}
