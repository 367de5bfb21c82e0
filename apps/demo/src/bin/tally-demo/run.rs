//! The load run (`tally-demo` without `--serve`), step by step: pick the
//! demo users, start afresh, start the appliance, the warehouse, the HTTP
//! service, the tills, the back office and the tap; report progress until
//! `--seconds` have passed; stop; let every replica catch up; verify.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tally_client::client::ClientConfig;
use tally_client::consumer::ConsumerConfig;
use tally_client::replica::ReplicaLimits;
use tally_config::ApplianceConfig;
use tally_demo::DEMO_CLIENTS;
use tally_monitor::counters::MonitorCounterFile;
use tally_monitor::{HttpAuthConfig, Monitor, MonitorConfig, MonitorHandle};
use tally_pos::Pos;
use tally_runtime::counters::CounterReader;
use tally_sequencer::appliance::{Appliance, Control};
use tally_warehouse::app::{BroadcastPacing, WarehouseApp, WarehouseAppConfig};
use tally_warehouse::counters::WarehouseCounterFile;

use crate::back_office::back_office;
use crate::tap::Tap;
use crate::tills::{report_progress, start_tills, TillThread, TillView};
use crate::verify::{Finish, Verification};
use crate::{say, Cli};

/// A configured client with a demo password.
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) password: String,
    pub(crate) client_id: u16,
}

/// The users the run logs in as.
struct Users {
    /// The first `--pos` points of sale.
    tills: Vec<User>,
    warehouse: User,
    ops: User,
    reader: User,
}

/// Runs the demo with load; whether the verification passed.
pub(crate) fn run(cli: &Cli) -> anyhow::Result<bool> {
    if !(0.0..=50.0).contains(&cli.loss) {
        bail!("--loss must be a percentage between 0 and 50");
    }
    if cli.pos == 0 {
        bail!("--pos must be at least 1");
    }
    let config = ApplianceConfig::load(&cli.config).map_err(anyhow::Error::msg)?;
    let users = Users::of(cli, &config)?;
    let snapshot = start_afresh(cli, &config)?;

    let appliance = Appliance::start(&config, Arc::new(Control::default()), &Default::default())
        .context("starting the appliance")?;
    let counters =
        CounterReader::open(&config.counters_path()).context("opening the appliance's counters")?;

    // One place for limits: the configuration's [limits] sizes the
    // warehouse's state and every replica's (tills, monitor, tap).
    let limits = ReplicaLimits::from_config(&config.limits);
    limits
        .validate()
        .map_err(|error| anyhow::anyhow!("[limits] in {}: {error}", cli.config.display()))?;

    let warehouse = WarehouseThread::start(cli, &config, &users, limits, snapshot)?;
    let monitor = start_monitor(cli, &config, &users.reader, limits)?;

    // The tills, the back office and the tap until --seconds have passed.
    let stop_tills = Arc::new(AtomicBool::new(false));
    let until = Instant::now() + Duration::from_secs(cli.seconds);
    let views = Arc::new(Mutex::new(vec![TillView::default(); users.tills.len()]));
    let till_threads = start_tills(
        cli,
        &config,
        &users.tills,
        &config.journal.dir,
        until,
        &stop_tills,
        &views,
    )?;
    let ops_thread = start_back_office(&config, &users.ops, &warehouse, until, &stop_tills)?;
    let mut tap = Tap::new(reader_consumer(&config, &users.reader), limits)?;
    // The HTTP service's counters beside the others, for tally-stat.
    let monitor_counters = MonitorCounterFile::create(
        Some(&config.journal.dir.join("tally-monitor.counters")),
        "tally-monitor (demo)",
    )
    .context("creating the monitor's counter file")?;
    report_progress(cli, &mut tap, &views, until, || {
        monitor_counters.publish(&monitor)
    })?;

    // Stop: tills drain their outcomes, back office stops, the warehouse
    // stops deciding once its events are all back and saves its snapshot.
    say(
        cli,
        "tally-demo: stopping the tills and waiting for every outcome",
    );
    let ops_sent = ops_thread
        .join()
        .map_err(|_| anyhow::anyhow!("back-office thread panicked"))??;
    let mut tills_done = join_tills(till_threads)?;
    let warehouse = warehouse.stop()?;
    let final_seq = next_seq(&counters) - 1;

    catch_up(&mut tap, &mut tills_done, final_seq)?;
    let monitor = stop_monitor(monitor, final_seq)?;
    appliance.stop()?;

    let finish = Finish {
        final_seq,
        warehouse: &warehouse,
        tap: &tap,
        monitor,
        tills: &users.tills,
        tills_done: &tills_done,
        ops_sent,
    };
    Ok(Verification::of(&finish).report(cli, &finish))
}

