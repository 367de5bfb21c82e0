//! Buffers for the hot path, allocated once at start-up.
//!
//! [`HugeRegion`] is one contiguous, zeroed, pre-faulted region of memory,
//! backed by the best pages this host offers:
//!
//! 1. [`PageKind::HugeTlb`]: explicitly reserved huge pages
//!    (`vm.nr_hugepages`), mapped with `MAP_HUGETLB` through `hugepage-rs`,
//!    when [`PoolOptions::prefer_huge`] is set and `/proc/meminfo` shows enough
//!    free, unreserved ones. The kernel reserves them at `mmap`, so a later
//!    fault cannot fail.
//! 2. [`PageKind::TransparentHuge`]: an anonymous mapping aligned to the THP
//!    size and advised with `madvise(MADV_HUGEPAGE)`, when THP is `always` or
//!    `madvise` and the region spans at least one huge page. Whether the
//!    kernel actually backs it with huge pages depends on free contiguous
//!    memory; [`HugeRegion::huge_backed_bytes`] says how much it did.
//! 3. [`PageKind::Normal`]: an anonymous mapping of normal pages.
//!
//! Every page is touched in [`HugeRegion::new`], so the hot path takes no page
//! faults; with [`PoolOptions::lock`] the region is also `mlock`ed (a failure,
//! e.g. a low `RLIMIT_MEMLOCK`, is logged and reported by
//! [`HugeRegion::locked`], never fatal).
//!
//! [`BufferPool`] carves one region into equal buffers with a free list:
//! after [`BufferPool::new`], acquire and release never allocate, lock or log.

use std::alloc::Layout;
use std::fmt;
use std::io;
use std::ptr::NonNull;

const MEMINFO_PATH: &str = "/proc/meminfo";
const THP_ENABLED_PATH: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
const THP_SIZE_PATH: &str = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size";
/// THP size when the kernel does not say (x86-64 and most arm64 kernels).
const THP_BYTES_DEFAULT: usize = 2 << 20;
/// Buffers in a [`BufferPool`] start on their own cache line.
pub const BUFFER_ALIGN_BYTES: usize = 64;

/// Which pages back a [`HugeRegion`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// Explicitly reserved huge pages (`MAP_HUGETLB`).
    HugeTlb,
    /// Normal mapping advised with `MADV_HUGEPAGE`.
    TransparentHuge,
    /// Normal pages.
    Normal,
}

impl fmt::Display for PageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PageKind::HugeTlb => "hugetlb (2 MiB pages reserved)",
            PageKind::TransparentHuge => "transparent huge pages (madvise)",
            PageKind::Normal => "normal 4 KiB pages",
        })
    }
}

/// How a [`HugeRegion`] or [`BufferPool`] gets its memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    /// Use reserved huge pages (`HugeTlb`) when enough are free. When false,
    /// the region never takes from the `vm.nr_hugepages` reserve (which other
    /// processes on the host may have been sized for) and uses THP or normal
    /// pages.
    pub prefer_huge: bool,
    /// `mlock` the region so it is never swapped out. A failure is logged and
    /// shown by [`HugeRegion::locked`], not returned.
    pub lock: bool,
}

impl Default for PoolOptions {
    /// Reserved huge pages when there are some; no `mlock`.
    fn default() -> Self {
        PoolOptions {
            prefer_huge: true,
            lock: false,
        }
    }
}

/// One contiguous, zeroed region of memory, mapped once and unmapped on drop.
///
/// Reading needs `&self`, writing `&mut self`, as for a `Box<[u8]>`.
pub struct HugeRegion {
    ptr: NonNull<u8>,
    /// Bytes asked for; the slices are this long.
    len: usize,
    /// Bytes mapped (a multiple of `page_bytes`).
    mapped_len: usize,
    /// Size of one page of `kind` (huge page, THP or base page size).
    page_bytes: usize,
    kind: PageKind,
    locked: bool,
}

