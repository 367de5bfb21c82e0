//! Core: frames in: login, commands, the unnumbered and the refused.

use std::fmt;
use std::net::IpAddr;

use tally_wire::soup::{self, login_reject};
use tally_wire::{GatewayReject, Header};

use super::state::ConnectionState;
use super::validate::validate;
use super::{Core, SlotId, SlotState, OUT_FRAME_BYTES_MAX, RATE_LIMITED, UNNUMBERED_REJECT_PREFIX};
use crate::auth::{AuthRequest, AuthResult};
use crate::link::Inbound;
use crate::soup_server::{classify, HeartbeatPolicy, Login, Stage, Step};
use crate::throttle::Throttled;
use crate::GatewayIo;

impl Core {
    // ---- frames ----------------------------------------------------------

    pub(super) fn on_frame(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        state: ConnectionState,
        frame: &[u8],
        now_ns: u64,
    ) {
        let stage = match state {
            ConnectionState::AwaitingLogin => Stage::AwaitingLogin,
            ConnectionState::LoggedIn => Stage::LoggedIn,
            state => unreachable!("drain hands no frames to a {state:?} connection"),
        };
        match classify(stage, frame) {
            Step::Login(login) => self.start_login(io, slot, login, now_ns),
            Step::Data(message) => self.on_message(io, slot, message, now_ns),
            Step::Heartbeat => {}
            Step::Logout => self.close(io, slot),
            Step::Error(error) => self.protocol_error(io, slot, now_ns, format_args!("{error}")),
        }
    }

    pub(super) fn start_login(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        login: Login<'_>,
        now_ns: u64,
    ) {
        let client = self.username_index(login.username);
        let peer = self.connections[slot.index()].peer;
        // Throttles first: a refused attempt costs no password check.
        if self.login_throttled(io, slot, peer, client, now_ns) {
            return;
        }
        let policy = HeartbeatPolicy {
            peer_timeout_ns: self.peer_timeout_ns,
            heartbeat_interval_ns: self.heartbeat_interval_ns,
            timeout_min_ns: self.heartbeat_timeout_min_ns,
            timeout_max_ns: self.heartbeat_timeout_max_ns,
        };
        // The gateway keeps one heartbeat interval for every session (below
        // every allowed timeout's third, see the configuration's checks).
        let peer_timeout_ns = policy.negotiate(login.heartbeat_timeout_ms).peer_timeout_ns;
        let connection = &mut self.connections[slot.index()];
        connection.client = client;
        connection.requested_session = login.session;
        connection.requested_seq = login.requested_seq;
        connection.peer_timeout_ns = peer_timeout_ns;
        let request = AuthRequest {
            slot: slot.0,
            ticket: connection.ticket,
            client_index: client,
            password: *login.password,
        };
        // Every login, known username or not, goes through the same check:
        // the answer's timing does not tell which usernames exist.
        match io.authenticate(request) {
            Ok(()) => {
                connection.state = SlotState::Open(ConnectionState::Authenticating);
                self.counters.password_checks.increment();
            }
            Err(_) => {
                self.counters.auth_busy.increment();
                self.reject_login(io, slot, login_reject::NOT_AUTHORIZED, now_ns);
            }
        }
    }

    /// Refuses the login (and says why) when its source or username is
    /// backing off, or too many logins from its source are being checked.
    fn login_throttled(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        peer: Option<IpAddr>,
        client: Option<u16>,
        now_ns: u64,
    ) -> bool {
        if let Err(throttled) = self.throttle.login_allowed(peer, client, now_ns) {
            self.counters.logins_throttled.increment();
            let (what, retry_in_ns) = match throttled {
                Throttled::SourceBackoff { retry_in_ns } => {
                    ("too many failed logins from your address", retry_in_ns)
                }
                Throttled::UsernameFailures { retry_in_ns } => {
                    ("too many failed logins for this username", retry_in_ns)
                }
            };
            self.reject_login_saying(
                io,
                slot,
                login_reject::NOT_AUTHORIZED,
                now_ns,
                format_args!(
                    "login throttled: {what}; retry in {} ms",
                    retry_in_ns.div_ceil(1_000_000)
                ),
            );
            return true;
        }
        if let Some(source) = peer {
            let checking = self
                .connections
                .iter()
                .filter(|c| {
                    c.peer == Some(source)
                        && c.state == SlotState::Open(ConnectionState::Authenticating)
                })
                .take(self.auth_in_flight_per_source)
                .count();
            if checking >= self.auth_in_flight_per_source {
                self.counters.logins_throttled.increment();
                self.reject_login_saying(
                    io,
                    slot,
                    login_reject::NOT_AUTHORIZED,
                    now_ns,
                    format_args!(
                        "login throttled: {checking} logins from your address are being checked"
                    ),
                );
                return true;
            }
        }
        false
    }

