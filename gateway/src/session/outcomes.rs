//! Core: outcomes back from the sequencer, and timers.

use tally_wire::soup;

use super::state::ConnectionState;
use super::{Core, SlotId, SlotState};
use crate::link::{Outcome, OutcomeKind};
use crate::{AckRecord, GatewayIo};

impl Core {
    // ---- outcomes --------------------------------------------------------

    pub(super) fn history_at(&self, client_index: usize, client_seq: u32) -> AckRecord {
        let capacity = self.history_capacity;
        self.history[client_index * capacity + client_seq as usize % capacity]
    }

    /// Adds the ack of `client_seq` (above the client's last sequenced) to
    /// its history and makes it the last sequenced.
    pub(super) fn record_ack(&mut self, client_index: usize, client_seq: u32, record: AckRecord) {
        let capacity = self.history_capacity;
        let client = &mut self.clients[client_index];
        debug_assert!(client_seq > client.last_sequenced);
        if client.history_first == 0 || client_seq != client.last_sequenced + 1 {
            // First ack, or a gap: the history restarts here.
            client.history_first = client_seq;
        } else if (client_seq - client.history_first) as usize >= capacity {
            client.history_first += 1;
        }
        client.last_sequenced = client_seq;
        self.history[client_index * capacity + client_seq as usize % capacity] = record;
    }

    pub(super) fn on_outcome(&mut self, io: &mut impl GatewayIo, outcome: Outcome, now_ns: u64) {
        let Some(client_index) = self.client_index(outcome.origin) else {
            debug_assert!(false, "outcome for unknown client {}", outcome.origin);
            return;
        };
        let client = &mut self.clients[client_index];
        debug_assert!(client.in_flight > 0, "outcome with nothing in flight");
        client.in_flight = client.in_flight.saturating_sub(1);
        let live = client.live;
        let logged_in = live.filter(|&slot| self.state(slot) == Some(ConnectionState::LoggedIn));
        let record = match outcome.kind {
            OutcomeKind::Accepted => Some(AckRecord {
                stream_seq: outcome.stream_seq,
                timestamp_ns: outcome.timestamp_ns,
                reject_reason: 0,
            }),
            OutcomeKind::Rejected { reason } => Some(AckRecord {
                stream_seq: outcome.stream_seq,
                timestamp_ns: outcome.timestamp_ns,
                reject_reason: reason,
            }),
            OutcomeKind::Duplicate => {
                self.counters.duplicates_dropped.increment();
                None
            }
            OutcomeKind::SkippedAhead => {
                if let Some(slot) = live {
                    self.protocol_error(
                        io,
                        slot,
                        now_ns,
                        format_args!(
                            "client_seq {} is not the next the sequencer expects",
                            outcome.client_seq
                        ),
                    );
                } else {
                    self.counters.protocol_errors.increment();
                }
                None
            }
        };
        if let Some(record) = record {
            if outcome.client_seq > self.clients[client_index].last_sequenced {
                self.record_ack(client_index, outcome.client_seq, record);
                if let Some(slot) = logged_in {
                    self.send_ack(io, slot, outcome.client_seq, record, now_ns);
                }
            } else {
                debug_assert!(
                    false,
                    "outcome for client {} client_seq {} at or below the last sequenced",
                    outcome.origin, outcome.client_seq
                );
            }
        }
        let client = &self.clients[client_index];
        if client.in_flight == 0 {
            if let Some(slot) = client.live {
                if self.state(slot) == Some(ConnectionState::AwaitingAcks) {
                    self.complete_login(io, slot, client_index, now_ns);
                }
            }
        }
    }

    // ---- timers ----------------------------------------------------------

    pub(super) fn run_timers(&mut self, io: &mut impl GatewayIo, now_ns: u64) -> usize {
        let mut work = 0;
        for index in 0..self.connections.len() {
            let connection = &self.connections[index];
            let SlotState::Open(state) = connection.state else {
                continue;
            };
            if state == ConnectionState::Closing {
                continue;
            }
            let slot = SlotId(index as u32);
            if connection.in_login_pool
                && now_ns.saturating_sub(connection.accepted_ns) >= self.login_timeout_ns
            {
                work += 1;
                self.counters.login_timeouts.increment();
                let login_timeout_ms = self.login_timeout_ns / 1_000_000;
                self.send_debug(
                    io,
                    slot,
                    now_ns,
                    format_args!("not logged in within {login_timeout_ms} ms: closing"),
                );
                self.close(io, slot);
                continue;
            }
            let silent_ns = now_ns.saturating_sub(connection.last_received_ns);
            if silent_ns >= connection.peer_timeout_ns {
                work += 1;
                self.counters.sessions_timed_out.increment();
                self.send_debug(
                    io,
                    slot,
                    now_ns,
                    format_args!("nothing received for {} ms: closing", silent_ns / 1_000_000),
                );
                self.close(io, slot);
                continue;
            }
            if state == ConnectionState::LoggedIn
                && now_ns.saturating_sub(connection.last_sent_ns) >= self.heartbeat_interval_ns
            {
                work += 1;
                let mut frame = [0u8; 8];
                let len = soup::write_server_heartbeat(&mut frame).expect("fits");
                if self.send(io, slot, &frame[..len], now_ns) {
                    self.counters.heartbeats_sent.increment();
                }
            }
        }
        work
    }
}
