//! Holds: deciding `V` (reserve), `C` (confirm) and `Y` (release), and
//! expiring holds whose time has passed.

use tally_wire::{
    delta_reason, hold_outcome, reject_reason, ConfirmHold, HoldEnded, HoldPlaced, OnHandDelta,
    ReleaseHold, Reserve,
};

use super::{EventSink, Warehouse};
use tally_client::replica::{id_kind, HoldSlot, Resolve};

impl Warehouse {
    /// Expires holds whose `expires_at_ns` ≤ `now_ns` with `E(X)`, earliest
    /// first, as many as `out.room()` allows. Does nothing while deferring
    /// (an earlier run may already have expired them). Returns the events
    /// published.
    pub fn expire<S: EventSink>(&mut self, now_ns: u64, out: &mut S) -> usize {
        if self.deferring {
            return 0;
        }
        let mut emitted = 0;
        while out.room() > 0 {
            let Some(slot) = self.replica.first_expiring_slot() else {
                break;
            };
            let hold = self.replica.hold_at(slot as usize);
            if hold.expires_at_ns > now_ns {
                break;
            }
            self.emit(
                hold_ended(&hold, hold_outcome::EXPIRED),
                Resolve::Nothing,
                out,
            );
            self.counters.expired += 1;
            emitted += 1;
        }
        emitted
    }

    pub(super) fn decide_reserve<S: EventSink>(
        &mut self,
        cmd_seq: u64,
        m: &Reserve,
        out: &mut S,
    ) -> usize {
        let origin = m.header.origin.get();
        let (location, sku, qty, ttl_ms) =
            (m.location.get(), m.sku.get(), m.qty.get(), m.ttl_ms.get());
        if Self::bad_quantity(qty) || ttl_ms == 0 {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        let Some(s) = self.replica.sku_slot(sku) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_SKU, out);
        };
        let Some(l) = self.replica.location_index(location) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_LOCATION, out);
        };
        if self
            .replica
            .id_slot(origin, id_kind::HOLD, m.hold_id.get())
            .is_some()
        {
            return self.reject(cmd_seq, reject_reason::DUPLICATE_ID, out);
        }
        if self.replica.holds_full() {
            self.counters.holds_full += 1;
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        if self.cell(l, s).available() < qty {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        let expires_at_ns = m
            .header
            .timestamp_ns
            .get()
            .saturating_add(u64::from(ttl_ms) * 1_000_000);
        self.emit(
            HoldPlaced::new(cmd_seq, location, sku, qty, expires_at_ns),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }

    pub(super) fn decide_confirm<S: EventSink>(
        &mut self,
        cmd_seq: u64,
        m: &ConfirmHold,
        out: &mut S,
    ) -> usize {
        let Some(hold) = self.client_hold(m.header.origin.get(), m.hold_id.get()) else {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        };
        // An open hold's cell exists, unless the cell table was full when
        // its `H` came back from an earlier run (a limit met: the app stops).
        let Some(c) = self.replica.cell_slot(hold.location, hold.sku) else {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        };
        let cell = self.replica.cell_state(c);
        assert!(
            cell.reserved >= hold.qty && cell.on_hand >= hold.qty,
            "a hold's units are reserved and on hand"
        );
        self.emit(
            hold_ended(&hold, hold_outcome::CONFIRMED),
            Resolve::Nothing,
            out,
        );
        self.emit(
            OnHandDelta::new(
                hold.location,
                hold.sku,
                -(hold.qty as i32),
                delta_reason::HOLD_CONFIRMED,
                cmd_seq,
            ),
            Resolve::Command(cmd_seq),
            out,
        );
        2
    }

    pub(super) fn decide_release<S: EventSink>(
        &mut self,
        cmd_seq: u64,
        m: &ReleaseHold,
        out: &mut S,
    ) -> usize {
        let Some(hold) = self.client_hold(m.header.origin.get(), m.hold_id.get()) else {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        };
        self.emit(
            hold_ended(&hold, hold_outcome::RELEASED),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }

    /// The open hold `hold_id` of client `origin`.
    fn client_hold(&self, origin: u16, hold_id: u64) -> Option<HoldSlot> {
        let slot = self.replica.hold_slot_by_client(origin, hold_id)?;
        Some(self.replica.hold_at(slot as usize))
    }
}

/// `E` ending `hold` with `outcome`.
fn hold_ended(hold: &HoldSlot, outcome: u8) -> HoldEnded {
    HoldEnded::new(hold.cmd_seq, hold.location, hold.sku, hold.qty, outcome)
}
