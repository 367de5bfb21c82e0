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

use tally_wire::Reserve;

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

mod apply;
mod authority;
mod cells;
mod index;
mod limits;
mod read;
mod records;
mod slots;
mod tables;
#[cfg(test)]
mod tests;

pub use cells::*;
pub use index::*;
pub use limits::*;
pub use records::*;
pub use slots::*;

/// The inventory state rebuilt from the stream. See the module docs.
///
/// `Clone` copies every table (a start-up or test operation, never the hot
/// path).
#[derive(Clone)]
pub struct Replica {
    pub(crate) limits: ReplicaLimits,
    pub(crate) last_seq: u64,
    /// Seq of the last `S(W)` (authority online), 0 = not seen.
    pub(crate) authority_online_seq: u64,
    pub(crate) counters: ReplicaCounters,

    // SKU directory.
    pub(crate) sku_ids: Box<[u32]>,
    pub(crate) sku_symbols: Box<[[u8; 16]]>,
    pub(crate) sku_count: u32,
    sku_index: CompactIndex,
    symbol_index: CompactIndex,

    // Location directory.
    /// Location id → index + 1 (0 = unknown), for every `u16`.
    location_slot: Box<[u16]>,
    pub(crate) location_ids: Box<[u16]>,
    pub(crate) location_names: Box<[[u8; 16]]>,
    pub(crate) location_count: u16,

    /// The cells that exist ([`CellTable`]: dense or sparse).
    pub(crate) cells: CellTable,
    /// The locations whose cells and holds this replica keeps (a store
    /// node keeps its own; default: all).
    kept: LocationSet,

    // Open holds: slab + two indexes + expiry heap.
    pub(crate) holds: Box<[HoldSlot]>,
    hold_free: Box<[u32]>,
    hold_free_len: u32,
    hold_by_cmd: SlotIndex,
    hold_by_client: SlotIndex,
    hold_heap: Box<[u32]>,
    hold_heap_len: u32,

    // Client-id history (ring, oldest evicted).
    pub(crate) ids: Box<[IdRecord]>,
    pub(crate) ids_next: u32,
    pub(crate) ids_len: u32,
    id_index: SlotIndex,

    // Pending commands, slot = seq & mask.
    pub(crate) pending: Box<[PendingSlot]>,
    pending_mask: u64,
    /// No command before this seq is unresolved (a lower bound, advanced
    /// lazily).
    pub(crate) pending_oldest: u64,
}

// A replica moves to the thread that owns it.
const _: () = {
    pub(super) const fn assert_send<T: Send>() {}
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
        self.clear_directories_and_cells();
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
        self.clear_directories_and_cells();
    }

    /// Empties both directories, their indexes and the cell table.
    fn clear_directories_and_cells(&mut self) {
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
}
