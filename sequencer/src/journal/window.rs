//! The window of recent journal bytes: the last [`RECENT_WINDOW_BYTES`] the
//! writer appended, kept in memory so the retransmit and replay threads read
//! what they serve (nearly always the newest records) without a `pread`.
//!
//! One writer (the sequencer thread) and any number of readers. The window
//! is a ring: journal offset `o` lives at byte `o % capacity`. The writer
//! first announces how far it is about to write (`claimed`), then copies;
//! a reader copies, then checks that the writer had not claimed past the
//! point where the bytes it copied would be overwritten (a seqlock: a read
//! that raced an overwrite is detected and falls back to the file). The
//! bytes are relaxed atomic words, so a racing read is a stale value, never
//! undefined behaviour. Readers only read below the journal's published end,
//! whose release/acquire pair orders the writer's copies before them.
//!
//! The memory is one [`HugeRegion`] mapped at start-up (reserved huge pages
//! when the host has them, else transparent huge pages, else normal pages;
//! [`RecentWindow::page_kind`] says which). Nothing allocates afterwards.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use tally_runtime::pool::{HugeRegion, PageKind, PoolOptions};

/// Bytes of recent journal kept in memory: 16 MiB, some 270 000 single-order
/// records or a few seconds of a saturated stream.
pub const RECENT_WINDOW_BYTES: usize = 16 << 20;

const WORD_BYTES: usize = 8;

/// The recent bytes of one journal (see the module doc).
pub struct RecentWindow {
    region: HugeRegion,
    /// Words of the ring (`capacity / 8`), a power of two.
    words: usize,
    /// First journal offset this window ever held (the end at open): older
    /// bytes were never copied in.
    start_offset: u64,
    /// The writer may have written journal bytes below this offset.
    claimed: AtomicU64,
}

impl std::fmt::Debug for RecentWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentWindow")
            .field("capacity_bytes", &self.capacity_bytes())
            .field("page_kind", &self.region.kind())
            .field("start_offset", &self.start_offset)
            .field("claimed", &self.claimed.load(Ordering::Relaxed))
            .finish()
    }
}

impl RecentWindow {
    /// A window of `capacity_bytes` (a power of two, at least 8) that starts
    /// at journal offset `start_offset`.
    pub fn new(capacity_bytes: usize, start_offset: u64) -> std::io::Result<RecentWindow> {
        assert!(
            capacity_bytes.is_power_of_two() && capacity_bytes >= WORD_BYTES,
            "the window's capacity is a power of two"
        );
        let region = HugeRegion::with_options(capacity_bytes, PoolOptions::default())?;
        assert_eq!(
            region.as_ptr() as usize % std::mem::align_of::<AtomicU64>(),
            0,
            "a mapping is page-aligned"
        );
        Ok(RecentWindow {
            region,
            words: capacity_bytes / WORD_BYTES,
            start_offset,
            claimed: AtomicU64::new(start_offset),
        })
    }

    /// Bytes the window holds at most.
    pub fn capacity_bytes(&self) -> usize {
        self.words * WORD_BYTES
    }

    /// Which pages back the window.
    pub fn page_kind(&self) -> PageKind {
        self.region.kind()
    }

    fn ring(&self) -> &[AtomicU64] {
        // SAFETY: the region is `words * 8` bytes, page-aligned (checked in
        // `new`), zeroed and lives as long as `self`; AtomicU64 has the size
        // and alignment of u64 and every bit pattern is valid, and the bytes
        // are only ever accessed through these atomics.
        unsafe { std::slice::from_raw_parts(self.region.as_ptr().cast::<AtomicU64>(), self.words) }
    }

    /// Writer only (one thread): copies `parts`, which are the journal's
    /// bytes from `offset` on, into the window. Call before publishing them.
    pub fn write(&self, offset: u64, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        let claimed = offset + len as u64;
        assert!(claimed >= self.claimed.load(Ordering::Relaxed));
        self.claimed.store(claimed, Ordering::Relaxed);
        // Orders the claim before the copies: a reader that sees any copied
        // byte (after its acquire fence) sees the claim too.
        fence(Ordering::Release);
        let mut at = offset;
        for part in parts {
            self.copy_in(at, part);
            at += part.len() as u64;
        }
    }

