//! The inventory replica: the state every application rebuilds from the one
//! ordered stream (DESIGN.md §3).
//!
//! A [`Replica`] holds
//! - every cell (location, sku): on_hand, reserved, available
//!   (= on_hand − reserved) and version (the sequence number of the last event
//!   that changed it), for the cells that exist: densely when `cells_max`
//!   covers every (sku, location), else sparsely in a slab with an
//!   open-addressing index ([`ReplicaLimits::cells_max`]), so memory grows
//!   with the cells a chain stocks, not with SKUs × locations;
//! - the SKU directory (sku `u32` ↔ symbol of ≤ 16 ASCII bytes) and the
//!   location directory (`u16` ↔ name);
//! - open holds, keyed by the stream sequence number of their `V`, with the
//!   origin and hold id of the client that placed them and an expiry heap;
//! - a first-in-first-out history of client ids: accepted orders (origin,
//!   order_id → location, sku, quantity, remaining) and the hold and transfer
//!   ids each origin has used, so that modify/cancel/confirm/release can be
//!   decided and duplicate ids detected;
//! - pending commands: each command seen on the stream, until the event that
//!   answers it arrives.
//!
//! Realtime contract: every table has a fixed capacity, allocated once in
//! [`Replica::new`] from [`ReplicaLimits`]; [`Replica::apply`] never
//! allocates, never blocks, and does bounded work (one hash probe sequence per
//! table it touches; the pending-command cursor advances amortised O(1) per
//! message). What does not fit is counted in [`ReplicaCounters`], never grown:
//! a full SKU or hold table drops the directory entry or hold record (cell
//! quantities stay exact, since every cell event carries its location, sku
//! and quantity); the client-id history evicts its oldest record; the pending
//! ring overwrites its oldest slot.
//!
//! Invariants: no event may make on_hand or reserved negative, nor reserved
//! exceed on_hand (the warehouse never emits one). A replica checks each event
//! and counts a violation ([`Replica::oversold`]) instead of wrapping: a
//! negative result is clamped at zero. The warehouse asserts the same
//! invariants before it emits.
//!
//! How outcome events find their command: `D`, `H` and `J` carry the
//! command's sequence number (`cmd_seq`). `E(R)` (release) carries the `V`'s
//! and `I` (recount) none; for these the replica relies on the warehouse
//! deciding commands strictly in stream order, so its outcomes come in the
//! order of their commands: the answer is the oldest still pending command,
//! when that is a `K` for the same hold (or a `Q` for the same cell).
//!
//! Session boundaries: holds carried over from an earlier session are
//! re-announced by the warehouse's snapshot broadcast with
//! [`CARRIED_HOLD_BIT`] set in their key; such an `H` registers the hold
//! without adding to reserved, because the `I` before it already carries the
//! cell's reserved quantity. A replica joining a new session starts from
//! [`Replica::clear`].
//!
//! Store nodes: [`Replica::keeping`] (or [`Replica::keep_only`] before
//! anything is applied) a [`LocationSet`] applies the whole stream but keeps
//! only those locations' cells and holds, in a cell table sized for those
//! locations (dense over them when `cells_max` allows: 16 bytes a kept
//! cell); its digest is the full state's [`Replica::digest_of`] that set.
//! The SKU directory (which every replica keeps whole) is indexed by id and
//! by symbol with 4-byte buckets (`CompactIndex`): with 1 M SKUs, 16 + 4
//! MiB of symbols and ids and 2 × 8 MiB of index.
//!
//! Threading: a `Replica` is plain owned data (`Send`), used by one thread.

use core::fmt;
use core::mem::size_of;

use tally_runtime::rand::mix64;
use tally_wire::{
    delta_reason, hold_outcome, pad_ascii, system_code, trim_ascii, HoldEnded, HoldPlaced,
    InventoryLevel, LocationDirectory, Message, OnHandDelta, Reserve, SkuDirectory,
};

/// Set in a hold key (`cmd_seq` of an `H`/`E`) for holds carried over from an
/// earlier session by the warehouse's snapshot broadcast. Stream sequence
/// numbers never reach 2^63, so such keys cannot collide with a `V` of the
/// current session.
pub const CARRIED_HOLD_BIT: u64 = 1 << 63;

/// Set in a cell's version while the warehouse has applied its own decision
/// to the cell but not yet seen that event come back on the stream; the low
/// 32 bits are the event's client_seq. Only a warehouse's replica ever holds
/// such versions (see `warehouse.rs`).
pub const PROVISIONAL_VERSION_BIT: u64 = 1 << 63;

/// The largest command ([`Reserve`]): what a pending slot must hold.
const COMMAND_SIZE_MAX: usize = Reserve::SIZE;

/// Capacities of every table of a [`Replica`], fixed at construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplicaLimits {
    /// Most SKUs in the directory.
    pub skus_max: u32,
    /// Most locations in the directory (location ids themselves may be any
    /// `u16` but 0).
    pub locations_max: u16,
    /// Most cells (location, sku) that exist: memory grows with this, not
    /// with `skus_max × locations_max`. When it is at least that product the
    /// cells are stored densely (no index: the cheapest layout); below it, in
    /// a slab with an open-addressing index. A cell event that needs a new
    /// cell in a full table is dropped (counted in `dropped_events`); the
    /// warehouse rejects the command instead.
    pub cells_max: u32,
    /// Most open holds.
    pub holds_max: u32,
    /// Length of the client-id history: accepted orders and used hold and
    /// transfer ids together. The oldest record is evicted when full.
    pub orders_max: u32,
    /// Pending commands remembered (rounded up to a power of two): a command
    /// whose answer has not arrived within this many stream messages is
    /// forgotten (counted).
    pub pending_max: u32,
}

impl ReplicaLimits {
    /// Small tables for tests and the sample inventory: 4096 SKUs × 16
    /// locations (every cell: 65 536), 4096 holds, 65 536 id records, 65 536
    /// pending commands.
    pub const fn small() -> Self {
        Self {
            skus_max: 4096,
            locations_max: 16,
            cells_max: 4096 * 16,
            holds_max: 4096,
            orders_max: 1 << 16,
            pending_max: 1 << 16,
        }
    }

    /// Checks every limit is usable; `Replica::new` asserts the same.
    pub fn validate(&self) -> Result<(), LimitsError> {
        const HALF: u32 = 1 << 31;
        if self.skus_max == 0 || self.skus_max > HALF {
            return Err(LimitsError("skus_max must be in 1..=2^31"));
        }
        if self.locations_max == 0 {
            return Err(LimitsError("locations_max must be at least 1"));
        }
        if self.holds_max == 0 || self.holds_max > HALF {
            return Err(LimitsError("holds_max must be in 1..=2^31"));
        }
        if self.orders_max == 0 || self.orders_max > HALF {
            return Err(LimitsError("orders_max must be in 1..=2^31"));
        }
        if self.pending_max == 0 || self.pending_max > HALF {
            return Err(LimitsError("pending_max must be in 1..=2^31"));
        }
        if self.cells_max == 0 || self.cells_max > HALF {
            return Err(LimitsError("cells_max must be in 1..=2^31"));
        }
        Ok(())
    }

    /// The limits of the appliance configuration's `[limits]` section.
    pub fn from_config(limits: &tally_config::LimitsConfig) -> Self {
        Self {
            skus_max: limits.skus_max,
            locations_max: limits.locations_max,
            cells_max: limits.cells_max,
            holds_max: limits.holds_max,
            orders_max: limits.orders_max,
            pending_max: limits.pending_max,
        }
    }

    /// Says, with the numbers, which limit is smaller than a state with
    /// `skus`, `locations` and `cells` needs (a snapshot's or inventory
    /// file's counts, or a stream's directory), if any.
    pub fn check_fits(&self, skus: u64, locations: u64, cells: u64) -> Result<(), String> {
        let mut short = Vec::new();
        if skus > u64::from(self.skus_max) {
            short.push(format!("skus_max = {} < {skus} SKUs", self.skus_max));
        }
        if locations > u64::from(self.locations_max) {
            short.push(format!(
                "locations_max = {} < {locations} locations",
                self.locations_max
            ));
        }
        if cells > u64::from(self.cells_max) {
            short.push(format!("cells_max = {} < {cells} cells", self.cells_max));
        }
        if short.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the state's limits are too small: {} (raise them in the configuration's \
                 [limits] section or with the --*-max flags)",
                short.join(", ")
            ))
        }
    }

    /// Whether cells are stored densely (`cells_max` covers every
    /// `skus_max × locations_max` cell).
    pub fn is_dense(&self) -> bool {
        u64::from(self.skus_max) * u64::from(self.locations_max) <= u64::from(self.cells_max)
    }
}

/// A set of location ids (a bitmap over every `u16`, 8 KiB): the locations a
/// store node keeps ([`Replica::keep_only`]) or a subset digest covers
/// ([`Replica::digest_of`]).
#[derive(Clone, PartialEq, Eq)]
pub struct LocationSet {
    words: Box<[u64]>,
    all: bool,
}

impl LocationSet {
    /// Every location.
    pub fn all() -> Self {
        Self {
            words: vec![u64::MAX; 1 << 10].into_boxed_slice(),
            all: true,
        }
    }

    /// Exactly `locations` (0, "any", is never a member).
    pub fn of(locations: &[u16]) -> Self {
        let mut words = vec![0u64; 1 << 10].into_boxed_slice();
        for &location in locations.iter().filter(|&&l| l != 0) {
            words[usize::from(location >> 6)] |= 1 << (location & 63);
        }
        Self { words, all: false }
    }

    /// Whether `location` is in the set.
    #[inline]
    pub fn contains(&self, location: u16) -> bool {
        self.words[usize::from(location >> 6)] & (1 << (location & 63)) != 0
    }

    /// Whether it is [`Self::all`].
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Number of members (65 535 for [`Self::all`]).
    pub fn len(&self) -> usize {
        let bits: u32 = self.words.iter().map(|w| w.count_ones()).sum();
        // Location 0 is never a member (all() sets its bit too).
        bits as usize - usize::from(self.all)
    }

    /// Whether it has no member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The members, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (1..=u16::MAX).filter(move |&l| self.contains(l))
    }
}

impl fmt::Debug for LocationSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.all {
            f.write_str("LocationSet(all)")
        } else {
            f.debug_set().entries(self.iter()).finish()
        }
    }
}

/// Why a [`ReplicaLimits`] is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitsError(pub &'static str);

impl fmt::Display for LimitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for LimitsError {}

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
    /// [`PROVISIONAL_VERSION_BIT`] set means "changed by a decision not yet
    /// back from the stream".
    pub version: u64,
}

/// An open hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hold {
    /// Its key: the stream sequence number of the `V` that placed it (with
    /// [`CARRIED_HOLD_BIT`] for holds carried over from an earlier session).
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

