//! `tally-demo`: the whole appliance and its applications on loopback, in one
//! process, then a verification. See `--help`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use tally_client::client::{ClientConfig, ClientEvent, OrderEntryClient};
use tally_client::consumer::{monotonic_ns, ConsumerConfig, StreamConsumer};
use tally_client::replica::{Replica, ReplicaLimits};
use tally_config::ApplianceConfig;
use tally_demo::load::{LoadConfig, LoadGenerator};
use tally_demo::serve::ServeOptions;
use tally_demo::DEMO_CLIENTS;
use tally_monitor::{HttpAuthConfig, Monitor, MonitorConfig};
use tally_pos::{rtt_histogram, Pos, PosConfig, PosCounterFile, PosStats};
use tally_runtime::counters::CounterReader;
use tally_sequencer::appliance::{Appliance, Control};
use tally_warehouse::app::{BroadcastPacing, WarehouseApp, WarehouseAppConfig};
use tally_warehouse::counters::WarehouseCounterFile;
use tally_wire::{delta_reason, Adjust, Message, Transfer};

/// Runs the whole of tally on this machine for a while, then checks it:
/// the appliance (gateway, sequencer, journal, multicast stream, retransmit
/// server, replay feed) with the example configuration, the warehouse with
/// the sample inventory, several POS tills in load mode racing for stock, a
/// back-office client moving stock between locations, and a tap that prints
/// a progress line every second. Everything talks over real loopback sockets.
///
/// At the end it stops the tills, waits until every command has its outcome
/// and every replica has applied the last message, and verifies: every
/// replica's digest equals the warehouse's, nothing was oversold. The exit
/// code is non-zero when a check fails.
#[derive(Parser, Debug)]
#[command(name = "tally-demo", version, about, long_about)]
struct Cli {
    /// The appliance configuration (its journal directory is the demo's:
    /// the demo's session there is started afresh).
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        default_value = "config/tally.toml"
    )]
    config: PathBuf,
    /// The initial inventory (CSV: location,sku_symbol,quantity).
    #[arg(long, value_name = "CSV", default_value = "apps/data/inventory.csv")]
    inventory: PathBuf,
    /// How long the tills send, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// POS tills (pos1, pos2, … from the configuration).
    #[arg(long, default_value_t = 4)]
    pos: usize,
    /// Commands per second per till (0 = as fast as outcomes allow).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Percentage of multicast packets the tills' receivers drop (seeded),
    /// to show gap fill at work.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seed of the tills' random choices and of the loss.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where the monitor's HTTP/JSON read side listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    monitor: std::net::SocketAddr,
    /// Print the summary as one JSON object instead of text (with
    /// --serve: the first line is one JSON object with `http`, `config`
    /// and the demo credentials per role).
    #[arg(long)]
    json: bool,
    /// Run the whole stack on loopback with the sample inventory and no
    /// load until interrupted (Ctrl-C): the appliance, the warehouse and
    /// the HTTP service (dashboard, /v1 API). Prints the dashboard URL and
    /// commands to paste.
    #[arg(long)]
    serve: bool,
    /// With --serve: the stream's port; the gateway, retransmit server,
    /// replay feed and HTTP service use the next four.
    #[arg(long, value_name = "N", default_value_t = 31000)]
    port_base: u16,
    /// With --serve: the stream's multicast group.
    #[arg(long, value_name = "ADDR", default_value_t = tally_demo::serve::SERVE_GROUP)]
    group: std::net::Ipv4Addr,
    /// With --serve: where the journal, the configuration it runs with and
    /// the demo users' password files go [default: a tally-demo folder in
    /// the temporary directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// What each till's thread shares once a second for the progress line.
#[derive(Clone, Debug, Default)]
struct TillView {
    stats: PosStats,
    rtt: Option<Histogram<u64>>,
    /// Messages recovered by re-request (gaps in the live stream).
    gaps_filled: u64,
    /// Messages read from the replay feed (the late join at start, or a
    /// large gap).
    caught_up: u64,
    kernel_drops: u64,
}

