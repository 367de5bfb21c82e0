//! `GatewayCore`: the gateway's public face over the internal `Core`.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;

use tally_config::gateway::GatewayConfig;
use tally_wire::mold::Session;
use tally_wire::soup::{self, FrameDecoder};

use super::state::ConnectionState;
use super::{ClientState, Connection, Core, SlotId, SlotState, FRAMES_PER_SLOT_PER_SERVICE};
use crate::auth::AuthResult;
use crate::counters::GatewayCounters;
use crate::link::Outcome;
use crate::throttle::Throttle;
use crate::{AckRecord, ClientRecovery, GatewayIo, RecoveryError, Refusal};

/// The gateway's session logic (see the module doc). One per gateway loop.
pub struct GatewayCore {
    pub(super) decoders: Vec<FrameDecoder>,
    /// Buffered bytes above which a waiting connection might not take one
    /// more receive: see [`GatewayCore::is_stalled`].
    pub(super) stall_buffered_bytes: usize,
    pub(super) core: Core,
}

impl fmt::Debug for GatewayCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayCore")
            .field("slots", &self.decoders.len())
            .field("clients", &self.core.clients.len())
            .field("logged_in", &self.core.logged_in)
            .finish_non_exhaustive()
    }
}

impl GatewayCore {
    /// A core for `config` (which must have passed
    /// [`GatewayConfig::validate`]) with every table allocated, then the
    /// clients' state rebuilt from `recovery` (see [`GatewayCore::recover`]).
    ///
    /// # Panics
    ///
    /// On a configuration `validate` rejects (a bug in the caller).
    pub fn new(
        config: &GatewayConfig,
        counters: GatewayCounters,
        recovery: &[ClientRecovery],
    ) -> Result<Self, RecoveryError> {
        if let Err(error) = config.validate() {
            panic!("GatewayCore::new on an invalid configuration: {error}");
        }
        let slots = config.connection_slots();
        let decoder_bytes = config.receive_backlog_bytes();
        let clients: Vec<ClientState> = config.clients.iter().map(ClientState::new).collect();
        let client_ids = client_ids(&clients);
        let history_capacity = config.ack_history_per_client;
        let rate_interval_ns = (1_000_000_000 / u64::from(config.rate_limit_per_sec)).max(1);
        let mut core = GatewayCore {
            decoders: (0..slots)
                .map(|_| FrameDecoder::with_buffer_bytes(config.max_frame_bytes, decoder_bytes))
                .collect(),
            stall_buffered_bytes: decoder_bytes
                - config.recv_buffer_bytes
                - soup::LENGTH_PREFIX_SIZE
                - config.max_frame_bytes,
            core: Core {
                session: config.session,
                heartbeat_interval_ns: config.heartbeat_interval_ns,
                peer_timeout_ns: config.peer_timeout_ns,
                heartbeat_timeout_min_ns: config.heartbeat_timeout_min_ns,
                heartbeat_timeout_max_ns: config.heartbeat_timeout_max_ns,
                login_timeout_ns: config.login_timeout_ns,
                max_sessions: config.max_sessions,
                max_login_connections: config.max_login_connections,
                max_login_connections_per_source: config.max_login_connections_per_source,
                auth_in_flight_per_source: config.auth_in_flight_per_source,
                login_held: 0,
                evicting: 0,
                evictions: Vec::with_capacity(slots),
                session_held: 0,
                throttle: Throttle::new(config),
                // Check timers four times per heartbeat interval: a heartbeat
                // is late by at most a quarter interval.
                timer_period_ns: (config.heartbeat_interval_ns / 4).max(1),
                next_timer_ns: 0,
                rate_interval_ns,
                rate_tolerance_ns: rate_interval_ns * u64::from(config.rate_burst - 1),
                history_capacity,
                connections: (0..slots).map(|_| Connection::free(config)).collect(),
                // Lowest slot first.
                free: (0..slots as u32).rev().collect(),
                pending: VecDeque::with_capacity(slots),
                history: vec![AckRecord::default(); clients.len() * history_capacity],
                clients,
                client_ids,
                next_ticket: 1,
                logged_in: 0,
                accepted_any: false,
                counters,
            },
        };
        for client in recovery {
            core.recover(client)?;
        }
        Ok(core)
    }

