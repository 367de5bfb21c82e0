//! The warehouse's decisions, one test per rule of DESIGN.md §3, run through
//! a simulated sequencer: commands and the warehouse's own events are
//! numbered into one stream, which the warehouse and an independent replica
//! both consume. Plus: restart from a snapshot mid-run, a seeded race of many
//! clients for scarce stock, inventory-file errors, and the no-allocation
//! check of the decision path.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell as StdCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use tally_runtime::rand::SplitMix64;

use tally_client::replica::{Cell, Replica, ReplicaLimits, CARRIED_HOLD_BIT};
use tally_client::snapshot::SnapshotError;
use tally_warehouse::decide::{
    CatchUp, CatchUpError, EventBuf, InventoryErrorKind, Warehouse, WarehouseConfig,
};
use tally_wire::{
    delta_reason, directory_kind, header_mut, hold_outcome, pad_ascii, reject_reason, system_code,
    Adjust, CancelOrder, CommandRejected, ConfirmHold, DirectoryAdd, HoldEnded, HoldPlaced,
    InventoryLevel, LocationDirectory, Message, ModifyOrder, OnHandDelta, Order, Recount,
    ReleaseHold, Reserve, SkuDirectory, SystemEvent, Transfer, WireMessage,
};

// ---------------------------------------------------------------------------
// A counting allocator for this test binary (per thread, so parallel tests
// do not disturb each other).

struct Counting;

