use super::*;
use crate::journal::test_records::{self, message};
use crate::journal::{FsyncPolicy, JournalWriter};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Instant;
use tally_config::gateway::{hash_password, Role};
use tally_runtime::agent::run_agents;
use tally_runtime::counters::CounterFile;
use tally_runtime::idle::IdleStrategy;
use tally_wire::soup::login_reject;
use tally_wire::soup::{FrameDecoder, ServerPacket};

const DEADLINE: Duration = Duration::from_secs(20);

fn session() -> Session {
    Session::from_str("REPLAY1").unwrap()
}

fn clients() -> Vec<ClientEntry> {
    vec![ClientEntry {
        username: "rdr1".into(),
        password_hash: hash_password("secret1"),
        client_id: 9,
        role: Role::Reader,
    }]
}

/// Appends the next `count` messages in records of up to 30.
fn append(writer: &mut JournalWriter, count: u64) {
    test_records::append(writer, count, 30);
}

fn options() -> ReplayOptions {
    ReplayOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        session: session(),
        clients_max: 4,
        send_buffer_bytes: 64 * 1024,
        stall_timeout_ns: 300_000_000,
        heartbeat_interval_ns: 100_000_000,
        peer_timeout_ns: PEER_TIMEOUT_NS,
        heartbeat_timeout_min_ns: 1_000_000_000,
        heartbeat_timeout_max_ns: 60_000_000_000,
        sessions_per_client_max: 4,
        login_timeout_ns: 5_000_000_000,
        logins_pending_per_source_max: 8,
        auth_queue_depth: 8,
        index_capacity: 64,
    }
}

/// A replay loop running on its own thread, with a journal writer the
/// test appends through.
struct Fixture {
    _dir: tempfile::TempDir,
    writer: JournalWriter,
    addr: SocketAddr,
    counters: ReplayCounters,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Fixture {
    fn new(options: ReplayOptions, messages: u64) -> Self {
        Self::with_journal_edit(options, messages, |_| {})
    }

    /// As `new`, with `edit` applied to the journal file before the
    /// loop opens it.
    fn with_journal_edit(
        options: ReplayOptions,
        messages: u64,
        edit: impl FnOnce(&std::path::Path),
    ) -> Self {
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
        // The window holds the bytes as written: a test that edits the
        // file reads the file.
        writer.progress().bypass_window();
        edit(writer.path());
        let file = CounterFile::in_memory(ReplayCounters::NAMES);
        let counters = ReplayCounters::from_file(&file, 0);
        let clients = clients();
        let auth = AuthThread::spawn(&clients, options.auth_queue_depth).unwrap();
        let mut replay = ReplayLoop::with_authenticator(
            options,
            &clients,
            writer.path(),
            writer.progress(),
            auth,
            counters.clone(),
        )
        .unwrap();
        let addr = replay.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            run_agents(
                &mut [&mut replay],
                IdleStrategy::DEFAULT_BACK_OFF,
                &thread_stop,
                None,
            )
        });
        Fixture {
            _dir: dir,
            writer,
            addr,
            counters,
            stop,
            thread: Some(thread),
        }
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut(&ReplayCounters) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done(&self.counters) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let result = thread.join().expect("replay loop panicked");
            if !thread::panicking() {
                result.expect("replay loop failed");
            }
        }
    }
}

/// A blocking test client.
struct Client {
    stream: TcpStream,
    decoder: FrameDecoder,
}

