//! `tally-ctl`: every inventory command from the shell, through the
//! foundation's command client (`tally_client::command`): each command is
//! sent once through the gateway (exactly-once numbering), and its
//! decision, read from the stream, is printed — `filled seq=… on_hand=…`
//! or `rejected: insufficient stock (available 3)` — and is the exit status
//! ([`exit`]). `stock`, `order ID` and `watch` read the stream only;
//! `batch` runs a file of commands, resumable exactly once.
//!
//! One module per group of subcommands ([`ops`]: the commands; [`query`]:
//! reading; [`batch`]), so a new group is a new module and one line in
//! [`Command`].

mod batch;
mod connect;
mod directory;
mod exit;
mod ops;
mod output;
mod query;
mod session;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use connect::{Failure, Global};

/// Inventory commands from the shell, each decided by the warehouse.
#[derive(Parser, Debug)]
#[command(name = "tally-ctl", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Op(ops::Op),
    /// Show a SKU's stock at every location: `stock SKU`.
    Stock(query::StockArgs),
    /// Print decisions and events as they happen, until Ctrl-C.
    Watch(query::WatchArgs),
    /// Run a CSV or JSON-lines file of commands, resumable exactly once.
    Batch(batch::BatchArgs),
    /// The session: `session end` rolls over to the next one.
    #[command(subcommand)]
    Session(session::SessionCommand),
    /// The SKU directory: `sku add SYMBOL` (role ops).
    #[command(subcommand)]
    Sku(directory::SkuCommand),
    /// The location directory: `location add NAME` (role ops).
    #[command(subcommand)]
    Location(directory::LocationCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<u8, Failure> = match cli.command {
        Command::Op(op) => ops::run(op, &cli.global),
        Command::Stock(args) => query::stock(&args, &cli.global),
        Command::Watch(args) => query::watch(&args, &cli.global),
        Command::Batch(args) => batch::run(&args, &cli.global),
        Command::Session(command) => session::run(&command, &cli.global),
        Command::Sku(command) => directory::sku(command, &cli.global),
        Command::Location(command) => directory::location(command, &cli.global),
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(failure) => {
            output::error(&failure.text, cli.global.json, failure.status);
            ExitCode::from(failure.status)
        }
    }
}
