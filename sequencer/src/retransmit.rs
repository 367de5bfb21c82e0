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
//! state is a [`SourceTable`]: fixed, hashed, never evicted (see there).
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
use tally_runtime::counters::{Counter, CounterFile};
use tally_runtime::net::UdpSocketRing;
use tally_wire::mold::{MoldHeader, PacketBuilder, ReRequest, Session};

use crate::journal::{JournalProgress, JournalReader, INDEX_STRIDE_BYTES};
use tally_config::ApplianceConfig;
use tally_runtime::net::AllowList;

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
    /// Cells per row of the per-source table ([`SourceTable`]).
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
    /// Datagrams from a source outside the allow-list.
    pub ignored_not_allowed: Counter,
    /// Requests whose source's reply byte budget could not hold a reply.
    pub ignored_source_budget: Counter,
    /// Requests the server's reply byte budget could not hold.
    pub ignored_global_budget: Counter,
    /// Requests unanswered because a journal record in their range failed
    /// its check.
    pub ignored_corrupt: Counter,
    /// Distinct damaged journal records found (each logged once).
    pub corrupt_records: Counter,
    /// Bytes of reply datagrams sent (MoldUDP64 header included).
    pub reply_bytes: Counter,
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
        "retransmit.ignored_not_allowed",
        "retransmit.ignored_source_budget",
        "retransmit.ignored_global_budget",
        "retransmit.ignored_corrupt",
        "retransmit.corrupt_records",
        "retransmit.reply_bytes",
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
            ignored_not_allowed: c(8),
            ignored_source_budget: c(9),
            ignored_global_budget: c(10),
            ignored_corrupt: c(11),
            corrupt_records: c(12),
            reply_bytes: c(13),
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

/// Rows of the per-source table: each source address owns one cell per row.
pub const SOURCE_TABLE_ROWS: usize = 4;

/// One cell of the per-source table: a request bucket and a reply byte
/// budget, shared by every address that hashes to it. Both in nano-units:
/// a bucket refills `rate` nano-units per nanosecond.
#[derive(Clone, Copy, Debug)]
struct SourceCell {
    requests_nano: u64,
    reply_nano_bytes: u64,
    refilled_ns: u64,
}

/// Largest byte burst a bucket may have (its nano-bytes fit a u64); the
/// configuration refuses more.
pub use tally_config::REPLY_BURST_BYTES_MAX;

/// A token bucket's level after `elapsed_ns` at `rate_per_sec` (tokens per
/// second, so nano-tokens per nanosecond), capped at `burst_nano`.
fn refilled(level_nano: u64, elapsed_ns: u64, rate_per_sec: u64, burst_nano: u64) -> u64 {
    let refill = (u128::from(elapsed_ns) * u128::from(rate_per_sec)).min(u128::from(burst_nano));
    (u128::from(level_nano) + refill).min(u128::from(burst_nano)) as u64
}

/// Request buckets and reply byte budgets per IPv4 source, in a fixed table
/// of `SOURCE_TABLE_ROWS` × `width` cells allocated at start and never
/// evicted (a count-min sketch of token buckets). A source's allowance is
/// the smallest of its cells'; whatever it is granted is taken from all of
/// them. Cells are shared, so a source that collides with a heavy one gets
/// less, never more: what one address receives is at most what one of its
/// cells ever held (`burst + rate × t`), however many other addresses ask,
/// and no request from anywhere refills or forgets a cell early. The row
/// hashes are keyed with secrets drawn at start, so an outsider cannot aim
/// addresses at a victim's cells.
#[derive(Debug)]
pub(crate) struct SourceTable {
    cells: Box<[SourceCell]>,
    /// Cells per row, a power of two.
    width: usize,
    seeds: [u64; SOURCE_TABLE_ROWS],
    request_rate_per_sec: u64,
    request_burst_nano: u64,
    reply_bytes_per_sec: u64,
    reply_burst_nano_bytes: u64,
}

