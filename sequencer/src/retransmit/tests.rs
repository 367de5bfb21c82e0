use super::*;
use crate::journal::test_records::{self, message};
use crate::journal::{FsyncPolicy, JournalWriter};
use std::net::UdpSocket;
use std::thread;
use std::time::Instant;
use tally_runtime::alloc_count::counting;
use tally_runtime::counters::CounterFile;
use tally_runtime::net::Ipv4Network;
use tally_wire::mold::MoldPacket;

fn session() -> Session {
    Session::from_str("RETX01").unwrap()
}

/// The allocator installed above counts in this binary, so the "poll
/// allocated nothing" checks here and in `replay.rs` are not vacuous.
#[test]
fn the_counter_sees_allocations_on_this_thread_only() {
    let (boxed, allocations) = counting(|| Box::new(7u64));
    assert_eq!((*boxed, allocations), (7, 1));
    let ((), allocations) = counting(|| {
        std::thread::spawn(|| drop(vec![0u8; 100]))
            .join()
            .unwrap_or(());
    });
    // Spawning allocates here; the other thread's vector is not counted.
    assert!(allocations >= 1);
    let ((), allocations) = counting(|| {});
    assert_eq!(allocations, 0);
}

/// Appends the next `count` messages in records of up to 7.
fn append(writer: &mut JournalWriter, count: u64) {
    test_records::append(writer, count, 7);
}

fn options() -> RetransmitOptions {
    RetransmitOptions {
        listen: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        session: session(),
        payload_bytes_max: 1400,
        messages_per_request_max: 100,
        requests_per_sec_per_requester: 1000,
        request_burst: 1000,
        requesters_max: 16,
        allow: AllowList::new(&[Ipv4Network::new(Ipv4Addr::LOCALHOST, 8)]).unwrap(),
        reply_bytes_per_sec_per_source: 1 << 30,
        reply_burst_bytes_per_source: 1 << 30,
        reply_bytes_per_sec: 1 << 30,
        reply_burst_bytes: 1 << 30,
        retention_messages: 1_000_000,
        index_capacity: 1024,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    writer: JournalWriter,
    server: RetransmitLoop,
    counters: RetransmitCounters,
    client: UdpSocket,
    now_ns: u64,
    /// Allocations made inside `server.poll` so far.
    poll_allocations: u64,
}

impl Fixture {
    fn new(options: RetransmitOptions, messages: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = JournalWriter::open(
            dir.path(),
            session(),
            FsyncPolicy::None,
            &crate::journal::RecoveryOptions::default(),
            |_, _| {},
        )
        .unwrap();
        append(&mut writer, messages);
        let file = CounterFile::in_memory(RetransmitCounters::NAMES);
        let counters = RetransmitCounters::from_file(&file, 0);
        let server = RetransmitLoop::with_options(
            options,
            writer.path(),
            writer.progress(),
            counters.clone(),
        )
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        Fixture {
            _dir: dir,
            writer,
            server,
            counters,
            client,
            now_ns: 1_000_000_000,
            poll_allocations: 0,
        }
    }

    fn poll(&mut self) {
        let now_ns = self.now_ns;
        let (result, allocations) = counting(|| self.server.poll(now_ns));
        result.unwrap();
        self.poll_allocations += allocations;
    }

    fn request(&self, session: Session, first_seq: u64, count: u16) {
        self.client
            .send(ReRequest::new(session, first_seq, count).as_bytes())
            .unwrap();
    }

    /// Polls the server until `done` holds (deadline 10 s).
    fn poll_until(&mut self, what: &str, mut done: impl FnMut(&RetransmitCounters) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&self.counters) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.poll();
            thread::yield_now();
        }
    }

    fn ignored(&self) -> u64 {
        let c = &self.counters;
        [
            &c.ignored_malformed,
            &c.ignored_session,
            &c.ignored_future,
            &c.ignored_retention,
            &c.ignored_rate_limited,
            &c.ignored_zero_count,
            &c.ignored_not_allowed,
            &c.ignored_source_budget,
            &c.ignored_global_budget,
            &c.ignored_corrupt,
        ]
        .iter()
        .map(|counter| counter.get())
        .sum()
    }

    /// Sends one request and polls until it is served, returning the reply.
    fn ask(&mut self, first_seq: u64, count: u16) -> Vec<u8> {
        let served = self.counters.requests_served.get();
        self.request(session(), first_seq, count);
        self.poll_until("the reply to be sent", |c| c.requests_served.get() > served);
        self.receive().expect("a reply")
    }

    /// The next datagram, or None within about 1 s.
    fn receive(&mut self) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            self.poll();
            match self.client.recv(&mut buf) {
                Ok(n) => return Some(buf[..n].to_vec()),
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(error) => panic!("recv: {error}"),
            }
        }
        None
    }
}

