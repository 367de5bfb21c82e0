//! Replica snapshot files: the state of a [`Replica`] and the sequence number
//! it reflects, so an application can restart from the file and replay the
//! stream from `seq + 1` instead of from 1 (DESIGN.md §5).
//!
//! Layout (all integers little-endian; this file is read only by tally):
//!
//! | part | content |
//! |---|---|
//! | header, 128 bytes | magic `TALLYSNP`, format version, header size, seq, authority-online seq, pending cursor, stream session (10 bytes, padded to 16), four application words, the count of every table, (version 2) the cell count u64 |
//! | locations | per location: id u16, name [16] (directory order) |
//! | SKUs | per SKU: id u32, symbol [16] (directory order) |
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
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use tally_wire::{message_size, Message};

use crate::replica::{
    CellState, HoldSlot, IdRecord, Replica, ReplicaCounters, ReplicaLimits, HOLD_IN_USE,
};

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

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// XXH64 (seed 0) computed over data fed in pieces.
#[derive(Clone, Debug)]
pub struct Xxh64 {
    lanes: [u64; 4],
    buffer: [u8; 32],
    buffered: usize,
    total: u64,
}

impl Default for Xxh64 {
    fn default() -> Self {
        Self::new()
    }
}

#[inline]
fn xxh_round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

#[inline]
fn read_u64_le(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

impl Xxh64 {
    /// A fresh hasher with seed 0.
    pub fn new() -> Self {
        Self {
            lanes: [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)],
            buffer: [0; 32],
            buffered: 0,
            total: 0,
        }
    }

    fn stripe(lanes: &mut [u64; 4], stripe: &[u8]) {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = xxh_round(*lane, read_u64_le(&stripe[i * 8..]));
        }
    }

    /// Feeds `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.buffered > 0 {
            let take = (32 - self.buffered).min(data.len());
            self.buffer[self.buffered..self.buffered + take].copy_from_slice(&data[..take]);
            self.buffered += take;
            data = &data[take..];
            if self.buffered < 32 {
                return;
            }
            let buffer = self.buffer;
            Self::stripe(&mut self.lanes, &buffer);
            self.buffered = 0;
        }
        while data.len() >= 32 {
            Self::stripe(&mut self.lanes, &data[..32]);
            data = &data[32..];
        }
        self.buffer[..data.len()].copy_from_slice(data);
        self.buffered = data.len();
    }

    /// The hash of everything fed so far.
    pub fn digest(&self) -> u64 {
        let [v1, v2, v3, v4] = self.lanes;
        let mut h = if self.total >= 32 {
            let mut h = v1
                .rotate_left(1)
                .wrapping_add(v2.rotate_left(7))
                .wrapping_add(v3.rotate_left(12))
                .wrapping_add(v4.rotate_left(18));
            for v in [v1, v2, v3, v4] {
                h = (h ^ xxh_round(0, v)).wrapping_mul(P1).wrapping_add(P4);
            }
            h
        } else {
            P5
        };
        h = h.wrapping_add(self.total);
        let mut rest = &self.buffer[..self.buffered];
        while rest.len() >= 8 {
            h ^= xxh_round(0, read_u64_le(rest));
            h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
            rest = &rest[8..];
        }
        if rest.len() >= 4 {
            let word = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
            h ^= u64::from(word).wrapping_mul(P1);
            h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
            rest = &rest[4..];
        }
        for &byte in rest {
            h ^= u64::from(byte).wrapping_mul(P5);
            h = h.rotate_left(11).wrapping_mul(P1);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(P2);
        h ^= h >> 29;
        h = h.wrapping_mul(P3);
        h ^ (h >> 32)
    }
}

/// XXH64 (seed 0) of `data`.
pub fn xxh64(data: &[u8]) -> u64 {
    let mut hasher = Xxh64::new();
    hasher.update(data);
    hasher.digest()
}

// ---------------------------------------------------------------------------
// Writing.

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

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `replica` (at its `last_seq`) to `path` atomically, with the
/// stream `session` and four application words. Returns the bytes written.
pub fn save(
    path: &Path,
    replica: &Replica,
    session: &[u8; 10],
    app: [u64; 4],
) -> Result<u64, SnapshotError> {
    let temp = temp_path(path);
    let file = File::create(&temp)?;
    let mut w = Writer {
        out: BufWriter::with_capacity(1 << 20, file),
        hash: Xxh64::new(),
        bytes: 0,
    };
    write_body(&mut w, replica, session, app)?;
    let checksum = w.hash.digest();
    w.out.write_all(&checksum.to_le_bytes())?;
    let bytes = w.bytes + 8;
    let file = w
        .out
        .into_inner()
        .map_err(|e| SnapshotError::Io(e.into_error()))?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)?.sync_all()?;
    }
    Ok(bytes)
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

