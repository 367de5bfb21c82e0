//! The monitor over real HTTP on loopback, against the whole appliance
//! in-process and the real warehouse application deciding: every endpoint
//! with the values a known sequence of commands must produce, 404/400/405,
//! `/metrics` as Prometheus text, the stale flag and `/health` 503 once the
//! sequencer stops; replica equality with the warehouse under 5 % loss and
//! for a late joiner; and the `tally-monitor` binary itself (arguments,
//! serving, SIGTERM).
//!
//! Test block 105 (`ApplianceSpec::for_test(105, id, …)`); the monitor
//! binary listens on the test's fifth port (`port_base + 4`). Every wait has
//! a deadline; nothing sleeps for a fixed time and hopes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_client::client::OrderEntryClient;
use tally_client::replica::ReplicaLimits;
use tally_demo::{demo_client, send_all, ApplianceSpec};
use tally_monitor::{basic_authorization, HttpAuthConfig, Monitor, MonitorConfig, MonitorHandle};
use tally_warehouse::app::{WarehouseApp, WarehouseAppConfig};
use tally_wire::{CancelOrder, ConfirmHold, ModifyOrder, Order, ReleaseHold, Reserve};

const LONG: Duration = Duration::from_secs(60);
const BLOCK: u8 = 105;

/// Locations 1 (STORE-A) and 2 (STORE-B); SKUs 1..=4 in order of first
/// appearance (MUG, TEE, HAT, CAP).
const INVENTORY: &str = "\
location,sku_symbol,quantity
STORE-A,MUG,10
STORE-B,MUG,5
STORE-A,TEE,3
STORE-B,HAT,0
STORE-A,CAP,2
STORE-B,CAP,4
";
const STORE_A: u16 = 1;
const STORE_B: u16 = 2;
const MUG: u32 = 1;
const TEE: u32 = 2;
const CAP: u32 = 4;

// ---------------------------------------------------------------------------
// A tiny HTTP/1.0 client (one request per connection, body until close).

struct HttpReply {
    status: u16,
    content_type: String,
    body: String,
}

/// A request with the credentials of `read1` (role reader), as the monitor
/// requires on every endpoint but /health and /ready.
fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<HttpReply> {
    let reader = demo_client("read1");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: {}\r\n\r\n",
        basic_authorization(reader.username, reader.password)
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let content_type = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default();
    Ok(HttpReply {
        status,
        content_type,
        body: body.to_string(),
    })
}

fn get(addr: SocketAddr, path: &str) -> HttpReply {
    request(addr, "GET", path).unwrap_or_else(|error| panic!("GET {path}: {error}"))
}

/// GET, parsed as JSON; every JSON body must carry seq, lag and stale.
fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let reply = get(addr, path);
    assert!(
        reply.content_type.starts_with("application/json"),
        "GET {path}: content type {:?}",
        reply.content_type
    );
    let value: Value = serde_json::from_str(&reply.body)
        .unwrap_or_else(|error| panic!("GET {path}: {error}: {}", reply.body));
    assert!(value["seq"].is_u64(), "GET {path}: seq in {value}");
    assert!(value["lag"].is_u64(), "GET {path}: lag in {value}");
    assert!(value["stale"].is_boolean(), "GET {path}: stale in {value}");
    (reply.status, value)
}

/// Polls `path` until `done(status, body)` or the deadline; returns the last
/// answer.
fn poll_json(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    mut done: impl FnMut(u16, &Value) -> bool,
) -> (u16, Value) {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = get_json(addr, path);
        if done(status, &body) {
            return (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "GET {path}: still {status} {body} after {timeout:?}"
        );
        // Re-ask soon: this waits for a condition, with a deadline.
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Prometheus text format.

/// `name{labels} value` samples; panics on a line that is not one, or a
/// sample whose family was not declared with `# TYPE`.
fn parse_prometheus(text: &str) -> Vec<(String, String, f64)> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').expect("labels end with }")),
            None => (series, ""),
        };
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "metric name {name:?}"
        );
        for label in labels.split(',').filter(|l| !l.is_empty()) {
            let (key, quoted) = label.split_once('=').expect("label=value");
            assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            assert!(quoted.starts_with('"') && quoted.ends_with('"'), "{label}");
        }
        assert!(typed.contains(name), "{name} has no # TYPE");
        samples.push((name.to_string(), labels.to_string(), value));
    }
    samples
}

