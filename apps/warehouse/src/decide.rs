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

mod directory;

use core::fmt;
use std::io::BufRead;
use std::path::Path;

use tally_wire::zerocopy::IntoBytes;
use tally_wire::{
    delta_reason, hold_outcome, pad_ascii, reject_reason, system_code, Adjust, CancelOrder,
    CommandRejected, ConfirmHold, HoldEnded, HoldPlaced, InventoryLevel, LocationDirectory,
    Message, ModifyOrder, OnHandDelta, Order, Recount, ReleaseHold, Reserve, SkuDirectory,
    SystemEvent, Transfer, WireMessage, MAX_MESSAGE_SIZE,
};

use tally_client::replica::{
    id_kind, Applied, CellState, LocationSet, Replica, ReplicaLimits, Resolve, CARRIED_HOLD_BIT,
    HOLD_IN_USE, PROVISIONAL_VERSION_BIT,
};
use tally_client::snapshot::{self, SnapshotError, SnapshotInfo};

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

/// Where a session-start broadcast stands: made by
/// [`Warehouse::begin_session_start`], advanced by
/// [`Warehouse::session_start_step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionStart {
    phase: BroadcastPhase,
    /// Next index in the phase's table.
    next: usize,
    /// Events published so far.
    events: u64,
}

impl SessionStart {
    /// Events published so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Whether `S(W)`, the last event, is published.
    pub fn is_done(&self) -> bool {
        self.phase == BroadcastPhase::Done
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BroadcastPhase {
    Locations,
    Skus,
    Cells,
    Holds,
    Online,
    Done,
}

/// What [`Warehouse::load_inventory`] loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InventorySummary {
    /// Locations, ids 1..=locations in order of first appearance.
    pub locations: u16,
    /// SKUs, ids 1..=skus in order of first appearance.
    pub skus: u32,
    /// Rows (cells) loaded.
    pub rows: u32,
    /// Units on hand over all cells.
    pub units: u64,
}

/// A bad inventory file, with the 1-based line it was found on (0 = the file
/// as a whole).
#[derive(Debug)]
pub struct InventoryError {
    /// 1-based line number; 0 when the problem is not one line.
    pub line: usize,
    /// What is wrong.
    pub kind: InventoryErrorKind,
}

/// What is wrong with an inventory file.
#[derive(Debug)]
pub enum InventoryErrorKind {
    /// Reading failed.
    Io(std::io::Error),
    /// The file has no header line.
    Empty,
    /// The first line is not `location,sku_symbol,quantity`.
    BadHeader(String),
    /// A row does not have exactly three comma-separated fields.
    FieldCount(usize),
    /// A location name or SKU symbol is empty, longer than 16 bytes or not
    /// printable ASCII.
    BadName {
        /// Which column.
        column: &'static str,
        /// The text.
        text: String,
    },
    /// The quantity is not a whole number in 0..=2^31−1.
    BadQuantity(String),
    /// The same (location, sku) appeared before.
    DuplicateCell {
        /// Line of the first row for the cell.
        first_line: usize,
    },
    /// More distinct locations than the replica's `locations_max`.
    TooManyLocations(u16),
    /// More distinct SKUs than the replica's `skus_max`.
    TooManySkus(u32),
    /// More rows (cells) than the replica's `cells_max`.
    TooManyCells(u32),
    /// The warehouse already holds inventory.
    NotEmpty,
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: ", self.line)?;
        }
        match &self.kind {
            InventoryErrorKind::Io(e) => write!(f, "cannot read the inventory file: {e}"),
            InventoryErrorKind::Empty => {
                f.write_str("the inventory file is empty (expected a header line `location,sku_symbol,quantity`)")
            }
            InventoryErrorKind::BadHeader(h) => write!(
                f,
                "expected the header `location,sku_symbol,quantity`, found `{h}`"
            ),
            InventoryErrorKind::FieldCount(n) => write!(
                f,
                "expected 3 comma-separated fields (location,sku_symbol,quantity), found {n}"
            ),
            InventoryErrorKind::BadName { column, text } => write!(
                f,
                "{column} `{text}` must be 1 to 16 printable ASCII characters"
            ),
            InventoryErrorKind::BadQuantity(q) => write!(
                f,
                "quantity `{q}` is not a whole number of units between 0 and 2147483647"
            ),
            InventoryErrorKind::DuplicateCell { first_line } => write!(
                f,
                "this location and SKU already appeared on line {first_line}"
            ),
            InventoryErrorKind::TooManyLocations(max) => write!(
                f,
                "more than {max} locations (the limit locations_max = {max}: raise it in the \
                 configuration's [limits] or with --locations-max)"
            ),
            InventoryErrorKind::TooManySkus(max) => write!(
                f,
                "more than {max} SKUs (the limit skus_max = {max}: raise it in the \
                 configuration's [limits] or with --skus-max)"
            ),
            InventoryErrorKind::TooManyCells(max) => write!(
                f,
                "more than {max} cells (the limit cells_max = {max}: raise it in the \
                 configuration's [limits] or with --cells-max)"
            ),
            InventoryErrorKind::NotEmpty => {
                f.write_str("the warehouse already holds inventory; load into a new one")
            }
        }
    }
}

