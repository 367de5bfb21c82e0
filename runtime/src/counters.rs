//! A fixed set of counters that loops increment without locks and that
//! another thread, or another process (`tally-stat`), reads from a
//! memory-mapped file: Aeron's system counters in its CnC file.
//!
//! # File layout (version 1)
//!
//! All integers are little-endian (the native order of every target this
//! crate builds for; other targets fail to compile). `N` is the counter count.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `b"TALLYCNT"`, written last (release store) when the file is created |
//! | 8 | 4 | version `u32`, [`VERSION`] = 1 |
//! | 12 | 4 | counter count `N` `u32`, at most [`COUNTERS_MAX`] |
//! | 16 | 4 | pid `u32` of the owner |
//! | 20 | 4 | reserved, 0 |
//! | 24 | 32 | process name, ASCII, zero-padded |
//! | 56 | 8 | start time `u64`, ns since the Unix epoch |
//! | 64 | 8 | heartbeat `u64`, ns since the Unix epoch, stored (atomically) by the owner; starts equal to the start time |
//! | 72 | 56 | reserved, 0 (the heartbeat has its cache line to itself) |
//! | 128 | 64 × N | labels: counter `i`'s name at `128 + 64·i`, printable ASCII, at most 63 bytes, zero-padded (always NUL-terminated) |
//! | 128 + 64·N | 64 × N | values: counter `i` is a `u64` at `128 + 64·N + 64·i`, alone on its 64-byte cache line |
//!
//! The file is exactly `128 + 128·N` bytes. The owner writes it under a
//! temporary name and renames it into place, so a reader never sees a
//! half-written file, and a reader still mapping an older file (a previous
//! run) keeps reading that file's inode rather than a truncated one. The file
//! stays after the owner exits, so `tally-stat` can read a stopped process's
//! last values; the heartbeat and the pid say whether it is still alive.
//!
//! # Threading contract
//!
//! [`Counter::add`], [`Counter::increment`], [`Counter::set`] and
//! [`Counter::set_max`] are a relaxed load and a relaxed store: no lock
//! prefix, no fence, no allocation. Exactly **one thread may write** a given
//! counter with them (two writers would lose updates, never corrupt memory).
//! A counter with several writers must use [`Counter::add_shared`] /
//! [`Counter::set_max_shared`] (atomic read-modify-write). Readers use relaxed
//! loads: each value is exact when read, but values of different counters are
//! not a consistent snapshot of one instant.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;

#[cfg(not(target_endian = "little"))]
compile_error!("the counter file layout is little-endian; this target is not");

/// First 8 bytes of every counter file.
pub const MAGIC: [u8; 8] = *b"TALLYCNT";
/// Layout version this code writes and reads.
pub const VERSION: u32 = 1;
/// Most counters in one file.
pub const COUNTERS_MAX: usize = 256;
/// Longest counter name, bytes (the 64-byte label keeps a NUL terminator).
pub const NAME_BYTES_MAX: usize = 63;
/// Longest process name, bytes.
pub const PROCESS_NAME_BYTES_MAX: usize = 32;

/// Bytes of the header; labels start here.
pub const HEADER_BYTES: usize = 128;
/// Bytes per label slot.
pub const LABEL_BYTES: usize = 64;
/// Bytes per value slot (one cache line).
pub const VALUE_STRIDE_BYTES: usize = 64;

/// Offsets of the header fields.
pub mod offset {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const COUNTER_COUNT: usize = 12;
    pub const PID: usize = 16;
    pub const PROCESS_NAME: usize = 24;
    pub const START_TIME_NS: usize = 56;
    pub const HEARTBEAT_NS: usize = 64;
}

/// Size in bytes of a counter file holding `count` counters.
pub const fn file_bytes(count: usize) -> usize {
    HEADER_BYTES + count * (LABEL_BYTES + VALUE_STRIDE_BYTES)
}

const fn label_offset(index: usize) -> usize {
    HEADER_BYTES + index * LABEL_BYTES
}

const fn value_offset(count: usize, index: usize) -> usize {
    HEADER_BYTES + count * LABEL_BYTES + index * VALUE_STRIDE_BYTES
}

