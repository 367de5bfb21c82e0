//! The HTTP service's `/v1` API, events and dashboard against the real
//! binary: `tally-demo --serve --json` (the appliance, the warehouse with
//! the sample inventory and the HTTP service), driven over loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_demo::http::{basic, request, EventStream, Reply};

const TIMEOUT: Duration = Duration::from_secs(10);

/// `tally-demo --serve` as a child process, killed on drop.
struct Served {
    child: Child,
    http: SocketAddr,
    summary: Value,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tally-demo --serve --json` for test `id` (block 100; ids of the
/// `http` range 51..=100): ports 20000 + 5·id …+4, group 239.255.100.id.
fn serve(id: u8) -> Served {
    assert!((51..=100).contains(&id));
    let dir = tempfile::tempdir().unwrap();
    let port_base = 20_000 + 5 * u16::from(id);
    let mut child = Command::new(tally_demo::bin("tally-demo"))
        .args(["--serve", "--json", "--inventory"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/inventory.csv"
        ))
        .args(["--port-base", &port_base.to_string()])
        .args(["--group", &format!("239.255.100.{id}")])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    // The first line comes once the stack is ready (or never: the child
    // exits and the read ends).
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let summary: Value = serde_json::from_str(&line)
        .unwrap_or_else(|error| panic!("first line {line:?} is not JSON: {error}"));
    let http: SocketAddr = summary["http"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    Served {
        child,
        http,
        summary,
        _dir: dir,
    }
}

fn get(served: &Served, user: &str, path: &str) -> Reply {
    let password = served.summary["credentials"]
        .as_object()
        .unwrap()
        .values()
        .find(|c| c["user"] == user)
        .map(|c| c["password"].as_str().unwrap().to_string())
        .unwrap_or_else(|| "wrong".to_string());
    let auth = basic(user, &password);
    request(
        served.http,
        "GET",
        path,
        &[("Authorization", &auth)],
        None,
        TIMEOUT,
    )
    .unwrap()
}

fn assert_fresh(reply: &Reply) {
    let body = reply.json();
    assert!(
        body["seq"].is_u64() && body["lag"].is_u64() && body["stale"].is_boolean(),
        "no seq/lag/stale in {body}"
    );
}

#[test]
fn serve_json_reads_openapi_and_dashboard() {
    let served = serve(51);
    let summary = &served.summary;
    assert!(summary["config"].as_str().unwrap().ends_with("tally.toml"));
    assert!(std::path::Path::new(summary["config"].as_str().unwrap()).exists());
    for role in ["pos", "ops", "reader", "authority"] {
        assert!(summary["credentials"][role]["user"].is_string(), "{role}");
        assert!(
            summary["credentials"][role]["password"].is_string(),
            "{role}"
        );
    }
    assert_eq!(served.http.port(), 20_000 + 5 * 51 + 4);

    // Paging through the SKU directory: 40 SKUs in pages of 15.
    let mut after = None;
    let mut symbols = Vec::new();
    loop {
        let path = match after {
            None => "/v1/skus?limit=15".to_string(),
            Some(a) => format!("/v1/skus?limit=15&after={a}"),
        };
        let page = get(&served, "read1", &path);
        assert_eq!(page.status, 200, "{}", page.body);
        assert_fresh(&page);
        let body = page.json();
        for sku in body["skus"].as_array().unwrap() {
            symbols.push(sku["symbol"].as_str().unwrap().to_string());
            assert_eq!(
                sku["available"].as_u64().unwrap(),
                sku["on_hand"].as_u64().unwrap() - sku["reserved"].as_u64().unwrap()
            );
        }
        match body["next"].as_u64() {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(symbols.len(), 40);
    assert_eq!(symbols[0], "TSHIRT-WHT-M");

    // One SKU: per location, with version; by symbol or by id.
    let sku = get(&served, "read1", "/v1/skus/TSHIRT-WHT-M");
    assert_eq!(sku.status, 200);
    assert_fresh(&sku);
    let body = sku.json();
    assert_eq!(body["total"]["on_hand"], 140 + 16 + 5);
    let locations = body["locations"].as_array().unwrap();
    assert_eq!(locations.len(), 3);
    assert!(locations.iter().all(|l| l["version"].as_u64().unwrap() > 0));
    assert_eq!(
        get(&served, "read1", "/v1/skus/1").json()["symbol"],
        "TSHIRT-WHT-M"
    );

    // Rejected reads: unknown things 404, bad paging 400, all with seq.
    for (path, status) in [
        ("/v1/skus/NO-SUCH-SKU", 404),
        ("/v1/orders/1-999", 404),
        ("/v1/orders/999", 404),
        ("/v1/holds/1-999", 404),
        ("/v1/transfers/2-999", 404),
        ("/v1/skus?limit=0", 400),
        ("/v1/skus?after=40", 400),
        ("/v1/skus?page=2", 400),
        ("/v1/orders/x-1", 400),
        ("/v1/nothing", 404),
    ] {
        let reply = get(&served, "read1", path);
        assert_eq!(reply.status, status, "GET {path}: {}", reply.body);
        assert_fresh(&reply);
        assert!(reply.json()["error"].is_string(), "GET {path}");
    }

    // Credentials: none or wrong → 401 with a challenge; a pos user may
    // not read (default read_roles) → 403.
    let none = request(served.http, "GET", "/v1/skus", &[], None, TIMEOUT).unwrap();
    assert_eq!(none.status, 401);
    assert!(none
        .header("www-authenticate")
        .unwrap()
        .starts_with("Basic"));
    assert_eq!(get(&served, "nobody", "/v1/skus").status, 401);
    assert_eq!(get(&served, "pos1", "/v1/skus").status, 403);

    // The OpenAPI document parses and names every route served.
    let openapi = get(&served, "read1", "/v1/openapi.json");
    assert_eq!(openapi.status, 200);
    let doc = openapi.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for route in [
        "/v1/skus",
        "/v1/skus/{sku}",
        "/v1/orders/{id}",
        "/v1/holds/{id}",
        "/v1/transfers/{id}",
        "/v1/events",
        "/v1/openapi.json",
    ] {
        assert!(paths.contains_key(route), "openapi.json lacks {route}");
    }
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                operation["responses"].is_object(),
                "{method} {path} has no responses"
            );
        }
    }

    // The dashboard: one HTML page that follows /v1/events.
    let page = get(&served, "read1", "/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.body.contains("/v1/events") && page.body.contains("id=\"seq\""));

    // The old paths still answer.
    assert_eq!(
        get(&served, "read1", "/availability/TSHIRT-WHT-M").status,
        200
    );
    assert_eq!(get(&served, "read1", "/health").status, 200);
}

#[test]
fn events_resume_from_last_event_id_without_gap_or_duplicate() {
    let served = serve(52);
    let auth = basic("read1", "readpass");
    // From seq 0: the warehouse's session-start levels (I) as decisions,
    // with restocked notifications; ids strictly increase, one per seq.
    let mut stream = EventStream::open(
        served.http,
        "/v1/events?after=0",
        &[("Authorization", &auth)],
    )
    .unwrap()
    .expect("200");
    let deadline = Instant::now() + TIMEOUT;
    let mut ids = Vec::new();
    let mut seqs_with_events = Vec::new();
    while ids.len() < 30 {
        let event = stream.next(deadline).expect("events before the deadline");
        if event.event == "stats" {
            continue;
        }
        let data: Value = serde_json::from_str(&event.data).unwrap();
        let seq = data["seq"].as_u64().unwrap();
        seqs_with_events.push(seq);
        if let Some(id) = event.id {
            assert_eq!(id.parse::<u64>().unwrap(), seq, "id is the stream seq");
            ids.push(seq);
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    drop(stream);

    // Resume after the 10th id: the next event is the 11th, nothing
    // repeated, nothing skipped.
    let resume = ids[9].to_string();
    let mut resumed = EventStream::open(
        served.http,
        "/v1/events",
        &[("Authorization", &auth), ("Last-Event-ID", &resume)],
    )
    .unwrap()
    .expect("200");
    let mut next_ids = Vec::new();
    while next_ids.len() < 20 {
        let event = resumed.next(deadline).expect("resumed events");
        if let Some(id) = event.id.filter(|_| event.event != "stats") {
            next_ids.push(id.parse::<u64>().unwrap());
        }
    }
    assert_eq!(next_ids, ids[10..30].to_vec());

    // Hostile or impossible resumes: a clear answer, no stream.
    for (value, status) in [("abc", 400), ("-1", 400), ("99999999999999999999999", 400)] {
        let reply = EventStream::open(
            served.http,
            "/v1/events",
            &[("Authorization", &auth), ("Last-Event-ID", value)],
        )
        .unwrap()
        .err()
        .unwrap_or_else(|| panic!("Last-Event-ID {value} opened a stream"));
        assert_eq!(reply.status, status, "{value}: {}", reply.body);
    }
    let unknown = request(
        served.http,
        "GET",
        "/v1/events?from=1",
        &[("Authorization", &auth)],
        None,
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(unknown.status, 400);
}

#[test]
fn hostile_requests_get_bounded_answers() {
    let served = serve(53);
    let auth = basic("read1", "readpass");
    // A body larger than the limit: refused without reading it all.
    let huge = vec![b'x'; 1 << 20];
    let reply = request(
        served.http,
        "POST",
        "/v1/orders",
        &[
            ("Authorization", &basic("pos1", "pos1pass")),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "k"),
        ],
        Some(&huge),
        TIMEOUT,
    );
    match reply {
        Ok(reply) => assert!(matches!(reply.status, 413 | 405), "{}", reply.status),
        // The server may close before reading the whole body.
        Err(error) => assert!(
            matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{error}"
        ),
    }
    // A malformed Authorization header: 401, not a crash.
    for value in ["Basic", "Basic !!!!", "Bearer x", &"A".repeat(4000)] {
        let reply = request(
            served.http,
            "GET",
            "/v1/skus",
            &[("Authorization", value)],
            None,
            TIMEOUT,
        )
        .unwrap();
        assert_eq!(reply.status, 401, "{value:.20}");
    }
    // A header block far beyond any sane size: refused, the server lives.
    let mut stream = TcpStream::connect(served.http).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = write!(
        stream,
        "GET /v1/skus HTTP/1.1\r\nHost: x\r\nX-Fill: {}\r\n\r\n",
        "y".repeat(1 << 20)
    );
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431") || text.starts_with("HTTP/1.1 400"),
        "{text:.80}"
    );
    // Garbage instead of HTTP: closed with 400 or nothing.
    let mut stream = TcpStream::connect(served.http).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 400"));
    // Still serving.
    let reply = request(
        served.http,
        "GET",
        "/v1/skus?limit=1",
        &[("Authorization", &auth)],
        None,
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(reply.status, 200);
}
