//! Real-kernel datagram tests on loopback: multicast (one sender, two
//! receivers, 100 000 datagrams, both receive modes), truncation, group
//! isolation, and UDP unicast request/reply.
//!
//! Each test uses its own multicast group (239.255.42.N) and a port the
//! kernel picked, so the tests run in parallel. Nothing leaves 127.0.0.0/8.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tally_runtime::alloc_count::{counting, CountingAllocator};
use tally_runtime::net::{
    MulticastConfig, MulticastReceiver, MulticastSender, RecvMode, UdpSocketRing,
};

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Counts allocations made by the current thread while armed, to prove the
/// per-message paths allocate nothing.
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// A port no one on this host is using right now (multicast receivers bind
/// group:port, so only other tests on the same group could collide, and each
/// test has its own group).
fn free_port() -> u16 {
    UdpSocket::bind((LOOPBACK, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(group_last_octet: u8) -> MulticastConfig {
    MulticastConfig {
        group: Ipv4Addr::new(239, 255, 42, group_last_octet),
        port: free_port(),
        interface: LOOPBACK,
        ttl: 0,
        loopback: true,
    }
}

/// Datagram `index`: 8-byte little-endian index, then a deterministic
/// payload whose length varies with the index (8..=1207 bytes in all).
fn datagram_len(index: u64) -> usize {
    8 + (index.wrapping_mul(7919) % 1200) as usize
}

fn fill_datagram(index: u64, out: &mut [u8]) -> usize {
    let len = datagram_len(index);
    out[..8].copy_from_slice(&index.to_le_bytes());
    for (j, byte) in out[8..len].iter_mut().enumerate() {
        *byte = (index as u8).wrapping_mul(31).wrapping_add(j as u8);
    }
    len
}

fn check_datagram(expected_index: u64, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 {
        return Err(format!("datagram of {} bytes", bytes.len()));
    }
    let index = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    if index != expected_index {
        return Err(format!("expected datagram {expected_index}, got {index}"));
    }
    let mut want = [0u8; 1500];
    let len = fill_datagram(index, &mut want);
    if bytes != &want[..len] {
        return Err(format!(
            "datagram {index}: content differs ({} bytes, want {len})",
            bytes.len()
        ));
    }
    Ok(())
}

struct ReceiverReport {
    mode: RecvMode,
    received: u64,
    error: Option<String>,
    stats: tally_runtime::net::RecvStats,
    receive_buffer_bytes: usize,
}

/// Runs a receiver on its own thread until it has `total` datagrams, an
/// error, or the deadline; publishes progress through `progress`.
fn spawn_receiver(
    mut receiver: MulticastReceiver,
    total: u64,
    progress: Arc<AtomicU64>,
    deadline: Instant,
) -> thread::JoinHandle<ReceiverReport> {
    thread::spawn(move || {
        let mut next = 0u64;
        let mut error = None;
        while next < total && error.is_none() && Instant::now() < deadline {
            let result = receiver.wait(Duration::from_millis(100), |bytes| {
                if error.is_none() {
                    if let Err(e) = check_datagram(next, bytes) {
                        error = Some(e);
                    }
                }
                next += 1;
            });
            if let Err(e) = result {
                error = Some(format!("wait failed: {e}"));
            }
            progress.store(next, Ordering::Release);
        }
        ReceiverReport {
            mode: receiver.mode(),
            received: next,
            error,
            stats: receiver.stats(),
            receive_buffer_bytes: receiver.receive_buffer_bytes(),
        }
    })
}

/// One sender, two receivers (own threads), `total` datagrams, paced so the
/// sender stays within `WINDOW` datagrams of the slower receiver.
fn stream_to_two_receivers(cfg: MulticastConfig, mode: RecvMode, total: u64) {
    const WINDOW: u64 = 1024;
    let deadline = Instant::now() + Duration::from_secs(120);
    let receivers = [
        MulticastReceiver::with_mode(&cfg, 512, 1500, mode).unwrap(),
        MulticastReceiver::with_mode(&cfg, 512, 1500, mode).unwrap(),
    ];
    let progress: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let handles: Vec<_> = receivers
        .into_iter()
        .zip(&progress)
        .map(|(r, p)| spawn_receiver(r, total, Arc::clone(p), deadline))
        .collect();

    let mut sender = MulticastSender::new(&cfg, 256, 1500).unwrap();
    let slowest = |progress: &[Arc<AtomicU64>]| {
        progress
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .min()
            .unwrap()
    };
    for index in 0..total {
        while index >= slowest(&progress) + WINDOW {
            assert!(
                Instant::now() < deadline,
                "receivers stalled at {}",
                slowest(&progress)
            );
            assert!(
                !handles.iter().any(|h| h.is_finished()),
                "a receiver stopped early"
            );
            // Waiting for another thread's progress: a short park, re-checked.
            thread::sleep(Duration::from_micros(100));
        }
        let (slot, buffer) = loop {
            if let Some(free) = sender.slot() {
                break free;
            }
            sender.wait_completions(Duration::from_secs(1)).unwrap();
            assert!(Instant::now() < deadline, "sends never completed");
        };
        let len = fill_datagram(index, buffer);
        sender.send_slot(slot, len).unwrap();
    }
    sender.flush(Duration::from_secs(10)).unwrap();
    let send_stats = sender.stats();
    assert_eq!(send_stats.datagrams, total, "{send_stats:?}");
    assert_eq!(send_stats.errors, 0, "{send_stats:?}");

    for handle in handles {
        let report = handle.join().unwrap();
        eprintln!(
            "receiver mode {:?}, SO_RCVBUF {} bytes, {:?}",
            report.mode, report.receive_buffer_bytes, report.stats
        );
        assert_eq!(report.mode, mode);
        assert_eq!(report.error, None);
        assert_eq!(report.received, total);
        assert_eq!(report.stats.datagrams, total);
        assert_eq!(report.stats.truncated, 0);
        assert_eq!(report.stats.errors, 0);
    }
}

#[test]
fn two_receivers_see_all_100k_datagrams_multishot() {
    let cfg = config(1);
    let probe = MulticastReceiver::new(&cfg, 8, 64).unwrap();
    let mode = probe.mode();
    drop(probe);
    if mode != RecvMode::Multishot {
        eprintln!("kernel refused multishot recvmsg; this test runs the fallback instead");
    }
    stream_to_two_receivers(cfg, mode, 100_000);
}

#[test]
fn two_receivers_see_all_100k_datagrams_single_shot_fallback() {
    stream_to_two_receivers(config(2), RecvMode::SingleShot, 100_000);
}

fn truncated_datagrams_are_counted_not_delivered(group_last_octet: u8, mode: RecvMode) {
    let cfg = config(group_last_octet);
    let mut receiver = MulticastReceiver::with_mode(&cfg, 4, 64, mode).unwrap();
    assert_eq!(receiver.mode(), mode);
    let mut sender = MulticastSender::new(&cfg, 4, 256).unwrap();
    sender.send_copy(&[7u8; 65]).unwrap(); // one byte too many
    sender.send_copy(&[8u8; 64]).unwrap(); // fits exactly
    sender.flush(Duration::from_secs(5)).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.is_empty() && Instant::now() < deadline {
        receiver
            .wait(Duration::from_millis(100), |bytes| got.push(bytes.to_vec()))
            .unwrap();
    }
    assert_eq!(got, vec![vec![8u8; 64]]);
    assert_eq!(receiver.stats().truncated, 1);
    assert_eq!(receiver.stats().datagrams, 1);
}

#[test]
fn truncated_datagrams_are_counted_not_delivered_multishot() {
    truncated_datagrams_are_counted_not_delivered(3, RecvMode::Multishot);
}

#[test]
fn truncated_datagrams_are_counted_not_delivered_single_shot() {
    truncated_datagrams_are_counted_not_delivered(4, RecvMode::SingleShot);
}

#[test]
fn receiver_of_another_group_on_the_same_port_sees_nothing() {
    let cfg = config(5);
    let other = MulticastConfig {
        group: Ipv4Addr::new(239, 255, 42, 6),
        ..cfg
    };
    let mut joined = MulticastReceiver::new(&cfg, 64, 256).unwrap();
    let mut bystander = MulticastReceiver::new(&other, 64, 256).unwrap();
    let mut sender = MulticastSender::new(&cfg, 16, 256).unwrap();
    for index in 0..100u64 {
        loop {
            match sender.send_copy(&index.to_le_bytes()) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    sender.wait_completions(Duration::from_secs(1)).unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    sender.flush(Duration::from_secs(5)).unwrap();
    let mut next = 0u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while next < 100 && Instant::now() < deadline {
        joined
            .wait(Duration::from_millis(100), |bytes| {
                assert_eq!(bytes, next.to_le_bytes());
                next += 1;
            })
            .unwrap();
    }
    assert_eq!(next, 100);
    // Loopback delivers to every member while the sender sends, so anything
    // meant for the bystander would be queued by now; give it a moment more.
    let stray = bystander.wait(Duration::from_millis(50), |_| {}).unwrap();
    assert_eq!(stray, 0);
    assert_eq!(bystander.stats().datagrams, 0);
}

#[test]
fn sender_back_pressure_when_every_slot_is_in_flight() {
    let cfg = config(7);
    let mut sender = MulticastSender::new(&cfg, 2, 64).unwrap();
    // The claimed slot persists until it is sent.
    let (first, buffer) = sender.slot().unwrap();
    buffer[..3].copy_from_slice(b"abc");
    let (again, buffer) = sender.slot().unwrap();
    assert_eq!(first, again);
    assert_eq!(&buffer[..3], b"abc");
    sender.queue_slot(first, 3).unwrap();
    let (second, _) = sender.slot().unwrap();
    assert_ne!(first, second);
    sender.queue_slot(second, 3).unwrap();
    sender.submit().unwrap();
    sender.flush(Duration::from_secs(5)).unwrap();
    assert_eq!(sender.stats().datagrams, 2);
    assert_eq!(sender.in_flight(), 0);
    assert!(sender.slot().is_some());
}

/// A UDP request/reply exchange through two `UdpSocketRing`s: a server
/// thread that answers each request to its source, and a client.
fn udp_request_reply(server_mode: RecvMode, client_mode: RecvMode) {
    const REQUESTS: u64 = 2000;
    let mut server =
        UdpSocketRing::bind_with_mode(SocketAddrV4::new(LOOPBACK, 0), 64, 1500, server_mode)
            .unwrap();
    assert_eq!(server.mode(), server_mode);
    let server_addr = server.local_addr();
    let server_thread = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut answered = 0u64;
        let mut reply = [0u8; 1500];
        while answered < REQUESTS && Instant::now() < deadline {
            let mut pending: Vec<(SocketAddrV4, usize)> = Vec::new();
            server
                .wait_recv(Duration::from_millis(100), |from, bytes| {
                    reply[..6].copy_from_slice(b"reply:");
                    reply[6..6 + bytes.len()].copy_from_slice(bytes);
                    pending.push((from, 6 + bytes.len()));
                })
                .unwrap();
            for (to, len) in pending {
                // Each request is answered before the client sends the next,
                // so there is always a free slot.
                server.send_to(to, &reply[..len]).unwrap();
                answered += 1;
            }
        }
        server.flush(Duration::from_secs(5)).unwrap();
        (answered, server.recv_stats(), server.send_stats())
    });

    let mut client =
        UdpSocketRing::bind_with_mode(SocketAddrV4::new(LOOPBACK, 0), 8, 1500, client_mode)
            .unwrap();
    assert_eq!(client.mode(), client_mode);
    let client_addr = client.local_addr();
    assert_ne!(client_addr.port(), 0);
    for index in 0..REQUESTS {
        let request_len = 8 + (index as usize * 13) % 1000;
        let mut request = vec![(index as u8).wrapping_add(1); request_len];
        request[..8].copy_from_slice(&index.to_le_bytes());
        client.send_to(server_addr, &request).unwrap();
        let mut replies = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while replies == 0 {
            assert!(Instant::now() < deadline, "no reply to request {index}");
            client
                .wait_recv(Duration::from_millis(100), |from, bytes| {
                    assert_eq!(from, server_addr);
                    assert_eq!(&bytes[..6], b"reply:");
                    assert_eq!(&bytes[6..], &request[..]);
                    replies += 1;
                })
                .unwrap();
        }
        assert_eq!(replies, 1);
    }
    let (answered, server_recv, server_send) = server_thread.join().unwrap();
    assert_eq!(answered, REQUESTS);
    assert_eq!(server_recv.datagrams, REQUESTS);
    assert_eq!(server_send.datagrams, REQUESTS);
    assert_eq!(server_send.errors, 0);
    client.flush(Duration::from_secs(5)).unwrap();
    assert_eq!(client.send_stats().datagrams, REQUESTS);
    assert_eq!(client.recv_stats().datagrams, REQUESTS);
}

#[test]
fn udp_request_reply_multishot() {
    udp_request_reply(RecvMode::Multishot, RecvMode::Multishot);
}

#[test]
fn udp_request_reply_single_shot_fallback() {
    udp_request_reply(RecvMode::SingleShot, RecvMode::SingleShot);
}

#[test]
fn datagram_hot_paths_do_not_allocate() {
    let cfg = config(8);
    let mut receiver = MulticastReceiver::new(&cfg, 64, 1500).unwrap();
    let mut fallback = MulticastReceiver::with_mode(&cfg, 64, 1500, RecvMode::SingleShot).unwrap();
    let mut sender = MulticastSender::new(&cfg, 32, 1500).unwrap();
    let mut client = UdpSocketRing::bind(SocketAddrV4::new(LOOPBACK, 0), 16, 1500).unwrap();
    let mut server = UdpSocketRing::bind(SocketAddrV4::new(LOOPBACK, 0), 16, 1500).unwrap();
    let server_addr = server.local_addr();
    let mut round = |index: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (slot, buffer) = sender.slot().expect("a free slot");
        let len = fill_datagram(index, buffer);
        sender.send_slot(slot, len).unwrap();
        sender.send_copy(&index.to_le_bytes()).unwrap();
        for r in [&mut receiver, &mut fallback] {
            let mut got = 0;
            while got < 2 {
                assert!(Instant::now() < deadline);
                got += r
                    .wait(Duration::from_millis(100), |bytes| {
                        assert!(bytes.len() >= 8)
                    })
                    .unwrap();
            }
        }
        sender.flush(Duration::from_secs(5)).unwrap();
        client.send_to(server_addr, &index.to_le_bytes()).unwrap();
        let mut requester = None;
        while requester.is_none() {
            assert!(Instant::now() < deadline);
            server
                .wait_recv(Duration::from_millis(100), |from, _| requester = Some(from))
                .unwrap();
        }
        server
            .send_to(requester.unwrap(), &index.to_le_bytes())
            .unwrap();
        let mut replies = 0;
        while replies == 0 {
            assert!(Instant::now() < deadline);
            replies += client
                .wait_recv(Duration::from_millis(100), |_, _| {})
                .unwrap();
        }
    };
    round(0); // warm-up: first use of clocks and thread-locals
    let ((), allocations) = counting(|| {
        for index in 1..=1000 {
            round(index);
        }
    });
    assert_eq!(allocations, 0);
    let ((), control) = counting(|| drop(std::hint::black_box(vec![1u8; 10])));
    assert_eq!(control, 1, "the allocation counter counts");
    assert_eq!(receiver.stats().datagrams, 2002);
    assert_eq!(fallback.stats().datagrams, 2002);
}

/// A receiver that stops reading: once its provided buffers and its
/// `SO_RCVBUF` are full the kernel drops datagrams, and `kernel_drops`
/// reports them (the counter `tally-stat` shows as `kernel_drops`).
#[test]
fn kernel_drops_of_a_receiver_that_stops_reading_are_reported() {
    let cfg = config(77);
    let mut receiver = MulticastReceiver::new(&cfg, 16, 2048).unwrap();
    assert_eq!(receiver.kernel_drops(), Some(0), "nothing dropped yet");
    let sender = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    sender.set_multicast_loop_v4(true).unwrap();
    let target = SocketAddrV4::new(cfg.group, cfg.port);
    let datagram = [0x5Au8; 1400];
    // Far more than 16 buffers plus the 8 MiB queue hold.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0u64;
    while receiver.kernel_drops().unwrap_or(0) == 0 {
        for _ in 0..1_000 {
            let _ = sender.send_to(&datagram, target);
            sent += 1;
        }
        assert!(
            Instant::now() < deadline,
            "no drop reported after {sent} unread datagrams"
        );
    }
    let drops = receiver.kernel_drops().unwrap();
    assert!(drops > 0 && drops <= sent, "{drops} drops of {sent} sent");
    // Reading again delivers what the queue held; the count never goes back.
    let mut delivered = 0;
    while receiver
        .wait(Duration::from_millis(50), |_| delivered += 1)
        .unwrap()
        > 0
    {}
    assert!(delivered > 0);
    assert!(receiver.kernel_drops().unwrap() >= drops);
}

/// A waker watched in the receiver's ring ends its wait at once, for each
/// wake; without a wake the wait runs its course; datagrams still arrive in
/// between (the watch does not disturb the receive).
fn a_watched_waker_ends_a_receivers_wait(group_last_octet: u8, mode: RecvMode) {
    use std::sync::atomic::AtomicBool;
    use tally_runtime::wake::Waker;

    let cfg = config(group_last_octet);
    let mut receiver = MulticastReceiver::with_mode(&cfg, 8, 256, mode).unwrap();
    let mut sender = MulticastSender::new(&cfg, 4, 256).unwrap();
    let waker = Waker::new().unwrap();
    receiver.watch_waker(waker.clone()).unwrap();
    for round in 0..3u8 {
        // Another thread wakes the parked loop until the loop is back.
        let back = Arc::new(AtomicBool::new(false));
        let waking = {
            let (waker, back) = (waker.clone(), Arc::clone(&back));
            thread::spawn(move || {
                while !back.load(Ordering::Acquire) {
                    waker.wake();
                    thread::sleep(Duration::from_millis(1));
                }
            })
        };
        let started = Instant::now();
        let mut delivered = usize::MAX;
        waker.park_with(
            || false,
            || delivered = receiver.wait(Duration::from_secs(30), |_| {}).unwrap(),
        );
        back.store(true, Ordering::Release);
        waking.join().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "round {round}: the wake did not end the wait"
        );
        assert_eq!(delivered, 0, "round {round}: nothing was sent");
        assert!(receiver.take_woken(), "round {round}: the wake is noted");
        // A late wake (written after the wait ended) may still be pending:
        // take it, then the next wait without a wake runs its course.
        receiver.poll(|_| {}).unwrap();
        receiver.take_woken();
        let started = Instant::now();
        assert_eq!(receiver.wait(Duration::from_millis(30), |_| {}).unwrap(), 0);
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(!receiver.take_woken());
        // And the stream still flows.
        sender.send_copy(&[round; 100]).unwrap();
        let mut got = Vec::new();
        let n = receiver
            .wait(Duration::from_secs(30), |bytes| got.push(bytes.to_vec()))
            .unwrap();
        assert_eq!((n, got), (1, vec![vec![round; 100]]));
        sender.flush(Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn a_watched_waker_ends_a_receivers_wait_multishot() {
    a_watched_waker_ends_a_receivers_wait(78, RecvMode::Multishot);
}

#[test]
fn a_watched_waker_ends_a_receivers_wait_single_shot() {
    a_watched_waker_ends_a_receivers_wait(79, RecvMode::SingleShot);
}
