//! The open-addressing hash indexes of the replica's tables, and the key
//! hashes (runtime's `mix64`).

use core::mem::size_of;

use tally_runtime::rand::mix64;

/// What one bucket of a [`SlotIndex`] stores. Two layouts, one table:
///
/// - [`Tagged`] (8 bytes): the slot and the low 32 bits of the key's hash.
///   A probe compares the hash bits first and reads the backing array only
///   on a match, and deletion finds every entry's home bucket from its own
///   hash bits, never from the backing array.
/// - [`Compact`] (4 bytes): only the slot, at half the memory. A probe reads
///   the backing array for every occupied bucket it passes, and deletion
///   recomputes the home of an entry it moves from the backing array's key.
///   Used for the SKU directory's two indexes, the largest tables a store
///   node keeps (1 M SKUs: 8 MiB each instead of 16), where the key is
///   always at hand in the directory.
pub trait Bucket: Copy + Eq + core::fmt::Debug {
    /// An unused bucket.
    const EMPTY: Self;
    /// The bucket of `slot`, filed under `hash`.
    fn new(hash: u64, slot: u32) -> Self;
    /// The slot it holds (not for `EMPTY`).
    fn slot(self) -> u32;
    /// Whether the key of this bucket may hash to `hash` (false only when a
    /// stored tag rules it out).
    fn may_match(self, hash: u64) -> bool;
    /// The hash this bucket's entry was filed under; `hash_of` reads it from
    /// the backing array when the bucket does not keep it.
    fn home(self, hash_of: &impl Fn(u32) -> u64) -> u64;
}

/// An 8-byte bucket: `hash << 32 | slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tagged(u64);

impl Bucket for Tagged {
    const EMPTY: Self = Tagged(u64::MAX);
    #[inline]
    fn new(hash: u64, slot: u32) -> Self {
        Tagged((hash << 32) | u64::from(slot))
    }
    #[inline]
    fn slot(self) -> u32 {
        self.0 as u32
    }
    #[inline]
    fn may_match(self, hash: u64) -> bool {
        (self.0 >> 32) as u32 == hash as u32
    }
    #[inline]
    fn home(self, _hash_of: &impl Fn(u32) -> u64) -> u64 {
        self.0 >> 32
    }
}

/// A 4-byte bucket: the slot alone (`u32::MAX` is never a slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compact(u32);

impl Bucket for Compact {
    const EMPTY: Self = Compact(u32::MAX);
    #[inline]
    fn new(_hash: u64, slot: u32) -> Self {
        assert!(slot != u32::MAX);
        Compact(slot)
    }
    #[inline]
    fn slot(self) -> u32 {
        self.0
    }
    #[inline]
    fn may_match(self, _hash: u64) -> bool {
        true
    }
    #[inline]
    fn home(self, hash_of: &impl Fn(u32) -> u64) -> u64 {
        hash_of(self.0)
    }
}

/// An open-addressing (linear probing) hash index from a key to a `u32` slot
/// of some backing array, where the key itself lives; `B` is the bucket
/// layout ([`Tagged`] by default, [`Compact`] at half the memory). Capacity
/// is a power of two at least twice the number of entries it may hold (and
/// at most 2^32), so probe sequences stay short; deletion shifts entries
/// back, so no tombstones accumulate. Never allocates after construction.
#[derive(Clone, Debug)]
pub struct SlotIndex<B: Bucket = Tagged> {
    pub(super) buckets: Box<[B]>,
    pub(super) mask: usize,
    pub(super) len: u32,
}

/// The SKU directory's indexes: a [`SlotIndex`] of [`Compact`] buckets.
pub type CompactIndex = SlotIndex<Compact>;

impl<B: Bucket> SlotIndex<B> {
    pub(super) fn with_entries_max(entries_max: u32) -> Self {
        let buckets = (entries_max as usize * 2).next_power_of_two().max(16);
        assert!(buckets <= 1 << 32);
        Self {
            buckets: vec![B::EMPTY; buckets].into_boxed_slice(),
            mask: buckets - 1,
            len: 0,
        }
    }

    /// The slot whose key matches (`is(slot)`), probing from `hash`.
    #[inline]
    pub(super) fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let mut i = hash as usize & self.mask;
        loop {
            let bucket = self.buckets[i];
            if bucket == B::EMPTY {
                return None;
            }
            if bucket.may_match(hash) && is(bucket.slot()) {
                return Some(bucket.slot());
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
        while self.buckets[i] != B::EMPTY {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = B::new(hash, slot);
        self.len += 1;
    }

    /// Removes `slot` (filed under `hash`) with backward-shift deletion;
    /// `hash_of` gives the hash of any other slot's key (read only by
    /// [`Compact`] buckets). Returns whether it was there.
    #[inline]
    pub(super) fn remove_with(
        &mut self,
        hash: u64,
        slot: u32,
        hash_of: impl Fn(u32) -> u64,
    ) -> bool {
        let wanted = B::new(hash, slot);
        let mut i = hash as usize & self.mask;
        loop {
            let here = self.buckets[i];
            if here == B::EMPTY {
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
            if moving == B::EMPTY {
                break;
            }
            let k = moving.home(&hash_of) as usize & self.mask;
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
        self.buckets[i] = B::EMPTY;
        self.len -= 1;
        true
    }

    pub(super) fn clear(&mut self) {
        self.buckets.fill(B::EMPTY);
        self.len = 0;
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.buckets.len() * size_of::<B>()
    }
}

impl SlotIndex<Tagged> {
    /// [`SlotIndex::remove_with`] for tagged buckets, which keep their own
    /// hash bits.
    #[inline]
    pub(super) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        self.remove_with(hash, slot, |_| {
            unreachable!("tagged buckets keep their hash")
        })
    }
}

impl SlotIndex<Compact> {
    /// [`SlotIndex::remove_with`]: compact buckets need the backing array's
    /// hashes.
    #[inline]
    pub(super) fn remove(&mut self, hash: u64, slot: u32, hash_of: impl Fn(u32) -> u64) -> bool {
        self.remove_with(hash, slot, hash_of)
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
