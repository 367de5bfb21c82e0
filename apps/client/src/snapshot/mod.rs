//! Replica snapshot files: the state of a [`Replica`] and the sequence number
//! it reflects, so an application can restart from the file and replay the
//! stream from `seq + 1` instead of from 1 (DESIGN.md §5).
//!
//! Layout (all integers little-endian; this file is read only by tally):
//!
//! | part | content |
//! |---|---|
//! | header, 128 bytes | magic `TALLYSNP`, format version, header size, seq, authority-online seq, pending cursor, stream session (10 bytes, padded to 16), four application words, the count of every table, (version 2) the cell count u64 |
//! | locations | per location: id u16, name \[16\] (directory order) |
//! | SKUs | per SKU: id u32, symbol \[16\] (directory order) |
//! | cells | version 2: per cell that exists (version ≠ 0): sku id u32, location id u16, on_hand u32, reserved u32, version u64; version 1 (still read): skus × locations cells, sku-major: on_hand u32, reserved u32, version u64 |
//! | holds | per open hold: key u64, expires_at u64, hold_id u64, sku u32, qty u32, location u16, origin u16, flags u8 |
//! | client ids | oldest first: id u64, cmd_seq u64, last_cmd_seq u64, sku u32, qty u32, remaining u32, location u16, origin u16, kind u8 |
//! | pending | per unanswered command: seq u64, length u8, its bytes |
//! | counters | the replica's counters, u64 each |
//! | trailer | XXH64 (seed 0) of everything before it, u64 |
//!
//! Tables are written by content, not as memory images: a file loads into a
//! replica with other limits as long as its directories and holds fit (the
//! client-id history and pending ring keep their newest entries when smaller).
//!
//! [`save`] writes `<path>.tmp`, syncs it, renames it over `path` and syncs
//! the directory, so a crash leaves either the old file or the new one.
//! [`load`] checks the magic, version, counts and checksum and reports a
//! truncated or corrupt file as a [`SnapshotError`], never a panic.

use core::fmt;
use std::io::{BufWriter, Write};
use std::path::Path;

use tally_runtime::file::replace_atomically;

use crate::replica::{Replica, ReplicaCounters, HOLD_IN_USE};

mod read;
#[cfg(test)]
mod tests;
mod xxh64;

pub use read::*;
pub use xxh64::*;

/// First bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"TALLYSNP";
/// The format this module writes and reads.
/// Version 2 lists only the cells that exist (sparse); version 1 files
/// (every skus × locations cell) still load.
pub const FORMAT_VERSION: u32 = 2;
/// The dense format this module still reads.
const FORMAT_VERSION_DENSE: u32 = 1;
const HEADER_SIZE: u32 = 128;
const COUNTERS: usize = 16;

/// What a snapshot's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The stream sequence number the state reflects: replay from `seq + 1`.
    pub seq: u64,
    /// The stream session (MoldUDP64 session name) it belongs to.
    pub session: [u8; 10],
    /// Four words the application stored with it (the warehouse keeps its
    /// origin and its last own client_seq there).
    pub app: [u64; 4],
    /// SKUs in the directory.
    pub skus: u32,
    /// Locations in the directory.
    pub locations: u32,
    /// Open holds.
    pub holds: u32,
    /// File size in bytes.
    pub bytes: u64,
}

/// Why a snapshot could not be written or read.
#[derive(Debug)]
pub enum SnapshotError {
    /// The file system said no.
    Io(std::io::Error),
    /// The file ends before its content does.
    Truncated,
    /// Not a tally snapshot (wrong magic).
    BadMagic,
    /// Written by an incompatible version of this format.
    UnsupportedVersion(u32),
    /// The content does not match its checksum: the file is corrupt.
    ChecksumMismatch {
        /// Checksum stored in the file.
        stored: u64,
        /// Checksum of the content read.
        computed: u64,
    },
    /// A table in the file does not fit the replica's limits.
    TooLarge {
        /// Which table.
        what: &'static str,
        /// Entries in the file.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// The content is inconsistent (a duplicate id, a bad command, …).
    Invalid(&'static str),
    /// The warehouse has events in flight; its state is ahead of the stream.
    NotQuiescent {
        /// Own events not yet back from the stream.
        in_flight: u32,
    },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io(e) => write!(f, "snapshot file I/O failed: {e}"),
            SnapshotError::Truncated => {
                f.write_str("snapshot file is truncated (it ends before its content)")
            }
            SnapshotError::BadMagic => {
                f.write_str("not a tally snapshot file (bad magic number)")
            }
            SnapshotError::UnsupportedVersion(v) => write!(
                f,
                "snapshot format version {v} is not supported (this build reads {FORMAT_VERSION_DENSE} and {FORMAT_VERSION})"
            ),
            SnapshotError::ChecksumMismatch { stored, computed } => write!(
                f,
                "snapshot file is corrupt: checksum {computed:016x} does not match the stored {stored:016x}"
            ),
            SnapshotError::TooLarge { what, count, max } => write!(
                f,
                "snapshot holds {count} {what}, more than this replica's limit of {max}"
            ),
            SnapshotError::Invalid(why) => write!(f, "snapshot file is invalid: {why}"),
            SnapshotError::NotQuiescent { in_flight } => write!(
                f,
                "cannot snapshot now: {in_flight} own events are still in flight"
            ),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for SnapshotError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            SnapshotError::Truncated
        } else {
            SnapshotError::Io(e)
        }
    }
}

// ---------------------------------------------------------------------------
// XXH64, streaming.

struct Writer<W: Write> {
    out: W,
    hash: Xxh64,
    bytes: u64,
}

