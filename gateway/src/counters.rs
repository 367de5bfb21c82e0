//! The gateway's counters: what it would otherwise log, counted instead, in
//! the process's shared counter file (`tally_runtime::counters`).
//!
//! The gateway loop is the single writer of every one of them.

use tally_runtime::counters::CounterFile;

tally_runtime::counter_set! {
    /// Handles to the gateway's counters, one field per name in
    /// [`GatewayCounters::NAMES`] (same order).
    pub struct GatewayCounters, prefix "";
    /// Gauge: sessions logged in now.
    sessions_active,
    /// Logins answered with Login Accepted.
    logins_accepted,
    /// Logins answered with Login Rejected (`A` or `S`).
    logins_rejected,
    /// Connections closed for a protocol error (bad frame, unknown packet
    /// type, data before login, second login, client_seq skipping ahead).
    protocol_errors,
    /// `U` messages dropped because their client_seq was already forwarded
    /// (a resend), plus duplicates the sequencer reported.
    duplicates_dropped,
    /// Messages turned into `j` gateway rejects (any reason, `R` included).
    gateway_rejects,
    /// Messages rejected `j` with reason `R` (over the session's rate limit).
    rate_limited,
    /// Times a session stopped reading because the ring to the sequencer was
    /// full (one per stall, not per retry).
    ring_full,
    /// `U` messages received from logged-in sessions.
    messages_in,
    /// `k`/`j` acks sent (live and replayed).
    acks_out,
    /// Connections closed because their send buffer was full.
    slow_clients_closed,
    /// Server heartbeats sent.
    heartbeats_sent,
    /// Connections dropped after the peer timeout without receiving anything.
    sessions_timed_out,
    /// Logins rejected `A` because the password-checking queue was full.
    auth_busy,
    /// Connections refused for want of a slot: closed at accept because
    /// every connection slot was taken, or a login rejected `S` because
    /// `max_sessions` were logged in.
    sessions_refused,
    /// Connections closed because they sent more than their receive backlog
    /// while their frames waited (sequencer ring full, or login pending).
    receive_overflows,
    /// Gauge: connections in the login pool now (accepted, not logged in).
    login_pool_active,
    /// Connections refused at accept because the login pool was full (and
    /// none in it was old enough to evict).
    login_pool_refused,
    /// Connections closed to make room in a full login pool: the oldest
    /// that had not sent a whole login request.
    login_pool_evictions,
    /// Connections refused at accept because their source address already
    /// held `max_login_connections_per_source` in the login pool.
    login_source_refused,
    /// Connections closed at accept because their source address was over
    /// its connection rate (a reconnect storm).
    connects_throttled,
    /// Connections closed because they had not logged in within
    /// `login_timeout_ns`.
    login_timeouts,
    /// Logins rejected `A` without a password check: the source was backing
    /// off after failures, the username had failed too often, or the source
    /// had `auth_in_flight_per_source` checks in flight already.
    logins_throttled,
    /// Password checks handed to the auth thread (each one argon2
    /// verification): the CPU spent on hashing, in units of one hash.
    password_checks,
    /// Logins whose password check failed (wrong password, unknown user).
    login_failures,
    /// `U` packets rejected with a debug packet and no client_seq consumed:
    /// shorter than the message header, or client_seq 0.
    unnumbered_rejects,
}

impl GatewayCounters {
    /// Counters in a private in-memory file, for tests and tools. Keeps the
    /// mapping alive through the handles.
    pub fn in_memory() -> Self {
        Self::from_file(&CounterFile::in_memory(Self::NAMES), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_follow_the_names_in_order_at_any_offset() {
        let mut names = vec!["other_a", "other_b"];
        names.extend_from_slice(GatewayCounters::NAMES);
        let file = CounterFile::in_memory(&names);
        let counters = GatewayCounters::from_file(&file, 2);
        counters.protocol_errors.add(3);
        counters.sessions_refused.increment();
        assert_eq!(file.counter_by_name("protocol_errors").unwrap().get(), 3);
        assert_eq!(file.counter_by_name("sessions_refused").unwrap().get(), 1);
        assert_eq!(file.counter(0).get(), 0);
    }

    #[test]
    #[should_panic(expected = "is not the counter")]
    fn a_misplaced_block_is_a_bug() {
        let file = CounterFile::in_memory(GatewayCounters::NAMES);
        GatewayCounters::from_file(&file, 1);
    }
}
