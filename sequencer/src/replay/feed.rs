//! The replay feed's event handlers (`Feed`): connections, logins,
//! verdicts, and serving the journal to each client in bounded slices.

use std::io;
use std::net::SocketAddr;

use tally_gateway::auth::{AuthRequest, Authenticator};
use tally_gateway::soup_server::{classify, format_text, Login, Stage, Step};
use tally_runtime::net::{ConnId, TcpEvent, TcpServerHandle};
use tally_wire::soup::{
    self, login_reject, DEBUG_TEXT_BYTES_MAX, LENGTH_PREFIX_SIZE, USERNAME_SIZE,
};

use super::{
    heartbeat_policy, position, ClientSlot, Phase, ReplayCounters, ReplayLoop, ReplayOptions,
    Stall, DEBUG_FRAME_BYTES_MAX, INBOUND_BUFFER_BYTES, INBOUND_FRAME_BYTES_MAX,
    MESSAGES_PER_CLIENT_PER_POLL, SLOW_CLOSE_FLUSH,
};
use crate::journal::JournalReader;
use crate::retransmit::{is_damaged_record, DamageLog};

/// Everything but the server and the reader, so event handlers can borrow
/// it while the server is being polled.
pub(super) struct Feed<A: Authenticator> {
    pub(super) slots: Box<[ClientSlot]>,
    /// Configured usernames, space padded as in a login; index = client index.
    pub(super) usernames: Box<[Option<[u8; USERNAME_SIZE]>]>,
    pub(super) auth: A,
    pub(super) scratch: Box<[u8]>,
    pub(super) options: ReplayOptions,
    pub(super) counters: ReplayCounters,
    /// Slots in [`Phase::Streaming`].
    pub(super) active: usize,
    /// Streaming sessions per configured client (index = client index).
    pub(super) sessions: Box<[u32]>,
    pub(super) damage: DamageLog,
}

// The appliance builds each loop on the main thread and moves it to its own.
const _: fn() = || {
    pub(super) fn assert_send<T: Send>() {}
    assert_send::<ReplayLoop>();
};

/// Builds a Debug frame with `text` (cut to fit).
pub(super) fn debug_frame(text: &[u8], out: &mut [u8; DEBUG_FRAME_BYTES_MAX]) -> usize {
    let text = &text[..text
        .len()
        .min(DEBUG_FRAME_BYTES_MAX - LENGTH_PREFIX_SIZE - 1)];
    soup::write_debug(out, text).expect("a debug frame that fits its buffer")
}

impl<A: Authenticator> Feed<A> {
    pub(super) fn on_event(&mut self, io: &mut TcpServerHandle, event: TcpEvent<'_>, now_ns: u64) {
        match event {
            TcpEvent::Accepted { conn, peer } => {
                let peer_bits = match peer {
                    SocketAddr::V4(v4) => v4.ip().to_bits(),
                    SocketAddr::V6(_) => 0,
                };
                // Bounded: one pass over the fixed slot table.
                let pending = self
                    .slots
                    .iter()
                    .filter(|slot| {
                        slot.peer_bits == peer_bits
                            && matches!(slot.phase, Phase::AwaitingLogin | Phase::Authenticating)
                    })
                    .count();
                let slot = &mut self.slots[conn.index()];
                slot.reset(Some(conn), Phase::AwaitingLogin, now_ns);
                slot.peer_bits = peer_bits;
                if pending >= self.options.logins_pending_per_source_max {
                    self.counters.login_source_refused.increment();
                    self.send_debug(
                        io,
                        conn.index(),
                        b"refused: too many connections from your address waiting to log in",
                    );
                    self.close(io, conn.index());
                }
            }
            TcpEvent::Data { conn, bytes } => self.on_data(io, conn, bytes, now_ns),
            TcpEvent::Closed { conn, .. } => {
                let index = conn.index();
                if self.slots[index].conn == Some(conn) {
                    self.end_streaming(index);
                    self.slots[index].reset(None, Phase::Free, now_ns);
                }
            }
            TcpEvent::Rejected { .. } => self.counters.connections_refused.increment(),
        }
    }

