//! Shared pieces of the whole-binary tests: a config per test with its own
//! ports, multicast group and journal; the `tally-sequencer` child process
//! (killed on drop); a blocking SoupBinTCP client; a multicast stream reader.
//! Every wait has a deadline.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tally_runtime::net::{MulticastConfig, MulticastReceiver};
use tally_wire::mold::{MoldPacket, PacketKind, ReRequest, Session};
use tally_wire::soup::{self, ClientPacket, FrameDecoder, ServerPacket};

/// Demo passwords of config/tally.toml, reused here with the same hashes.
pub const POS_PASSWORD: &str = "pos1pass";
pub const OPS_PASSWORD: &str = "ops1pass";
pub const WH_PASSWORD: &str = "whpass";
pub const READER_PASSWORD: &str = "readpass";

const CLIENTS: &str = r#"
[[clients]]
username = "pos1"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$eZgcTQK5n+RLHKfv4qXC7A$wyvwHzlcjveZqIOB45NCoCwGJDy/wDJrh+MoY9hHz9I"
client_id = 1
role = "pos"

[[clients]]
username = "ops1"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$5IZ4uAV7OKzc6xp9seTolQ$XZ4QAwZKdzqjumNE+HBqwht8002Dl63NG+n+D4g8z5Q"
client_id = 2
role = "ops"

[[clients]]
username = "wh"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$JMU5OEb8u49vJjea4I5ugA$oO3PoTG75LgNarfcj3uLJeyeqeAobO0jsnpqqUMyclI"
client_id = 3
role = "authority"

[[clients]]
username = "read1"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$tWW49bK5QoG9bGFSUbwacA$+mcld4A5pq2h9Fi917djhSC5ilLeQj8I9VayNK/Ha94"
client_id = 4
role = "reader"
"#;

/// One test's addresses: test `id` (1..=80) gets ports 23000 + 10·id ..
/// and group 239.255.101.id, so tests run in parallel without meeting.
#[derive(Clone, Debug)]
pub struct TestSetup {
    pub id: u16,
    pub session: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub gateway: SocketAddr,
    pub retransmit: SocketAddr,
    pub replay: SocketAddr,
    pub multicast: MulticastConfig,
}

impl TestSetup {
    /// Writes the config file for test `id` into `dir`; `extra` is TOML
    /// appended to the `[gateway]`/`[journal]` sections via replacements.
    pub fn new(id: u16, dir: &Path) -> TestSetup {
        Self::with(id, dir, |text| text)
    }

    pub fn with(id: u16, dir: &Path, edit: impl FnOnce(String) -> String) -> TestSetup {
        // Below the kernel's ephemeral range (32768..), so no client socket
        // of a parallel test can hold one of these ports; above the apps'
        // testkit blocks 100..=102 (20000..23000).
        assert!((1..=80).contains(&id));
        let base = 23_000 + 10 * id;
        let session = format!("T{id}");
        let group = Ipv4Addr::new(239, 255, 101, id as u8);
        let text = format!(
            r#"
[stream]
session = "{session}"
group = "{group}"
port = {stream_port}
interface = "127.0.0.1"
heartbeat_interval_ms = 200

[gateway]
listen = "127.0.0.1:{gateway_port}"
peer_timeout_ms = 15000
rate_limit_per_sec = 100000000
rate_burst = 10000000
# The per-source throttle's hash is keyed at random at start-up: a big table
# keeps the tests' addresses (127.0.0.2, .3, ...) in their own buckets.
source_table_entries = 1048576

{CLIENTS}

[retransmit]
listen = "127.0.0.1:{retransmit_port}"
requests_per_sec_per_requester = 100000
request_burst = 100000
# Tests re-request whole journals from one address.
reply_bytes_per_sec_per_source = 1000000000
reply_burst_bytes_per_source = 100000000
reply_bytes_per_sec = 1000000000
reply_burst_bytes = 100000000

[replay]
listen = "127.0.0.1:{replay_port}"

[journal]
dir = "journal"
fsync = "none"
"#,
            stream_port = base,
            gateway_port = base + 1,
            retransmit_port = base + 2,
            replay_port = base + 3,
        );
        let text = edit(text);
        let config_path = dir.join("tally.toml");
        std::fs::write(&config_path, text).unwrap();
        TestSetup {
            id,
            session,
            dir: dir.to_path_buf(),
            config_path,
            gateway: SocketAddr::from(([127, 0, 0, 1], base + 1)),
            retransmit: SocketAddr::from(([127, 0, 0, 1], base + 2)),
            replay: SocketAddr::from(([127, 0, 0, 1], base + 3)),
            multicast: MulticastConfig {
                group,
                port: base,
                interface: Ipv4Addr::LOCALHOST,
                ttl: 0,
                loopback: true,
            },
        }
    }

