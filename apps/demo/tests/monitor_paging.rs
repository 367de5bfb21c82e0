//! The monitor's read side at scale (issue 15): listings come in pages with
//! a cursor, never the whole catalogue at once. A cursor walk through
//! `/depleted` and `/availability/{symbol}` returns every item exactly once;
//! `limit` has a default and is capped; one `/depleted` request examines a
//! bounded part of the directory, whatever its size; a bad cursor or limit
//! is a 400 that says what is wrong; `/digest` is computed once per change
//! of the replica and gives a store's subset digest. Most tests drive a
//! [`ReadModel`] directly; the last two go through real HTTP with read1's
//! credentials against the whole appliance in-process and a warehouse, one
//! of them with the `tally-monitor` binary, which takes its limits from the
//! configuration's `[limits]` (a flag overrides one) and stops naming a
//! limit it meets, with the numbers.
//!
//! Test block 103 (`ApplianceSpec::for_test(103, id, …)`; no other suite
//! uses it). Every wait has a deadline.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_client::consumer::monotonic_ns;
use tally_client::replica::{LocationSet, Replica, ReplicaLimits};
use tally_demo::{demo_client, ApplianceSpec};
use tally_monitor::{
    basic_authorization, HttpAuthConfig, HttpCounters, IndexLimits, Monitor, MonitorConfig,
    ReadModel, DEPLETED_SCAN_SKUS_MAX, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX,
};
use tally_warehouse::app::{WarehouseApp, WarehouseAppConfig};
use tally_wire::{
    pad_ascii, system_code, InventoryLevel, LocationDirectory, Message, SkuDirectory, SystemEvent,
    WireMessage,
};

const BLOCK: u8 = 103;
const LONG: Duration = Duration::from_secs(60);

/// A read model fed seq 1, 2, … and answered without HTTP.
struct Feed {
    model: ReadModel,
    next: u64,
    /// Every message sent, to replay into other replicas.
    sent: Vec<Vec<u8>>,
}

impl Feed {
    fn new(limits: ReplicaLimits) -> Feed {
        let indexes = IndexLimits {
            history_cells_max: 64,
            orders_max: 64,
            holds_max: 64,
            ..IndexLimits::DEFAULT
        };
        Feed {
            model: ReadModel::new(limits, indexes, 60_000_000_000, 1000),
            next: 1,
            sent: Vec::new(),
        }
    }

    fn send<M: WireMessage>(&mut self, message: M) {
        let bytes = message.as_bytes();
        assert!(self.model.apply(self.next, &Message::parse(bytes).unwrap()));
        self.sent.push(bytes.to_vec());
        self.next += 1;
    }

    fn location(&mut self, id: u16) {
        self.send(LocationDirectory::new(
            id,
            pad_ascii(&format!("STORE-{id}")).unwrap(),
        ));
    }

    fn sku(&mut self, sku: u32) {
        self.send(SkuDirectory::new(sku, pad_ascii(&symbol(sku)).unwrap()));
    }

    fn get(&self, url: &str) -> (u16, Value) {
        let reply = self
            .model
            .respond("GET", url, monotonic_ns(), &HttpCounters::default());
        (reply.status, serde_json::from_str(&reply.body).unwrap())
    }

    fn ok(&self, url: &str) -> Value {
        let (status, body) = self.get(url);
        assert_eq!(status, 200, "GET {url}: {body}");
        body
    }
}

fn symbol(sku: u32) -> String {
    format!("K{sku:06}")
}

fn symbols(page: &Value) -> Vec<String> {
    page["skus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["symbol"].as_str().unwrap().to_string())
        .collect()
}

/// Walks a listing from its first page, following `next`; returns the
/// pages. At most `pages_max` pages.
fn walk(pages_max: usize, mut get: impl FnMut(Option<u64>) -> Value) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        assert!(pages.len() < pages_max, "more than {pages_max} pages");
        let page = get(after);
        let next = page["next"].as_u64();
        if let (Some(next), Some(before)) = (next, after) {
            assert!(next > before, "the cursor moves on: {before} then {next}");
        }
        pages.push(page);
        match next {
            Some(next) => after = Some(next),
            None => return pages,
        }
    }
}

