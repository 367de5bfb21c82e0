//! `tally-ctl`, the real binary, against the whole appliance in-process and
//! the real warehouse deciding: every subcommand accepted and rejected with
//! its documented exit status, `stock`, `order ID` and `watch`, the errors
//! a person meets (no credentials, a wrong password, a role that may not
//! send, an unreachable appliance) and hostile input; and a batch of
//! 100 000 commands killed with SIGKILL half-way and run again applies each
//! exactly once.
//!
//! Test block 100, ids 11..=20 (the `ctl` range is 1..=50). Every wait has
//! a deadline; child processes are killed on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_client::replica::ReplicaLimits;
use tally_demo::{
    bin, demo_client, read_stream, ApplianceSpec, RunningAppliance, RunningWarehouse,
};
use tally_wire::{delta_reason, Message};

const BLOCK: u8 = 100;

/// STORE-A = 1, STORE-B = 2; MUG = 1, TEE = 2.
const INVENTORY: &str = "\
location,sku_symbol,quantity
STORE-A,MUG,10
STORE-B,MUG,5
STORE-A,TEE,3
";

struct Stack {
    spec: ApplianceSpec,
    config: PathBuf,
    dir: PathBuf,
    warehouse: RunningWarehouse,
    _appliance: RunningAppliance,
}

fn start(id: u8, dir: &Path, inventory: &str) -> Stack {
    let spec = ApplianceSpec::for_test(BLOCK, id, dir.join("journal"));
    let appliance = spec.start().expect("start the appliance");
    let inventory_path = dir.join("inventory.csv");
    std::fs::write(&inventory_path, inventory).unwrap();
    let mut limits = ReplicaLimits::small();
    limits.orders_max = 1 << 18;
    limits.pending_max = 1 << 18;
    let warehouse = RunningWarehouse::start(&spec, &inventory_path, limits);
    let config = dir.join("tally.toml");
    std::fs::write(&config, spec.toml()).unwrap();
    let stack = Stack {
        spec,
        config,
        dir: dir.to_path_buf(),
        warehouse,
        _appliance: appliance,
    };
    stack.wait_for_warehouse();
    stack
}

impl Stack {
    /// `tally-ctl ARGS` as `user` (credentials from the environment).
    fn command(&self, user: Option<&str>, args: &[&str]) -> Command {
        let mut command = Command::new(bin("tally-ctl"));
        command
            .arg("--config")
            .arg(&self.config)
            .args(["--timeout-ms", "20000"])
            .args(args)
            .env_remove("TALLY_USER")
            .env_remove("TALLY_PASSWORD")
            .env_remove("TALLY_PASSWORD_FILE")
            .stdin(Stdio::null());
        if let Some(user) = user {
            let client = demo_client(user);
            command
                .env("TALLY_USER", client.username)
                .env("TALLY_PASSWORD", client.password);
        }
        command
    }

    fn ctl(&self, user: Option<&str>, args: &[&str]) -> Run {
        let output = self.command(user, args).output().expect("run tally-ctl");
        Run::from(output)
    }

    /// Until `stock` answers (the warehouse's session start is on the
    /// stream).
    fn wait_for_warehouse(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let run = self.ctl(Some("pos1"), &["--json", "stock", "MUG"]);
            if run.status == 0 {
                return;
            }
            assert!(!self.warehouse.is_finished(), "the warehouse stopped");
            assert!(
                Instant::now() < deadline,
                "no stock after 30 s: {}",
                run.stderr
            );
            std::thread::sleep(Duration::from_millis(50)); // re-ask, with a deadline
        }
    }

    fn stock(&self) -> Value {
        let run = self.ctl(Some("read1"), &["--json", "stock", "MUG"]);
        assert_eq!(run.status, 0, "{}", run.stderr);
        run.json()
    }
}

/// A finished tally-ctl run.
struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            status: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    fn expect(&self, status: i32, stdout_starts: &str) -> &Run {
        assert_eq!(
            self.status, status,
            "status; stdout {:?} stderr {:?}",
            self.stdout, self.stderr
        );
        assert!(
            self.stdout.starts_with(stdout_starts),
            "stdout {:?}, expected {stdout_starts:?}; stderr {:?}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        let line = self.stdout.lines().last().expect("a JSON line");
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }
}

