//! The real `tally-sequencer` binary under a test-made `NOTIFY_SOCKET`, as
//! systemd runs it with `Type=notify` and `WatchdogSec=`: `READY=1` only
//! once its ports accept connections, `STATUS=` lines that follow the
//! sequence number, `WATCHDOG=1` while its loops are alive, and
//! `STOPPING=1` on SIGTERM before it exits. Test ids 60..69.

mod support;

use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use tally_wire::{Ack, Order};

const LONG: Duration = Duration::from_secs(20);

/// The child, killed on drop if the test fails before it exits.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next notification datagram, or None at the deadline.
fn next_notification(socket: &UnixDatagram, deadline: Instant) -> Option<String> {
    let mut buf = [0u8; 4096];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        socket.set_read_timeout(Some(deadline - now)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => return Some(String::from_utf8(buf[..n].to_vec()).expect("UTF-8 state")),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

/// Reads notifications until one satisfies `wanted`; returns it and every
/// notification seen before it.
fn wait_for_notification(
    socket: &UnixDatagram,
    what: &str,
    mut wanted: impl FnMut(&str) -> bool,
) -> (String, Vec<String>) {
    let deadline = Instant::now() + LONG;
    let mut before = Vec::new();
    loop {
        match next_notification(socket, deadline) {
            Some(state) if wanted(&state) => return (state, before),
            Some(state) => before.push(state),
            None => panic!("no {what} notification within {LONG:?}; got {before:?}"),
        }
    }
}

/// The number after `seq ` in a `STATUS=` line.
fn status_seq(state: &str) -> Option<u64> {
    let text = state.strip_prefix("STATUS=")?;
    let after = &text[text.find("seq ")? + 4..];
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn ready_after_the_ports_accept_status_follows_seq_watchdog_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(60, dir.path());
    let socket_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_tally-sequencer"))
        .arg("--config")
        .arg(&setup.config_path)
        .env("NOTIFY_SOCKET", &socket_path)
        // A 2 s watchdog: pinged every 0.5 s while the loops are alive.
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .env(
            "RUST_LOG",
            std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn tally-sequencer");
    let mut child = Running(child);

    // READY=1 is the first notification, and when it arrives every port is
    // already open: both TCP listeners accept and the retransmit UDP port is
    // taken.
    let (ready, before) = wait_for_notification(&notify, "READY=1", |s| s == "READY=1");
    assert_eq!(ready, "READY=1");
    assert!(
        before.is_empty(),
        "READY=1 came first, not after {before:?}"
    );
    for (what, addr) in [("gateway", setup.gateway), ("replay", setup.replay)] {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500))
            .unwrap_or_else(|error| panic!("{what} port {addr} refused at READY=1: {error}"));
    }
    let taken = UdpSocket::bind(setup.retransmit).unwrap_err();
    assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse, "{taken}");

    // The first STATUS= names the session and the sequence number.
    let (status, _) = wait_for_notification(&notify, "STATUS=", |s| s.starts_with("STATUS="));
    assert!(status.contains(&setup.session), "{status}");
    let first_seq = status_seq(&status).unwrap_or_else(|| panic!("no seq in {status}"));

    // An order moves the stream; a later STATUS= shows its number.
    let mut pos = SoupClient::connect(setup.gateway);
    pos.login_ok("pos1", POS_PASSWORD);
    pos.send(Order::new(1, 1, 1, 1).with_client_seq(1).as_bytes());
    let stream_seq = match pos.recv(LONG) {
        Some(Reply::Sequenced(payload)) => Ack::parse(&payload).unwrap().stream_seq(),
        other => panic!("expected an ack, got {other:?}"),
    };
    assert!(stream_seq > first_seq);
    wait_for_notification(&notify, "STATUS= with the order's seq", |s| {
        status_seq(s).is_some_and(|seq| seq >= stream_seq)
    });

    // The watchdog is fed while every loop is alive.
    wait_for_notification(&notify, "WATCHDOG=1", |s| s == "WATCHDOG=1");
    wait_for_notification(&notify, "a second WATCHDOG=1", |s| s == "WATCHDOG=1");

    // SIGTERM: STOPPING=1, then a clean exit.
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    wait_for_notification(&notify, "STOPPING=1", |s| s == "STOPPING=1");
    let deadline = Instant::now() + LONG;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    // Nothing after STOPPING=1 claims readiness again.
    while let Some(state) = next_notification(&notify, Instant::now()) {
        assert_ne!(state, "READY=1");
    }
}

#[test]
fn a_malformed_notify_socket_is_refused_at_start_with_the_variable_named() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(62, dir.path());
    let output = Command::new(env!("CARGO_BIN_EXE_tally-sequencer"))
        .arg("--config")
        .arg(&setup.config_path)
        .env("NOTIFY_SOCKET", "relative/notify.sock")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NOTIFY_SOCKET"), "{stderr}");
}
