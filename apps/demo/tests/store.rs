//! The store node (`tally-pos --location`) against the whole appliance, in
//! process, with the real warehouse application on a thread: a sale its
//! replica shows cannot be filled is refused with no round trip (nothing of
//! it on the stream); cut off from the appliance it serves stock reads
//! marked stale, refuses sales with the reason, logs it, and recovers when
//! the appliance is back; hostile input on its port gets clear refusals;
//! the interactive till works through a pseudo-terminal.
//!
//! Test block 100, ids 151–160; HTTP ports 19000 + 4·id. Every wait has a
//! deadline; every child is killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tally_client::replica::ReplicaLimits;
use tally_demo::warehouse::RunningWarehouse;
use tally_demo::{demo_client, read_stream, ApplianceSpec};
use tally_runtime::counters::CounterReader;
use tally_wire::Message;

const BLOCK: u8 = 100;
const LONG: Duration = Duration::from_secs(60);

const SHOP: &str = "\
location,sku_symbol,quantity
STORE-A,MUG,5
STORE-A,TEE,1
STORE-B,MUG,7
";

// ---------------------------------------------------------------------------
// The pieces: the warehouse on a thread, the store node as a child.

/// The warehouse deciding on a thread, with [`SHOP`] as its inventory.
fn warehouse(spec: &ApplianceSpec, dir: &Path) -> RunningWarehouse {
    let inventory = dir.join("inventory.csv");
    std::fs::write(&inventory, SHOP).unwrap();
    RunningWarehouse::start(spec, &inventory, ReplicaLimits::small())
}

/// A child process killed on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(spec: &ApplianceSpec, dir: &Path) -> PathBuf {
    let path = dir.join("tally.toml");
    std::fs::write(&path, spec.toml()).unwrap();
    path
}

fn http_port(id: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 19_000 + 4 * u16::from(id)))
}

/// `tally-pos --location STORE-A` as `pos2`, its log in `dir/store.log`.
fn store_node(config: &Path, dir: &Path, extra: &[&str]) -> Command {
    let client = demo_client("pos2");
    let password = dir.join("pos2.password");
    std::fs::write(&password, format!("{}\n", client.password)).unwrap();
    let mut command = Command::new(tally_demo::bin("tally-pos"));
    command
        .arg("--config")
        .arg(config)
        .args(["--user", client.username, "--password-file"])
        .arg(&password)
        .args(["--location", "STORE-A"])
        .args(extra)
        .env("RUST_LOG", "info");
    command
}

fn start_store(config: &Path, dir: &Path, id: u8) -> ChildGuard {
    let log = std::fs::File::create(dir.join("store.log")).unwrap();
    let counters = dir.join("store.counters");
    let child = store_node(config, dir, &["--listen", &http_port(id).to_string()])
        .arg("--counters")
        .arg(&counters)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    ChildGuard(child)
}

/// One HTTP/1.1 request (Connection: close): status and JSON body.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let raw = http_raw(addr, method, path, body.unwrap_or("").as_bytes(), None);
    parse_answer(&raw)
}

fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    content_length: Option<usize>,
) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(LONG)).unwrap();
    let length = content_length.unwrap_or(body.len());
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: store\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn parse_answer(raw: &str) -> (u16, Value) {
    let status: u16 = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {raw:?}"));
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, json)
}