fn main() {
    let cli = Cli::parse();
    if cli.serve {
        if let Err(error) = run_serve(&cli) {
            eprintln!("tally-demo: error: {error:#}");
            std::process::exit(2);
        }
        return;
    }
    match run(&cli) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("tally-demo: error: {error:#}");
            std::process::exit(2);
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<bool> {
    if !(0.0..=50.0).contains(&cli.loss) {
        bail!("--loss must be a percentage between 0 and 50");
    }
    if cli.pos == 0 {
        bail!("--pos must be at least 1");
    }
    let config = ApplianceConfig::load(&cli.config).map_err(anyhow::Error::msg)?;
    // The demo logs in with the demo passwords of the example configuration.
    let password_of = |username: &str| {
        DEMO_CLIENTS
            .iter()
            .find(|client| client.username == username)
            .map(|client| client.password.to_string())
    };
    let tills: Vec<(String, String, u16)> = config
        .clients
        .iter()
        .filter(|client| client.role == "pos")
        .filter_map(|client| {
            Some((
                client.username.clone(),
                password_of(&client.username)?,
                client.client_id,
            ))
        })
        .take(cli.pos)
        .collect();
    if tills.len() < cli.pos {
        bail!(
            "--pos {} but {} configures only {} pos clients with demo passwords",
            cli.pos,
            cli.config.display(),
            tills.len()
        );
    }
    let user_of = |role: &str| {
        config
            .clients
            .iter()
            .filter(|client| client.role == role)
            .find_map(|client| {
                Some((
                    client.username.clone(),
                    password_of(&client.username)?,
                    client.client_id,
                ))
            })
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} configures no {role} client whose demo password tally-demo knows",
                    cli.config.display()
                )
            })
    };
    let (wh_user, wh_password, wh_origin) = user_of("authority")?;
    let (ops_user, ops_password, _) = user_of("ops")?;
    let (reader_user, reader_password, _) = user_of("reader")?;

    // A fresh session every run: the demo owns its journal directory.
    let journal_dir = config.journal.dir.clone();
    let session = config.session()?;
    let journal = tally_sequencer::journal::journal_path(&journal_dir, session);
    let snapshot = journal_dir.join("warehouse.snapshot");
    // The journal's checkpoint goes with it (a checkpoint without its
    // journal is refused at start).
    let checkpoint = tally_sequencer::journal::checkpoint_path(&journal_dir, session);
    for path in [&journal, &checkpoint, &snapshot] {
        if path.exists() {
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    say(cli, &format!(
        "tally-demo: session {} on loopback (gateway {}, stream {}:{}), {} tills at {}/s each for {} s, loss {}%",
        session.as_str(),
        config.gateway.listen,
        config.stream.group,
        config.stream.port,
        cli.pos,
        cli.rate,
        cli.seconds,
        cli.loss
    ));

    let appliance = Appliance::start(&config, Arc::new(Control::default()), &Default::default())
        .context("starting the appliance")?;
    let counters =
        CounterReader::open(&config.counters_path()).context("opening the appliance's counters")?;
    let next_seq = move || {
        counters
            .read()
            .find(|(name, _)| *name == "sequencer.next_seq")
            .map(|(_, value)| value)
            .unwrap_or(1)
    };

    // One place for limits: the configuration's [limits] sizes the
    // warehouse's state and every replica's (tills, monitor, tap).
    let limits = ReplicaLimits::from_config(&config.limits);
    limits
        .validate()
        .map_err(|error| anyhow::anyhow!("[limits] in {}: {error}", cli.config.display()))?;

    // The warehouse first: the tills wait for its session-start broadcast.
    let stop_warehouse = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let warehouse_config = WarehouseAppConfig {
        consumer: ConsumerConfig::for_appliance(&config, &reader_user, &reader_password),
        client: ClientConfig::for_appliance(&config, &wh_user, &wh_password),
        own_origin: wh_origin,
        limits,
        inventory: Some(cli.inventory.clone()),
        snapshot: Some(snapshot.clone()),
        snapshot_interval: Duration::from_secs(5),
        expiry_check_interval: Duration::from_millis(50),
        catch_up_timeout: Duration::from_secs(30),
    };
    // The session-start broadcast stays within the gateway's rate limit.
    let pacing = BroadcastPacing::for_appliance(&config);
    let warehouse_thread: JoinHandle<anyhow::Result<WarehouseApp>> = {
        let stop = Arc::clone(&stop_warehouse);
        let warehouse_counters = journal_dir.join("tally-warehouse.counters");
        std::thread::Builder::new()
            .name("demo-warehouse".into())
            .spawn(move || {
                let mut app = match WarehouseApp::start_paced(warehouse_config, Some(pacing)) {
                    Ok(app) => app,
                    Err(error) => {
                        let _ = ready_tx.send(Err(format!("{error:#}")));
                        return Err(error);
                    }
                };
                let replica = app.engine().replica();
                let _ = ready_tx.send(Ok((replica.locations().count(), replica.skus().count())));
                // Its counters where tally-stat looks (./target/tally-demo).
                let counters = WarehouseCounterFile::create(
                    Some(&warehouse_counters),
                    "tally-warehouse (demo)",
                )?;
                app.run_with(&stop, |app| counters.publish(app))?;
                Ok(app)
            })?
    };
    let (locations, skus) = match ready_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(sizes)) => sizes,
        Ok(Err(error)) => bail!("the warehouse did not start: {error}"),
        Err(_) => bail!("the warehouse did not start within 60 s"),
    };
    say(
        cli,
        &format!("tally-demo: warehouse online with {locations} locations x {skus} SKUs"),
    );

    // The read side: HTTP/JSON on --monitor.
    let mut monitor_config = MonitorConfig::new(
        cli.monitor,
        ConsumerConfig::for_appliance(&config, &reader_user, &reader_password),
    );
    monitor_config.consumer.start_seq = 1;
    monitor_config.limits = limits;
    // Readers of the configuration's [[clients]] (e.g. read1 / readpass) read
    // over HTTP Basic; /health and /ready need nothing.
    monitor_config.auth = HttpAuthConfig::from_appliance(&config).map_err(anyhow::Error::msg)?;
    let monitor = Monitor::start(monitor_config)
        .with_context(|| format!("starting the monitor on {}", cli.monitor))?;
    say(
        cli,
        &format!(
            "tally-demo: monitor on http://{0}/health (try curl -u read1:readpass http://{0}/availability/<SYMBOL>, /depleted, /metrics)",
            monitor.local_addr()
        ),
    );

    // The tills.
    let stop_tills = Arc::new(AtomicBool::new(false));
    let until = Instant::now() + Duration::from_secs(cli.seconds);
    let views: Arc<Mutex<Vec<TillView>>> =
        Arc::new(Mutex::new(vec![TillView::default(); tills.len()]));
    let mut till_threads = Vec::new();
    for (index, (user, password, _origin)) in tills.iter().enumerate() {
        let mut pos_config = PosConfig::for_appliance(&config, user, password)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut load = LoadConfig::new(cli.seed.wrapping_add(index as u64 * 7919));
        load.rate_per_sec = cli.rate;
        let mut load = LoadGenerator::new(load).map_err(|e| anyhow::anyhow!("{e}"))?;
        if cli.loss > 0.0 {
            pos_config.consumer.loss = Some((
                cli.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9),
                cli.loss / 100.0,
            ));
        }
        pos_config.drain_timeout = Duration::from_secs(20);
        let stop = Arc::clone(&stop_tills);
        let views = Arc::clone(&views);
        let counters = PosCounterFile::create(
            &journal_dir.join(format!("tally-pos-{user}.counters")),
            &format!("tally-pos {user} (demo)"),
        )?;
        till_threads.push(
            std::thread::Builder::new()
                .name(format!("demo-{user}"))
                .spawn(move || {
                    let mut pos = Pos::new(pos_config).map_err(|e| anyhow::anyhow!("{e}"))?;
                    if !pos
                        .wait_ready(Duration::from_secs(30))
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                    {
                        bail!("till {index} never saw the warehouse's directory");
                    }
                    let drained = load
                        .run(&mut pos, &stop, Some(until), |pos| {
                            let view = TillView {
                                stats: pos.stats(),
                                rtt: Some(pos.histogram().clone()),
                                gaps_filled: pos.consumer().stats().recovered_by_retransmit,
                                caught_up: pos.consumer().stats().recovered_by_replay,
                                kernel_drops: pos.consumer().stats().kernel_drops,
                            };
                            if let Ok(mut views) = views.lock() {
                                views[index] = view;
                            }
                            counters.publish(pos);
                        })
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    counters.publish(&pos);
                    anyhow::Ok((pos, drained))
                })?,
        );
    }

    // Back office: transfers between locations and restocks, a few a second.
    let ops_thread = {
        let stop = Arc::clone(&stop_tills);
        let client_config = ClientConfig::for_appliance(&config, &ops_user, &ops_password);
        let (locations, skus) = (locations as u16, skus as u32);
        std::thread::Builder::new()
            .name("demo-ops".into())
            .spawn(move || back_office(client_config, locations, skus, until, &stop))?
    };

    // The tap: its own replica, message counts and the progress line.
    let mut tap = Tap::new(
        ConsumerConfig::for_appliance(&config, &reader_user, &reader_password),
        limits,
    )?;
    let started = Instant::now();
    let mut next_line = started + Duration::from_secs(1);
    let mut last_seq = 0u64;
    let mut last_orders = 0u64;
    while Instant::now() < until {
        tap.poll_for(Duration::from_millis(50))?;
        if Instant::now() >= next_line {
            next_line += Duration::from_secs(1);
            let views = views.lock().map(|v| v.clone()).unwrap_or_default();
            let mut rtt = rtt_histogram();
            let (mut fills, mut rejects, mut gaps, mut caught_up, mut drops) = (0, 0, 0, 0, 0);
            for view in &views {
                fills += view.stats.filled;
                rejects += view.stats.rejected + view.stats.gateway_rejected;
                gaps += view.gaps_filled;
                caught_up += view.caught_up;
                drops += view.kernel_drops;
                if let Some(h) = &view.rtt {
                    let _ = rtt.add(h);
                }
            }
            let seq = tap.replica.last_seq();
            let orders = tap.count(b'O');
            let p = |q: f64| {
                if rtt.is_empty() {
                    0.0
                } else {
                    rtt.value_at_quantile(q) as f64 / 1000.0
                }
            };
            say(cli, &format!(
                "t={:>3}s seq={seq:>8} msgs/s={:>7} orders/s={:>6} fills={fills:>7} rejects={rejects:>6} gaps_filled={gaps:>5} caught_up={caught_up:>5} kernel_drops={drops:>4} rtt_p50={:.0}us p99={:.0}us",
                started.elapsed().as_secs(),
                seq - last_seq,
                orders - last_orders,
                p(0.5),
                p(0.99)
            ));
            last_seq = seq;
            last_orders = orders;
        }
    }

    // Stop: tills drain their outcomes, back office stops, the warehouse
    // stops deciding once its events are all back and saves its snapshot.
    say(
        cli,
        "tally-demo: stopping the tills and waiting for every outcome",
    );
    let ops_sent = ops_thread
        .join()
        .map_err(|_| anyhow::anyhow!("back-office thread panicked"))??;
    let mut tills_done = Vec::new();
    for handle in till_threads {
        let (pos, drained) = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a till thread panicked"))??;
        tills_done.push((pos, drained));
    }
    stop_warehouse.store(true, Ordering::Release);
    let warehouse = warehouse_thread
        .join()
        .map_err(|_| anyhow::anyhow!("warehouse thread panicked"))??;
    let final_seq = next_seq() - 1;

    // Every replica applies up to the final seq.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tap.replica.last_seq() < final_seq && Instant::now() < deadline {
        tap.poll_for(Duration::from_millis(20))?;
    }
    for (pos, _) in &mut tills_done {
        pos.catch_up(final_seq, Duration::from_secs(30))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    monitor.wait_for_seq(final_seq, Duration::from_secs(30));
    let (monitor_seq, monitor_digest) = monitor.digest();
    let monitor_oversold = monitor.read(|model| model.replica().oversold());
    monitor.stop()?;
    appliance.stop()?;

    // Verify.
    let warehouse_digest = warehouse.engine().digest();
    let warehouse_seq = warehouse.engine().replica().last_seq();
    let mut replicas = vec![
        (
            "tap".to_string(),
            tap.replica.last_seq(),
            tap.replica.digest(),
            tap.replica.oversold(),
        ),
        (
            "monitor".to_string(),
            monitor_seq,
            monitor_digest,
            monitor_oversold,
        ),
    ];
    let mut rtt = rtt_histogram();
    let mut stats_total = PosStats::default();
    let mut gaps_filled = 0u64;
    let mut caught_up = 0u64;
    let mut kernel_drops = 0u64;
    let mut all_drained = true;
    for ((user, _, _), (pos, drained)) in tills.iter().zip(&tills_done) {
        replicas.push((
            user.clone(),
            pos.replica().last_seq(),
            pos.replica().digest(),
            pos.replica().oversold(),
        ));
        let _ = rtt.add(pos.histogram());
        let stats = pos.stats();
        stats_total.outcomes += stats.outcomes;
        stats_total.filled += stats.filled;
        stats_total.rejected += stats.rejected;
        stats_total.gateway_rejected += stats.gateway_rejected;
        stats_total.skipped_would_fail += stats.skipped_would_fail;
        stats_total.units_sold += stats.units_sold;
        gaps_filled += pos.consumer().stats().recovered_by_retransmit;
        caught_up += pos.consumer().stats().recovered_by_replay;
        kernel_drops += pos.consumer().stats().kernel_drops;
        all_drained &= *drained;
    }
    let consistent = replicas
        .iter()
        .all(|(_, seq, digest, _)| *seq == final_seq && *digest == warehouse_digest)
        && warehouse_seq == final_seq;
    let oversold: u64 = replicas
        .iter()
        .map(|(_, _, _, oversold)| *oversold)
        .sum::<u64>()
        + warehouse.engine().replica().oversold();
    let p = |q: f64| {
        if rtt.is_empty() {
            0.0
        } else {
            rtt.value_at_quantile(q) as f64 / 1000.0
        }
    };
    let summary = serde_json::json!({
        "final_seq": final_seq,
        "messages": tap.messages,
        "orders": tap.count(b'O'),
        "accepted": warehouse.engine().counters().accepted,
        "rejected": warehouse.engine().counters().rejected(),
        "gateway_rejected": tap.count(b'j'),
        "fills": stats_total.filled,
        "holds": tap.count(b'H'),
        "hold_ends": tap.count(b'E'),
        "transfers": tap.count(b'T'),
        "back_office_commands": ops_sent,
        "skipped_would_fail": stats_total.skipped_would_fail,
        "units_sold": stats_total.units_sold,
        "replicas": replicas.len() + 1,
        "replicas_consistent": consistent,
        "all_outcomes_received": all_drained,
        "oversold": oversold,
        "gaps_recovered": gaps_filled + caught_up,
        "gaps_filled": gaps_filled,
        "caught_up_by_replay": caught_up,
        "kernel_drops": kernel_drops,
        "loss_percent": cli.loss,
        "rtt_p50_us": p(0.5),
        "rtt_p99_us": p(0.99),
        "warehouse_digest": format!("{warehouse_digest:016x}"),
        "message_counts": tap.counts_json(),
    });
    let ok = consistent && oversold == 0 && all_drained;
    if cli.json {
        println!("{summary}");
    } else {
        println!("tally-demo: verification at seq {final_seq}");
        println!("  warehouse     seq {warehouse_seq:>8}  digest {warehouse_digest:016x}");
        for (name, seq, digest, oversold) in &replicas {
            let mark = if *seq == final_seq && *digest == warehouse_digest {
                "equal"
            } else {
                "DIFFERENT"
            };
            println!(
                "  {name:<12}  seq {seq:>8}  digest {digest:016x}  {mark}  oversold {oversold}"
            );
        }
        println!(
            "  messages {} (orders {}, fills {}, rejects {}, holds {}, transfers {})",
            tap.messages,
            tap.count(b'O'),
            stats_total.filled,
            warehouse.engine().counters().rejected(),
            tap.count(b'H'),
            tap.count(b'T')
        );
        println!(
            "  gaps filled by re-request {gaps_filled}, caught up by replay {caught_up} (the tills join after the session start), kernel drops {kernel_drops}; order round trip p50 {:.0} us, p99 {:.0} us",
            p(0.5),
            p(0.99)
        );
        println!("  replicas consistent: {consistent}; oversold: {oversold}; every command answered: {all_drained}");
        println!("tally-demo: {}", if ok { "OK" } else { "FAILED" });
    }
    Ok(ok)
}

