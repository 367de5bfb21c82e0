//! A SKU and a location added mid-session with `tally-ctl sku add` /
//! `location add` (the `N` command, decided by the real warehouse and
//! answered with the `R` / `L` every replica applies) can be stocked and
//! ordered at once through tally-ctl, and the HTTP service (the real
//! tally-monitor, a replica of its own) shows them; a duplicate name, a role
//! that may not add and a name that does not fit are refused with their
//! statuses, nothing sent for the last two.
//!
//! Test block 100, id 224 (the day2 range); HTTP port 30000 + 4·24. Every
//! wait has a deadline; child processes are killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_demo::http::{basic, request};
use tally_demo::{bin, demo_client, wait_for_200, ApplianceSpec, ChildGuard, TestStack};

const BLOCK: u8 = 100;
const ID: u8 = 224;
const TIMEOUT: Duration = Duration::from_secs(10);

/// `tally-ctl ARGS` as `user`; status, stdout, stderr.
fn ctl(config: &PathBuf, user: &str, args: &[&str]) -> (i32, String, String) {
    let client = demo_client(user);
    let output: Output = Command::new(bin("tally-ctl"))
        .arg("--config")
        .arg(config)
        .args(["--timeout-ms", "20000"])
        .args(args)
        .env("TALLY_USER", client.username)
        .env("TALLY_PASSWORD", client.password)
        .env_remove("TALLY_PASSWORD_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run tally-ctl");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every `available` number anywhere in `value` at the location `location`.
fn available_at(value: &Value, location: u64) -> Option<u64> {
    match value {
        Value::Object(map) => {
            if map.get("location").and_then(Value::as_u64) == Some(location) {
                if let Some(available) = map.get("available").and_then(Value::as_u64) {
                    return Some(available);
                }
            }
            map.values().find_map(|v| available_at(v, location))
        }
        Value::Array(items) => items.iter().find_map(|v| available_at(v, location)),
        _ => None,
    }
}

#[test]
fn a_sku_added_mid_session_is_ordered_at_once_and_shown_by_the_http_service() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, ID, dir.path().join("journal"));
    let stack = TestStack::start(
        &spec,
        dir.path(),
        "location,sku_symbol,quantity\nSTORE-A,MUG,10\nSTORE-B,MUG,5\n",
    );
    let config = stack.config.clone();

    // The HTTP service, following the session from its start.
    let http = SocketAddr::from(([127, 0, 0, 1], 30_000 + 4 * u16::from(ID - 200)));
    let reader = demo_client("read1");
    let monitor = Command::new(bin("tally-monitor"))
        .arg("--config")
        .arg(&config)
        .args(["--listen", &http.to_string(), "--user", reader.username])
        .arg("--counters")
        .arg(dir.path().join("tally-monitor.counters"))
        .env("TALLY_PASSWORD", reader.password)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _monitor = ChildGuard(monitor);
    wait_for_200(http, "/ready", Duration::from_secs(30));

    // A new SKU: the warehouse picks the lowest free id (MUG is 1).
    let (status, stdout, stderr) = ctl(&config, "ops1", &["sku", "add", "SCARF"]);
    assert_eq!(status, 0, "{stdout} {stderr}");
    assert!(
        stdout.starts_with("added seq=")
            && stdout.contains(" id=2 ")
            && stdout.contains("name=SCARF"),
        "{stdout}"
    );
    // A new location, with the id asked for.
    let (status, stdout, stderr) = ctl(
        &config,
        "ops1",
        &["location", "add", "KIOSK-1", "--id", "40"],
    );
    assert_eq!(status, 0, "{stdout} {stderr}");
    assert!(
        stdout.contains(" id=40 ") && stdout.contains("name=KIOSK-1"),
        "{stdout}"
    );

    // At once: stocked, moved to the new location, and sold there.
    let (status, stdout, stderr) = ctl(
        &config,
        "ops1",
        &["adjust", "restock", "SCARF", "6", "--at", "STORE-A"],
    );
    assert_eq!(status, 0, "{stdout} {stderr}");
    let (status, stdout, stderr) = ctl(
        &config,
        "ops1",
        &[
            "transfer", "SCARF", "4", "--from", "STORE-A", "--to", "KIOSK-1",
        ],
    );
    assert_eq!(status, 0, "{stdout} {stderr}");
    let (status, stdout, stderr) =
        ctl(&config, "pos1", &["order", "SCARF", "3", "--at", "KIOSK-1"]);
    assert_eq!(status, 0, "{stdout} {stderr}");
    assert!(stdout.starts_with("filled "), "{stdout}");
    let (status, stdout, _) = ctl(&config, "pos1", &["order", "SCARF", "5", "--at", "KIOSK-1"]);
    assert_eq!(status, 10, "only 1 left at KIOSK-1: {stdout}");

    // The HTTP service shows the new SKU at the new location: 4 − 3 = 1.
    let authorization = basic(reader.username, reader.password);
    let headers = [("Authorization", authorization.as_str())];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = request(http, "GET", "/v1/skus/SCARF", &headers, None, TIMEOUT).unwrap();
        if reply.status == 200 {
            let body = reply.json();
            if available_at(&body, 40) == Some(1) && available_at(&body, 1) == Some(2) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the HTTP service never showed SCARF at KIOSK-1: {} {}",
            reply.status,
            reply.body
        );
        std::thread::sleep(Duration::from_millis(50)); // re-ask, with a deadline
    }

    // Refusals: a name already there (the warehouse's J(D): 14), a role
    // that may not add (20, nothing sent), a name that does not fit (2).
    let (status, stdout, _) = ctl(&config, "ops1", &["sku", "add", "SCARF"]);
    assert_eq!(status, 14, "{stdout}");
    assert!(stdout.starts_with("rejected: duplicate"), "{stdout}");
    let (status, _, stderr) = ctl(&config, "pos1", &["sku", "add", "HAT"]);
    assert_eq!(status, 20, "{stderr}");
    assert!(stderr.contains("role pos may not send"), "{stderr}");
    for bad in ["TWO WORDS", "SEVENTEEN-LETTERS", ""] {
        let (status, _, stderr) = ctl(&config, "ops1", &["location", "add", bad]);
        assert_eq!(status, 2, "{bad:?}: {stderr}");
        assert!(stderr.contains("1 to 16 printable ASCII"), "{stderr}");
    }
    let (status, _, stderr) = ctl(&config, "ops1", &["--json", "stock", "HAT"]);
    assert_eq!(status, 11, "HAT was never added: {stderr}");

    // tally-stat shows the HTTP service, with the messages it applied and
    // the answers it gave (its counter file is published every second).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = tally_demo::tally_stat_row(dir.path(), "tally-monitor");
        let value = |name: &str| {
            row.as_ref()
                .and_then(|row| row["counters"][name]["value"].as_u64())
                .unwrap_or(0)
        };
        let running = row.as_ref().is_some_and(|row| row["state"] == "running");
        if running && value("monitor.messages_applied") > 10 && value("monitor.http_answers") > 0 {
            assert_eq!(value("monitor.ready_active"), 1, "{row:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tally-stat's tally-monitor: {row:?}"
        );
        std::thread::sleep(Duration::from_millis(100)); // re-read, with a deadline
    }
}
