//! What a consumer counts: its statistics and their counter-file form.

use serde::Serialize;

use super::StreamConsumer;

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

tally_runtime::counter_set! {
    /// A consumer's counters in a process's shared-memory counter file, for
    /// `tally-stat`: register [`ConsumerCounters::NAMES`] when creating the
    /// file, then [`publish`](Self::publish) from the consumer's thread now and
    /// then (every poll is fine: a few relaxed stores).
    pub struct ConsumerCounters, prefix "consumer.";
    /// Gauge: the next sequence number to deliver.
    next_seq,
    /// Gauge: messages seen on the stream but not delivered yet.
    lag,
    datagrams,
    heartbeats,
    messages_delivered,
    gaps_detected,
    re_requests_sent,
    re_request_timeouts,
    recovered_by_retransmit,
    recovered_by_replay,
    duplicates_discarded,
    reorder_overflows,
    replay_recoveries,
    replay_switchbacks,
    stale_transitions,
    datagrams_dropped_by_loss_filter,
    kernel_drops,
}

impl ConsumerCounters {
    /// Writes the consumer's position and counters.
    pub fn publish(&self, consumer: &StreamConsumer) {
        let stats = consumer.stats();
        self.next_seq.set(consumer.next_seq());
        self.lag.set(consumer.lag());
        self.datagrams.set(stats.datagrams);
        self.heartbeats.set(stats.heartbeats);
        self.messages_delivered.set(stats.messages_delivered);
        self.gaps_detected.set(stats.gaps_detected);
        self.re_requests_sent.set(stats.re_requests_sent);
        self.re_request_timeouts.set(stats.re_request_timeouts);
        self.recovered_by_retransmit
            .set(stats.recovered_by_retransmit);
        self.recovered_by_replay.set(stats.recovered_by_replay);
        self.duplicates_discarded.set(stats.duplicates_discarded);
        self.reorder_overflows.set(stats.reorder_overflows);
        self.replay_recoveries.set(stats.replay_recoveries());
        self.replay_switchbacks.set(stats.replay_switchbacks);
        self.stale_transitions.set(stats.stale_transitions);
        self.datagrams_dropped_by_loss_filter
            .set(stats.datagrams_dropped_by_loss_filter);
        self.kernel_drops.set(stats.kernel_drops);
    }
}
