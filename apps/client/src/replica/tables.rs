//! The client-id history and the hold table (a heap by expiry).

use tally_runtime::rand::mix64;

use super::{client_hash, id_kind, HoldSlot, IdRecord, Replica, HOLD_CLIENT_KNOWN, HOLD_IN_USE};

impl Replica {
    /// Adds a record, evicting the oldest when full. A key already present is
    /// an anomaly (the authority accepted a duplicate id): the first record
    /// stays.
    pub fn insert_id(&mut self, record: IdRecord) {
        if self
            .id_slot(record.origin, record.kind, record.id)
            .is_some()
        {
            self.counters.anomalies += 1;
            return;
        }
        let capacity = self.ids.len() as u32;
        let slot = self.ids_next;
        if self.ids_len == capacity {
            let old = self.ids[slot as usize];
            let removed = self
                .id_index
                .remove(client_hash(old.origin, old.kind, old.id), slot);
            debug_assert!(removed);
            self.counters.ids_evicted += 1;
        } else {
            self.ids_len += 1;
        }
        self.ids[slot as usize] = record;
        self.id_index
            .insert(client_hash(record.origin, record.kind, record.id), slot);
        self.ids_next = if slot + 1 == capacity { 0 } else { slot + 1 };
    }

    /// The history slot of `(origin, kind, id)`.
    #[inline]
    pub fn id_slot(&self, origin: u16, kind: u8, id: u64) -> Option<u32> {
        let ids = &self.ids;
        self.id_index.find(client_hash(origin, kind, id), |s| {
            let r = &ids[s as usize];
            r.id == id && r.origin == origin && r.kind == kind
        })
    }

    /// The records of the history, oldest first.
    pub fn ids_oldest_first(&self) -> impl Iterator<Item = &IdRecord> + '_ {
        let capacity = self.ids.len() as u32;
        let start = (self.ids_next + capacity - self.ids_len) % capacity;
        (0..self.ids_len).map(move |k| &self.ids[((start + k) % capacity) as usize])
    }

    // -----------------------------------------------------------------------
    // Holds.

    /// Adds an open hold; false (counted) when the table is full or the key
    /// is already open.
    pub fn insert_hold(&mut self, mut hold: HoldSlot) -> bool {
        if self.hold_slot(hold.cmd_seq).is_some() {
            self.counters.anomalies += 1;
            return false;
        }
        if self.hold_free_len == 0 {
            self.counters.hold_overflow += 1;
            return false;
        }
        self.hold_free_len -= 1;
        let slot = self.hold_free[self.hold_free_len as usize];
        hold.flags |= HOLD_IN_USE;
        hold.heap_pos = self.hold_heap_len;
        self.holds[slot as usize] = hold;
        self.hold_by_cmd.insert(mix64(hold.cmd_seq), slot);
        if hold.flags & HOLD_CLIENT_KNOWN != 0 {
            self.hold_by_client
                .insert(client_hash(hold.origin, id_kind::HOLD, hold.hold_id), slot);
        }
        self.hold_heap[self.hold_heap_len as usize] = slot;
        self.hold_heap_len += 1;
        self.heap_up(hold.heap_pos);
        true
    }

    /// Removes the open hold in `slot`, returning it.
    pub fn remove_hold(&mut self, slot: u32) -> HoldSlot {
        let hold = self.holds[slot as usize];
        assert!(hold.flags & HOLD_IN_USE != 0, "removing a free hold slot");
        let removed = self.hold_by_cmd.remove(mix64(hold.cmd_seq), slot);
        debug_assert!(removed);
        if hold.flags & HOLD_CLIENT_KNOWN != 0 {
            let removed = self
                .hold_by_client
                .remove(client_hash(hold.origin, id_kind::HOLD, hold.hold_id), slot);
            debug_assert!(removed);
        }
        // Take it out of the heap: move the last entry into its place.
        let pos = hold.heap_pos;
        self.hold_heap_len -= 1;
        let last = self.hold_heap[self.hold_heap_len as usize];
        if pos != self.hold_heap_len {
            self.hold_heap[pos as usize] = last;
            self.holds[last as usize].heap_pos = pos;
            self.heap_down(pos);
            self.heap_up(self.holds[last as usize].heap_pos);
        }
        self.holds[slot as usize] = HoldSlot::default();
        self.hold_free[self.hold_free_len as usize] = slot;
        self.hold_free_len += 1;
        hold
    }

    /// Changes the key of the open hold in `slot` (the warehouse's session
    /// start re-keys carried-over holds).
    pub fn rekey_hold(&mut self, slot: u32, cmd_seq: u64) {
        let mut hold = self.remove_hold(slot);
        hold.cmd_seq = cmd_seq;
        let inserted = self.insert_hold(hold);
        assert!(inserted, "a hold just removed fits again");
    }

    /// The slot of the open hold keyed `cmd_seq`.
    #[inline]
    pub fn hold_slot(&self, cmd_seq: u64) -> Option<u32> {
        let holds = &self.holds;
        self.hold_by_cmd
            .find(mix64(cmd_seq), |s| holds[s as usize].cmd_seq == cmd_seq)
    }

    /// The slot of the open hold placed by `(origin, hold_id)`.
    #[inline]
    pub fn hold_slot_by_client(&self, origin: u16, hold_id: u64) -> Option<u32> {
        let holds = &self.holds;
        self.hold_by_client
            .find(client_hash(origin, id_kind::HOLD, hold_id), |s| {
                let h = &holds[s as usize];
                h.hold_id == hold_id && h.origin == origin
            })
    }

    /// Whether another hold fits.
    pub fn holds_full(&self) -> bool {
        self.hold_free_len == 0
    }

    /// The slot of the open hold that expires first (ties: lowest key).
    #[inline]
    pub fn first_expiring_slot(&self) -> Option<u32> {
        (self.hold_heap_len > 0).then(|| self.hold_heap[0])
    }

    pub(super) fn heap_up(&mut self, mut pos: u32) {
        let slot = self.hold_heap[pos as usize];
        let key = self.holds[slot as usize].expiry_key();
        while pos > 0 {
            let parent = (pos - 1) / 2;
            let parent_slot = self.hold_heap[parent as usize];
            if self.holds[parent_slot as usize].expiry_key() <= key {
                break;
            }
            self.hold_heap[pos as usize] = parent_slot;
            self.holds[parent_slot as usize].heap_pos = pos;
            pos = parent;
        }
        self.hold_heap[pos as usize] = slot;
        self.holds[slot as usize].heap_pos = pos;
    }

    pub(super) fn heap_down(&mut self, mut pos: u32) {
        let slot = self.hold_heap[pos as usize];
        let key = self.holds[slot as usize].expiry_key();
        loop {
            let left = 2 * pos + 1;
            if left >= self.hold_heap_len {
                break;
            }
            let right = left + 1;
            let mut child = left;
            if right < self.hold_heap_len
                && self.holds[self.hold_heap[right as usize] as usize].expiry_key()
                    < self.holds[self.hold_heap[left as usize] as usize].expiry_key()
            {
                child = right;
            }
            let child_slot = self.hold_heap[child as usize];
            if key <= self.holds[child_slot as usize].expiry_key() {
                break;
            }
            self.hold_heap[pos as usize] = child_slot;
            self.holds[child_slot as usize].heap_pos = pos;
            pos = child;
        }
        self.hold_heap[pos as usize] = slot;
        self.holds[slot as usize].heap_pos = pos;
    }

    // -----------------------------------------------------------------------
    // Lookups.
}
