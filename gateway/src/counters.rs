//! The gateway's counters: what it would otherwise log, counted instead, in
//! the process's shared counter file (`tally_runtime::counters`).
//!
//! The gateway loop is the single writer of every one of them.

use tally_runtime::counters::{Counter, CounterFile};

macro_rules! gateway_counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Handles to the gateway's counters, one field per name in
        /// [`GatewayCounters::NAMES`] (same order).
        #[derive(Clone, Debug)]
        pub struct GatewayCounters {
            $( $(#[$doc])* pub $name: Counter, )*
        }

        impl GatewayCounters {
            /// The counter names, in field order: register them in the
            /// counter file in this order.
            pub const NAMES: &'static [&'static str] = &[$( stringify!($name) ),*];

            /// Handles to the counters at `first_index .. first_index +
            /// NAMES.len()` of `file`, which must have been created with
            /// [`Self::NAMES`] at that position.
            ///
            /// # Panics
            ///
            /// When the file has fewer counters or other names there (a bug
            /// in how the file was made).
            pub fn from_file(file: &CounterFile, first_index: usize) -> Self {
                let names: Vec<&str> = file.names().collect();
                let mut index = first_index;
                $(
                    assert_eq!(
                        names.get(index).copied(),
                        Some(stringify!($name)),
                        "counter file position {index} is not the gateway counter {}",
                        stringify!($name),
                    );
                    let $name = file.counter(index);
                    index += 1;
                )*
                let _ = index;
                GatewayCounters { $( $name, )* }
            }
        }
    };
}

gateway_counters! {
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
    /// Connections closed at accept because `max_sessions` were open.
    sessions_refused,
    /// Connections closed because they sent more than their receive backlog
    /// while their frames waited (sequencer ring full, or login pending).
    receive_overflows,
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
    #[should_panic(expected = "is not the gateway counter")]
    fn a_misplaced_block_is_a_bug() {
        let file = CounterFile::in_memory(GatewayCounters::NAMES);
        GatewayCounters::from_file(&file, 1);
    }
}
