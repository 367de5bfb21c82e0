//! Buffer pools on this host's pages, with and without reserved huge pages.
//!
//! `TALLY_TEST_HUGEPAGES=1` (as root) also reserves a few huge pages with
//! `sysctl vm.nr_hugepages`, asserts the pool takes them, and puts the old
//! value back afterwards, also when the test fails.

use std::sync::{Mutex, MutexGuard};

use tally_runtime::alloc_count::{counting, CountingAllocator};
use tally_runtime::pool::{BufferId, BufferPool, HugeRegion, PageKind, PoolOptions};

/// Counts allocations made by the current thread while armed.
#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Tests here that depend on the host's huge page reserve run one at a time,
/// so the hugetlb test cannot hand pages to another test mid-way.
static HUGE_PAGE_STATE: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    HUGE_PAGE_STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn meminfo_field(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

fn free_huge_pages() -> u64 {
    meminfo_field("HugePages_Free:").unwrap_or(0)
}

const NO_HUGETLB: PoolOptions = PoolOptions {
    prefer_huge: false,
    lock: false,
};

fn exercise(pool: &mut BufferPool) {
    let capacity = pool.capacity();
    assert_eq!(pool.available(), capacity);
    let mut held = Vec::with_capacity(capacity);
    for i in 0..capacity {
        let id = pool.acquire().expect("a free buffer");
        assert!(
            pool.get(id).iter().all(|&b| b == 0),
            "fresh buffer is zeroed"
        );
        assert_eq!(pool.get(id).len(), pool.buffer_bytes());
        assert_eq!(pool.get(id).as_ptr() as usize % 64, 0, "buffer is aligned");
        pool.get_mut(id).fill(i as u8);
        held.push(id);
    }
    assert_eq!(pool.available(), 0);
    assert_eq!(pool.acquire(), None, "an exhausted pool says so");
    assert_eq!(pool.acquire(), None);
    // Buffers do not overlap: each kept what was written into it.
    for (i, &id) in held.iter().enumerate() {
        assert!(pool.get(id).iter().all(|&b| b == i as u8));
    }
    let returned = held.pop().unwrap();
    pool.release(returned);
    assert_eq!(pool.available(), 1);
    assert_eq!(
        pool.acquire(),
        Some(returned),
        "LIFO: the warm buffer comes back"
    );
    pool.release(returned);
    for id in held {
        pool.release(id);
    }
    assert_eq!(pool.available(), capacity);
}

#[test]
fn pool_without_reserved_huge_pages_uses_thp_or_normal_pages() {
    let _serial = serial();
    // 64 buffers of 64 KiB: 4 MiB, enough for THP to apply.
    let mut pool = BufferPool::with_options(64, 64 * 1024, NO_HUGETLB).unwrap();
    assert_ne!(pool.kind(), PageKind::HugeTlb);
    println!(
        "pool of {} bytes: {} ({} bytes backed by huge pages now)",
        pool.region().mapped_bytes(),
        pool.kind(),
        pool.region().huge_backed_bytes().unwrap()
    );
    exercise(&mut pool);

    // The default options fall back the same way when none are reserved.
    if free_huge_pages() == 0 {
        let mut pool = BufferPool::new(8, 1500).unwrap();
        assert!(matches!(
            pool.kind(),
            PageKind::TransparentHuge | PageKind::Normal
        ));
        assert_eq!(pool.buffer_bytes(), 1500);
        assert_eq!(pool.stride_bytes(), 1536);
        exercise(&mut pool);
    }
}

#[test]
fn thp_region_is_aligned_to_the_huge_page_size() {
    let _serial = serial();
    let region = HugeRegion::with_options(4 << 20, NO_HUGETLB).unwrap();
    assert_eq!(region.len(), 4 << 20);
    if region.kind() == PageKind::TransparentHuge {
        assert_eq!(region.as_ptr() as usize % region.page_bytes(), 0);
        assert_eq!(region.mapped_bytes() % region.page_bytes(), 0);
    }
    assert!(region.as_slice().iter().all(|&b| b == 0));
}

#[test]
fn lock_is_reported_not_fatal() {
    let _serial = serial();
    let options = PoolOptions {
        prefer_huge: false,
        lock: true,
    };
    // Small enough for the usual 8 MiB RLIMIT_MEMLOCK, but whether or not
    // mlock succeeds, the region is usable.
    let mut region = HugeRegion::with_options(64 * 1024, options).unwrap();
    println!("64 KiB region locked: {}", region.locked());
    region.as_mut_slice()[0] = 1;
    assert_eq!(region.as_slice()[0], 1);
    assert!(!HugeRegion::with_options(4096, NO_HUGETLB).unwrap().locked());
}

#[test]
fn acquire_and_release_do_not_allocate() {
    let mut pool = BufferPool::with_options(16, 256, NO_HUGETLB).unwrap();
    let mut held = [BufferId::from_index(0); 16];
    let ((), allocations) = counting(|| {
        for round in 0..1_000 {
            for slot in held.iter_mut() {
                *slot = pool.acquire().unwrap();
                pool.get_mut(*slot)[0] = round as u8;
            }
            assert!(pool.acquire().is_none());
            for &id in held.iter().rev() {
                assert_eq!(pool.get(id)[0], round as u8);
                pool.release(id);
            }
        }
    });
    assert_eq!(allocations, 0, "the pool allocated");
}

#[test]
#[should_panic(expected = "released while not in use")]
fn double_release_is_a_bug() {
    let mut pool = BufferPool::with_options(2, 64, NO_HUGETLB).unwrap();
    let id = pool.acquire().unwrap();
    pool.release(id);
    pool.release(id);
}

#[test]
#[should_panic(expected = "outside pool")]
fn foreign_buffer_id_is_a_bug() {
    let pool = BufferPool::with_options(2, 64, NO_HUGETLB).unwrap();
    pool.get(BufferId::from_index(2));
}

/// Puts `vm.nr_hugepages` back when dropped, also on a failed assertion.
struct RestoreHugePages {
    old: String,
}

impl Drop for RestoreHugePages {
    fn drop(&mut self) {
        if let Err(error) = std::fs::write("/proc/sys/vm/nr_hugepages", &self.old) {
            eprintln!(
                "could not restore vm.nr_hugepages to {}: {error}",
                self.old.trim()
            );
        }
    }
}

#[test]
fn pool_takes_reserved_huge_pages_when_there_are_some() {
    if std::env::var_os("TALLY_TEST_HUGEPAGES").as_deref() != Some("1".as_ref()) {
        println!("skipped: set TALLY_TEST_HUGEPAGES=1 (as root) to reserve huge pages");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: reserving huge pages needs root");
        return;
    }
    let _serial = serial();
    let old = std::fs::read_to_string("/proc/sys/vm/nr_hugepages").unwrap();
    let old_pages: u64 = old.trim().parse().unwrap();
    let _restore = RestoreHugePages { old };
    std::fs::write("/proc/sys/vm/nr_hugepages", (old_pages + 4).to_string())
        .expect("writing vm.nr_hugepages");
    assert!(
        free_huge_pages() >= 2,
        "the kernel reserved too few huge pages (memory fragmented?)"
    );

    // 2 huge pages' worth of buffers.
    let page_bytes = meminfo_field("Hugepagesize:").unwrap() as usize * 1024;
    let buffer_bytes = 2048;
    let count = 2 * page_bytes / buffer_bytes;
    let free_before = free_huge_pages();
    let mut pool = BufferPool::new(count, buffer_bytes).unwrap();
    assert_eq!(pool.kind(), PageKind::HugeTlb);
    assert_eq!(pool.region().page_bytes(), page_bytes);
    assert_eq!(pool.region().as_ptr() as usize % page_bytes, 0);
    assert_eq!(free_huge_pages(), free_before - 2, "two pages in use");
    exercise(&mut pool);
    println!(
        "pool of {} bytes: {} (vm.nr_hugepages {} -> {})",
        pool.region().mapped_bytes(),
        pool.kind(),
        old_pages,
        old_pages + 4
    );

    // Without prefer_huge the reserve is left alone.
    let other = BufferPool::with_options(count, buffer_bytes, NO_HUGETLB).unwrap();
    assert_ne!(other.kind(), PageKind::HugeTlb);
    drop(other);

    drop(pool);
    assert_eq!(free_huge_pages(), free_before, "pages given back on drop");
    // More than are free: falls back instead of failing.
    let big = BufferPool::new(count * 8, buffer_bytes).unwrap();
    assert_ne!(big.kind(), PageKind::HugeTlb);
}