const _: () = assert!(offset::HEARTBEAT_NS + 8 <= HEADER_BYTES);
const _: () = assert!(offset::PROCESS_NAME + PROCESS_NAME_BYTES_MAX == offset::START_TIME_NS);
const _: () = assert!(HEADER_BYTES & 63 == 0 && LABEL_BYTES & 63 == 0);
const _: () = assert!(NAME_BYTES_MAX < LABEL_BYTES);

/// A shared memory mapping, unmapped when the last holder drops it.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory not tied to a thread. After creation,
// every byte that is ever written again (heartbeat, values) is accessed only
// through atomics; the rest is read-only.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: concurrent access is atomic or read-only.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` (shared) or, with `None`, anonymous memory.
    fn map(file: Option<&File>, len: usize, writable: bool) -> io::Result<Self> {
        let protection = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let (flags, fd) = match file {
            Some(file) => (libc::MAP_SHARED, file.as_raw_fd()),
            None => (libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: a fresh mapping; `fd` (if any) is open for the duration of
        // the call; no existing memory is touched.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, protection, flags, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap succeeded with a null address"),
            len,
        })
    }

    /// The 8-byte-aligned `u64` at `offset` as an atomic.
    ///
    /// A reader's mapping is read-only: through it this crate only ever does
    /// `Relaxed` loads of at most register width, which the standard library
    /// guarantees work on read-only memory (`core::sync::atomic`, "Atomic
    /// accesses to read-only memory"); ordering comes from separate fences.
    fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        assert!(offset & 7 == 0 && offset + 8 <= self.len);
        // SAFETY: in bounds of the live mapping and 8-aligned (mmap is
        // page-aligned, offsets are multiples of 8), so dereferenceable as an
        // AtomicU64 (an UnsafeCell, so shared mutation is allowed) for as long
        // as `&self`; every concurrent access to these bytes, in this process
        // or another, is an aligned 8-byte atomic.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// Copies out `len` bytes at `offset` (header and labels, which nobody
    /// writes after creation).
    fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= self.len);
        // SAFETY: in bounds of the live mapping; `out` is a distinct buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            )
        };
    }

    fn read_u32(&self, offset: usize) -> u32 {
        let mut bytes = [0; 4];
        self.read_bytes(offset, &mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn read_u64(&self, offset: usize) -> u64 {
        let mut bytes = [0; 8];
        self.read_bytes(offset, &mut bytes);
        u64::from_le_bytes(bytes)
    }

    /// Writes `bytes` at `offset`.
    ///
    /// # Safety
    ///
    /// The mapping is writable and not yet published (no other thread or
    /// process reads these bytes while they are written).
    unsafe fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len);
        // SAFETY: in bounds; writable and unshared per this fn's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset),
                bytes.len(),
            )
        };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly our mapping; the last Arc holder is dropping it, so
        // no reference into it remains.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The owner's side: creates the counter file and hands out [`Counter`]s.
///
/// Dropping it does not delete the file (a stopped process stays readable);
/// counters keep the mapping alive until they are dropped too.
pub struct CounterFile {
    mapping: Arc<Mapping>,
    names: Vec<String>,
    path: Option<PathBuf>,
}

impl CounterFile {
    /// Creates (replacing any existing file at `path`) and maps the counter
    /// file, with all values zero.
    ///
    /// Errors (`InvalidInput`) when there are more than [`COUNTERS_MAX`]
    /// names, a name is empty, longer than [`NAME_BYTES_MAX`], not printable
    /// ASCII or given twice, or `process_name` is longer than
    /// [`PROCESS_NAME_BYTES_MAX`] or not printable ASCII; otherwise the I/O
    /// error, naming the path.
    pub fn create(path: &Path, process_name: &str, names: &[&str]) -> io::Result<CounterFile> {
        validate(process_name, names)?;
        let len = file_bytes(names.len());
        let with_path =
            |error: io::Error| io::Error::new(error.kind(), format!("{}: {error}", path.display()));
        let file_name = path.file_name().ok_or_else(|| {
            with_path(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file path",
            ))
        })?;
        let mut temporary_name = std::ffi::OsString::from(".");
        temporary_name.push(file_name);
        temporary_name.push(format!(".{}.tmp", std::process::id()));
        let temporary = path.with_file_name(temporary_name);