fn say(cli: &Cli, line: &str) {
    if cli.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// The demo's own stream reader: a replica and a count per message type.
struct Tap {
    consumer: StreamConsumer,
    replica: Replica,
    counts: [u64; 256],
    messages: u64,
}

impl Tap {
    fn new(mut config: ConsumerConfig, limits: ReplicaLimits) -> anyhow::Result<Tap> {
        config.start_seq = 1;
        Ok(Tap {
            consumer: StreamConsumer::new(&config).context("the demo's tap joining the stream")?,
            replica: Replica::new(limits),
            counts: [0; 256],
            messages: 0,
        })
    }

    fn poll_for(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let Tap {
            consumer,
            replica,
            counts,
            messages,
        } = self;
        let mut apply = |seq: u64, message: Message<'_>| {
            replica.apply(seq, &message);
            counts[usize::from(message.msg_type())] += 1;
            *messages += 1;
        };
        if consumer.poll(monotonic_ns(), &mut apply)? == 0 {
            consumer.wait(timeout, &mut apply)?;
        }
        Ok(())
    }

    fn count(&self, msg_type: u8) -> u64 {
        self.counts[usize::from(msg_type)]
    }

    fn counts_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (msg_type, &count) in self.counts.iter().enumerate() {
            if count > 0 {
                map.insert((msg_type as u8 as char).to_string(), count.into());
            }
        }
        serde_json::Value::Object(map)
    }
}

