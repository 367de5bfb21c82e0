//! A shop's day (issue 12): trading across three sessions, rolled over by
//! SIGUSR1 to the real `tally-sequencer` binary while orders flow. The
//! warehouse (in this thread) carries its state from one session to the
//! next and broadcasts it; two replicas follow each new session by
//! themselves. After each rollover every replica's digest equals the
//! warehouse's, and the stock equals the inventory file plus every decision
//! (`D`) of every session. Nothing is restarted but the appliance's session.
//!
//! Test ids (block 100): 101.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tally_client::client::{ClientError, ClientEvent, OrderEntryClient};
use tally_client::consumer::{monotonic_ns, StreamConsumer};
use tally_client::follow::SessionFollower;
use tally_client::replica::{Replica, ReplicaLimits};
use tally_demo::{bin, demo_client, ApplianceSpec};
use tally_warehouse::app::{WarehouseApp, WarehouseAppConfig};
use tally_wire::mold::Session;
use tally_wire::{
    delta_reason, directory_kind, pad_ascii, system_code, Adjust, DirectoryAdd, Message, Order,
};

/// Kills the child on drop (pass or fail).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const INVENTORY: &str = "location,sku_symbol,quantity\n\
STORE-A,MUG,400\n\
STORE-A,TEE,400\n\
STORE-B,MUG,300\n";

/// A replica that follows every session, and the `D` deltas it saw.
struct FollowingReplica {
    follower: SessionFollower,
    consumer: StreamConsumer,
    replica: Replica,
    /// (location, sku) → sum of every `D` of every session.
    deltas: HashMap<(u16, u32), i64>,
    sessions: Vec<Session>,
    authority_online: bool,
}

impl FollowingReplica {
    fn new(spec: &ApplianceSpec) -> FollowingReplica {
        let mut config = spec.consumer_config();
        config.session = Session::BLANK;
        FollowingReplica {
            follower: SessionFollower::new(config.clone()),
            consumer: StreamConsumer::new(&config).unwrap(),
            replica: Replica::new(ReplicaLimits::small()),
            deltas: HashMap::new(),
            sessions: Vec::new(),
            authority_online: false,
        }
    }

    fn poll(&mut self) {
        let replica = &mut self.replica;
        let deltas = &mut self.deltas;
        let online = &mut self.authority_online;
        self.consumer
            .poll(monotonic_ns(), |seq, message| {
                match &message {
                    Message::OnHandDelta(d) => {
                        *deltas.entry((d.location.get(), d.sku.get())).or_default() +=
                            i64::from(d.delta.get());
                    }
                    Message::SystemEvent(s) if s.code == system_code::AUTHORITY_ONLINE => {
                        *online = true
                    }
                    _ => {}
                }
                replica.apply(seq, &message);
            })
            .unwrap();
        if let Some(next) = self.follower.follow(&mut self.consumer).unwrap() {
            self.replica.clear();
            self.authority_online = false;
            self.sessions.push(next);
        }
    }
}

fn write_config(dir: &Path, spec: &ApplianceSpec) -> std::path::PathBuf {
    let path = dir.join("tally.toml");
    // A short grace: the warehouse answers S(E) at once here.
    let toml = spec.toml().replace(
        "heartbeat_interval_ms = 200\n",
        "heartbeat_interval_ms = 200\nclose_grace_ms = 20000\n",
    );
    std::fs::write(&path, toml).unwrap();
    path
}

