//! How a consumer is configured: the stream, the retransmit server, the replay
//! feed, buffers, and the recovery mode.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use serde::Serialize;
use tally_runtime::idle::IdleStrategy;
use tally_runtime::net::MulticastConfig;
use tally_runtime::wake::Waker;
use tally_wire::mold::Session;

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
    /// How [`StreamConsumer::wait`](super::StreamConsumer::wait) waits when nothing arrived: the default
    /// back-off keeps polling (spinning, then yielding) for 200 µs after the
    /// last work before it blocks in the kernel, so the next message of a
    /// flowing stream is picked up without waking a blocked thread; an
    /// idle stream blocks after a few spins and yields.
    pub idle: IdleStrategy,
    /// A waker that ends [`StreamConsumer::wait`](super::StreamConsumer::wait)
    /// early: a loop that also serves work handed over by other threads
    /// (the store node's HTTP and till threads) has them wake it, instead
    /// of finding the work only when its park times out. Watched in the
    /// stream's receive ring; `None` (the default) watches nothing.
    pub waker: Option<Waker>,
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
            idle: IdleStrategy::DEFAULT_BACK_OFF,
            waker: None,
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
