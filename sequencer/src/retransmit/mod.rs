//! The retransmit server (DESIGN.md §2, "Re-request"): receivers that see a
//! gap in the multicast stream send a 20-byte MoldUDP64 request (session,
//! first sequence number, count) by UDP unicast; this loop answers each valid
//! one with ONE MoldUDP64 packet to the requester's address, read from the
//! journal.
//!
//! A UDP server must never amplify traffic for a spoofed source, so every
//! request passes these checks, in this order, and each failure is counted
//! and otherwise ignored (no reply at all):
//!
//! | check | counter |
//! |---|---|
//! | the source address is inside the allow-list (`retransmit.allow`) | `ignored_not_allowed` |
//! | exactly 20 bytes (longer datagrams are truncated by the kernel and counted too) | `ignored_malformed` |
//! | the session is the current one | `ignored_session` |
//! | the source's request buckets have a token | `ignored_rate_limited` |
//! | count is not 0 | `ignored_zero_count` |
//! | first sequence number already exists (below the journal's next) | `ignored_future` |
//! | first sequence number within retention and in the reader's index | `ignored_retention` |
//! | the source's reply byte budget holds at least the first message | `ignored_source_budget` |
//! | the server's reply byte budget holds at least the first message | `ignored_global_budget` |
//! | every record read passes its check (CRC, structure) | `ignored_corrupt` |
//!
//! The reply holds the requested messages from the first on, as many as fit
//! in the stream's payload limit, in the source's reply byte budget and in
//! the server's, capped at `messages_per_request_max` and at what exists;
//! its header carries the first sequence number and the count actually
//! included. The reply's bytes are then taken from both budgets, so the
//! bytes one address receives never exceed its budget (`burst + rate × t`)
//! whoever sends requests naming it: a spoofed victim, or a requester
//! churning through source addresses, gets at most that. The per-source
//! state is a `SourceTable`: fixed, hashed, never evicted (see there).
//!
//! A journal record that fails its check is never sent: the request gets no
//! reply at all, `ignored_corrupt` counts it, and the damaged record is
//! logged once (with the offset the reader names), not per request; the
//! loop goes on serving every other range.
//!
//! Realtime contract: one thread owns the loop. Everything (socket buffers,
//! the reply packet, the per-source table, the queue of accepted requests)
//! is allocated in [`RetransmitLoop::new`]; [`RetransmitLoop::poll`] does
//! bounded work and never allocates, locks or logs, except on a damaged
//! journal record (the reader's error text; one log line per record).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use std::sync::Arc;
use std::time::Duration;

use tally_runtime::agent::Agent;
use tally_runtime::net::UdpSocketRing;
use tally_wire::mold::{MoldHeader, PacketBuilder, ReRequest, Session};

use crate::journal::{JournalProgress, JournalReader, INDEX_STRIDE_BYTES};
use tally_config::ApplianceConfig;
use tally_runtime::net::AllowList;

mod budget;
mod damage;
#[cfg(test)]
mod tests;

pub use budget::*;
pub(crate) use damage::*;

/// Receive buffers (and send slots) of the socket.
const SOCKET_SLOTS: usize = 64;
/// Journal records indexed per poll at most (one 24-byte read each).
const FOLLOW_RECORDS_MAX: usize = 65_536;
/// Accepted requests waiting for their reply, at most. A request arriving
/// while this many wait is counted as rate limited: the server as a whole is
/// over its rate.
const PENDING_REQUESTS_MAX: usize = 1024;
/// Journal bytes assumed per message when sizing the reader's index for the
/// retention window (a block of a 41-byte message is 43 bytes; record headers
/// add a little).
const INDEX_BYTES_PER_MESSAGE: u64 = 64;
/// Upper bound on the reader's index entries (16 bytes each).
const INDEX_ENTRIES_MAX: u64 = 1 << 22;
/// How long [`RetransmitLoop::run`] waits for replies in flight when stopping.
const STOP_FLUSH_TIMEOUT: Duration = Duration::from_millis(200);
/// One token of a bucket, in nano-tokens: a bucket refills
/// `requests_per_sec_per_requester` nano-tokens per nanosecond.
const TOKEN_NANO: u64 = 1_000_000_000;