impl<W: Write> Writer<W> {
    fn put(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.hash.update(data);
        self.bytes += data.len() as u64;
        self.out.write_all(data)
    }
    fn u8(&mut self, v: u8) -> std::io::Result<()> {
        self.put(&[v])
    }
    fn u16(&mut self, v: u16) -> std::io::Result<()> {
        self.put(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> std::io::Result<()> {
        self.put(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> std::io::Result<()> {
        self.put(&v.to_le_bytes())
    }
}

fn counters_to_words(c: &ReplicaCounters) -> [u64; COUNTERS] {
    [
        c.messages,
        c.commands,
        c.events,
        c.rejects,
        c.gateway_rejects,
        c.stale,
        c.violations,
        c.unknown_refs,
        c.dropped_events,
        c.sku_overflow,
        c.location_overflow,
        c.hold_overflow,
        c.ids_evicted,
        c.pending_evicted,
        c.unattributed,
        c.anomalies,
    ]
}

fn counters_from_words(w: &[u64; COUNTERS]) -> ReplicaCounters {
    ReplicaCounters {
        messages: w[0],
        commands: w[1],
        events: w[2],
        rejects: w[3],
        gateway_rejects: w[4],
        stale: w[5],
        violations: w[6],
        unknown_refs: w[7],
        dropped_events: w[8],
        sku_overflow: w[9],
        location_overflow: w[10],
        hold_overflow: w[11],
        ids_evicted: w[12],
        pending_evicted: w[13],
        unattributed: w[14],
        anomalies: w[15],
    }
}

/// Writes `replica` (at its `last_seq`) to `path` atomically, with the
/// stream `session` and four application words. Returns the bytes written.
pub fn save(
    path: &Path,
    replica: &Replica,
    session: &[u8; 10],
    app: [u64; 4],
) -> Result<u64, SnapshotError> {
    replace_atomically(path, |file| {
        let mut w = Writer {
            out: BufWriter::with_capacity(1 << 20, file),
            hash: Xxh64::new(),
            bytes: 0,
        };
        write_body(&mut w, replica, session, app)?;
        let checksum = w.hash.digest();
        w.out.write_all(&checksum.to_le_bytes())?;
        w.out.flush()?;
        Ok(w.bytes + 8)
    })
}

fn write_body<W: Write>(
    w: &mut Writer<W>,
    r: &Replica,
    session: &[u8; 10],
    app: [u64; 4],
) -> std::io::Result<()> {
    let cell_slots: Vec<usize> = (0..r.cells.slot_end(r.sku_count))
        .filter(|&slot| {
            let (_, l) = r.cells.key_of(slot);
            r.cells[slot].version != 0 && l < r.location_count
        })
        .collect();
    let pending: Vec<u64> = {
        let mut seqs = Vec::new();
        let mut from = r.pending_oldest;
        while let Some(seq) = r.next_unresolved(from) {
            seqs.push(seq);
            from = seq + 1;
        }
        seqs
    };
    // Header.
    w.put(&MAGIC)?;
    w.u32(FORMAT_VERSION)?;
    w.u32(HEADER_SIZE)?;
    w.u64(r.last_seq)?;
    w.u64(r.authority_online_seq)?;
    w.u64(r.pending_oldest)?;
    let mut session16 = [0u8; 16];
    session16[..10].copy_from_slice(session);
    w.put(&session16)?;
    for word in app {
        w.u64(word)?;
    }
    w.u32(r.sku_count)?;
    w.u32(u32::from(r.location_count))?;
    w.u32(r.hold_count())?;
    w.u32(r.ids_len)?;
    w.u32(pending.len() as u32)?;
    w.u32(COUNTERS as u32)?;
    w.u64(cell_slots.len() as u64)?;
    w.put(&[0u8; 8])?;
    debug_assert_eq!(w.bytes, u64::from(HEADER_SIZE));

    for l in 0..usize::from(r.location_count) {
        w.u16(r.location_ids[l])?;
        w.put(&r.location_names[l])?;
    }
    for s in 0..r.sku_count as usize {
        w.u32(r.sku_ids[s])?;
        w.put(&r.sku_symbols[s])?;
    }
    for &slot in &cell_slots {
        let (s, l) = r.cells.key_of(slot);
        let c = &r.cells[slot];
        w.u32(r.sku_ids[s as usize])?;
        w.u16(r.location_ids[usize::from(l)])?;
        w.u32(c.on_hand)?;
        w.u32(c.reserved)?;
        w.u64(c.version)?;
    }
    for h in r.holds.iter().filter(|h| h.flags & HOLD_IN_USE != 0) {
        w.u64(h.cmd_seq)?;
        w.u64(h.expires_at_ns)?;
        w.u64(h.hold_id)?;
        w.u32(h.sku)?;
        w.u32(h.qty)?;
        w.u16(h.location)?;
        w.u16(h.origin)?;
        w.u8(h.flags)?;
    }
    for id in r.ids_oldest_first() {
        w.u64(id.id)?;
        w.u64(id.cmd_seq)?;
        w.u64(id.last_cmd_seq)?;
        w.u32(id.sku)?;
        w.u32(id.qty)?;
        w.u32(id.remaining)?;
        w.u16(id.location)?;
        w.u16(id.origin)?;
        w.u8(id.kind)?;
    }
    for &seq in &pending {
        let slot = r.pending_slot(seq).expect("listed above");
        w.u64(seq)?;
        w.u8(slot.len)?;
        w.put(&slot.bytes[..usize::from(slot.len)])?;
    }
    for word in counters_to_words(&r.counters) {
        w.u64(word)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reading.