impl SourceTable {
    pub(crate) fn new(
        cells_per_row: usize,
        request_rate_per_sec: u32,
        request_burst: u32,
        reply_bytes_per_sec: u64,
        reply_burst_bytes: u64,
    ) -> Self {
        assert!(cells_per_row > 0 && cells_per_row <= 1 << 24);
        assert!(request_rate_per_sec > 0 && request_burst > 0);
        assert!(reply_bytes_per_sec > 0);
        assert!(reply_burst_bytes > 0 && reply_burst_bytes <= REPLY_BURST_BYTES_MAX);
        use std::hash::BuildHasher;
        let keys = std::collections::hash_map::RandomState::new();
        let width = cells_per_row.next_power_of_two();
        let request_burst_nano = u64::from(request_burst) * TOKEN_NANO;
        let reply_burst_nano_bytes = reply_burst_bytes * TOKEN_NANO;
        let full = SourceCell {
            requests_nano: request_burst_nano,
            reply_nano_bytes: reply_burst_nano_bytes,
            refilled_ns: 0,
        };
        SourceTable {
            cells: vec![full; SOURCE_TABLE_ROWS * width].into_boxed_slice(),
            width,
            seeds: std::array::from_fn(|row| keys.hash_one(row as u64) | 1),
            request_rate_per_sec: u64::from(request_rate_per_sec),
            request_burst_nano,
            reply_bytes_per_sec,
            reply_burst_nano_bytes,
        }
    }

    /// The cell of `address` in `row`, refilled up to `now_ns`.
    fn cell(&mut self, row: usize, address: u32, now_ns: u64) -> usize {
        let mut h =
            (u64::from(address) ^ self.seeds[row].rotate_left(17)).wrapping_mul(self.seeds[row]);
        h ^= h >> 29;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 32;
        let index = row * self.width + (h as usize & (self.width - 1));
        let cell = &mut self.cells[index];
        let elapsed_ns = now_ns.saturating_sub(cell.refilled_ns);
        cell.requests_nano = refilled(
            cell.requests_nano,
            elapsed_ns,
            self.request_rate_per_sec,
            self.request_burst_nano,
        );
        cell.reply_nano_bytes = refilled(
            cell.reply_nano_bytes,
            elapsed_ns,
            self.reply_bytes_per_sec,
            self.reply_burst_nano_bytes,
        );
        cell.refilled_ns = cell.refilled_ns.max(now_ns);
        index
    }

    fn cells_of(&mut self, address: Ipv4Addr, now_ns: u64) -> [usize; SOURCE_TABLE_ROWS] {
        let address = address.to_bits();
        std::array::from_fn(|row| self.cell(row, address, now_ns))
    }

    /// Takes one request token from `address` (from each of its cells);
    /// false, taking nothing, when one of its cells has none.
    pub(crate) fn admit(&mut self, address: Ipv4Addr, now_ns: u64) -> bool {
        let cells = self.cells_of(address, now_ns);
        if cells
            .iter()
            .any(|&index| self.cells[index].requests_nano < TOKEN_NANO)
        {
            return false;
        }
        for index in cells {
            self.cells[index].requests_nano -= TOKEN_NANO;
        }
        true
    }

    /// Reply bytes `address` may receive now.
    pub(crate) fn reply_budget(&mut self, address: Ipv4Addr, now_ns: u64) -> u64 {
        let cells = self.cells_of(address, now_ns);
        cells
            .iter()
            .map(|&index| self.cells[index].reply_nano_bytes / TOKEN_NANO)
            .min()
            .unwrap_or(0)
    }

    /// Takes `bytes` (at most its [`reply_budget`](Self::reply_budget)) from
    /// every cell of `address`.
    pub(crate) fn charge(&mut self, address: Ipv4Addr, bytes: u64, now_ns: u64) {
        let nano = bytes * TOKEN_NANO;
        for index in self.cells_of(address, now_ns) {
            let cell = &mut self.cells[index];
            debug_assert!(cell.reply_nano_bytes >= nano, "charged past the budget");
            cell.reply_nano_bytes = cell.reply_nano_bytes.saturating_sub(nano);
        }
    }

    /// Memory held, bytes.
    #[cfg(test)]
    pub(crate) fn memory_bytes(&self) -> usize {
        self.cells.len() * std::mem::size_of::<SourceCell>()
    }
}

/// One token bucket of bytes: the server's reply byte rate, all sources
/// together.
#[derive(Clone, Copy, Debug)]
struct ByteBucket {
    nano_bytes: u64,
    refilled_ns: u64,
    bytes_per_sec: u64,
    burst_nano_bytes: u64,
}

impl ByteBucket {
    fn new(bytes_per_sec: u64, burst_bytes: u64) -> Self {
        assert!(bytes_per_sec > 0 && burst_bytes > 0 && burst_bytes <= REPLY_BURST_BYTES_MAX);
        ByteBucket {
            nano_bytes: burst_bytes * TOKEN_NANO,
            refilled_ns: 0,
            bytes_per_sec,
            burst_nano_bytes: burst_bytes * TOKEN_NANO,
        }
    }

