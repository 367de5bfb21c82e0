//! The client's deterministic state: the link's phase, the window of commands
//! not yet acked, resend after a reconnect, and the frame decoder feed.

use std::io;

use tally_runtime::net::{SendError, TcpConn};
use tally_wire::mold::Session;
use tally_wire::soup::{self, FrameDecoder, ServerPacket, DEBUG_TEXT_BYTES_MAX};

use super::{Ack, ClientError, ClientEvent, ClientStats, BATCH_BYTES, COMMAND_BYTES_MAX};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Link {
    /// No connection; connect at `retry_at_ns`.
    Down,
    LoggingIn,
    Ready,
    /// Stopped for good.
    Closed(ClientError),
}

/// Everything but the connection and the decoder, so the connection's
/// receive callback can borrow it.
pub(super) struct State {
    pub(super) link: Link,
    pub(super) logged_in_once: bool,
    /// The number the next new command gets.
    pub(super) next_client_seq: u32,
    /// The oldest command without an ack (== next_client_seq when none).
    pub(super) first_unacked: u32,
    /// The next command to write on the current connection.
    pub(super) sent_up_to: u32,
    /// One past the highest command ever written (to count resends).
    pub(super) written_high: u32,
    /// Command `client_seq` lives in slot `client_seq & mask`.
    pub(super) slots: Box<[[u8; COMMAND_BYTES_MAX]]>,
    pub(super) lens: Box<[u8]>,
    pub(super) mask: u32,
    pub(super) window: u32,
    pub(super) since_ns: u64,
    pub(super) last_recv_ns: u64,
    pub(super) last_sent_ns: u64,
    pub(super) sent_since_poll: bool,
    pub(super) retry_at_ns: u64,
    pub(super) backoff_ns: u64,
    /// Drop the connection (protocol error).
    pub(super) broken: bool,
    pub(super) last_connect_error: Option<io::ErrorKind>,
    pub(super) debug_text: [u8; DEBUG_TEXT_BYTES_MAX],
    pub(super) debug_len: usize,
    pub(super) stats: ClientStats,
    /// The session of the last Login Accepted.
    pub(super) accepted_session: Session,
}

impl State {
    pub(super) fn slot(&self, client_seq: u32) -> &[u8] {
        let index = (client_seq & self.mask) as usize;
        &self.slots[index][..usize::from(self.lens[index])]
    }

    pub(super) fn close(&mut self, error: ClientError, on_event: &mut impl FnMut(ClientEvent)) {
        if !matches!(self.link, Link::Closed(_)) {
            self.link = Link::Closed(error);
            on_event(ClientEvent::Closed(error));
        }
    }

    pub(super) fn on_frame(&mut self, frame: &[u8], on_event: &mut impl FnMut(ClientEvent)) {
        let Ok(packet) = ServerPacket::parse(frame) else {
            self.stats.protocol_errors += 1;
            self.broken = true;
            return;
        };
        match packet {
            ServerPacket::LoginAccepted { session, next_seq } => {
                self.accepted_session = session;
                if self.link != Link::LoggingIn {
                    self.stats.protocol_errors += 1;
                    self.broken = true;
                    return;
                }
                self.on_login_accepted(next_seq, on_event);
            }
            ServerPacket::LoginRejected { reason } => {
                self.close(ClientError::LoginRejected(reason), on_event);
            }
            ServerPacket::Sequenced(payload) => {
                if self.link != Link::Ready {
                    self.stats.protocol_errors += 1;
                    self.broken = true;
                    return;
                }
                let ack = match tally_wire::Ack::parse(payload) {
                    Ok(tally_wire::Ack::Accepted(a)) => Ack {
                        client_seq: a.client_seq.get(),
                        stream_seq: a.stream_seq.get(),
                        timestamp_ns: a.timestamp_ns.get(),
                        reject: None,
                    },
                    Ok(tally_wire::Ack::Rejected(r)) => Ack {
                        client_seq: r.client_seq.get(),
                        stream_seq: r.stream_seq.get(),
                        timestamp_ns: 0,
                        reject: Some(r.reason),
                    },
                    Err(_) => {
                        self.stats.protocol_errors += 1;
                        self.broken = true;
                        return;
                    }
                };
                self.on_ack(ack, on_event);
            }
            ServerPacket::Heartbeat => {}
            ServerPacket::EndOfSession => self.close(ClientError::SessionEnded, on_event),
            ServerPacket::Debug(text) => {
                self.stats.debug_packets += 1;
                let len = text.len().min(DEBUG_TEXT_BYTES_MAX);
                self.debug_text[..len].copy_from_slice(&text[..len]);
                self.debug_len = len;
                tracing::warn!(text = %String::from_utf8_lossy(text), "gateway debug packet");
            }
        }
    }

