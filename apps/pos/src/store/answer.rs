//! The store node's answers: JSON bodies with a sentence for a person, the
//! stock the replica shows, and the HTTP status each outcome maps to.

use serde_json::{json, Value};
use tally_client::replica::Cell;
use tally_wire::reject_reason;

use super::Answer;

/// A reject reason (DESIGN §3's letters) in words: the foundation's.
pub use tally_client::command::reject_words as reason_words;

/// The HTTP status a reject reason maps to.
pub(crate) fn status_for(reason: u8) -> u16 {
    match reason {
        reject_reason::INSUFFICIENT | reject_reason::VERSION_CONFLICT => 409,
        reject_reason::UNKNOWN_SKU | reject_reason::UNKNOWN_LOCATION | reject_reason::NO_SUCH => {
            404
        }
        reject_reason::NOT_PERMITTED => 403,
        reject_reason::RATE_LIMITED => 429,
        _ => 422,
    }
}

/// One cell as the node shows it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StockLine<'a> {
    pub location: &'a str,
    pub sku: &'a str,
    pub cell: Cell,
}

impl StockLine<'_> {
    pub(crate) fn json(&self) -> Value {
        json!({
            "location": self.location,
            "sku": self.sku,
            "on_hand": self.cell.on_hand,
            "reserved": self.cell.reserved,
            "available": self.cell.available,
            "version": self.cell.version,
        })
    }

    /// `MUG at STORE-A: 3 available (on hand 3, reserved 0)`.
    pub(crate) fn sentence(&self) -> String {
        format!(
            "{} at {}: {} available (on hand {}, reserved {})",
            self.sku, self.location, self.cell.available, self.cell.on_hand, self.cell.reserved
        )
    }
}

/// How fresh the node's replica is, for every answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Freshness {
    pub seq: u64,
    pub lag: u64,
    pub stale: bool,
    /// Seconds since the link to the appliance went down (None: up).
    pub link_down_s: Option<f64>,
}

/// An answer: `status`, `message`, the fields of `extra` (an object), and
/// the freshness fields.
pub(crate) fn answer(status: u16, message: String, extra: Value, fresh: Freshness) -> Answer {
    let mut body = json!({ "message": message });
    if let (Value::Object(map), Value::Object(extra)) = (&mut body, extra) {
        map.extend(extra);
        map.insert("seq".into(), fresh.seq.into());
        map.insert("lag".into(), fresh.lag.into());
        map.insert("stale".into(), fresh.stale.into());
        map.insert(
            "link".into(),
            if fresh.link_down_s.is_some() {
                "down"
            } else {
                "up"
            }
            .into(),
        );
        if let Some(seconds) = fresh.link_down_s {
            map.insert("link_down_s".into(), json!((seconds * 10.0).round() / 10.0));
        }
    }
    let retry_after_s = (status == 503).then_some(1);
    Answer {
        status,
        body,
        retry_after_s,
    }
}

/// A refusal: `error` (short, stable) and `message` (the sentence).
pub(crate) fn refusal(status: u16, error: &str, message: String, fresh: Freshness) -> Answer {
    answer(status, message, json!({ "error": error }), fresh)
}

/// A refusal that carries the stock the replica shows.
pub(crate) fn refusal_with_stock(
    status: u16,
    error: &str,
    message: String,
    stock: &StockLine<'_>,
    fresh: Freshness,
) -> Answer {
    let message = format!("{message} — {}", stock.sentence());
    answer(
        status,
        message,
        json!({ "error": error, "stock": stock.json() }),
        fresh,
    )
}