        let build = || -> io::Result<Mapping> {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&temporary)?;
            // Write zeros rather than set_len: the blocks exist on disk, so a
            // store through the mapping cannot SIGBUS on a full file system.
            file.write_all(&vec![0; len])?;
            let mapping = Mapping::map(Some(&file), len, true)?;
            write_header(&mapping, process_name, names);
            fs::rename(&temporary, path)?;
            Ok(mapping)
        };
        match build() {
            Ok(mapping) => Ok(CounterFile {
                mapping: Arc::new(mapping),
                names: names.iter().map(|&name| name.to_owned()).collect(),
                path: Some(path.to_owned()),
            }),
            Err(error) => {
                let _ = fs::remove_file(&temporary);
                Err(with_path(error))
            }
        }
    }

    /// The same counters in anonymous memory, with no file: for tests and
    /// benchmarks.
    ///
    /// # Panics
    ///
    /// On the names [`CounterFile::create`] rejects, or if the kernel cannot
    /// map a few pages.
    pub fn in_memory(names: &[&str]) -> CounterFile {
        const PROCESS_NAME: &str = "(in memory)";
        if let Err(error) = validate(PROCESS_NAME, names) {
            panic!("invalid counter names: {error}");
        }
        let mapping = Mapping::map(None, file_bytes(names.len()), true)
            .expect("mapping memory for in-memory counters");
        write_header(&mapping, PROCESS_NAME, names);
        CounterFile {
            mapping: Arc::new(mapping),
            names: names.iter().map(|&name| name.to_owned()).collect(),
            path: None,
        }
    }

    /// A handle to counter `index` (the position of its name in `create`).
    ///
    /// # Panics
    ///
    /// If `index` is out of range (a bug).
    pub fn counter(&self, index: usize) -> Counter {
        assert!(
            index < self.names.len(),
            "counter {index} out of range (file has {})",
            self.names.len()
        );
        let cell = self
            .mapping
            .atomic_u64(value_offset(self.names.len(), index));
        Counter {
            cell: NonNull::from(cell),
            _mapping: Arc::clone(&self.mapping),
        }
    }

    /// Handles to the counters `names`, which must sit at `first_index..` in
    /// this file, in that order (a struct of counters that a process lays out
    /// in its file calls this in its `from_file`).
    ///
    /// # Panics
    /// When the file holds other names there: the file was laid out wrong, a
    /// bug.
    pub fn counters_at(&self, first_index: usize, names: &[&str]) -> Vec<Counter> {
        names
            .iter()
            .enumerate()
            .map(|(offset, name)| {
                let index = first_index + offset;
                assert_eq!(
                    self.names().nth(index),
                    Some(*name),
                    "counter file position {index} is not the counter {name}"
                );
                self.counter(index)
            })
            .collect()
    }

    /// A handle to the counter called `name`.
    pub fn counter_by_name(&self, name: &str) -> Option<Counter> {
        let index = self.names.iter().position(|known| known == name)?;
        Some(self.counter(index))
    }

    /// Stores the owner's heartbeat (ns since the Unix epoch, so another
    /// process can compare it with its own clock).
    pub fn set_heartbeat(&self, now_ns: u64) {
        self.mapping
            .atomic_u64(offset::HEARTBEAT_NS)
            .store(now_ns, Ordering::Relaxed);
    }

    /// The counter names, in index order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The file's path; `None` for [`CounterFile::in_memory`].
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl std::fmt::Debug for CounterFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterFile")
            .field("path", &self.path)
            .field("names", &self.names)
            .finish()
    }
}

fn is_printable_ascii(text: &str) -> bool {
    text.bytes()
        .all(|byte| byte.is_ascii_graphic() || byte == b' ')
}

