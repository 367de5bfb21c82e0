//! The point of sale against the whole appliance, in-process, over real
//! sockets, with a warehouse thread built the way the warehouse binary is
//! (the [`Warehouse`] engine between a stream consumer and the `wh`
//! order-entry client): a till never sends what its replica shows would
//! fail; tills racing for scarce stock in load mode never oversell, every
//! command gets exactly one outcome, and every till's replica has the
//! warehouse's digest at the same final seq, with and without 5 % seeded
//! loss on the tills' receivers; and the load generator as
//! `tally-bench --scenario till-load` (what `tally-pos --rate` was) runs
//! for `--seconds` or until SIGTERM and prints its summary.
//!
//! Test block 106 (see `testkit`); every wait has a deadline.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tally_client::client::{ClientError, OrderEntryClient};
use tally_client::consumer::{monotonic_ns, StreamConsumer};
use tally_client::replica::{Applied, Replica, ReplicaLimits};
use tally_demo::load::{LoadConfig, LoadGenerator};
use tally_demo::{demo_client, read_stream, ApplianceSpec};
use tally_pos::{rtt_histogram, CommandKind, Outcome, OutcomeReport, Pos, PosConfig, Refused};
use tally_runtime::alloc_count::{arm_current_thread, armed_allocations, disarm_current_thread};
use tally_runtime::counters::CounterReader;
use tally_warehouse::decide::{EventBuf, Warehouse, WarehouseConfig};
use tally_wire::{reject_reason, Message};

const BLOCK: u8 = 106;
const LONG: Duration = Duration::from_secs(60);

#[global_allocator]
static ALLOCATOR: tally_runtime::alloc_count::CountingAllocator =
    tally_runtime::alloc_count::CountingAllocator;

fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

// ---------------------------------------------------------------------------
// The warehouse, as its binary runs it: consumer → engine → client.

struct WarehouseThread {
    finish: Arc<AtomicBool>,
    thread: JoinHandle<Warehouse>,
}

impl WarehouseThread {
    /// Loads `inventory`, logs in as `wh`, broadcasts the session start and
    /// decides every command on the stream until [`finish`](Self::finish).
    fn start(spec: &ApplianceSpec, inventory: &str) -> WarehouseThread {
        let mut warehouse = Warehouse::new(WarehouseConfig {
            own_origin: demo_client("wh").client_id,
            limits: ReplicaLimits::small(),
        });
        warehouse.load_inventory(inventory.as_bytes()).unwrap();
        let mut consumer = StreamConsumer::new(&spec.consumer_config()).unwrap();
        let mut client = OrderEntryClient::connect(spec.client_config("wh"), LONG).unwrap();
        let finish = Arc::new(AtomicBool::new(false));
        let thread = {
            let finish = Arc::clone(&finish);
            thread::spawn(move || {
                warehouse.begin_run(client.next_client_seq());
                let mut outbox: VecDeque<Vec<u8>> = VecDeque::new();
                warehouse
                    .session_start_events(&mut |event: &[u8]| outbox.push_back(event.to_vec()));
                let mut next_expiry_ns = 0;
                let deadline = Instant::now() + 10 * LONG;
                loop {
                    assert!(Instant::now() < deadline, "warehouse thread deadline");
                    let finishing = finish.load(Ordering::Acquire);
                    let mut on_message = |seq: u64, message: Message<'_>| {
                        let mut events = EventBuf::new();
                        warehouse.on_stream(seq, &message, &mut events);
                        outbox.extend(events.iter().map(<[u8]>::to_vec));
                    };
                    let mut work = consumer.poll(monotonic_ns(), &mut on_message).unwrap();
                    if !finishing && monotonic_ns() >= next_expiry_ns {
                        warehouse.expire(wall_clock_ns(), &mut |event: &[u8]| {
                            outbox.push_back(event.to_vec())
                        });
                        next_expiry_ns = monotonic_ns() + 5_000_000;
                    }
                    while let Some(event) = outbox.front() {
                        match client.queue(event) {
                            Ok(_) => {
                                outbox.pop_front();
                                work += 1;
                            }
                            Err(ClientError::WindowFull | ClientError::Disconnected) => break,
                            Err(error) => panic!("warehouse client: {error}"),
                        }
                    }
                    client.flush();
                    work += client.poll(monotonic_ns(), |_| {});
                    if finishing
                        && outbox.is_empty()
                        && warehouse.in_flight() == 0
                        && client.unacked() == 0
                    {
                        client.logout();
                        return warehouse;
                    }
                    if work == 0 {
                        consumer
                            .wait(Duration::from_millis(1), |seq, message| {
                                let mut events = EventBuf::new();
                                warehouse.on_stream(seq, &message, &mut events);
                                outbox.extend(events.iter().map(<[u8]>::to_vec));
                            })
                            .unwrap();
                    }
                }
            })
        };
        WarehouseThread { finish, thread }
    }

    /// Stops expiring holds, waits until all its events are back on the
    /// stream, and hands the engine back.
    fn finish(self) -> Warehouse {
        self.finish.store(true, Ordering::Release);
        self.thread.join().expect("the warehouse thread")
    }
}