impl std::error::Error for InventoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            InventoryErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// `app` word 0 of a warehouse snapshot: "WAREHOUS".
const SNAPSHOT_TAG: u64 = u64::from_be_bytes(*b"WAREHOUS");
/// The snapshot's fourth application word when it holds the state at the
/// end of its session ([`Warehouse::save_snapshot_ended`]); 0 otherwise.
pub const SNAPSHOT_ENDED: u64 = u64::from_be_bytes(*b"ENDED\0\0\0");

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

    /// A warehouse rebuilt from a snapshot file written by
    /// [`Self::save_snapshot`], deferring decisions until
    /// [`Self::finish_catch_up`]. Feed it the stream from `info.seq + 1`.
    pub fn restore(
        path: &Path,
        config: WarehouseConfig,
    ) -> Result<(Self, SnapshotInfo), SnapshotError> {
        let (replica, info) = snapshot::load(path, config.limits)?;
        if info.app[0] != SNAPSHOT_TAG {
            return Err(SnapshotError::Invalid("not a warehouse snapshot"));
        }
        if info.app[1] != u64::from(config.own_origin) {
            return Err(SnapshotError::Invalid(
                "the snapshot belongs to a warehouse with another origin",
            ));
        }
        let own_last_seen = u32::try_from(info.app[2])
            .map_err(|_| SnapshotError::Invalid("own client_seq out of range"))?;
        let warehouse = Self {
            replica,
            own_origin: config.own_origin,
            first_client_seq: own_last_seen + 1,
            next_client_seq: own_last_seen + 1,
            own_last_seen,
            deferring: true,
            deferred_cursor: 0,
            counters: WarehouseCounters::default(),
        };
        Ok((warehouse, info))
    }

    /// Writes the state to `path` (atomically: temp file, then rename),
    /// tagged with the stream `session`. Refuses while own events are in
    /// flight, since the state then holds effects the stream does not yet.
    /// Returns the bytes written.
    pub fn save_snapshot(&self, path: &Path, session: &[u8; 10]) -> Result<u64, SnapshotError> {
        let in_flight = self.in_flight();
        if in_flight != 0 {
            return Err(SnapshotError::NotQuiescent { in_flight });
        }
        let app = [
            SNAPSHOT_TAG,
            u64::from(self.own_origin),
            u64::from(self.own_last_seen),
            0,
        ];
        snapshot::save(path, &self.replica, session, app)
    }

    /// [`Self::save_snapshot`] of the state at the end of its session
    /// (after `S(C)`, nothing in flight): marked so a warehouse starting in
    /// the next session carries it over ([`SNAPSHOT_ENDED`]).
    pub fn save_snapshot_ended(
        &self,
        path: &Path,
        session: &[u8; 10],
    ) -> Result<u64, SnapshotError> {
        let in_flight = self.in_flight();
        if in_flight != 0 {
            return Err(SnapshotError::NotQuiescent { in_flight });
        }
        let app = [
            SNAPSHOT_TAG,
            u64::from(self.own_origin),
            u64::from(self.own_last_seen),
            SNAPSHOT_ENDED,
        ];
        snapshot::save(path, &self.replica, session, app)
    }

    /// Closes the session for a rollover (after the appliance's `S(E)`):
    /// publishes `S(F)`, the authority's last event of the session, and
    /// decides nothing more (commands sequenced after `S(E)` are not
    /// decided in this session). Call it once every command before `S(E)`
    /// is decided (not deferring).
    pub fn close_session<S: EventSink>(&mut self, out: &mut S) {
        assert!(
            !self.deferring,
            "close_session with commands still deferred"
        );
        self.emit(
            SystemEvent::new(system_code::AUTHORITY_CLOSED),
            Resolve::Nothing,
            out,
        );
        self.pause_decisions();
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
        let mut from = self.deferred_cursor.max(self.replica.pending_oldest);
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
            self.replica.counters.stale += 1;
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

    /// Expires holds whose `expires_at_ns` ≤ `now_ns` with `E(X)`, earliest
    /// first, as many as `out.room()` allows. Does nothing while deferring
    /// (an earlier run may already have expired them). Returns the events
    /// published.
    pub fn expire<S: EventSink>(&mut self, now_ns: u64, out: &mut S) -> usize {
        if self.deferring {
            return 0;
        }
        let mut emitted = 0;
        while out.room() > 0 {
            let Some(slot) = self.replica.first_expiring_slot() else {
                break;
            };
            let hold = self.replica.holds[slot as usize];
            if hold.expires_at_ns > now_ns {
                break;
            }
            self.emit(
                HoldEnded::new(
                    hold.cmd_seq,
                    hold.location,
                    hold.sku,
                    hold.qty,
                    hold_outcome::EXPIRED,
                ),
                Resolve::Nothing,
                out,
            );
            self.counters.expired += 1;
            emitted += 1;
        }
        emitted
    }

    /// Prepares for a new session's stream, which numbers from seq 1 again:
    /// forgets the stream position, the pending commands, the client-id
    /// history (order ids may be reused in a new session) and the previous
    /// session's own client_seqs. Cells, directories and open holds stay; the
    /// next [`Self::session_start_events`] announces them. Then call
    /// [`Self::begin_run`] with the new session's first client_seq.
    pub fn start_new_session(&mut self) {
        assert_eq!(self.in_flight(), 0, "a new session with events in flight");
        self.replica.last_seq = 0;
        self.replica.authority_online_seq = 0;
        self.replica.clear_pending();
        self.replica.clear_ids();
        self.deferring = false;
        self.deferred_cursor = 0;
        self.own_last_seen = 0;
        self.first_client_seq = 1;
        self.next_client_seq = 1;
    }

    /// Publishes the snapshot broadcast that opens a session: `L` for every
    /// location, `R` for every SKU, `I` for every known cell, `H` for each
    /// open hold, then `S(W)`, all at once into `out`, which must have room
    /// for all of them (a closure or a growable queue). A bounded sink — the
    /// warehouse application's, sized by the order-entry window — uses
    /// [`Self::begin_session_start`] and [`Self::session_start_step`]
    /// instead, which produce the same events lazily. Call it once per
    /// session, after catching up with what the session's stream already
    /// holds (an `S(W)` seen on it means an earlier run already broadcast:
    /// do not call it again), and after [`Self::begin_run`]. It changes
    /// neither the stream position nor the mode: commands that queued while
    /// catching up are still decided by [`Self::finish_catch_up`]. Returns
    /// the events published.
    pub fn session_start_events<S: EventSink>(&mut self, out: &mut S) -> usize {
        let mut broadcast = self.begin_session_start();
        while !self.session_start_step(&mut broadcast, out) {
            assert!(
                out.room() > 0,
                "session_start_events needs a sink with room for the whole broadcast; \
                 use session_start_step"
            );
        }
        broadcast.events as usize
    }

    /// Starts a session-start broadcast (see [`Self::session_start_events`])
    /// to be produced by [`Self::session_start_step`] as room appears. Open
    /// holds (carried over from an earlier session) are re-keyed here
    /// [`CARRIED_HOLD_BIT`] | 1, 2, … so their keys cannot meet a `V` of
    /// this session. Until the broadcast is done, decisions must stay
    /// deferred (they are after catch-up or a pause) so the state it walks
    /// does not change under it.
    pub fn begin_session_start(&mut self) -> SessionStart {
        // Re-key open holds in two passes (through a temporary namespace) so
        // a new key never meets an old carried key still in the table.
        const TEMPORARY: u64 = 1 << 62;
        for pass_bit in [TEMPORARY, 0] {
            let mut n = 0u64;
            for slot in 0..self.replica.holds.len() as u32 {
                if self.replica.holds[slot as usize].flags & HOLD_IN_USE == 0 {
                    continue;
                }
                n += 1;
                self.replica
                    .rekey_hold(slot, CARRIED_HOLD_BIT | pass_bit | n);
            }
        }
        SessionStart {
            phase: BroadcastPhase::Locations,
            next: 0,
            events: 0,
        }
    }

    /// Publishes the next events of the broadcast `at`, as many as
    /// `out.room()` allows, in order (`L`…, `R`…, `I`…, `H`…, `S(W)`).
    /// Returns true once `S(W)` is published: the broadcast is complete and
    /// commands may be decided after it. Bounded work: at most `out.room()`
    /// events, plus a scan over cells that need no event.
    pub fn session_start_step<S: EventSink>(&mut self, at: &mut SessionStart, out: &mut S) -> bool {
        while out.room() > 0 {
            match at.phase {
                BroadcastPhase::Locations => {
                    let l = at.next;
                    if l >= usize::from(self.replica.location_count) {
                        at.phase = BroadcastPhase::Skus;
                        at.next = 0;
                        continue;
                    }
                    let event = LocationDirectory::new(
                        self.replica.location_ids[l],
                        self.replica.location_names[l],
                    );
                    self.emit(event, Resolve::Nothing, out);
                }
                BroadcastPhase::Skus => {
                    let s = at.next;
                    if s >= self.replica.sku_count as usize {
                        at.phase = BroadcastPhase::Cells;
                        at.next = 0;
                        continue;
                    }
                    let event =
                        SkuDirectory::new(self.replica.sku_ids[s], self.replica.sku_symbols[s]);
                    self.emit(event, Resolve::Nothing, out);
                }
                BroadcastPhase::Cells => {
                    let slot = at.next;
                    if slot >= self.replica.cells.slot_end(self.replica.sku_count) {
                        at.phase = BroadcastPhase::Holds;
                        at.next = 0;
                        continue;
                    }
                    at.next += 1;
                    let cell = self.replica.cells[slot];
                    let (s, l) = self.replica.cells.key_of(slot);
                    if cell.version == 0 || l >= self.replica.location_count {
                        continue;
                    }
                    let event = InventoryLevel::new(
                        self.replica.location_ids[usize::from(l)],
                        self.replica.sku_ids[s as usize],
                        cell.on_hand,
                        cell.reserved,
                    );
                    self.emit(event, Resolve::Nothing, out);
                    at.events += 1;
                    continue;
                }
                BroadcastPhase::Holds => {
                    let slot = at.next;
                    if slot >= self.replica.holds.len() {
                        at.phase = BroadcastPhase::Online;
                        continue;
                    }
                    at.next += 1;
                    let hold = self.replica.holds[slot];
                    if hold.flags & HOLD_IN_USE == 0 {
                        continue;
                    }
                    let event = HoldPlaced::new(
                        hold.cmd_seq,
                        hold.location,
                        hold.sku,
                        hold.qty,
                        hold.expires_at_ns,
                    );
                    self.emit(event, Resolve::Nothing, out);
                    at.events += 1;
                    continue;
                }
                BroadcastPhase::Online => {
                    self.emit(
                        SystemEvent::new(system_code::AUTHORITY_ONLINE),
                        Resolve::Nothing,
                        out,
                    );
                    at.events += 1;
                    at.phase = BroadcastPhase::Done;
                    return true;
                }
                BroadcastPhase::Done => return true,
            }
            // Directory phases: one event per index.
            at.next += 1;
            at.events += 1;
        }
        at.phase == BroadcastPhase::Done
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

    /// Loads the initial inventory from CSV text: a header line
    /// `location,sku_symbol,quantity`, then one row per cell. Location ids
    /// 1..n and SKU ids 1..m are assigned in order of first appearance;
    /// blank lines and lines starting with `#` are skipped. Only into an
    /// empty warehouse; errors name the line and leave it empty.
    pub fn load_inventory(
        &mut self,
        reader: impl BufRead,
    ) -> Result<InventorySummary, InventoryError> {
        if self.replica.sku_count != 0 || self.replica.location_count != 0 {
            return Err(InventoryError {
                line: 0,
                kind: InventoryErrorKind::NotEmpty,
            });
        }
        let loaded = self.load_rows(reader);
        if loaded.is_err() {
            // Nothing half-loaded stays behind (the stream position and
            // pending commands are kept).
            self.replica.clear_inventory();
        }
        loaded
    }

    fn load_rows(&mut self, reader: impl BufRead) -> Result<InventorySummary, InventoryError> {
        let err = |line: usize, kind| InventoryError { line, kind };
        let mut rows = 0u32;
        let mut units = 0u64;
        let mut header_seen = false;
        // Location names → index (at most locations_max entries; a start-up
        // allocation, like the file's lines).
        let mut location_by_name: std::collections::HashMap<[u8; 16], u16> =
            std::collections::HashMap::new();
        for (i, line) in reader.lines().enumerate() {
            let number = i + 1;
            let line = line.map_err(|e| err(number, InventoryErrorKind::Io(e)))?;
            let text = line.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = text.split(',').map(str::trim).collect();
            if !header_seen {
                let expected = ["location", "sku_symbol", "quantity"];
                let matches = fields.len() == 3
                    && fields
                        .iter()
                        .zip(expected)
                        .all(|(f, e)| f.eq_ignore_ascii_case(e));
                if !matches {
                    return Err(err(number, InventoryErrorKind::BadHeader(text.to_owned())));
                }
                header_seen = true;
                continue;
            }
            if fields.len() != 3 {
                return Err(err(number, InventoryErrorKind::FieldCount(fields.len())));
            }
            let name = |column: &'static str, text: &str| {
                if text.is_empty() {
                    return Err(err(
                        number,
                        InventoryErrorKind::BadName {
                            column,
                            text: text.to_owned(),
                        },
                    ));
                }
                pad_ascii::<16>(text).map_err(|_| {
                    err(
                        number,
                        InventoryErrorKind::BadName {
                            column,
                            text: text.to_owned(),
                        },
                    )
                })
            };
            let location_name = name("location", fields[0])?;
            let symbol = name("sku_symbol", fields[1])?;
            let quantity: u32 = fields[2]
                .parse()
                .ok()
                .filter(|&q| q <= i32::MAX as u32)
                .ok_or_else(|| {
                    err(
                        number,
                        InventoryErrorKind::BadQuantity(fields[2].to_owned()),
                    )
                })?;

            let location_index = match location_by_name.get(&location_name) {
                Some(&l) => l,
                None => {
                    let id = self.replica.location_count + 1;
                    let l = self.replica.register_location(id).ok_or_else(|| {
                        err(
                            number,
                            InventoryErrorKind::TooManyLocations(self.replica.limits.locations_max),
                        )
                    })?;
                    self.replica.location_names[usize::from(l)] = location_name;
                    location_by_name.insert(location_name, l);
                    l
                }
            };
            let sku_index = match self.replica.sku_by_symbol(fields[1]) {
                Some(sku) => self.replica.sku_slot(sku).expect("in the directory"),
                None => {
                    let id = self.replica.sku_count + 1;
                    let s = self.replica.register_sku(id).ok_or_else(|| {
                        err(
                            number,
                            InventoryErrorKind::TooManySkus(self.replica.limits.skus_max),
                        )
                    })?;
                    self.replica.set_symbol(s, symbol);
                    s
                }
            };
            let cell = self
                .replica
                .cells
                .find_or_insert(sku_index, location_index)
                .ok_or_else(|| {
                    err(
                        number,
                        InventoryErrorKind::TooManyCells(self.replica.limits.cells_max),
                    )
                })?;
            // While loading, a cell's version holds the line that set it,
            // to name duplicates without a side table.
            let version = self.replica.cells[cell].version;
            if version != 0 {
                let first_line = (version & u64::from(u32::MAX)) as usize;
                return Err(err(
                    number,
                    InventoryErrorKind::DuplicateCell { first_line },
                ));
            }
            self.replica.cells[cell] = CellState {
                on_hand: quantity,
                reserved: 0,
                version: PROVISIONAL_VERSION_BIT | number as u64,
            };
            rows += 1;
            units += u64::from(quantity);
        }
        if !header_seen {
            return Err(err(0, InventoryErrorKind::Empty));
        }
        // Known, not yet on the stream: the broadcast's `I` stamps each.
        for slot in 0..self.replica.cells.slot_end(self.replica.sku_count) {
            if self.replica.cells[slot].version != 0 {
                self.replica.cells[slot].version = PROVISIONAL_VERSION_BIT;
            }
        }
        Ok(InventorySummary {
            locations: self.replica.location_count,
            skus: self.replica.sku_count,
            rows,
            units,
        })
    }

    /// [`Self::load_inventory`] from a file.
    pub fn load_inventory_file(&mut self, path: &Path) -> Result<InventorySummary, InventoryError> {
        let file = std::fs::File::open(path).map_err(|e| InventoryError {
            line: 0,
            kind: InventoryErrorKind::Io(e),
        })?;
        self.load_inventory(std::io::BufReader::new(file))
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
        let fits = self.replica.cells.has_room_for(sku_index, location_index);
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

    fn decide_order<S: EventSink>(&mut self, cmd_seq: u64, m: &Order, out: &mut S) -> usize {
        let origin = m.header.origin.get();
        let (location, sku, qty) = (m.location.get(), m.sku.get(), m.qty.get());
        if Self::bad_quantity(qty) {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        let Some(s) = self.replica.sku_slot(sku) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_SKU, out);
        };
        let chosen = if location == 0 {
            self.pick_location(s)
        } else {
            match self.replica.location_index(location) {
                Some(l) => Some(l),
                None => return self.reject(cmd_seq, reject_reason::UNKNOWN_LOCATION, out),
            }
        };
        if self
            .replica
            .id_slot(origin, id_kind::ORDER, m.order_id.get())
            .is_some()
        {
            return self.reject(cmd_seq, reject_reason::DUPLICATE_ID, out);
        }
        let Some(l) = chosen.filter(|&l| self.cell(l, s).available() >= qty) else {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        };
        let location = self.replica.location_ids[usize::from(l)];
        self.emit(
            OnHandDelta::new(location, sku, -(qty as i32), delta_reason::ORDER, cmd_seq),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }

    /// For location 0: the location with the most available of the SKU at
    /// `sku_index`, ties to the lowest location id.
    ///
    /// Only the SKU's existing cells are visited (a cell that does not exist
    /// has nothing available; when no cell has any, the order is rejected
    /// whichever location is named, so the choice does not matter).
    #[inline]
    fn pick_location(&self, sku_index: u32) -> Option<u16> {
        let mut best: Option<(u32, u16, u16)> = None; // (available, id, index)
        let location_ids = &self.replica.location_ids;
        self.replica
            .cells
            .for_each_of_sku(sku_index, self.replica.location_count, |l, cell| {
                let available = cell.available();
                let id = location_ids[usize::from(l)];
                let better = match best {
                    None => true,
                    Some((a, best_id, _)) => available > a || (available == a && id < best_id),
                };
                if better {
                    best = Some((available, id, l));
                }
            });
        best.map(|(_, _, l)| l)
    }

    fn decide_modify<S: EventSink>(&mut self, cmd_seq: u64, m: &ModifyOrder, out: &mut S) -> usize {
        let origin = m.header.origin.get();
        let new_qty = m.new_qty.get();
        let Some(i) = self
            .replica
            .id_slot(origin, id_kind::ORDER, m.order_id.get())
        else {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        };
        let order = self.replica.ids[i as usize];
        if order.remaining == 0 {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        }
        if Self::bad_quantity(new_qty) {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        let Some(c) = self.replica.cell_slot(order.location, order.sku) else {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        };
        let cell = self.replica.cells[c];
        // Both in 1..=i32::MAX, so the difference fits an i32.
        let delta = order.remaining as i32 - new_qty as i32;
        if delta < 0 && cell.available() < delta.unsigned_abs() {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        if delta > 0 && cell.on_hand.checked_add(delta as u32).is_none() {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        self.emit(
            OnHandDelta::new(
                order.location,
                order.sku,
                delta,
                delta_reason::MODIFY,
                cmd_seq,
            ),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }

    fn decide_cancel<S: EventSink>(&mut self, cmd_seq: u64, m: &CancelOrder, out: &mut S) -> usize {
        let origin = m.header.origin.get();
        let Some(i) = self
            .replica
            .id_slot(origin, id_kind::ORDER, m.order_id.get())
        else {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        };
        let order = self.replica.ids[i as usize];
        if order.remaining == 0 {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        }
        let Some(c) = self.replica.cell_slot(order.location, order.sku) else {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        };
        if self.replica.cells[c]
            .on_hand
            .checked_add(order.remaining)
            .is_none()
        {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        self.emit(
            OnHandDelta::new(
                order.location,
                order.sku,
                order.remaining as i32,
                delta_reason::CANCEL,
                cmd_seq,
            ),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }

    fn decide_reserve<S: EventSink>(&mut self, cmd_seq: u64, m: &Reserve, out: &mut S) -> usize {
        let origin = m.header.origin.get();
        let (location, sku, qty, ttl_ms) =
            (m.location.get(), m.sku.get(), m.qty.get(), m.ttl_ms.get());
        if Self::bad_quantity(qty) || ttl_ms == 0 {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        let Some(s) = self.replica.sku_slot(sku) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_SKU, out);
        };
        let Some(l) = self.replica.location_index(location) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_LOCATION, out);
        };
        if self
            .replica
            .id_slot(origin, id_kind::HOLD, m.hold_id.get())
            .is_some()
        {
            return self.reject(cmd_seq, reject_reason::DUPLICATE_ID, out);
        }
        if self.replica.holds_full() {
            self.counters.holds_full += 1;
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        if self.cell(l, s).available() < qty {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        let expires_at_ns = m
            .header
            .timestamp_ns
            .get()
            .saturating_add(u64::from(ttl_ms) * 1_000_000);
        self.emit(
            HoldPlaced::new(cmd_seq, location, sku, qty, expires_at_ns),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }

    fn decide_confirm<S: EventSink>(
        &mut self,
        cmd_seq: u64,
        m: &ConfirmHold,
        out: &mut S,
    ) -> usize {
        let origin = m.header.origin.get();
        let Some(slot) = self.replica.hold_slot_by_client(origin, m.hold_id.get()) else {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        };
        let hold = self.replica.holds[slot as usize];
        // An open hold's cell exists, unless the cell table was full when
        // its `H` came back from an earlier run (a limit met: the app stops).
        let Some(c) = self.replica.cell_slot(hold.location, hold.sku) else {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        };
        let cell = self.replica.cells[c];
        assert!(
            cell.reserved >= hold.qty && cell.on_hand >= hold.qty,
            "a hold's units are reserved and on hand"
        );
        self.emit(
            HoldEnded::new(
                hold.cmd_seq,
                hold.location,
                hold.sku,
                hold.qty,
                hold_outcome::CONFIRMED,
            ),
            Resolve::Nothing,
            out,
        );
        self.emit(
            OnHandDelta::new(
                hold.location,
                hold.sku,
                -(hold.qty as i32),
                delta_reason::HOLD_CONFIRMED,
                cmd_seq,
            ),
            Resolve::Command(cmd_seq),
            out,
        );
        2
    }

    fn decide_release<S: EventSink>(
        &mut self,
        cmd_seq: u64,
        m: &ReleaseHold,
        out: &mut S,
    ) -> usize {
        let origin = m.header.origin.get();
        let Some(slot) = self.replica.hold_slot_by_client(origin, m.hold_id.get()) else {
            return self.reject(cmd_seq, reject_reason::NO_SUCH, out);
        };
        let hold = self.replica.holds[slot as usize];
        self.emit(
            HoldEnded::new(
                hold.cmd_seq,
                hold.location,
                hold.sku,
                hold.qty,
                hold_outcome::RELEASED,
            ),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }

    fn decide_transfer<S: EventSink>(&mut self, cmd_seq: u64, m: &Transfer, out: &mut S) -> usize {
        let origin = m.header.origin.get();
        let (from, to, sku, qty) = (m.from.get(), m.to.get(), m.sku.get(), m.qty.get());
        if Self::bad_quantity(qty) || from == to {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        let Some(s) = self.replica.sku_slot(sku) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_SKU, out);
        };
        let (Some(lf), Some(lt)) = (
            self.replica.location_index(from),
            self.replica.location_index(to),
        ) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_LOCATION, out);
        };
        if self
            .replica
            .id_slot(origin, id_kind::TRANSFER, m.transfer_id.get())
            .is_some()
        {
            return self.reject(cmd_seq, reject_reason::DUPLICATE_ID, out);
        }
        if self.cell(lf, s).available() < qty {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        if self.cell(lt, s).on_hand.checked_add(qty).is_none() {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        if !self.cell_fits(lt, s) {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        // Source leg first: a replica between the two legs sees less stock,
        // never more.
        self.emit(
            OnHandDelta::new(from, sku, -(qty as i32), delta_reason::TRANSFER, cmd_seq),
            Resolve::Command(cmd_seq),
            out,
        );
        self.emit(
            OnHandDelta::new(to, sku, qty as i32, delta_reason::TRANSFER, cmd_seq),
            Resolve::Command(cmd_seq),
            out,
        );
        2
    }

    fn decide_recount<S: EventSink>(&mut self, cmd_seq: u64, m: &Recount, out: &mut S) -> usize {
        let (location, sku, on_hand, expected) = (
            m.location.get(),
            m.sku.get(),
            m.on_hand.get(),
            m.expected_version.get(),
        );
        let Some(s) = self.replica.sku_slot(sku) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_SKU, out);
        };
        let Some(l) = self.replica.location_index(location) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_LOCATION, out);
        };
        let cell = self.cell(l, s);
        // A provisional version (a decision still in flight) never matches:
        // the counter cannot have seen that change.
        if expected != 0 && expected != cell.version {
            return self.reject(cmd_seq, reject_reason::VERSION_CONFLICT, out);
        }
        if on_hand < cell.reserved || !self.cell_fits(l, s) {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        self.emit(
            InventoryLevel::new(location, sku, on_hand, cell.reserved),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }

    fn decide_adjust<S: EventSink>(&mut self, cmd_seq: u64, m: &Adjust, out: &mut S) -> usize {
        let (location, sku, delta, reason) =
            (m.location.get(), m.sku.get(), m.delta.get(), m.reason);
        let reason_ok = matches!(
            reason,
            delta_reason::ADJUST | delta_reason::RETURN | delta_reason::RECOUNT
        );
        if delta == 0 || delta == i32::MIN || !reason_ok {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        let Some(s) = self.replica.sku_slot(sku) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_SKU, out);
        };
        let Some(l) = self.replica.location_index(location) else {
            return self.reject(cmd_seq, reject_reason::UNKNOWN_LOCATION, out);
        };
        let cell = self.cell(l, s);
        if delta < 0 && cell.available() < delta.unsigned_abs() {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        if delta > 0 && cell.on_hand.checked_add(delta as u32).is_none() {
            return self.reject(cmd_seq, reject_reason::INVALID_QUANTITY, out);
        }
        if !self.cell_fits(l, s) {
            return self.reject(cmd_seq, reject_reason::INSUFFICIENT, out);
        }
        self.emit(
            OnHandDelta::new(location, sku, delta, reason, cmd_seq),
            Resolve::Command(cmd_seq),
            out,
        );
        1
    }
}