/// What [`Replica::apply`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Applied {
    /// `seq` was not after [`Replica::last_seq`]: already applied, skipped.
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
    /// overflow, or reserved exceed on_hand (see [`Replica::oversold`]).
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
    fn public(&self) -> Cell {
        Cell {
            on_hand: self.on_hand,
            reserved: self.reserved,
            available: self.available(),
            version: self.version,
        }
    }
}

/// Marks an unused bucket of a [`SlotIndex`].
const EMPTY: u64 = u64::MAX;

/// An open-addressing (linear probing) hash index from a key to a `u32` slot
/// of some backing array, where the key itself lives. Each 8-byte bucket
/// holds the slot and the low 32 bits of the key's hash: a probe compares
/// the hash bits first and reads the backing array only on a match, and
/// deletion finds every entry's home bucket from its own hash bits, never
/// from the backing array. Capacity is a power of two at least twice the
/// number of entries it may hold (and at most 2^32), so probe sequences stay
/// short.
#[derive(Clone, Debug)]
pub struct SlotIndex {
    buckets: Box<[u64]>,
    mask: usize,
    len: u32,
}

impl SlotIndex {
    fn with_entries_max(entries_max: u32) -> Self {
        let buckets = (entries_max as usize * 2).next_power_of_two().max(16);
        assert!(buckets <= 1 << 32);
        Self {
            buckets: vec![EMPTY; buckets].into_boxed_slice(),
            mask: buckets - 1,
            len: 0,
        }
    }

    #[inline]
    fn bucket(hash: u64, slot: u32) -> u64 {
        (hash << 32) | u64::from(slot)
    }

    /// The slot whose key matches (`is(slot)`), probing from `hash`.
    #[inline]
    fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = hash as u32;
        let mut i = hash as usize & self.mask;
        loop {
            let bucket = self.buckets[i];
            if bucket == EMPTY {
                return None;
            }
            if (bucket >> 32) as u32 == tag && is(bucket as u32) {
                return Some(bucket as u32);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Adds `slot` under `hash`. The caller checked the key is absent and
    /// that the backing array (sized for half the buckets) had room.
    #[inline]
    fn insert(&mut self, hash: u64, slot: u32) {
        assert!((self.len as usize) < self.buckets.len() / 2 + 1);
        let mut i = hash as usize & self.mask;
        while self.buckets[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = Self::bucket(hash, slot);
        self.len += 1;
    }

    /// Removes `slot` (filed under `hash`) with backward-shift deletion, so no
    /// tombstones accumulate. Returns whether it was there.
    #[inline]
    fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let wanted = Self::bucket(hash, slot);
        let mut i = hash as usize & self.mask;
        loop {
            let here = self.buckets[i];
            if here == EMPTY {
                return false;
            }
            if here == wanted {
                break;
            }
            i = (i + 1) & self.mask;
        }
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let moving = self.buckets[j];
            if moving == EMPTY {
                break;
            }
            let k = (moving >> 32) as usize & self.mask;
            // `moving` may stay at j when its home k lies cyclically in (i, j].
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                self.buckets[i] = moving;
                i = j;
            }
        }
        self.buckets[i] = EMPTY;
        self.len -= 1;
        true
    }

    fn clear(&mut self) {
        self.buckets.fill(EMPTY);
        self.len = 0;
    }

    fn memory_bytes(&self) -> usize {
        self.buckets.len() * size_of::<u64>()
    }
}

/// Marks an unused bucket of a [`CompactIndex`].
const COMPACT_EMPTY: u32 = u32::MAX;

/// A [`SlotIndex`] at half the memory: each 4-byte bucket holds only the
/// slot, so a probe reads the backing array for every occupied bucket it
/// passes (not only for a hash match), and deletion recomputes the home of
/// an entry it moves from the backing array's key (`hash_of(slot)`). Used
/// for the SKU directory's two indexes, the largest tables a store node
/// keeps (1 M SKUs: 8 MiB each instead of 16), where the key is always at
/// hand in the directory. Same sizing rule as [`SlotIndex`] (load at most
/// one half).
#[derive(Clone, Debug)]
pub struct CompactIndex {
    buckets: Box<[u32]>,
    mask: usize,
    len: u32,
}

impl CompactIndex {
    fn with_entries_max(entries_max: u32) -> Self {
        let buckets = (entries_max as usize * 2).next_power_of_two().max(16);
        assert!(buckets <= 1 << 32);
        Self {
            buckets: vec![COMPACT_EMPTY; buckets].into_boxed_slice(),
            mask: buckets - 1,
            len: 0,
        }
    }

    /// The slot whose key matches (`is(slot)`), probing from `hash`.
    #[inline]
    fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let mut i = hash as usize & self.mask;
        loop {
            let slot = self.buckets[i];
            if slot == COMPACT_EMPTY {
                return None;
            }
            if is(slot) {
                return Some(slot);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Adds `slot` under `hash`. The caller checked the key is absent.
    #[inline]
    fn insert(&mut self, hash: u64, slot: u32) {
        assert!((self.len as usize) < self.buckets.len() / 2 + 1);
        assert!(slot != COMPACT_EMPTY);
        let mut i = hash as usize & self.mask;
        while self.buckets[i] != COMPACT_EMPTY {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = slot;
        self.len += 1;
    }

    /// Removes `slot` (filed under `hash`) with backward-shift deletion;
    /// `hash_of` gives the hash of any other slot's key. Returns whether it
    /// was there.
    #[inline]
    fn remove(&mut self, hash: u64, slot: u32, hash_of: impl Fn(u32) -> u64) -> bool {
        let mut i = hash as usize & self.mask;
        loop {
            let here = self.buckets[i];
            if here == COMPACT_EMPTY {
                return false;
            }
            if here == slot {
                break;
            }
            i = (i + 1) & self.mask;
        }
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let moving = self.buckets[j];
            if moving == COMPACT_EMPTY {
                break;
            }
            let k = hash_of(moving) as usize & self.mask;
            // `moving` may stay at j when its home k lies cyclically in (i, j].
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                self.buckets[i] = moving;
                i = j;
            }
        }
        self.buckets[i] = COMPACT_EMPTY;
        self.len -= 1;
        true
    }

    fn clear(&mut self) {
        self.buckets.fill(COMPACT_EMPTY);
        self.len = 0;
    }

    fn memory_bytes(&self) -> usize {
        self.buckets.len() * size_of::<u32>()
    }
}

/// No cell: the end of a SKU's chain of cells.
const NO_CELL: u32 = u32::MAX;

/// The cells (location, sku) that exist, by (sku index, location index).
///
/// Layouts, chosen once from [`ReplicaLimits`] and the kept
/// [`LocationSet`]:
/// - **dense** when `cells_max ≥ skus_max × locations_max`: slot `sku index ×
///   locations_max + location index`, every slot exists (16 bytes a cell, no
///   index);
/// - **dense over kept locations** (a store node, [`Replica::keep_only`])
///   when `cells_max ≥ skus_max × k`, `k` the kept locations (at most
///   `locations_max`): a row of `k` columns per SKU, a kept location taking
///   the next free column when its first cell event arrives (16 bytes a kept
///   cell, no index: 1 M SKUs at one store take 16 MiB);
/// - **sparse** otherwise: a slab of `cells_max` cells filled in order of
///   first appearance, the key of each (`sku index << 16 | location index`),
///   a [`SlotIndex`] over the keys and, per SKU, a chain of its cells (for
///   "every location of this SKU" without a probe per location): about 40
///   bytes a cell. Cells are never removed, so a slot, once given, stays the
///   cell's for the table's life (iteration by slot is stable while cells
///   are added).
///
/// Lookups are one multiply (dense; plus one column read over kept
/// locations) or one probe sequence (sparse); neither allocates.
#[derive(Clone, Debug)]
pub struct CellTable {
    /// `Some(cells per SKU row)` when dense.
    dense_width: Option<u16>,
    /// Dense over kept locations: location index → column + 1 (0 = none
    /// yet), for every location index; empty otherwise (column = location
    /// index).
    columns: Box<[u16]>,
    /// Dense over kept locations: column → location index
    /// ([`NO_LOCATION`] while free).
    column_locations: Box<[u16]>,
    columns_used: u16,
    cells: Box<[CellState]>,
    keys: Box<[u64]>,
    sku_first: Box<[u32]>,
    next_of_sku: Box<[u32]>,
    index: SlotIndex,
    len: u32,
}

/// A column of a dense-over-kept-locations table no location took yet.
const NO_LOCATION: u16 = u16::MAX;

impl CellTable {
    /// A table with no room (what a replica holds while its table is made
    /// again).
    fn empty() -> Self {
        Self {
            dense_width: None,
            columns: Box::new([]),
            column_locations: Box::new([]),
            columns_used: 0,
            cells: Box::new([]),
            keys: Box::new([]),
            sku_first: Box::new([]),
            next_of_sku: Box::new([]),
            index: SlotIndex::with_entries_max(0),
            len: 0,
        }
    }

    /// The table for `limits` when the replica keeps `kept`.
    fn new(limits: &ReplicaLimits, kept: &LocationSet) -> Self {
        let empty = Self::empty();
        if limits.is_dense() && kept.is_all() {
            let slots = limits.skus_max as usize * usize::from(limits.locations_max);
            return Self {
                dense_width: Some(limits.locations_max),
                cells: vec![CellState::default(); slots].into_boxed_slice(),
                ..empty
            };
        }
        if !kept.is_all() {
            // At most locations_max locations ever get an index, so at most
            // that many kept ones need a column.
            let width = kept.len().clamp(1, usize::from(limits.locations_max)) as u16;
            let slots = limits.skus_max as usize * usize::from(width);
            if slots <= limits.cells_max as usize {
                return Self {
                    dense_width: Some(width),
                    columns: vec![0; usize::from(limits.locations_max)].into_boxed_slice(),
                    column_locations: vec![NO_LOCATION; usize::from(width)].into_boxed_slice(),
                    cells: vec![CellState::default(); slots].into_boxed_slice(),
                    ..empty
                };
            }
        }
        let cells = limits.cells_max as usize;
        Self {
            cells: vec![CellState::default(); cells].into_boxed_slice(),
            keys: vec![0; cells].into_boxed_slice(),
            sku_first: vec![NO_CELL; limits.skus_max as usize].into_boxed_slice(),
            next_of_sku: vec![NO_CELL; cells].into_boxed_slice(),
            index: SlotIndex::with_entries_max(limits.cells_max),
            ..empty
        }
    }

    #[inline]
    fn key(sku_index: u32, location_index: u16) -> u64 {
        (u64::from(sku_index) << 16) | u64::from(location_index)
    }

    /// The column of a location index in a dense table, if it has one.
    #[inline]
    fn column(&self, location_index: u16) -> Option<u16> {
        if self.columns.is_empty() {
            return Some(location_index);
        }
        match self.columns[usize::from(location_index)] {
            0 => None,
            column_plus_one => Some(column_plus_one - 1),
        }
    }