thread_local! {
    static ALLOCATIONS: StdCell<u64> = const { StdCell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(|a| a.get())
}

// ---------------------------------------------------------------------------
// The simulated appliance.

/// The warehouse's client id.
const WH: u16 = 100;
/// A point of sale.
const POS: u16 = 7;
/// Another point of sale.
const POS2: u16 = 8;
/// Back office (transfers, recounts, adjustments).
const OPS: u16 = 20;
/// 2023-11-14, in ns.
const T0: u64 = 1_700_000_000_000_000_000;

/// Location ids 1..3 and SKU ids 1..3 in order of first appearance.
const INVENTORY: &str = "\
location,sku_symbol,quantity
STORE-A,MUG,10
STORE-B,MUG,10
STORE-C,MUG,5
STORE-A,TEE,3
STORE-B,HAT,0
";
const A: u16 = 1;
const B: u16 = 2;
const C: u16 = 3;
const MUG: u32 = 1;
const TEE: u32 = 2;
const HAT: u32 = 3;

fn config() -> WarehouseConfig {
    WarehouseConfig {
        own_origin: WH,
        limits: ReplicaLimits::small(),
    }
}

/// A sequencer, the warehouse and a replica on one thread.
struct Sim {
    wh: Warehouse,
    replica: Replica,
    /// The stream: seq = index + 1.
    stream: Vec<Vec<u8>>,
    /// Last client_seq sequenced per origin.
    client_seq: HashMap<u16, u32>,
    now_ns: u64,
    /// Stream messages the warehouse has consumed.
    fed: usize,
    /// Stream messages the replica has consumed.
    replica_fed: usize,
    /// Warehouse events not yet sequenced, in order.
    outbox: VecDeque<Vec<u8>>,
}

impl Sim {
    fn new() -> Self {
        Self::with_inventory(INVENTORY)
    }

    fn with_inventory(csv: &str) -> Self {
        let mut wh = Warehouse::new(config());
        wh.load_inventory(csv.as_bytes()).unwrap();
        wh.begin_run(1);
        let mut sim = Sim {
            wh,
            replica: Replica::new(ReplicaLimits::small()),
            stream: Vec::new(),
            client_seq: HashMap::new(),
            now_ns: T0,
            fed: 0,
            replica_fed: 0,
            outbox: VecDeque::new(),
        };
        let mut out = Vec::new();
        let n = sim
            .wh
            .session_start_events(&mut |e: &[u8]| out.push(e.to_vec()));
        assert_eq!(n, out.len());
        sim.outbox.extend(out);
        sim.settle();
        sim
    }

    /// Numbers one message into the stream: the gateway stamps origin (and
    /// checks client_seq), the sequencer the timestamp.
    fn sequence(&mut self, mut bytes: Vec<u8>, origin: u16) -> u64 {
        let last = self.client_seq.entry(origin).or_insert(0);
        *last += 1;
        let header = header_mut(&mut bytes).unwrap();
        if origin == WH {
            assert_eq!(
                header.client_seq.get(),
                *last,
                "the warehouse numbers its events"
            );
        } else {
            header.client_seq = (*last).into();
        }
        header.origin = origin.into();
        header.timestamp_ns = self.now_ns.into();
        self.stream.push(bytes);
        self.stream.len() as u64
    }

    /// The warehouse consumes the stream; its events wait in the outbox.
    fn feed_warehouse(&mut self) {
        while self.fed < self.stream.len() {
            let seq = self.fed as u64 + 1;
            let message = Message::parse(&self.stream[self.fed]).unwrap();
            let mut buf = EventBuf::new();
            let n = self.wh.on_stream(seq, &message, &mut buf);
            assert_eq!(n, buf.len());
            self.outbox.extend(buf.iter().map(<[u8]>::to_vec));
            self.fed += 1;
        }
    }

    fn feed_replica(&mut self) {
        while self.replica_fed < self.stream.len() {
            let seq = self.replica_fed as u64 + 1;
            let message = Message::parse(&self.stream[self.replica_fed]).unwrap();
            self.replica.apply(seq, &message);
            self.replica_fed += 1;
        }
    }

    /// Sequences up to `n` outbox events.
    fn flush(&mut self, n: usize) {
        for _ in 0..n {
            let Some(event) = self.outbox.pop_front() else {
                break;
            };
            self.sequence(event, WH);
        }
    }

    /// Runs until every event is sequenced and seen by both.
    fn settle(&mut self) {
        loop {
            self.feed_warehouse();
            if self.outbox.is_empty() {
                break;
            }
            self.flush(usize::MAX);
        }
        self.feed_replica();
    }

    /// Sends a command; returns its seq and the events sequenced after it.
    fn send<M: WireMessage>(&mut self, origin: u16, command: M) -> (u64, Vec<Vec<u8>>) {
        self.now_ns += 1_000_000;
        let seq = self.sequence(command.as_bytes().to_vec(), origin);
        self.settle();
        (seq, self.stream[seq as usize..].to_vec())
    }

    /// Expires holds at the simulated `now_ns`; returns the events.
    fn expire(&mut self) -> Vec<Vec<u8>> {
        let before = self.stream.len();
        let mut out = Vec::new();
        self.wh
            .expire(self.now_ns, &mut |e: &[u8]| out.push(e.to_vec()));
        self.outbox.extend(out);
        self.settle();
        self.stream[before..].to_vec()
    }

    /// The replica's cell, checked against the warehouse's.
    fn cell(&self, location: u16, sku: u32) -> Cell {
        let cell = self.replica.cell(location, sku).unwrap();
        assert_eq!(Some(cell), self.wh.replica().cell(location, sku));
        cell
    }

    fn assert_consistent(&self) {
        assert_eq!(self.wh.in_flight(), 0);
        assert_eq!(self.replica.last_seq(), self.wh.replica().last_seq());
        assert_eq!(self.replica.digest(), self.wh.digest(), "digests differ");
        assert_eq!(self.replica.oversold(), 0);
        assert_eq!(self.wh.replica().oversold(), 0);
    }
}

fn parse<M: WireMessage>(bytes: &[u8]) -> M {
    *M::parse(bytes).unwrap_or_else(|e| panic!("expected {}: {e}", M::TYPE as char))
}

/// The one event answering a command must be `J(reason)` for `cmd_seq`.
#[track_caller]
fn expect_reject(events: &[Vec<u8>], cmd_seq: u64, reason: u8) {
    assert_eq!(events.len(), 1, "{events:?}");
    let j: CommandRejected = parse(&events[0]);
    assert_eq!(j.cmd_seq.get(), cmd_seq);
    assert_eq!(
        j.reason as char, reason as char,
        "reject reason for {cmd_seq}"
    );
    assert_eq!(j.header.origin.get(), WH);
}

#[track_caller]
fn expect_delta(event: &[u8], location: u16, sku: u32, delta: i32, reason: u8, cmd_seq: u64) {
    let d: OnHandDelta = parse(event);
    assert_eq!(
        (
            d.location.get(),
            d.sku.get(),
            d.delta.get(),
            d.reason as char,
            d.cmd_seq.get()
        ),
        (location, sku, delta, reason as char, cmd_seq)
    );
}

// ---------------------------------------------------------------------------
// Session start.

#[test]
fn session_start_broadcasts_locations_skus_levels_holds_then_authority_online() {
    let mut sim = Sim::new();
    // L×3, R×3, I×5, S(W).
    let types: Vec<u8> = sim.stream.iter().map(|m| m[0]).collect();
    assert_eq!(types, b"LLLRRRIIIIIS".to_vec());
    assert_eq!(sim.replica.symbol(MUG), Some(&b"MUG"[..]));
    assert_eq!(sim.replica.location_name(C), Some(&b"STORE-C"[..]));
    assert_eq!(sim.replica.authority_online_seq(), 12);
    assert_eq!(sim.cell(A, MUG).on_hand, 10);
    assert_eq!(sim.cell(A, MUG).version, 7);
    sim.assert_consistent();

    // A new session carries an open hold over: re-keyed, not counted twice.
    let (v, _) = sim.send(POS, Reserve::new(1, A, MUG, 4, 60_000));
    assert_eq!(sim.cell(A, MUG).reserved, 4);
    sim.wh.start_new_session(); // the stream numbers from 1 again
    sim.wh.begin_run(1);
    let mut broadcast = Vec::new();
    sim.wh
        .session_start_events(&mut |e: &[u8]| broadcast.push(e.to_vec()));
    let mut fresh = Replica::new(ReplicaLimits::small());
    for (i, event) in broadcast.iter().enumerate() {
        fresh.apply(i as u64 + 1, &Message::parse(event).unwrap());
    }
    let h: HoldPlaced = parse(&broadcast[broadcast.len() - 2]);
    assert_eq!(h.cmd_seq.get(), CARRIED_HOLD_BIT | 1);
    assert_ne!(h.cmd_seq.get(), v);
    let cell = fresh.cell(A, MUG).unwrap();
    assert_eq!((cell.on_hand, cell.reserved, cell.available), (10, 4, 6));
    assert_eq!(fresh.oversold(), 0);
    assert_eq!(fresh.hold_count(), 1);
    // The carried hold can still be confirmed by its client.
    let hold = sim.wh.replica().hold_by_client(POS, 1).unwrap();
    assert_eq!(hold.cmd_seq, CARRIED_HOLD_BIT | 1);
}

#[test]
fn a_fresh_warehouse_decides_commands_that_queued_before_its_broadcast() {
    let mut sim = Sim::with_inventory(INVENTORY);
    // Start over: the same session, but the warehouse comes up late.
    sim.wh = Warehouse::new(config());
    sim.stream.clear();
    sim.client_seq.clear();
    sim.fed = 0;
    sim.replica = Replica::new(ReplicaLimits::small());
    sim.replica_fed = 0;
    sim.outbox.clear();
    sim.wh.pause_decisions();
    sim.wh.begin_run(1);
    sim.sequence(
        SystemEvent::new(system_code::START_OF_SESSION)
            .as_bytes()
            .to_vec(),
        0,
    );
    let o = sim.sequence(Order::new(1, A, MUG, 2).as_bytes().to_vec(), POS);
    sim.feed_warehouse();
    assert!(sim.outbox.is_empty());
    assert_eq!(sim.wh.replica().authority_online_seq(), 0);
    sim.wh.load_inventory(INVENTORY.as_bytes()).unwrap();
    let mut out = Vec::new();
    sim.wh
        .session_start_events(&mut |e: &[u8]| out.push(e.to_vec()));
    assert!(!sim.wh.is_live());
    let decided = sim
        .wh
        .finish_catch_up(&mut |e: &[u8]| out.push(e.to_vec()))
        .unwrap();
    assert_eq!(decided, CatchUp::Done { decided: 1 });
    sim.outbox.extend(out);
    sim.settle();
    let d: OnHandDelta = parse(sim.stream.last().unwrap());
    assert_eq!((d.cmd_seq.get(), d.delta.get()), (o, -2));
    assert_eq!(sim.cell(A, MUG).on_hand, 8);
    assert_eq!(sim.replica.pending_count(), 0);
    sim.assert_consistent();
}

// ---------------------------------------------------------------------------
// Orders.

#[test]
fn order_takes_stock_with_one_delta() {
    let mut sim = Sim::new();
    let (seq, events) = sim.send(POS, Order::new(1, A, MUG, 4));
    assert_eq!(events.len(), 1);
    expect_delta(&events[0], A, MUG, -4, delta_reason::ORDER, seq);
    let cell = sim.cell(A, MUG);
    assert_eq!((cell.on_hand, cell.available), (6, 6));
    assert_eq!(cell.version, seq + 1);
    let order = sim.replica.order(POS, 1).unwrap();
    assert_eq!((order.location, order.qty, order.remaining), (A, 4, 4));
    sim.assert_consistent();
}

#[test]
fn order_for_more_than_available_is_rejected_insufficient() {
    let mut sim = Sim::new();
    let (seq, events) = sim.send(POS, Order::new(1, C, MUG, 6));
    expect_reject(&events, seq, reject_reason::INSUFFICIENT);
    assert_eq!(sim.cell(C, MUG).on_hand, 5);
    // The id was not used: it may be retried.
    let (seq, events) = sim.send(POS, Order::new(1, C, MUG, 5));
    expect_delta(&events[0], C, MUG, -5, delta_reason::ORDER, seq);
    sim.assert_consistent();
}

#[test]
fn order_for_unknown_sku_is_rejected_u() {
    let mut sim = Sim::new();
    let (seq, events) = sim.send(POS, Order::new(1, A, 999, 1));
    expect_reject(&events, seq, reject_reason::UNKNOWN_SKU);
}

#[test]
fn order_at_unknown_location_is_rejected_l() {
    let mut sim = Sim::new();
    let (seq, events) = sim.send(POS, Order::new(1, 9, MUG, 1));
    expect_reject(&events, seq, reject_reason::UNKNOWN_LOCATION);
}

#[test]
fn order_for_zero_is_rejected_z() {
    let mut sim = Sim::new();
    let (seq, events) = sim.send(POS, Order::new(1, A, MUG, 0));
    expect_reject(&events, seq, reject_reason::INVALID_QUANTITY);
    let (seq, events) = sim.send(POS, Order::new(2, A, MUG, u32::MAX));
    expect_reject(&events, seq, reject_reason::INVALID_QUANTITY);
}

#[test]
fn order_id_reused_by_the_same_origin_is_rejected_d() {
    let mut sim = Sim::new();
    sim.send(POS, Order::new(42, A, MUG, 1));
    let (seq, events) = sim.send(POS, Order::new(42, B, MUG, 1));
    expect_reject(&events, seq, reject_reason::DUPLICATE_ID);
    // Still a duplicate after the order is cancelled.
    sim.send(POS, CancelOrder::new(42));
    let (seq, events) = sim.send(POS, Order::new(42, B, MUG, 1));
    expect_reject(&events, seq, reject_reason::DUPLICATE_ID);
    // Another origin may use the same id.
    let (seq, events) = sim.send(POS2, Order::new(42, B, MUG, 1));
    expect_delta(&events[0], B, MUG, -1, delta_reason::ORDER, seq);
    sim.assert_consistent();
}

#[test]
fn location_zero_takes_from_the_location_with_most_available_ties_to_lowest_id() {
    let mut sim = Sim::new();
    // A and B both have 10: the tie goes to A (id 1).
    let (seq, events) = sim.send(POS, Order::new(1, 0, MUG, 4));
    expect_delta(&events[0], A, MUG, -4, delta_reason::ORDER, seq);
    assert_eq!(sim.replica.order(POS, 1).unwrap().location, A);
    // Now B has the most (10 vs 6 vs 5).
    let (seq, events) = sim.send(POS, Order::new(2, 0, MUG, 1));
    expect_delta(&events[0], B, MUG, -1, delta_reason::ORDER, seq);
    // A hold counts: reserve 5 at B, leaving B 4 available, A 6: A wins.
    sim.send(POS, Reserve::new(1, B, MUG, 5, 60_000));
    let (seq, events) = sim.send(POS, Order::new(3, 0, MUG, 6));
    expect_delta(&events[0], A, MUG, -6, delta_reason::ORDER, seq);
    // No single location has 6 (0, 4, 5), though 9 exist in all: rejected.
    let (seq, events) = sim.send(POS, Order::new(4, 0, MUG, 6));
    expect_reject(&events, seq, reject_reason::INSUFFICIENT);
    // Nothing anywhere.
    let (seq, events) = sim.send(POS, Order::new(5, 0, HAT, 1));
    expect_reject(&events, seq, reject_reason::INSUFFICIENT);
    sim.assert_consistent();
}

// ---------------------------------------------------------------------------
// Modify and cancel.

#[test]
fn modify_down_returns_stock() {
    let mut sim = Sim::new();
    sim.send(POS, Order::new(1, A, MUG, 6));
    let (seq, events) = sim.send(POS, ModifyOrder::new(1, 2));
    expect_delta(&events[0], A, MUG, 4, delta_reason::MODIFY, seq);
    assert_eq!(sim.cell(A, MUG).on_hand, 8);
    let order = sim.replica.order(POS, 1).unwrap();
    assert_eq!((order.remaining, order.last_cmd_seq), (2, seq));
    sim.assert_consistent();
}

#[test]
fn modify_up_takes_more_when_available() {
    let mut sim = Sim::new();
    sim.send(POS, Order::new(1, A, MUG, 2));
    let (seq, events) = sim.send(POS, ModifyOrder::new(1, 9));
    expect_delta(&events[0], A, MUG, -7, delta_reason::MODIFY, seq);
    assert_eq!(sim.cell(A, MUG).on_hand, 1);
    assert_eq!(sim.replica.order(POS, 1).unwrap().remaining, 9);
    // Same quantity: accepted, nothing moves.
    let (seq, events) = sim.send(POS, ModifyOrder::new(1, 9));
    expect_delta(&events[0], A, MUG, 0, delta_reason::MODIFY, seq);
    sim.assert_consistent();
}

#[test]
fn modify_up_beyond_available_is_rejected_insufficient() {
    let mut sim = Sim::new();
    sim.send(POS, Order::new(1, A, MUG, 2));
    let (seq, events) = sim.send(POS, ModifyOrder::new(1, 13));
    expect_reject(&events, seq, reject_reason::INSUFFICIENT);
    assert_eq!(sim.replica.order(POS, 1).unwrap().remaining, 2);
    assert_eq!(sim.cell(A, MUG).on_hand, 8);
}

#[test]
fn modify_of_no_such_order_is_rejected_n() {
    let mut sim = Sim::new();
    let (seq, events) = sim.send(POS, ModifyOrder::new(77, 1));
    expect_reject(&events, seq, reject_reason::NO_SUCH);
    // Another origin's order is not ours to modify.
    sim.send(POS2, Order::new(77, A, MUG, 1));
    let (seq, events) = sim.send(POS, ModifyOrder::new(77, 2));
    expect_reject(&events, seq, reject_reason::NO_SUCH);
    // A cancelled order cannot be modified.
    sim.send(POS2, CancelOrder::new(77));
    let (seq, events) = sim.send(POS2, ModifyOrder::new(77, 2));
    expect_reject(&events, seq, reject_reason::NO_SUCH);
    // Zero is not a quantity (cancel instead).
    sim.send(POS, Order::new(78, A, MUG, 1));
    let (seq, events) = sim.send(POS, ModifyOrder::new(78, 0));
    expect_reject(&events, seq, reject_reason::INVALID_QUANTITY);
    sim.assert_consistent();
}

#[test]
fn cancel_returns_the_remaining_quantity_once() {
    let mut sim = Sim::new();
    sim.send(POS, Order::new(1, B, MUG, 5));
    sim.send(POS, ModifyOrder::new(1, 3));
    let (seq, events) = sim.send(POS, CancelOrder::new(1));
    expect_delta(&events[0], B, MUG, 3, delta_reason::CANCEL, seq);
    assert_eq!(sim.cell(B, MUG).on_hand, 10);
    assert_eq!(sim.replica.order(POS, 1).unwrap().remaining, 0);
    let (seq, events) = sim.send(POS, CancelOrder::new(1));
    expect_reject(&events, seq, reject_reason::NO_SUCH);
    let (seq, events) = sim.send(POS, CancelOrder::new(2));
    expect_reject(&events, seq, reject_reason::NO_SUCH);
    sim.assert_consistent();
}

// ---------------------------------------------------------------------------
// Holds.

#[test]
fn reserve_places_a_hold_that_reduces_available() {
    let mut sim = Sim::new();
    let (seq, events) = sim.send(POS, Reserve::new(5, A, MUG, 7, 30_000));
    assert_eq!(events.len(), 1);
    let h: HoldPlaced = parse(&events[0]);
    let command_time = sim.now_ns;
    assert_eq!(
        (h.cmd_seq.get(), h.location.get(), h.sku.get(), h.qty.get()),
        (seq, A, MUG, 7)
    );
    assert_eq!(h.expires_at_ns.get(), command_time + 30_000 * 1_000_000);
    let cell = sim.cell(A, MUG);
    assert_eq!((cell.on_hand, cell.reserved, cell.available), (10, 7, 3));
    let hold = sim.replica.hold(seq).unwrap();
    assert_eq!(hold.client, Some((POS, 5)));
    // Held units cannot be ordered.
    let (seq, events) = sim.send(POS2, Order::new(1, A, MUG, 4));
    expect_reject(&events, seq, reject_reason::INSUFFICIENT);
    sim.assert_consistent();
}

#[test]
fn reserve_rejections_insufficient_zero_unknown_duplicate() {
    let mut sim = Sim::new();
    let (seq, events) = sim.send(POS, Reserve::new(1, A, TEE, 4, 1000));
    expect_reject(&events, seq, reject_reason::INSUFFICIENT);
    let (seq, events) = sim.send(POS, Reserve::new(1, A, TEE, 0, 1000));
    expect_reject(&events, seq, reject_reason::INVALID_QUANTITY);
    let (seq, events) = sim.send(POS, Reserve::new(1, A, TEE, 1, 0));
    expect_reject(&events, seq, reject_reason::INVALID_QUANTITY);
    let (seq, events) = sim.send(POS, Reserve::new(1, A, 404, 1, 1000));
    expect_reject(&events, seq, reject_reason::UNKNOWN_SKU);
    let (seq, events) = sim.send(POS, Reserve::new(1, 0, TEE, 1, 1000));
    expect_reject(&events, seq, reject_reason::UNKNOWN_LOCATION);
    sim.send(POS, Reserve::new(1, A, TEE, 1, 1000));
    let (seq, events) = sim.send(POS, Reserve::new(1, A, TEE, 1, 1000));
    expect_reject(&events, seq, reject_reason::DUPLICATE_ID);
    // Still used after release.
    sim.send(POS, ReleaseHold::new(1));
    let (seq, events) = sim.send(POS, Reserve::new(1, A, TEE, 1, 1000));
    expect_reject(&events, seq, reject_reason::DUPLICATE_ID);
    sim.assert_consistent();
}

#[test]
fn confirm_ends_the_hold_then_takes_the_stock() {
    let mut sim = Sim::new();
    let (v, _) = sim.send(POS, Reserve::new(5, A, MUG, 3, 30_000));
    let (seq, events) = sim.send(POS, ConfirmHold::new(5));
    assert_eq!(events.len(), 2);
    let e: HoldEnded = parse(&events[0]);
    assert_eq!(
        (
            e.cmd_seq.get(),
            e.location.get(),
            e.sku.get(),
            e.qty.get(),
            e.outcome
        ),
        (v, A, MUG, 3, hold_outcome::CONFIRMED)
    );
    expect_delta(&events[1], A, MUG, -3, delta_reason::HOLD_CONFIRMED, seq);
    let cell = sim.cell(A, MUG);
    assert_eq!((cell.on_hand, cell.reserved, cell.available), (7, 0, 7));
    assert_eq!(sim.replica.hold(v), None);
    let (seq, events) = sim.send(POS, ConfirmHold::new(5));
    expect_reject(&events, seq, reject_reason::NO_SUCH);
    let (seq, events) = sim.send(POS2, ConfirmHold::new(99));
    expect_reject(&events, seq, reject_reason::NO_SUCH);
    sim.assert_consistent();
}

#[test]
fn release_ends_the_hold_and_frees_the_units() {
    let mut sim = Sim::new();
    let (v, _) = sim.send(POS, Reserve::new(5, B, MUG, 6, 30_000));
    // Another origin cannot release it.
    let (seq, events) = sim.send(POS2, ReleaseHold::new(5));
    expect_reject(&events, seq, reject_reason::NO_SUCH);
    let (k, events) = sim.send(POS, ReleaseHold::new(5));
    assert_eq!(events.len(), 1);
    let e: HoldEnded = parse(&events[0]);
    assert_eq!((e.cmd_seq.get(), e.outcome), (v, hold_outcome::RELEASED));
    let cell = sim.cell(B, MUG);
    assert_eq!((cell.on_hand, cell.reserved, cell.available), (10, 0, 10));
    // The replica matched the E(R) to the K.
    assert!(!sim.replica.is_pending(k));
    assert_eq!(sim.replica.pending_count(), 0);
    let (seq, events) = sim.send(POS, ReleaseHold::new(5));
    expect_reject(&events, seq, reject_reason::NO_SUCH);
    sim.assert_consistent();
}

#[test]
fn holds_expire_at_their_ttl_on_the_simulated_clock() {
    let mut sim = Sim::new();
    let (v1, _) = sim.send(POS, Reserve::new(1, A, MUG, 2, 10)); // 10 ms
    let (v2, _) = sim.send(POS, Reserve::new(2, A, MUG, 3, 50)); // 50 ms
    let placed = sim.now_ns;
    assert_eq!(sim.cell(A, MUG).reserved, 5);
    // Before either expiry: nothing.
    sim.now_ns = placed + 5_000_000;
    assert!(sim.expire().is_empty());
    // Past the first: E(X) for it only.
    sim.now_ns = placed + 9_000_000;
    let events = sim.expire();
    assert_eq!(events.len(), 1);
    let e: HoldEnded = parse(&events[0]);
    assert_eq!((e.cmd_seq.get(), e.outcome), (v1, hold_outcome::EXPIRED));
    assert_eq!(sim.cell(A, MUG).reserved, 3);
    // An expired hold cannot be confirmed.
    let (seq, events) = sim.send(POS, ConfirmHold::new(1));
    expect_reject(&events, seq, reject_reason::NO_SUCH);
    // A bounded sink takes one at a time.
    sim.now_ns = placed + 60_000_000;
    let mut one = EventBuf::new();
    one.publish_filler(3);
    assert_eq!(sim.wh.expire(sim.now_ns, &mut one), 1);
    let e: HoldEnded = parse(one.get(3).unwrap());
    assert_eq!(e.cmd_seq.get(), v2);
    sim.outbox.push_back(one.get(3).unwrap().to_vec());
    sim.settle();
    assert_eq!(sim.cell(A, MUG).reserved, 0);
    assert!(sim.expire().is_empty());
    sim.assert_consistent();
}

/// Fills an `EventBuf` partly, to test a sink with little room.
trait Filler {
    fn publish_filler(&mut self, n: usize);
}

impl Filler for EventBuf {
    fn publish_filler(&mut self, n: usize) {
        use tally_warehouse::decide::EventSink;
        for _ in 0..n {
            self.publish(tally_wire::SystemEvent::new(b'?').as_bytes());
        }
    }
}

// ---------------------------------------------------------------------------
// Transfers.

#[test]
fn transfer_moves_stock_with_two_deltas_in_one_step() {
    let mut sim = Sim::new();
    let (seq, events) = sim.send(OPS, Transfer::new(1, A, C, MUG, 4));
    assert_eq!(events.len(), 2);
    expect_delta(&events[0], A, MUG, -4, delta_reason::TRANSFER, seq);
    expect_delta(&events[1], C, MUG, 4, delta_reason::TRANSFER, seq);
    assert_eq!(sim.cell(A, MUG).on_hand, 6);
    assert_eq!(sim.cell(C, MUG).on_hand, 9);
    // To a location that never held the SKU.
    let (seq, events) = sim.send(OPS, Transfer::new(2, A, B, TEE, 3));
    expect_delta(&events[1], B, TEE, 3, delta_reason::TRANSFER, seq);
    assert_eq!(sim.cell(A, TEE).on_hand, 0);
    assert_eq!(sim.cell(B, TEE).on_hand, 3);
    sim.assert_consistent();
}

#[test]
fn transfer_is_all_or_nothing() {
    let mut sim = Sim::new();
    sim.send(POS, Reserve::new(1, C, MUG, 2, 60_000));
    let digest = sim.wh.digest();
    // Insufficient at the source (5 on hand, 2 held): neither leg.
    let (seq, events) = sim.send(OPS, Transfer::new(1, C, A, MUG, 4));
    expect_reject(&events, seq, reject_reason::INSUFFICIENT);
    let (seq, events) = sim.send(OPS, Transfer::new(2, C, 9, MUG, 1));
    expect_reject(&events, seq, reject_reason::UNKNOWN_LOCATION);
    let (seq, events) = sim.send(OPS, Transfer::new(3, C, C, MUG, 1));
    expect_reject(&events, seq, reject_reason::INVALID_QUANTITY);
    let (seq, events) = sim.send(OPS, Transfer::new(4, C, A, 404, 1));
    expect_reject(&events, seq, reject_reason::UNKNOWN_SKU);
    let (seq, events) = sim.send(OPS, Transfer::new(5, C, A, MUG, 0));
    expect_reject(&events, seq, reject_reason::INVALID_QUANTITY);
    // Rejections leave every cell as it was (versions included).
    assert_eq!(sim.wh.digest(), digest);
    sim.send(OPS, Transfer::new(6, C, A, MUG, 3));
    let (seq, events) = sim.send(OPS, Transfer::new(6, A, C, MUG, 1));
    expect_reject(&events, seq, reject_reason::DUPLICATE_ID);
    sim.assert_consistent();
}

// ---------------------------------------------------------------------------
// Recounts.

#[test]
fn recount_unconditional_sets_on_hand() {
    let mut sim = Sim::new();
    sim.send(POS, Reserve::new(1, A, MUG, 2, 60_000));
    let (seq, events) = sim.send(OPS, Recount::new(A, MUG, 8, 0));
    assert_eq!(events.len(), 1);
    let i: InventoryLevel = parse(&events[0]);
    assert_eq!(
        (
            i.location.get(),
            i.sku.get(),
            i.on_hand.get(),
            i.reserved.get()
        ),
        (A, MUG, 8, 2)
    );
    let cell = sim.cell(A, MUG);
    assert_eq!((cell.on_hand, cell.reserved, cell.version), (8, 2, seq + 1));
    assert!(!sim.replica.is_pending(seq));
    sim.assert_consistent();
}

#[test]
fn recount_with_the_current_version_is_accepted() {
    let mut sim = Sim::new();
    sim.send(POS, Order::new(1, B, MUG, 1));
    let version = sim.cell(B, MUG).version;
    let (_, events) = sim.send(OPS, Recount::new(B, MUG, 12, version));
    let i: InventoryLevel = parse(&events[0]);
    assert_eq!(i.on_hand.get(), 12);
    assert_eq!(sim.cell(B, MUG).on_hand, 12);
    sim.assert_consistent();
}

#[test]
fn recount_with_a_stale_version_is_rejected_v() {
    let mut sim = Sim::new();
    let stale = sim.cell(B, MUG).version;
    sim.send(POS, Order::new(1, B, MUG, 1));
    let (seq, events) = sim.send(OPS, Recount::new(B, MUG, 12, stale));
    expect_reject(&events, seq, reject_reason::VERSION_CONFLICT);
    assert_eq!(sim.cell(B, MUG).on_hand, 9);
    // Below what is held: insufficient.
    sim.send(POS, Reserve::new(1, B, MUG, 5, 60_000));
    let (seq, events) = sim.send(OPS, Recount::new(B, MUG, 4, 0));
    expect_reject(&events, seq, reject_reason::INSUFFICIENT);
    let (seq, events) = sim.send(OPS, Recount::new(B, 404, 4, 0));
    expect_reject(&events, seq, reject_reason::UNKNOWN_SKU);
    let (seq, events) = sim.send(OPS, Recount::new(9, MUG, 4, 0));
    expect_reject(&events, seq, reject_reason::UNKNOWN_LOCATION);
    sim.assert_consistent();
}

#[test]
fn recount_conflicts_while_a_change_to_the_cell_is_still_in_flight() {
    let mut sim = Sim::new();
    let version = sim.cell(A, MUG).version;
    // The order is decided, but its D has not reached the stream yet.
    sim.now_ns += 1_000_000;
    sim.sequence(Order::new(1, A, MUG, 1).as_bytes().to_vec(), POS);
    sim.feed_warehouse();
    assert_eq!(sim.wh.in_flight(), 1);
    // A counter who saw `version` does not know about it.
    let q = sim.sequence(Recount::new(A, MUG, 10, version).as_bytes().to_vec(), OPS);
    sim.feed_warehouse();
    sim.settle();
    let j: CommandRejected = parse(sim.stream.last().unwrap());
    assert_eq!(
        (j.cmd_seq.get(), j.reason),
        (q, reject_reason::VERSION_CONFLICT)
    );
    sim.assert_consistent();
}

// ---------------------------------------------------------------------------
// Adjustments.

#[test]
fn adjust_restocks_returns_and_shrinks_but_never_below_zero() {
    let mut sim = Sim::new();
    let (seq, events) = sim.send(OPS, Adjust::new(B, HAT, 12, delta_reason::ADJUST));
    expect_delta(&events[0], B, HAT, 12, delta_reason::ADJUST, seq);
    let (seq, events) = sim.send(OPS, Adjust::new(B, HAT, 1, delta_reason::RETURN));
    expect_delta(&events[0], B, HAT, 1, delta_reason::RETURN, seq);
    let (seq, events) = sim.send(OPS, Adjust::new(B, HAT, -3, delta_reason::ADJUST));
    expect_delta(&events[0], B, HAT, -3, delta_reason::ADJUST, seq);
    assert_eq!(sim.cell(B, HAT).on_hand, 10);
    // Shrink below zero: rejected.
    let (seq, events) = sim.send(OPS, Adjust::new(B, HAT, -11, delta_reason::ADJUST));
    expect_reject(&events, seq, reject_reason::INSUFFICIENT);
    // Shrink into held units: rejected too (on_hand may not drop below reserved).
    sim.send(POS, Reserve::new(1, B, HAT, 8, 60_000));
    let (seq, events) = sim.send(OPS, Adjust::new(B, HAT, -3, delta_reason::ADJUST));
    expect_reject(&events, seq, reject_reason::INSUFFICIENT);
    let (seq, events) = sim.send(OPS, Adjust::new(B, HAT, 0, delta_reason::ADJUST));
    expect_reject(&events, seq, reject_reason::INVALID_QUANTITY);
    let (seq, events) = sim.send(OPS, Adjust::new(B, HAT, 1, delta_reason::ORDER));
    expect_reject(&events, seq, reject_reason::INVALID_QUANTITY);
    let (seq, events) = sim.send(OPS, Adjust::new(B, 404, 1, delta_reason::ADJUST));
    expect_reject(&events, seq, reject_reason::UNKNOWN_SKU);
    let (seq, events) = sim.send(OPS, Adjust::new(0, HAT, 1, delta_reason::ADJUST));
    expect_reject(&events, seq, reject_reason::UNKNOWN_LOCATION);
    assert_eq!(sim.cell(B, HAT).on_hand, 10);
    sim.assert_consistent();
}

#[test]
fn a_sku_and_a_location_added_while_trading_can_be_stocked_and_ordered_at_once() {
    let mut sim = Sim::new();
    let name = |text: &str| pad_ascii::<16>(text).unwrap();
    // A new SKU, id chosen by the warehouse: the lowest above every id in use.
    let (seq, events) = sim.send(
        OPS,
        DirectoryAdd::new(directory_kind::SKU, 0, name("SCARF")),
    );
    assert_eq!(events.len(), 1, "one outcome");
    let r: SkuDirectory = parse(&events[0]);
    assert_eq!((r.sku.get(), r.symbol), (4, name("SCARF")));
    assert_eq!(sim.replica.sku_by_symbol("SCARF"), Some(4));
    assert_eq!(
        sim.replica.oldest_unresolved(),
        None,
        "the R answered the N at {seq}"
    );
    // Stocked and sold at once.
    sim.send(OPS, Adjust::new(A, 4, 5, delta_reason::ADJUST));
    let (seq, events) = sim.send(POS, Order::new(1, A, 4, 2));
    expect_delta(&events[0], A, 4, -2, delta_reason::ORDER, seq);
    // A new location with the id asked for.
    let (_, events) = sim.send(
        OPS,
        DirectoryAdd::new(directory_kind::LOCATION, 9, name("KIOSK")),
    );
    let l: LocationDirectory = parse(&events[0]);
    assert_eq!((l.location.get(), l.name), (9, name("KIOSK")));
    let (seq, events) = sim.send(OPS, Transfer::new(1, A, 9, 4, 1));
    expect_delta(&events[0], A, 4, -1, delta_reason::TRANSFER, seq);
    assert_eq!(sim.cell(9, 4).on_hand, 1);
    // Refusals: a name or id already there, a blank name, an unknown kind,
    // a location id over 16 bits.
    for (command, reason) in [
        (
            DirectoryAdd::new(directory_kind::SKU, 0, name("MUG")),
            reject_reason::DUPLICATE_ID,
        ),
        (
            DirectoryAdd::new(directory_kind::SKU, 4, name("BAG")),
            reject_reason::DUPLICATE_ID,
        ),
        (
            DirectoryAdd::new(directory_kind::LOCATION, 0, name("KIOSK")),
            reject_reason::DUPLICATE_ID,
        ),
        (
            DirectoryAdd::new(directory_kind::SKU, 0, name("")),
            reject_reason::INVALID_QUANTITY,
        ),
        (
            DirectoryAdd::new(b'X', 0, name("BAG")),
            reject_reason::INVALID_QUANTITY,
        ),
        (
            DirectoryAdd::new(directory_kind::LOCATION, 70_000, name("FAR")),
            reject_reason::INVALID_QUANTITY,
        ),
    ] {
        let (seq, events) = sim.send(OPS, command);
        expect_reject(&events, seq, reason);
    }
    assert_eq!(
        sim.replica.oldest_unresolved(),
        None,
        "every N answered once"
    );
    sim.assert_consistent();
}

// ---------------------------------------------------------------------------
// Own events, catch-up, snapshots.

#[test]
fn own_events_of_this_run_are_not_applied_twice() {
    let mut sim = Sim::new();
    // Two back-to-back orders decided before either D is sequenced: the
    // second sees the first.
    sim.sequence(Order::new(1, C, MUG, 3).as_bytes().to_vec(), POS);
    sim.sequence(Order::new(2, C, MUG, 3).as_bytes().to_vec(), POS2);
    sim.feed_warehouse();
    assert_eq!(sim.outbox.len(), 2);
    let second: CommandRejected = parse(&sim.outbox[1]);
    assert_eq!(second.reason, reject_reason::INSUFFICIENT);
    assert_eq!(sim.wh.in_flight(), 2);
    let cell = sim.wh.replica().cell(C, MUG).unwrap();
    assert_eq!(cell.on_hand, 2);
    sim.settle();
    assert_eq!(sim.wh.replica().cell(C, MUG).unwrap().on_hand, 2);
    sim.assert_consistent();
}

#[test]
fn an_own_event_refused_by_the_gateway_is_counted() {
    let mut sim = Sim::new();
    sim.sequence(Order::new(1, A, MUG, 1).as_bytes().to_vec(), POS);
    sim.feed_warehouse();
    let d = sim.outbox.pop_front().unwrap();
    let client_seq = parse::<OnHandDelta>(&d).header.client_seq.get();
    // The gateway records a `j` in its place (say, rate limited).
    let j = tally_wire::GatewayReject::new(reject_reason::RATE_LIMITED).with_client_seq(client_seq);
    sim.sequence(j.as_bytes().to_vec(), WH);
    sim.settle();
    assert_eq!(sim.wh.counters().own_events_rejected, 1);
    assert_eq!(sim.wh.in_flight(), 0);
    // The warehouse is ahead of the stream: the digests say so.
    assert_ne!(sim.wh.digest(), sim.replica.digest());
}

#[test]
fn snapshot_is_refused_while_events_are_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wh.snap");
    let mut sim = Sim::new();
    sim.sequence(Order::new(1, A, MUG, 1).as_bytes().to_vec(), POS);
    sim.feed_warehouse();
    match sim.wh.save_snapshot(&path, b"SESSION001") {
        Err(SnapshotError::NotQuiescent { in_flight: 1 }) => {}
        other => panic!("expected NotQuiescent, got {other:?}"),
    }
    sim.settle();
    sim.wh.save_snapshot(&path, b"SESSION001").unwrap();
}