    fn available(&mut self, now_ns: u64) -> u64 {
        let elapsed_ns = now_ns.saturating_sub(self.refilled_ns);
        self.nano_bytes = refilled(
            self.nano_bytes,
            elapsed_ns,
            self.bytes_per_sec,
            self.burst_nano_bytes,
        );
        self.refilled_ns = self.refilled_ns.max(now_ns);
        self.nano_bytes / TOKEN_NANO
    }

    fn take(&mut self, bytes: u64) {
        let nano = bytes * TOKEN_NANO;
        debug_assert!(self.nano_bytes >= nano);
        self.nano_bytes = self.nano_bytes.saturating_sub(nano);
    }
}

/// Damaged records already logged (by a hash of the reader's error, which
/// names the record's offset), so each is logged once, not per request.
#[derive(Debug)]
pub(crate) struct DamageLog {
    seen: [u64; 64],
    len: usize,
}

impl DamageLog {
    pub(crate) fn new() -> Self {
        DamageLog {
            seen: [0; 64],
            len: 0,
        }
    }

    /// True the first time this error is seen (then the caller logs it).
    pub(crate) fn first_time(&mut self, error: &io::Error) -> bool {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        error.to_string().hash(&mut hasher);
        let key = hasher.finish();
        if self.seen[..self.len.min(self.seen.len())].contains(&key) {
            return false;
        }
        self.seen[self.len % self.seen.len()] = key;
        self.len += 1;
        true
    }
}

