//! Helpers for the applications' tests, the demo and the benchmarks: an
//! appliance configuration for a given port block, multicast group and
//! journal directory (with the demo clients of `config/tally.toml` and a few
//! more points of sale), and the whole appliance started in-process.
//!
//! Test address plan ([`ApplianceSpec::for_test`]): test `id` (1..=255) of
//! block `block` (100..=108, one block per test suite) uses multicast group
//! `239.255.block.id` and ports `20000 + 1300·(block − 100) + 5·id` …`+3`,
//! below Linux's ephemeral range (32768+), so suites and tests run in
//! parallel without meeting. The apps' own consumer and client tests use
//! block 102.
//!
//! [`load`] is the random load generator the demo, the tests and
//! `tally-bench --scenario till-load` drive tills with.

pub mod load;

pub mod http;
pub mod serve;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tally_config::ApplianceConfig;
use tally_runtime::net::MulticastConfig;
use tally_sequencer::appliance::{Appliance, Control};

use tally_client::client::{Ack, ClientConfig, ClientError, ClientEvent, OrderEntryClient};
use tally_client::consumer::{ConsumerConfig, StreamConsumer};

pub mod warehouse;
pub use warehouse::RunningWarehouse;

/// A configured client: login, password (in clear, for tests and the
/// demo), origin and role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DemoClient {
    pub username: &'static str,
    pub password: &'static str,
    pub client_id: u16,
    pub role: &'static str,
    /// argon2id hash of `password` (as in `config/tally.toml`).
    pub password_hash: &'static str,
}

/// The demo clients: those of `config/tally.toml` (same ids and hashes:
/// `pos1`, `ops1`, `wh`, `read1`, `pos2`..`pos4`), then `pos5`..`pos8`
/// (client ids 14..=17). Every `posN` has password `posNpass`.
pub const DEMO_CLIENTS: &[DemoClient] = &[
    DemoClient {
        username: "pos1",
        password: "pos1pass",
        client_id: 1,
        role: "pos",
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$eZgcTQK5n+RLHKfv4qXC7A$wyvwHzlcjveZqIOB45NCoCwGJDy/wDJrh+MoY9hHz9I",
    },
    DemoClient {
        username: "ops1",
        password: "ops1pass",
        client_id: 2,
        role: "ops",
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$5IZ4uAV7OKzc6xp9seTolQ$XZ4QAwZKdzqjumNE+HBqwht8002Dl63NG+n+D4g8z5Q",
    },
    DemoClient {
        username: "wh",
        password: "whpass",
        client_id: 3,
        role: "authority",
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$JMU5OEb8u49vJjea4I5ugA$oO3PoTG75LgNarfcj3uLJeyeqeAobO0jsnpqqUMyclI",
    },
    DemoClient {
        username: "read1",
        password: "readpass",
        client_id: 4,
        role: "reader",
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$tWW49bK5QoG9bGFSUbwacA$+mcld4A5pq2h9Fi917djhSC5ilLeQj8I9VayNK/Ha94",
    },
    DemoClient {
        username: "pos2",
        password: "pos2pass",
        client_id: 11,
        role: "pos",
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$/Kudut95dxTvx6D9g4SxIw$eiRDMMuRp7J8cI+H+l3MJUw5Ge2BftwegOQT0yB3CNY",
    },
    DemoClient {
        username: "pos3",
        password: "pos3pass",
        client_id: 12,
        role: "pos",
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$TeoioXg+GHTptzsWv5AZIA$Tl48VQEMrPqmm/rX4j/BBgS2DnwOdQNogP7H4aq9Evg",
    },
    DemoClient {
        username: "pos4",
        password: "pos4pass",
        client_id: 13,
        role: "pos",
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$fBcXEl1jXpeG3ENKstB98A$AtfYzQSz/2l3AqtM+JzD3FQhim+9hL209bTog0y1BlE",
    },
    DemoClient {
        username: "pos5",
        password: "pos5pass",
        client_id: 14,
        role: "pos",
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$J6pszvnODsrSzLQMDEHosA$RKT9Vr5ke3dmIVqw2AHk1WZ1RNo20M0p1RoDJHays1k",
    },
    DemoClient {
        username: "pos6",
        password: "pos6pass",
        client_id: 15,
        role: "pos",
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$FjBz4mNgx/By68AHRTZwXQ$/tJw2gp6ATSC2S56jq9K1taC3WVCMOQw8BXpMXkTFA8",
    },
    DemoClient {
        username: "pos7",
        password: "pos7pass",
        client_id: 16,
        role: "pos",
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$sj7nfqXSlTBAThQhgdAUxQ$oQpMGxAAI6xJazpnsHsfaX3eyWh3QzTJvQkjJy422DM",
    },
    DemoClient {
        username: "pos8",
        password: "pos8pass",
        client_id: 17,
        role: "pos",
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$XdOmu7repYLkvBMuJWJPVQ$KCCOujxrTz4IwplyfH5U8GeoSTKS2gfDeAQib5rx6KM",
    },
];

