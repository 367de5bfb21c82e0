//! Reads: lookups by id, symbol and name, iteration, pending commands,
//! digests.

use tally_runtime::rand::mix64;
use tally_wire::{pad_ascii, trim_ascii, Message};

use super::{
    id_kind, symbol_hash, Cell, CellState, Hold, HoldSlot, LocationSet, OrderRecord, PendingSlot,
    Replica, HOLD_IN_USE, PENDING_UNRESOLVED,
};

impl Replica {
    /// The index of `sku` in the directory.
    #[inline]
    pub fn sku_slot(&self, sku: u32) -> Option<u32> {
        let ids = &self.sku_ids;
        self.sku_index
            .find(mix64(u64::from(sku)), |s| ids[s as usize] == sku)
    }

    pub(super) fn symbol_slot(&self, symbol: &[u8; 16]) -> Option<u32> {
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

    pub(super) fn digest_where(&self, covers: impl Fn(u16) -> bool) -> u64 {
        let (cells, cell_count) = self.digest_cells(&covers);
        let (skus, locations) = self.digest_directories();
        let (holds, hold_count) = self.digest_holds(&covers);
        digest_entry(
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

    /// The sum of the covered known cells' entries, and how many there are.
    fn digest_cells(&self, covers: &impl Fn(u16) -> bool) -> (u64, u64) {
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
            cells = cells.wrapping_add(digest_entry(
                DIGEST_CELL,
                &[
                    (sku << 16) | location,
                    (u64::from(c.on_hand) << 32) | u64::from(c.reserved),
                    c.version,
                ],
            ));
            cell_count += 1;
        }
        (cells, cell_count)
    }

    /// The sums of the SKU directory's and the location directory's entries.
    fn digest_directories(&self) -> (u64, u64) {
        let mut skus = 0u64;
        for s in 0..self.sku_count as usize {
            let [low, high] = name_words(&self.sku_symbols[s]);
            skus = skus.wrapping_add(digest_entry(
                DIGEST_SKU,
                &[u64::from(self.sku_ids[s]), low, high],
            ));
        }
        let mut locations = 0u64;
        for l in 0..usize::from(self.location_count) {
            let [low, high] = name_words(&self.location_names[l]);
            locations = locations.wrapping_add(digest_entry(
                DIGEST_LOCATION,
                &[u64::from(self.location_ids[l]), low, high],
            ));
        }
        (skus, locations)
    }

    /// The sum of the covered open holds' entries, and how many there are.
    fn digest_holds(&self, covers: &impl Fn(u16) -> bool) -> (u64, u64) {
        let (mut holds, mut hold_count) = (0u64, 0u64);
        for h in self
            .holds
            .iter()
            .filter(|h| h.flags & HOLD_IN_USE != 0 && covers(h.location))
        {
            hold_count += 1;
            holds = holds.wrapping_add(digest_entry(
                DIGEST_HOLD,
                &[
                    h.cmd_seq,
                    (u64::from(h.location) << 32) | u64::from(h.sku),
                    u64::from(h.qty),
                    h.expires_at_ns,
                ],
            ));
        }
        (holds, hold_count)
    }
}

/// The digest's entry tags ("cell", "sku", "loc", "hold").
const DIGEST_CELL: u64 = 0x6365_6c6c;
const DIGEST_SKU: u64 = 0x736b_7500;
const DIGEST_LOCATION: u64 = 0x6c6f_6300;
const DIGEST_HOLD: u64 = 0x686f_6c64;

/// One digest entry: `words` mixed in after `tag`.
fn digest_entry(tag: u64, words: &[u64]) -> u64 {
    words.iter().fold(mix64(tag), |h, &w| mix64(h ^ w))
}

/// A 16-byte name as two little-endian words.
fn name_words(name: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_le_bytes(name[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(name[8..].try_into().expect("8 bytes")),
    ]
}
