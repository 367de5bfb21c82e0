//! Real-kernel TCP tests on loopback through the io_uring helpers: an echo
//! server with several clients, max_connections, closes from either side,
//! flush-on-close, stale ids and a full send buffer.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tally_runtime::alloc_count::{counting, CountingAllocator};
use tally_runtime::net::{
    CloseReason, ConnId, SendError, TcpConn, TcpEvent, TcpServer, TcpServerConfig,
};

/// Counts allocations made by the current thread while armed, to prove the
/// per-message paths allocate nothing.
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The byte stream client `client` sends: frames of a 4-byte length, a
/// 4-byte frame number and a deterministic body, sizes from 1 byte to three
/// times the server's receive buffer.
fn client_stream(client: u32, frames: u32, max_body: usize) -> Vec<u8> {
    let mut stream = Vec::new();
    for frame in 0..frames {
        let body_len = 1 + ((frame as usize * 2654435761 + client as usize * 97) % max_body);
        stream.extend_from_slice(&(body_len as u32).to_be_bytes());
        stream.extend_from_slice(&frame.to_be_bytes());
        stream.extend((0..body_len).map(|j| (j as u32 ^ frame ^ client) as u8));
    }
    stream
}

#[test]
fn echo_server_returns_every_byte_in_order_to_several_clients() {
    const CLIENTS: u32 = 4;
    const FRAMES: u32 = 400;
    const RECV_BUFFER_BYTES: usize = 4096;
    /// A client keeps at most this many bytes sent and not yet echoed, so
    /// the server's per-connection send buffer (larger) never fills.
    const WINDOW_BYTES: usize = 48 * 1024;
    let cfg = TcpServerConfig {
        max_connections: 8,
        recv_buffer_bytes: RECV_BUFFER_BYTES,
        send_buffer_bytes: 64 * 1024,
        backlog: 64,
    };
    let mut server = TcpServer::bind(loopback(), &cfg).unwrap();
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let server_stop = Arc::clone(&stop);
    let server_thread = thread::spawn(move || {
        let mut accepted = 0;
        let mut closed = Vec::new();
        let mut echoed = 0usize;
        let mut full = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            server
                .poll(|io, event| match event {
                    TcpEvent::Accepted { .. } => accepted += 1,
                    TcpEvent::Data { conn, bytes } => match io.send(conn, bytes) {
                        Ok(()) => echoed += bytes.len(),
                        Err(_) => {
                            full += 1;
                            io.close_now(conn);
                        }
                    },
                    TcpEvent::Closed { conn, reason } => closed.push((conn, reason)),
                    TcpEvent::Rejected { peer } => panic!("rejected {peer}"),
                })
                .unwrap();
            if server_stop.load(Ordering::Acquire) && closed.len() == accepted {
                break;
            }
            assert!(Instant::now() < deadline, "server loop ran out of time");
            // Park until a completion arrives (never spin on 2 cores).
            server.wait(Duration::from_millis(100)).unwrap();
        }
        (accepted, closed, echoed, full, server.stats())
    });

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            thread::spawn(move || {
                let stream = client_stream(client, FRAMES, 3 * RECV_BUFFER_BYTES);
                let mut conn = TcpConn::connect(addr, 8192, 16 * 1024).unwrap();
                let deadline = Instant::now() + Duration::from_secs(60);
                let (mut sent, mut received) = (0usize, 0usize);
                while received < stream.len() {
                    assert!(
                        Instant::now() < deadline,
                        "client {client}: stuck at {received}/{}",
                        stream.len()
                    );
                    // Send in pieces of up to 5000 bytes, within the window.
                    let room = WINDOW_BYTES.saturating_sub(sent - received);
                    let piece = (stream.len() - sent).min(room).min(5000);
                    if piece > 0 {
                        match conn.send(&stream[sent..sent + piece]) {
                            Ok(()) => sent += piece,
                            Err(SendError::Full) => {}
                            Err(SendError::Closed) => panic!("client {client}: closed"),
                        }
                    }
                    let mut check = |bytes: &[u8]| {
                        assert_eq!(
                            bytes,
                            &stream[received..received + bytes.len()],
                            "client {client}: echo differs at byte {received}"
                        );
                        received += bytes.len();
                    };
                    if piece > 0 && sent < stream.len() {
                        conn.poll_recv(&mut check).unwrap();
                    } else {
                        conn.wait_recv(Duration::from_millis(100), &mut check)
                            .unwrap();
                    }
                }
                conn.flush(Duration::from_secs(5)).unwrap();
                assert_eq!(conn.stats().bytes_received as usize, stream.len());
                stream.len()
                // conn drops here: the server sees the close.
            })
        })
        .collect();
    let total: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    stop.store(true, Ordering::Release);
    let (accepted, closed, echoed, full, stats) = server_thread.join().unwrap();
    eprintln!("server stats: {stats:?}");
    assert_eq!(accepted, CLIENTS as usize);
    assert_eq!(full, 0);
    assert_eq!(echoed, total);
    assert_eq!(stats.bytes_received as usize, total);
    assert_eq!(stats.bytes_sent as usize, total);
    assert_eq!(closed.len(), CLIENTS as usize);
    assert!(
        closed
            .iter()
            .all(|(_, reason)| *reason == CloseReason::PeerClosed),
        "{closed:?}"
    );
}