    pub fn session(&self) -> Session {
        Session::from_str(&self.session).unwrap()
    }

    pub fn journal_file(&self) -> PathBuf {
        self.dir
            .join("journal")
            .join(format!("{}.journal", self.session))
    }

    pub fn counters_file(&self) -> PathBuf {
        self.dir.join("journal").join("tally-sequencer.counters")
    }
}

/// The appliance as a child process; killed (SIGKILL) on drop if still
/// running.
pub struct Appliance {
    pub child: Child,
    pub setup: TestSetup,
    /// With [`Appliance::start_capturing`]: the thread collecting stderr.
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Appliance {
    /// Starts `tally-sequencer --config` and waits until the gateway accepts
    /// connections.
    pub fn start(setup: &TestSetup) -> Appliance {
        Self::launch(setup, &[], false)
    }

    /// Like [`Appliance::start`], with extra command-line arguments (e.g.
    /// `--accept-journal-loss`).
    pub fn start_with_args(setup: &TestSetup, args: &[&str]) -> Appliance {
        Self::launch(setup, args, false)
    }

    /// Like [`Appliance::start`], keeping stderr for [`Appliance::wait_exit`].
    pub fn start_capturing(setup: &TestSetup) -> Appliance {
        Self::launch(setup, &[], true)
    }

    fn launch(setup: &TestSetup, args: &[&str], capture: bool) -> Appliance {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally-sequencer"))
            .arg("--config")
            .arg(&setup.config_path)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if capture {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("spawn tally-sequencer");
        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        });
        let mut appliance = Appliance {
            child,
            setup: setup.clone(),
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = appliance.child.try_wait().unwrap() {
                panic!("tally-sequencer {args:?} exited at start: {status}");
            }
            if TcpStream::connect_timeout(&setup.replay, Duration::from_millis(100)).is_ok()
                && TcpStream::connect_timeout(&setup.gateway, Duration::from_millis(100)).is_ok()
            {
                return appliance;
            }
            assert!(
                Instant::now() < deadline,
                "tally-sequencer did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the appliance to exit on its own within `timeout` (killed
    /// and the test failed otherwise); its status and captured stderr.
    pub fn wait_exit(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "tally-sequencer did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let stderr = self
            .stderr
            .take()
            .map(|reader| reader.join().unwrap_or_default())
            .unwrap_or_default();
        (status, stderr)
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0);
    }

    /// Sends `signal` and waits for the exit status.
    pub fn stop_with(mut self, signal: i32) -> std::process::ExitStatus {
        self.signal(signal);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tally-sequencer did not exit after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then waits until the old listening sockets are gone: the
    /// kernel tears down a killed process's io_uring (and the sockets its
    /// operations hold) asynchronously, so for a moment after the exit they
    /// still accept connections and hold their ports.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in [self.setup.gateway, self.setup.replay] {
            while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "{addr} still accepts connections after kill -9"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An owned server packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    LoginAccepted { session: String, next_seq: u64 },
    LoginRejected(u8),
    Sequenced(Vec<u8>),
    Heartbeat,
    EndOfSession,
    Debug(String),
}

/// A blocking SoupBinTCP client on a std TcpStream.
pub struct SoupClient {
    stream: TcpStream,
    decoder: FrameDecoder,
    out: Vec<u8>,
}

impl SoupClient {
    pub fn connect(addr: SocketAddr) -> SoupClient {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream.set_nodelay(true).unwrap();
        SoupClient {
            stream,
            decoder: FrameDecoder::new(soup::MAX_FRAME_BYTES),
            out: Vec::with_capacity(1 << 16),
        }
    }

    pub fn try_clone_stream(&self) -> TcpStream {
        self.stream.try_clone().unwrap()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn login(&mut self, username: &str, password: &str, session: &str, requested_seq: u64) {
        let mut buf = [0u8; 64];
        let n = soup::write_login_request(
            &mut buf,
            username,
            password,
            Session::from_str(session).unwrap(),
            requested_seq,
        )
        .unwrap();
        self.send_raw(&buf[..n]);
    }

    /// Logs in and expects Login Accepted; returns its next sequence number.
    pub fn login_ok(&mut self, username: &str, password: &str) -> u64 {
        self.login(username, password, "", 0);
        match self.recv(Duration::from_secs(30)) {
            Some(Reply::LoginAccepted { next_seq, .. }) => next_seq,
            other => panic!("expected login accepted, got {other:?}"),
        }
    }

    /// Queues one `U` packet (sent by `flush` or when the buffer fills).
    pub fn queue(&mut self, message: &[u8]) {
        let mut buf = [0u8; 128];
        let n = soup::write_unsequenced(&mut buf, message).unwrap();
        self.out.extend_from_slice(&buf[..n]);
        if self.out.len() > 60_000 {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if !self.out.is_empty() {
            // A peer that closed makes this fail; tests that expect that
            // look at recv's None.
            let _ = self.stream.write_all(&self.out);
            self.out.clear();
        }
    }

    pub fn send(&mut self, message: &[u8]) {
        self.queue(message);
        self.flush();
    }

    /// The next server packet, skipping heartbeats; None on close or timeout.
    pub fn recv(&mut self, timeout: Duration) -> Option<Reply> {
        loop {
            match self.recv_any(timeout)? {
                Reply::Heartbeat => continue,
                other => return Some(other),
            }
        }
    }

    /// The next server packet, heartbeats included; None on close or timeout.
    pub fn recv_any(&mut self, timeout: Duration) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.decoder.next_frame().expect("server framing") {
                let reply = match ServerPacket::parse(frame).expect("server packet") {
                    ServerPacket::LoginAccepted { session, next_seq } => Reply::LoginAccepted {
                        session: session.as_str().to_string(),
                        next_seq,
                    },
                    ServerPacket::LoginRejected { reason } => Reply::LoginRejected(reason),
                    ServerPacket::Sequenced(payload) => Reply::Sequenced(payload.to_vec()),
                    ServerPacket::Heartbeat => Reply::Heartbeat,
                    ServerPacket::EndOfSession => Reply::EndOfSession,
                    ServerPacket::Debug(text) => {
                        Reply::Debug(String::from_utf8_lossy(text).into_owned())
                    }
                };
                return Some(reply);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.stream.set_read_timeout(Some(deadline - now)).unwrap();
            let spare = self.decoder.spare();
            match self.stream.read(spare) {
                Ok(0) => {
                    eprintln!("soup client: connection closed by the server");
                    return None;
                }
                Ok(n) => self.decoder.commit(n),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                // io_uring task work (the test's multicast receiver) can
                // interrupt a blocking read.
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    eprintln!("soup client: read failed: {error}");
                    return None;
                }
            }
        }
    }

    /// Whether the server closed the connection within `timeout` (reading
    /// and discarding anything before the close).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.stream.set_read_timeout(Some(deadline - now)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }
}

/// Check that a client packet we build parses (guards the helpers above).
pub fn assert_client_frame(bytes: &[u8]) {
    assert!(ClientPacket::parse(&bytes[2..]).is_ok());
}

/// Reads the multicast stream and keeps every (seq, message) in order,
/// checking there is no gap and no duplicate on the way.
pub struct StreamReader {
    receiver: MulticastReceiver,
    pub messages: Vec<(u64, Vec<u8>)>,
    pub next_seq: u64,
    pub heartbeats: u64,
    pub ended: bool,
}

impl StreamReader {
    pub fn join(setup: &TestSetup) -> StreamReader {
        StreamReader {
            receiver: MulticastReceiver::new(&setup.multicast, 256, 2048).expect("join the stream"),
            messages: Vec::new(),
            next_seq: 1,
            heartbeats: 0,
            ended: false,
        }
    }

    /// Joins mid-session: the first data message seen sets where it starts.
    pub fn join_live(setup: &TestSetup) -> StreamReader {
        let mut reader = Self::join(setup);
        reader.next_seq = 0;
        reader
    }

    /// Reads until `done(self)` or the deadline; panics on a gap or a
    /// duplicate (loopback multicast does not lose packets unless a test
    /// overflows the socket buffer).
    pub fn read_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&StreamReader) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let mut packets = Vec::new();
            self.receiver
                .wait(
                    (deadline - now).min(Duration::from_millis(50)),
                    |datagram| packets.push(datagram.to_vec()),
                )
                .unwrap();
            for datagram in packets {
                self.accept(&datagram);
            }
        }
        true
    }