    pub(super) fn on_data(
        &mut self,
        io: &mut TcpServerHandle,
        conn: ConnId,
        mut bytes: &[u8],
        now_ns: u64,
    ) {
        let index = conn.index();
        {
            let slot = &mut self.slots[index];
            if slot.conn != Some(conn) || matches!(slot.phase, Phase::Free | Phase::Closing) {
                return;
            }
            slot.last_recv_ns = now_ns;
        }
        let mut frame = [0u8; INBOUND_FRAME_BYTES_MAX];
        while !bytes.is_empty() {
            let slot = &mut self.slots[index];
            let taken = (INBOUND_BUFFER_BYTES - slot.inbound_bytes).min(bytes.len());
            slot.inbound[slot.inbound_bytes..slot.inbound_bytes + taken]
                .copy_from_slice(&bytes[..taken]);
            slot.inbound_bytes += taken;
            bytes = &bytes[taken..];
            loop {
                let slot = &mut self.slots[index];
                if slot.phase == Phase::Closing || slot.inbound_bytes < LENGTH_PREFIX_SIZE {
                    break;
                }
                let frame_bytes =
                    usize::from(u16::from_be_bytes([slot.inbound[0], slot.inbound[1]]));
                if frame_bytes == 0 || frame_bytes > INBOUND_FRAME_BYTES_MAX {
                    self.protocol_error(
                        io,
                        index,
                        b"frame length is 0 or too large for the replay feed",
                    );
                    return;
                }
                let end = LENGTH_PREFIX_SIZE + frame_bytes;
                if slot.inbound_bytes < end {
                    break;
                }
                frame[..frame_bytes].copy_from_slice(&slot.inbound[LENGTH_PREFIX_SIZE..end]);
                slot.inbound.copy_within(end..slot.inbound_bytes, 0);
                slot.inbound_bytes -= end;
                // The login's password must not linger in the buffer.
                let tail = slot.inbound_bytes;
                slot.inbound[tail..].fill(0);
                self.on_frame(io, index, &frame[..frame_bytes]);
                frame.fill(0);
            }
            if self.slots[index].phase == Phase::Closing {
                return;
            }
        }
    }

    pub(super) fn on_frame(&mut self, io: &mut TcpServerHandle, index: usize, frame: &[u8]) {
        let stage = match self.slots[index].phase {
            Phase::AwaitingLogin => Stage::AwaitingLogin,
            _ => Stage::LoggedIn,
        };
        match classify(stage, frame) {
            Step::Login(login) => self.start_login(io, index, login),
            Step::Data(_) => self.protocol_error(
                io,
                index,
                b"unsequenced data is not accepted on the replay feed",
            ),
            Step::Heartbeat => {}
            Step::Logout => self.close(io, index),
            Step::Error(error) => {
                let mut text = [0u8; DEBUG_TEXT_BYTES_MAX];
                let text = format_text(&mut text, format_args!("{error}"));
                self.protocol_error(io, index, text)
            }
        }
    }

    /// Hands a login to the password checker (or refuses it when the checker
    /// is full).
    pub(super) fn start_login(&mut self, io: &mut TcpServerHandle, index: usize, login: Login<'_>) {
        let client_index = self
            .usernames
            .iter()
            .position(|name| name.as_ref() == Some(login.username))
            .map(|i| i as u16);
        let negotiated = heartbeat_policy(&self.options).negotiate(login.heartbeat_timeout_ms);
        let slot = &mut self.slots[index];
        slot.ticket = slot.ticket.wrapping_add(1);
        slot.client_index = client_index;
        slot.peer_timeout_ns = negotiated.peer_timeout_ns;
        slot.heartbeat_interval_ns = negotiated.heartbeat_interval_ns;
        slot.requested_session = login.session;
        slot.next_seq = login.requested_seq.max(1);
        let request = AuthRequest {
            slot: index as u32,
            ticket: slot.ticket,
            client_index,
            password: *login.password,
        };
        match self.auth.submit(request) {
            Ok(()) => slot.phase = Phase::Authenticating,
            Err(mut refused) => {
                refused.password.fill(0);
                // Too many logins being checked: refuse rather than wait.
                self.reject_login(io, index, login_reject::NOT_AUTHORIZED);
            }
        }
    }