/// Waits until `GET path` satisfies `done`, up to LONG; returns the answer.
fn wait_for(
    addr: SocketAddr,
    path: &str,
    what: &str,
    done: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let deadline = Instant::now() + LONG;
    loop {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let _ = stream.set_read_timeout(Some(LONG));
            let head = format!("GET {path} HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n");
            if stream.write_all(head.as_bytes()).is_ok() {
                let mut raw = String::new();
                let _ = stream.read_to_string(&mut raw);
                if raw.starts_with("HTTP/") {
                    let (status, body) = parse_answer(&raw);
                    if done(status, &body) {
                        return (status, body);
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "{what}: not within {LONG:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn wait_linked(addr: SocketAddr) {
    wait_for(addr, "/health", "the store node linked", |status, _| {
        status == 200
    });
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("store.log")).unwrap_or_default()
}

// ---------------------------------------------------------------------------

#[test]
fn a_sale_the_replica_shows_is_gone_is_refused_with_no_round_trip() {
    let id = 151;
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, id, dir.path());
    let _appliance = spec.start().unwrap();
    let _warehouse = warehouse(&spec, dir.path());
    let config = write_config(&spec, dir.path());
    let _store = start_store(&config, dir.path(), id);
    let addr = http_port(id);
    wait_linked(addr);

    // 6 MUG at STORE-A, which has 5: refused by the replica.
    let (status, body) = http(addr, "POST", "/v1/orders", Some(r#"{"sku":"MUG","qty":6}"#));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "insufficient_stock", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("nothing was sent"), "{message}");
    assert!(message.contains("5 available at STORE-A"), "{message}");
    assert_eq!(body["stock"]["available"], 5);
    assert_eq!(body["stale"], false);

    // 2 MUG: sold, the answer shows what is left.
    let (status, body) = http(addr, "POST", "/v1/orders", Some(r#"{"sku":"MUG","qty":2}"#));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["stock"]["available"], 3, "{body}");
    let sold_at = body["cmd_seq"].as_u64().unwrap();
    assert!(body["message"].as_str().unwrap().starts_with("sold 2 MUG"));
    let (status, body) = http(addr, "GET", "/v1/skus/MUG", None);
    assert_eq!((status, &body["available"]), (200, &json!(3)), "{body}");

    // The stream holds exactly one command of the node's: the sale of 2.
    let origin = demo_client("pos2").client_id;
    let stream = read_stream(&spec.consumer_config(), sold_at, LONG);
    let ours: Vec<u64> = stream
        .iter()
        .filter(|(_, bytes)| {
            let message = Message::parse(bytes).unwrap();
            message.is_command() && message.header().origin.get() == origin
        })
        .map(|(seq, _)| *seq)
        .collect();
    assert_eq!(
        ours,
        [sold_at],
        "only the sale that could be filled went out"
    );

    // Counted as such (the till's own counters are published once a
    // second, the node's as they happen).
    let reader = CounterReader::open(&dir.path().join("store.counters")).unwrap();
    let deadline = Instant::now() + LONG;
    loop {
        let values: std::collections::HashMap<String, u64> =
            reader.read().map(|(n, v)| (n.to_string(), v)).collect();
        if values["store.sales_filled"] == 1 && values["pos.outcomes"] == 1 {
            assert_eq!(values["store.sales_refused_locally"], 1, "{values:?}");
            assert_eq!(values["pos.commands_sent"], 1, "{values:?}");
            assert_eq!(values["pos.skipped_would_fail"], 1, "{values:?}");
            assert_eq!(values["store.link_active"], 1, "{values:?}");
            break;
        }
        assert!(Instant::now() < deadline, "counters published: {values:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cut_off_it_serves_stale_reads_refuses_sales_and_recovers() {
    let id = 152;
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, id, dir.path());
    let appliance = spec.start().unwrap();
    let warehouse = warehouse(&spec, dir.path());
    let config = write_config(&spec, dir.path());
    let _store = start_store(&config, dir.path(), id);
    let addr = http_port(id);
    wait_linked(addr);
    let (status, _) = http(addr, "POST", "/v1/orders", Some(r#"{"sku":"MUG","qty":1}"#));
    assert_eq!(status, 201);

    // The appliance goes away.
    appliance.stop().unwrap();
    let (_, body) = wait_for(
        addr,
        "/v1/skus/MUG",
        "reads marked stale",
        |status, body| status == 200 && body["stale"] == true,
    );
    assert_eq!(body["available"], 4, "the last known stock: {body}");
    assert_eq!(body["link"], "down");
    let (status, body) = http(addr, "POST", "/v1/orders", Some(r#"{"sku":"MUG","qty":1}"#));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "link_down");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("cut off from the appliance"), "{message}");
    let (status, _) = http(addr, "GET", "/health", None);
    assert_eq!(status, 503);
    let deadline = Instant::now() + LONG;
    while !log_of(dir.path()).contains("cut off from the appliance") {
        assert!(Instant::now() < deadline, "logged: {}", log_of(dir.path()));
        thread::sleep(Duration::from_millis(50));
    }

    // Back: it recovers by itself and sells again.
    let _appliance = spec.start().unwrap();
    wait_linked(addr);
    let (status, body) = http(addr, "POST", "/v1/orders", Some(r#"{"sku":"MUG","qty":1}"#));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["stock"]["available"], 3);
    assert_eq!(body["stale"], false);
    assert!(log_of(dir.path()).contains("the link to the appliance is back"));
    warehouse.stop().expect("the warehouse ran through the cut");
}

#[test]
fn hostile_input_on_the_store_port_gets_clear_refusals() {
    let id = 153;
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, id, dir.path());
    let _appliance = spec.start().unwrap();
    let _warehouse = warehouse(&spec, dir.path());
    let config = write_config(&spec, dir.path());
    let _store = start_store(&config, dir.path(), id);
    let addr = http_port(id);
    wait_linked(addr);

    let huge = http_raw(addr, "POST", "/v1/orders", b"{", Some(10 << 20));
    let (status, body) = parse_answer(&huge);
    assert_eq!(
        (status, &body["error"]),
        (413, &json!("body_too_large")),
        "{huge}"
    );
    let big = format!(r#"{{"sku":"{}","qty":1}}"#, "M".repeat(8000));
    let (status, body) = http(addr, "POST", "/v1/orders", Some(&big));
    assert_eq!((status, &body["error"]), (413, &json!("body_too_large")));
    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        ("POST", "/v1/orders", Some("{not json"), 400, "bad_json"),
        (
            "POST",
            "/v1/orders",
            Some(r#"{"sku":"MUG"}"#),
            400,
            "bad_json",
        ),
        (
            "POST",
            "/v1/orders",
            Some(r#"{"sku":"MUG","qty":-1}"#),
            400,
            "bad_json",
        ),
        (
            "POST",
            "/v1/orders",
            Some(r#"{"sku":"MUG","qty":1,"x":1}"#),
            400,
            "bad_json",
        ),
        (
            "POST",
            "/v1/orders",
            Some(r#"{"sku":"NOPE","qty":1}"#),
            404,
            "unknown_sku",
        ),
        ("GET", "/v1/skus/NOPE", None, 404, "unknown_sku"),
        (
            "POST",
            "/v1/orders",
            Some(r#"{"sku":"MUG","qty":1,"location":"STORE-B"}"#),
            403,
            "wrong_location",
        ),
        (
            "POST",
            "/v1/orders",
            Some(r#"{"sku":"MUG","qty":0}"#),
            422,
            "zero_or_invalid_quantity",
        ),
        (
            "POST",
            "/v1/holds",
            Some(r#"{"sku":"MUG","qty":1,"ttl_ms":0}"#),
            422,
            "invalid_ttl",
        ),
        ("POST", "/v1/holds/77/confirm", None, 404, "no_such_hold"),
        (
            "POST",
            "/v1/returns",
            Some(r#"{"order_id":99,"qty":1}"#),
            404,
            "no_such_order",
        ),
        ("DELETE", "/v1/orders", None, 405, "method_not_allowed"),
        ("GET", "/v1/skus?limit=x", None, 400, "bad_query"),
        ("GET", "/etc/passwd", None, 404, "not_found"),
    ];
    for &(method, path, body, status, error) in cases {
        let (got, answer) = http(addr, method, path, body);
        assert_eq!(
            (got, &answer["error"]),
            (status, &json!(error)),
            "{method} {path} {body:?}: {answer}"
        );
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    // Still serving: a hold, its confirmation, a return, a page.
    let (status, hold) = http(
        addr,
        "POST",
        "/v1/holds",
        Some(r#"{"sku":"TEE","qty":1,"ttl_ms":60000}"#),
    );
    assert_eq!(status, 201, "{hold}");
    let path = format!("/v1/holds/{}/confirm", hold["id"]);
    let (status, body) = http(addr, "POST", &path, None);
    assert_eq!(status, 200, "{body}");
    let (status, order) = http(addr, "POST", "/v1/orders", Some(r#"{"sku":"MUG","qty":3}"#));
    assert_eq!(status, 201, "{order}");
    let back = format!(r#"{{"order_id":{},"qty":1}}"#, order["id"]);
    let (status, body) = http(addr, "POST", "/v1/returns", Some(&back));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stock"]["available"], 3, "5 - 3 + 1: {body}");
    let (status, page) = http(addr, "GET", "/v1/skus?after=0&limit=10", None);
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");
    let metrics = http_raw(addr, "GET", "/metrics", b"", None);
    assert!(metrics.contains("tally_store_requests_refused{process=\"tally-pos STORE-A\"}"));

    // Plain keep-alive reads are quick (no Nagle stall): a stall costs
    // every read a 40 ms delayed ACK, so the median read stays well under
    // it. The median, not the total: a busy CI host may stall a few reads.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(LONG)).unwrap();
    let mut buf = [0u8; 4096];
    let mut reads: Vec<Duration> = (0..51)
        .map(|_| {
            let started = Instant::now();
            stream
                .write_all(b"GET /v1/skus/MUG HTTP/1.1\r\nHost: s\r\n\r\n")
                .unwrap();
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0 && buf.starts_with(b"HTTP/1.1 200"));
            started.elapsed()
        })
        .collect();
    reads.sort();
    let median = reads[reads.len() / 2];
    println!(
        "51 keep-alive reads: median {median:?}, slowest {:?}",
        reads[50]
    );
    assert!(median < Duration::from_millis(20), "{reads:?}");
}

// ---------------------------------------------------------------------------
// The interactive till, through a pseudo-terminal.

/// A pseudo-terminal: the master end to type into and read from.
struct Pty {
    master: std::fs::File,
    slave: OwnedFd,
    /// What was read so far, and how far expectations consumed it.
    seen: String,
    cursor: usize,
}

fn openpty() -> Pty {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the ints we own; the name,
    // termios and winsize pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened for us and are owned here.
    unsafe {
        Pty {
            master: std::fs::File::from_raw_fd(master),
            slave: OwnedFd::from_raw_fd(slave),
            seen: String::new(),
            cursor: 0,
        }
    }
}

impl Pty {
    /// Reads until the output after the last expectation contains `what`,
    /// up to LONG; returns what came before it.
    fn expect(&mut self, what: &str) -> String {
        let deadline = Instant::now() + LONG;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.master);
        loop {
            if let Some(at) = self.seen[self.cursor..].find(what) {
                let before = self.seen[self.cursor..self.cursor + at].to_string();
                self.cursor += at + what.len();
                return before;
            }
            let seen = &self.seen;
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{what:?} not seen in {seen:?}");
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own, for a descriptor we own.
            let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().min(1000) as i32) };
            if ready > 0 {
                let mut buf = [0u8; 4096];
                let n = self.master.read(&mut buf).expect("read the pty");
                assert!(n > 0, "the till closed the terminal: {seen:?}");
                self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    }

    fn type_line(&mut self, line: &str) {
        self.master.write_all(line.as_bytes()).unwrap();
        self.master.write_all(b"\n").unwrap();
    }
}

#[test]
fn the_interactive_till_works_through_a_pseudo_terminal() {
    let id = 154;
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, id, dir.path());
    let _appliance = spec.start().unwrap();
    let _warehouse = warehouse(&spec, dir.path());
    let config = write_config(&spec, dir.path());
    let mut pty = openpty();
    let tty = |pty: &Pty| Stdio::from(pty.slave.try_clone().unwrap());
    let child = store_node(&config, dir.path(), &["--interactive"])
        .env("RUST_LOG", "warn")
        .stdin(tty(&pty))
        .stdout(tty(&pty))
        .stderr(tty(&pty))
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    pty.expect("till ready");
    pty.expect("> ");
    // Until the node has the directory, a read says why it cannot answer;
    // until its order entry is logged in, a read is answered but marked
    // stale (and a sale would be refused). Wait for a fresh answer.
    let deadline = Instant::now() + LONG;
    loop {
        pty.type_line("? MUG");
        let answer = pty.expect("\n> ");
        assert!(answer.matches("(stale").count() <= 1, "{answer}");
        if answer.contains("OK MUG at STORE-A: 5 available") && !answer.contains("stale") {
            break;
        }
        assert!(Instant::now() < deadline, "never linked: {}", pty.seen);
        thread::sleep(Duration::from_millis(100));
    }
    pty.type_line("MUG 2");
    pty.expect("OK sold 2 MUG (order");
    pty.expect("MUG at STORE-A: 3 available");
    pty.type_line("MUG 9");
    pty.expect("REFUSED insufficient stock: 9 MUG asked, 3 available at STORE-A");
    pty.type_line("TEE");
    pty.expect("OK sold 1 TEE");
    pty.expect("TEE at STORE-A: 0 available");
    pty.type_line("SOCK 1");
    pty.expect("REFUSED unknown SKU \"SOCK\"");
    pty.type_line("MUG many");
    pty.expect("REFUSED \"many\" is not a quantity");
    pty.type_line("quit");
    let deadline = Instant::now() + LONG;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the till did not stop: {}",
            pty.seen
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", pty.seen);
}

// ---------------------------------------------------------------------------
// Observability: every long-running process has a counter file, tally-stat
// sees them all, the warehouse and the store node export metrics.

#[test]
fn tally_stat_sees_the_appliance_the_warehouse_and_the_store_node() {
    let id = 155;
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, id, dir.path());
    let _appliance = spec.start().unwrap();
    let config = write_config(&spec, dir.path());
    let inventory = dir.path().join("inventory.csv");
    std::fs::write(&inventory, SHOP).unwrap();
    let wh = demo_client("wh");
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], 19_000 + 4 * u16::from(id) + 1));
    let warehouse = Command::new(tally_demo::bin("tally-warehouse"))
        .arg("--config")
        .arg(&config)
        .args([
            "--user",
            wh.username,
            "--password",
            wh.password,
            "--inventory",
        ])
        .arg(&inventory)
        .arg("--snapshot")
        .arg(dir.path().join("wh.snapshot"))
        .arg("--counters")
        .arg(dir.path().join("warehouse.counters"))
        .args(["--metrics", &metrics_addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _warehouse = ChildGuard(warehouse);
    let _store = start_store(&config, dir.path(), id);
    let addr = http_port(id);
    wait_linked(addr);
    let (status, _) = http(addr, "POST", "/v1/orders", Some(r#"{"sku":"MUG","qty":1}"#));
    assert_eq!(status, 201);

    // The warehouse's metrics show its decision (published once a second).
    let deadline = Instant::now() + LONG;
    loop {
        let text = http_raw(metrics_addr, "GET", "/metrics", b"", None);
        if text.contains("tally_warehouse_decided{process=\"tally-warehouse\"} 1") {
            assert!(text.contains("# TYPE tally_consumer_messages_delivered counter"));
            break;
        }
        assert!(Instant::now() < deadline, "warehouse metrics: {text}");
        thread::sleep(Duration::from_millis(100));
    }

    // tally-stat finds and names all three, running.
    let output = Command::new(tally_demo::bin("tally-stat"))
        .args(["--once", "--json", "--interval", "0.5"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let processes: Vec<(String, String)> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let name = row["process"].as_str().unwrap_or("").to_string();
            (name, row["state"].as_str().unwrap_or("").to_string())
        })
        .collect();
    for name in ["tally-sequencer", "tally-warehouse", "tally-pos STORE-A"] {
        assert!(
            processes
                .iter()
                .any(|(n, state)| n == name && state == "running"),
            "{name} running in {processes:?}"
        );
    }
}
