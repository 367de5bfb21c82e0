//! The replay feed (DESIGN.md §2, "Replay feed"; §4 framing): a SoupBinTCP
//! server where a client logs in with a requested sequence number and
//! receives every stream message from that number on, one per Sequenced Data
//! packet, read from the journal; then the live stream as the journal grows
//! (a TCP tail for clients that cannot use multicast).
//!
//! Protocol, per connection:
//!
//! - The first frame must be a Login Request (SoupBinTCP 4.0, 46 bytes, or
//!   4.1, 51 bytes), sent within `login_timeout` of connecting; otherwise a
//!   Debug packet says why and the connection closes (`login_timeouts`).
//!   One source address may hold at most `logins_pending_per_source_max`
//!   connections that have not logged in yet; a further one gets a Debug
//!   packet and is closed at once (`login_source_refused`), so one address
//!   cannot hold every slot with idle connections.
//!   Its password is checked off
//!   the loop, on an [`AuthThread`] (argon2 never runs on the loop thread).
//!   Any configured client may use the feed, whatever its role (`reader`
//!   clients may use only this feed; the gateway refuses them).
//!   Wrong username or password → Login Rejected `A`, then close. A
//!   requested session that is not blank and not the current one → `S`,
//!   then close. Otherwise Login Accepted with the current session and the
//!   requested sequence number (1 when blank or 0). A number beyond the
//!   stream's end is accepted; the client waits until it exists. A username
//!   that already holds `sessions_per_client_max` sessions gets a Debug
//!   packet saying so, then Login Rejected `A` (`logins_over_limit`), so one
//!   credential cannot take every slot.
//! - A 4.1 login's requested heartbeat timeout `T` (0 or a 4.0 login: the
//!   default, `peer_timeout`) is clamped into `heartbeat_timeout_min ..=
//!   heartbeat_timeout_max`; the client is dropped after `T` of silence and
//!   the server heartbeats at least every `T / 3`, so neither side's timer
//!   runs out while the other is alive.
//! - The loop then sends messages from that number on, at the pace the
//!   connection's bounded send buffer allows: at most
//!   `MESSAGES_PER_CLIENT_PER_POLL` messages per client per poll, never more
//!   than the send buffer can take. A client whose send buffer keeps limiting
//!   what it is sent, and which drains less than half of that buffer within
//!   `stall_timeout`, gets a Debug packet and is cut off (`slow_clients_cut`):
//!   it reads slower than `send_buffer_bytes / 2` per `stall_timeout` (with
//!   the defaults, 2 MiB per 10 s). A client that drains nothing at all of
//!   what waits for it (the kernel takes none of its queued bytes) for
//!   `stall_timeout` is cut the same way, however little waits: its slot is
//!   freed. The sequencer never waits for a reader.
//! - A journal record that fails its check (CRC, structure) is never sent:
//!   the client gets a Debug packet naming the damaged record, then the
//!   connection closes (`corrupt_records`); the record is logged once, and
//!   every other client goes on.
//! - A Server Heartbeat goes out after `heartbeat_interval` without sending.
//!   A client silent for `peer_timeout` (15 s) is dropped; its heartbeats
//!   keep it alive.
//! - Logout → close. Once the session has ended and the client has every
//!   message: End of Session `Z`, then close.
//! - Protocol errors (unknown packet type, bad length, oversize or empty
//!   frame, `U` data, a second login, anything before the login) → a Debug
//!   packet, then close (`protocol_errors`).
//!
//! Realtime contract: one thread owns the loop. The TCP server, the journal
//! reader, every connection's state and the frame scratch buffer are
//! allocated in [`ReplayLoop::new`]; [`ReplayLoop::poll`] does bounded work
//! and never allocates, locks or logs, except on a damaged journal record
//! (the reader's error text; one log line per record).

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use std::sync::Arc;
use std::time::Duration;

use tally_config::gateway::ClientEntry;
use tally_gateway::auth::{AuthRequest, AuthThread, Authenticator};
use tally_gateway::soup_server::{classify, format_text, HeartbeatPolicy, Login, Stage, Step};
use tally_runtime::agent::Agent;
use tally_runtime::counters::{Counter, CounterFile};
use tally_runtime::net::{ConnId, TcpEvent, TcpServer, TcpServerConfig, TcpServerHandle};
use tally_runtime::wake::Waker;
use tally_wire::mold::Session;
use tally_wire::soup::{
    self, login_reject, DEBUG_TEXT_BYTES_MAX, LENGTH_PREFIX_SIZE, USERNAME_SIZE,
};

use crate::journal::{Cursor, JournalProgress, JournalReader};
use crate::retransmit::{is_damaged_record, DamageLog};
use tally_config::ApplianceConfig;