/// The demo client named `username`.
///
/// # Panics
/// When there is none (a test bug).
pub fn demo_client(username: &str) -> &'static DemoClient {
    DEMO_CLIENTS
        .iter()
        .find(|client| client.username == username)
        .unwrap_or_else(|| panic!("no demo client {username:?}"))
}

/// The point-of-sale demo clients, `pos1`..`pos8`.
pub fn pos_clients() -> impl Iterator<Item = &'static DemoClient> {
    DEMO_CLIENTS.iter().filter(|client| client.role == "pos")
}

/// `[[clients]]` TOML for every demo client.
pub fn clients_toml() -> String {
    let mut text = String::new();
    for client in DEMO_CLIENTS {
        text.push_str(&format!(
            "[[clients]]\nusername = \"{}\"\npassword_hash = \"{}\"\nclient_id = {}\nrole = \"{}\"\n\n",
            client.username, client.password_hash, client.client_id, client.role
        ));
    }
    text
}

/// What varies between appliances started by tests and the demo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplianceSpec {
    /// Stream session name (up to 10 ASCII characters).
    pub session: String,
    pub group: Ipv4Addr,
    /// Stream port; the gateway, retransmit server and replay feed listen on
    /// the next three.
    pub port_base: u16,
    /// Journal directory (absolute); the counter file goes there too.
    pub journal_dir: PathBuf,
    pub heartbeat_interval_ms: u64,
    /// The retransmit server's retention.
    pub retention_messages: u64,
    /// Re-requests per second (and burst) allowed per requester.
    pub retransmit_requests_per_sec: u32,
    /// Per-session command rate limit (and burst) of the gateway.
    pub rate_limit_per_sec: u32,
    pub ack_history_per_client: usize,
    /// Idle strategy of every loop: `back-off`, `yield` or `busy-spin`.
    pub idle: String,
}

impl ApplianceSpec {
    /// Loopback appliance on `port_base`..`port_base + 3` and `group`: 200 ms
    /// heartbeats, generous rate limits (tests drive it hard), back-off
    /// idling.
    pub fn new(port_base: u16, group: Ipv4Addr, journal_dir: impl Into<PathBuf>) -> ApplianceSpec {
        assert!(group.is_multicast(), "{group} is not a multicast group");
        assert!(port_base <= u16::MAX - 3, "port base {port_base} too high");
        ApplianceSpec {
            session: "TEST".to_string(),
            group,
            port_base,
            journal_dir: journal_dir.into(),
            heartbeat_interval_ms: 200,
            retention_messages: 100_000_000,
            retransmit_requests_per_sec: 1_000_000,
            rate_limit_per_sec: 100_000_000,
            ack_history_per_client: 8_192,
            idle: "back-off".to_string(),
        }
    }

