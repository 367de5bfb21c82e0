//! `tally-monitor`'s library: the read side of DESIGN.md §6. A replica of the
//! stream, with bounded indexes of its recent history, served over
//! HTTP/JSON: availability by SKU symbol, a cell's recent events, an order's
//! timeline, a hold's status, depleted SKUs, the replica's digest
//! (`/digest`), `/health`, `/ready` and Prometheus `/metrics`.
//!
//! # Threads and sharing
//!
//! [`Monitor::start`] spawns
//! - one **stream thread**, which owns the [`StreamConsumer`]. It waits for
//!   a batch of messages (one [`StreamConsumer::wait`]: whatever one poll of
//!   the sockets delivered, or nothing after `publish_interval`), copies them
//!   into a preallocated staging buffer *without* holding any lock, then
//!   takes the write lock of the [`ReadModel`] **once per batch**, applies
//!   the batch to the replica and the indexes and refreshes the liveness
//!   figures (newest seq, last activity, consumer counters);
//! - `http_workers` **HTTP threads** (a small fixed pool over one
//!   `tiny_http` listener), each answering one request at a time under the
//!   read lock.
//!
//! A `RwLock` is acceptable here: this is the read side, a separate process
//! (or thread) that only *consumes* the stream; the sequencer's hot path
//! never waits on it, and nothing on it sends anything back to the
//! appliance. The stream thread never blocks on a socket (nor on the replay
//! feed's connect) while holding the lock; a reader holds the read lock for
//! one answer, whose work is bounded whatever the size of the catalogue (see
//! "Paging" below); the one O(cells) answer, `/digest`, is computed once per
//! change of the replica and cached. While a reader holds it,
//! the stream thread's next batch waits; datagrams queue in the kernel and
//! the consumer's io_uring buffers meanwhile, and anything lost is filled by
//! the consumer's re-requests.
//!
//! # Freshness on every answer
//!
//! Every JSON body carries `"seq"` (the stream sequence number the answer
//! reflects), `"lag"` (newest seq seen on the stream − `seq`) and `"stale"`
//! (true when no data or heartbeat arrived for the consumer's
//! `stale_timeout_ns` — the sequencer is stopped or the link is cut — or
//! when the stream thread failed). `stale` is computed when the answer is
//! made, from the last activity the stream thread recorded, so it turns true
//! even when the stream thread itself is stuck.
//!
//! # Bounded indexes
//!
//! Next to the [`Replica`] (itself fixed-size), the model keeps, all
//! allocated in [`ReadModel::new`] from [`IndexLimits`]:
//! - **cell history**: for up to `history_cells_max` cells (location, sku),
//!   the last `history_depth` events that touched the cell (`I`, `D`, `H`,
//!   `E`) with the cell's on_hand/reserved right after each;
//! - **order timelines**: for up to `orders_max` orders (origin, order_id),
//!   the last `timeline_events_max` messages about the order (its `O`, `M`,
//!   `X` commands and the `D`/`J` events that answered them) and its status;
//! - **holds**: for up to `holds_max` holds (origin, hold_id), the same for
//!   `V`, `C`, `K` and their `H`/`E`/`D`/`J`, and the hold's status.
//!
//! The tables evict by the clock algorithm (a second chance for entries
//! touched since the hand last passed), rings overwrite their oldest entry;
//! every eviction and overwrite is counted ([`IndexCounters`], also in
//! `/metrics`). An order or hold evicted from the index is still answered
//! from the replica's own records while the replica has them (status, no
//! events). Holds carried over from an earlier session (re-announced by the
//! warehouse's snapshot broadcast without their client ids) count in every
//! cell's `reserved` but cannot be looked up by hold id.
//!
//! # Depleted
//!
//! `GET /depleted` (`scope=all`, the default) lists the SKUs of the
//! directory with nothing available anywhere: available (on_hand −
//! reserved) is 0 at every location, so no order for it can succeed. With
//! `scope=any` it lists the SKUs that are out at one location or more: a
//! cell that some event named (version ≠ 0: the location carries the SKU)
//! with available 0. Each entry names the locations where the SKU is out
//! (ascending by id) and its directory `position`.
//!
//! # Paging
//!
//! No answer serialises the whole catalogue. Listings come in pages of at
//! most `limit` entries ([`PAGE_LIMIT_DEFAULT`] when absent, a larger one
//! capped at [`PAGE_LIMIT_MAX`]; 0 or not a number: 400), and each answer's
//! `next` is the `after` of the next page, null on the last:
//! - `/depleted?after=POSITION` walks the SKU directory in its order
//!   (positions are stable: SKUs are only added at the end, so a walk sees
//!   every SKU once, and SKUs added meanwhile at its end). One request
//!   examines at most [`DEPLETED_SCAN_SKUS_MAX`] SKUs and
//!   [`DEPLETED_SCAN_CELLS_MAX`] stocked cells (each SKU through its own
//!   cells, [`Replica::for_each_stocked_cell`]), so a page may hold fewer
//!   than `limit` entries, or none, and still have a `next`; `count` is the
//!   SKUs found in the part examined (`scanned`). An `after` outside the
//!   directory: 400.
//! - `/availability/{symbol}?after=LOCATION_ID` lists the SKU's stocked
//!   cells ascending by location id (work: the SKU's stocked cells); the
//!   totals always cover every stocked cell.
//!
//! `/digest?locations=A,B` gives the subset digest a store node keeping
//! those locations reports ([`Replica::digest_of`]); the full digest and
//! the last subset asked for are cached until the replica changes.
//!
//! # Who may read
//!
//! Every endpoint but `/health` and `/ready` needs HTTP Basic credentials of
//! a configured client ([`HttpAuthConfig`]: the appliance's `[[clients]]`
//! and their argon2 hashes) whose role may read; `/metrics` may be opened to
//! an unauthenticated scraper. No or wrong credentials: 401 with
//! `WWW-Authenticate`; a role that may not read: 403. A verified credential
//! is remembered (a bounded cache keyed by a keyed hash of user and
//! password, never the password), so a request costs no argon2 run; a cache
//! miss costs one, and each source address may cause at most
//! `verifications_per_sec_per_source` of those (429 beyond), so a
//! wrong-password flood burns at most that much CPU per source and never
//! more than the HTTP workers (each verifies one at a time).
//!
//! This module never sends to the appliance, never writes files, and reads
//! no environment variables.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use tally_wire::{delta_reason, hold_outcome, Message, MAX_MESSAGE_SIZE};

use tally_config::gateway::{ClientEntry, Role};
use tally_config::ApplianceConfig;

use tally_client::consumer::{
    monotonic_ns, ConsumerConfig, ConsumerStats, RecoveryMode, StreamConsumer,
};
use tally_client::replica::{Applied, Cell, LocationSet, Replica, ReplicaLimits, CARRIED_HOLD_BIT};
use tally_client::text;

// ---------------------------------------------------------------------------
// Configuration.

/// Sizes of the monitor's own indexes (next to the replica's
/// [`ReplicaLimits`]). Every table is allocated once, at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexLimits {
    /// Events kept per cell (the newest).
    pub history_depth: u32,
    /// Cells with a history.
    pub history_cells_max: u32,
    /// Orders with a timeline.
    pub orders_max: u32,
    /// Holds with a timeline.
    pub holds_max: u32,
    /// Messages kept per order or hold timeline (the newest). An order that
    /// is placed, modified and cancelled has 6.
    pub timeline_events_max: u32,
}

impl IndexLimits {
    /// 16 events × 8 192 cells, 16 384 orders and 8 192 holds with 8
    /// messages each: about 23 MiB.
    pub const DEFAULT: IndexLimits = IndexLimits {
        history_depth: 16,
        history_cells_max: 8192,
        orders_max: 16_384,
        holds_max: 8192,
        timeline_events_max: 8,
    };

    /// Checks every limit is usable.
    pub fn validate(&self) -> Result<(), &'static str> {
        const MAX: u32 = 1 << 24;
        let all = [
            self.history_depth,
            self.history_cells_max,
            self.orders_max,
            self.holds_max,
            self.timeline_events_max,
        ];
        if all.iter().any(|&n| n == 0 || n > MAX) {
            return Err("every index limit must be in 1..=16777216");
        }
        if u64::from(self.history_depth) * u64::from(self.history_cells_max) > 1 << 26 {
            return Err("history_depth × history_cells_max must be at most 2^26 events");
        }
        Ok(())
    }
}

impl Default for IndexLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Everything [`Monitor::start`] needs; [`MonitorConfig::new`] fills in
/// defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitorConfig {
    /// HTTP listen address (port 0: any free port, see
    /// [`MonitorHandle::local_addr`]).
    pub listen: SocketAddr,
    /// The stream to follow. `start_seq` 1 (the default) rebuilds the whole
    /// session from the replay feed, including the authority's snapshot
    /// broadcast.
    pub consumer: ConsumerConfig,
    /// Table sizes of the replica.
    pub limits: ReplicaLimits,
    /// Table sizes of the monitor's indexes.
    pub indexes: IndexLimits,
    /// HTTP worker threads.
    pub http_workers: usize,
    /// `/ready` answers 200 only while the lag is at most this.
    pub ready_lag_max: u64,
    /// The stream thread publishes liveness at least this often while the
    /// stream is quiet.
    pub publish_interval: Duration,
    /// Messages the staging buffer holds before it must grow (growth is
    /// counted; one consumer poll rarely delivers more).
    pub staging_messages: usize,
    /// Who may read ([`HttpAuthConfig::deny_all`] by default: only
    /// `/health` and `/ready` answer until clients are configured).
    pub auth: HttpAuthConfig,
}

impl MonitorConfig {
    /// Defaults: the replica's [`ReplicaLimits::small`], [`IndexLimits::DEFAULT`],
    /// 2 HTTP workers, ready within 1 000 messages of the newest, liveness
    /// published every 50 ms, 16 384 staged messages.
    pub fn new(listen: SocketAddr, consumer: ConsumerConfig) -> MonitorConfig {
        MonitorConfig {
            listen,
            consumer,
            limits: ReplicaLimits::small(),
            indexes: IndexLimits::DEFAULT,
            http_workers: 2,
            ready_lag_max: 1000,
            publish_interval: Duration::from_millis(50),
            staging_messages: 16_384,
            auth: HttpAuthConfig::deny_all(),
        }
    }

    fn validate(&self) -> io::Result<()> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        self.limits
            .validate()
            .map_err(|e| invalid(format!("replica limits: {e}")))?;
        self.indexes
            .validate()
            .map_err(|e| invalid(format!("index limits: {e}")))?;
        if !(1..=64).contains(&self.http_workers) {
            return Err(invalid("http_workers must be 1..=64".into()));
        }
        if self.publish_interval.is_zero() || self.publish_interval > Duration::from_secs(1) {
            return Err(invalid("publish_interval must be within (0, 1 s]".into()));
        }
        if self.staging_messages == 0 {
            return Err(invalid("staging_messages must be at least 1".into()));
        }
        self.auth.validate().map_err(invalid)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Stored messages and bounded tables.

/// One stream message as the indexes keep it, with the cell's state right
/// after it (cell history only).
#[derive(Clone, Copy, Debug)]
struct StoredMessage {
    seq: u64,
    after_on_hand: u32,
    after_reserved: u32,
    len: u8,
    bytes: [u8; MAX_MESSAGE_SIZE],
}

impl StoredMessage {
    const EMPTY: StoredMessage = StoredMessage {
        seq: 0,
        after_on_hand: 0,
        after_reserved: 0,
        len: 0,
        bytes: [0; MAX_MESSAGE_SIZE],
    };

    fn new(seq: u64, message: &Message) -> StoredMessage {
        let source = message.as_bytes();
        let mut stored = StoredMessage {
            seq,
            len: source.len() as u8,
            ..StoredMessage::EMPTY
        };
        stored.bytes[..source.len()].copy_from_slice(source);
        stored
    }

    fn with_after(mut self, cell: Cell) -> StoredMessage {
        self.after_on_hand = cell.on_hand;
        self.after_reserved = cell.reserved;
        self
    }

    fn message(&self) -> Message<'_> {
        Message::parse(&self.bytes[..usize::from(self.len)])
            .expect("stored from a message that parsed")
    }

    /// The message as JSON ([`text::json`]), with `after` for cell history.
    fn json(&self, with_after: bool) -> Value {
        let mut value = text::json(self.seq, &self.message());
        if with_after {
            value["after"] = json!({
                "on_hand": self.after_on_hand,
                "reserved": self.after_reserved,
                "available": self.after_on_hand.saturating_sub(self.after_reserved),
            });
        }
        value
    }
}

/// What [`ClockTable::claim`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim<K> {
    /// The key had this slot.
    Existing(u32),
    /// The key got a never-used slot.
    Fresh(u32),
    /// The key got the slot of the evicted key.
    Evicted(u32, K),
}

impl<K> Claim<K> {
    fn slot(&self) -> u32 {
        match *self {
            Claim::Existing(slot) | Claim::Fresh(slot) | Claim::Evicted(slot, _) => slot,
        }
    }
}

/// Keys mapped to a fixed number of slots; when full, a new key takes the
/// slot of one not used since the clock hand last passed it.
#[derive(Debug)]
struct ClockTable<K> {
    index: HashMap<K, u32>,
    keys: Vec<K>,
    referenced: Vec<bool>,
    hand: usize,
    capacity: usize,
}