    /// Rebuilds one client's state from the journal: its acks (oldest first;
    /// only the newest `ack_history_per_client` are kept), then its last
    /// sequenced client_seq (which may be above the last ack given, e.g. when
    /// older journal segments are gone). Only before the first connection.
    pub fn recover(&mut self, recovery: &ClientRecovery) -> Result<(), RecoveryError> {
        for &(client_seq, record) in &recovery.acks {
            self.recover_ack(recovery.client_id, client_seq, record)?;
        }
        self.recover_last_client_seq(recovery.client_id, recovery.last_client_seq)
    }

    /// Records one journaled message of `client_id` (call for each, in stream
    /// order): its ack joins the client's history and `client_seq` becomes
    /// its last sequenced (and forwarded) client_seq. Only before the first
    /// connection.
    pub fn recover_ack(
        &mut self,
        client_id: u16,
        client_seq: u32,
        record: AckRecord,
    ) -> Result<(), RecoveryError> {
        let index = self.recoverable_client(client_id)?;
        let client = &self.core.clients[index];
        if client_seq == 0 || client_seq <= client.last_sequenced {
            return Err(RecoveryError::OutOfOrder {
                client_id,
                client_seq,
                last_client_seq: client.last_sequenced,
            });
        }
        self.core.record_ack(index, client_seq, record);
        let client = &mut self.core.clients[index];
        client.last_forwarded = client.last_sequenced;
        Ok(())
    }

    /// Sets `client_id`'s last sequenced client_seq to `last_client_seq` when
    /// that is above what was recovered so far (acks for the numbers in
    /// between are then unknown and not replayable). Only before the first
    /// connection.
    pub fn recover_last_client_seq(
        &mut self,
        client_id: u16,
        last_client_seq: u32,
    ) -> Result<(), RecoveryError> {
        let index = self.recoverable_client(client_id)?;
        let client = &mut self.core.clients[index];
        if last_client_seq > client.last_sequenced {
            client.last_sequenced = last_client_seq;
            client.last_forwarded = last_client_seq;
            // The history must end at last_sequenced: what it held is older
            // than a gap, so it can no longer be replayed contiguously.
            client.history_first = 0;
        }
        Ok(())
    }

    pub(super) fn recoverable_client(&self, client_id: u16) -> Result<usize, RecoveryError> {
        if self.core.accepted_any {
            return Err(RecoveryError::AfterStart);
        }
        self.core
            .client_index(client_id)
            .ok_or(RecoveryError::UnknownClient(client_id))
    }

    /// The counters this core writes.
    pub fn counters(&self) -> &GatewayCounters {
        &self.core.counters
    }

    /// The last client_seq sequenced for `client_id` (what the next Login
    /// Accepted carries, minus one), or `None` for an unknown client.
    pub fn last_sequenced(&self, client_id: u16) -> Option<u32> {
        let index = self.core.client_index(client_id)?;
        Some(self.core.clients[index].last_sequenced)
    }

    /// Commands of `client_id` forwarded and not yet answered by the sequencer.
    pub fn in_flight(&self, client_id: u16) -> Option<u32> {
        let index = self.core.client_index(client_id)?;
        Some(self.core.clients[index].in_flight)
    }

    /// The state of the connection in `slot`, `None` when the slot is free.
    pub fn connection_state(&self, slot: SlotId) -> Option<ConnectionState> {
        match self.core.connections.get(slot.index())?.state {
            SlotState::Free => None,
            SlotState::Open(state) => Some(state),
        }
    }

    /// Bytes the connection in `slot` can still buffer before its frames are
    /// handled. The loop stops receiving on a connection when this is less
    /// than one receive, and resumes when it is back.
    pub fn receive_room(&self, slot: SlotId) -> usize {
        self.decoders[slot.index()].room()
    }

    /// Sessions logged in now.
    pub fn sessions_logged_in(&self) -> u64 {
        self.core.logged_in
    }

    /// Whether a connection whose frames wait to be handled (for room in the
    /// sequencer ring, or for their turn) has so much buffered that one more
    /// receive might not fit. The loop then takes no more bytes from the
    /// network (so TCP flow control pushes back on the clients) until the
    /// core has worked the backlog down.
    pub fn is_stalled(&self) -> bool {
        self.core.pending.iter().any(|&index| {
            self.core.is_readable(index as usize)
                && self.decoders[index as usize].buffered() > self.stall_buffered_bytes
        })
    }

    /// Slots (connections) in use, whatever their state.
    pub fn slots_in_use(&self) -> usize {
        self.core.connections.len() - self.core.free.len()
    }