/// 3 000 SKUs at 2 locations: SKU i is out everywhere when i % 3 == 0, out
/// at STORE-2 only when i % 3 == 1, stocked at both otherwise.
fn three_thousand_skus() -> Feed {
    let mut f = Feed::new(ReplicaLimits {
        skus_max: 4096,
        locations_max: 4,
        cells_max: 4096 * 4,
        ..ReplicaLimits::small()
    });
    f.location(1);
    f.location(2);
    for sku in 0..3000 {
        f.sku(sku);
        let (a, b) = match sku % 3 {
            0 => (0, 0),
            1 => (5, 0),
            _ => (5, 7),
        };
        f.send(InventoryLevel::new(1, sku, a, 0));
        f.send(InventoryLevel::new(2, sku, b, 0));
    }
    f.send(SystemEvent::new(system_code::AUTHORITY_ONLINE));
    f
}

#[test]
fn a_cursor_walk_through_depleted_lists_every_sku_once() {
    let f = three_thousand_skus();
    for (scope, wanted) in [("all", vec![0]), ("any", vec![0, 1])] {
        let expected: Vec<String> = (0..3000)
            .filter(|sku| wanted.contains(&(sku % 3)))
            .map(symbol)
            .collect();
        let pages = walk(100, |after| {
            let cursor = after.map(|a| format!("&after={a}")).unwrap_or_default();
            f.ok(&format!("/depleted?scope={scope}&limit=170{cursor}"))
        });
        let listed: Vec<String> = pages.iter().flat_map(symbols).collect();
        assert_eq!(listed, expected, "scope {scope}: every SKU once, in order");
        for page in &pages {
            assert!(page["skus"].as_array().unwrap().len() <= 170);
            assert_eq!(page["limit"], 170);
        }
        assert!(pages[..pages.len() - 1]
            .iter()
            .all(|p| p["truncated"] == true && p["skus"].as_array().unwrap().len() == 170));
        assert_eq!(pages.last().unwrap()["truncated"], false);
    }
    // Out at STORE-2 only: named, with the position to resume after.
    let page = f.ok("/depleted?scope=any&limit=2");
    assert_eq!(symbols(&page), [symbol(0), symbol(1)]);
    assert_eq!(page["skus"][1]["out_at"][0]["name"], "STORE-2");
    assert_eq!(page["skus"][1]["out_at"].as_array().unwrap().len(), 1);
    assert_eq!(page["skus"][1]["position"], 1);
    assert_eq!(page["next"], 1);
    assert_eq!(page["count"], 2000, "found in the part examined");
}

#[test]
fn the_page_limit_has_a_default_and_a_cap() {
    let f = three_thousand_skus();
    let page = f.ok("/depleted?scope=any");
    assert_eq!(page["limit"], PAGE_LIMIT_DEFAULT as u64);
    assert_eq!(page["skus"].as_array().unwrap().len(), PAGE_LIMIT_DEFAULT);
    for huge in ["1001", "5000", "18446744073709551615"] {
        let page = f.ok(&format!("/depleted?scope=any&limit={huge}"));
        assert_eq!(page["limit"], PAGE_LIMIT_MAX as u64, "limit={huge}");
        assert_eq!(page["skus"].as_array().unwrap().len(), PAGE_LIMIT_MAX);
        assert!(page["next"].is_u64());
    }
    let cells = f.ok("/availability/K000002?limit=100000");
    assert_eq!(cells["limit"], PAGE_LIMIT_MAX as u64);
}

#[test]
fn one_depleted_request_examines_a_bounded_part_of_the_directory() {
    let skus = DEPLETED_SCAN_SKUS_MAX as u32 + 4000;
    let mut f = Feed::new(ReplicaLimits {
        skus_max: skus + 100,
        locations_max: 2,
        cells_max: (skus + 100) * 2,
        ..ReplicaLimits::small()
    });
    f.location(1);
    for sku in 0..skus {
        f.sku(sku);
        // Only the last 10 SKUs are sold out.
        let on_hand = if sku >= skus - 10 { 0 } else { 3 };
        f.send(InventoryLevel::new(1, sku, on_hand, 0));
    }
    let first = f.ok("/depleted");
    assert_eq!(first["skus"].as_array().unwrap().len(), 0);
    assert_eq!(first["scanned"]["skus"], DEPLETED_SCAN_SKUS_MAX as u64);
    assert_eq!(first["next"], DEPLETED_SCAN_SKUS_MAX as u64 - 1);
    assert_eq!(first["truncated"], true, "more to examine");
    let after = first["next"].as_u64().unwrap();
    let second = f.ok(&format!("/depleted?after={after}"));
    let expected: Vec<String> = (skus - 10..skus).map(symbol).collect();
    assert_eq!(symbols(&second), expected);
    assert_eq!(second["next"], Value::Null);
    assert_eq!(second["scanned"]["from"], after + 1);
    assert_eq!(second["scanned"]["skus"], 4000);
}