    pub(super) fn on_auth_result(
        &mut self,
        io: &mut impl GatewayIo,
        result: AuthResult,
        now_ns: u64,
    ) {
        let Some(connection) = self.connections.get(result.slot as usize) else {
            debug_assert!(false, "auth result for slot {} out of range", result.slot);
            return;
        };
        if connection.state != SlotState::Open(ConnectionState::Authenticating)
            || connection.ticket != result.ticket
        {
            // The connection closed (and the slot may serve another) meanwhile.
            return;
        }
        let slot = SlotId(result.slot);
        let requested_session = connection.requested_session;
        let peer = connection.peer;
        let client_index = match connection.client {
            Some(index) if result.verified => usize::from(index),
            client => {
                self.counters.login_failures.increment();
                self.throttle.on_login_failed(peer, client, now_ns);
                return self.reject_login(io, slot, login_reject::NOT_AUTHORIZED, now_ns);
            }
        };
        if !self.clients[client_index].role.may_use_gateway() {
            return self.reject_login(io, slot, login_reject::NOT_AUTHORIZED, now_ns);
        }
        if !requested_session.is_blank() && requested_session != self.session {
            return self.reject_login(io, slot, login_reject::SESSION_UNAVAILABLE, now_ns);
        }
        // Leave the login pool for the sessions; a client replacing its own
        // session may take one over the limit until the old one is gone.
        if self.session_held >= self.max_sessions && self.clients[client_index].live.is_none() {
            self.counters.sessions_refused.increment();
            let max_sessions = self.max_sessions;
            return self.reject_login_saying(
                io,
                slot,
                login_reject::SESSION_UNAVAILABLE,
                now_ns,
                format_args!("{max_sessions} sessions are logged in: no room for another"),
            );
        }
        let connection = &mut self.connections[slot.index()];
        debug_assert!(connection.in_login_pool);
        connection.in_login_pool = false;
        if connection.evicting {
            // Marked while it was still idle; its login won the race.
            connection.evicting = false;
            self.evicting -= 1;
        }
        self.login_held -= 1;
        self.session_held += 1;
        self.counters.login_pool_active.set(self.login_held as u64);
        if let Some(old) = self.clients[client_index].live {
            debug_assert_ne!(old, slot);
            self.send_debug(io, old, now_ns, format_args!("replaced by a new login"));
            self.close(io, old);
        }
        self.clients[client_index].live = Some(slot);
        self.connections[slot.index()].state = SlotState::Open(ConnectionState::AwaitingAcks);
        if self.clients[client_index].in_flight == 0 {
            self.complete_login(io, slot, client_index, now_ns);
        }
    }

    /// Login Accepted, then the requested ack replay; the connection is then
    /// logged in and its waiting frames are queued for handling.
    pub(super) fn complete_login(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        client_index: usize,
        now_ns: u64,
    ) {
        debug_assert_eq!(self.clients[client_index].in_flight, 0);
        let client = &mut self.clients[client_index];
        // Nothing in flight: what was forwarded is exactly what was
        // sequenced (a rejected skip-ahead may have left them apart).
        client.last_forwarded = client.last_sequenced;
        let next = u64::from(client.last_sequenced) + 1;
        let history_first = client.history_first;
        let requested_seq = self.connections[slot.index()].requested_seq;

        let mut frame = [0u8; OUT_FRAME_BYTES_MAX];
        let len = soup::write_login_accepted(&mut frame, self.session, next).expect("fits");
        if !self.send(io, slot, &frame[..len], now_ns) {
            return;
        }
        self.counters.logins_accepted.increment();
        let connection = &mut self.connections[slot.index()];
        connection.state = SlotState::Open(ConnectionState::LoggedIn);
        connection.rate_tat_ns = 0;
        self.logged_in += 1;
        self.counters.sessions_active.set(self.logged_in);

        if requested_seq >= 1 && requested_seq < next {
            let mut from = requested_seq as u32;
            if history_first == 0 || from < history_first {
                let available = if history_first == 0 {
                    next
                } else {
                    u64::from(history_first)
                };
                if !self.send_debug(
                    io,
                    slot,
                    now_ns,
                    format_args!(
                        "acks before client_seq {available} are no longer held; \
                         replay starts at client_seq {available}"
                    ),
                ) {
                    return;
                }
                from = available as u32;
            }
            for client_seq in u64::from(from)..next {
                let client_seq = client_seq as u32;
                let record = self.history_at(client_index, client_seq);
                if !self.send_ack(io, slot, client_seq, record, now_ns) {
                    return;
                }
            }
        }
        // Frames that arrived during the login wait in the buffer.
        self.enqueue(slot.index());
    }

