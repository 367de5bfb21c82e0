//! Every tool (tally-warehouse, tally-monitor, tally-pos, tally-tap,
//! tally-ctl), the real binaries, against a real appliance with a wrong
//! password, a user whose role may not do the tool's work, a user the
//! configuration does not know, and against an appliance that is not there:
//! each stops with its documented exit status (README "Exit statuses": 20
//! refused, 21 login refused, 22 unreachable, 2 no credentials) and a
//! message that says what happened and what to do. A tool that would wait
//! forever fails the test at its deadline (and is killed), never hangs it.
//!
//! Test block 100, ids 221..=223 (the day2 range); HTTP ports
//! 30000 + 4·(id − 200).

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tally_demo::{bin, demo_client, ApplianceSpec, ChildGuard};

const BLOCK: u8 = 100;
/// Longest a tool may take to give up (its own connect timeout is at most
/// [`ANSWER_TIMEOUT_MS`]).
const DEADLINE: Duration = Duration::from_secs(30);
/// `--connect-timeout-ms` against a running appliance: it refuses at once,
/// but a password check (argon2) on CI's two busy cores has taken over
/// 1.5 s, which the tool then reports as unreachable (22). The tool stops
/// as soon as the refusal arrives, so a generous bound costs nothing.
const ANSWER_TIMEOUT_MS: u64 = 20_000;
/// `--connect-timeout-ms` where nothing listens: the tool waits it out.
const UNREACHABLE_TIMEOUT_MS: u64 = 1_500;

const INVENTORY: &str = "location,sku_symbol,quantity\nSTORE-A,MUG,5\n";

/// The tools, each with the arguments it needs besides the credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Warehouse,
    Monitor,
    Pos,
    Tap,
    Ctl,
}

const TOOLS: [Tool; 5] = [
    Tool::Warehouse,
    Tool::Monitor,
    Tool::Pos,
    Tool::Tap,
    Tool::Ctl,
];

/// Each tool with a user whose role may do its work.
const USERS: [(Tool, &str); 5] = [
    (Tool::Warehouse, "wh"),
    (Tool::Monitor, "read1"),
    (Tool::Pos, "pos2"),
    (Tool::Tap, "read1"),
    (Tool::Ctl, "pos1"),
];

/// One finished run.
#[derive(Debug)]
struct Run {
    tool: Tool,
    status: i32,
    stderr: String,
}

impl Run {
    /// Asserts the status and that stderr says each of `words`.
    fn expect(&self, status: i32, words: &[&str]) {
        assert_eq!(
            self.status, status,
            "{:?}: status {}, expected {status}; stderr: {}",
            self.tool, self.status, self.stderr
        );
        for word in words {
            assert!(
                self.stderr.contains(word),
                "{:?}: stderr lacks {word:?}: {}",
                self.tool,
                self.stderr
            );
        }
    }
}

struct Setup {
    config: PathBuf,
    dir: PathBuf,
    http_base: u16,
    /// Every tool's `--connect-timeout-ms` (tally-ctl's `--timeout-ms`).
    timeout_ms: u64,
}

impl Setup {
    fn new(spec: &ApplianceSpec, dir: &Path, id: u8, timeout_ms: u64) -> Setup {
        let config = dir.join("tally.toml");
        std::fs::write(&config, spec.toml()).unwrap();
        std::fs::write(dir.join("inventory.csv"), INVENTORY).unwrap();
        Setup {
            config,
            dir: dir.to_path_buf(),
            http_base: 30_000 + 4 * (u16::from(id) - 200),
            timeout_ms,
        }
    }

    /// `tool` logging in as `user` with `password` (from the environment,
    /// as a service's EnvironmentFile would give it), nothing inherited.
    fn command(&self, tool: Tool, user: &str, password: &str) -> Command {
        let name = match tool {
            Tool::Warehouse => "tally-warehouse",
            Tool::Monitor => "tally-monitor",
            Tool::Pos => "tally-pos",
            Tool::Tap => "tally-tap",
            Tool::Ctl => "tally-ctl",
        };
        let mut command = Command::new(bin(name));
        command
            .arg("--config")
            .arg(&self.config)
            .env_remove("TALLY_USER")
            .env_remove("TALLY_PASSWORD_FILE")
            .env_remove("TALLY_CONFIG")
            .env("TALLY_USER", user)
            .env("TALLY_PASSWORD", password)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let listen = |offset: u16| SocketAddr::from(([127, 0, 0, 1], self.http_base + offset));
        let timeout_ms = self.timeout_ms.to_string();
        match tool {
            Tool::Warehouse => {
                command
                    .arg("--inventory")
                    .arg(self.dir.join("inventory.csv"))
                    .arg("--snapshot")
                    .arg(self.dir.join("warehouse.snapshot"))
                    .args(["--connect-timeout-ms", &timeout_ms]);
            }
            Tool::Monitor => {
                command
                    .args(["--listen", &listen(0).to_string()])
                    .args(["--connect-timeout-ms", &timeout_ms]);
            }
            Tool::Pos => {
                command
                    .args(["--location", "STORE-A"])
                    .args(["--listen", &listen(1).to_string()])
                    .args(["--connect-timeout-ms", &timeout_ms]);
            }
            Tool::Tap => {
                command
                    .args(["--count", "1"])
                    .args(["--connect-timeout-ms", &timeout_ms]);
            }
            Tool::Ctl => {
                command.args(["--timeout-ms", &timeout_ms, "order", "MUG", "1"]);
            }
        }
        command
    }