fn decode(reply: &[u8]) -> (u64, Vec<(u64, Vec<u8>)>) {
    let packet = MoldPacket::parse(reply).unwrap();
    assert_eq!(packet.session(), session());
    let messages: Vec<(u64, Vec<u8>)> = packet
        .messages()
        .map(|(seq, m)| (seq, m.to_vec()))
        .collect();
    assert_eq!(usize::from(packet.count()), messages.len());
    (packet.sequence(), messages)
}

#[test]
fn serves_exactly_the_requested_range_from_the_journal() {
    let mut f = Fixture::new(options(), 500);
    let (first, messages) = decode(&f.ask(37, 10));
    assert_eq!(first, 37);
    assert_eq!(
        messages,
        (37..47).map(|seq| (seq, message(seq))).collect::<Vec<_>>()
    );
    assert_eq!(f.counters.messages_resent.get(), 10);

    // A range reaching past the end: what exists.
    let (first, messages) = decode(&f.ask(495, 50));
    assert_eq!(first, 495);
    assert_eq!(
        messages.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (495..501).collect::<Vec<_>>()
    );

    // New appends become servable.
    append(&mut f.writer, 5);
    let (_, messages) = decode(&f.ask(501, 5));
    assert_eq!(
        messages,
        (501..506)
            .map(|seq| (seq, message(seq)))
            .collect::<Vec<_>>()
    );
    assert_eq!(f.counters.requests_served.get(), 3);
    assert_eq!(f.ignored(), 0);
}

#[test]
fn caps_the_count_and_fits_the_payload_limit() {
    let mut opts = options();
    opts.messages_per_request_max = 5;
    let mut f = Fixture::new(opts, 2000);
    let (first, messages) = decode(&f.ask(100, 1000));
    assert_eq!(first, 100);
    assert_eq!(messages.len(), 5);

    let mut opts = options();
    opts.payload_bytes_max = 200;
    opts.messages_per_request_max = 1000;
    let mut f = Fixture::new(opts, 2000);
    let reply = f.ask(1, 1000);
    assert!(reply.len() <= 200, "{} bytes", reply.len());
    let (first, messages) = decode(&reply);
    assert_eq!(first, 1);
    // As many as fit: the next one would not.
    let used: usize = MoldHeader::SIZE + messages.iter().map(|(_, m)| 2 + m.len()).sum::<usize>();
    let next = message(1 + messages.len() as u64);
    assert!(used + 2 + next.len() > 200);
    assert!(messages.len() >= 4);
    assert_eq!(
        messages,
        (1..1 + messages.len() as u64)
            .map(|seq| (seq, message(seq)))
            .collect::<Vec<_>>()
    );
}

#[test]
fn ignores_bad_requests_and_counts_each_kind() {
    let mut opts = options();
    opts.retention_messages = 100;
    let mut f = Fixture::new(opts, 300);
    // next_seq is 301; retention keeps 201..=300.
    f.client.send(&[0u8; 19]).unwrap();
    f.client.send(&[0u8; 21]).unwrap();
    f.client.send(&[0u8; 1800]).unwrap(); // truncated by the kernel
    f.poll_until("malformed", |c| c.ignored_malformed.get() == 3);
    f.request(Session::from_str("OTHER").unwrap(), 250, 1);
    f.poll_until("session", |c| c.ignored_session.get() == 1);
    f.request(session(), 301, 1);
    f.request(session(), 10_000, 1);
    f.poll_until("future", |c| c.ignored_future.get() == 2);
    f.request(session(), 200, 1);
    f.request(session(), 1, 5);
    f.poll_until("retention", |c| c.ignored_retention.get() == 2);
    f.request(session(), 250, 0);
    f.poll_until("zero count", |c| c.ignored_zero_count.get() == 1);
    assert_eq!(f.counters.requests_served.get(), 0);
    assert_eq!(f.receive(), None, "no reply to any ignored request");
    // The oldest retained message is still served.
    let (first, _) = decode(&f.ask(201, 1));
    assert_eq!(first, 201);
    assert_eq!(f.counters.ignored_rate_limited.get(), 0);
}