impl<K: Copy + Eq + Hash> ClockTable<K> {
    fn new(capacity: usize) -> Self {
        assert!(capacity > 0 && capacity <= u32::MAX as usize);
        ClockTable {
            // Twice the entries: with the load at most half, hashbrown
            // rehashes in place instead of growing when removals leave
            // tombstones.
            index: HashMap::with_capacity(2 * capacity),
            keys: Vec::with_capacity(capacity),
            referenced: Vec::with_capacity(capacity),
            hand: 0,
            capacity,
        }
    }

    fn find(&self, key: &K) -> Option<u32> {
        self.index.get(key).copied()
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// The slot of `key`, marked as used; a new slot when absent.
    fn claim(&mut self, key: K) -> Claim<K> {
        if let Some(&slot) = self.index.get(&key) {
            self.referenced[slot as usize] = true;
            return Claim::Existing(slot);
        }
        if self.keys.len() < self.capacity {
            let slot = self.keys.len();
            self.keys.push(key);
            self.referenced.push(true);
            self.index.insert(key, slot as u32);
            return Claim::Fresh(slot as u32);
        }
        // At most one full turn clears every bit, so this ends.
        while self.referenced[self.hand] {
            self.referenced[self.hand] = false;
            self.hand = (self.hand + 1) % self.capacity;
        }
        let slot = self.hand;
        self.hand = (self.hand + 1) % self.capacity;
        let evicted = std::mem::replace(&mut self.keys[slot], key);
        self.index.remove(&evicted);
        self.index.insert(key, slot as u32);
        self.referenced[slot] = true;
        Claim::Evicted(slot as u32, evicted)
    }

    fn memory_bytes(&self) -> usize {
        self.index.capacity() * (std::mem::size_of::<K>() + 4 + 1)
            + self.capacity * (std::mem::size_of::<K>() + 1)
    }
}

/// One ring of `depth` stored messages per slot, in one allocation.
#[derive(Debug)]
struct Rings {
    depth: usize,
    entries: Box<[StoredMessage]>,
    heads: Box<[RingHead]>,
}

#[derive(Clone, Copy, Debug, Default)]
struct RingHead {
    /// Entries held (≤ depth).
    len: u32,
    /// Where the next entry goes.
    next: u32,
    /// Entries ever pushed since the slot was last reset.
    total: u64,
}

impl Rings {
    fn new(slots: usize, depth: usize) -> Rings {
        Rings {
            depth,
            entries: vec![StoredMessage::EMPTY; slots * depth].into_boxed_slice(),
            heads: vec![RingHead::default(); slots].into_boxed_slice(),
        }
    }

    fn reset(&mut self, slot: u32) {
        self.heads[slot as usize] = RingHead::default();
    }

    /// Appends; returns whether the oldest entry was overwritten.
    fn push(&mut self, slot: u32, entry: StoredMessage) -> bool {
        let head = &mut self.heads[slot as usize];
        self.entries[slot as usize * self.depth + head.next as usize] = entry;
        head.next = ((head.next as usize + 1) % self.depth) as u32;
        head.total += 1;
        if (head.len as usize) < self.depth {
            head.len += 1;
            false
        } else {
            true
        }
    }

    /// The slot's entries, oldest first.
    fn iter(&self, slot: u32) -> impl DoubleEndedIterator<Item = &StoredMessage> + '_ {
        let head = self.heads[slot as usize];
        let len = head.len as usize;
        let start = if len < self.depth {
            0
        } else {
            head.next as usize
        };
        let base = slot as usize * self.depth;
        (0..len).map(move |i| &self.entries[base + (start + i) % self.depth])
    }

    fn total(&self, slot: u32) -> u64 {
        self.heads[slot as usize].total
    }

    fn memory_bytes(&self) -> usize {
        self.entries.len() * std::mem::size_of::<StoredMessage>()
            + self.heads.len() * std::mem::size_of::<RingHead>()
    }
}

// ---------------------------------------------------------------------------
// Indexes.

/// Where an order stands, from its timeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum OrderStatus {
    /// Only a modify or cancel was seen (the `O` is older than the monitor's
    /// history).
    #[default]
    Unknown,
    /// The `O` was seen; no outcome yet.
    Pending,
    /// Accepted (`D(−qty, O)`); `remaining` units are taken.
    Accepted,
    /// Rejected (`J`).
    Rejected,
    /// Cancelled (`D(+remaining, X)`).
    Cancelled,
}

impl OrderStatus {
    fn name(self) -> &'static str {
        match self {
            OrderStatus::Unknown => "unknown",
            OrderStatus::Pending => "pending",
            OrderStatus::Accepted => "accepted",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct OrderMeta {
    /// Seq and time of the `O` (0 = not seen).
    order_seq: u64,
    order_timestamp_ns: u64,
    /// Location asked for (0 = any).
    requested_location: u16,
    /// Location the stock came from (once accepted).
    location: u16,
    sku: u32,
    /// Quantity ordered / accepted.
    qty: u32,
    /// Quantity now (after modifies; 0 once cancelled).
    remaining: u32,
    status: OrderStatus,
    /// Reason of the `J` that rejected the order.
    reject_reason: u8,
}

/// Where a hold stands, from its timeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum HoldStatus {
    /// Only a confirm or release was seen.
    #[default]
    Unknown,
    /// The `V` was seen; no outcome yet.
    Pending,
    /// Placed (`H`), not ended.
    Open,
    /// Rejected (`J`).
    Rejected,
    /// Ended `E(C)`: the units were sold.
    Confirmed,
    /// Ended `E(R)`.
    Released,
    /// Ended `E(X)`: past its TTL.
    Expired,
}

impl HoldStatus {
    fn name(self) -> &'static str {
        match self {
            HoldStatus::Unknown => "unknown",
            HoldStatus::Pending => "pending",
            HoldStatus::Open => "open",
            HoldStatus::Rejected => "rejected",
            HoldStatus::Confirmed => "confirmed",
            HoldStatus::Released => "released",
            HoldStatus::Expired => "expired",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct HoldMeta {
    /// Seq and time of the `V` (0 = not seen); the hold's key on the stream.
    reserve_seq: u64,
    reserve_timestamp_ns: u64,
    location: u16,
    sku: u32,
    qty: u32,
    ttl_ms: u32,
    expires_at_ns: u64,
    status: HoldStatus,
    reject_reason: u8,
    /// Seq of the `E` that ended it (0 = not ended).
    ended_seq: u64,
}

/// Counts of what the monitor's indexes dropped or could not place. Plain
/// integers, updated by the stream thread under the write lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IndexCounters {
    /// Cells whose history was evicted to make room for another cell.
    pub cells_evicted: u64,
    /// Cell events that pushed an older one out of its ring.
    pub cell_events_overwritten: u64,
    /// Order timelines evicted.
    pub orders_evicted: u64,
    /// Order messages that pushed an older one out of its timeline.
    pub order_events_overwritten: u64,
    /// Hold timelines evicted.
    pub holds_evicted: u64,
    /// Hold messages that pushed an older one out of its timeline.
    pub hold_events_overwritten: u64,
    /// Outcomes (`D`, `J`, `H`, `E`) whose command the monitor no longer
    /// knew (older than the replica's pending window, or never seen).
    pub outcomes_unattributed: u64,
    /// `H` events of holds carried over from an earlier session (no client
    /// id: not indexed by hold id).
    pub carried_holds: u64,
    /// Times the staging buffer had to grow (a batch larger than
    /// `staging_messages`).
    pub staging_growths: u64,
}

/// The monitor's own indexes (see the module docs).
#[derive(Debug)]
struct Indexes {
    cells: ClockTable<(u16, u32)>,
    cell_rings: Rings,
    orders: ClockTable<(u16, u64)>,
    order_meta: Box<[OrderMeta]>,
    order_rings: Rings,
    holds: ClockTable<(u16, u64)>,
    hold_meta: Box<[HoldMeta]>,
    hold_rings: Rings,
    /// Seq of a hold's `V` → its slot in `holds`.
    hold_by_reserve: HashMap<u64, u32>,
    counters: IndexCounters,
}

impl Indexes {
    fn new(limits: &IndexLimits) -> Indexes {
        let cells = limits.history_cells_max as usize;
        let orders = limits.orders_max as usize;
        let holds = limits.holds_max as usize;
        let timeline = limits.timeline_events_max as usize;
        Indexes {
            cells: ClockTable::new(cells),
            cell_rings: Rings::new(cells, limits.history_depth as usize),
            orders: ClockTable::new(orders),
            order_meta: vec![OrderMeta::default(); orders].into_boxed_slice(),
            order_rings: Rings::new(orders, timeline),
            holds: ClockTable::new(holds),
            hold_meta: vec![HoldMeta::default(); holds].into_boxed_slice(),
            hold_rings: Rings::new(holds, timeline),
            hold_by_reserve: HashMap::with_capacity(2 * holds),
            counters: IndexCounters::default(),
        }
    }

    fn memory_bytes(&self) -> usize {
        self.cells.memory_bytes()
            + self.cell_rings.memory_bytes()
            + self.orders.memory_bytes()
            + self.order_meta.len() * std::mem::size_of::<OrderMeta>()
            + self.order_rings.memory_bytes()
            + self.holds.memory_bytes()
            + self.hold_meta.len() * std::mem::size_of::<HoldMeta>()
            + self.hold_rings.memory_bytes()
            + self.hold_by_reserve.capacity() * (8 + 4 + 1)
    }

    /// The timeline slot of order `key`, emptied when it is new.
    fn order_slot(&mut self, key: (u16, u64)) -> u32 {
        let claim = self.orders.claim(key);
        let slot = claim.slot();
        if !matches!(claim, Claim::Existing(_)) {
            if matches!(claim, Claim::Evicted(..)) {
                self.counters.orders_evicted += 1;
            }
            self.order_meta[slot as usize] = OrderMeta::default();
            self.order_rings.reset(slot);
        }
        slot
    }

    /// The timeline slot of hold `key`, emptied when it is new.
    fn hold_slot(&mut self, key: (u16, u64)) -> u32 {
        let claim = self.holds.claim(key);
        let slot = claim.slot();
        if !matches!(claim, Claim::Existing(_)) {
            if matches!(claim, Claim::Evicted(..)) {
                self.counters.holds_evicted += 1;
                let old = self.hold_meta[slot as usize].reserve_seq;
                if self.hold_by_reserve.get(&old) == Some(&slot) {
                    self.hold_by_reserve.remove(&old);
                }
            }
            self.hold_meta[slot as usize] = HoldMeta::default();
            self.hold_rings.reset(slot);
        }
        slot
    }

    fn push_order(&mut self, slot: u32, seq: u64, message: &Message) {
        if self
            .order_rings
            .push(slot, StoredMessage::new(seq, message))
        {
            self.counters.order_events_overwritten += 1;
        }
    }

    fn push_hold(&mut self, slot: u32, seq: u64, message: &Message) {
        if self.hold_rings.push(slot, StoredMessage::new(seq, message)) {
            self.counters.hold_events_overwritten += 1;
        }
    }

    /// Records a cell event with the cell's state after it.
    fn cell_event(
        &mut self,
        seq: u64,
        message: &Message,
        location: u16,
        sku: u32,
        replica: &Replica,
    ) {
        let Some(cell) = replica.cell(location, sku) else {
            return; // dropped by the replica (location 0, full directory)
        };
        let claim = self.cells.claim((location, sku));
        let slot = claim.slot();
        if !matches!(claim, Claim::Existing(_)) {
            if matches!(claim, Claim::Evicted(..)) {
                self.counters.cells_evicted += 1;
            }
            self.cell_rings.reset(slot);
        }
        let entry = StoredMessage::new(seq, message).with_after(cell);
        if self.cell_rings.push(slot, entry) {
            self.counters.cell_events_overwritten += 1;
        }
    }