/// Kills the child on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn available_at(stock: &Value, location: u64) -> u64 {
    stock["locations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["location"] == location)
        .map_or(0, |l| l["available"].as_u64().unwrap())
}

#[test]
fn every_subcommand_accepted_and_rejected_with_its_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(11, dir.path(), INVENTORY);
    let pos = Some("pos1");
    let ops = Some("ops1");

    let filled = stack.ctl(
        pos,
        &["order", "MUG", "4", "--at", "STORE-A", "--id", "501"],
    );
    filled.expect(0, "filled seq=");
    assert!(
        filled.stdout.contains("on_hand=6") && filled.stdout.contains("order_id=501"),
        "{}",
        filled.stdout
    );
    stack
        .ctl(pos, &["order", "MUG", "7", "--at", "STORE-A"])
        .expect(10, "rejected: insufficient stock (available 6)");
    stack.ctl(pos, &["order", "NOPE", "1"]).expect(11, "");
    stack
        .ctl(pos, &["order", "MUG", "1", "--at", "NOWHERE"])
        .expect(12, "");
    stack
        .ctl(pos, &["order", "MUG", "1", "--id", "501"])
        .expect(14, "rejected: duplicate id");
    let json = stack.ctl(pos, &["--json", "order", "MUG", "1", "--id", "502"]);
    json.expect(0, "{");
    let value = json.json();
    assert_eq!(value["outcome"], "accepted");
    assert_eq!(value["effect"], "filled");
    assert_eq!(value["delta"], -1);
    assert_eq!(value["exit_status"], 0);
    assert!(value["seq"].as_u64().unwrap() > value["cmd_seq"].as_u64().unwrap());

    let shown = stack.ctl(pos, &["order", "501"]);
    shown.expect(0, "order 501 sku=MUG location=STORE-A qty=4 remaining=4");
    stack.ctl(pos, &["order", "999"]).expect(15, "");
    stack
        .ctl(pos, &["modify", "501", "2"])
        .expect(0, "modified seq=");
    stack
        .ctl(pos, &["modify", "999", "2"])
        .expect(15, "rejected: no such order or hold");
    stack
        .ctl(pos, &["cancel", "501"])
        .expect(0, "cancelled seq=");
    stack.ctl(pos, &["cancel", "501"]).expect(15, "rejected:");
    stack.ctl(pos, &["order", "501"]).expect(
        0,
        "order 501 sku=MUG location=STORE-A qty=4 remaining=0 (cancelled)",
    );

    stack
        .ctl(pos, &["hold", "TEE", "2", "--at", "STORE-A", "--id", "601"])
        .expect(0, "held seq=");
    stack
        .ctl(pos, &["hold", "TEE", "2", "--at", "STORE-A", "--id", "602"])
        .expect(10, "rejected: insufficient stock (available 1)");
    stack
        .ctl(pos, &["confirm", "601"])
        .expect(0, "confirmed seq=");
    stack.ctl(pos, &["confirm", "601"]).expect(15, "rejected:");
    stack
        .ctl(pos, &["hold", "TEE", "1", "--at", "STORE-A", "--id", "603"])
        .expect(0, "held seq=");
    stack
        .ctl(pos, &["release", "603"])
        .expect(0, "released seq=");
    stack.ctl(pos, &["release", "603"]).expect(15, "rejected:");

    // MUG at STORE-A: 10 - 1 (order 502) = 9.
    stack
        .ctl(
            ops,
            &[
                "transfer", "MUG", "2", "--from", "STORE-A", "--to", "STORE-B",
            ],
        )
        .expect(0, "transferred seq=");
    stack
        .ctl(
            ops,
            &[
                "transfer", "MUG", "99", "--from", "STORE-A", "--to", "STORE-B",
            ],
        )
        .expect(10, "rejected: insufficient stock (available 7)");
    let stock = stack.stock();
    assert_eq!((available_at(&stock, 1), available_at(&stock, 2)), (7, 7));
    let version = stock["locations"][0]["version"].as_u64().unwrap();
    let stale = (version - 1).to_string();
    stack
        .ctl(
            ops,
            &[
                "recount",
                "MUG",
                "STORE-A",
                "8",
                "--expected-version",
                &stale,
            ],
        )
        .expect(
            13,
            &format!("rejected: version conflict (current version {version})"),
        );
    stack
        .ctl(
            ops,
            &[
                "recount",
                "MUG",
                "STORE-A",
                "8",
                "--expected-version",
                &version.to_string(),
            ],
        )
        .expect(0, "recounted seq=");
    stack
        .ctl(ops, &["adjust", "restock", "MUG", "5", "--at", "STORE-A"])
        .expect(0, "adjusted seq=");
    stack
        .ctl(ops, &["adjust", "return", "MUG", "1", "--at", "STORE-A"])
        .expect(0, "adjusted seq=");
    stack
        .ctl(ops, &["adjust", "shrink", "MUG", "4", "--at", "STORE-A"])
        .expect(0, "adjusted seq=");
    stack
        .ctl(ops, &["adjust", "shrink", "MUG", "99", "--at", "STORE-A"])
        .expect(10, "rejected: insufficient stock (available 10)");
    stack
        .ctl(ops, &["adjust", "steal", "MUG", "1", "--at", "STORE-A"])
        .expect(2, "");

    let text = stack.ctl(Some("read1"), &["stock", "MUG"]);
    text.expect(0, "MUG (sku 1) available=17");
    assert!(
        text.stdout
            .contains("STORE-A (location 1) on_hand=10 reserved=0 available=10"),
        "{}",
        text.stdout
    );
}

