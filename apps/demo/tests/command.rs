//! The foundation's command client (`tally_client::command`) against the
//! whole appliance in-process and the real warehouse deciding: every command
//! accepted and rejected with the numbers that explain it, decisions matched
//! to commands while many are in flight, and the errors a person meets
//! (wrong password, unreachable appliance, a role that may not send).
//!
//! Test block 100, ids 1..=10 (the `ctl` range is 1..=50). Every wait has a
//! deadline.

use std::path::Path;
use std::time::Duration;

use tally_client::command::{
    AdjustReason, CommandClient, CommandConfig, CommandError, Decision, Effect, RejectedBy, Spec,
    Verdict,
};
use tally_client::credentials::Credentials;
use tally_client::replica::ReplicaLimits;
use tally_demo::{demo_client, ApplianceSpec, RunningAppliance, RunningWarehouse};

const BLOCK: u8 = 100;
const TIMEOUT: Duration = Duration::from_secs(20);

/// STORE-A = 1, STORE-B = 2; MUG = 1, TEE = 2 (order of first appearance).
const INVENTORY: &str = "\
location,sku_symbol,quantity
STORE-A,MUG,10
STORE-B,MUG,5
STORE-A,TEE,3
";

struct Stack {
    spec: ApplianceSpec,
    warehouse: RunningWarehouse,
    _appliance: RunningAppliance,
}

fn start(id: u8, dir: &Path) -> Stack {
    let spec = ApplianceSpec::for_test(BLOCK, id, dir.join("journal"));
    let appliance = spec.start().expect("start the appliance");
    let inventory = dir.join("inventory.csv");
    std::fs::write(&inventory, INVENTORY).unwrap();
    let warehouse = RunningWarehouse::start(&spec, &inventory, ReplicaLimits::small());
    Stack {
        spec,
        warehouse,
        _appliance: appliance,
    }
}

fn credentials(user: &str) -> Credentials {
    let client = demo_client(user);
    Credentials {
        username: client.username.into(),
        password: client.password.into(),
    }
}

/// A command client for `user`, retried while the warehouse is still
/// coming online (its session-start broadcast).
fn connect(stack: &Stack, user: &str) -> CommandClient {
    let spec = &stack.spec;
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let config = CommandConfig::for_appliance(&spec.config(), &credentials(user)).unwrap();
        match CommandClient::connect(config) {
            Ok(client) => return client,
            Err(CommandError::WarehouseOffline)
                if std::time::Instant::now() < deadline && !stack.warehouse.is_finished() =>
            {
                std::thread::sleep(Duration::from_millis(50)); // waiting for S(W), with a deadline
            }
            Err(error) => panic!("connect as {user}: {error}"),
        }
    }
}

fn run(client: &mut CommandClient, spec: Spec) -> Decision {
    let request = client
        .resolve(&spec)
        .unwrap_or_else(|e| panic!("{spec:?}: {e}"));
    client
        .execute(&request, TIMEOUT)
        .unwrap_or_else(|e| panic!("{spec:?}: {e}"))
}

fn rejected(decision: &Decision) -> (u8, Option<u32>, Option<u64>) {
    match decision.verdict {
        Verdict::Rejected(r) => (r.reason, r.available, r.current_version),
        Verdict::Accepted { .. } => panic!("expected a rejection: {decision}"),
    }
}