    /// Takes a login-pool slot for a newly accepted connection whose source
    /// address is unknown (tests, tools: only the pool and slot limits
    /// apply), or `None` when it is refused (counted).
    pub fn on_accept(&mut self, now_ns: u64) -> Option<SlotId> {
        self.on_accept_from(None, now_ns).ok()
    }

    /// Takes a login-pool slot for a connection newly accepted from `peer`,
    /// or says why it is refused: the source is over its connection rate,
    /// the login pool is full, the source holds its share of the pool, or
    /// no slot is free. Each refusal is counted; the loop sends
    /// [`Refusal::text`] and closes the connection.
    pub fn on_accept_from(&mut self, peer: Option<IpAddr>, now_ns: u64) -> Result<SlotId, Refusal> {
        let core = &mut self.core;
        core.accepted_any = true;
        if let Some(source) = peer {
            if !core.throttle.on_connect(source, now_ns) {
                core.counters.connects_throttled.increment();
                return Err(Refusal::ConnectRate);
            }
        }
        if let Some(source) = peer {
            let held = core
                .connections
                .iter()
                .filter(|c| c.in_login_pool && c.peer == Some(source))
                .take(core.max_login_connections_per_source)
                .count();
            if held >= core.max_login_connections_per_source {
                core.counters.login_source_refused.increment();
                return Err(Refusal::SourceLimit);
            }
        }
        if core.free.is_empty() {
            core.counters.sessions_refused.increment();
            return Err(Refusal::NoSlot);
        }
        debug_assert!(core.evicting <= core.login_held);
        if core.login_held.saturating_sub(core.evicting) >= core.max_login_connections {
            core.evict_for_login(now_ns)?;
        }
        let index = core.free.pop().expect("checked above");
        let ticket = core.next_ticket;
        core.next_ticket = core.next_ticket.wrapping_add(1);
        let connection = &mut core.connections[index as usize];
        debug_assert_eq!(connection.state, SlotState::Free);
        // A freed slot may still sit in the pending queue; keep its flag so
        // it is never queued twice.
        let queued = connection.queued;
        *connection = Connection {
            state: SlotState::Open(ConnectionState::AwaitingLogin),
            ticket,
            client: None,
            requested_session: Session::BLANK,
            requested_seq: 0,
            peer,
            in_login_pool: true,
            accepted_ns: now_ns,
            peer_timeout_ns: core.peer_timeout_ns,
            last_received_ns: now_ns,
            last_sent_ns: now_ns,
            rate_tat_ns: 0,
            queued,
            blocked: false,
            evicting: false,
        };
        core.login_held += 1;
        core.counters.login_pool_active.set(core.login_held as u64);
        Ok(SlotId(index))
    }

    /// The transport has released the connection in `slot` (closed by the
    /// peer, by an error, or after [`GatewayIo::close`]): frees the slot.
    /// Call exactly once per slot [`GatewayCore::on_accept`] gave out.
    pub fn on_closed(&mut self, slot: SlotId) {
        let index = slot.index();
        if self.core.connections[index].state == SlotState::Free {
            debug_assert!(false, "on_closed for free slot {index}");
            return;
        }
        self.core.detach(slot);
        // Drop whatever partial frame the closed connection left behind.
        self.decoders[index].clear();
        let connection = &mut self.core.connections[index];
        connection.state = SlotState::Free;
        connection.client = None;
        if connection.evicting {
            connection.evicting = false;
            self.core.evicting -= 1;
        }
        if connection.in_login_pool {
            connection.in_login_pool = false;
            self.core.login_held -= 1;
            self.core
                .counters
                .login_pool_active
                .set(self.core.login_held as u64);
        } else {
            self.core.session_held -= 1;
        }
        // `queued` stays: service() skips free slots and clears it.
        self.core.free.push(slot.0);
    }

    /// The writable tail of `slot`'s receive buffer, for a transport that
    /// receives straight into it; report what was written with
    /// [`GatewayCore::on_received`]. Empty while the connection is stalled
    /// (its buffered frames wait for room in the sequencer ring).
    pub fn receive_buffer(&mut self, slot: SlotId) -> &mut [u8] {
        self.decoders[slot.index()].spare()
    }

