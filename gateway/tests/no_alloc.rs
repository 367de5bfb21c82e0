//! The gateway loop's hot path does not allocate: the shared counting global
//! allocator (`tally_runtime::alloc_count`) watches the gateway thread (the
//! only thread the test arms) while it serves logins,
//! thousands of orders and their acks, gateway rejects, duplicates,
//! heartbeats and a logout over real loopback TCP.
//!
//! Outside the window: start-up (everything is allocated there) and the
//! password check (on the auth thread, by design). Also outside: closing a
//! connection that left a partial frame in its buffer, which replaces that
//! connection's frame decoder (`FrameDecoder` has no way to drop buffered
//! bytes); that happens once per such connection, never per message.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tally_config::gateway::{hash_password, ClientEntry, GatewayConfig, Role};
use tally_gateway::{
    AuthThread, GatewayCore, GatewayCounters, GatewayLoop, Inbound, Outcome, OutcomeKind,
};
use tally_runtime::alloc_count::{
    arm_current_thread, armed_allocations, disarm_current_thread, CountingAllocator,
};
use tally_wire::mold::Session;
use tally_wire::soup;
use tally_wire::{Order, Recount};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const DEADLINE: Duration = Duration::from_secs(30);

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    scratch: Vec<u8>,
}

impl Client {
    fn login(addr: SocketAddr, username: &str) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut client = Client {
            stream,
            buf: Vec::new(),
            scratch: vec![0; 64 * 1024],
        };
        let mut frame = [0u8; 64];
        let len = soup::write_login_request(&mut frame, username, "pw", Session::BLANK, 0).unwrap();
        client.stream.write_all(&frame[..len]).unwrap();
        assert_eq!(client.next_frame_type(), b'A');
        client
    }

    /// The next frame's type byte (and the frame in `self.buf[3..]`
    /// consumed); `None` when closed.
    fn next_frame(&mut self) -> Option<Vec<u8>> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.buf.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
                if self.buf.len() >= 2 + len {
                    return Some(self.buf.drain(..2 + len).skip(2).collect());
                }
            }
            match self.stream.read(&mut self.scratch) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&self.scratch[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read: {e}"),
            }
            assert!(Instant::now() < deadline, "no frame within {DEADLINE:?}");
        }
    }

    fn next_frame_type(&mut self) -> u8 {
        self.next_frame().expect("connection open")[0]
    }

    /// Waits for `n` acks (skipping heartbeats); returns how many were `j`.
    fn acks(&mut self, n: usize) -> usize {
        let mut rejected = 0;
        let mut seen = 0;
        while seen < n {
            let frame = self.next_frame().expect("connection open");
            match (frame[0], frame.get(1)) {
                (b'H', _) => {}
                (b'S', Some(b'k')) => seen += 1,
                (b'S', Some(b'j')) => {
                    seen += 1;
                    rejected += 1;
                }
                _ => panic!("unexpected frame {:?}", String::from_utf8_lossy(&frame)),
            }
        }
        rejected
    }
}

fn unsequenced(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; 3 + message.len()];
    let len = soup::write_unsequenced(&mut frame, message).unwrap();
    frame.truncate(len);
    frame
}

fn orders(from: u32, to: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    for client_seq in from..=to {
        if client_seq % 100 == 0 {
            // Not a pos command: recorded as j P.
            let recount = Recount::new(1, 42, 5, 0).with_client_seq(client_seq);
            bytes.extend_from_slice(&unsequenced(recount.as_bytes()));
        } else {
            let order = Order::new(u64::from(client_seq), 1, 42, 1).with_client_seq(client_seq);
            bytes.extend_from_slice(&unsequenced(order.as_bytes()));
        }
    }
    bytes
}