    pub(super) fn on_message(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        message: &[u8],
        now_ns: u64,
    ) {
        self.counters.messages_in.increment();
        let client_index = usize::from(
            self.connections[slot.index()]
                .client
                .expect("a logged-in connection has a client"),
        );
        let Some(client_seq) = self.next_in_order(io, slot, client_index, message, now_ns) else {
            return;
        };
        let client = &self.clients[client_index];
        let client_id = client.client_id;
        let reason = validate(message, client.role);
        let within_rate = self.take_rate_token(slot, now_ns);
        let reason = match reason {
            0 if !within_rate => RATE_LIMITED,
            reason => reason,
        };
        let inbound = self.inbound(client_id, client_seq, reason, message);
        // drain() checked that the ring has room, and this loop is its only
        // producer.
        assert!(
            io.forward(inbound).is_ok(),
            "sequencer ring full after its capacity was checked"
        );
        let client = &mut self.clients[client_index];
        client.last_forwarded = client_seq;
        client.in_flight += 1;
    }

    /// `message`'s client_seq when it is the next one client `client_index`
    /// owes. Otherwise none: a duplicate is dropped (counted), a message
    /// without a whole header or numbered 0 is refused unnumbered, one that
    /// skips ahead is a protocol error.
    #[inline]
    fn next_in_order(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        client_index: usize,
        message: &[u8],
        now_ns: u64,
    ) -> Option<u32> {
        let last_forwarded = self.clients[client_index].last_forwarded;
        let expected = u64::from(last_forwarded) + 1;
        // A message without a whole header has no usable client_seq: it
        // cannot be numbered, acked or recorded. Say so; consume nothing.
        if message.len() < Header::SIZE {
            self.reject_unnumbered(
                io,
                slot,
                now_ns,
                format_args!(
                    "{}-byte message is shorter than the {}-byte header; next client_seq {expected}",
                    message.len(),
                    Header::SIZE
                ),
            );
            return None;
        }
        let client_seq = u32::from_be_bytes(message[3..7].try_into().expect("4 bytes"));
        if client_seq == 0 {
            self.reject_unnumbered(
                io,
                slot,
                now_ns,
                format_args!("client_seq 0 is not a message number; next client_seq {expected}"),
            );
            return None;
        }
        if client_seq <= last_forwarded {
            self.counters.duplicates_dropped.increment();
            return None;
        }
        if u64::from(client_seq) > expected {
            self.protocol_error(
                io,
                slot,
                now_ns,
                format_args!("client_seq {client_seq} skips ahead of the expected {expected}"),
            );
            return None;
        }
        Some(client_seq)
    }

    /// What goes to the sequencer for an in-order message: the message
    /// stamped with its origin (the sequencer stamps the time), or, refused
    /// for `reason`, a `j` in its place (counted).
    #[inline]
    fn inbound(&mut self, client_id: u16, client_seq: u32, reason: u8, message: &[u8]) -> Inbound {
        if reason == 0 {
            let mut inbound = Inbound::new(client_id, client_seq, 0, message);
            let header = tally_wire::header_mut(inbound.message_mut())
                .expect("a valid message holds a header");
            header.origin = client_id.into();
            header.timestamp_ns = 0.into();
            inbound
        } else {
            self.counters.gateway_rejects.increment();
            if reason == RATE_LIMITED {
                self.counters.rate_limited.increment();
            }
            let reject = GatewayReject::new(reason)
                .with_origin(client_id)
                .with_client_seq(client_seq);
            Inbound::new(client_id, client_seq, reason, reject.as_bytes())
        }
    }

    /// Answers a `U` that has no usable client_seq with a debug packet
    /// (within the session's rate limit; counted either way). Nothing is
    /// forwarded and the client's numbering does not move.
    pub(super) fn reject_unnumbered(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        now_ns: u64,
        args: fmt::Arguments<'_>,
    ) {
        self.counters.unnumbered_rejects.increment();
        if self.take_rate_token(slot, now_ns) {
            self.send_debug(
                io,
                slot,
                now_ns,
                format_args!("{UNNUMBERED_REJECT_PREFIX} {args}"),
            );
        } else {
            self.counters.rate_limited.increment();
        }
    }

    /// GCRA: at most `rate_burst` messages at once, refilled at
    /// `rate_limit_per_sec`. Returns whether the message is within the limit.
    pub(super) fn take_rate_token(&mut self, slot: SlotId, now_ns: u64) -> bool {
        let connection = &mut self.connections[slot.index()];
        let tat_ns = connection.rate_tat_ns.max(now_ns);
        if tat_ns - now_ns > self.rate_tolerance_ns {
            return false;
        }
        connection.rate_tat_ns = tat_ns + self.rate_interval_ns;
        true
    }
}
