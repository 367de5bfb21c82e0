//! The multi-host run (issue 5): the real binaries on a LAN of network
//! namespaces on this machine, built by `tuning/multihost.sh` — a sequencer
//! host, a warehouse host, a monitor host and two POS hosts on one bridge,
//! each with its own address, its own copy of the appliance configuration
//! (`stream.interface` = that address) and the multicast route on its
//! interface. Every process is started with `multihost.sh exec HOST …`
//! (`ip netns exec`) and says READY over its own `NOTIFY_SOCKET`.
//!
//! - [`lan_replicas_agree_with_the_warehouse`]: two tills in load mode for a
//!   few seconds; at the end every replica (the monitor's and each till's)
//!   has the warehouse's digest at the warehouse's final seq, and nothing is
//!   oversold.
//! - [`a_cut_pos_host_goes_stale_and_recovers`]: the same with a monitor on
//!   the second till's host too, and that host's link cut for two seconds
//!   mid-run: its monitor answers 503 / `stale: true` while cut (the
//!   monitor host's stays fresh), re-requests or the replay feed fill the
//!   gap once the link returns, and every replica ends with the same digest.
//!
//! How the final seq is pinned: the tills run with `--follow`, so after
//! their load (and the wait for every outcome) they keep applying the
//! stream. The warehouse is stopped next and prints its seq and digest
//! (`--json`); nothing is sequenced after that. The monitors are read at
//! that seq (`/digest`); each till is stopped once its `STATUS=` says it
//! reached it, and prints its replica's digest.
//!
//! Needs root and `ip netns`: otherwise each test prints why and passes,
//! unless `TALLY_REQUIRE_NETNS=1` (CI) makes that a failure. The two tests
//! take turns (each runs five or six processes on what may be a 2-core
//! machine). Each LAN has its own namespace prefix (`tmh<pid><tag>`), is
//! cleared before it is built (with the leftovers of killed runs) and
//! removed at the end, pass or fail; every child is killed on drop.
//! Addresses: the script's 10.77.0.0/24, ports 35000..=35003 and 35080,
//! group 239.255.120.1 — all inside the test's own namespaces.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_demo::{clients_toml, demo_client};

const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 120, 1);
const GATEWAY_PORT: u16 = 35_000;
const STREAM_PORT: u16 = 35_001;
const RETRANSMIT_PORT: u16 = 35_002;
const REPLAY_PORT: u16 = 35_003;
const MONITOR_PORT: u16 = 35_080;
/// Heartbeats every 200 ms: receivers call the stream stale after 600 ms
/// of silence (3 heartbeat intervals), well inside a two-second cut.
const HEARTBEAT_INTERVAL_MS: u64 = 200;
/// Orders (and the rest of the mix) per second, per till.
const POS_RATE_PER_SEC: u64 = 200;
/// Deadline of every wait for a condition.
const LONG: Duration = Duration::from_secs(30);
/// How often a condition is looked at again.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How long a host stays cut off (issue 5: two seconds).
const CUT: Duration = Duration::from_secs(2);

/// One LAN at a time.
static LAN_TURN: Mutex<()> = Mutex::new(());

#[test]
fn lan_replicas_agree_with_the_warehouse() {
    let _turn = LAN_TURN.lock().unwrap_or_else(PoisonError::into_inner);
    if !lan_available('a') {
        return;
    }
    run_scenario(Scenario {
        tag: 'a',
        pos_seconds: 4,
        cut_pos2: false,
    });
}

#[test]
fn a_cut_pos_host_goes_stale_and_recovers() {
    let _turn = LAN_TURN.lock().unwrap_or_else(PoisonError::into_inner);
    if !lan_available('b') {
        return;
    }
    run_scenario(Scenario {
        tag: 'b',
        pos_seconds: 8,
        cut_pos2: true,
    });
}

struct Scenario {
    /// Makes the namespace prefix unique to this test.
    tag: char,
    /// Seconds of load per till (`--seconds`).
    pos_seconds: u64,
    /// Run a monitor on pos2's host and cut that host off mid-run.
    cut_pos2: bool,
}