#[test]
fn pausing_reaches_a_quiet_moment_then_decides_what_queued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wh.snap");
    let mut sim = Sim::new();
    sim.sequence(Order::new(1, A, MUG, 1).as_bytes().to_vec(), POS);
    sim.feed_warehouse();
    sim.wh.pause_decisions();
    // Commands keep coming while paused; the in-flight D comes back.
    sim.sequence(Order::new(2, A, MUG, 2).as_bytes().to_vec(), POS);
    sim.sequence(ReleaseHold::new(3).as_bytes().to_vec(), POS);
    sim.flush(1);
    sim.feed_warehouse();
    assert!(sim.outbox.is_empty());
    assert_eq!(sim.wh.in_flight(), 0);
    sim.wh.save_snapshot(&path, b"SESSION001").unwrap();
    let mut out = Vec::new();
    let done = sim
        .wh
        .finish_catch_up(&mut |e: &[u8]| out.push(e.to_vec()))
        .unwrap();
    assert_eq!(done, CatchUp::Done { decided: 2 });
    sim.outbox.extend(out);
    sim.settle();
    assert!(sim.wh.is_live());
    assert_eq!(sim.cell(A, MUG).on_hand, 7);
    sim.assert_consistent();

    // The snapshot kept the two queued commands as pending: a warehouse
    // restored from it and fed the stream after it decides neither again.
    let (mut restored, info) = Warehouse::restore(&path, config()).unwrap();
    restored.begin_run(sim.client_seq[&WH] + 1);
    assert_eq!(restored.replica().pending_count(), 2);
    for seq in info.seq + 1..=sim.stream.len() as u64 {
        let mut buf = EventBuf::new();
        let message = Message::parse(&sim.stream[seq as usize - 1]).unwrap();
        assert_eq!(restored.on_stream(seq, &message, &mut buf), 0);
    }
    let mut out = Vec::new();
    let done = restored
        .finish_catch_up(&mut |e: &[u8]| out.push(e.to_vec()))
        .unwrap();
    assert_eq!(done, CatchUp::Done { decided: 0 });
    assert_eq!(restored.digest(), sim.replica.digest());
}