fn sample(samples: &[(String, String, f64)], name: &str, labels: &str) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l == labels)
        .map(|(_, _, v)| *v)
        .unwrap_or_else(|| panic!("no sample {name}{{{labels}}}"))
}

// ---------------------------------------------------------------------------
// The warehouse application on a thread.

struct RunningWarehouse {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<(u64, u64)>>,
}

impl RunningWarehouse {
    /// Starts the real authority with `inventory`, deciding live.
    fn start(spec: &ApplianceSpec, inventory: &Path) -> RunningWarehouse {
        let config = WarehouseAppConfig {
            consumer: spec.consumer_config(),
            client: spec.client_config("wh"),
            own_origin: demo_client("wh").client_id,
            limits: ReplicaLimits::small(),
            inventory: Some(inventory.to_path_buf()),
            snapshot: None,
            snapshot_interval: Duration::ZERO,
            expiry_check_interval: Duration::from_millis(5),
            catch_up_timeout: LONG,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("test-warehouse".into())
            .spawn(move || {
                let mut app = WarehouseApp::start(config)?;
                app.run(&thread_stop)?;
                // Let its own events come back: then its digest is the
                // stream's at its seq.
                let deadline = Instant::now() + LONG;
                while !(app.is_quiet()
                    && app.consumer().delivered_seq() >= app.consumer().newest_seq())
                {
                    anyhow::ensure!(Instant::now() < deadline, "warehouse never quiet");
                    if app.poll()? == 0 {
                        thread::yield_now();
                    }
                }
                Ok((app.engine().replica().last_seq(), app.engine().digest()))
            })
            .expect("spawn the warehouse");
        RunningWarehouse { stop, thread }
    }

    /// Stops deciding; returns (seq, digest) of its state at a quiet moment.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .expect("warehouse thread")
            .expect("warehouse ran")
    }
}

