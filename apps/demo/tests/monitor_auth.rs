//! Who may read the monitor over HTTP (issue 13), over real HTTP on
//! loopback against the whole appliance in-process: `/health` and `/ready`
//! for anyone; every other endpoint 401 (with `WWW-Authenticate`) without
//! or with wrong credentials, 403 for a role that may not read, 200 for one
//! that may; a wrong-password flood from one address is answered 429 after
//! its few verifications, while a cached good credential from the same
//! address still reads; `/metrics` opened to a scraper by configuration.
//!
//! Test block 107 (`ApplianceSpec::for_test(107, id, …)`; no other suite
//! uses it). Every wait has a deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tally_demo::{demo_client, ApplianceSpec};
use tally_monitor::{basic_authorization, HttpAuthConfig, Monitor, MonitorConfig};

const BLOCK: u8 = 107;

struct HttpReply {
    status: u16,
    head: String,
}

/// One HTTP/1.0 request, with `Authorization: authorization` when given.
fn get(addr: SocketAddr, path: &str, authorization: Option<&str>) -> HttpReply {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let header = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{header}\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, _) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("status line in {head:?}"));
    HttpReply {
        status,
        head: head.to_string(),
    }
}

fn credentials(username: &str) -> String {
    let client = demo_client(username);
    basic_authorization(client.username, client.password)
}

#[test]
fn http_needs_credentials_of_a_role_that_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, 1, dir.path().join("journal"));
    let appliance = spec.start().unwrap();
    let mut config = MonitorConfig::new("127.0.0.1:0".parse().unwrap(), spec.consumer_config());
    config.auth = HttpAuthConfig::from_appliance(&spec.config()).unwrap();
    assert!(!config.auth.metrics_public, "closed by default");
    // Each source may cause 10 password verifications back to back, then 2
    // a second (the defaults are 5 and 2).
    config.auth.verification_burst = 10;
    config.auth.verifications_per_sec_per_source = 2;
    let monitor = Monitor::start(config).unwrap();
    let addr = monitor.local_addr();
    let reader = credentials("read1");

    // Anyone: health and readiness.
    for path in ["/health", "/ready"] {
        let reply = get(addr, path, None);
        assert!(
            reply.status == 200 || reply.status == 503,
            "{path}: {}",
            reply.status
        );
    }
    // Without credentials, malformed ones (no password check), a wrong
    // password, an unknown user (one check each): 401, with a challenge.
    let challenged = |reply: HttpReply| {
        assert!(
            reply
                .head
                .to_ascii_lowercase()
                .contains("www-authenticate: basic realm="),
            "{}",
            reply.head
        );
        reply.status
    };
    for authorization in [None, Some("Bearer abc"), Some("Basic !!!")] {
        for path in ["/digest", "/metrics", "/availability/MUG", "/nowhere"] {
            let status = challenged(get(addr, path, authorization));
            assert_eq!(status, 401, "{path} with {authorization:?}");
        }
    }
    let first_check = Instant::now();
    let wrong = basic_authorization("read1", "nope");
    let unknown = basic_authorization("nobody", "readpass");
    assert_eq!(challenged(get(addr, "/digest", Some(&wrong))), 401);
    assert_eq!(challenged(get(addr, "/metrics", Some(&unknown))), 401);
    // A till's credentials are good but its role may not read: 403.
    assert_eq!(get(addr, "/digest", Some(&credentials("pos1"))).status, 403);
    // Readers, back office and the warehouse read.
    for username in ["read1", "ops1", "wh"] {
        let reply = get(addr, "/digest", Some(&credentials(username)));
        assert_eq!(reply.status, 200, "{username}");
    }
    assert_eq!(get(addr, "/metrics", Some(&reader)).status, 200);

    // A wrong-password flood from this address: a few verifications (the
    // burst), then 429 without one, answered at once.
    let started = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..40 {
        let guess = basic_authorization("read1", &format!("guess{i}"));
        statuses.push(get(addr, "/digest", Some(&guess)).status);
    }
    let flood = started.elapsed();
    let checking = first_check.elapsed();
    let unauthorized = statuses.iter().filter(|&&s| s == 401).count();
    let throttled = statuses.iter().filter(|&&s| s == 429).count();
    eprintln!(
        "40 wrong passwords in {flood:?}: {unauthorized} verified and refused (401), \
         {throttled} throttled (429)"
    );
    assert_eq!(unauthorized + throttled, 40);
    // 6 checks before the flood (wrong, unknown, pos1, read1, ops1, wh):
    // 4 left of the burst, plus 2 a second since the first check.
    assert!(
        unauthorized as f64 <= 4.0 + 2.0 * checking.as_secs_f64() + 1.0,
        "{unauthorized} verifications in {flood:?}"
    );
    assert!(throttled >= 20, "{throttled}");
    // The reader's credential, verified before, is cached: it still reads
    // from the throttled address, without a verification.
    let reply = get(addr, "/digest", Some(&reader));
    assert_eq!(reply.status, 200);
    // The answers are counted by status.
    let metrics = {
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nAuthorization: {reader}\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    };
    for code in ["401", "403", "429"] {
        assert!(
            metrics.contains(&format!(
                "tally_monitor_http_requests_total{{code=\"{code}\"}}"
            )),
            "{code} counted"
        );
    }
    monitor.stop().unwrap();

    // /metrics opened to a scraper by configuration; nothing else is.
    let mut config = MonitorConfig::new("127.0.0.1:0".parse().unwrap(), spec.consumer_config());
    config.auth = HttpAuthConfig::from_appliance(&spec.config()).unwrap();
    config.auth.metrics_public = true;
    let monitor = Monitor::start(config).unwrap();
    let addr = monitor.local_addr();
    assert_eq!(get(addr, "/metrics", None).status, 200);
    assert_eq!(get(addr, "/digest", None).status, 401);
    monitor.stop().unwrap();
    appliance.stop().unwrap();
}