#[test]
fn refusals_name_the_problem_and_exit_with_their_status() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(12, dir.path(), INVENTORY);
    let args = ["order", "MUG", "1"];
    let none = stack.ctl(None, &args);
    none.expect(2, "");
    assert!(
        none.stderr.contains("no user given") && none.stderr.contains("TALLY_USER"),
        "{}",
        none.stderr
    );
    let no_password = stack
        .command(None, &args)
        .env("TALLY_USER", "pos1")
        .output()
        .unwrap();
    let no_password = Run::from(no_password);
    no_password.expect(2, "");
    assert!(
        no_password.stderr.contains("no password given"),
        "{}",
        no_password.stderr
    );

    let password_file = stack.dir.join("wrong-password");
    std::fs::write(&password_file, "wrong\n").unwrap();
    let mut wrong = stack.command(None, &args);
    wrong
        .env("TALLY_USER", "pos1")
        .arg("--password-file")
        .arg(&password_file);
    let wrong = Run::from(wrong.output().unwrap());
    wrong.expect(21, "");
    assert!(wrong.stderr.contains("login refused"), "{}", wrong.stderr);
    let json = stack
        .command(None, &["--json", "order", "MUG", "1"])
        .env("TALLY_USER", "pos1")
        .arg("--password-file")
        .arg(&password_file)
        .output()
        .unwrap();
    let json = Run::from(json);
    assert_eq!(json.json()["exit_status"], 21);

    let reader = stack.ctl(Some("read1"), &args);
    reader.expect(20, "");
    assert!(reader.stderr.contains("role reader"), "{}", reader.stderr);
    let pos_transfer = stack.ctl(
        Some("pos1"),
        &[
            "transfer", "MUG", "1", "--from", "STORE-A", "--to", "STORE-B",
        ],
    );
    pos_transfer.expect(20, "");
    assert!(
        pos_transfer
            .stderr
            .contains("role pos may not send transfer"),
        "{}",
        pos_transfer.stderr
    );
    let stranger = stack
        .command(None, &args)
        .env("TALLY_USER", "nobody")
        .env("TALLY_PASSWORD", "x")
        .output()
        .unwrap();
    let stranger = Run::from(stranger);
    stranger.expect(21, "");
    assert!(
        stranger.stderr.contains("not a client"),
        "{}",
        stranger.stderr
    );

    // Hostile arguments: clear refusals, nothing sent.
    stack
        .ctl(Some("pos1"), &["order", "MUG", "lots"])
        .expect(2, "");
    let long = "X".repeat(100_000);
    let huge = stack.ctl(Some("pos1"), &["order", &long, "1"]);
    huge.expect(2, "");
    assert!(
        huge.stderr.contains("is not a SKU or location") && huge.stderr.len() < 500,
        "{}",
        huge.stderr.len()
    );
    stack
        .ctl(Some("pos1"), &["order", "MUG", "0"])
        .expect(2, "");
    stack
        .ctl(Some("pos1"), &["order", "MUG", "99999999999"])
        .expect(2, "");
    assert_eq!(available_at(&stack.stock(), 1), 10, "nothing was sent");

    // An appliance that is not there (block 100 id 13: nothing listens).
    let absent = ApplianceSpec::for_test(BLOCK, 13, dir.path().join("none"));
    let config = dir.path().join("absent.toml");
    std::fs::write(&config, absent.toml()).unwrap();
    let unreachable = Command::new(bin("tally-ctl"))
        .arg("--config")
        .arg(&config)
        .args(["--timeout-ms", "500", "--user", "pos1"])
        .args(args)
        .env("TALLY_PASSWORD", "pos1pass")
        .output()
        .unwrap();
    let unreachable = Run::from(unreachable);
    unreachable.expect(22, "");
    assert!(
        unreachable.stderr.contains("unreachable"),
        "{}",
        unreachable.stderr
    );
}

