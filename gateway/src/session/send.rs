//! Core: lookups, sending (acks, Debug texts, back-pressure) and closing.

use std::fmt;

use tally_wire::ack::{Accepted, Rejected};
use tally_wire::soup::{self, DEBUG_TEXT_BYTES_MAX};

use super::state::ConnectionState;
use super::{
    Core, SendError, SlotId, SlotState, ACK_FRAME_BYTES, DEBUG_FRAME_BYTES, OUT_FRAME_BYTES_MAX,
};
use crate::soup_server::format_text;
use crate::{AckRecord, GatewayIo};

impl Core {
    pub(super) fn client_index(&self, client_id: u16) -> Option<usize> {
        self.client_ids
            .binary_search_by_key(&client_id, |&(id, _)| id)
            .ok()
            .map(|position| usize::from(self.client_ids[position].1))
    }

    pub(super) fn username_index(&self, username: &[u8; soup::USERNAME_SIZE]) -> Option<u16> {
        self.clients
            .iter()
            .position(|client| &client.username == username)
            .map(|index| index as u16)
    }

    pub(super) fn state(&self, slot: SlotId) -> Option<ConnectionState> {
        match self.connections[slot.index()].state {
            SlotState::Open(state) => Some(state),
            SlotState::Free => None,
        }
    }

    /// Whether received bytes for this slot are still of interest.
    pub(super) fn is_readable(&self, index: usize) -> bool {
        matches!(
            self.connections[index].state,
            SlotState::Open(
                ConnectionState::AwaitingLogin
                    | ConnectionState::Authenticating
                    | ConnectionState::AwaitingAcks
                    | ConnectionState::LoggedIn
            )
        )
    }

    pub(super) fn enqueue(&mut self, index: usize) {
        let connection = &mut self.connections[index];
        if !connection.queued {
            connection.queued = true;
            // Capacity is max_sessions and a slot is queued at most once.
            debug_assert!(self.pending.len() < self.pending.capacity());
            self.pending.push_back(index as u32);
        }
    }

    // ---- sending ---------------------------------------------------------

    /// Whether the send buffer of connection `index` has room for the acks
    /// of everything its client has in flight plus one more command, and a
    /// debug packet besides.
    pub(super) fn has_ack_room(&self, io: &impl GatewayIo, index: usize) -> bool {
        let Some(client) = self.connections[index].client else {
            return true;
        };
        let in_flight = self.clients[usize::from(client)].in_flight as usize;
        let needed = (in_flight + 1) * ACK_FRAME_BYTES + DEBUG_FRAME_BYTES;
        io.send_room(SlotId(index as u32)) >= needed
    }

    /// Sends `bytes`; on a full send buffer closes the connection as a slow
    /// client. Returns whether the bytes were queued.
    pub(super) fn send(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        bytes: &[u8],
        now_ns: u64,
    ) -> bool {
        match io.send(slot, bytes) {
            Ok(()) => {
                self.connections[slot.index()].last_sent_ns = now_ns;
                true
            }
            Err(SendError::Full) => {
                self.counters.slow_clients_closed.increment();
                self.close(io, slot);
                false
            }
            Err(SendError::Closed) => {
                self.close(io, slot);
                false
            }
        }
    }

    pub(super) fn send_debug(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        now_ns: u64,
        args: fmt::Arguments<'_>,
    ) -> bool {
        let mut text = [0u8; DEBUG_TEXT_BYTES_MAX];
        let text = format_text(&mut text, args);
        let mut frame = [0u8; OUT_FRAME_BYTES_MAX];
        let len = soup::write_debug(&mut frame, text).expect("debug text fits its frame");
        self.send(io, slot, &frame[..len], now_ns)
    }

    pub(super) fn send_ack(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        client_seq: u32,
        record: AckRecord,
        now_ns: u64,
    ) -> bool {
        let mut frame = [0u8; OUT_FRAME_BYTES_MAX];
        let len = if record.reject_reason == 0 {
            let ack = Accepted::new(client_seq, record.stream_seq, record.timestamp_ns);
            soup::write_sequenced(&mut frame, ack.as_bytes())
        } else {
            let ack = Rejected::new(client_seq, record.stream_seq, record.reject_reason);
            soup::write_sequenced(&mut frame, ack.as_bytes())
        }
        .expect("an ack fits its frame");
        let sent = self.send(io, slot, &frame[..len], now_ns);
        if sent {
            self.counters.acks_out.increment();
        }
        sent
    }

    // ---- closing ---------------------------------------------------------

    /// Detaches the connection from its client and the logged-in count.
    pub(super) fn detach(&mut self, slot: SlotId) {
        let connection = &mut self.connections[slot.index()];
        if connection.state == SlotState::Open(ConnectionState::LoggedIn) {
            self.logged_in -= 1;
            self.counters.sessions_active.set(self.logged_in);
        }
        if let Some(client) = connection.client {
            let client = &mut self.clients[usize::from(client)];
            if client.live == Some(slot) {
                client.live = None;
            }
        }
    }

    /// Closes the connection (idempotent): no more frames are handled, no
    /// more packets sent; the slot is freed by `on_closed`.
    pub(super) fn close(&mut self, io: &mut impl GatewayIo, slot: SlotId) {
        match self.connections[slot.index()].state {
            SlotState::Free | SlotState::Open(ConnectionState::Closing) => return,
            SlotState::Open(_) => {}
        }
        self.detach(slot);
        self.connections[slot.index()].state = SlotState::Open(ConnectionState::Closing);
        io.close(slot);
    }

    /// A debug packet saying what was wrong, then close. Counted.
    pub(super) fn protocol_error(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        now_ns: u64,
        args: fmt::Arguments<'_>,
    ) {
        self.counters.protocol_errors.increment();
        self.send_debug(io, slot, now_ns, format_args!("protocol error: {args}"));
        self.close(io, slot);
    }

    /// Login Rejected with `reason`, then close. Counted.
    pub(super) fn reject_login(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        reason: u8,
        now_ns: u64,
    ) {
        self.counters.logins_rejected.increment();
        let mut frame = [0u8; OUT_FRAME_BYTES_MAX];
        let len = soup::write_login_rejected(&mut frame, reason).expect("fits");
        self.send(io, slot, &frame[..len], now_ns);
        self.close(io, slot);
    }

    /// Login Rejected with `reason` (the login's answer comes first, as
    /// SoupBinTCP clients expect), then a debug packet saying why, then
    /// close. Counted.
    pub(super) fn reject_login_saying(
        &mut self,
        io: &mut impl GatewayIo,
        slot: SlotId,
        reason: u8,
        now_ns: u64,
        args: fmt::Arguments<'_>,
    ) {
        self.counters.logins_rejected.increment();
        let mut frame = [0u8; OUT_FRAME_BYTES_MAX];
        let len = soup::write_login_rejected(&mut frame, reason).expect("fits");
        if self.send(io, slot, &frame[..len], now_ns) {
            self.send_debug(io, slot, now_ns, args);
        }
        self.close(io, slot);
    }
}