    /// The slot of the cell, if it exists.
    #[inline]
    pub fn find(&self, sku_index: u32, location_index: u16) -> Option<usize> {
        if let Some(width) = self.dense_width {
            let column = self.column(location_index)?;
            return Some(sku_index as usize * usize::from(width) + usize::from(column));
        }
        let key = Self::key(sku_index, location_index);
        let keys = &self.keys;
        self.index
            .find(mix64(key), |slot| keys[slot as usize] == key)
            .map(|slot| slot as usize)
    }

    /// The slot of the cell, adding it when it does not exist yet; `None`
    /// when the table is full.
    #[inline]
    pub fn find_or_insert(&mut self, sku_index: u32, location_index: u16) -> Option<usize> {
        if let Some(slot) = self.find(sku_index, location_index) {
            return Some(slot);
        }
        if let Some(width) = self.dense_width {
            // Dense over kept locations, and the location has no column yet.
            if self.columns_used == width {
                return None;
            }
            let column = self.columns_used;
            self.columns[usize::from(location_index)] = column + 1;
            self.column_locations[usize::from(column)] = location_index;
            self.columns_used += 1;
            return self.find(sku_index, location_index);
        }
        if self.len as usize == self.cells.len() {
            return None;
        }
        let slot = self.len;
        let key = Self::key(sku_index, location_index);
        self.keys[slot as usize] = key;
        self.cells[slot as usize] = CellState::default();
        self.next_of_sku[slot as usize] = self.sku_first[sku_index as usize];
        self.sku_first[sku_index as usize] = slot;
        self.index.insert(mix64(key), slot);
        self.len += 1;
        Some(slot as usize)
    }

    /// Whether the cell exists or a new one fits.
    #[inline]
    pub fn has_room_for(&self, sku_index: u32, location_index: u16) -> bool {
        match self.dense_width {
            Some(width) => self.column(location_index).is_some() || self.columns_used < width,
            None => {
                (self.len as usize) < self.cells.len()
                    || self.find(sku_index, location_index).is_some()
            }
        }
    }

    /// One past the highest slot that may hold a cell of the first
    /// `sku_count` SKUs; walk `0..end` with [`Self::key_of`].
    #[inline]
    pub fn slot_end(&self, sku_count: u32) -> usize {
        match self.dense_width {
            Some(width) => sku_count as usize * usize::from(width),
            None => self.len as usize,
        }
    }

    /// (sku index, location index) of the cell in `slot` (a location index
    /// of `u16::MAX` for a column no location took yet: such a cell has
    /// version 0).
    #[inline]
    pub fn key_of(&self, slot: usize) -> (u32, u16) {
        match self.dense_width {
            Some(width) => {
                let column = (slot % usize::from(width)) as u16;
                let location_index = if self.columns.is_empty() {
                    column
                } else {
                    self.column_locations[usize::from(column)]
                };
                ((slot / usize::from(width)) as u32, location_index)
            }
            None => {
                let key = self.keys[slot];
                ((key >> 16) as u32, key as u16)
            }
        }
    }

    /// Calls `f(location index, cell)` for every existing cell of the SKU at
    /// `sku_index` (dense: every location index below `location_count`;
    /// over kept locations: every column taken).
    #[inline]
    pub fn for_each_of_sku(
        &self,
        sku_index: u32,
        location_count: u16,
        mut f: impl FnMut(u16, &CellState),
    ) {
        match self.dense_width {
            Some(width) => {
                let row = sku_index as usize * usize::from(width);
                if self.columns.is_empty() {
                    for l in 0..location_count {
                        f(l, &self.cells[row + usize::from(l)]);
                    }
                } else {
                    for column in 0..self.columns_used {
                        let l = self.column_locations[usize::from(column)];
                        f(l, &self.cells[row + usize::from(column)]);
                    }
                }
            }
            None => {
                let mut slot = self.sku_first[sku_index as usize];
                while slot != NO_CELL {
                    let (_, l) = self.key_of(slot as usize);
                    f(l, &self.cells[slot as usize]);
                    slot = self.next_of_sku[slot as usize];
                }
            }
        }
    }

    /// Cells that exist (dense: every slot; dense over kept locations:
    /// every slot of the first `sku_count` rows in the columns taken).
    pub fn len(&self, sku_count: u32) -> usize {
        match self.dense_width {
            Some(_) if self.columns.is_empty() => self.cells.len(),
            Some(_) => sku_count as usize * usize::from(self.columns_used),
            None => self.len as usize,
        }
    }

    fn clear(&mut self) {
        self.cells.fill(CellState::default());
        self.columns.fill(0);
        self.column_locations.fill(NO_LOCATION);
        self.columns_used = 0;
        if self.dense_width.is_none() {
            self.keys.fill(0);
            self.sku_first.fill(NO_CELL);
            self.next_of_sku.fill(NO_CELL);
            self.index.clear();
            self.len = 0;
        }
    }

    fn memory_bytes(&self) -> usize {
        self.cells.len() * size_of::<CellState>()
            + self.columns.len() * size_of::<u16>()
            + self.column_locations.len() * size_of::<u16>()
            + self.keys.len() * size_of::<u64>()
            + self.sku_first.len() * size_of::<u32>()
            + self.next_of_sku.len() * size_of::<u32>()
            + self.index.memory_bytes()
    }
}

impl core::ops::Index<usize> for CellTable {
    type Output = CellState;