fn pos_config(spec: &ApplianceSpec, username: &str) -> PosConfig {
    let client = demo_client(username);
    PosConfig::for_appliance(&spec.config(), client.username, client.password).unwrap()
}

/// Polls until the outcome of `client_seq` is reported.
fn wait_outcome(pos: &mut Pos, client_seq: u32) -> OutcomeReport {
    let deadline = Instant::now() + LONG;
    let mut found = None;
    while found.is_none() {
        assert!(Instant::now() < deadline, "no outcome for {client_seq}");
        pos.wait_with(Duration::from_millis(10), |report| {
            if report.client_seq == client_seq {
                found = Some(*report);
            }
        })
        .unwrap();
    }
    found.unwrap()
}

/// Sum of on_hand over every cell.
fn units_on_hand(replica: &Replica) -> u64 {
    let skus: Vec<u32> = replica.skus().map(|(sku, _)| sku).collect();
    skus.iter()
        .flat_map(|&sku| replica.cells_of(sku))
        .map(|(_, cell)| u64::from(cell.on_hand))
        .sum()
}

// ---------------------------------------------------------------------------

const SMALL_SHOP: &str = "\
location,sku_symbol,quantity
STORE-A,MUG,5
STORE-B,MUG,2
STORE-A,TEE,1
";