    /// `n` bytes were written into [`GatewayCore::receive_buffer`]: handles
    /// the frames they complete.
    pub fn on_received(&mut self, io: &mut impl GatewayIo, slot: SlotId, n: usize, now_ns: u64) {
        let index = slot.index();
        if !self.core.is_readable(index) {
            return;
        }
        self.decoders[index].commit(n);
        self.core.connections[index].last_received_ns = now_ns;
        self.drain(io, slot, usize::MAX, now_ns);
    }

    /// Bytes received on `slot`: buffers and handles them. Returns how many
    /// were taken; fewer than `data.len()` only when the connection is
    /// stalled (frames waiting for room in the sequencer ring, or for a login
    /// to complete) and its buffer is full: the caller keeps the rest and
    /// offers it again later. Data for a closing connection is discarded
    /// (reported as taken).
    pub fn on_data(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        data: &[u8],
        now_ns: u64,
    ) -> usize {
        let index = slot.index();
        if !self.core.is_readable(index) {
            return data.len();
        }
        self.core.connections[index].last_received_ns = now_ns;
        let mut taken = 0;
        while taken < data.len() {
            let n = self.decoders[index].extend(&data[taken..]);
            taken += n;
            self.drain(io, slot, usize::MAX, now_ns);
            if n == 0 || !self.core.is_readable(index) {
                break;
            }
        }
        if !self.core.is_readable(index) {
            return data.len();
        }
        taken
    }

    /// The transport could not hand over received bytes because
    /// [`GatewayCore::on_data`] took fewer than offered (the connection's
    /// buffer is full while its frames wait) and it cannot keep them: closes
    /// the connection with a debug packet saying so; counted. Nothing is
    /// lost: the client reconnects and resends from Login Accepted's next
    /// client_seq.
    pub fn on_receive_overflow(&mut self, io: &mut impl GatewayIo, slot: SlotId, now_ns: u64) {
        if !self.core.is_readable(slot.index()) {
            return;
        }
        self.core.counters.receive_overflows.increment();
        self.core.send_debug(
            io,
            slot,
            now_ns,
            format_args!(
                "receive buffer full while the sequencer is busy: closing; \
                 log in again and resend from the next client_seq"
            ),
        );
        self.core.close(io, slot);
    }

    /// A password check finished.
    pub fn on_auth_result(&mut self, io: &mut impl GatewayIo, result: AuthResult, now_ns: u64) {
        self.core.on_auth_result(io, result, now_ns);
    }

    /// The sequencer's answer for one forwarded message.
    pub fn on_outcome(&mut self, io: &mut impl GatewayIo, outcome: Outcome, now_ns: u64) {
        self.core.on_outcome(io, outcome, now_ns);
    }

    /// Periodic duties, once per loop cycle: resumes connections that
    /// stopped reading (ring full, login just completed, frame budget used),
    /// and every quarter heartbeat interval sends heartbeats and drops silent
    /// peers. Returns the work done (frames handled, heartbeats, timeouts).
    pub fn service(&mut self, io: &mut impl GatewayIo, now_ns: u64) -> usize {
        let mut work = 0;
        // Connections evicted from a full login pool by on_accept_from.
        while let Some(index) = self.core.evictions.pop() {
            let index = index as usize;
            let connection = &mut self.core.connections[index];
            if !connection.evicting {
                continue; // closed meanwhile
            }
            if connection.state != SlotState::Open(ConnectionState::AwaitingLogin) {
                // Its login arrived in time: spared.
                connection.evicting = false;
                self.core.evicting -= 1;
                continue;
            }
            work += 1;
            let slot = SlotId(index as u32);
            self.core.send_debug(
                io,
                slot,
                now_ns,
                format_args!("closed: the login pool is full and no login arrived"),
            );
            self.core.close(io, slot);
        }
        // Each slot queued now gets one turn; those that re-queue wait for
        // the next call.
        for _ in 0..self.core.pending.len() {
            let Some(index) = self.core.pending.pop_front() else {
                break;
            };
            self.core.connections[index as usize].queued = false;
            if !self.core.is_readable(index as usize) {
                continue;
            }
            work += self.drain(io, SlotId(index), FRAMES_PER_SLOT_PER_SERVICE, now_ns);
        }
        if now_ns >= self.core.next_timer_ns {
            self.core.next_timer_ns = now_ns.saturating_add(self.core.timer_period_ns);
            work += self.core.run_timers(io, now_ns);
        }
        work
    }