    fn accept(&mut self, datagram: &[u8]) {
        let packet = MoldPacket::parse(datagram).expect("valid MoldUDP64");
        match packet.kind() {
            PacketKind::Heartbeat => self.heartbeats += 1,
            PacketKind::EndOfSession => self.ended = true,
            PacketKind::Data => {
                for (seq, message) in packet.messages() {
                    if self.next_seq == 0 {
                        self.next_seq = seq;
                    }
                    if seq < self.next_seq {
                        continue; // a resumed stream may repeat what we saw
                    }
                    assert_eq!(seq, self.next_seq, "gap on the stream");
                    self.messages.push((seq, message.to_vec()));
                    self.next_seq = seq + 1;
                }
            }
        }
    }
}

/// Sends one re-request and returns the reply's (seq, message) list, or
/// None when nothing came back within `timeout`.
pub fn re_request(
    setup: &TestSetup,
    socket: &UdpSocket,
    seq: u64,
    count: u16,
    timeout: Duration,
) -> Option<Vec<(u64, Vec<u8>)>> {
    let request = ReRequest::new(setup.session(), seq, count);
    socket
        .send_to(request.as_bytes(), setup.retransmit)
        .unwrap();
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 65_536];
    let deadline = Instant::now() + timeout;
    let n = loop {
        match socket.recv(&mut buf) {
            Ok(n) => break n,
            // io_uring task work (a multicast receiver in the test) can
            // interrupt the blocking receive.
            Err(error)
                if error.kind() == std::io::ErrorKind::Interrupted && Instant::now() < deadline =>
            {
                continue
            }
            Err(_) => return None,
        }
    };
    let packet = MoldPacket::parse(&buf[..n]).expect("valid reply");
    Some(packet.messages().map(|(s, m)| (s, m.to_vec())).collect())
}