    /// Indexes `message` at `seq`, which `replica` has just applied.
    fn on_message(&mut self, seq: u64, message: &Message, replica: &Replica) {
        let origin = message.header().origin.get();
        let timestamp_ns = message.header().timestamp_ns.get();
        match *message {
            Message::Order(m) => {
                let slot = self.order_slot((origin, m.order_id.get()));
                let meta = &mut self.order_meta[slot as usize];
                if meta.order_seq == 0 {
                    *meta = OrderMeta {
                        order_seq: seq,
                        order_timestamp_ns: timestamp_ns,
                        requested_location: m.location.get(),
                        location: m.location.get(),
                        sku: m.sku.get(),
                        qty: m.qty.get(),
                        remaining: 0,
                        status: OrderStatus::Pending,
                        reject_reason: 0,
                    };
                }
                self.push_order(slot, seq, message);
            }
            Message::ModifyOrder(m) => {
                let slot = self.order_slot((origin, m.order_id.get()));
                self.push_order(slot, seq, message);
            }
            Message::CancelOrder(m) => {
                let slot = self.order_slot((origin, m.order_id.get()));
                self.push_order(slot, seq, message);
            }
            Message::Reserve(m) => {
                let slot = self.hold_slot((origin, m.hold_id.get()));
                let meta = &mut self.hold_meta[slot as usize];
                if meta.reserve_seq == 0 {
                    *meta = HoldMeta {
                        reserve_seq: seq,
                        reserve_timestamp_ns: timestamp_ns,
                        location: m.location.get(),
                        sku: m.sku.get(),
                        qty: m.qty.get(),
                        ttl_ms: m.ttl_ms.get(),
                        expires_at_ns: 0,
                        status: HoldStatus::Pending,
                        reject_reason: 0,
                        ended_seq: 0,
                    };
                    self.hold_by_reserve.insert(seq, slot);
                }
                self.push_hold(slot, seq, message);
            }
            Message::ConfirmHold(m) => {
                let slot = self.hold_slot((origin, m.hold_id.get()));
                self.push_hold(slot, seq, message);
            }
            Message::ReleaseHold(m) => {
                let slot = self.hold_slot((origin, m.hold_id.get()));
                self.push_hold(slot, seq, message);
            }
            Message::InventoryLevel(m) => {
                self.cell_event(seq, message, m.location.get(), m.sku.get(), replica);
            }
            Message::OnHandDelta(m) => {
                self.cell_event(seq, message, m.location.get(), m.sku.get(), replica);
                match m.reason {
                    delta_reason::ORDER
                    | delta_reason::MODIFY
                    | delta_reason::CANCEL
                    | delta_reason::HOLD_CONFIRMED => {
                        self.outcome(seq, message, m.cmd_seq.get(), replica);
                    }
                    _ => {} // transfers, adjustments, recounts: cell history only
                }
            }
            Message::HoldPlaced(m) => {
                self.cell_event(seq, message, m.location.get(), m.sku.get(), replica);
                let key = m.cmd_seq.get();
                if key & CARRIED_HOLD_BIT != 0 {
                    self.counters.carried_holds += 1;
                } else if let Some(&slot) = self.hold_by_reserve.get(&key) {
                    let meta = &mut self.hold_meta[slot as usize];
                    meta.status = HoldStatus::Open;
                    meta.expires_at_ns = m.expires_at_ns.get();
                    meta.location = m.location.get();
                    meta.sku = m.sku.get();
                    meta.qty = m.qty.get();
                    self.push_hold(slot, seq, message);
                } else {
                    self.counters.outcomes_unattributed += 1;
                }
            }
            Message::HoldEnded(m) => {
                self.cell_event(seq, message, m.location.get(), m.sku.get(), replica);
                let key = m.cmd_seq.get();
                if let Some(&slot) = self.hold_by_reserve.get(&key) {
                    let meta = &mut self.hold_meta[slot as usize];
                    meta.status = match m.outcome {
                        hold_outcome::CONFIRMED => HoldStatus::Confirmed,
                        hold_outcome::RELEASED => HoldStatus::Released,
                        hold_outcome::EXPIRED => HoldStatus::Expired,
                        _ => meta.status,
                    };
                    meta.ended_seq = seq;
                    self.push_hold(slot, seq, message);
                } else if key & CARRIED_HOLD_BIT == 0 {
                    self.counters.outcomes_unattributed += 1;
                }
            }
            Message::CommandRejected(m) => self.outcome(seq, message, m.cmd_seq.get(), replica),
            _ => {} // directory, system events, gateway rejects, T/Q/P commands
        }
    }

    /// A `D` or `J` answering the command at `cmd_seq`: files it in the
    /// timeline of that command's order or hold.
    fn outcome(&mut self, seq: u64, message: &Message, cmd_seq: u64, replica: &Replica) {
        let Some(command) = replica.command(cmd_seq) else {
            self.counters.outcomes_unattributed += 1;
            return;
        };
        let origin = command.header().origin.get();
        let rejected = match *message {
            Message::CommandRejected(j) => Some(j.reason),
            _ => None,
        };
        match command {
            Message::Order(o) => {
                let slot = self.order_slot((origin, o.order_id.get()));
                let meta = &mut self.order_meta[slot as usize];
                if meta.order_seq == 0 {
                    // The timeline was evicted and made again: start over.
                    meta.order_seq = cmd_seq;
                    meta.requested_location = o.location.get();
                    meta.sku = o.sku.get();
                    meta.qty = o.qty.get();
                }
                if meta.order_seq == cmd_seq {
                    match (rejected, *message) {
                        (Some(reason), _) => {
                            meta.status = OrderStatus::Rejected;
                            meta.reject_reason = reason;
                        }
                        (None, Message::OnHandDelta(d)) => {
                            meta.status = OrderStatus::Accepted;
                            meta.location = d.location.get();
                            meta.remaining = o.qty.get();
                        }
                        _ => {}
                    }
                } // else: a duplicate order id, rejected; the order stands
                self.push_order(slot, seq, message);
            }
            Message::ModifyOrder(m) => {
                let slot = self.order_slot((origin, m.order_id.get()));
                if rejected.is_none() {
                    self.order_meta[slot as usize].remaining = m.new_qty.get();
                }
                self.push_order(slot, seq, message);
            }
            Message::CancelOrder(x) => {
                let slot = self.order_slot((origin, x.order_id.get()));
                if rejected.is_none() {
                    let meta = &mut self.order_meta[slot as usize];
                    meta.remaining = 0;
                    meta.status = OrderStatus::Cancelled;
                }
                self.push_order(slot, seq, message);
            }
            Message::Reserve(v) => {
                let slot = self.hold_slot((origin, v.hold_id.get()));
                let meta = &mut self.hold_meta[slot as usize];
                if meta.reserve_seq == cmd_seq {
                    if let Some(reason) = rejected {
                        meta.status = HoldStatus::Rejected;
                        meta.reject_reason = reason;
                    }
                }
                self.push_hold(slot, seq, message);
            }
            Message::ConfirmHold(c) => {
                let slot = self.hold_slot((origin, c.hold_id.get()));
                self.push_hold(slot, seq, message);
            }
            Message::ReleaseHold(k) => {
                let slot = self.hold_slot((origin, k.hold_id.get()));
                self.push_hold(slot, seq, message);
            }
            _ => {} // transfers, recounts, adjustments
        }
    }
}

// ---------------------------------------------------------------------------
// The read model.

/// What the stream thread last recorded about the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Liveness {
    /// Last seq the consumer delivered (the replica applied everything up
    /// to it; undecodable messages are skipped but take their number).
    pub delivered_seq: u64,
    /// Newest seq known to exist on the stream.
    pub newest_seq: u64,
    /// When data or a heartbeat last arrived ([`monotonic_ns`]).
    pub last_activity_ns: u64,
    /// The stream is stale after this long without data or a heartbeat.
    pub stale_timeout_ns: u64,
    /// Multicast with re-requests, or the replay feed.
    pub mode: RecoveryMode,
    /// Replaying, filling a gap or waiting for re-requests.
    pub recovering: bool,
    /// The session ended (end-of-session seen and everything delivered).
    pub ended: bool,
    /// The stream's session name (blank until known).
    pub session: String,
    /// The consumer's counters.
    pub consumer: ConsumerStats,
    /// Batches the stream thread published.
    pub batches: u64,
    /// Why the stream thread stopped, if it failed.
    pub failed: Option<String>,
}

impl Liveness {
    fn new(stale_timeout_ns: u64, now_ns: u64) -> Liveness {
        Liveness {
            delivered_seq: 0,
            newest_seq: 0,
            last_activity_ns: now_ns,
            stale_timeout_ns,
            mode: RecoveryMode::Live,
            recovering: true,
            ended: false,
            session: String::new(),
            consumer: ConsumerStats::default(),
            batches: 0,
            failed: None,
        }
    }

    fn refresh(&mut self, consumer: &StreamConsumer) {
        self.delivered_seq = consumer.delivered_seq();
        self.newest_seq = consumer.newest_seq();
        self.last_activity_ns = consumer.last_activity_ns();
        self.mode = consumer.mode();
        self.recovering = consumer.is_recovering();
        self.ended = consumer.is_ended();
        let session = consumer.session();
        if self.session.as_bytes() != session.as_str().trim_end().as_bytes() {
            self.session = session.as_str().trim_end().to_string();
        }
        self.consumer = consumer.stats();
        self.batches += 1;
    }
}

/// The three figures every answer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Freshness {
    /// The stream sequence number the answer reflects.
    pub seq: u64,
    /// Newest seq seen on the stream.
    pub newest_seq: u64,
    /// `newest_seq − seq`.
    pub lag: u64,
    /// No data or heartbeat within the stale timeout, or the stream thread
    /// failed.
    pub stale: bool,
}

/// The replica, the indexes and the liveness figures: everything an answer
/// is made from. [`Monitor::start`] keeps one behind a lock; tests and tools
/// can also drive one directly with [`ReadModel::apply`] and answer with
/// [`ReadModel::respond`].
#[derive(Debug)]
pub struct ReadModel {
    replica: Replica,
    indexes: Indexes,
    live: Liveness,
    ready_lag_max: u64,
    /// Messages applied to the replica, ever (never reset): what a cached
    /// digest was computed at.
    applied: u64,
    /// The last full and subset digests, valid while `applied` has not
    /// moved (the HTTP workers share it under the read lock).
    digests: Mutex<DigestCache>,
}

/// `/digest` answers computed since the replica last changed: the full
/// digest and the last subset asked for.
#[derive(Debug, Default)]
struct DigestCache {
    /// (applied, digest).
    full: Option<(u64, u64)>,
    /// (applied, location ids ascending, digest).
    subset: Option<(u64, Vec<u16>, u64)>,
    /// Digests computed (cache misses), for tests and `/health`.
    computed: u64,
}

/// One HTTP answer: status, content type, body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// An error answer: status and message.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ApiError {
    status: u16,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 404,
            message: message.into(),
        }
    }
}

const JSON: &str = "application/json";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The routes, for the 404 answer.
const ROUTES: &[&str] = &[
    "/availability/{symbol}[?location=NAME_OR_ID][&after=LOCATION_ID][&limit=N]",
    "/cells/{location}/{symbol}/history[?limit=N]",
    "/orders/{origin}/{order_id}",
    "/holds/{origin}/{hold_id}",
    "/depleted[?scope=all|any][&after=POSITION][&limit=N]",
    "/digest[?locations=NAME_OR_ID,...]",
    "/health",
    "/ready",
    "/metrics",
];

/// Entries a listing page (`/depleted`, `/availability`) holds when the
/// request names no `limit`.
pub const PAGE_LIMIT_DEFAULT: usize = 100;
/// Most entries one listing page holds (a larger `limit` is capped).
pub const PAGE_LIMIT_MAX: usize = 1000;
/// Most SKUs one `/depleted` request examines...
pub const DEPLETED_SCAN_SKUS_MAX: usize = 1 << 16;
/// ...and most stocked cells (the SKU that crosses it is finished).
pub const DEPLETED_SCAN_CELLS_MAX: usize = 1 << 20;
/// Most locations one `/digest?locations=` names.
const DIGEST_LOCATIONS_MAX: usize = 1024;

impl ReadModel {
    /// A model with every table allocated: the replica to `limits`, the
    /// indexes to `indexes`. `stale_timeout_ns` is the consumer's.
    ///
    /// # Panics
    /// When a limit is invalid ([`ReplicaLimits::validate`],
    /// [`IndexLimits::validate`]).
    pub fn new(
        limits: ReplicaLimits,
        indexes: IndexLimits,
        stale_timeout_ns: u64,
        ready_lag_max: u64,
    ) -> ReadModel {
        if let Err(e) = indexes.validate() {
            panic!("invalid index limits {indexes:?}: {e}");
        }
        ReadModel {
            replica: Replica::new(limits),
            indexes: Indexes::new(&indexes),
            live: Liveness::new(stale_timeout_ns, monotonic_ns()),
            ready_lag_max,
            applied: 0,
            digests: Mutex::new(DigestCache::default()),
        }
    }

    /// Applies the stream message at `seq` to the replica, then to the
    /// indexes. Returns false (and changes nothing) for a seq already
    /// applied.
    pub fn apply(&mut self, seq: u64, message: &Message) -> bool {
        if self.replica.apply(seq, message) == Applied::Ignored {
            return false;
        }
        self.applied += 1;
        self.indexes.on_message(seq, message, &self.replica);
        true
    }

    /// `(seq, digest)`: the replica's [`Replica::digest`] and the seq it
    /// reflects, computed once per change of the replica (O(cells)) and
    /// cached until the next message is applied.
    pub fn digest(&self) -> (u64, u64) {
        let mut cache = self.digests.lock().unwrap_or_else(PoisonError::into_inner);
        let digest = match cache.full {
            Some((applied, digest)) if applied == self.applied => digest,
            _ => {
                let digest = self.replica.digest();
                cache.full = Some((self.applied, digest));
                cache.computed += 1;
                digest
            }
        };
        (self.replica.last_seq(), digest)
    }

    /// `(seq, digest)` of the part of the state a store node keeping
    /// `locations` holds ([`Replica::digest_of`]), cached like
    /// [`Self::digest`] (the last set asked for).
    pub fn digest_of(&self, locations: &[u16]) -> (u64, u64) {
        let mut ids = locations.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut cache = self.digests.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((applied, cached, digest)) = &cache.subset {
            if *applied == self.applied && *cached == ids {
                return (self.replica.last_seq(), *digest);
            }
        }
        let digest = self.replica.digest_of(&LocationSet::of(&ids));
        cache.subset = Some((self.applied, ids, digest));
        cache.computed += 1;
        (self.replica.last_seq(), digest)
    }

    /// Digests computed so far ([`Self::digest`] and [`Self::digest_of`]
    /// cache misses).
    pub fn digests_computed(&self) -> u64 {
        self.digests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .computed
    }