    /// Handles up to `max_frames` frames buffered on `slot`; queues the slot
    /// for [`GatewayCore::service`] when frames may remain. Returns the frames
    /// handled.
    pub(super) fn drain(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        max_frames: usize,
        now_ns: u64,
    ) -> usize {
        let index = slot.index();
        let mut handled = 0;
        loop {
            let state = match self.core.connections[index].state {
                SlotState::Open(state) => state,
                SlotState::Free => return handled,
            };
            match state {
                ConnectionState::AwaitingLogin | ConnectionState::LoggedIn => {}
                // Frames wait until the login completes (the core queues the
                // slot then) or are dropped with the connection.
                ConnectionState::Authenticating
                | ConnectionState::AwaitingAcks
                | ConnectionState::Closing => return handled,
            }
            if self.decoders[index].buffered() == 0 {
                self.core.connections[index].blocked = false;
                return handled;
            }
            if handled >= max_frames {
                self.core.enqueue(index);
                return handled;
            }
            if state == ConnectionState::LoggedIn
                && (io.sequencer_capacity() == 0 || !self.core.has_ack_room(io, index))
            {
                // Back-pressure: leave the frames where they are.
                let connection = &mut self.core.connections[index];
                if !connection.blocked {
                    connection.blocked = true;
                    self.core.counters.ring_full.increment();
                }
                self.core.enqueue(index);
                return handled;
            }
            match self.decoders[index].next_frame() {
                Ok(Some(frame)) => {
                    handled += 1;
                    self.core.connections[index].blocked = false;
                    self.core.on_frame(io, slot, state, frame, now_ns);
                }
                Ok(None) => {
                    self.core.connections[index].blocked = false;
                    return handled;
                }
                Err(error) => {
                    handled += 1;
                    self.core
                        .protocol_error(io, slot, now_ns, format_args!("{error}"));
                    return handled;
                }
            }
        }
    }
}

impl ClientState {
    /// A configured client before any recovery: nothing forwarded yet.
    fn new(entry: &tally_config::gateway::ClientEntry) -> Self {
        ClientState {
            client_id: entry.client_id,
            role: entry.role,
            username: tally_wire::pad_ascii(&entry.username)
                .expect("validated usernames fit the login field"),
            last_forwarded: 0,
            last_sequenced: 0,
            in_flight: 0,
            history_first: 0,
            live: None,
        }
    }
}

/// (client id, index into `clients`), sorted by id for binary search.
fn client_ids(clients: &[ClientState]) -> Vec<(u16, u16)> {
    let mut ids: Vec<(u16, u16)> = clients
        .iter()
        .enumerate()
        .map(|(index, client)| (client.client_id, index as u16))
        .collect();
    ids.sort_unstable();
    ids
}

impl Connection {
    /// A free connection slot.
    fn free(config: &GatewayConfig) -> Self {
        Connection {
            state: SlotState::Free,
            ticket: 0,
            client: None,
            requested_session: Session::BLANK,
            requested_seq: 0,
            peer: None,
            in_login_pool: false,
            accepted_ns: 0,
            peer_timeout_ns: config.peer_timeout_ns,
            last_received_ns: 0,
            last_sent_ns: 0,
            rate_tat_ns: 0,
            queued: false,
            blocked: false,
            evicting: false,
        }
    }
}

impl Core {
    /// The login pool is full: marks the oldest connection that has not
    /// sent a whole login request yet for eviction, or refuses.
    fn evict_for_login(&mut self, now_ns: u64) -> Result<(), Refusal> {
        // Full: make room by evicting the oldest connection that has not
        // sent a whole login request yet (idle, or dribbling one) and has
        // had a fair share of its deadline, so that a fresh till is not
        // kept out until the idlers time out. Young ones are never
        // evicted: a client's login request follows its connect at once.
        let min_age_ns = self.login_timeout_ns / 8;
        let victim = self
            .connections
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.in_login_pool
                    && !c.evicting
                    && c.state == SlotState::Open(ConnectionState::AwaitingLogin)
                    && now_ns.saturating_sub(c.accepted_ns) >= min_age_ns
            })
            .min_by_key(|(_, c)| c.accepted_ns)
            .map(|(index, _)| index);
        let Some(victim) = victim else {
            self.counters.login_pool_refused.increment();
            return Err(Refusal::LoginPoolFull);
        };
        self.connections[victim].evicting = true;
        self.evicting += 1;
        self.evictions.push(victim as u32);
        self.counters.login_pool_evictions.increment();
        Ok(())
    }
}
