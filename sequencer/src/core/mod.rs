//! The sequencer core: a deterministic state machine that numbers messages.
//!
//! It takes [`Inbound`] messages from the gateway ring, checks each client's
//! numbering (the core is the authority for every client's last sequenced
//! client_seq), stamps the timestamp, assigns stream sequence numbers, packs
//! MoldUDP64 packets up to the payload limit, appends each packet to the
//! journal, publishes it, and only then answers the gateway with an
//! [`Outcome`]. Time comes in as `now_ns`; the journal and the transport are
//! traits; so tests and benchmarks run it on one thread with a simulated
//! clock, a null journal and a null or lossy transport.
//!
//! Natural batching: every poll drains what is waiting (up to a bound), so a
//! lone message goes out at once and a burst fills packets. Nothing here
//! allocates after [`SequencerCore::new`].

use std::io;

use tally_gateway::link::{Inbound, Outcome, OutcomeKind};
use tally_wire::mold::{self, MoldHeader, Session};
use tally_wire::{header_mut, system_code, SystemEvent};

use crate::journal::{JournalWriter, WriteError, RECORD_HEADER_BYTES};

/// Where packets are journaled before they are published.
///
/// A journal says how far it is durable in its fsync policy's sense
/// ([`Journal::durable_next_seq`]); the core publishes a packet and
/// acknowledges its messages only below that number. A journal that writes
/// at once (policies `none`, `interval`) is durable as soon as `append`
/// returns; a group-commit journal (`batch`) becomes durable later, as
/// [`Journal::poll_durable`] reports.
pub trait Journal {
    /// Appends one packet's message blocks. An error is fatal.
    fn append(
        &mut self,
        first_seq: u64,
        count: u16,
        blocks: &[u8],
        now_ns: u64,
    ) -> Result<(), WriteError>;
    /// Bytes that can be appended now.
    fn room_bytes(&self) -> usize;
    /// End of a duty cycle: hand what was appended to the disk.
    fn submit(&mut self, now_ns: u64) -> Result<(), WriteError>;
    /// Reaps completions; every message below the returned number is durable.
    fn poll_durable(&mut self) -> Result<u64, WriteError>;
    /// Every message below this number is durable.
    fn durable_next_seq(&self) -> u64;
    /// Writes the end-of-session marker and makes everything durable.
    fn end_session(&mut self) -> Result<(), WriteError>;
    /// Makes everything durable, waiting for it (shutdown).
    fn sync(&mut self) -> Result<(), WriteError>;
}

impl Journal for JournalWriter {
    fn append(
        &mut self,
        first_seq: u64,
        count: u16,
        blocks: &[u8],
        now_ns: u64,
    ) -> Result<(), WriteError> {
        JournalWriter::append(self, first_seq, count, blocks, now_ns)
    }
    fn room_bytes(&self) -> usize {
        JournalWriter::room_bytes(self)
    }
    fn submit(&mut self, now_ns: u64) -> Result<(), WriteError> {
        JournalWriter::submit(self, now_ns)
    }
    fn poll_durable(&mut self) -> Result<u64, WriteError> {
        JournalWriter::poll_durable(self)
    }
    fn durable_next_seq(&self) -> u64 {
        JournalWriter::durable_next_seq(self)
    }
    fn end_session(&mut self) -> Result<(), WriteError> {
        JournalWriter::end_session(self)
    }
    fn sync(&mut self) -> Result<(), WriteError> {
        JournalWriter::sync(self)
    }
}

/// A journal that keeps nothing and is always durable (benchmarks).
#[derive(Debug, Default)]
pub struct NullJournal;

