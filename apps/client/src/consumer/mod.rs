//! The stream consumer (seed 000's `Destination`): joins the multicast
//! stream and hands the application every stream message as `(seq, message)`
//! strictly in sequence order, each exactly once, hiding gap fill, the
//! replay feed and heartbeats (DESIGN.md §2, §5).
//!
//! How it recovers what it missed:
//!
//! - **Gaps** show up as a data packet past the next expected number, or a
//!   heartbeat (or end of session) whose number is past it. Messages that
//!   arrive early wait in a fixed-capacity reorder buffer (a ring of slots
//!   indexed by `seq % capacity`). Each missing run is asked for with a
//!   MoldUDP64 re-request to the retransmit server: a bounded number of
//!   requests in flight, each with a timeout and a retry budget; a reply that
//!   answers part of a request is followed at once by a request for the rest.
//! - **The replay feed** takes over when re-requests go unanswered past their
//!   retries, when a gap is larger than `replay_gap_messages` or older than
//!   the server's retention, or when the stream ran past the reorder buffer
//!   (overflow). The consumer logs in to the SoupBinTCP replay feed asking for
//!   its next number, takes messages from it (and keeps buffering live
//!   multicast meanwhile), and goes back to multicast once nothing it dropped
//!   for overflow is still ahead of it and it has delivered everything seen
//!   on the stream (after unanswered re-requests or a late join), or
//!   everything up to what was newest when the replay took over (after an
//!   overflow or a large or old gap: later loss is left to re-requests).
//!   Every source is deduplicated by sequence number, so the switch-over has
//!   no gap and no duplicate.
//! - **Late join**: with `start_seq` ≥ 1 the consumer starts on the replay
//!   feed from that number (1, or a snapshot's seq + 1) and then follows live
//!   multicast the same way. `start_seq` 0 starts with the first packet seen.
//! - **Liveness**: any data or heartbeat (multicast or replay) refreshes the
//!   stream's last-activity time; [`StreamConsumer::is_stale`] says whether
//!   it is older than `stale_timeout_ns`. The newest number seen anywhere is
//!   kept for lag (newest − delivered). An end-of-session packet (count
//!   0xFFFF) or the replay feed's End of Session is surfaced through
//!   [`StreamConsumer::is_ended`] once everything before it was delivered.
//!
//! Realtime contract: one thread owns a consumer. Sockets, the reorder
//! buffer, the request table and the replay frame decoder are allocated in
//! [`StreamConsumer::new`]; taking a datagram, delivering a message, buffering
//! one and asking for a gap never allocate, lock or log. Opening a replay
//! connection (a recovery, not a per-message event) allocates that
//! connection's buffers, and its `connect` blocks for at most
//! `replay_connect_timeout_ns`. Times passed to [`StreamConsumer::poll`] are
//! [`monotonic_ns`] readings.
//!
//! ```no_run
//! use tally_client::consumer::{monotonic_ns, ConsumerConfig, StreamConsumer};
//! # fn run(appliance: &tally_config::ApplianceConfig) -> std::io::Result<()> {
//! let mut config = ConsumerConfig::for_appliance(appliance, "read1", "readpass");
//! config.start_seq = 1; // the whole session (or a snapshot's seq + 1)
//! let mut consumer = StreamConsumer::new(&config)?;
//! loop {
//!     let now_ns = monotonic_ns();
//!     consumer.poll(now_ns, |seq, message| {
//!         // every message once, in order: apply it
//!         let _ = (seq, message.msg_type());
//!     })?;
//!     let _stale = consumer.is_stale(now_ns);
//!     let _lag = consumer.lag();
//! }
//! # }
//! ```
//!
//! Messages that do not decode as a stream message (the gateway validates
//! every one, so only a newer schema would produce them) still take their
//! number: they are counted in `undecodable_messages` and skipped.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use tally_runtime::idle::Idler;
use tally_runtime::net::{MulticastReceiver, RecvStats, TcpConn, UdpSocketRing};
use tally_wire::mold::Session;
use tally_wire::soup::{self, FrameDecoder};
use tally_wire::Message;

use tally_runtime::loss::LossFilter;

mod config;
mod recovery;
mod stats;
#[cfg(test)]
mod tests;

pub use config::*;
use recovery::*;
pub use stats::*;

