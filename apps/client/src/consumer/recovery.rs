//! The consumer's deterministic core: the reorder window, gap detection,
//! re-requests, the replay-feed state machine. No socket of its own: the
//! `StreamConsumer` hands it datagrams, frames and the time.

use std::io;
use std::net::SocketAddrV4;

use tally_runtime::loss::LossFilter;
use tally_runtime::net::UdpSocketRing;
use tally_wire::mold::{MoldPacket, PacketKind, ReRequest, Session};
use tally_wire::soup::{FrameDecoder, ServerPacket};
use tally_wire::Message;

use super::{
    ConsumerStats, RecoveryMode, REPLAY_BACKOFF_MAX_NS, REPLAY_BACKOFF_MIN_NS, REQUEST_COUNT_MAX,
    SLOT_BYTES, SLOT_UNDECODABLE,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Multicast,
    Retransmit,
    Replay,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReplayReason {
    LateJoin,
    Unanswered,
    Overflow,
    LargeGap,
    Retention,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReplayPhase {
    /// No connection: connect at `replay_retry_at_ns`.
    Idle,
    /// Login sent, waiting for Login Accepted.
    LoggingIn,
    /// Receiving Sequenced Data.
    Streaming,
}

/// One re-request in flight: the still-missing `[first, end)`.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Request {
    pub(super) first: u64,
    pub(super) end: u64,
    pub(super) sent_at_ns: u64,
    pub(super) attempts: u32,
    pub(super) active: bool,
}

/// Everything but the sockets and the replay frame decoder, so socket
/// callbacks can borrow it while the socket is borrowed too.
pub(super) struct Core {
    pub(super) session: Session,
    pub(super) session_known: bool,
    pub(super) retransmit_addr: SocketAddrV4,
    /// `next_seq` is meaningful (false only before the first packet when
    /// starting live).
    pub(super) synced: bool,
    /// The next number to deliver.
    pub(super) next_seq: u64,
    /// The newest number known to exist (seen in any packet, or announced by
    /// a heartbeat); 0 = none.
    pub(super) newest_seq: u64,
    /// Reorder buffer: slot `seq & mask` holds `seq` when `lens` is not 0;
    /// only numbers in `[next_seq, next_seq + capacity)` are held.
    pub(super) slots: Box<[[u8; SLOT_BYTES]]>,
    pub(super) lens: Box<[u8]>,
    pub(super) mask: u64,
    pub(super) buffered: usize,
    /// Highest number dropped because it did not fit the reorder buffer.
    pub(super) overflow_max: u64,
    pub(super) requests: Box<[Request]>,
    pub(super) requests_active: usize,
    /// Every missing number below this is covered by a request in flight.
    pub(super) watermark: u64,
    pub(super) mode: RecoveryMode,
    /// A multicast packet (data or heartbeat) has been seen.
    pub(super) live_seen: bool,
    /// One past the session's last message, once its end was announced.
    pub(super) end_seq: Option<u64>,
    pub(super) last_activity_ns: u64,
    pub(super) stale: bool,
    pub(super) loss: Option<LossFilter>,
    pub(super) stats: ConsumerStats,
    pub(super) stale_timeout_ns: u64,
    pub(super) re_request_timeout_ns: u64,
    pub(super) re_request_retries: u32,
    pub(super) replay_gap_messages: u64,
    pub(super) retention_messages: u64,
    pub(super) replay_phase: ReplayPhase,
    /// The newest number when the replay feed took over, and whether the
    /// consumer may go back to multicast once past it (with gaps after it
    /// left to re-requests) rather than only once fully caught up.
    pub(super) replay_target: u64,
    pub(super) replay_early_exit: bool,
    /// The number of the next Sequenced Data packet on the replay connection.
    pub(super) replay_expected_seq: u64,
    pub(super) replay_retry_at_ns: u64,
    pub(super) replay_backoff_ns: u64,
    pub(super) replay_since_ns: u64,
    pub(super) replay_last_recv_ns: u64,
    pub(super) replay_last_sent_ns: u64,
    /// The replay connection must be dropped (rejected, protocol error).
    pub(super) replay_broken: bool,
}

impl Core {
    pub(super) fn capacity(&self) -> u64 {
        self.mask + 1
    }

    pub(super) fn accept_session(&mut self, session: Session) -> bool {
        if self.session_known {
            return session == self.session;
        }
        self.session = session;
        self.session_known = true;
        true
    }

    pub(super) fn note_newest(&mut self, seq: u64) {
        if seq > self.newest_seq {
            self.newest_seq = seq;
        }
    }

    /// Whether `seq` (in the reorder window) is buffered.
    #[inline]
    pub(super) fn is_buffered(&self, seq: u64) -> bool {
        self.lens[(seq & self.mask) as usize] != 0
    }

    pub(super) fn count_recovered(&mut self, source: Source) {
        match source {
            Source::Multicast => {}
            Source::Retransmit => self.stats.recovered_by_retransmit += 1,
            Source::Replay => self.stats.recovered_by_replay += 1,
        }
    }

    /// Takes message `seq` from any source: delivers it (and whatever it
    /// unblocks) when it is next, buffers it when it is ahead, drops it when
    /// it is a duplicate or too far ahead.
    #[inline]
    pub(super) fn insert(
        &mut self,
        seq: u64,
        message: &[u8],
        source: Source,
        on_message: &mut impl FnMut(u64, Message<'_>),
    ) {
        if seq < self.next_seq {
            self.stats.duplicates_discarded += 1;
            return;
        }
        if seq == self.next_seq {
            debug_assert!(
                !self.is_buffered(seq),
                "the next message is never left buffered"
            );
            self.count_recovered(source);
            self.deliver(seq, message, on_message);
            self.drain(on_message);
            return;
        }
        if seq - self.next_seq >= self.capacity() {
            self.stats.reorder_overflows += 1;
            self.overflow_max = self.overflow_max.max(seq);
            return;
        }
        let index = (seq & self.mask) as usize;
        if self.lens[index] != 0 {
            self.stats.duplicates_discarded += 1;
            return;
        }
        if message.is_empty() || message.len() > SLOT_BYTES {
            self.lens[index] = SLOT_UNDECODABLE;
        } else {
            self.slots[index][..message.len()].copy_from_slice(message);
            self.lens[index] = message.len() as u8;
        }
        self.buffered += 1;
        self.count_recovered(source);
    }

    #[inline]
    pub(super) fn deliver(
        &mut self,
        seq: u64,
        bytes: &[u8],
        on_message: &mut impl FnMut(u64, Message<'_>),
    ) {
        assert_eq!(seq, self.next_seq, "delivery strictly in order");
        match Message::parse(bytes) {
            Ok(message) => {
                on_message(seq, message);
                self.stats.messages_delivered += 1;
            }
            Err(_) => self.stats.undecodable_messages += 1,
        }
        self.next_seq = seq + 1;
        self.note_newest(seq);
    }

    /// Delivers buffered messages from `next_seq` on while they are there.
    pub(super) fn drain(&mut self, on_message: &mut impl FnMut(u64, Message<'_>)) {
        while self.buffered > 0 {
            let index = (self.next_seq & self.mask) as usize;
            let len = self.lens[index];
            if len == 0 {
                break;
            }
            self.lens[index] = 0;
            self.buffered -= 1;
            let slot = self.slots[index];
            let bytes: &[u8] = if len == SLOT_UNDECODABLE {
                &[]
            } else {
                &slot[..usize::from(len)]
            };
            self.deliver(self.next_seq, bytes, on_message);
        }
    }

    pub(super) fn on_multicast(
        &mut self,
        datagram: &[u8],
        now_ns: u64,
        on_message: &mut impl FnMut(u64, Message<'_>),
    ) {
        self.stats.datagrams += 1;
        if let Some(loss) = &mut self.loss {
            if loss.drop_next() {
                self.stats.datagrams_dropped_by_loss_filter += 1;
                return;
            }
        }
        let Some(packet) = self.parse_ours(datagram) else {
            return;
        };
        self.last_activity_ns = now_ns;
        self.live_seen = true;
        let sequence = packet.sequence();
        if !self.synced {
            // Live join: the stream starts here for us.
            self.next_seq = sequence.max(1);
            self.synced = true;
        }
        match packet.kind() {
            PacketKind::Heartbeat => {
                self.stats.heartbeats += 1;
                self.note_newest(sequence.saturating_sub(1));
            }
            PacketKind::EndOfSession => {
                self.end_seq = Some(sequence);
                self.note_newest(sequence.saturating_sub(1));
            }
            PacketKind::Data => {
                let last = packet.next_seq().saturating_sub(1);
                if last < self.next_seq {
                    // Everything in it was delivered already.
                    self.stats.duplicates_discarded += u64::from(packet.count());
                    return;
                }
                for (seq, message) in packet.messages() {
                    self.insert(seq, message, Source::Multicast, on_message);
                }
                self.note_newest(last);
            }
        }
    }

    /// `datagram` as a packet of our session; none (counted) when it is
    /// malformed or of another session.
    #[inline]
    fn parse_ours<'a>(&mut self, datagram: &'a [u8]) -> Option<MoldPacket<'a>> {
        let Ok(packet) = MoldPacket::parse(datagram) else {
            self.stats.malformed_datagrams += 1;
            return None;
        };
        if !self.accept_session(packet.session()) {
            self.stats.wrong_session += 1;
            return None;
        }
        Some(packet)
    }

    pub(super) fn on_retransmit(
        &mut self,
        from: SocketAddrV4,
        datagram: &[u8],
        now_ns: u64,
        on_message: &mut impl FnMut(u64, Message<'_>),
    ) {
        if from != self.retransmit_addr || !self.synced {
            self.stats.foreign_datagrams += 1;
            return;
        }
        let Some(packet) = self.parse_ours(datagram) else {
            return;
        };
        if packet.kind() != PacketKind::Data {
            return;
        }
        self.last_activity_ns = now_ns;
        for (seq, message) in packet.messages() {
            self.insert(seq, message, Source::Retransmit, on_message);
        }
        self.note_newest(packet.next_seq().saturating_sub(1));
    }

    /// Handles one frame from the replay feed.
    pub(super) fn on_replay_frame(
        &mut self,
        frame: &[u8],
        now_ns: u64,
        on_message: &mut impl FnMut(u64, Message<'_>),
    ) {
        let Ok(packet) = ServerPacket::parse(frame) else {
            self.stats.replay_protocol_errors += 1;
            self.replay_broken = true;
            return;
        };
        match packet {
            ServerPacket::LoginAccepted { session, next_seq } => {
                if self.replay_phase != ReplayPhase::LoggingIn || !self.accept_session(session) {
                    self.stats.replay_protocol_errors += 1;
                    self.replay_broken = true;
                    return;
                }
                self.replay_phase = ReplayPhase::Streaming;
                self.replay_expected_seq = next_seq.max(1);
                self.replay_backoff_ns = REPLAY_BACKOFF_MIN_NS;
            }
            ServerPacket::LoginRejected { reason } => {
                self.stats.replay_login_rejected += 1;
                self.replay_broken = true;
                // Credentials do not fix themselves: try again slowly.
                self.replay_backoff_ns = REPLAY_BACKOFF_MAX_NS;
                tracing::warn!(
                    reason = %char::from(reason),
                    "replay feed rejected the login"
                );
            }
            ServerPacket::Sequenced(message) => {
                if self.replay_phase != ReplayPhase::Streaming {
                    self.stats.replay_protocol_errors += 1;
                    self.replay_broken = true;
                    return;
                }
                let seq = self.replay_expected_seq;
                self.replay_expected_seq += 1;
                self.last_activity_ns = now_ns;
                self.insert(seq, message, Source::Replay, on_message);
                self.note_newest(seq);
            }
            ServerPacket::Heartbeat => self.last_activity_ns = now_ns,
            ServerPacket::EndOfSession => {
                if self.replay_phase == ReplayPhase::Streaming {
                    self.end_seq = Some(self.replay_expected_seq);
                }
            }
            ServerPacket::Debug(text) => {
                self.stats.replay_debug_packets += 1;
                tracing::warn!(
                    text = %String::from_utf8_lossy(text),
                    "replay feed debug packet"
                );
            }
        }
    }

    pub(super) fn is_stale(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_activity_ns) > self.stale_timeout_ns
    }

    pub(super) fn is_ended(&self) -> bool {
        self.end_seq.is_some_and(|end| self.next_seq >= end)
    }

    /// In replay mode: whether live multicast can take over now without a
    /// gap: nothing dropped for overflow is still ahead, and either
    /// everything seen anywhere is delivered, or (after an overflow, a large
    /// or an old gap, when re-requests still work) the replay has delivered
    /// past what was newest when it took over, so what is missing beyond is
    /// ordinary loss for re-requests. After unanswered re-requests, and for a
    /// late join, only full catch-up counts.
    pub(super) fn caught_up(&self) -> bool {
        self.is_ended()
            || (self.live_seen
                && self.next_seq > self.overflow_max
                && (self.next_seq > self.newest_seq
                    || (self.replay_early_exit && self.next_seq > self.replay_target)))
    }

    pub(super) fn enter_replay(&mut self, reason: ReplayReason, now_ns: u64) {
        match reason {
            ReplayReason::LateJoin => self.stats.replay_for_late_join += 1,
            ReplayReason::Unanswered => self.stats.replay_for_unanswered += 1,
            ReplayReason::Overflow => self.stats.replay_for_overflow += 1,
            ReplayReason::LargeGap => self.stats.replay_for_large_gap += 1,
            ReplayReason::Retention => self.stats.replay_for_retention += 1,
        }
        self.mode = RecoveryMode::Replay;
        self.replay_target = self.newest_seq;
        self.replay_early_exit = matches!(
            reason,
            ReplayReason::Overflow | ReplayReason::LargeGap | ReplayReason::Retention
        );
        self.requests.iter_mut().for_each(|r| r.active = false);
        self.requests_active = 0;
        self.watermark = 0;
        self.replay_phase = ReplayPhase::Idle;
        self.replay_retry_at_ns = now_ns;
        self.replay_backoff_ns = REPLAY_BACKOFF_MIN_NS;
    }

    pub(super) fn leave_replay(&mut self) {
        self.stats.replay_switchbacks += 1;
        self.mode = RecoveryMode::Live;
        self.watermark = self.next_seq;
        self.replay_phase = ReplayPhase::Idle;
    }

    /// The replay connection was lost or refused: try again after a backoff.
    pub(super) fn replay_failed(&mut self, now_ns: u64) {
        self.replay_phase = ReplayPhase::Idle;
        self.replay_broken = false;
        self.replay_retry_at_ns = now_ns + self.replay_backoff_ns;
        self.replay_backoff_ns = (self.replay_backoff_ns * 2).min(REPLAY_BACKOFF_MAX_NS);
    }

    pub(super) fn send_request(
        &mut self,
        request: &mut Request,
        now_ns: u64,
        socket: &mut UdpSocketRing,
    ) -> io::Result<()> {
        let count = (request.end - request.first).min(REQUEST_COUNT_MAX) as u16;
        let datagram = ReRequest::new(self.session, request.first, count);
        request.sent_at_ns = now_ns;
        match socket.send_to(self.retransmit_addr, datagram.as_bytes()) {
            Ok(()) => {
                self.stats.re_requests_sent += 1;
                Ok(())
            }
            // Every send slot in flight: as good as lost; the timeout retries.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Live mode: advances, retries or retires re-requests, switches to the
    /// replay feed when they go unanswered, and asks for new gaps.
    pub(super) fn maintain_live(
        &mut self,
        now_ns: u64,
        socket: &mut UdpSocketRing,
    ) -> io::Result<usize> {
        let (work, replaying) = self.retry_requests(now_ns, socket)?;
        if replaying {
            return Ok(work);
        }
        if self.overflow_max >= self.next_seq {
            self.enter_replay(ReplayReason::Overflow, now_ns);
            return Ok(work + 1);
        }
        if self.newest_seq < self.next_seq {
            return Ok(work);
        }
        Ok(work + self.request_new_gaps(now_ns, socket)?)
    }

    /// Advances each re-request past what arrived, retires the answered,
    /// asks again for the rest or after the timeout; switches to the replay
    /// feed when one goes unanswered. The work done, and whether it
    /// switched.
    fn retry_requests(
        &mut self,
        now_ns: u64,
        socket: &mut UdpSocketRing,
    ) -> io::Result<(usize, bool)> {
        let mut work = 0;
        for index in 0..self.requests.len() {
            let mut request = self.requests[index];
            if !request.active {
                continue;
            }
            let before = request.first;
            request.first = request.first.max(self.next_seq);
            while request.first < request.end && self.is_buffered(request.first) {
                request.first += 1;
            }
            if request.first >= request.end {
                request.active = false;
                self.requests_active -= 1;
            } else if request.first != before {
                // Answered in part (a reply holds one datagram's worth): ask
                // for the rest at once.
                request.attempts = 0;
                self.send_request(&mut request, now_ns, socket)?;
                work += 1;
            } else if now_ns.saturating_sub(request.sent_at_ns) >= self.re_request_timeout_ns {
                if request.attempts >= self.re_request_retries {
                    self.enter_replay(ReplayReason::Unanswered, now_ns);
                    return Ok((work + 1, true));
                }
                request.attempts += 1;
                self.stats.re_request_timeouts += 1;
                self.send_request(&mut request, now_ns, socket)?;
                work += 1;
            }
            self.requests[index] = request;
        }
        Ok((work, false))
    }

    /// New gaps: scans from the watermark to the newest number seen and
    /// re-requests each (switching to the replay feed for one too large or
    /// too old to re-request). The work done.
    fn request_new_gaps(&mut self, now_ns: u64, socket: &mut UdpSocketRing) -> io::Result<usize> {
        let mut work = 0;
        let limit = (self.newest_seq + 1).min(self.next_seq + self.capacity());
        let mut seq = self.watermark.max(self.next_seq);
        while seq < limit {
            if self.is_buffered(seq) {
                seq += 1;
                continue;
            }
            if self.requests_active == self.requests.len() {
                break;
            }
            let mut end = seq + 1;
            while end < limit && !self.is_buffered(end) && end - seq < REQUEST_COUNT_MAX {
                end += 1;
            }
            self.stats.gaps_detected += 1;
            if end - seq >= self.replay_gap_messages {
                self.enter_replay(ReplayReason::LargeGap, now_ns);
                return Ok(work + 1);
            }
            if seq < (self.newest_seq + 1).saturating_sub(self.retention_messages) {
                self.enter_replay(ReplayReason::Retention, now_ns);
                return Ok(work + 1);
            }
            let slot = self
                .requests
                .iter()
                .position(|r| !r.active)
                .expect("a free request slot (checked above)");
            let mut request = Request {
                first: seq,
                end,
                sent_at_ns: now_ns,
                attempts: 0,
                active: true,
            };
            self.send_request(&mut request, now_ns, socket)?;
            self.requests[slot] = request;
            self.requests_active += 1;
            work += 1;
            seq = end;
        }
        self.watermark = seq;
        Ok(work)
    }

    pub(super) fn has_gap(&self) -> bool {
        self.synced && self.newest_seq >= self.next_seq
    }
}

/// Feeds bytes from the replay connection through the frame decoder into the
/// core. A decoder error marks the connection broken.
pub(super) fn feed_replay(
    decoder: &mut FrameDecoder,
    core: &mut Core,
    bytes: &[u8],
    now_ns: u64,
    on_message: &mut impl FnMut(u64, Message<'_>),
) {
    core.replay_last_recv_ns = now_ns;
    let mut rest = bytes;
    while !core.replay_broken {
        let taken = decoder.extend(rest);
        rest = &rest[taken..];
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => core.on_replay_frame(frame, now_ns, on_message),
                Ok(None) => break,
                Err(_) => {
                    core.stats.replay_protocol_errors += 1;
                    core.replay_broken = true;
                    break;
                }
            }
            if core.replay_broken {
                break;
            }
        }
        if rest.is_empty() {
            break;
        }
        if taken == 0 && decoder.room() == 0 {
            // Cannot happen: draining every frame leaves at most one partial
            // frame, smaller than the buffer.
            core.replay_broken = true;
        }
    }
}