/// An owned server packet.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Accepted(Session, u64),
    Rejected(u8),
    Sequenced(Vec<u8>),
    Heartbeat,
    EndOfSession,
    Debug(String),
    Closed,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Client {
            stream,
            decoder: FrameDecoder::new(1024),
        }
    }

    fn login(addr: SocketAddr, password: &str, session: Session, seq: u64) -> Self {
        let mut client = Client::connect(addr);
        let mut frame = [0u8; 64];
        let n = soup::write_login_request(&mut frame, "rdr1", password, session, seq).unwrap();
        client.stream.write_all(&frame[..n]).unwrap();
        client
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next packet (heartbeats included), within the deadline.
    fn next(&mut self) -> Got {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.decoder.next_frame().unwrap() {
                Some(frame) => {
                    return match ServerPacket::parse(frame).unwrap() {
                        ServerPacket::LoginAccepted { session, next_seq } => {
                            Got::Accepted(session, next_seq)
                        }
                        ServerPacket::LoginRejected { reason } => Got::Rejected(reason),
                        ServerPacket::Sequenced(payload) => Got::Sequenced(payload.to_vec()),
                        ServerPacket::Heartbeat => Got::Heartbeat,
                        ServerPacket::EndOfSession => Got::EndOfSession,
                        ServerPacket::Debug(text) => {
                            Got::Debug(String::from_utf8_lossy(text).into_owned())
                        }
                    }
                }
                None => {
                    assert!(Instant::now() < deadline, "no packet within {DEADLINE:?}");
                    let spare = self.decoder.spare();
                    match self.stream.read(spare) {
                        Ok(0) => return Got::Closed,
                        Ok(n) => self.decoder.commit(n),
                        Err(error)
                            if matches!(
                                error.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) => {}
                        Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {
                            return Got::Closed
                        }
                        Err(error) => panic!("read: {error}"),
                    }
                }
            }
        }
    }

    /// The next packet that is not a heartbeat.
    fn next_data(&mut self) -> Got {
        loop {
            match self.next() {
                Got::Heartbeat => continue,
                other => return other,
            }
        }
    }

    /// Expects messages `range` in order.
    fn expect_messages(&mut self, range: std::ops::Range<u64>) {
        for seq in range {
            match self.next_data() {
                Got::Sequenced(payload) => assert_eq!(payload, message(seq), "message {seq}"),
                other => panic!("expected message {seq}, got {other:?}"),
            }
        }
    }
}

#[test]
fn client_from_seq_1_gets_every_message_then_live_ones() {
    let mut f = Fixture::new(options(), 5000);
    let mut client = Client::login(f.addr, "secret1", Session::BLANK, 1);
    assert_eq!(client.next(), Got::Accepted(session(), 1));
    client.expect_messages(1..5001);
    // Live: appended after the client caught up.
    append(&mut f.writer, 100);
    client.expect_messages(5001..5101);
    // Idle: heartbeats keep coming.
    assert_eq!(client.next(), Got::Heartbeat);
    f.wait_for("the message count", |c| c.messages_sent.get() == 5100);
    assert_eq!(f.counters.logins_accepted.get(), 1);
    assert_eq!(f.counters.clients_active.get(), 1);
    assert!(f.counters.heartbeats_sent.get() >= 1);

    // A second client from the middle, with the session named.
    let mut middle = Client::login(f.addr, "secret1", session(), 4321);
    assert_eq!(middle.next(), Got::Accepted(session(), 4321));
    middle.expect_messages(4321..5101);

    // Logout closes.
    let mut frame = [0u8; 8];
    let n = soup::write_logout(&mut frame).unwrap();
    middle.send(&frame[..n]);
    assert_eq!(middle.next_data(), Got::Closed);

    // End of session once the client has everything.
    append(&mut f.writer, 3);
    client.expect_messages(5101..5104);
    f.writer.end_session().unwrap();
    assert_eq!(client.next_data(), Got::EndOfSession);
    assert_eq!(client.next_data(), Got::Closed);
    f.wait_for("no client active", |c| c.clients_active.get() == 0);
}

#[test]
fn a_future_sequence_number_waits_for_it() {
    let mut f = Fixture::new(options(), 10);
    let mut client = Client::login(f.addr, "secret1", Session::BLANK, 15);
    assert_eq!(client.next(), Got::Accepted(session(), 15));
    assert_eq!(client.next(), Got::Heartbeat);
    append(&mut f.writer, 10);
    client.expect_messages(15..21);
}

#[test]
fn logins_are_rejected_for_a_wrong_password_user_or_session() {
    let f = Fixture::new(options(), 10);
    let mut client = Client::login(f.addr, "wrong", Session::BLANK, 1);
    assert_eq!(client.next(), Got::Rejected(login_reject::NOT_AUTHORIZED));
    assert_eq!(client.next(), Got::Closed);

    let mut client = Client::connect(f.addr);
    let mut frame = [0u8; 64];
    let n = soup::write_login_request(&mut frame, "nobody", "secret1", Session::BLANK, 1).unwrap();
    client.send(&frame[..n]);
    assert_eq!(client.next(), Got::Rejected(login_reject::NOT_AUTHORIZED));

    let mut client = Client::login(f.addr, "secret1", Session::from_str("OTHER").unwrap(), 1);
    assert_eq!(
        client.next(),
        Got::Rejected(login_reject::SESSION_UNAVAILABLE)
    );
    assert_eq!(client.next(), Got::Closed);
    f.wait_for("three rejections", |c| c.logins_rejected.get() == 3);
    assert_eq!(f.counters.logins_accepted.get(), 0);
}

