//! Deciding orders: `O` (with location 0, the location with the most
//! available), `M` and `X`, each answered by a `D` or a `J`.

use tally_wire::{delta_reason, reject_reason, CancelOrder, ModifyOrder, OnHandDelta, Order};

use super::{EventSink, Warehouse};
use tally_client::replica::{id_kind, IdRecord, Resolve};

impl Warehouse {
    pub(super) fn decide_order<S: EventSink>(
        &mut self,
        cmd_seq: u64,
        m: &Order,
        out: &mut S,
    ) -> usize {
        let origin = m.header.origin.get();
        let (location, sku, qty) = (m.location.get(), m.sku.get(), m.qty.get());
        if Self::bad_quantity(qty) {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        let Some(s) = self.replica.sku_slot(sku) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_SKU, out);
        };
        let chosen = if location == 0 {
            self.pick_location(s)
        } else {
            match self.replica.location_index(location) {
                Some(l) => Some(l),
                None => return self.reject(cmd_seq, reject_reason::UNKNOWN_LOCATION, out),
            }
        };
        if self
            .replica
            .id_slot(origin, id_kind::ORDER, m.order_id.get())
            .is_some()
        {
            return self.reject(cmd_seq, reject_reason::DUPLICATE_ID, out);
        }
        let Some(l) = chosen.filter(|&l| self.cell(l, s).available() >= qty) else {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        };
        let location = self.replica.location_ids()[usize::from(l)];
        self.emit(
            OnHandDelta::new(location, sku, -(qty as i32), delta_reason::ORDER, cmd_seq),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }

    /// For location 0: the location with the most available of the SKU at
    /// `sku_index`, ties to the lowest location id.
    ///
    /// Only the SKU's existing cells are visited (a cell that does not exist
    /// has nothing available; when no cell has any, the order is rejected
    /// whichever location is named, so the choice does not matter).
    #[inline]
    fn pick_location(&self, sku_index: u32) -> Option<u16> {
        let mut best: Option<(u32, u16, u16)> = None; // (available, id, index)
        let location_ids = self.replica.location_ids();
        self.replica.cells().for_each_of_sku(
            sku_index,
            self.replica.location_count(),
            |l, cell| {
                let available = cell.available();
                let id = location_ids[usize::from(l)];
                let better = match best {
                    None => true,
                    Some((a, best_id, _)) => available > a || (available == a && id < best_id),
                };
                if better {
                    best = Some((available, id, l));
                }
            },
        );
        best.map(|(_, _, l)| l)
    }

    pub(super) fn decide_modify<S: EventSink>(
        &mut self,
        cmd_seq: u64,
        m: &ModifyOrder,
        out: &mut S,
    ) -> usize {
        let origin = m.header.origin.get();
        let new_qty = m.new_qty.get();
        let Some(order) = self.open_order(origin, m.order_id.get()) else {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        };
        if Self::bad_quantity(new_qty) {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        let Some(c) = self.replica.cell_slot(order.location, order.sku) else {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        };
        let cell = self.replica.cell_state(c);
        // Both in 1..=i32::MAX, so the difference fits an i32.
        let delta = order.remaining as i32 - new_qty as i32;
        if delta < 0 && cell.available() < delta.unsigned_abs() {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        if delta > 0 && cell.on_hand.checked_add(delta as u32).is_none() {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        self.emit(
            OnHandDelta::new(
                order.location,
                order.sku,
                delta,
                delta_reason::MODIFY,
                cmd_seq,
            ),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }

    pub(super) fn decide_cancel<S: EventSink>(
        &mut self,
        cmd_seq: u64,
        m: &CancelOrder,
        out: &mut S,
    ) -> usize {
        let origin = m.header.origin.get();
        let Some(order) = self.open_order(origin, m.order_id.get()) else {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        };
        let Some(c) = self.replica.cell_slot(order.location, order.sku) else {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        };
        if self
            .replica
            .cell_state(c)
            .on_hand
            .checked_add(order.remaining)
            .is_none()
        {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        self.emit(
            OnHandDelta::new(
                order.location,
                order.sku,
                order.remaining as i32,
                delta_reason::CANCEL,
                cmd_seq,
            ),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }

    /// Client `origin`'s order `order_id` while units of it remain.
    fn open_order(&self, origin: u16, order_id: u64) -> Option<IdRecord> {
        let i = self.replica.id_slot(origin, id_kind::ORDER, order_id)?;
        Some(self.replica.id_record(i)).filter(|order| order.remaining != 0)
    }
}
