//! The retransmit server and the replay feed against hostile and careless
//! clients, with the real binary on loopback (issue 13):
//!
//! - one reader opening 100 replay sessions is capped at its per-username
//!   limit and another reader still logs in;
//! - connections that never log in are closed at the login deadline, and
//!   readers that stop draining their socket are cut off: both free their
//!   slot for a new reader;
//! - re-requests from one source, from 1 000 churned source addresses and
//!   for a victim address (the address a spoofer would name) each receive at
//!   most the per-source reply byte budget (`burst + rate × elapsed`),
//!   measured as bytes out against bytes in; a source outside the
//!   allow-list gets nothing.
//!
//! Test ids 75..=79 (`TestSetup`). Every wait has a deadline; sockets and
//! the child process close when the test ends.

mod support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use support::*;
use tally_wire::mold::{MoldPacket, ReRequest};
use tally_wire::soup::login_reject;
use tally_wire::{Ack, Order};

const LONG: Duration = Duration::from_secs(60);

/// A second reader, with read1's hash (password `readpass`).
const READ2: &str = r#"
[[clients]]
username = "read2"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$tWW49bK5QoG9bGFSUbwacA$+mcld4A5pq2h9Fi917djhSC5ilLeQj8I9VayNK/Ha94"
client_id = 5
role = "reader"

[retransmit]"#;

/// The value of counter `name` in the appliance's counter file.
fn counter(setup: &TestSetup, name: &str) -> u64 {
    let counters = tally_runtime::counters::CounterReader::open(&setup.counters_file()).unwrap();
    let value = counters
        .read()
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value);
    value.unwrap_or_else(|| panic!("no counter {name}"))
}