    /// Records what the consumer says about the stream (what the stream
    /// thread does after every batch). For tools and tests that drive a
    /// model with their own consumer.
    pub fn refresh_liveness(&mut self, consumer: &StreamConsumer) {
        self.live.refresh(consumer);
    }

    /// Sets the liveness figures directly (tests).
    pub fn set_liveness(&mut self, live: Liveness) {
        self.live = live;
    }

    /// The replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// What the stream thread last recorded.
    pub fn liveness(&self) -> &Liveness {
        &self.live
    }

    /// What the indexes dropped.
    pub fn index_counters(&self) -> IndexCounters {
        self.indexes.counters
    }

    /// Bytes of the replica's and the indexes' tables.
    pub fn memory_bytes(&self) -> usize {
        self.replica.memory_bytes() + self.indexes.memory_bytes()
    }

    /// seq, lag and staleness at `now_ns` ([`monotonic_ns`]).
    pub fn freshness(&self, now_ns: u64) -> Freshness {
        let seq = self.replica.last_seq().max(self.live.delivered_seq);
        let newest_seq = self.live.newest_seq.max(seq);
        let silent_ns = now_ns.saturating_sub(self.live.last_activity_ns);
        Freshness {
            seq,
            newest_seq,
            lag: newest_seq - seq,
            stale: self.live.failed.is_some() || silent_ns > self.live.stale_timeout_ns,
        }
    }

    /// `Ok` when `/ready` answers 200: the stream thread runs, the stream is
    /// not stale, the authority's snapshot broadcast (`S(W)`) was applied
    /// and the lag is at most `ready_lag_max`. Otherwise why not.
    pub fn readiness(&self, now_ns: u64) -> Result<(), String> {
        let fresh = self.freshness(now_ns);
        if let Some(error) = &self.live.failed {
            return Err(format!("the stream consumer failed: {error}"));
        }
        if fresh.stale {
            return Err(format!(
                "the stream is stale: nothing heard for {} ms (sequencer stopped or link cut)",
                now_ns.saturating_sub(self.live.last_activity_ns) / 1_000_000
            ));
        }
        if let Some(limit) = self.replica.limit_met() {
            return Err(format!(
                "limit met: {limit}; the replica holds less than the stream"
            ));
        }
        if self.replica.authority_online_seq() == 0 {
            return Err("waiting for the authority's snapshot broadcast (S W)".to_string());
        }
        if fresh.lag > self.ready_lag_max {
            return Err(format!(
                "catching up: {} messages behind the stream (ready at {} or fewer)",
                fresh.lag, self.ready_lag_max
            ));
        }
        Ok(())
    }

    /// Whether the replica has caught up with the stream: the stream thread
    /// published at least once, nothing is being recovered, the lag is at
    /// most `ready_lag_max`. (Unlike [`Self::readiness`], it does not wait
    /// for the authority.)
    pub fn caught_up(&self, now_ns: u64) -> bool {
        self.live.batches > 0
            && !self.live.recovering
            && self.freshness(now_ns).lag <= self.ready_lag_max
    }

    /// The answer to `method url` at `now_ns`, with the HTTP request
    /// counters `http` for `/metrics`.
    pub fn respond(&self, method: &str, url: &str, now_ns: u64, http: &HttpCounters) -> Reply {
        let fresh = self.freshness(now_ns);
        if method != "GET" {
            return json_reply(
                405,
                json!({ "error": format!("method {method} not allowed: the monitor answers GET only") }),
                fresh,
            );
        }
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let result = match segments.as_slice() {
            ["availability", symbol] => self.availability(symbol, query),
            ["cells", location, symbol, "history"] => self.history(location, symbol, query),
            ["orders", origin, order_id] => {
                no_query(query).and_then(|()| self.order(origin, order_id))
            }
            ["holds", origin, hold_id] => no_query(query).and_then(|()| self.hold(origin, hold_id)),
            ["depleted"] => self.depleted(query),
            ["digest"] => self.digest_json(query),
            ["health"] => {
                return match no_query(query) {
                    Ok(()) => self.health(now_ns, fresh),
                    Err(error) => error_reply(error, fresh),
                }
            }
            ["ready"] => {
                return match no_query(query) {
                    Ok(()) => self.ready(now_ns, fresh),
                    Err(error) => error_reply(error, fresh),
                }
            }
            ["metrics"] => {
                return match no_query(query) {
                    Ok(()) => Reply {
                        status: 200,
                        content_type: PROMETHEUS,
                        body: self.metrics(now_ns, fresh, http),
                    },
                    Err(error) => error_reply(error, fresh),
                }
            }
            _ => Err(ApiError {
                status: 404,
                message: format!("no such route: {path} (routes: {})", ROUTES.join(", ")),
            }),
        };
        match result {
            Ok(body) => json_reply(200, body, fresh),
            Err(error) => error_reply(error, fresh),
        }
    }

    // ---- endpoints --------------------------------------------------------

    fn sku_of(&self, symbol_segment: &str) -> Result<(u32, String), ApiError> {
        let symbol = percent_decode(symbol_segment, false)?;
        match self.replica.sku_by_symbol(&symbol) {
            Some(sku) => Ok((sku, symbol)),
            None => Err(ApiError::not_found(format!("unknown SKU {symbol:?}"))),
        }
    }