struct Reader<R: Read> {
    input: R,
    hash: Xxh64,
}

impl<R: Read> Reader<R> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut buf = [0u8; N];
        self.input.read_exact(&mut buf)?;
        self.hash.update(&buf);
        Ok(buf)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

struct Header {
    version: u32,
    /// Cells listed (version 2).
    cells: u64,
    seq: u64,
    authority_online_seq: u64,
    pending_oldest: u64,
    session: [u8; 10],
    app: [u64; 4],
    skus: u32,
    locations: u32,
    holds: u32,
    ids: u32,
    pending: u32,
    counters: u32,
}

fn read_header<R: Read>(r: &mut Reader<R>) -> Result<Header, SnapshotError> {
    let magic: [u8; 8] = r.take()?;
    if magic != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = r.u32()?;
    if version != FORMAT_VERSION && version != FORMAT_VERSION_DENSE {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    if r.u32()? != HEADER_SIZE {
        return Err(SnapshotError::Invalid("unexpected header size"));
    }
    let seq = r.u64()?;
    let authority_online_seq = r.u64()?;
    let pending_oldest = r.u64()?;
    let session16: [u8; 16] = r.take()?;
    let mut session = [0u8; 10];
    session.copy_from_slice(&session16[..10]);
    let app = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
    let mut header = Header {
        version,
        cells: 0,
        seq,
        authority_online_seq,
        pending_oldest,
        session,
        app,
        skus: r.u32()?,
        locations: r.u32()?,
        holds: r.u32()?,
        ids: r.u32()?,
        pending: r.u32()?,
        counters: r.u32()?,
    };
    let cells = r.u64()?;
    let _reserved: [u8; 8] = r.take()?;
    if version == FORMAT_VERSION {
        header.cells = cells;
    }
    if header.counters as usize != COUNTERS {
        return Err(SnapshotError::Invalid("unexpected number of counters"));
    }
    Ok(header)
}

/// Reads only the header of the snapshot at `path` (magic and version
/// checked; the checksum is not: use [`load`] for that).
pub fn read_info(path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    let file = File::open(path)?;
    let bytes = file.metadata()?.len();
    let mut r = Reader {
        input: BufReader::new(file),
        hash: Xxh64::new(),
    };
    let h = read_header(&mut r)?;
    Ok(SnapshotInfo {
        seq: h.seq,
        session: h.session,
        app: h.app,
        skus: h.skus,
        locations: h.locations,
        holds: h.holds,
        bytes,
    })
}

/// Loads the snapshot at `path` into a new replica with `limits`.
pub fn load(path: &Path, limits: ReplicaLimits) -> Result<(Replica, SnapshotInfo), SnapshotError> {
    limits.validate().map_err(|e| SnapshotError::Invalid(e.0))?;
    let file = File::open(path)?;
    let bytes = file.metadata()?.len();
    let mut r = Reader {
        input: BufReader::with_capacity(1 << 20, file),
        hash: Xxh64::new(),
    };
    let h = read_header(&mut r)?;
    let too_large = |what, count: u32, max: u64| {
        if u64::from(count) > max {
            Err(SnapshotError::TooLarge {
                what,
                count: u64::from(count),
                max,
            })
        } else {
            Ok(())
        }
    };
    too_large("SKUs", h.skus, u64::from(limits.skus_max))?;
    too_large("locations", h.locations, u64::from(limits.locations_max))?;
    too_large("holds", h.holds, u64::from(limits.holds_max))?;
    if !limits.is_dense() && h.cells > u64::from(limits.cells_max) {
        return Err(SnapshotError::TooLarge {
            what: "cells",
            count: h.cells,
            max: u64::from(limits.cells_max),
        });
    }
    // The body's minimum size must fit the file, so a corrupt count cannot
    // make the loader spin on a short file.
    let cell_bytes = if h.version == FORMAT_VERSION_DENSE {
        u64::from(h.skus) * u64::from(h.locations) * 16
    } else {
        h.cells.saturating_mul(22)
    };
    let minimum = (u64::from(HEADER_SIZE) + u64::from(h.locations) * 18 + u64::from(h.skus) * 20)
        .saturating_add(cell_bytes)
        + u64::from(h.holds) * 37
        + u64::from(h.ids) * 41
        + u64::from(h.pending) * 9
        + COUNTERS as u64 * 8
        + 8;
    if minimum > bytes {
        return Err(SnapshotError::Truncated);
    }

    let mut replica = Replica::new(limits);
    for _ in 0..h.locations {
        let id = r.u16()?;
        let name: [u8; 16] = r.take()?;
        if id == 0 || replica.location_index(id).is_some() {
            return Err(SnapshotError::Invalid("location id 0 or listed twice"));
        }
        let l = replica
            .register_location(id)
            .expect("count checked against the limit");
        replica.location_names[usize::from(l)] = name;
    }
    for _ in 0..h.skus {
        let id = r.u32()?;
        let symbol: [u8; 16] = r.take()?;
        if replica.sku_slot(id).is_some() {
            return Err(SnapshotError::Invalid("SKU listed twice"));
        }
        let s = replica
            .register_sku(id)
            .expect("count checked against the limit");
        replica.set_symbol(s, symbol);
    }
    let put_cell =
        |replica: &mut Replica, s: u32, l: u16, cell: CellState| -> Result<(), SnapshotError> {
            if cell.version == 0 {
                // Never named: not a cell that exists.
                return Ok(());
            }
            let slot = replica
                .cells
                .find_or_insert(s, l)
                .ok_or(SnapshotError::TooLarge {
                    what: "cells",
                    count: h.cells.max(u64::from(h.skus) * u64::from(h.locations)),
                    max: u64::from(limits.cells_max),
                })?;
            replica.cells[slot] = cell;
            Ok(())
        };
    if h.version == FORMAT_VERSION_DENSE {
        for s in 0..h.skus {
            for l in 0..h.locations as u16 {
                let cell = CellState {
                    on_hand: r.u32()?,
                    reserved: r.u32()?,
                    version: r.u64()?,
                };
                put_cell(&mut replica, s, l, cell)?;
            }
        }
    } else {
        for _ in 0..h.cells {
            let (sku, location) = (r.u32()?, r.u16()?);
            let cell = CellState {
                on_hand: r.u32()?,
                reserved: r.u32()?,
                version: r.u64()?,
            };
            let (Some(s), Some(l)) = (replica.sku_slot(sku), replica.location_index(location))
            else {
                return Err(SnapshotError::Invalid(
                    "a cell names an unknown SKU or location",
                ));
            };
            if cell.version == 0
                || replica
                    .cells
                    .find(s, l)
                    .is_some_and(|i| replica.cells[i].version != 0)
            {
                return Err(SnapshotError::Invalid(
                    "a cell is listed twice or never named",
                ));
            }
            put_cell(&mut replica, s, l, cell)?;
        }
    }
    for _ in 0..h.holds {
        let hold = HoldSlot {
            cmd_seq: r.u64()?,
            expires_at_ns: r.u64()?,
            hold_id: r.u64()?,
            sku: r.u32()?,
            qty: r.u32()?,
            heap_pos: 0,
            location: r.u16()?,
            origin: r.u16()?,
            flags: r.u8()?,
        };
        if hold.flags & HOLD_IN_USE == 0 || !replica.insert_hold(hold) {
            return Err(SnapshotError::Invalid("a hold is listed twice or not open"));
        }
    }
    for _ in 0..h.ids {
        let record = IdRecord {
            id: r.u64()?,
            cmd_seq: r.u64()?,
            last_cmd_seq: r.u64()?,
            sku: r.u32()?,
            qty: r.u32()?,
            remaining: r.u32()?,
            location: r.u16()?,
            origin: r.u16()?,
            kind: r.u8()?,
        };
        if replica
            .id_slot(record.origin, record.kind, record.id)
            .is_some()
        {
            return Err(SnapshotError::Invalid("a client id is listed twice"));
        }
        replica.insert_id(record);
    }
    for _ in 0..h.pending {
        let seq = r.u64()?;
        let len = usize::from(r.u8()?);
        let mut bytes = [0u8; 64];
        if len == 0 || len > bytes.len() {
            return Err(SnapshotError::Invalid("a pending command has a bad length"));
        }
        r.input.read_exact(&mut bytes[..len])?;
        r.hash.update(&bytes[..len]);
        let valid = message_size(bytes[0]) == Some(len)
            && Message::parse(&bytes[..len]).is_ok_and(|m| m.is_command());
        if !valid || seq == 0 || seq > h.seq {
            return Err(SnapshotError::Invalid("a pending entry is not a command"));
        }
        replica.last_seq = seq - 1;
        replica.apply(seq, &Message::parse(&bytes[..len]).expect("checked"));
    }
    let mut words = [0u64; COUNTERS];
    for word in &mut words {
        *word = r.u64()?;
    }
    let computed = r.hash.digest();
    let mut stored = [0u8; 8];
    r.input.read_exact(&mut stored)?;
    let stored = u64::from_le_bytes(stored);
    if stored != computed {
        return Err(SnapshotError::ChecksumMismatch { stored, computed });
    }
    let mut extra = [0u8; 1];
    if r.input.read(&mut extra)? != 0 {
        return Err(SnapshotError::Invalid("bytes after the checksum"));
    }
    replica.counters = counters_from_words(&words);
    replica.last_seq = h.seq;
    replica.authority_online_seq = h.authority_online_seq;
    replica.pending_oldest = h.pending_oldest.max(1);
    let info = SnapshotInfo {
        seq: h.seq,
        session: h.session,
        app: h.app,
        skus: h.skus,
        locations: h.locations,
        holds: h.holds,
        bytes,
    };
    Ok((replica, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh64_matches_the_reference_vectors() {
        assert_eq!(xxh64(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc"), 0x44BC_2CF5_AD77_0999);
        assert_eq!(
            xxh64(b"Nobody inspects the spammish repetition"),
            0xFBCE_A83C_8A37_8BF1
        );
    }

    /// A format-1 file (every skus × locations cell, sku-major) made from a
    /// format-2 one: the same body with the cell section rewritten densely.
    fn as_format_1(v2: &[u8], r: &Replica) -> Vec<u8> {
        let skus = r.sku_count as usize;
        let locations = usize::from(r.location_count);
        let cells_at = HEADER_SIZE as usize + locations * 18 + skus * 20;
        let listed = u64::from_le_bytes(v2[112..120].try_into().unwrap()) as usize;
        let mut out = v2[..cells_at].to_vec();
        out[8..12].copy_from_slice(&FORMAT_VERSION_DENSE.to_le_bytes());
        out[112..128].fill(0);
        for s in 0..skus as u32 {
            for l in 0..locations as u16 {
                let c = r.cell_at(s, l);
                out.extend_from_slice(&c.on_hand.to_le_bytes());
                out.extend_from_slice(&c.reserved.to_le_bytes());
                out.extend_from_slice(&c.version.to_le_bytes());
            }
        }
        out.extend_from_slice(&v2[cells_at + listed * 22..v2.len() - 8]);
        let sum = xxh64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    #[test]
    fn format_1_dense_files_still_load_into_dense_and_sparse_replicas() {
        use tally_wire::{pad_ascii, InventoryLevel, LocationDirectory, SkuDirectory};
        let dense = ReplicaLimits {
            skus_max: 8,
            locations_max: 4,
            cells_max: 32,
            ..ReplicaLimits::small()
        };
        let mut r = Replica::new(dense);
        let mut seq = 0;
        let mut apply = |r: &mut Replica, bytes: &[u8]| {
            seq += 1;
            r.apply(seq, &Message::parse(bytes).unwrap());
        };
        for l in 1..=3u16 {
            let name = pad_ascii(&format!("S{l}")).unwrap();
            apply(&mut r, LocationDirectory::new(l, name).as_bytes());
        }
        for k in 1..=5u32 {
            let symbol = pad_ascii(&format!("K{k}")).unwrap();
            apply(&mut r, SkuDirectory::new(k * 10, symbol).as_bytes());
            // Each SKU stocked in some of the locations only.
            for l in (1..=3u16).filter(|l| (u32::from(*l) + k) % 3 != 0) {
                apply(
                    &mut r,
                    InventoryLevel::new(l, k * 10, k + u32::from(l), 0).as_bytes(),
                );
            }
        }
        let dir = std::env::temp_dir().join(format!("tally-snapshot-v1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let v2_path = dir.join("v2.snap");
        save(&v2_path, &r, b"SESSION001", [1, 2, 3, 4]).unwrap();
        let v2 = std::fs::read(&v2_path).unwrap();
        let v1_path = dir.join("v1.snap");
        std::fs::write(&v1_path, as_format_1(&v2, &r)).unwrap();
        let sparse = ReplicaLimits {
            cells_max: 12,
            ..dense
        };
        for limits in [dense, sparse] {
            for path in [&v1_path, &v2_path] {
                let (loaded, info) = load(path, limits).unwrap();
                assert_eq!(info.app, [1, 2, 3, 4]);
                assert_eq!(loaded.digest(), r.digest(), "{} {limits:?}", path.display());
                assert_eq!(loaded.cell(2, 10), r.cell(2, 10));
            }
        }
        // Too few cells for what the file lists: said, with the numbers.
        let tiny = ReplicaLimits {
            cells_max: 5,
            ..dense
        };
        for path in [&v1_path, &v2_path] {
            assert!(
                matches!(
                    load(path, tiny),
                    Err(SnapshotError::TooLarge {
                        what: "cells",
                        max: 5,
                        ..
                    })
                ),
                "{}",
                path.display()
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn xxh64_streaming_equals_one_shot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for split in [0usize, 1, 7, 31, 32, 33, 64, 100, 999, 1000] {
            let mut h = Xxh64::new();
            h.update(&data[..split]);
            for chunk in data[split..].chunks(13) {
                h.update(chunk);
            }
            assert_eq!(h.digest(), xxh64(&data), "split at {split}");
        }
    }
}
