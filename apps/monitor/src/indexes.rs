use std::collections::HashMap;

use serde::Serialize;
use tally_wire::{delta_reason, hold_outcome, HoldEnded, HoldPlaced, Message, Order, Reserve};

use crate::config::*;
use crate::tables::*;
use tally_client::replica::{Replica, CARRIED_HOLD_BIT};

// ---------------------------------------------------------------------------
// Indexes.

/// Where an order stands, from its timeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum OrderStatus {
    /// Only a modify or cancel was seen (the `O` is older than the monitor's
    /// history).
    #[default]
    Unknown,
    /// The `O` was seen; no outcome yet.
    Pending,
    /// Accepted (`D(−qty, O)`); `remaining` units are taken.
    Accepted,
    /// Rejected (`J`).
    Rejected,
    /// Cancelled (`D(+remaining, X)`).
    Cancelled,
}

impl OrderStatus {
    pub(crate) fn name(self) -> &'static str {
        match self {
            OrderStatus::Unknown => "unknown",
            OrderStatus::Pending => "pending",
            OrderStatus::Accepted => "accepted",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OrderMeta {
    /// Seq and time of the `O` (0 = not seen).
    pub(crate) order_seq: u64,
    pub(crate) order_timestamp_ns: u64,
    /// Location asked for (0 = any).
    pub(crate) requested_location: u16,
    /// Location the stock came from (once accepted).
    pub(crate) location: u16,
    pub(crate) sku: u32,
    /// Quantity ordered / accepted.
    pub(crate) qty: u32,
    /// Quantity now (after modifies; 0 once cancelled).
    pub(crate) remaining: u32,
    pub(crate) status: OrderStatus,
    /// Reason of the `J` that rejected the order.
    pub(crate) reject_reason: u8,
}

/// Where a hold stands, from its timeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum HoldStatus {
    /// Only a confirm or release was seen.
    #[default]
    Unknown,
    /// The `V` was seen; no outcome yet.
    Pending,
    /// Placed (`H`), not ended.
    Open,
    /// Rejected (`J`).
    Rejected,
    /// Ended `E(C)`: the units were sold.
    Confirmed,
    /// Ended `E(R)`.
    Released,
    /// Ended `E(X)`: past its TTL.
    Expired,
}

impl HoldStatus {
    pub(crate) fn name(self) -> &'static str {
        match self {
            HoldStatus::Unknown => "unknown",
            HoldStatus::Pending => "pending",
            HoldStatus::Open => "open",
            HoldStatus::Rejected => "rejected",
            HoldStatus::Confirmed => "confirmed",
            HoldStatus::Released => "released",
            HoldStatus::Expired => "expired",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HoldMeta {
    /// Seq and time of the `V` (0 = not seen); the hold's key on the stream.
    pub(crate) reserve_seq: u64,
    pub(crate) reserve_timestamp_ns: u64,
    pub(crate) location: u16,
    pub(crate) sku: u32,
    pub(crate) qty: u32,
    pub(crate) ttl_ms: u32,
    pub(crate) expires_at_ns: u64,
    pub(crate) status: HoldStatus,
    pub(crate) reject_reason: u8,
    /// Seq of the `E` that ended it (0 = not ended).
    pub(crate) ended_seq: u64,
}

/// Counts of what the monitor's indexes dropped or could not place. Plain
/// integers, updated by the stream thread under the write lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IndexCounters {
    /// Cells whose history was evicted to make room for another cell.
    pub cells_evicted: u64,
    /// Cell events that pushed an older one out of its ring.
    pub cell_events_overwritten: u64,
    /// Order timelines evicted.
    pub orders_evicted: u64,
    /// Order messages that pushed an older one out of its timeline.
    pub order_events_overwritten: u64,
    /// Hold timelines evicted.
    pub holds_evicted: u64,
    /// Hold messages that pushed an older one out of its timeline.
    pub hold_events_overwritten: u64,
    /// Outcomes (`D`, `J`, `H`, `E`) whose command the monitor no longer
    /// knew (older than the replica's pending window, or never seen).
    pub outcomes_unattributed: u64,
    /// `H` events of holds carried over from an earlier session (no client
    /// id: not indexed by hold id).
    pub carried_holds: u64,
    /// Times the staging buffer had to grow (a batch larger than
    /// `staging_messages`).
    pub staging_growths: u64,
}

/// The monitor's own indexes (see the module docs).
#[derive(Debug)]
pub(crate) struct Indexes {
    pub(crate) cells: ClockTable<(u16, u32)>,
    pub(crate) cell_rings: Rings,
    pub(crate) orders: ClockTable<(u16, u64)>,
    pub(crate) order_meta: Box<[OrderMeta]>,
    pub(crate) order_rings: Rings,
    pub(crate) holds: ClockTable<(u16, u64)>,
    pub(crate) hold_meta: Box<[HoldMeta]>,
    pub(crate) hold_rings: Rings,
    /// Seq of a hold's `V` → its slot in `holds`.
    pub(crate) hold_by_reserve: HashMap<u64, u32>,
    pub(crate) counters: IndexCounters,
}

impl Indexes {
    pub(crate) fn new(limits: &IndexLimits) -> Indexes {
        let cells = limits.history_cells_max as usize;
        let orders = limits.orders_max as usize;
        let holds = limits.holds_max as usize;
        let timeline = limits.timeline_events_max as usize;
        Indexes {
            cells: ClockTable::new(cells),
            cell_rings: Rings::new(cells, limits.history_depth as usize),
            orders: ClockTable::new(orders),
            order_meta: vec![OrderMeta::default(); orders].into_boxed_slice(),
            order_rings: Rings::new(orders, timeline),
            holds: ClockTable::new(holds),
            hold_meta: vec![HoldMeta::default(); holds].into_boxed_slice(),
            hold_rings: Rings::new(holds, timeline),
            hold_by_reserve: HashMap::with_capacity(2 * holds),
            counters: IndexCounters::default(),
        }
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.cells.memory_bytes()
            + self.cell_rings.memory_bytes()
            + self.orders.memory_bytes()
            + self.order_meta.len() * std::mem::size_of::<OrderMeta>()
            + self.order_rings.memory_bytes()
            + self.holds.memory_bytes()
            + self.hold_meta.len() * std::mem::size_of::<HoldMeta>()
            + self.hold_rings.memory_bytes()
            + self.hold_by_reserve.capacity() * (8 + 4 + 1)
    }