fn run_scenario(scenario: Scenario) {
    let dir = tempfile::tempdir().unwrap();
    let lan = Lan::up(&format!("tmh{}{}", std::process::id(), scenario.tag));
    let mut run = Run::new(dir.path());
    let seq_host = lan.host("seq").addr;
    for host in &lan.hosts {
        let toml = appliance_toml(host.addr, seq_host, &dir.path().join("journal"));
        std::fs::write(dir.path().join(format!("{}.toml", host.name)), toml).unwrap();
    }
    let config = |host: &str| dir.path().join(format!("{host}.toml"));
    let monitor_addr =
        |host: &str| SocketAddr::V4(SocketAddrV4::new(lan.host(host).addr, MONITOR_PORT));

    // The appliance first: READY=1 once its ports accept.
    let sequencer = run.start(
        &lan,
        "sequencer",
        "seq",
        &tally_demo::bin("tally-sequencer"),
        &[os("--config"), config("seq").into()],
    );
    run.get(sequencer).wait_ready();

    // The authority: READY=1 once caught up and deciding.
    let inventory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/inventory.csv");
    let warehouse = run.start(
        &lan,
        "warehouse",
        "wh",
        &tally_demo::bin("tally-warehouse"),
        &[
            os("--config"),
            config("wh").into(),
            os("--user"),
            os("wh"),
            os("--password"),
            os("whpass"),
            os("--inventory"),
            inventory.into(),
            os("--snapshot"),
            dir.path().join("warehouse.snapshot").into(),
            os("--snapshot-interval"),
            os("0"),
            os("--json"),
        ],
    );
    run.get(warehouse).wait_ready();

    // Monitors: the monitor host's, and with a cut one on pos2's host.
    let mut monitors = vec![("mon", 0)];
    if scenario.cut_pos2 {
        monitors.push(("pos2", 0));
    }
    for (host, index) in &mut monitors {
        let listen = monitor_addr(host).to_string();
        *index = run.start(
            &lan,
            &format!("monitor@{host}"),
            host,
            &tally_demo::bin("tally-monitor"),
            &[
                os("--config"),
                config(host).into(),
                os("--listen"),
                os(&listen),
                os("--user"),
                os("read1"),
                os("--password"),
                os("readpass"),
            ],
        );
    }
    for (_, index) in &monitors {
        run.get(*index).wait_ready();
    }

    // Two tills in load mode; READY=1 once they send.
    let mut tills = Vec::new();
    for host in ["pos1", "pos2"] {
        let client = demo_client(host);
        let index = run.start(
            &lan,
            host,
            host,
            &tally_demo::bin("tally-bench"),
            &[
                os("--scenario"),
                os("till-load"),
                os("--config"),
                config(host).into(),
                os("--user"),
                os(client.username),
                os("--password"),
                os(client.password),
                os("--rate"),
                os(&POS_RATE_PER_SEC.to_string()),
                os("--seconds"),
                os(&scenario.pos_seconds.to_string()),
                os("--hold-ttl-ms"),
                os("1000"),
                os("--json"),
                os("--follow"),
            ],
        );
        tills.push(index);
    }
    for &index in &tills {
        run.get(index).wait_ready();
    }

    if scenario.cut_pos2 {
        cut_and_heal_pos2(&lan, &mut run, monitor_addr("mon"), monitor_addr("pos2"));
    }

    // The load ends; each till has every outcome and follows the stream.
    for &index in &tills {
        run.get(index)
            .wait_notification("STATUS=following", |state| {
                state.starts_with("STATUS=following")
            });
    }

    // The warehouse stops deciding, waits for its events to come back and
    // prints the authoritative seq and digest. Nothing is sequenced after.
    let summary = run.get(warehouse).stop_json();
    let final_seq = summary["final_seq"].as_u64().expect("final_seq");
    let digest = summary["digest"].as_str().expect("digest").to_string();
    assert!(final_seq > 0, "warehouse summary {summary}");
    assert_eq!(summary["oversold"], 0, "warehouse summary {summary}");
    assert!(
        summary["decided"].as_u64().unwrap() > 0,
        "warehouse summary {summary}"
    );
    eprintln!("multihost: warehouse final seq {final_seq}, digest {digest}");

    for (host, _) in &monitors {
        let netns = lan.host(host).netns.clone();
        let (_, body) = poll_json(&netns, monitor_addr(host), "/digest", |_, body| {
            body["digest_seq"].as_u64() >= Some(final_seq)
        });
        assert_eq!(body["digest_seq"], final_seq, "monitor@{host}: {body}");
        assert_eq!(body["digest"], digest.as_str(), "monitor@{host}: {body}");
        assert_eq!(body["oversold"], 0, "monitor@{host}: {body}");
    }

    let wanted_status = format!("STATUS=following: seq {final_seq}");
    for &index in &tills {
        let till = run.get(index);
        till.wait_notification(&wanted_status, |state| state == wanted_status);
        let summary = till.stop_json();
        let name = &till.name;
        assert_eq!(summary["final_seq"], final_seq, "{name}: {summary}");
        assert_eq!(summary["digest"], digest.as_str(), "{name}: {summary}");
        assert_eq!(summary["oversold"], 0, "{name}: {summary}");
        assert_eq!(summary["drained"], true, "{name}: {summary}");
        assert!(summary["sent"].as_u64().unwrap() > 0, "{name}: {summary}");
        assert!(
            summary["outcomes"].as_u64().unwrap() > 0,
            "{name}: {summary}"
        );
        if scenario.cut_pos2 && name == "pos2" {
            assert!(
                summary["gaps_detected"].as_u64().unwrap() > 0,
                "the cut till saw no gap: {summary}"
            );
        }
        eprintln!(
            "multihost: {name} sent {} outcomes {} gaps {} recovered {}: digest {} at seq {}",
            summary["sent"],
            summary["outcomes"],
            summary["gaps_detected"],
            summary["recovered"],
            summary["digest"],
            summary["final_seq"]
        );
    }

    for (_, index) in &monitors {
        run.get(*index).stop();
    }
    run.get(sequencer).stop();
}