fn validate(process_name: &str, names: &[&str]) -> io::Result<()> {
    let invalid = |message: String| Err(io::Error::new(io::ErrorKind::InvalidInput, message));
    if process_name.len() > PROCESS_NAME_BYTES_MAX || !is_printable_ascii(process_name) {
        return invalid(format!(
            "process name {process_name:?} must be printable ASCII of at most \
             {PROCESS_NAME_BYTES_MAX} bytes"
        ));
    }
    if names.len() > COUNTERS_MAX {
        return invalid(format!(
            "{} counters given; a counter file holds at most {COUNTERS_MAX}",
            names.len()
        ));
    }
    for (index, name) in names.iter().enumerate() {
        if name.is_empty() {
            return invalid(format!("counter {index} has an empty name"));
        }
        if name.len() > NAME_BYTES_MAX {
            return invalid(format!(
                "counter name {name:?} is {} bytes long; at most {NAME_BYTES_MAX} bytes fit",
                name.len()
            ));
        }
        if !is_printable_ascii(name) {
            return invalid(format!("counter name {name:?} must be printable ASCII"));
        }
        if names[..index].contains(name) {
            return invalid(format!("counter name {name:?} given twice"));
        }
    }
    Ok(())
}

/// Fills header and labels of a fresh, unpublished mapping; the magic last.
fn write_header(mapping: &Mapping, process_name: &str, names: &[&str]) {
    let start_time_ns = crate::clock::wall_ns();
    // SAFETY: `mapping` is freshly created and writable; nobody reads it until
    // it is renamed into place or handed out, after this returns.
    unsafe {
        mapping.write_bytes(offset::VERSION, &VERSION.to_le_bytes());
        mapping.write_bytes(offset::COUNTER_COUNT, &(names.len() as u32).to_le_bytes());
        mapping.write_bytes(offset::PID, &std::process::id().to_le_bytes());
        mapping.write_bytes(offset::PROCESS_NAME, process_name.as_bytes());
        mapping.write_bytes(offset::START_TIME_NS, &start_time_ns.to_le_bytes());
        for (index, name) in names.iter().enumerate() {
            mapping.write_bytes(label_offset(index), name.as_bytes());
        }
    }
    mapping
        .atomic_u64(offset::HEARTBEAT_NS)
        .store(start_time_ns, Ordering::Relaxed);
    mapping
        .atomic_u64(offset::MAGIC)
        .store(u64::from_le_bytes(MAGIC), Ordering::Release);
}

/// One counter: a `u64` on its own cache line in a [`CounterFile`].
///
/// Cheap to clone (an `Arc` increment, not on the hot path). Holds the
/// mapping alive, so it stays valid after the `CounterFile` is dropped.
/// See the module doc for the single-writer rule.
#[derive(Clone)]
pub struct Counter {
    cell: NonNull<AtomicU64>,
    _mapping: Arc<Mapping>,
}

// SAFETY: `cell` points into `_mapping`, which this handle keeps alive; every
// access through it is atomic.
unsafe impl Send for Counter {}
// SAFETY: as for Send; `&Counter` allows only atomic operations.
unsafe impl Sync for Counter {}

impl Counter {
    #[inline]
    fn cell(&self) -> &AtomicU64 {
        // SAFETY: `cell` points into the mapping `self._mapping` keeps alive,
        // 8-aligned; only ever accessed atomically.
        unsafe { self.cell.as_ref() }
    }