    pub(super) fn on_login_accepted(
        &mut self,
        next_seq: u64,
        on_event: &mut impl FnMut(ClientEvent),
    ) {
        if !self.logged_in_once {
            let Ok(next) = u32::try_from(next_seq) else {
                self.close(
                    ClientError::NumberingConflict {
                        appliance_next: next_seq,
                        client_next: 0,
                    },
                    on_event,
                );
                return;
            };
            self.next_client_seq = next;
            self.first_unacked = next;
            self.written_high = next;
        } else if next_seq < u64::from(self.first_unacked)
            || next_seq > u64::from(self.next_client_seq)
        {
            // Below: the appliance forgot commands it acknowledged. Above: it
            // sequenced numbers this client never sent. Either way resending
            // would be a guess.
            self.close(
                ClientError::NumberingConflict {
                    appliance_next: next_seq,
                    client_next: self.next_client_seq,
                },
                on_event,
            );
            return;
        }
        let next = next_seq as u32;
        self.sent_up_to = next;
        self.link = Link::Ready;
        self.logged_in_once = true;
        self.stats.logins += 1;
        on_event(ClientEvent::LoggedIn {
            next_client_seq: next,
            resending: self.next_client_seq - next,
        });
    }

    pub(super) fn on_ack(&mut self, ack: Ack, on_event: &mut impl FnMut(ClientEvent)) {
        let client_seq = ack.client_seq;
        if client_seq < self.first_unacked {
            self.stats.duplicate_acks += 1;
            return;
        }
        if client_seq >= self.next_client_seq {
            self.stats.unexpected_acks += 1;
            return;
        }
        while self.first_unacked < client_seq {
            // Sequenced before a reconnect; the gateway's history no longer
            // holds its ack.
            self.stats.acks_unavailable += 1;
            on_event(ClientEvent::AckUnavailable {
                client_seq: self.first_unacked,
            });
            self.first_unacked += 1;
        }
        self.first_unacked = client_seq + 1;
        self.sent_up_to = self.sent_up_to.max(self.first_unacked);
        if ack.reject.is_some() {
            self.stats.acks_rejected += 1;
        } else {
            self.stats.acks_accepted += 1;
        }
        on_event(ClientEvent::Ack(ack));
    }

    /// Writes the commands not yet written on this connection, in batches,
    /// as far as the send buffer takes them. False when the connection is
    /// closed.
    pub(super) fn pump(&mut self, conn: &mut TcpConn, send_buffer_bytes: usize) -> bool {
        let mut batch = [0u8; BATCH_BYTES];
        while self.sent_up_to < self.next_client_seq {
            let free = send_buffer_bytes.saturating_sub(conn.pending_send_bytes());
            let room = free.min(BATCH_BYTES);
            let mut len = 0;
            let mut seq = self.sent_up_to;
            while seq < self.next_client_seq {
                let message = self.slot(seq);
                let frame_len = soup::LENGTH_PREFIX_SIZE + 1 + message.len();
                if len + frame_len > room {
                    break;
                }
                len += soup::write_unsequenced(&mut batch[len..], message).expect("fits");
                seq += 1;
            }
            if len == 0 {
                self.stats.send_full += 1;
                return true;
            }
            match conn.send(&batch[..len]) {
                Ok(()) => {
                    let resent = seq.min(self.written_high).saturating_sub(self.sent_up_to);
                    self.stats.resent += u64::from(resent);
                    self.written_high = self.written_high.max(seq);
                    self.sent_up_to = seq;
                    self.sent_since_poll = true;
                }
                Err(SendError::Full) => {
                    self.stats.send_full += 1;
                    return true;
                }
                Err(SendError::Closed) => return false,
            }
        }
        true
    }
}

/// Feeds received bytes through the decoder into the state.
pub(super) fn feed(
    decoder: &mut FrameDecoder,
    state: &mut State,
    bytes: &[u8],
    now_ns: u64,
    on_event: &mut impl FnMut(ClientEvent),
) {
    state.last_recv_ns = now_ns;
    let mut rest = bytes;
    while !state.broken && !matches!(state.link, Link::Closed(_)) {
        let taken = decoder.extend(rest);
        rest = &rest[taken..];
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => state.on_frame(frame, on_event),
                Ok(None) => break,
                Err(_) => {
                    state.stats.protocol_errors += 1;
                    state.broken = true;
                }
            }
            if state.broken || matches!(state.link, Link::Closed(_)) {
                break;
            }
        }
        if rest.is_empty() {
            break;
        }
        if taken == 0 && decoder.room() == 0 {
            state.broken = true;
        }
    }
}
