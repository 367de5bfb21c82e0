//! The warehouse's answer to one command, as a value: accepted (what
//! changed, with the cells as they stand after it) or rejected (the reason
//! in words, with the numbers that explain it).

use std::fmt;

use serde::Serialize;
use tally_wire::{delta_reason, directory_kind, reject_reason, Message};

use super::request::Request;
use crate::replica::Replica;

/// The reason code in words (`J`, `j` and the `j` ack).
pub fn reject_words(reason: u8) -> &'static str {
    match reason {
        reject_reason::INSUFFICIENT => "insufficient stock",
        reject_reason::UNKNOWN_SKU => "unknown SKU",
        reject_reason::UNKNOWN_LOCATION => "unknown location",
        reject_reason::VERSION_CONFLICT => "version conflict",
        reject_reason::DUPLICATE_ID => "duplicate id",
        reject_reason::NO_SUCH => "no such order or hold",
        reject_reason::INVALID_QUANTITY => "zero or invalid quantity",
        reject_reason::NOT_PERMITTED => "not permitted for this user's role",
        reject_reason::UNKNOWN_TYPE => "unknown message type",
        reject_reason::WRONG_LENGTH => "wrong length for its type",
        reject_reason::RATE_LIMITED => "over the session's rate limit",
        _ => "unknown reason",
    }
}

/// One inventory cell after the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CellAfter {
    pub location: u16,
    pub sku: u32,
    pub on_hand: u32,
    pub reserved: u32,
    pub available: u32,
    /// The cell's version: the sequence number of the event that last
    /// changed it (use it as a recount's `expected_version`).
    pub version: u64,
}

impl CellAfter {
    /// The cell as `replica` holds it now.
    pub fn of(replica: &Replica, location: u16, sku: u32) -> Option<CellAfter> {
        let cell = replica.cell(location, sku)?;
        Some(CellAfter {
            location,
            sku,
            on_hand: cell.on_hand,
            reserved: cell.reserved,
            available: cell.available,
            version: cell.version,
        })
    }
}

/// What an accepted command did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// An order took `-delta` units (`D(O)`).
    Filled { delta: i32 },
    /// An order's quantity changed (`D(M)`: positive returns stock).
    Modified { delta: i32 },
    /// An order was cancelled, its remaining units returned (`D(X)`).
    Cancelled { delta: i32 },
    /// A hold reserves `qty` until `expires_at_ns` (wall clock, `H`).
    Held { qty: u32, expires_at_ns: u64 },
    /// A hold became a sale (`E(C)` then `D(C)`).
    Confirmed { delta: i32 },
    /// A hold was released (`E(R)`).
    Released { qty: u32 },
    /// Units moved between locations (two `D(T)`).
    Transferred { qty: u32 },
    /// On-hand set by a count (`I`).
    Recounted { on_hand: u32 },
    /// Stock adjusted (`D(A)` or `D(N)`).
    Adjusted { delta: i32 },
    /// A SKU or location added to the directory, with the id it got (`R`
    /// or `L`).
    Added { id: u32 },
}

impl Effect {
    /// The word printed for it.
    pub fn word(&self) -> &'static str {
        match self {
            Effect::Filled { .. } => "filled",
            Effect::Modified { .. } => "modified",
            Effect::Cancelled { .. } => "cancelled",
            Effect::Held { .. } => "held",
            Effect::Confirmed { .. } => "confirmed",
            Effect::Released { .. } => "released",
            Effect::Transferred { .. } => "transferred",
            Effect::Recounted { .. } => "recounted",
            Effect::Adjusted { .. } => "adjusted",
            Effect::Added { .. } => "added",
        }
    }
}

/// Who refused a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectedBy {
    /// The warehouse (`J`): the command is valid but cannot be done.
    Warehouse,
    /// The gateway (`j`): role, rate limit, malformed.
    Gateway,
}

/// A refusal, with the numbers that explain it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// The reason code (`I`, `U`, `V`, …).
    #[serde(serialize_with = "as_letter")]
    pub reason: u8,
    pub by: RejectedBy,
    /// Units available where the command wanted them, when stock was the
    /// reason (for an order at any location: the most at one location).
    pub available: Option<u32>,
    /// The cell's version, when a recount's expected version was the reason.
    pub current_version: Option<u64>,
}

fn as_letter<S: serde::Serializer>(reason: &u8, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&char::from(*reason).to_string())
}

impl Rejection {
    pub fn words(&self) -> &'static str {
        reject_words(self.reason)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.words())?;
        if let Some(available) = self.available {
            write!(f, " (available {available})")?;
        }
        if let Some(version) = self.current_version {
            write!(f, " (current version {version})")?;
        }
        if self.by == RejectedBy::Gateway {
            f.write_str(" [refused by the gateway]")?;
        }
        Ok(())
    }
}

/// Accepted or rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Verdict {
    Accepted {
        #[serde(flatten)]
        effect: Effect,
        /// The cells it changed, after it (a transfer: from, then to).
        cells: [Option<CellAfter>; 2],
    },
    Rejected(Rejection),
}

/// The decision about one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The command's number in this user's exactly-once numbering.
    pub client_seq: u32,
    /// The command's stream sequence number.
    pub cmd_seq: u64,
    /// The sequence number of the event that decided it (the `D`, `H`, `E`,
    /// `I`, `J` or `j`).
    pub seq: u64,
    pub request: Request,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl Decision {
    pub fn is_accepted(&self) -> bool {
        matches!(self.verdict, Verdict::Accepted { .. })
    }

    pub fn rejection(&self) -> Option<&Rejection> {
        match &self.verdict {
            Verdict::Rejected(rejection) => Some(rejection),
            Verdict::Accepted { .. } => None,
        }
    }
}