#[test]
fn watch_prints_decisions_as_they_happen() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(14, dir.path(), INVENTORY);
    let mut watch = stack.command(Some("read1"), &["watch"]);
    watch.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = ChildGuard(watch.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    // Orders until one shows up, with its decision after it (watch prints
    // from the moment it caught up).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut id = 700;
    loop {
        assert!(
            Instant::now() < deadline,
            "watch never printed an order and its decision"
        );
        id += 1;
        let order_id = format!("order_id={id} ");
        stack
            .ctl(
                Some("pos1"),
                &["order", "MUG", "1", "--id", &id.to_string()],
            )
            .expect(0, "filled");
        let mut order = None;
        while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            if line.contains(&order_id) {
                order = Some(line);
            } else if order.is_some() && line.contains(" D ") {
                let order = order.unwrap();
                assert!(
                    order.contains(" O ") && order.contains("symbol=MUG"),
                    "{order}"
                );
                assert!(
                    line.contains("delta=-1") && line.contains("location_name=STORE-"),
                    "{line}"
                );
                return;
            }
        }
    }
}

#[test]
fn hostile_batch_files_are_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(15, dir.path(), INVENTORY);
    let cases: [(&str, String, &str); 4] = [
        (
            "garbage",
            "order,MUG,1\norder,MUG,1\n\u{0}\u{1}garbage;;\n".into(),
            "line 3: unknown command",
        ),
        (
            "huge",
            format!("order,MUG,1\norder,{},1\n", "M".repeat(1 << 20)),
            "line 2: longer than 4096 bytes",
        ),
        (
            "unknown",
            "order,MUG,1\norder,NOPE,1\n".into(),
            "line 2: unknown SKU \"NOPE\" (nothing was sent)",
        ),
        (
            "role",
            "order,MUG,1\ntransfer,MUG,1,STORE-A,STORE-B\n".into(),
            "line 2: role pos may not send transfer",
        ),
    ];
    for (name, text, expected) in cases {
        let file = dir.path().join(format!("{name}.csv"));
        std::fs::write(&file, text).unwrap();
        let run = stack.ctl(Some("pos1"), &["batch", file.to_str().unwrap()]);
        run.expect(2, "");
        assert!(run.stderr.contains(expected), "{name}: {}", run.stderr);
    }
    assert_eq!(available_at(&stack.stock(), 1), 10, "nothing was sent");
    // From standard input, a state file is required.
    stack.ctl(Some("pos1"), &["batch", "-"]).expect(2, "");
    // A small batch from standard input: rejections counted, status 4.
    let mut command = stack.command(Some("pos1"), &["batch", "-", "--state"]);
    command
        .arg(dir.path().join("stdin.state"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"order,MUG,6,STORE-A,801\n{\"command\":\"order\",\"sku\":\"MUG\",\"qty\":6,\"location\":\"STORE-A\",\"id\":802}\n").unwrap();
    let run = Run::from(child.wait_with_output().unwrap());
    run.expect(4, "line 2: rejected: insufficient stock (available 4)");
    assert!(
        run.stdout
            .contains("batch: 2 lines, 2 sent now: 1 accepted, 1 rejected, insufficient stock 1"),
        "{}",
        run.stdout
    );
}