/// Largest frame (type + payload) a replay client may send: a login.
const INBOUND_FRAME_BYTES_MAX: usize = 1 + soup::LOGIN_REQUEST_PAYLOAD_MAX;
/// Per-connection buffer for a partly received frame.
const INBOUND_BUFFER_BYTES: usize = 64;
const _: () = assert!(INBOUND_BUFFER_BYTES >= LENGTH_PREFIX_SIZE + INBOUND_FRAME_BYTES_MAX);
/// Kernel-to-loop receive buffer per connection (clients send little).
const RECV_BUFFER_BYTES: usize = 1024;
/// Messages sent to one client per poll, at most.
const MESSAGES_PER_CLIENT_PER_POLL: usize = 1024;
/// Bytes of Sequenced Data frames built per client per poll, at most.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Journal records indexed per poll at most (one 24-byte read each).
const FOLLOW_RECORDS_MAX: usize = 65_536;
/// Entries of the reader's sparse index: 16 MiB of virtual memory, covering
/// 64 GiB of journal (one entry per 64 KiB) before it trims its oldest half.
/// A replay from before the oldest entry still works: it scans from the
/// start of the journal, `MESSAGES_PER_CLIENT_PER_POLL` messages per poll.
pub const REPLAY_INDEX_CAPACITY: usize = 1 << 20;
/// Drop a client silent for this long (DESIGN.md §4).
pub const PEER_TIMEOUT_NS: u64 = 15_000_000_000;
/// How long a cut-off slow reader's connection may take to flush its Debug
/// packet before it is closed anyway (it is not reading: its slot is wanted).
const SLOW_CLOSE_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);
/// Largest Debug text the loop sends.
const DEBUG_FRAME_BYTES_MAX: usize = 128;

/// What the replay loop needs, in the units it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Address the listener binds (port 0 picks one).
    pub listen: SocketAddr,
    /// The current stream session.
    pub session: Session,
    /// Connections served at once; more are closed at accept.
    pub clients_max: usize,
    /// Per-connection send buffer, bytes.
    pub send_buffer_bytes: usize,
    /// A client whose send buffer limits what it is sent for this long,
    /// without draining half of the buffer meanwhile, is cut off.
    pub stall_timeout_ns: u64,
    /// Server heartbeat after this long without sending.
    pub heartbeat_interval_ns: u64,
    /// Drop a client after this long without receiving from it, unless its
    /// 4.1 login asked for another timeout.
    pub peer_timeout_ns: u64,
    /// Bounds of a requested heartbeat timeout.
    pub heartbeat_timeout_min_ns: u64,
    pub heartbeat_timeout_max_ns: u64,
    /// Sessions one username may hold at once.
    pub sessions_per_client_max: usize,
    /// Close a connection that sent no login this long after connecting.
    pub login_timeout_ns: u64,
    /// Connections not logged in yet that one source address may hold.
    pub logins_pending_per_source_max: usize,
    /// Logins being checked at once; more are rejected `A`.
    pub auth_queue_depth: usize,
    /// Entries of the journal reader's sparse index.
    pub index_capacity: usize,
}

impl ReplayOptions {
    /// The options from the appliance's configuration.
    pub fn from_config(config: &ApplianceConfig) -> io::Result<Self> {
        let session = config
            .session()
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?;
        Ok(ReplayOptions {
            listen: config.replay.listen,
            session,
            clients_max: config.replay.clients_max,
            send_buffer_bytes: config.replay.send_buffer_bytes,
            stall_timeout_ns: config.replay.stall_timeout_ms.saturating_mul(1_000_000),
            heartbeat_interval_ns: config
                .stream
                .heartbeat_interval_ms
                .saturating_mul(1_000_000),
            peer_timeout_ns: PEER_TIMEOUT_NS,
            heartbeat_timeout_min_ns: config
                .replay
                .heartbeat_timeout_min_ms
                .saturating_mul(1_000_000),
            heartbeat_timeout_max_ns: config
                .replay
                .heartbeat_timeout_max_ms
                .saturating_mul(1_000_000),
            sessions_per_client_max: config.replay.sessions_per_client_max,
            login_timeout_ns: config.replay.login_timeout_ms.saturating_mul(1_000_000),
            logins_pending_per_source_max: config.replay.logins_pending_per_source_max,
            // Each connection has at most one login outstanding; a closed
            // connection's may still be in the queue when its slot is reused.
            auth_queue_depth: 2 * config.replay.clients_max,
            index_capacity: REPLAY_INDEX_CAPACITY,
        })
    }
}

/// The replay loop's counters in the shared counter file.
#[derive(Clone, Debug)]
pub struct ReplayCounters {
    /// Clients logged in and being served now (a gauge).
    pub clients_active: Counter,
    pub logins_accepted: Counter,
    /// Logins rejected, `A` or `S`.
    pub logins_rejected: Counter,
    /// Sequenced Data packets sent.
    pub messages_sent: Counter,
    /// Clients cut off for a send buffer full past the stall timeout.
    pub slow_clients_cut: Counter,
    pub protocol_errors: Counter,
    pub heartbeats_sent: Counter,
    /// Connections closed for sending no login within the deadline.
    pub login_timeouts: Counter,
    /// Logins refused: the username already holds its most sessions.
    pub logins_over_limit: Counter,
    /// Sessions closed because a journal record failed its check.
    pub corrupt_records: Counter,
    /// Connections refused at accept: every slot taken.
    pub connections_refused: Counter,
    /// Connections closed at accept: their address already holds its most
    /// connections that have not logged in.
    pub login_source_refused: Counter,
}

