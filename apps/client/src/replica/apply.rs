//! Applying the stream: commands remembered until their outcome, directory
//! events, deltas, holds and levels.

use tally_runtime::rand::mix64;
use tally_wire::{
    delta_reason, directory_kind, hold_outcome, system_code, HoldEnded, HoldPlaced, InventoryLevel,
    LocationDirectory, Message, OnHandDelta, SkuDirectory,
};

use super::{
    id_kind, symbol_hash, Applied, HoldSlot, IdRecord, PendingSlot, Replica, Resolve,
    CARRIED_HOLD_BIT, HOLD_CLIENT_KNOWN, HOLD_IN_USE, PENDING_EMPTY, PENDING_RESOLVED,
    PENDING_UNRESOLVED, PROVISIONAL_VERSION_BIT,
};

impl Replica {
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
    pub(super) fn record_pending(&mut self, seq: u64, bytes: &[u8]) {
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
    pub(super) fn resolve(&mut self, seq: u64) -> bool {
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
                let id = m.sku.get();
                self.resolve_directory_add(resolve, directory_kind::SKU, id, &m.symbol)
            }
            Message::LocationDirectory(m) => {
                self.on_location_directory(m);
                let id = u32::from(m.location.get());
                self.resolve_directory_add(resolve, directory_kind::LOCATION, id, &m.name)
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

    /// The `N` (directory add) an `R` or `L` answers: the oldest command
    /// still waiting, when it is an `N` of that kind and name (the
    /// session-start broadcast's directory events answer nothing).
    fn resolve_directory_add(
        &mut self,
        resolve: Resolve,
        kind: u8,
        id: u32,
        name: &[u8; 16],
    ) -> Option<u64> {
        match resolve {
            Resolve::Command(seq) => self.resolve(seq).then_some(seq),
            Resolve::Nothing => None,
            Resolve::Stream => {
                let oldest = self.oldest_unresolved()?;
                let Some(Message::DirectoryAdd(n)) =
                    self.pending_slot(oldest).map(PendingSlot::message)
                else {
                    return None;
                };
                let matches =
                    n.kind == kind && n.name == *name && (n.id.get() == 0 || n.id.get() == id);
                (matches && self.resolve(oldest)).then_some(oldest)
            }
        }
    }

    pub(super) fn on_sku_directory(&mut self, m: &SkuDirectory) {
        let sku = m.sku.get();
        let Some(index) = self.register_sku(sku) else {
            self.counters.sku_overflow += 1;
            return;
        };
        self.set_symbol(index, m.symbol);
    }

    pub(super) fn on_location_directory(&mut self, m: &LocationDirectory) {
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

    pub(super) fn index_symbol(&mut self, index: u32, symbol: [u8; 16]) {
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
    pub(super) fn event_cell(&mut self, location: u16, sku: u32) -> Option<usize> {
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

    pub(super) fn on_delta(&mut self, stamp: u64, m: &OnHandDelta) -> Option<u64> {
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

    pub(super) fn record_order(&mut self, cmd_seq: u64, location: u16, sku: u32, delta: i32) {
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

    pub(super) fn change_order(&mut self, cmd_seq: u64, delta: i32) {
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

    pub(super) fn record_transfer(&mut self, cmd_seq: u64) {
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

    pub(super) fn on_hold(&mut self, stamp: u64, m: &HoldPlaced) -> Option<u64> {
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

    pub(super) fn on_hold_end(
        &mut self,
        stamp: u64,
        m: &HoldEnded,
        resolve: Resolve,
    ) -> Option<u64> {
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

    pub(super) fn on_level(
        &mut self,
        stamp: u64,
        m: &InventoryLevel,
        resolve: Resolve,
    ) -> Option<u64> {
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
}
