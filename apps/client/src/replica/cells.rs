//! The cell table: dense, dense over kept locations, or sparse.

use core::mem::size_of;

use tally_runtime::rand::mix64;

use super::{CellState, LocationSet, ReplicaLimits, SlotIndex};

/// No cell: the end of a SKU's chain of cells.
pub(super) const NO_CELL: u32 = u32::MAX;

/// The cells (location, sku) that exist, by (sku index, location index).
///
/// Layouts, chosen once from [`ReplicaLimits`] and the kept
/// [`LocationSet`]:
/// - **dense** when `cells_max ≥ skus_max × locations_max`: slot `sku index ×
///   locations_max + location index`, every slot exists (16 bytes a cell, no
///   index);
/// - **dense over kept locations** (a store node, [`Replica::keep_only`](super::Replica::keep_only))
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
    pub(super) dense_width: Option<u16>,
    /// Dense over kept locations: location index → column + 1 (0 = none
    /// yet), for every location index; empty otherwise (column = location
    /// index).
    pub(super) columns: Box<[u16]>,
    /// Dense over kept locations: column → location index
    /// ([`NO_LOCATION`] while free).
    pub(super) column_locations: Box<[u16]>,
    pub(super) columns_used: u16,
    pub(super) cells: Box<[CellState]>,
    pub(super) keys: Box<[u64]>,
    pub(super) sku_first: Box<[u32]>,
    pub(super) next_of_sku: Box<[u32]>,
    pub(super) index: SlotIndex,
    pub(super) len: u32,
}

/// A column of a dense-over-kept-locations table no location took yet.
pub(super) const NO_LOCATION: u16 = u16::MAX;

impl CellTable {
    /// A table with no room (what a replica holds while its table is made
    /// again).
    pub(super) fn empty() -> Self {
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
    pub(super) fn new(limits: &ReplicaLimits, kept: &LocationSet) -> Self {
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
    pub(super) fn key(sku_index: u32, location_index: u16) -> u64 {
        (u64::from(sku_index) << 16) | u64::from(location_index)
    }

    /// The column of a location index in a dense table, if it has one.
    #[inline]
    pub(super) fn column(&self, location_index: u16) -> Option<u16> {
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

    pub(super) fn clear(&mut self) {
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

    pub(super) fn memory_bytes(&self) -> usize {
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
