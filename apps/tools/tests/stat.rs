//! `tally-stat --once --json` against counter files made here with
//! `CounterFile::create`: a live one whose counters move while it samples,
//! a stopped process's last file, and a directory search that reports a
//! file that is not a counter file without giving up on the others.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tally_runtime::counters::{offset, CounterFile};

const NAMES: &[&str] = &[
    "sequencer.messages_sequenced",
    "sequencer.packets_sent",
    "sequencer.ack_ring_full",
    "sequencer.next_seq",
    "sessions_active",
    "gateway_rejects",
    "ring_full",
    "retransmit.requests_served",
];

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn tally_stat(args: &[&str], paths: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-stat"))
        .args(args)
        .args(paths)
        .output()
        .expect("run tally-stat")
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "tally-stat failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("tally-stat prints JSON")
}

fn process<'a>(report: &'a Value, file: &Path) -> &'a Value {
    report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|process| process["file"] == file.display().to_string())
        .unwrap_or_else(|| panic!("{} not in the report: {report:#}", file.display()))
}

#[test]
fn once_json_shows_values_rates_and_summary_of_a_live_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally-sequencer.counters");
    let file = CounterFile::create(&path, "tally-sequencer", NAMES).unwrap();
    let counter = |name: &str| file.counter_by_name(name).unwrap();
    counter("sequencer.messages_sequenced").set(1000);
    counter("sequencer.packets_sent").set(100);
    counter("sequencer.next_seq").set(1001);
    counter("sessions_active").set(3);
    counter("gateway_rejects").set(7);
    counter("ring_full").set(2);
    counter("sequencer.ack_ring_full").set(1);
    counter("retransmit.requests_served").set(5);
    file.set_heartbeat(now_ns());

    // A writer that keeps going while tally-stat takes its two samples.
    let running = Arc::new(AtomicBool::new(true));
    let writer = {
        let running = Arc::clone(&running);
        let messages = counter("sequencer.messages_sequenced");
        let next_seq = counter("sequencer.next_seq");
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                messages.add(10);
                next_seq.add(10);
                file.set_heartbeat(now_ns());
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let output = tally_stat(&["--once", "--json", "--interval", "0.3"], &[&path]);
    running.store(false, Ordering::Relaxed);
    writer.join().unwrap();

    let report = json_of(&output);
    assert!(report["interval_s"].as_f64().unwrap() >= 0.29, "{report:#}");
    let row = process(&report, &path);
    assert_eq!(row["process"], "tally-sequencer");
    assert_eq!(row["pid"], u64::from(std::process::id()));
    assert_eq!(row["state"], "running");
    assert!(row["seq"].as_u64().unwrap() >= 1000);
    let summary = &row["summary"];
    assert!(summary["messages"]["total"].as_u64().unwrap() > 1000);
    assert!(summary["messages"]["per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["packets"]["total"], 100);
    assert_eq!(summary["packets"]["per_sec"], 0.0);
    assert_eq!(summary["retransmits"]["total"], 5);
    assert_eq!(summary["rejects"]["total"], 7);
    assert_eq!(summary["ring_full"]["total"], 3, "both rings summed");
    assert_eq!(summary["sessions"], 3);
    assert!(summary["gaps"].is_null(), "a sequencer has no gap counter");
    let counters = &row["counters"];
    assert_eq!(counters["sequencer.packets_sent"]["value"], 100);
    assert_eq!(counters["gateway_rejects"]["value"], 7);
    assert!(
        counters["sessions_active"]["per_sec"].is_null(),
        "gauges have no rate"
    );
    assert_eq!(counters.as_object().unwrap().len(), NAMES.len());
}

#[test]
fn a_stopped_process_shows_its_last_values() {
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("made.counters.src");
    let file = CounterFile::create(&made, "tally-sequencer", NAMES).unwrap();
    file.counter_by_name("sequencer.messages_sequenced")
        .unwrap()
        .set(42);
    file.set_heartbeat(now_ns() - 60_000_000_000);
    // The same bytes, as left by a process that has exited: its pid (a
    // child we started and reaped) no longer exists.
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let mut bytes = std::fs::read(&made).unwrap();
    bytes[offset::PID..offset::PID + 4].copy_from_slice(&dead_pid.to_le_bytes());
    let stopped = dir.path().join("stopped.counters");
    std::fs::write(&stopped, bytes).unwrap();

    let report = json_of(&tally_stat(
        &["--once", "--json", "--interval", "0"],
        &[&stopped],
    ));
    assert!(report["interval_s"].is_null());
    let row = process(&report, &stopped);
    assert_eq!(row["state"], "stopped");
    assert_eq!(row["pid"], u64::from(dead_pid));
    assert!(row["heartbeat_age_ms"].as_u64().unwrap() >= 59_000);
    assert_eq!(row["summary"]["messages"]["total"], 42);
    assert!(row["summary"]["messages"]["per_sec"].is_null());

    // Alive pid (ours), heartbeat a minute old, nothing moving: stale.
    let report = json_of(&tally_stat(
        &["--once", "--json", "--interval", "0.1"],
        &[&made],
    ));
    assert_eq!(process(&report, &made)["state"], "stale");
}

#[test]
fn directories_are_searched_and_bad_files_reported() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    std::fs::create_dir_all(&nested).unwrap();
    let good = nested.join("tally-warehouse.counters");
    let file = CounterFile::create(&good, "tally-warehouse", &["consumer.gaps_detected"]).unwrap();
    file.counter(0).set(9);
    let bad = dir.path().join("junk.counters");
    std::fs::write(&bad, b"not a counter file at all").unwrap();
    std::fs::write(dir.path().join("ignored.txt"), b"x").unwrap();

    let report = json_of(&tally_stat(
        &["--once", "--json", "--interval", "0"],
        &[dir.path()],
    ));
    assert_eq!(report["processes"].as_array().unwrap().len(), 1);
    let row = process(&report, &good);
    assert_eq!(row["process"], "tally-warehouse");
    assert_eq!(row["summary"]["gaps"]["total"], 9);
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["file"], bad.display().to_string());

    // The table form prints a header and the row.
    let output = tally_stat(&["--once", "--interval", "0"], &[dir.path()]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("PROCESS"), "{text}");
    assert!(text.contains("tally-warehouse"), "{text}");

    // Nothing to show: exit 1 with a message naming where it looked.
    let empty = tempfile::tempdir().unwrap();
    let output = tally_stat(&["--once", "--interval", "0"], &[empty.path()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no tally counter file"));
}
