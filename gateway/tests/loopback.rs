//! The gateway loop over real loopback TCP: a `GatewayLoop` on its own
//! thread (real io_uring server, real argon2 auth thread), a fake sequencer
//! thread that numbers what the ring brings and answers outcomes, and
//! blocking std clients. Every wait has a deadline; nothing sleeps and hopes.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tally_config::gateway::{hash_password, ClientEntry, GatewayConfig, Role};
use tally_gateway::{
    AuthThread, GatewayCore, GatewayCounters, GatewayLoop, Inbound, Outcome, OutcomeKind,
};
use tally_runtime::agent::run_agents;
use tally_runtime::idle::IdleStrategy;
use tally_wire::ack::Ack;
use tally_wire::mold::Session;
use tally_wire::soup::{self, ServerPacket};
use tally_wire::{Order, Recount};

const DEADLINE: Duration = Duration::from_secs(20);

fn hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password("pw")).clone()
}

fn config() -> GatewayConfig {
    let client = |username: &str, client_id, role| ClientEntry {
        username: username.into(),
        password_hash: hash(),
        client_id,
        role,
    };
    let mut config = GatewayConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Session::from_str("LOOPBACK").unwrap(),
        vec![
            client("till1", 1, Role::Pos),
            client("till2", 2, Role::Pos),
            client("ops", 3, Role::Ops),
        ],
    );
    config.max_sessions = 8;
    config.recv_buffer_bytes = 16 * 1024;
    config
}

/// What the fake sequencer saw: (origin, client_seq, stream_seq, message).
type Journal = Arc<Mutex<Vec<(u16, u32, u64, Vec<u8>)>>>;

struct Appliance {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// While set, the fake sequencer takes nothing from the ring.
    hold: Arc<AtomicBool>,
    gateway: Option<JoinHandle<GatewayLoop>>,
    counters: GatewayCounters,
    sequencer: Option<JoinHandle<()>>,
    journal: Journal,
}

impl Appliance {
    fn start(config: GatewayConfig) -> Self {
        let (to_sequencer, mut inbound_rx) = rtrb::RingBuffer::<Inbound>::new(1024);
        let (mut outcome_tx, from_sequencer) = rtrb::RingBuffer::<Outcome>::new(1024);
        let core = GatewayCore::new(&config, GatewayCounters::in_memory(), &[]).unwrap();
        let auth = AuthThread::spawn(&config.clients, config.auth_queue_depth).unwrap();
        // Built here and moved: the loop is Send.
        let mut gateway =
            GatewayLoop::new(&config, core, to_sequencer, from_sequencer, auth).unwrap();
        let addr = gateway.local_addr();
        let counters = gateway.counters().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let journal: Journal = Arc::default();

        let gateway_stop = Arc::clone(&stop);
        let gateway = thread::spawn(move || {
            run_agents(
                &mut [&mut gateway],
                IdleStrategy::DEFAULT_BACK_OFF,
                &gateway_stop,
                None,
            )
            .unwrap();
            gateway
        });

        // The fake sequencer: numbers each message, checks exactly-once per
        // origin like the real one, answers every message.
        let sequencer_stop = Arc::clone(&stop);
        let hold = Arc::new(AtomicBool::new(false));
        let sequencer_hold = Arc::clone(&hold);
        let sequencer_journal = Arc::clone(&journal);
        let sequencer = thread::spawn(move || {
            let mut next_stream_seq = 1u64;
            let mut last_client_seq = vec![0u32; 65_536];
            while !sequencer_stop.load(Ordering::Relaxed) {
                if sequencer_hold.load(Ordering::Relaxed) {
                    thread::yield_now();
                    continue;
                }
                let Ok(inbound) = inbound_rx.pop() else {
                    thread::yield_now();
                    continue;
                };
                let last = &mut last_client_seq[usize::from(inbound.origin)];
                let kind = if inbound.client_seq <= *last {
                    OutcomeKind::Duplicate
                } else if inbound.client_seq > *last + 1 {
                    OutcomeKind::SkippedAhead
                } else if inbound.reject_reason != 0 {
                    OutcomeKind::Rejected {
                        reason: inbound.reject_reason,
                    }
                } else {
                    OutcomeKind::Accepted
                };
                let stream_seq = match kind {
                    OutcomeKind::Accepted | OutcomeKind::Rejected { .. } => {
                        *last = inbound.client_seq;
                        next_stream_seq += 1;
                        sequencer_journal.lock().unwrap().push((
                            inbound.origin,
                            inbound.client_seq,
                            next_stream_seq - 1,
                            inbound.message().to_vec(),
                        ));
                        next_stream_seq - 1
                    }
                    _ => 0,
                };
                let mut outcome = Outcome {
                    origin: inbound.origin,
                    client_seq: inbound.client_seq,
                    stream_seq,
                    timestamp_ns: stream_seq * 10,
                    kind,
                };
                while let Err(rtrb::PushError::Full(back)) = outcome_tx.push(outcome) {
                    outcome = back;
                    thread::yield_now();
                }
            }
        });
        Appliance {
            addr,
            stop,
            hold,
            gateway: Some(gateway),
            counters,
            sequencer: Some(sequencer),
            journal,
        }
    }

