//! `tally-bench`: the end-to-end load tool. See `--help`.
//!
//! It runs the appliance in-process (a fresh journal in a temporary
//! directory, its own ports and multicast group, N `pos` clients), drives it
//! through real TCP connections with pipelined SoupBinTCP clients, and reads
//! the real multicast stream with an io_uring subscriber. Two scenarios:
//!
//! * `throughput`: every client sends its orders as fast as the acks allow;
//!   the subscriber counts orders on the stream and checks that sequence
//!   numbers have no gap (loss must be zero). Reports orders per second
//!   received by the subscriber, from the first order sent to the last
//!   order received.
//! * `latency`: one or more clients at a fixed total rate; reports the
//!   command → ack round trip (send to `k` received) percentiles.
//! * `outcome`: the warehouse runs too (in-process, deep stock); POS tills
//!   send orders at a fixed total rate and measure order sent → its `D`/`J`
//!   seen on the stream: the full POS → gateway → sequencer → warehouse →
//!   gateway → sequencer → POS trip.
//! * `till-load`: no appliance of its own: the random load generator
//!   drives one till against the appliance of `--config`, logged in as
//!   `--user` (what `tally-pos --rate` was; `tally_benches::till_load`).

// The outcome scenario (the warehouse and tills in-process) beside this
// file; a crate root's modules would otherwise sit in src/bin/, where cargo
// takes every file for a binary of its own.
#[path = "tally-bench/outcome.rs"]
mod outcome;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tally_config::ApplianceConfig;
use tally_runtime::net::{MulticastConfig, MulticastReceiver, RecvStats};
use tally_sequencer::appliance::{Appliance, Control};
use tally_wire::mold::{MoldPacket, PacketKind, Session};
use tally_wire::soup::{self, FrameDecoder, ServerPacket};
use tally_wire::{Ack, Order};

