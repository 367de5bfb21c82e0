//! `tally-tap --counters FILE` keeps a counter file that `tally-stat`
//! shows: a running `tally-tap` row with `tap.printed` equal to the lines it
//! printed and its consumer's `consumer.*`.
//!
//! Test block 100, id 227 (the day2 range). Every wait has a deadline; the
//! child is killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tally_demo::{bin, demo_client, tally_stat_row, ApplianceSpec, ChildGuard, TestStack};

#[test]
fn tally_stat_shows_the_tap_and_what_it_printed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(100, 227, dir.path().join("journal"));
    // The warehouse's session-start broadcast is on the stream to print.
    let stack = TestStack::start(
        &spec,
        dir.path(),
        "location,sku_symbol,quantity\nSTORE-A,MUG,3\n",
    );
    let counters_dir = dir.path().join("run");
    std::fs::create_dir_all(&counters_dir).unwrap();
    let reader = demo_client("read1");
    let mut tap = Command::new(bin("tally-tap"))
        .arg("--config")
        .arg(&stack.config)
        .args(["--from", "1", "--user", reader.username])
        .arg("--counters")
        .arg(counters_dir.join("tally-tap.counters"))
        .env("TALLY_PASSWORD", reader.password)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tap.stdout.take().expect("piped stdout");
    let _tap = ChildGuard(tap);

    // The session's first messages: S(O), then the broadcast (L, R, I,
    // S(W)).
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut printed = 0u64;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines_rx
            .recv_timeout(left)
            .expect("the tap prints the broadcast");
        assert!(!line.is_empty());
        printed += 1;
        if printed == 5 {
            break;
        }
    }

    // tally-stat shows it running, with what it printed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(row) = tally_stat_row(&counters_dir, "tally-tap") {
            let value = |name: &str| row["counters"][name]["value"].as_u64().unwrap_or(0);
            if row["state"] == "running"
                && value("tap.printed") >= printed
                && value("consumer.messages_delivered") >= printed
            {
                assert_eq!(value("tap.sessions_followed"), 0, "{row}");
                break;
            }
            assert!(Instant::now() < deadline, "tally-stat row: {row}");
        } else {
            assert!(Instant::now() < deadline, "tally-stat shows no tally-tap");
        }
        std::thread::sleep(Duration::from_millis(100)); // re-read, with a deadline
    }
}
