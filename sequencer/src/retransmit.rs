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
//! | exactly 20 bytes (longer datagrams are truncated by the kernel and counted too) | `ignored_malformed` |
//! | the session is the current one | `ignored_session` |
//! | the requester's token bucket has a token (per IPv4 address) | `ignored_rate_limited` |
//! | count is not 0 | `ignored_zero_count` |
//! | first sequence number already exists (below the journal's next) | `ignored_future` |
//! | first sequence number within retention and in the reader's index | `ignored_retention` |
//!
//! The reply holds the requested messages from the first on, as many as fit
//! in the stream's payload limit, capped at `messages_per_request_max` and at
//! what exists; its header carries the first sequence number and the count
//! actually included.
//!
//! Realtime contract: one thread owns the loop. Everything (socket buffers,
//! the reply packet, the requester table, the queue of accepted requests) is
//! allocated in [`RetransmitLoop::new`]; [`RetransmitLoop::poll`] does
//! bounded work and never allocates, locks or logs.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_runtime::counters::{Counter, CounterFile};
use tally_runtime::idle::IdleStrategy;
use tally_runtime::net::UdpSocketRing;
use tally_wire::mold::{MoldHeader, PacketBuilder, ReRequest, Session};

use crate::config::ApplianceConfig;
use crate::journal::{JournalProgress, JournalReader, INDEX_STRIDE_BYTES};

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
    /// Addresses tracked for rate limiting; when full, the least recently
    /// seen is forgotten.
    pub requesters_max: usize,
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

/// The retransmit loop's counters in the shared counter file.
#[derive(Clone, Debug)]
pub struct RetransmitCounters {
    /// Requests answered with a packet.
    pub requests_served: Counter,
    /// Messages in those packets.
    pub messages_resent: Counter,
    /// Datagrams that are not exactly 20 bytes.
    pub ignored_malformed: Counter,
    /// Requests for another session.
    pub ignored_session: Counter,
    /// Requests whose first message does not exist yet.
    pub ignored_future: Counter,
    /// Requests older than retention (or than the reader's index).
    pub ignored_retention: Counter,
    /// Requests over the requester's rate (or the server's queue).
    pub ignored_rate_limited: Counter,
    /// Requests for 0 messages.
    pub ignored_zero_count: Counter,
}

impl RetransmitCounters {
    /// Names, in field order, for the counter file.
    pub const NAMES: &'static [&'static str] = &[
        "retransmit.requests_served",
        "retransmit.messages_resent",
        "retransmit.ignored_malformed",
        "retransmit.ignored_session",
        "retransmit.ignored_future",
        "retransmit.ignored_retention",
        "retransmit.ignored_rate_limited",
        "retransmit.ignored_zero_count",
    ];

    /// Counter handles from a file that holds [`Self::NAMES`] from `first`.
    pub fn from_file(file: &CounterFile, first: usize) -> Self {
        let c = |i: usize| file.counter(first + i);
        RetransmitCounters {
            requests_served: c(0),
            messages_resent: c(1),
            ignored_malformed: c(2),
            ignored_session: c(3),
            ignored_future: c(4),
            ignored_retention: c(5),
            ignored_rate_limited: c(6),
            ignored_zero_count: c(7),
        }
    }
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

/// No slot: the end of a list, or an empty index cell.
const NONE: u32 = u32::MAX;

/// One requester's token bucket and its place in the recency list.
#[derive(Clone, Copy, Debug)]
struct Requester {
    address: u32,
    tokens_nano: u64,
    refilled_ns: u64,
    /// Toward the most recently seen.
    newer: u32,
    /// Toward the least recently seen.
    older: u32,
}

/// Token buckets for at most `capacity` IPv4 addresses: an open-addressing
/// hash index (linear probing, backward-shift deletion, at most half full)
/// over a fixed array of entries kept in a recency list, so lookup, insert
/// and eviction of the least recently seen are O(1) and allocation-free.
#[derive(Debug)]
pub(crate) struct RequesterTable {
    entries: Box<[Requester]>,
    used: usize,
    /// Most recently seen entry.
    newest: u32,
    /// Least recently seen entry: the next to evict.
    oldest: u32,
    /// Hash index: entry numbers, `NONE` when empty. Length a power of two.
    index: Box<[u32]>,
    index_shift: u32,
    rate_per_sec: u64,
    burst_nano: u64,
}