/// Bytes per reorder-buffer slot; every stream message fits.
pub const SLOT_BYTES: usize = 64;
const _: () = assert!(tally_wire::MAX_MESSAGE_SIZE <= SLOT_BYTES);
/// Length marker of a slot holding a message that cannot be a stream message
/// (empty, or longer than a slot): it still takes its number.
const SLOT_UNDECODABLE: u8 = u8::MAX;
const _: () = assert!(SLOT_BYTES < SLOT_UNDECODABLE as usize);
/// Largest reorder buffer, in messages (64 MiB of slots).
pub const REORDER_CAPACITY_MAX: usize = 1 << 20;
/// Most messages one re-request asks for (the count field is 16 bits;
/// 0xFFFF would read as an end of session in a reply).
const REQUEST_COUNT_MAX: u64 = 0xFFFE;
/// Send slots (and receive buffers) of the re-request socket.
const RETRANSMIT_SLOTS: usize = 16;
/// Kernel-to-consumer buffer of a replay connection.
const REPLAY_RECV_BUFFER_BYTES: usize = 256 * 1024;
/// Send buffer of a replay connection (a login and heartbeats).
const REPLAY_SEND_BUFFER_BYTES: usize = 4096;
/// Largest replay frame accepted: Sequenced Data holds one message; Debug
/// text is short.
const REPLAY_FRAME_BYTES_MAX: usize = 1024;
/// Client heartbeat on the replay connection after this much silence (§4).
const REPLAY_HEARTBEAT_INTERVAL_NS: u64 = 1_000_000_000;
/// Drop the replay connection after this long without a byte from it (§4).
const REPLAY_PEER_TIMEOUT_NS: u64 = 15_000_000_000;
/// Give up on a login that got no answer in this long (argon2 takes tens of
/// milliseconds; Login Accepted may also wait for the client's commands).
const REPLAY_LOGIN_TIMEOUT_NS: u64 = 10_000_000_000;
/// First and largest wait between replay connection attempts.
const REPLAY_BACKOFF_MIN_NS: u64 = 50_000_000;
const REPLAY_BACKOFF_MAX_NS: u64 = 2_000_000_000;
/// Longest blocking slice of [`StreamConsumer::wait`] while recovering (it
/// can block on one socket at a time and must look at the others).
const RECOVERY_WAIT_SLICE: Duration = Duration::from_millis(1);

/// The clock [`StreamConsumer::poll`] and
/// [`crate::client::OrderEntryClient::poll`] expect: runtime's one monotonic clock.
pub use tally_runtime::clock::monotonic_ns;

/// The stream consumer. See the module documentation.
pub struct StreamConsumer {
    multicast: MulticastReceiver,
    retransmit: UdpSocketRing,
    replay_addr: SocketAddr,
    replay_username: String,
    replay_password: String,
    replay_connect_timeout: Duration,
    replay_conn: Option<TcpConn>,
    replay_decoder: FrameDecoder,
    core: Core,
    /// When the kernel drop count is read next.
    next_drops_sample_ns: u64,
    /// [`ConsumerConfig::idle`]: keeps [`wait`](Self::wait) polling while
    /// the stream flows, blocks once it has been quiet.
    idler: Idler,
}