#[test]
fn a_pos_never_sends_what_its_replica_shows_would_fail() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, 1, dir.path());
    let _appliance = spec.start().unwrap();
    let warehouse = WarehouseThread::start(&spec, SMALL_SHOP);
    let mut pos = Pos::new(pos_config(&spec, "pos1")).unwrap();
    assert!(pos.wait_ready(LONG).unwrap(), "directory seen, logged in");

    let replica = pos.replica();
    let mug = replica.sku_by_symbol("MUG").unwrap();
    let tee = replica.sku_by_symbol("TEE").unwrap();
    let a = replica.location_by_name("STORE-A").unwrap();
    let b = replica.location_by_name("STORE-B").unwrap();
    let insufficient = Err(Refused::WouldFail(reject_reason::INSUFFICIENT));
    let no_such = Err(Refused::WouldFail(reject_reason::NO_SUCH));

    // Every one of these would be rejected: none is sent.
    assert_eq!(pos.order(a, mug, 6), insufficient);
    assert_eq!(pos.order(0, mug, 6), insufficient, "no location has 6");
    assert_eq!(pos.order(b, mug, 3), insufficient);
    assert_eq!(
        pos.order(a, 999, 1),
        Err(Refused::WouldFail(reject_reason::UNKNOWN_SKU))
    );
    assert_eq!(
        pos.order(9, mug, 1),
        Err(Refused::WouldFail(reject_reason::UNKNOWN_LOCATION))
    );
    assert_eq!(
        pos.order(a, mug, 0),
        Err(Refused::WouldFail(reject_reason::INVALID_QUANTITY))
    );
    assert_eq!(pos.reserve(a, tee, 2, 60_000), insufficient);
    assert_eq!(pos.reserve(b, tee, 1, 60_000), insufficient, "none at B");
    assert_eq!(pos.modify(12_345, 1), no_such);
    assert_eq!(pos.cancel(777), no_such);
    assert_eq!(pos.confirm(5), no_such);
    assert_eq!(pos.release(5), no_such);
    let stats = pos.stats();
    assert_eq!(stats.skipped_would_fail, 12);
    assert_eq!(stats.skipped.insufficient, 5);
    assert_eq!(stats.skipped.no_such, 4);
    assert_eq!(stats.sent.total(), 0);
    assert_eq!(
        pos.client().stats().commands,
        0,
        "nothing reached the client"
    );

    // What the replica allows is sent and filled; then it knows the stock
    // is gone.
    let first = pos.order(a, mug, 5).unwrap();
    let report = wait_outcome(&mut pos, first);
    assert_eq!(report.kind, CommandKind::Order);
    assert_eq!(
        u64::from(first),
        report.id,
        "the order id is its client_seq"
    );
    assert_eq!(
        report.outcome,
        Outcome::Filled {
            location: a,
            sku: mug,
            delta: -5
        }
    );
    assert!(report.cmd_seq > 0 && report.rtt_ns > 0);
    assert_eq!(pos.order(a, mug, 1), insufficient);
    assert_eq!(pos.order(0, mug, 3), insufficient);
    let any = pos.order(0, mug, 2).unwrap();
    assert_eq!(
        wait_outcome(&mut pos, any).outcome,
        Outcome::Filled {
            location: b,
            sku: mug,
            delta: -2
        },
        "location 0: the warehouse picks B"
    );

    // Modify within what is there, then cancel: stock comes back.
    assert_eq!(pos.modify(u64::from(first), 6), insufficient);
    let modify = pos.modify(u64::from(first), 3).unwrap();
    assert_eq!(
        pos.cancel(u64::from(first)),
        Err(Refused::Busy),
        "one command per order in flight"
    );
    assert!(matches!(
        wait_outcome(&mut pos, modify).outcome,
        Outcome::Filled { delta: 2, .. }
    ));
    let cancel = pos.cancel(u64::from(first)).unwrap();
    assert!(matches!(
        wait_outcome(&mut pos, cancel).outcome,
        Outcome::Filled { delta: 3, .. }
    ));
    assert_eq!(pos.cancel(u64::from(first)), no_such, "already cancelled");
    assert_eq!(pos.replica().cell(a, mug).unwrap().available, 5);

    // A hold: placed, confirmed; then it is gone.
    let hold = pos.reserve(a, tee, 1, 60_000).unwrap();
    let report = wait_outcome(&mut pos, hold);
    assert!(matches!(report.outcome, Outcome::HoldPlaced { qty: 1, .. }));
    assert_eq!(pos.open_holds(), 1);
    assert_eq!(pos.reserve(a, tee, 1, 60_000), insufficient, "it is held");
    let confirm = pos.confirm(u64::from(hold)).unwrap();
    assert!(matches!(
        wait_outcome(&mut pos, confirm).outcome,
        Outcome::Filled { delta: -1, .. }
    ));
    assert_eq!(pos.open_holds(), 0);
    assert_eq!(pos.release(u64::from(hold)), no_such);

    let stats = pos.stats();
    assert_eq!(stats.sent.total(), 6);
    assert_eq!(stats.outcomes, 6);
    assert_eq!(stats.filled, 2);
    assert_eq!(stats.rejected, 0);
    assert_eq!(
        stats.units_sold,
        2 + 1,
        "2 at B, 1 TEE; A's order cancelled"
    );
    assert_eq!(stats.in_flight, 0);
    assert_eq!(pos.histogram().len(), 6);

    // The stream holds exactly the six commands this till sent.
    let warehouse = warehouse.finish();
    let last_seq = warehouse.replica().last_seq();
    let commands = read_stream(&spec.consumer_config(), last_seq, LONG)
        .into_iter()
        .filter(|(_, bytes)| {
            let message = Message::parse(bytes).unwrap();
            message.is_command() && message.header().origin.get() == pos.origin()
        })
        .count();
    assert_eq!(commands, 6);
    assert!(pos.catch_up(last_seq, LONG).unwrap());
    assert_eq!(pos.replica().digest(), warehouse.digest());
}

/// Scarce stock: 3 stores × 4 SKUs, 54 units.
const SCARCE: &str = "\
location,sku_symbol,quantity
NORTH,MUG,6
NORTH,TEE,4
NORTH,CAP,3
NORTH,SOCK,5
SOUTH,MUG,3
SOUTH,TEE,6
SOUTH,CAP,5
SOUTH,SOCK,2
EAST,MUG,4
EAST,TEE,5
EAST,CAP,7
EAST,SOCK,4
";
const SCARCE_UNITS: u64 = 54;

