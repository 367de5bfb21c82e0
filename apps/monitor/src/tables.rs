use std::collections::HashMap;
use std::hash::Hash;

use serde_json::{json, Value};
use tally_wire::{Message, MAX_MESSAGE_SIZE};

use tally_client::replica::Cell;
use tally_client::text;

// ---------------------------------------------------------------------------
// Stored messages and bounded tables.

/// One stream message as the indexes keep it, with the cell's state right
/// after it (cell history only).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StoredMessage {
    pub(crate) seq: u64,
    pub(crate) after_on_hand: u32,
    pub(crate) after_reserved: u32,
    pub(crate) len: u8,
    pub(crate) bytes: [u8; MAX_MESSAGE_SIZE],
}

impl StoredMessage {
    pub(crate) const EMPTY: StoredMessage = StoredMessage {
        seq: 0,
        after_on_hand: 0,
        after_reserved: 0,
        len: 0,
        bytes: [0; MAX_MESSAGE_SIZE],
    };

    pub(crate) fn new(seq: u64, message: &Message) -> StoredMessage {
        let source = message.as_bytes();
        let mut stored = StoredMessage {
            seq,
            len: source.len() as u8,
            ..StoredMessage::EMPTY
        };
        stored.bytes[..source.len()].copy_from_slice(source);
        stored
    }

    pub(crate) fn with_after(mut self, cell: Cell) -> StoredMessage {
        self.after_on_hand = cell.on_hand;
        self.after_reserved = cell.reserved;
        self
    }

    pub(crate) fn message(&self) -> Message<'_> {
        Message::parse(&self.bytes[..usize::from(self.len)])
            .expect("stored from a message that parsed")
    }

    /// The message as JSON ([`text::json`]), with `after` for cell history.
    pub(crate) fn json(&self, with_after: bool) -> Value {
        let mut value = text::json(self.seq, &self.message());
        if with_after {
            value["after"] = json!({
                "on_hand": self.after_on_hand,
                "reserved": self.after_reserved,
                "available": self.after_on_hand.saturating_sub(self.after_reserved),
            });
        }
        value
    }
}

/// What [`ClockTable::claim`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim<K> {
    /// The key had this slot.
    Existing(u32),
    /// The key got a never-used slot.
    Fresh(u32),
    /// The key got the slot of the evicted key.
    Evicted(u32, K),
}

impl<K> Claim<K> {
    pub(crate) fn slot(&self) -> u32 {
        match *self {
            Claim::Existing(slot) | Claim::Fresh(slot) | Claim::Evicted(slot, _) => slot,
        }
    }
}

/// Keys mapped to a fixed number of slots; when full, a new key takes the
/// slot of one not used since the clock hand last passed it.
#[derive(Debug)]
pub(crate) struct ClockTable<K> {
    pub(crate) index: HashMap<K, u32>,
    pub(crate) keys: Vec<K>,
    pub(crate) referenced: Vec<bool>,
    pub(crate) hand: usize,
    pub(crate) capacity: usize,
}

impl<K: Copy + Eq + Hash> ClockTable<K> {
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(capacity > 0 && capacity <= u32::MAX as usize);
        ClockTable {
            // Twice the entries: with the load at most half, hashbrown
            // rehashes in place instead of growing when removals leave
            // tombstones.
            index: HashMap::with_capacity(2 * capacity),
            keys: Vec::with_capacity(capacity),
            referenced: Vec::with_capacity(capacity),
            hand: 0,
            capacity,
        }
    }

    pub(crate) fn find(&self, key: &K) -> Option<u32> {
        self.index.get(key).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The slot of `key`, marked as used; a new slot when absent.
    pub(crate) fn claim(&mut self, key: K) -> Claim<K> {
        if let Some(&slot) = self.index.get(&key) {
            self.referenced[slot as usize] = true;
            return Claim::Existing(slot);
        }
        if self.keys.len() < self.capacity {
            let slot = self.keys.len();
            self.keys.push(key);
            self.referenced.push(true);
            self.index.insert(key, slot as u32);
            return Claim::Fresh(slot as u32);
        }
        // At most one full turn clears every bit, so this ends.
        while self.referenced[self.hand] {
            self.referenced[self.hand] = false;
            self.hand = (self.hand + 1) % self.capacity;
        }
        let slot = self.hand;
        self.hand = (self.hand + 1) % self.capacity;
        let evicted = std::mem::replace(&mut self.keys[slot], key);
        self.index.remove(&evicted);
        self.index.insert(key, slot as u32);
        self.referenced[slot] = true;
        Claim::Evicted(slot as u32, evicted)
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.index.capacity() * (std::mem::size_of::<K>() + 4 + 1)
            + self.capacity * (std::mem::size_of::<K>() + 1)
    }
}

/// One ring of `depth` stored messages per slot, in one allocation.
#[derive(Debug)]
pub(crate) struct Rings {
    pub(crate) depth: usize,
    pub(crate) entries: Box<[StoredMessage]>,
    pub(crate) heads: Box<[RingHead]>,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RingHead {
    /// Entries held (≤ depth).
    pub(crate) len: u32,
    /// Where the next entry goes.
    pub(crate) next: u32,
    /// Entries ever pushed since the slot was last reset.
    pub(crate) total: u64,
}

impl Rings {
    pub(crate) fn new(slots: usize, depth: usize) -> Rings {
        Rings {
            depth,
            entries: vec![StoredMessage::EMPTY; slots * depth].into_boxed_slice(),
            heads: vec![RingHead::default(); slots].into_boxed_slice(),
        }
    }

    pub(crate) fn reset(&mut self, slot: u32) {
        self.heads[slot as usize] = RingHead::default();
    }

    /// Appends; returns whether the oldest entry was overwritten.
    pub(crate) fn push(&mut self, slot: u32, entry: StoredMessage) -> bool {
        let head = &mut self.heads[slot as usize];
        self.entries[slot as usize * self.depth + head.next as usize] = entry;
        head.next = ((head.next as usize + 1) % self.depth) as u32;
        head.total += 1;
        if (head.len as usize) < self.depth {
            head.len += 1;
            false
        } else {
            true
        }
    }

    /// The slot's entries, oldest first.
    pub(crate) fn iter(&self, slot: u32) -> impl DoubleEndedIterator<Item = &StoredMessage> + '_ {
        let head = self.heads[slot as usize];
        let len = head.len as usize;
        let start = if len < self.depth {
            0
        } else {
            head.next as usize
        };
        let base = slot as usize * self.depth;
        (0..len).map(move |i| &self.entries[base + (start + i) % self.depth])
    }

    pub(crate) fn total(&self, slot: u32) -> u64 {
        self.heads[slot as usize].total
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.entries.len() * std::mem::size_of::<StoredMessage>()
            + self.heads.len() * std::mem::size_of::<RingHead>()
    }
}
