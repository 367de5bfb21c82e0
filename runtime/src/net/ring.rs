//! The io_uring instance each socket type owns, the `user_data` encoding, and
//! the owned memory the kernel reads and writes while operations are in flight.
//!
//! Ownership rule for everything in `net`: a buffer (or `msghdr`, `iovec`,
//! `sockaddr`, `timespec`) that an operation points at lives in a [`Region`] or
//! a [`HeapArray`] owned by the same object as the [`Ring`], so it has a stable
//! address when that object moves between threads, and it is only freed after
//! [`Ring::cancel_all_and_drain`] has seen the final completion of every
//! operation. When draining does not finish in time, the owner leaks the memory
//! on purpose ([`Region::leak`], [`HeapArray::leak`]) rather than let the kernel
//! write into freed or reused memory.

use std::io;
use std::mem;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// What an operation is, in the top byte of its `user_data`.
pub(crate) mod kind {
    /// A send (multicast slot, UDP slot, TCP send buffer chunk).
    pub(crate) const SEND: u8 = 1;
    /// A multishot recvmsg on a provided buffer ring.
    pub(crate) const RECV_MULTI: u8 = 2;
    /// A single-shot recvmsg into an owned buffer (index = buffer).
    pub(crate) const RECV_SINGLE: u8 = 3;
    /// A TCP recv into a connection's own buffer (index = slab slot).
    pub(crate) const RECV: u8 = 4;
    /// A multishot accept on the listening socket.
    pub(crate) const ACCEPT: u8 = 5;
    /// A connect (client side).
    pub(crate) const CONNECT: u8 = 6;
    /// A close-flush deadline (index = slab slot).
    pub(crate) const TIMEOUT: u8 = 7;
    /// An async cancel; its completion carries nothing we need.
    pub(crate) const CANCEL: u8 = 8;
    /// A multishot poll on a [`crate::wake::Waker`]'s eventfd.
    pub(crate) const WAKE: u8 = 9;
    /// A file write (index = staging buffer).
    pub(crate) const FILE_WRITE: u8 = 10;
    /// A file `fdatasync`.
    pub(crate) const FILE_SYNC: u8 = 11;
    /// A write of the side file after a sync.
    pub(crate) const FILE_SIDE_WRITE: u8 = 12;
}

/// Bits of the generation kept in `user_data` (the `ConnId` keeps all 32).
pub(crate) const GENERATION_MASK: u32 = (1 << 24) - 1;

/// Packs kind (8 bits), generation (low 24 bits) and index (32 bits).
pub(crate) const fn user_data(kind: u8, generation: u32, index: u32) -> u64 {
    ((kind as u64) << 56) | (((generation & GENERATION_MASK) as u64) << 32) | index as u64
}

/// Runs `cycle` until it reports done, or fails with `TimedOut` (`what`
/// says what was left) once `timeout` has passed. The first call gets `None`;
/// later ones get the time left, for the caller to wait in its ring before it
/// reaps and checks again. The shared deadline loop of the `flush` methods.
pub(crate) fn until_done(
    timeout: Duration,
    what: &'static str,
    mut cycle: impl FnMut(Option<Duration>) -> io::Result<bool>,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut wait = None;
    loop {
        if cycle(wait)? {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, what));
        }
        wait = Some(deadline - now);
    }
}

/// Runs `cycle` until it delivers something (returns more than 0), or
/// returns `Ok(0)` once `timeout` has passed. The first call gets `None`;
/// later ones get the time left, for the caller to wait in its ring before it
/// polls again. The shared deadline loop of the blocking `wait` methods.
pub(crate) fn until_delivered(
    timeout: Duration,
    mut cycle: impl FnMut(Option<Duration>) -> io::Result<usize>,
) -> io::Result<usize> {
    let deadline = Instant::now() + timeout;
    let mut wait = None;
    loop {
        let n = cycle(wait)?;
        if n > 0 {
            return Ok(n);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(0);
        }
        wait = Some(deadline - now);
    }
}

/// A completion, copied out of the completion queue so the queue is released
/// before the owner dispatches it (dispatch needs `&mut` on the ring again).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Cqe {
    pub(crate) user_data: u64,
    pub(crate) result: i32,
    pub(crate) flags: u32,
}