impl Users {
    /// The users the run logs in as, from the credentials file
    /// (`--credentials`, or the demo passwords written where the user sees
    /// them): `--pos` tills, the authority, an ops user, a reader of the
    /// configuration's [[clients]].
    fn of(cli: &Cli, config: &ApplianceConfig) -> anyhow::Result<Users> {
        let path = match &cli.credentials {
            Some(path) => path.clone(),
            None => write_demo_credentials(config)?,
        };
        let passwords = read_credentials(&path)?;
        say(
            cli,
            &format!(
                "tally-demo: logging in with the users and passwords in {}",
                path.display()
            ),
        );
        let password_of = |username: &str| {
            passwords
                .iter()
                .find(|(user, _)| user == username)
                .map(|(_, password)| password.clone())
        };
        let users_of = |role: &'static str| {
            config
                .clients
                .iter()
                .filter(move |client| client.role == role)
                .filter_map(move |client| {
                    Some(User {
                        name: client.username.clone(),
                        password: password_of(&client.username)?,
                        client_id: client.client_id,
                    })
                })
        };
        let tills: Vec<User> = users_of("pos").take(cli.pos).collect();
        if tills.len() < cli.pos {
            bail!(
                "--pos {} but {} gives passwords for only {} pos clients of {}",
                cli.pos,
                path.display(),
                tills.len(),
                cli.config.display()
            );
        }
        let user_of = |role: &'static str| {
            users_of(role).next().ok_or_else(|| {
                anyhow::anyhow!(
                    "{} gives no password for a {role} client of {}",
                    path.display(),
                    cli.config.display()
                )
            })
        };
        Ok(Users {
            tills,
            warehouse: user_of("authority")?,
            ops: user_of("ops")?,
            reader: user_of("reader")?,
        })
    }
}

/// Writes the demo passwords of the example configuration's clients to
/// `tally-demo.credentials` in the journal directory (owner-only), so what
/// the demo logs in with is in a file the user can read, not hidden in the
/// binary. Returns its path.
fn write_demo_credentials(config: &ApplianceConfig) -> anyhow::Result<PathBuf> {
    let dir = &config.journal.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("tally-demo.credentials");
    let mut text = String::from(
        "# The logins tally-demo uses: USER PASSWORD, one a line. These are the demo\n\
         # passwords of config/tally.toml's [[clients]]: change the hashes there (tally-sequencer\n\
         # hash-password) and give your own file with --credentials before anything real.\n",
    );
    for client in &config.clients {
        if let Some(demo) = DEMO_CLIENTS.iter().find(|c| c.username == client.username) {
            text.push_str(&format!("{} {}\n", demo.username, demo.password));
        }
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(path)
}

/// `USER PASSWORD` lines (blank lines and `#` comments skipped); at most
/// 64 KiB, every other line refused with its number.
fn read_credentials(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    const CREDENTIALS_BYTES_MAX: u64 = 64 * 1024;
    let size = std::fs::metadata(path)
        .with_context(|| format!("credentials file {}", path.display()))?
        .len();
    if size > CREDENTIALS_BYTES_MAX {
        bail!(
            "credentials file {}: {size} bytes, more than {CREDENTIALS_BYTES_MAX}",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("credentials file {}", path.display()))?;
    let mut logins = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            [user, password] => logins.push((user.to_string(), password.to_string())),
            _ => bail!(
                "credentials file {} line {}: expected `USER PASSWORD`",
                path.display(),
                index + 1
            ),
        }
    }
    Ok(logins)
}

/// A fresh session every run: the demo owns its journal directory. Removes
/// the session's journal, its checkpoint and the warehouse's snapshot, says
/// what runs; where the warehouse's snapshot goes.
fn start_afresh(cli: &Cli, config: &ApplianceConfig) -> anyhow::Result<PathBuf> {
    let journal_dir = &config.journal.dir;
    let session = config.session()?;
    let journal = tally_sequencer::journal::journal_path(journal_dir, session);
    let snapshot = journal_dir.join("warehouse.snapshot");
    // The journal's checkpoint goes with it (a checkpoint without its
    // journal is refused at start).
    let checkpoint = tally_sequencer::journal::checkpoint_path(journal_dir, session);
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
    Ok(snapshot)
}

/// The appliance's next sequence number, from its counters.
fn next_seq(counters: &CounterReader) -> u64 {
    counters
        .read()
        .find(|(name, _)| *name == "sequencer.next_seq")
        .map(|(_, value)| value)
        .unwrap_or(1)
}

/// A stream consumer that logs in as the reader.
fn reader_consumer(config: &ApplianceConfig, reader: &User) -> ConsumerConfig {
    ConsumerConfig::for_appliance(config, &reader.name, &reader.password)
}

/// The warehouse on its own thread, with its directory's size.
struct WarehouseThread {
    thread: JoinHandle<anyhow::Result<WarehouseApp>>,
    stop: Arc<AtomicBool>,
    locations: usize,
    skus: usize,
}