    /// Copies journal bytes `offset..offset + out.len()` into `out` when the
    /// window still holds all of them, and says whether it did. The caller
    /// reads only below the journal's published end (acquired).
    pub fn read(&self, offset: u64, out: &mut [u8]) -> bool {
        let capacity = self.capacity_bytes() as u64;
        let end = offset + out.len() as u64;
        if offset < self.start_offset || out.len() as u64 > capacity {
            return false;
        }
        if self.claimed.load(Ordering::Acquire) > offset + capacity {
            return false;
        }
        self.copy_out(offset, out);
        fence(Ordering::Acquire);
        // Nothing from `offset` on was overwritten while it was copied.
        let intact = self.claimed.load(Ordering::Relaxed) <= offset + capacity;
        debug_assert!(!intact || end <= self.claimed.load(Ordering::Relaxed));
        intact
    }

    fn copy_in(&self, offset: u64, bytes: &[u8]) {
        let ring = self.ring();
        let mask = self.words - 1;
        let mut at = offset;
        let mut rest = bytes;
        while !rest.is_empty() {
            let word = (at / WORD_BYTES as u64) as usize & mask;
            let first = (at % WORD_BYTES as u64) as usize;
            let take = (WORD_BYTES - first).min(rest.len());
            let value = if take == WORD_BYTES {
                u64::from_ne_bytes(rest[..WORD_BYTES].try_into().expect("8 bytes"))
            } else {
                // The one writer owns every word: read, merge, store.
                let mut current = ring[word].load(Ordering::Relaxed).to_ne_bytes();
                current[first..first + take].copy_from_slice(&rest[..take]);
                u64::from_ne_bytes(current)
            };
            ring[word].store(value, Ordering::Relaxed);
            at += take as u64;
            rest = &rest[take..];
        }
    }

    fn copy_out(&self, offset: u64, out: &mut [u8]) {
        let ring = self.ring();
        let mask = self.words - 1;
        let mut at = offset;
        let mut filled = 0;
        while filled < out.len() {
            let word = (at / WORD_BYTES as u64) as usize & mask;
            let first = (at % WORD_BYTES as u64) as usize;
            let take = (WORD_BYTES - first).min(out.len() - filled);
            let value = ring[word].load(Ordering::Relaxed).to_ne_bytes();
            out[filled..filled + take].copy_from_slice(&value[first..first + take]);
            at += take as u64;
            filled += take;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(offset: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| ((offset + i) * 7 % 251) as u8)
            .collect()
    }

    #[test]
    fn reads_back_what_was_written_at_any_alignment_and_across_the_wrap() {
        let window = RecentWindow::new(64, 5).unwrap();
        let mut offset = 5u64;
        for len in [1usize, 3, 8, 13, 24, 7, 40, 2] {
            let data = bytes(offset, len);
            let (a, b) = data.split_at(len / 2);
            window.write(offset, &[a, b]);
            offset += len as u64;
            let mut out = vec![0u8; len];
            assert!(window.read(offset - len as u64, &mut out));
            assert_eq!(out, data);
        }
        // The newest 64 bytes are held; older ones are not.
        let mut out = vec![0u8; 64];
        assert!(window.read(offset - 64, &mut out));
        assert_eq!(out, bytes(offset - 64, 64));
        assert!(!window.read(offset - 65, &mut [0u8; 2]));
        // Before the start nothing was ever held.
        assert!(!window.read(4, &mut [0u8; 1]));
    }

    #[test]
    fn a_read_overtaken_by_the_writer_is_refused() {
        let window = RecentWindow::new(32, 0).unwrap();
        window.write(0, &[&bytes(0, 32)]);
        let mut out = [0u8; 8];
        assert!(window.read(0, &mut out));
        window.write(32, &[&bytes(32, 1)]);
        assert!(!window.read(0, &mut out), "byte 0 was overwritten");
        assert!(window.read(1, &mut out));
        assert_eq!(out.to_vec(), bytes(1, 8));
    }
}