/// The back-office client: a transfer or a restock every 100 ms, until
/// `until`. Returns the commands sent.
fn back_office(
    config: ClientConfig,
    locations: u16,
    skus: u32,
    until: Instant,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let mut client = OrderEntryClient::connect(config, Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("ops login: {e}"))?;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound.max(1)
    };
    let mut sent = 0u64;
    let mut next = Instant::now();
    while Instant::now() < until && !stop.load(Ordering::Acquire) {
        client.poll(monotonic_ns(), |event| {
            if let ClientEvent::Closed(error) = event {
                eprintln!("tally-demo: back office: {error}");
            }
        });
        if Instant::now() < next || !client.has_room() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        next += Duration::from_millis(100);
        let sku = 1 + random(u64::from(skus)) as u32;
        let message = if locations >= 2 && random(3) > 0 {
            let from = 1 + random(u64::from(locations)) as u16;
            let to = 1 + (from % locations);
            Transfer::new(sent + 1, from, to, sku, 1 + random(3) as u32)
                .as_bytes()
                .to_vec()
        } else {
            let location = 1 + random(u64::from(locations.max(1))) as u16;
            Adjust::new(location, sku, 5 + random(20) as i32, delta_reason::ADJUST)
                .as_bytes()
                .to_vec()
        };
        if client.send(&message).is_ok() {
            sent += 1;
        }
    }
    let _ = client.wait_all_acked(Duration::from_secs(10), |_| {});
    Ok(sent)
}