impl ReplayCounters {
    /// Names, in field order, for the counter file.
    pub const NAMES: &'static [&'static str] = &[
        "replay.clients_active",
        "replay.logins_accepted",
        "replay.logins_rejected",
        "replay.messages_sent",
        "replay.slow_clients_cut",
        "replay.protocol_errors",
        "replay.heartbeats_sent",
        "replay.login_timeouts",
        "replay.logins_over_limit",
        "replay.corrupt_records",
        "replay.connections_refused",
        "replay.login_source_refused",
    ];

    /// Counter handles from a file that holds [`Self::NAMES`] from `first`.
    pub fn from_file(file: &CounterFile, first: usize) -> Self {
        let c = |i: usize| file.counter(first + i);
        ReplayCounters {
            clients_active: c(0),
            logins_accepted: c(1),
            logins_rejected: c(2),
            messages_sent: c(3),
            slow_clients_cut: c(4),
            protocol_errors: c(5),
            heartbeats_sent: c(6),
            login_timeouts: c(7),
            logins_over_limit: c(8),
            corrupt_records: c(9),
            connections_refused: c(10),
            login_source_refused: c(11),
        }
    }
}

/// Where a connection is in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No connection in this slot.
    Free,
    /// Connected; the first frame must be a login.
    AwaitingLogin,
    /// Login handed to the auth thread; waiting for its verdict.
    Authenticating,
    /// Logged in: replaying, then tailing.
    Streaming,
    /// Close requested; waiting for the server's `Closed` event.
    Closing,
}

/// One connection's state, in a fixed array indexed by [`ConnId::index`].
#[derive(Debug)]
struct ClientSlot {
    conn: Option<ConnId>,
    phase: Phase,
    /// A partly received frame (length prefix included).
    inbound: [u8; INBOUND_BUFFER_BYTES],
    inbound_bytes: usize,
    /// Changes with every login submitted, so a verdict for an earlier
    /// connection in this slot is recognised and ignored.
    ticket: u32,
    requested_session: Session,
    /// The peer's IPv4 address as bits (0 for IPv6): the per-source limit
    /// on connections not logged in yet.
    peer_bits: u32,
    /// The configured client that logged in (or is logging in).
    client_index: Option<u16>,
    /// When the connection was accepted (the login deadline runs from it).
    accepted_ns: u64,
    /// This client's negotiated timeouts.
    peer_timeout_ns: u64,
    heartbeat_interval_ns: u64,
    /// Bytes queued for the kernel after this loop's last sends.
    queued_bytes: usize,
    /// Last time the kernel took some of the queued bytes (or none waited).
    drained_ns: u64,
    /// Next message to send to the client.
    next_seq: u64,
    /// Journal position; `None` until positioned at `next_seq`. May trail
    /// `next_seq` while scanning from the start of the journal.
    cursor: Option<Cursor>,
    last_recv_ns: u64,
    last_send_ns: u64,
    /// Open while the send buffer limits what the client is sent.
    stall: Option<Stall>,
}

/// A client's send buffer has been limiting what it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stall {
    /// When the buffer first limited a poll's sending.
    since_ns: u64,
    /// Bytes the client has drained since (appended into freed space).
    drained_bytes: usize,
}

impl ClientSlot {
    fn free() -> Self {
        ClientSlot {
            conn: None,
            phase: Phase::Free,
            inbound: [0; INBOUND_BUFFER_BYTES],
            inbound_bytes: 0,
            ticket: 0,
            requested_session: Session::BLANK,
            peer_bits: 0,
            client_index: None,
            accepted_ns: 0,
            peer_timeout_ns: PEER_TIMEOUT_NS,
            heartbeat_interval_ns: 1_000_000_000,
            queued_bytes: 0,
            drained_ns: 0,
            next_seq: 1,
            cursor: None,
            last_recv_ns: 0,
            last_send_ns: 0,
            stall: None,
        }
    }

    fn reset(&mut self, conn: Option<ConnId>, phase: Phase, now_ns: u64) {
        let ticket = self.ticket;
        *self = ClientSlot::free();
        self.ticket = ticket;
        self.conn = conn;
        self.phase = phase;
        self.last_recv_ns = now_ns;
        self.last_send_ns = now_ns;
        self.accepted_ns = now_ns;
        self.drained_ns = now_ns;
    }
}

/// The heartbeat settings a login negotiates against.
fn heartbeat_policy(options: &ReplayOptions) -> HeartbeatPolicy {
    HeartbeatPolicy {
        peer_timeout_ns: options.peer_timeout_ns,
        heartbeat_interval_ns: options.heartbeat_interval_ns,
        timeout_min_ns: options.heartbeat_timeout_min_ns,
        timeout_max_ns: options.heartbeat_timeout_max_ns,
    }
}

/// Everything but the server and the reader, so event handlers can borrow
/// it while the server is being polled.
struct Feed<A: Authenticator> {
    slots: Box<[ClientSlot]>,
    /// Configured usernames, space padded as in a login; index = client index.
    usernames: Box<[Option<[u8; USERNAME_SIZE]>]>,
    auth: A,
    scratch: Box<[u8]>,
    options: ReplayOptions,
    counters: ReplayCounters,
    /// Slots in [`Phase::Streaming`].
    active: usize,
    /// Streaming sessions per configured client (index = client index).
    sessions: Box<[u32]>,
    damage: DamageLog,
}

// The appliance builds each loop on the main thread and moves it to its own.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<ReplayLoop>();
};