    /// The timeline slot of order `key`, emptied when it is new.
    pub(crate) fn order_slot(&mut self, key: (u16, u64)) -> u32 {
        let claim = self.orders.claim(key);
        let slot = claim.slot();
        if !matches!(claim, Claim::Existing(_)) {
            if matches!(claim, Claim::Evicted(..)) {
                self.counters.orders_evicted += 1;
            }
            self.order_meta[slot as usize] = OrderMeta::default();
            self.order_rings.reset(slot);
        }
        slot
    }

    /// The timeline slot of hold `key`, emptied when it is new.
    pub(crate) fn hold_slot(&mut self, key: (u16, u64)) -> u32 {
        let claim = self.holds.claim(key);
        let slot = claim.slot();
        if !matches!(claim, Claim::Existing(_)) {
            if matches!(claim, Claim::Evicted(..)) {
                self.counters.holds_evicted += 1;
                let old = self.hold_meta[slot as usize].reserve_seq;
                if self.hold_by_reserve.get(&old) == Some(&slot) {
                    self.hold_by_reserve.remove(&old);
                }
            }
            self.hold_meta[slot as usize] = HoldMeta::default();
            self.hold_rings.reset(slot);
        }
        slot
    }

    pub(crate) fn push_order(&mut self, slot: u32, seq: u64, message: &Message) {
        if self
            .order_rings
            .push(slot, StoredMessage::new(seq, message))
        {
            self.counters.order_events_overwritten += 1;
        }
    }

    pub(crate) fn push_hold(&mut self, slot: u32, seq: u64, message: &Message) {
        if self.hold_rings.push(slot, StoredMessage::new(seq, message)) {
            self.counters.hold_events_overwritten += 1;
        }
    }

