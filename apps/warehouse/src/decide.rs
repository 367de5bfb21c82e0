//! The warehouse's decision engine: the authority of DESIGN.md §3.
//!
//! [`Warehouse`] owns a [`Replica`] (its authoritative state) and decides
//! every command on the stream, writing the events to publish into a caller's
//! [`EventSink`] (an [`EventBuf`] of [`EventBuf::CAPACITY`] messages, or any
//! `FnMut(&[u8])`). It is deterministic and pure: no I/O except the explicit
//! snapshot and inventory-file calls, no clock reads (time comes in as the
//! command's sequencer timestamp, or as `now_ns` for [`Warehouse::expire`]),
//! no allocation after construction on the decision path.
//!
//! # Applying its own decisions once
//!
//! The warehouse applies each decision to its state at once, so back-to-back
//! commands see each other, and stamps every event it emits with its own
//! origin and the client_seq its session will send it with (numbered from
//! [`Warehouse::begin_run`]). A cell so changed carries a provisional version
//! ([`PROVISIONAL_VERSION_BIT`] | client_seq) until the event comes back on
//! the stream with its real sequence number. When own events come back,
//! [`Warehouse::on_stream`]:
//! - events of **this run** (client_seq ≥ the run's first) are not applied
//!   again: only the cell version becomes the event's seq;
//! - events of an **earlier run** (client_seq below it: replayed after a
//!   restart) are applied like any replica applies them.
//!
//! So at a quiet moment ([`Warehouse::in_flight`] = 0) the warehouse's
//! [`Replica::digest`] equals that of every replica at the same seq.
//!
//! # Catch-up, restart and snapshots
//!
//! Outcomes come in the order of their commands (the warehouse decides in
//! stream order), and every command gets exactly one outcome. While
//! *deferring* — after [`Warehouse::restore`], or after
//! [`Warehouse::pause_decisions`] — commands are only remembered as pending;
//! outcome events replayed from an earlier run answer them.
//! [`Warehouse::finish_catch_up`] then decides, in stream order, exactly the
//! commands no outcome answered; it refuses until every event the previous run
//! sequenced (client_seq below the run's first) has been seen, so nothing is
//! ever decided twice.
//!
//! A snapshot is only taken when nothing is in flight
//! ([`Warehouse::save_snapshot`] refuses otherwise): its state is then exactly
//! the stream's at its seq. To reach such a moment under load: pause
//! decisions, keep feeding the stream until `in_flight() == 0`, save, then
//! `finish_catch_up` decides what queued up meanwhile.
//!
//! The flow of the warehouse binary:
//!
//! ```text
//! let mut wh = match snapshot of this session {
//!     Some(path) => Warehouse::restore(path, config)?.0,      // deferring; replay from info.seq + 1
//!     None => { let mut wh = Warehouse::new(config); wh.pause_decisions(); wh }  // replay from 1
//! };
//! wh.begin_run(next_client_seq_from_login_accepted);
//! feed the stream through wh.on_stream(seq, &msg, &mut out) up to its newest seq;
//! if wh.replica().authority_online_seq() == 0 {               // no broadcast in this session yet
//!     wh.load_inventory_file(csv)?;
//!     let mut at = wh.begin_session_start();                     // L, R, I, H, S(W), lazily:
//!     while !wh.session_start_step(&mut at, &mut out) { send out as the window allows }
//! }
//! loop { match wh.finish_catch_up(&mut out) { Done => break, More => send out,
//!        Err(AwaitingOwnEvents) => keep feeding the stream } }
//! live: on_stream for every message; expire(now_ns, &mut out) now and then;
//! snapshot: pause_decisions(); feed until in_flight() == 0; save_snapshot(); finish_catch_up()
//! ```
//!
//! A new session on a running warehouse (the stream numbers from 1 again):
//! [`Warehouse::start_new_session`], `begin_run(1)`, `session_start_events`.
//!
//! # Where each part lives
//!
//! This file: the sinks, the state and its run numbering, the stream
//! ([`Warehouse::on_stream`]), catch-up, and `decide`, which hands each
//! command to its module: `orders` (`O`, `M`, `X`), `holds` (`V`, `C`, `Y`
//! and expiry), `stock` (`T`, `K`, `A`), `directory` (`N`). Around them:
//! `session` (the session-start broadcast, closing and starting sessions),
//! `inventory` (the CSV loader) and `snapshot`.