#[test]
fn protocol_errors_get_a_debug_packet_then_close() {
    let f = Fixture::new(options(), 10);
    // Data before login.
    let mut client = Client::connect(f.addr);
    let mut frame = [0u8; 64];
    let n = soup::write_client_heartbeat(&mut frame).unwrap();
    client.send(&frame[..n]);
    assert!(matches!(client.next(), Got::Debug(_)));
    assert_eq!(client.next(), Got::Closed);
    // Oversize frame.
    let mut client = Client::connect(f.addr);
    client.send(&[0x01, 0x00, b'L']);
    assert!(matches!(client.next(), Got::Debug(_)));
    assert_eq!(client.next(), Got::Closed);
    // U data after login.
    let mut client = Client::login(f.addr, "secret1", Session::BLANK, 11);
    assert_eq!(client.next(), Got::Accepted(session(), 11));
    let n = soup::write_unsequenced(&mut frame, b"hello").unwrap();
    client.send(&frame[..n]);
    assert!(matches!(client.next_data(), Got::Debug(_)));
    assert_eq!(client.next_data(), Got::Closed);
    // Unknown packet type.
    let mut client = Client::connect(f.addr);
    client.send(&[0x00, 0x01, b'?']);
    assert!(matches!(client.next(), Got::Debug(_)));
    f.wait_for("four protocol errors", |c| c.protocol_errors.get() == 4);
}

#[test]
fn a_slow_reader_is_cut_off_while_appends_continue() {
    let mut f = Fixture::new(options(), 0);
    let mut slow = Client::login(f.addr, "secret1", Session::BLANK, 1);
    assert_eq!(slow.next(), Got::Accepted(session(), 1));
    // The slow client never reads again. Append until it is cut off:
    // the kernel's socket buffers fill, then the loop's, then the stall
    // timeout runs out. Appends never wait for the reader.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut slowest_append = Duration::ZERO;
    while f.counters.slow_clients_cut.get() == 0 {
        assert!(Instant::now() < deadline, "slow client never cut");
        let started = Instant::now();
        append(&mut f.writer, 3000);
        slowest_append = slowest_append.max(started.elapsed());
        thread::sleep(Duration::from_millis(1));
    }
    assert!(
        slowest_append < Duration::from_secs(1),
        "an append took {slowest_append:?}"
    );
    f.wait_for("the slow client to leave", |c| c.clients_active.get() == 0);
    // Appends go on; a new client still gets everything.
    append(&mut f.writer, 100);
    let end = f.writer.next_seq();
    let mut fresh = Client::login(f.addr, "secret1", Session::BLANK, end - 500);
    assert_eq!(fresh.next(), Got::Accepted(session(), end - 500));
    fresh.expect_messages(end - 500..end);
    drop(slow);
}

/// (peer timeout, heartbeat interval) negotiated for `requested_ms`.
fn negotiate_heartbeat(options: &ReplayOptions, requested_ms: Option<u32>) -> (u64, u64) {
    let negotiated = heartbeat_policy(options).negotiate(requested_ms);
    (negotiated.peer_timeout_ns, negotiated.heartbeat_interval_ns)
}

#[test]
fn heartbeat_timeout_requests_are_honoured_within_bounds() {
    let opts = options(); // bounds 1 s ..= 60 s, heartbeat 100 ms, default 15 s
    let ms = 1_000_000;
    assert_eq!(negotiate_heartbeat(&opts, None), (15_000 * ms, 100 * ms));
    assert_eq!(negotiate_heartbeat(&opts, Some(0)), (15_000 * ms, 100 * ms));
    assert_eq!(
        negotiate_heartbeat(&opts, Some(30_000)),
        (30_000 * ms, 100 * ms)
    );
    assert_eq!(
        negotiate_heartbeat(&opts, Some(99_999)),
        (60_000 * ms, 100 * ms)
    );
    // A short timeout: clamped to 1 s, and the server heartbeats often
    // enough for it.
    assert_eq!(negotiate_heartbeat(&opts, Some(10)), (1_000 * ms, 100 * ms));
    let mut slow = opts;
    slow.heartbeat_interval_ns = 1_000 * ms;
    assert_eq!(
        negotiate_heartbeat(&slow, Some(1_200)),
        (1_200 * ms, 400 * ms)
    );
}