    /// A location by id (digits) or name; unknown → 400.
    fn location_of(&self, text: &str) -> Result<u16, ApiError> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            let id: u16 = text.parse().map_err(|_| {
                ApiError::bad_request(format!("location id {text} is out of range"))
            })?;
            if self.replica.location_name(id).is_some() {
                return Ok(id);
            }
            return Err(ApiError::bad_request(format!("unknown location {id}")));
        }
        self.replica
            .location_by_name(text)
            .ok_or_else(|| ApiError::bad_request(format!("unknown location {text:?}")))
    }

    fn location_name(&self, location: u16) -> String {
        self.replica
            .location_name(location)
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .unwrap_or_default()
    }

    fn symbol_of(&self, sku: u32) -> String {
        self.replica
            .symbol(sku)
            .map(|symbol| String::from_utf8_lossy(symbol).into_owned())
            .unwrap_or_default()
    }

    fn cell_json(&self, location: u16, cell: Cell) -> Value {
        json!({
            "location": location,
            "name": self.location_name(location),
            "on_hand": cell.on_hand,
            "reserved": cell.reserved,
            "available": cell.available,
            "version": cell.version,
        })
    }

    /// `GET /availability/{symbol}[?location=NAME_OR_ID][&after=LOCATION_ID][&limit=N]`:
    /// the SKU's stocked cells (those some event named), ascending by
    /// location id, with on_hand, reserved, available and version, a page
    /// of at most `limit` of them after location id `after`, and the totals
    /// over every stocked cell; `next` is the `after` of the next page (null
    /// on the last). With `location`, that one cell (stocked or not). Work:
    /// O(the SKU's stocked cells), at most `locations_max`.
    fn availability(&self, symbol: &str, query: &str) -> Result<Value, ApiError> {
        let params = parse_query(query, &["location", "after", "limit"])?;
        let (sku, symbol) = self.sku_of(symbol)?;
        let limit = page_limit(&params)?;
        let after = match param(&params, "after") {
            Some(text) => Some(parse_number::<u16>(text, "after (a location id)")?),
            None => None,
        };
        let mut cells: Vec<(u16, Cell)> = match param(&params, "location") {
            Some(text) => {
                let location = self.location_of(text)?;
                let cell = self.replica.cell(location, sku).unwrap_or_default();
                vec![(location, cell)]
            }
            None => {
                let mut cells = Vec::new();
                self.replica
                    .for_each_stocked_cell(sku, |location, cell| cells.push((location, cell)));
                cells.sort_unstable_by_key(|&(location, _)| location);
                cells
            }
        };
        let (mut on_hand, mut reserved, mut available) = (0u64, 0u64, 0u64);
        for (_, cell) in &cells {
            on_hand += u64::from(cell.on_hand);
            reserved += u64::from(cell.reserved);
            available += u64::from(cell.available);
        }
        let stocked = cells.len();
        if let Some(after) = after {
            cells.retain(|&(location, _)| location > after);
        }
        let more = cells.len() > limit;
        cells.truncate(limit);
        let next = match cells.last() {
            Some(&(location, _)) if more => json!(location),
            _ => Value::Null,
        };
        let locations: Vec<Value> = cells
            .iter()
            .map(|&(location, cell)| self.cell_json(location, cell))
            .collect();
        Ok(json!({
            "sku": sku,
            "symbol": symbol,
            "locations": locations,
            "stocked_locations": stocked,
            "limit": limit,
            "next": next,
            "total": { "on_hand": on_hand, "reserved": reserved, "available": available },
        }))
    }

    /// `GET /cells/{location}/{symbol}/history[?limit=N]`: the cell now and
    /// its recent events (oldest first, the newest `limit`), each with the
    /// cell's state right after it.
    fn history(&self, location: &str, symbol: &str, query: &str) -> Result<Value, ApiError> {
        let params = parse_query(query, &["limit"])?;
        let limit = match param(&params, "limit") {
            Some(text) => parse_number::<usize>(text, "limit")?,
            None => usize::MAX,
        };
        let location = self.location_of(&percent_decode(location, false)?)?;
        let (sku, symbol) = self.sku_of(symbol)?;
        let cell = self.replica.cell(location, sku).unwrap_or_default();
        let (events, recorded) = match self.indexes.cells.find(&(location, sku)) {
            Some(slot) => {
                let rings = &self.indexes.cell_rings;
                let held = rings.iter(slot).count();
                let events: Vec<Value> = rings
                    .iter(slot)
                    .skip(held.saturating_sub(limit))
                    .map(|entry| entry.json(true))
                    .collect();
                (events, rings.total(slot))
            }
            None => (Vec::new(), 0),
        };
        Ok(json!({
            "location": location,
            "name": self.location_name(location),
            "sku": sku,
            "symbol": symbol,
            "cell": {
                "on_hand": cell.on_hand,
                "reserved": cell.reserved,
                "available": cell.available,
                "version": cell.version,
            },
            "events_recorded": recorded,
            "truncated": recorded > events.len() as u64,
            "events": events,
        }))
    }

    /// `GET /orders/{origin}/{order_id}`: the order's status and timeline.
    fn order(&self, origin: &str, order_id: &str) -> Result<Value, ApiError> {
        let origin: u16 = parse_number(origin, "origin")?;
        let order_id: u64 = parse_number(order_id, "order_id")?;
        if let Some(slot) = self.indexes.orders.find(&(origin, order_id)) {
            let meta = &self.indexes.order_meta[slot as usize];
            let rings = &self.indexes.order_rings;
            let events: Vec<Value> = rings.iter(slot).map(|e| e.json(false)).collect();
            let recorded = rings.total(slot);
            return Ok(json!({
                "origin": origin,
                "order_id": order_id,
                "status": meta.status.name(),
                "order_seq": meta.order_seq,
                "order_timestamp_ns": meta.order_timestamp_ns,
                "requested_location": meta.requested_location,
                "location": meta.location,
                "location_name": self.location_name(meta.location),
                "sku": meta.sku,
                "symbol": self.symbol_of(meta.sku),
                "qty": meta.qty,
                "remaining": meta.remaining,
                "reject_reason": reason_json(meta.reject_reason),
                "events_recorded": recorded,
                "truncated": recorded > events.len() as u64,
                "events": events,
            }));
        }
        // Evicted from the index: the replica's own record, if it has one.
        match self.replica.order(origin, order_id) {
            Some(record) => Ok(json!({
                "origin": origin,
                "order_id": order_id,
                "status": if record.remaining == 0 { "cancelled" } else { "accepted" },
                "order_seq": record.cmd_seq,
                "location": record.location,
                "location_name": self.location_name(record.location),
                "sku": record.sku,
                "symbol": self.symbol_of(record.sku),
                "qty": record.qty,
                "remaining": record.remaining,
                "reject_reason": Value::Null,
                "events_recorded": 0,
                "truncated": true,
                "events": [],
            })),
            None => Err(ApiError::not_found(format!(
                "unknown order {order_id} of origin {origin}"
            ))),
        }
    }

    /// `GET /holds/{origin}/{hold_id}`: the hold's status and timeline.
    fn hold(&self, origin: &str, hold_id: &str) -> Result<Value, ApiError> {
        let origin: u16 = parse_number(origin, "origin")?;
        let hold_id: u64 = parse_number(hold_id, "hold_id")?;
        if let Some(slot) = self.indexes.holds.find(&(origin, hold_id)) {
            let meta = &self.indexes.hold_meta[slot as usize];
            let rings = &self.indexes.hold_rings;
            let events: Vec<Value> = rings.iter(slot).map(|e| e.json(false)).collect();
            let recorded = rings.total(slot);
            return Ok(json!({
                "origin": origin,
                "hold_id": hold_id,
                "status": meta.status.name(),
                "reserve_seq": meta.reserve_seq,
                "reserve_timestamp_ns": meta.reserve_timestamp_ns,
                "location": meta.location,
                "location_name": self.location_name(meta.location),
                "sku": meta.sku,
                "symbol": self.symbol_of(meta.sku),
                "qty": meta.qty,
                "ttl_ms": meta.ttl_ms,
                "expires_at_ns": meta.expires_at_ns,
                "ended_seq": meta.ended_seq,
                "reject_reason": reason_json(meta.reject_reason),
                "events_recorded": recorded,
                "truncated": recorded > events.len() as u64,
                "events": events,
            }));
        }
        match self.replica.hold_by_client(origin, hold_id) {
            Some(hold) => Ok(json!({
                "origin": origin,
                "hold_id": hold_id,
                "status": "open",
                "reserve_seq": hold.cmd_seq,
                "location": hold.location,
                "location_name": self.location_name(hold.location),
                "sku": hold.sku,
                "symbol": self.symbol_of(hold.sku),
                "qty": hold.qty,
                "expires_at_ns": hold.expires_at_ns,
                "ended_seq": 0,
                "reject_reason": Value::Null,
                "events_recorded": 0,
                "truncated": true,
                "events": [],
            })),
            None => Err(ApiError::not_found(format!(
                "unknown hold {hold_id} of origin {origin}"
            ))),
        }
    }

    /// `GET /depleted[?scope=all|any][&after=POSITION][&limit=N]` (see the
    /// module docs): one page, in directory order, from the SKU after
    /// directory position `after` (from the first without it).
    fn depleted(&self, query: &str) -> Result<Value, ApiError> {
        let params = parse_query(query, &["scope", "after", "limit"])?;
        let everywhere = match param(&params, "scope") {
            None | Some("all") => true,
            Some("any") => false,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "scope must be all or any, not {other:?}"
                )))
            }
        };
        let limit = page_limit(&params)?;
        let sku_count = self.replica.sku_count();
        let start = match param(&params, "after") {
            None => 0,
            Some(text) => {
                let after = parse_number::<u32>(text, "after (a directory position)")?;
                if after >= sku_count {
                    return Err(ApiError::bad_request(format!(
                        "after {after} is not a position of the SKU directory (0..{sku_count}): \
                         pass the \"next\" of the previous page"
                    )));
                }
                after + 1
            }
        };
        let mut skus = Vec::new();
        let mut count = 0u64;
        let mut last_listed = None;
        let mut unlisted = false;
        let (mut position, mut cells_scanned) = (start, 0usize);
        let skus_end = start.saturating_add(DEPLETED_SCAN_SKUS_MAX as u32);
        while position < sku_count.min(skus_end) && cells_scanned < DEPLETED_SCAN_CELLS_MAX {
            let (sku, symbol) = self.replica.sku_at(position).expect("position < sku_count");
            let (mut on_hand, mut reserved, mut available) = (0u64, 0u64, 0u64);
            let mut out_at = Vec::new();
            self.replica.for_each_stocked_cell(sku, |location, cell| {
                cells_scanned += 1;
                on_hand += u64::from(cell.on_hand);
                reserved += u64::from(cell.reserved);
                available += u64::from(cell.available);
                if cell.available == 0 {
                    out_at.push(location);
                }
            });
            let listed = if everywhere {
                available == 0
            } else {
                !out_at.is_empty()
            };
            if listed {
                count += 1;
                if skus.len() < limit {
                    out_at.sort_unstable();
                    let locations: Vec<Value> = out_at
                        .iter()
                        .map(|&l| json!({ "location": l, "name": self.location_name(l) }))
                        .collect();
                    skus.push(json!({
                        "sku": sku,
                        "position": position,
                        "symbol": String::from_utf8_lossy(symbol),
                        "on_hand": on_hand,
                        "reserved": reserved,
                        "available": available,
                        "out_at": locations,
                    }));
                    last_listed = Some(position);
                } else {
                    unlisted = true;
                }
            }
            position += 1;
        }
        // The next page starts after the last SKU listed when some found
        // were not listed, else after the last one examined.
        let next = if unlisted {
            last_listed.map(|p| json!(p)).unwrap_or(Value::Null)
        } else if position < sku_count {
            json!(position - 1)
        } else {
            Value::Null
        };
        Ok(json!({
            "scope": if everywhere { "all" } else { "any" },
            "count": count,
            "truncated": unlisted || !next.is_null(),
            "limit": limit,
            "scanned": { "from": start, "skus": position - start, "cells": cells_scanned },
            "next": next,
            "skus": skus,
        }))
    }

    /// `GET /digest[?locations=NAME_OR_ID,...]`: the replica's
    /// [`Replica::digest`] (or, with `locations`, the subset digest a store
    /// node keeping them reports, [`Replica::digest_of`]) and the seq it
    /// reflects (`digest_seq`), to compare replicas with the authority at
    /// the same seq. O(cells) once per change of the replica, then cached.
    fn digest_json(&self, query: &str) -> Result<Value, ApiError> {
        let params = parse_query(query, &["locations"])?;
        let Some(list) = param(&params, "locations") else {
            let (seq, digest) = self.digest();
            return Ok(json!({
                "digest": format!("{digest:016x}"),
                "digest_seq": seq,
                "oversold": self.replica.oversold(),
            }));
        };
        let mut locations = Vec::new();
        for item in list.split(',') {
            if item.is_empty() {
                return Err(ApiError::bad_request(
                    "locations must be location names or ids separated by commas",
                ));
            }
            if locations.len() == DIGEST_LOCATIONS_MAX {
                return Err(ApiError::bad_request(format!(
                    "locations names more than {DIGEST_LOCATIONS_MAX} locations"
                )));
            }
            locations.push(self.location_of(item)?);
        }
        locations.sort_unstable();
        locations.dedup();
        let (seq, digest) = self.digest_of(&locations);
        Ok(json!({
            "digest": format!("{digest:016x}"),
            "digest_seq": seq,
            "locations": locations,
            "oversold": self.replica.oversold(),
        }))
    }

    /// `GET /health`: 200 while the stream is alive, 503 when stale or the
    /// stream thread failed.
    fn health(&self, now_ns: u64, fresh: Freshness) -> Reply {
        let counters = self.replica.counters();
        let (status, code) = match (&self.live.failed, fresh.stale) {
            (Some(_), _) => ("failed", 503),
            (None, true) => ("stale", 503),
            (None, false) => ("ok", 200),
        };
        let body = json!({
            "status": status,
            "error": self.live.failed,
            "newest_seq": fresh.newest_seq,
            "silent_ms": now_ns.saturating_sub(self.live.last_activity_ns) / 1_000_000,
            "stale_timeout_ms": self.live.stale_timeout_ns / 1_000_000,
            "session": self.live.session,
            "mode": self.live.mode,
            "recovering": self.live.recovering,
            "ended": self.live.ended,
            "authority_online_seq": self.replica.authority_online_seq(),
            "oversold": self.replica.oversold(),
            "consumer": self.live.consumer,
            "replica": {
                "messages": counters.messages,
                "commands": counters.commands,
                "events": counters.events,
                "rejects": counters.rejects,
                "gateway_rejects": counters.gateway_rejects,
                "violations": counters.violations,
                "unknown_refs": counters.unknown_refs,
                "dropped_events": counters.dropped_events,
                "sku_overflow": counters.sku_overflow,
                "location_overflow": counters.location_overflow,
                "hold_overflow": counters.hold_overflow,
                "ids_evicted": counters.ids_evicted,
                "pending_evicted": counters.pending_evicted,
                "unattributed": counters.unattributed,
                "anomalies": counters.anomalies,
                "skus": self.replica.sku_count(),
                "locations": self.replica.location_count(),
                "open_holds": self.replica.hold_count(),
            },
            "indexes": self.indexes.counters,
            "limit_met": self.replica.limit_met(),
            "digests_computed": self.digests_computed(),
            "memory_bytes": self.memory_bytes(),
        });
        json_reply(code, body, fresh)
    }

    /// `GET /ready`: 200 once caught up with the authority online.
    fn ready(&self, now_ns: u64, fresh: Freshness) -> Reply {
        let authority = self.replica.authority_online_seq();
        match self.readiness(now_ns) {
            Ok(()) => json_reply(
                200,
                json!({ "ready": true, "authority_online_seq": authority }),
                fresh,
            ),
            Err(reason) => json_reply(
                503,
                json!({ "ready": false, "reason": reason, "authority_online_seq": authority }),
                fresh,
            ),
        }
    }

    /// `GET /metrics`: Prometheus text format 0.0.4.
    fn metrics(&self, now_ns: u64, fresh: Freshness, http: &HttpCounters) -> String {
        let mut out = String::with_capacity(8192);
        let mut m = Metrics { out: &mut out };
        let stats = &self.live.consumer;
        let counters = self.replica.counters();
        let index = &self.indexes.counters;
        m.gauge(
            "tally_monitor_seq",
            "Stream sequence number the monitor's replica reflects.",
            fresh.seq,
        );
        m.gauge(
            "tally_monitor_newest_seq",
            "Newest sequence number seen on the stream.",
            fresh.newest_seq,
        );
        m.gauge(
            "tally_monitor_lag",
            "Messages the replica is behind the newest seen (newest_seq - seq).",
            fresh.lag,
        );
        m.gauge(
            "tally_monitor_stale",
            "1 when the stream went silent past the stale timeout (or the stream thread failed).",
            u64::from(fresh.stale),
        );
        m.gauge(
            "tally_monitor_ready",
            "1 when /ready answers 200.",
            u64::from(self.readiness(now_ns).is_ok()),
        );
        m.gauge(
            "tally_monitor_recovering",
            "1 while the consumer replays or fills a gap.",
            u64::from(self.live.recovering),
        );
        m.gauge(
            "tally_monitor_silent_seconds",
            "Seconds since data or a heartbeat last arrived.",
            format_args!(
                "{:.3}",
                now_ns.saturating_sub(self.live.last_activity_ns) as f64 / 1e9
            ),
        );
        m.gauge(
            "tally_monitor_authority_online_seq",
            "Sequence number of the last authority-online event S(W); 0 = none.",
            self.replica.authority_online_seq(),
        );
        m.gauge(
            "tally_monitor_oversold",
            "Events that would have made on_hand or reserved negative: must be 0.",
            self.replica.oversold(),
        );
        m.counter(
            "tally_monitor_messages_applied_total",
            "Stream messages applied to the replica.",
            counters.messages,
        );
        m.counter(
            "tally_monitor_datagrams_total",
            "Multicast datagrams received.",
            stats.datagrams,
        );
        m.counter(
            "tally_monitor_heartbeats_total",
            "Heartbeats received.",
            stats.heartbeats,
        );
        m.counter(
            "tally_monitor_gaps_total",
            "Missing runs of messages detected.",
            stats.gaps_detected,
        );
        m.counter(
            "tally_monitor_re_requests_total",
            "MoldUDP64 re-requests sent.",
            stats.re_requests_sent,
        );
        m.counter(
            "tally_monitor_re_request_timeouts_total",
            "Re-requests that timed out and were sent again.",
            stats.re_request_timeouts,
        );
        m.family(
            "tally_monitor_recovered_total",
            "counter",
            "Messages first received through gap fill, by path.",
        );
        m.sample(
            "tally_monitor_recovered_total",
            "path=\"retransmit\"",
            stats.recovered_by_retransmit,
        );
        m.sample(
            "tally_monitor_recovered_total",
            "path=\"replay\"",
            stats.recovered_by_replay,
        );
        m.counter("tally_monitor_replay_recoveries_total", "Switches to the replay feed (late join, unanswered re-requests, overflow, large or old gap).", stats.replay_recoveries());
        m.counter(
            "tally_monitor_duplicates_discarded_total",
            "Messages received again after delivery.",
            stats.duplicates_discarded,
        );
        m.counter(
            "tally_monitor_reorder_overflows_total",
            "Messages too far ahead for the reorder buffer.",
            stats.reorder_overflows,
        );
        m.counter(
            "tally_monitor_stale_transitions_total",
            "Times the stream went stale.",
            stats.stale_transitions,
        );
        m.counter(
            "tally_monitor_undecodable_messages_total",
            "Stream messages that did not decode (skipped).",
            stats.undecodable_messages,
        );
        m.family(
            "tally_monitor_replica_total",
            "counter",
            "Replica counters (messages by kind, and everything unusual it met).",
        );
        for (name, value) in [
            ("commands", counters.commands),
            ("events", counters.events),
            ("rejects", counters.rejects),
            ("gateway_rejects", counters.gateway_rejects),
            ("stale", counters.stale),
            ("violations", counters.violations),
            ("unknown_refs", counters.unknown_refs),
            ("dropped_events", counters.dropped_events),
            ("sku_overflow", counters.sku_overflow),
            ("location_overflow", counters.location_overflow),
            ("hold_overflow", counters.hold_overflow),
            ("ids_evicted", counters.ids_evicted),
            ("pending_evicted", counters.pending_evicted),
            ("unattributed", counters.unattributed),
            ("anomalies", counters.anomalies),
        ] {
            m.sample(
                "tally_monitor_replica_total",
                &format!("counter=\"{name}\""),
                value,
            );
        }
        m.gauge(
            "tally_monitor_skus",
            "SKUs in the directory.",
            self.replica.sku_count(),
        );
        m.gauge(
            "tally_monitor_locations",
            "Locations in the directory.",
            self.replica.location_count(),
        );
        m.gauge(
            "tally_monitor_open_holds",
            "Open holds.",
            self.replica.hold_count(),
        );
        m.family(
            "tally_monitor_index_total",
            "counter",
            "What the monitor's bounded indexes evicted, overwrote or could not place.",
        );
        for (name, value) in [
            ("cells_evicted", index.cells_evicted),
            ("cell_events_overwritten", index.cell_events_overwritten),
            ("orders_evicted", index.orders_evicted),
            ("order_events_overwritten", index.order_events_overwritten),
            ("holds_evicted", index.holds_evicted),
            ("hold_events_overwritten", index.hold_events_overwritten),
            ("outcomes_unattributed", index.outcomes_unattributed),
            ("carried_holds", index.carried_holds),
            ("staging_growths", index.staging_growths),
        ] {
            m.sample(
                "tally_monitor_index_total",
                &format!("counter=\"{name}\""),
                value,
            );
        }
        m.family(
            "tally_monitor_index_entries",
            "gauge",
            "Entries in the monitor's indexes.",
        );
        m.sample(
            "tally_monitor_index_entries",
            "index=\"cells\"",
            self.indexes.cells.len(),
        );
        m.sample(
            "tally_monitor_index_entries",
            "index=\"orders\"",
            self.indexes.orders.len(),
        );
        m.sample(
            "tally_monitor_index_entries",
            "index=\"holds\"",
            self.indexes.holds.len(),
        );
        m.gauge(
            "tally_monitor_memory_bytes",
            "Bytes of the replica's and the indexes' tables.",
            self.memory_bytes(),
        );
        m.family(
            "tally_monitor_http_requests_total",
            "counter",
            "HTTP requests answered, by status code.",
        );
        for (code, value) in http.by_code() {
            m.sample(
                "tally_monitor_http_requests_total",
                &format!("code=\"{code}\""),
                value,
            );
        }
        out
    }
}