/// Sends `count` orders as pos1 and waits for every ack; returns the last
/// stream seq.
fn send_orders(setup: &TestSetup, count: u32) -> u64 {
    let mut pos = SoupClient::connect(setup.gateway);
    let first = pos.login_ok("pos1", POS_PASSWORD) as u32;
    let mut last_stream_seq = 0;
    let mut acked = 0;
    let mut next = first;
    let end = first + count;
    while acked < count {
        // Keep at most 10 000 unacknowledged: the gateway's window.
        while next < end && next - first - acked < 10_000 {
            pos.queue(
                Order::new(u64::from(next), 1, 9, 1)
                    .with_client_seq(next)
                    .as_bytes(),
            );
            next += 1;
        }
        pos.flush();
        match pos.recv(LONG) {
            Some(Reply::Sequenced(payload)) => {
                last_stream_seq = Ack::parse(&payload).unwrap().stream_seq();
                acked += 1;
            }
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    last_stream_seq
}

/// Opens a replay connection and sends a 4.0 login.
fn replay_login(setup: &TestSetup, username: &str, seq: u64) -> SoupClient {
    let mut client = SoupClient::connect(setup.replay);
    client.login(username, READER_PASSWORD, "", seq);
    client
}

/// What a login got first: accepted, rejected (after any debug text), or
/// closed without a word (refused at accept).
#[derive(Debug, PartialEq, Eq)]
enum LoginOutcome {
    Accepted,
    Rejected { debug: Option<String>, reason: u8 },
    Closed,
}

fn login_outcome(client: &mut SoupClient) -> LoginOutcome {
    let mut debug = None;
    loop {
        match client.recv(LONG) {
            Some(Reply::LoginAccepted { .. }) => return LoginOutcome::Accepted,
            Some(Reply::LoginRejected(reason)) => return LoginOutcome::Rejected { debug, reason },
            Some(Reply::Debug(text)) => debug = Some(text),
            None => return LoginOutcome::Closed,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn one_reader_opening_100_replay_sessions_is_capped_and_another_reader_connects() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::with(75, dir.path(), |text| {
        text.replacen("\n[retransmit]", READ2, 1).replace(
            "[replay]\n",
            "[replay]\nclients_max = 64\nsessions_per_client_max = 4\n\
             logins_pending_per_source_max = 64\n",
        )
    });
    let _appliance = Appliance::start(&setup);
    send_orders(&setup, 10);

    let started = Instant::now();
    let mut sessions: Vec<SoupClient> =
        (0..100).map(|_| replay_login(&setup, "read1", 1)).collect();
    let mut accepted = 0;
    let mut over_limit = 0;
    let mut refused = 0;
    for client in &mut sessions {
        match login_outcome(client) {
            LoginOutcome::Accepted => accepted += 1,
            LoginOutcome::Rejected { debug, reason } => {
                assert_eq!(reason, login_reject::NOT_AUTHORIZED);
                let debug = debug.expect("a debug packet says why");
                assert!(debug.contains("sessions"), "{debug}");
                over_limit += 1;
            }
            LoginOutcome::Closed => refused += 1,
        }
    }
    let refused_full = counter(&setup, "replay.connections_refused");
    let refused_source = counter(&setup, "replay.login_source_refused");
    eprintln!(
        "100 replay logins as read1 in {:?}: {accepted} accepted, {over_limit} over the \
         per-username limit, {refused} closed at accept ({refused_full} every slot taken, \
         {refused_source} too many waiting to log in from the address)",
        started.elapsed()
    );
    assert_eq!(accepted, 4, "capped at sessions_per_client_max");
    assert_eq!(accepted + over_limit + refused, 100);

    // Another reader still gets in, and is served, while read1 holds its 4.
    let mut other = replay_login(&setup, "read2", 1);
    assert_eq!(login_outcome(&mut other), LoginOutcome::Accepted);
    assert!(matches!(other.recv(LONG), Some(Reply::Sequenced(_))));
    assert_eq!(counter(&setup, "replay.logins_over_limit"), over_limit);
    assert_eq!(refused_full + refused_source, refused);
    assert_eq!(counter(&setup, "replay.clients_active"), 5);
}

#[test]
fn login_deadline_and_slow_reader_cut_off_free_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::with(76, dir.path(), |text| {
        text.replace(
            "[replay]\n",
            "[replay]\nclients_max = 2\nlogin_timeout_ms = 1000\nstall_timeout_ms = 1000\n\
             send_buffer_bytes = 65536\n",
        )
    });
    let _appliance = Appliance::start(&setup);

    // Two connections that never log in take both slots (a connection
    // closed at once was refused: a probe of `Appliance::start` still held
    // a slot; try again); a third is closed at once; the deadline closes
    // both, with a reason, and frees them.
    let deadline = Instant::now() + LONG;
    let mut idle: Vec<SoupClient> = Vec::new();
    while idle.len() < 2 {
        assert!(Instant::now() < deadline, "no slot for an idle connection");
        let mut client = SoupClient::connect(setup.replay);
        if !client.closed_within(Duration::from_millis(100)) {
            idle.push(client);
        }
    }
    let mut third = SoupClient::connect(setup.replay);
    assert!(
        third.closed_within(Duration::from_millis(300)),
        "no slot left"
    );
    assert_eq!(counter(&setup, "replay.login_timeouts"), 0);
    let started = Instant::now();
    for client in &mut idle {
        match client.recv(Duration::from_secs(10)) {
            Some(Reply::Debug(text)) => assert!(text.contains("login"), "{text}"),
            other => panic!("expected the deadline's debug packet, got {other:?}"),
        }
        assert!(client.closed_within(Duration::from_secs(10)));
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "closed after {waited:?}");
    assert_eq!(counter(&setup, "replay.login_timeouts"), 2);

    // ~7 MB of replay: more than the kernel's socket buffers and the feed's
    // send buffer hold for a reader that does not read.
    let last = send_orders(&setup, 200_000);

    // Two readers from seq 1 that stop reading after the login take both
    // slots; they are cut off and their slots freed.
    let mut slow: Vec<SoupClient> = (0..2).map(|_| replay_login(&setup, "read1", 1)).collect();
    for client in &mut slow {
        assert_eq!(login_outcome(client), LoginOutcome::Accepted);
    }
    let mut third = replay_login(&setup, "read1", 1);
    assert_eq!(
        login_outcome(&mut third),
        LoginOutcome::Closed,
        "no slot left"
    );
    let started = Instant::now();
    wait_for("both slow readers cut", LONG, || {
        counter(&setup, "replay.slow_clients_cut") == 2
    });
    eprintln!(
        "slow readers cut {:?} after login (stall timeout 1 s)",
        started.elapsed()
    );
    wait_for("slots freed", LONG, || {
        counter(&setup, "replay.clients_active") == 0
    });
    // A new reader gets a freed slot (once the cut connections' short flush
    // bound has run out) and everything it asks for.
    let deadline = Instant::now() + LONG;
    let mut fresh = loop {
        let mut client = replay_login(&setup, "read1", last - 999);
        match login_outcome(&mut client) {
            LoginOutcome::Accepted => break client,
            LoginOutcome::Closed => assert!(Instant::now() < deadline, "no slot freed"),
            other => panic!("unexpected {other:?}"),
        }
    };
    eprintln!(
        "a new reader logged in {:?} after the cut",
        started.elapsed()
    );
    for _ in 0..1000 {
        assert!(matches!(fresh.recv(LONG), Some(Reply::Sequenced(_))));
    }
    drop(slow);
}

/// A UDP socket bound to `address` asking the retransmit server.
fn requester(address: Ipv4Addr) -> UdpSocket {
    let socket = UdpSocket::bind((address, 0)).unwrap();
    socket.set_nonblocking(true).unwrap();
    socket
}

/// Receives everything waiting on `socket`: (datagrams, bytes).
fn drain(socket: &UdpSocket) -> (u64, u64) {
    let mut buf = [0u8; 2048];
    let (mut datagrams, mut bytes) = (0, 0);
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => {
                MoldPacket::parse(&buf[..n]).expect("a MoldUDP64 reply");
                datagrams += 1;
                bytes += n as u64;
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                return (datagrams, bytes)
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => panic!("recv: {error}"),
        }
    }
}

/// Per-source reply budget in the retransmit test: 20 000 bytes back to
/// back, 10 000 bytes a second.
const BURST_BYTES: f64 = 20_000.0;
const RATE_BYTES_PER_SEC: f64 = 10_000.0;

fn budget(elapsed: Duration) -> f64 {
    BURST_BYTES + RATE_BYTES_PER_SEC * elapsed.as_secs_f64()
}

#[test]
fn retransmit_replies_stay_within_each_sources_budget_and_the_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::with(77, dir.path(), |text| {
        // The test setup's generous budgets give way to small ones.
        text.replace(
            "reply_bytes_per_sec_per_source = 1000000000\n\
             reply_burst_bytes_per_source = 100000000\n\
             reply_bytes_per_sec = 1000000000\n\
             reply_burst_bytes = 100000000\n",
            "allow = [\"127.0.0.1/32\", \"127.1.0.0/16\", \"127.2.0.0/16\"]\n\
             reply_burst_bytes_per_source = 20000\n\
             reply_bytes_per_sec_per_source = 10000\n\
             reply_bytes_per_sec = 1000000000\n\
             reply_burst_bytes = 1000000000\n",
        )
    });
    let _appliance = Appliance::start(&setup);
    let last = send_orders(&setup, 5_000);
    let request = |first: u64| ReRequest::new(setup.session(), first, 1000);
    let request_bytes = ReRequest::new(setup.session(), 1, 1).as_bytes().len() as u64;

    // One source asking as fast as it can for a second.
    let one = requester(Ipv4Addr::LOCALHOST);
    let started = Instant::now();
    let (mut sent, mut received, mut datagrams) = (0u64, 0u64, 0u64);
    while started.elapsed() < Duration::from_secs(1) {
        for _ in 0..50 {
            let first = 1 + (sent * 37) % (last - 100);
            one.send_to(request(first).as_bytes(), setup.retransmit)
                .unwrap();
            sent += 1;
        }
        let (d, b) = drain(&one);
        datagrams += d;
        received += b;
        std::thread::sleep(Duration::from_millis(5));
    }
    // Replies still in flight: until none came for 300 ms.
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(300) {
        assert!(started.elapsed() < LONG, "replies never stopped");
        let (d, b) = drain(&one);
        if d > 0 {
            quiet_since = Instant::now();
        }
        datagrams += d;
        received += b;
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    eprintln!(
        "one source: {sent} requests ({} B) in {elapsed:?} -> {datagrams} replies, {received} B \
         (out/in {:.2}; budget {:.0} B)",
        sent * request_bytes,
        received as f64 / (sent * request_bytes) as f64,
        budget(elapsed)
    );
    assert!(datagrams >= 1, "the budget is served");
    assert!(
        received as f64 <= budget(elapsed),
        "{received} B over budget"
    );
    assert!(counter(&setup, "retransmit.ignored_source_budget") >= 1);

    // 1 000 churned source addresses (127.1.x.y), 20 requests each, while a
    // victim address (127.2.0.1: what a spoofer would name) keeps asking:
    // every churned source stays within its own budget and the victim,
    // whatever passes through the table meanwhile, within its own.
    let victim = requester(Ipv4Addr::new(127, 2, 0, 1));
    let started = Instant::now();
    let (mut victim_sent, mut victim_received) = (0u64, 0u64);
    let mut per_source: HashMap<Ipv4Addr, (u64, u64)> = HashMap::new();
    for batch in 0..10u32 {
        let sockets: Vec<(Ipv4Addr, UdpSocket)> = (0..100u32)
            .map(|i| {
                let n = batch * 100 + i;
                let address = Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8);
                (address, requester(address))
            })
            .collect();
        for round in 0..20u64 {
            for (address, socket) in &sockets {
                let first = 1 + (round * 211 + u64::from(address.octets()[3])) % (last - 100);
                socket
                    .send_to(request(first).as_bytes(), setup.retransmit)
                    .unwrap();
                per_source.entry(*address).or_default().0 += 1;
            }
            victim
                .send_to(request(1 + round).as_bytes(), setup.retransmit)
                .unwrap();
            victim_sent += 1;
            victim_received += drain(&victim).1;
        }
        // Every reply of this batch, before its sockets close.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let mut got = 0;
            for (address, socket) in &sockets {
                let (_, bytes) = drain(socket);
                per_source.entry(*address).or_default().1 += bytes;
                got += bytes;
            }
            victim_received += drain(&victim).1;
            if got == 0 {
                std::thread::sleep(Duration::from_millis(20));
                let quiet = sockets.iter().all(|(address, socket)| {
                    let (_, bytes) = drain(socket);
                    per_source.entry(*address).or_default().1 += bytes;
                    bytes == 0
                });
                if quiet {
                    break;
                }
            }
        }
    }
    victim_received += drain(&victim).1;
    let elapsed = started.elapsed();
    let churn_in: u64 = per_source
        .values()
        .map(|(sent, _)| sent * request_bytes)
        .sum();
    let churn_out: u64 = per_source.values().map(|(_, bytes)| bytes).sum();
    let worst = per_source.values().map(|(_, bytes)| *bytes).max().unwrap();
    eprintln!(
        "1000 churned sources: {churn_in} B in, {churn_out} B out (out/in {:.2}); most to one \
         source {worst} B (budget {:.0} B) in {elapsed:?}",
        churn_out as f64 / churn_in as f64,
        budget(elapsed)
    );
    eprintln!(
        "victim 127.2.0.1: {victim_sent} requests ({} B) -> {victim_received} B (out/in {:.2}; \
         budget {:.0} B)",
        victim_sent * request_bytes,
        victim_received as f64 / (victim_sent * request_bytes) as f64,
        budget(elapsed)
    );
    assert_eq!(per_source.len(), 1000);
    for (address, (_, bytes)) in &per_source {
        assert!(
            *bytes as f64 <= budget(elapsed),
            "{address} got {bytes} B, over its budget"
        );
    }
    assert!(
        victim_received as f64 <= budget(elapsed),
        "the victim got {victim_received} B"
    );
    assert!(victim_received > 0);

    // A source outside the allow-list gets nothing, and is counted.
    let outside = UdpSocket::bind("127.0.0.2:0").unwrap();
    outside
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let refused_before = counter(&setup, "retransmit.ignored_not_allowed");
    for first in 1..=20 {
        outside
            .send_to(request(first).as_bytes(), setup.retransmit)
            .unwrap();
    }
    let mut buf = [0u8; 2048];
    assert!(
        outside.recv(&mut buf).is_err(),
        "no reply outside the allow-list"
    );
    wait_for("the outsider's requests counted", LONG, || {
        counter(&setup, "retransmit.ignored_not_allowed") == refused_before + 20
    });
    // Nothing else was refused for another reason.
    assert_eq!(counter(&setup, "retransmit.ignored_malformed"), 0);
    assert_eq!(counter(&setup, "retransmit.ignored_corrupt"), 0);
}