    /// Applies the password checker's verdicts. Returns verdicts applied.
    pub(super) fn on_verdicts(&mut self, io: &mut TcpServerHandle, now_ns: u64) -> usize {
        let mut applied = 0;
        while let Some(verdict) = self.auth.poll_result() {
            applied += 1;
            let index = verdict.slot as usize;
            let Some(slot) = self.slots.get_mut(index) else {
                continue;
            };
            if slot.phase != Phase::Authenticating || slot.ticket != verdict.ticket {
                continue; // for a connection that is gone
            }
            let Some(conn) = slot.conn else { continue };
            if !verdict.verified {
                self.reject_login(io, index, login_reject::NOT_AUTHORIZED);
                continue;
            }
            let session = self.options.session;
            if !slot.requested_session.is_blank() && slot.requested_session != session {
                self.reject_login(io, index, login_reject::SESSION_UNAVAILABLE);
                continue;
            }
            let Some(client) = slot.client_index.map(usize::from) else {
                // Verified means a configured client: cannot happen.
                self.reject_login(io, index, login_reject::NOT_AUTHORIZED);
                continue;
            };
            if self.sessions[client] as usize >= self.options.sessions_per_client_max {
                self.counters.logins_over_limit.increment();
                self.send_debug(
                    io,
                    index,
                    b"login refused: this username already holds its most replay sessions",
                );
                self.reject_login(io, index, login_reject::NOT_AUTHORIZED);
                continue;
            }
            let slot = &mut self.slots[index];
            let mut frame = [0u8; LENGTH_PREFIX_SIZE + 1 + soup::LOGIN_ACCEPTED_PAYLOAD];
            let bytes = soup::write_login_accepted(&mut frame, session, slot.next_seq)
                .expect("login accepted fits its buffer");
            if io.send(conn, &frame[..bytes]).is_err() {
                // A fresh connection's buffer always has room; it closed.
                self.close(io, index);
                continue;
            }
            slot.phase = Phase::Streaming;
            slot.cursor = None;
            slot.last_send_ns = now_ns;
            slot.queued_bytes = io.pending_send_bytes(conn);
            slot.drained_ns = now_ns;
            self.active += 1;
            self.sessions[client] += 1;
            self.counters.logins_accepted.increment();
        }
        applied
    }

    /// Sends every streaming client what it can take, then heartbeats,
    /// timeouts, stalls and end of session. Returns messages and heartbeats
    /// sent.
    pub(super) fn serve(
        &mut self,
        io: &mut TcpServerHandle,
        reader: &mut JournalReader,
        now_ns: u64,
    ) -> io::Result<usize> {
        // `ended` before `next_seq`: once the session has ended, next_seq is final.
        let ended = reader.ended();
        let stream_next_seq = reader.next_seq();
        let mut work = 0;
        for index in 0..self.slots.len() {
            let phase = self.slots[index].phase;
            if matches!(phase, Phase::Free | Phase::Closing) {
                continue;
            }
            let slot = &self.slots[index];
            if now_ns.saturating_sub(slot.last_recv_ns) >= slot.peer_timeout_ns {
                self.send_debug(io, index, b"no heartbeat from the client: disconnecting");
                self.close(io, index);
                continue;
            }
            if phase == Phase::AwaitingLogin
                && now_ns.saturating_sub(slot.accepted_ns) >= self.options.login_timeout_ns
            {
                self.counters.login_timeouts.increment();
                self.send_debug(
                    io,
                    index,
                    b"no login request within the login deadline: disconnecting",
                );
                self.close(io, index);
                continue;
            }
            if phase != Phase::Streaming {
                continue;
            }
            if !self.drains(io, index, now_ns) {
                self.counters.slow_clients_cut.increment();
                self.send_debug(
                    io,
                    index,
                    b"slow consumer: nothing drained past the stall timeout; disconnecting",
                );
                self.close_slow(io, index);
                continue;
            }
            if self.slots[index].next_seq >= stream_next_seq {
                self.slots[index].stall = None;
                if ended {
                    let mut frame = [0u8; LENGTH_PREFIX_SIZE + 1];
                    let bytes = soup::write_end_of_session(&mut frame).expect("fits");
                    if let Some(conn) = self.slots[index].conn {
                        let _ = io.send(conn, &frame[..bytes]);
                    }
                    self.close(io, index);
                    continue;
                }
            } else {
                work += self.send_messages(io, reader, index, now_ns)?;
                if self.slots[index].phase != Phase::Streaming {
                    continue;
                }
            }
            let slot = &mut self.slots[index];
            let Some(conn) = slot.conn else { continue };
            if now_ns.saturating_sub(slot.last_send_ns) >= slot.heartbeat_interval_ns {
                let mut frame = [0u8; LENGTH_PREFIX_SIZE + 1];
                let bytes = soup::write_server_heartbeat(&mut frame).expect("fits");
                if io.send(conn, &frame[..bytes]).is_ok() {
                    slot.last_send_ns = now_ns;
                    self.counters.heartbeats_sent.increment();
                    work += 1;
                }
            }
            slot.queued_bytes = io.pending_send_bytes(conn);
        }
        Ok(work)
    }