fn write_inventory(dir: &Path, csv: &str) -> PathBuf {
    let path = dir.join("inventory.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

fn start_monitor(spec: &ApplianceSpec, loss: Option<(u64, f64)>) -> MonitorHandle {
    let mut consumer = spec.consumer_config();
    consumer.loss = loss;
    let mut config = MonitorConfig::new("127.0.0.1:0".parse().unwrap(), consumer);
    config.auth = HttpAuthConfig::from_appliance(&spec.config()).unwrap();
    Monitor::start(config).expect("start the monitor")
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("{list} is not a list"))
        .iter()
        .map(|item| item[key].as_str().unwrap_or_default().to_string())
        .collect()
}

fn types(body: &Value) -> Vec<String> {
    names(&body["events"], "type")
}

/// The event types of a timeline, sorted: commands are pipelined, so how
/// they interleave with their outcomes on the stream depends on timing.
fn sorted_types(body: &Value) -> Vec<String> {
    let mut types = types(body);
    types.sort();
    types
}

// ---------------------------------------------------------------------------

#[test]
fn every_endpoint_over_http_then_stale_when_the_sequencer_stops() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, 1, dir.path().join("journal"));
    let appliance = spec.start().unwrap();
    let inventory = write_inventory(dir.path(), INVENTORY);
    let monitor = start_monitor(&spec, None);
    let addr = monitor.local_addr();

    // No authority yet: alive but not ready.
    let (status, body) = get_json(addr, "/ready");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert!(
        body["reason"].as_str().unwrap().contains("authority"),
        "{body}"
    );

    let warehouse = RunningWarehouse::start(&spec, &inventory);
    let (_, ready) = poll_json(addr, "/ready", LONG, |status, _| status == 200);
    assert_eq!(ready["ready"], true);
    assert!(ready["authority_online_seq"].as_u64().unwrap() > 0);

    // pos1 (origin 1): orders, a modify, holds confirmed, released, expired.
    let pos1 = demo_client("pos1").client_id;
    let mut client = OrderEntryClient::connect(spec.client_config("pos1"), LONG).unwrap();
    let commands: Vec<Vec<u8>> = vec![
        Order::new(1, STORE_A, MUG, 3).as_bytes().to_vec(), // D −3: MUG@A 7
        Order::new(2, STORE_A, MUG, 1000).as_bytes().to_vec(), // J(I)
        ModifyOrder::new(1, 2).as_bytes().to_vec(),         // D +1: MUG@A 8
        Order::new(3, STORE_A, TEE, 3).as_bytes().to_vec(), // TEE out everywhere
        Reserve::new(10, STORE_A, CAP, 2, 600_000)
            .as_bytes()
            .to_vec(), // CAP@A held
        Reserve::new(11, STORE_B, MUG, 1, 600_000)
            .as_bytes()
            .to_vec(),
        ConfirmHold::new(11).as_bytes().to_vec(), // E(C), D −1: MUG@B 4
        CancelOrder::new(1).as_bytes().to_vec(),  // D +2: MUG@A 10
        Reserve::new(12, STORE_B, CAP, 1, 600_000)
            .as_bytes()
            .to_vec(),
        ReleaseHold::new(12).as_bytes().to_vec(), // E(R)
        Reserve::new(13, STORE_B, CAP, 1, 1).as_bytes().to_vec(), // expires
    ];
    let acks = send_all(&mut client, commands, LONG).unwrap();
    assert!(acks.iter().all(|ack| ack.reject.is_none()), "{acks:?}");
    let order_1_seq = acks[0].stream_seq;

    // The expiry is decided last: once the monitor shows it, it has applied
    // every outcome before it.
    let (_, hold) = poll_json(addr, &format!("/holds/{pos1}/13"), LONG, |_, body| {
        body["status"] == "expired"
    });
    assert_eq!(types(&hold), ["V", "H", "E"]);
    assert_eq!(hold["events"][2]["outcome"], "X");

    // Availability, all locations and one.
    let (status, mug) = get_json(addr, "/availability/MUG");
    assert_eq!(status, 200, "{mug}");
    assert_eq!(mug["sku"], MUG);
    assert_eq!(names(&mug["locations"], "name"), ["STORE-A", "STORE-B"]);
    let a = &mug["locations"][0];
    assert_eq!(
        (
            a["on_hand"].as_u64(),
            a["reserved"].as_u64(),
            a["available"].as_u64()
        ),
        (Some(10), Some(0), Some(10))
    );
    let b = &mug["locations"][1];
    assert_eq!(
        (b["on_hand"].as_u64(), b["available"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(mug["total"]["available"], 14);
    assert_eq!(mug["stale"], false);
    let (status, cap_a) = get_json(addr, "/availability/CAP?location=STORE-A");
    assert_eq!(status, 200);
    assert_eq!(cap_a["locations"].as_array().unwrap().len(), 1);
    assert_eq!(cap_a["total"]["reserved"], 2);
    assert_eq!(cap_a["total"]["available"], 0);
    let (_, cap_b) = get_json(addr, &format!("/availability/CAP?location={STORE_B}"));
    assert_eq!(cap_b["locations"][0]["name"], "STORE-B");
    assert_eq!(cap_b["total"]["on_hand"], 4);
    assert_eq!(cap_b["total"]["reserved"], 0, "released and expired");

    // Errors: unknown SKU 404; bad query 400; unknown route 404; POST 405.
    let (status, body) = get_json(addr, "/availability/NOPE");
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("NOPE"), "{body}");
    for bad in [
        "/availability/MUG?location=STORE-Z",
        "/availability/MUG?location=99",
        "/availability/MUG?colour=red",
        "/orders/one/1",
        "/orders/1/-1",
        "/holds/1/1.5",
        "/depleted?scope=most",
        "/cells/STORE-A/MUG/history?limit=all",
        "/health?verbose",
    ] {
        let (status, body) = get_json(addr, bad);
        assert_eq!(status, 400, "GET {bad}: {body}");
        assert!(body["error"].is_string(), "GET {bad}: {body}");
    }
    assert_eq!(get_json(addr, "/nowhere").0, 404);
    // `/` is the dashboard now.
    let dashboard = get(addr, "/");
    assert_eq!(dashboard.status, 200);
    assert!(dashboard.content_type.starts_with("text/html"));
    let post = request(addr, "POST", "/availability/MUG").unwrap();
    assert_eq!(post.status, 405);
    let post: Value = serde_json::from_str(&post.body).unwrap();
    assert!(post["error"].is_string() && post["seq"].is_u64());

    // Cell history: the broadcast level, then order, modify, cancel.
    let (status, history) = get_json(addr, "/cells/STORE-A/MUG/history");
    assert_eq!(status, 200, "{history}");
    assert_eq!(types(&history), ["I", "D", "D", "D"]);
    let after: Vec<u64> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["after"]["on_hand"].as_u64().unwrap())
        .collect();
    assert_eq!(after, [10, 7, 8, 10]);
    let reasons: Vec<&str> = history["events"].as_array().unwrap()[1..]
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["O", "M", "X"]);
    assert_eq!(history["events"][1]["cmd_seq"], order_1_seq);
    assert_eq!(history["cell"]["on_hand"], 10);
    let (_, last) = get_json(addr, &format!("/cells/{STORE_A}/MUG/history?limit=1"));
    assert_eq!(types(&last), ["D"]);
    assert_eq!(last["truncated"], true);
    assert_eq!(get_json(addr, "/cells/STORE-A/NOPE/history").0, 404);

    // Order timelines.
    let (status, order) = get_json(addr, &format!("/orders/{pos1}/1"));
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["status"], "cancelled");
    assert_eq!(
        (order["qty"].as_u64(), order["remaining"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(order["order_seq"], order_1_seq);
    assert_eq!(order["symbol"], "MUG");
    assert_eq!(order["location_name"], "STORE-A");
    assert_eq!(sorted_types(&order), ["D", "D", "D", "M", "O", "X"]);
    let deltas: Vec<&str> = order["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "D")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, ["O", "M", "X"], "outcomes in command order");
    let (_, rejected) = get_json(addr, &format!("/orders/{pos1}/2"));
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["reject_reason"], "I");
    assert_eq!(types(&rejected), ["O", "J"]);
    let (_, tee) = get_json(addr, &format!("/orders/{pos1}/3"));
    assert_eq!(
        (tee["status"].as_str(), tee["remaining"].as_u64()),
        (Some("accepted"), Some(3))
    );
    assert_eq!(get_json(addr, &format!("/orders/{pos1}/999")).0, 404);
    assert_eq!(
        get_json(addr, "/orders/2/1").0,
        404,
        "another origin's order 1"
    );

    // Holds.
    let (_, open) = get_json(addr, &format!("/holds/{pos1}/10"));
    assert_eq!(open["status"], "open");
    assert!(open["expires_at_ns"].as_u64().unwrap() > 0);
    assert_eq!(types(&open), ["V", "H"]);
    let (_, confirmed) = get_json(addr, &format!("/holds/{pos1}/11"));
    assert_eq!(confirmed["status"], "confirmed");
    assert_eq!(sorted_types(&confirmed), ["C", "D", "E", "H", "V"]);
    let (_, released) = get_json(addr, &format!("/holds/{pos1}/12"));
    assert_eq!(released["status"], "released");
    assert_eq!(sorted_types(&released), ["E", "H", "K", "V"]);
    assert_eq!(get_json(addr, &format!("/holds/{pos1}/77")).0, 404);

    // Depleted: nothing anywhere (TEE sold out, HAT never stocked); out
    // somewhere (and CAP held at STORE-A).
    let (_, all) = get_json(addr, "/depleted");
    assert_eq!(all["scope"], "all");
    assert_eq!(names(&all["skus"], "symbol"), ["TEE", "HAT"]);
    assert_eq!(all["count"], 2);
    let (_, any) = get_json(addr, "/depleted?scope=any");
    assert_eq!(names(&any["skus"], "symbol"), ["TEE", "HAT", "CAP"]);
    assert_eq!(names(&any["skus"][2]["out_at"], "name"), ["STORE-A"]);
    let (_, one) = get_json(addr, "/depleted?scope=any&limit=1");
    assert_eq!(
        (one["count"].as_u64(), one["truncated"].as_bool()),
        (Some(3), Some(true))
    );

    // Health and metrics.
    let (status, health) = get_json(addr, "/health");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["oversold"], 0);
    assert!(health["consumer"]["messages_delivered"].as_u64().unwrap() > 0);
    let metrics = get(addr, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.content_type.starts_with("text/plain"),
        "{}",
        metrics.content_type
    );
    let samples = parse_prometheus(&metrics.body);
    let seq = sample(&samples, "tally_monitor_seq", "");
    assert!(seq >= health["seq"].as_u64().unwrap() as f64);
    assert_eq!(sample(&samples, "tally_monitor_oversold", ""), 0.0);
    assert_eq!(sample(&samples, "tally_monitor_stale", ""), 0.0);
    assert_eq!(sample(&samples, "tally_monitor_ready", ""), 1.0);
    assert!(sample(&samples, "tally_monitor_messages_applied_total", "") >= seq - 1.0);
    sample(&samples, "tally_monitor_gaps_total", "");
    sample(&samples, "tally_monitor_re_requests_total", "");
    sample(
        &samples,
        "tally_monitor_recovered_total",
        "path=\"retransmit\"",
    );
    sample(
        &samples,
        "tally_monitor_replica_total",
        "counter=\"rejects\"",
    );
    assert!(
        sample(
            &samples,
            "tally_monitor_http_requests_total",
            "code=\"200\""
        ) >= 10.0
    );
    assert!(
        sample(
            &samples,
            "tally_monitor_http_requests_total",
            "code=\"400\""
        ) >= 9.0
    );
    assert!(
        sample(
            &samples,
            "tally_monitor_http_requests_total",
            "code=\"404\""
        ) >= 4.0
    );
    assert_eq!(
        sample(
            &samples,
            "tally_monitor_http_requests_total",
            "code=\"405\""
        ),
        1.0
    );

    // Stop the sequencer: the monitor keeps answering, says it is stale,
    // and /health turns 503.
    warehouse.stop();
    appliance.stop().unwrap();
    let (_, health) = poll_json(addr, "/health", LONG, |status, _| status == 503);
    assert_eq!(health["status"], "stale");
    assert_eq!(health["stale"], true);
    let (status, mug) = get_json(addr, "/availability/MUG");
    assert_eq!(status, 200, "stale reads are still served");
    assert_eq!(mug["stale"], true);
    assert_eq!(mug["total"]["available"], 14);
    assert_eq!(get_json(addr, "/ready").0, 503);
    let samples = parse_prometheus(&get(addr, "/metrics").body);
    assert_eq!(sample(&samples, "tally_monitor_stale", ""), 1.0);
    monitor.stop().unwrap();
    // The listener closes with the HTTP runtime.
    let deadline = Instant::now() + LONG;
    while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
        assert!(Instant::now() < deadline, "the listener is still open");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `count` commands for one till: orders (any location or one), modifies
/// and cancels of its own orders, holds confirmed or released.
fn random_commands(seed: u64, count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed | 1);
    let mut commands = Vec::with_capacity(count);
    let mut next_id = 1u64;
    for _ in 0..count {
        let sku = 1 + rng.below(4) as u32;
        let location = rng.below(3) as u16; // 0 = any
        let known = next_id.saturating_sub(1).max(1);
        let bytes = match rng.below(8) {
            0..=3 => {
                next_id += 1;
                Order::new(next_id, location, sku, 1 + rng.below(3) as u32)
                    .as_bytes()
                    .to_vec()
            }
            4 => ModifyOrder::new(1 + rng.below(known), 1 + rng.below(3) as u32)
                .as_bytes()
                .to_vec(),
            5 => CancelOrder::new(1 + rng.below(known)).as_bytes().to_vec(),
            6 => {
                next_id += 1;
                Reserve::new(next_id, 1 + rng.below(2) as u16, sku, 1, 600_000)
                    .as_bytes()
                    .to_vec()
            }
            _ => {
                let hold = 1 + rng.below(known);
                if rng.below(2) == 0 {
                    ConfirmHold::new(hold).as_bytes().to_vec()
                } else {
                    ReleaseHold::new(hold).as_bytes().to_vec()
                }
            }
        };
        commands.push(bytes);
    }
    commands
}

#[test]
fn replicas_match_the_warehouse_with_loss_and_after_a_late_join() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, 2, dir.path().join("journal"));
    let appliance = spec.start().unwrap();
    let inventory = write_inventory(
        dir.path(),
        "location,sku_symbol,quantity\nSTORE-A,MUG,60\nSTORE-B,MUG,40\nSTORE-A,TEE,30\n\
         STORE-B,TEE,30\nSTORE-A,HAT,20\nSTORE-B,CAP,50\n",
    );
    let lossy = start_monitor(&spec, Some((0x5eed, 0.05)));
    let warehouse = RunningWarehouse::start(&spec, &inventory);
    assert!(
        lossy.wait_until(LONG, |model, now_ns| model.readiness(now_ns).is_ok()),
        "{:?}",
        lossy.status()
    );

    let tills: Vec<JoinHandle<()>> = ["pos1", "pos2", "pos3"]
        .into_iter()
        .enumerate()
        .map(|(i, till)| {
            let config = spec.client_config(till);
            thread::spawn(move || {
                let mut client = OrderEntryClient::connect(config, LONG).unwrap();
                let acks =
                    send_all(&mut client, random_commands(i as u64 + 11, 400), LONG).unwrap();
                assert_eq!(acks.len(), 400);
                client.logout();
            })
        })
        .collect();
    for till in tills {
        till.join().unwrap();
    }
    let late = start_monitor(&spec, None);
    let (seq, digest) = warehouse.stop();
    assert!(seq > 1200, "every command and its outcome: {seq}");

    for (name, monitor) in [("lossy", &lossy), ("late", &late)] {
        assert!(
            monitor.wait_for_seq(seq, LONG),
            "{name} at {:?}",
            monitor.status()
        );
        assert_eq!(
            monitor.digest(),
            (seq, digest),
            "{name} equals the warehouse"
        );
        let status = monitor.status();
        assert_eq!(status.oversold, 0, "{name}");
        assert!(status.failed.is_none(), "{name}");
        let (_, health) = get_json(monitor.local_addr(), "/health");
        assert_eq!(health["seq"], seq, "{name}: {health}");
    }
    let lossy_stats = lossy.status().consumer;
    assert!(
        lossy_stats.datagrams_dropped_by_loss_filter == 0 || lossy_stats.recovered() > 0,
        "what the filter dropped was recovered: {lossy_stats:?}"
    );
    assert!(
        late.status().consumer.recovered_by_replay > 0,
        "the late joiner replayed"
    );
    lossy.stop().unwrap();
    late.stop().unwrap();
    appliance.stop().unwrap();
}

