//! The open-addressing hash indexes of the replica's tables, and the key
//! hashes (runtime's `mix64`).

#[allow(unused_imports)]
use super::*;

/// Marks an unused bucket of a [`SlotIndex`].
pub(super) const EMPTY: u64 = u64::MAX;

/// An open-addressing (linear probing) hash index from a key to a `u32` slot
/// of some backing array, where the key itself lives. Each 8-byte bucket
/// holds the slot and the low 32 bits of the key's hash: a probe compares
/// the hash bits first and reads the backing array only on a match, and
/// deletion finds every entry's home bucket from its own hash bits, never
/// from the backing array. Capacity is a power of two at least twice the
/// number of entries it may hold (and at most 2^32), so probe sequences stay
/// short.
#[derive(Clone, Debug)]
pub struct SlotIndex {
    pub(super) buckets: Box<[u64]>,
    pub(super) mask: usize,
    pub(super) len: u32,
}

impl SlotIndex {
    pub(super) fn with_entries_max(entries_max: u32) -> Self {
        let buckets = (entries_max as usize * 2).next_power_of_two().max(16);
        assert!(buckets <= 1 << 32);
        Self {
            buckets: vec![EMPTY; buckets].into_boxed_slice(),
            mask: buckets - 1,
            len: 0,
        }
    }

    #[inline]
    pub(super) fn bucket(hash: u64, slot: u32) -> u64 {
        (hash << 32) | u64::from(slot)
    }

    /// The slot whose key matches (`is(slot)`), probing from `hash`.
    #[inline]
    pub(super) fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = hash as u32;
        let mut i = hash as usize & self.mask;
        loop {
            let bucket = self.buckets[i];
            if bucket == EMPTY {
                return None;
            }
            if (bucket >> 32) as u32 == tag && is(bucket as u32) {
                return Some(bucket as u32);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Adds `slot` under `hash`. The caller checked the key is absent and
    /// that the backing array (sized for half the buckets) had room.
    #[inline]
    pub(super) fn insert(&mut self, hash: u64, slot: u32) {
        assert!((self.len as usize) < self.buckets.len() / 2 + 1);
        let mut i = hash as usize & self.mask;
        while self.buckets[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = Self::bucket(hash, slot);
        self.len += 1;
    }

    /// Removes `slot` (filed under `hash`) with backward-shift deletion, so no
    /// tombstones accumulate. Returns whether it was there.
    #[inline]
    pub(super) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let wanted = Self::bucket(hash, slot);
        let mut i = hash as usize & self.mask;
        loop {
            let here = self.buckets[i];
            if here == EMPTY {
                return false;
            }
            if here == wanted {
                break;
            }
            i = (i + 1) & self.mask;
        }
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let moving = self.buckets[j];
            if moving == EMPTY {
                break;
            }
            let k = (moving >> 32) as usize & self.mask;
            // `moving` may stay at j when its home k lies cyclically in (i, j].
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                self.buckets[i] = moving;
                i = j;
            }
        }
        self.buckets[i] = EMPTY;
        self.len -= 1;
        true
    }

    pub(super) fn clear(&mut self) {
        self.buckets.fill(EMPTY);
        self.len = 0;
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.buckets.len() * size_of::<u64>()
    }
}

/// Marks an unused bucket of a [`CompactIndex`].
pub(super) const COMPACT_EMPTY: u32 = u32::MAX;

/// A [`SlotIndex`] at half the memory: each 4-byte bucket holds only the
/// slot, so a probe reads the backing array for every occupied bucket it
/// passes (not only for a hash match), and deletion recomputes the home of
/// an entry it moves from the backing array's key (`hash_of(slot)`). Used
/// for the SKU directory's two indexes, the largest tables a store node
/// keeps (1 M SKUs: 8 MiB each instead of 16), where the key is always at
/// hand in the directory. Same sizing rule as [`SlotIndex`] (load at most
/// one half).
#[derive(Clone, Debug)]
pub struct CompactIndex {
    pub(super) buckets: Box<[u32]>,
    pub(super) mask: usize,
    pub(super) len: u32,
}

impl CompactIndex {
    pub(super) fn with_entries_max(entries_max: u32) -> Self {
        let buckets = (entries_max as usize * 2).next_power_of_two().max(16);
        assert!(buckets <= 1 << 32);
        Self {
            buckets: vec![COMPACT_EMPTY; buckets].into_boxed_slice(),
            mask: buckets - 1,
            len: 0,
        }
    }

    /// The slot whose key matches (`is(slot)`), probing from `hash`.
    #[inline]
    pub(super) fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let mut i = hash as usize & self.mask;
        loop {
            let slot = self.buckets[i];
            if slot == COMPACT_EMPTY {
                return None;
            }
            if is(slot) {
                return Some(slot);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Adds `slot` under `hash`. The caller checked the key is absent.
    #[inline]
    pub(super) fn insert(&mut self, hash: u64, slot: u32) {
        assert!((self.len as usize) < self.buckets.len() / 2 + 1);
        assert!(slot != COMPACT_EMPTY);
        let mut i = hash as usize & self.mask;
        while self.buckets[i] != COMPACT_EMPTY {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = slot;
        self.len += 1;
    }

    /// Removes `slot` (filed under `hash`) with backward-shift deletion;
    /// `hash_of` gives the hash of any other slot's key. Returns whether it
    /// was there.
    #[inline]
    pub(super) fn remove(&mut self, hash: u64, slot: u32, hash_of: impl Fn(u32) -> u64) -> bool {
        let mut i = hash as usize & self.mask;
        loop {
            let here = self.buckets[i];
            if here == COMPACT_EMPTY {
                return false;
            }
            if here == slot {
                break;
            }
            i = (i + 1) & self.mask;
        }
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let moving = self.buckets[j];
            if moving == COMPACT_EMPTY {
                break;
            }
            let k = hash_of(moving) as usize & self.mask;
            // `moving` may stay at j when its home k lies cyclically in (i, j].
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                self.buckets[i] = moving;
                i = j;
            }
        }
        self.buckets[i] = COMPACT_EMPTY;
        self.len -= 1;
        true
    }

    pub(super) fn clear(&mut self) {
        self.buckets.fill(COMPACT_EMPTY);
        self.len = 0;
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.buckets.len() * size_of::<u32>()
    }
}

#[inline]
pub(super) fn symbol_hash(symbol: &[u8; 16]) -> u64 {
    let lo = u64::from_le_bytes(symbol[..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(symbol[8..].try_into().expect("8 bytes"));
    mix64(lo ^ mix64(hi))
}

#[inline]
pub(super) fn client_hash(origin: u16, kind: u8, id: u64) -> u64 {
    mix64(id ^ mix64((u64::from(origin) << 8) | u64::from(kind)))
}