/// The progress line's "decided N".
fn decided(line: &str) -> Option<u64> {
    line.split("decided ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_batch_killed_half_way_and_run_again_applies_each_command_exactly_once() {
    const LINES: u64 = 100_000;
    const STOCK: u64 = 250_000;
    let dir = tempfile::tempdir().unwrap();
    let stack = start(
        16,
        dir.path(),
        &format!("location,sku_symbol,quantity\nSTORE-A,MUG,{STOCK}\n"),
    );
    let file = dir.path().join("orders.csv");
    let mut text = String::from("command,sku,qty,location,id\n");
    for id in 1..=LINES {
        text.push_str(&format!("order,MUG,1,STORE-A,{id}\n"));
    }
    std::fs::write(&file, text).unwrap();
    let file = file.to_str().unwrap();

    let started = Instant::now();
    let mut first = stack.command(Some("pos1"), &["batch", file, "--progress-ms", "20"]);
    first.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = ChildGuard(first.spawn().unwrap());
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut killed_at = None;
    for line in stderr.lines() {
        let line = line.unwrap();
        if decided(&line).is_some_and(|n| n >= LINES * 2 / 5) {
            child.0.kill().unwrap(); // SIGKILL, half-way
            killed_at = decided(&line);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "too slow: {line}"
        );
    }
    let killed_at = killed_at.expect("the batch reported progress");
    assert!(killed_at < LINES, "killed before the end");
    let _ = child.0.wait();

    let second = stack.ctl(Some("pos1"), &["batch", file]);
    second.expect(0, "batch: 100000 lines, ");
    assert!(
        second.stderr.contains("resuming at command line"),
        "{}",
        second.stderr
    );
    let third = stack.ctl(Some("pos1"), &["batch", file]);
    third.expect(0, "");
    assert!(
        third.stderr.contains("already complete"),
        "{}",
        third.stderr
    );
    eprintln!(
        "batch of {LINES}, killed at {killed_at}, rerun: {:?} in all",
        started.elapsed()
    );

    // The stream: every order id sequenced once and filled once.
    let stock = stack.stock();
    assert_eq!(stock["locations"][0]["on_hand"], STOCK - LINES);
    let last_seq = stock["seq"].as_u64().unwrap();
    let messages = read_stream(
        &stack.spec.consumer_config(),
        last_seq,
        Duration::from_secs(60),
    );
    let origin = demo_client("pos1").client_id;
    let mut orders: HashMap<u64, u32> = HashMap::new();
    let mut command_of = HashMap::new();
    let mut fills = 0u64;
    for (seq, bytes) in &messages {
        match Message::parse(bytes).unwrap() {
            Message::Order(o) if o.header.origin.get() == origin => {
                *orders.entry(o.order_id.get()).or_default() += 1;
                command_of.insert(*seq, o.order_id.get());
            }
            Message::OnHandDelta(d) if d.reason == delta_reason::ORDER => {
                assert!(command_of.contains_key(&d.cmd_seq.get()));
                fills += 1;
            }
            _ => {}
        }
    }
    assert_eq!(orders.len() as u64, LINES, "every line sequenced");
    assert!(orders.values().all(|&n| n == 1), "no line sequenced twice");
    assert_eq!(fills, LINES, "every line filled once");
}