    /// Runs `tool` to its end, within [`DEADLINE`] (killed and failed
    /// past it).
    fn run(&self, tool: Tool, user: &str, password: &str) -> Run {
        let child = self.command(tool, user, password).spawn().unwrap();
        let mut child = ChildGuard(child);
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{tool:?} as {user:?} still running after {DEADLINE:?}: it would wait forever"
            );
            std::thread::sleep(Duration::from_millis(20)); // polling a child, with a deadline
        };
        let mut stderr = String::new();
        child
            .0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        Run {
            tool,
            status: status.code().unwrap_or(-1),
            stderr,
        }
    }
}

#[test]
fn a_wrong_password_stops_every_tool_with_status_21() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, 221, dir.path().join("journal"));
    let _appliance = spec.start().expect("start the appliance");
    let setup = Setup::new(&spec, dir.path(), 221, ANSWER_TIMEOUT_MS);
    for (tool, user) in USERS {
        let run = setup.run(tool, user, "wrongpass");
        run.expect(21, &["refused", "password is wrong", "[[clients]]"]);
    }

    // No credentials at all: status 2, naming the options (no default).
    for tool in TOOLS {
        let mut command = setup.command(tool, "", "");
        command
            .env_remove("TALLY_USER")
            .env_remove("TALLY_PASSWORD");
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{tool:?}: {stderr}");
        assert!(
            stderr.contains("no user given") && stderr.contains("--user"),
            "{tool:?}: {stderr}"
        );
        let password_missing = setup
            .command(tool, "read1", "")
            .env_remove("TALLY_PASSWORD")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&password_missing.stderr);
        assert_eq!(
            password_missing.status.code(),
            Some(2),
            "{tool:?}: {stderr}"
        );
        assert!(
            stderr.contains("no password given") && stderr.contains("--password-file"),
            "{tool:?}: {stderr}"
        );
    }
}

#[test]
fn a_missing_role_or_an_unknown_user_stops_every_tool() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(BLOCK, 222, dir.path().join("journal"));
    let _appliance = spec.start().expect("start the appliance");
    let setup = Setup::new(&spec, dir.path(), 222, ANSWER_TIMEOUT_MS);
    let login = |user: &str| (user.to_string(), demo_client(user).password);

    // The warehouse decides as the authority; a pos user may not.
    let (user, password) = login("pos1");
    setup.run(Tool::Warehouse, &user, password).expect(
        20,
        &["\"pos1\" may not", "role pos may not send", "authority"],
    );
    // A store node sells; an ops user may not (it used to run and get
    // every sale refused, exiting 0).
    let (user, password) = login("ops1");
    setup.run(Tool::Pos, &user, password).expect(
        20,
        &[
            "\"ops1\" may not place orders",
            "role ops may not send order",
        ],
    );
    setup
        .run(Tool::Ctl, &user, password)
        .expect(20, &["role ops may not send order"]);
    // A reader may not use the gateway at all.
    let (user, password) = login("read1");
    setup
        .run(Tool::Pos, &user, password)
        .expect(20, &["role reader may not send order"]);

    // The monitor and the tap read the stream, which every configured
    // role may: what they can miss is the user itself.
    for tool in TOOLS {
        setup
            .run(tool, "nobody", "whatever")
            .expect(21, &["\"nobody\" is not a client", "[[clients]]"]);
    }
}

#[test]
fn an_unreachable_appliance_stops_every_tool_with_status_22() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on test 223's addresses.
    let spec = ApplianceSpec::for_test(BLOCK, 223, dir.path().join("journal"));
    let setup = Setup::new(&spec, dir.path(), 223, UNREACHABLE_TIMEOUT_MS);
    for (tool, user) in USERS {
        let started = Instant::now();
        let run = setup.run(tool, user, demo_client(user).password);
        run.expect(22, &["unreachable"]);
        if tool != Tool::Ctl {
            run.expect(22, &["is tally-sequencer running", "--connect-timeout-ms"]);
        }
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "{tool:?} gave up at once instead of waiting --connect-timeout-ms"
        );
    }
}