#[test]
fn catch_up_waits_for_the_previous_runs_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wh.snap");
    let mut sim = Sim::new();
    sim.wh.save_snapshot(&path, b"SESSION001").unwrap();
    // After the snapshot the warehouse decides an order; its D is
    // sequenced but the restarted warehouse has not read that far yet.
    sim.send(POS, Order::new(1, A, MUG, 1));
    let (mut restored, info) = Warehouse::restore(&path, config()).unwrap();
    let last_wh = sim.client_seq[&WH];
    restored.begin_run(last_wh + 1);
    let seq = info.seq + 1; // the order
    let mut buf = EventBuf::new();
    restored.on_stream(
        seq,
        &Message::parse(&sim.stream[seq as usize - 1]).unwrap(),
        &mut buf,
    );
    assert!(buf.is_empty());
    assert_eq!(
        restored.finish_catch_up(&mut buf),
        Err(CatchUpError::AwaitingOwnEvents {
            seen: last_wh - 1,
            expected: last_wh
        })
    );
    // Its D arrives: applied (an earlier run's event), the order answered.
    restored.on_stream(
        seq + 1,
        &Message::parse(&sim.stream[seq as usize]).unwrap(),
        &mut buf,
    );
    assert_eq!(
        restored.finish_catch_up(&mut buf),
        Ok(CatchUp::Done { decided: 0 })
    );
    assert!(buf.is_empty());
    assert_eq!(restored.digest(), sim.replica.digest());
}