impl RequesterTable {
    pub(crate) fn new(capacity: usize, rate_per_sec: u32, burst: u32) -> Self {
        assert!(capacity > 0 && capacity < NONE as usize / 2);
        assert!(rate_per_sec > 0 && burst > 0);
        let index_len = (2 * capacity).next_power_of_two().max(2);
        let empty = Requester {
            address: 0,
            tokens_nano: 0,
            refilled_ns: 0,
            newer: NONE,
            older: NONE,
        };
        RequesterTable {
            entries: vec![empty; capacity].into_boxed_slice(),
            used: 0,
            newest: NONE,
            oldest: NONE,
            index: vec![NONE; index_len].into_boxed_slice(),
            index_shift: 64 - index_len.trailing_zeros(),
            rate_per_sec: u64::from(rate_per_sec),
            burst_nano: u64::from(burst) * TOKEN_NANO,
        }
    }

    /// Addresses tracked now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.used
    }

    /// Whether `address` is tracked.
    #[cfg(test)]
    pub(crate) fn contains(&self, address: Ipv4Addr) -> bool {
        self.find(address.to_bits()).is_some()
    }

    /// Takes one token from `address`'s bucket (a new address starts with a
    /// full one); false when it has none.
    pub(crate) fn admit(&mut self, address: Ipv4Addr, now_ns: u64) -> bool {
        let address = address.to_bits();
        let entry = match self.find(address) {
            Some((entry, _)) => {
                self.unlink(entry);
                entry
            }
            None => self.insert(address, now_ns),
        };
        self.link_newest(entry);
        let rate_per_sec = self.rate_per_sec;
        let burst_nano = self.burst_nano;
        let requester = &mut self.entries[entry as usize];
        let elapsed_ns = now_ns.saturating_sub(requester.refilled_ns);
        let refill_nano =
            (u128::from(elapsed_ns) * u128::from(rate_per_sec)).min(u128::from(burst_nano)) as u64;
        requester.tokens_nano = (requester.tokens_nano + refill_nano).min(burst_nano);
        requester.refilled_ns = requester.refilled_ns.max(now_ns);
        if requester.tokens_nano >= TOKEN_NANO {
            requester.tokens_nano -= TOKEN_NANO;
            true
        } else {
            false
        }
    }

    fn home(&self, address: u32) -> usize {
        (u64::from(address).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.index_shift) as usize
    }

    /// (entry, index cell) of `address`.
    fn find(&self, address: u32) -> Option<(u32, usize)> {
        let mask = self.index.len() - 1;
        let mut cell = self.home(address);
        loop {
            let entry = self.index[cell];
            if entry == NONE {
                return None;
            }
            if self.entries[entry as usize].address == address {
                return Some((entry, cell));
            }
            cell = (cell + 1) & mask;
        }
    }

    /// A new entry for `address` with a full bucket, evicting the least
    /// recently seen address when the table is full. Not linked yet.
    fn insert(&mut self, address: u32, now_ns: u64) -> u32 {
        let entry = if self.used < self.entries.len() {
            self.used += 1;
            (self.used - 1) as u32
        } else {
            let evicted = self.oldest;
            assert!(evicted != NONE);
            self.unlink(evicted);
            let (_, cell) = self
                .find(self.entries[evicted as usize].address)
                .expect("a tracked entry is indexed");
            self.remove_cell(cell);
            evicted
        };
        self.entries[entry as usize] = Requester {
            address,
            tokens_nano: self.burst_nano,
            refilled_ns: now_ns,
            newer: NONE,
            older: NONE,
        };
        let mask = self.index.len() - 1;
        let mut cell = self.home(address);
        while self.index[cell] != NONE {
            cell = (cell + 1) & mask;
        }
        self.index[cell] = entry;
        entry
    }

    /// Empties index cell `cell`, shifting later cells of the probe run back
    /// so every remaining address stays reachable from its home cell.
    fn remove_cell(&mut self, mut cell: usize) {
        let mask = self.index.len() - 1;
        self.index[cell] = NONE;
        let mut next = cell;
        loop {
            next = (next + 1) & mask;
            let entry = self.index[next];
            if entry == NONE {
                return;
            }
            let home = self.home(self.entries[entry as usize].address);
            // The entry at `next` may stay when its home lies cyclically in
            // (cell, next]; otherwise the hole at `cell` would hide it.
            let stays = if cell <= next {
                cell < home && home <= next
            } else {
                cell < home || home <= next
            };
            if !stays {
                self.index[cell] = entry;
                self.index[next] = NONE;
                cell = next;
            }
        }
    }

    fn unlink(&mut self, entry: u32) {
        let Requester { newer, older, .. } = self.entries[entry as usize];
        if newer == NONE {
            self.newest = older;
        } else {
            self.entries[newer as usize].older = older;
        }
        if older == NONE {
            self.oldest = newer;
        } else {
            self.entries[older as usize].newer = newer;
        }
        self.entries[entry as usize].newer = NONE;
        self.entries[entry as usize].older = NONE;
    }

    fn link_newest(&mut self, entry: u32) {
        self.entries[entry as usize].older = self.newest;
        self.entries[entry as usize].newer = NONE;
        if self.newest != NONE {
            self.entries[self.newest as usize].newer = entry;
        }
        self.newest = entry;
        if self.oldest == NONE {
            self.oldest = entry;
        }
    }
}