/// `--serve`: the stack until SIGINT/SIGTERM ([`tally_demo::serve`]).
fn run_serve(cli: &Cli) -> anyhow::Result<()> {
    let dir = cli
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("tally-demo"));
    let options = ServeOptions {
        port_base: cli.port_base,
        group: cli.group,
        dir: dir.clone(),
        inventory: cli.inventory.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let served = tally_demo::serve::serve(&options)?;
    let summary = served.summary(&std::fs::canonicalize(&dir)?);
    if cli.json {
        println!("{summary}");
    } else {
        print_serve_help(&summary);
    }
    while !stop.load(Ordering::Acquire) {
        if served.warehouse.is_finished() || served.appliance.any_stopped() {
            served.stop()?;
            bail!("a part of the stack stopped; see the log above");
        }
        if let Some(error) = served.monitor.failed() {
            bail!("the HTTP service's stream consumer failed: {error}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    say(cli, "tally-demo: interrupted; stopping");
    served.stop()
}

/// The human-readable banner of `--serve`.
fn print_serve_help(summary: &serde_json::Value) {
    let http = summary["http"].as_str().unwrap_or_default();
    let config = summary["config"].as_str().unwrap_or_default();
    let user = |role: &str, field: &str| {
        summary["credentials"][role][field]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // curl as pos2, tally-ctl as pos1: a user writes through one process
    // at a time (the gateway keeps one session per user).
    let (pos, pos_file) = (user("pos", "user"), user("pos", "password_file"));
    let (reader, reader_password) = (user("reader", "user"), user("reader", "password"));
    println!(
        "tally-demo: serving until Ctrl-C, configuration {config}\n\
         \n  dashboard   {http}/   (log in as {reader} / {reader_password})\n\
         \n  # one order over HTTP (201 with the decision):\n\
         \n  curl -u pos2:pos2pass -H 'Idempotency-Key: order-1' -H 'Content-Type: application/json' \\\n\
         \x20      -d '{{\"sku\":\"TSHIRT-WHT-M\",\"qty\":1,\"location\":\"STORE-DOWNTOWN\"}}' {http}/v1/orders\n\
         \n  curl -u {reader}:{reader_password} {http}/v1/skus/TSHIRT-WHT-M\n\
         \n  curl -N -u {reader}:{reader_password} {http}/v1/events\n\
         \n  # one order from the shell:\n\
         \n  tally-ctl --config {config} --user {pos} --password-file {pos_file} order TSHIRT-WHT-M 1 --location STORE-DOWNTOWN\n"
    );
}
