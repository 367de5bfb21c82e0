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

use serde::Serialize;
use tally_runtime::net::{MulticastConfig, MulticastReceiver, RecvStats, TcpConn, UdpSocketRing};
use tally_wire::mold::{MoldPacket, PacketKind, ReRequest, Session};
use tally_wire::soup::{self, FrameDecoder, ServerPacket};
use tally_wire::Message;

use tally_runtime::loss::LossFilter;

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

/// CLOCK_MONOTONIC in nanoseconds: the clock [`StreamConsumer::poll`] and
/// [`crate::client::OrderEntryClient::poll`] expect.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`, which we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0, "CLOCK_MONOTONIC is always available on Linux");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Everything a consumer needs; [`ConsumerConfig::new`] fills in defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerConfig {
    /// The stream's group, port and the interface to join on.
    pub multicast: MulticastConfig,
    /// The stream's session; blank = take the session of the first packet.
    pub session: Session,
    /// The retransmit server (MoldUDP64 re-requests).
    pub retransmit: SocketAddrV4,
    /// The replay feed (SoupBinTCP).
    pub replay: SocketAddr,
    /// Credentials for the replay feed (any configured client; `reader`
    /// clients exist for this).
    pub replay_username: String,
    pub replay_password: String,
    /// First sequence number to deliver: 1 for the whole session, a
    /// snapshot's seq + 1 to resume, or 0 to start with the first packet
    /// seen on the stream (no history).
    pub start_seq: u64,
    /// The stream is stale after this long without data or a heartbeat.
    pub stale_timeout_ns: u64,
    /// A re-request unanswered this long is sent again.
    pub re_request_timeout_ns: u64,
    /// Times a re-request is sent again before the replay feed takes over.
    pub re_request_retries: u32,
    /// Re-requests outstanding at once, at most.
    pub re_requests_in_flight_max: usize,
    /// Messages the reorder buffer holds (rounded up to a power of two). The
    /// stream running further ahead than this switches to the replay feed.
    pub reorder_capacity: usize,
    /// A gap of at least this many messages goes straight to the replay feed.
    pub replay_gap_messages: u64,
    /// The retransmit server's `retention_messages`: gaps older than this go
    /// straight to the replay feed (`u64::MAX` when unknown: unanswered
    /// re-requests find out instead).
    pub retention_messages: u64,
    /// Connecting to the replay feed blocks at most this long.
    pub replay_connect_timeout_ns: u64,
    /// Receive buffers of the multicast socket's io_uring.
    pub receive_buffers: u16,
    /// Largest datagram accepted (the stream's `payload_bytes_max`).
    pub datagram_bytes_max: usize,
    /// Seeded in-process loss on incoming multicast datagrams: `(seed,
    /// drop ratio 0.0..=1.0)`. For tests and `--loss`; `None` in production.
    pub loss: Option<(u64, f64)>,
}

impl ConsumerConfig {
    /// A configuration with default timeouts and sizes: stale after 3 s,
    /// re-requests time out after 50 ms and are retried 3 times, 8 in flight,
    /// a 32 768-message reorder buffer, gaps of 2 048 messages or more from
    /// the replay feed, starting at seq 1.
    pub fn new(
        multicast: MulticastConfig,
        session: Session,
        retransmit: SocketAddrV4,
        replay: SocketAddr,
        replay_username: &str,
        replay_password: &str,
    ) -> ConsumerConfig {
        ConsumerConfig {
            multicast,
            session,
            retransmit,
            replay,
            replay_username: replay_username.to_string(),
            replay_password: replay_password.to_string(),
            start_seq: 1,
            stale_timeout_ns: 3_000_000_000,
            re_request_timeout_ns: 50_000_000,
            re_request_retries: 3,
            re_requests_in_flight_max: 8,
            reorder_capacity: 32_768,
            replay_gap_messages: 2_048,
            retention_messages: u64::MAX,
            replay_connect_timeout_ns: 1_000_000_000,
            receive_buffers: 1024,
            datagram_bytes_max: 2048,
            loss: None,
        }
    }

    /// The configuration for the appliance configured by `appliance`: its
    /// stream, session, retransmit server (and retention), replay feed and
    /// payload limit; listen addresses on 0.0.0.0 are reached on loopback.
    pub fn for_appliance(
        appliance: &tally_config::ApplianceConfig,
        replay_username: &str,
        replay_password: &str,
    ) -> ConsumerConfig {
        let session = appliance.session().unwrap_or(Session::BLANK);
        let mut retransmit = appliance.retransmit.listen;
        if retransmit.ip().is_unspecified() {
            retransmit.set_ip(Ipv4Addr::LOCALHOST);
        }
        let mut config = ConsumerConfig::new(
            appliance.multicast(),
            session,
            retransmit,
            reachable(appliance.replay.listen),
            replay_username,
            replay_password,
        );
        config.retention_messages = appliance.journal.retention_messages;
        config.datagram_bytes_max = appliance.stream.payload_bytes_max.max(2048);
        config.stale_timeout_ns = 3 * appliance.stream.heartbeat_interval_ms * 1_000_000;
        config
    }
}

/// `addr`, with an unspecified IP replaced by loopback (a listen address as
/// a destination).
pub(crate) fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, v4.port()))
        }
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), v6.port())
        }
        other => other,
    }
}

/// Where the consumer takes its messages from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RecoveryMode {
    /// Live multicast, gaps filled by re-requests.
    Live,
    /// The replay feed (late join or bulk recovery), live multicast buffered
    /// meanwhile.
    Replay,
}