/// Cuts pos2's host off for [`CUT`] while the tills run: its monitor goes
/// stale (503) while the monitor host's stays fresh; after the heal it is
/// fresh again, past where the rest of the LAN was, having filled the gap by
/// re-request or replay.
fn cut_and_heal_pos2(lan: &Lan, run: &mut Run, fresh_monitor: SocketAddr, cut_monitor: SocketAddr) {
    let fresh_netns = lan.host("mon").netns.clone();
    let cut_netns = lan.host("pos2").netns.clone();

    // The stream flows to pos2's host before the cut.
    let (_, before) = get_json(&cut_netns, cut_monitor, "/health");
    let start_seq = before["seq"].as_u64().unwrap();
    let (_, before) = poll_json(&cut_netns, cut_monitor, "/health", |status, body| {
        status == 200 && body["seq"].as_u64().unwrap() >= start_seq + 200
    });
    let consumer_before = before["consumer"].clone();

    lan.set_link("pos2", false);
    let cut_at = Instant::now();
    let (_, stale) = poll_json(&cut_netns, cut_monitor, "/health", |status, body| {
        status == 503 && body["stale"] == true
    });
    let stale_after = cut_at.elapsed();
    assert!(
        stale_after < CUT,
        "pos2's monitor took {stale_after:?} to go stale"
    );
    assert_eq!(stale["status"], "stale", "{stale}");
    let stale_seq = stale["seq"].as_u64().unwrap();
    // The rest of the LAN carries on meanwhile.
    let (status, fresh) = get_json(&fresh_netns, fresh_monitor, "/health");
    assert_eq!(
        status, 200,
        "the monitor host's monitor during the cut: {fresh}"
    );
    assert_eq!(fresh["stale"], false, "{fresh}");
    // The cut lasts CUT from its start: a duration the scenario sets, not a
    // guess at how long something takes.
    thread::sleep(CUT.saturating_sub(cut_at.elapsed()));
    let (_, during) = get_json(&fresh_netns, fresh_monitor, "/health");
    let lan_seq = during["seq"].as_u64().unwrap();
    assert!(
        lan_seq > stale_seq,
        "the stream did not move during the cut ({stale_seq} → {lan_seq})"
    );
    lan.set_link("pos2", true);
    let healed_at = Instant::now();

    // Fresh again, and past where the LAN was when the link came back.
    let (_, after) = poll_json(&cut_netns, cut_monitor, "/health", |status, body| {
        status == 200 && body["stale"] == false && body["seq"].as_u64().unwrap() >= lan_seq
    });
    let recovered_after = healed_at.elapsed();
    let consumer_after = &after["consumer"];
    let delta =
        |key: &str| consumer_after[key].as_u64().unwrap() - consumer_before[key].as_u64().unwrap();
    let (gaps, by_retransmit, by_replay, stale_transitions) = (
        delta("gaps_detected"),
        delta("recovered_by_retransmit"),
        delta("recovered_by_replay"),
        delta("stale_transitions"),
    );
    eprintln!(
        "multihost: pos2 cut at seq {stale_seq}, stale after {stale_after:?}; LAN at seq {lan_seq} \
         when healed; caught up in {recovered_after:?}: gaps {gaps}, recovered by re-request \
         {by_retransmit}, by replay {by_replay}"
    );
    assert!(gaps >= 1, "no gap seen after the cut: {consumer_after}");
    assert!(
        by_retransmit + by_replay >= lan_seq - stale_seq,
        "the gap ({stale_seq}..{lan_seq}) was not filled by re-request or replay: {consumer_after}"
    );
    assert!(stale_transitions >= 1, "{consumer_after}");
    // The tills must still be running: the cut fell inside their load.
    for index in 0..run.processes.len() {
        run.processes[index].assert_running();
    }
}