#[test]
fn availability_pages_through_the_stocked_cells_of_a_sku() {
    let mut f = Feed::new(ReplicaLimits {
        skus_max: 16,
        locations_max: 600,
        cells_max: 16 * 600,
        ..ReplicaLimits::small()
    });
    for location in 1..=500 {
        f.location(location);
    }
    f.sku(7);
    f.sku(8);
    // SKU 7 stocked at 300 of the 500 locations (not those ≡ 0 or 3 mod
    // 5), in an order unlike the ids'.
    let stocked: Vec<u16> = (1..=500u16)
        .rev()
        .filter(|l| l % 5 != 0 && l % 5 != 3)
        .collect();
    for &location in &stocked {
        f.send(InventoryLevel::new(location, 7, u32::from(location), 1));
    }
    let pages = walk(10, |after| {
        let cursor = after.map(|a| format!("&after={a}")).unwrap_or_default();
        f.ok(&format!("/availability/K000007?limit=128{cursor}"))
    });
    assert_eq!(pages.len(), 3);
    let listed: Vec<u64> = pages
        .iter()
        .flat_map(|p| p["locations"].as_array().unwrap().clone())
        .map(|cell| cell["location"].as_u64().unwrap())
        .collect();
    let mut expected: Vec<u64> = stocked.iter().map(|&l| u64::from(l)).collect();
    expected.sort_unstable();
    assert_eq!(listed, expected, "every stocked cell once, ascending by id");
    let on_hand: u64 = expected.iter().sum();
    for page in &pages {
        assert_eq!(page["stocked_locations"], 300);
        assert_eq!(page["total"]["on_hand"], on_hand, "totals cover every cell");
        assert_eq!(page["total"]["reserved"], 300);
    }
    assert_eq!(pages[0]["locations"][0]["name"], "STORE-1");
    // Default page: the first 100.
    let page = f.ok("/availability/K000007");
    assert_eq!(
        page["locations"].as_array().unwrap().len(),
        PAGE_LIMIT_DEFAULT
    );
    assert_eq!(page["next"], page["locations"][99]["location"]);
    // One location, stocked or not; a SKU stocked nowhere lists nothing.
    let one = f.ok("/availability/K000007?location=STORE-5");
    assert_eq!(one["locations"][0]["version"], 0);
    assert_eq!(one["total"]["on_hand"], 0);
    let none = f.ok("/availability/K000008");
    assert_eq!(none["locations"].as_array().unwrap().len(), 0);
    assert_eq!(none["next"], Value::Null);
}

#[test]
fn a_bad_cursor_or_limit_is_a_400_that_says_why() {
    let f = three_thousand_skus();
    for (url, says) in [
        ("/depleted?after=abc", "after"),
        ("/depleted?after=-1", "after"),
        ("/depleted?after=1.5", "after"),
        (
            "/depleted?after=3000",
            "not a position of the SKU directory (0..3000)",
        ),
        ("/depleted?after=99999999999", "after"),
        ("/depleted?limit=0", "limit must be 1 or more"),
        ("/depleted?limit=ten", "limit must be a whole number"),
        ("/depleted?limit=-5", "limit"),
        ("/depleted?limit=", "limit"),
        ("/depleted?cursor=5", "unknown parameter \"cursor\""),
        ("/availability/K000002?after=70000", "after"),
        ("/availability/K000002?after=STORE-1", "after"),
        ("/availability/K000002?limit=0", "limit must be 1 or more"),
        ("/digest?locations=STORE-9", "unknown location"),
        ("/digest?locations=1,,2", "separated by commas"),
        ("/digest?locations=", "separated by commas"),
    ] {
        let (status, body) = f.get(url);
        assert_eq!(status, 400, "GET {url}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(says),
            "GET {url}: {error:?} should say {says:?}"
        );
    }
    // The last position is a valid cursor: an empty last page.
    let last = f.ok("/depleted?after=2999");
    assert_eq!(last["skus"].as_array().unwrap().len(), 0);
    assert_eq!(last["next"], Value::Null);
}