    /// Records a cell event with the cell's state after it.
    pub(crate) fn cell_event(
        &mut self,
        seq: u64,
        message: &Message,
        location: u16,
        sku: u32,
        replica: &Replica,
    ) {
        let Some(cell) = replica.cell(location, sku) else {
            return; // dropped by the replica (location 0, full directory)
        };
        let claim = self.cells.claim((location, sku));
        let slot = claim.slot();
        if !matches!(claim, Claim::Existing(_)) {
            if matches!(claim, Claim::Evicted(..)) {
                self.counters.cells_evicted += 1;
            }
            self.cell_rings.reset(slot);
        }
        let entry = StoredMessage::new(seq, message).with_after(cell);
        if self.cell_rings.push(slot, entry) {
            self.counters.cell_events_overwritten += 1;
        }
    }

    /// Indexes `message` at `seq`, which `replica` has just applied.
    pub(crate) fn on_message(&mut self, seq: u64, message: &Message, replica: &Replica) {
        let origin = message.header().origin.get();
        let timestamp_ns = message.header().timestamp_ns.get();
        match *message {
            Message::Order(m) => self.on_order(seq, timestamp_ns, origin, m, message),
            Message::ModifyOrder(m) => {
                let slot = self.order_slot((origin, m.order_id.get()));
                self.push_order(slot, seq, message);
            }
            Message::CancelOrder(m) => {
                let slot = self.order_slot((origin, m.order_id.get()));
                self.push_order(slot, seq, message);
            }
            Message::Reserve(m) => self.on_reserve(seq, timestamp_ns, origin, m, message),
            Message::ConfirmHold(m) => {
                let slot = self.hold_slot((origin, m.hold_id.get()));
                self.push_hold(slot, seq, message);
            }
            Message::ReleaseHold(m) => {
                let slot = self.hold_slot((origin, m.hold_id.get()));
                self.push_hold(slot, seq, message);
            }
            Message::InventoryLevel(m) => {
                self.cell_event(seq, message, m.location.get(), m.sku.get(), replica);
            }
            Message::OnHandDelta(m) => {
                self.cell_event(seq, message, m.location.get(), m.sku.get(), replica);
                match m.reason {
                    delta_reason::ORDER
                    | delta_reason::MODIFY
                    | delta_reason::CANCEL
                    | delta_reason::HOLD_CONFIRMED => {
                        self.outcome(seq, message, m.cmd_seq.get(), replica);
                    }
                    _ => {} // transfers, adjustments, recounts: cell history only
                }
            }
            Message::HoldPlaced(m) => {
                self.cell_event(seq, message, m.location.get(), m.sku.get(), replica);
                self.on_hold_placed(seq, m, message);
            }
            Message::HoldEnded(m) => {
                self.cell_event(seq, message, m.location.get(), m.sku.get(), replica);
                self.on_hold_ended(seq, m, message);
            }
            Message::CommandRejected(m) => self.outcome(seq, message, m.cmd_seq.get(), replica),
            _ => {} // directory, system events, gateway rejects, T/Q/P commands
        }
    }

    fn on_order(&mut self, seq: u64, timestamp_ns: u64, origin: u16, m: &Order, message: &Message) {
        let slot = self.order_slot((origin, m.order_id.get()));
        let meta = &mut self.order_meta[slot as usize];
        if meta.order_seq == 0 {
            *meta = OrderMeta {
                order_seq: seq,
                order_timestamp_ns: timestamp_ns,
                requested_location: m.location.get(),
                location: m.location.get(),
                sku: m.sku.get(),
                qty: m.qty.get(),
                remaining: 0,
                status: OrderStatus::Pending,
                reject_reason: 0,
            };
        }
        self.push_order(slot, seq, message);
    }

    fn on_reserve(
        &mut self,
        seq: u64,
        timestamp_ns: u64,
        origin: u16,
        m: &Reserve,
        message: &Message,
    ) {
        let slot = self.hold_slot((origin, m.hold_id.get()));
        let meta = &mut self.hold_meta[slot as usize];
        if meta.reserve_seq == 0 {
            *meta = HoldMeta {
                reserve_seq: seq,
                reserve_timestamp_ns: timestamp_ns,
                location: m.location.get(),
                sku: m.sku.get(),
                qty: m.qty.get(),
                ttl_ms: m.ttl_ms.get(),
                expires_at_ns: 0,
                status: HoldStatus::Pending,
                reject_reason: 0,
                ended_seq: 0,
            };
            self.hold_by_reserve.insert(seq, slot);
        }
        self.push_hold(slot, seq, message);
    }