/// What the retransmit loop needs, in the units it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitOptions {
    /// Address the UDP socket binds (port 0 picks one).
    pub listen: SocketAddrV4,
    /// The current stream session; requests for another are ignored.
    pub session: Session,
    /// Largest reply datagram, MoldUDP64 header included.
    pub payload_bytes_max: usize,
    /// Most messages one reply holds.
    pub messages_per_request_max: u16,
    /// Sustained requests per second one IPv4 address may make.
    pub requests_per_sec_per_requester: u32,
    /// Requests one address may make back to back.
    pub request_burst: u32,
    /// Cells per row of the per-source table (`SourceTable`).
    pub requesters_max: usize,
    /// Sources that are answered.
    pub allow: AllowList,
    /// Reply bytes per second one source address may receive.
    pub reply_bytes_per_sec_per_source: u64,
    /// Reply bytes one source address may receive back to back.
    pub reply_burst_bytes_per_source: u64,
    /// Reply bytes per second, all sources together.
    pub reply_bytes_per_sec: u64,
    /// Reply bytes back to back, all sources together.
    pub reply_burst_bytes: u64,
    /// Requests for messages older than `next_seq - retention_messages` are
    /// ignored.
    pub retention_messages: u64,
    /// Entries of the journal reader's sparse index.
    pub index_capacity: usize,
}

impl RetransmitOptions {
    /// The options from the appliance's configuration.
    pub fn from_config(config: &ApplianceConfig) -> io::Result<Self> {
        let session = config
            .session()
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?;
        let retention_messages = config.journal.retention_messages;
        Ok(RetransmitOptions {
            listen: config.retransmit.listen,
            session,
            payload_bytes_max: config.stream.payload_bytes_max,
            messages_per_request_max: config.retransmit.messages_per_request_max,
            requests_per_sec_per_requester: config.retransmit.requests_per_sec_per_requester,
            request_burst: config.retransmit.request_burst,
            requesters_max: config.retransmit.requesters_max,
            allow: config
                .retransmit_allow()
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?,
            reply_bytes_per_sec_per_source: config.retransmit.reply_bytes_per_sec_per_source,
            reply_burst_bytes_per_source: config.retransmit.reply_burst_bytes_per_source,
            reply_bytes_per_sec: config.retransmit.reply_bytes_per_sec,
            reply_burst_bytes: config.retransmit.reply_burst_bytes,
            retention_messages,
            index_capacity: index_capacity_for(retention_messages),
        })
    }
}

/// Index entries that cover `retention_messages` of journal (with margin).
pub fn index_capacity_for(retention_messages: u64) -> usize {
    let bytes = retention_messages.saturating_mul(INDEX_BYTES_PER_MESSAGE);
    (bytes / INDEX_STRIDE_BYTES + 1024).min(INDEX_ENTRIES_MAX) as usize
}

tally_runtime::counter_set! {
    /// The retransmit loop's counters in the shared counter file.
    pub struct RetransmitCounters, prefix "retransmit.";
    /// Requests answered with a packet.
    requests_served,
    /// Messages in those packets.
    messages_resent,
    /// Datagrams that are not exactly 20 bytes.
    ignored_malformed,
    /// Requests for another session.
    ignored_session,
    /// Requests whose first message does not exist yet.
    ignored_future,
    /// Requests older than retention (or than the reader's index).
    ignored_retention,
    /// Requests over the requester's rate (or the server's queue).
    ignored_rate_limited,
    /// Requests for 0 messages.
    ignored_zero_count,
    /// Datagrams from a source outside the allow-list.
    ignored_not_allowed,
    /// Requests whose source's reply byte budget could not hold a reply.
    ignored_source_budget,
    /// Requests the server's reply byte budget could not hold.
    ignored_global_budget,
    /// Requests unanswered because a journal record in their range failed
    /// its check.
    ignored_corrupt,
    /// Distinct damaged journal records found (each logged once).
    corrupt_records,
    /// Bytes of reply datagrams sent (MoldUDP64 header included).
    reply_bytes,
}