// SAFETY: a HugeRegion exclusively owns its mapping, like a Box<[u8]>; the
// mapping is not tied to the thread that created it.
unsafe impl Send for HugeRegion {}
// SAFETY: `&HugeRegion` only hands out `&[u8]`; writes need `&mut`, so shared
// references never race, as for a Box<[u8]>.
unsafe impl Sync for HugeRegion {}

impl HugeRegion {
    /// A region of `bytes` bytes with [`PoolOptions::default`].
    pub fn new(bytes: usize) -> io::Result<Self> {
        Self::with_options(bytes, PoolOptions::default())
    }

    /// A region of `bytes` bytes (rounded up to whole pages in the mapping),
    /// zeroed and pre-faulted. Fails only if no mapping at all can be made or
    /// `bytes` is 0.
    pub fn with_options(bytes: usize, options: PoolOptions) -> io::Result<Self> {
        if bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a huge-page region needs at least one byte",
            ));
        }
        let mut region = None;
        if options.prefer_huge {
            region = Self::map_hugetlb(bytes);
        }
        let mut region = match region {
            Some(region) => region,
            None => Self::map_anonymous(bytes)?,
        };
        region.prefault();
        if options.lock {
            region.lock();
        }
        tracing::debug!(
            bytes,
            mapped_bytes = region.mapped_len,
            kind = %region.kind,
            locked = region.locked,
            "mapped buffer region"
        );
        Ok(region)
    }

    /// `MAP_HUGETLB` through hugepage-rs, if enough reserved huge pages are
    /// free; `None` (fall back) otherwise.
    fn map_hugetlb(bytes: usize) -> Option<Self> {
        let meminfo = std::fs::read_to_string(MEMINFO_PATH).ok()?;
        // hugepage-rs panics when /proc/meminfo has no Hugepagesize line it
        // can parse; `parse_meminfo` accepts exactly what it accepts, so it
        // is only called when it will not panic.
        let info = parse_meminfo(&meminfo)?;
        let mapped_len = bytes.checked_next_multiple_of(info.page_bytes)?;
        let pages_needed = (mapped_len / info.page_bytes) as u64;
        if info.usable_pages() < pages_needed {
            tracing::debug!(
                pages_needed,
                pages_usable = info.usable_pages(),
                "not enough reserved huge pages; falling back"
            );
            return None;
        }
        let layout = Layout::from_size_align(mapped_len, base_page_bytes()).ok()?;
        // SAFETY: `layout` has a non-zero size; its alignment (the base page
        // size) is below the huge page size, which hugepage-rs requires.
        let ptr = unsafe { hugepage_rs::alloc(layout) };
        // Another process may have taken the pages since we read meminfo.
        let Some(ptr) = NonNull::new(ptr) else {
            tracing::debug!(mapped_len, "MAP_HUGETLB failed; falling back");
            return None;
        };
        Some(HugeRegion {
            ptr,
            len: bytes,
            mapped_len,
            page_bytes: info.page_bytes,
            kind: PageKind::HugeTlb,
            locked: false,
        })
    }

    /// An anonymous mapping, THP-advised and THP-aligned when THP can apply.
    fn map_anonymous(bytes: usize) -> io::Result<Self> {
        let base = base_page_bytes();
        let thp_bytes = thp_bytes();
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "region size overflows");
        let use_thp = thp_mode_allows_madvise() && bytes >= thp_bytes;
        if !use_thp {
            let mapped_len = bytes.checked_next_multiple_of(base).ok_or_else(too_big)?;
            let ptr = mmap_anonymous(mapped_len)?;
            return Ok(HugeRegion {
                ptr,
                len: bytes,
                mapped_len,
                page_bytes: base,
                kind: PageKind::Normal,
                locked: false,
            });
        }
        // Map one extra huge page, then trim both ends so the region starts
        // on a huge-page boundary: THP only backs aligned 2 MiB ranges.
        let mapped_len = bytes
            .checked_next_multiple_of(thp_bytes)
            .ok_or_else(too_big)?;
        let over_len = mapped_len.checked_add(thp_bytes).ok_or_else(too_big)?;
        let raw = mmap_anonymous(over_len)?.as_ptr() as usize;
        let start = raw.next_multiple_of(thp_bytes);
        let head = start - raw;
        let tail = over_len - head - mapped_len;
        if head > 0 {
            // SAFETY: [raw, raw+head) is the front of our fresh mapping, unused.
            unsafe { libc::munmap(raw as *mut libc::c_void, head) };
        }
        if tail > 0 {
            // SAFETY: [start+mapped_len, +tail) is the back of our fresh
            // mapping, unused.
            unsafe { libc::munmap((start + mapped_len) as *mut libc::c_void, tail) };
        }
        // SAFETY: [start, start+mapped_len) is mapped and ours.
        let advised =
            unsafe { libc::madvise(start as *mut libc::c_void, mapped_len, libc::MADV_HUGEPAGE) };
        let kind = if advised == 0 {
            PageKind::TransparentHuge
        } else {
            tracing::debug!(error = %io::Error::last_os_error(), "MADV_HUGEPAGE refused");
            PageKind::Normal
        };
        let page_bytes = if kind == PageKind::TransparentHuge {
            thp_bytes
        } else {
            base
        };
        Ok(HugeRegion {
            ptr: NonNull::new(start as *mut u8).expect("mmap returned a non-null address"),
            len: bytes,
            mapped_len,
            page_bytes,
            kind,
            locked: false,
        })
    }

    /// Touches every base page so the hot path never faults. Anonymous and
    /// hugetlb mappings are already zero, so writing zero keeps them zeroed.
    fn prefault(&mut self) {
        let step = base_page_bytes();
        let base = self.ptr.as_ptr();
        let mut offset = 0;
        while offset < self.mapped_len {
            // SAFETY: `offset < mapped_len`, so the byte is inside our mapping.
            unsafe { base.add(offset).write_volatile(0) };
            offset += step;
        }
    }

    fn lock(&mut self) {
        // SAFETY: [ptr, ptr+mapped_len) is our mapping.
        let rc = unsafe { libc::mlock(self.ptr.as_ptr().cast(), self.mapped_len) };
        if rc == 0 {
            self.locked = true;
        } else {
            tracing::warn!(
                bytes = self.mapped_len,
                error = %io::Error::last_os_error(),
                "mlock of buffer region failed (raise LimitMEMLOCK / ulimit -l); continuing unlocked"
            );
        }
    }

    /// Which pages back this region.
    pub fn kind(&self) -> PageKind {
        self.kind
    }

    /// Whether `mlock` succeeded (false when not asked for).
    pub fn locked(&self) -> bool {
        self.locked
    }

    /// The page size of [`HugeRegion::kind`]: the huge page size for
    /// `HugeTlb`, the THP size for `TransparentHuge`, else the base page size.
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    /// Bytes mapped: [`HugeRegion::len`] rounded up to whole pages.
    pub fn mapped_bytes(&self) -> usize {
        self.mapped_len
    }

    /// How many bytes of this region the kernel backs with huge pages now:
    /// all of it for `HugeTlb`; for the others, the `AnonHugePages` of its
    /// mapping in `/proc/self/smaps` (a diagnostic; reads a file).
    pub fn huge_backed_bytes(&self) -> io::Result<u64> {
        if self.kind == PageKind::HugeTlb {
            return Ok(self.mapped_len as u64);
        }
        let smaps = std::fs::read_to_string("/proc/self/smaps")?;
        Ok(anon_huge_bytes_at(&smaps, self.ptr.as_ptr() as usize).unwrap_or(0))
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Bytes usable (as asked for in `new`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a region has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: [ptr, ptr+len) is mapped, initialised (zeroed) and lives
        // as long as `self`; `&self` excludes writers.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for HugeRegion {
    fn drop(&mut self) {
        match self.kind {
            PageKind::HugeTlb => {
                let layout = Layout::from_size_align(self.mapped_len, base_page_bytes())
                    .expect("layout was valid at allocation");
                // SAFETY: `ptr` came from hugepage_rs::alloc with this layout
                // (same size and alignment) and is freed once, here.
                unsafe { hugepage_rs::dealloc(self.ptr.as_ptr(), layout) };
            }
            PageKind::TransparentHuge | PageKind::Normal => {
                // SAFETY: [ptr, ptr+mapped_len) is exactly our mmap (after
                // trimming); nothing borrows it once we are dropped.
                unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.mapped_len) };
            }
        }
    }
}