    /// The spec of test `id` (1..=255) in test block `block` (100..=108):
    /// group `239.255.block.id`, ports `20000 + 1300·(block − 100) + 5·id`.
    pub fn for_test(block: u8, id: u8, journal_dir: impl Into<PathBuf>) -> ApplianceSpec {
        assert!(
            (100..=108).contains(&block),
            "test block {block} not in 100..=108"
        );
        assert!(id >= 1, "test id 0 is reserved");
        let port_base = 20_000 + 1_300 * u16::from(block - 100) + 5 * u16::from(id);
        let mut spec =
            ApplianceSpec::new(port_base, Ipv4Addr::new(239, 255, block, id), journal_dir);
        spec.session = format!("T{block}-{id}");
        spec
    }

    pub fn stream_port(&self) -> u16 {
        self.port_base
    }

    pub fn gateway(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port_base + 1))
    }

    pub fn retransmit(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port_base + 2)
    }

    pub fn replay(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port_base + 3))
    }

    /// The stream as receivers join it.
    pub fn multicast(&self) -> MulticastConfig {
        MulticastConfig {
            group: self.group,
            port: self.port_base,
            interface: Ipv4Addr::LOCALHOST,
            ttl: 0,
            loopback: true,
        }
    }

    /// The appliance's configuration file text.
    pub fn toml(&self) -> String {
        let idle = &self.idle;
        format!(
            r#"[stream]
session = "{session}"
group = "{group}"
port = {stream_port}
interface = "127.0.0.1"
ttl = 0
loopback = true
heartbeat_interval_ms = {heartbeat}

[gateway]
listen = "{gateway}"
rate_limit_per_sec = {rate}
rate_burst = {rate}
ack_history_per_client = {history}
ring_messages = 16384

{clients}
[retransmit]
listen = "{retransmit}"
requests_per_sec_per_requester = {re_rate}
request_burst = {re_rate}

[replay]
listen = "{replay}"

[journal]
dir = '{journal}'
fsync = "none"
retention_messages = {retention}

[loops.gateway]
idle = "{idle}"
[loops.sequencer]
idle = "{idle}"
[loops.retransmit]
idle = "{idle}"
[loops.replay]
idle = "{idle}"
"#,
            session = self.session,
            group = self.group,
            stream_port = self.port_base,
            heartbeat = self.heartbeat_interval_ms,
            gateway = self.gateway(),
            rate = self.rate_limit_per_sec,
            history = self.ack_history_per_client,
            clients = clients_toml(),
            retransmit = self.retransmit(),
            re_rate = self.retransmit_requests_per_sec,
            replay = self.replay(),
            journal = self.journal_dir.display(),
            retention = self.retention_messages,
        )
    }

    /// The parsed, validated configuration.
    ///
    /// # Panics
    /// When it does not validate (a bug in this spec).
    pub fn config(&self) -> ApplianceConfig {
        ApplianceConfig::parse(&self.toml())
            .unwrap_or_else(|error| panic!("test appliance config: {error}"))
    }

    /// A consumer of this appliance's stream, replaying as `read1`.
    pub fn consumer_config(&self) -> ConsumerConfig {
        let reader = demo_client("read1");
        ConsumerConfig::for_appliance(&self.config(), reader.username, reader.password)
    }

    /// An order-entry client logging in as `username` (a demo client).
    pub fn client_config(&self, username: &str) -> ClientConfig {
        let client = demo_client(username);
        ClientConfig::for_appliance(&self.config(), client.username, client.password)
    }

    /// Starts the appliance in-process.
    pub fn start(&self) -> anyhow::Result<RunningAppliance> {
        RunningAppliance::start(&self.config())
    }
}

/// The whole appliance running in this process (its loops on their own
/// threads); stopped on drop.
pub struct RunningAppliance {
    appliance: Option<Appliance>,
    config: ApplianceConfig,
}

