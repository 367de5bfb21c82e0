//! Scale (issue 15), small and fast: a session-start broadcast larger than
//! any internal buffer of the warehouse application (its outbox holds
//! 262 144 events, the order-entry window 4 096) completes through the real
//! appliance, decisions go on after it, and every replica's digest — a full
//! replica following the stream live, a late full replica and store nodes
//! joining through the replay feed — equals the warehouse's (full, or of the
//! store's subset). A warehouse whose limits are smaller than its inventory
//! says which limit, with the numbers, and stops. The lazy broadcast through
//! a sink of any room equals the one-shot broadcast.
//!
//! Test block 104 (`ApplianceSpec::for_test(104, id, …)`; no other suite
//! uses it). Every wait has a deadline.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tally_client::client::OrderEntryClient;
use tally_client::consumer::{ConsumerConfig, StreamConsumer};
use tally_client::replica::{LocationSet, Replica, ReplicaLimits};
use tally_demo::warehouse::app_config;
use tally_demo::{send_all, ApplianceSpec};
use tally_pos::{Pos, PosConfig, PosError};
use tally_warehouse::app::{WarehouseApp, WarehouseAppConfig};
use tally_warehouse::decide::{EventBuf, EventSink, Warehouse, WarehouseConfig};
use tally_wire::Order;

const BLOCK: u8 = 104;
const LONG: Duration = Duration::from_secs(120);

/// SKUs and locations of the big inventory: each SKU is stocked in 14 of the
/// 16 locations (skipping two that vary with the SKU), so the cells are not
/// the full product and the state is stored sparsely.
const SKUS: u32 = 20_000;
const LOCATIONS: u16 = 16;

fn big_inventory(dir: &Path) -> (PathBuf, u64) {
    let mut csv = String::with_capacity(12 << 20);
    csv.push_str("location,sku_symbol,quantity\n");
    let mut cells = 0;
    for sku in 0..SKUS {
        for location in 0..LOCATIONS {
            let skipped = [sku % 16, (sku / 16 + 5) % 16];
            if skipped.contains(&u32::from(location)) && skipped[0] != skipped[1] {
                continue;
            }
            writeln!(
                csv,
                "S{location:02},K{sku:06},{}",
                1 + (sku + u32::from(location)) % 50
            )
            .unwrap();
            cells += 1;
        }
    }
    let path = dir.join("inventory.csv");
    std::fs::write(&path, csv).unwrap();
    (path, cells)
}

/// Sparse limits: room for the cells, far below SKUs × locations_max.
fn sparse_limits() -> ReplicaLimits {
    ReplicaLimits {
        skus_max: 32_768,
        locations_max: 64,
        cells_max: 400_000,
        holds_max: 1024,
        orders_max: 1 << 16,
        pending_max: 1 << 16,
    }
}

/// A store node: its cells only (a few SKUs' worth of room for cells).
fn store_limits() -> ReplicaLimits {
    ReplicaLimits {
        cells_max: 2 * SKUS,
        orders_max: 1024,
        ..sparse_limits()
    }
}

/// Follows the stream from seq 1 into `replica` until `until_seq` is
/// delivered (0: until `stop`), then returns it.
fn follow(
    config: &ConsumerConfig,
    mut replica: Replica,
    until_seq: &dyn Fn() -> u64,
    timeout: Duration,
) -> Replica {
    let mut config = config.clone();
    config.start_seq = 1;
    let mut consumer = StreamConsumer::new(&config).expect("join the stream");
    let deadline = Instant::now() + timeout;
    loop {
        let target = until_seq();
        if target > 0 && replica.last_seq() >= target {
            return replica;
        }
        assert!(
            Instant::now() < deadline,
            "replica at seq {} of {target} after {timeout:?}",
            replica.last_seq()
        );
        consumer
            .wait(Duration::from_millis(20), |seq, message| {
                replica.apply(seq, &message);
            })
            .expect("consume");
    }
}