/// The replay loop: its TCP server, its journal reader and every
/// connection's state. See the module doc.
pub struct ReplayLoop<A: Authenticator = AuthThread> {
    server: TcpServer,
    reader: JournalReader,
    feed: Feed<A>,
    /// Woken by the sequencer when the journal grows, so live clients get
    /// new records at once even when this loop was parked.
    own_waker: Option<Waker>,
}

impl<A: Authenticator> std::fmt::Debug for ReplayLoop<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayLoop")
            .field("local_addr", &self.server.local_addr())
            .field("options", &self.feed.options)
            .field("active", &self.feed.active)
            .finish_non_exhaustive()
    }
}

impl ReplayLoop<AuthThread> {
    /// Binds `replay.listen`, opens a reader on the journal at
    /// `journal_path` following `progress`, and starts a password-check
    /// thread for the configured clients.
    pub fn new(
        config: &ApplianceConfig,
        journal_path: &Path,
        progress: Arc<JournalProgress>,
        counters: ReplayCounters,
    ) -> io::Result<Self> {
        let options = ReplayOptions::from_config(config)?;
        let clients = config.gateway_config().clients;
        let auth = AuthThread::spawn(&clients, options.auth_queue_depth)?;
        Self::with_authenticator(options, &clients, journal_path, progress, auth, counters)
    }
}