impl Cqe {
    pub(crate) fn kind(&self) -> u8 {
        (self.user_data >> 56) as u8
    }

    pub(crate) fn index(&self) -> u32 {
        self.user_data as u32
    }

    pub(crate) fn generation(&self) -> u32 {
        ((self.user_data >> 32) as u32) & GENERATION_MASK
    }

    /// More completions will follow for this operation (multishot).
    pub(crate) fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer the kernel picked, if any.
    pub(crate) fn buffer_id(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// How many completions the owners copy out per batch.
pub(crate) const CQE_BATCH: usize = 64;

/// One io_uring instance plus the count of operations whose final completion
/// has not been reaped yet.
pub(crate) struct Ring {
    uring: IoUring,
    /// Operations pushed whose final (no `F_MORE`) completion is not reaped.
    in_flight: u32,
}

impl Ring {
    /// Builds a ring with at least `sq_entries` submission and `cq_entries`
    /// completion entries (rounded up to powers of two, clamped by the kernel).
    pub(crate) fn new(sq_entries: u32, cq_entries: u32) -> io::Result<Self> {
        let sq_entries = sq_entries.clamp(8, 4096).next_power_of_two();
        let cq_entries = cq_entries
            .max(sq_entries * 2)
            .clamp(16, 65536)
            .next_power_of_two();
        // Cooperative task work (Linux 5.19): a completion that needs work
        // in this thread's context (a TCP receive a peer's send made ready)
        // no longer interrupts the thread with an inter-processor interrupt
        // while it runs; the work runs at its next system call, and the
        // TASKRUN flag tells `submit` to make one. A parked (sleeping) owner
        // is still woken at once. On a small VM, where each IPI is a VM exit,
        // this is a large share of a request/response round trip. Older
        // kernels refuse the flags: the ring is then built without them.
        let uring = IoUring::builder()
            .setup_cqsize(cq_entries)
            .setup_clamp()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(sq_entries)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(cq_entries)
                    .setup_clamp()
                    .build(sq_entries)
            })?;
        if !uring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_EXT_ARG (needs Linux 5.11 or later)",
            ));
        }
        if !uring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_NODROP (needs Linux 5.5 or later)",
            ));
        }
        Ok(Self {
            uring,
            in_flight: 0,
        })
    }

    /// Operations whose final completion has not been reaped.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Completion queue capacity: the most completions one batch can hold.
    pub(crate) fn cq_capacity(&mut self) -> usize {
        self.uring.completion().capacity()
    }

    pub(crate) fn submitter(&self) -> io_uring::Submitter<'_> {
        self.uring.submitter()
    }

    /// Queues one operation (not yet submitted unless the queue was full).
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` (buffers, `msghdr`, addresses, `timespec`) must
    /// stay valid, and must not be accessed in a way that conflicts with the
    /// kernel's reads or writes, until this ring has reaped the operation's
    /// final completion or the owner ran its drop protocol
    /// ([`Ring::cancel_all_and_drain`], leaking on failure).
    pub(crate) unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        for _ in 0..2 {
            // SAFETY: the caller guarantees the entry's pointers outlive the operation.
            let pushed = unsafe { self.uring.submission().push(entry) };
            if pushed.is_ok() {
                self.in_flight += 1;
                return Ok(());
            }
            // Queue full: hand what is queued to the kernel and try once more.
            self.enter()?;
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "io_uring submission queue stays full",
        ))
    }

    /// Submits queued entries; makes no system call when nothing is queued and
    /// the kernel has no overflowed completions or task work to flush.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        let needed = {
            let sq = self.uring.submission();
            !sq.is_empty() || sq.cq_overflow() || sq.taskrun()
        };
        if needed {
            self.enter()?;
        }
        Ok(())
    }

    fn enter(&mut self) -> io::Result<()> {
        loop {
            match self.uring.submit() {
                Ok(_) => return Ok(()),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // Completion backlog (EBUSY) or transient memory
                    // shortage (EAGAIN): entries stay queued, the caller
                    // reaps and the next submit retries.
                    Some(libc::EBUSY) | Some(libc::EAGAIN) => return Ok(()),
                    _ => return Err(e),
                },
            }
        }
    }

    /// Copies up to `out.len()` completions out of the queue and updates the
    /// in-flight count; returns how many.
    pub(crate) fn reap(&mut self, out: &mut [Cqe]) -> usize {
        let mut cq = self.uring.completion();
        let mut n = 0;
        while n < out.len() {
            let Some(entry) = cq.next() else { break };
            let cqe = Cqe {
                user_data: entry.user_data(),
                result: entry.result(),
                flags: entry.flags(),
            };
            if !cqe.more() {
                assert!(self.in_flight > 0, "completion for no operation in flight");
                self.in_flight -= 1;
            }
            out[n] = cqe;
            n += 1;
        }
        n
    }

    /// True when completions are waiting in the queue.
    pub(crate) fn has_completions(&mut self) -> bool {
        let mut cq = self.uring.completion();
        cq.sync();
        !cq.is_empty()
    }

    /// Submits what is queued and blocks until at least one completion is in
    /// the queue, `timeout` passes, or a signal arrives.
    pub(crate) fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let timespec = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&timespec);
        match self.uring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Drop protocol: cancels every operation in flight and reaps completions
    /// (discarding them) until none is in flight. Returns `false` when that did
    /// not happen within `timeout`; the owner must then leak every buffer the
    /// kernel may still touch.
    pub(crate) fn cancel_all_and_drain(&mut self, timeout: Duration) -> bool {
        if self.in_flight == 0 {
            return true;
        }
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(user_data(kind::CANCEL, 0, 0));
        // SAFETY: an async cancel references no memory of ours.
        if unsafe { self.push(&cancel) }.is_err() {
            return false;
        }
        let deadline = Instant::now() + timeout;
        let mut cqes = [Cqe::default(); CQE_BATCH];
        while self.in_flight > 0 {
            if self.submit().is_err() {
                return false;
            }
            while self.reap(&mut cqes) > 0 {}
            if self.in_flight == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            if self.wait(deadline - now).is_err() {
                return false;
            }
        }
        true
    }
}

/// Owned, page-aligned, pre-faulted memory from an anonymous mapping. Plain
/// bytes the kernel reads (send buffers) or writes (receive buffers,
/// provided-buffer rings). Access goes through raw pointers; slices are
/// handed out only for ranges no operation is using (see the `# Safety`
/// sections).
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
    leaked: bool,
}