impl RunningAppliance {
    /// Recovers the journal, binds every socket and starts every loop; the
    /// gateway, retransmit server and replay feed accept at return.
    pub fn start(config: &ApplianceConfig) -> anyhow::Result<RunningAppliance> {
        std::fs::create_dir_all(&config.journal.dir)
            .with_context(|| format!("creating {}", config.journal.dir.display()))?;
        let appliance =
            Appliance::start(config, Arc::new(Control::default()), &Default::default())?;
        Ok(RunningAppliance {
            appliance: Some(appliance),
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &ApplianceConfig {
        &self.config
    }

    pub fn journal_dir(&self) -> &Path {
        &self.config.journal.dir
    }

    /// Whether a loop has stopped (a failure).
    pub fn any_stopped(&self) -> bool {
        self.appliance.as_ref().is_some_and(Appliance::any_stopped)
    }

    /// Stops every loop (the journal stays; start again to resume the
    /// session).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.appliance.take().map_or(Ok(()), Appliance::stop)
    }

    /// Ends the session (end-of-session on the stream), then stops.
    pub fn end_session_and_stop(mut self) -> anyhow::Result<()> {
        match self.appliance.take() {
            Some(appliance) => {
                appliance.request_stop(true);
                appliance.stop()
            }
            None => Ok(()),
        }
    }
}

impl Drop for RunningAppliance {
    fn drop(&mut self) {
        if let Some(appliance) = self.appliance.take() {
            if let Err(error) = appliance.stop() {
                tracing::warn!(%error, "appliance stopped with an error");
            }
        }
    }
}

/// Sends every message of `messages` through `client`, pipelined as far as
/// its window allows (reconnecting and resending as it must), and waits for
/// every ack. Returns the acks in client_seq order. Allocates: tests and
/// tools only.
pub fn send_all<M: AsRef<[u8]>>(
    client: &mut OrderEntryClient,
    messages: impl IntoIterator<Item = M>,
    timeout: Duration,
) -> Result<Vec<Ack>, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut messages = messages.into_iter().peekable();
    let mut acks = Vec::new();
    let mut on_event = |event| {
        if let ClientEvent::Ack(ack) = event {
            acks.push(ack);
        }
    };
    while messages.peek().is_some() {
        while let Some(message) = messages.peek() {
            match client.queue(message.as_ref()) {
                Ok(_) => {
                    messages.next();
                }
                Err(ClientError::WindowFull | ClientError::Disconnected) => break,
                Err(error) => return Err(error),
            }
        }
        client.flush();
        if Instant::now() >= deadline {
            return Err(ClientError::Timeout);
        }
        client.wait(Duration::from_millis(20), &mut on_event);
    }
    client.wait_all_acked(
        deadline.saturating_duration_since(Instant::now()),
        &mut on_event,
    )?;
    Ok(acks)
}

/// Reads the stream with a fresh consumer (`config`, typically from seq 1)
/// until `last_seq` was delivered; returns every `(seq, message bytes)`.
/// Panics on a gap, a duplicate or the deadline. Allocates: tests only.
pub fn read_stream(
    config: &ConsumerConfig,
    last_seq: u64,
    timeout: Duration,
) -> Vec<(u64, Vec<u8>)> {
    let mut consumer = StreamConsumer::new(config).expect("join the stream");
    let mut messages: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut expected = config.start_seq.max(1);
    let done = consumer
        .run_until(
            timeout,
            |seq, message| {
                assert_eq!(seq, expected, "in order, no gap, no duplicate");
                expected += 1;
                messages.push((seq, message.as_bytes().to_vec()));
            },
            |consumer| consumer.delivered_seq() >= last_seq,
        )
        .expect("consume the stream");
    assert!(
        done,
        "stream read up to {} of {last_seq}",
        consumer.delivered_seq()
    );
    messages
}

/// A child process (a tool under test) killed and reaped on drop, so a
/// failing test leaves nothing running.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What end-to-end tests of the tools start first: the appliance of a spec
/// in this process, the real warehouse deciding on a thread, and the
/// configuration file the tools are given. Stopped on drop (the warehouse
/// first).
pub struct TestStack {
    pub warehouse: RunningWarehouse,
    pub appliance: RunningAppliance,
    /// `dir/tally.toml`: `spec`'s configuration.
    pub config: PathBuf,
}

impl TestStack {
    /// Starts `spec`'s appliance and a warehouse with `inventory_csv`
    /// (`location,sku_symbol,quantity` lines, written to
    /// `dir/inventory.csv`) and small limits; writes `dir/tally.toml`.
    ///
    /// # Panics
    /// When the appliance cannot start (a test bug or a port in use).
    pub fn start(spec: &ApplianceSpec, dir: &Path, inventory_csv: &str) -> TestStack {
        let appliance = spec.start().expect("start the appliance");
        let inventory = dir.join("inventory.csv");
        std::fs::write(&inventory, inventory_csv).expect("write the inventory");
        let warehouse = RunningWarehouse::start(
            spec,
            &inventory,
            tally_client::replica::ReplicaLimits::small(),
        );
        let config = dir.join("tally.toml");
        std::fs::write(&config, spec.toml()).expect("write the configuration");
        TestStack {
            warehouse,
            appliance,
            config,
        }
    }
}

/// Asks `GET path` at `addr` until it answers 200 (a service that is
/// starting), at most `timeout`.
///
/// # Panics
/// Past `timeout`, naming the path.
pub fn wait_for_200(addr: SocketAddr, path: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while http::request(addr, "GET", path, &[], None, Duration::from_secs(5))
        .map(|reply| reply.status)
        .ok()
        != Some(200)
    {
        assert!(
            Instant::now() < deadline,
            "GET {path} at {addr}: no 200 within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50)); // re-ask, with a deadline
    }
}

/// `tally-stat --once --json`'s row of the process named `process` among
/// the counter files in `dir`, if it shows one.
pub fn tally_stat_row(dir: &Path, process: &str) -> Option<serde_json::Value> {
    let output = std::process::Command::new(bin("tally-stat"))
        .args(["--once", "--json", "--interval", "0"])
        .arg(dir)
        .output()
        .expect("run tally-stat");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    report["processes"]
        .as_array()?
        .iter()
        .find(|row| row["process"] == process)
        .cloned()
}

/// The path of a tally binary built by this workspace (`tally-pos`,
/// `tally-monitor`, `tally-sequencer`, ...) for a test: in the target
/// directory the running test executable lives in (`target/debug/deps/..`). `cargo test --workspace` builds
/// every package's binaries before it runs a test; a binary of another
/// package has no `CARGO_BIN_EXE_` variable in this package's tests.
///
/// # Panics
///
/// When the binary is missing (this package's tests run alone): the message
/// says what to build.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("the test executable's directory");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir = dir.parent().expect("the target directory");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test --workspace` builds it; for one test alone run \
         `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_spec_validates_and_names_its_addresses() {
        let spec = ApplianceSpec::for_test(102, 7, "/tmp/tally-testkit-unit");
        let config = spec.config();
        assert_eq!(config.stream.group, Ipv4Addr::new(239, 255, 102, 7));
        assert_eq!(config.stream.port, 20_000 + 2 * 1300 + 35);
        assert_eq!(config.gateway.listen, spec.gateway());
        assert_eq!(config.retransmit.listen, spec.retransmit());
        assert_eq!(config.replay.listen, spec.replay());
        assert_eq!(config.clients.len(), DEMO_CLIENTS.len());
        let consumer = spec.consumer_config();
        assert_eq!(consumer.retransmit, spec.retransmit());
        assert_eq!(consumer.replay, spec.replay());
        assert_eq!(consumer.multicast.group, spec.group);
        assert_eq!(consumer.stale_timeout_ns, 600_000_000);
        let client = spec.client_config("pos3");
        assert_eq!(client.gateway, spec.gateway());
        assert_eq!(client.password, "pos3pass");
    }

    #[test]
    fn the_highest_test_ports_stay_below_the_ephemeral_range() {
        let spec = ApplianceSpec::for_test(108, 255, "/tmp/x");
        assert!(spec.port_base + 3 < 32_768);
    }

    #[test]
    fn every_demo_password_matches_its_hash() {
        for client in DEMO_CLIENTS {
            assert!(
                tally_config::gateway::verify_password(
                    client.password.as_bytes(),
                    client.password_hash
                ),
                "{}",
                client.username
            );
        }
    }
}