#[test]
fn every_command_is_decided_accepted_and_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(1, dir.path());
    let mut pos = connect(&stack, "pos1");
    // Use ids no earlier run of this session used.
    let base = u64::from(pos.next_client_seq()) * 1000;

    let order = |id, qty, location: Option<&str>| Spec::Order {
        id,
        sku: "MUG".into(),
        qty,
        location: location.map(Into::into),
    };
    let filled = run(&mut pos, order(base + 1, 4, Some("STORE-A")));
    assert!(filled.is_accepted(), "{filled}");
    let Verdict::Accepted { effect, cells } = filled.verdict else {
        unreachable!()
    };
    assert_eq!(effect, Effect::Filled { delta: -4 });
    let cell = cells[0].unwrap();
    assert_eq!((cell.location, cell.on_hand, cell.available), (1, 6, 6));
    assert_eq!(cell.version, filled.seq, "the fill is the cell's version");
    assert!(filled.seq > filled.cmd_seq);
    let text = filled.to_string();
    assert!(
        text.starts_with(&format!("filled seq={} ", filled.seq)),
        "{text}"
    );
    assert!(text.contains("on_hand=6"), "{text}");

    let short = run(&mut pos, order(base + 2, 7, Some("STORE-A")));
    assert_eq!(rejected(&short), (b'I', Some(6), None));
    assert_eq!(
        short.to_string(),
        "rejected: insufficient stock (available 6)"
    );
    let anywhere = run(&mut pos, order(base + 3, 9, None));
    assert_eq!(
        rejected(&anywhere),
        (b'I', Some(6), None),
        "the most at one location"
    );
    let duplicate = run(&mut pos, order(base + 1, 1, Some("STORE-B")));
    assert_eq!(rejected(&duplicate).0, b'D');

    let modified = run(
        &mut pos,
        Spec::Modify {
            id: base + 1,
            qty: 2,
        },
    );
    assert!(
        matches!(
            modified.verdict,
            Verdict::Accepted {
                effect: Effect::Modified { delta: 2 },
                ..
            }
        ),
        "{modified}"
    );
    let cancelled = run(&mut pos, Spec::Cancel { id: base + 1 });
    assert!(
        matches!(
            cancelled.verdict,
            Verdict::Accepted {
                effect: Effect::Cancelled { delta: 2 },
                ..
            }
        ),
        "{cancelled}"
    );
    let gone = run(&mut pos, Spec::Cancel { id: base + 99 });
    assert_eq!(rejected(&gone).0, b'N');

    let hold = |id, qty| Spec::Hold {
        id,
        sku: "TEE".into(),
        qty,
        location: "STORE-A".into(),
        ttl_ms: 60_000,
    };
    let held = run(&mut pos, hold(base + 10, 2));
    let Verdict::Accepted {
        effect: Effect::Held { qty: 2, .. },
        cells,
    } = held.verdict
    else {
        panic!("{held}")
    };
    assert_eq!(
        (cells[0].unwrap().reserved, cells[0].unwrap().available),
        (2, 1)
    );
    assert_eq!(
        rejected(&run(&mut pos, hold(base + 11, 2))),
        (b'I', Some(1), None)
    );
    let confirmed = run(&mut pos, Spec::Confirm { id: base + 10 });
    let Verdict::Accepted {
        effect: Effect::Confirmed { delta: -2 },
        cells,
    } = confirmed.verdict
    else {
        panic!("{confirmed}")
    };
    assert_eq!(
        (cells[0].unwrap().on_hand, cells[0].unwrap().reserved),
        (1, 0)
    );
    assert_eq!(
        rejected(&run(&mut pos, Spec::Confirm { id: base + 10 })).0,
        b'N'
    );
    let held = run(&mut pos, hold(base + 12, 1));
    assert!(held.is_accepted(), "{held}");
    let released = run(&mut pos, Spec::Release { id: base + 12 });
    assert!(
        matches!(
            released.verdict,
            Verdict::Accepted {
                effect: Effect::Released { qty: 1 },
                ..
            }
        ),
        "{released}"
    );
    assert_eq!(
        rejected(&run(&mut pos, Spec::Release { id: base + 12 })).0,
        b'N'
    );

    // The role is checked before anything is sent.
    let transfer = |id, qty| Spec::Transfer {
        id,
        sku: "MUG".into(),
        qty,
        from: "STORE-A".into(),
        to: "STORE-B".into(),
    };
    match pos.resolve(&transfer(1, 1)) {
        Err(CommandError::NotPermitted(text)) => assert!(text.contains("role pos"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        pos.resolve(&order(1, 1, Some("NOWHERE"))),
        Err(CommandError::Resolve(_))
    ));

    let mut ops = connect(&stack, "ops1");
    let moved = run(&mut ops, transfer(base + 20, 1));
    let Verdict::Accepted {
        effect: Effect::Transferred { qty: 1 },
        cells,
    } = moved.verdict
    else {
        panic!("{moved}")
    };
    let (from, to) = (cells[0].unwrap(), cells[1].unwrap());
    assert_eq!(
        (from.location, from.on_hand, to.location, to.on_hand),
        (1, 9, 2, 6),
        "{moved}"
    );
    let too_many = transfer(base + 21, 100);
    assert_eq!(rejected(&run(&mut ops, too_many)), (b'I', Some(9), None));

    let version = from.version;
    let recount = |expected_version| Spec::Recount {
        sku: "MUG".into(),
        location: "STORE-A".into(),
        on_hand: 8,
        expected_version,
    };
    let stale = run(&mut ops, recount(version - 1));
    assert_eq!(rejected(&stale), (b'V', None, Some(version)));
    assert_eq!(
        stale.to_string(),
        format!("rejected: version conflict (current version {version})")
    );
    let counted = run(&mut ops, recount(version));
    let Verdict::Accepted {
        effect: Effect::Recounted { on_hand: 8 },
        cells,
    } = counted.verdict
    else {
        panic!("{counted}")
    };
    assert_eq!(cells[0].unwrap().version, counted.seq);

    let adjust = |qty, reason| Spec::Adjust {
        sku: "MUG".into(),
        location: "STORE-A".into(),
        qty,
        reason,
    };
    for (reason, delta, on_hand) in [
        (AdjustReason::Restock, 5i32, 13),
        (AdjustReason::Return, 1, 14),
        (AdjustReason::Shrink, -4, 10),
    ] {
        let adjusted = run(&mut ops, adjust(delta.unsigned_abs() as u64, reason));
        let Verdict::Accepted {
            effect: Effect::Adjusted { delta: d },
            cells,
        } = adjusted.verdict
        else {
            panic!("{adjusted}")
        };
        assert_eq!(
            (d, cells[0].unwrap().on_hand),
            (delta, on_hand),
            "{reason:?}"
        );
    }
    assert_eq!(
        rejected(&run(&mut ops, adjust(11, AdjustReason::Shrink))),
        (b'I', Some(10), None)
    );
}