// The appliance builds each loop on the main thread and moves it to its own.
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
    requesters: RequesterTable,
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
            || options.index_capacity == 0
        {
            return Err(invalid("retransmit: limits must be at least 1"));
        }
        let reader = JournalReader::open(journal_path, progress, options.index_capacity)?;
        let socket = UdpSocketRing::bind(options.listen, SOCKET_SLOTS, options.payload_bytes_max)?;
        Ok(RetransmitLoop {
            socket,
            reader,
            packet: vec![0u8; options.payload_bytes_max].into_boxed_slice(),
            requesters: RequesterTable::new(
                options.requesters_max,
                options.requests_per_sec_per_requester,
                options.request_burst,
            ),
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
        let mut work = self.reader.follow(FOLLOW_RECORDS_MAX)?;

        let session = self.options.session;
        let requesters = &mut self.requesters;
        let pending = &mut self.pending;
        let counters = &self.counters;
        work += self.socket.poll_recv(|from, datagram| {
            let Ok(request) = ReRequest::parse(datagram) else {
                counters.ignored_malformed.increment();
                return;
            };
            if request.session() != session {
                counters.ignored_session.increment();
                return;
            }
            if pending.is_full() || !requesters.admit(*from.ip(), now_ns) {
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

        work += self.serve_pending()?;
        Ok(work)
    }

    /// Answers queued requests until the queue is empty or every send slot
    /// is in flight. Returns replies sent.
    fn serve_pending(&mut self) -> io::Result<usize> {
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
            let Some(mut cursor) = self.reader.seek(request.first_seq)? else {
                // Before the oldest record the index still knows.
                self.counters.ignored_retention.increment();
                continue;
            };
            let messages_max =
                usize::from(request.count.min(self.options.messages_per_request_max));
            let mut builder = PacketBuilder::new(
                &mut self.packet,
                self.options.payload_bytes_max,
                self.options.session,
                request.first_seq,
            );
            let messages = self.reader.read(&mut cursor, messages_max, |_, message| {
                builder.append(message).is_ok()
            })?;
            let packet_bytes = builder.finish();
            if messages == 0 {
                // Indexed but not readable yet: cannot happen with a
                // consistent journal (seek found the record). Treat as the
                // future so nothing is sent.
                self.counters.ignored_future.increment();
                continue;
            }
            match self
                .socket
                .send_to(request.reply_to, &self.packet[..packet_bytes])
            {
                Ok(()) => {
                    self.counters.requests_served.increment();
                    self.counters.messages_resent.add(messages as u64);
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

    /// Runs [`poll`](Self::poll) under `idle` until `stop` is set, then
    /// waits briefly for replies in flight.
    pub fn run(&mut self, idle: IdleStrategy, stop: &AtomicBool) -> io::Result<()> {
        let mut idler = idle.idler();
        let start = Instant::now();
        while !stop.load(Ordering::Acquire) {
            let work = self.poll(start.elapsed().as_nanos() as u64)?;
            idler.idle(work);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{FsyncPolicy, JournalWriter};
    use std::net::UdpSocket;
    use std::thread;
    use tally_runtime::alloc_count::counting;
    use tally_wire::mold::MoldPacket;

    fn session() -> Session {
        Session::from_str("RETX01").unwrap()
    }

    /// The allocator installed above counts in this binary, so the "poll
    /// allocated nothing" checks here and in `replay.rs` are not vacuous.
    #[test]
    fn the_counter_sees_allocations_on_this_thread_only() {
        let (boxed, allocations) = counting(|| Box::new(7u64));
        assert_eq!((*boxed, allocations), (7, 1));
        let ((), allocations) = counting(|| {
            std::thread::spawn(|| drop(vec![0u8; 100]))
                .join()
                .unwrap_or(());
        });
        // Spawning allocates here; the other thread's vector is not counted.
        assert!(allocations >= 1);
        let ((), allocations) = counting(|| {});
        assert_eq!(allocations, 0);
    }

    fn blocks(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for message in messages {
            out.extend_from_slice(&(message.len() as u16).to_be_bytes());
            out.extend_from_slice(message);
        }
        out
    }

    /// Message `seq`: 20..=41 bytes, its content derived from `seq`.
    fn message(seq: u64) -> Vec<u8> {
        let len = 20 + (seq % 22) as usize;
        let mut out = vec![(seq % 251) as u8; len];
        out[..8].copy_from_slice(&seq.to_be_bytes());
        out
    }

    /// Appends messages `first..first+count` in records of up to 7.
    fn append(writer: &mut JournalWriter, count: u64) {
        let mut seq = writer.next_seq();
        let end = seq + count;
        while seq < end {
            let n = (end - seq).min(7);
            let messages: Vec<Vec<u8>> = (seq..seq + n).map(message).collect();
            writer.append(seq, n as u16, &blocks(&messages), 0).unwrap();
            seq += n;
        }
    }

    fn options() -> RetransmitOptions {
        RetransmitOptions {
            listen: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            session: session(),
            payload_bytes_max: 1400,
            messages_per_request_max: 100,
            requests_per_sec_per_requester: 1000,
            request_burst: 1000,
            requesters_max: 16,
            retention_messages: 1_000_000,
            index_capacity: 1024,
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        writer: JournalWriter,
        server: RetransmitLoop,
        counters: RetransmitCounters,
        client: UdpSocket,
        now_ns: u64,
        /// Allocations made inside `server.poll` so far.
        poll_allocations: u64,
    }

    impl Fixture {
        fn new(options: RetransmitOptions, messages: u64) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (mut writer, _) = JournalWriter::open(
                dir.path(),
                session(),
                FsyncPolicy::None,
                &crate::journal::RecoveryOptions::default(),
                |_, _| {},
            )
            .unwrap();
            append(&mut writer, messages);
            let file = CounterFile::in_memory(RetransmitCounters::NAMES);
            let counters = RetransmitCounters::from_file(&file, 0);
            let server = RetransmitLoop::with_options(
                options,
                writer.path(),
                writer.progress(),
                counters.clone(),
            )
            .unwrap();
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            client.connect(server.local_addr()).unwrap();
            client
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            Fixture {
                _dir: dir,
                writer,
                server,
                counters,
                client,
                now_ns: 1_000_000_000,
                poll_allocations: 0,
            }
        }

        fn poll(&mut self) {
            let now_ns = self.now_ns;
            let (result, allocations) = counting(|| self.server.poll(now_ns));
            result.unwrap();
            self.poll_allocations += allocations;
        }

        fn request(&self, session: Session, first_seq: u64, count: u16) {
            self.client
                .send(ReRequest::new(session, first_seq, count).as_bytes())
                .unwrap();
        }

        /// Polls the server until `done` holds (deadline 10 s).
        fn poll_until(&mut self, what: &str, mut done: impl FnMut(&RetransmitCounters) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !done(&self.counters) {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                self.poll();
                thread::yield_now();
            }
        }

        fn ignored(&self) -> u64 {
            let c = &self.counters;
            [
                &c.ignored_malformed,
                &c.ignored_session,
                &c.ignored_future,
                &c.ignored_retention,
                &c.ignored_rate_limited,
                &c.ignored_zero_count,
            ]
            .iter()
            .map(|counter| counter.get())
            .sum()
        }

        /// Sends one request and polls until it is served, returning the reply.
        fn ask(&mut self, first_seq: u64, count: u16) -> Vec<u8> {
            let served = self.counters.requests_served.get();
            self.request(session(), first_seq, count);
            self.poll_until("the reply to be sent", |c| c.requests_served.get() > served);
            self.receive().expect("a reply")
        }

        /// The next datagram, or None within about 1 s.
        fn receive(&mut self) -> Option<Vec<u8>> {
            let mut buf = [0u8; 2048];
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                self.poll();
                match self.client.recv(&mut buf) {
                    Ok(n) => return Some(buf[..n].to_vec()),
                    Err(error)
                        if matches!(
                            error.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(error) => panic!("recv: {error}"),
                }
            }
            None
        }
    }

    fn decode(reply: &[u8]) -> (u64, Vec<(u64, Vec<u8>)>) {
        let packet = MoldPacket::parse(reply).unwrap();
        assert_eq!(packet.session(), session());
        let messages: Vec<(u64, Vec<u8>)> = packet
            .messages()
            .map(|(seq, m)| (seq, m.to_vec()))
            .collect();
        assert_eq!(usize::from(packet.count()), messages.len());
        (packet.sequence(), messages)
    }

    #[test]
    fn serves_exactly_the_requested_range_from_the_journal() {
        let mut f = Fixture::new(options(), 500);
        let (first, messages) = decode(&f.ask(37, 10));
        assert_eq!(first, 37);
        assert_eq!(
            messages,
            (37..47).map(|seq| (seq, message(seq))).collect::<Vec<_>>()
        );
        assert_eq!(f.counters.messages_resent.get(), 10);

        // A range reaching past the end: what exists.
        let (first, messages) = decode(&f.ask(495, 50));
        assert_eq!(first, 495);
        assert_eq!(
            messages.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            (495..501).collect::<Vec<_>>()
        );

        // New appends become servable.
        append(&mut f.writer, 5);
        let (_, messages) = decode(&f.ask(501, 5));
        assert_eq!(
            messages,
            (501..506)
                .map(|seq| (seq, message(seq)))
                .collect::<Vec<_>>()
        );
        assert_eq!(f.counters.requests_served.get(), 3);
        assert_eq!(f.ignored(), 0);
    }

    #[test]
    fn caps_the_count_and_fits_the_payload_limit() {
        let mut opts = options();
        opts.messages_per_request_max = 5;
        let mut f = Fixture::new(opts, 2000);
        let (first, messages) = decode(&f.ask(100, 1000));
        assert_eq!(first, 100);
        assert_eq!(messages.len(), 5);

        let mut opts = options();
        opts.payload_bytes_max = 200;
        opts.messages_per_request_max = 1000;
        let mut f = Fixture::new(opts, 2000);
        let reply = f.ask(1, 1000);
        assert!(reply.len() <= 200, "{} bytes", reply.len());
        let (first, messages) = decode(&reply);
        assert_eq!(first, 1);
        // As many as fit: the next one would not.
        let used: usize =
            MoldHeader::SIZE + messages.iter().map(|(_, m)| 2 + m.len()).sum::<usize>();
        let next = message(1 + messages.len() as u64);
        assert!(used + 2 + next.len() > 200);
        assert!(messages.len() >= 4);
        assert_eq!(
            messages,
            (1..1 + messages.len() as u64)
                .map(|seq| (seq, message(seq)))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn ignores_bad_requests_and_counts_each_kind() {
        let mut opts = options();
        opts.retention_messages = 100;
        let mut f = Fixture::new(opts, 300);
        // next_seq is 301; retention keeps 201..=300.
        f.client.send(&[0u8; 19]).unwrap();
        f.client.send(&[0u8; 21]).unwrap();
        f.client.send(&[0u8; 1800]).unwrap(); // truncated by the kernel
        f.poll_until("malformed", |c| c.ignored_malformed.get() == 3);
        f.request(Session::from_str("OTHER").unwrap(), 250, 1);
        f.poll_until("session", |c| c.ignored_session.get() == 1);
        f.request(session(), 301, 1);
        f.request(session(), 10_000, 1);
        f.poll_until("future", |c| c.ignored_future.get() == 2);
        f.request(session(), 200, 1);
        f.request(session(), 1, 5);
        f.poll_until("retention", |c| c.ignored_retention.get() == 2);
        f.request(session(), 250, 0);
        f.poll_until("zero count", |c| c.ignored_zero_count.get() == 1);
        assert_eq!(f.counters.requests_served.get(), 0);
        assert_eq!(f.receive(), None, "no reply to any ignored request");
        // The oldest retained message is still served.
        let (first, _) = decode(&f.ask(201, 1));
        assert_eq!(first, 201);
        assert_eq!(f.counters.ignored_rate_limited.get(), 0);
    }

    #[test]
    fn rate_limits_a_flood_from_one_address() {
        let mut opts = options();
        opts.requests_per_sec_per_requester = 100;
        opts.request_burst = 20;
        let mut f = Fixture::new(opts, 50);
        let start = Instant::now();
        let requests = 1000u64;
        let mut sent = 0u64;
        while sent < requests {
            f.request(session(), 1, 1);
            sent += 1;
            if sent % 50 == 0 {
                // Real time drives the buckets here.
                f.now_ns = 1_000_000_000 + start.elapsed().as_nanos() as u64;
                f.poll();
            }
        }
        f.now_ns = 1_000_000_000 + start.elapsed().as_nanos() as u64;
        f.poll_until("every request to be counted", |c| {
            c.requests_served.get() + c.ignored_rate_limited.get() == requests
        });
        let elapsed_s = start.elapsed().as_secs_f64();
        let served = f.counters.requests_served.get();
        let allowed = 20.0 + 100.0 * elapsed_s;
        assert!(
            served as f64 <= allowed + 1.0,
            "served {served}, allowed {allowed:.1} in {elapsed_s:.3} s"
        );
        assert!(served >= 20, "the burst is served: {served}");
        assert!(f.counters.ignored_rate_limited.get() >= requests - allowed as u64 - 1);
    }

    #[test]
    fn bucket_refills_at_the_configured_rate() {
        let mut table = RequesterTable::new(4, 10, 2);
        let a = Ipv4Addr::new(10, 0, 0, 1);
        assert!(table.admit(a, 0));
        assert!(table.admit(a, 0));
        assert!(!table.admit(a, 0));
        // 10 per second: one token per 100 ms.
        assert!(!table.admit(a, 99_999_999));
        assert!(table.admit(a, 100_000_000));
        assert!(!table.admit(a, 100_000_000));
        // A long quiet spell refills only up to the burst.
        assert!(table.admit(a, 100_000_000_000));
        assert!(table.admit(a, 100_000_000_000));
        assert!(!table.admit(a, 100_000_000_000));
    }

    #[test]
    fn full_table_evicts_the_least_recently_seen() {
        let mut table = RequesterTable::new(3, 1, 1);
        let address = |i: u8| Ipv4Addr::new(192, 168, 0, i);
        assert!(table.admit(address(1), 0));
        assert!(table.admit(address(2), 0));
        assert!(table.admit(address(3), 0));
        // 1 is seen again (and refused: its bucket is empty): 2 is now oldest.
        assert!(!table.admit(address(1), 0));
        assert!(table.admit(address(4), 0));
        assert_eq!(table.len(), 3);
        assert!(!table.contains(address(2)));
        assert!(
            table.contains(address(1)) && table.contains(address(3)) && table.contains(address(4))
        );
        // A forgotten address starts over with a full bucket.
        assert!(table.admit(address(2), 0));
        assert!(!table.contains(address(3)));
        // Churn through many addresses: the index stays consistent.
        for i in 0..10_000u32 {
            let a = Ipv4Addr::from_bits(0x0a00_0000 + i * 7919);
            assert!(table.admit(a, 0));
            assert!(!table.admit(a, 0), "address {i} tracked");
            assert_eq!(table.len(), 3);
        }
    }

    #[test]
    fn serving_and_ignoring_allocate_nothing() {
        let mut opts = options();
        opts.retention_messages = 400;
        opts.requesters_max = 2;
        let mut f = Fixture::new(opts, 1000);
        // Requests of every kind, from several addresses (the table of 2
        // evicts), served and ignored.
        let others: Vec<UdpSocket> = (0..3)
            .map(|_| {
                let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
                socket.connect(f.server.local_addr()).unwrap();
                socket
            })
            .collect();
        for round in 0..20u64 {
            let (first, messages) = decode(&f.ask(700 + round, 30));
            assert_eq!((first, messages.len()), (700 + round, 30));
            f.client.send(&[0u8; 7]).unwrap();
            f.request(Session::from_str("OTHER").unwrap(), 800, 1);
            f.request(session(), 5000, 1);
            f.request(session(), 3, 1);
            f.request(session(), 900, 0);
            for socket in &others {
                socket
                    .send(ReRequest::new(session(), 950, 10).as_bytes())
                    .unwrap();
            }
            append(&mut f.writer, 3);
        }
        f.poll_until("every request", |c| c.requests_served.get() == 80);
        assert_eq!(f.ignored(), 100);
        assert_eq!(f.poll_allocations, 0, "poll allocated");
    }
}