fn small_config(max_connections: usize) -> TcpServerConfig {
    TcpServerConfig {
        max_connections,
        recv_buffer_bytes: 1024,
        send_buffer_bytes: 4096,
        backlog: 16,
    }
}

/// Collects events into owned form for single-threaded tests.
#[derive(Debug, PartialEq)]
enum Seen {
    Accepted(ConnId),
    Data(ConnId, Vec<u8>),
    Closed(ConnId, CloseReason),
    Rejected,
}

fn record(
    seen: &mut Vec<Seen>,
) -> impl FnMut(&mut tally_runtime::net::TcpServerHandle, TcpEvent<'_>) + '_ {
    |_, event| {
        seen.push(match event {
            TcpEvent::Accepted { conn, .. } => Seen::Accepted(conn),
            TcpEvent::Data { conn, bytes } => Seen::Data(conn, bytes.to_vec()),
            TcpEvent::Closed { conn, reason } => Seen::Closed(conn, reason),
            TcpEvent::Rejected { .. } => Seen::Rejected,
        })
    }
}

/// Polls the server, parking in `wait`, until `done(seen)`; 10 s deadline.
fn poll_until(server: &mut TcpServer, seen: &mut Vec<Seen>, done: impl Fn(&[Seen]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        server.poll(record(seen)).unwrap();
        if done(seen) {
            return;
        }
        assert!(Instant::now() < deadline, "condition not reached: {seen:?}");
        server.wait(Duration::from_millis(100)).unwrap();
    }
}

/// Polls until one connection is accepted and returns its id.
fn accept_one(server: &mut TcpServer) -> ConnId {
    let mut seen = Vec::new();
    poll_until(server, &mut seen, |s| !s.is_empty());
    match seen[..] {
        [Seen::Accepted(id)] => id,
        _ => panic!("{seen:?}"),
    }
}

/// Waits until the client sees the connection closed; returns the error.
fn wait_closed(conn: &mut TcpConn) -> io::Error {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "client never saw the close");
        if let Err(e) = conn.wait_recv(Duration::from_millis(100), |_| {}) {
            return e;
        }
    }
}

