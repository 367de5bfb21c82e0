//! Reading without sending: `stock SKU`, `order ID`, `watch`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tally_client::command::{CommandError, Ref, StreamReplica};
use tally_client::replica::Replica;
use tally_client::tally_wire::{trim_ascii, Message};
use tally_client::text;

use crate::connect::{Failure, Global};
use crate::exit;

fn name(bytes: Option<&[u8]>) -> String {
    String::from_utf8_lossy(bytes.map(trim_ascii).unwrap_or_default()).into_owned()
}

/// `stock SKU`.
#[derive(Args, Debug)]
pub struct StockArgs {
    /// The SKU, by symbol or id.
    pub sku: String,
}

/// Prints every location's on-hand, reserved, available and version.
pub fn stock(args: &StockArgs, global: &Global) -> Result<u8, Failure> {
    let (stream, _) = global.stream()?;
    let replica = stream.replica();
    let sku = Ref(args.sku.clone())
        .sku(replica)
        .map_err(CommandError::from)?;
    let symbol = name(replica.symbol(sku));
    let cells: Vec<_> = replica
        .cells_of(sku)
        .filter(|(_, cell)| cell.version != 0)
        .collect();
    let total: u64 = cells.iter().map(|(_, c)| u64::from(c.available)).sum();
    if global.json {
        let locations: Vec<_> = cells
            .iter()
            .map(|(location, c)| {
                json!({
                    "location": location,
                    "name": name(replica.location_name(*location)),
                    "on_hand": c.on_hand,
                    "reserved": c.reserved,
                    "available": c.available,
                    "version": c.version,
                })
            })
            .collect();
        let value = json!({
            "sku": sku, "symbol": symbol, "available": total,
            "locations": locations, "seq": replica.last_seq(),
        });
        println!("{value}");
    } else {
        println!(
            "{symbol} (sku {sku}) available={total} at seq={}",
            replica.last_seq()
        );
        for (location, c) in &cells {
            println!(
                "  {} (location {location}) on_hand={} reserved={} available={} version={}",
                name(replica.location_name(*location)),
                c.on_hand,
                c.reserved,
                c.available,
                c.version
            );
        }
    }
    Ok(exit::ACCEPTED)
}

/// `order ID`: the order as the stream left it (your own unless `origin`).
pub fn show_order(id: u64, origin: Option<u16>, global: &Global) -> Result<u8, Failure> {
    let (stream, identity) = global.stream()?;
    let replica = stream.replica();
    let origin = origin.unwrap_or(identity.client_id);
    let Some(order) = replica.order(origin, id) else {
        let text = format!(
            "no order {id} of client {origin} (never accepted, or older than the replica's \
             order history)"
        );
        return Err(Failure::new(exit::NO_SUCH, text));
    };
    let symbol = name(replica.symbol(order.sku));
    let location = name(replica.location_name(order.location));
    if global.json {
        let value = json!({
            "order_id": order.order_id, "origin": order.origin,
            "sku": order.sku, "symbol": symbol,
            "location": order.location, "location_name": location,
            "qty": order.qty, "remaining": order.remaining,
            "cancelled": order.remaining == 0,
            "cmd_seq": order.cmd_seq, "last_cmd_seq": order.last_cmd_seq,
            "seq": replica.last_seq(),
        });
        println!("{value}");
    } else {
        println!(
            "order {} sku={symbol} location={location} qty={} remaining={}{} cmd_seq={} last_cmd_seq={}",
            order.order_id,
            order.qty,
            order.remaining,
            if order.remaining == 0 { " (cancelled)" } else { "" },
            order.cmd_seq,
            order.last_cmd_seq
        );
    }
    Ok(exit::ACCEPTED)
}

/// `watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Print the session from this sequence number on (default: only what
    /// happens from now).
    #[arg(long, value_name = "SEQ")]
    pub from_seq: Option<u64>,
}

/// Prints every message of the stream as it happens, with SKU and location
/// names, until Ctrl-C or SIGTERM.
pub fn watch(args: &WatchArgs, global: &Global) -> Result<u8, Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| Failure::new(exit::ERROR, format!("signal handler: {e}")))?;
    }
    let (consumer, limits, _) = global.stream_config()?;
    let mut stream = StreamReplica::new(&consumer, limits)?;
    // Without --from-seq, print from where the stream is once caught up.
    let mut from = args.from_seq.unwrap_or(u64::MAX);
    let json = global.json;
    let timeout = global.timeout();
    let deadline = Instant::now() + timeout;
    while !stop.load(Ordering::Relaxed) && !stream.consumer().is_ended() {
        stream.wait(Duration::from_millis(100), |replica, seq, message| {
            replica.apply(seq, message);
            if seq >= from {
                print_message(replica, seq, message, json);
            }
        })?;
        if from == u64::MAX && stream.caught_up(timeout, deadline)? {
            from = stream.replica().last_seq() + 1;
        }
    }
    Ok(exit::ACCEPTED)
}

fn print_message(replica: &Replica, seq: u64, message: &Message, json: bool) {
    let names = names_of(replica, message);
    if json {
        let mut value = text::json(seq, message);
        if let Some(symbol) = names.0 {
            value["symbol"] = json!(symbol);
        }
        if let Some(location) = names.1 {
            value["location_name"] = json!(location);
        }
        println!("{value}");
    } else {
        let mut line = text::line(seq, message);
        if let Some(symbol) = names.0 {
            line.push_str(&format!(" symbol={symbol}"));
        }
        if let Some(location) = names.1 {
            line.push_str(&format!(" location_name={location}"));
        }
        println!("{line}");
    }
}

/// The SKU symbol and location name a message names, if any.
fn names_of(replica: &Replica, message: &Message) -> (Option<String>, Option<String>) {
    let (location, sku) = match *message {
        Message::Order(m) => (Some(m.location.get()), Some(m.sku.get())),
        Message::Reserve(m) => (Some(m.location.get()), Some(m.sku.get())),
        Message::Transfer(m) => (Some(m.from.get()), Some(m.sku.get())),
        Message::Recount(m) => (Some(m.location.get()), Some(m.sku.get())),
        Message::Adjust(m) => (Some(m.location.get()), Some(m.sku.get())),
        Message::InventoryLevel(m) => (Some(m.location.get()), Some(m.sku.get())),
        Message::OnHandDelta(m) => (Some(m.location.get()), Some(m.sku.get())),
        Message::HoldPlaced(m) => (Some(m.location.get()), Some(m.sku.get())),
        Message::HoldEnded(m) => (Some(m.location.get()), Some(m.sku.get())),
        _ => (None, None),
    };
    let symbol = sku.and_then(|s| replica.symbol(s)).map(|b| name(Some(b)));
    let location = location
        .and_then(|l| replica.location_name(l))
        .map(|b| name(Some(b)));
    (symbol, location)
}
