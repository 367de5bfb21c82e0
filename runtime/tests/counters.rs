//! Counter file: cross-thread and cross-mapping reads, bad files, and a
//! counting allocator proving the hot path does not allocate.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use tally_runtime::alloc_count::{counting, CountingAllocator};
use tally_runtime::counters::{self, CounterFile, CounterReader};

/// Counts allocations made by the current thread while armed (tests run on
/// several threads; a thread's own count is not disturbed by the others).
#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const NAMES: [&str; 3] = ["packets_sent", "gaps_detected", "max_cycle_ns"];

/// Polls `condition` until it holds, failing after `deadline`.
fn wait_for(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn counter_hot_path_does_not_allocate() {
    let file = CounterFile::in_memory(&NAMES);
    let sent = file.counter(0);
    let gaps = file.counter(1);
    let max_cycle = file.counter(2);
    let ((), allocations) = counting(|| {
        for i in 0..10_000u64 {
            sent.increment();
            sent.add(2);
            gaps.add_shared(1);
            max_cycle.set_max(i % 977);
            max_cycle.set_max_shared(i % 977);
            gaps.set(gaps.get());
        }
        file.set_heartbeat(1);
    });
    assert_eq!(allocations, 0, "counter operations allocated");
    assert_eq!(sent.get(), 30_000);
    assert_eq!(gaps.get(), 10_000);
    assert_eq!(max_cycle.get(), 976);
}

#[test]
fn allocation_counter_sees_allocations() {
    let (boxed, allocations) = counting(|| std::hint::black_box(Box::new(5u64)));
    assert!(allocations > 0);
    drop(boxed);
}

#[test]
fn writes_from_one_thread_are_seen_by_another_thread_and_another_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.counters");
    let file = CounterFile::create(&path, "tally-test", &NAMES).unwrap();
    assert_eq!(file.len(), 3);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        counters::file_bytes(3) as u64
    );
    let reader = CounterReader::open(&path).unwrap();
    assert_eq!(reader.pid(), std::process::id());
    assert_eq!(reader.process_name(), "tally-test");
    assert_eq!(reader.len(), 3);
    assert_eq!(reader.heartbeat_ns(), reader.start_time_ns());
    assert!(reader.read().all(|(_, value)| value == 0));

    const ADDS: u64 = 100_000;
    let sent = file.counter_by_name("packets_sent").unwrap();
    let max_cycle = file.counter(2);
    let writer = std::thread::spawn(move || {
        for i in 1..=ADDS {
            sent.increment();
            max_cycle.set_max(i);
        }
    });
    // Another thread, through the owner's mapping.
    let same_mapping = file.counter(0);
    let mut last = 0;
    wait_for("the in-process reader", Duration::from_secs(20), || {
        let now = same_mapping.get();
        assert!(now >= last, "counter went backwards: {last} -> {now}");
        last = now;
        now == ADDS
    });
    writer.join().unwrap();
    // The same file through a second, read-only mapping.
    wait_for("the file reader", Duration::from_secs(20), || {
        reader.value(0) == ADDS
    });
    let mut snapshot = Vec::new();
    reader.snapshot(&mut snapshot);
    assert_eq!(
        snapshot,
        vec![
            ("packets_sent".to_owned(), ADDS),
            ("gaps_detected".to_owned(), 0),
            ("max_cycle_ns".to_owned(), ADDS),
        ]
    );

    file.set_heartbeat(123_456_789);
    assert_eq!(reader.heartbeat_ns(), 123_456_789);

    // The owner goes away; its file stays readable (a stopped process).
    drop(file);
    let after_exit = CounterReader::open(&path).unwrap();
    assert_eq!(after_exit.value(0), ADDS);
    assert_eq!(after_exit.heartbeat_ns(), 123_456_789);
    let names: Vec<&str> = after_exit.read().map(|(name, _)| name).collect();
    assert_eq!(names, NAMES);
}

#[test]
fn create_replaces_an_old_file_without_disturbing_its_readers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let old = CounterFile::create(&path, "old", &["a", "b"]).unwrap();
    old.counter(1).set(5);
    let old_reader = CounterReader::open(&path).unwrap();

    let new = CounterFile::create(&path, "new", &["z"]).unwrap();
    new.counter(0).set(9);
    // The old reader still reads the old file (its inode), not a truncation.
    assert_eq!(old_reader.process_name(), "old");
    assert_eq!(old_reader.value(1), 5);
    let new_reader = CounterReader::open(&path).unwrap();
    assert_eq!(new_reader.process_name(), "new");
    assert_eq!(new_reader.read().collect::<Vec<_>>(), vec![("z", 9)]);
    // No temporary file is left behind.
    let entries = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(entries, 1);
}

#[test]
fn create_rejects_bad_names_and_bad_paths_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let long = "x".repeat(counters::NAME_BYTES_MAX + 1);
    let error = CounterFile::create(&path, "p", &[long.as_str()]).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert!(
        error.to_string().contains("at most 63 bytes fit"),
        "{error}"
    );
    assert!(!path.exists());

    let too_many: Vec<String> = (0..=counters::COUNTERS_MAX)
        .map(|i| format!("c{i}"))
        .collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let error = CounterFile::create(&path, "p", &too_many).unwrap_err();
    assert!(error.to_string().contains("at most 256"), "{error}");

    let missing_dir = dir.path().join("no/such/dir/c");
    let error = CounterFile::create(&missing_dir, "p", &["a"]).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::NotFound);
    assert!(error.to_string().contains("no/such/dir"), "{error}");
}

fn open_error(path: &Path) -> String {
    let error = CounterReader::open(path).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "error names the file: {message}"
    );
    message
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good_path = dir.path().join("good");
    drop(CounterFile::create(&good_path, "p", &NAMES).unwrap());
    let good = std::fs::read(&good_path).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };

    let mut wrong_magic = good.clone();
    wrong_magic[..8].copy_from_slice(b"NOTTALLY");
    let message = open_error(&write("magic", &wrong_magic));
    assert!(message.contains("bad magic"), "{message}");
    assert!(message.contains("not a tally counter file"), "{message}");

    let message = open_error(&write("short-header", &good[..100]));
    assert!(message.contains("truncated"), "{message}");
    let message = open_error(&write("empty", &[]));
    assert!(message.contains("truncated"), "{message}");

    let message = open_error(&write("short-values", &good[..good.len() - 64]));
    assert!(message.contains("truncated"), "{message}");
    assert!(message.contains("3 counters need"), "{message}");

    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 64]);
    let message = open_error(&write("longer", &longer));
    assert!(message.contains("wrong size"), "{message}");

    let mut future = good.clone();
    future[8..12].copy_from_slice(&2u32.to_le_bytes());
    let message = open_error(&write("version", &future));
    assert!(message.contains("version 2"), "{message}");

    let mut huge_count = good.clone();
    huge_count[12..16].copy_from_slice(&1_000_000u32.to_le_bytes());
    let message = open_error(&write("count", &huge_count));
    assert!(message.contains("exceeds the maximum"), "{message}");

    let mut bad_label = good.clone();
    bad_label[counters::HEADER_BYTES + 5] = 0xff;
    let message = open_error(&write("label", &bad_label));
    assert!(message.contains("label of counter 0"), "{message}");

    let error = CounterReader::open(&dir.path().join("missing")).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::NotFound);
    assert!(error.to_string().contains("missing"), "{error}");
}