impl fmt::Display for Decision {
    /// `filled seq=… on_hand=…` or `rejected: insufficient stock (available 3)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Verdict::Rejected(rejection) => write!(f, "rejected: {rejection}"),
            Verdict::Accepted { effect, cells } => {
                write!(f, "{} seq={}", effect.word(), self.seq)?;
                match *effect {
                    Effect::Filled { delta }
                    | Effect::Modified { delta }
                    | Effect::Cancelled { delta }
                    | Effect::Confirmed { delta }
                    | Effect::Adjusted { delta } => write!(f, " delta={delta}")?,
                    Effect::Held { qty, expires_at_ns } => {
                        write!(f, " qty={qty} expires_at_ns={expires_at_ns}")?
                    }
                    Effect::Released { qty } | Effect::Transferred { qty } => {
                        write!(f, " qty={qty}")?
                    }
                    Effect::Recounted { .. } => {}
                    Effect::Added { id } => write!(f, " id={id}")?,
                }
                let both = cells[1].is_some();
                for (cell, side) in cells.iter().flatten().zip(["from_", "to_"]) {
                    let side = if both { side } else { "" };
                    write!(
                        f,
                        " {side}location={} {side}on_hand={} {side}reserved={} \
                         {side}available={} {side}version={}",
                        cell.location, cell.on_hand, cell.reserved, cell.available, cell.version
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// The effect of the event that answered `request` (`None` when the event
/// does not fit the command: a faulty authority, never expected).
pub(super) fn effect_of(request: &Request, event: &Message) -> Option<Effect> {
    Some(match (*request, *event) {
        (Request::Order { .. }, Message::OnHandDelta(d)) => Effect::Filled {
            delta: d.delta.get(),
        },
        (Request::Modify { .. }, Message::OnHandDelta(d)) => Effect::Modified {
            delta: d.delta.get(),
        },
        (Request::Cancel { .. }, Message::OnHandDelta(d)) => Effect::Cancelled {
            delta: d.delta.get(),
        },
        (Request::Hold { .. }, Message::HoldPlaced(h)) => Effect::Held {
            qty: h.qty.get(),
            expires_at_ns: h.expires_at_ns.get(),
        },
        (Request::Confirm { .. }, Message::OnHandDelta(d)) => Effect::Confirmed {
            delta: d.delta.get(),
        },
        (Request::Release { .. }, Message::HoldEnded(e)) => Effect::Released { qty: e.qty.get() },
        (Request::Transfer { qty, .. }, Message::OnHandDelta(_)) => Effect::Transferred { qty },
        (Request::Recount { .. }, Message::InventoryLevel(i)) => Effect::Recounted {
            on_hand: i.on_hand.get(),
        },
        (Request::Adjust { .. }, Message::OnHandDelta(d)) if d.reason != delta_reason::TRANSFER => {
            Effect::Adjusted {
                delta: d.delta.get(),
            }
        }
        (Request::DirectoryAdd { kind, .. }, Message::SkuDirectory(r))
            if kind == directory_kind::SKU =>
        {
            Effect::Added { id: r.sku.get() }
        }
        (Request::DirectoryAdd { kind, .. }, Message::LocationDirectory(l))
            if kind == directory_kind::LOCATION =>
        {
            Effect::Added {
                id: u32::from(l.location.get()),
            }
        }
        _ => return None,
    })
}

/// The cells an accepted command changed, read from `replica` after its
/// event(s): the event's own cell (so an order at any location reports
/// where it was filled), and a transfer's destination.
pub(super) fn cells_after(
    replica: &Replica,
    request: &Request,
    event: &Message,
) -> [Option<CellAfter>; 2] {
    let event_cell = match *event {
        Message::OnHandDelta(d) => Some((d.location.get(), d.sku.get())),
        Message::HoldPlaced(h) => Some((h.location.get(), h.sku.get())),
        Message::HoldEnded(e) => Some((e.location.get(), e.sku.get())),
        Message::InventoryLevel(i) => Some((i.location.get(), i.sku.get())),
        _ => None,
    };
    let first = event_cell.and_then(|(l, s)| CellAfter::of(replica, l, s));
    let second = match *request {
        Request::Transfer { to, sku, .. } => CellAfter::of(replica, to, sku),
        _ => None,
    };
    [first, second]
}

/// The numbers behind a warehouse rejection, read from `replica` as it
/// stood when the warehouse decided (the `J` changes no cell).
pub(super) fn rejection_numbers(replica: &Replica, request: &Request, reason: u8) -> Rejection {
    let mut rejection = Rejection {
        reason,
        by: RejectedBy::Warehouse,
        available: None,
        current_version: None,
    };
    let cell = |location, sku| replica.cell(location, sku);
    match (reason, *request) {
        (
            reject_reason::INSUFFICIENT,
            Request::Order {
                location: 0, sku, ..
            },
        ) => {
            rejection.available = Some(
                replica
                    .cells_of(sku)
                    .map(|(_, c)| c.available)
                    .max()
                    .unwrap_or(0),
            );
        }
        (
            reject_reason::INSUFFICIENT,
            Request::Order { location, sku, .. }
            | Request::Hold { location, sku, .. }
            | Request::Adjust { location, sku, .. }
            | Request::Transfer {
                from: location,
                sku,
                ..
            },
        ) => rejection.available = cell(location, sku).map(|c| c.available),
        (reject_reason::VERSION_CONFLICT, Request::Recount { location, sku, .. }) => {
            rejection.current_version = cell(location, sku).map(|c| c.version);
        }
        _ => {}
    }
    rejection
}