/// Writes Prometheus text exposition lines.
struct Metrics<'a> {
    out: &'a mut String,
}

impl Metrics<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "gauge", help);
        self.sample(name, "", value);
    }

    fn counter(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "counter", help);
        self.sample(name, "", value);
    }
}

/// A reason code as JSON: a one-letter string, or null for none.
fn reason_json(reason: u8) -> Value {
    if reason == 0 {
        Value::Null
    } else {
        Value::String(char::from(reason).to_string())
    }
}

/// `body` (an object) with seq, lag and stale added, as a reply.
fn json_reply(status: u16, mut body: Value, fresh: Freshness) -> Reply {
    if let Value::Object(map) = &mut body {
        map.insert("seq".into(), fresh.seq.into());
        map.insert("lag".into(), fresh.lag.into());
        map.insert("stale".into(), fresh.stale.into());
    }
    Reply {
        status,
        content_type: JSON,
        body: body.to_string(),
    }
}

fn error_reply(error: ApiError, fresh: Freshness) -> Reply {
    json_reply(error.status, json!({ "error": error.message }), fresh)
}

fn no_query(query: &str) -> Result<(), ApiError> {
    parse_query(query, &[]).map(|_| ())
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, in query
/// strings); the result must be UTF-8.
fn percent_decode(text: &str, plus_is_space: bool) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("bad percent-encoding in {text:?}"))
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request(format!("{text:?} is not UTF-8")))
}

/// The `name=value` pairs of a query string, each name among `allowed` and
/// given once.
fn parse_query(query: &str, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut params: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name, true)?;
        let value = percent_decode(value, true)?;
        if !allowed.contains(&name.as_str()) {
            return Err(ApiError::bad_request(if allowed.is_empty() {
                format!("unknown parameter {name:?}: this route takes none")
            } else {
                format!(
                    "unknown parameter {name:?} (this route takes {})",
                    allowed.join(", ")
                )
            }));
        }
        if params.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::bad_request(format!(
                "parameter {name:?} given twice"
            )));
        }
        params.push((name, value));
    }
    Ok(params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The `limit` of a listing page: [`PAGE_LIMIT_DEFAULT`] when absent,
/// capped at [`PAGE_LIMIT_MAX`], at least 1.
fn page_limit(params: &[(String, String)]) -> Result<usize, ApiError> {
    match param(params, "limit") {
        None => Ok(PAGE_LIMIT_DEFAULT),
        Some(text) => match parse_number::<u64>(text, "limit")? {
            0 => Err(ApiError::bad_request(format!(
                "limit must be 1 or more (at most {PAGE_LIMIT_MAX} are listed per page)"
            ))),
            n => Ok(n.min(PAGE_LIMIT_MAX as u64) as usize),
        },
    }
}

/// A whole number made of ASCII digits only (no sign, no spaces).
fn parse_number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, ApiError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(format!(
            "{what} must be a whole number, not {text:?}"
        )));
    }
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("{what} {text} is out of range")))
}

// ---------------------------------------------------------------------------
// HTTP counters.

/// Requests answered, by status code; shared by the HTTP workers (relaxed
/// atomics).
#[derive(Debug, Default)]
pub struct HttpCounters {
    counts: [AtomicU64; HTTP_CODES.len() + 1],
}

/// The status codes the monitor answers with; anything else counts as
/// "other".
const HTTP_CODES: [u16; 9] = [200, 400, 401, 403, 404, 405, 429, 500, 503];

impl HttpCounters {
    /// Counts one answer with `status`.
    pub fn count(&self, status: u16) {
        let index = HTTP_CODES
            .iter()
            .position(|&c| c == status)
            .unwrap_or(HTTP_CODES.len());
        self.counts[index].fetch_add(1, Ordering::Relaxed);
    }

    /// `(code, count)` for every code, then `("other", count)`.
    pub fn by_code(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        HTTP_CODES
            .iter()
            .map(|c| c.to_string())
            .chain(std::iter::once("other".to_string()))
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
    }
}

// ---------------------------------------------------------------------------
// The running monitor.

/// What the stream thread and the HTTP workers share.
struct Shared {
    model: RwLock<ReadModel>,
    /// Batches published; waiters watch it change.
    published: Mutex<u64>,
    published_changed: Condvar,
    http: HttpCounters,
    auth: HttpAuth,
    stop: AtomicBool,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, ReadModel> {
        self.model.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, ReadModel> {
        self.model.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn published(&self) -> u64 {
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn notify_published(&self) {
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        self.published_changed.notify_all();
    }
}

/// A summary of the monitor's state, for the demo and tools.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MonitorStatus {
    /// seq the replica reflects, newest seq seen, lag, stale.
    #[serde(flatten)]
    pub freshness: Freshness,
    /// `/ready` would answer 200.
    pub ready: bool,
    /// Caught up with the stream ([`ReadModel::caught_up`]).
    pub caught_up: bool,
    /// seq of the last `S(W)`; 0 = none yet.
    pub authority_online_seq: u64,
    /// Messages the replica applied.
    pub messages: u64,
    /// Must be 0 ([`Replica::oversold`]).
    pub oversold: u64,
    /// Why the stream thread stopped, if it failed.
    pub failed: Option<String>,
    /// The consumer's counters.
    pub consumer: ConsumerStats,
    /// What the indexes dropped.
    pub indexes: IndexCounters,
}

/// The monitor: see the module docs. [`Monitor::start`] runs it.
pub struct Monitor;

impl Monitor {
    /// Joins the stream, binds the HTTP listener and starts the stream
    /// thread and `http_workers` HTTP threads. The listener accepts at
    /// return. Stop with [`MonitorHandle::stop`] (or drop the handle).
    pub fn start(config: MonitorConfig) -> io::Result<MonitorHandle> {
        config.validate()?;
        let consumer = StreamConsumer::new(&config.consumer)?;
        let server = tiny_http::Server::http(config.listen).map_err(|error| {
            match error.downcast::<io::Error>() {
                Ok(error) => io::Error::new(
                    error.kind(),
                    format!("HTTP listener on {}: {error}", config.listen),
                ),
                Err(error) => {
                    io::Error::other(format!("HTTP listener on {}: {error}", config.listen))
                }
            }
        })?;
        let local_addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("the HTTP listener has no IP address"))?;
        let server = Arc::new(server);
        let model = ReadModel::new(
            config.limits,
            config.indexes,
            config.consumer.stale_timeout_ns,
            config.ready_lag_max,
        );
        let shared = Arc::new(Shared {
            model: RwLock::new(model),
            published: Mutex::new(0),
            published_changed: Condvar::new(),
            http: HttpCounters::default(),
            auth: HttpAuth::new(config.auth.clone()),
            stop: AtomicBool::new(false),
        });
        let mut threads = Vec::with_capacity(config.http_workers + 1);
        let stream_shared = Arc::clone(&shared);
        let staging = config.staging_messages;
        let interval = config.publish_interval;
        threads.push(
            thread::Builder::new()
                .name("monitor-stream".into())
                .spawn(move || run_stream(consumer, &stream_shared, staging, interval))?,
        );
        for worker in 0..config.http_workers {
            let worker_shared = Arc::clone(&shared);
            let worker_server = Arc::clone(&server);
            let spawned = thread::Builder::new()
                .name(format!("monitor-http-{worker}"))
                .spawn(move || run_http(&worker_server, &worker_shared));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(error) => {
                    shutdown(&shared, &server, &mut threads);
                    return Err(error);
                }
            }
        }
        tracing::info!(%local_addr, workers = config.http_workers, "monitor serving");
        Ok(MonitorHandle {
            local_addr,
            shared,
            server: Some(server),
            threads,
        })
    }
}

/// The running monitor's threads. Dropping it stops them.
pub struct MonitorHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<Arc<tiny_http::Server>>,
    threads: Vec<JoinHandle<()>>,
}

impl MonitorHandle {
    /// The HTTP listener's address (with the port chosen for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs `f` on the read model under the read lock (keep it short: the
    /// stream thread waits meanwhile).
    pub fn read<R>(&self, f: impl FnOnce(&ReadModel) -> R) -> R {
        f(&self.shared.read())
    }

    /// `(seq, digest)`: the replica's [`Replica::digest`] and the seq it is
    /// at, taken together.
    pub fn digest(&self) -> (u64, u64) {
        self.read(ReadModel::digest)
    }

    /// A summary: freshness, readiness, counters.
    pub fn status(&self) -> MonitorStatus {
        let now_ns = monotonic_ns();
        self.read(|model| MonitorStatus {
            freshness: model.freshness(now_ns),
            ready: model.readiness(now_ns).is_ok(),
            caught_up: model.caught_up(now_ns),
            authority_online_seq: model.replica().authority_online_seq(),
            messages: model.replica().counters().messages,
            oversold: model.replica().oversold(),
            failed: model.liveness().failed.clone(),
            consumer: model.liveness().consumer,
            indexes: model.index_counters(),
        })
    }

    /// Waits until `done(model, now_ns)` holds, re-checking after every
    /// batch the stream thread publishes (at least every
    /// `publish_interval`), for at most `timeout`. Returns whether it holds.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&ReadModel, u64) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let published = self.shared.published();
            if done(&self.shared.read(), monotonic_ns()) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Bounded slices: the condition may turn on time alone (stale)
            // and the stream thread may have stopped.
            let slice = (deadline - now).min(Duration::from_millis(100));
            let guard = self
                .shared
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let _ = self
                .shared
                .published_changed
                .wait_timeout_while(guard, slice, |n| *n == published);
        }
    }

    /// Waits until the replica has applied `seq`; returns whether it did
    /// within `timeout`.
    pub fn wait_for_seq(&self, seq: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |model, now_ns| model.freshness(now_ns).seq >= seq)
    }

    /// Whether the stream thread stopped with an error.
    pub fn failed(&self) -> Option<String> {
        self.read(|model| model.liveness().failed.clone())
    }

    /// Stops every thread and closes the listener. Errors when a thread
    /// panicked.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        let panicked = shutdown(&self.shared, &server, &mut self.threads);
        drop(server); // the last reference: closes the listener
        if panicked > 0 {
            return Err(io::Error::other(format!(
                "{panicked} monitor thread(s) panicked"
            )));
        }
        Ok(())
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::warn!(%error, "monitor stopped with an error");
        }
    }
}

/// Tells every thread to stop, wakes the HTTP workers and joins all;
/// returns how many panicked.
fn shutdown(
    shared: &Shared,
    server: &tiny_http::Server,
    threads: &mut Vec<JoinHandle<()>>,
) -> usize {
    shared.stop.store(true, Ordering::Release);
    for _ in 0..threads.len() {
        server.unblock();
    }
    threads
        .drain(..)
        .map(JoinHandle::join)
        .filter(Result::is_err)
        .count()
}

/// The stream thread: stage a batch without the lock, apply it under the
/// lock, publish.
fn run_stream(
    mut consumer: StreamConsumer,
    shared: &Shared,
    staging_messages: usize,
    publish_interval: Duration,
) {
    let mut staged: Vec<StoredMessage> = Vec::with_capacity(staging_messages);
    let mut growths = 0u64;
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        let result = if stopping {
            Ok(0)
        } else {
            consumer.wait(publish_interval, |seq, message| {
                if staged.len() == staged.capacity() {
                    growths += 1;
                }
                staged.push(StoredMessage::new(seq, &message));
            })
        };
        {
            let mut model = shared.write();
            for entry in &staged {
                model.apply(entry.seq, &entry.message());
            }
            model.live.refresh(&consumer);
            model.indexes.counters.staging_growths = growths;
            if let Err(error) = &result {
                tracing::error!(%error, "monitor stream consumer failed");
                model.live.failed = Some(error.to_string());
            }
        }
        staged.clear();
        shared.notify_published();
        if stopping || result.is_err() {
            return;
        }
    }
}