impl StreamConsumer {
    /// Joins the stream and binds the re-request socket; with `start_seq` ≥ 1
    /// the first poll connects to the replay feed.
    pub fn new(config: &ConsumerConfig) -> io::Result<StreamConsumer> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        if config.reorder_capacity == 0 || config.reorder_capacity > REORDER_CAPACITY_MAX {
            return Err(invalid("reorder_capacity must be 1..=1048576 messages"));
        }
        if config.re_requests_in_flight_max == 0 {
            return Err(invalid("re_requests_in_flight_max must be at least 1"));
        }
        if config.replay_gap_messages == 0 || config.retention_messages == 0 {
            return Err(invalid(
                "replay_gap_messages and retention_messages must be at least 1",
            ));
        }
        if let Some((_, ratio)) = config.loss {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(invalid("loss ratio must be within 0.0..=1.0"));
            }
        }
        let mut login = [0u8; 64];
        soup::write_login_request(
            &mut login,
            &config.replay_username,
            &config.replay_password,
            config.session,
            1,
        )
        .map_err(|error| invalid(&format!("replay credentials: {error}")))?;

        let mut multicast = MulticastReceiver::new(
            &config.multicast,
            config.receive_buffers,
            config.datagram_bytes_max,
        )?;
        if let Some(waker) = &config.waker {
            multicast.watch_waker(waker.clone())?;
        }
        let retransmit = UdpSocketRing::bind(
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            RETRANSMIT_SLOTS,
            config.datagram_bytes_max,
        )?;
        let capacity = config.reorder_capacity.next_power_of_two();
        let now_ns = monotonic_ns();
        let mut core = Core {
            session: config.session,
            session_known: !config.session.is_blank(),
            retransmit_addr: config.retransmit,
            synced: config.start_seq >= 1,
            next_seq: config.start_seq,
            newest_seq: 0,
            slots: vec![[0u8; SLOT_BYTES]; capacity].into_boxed_slice(),
            lens: vec![0u8; capacity].into_boxed_slice(),
            mask: capacity as u64 - 1,
            buffered: 0,
            overflow_max: 0,
            requests: vec![Request::default(); config.re_requests_in_flight_max].into_boxed_slice(),
            requests_active: 0,
            watermark: 0,
            mode: RecoveryMode::Live,
            live_seen: false,
            end_seq: None,
            last_activity_ns: now_ns,
            stale: false,
            loss: config
                .loss
                .map(|(seed, ratio)| LossFilter::new(seed, ratio)),
            stats: ConsumerStats::default(),
            stale_timeout_ns: config.stale_timeout_ns,
            re_request_timeout_ns: config.re_request_timeout_ns,
            re_request_retries: config.re_request_retries,
            replay_gap_messages: config.replay_gap_messages,
            retention_messages: config.retention_messages,
            replay_phase: ReplayPhase::Idle,
            replay_target: 0,
            replay_early_exit: false,
            replay_expected_seq: 0,
            replay_retry_at_ns: 0,
            replay_backoff_ns: REPLAY_BACKOFF_MIN_NS,
            replay_since_ns: 0,
            replay_last_recv_ns: 0,
            replay_last_sent_ns: 0,
            replay_broken: false,
        };
        if config.start_seq >= 1 {
            core.enter_replay(ReplayReason::LateJoin, 0);
        }
        Ok(StreamConsumer {
            multicast,
            retransmit,
            replay_addr: config.replay,
            replay_username: config.replay_username.clone(),
            replay_password: config.replay_password.clone(),
            replay_connect_timeout: Duration::from_nanos(config.replay_connect_timeout_ns),
            replay_conn: None,
            replay_decoder: FrameDecoder::with_buffer_bytes(
                REPLAY_FRAME_BYTES_MAX,
                REPLAY_RECV_BUFFER_BYTES.max(4 * REPLAY_FRAME_BYTES_MAX),
            ),
            core,
            next_drops_sample_ns: 0,
            idler: config.idle.idler(),
        })
    }

    /// Does one bounded round of work: takes the datagrams and replay bytes
    /// already received, hands every message that is next in order to
    /// `on_message(seq, message)`, asks for gaps, retries or switches source.
    /// Returns the work done (0 = idle). `now_ns` is [`monotonic_ns`].
    pub fn poll(
        &mut self,
        now_ns: u64,
        mut on_message: impl FnMut(u64, Message<'_>),
    ) -> io::Result<usize> {
        let core = &mut self.core;
        let mut work = self
            .multicast
            .poll(|datagram| core.on_multicast(datagram, now_ns, &mut on_message))?;
        work += self.retransmit.poll_recv(|from, datagram| {
            core.on_retransmit(from, datagram, now_ns, &mut on_message)
        })?;
        work += self.service_replay(now_ns, &mut on_message)?;
        work += self.maintain(now_ns)?;
        if work > 0 {
            // Starts the busy window of `wait` (no system call: a reset).
            self.idler.idle_at(work, now_ns, |_| {});
        }
        if now_ns >= self.next_drops_sample_ns {
            self.next_drops_sample_ns = now_ns + KERNEL_DROPS_SAMPLE_NS;
            if let Some(drops) = self.multicast.kernel_drops() {
                self.core.stats.kernel_drops = drops;
            }
        }
        Ok(work)
    }

    /// Polls until at least one message was delivered, `timeout` passed or
    /// [`ConsumerConfig::waker`] was woken; returns the work done (0 =
    /// nothing). Blocks in the kernel while idle.
    pub fn wait(
        &mut self,
        timeout: Duration,
        mut on_message: impl FnMut(u64, Message<'_>),
    ) -> io::Result<usize> {
        let deadline_ns = monotonic_ns().saturating_add(timeout.as_nanos() as u64);
        let delivered_before = self.core.stats.messages_delivered;
        loop {
            // One clock read a round: the poll, the deadline and the busy
            // window all take it.
            let now_ns = monotonic_ns();
            let work = self.poll(now_ns, &mut on_message)?;
            if self.core.stats.messages_delivered != delivered_before {
                return Ok(work.max(1));
            }
            // Woken by another thread ([`ConsumerConfig::waker`]): its work
            // is the caller's to do now.
            if now_ns >= deadline_ns || self.multicast.take_woken() {
                return Ok(0);
            }
            let mut block = false;
            self.idler.idle_at(0, now_ns, |_| block = true);
            if !block {
                continue;
            }
            let mut slice = Duration::from_nanos(deadline_ns - now_ns);
            let recovering = self.core.mode == RecoveryMode::Replay
                || self.core.requests_active > 0
                || self.core.has_gap();
            if recovering {
                slice = slice.min(RECOVERY_WAIT_SLICE);
            }
            let core = &mut self.core;
            match &mut self.replay_conn {
                Some(conn) => {
                    let decoder = &mut self.replay_decoder;
                    // A closed connection is noticed by the next poll.
                    let _ = conn.wait_recv(slice, |bytes| {
                        feed_replay(decoder, core, bytes, monotonic_ns(), &mut on_message)
                    });
                }
                None => {
                    self.multicast.wait(slice, |datagram| {
                        core.on_multicast(datagram, monotonic_ns(), &mut on_message)
                    })?;
                }
            }
        }
    }

    /// Polls until `done(self)` holds or `timeout` passes; returns whether
    /// it holds.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut on_message: impl FnMut(u64, Message<'_>),
        mut done: impl FnMut(&StreamConsumer) -> bool,
    ) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.wait(
                (deadline - now).min(Duration::from_millis(10)),
                &mut on_message,
            )?;
        }
    }

    fn maintain(&mut self, now_ns: u64) -> io::Result<usize> {
        let stale = self.core.is_stale(now_ns);
        if stale && !self.core.stale {
            self.core.stats.stale_transitions += 1;
        }
        self.core.stale = stale;
        if !self.core.synced {
            return Ok(0);
        }
        match self.core.mode {
            RecoveryMode::Live => self.core.maintain_live(now_ns, &mut self.retransmit),
            RecoveryMode::Replay => Ok(0),
        }
    }

    /// Replay mode: connects, logs in, reads, keeps the connection alive,
    /// and hands back to multicast once caught up.
    fn service_replay(
        &mut self,
        now_ns: u64,
        on_message: &mut impl FnMut(u64, Message<'_>),
    ) -> io::Result<usize> {
        if self.core.mode != RecoveryMode::Replay {
            return Ok(0);
        }
        if self.core.caught_up() {
            self.close_replay();
            self.core.leave_replay();
            return Ok(1);
        }
        let Some(conn) = &mut self.replay_conn else {
            if now_ns < self.core.replay_retry_at_ns {
                return Ok(0);
            }
            self.open_replay(now_ns);
            return Ok(1);
        };
        let core = &mut self.core;
        let decoder = &mut self.replay_decoder;
        let result = conn.poll_recv(|bytes| feed_replay(decoder, core, bytes, now_ns, on_message));
        let mut work = 0;
        let mut lost = false;
        match result {
            Ok(n) => work += usize::from(n > 0),
            Err(_) => lost = true,
        }
        if core.replay_broken
            || (core.replay_phase == ReplayPhase::LoggingIn
                && now_ns.saturating_sub(core.replay_since_ns) > REPLAY_LOGIN_TIMEOUT_NS)
            || now_ns.saturating_sub(core.replay_last_recv_ns) > REPLAY_PEER_TIMEOUT_NS
        {
            lost = true;
        }
        if !lost && now_ns.saturating_sub(core.replay_last_sent_ns) >= REPLAY_HEARTBEAT_INTERVAL_NS
        {
            let mut frame = [0u8; 8];
            let len = soup::write_client_heartbeat(&mut frame).expect("fits");
            // A full buffer means the server is not reading: the peer
            // timeout decides.
            let _ = conn.send(&frame[..len]);
            core.replay_last_sent_ns = now_ns;
        }
        if lost {
            self.replay_conn = None;
            if self.core.caught_up() {
                self.core.leave_replay();
            } else {
                self.core.stats.replay_disconnects += 1;
                self.core.replay_failed(now_ns);
            }
            work += 1;
        } else if self.core.caught_up() {
            self.close_replay();
            self.core.leave_replay();
            work += 1;
        }
        Ok(work)
    }

    /// Connects to the replay feed and sends the login for `next_seq`.
    fn open_replay(&mut self, now_ns: u64) {
        let connected = TcpConn::connect_timeout(
            self.replay_addr,
            REPLAY_RECV_BUFFER_BYTES,
            REPLAY_SEND_BUFFER_BYTES,
            self.replay_connect_timeout,
        );
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(error) => {
                tracing::debug!(%error, addr = %self.replay_addr, "replay feed connect failed");
                self.core.stats.replay_connect_failures += 1;
                self.core.replay_failed(now_ns);
                return;
            }
        };
        let mut login = [0u8; 64];
        let session = if self.core.session_known {
            self.core.session
        } else {
            Session::BLANK
        };
        let len = soup::write_login_request(
            &mut login,
            &self.replay_username,
            &self.replay_password,
            session,
            self.core.next_seq,
        )
        .expect("credentials checked in new");
        if conn.send(&login[..len]).is_err() {
            self.core.stats.replay_connect_failures += 1;
            self.core.replay_failed(now_ns);
            return;
        }
        self.core.stats.replay_connects += 1;
        self.replay_decoder.clear();
        self.core.replay_phase = ReplayPhase::LoggingIn;
        self.core.replay_broken = false;
        self.core.replay_since_ns = now_ns;
        self.core.replay_last_recv_ns = now_ns;
        self.core.replay_last_sent_ns = now_ns;
        self.replay_conn = Some(conn);
    }

    /// Logs out of the replay feed and drops the connection.
    fn close_replay(&mut self) {
        if let Some(mut conn) = self.replay_conn.take() {
            let mut frame = [0u8; 8];
            let len = soup::write_logout(&mut frame).expect("fits");
            if conn.send(&frame[..len]).is_ok() {
                let _ = conn.flush(Duration::from_millis(10));
            }
        }
    }

    /// The next sequence number to be delivered.
    pub fn next_seq(&self) -> u64 {
        self.core.next_seq
    }

    /// The last sequence number delivered (0 = none yet).
    pub fn delivered_seq(&self) -> u64 {
        self.core.next_seq.saturating_sub(1)
    }

    /// The newest sequence number known to exist on the stream.
    pub fn newest_seq(&self) -> u64 {
        self.core.newest_seq
    }

    /// How far delivery is behind the stream: newest − delivered.
    pub fn lag(&self) -> u64 {
        self.core.newest_seq.saturating_sub(self.delivered_seq())
    }

    /// Whether nothing (no data, no heartbeat) arrived for longer than the
    /// stale timeout.
    pub fn is_stale(&self, now_ns: u64) -> bool {
        self.core.is_stale(now_ns)
    }

    /// When data or a heartbeat last arrived ([`monotonic_ns`]).
    pub fn last_activity_ns(&self) -> u64 {
        self.core.last_activity_ns
    }

    /// Whether the session has ended and every message was delivered.
    pub fn is_ended(&self) -> bool {
        self.core.is_ended()
    }

    /// One past the session's last message, once its end was announced.
    pub fn end_seq(&self) -> Option<u64> {
        self.core.end_seq
    }

    /// Live multicast or the replay feed.
    pub fn mode(&self) -> RecoveryMode {
        self.core.mode
    }

    /// Whether a gap is open, a re-request is outstanding or the replay feed
    /// is in use.
    pub fn is_recovering(&self) -> bool {
        self.core.mode == RecoveryMode::Replay
            || self.core.requests_active > 0
            || self.core.has_gap()
    }

    /// Messages waiting in the reorder buffer.
    pub fn buffered(&self) -> usize {
        self.core.buffered
    }

    /// The stream's session (blank until the first packet when configured
    /// blank).
    pub fn session(&self) -> Session {
        self.core.session
    }

    pub fn stats(&self) -> ConsumerStats {
        self.core.stats
    }

    /// The multicast socket's receive counters (ENOBUFS, truncation).
    pub fn receive_stats(&self) -> RecvStats {
        self.multicast.stats()
    }

    /// The re-request socket's local address (replies come to it).
    pub fn retransmit_local_addr(&self) -> SocketAddrV4 {
        self.retransmit.local_addr()
    }
}

const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<StreamConsumer>();
};