#[test]
fn pipelined_commands_each_get_their_own_decision() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(2, dir.path());
    let mut pos = connect(&stack, "pos2");
    let base = u64::from(pos.next_client_seq()) * 100_000;
    // 15 units of MUG: 20 one-unit orders, 15 fill and 5 are refused.
    let mut sent = Vec::new();
    for i in 0..20u64 {
        let spec = Spec::Order {
            id: base + i,
            sku: "MUG".into(),
            qty: 1,
            location: None,
        };
        let request = pos.resolve(&spec).unwrap();
        while !pos.has_room() {
            pos.wait(Duration::from_millis(5), |_| {}).unwrap();
        }
        sent.push(pos.submit(&request).unwrap());
    }
    let mut decisions = Vec::new();
    assert!(
        pos.drain(TIMEOUT, |d| decisions.push(d)).unwrap(),
        "all decided"
    );
    decisions.sort_by_key(|d| d.client_seq);
    assert_eq!(
        decisions.iter().map(|d| d.client_seq).collect::<Vec<_>>(),
        sent
    );
    let filled = decisions.iter().filter(|d| d.is_accepted()).count();
    assert_eq!(filled, 15);
    for decision in decisions.iter().filter(|d| !d.is_accepted()) {
        assert_eq!(rejected(decision), (b'I', Some(0), None));
    }
    assert!(decisions
        .iter()
        .all(|d| d.rejection().is_none_or(|r| r.by == RejectedBy::Warehouse)));
}

#[test]
fn refusals_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(3, dir.path());
    let config = stack.spec.config();
    let wrong = Credentials {
        username: "pos1".into(),
        password: "nope".into(),
    };
    match CommandClient::connect(CommandConfig::for_appliance(&config, &wrong).unwrap()) {
        Err(CommandError::LoginRefused { reason: b'A', .. }) => {}
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("logged in with a wrong password"),
    }
    let reader = credentials("read1");
    match CommandConfig::for_appliance(&config, &reader) {
        Err(CommandError::NotPermitted(text)) => assert!(text.contains("role reader"), "{text}"),
        other => panic!("{other:?}"),
    }
    let stranger = Credentials {
        username: "who".into(),
        password: "x".into(),
    };
    let error = CommandConfig::for_appliance(&config, &stranger).unwrap_err();
    assert!(error.to_string().contains("not a client"), "{error}");

    // Nothing listens on block 100 id 4's ports.
    let absent = ApplianceSpec::for_test(BLOCK, 4, dir.path().join("none"));
    let mut config = CommandConfig::for_appliance(&absent.config(), &credentials("pos1")).unwrap();
    config.connect_timeout = Duration::from_millis(500);
    match CommandClient::connect(config) {
        Err(CommandError::Unreachable(text)) => assert!(text.contains("gateway"), "{text}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}
