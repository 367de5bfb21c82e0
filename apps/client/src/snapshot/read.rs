//! Reading a snapshot: its header, then its body into a replica.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use tally_wire::{message_size, Message};

use super::{
    counters_from_words, SnapshotError, SnapshotInfo, Xxh64, COUNTERS, FORMAT_VERSION,
    FORMAT_VERSION_DENSE, HEADER_SIZE, MAGIC,
};
use crate::replica::{
    CellState, HoldSlot, IdRecord, Replica, ReplicaCounters, ReplicaLimits, HOLD_IN_USE,
};

pub(super) struct Reader<R: Read> {
    pub(super) input: R,
    pub(super) hash: Xxh64,
}

impl<R: Read> Reader<R> {
    pub(super) fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut buf = [0u8; N];
        self.input.read_exact(&mut buf)?;
        self.hash.update(&buf);
        Ok(buf)
    }
    pub(super) fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take::<1>()?[0])
    }
    pub(super) fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    pub(super) fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    pub(super) fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

pub(super) struct Header {
    pub(super) version: u32,
    /// Cells listed (version 2).
    pub(super) cells: u64,
    pub(super) seq: u64,
    pub(super) authority_online_seq: u64,
    pub(super) pending_oldest: u64,
    pub(super) session: [u8; 10],
    pub(super) app: [u64; 4],
    pub(super) skus: u32,
    pub(super) locations: u32,
    pub(super) holds: u32,
    pub(super) ids: u32,
    pub(super) pending: u32,
    pub(super) counters: u32,
}

pub(super) fn read_header<R: Read>(r: &mut Reader<R>) -> Result<Header, SnapshotError> {
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
    check_fits(&h, &limits, bytes)?;
    let mut replica = Replica::new(limits);
    read_directory(&mut r, &h, &mut replica)?;
    read_cells(&mut r, &h, &mut replica)?;
    read_holds(&mut r, &h, &mut replica)?;
    read_ids(&mut r, &h, &mut replica)?;
    read_pending(&mut r, &h, &mut replica)?;
    replica.counters = read_trailer(&mut r)?;
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

/// Refuses a snapshot larger than `limits`, or one whose counts need more
/// bytes than the file has (so a corrupt count cannot make the loader spin
/// on a short file).
fn check_fits(h: &Header, limits: &ReplicaLimits, bytes: u64) -> Result<(), SnapshotError> {
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
    Ok(())
}

/// Locations and SKUs, in that order.
fn read_directory<R: Read>(
    r: &mut Reader<R>,
    h: &Header,
    replica: &mut Replica,
) -> Result<(), SnapshotError> {
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
    Ok(())
}

/// Cells: every (SKU, location) of a dense version-1 body, or the listed
/// ones of version 2.
fn read_cells<R: Read>(
    r: &mut Reader<R>,
    h: &Header,
    replica: &mut Replica,
) -> Result<(), SnapshotError> {
    let cells_max = u64::from(replica.limits().cells_max);
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
                    max: cells_max,
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
                put_cell(replica, s, l, cell)?;
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
            put_cell(replica, s, l, cell)?;
        }
    }
    Ok(())
}

/// Open holds.
fn read_holds<R: Read>(
    r: &mut Reader<R>,
    h: &Header,
    replica: &mut Replica,
) -> Result<(), SnapshotError> {
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
    Ok(())
}

/// The client-id history.
fn read_ids<R: Read>(
    r: &mut Reader<R>,
    h: &Header,
    replica: &mut Replica,
) -> Result<(), SnapshotError> {
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
    Ok(())
}

/// Commands still waiting for their outcome, applied again in order.
fn read_pending<R: Read>(
    r: &mut Reader<R>,
    h: &Header,
    replica: &mut Replica,
) -> Result<(), SnapshotError> {
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
    Ok(())
}

/// The counters, then the checksum over everything before it, then the end
/// of the file.
fn read_trailer<R: Read>(r: &mut Reader<R>) -> Result<ReplicaCounters, SnapshotError> {
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
    Ok(counters_from_words(&words))
}