/// An HTTP worker: one request at a time until told to stop.
fn run_http(server: &tiny_http::Server, shared: &Shared) {
    while !shared.stop.load(Ordering::Acquire) {
        let request = match server.recv_timeout(Duration::from_millis(250)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(error) => {
                if !shared.stop.load(Ordering::Acquire) {
                    tracing::error!(%error, "monitor HTTP listener failed");
                }
                return;
            }
        };
        let path = request.url().split('?').next().unwrap_or("");
        let authorization = request
            .headers()
            .iter()
            .find(|header| header.field.equiv("Authorization"))
            .map(|header| header.value.as_str());
        let source = request.remote_addr().map(SocketAddr::ip);
        let verdict = shared.auth.check(path, authorization, source);
        let reply = match verdict {
            AuthVerdict::Public | AuthVerdict::Allowed => shared.read().respond(
                request.method().as_str(),
                request.url(),
                monotonic_ns(),
                &shared.http,
            ),
            refused => {
                let fresh = shared.read().freshness(monotonic_ns());
                json_reply(
                    refused.status(),
                    json!({ "error": refused.reason() }),
                    fresh,
                )
            }
        };
        shared.http.count(reply.status);
        let content_type =
            tiny_http::Header::from_bytes(&b"Content-Type"[..], reply.content_type.as_bytes())
                .expect("a valid header");
        let mut response = tiny_http::Response::from_string(reply.body)
            .with_status_code(reply.status)
            .with_header(content_type);
        if reply.status == 405 {
            response.add_header(
                tiny_http::Header::from_bytes(&b"Allow"[..], &b"GET"[..]).expect("a valid header"),
            );
        }
        if reply.status == 401 {
            response.add_header(
                tiny_http::Header::from_bytes(
                    &b"WWW-Authenticate"[..],
                    &b"Basic realm=\"tally-monitor\", charset=\"UTF-8\""[..],
                )
                .expect("a valid header"),
            );
        }
        if reply.status == 429 {
            response.add_header(
                tiny_http::Header::from_bytes(&b"Retry-After"[..], &b"1"[..])
                    .expect("a valid header"),
            );
        }
        // A client that went away is its own problem.
        let _ = request.respond(response);
    }
}

// ---------------------------------------------------------------------------
// HTTP authentication.

/// Who may read the monitor over HTTP. See the module docs ("Who may
/// read").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAuthConfig {
    /// The clients whose credentials are checked (username, argon2 hash,
    /// role), as in the appliance's `[[clients]]`.
    pub clients: Vec<ClientEntry>,
    /// Roles that may read; a verified client with another role gets 403.
    pub read_roles: Vec<Role>,
    /// Whether `/metrics` answers without credentials.
    pub metrics_public: bool,
    /// Verified credentials remembered (1..=65 536).
    pub cache_entries: usize,
    /// How long one is remembered.
    pub cache_ttl: Duration,
    /// argon2 verifications one source address may cause per second...
    pub verifications_per_sec_per_source: u32,
    /// ...and back to back.
    pub verification_burst: u32,
}

impl HttpAuthConfig {
    /// Nobody may read: every endpoint but `/health` and `/ready` answers 401.
    pub fn deny_all() -> HttpAuthConfig {
        HttpAuthConfig {
            clients: Vec::new(),
            read_roles: vec![Role::Reader, Role::Ops, Role::Authority],
            metrics_public: false,
            cache_entries: 256,
            cache_ttl: Duration::from_secs(600),
            verifications_per_sec_per_source: 2,
            verification_burst: 5,
        }
    }

    /// The appliance's `[[clients]]` and `[http]` section.
    pub fn from_appliance(config: &ApplianceConfig) -> Result<HttpAuthConfig, String> {
        let http = &config.http;
        Ok(HttpAuthConfig {
            clients: config.gateway_config().clients,
            read_roles: http.roles().map_err(|error| error.to_string())?,
            metrics_public: http.metrics_public,
            cache_entries: http.credential_cache_entries,
            cache_ttl: Duration::from_millis(http.credential_cache_ttl_ms),
            verifications_per_sec_per_source: http.verifications_per_sec_per_source,
            verification_burst: http.verification_burst,
        })
    }

    fn validate(&self) -> Result<(), String> {
        if !(1..=65_536).contains(&self.cache_entries) {
            return Err("auth cache_entries must be 1..=65536".into());
        }
        if self.verifications_per_sec_per_source == 0 || self.verification_burst == 0 {
            return Err("auth verification rate and burst must be at least 1".into());
        }
        Ok(())
    }
}

/// What [`HttpAuth::check`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthVerdict {
    /// An endpoint anyone may read.
    Public,
    /// Credentials verified, role may read.
    Allowed,
    /// No credentials, malformed ones, or wrong ones: 401.
    Unauthorized,
    /// Verified, but the role may not read: 403.
    Forbidden,
    /// The source caused too many verifications: 429.
    Throttled,
}

impl AuthVerdict {
    fn status(self) -> u16 {
        match self {
            AuthVerdict::Public | AuthVerdict::Allowed => 200,
            AuthVerdict::Unauthorized => 401,
            AuthVerdict::Forbidden => 403,
            AuthVerdict::Throttled => 429,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            AuthVerdict::Public | AuthVerdict::Allowed => "",
            AuthVerdict::Unauthorized => {
                "credentials required: HTTP Basic with a configured client's username and password"
            }
            AuthVerdict::Forbidden => "this client's role may not read the monitor",
            AuthVerdict::Throttled => {
                "too many password checks from this address; retry in a second"
            }
        }
    }
}

/// Longest `Authorization` header value looked at.
const AUTHORIZATION_BYTES_MAX: usize = 512;
/// Cells of the per-source verification throttle.
const THROTTLE_CELLS: usize = 4096;

/// One remembered verified credential.
#[derive(Clone, Copy, Debug)]
struct CachedCredential {
    /// Keyed hash of (username, password).
    tag: u128,
    client: u16,
    expires: Instant,
}

/// A per-source token bucket cell (sources hash into a fixed table; never
/// evicted, so churning through addresses resets nobody's bucket).
#[derive(Clone, Copy, Debug)]
struct ThrottleCell {
    tokens_nano: u64,
    refilled_ns: u64,
}

/// The monitor's credential checker, shared by the HTTP workers.
struct HttpAuth {
    config: HttpAuthConfig,
    /// argon2 hash of nothing anyone knows: an unknown username costs the
    /// same as a wrong password.
    dummy_hash: String,
    /// Keys of the credential tag (two SipHash keys → 128 bits).
    tag_keys: [std::collections::hash_map::RandomState; 2],
    cache: Mutex<Vec<CachedCredential>>,
    throttle: Mutex<Box<[ThrottleCell]>>,
    throttle_key: std::collections::hash_map::RandomState,
    started: Instant,
}

impl HttpAuth {
    fn new(config: HttpAuthConfig) -> HttpAuth {
        let burst_nano = u64::from(config.verification_burst) * 1_000_000_000;
        HttpAuth {
            dummy_hash: tally_config::gateway::hash_password("tally-monitor-no-such-user"),
            tag_keys: Default::default(),
            cache: Mutex::new(Vec::with_capacity(config.cache_entries)),
            throttle: Mutex::new(
                vec![
                    ThrottleCell {
                        tokens_nano: burst_nano,
                        refilled_ns: 0,
                    };
                    THROTTLE_CELLS
                ]
                .into_boxed_slice(),
            ),
            throttle_key: Default::default(),
            started: Instant::now(),
            config,
        }
    }

    fn check(
        &self,
        path: &str,
        authorization: Option<&str>,
        source: Option<std::net::IpAddr>,
    ) -> AuthVerdict {
        if path == "/health"
            || path == "/ready"
            || (path == "/metrics" && self.config.metrics_public)
        {
            return AuthVerdict::Public;
        }
        let Some((username, password)) = authorization.and_then(basic_credentials) else {
            return AuthVerdict::Unauthorized;
        };
        let client = self
            .config
            .clients
            .iter()
            .position(|client| client.username.as_bytes() == username.as_slice());
        let tag = {
            use std::hash::BuildHasher;
            let [a, b] = &self.tag_keys;
            let key = (username.as_slice(), password.as_slice());
            (u128::from(a.hash_one(key)) << 64) | u128::from(b.hash_one(key))
        };
        let now = Instant::now();
        if let Some(client) = client {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            let hit = cache.iter().any(|entry| {
                entry.tag == tag && usize::from(entry.client) == client && entry.expires > now
            });
            drop(cache);
            if hit {
                return self.role_verdict(client);
            }
        }
        if !self.admit_verification(source) {
            return AuthVerdict::Throttled;
        }
        let verified = match client {
            Some(index) => tally_config::gateway::verify_password(
                &password,
                &self.config.clients[index].password_hash,
            ),
            None => {
                let _ = tally_config::gateway::verify_password(&password, &self.dummy_hash);
                false
            }
        };
        let (Some(client), true) = (client, verified) else {
            return AuthVerdict::Unauthorized;
        };
        self.remember(tag, client, now);
        self.role_verdict(client)
    }

    fn role_verdict(&self, client: usize) -> AuthVerdict {
        if self
            .config
            .read_roles
            .contains(&self.config.clients[client].role)
        {
            AuthVerdict::Allowed
        } else {
            AuthVerdict::Forbidden
        }
    }

    /// Caches a verified credential, replacing an expired or the oldest
    /// entry when full.
    fn remember(&self, tag: u128, client: usize, now: Instant) {
        let entry = CachedCredential {
            tag,
            client: client as u16,
            expires: now + self.config.cache_ttl,
        };
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.iter().any(|cached| cached.tag == tag) {
            return;
        }
        if cache.len() < self.config.cache_entries {
            cache.push(entry);
        } else if let Some(oldest) = cache.iter_mut().min_by_key(|cached| cached.expires) {
            *oldest = entry;
        }
    }

    /// Takes a verification token from `source`'s bucket.
    fn admit_verification(&self, source: Option<std::net::IpAddr>) -> bool {
        use std::hash::BuildHasher;
        let cell = match source {
            Some(ip) => self.throttle_key.hash_one(ip) as usize % THROTTLE_CELLS,
            None => 0,
        };
        let now_ns = self.started.elapsed().as_nanos() as u64;
        let rate = u128::from(self.config.verifications_per_sec_per_source);
        let burst_nano = u64::from(self.config.verification_burst) * 1_000_000_000;
        let mut cells = self.throttle.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = &mut cells[cell];
        let elapsed = u128::from(now_ns.saturating_sub(bucket.refilled_ns));
        bucket.tokens_nano =
            (u128::from(bucket.tokens_nano) + elapsed * rate).min(u128::from(burst_nano)) as u64;
        bucket.refilled_ns = bucket.refilled_ns.max(now_ns);
        if bucket.tokens_nano >= 1_000_000_000 {
            bucket.tokens_nano -= 1_000_000_000;
            true
        } else {
            false
        }
    }
}

/// `(username, password)` of an `Authorization: Basic …` value.
fn basic_credentials(value: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    if value.len() > AUTHORIZATION_BYTES_MAX {
        return None;
    }
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(encoded.trim())?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

/// Standard base64 with padding (RFC 4648 §4), as HTTP Basic uses.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, chunk) in bytes.chunks(4).enumerate() {
        let last = index + 1 == bytes.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut word = 0u32;
        for &c in &chunk[..4 - pad] {
            word = (word << 6) | value(c)?;
        }
        word <<= 6 * pad as u32;
        let group = [(word >> 16) as u8, (word >> 8) as u8, word as u8];
        out.extend_from_slice(&group[..3 - pad]);
    }
    Some(out)
}

