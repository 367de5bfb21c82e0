//! Test support: a counting global allocator, so a test can prove that a hot
//! path allocates nothing (STYLE.md habit 3).
//!
//! [`CountingAllocator`] forwards every call to [`std::alloc::System`]
//! unchanged. Allocations (`alloc`, `alloc_zeroed` and `realloc`; never
//! `dealloc`) made by a thread that is *armed* are counted twice: in that
//! thread's own count, which [`counting`] reads, and in one process-wide
//! total, which [`armed_allocations`] reads. Unarmed threads are not counted,
//! so the test harness, auth threads and the like do not disturb a test.
//!
//! A test crate installs it with two lines, then counts a closure on its own
//! thread with [`counting`]:
//!
//! ```
//! #[global_allocator]
//! static ALLOCATOR: tally_runtime::alloc_count::CountingAllocator = tally_runtime::alloc_count::CountingAllocator;
//!
//! fn main() {
//!     let mut buffer = Vec::with_capacity(64);
//!     let ((), allocations) = tally_runtime::alloc_count::counting(|| {
//!         for byte in 0..64u8 {
//!             buffer.push(byte); // within capacity: no allocation
//!         }
//!     });
//!     assert_eq!(allocations, 0);
//!     // The counter does count (a test should check that too).
//!     let (_boxed, allocations) = tally_runtime::alloc_count::counting(|| Box::new(7u64));
//!     assert_eq!(allocations, 1);
//! }
//! ```
//!
//! A test whose loop runs on a thread it spawned calls
//! [`arm_current_thread`] and [`disarm_current_thread`] on that thread around
//! the window it checks, and compares [`armed_allocations`] before and after.
//!
//! There is one global allocator per binary: install it once per test crate
//! (or once per unit-test binary, under `#[cfg(test)]`). Without it installed
//! nothing is counted, so a test should also check that the counter sees a
//! deliberate allocation. Counting itself never allocates: it touches only
//! const-initialised thread-locals without destructors and one `AtomicU64`.
//! Nothing here is used by the shipped loops; this module reads no
//! environment and its only global is the counter above.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// A global allocator that behaves exactly like [`System`] and counts the
/// allocations made by armed threads. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

/// Allocations made by all armed threads since the process started.
static ARMED_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Const-initialised and without destructors: using them never allocates
    // and they stay usable while the thread exits.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Counts one allocation if the calling thread is armed.
fn note_allocation() {
    // `try_with`: never panic inside the allocator, whatever the thread's state.
    if ARMED.try_with(Cell::get).unwrap_or(false) {
        let _ = THREAD_ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
        ARMED_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System` upholds the `GlobalAlloc` contract; counting touches
// only const-initialised thread-locals and an atomic, and never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with
        // `layout`; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` with the current thread armed and returns its result with the
/// number of allocations (including reallocations) this thread made in it.
/// Allocations on other threads are not included.
///
/// The thread's armed state is put back as it was afterwards, also when `f`
/// panics, so calls nest and may be made on an already armed thread.
pub fn counting<R>(f: impl FnOnce() -> R) -> (R, u64) {
    /// Restores the armed state on return and on unwind.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ARMED.with(|armed| armed.set(self.0));
        }
    }

    let before = THREAD_ALLOCATIONS.with(Cell::get);
    let _restore = Restore(ARMED.with(|armed| armed.replace(true)));
    let result = f();
    let allocations = THREAD_ALLOCATIONS.with(Cell::get) - before;
    (result, allocations)
}

/// Arms the current thread: from now on its allocations are counted (in
/// [`armed_allocations`]) until [`disarm_current_thread`].
pub fn arm_current_thread() {
    ARMED.with(|armed| armed.set(true));
}

/// Disarms the current thread: its allocations are no longer counted.
pub fn disarm_current_thread() {
    ARMED.with(|armed| armed.set(false));
}

/// Allocations made by all armed threads since the process started. Tests
/// that arm a thread they spawned compare this before and after.
pub fn armed_allocations() -> u64 {
    ARMED_ALLOCATIONS.load(Ordering::Relaxed)
}