mod directory;
mod holds;
mod inventory;
mod orders;
mod session;
mod snapshot;
mod stock;

pub use inventory::{InventoryError, InventoryErrorKind, InventorySummary};
pub use session::SessionStart;
pub use snapshot::SNAPSHOT_ENDED;

use core::fmt;

use tally_wire::zerocopy::IntoBytes;
use tally_wire::{reject_reason, CommandRejected, Message, WireMessage, MAX_MESSAGE_SIZE};

use tally_client::replica::{
    Applied, CellState, LocationSet, Replica, ReplicaLimits, Resolve, PROVISIONAL_VERSION_BIT,
};

/// Where the warehouse writes the events it decides.
///
/// Implemented by [`EventBuf`] and by every `FnMut(&[u8])` (annotate the
/// closure's argument: `&mut |event: &[u8]| …`).
pub trait EventSink {
    /// Takes one event's bytes (a complete stream message).
    fn publish(&mut self, message: &[u8]);

    /// How many more events fit; the warehouse never publishes more than
    /// this. Unbounded by default.
    fn room(&self) -> usize {
        usize::MAX
    }
}

impl<F: FnMut(&[u8])> EventSink for F {
    #[inline]
    fn publish(&mut self, message: &[u8]) {
        self(message)
    }
}

/// A fixed buffer of up to [`EventBuf::CAPACITY`] events: what one decision
/// produces (at most two) with room to spare. Clear it between uses.
#[derive(Clone)]
pub struct EventBuf {
    len: usize,
    sizes: [u8; Self::CAPACITY],
    bytes: [[u8; MAX_MESSAGE_SIZE]; Self::CAPACITY],
}

impl EventBuf {
    /// Events it holds.
    pub const CAPACITY: usize = 4;

    /// An empty buffer.
    pub const fn new() -> Self {
        Self {
            len: 0,
            sizes: [0; Self::CAPACITY],
            bytes: [[0; MAX_MESSAGE_SIZE]; Self::CAPACITY],
        }
    }

    /// Empties it.
    #[inline]
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Number of events held.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no event.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes of event `i`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        (i < self.len).then(|| &self.bytes[i][..usize::from(self.sizes[i])])
    }

    /// The events' bytes, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len).map(|i| &self.bytes[i][..usize::from(self.sizes[i])])
    }
}

impl Default for EventBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EventBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(Message::parse))
            .finish()
    }
}

impl EventSink for EventBuf {
    #[inline]
    fn publish(&mut self, message: &[u8]) {
        assert!(self.len < Self::CAPACITY, "EventBuf overflow");
        self.bytes[self.len][..message.len()].copy_from_slice(message);
        self.sizes[self.len] = message.len() as u8;
        self.len += 1;
    }

    #[inline]
    fn room(&self) -> usize {
        Self::CAPACITY - self.len
    }
}

/// The most events one decision emits (confirm: `E` + `D`; transfer: two `D`).
pub const DECISION_EVENTS_MAX: usize = 2;

/// How a warehouse is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WarehouseConfig {
    /// The client id the appliance knows the warehouse by (its events carry
    /// it as origin).
    pub own_origin: u16,
    /// Table sizes of its replica.
    pub limits: ReplicaLimits,
}

/// What the warehouse decided, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WarehouseCounters {
    /// Commands decided.
    pub decided: u64,
    /// Commands accepted (answered by `D`, `H`, `E` or `I`).
    pub accepted: u64,
    /// Rejected: insufficient stock (`I`).
    pub insufficient: u64,
    /// Rejected: unknown SKU (`U`).
    pub unknown_sku: u64,
    /// Rejected: unknown location (`L`).
    pub unknown_location: u64,
    /// Rejected: version conflict (`V`).
    pub version_conflict: u64,
    /// Rejected: duplicate id (`D`).
    pub duplicate_id: u64,
    /// Rejected: no such order or hold (`N`).
    pub no_such: u64,
    /// Rejected: zero or invalid quantity (`Z`).
    pub invalid_quantity: u64,
    /// Reserves rejected (as insufficient) because the hold table was full.
    pub holds_full: u64,
    /// Transfers, recounts and adjustments rejected (as insufficient)
    /// because they needed a new cell and the cell table was full
    /// (`cells_max`).
    pub cells_full: u64,
    /// Holds expired.
    pub expired: u64,
    /// Own events that came back out of client_seq order (should stay 0).
    pub own_out_of_order: u64,
    /// Own events the gateway refused (a `j` with the warehouse's origin):
    /// the warehouse applied a decision the stream will never carry, so its
    /// state is ahead of every replica. Must stay 0; if not, restart from
    /// the last snapshot.
    pub own_events_rejected: u64,
}