// SAFETY: a Region is an exclusively owned allocation like a Box<[u8]>; it has
// no thread affinity and its owner moves it whole.
unsafe impl Send for Region {}

impl Region {
    /// Maps at least `len` bytes (at least one page), zeroed and pre-faulted.
    pub(crate) fn new(len: usize) -> io::Result<Self> {
        let len = len.max(1).next_multiple_of(page_size());
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).expect("mmap returned null");
        Ok(Self {
            ptr,
            len,
            leaked: false,
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Pointer to byte `offset`.
    pub(crate) fn at(&self, offset: usize) -> *mut u8 {
        assert!(offset <= self.len);
        // SAFETY: offset is within (or one past) the mapping.
        unsafe { self.ptr.as_ptr().add(offset) }
    }

    /// # Safety
    ///
    /// No operation in flight may write `[offset, offset + len)` while the
    /// returned slice lives, and no mutable slice of that range may exist.
    pub(crate) unsafe fn slice(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds (checked above); the caller rules out concurrent writes.
        unsafe { std::slice::from_raw_parts(self.at(offset), len) }
    }

    /// # Safety
    ///
    /// No operation in flight may read or write `[offset, offset + len)` while
    /// the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds (checked above); the caller rules out any other
        // access to this range while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.at(offset), len) }
    }

    /// Never unmap: the kernel may still write here (drain timed out).
    pub(crate) fn leak(&mut self) {
        self.leaked = true;
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: we mapped exactly this range and nothing refers to it any
        // more (owners drain their ring first, or call leak()).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

/// A fixed array of plain C structs (`msghdr`, `iovec`, `sockaddr_*`,
/// `timespec`) at a stable heap address, written by us and read or written by
/// the kernel through raw pointers.
pub(crate) struct HeapArray<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
    leaked: bool,
}

// SAFETY: an exclusively owned allocation like Box<[T]> of plain C data; the
// raw pointers inside the T values point at memory owned by the same owner.
unsafe impl<T: Copy> Send for HeapArray<T> {}

impl<T: Copy> HeapArray<T> {
    pub(crate) fn new(len: usize, value: T) -> Self {
        let boxed: Box<[T]> = vec![value; len].into_boxed_slice();
        let ptr = NonNull::new(Box::into_raw(boxed).cast::<T>()).expect("Box is non-null");
        Self {
            ptr,
            len,
            leaked: false,
        }
    }

    pub(crate) fn ptr(&self, index: usize) -> *mut T {
        assert!(index < self.len);
        // SAFETY: index is in bounds.
        unsafe { self.ptr.as_ptr().add(index) }
    }

    /// Copies element `index` out.
    ///
    /// Reading is sound whenever no operation that writes this element is in
    /// flight (the kernel writes only during an operation).
    pub(crate) fn get(&self, index: usize) -> T {
        // SAFETY: in bounds, initialised at construction, T: Copy; owners call
        // this only when no operation writing the element is in flight.
        unsafe { self.ptr(index).read() }
    }

    /// Overwrites element `index`; owners call this only when no operation
    /// using the element is in flight.
    pub(crate) fn set(&mut self, index: usize, value: T) {
        // SAFETY: in bounds; no operation uses the element (owner's contract).
        unsafe { self.ptr(index).write(value) }
    }

    /// Never free: the kernel may still use these (drain timed out).
    pub(crate) fn leak(&mut self) {
        self.leaked = true;
    }
}

impl<T: Copy> Drop for HeapArray<T> {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
        // SAFETY: created by Box::into_raw on a Box<[T]> of this length in new().
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// Plain C structs made only of integers and raw pointers, for which the
/// all-zero bit pattern is a valid value.
///
/// # Safety
///
/// Implement only for types where every field accepts all-zero bytes.
pub(crate) unsafe trait PlainC: Copy {}

// SAFETY: each of these libc structs holds only integers, arrays of integers
// and raw pointers.
unsafe impl PlainC for libc::msghdr {}
// SAFETY: as above.
unsafe impl PlainC for libc::iovec {}
// SAFETY: as above.
unsafe impl PlainC for libc::sockaddr_in {}
// SAFETY: as above.
unsafe impl PlainC for libc::sockaddr_in6 {}
// SAFETY: as above.
unsafe impl PlainC for libc::sockaddr_storage {}

/// A zeroed plain C struct.
pub(crate) fn zeroed<T: PlainC>() -> T {
    // SAFETY: PlainC promises all-zero bytes are a valid T.
    unsafe { mem::zeroed() }
}

/// A waker whose eventfd a ring watches with a multishot poll, so that a
/// [`Waker::wake`](crate::wake::Waker::wake) from another thread ends the
/// owner's wait in that ring; each wake completes with kind
/// [`kind::WAKE`]. The owner (`TcpServer`, `MulticastReceiver`) keeps it,
/// and with it the eventfd, until its ring is drained.
pub(crate) struct WatchedWaker {
    waker: crate::wake::Waker,
    /// The poll is in the ring (a completion without `more` ends it).
    armed: bool,
}

impl WatchedWaker {
    /// Watches `waker`; nothing is queued until [`Self::arm`].
    pub(crate) fn new(waker: crate::wake::Waker) -> WatchedWaker {
        WatchedWaker {
            waker,
            armed: false,
        }
    }

    /// Queues the poll in `ring` unless it is already there.
    pub(crate) fn arm(&mut self, ring: &mut Ring) -> io::Result<()> {
        if self.armed {
            return Ok(());
        }
        let entry = opcode::PollAdd::new(types::Fd(self.waker.fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(kind::WAKE, 0, 0));
        // SAFETY: a poll references no memory of ours.
        unsafe { ring.push(&entry)? };
        self.armed = true;
        Ok(())
    }

    /// The waker whose eventfd is watched.
    pub(crate) fn waker(&self) -> &crate::wake::Waker {
        &self.waker
    }

    /// A [`kind::WAKE`] completion: clears the eventfd; the poll must be
    /// armed again when no more completions follow.
    pub(crate) fn complete(&mut self, cqe: Cqe) {
        self.waker.clear();
        if !cqe.more() {
            self.armed = false;
        }
    }
}