impl WarehouseThread {
    /// The warehouse first: the tills wait for its session-start broadcast.
    /// Returns once it is online.
    fn start(
        cli: &Cli,
        config: &ApplianceConfig,
        users: &Users,
        limits: ReplicaLimits,
        snapshot: PathBuf,
    ) -> anyhow::Result<WarehouseThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let warehouse_config = WarehouseAppConfig {
            consumer: reader_consumer(config, &users.reader),
            client: ClientConfig::for_appliance(
                config,
                &users.warehouse.name,
                &users.warehouse.password,
            ),
            own_origin: users.warehouse.client_id,
            limits,
            inventory: Some(cli.inventory.clone()),
            snapshot: Some(snapshot),
            snapshot_interval: Duration::from_secs(5),
            expiry_check_interval: Duration::from_millis(50),
            catch_up_timeout: Duration::from_secs(30),
        };
        // The session-start broadcast stays within the gateway's rate limit.
        let pacing = BroadcastPacing::for_appliance(config);
        let thread = {
            let stop = Arc::clone(&stop);
            let warehouse_counters = config.journal.dir.join("tally-warehouse.counters");
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
                    let _ =
                        ready_tx.send(Ok((replica.locations().count(), replica.skus().count())));
                    run_warehouse(&mut app, &warehouse_counters, &stop)?;
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
        Ok(WarehouseThread {
            thread,
            stop,
            locations,
            skus,
        })
    }

    /// Stops the warehouse (it finishes deciding what is back) and joins it.
    fn stop(self) -> anyhow::Result<WarehouseApp> {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("warehouse thread panicked"))?
    }
}

/// The warehouse's loop until `stop`, its counters where tally-stat looks
/// (./target/tally-demo).
fn run_warehouse(
    app: &mut WarehouseApp,
    counters_path: &Path,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let counters = WarehouseCounterFile::create(Some(counters_path), "tally-warehouse (demo)")?;
    app.run_with(stop, |app| counters.publish(app))?;
    Ok(())
}

/// The read side: HTTP/JSON on --monitor.
fn start_monitor(
    cli: &Cli,
    config: &ApplianceConfig,
    reader: &User,
    limits: ReplicaLimits,
) -> anyhow::Result<MonitorHandle> {
    let mut monitor_config = MonitorConfig::new(cli.monitor, reader_consumer(config, reader));
    monitor_config.consumer.start_seq = 1;
    monitor_config.limits = limits;
    // Readers of the configuration's [[clients]] (e.g. read1 / readpass) read
    // over HTTP Basic; /health and /ready need nothing.
    monitor_config.auth = HttpAuthConfig::from_appliance(config).map_err(anyhow::Error::msg)?;
    let monitor = Monitor::start(monitor_config)
        .with_context(|| format!("starting the monitor on {}", cli.monitor))?;
    say(
        cli,
        &format!(
            "tally-demo: monitor on http://{0}/health (try curl -u read1:readpass http://{0}/availability/<SYMBOL>, /depleted, /metrics)",
            monitor.local_addr()
        ),
    );
    Ok(monitor)
}

/// The HTTP service's last seq, digest and oversold units once it applied
/// up to `final_seq` (or 30 s passed); then stops it.
fn stop_monitor(monitor: MonitorHandle, final_seq: u64) -> anyhow::Result<(u64, u64, u64)> {
    monitor.wait_for_seq(final_seq, Duration::from_secs(30));
    let (seq, digest) = monitor.digest();
    let oversold = monitor.read(|model| model.replica().oversold());
    monitor.stop()?;
    Ok((seq, digest, oversold))
}

/// Back office: transfers between locations and restocks, a few a second.
fn start_back_office(
    config: &ApplianceConfig,
    ops: &User,
    warehouse: &WarehouseThread,
    until: Instant,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<anyhow::Result<u64>>> {
    let stop = Arc::clone(stop);
    let client_config = ClientConfig::for_appliance(config, &ops.name, &ops.password);
    let (locations, skus) = (warehouse.locations as u16, warehouse.skus as u32);
    Ok(std::thread::Builder::new()
        .name("demo-ops".into())
        .spawn(move || back_office(client_config, locations, skus, until, &stop))?)
}

/// Each till once it drained: the till and whether every command got its
/// outcome.
fn join_tills(till_threads: Vec<TillThread>) -> anyhow::Result<Vec<(Pos, bool)>> {
    let mut tills_done = Vec::new();
    for handle in till_threads {
        let (pos, drained) = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a till thread panicked"))??;
        tills_done.push((pos, drained));
    }
    Ok(tills_done)
}

/// The tap and every till apply up to the final seq.
fn catch_up(tap: &mut Tap, tills_done: &mut [(Pos, bool)], final_seq: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tap.replica.last_seq() < final_seq && Instant::now() < deadline {
        tap.poll_for(Duration::from_millis(20))?;
    }
    for (pos, _) in tills_done {
        pos.catch_up(final_seq, Duration::from_secs(30))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}