impl WarehouseCounters {
    /// Commands rejected, all reasons.
    pub fn rejected(&self) -> u64 {
        self.insufficient
            + self.unknown_sku
            + self.unknown_location
            + self.version_conflict
            + self.duplicate_id
            + self.no_such
            + self.invalid_quantity
    }
}

/// Result of [`Warehouse::finish_catch_up`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// Every deferred command is decided; decisions are live again.
    Done {
        /// Commands decided by this call.
        decided: u64,
    },
    /// The sink ran out of room; call again with an emptied sink.
    More {
        /// Commands decided by this call.
        decided: u64,
    },
}

/// Why [`Warehouse::finish_catch_up`] cannot end the catch-up yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUpError {
    /// Events the previous run sequenced have not all come back yet: the
    /// stream must be consumed further, or a command could be decided twice.
    AwaitingOwnEvents {
        /// Highest own client_seq seen so far.
        seen: u32,
        /// The last client_seq of the previous run.
        expected: u32,
    },
}

impl fmt::Display for CatchUpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CatchUpError::AwaitingOwnEvents { seen, expected } => write!(
                f,
                "the previous run's events up to client_seq {expected} have not all been seen on the stream (last seen {seen})"
            ),
        }
    }
}

impl std::error::Error for CatchUpError {}

/// The authority. See the module docs.
#[derive(Clone)]
pub struct Warehouse {
    replica: Replica,
    own_origin: u16,
    /// client_seq of the first event this run sends.
    first_client_seq: u32,
    /// client_seq the next emitted event gets.
    next_client_seq: u32,
    /// Highest own client_seq seen on the stream (this or earlier runs).
    own_last_seen: u32,
    /// Commands are remembered, not decided (catch-up or pause).
    deferring: bool,
    /// Where `finish_catch_up` resumes after a `More`.
    deferred_cursor: u64,
    counters: WarehouseCounters,
}

// A warehouse moves to the thread that runs its loop.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Warehouse>();
};

impl fmt::Debug for Warehouse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Warehouse")
            .field("own_origin", &self.own_origin)
            .field("first_client_seq", &self.first_client_seq)
            .field("next_client_seq", &self.next_client_seq)
            .field("own_last_seen", &self.own_last_seen)
            .field("deferring", &self.deferring)
            .field("counters", &self.counters)
            .field("replica", &self.replica)
            .finish()
    }
}

impl Warehouse {
    /// An empty warehouse, deciding live, numbering its events from 1.
    pub fn new(config: WarehouseConfig) -> Self {
        Self {
            replica: Replica::new(config.limits),
            own_origin: config.own_origin,
            first_client_seq: 1,
            next_client_seq: 1,
            own_last_seen: 0,
            deferring: false,
            deferred_cursor: 0,
            counters: WarehouseCounters::default(),
        }
    }

    /// Starts this run's numbering: the first event it emits gets
    /// `first_client_seq` (the next number from Login Accepted). Own events
    /// below it that come back on the stream are an earlier run's and are
    /// applied; events from it on are this run's and are not applied twice.
    /// Call it after construction or restore, and again before
    /// [`Self::session_start_events`] of a new session (numbering restarts).
    pub fn begin_run(&mut self, first_client_seq: u32) {
        assert!(first_client_seq >= 1, "client_seq starts at 1");
        assert!(
            self.next_client_seq == self.first_client_seq || self.in_flight() == 0,
            "begin_run while this run's events are in flight"
        );
        self.first_client_seq = first_client_seq;
        self.next_client_seq = first_client_seq;
    }

