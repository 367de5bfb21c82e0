//! Waking a parked loop from another thread.
//!
//! A loop that found no work parks (the back-off idle strategy's last
//! phase). Work that arrives over an `rtrb` ring would wait for the park to
//! time out; a [`Waker`] lets the producer cut that short. It is an `eventfd`
//! plus a `parked` flag: the producer pays one fence and one load per batch
//! while the consumer is running, and one `write(2)` only when it is parked.
//! The consumer parks either in `poll(2)` on the eventfd
//! ([`Waker::park`]) or, when it also waits for io_uring completions, in its
//! ring with the eventfd watched there (`TcpServer::watch_waker`).
//!
//! The flag protocol is the classic store-fence-load pair on both sides, so
//! a wake-up is never lost: the consumer sets `parked`, fences, then checks
//! its ring; the producer pushes, fences, then checks `parked`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
struct Inner {
    fd: OwnedFd,
    parked: AtomicBool,
    wakes: AtomicU64,
}

/// A handle to wake one loop; cheap to clone, `Send + Sync`. Two handles
/// are equal when they wake the same loop (clones of one waker).
#[derive(Clone, Debug)]
pub struct Waker {
    inner: Arc<Inner>,
}

impl PartialEq for Waker {
    fn eq(&self, other: &Waker) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Waker {
    /// A new waker with its own non-blocking eventfd.
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd(2) with valid flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Waker {
            inner: Arc::new(Inner {
                // SAFETY: fd is a freshly created descriptor we own.
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                parked: AtomicBool::new(false),
                wakes: AtomicU64::new(0),
            }),
        })
    }

    /// Producer side: call after pushing work. Writes to the eventfd only
    /// when the consumer is parked.
    #[inline]
    pub fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.inner.parked.load(Ordering::Relaxed) {
            let one: u64 = 1;
            // SAFETY: an 8-byte write from a valid u64 to our eventfd. A
            // full counter (EAGAIN) already means "wake"; nothing to handle.
            unsafe {
                libc::write(
                    self.inner.fd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
            self.inner.wakes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Consumer side: marks the loop parked, re-checks `has_work` (so a push
    /// that raced the decision to park is not missed), and if there is still
    /// none runs `park` (which blocks until woken or timed out).
    #[inline]
    pub fn park_with(&self, has_work: impl FnOnce() -> bool, park: impl FnOnce()) {
        self.inner.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !has_work() {
            park();
        }
        self.inner.parked.store(false, Ordering::Relaxed);
    }

    /// Blocks in `poll(2)` on the eventfd for at most `timeout`, then clears
    /// it. For loops that have no io_uring to wait in.
    pub fn park(&self, timeout: Duration) {
        let mut pollfd = libc::pollfd {
            fd: self.inner.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout_ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
        self.clear();
    }

    /// Resets the eventfd counter (after it woke a ring or a poll).
    pub fn clear(&self) {
        let mut value: u64 = 0;
        // SAFETY: an 8-byte read into a valid u64 from our non-blocking
        // eventfd; EAGAIN (nothing to read) is fine.
        unsafe {
            libc::read(
                self.inner.fd.as_raw_fd(),
                (&mut value as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// The eventfd, for a ring to watch.
    pub fn fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }

    /// Wake-ups that had to write (the consumer was parked).
    pub fn wakes(&self) -> u64 {
        self.inner.wakes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_parked_loop_is_woken_early() {
        let waker = Waker::new().unwrap();
        let consumer = waker.clone();
        let started = Instant::now();
        let handle = std::thread::spawn(move || {
            consumer.park_with(|| false, || consumer.park(Duration::from_secs(10)));
            started.elapsed()
        });
        // Wake until the consumer has parked and been released.
        while !handle.is_finished() {
            waker.wake();
            std::thread::yield_now();
        }
        assert!(handle.join().unwrap() < Duration::from_secs(5));
    }

    #[test]
    fn wake_without_a_parked_consumer_writes_nothing() {
        let waker = Waker::new().unwrap();
        waker.wake();
        assert_eq!(waker.wakes(), 0);
    }

    #[test]
    fn park_with_work_does_not_block() {
        let waker = Waker::new().unwrap();
        let started = Instant::now();
        waker.park_with(|| true, || waker.park(Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