// ---------------------------------------------------------------------------
// Configuration.

/// The appliance configuration as the host at `interface` sees it: the
/// sequencer's listen addresses on `sequencer`, the stream joined (or sent)
/// on `interface`.
fn appliance_toml(interface: Ipv4Addr, sequencer: Ipv4Addr, journal_dir: &Path) -> String {
    format!(
        r#"[stream]
session = "MULTIHOST"
group = "{GROUP}"
port = {STREAM_PORT}
interface = "{interface}"
ttl = 1
loopback = false
heartbeat_interval_ms = {HEARTBEAT_INTERVAL_MS}

[gateway]
listen = "{sequencer}:{GATEWAY_PORT}"
rate_limit_per_sec = 1000000
rate_burst = 100000
ack_history_per_client = 8192

{clients}
[retransmit]
listen = "{sequencer}:{RETRANSMIT_PORT}"
requests_per_sec_per_requester = 100000
request_burst = 10000

[replay]
listen = "{sequencer}:{REPLAY_PORT}"

[journal]
dir = '{journal}'
fsync = "none"

[loops.gateway]
idle = "back-off"
[loops.sequencer]
idle = "back-off"
[loops.retransmit]
idle = "back-off"
[loops.replay]
idle = "back-off"
"#,
        clients = clients_toml(),
        journal = journal_dir.display(),
    )
}

fn os(text: &str) -> std::ffi::OsString {
    text.into()
}

// ---------------------------------------------------------------------------
// The LAN.

/// Whether this machine can run the test: root and working `ip netns`
/// (`tag` names the probe namespace). Prints why not; panics instead under
/// `TALLY_REQUIRE_NETNS=1`.
fn lan_available(tag: char) -> bool {
    let reason = netns_missing(tag);
    match reason {
        None => true,
        Some(reason) if std::env::var("TALLY_REQUIRE_NETNS").as_deref() == Ok("1") => {
            panic!("TALLY_REQUIRE_NETNS=1 but {reason}")
        }
        Some(reason) => {
            // Straight to the process's stderr: libtest captures `eprintln!`
            // of a passing test, and a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "skipping the multi-host test: {reason} (TALLY_REQUIRE_NETNS=1 makes this a failure)"
            );
            false
        }
    }
}

fn netns_missing(tag: char) -> Option<String> {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces need it)".to_string());
    }
    let probe = format!("tmh{}{tag}-probe", std::process::id());
    let ip = |args: &[&str]| Command::new("ip").args(args).output();
    match ip(&["netns", "add", &probe]) {
        Err(error) => Some(format!("`ip` (iproute2) cannot run: {error}")),
        Ok(output) if !output.status.success() => Some(format!(
            "`ip netns add` does not work here: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Ok(_) => {
            let _ = ip(&["netns", "del", &probe]);
            None
        }
    }
}

struct Host {
    name: String,
    netns: String,
    addr: Ipv4Addr,
}

/// The namespaces of `tuning/multihost.sh up`, removed (`down`) on drop.
struct Lan {
    script: PathBuf,
    prefix: String,
    hosts: Vec<Host>,
}

