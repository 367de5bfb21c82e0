//! One subcommand per command: each becomes a [`Spec`], is sent once, and
//! its decision printed.

use clap::{Args, Subcommand};
use tally_client::command::{AdjustReason, Ref, Spec, DEFAULT_TTL_MS};

use crate::connect::{Failure, Global};
use crate::{exit, output, query};

/// The command subcommands.
#[derive(Subcommand, Debug)]
pub enum Op {
    /// Place an order: `order SKU QTY [--at LOCATION] [--id ID]`; with one
    /// argument, `order ID` shows your order ID.
    Order(OrderArgs),
    /// Change an order's quantity: `modify ID QTY`.
    Modify { id: u64, qty: u64 },
    /// Cancel an order: `cancel ID`.
    Cancel { id: u64 },
    /// Reserve stock for a while: `hold SKU QTY --at LOCATION [--ttl-ms MS]`.
    Hold {
        sku: String,
        qty: u64,
        #[arg(long, value_name = "LOCATION", visible_alias = "location")]
        at: String,
        #[arg(long, value_name = "MS", default_value_t = DEFAULT_TTL_MS)]
        ttl_ms: u32,
        /// The hold id (default: chosen from the clock, printed).
        #[arg(long)]
        id: Option<u64>,
    },
    /// Turn a hold into a sale: `confirm ID`.
    Confirm { id: u64 },
    /// Release a hold: `release ID`.
    Release { id: u64 },
    /// Move stock: `transfer SKU QTY --from LOCATION --to LOCATION`.
    Transfer {
        sku: String,
        qty: u64,
        #[arg(long, value_name = "LOCATION")]
        from: String,
        #[arg(long, value_name = "LOCATION")]
        to: String,
        /// The transfer id (default: chosen from the clock, printed).
        #[arg(long)]
        id: Option<u64>,
    },
    /// Set on-hand from a count: `recount SKU LOCATION ON_HAND
    /// [--expected-version V]` (refused if the cell changed since V).
    Recount {
        sku: String,
        location: String,
        on_hand: u64,
        /// The cell version the count assumes (`stock` shows it); 0 or
        /// absent = unconditional.
        #[arg(long, value_name = "V", default_value_t = 0)]
        expected_version: u64,
    },
    /// Restock, return or shrink: `adjust restock|return|shrink SKU QTY --at LOCATION`.
    Adjust {
        #[arg(value_parser = ["restock", "return", "shrink"])]
        reason: String,
        sku: String,
        qty: u64,
        #[arg(long, value_name = "LOCATION", visible_alias = "location")]
        at: String,
    },
}

/// `order SKU QTY` or `order ID`.
#[derive(Args, Debug)]
pub struct OrderArgs {
    /// The SKU (symbol or id), or with no QTY the order id to show.
    pub sku_or_id: String,
    /// Units to order.
    pub qty: Option<u64>,
    /// Where to take the stock (name or id; default: any location, the
    /// warehouse picks the one with the most).
    #[arg(long, value_name = "LOCATION", visible_alias = "location")]
    pub at: Option<String>,
    /// The order id (default: chosen from the clock, printed in the answer).
    #[arg(long)]
    pub id: Option<u64>,
    /// With `order ID`: whose order (default: your own user's client id).
    #[arg(long)]
    pub origin: Option<u16>,
}

/// An id for a command that creates one: microseconds since the Unix epoch
/// (unique per user, since one process per user sends at a time; below
/// 2^53, so JSON readers keep it exact).
pub fn clock_id() -> u64 {
    (tally_runtime::clock::wall_ns() / 1_000).max(1)
}

impl Op {
    /// The command to send, or (`order ID`) None: show the order instead.
    fn spec(self) -> Result<Spec, Failure> {
        let id = |id: Option<u64>| id.unwrap_or_else(clock_id);
        Ok(match self {
            Op::Order(args) => {
                let qty = args.qty.expect("checked by run");
                Spec::Order {
                    id: id(args.id),
                    sku: Ref(args.sku_or_id),
                    qty,
                    location: args.at.map(Ref),
                }
            }
            Op::Modify { id, qty } => Spec::Modify { id, qty },
            Op::Cancel { id } => Spec::Cancel { id },
            Op::Hold {
                sku,
                qty,
                at,
                ttl_ms,
                id: hold_id,
            } => Spec::Hold {
                id: id(hold_id),
                sku: Ref(sku),
                qty,
                location: Ref(at),
                ttl_ms,
            },
            Op::Confirm { id } => Spec::Confirm { id },
            Op::Release { id } => Spec::Release { id },
            Op::Transfer {
                sku,
                qty,
                from,
                to,
                id: transfer_id,
            } => Spec::Transfer {
                id: id(transfer_id),
                sku: Ref(sku),
                qty,
                from: Ref(from),
                to: Ref(to),
            },
            Op::Recount {
                sku,
                location,
                on_hand,
                expected_version,
            } => Spec::Recount {
                sku: Ref(sku),
                location: Ref(location),
                on_hand,
                expected_version,
            },
            Op::Adjust {
                reason,
                sku,
                qty,
                at,
            } => Spec::Adjust {
                sku: Ref(sku),
                location: Ref(at),
                qty,
                reason: AdjustReason::parse(&reason).ok_or_else(|| {
                    Failure::new(exit::BAD_INPUT, format!("adjust reason {reason:?}"))
                })?,
            },
        })
    }
}

/// Runs one command subcommand; returns the exit status.
pub fn run(op: Op, global: &Global) -> Result<u8, Failure> {
    if let Op::Order(OrderArgs {
        qty: None,
        sku_or_id,
        origin,
        ..
    }) = &op
    {
        let id = sku_or_id.parse::<u64>().map_err(|_| {
            Failure::new(
                exit::BAD_INPUT,
                format!("`order {sku_or_id}`: to place an order give SKU and QTY; to show one give its numeric id"),
            )
        })?;
        return query::show_order(id, *origin, global);
    }
    let spec = op.spec()?;
    global.check_role(spec.msg_type())?;
    let mut client = global.command_client()?;
    let request = client.resolve(&spec)?;
    let decision = client.execute(&request, global.timeout())?;
    client.logout();
    let status = exit::of_decision(&decision);
    output::decision(&decision, global.json, status);
    Ok(status)
}
