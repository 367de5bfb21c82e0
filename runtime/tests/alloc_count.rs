//! The shared counting allocator (`tally_runtime::alloc_count`), installed
//! here as this test binary's global allocator: it counts what an armed
//! thread allocates and nothing an unarmed thread does.
//!
//! The tests that read the process-wide total ([`armed_allocations`]) hold
//! one lock, so no other test of this binary is armed while they look.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use tally_runtime::alloc_count::{
    arm_current_thread, armed_allocations, counting, disarm_current_thread, CountingAllocator,
};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

static ARMED_TOTAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ARMED_TOTAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn counting_sees_alloc_alloc_zeroed_and_realloc_but_not_dealloc() {
    let _serial = serial();
    let (boxed, allocations) = counting(|| black_box(Box::new(7u64)));
    assert_eq!((*boxed, allocations), (7, 1), "alloc");
    let (zeroed, allocations) = counting(|| black_box(vec![0u8; 100]));
    assert_eq!((zeroed.len(), allocations), (100, 1), "alloc_zeroed");
    let mut grown = Vec::<u8>::with_capacity(1);
    let ((), allocations) = counting(|| grown.reserve_exact(4096));
    assert!(grown.capacity() >= 4096);
    assert_eq!(allocations, 1, "realloc");
    let ((), allocations) = counting(|| drop((boxed, zeroed, grown)));
    assert_eq!(allocations, 0, "dealloc is not counted");
    let ((), allocations) = counting(|| {});
    assert_eq!(allocations, 0);
}

#[test]
fn counting_adds_to_the_armed_total() {
    let _serial = serial();
    let before = armed_allocations();
    let ((), allocations) = counting(|| {
        for i in 0..10u64 {
            drop(black_box(Box::new(i)));
        }
    });
    assert_eq!(allocations, 10);
    assert_eq!(armed_allocations() - before, 10);
}

#[test]
fn an_unarmed_thread_is_not_counted() {
    let _serial = serial();
    let go = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let other = {
        let (go, done) = (go.clone(), done.clone());
        thread::spawn(move || {
            while !go.load(Ordering::Acquire) {
                thread::yield_now();
            }
            for i in 0..1000u64 {
                drop(black_box(Box::new(i)));
            }
            done.store(true, Ordering::Release);
        })
    };
    let before = armed_allocations();
    // This thread is armed while the other one allocates a thousand times.
    let ((), allocations) = counting(|| {
        go.store(true, Ordering::Release);
        while !done.load(Ordering::Acquire) {
            thread::yield_now();
        }
    });
    assert_eq!(
        allocations, 0,
        "the other thread's allocations were counted"
    );
    assert_eq!(armed_allocations() - before, 0);
    other.join().unwrap();
}

#[test]
fn armed_allocations_counts_an_armed_thread_the_test_spawned() {
    let _serial = serial();
    let before = armed_allocations();
    thread::spawn(|| {
        arm_current_thread();
        for i in 0..25u64 {
            drop(black_box(Box::new(i)));
        }
        disarm_current_thread();
        // Disarmed again: not counted.
        drop(black_box(Box::new(0u64)));
    })
    .join()
    .unwrap();
    assert_eq!(armed_allocations() - before, 25);
}

#[test]
fn counting_puts_the_armed_state_back_also_after_a_panic() {
    let _serial = serial();
    // Unarmed before: unarmed after, also when the closure panics.
    let panicked = std::panic::catch_unwind(|| counting(|| panic!("in the counted closure")));
    assert!(panicked.is_err());
    let before = armed_allocations();
    drop(black_box(Box::new(1u64)));
    assert_eq!(armed_allocations() - before, 0, "left armed after a panic");

    // Armed before: still armed after, and a nested count is its own.
    arm_current_thread();
    let ((), inner) = counting(|| drop(black_box(Box::new(2u64))));
    let before = armed_allocations();
    drop(black_box(Box::new(3u64)));
    let after = armed_allocations();
    disarm_current_thread();
    assert_eq!(inner, 1);
    assert_eq!(after - before, 1, "disarmed by a nested count");
}