/// Whether `error` is a record that failed its check (the reader's
/// `InvalidData`), as opposed to an I/O failure.
pub(crate) fn is_damaged_record(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::InvalidData
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{FsyncPolicy, JournalWriter};
    use std::net::UdpSocket;
    use std::thread;
    use std::time::Instant;
    use tally_runtime::alloc_count::counting;
    use tally_runtime::net::Ipv4Network;
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
            allow: AllowList::new(&[Ipv4Network::new(Ipv4Addr::LOCALHOST, 8)]).unwrap(),
            reply_bytes_per_sec_per_source: 1 << 30,
            reply_burst_bytes_per_source: 1 << 30,
            reply_bytes_per_sec: 1 << 30,
            reply_burst_bytes: 1 << 30,
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
                &c.ignored_not_allowed,
                &c.ignored_source_budget,
                &c.ignored_global_budget,
                &c.ignored_corrupt,
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
        let mut table = SourceTable::new(4, 10, 2, 1000, 1000);
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
    fn reply_budget_refills_at_its_rate_and_charges_take_from_it() {
        // 1000 bytes per second, 500 back to back.
        let mut table = SourceTable::new(64, 1000, 1000, 1000, 500);
        let a = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(table.reply_budget(a, 0), 500);
        table.charge(a, 400, 0);
        assert_eq!(table.reply_budget(a, 0), 100);
        // 1 byte per millisecond, never past the burst.
        assert_eq!(table.reply_budget(a, 50_000_000), 150);
        assert_eq!(table.reply_budget(a, 10_000_000_000), 500);
        let mut bucket = ByteBucket::new(1000, 500);
        assert_eq!(bucket.available(0), 500);
        bucket.take(500);
        assert_eq!(bucket.available(0), 0);
        assert_eq!(bucket.available(250_000_000), 250);
    }

    /// However many addresses ask, one address never receives more than its
    /// own budget: cells are shared (a collision makes it less), never
    /// evicted, never reset.
    #[test]
    fn churned_sources_never_reset_a_victims_budget() {
        let mut table = SourceTable::new(16, 1_000_000, 1_000_000, 1000, 1000);
        let victim = Ipv4Addr::new(192, 168, 0, 7);
        assert_eq!(table.reply_budget(victim, 0), 1000);
        table.charge(victim, 1000, 0);
        // 100 000 other addresses pass through a table of 4 × 16 cells.
        for i in 0..100_000u32 {
            let other = Ipv4Addr::from_bits(0x0a00_0000 + i * 7919);
            let budget = table.reply_budget(other, 0);
            table.charge(other, budget.min(10), 0);
            assert!(table.admit(other, 0));
        }
        assert_eq!(table.reply_budget(victim, 0), 0, "still spent");
        // Only time refills it, at its rate.
        assert!(table.reply_budget(victim, 100_000_000) <= 100);
        assert_eq!(table.memory_bytes(), 4 * 16 * 24);
    }

    #[test]
    fn sources_outside_the_allow_list_get_nothing() {
        let mut opts = options();
        opts.allow = AllowList::new(&[Ipv4Network::parse("127.0.0.2").unwrap()]).unwrap();
        let mut f = Fixture::new(opts, 50);
        f.request(session(), 1, 5);
        f.poll_until("not allowed", |c| c.ignored_not_allowed.get() == 1);
        assert_eq!(f.receive(), None);
        assert_eq!(f.counters.requests_served.get(), 0);
    }

    #[test]
    fn replies_fit_the_source_budget_and_stop_when_it_is_spent() {
        let mut opts = options();
        opts.reply_burst_bytes_per_source = 600;
        opts.reply_bytes_per_sec_per_source = 1;
        let mut f = Fixture::new(opts, 500);
        let mut received = 0usize;
        for round in 0..10u64 {
            let served = f.counters.requests_served.get();
            let refused = f.counters.ignored_source_budget.get();
            f.request(session(), 1 + round * 20, 20);
            f.poll_until("an answer", |c| {
                c.requests_served.get() > served || c.ignored_source_budget.get() > refused
            });
            if f.counters.requests_served.get() > served {
                let reply = f.receive().expect("a reply");
                let (first, messages) = decode(&reply);
                assert_eq!(first, 1 + round * 20);
                assert!(!messages.is_empty());
                received += reply.len();
            }
        }
        assert!(received <= 600, "{received} bytes");
        assert!(received >= 600 - 20 - 43, "the budget is used: {received}");
        assert_eq!(f.counters.reply_bytes.get(), received as u64);
        assert!(f.counters.ignored_source_budget.get() >= 1);
        assert_eq!(f.receive(), None);
    }

    #[test]
    fn the_server_budget_caps_every_source_together() {
        let mut opts = options();
        opts.reply_burst_bytes = 1000;
        opts.reply_bytes_per_sec = 1;
        let mut f = Fixture::new(opts, 500);
        let other = UdpSocket::bind("127.0.0.3:0").unwrap();
        other.connect(f.server.local_addr()).unwrap();
        for round in 0..6u64 {
            f.request(session(), 1 + round, 30);
            other
                .send(ReRequest::new(session(), 100 + round, 30).as_bytes())
                .unwrap();
        }
        f.poll_until("every request", |c| {
            c.requests_served.get() + c.ignored_global_budget.get() == 12
        });
        assert!(f.counters.reply_bytes.get() <= 1000);
        assert!(f.counters.ignored_global_budget.get() >= 1);
    }

    /// A record whose payload fails its CRC is never sent: no reply for a
    /// range that reaches it, counted, while other ranges are served.
    #[test]
    fn a_damaged_record_is_never_sent_and_the_loop_goes_on() {
        let mut f = Fixture::new(options(), 70);
        // Records of 7 messages: flip one payload byte of the 3rd record
        // (messages 15..=21).
        let path = f.writer.path().to_path_buf();
        let mut bytes = std::fs::read(&path).unwrap();
        let mut offset = crate::journal::FILE_HEADER_BYTES;
        for _ in 0..2 {
            let len = u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
            offset += crate::journal::RECORD_HEADER_BYTES + len;
        }
        bytes[offset + crate::journal::RECORD_HEADER_BYTES + 5] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();

        for _ in 0..3 {
            let ignored = f.counters.ignored_corrupt.get();
            f.request(session(), 16, 3);
            f.poll_until("the damaged range", |c| c.ignored_corrupt.get() > ignored);
        }
        // A range that starts before it and reaches it: nothing either.
        f.request(session(), 10, 10);
        f.poll_until("the range across", |c| c.ignored_corrupt.get() == 4);
        assert_eq!(f.receive(), None, "nothing of a damaged range is sent");
        assert_eq!(
            f.counters.corrupt_records.get(),
            1,
            "one record, logged once"
        );
        // Ranges before and after are served.
        let (first, messages) = decode(&f.ask(1, 14));
        assert_eq!((first, messages.len()), (1, 14));
        let (first, messages) = decode(&f.ask(22, 7));
        assert_eq!((first, messages.len()), (22, 7));
        assert_eq!(f.counters.requests_served.get(), 2);
    }

    #[test]
    fn serving_and_ignoring_allocate_nothing() {
        let mut opts = options();
        opts.retention_messages = 400;
        opts.requesters_max = 2;
        let mut f = Fixture::new(opts, 1000);
        // Requests of every kind, from several addresses (sharing a table of
        // 4 × 2 cells), served and ignored.
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
