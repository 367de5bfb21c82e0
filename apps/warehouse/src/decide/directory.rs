//! Deciding `N`, a new SKU or location while trading (docs/protocol.md,
//! "Additions to DESIGN.md"): the warehouse answers with the directory event
//! every replica already applies (`R` or `L`), or `J`.

use tally_wire::{
    directory_kind, reject_reason, trim_ascii, DirectoryAdd, LocationDirectory, SkuDirectory,
};

use super::{EventSink, Warehouse};
use tally_client::replica::Resolve;

impl Warehouse {
    /// `N`: `J(Z)` for a name that is blank or not printable ASCII, an
    /// unknown kind, a location id over 16 bits or a full directory; `J(D)`
    /// for a name or an id already in the directory; else `R` or `L` with
    /// the id asked for, or the lowest free one above every id in use when
    /// it asked for 0.
    pub(super) fn decide_directory_add<S: EventSink>(
        &mut self,
        cmd_seq: u64,
        m: &DirectoryAdd,
        out: &mut S,
    ) -> usize {
        let name = trim_ascii(&m.name);
        let printable = name.iter().all(|&b| (0x20..=0x7e).contains(&b));
        let Some(name_text) = std::str::from_utf8(name).ok().filter(|_| printable) else {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        };
        if name_text.is_empty() || name_text.starts_with(' ') {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        match m.kind {
            directory_kind::SKU => self.add_sku(cmd_seq, m, name_text, out),
            directory_kind::LOCATION => self.add_location(cmd_seq, m, name_text, out),
            _ => self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out),
        }
    }

    fn add_sku<S: EventSink>(
        &mut self,
        cmd_seq: u64,
        m: &DirectoryAdd,
        name: &str,
        out: &mut S,
    ) -> usize {
        let replica = &self.replica;
        if replica.sku_count() >= replica.limits().skus_max {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        if replica.sku_by_symbol(name).is_some() {
            return self.reject(cmd_seq, reject_reason::DUPLICATE_ID, out);
        }
        let in_use = replica.sku_ids();
        let id = match m.id.get() {
            0 => in_use
                .iter()
                .max()
                .map_or(Some(1), |max| max.checked_add(1)),
            id => Some(id),
        };
        let Some(id) = id.filter(|&id| replica.sku_slot(id).is_none()) else {
            return self.reject(cmd_seq, reject_reason::DUPLICATE_ID, out);
        };
        self.emit(
            SkuDirectory::new(id, m.name),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }

    fn add_location<S: EventSink>(
        &mut self,
        cmd_seq: u64,
        m: &DirectoryAdd,
        name: &str,
        out: &mut S,
    ) -> usize {
        let replica = &self.replica;
        if replica.location_count() >= replica.limits().locations_max {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        if replica.location_by_name(name).is_some() {
            return self.reject(cmd_seq, reject_reason::DUPLICATE_ID, out);
        }
        let in_use = replica.location_ids();
        let id = match m.id.get() {
            0 => in_use
                .iter()
                .max()
                .map_or(Some(1), |max| max.checked_add(1)),
            id => u16::try_from(id).ok().filter(|&id| id != 0),
        };
        let Some(id) = id else {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        };
        if replica.location_index(id).is_some() {
            return self.reject(cmd_seq, reject_reason::DUPLICATE_ID, out);
        }
        self.emit(
            LocationDirectory::new(id, m.name),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }
}