/// Standard base64 with padding: for clients and tests building an
/// `Authorization: Basic` header.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for position in 0..4 {
            if position <= chunk.len() {
                out.push(ALPHABET[(word >> (18 - 6 * position)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `Authorization` header value for `username` and `password`.
pub fn basic_authorization(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{username}:{password}").as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_wire::{
        reject_reason, CancelOrder, CommandRejected, ConfirmHold, HoldEnded, HoldPlaced,
        InventoryLevel, LocationDirectory, ModifyOrder, OnHandDelta, Order, ReleaseHold, Reserve,
        SkuDirectory, SystemEvent, WireMessage,
    };

    fn model() -> ReadModel {
        let limits = IndexLimits {
            history_depth: 3,
            history_cells_max: 3,
            orders_max: 4,
            holds_max: 4,
            timeline_events_max: 8,
        };
        ReadModel::new(ReplicaLimits::small(), limits, 1_000_000_000, 10)
    }

    /// Feeds messages as seq 1, 2, … from `next`.
    struct Feed {
        model: ReadModel,
        next: u64,
    }

    impl Feed {
        fn new() -> Feed {
            let mut feed = Feed {
                model: model(),
                next: 1,
            };
            feed.send(LocationDirectory::new(
                1,
                tally_wire::pad_ascii("STORE-A").unwrap(),
            ));
            feed.send(LocationDirectory::new(
                2,
                tally_wire::pad_ascii("STORE-B").unwrap(),
            ));
            feed.send(SkuDirectory::new(7, tally_wire::pad_ascii("MUG").unwrap()));
            feed.send(SkuDirectory::new(8, tally_wire::pad_ascii("TEE").unwrap()));
            feed.send(InventoryLevel::new(1, 7, 10, 0));
            feed.send(InventoryLevel::new(2, 7, 5, 0));
            feed.send(InventoryLevel::new(1, 8, 0, 0));
            feed.send(SystemEvent::new(tally_wire::system_code::AUTHORITY_ONLINE));
            feed
        }

        fn send<M: WireMessage>(&mut self, message: M) -> u64 {
            let seq = self.next;
            self.next += 1;
            assert!(self
                .model
                .apply(seq, &Message::parse(message.as_bytes()).unwrap()));
            seq
        }

        fn get(&self, url: &str) -> (u16, Value) {
            let reply = self
                .model
                .respond("GET", url, monotonic_ns(), &HttpCounters::default());
            let value = if reply.content_type == JSON {
                serde_json::from_str(&reply.body).unwrap()
            } else {
                Value::String(reply.body)
            };
            (reply.status, value)
        }
    }

    #[test]
    fn order_timeline_follows_accept_modify_cancel_and_rejects() {
        let mut f = Feed::new();
        let o = f.send(Order::new(1, 1, 7, 3).with_origin(5));
        f.send(OnHandDelta::new(1, 7, -3, delta_reason::ORDER, o));
        let (_, v) = f.get("/orders/5/1");
        assert_eq!(
            (v["status"].as_str(), v["remaining"].as_u64()),
            (Some("accepted"), Some(3))
        );
        let m = f.send(ModifyOrder::new(1, 2).with_origin(5));
        f.send(OnHandDelta::new(1, 7, 1, delta_reason::MODIFY, m));
        let bad = f.send(ModifyOrder::new(1, 100).with_origin(5));
        f.send(CommandRejected::new(bad, reject_reason::INSUFFICIENT));
        let (_, v) = f.get("/orders/5/1");
        assert_eq!(
            (v["status"].as_str(), v["remaining"].as_u64()),
            (Some("accepted"), Some(2))
        );
        let dup = f.send(Order::new(1, 1, 7, 1).with_origin(5));
        f.send(CommandRejected::new(dup, reject_reason::DUPLICATE_ID));
        let x = f.send(CancelOrder::new(1).with_origin(5));
        f.send(OnHandDelta::new(1, 7, 2, delta_reason::CANCEL, x));
        let (status, v) = f.get("/orders/5/1");
        assert_eq!(status, 200);
        assert_eq!(v["status"], "cancelled");
        assert_eq!(v["remaining"], 0);
        assert_eq!(v["events_recorded"], 10);
        assert_eq!(v["truncated"], true, "8 of 10 kept");
        let names: Vec<&str> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["M", "D", "M", "J", "O", "J", "X", "D"]);

        let o2 = f.send(Order::new(2, 1, 7, 50).with_origin(5));
        f.send(CommandRejected::new(o2, reject_reason::INSUFFICIENT));
        let (_, v) = f.get("/orders/5/2");
        assert_eq!(
            (v["status"].as_str(), v["reject_reason"].as_str()),
            (Some("rejected"), Some("I"))
        );
        assert_eq!(f.get("/orders/5/3").0, 404);
        assert_eq!(f.get("/orders/5/x").0, 400);
        assert_eq!(f.get("/orders/70000/1").0, 400);
        assert_eq!(f.get("/orders/5/1?verbose=1").0, 400);
    }

    #[test]
    fn hold_status_follows_place_confirm_release_expire() {
        let mut f = Feed::new();
        let statuses = [
            (hold_outcome::CONFIRMED, "confirmed"),
            (hold_outcome::RELEASED, "released"),
            (hold_outcome::EXPIRED, "expired"),
        ];
        for (i, (outcome, name)) in statuses.into_iter().enumerate() {
            let hold_id = 10 + i as u64;
            let v = f.send(Reserve::new(hold_id, 2, 7, 1, 1000).with_origin(5));
            let (_, body) = f.get(&format!("/holds/5/{hold_id}"));
            assert_eq!(body["status"], "pending");
            f.send(HoldPlaced::new(v, 2, 7, 1, 99));
            let (_, body) = f.get(&format!("/holds/5/{hold_id}"));
            assert_eq!(body["status"], "open");
            assert_eq!(body["expires_at_ns"], 99);
            let c = match outcome {
                hold_outcome::CONFIRMED => f.send(ConfirmHold::new(hold_id).with_origin(5)),
                hold_outcome::RELEASED => f.send(ReleaseHold::new(hold_id).with_origin(5)),
                _ => 0,
            };
            f.send(HoldEnded::new(v, 2, 7, 1, outcome));
            if outcome == hold_outcome::CONFIRMED {
                f.send(OnHandDelta::new(2, 7, -1, delta_reason::HOLD_CONFIRMED, c));
            }
            let (_, body) = f.get(&format!("/holds/5/{hold_id}"));
            assert_eq!(body["status"], name);
        }
        let (_, body) = f.get("/holds/5/10");
        let types: Vec<&str> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["V", "H", "C", "E", "D"]);
        let v = f.send(Reserve::new(20, 2, 7, 100, 1000).with_origin(5));
        f.send(CommandRejected::new(v, reject_reason::INSUFFICIENT));
        assert_eq!(f.get("/holds/5/20").1["status"], "rejected");
        assert_eq!(f.get("/holds/5/21").0, 404);
        assert_eq!(f.model.index_counters().outcomes_unattributed, 0);
    }

    #[test]
    fn cell_history_keeps_the_newest_events_with_the_state_after_each() {
        let mut f = Feed::new();
        for i in 0..3 {
            let o = f.send(Order::new(100 + i, 1, 7, 1).with_origin(5));
            f.send(OnHandDelta::new(1, 7, -1, delta_reason::ORDER, o));
        }
        let (status, v) = f.get("/cells/STORE-A/MUG/history");
        assert_eq!(status, 200);
        assert_eq!(v["events_recorded"], 4, "I then three D");
        let after: Vec<u64> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["after"]["on_hand"].as_u64().unwrap())
            .collect();
        assert_eq!(after, [9, 8, 7], "depth 3 keeps the newest three");
        assert_eq!(v["cell"]["available"], 7);
        let (_, v) = f.get("/cells/1/MUG/history?limit=1");
        assert_eq!(v["events"].as_array().unwrap().len(), 1);
        assert_eq!(f.get("/cells/STORE-Z/MUG/history").0, 400);
        assert_eq!(f.get("/cells/STORE-A/NOPE/history").0, 404);
        assert_eq!(f.get("/cells/STORE-A/MUG/history?limit=x").0, 400);
        // Three cells tracked at most: a fourth evicts one.
        f.send(InventoryLevel::new(2, 8, 4, 0));
        assert!(f.model.index_counters().cells_evicted >= 1);
    }

    #[test]
    fn availability_depleted_health_ready_and_metrics() {
        let mut f = Feed::new();
        let (status, v) = f.get("/availability/MUG");
        assert_eq!(status, 200);
        assert_eq!(v["total"]["available"], 15);
        assert_eq!(v["locations"].as_array().unwrap().len(), 2);
        for key in ["seq", "lag", "stale"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["seq"], 8);
        let (_, v) = f.get("/availability/MUG?location=STORE-B");
        assert_eq!(v["total"]["available"], 5);
        let (_, v) = f.get("/availability/MUG?location=1");
        assert_eq!(v["locations"][0]["name"], "STORE-A");
        assert_eq!(f.get("/availability/MUG?location=9").0, 400);
        assert_eq!(f.get("/availability/MUG?where=1").0, 400);
        assert_eq!(f.get("/availability/NOPE").0, 404);
        assert_eq!(f.get("/availability/MU%47").0, 200, "percent-decoded");
        assert_eq!(f.get("/availability/MU%4").0, 400);

        let v = f.send(Reserve::new(1, 2, 7, 5, 1000).with_origin(5));
        f.send(HoldPlaced::new(v, 2, 7, 5, 99));
        let (_, all) = f.get("/depleted");
        let symbols: Vec<&str> = all["skus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["symbol"].as_str().unwrap())
            .collect();
        assert_eq!(symbols, ["TEE"]);
        let (_, any) = f.get("/depleted?scope=any");
        let symbols: Vec<&str> = any["skus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["symbol"].as_str().unwrap())
            .collect();
        assert_eq!(symbols, ["MUG", "TEE"]);
        assert_eq!(any["skus"][0]["out_at"][0]["name"], "STORE-B");
        assert_eq!(f.get("/depleted?scope=some").0, 400);

        assert_eq!(f.get("/health").0, 200);
        assert_eq!(f.get("/ready").0, 200);
        let (status, v) = f.get("/digest");
        assert_eq!(status, 200);
        let digest = format!("{:016x}", f.model.replica.digest());
        assert_eq!(v["digest"], digest.as_str());
        assert_eq!(v["digest_seq"], f.model.replica.last_seq());
        assert_eq!(v["digest_seq"], v["seq"]);
        assert_eq!(v["oversold"], 0);
        assert_eq!(f.get("/digest?x=1").0, 400);
        assert_eq!(f.get("/nope").0, 404);
        let reply = f
            .model
            .respond("POST", "/health", monotonic_ns(), &HttpCounters::default());
        assert_eq!(reply.status, 405);
        let (status, Value::String(text)) = f.get("/metrics") else {
            panic!("metrics are text");
        };
        assert_eq!(status, 200);
        assert!(text.contains("\ntally_monitor_seq 10\n"), "{text}");
        assert!(text.contains("tally_monitor_oversold 0\n"));

        // Silent past the stale timeout: stale, /health 503, /ready 503.
        let later = monotonic_ns() + 5_000_000_000;
        let http = HttpCounters::default();
        assert_eq!(f.model.respond("GET", "/health", later, &http).status, 503);
        assert_eq!(f.model.respond("GET", "/ready", later, &http).status, 503);
        let reply = f.model.respond("GET", "/availability/MUG", later, &http);
        let v: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(v["stale"], true);
    }

    #[test]
    fn default_indexes_take_about_23_mib() {
        let indexes = Indexes::new(&IndexLimits::DEFAULT);
        let mib = indexes.memory_bytes() as f64 / (1 << 20) as f64;
        assert!((20.0..26.0).contains(&mib), "{mib} MiB");
    }

    #[test]
    fn clock_table_gives_a_second_chance() {
        let mut t = ClockTable::new(2);
        assert_eq!(t.claim(1), Claim::Fresh(0));
        assert_eq!(t.claim(2), Claim::Fresh(1));
        // Both referenced: the hand clears both, then evicts slot 0.
        assert_eq!(t.claim(3), Claim::Evicted(0, 1));
        // 3 is referenced, 2 is not: 2 goes.
        assert_eq!(t.claim(4), Claim::Evicted(1, 2));
        assert_eq!(t.claim(3), Claim::Existing(0));
        assert_eq!(t.find(&2), None);
        assert_eq!(t.len(), 2);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// The one decoder of HTTP input that is ours (tiny_http parses the
        /// request): any `Authorization` value is answered, never a panic.
        #[test]
        fn authorization_values_never_panic(value in "\\PC{0,300}") {
            let _ = basic_credentials(&value);
            let _ = basic_credentials(&format!("Basic {value}"));
            let _ = base64_decode(&value);
        }

        #[test]
        fn base64_round_trips(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            proptest::prop_assert_eq!(base64_decode(&base64_encode(&bytes)), Some(bytes));
        }

        #[test]
        fn basic_credentials_round_trip(user in "[!-9;-~]{1,16}", password in "[ -~]{0,32}") {
            let header = basic_authorization(&user, &password);
            proptest::prop_assert_eq!(
                basic_credentials(&header),
                Some((user.into_bytes(), password.into_bytes()))
            );
        }
    }

    #[test]
    fn base64_and_basic_credentials() {
        for text in ["", "a", "ab", "abc", "read1:readpass", "r:p:with:colons"] {
            let encoded = base64_encode(text.as_bytes());
            assert_eq!(
                base64_decode(&encoded).unwrap(),
                text.as_bytes(),
                "{encoded}"
            );
        }
        assert_eq!(base64_encode(b"read1:readpass"), "cmVhZDE6cmVhZHBhc3M=");
        assert_eq!(
            basic_credentials("Basic cmVhZDE6cmVhZHBhc3M="),
            Some((b"read1".to_vec(), b"readpass".to_vec()))
        );
        assert_eq!(
            basic_credentials("basic   cmVhZDE6cmVhZHBhc3M= "),
            Some((b"read1".to_vec(), b"readpass".to_vec()))
        );
        for bad in [
            "Bearer cmVhZDE6cmVhZHBhc3M=",
            "Basic",
            "Basic cmVhZDE",
            "Basic cmVh=DE6",
            "Basic bm9jb2xvbg==", // "nocolon"
            "Basic ****",
        ] {
            assert_eq!(basic_credentials(bad), None, "{bad}");
        }
        assert_eq!(basic_credentials(&"A".repeat(600)), None, "too long");
    }

    #[test]
    fn query_strings_and_numbers() {
        assert_eq!(percent_decode("A%20B+C", true).unwrap(), "A B C");
        assert_eq!(percent_decode("A+B", false).unwrap(), "A+B");
        assert!(percent_decode("%zz", false).is_err());
        assert!(percent_decode("%ff", false).is_err(), "not UTF-8");
        assert!(parse_query("a=1&a=2", &["a"]).is_err());
        assert!(parse_query("b=1", &["a"]).is_err());
        assert_eq!(
            parse_query("a=x&", &["a"]).unwrap(),
            [("a".to_string(), "x".to_string())]
        );
        assert!(parse_number::<u64>("+1", "n").is_err());
        assert!(parse_number::<u16>("65536", "n").is_err());
        assert_eq!(parse_number::<u64>("42", "n").unwrap(), 42);
    }
}