impl<A: Authenticator> ReplayLoop<A> {
    /// As [`ReplayLoop::new`], from explicit options, clients and password
    /// checker.
    pub fn with_authenticator(
        options: ReplayOptions,
        clients: &[ClientEntry],
        journal_path: &Path,
        progress: Arc<JournalProgress>,
        auth: A,
        counters: ReplayCounters,
    ) -> io::Result<Self> {
        if options.clients_max == 0
            || options.send_buffer_bytes < SCRATCH_BYTES
            || options.heartbeat_interval_ns == 0
            || options.peer_timeout_ns == 0
            || options.index_capacity == 0
            || options.sessions_per_client_max == 0
            || options.login_timeout_ns == 0
            || options.logins_pending_per_source_max == 0
            || options.stall_timeout_ns == 0
            || options.heartbeat_timeout_min_ns == 0
            || options.heartbeat_timeout_min_ns > options.heartbeat_timeout_max_ns
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "replay: clients_max, session limit, timeouts, intervals and index capacity \
                 must be at least 1 (heartbeat timeout bounds in order); \
                 send_buffer_bytes at least 65536",
            ));
        }
        let reader = JournalReader::open(journal_path, progress, options.index_capacity)?;
        let server = TcpServer::bind(
            options.listen,
            &TcpServerConfig {
                max_connections: options.clients_max,
                recv_buffer_bytes: RECV_BUFFER_BYTES,
                send_buffer_bytes: options.send_buffer_bytes,
                backlog: 128,
            },
        )?;
        let usernames = clients
            .iter()
            .map(|client| tally_wire::pad_ascii::<USERNAME_SIZE>(&client.username).ok())
            .collect();
        counters.clients_active.set(0);
        Ok(ReplayLoop {
            server,
            reader,
            own_waker: None,
            feed: Feed {
                slots: (0..options.clients_max)
                    .map(|_| ClientSlot::free())
                    .collect(),
                usernames,
                auth,
                scratch: vec![0u8; SCRATCH_BYTES].into_boxed_slice(),
                options,
                counters,
                active: 0,
                sessions: vec![0u32; clients.len()].into_boxed_slice(),
                damage: DamageLog::new(),
            },
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// One duty cycle: follow the journal; handle connections, frames and
    /// password verdicts; send each logged-in client what its send buffer
    /// takes (bounded per client); heartbeats, timeouts, slow clients.
    /// Returns the work done.
    pub fn poll(&mut self, now_ns: u64) -> io::Result<usize> {
        let followed = match self.reader.follow(FOLLOW_RECORDS_MAX) {
            Ok(records) => records,
            Err(error) if is_damaged_record(&error) => {
                // Clients reaching the damage are closed when they read it.
                self.feed.note_damage(&error);
                0
            }
            Err(error) => return Err(error),
        };
        // Following the journal counts as work (it keeps the loop from
        // parking while the stream flows). Counting it only while clients
        // stream was tried and measured: the demo's tills then saw order
        // round trips of seconds in most runs (p99 0.8–4 s against 3 ms), so
        // it stays work until why is understood.
        let mut work = followed;
        let feed = &mut self.feed;
        work += self
            .server
            .poll(|io, event| feed.on_event(io, event, now_ns))?;
        let io = self.server.handle();
        work += self.feed.on_verdicts(io, now_ns);
        work += self.feed.serve(io, &mut self.reader, now_ns)?;
        self.server.submit()?;
        self.feed
            .counters
            .clients_active
            .set(self.feed.active as u64);
        Ok(work)
    }

    /// A waker for the sequencer to call when the journal grows: while
    /// clients are connected, a parked replay loop then wakes at once
    /// instead of at the end of its park. Waking a loop that is not parked
    /// (or has no clients, so does not ask to be woken) costs an atomic load.
    pub fn waker(&mut self) -> io::Result<Waker> {
        if let Some(waker) = &self.own_waker {
            return Ok(waker.clone());
        }
        let waker = Waker::new()?;
        self.server.watch_waker(waker.clone())?;
        self.own_waker = Some(waker.clone());
        Ok(waker)
    }
}

/// The replay feed as an agent of the runtime's runner: a duty cycle is
/// [`ReplayLoop::poll`]; a park waits in the server's ring, so a connection
/// or frame wakes the loop at once, and so does journal growth while clients
/// are connected (through [`ReplayLoop::waker`]).
impl<A: Authenticator> Agent for ReplayLoop<A> {
    fn do_work(&mut self, now_ns: u64) -> io::Result<usize> {
        self.poll(now_ns)
    }

    fn park(&mut self, timeout: Duration) -> io::Result<()> {
        let ReplayLoop {
            server,
            reader,
            feed,
            own_waker,
        } = self;
        let mut waited = Ok(());
        match own_waker {
            Some(waker) if feed.active > 0 => waker.park_with(
                || reader.next_seq() > reader.indexed_next_seq(),
                || waited = server.wait(timeout),
            ),
            _ => waited = server.wait(timeout),
        }
        waited
    }
}

/// Builds a Debug frame with `text` (cut to fit).
fn debug_frame(text: &[u8], out: &mut [u8; DEBUG_FRAME_BYTES_MAX]) -> usize {
    let text = &text[..text
        .len()
        .min(DEBUG_FRAME_BYTES_MAX - LENGTH_PREFIX_SIZE - 1)];
    soup::write_debug(out, text).expect("a debug frame that fits its buffer")
}

impl<A: Authenticator> Feed<A> {
    fn on_event(&mut self, io: &mut TcpServerHandle, event: TcpEvent<'_>, now_ns: u64) {
        match event {
            TcpEvent::Accepted { conn, peer } => {
                let peer_bits = match peer {
                    SocketAddr::V4(v4) => v4.ip().to_bits(),
                    SocketAddr::V6(_) => 0,
                };
                // Bounded: one pass over the fixed slot table.
                let pending = self
                    .slots
                    .iter()
                    .filter(|slot| {
                        slot.peer_bits == peer_bits
                            && matches!(slot.phase, Phase::AwaitingLogin | Phase::Authenticating)
                    })
                    .count();
                let slot = &mut self.slots[conn.index()];
                slot.reset(Some(conn), Phase::AwaitingLogin, now_ns);
                slot.peer_bits = peer_bits;
                if pending >= self.options.logins_pending_per_source_max {
                    self.counters.login_source_refused.increment();
                    self.send_debug(
                        io,
                        conn.index(),
                        b"refused: too many connections from your address waiting to log in",
                    );
                    self.close(io, conn.index());
                }
            }
            TcpEvent::Data { conn, bytes } => self.on_data(io, conn, bytes, now_ns),
            TcpEvent::Closed { conn, .. } => {
                let index = conn.index();
                if self.slots[index].conn == Some(conn) {
                    self.end_streaming(index);
                    self.slots[index].reset(None, Phase::Free, now_ns);
                }
            }
            TcpEvent::Rejected { .. } => self.counters.connections_refused.increment(),
        }
    }

    fn on_data(&mut self, io: &mut TcpServerHandle, conn: ConnId, mut bytes: &[u8], now_ns: u64) {
        let index = conn.index();
        {
            let slot = &mut self.slots[index];
            if slot.conn != Some(conn) || matches!(slot.phase, Phase::Free | Phase::Closing) {
                return;
            }
            slot.last_recv_ns = now_ns;
        }
        let mut frame = [0u8; INBOUND_FRAME_BYTES_MAX];
        while !bytes.is_empty() {
            let slot = &mut self.slots[index];
            let taken = (INBOUND_BUFFER_BYTES - slot.inbound_bytes).min(bytes.len());
            slot.inbound[slot.inbound_bytes..slot.inbound_bytes + taken]
                .copy_from_slice(&bytes[..taken]);
            slot.inbound_bytes += taken;
            bytes = &bytes[taken..];
            loop {
                let slot = &mut self.slots[index];
                if slot.phase == Phase::Closing || slot.inbound_bytes < LENGTH_PREFIX_SIZE {
                    break;
                }
                let frame_bytes =
                    usize::from(u16::from_be_bytes([slot.inbound[0], slot.inbound[1]]));
                if frame_bytes == 0 || frame_bytes > INBOUND_FRAME_BYTES_MAX {
                    self.protocol_error(
                        io,
                        index,
                        b"frame length is 0 or too large for the replay feed",
                    );
                    return;
                }
                let end = LENGTH_PREFIX_SIZE + frame_bytes;
                if slot.inbound_bytes < end {
                    break;
                }
                frame[..frame_bytes].copy_from_slice(&slot.inbound[LENGTH_PREFIX_SIZE..end]);
                slot.inbound.copy_within(end..slot.inbound_bytes, 0);
                slot.inbound_bytes -= end;
                // The login's password must not linger in the buffer.
                let tail = slot.inbound_bytes;
                slot.inbound[tail..].fill(0);
                self.on_frame(io, index, &frame[..frame_bytes]);
                frame.fill(0);
            }
            if self.slots[index].phase == Phase::Closing {
                return;
            }
        }
    }

    fn on_frame(&mut self, io: &mut TcpServerHandle, index: usize, frame: &[u8]) {
        let stage = match self.slots[index].phase {
            Phase::AwaitingLogin => Stage::AwaitingLogin,
            _ => Stage::LoggedIn,
        };
        match classify(stage, frame) {
            Step::Login(login) => self.start_login(io, index, login),
            Step::Data(_) => self.protocol_error(
                io,
                index,
                b"unsequenced data is not accepted on the replay feed",
            ),
            Step::Heartbeat => {}
            Step::Logout => self.close(io, index),
            Step::Error(error) => {
                let mut text = [0u8; DEBUG_TEXT_BYTES_MAX];
                let text = format_text(&mut text, format_args!("{error}"));
                self.protocol_error(io, index, text)
            }
        }
    }

    /// Hands a login to the password checker (or refuses it when the checker
    /// is full).
    fn start_login(&mut self, io: &mut TcpServerHandle, index: usize, login: Login<'_>) {
        let client_index = self
            .usernames
            .iter()
            .position(|name| name.as_ref() == Some(login.username))
            .map(|i| i as u16);
        let negotiated = heartbeat_policy(&self.options).negotiate(login.heartbeat_timeout_ms);
        let slot = &mut self.slots[index];
        slot.ticket = slot.ticket.wrapping_add(1);
        slot.client_index = client_index;
        slot.peer_timeout_ns = negotiated.peer_timeout_ns;
        slot.heartbeat_interval_ns = negotiated.heartbeat_interval_ns;
        slot.requested_session = login.session;
        slot.next_seq = login.requested_seq.max(1);
        let request = AuthRequest {
            slot: index as u32,
            ticket: slot.ticket,
            client_index,
            password: *login.password,
        };
        match self.auth.submit(request) {
            Ok(()) => slot.phase = Phase::Authenticating,
            Err(mut refused) => {
                refused.password.fill(0);
                // Too many logins being checked: refuse rather than wait.
                self.reject_login(io, index, login_reject::NOT_AUTHORIZED);
            }
        }
    }

    /// Applies the password checker's verdicts. Returns verdicts applied.
    fn on_verdicts(&mut self, io: &mut TcpServerHandle, now_ns: u64) -> usize {
        let mut applied = 0;
        while let Some(verdict) = self.auth.poll_result() {
            applied += 1;
            let index = verdict.slot as usize;
            let Some(slot) = self.slots.get_mut(index) else {
                continue;
            };
            if slot.phase != Phase::Authenticating || slot.ticket != verdict.ticket {
                continue; // for a connection that is gone
            }
            let Some(conn) = slot.conn else { continue };
            if !verdict.verified {
                self.reject_login(io, index, login_reject::NOT_AUTHORIZED);
                continue;
            }
            let session = self.options.session;
            if !slot.requested_session.is_blank() && slot.requested_session != session {
                self.reject_login(io, index, login_reject::SESSION_UNAVAILABLE);
                continue;
            }
            let Some(client) = slot.client_index.map(usize::from) else {
                // Verified means a configured client: cannot happen.
                self.reject_login(io, index, login_reject::NOT_AUTHORIZED);
                continue;
            };
            if self.sessions[client] as usize >= self.options.sessions_per_client_max {
                self.counters.logins_over_limit.increment();
                self.send_debug(
                    io,
                    index,
                    b"login refused: this username already holds its most replay sessions",
                );
                self.reject_login(io, index, login_reject::NOT_AUTHORIZED);
                continue;
            }
            let slot = &mut self.slots[index];
            let mut frame = [0u8; LENGTH_PREFIX_SIZE + 1 + soup::LOGIN_ACCEPTED_PAYLOAD];
            let bytes = soup::write_login_accepted(&mut frame, session, slot.next_seq)
                .expect("login accepted fits its buffer");
            if io.send(conn, &frame[..bytes]).is_err() {
                // A fresh connection's buffer always has room; it closed.
                self.close(io, index);
                continue;
            }
            slot.phase = Phase::Streaming;
            slot.cursor = None;
            slot.last_send_ns = now_ns;
            slot.queued_bytes = io.pending_send_bytes(conn);
            slot.drained_ns = now_ns;
            self.active += 1;
            self.sessions[client] += 1;
            self.counters.logins_accepted.increment();
        }
        applied
    }

    /// Sends every streaming client what it can take, then heartbeats,
    /// timeouts, stalls and end of session. Returns messages and heartbeats
    /// sent.
    fn serve(
        &mut self,
        io: &mut TcpServerHandle,
        reader: &mut JournalReader,
        now_ns: u64,
    ) -> io::Result<usize> {
        // `ended` before `next_seq`: once the session has ended, next_seq is final.
        let ended = reader.ended();
        let stream_next_seq = reader.next_seq();
        let mut work = 0;
        for index in 0..self.slots.len() {
            let phase = self.slots[index].phase;
            if matches!(phase, Phase::Free | Phase::Closing) {
                continue;
            }
            let slot = &self.slots[index];
            if now_ns.saturating_sub(slot.last_recv_ns) >= slot.peer_timeout_ns {
                self.send_debug(io, index, b"no heartbeat from the client: disconnecting");
                self.close(io, index);
                continue;
            }
            if phase == Phase::AwaitingLogin
                && now_ns.saturating_sub(slot.accepted_ns) >= self.options.login_timeout_ns
            {
                self.counters.login_timeouts.increment();
                self.send_debug(
                    io,
                    index,
                    b"no login request within the login deadline: disconnecting",
                );
                self.close(io, index);
                continue;
            }
            if phase != Phase::Streaming {
                continue;
            }
            if !self.drains(io, index, now_ns) {
                self.counters.slow_clients_cut.increment();
                self.send_debug(
                    io,
                    index,
                    b"slow consumer: nothing drained past the stall timeout; disconnecting",
                );
                self.close_slow(io, index);
                continue;
            }
            if self.slots[index].next_seq >= stream_next_seq {
                self.slots[index].stall = None;
                if ended {
                    let mut frame = [0u8; LENGTH_PREFIX_SIZE + 1];
                    let bytes = soup::write_end_of_session(&mut frame).expect("fits");
                    if let Some(conn) = self.slots[index].conn {
                        let _ = io.send(conn, &frame[..bytes]);
                    }
                    self.close(io, index);
                    continue;
                }
            } else {
                work += self.send_messages(io, reader, index, now_ns)?;
                if self.slots[index].phase != Phase::Streaming {
                    continue;
                }
            }
            let slot = &mut self.slots[index];
            let Some(conn) = slot.conn else { continue };
            if now_ns.saturating_sub(slot.last_send_ns) >= slot.heartbeat_interval_ns {
                let mut frame = [0u8; LENGTH_PREFIX_SIZE + 1];
                let bytes = soup::write_server_heartbeat(&mut frame).expect("fits");
                if io.send(conn, &frame[..bytes]).is_ok() {
                    slot.last_send_ns = now_ns;
                    self.counters.heartbeats_sent.increment();
                    work += 1;
                }
            }
            slot.queued_bytes = io.pending_send_bytes(conn);
        }
        Ok(work)
    }

    /// Whether streaming client `index` has drained something of what waits
    /// for it within the stall timeout (or nothing waits).
    fn drains(&mut self, io: &TcpServerHandle, index: usize, now_ns: u64) -> bool {
        let slot = &mut self.slots[index];
        let Some(conn) = slot.conn else { return true };
        let queued = io.pending_send_bytes(conn);
        if queued == 0 || queued < slot.queued_bytes {
            slot.drained_ns = now_ns;
        }
        slot.queued_bytes = queued;
        now_ns.saturating_sub(slot.drained_ns) < self.options.stall_timeout_ns
    }

    /// Counts a damaged record and logs it the first time it is seen.
    #[cold]
    fn note_damage(&mut self, error: &io::Error) {
        if self.damage.first_time(error) {
            tracing::error!(
                %error,
                "replay: a damaged journal record is not served (sessions reaching it are closed)"
            );
        }
    }

    /// Closes client `index`, whose next record is damaged, telling it why.
    #[cold]
    fn close_damaged(&mut self, io: &mut TcpServerHandle, index: usize, error: &io::Error) {
        self.counters.corrupt_records.increment();
        self.note_damage(error);
        let text = error.to_string();
        self.send_debug(io, index, text.as_bytes());
        self.close(io, index);
    }

    /// Sends client `index` messages from its `next_seq` on, as many as its
    /// send buffer takes (bounded); tracks and cuts a stalled client.
    fn send_messages(
        &mut self,
        io: &mut TcpServerHandle,
        reader: &mut JournalReader,
        index: usize,
        now_ns: u64,
    ) -> io::Result<usize> {
        let slot = &mut self.slots[index];
        let Some(conn) = slot.conn else { return Ok(0) };
        let mut cursor = match slot.cursor {
            Some(cursor) => cursor,
            None => match position(reader, slot.next_seq) {
                Ok(Some(cursor)) => cursor,
                Ok(None) => return Ok(0), // not readable yet: wait
                Err(error) if is_damaged_record(&error) => {
                    self.close_damaged(io, index, &error);
                    return Ok(0);
                }
                Err(error) => return Err(error),
            },
        };
        let limit_bytes = io.send_capacity(conn).min(self.scratch.len());
        let scratch = &mut self.scratch[..limit_bytes];
        let mut frames_bytes = 0usize;
        let mut sent = 0usize;
        let mut buffer_full = false;
        let mut next_seq = slot.next_seq;
        let read = reader.read(&mut cursor, MESSAGES_PER_CLIENT_PER_POLL, |seq, message| {
            if seq < next_seq {
                return true; // scanning from the start of the journal
            }
            match soup::write_sequenced(&mut scratch[frames_bytes..], message) {
                Ok(bytes) => {
                    frames_bytes += bytes;
                    sent += 1;
                    next_seq = seq + 1;
                    true
                }
                Err(_) => {
                    buffer_full = true;
                    false
                }
            }
        });
        if let Err(error) = read {
            if !is_damaged_record(&error) {
                return Err(error);
            }
            // Not even the good messages before the damaged record are sent:
            // the client's next message would be the damaged one's.
            self.close_damaged(io, index, &error);
            return Ok(0);
        }
        slot.cursor = Some(cursor);
        slot.next_seq = next_seq;
        if sent > 0 {
            if io.send(conn, &self.scratch[..frames_bytes]).is_err() {
                // Cannot happen: the frames fit the capacity just read.
                self.close(io, index);
                return Ok(0);
            }
            slot.last_send_ns = now_ns;
            self.counters.messages_sent.add(sent as u64);
        }
        // Stall tracking: the window opens when the send buffer limits what
        // this poll sends, and closes once the client has drained half a
        // buffer since (or a poll is not limited by it). A client that
        // cannot drain half its buffer within the stall timeout is cut: it
        // reads slower than `send_buffer_bytes / 2` per `stall_timeout`.
        if !buffer_full {
            slot.stall = None;
        } else {
            let stall = match &mut slot.stall {
                Some(stall) => {
                    // Room found while the buffer was full: the client drained it.
                    stall.drained_bytes += frames_bytes;
                    stall
                }
                None => slot.stall.insert(Stall {
                    since_ns: now_ns,
                    drained_bytes: 0,
                }),
            };
            if stall.drained_bytes >= self.options.send_buffer_bytes / 2 {
                slot.stall = None;
            } else if now_ns.saturating_sub(stall.since_ns) >= self.options.stall_timeout_ns {
                self.counters.slow_clients_cut.increment();
                self.send_debug(
                    io,
                    index,
                    b"slow consumer: send buffer full past the stall timeout; disconnecting",
                );
                // Flushing is bounded by the server and never blocks the loop.
                self.close_slow(io, index);
            }
        }
        Ok(sent)
    }

    fn reject_login(&mut self, io: &mut TcpServerHandle, index: usize, reason: u8) {
        self.counters.logins_rejected.increment();
        let mut frame = [0u8; LENGTH_PREFIX_SIZE + 2];
        let bytes = soup::write_login_rejected(&mut frame, reason).expect("fits");
        if let Some(conn) = self.slots[index].conn {
            let _ = io.send(conn, &frame[..bytes]);
        }
        self.close(io, index);
    }

    fn protocol_error(&mut self, io: &mut TcpServerHandle, index: usize, text: &[u8]) {
        self.counters.protocol_errors.increment();
        self.send_debug(io, index, text);
        self.close(io, index);
    }

    fn send_debug(&mut self, io: &mut TcpServerHandle, index: usize, text: &[u8]) {
        let mut frame = [0u8; DEBUG_FRAME_BYTES_MAX];
        let bytes = debug_frame(text, &mut frame);
        if let Some(conn) = self.slots[index].conn {
            let _ = io.send(conn, &frame[..bytes]);
        }
    }

    /// Closes after flushing what is queued (bounded by the server).
    fn close(&mut self, io: &mut TcpServerHandle, index: usize) {
        if let Some(conn) = self.slots[index].conn {
            io.close(conn);
        }
        self.leave(index);
    }

    /// Closes a reader that is not draining: its queued bytes (the Debug
    /// packet last) get `SLOW_CLOSE_FLUSH`, not the server's full flush
    /// bound, so its slot is free soon.
    fn close_slow(&mut self, io: &mut TcpServerHandle, index: usize) {
        if let Some(conn) = self.slots[index].conn {
            io.close_with_timeout(conn, SLOW_CLOSE_FLUSH);
        }
        self.leave(index);
    }

    /// Marks the slot closing; its `Closed` event frees it.
    fn leave(&mut self, index: usize) {
        self.end_streaming(index);
        self.slots[index].phase = Phase::Closing;
    }

    /// Takes a streaming slot out of the active and per-client counts (no
    /// change for any other phase).
    fn end_streaming(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if slot.phase != Phase::Streaming {
            return;
        }
        slot.phase = Phase::Closing;
        self.active -= 1;
        if let Some(client) = slot.client_index {
            let sessions = &mut self.sessions[usize::from(client)];
            assert!(*sessions > 0, "a streaming client is counted");
            *sessions -= 1;
        }
    }
}

/// A cursor from which reading reaches message `seq`, or `None` to wait:
/// `seq` is not published yet, or its record is published but not indexed
/// yet. When the index no longer reaches back to `seq` (trimmed), a cursor at
/// the start of the journal: the caller skips what comes before `seq`.
fn position(reader: &mut JournalReader, seq: u64) -> io::Result<Option<Cursor>> {
    if seq >= reader.next_seq() {
        return Ok(None);
    }
    if let Some(cursor) = reader.seek(seq)? {
        return Ok(Some(cursor));
    }
    if reader.seek(1)?.is_some() {
        return Ok(None); // the index starts at 1 but has not reached `seq` yet
    }
    Ok(Some(reader.start()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{FsyncPolicy, JournalWriter};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::{self, JoinHandle};
    use std::time::Instant;
    use tally_config::gateway::{hash_password, Role};
    use tally_runtime::agent::run_agents;
    use tally_runtime::idle::IdleStrategy;
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

    fn message(seq: u64) -> Vec<u8> {
        let len = 20 + (seq % 22) as usize;
        let mut out = vec![(seq % 251) as u8; len];
        out[..8].copy_from_slice(&seq.to_be_bytes());
        out
    }

    fn append(writer: &mut JournalWriter, count: u64) {
        let mut seq = writer.next_seq();
        let end = seq + count;
        while seq < end {
            let n = (end - seq).min(30);
            let mut blocks = Vec::new();
            for s in seq..seq + n {
                let m = message(s);
                blocks.extend_from_slice(&(m.len() as u16).to_be_bytes());
                blocks.extend_from_slice(&m);
            }
            writer.append(seq, n as u16, &blocks, 0).unwrap();
            seq += n;
        }
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
        let n =
            soup::write_login_request(&mut frame, "nobody", "secret1", Session::BLANK, 1).unwrap();
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
        let n =
            soup::write_login_request_v41(&mut frame, "rdr1", "secret1", Session::BLANK, 11, 400)
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
}