    #[inline]
    fn index(&self, slot: usize) -> &CellState {
        &self.cells[slot]
    }
}

impl core::ops::IndexMut<usize> for CellTable {
    #[inline]
    fn index_mut(&mut self, slot: usize) -> &mut CellState {
        &mut self.cells[slot]
    }
}

#[inline]
fn symbol_hash(symbol: &[u8; 16]) -> u64 {
    let lo = u64::from_le_bytes(symbol[..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(symbol[8..].try_into().expect("8 bytes"));
    mix64(lo ^ mix64(hi))
}

#[inline]
fn client_hash(origin: u16, kind: u8, id: u64) -> u64 {
    mix64(id ^ mix64((u64::from(origin) << 8) | u64::from(kind)))
}

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
    fn public(&self) -> Hold {
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
    fn expiry_key(&self) -> (u64, u64) {
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
    const EMPTY: Self = Self {
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

/// The inventory state rebuilt from the stream. See the module docs.
///
/// `Clone` copies every table (a start-up or test operation, never the hot
/// path).
#[derive(Clone)]
pub struct Replica {
    pub limits: ReplicaLimits,
    pub last_seq: u64,
    /// Seq of the last `S(W)` (authority online), 0 = not seen.
    pub authority_online_seq: u64,
    pub counters: ReplicaCounters,

    // SKU directory.
    pub sku_ids: Box<[u32]>,
    pub sku_symbols: Box<[[u8; 16]]>,
    pub sku_count: u32,
    sku_index: CompactIndex,
    symbol_index: CompactIndex,

    // Location directory.
    /// Location id → index + 1 (0 = unknown), for every `u16`.
    location_slot: Box<[u16]>,
    pub location_ids: Box<[u16]>,
    pub location_names: Box<[[u8; 16]]>,
    pub location_count: u16,

    /// The cells that exist ([`CellTable`]: dense or sparse).
    pub cells: CellTable,
    /// The locations whose cells and holds this replica keeps (a store
    /// node keeps its own; default: all).
    kept: LocationSet,

    // Open holds: slab + two indexes + expiry heap.
    pub holds: Box<[HoldSlot]>,
    hold_free: Box<[u32]>,
    hold_free_len: u32,
    hold_by_cmd: SlotIndex,
    hold_by_client: SlotIndex,
    hold_heap: Box<[u32]>,
    hold_heap_len: u32,

    // Client-id history (ring, oldest evicted).
    pub ids: Box<[IdRecord]>,
    pub ids_next: u32,
    pub ids_len: u32,
    id_index: SlotIndex,

    // Pending commands, slot = seq & mask.
    pub pending: Box<[PendingSlot]>,
    pending_mask: u64,
    /// No command before this seq is unresolved (a lower bound, advanced
    /// lazily).
    pub pending_oldest: u64,
}

// A replica moves to the thread that owns it.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Replica>();
};

impl fmt::Debug for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("limits", &self.limits)
            .field("last_seq", &self.last_seq)
            .field("skus", &self.sku_count)
            .field("locations", &self.location_count)
            .field("holds", &self.hold_count())
            .field("ids", &self.ids_len)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// A replica with every table allocated to `limits` (the only allocation
    /// it ever makes). Panics if `limits` fails [`ReplicaLimits::validate`].
    pub fn new(limits: ReplicaLimits) -> Self {
        Self::keeping(limits, LocationSet::all())
    }

    /// A store node ([`Self::keep_only`] `kept`) with every table allocated
    /// to `limits`, its cell table sized for the kept locations only: dense
    /// over them (16 bytes a kept cell, no index) when `cells_max` covers
    /// `skus_max` × the kept locations, else sparse with `cells_max` cells.
    /// Unlike [`Self::new`] then [`Self::keep_only`], it never allocates the
    /// cell table for every location, so the process's peak memory is the
    /// store node's. Panics if `limits` fails [`ReplicaLimits::validate`].
    pub fn keeping(limits: ReplicaLimits, kept: LocationSet) -> Self {
        if let Err(e) = limits.validate() {
            panic!("invalid replica limits {limits:?}: {e}");
        }
        let skus = limits.skus_max as usize;
        let locations = usize::from(limits.locations_max);
        let holds = limits.holds_max as usize;
        let pending = (limits.pending_max as usize).next_power_of_two();
        let mut replica = Self {
            limits,
            last_seq: 0,
            authority_online_seq: 0,
            counters: ReplicaCounters::default(),
            sku_ids: vec![0; skus].into_boxed_slice(),
            sku_symbols: vec![[b' '; 16]; skus].into_boxed_slice(),
            sku_count: 0,
            sku_index: CompactIndex::with_entries_max(limits.skus_max),
            symbol_index: CompactIndex::with_entries_max(limits.skus_max),
            location_slot: vec![0; 1 << 16].into_boxed_slice(),
            location_ids: vec![0; locations].into_boxed_slice(),
            location_names: vec![[b' '; 16]; locations].into_boxed_slice(),
            location_count: 0,
            cells: CellTable::new(&limits, &kept),
            kept,
            holds: vec![HoldSlot::default(); holds].into_boxed_slice(),
            hold_free: vec![0; holds].into_boxed_slice(),
            hold_free_len: 0,
            hold_by_cmd: SlotIndex::with_entries_max(limits.holds_max),
            hold_by_client: SlotIndex::with_entries_max(limits.holds_max),
            hold_heap: vec![0; holds].into_boxed_slice(),
            hold_heap_len: 0,
            ids: vec![IdRecord::default(); limits.orders_max as usize].into_boxed_slice(),
            ids_next: 0,
            ids_len: 0,
            id_index: SlotIndex::with_entries_max(limits.orders_max),
            pending: vec![PendingSlot::EMPTY; pending].into_boxed_slice(),
            pending_mask: pending as u64 - 1,
            pending_oldest: 1,
        };
        replica.reset_hold_free_list();
        replica
    }

    /// Forgets everything (as if just constructed), without allocating.
    pub fn clear(&mut self) {
        self.last_seq = 0;
        self.authority_online_seq = 0;
        self.counters = ReplicaCounters::default();
        self.sku_ids.fill(0);
        self.sku_symbols.fill([b' '; 16]);
        self.sku_count = 0;
        self.sku_index.clear();
        self.symbol_index.clear();
        self.location_slot.fill(0);
        self.location_ids.fill(0);
        self.location_names.fill([b' '; 16]);
        self.location_count = 0;
        self.cells.clear();
        self.holds.fill(HoldSlot::default());
        self.hold_by_cmd.clear();
        self.hold_by_client.clear();
        self.hold_heap_len = 0;
        self.reset_hold_free_list();
        self.clear_ids();
        self.clear_pending();
    }

    /// Empties the directories and cells (an inventory load that failed half
    /// way); there can be no holds without SKUs.
    pub fn clear_inventory(&mut self) {
        assert_eq!(self.hold_count(), 0, "clearing inventory under open holds");
        self.sku_ids.fill(0);
        self.sku_symbols.fill([b' '; 16]);
        self.sku_count = 0;
        self.sku_index.clear();
        self.symbol_index.clear();
        self.location_slot.fill(0);
        self.location_ids.fill(0);
        self.location_names.fill([b' '; 16]);
        self.location_count = 0;
        self.cells.clear();
    }

    /// Empties the client-id history.
    pub fn clear_ids(&mut self) {
        self.ids.fill(IdRecord::default());
        self.ids_next = 0;
        self.ids_len = 0;
        self.id_index.clear();
    }

    /// Empties the pending ring and restarts the seq count at 0 (a new
    /// session).
    pub fn clear_pending(&mut self) {
        self.pending.fill(PendingSlot::EMPTY);
        self.pending_oldest = 1;
    }

    fn reset_hold_free_list(&mut self) {
        // Slot 0 is handed out first.
        let n = self.holds.len() as u32;
        for (i, free) in self.hold_free.iter_mut().enumerate() {
            *free = n - 1 - i as u32;
        }
        self.hold_free_len = n;
    }

    /// The limits this replica was built with.
    pub fn limits(&self) -> ReplicaLimits {
        self.limits
    }

    /// Makes this replica a store node: it still applies the whole stream
    /// (directories, pending commands, client ids), but keeps only the cells
    /// and open holds of `locations`. Its [`Self::digest`] then equals the
    /// full state's [`Self::digest_of`] the same set. Call it before applying
    /// anything: the cell table is then made again for the kept locations
    /// only (as [`Self::keeping`] makes it; a start-up allocation, the old
    /// table freed first). Called later, what is already kept stays and the
    /// table keeps its size.
    pub fn keep_only(&mut self, locations: LocationSet) {
        let untouched = self.last_seq == 0 && self.counters.events == 0 && self.sku_count == 0;
        self.kept = locations;
        if untouched {
            self.cells = CellTable::empty();
            self.cells = CellTable::new(&self.limits, &self.kept);
        }
    }

    /// The locations whose cells this replica keeps.
    pub fn kept_locations(&self) -> &LocationSet {
        &self.kept
    }

    /// The first limit this replica met, with the numbers, if any: a
    /// directory, hold or cell table that could not take what the stream
    /// carried (its state is then less than the stream's). Applications
    /// check it once caught up and say so instead of failing later.
    pub fn limit_met(&self) -> Option<String> {
        let c = &self.counters;
        let limits = self.limits;
        if c.sku_overflow > 0 {
            return Some(format!(
                "skus_max = {}: {} SKU directory entries did not fit",
                limits.skus_max, c.sku_overflow
            ));
        }
        if c.location_overflow > 0 {
            return Some(format!(
                "locations_max = {}: {} location directory entries did not fit",
                limits.locations_max, c.location_overflow
            ));
        }
        if c.hold_overflow > 0 {
            return Some(format!(
                "holds_max = {}: {} holds did not fit",
                limits.holds_max, c.hold_overflow
            ));
        }
        if c.dropped_events > 0 {
            return Some(format!(
                "cells_max = {} (skus_max {}, locations_max {}): {} cell events could not be \
                 applied ({} cells stored)",
                limits.cells_max,
                limits.skus_max,
                limits.locations_max,
                c.dropped_events,
                self.cell_count()
            ));
        }
        None
    }

    /// Cells stored (dense layout: every slot of the table; a store node's
    /// dense table: every SKU of the directory at each kept location seen).
    pub fn cell_count(&self) -> usize {
        self.cells.len(self.sku_count)
    }

    /// Sequence number of the last message applied (0 = none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Sequence number of the last `S(W)` (authority online) seen; 0 = none.
    pub fn authority_online_seq(&self) -> u64 {
        self.authority_online_seq
    }

    /// Everything unusual this replica counted.
    pub fn counters(&self) -> &ReplicaCounters {
        &self.counters
    }

    /// Number of events that would have made on_hand or reserved negative (or
    /// reserved exceed on_hand); 0 on a correct stream. Such events are
    /// clamped, never wrapped.
    pub fn oversold(&self) -> u64 {
        self.counters.violations
    }

    /// Bytes allocated by this replica's tables (fixed at construction).
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>()
            + self.sku_ids.len() * size_of::<u32>()
            + self.sku_symbols.len() * size_of::<[u8; 16]>()
            + self.sku_index.memory_bytes()
            + self.symbol_index.memory_bytes()
            + self.location_slot.len() * size_of::<u16>()
            + self.location_ids.len() * size_of::<u16>()
            + self.location_names.len() * size_of::<[u8; 16]>()
            + self.cells.memory_bytes()
            + self.holds.len() * size_of::<HoldSlot>()
            + self.hold_free.len() * size_of::<u32>()
            + self.hold_by_cmd.memory_bytes()
            + self.hold_by_client.memory_bytes()
            + self.hold_heap.len() * size_of::<u32>()
            + self.ids.len() * size_of::<IdRecord>()
            + self.id_index.memory_bytes()
            + self.pending.len() * size_of::<PendingSlot>()
    }

    // -----------------------------------------------------------------------
    // Applying the stream.

    /// Applies the stream message at `seq`. Messages must come in stream
    /// order; one whose `seq` is not after [`Self::last_seq`] is skipped
    /// (counted as stale), so replaying an overlap after a snapshot is
    /// harmless. Commands are remembered as pending; events change state and
    /// resolve the command they answer. Never allocates.
    #[inline]
    pub fn apply(&mut self, seq: u64, message: &Message) -> Applied {
        if seq <= self.last_seq {
            self.counters.stale += 1;
            return Applied::Ignored;
        }
        self.last_seq = seq;
        self.counters.messages += 1;
        if message.is_command() {
            self.record_pending(seq, message.as_bytes());
            return Applied::Recorded;
        }
        let answers = self.apply_event(seq, message, Resolve::Stream);
        Applied::Event { answers }
    }

    /// Remembers the command at `seq` until its outcome arrives.
    #[inline]
    fn record_pending(&mut self, seq: u64, bytes: &[u8]) {
        self.counters.commands += 1;
        let slot = &mut self.pending[(seq & self.pending_mask) as usize];
        if slot.state == PENDING_UNRESOLVED {
            self.counters.pending_evicted += 1;
        }
        slot.seq = seq;
        slot.state = PENDING_UNRESOLVED;
        slot.len = bytes.len() as u8;
        slot.bytes[..bytes.len()].copy_from_slice(bytes);
    }

    /// The pending slot of `seq` if it still holds that command.
    #[inline]
    pub fn pending_slot(&self, seq: u64) -> Option<&PendingSlot> {
        let slot = &self.pending[(seq & self.pending_mask) as usize];
        (slot.seq == seq && slot.state != PENDING_EMPTY).then_some(slot)
    }

    /// Marks the command at `seq` answered; true if it was pending.
    #[inline]
    fn resolve(&mut self, seq: u64) -> bool {
        let slot = &mut self.pending[(seq & self.pending_mask) as usize];
        if slot.seq == seq && slot.state == PENDING_UNRESOLVED {
            slot.state = PENDING_RESOLVED;
            true
        } else {
            false
        }
    }

    /// The oldest command still waiting for its outcome, if any.
    pub fn oldest_unresolved(&mut self) -> Option<u64> {
        let capacity = self.pending_mask + 1;
        let floor = (self.last_seq + 1).saturating_sub(capacity);
        if self.pending_oldest < floor {
            self.pending_oldest = floor;
        }
        while self.pending_oldest <= self.last_seq {
            let seq = self.pending_oldest;
            let slot = &self.pending[(seq & self.pending_mask) as usize];
            if slot.seq == seq && slot.state == PENDING_UNRESOLVED {
                return Some(seq);
            }
            self.pending_oldest += 1;
        }
        None
    }

    /// The next command at or after `from_seq` still waiting for its outcome.
    pub fn next_unresolved(&self, from_seq: u64) -> Option<u64> {
        let capacity = self.pending_mask + 1;
        let floor = (self.last_seq + 1).saturating_sub(capacity);
        let mut seq = from_seq.max(floor).max(1);
        while seq <= self.last_seq {
            let slot = &self.pending[(seq & self.pending_mask) as usize];
            if slot.seq == seq && slot.state == PENDING_UNRESOLVED {
                return Some(seq);
            }
            seq += 1;
        }
        None
    }

    /// Applies one event with `stamp` as the version of the cell it changes.
    /// Returns the command it answered.
    pub fn apply_event(&mut self, stamp: u64, message: &Message, resolve: Resolve) -> Option<u64> {
        self.counters.events += 1;
        match *message {
            Message::OnHandDelta(m) => self.on_delta(stamp, m),
            Message::HoldPlaced(m) => self.on_hold(stamp, m),
            Message::HoldEnded(m) => self.on_hold_end(stamp, m, resolve),
            Message::InventoryLevel(m) => self.on_level(stamp, m, resolve),
            Message::CommandRejected(m) => {
                self.counters.rejects += 1;
                let cmd_seq = m.cmd_seq.get();
                self.resolve(cmd_seq).then_some(cmd_seq)
            }
            Message::SkuDirectory(m) => {
                self.on_sku_directory(m);
                None
            }
            Message::LocationDirectory(m) => {
                self.on_location_directory(m);
                None
            }
            Message::SystemEvent(m) => {
                if m.code == system_code::AUTHORITY_ONLINE && stamp & PROVISIONAL_VERSION_BIT == 0 {
                    self.authority_online_seq = stamp;
                }
                None
            }
            Message::GatewayReject(_) => {
                self.counters.gateway_rejects += 1;
                None
            }
            _ => unreachable!("commands are recorded, not applied"),
        }
    }

    /// Records that a message at `seq` the warehouse had already applied
    /// came back on the stream: moves `last_seq`, and turns the provisional
    /// version `client_seq` left in the cell into `seq` (unless a later
    /// decision of the warehouse changed the cell again since).
    pub fn confirm_own(&mut self, seq: u64, client_seq: u32, message: &Message) -> bool {
        if seq <= self.last_seq {
            self.counters.stale += 1;
            return false;
        }
        self.last_seq = seq;
        self.counters.messages += 1;
        self.counters.events += 1;
        let cell = match *message {
            Message::OnHandDelta(m) => Some((m.location.get(), m.sku.get())),
            Message::HoldPlaced(m) => Some((m.location.get(), m.sku.get())),
            Message::HoldEnded(m) => Some((m.location.get(), m.sku.get())),
            Message::InventoryLevel(m) => Some((m.location.get(), m.sku.get())),
            Message::SystemEvent(m) => {
                if m.code == system_code::AUTHORITY_ONLINE {
                    self.authority_online_seq = seq;
                }
                None
            }
            _ => None,
        };
        if let Some((location, sku)) = cell {
            if let Some(i) = self.cell_slot(location, sku) {
                let version = &mut self.cells[i].version;
                let marker = PROVISIONAL_VERSION_BIT | u64::from(client_seq);
                if *version == marker || *version & PROVISIONAL_VERSION_BIT == 0 {
                    *version = seq;
                }
            }
        }
        true
    }

    fn on_sku_directory(&mut self, m: &SkuDirectory) {
        let sku = m.sku.get();
        let Some(index) = self.register_sku(sku) else {
            self.counters.sku_overflow += 1;
            return;
        };
        self.set_symbol(index, m.symbol);
    }

    fn on_location_directory(&mut self, m: &LocationDirectory) {
        let location = m.location.get();
        let Some(index) = self.register_location(location) else {
            self.counters.location_overflow += 1;
            return;
        };
        self.location_names[usize::from(index)] = m.name;
    }

    /// The index of `sku`, adding it (blank symbol) if there is room.
    pub fn register_sku(&mut self, sku: u32) -> Option<u32> {
        if let Some(index) = self.sku_slot(sku) {
            return Some(index);
        }
        if self.sku_count == self.limits.skus_max {
            return None;
        }
        let index = self.sku_count;
        self.sku_ids[index as usize] = sku;
        self.sku_symbols[index as usize] = [b' '; 16];
        self.sku_index.insert(mix64(u64::from(sku)), index);
        self.sku_count += 1;
        Some(index)
    }

    /// Gives the SKU at `index` a new symbol, keeping the symbol index exact
    /// (the newest SKU to take a symbol owns it).
    pub fn set_symbol(&mut self, index: u32, symbol: [u8; 16]) {
        let old = self.sku_symbols[index as usize];
        if old == symbol {
            if symbol != [b' '; 16] && self.symbol_slot(&symbol) != Some(index) {
                self.index_symbol(index, symbol);
            }
            return;
        }
        if old != [b' '; 16] && self.symbol_slot(&old) == Some(index) {
            let symbols = &self.sku_symbols;
            self.symbol_index.remove(symbol_hash(&old), index, |s| {
                symbol_hash(&symbols[s as usize])
            });
        }
        self.sku_symbols[index as usize] = symbol;
        if symbol != [b' '; 16] {
            self.index_symbol(index, symbol);
        }
    }

    fn index_symbol(&mut self, index: u32, symbol: [u8; 16]) {
        if let Some(other) = self.symbol_slot(&symbol) {
            let symbols = &self.sku_symbols;
            self.symbol_index.remove(symbol_hash(&symbol), other, |s| {
                symbol_hash(&symbols[s as usize])
            });
        }
        self.symbol_index.insert(symbol_hash(&symbol), index);
    }

    /// The index of `location`, adding it (blank name) if there is room.
    /// Location 0 ("any") is never a location.
    pub fn register_location(&mut self, location: u16) -> Option<u16> {
        if location == 0 {
            return None;
        }
        if let Some(index) = self.location_index(location) {
            return Some(index);
        }
        if self.location_count == self.limits.locations_max {
            return None;
        }
        let index = self.location_count;
        self.location_ids[usize::from(index)] = location;
        self.location_names[usize::from(index)] = [b' '; 16];
        self.location_slot[usize::from(location)] = index + 1;
        self.location_count += 1;
        Some(index)
    }

    /// The cell slot for an event, registering unknown ids on the fly (also
    /// in a store node, so every replica's directories agree) and adding the
    /// cell when it is new; `None` for a location this replica does not keep,
    /// or (counted) when there is no room.
    #[inline]
    fn event_cell(&mut self, location: u16, sku: u32) -> Option<usize> {
        let (s, l) = match (self.sku_slot(sku), self.location_index(location)) {
            (Some(s), Some(l)) => (s, l),
            _ => {
                if location == 0 {
                    self.counters.dropped_events += 1;
                    return None;
                }
                self.counters.unknown_refs += 1;
                match (self.register_sku(sku), self.register_location(location)) {
                    (Some(s), Some(l)) => (s, l),
                    _ => {
                        self.counters.dropped_events += 1;
                        return None;
                    }
                }
            }
        };
        if !self.kept.contains(location) {
            return None;
        }
        let slot = self.cells.find_or_insert(s, l);
        if slot.is_none() {
            self.counters.dropped_events += 1;
        }
        slot
    }

    fn on_delta(&mut self, stamp: u64, m: &OnHandDelta) -> Option<u64> {
        let (location, sku, delta) = (m.location.get(), m.sku.get(), m.delta.get());
        if let Some(i) = self.event_cell(location, sku) {
            let cell = &mut self.cells[i];
            let was_ok = cell.reserved <= cell.on_hand;
            let on_hand = i64::from(cell.on_hand) + i64::from(delta);
            cell.on_hand = if on_hand < 0 {
                self.counters.violations += 1;
                0
            } else if on_hand > i64::from(u32::MAX) {
                self.counters.violations += 1;
                u32::MAX
            } else {
                on_hand as u32
            };
            if was_ok && cell.reserved > cell.on_hand {
                self.counters.violations += 1;
            }
            cell.version = stamp;
        }
        let cmd_seq = m.cmd_seq.get();
        let first = self.resolve(cmd_seq);
        match m.reason {
            delta_reason::ORDER if first => self.record_order(cmd_seq, location, sku, delta),
            delta_reason::MODIFY | delta_reason::CANCEL if first => {
                self.change_order(cmd_seq, delta)
            }
            delta_reason::TRANSFER if first => self.record_transfer(cmd_seq),
            _ => {}
        }
        first.then_some(cmd_seq)
    }

    fn record_order(&mut self, cmd_seq: u64, location: u16, sku: u32, delta: i32) {
        let Some(Message::Order(order)) = self.pending_slot(cmd_seq).map(PendingSlot::message)
        else {
            self.counters.unattributed += 1;
            return;
        };
        let qty = delta.unsigned_abs();
        let record = IdRecord {
            id: order.order_id.get(),
            cmd_seq,
            last_cmd_seq: cmd_seq,
            sku,
            qty,
            remaining: qty,
            location,
            origin: order.header.origin.get(),
            kind: id_kind::ORDER,
        };
        self.insert_id(record);
    }

    fn change_order(&mut self, cmd_seq: u64, delta: i32) {
        let Some(slot) = self.pending_slot(cmd_seq) else {
            self.counters.unattributed += 1;
            return;
        };
        let (origin, order_id) = match slot.message() {
            Message::ModifyOrder(m) => (m.header.origin.get(), m.order_id.get()),
            Message::CancelOrder(m) => (m.header.origin.get(), m.order_id.get()),
            _ => {
                self.counters.anomalies += 1;
                return;
            }
        };
        let Some(i) = self.id_slot(origin, id_kind::ORDER, order_id) else {
            self.counters.unattributed += 1;
            return;
        };
        let record = &mut self.ids[i as usize];
        // remaining − delta: a decrease of the order returns stock (delta > 0).
        let remaining = i64::from(record.remaining) - i64::from(delta);
        if !(0..=i64::from(u32::MAX)).contains(&remaining) {
            self.counters.anomalies += 1;
        }
        record.remaining = remaining.clamp(0, i64::from(u32::MAX)) as u32;
        record.last_cmd_seq = cmd_seq;
    }

    fn record_transfer(&mut self, cmd_seq: u64) {
        let Some(Message::Transfer(t)) = self.pending_slot(cmd_seq).map(PendingSlot::message)
        else {
            self.counters.unattributed += 1;
            return;
        };
        let record = IdRecord {
            id: t.transfer_id.get(),
            cmd_seq,
            last_cmd_seq: cmd_seq,
            sku: t.sku.get(),
            qty: t.qty.get(),
            remaining: 0,
            location: t.from.get(),
            origin: t.header.origin.get(),
            kind: id_kind::TRANSFER,
        };
        self.insert_id(record);
    }

    fn on_hold(&mut self, stamp: u64, m: &HoldPlaced) -> Option<u64> {
        let cmd_seq = m.cmd_seq.get();
        let (location, sku, qty) = (m.location.get(), m.sku.get(), m.qty.get());
        let carried = cmd_seq & CARRIED_HOLD_BIT != 0;
        if let Some(i) = self.event_cell(location, sku) {
            let cell = &mut self.cells[i];
            if !carried {
                let reserved = u64::from(cell.reserved) + u64::from(qty);
                if reserved > u64::from(cell.on_hand) {
                    self.counters.violations += 1;
                }
                cell.reserved = reserved.min(u64::from(u32::MAX)) as u32;
            }
            cell.version = stamp;
        }
        let mut slot = HoldSlot {
            cmd_seq,
            expires_at_ns: m.expires_at_ns.get(),
            hold_id: 0,
            sku,
            qty,
            heap_pos: 0,
            location,
            origin: 0,
            flags: HOLD_IN_USE,
        };
        if !carried {
            match self.pending_slot(cmd_seq).map(PendingSlot::message) {
                Some(Message::Reserve(v)) => {
                    slot.origin = v.header.origin.get();
                    slot.hold_id = v.hold_id.get();
                    slot.flags |= HOLD_CLIENT_KNOWN;
                }
                _ => self.counters.unattributed += 1,
            }
        }
        if slot.flags & HOLD_CLIENT_KNOWN != 0 {
            let record = IdRecord {
                id: slot.hold_id,
                cmd_seq,
                last_cmd_seq: cmd_seq,
                sku,
                qty,
                remaining: 0,
                location,
                origin: slot.origin,
                kind: id_kind::HOLD,
            };
            self.insert_id(record);
        }
        if self.kept.contains(location) && !(carried && self.hold_slot(cmd_seq).is_some()) {
            // (The warehouse re-announcing its own carried hold finds it in
            // place already; a store node keeps only its own holds.)
            self.insert_hold(slot);
        }
        let first = self.resolve(cmd_seq);
        first.then_some(cmd_seq)
    }

    fn on_hold_end(&mut self, stamp: u64, m: &HoldEnded, resolve: Resolve) -> Option<u64> {
        let cmd_seq = m.cmd_seq.get();
        let (location, sku, qty) = (m.location.get(), m.sku.get(), m.qty.get());
        if let Some(i) = self.event_cell(location, sku) {
            let cell = &mut self.cells[i];
            cell.reserved = match cell.reserved.checked_sub(qty) {
                Some(reserved) => reserved,
                None => {
                    self.counters.violations += 1;
                    0
                }
            };
            cell.version = stamp;
        }
        let ended = self.hold_slot(cmd_seq).map(|slot| self.remove_hold(slot));
        if m.outcome != hold_outcome::RELEASED {
            // Expiry answers no command; a confirmation is answered by the
            // `D(C)` that follows.
            return None;
        }
        match resolve {
            Resolve::Command(seq) => self.resolve(seq).then_some(seq),
            Resolve::Nothing => None,
            Resolve::Stream => {
                let oldest = self.oldest_unresolved()?;
                let Some(Message::ReleaseHold(k)) =
                    self.pending_slot(oldest).map(PendingSlot::message)
                else {
                    return None;
                };
                let matches = match ended {
                    Some(h) if h.flags & HOLD_CLIENT_KNOWN != 0 => {
                        (h.origin, h.hold_id) == (k.header.origin.get(), k.hold_id.get())
                    }
                    _ => true,
                };
                (matches && self.resolve(oldest)).then_some(oldest)
            }
        }
    }

    fn on_level(&mut self, stamp: u64, m: &InventoryLevel, resolve: Resolve) -> Option<u64> {
        let (location, sku) = (m.location.get(), m.sku.get());
        if let Some(i) = self.event_cell(location, sku) {
            let cell = &mut self.cells[i];
            cell.on_hand = m.on_hand.get();
            cell.reserved = m.reserved.get();
            if cell.reserved > cell.on_hand {
                self.counters.violations += 1;
            }
            cell.version = stamp;
        }
        match resolve {
            Resolve::Command(seq) => self.resolve(seq).then_some(seq),
            Resolve::Nothing => None,
            Resolve::Stream => {
                let oldest = self.oldest_unresolved()?;
                let Some(Message::Recount(q)) = self.pending_slot(oldest).map(PendingSlot::message)
                else {
                    return None;
                };
                let matches = (q.location.get(), q.sku.get()) == (location, sku);
                (matches && self.resolve(oldest)).then_some(oldest)
            }
        }
    }

    // -----------------------------------------------------------------------
    // Client-id history.

    /// Adds a record, evicting the oldest when full. A key already present is
    /// an anomaly (the authority accepted a duplicate id): the first record
    /// stays.
    pub fn insert_id(&mut self, record: IdRecord) {
        if self
            .id_slot(record.origin, record.kind, record.id)
            .is_some()
        {
            self.counters.anomalies += 1;
            return;
        }
        let capacity = self.ids.len() as u32;
        let slot = self.ids_next;
        if self.ids_len == capacity {
            let old = self.ids[slot as usize];
            let removed = self
                .id_index
                .remove(client_hash(old.origin, old.kind, old.id), slot);
            debug_assert!(removed);
            self.counters.ids_evicted += 1;
        } else {
            self.ids_len += 1;
        }
        self.ids[slot as usize] = record;
        self.id_index
            .insert(client_hash(record.origin, record.kind, record.id), slot);
        self.ids_next = if slot + 1 == capacity { 0 } else { slot + 1 };
    }

    /// The history slot of `(origin, kind, id)`.
    #[inline]
    pub fn id_slot(&self, origin: u16, kind: u8, id: u64) -> Option<u32> {
        let ids = &self.ids;
        self.id_index.find(client_hash(origin, kind, id), |s| {
            let r = &ids[s as usize];
            r.id == id && r.origin == origin && r.kind == kind
        })
    }

    /// The records of the history, oldest first.
    pub fn ids_oldest_first(&self) -> impl Iterator<Item = &IdRecord> + '_ {
        let capacity = self.ids.len() as u32;
        let start = (self.ids_next + capacity - self.ids_len) % capacity;
        (0..self.ids_len).map(move |k| &self.ids[((start + k) % capacity) as usize])
    }

    // -----------------------------------------------------------------------
    // Holds.

    /// Adds an open hold; false (counted) when the table is full or the key
    /// is already open.
    pub fn insert_hold(&mut self, mut hold: HoldSlot) -> bool {
        if self.hold_slot(hold.cmd_seq).is_some() {
            self.counters.anomalies += 1;
            return false;
        }
        if self.hold_free_len == 0 {
            self.counters.hold_overflow += 1;
            return false;
        }
        self.hold_free_len -= 1;
        let slot = self.hold_free[self.hold_free_len as usize];
        hold.flags |= HOLD_IN_USE;
        hold.heap_pos = self.hold_heap_len;
        self.holds[slot as usize] = hold;
        self.hold_by_cmd.insert(mix64(hold.cmd_seq), slot);
        if hold.flags & HOLD_CLIENT_KNOWN != 0 {
            self.hold_by_client
                .insert(client_hash(hold.origin, id_kind::HOLD, hold.hold_id), slot);
        }
        self.hold_heap[self.hold_heap_len as usize] = slot;
        self.hold_heap_len += 1;
        self.heap_up(hold.heap_pos);
        true
    }

    /// Removes the open hold in `slot`, returning it.
    pub fn remove_hold(&mut self, slot: u32) -> HoldSlot {
        let hold = self.holds[slot as usize];
        assert!(hold.flags & HOLD_IN_USE != 0, "removing a free hold slot");
        let removed = self.hold_by_cmd.remove(mix64(hold.cmd_seq), slot);
        debug_assert!(removed);
        if hold.flags & HOLD_CLIENT_KNOWN != 0 {
            let removed = self
                .hold_by_client
                .remove(client_hash(hold.origin, id_kind::HOLD, hold.hold_id), slot);
            debug_assert!(removed);
        }
        // Take it out of the heap: move the last entry into its place.
        let pos = hold.heap_pos;
        self.hold_heap_len -= 1;
        let last = self.hold_heap[self.hold_heap_len as usize];
        if pos != self.hold_heap_len {
            self.hold_heap[pos as usize] = last;
            self.holds[last as usize].heap_pos = pos;
            self.heap_down(pos);
            self.heap_up(self.holds[last as usize].heap_pos);
        }
        self.holds[slot as usize] = HoldSlot::default();
        self.hold_free[self.hold_free_len as usize] = slot;
        self.hold_free_len += 1;
        hold
    }

    /// Changes the key of the open hold in `slot` (the warehouse's session
    /// start re-keys carried-over holds).
    pub fn rekey_hold(&mut self, slot: u32, cmd_seq: u64) {
        let mut hold = self.remove_hold(slot);
        hold.cmd_seq = cmd_seq;
        let inserted = self.insert_hold(hold);
        assert!(inserted, "a hold just removed fits again");
    }

    /// The slot of the open hold keyed `cmd_seq`.
    #[inline]
    pub fn hold_slot(&self, cmd_seq: u64) -> Option<u32> {
        let holds = &self.holds;
        self.hold_by_cmd
            .find(mix64(cmd_seq), |s| holds[s as usize].cmd_seq == cmd_seq)
    }

    /// The slot of the open hold placed by `(origin, hold_id)`.
    #[inline]
    pub fn hold_slot_by_client(&self, origin: u16, hold_id: u64) -> Option<u32> {
        let holds = &self.holds;
        self.hold_by_client
            .find(client_hash(origin, id_kind::HOLD, hold_id), |s| {
                let h = &holds[s as usize];
                h.hold_id == hold_id && h.origin == origin
            })
    }

    /// Whether another hold fits.
    pub fn holds_full(&self) -> bool {
        self.hold_free_len == 0
    }

    /// The slot of the open hold that expires first (ties: lowest key).
    #[inline]
    pub fn first_expiring_slot(&self) -> Option<u32> {
        (self.hold_heap_len > 0).then(|| self.hold_heap[0])
    }

    fn heap_up(&mut self, mut pos: u32) {
        let slot = self.hold_heap[pos as usize];
        let key = self.holds[slot as usize].expiry_key();
        while pos > 0 {
            let parent = (pos - 1) / 2;
            let parent_slot = self.hold_heap[parent as usize];
            if self.holds[parent_slot as usize].expiry_key() <= key {
                break;
            }
            self.hold_heap[pos as usize] = parent_slot;
            self.holds[parent_slot as usize].heap_pos = pos;
            pos = parent;
        }
        self.hold_heap[pos as usize] = slot;
        self.holds[slot as usize].heap_pos = pos;
    }

    fn heap_down(&mut self, mut pos: u32) {
        let slot = self.hold_heap[pos as usize];
        let key = self.holds[slot as usize].expiry_key();
        loop {
            let left = 2 * pos + 1;
            if left >= self.hold_heap_len {
                break;
            }
            let right = left + 1;
            let mut child = left;
            if right < self.hold_heap_len
                && self.holds[self.hold_heap[right as usize] as usize].expiry_key()
                    < self.holds[self.hold_heap[left as usize] as usize].expiry_key()
            {
                child = right;
            }
            let child_slot = self.hold_heap[child as usize];
            if key <= self.holds[child_slot as usize].expiry_key() {
                break;
            }
            self.hold_heap[pos as usize] = child_slot;
            self.holds[child_slot as usize].heap_pos = pos;
            pos = child;
        }
        self.hold_heap[pos as usize] = slot;
        self.holds[slot as usize].heap_pos = pos;
    }

    // -----------------------------------------------------------------------
    // Lookups.

    /// The index of `sku` in the directory.
    #[inline]
    pub fn sku_slot(&self, sku: u32) -> Option<u32> {
        let ids = &self.sku_ids;
        self.sku_index
            .find(mix64(u64::from(sku)), |s| ids[s as usize] == sku)
    }

    fn symbol_slot(&self, symbol: &[u8; 16]) -> Option<u32> {
        let symbols = &self.sku_symbols;
        self.symbol_index
            .find(symbol_hash(symbol), |s| symbols[s as usize] == *symbol)
    }

    /// The index of `location` in the directory.
    #[inline]
    pub fn location_index(&self, location: u16) -> Option<u16> {
        match self.location_slot[usize::from(location)] {
            0 => None,
            index_plus_one => Some(index_plus_one - 1),
        }
    }

    /// The cell state of (sku index, location index); all zero when the
    /// cell does not exist.
    #[inline]
    pub fn cell_at(&self, sku_index: u32, location_index: u16) -> CellState {
        self.cells
            .find(sku_index, location_index)
            .map(|i| self.cells[i])
            .unwrap_or_default()
    }

    /// The slot of the cell (location, sku) when both ids are in the
    /// directory and the cell exists.
    #[inline]
    pub fn cell_slot(&self, location: u16, sku: u32) -> Option<usize> {
        let l = self.location_index(location)?;
        let s = self.sku_slot(sku)?;
        self.cells.find(s, l)
    }

    /// The cell (location, sku); `None` when either id is not in the
    /// directory. A cell no event has named (or, in a store node, one of a
    /// location it does not keep) reads as all zero, version 0.
    #[inline]
    pub fn cell(&self, location: u16, sku: u32) -> Option<Cell> {
        let l = self.location_index(location)?;
        let s = self.sku_slot(sku)?;
        Some(self.cell_at(s, l).public())
    }

    /// The id of the SKU with `symbol` (trailing spaces ignored).
    pub fn sku_by_symbol(&self, symbol: &str) -> Option<u32> {
        let padded = pad_ascii::<16>(symbol.trim_end_matches(' ')).ok()?;
        if padded == [b' '; 16] {
            return None;
        }
        self.symbol_slot(&padded).map(|s| self.sku_ids[s as usize])
    }

    /// The symbol of `sku`, without padding (empty when it was never named).
    pub fn symbol(&self, sku: u32) -> Option<&[u8]> {
        self.sku_slot(sku)
            .map(|s| trim_ascii(&self.sku_symbols[s as usize]))
    }

    /// The name of `location`, without padding.
    pub fn location_name(&self, location: u16) -> Option<&[u8]> {
        self.location_index(location)
            .map(|l| trim_ascii(&self.location_names[usize::from(l)]))
    }

    /// The id of the location named `name` (a linear scan of the location
    /// directory, at most `locations_max` entries).
    pub fn location_by_name(&self, name: &str) -> Option<u16> {
        let name = name.as_bytes();
        (0..usize::from(self.location_count))
            .find(|&l| trim_ascii(&self.location_names[l]) == name)
            .map(|l| self.location_ids[l])
    }

    /// Total units available of the SKU named `symbol` over all locations;
    /// `None` for an unknown symbol.
    pub fn available_by_symbol(&self, symbol: &str) -> Option<u64> {
        let sku = self.sku_by_symbol(symbol)?;
        Some(
            self.cells_of(sku)
                .map(|(_, c)| u64::from(c.available))
                .sum(),
        )
    }

    /// Every location of the directory with its cell for `sku` (empty for an
    /// unknown SKU), in directory order.
    pub fn cells_of(&self, sku: u32) -> impl Iterator<Item = (u16, Cell)> + '_ {
        let slot = self.sku_slot(sku);
        let count = if slot.is_some() {
            self.location_count
        } else {
            0
        };
        (0..count).map(move |l| {
            let s = slot.expect("count is 0 for an unknown SKU");
            (
                self.location_ids[usize::from(l)],
                self.cell_at(s, l).public(),
            )
        })
    }

    /// Calls `f(location, cell)` for every cell of `sku` some event named
    /// (version ≠ 0), in no particular order: O(the SKU's stocked cells),
    /// not O(locations) — for read sides listing a SKU in a chain with
    /// thousands of locations. Nothing for an unknown SKU.
    pub fn for_each_stocked_cell(&self, sku: u32, mut f: impl FnMut(u16, Cell)) {
        let Some(s) = self.sku_slot(sku) else {
            return;
        };
        self.cells
            .for_each_of_sku(s, self.location_count, |l, cell| {
                if cell.version != 0 {
                    f(self.location_ids[usize::from(l)], cell.public());
                }
            });
    }

    /// The SKU directory, `(sku, symbol)` in the order SKUs were first seen.
    pub fn skus(&self) -> impl Iterator<Item = (u32, &[u8])> + '_ {
        (0..self.sku_count as usize).map(|s| (self.sku_ids[s], trim_ascii(&self.sku_symbols[s])))
    }

