//! Group commit for an append-only file, through io_uring: the owner stages
//! records into fixed buffers, each duty cycle's records go to the kernel as
//! one write (one write in flight at a time, in file order, so a crash leaves
//! at most a torn tail, never a hole), and one `fdatasync` covers every write
//! that completed before it was submitted. The owner's thread never waits for the disk: it submits,
//! goes on staging the next batch, and learns from [`GroupCommitFile::poll`]
//! how far the file is durable.
//!
//! After each sync a small side record (for example a checkpoint saying how
//! far the file is known to reach) is written to a second file, linked to the
//! sync (`IOSQE_IO_LINK`) so it starts only once the sync succeeded. The file
//! is reported durable only after that side write completed, so the side file
//! never claims more than a completed sync made durable, and whatever the
//! owner released (acknowledged) is covered by the side record on disk or in
//! the page cache.
//!
//! Threading contract: one owner thread; nothing here locks or allocates after
//! [`GroupCommitFile::new`]. Every buffer the kernel reads lives in a
//! `Region` owned by this object and is reused only after the write that
//! read it completed; on drop, operations in flight are cancelled and drained,
//! and the buffers leaked if the kernel does not let go in time.
//!
//! [`replace_atomically`]: the one way to replace a small file (a snapshot,
//! a checkpoint, a state file) so that a crash leaves the old or the new.

mod replace;

pub use replace::replace_atomically;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::{opcode, squeue, types};

use crate::net::ring::{kind, user_data, Cqe, Region, Ring, CQE_BATCH};

/// Bytes of the side record written after each sync.
pub const SIDE_RECORD_BYTES: usize = 32;

/// How far the file is written or durable: its length in bytes and the
/// owner's tag of the last record within that length (for a journal, the
/// sequence number after that record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// File length in bytes.
    pub offset: u64,
    /// The owner's tag of the last record below `offset`.
    pub tag: u64,
}

/// Sizes of a [`GroupCommitFile`], fixed at start.
#[derive(Clone, Copy, Debug)]
pub struct GroupCommitConfig {
    /// Staging buffers (at least 2: one fills while another is written).
    pub buffers: usize,
    /// Bytes in each staging buffer; the largest record must fit one.
    pub buffer_bytes: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            buffers: 8,
            buffer_bytes: 1 << 20,
        }
    }
}

/// A failed write, sync or side write. Sticky: once one failed, the file's
/// durable length never moves again.
#[derive(Debug)]
pub struct FileError {
    /// "write", "fdatasync" or "side write".
    pub operation: &'static str,
    /// The kernel's error.
    pub error: io::Error,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.operation, self.error)
    }
}

impl std::error::Error for FileError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Free,
    Filling,
    /// Handed over; waits for the write before it to complete.
    Queued,
    Writing,
    Written,
}

#[derive(Clone, Copy, Debug)]
struct Buffer {
    phase: Phase,
    /// File offset of the buffer's first byte.
    file_offset: u64,
    /// Bytes staged.
    len: usize,
    /// Bytes the kernel has written so far (a short write is resubmitted).
    written: usize,
    /// Tag of the last record staged in it.
    tag: u64,
}

const FREE: Buffer = Buffer {
    phase: Phase::Free,
    file_offset: 0,
    len: 0,
    written: 0,
    tag: 0,
};

/// See the module doc.
pub struct GroupCommitFile {
    ring: Ring,
    file: File,
    side: File,
    side_record: fn(Position) -> [u8; SIDE_RECORD_BYTES],
    staging: Region,
    buffer_bytes: usize,
    buffers: Box<[Buffer]>,
    /// Buffers handed to the kernel, in file order (a ring of indices).
    order: Box<[usize]>,
    order_head: usize,
    order_len: usize,
    /// The buffer being filled.
    filling: Option<usize>,
    /// The buffer being written: one write at a time, so that a crash can
    /// leave only a torn tail, never a hole before data that reached the
    /// file (two concurrent writes could complete in either order).
    writing: Option<usize>,
    /// File offset after the last staged byte.
    staged: Position,
    /// Every byte below this offset has been written (contiguously).
    written: Position,
    /// The sync (and its side write) in flight, and what it covers.
    syncing: Option<Position>,
    durable: Position,
    side_buffer: Region,
    cqes: Box<[Cqe]>,
    failed: Option<FileError>,
    syncs: u64,
    writes: u64,
}