/// Waits until `condition` holds or panics after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---- Journal damage helpers (tests/journal_damage.rs) ----

/// Runs `tally-sequencer --config … ARGS` expecting it to exit on its own
/// within `timeout` (a refused start); returns its exit code and stderr. A
/// child still running at the deadline is killed and the test fails.
pub fn sequencer_exit(
    setup: &TestSetup,
    args: &[&str],
    timeout: Duration,
) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally-sequencer"))
        .arg("--config")
        .arg(&setup.config_path)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally-sequencer");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = reader.join().unwrap_or_default();
            panic!("tally-sequencer {args:?} did not exit within {timeout:?}; stderr:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.code(), reader.join().unwrap())
}

/// Runs `tally-journal ARGS` to completion.
pub fn tally_journal(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tally-journal"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tally-journal")
}

/// One record of a journal file, read with the documented layout (64-byte
/// file header; 24-byte record headers: u32 payload length, u32 CRC32C, u64
/// first sequence number, u16 count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalRecord {
    pub offset: u64,
    pub first_seq: u64,
    pub count: u16,
    pub bytes: u64,
}

impl JournalRecord {
    pub fn end_offset(&self) -> u64 {
        self.offset + self.bytes
    }

    /// One past the last message (the end-of-session record holds none).
    pub fn end_seq(&self) -> u64 {
        if self.count == 0xFFFF {
            self.first_seq
        } else {
            self.first_seq + u64::from(self.count)
        }
    }
}