#[test]
fn rate_limits_a_flood_from_one_address() {
    let mut opts = options();
    opts.requests_per_sec_per_requester = 100;
    opts.request_burst = 20;
    let mut f = Fixture::new(opts, 50);
    let start = Instant::now();
    let requests = 1000u64;
    let mut sent = 0u64;
    while sent < requests {
        f.request(session(), 1, 1);
        sent += 1;
        if sent % 50 == 0 {
            // Real time drives the buckets here.
            f.now_ns = 1_000_000_000 + start.elapsed().as_nanos() as u64;
            f.poll();
        }
    }
    f.now_ns = 1_000_000_000 + start.elapsed().as_nanos() as u64;
    f.poll_until("every request to be counted", |c| {
        c.requests_served.get() + c.ignored_rate_limited.get() == requests
    });
    let elapsed_s = start.elapsed().as_secs_f64();
    let served = f.counters.requests_served.get();
    let allowed = 20.0 + 100.0 * elapsed_s;
    assert!(
        served as f64 <= allowed + 1.0,
        "served {served}, allowed {allowed:.1} in {elapsed_s:.3} s"
    );
    assert!(served >= 20, "the burst is served: {served}");
    assert!(f.counters.ignored_rate_limited.get() >= requests - allowed as u64 - 1);
}

#[test]
fn bucket_refills_at_the_configured_rate() {
    let mut table = SourceTable::new(4, 10, 2, 1000, 1000);
    let a = Ipv4Addr::new(10, 0, 0, 1);
    assert!(table.admit(a, 0));
    assert!(table.admit(a, 0));
    assert!(!table.admit(a, 0));
    // 10 per second: one token per 100 ms.
    assert!(!table.admit(a, 99_999_999));
    assert!(table.admit(a, 100_000_000));
    assert!(!table.admit(a, 100_000_000));
    // A long quiet spell refills only up to the burst.
    assert!(table.admit(a, 100_000_000_000));
    assert!(table.admit(a, 100_000_000_000));
    assert!(!table.admit(a, 100_000_000_000));
}

#[test]
fn reply_budget_refills_at_its_rate_and_charges_take_from_it() {
    // 1000 bytes per second, 500 back to back.
    let mut table = SourceTable::new(64, 1000, 1000, 1000, 500);
    let a = Ipv4Addr::new(10, 0, 0, 1);
    assert_eq!(table.reply_budget(a, 0), 500);
    table.charge(a, 400, 0);
    assert_eq!(table.reply_budget(a, 0), 100);
    // 1 byte per millisecond, never past the burst.
    assert_eq!(table.reply_budget(a, 50_000_000), 150);
    assert_eq!(table.reply_budget(a, 10_000_000_000), 500);
    let mut bucket = ByteBucket::new(1000, 500);
    assert_eq!(bucket.available(0), 500);
    bucket.take(500);
    assert_eq!(bucket.available(0), 0);
    assert_eq!(bucket.available(250_000_000), 250);
}

/// However many addresses ask, one address never receives more than its
/// own budget: cells are shared (a collision makes it less), never
/// evicted, never reset.
#[test]
fn churned_sources_never_reset_a_victims_budget() {
    let mut table = SourceTable::new(16, 1_000_000, 1_000_000, 1000, 1000);
    let victim = Ipv4Addr::new(192, 168, 0, 7);
    assert_eq!(table.reply_budget(victim, 0), 1000);
    table.charge(victim, 1000, 0);
    // 100 000 other addresses pass through a table of 4 × 16 cells.
    for i in 0..100_000u32 {
        let other = Ipv4Addr::from_bits(0x0a00_0000 + i * 7919);
        let budget = table.reply_budget(other, 0);
        table.charge(other, budget.min(10), 0);
        assert!(table.admit(other, 0));
    }
    assert_eq!(table.reply_budget(victim, 0), 0, "still spent");
    // Only time refills it, at its rate.
    assert!(table.reply_budget(victim, 100_000_000) <= 100);
    assert_eq!(table.memory_bytes(), 4 * 16 * 24);
}

#[test]
fn sources_outside_the_allow_list_get_nothing() {
    let mut opts = options();
    opts.allow = AllowList::new(&[Ipv4Network::parse("127.0.0.2").unwrap()]).unwrap();
    let mut f = Fixture::new(opts, 50);
    f.request(session(), 1, 5);
    f.poll_until("not allowed", |c| c.ignored_not_allowed.get() == 1);
    assert_eq!(f.receive(), None);
    assert_eq!(f.counters.requests_served.get(), 0);
}