#[test]
fn max_connections_is_enforced_and_a_freed_slot_is_reused() {
    let mut server = TcpServer::bind(loopback(), &small_config(2)).unwrap();
    let addr = server.local_addr();
    // The kernel completes the handshakes from the backlog, so the clients
    // connect before the server loop runs; they are accepted in order.
    let mut first = TcpConn::connect(addr, 1024, 1024).unwrap();
    let mut second = TcpConn::connect(addr, 1024, 1024).unwrap();
    let mut third = TcpConn::connect(addr, 1024, 1024).unwrap();
    let mut seen = Vec::new();
    poll_until(&mut server, &mut seen, |s| s.len() >= 3);
    let (first_id, second_id) = match seen[..] {
        [Seen::Accepted(a), Seen::Accepted(b), Seen::Rejected] => (a, b),
        _ => panic!("{seen:?}"),
    };
    assert_eq!(server.connections(), 2);
    assert_eq!(server.stats().rejected, 1);
    // The rejected client sees its connection closed.
    let e = wait_closed(&mut third);
    assert!(
        matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        ),
        "{e}"
    );
    // The two accepted clients are served.
    first.send(b"one").unwrap();
    second.send(b"two").unwrap();
    seen.clear();
    poll_until(&mut server, &mut seen, |s| s.len() >= 2);
    assert!(
        seen.contains(&Seen::Data(first_id, b"one".to_vec())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&Seen::Data(second_id, b"two".to_vec())),
        "{seen:?}"
    );
    // The first client leaves; a new client takes its slot under a new id.
    drop(first);
    seen.clear();
    poll_until(&mut server, &mut seen, |s| !s.is_empty());
    assert_eq!(seen, [Seen::Closed(first_id, CloseReason::PeerClosed)]);
    assert_eq!(server.connections(), 1);
    let _fourth = TcpConn::connect(addr, 1024, 1024).unwrap();
    let fourth_id = accept_one(&mut server);
    assert_eq!(fourth_id.index(), first_id.index());
    assert_ne!(fourth_id, first_id);
    assert_eq!(server.send(first_id, b"stale"), Err(SendError::Closed));
    assert_eq!(server.pending_send_bytes(first_id), 0);
    assert!(!server.is_open(first_id));
    assert_eq!(server.send(fourth_id, b"fresh"), Ok(()));
    assert_eq!(server.connections(), 2);
}

#[test]
fn client_close_is_seen_as_closed_and_server_close_as_eof() {
    let mut server = TcpServer::bind(loopback(), &small_config(4)).unwrap();
    let addr = server.local_addr();
    let mut seen = Vec::new();

    // The client closes: the server sees Closed(PeerClosed).
    let leaving = TcpConn::connect(addr, 1024, 1024).unwrap();
    let leaving_id = accept_one(&mut server);
    drop(leaving);
    poll_until(&mut server, &mut seen, |s| !s.is_empty());
    assert_eq!(seen, [Seen::Closed(leaving_id, CloseReason::PeerClosed)]);
    assert!(!server.is_open(leaving_id));
    assert_eq!(server.connections(), 0);

    // The server closes at once: the client sees the end of the stream and
    // the server a Closed(Local).
    let mut staying = TcpConn::connect(addr, 1024, 1024).unwrap();
    let staying_id = accept_one(&mut server);
    server.close_now(staying_id);
    assert!(!server.is_open(staying_id));
    seen.clear();
    poll_until(&mut server, &mut seen, |s| !s.is_empty());
    assert_eq!(seen, [Seen::Closed(staying_id, CloseReason::Local)]);
    let e = wait_closed(&mut staying);
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    assert_eq!(staying.send(b"late"), Err(SendError::Closed));
}