    /// The authoritative state.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Its state's digest ([`Replica::digest`]); equal to every replica's at
    /// the same seq whenever [`Self::in_flight`] is 0.
    pub fn digest(&self) -> u64 {
        self.replica.digest()
    }

    /// What it decided so far (this process).
    pub fn counters(&self) -> &WarehouseCounters {
        &self.counters
    }

    /// The client id its events carry.
    pub fn own_origin(&self) -> u16 {
        self.own_origin
    }

    /// client_seq the next emitted event gets.
    pub fn next_client_seq(&self) -> u32 {
        self.next_client_seq
    }

    /// Own events emitted (or sequenced by an earlier run) not yet seen on
    /// the stream.
    pub fn in_flight(&self) -> u32 {
        (self.next_client_seq - 1).saturating_sub(self.own_last_seen)
    }

    /// Whether commands are decided as they arrive (false while catching up
    /// or paused).
    pub fn is_live(&self) -> bool {
        !self.deferring
    }

    /// Stops deciding: from now on commands are only remembered, until
    /// [`Self::finish_catch_up`] decides them in order (used to reach a quiet
    /// moment for a snapshot).
    pub fn pause_decisions(&mut self) {
        self.deferring = true;
        self.deferred_cursor = 0;
    }

    /// Ends a catch-up or pause: decides, in stream order, every remembered
    /// command no outcome event answered, then decides live again. Refuses
    /// until every event of the previous run has been seen on the stream.
    /// Decides as many as `out.room()` allows; `More` asks for another call.
    pub fn finish_catch_up<S: EventSink>(&mut self, out: &mut S) -> Result<CatchUp, CatchUpError> {
        if !self.deferring {
            return Ok(CatchUp::Done { decided: 0 });
        }
        if self.own_last_seen + 1 < self.first_client_seq {
            return Err(CatchUpError::AwaitingOwnEvents {
                seen: self.own_last_seen,
                expected: self.first_client_seq - 1,
            });
        }
        let mut decided = 0;
        let mut from = self.deferred_cursor.max(self.replica.pending_oldest());
        while let Some(seq) = self.replica.next_unresolved(from) {
            if out.room() < DECISION_EVENTS_MAX {
                self.deferred_cursor = seq;
                return Ok(CatchUp::More { decided });
            }
            let slot = *self
                .replica
                .pending_slot(seq)
                .expect("next_unresolved found it");
            self.decide(seq, &slot.message(), out);
            decided += 1;
            from = seq + 1;
        }
        self.deferring = false;
        self.deferred_cursor = 0;
        Ok(CatchUp::Done { decided })
    }

    /// Handles the stream message at `seq` (every message, in order):
    /// commands are decided (live) or remembered (deferring), own events of
    /// this run only confirm their seq, everything else is applied. Returns
    /// the number of events published to `out`, which must have room for
    /// [`DECISION_EVENTS_MAX`].
    #[inline]
    pub fn on_stream<S: EventSink>(&mut self, seq: u64, message: &Message, out: &mut S) -> usize {
        if seq <= self.replica.last_seq() {
            self.replica.count_stale();
            return 0;
        }
        let header = message.header();
        if header.origin.get() == self.own_origin && message.is_event() {
            if let Message::GatewayReject(_) = message {
                // Not our event but the gateway's verdict on one of ours.
                self.counters.own_events_rejected += 1;
            }
            let client_seq = header.client_seq.get();
            if client_seq != self.own_last_seen.wrapping_add(1) {
                self.counters.own_out_of_order += 1;
            }
            self.own_last_seen = self.own_last_seen.max(client_seq);
            if client_seq >= self.first_client_seq {
                self.replica.confirm_own(seq, client_seq, message);
            } else {
                self.replica.apply(seq, message);
            }
            return 0;
        }
        match self.replica.apply(seq, message) {
            Applied::Recorded if !self.deferring => self.decide(seq, message, out),
            _ => 0,
        }
    }

    /// The digest of the cells and holds of `locations` (both directories
    /// whole): what a store node keeping that set must report
    /// ([`Replica::digest_of`]); equal whenever [`Self::in_flight`] is 0.
    pub fn digest_of(&self, locations: &LocationSet) -> u64 {
        self.replica.digest_of(locations)
    }