// ---------------------------------------------------------------------------
// Restart mid-run.

/// The runtime's deterministic generator, with a percentage draw.
struct Rng(SplitMix64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One scripted command: its origin and bytes (header unstamped).
type Script = Vec<(u16, Vec<u8>)>;

/// Random commands from `origins` over `skus` SKUs at locations 1..=3, with
/// ids reused often enough to exercise modify/cancel/confirm/release and
/// duplicates. Recounts are unconditional, so decisions do not depend on
/// where events land on the stream.
fn script(seed: u64, n: usize, origins: &[u16], skus: u32) -> Script {
    let mut rng = Rng(SplitMix64::new(seed));
    let mut next_id: HashMap<u16, u64> = HashMap::new();
    let mut script = Vec::with_capacity(n);
    for _ in 0..n {
        let origin = origins[rng.below(origins.len() as u64) as usize];
        let id_counter = next_id.entry(origin).or_insert(0);
        let fresh = {
            *id_counter += 1;
            *id_counter
        };
        let old = 1 + rng.below(fresh);
        let location = 1 + rng.below(3) as u16;
        let sku = 1 + rng.below(u64::from(skus)) as u32;
        let qty = 1 + rng.below(4) as u32;
        let bytes = match rng.below(100) {
            0..=34 => {
                let location = if rng.chance(30) { 0 } else { location };
                Order::new(if rng.chance(5) { old } else { fresh }, location, sku, qty)
                    .as_bytes()
                    .to_vec()
            }
            35..=44 => ModifyOrder::new(old, rng.below(5) as u32)
                .as_bytes()
                .to_vec(),
            45..=52 => CancelOrder::new(old).as_bytes().to_vec(),
            53..=64 => Reserve::new(fresh, location, sku, qty, 1 + rng.below(20_000) as u32)
                .as_bytes()
                .to_vec(),
            65..=72 => ConfirmHold::new(old).as_bytes().to_vec(),
            73..=78 => ReleaseHold::new(old).as_bytes().to_vec(),
            79..=85 => {
                let to = 1 + rng.below(3) as u16;
                Transfer::new(fresh, location, to, sku, qty)
                    .as_bytes()
                    .to_vec()
            }
            86..=89 => Recount::new(location, sku, rng.below(15) as u32, 0)
                .as_bytes()
                .to_vec(),
            _ => {
                let delta = rng.below(12) as i32 - 4;
                Adjust::new(location, sku, delta, delta_reason::ADJUST)
                    .as_bytes()
                    .to_vec()
            }
        };
        script.push((origin, bytes));
    }
    script
}

/// A 3-location × `skus` inventory with a few units each.
fn scarce_inventory(skus: u32, seed: u64) -> String {
    let mut rng = Rng(SplitMix64::new(seed));
    let mut csv = String::from("location,sku_symbol,quantity\n");
    for s in 1..=skus {
        for l in ["NORTH", "SOUTH", "EAST"] {
            csv.push_str(&format!("{l},SKU-{s:04},{}\n", rng.below(8)));
        }
    }
    csv
}

fn send_raw(sim: &mut Sim, origin: u16, bytes: &[u8]) {
    sim.now_ns += 1_000_000;
    sim.sequence(bytes.to_vec(), origin);
}

/// Checks every command on `stream` got exactly one outcome, in command
/// order (the warehouse decides in stream order), and returns how many
/// commands there were.
fn audit_outcomes(stream: &[Vec<u8>]) -> usize {
    let mut waiting: VecDeque<(u64, u8)> = VecDeque::new();
    let mut commands = 0;
    let mut last_answered = 0u64;
    for (i, bytes) in stream.iter().enumerate() {
        let seq = i as u64 + 1;
        let message = Message::parse(bytes).unwrap();
        if message.is_command() {
            waiting.push_back((seq, message.msg_type()));
            commands += 1;
            continue;
        }
        // (answered seq, command type it must be)
        let answer: Option<(Option<u64>, &[u8])> = match message {
            Message::OnHandDelta(d) => match d.reason {
                delta_reason::TRANSFER if d.cmd_seq.get() == last_answered => None,
                delta_reason::ORDER => Some((Some(d.cmd_seq.get()), b"O")),
                delta_reason::MODIFY => Some((Some(d.cmd_seq.get()), b"M")),
                delta_reason::CANCEL => Some((Some(d.cmd_seq.get()), b"X")),
                delta_reason::HOLD_CONFIRMED => Some((Some(d.cmd_seq.get()), b"C")),
                delta_reason::TRANSFER => Some((Some(d.cmd_seq.get()), b"T")),
                _ => Some((Some(d.cmd_seq.get()), b"P")),
            },
            Message::CommandRejected(j) => Some((Some(j.cmd_seq.get()), b"OMXVCKTQP")),
            Message::HoldPlaced(h) if h.cmd_seq.get() & CARRIED_HOLD_BIT == 0 => {
                Some((Some(h.cmd_seq.get()), b"V"))
            }
            Message::HoldEnded(e) if e.outcome == hold_outcome::RELEASED => Some((None, b"K")),
            Message::InventoryLevel(_) if waiting.front().is_some_and(|w| w.1 == b'Q') => {
                Some((None, b"Q"))
            }
            _ => None,
        };
        if let Some((cmd_seq, types)) = answer {
            let (oldest, kind) = waiting
                .pop_front()
                .unwrap_or_else(|| panic!("outcome at {seq} answers no command"));
            if let Some(cmd_seq) = cmd_seq {
                assert_eq!(cmd_seq, oldest, "outcome at {seq} is out of order");
            }
            assert!(
                types.contains(&kind),
                "outcome at {seq} ({}) cannot answer a {}",
                message.msg_type() as char,
                kind as char
            );
            last_answered = oldest;
        }
    }
    assert!(
        waiting.is_empty(),
        "commands without an outcome: {waiting:?}"
    );
    commands
}

/// Known cells as (sku, location, on_hand, reserved).
type Cells = Vec<(u32, u16, u32, u32)>;
/// Open holds as (location, sku, qty, expires_at).
type Holds = Vec<(u16, u32, u32, u64)>;

/// Everything but stream positions: quantities, and open holds without
/// their keys.
fn content(r: &Replica) -> (Cells, Holds) {
    let mut cells = Vec::new();
    for (sku, _) in r.skus() {
        for (location, cell) in r.cells_of(sku) {
            if cell.version != 0 {
                cells.push((sku, location, cell.on_hand, cell.reserved));
            }
        }
    }
    cells.sort();
    let mut holds: Vec<_> = r
        .holds()
        .map(|h| (h.location, h.sku, h.qty, h.expires_at_ns))
        .collect();
    holds.sort();
    (cells, holds)
}

fn run_uninterrupted(csv: &str, script: &Script) -> Sim {
    let mut sim = Sim::with_inventory(csv);
    for (origin, bytes) in script {
        send_raw(&mut sim, *origin, bytes);
        sim.settle();
    }
    sim
}

fn restart(sim: &mut Sim, path: &std::path::Path) {
    let (mut wh, info) = Warehouse::restore(path, config()).unwrap();
    wh.begin_run(sim.client_seq[&WH] + 1);
    sim.wh = wh;
    sim.fed = info.seq as usize;
    sim.outbox.clear();
    sim.feed_warehouse();
    assert!(
        sim.outbox.is_empty(),
        "nothing is decided while catching up"
    );
    let mut out = Vec::new();
    match sim.wh.finish_catch_up(&mut |e: &[u8]| out.push(e.to_vec())) {
        Ok(CatchUp::Done { .. }) => {}
        other => panic!("catch-up did not finish: {other:?}"),
    }
    sim.outbox.extend(out);
    sim.settle();
}

#[test]
fn restart_from_snapshot_after_a_clean_crash_reproduces_the_same_stream() {
    let csv = scarce_inventory(12, 1);
    let script = script(2, 3000, &[POS, POS2, OPS], 12);
    let uninterrupted = run_uninterrupted(&csv, &script);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wh.snap");
    let mut sim = Sim::with_inventory(&csv);
    for (i, (origin, bytes)) in script.iter().enumerate() {
        if i == 1000 {
            sim.wh.save_snapshot(&path, b"SESSION001").unwrap();
        }
        if i == 1700 {
            // Crash: everything the warehouse decided since the snapshot is
            // on the stream; the restarted one replays it.
            restart(&mut sim, &path);
        }
        send_raw(&mut sim, *origin, bytes);
        sim.settle();
    }
    assert_eq!(sim.stream, uninterrupted.stream, "the streams diverged");
    assert_eq!(sim.wh.digest(), uninterrupted.wh.digest());
    sim.assert_consistent();
    assert_eq!(audit_outcomes(&sim.stream), script.len());
}

#[test]
fn restart_after_losing_in_flight_events_decides_nothing_twice() {
    let csv = scarce_inventory(12, 3);
    let script = script(4, 3000, &[POS, POS2, OPS], 12);
    let uninterrupted = run_uninterrupted(&csv, &script);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wh.snap");
    let mut sim = Sim::with_inventory(&csv);
    let mut rng = Rng(SplitMix64::new(5));
    let mut i = 0;
    while i < script.len() {
        if i == 800 {
            sim.settle();
            sim.wh.save_snapshot(&path, b"SESSION001").unwrap();
        }
        if i == 1500 {
            // Crash with decisions in flight: some of its events reached the
            // stream, the rest are lost; 40 commands arrive while it is down.
            sim.feed_warehouse();
            let reached = sim.outbox.len() / 2;
            sim.flush(reached);
            sim.outbox.clear();
            for (origin, bytes) in &script[i..i + 40] {
                send_raw(&mut sim, *origin, bytes);
            }
            i += 40;
            restart(&mut sim, &path);
            continue;
        }
        let (origin, bytes) = &script[i];
        send_raw(&mut sim, *origin, bytes);
        // Events reach the stream late and in bursts.
        sim.feed_warehouse();
        if rng.chance(40) {
            let n = rng.below(4) as usize;
            sim.flush(n);
        }
        i += 1;
    }
    sim.settle();
    sim.assert_consistent();
    assert_eq!(audit_outcomes(&sim.stream), script.len());
    assert_eq!(content(&sim.replica), content(&uninterrupted.replica));
    assert_eq!(sim.replica.oversold(), 0);
}

// ---------------------------------------------------------------------------
// Many clients racing for scarce stock.

#[test]
fn seeded_race_for_scarce_stock_never_oversells_and_replicas_agree() {
    for seed in [11u64, 12, 13] {
        race(seed);
    }
}

fn race(seed: u64) {
    let skus = 6u32;
    let csv = scarce_inventory(skus, seed);
    let mut sim = Sim::with_inventory(&csv);
    let initial_units: i64 = sim
        .replica
        .skus()
        .flat_map(|(sku, _)| sim.replica.cells_of(sku).collect::<Vec<_>>())
        .map(|(_, c)| i64::from(c.on_hand))
        .sum();
    let mut rng = Rng(SplitMix64::new(seed));
    let origins: Vec<u16> = (1..=12).collect();
    let mut next_id: HashMap<u16, u64> = HashMap::new();
    // A late joiner: starts from the first replica's snapshot half way.
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("replica.snap");
    let mut late: Option<(Replica, usize)> = None;
    let mut checkpoints = 0;
    let steps = 6000;
    for step in 0..steps {
        sim.now_ns += rng.below(2_000_000);
        let origin = origins[rng.below(origins.len() as u64) as usize];
        let counter = next_id.entry(origin).or_insert(0);
        *counter += 1;
        let (fresh, old) = (*counter, 1 + rng.below(*counter));
        let location = rng.below(4) as u16; // 0 = any, for orders
        let sku = 1 + rng.below(u64::from(skus)) as u32;
        let qty = 1 + rng.below(3) as u32;
        let at = location.max(1);
        let bytes = match rng.below(100) {
            0..=44 => Order::new(fresh, location, sku, qty).as_bytes().to_vec(),
            45..=51 => ModifyOrder::new(old, rng.below(5) as u32)
                .as_bytes()
                .to_vec(),
            52..=57 => CancelOrder::new(old).as_bytes().to_vec(),
            58..=71 => Reserve::new(fresh, at, sku, qty, 1 + rng.below(30) as u32)
                .as_bytes()
                .to_vec(),
            72..=78 => ConfirmHold::new(old).as_bytes().to_vec(),
            79..=82 => ReleaseHold::new(old).as_bytes().to_vec(),
            83..=88 => Transfer::new(fresh, at, 1 + rng.below(3) as u16, sku, qty)
                .as_bytes()
                .to_vec(),
            89..=92 => {
                // A counter who read the version on its own replica, maybe
                // a stale one.
                let version = sim.replica.cell(at, sku).map_or(0, |c| c.version);
                let expected = if rng.chance(50) { version } else { 0 };
                Recount::new(at, sku, rng.below(6) as u32, expected)
                    .as_bytes()
                    .to_vec()
            }
            _ => Adjust::new(at, sku, rng.below(5) as i32 - 2, delta_reason::ADJUST)
                .as_bytes()
                .to_vec(),
        };
        sim.sequence(bytes, origin);
        sim.feed_warehouse();
        let mut out = Vec::new();
        sim.wh
            .expire(sim.now_ns, &mut |e: &[u8]| out.push(e.to_vec()));
        sim.outbox.extend(out);
        // The warehouse's events reach the stream late and in bursts, so
        // commands overtake them.
        if rng.chance(20) {
            sim.flush(usize::MAX);
            sim.feed_warehouse();
        } else if rng.chance(50) {
            let n = rng.below(3) as usize;
            sim.flush(n);
            sim.feed_warehouse();
        }
        sim.feed_replica();
        if sim.outbox.is_empty() && sim.wh.in_flight() == 0 {
            assert_eq!(
                sim.replica.digest(),
                sim.wh.digest(),
                "seed {seed} step {step}"
            );
            checkpoints += 1;
        }
        if step == steps / 2 {
            tally_client::snapshot::save(&snap, &sim.replica, b"SESSION001", [0; 4]).unwrap();
            let (replica, info) =
                tally_client::snapshot::load(&snap, ReplicaLimits::small()).unwrap();
            late = Some((replica, info.seq as usize));
        }
        if let Some((replica, fed)) = &mut late {
            while *fed < sim.stream.len() {
                replica.apply(*fed as u64 + 1, &Message::parse(&sim.stream[*fed]).unwrap());
                *fed += 1;
            }
        }
        for (_, c) in sim.replica.cells_of(sku) {
            assert!(c.reserved <= c.on_hand);
        }
    }
    sim.settle();
    sim.assert_consistent();
    checkpoints += 1;
    assert!(checkpoints > 100, "only {checkpoints} checkpoints");
    let (late, _) = late.as_mut().unwrap();
    for fed in late.last_seq() as usize..sim.stream.len() {
        late.apply(fed as u64 + 1, &Message::parse(&sim.stream[fed]).unwrap());
    }
    assert_eq!(late.digest(), sim.replica.digest());

    // Sold never exceeds what existed: walk the stream with signed
    // arithmetic, per cell.
    let mut on_hand: BTreeMap<(u16, u32), i64> = BTreeMap::new();
    let (mut sold, mut added) = (0i64, 0i64);
    for bytes in &sim.stream {
        match Message::parse(bytes).unwrap() {
            Message::InventoryLevel(i) => {
                let cell = on_hand.entry((i.location.get(), i.sku.get())).or_insert(0);
                added += (i64::from(i.on_hand.get()) - *cell).max(0);
                *cell = i64::from(i.on_hand.get());
            }
            Message::OnHandDelta(d) => {
                let cell = on_hand.entry((d.location.get(), d.sku.get())).or_insert(0);
                *cell += i64::from(d.delta.get());
                assert!(*cell >= 0, "seed {seed}: a cell went negative");
                match d.reason {
                    delta_reason::ORDER
                    | delta_reason::MODIFY
                    | delta_reason::CANCEL
                    | delta_reason::HOLD_CONFIRMED => sold -= i64::from(d.delta.get()),
                    delta_reason::TRANSFER => {}
                    _ if d.delta.get() > 0 => added += i64::from(d.delta.get()),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    assert!(sold > 0);
    assert!(
        sold <= added,
        "seed {seed}: sold {sold} of {added} (initial {initial_units})"
    );
    let counters = sim.wh.counters();
    assert!(
        counters.insufficient > 100,
        "stock was not scarce: {counters:?}"
    );
    assert!(counters.expired > 0 && counters.version_conflict > 0);
    assert_eq!(counters.own_out_of_order, 0);
    assert_eq!(audit_outcomes(&sim.stream), steps);
    assert_eq!(sim.replica.counters().pending_evicted, 0);
    assert_eq!(sim.replica.pending_count(), 0);
}

// ---------------------------------------------------------------------------
// Inventory file.

#[test]
fn inventory_file_assigns_ids_in_order_of_first_appearance() {
    let mut wh = Warehouse::new(config());
    let summary = wh.load_inventory(INVENTORY.as_bytes()).unwrap();
    assert_eq!(
        (summary.locations, summary.skus, summary.rows, summary.units),
        (3, 3, 5, 28)
    );
    let r = wh.replica();
    assert_eq!(r.location_by_name("STORE-B"), Some(2));
    assert_eq!(r.sku_by_symbol("HAT"), Some(3));
    assert_eq!(r.cell(C, MUG).unwrap().on_hand, 5);
}

#[test]
fn the_shipped_sample_inventory_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/inventory.csv");
    let mut wh = Warehouse::new(config());
    let summary = wh.load_inventory_file(&path).unwrap();
    assert_eq!((summary.locations, summary.skus), (3, 40));
    assert_eq!(summary.rows, 120);
}

#[test]
fn inventory_file_errors_name_the_line() {
    type Case = (&'static str, usize, fn(&InventoryErrorKind) -> bool);
    let cases: [Case; 7] = [
        ("", 0, |k| matches!(k, InventoryErrorKind::Empty)),
        ("loc,sku,qty\n", 1, |k| {
            matches!(k, InventoryErrorKind::BadHeader(_))
        }),
        ("location,sku_symbol,quantity\nA,MUG\n", 2, |k| {
            matches!(k, InventoryErrorKind::FieldCount(2))
        }),
        ("location,sku_symbol,quantity\n\n# c\nA,MUG,x1\n", 4, |k| {
            matches!(k, InventoryErrorKind::BadQuantity(_))
        }),
        ("location,sku_symbol,quantity\nA,MUG,-1\n", 2, |k| {
            matches!(k, InventoryErrorKind::BadQuantity(_))
        }),
        (
            "location,sku_symbol,quantity\nA,THIS-SYMBOL-IS-TOO-LONG,1\n",
            2,
            |k| {
                matches!(
                    k,
                    InventoryErrorKind::BadName {
                        column: "sku_symbol",
                        ..
                    }
                )
            },
        ),
        (
            "location,sku_symbol,quantity\nA,MUG,1\nB,MUG,1\nA,MUG,2\n",
            4,
            |k| matches!(k, InventoryErrorKind::DuplicateCell { first_line: 2 }),
        ),
    ];
    for (text, line, kind) in cases {
        let mut wh = Warehouse::new(config());
        let err = wh.load_inventory(text.as_bytes()).unwrap_err();
        assert_eq!(
            wh.replica().sku_count() + u32::from(wh.replica().location_count()),
            0
        );
        assert_eq!(err.line, line, "{text:?}: {err}");
        assert!(kind(&err.kind), "{text:?}: {err}");
        if line > 0 {
            assert!(err.to_string().starts_with(&format!("line {line}: ")));
        }
    }
    let mut wh = Warehouse::new(config());
    wh.load_inventory(INVENTORY.as_bytes()).unwrap();
    let err = wh.load_inventory(INVENTORY.as_bytes()).unwrap_err();
    assert!(matches!(err.kind, InventoryErrorKind::NotEmpty));
}

// ---------------------------------------------------------------------------
// No allocation on the decision path.

#[test]
fn deciding_and_expiring_do_not_allocate() {
    let mut sim = Sim::new();
    // Pre-build a mixed stream of commands and the matching own events.
    let mut commands: Vec<Vec<u8>> = Vec::new();
    for i in 0..2000u64 {
        let m: Vec<u8> = match i % 8 {
            0 | 1 => Order::new(i, (i % 4) as u16, MUG, 1).as_bytes().to_vec(),
            2 => ModifyOrder::new(i - 2, 2).as_bytes().to_vec(),
            3 => CancelOrder::new(i - 3).as_bytes().to_vec(),
            4 => Reserve::new(i, A, MUG, 1, 1).as_bytes().to_vec(),
            5 => ConfirmHold::new(i - 1).as_bytes().to_vec(),
            6 => Transfer::new(i, A, B, MUG, 1).as_bytes().to_vec(),
            _ => Adjust::new(A, MUG, 3, delta_reason::ADJUST)
                .as_bytes()
                .to_vec(),
        };
        let mut m = m;
        let h = header_mut(&mut m).unwrap();
        h.origin = POS.into();
        h.timestamp_ns = (T0 + i).into();
        commands.push(m);
    }
    let messages: Vec<Message> = commands
        .iter()
        .map(|b| Message::parse(b).unwrap())
        .collect();
    let mut seq = sim.stream.len() as u64;
    let mut buf = EventBuf::new();
    let before = allocations();
    for message in &messages {
        seq += 1;
        buf.clear();
        sim.wh.on_stream(seq, message, &mut buf);
        buf.clear();
        sim.wh.expire(T0 + seq * 1_000_000, &mut buf);
    }
    let after = allocations();
    assert_eq!(after - before, 0, "the decision path allocated");
    assert!(sim.wh.counters().decided == 2000);
    assert!(sim.wh.counters().expired > 0);
}