/// Three tills in load mode race for `SCARCE` for a few seconds; checks
/// oversell, outcomes, replica equality.
fn tills_race_for_scarce_stock(id: u8, loss_ratio: f64) {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, id, dir.path());
    let _appliance = spec.start().unwrap();
    let warehouse = WarehouseThread::start(&spec, SCARCE);
    let stop = Arc::new(AtomicBool::new(false));
    let load_ends = Instant::now() + Duration::from_secs(15);
    let tills: Vec<JoinHandle<Pos>> = ["pos1", "pos2", "pos3"]
        .into_iter()
        .enumerate()
        .map(|(i, username)| {
            let mut config = pos_config(&spec, username);
            let mut load = LoadConfig::new(1000 + i as u64);
            load.rate_per_sec = 400;
            load.ttl_ms_min = 20;
            load.ttl_ms_max = 300;
            // More holds than confirms and releases: some expire.
            load.mix = "order=40,modify=10,cancel=15,reserve=20,confirm=5,release=3"
                .parse()
                .unwrap();
            let mut load = LoadGenerator::new(load).unwrap();
            if loss_ratio > 0.0 {
                config.consumer.loss = Some((77 + i as u64, loss_ratio));
            }
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut pos = Pos::new(config).unwrap();
                assert!(pos.wait_ready(LONG).unwrap(), "ready");
                // A few seconds of load from when this till is ready.
                let until = (Instant::now() + Duration::from_secs(3)).min(load_ends);
                let drained = load.run(&mut pos, &stop, Some(until), |_| {}).unwrap();
                assert!(drained, "every command answered ({:?})", pos.stats());
                pos
            })
        })
        .collect();
    let tills: Vec<Pos> = tills.into_iter().map(|t| t.join().unwrap()).collect();
    let warehouse = warehouse.finish();
    let final_seq = warehouse.replica().last_seq();
    assert_eq!(warehouse.in_flight(), 0);

    // Every till: exactly one outcome per command, no oversell, and the
    // warehouse's state at the same seq.
    let mut units_sold = 0i64;
    let mut holds_expired = 0;
    let mut rtt = rtt_histogram();
    for mut pos in tills {
        let stats = pos.stats();
        println!("pos {}: {stats:?}", pos.origin());
        assert!(stats.sent.total() > 100, "load was sent: {stats:?}");
        assert_eq!(stats.outcomes, stats.sent.total());
        assert_eq!(stats.in_flight, 0);
        assert_eq!(stats.duplicate_outcomes, 0);
        assert_eq!(stats.gateway_rejected, 0);
        assert!(stats.filled > 0);
        assert!(stats.skipped_would_fail > 0, "scarce stock: some skipped");
        assert_eq!(pos.histogram().len(), stats.outcomes, "RTT of each");
        assert!(pos.histogram().max() > 0);
        rtt.add(pos.histogram()).unwrap();
        units_sold += stats.units_sold;
        holds_expired += stats.holds_expired;
        assert!(
            pos.catch_up(final_seq, LONG).unwrap(),
            "till reaches the final seq"
        );
        assert_eq!(pos.replica().last_seq(), final_seq);
        assert_eq!(
            pos.replica().digest(),
            warehouse.digest(),
            "pos {} agrees with the warehouse at seq {final_seq}",
            pos.origin()
        );
        assert_eq!(pos.replica().oversold(), 0);
        if loss_ratio > 0.0 {
            let consumer = pos.consumer().stats();
            assert!(consumer.datagrams_dropped_by_loss_filter > 0);
            assert!(consumer.recovered() > 0, "gaps were filled: {consumer:?}");
        }
        pos.logout();
    }
    assert!(!rtt.is_empty());
    assert!(
        holds_expired > 0,
        "the warehouse expired some of the tills' holds"
    );
    println!(
        "rtt p50 {} µs p99 {} µs over {}",
        rtt.value_at_quantile(0.5) / 1000,
        rtt.value_at_quantile(0.99) / 1000,
        rtt.len()
    );

    // Never more sold than existed; what the tills count as sold is exactly
    // what left the shelves.
    let on_hand = units_on_hand(warehouse.replica());
    assert_eq!(warehouse.replica().oversold(), 0);
    assert!(units_sold >= 0 && units_sold as u64 <= SCARCE_UNITS);
    assert_eq!(units_sold as u64, SCARCE_UNITS - on_hand);

    // Independently, from the stream itself: each till command has exactly
    // one answer.
    let stream = read_stream(&spec.consumer_config(), final_seq, LONG);
    let mut replica = Replica::new(ReplicaLimits::small());
    let mut answers: HashMap<u64, u32> = HashMap::new();
    let mut commands: Vec<u64> = Vec::new();
    let tills_origins = ["pos1", "pos2", "pos3"].map(|name| demo_client(name).client_id);
    for (seq, bytes) in &stream {
        let message = Message::parse(bytes).unwrap();
        if message.is_command() && tills_origins.contains(&message.header().origin.get()) {
            commands.push(*seq);
        }
        if let Applied::Event {
            answers: Some(cmd_seq),
        } = replica.apply(*seq, &message)
        {
            *answers.entry(cmd_seq).or_default() += 1;
        }
    }
    assert!(!commands.is_empty());
    for seq in &commands {
        assert_eq!(answers.get(seq), Some(&1), "command at {seq}: one outcome");
    }
    assert_eq!(replica.digest(), warehouse.digest());
}