impl GroupCommitFile {
    /// Appends to `file` from its current length `end` (whose last record has
    /// tag `tag`; that much is durable already), writing `side_record(durable)`
    /// at offset 0 of `side` after each sync.
    pub fn new(
        file: File,
        side: File,
        end: Position,
        config: GroupCommitConfig,
        side_record: fn(Position) -> [u8; SIDE_RECORD_BYTES],
    ) -> io::Result<GroupCommitFile> {
        assert!(
            config.buffers >= 2,
            "one buffer fills while another is written"
        );
        assert!(config.buffer_bytes > 0);
        let entries = (config.buffers as u32 + 4).next_power_of_two();
        Ok(GroupCommitFile {
            ring: Ring::new(entries, entries * 2)?,
            file,
            side,
            side_record,
            staging: Region::new(config.buffers * config.buffer_bytes)?,
            buffer_bytes: config.buffer_bytes,
            buffers: vec![FREE; config.buffers].into_boxed_slice(),
            order: vec![0; config.buffers].into_boxed_slice(),
            order_head: 0,
            order_len: 0,
            filling: None,
            writing: None,
            staged: end,
            written: end,
            syncing: None,
            durable: end,
            side_buffer: Region::new(SIDE_RECORD_BYTES)?,
            cqes: vec![Cqe::default(); CQE_BATCH].into_boxed_slice(),
            failed: None,
            syncs: 0,
            writes: 0,
        })
    }

    /// Makes every completion signal `eventfd` (a loop's [`crate::wake::Waker`]
    /// fd), so a parked loop wakes as soon as a sync completes.
    pub fn register_eventfd(&self, eventfd: std::os::fd::RawFd) -> io::Result<()> {
        self.ring.submitter().register_eventfd(eventfd)
    }

    /// Bytes that can be staged before a write must complete.
    pub fn room_bytes(&self) -> usize {
        let free = self
            .buffers
            .iter()
            .filter(|buffer| buffer.phase == Phase::Free)
            .count();
        let filling_room = self
            .filling
            .map_or(0, |index| self.buffer_bytes - self.buffers[index].len);
        free * self.buffer_bytes + filling_room
    }

    /// Largest record [`Self::stage`] takes.
    pub fn record_bytes_max(&self) -> usize {
        self.buffer_bytes
    }

