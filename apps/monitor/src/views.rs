//! The JSON views of `/v1`'s reads, made from the [`ReadModel`] under the
//! read lock. Every answer's work is bounded (pages of at most
//! [`crate::PAGE_LIMIT_MAX`] entries).

use serde_json::{json, Value};
use tally_client::replica::id_kind;
use tally_wire::Message;

use crate::answer::{page_limit, parse_number, parse_query, ApiError};
use crate::model::ReadModel;

/// Public ids of orders, holds and transfers: `ORIGIN-ID` (the client id
/// the gateway stamped, then the client's own id), or `ID` alone for one of
/// the caller's own (origin `caller_origin`).
pub(crate) fn parse_public_id(text: &str, caller_origin: u16) -> Result<(u16, u64), ApiError> {
    match text.split_once('-') {
        Some((origin, id)) => Ok((parse_number(origin, "origin")?, parse_number(id, "id")?)),
        None => Ok((caller_origin, parse_number(text, "id")?)),
    }
}

/// The public id of `(origin, id)`.
pub(crate) fn public_id(origin: u16, id: u64) -> String {
    format!("{origin}-{id}")
}

impl ReadModel {
    /// A SKU by symbol, or by id when no symbol matches and `text` is a
    /// number.
    pub(crate) fn sku_by_text(&self, text: &str) -> Result<(u32, String), ApiError> {
        if let Some(sku) = self.replica.sku_by_symbol(text) {
            return Ok((sku, text.to_string()));
        }
        if let Ok(id) = text.parse::<u32>() {
            if let Some(symbol) = self.replica.symbol(id) {
                return Ok((id, String::from_utf8_lossy(symbol).into_owned()));
            }
        }
        Err(ApiError::not_found(format!("unknown SKU {text:?}")))
    }

    /// `GET /v1/skus?after=POSITION&limit=N`: the SKU directory in its
    /// order, a page at a time, each SKU with its totals over every stocked
    /// location. Work: the page's SKUs' stocked cells.
    pub(crate) fn v1_skus(&self, query: &str) -> Result<Value, ApiError> {
        let params = parse_query(query, &["after", "limit"])?;
        let limit = page_limit(&params)?;
        let count = self.replica.sku_count();
        let start = self.directory_start(&params)?;
        let end = start.saturating_add(limit as u32).min(count);
        let skus: Vec<Value> = (start..end)
            .map(|position| self.sku_summary(position))
            .collect();
        let next = if end < count {
            json!(end - 1)
        } else {
            Value::Null
        };
        Ok(json!({
            "count": count,
            "limit": limit,
            "next": next,
            "skus": skus,
        }))
    }

    fn sku_summary(&self, position: u32) -> Value {
        let (sku, symbol) = self.replica.sku_at(position).expect("position < sku_count");
        let (mut on_hand, mut reserved, mut available, mut locations) = (0u64, 0u64, 0u64, 0u32);
        self.replica.for_each_stocked_cell(sku, |_, cell| {
            on_hand += u64::from(cell.on_hand);
            reserved += u64::from(cell.reserved);
            available += u64::from(cell.available);
            locations += 1;
        });
        json!({
            "sku": sku,
            "position": position,
            "symbol": String::from_utf8_lossy(symbol),
            "on_hand": on_hand,
            "reserved": reserved,
            "available": available,
            "stocked_locations": locations,
        })
    }

    /// `GET /v1/skus/{sku}[?location=…][&after=…][&limit=…]`: per-location
    /// on-hand, reserved, available and version, and the totals.
    pub(crate) fn v1_sku(&self, text: &str, query: &str) -> Result<Value, ApiError> {
        let (sku, symbol) = self.sku_by_text(text)?;
        self.availability_of(sku, symbol, query)
    }

    /// `GET /v1/transfers/{id}`: an accepted transfer while the replica's id
    /// history holds it (a rejected one is not kept: 404).
    pub(crate) fn v1_transfer(&self, origin: u16, transfer_id: u64) -> Result<Value, ApiError> {
        let slot = self
            .replica
            .id_slot(origin, id_kind::TRANSFER, transfer_id)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "unknown transfer {} (rejected, never sent, or no longer held)",
                    public_id(origin, transfer_id)
                ))
            })?;
        let record = self.replica.id_record(slot);
        let to = match self.replica.command(record.cmd_seq) {
            Some(Message::Transfer(t)) => json!(t.to.get()),
            _ => Value::Null,
        };
        Ok(json!({
            "id": public_id(origin, transfer_id),
            "origin": origin,
            "transfer_id": transfer_id,
            "status": "accepted",
            "transfer_seq": record.cmd_seq,
            "from": record.location,
            "from_name": self.location_name(record.location),
            "to": to,
            "sku": record.sku,
            "symbol": self.symbol_of(record.sku),
            "qty": record.qty,
        }))
    }
}