impl fmt::Debug for HugeRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HugeRegion")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("mapped_len", &self.mapped_len)
            .field("kind", &self.kind)
            .field("locked", &self.locked)
            .finish()
    }
}

/// A buffer of a [`BufferPool`]: its index, `0..capacity`. Usable as an
/// io_uring `user_data` or buffer id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(u32);

impl BufferId {
    /// The buffer with this index (checked against the pool on use).
    pub const fn from_index(index: u32) -> Self {
        BufferId(index)
    }

    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// `count` equal buffers of `buffer_bytes` carved from one [`HugeRegion`],
/// each starting on a 64-byte boundary, with a LIFO free list (the most
/// recently released buffer, still warm in cache, is handed out next).
///
/// Owned by one loop. Nothing allocates after [`BufferPool::new`].
pub struct BufferPool {
    region: HugeRegion,
    buffer_bytes: usize,
    /// Distance between buffer starts: `buffer_bytes` rounded up to 64.
    stride_bytes: usize,
    /// Free buffer indexes; a stack with capacity `count`.
    free: Vec<u32>,
    /// `in_use[i]`: buffer `i` is acquired (catches double release).
    in_use: Vec<bool>,
}

impl BufferPool {
    /// Most buffers in one pool (indexes fit a `u32`).
    pub const COUNT_MAX: usize = u32::MAX as usize;