/// A request that passed the checks that need no journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingRequest {
    reply_to: SocketAddrV4,
    first_seq: u64,
    count: u16,
}

/// A fixed-capacity FIFO of accepted requests.
#[derive(Debug)]
struct PendingQueue {
    slots: Box<[PendingRequest]>,
    head: usize,
    len: usize,
}

impl PendingQueue {
    fn new(capacity: usize) -> Self {
        let empty = PendingRequest {
            reply_to: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            first_seq: 0,
            count: 0,
        };
        PendingQueue {
            slots: vec![empty; capacity].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == self.slots.len()
    }

    fn push(&mut self, request: PendingRequest) {
        assert!(!self.is_full());
        let at = (self.head + self.len) % self.slots.len();
        self.slots[at] = request;
        self.len += 1;
    }

    fn pop(&mut self) -> Option<PendingRequest> {
        if self.len == 0 {
            return None;
        }
        let request = self.slots[self.head];
        self.head = (self.head + 1) % self.slots.len();
        self.len -= 1;
        Some(request)
    }

    /// Puts back the request just popped (its reply could not be sent yet).
    fn unpop(&mut self, request: PendingRequest) {
        assert!(!self.is_full());
        self.head = (self.head + self.slots.len() - 1) % self.slots.len();
        self.slots[self.head] = request;
        self.len += 1;
    }
}

const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<RetransmitLoop>();
};

/// The retransmit loop: its UDP socket, its journal reader, one reply packet
/// buffer and the requester table. See the module doc.
pub struct RetransmitLoop {
    socket: UdpSocketRing,
    reader: JournalReader,
    packet: Box<[u8]>,
    sources: SourceTable,
    replies: ByteBucket,
    damage: DamageLog,
    pending: PendingQueue,
    options: RetransmitOptions,
    counters: RetransmitCounters,
    /// The socket's truncated-datagram count already added to
    /// `ignored_malformed`.
    truncated_seen: u64,
}