/// Logs in as pos1 to whatever session is current, retrying while the
/// appliance rolls over.
fn pos_client(spec: &ApplianceSpec, session: Session) -> OrderEntryClient {
    let mut config = spec.client_config("pos1");
    config.session = session;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match OrderEntryClient::connect(config.clone(), Duration::from_secs(2)) {
            Ok(client) => return client,
            Err(error) if Instant::now() < deadline => {
                eprintln!("pos1 waiting for session {session}: {error}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("pos1 cannot log in to {session}: {error}"),
        }
    }
}

#[test]
fn a_day_of_three_sessions_rolls_over_under_load_and_keeps_the_stock() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(100, 101, dir.path().join("journal"));
    let config_path = write_config(dir.path(), &spec);
    let inventory = dir.path().join("inventory.csv");
    std::fs::write(&inventory, INVENTORY).unwrap();
    let sequencer = ChildGuard(
        Command::new(bin("tally-sequencer"))
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tally-sequencer"),
    );
    let pid = sequencer.0.id() as libc::pid_t;

    let mut consumer_config = spec.consumer_config();
    consumer_config.session = Session::BLANK;
    let wh = demo_client("wh");
    let mut warehouse = WarehouseApp::start(WarehouseAppConfig {
        consumer: consumer_config,
        client: spec.client_config("wh"),
        own_origin: wh.client_id,
        limits: ReplicaLimits::small(),
        inventory: Some(inventory),
        snapshot: Some(dir.path().join("warehouse.snapshot")),
        snapshot_interval: Duration::from_millis(300),
        expiry_check_interval: Duration::from_millis(50),
        catch_up_timeout: Duration::from_secs(30),
    })
    .expect("the warehouse starts");
    let mut replicas = [FollowingReplica::new(&spec), FollowingReplica::new(&spec)];
    let first = Session::from_str(&spec.session).unwrap();
    let mut session = first;
    let mut pos = pos_client(&spec, session);
    let mut orders_sent = 0u64;
    let mut ctl: Option<ChildGuard> = None;
    let mut session_ends = 0;

    for day_part in 0..3 {
        // Trade: orders for both SKUs of STORE-A and for "any location",
        // while the warehouse decides and the replicas follow.
        let rollover_at = Instant::now() + Duration::from_millis(700);
        let mut rollover_sent = day_part == 2; // the last session is not ended
        let trading_until = Instant::now() + Duration::from_millis(1_200);
        let mut ended = false;
        while Instant::now() < trading_until || (rollover_sent && !ended && day_part < 2) {
            if !ended {
                let sku = 1 + (orders_sent % 2) as u32;
                let location = if orders_sent % 3 == 0 { 0 } else { 1 };
                let order =
                    Order::new(orders_sent + 1, location, sku, 1 + (orders_sent % 3) as u32);
                match pos.queue(order.as_bytes()) {
                    Ok(_) => orders_sent += 1,
                    Err(ClientError::WindowFull | ClientError::Disconnected) => {}
                    // The session ended (or, reconnecting, is no more).
                    Err(ClientError::SessionEnded | ClientError::LoginRejected(b'S')) => {
                        ended = true
                    }
                    Err(error) => panic!("pos1: {error}"),
                }
                pos.flush();
                pos.poll(monotonic_ns(), |event| {
                    if let ClientEvent::Closed(
                        ClientError::SessionEnded | ClientError::LoginRejected(b'S'),
                    ) = event
                    {
                        ended = true;
                    }
                });
            }
            if !rollover_sent && Instant::now() >= rollover_at {
                if day_part == 0 {
                    // SAFETY: kill(2) on our own child, not yet waited for.
                    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
                } else {
                    // The runbook's one command, run while trading goes on.
                    ctl = Some(ChildGuard(
                        Command::new(bin("tally-ctl"))
                            .arg("--config")
                            .arg(&config_path)
                            .args(["session", "end"])
                            .stdout(Stdio::piped())
                            .stderr(Stdio::piped())
                            .spawn()
                            .expect("start tally-ctl"),
                    ));
                }
                rollover_sent = true;
            }
            warehouse.poll().expect("the warehouse decides");
            for replica in &mut replicas {
                replica.poll();
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        if day_part == 2 {
            break;
        }
        session_ends += 1;
        session = session.successor().unwrap();
        if let Some(mut ctl) = ctl.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while ctl.0.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "tally-ctl session end returned");
                warehouse.poll().expect("the warehouse decides");
                std::thread::sleep(Duration::from_millis(1));
            }
            let child = std::mem::replace(&mut ctl.0, Command::new("true").spawn().unwrap());
            let output = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert_eq!(
                stdout.trim_end(),
                format!("rolled over: session {session} running (sequencer pid {pid})")
            );
        }
        // The till follows the next session too (numbering from 1 again).
        pos = pos_client(&spec, session);
        // Wait until the warehouse broadcast the carried state, every
        // replica is in the new session with it, and all agree.
        wait_until_agreed(&mut warehouse, &mut replicas, session);
        assert_eq!(warehouse.consumer().session(), session);
        if day_part == 0 {
            add_a_sku_and_sell_it(&spec, session, &mut warehouse, &mut replicas, &mut pos);
        }
    }
    wait_until_agreed(&mut warehouse, &mut replicas, session);

    assert_eq!(session_ends, 2);
    assert!(orders_sent > 100, "under load: {orders_sent} orders");
    let stock = warehouse.engine().replica();
    // SKU 3 (SCARF) was added in the second session, stocked with 50 and
    // sold from: carried into the third by the broadcast like the others.
    let opening: [((u16, u32), i64); 4] =
        [((1, 1), 400), ((1, 2), 400), ((2, 1), 300), ((1, 3), 0)];
    for replica in &replicas {
        assert_eq!(replica.sessions.len(), 2, "{:?}", replica.sessions);
        let mut decided = 0;
        for ((location, sku), open) in opening {
            let delta = replica.deltas.get(&(location, sku)).copied().unwrap_or(0);
            decided += delta;
            let cell = stock.cell(location, sku).expect("a cell of the file");
            assert_eq!(
                i64::from(cell.on_hand),
                open + delta,
                "({location}, {sku}): the file's {open} plus every decision of all sessions"
            );
            let own = replica.replica.cell(location, sku).unwrap();
            assert_eq!(own.on_hand, cell.on_hand);
        }
        assert!(decided < 0, "some orders were filled");
        assert_eq!(replica.deltas.len(), 4, "no delta on another cell");
        assert_eq!(replica.replica.sku_by_symbol("SCARF"), Some(3));
    }
    // The ended sessions' journals are kept and readable.
    for name in [first, first.successor().unwrap()] {
        let journal = spec.journal_dir.join(format!("{}.journal", name.as_str()));
        let output = Command::new(bin("tally-journal"))
            .arg("verify")
            .arg(&journal)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            journal.display(),
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

/// Mid-session, `ops1` adds the SKU SCARF (the warehouse picks id 3) and
/// restocks 50 at STORE-A; the till sells 3 of it at once; every replica
/// sees each step.
fn add_a_sku_and_sell_it(
    spec: &ApplianceSpec,
    session: Session,
    warehouse: &mut WarehouseApp,
    replicas: &mut [FollowingReplica],
    pos: &mut OrderEntryClient,
) {
    let mut ops_config = spec.client_config("ops1");
    ops_config.session = session;
    let mut ops = OrderEntryClient::connect(ops_config, Duration::from_secs(10)).unwrap();
    let scarf = pad_ascii::<16>("SCARF").unwrap();
    ops.send(DirectoryAdd::new(directory_kind::SKU, 0, scarf).as_bytes())
        .unwrap();
    pump_until(warehouse, replicas, &mut [&mut ops], |r| {
        r.sku_by_symbol("SCARF") == Some(3)
    });
    ops.send(Adjust::new(1, 3, 50, delta_reason::ADJUST).as_bytes())
        .unwrap();
    pump_until(warehouse, replicas, &mut [&mut ops], |r| {
        r.cell(1, 3).is_some_and(|cell| cell.on_hand == 50)
    });
    pos.send(Order::new(1_000_000, 1, 3, 3).as_bytes()).unwrap();
    pump_until(warehouse, replicas, &mut [&mut ops, pos], |r| {
        r.cell(1, 3).is_some_and(|cell| cell.on_hand == 47)
    });
}

/// Polls the warehouse and the replicas until `done` holds for every
/// replica (the test's deadline: 20 s).
fn pump_until(
    warehouse: &mut WarehouseApp,
    replicas: &mut [FollowingReplica],
    clients: &mut [&mut OrderEntryClient],
    done: impl Fn(&Replica) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replicas.iter().all(|replica| done(&replica.replica)) {
        assert!(
            Instant::now() < deadline,
            "not seen by every replica in 20 s: warehouse {:?}, replicas at {:?}",
            warehouse.stats(),
            replicas
                .iter()
                .map(|r| (r.consumer.delivered_seq(), r.replica.sku_count()))
                .collect::<Vec<_>>()
        );
        warehouse.poll().expect("the warehouse decides");
        for replica in replicas.iter_mut() {
            replica.poll();
        }
        for client in clients.iter_mut() {
            client.poll(monotonic_ns(), |_| {});
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Polls everything until the warehouse is live and quiet in `session` and
/// every replica has followed it to the same seq with the same digest.
fn wait_until_agreed(
    warehouse: &mut WarehouseApp,
    replicas: &mut [FollowingReplica],
    session: Session,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        warehouse.poll().expect("the warehouse decides");
        for replica in replicas.iter_mut() {
            replica.poll();
        }
        let seq = warehouse.consumer().delivered_seq();
        let agreed = warehouse.consumer().session() == session
            && warehouse.is_quiet()
            && warehouse.engine().replica().authority_online_seq() > 0
            && replicas.iter().all(|replica| {
                replica.consumer.session() == session
                    && replica.authority_online
                    && replica.consumer.delivered_seq() == seq
                    && replica.replica.digest() == warehouse.engine().digest()
            });
        if agreed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no agreement in {session}: warehouse at {seq} in {}, quiet {}; replicas {:?}",
            warehouse.consumer().session(),
            warehouse.is_quiet(),
            replicas
                .iter()
                .map(|r| (
                    r.consumer.session().to_string(),
                    r.consumer.delivered_seq(),
                    r.replica.digest() == warehouse.engine().digest()
                ))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
