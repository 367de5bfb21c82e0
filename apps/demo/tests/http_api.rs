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
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    // The first line comes once the stack is ready (or never: the child
    // exits and the read ends).
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let summary: Value = serde_json::from_str(&line).unwrap_or_else(|error| {
        let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
        panic!("first line {line:?} is not JSON: {error}; stderr: {stderr}")
    });
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
    let password = tally_demo::DEMO_CLIENTS
        .iter()
        .find(|c| c.username == user)
        .map_or("wrong", |c| c.password);
    let auth = basic(user, password);
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
        "/v1/orders",
        "/v1/holds",
        "/v1/holds/{id}/confirm",
        "/v1/holds/{id}/release",
        "/v1/transfers",
        "/v1/recounts",
        "/v1/adjustments",
    ] {
        assert!(paths.contains_key(route), "openapi.json lacks {route}");
    }
    for method in ["get", "patch", "delete"] {
        assert!(paths["/v1/orders/{id}"][method].is_object(), "{method}");
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
        Ok(reply) => assert_eq!(reply.status, 413),
        // The server may close before reading the whole body.
        Err(error) => assert!(
            matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{error}"
        ),
    }
    // A write body over 1 KiB (within the 16 KiB read limit): 413.
    let padded = format!(r#"{{"sku":"{}","qty":1}}"#, "X".repeat(2048));
    let reply = request(
        served.http,
        "POST",
        "/v1/orders",
        &[
            ("Authorization", &basic("pos1", "pos1pass")),
            ("Idempotency-Key", "big"),
        ],
        Some(padded.as_bytes()),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(reply.status, 413, "{}", reply.body);
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

/// POST/PATCH/DELETE `path` as `user` with `key` and `body`.
fn write(
    http: SocketAddr,
    user: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> Reply {
    let password = match user {
        "read1" => "readpass".to_string(),
        _ => format!("{user}pass"),
    };
    let auth = basic(user, &password);
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    if let Some(key) = key {
        headers.push(("Idempotency-Key", key));
    }
    request(http, method, path, &headers, Some(body.as_bytes()), TIMEOUT).unwrap()
}

fn available(served_http: SocketAddr, sku: &str, location: &str) -> u64 {
    let auth = basic("read1", "readpass");
    let reply = request(
        served_http,
        "GET",
        &format!("/v1/skus/{sku}?location={location}"),
        &[("Authorization", &auth)],
        None,
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["locations"][0]["available"].as_u64().unwrap()
}

/// Waits until the read side shows `want` available.
fn wait_available(http: SocketAddr, sku: &str, location: &str, want: u64) {
    let deadline = Instant::now() + TIMEOUT;
    while available(http, sku, location) != want {
        assert!(
            Instant::now() < deadline,
            "{sku}@{location} never reached {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_write_accepted_and_rejected() {
    let served = serve(54);
    let http = served.http;
    let order = r#"{"sku":"TSHIRT-WHT-M","qty":2,"location":"STORE-DOWNTOWN","id":10}"#;
    let placed = write(http, "pos1", "POST", "/v1/orders", Some("o-10"), order);
    assert_eq!(placed.status, 201, "{}", placed.body);
    assert_eq!(placed.header("location"), Some("/v1/orders/1-10"));
    let body = placed.json();
    assert_eq!(body["outcome"], "accepted");
    assert_eq!(body["effect"], "filled");
    assert!(body["seq"].as_u64().unwrap() > body["cmd_seq"].as_u64().unwrap());
    assert_eq!(body["cells"][0]["available"], 14);
    wait_available(http, "TSHIRT-WHT-M", "STORE-DOWNTOWN", 14);
    let read = get(&served, "read1", "/v1/orders/1-10");
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json()["qty"], 2);

    let cases: &[(&str, &str, &str, &str, &str, u16)] = &[
        (
            "pos1",
            "PATCH",
            "/v1/orders/10",
            "m-10",
            r#"{"qty":1}"#,
            200,
        ),
        ("pos1", "DELETE", "/v1/orders/10", "x-10", "", 200),
        ("pos1", "DELETE", "/v1/orders/10", "x-10b", "", 404),
        (
            "pos1",
            "POST",
            "/v1/orders",
            "o-big",
            r#"{"sku":"TSHIRT-WHT-M","qty":100000,"location":"STORE-DOWNTOWN"}"#,
            409,
        ),
        (
            "pos1",
            "POST",
            "/v1/orders",
            "o-unknown",
            r#"{"sku":"NO-SUCH","qty":1}"#,
            404,
        ),
        (
            "pos1",
            "POST",
            "/v1/orders",
            "o-where",
            r#"{"sku":"TSHIRT-WHT-M","qty":1,"location":"MARS"}"#,
            404,
        ),
        (
            "pos1",
            "POST",
            "/v1/orders",
            "o-zero",
            r#"{"sku":"TSHIRT-WHT-M","qty":0}"#,
            422,
        ),
        ("pos1", "POST", "/v1/orders", "o-json", r#"{"sku":"#, 422),
        (
            "pos1",
            "POST",
            "/v1/orders",
            "o-field",
            r#"{"sku":"TSHIRT-WHT-M","qty":1,"price":3}"#,
            422,
        ),
        (
            "pos1",
            "POST",
            "/v1/holds",
            "h-1",
            r#"{"sku":"TSHIRT-WHT-M","qty":1,"location":"STORE-DOWNTOWN","ttl_ms":60000,"id":20}"#,
            201,
        ),
        ("pos1", "POST", "/v1/holds/20/confirm", "h-1c", "", 200),
        ("pos1", "POST", "/v1/holds/20/release", "h-1r", "", 404),
        (
            "pos1",
            "POST",
            "/v1/holds",
            "h-2",
            r#"{"sku":"TSHIRT-WHT-M","qty":1,"location":"STORE-DOWNTOWN","ttl_ms":60000,"id":21}"#,
            201,
        ),
        ("pos1", "POST", "/v1/holds/21/release", "h-2r", "", 200),
        ("pos1", "POST", "/v1/holds/2-21/release", "h-2x", "", 403),
        (
            "ops1",
            "POST",
            "/v1/transfers",
            "t-1",
            r#"{"sku":"TSHIRT-WHT-M","qty":3,"from":"DC-NORTH","to":"STORE-AIRPORT","id":30}"#,
            201,
        ),
        (
            "ops1",
            "POST",
            "/v1/transfers",
            "t-2",
            r#"{"sku":"TSHIRT-WHT-M","qty":9999,"from":"DC-NORTH","to":"STORE-AIRPORT","id":31}"#,
            409,
        ),
        (
            "pos1",
            "POST",
            "/v1/transfers",
            "t-3",
            r#"{"sku":"TSHIRT-WHT-M","qty":1,"from":"DC-NORTH","to":"STORE-AIRPORT"}"#,
            403,
        ),
        (
            "ops1",
            "POST",
            "/v1/recounts",
            "r-1",
            r#"{"sku":"TSHIRT-WHT-M","location":"DC-NORTH","on_hand":100,"expected_version":1}"#,
            409,
        ),
        (
            "ops1",
            "POST",
            "/v1/adjustments",
            "a-1",
            r#"{"sku":"TSHIRT-WHT-M","location":"DC-NORTH","qty":5,"reason":"restock"}"#,
            201,
        ),
        (
            "ops1",
            "POST",
            "/v1/adjustments",
            "a-2",
            r#"{"sku":"TSHIRT-WHT-M","location":"DC-NORTH","qty":5,"reason":"gift"}"#,
            422,
        ),
        (
            "read1",
            "POST",
            "/v1/orders",
            "o-reader",
            r#"{"sku":"TSHIRT-WHT-M","qty":1}"#,
            403,
        ),
        (
            "pos1",
            "POST",
            "/v1/orders",
            "",
            r#"{"sku":"TSHIRT-WHT-M","qty":1}"#,
            422,
        ),
    ];
    for &(user, method, path, key, body, status) in cases {
        // An empty key: one with a space instead (invalid: 422).
        let key = if key.is_empty() { "has space" } else { key };
        let reply = write(http, user, method, path, Some(key), body);
        assert_eq!(
            reply.status, status,
            "{user} {method} {path} {body}: {}",
            reply.body
        );
        assert!(reply.json().is_object());
    }
    // A recount with the version the read side shows: accepted.
    let cell = get(&served, "read1", "/v1/skus/TSHIRT-WHT-M?location=DC-NORTH").json();
    let version = cell["locations"][0]["version"].as_u64().unwrap();
    let recount = format!(
        r#"{{"sku":"TSHIRT-WHT-M","location":"DC-NORTH","on_hand":100,"expected_version":{version}}}"#
    );
    let reply = write(http, "ops1", "POST", "/v1/recounts", Some("r-2"), &recount);
    assert_eq!(reply.status, 201, "{}", reply.body);
    wait_available(http, "TSHIRT-WHT-M", "DC-NORTH", 100);
    assert_eq!(get(&served, "read1", "/v1/transfers/2-30").status, 200);
    // No key: 400; the same key with another body: 422.
    assert_eq!(
        write(http, "pos1", "POST", "/v1/orders", None, order).status,
        400
    );
    let other = r#"{"sku":"TSHIRT-WHT-M","qty":3,"location":"STORE-DOWNTOWN","id":10}"#;
    assert_eq!(
        write(http, "pos1", "POST", "/v1/orders", Some("o-10"), other).status,
        422
    );
}

#[test]
fn twenty_clients_on_one_sku_never_oversell() {
    let served = serve(56);
    let http = served.http;
    // STORE-AIRPORT holds 5 of TSHIRT-WHT-M in the sample inventory.
    let start = available(http, "TSHIRT-WHT-M", "STORE-AIRPORT");
    assert!(start > 0);
    // Each user's password is verified once (argon2, rate-limited per
    // address: 20 first requests at once would meet the 429 throttle),
    // then remembered.
    for user in ["pos1", "pos2", "pos3", "pos4"] {
        assert_eq!(
            get(&served, user, "/v1/skus").status,
            403,
            "{user} verified"
        );
    }
    let threads: Vec<_> = (0..20)
        .map(|client| {
            std::thread::spawn(move || {
                let user = format!("pos{}", client % 4 + 1);
                let mut sold = 0u64;
                for attempt in 0..5 {
                    let key = format!("c{client}-{attempt}");
                    let reply = write(
                        http,
                        &user,
                        "POST",
                        "/v1/orders",
                        Some(&key),
                        r#"{"sku":"TSHIRT-WHT-M","qty":1,"location":"STORE-AIRPORT"}"#,
                    );
                    match reply.status {
                        201 => sold += 1,
                        409 => assert_eq!(reply.json()["reason"], "I", "{}", reply.body),
                        other => panic!("{other}: {}", reply.body),
                    }
                }
                sold
            })
        })
        .collect();
    let sold: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(sold, start, "every unit sold once, none twice");
    wait_available(http, "TSHIRT-WHT-M", "STORE-AIRPORT", 0);
    let health = get(&served, "read1", "/health").json();
    assert_eq!(health["oversold"], 0);
}

#[test]
fn the_same_key_changes_stock_once_also_across_a_restart() {
    let stack = Stack::new(57);
    let _appliance = stack.spec.start().unwrap();
    let _warehouse = stack.warehouse();
    let http = stack.http;
    let start_monitor = || stack.monitor(&[]);
    let order = r#"{"sku":"TSHIRT-WHT-M","qty":2,"location":"DC-NORTH"}"#;
    let monitor = start_monitor();
    let before = available(http, "TSHIRT-WHT-M", "DC-NORTH");
    let first = write(http, "pos1", "POST", "/v1/orders", Some("once"), order);
    assert_eq!(first.status, 201, "{}", first.body);
    let again = write(http, "pos1", "POST", "/v1/orders", Some("once"), order);
    assert_eq!(
        (again.status, again.body.as_str()),
        (201, first.body.as_str())
    );
    drop(monitor); // killed: a crash, not a clean stop
    let _monitor = start_monitor();
    let after_restart = write(http, "pos1", "POST", "/v1/orders", Some("once"), order);
    assert_eq!(
        (after_restart.status, after_restart.body.as_str()),
        (201, first.body.as_str())
    );
    assert_eq!(after_restart.header("location"), first.header("location"));
    // A new key sells again: the stock moved by exactly two orders.
    let second = write(http, "pos1", "POST", "/v1/orders", Some("twice"), order);
    assert_eq!(second.status, 201, "{}", second.body);
    wait_available(http, "TSHIRT-WHT-M", "DC-NORTH", before - 4);
    let other = r#"{"sku":"TSHIRT-WHT-M","qty":1,"location":"DC-NORTH"}"#;
    assert_eq!(
        write(http, "pos1", "POST", "/v1/orders", Some("once"), other).status,
        422
    );
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An appliance, the warehouse and `tally-monitor` with writes on, for the
/// tests that stop parts of the stack.
struct Stack {
    dir: tempfile::TempDir,
    spec: tally_demo::ApplianceSpec,
    http: SocketAddr,
}

impl Stack {
    fn new(id: u8) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let spec = tally_demo::ApplianceSpec::for_test(100, id, dir.path().join("journal"));
        std::fs::write(dir.path().join("tally.toml"), spec.toml()).unwrap();
        let http = SocketAddr::from(([127, 0, 0, 1], spec.port_base + 4));
        Stack { dir, spec, http }
    }

    fn warehouse(&self) -> tally_demo::RunningWarehouse {
        let inventory = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/inventory.csv");
        let limits = tally_client::replica::ReplicaLimits::from_config(&self.spec.config().limits);
        tally_demo::RunningWarehouse::start(&self.spec, std::path::Path::new(inventory), limits)
    }

    /// `tally-monitor` with `flags`, once `/health` answers.
    fn monitor(&self, flags: &[&str]) -> ChildGuard {
        let child = Command::new(tally_demo::bin("tally-monitor"))
            .arg("--config")
            .arg(self.dir.path().join("tally.toml"))
            .args([
                "--listen",
                &self.http.to_string(),
                "--user",
                "read1",
                "--password",
                "readpass",
            ])
            .arg("--state-dir")
            .arg(self.dir.path().join("http-state"))
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let guard = ChildGuard(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while request(self.http, "GET", "/ready", &[], None, TIMEOUT)
            .map(|r| r.status)
            .ok()
            != Some(200)
        {
            assert!(Instant::now() < deadline, "tally-monitor never ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        guard
    }
}

#[test]
fn no_decision_in_time_is_202_and_an_unreachable_appliance_503() {
    let stack = Stack::new(59);
    let appliance = stack.spec.start().unwrap();
    let warehouse = stack.warehouse();
    let _monitor = stack.monitor(&["--decision-timeout-ms", "500"]);
    let order = r#"{"sku":"TSHIRT-WHT-M","qty":1,"location":"DC-NORTH","id":5}"#;
    assert_eq!(
        write(
            stack.http,
            "pos1",
            "POST",
            "/v1/orders",
            Some("warm"),
            r#"{"sku":"TSHIRT-WHT-M","qty":1}"#
        )
        .status,
        201
    );
    // Nobody decides: 202 with where to look, again on a retry.
    warehouse.stop().unwrap();
    let pending = write(
        stack.http,
        "pos1",
        "POST",
        "/v1/orders",
        Some("late"),
        order,
    );
    assert_eq!(pending.status, 202, "{}", pending.body);
    assert_eq!(pending.header("location"), Some("/v1/orders/1-5"));
    let retry = write(
        stack.http,
        "pos1",
        "POST",
        "/v1/orders",
        Some("late"),
        order,
    );
    assert_eq!(retry.status, 202, "{}", retry.body);
    // The warehouse comes back and decides it: the retry gets the decision.
    let _warehouse = stack.warehouse();
    let deadline = Instant::now() + Duration::from_secs(30);
    let decided = loop {
        let reply = write(
            stack.http,
            "pos1",
            "POST",
            "/v1/orders",
            Some("late"),
            order,
        );
        if reply.status != 202 {
            break reply;
        }
        assert!(Instant::now() < deadline, "never decided");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(decided.status, 201, "{}", decided.body);
    // The appliance stops: a user without a session gets 503 + Retry-After.
    appliance.stop().unwrap();
    let refused = write(
        stack.http,
        "pos2",
        "POST",
        "/v1/orders",
        Some("down"),
        order,
    );
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
}

#[test]
fn events_too_old_to_replay_are_410() {
    let stack = Stack::new(60);
    let _appliance = stack.spec.start().unwrap();
    let _warehouse = stack.warehouse();
    // 16 events held: the session-start broadcast (120 levels) overflows it.
    let _monitor = stack.monitor(&["--events-max", "16"]);
    let auth = basic("read1", "readpass");
    let gone = request(
        stack.http,
        "GET",
        "/v1/events?after=0",
        &[("Authorization", &auth)],
        None,
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(gone.status, 410, "{}", gone.body);
    let oldest = gone.json()["oldest_resumable"].as_u64().unwrap();
    assert!(oldest > 100, "{oldest}");
    let id = oldest.to_string();
    let mut stream = EventStream::open(
        stack.http,
        "/v1/events",
        &[("Authorization", &auth), ("Last-Event-ID", &id)],
    )
    .unwrap()
    .expect("resumable from the oldest held");
    let event = stream.next(Instant::now() + TIMEOUT).expect("an event");
    assert!(!event.event.is_empty());
}

#[test]
fn one_address_cannot_hold_every_connection() {
    let stack = Stack::new(61);
    let _appliance = stack.spec.start().unwrap();
    let _warehouse = stack.warehouse();
    let _monitor = stack.monitor(&["--connections-per-source-max", "4"]);
    // Four idle connections from this address: the limit.
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(stack.http).unwrap())
        .collect();
    // Let the listener accept them all before the fifth arrives.
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = TcpStream::connect(stack.http).unwrap();
    fifth.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = fifth.write_all(b"GET /health HTTP/1.0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = fifth.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "the fifth was served: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // One closes: the address is served again.
    drop(idle);
    let deadline = Instant::now() + TIMEOUT;
    while request(stack.http, "GET", "/health", &[], None, TIMEOUT)
        .map(|r| r.status)
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(20));
    }
}