    fn on_hold_placed(&mut self, seq: u64, m: &HoldPlaced, message: &Message) {
        let key = m.cmd_seq.get();
        if key & CARRIED_HOLD_BIT != 0 {
            self.counters.carried_holds += 1;
        } else if let Some(&slot) = self.hold_by_reserve.get(&key) {
            let meta = &mut self.hold_meta[slot as usize];
            meta.status = HoldStatus::Open;
            meta.expires_at_ns = m.expires_at_ns.get();
            meta.location = m.location.get();
            meta.sku = m.sku.get();
            meta.qty = m.qty.get();
            self.push_hold(slot, seq, message);
        } else {
            self.counters.outcomes_unattributed += 1;
        }
    }

    fn on_hold_ended(&mut self, seq: u64, m: &HoldEnded, message: &Message) {
        let key = m.cmd_seq.get();
        if let Some(&slot) = self.hold_by_reserve.get(&key) {
            let meta = &mut self.hold_meta[slot as usize];
            meta.status = match m.outcome {
                hold_outcome::CONFIRMED => HoldStatus::Confirmed,
                hold_outcome::RELEASED => HoldStatus::Released,
                hold_outcome::EXPIRED => HoldStatus::Expired,
                _ => meta.status,
            };
            meta.ended_seq = seq;
            self.push_hold(slot, seq, message);
        } else if key & CARRIED_HOLD_BIT == 0 {
            self.counters.outcomes_unattributed += 1;
        }
    }

    /// A `D` or `J` answering the command at `cmd_seq`: files it in the
    /// timeline of that command's order or hold.
    pub(crate) fn outcome(&mut self, seq: u64, message: &Message, cmd_seq: u64, replica: &Replica) {
        let Some(command) = replica.command(cmd_seq) else {
            self.counters.outcomes_unattributed += 1;
            return;
        };
        let origin = command.header().origin.get();
        let rejected = match *message {
            Message::CommandRejected(j) => Some(j.reason),
            _ => None,
        };
        match command {
            Message::Order(o) => {
                let slot = self.order_slot((origin, o.order_id.get()));
                let meta = &mut self.order_meta[slot as usize];
                if meta.order_seq == 0 {
                    // The timeline was evicted and made again: start over.
                    meta.order_seq = cmd_seq;
                    meta.requested_location = o.location.get();
                    meta.sku = o.sku.get();
                    meta.qty = o.qty.get();
                }
                if meta.order_seq == cmd_seq {
                    match (rejected, *message) {
                        (Some(reason), _) => {
                            meta.status = OrderStatus::Rejected;
                            meta.reject_reason = reason;
                        }
                        (None, Message::OnHandDelta(d)) => {
                            meta.status = OrderStatus::Accepted;
                            meta.location = d.location.get();
                            meta.remaining = o.qty.get();
                        }
                        _ => {}
                    }
                } // else: a duplicate order id, rejected; the order stands
                self.push_order(slot, seq, message);
            }
            Message::ModifyOrder(m) => {
                let slot = self.order_slot((origin, m.order_id.get()));
                if rejected.is_none() {
                    self.order_meta[slot as usize].remaining = m.new_qty.get();
                }
                self.push_order(slot, seq, message);
            }
            Message::CancelOrder(x) => {
                let slot = self.order_slot((origin, x.order_id.get()));
                if rejected.is_none() {
                    let meta = &mut self.order_meta[slot as usize];
                    meta.remaining = 0;
                    meta.status = OrderStatus::Cancelled;
                }
                self.push_order(slot, seq, message);
            }
            Message::Reserve(v) => {
                let slot = self.hold_slot((origin, v.hold_id.get()));
                let meta = &mut self.hold_meta[slot as usize];
                if meta.reserve_seq == cmd_seq {
                    if let Some(reason) = rejected {
                        meta.status = HoldStatus::Rejected;
                        meta.reject_reason = reason;
                    }
                }
                self.push_hold(slot, seq, message);
            }
            Message::ConfirmHold(c) => {
                let slot = self.hold_slot((origin, c.hold_id.get()));
                self.push_hold(slot, seq, message);
            }
            Message::ReleaseHold(k) => {
                let slot = self.hold_slot((origin, k.hold_id.get()));
                self.push_hold(slot, seq, message);
            }
            _ => {} // transfers, recounts, adjustments
        }
    }
}