#[test]
fn tills_racing_for_scarce_stock_never_oversell_and_agree_with_the_warehouse() {
    tills_race_for_scarce_stock(2, 0.0);
}

#[test]
fn tills_agree_with_the_warehouse_with_5_percent_loss_on_their_receivers() {
    tills_race_for_scarce_stock(3, 0.05);
}

/// Plenty of stock: orders keep filling for the whole run.
const PLENTY: &str = "\
location,sku_symbol,quantity
NORTH,MUG,100000
NORTH,TEE,100000
SOUTH,MUG,100000
SOUTH,CAP,100000
";

#[test]
fn the_till_thread_does_not_allocate_in_load_mode() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, 6, dir.path());
    let _appliance = spec.start().unwrap();
    let warehouse = WarehouseThread::start(&spec, PLENTY);
    let mut config = pos_config(&spec, "pos1");
    let mut load = LoadConfig::new(6);
    load.rate_per_sec = 2000;
    load.ttl_ms_min = 20;
    load.ttl_ms_max = 200;
    let mut load = LoadGenerator::new(load).unwrap();
    // Gap fill only: a replay fallback opens a connection, which allocates.
    config.consumer.re_request_retries = 1_000;
    config.consumer.replay_gap_messages = u64::MAX;
    let mut pos = Pos::new(config).unwrap();
    assert!(pos.wait_ready(LONG).unwrap());
    // Warm up: the first commands, outcomes, holds and expiries.
    let stop = AtomicBool::new(false);
    load.run_load(
        &mut pos,
        &stop,
        Some(Instant::now() + Duration::from_millis(500)),
        |_| {},
    )
    .unwrap();
    let before_stats = pos.stats();

    let (_boxed, seen) = tally_runtime::alloc_count::counting(|| Box::new(7u64));
    assert_eq!(seen, 1, "the counting allocator is installed");
    let before = armed_allocations();
    arm_current_thread();
    let mut ticks = 0;
    load.run_load(
        &mut pos,
        &stop,
        Some(Instant::now() + Duration::from_secs(2)),
        |pos| {
            ticks += 1;
            pos.reset_interval();
        },
    )
    .unwrap();
    let drained = pos.drain(LONG).unwrap();
    disarm_current_thread();
    let allocations = armed_allocations() - before;

    let stats = pos.stats();
    assert!(drained);
    assert!(ticks >= 1);
    let sent = stats.sent.total() - before_stats.sent.total();
    assert!(sent > 1000, "{stats:?}");
    assert!(stats.sent.modify > 0 && stats.sent.confirm > 0 && stats.sent.release > 0);
    assert!(stats.holds_placed > 0 && stats.filled > 0);
    assert_eq!(
        pos.consumer().stats().replay_recoveries(),
        1,
        "the late join only"
    );
    assert_eq!(allocations, 0, "allocations on the till's thread");
    pos.logout();
    warehouse.finish();
}