    /// A pool with [`PoolOptions::default`].
    pub fn new(count: usize, buffer_bytes: usize) -> io::Result<Self> {
        Self::with_options(count, buffer_bytes, PoolOptions::default())
    }

    pub fn with_options(
        count: usize,
        buffer_bytes: usize,
        options: PoolOptions,
    ) -> io::Result<Self> {
        let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
        if count == 0 || count > Self::COUNT_MAX {
            return Err(invalid(format!(
                "buffer pool count {count} is outside 1..={}",
                Self::COUNT_MAX
            )));
        }
        if buffer_bytes == 0 {
            return Err(invalid(
                "buffer pool buffer_bytes must be at least 1".into(),
            ));
        }
        let stride_bytes = buffer_bytes
            .checked_next_multiple_of(BUFFER_ALIGN_BYTES)
            .and_then(|stride| stride.checked_mul(count).map(|_| stride))
            .ok_or_else(|| invalid(format!("{count} buffers of {buffer_bytes} bytes overflow")))?;
        let region = HugeRegion::with_options(stride_bytes * count, options)?;
        // Pop order: index 0 first.
        let free: Vec<u32> = (0..count as u32).rev().collect();
        Ok(BufferPool {
            region,
            buffer_bytes,
            stride_bytes,
            free,
            in_use: vec![false; count],
        })
    }

    /// Which pages back the pool.
    pub fn kind(&self) -> PageKind {
        self.region.kind()
    }

    /// The region the buffers live in (e.g. to register it with io_uring as
    /// one fixed buffer).
    pub fn region(&self) -> &HugeRegion {
        &self.region
    }

    /// A free buffer, or `None` when all are in use (back-pressure: count it,
    /// never grow).
    #[inline]
    pub fn acquire(&mut self) -> Option<BufferId> {
        let index = self.free.pop()?;
        let slot = &mut self.in_use[index as usize];
        debug_assert!(!*slot, "buffer {index} on the free list while in use");
        *slot = true;
        Some(BufferId(index))
    }

    /// Returns a buffer to the pool. Its contents are left as they are.
    ///
    /// # Panics
    ///
    /// If `id` is not in use (released twice, or never acquired): a bug.
    #[inline]
    pub fn release(&mut self, id: BufferId) {
        let slot = &mut self.in_use[id.index()];
        assert!(*slot, "buffer {} released while not in use", id.0);
        *slot = false;
        debug_assert!(self.free.len() < self.free.capacity());
        self.free.push(id.0);
    }