    /// Adds `n` (wrapping). Single writer only: a relaxed load and a relaxed
    /// store, no read-modify-write instruction.
    #[inline]
    pub fn add(&self, n: u64) {
        let cell = self.cell();
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds 1. Single writer only.
    #[inline]
    pub fn increment(&self) {
        self.add(1);
    }

    /// Stores `v` (a gauge). Single writer only (several writers do not
    /// corrupt it, but the last store wins).
    #[inline]
    pub fn set(&self, v: u64) {
        self.cell().store(v, Ordering::Relaxed);
    }

    /// Raises the value to `v` if `v` is larger (e.g. max cycle time). Single
    /// writer only.
    #[inline]
    pub fn set_max(&self, v: u64) {
        let cell = self.cell();
        if v > cell.load(Ordering::Relaxed) {
            cell.store(v, Ordering::Relaxed);
        }
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.cell().load(Ordering::Relaxed)
    }

    /// Adds `n` with an atomic `fetch_add`: for a counter with several
    /// writers.
    #[inline]
    pub fn add_shared(&self, n: u64) {
        self.cell().fetch_add(n, Ordering::Relaxed);
    }

    /// [`Counter::set_max`] with an atomic `fetch_max`: for several writers.
    #[inline]
    pub fn set_max_shared(&self, v: u64) {
        self.cell().fetch_max(v, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counter")
            .field("value", &self.get())
            .finish()
    }
}

/// A read-only view of a counter file, from any process, live or stopped.
pub struct CounterReader {
    mapping: Mapping,
    names: Vec<String>,
    process_name: String,
    pid: u32,
    start_time_ns: u64,
}

impl CounterReader {
    /// Maps the counter file at `path` read-only and checks it: magic,
    /// version, counter count, size and labels. Errors are `InvalidData`
    /// naming the path and what is wrong, or the I/O error.
    pub fn open(path: &Path) -> io::Result<Self> {
        let error = |kind: io::ErrorKind, message: String| {
            io::Error::new(kind, format!("counter file {}: {message}", path.display()))
        };
        let invalid = |message: String| error(io::ErrorKind::InvalidData, message);
        let file = File::open(path).map_err(|e| error(e.kind(), e.to_string()))?;
        let len = file
            .metadata()
            .map_err(|e| error(e.kind(), e.to_string()))?
            .len();
        if len < HEADER_BYTES as u64 {
            return Err(invalid(format!(
                "truncated: {len} bytes, shorter than the {HEADER_BYTES}-byte header"
            )));
        }
        let len = usize::try_from(len).map_err(|_| invalid("too large".into()))?;
        let mapping =
            Mapping::map(Some(&file), len, false).map_err(|e| error(e.kind(), e.to_string()))?;

        let magic = mapping.atomic_u64(offset::MAGIC).load(Ordering::Relaxed);
        // Pairs with the owner's release store of the magic: the header and
        // labels it wrote first are visible below.
        fence(Ordering::Acquire);
        if magic.to_le_bytes() != MAGIC {
            return Err(invalid(format!(
                "bad magic {:?} (expected \"TALLYCNT\"): not a tally counter file",
                String::from_utf8_lossy(&magic.to_le_bytes())
            )));
        }
        let version = mapping.read_u32(offset::VERSION);
        if version != VERSION {
            return Err(invalid(format!(
                "layout version {version}, this reader understands {VERSION}"
            )));
        }
        let count = mapping.read_u32(offset::COUNTER_COUNT) as usize;
        if count > COUNTERS_MAX {
            return Err(invalid(format!(
                "counter count {count} exceeds the maximum {COUNTERS_MAX}"
            )));
        }
        let expected_len = file_bytes(count);
        if len != expected_len {
            let what = if len < expected_len {
                "truncated"
            } else {
                "wrong size"
            };
            return Err(invalid(format!(
                "{what}: {len} bytes, but {count} counters need {expected_len}"
            )));
        }
        let mut name_bytes = [0; PROCESS_NAME_BYTES_MAX];
        mapping.read_bytes(offset::PROCESS_NAME, &mut name_bytes);
        let process_name = text_from_zero_padded(&name_bytes)
            .ok_or_else(|| invalid("process name is not printable ASCII".into()))?;
        let mut names = Vec::with_capacity(count);
        for index in 0..count {
            let mut label = [0; LABEL_BYTES];
            mapping.read_bytes(label_offset(index), &mut label);
            match text_from_zero_padded(&label) {
                Some(name) if !name.is_empty() && label[LABEL_BYTES - 1] == 0 => names.push(name),
                _ => return Err(invalid(format!("label of counter {index} is not a name"))),
            }
        }
        Ok(CounterReader {
            pid: mapping.read_u32(offset::PID),
            start_time_ns: mapping.read_u64(offset::START_TIME_NS),
            mapping,
            names,
            process_name,
        })
    }

    /// Pid of the process that created the file.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn process_name(&self) -> &str {
        &self.process_name
    }

    /// When the owner created the file, ns since the Unix epoch.
    pub fn start_time_ns(&self) -> u64 {
        self.start_time_ns
    }

    /// The owner's last heartbeat, ns since the Unix epoch (read live).
    pub fn heartbeat_ns(&self) -> u64 {
        self.mapping
            .atomic_u64(offset::HEARTBEAT_NS)
            .load(Ordering::Relaxed)
    }

    /// Counter `index`'s current value.
    ///
    /// # Panics
    ///
    /// If `index >= len()`.
    pub fn value(&self, index: usize) -> u64 {
        assert!(index < self.names.len(), "counter {index} out of range");
        self.mapping
            .atomic_u64(value_offset(self.names.len(), index))
            .load(Ordering::Relaxed)
    }

    /// Counter `index`'s name.
    pub fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    /// Every counter's name and current value, in index order.
    pub fn read(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.names
            .iter()
            .enumerate()
            .map(|(index, name)| (name.as_str(), self.value(index)))
    }

    /// Clears `out` and fills it with every counter's name and value.
    pub fn snapshot(&self, out: &mut Vec<(String, u64)>) {
        out.clear();
        out.extend(self.read().map(|(name, value)| (name.to_owned(), value)));
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl std::fmt::Debug for CounterReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterReader")
            .field("process_name", &self.process_name)
            .field("pid", &self.pid)
            .field("names", &self.names)
            .finish()
    }
}

/// The text before the first NUL, if it is printable ASCII and only zeros
/// follow.
fn text_from_zero_padded(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    if bytes[end..].iter().any(|&b| b != 0) {
        return None;
    }
    let text = std::str::from_utf8(&bytes[..end]).ok()?;
    is_printable_ascii(text).then(|| text.to_owned())
}

/// Declares a set of counter handles: a struct with one [`Counter`] field
/// per name, its `NAMES` (the names in the counter file, `PREFIX` + field
/// name, in field order) and `from_file`, which checks that the file holds
/// exactly those names at the position given. The one way every tally loop
/// keeps its counters.
///
/// ```
/// tally_runtime::counter_set! {
///     /// The example loop's counters.
///     pub struct ExampleCounters, prefix "example.";
///     /// Requests answered.
///     answered,
///     /// Gauge: clients now.
///     clients,
/// }
/// let file = tally_runtime::counters::CounterFile::in_memory(ExampleCounters::NAMES);
/// let counters = ExampleCounters::from_file(&file, 0);
/// counters.answered.increment();
/// assert_eq!(ExampleCounters::NAMES, &["example.answered", "example.clients"]);
/// assert_eq!(file.counter_by_name("example.answered").unwrap().get(), 1);
/// ```
#[macro_export]
macro_rules! counter_set {
    (
        $(#[$struct_doc:meta])*
        $vis:vis struct $name:ident, prefix $prefix:literal;
        $( $(#[$doc:meta])* $field:ident ),* $(,)?
    ) => {
        $(#[$struct_doc])*
        #[derive(Clone, Debug)]
        $vis struct $name {
            $( $(#[$doc])* pub $field: $crate::counters::Counter, )*
        }

        impl $name {
            /// The counter names, in field order: register them in the
            /// counter file in this order.
            pub const NAMES: &'static [&'static str] = &[$( concat!($prefix, stringify!($field)) ),*];

            /// Handles to the counters at `first_index .. first_index +
            /// NAMES.len()` of `file`.
            ///
            /// # Panics
            ///
            /// When the file holds other names there (a bug in how the file
            /// was made).
            pub fn from_file(file: &$crate::counters::CounterFile, first_index: usize) -> Self {
                let names: Vec<&str> = file.names().collect();
                let mut index = first_index;
                $(
                    let expected = concat!($prefix, stringify!($field));
                    assert_eq!(
                        names.get(index).copied(),
                        Some(expected),
                        "counter file position {index} is not the counter {expected}",
                    );
                    let $field = file.counter(index);
                    index += 1;
                )*
                let _ = index;
                $name { $( $field, )* }
            }
        }
    };
}

#[cfg(test)]
mod tests;