impl Journal for NullJournal {
    fn append(&mut self, _: u64, _: u16, _: &[u8], _: u64) -> Result<(), WriteError> {
        Ok(())
    }
    fn room_bytes(&self) -> usize {
        usize::MAX
    }
    fn submit(&mut self, _: u64) -> Result<(), WriteError> {
        Ok(())
    }
    fn poll_durable(&mut self) -> Result<u64, WriteError> {
        Ok(u64::MAX)
    }
    fn durable_next_seq(&self) -> u64 {
        u64::MAX
    }
    fn end_session(&mut self) -> Result<(), WriteError> {
        Ok(())
    }
    fn sync(&mut self) -> Result<(), WriteError> {
        Ok(())
    }
}

/// Where finished packets go: the multicast stream.
pub trait Publisher {
    /// Queues one complete MoldUDP64 packet for sending (it may go at once).
    /// `Err(WouldBlock)` when every send slot is in flight: nothing was
    /// queued, the core holds the packet and offers it again on a later
    /// cycle (back-pressure, never a wait). Any other error is counted by
    /// the caller and not fatal: the packet is journaled and receivers
    /// gap-fill.
    fn publish(&mut self, packet: &[u8]) -> io::Result<()>;
    /// Waits up to `timeout` for a send slot to free (shutdown only).
    fn wait_for_room(&mut self, _timeout: std::time::Duration) -> io::Result<()> {
        Ok(())
    }
    /// Sends everything queued. The core calls it at the end of each duty
    /// cycle, so one batch costs one submission.
    fn submit(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A publisher that drops everything (benchmarks).
#[derive(Debug, Default)]
pub struct NullPublisher;

impl Publisher for NullPublisher {
    fn publish(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// The core's settings.
#[derive(Clone, Copy, Debug)]
pub struct CoreConfig {
    /// The stream session name.
    pub session: Session,
    /// Largest MoldUDP64 datagram, header included.
    pub payload_limit_bytes: usize,
    /// Heartbeat after this long without sending.
    pub heartbeat_interval_ns: u64,
    /// Most messages taken from the ring in one poll.
    pub batch_messages_max: usize,
}

tally_runtime::counter_set! {
    /// The counters the core keeps.
    pub struct CoreCounters, prefix "sequencer.";
    /// Messages given a sequence number.
    messages_sequenced,
    /// Stream packets handed to the publisher.
    packets_sent,
    /// Bytes of those packets.
    bytes_sent,
    /// Duty cycles that took commands from the gateway's ring.
    batches,
    /// Heartbeat packets sent while idle.
    heartbeats_sent,
    /// Commands whose client_seq was not above the origin's last (resends).
    duplicates_dropped,
    /// Commands whose client_seq skipped past the origin's next (refused).
    skipped_ahead,
    /// Gateway rejects sequenced (`j`).
    gateway_rejects,
    /// Times the ack ring to the gateway was full.
    ack_ring_full,
    /// Publisher send errors.
    send_errors,
    /// Gauge: the sequence number the next message gets.
    next_seq,
    /// Polls that took nothing because packets and acknowledgements waiting
    /// for the journal's group commit filled what may be held.
    durability_waits,
    /// Packets held until their journal record was durable.
    packets_held,
    /// Times a packet found every publisher send slot in flight and was
    /// held for a later cycle.
    publisher_full,
}

/// Number of distinct origins (client ids are u16).
const ORIGINS: usize = 1 << 16;

/// Packets the core holds at most while their journal records become durable
/// (group commit): with a sync every few hundred microseconds and full
/// packets, far more than the stream's rate needs.
pub const HELD_PACKETS_MAX: usize = 1024;
/// Acknowledgements the core holds at most while their messages become
/// durable.
pub const HELD_OUTCOMES_MAX: usize = 65_536;

/// Packets waiting for their journal record to be durable, oldest first: a
/// fixed ring of packet-sized slots.
struct HeldPackets {
    bytes: Box<[u8]>,
    slot_bytes: usize,
    lens: Box<[usize]>,
    /// Sequence number after each packet's last message.
    end_seqs: Box<[u64]>,
    head: usize,
    len: usize,
}

impl HeldPackets {
    fn new(slot_bytes: usize) -> Self {
        HeldPackets {
            bytes: vec![0u8; HELD_PACKETS_MAX * slot_bytes].into_boxed_slice(),
            slot_bytes,
            lens: vec![0; HELD_PACKETS_MAX].into_boxed_slice(),
            end_seqs: vec![0; HELD_PACKETS_MAX].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    fn push(&mut self, packet: &[u8], end_seq: u64) {
        assert!(self.len < HELD_PACKETS_MAX, "held packet room was checked");
        let slot = (self.head + self.len) % HELD_PACKETS_MAX;
        let start = slot * self.slot_bytes;
        self.bytes[start..start + packet.len()].copy_from_slice(packet);
        self.lens[slot] = packet.len();
        self.end_seqs[slot] = end_seq;
        self.len += 1;
    }

    /// The oldest packet, if every message in it is below `durable_next_seq`.
    fn front_if_durable(&self, durable_next_seq: u64) -> Option<&[u8]> {
        if self.len == 0 || self.end_seqs[self.head] > durable_next_seq {
            return None;
        }
        let start = self.head * self.slot_bytes;
        Some(&self.bytes[start..start + self.lens[self.head]])
    }

    /// Sequence number after the oldest packet's last message.
    fn front_end_seq(&self) -> u64 {
        assert!(self.len > 0);
        self.end_seqs[self.head]
    }

    fn pop(&mut self) {
        assert!(self.len > 0);
        self.head = (self.head + 1) % HELD_PACKETS_MAX;
        self.len -= 1;
    }
}

/// The sequencer state machine. See the module doc.
pub struct SequencerCore<J: Journal, P: Publisher> {
    config: CoreConfig,
    journal: J,
    publisher: P,
    next_seq: u64,
    /// Last sequenced client_seq per origin; origin 0 is the appliance.
    last_client_seq: Box<[u32]>,
    packet: Box<[u8]>,
    packet_len: usize,
    packet_count: u16,
    packet_first_seq: u64,
    /// Outcomes of the current batch, each with the sequence number below
    /// which the journal must be durable before it is sent.
    pending: Vec<(Outcome, u64)>,
    /// Packets journaled but not yet durable (group commit).
    held_packets: HeldPackets,
    /// Outcomes waiting for durability and publication, or for room in the
    /// outcome ring.
    held_outcomes: std::collections::VecDeque<(Outcome, u64)>,
    /// Every message below this was handed to the publisher (an outcome is
    /// sent only after its packet).
    published_next_seq: u64,
    /// The least number of messages any packet holds (all of the largest
    /// size): bounds the packets a batch can make.
    messages_per_packet_min: usize,
    last_send_ns: u64,
    counters: CoreCounters,
    ended: bool,
    /// `S(E)` was sequenced: the session ends after the authority's next
    /// `S` (its `S(F)`), or when the caller's grace runs out.
    closing: bool,
    /// The authority's `S` was sequenced while closing: end the session now.
    authority_closed: bool,
}

impl<J: Journal, P: Publisher> SequencerCore<J, P> {
    /// A core that continues the stream at `next_seq`, with each origin's last
    /// sequenced client_seq from `last_client_seq(origin)` (rebuilt from the
    /// journal by the caller).
    pub fn new(
        config: CoreConfig,
        journal: J,
        publisher: P,
        next_seq: u64,
        last_client_seq: &[(u16, u32)],
        counters: CoreCounters,
    ) -> Self {
        assert!(next_seq >= 1);
        assert!(config.payload_limit_bytes > MoldHeader::SIZE + 2 + tally_wire::MAX_MESSAGE_SIZE);
        assert!(config.batch_messages_max > 0);
        let mut table = vec![0u32; ORIGINS].into_boxed_slice();
        for &(origin, client_seq) in last_client_seq {
            table[usize::from(origin)] = client_seq;
        }
        counters.next_seq.set(next_seq);
        SequencerCore {
            packet: vec![0u8; config.payload_limit_bytes].into_boxed_slice(),
            pending: Vec::with_capacity(config.batch_messages_max),
            held_packets: HeldPackets::new(config.payload_limit_bytes),
            held_outcomes: std::collections::VecDeque::with_capacity(HELD_OUTCOMES_MAX),
            messages_per_packet_min: (config.payload_limit_bytes - MoldHeader::SIZE)
                / (2 + tally_wire::MAX_MESSAGE_SIZE),
            config,
            journal,
            publisher,
            next_seq,
            last_client_seq: table,
            packet_len: MoldHeader::SIZE,
            packet_count: 0,
            packet_first_seq: next_seq,
            published_next_seq: next_seq,
            last_send_ns: 0,
            counters,
            ended: false,
            closing: false,
            authority_closed: false,
        }
    }

    /// Sequence number the next message gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last sequenced client_seq of `origin`.
    pub fn last_client_seq(&self, origin: u16) -> u32 {
        self.last_client_seq[usize::from(origin)]
    }

    /// The journal (tests, shutdown).
    pub fn journal_mut(&mut self) -> &mut J {
        &mut self.journal
    }

    /// The publisher (tests).
    pub fn publisher_mut(&mut self) -> &mut P {
        &mut self.publisher
    }

    /// Whether the session has ended.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Whether `S(E)` was sequenced (the session is closing).
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Whether the authority has closed the session (its `S` sequenced after
    /// `S(E)`): the caller ends the session now.
    pub fn authority_closed(&self) -> bool {
        self.authority_closed
    }

    /// Starts a rollover: sequences the appliance's `S(E)` (end of session
    /// requested) and publishes it. From then on, the first `S` message from
    /// a client (origin ≠ 0: the gateway lets only the authority send `S`)
    /// sets [`Self::authority_closed`], and nothing after it is taken in
    /// this session. The core reads the type byte and the origin only, as
    /// ever, never a body. Returns its sequence number (0 when the session
    /// already ended or was already closing).
    pub fn request_end(&mut self, now_ns: u64) -> Result<u64, WriteError> {
        if self.ended || self.closing {
            return Ok(0);
        }
        let seq = self.sequence_system_event(system_code::END_REQUESTED, now_ns)?;
        self.flush(now_ns)?;
        self.journal.submit(now_ns)?;
        self.submit();
        self.closing = true;
        Ok(seq)
    }

    /// Marks a session recovered from a journal holding `S(E)` as closing
    /// (a restart in the middle of a rollover).
    pub fn resume_closing(&mut self) {
        self.closing = true;
    }

    /// Packets and outcomes waiting for the journal (or for ring room).
    pub fn held(&self) -> (usize, usize) {
        (self.held_packets.len, self.held_outcomes.len())
    }

    /// Opens the session: a brand-new stream starts with the appliance's
    /// start-of-session event `S(O)`; a resumed one sends a heartbeat so
    /// receivers learn the next number at once.
    pub fn start(&mut self, now_ns: u64) -> Result<(), WriteError> {
        if self.next_seq == 1 {
            self.sequence_system_event(system_code::START_OF_SESSION, now_ns)?;
            self.flush(now_ns)?;
            self.journal.submit(now_ns)?;
        } else {
            self.heartbeat(now_ns);
        }
        self.submit();
        Ok(())
    }

    /// One duty cycle: releases packets and outcomes whose journal records
    /// became durable; takes up to `batch_messages_max` messages from
    /// `inbound` (fewer when the outcome ring, the held-packet ring or the
    /// journal's staging has less room: back-pressure, never a wait),
    /// sequences and journals them, publishes what is durable and hands
    /// those outcomes to `outcomes`. Sends a heartbeat when idle past the
    /// interval. Returns the work done.
    pub fn poll(
        &mut self,
        inbound: &mut rtrb::Consumer<Inbound>,
        outcomes: &mut rtrb::Producer<Outcome>,
        now_ns: u64,
    ) -> Result<usize, WriteError> {
        if self.ended || self.authority_closed {
            return Ok(0);
        }
        let durable = self.journal.poll_durable()?;
        let released = self.release(durable, outcomes);
        let ring_room = outcomes.slots().saturating_sub(self.held_outcomes.len());
        let room = ring_room
            .min(self.config.batch_messages_max)
            .min(HELD_OUTCOMES_MAX - self.held_outcomes.len())
            .min(self.held_packet_room_messages())
            .min(self.journal_room_messages());
        let waiting = inbound.slots();
        if room == 0 {
            if waiting > 0 {
                if ring_room == 0 {
                    self.counters.ack_ring_full.increment();
                } else {
                    self.counters.durability_waits.increment();
                }
            }
            self.journal.submit(now_ns)?;
            return Ok(released);
        }
        let take = waiting.min(room);
        if take == 0 {
            self.journal.submit(now_ns)?;
            let idle = self.held_packets.len == 0 && self.held_outcomes.is_empty();
            if idle && now_ns.saturating_sub(self.last_send_ns) >= self.config.heartbeat_interval_ns
            {
                self.heartbeat(now_ns);
                self.submit();
                return Ok(released + 1);
            }
            return Ok(released);
        }
        let chunk = inbound
            .read_chunk(take)
            .expect("read_chunk of at most slots() cannot fail");
        let (first, second) = chunk.as_slices();
        let mut taken = 0;
        for message in first.iter().chain(second.iter()) {
            self.sequence_inbound(message, now_ns)?;
            taken += 1;
            if self.authority_closed {
                // Nothing after the authority's close in this session.
                break;
            }
        }
        chunk.commit(taken);
        let take = taken;
        self.flush(now_ns)?;
        self.journal.submit(now_ns)?;
        self.counters.batches.increment();
        self.submit();
        let sendable = self.journal.durable_next_seq().min(self.published_next_seq);
        for (outcome, needed) in self.pending.drain(..) {
            if self.held_outcomes.is_empty() && needed <= sendable {
                // Room was checked above; a failure here is a bug.
                outcomes
                    .push(outcome)
                    .expect("outcome ring has the room checked before the batch");
            } else {
                self.held_outcomes.push_back((outcome, needed));
            }
        }
        Ok(released + take)
    }

    /// Ends the session: sequences `S(C)`, flushes, writes the journal's
    /// end-of-session marker (everything durable), publishes what was held
    /// and the MoldUDP64 end-of-session packet. Nothing is sequenced after
    /// this.
    pub fn end_session(
        &mut self,
        outcomes: &mut rtrb::Producer<Outcome>,
        now_ns: u64,
    ) -> Result<(), WriteError> {
        if self.ended {
            return Ok(());
        }
        self.sequence_system_event(system_code::END_OF_SESSION, now_ns)?;
        self.flush(now_ns)?;
        self.journal.end_session()?;
        self.release_all(outcomes);
        let len = mold::write_end_of_session(&mut self.packet, self.config.session, self.next_seq);
        if !self.send(len, now_ns) {
            let _ = self
                .publisher
                .wait_for_room(std::time::Duration::from_secs(1));
            self.send(len, now_ns);
        }
        self.submit();
        self.ended = true;
        Ok(())
    }

    /// Flushes what is pending, makes the journal durable (waiting for it),
    /// then publishes what was held and hands over the outcomes that fit
    /// (shutdown).
    pub fn shutdown(
        &mut self,
        outcomes: &mut rtrb::Producer<Outcome>,
        now_ns: u64,
    ) -> Result<(), WriteError> {
        self.flush(now_ns)?;
        self.journal.sync()?;
        self.release_all(outcomes);
        self.submit();
        Ok(())
    }

    /// Publishes held packets, then hands over held outcomes, whose messages
    /// are below `durable_next_seq`, oldest first. Returns how many.
    fn release(&mut self, durable_next_seq: u64, outcomes: &mut rtrb::Producer<Outcome>) -> usize {
        let mut released = 0;
        while let Some(packet) = self.held_packets.front_if_durable(durable_next_seq) {
            // Contiguous numbering, the publishing side (every receiver
            // asserts the same when it delivers): each packet starts where
            // the last one ended.
            let first_seq =
                u64::from_be_bytes(packet[10..18].try_into().expect("a MoldUDP64 header"));
            assert_eq!(
                first_seq, self.published_next_seq,
                "packets leave in sequence"
            );
            let len = packet.len();
            match self.publisher.publish(packet) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.counters.publisher_full.increment();
                    break;
                }
                result => self.count_send(result, len),
            }
            self.published_next_seq = self.held_packets.front_end_seq();
            self.held_packets.pop();
            released += 1;
        }
        if released > 0 {
            self.submit();
        }
        let sendable = durable_next_seq.min(self.published_next_seq);
        while let Some(&(outcome, needed)) = self.held_outcomes.front() {
            if needed > sendable || outcomes.push(outcome).is_err() {
                break;
            }
            self.held_outcomes.pop_front();
            released += 1;
        }
        released
    }

    /// At shutdown: releases everything durable, waiting (bounded) for the
    /// publisher's send slots.
    fn release_all(&mut self, outcomes: &mut rtrb::Producer<Outcome>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            self.release(self.journal.durable_next_seq(), outcomes);
            let now = std::time::Instant::now();
            if self.held_packets.len == 0 || now >= deadline {
                return;
            }
            if self.publisher.wait_for_room(deadline - now).is_err() {
                return;
            }
        }
    }

    /// Messages a batch may take so that its packets fit the held-packet ring.
    fn held_packet_room_messages(&self) -> usize {
        let free = HELD_PACKETS_MAX - self.held_packets.len;
        free.saturating_sub(2) * self.messages_per_packet_min
    }

    /// Messages a batch may take so that its records fit the journal's room.
    fn journal_room_messages(&self) -> usize {
        let room = self.journal.room_bytes();
        if room == usize::MAX {
            return usize::MAX;
        }
        let reserve = 2 * (RECORD_HEADER_BYTES + self.config.payload_limit_bytes);
        room.saturating_sub(reserve) / (2 + tally_wire::MAX_MESSAGE_SIZE + RECORD_HEADER_BYTES)
    }

    fn sequence_inbound(&mut self, inbound: &Inbound, now_ns: u64) -> Result<(), WriteError> {
        let origin = inbound.origin;
        let last = self.last_client_seq[usize::from(origin)];
        let kind = if inbound.client_seq <= last {
            self.counters.duplicates_dropped.increment();
            Some(OutcomeKind::Duplicate)
        } else if inbound.client_seq != last.wrapping_add(1) {
            self.counters.skipped_ahead.increment();
            Some(OutcomeKind::SkippedAhead)
        } else {
            None
        };
        if let Some(kind) = kind {
            self.pending.push((
                Outcome {
                    origin,
                    client_seq: inbound.client_seq,
                    stream_seq: 0,
                    timestamp_ns: 0,
                    kind,
                },
                self.next_seq,
            ));
            return Ok(());
        }
        let seq = self.append(inbound.message(), now_ns)?;
        self.last_client_seq[usize::from(origin)] = inbound.client_seq;
        if self.closing && origin != 0 && inbound.message().first() == Some(&SystemEvent::TYPE) {
            self.authority_closed = true;
        }
        let kind = if inbound.reject_reason == 0 {
            OutcomeKind::Accepted
        } else {
            self.counters.gateway_rejects.increment();
            OutcomeKind::Rejected {
                reason: inbound.reject_reason,
            }
        };
        self.pending.push((
            Outcome {
                origin,
                client_seq: inbound.client_seq,
                stream_seq: seq,
                timestamp_ns: now_ns,
                kind,
            },
            seq + 1,
        ));
        Ok(())
    }

    fn sequence_system_event(&mut self, code: u8, now_ns: u64) -> Result<u64, WriteError> {
        let client_seq = self.last_client_seq[0] + 1;
        let event = SystemEvent::new(code).with_client_seq(client_seq);
        self.last_client_seq[0] = client_seq;
        self.append(event.as_bytes(), now_ns)
    }

    /// Appends one message to the open packet (flushing a full one first),
    /// stamping its timestamp. Returns its sequence number.
    fn append(&mut self, message: &[u8], now_ns: u64) -> Result<u64, WriteError> {
        if self.packet_len + 2 + message.len() > self.config.payload_limit_bytes
            || self.packet_count == u16::MAX - 1
        {
            self.flush(now_ns)?;
        }
        if self.packet_count == 0 {
            self.packet_first_seq = self.next_seq;
        }
        let start = self.packet_len;
        let block = &mut self.packet[start..start + 2 + message.len()];
        block[..2].copy_from_slice(&(message.len() as u16).to_be_bytes());
        block[2..].copy_from_slice(message);
        if let Some(header) = header_mut(&mut block[2..]) {
            header.timestamp_ns = now_ns.into();
        }
        self.packet_len += 2 + message.len();
        self.packet_count += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Journals the open packet, then publishes it when the journal is
    /// durable past it, or holds it until it is.
    fn flush(&mut self, now_ns: u64) -> Result<(), WriteError> {
        if self.packet_count == 0 {
            return Ok(());
        }
        let header = MoldHeader::new(
            self.config.session,
            self.packet_first_seq,
            self.packet_count,
        );
        self.packet[..MoldHeader::SIZE].copy_from_slice(header.as_bytes());
        self.journal.append(
            self.packet_first_seq,
            self.packet_count,
            &self.packet[MoldHeader::SIZE..self.packet_len],
            now_ns,
        )?;
        self.counters
            .messages_sequenced
            .add(u64::from(self.packet_count));
        self.counters.next_seq.set(self.next_seq);
        let len = self.packet_len;
        let durable = self.journal.durable_next_seq() >= self.next_seq;
        let sent = self.held_packets.len == 0 && durable && self.send(len, now_ns);
        if sent {
            self.published_next_seq = self.next_seq;
        } else {
            self.held_packets.push(&self.packet[..len], self.next_seq);
            self.counters.packets_held.increment();
            self.last_send_ns = now_ns;
        }
        self.packet_len = MoldHeader::SIZE;
        self.packet_count = 0;
        Ok(())
    }

    fn submit(&mut self) {
        if self.publisher.submit().is_err() {
            self.counters.send_errors.increment();
        }
    }

    fn heartbeat(&mut self, now_ns: u64) {
        debug_assert_eq!(self.packet_count, 0);
        let len = mold::write_heartbeat(&mut self.packet, self.config.session, self.next_seq);
        // A heartbeat that finds the send slots full is skipped: packets are
        // in flight, and they tell receivers the same.
        if self.send(len, now_ns) {
            self.counters.heartbeats_sent.increment();
        }
    }

    /// Offers the packet in `self.packet[..len]` to the publisher; false when
    /// every send slot was in flight (nothing queued: the caller holds it).
    fn send(&mut self, len: usize, now_ns: u64) -> bool {
        match self.publisher.publish(&self.packet[..len]) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                self.counters.publisher_full.increment();
                false
            }
            result => {
                self.count_send(result, len);
                self.last_send_ns = now_ns;
                true
            }
        }
    }

    fn count_send(&mut self, result: io::Result<()>, len: usize) {
        match result {
            Ok(()) => {
                self.counters.packets_sent.increment();
                self.counters.bytes_sent.add(len as u64);
            }
            Err(_) => self.counters.send_errors.increment(),
        }
    }
}

#[cfg(test)]
mod tests;