// ---------------------------------------------------------------------------
// The binary.

/// Kills the child on drop (a failed assertion must not leave it running).
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn the_binary_serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, 3, dir.path().join("journal"));
    let appliance = spec.start().unwrap();
    let inventory = write_inventory(dir.path(), INVENTORY);
    let warehouse = RunningWarehouse::start(&spec, &inventory);
    let config = dir.path().join("tally.toml");
    std::fs::write(&config, spec.toml()).unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], spec.port_base + 4));

    let help = Command::new(tally_demo::bin("tally-monitor"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for word in [
        "--config",
        "--listen",
        "--user",
        "--password",
        "/availability/",
        "/metrics",
    ] {
        assert!(help.contains(word), "--help mentions {word}");
    }

    let child = Command::new(tally_demo::bin("tally-monitor"))
        .arg("--config")
        .arg(&config)
        .args(["--listen", &listen.to_string()])
        .args(["--user", "read1", "--password", "readpass"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(Some(child));
    let deadline = Instant::now() + LONG;
    let ready = loop {
        match request(listen, "GET", "/ready") {
            Ok(reply) if reply.status == 200 => break reply,
            _ => {
                let exited = child.0.as_mut().unwrap().try_wait().unwrap();
                assert!(exited.is_none(), "tally-monitor exited: {exited:?}");
                assert!(Instant::now() < deadline, "tally-monitor never ready");
                thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let ready: Value = serde_json::from_str(&ready.body).unwrap();
    assert_eq!(ready["ready"], true);
    // The binary takes its readers from the --config file: no credentials,
    // no stock levels.
    let mut stream = TcpStream::connect(listen).unwrap();
    write!(stream, "GET /availability/MUG HTTP/1.0\r\n\r\n").unwrap();
    let mut anonymous = String::new();
    stream.read_to_string(&mut anonymous).unwrap();
    assert!(
        anonymous.starts_with("HTTP/1.0 401") || anonymous.starts_with("HTTP/1.1 401"),
        "{anonymous}"
    );
    let (status, mug) = get_json(listen, "/availability/MUG");
    assert_eq!(status, 200);
    assert_eq!(mug["total"]["on_hand"], 15);

    let pid = child.0.as_ref().unwrap().id() as libc::pid_t;
    // SAFETY: kill(2) on the child we spawned and still own.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + LONG;
    let exit = loop {
        if let Some(exit) = child.0.as_mut().unwrap().try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "tally-monitor ignored SIGTERM");
        thread::sleep(Duration::from_millis(20));
    };
    child.0 = None;
    assert!(exit.success(), "{exit:?}");
    warehouse.stop();
    appliance.stop().unwrap();
}