    /// The SKU at `position` of the directory (0 = the first seen):
    /// `(sku, symbol)`, as [`Self::skus`] lists them. Positions are stable:
    /// SKUs are only ever added at the end (until [`Self::clear`]), so a
    /// read side can page through the directory by position.
    pub fn sku_at(&self, position: u32) -> Option<(u32, &[u8])> {
        (position < self.sku_count).then(|| {
            let s = position as usize;
            (self.sku_ids[s], trim_ascii(&self.sku_symbols[s]))
        })
    }

    /// The location directory, `(location, name)` in the order first seen.
    pub fn locations(&self) -> impl Iterator<Item = (u16, &[u8])> + '_ {
        (0..usize::from(self.location_count))
            .map(|l| (self.location_ids[l], trim_ascii(&self.location_names[l])))
    }

    /// Number of SKUs in the directory.
    pub fn sku_count(&self) -> u32 {
        self.sku_count
    }

    /// Number of locations in the directory.
    pub fn location_count(&self) -> u16 {
        self.location_count
    }

    /// SKUs with nothing available at any location (directory order).
    pub fn depleted(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.sku_count).filter_map(move |s| {
            let mut empty = true;
            self.cells
                .for_each_of_sku(s, self.location_count, |_, c| empty &= c.available() == 0);
            empty.then(|| self.sku_ids[s as usize])
        })
    }

    /// The open hold placed by the `V` at `cmd_seq`.
    pub fn hold(&self, cmd_seq: u64) -> Option<Hold> {
        self.hold_slot(cmd_seq)
            .map(|s| self.holds[s as usize].public())
    }

    /// The open hold that `origin` placed with `hold_id`.
    pub fn hold_by_client(&self, origin: u16, hold_id: u64) -> Option<Hold> {
        self.hold_slot_by_client(origin, hold_id)
            .map(|s| self.holds[s as usize].public())
    }

    /// Every open hold (table order).
    pub fn holds(&self) -> impl Iterator<Item = Hold> + '_ {
        self.holds
            .iter()
            .filter(|h| h.flags & HOLD_IN_USE != 0)
            .map(HoldSlot::public)
    }

    /// Number of open holds.
    pub fn hold_count(&self) -> u32 {
        self.limits.holds_max - self.hold_free_len
    }

    /// The open hold that expires first.
    pub fn next_expiry(&self) -> Option<Hold> {
        self.first_expiring_slot()
            .map(|s| self.holds[s as usize].public())
    }

    /// The accepted order `(origin, order_id)`, while it is in the history.
    pub fn order(&self, origin: u16, order_id: u64) -> Option<OrderRecord> {
        self.id_slot(origin, id_kind::ORDER, order_id).map(|s| {
            let r = &self.ids[s as usize];
            OrderRecord {
                origin: r.origin,
                order_id: r.id,
                location: r.location,
                sku: r.sku,
                qty: r.qty,
                remaining: r.remaining,
                cmd_seq: r.cmd_seq,
                last_cmd_seq: r.last_cmd_seq,
            }
        })
    }

    /// The command at `seq` while the pending ring still holds it (answered
    /// or not).
    pub fn command(&self, seq: u64) -> Option<Message<'_>> {
        self.pending_slot(seq).map(PendingSlot::message)
    }

    /// Whether the command at `seq` is still waiting for its outcome.
    pub fn is_pending(&self, seq: u64) -> bool {
        self.pending_slot(seq)
            .is_some_and(|s| s.state == PENDING_UNRESOLVED)
    }

    /// Number of commands still waiting for their outcome (a scan of the
    /// pending ring: for tests and health reports, not the hot path).
    pub fn pending_count(&self) -> usize {
        self.pending
            .iter()
            .filter(|s| s.state == PENDING_UNRESOLVED)
            .count()
    }

    // -----------------------------------------------------------------------
    // Digest.

    /// A 64-bit digest of the replicated state, equal on two replicas that
    /// applied the same stream up to the same seq, whatever their limits or
    /// table layouts.
    ///
    /// Covers: every cell some event named (version ≠ 0) as (sku id,
    /// location id, on_hand, reserved, version); the SKU directory (id,
    /// symbol); the location directory (id, name); every open hold (key,
    /// location, sku, qty, expires_at). Not covered: the client-id history
    /// and pending commands (they depend on `orders_max`/`pending_max` and on
    /// where a replica joined), counters, and `last_seq` itself — compare
    /// digests at the same seq.
    ///
    /// Each entry is hashed on its own and the hashes are summed (wrapping),
    /// so the result does not depend on table order or layout (dense or
    /// sparse); a cost of O(cells) makes it a read-side call.
    pub fn digest(&self) -> u64 {
        self.digest_where(|_| true)
    }

    /// The digest of the part of the state a store node keeping `locations`
    /// holds ([`Self::keep_only`]): [`Self::digest`]'s definition restricted
    /// to the cells and open holds of those locations (both directories are
    /// covered whole). A store node's own `digest()` equals the full state's
    /// `digest_of` its set at the same seq.
    pub fn digest_of(&self, locations: &LocationSet) -> u64 {
        self.digest_where(|location| locations.contains(location))
    }

    fn digest_where(&self, covers: impl Fn(u16) -> bool) -> u64 {
        const CELL: u64 = 0x6365_6c6c;
        const SKU: u64 = 0x736b_7500;
        const LOCATION: u64 = 0x6c6f_6300;
        const HOLD: u64 = 0x686f_6c64;
        let entry = |tag: u64, words: &[u64]| -> u64 {
            words.iter().fold(mix64(tag), |h, &w| mix64(h ^ w))
        };
        let (mut cells, mut cell_count) = (0u64, 0u64);
        for slot in 0..self.cells.slot_end(self.sku_count) {
            let c = &self.cells[slot];
            if c.version == 0 {
                continue;
            }
            let (s, l) = self.cells.key_of(slot);
            if l >= self.location_count {
                continue;
            }
            let location_id = self.location_ids[usize::from(l)];
            if !covers(location_id) {
                continue;
            }
            let sku = u64::from(self.sku_ids[s as usize]);
            let location = u64::from(location_id);
            {
                cells = cells.wrapping_add(entry(
                    CELL,
                    &[
                        (sku << 16) | location,
                        (u64::from(c.on_hand) << 32) | u64::from(c.reserved),
                        c.version,
                    ],
                ));
                cell_count += 1;
            }
        }
        let mut skus = 0u64;
        for s in 0..self.sku_count as usize {
            let symbol = &self.sku_symbols[s];
            skus = skus.wrapping_add(entry(
                SKU,
                &[
                    u64::from(self.sku_ids[s]),
                    u64::from_le_bytes(symbol[..8].try_into().expect("8 bytes")),
                    u64::from_le_bytes(symbol[8..].try_into().expect("8 bytes")),
                ],
            ));
        }
        let mut locations = 0u64;
        for l in 0..usize::from(self.location_count) {
            let name = &self.location_names[l];
            locations = locations.wrapping_add(entry(
                LOCATION,
                &[
                    u64::from(self.location_ids[l]),
                    u64::from_le_bytes(name[..8].try_into().expect("8 bytes")),
                    u64::from_le_bytes(name[8..].try_into().expect("8 bytes")),
                ],
            ));
        }
        let (mut holds, mut hold_count) = (0u64, 0u64);
        for h in self
            .holds
            .iter()
            .filter(|h| h.flags & HOLD_IN_USE != 0 && covers(h.location))
        {
            hold_count += 1;
            holds = holds.wrapping_add(entry(
                HOLD,
                &[
                    h.cmd_seq,
                    (u64::from(h.location) << 32) | u64::from(h.sku),
                    u64::from(h.qty),
                    h.expires_at_ns,
                ],
            ));
        }
        entry(
            0x74_616c_6c79,
            &[
                cells,
                cell_count,
                skus,
                u64::from(self.sku_count),
                locations,
                u64::from(self.location_count),
                holds,
                hold_count,
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_wire::{CancelOrder, ModifyOrder, Order, ReleaseHold};

    fn msg(bytes: &[u8]) -> Message<'_> {
        Message::parse(bytes).unwrap()
    }

    fn sym(s: &str) -> [u8; 16] {
        pad_ascii(s).unwrap()
    }

    #[test]
    fn slot_index_backward_shift_keeps_every_key_reachable() {
        // Homes chosen to collide and wrap around a 16-bucket index (the
        // low bits pick the bucket, the high bits keep the hashes distinct).
        let homes = [15u64, 15, 0, 15, 1, 0, 14, 2];
        let hash = |s: u32| homes[s as usize] | (u64::from(s) << 8);
        let mut index = SlotIndex::with_entries_max(8);
        for s in 0..8u32 {
            index.insert(hash(s), s);
        }
        let mut gone = Vec::new();
        for removed in [3u32, 0, 7, 4, 6] {
            assert!(index.remove(hash(removed), removed));
            assert!(!index.remove(hash(removed), removed));
            gone.push(removed);
            for s in 0..8u32 {
                let found = index.find(hash(s), |x| x == s);
                assert_eq!(
                    found.is_none(),
                    gone.contains(&s),
                    "slot {s} after {gone:?}"
                );
            }
        }
        assert_eq!(index.len, 3);
    }

    #[test]
    fn compact_index_backward_shift_keeps_every_key_reachable() {
        let homes = [15u64, 15, 0, 15, 1, 0, 14, 2];
        let hash = |s: u32| homes[s as usize] | (u64::from(s) << 8);
        let mut index = CompactIndex::with_entries_max(8);
        for s in 0..8u32 {
            index.insert(hash(s), s);
        }
        let mut gone = Vec::new();
        for removed in [3u32, 0, 7, 4, 6] {
            assert!(index.remove(hash(removed), removed, hash));
            assert!(!index.remove(hash(removed), removed, hash));
            gone.push(removed);
            for s in 0..8u32 {
                let found = index.find(hash(s), |x| x == s);
                assert_eq!(
                    found.is_none(),
                    gone.contains(&s),
                    "slot {s} after {gone:?}"
                );
            }
        }
        assert_eq!(index.len, 3);
    }

    #[test]
    fn a_store_node_keeps_its_locations_densely_and_matches_the_subset_digest() {
        let limits = ReplicaLimits {
            skus_max: 100,
            locations_max: 8,
            cells_max: 200,
            ..ReplicaLimits::small()
        };
        let mut full = Replica::new(limits);
        let mut node = Replica::keeping(limits, LocationSet::of(&[5, 3]));
        let mut late = Replica::new(limits);
        late.keep_only(LocationSet::of(&[5, 3]));
        // Two kept locations × 100 SKUs fit cells_max: dense, no index.
        assert_eq!(node.cells.dense_width, Some(2));
        assert_eq!(late.cells.dense_width, Some(2));
        assert!(node.memory_bytes() < full.memory_bytes());
        let mut seq = 0;
        let mut feed = |bytes: &[u8]| {
            seq += 1;
            for r in [&mut full, &mut node, &mut late] {
                r.apply(seq, &msg(bytes));
            }
        };
        for l in 1..=6u16 {
            feed(LocationDirectory::new(l, sym(&format!("L{l}"))).as_bytes());
        }
        for sku in 0..50u32 {
            feed(SkuDirectory::new(1000 + sku, sym(&format!("S{sku}"))).as_bytes());
            // Two locations per SKU; 3 and 5 take their columns in the
            // order their first cell event comes.
            let (a, b) = (1 + (sku % 6) as u16, 1 + ((sku + 2) % 6) as u16);
            feed(InventoryLevel::new(a, 1000 + sku, sku + 1, 0).as_bytes());
            feed(InventoryLevel::new(b, 1000 + sku, 2 * sku, 0).as_bytes());
        }
        feed(OnHandDelta::new(5, 1004, -1, delta_reason::ADJUST, 0).as_bytes());
        feed(HoldPlaced::new(77, 3, 1002, 1, 9).as_bytes());
        let set = LocationSet::of(&[3, 5]);
        assert_eq!(node.digest(), full.digest_of(&set));
        assert_eq!(late.digest(), full.digest_of(&set));
        assert_ne!(node.digest(), full.digest());
        assert_eq!(node.counters().dropped_events, 0);
        assert_eq!(node.cell(3, 1002), full.cell(3, 1002));
        assert_eq!(node.cell(3, 1002).unwrap().reserved, 1);
        assert_eq!(full.oversold(), 0);
        assert_eq!(node.cell(1, 1000).unwrap().version, 0, "not kept");
        let mut stocked = Vec::new();
        node.for_each_stocked_cell(1004, |l, c| stocked.push((l, c.on_hand)));
        assert_eq!(stocked, [(5, 4)]);
        assert_eq!(node.hold_count(), 1);
        node.clear();
        assert_eq!(node.digest(), Replica::keeping(limits, set).digest());
    }

    #[test]
    fn order_modify_cancel_records_follow_the_deltas() {
        let mut r = Replica::new(ReplicaLimits::small());
        let l = LocationDirectory::new(1, sym("STORE-1"));
        let k = SkuDirectory::new(7, sym("MUG"));
        let i = InventoryLevel::new(1, 7, 10, 0);
        r.apply(1, &msg(l.as_bytes()));
        r.apply(2, &msg(k.as_bytes()));
        r.apply(3, &msg(i.as_bytes()));
        let o = Order::new(99, 0, 7, 4).with_origin(5);
        assert_eq!(r.apply(4, &msg(o.as_bytes())), Applied::Recorded);
        assert!(r.is_pending(4));
        let d = OnHandDelta::new(1, 7, -4, delta_reason::ORDER, 4);
        assert_eq!(
            r.apply(5, &msg(d.as_bytes())),
            Applied::Event { answers: Some(4) }
        );
        assert!(!r.is_pending(4));
        let order = r.order(5, 99).unwrap();
        assert_eq!((order.location, order.qty, order.remaining), (1, 4, 4));
        let m = ModifyOrder::new(99, 1).with_origin(5);
        r.apply(6, &msg(m.as_bytes()));
        r.apply(
            7,
            &msg(OnHandDelta::new(1, 7, 3, delta_reason::MODIFY, 6).as_bytes()),
        );
        assert_eq!(r.order(5, 99).unwrap().remaining, 1);
        let x = CancelOrder::new(99).with_origin(5);
        r.apply(8, &msg(x.as_bytes()));
        r.apply(
            9,
            &msg(OnHandDelta::new(1, 7, 1, delta_reason::CANCEL, 8).as_bytes()),
        );
        let order = r.order(5, 99).unwrap();
        assert_eq!((order.remaining, order.last_cmd_seq), (0, 8));
        let cell = r.cell(1, 7).unwrap();
        assert_eq!((cell.on_hand, cell.version), (10, 9));
        assert_eq!(r.oversold(), 0);
    }

    #[test]
    fn release_is_matched_to_the_oldest_pending_k() {
        let mut r = Replica::new(ReplicaLimits::small());
        r.apply(1, &msg(LocationDirectory::new(1, sym("A")).as_bytes()));
        r.apply(2, &msg(SkuDirectory::new(7, sym("MUG")).as_bytes()));
        r.apply(3, &msg(InventoryLevel::new(1, 7, 10, 0).as_bytes()));
        let v = Reserve::new(5, 1, 7, 3, 1000).with_origin(2);
        r.apply(4, &msg(v.as_bytes()));
        r.apply(5, &msg(HoldPlaced::new(4, 1, 7, 3, 77).as_bytes()));
        assert_eq!(r.hold_by_client(2, 5).unwrap().cmd_seq, 4);
        let k = ReleaseHold::new(5).with_origin(2);
        r.apply(6, &msg(k.as_bytes()));
        let e = HoldEnded::new(4, 1, 7, 3, hold_outcome::RELEASED);
        assert_eq!(
            r.apply(7, &msg(e.as_bytes())),
            Applied::Event { answers: Some(6) }
        );
        assert_eq!(r.hold(4), None);
        assert_eq!(r.cell(1, 7).unwrap().reserved, 0);
        assert_eq!(r.pending_count(), 0);
    }

    #[test]
    fn holds_expire_in_order_of_expiry_then_key() {
        let mut r = Replica::new(ReplicaLimits::small());
        r.apply(1, &msg(LocationDirectory::new(1, sym("A")).as_bytes()));
        r.apply(2, &msg(SkuDirectory::new(7, sym("MUG")).as_bytes()));
        r.apply(3, &msg(InventoryLevel::new(1, 7, 100, 0).as_bytes()));
        let expiries = [50u64, 10, 30, 10, 70, 20];
        for (i, &at) in expiries.iter().enumerate() {
            let seq = 10 + i as u64;
            r.apply(seq, &msg(HoldPlaced::new(seq, 1, 7, 1, at).as_bytes()));
        }
        // End one in the middle of the heap.
        r.apply(
            20,
            &msg(HoldEnded::new(12, 1, 7, 1, hold_outcome::RELEASED).as_bytes()),
        );
        let mut order = Vec::new();
        while let Some(slot) = r.first_expiring_slot() {
            let h = r.remove_hold(slot);
            order.push((h.expires_at_ns, h.cmd_seq));
        }
        assert_eq!(
            order,
            vec![(10, 11), (10, 13), (20, 15), (50, 10), (70, 14)]
        );
    }

    #[test]
    fn violations_are_counted_and_clamped() {
        let mut r = Replica::new(ReplicaLimits::small());
        r.apply(1, &msg(InventoryLevel::new(1, 7, 2, 0).as_bytes()));
        assert_eq!(r.counters().unknown_refs, 1);
        r.apply(
            2,
            &msg(OnHandDelta::new(1, 7, -5, delta_reason::ADJUST, 0).as_bytes()),
        );
        assert_eq!(r.oversold(), 1);
        assert_eq!(r.cell(1, 7).unwrap().on_hand, 0);
        r.apply(
            3,
            &msg(HoldEnded::new(9, 1, 7, 1, hold_outcome::EXPIRED).as_bytes()),
        );
        assert_eq!(r.oversold(), 2);
        assert_eq!(r.cell(1, 7).unwrap().reserved, 0);
    }
}