    /// The buffer's `buffer_bytes` bytes.
    ///
    /// # Panics
    ///
    /// If `id` is outside this pool.
    #[inline]
    pub fn get(&self, id: BufferId) -> &[u8] {
        let start = self.offset(id);
        &self.region.as_slice()[start..start + self.buffer_bytes]
    }

    /// The buffer's `buffer_bytes` bytes, writable.
    ///
    /// # Panics
    ///
    /// If `id` is outside this pool.
    #[inline]
    pub fn get_mut(&mut self, id: BufferId) -> &mut [u8] {
        let start = self.offset(id);
        let end = start + self.buffer_bytes;
        &mut self.region.as_mut_slice()[start..end]
    }

    #[inline]
    fn offset(&self, id: BufferId) -> usize {
        assert!(
            id.index() < self.in_use.len(),
            "buffer {} outside pool",
            id.0
        );
        id.index() * self.stride_bytes
    }

    /// Buffers free now.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Buffers in the pool.
    pub fn capacity(&self) -> usize {
        self.in_use.len()
    }

    /// Bytes in each buffer.
    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// Distance in bytes between the starts of consecutive buffers.
    pub fn stride_bytes(&self) -> usize {
        self.stride_bytes
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("region", &self.region)
            .field("capacity", &self.capacity())
            .field("available", &self.available())
            .field("buffer_bytes", &self.buffer_bytes)
            .finish()
    }
}

/// The explicit huge page figures of `/proc/meminfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HugeTlbInfo {
    page_bytes: usize,
    free_pages: u64,
    reserved_pages: u64,
}

impl HugeTlbInfo {
    /// Free pages not already promised to another mapping.
    fn usable_pages(&self) -> u64 {
        self.free_pages.saturating_sub(self.reserved_pages)
    }
}

/// `None` when `Hugepagesize:` is missing or in a form hugepage-rs would
/// fail on (it accepts a number followed by `kB` or nothing).
fn parse_meminfo(text: &str) -> Option<HugeTlbInfo> {
    let mut page_bytes = None;
    let mut free_pages = 0;
    let mut reserved_pages = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Hugepagesize:") {
            let mut parts = rest.split_whitespace();
            let size: usize = parts.next()?.parse().ok()?;
            let multiplier = match parts.next() {
                None => 1,
                Some("kB") => 1024,
                Some(_) => return None,
            };
            page_bytes = Some(size.checked_mul(multiplier)?);
        } else if let Some(rest) = line.strip_prefix("HugePages_Free:") {
            free_pages = rest.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("HugePages_Rsvd:") {
            reserved_pages = rest.trim().parse().unwrap_or(0);
        }
    }
    let page_bytes = page_bytes?;
    // A "huge" page no bigger than a base page, or not a power of two, is
    // nothing hugepage-rs can align to.
    if page_bytes <= base_page_bytes() || !page_bytes.is_power_of_two() {
        return None;
    }
    Some(HugeTlbInfo {
        page_bytes,
        free_pages,
        reserved_pages,
    })
}

/// Whether `madvise(MADV_HUGEPAGE)` can have an effect: THP is `always` or
/// `madvise` (not `never`, and the kernel has THP at all).
fn thp_mode_allows_madvise() -> bool {
    std::fs::read_to_string(THP_ENABLED_PATH)
        .map(|text| thp_mode_from(&text))
        .unwrap_or(false)
}

fn thp_mode_from(text: &str) -> bool {
    text.contains("[always]") || text.contains("[madvise]")
}

fn thp_bytes() -> usize {
    std::fs::read_to_string(THP_SIZE_PATH)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|bytes: &usize| bytes.is_power_of_two() && *bytes > base_page_bytes())
        .unwrap_or(THP_BYTES_DEFAULT)
}

fn base_page_bytes() -> usize {
    // SAFETY: sysconf reads a constant; no memory is passed.
    let bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if bytes > 0 {
        bytes as usize
    } else {
        4096
    }
}