#[test]
fn the_digest_is_computed_once_per_change_and_covers_a_location_set() {
    let mut f = three_thousand_skus();
    let first = f.ok("/digest");
    let computed = f.model.digests_computed();
    for _ in 0..5 {
        assert_eq!(f.ok("/digest")["digest"], first["digest"]);
    }
    assert_eq!(
        f.model.digests_computed(),
        computed,
        "cached while nothing moved"
    );
    assert_eq!(
        first["digest"],
        format!("{:016x}", f.model.replica().digest()).as_str()
    );
    assert_eq!(first["digest_seq"], f.model.replica().last_seq());

    f.send(InventoryLevel::new(2, 5, 99, 0));
    let moved = f.ok("/digest");
    assert_ne!(moved["digest"], first["digest"]);
    assert_eq!(
        moved["digest_seq"],
        first["digest_seq"].as_u64().unwrap() + 1
    );
    assert_eq!(f.model.digests_computed(), computed + 1);

    // A store's subset: what a store node keeping it reports.
    let subset = f.ok("/digest?locations=STORE-2");
    let again = f.ok("/digest?locations=2,STORE-2");
    assert_eq!(subset["digest"], again["digest"]);
    assert_eq!(subset["locations"], serde_json::json!([2]));
    assert_eq!(f.model.digests_computed(), computed + 2);
    let mut node = Replica::keeping(f.model.replica().limits(), LocationSet::of(&[2]));
    for (i, bytes) in f.sent.iter().enumerate() {
        node.apply(i as u64 + 1, &Message::parse(bytes).unwrap());
    }
    assert_eq!(subset["digest"], format!("{:016x}", node.digest()).as_str());
    assert_ne!(subset["digest"], moved["digest"]);
    let both = f.ok("/digest?locations=STORE-1,2");
    assert_eq!(
        both["digest"], moved["digest"],
        "both locations: everything"
    );
}

// ---------------------------------------------------------------------------
// Over HTTP, with credentials, against the appliance and a warehouse.

/// One HTTP/1.0 GET with read1's credentials: (status, JSON body).
fn http_get(addr: SocketAddr, path: &str, authorized: bool) -> (u16, Value) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let header = if authorized {
        let client = demo_client("read1");
        format!(
            "Authorization: {}\r\n",
            basic_authorization(client.username, client.password)
        )
    } else {
        String::new()
    };
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{header}\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).expect("a JSON body"))
}