#[test]
fn a_broadcast_larger_than_every_buffer_completes_and_every_digest_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, 1, dir.path().join("journal"));
    let appliance = spec.start().expect("start the appliance");
    let (inventory, cells) = big_inventory(dir.path());
    // L + R + I + S(W): more than the outbox (262 144) and any window.
    let broadcast = u64::from(LOCATIONS) + u64::from(SKUS) + cells + 1;
    assert!(broadcast > 1 << 18, "{broadcast} events");

    // A full replica following the stream live, through the broadcast.
    let target = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let live = {
        let config = spec.consumer_config();
        let target = Arc::clone(&target);
        thread::Builder::new()
            .name("live-replica".into())
            .spawn(move || {
                follow(
                    &config,
                    Replica::new(sparse_limits()),
                    &|| target.load(Ordering::Acquire),
                    LONG,
                )
            })
            .unwrap()
    };

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let warehouse = {
        let mut config = app_config(&spec, sparse_limits(), &inventory);
        config.catch_up_timeout = LONG;
        let stop = Arc::clone(&stop);
        thread::Builder::new()
            .name("warehouse".into())
            .spawn(move || -> anyhow::Result<(u64, u64, u64, u64, u64)> {
                let mut app = WarehouseApp::start(config)?;
                ready_tx.send(()).unwrap();
                app.run(&stop)?;
                let deadline = Instant::now() + LONG;
                while !(app.is_quiet()
                    && app.consumer().delivered_seq() >= app.consumer().newest_seq())
                {
                    anyhow::ensure!(Instant::now() < deadline, "warehouse never quiet");
                    if app.poll()? == 0 {
                        thread::yield_now();
                    }
                }
                let engine = app.engine();
                Ok((
                    engine.replica().last_seq(),
                    engine.digest(),
                    engine.digest_of(&LocationSet::of(&[3])),
                    engine.digest_of(&LocationSet::of(&[1, 16])),
                    engine.counters().accepted,
                ))
            })
            .unwrap()
    };
    ready_rx
        .recv_timeout(LONG)
        .expect("the warehouse went live");
    eprintln!(
        "scale: {broadcast} broadcast events handed over, live after {:?}",
        started.elapsed()
    );

    // Decisions go on after the broadcast: orders at location 4 and at any
    // location.
    let mut client = OrderEntryClient::connect(spec.client_config("pos1"), LONG).unwrap();
    let orders: Vec<Vec<u8>> = (0..200u32)
        .map(|i| {
            let location = if i % 2 == 0 { 4 } else { 0 };
            Order::new(u64::from(i) + 1, location, 1 + i * 97 % SKUS, 1)
                .as_bytes()
                .to_vec()
        })
        .collect();
    send_all(&mut client, &orders, LONG).expect("orders acked");
    // Wait for the warehouse to answer every order (a replica sees them).
    let mut watcher = Replica::new(sparse_limits());
    let mut config = spec.consumer_config();
    config.start_seq = 1;
    let mut consumer = StreamConsumer::new(&config).unwrap();
    let deadline = Instant::now() + LONG;
    while watcher.counters().commands < 200 || watcher.pending_count() > 0 {
        assert!(Instant::now() < deadline, "orders never all answered");
        consumer
            .wait(Duration::from_millis(20), |seq, message| {
                watcher.apply(seq, &message);
            })
            .unwrap();
    }
    stop.store(true, Ordering::Release);
    let (seq, digest, store_3, stores_1_16, accepted) =
        warehouse.join().unwrap().expect("the warehouse ran");
    eprintln!(
        "scale: warehouse quiet at seq {seq} after {:?}, {accepted} orders accepted",
        started.elapsed()
    );
    assert!(seq >= broadcast + 200, "seq {seq}");
    assert!(accepted > 0);

    target.store(seq, Ordering::Release);
    let live = live.join().unwrap();
    assert_eq!(live.last_seq(), seq);
    assert_eq!(live.digest(), digest, "live full replica");
    assert_eq!(live.oversold(), 0);
    assert_eq!(live.counters().dropped_events, 0);

    // Late joiners through the replay feed: a full replica and two store
    // nodes, each checked against the warehouse's digest of its subset.
    let config = spec.consumer_config();
    let late = follow(&config, Replica::new(sparse_limits()), &|| seq, LONG);
    assert_eq!(late.digest(), digest, "late full replica");
    assert_eq!(late.digest_of(&LocationSet::of(&[3])), store_3);
    for (set, expected) in [(vec![3u16], store_3), (vec![1, 16], stores_1_16)] {
        let mut node = Replica::new(store_limits());
        node.keep_only(LocationSet::of(&set));
        let node = follow(&config, node, &|| seq, LONG);
        assert_eq!(node.digest(), expected, "store node {set:?}");
        assert_eq!(node.counters().dropped_events, 0, "store node {set:?}");
        assert!(node.cell_count() <= SKUS as usize * set.len());
        assert!(node.cell_count() > 0);
        assert!(node.memory_bytes() < late.memory_bytes() / 3);
    }
    assert_ne!(store_3, stores_1_16);
    assert_ne!(store_3, digest);

    // A SKU's stocked cells, without a probe per location.
    for sku in [1, 77, SKUS] {
        let mut stocked: Vec<(u16, u64)> = Vec::new();
        late.for_each_stocked_cell(sku, |location, cell| stocked.push((location, cell.version)));
        stocked.sort_unstable();
        let listed: Vec<(u16, u64)> = late
            .cells_of(sku)
            .filter(|(_, cell)| cell.version != 0)
            .map(|(location, cell)| (location, cell.version))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(stocked, listed, "sku {sku}");
        assert_eq!(stocked.len(), 14, "sku {sku}");
    }

    // A till whose limits are smaller than the stream says so at start.
    let mut till = PosConfig::for_appliance(&spec.config(), "pos2", "pos2pass").unwrap();
    till.limits.skus_max = 1000;
    let mut till = Pos::new(till).unwrap();
    match till.wait_ready(LONG) {
        Err(PosError::LimitMet(what)) => assert!(what.contains("skus_max = 1000"), "{what}"),
        other => panic!("a till with 1 000 SKUs of room: {other:?}"),
    }
    drop(till);
    appliance.stop().unwrap();
}