fn mmap_anonymous(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            error.kind(),
            format!("mmap of {len} bytes failed: {error}"),
        ));
    }
    Ok(NonNull::new(ptr.cast()).expect("mmap succeeded with a null address"))
}

/// `AnonHugePages` (bytes) of the `/proc/self/smaps` mapping containing
/// `address`.
fn anon_huge_bytes_at(smaps: &str, address: usize) -> Option<u64> {
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                inside = (start..end).contains(&address);
                continue;
            }
        }
        if inside {
            if let Some(rest) = line.strip_prefix("AnonHugePages:") {
                let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
                return Some(kib * 1024);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO_WITH_FREE: &str = "MemTotal: 1000 kB\nHugePages_Total:       8\n\
        HugePages_Free:        6\nHugePages_Rsvd:        2\nHugePages_Surp:        0\n\
        Hugepagesize:       2048 kB\nHugetlb:  16384 kB\n";

    #[test]
    fn meminfo_gives_free_unreserved_huge_pages() {
        let info = parse_meminfo(MEMINFO_WITH_FREE).unwrap();
        assert_eq!(info.page_bytes, 2 << 20);
        assert_eq!(info.free_pages, 6);
        assert_eq!(info.usable_pages(), 4);
    }

    #[test]
    fn meminfo_without_a_parsable_hugepagesize_never_reaches_hugepage_rs() {
        assert_eq!(
            parse_meminfo("MemTotal: 1000 kB\nHugePages_Free: 4\n"),
            None
        );
        assert_eq!(parse_meminfo(""), None);
        assert_eq!(parse_meminfo("Hugepagesize: 2 MB\n"), None);
        assert_eq!(parse_meminfo("Hugepagesize:\n"), None);
        assert_eq!(parse_meminfo("Hugepagesize: 4 kB\n"), None);
    }

    #[test]
    fn thp_mode_is_read_from_the_bracketed_word() {
        assert!(thp_mode_from("always [madvise] never\n"));
        assert!(thp_mode_from("[always] madvise never\n"));
        assert!(!thp_mode_from("always madvise [never]\n"));
    }

    #[test]
    fn smaps_anon_huge_pages_are_found_for_the_right_mapping() {
        let smaps = "7f0000000000-7f0000400000 rw-p 00000000 00:00 0\nSize: 4096 kB\n\
            AnonHugePages:  2048 kB\n7f0000400000-7f0000401000 rw-p 00000000 00:00 0\n\
            AnonHugePages:  0 kB\n";
        assert_eq!(anon_huge_bytes_at(smaps, 0x7f00_0000_1000), Some(2 << 20));
        assert_eq!(anon_huge_bytes_at(smaps, 0x7f00_0040_0000), Some(0));
        assert_eq!(anon_huge_bytes_at(smaps, 0x1000), None);
    }

    #[test]
    fn page_kinds_display_as_documented() {
        assert_eq!(
            PageKind::HugeTlb.to_string(),
            "hugetlb (2 MiB pages reserved)"
        );
        assert_eq!(
            PageKind::TransparentHuge.to_string(),
            "transparent huge pages (madvise)"
        );
        assert_eq!(PageKind::Normal.to_string(), "normal 4 KiB pages");
    }

    #[test]
    fn small_region_uses_normal_pages_and_is_zeroed() {
        let options = PoolOptions {
            prefer_huge: false,
            lock: false,
        };
        let mut region = HugeRegion::with_options(100, options).unwrap();
        assert_eq!(region.kind(), PageKind::Normal);
        assert_eq!(region.len(), 100);
        assert!(region.as_slice().iter().all(|&b| b == 0));
        region.as_mut_slice()[99] = 7;
        assert_eq!(region.as_slice()[99], 7);
    }

    #[test]
    fn zero_sized_region_and_pool_are_rejected() {
        assert_eq!(
            HugeRegion::new(0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(BufferPool::new(0, 64).is_err());
        assert!(BufferPool::new(4, 0).is_err());
        assert!(BufferPool::new(usize::MAX / 2, 1024).is_err());
    }
}