impl std::fmt::Debug for RetransmitLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetransmitLoop")
            .field("local_addr", &self.socket.local_addr())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RetransmitLoop {
    /// Binds `retransmit.listen` and opens a reader on the journal at
    /// `journal_path`, following `progress`.
    pub fn new(
        config: &ApplianceConfig,
        journal_path: &Path,
        progress: Arc<JournalProgress>,
        counters: RetransmitCounters,
    ) -> io::Result<Self> {
        Self::with_options(
            RetransmitOptions::from_config(config)?,
            journal_path,
            progress,
            counters,
        )
    }

    /// As [`new`](Self::new), from explicit options.
    pub fn with_options(
        options: RetransmitOptions,
        journal_path: &Path,
        progress: Arc<JournalProgress>,
        counters: RetransmitCounters,
    ) -> io::Result<Self> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        if options.payload_bytes_max < MoldHeader::SIZE + 2 + tally_wire::MAX_MESSAGE_SIZE
            || options.payload_bytes_max > 65_507
        {
            return Err(invalid(
                "retransmit: payload_bytes_max must hold one message and fit a UDP datagram",
            ));
        }
        if options.messages_per_request_max == 0
            || options.requests_per_sec_per_requester == 0
            || options.request_burst == 0
            || options.requesters_max == 0
            || options.requesters_max > 1 << 24
            || options.index_capacity == 0
            || options.reply_bytes_per_sec_per_source == 0
            || options.reply_bytes_per_sec == 0
        {
            return Err(invalid(
                "retransmit: limits must be at least 1 (and requesters_max at most 2^24)",
            ));
        }
        let smallest_reply = (MoldHeader::SIZE + 2 + tally_wire::MAX_MESSAGE_SIZE) as u64;
        if !(smallest_reply..=REPLY_BURST_BYTES_MAX).contains(&options.reply_burst_bytes_per_source)
            || !(smallest_reply..=REPLY_BURST_BYTES_MAX).contains(&options.reply_burst_bytes)
        {
            return Err(invalid(
                "retransmit: reply bursts must hold one reply of the largest message, and at most 2^33 bytes",
            ));
        }
        let reader = JournalReader::open(journal_path, progress, options.index_capacity)?;
        let socket = UdpSocketRing::bind(options.listen, SOCKET_SLOTS, options.payload_bytes_max)?;
        Ok(RetransmitLoop {
            socket,
            reader,
            packet: vec![0u8; options.payload_bytes_max].into_boxed_slice(),
            sources: SourceTable::new(
                options.requesters_max,
                options.requests_per_sec_per_requester,
                options.request_burst,
                options.reply_bytes_per_sec_per_source,
                options.reply_burst_bytes_per_source,
            ),
            replies: ByteBucket::new(options.reply_bytes_per_sec, options.reply_burst_bytes),
            damage: DamageLog::new(),
            pending: PendingQueue::new(PENDING_REQUESTS_MAX),
            options,
            counters,
            truncated_seen: 0,
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.socket.local_addr()
    }

    /// One duty cycle: follow the journal, take every request waiting, answer
    /// the valid ones. Returns the work done (records indexed, datagrams
    /// received, replies sent). Bounded: at most `FOLLOW_RECORDS_MAX` records,
    /// one receive batch, `PENDING_REQUESTS_MAX` replies.
    pub fn poll(&mut self, now_ns: u64) -> io::Result<usize> {
        // Following the journal is housekeeping, not work: it must not keep
        // this loop spinning while the stream flows (on a small host that
        // takes a core from the order path). A request for something not
        // indexed yet indexes up to it first (`JournalReader::seek`).
        match self.reader.follow(FOLLOW_RECORDS_MAX) {
            Ok(_) => {}
            Err(error) if is_damaged_record(&error) => {
                // The index stops before the damage; what lies before it is
                // still served.
                self.note_damage(&error);
            }
            Err(error) => return Err(error),
        }
        let mut work = 0;

        let session = self.options.session;
        let allow = &self.options.allow;
        let sources = &mut self.sources;
        let pending = &mut self.pending;
        let counters = &self.counters;
        work += self.socket.poll_recv(|from, datagram| {
            if !allow.allows(*from.ip()) {
                counters.ignored_not_allowed.increment();
                return;
            }
            let Ok(request) = ReRequest::parse(datagram) else {
                counters.ignored_malformed.increment();
                return;
            };
            if request.session() != session {
                counters.ignored_session.increment();
                return;
            }
            if pending.is_full() || !sources.admit(*from.ip(), now_ns) {
                counters.ignored_rate_limited.increment();
                return;
            }
            let count = request.count.get();
            if count == 0 {
                counters.ignored_zero_count.increment();
                return;
            }
            pending.push(PendingRequest {
                reply_to: from,
                first_seq: request.sequence.get(),
                count,
            });
        })?;

        // Datagrams longer than a receive buffer never reach the callback.
        let truncated = self.socket.recv_stats().truncated;
        self.counters
            .ignored_malformed
            .add(truncated - self.truncated_seen);
        self.truncated_seen = truncated;

        work += self.serve_pending(now_ns)?;
        Ok(work)
    }

    /// Counts a damaged record and logs it the first time it is seen.
    #[cold]
    fn note_damage(&mut self, error: &io::Error) {
        if self.damage.first_time(error) {
            self.counters.corrupt_records.increment();
            tracing::error!(
                %error,
                "retransmit: a damaged journal record is not served (requests for it get no reply)"
            );
        }
    }

    /// Answers queued requests until the queue is empty or every send slot
    /// is in flight. Returns replies sent.
    fn serve_pending(&mut self, now_ns: u64) -> io::Result<usize> {
        let mut served = 0;
        while let Some(request) = self.pending.pop() {
            let next_seq = self.reader.next_seq();
            if request.first_seq >= next_seq {
                self.counters.ignored_future.increment();
                continue;
            }
            let oldest_seq = next_seq.saturating_sub(self.options.retention_messages);
            if request.first_seq < oldest_seq {
                self.counters.ignored_retention.increment();
                continue;
            }
            let source = *request.reply_to.ip();
            let source_bytes = self.sources.reply_budget(source, now_ns);
            let server_bytes = self.replies.available(now_ns);
            let limit_bytes = (self.options.payload_bytes_max as u64)
                .min(source_bytes)
                .min(server_bytes) as usize;
            if limit_bytes < MoldHeader::SIZE + 2 {
                self.count_over_budget(source_bytes, server_bytes);
                continue;
            }
            let mut cursor = match self.reader.seek(request.first_seq) {
                Ok(Some(cursor)) => cursor,
                Ok(None) => {
                    // Before the oldest record the index still knows.
                    self.counters.ignored_retention.increment();
                    continue;
                }
                Err(error) if is_damaged_record(&error) => {
                    self.counters.ignored_corrupt.increment();
                    self.note_damage(&error);
                    continue;
                }
                Err(error) => return Err(error),
            };
            let messages_max =
                usize::from(request.count.min(self.options.messages_per_request_max));
            let mut builder = PacketBuilder::new(
                &mut self.packet,
                limit_bytes,
                self.options.session,
                request.first_seq,
            );
            let read = self.reader.read(&mut cursor, messages_max, |_, message| {
                builder.append(message).is_ok()
            });
            let packet_bytes = builder.finish();
            let messages = match read {
                Ok(messages) => messages,
                Err(error) if is_damaged_record(&error) => {
                    // Nothing of this range is sent, not even the good
                    // messages before the damaged record.
                    self.counters.ignored_corrupt.increment();
                    self.note_damage(&error);
                    continue;
                }
                Err(error) => return Err(error),
            };
            if messages == 0 {
                if limit_bytes < self.options.payload_bytes_max {
                    // The first message does not fit what the budgets allow.
                    self.count_over_budget(source_bytes, server_bytes);
                } else {
                    // Indexed but not readable yet: cannot happen with a
                    // consistent journal (seek found the record). Treat as
                    // the future so nothing is sent.
                    self.counters.ignored_future.increment();
                }
                continue;
            }
            match self
                .socket
                .send_to(request.reply_to, &self.packet[..packet_bytes])
            {
                Ok(()) => {
                    let bytes = packet_bytes as u64;
                    self.sources.charge(source, bytes, now_ns);
                    self.replies.take(bytes);
                    self.counters.requests_served.increment();
                    self.counters.messages_resent.add(messages as u64);
                    self.counters.reply_bytes.add(bytes);
                    served += 1;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    // Every send slot is in flight: answer it next poll.
                    self.pending.unpop(request);
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(served)
    }

    /// Counts a request no budget could answer, under the tighter budget.
    fn count_over_budget(&self, source_bytes: u64, server_bytes: u64) {
        if source_bytes <= server_bytes {
            self.counters.ignored_source_budget.increment();
        } else {
            self.counters.ignored_global_budget.increment();
        }
    }
}

/// The retransmit server as an agent of the runtime's runner: a duty cycle
/// is [`RetransmitLoop::poll`], a park waits in its socket's ring (a
/// re-request ends it at once), and closing waits briefly for replies in
/// flight.
impl Agent for RetransmitLoop {
    fn do_work(&mut self, now_ns: u64) -> io::Result<usize> {
        self.poll(now_ns)
    }

    fn park(&mut self, timeout: Duration) -> io::Result<()> {
        self.socket.wait(timeout)
    }

    fn on_close(&mut self) -> io::Result<()> {
        let _ = self.socket.flush(STOP_FLUSH_TIMEOUT);
        Ok(())
    }
}

/// The counting allocator of `tally_runtime::alloc_count`, so tests can prove
/// a loop's `poll` allocates nothing. It serves every test of this crate's
/// unit-test binary (there can be only one global allocator; `replay.rs`
/// counts with it too) and otherwise behaves exactly like the system
/// allocator.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: tally_runtime::alloc_count::CountingAllocator =
    tally_runtime::alloc_count::CountingAllocator;