// ---------------------------------------------------------------------------
// The load generator's binary: tally-bench --scenario till-load.

fn write_config(spec: &ApplianceSpec, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tally.toml");
    std::fs::write(&path, spec.toml()).unwrap();
    path
}

fn till_load(config: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(tally_demo::bin("tally-bench"));
    command
        .args(["--scenario", "till-load"])
        .arg("--config")
        .arg(config)
        .args(["--user", "pos2", "--password", "pos2pass"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn check_summary(summary: &serde_json::Value) {
    let sent = summary["sent"].as_u64().unwrap();
    assert!(sent > 0, "{summary}");
    assert_eq!(summary["outcomes"].as_u64(), Some(sent), "{summary}");
    assert_eq!(summary["drained"], true);
    assert_eq!(summary["origin"], 11);
    assert_eq!(summary["oversold"], 0);
    for field in ["rtt_p50_us", "rtt_p99_us", "rtt_p999_us", "rtt_max_us"] {
        assert!(summary[field].as_f64().unwrap() > 0.0, "{field}: {summary}");
    }
    assert!(summary["final_seq"].as_u64().unwrap() > sent);
}

#[test]
fn till_load_runs_for_its_seconds_and_prints_a_json_summary() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, 4, dir.path());
    let _appliance = spec.start().unwrap();
    let warehouse = WarehouseThread::start(&spec, SCARCE);
    let config = write_config(&spec, dir.path());
    let output = till_load(
        &config,
        &["--rate", "300", "--seconds", "2", "--json", "--loss", "5"],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("sent/s="), "per-second lines: {stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    check_summary(&summary);
    assert!(
        summary["datagrams_dropped_by_loss_filter"]
            .as_u64()
            .unwrap()
            > 0
    );
    warehouse.finish();
}

#[test]
fn till_load_stops_cleanly_on_sigterm_with_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, 5, dir.path());
    let _appliance = spec.start().unwrap();
    let warehouse = WarehouseThread::start(&spec, SCARCE);
    let config = write_config(&spec, dir.path());
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let counters = dir.path().join("pos2.counters");
    let mut child = till_load(
        &config,
        &[
            "--seconds",
            "0",
            "--rate",
            "200",
            "--json",
            "--counters",
            counters.to_str().unwrap(),
        ],
    )
    .env("NOTIFY_SOCKET", &notify_path)
    .spawn()
    .unwrap();
    // Wait for the first per-second line, then SIGTERM.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + LONG;
    loop {
        assert!(Instant::now() < deadline, "no per-second line: {seen}");
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "exited early: {seen}"
        );
        seen.push_str(&line);
        if line.contains("sent/s=") {
            break;
        }
    }
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{seen}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    check_summary(&summary);

    // systemd heard READY=1, a status line and STOPPING=1, in that order.
    notify.set_nonblocking(true).unwrap();
    let mut notes = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        notes.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let position = |what: &str| {
        notes
            .iter()
            .position(|note| note.starts_with(what))
            .unwrap_or_else(|| panic!("{what} in {notes:?}"))
    };
    assert!(position("READY=1") < position("STATUS="));
    assert!(position("STATUS=") < position("STOPPING=1"));

    // tally-stat sees its counters: the final values are the summary's.
    let reader = CounterReader::open(&counters).unwrap();
    let values: HashMap<String, u64> = reader
        .read()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    assert_eq!(
        values["pos.commands_sent"],
        summary["sent"].as_u64().unwrap()
    );
    assert_eq!(
        values["pos.outcomes"],
        summary["outcomes"].as_u64().unwrap()
    );
    assert_eq!(values["pos.commands_active"], 0);
    assert!(values["consumer.messages_delivered"] > 0);
    assert!(values["client.acks_accepted"] > 0);
    warehouse.finish();
}

#[test]
fn till_load_help_names_its_options() {
    let output = Command::new(tally_demo::bin("tally-bench"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--config",
        "--user",
        "--password",
        "--rate",
        "--seconds",
        "--json",
        "--loss",
        "--seed",
        "--mix",
        "till-load",
    ] {
        assert!(help.contains(option), "{option} in {help}");
    }
}