#[test]
fn the_gateway_loop_does_not_allocate_while_serving() {
    // The allocator does count (on the thread that opts in).
    let before = armed_allocations();
    arm_current_thread();
    drop(std::hint::black_box(Box::new(7u64)));
    disarm_current_thread();
    assert_eq!(armed_allocations() - before, 1);

    let hash = hash_password("pw");
    let client = |username: &str, client_id| ClientEntry {
        username: username.into(),
        password_hash: hash.clone(),
        client_id,
        role: Role::Pos,
    };
    let mut config = GatewayConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Session::from_str("NOALLOC").unwrap(),
        vec![client("till1", 1), client("till2", 2)],
    );
    config.max_sessions = 4;
    config.recv_buffer_bytes = 16 * 1024;
    config.heartbeat_interval_ns = 20_000_000; // 20 ms: heartbeats happen in the window
    config.peer_timeout_ns = 60_000_000_000;

    let (to_sequencer, mut inbound_rx) = rtrb::RingBuffer::<Inbound>::new(256);
    let (mut outcome_tx, from_sequencer) = rtrb::RingBuffer::<Outcome>::new(256);
    let core = GatewayCore::new(&config, GatewayCounters::in_memory(), &[]).unwrap();
    let auth = AuthThread::spawn(&config.clients, config.auth_queue_depth).unwrap();
    let mut gateway = GatewayLoop::new(&config, core, to_sequencer, from_sequencer, auth).unwrap();
    let addr = gateway.local_addr();
    let counters = gateway.counters().clone();

    let stop = Arc::new(AtomicBool::new(false));
    let window = Arc::new(AtomicBool::new(false));
    let window_seen = Arc::new(AtomicBool::new(false));
    let gateway_thread = {
        let (stop, window, window_seen) = (stop.clone(), window.clone(), window_seen.clone());
        thread::spawn(move || {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let counting = window.load(Ordering::Relaxed);
                if counting {
                    arm_current_thread();
                } else {
                    disarm_current_thread();
                }
                window_seen.store(counting, Ordering::Relaxed);
                let work = gateway.poll(start.elapsed().as_nanos() as u64);
                if work == 0 {
                    thread::yield_now();
                }
            }
            disarm_current_thread();
            gateway
        })
    };
    let sequencer_thread = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut stream_seq = 0;
            while !stop.load(Ordering::Relaxed) {
                let Ok(inbound) = inbound_rx.pop() else {
                    thread::yield_now();
                    continue;
                };
                stream_seq += 1;
                let kind = match inbound.reject_reason {
                    0 => OutcomeKind::Accepted,
                    reason => OutcomeKind::Rejected { reason },
                };
                let mut outcome = Outcome {
                    origin: inbound.origin,
                    client_seq: inbound.client_seq,
                    stream_seq,
                    timestamp_ns: stream_seq,
                    kind,
                };
                while let Err(rtrb::PushError::Full(back)) = outcome_tx.push(outcome) {
                    outcome = back;
                    thread::yield_now();
                }
            }
        })
    };

    // Warm-up, outside the window: first login, first orders, first acks.
    let mut till1 = Client::login(addr, "till1");
    till1.stream.write_all(&orders(1, 200)).unwrap();
    assert_eq!(till1.acks(200), 2);

    let allocations_before = armed_allocations();
    window.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + DEADLINE;
    while !window_seen.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline);
        thread::yield_now();
    }
    let heartbeats_before = counters.heartbeats_sent.get();

    // In the window: 10 000 more (100 of them j P), a resent duplicate, a
    // second client's login, orders and logout, and heartbeats.
    till1.stream.write_all(&orders(201, 10_200)).unwrap();
    till1.stream.write_all(&orders(10_200, 10_200)).unwrap(); // duplicate
    let mut till2 = Client::login(addr, "till2");
    till2.stream.write_all(&orders(1, 50)).unwrap();
    assert_eq!(till2.acks(50), 0);
    let mut logout = [0u8; 3];
    soup::write_logout(&mut logout).unwrap();
    till2.stream.write_all(&logout).unwrap();
    assert_eq!(till2.next_frame(), None);
    assert_eq!(till1.acks(10_000), 100);
    while counters.heartbeats_sent.get() < heartbeats_before + 2 {
        assert!(Instant::now() < deadline, "no heartbeats");
        assert_eq!(till1.next_frame_type(), b'H');
    }
    let deadline = Instant::now() + DEADLINE;
    while counters.duplicates_dropped.get() < 1 || counters.sessions_active.get() != 1 {
        assert!(Instant::now() < deadline);
        thread::yield_now();
    }

    window.store(false, Ordering::Relaxed);
    while window_seen.load(Ordering::Relaxed) {
        thread::yield_now();
    }
    let allocations = armed_allocations() - allocations_before;
    stop.store(true, Ordering::Relaxed);
    sequencer_thread.join().unwrap();
    let gateway = gateway_thread.join().unwrap();
    assert_eq!(gateway.counters().logins_accepted.get(), 2);
    assert_eq!(gateway.counters().gateway_rejects.get(), 102);
    assert_eq!(
        allocations, 0,
        "the gateway thread allocated {allocations} times while serving"
    );
}