impl Lan {
    /// Clears leftovers (of this prefix, and of earlier runs whose process
    /// is gone), then builds the LAN.
    fn up(prefix: &str) -> Lan {
        clear_abandoned();
        let mut lan = Lan::new(prefix);
        lan.script(&["down"]);
        let listing = lan.script(&["up"]);
        for line in listing.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, netns, addr, _dev] = fields[..] else {
                panic!("multihost.sh up: unexpected line {line:?}");
            };
            lan.hosts.push(Host {
                name: name.to_string(),
                netns: netns.to_string(),
                addr: addr.parse().unwrap(),
            });
        }
        for name in ["seq", "wh", "mon", "pos1", "pos2"] {
            lan.host(name);
        }
        lan
    }

    /// The LAN named by `prefix`, as far as the script knows it (no hosts
    /// listed yet).
    fn new(prefix: &str) -> Lan {
        Lan {
            script: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tuning/multihost.sh"),
            prefix: prefix.to_string(),
            hosts: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.script);
        command.env("TALLY_LAN_PREFIX", &self.prefix);
        command
    }

    /// Runs the script; panics (with its stderr) when it fails.
    fn script(&self, args: &[&str]) -> String {
        let output = self.command().args(args).output().unwrap();
        assert!(
            output.status.success(),
            "multihost.sh {}: {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|host| host.name == name)
            .unwrap_or_else(|| panic!("multihost.sh has no host {name}"))
    }

    /// `heal` (up) or `cut` (down) the host's link.
    fn set_link(&self, host: &str, up: bool) {
        self.script(&[if up { "heal" } else { "cut" }, host]);
    }
}

/// Removes the namespaces that runs of this test killed before their
/// clean-up left behind: `tmh<pid><tag>-…` whose process no longer exists
/// (a live run's process does, and is left alone).
fn clear_abandoned() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let mut prefixes = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("tmh") else {
            continue;
        };
        let pid_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (pid, rest) = rest.split_at(pid_len);
        let mut tail = rest.chars();
        let (Some(tag), Some('-')) = (tail.next(), tail.next()) else {
            continue;
        };
        if pid.is_empty() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        if tail.as_str() == "probe" {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            continue;
        }
        let prefix = format!("tmh{pid}{tag}");
        if !prefixes.contains(&prefix) {
            eprintln!("multihost: removing the LAN {prefix}-* of a run that is gone");
            prefixes.push(prefix);
        }
    }
    for prefix in prefixes {
        // Dropping a Lan runs `multihost.sh down`.
        drop(Lan::new(&prefix));
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        match self.command().arg("down").output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "multihost.sh down: {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => eprintln!("multihost.sh down: {error}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Processes.

/// The processes of one scenario; on drop every one still running is
/// killed, and after a failure the end of each one's stderr is printed.
struct Run {
    dir: PathBuf,
    processes: Vec<Process>,
}

impl Run {
    fn new(dir: &Path) -> Run {
        Run {
            dir: dir.to_path_buf(),
            processes: Vec::new(),
        }
    }

    /// Starts `program args` on `host` with its own `NOTIFY_SOCKET`, stdout
    /// and stderr in files; returns its index.
    fn start(
        &mut self,
        lan: &Lan,
        name: &str,
        host: &str,
        program: &Path,
        args: &[std::ffi::OsString],
    ) -> usize {
        let notify_path = self.dir.join(format!("{name}.notify"));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        let stdout = self.dir.join(format!("{name}.stdout"));
        let stderr = self.dir.join(format!("{name}.stderr"));
        let child = lan
            .command()
            .arg("exec")
            .arg(host)
            .arg(program)
            .args(args)
            .current_dir(&self.dir)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {name}: {error}"));
        self.processes.push(Process {
            name: name.to_string(),
            child,
            exited: None,
            notify,
            notifications: Vec::new(),
            stdout,
            stderr,
        });
        self.processes.len() - 1
    }

    fn get(&mut self, index: usize) -> &mut Process {
        &mut self.processes[index]
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let failed = thread::panicking();
        for process in &mut self.processes {
            process.kill();
            if failed {
                let log = std::fs::read_to_string(&process.stderr).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(25)..];
                eprintln!(
                    "---- {} ({:?}), last lines of stderr:\n{}",
                    process.name,
                    process.exited,
                    tail.join("\n")
                );
            }
        }
    }
}

