//! A session rollover (`tally-ctl session end`) while a store node
//! (`tally-pos --location`) and the HTTP service (`tally-monitor` with
//! writes) run: neither is restarted, and after the rollover a sale through
//! each succeeds (each logged in to the next session by itself); the HTTP
//! service's `/v1/events` ids keep growing across the two sessions (its
//! stream seqs start again at 1), so a client that resumes with the
//! `Last-Event-ID` it had before the rollover gets the new session's
//! events. Every part is the real binary: tally-sequencer, tally-warehouse,
//! tally-pos, tally-monitor, tally-ctl.
//!
//! Test block 100, id 225 (the day2 range); HTTP ports 30000 + 4·25 ….
//! Every wait has a deadline; every child is killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_demo::http::{basic, request, EventStream};
use tally_demo::{bin, demo_client, ApplianceSpec};

const BLOCK: u8 = 100;
const ID: u8 = 225;
const TIMEOUT: Duration = Duration::from_secs(10);
const LONG: Duration = Duration::from_secs(60);

const INVENTORY: &str = "location,sku_symbol,quantity\nSTORE-A,MUG,50\nSTORE-B,MUG,50\n";

struct ChildGuard(Child, &'static str);

impl ChildGuard {
    fn assert_running(&mut self) {
        if let Some(status) = self.0.try_wait().unwrap() {
            panic!(
                "{} exited ({status}): it was to follow the rollover",
                self.1
            );
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn port(offset: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 30_000 + 4 * u16::from(ID - 200) + offset))
}

/// A tally binary as `user` (password from the environment), its stderr
/// in `dir/NAME.log`.
fn spawn(dir: &Path, name: &'static str, user: &str, args: &[&str]) -> ChildGuard {
    let client = demo_client(user);
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(bin(name))
        .args(args)
        .env("TALLY_USER", client.username)
        .env("TALLY_PASSWORD", client.password)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    ChildGuard(child, name)
}

/// Asks until `done(reply)` or the deadline (the parts need a moment to
/// start or to follow the next session).
fn until(
    what: &str,
    children: &mut [&mut ChildGuard],
    mut ask: impl FnMut() -> Option<tally_demo::http::Reply>,
    mut done: impl FnMut(&tally_demo::http::Reply) -> bool,
) -> tally_demo::http::Reply {
    let deadline = Instant::now() + LONG;
    loop {
        for child in children.iter_mut() {
            child.assert_running();
        }
        let reply = ask();
        if let Some(reply) = reply {
            if done(&reply) {
                return reply;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} {}",
                reply.status,
                reply.body
            );
        } else {
            assert!(Instant::now() < deadline, "{what}: no answer");
        }
        std::thread::sleep(Duration::from_millis(100)); // re-ask, with a deadline
    }
}

fn store_sale(store: SocketAddr) -> Option<tally_demo::http::Reply> {
    let body = br#"{"sku":"MUG","qty":1}"#;
    let headers = [("Content-Type", "application/json")];
    request(store, "POST", "/v1/orders", &headers, Some(body), TIMEOUT).ok()
}

fn http_sale(http: SocketAddr, key: &str) -> Option<tally_demo::http::Reply> {
    let pos = demo_client("pos1");
    let authorization = basic(pos.username, pos.password);
    let headers = [
        ("Authorization", authorization.as_str()),
        ("Idempotency-Key", key),
        ("Content-Type", "application/json"),
    ];
    let body = br#"{"sku":"MUG","qty":2,"location":"STORE-B"}"#;
    request(http, "POST", "/v1/orders", &headers, Some(body), TIMEOUT).ok()
}

/// Every event id of `events` until `deadline` or until one's data
/// mentions `order_id`; the ids and whether it was seen.
fn ids_until(events: &mut EventStream, order_id: &str, deadline: Instant) -> (Vec<u64>, bool) {
    let mut ids = Vec::new();
    while let Some(event) = events.next(deadline) {
        if let Some(id) = &event.id {
            ids.push(id.parse::<u64>().expect("numeric event ids"));
        }
        if event.event == "decision" && event.data.contains(order_id) {
            return (ids, true);
        }
    }
    (ids, false)
}

#[test]
fn the_store_node_and_the_http_service_follow_a_rollover_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let dir_path: PathBuf = dir.path().to_path_buf();
    let spec = ApplianceSpec::for_test(BLOCK, ID, dir.path().join("journal"));
    let config = dir.path().join("tally.toml");
    std::fs::write(&config, spec.toml()).unwrap();
    std::fs::write(dir.path().join("inventory.csv"), INVENTORY).unwrap();
    let config_arg = config.to_str().unwrap();

    let mut sequencer = ChildGuard(
        Command::new(bin("tally-sequencer"))
            .args(["--config", config_arg])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("sequencer.log")).unwrap())
            .spawn()
            .unwrap(),
        "tally-sequencer",
    );
    let inventory = dir.path().join("inventory.csv");
    let snapshot = dir.path().join("warehouse.snapshot");
    let mut warehouse = spawn(
        &dir_path,
        "tally-warehouse",
        "wh",
        &[
            "--config",
            config_arg,
            "--inventory",
            inventory.to_str().unwrap(),
            "--snapshot",
            snapshot.to_str().unwrap(),
        ],
    );
    let (store, http) = (port(0), port(1));
    let mut node = spawn(
        &dir_path,
        "tally-pos",
        "pos2",
        &[
            "--config",
            config_arg,
            "--location",
            "STORE-A",
            "--listen",
            &store.to_string(),
        ],
    );
    let state = dir.path().join("http-state");
    let mut monitor = spawn(
        &dir_path,
        "tally-monitor",
        "read1",
        &[
            "--config",
            config_arg,
            "--listen",
            &http.to_string(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );

    // Both sell in the first session.
    let first = until(
        "a sale at the store node before the rollover",
        &mut [&mut sequencer, &mut warehouse, &mut node],
        || store_sale(store),
        |reply| reply.status != 503,
    );
    assert_eq!(first.status, 201, "{}", first.body);
    let first = until(
        "a sale through the HTTP service before the rollover",
        &mut [&mut sequencer, &mut warehouse, &mut monitor],
        || http_sale(http, "before-rollover"),
        |reply| reply.status != 503,
    );
    assert_eq!(first.status, 201, "{}", first.body);
    let first_id = first.json()["id"].as_str().unwrap().to_string();

    // Follow /v1/events from before the first sale.
    let reader = demo_client("read1");
    let authorization = basic(reader.username, reader.password);
    let mut events = EventStream::open(
        http,
        "/v1/events?after=0",
        &[("Authorization", authorization.as_str())],
    )
    .unwrap()
    .expect("the event stream opens");
    let (before_ids, seen) = ids_until(
        &mut events,
        first_id.rsplit('-').next().unwrap(),
        Instant::now() + LONG,
    );
    assert!(seen, "the first session's sale on /v1/events");
    let last_before = *before_ids.last().expect("ids before the rollover");

    // The rollover, as the runbook does it.
    let output = Command::new(bin("tally-ctl"))
        .args(["--config", config_arg, "session", "end"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tally-ctl session end: {} {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let rolled = String::from_utf8_lossy(&output.stdout);
    assert!(rolled.starts_with("rolled over: session"), "{rolled}");

    // No restart: each sells again once it has followed the next session.
    let after = until(
        "a sale at the store node after the rollover",
        &mut [&mut sequencer, &mut warehouse, &mut node, &mut monitor],
        || store_sale(store),
        |reply| reply.status == 201,
    );
    let stock: Value = after.json();
    assert!(
        stock["message"]
            .as_str()
            .unwrap_or("")
            .contains("sold 1 MUG"),
        "{stock}"
    );
    // 50 − 1 before − 1 now: the stock was carried over the rollover.
    assert_eq!(stock["stock"]["available"], 48, "{stock}");
    let after = until(
        "a sale through the HTTP service after the rollover",
        &mut [&mut sequencer, &mut warehouse, &mut node, &mut monitor],
        || http_sale(http, "after-rollover"),
        |reply| reply.status == 201,
    );
    let after_id = after.json()["id"].as_str().unwrap().to_string();
    node.assert_running();
    monitor.assert_running();

    // The events stream opened in the first session goes on into the
    // second, its ids still growing.
    let (after_ids, seen) = ids_until(
        &mut events,
        after_id.rsplit('-').next().unwrap(),
        Instant::now() + LONG,
    );
    assert!(
        seen,
        "the second session's sale on the same /v1/events stream"
    );
    let ids: Vec<u64> = before_ids.iter().chain(&after_ids).copied().collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "ids grow across the rollover: {ids:?}"
    );
    // A client that resumes with the last id it had before the rollover
    // gets the second session's events (not a 410, not a repeat).
    let mut resumed = EventStream::open(
        http,
        "/v1/events",
        &[
            ("Authorization", authorization.as_str()),
            ("Last-Event-ID", &last_before.to_string()),
        ],
    )
    .unwrap()
    .expect("resumes from a first-session id");
    let (resumed_ids, seen) = ids_until(
        &mut resumed,
        after_id.rsplit('-').next().unwrap(),
        Instant::now() + LONG,
    );
    assert!(seen, "resumed across the rollover: {resumed_ids:?}");
    assert!(resumed_ids.iter().all(|id| *id > last_before));
}