/// End-to-end load tool for tally: pipelined SoupBinTCP clients → the
/// appliance (in-process, fresh journal) → the multicast stream.
#[derive(Parser, Debug)]
#[command(name = "tally-bench", version, about, long_about = None)]
struct Cli {
    /// Which measurement to run.
    #[arg(long, value_enum, default_value = "throughput")]
    scenario: Scenario,
    /// Order-entry clients (each its own TCP session and client id).
    #[arg(long, default_value_t = 2)]
    clients: u16,
    /// Orders per client (throughput scenario).
    #[arg(long, default_value_t = 1_000_000)]
    orders: u64,
    /// Total commands per second over all clients (latency scenario).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds to run (latency scenario).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Most commands a client has sent and not had acked.
    #[arg(long, default_value_t = 8192)]
    window: u64,
    /// Idle strategy of the appliance's loops: busy-spin, yield or back-off.
    #[arg(long, default_value = "back-off")]
    idle: String,
    /// fsync policy of the journal: none, batch or interval.
    #[arg(long, default_value = "none")]
    fsync: String,
    /// First TCP/UDP port to use (four consecutive ports).
    #[arg(long, default_value_t = 31_100)]
    port_base: u16,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Directory for the journal (and the disk scenario's files); default:
    /// the system's temporary directory.
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
    /// till-load: the appliance to load and the till's login.
    #[command(flatten)]
    connect: tally_client::cli::ConnectArgs,
    /// till-load's own options.
    #[command(flatten)]
    till: tally_benches::till_load::TillLoadArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Scenario {
    Throughput,
    Latency,
    Outcome,
    /// Request/response: each client sends one order and waits for its ack
    /// before the next (window 1), for `--seconds`, as a till does.
    /// Reports round trips per second and the round trip's percentiles.
    RequestResponse,
    /// The journal disk alone (no appliance): `fdatasync` latency after a
    /// 4 KiB and a 64 KiB append, and sequential write bandwidth (256 MiB
    /// then one `fdatasync`), in the journal's directory (`--dir`).
    Disk,
    /// One till in load mode against the running appliance of `--config`
    /// (`--rate` per second, `--seconds`, 0 = until SIGINT/SIGTERM).
    TillLoad,
}

const PASSWORD: &str = "benchpass";

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(&cli) {
        eprintln!("tally-bench: error: {error:#}");
        std::process::exit(1);
    }
}

fn config_text(cli: &Cli, journal_dir: &std::path::Path) -> String {
    let hash = tally_config::gateway::hash_password(PASSWORD);
    let mut clients = String::new();
    for id in 1..=cli.clients {
        clients.push_str(&format!(
            "[[clients]]\nusername = \"b{id}\"\npassword_hash = \"{hash}\"\nclient_id = {id}\nrole = \"pos\"\n\n"
        ));
    }
    clients.push_str(&format!(
        "[[clients]]\nusername = \"bwh\"\npassword_hash = \"{hash}\"\nclient_id = 900\nrole = \"authority\"\n\n"
    ));
    let loops: String = ["gateway", "sequencer", "retransmit", "replay"]
        .iter()
        .map(|name| format!("[loops.{name}]\nidle = \"{}\"\n", cli.idle))
        .collect();
    format!(
        r#"
[stream]
session = "BENCH"
group = "239.255.99.1"
port = {stream}
interface = "127.0.0.1"

[gateway]
listen = "127.0.0.1:{gateway}"
rate_limit_per_sec = 1000000000
rate_burst = 100000000
ring_messages = 65536

{clients}
[retransmit]
listen = "127.0.0.1:{retransmit}"

[replay]
listen = "127.0.0.1:{replay}"

[journal]
dir = "{dir}"
fsync = "{fsync}"

{loops}
"#,
        stream = cli.port_base,
        gateway = cli.port_base + 1,
        retransmit = cli.port_base + 2,
        replay = cli.port_base + 3,
        dir = journal_dir.display(),
        fsync = cli.fsync,
    )
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if cli.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if let Scenario::TillLoad = cli.scenario {
        tally_client::cli::init_logging();
        return tally_benches::till_load::run(&tally_benches::till_load::TillLoad {
            connect: &cli.connect,
            args: &cli.till,
            rate_per_sec: cli.rate,
            seconds: cli.seconds,
            json: cli.json,
        });
    }
    let base_dir = cli.dir.clone().unwrap_or_else(std::env::temp_dir);
    let journal_dir = base_dir.join(format!("tally-bench-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(journal_dir.clone());
    if let Scenario::Disk = cli.scenario {
        std::fs::create_dir_all(&journal_dir)
            .with_context(|| format!("creating {}", journal_dir.display()))?;
        return print_report(cli, &disk(&journal_dir)?);
    }
    let config =
        ApplianceConfig::parse(&config_text(cli, &journal_dir)).map_err(anyhow::Error::msg)?;
    let appliance = Appliance::start(&config, Arc::new(Control::default()), &Default::default())?;
    let gateway: SocketAddr = config.gateway.listen;
    let multicast = MulticastConfig {
        group: Ipv4Addr::new(239, 255, 99, 1),
        port: cli.port_base,
        interface: Ipv4Addr::LOCALHOST,
        ttl: 0,
        loopback: true,
    };
    let result = match cli.scenario {
        Scenario::Throughput => throughput(cli, gateway, &multicast),
        Scenario::Latency => latency(cli, gateway),
        Scenario::Outcome => outcome::outcome(cli, &config, &journal_dir),
        Scenario::RequestResponse => request_response(cli, gateway),
        Scenario::Disk | Scenario::TillLoad => {
            unreachable!("handled before the appliance starts")
        }
    };
    appliance.stop()?;
    print_report(cli, &result?)
}

fn print_report(cli: &Cli, report: &serde_json::Value) -> anyhow::Result<()> {
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for (key, value) in report.as_object().expect("an object") {
            println!("{key:>24}: {value}");
        }
    }
    Ok(())
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A logged-in client connection: a writer and a reader half.
fn connect(gateway: SocketAddr, id: u16) -> anyhow::Result<(TcpStream, FrameDecoder, u32)> {
    let mut stream = TcpStream::connect(gateway).context("connecting to the gateway")?;
    stream.set_nodelay(true)?;
    let mut buf = [0u8; 64];
    let n = soup::write_login_request(&mut buf, &format!("b{id}"), PASSWORD, Session::BLANK, 0)?;
    stream.write_all(&buf[..n])?;
    let mut decoder = FrameDecoder::new(soup::MAX_FRAME_BYTES);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(frame) = decoder.next_frame()? {
            match ServerPacket::parse(frame)? {
                ServerPacket::LoginAccepted { next_seq, .. } => {
                    return Ok((stream, decoder, next_seq as u32))
                }
                ServerPacket::Heartbeat => continue,
                other => bail!("login of b{id} failed: {other:?}"),
            }
        }
        if Instant::now() > deadline {
            bail!("no login answer for b{id}");
        }
        let n = read_retrying(&mut stream, decoder.spare())?;
        if n == 0 {
            bail!("gateway closed the connection of b{id}");
        }
        decoder.commit(n);
    }
}

fn read_retrying(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads acks until `expected` arrived; calls `on_ack(client_seq, at)`.
fn read_acks(
    mut stream: TcpStream,
    mut decoder: FrameDecoder,
    expected: u64,
    acked: &AtomicU64,
    mut on_ack: impl FnMut(u32, Instant),
) -> anyhow::Result<()> {
    let mut seen = 0u64;
    while seen < expected {
        while let Some(frame) = decoder.next_frame()? {
            if let ServerPacket::Sequenced(payload) = ServerPacket::parse(frame)? {
                let ack = accepted_ack(payload)?;
                on_ack(ack.client_seq(), Instant::now());
                seen += 1;
                acked.store(seen, Ordering::Release);
            }
        }
        let n = read_retrying(&mut stream, decoder.spare())?;
        if n == 0 {
            bail!("gateway closed the connection after {seen} acks");
        }
        decoder.commit(n);
    }
    Ok(())
}

/// The ack in `payload`; a rejection is an error (the bench's commands are
/// all valid).
fn accepted_ack(payload: &[u8]) -> anyhow::Result<Ack<'_>> {
    let ack = Ack::parse(payload)?;
    if let Ack::Rejected(rejected) = ack {
        bail!(
            "command {} rejected with reason {}",
            rejected.client_seq.get(),
            rejected.reason as char
        );
    }
    Ok(ack)
}

fn order_frame(client_seq: u32, out: &mut Vec<u8>) {
    let order =
        Order::new(u64::from(client_seq), 1, 1 + client_seq % 1000, 1).with_client_seq(client_seq);
    let mut frame = [0u8; 40];
    let n = soup::write_unsequenced(&mut frame, order.as_bytes()).expect("an order fits");
    out.extend_from_slice(&frame[..n]);
}

fn throughput(
    cli: &Cli,
    gateway: SocketAddr,
    multicast: &MulticastConfig,
) -> anyhow::Result<serde_json::Value> {
    let total = cli.orders * u64::from(cli.clients);
    let done = Arc::new(AtomicBool::new(false));
    let subscriber = spawn_stream_counter(multicast, total, &done)?;
    let started = Instant::now();
    let mut handles = Vec::new();
    for id in 1..=cli.clients {
        handles.push(spawn_pipelined_client(gateway, id, cli.orders, cli.window)?);
    }
    for (writer, reader) in handles {
        writer.join().expect("writer thread")?;
        reader.join().expect("ack reader thread")?;
    }
    let acked_elapsed = started.elapsed();
    done.store(true, Ordering::Release);
    let (received, gaps, last_received, stats) = subscriber.join().expect("subscriber thread");
    // From the first order sent to the last order received on the stream.
    let elapsed = last_received.saturating_duration_since(started);
    let lost = total - received.min(total);
    let rate = received as f64 / elapsed.as_secs_f64().max(1e-9);
    if lost > 0 || gaps > 0 {
        eprintln!("tally-bench: LOSS: {lost} orders missing, {gaps} sequence numbers skipped on the stream");
    }
    Ok(serde_json::json!({
        "scenario": "throughput",
        "clients": cli.clients,
        "orders_sent": total,
        "orders_received": received,
        "orders_lost": lost,
        "stream_gaps": gaps,
        "received_per_sec": rate.round(),
        "acked_per_sec": (total as f64 / acked_elapsed.as_secs_f64()).round(),
        "subscriber_enobufs": stats.enobufs,
        "idle": cli.idle,
        "fsync": cli.fsync,
    }))
}

/// What the stream counter saw: orders, sequence numbers skipped, when the
/// last packet came, the receiver's counts.
type StreamCount = (u64, u64, Instant, RecvStats);

/// The subscriber: counts orders on the stream and the sequence numbers it
/// skipped, until `total` orders or 5 s after `done`.
fn spawn_stream_counter(
    multicast: &MulticastConfig,
    total: u64,
    done: &Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<StreamCount>> {
    let mut receiver =
        MulticastReceiver::new(multicast, 1024, 2048).context("joining the stream")?;
    let done = Arc::clone(done);
    Ok(std::thread::Builder::new()
        .name("bench-subscriber".into())
        .spawn(move || {
            let mut next_seq = 0u64;
            let mut orders = 0u64;
            let mut gaps = 0u64;
            let mut last = Instant::now();
            let deadline_after_done = Duration::from_secs(5);
            let mut done_at: Option<Instant> = None;
            while orders < total {
                if done.load(Ordering::Acquire) {
                    let at = *done_at.get_or_insert_with(Instant::now);
                    if at.elapsed() > deadline_after_done {
                        break;
                    }
                }
                let _ = receiver.wait(Duration::from_millis(10), |datagram| {
                    let Ok(packet) = MoldPacket::parse(datagram) else {
                        return;
                    };
                    if packet.kind() != PacketKind::Data {
                        return;
                    }
                    for (seq, message) in packet.messages() {
                        if next_seq != 0 && seq != next_seq {
                            gaps += seq.saturating_sub(next_seq);
                        }
                        next_seq = seq + 1;
                        if message.first() == Some(&b'O') {
                            orders += 1;
                        }
                    }
                    last = Instant::now();
                });
            }
            (orders, gaps, last, receiver.stats())
        })?)
}

/// A client's writer thread and its ack reader's, which returns an `R`.
type ClientThreads<R> = (
    JoinHandle<anyhow::Result<()>>,
    JoinHandle<anyhow::Result<R>>,
);

/// Client `id` sending `orders` orders as fast as a window of `window`
/// unacked commands allows.
fn spawn_pipelined_client(
    gateway: SocketAddr,
    id: u16,
    orders: u64,
    window: u64,
) -> anyhow::Result<ClientThreads<()>> {
    let (stream, decoder, first_seq) = connect(gateway, id)?;
    let reader_stream = stream.try_clone()?;
    let acked = Arc::new(AtomicU64::new(0));
    let reader = {
        let acked = Arc::clone(&acked);
        std::thread::Builder::new()
            .name(format!("bench-acks-{id}"))
            .spawn(move || read_acks(reader_stream, decoder, orders, &acked, |_, _| {}))?
    };
    let writer = std::thread::Builder::new()
        .name(format!("bench-client-{id}"))
        .spawn(move || {
            let mut stream = stream;
            let mut buf = Vec::with_capacity(1 << 16);
            let mut sent = 0u64;
            while sent < orders {
                // Stay within the window of unacked commands.
                while sent - acked.load(Ordering::Acquire) >= window {
                    std::thread::yield_now();
                }
                let room = (window - (sent - acked.load(Ordering::Acquire)))
                    .min(orders - sent)
                    .min(1500);
                for _ in 0..room {
                    order_frame(first_seq + sent as u32, &mut buf);
                    sent += 1;
                }
                stream.write_all(&buf)?;
                buf.clear();
            }
            anyhow::Ok(())
        })?;
    Ok((writer, reader))
}

fn latency(cli: &Cli, gateway: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let per_client_rate = (cli.rate / u64::from(cli.clients)).max(1);
    let per_client = per_client_rate * cli.seconds;
    let interval = Duration::from_nanos(1_000_000_000 / per_client_rate);
    let mut handles = Vec::new();
    for id in 1..=cli.clients {
        handles.push(spawn_paced_client(gateway, id, per_client, interval)?);
    }
    let mut histogram = rtt_ns_histogram()?;
    for (writer, reader) in handles {
        writer.join().expect("writer thread")?;
        histogram.add(reader.join().expect("ack reader thread")?)?;
    }
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(serde_json::json!({
        "scenario": "latency",
        "clients": cli.clients,
        "rate_per_sec": cli.rate,
        "commands": histogram.len(),
        "ack_rtt_p50_us": us(0.50),
        "ack_rtt_p99_us": us(0.99),
        "ack_rtt_p999_us": us(0.999),
        "ack_rtt_max_us": histogram.max() as f64 / 1000.0,
        "idle": cli.idle,
        "fsync": cli.fsync,
    }))
}

/// Client `id` sending `count` orders, one every `interval`: its writer,
/// and its ack reader, which returns the command → ack round trips (ns).
fn spawn_paced_client(
    gateway: SocketAddr,
    id: u16,
    count: u64,
    interval: Duration,
) -> anyhow::Result<ClientThreads<Histogram<u64>>> {
    let (stream, decoder, first_seq) = connect(gateway, id)?;
    let reader_stream = stream.try_clone()?;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let origin = Instant::now();
    let reader = {
        let sent_at = Arc::clone(&sent_at);
        let acked = Arc::new(AtomicU64::new(0));
        std::thread::Builder::new()
            .name(format!("bench-acks-{id}"))
            .spawn(move || {
                let mut histogram = rtt_ns_histogram().expect("histogram bounds");
                read_acks(reader_stream, decoder, count, &acked, |client_seq, at| {
                    let index = (client_seq - first_seq) as usize;
                    let sent = sent_at[index].load(Ordering::Acquire);
                    let now = at.duration_since(origin).as_nanos() as u64;
                    let _ = histogram.record(now.saturating_sub(sent).max(1));
                })?;
                anyhow::Ok(histogram)
            })?
    };
    let writer = std::thread::Builder::new()
        .name(format!("bench-client-{id}"))
        .spawn(move || {
            let mut stream = stream;
            let mut buf = Vec::with_capacity(64);
            let mut next = Instant::now();
            for index in 0..count {
                pace_until(next);
                next += interval;
                order_frame(first_seq + index as u32, &mut buf);
                sent_at[index as usize]
                    .store(origin.elapsed().as_nanos() as u64, Ordering::Release);
                stream.write_all(&buf)?;
                buf.clear();
            }
            anyhow::Ok(())
        })?;
    Ok((writer, reader))
}

/// Waits until `at` without burning a core the appliance needs (this
/// machine may have only two): sleeps until shortly before, then yields the
/// last stretch.
fn pace_until(at: Instant) {
    loop {
        let now = Instant::now();
        if now >= at {
            break;
        }
        let left = at - now;
        if left > Duration::from_micros(80) {
            std::thread::sleep(left - Duration::from_micros(60));
        } else {
            std::thread::yield_now();
        }
    }
}

/// A histogram of round trips in ns, 1 ns to 60 s, 3 significant digits.
fn rtt_ns_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
}

/// The disk scenario: what one `fdatasync` costs after a small and a
/// group-commit-sized append, and how fast the disk takes sequential writes.
fn disk(dir: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    use std::io::Write as _;
    let path = dir.join("disk-probe");
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut sync_after = |bytes: usize, rounds: usize| -> anyhow::Result<Histogram<u64>> {
        let chunk = vec![0x5Au8; bytes];
        let mut histogram = rtt_ns_histogram()?;
        for _ in 0..rounds {
            file.write_all(&chunk)?;
            let started = Instant::now();
            file.sync_data()?;
            histogram.record(started.elapsed().as_nanos().max(1) as u64)?;
        }
        Ok(histogram)
    };
    let small = sync_after(4096, 1000)?;
    let group = sync_after(64 * 1024, 500)?;
    let chunk = vec![0xA5u8; 1 << 20];
    let total_bytes = 256u64 << 20;
    let started = Instant::now();
    for _ in 0..(total_bytes >> 20) {
        file.write_all(&chunk)?;
    }
    file.sync_data()?;
    let seconds = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    let us = |histogram: &Histogram<u64>, quantile: f64| {
        histogram.value_at_quantile(quantile) as f64 / 1000.0
    };
    Ok(serde_json::json!({
        "scenario": "disk",
        "dir": dir.display().to_string(),
        "fdatasync_4k_p50_us": us(&small, 0.5),
        "fdatasync_4k_p99_us": us(&small, 0.99),
        "fdatasync_64k_p50_us": us(&group, 0.5),
        "fdatasync_64k_p99_us": us(&group, 0.99),
        "write_then_sync_mb_per_sec": (total_bytes as f64 / seconds / 1e6).round(),
    }))
}

/// One thread per client: send one order, read until its ack, record the
/// round trip, repeat until `--seconds` have passed.
fn request_response(cli: &Cli, gateway: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let run_for = Duration::from_secs(cli.seconds);
    let mut clients = Vec::new();
    for id in 1..=cli.clients {
        clients.push(connect(gateway, id)?);
    }
    let started = Instant::now();
    let mut handles = Vec::new();
    for (id, (mut stream, mut decoder, first_seq)) in (1..=cli.clients).zip(clients) {
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-rr-{id}"))
                .spawn(move || {
                    let mut histogram = rtt_ns_histogram()?;
                    let mut frame = Vec::with_capacity(64);
                    let mut client_seq = first_seq;
                    while started.elapsed() < run_for {
                        frame.clear();
                        order_frame(client_seq, &mut frame);
                        let sent = Instant::now();
                        stream.write_all(&frame)?;
                        'ack: loop {
                            while let Some(bytes) = decoder.next_frame()? {
                                if let ServerPacket::Sequenced(payload) =
                                    ServerPacket::parse(bytes)?
                                {
                                    let ack = accepted_ack(payload)?;
                                    if ack.client_seq() == client_seq {
                                        break 'ack;
                                    }
                                }
                            }
                            let n = read_retrying(&mut stream, decoder.spare())?;
                            if n == 0 {
                                bail!("gateway closed the connection of client {id}");
                            }
                            decoder.commit(n);
                        }
                        histogram.record(sent.elapsed().as_nanos().max(1) as u64)?;
                        client_seq += 1;
                    }
                    anyhow::Ok(histogram)
                })?,
        );
    }
    let mut all = rtt_ns_histogram()?;
    for handle in handles {
        all.add(handle.join().expect("client thread")?)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let us = |quantile: f64| all.value_at_quantile(quantile) as f64 / 1000.0;
    Ok(serde_json::json!({
        "scenario": "request-response",
        "clients": cli.clients,
        "idle": cli.idle,
        "fsync": cli.fsync,
        "round_trips": all.len(),
        "round_trips_per_sec": (all.len() as f64 / elapsed).round(),
        "rtt_p50_us": us(0.5),
        "rtt_p99_us": us(0.99),
        "rtt_p999_us": us(0.999),
        "rtt_max_us": all.max() as f64 / 1000.0,
    }))
}