/// A child started through `multihost.sh exec` (which execs `ip netns
/// exec`, which execs the program: the pid is the program's).
struct Process {
    name: String,
    child: Child,
    exited: Option<ExitStatus>,
    notify: UnixDatagram,
    /// Every notification line received so far, in order.
    notifications: Vec<String>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Process {
    /// Panics (naming the process) when it has exited.
    fn assert_running(&mut self) {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().unwrap();
        }
        if let Some(status) = self.exited {
            panic!("{} exited early: {status}", self.name);
        }
    }

    /// Receives notifications until one line satisfies `wanted` (looking at
    /// the ones already received first); panics after [`LONG`] or when the
    /// process exits.
    fn wait_notification(&mut self, what: &str, mut wanted: impl FnMut(&str) -> bool) {
        let deadline = Instant::now() + LONG;
        let mut checked = 0;
        let mut buf = [0u8; 4096];
        loop {
            if self.notifications[checked..]
                .iter()
                .any(|state| wanted(state))
            {
                return;
            }
            checked = self.notifications.len();
            self.assert_running();
            let now = Instant::now();
            assert!(
                now < deadline,
                "{}: no {what} notification within {LONG:?} (last: {:?})",
                self.name,
                self.notifications.last()
            );
            self.notify
                .set_read_timeout(Some((deadline - now).min(POLL_INTERVAL * 4)))
                .unwrap();
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    self.notifications.extend(text.lines().map(str::to_string));
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(error) => panic!("{}: notify socket: {error}", self.name),
            }
        }
    }

    fn wait_ready(&mut self) {
        self.wait_notification("READY=1", |state| state == "READY=1");
    }

    /// SIGTERM, then the exit status (which must be success) within [`LONG`].
    fn stop(&mut self) {
        assert_eq!(self.exited, None, "{} already exited", self.name);
        // SAFETY: kill(2) on our own child, which has not been waited for
        // (so the pid is still ours).
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM to {}", self.name);
        let deadline = Instant::now() + LONG;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {LONG:?} of SIGTERM",
                self.name
            );
            thread::sleep(POLL_INTERVAL);
        };
        self.exited = Some(status);
        assert!(status.success(), "{} exited with {status}", self.name);
    }

    /// [`stop`](Self::stop), then the JSON summary it printed last on stdout.
    fn stop_json(&mut self) -> Value {
        self.stop();
        let stdout = std::fs::read_to_string(&self.stdout).unwrap();
        let line = stdout.lines().rev().find(|line| !line.trim().is_empty());
        let line = line.unwrap_or_else(|| panic!("{} printed no summary", self.name));
        serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("{}: summary {line:?}: {error}", self.name))
    }

    fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP inside a namespace.

/// Runs `f` on a thread that has joined the network namespace `netns`
/// (a network namespace is per thread: the rest of the process stays where
/// it is).
fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = Path::new("/var/run/netns").join(netns);
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let file =
                    File::open(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                // SAFETY: setns(2) with a namespace file we hold open for the
                // call; CLONE_NEWNET moves only this thread, which ends when
                // `f` returns.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap()
    })
}

/// `GET path` from inside `netns`: status and JSON body.
fn get_json(netns: &str, addr: SocketAddr, path: &str) -> (u16, Value) {
    let text = in_netns(netns, || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        // The monitor wants a reader's credentials on all but /health, /ready.
        let reader = demo_client("read1");
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: {}\r\n\r\n",
            tally_monitor::basic_authorization(reader.username, reader.password)
        )?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })
    .unwrap_or_else(|error| panic!("GET http://{addr}{path} in {netns}: {error}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no header block in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: status line of {head:?}"));
    let body: Value =
        serde_json::from_str(body).unwrap_or_else(|error| panic!("GET {path}: {error}: {body}"));
    (status, body)
}

/// Asks `path` again until `done(status, body)`; panics after [`LONG`].
fn poll_json(
    netns: &str,
    addr: SocketAddr,
    path: &str,
    mut done: impl FnMut(u16, &Value) -> bool,
) -> (u16, Value) {
    let deadline = Instant::now() + LONG;
    loop {
        let (status, body) = get_json(netns, addr, path);
        if done(status, &body) {
            return (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "GET http://{addr}{path}: still {status} {body} after {LONG:?}"
        );
        thread::sleep(POLL_INTERVAL);
    }
}
