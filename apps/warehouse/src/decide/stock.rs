//! Stock moves: deciding `T` (transfer between locations), `K` (recount)
//! and `A` (adjustment).

use tally_wire::{
    delta_reason, reject_reason, Adjust, InventoryLevel, OnHandDelta, Recount, Transfer,
};

use super::{EventSink, Warehouse};
use tally_client::replica::{id_kind, Resolve};

impl Warehouse {
    pub(super) fn decide_transfer<S: EventSink>(
        &mut self,
        cmd_seq: u64,
        m: &Transfer,
        out: &mut S,
    ) -> usize {
        let origin = m.header.origin.get();
        let (from, to, sku, qty) = (m.from.get(), m.to.get(), m.sku.get(), m.qty.get());
        if Self::bad_quantity(qty) || from == to {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        let Some(s) = self.replica.sku_slot(sku) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_SKU, out);
        };
        let (Some(lf), Some(lt)) = (
            self.replica.location_index(from),
            self.replica.location_index(to),
        ) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_LOCATION, out);
        };
        if self
            .replica
            .id_slot(origin, id_kind::TRANSFER, m.transfer_id.get())
            .is_some()
        {
            return self.reject(cmd_seq, reject_reason::DUPLICATE_ID, out);
        }
        if self.cell(lf, s).available() < qty {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        if self.cell(lt, s).on_hand.checked_add(qty).is_none() {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        if !self.cell_fits(lt, s) {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        // Source leg first: a replica between the two legs sees less stock,
        // never more.
        self.emit(
            OnHandDelta::new(from, sku, -(qty as i32), delta_reason::TRANSFER, cmd_seq),
            Resolve::Command(cmd_seq),
            out,
        );
        self.emit(
            OnHandDelta::new(to, sku, qty as i32, delta_reason::TRANSFER, cmd_seq),
            Resolve::Command(cmd_seq),
            out,
        );
        2
    }

    pub(super) fn decide_recount<S: EventSink>(
        &mut self,
        cmd_seq: u64,
        m: &Recount,
        out: &mut S,
    ) -> usize {
        let (location, sku, on_hand, expected) = (
            m.location.get(),
            m.sku.get(),
            m.on_hand.get(),
            m.expected_version.get(),
        );
        let Some(s) = self.replica.sku_slot(sku) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_SKU, out);
        };
        let Some(l) = self.replica.location_index(location) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_LOCATION, out);
        };
        let cell = self.cell(l, s);
        // A provisional version (a decision still in flight) never matches:
        // the counter cannot have seen that change.
        if expected != 0 && expected != cell.version {
            return self.reject(cmd_seq, reject_reason::VERSION_CONFLICT, out);
        }
        if on_hand < cell.reserved || !self.cell_fits(l, s) {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        self.emit(
            InventoryLevel::new(location, sku, on_hand, cell.reserved),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }

    pub(super) fn decide_adjust<S: EventSink>(
        &mut self,
        cmd_seq: u64,
        m: &Adjust,
        out: &mut S,
    ) -> usize {
        let (location, sku, delta, reason) =
            (m.location.get(), m.sku.get(), m.delta.get(), m.reason);
        let reason_ok = matches!(
            reason,
            delta_reason::ADJUST | delta_reason::RETURN | delta_reason::RECOUNT
        );
        if delta == 0 || delta == i32::MIN || !reason_ok {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        let Some(s) = self.replica.sku_slot(sku) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_SKU, out);
        };
        let Some(l) = self.replica.location_index(location) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_LOCATION, out);
        };
        let cell = self.cell(l, s);
        if delta < 0 && cell.available() < delta.unsigned_abs() {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        if delta > 0 && cell.on_hand.checked_add(delta as u32).is_none() {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        if !self.cell_fits(l, s) {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        self.emit(
            OnHandDelta::new(location, sku, delta, reason, cmd_seq),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }
}