    /// The first limit the state has met, with the numbers, if any
    /// ([`Replica::limit_met`]). The warehouse application stops on it (its
    /// state would no longer be the stream's).
    pub fn limit_met(&self) -> Option<String> {
        self.replica.limit_met()
    }

    // -----------------------------------------------------------------------
    // Decisions.

    /// Stamps `event` as this warehouse's next message, applies it to the
    /// state with a provisional version, and publishes it.
    #[inline]
    fn emit<M: WireMessage, S: EventSink>(&mut self, mut event: M, resolve: Resolve, out: &mut S) {
        let client_seq = self.next_client_seq;
        self.next_client_seq += 1;
        let header = event.header_mut();
        header.origin = self.own_origin.into();
        header.client_seq = client_seq.into();
        self.replica.apply_event(
            PROVISIONAL_VERSION_BIT | u64::from(client_seq),
            &event.as_message(),
            resolve,
        );
        out.publish(IntoBytes::as_bytes(&event));
    }

    #[inline]
    fn reject<S: EventSink>(&mut self, cmd_seq: u64, reason: u8, out: &mut S) -> usize {
        let c = &mut self.counters;
        match reason {
            reject_reason::INSUFFICIENT => c.insufficient += 1,
            reject_reason::UNKNOWN_SKU => c.unknown_sku += 1,
            reject_reason::UNKNOWN_LOCATION => c.unknown_location += 1,
            reject_reason::VERSION_CONFLICT => c.version_conflict += 1,
            reject_reason::DUPLICATE_ID => c.duplicate_id += 1,
            reject_reason::NO_SUCH => c.no_such += 1,
            reject_reason::INVALID_QUANTITY => c.invalid_quantity += 1,
            _ => unreachable!("the warehouse rejects only with I U L V D N Z"),
        }
        self.emit(
            CommandRejected::new(cmd_seq, reason),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }

    /// Decides the command at `cmd_seq`; returns the events published.
    fn decide<S: EventSink>(&mut self, cmd_seq: u64, message: &Message, out: &mut S) -> usize {
        assert!(
            out.room() >= DECISION_EVENTS_MAX,
            "the event sink needs room for {DECISION_EVENTS_MAX} events per decision"
        );
        self.counters.decided += 1;
        let before = self.counters.rejected();
        // No oversell, the deciding side (every replica counts the same on
        // the receiving side): a decision never takes a cell below zero.
        let oversold = self.replica.oversold();
        let emitted = match *message {
            Message::Order(m) => self.decide_order(cmd_seq, m, out),
            Message::ModifyOrder(m) => self.decide_modify(cmd_seq, m, out),
            Message::CancelOrder(m) => self.decide_cancel(cmd_seq, m, out),
            Message::Reserve(m) => self.decide_reserve(cmd_seq, m, out),
            Message::ConfirmHold(m) => self.decide_confirm(cmd_seq, m, out),
            Message::ReleaseHold(m) => self.decide_release(cmd_seq, m, out),
            Message::Transfer(m) => self.decide_transfer(cmd_seq, m, out),
            Message::Recount(m) => self.decide_recount(cmd_seq, m, out),
            Message::Adjust(m) => self.decide_adjust(cmd_seq, m, out),
            Message::DirectoryAdd(m) => self.decide_directory_add(cmd_seq, m, out),
            _ => unreachable!("only commands are decided"),
        };
        assert_eq!(
            self.replica.oversold(),
            oversold,
            "a decision took a cell below zero"
        );
        if self.counters.rejected() == before {
            self.counters.accepted += 1;
        }
        emitted
    }

    #[inline]
    fn cell(&self, location_index: u16, sku_index: u32) -> CellState {
        self.replica.cell_at(sku_index, location_index)
    }

    /// Whether the cell exists or the cell table has room for it: an event
    /// that would need a cell the table cannot hold is never emitted (the
    /// command is rejected, counted in `cells_full`).
    #[inline]
    fn cell_fits(&mut self, location_index: u16, sku_index: u32) -> bool {
        let fits = self.replica.cells().has_room_for(sku_index, location_index);
        if !fits {
            self.counters.cells_full += 1;
        }
        fits
    }

    /// Quantities above this cannot be a delta.
    #[inline]
    fn bad_quantity(qty: u32) -> bool {
        qty == 0 || qty > i32::MAX as u32
    }
}