    /// Copies one record (the concatenation of `parts`) after what is staged,
    /// tagged `tag`. `Err(WouldBlock)` when no buffer has room (check
    /// [`Self::room_bytes`] first); nothing is staged then.
    pub fn stage(&mut self, parts: &[&[u8]], tag: u64) -> io::Result<()> {
        let total: usize = parts.iter().map(|part| part.len()).sum();
        assert!(
            total <= self.buffer_bytes,
            "record larger than a staging buffer"
        );
        if let Some(index) = self.filling {
            if self.buffers[index].len + total > self.buffer_bytes {
                self.start_write(index)?;
            }
        }
        let index = match self.filling {
            Some(index) => index,
            None => {
                let Some(index) = self.buffers.iter().position(|b| b.phase == Phase::Free) else {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "every staging buffer is being written",
                    ));
                };
                self.buffers[index] = Buffer {
                    phase: Phase::Filling,
                    file_offset: self.staged.offset,
                    ..FREE
                };
                self.filling = Some(index);
                index
            }
        };
        let buffer = &mut self.buffers[index];
        let mut at = index * self.buffer_bytes + buffer.len;
        for part in parts {
            // SAFETY: the range lies inside this buffer's slice of the
            // staging region (len + total <= buffer_bytes, checked above),
            // and a Filling buffer is not in any operation.
            unsafe { self.staging.slice_mut(at, part.len()) }.copy_from_slice(part);
            at += part.len();
        }
        buffer.len += total;
        buffer.tag = tag;
        self.staged = Position {
            offset: self.staged.offset + total as u64,
            tag,
        };
        Ok(())
    }

    /// Hands what was staged to the kernel (one write), and a sync when
    /// writes completed since the last one. Call once per duty cycle.
    pub fn submit(&mut self) -> io::Result<()> {
        if let Some(index) = self.filling {
            self.start_write(index)?;
        }
        self.ring.submit()
    }

    /// Reaps completions, resubmits short writes, starts the next sync, and
    /// returns how far the file is durable (side record written).
    pub fn poll(&mut self) -> Result<Position, &FileError> {
        if self.failed.is_none() {
            if let Err(error) = self.poll_inner() {
                self.failed.get_or_insert(FileError {
                    operation: "io_uring submit",
                    error,
                });
            }
        }
        match &self.failed {
            Some(error) => Err(error),
            None => Ok(self.durable),
        }
    }

    /// How far the file is durable.
    pub fn durable(&self) -> Position {
        self.durable
    }

    /// How far the file is staged.
    pub fn staged(&self) -> Position {
        self.staged
    }

    /// Whether anything staged is not yet durable.
    pub fn pending(&self) -> bool {
        self.durable.offset < self.staged.offset
    }

    /// `fdatasync` calls completed.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Writes completed.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Waits in the ring up to `timeout` for a completion.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.ring.wait(timeout)
    }

    /// Submits and waits until everything staged is durable, or `timeout`.
    pub fn flush(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        self.submit()?;
        loop {
            let staged = self.staged.offset;
            match self.poll() {
                Err(error) => {
                    return Err(io::Error::new(error.error.kind(), error.to_string()));
                }
                Ok(durable) if durable.offset == staged => return Ok(()),
                Ok(_) => {}
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "journal writes and sync did not complete in time",
                ));
            }
            self.ring.wait(deadline - now)?;
        }
    }

    /// The file (for its length, or reads on another handle).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn start_write(&mut self, index: usize) -> io::Result<()> {
        let buffer = &mut self.buffers[index];
        assert_eq!(buffer.phase, Phase::Filling);
        self.filling = None;
        if buffer.len == 0 {
            buffer.phase = Phase::Free;
            return Ok(());
        }
        buffer.phase = Phase::Queued;
        assert!(self.order_len < self.order.len());
        let slot = (self.order_head + self.order_len) % self.order.len();
        self.order[slot] = index;
        self.order_len += 1;
        self.push_next_write()
    }

    /// Starts the oldest queued write when no write is in flight.
    fn push_next_write(&mut self) -> io::Result<()> {
        if self.writing.is_some() {
            return Ok(());
        }
        for i in 0..self.order_len {
            let index = self.order[(self.order_head + i) % self.order.len()];
            match self.buffers[index].phase {
                Phase::Written => continue,
                Phase::Queued => {
                    self.buffers[index].phase = Phase::Writing;
                    self.writing = Some(index);
                    return self.push_write(index);
                }
                phase => unreachable!("buffer {index} in phase {phase:?} in the write queue"),
            }
        }
        Ok(())
    }

    /// Pushes the (rest of the) write of buffer `index`. When no sync is in
    /// flight and this write reaches the end of what is staged, the sync and
    /// its side write are linked behind it in the same submission, so a lone
    /// record costs one trip through the kernel, not three.
    fn push_write(&mut self, index: usize) -> io::Result<()> {
        let buffer = self.buffers[index];
        let start = index * self.buffer_bytes + buffer.written;
        let len = buffer.len - buffer.written;
        let end = buffer.file_offset + buffer.len as u64;
        let link_sync = self.syncing.is_none() && end == self.staged.offset;
        let entry = opcode::Write::new(
            types::Fd(self.file.as_raw_fd()),
            self.staging.at(start),
            len as u32,
        )
        .offset(buffer.file_offset + buffer.written as u64)
        .build()
        .user_data(user_data(kind::FILE_WRITE, 0, index as u32));
        let entry = if link_sync {
            entry.flags(squeue::Flags::IO_LINK)
        } else {
            entry
        };
        // SAFETY: the range is this buffer's staged bytes inside `staging`,
        // owned by self and not touched until the write's completion is
        // reaped (phase Writing); drop drains or leaks.
        unsafe { self.ring.push(&entry) }?;
        if link_sync {
            self.start_sync(Position {
                offset: end,
                tag: buffer.tag,
            })?;
        }
        Ok(())
    }

    fn poll_inner(&mut self) -> io::Result<()> {
        loop {
            let n = self.ring.reap(&mut self.cqes);
            for i in 0..n {
                let cqe = self.cqes[i];
                self.complete(cqe)?;
                if self.failed.is_some() {
                    return Ok(());
                }
            }
            if n < self.cqes.len() {
                break;
            }
        }
        self.advance_written();
        if self.syncing.is_none() && self.written.offset > self.durable.offset {
            self.start_sync(self.written)?;
        }
        self.ring.submit()
    }

    fn complete(&mut self, cqe: Cqe) -> io::Result<()> {
        match cqe.kind() {
            kind::FILE_WRITE => {
                let index = cqe.index() as usize;
                if cqe.result == -libc::EINTR || cqe.result == -libc::EAGAIN {
                    return self.push_write(index);
                }
                if cqe.result <= 0 {
                    let error = if cqe.result == 0 {
                        io::Error::new(io::ErrorKind::WriteZero, "write returned 0")
                    } else {
                        io::Error::from_raw_os_error(-cqe.result)
                    };
                    self.failed = Some(FileError {
                        operation: "write",
                        error,
                    });
                    return Ok(());
                }
                let buffer = &mut self.buffers[index];
                buffer.written += cqe.result as usize;
                if buffer.written < buffer.len {
                    return self.push_write(index);
                }
                buffer.phase = Phase::Written;
                self.writing = None;
                self.writes += 1;
                self.push_next_write()?;
            }
            kind::FILE_SYNC => {
                if cqe.result == -libc::ECANCELED {
                    // The write it was linked behind was short or failed:
                    // the write is resubmitted (or the failure recorded),
                    // and a new sync starts once it completes.
                } else if cqe.result < 0 {
                    self.failed = Some(FileError {
                        operation: "fdatasync",
                        error: io::Error::from_raw_os_error(-cqe.result),
                    });
                } else {
                    self.syncs += 1;
                }
            }
            kind::FILE_SIDE_WRITE => {
                let target = self.syncing.take().expect("a side write follows a sync");
                if cqe.result == SIDE_RECORD_BYTES as i32 {
                    self.durable = target;
                } else if cqe.result == -libc::ECANCELED {
                    // Its sync was cancelled or failed (see FILE_SYNC).
                } else if self.failed.is_none() {
                    let error = if cqe.result < 0 {
                        io::Error::from_raw_os_error(-cqe.result)
                    } else {
                        io::Error::new(io::ErrorKind::WriteZero, "short side write")
                    };
                    self.failed = Some(FileError {
                        operation: "side write",
                        error,
                    });
                }
            }
            other => unreachable!("completion of kind {other} on a file ring"),
        }
        Ok(())
    }

    /// Moves `written` over the buffers whose writes completed, in file order.
    fn advance_written(&mut self) {
        while self.order_len > 0 {
            let index = self.order[self.order_head];
            let buffer = self.buffers[index];
            if buffer.phase != Phase::Written {
                break;
            }
            assert_eq!(
                buffer.file_offset, self.written.offset,
                "writes tile the file"
            );
            self.written = Position {
                offset: buffer.file_offset + buffer.len as u64,
                tag: buffer.tag,
            };
            self.buffers[index] = FREE;
            self.order_head = (self.order_head + 1) % self.order.len();
            self.order_len -= 1;
        }
    }

    /// Pushes an `fdatasync` that makes `target` durable (everything below it
    /// is written by the time the sync starts: already, or by the write it is
    /// linked behind) and, linked behind it, the side write.
    fn start_sync(&mut self, target: Position) -> io::Result<()> {
        let record = (self.side_record)(target);
        // SAFETY: the side buffer is in no operation (one sync and its side
        // write at a time; `syncing` is None).
        unsafe { self.side_buffer.slice_mut(0, SIDE_RECORD_BYTES) }.copy_from_slice(&record);
        let sync = opcode::Fsync::new(types::Fd(self.file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(user_data(kind::FILE_SYNC, 0, 0));
        let side = opcode::Write::new(
            types::Fd(self.side.as_raw_fd()),
            self.side_buffer.at(0),
            SIDE_RECORD_BYTES as u32,
        )
        .offset(0)
        .build()
        .user_data(user_data(kind::FILE_SIDE_WRITE, 0, 0));
        // SAFETY: a sync references no memory; the side write reads the side
        // buffer, owned by self and untouched until its completion is reaped.
        unsafe {
            self.ring.push(&sync)?;
            self.ring.push(&side)?;
        }
        self.syncing = Some(target);
        Ok(())
    }
}

impl Drop for GroupCommitFile {
    fn drop(&mut self) {
        if !self.ring.cancel_all_and_drain(Duration::from_secs(5)) {
            // The kernel may still read these: leak rather than free.
            self.staging.leak();
            self.side_buffer.leak();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn side_record(position: Position) -> [u8; SIDE_RECORD_BYTES] {
        let mut bytes = [0u8; SIDE_RECORD_BYTES];
        bytes[0..8].copy_from_slice(&position.offset.to_be_bytes());
        bytes[8..16].copy_from_slice(&position.tag.to_be_bytes());
        bytes
    }

    #[test]
    fn staged_records_become_durable_in_order_with_their_side_record() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("data"))
            .unwrap();
        let side = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("side"))
            .unwrap();
        let config = GroupCommitConfig {
            buffers: 3,
            buffer_bytes: 4096,
        };
        let mut group =
            GroupCommitFile::new(file, side, Position::default(), config, side_record).unwrap();
        let mut expected = Vec::new();
        for record in 0..2_000u64 {
            let bytes = format!(
                "record {record:06} {}\n",
                "z".repeat((record % 50) as usize)
            );
            while group.room_bytes() < bytes.len() {
                group.submit().unwrap();
                group.poll().unwrap();
                group.wait(Duration::from_millis(10)).unwrap();
            }
            group.stage(&[bytes.as_bytes()], record + 1).unwrap();
            expected.extend_from_slice(bytes.as_bytes());
            if record % 7 == 0 {
                group.submit().unwrap();
                let durable = group.poll().unwrap();
                assert!(durable.offset <= expected.len() as u64);
            }
        }
        group.flush(Duration::from_secs(10)).unwrap();
        assert_eq!(
            group.durable(),
            Position {
                offset: expected.len() as u64,
                tag: 2_000
            }
        );
        assert!(group.syncs() >= 1);
        let mut on_disk = vec![0u8; expected.len()];
        group.file().read_exact_at(&mut on_disk, 0).unwrap();
        assert_eq!(on_disk, expected);
        let side = std::fs::read(dir.path().join("side")).unwrap();
        assert_eq!(side, side_record(group.durable()));
    }

    #[test]
    fn a_failed_write_is_sticky_and_nothing_more_becomes_durable() {
        let dir = tempfile::tempdir().unwrap();
        // A read-only handle: every write fails with EBADF.
        std::fs::write(dir.path().join("data"), b"").unwrap();
        let file = File::open(dir.path().join("data")).unwrap();
        let side = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("side"))
            .unwrap();
        let mut group = GroupCommitFile::new(
            file,
            side,
            Position::default(),
            GroupCommitConfig::default(),
            side_record,
        )
        .unwrap();
        group.stage(&[b"hello"], 1).unwrap();
        let error = group.flush(Duration::from_secs(5)).unwrap_err();
        assert!(error.to_string().contains("write failed"), "{error}");
        assert_eq!(group.durable(), Position::default());
        assert!(group.poll().is_err());
    }
}