/// The whole records of the journal at `path`, up to the first incomplete one.
pub fn journal_records(path: &Path) -> Vec<JournalRecord> {
    let bytes = std::fs::read(path).unwrap();
    let mut at = 64usize;
    let mut out = Vec::new();
    while at + 24 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if at + 24 + len > bytes.len() {
            break;
        }
        out.push(JournalRecord {
            offset: at as u64,
            first_seq: u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap()),
            count: u16::from_be_bytes(bytes[at + 16..at + 18].try_into().unwrap()),
            bytes: 24 + len as u64,
        });
        at += 24 + len;
    }
    out
}

/// The checkpoint beside the test's journal.
pub fn checkpoint_file(setup: &TestSetup) -> PathBuf {
    setup
        .dir
        .join("journal")
        .join(format!("{}.checkpoint", setup.session))
}

/// Writes the checkpoint (32 bytes: "TALLYCKP", u64 next_seq, u64
/// end_offset, u32 CRC32C of bytes 0..24, 4 zero bytes), as the writer would
/// have after a sync that covered `next_seq` and `end_offset`.
pub fn write_checkpoint(setup: &TestSetup, next_seq: u64, end_offset: u64) {
    let mut bytes = [0u8; 32];
    bytes[0..8].copy_from_slice(b"TALLYCKP");
    bytes[8..16].copy_from_slice(&next_seq.to_be_bytes());
    bytes[16..24].copy_from_slice(&end_offset.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[0..24]);
    bytes[24..28].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(checkpoint_file(setup), bytes).unwrap();
}

/// Every (seq, message) in a journal file, read with the journal's layout
/// independently of the appliance's code: a 64-byte file header, then
/// records of a 24-byte header (payload length, CRC, first seq, count) and
/// MoldUDP64 blocks. Stops at the end-of-session record or an incomplete
/// record (a torn tail).
pub fn journal_messages(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let mut at = 64;
    let mut out = Vec::new();
    while at + 24 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let first = u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        let count = u16::from_be_bytes(bytes[at + 16..at + 18].try_into().unwrap());
        if at + 24 + len > bytes.len() || count == 0xFFFF {
            break;
        }
        let payload = &bytes[at + 24..at + 24 + len];
        let mut p = 0;
        let mut seq = first;
        while p < payload.len() {
            let l = u16::from_be_bytes([payload[p], payload[p + 1]]) as usize;
            out.push((seq, payload[p + 2..p + 2 + l].to_vec()));
            seq += 1;
            p += 2 + l;
        }
        at += 24 + len;
    }
    out
}

/// The checkpoint beside a journal: (next_seq, end_offset), from its 32-byte
/// layout (magic, next_seq, end_offset, CRC32C).
pub fn checkpoint(setup: &TestSetup) -> (u64, u64) {
    let bytes = std::fs::read(checkpoint_file(setup)).unwrap();
    assert_eq!(&bytes[0..8], b"TALLYCKP");
    (
        u64::from_be_bytes(bytes[8..16].try_into().unwrap()),
        u64::from_be_bytes(bytes[16..24].try_into().unwrap()),
    )
}