/// The authority deciding live with 1 200 SKUs at 3 locations (S1..S3),
/// every fourth SKU sold out everywhere: its stop flag and thread.
fn start_warehouse(
    spec: &ApplianceSpec,
    dir: &std::path::Path,
) -> (Arc<AtomicBool>, thread::JoinHandle<anyhow::Result<()>>) {
    let mut csv = String::from("location,sku_symbol,quantity\n");
    for sku in 0..1200u32 {
        for location in ["S1", "S2", "S3"] {
            let quantity = if sku % 4 == 0 { 0 } else { 1 + sku % 7 };
            writeln!(csv, "{location},{},{quantity}", symbol(sku)).unwrap();
        }
    }
    let inventory = dir.join("inventory.csv");
    std::fs::write(&inventory, csv).unwrap();
    let config = WarehouseAppConfig {
        consumer: spec.consumer_config(),
        client: spec.client_config("wh"),
        own_origin: demo_client("wh").client_id,
        limits: ReplicaLimits::small(),
        inventory: Some(inventory),
        snapshot: None,
        snapshot_interval: Duration::ZERO,
        expiry_check_interval: Duration::from_millis(50),
        catch_up_timeout: LONG,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = Arc::clone(&stop);
    let thread = thread::Builder::new()
        .name("warehouse".into())
        .spawn(move || -> anyhow::Result<()> {
            let mut app = WarehouseApp::start(config)?;
            app.run(&thread_stop)?;
            Ok(())
        })
        .unwrap();
    (stop, thread)
}

#[test]
fn paging_over_http_with_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, 1, dir.path().join("journal"));
    let _appliance = spec.start().expect("start the appliance");
    let (stop, warehouse) = start_warehouse(&spec, dir.path());

    let mut config = MonitorConfig::new("127.0.0.1:0".parse().unwrap(), spec.consumer_config());
    config.auth = HttpAuthConfig::from_appliance(&spec.config()).unwrap();
    let monitor = Monitor::start(config).unwrap();
    let addr = monitor.local_addr();
    let started = Instant::now();
    assert!(
        monitor.wait_until(LONG, |model, now_ns| model.readiness(now_ns).is_ok()
            && model.replica().sku_count() == 1200),
        "monitor ready within {LONG:?}: {:?}",
        monitor.status()
    );
    eprintln!("monitor ready after {:?}", started.elapsed());

    assert_eq!(
        http_get(addr, "/depleted", false).0,
        401,
        "credentials needed"
    );
    let pages = walk(10, |after| {
        let cursor = after.map(|a| format!("&after={a}")).unwrap_or_default();
        let (status, page) = http_get(addr, &format!("/depleted?limit=120{cursor}"), true);
        assert_eq!(status, 200, "{page}");
        assert!(page["seq"].is_u64() && page["stale"] == false);
        page
    });
    assert_eq!(pages.len(), 3, "300 sold out, 120 a page");
    let listed: Vec<String> = pages.iter().flat_map(symbols).collect();
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(listed.len(), 300);
    assert_eq!(unique.len(), 300, "each once");
    assert!(listed
        .iter()
        .all(|s| s[1..].parse::<u32>().unwrap() % 4 == 0));

    let (status, body) = http_get(addr, "/depleted?limit=0", true);
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    let (status, cells) = http_get(addr, "/availability/K000005?limit=2", true);
    assert_eq!(status, 200, "{cells}");
    assert_eq!(cells["locations"].as_array().unwrap().len(), 2);
    let next = cells["next"].as_u64().unwrap();
    let (_, rest) = http_get(addr, &format!("/availability/K000005?after={next}"), true);
    assert_eq!(rest["locations"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next"], Value::Null);
    let (status, digest) = http_get(addr, "/digest?locations=S1,S2,S3", true);
    assert_eq!(status, 200, "{digest}");
    let (_, full) = http_get(addr, "/digest", true);
    if full["digest_seq"] == digest["digest_seq"] {
        assert_eq!(
            full["digest"], digest["digest"],
            "every location: the full digest"
        );
    }

    stop.store(true, Ordering::Release);
    warehouse.join().unwrap().expect("the warehouse ran");
    monitor.stop().unwrap();
}

/// Kills the child on drop (a failed assertion must not leave it running).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tally-monitor` with `config` and `flags`, listening on `listen`.
fn monitor_binary(config: &std::path::Path, listen: SocketAddr, flags: &[&str]) -> ChildGuard {
    let child = Command::new(tally_demo::bin("tally-monitor"))
        .arg("--config")
        .arg(config)
        .args(["--listen", &listen.to_string()])
        .args(["--user", "read1", "--password", "readpass"])
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ChildGuard(child)
}

#[test]
fn the_binary_takes_its_limits_from_the_configuration_and_says_which_it_met() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, 2, dir.path().join("journal"));
    let _appliance = spec.start().expect("start the appliance");
    let (stop, warehouse) = start_warehouse(&spec, dir.path());
    // The monitor's configuration file holds fewer SKUs than the stream.
    let config = dir.path().join("tally.toml");
    std::fs::write(
        &config,
        format!("{}\n[limits]\nskus_max = 500\n", spec.toml()),
    )
    .unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], spec.port_base + 4));

    let mut small = monitor_binary(&config, listen, &[]);
    let deadline = Instant::now() + LONG;
    let exit = loop {
        if let Some(exit) = small.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "tally-monitor never met its limit"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(!exit.success(), "{exit:?}");
    let mut stderr = String::new();
    small
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("limit met: skus_max = 500: ")
            && stderr.contains("SKU directory entries did not fit"),
        "{stderr}"
    );

    // A flag overrides the file's limit for one process: it serves.
    let _large = monitor_binary(&config, listen, &["--skus-max", "2000"]);
    let deadline = Instant::now() + LONG;
    loop {
        if let Ok(mut stream) = TcpStream::connect(listen) {
            write!(stream, "GET /ready HTTP/1.0\r\n\r\n").unwrap();
            let mut reply = String::new();
            let _ = stream.read_to_string(&mut reply);
            if reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "tally-monitor --skus-max 2000 never ready"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let (status, page) = http_get(listen, "/depleted?limit=1000", true);
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["skus"].as_array().unwrap().len(), 300);

    stop.store(true, Ordering::Release);
    warehouse.join().unwrap().expect("the warehouse ran");
}
