//! `tally-pos`: the store node. See `--help` and `tally_pos::store`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tally_client::cli::{exit, ConnectArgs, Need, ToolError};
use tally_client::metrics::MetricSet;
use tally_pos::store::http::{HttpConfig, HttpFront};
use tally_pos::store::{self, counter, StoreConfig, StoreNode, STORE_COUNTERS};
use tally_pos::{PosConfig, PosCounterFile};
use tally_runtime::notify::Notifier;

/// A store's node: keeps its own replica of the stream, checks every sale
/// against it (a sale the replica shows cannot be filled is refused on the
/// spot, nothing sent), and serves one location's checkouts — over a local
/// HTTP port (--listen: orders, holds, returns, stock reads, /health,
/// /metrics) and, with --interactive, to a person at the till (type or scan
/// `SKU` or `SKU QTY`; `? SKU` shows the stock).
///
/// Cut off from the appliance it keeps answering stock reads, marked
/// "stale", refuses sales with the reason, logs the loss, and recovers by
/// itself when the link returns.
///
/// Under systemd (Type=notify, tally-pos@LOCATION.service) it sends
/// READY=1 once its port is open, a STATUS= line a second and STOPPING=1
/// at shutdown; its counters go to a counter file for tally-stat
/// (--counters, by default $RUNTIME_DIRECTORY/tally-pos-LOCATION.counters
/// when systemd sets it).
#[derive(Parser, Debug)]
#[command(name = "tally-pos", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The location this node serves, by its name in the inventory (the
    /// warehouse's location directory), e.g. STORE-A.
    #[arg(long, value_name = "NAME")]
    location: String,
    /// Serve the checkouts' HTTP API on this address (e.g.
    /// 127.0.0.1:8090). Anything that reaches it sells as this node's
    /// login: keep it on loopback or the till network.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Serve a person at this terminal: one line per item, the outcome and
    /// the stock left at once; `quit` or end of input stops the node.
    #[arg(long)]
    interactive: bool,
    /// How long a sale's answer waits for the warehouse's decision before
    /// it says "sent, not decided yet" (202).
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    decision_timeout_ms: u64,
    /// Largest HTTP request body accepted.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    body_bytes_max: usize,
    /// Threads of the HTTP runtime.
    #[arg(long, value_name = "N", default_value_t = 2)]
    http_workers: usize,
    /// Counter file for tally-stat (default:
    /// $RUNTIME_DIRECTORY/tally-pos-LOCATION.counters when that is set, else
    /// none; /metrics works either way).
    #[arg(long, value_name = "FILE")]
    counters: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tally_client::cli::finish("tally-pos", run(&cli))
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    tally_client::cli::init_logging();
    if cli.listen.is_none() && !cli.interactive {
        return Err(ToolError::new(
            exit::BAD_INPUT,
            "nothing to serve: give --listen ADDR, --interactive, or both",
        )
        .into());
    }
    let config = store_config(cli)?;
    let process_name = format!("tally-pos {}", cli.location);
    let counters_path = cli.counters.clone().or_else(|| {
        std::env::var_os("RUNTIME_DIRECTORY")
            .map(|dir| PathBuf::from(dir).join(format!("tally-pos-{}.counters", cli.location)))
    });
    let counters =
        PosCounterFile::create_with(counters_path.as_deref(), &process_name, STORE_COUNTERS)
            .context("creating the counter file")?;
    let metrics = MetricSet::of(counters.file(), &process_name);
    let refused = counters.extra()[counter::REQUESTS_REFUSED].clone();
    let busy = counters.extra()[counter::REQUESTS_BUSY].clone();
    let (jobs, jobs_rx) = store::job_channel(&config).context("the store node's job channel")?;
    let answer_timeout = config.decision_timeout + Duration::from_secs(2);
    let http = match cli.listen {
        Some(listen) => {
            let http_config = HttpConfig {
                listen,
                workers: cli.http_workers,
                body_bytes_max: cli.body_bytes_max,
                answer_timeout,
                location: cli.location.clone(),
            };
            let front = HttpFront::start(http_config, jobs.clone(), metrics, refused, busy)?;
            tracing::info!(listen = %front.local_addr(), location = cli.location, "serving HTTP");
            Some(front)
        }
        None => None,
    };
    let mut node = StoreNode::new(config, jobs_rx, counters)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let till = cli
        .interactive
        .then(|| start_till(jobs.clone(), Arc::clone(&stop), answer_timeout))
        .transpose()?;
    drop(jobs);
    let notifier = Notifier::from_env().context("the sd_notify environment")?;
    notify(notifier.ready());
    let result = node.run(&stop, |node| {
        notify(notifier.status(&node.status_line()));
        notify(notifier.watchdog());
    });
    notify(notifier.stopping());
    if let Some(http) = http {
        http.stop();
    }
    drop(till);
    result?;
    tracing::info!(status = node.status_line(), "stopped");
    Ok(())
}

/// The node's configuration from the command line.
fn store_config(cli: &Cli) -> anyhow::Result<StoreConfig> {
    let appliance = cli.connect.appliance()?;
    // Checked before anything starts: a wrong password, a user whose role
    // may not sell, or no appliance answering stops the node with its
    // status instead of refusing every sale later.
    let login = cli.connect.login(
        &appliance,
        Need::Send {
            msg_type: tally_wire::Order::TYPE,
            what: "place orders (a store node logs in as a user of role pos)",
        },
    )?;
    let credentials = &login.credentials;
    let mut pos =
        PosConfig::for_appliance(&appliance, &credentials.username, &credentials.password)?;
    pos.consumer.start_seq = 1;
    let mut config = StoreConfig::new(pos, &cli.location);
    config.decision_timeout = Duration::from_millis(cli.decision_timeout_ms.max(1));
    Ok(config)
}

/// The interactive till on stdin/stdout, on its own thread; it stops the
/// node when its input ends.
fn start_till(
    jobs: store::JobSender,
    stop: Arc<AtomicBool>,
    wait: Duration,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    if !std::io::stdin().is_terminal() {
        tracing::info!(
            "--interactive with a stdin that is not a terminal: reading it line by line"
        );
    }
    let thread = std::thread::Builder::new()
        .name("store-till".into())
        .spawn(move || {
            let stdin = std::io::stdin().lock();
            let stdout = std::io::stdout().lock();
            if let Err(error) = store::tty::run(stdin, stdout, &jobs, wait) {
                tracing::warn!(%error, "the till's terminal failed");
            }
            stop.store(true, Ordering::Release);
        })?;
    Ok(thread)
}

/// Reports a failed notification and carries on.
fn notify(result: std::io::Result<()>) {
    if let Err(error) = result {
        tracing::warn!(%error, "sd_notify failed");
    }
}