#[test]
fn a_41_login_is_dropped_after_its_requested_timeout() {
    let mut opts = options();
    opts.heartbeat_timeout_min_ns = 300_000_000;
    let f = Fixture::new(opts, 10);
    let mut client = Client::connect(f.addr);
    let mut frame = [0u8; 64];
    let n = soup::write_login_request_v41(&mut frame, "rdr1", "secret1", Session::BLANK, 11, 400)
        .unwrap();
    let started = Instant::now();
    client.send(&frame[..n]);
    assert_eq!(client.next(), Got::Accepted(session(), 11));
    // Silent client: dropped after about 400 ms, not 15 s.
    loop {
        match client.next() {
            Got::Heartbeat => continue,
            Got::Debug(text) => assert!(text.contains("heartbeat"), "{text}"),
            Got::Closed => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_login_deadline_and_a_session_limit_per_username() {
    let mut opts = options();
    opts.login_timeout_ns = 200_000_000;
    opts.sessions_per_client_max = 2;
    let f = Fixture::new(opts, 10);
    // Connected, silent: closed at the deadline with a reason.
    let mut idle = Client::connect(f.addr);
    match idle.next() {
        Got::Debug(text) => assert!(text.contains("login"), "{text}"),
        other => panic!("expected a debug packet, got {other:?}"),
    }
    assert_eq!(idle.next(), Got::Closed);
    f.wait_for("the login timeout", |c| c.login_timeouts.get() == 1);
    // Two sessions for rdr1; the third is refused with a reason.
    let mut first = Client::login(f.addr, "secret1", Session::BLANK, 11);
    assert_eq!(first.next(), Got::Accepted(session(), 11));
    let mut second = Client::login(f.addr, "secret1", Session::BLANK, 11);
    assert_eq!(second.next(), Got::Accepted(session(), 11));
    let mut third = Client::login(f.addr, "secret1", Session::BLANK, 11);
    match third.next() {
        Got::Debug(text) => assert!(text.contains("sessions"), "{text}"),
        other => panic!("expected a debug packet, got {other:?}"),
    }
    assert_eq!(third.next(), Got::Rejected(login_reject::NOT_AUTHORIZED));
    assert_eq!(f.counters.logins_over_limit.get(), 1);
    // One leaves: a new one fits.
    let mut frame = [0u8; 8];
    let n = soup::write_logout(&mut frame).unwrap();
    first.send(&frame[..n]);
    assert_eq!(first.next_data(), Got::Closed);
    f.wait_for("one active", |c| c.clients_active.get() == 1);
    let mut fourth = Client::login(f.addr, "secret1", Session::BLANK, 11);
    assert_eq!(fourth.next(), Got::Accepted(session(), 11));
    drop(second);
}

#[test]
fn one_address_holds_few_connections_waiting_to_log_in() {
    let mut opts = options();
    opts.logins_pending_per_source_max = 2;
    let f = Fixture::new(opts, 10);
    let first = Client::connect(f.addr);
    let _second = Client::connect(f.addr);
    let mut third = Client::connect(f.addr);
    match third.next() {
        Got::Debug(text) => assert!(text.contains("too many connections"), "{text}"),
        other => panic!("expected a debug packet, got {other:?}"),
    }
    assert_eq!(third.next(), Got::Closed);
    assert_eq!(f.counters.login_source_refused.get(), 1);
    // One of them goes: a login from the address fits again.
    drop(first);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut reader = Client::login(f.addr, "secret1", Session::BLANK, 11);
        match reader.next() {
            Got::Accepted(..) => break,
            Got::Debug(_) => assert!(Instant::now() < deadline, "never fits"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A record whose payload fails its CRC is never sent: the session that
/// reaches it gets a Debug packet naming it and is closed; sessions
/// elsewhere go on.
#[test]
fn a_damaged_record_closes_the_session_that_reaches_it() {
    // Records of 30 messages: flip a payload byte of the 2nd (31..=60).
    let f = Fixture::with_journal_edit(options(), 90, |path| {
        let mut bytes = std::fs::read(path).unwrap();
        let first = crate::journal::FILE_HEADER_BYTES;
        let len = u32::from_be_bytes(bytes[first..first + 4].try_into().unwrap()) as usize;
        let second = first + crate::journal::RECORD_HEADER_BYTES + len;
        bytes[second + crate::journal::RECORD_HEADER_BYTES + 9] ^= 0x01;
        std::fs::write(path, &bytes).unwrap();
    });
    let mut client = Client::login(f.addr, "secret1", Session::BLANK, 1);
    assert_eq!(client.next(), Got::Accepted(session(), 1));
    // What precedes the damaged record may come (it was checked); then
    // the reason, then the close; never a message of the damaged record.
    let mut seq = 1;
    loop {
        match client.next_data() {
            Got::Sequenced(payload) => {
                assert!(seq <= 30, "message {seq} of the damaged record was sent");
                assert_eq!(payload, message(seq));
                seq += 1;
            }
            Got::Debug(text) => {
                assert!(text.contains("byte"), "the reason names the offset: {text}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(client.next_data(), Got::Closed);
    f.wait_for("the damaged record counted", |c| {
        c.corrupt_records.get() == 1
    });
    // Another session after the damage is served.
    let mut after = Client::login(f.addr, "secret1", Session::BLANK, 61);
    assert_eq!(after.next(), Got::Accepted(session(), 61));
    after.expect_messages(61..91);
}

#[test]
fn trimmed_index_falls_back_to_a_scan_from_the_start() {
    // An index of 2 entries trims its oldest half again and again.
    let mut opts = options();
    opts.index_capacity = 2;
    let mut f = Fixture::new(opts, 40_000);
    let mut client = Client::login(f.addr, "secret1", Session::BLANK, 7);
    assert_eq!(client.next(), Got::Accepted(session(), 7));
    client.expect_messages(7..40_001);
    append(&mut f.writer, 5);
    client.expect_messages(40_001..40_006);
}

#[test]
fn serving_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, _) = JournalWriter::open(
        dir.path(),
        session(),
        FsyncPolicy::None,
        &crate::journal::RecoveryOptions::default(),
        |_, _| {},
    )
    .unwrap();
    append(&mut writer, 3000);
    let file = CounterFile::in_memory(ReplayCounters::NAMES);
    let counters = ReplayCounters::from_file(&file, 0);
    let clients = clients();
    let auth = AuthThread::spawn(&clients, 8).unwrap();
    let mut replay = ReplayLoop::with_authenticator(
        options(),
        &clients,
        writer.path(),
        writer.progress(),
        auth,
        counters.clone(),
    )
    .unwrap();
    let mut now_ns = 1_000_000_000u64;
    let mut allocations = 0u64;
    // Polls (counting allocations) until `done` sees what the client got.
    let mut client = Client::login(replay.local_addr(), "secret1", Session::BLANK, 1);
    client.stream.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut drive = |replay: &mut ReplayLoop,
                     client: &mut Client,
                     now_ns: u64,
                     until: &dyn Fn(&[Got]) -> bool,
                     got: &mut Vec<Got>| {
        let deadline = Instant::now() + DEADLINE;
        while !until(got) {
            assert!(
                Instant::now() < deadline,
                "timed out; got {} packets",
                got.len()
            );
            let (result, n) = tally_runtime::alloc_count::counting(|| replay.poll(now_ns));
            result.unwrap();
            allocations += n;
            loop {
                if let Some(frame) = client.decoder.next_frame().unwrap() {
                    got.push(match ServerPacket::parse(frame).unwrap() {
                        ServerPacket::LoginAccepted { session, next_seq } => {
                            Got::Accepted(session, next_seq)
                        }
                        ServerPacket::Sequenced(payload) => Got::Sequenced(payload.to_vec()),
                        ServerPacket::Heartbeat => Got::Heartbeat,
                        other => panic!("unexpected {other:?}"),
                    });
                    continue;
                }
                match client.stream.read(client.decoder.spare()) {
                    Ok(0) => panic!("closed"),
                    Ok(n) => client.decoder.commit(n),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) => panic!("read: {error}"),
                }
            }
            thread::yield_now();
        }
    };
    drive(
        &mut replay,
        &mut client,
        now_ns,
        &|got| got.len() == 3001,
        &mut got,
    );
    assert_eq!(got[0], Got::Accepted(session(), 1));
    append(&mut writer, 50);
    now_ns += 1_000_000;
    drive(
        &mut replay,
        &mut client,
        now_ns,
        &|got| got.len() == 3051,
        &mut got,
    );
    now_ns += options().heartbeat_interval_ns;
    drive(
        &mut replay,
        &mut client,
        now_ns,
        &|got| got.last() == Some(&Got::Heartbeat),
        &mut got,
    );
    for (i, packet) in got[1..3051].iter().enumerate() {
        assert_eq!(packet, &Got::Sequenced(message(i as u64 + 1)));
    }
    assert_eq!(counters.messages_sent.get(), 3050);
    assert_eq!(allocations, 0, "poll allocated");
}