    fn journal(&self) -> Vec<(u16, u32, u64, Vec<u8>)> {
        self.journal.lock().unwrap().clone()
    }

    /// Stops both threads and returns the gateway (for its counters).
    fn stop(mut self) -> GatewayLoop {
        self.stop.store(true, Ordering::Relaxed);
        self.sequencer.take().unwrap().join().unwrap();
        self.gateway.take().unwrap().join().unwrap()
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A blocking SoupBinTCP client.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
enum Packet {
    Accepted { next_seq: u64 },
    Rejected(u8),
    K { client_seq: u32, stream_seq: u64 },
    J { client_seq: u32, reason: u8 },
    Heartbeat,
    Debug(String),
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn login(addr: SocketAddr, username: &str, password: &str, requested_seq: u64) -> Self {
        let mut client = Client::connect(addr);
        client.send_login(username, password, Session::BLANK, requested_seq);
        client
    }

    fn send_login(&mut self, username: &str, password: &str, session: Session, seq: u64) {
        let mut frame = [0u8; 64];
        let len = soup::write_login_request(&mut frame, username, password, session, seq).unwrap();
        self.stream.write_all(&frame[..len]).unwrap();
    }

    fn unsequenced_frame(message: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; 3 + message.len()];
        let len = soup::write_unsequenced(&mut frame, message).unwrap();
        frame.truncate(len);
        frame
    }

    fn order_frame(client_seq: u32) -> Vec<u8> {
        let order = Order::new(u64::from(client_seq), 1, 42, 1).with_client_seq(client_seq);
        Self::unsequenced_frame(order.as_bytes())
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next packet, or `None` when the server closed the connection.
    /// Panics at the deadline.
    fn next(&mut self) -> Option<Packet> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.buf.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
                if self.buf.len() >= 2 + len {
                    let frame: Vec<u8> = self.buf.drain(..2 + len).skip(2).collect();
                    return Some(Self::decode(&frame));
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
            assert!(Instant::now() < deadline, "no packet within {DEADLINE:?}");
        }
    }

    /// The next packet that is not a heartbeat.
    fn next_data(&mut self) -> Option<Packet> {
        loop {
            match self.next() {
                Some(Packet::Heartbeat) => continue,
                other => return other,
            }
        }
    }

    fn decode(frame: &[u8]) -> Packet {
        match ServerPacket::parse(frame).unwrap() {
            ServerPacket::LoginAccepted { next_seq, .. } => Packet::Accepted { next_seq },
            ServerPacket::LoginRejected { reason } => Packet::Rejected(reason),
            ServerPacket::Sequenced(payload) => match Ack::parse(payload).unwrap() {
                Ack::Accepted(k) => Packet::K {
                    client_seq: k.client_seq.get(),
                    stream_seq: k.stream_seq.get(),
                },
                Ack::Rejected(j) => Packet::J {
                    client_seq: j.client_seq.get(),
                    reason: j.reason,
                },
            },
            ServerPacket::Heartbeat => Packet::Heartbeat,
            ServerPacket::Debug(text) => Packet::Debug(String::from_utf8_lossy(text).into()),
            ServerPacket::EndOfSession => panic!("unexpected end of session"),
        }
    }

    fn expect_closed(&mut self) {
        assert_eq!(self.next_data(), None, "expected the server to close");
    }
}

#[test]
fn orders_are_stamped_sequenced_and_acked_in_order() {
    let appliance = Appliance::start(config());
    let mut client = Client::login(appliance.addr, "till1", "pw", 0);
    assert_eq!(client.next_data(), Some(Packet::Accepted { next_seq: 1 }));

    // 2000 pipelined orders in one write burst, and one recount (not a pos
    // message: recorded as j P).
    let mut burst = Vec::new();
    for client_seq in 1..=2000 {
        burst.extend_from_slice(&Client::order_frame(client_seq));
    }
    let recount = Recount::new(1, 42, 5, 0).with_client_seq(2001);
    burst.extend_from_slice(&Client::unsequenced_frame(recount.as_bytes()));
    client.send_raw(&burst);

    let mut last_stream_seq = 0;
    for client_seq in 1..=2000 {
        match client.next_data() {
            Some(Packet::K {
                client_seq: acked,
                stream_seq,
            }) => {
                assert_eq!(acked, client_seq);
                assert!(stream_seq > last_stream_seq);
                last_stream_seq = stream_seq;
            }
            other => panic!("client_seq {client_seq}: {other:?}"),
        }
    }
    assert_eq!(
        client.next_data(),
        Some(Packet::J {
            client_seq: 2001,
            reason: b'P'
        })
    );

    let journal = appliance.journal();
    assert_eq!(journal.len(), 2001);
    let (origin, client_seq, _, message) = &journal[0];
    assert_eq!((*origin, *client_seq), (1, 1));
    let stamped = Order::new(1, 1, 42, 1).with_client_seq(1).with_origin(1);
    assert_eq!(message.as_slice(), stamped.as_bytes());
    assert_eq!(
        journal[2000].3[0], b'j',
        "the recount is recorded as a gateway reject"
    );

    let gateway = appliance.stop();
    let counters = gateway.counters();
    assert_eq!(counters.messages_in.get(), 2001);
    assert_eq!(counters.acks_out.get(), 2001);
    assert_eq!(counters.gateway_rejects.get(), 1);
    assert_eq!(counters.logins_accepted.get(), 1);
}

#[test]
fn bad_logins_are_rejected_and_closed() {
    let mut config = config();
    // Every login here comes from 127.0.0.1: no back-off between them.
    config.login_backoff_base_ns = 1;
    config.login_backoff_max_ns = 1;
    let appliance = Appliance::start(config);
    for (username, password, session, reason) in [
        ("till1", "wrong", Session::BLANK, b'A'),
        ("nobody", "pw", Session::BLANK, b'A'),
        ("till1", "pw", Session::from_str("OTHER").unwrap(), b'S'),
    ] {
        let mut client = Client::connect(appliance.addr);
        client.send_login(username, password, session, 0);
        assert_eq!(
            client.next_data(),
            Some(Packet::Rejected(reason)),
            "{username}"
        );
        client.expect_closed();
    }
    let gateway = appliance.stop();
    assert_eq!(gateway.counters().logins_rejected.get(), 3);
    assert!(appliance_journal_empty(&gateway));
}

fn appliance_journal_empty(gateway: &GatewayLoop) -> bool {
    gateway.counters().messages_in.get() == 0
}

#[test]
fn protocol_errors_close_one_connection_and_spare_the_others() {
    let appliance = Appliance::start(config());
    let mut good = Client::login(appliance.addr, "till1", "pw", 0);
    assert_eq!(good.next_data(), Some(Packet::Accepted { next_seq: 1 }));

    // Data before login.
    let mut early = Client::connect(appliance.addr);
    early.send_raw(&Client::order_frame(1));
    assert!(matches!(early.next_data(), Some(Packet::Debug(t)) if t.contains("login request")));
    early.expect_closed();

    // Garbage: an oversize length prefix.
    let mut garbage = Client::login(appliance.addr, "till2", "pw", 0);
    assert_eq!(garbage.next_data(), Some(Packet::Accepted { next_seq: 1 }));
    garbage.send_raw(&[0xFF, 0xFF, b'U', 1, 2, 3]);
    assert!(matches!(garbage.next_data(), Some(Packet::Debug(t)) if t.contains("exceeds")));
    garbage.expect_closed();

    // Unknown packet type.
    let mut unknown = Client::login(appliance.addr, "ops", "pw", 0);
    assert_eq!(unknown.next_data(), Some(Packet::Accepted { next_seq: 1 }));
    unknown.send_raw(&[0, 1, b'Q']);
    assert!(matches!(unknown.next_data(), Some(Packet::Debug(t)) if t.contains("packet type 'Q'")));
    unknown.expect_closed();

    good.send_raw(&Client::order_frame(1));
    assert!(matches!(
        good.next_data(),
        Some(Packet::K { client_seq: 1, .. })
    ));
    assert_eq!(appliance.journal().len(), 1, "nothing else was sequenced");
    let gateway = appliance.stop();
    assert_eq!(gateway.counters().protocol_errors.get(), 3);
}

#[test]
fn a_client_cut_off_mid_stream_resumes_exactly_once() {
    let appliance = Appliance::start(config());
    let total = 5_000u32;
    let mut client = Client::login(appliance.addr, "till1", "pw", 0);
    assert_eq!(client.next_data(), Some(Packet::Accepted { next_seq: 1 }));
    let mut burst = Vec::new();
    for client_seq in 1..=total / 2 {
        burst.extend_from_slice(&Client::order_frame(client_seq));
    }
    client.send_raw(&burst);
    // Read a few acks, then vanish without a logout.
    for _ in 0..10 {
        assert!(matches!(client.next_data(), Some(Packet::K { .. })));
    }
    drop(client);

    // The new session learns where to resume; it resends everything from
    // 1 anyway (a client that lost its state): duplicates are dropped.
    let mut client = Client::login(appliance.addr, "till1", "pw", 0);
    let Some(Packet::Accepted { next_seq }) = client.next_data() else {
        panic!("no login accepted");
    };
    assert!(
        next_seq > 1 && next_seq <= u64::from(total / 2) + 1,
        "{next_seq}"
    );
    let mut burst = Vec::new();
    for client_seq in 1..=total {
        burst.extend_from_slice(&Client::order_frame(client_seq));
    }
    client.send_raw(&burst);
    for client_seq in next_seq as u32..=total {
        match client.next_data() {
            Some(Packet::K {
                client_seq: acked, ..
            }) => assert_eq!(acked, client_seq),
            other => panic!("client_seq {client_seq}: {other:?}"),
        }
    }
    let journal = appliance.journal();
    let client_seqs: Vec<u32> = journal.iter().map(|entry| entry.1).collect();
    assert_eq!(
        client_seqs,
        (1..=total).collect::<Vec<_>>(),
        "each exactly once"
    );
    let gateway = appliance.stop();
    assert_eq!(
        gateway.counters().duplicates_dropped.get(),
        next_seq - 1,
        "the resent prefix was dropped at the gateway"
    );
}

#[test]
fn a_resuming_login_replays_acks_from_the_requested_seq() {
    let appliance = Appliance::start(config());
    let mut client = Client::login(appliance.addr, "till2", "pw", 0);
    assert_eq!(client.next_data(), Some(Packet::Accepted { next_seq: 1 }));
    for client_seq in 1..=5 {
        client.send_raw(&Client::order_frame(client_seq));
    }
    let mut acks = Vec::new();
    for _ in 1..=5 {
        acks.push(client.next_data().unwrap());
    }
    drop(client);

    // Replaces the old session if the gateway has not noticed it is gone.
    let mut client = Client::login(appliance.addr, "till2", "pw", 3);
    assert_eq!(client.next_data(), Some(Packet::Accepted { next_seq: 6 }));
    assert_eq!(client.next_data().as_ref(), Some(&acks[2]));
    assert_eq!(client.next_data().as_ref(), Some(&acks[3]));
    assert_eq!(client.next_data().as_ref(), Some(&acks[4]));
}

#[test]
fn heartbeats_flow_and_a_silent_peer_is_dropped() {
    let mut config = config();
    config.heartbeat_interval_ns = 50_000_000; // 50 ms
    config.peer_timeout_ns = 400_000_000; // 400 ms
    let appliance = Appliance::start(config);
    let mut client = Client::login(appliance.addr, "till1", "pw", 0);
    assert_eq!(client.next(), Some(Packet::Accepted { next_seq: 1 }));
    assert_eq!(client.next(), Some(Packet::Heartbeat));
    assert_eq!(client.next(), Some(Packet::Heartbeat));
    // Say nothing: dropped after the timeout.
    let started = Instant::now();
    loop {
        match client.next() {
            Some(Packet::Heartbeat) => continue,
            Some(Packet::Debug(text)) => assert!(text.contains("nothing received"), "{text}"),
            None => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let gateway = appliance.stop();
    assert_eq!(gateway.counters().sessions_timed_out.get(), 1);
    assert!(gateway.counters().heartbeats_sent.get() >= 2);
}

#[test]
fn max_sessions_refuses_the_extra_connection() {
    let mut config = config();
    config.max_sessions = 2;
    let appliance = Appliance::start(config);
    let mut first = Client::login(appliance.addr, "till1", "pw", 0);
    assert_eq!(first.next_data(), Some(Packet::Accepted { next_seq: 1 }));
    let mut second = Client::login(appliance.addr, "till2", "pw", 0);
    assert_eq!(second.next_data(), Some(Packet::Accepted { next_seq: 1 }));
    // The third connection gets into the login pool, but its login finds
    // both sessions taken: rejected S, and told why.
    let mut third = Client::login(appliance.addr, "ops", "pw", 0);
    assert_eq!(third.next_data(), Some(Packet::Rejected(b'S')));
    assert!(matches!(third.next_data(), Some(Packet::Debug(text)) if text.contains("2 sessions")));
    third.expect_closed();
    let gateway = appliance.stop();
    assert_eq!(gateway.counters().sessions_refused.get(), 1);
}

#[test]
fn a_full_login_pool_refuses_with_a_reason_and_sessions_still_log_in() {
    let mut config = config();
    config.max_login_connections = 3;
    config.max_login_connections_per_source = 3;
    let appliance = Appliance::start(config);
    let idle: Vec<_> = (0..3).map(|_| Client::connect(appliance.addr)).collect();
    let mut refused = Client::connect(appliance.addr);
    assert!(
        matches!(refused.next_data(), Some(Packet::Debug(text)) if text.contains("waiting to log in"))
    );
    refused.expect_closed();
    drop(idle);
    // The idle ones' close frees the pool (the server sees it within a cycle).
    let deadline = Instant::now() + DEADLINE;
    let mut till = loop {
        let mut till = Client::login(appliance.addr, "till1", "pw", 0);
        match till.next_data() {
            Some(Packet::Accepted { next_seq: 1 }) => break till,
            _ => {
                assert!(Instant::now() < deadline, "the pool never freed");
                thread::sleep(Duration::from_millis(10));
            }
        }
    };
    till.send_raw(&Client::order_frame(1));
    assert!(matches!(
        till.next_data(),
        Some(Packet::K { client_seq: 1, .. })
    ));
    let gateway = appliance.stop();
    // Every client here is 127.0.0.1, so its share of the pool (3, the
    // whole pool) is what refuses first.
    let counters = gateway.counters();
    assert!(counters.login_pool_refused.get() + counters.login_source_refused.get() >= 1);
}

#[test]
fn a_full_sequencer_ring_slows_the_client_down_without_losing_anything() {
    let appliance = Appliance::start(config()); // ring of 1024, 16 KiB receives
    let mut client = Client::login(appliance.addr, "till1", "pw", 0);
    assert_eq!(client.next_data(), Some(Packet::Accepted { next_seq: 1 }));
    appliance.hold.store(true, Ordering::Relaxed);

    // 30 000 orders (about 1 MB, far more than the ring, the gateway's
    // receive backlog and the socket buffers hold) from a writer thread: the
    // writes block while the gateway holds back.
    let total = 30_000u32;
    let mut writer = client.stream.try_clone().unwrap();
    let writing = thread::spawn(move || {
        let mut burst = Vec::new();
        for client_seq in 1..=total {
            burst.extend_from_slice(&Client::order_frame(client_seq));
        }
        writer.write_all(&burst).unwrap();
    });
    // Wait until the ring is full and the gateway stalls.
    let deadline = Instant::now() + DEADLINE;
    while appliance_ring_full(&appliance) == 0 {
        assert!(Instant::now() < deadline, "the ring never filled");
        thread::yield_now();
    }
    appliance.hold.store(false, Ordering::Relaxed);
    for client_seq in 1..=total {
        match client.next_data() {
            Some(Packet::K {
                client_seq: acked, ..
            }) => assert_eq!(acked, client_seq),
            other => panic!("client_seq {client_seq}: {other:?}"),
        }
    }
    writing.join().unwrap();
    assert_eq!(appliance.journal().len(), total as usize);
    let gateway = appliance.stop();
    assert!(gateway.counters().ring_full.get() >= 1);
    assert_eq!(gateway.counters().receive_overflows.get(), 0);
}

/// The gateway's ring_full counter, read from another thread (the counters
/// are shared memory, made for exactly this).
fn appliance_ring_full(appliance: &Appliance) -> u64 {
    appliance.counters.ring_full.get()
}