#[test]
fn close_flushes_queued_bytes_first() {
    const BYTES: usize = 200_000;
    let cfg = TcpServerConfig {
        send_buffer_bytes: 256 * 1024,
        ..small_config(2)
    };
    let mut server = TcpServer::bind(loopback(), &cfg).unwrap();
    let mut client = TcpConn::connect(server.local_addr(), 4096, 1024).unwrap();
    let id = accept_one(&mut server);
    let payload: Vec<u8> = (0..BYTES).map(|i| (i % 251) as u8).collect();
    server.send(id, &payload).unwrap();
    server.close(id);
    assert!(!server.is_open(id));
    assert_eq!(
        server.send(id, b"more"),
        Err(SendError::Closed),
        "no sends after close"
    );
    // The client reads everything, then sees the end of the stream.
    let mut seen = Vec::new();
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let e = loop {
        assert!(
            Instant::now() < deadline,
            "got {} of {BYTES}",
            received.len()
        );
        server.poll(record(&mut seen)).unwrap();
        if let Err(e) = client.wait_recv(Duration::from_millis(50), |bytes| {
            received.extend_from_slice(bytes)
        }) {
            break e;
        }
    };
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    assert_eq!(received, payload);
    poll_until(&mut server, &mut seen, |s| !s.is_empty());
    assert_eq!(seen, [Seen::Closed(id, CloseReason::Local)]);
    assert_eq!(server.stats().flush_timeouts, 0);
}

#[test]
fn close_gives_up_flushing_after_the_timeout() {
    let cfg = TcpServerConfig {
        send_buffer_bytes: 1 << 20,
        ..small_config(1)
    };
    let mut server = TcpServer::bind(loopback(), &cfg).unwrap();
    // A client that never reads: the kernel buffers fill, our queue stays.
    let _client = TcpConn::connect(server.local_addr(), 1024, 1024).unwrap();
    let id = accept_one(&mut server);
    let chunk = vec![7u8; 64 * 1024];
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Fill our queue, again and again, until the kernel stops taking bytes
    // (its buffers for a peer that never reads hold several MB on loopback):
    // stalled = our queue still full after a 50 ms wait.
    loop {
        assert!(Instant::now() < deadline, "kernel kept taking bytes");
        while server.send(id, &chunk).is_ok() {}
        server.wait(Duration::from_millis(50)).unwrap();
        server.poll(record(&mut seen)).unwrap();
        if server.pending_send_bytes(id) > cfg.send_buffer_bytes - chunk.len() {
            break;
        }
    }
    assert!(seen.is_empty(), "{seen:?}");
    server
        .handle()
        .close_with_timeout(id, Duration::from_millis(100));
    server.submit().unwrap();
    poll_until(&mut server, &mut seen, |s| !s.is_empty());
    assert_eq!(seen, [Seen::Closed(id, CloseReason::FlushTimeout)]);
    assert_eq!(server.stats().flush_timeouts, 1);
    assert_eq!(server.connections(), 0);
}

#[test]
fn full_send_buffer_is_reported_not_grown() {
    let mut server = TcpServer::bind(loopback(), &small_config(1)).unwrap();
    let _client = TcpConn::connect(server.local_addr(), 1024, 1024).unwrap();
    let id = accept_one(&mut server);
    // 4096-byte send buffer: more than that at once never fits.
    assert_eq!(server.send(id, &[1u8; 4097]), Err(SendError::Full));
    assert_eq!(server.pending_send_bytes(id), 0);
    assert_eq!(server.stats().send_full, 1);
    assert_eq!(server.send(id, &[1u8; 4096]), Ok(()));
}

#[test]
fn tcp_hot_paths_do_not_allocate() {
    let mut server = TcpServer::bind(loopback(), &small_config(2)).unwrap();
    let mut client = TcpConn::connect(server.local_addr(), 1024, 4096).unwrap();
    let _id = accept_one(&mut server);
    let mut round = |index: u32| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let message = index.to_be_bytes();
        client.send(&message).unwrap();
        let mut echoed = 0;
        while echoed < message.len() {
            assert!(Instant::now() < deadline);
            server.wait(Duration::from_millis(10)).unwrap();
            server
                .poll(|io, event| {
                    if let TcpEvent::Data { conn, bytes } = event {
                        io.send(conn, bytes).unwrap();
                    }
                })
                .unwrap();
            echoed += client
                .poll_recv(|bytes| assert!(!bytes.is_empty()))
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
}
