//! `tally-demo`: the whole appliance and its applications on loopback, in one
//! process, then a verification. See `--help`.

// The load run's steps, in tally-demo/ beside this file (a crate root's
// modules would otherwise sit in src/bin/, where cargo takes every file for
// a binary of its own).
#[path = "tally-demo/back_office.rs"]
mod back_office;
#[path = "tally-demo/run.rs"]
mod run;
#[path = "tally-demo/tap.rs"]
mod tap;
#[path = "tally-demo/tills.rs"]
mod tills;
#[path = "tally-demo/verify.rs"]
mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use tally_demo::serve::ServeOptions;

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
    /// The logins the load run uses: one `USER PASSWORD` a line (`#`
    /// comments), for the configuration's [[clients]] [default: the example
    /// configuration's demo passwords, written to tally-demo.credentials in
    /// its journal directory, whose path the demo prints].
    #[arg(long, value_name = "FILE")]
    credentials: Option<PathBuf>,
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
    match run::run(&cli) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("tally-demo: error: {error:#}");
            std::process::exit(2);
        }
    }
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

fn say(cli: &Cli, line: &str) {
    if cli.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}