/// The consumer's counters. Plain integers, updated by the owning thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConsumerStats {
    /// Multicast datagrams received (before the loss filter).
    pub datagrams: u64,
    /// Multicast datagrams dropped by the configured loss filter.
    pub datagrams_dropped_by_loss_filter: u64,
    /// Heartbeats received on multicast.
    pub heartbeats: u64,
    /// Messages handed to the application.
    pub messages_delivered: u64,
    /// Missing runs of messages found.
    pub gaps_detected: u64,
    /// Re-requests sent (first tries, retries and follow-ups).
    pub re_requests_sent: u64,
    /// Re-requests that timed out and were sent again.
    pub re_request_timeouts: u64,
    /// Messages first received in a retransmit reply.
    pub recovered_by_retransmit: u64,
    /// Messages first received from the replay feed.
    pub recovered_by_replay: u64,
    /// Messages received again after they were delivered or buffered.
    pub duplicates_discarded: u64,
    /// Messages that arrived too far ahead for the reorder buffer.
    pub reorder_overflows: u64,
    /// Switches to the replay feed, by reason.
    pub replay_for_late_join: u64,
    pub replay_for_unanswered: u64,
    pub replay_for_overflow: u64,
    pub replay_for_large_gap: u64,
    pub replay_for_retention: u64,
    /// Switches back to live multicast.
    pub replay_switchbacks: u64,
    /// Replay connections opened, refused, and lost before catching up.
    pub replay_connects: u64,
    pub replay_connect_failures: u64,
    pub replay_disconnects: u64,
    /// Replay logins rejected (wrong credentials or session).
    pub replay_login_rejected: u64,
    /// Replay frames that broke the protocol, and debug packets received.
    pub replay_protocol_errors: u64,
    pub replay_debug_packets: u64,
    /// Times the stream went stale (seen by `poll`).
    pub stale_transitions: u64,
    /// Datagrams that are not MoldUDP64, or of another session.
    pub malformed_datagrams: u64,
    pub wrong_session: u64,
    /// Datagrams on the re-request socket from anyone but the server.
    pub foreign_datagrams: u64,
    /// Messages that do not decode (skipped, their number consumed).
    pub undecodable_messages: u64,
    /// Datagrams the kernel dropped before this consumer read them (its
    /// multicast socket's queue was full), sampled every
    /// [`KERNEL_DROPS_SAMPLE_NS`]. Each one is a gap to recover: nonzero
    /// with no injected loss means the consumer fell behind or `SO_RCVBUF`
    /// is too small (`net.core.rmem_max`, see `tally-tune`).
    pub kernel_drops: u64,
}

/// How often a consumer reads its socket's kernel drop count (a system call).
pub const KERNEL_DROPS_SAMPLE_NS: u64 = 100_000_000;

impl ConsumerStats {
    /// Switches to the replay feed for any reason.
    pub fn replay_recoveries(&self) -> u64 {
        self.replay_for_late_join
            + self.replay_for_unanswered
            + self.replay_for_overflow
            + self.replay_for_large_gap
            + self.replay_for_retention
    }

    /// Messages recovered by either path.
    pub fn recovered(&self) -> u64 {
        self.recovered_by_retransmit + self.recovered_by_replay
    }
}

/// A consumer's counters in a process's shared-memory counter file, for
/// `tally-stat`: register [`ConsumerCounters::NAMES`] when creating the
/// file, then [`publish`](Self::publish) from the consumer's thread now and
/// then (every poll is fine: a few relaxed stores).
#[derive(Clone, Debug)]
pub struct ConsumerCounters {
    counters: Vec<tally_runtime::counters::Counter>,
}

