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
use tally_gateway::auth::{AuthThread, Authenticator};
use tally_gateway::soup_server::HeartbeatPolicy;
use tally_runtime::agent::Agent;
use tally_runtime::net::{TcpServer, TcpServerConfig};
use tally_runtime::wake::Waker;
use tally_wire::mold::Session;
use tally_wire::soup::{self, LENGTH_PREFIX_SIZE, USERNAME_SIZE};

use crate::journal::{Cursor, JournalProgress, JournalReader};
use crate::retransmit::{is_damaged_record, DamageLog};
use tally_config::ApplianceConfig;

mod feed;
mod slots;
#[cfg(test)]
mod tests;

use feed::*;
use slots::*;

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

tally_runtime::counter_set! {
    /// The replay loop's counters in the shared counter file.
    pub struct ReplayCounters, prefix "replay.";
    /// Clients logged in and being served now (a gauge).
    clients_active,
    logins_accepted,
    /// Logins rejected, `A` or `S`.
    logins_rejected,
    /// Sequenced Data packets sent.
    messages_sent,
    /// Clients cut off for a send buffer full past the stall timeout.
    slow_clients_cut,
    protocol_errors,
    heartbeats_sent,
    /// Connections closed for sending no login within the deadline.
    login_timeouts,
    /// Logins refused: the username already holds its most sessions.
    logins_over_limit,
    /// Sessions closed because a journal record failed its check.
    corrupt_records,
    /// Connections refused at accept: every slot taken.
    connections_refused,
    /// Connections closed at accept: their address already holds its most
    /// connections that have not logged in.
    login_source_refused,
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

/// The replay loop: its TCP server, its journal reader and every
/// connection's state. See the module doc.
pub struct ReplayLoop<A: Authenticator = AuthThread> {
    server: TcpServer,
    reader: JournalReader,
    feed: Feed<A>,
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
        // Following the journal is work only while clients stream. A loop
        // that counted it always kept yielding while the stream flowed:
        // 55 % of the appliance's CPU samples under 4-client
        // request/response load (perf). That yielding kept a vCPU from
        // halting, which made the applications' blocked receive loops wake
        // fast; they now keep polling through a busy window of their own
        // (`ConsumerConfig::idle`), and the order round trip till ->
        // warehouse -> till went from p50 ~125 us to ~57 us with both
        // changes (BENCHMARKS.md, issue 11, third pass).
        let mut work = if self.feed.active > 0 { followed } else { 0 };
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
        self.server.waker()
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
        } = self;
        // Asked to be woken by the journal's growth only while clients wait.
        if feed.active > 0 {
            server.park_unless(timeout, || reader.next_seq() > reader.indexed_next_seq())
        } else {
            server.wait(timeout)
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