    /// Whether streaming client `index` has drained something of what waits
    /// for it within the stall timeout (or nothing waits).
    pub(super) fn drains(&mut self, io: &TcpServerHandle, index: usize, now_ns: u64) -> bool {
        let slot = &mut self.slots[index];
        let Some(conn) = slot.conn else { return true };
        let queued = io.pending_send_bytes(conn);
        if queued == 0 || queued < slot.queued_bytes {
            slot.drained_ns = now_ns;
        }
        slot.queued_bytes = queued;
        now_ns.saturating_sub(slot.drained_ns) < self.options.stall_timeout_ns
    }

    /// Counts a damaged record and logs it the first time it is seen.
    #[cold]
    pub(super) fn note_damage(&mut self, error: &io::Error) {
        if self.damage.first_time(error) {
            tracing::error!(
                %error,
                "replay: a damaged journal record is not served (sessions reaching it are closed)"
            );
        }
    }

    /// Closes client `index`, whose next record is damaged, telling it why.
    #[cold]
    pub(super) fn close_damaged(
        &mut self,
        io: &mut TcpServerHandle,
        index: usize,
        error: &io::Error,
    ) {
        self.counters.corrupt_records.increment();
        self.note_damage(error);
        let text = error.to_string();
        self.send_debug(io, index, text.as_bytes());
        self.close(io, index);
    }

    /// Sends client `index` messages from its `next_seq` on, as many as its
    /// send buffer takes (bounded); tracks and cuts a stalled client.
    pub(super) fn send_messages(
        &mut self,
        io: &mut TcpServerHandle,
        reader: &mut JournalReader,
        index: usize,
        now_ns: u64,
    ) -> io::Result<usize> {
        let slot = &mut self.slots[index];
        let Some(conn) = slot.conn else { return Ok(0) };
        let mut cursor = match slot.cursor {
            Some(cursor) => cursor,
            None => match position(reader, slot.next_seq) {
                Ok(Some(cursor)) => cursor,
                Ok(None) => return Ok(0), // not readable yet: wait
                Err(error) if is_damaged_record(&error) => {
                    self.close_damaged(io, index, &error);
                    return Ok(0);
                }
                Err(error) => return Err(error),
            },
        };
        let limit_bytes = io.send_capacity(conn).min(self.scratch.len());
        let scratch = &mut self.scratch[..limit_bytes];
        let mut frames_bytes = 0usize;
        let mut sent = 0usize;
        let mut buffer_full = false;
        let mut next_seq = slot.next_seq;
        let read = reader.read(&mut cursor, MESSAGES_PER_CLIENT_PER_POLL, |seq, message| {
            if seq < next_seq {
                return true; // scanning from the start of the journal
            }
            match soup::write_sequenced(&mut scratch[frames_bytes..], message) {
                Ok(bytes) => {
                    frames_bytes += bytes;
                    sent += 1;
                    next_seq = seq + 1;
                    true
                }
                Err(_) => {
                    buffer_full = true;
                    false
                }
            }
        });
        if let Err(error) = read {
            if !is_damaged_record(&error) {
                return Err(error);
            }
            // Not even the good messages before the damaged record are sent:
            // the client's next message would be the damaged one's.
            self.close_damaged(io, index, &error);
            return Ok(0);
        }
        slot.cursor = Some(cursor);
        slot.next_seq = next_seq;
        if sent > 0 {
            if io.send(conn, &self.scratch[..frames_bytes]).is_err() {
                // Cannot happen: the frames fit the capacity just read.
                self.close(io, index);
                return Ok(0);
            }
            slot.last_send_ns = now_ns;
            self.counters.messages_sent.add(sent as u64);
        }
        self.track_stall(io, index, buffer_full, frames_bytes, now_ns);
        Ok(sent)
    }