#[test]
fn a_warehouse_whose_limits_are_too_small_says_which_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, 2, dir.path().join("journal"));
    let appliance = spec.start().expect("start the appliance");
    let mut csv = String::from("location,sku_symbol,quantity\n");
    for sku in 0..300 {
        writeln!(csv, "A,K{sku},5").unwrap();
        writeln!(csv, "B,K{sku},5").unwrap();
    }
    let inventory = dir.path().join("inventory.csv");
    std::fs::write(&inventory, csv).unwrap();
    for (limits, expected) in [
        (
            ReplicaLimits {
                skus_max: 100,
                ..sparse_limits()
            },
            "skus_max = 100",
        ),
        (
            ReplicaLimits {
                cells_max: 500,
                ..sparse_limits()
            },
            "cells_max = 500",
        ),
    ] {
        let error = match WarehouseApp::start(WarehouseAppConfig {
            catch_up_timeout: LONG,
            ..app_config(&spec, limits, &inventory)
        }) {
            Ok(_) => panic!("a warehouse with {limits:?} started"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains(expected), "{error}");
    }
    appliance.stop().unwrap();
}

/// A sink that takes at most `room` events per round.
struct Trickle {
    room: usize,
    taken: usize,
    events: Vec<Vec<u8>>,
}

impl EventSink for Trickle {
    fn publish(&mut self, message: &[u8]) {
        assert!(self.taken < self.room, "published past room");
        self.taken += 1;
        self.events.push(message.to_vec());
    }

    fn room(&self) -> usize {
        self.room - self.taken
    }
}

#[test]
fn the_lazy_broadcast_equals_the_one_shot_broadcast_whatever_the_room() {
    let mut csv = String::from("location,sku_symbol,quantity\n");
    for sku in 0..500 {
        for location in 0..7 {
            if (sku + location) % 3 != 0 {
                writeln!(csv, "L{location},K{sku},{}", sku % 9).unwrap();
            }
        }
    }
    let config = WarehouseConfig {
        own_origin: 3,
        limits: ReplicaLimits {
            cells_max: 3000,
            ..sparse_limits()
        },
    };
    let mut whole = Warehouse::new(config);
    whole.load_inventory(csv.as_bytes()).unwrap();
    let mut expected = Vec::new();
    whole.session_start_events(&mut |event: &[u8]| expected.push(event.to_vec()));
    for room in [1usize, 2, 3, 7, 4096] {
        let mut lazy = Warehouse::new(config);
        lazy.load_inventory(csv.as_bytes()).unwrap();
        let mut at = lazy.begin_session_start();
        let mut sink = Trickle {
            room,
            taken: 0,
            events: Vec::new(),
        };
        let mut rounds = 0;
        while !lazy.session_start_step(&mut at, &mut sink) {
            sink.taken = 0;
            rounds += 1;
            assert!(rounds < 10 * expected.len(), "no progress");
        }
        assert_eq!(sink.events, expected, "room {room}");
        assert_eq!(at.events() as usize, expected.len());
        assert_eq!(lazy.digest(), whole.digest());
    }
    // An EventBuf (4 events) drives it too.
    let mut lazy = Warehouse::new(config);
    lazy.load_inventory(csv.as_bytes()).unwrap();
    let mut at = lazy.begin_session_start();
    let mut buf = EventBuf::new();
    let mut count = 0;
    loop {
        buf.clear();
        let done = lazy.session_start_step(&mut at, &mut buf);
        count += buf.len();
        if done {
            break;
        }
    }
    assert_eq!(count, expected.len());
}

thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts this thread's allocations (the appliance's threads count theirs).
struct Counting;

// SAFETY: forwards every call to the system allocator unchanged; it only
// counts, in a thread-local that never allocates.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(|a| a.get())
}

/// A stream as the appliance would carry it: the warehouse's broadcast of a
/// sparse chain, then orders, reserves and transfers (some to locations the
/// SKU is not stocked at: new cells) with the warehouse's answers.
fn sparse_stream() -> (Vec<Vec<u8>>, Warehouse) {
    use tally_wire::{header_mut, Message, Reserve, Transfer};
    let mut csv = String::from("location,sku_symbol,quantity\n");
    for sku in 0..400 {
        for location in 0..40 {
            if (sku * 7 + location) % 10 == 0 {
                writeln!(csv, "L{location:02},K{sku:04},100").unwrap();
            }
        }
    }
    let config = WarehouseConfig {
        own_origin: 3,
        limits: ReplicaLimits {
            cells_max: 4000,
            ..sparse_limits()
        },
    };
    let mut wh = Warehouse::new(config);
    wh.load_inventory(csv.as_bytes()).unwrap();
    let mut stream = Vec::new();
    wh.session_start_events(&mut |event: &[u8]| stream.push(event.to_vec()));
    let mut commands = Vec::new();
    for i in 0..3000u64 {
        let (location, sku) = (1 + (i % 40) as u16, 1 + (i * 13 % 400) as u32);
        commands.push(match i % 3 {
            0 => Order::new(i, 0, sku, 1).as_bytes().to_vec(),
            1 => Reserve::new(i, location, sku, 1, 60_000)
                .as_bytes()
                .to_vec(),
            _ => Transfer::new(i, location, 1 + ((i / 3) % 40) as u16, sku, 1)
                .as_bytes()
                .to_vec(),
        });
    }
    let mut fed = 0;
    let mut client_seq = 0u32;
    let mut next_command = commands.into_iter();
    loop {
        while fed < stream.len() {
            let seq = fed as u64 + 1;
            let mut buf = EventBuf::new();
            wh.on_stream(seq, &Message::parse(&stream[fed]).unwrap(), &mut buf);
            stream.extend(buf.iter().map(<[u8]>::to_vec));
            fed += 1;
        }
        let Some(mut command) = next_command.next() else {
            break;
        };
        client_seq += 1;
        let header = header_mut(&mut command).unwrap();
        header.origin = 1.into();
        header.client_seq = client_seq.into();
        header.timestamp_ns = (1_700_000_000_000_000_000u64 + u64::from(client_seq)).into();
        stream.push(command);
    }
    assert_eq!(wh.in_flight(), 0);
    (stream, wh)
}

#[test]
fn sparse_replicas_and_store_nodes_apply_without_allocating() {
    use tally_wire::Message;
    let (stream, wh) = sparse_stream();
    let messages: Vec<Message> = stream.iter().map(|b| Message::parse(b).unwrap()).collect();
    let set = LocationSet::of(&[2, 17, 40]);
    let mut full = Replica::new(ReplicaLimits {
        cells_max: 4000,
        ..sparse_limits()
    });
    let mut node = Replica::new(ReplicaLimits {
        cells_max: 1200,
        ..sparse_limits()
    });
    node.keep_only(set.clone());
    let before = allocations();
    for (i, message) in messages.iter().enumerate() {
        full.apply(i as u64 + 1, message);
        node.apply(i as u64 + 1, message);
    }
    let (full_digest, node_digest) = (full.digest(), node.digest());
    let mut stocked = 0;
    node.for_each_stocked_cell(5, |_, _| stocked += 1);
    assert_eq!(allocations() - before, 0, "apply allocated");
    assert!(wh.counters().accepted > 1000, "{:?}", wh.counters());
    assert_eq!(full_digest, wh.digest());
    assert_eq!(node_digest, wh.digest_of(&set));
    assert_eq!(full.digest_of(&set), node_digest);
    assert!(full.cell_count() > 1600, "transfers made new cells");
    assert!(node.cell_count() < full.cell_count() / 5);
    assert_eq!(full.counters().dropped_events, 0);
    assert_eq!(node.counters().dropped_events, 0);
    assert_eq!(full.oversold() + node.oversold(), 0);
    assert!(stocked <= 3);
}
