//! `sku add` and `location add`: a new SKU or location while trading. Each
//! sends one `N` (DirectoryAdd, role ops) and waits for the warehouse's
//! answer: the `R` or `L` every replica applies (`added seq=… id=…`, so the
//! new entry can be stocked and sold at once), or `J` (a name or id already
//! there: status 14; a bad name or id, or a full directory: 16).

use clap::Subcommand;
use tally_client::command::Spec;

use crate::connect::{Failure, Global};
use crate::{exit, output};

/// `sku add SYMBOL [--id ID]`.
#[derive(Subcommand, Debug)]
pub enum SkuCommand {
    /// Add a SKU: `sku add SYMBOL [--id ID]` (1 to 16 printable ASCII
    /// characters, no spaces; the warehouse picks the lowest free id unless
    /// --id asks for one).
    Add {
        symbol: String,
        #[arg(long)]
        id: Option<u32>,
    },
}

/// `location add NAME [--id ID]`.
#[derive(Subcommand, Debug)]
pub enum LocationCommand {
    /// Add a location: `location add NAME [--id ID]` (as `sku add`; an id
    /// is 1 to 65535).
    Add {
        name: String,
        #[arg(long)]
        id: Option<u16>,
    },
}

/// Runs `sku add`; returns the exit status.
pub fn sku(command: SkuCommand, global: &Global) -> Result<u8, Failure> {
    let SkuCommand::Add { symbol, id } = command;
    add(
        &Spec::AddSku {
            symbol,
            id: id.unwrap_or(0),
        },
        global,
    )
}

/// Runs `location add`; returns the exit status.
pub fn location(command: LocationCommand, global: &Global) -> Result<u8, Failure> {
    let LocationCommand::Add { name, id } = command;
    add(
        &Spec::AddLocation {
            name,
            id: id.unwrap_or(0),
        },
        global,
    )
}

fn add(spec: &Spec, global: &Global) -> Result<u8, Failure> {
    global.check_role(spec.msg_type())?;
    let mut client = global.command_client()?;
    let request = client.resolve(spec)?;
    let decision = client.execute(&request, global.timeout())?;
    client.logout();
    let status = exit::of_decision(&decision);
    output::decision(&decision, global.json, status);
    Ok(status)
}