    /// Stall tracking: the window opens when the send buffer limits what
    /// a poll sends, and closes once the client has drained half a buffer
    /// since (or a poll is not limited by it). A client that cannot drain
    /// half its buffer within the stall timeout is cut: it reads slower than
    /// `send_buffer_bytes / 2` per `stall_timeout`.
    fn track_stall(
        &mut self,
        io: &mut TcpServerHandle,
        index: usize,
        buffer_full: bool,
        frames_bytes: usize,
        now_ns: u64,
    ) {
        let slot = &mut self.slots[index];
        if !buffer_full {
            slot.stall = None;
        } else {
            let stall = match &mut slot.stall {
                Some(stall) => {
                    // Room found while the buffer was full: the client drained it.
                    stall.drained_bytes += frames_bytes;
                    stall
                }
                None => slot.stall.insert(Stall {
                    since_ns: now_ns,
                    drained_bytes: 0,
                }),
            };
            if stall.drained_bytes >= self.options.send_buffer_bytes / 2 {
                slot.stall = None;
            } else if now_ns.saturating_sub(stall.since_ns) >= self.options.stall_timeout_ns {
                self.counters.slow_clients_cut.increment();
                self.send_debug(
                    io,
                    index,
                    b"slow consumer: send buffer full past the stall timeout; disconnecting",
                );
                // Flushing is bounded by the server and never blocks the loop.
                self.close_slow(io, index);
            }
        }
    }

    pub(super) fn reject_login(&mut self, io: &mut TcpServerHandle, index: usize, reason: u8) {
        self.counters.logins_rejected.increment();
        let mut frame = [0u8; LENGTH_PREFIX_SIZE + 2];
        let bytes = soup::write_login_rejected(&mut frame, reason).expect("fits");
        if let Some(conn) = self.slots[index].conn {
            let _ = io.send(conn, &frame[..bytes]);
        }
        self.close(io, index);
    }

    pub(super) fn protocol_error(&mut self, io: &mut TcpServerHandle, index: usize, text: &[u8]) {
        self.counters.protocol_errors.increment();
        self.send_debug(io, index, text);
        self.close(io, index);
    }

    pub(super) fn send_debug(&mut self, io: &mut TcpServerHandle, index: usize, text: &[u8]) {
        let mut frame = [0u8; DEBUG_FRAME_BYTES_MAX];
        let bytes = debug_frame(text, &mut frame);
        if let Some(conn) = self.slots[index].conn {
            let _ = io.send(conn, &frame[..bytes]);
        }
    }

    /// Closes after flushing what is queued (bounded by the server).
    pub(super) fn close(&mut self, io: &mut TcpServerHandle, index: usize) {
        if let Some(conn) = self.slots[index].conn {
            io.close(conn);
        }
        self.leave(index);
    }

    /// Closes a reader that is not draining: its queued bytes (the Debug
    /// packet last) get `SLOW_CLOSE_FLUSH`, not the server's full flush
    /// bound, so its slot is free soon.
    pub(super) fn close_slow(&mut self, io: &mut TcpServerHandle, index: usize) {
        if let Some(conn) = self.slots[index].conn {
            io.close_with_timeout(conn, SLOW_CLOSE_FLUSH);
        }
        self.leave(index);
    }

    /// Marks the slot closing; its `Closed` event frees it.
    pub(super) fn leave(&mut self, index: usize) {
        self.end_streaming(index);
        self.slots[index].phase = Phase::Closing;
    }

    /// Takes a streaming slot out of the active and per-client counts (no
    /// change for any other phase).
    pub(super) fn end_streaming(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if slot.phase != Phase::Streaming {
            return;
        }
        slot.phase = Phase::Closing;
        self.active -= 1;
        if let Some(client) = slot.client_index {
            let sessions = &mut self.sessions[usize::from(client)];
            assert!(*sessions > 0, "a streaming client is counted");
            *sessions -= 1;
        }
    }
}