impl ConsumerCounters {
    /// Counter names, in the order [`publish`](Self::publish) writes them.
    /// `consumer.next_seq` and `consumer.lag` are gauges.
    pub const NAMES: &'static [&'static str] = &[
        "consumer.next_seq",
        "consumer.lag",
        "consumer.datagrams",
        "consumer.heartbeats",
        "consumer.messages_delivered",
        "consumer.gaps_detected",
        "consumer.re_requests_sent",
        "consumer.re_request_timeouts",
        "consumer.recovered_by_retransmit",
        "consumer.recovered_by_replay",
        "consumer.duplicates_discarded",
        "consumer.reorder_overflows",
        "consumer.replay_recoveries",
        "consumer.replay_switchbacks",
        "consumer.stale_transitions",
        "consumer.datagrams_dropped_by_loss_filter",
        "consumer.kernel_drops",
    ];

    /// Handles to `NAMES` at `first_index..` of `file`.
    ///
    /// # Panics
    /// When the file holds other names there (a bug in how it was made).
    pub fn from_file(file: &tally_runtime::counters::CounterFile, first_index: usize) -> Self {
        ConsumerCounters {
            counters: file.counters_at(first_index, Self::NAMES),
        }
    }

    /// Writes the consumer's position and counters.
    pub fn publish(&self, consumer: &StreamConsumer) {
        let stats = consumer.stats();
        let values = [
            consumer.next_seq(),
            consumer.lag(),
            stats.datagrams,
            stats.heartbeats,
            stats.messages_delivered,
            stats.gaps_detected,
            stats.re_requests_sent,
            stats.re_request_timeouts,
            stats.recovered_by_retransmit,
            stats.recovered_by_replay,
            stats.duplicates_discarded,
            stats.reorder_overflows,
            stats.replay_recoveries(),
            stats.replay_switchbacks,
            stats.stale_transitions,
            stats.datagrams_dropped_by_loss_filter,
            stats.kernel_drops,
        ];
        const _: () = assert!(ConsumerCounters::NAMES.len() == 17);
        for (counter, value) in self.counters.iter().zip(values) {
            counter.set(value);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Multicast,
    Retransmit,
    Replay,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplayReason {
    LateJoin,
    Unanswered,
    Overflow,
    LargeGap,
    Retention,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplayPhase {
    /// No connection: connect at `replay_retry_at_ns`.
    Idle,
    /// Login sent, waiting for Login Accepted.
    LoggingIn,
    /// Receiving Sequenced Data.
    Streaming,
}

/// One re-request in flight: the still-missing `[first, end)`.
#[derive(Clone, Copy, Debug, Default)]
struct Request {
    first: u64,
    end: u64,
    sent_at_ns: u64,
    attempts: u32,
    active: bool,
}

/// Everything but the sockets and the replay frame decoder, so socket
/// callbacks can borrow it while the socket is borrowed too.
struct Core {
    session: Session,
    session_known: bool,
    retransmit_addr: SocketAddrV4,
    /// `next_seq` is meaningful (false only before the first packet when
    /// starting live).
    synced: bool,
    /// The next number to deliver.
    next_seq: u64,
    /// The newest number known to exist (seen in any packet, or announced by
    /// a heartbeat); 0 = none.
    newest_seq: u64,
    /// Reorder buffer: slot `seq & mask` holds `seq` when `lens` is not 0;
    /// only numbers in `[next_seq, next_seq + capacity)` are held.
    slots: Box<[[u8; SLOT_BYTES]]>,
    lens: Box<[u8]>,
    mask: u64,
    buffered: usize,
    /// Highest number dropped because it did not fit the reorder buffer.
    overflow_max: u64,
    requests: Box<[Request]>,
    requests_active: usize,
    /// Every missing number below this is covered by a request in flight.
    watermark: u64,
    mode: RecoveryMode,
    /// A multicast packet (data or heartbeat) has been seen.
    live_seen: bool,
    /// One past the session's last message, once its end was announced.
    end_seq: Option<u64>,
    last_activity_ns: u64,
    stale: bool,
    loss: Option<LossFilter>,
    stats: ConsumerStats,
    stale_timeout_ns: u64,
    re_request_timeout_ns: u64,
    re_request_retries: u32,
    replay_gap_messages: u64,
    retention_messages: u64,
    replay_phase: ReplayPhase,
    /// The newest number when the replay feed took over, and whether the
    /// consumer may go back to multicast once past it (with gaps after it
    /// left to re-requests) rather than only once fully caught up.
    replay_target: u64,
    replay_early_exit: bool,
    /// The number of the next Sequenced Data packet on the replay connection.
    replay_expected_seq: u64,
    replay_retry_at_ns: u64,
    replay_backoff_ns: u64,
    replay_since_ns: u64,
    replay_last_recv_ns: u64,
    replay_last_sent_ns: u64,
    /// The replay connection must be dropped (rejected, protocol error).
    replay_broken: bool,
}

impl Core {
    fn capacity(&self) -> u64 {
        self.mask + 1
    }

    fn accept_session(&mut self, session: Session) -> bool {
        if self.session_known {
            return session == self.session;
        }
        self.session = session;
        self.session_known = true;
        true
    }

    fn note_newest(&mut self, seq: u64) {
        if seq > self.newest_seq {
            self.newest_seq = seq;
        }
    }

    /// Whether `seq` (in the reorder window) is buffered.
    #[inline]
    fn is_buffered(&self, seq: u64) -> bool {
        self.lens[(seq & self.mask) as usize] != 0
    }

    fn count_recovered(&mut self, source: Source) {
        match source {
            Source::Multicast => {}
            Source::Retransmit => self.stats.recovered_by_retransmit += 1,
            Source::Replay => self.stats.recovered_by_replay += 1,
        }
    }

    /// Takes message `seq` from any source: delivers it (and whatever it
    /// unblocks) when it is next, buffers it when it is ahead, drops it when
    /// it is a duplicate or too far ahead.
    #[inline]
    fn insert(
        &mut self,
        seq: u64,
        message: &[u8],
        source: Source,
        on_message: &mut impl FnMut(u64, Message<'_>),
    ) {
        if seq < self.next_seq {
            self.stats.duplicates_discarded += 1;
            return;
        }
        if seq == self.next_seq {
            debug_assert!(
                !self.is_buffered(seq),
                "the next message is never left buffered"
            );
            self.count_recovered(source);
            self.deliver(seq, message, on_message);
            self.drain(on_message);
            return;
        }
        if seq - self.next_seq >= self.capacity() {
            self.stats.reorder_overflows += 1;
            self.overflow_max = self.overflow_max.max(seq);
            return;
        }
        let index = (seq & self.mask) as usize;
        if self.lens[index] != 0 {
            self.stats.duplicates_discarded += 1;
            return;
        }
        if message.is_empty() || message.len() > SLOT_BYTES {
            self.lens[index] = SLOT_UNDECODABLE;
        } else {
            self.slots[index][..message.len()].copy_from_slice(message);
            self.lens[index] = message.len() as u8;
        }
        self.buffered += 1;
        self.count_recovered(source);
    }

    #[inline]
    fn deliver(&mut self, seq: u64, bytes: &[u8], on_message: &mut impl FnMut(u64, Message<'_>)) {
        assert_eq!(seq, self.next_seq, "delivery strictly in order");
        match Message::parse(bytes) {
            Ok(message) => {
                on_message(seq, message);
                self.stats.messages_delivered += 1;
            }
            Err(_) => self.stats.undecodable_messages += 1,
        }
        self.next_seq = seq + 1;
        self.note_newest(seq);
    }

    /// Delivers buffered messages from `next_seq` on while they are there.
    fn drain(&mut self, on_message: &mut impl FnMut(u64, Message<'_>)) {
        while self.buffered > 0 {
            let index = (self.next_seq & self.mask) as usize;
            let len = self.lens[index];
            if len == 0 {
                break;
            }
            self.lens[index] = 0;
            self.buffered -= 1;
            let slot = self.slots[index];
            let bytes: &[u8] = if len == SLOT_UNDECODABLE {
                &[]
            } else {
                &slot[..usize::from(len)]
            };
            self.deliver(self.next_seq, bytes, on_message);
        }
    }

    fn on_multicast(
        &mut self,
        datagram: &[u8],
        now_ns: u64,
        on_message: &mut impl FnMut(u64, Message<'_>),
    ) {
        self.stats.datagrams += 1;
        if let Some(loss) = &mut self.loss {
            if loss.drop_next() {
                self.stats.datagrams_dropped_by_loss_filter += 1;
                return;
            }
        }
        let Ok(packet) = MoldPacket::parse(datagram) else {
            self.stats.malformed_datagrams += 1;
            return;
        };
        if !self.accept_session(packet.session()) {
            self.stats.wrong_session += 1;
            return;
        }
        self.last_activity_ns = now_ns;
        self.live_seen = true;
        let sequence = packet.sequence();
        if !self.synced {
            // Live join: the stream starts here for us.
            self.next_seq = sequence.max(1);
            self.synced = true;
        }
        match packet.kind() {
            PacketKind::Heartbeat => {
                self.stats.heartbeats += 1;
                self.note_newest(sequence.saturating_sub(1));
            }
            PacketKind::EndOfSession => {
                self.end_seq = Some(sequence);
                self.note_newest(sequence.saturating_sub(1));
            }
            PacketKind::Data => {
                let last = packet.next_seq().saturating_sub(1);
                if last < self.next_seq {
                    // Everything in it was delivered already.
                    self.stats.duplicates_discarded += u64::from(packet.count());
                    return;
                }
                for (seq, message) in packet.messages() {
                    self.insert(seq, message, Source::Multicast, on_message);
                }
                self.note_newest(last);
            }
        }
    }

    fn on_retransmit(
        &mut self,
        from: SocketAddrV4,
        datagram: &[u8],
        now_ns: u64,
        on_message: &mut impl FnMut(u64, Message<'_>),
    ) {
        if from != self.retransmit_addr || !self.synced {
            self.stats.foreign_datagrams += 1;
            return;
        }
        let Ok(packet) = MoldPacket::parse(datagram) else {
            self.stats.malformed_datagrams += 1;
            return;
        };
        if !self.accept_session(packet.session()) {
            self.stats.wrong_session += 1;
            return;
        }
        if packet.kind() != PacketKind::Data {
            return;
        }
        self.last_activity_ns = now_ns;
        for (seq, message) in packet.messages() {
            self.insert(seq, message, Source::Retransmit, on_message);
        }
        self.note_newest(packet.next_seq().saturating_sub(1));
    }

    /// Handles one frame from the replay feed.
    fn on_replay_frame(
        &mut self,
        frame: &[u8],
        now_ns: u64,
        on_message: &mut impl FnMut(u64, Message<'_>),
    ) {
        let Ok(packet) = ServerPacket::parse(frame) else {
            self.stats.replay_protocol_errors += 1;
            self.replay_broken = true;
            return;
        };
        match packet {
            ServerPacket::LoginAccepted { session, next_seq } => {
                if self.replay_phase != ReplayPhase::LoggingIn || !self.accept_session(session) {
                    self.stats.replay_protocol_errors += 1;
                    self.replay_broken = true;
                    return;
                }
                self.replay_phase = ReplayPhase::Streaming;
                self.replay_expected_seq = next_seq.max(1);
                self.replay_backoff_ns = REPLAY_BACKOFF_MIN_NS;
            }
            ServerPacket::LoginRejected { reason } => {
                self.stats.replay_login_rejected += 1;
                self.replay_broken = true;
                // Credentials do not fix themselves: try again slowly.
                self.replay_backoff_ns = REPLAY_BACKOFF_MAX_NS;
                tracing::warn!(
                    reason = %char::from(reason),
                    "replay feed rejected the login"
                );
            }
            ServerPacket::Sequenced(message) => {
                if self.replay_phase != ReplayPhase::Streaming {
                    self.stats.replay_protocol_errors += 1;
                    self.replay_broken = true;
                    return;
                }
                let seq = self.replay_expected_seq;
                self.replay_expected_seq += 1;
                self.last_activity_ns = now_ns;
                self.insert(seq, message, Source::Replay, on_message);
                self.note_newest(seq);
            }
            ServerPacket::Heartbeat => self.last_activity_ns = now_ns,
            ServerPacket::EndOfSession => {
                if self.replay_phase == ReplayPhase::Streaming {
                    self.end_seq = Some(self.replay_expected_seq);
                }
            }
            ServerPacket::Debug(text) => {
                self.stats.replay_debug_packets += 1;
                tracing::warn!(
                    text = %String::from_utf8_lossy(text),
                    "replay feed debug packet"
                );
            }
        }
    }

    fn is_stale(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_activity_ns) > self.stale_timeout_ns
    }

    fn is_ended(&self) -> bool {
        self.end_seq.is_some_and(|end| self.next_seq >= end)
    }

    /// In replay mode: whether live multicast can take over now without a
    /// gap: nothing dropped for overflow is still ahead, and either
    /// everything seen anywhere is delivered, or (after an overflow, a large
    /// or an old gap, when re-requests still work) the replay has delivered
    /// past what was newest when it took over, so what is missing beyond is
    /// ordinary loss for re-requests. After unanswered re-requests, and for a
    /// late join, only full catch-up counts.
    fn caught_up(&self) -> bool {
        self.is_ended()
            || (self.live_seen
                && self.next_seq > self.overflow_max
                && (self.next_seq > self.newest_seq
                    || (self.replay_early_exit && self.next_seq > self.replay_target)))
    }

    fn enter_replay(&mut self, reason: ReplayReason, now_ns: u64) {
        match reason {
            ReplayReason::LateJoin => self.stats.replay_for_late_join += 1,
            ReplayReason::Unanswered => self.stats.replay_for_unanswered += 1,
            ReplayReason::Overflow => self.stats.replay_for_overflow += 1,
            ReplayReason::LargeGap => self.stats.replay_for_large_gap += 1,
            ReplayReason::Retention => self.stats.replay_for_retention += 1,
        }
        self.mode = RecoveryMode::Replay;
        self.replay_target = self.newest_seq;
        self.replay_early_exit = matches!(
            reason,
            ReplayReason::Overflow | ReplayReason::LargeGap | ReplayReason::Retention
        );
        self.requests.iter_mut().for_each(|r| r.active = false);
        self.requests_active = 0;
        self.watermark = 0;
        self.replay_phase = ReplayPhase::Idle;
        self.replay_retry_at_ns = now_ns;
        self.replay_backoff_ns = REPLAY_BACKOFF_MIN_NS;
    }

    fn leave_replay(&mut self) {
        self.stats.replay_switchbacks += 1;
        self.mode = RecoveryMode::Live;
        self.watermark = self.next_seq;
        self.replay_phase = ReplayPhase::Idle;
    }

    /// The replay connection was lost or refused: try again after a backoff.
    fn replay_failed(&mut self, now_ns: u64) {
        self.replay_phase = ReplayPhase::Idle;
        self.replay_broken = false;
        self.replay_retry_at_ns = now_ns + self.replay_backoff_ns;
        self.replay_backoff_ns = (self.replay_backoff_ns * 2).min(REPLAY_BACKOFF_MAX_NS);
    }

    fn send_request(
        &mut self,
        request: &mut Request,
        now_ns: u64,
        socket: &mut UdpSocketRing,
    ) -> io::Result<()> {
        let count = (request.end - request.first).min(REQUEST_COUNT_MAX) as u16;
        let datagram = ReRequest::new(self.session, request.first, count);
        request.sent_at_ns = now_ns;
        match socket.send_to(self.retransmit_addr, datagram.as_bytes()) {
            Ok(()) => {
                self.stats.re_requests_sent += 1;
                Ok(())
            }
            // Every send slot in flight: as good as lost; the timeout retries.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Live mode: advances, retries or retires re-requests, switches to the
    /// replay feed when they go unanswered, and asks for new gaps.
    fn maintain_live(&mut self, now_ns: u64, socket: &mut UdpSocketRing) -> io::Result<usize> {
        let mut work = 0;
        for index in 0..self.requests.len() {
            let mut request = self.requests[index];
            if !request.active {
                continue;
            }
            let before = request.first;
            request.first = request.first.max(self.next_seq);
            while request.first < request.end && self.is_buffered(request.first) {
                request.first += 1;
            }
            if request.first >= request.end {
                request.active = false;
                self.requests_active -= 1;
            } else if request.first != before {
                // Answered in part (a reply holds one datagram's worth): ask
                // for the rest at once.
                request.attempts = 0;
                self.send_request(&mut request, now_ns, socket)?;
                work += 1;
            } else if now_ns.saturating_sub(request.sent_at_ns) >= self.re_request_timeout_ns {
                if request.attempts >= self.re_request_retries {
                    self.enter_replay(ReplayReason::Unanswered, now_ns);
                    return Ok(work + 1);
                }
                request.attempts += 1;
                self.stats.re_request_timeouts += 1;
                self.send_request(&mut request, now_ns, socket)?;
                work += 1;
            }
            self.requests[index] = request;
        }
        if self.overflow_max >= self.next_seq {
            self.enter_replay(ReplayReason::Overflow, now_ns);
            return Ok(work + 1);
        }
        if self.newest_seq < self.next_seq {
            return Ok(work);
        }
        // New gaps: scan from the watermark to the newest number seen.
        let limit = (self.newest_seq + 1).min(self.next_seq + self.capacity());
        let mut seq = self.watermark.max(self.next_seq);
        while seq < limit {
            if self.is_buffered(seq) {
                seq += 1;
                continue;
            }
            if self.requests_active == self.requests.len() {
                break;
            }
            let mut end = seq + 1;
            while end < limit && !self.is_buffered(end) && end - seq < REQUEST_COUNT_MAX {
                end += 1;
            }
            self.stats.gaps_detected += 1;
            if end - seq >= self.replay_gap_messages {
                self.enter_replay(ReplayReason::LargeGap, now_ns);
                return Ok(work + 1);
            }
            if seq < (self.newest_seq + 1).saturating_sub(self.retention_messages) {
                self.enter_replay(ReplayReason::Retention, now_ns);
                return Ok(work + 1);
            }
            let slot = self
                .requests
                .iter()
                .position(|r| !r.active)
                .expect("a free request slot (checked above)");
            let mut request = Request {
                first: seq,
                end,
                sent_at_ns: now_ns,
                attempts: 0,
                active: true,
            };
            self.send_request(&mut request, now_ns, socket)?;
            self.requests[slot] = request;
            self.requests_active += 1;
            work += 1;
            seq = end;
        }
        self.watermark = seq;
        Ok(work)
    }

    fn has_gap(&self) -> bool {
        self.synced && self.newest_seq >= self.next_seq
    }
}

/// Feeds bytes from the replay connection through the frame decoder into the
/// core. A decoder error marks the connection broken.
fn feed_replay(
    decoder: &mut FrameDecoder,
    core: &mut Core,
    bytes: &[u8],
    now_ns: u64,
    on_message: &mut impl FnMut(u64, Message<'_>),
) {
    core.replay_last_recv_ns = now_ns;
    let mut rest = bytes;
    while !core.replay_broken {
        let taken = decoder.extend(rest);
        rest = &rest[taken..];
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => core.on_replay_frame(frame, now_ns, on_message),
                Ok(None) => break,
                Err(_) => {
                    core.stats.replay_protocol_errors += 1;
                    core.replay_broken = true;
                    break;
                }
            }
            if core.replay_broken {
                break;
            }
        }
        if rest.is_empty() {
            break;
        }
        if taken == 0 && decoder.room() == 0 {
            // Cannot happen: draining every frame leaves at most one partial
            // frame, smaller than the buffer.
            core.replay_broken = true;
        }
    }
}

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

        let multicast = MulticastReceiver::new(
            &config.multicast,
            config.receive_buffers,
            config.datagram_bytes_max,
        )?;
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
        if now_ns >= self.next_drops_sample_ns {
            self.next_drops_sample_ns = now_ns + KERNEL_DROPS_SAMPLE_NS;
            if let Some(drops) = self.multicast.kernel_drops() {
                self.core.stats.kernel_drops = drops;
            }
        }
        Ok(work)
    }

    /// Polls until at least one message was delivered or `timeout` passed;
    /// returns the work done (0 = nothing within `timeout`). Blocks in the
    /// kernel while idle.
    pub fn wait(
        &mut self,
        timeout: Duration,
        mut on_message: impl FnMut(u64, Message<'_>),
    ) -> io::Result<usize> {
        let deadline = Instant::now() + timeout;
        let delivered_before = self.core.stats.messages_delivered;
        loop {
            let work = self.poll(monotonic_ns(), &mut on_message)?;
            if self.core.stats.messages_delivered != delivered_before {
                return Ok(work.max(1));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            let mut slice = deadline - now;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn new_core(capacity: usize) -> Core {
        Core {
            session: Session::from_str("TEST").unwrap(),
            session_known: true,
            retransmit_addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
            synced: true,
            next_seq: 1,
            newest_seq: 0,
            slots: vec![[0u8; SLOT_BYTES]; capacity].into_boxed_slice(),
            lens: vec![0u8; capacity].into_boxed_slice(),
            mask: capacity as u64 - 1,
            buffered: 0,
            overflow_max: 0,
            requests: vec![Request::default(); 4].into_boxed_slice(),
            requests_active: 0,
            watermark: 0,
            mode: RecoveryMode::Live,
            live_seen: true,
            end_seq: None,
            last_activity_ns: 0,
            stale: false,
            loss: None,
            stats: ConsumerStats::default(),
            stale_timeout_ns: 1_000,
            re_request_timeout_ns: 1_000,
            re_request_retries: 1,
            replay_gap_messages: 100,
            retention_messages: u64::MAX,
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
        }
    }

    fn system(code: u8, seq: u64) -> Vec<u8> {
        tally_wire::SystemEvent::new(code)
            .with_client_seq(seq as u32)
            .as_bytes()
            .to_vec()
    }

    fn insert_all(core: &mut Core, seqs: &[u64], delivered: &mut Vec<u64>) {
        for &seq in seqs {
            let message = system(b'O', seq);
            core.insert(seq, &message, Source::Multicast, &mut |seq, m| {
                assert_eq!(u64::from(m.header().client_seq.get()), seq);
                delivered.push(seq)
            });
        }
    }

    #[test]
    fn out_of_order_messages_are_delivered_in_order_once() {
        let mut core = new_core(8);
        let mut delivered = Vec::new();
        insert_all(&mut core, &[3, 2, 5, 3, 1, 4, 4, 2], &mut delivered);
        assert_eq!(delivered, [1, 2, 3, 4, 5]);
        assert_eq!(core.stats.duplicates_discarded, 3);
        assert_eq!(core.buffered, 0);
        assert_eq!(core.next_seq, 6);
    }

    #[test]
    fn a_message_past_the_reorder_window_is_an_overflow() {
        let mut core = new_core(4);
        let mut delivered = Vec::new();
        insert_all(&mut core, &[2, 3, 4, 5, 6], &mut delivered);
        assert!(delivered.is_empty());
        assert_eq!(
            core.stats.reorder_overflows, 2,
            "5 and 6 do not fit behind 1"
        );
        assert_eq!(core.overflow_max, 6);
        insert_all(&mut core, &[1], &mut delivered);
        assert_eq!(delivered, [1, 2, 3, 4]);
        assert!(!core.caught_up(), "6 was dropped and is still ahead");
        insert_all(&mut core, &[5, 6], &mut delivered);
        assert_eq!(delivered, [1, 2, 3, 4, 5, 6]);
        core.note_newest(6);
        assert!(core.caught_up());
    }

    #[test]
    fn an_undecodable_message_still_takes_its_number() {
        let mut core = new_core(8);
        let mut delivered = Vec::new();
        core.insert(2, &[b'?'; 70], Source::Multicast, &mut |s, _| {
            delivered.push(s)
        });
        insert_all(&mut core, &[1, 3], &mut delivered);
        assert_eq!(delivered, [1, 3]);
        assert_eq!(core.stats.undecodable_messages, 1);
        assert_eq!(core.next_seq, 4);
    }

    #[test]
    fn recovered_messages_are_counted_by_source() {
        let mut core = new_core(8);
        let mut n = 0;
        let message = system(b'O', 0);
        core.insert(2, &message, Source::Retransmit, &mut |_, _| n += 1);
        core.insert(1, &message, Source::Replay, &mut |_, _| n += 1);
        core.insert(3, &message, Source::Multicast, &mut |_, _| n += 1);
        assert_eq!(n, 3);
        assert_eq!(core.stats.recovered_by_retransmit, 1);
        assert_eq!(core.stats.recovered_by_replay, 1);
    }

    /// A re-request socket and a stand-in retransmit server reading it.
    fn request_sockets(core: &mut Core) -> (UdpSocketRing, std::net::UdpSocket) {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let std::net::SocketAddr::V4(addr) = server.local_addr().unwrap() else {
            unreachable!()
        };
        core.retransmit_addr = addr;
        let socket =
            UdpSocketRing::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 4, 2048).unwrap();
        (socket, server)
    }

    /// The next request the stand-in server received: (first seq, count).
    fn next_request(server: &std::net::UdpSocket) -> (u64, u16) {
        let mut buf = [0u8; 64];
        loop {
            match server.recv(&mut buf) {
                Ok(n) => {
                    let request = ReRequest::parse(&buf[..n]).unwrap();
                    assert_eq!(request.session().as_str(), "TEST");
                    return (request.sequence.get(), request.count.get());
                }
                // io_uring task work of this thread's ring can interrupt it.
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => panic!("no request: {error}"),
            }
        }
    }

    fn buffer(core: &mut Core, seqs: impl IntoIterator<Item = u64>) {
        for seq in seqs {
            let message = system(b'O', seq);
            core.insert(seq, &message, Source::Multicast, &mut |_, _| {});
            core.note_newest(seq);
        }
    }

    #[test]
    fn a_gap_is_re_requested_retried_on_timeout_then_left_to_the_replay_feed() {
        let mut core = new_core(64);
        let (mut socket, server) = request_sockets(&mut core);
        buffer(&mut core, [1, 2, 5, 6]);
        assert_eq!(core.next_seq, 3);
        core.maintain_live(0, &mut socket).unwrap();
        assert_eq!(next_request(&server), (3, 2));
        assert_eq!((core.stats.gaps_detected, core.requests_active), (1, 1));
        core.maintain_live(999, &mut socket).unwrap();
        assert_eq!(core.stats.re_requests_sent, 1, "not before the timeout");
        core.maintain_live(1_000, &mut socket).unwrap();
        assert_eq!(next_request(&server), (3, 2));
        assert_eq!(core.stats.re_request_timeouts, 1);
        core.maintain_live(2_000, &mut socket).unwrap();
        assert_eq!(core.mode, RecoveryMode::Replay, "retries spent");
        assert_eq!(core.stats.replay_for_unanswered, 1);
        assert_eq!(core.requests_active, 0);
        assert!(
            !core.replay_early_exit,
            "full catch-up after unanswered requests"
        );
    }

    #[test]
    fn a_partial_answer_is_followed_at_once_by_a_request_for_the_rest() {
        let mut core = new_core(64);
        let (mut socket, server) = request_sockets(&mut core);
        buffer(&mut core, [1, 11]);
        core.maintain_live(0, &mut socket).unwrap();
        assert_eq!(next_request(&server), (2, 9));
        let mut delivered = Vec::new();
        for seq in 2..=4 {
            let message = system(b'O', seq);
            core.insert(seq, &message, Source::Retransmit, &mut |s, _| {
                delivered.push(s)
            });
        }
        assert_eq!(delivered, [2, 3, 4]);
        core.maintain_live(10, &mut socket).unwrap();
        assert_eq!(next_request(&server), (5, 6));
        assert_eq!(core.stats.gaps_detected, 1, "the same gap");
        assert_eq!(core.stats.re_request_timeouts, 0);
        for seq in 5..=10 {
            let message = system(b'O', seq);
            core.insert(seq, &message, Source::Retransmit, &mut |s, _| {
                delivered.push(s)
            });
        }
        core.maintain_live(20, &mut socket).unwrap();
        assert_eq!(core.requests_active, 0);
        assert_eq!(core.next_seq, 12);
        assert_eq!(core.stats.recovered_by_retransmit, 9);
    }

    #[test]
    fn requests_in_flight_are_bounded() {
        let mut core = new_core(64);
        let (mut socket, server) = request_sockets(&mut core);
        // Holes at 1, 3, 5, 7, 9, 11; four request slots.
        buffer(&mut core, [2, 4, 6, 8, 10, 12]);
        core.maintain_live(0, &mut socket).unwrap();
        let first: Vec<_> = (0..4).map(|_| next_request(&server)).collect();
        assert_eq!(first, [(1, 1), (3, 1), (5, 1), (7, 1)]);
        assert_eq!(core.requests_active, 4);
        core.maintain_live(1, &mut socket).unwrap();
        assert_eq!(
            core.stats.re_requests_sent, 4,
            "no fifth while four are out"
        );
        let message = system(b'O', 1);
        core.insert(1, &message, Source::Retransmit, &mut |_, _| {});
        core.maintain_live(2, &mut socket).unwrap();
        assert_eq!(next_request(&server), (9, 1), "a slot freed: the next gap");
        assert_eq!(core.requests_active, 4);
    }

    #[test]
    fn a_large_or_old_gap_goes_straight_to_the_replay_feed() {
        let mut core = new_core(1024);
        let (mut socket, _server) = request_sockets(&mut core);
        buffer(&mut core, [200]);
        core.maintain_live(0, &mut socket).unwrap();
        assert_eq!(core.mode, RecoveryMode::Replay);
        assert_eq!(core.stats.replay_for_large_gap, 1);
        assert_eq!(core.stats.re_requests_sent, 0);
        assert!(core.replay_early_exit);
        assert_eq!(core.replay_target, 200);
        // Once the replay delivered past what was newest, live takes over
        // even with later loss open (re-requests handle that).
        buffer(&mut core, 1..=200);
        buffer(&mut core, [205]);
        assert!(core.caught_up());

        let mut old = new_core(1024);
        let (mut socket, _server) = request_sockets(&mut old);
        old.retention_messages = 10;
        buffer(&mut old, 2..=50);
        old.maintain_live(0, &mut socket).unwrap();
        assert_eq!(old.stats.replay_for_retention, 1);
        assert_eq!(old.stats.re_requests_sent, 0);
    }

    #[test]
    fn a_stream_ahead_of_the_reorder_buffer_goes_to_the_replay_feed() {
        let mut core = new_core(8);
        let (mut socket, _server) = request_sockets(&mut core);
        buffer(&mut core, [3, 20]);
        core.maintain_live(0, &mut socket).unwrap();
        assert_eq!(core.stats.replay_for_overflow, 1);
        assert!(!core.caught_up(), "20 was dropped");
        buffer(&mut core, 1..=20);
        assert!(core.caught_up());
    }

    proptest::proptest! {
        /// Whatever order, repetition and overflow the stream and the
        /// recovery paths produce, once every number has arrived at least
        /// once each is delivered exactly once, in order.
        #[test]
        fn any_arrival_order_delivers_each_message_once_in_order(
            arrivals in proptest::collection::vec((1u64..=200, 0u8..3), 0..600),
            capacity_log2 in 0u32..9,
        ) {
            let mut core = new_core(1 << capacity_log2);
            let mut delivered = Vec::new();
            let sources = [Source::Multicast, Source::Retransmit, Source::Replay];
            for (seq, source) in arrivals {
                let message = system(b'O', seq);
                core.insert(seq, &message, sources[usize::from(source)], &mut |s, m| {
                    assert_eq!(u64::from(m.header().client_seq.get()), s);
                    delivered.push(s)
                });
            }
            // The replay feed's in-order pass supplies whatever is missing.
            for seq in 1..=200 {
                let message = system(b'O', seq);
                core.insert(seq, &message, Source::Replay, &mut |s, _| delivered.push(s));
            }
            proptest::prop_assert!(delivered.iter().copied().eq(1..=200));
            proptest::prop_assert_eq!(core.buffered, 0);
            proptest::prop_assert_eq!(core.stats.messages_delivered, 200);
        }
    }

    #[test]
    fn counters_are_published_under_their_names() {
        let mut names = vec!["other"];
        names.extend_from_slice(ConsumerCounters::NAMES);
        let file = tally_runtime::counters::CounterFile::in_memory(&names);
        let counters = ConsumerCounters::from_file(&file, 1);
        let multicast = MulticastConfig {
            group: Ipv4Addr::new(239, 255, 102, 250),
            port: 21_999,
            interface: Ipv4Addr::LOCALHOST,
            ttl: 0,
            loopback: true,
        };
        let config = ConsumerConfig::new(
            multicast,
            Session::from_str("TEST").unwrap(),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
            "127.0.0.1:1".parse().unwrap(),
            "read1",
            "readpass",
        );
        let mut consumer = StreamConsumer::new(&config).unwrap();
        consumer.core.stats.gaps_detected = 7;
        counters.publish(&consumer);
        assert_eq!(file.counter_by_name("consumer.next_seq").unwrap().get(), 1);
        assert_eq!(
            file.counter_by_name("consumer.gaps_detected")
                .unwrap()
                .get(),
            7
        );
        assert_eq!(file.counter_by_name("other").unwrap().get(), 0);
    }

    #[test]
    fn staleness_follows_the_last_activity() {
        let mut core = new_core(8);
        core.last_activity_ns = 10_000;
        assert!(!core.is_stale(10_500));
        assert!(!core.is_stale(11_000));
        assert!(core.is_stale(11_001));
    }
}