#[test]
fn replies_fit_the_source_budget_and_stop_when_it_is_spent() {
    let mut opts = options();
    opts.reply_burst_bytes_per_source = 600;
    opts.reply_bytes_per_sec_per_source = 1;
    let mut f = Fixture::new(opts, 500);
    let mut received = 0usize;
    for round in 0..10u64 {
        let served = f.counters.requests_served.get();
        let refused = f.counters.ignored_source_budget.get();
        f.request(session(), 1 + round * 20, 20);
        f.poll_until("an answer", |c| {
            c.requests_served.get() > served || c.ignored_source_budget.get() > refused
        });
        if f.counters.requests_served.get() > served {
            let reply = f.receive().expect("a reply");
            let (first, messages) = decode(&reply);
            assert_eq!(first, 1 + round * 20);
            assert!(!messages.is_empty());
            received += reply.len();
        }
    }
    assert!(received <= 600, "{received} bytes");
    assert!(received >= 600 - 20 - 43, "the budget is used: {received}");
    assert_eq!(f.counters.reply_bytes.get(), received as u64);
    assert!(f.counters.ignored_source_budget.get() >= 1);
    assert_eq!(f.receive(), None);
}

#[test]
fn the_server_budget_caps_every_source_together() {
    let mut opts = options();
    opts.reply_burst_bytes = 1000;
    opts.reply_bytes_per_sec = 1;
    let mut f = Fixture::new(opts, 500);
    let other = UdpSocket::bind("127.0.0.3:0").unwrap();
    other.connect(f.server.local_addr()).unwrap();
    for round in 0..6u64 {
        f.request(session(), 1 + round, 30);
        other
            .send(ReRequest::new(session(), 100 + round, 30).as_bytes())
            .unwrap();
    }
    f.poll_until("every request", |c| {
        c.requests_served.get() + c.ignored_global_budget.get() == 12
    });
    assert!(f.counters.reply_bytes.get() <= 1000);
    assert!(f.counters.ignored_global_budget.get() >= 1);
}

/// A record whose payload fails its CRC is never sent: no reply for a
/// range that reaches it, counted, while other ranges are served.
#[test]
fn a_damaged_record_is_never_sent_and_the_loop_goes_on() {
    let mut f = Fixture::new(options(), 70);
    // Records of 7 messages: flip one payload byte of the 3rd record
    // (messages 15..=21).
    let path = f.writer.path().to_path_buf();
    // The window holds the bytes as written: read the damaged file.
    f.writer.progress().bypass_window();
    let mut bytes = std::fs::read(&path).unwrap();
    let mut offset = crate::journal::FILE_HEADER_BYTES;
    for _ in 0..2 {
        let len = u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        offset += crate::journal::RECORD_HEADER_BYTES + len;
    }
    bytes[offset + crate::journal::RECORD_HEADER_BYTES + 5] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    for _ in 0..3 {
        let ignored = f.counters.ignored_corrupt.get();
        f.request(session(), 16, 3);
        f.poll_until("the damaged range", |c| c.ignored_corrupt.get() > ignored);
    }
    // A range that starts before it and reaches it: nothing either.
    f.request(session(), 10, 10);
    f.poll_until("the range across", |c| c.ignored_corrupt.get() == 4);
    assert_eq!(f.receive(), None, "nothing of a damaged range is sent");
    assert_eq!(
        f.counters.corrupt_records.get(),
        1,
        "one record, logged once"
    );
    // Ranges before and after are served.
    let (first, messages) = decode(&f.ask(1, 14));
    assert_eq!((first, messages.len()), (1, 14));
    let (first, messages) = decode(&f.ask(22, 7));
    assert_eq!((first, messages.len()), (22, 7));
    assert_eq!(f.counters.requests_served.get(), 2);
}

#[test]
fn serving_and_ignoring_allocate_nothing() {
    let mut opts = options();
    opts.retention_messages = 400;
    opts.requesters_max = 2;
    let mut f = Fixture::new(opts, 1000);
    // Requests of every kind, from several addresses (sharing a table of
    // 4 × 2 cells), served and ignored.
    let others: Vec<UdpSocket> = (0..3)
        .map(|_| {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.connect(f.server.local_addr()).unwrap();
            socket
        })
        .collect();
    for round in 0..20u64 {
        let (first, messages) = decode(&f.ask(700 + round, 30));
        assert_eq!((first, messages.len()), (700 + round, 30));
        f.client.send(&[0u8; 7]).unwrap();
        f.request(Session::from_str("OTHER").unwrap(), 800, 1);
        f.request(session(), 5000, 1);
        f.request(session(), 3, 1);
        f.request(session(), 900, 0);
        for socket in &others {
            socket
                .send(ReRequest::new(session(), 950, 10).as_bytes())
                .unwrap();
        }
        append(&mut f.writer, 3);
    }
    f.poll_until("every request", |c| c.requests_served.get() == 80);
    assert_eq!(f.ignored(), 100);
    assert_eq!(f.poll_allocations, 0, "poll allocated");
}
