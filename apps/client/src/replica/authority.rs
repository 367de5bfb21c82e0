//! The authority's interface to its replica.
//!
//! Every replica changes only by applying the stream ([`Replica::apply`]);
//! the tables are private so that nothing else can break what applying
//! keeps true (no negative stock, reserved ≤ on hand, indexes exact). The
//! authority (the warehouse) needs a little more, and only it calls what is
//! here: it seeds the state from its inventory file before its session's
//! broadcast, resets the session's marks when a new session starts, and
//! reads the tables by position to broadcast them and to decide.

use super::{CellState, CellTable, HoldSlot, IdRecord, Replica};

impl Replica {
    // -------------------------------------------------------------------
    // Seeding (before the broadcast; the broadcast puts it on the stream).

    /// Names the location at directory position `l` (registered with
    /// [`Replica::register_location`]).
    pub fn set_location_name(&mut self, l: u16, name: [u8; 16]) {
        assert!(
            l < self.location_count,
            "location position {l} not registered"
        );
        self.location_names[usize::from(l)] = name;
    }

    /// The cell of (SKU position, location position), added if new; `None`
    /// when the cell table has no room for it. Seeding writes it whole.
    pub fn seed_cell(&mut self, sku_index: u32, location_index: u16) -> Option<&mut CellState> {
        let slot = self.cells.find_or_insert(sku_index, location_index)?;
        Some(&mut self.cells[slot])
    }

    /// Every seeded cell (version ≠ 0) gets `version`: the authority marks
    /// what it loaded as provisional until its broadcast stamps each cell.
    pub fn restamp_seeded_cells(&mut self, version: u64) {
        for slot in 0..self.cells.slot_end(self.sku_count) {
            if self.cells[slot].version != 0 {
                self.cells[slot].version = version;
            }
        }
    }

    /// Forgets the position in the stream (last seq, authority online): a
    /// new session numbers from 1 again. The state itself is kept.
    pub fn reset_session_marks(&mut self) {
        self.last_seq = 0;
        self.authority_online_seq = 0;
    }

    /// Counts a message the authority met again after applying it.
    pub fn count_stale(&mut self) {
        self.counters.stale += 1;
    }

    // -------------------------------------------------------------------
    // Reading by position.

    /// The cell table (positions, room, keys).
    #[inline]
    pub fn cells(&self) -> &CellTable {
        &self.cells
    }

    /// The cell in `slot` of the cell table.
    #[inline]
    pub fn cell_state(&self, slot: usize) -> CellState {
        self.cells[slot]
    }

    /// The hold table's slot `slot` (in use or free: see its flags).
    #[inline]
    pub fn hold_at(&self, slot: usize) -> HoldSlot {
        self.holds[slot]
    }

    /// Slots in the hold table.
    #[inline]
    pub fn hold_slots(&self) -> usize {
        self.holds.len()
    }

    /// The client-id history's record `i`.
    #[inline]
    pub fn id_record(&self, i: u32) -> IdRecord {
        self.ids[i as usize]
    }

    /// The ids of the SKUs in the directory, in directory order.
    #[inline]
    pub fn sku_ids(&self) -> &[u32] {
        &self.sku_ids[..self.sku_count as usize]
    }

    /// The ids of the locations in the directory, in directory order.
    #[inline]
    pub fn location_ids(&self) -> &[u16] {
        &self.location_ids[..usize::from(self.location_count)]
    }

    /// The SKU at directory position `s`: its id and padded symbol.
    #[inline]
    pub fn sku_entry(&self, s: u32) -> (u32, [u8; 16]) {
        (self.sku_ids[s as usize], self.sku_symbols[s as usize])
    }

    /// The location at directory position `l`: its id and padded name.
    #[inline]
    pub fn location_entry(&self, l: u16) -> (u16, [u8; 16]) {
        let l = usize::from(l);
        (self.location_ids[l], self.location_names[l])
    }

    /// No command before this seq is unresolved (a lower bound).
    #[inline]
    pub fn pending_oldest(&self) -> u64 {
        self.pending_oldest
    }
}
