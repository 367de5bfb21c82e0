use serde_json::{json, Value};

use crate::answer::*;
use crate::metrics::*;
use crate::model::*;
use tally_client::replica::Cell;

/// The routes, for the 404 answer.
pub(crate) const ROUTES: &[&str] = &[
    "/availability/{symbol}[?location=NAME_OR_ID][&after=LOCATION_ID][&limit=N]",
    "/cells/{location}/{symbol}/history[?limit=N]",
    "/orders/{origin}/{order_id}",
    "/holds/{origin}/{hold_id}",
    "/depleted[?scope=all|any][&after=POSITION][&limit=N]",
    "/digest[?locations=NAME_OR_ID,...]",
    "/health",
    "/ready",
    "/metrics",
];

/// Entries a listing page (`/depleted`, `/availability`) holds when the
/// request names no `limit`.
pub const PAGE_LIMIT_DEFAULT: usize = 100;
/// Most entries one listing page holds (a larger `limit` is capped).
pub const PAGE_LIMIT_MAX: usize = 1000;
/// Most SKUs one `/depleted` request examines...
pub const DEPLETED_SCAN_SKUS_MAX: usize = 1 << 16;
/// ...and most stocked cells (the SKU that crosses it is finished).
pub const DEPLETED_SCAN_CELLS_MAX: usize = 1 << 20;
/// Most locations one `/digest?locations=` names.
pub(crate) const DIGEST_LOCATIONS_MAX: usize = 1024;

impl ReadModel {
    /// The answer to `method url` at `now_ns`, with the HTTP request
    /// counters `http` for `/metrics`.
    pub fn respond(&self, method: &str, url: &str, now_ns: u64, http: &HttpCounters) -> Reply {
        let fresh = self.freshness(now_ns);
        if method != "GET" {
            return json_reply(
                405,
                json!({ "error": format!("method {method} not allowed: the monitor answers GET only") }),
                fresh,
            );
        }
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let result = match segments.as_slice() {
            ["availability", symbol] => self.availability(symbol, query),
            ["cells", location, symbol, "history"] => self.history(location, symbol, query),
            ["orders", origin, order_id] => {
                no_query(query).and_then(|()| self.order(origin, order_id))
            }
            ["holds", origin, hold_id] => no_query(query).and_then(|()| self.hold(origin, hold_id)),
            ["depleted"] => self.depleted(query),
            ["digest"] => self.digest_json(query),
            ["health"] => {
                return match no_query(query) {
                    Ok(()) => self.health(now_ns, fresh),
                    Err(error) => error_reply(error, fresh),
                }
            }
            ["ready"] => {
                return match no_query(query) {
                    Ok(()) => self.ready(now_ns, fresh),
                    Err(error) => error_reply(error, fresh),
                }
            }
            ["metrics"] => {
                return match no_query(query) {
                    Ok(()) => Reply {
                        status: 200,
                        content_type: PROMETHEUS,
                        body: self.metrics(now_ns, fresh, http),
                    },
                    Err(error) => error_reply(error, fresh),
                }
            }
            _ => Err(ApiError {
                status: 404,
                message: format!("no such route: {path} (routes: {})", ROUTES.join(", ")),
            }),
        };
        match result {
            Ok(body) => json_reply(200, body, fresh),
            Err(error) => error_reply(error, fresh),
        }
    }

    // ---- endpoints --------------------------------------------------------

    pub(crate) fn sku_of(&self, symbol_segment: &str) -> Result<(u32, String), ApiError> {
        let symbol = percent_decode(symbol_segment, false)?;
        match self.replica.sku_by_symbol(&symbol) {
            Some(sku) => Ok((sku, symbol)),
            None => Err(ApiError::not_found(format!("unknown SKU {symbol:?}"))),
        }
    }

    /// A location by id (digits) or name; unknown → 400.
    pub(crate) fn location_of(&self, text: &str) -> Result<u16, ApiError> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            let id: u16 = text.parse().map_err(|_| {
                ApiError::bad_request(format!("location id {text} is out of range"))
            })?;
            if self.replica.location_name(id).is_some() {
                return Ok(id);
            }
            return Err(ApiError::bad_request(format!("unknown location {id}")));
        }
        self.replica
            .location_by_name(text)
            .ok_or_else(|| ApiError::bad_request(format!("unknown location {text:?}")))
    }

    pub(crate) fn location_name(&self, location: u16) -> String {
        self.replica
            .location_name(location)
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .unwrap_or_default()
    }

    pub(crate) fn symbol_of(&self, sku: u32) -> String {
        self.replica
            .symbol(sku)
            .map(|symbol| String::from_utf8_lossy(symbol).into_owned())
            .unwrap_or_default()
    }

    pub(crate) fn cell_json(&self, location: u16, cell: Cell) -> Value {
        json!({
            "location": location,
            "name": self.location_name(location),
            "on_hand": cell.on_hand,
            "reserved": cell.reserved,
            "available": cell.available,
            "version": cell.version,
        })
    }

    /// `GET /availability/{symbol}[?location=NAME_OR_ID][&after=LOCATION_ID][&limit=N]`:
    /// the SKU's stocked cells (those some event named), ascending by
    /// location id, with on_hand, reserved, available and version, a page
    /// of at most `limit` of them after location id `after`, and the totals
    /// over every stocked cell; `next` is the `after` of the next page (null
    /// on the last). With `location`, that one cell (stocked or not). Work:
    /// O(the SKU's stocked cells), at most `locations_max`.
    pub(crate) fn availability(&self, symbol: &str, query: &str) -> Result<Value, ApiError> {
        let (sku, symbol) = self.sku_of(symbol)?;
        self.availability_of(sku, symbol, query)
    }

    /// [`Self::availability`] of a SKU already looked up.
    pub(crate) fn availability_of(
        &self,
        sku: u32,
        symbol: String,
        query: &str,
    ) -> Result<Value, ApiError> {
        let params = parse_query(query, &["location", "after", "limit"])?;
        let limit = page_limit(&params)?;
        let after = match param(&params, "after") {
            Some(text) => Some(parse_number::<u16>(text, "after (a location id)")?),
            None => None,
        };
        let mut cells: Vec<(u16, Cell)> = match param(&params, "location") {
            Some(text) => {
                let location = self.location_of(text)?;
                let cell = self.replica.cell(location, sku).unwrap_or_default();
                vec![(location, cell)]
            }
            None => {
                let mut cells = Vec::new();
                self.replica
                    .for_each_stocked_cell(sku, |location, cell| cells.push((location, cell)));
                cells.sort_unstable_by_key(|&(location, _)| location);
                cells
            }
        };
        let (mut on_hand, mut reserved, mut available) = (0u64, 0u64, 0u64);
        for (_, cell) in &cells {
            on_hand += u64::from(cell.on_hand);
            reserved += u64::from(cell.reserved);
            available += u64::from(cell.available);
        }
        let stocked = cells.len();
        if let Some(after) = after {
            cells.retain(|&(location, _)| location > after);
        }
        let more = cells.len() > limit;
        cells.truncate(limit);
        let next = match cells.last() {
            Some(&(location, _)) if more => json!(location),
            _ => Value::Null,
        };
        let locations: Vec<Value> = cells
            .iter()
            .map(|&(location, cell)| self.cell_json(location, cell))
            .collect();
        Ok(json!({
            "sku": sku,
            "symbol": symbol,
            "locations": locations,
            "stocked_locations": stocked,
            "limit": limit,
            "next": next,
            "total": { "on_hand": on_hand, "reserved": reserved, "available": available },
        }))
    }

    /// `GET /cells/{location}/{symbol}/history[?limit=N]`: the cell now and
    /// its recent events (oldest first, the newest `limit`), each with the
    /// cell's state right after it.
    pub(crate) fn history(
        &self,
        location: &str,
        symbol: &str,
        query: &str,
    ) -> Result<Value, ApiError> {
        let params = parse_query(query, &["limit"])?;
        let limit = match param(&params, "limit") {
            Some(text) => parse_number::<usize>(text, "limit")?,
            None => usize::MAX,
        };
        let location = self.location_of(&percent_decode(location, false)?)?;
        let (sku, symbol) = self.sku_of(symbol)?;
        let cell = self.replica.cell(location, sku).unwrap_or_default();
        let (events, recorded) = match self.indexes.cells.find(&(location, sku)) {
            Some(slot) => {
                let rings = &self.indexes.cell_rings;
                let held = rings.iter(slot).count();
                let events: Vec<Value> = rings
                    .iter(slot)
                    .skip(held.saturating_sub(limit))
                    .map(|entry| entry.json(true))
                    .collect();
                (events, rings.total(slot))
            }
            None => (Vec::new(), 0),
        };
        Ok(json!({
            "location": location,
            "name": self.location_name(location),
            "sku": sku,
            "symbol": symbol,
            "cell": {
                "on_hand": cell.on_hand,
                "reserved": cell.reserved,
                "available": cell.available,
                "version": cell.version,
            },
            "events_recorded": recorded,
            "truncated": recorded > events.len() as u64,
            "events": events,
        }))
    }

    /// `GET /orders/{origin}/{order_id}`: the order's status and timeline.
    pub(crate) fn order(&self, origin: &str, order_id: &str) -> Result<Value, ApiError> {
        let origin: u16 = parse_number(origin, "origin")?;
        let order_id: u64 = parse_number(order_id, "order_id")?;
        self.order_json(origin, order_id)
    }

    /// The order's status and timeline (see [`Self::order`]).
    pub(crate) fn order_json(&self, origin: u16, order_id: u64) -> Result<Value, ApiError> {
        if let Some(slot) = self.indexes.orders.find(&(origin, order_id)) {
            let meta = &self.indexes.order_meta[slot as usize];
            let rings = &self.indexes.order_rings;
            let events: Vec<Value> = rings.iter(slot).map(|e| e.json(false)).collect();
            let recorded = rings.total(slot);
            return Ok(json!({
                "origin": origin,
                "order_id": order_id,
                "status": meta.status.name(),
                "order_seq": meta.order_seq,
                "order_timestamp_ns": meta.order_timestamp_ns,
                "requested_location": meta.requested_location,
                "location": meta.location,
                "location_name": self.location_name(meta.location),
                "sku": meta.sku,
                "symbol": self.symbol_of(meta.sku),
                "qty": meta.qty,
                "remaining": meta.remaining,
                "reject_reason": reason_json(meta.reject_reason),
                "events_recorded": recorded,
                "truncated": recorded > events.len() as u64,
                "events": events,
            }));
        }
        // Evicted from the index: the replica's own record, if it has one.
        match self.replica.order(origin, order_id) {
            Some(record) => Ok(json!({
                "origin": origin,
                "order_id": order_id,
                "status": if record.remaining == 0 { "cancelled" } else { "accepted" },
                "order_seq": record.cmd_seq,
                "location": record.location,
                "location_name": self.location_name(record.location),
                "sku": record.sku,
                "symbol": self.symbol_of(record.sku),
                "qty": record.qty,
                "remaining": record.remaining,
                "reject_reason": Value::Null,
                "events_recorded": 0,
                "truncated": true,
                "events": [],
            })),
            None => Err(ApiError::not_found(format!(
                "unknown order {order_id} of origin {origin}"
            ))),
        }
    }

    /// `GET /holds/{origin}/{hold_id}`: the hold's status and timeline.
    pub(crate) fn hold(&self, origin: &str, hold_id: &str) -> Result<Value, ApiError> {
        let origin: u16 = parse_number(origin, "origin")?;
        let hold_id: u64 = parse_number(hold_id, "hold_id")?;
        self.hold_json(origin, hold_id)
    }

    /// The hold's status and timeline (see [`Self::hold`]).
    pub(crate) fn hold_json(&self, origin: u16, hold_id: u64) -> Result<Value, ApiError> {
        if let Some(slot) = self.indexes.holds.find(&(origin, hold_id)) {
            let meta = &self.indexes.hold_meta[slot as usize];
            let rings = &self.indexes.hold_rings;
            let events: Vec<Value> = rings.iter(slot).map(|e| e.json(false)).collect();
            let recorded = rings.total(slot);
            return Ok(json!({
                "origin": origin,
                "hold_id": hold_id,
                "status": meta.status.name(),
                "reserve_seq": meta.reserve_seq,
                "reserve_timestamp_ns": meta.reserve_timestamp_ns,
                "location": meta.location,
                "location_name": self.location_name(meta.location),
                "sku": meta.sku,
                "symbol": self.symbol_of(meta.sku),
                "qty": meta.qty,
                "ttl_ms": meta.ttl_ms,
                "expires_at_ns": meta.expires_at_ns,
                "ended_seq": meta.ended_seq,
                "reject_reason": reason_json(meta.reject_reason),
                "events_recorded": recorded,
                "truncated": recorded > events.len() as u64,
                "events": events,
            }));
        }
        match self.replica.hold_by_client(origin, hold_id) {
            Some(hold) => Ok(json!({
                "origin": origin,
                "hold_id": hold_id,
                "status": "open",
                "reserve_seq": hold.cmd_seq,
                "location": hold.location,
                "location_name": self.location_name(hold.location),
                "sku": hold.sku,
                "symbol": self.symbol_of(hold.sku),
                "qty": hold.qty,
                "expires_at_ns": hold.expires_at_ns,
                "ended_seq": 0,
                "reject_reason": Value::Null,
                "events_recorded": 0,
                "truncated": true,
                "events": [],
            })),
            None => Err(ApiError::not_found(format!(
                "unknown hold {hold_id} of origin {origin}"
            ))),
        }
    }

    /// The directory position a page starts at: after `after`, or 0.
    pub(crate) fn directory_start(&self, params: &[(String, String)]) -> Result<u32, ApiError> {
        let sku_count = self.replica.sku_count();
        let Some(text) = param(params, "after") else {
            return Ok(0);
        };
        let after = parse_number::<u32>(text, "after (a directory position)")?;
        if after >= sku_count {
            return Err(ApiError::bad_request(format!(
                "after {after} is not a position of the SKU directory (0..{sku_count}): \
                 pass the \"next\" of the previous page"
            )));
        }
        Ok(after + 1)
    }

    /// `GET /depleted[?scope=all|any][&after=POSITION][&limit=N]` (see the
    /// module docs): one page, in directory order, from the SKU after
    /// directory position `after` (from the first without it).
    pub(crate) fn depleted(&self, query: &str) -> Result<Value, ApiError> {
        let params = parse_query(query, &["scope", "after", "limit"])?;
        let everywhere = match param(&params, "scope") {
            None | Some("all") => true,
            Some("any") => false,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "scope must be all or any, not {other:?}"
                )))
            }
        };
        let limit = page_limit(&params)?;
        let sku_count = self.replica.sku_count();
        let start = self.directory_start(&params)?;
        let mut skus = Vec::new();
        let mut count = 0u64;
        let mut last_listed = None;
        let mut unlisted = false;
        let (mut position, mut cells_scanned) = (start, 0usize);
        let skus_end = start.saturating_add(DEPLETED_SCAN_SKUS_MAX as u32);
        while position < sku_count.min(skus_end) && cells_scanned < DEPLETED_SCAN_CELLS_MAX {
            let (sku, symbol) = self.replica.sku_at(position).expect("position < sku_count");
            let mut totals = SkuTotals::default();
            self.replica.for_each_stocked_cell(sku, |location, cell| {
                cells_scanned += 1;
                totals.add(location, cell);
            });
            let listed = if everywhere {
                totals.available == 0
            } else {
                !totals.out_at.is_empty()
            };
            if listed {
                count += 1;
                if skus.len() < limit {
                    skus.push(self.depleted_entry(sku, position, symbol, totals));
                    last_listed = Some(position);
                } else {
                    unlisted = true;
                }
            }
            position += 1;
        }
        // The next page starts after the last SKU listed when some found
        // were not listed, else after the last one examined.
        let next = if unlisted {
            last_listed.map(|p| json!(p)).unwrap_or(Value::Null)
        } else if position < sku_count {
            json!(position - 1)
        } else {
            Value::Null
        };
        Ok(json!({
            "scope": if everywhere { "all" } else { "any" },
            "count": count,
            "truncated": unlisted || !next.is_null(),
            "limit": limit,
            "scanned": { "from": start, "skus": position - start, "cells": cells_scanned },
            "next": next,
            "skus": skus,
        }))
    }

    /// One SKU of a `/depleted` page.
    fn depleted_entry(&self, sku: u32, position: u32, symbol: &[u8], totals: SkuTotals) -> Value {
        let mut out_at = totals.out_at;
        out_at.sort_unstable();
        let locations: Vec<Value> = out_at
            .iter()
            .map(|&l| json!({ "location": l, "name": self.location_name(l) }))
            .collect();
        json!({
            "sku": sku,
            "position": position,
            "symbol": String::from_utf8_lossy(symbol),
            "on_hand": totals.on_hand,
            "reserved": totals.reserved,
            "available": totals.available,
            "out_at": locations,
        })
    }

    /// `GET /digest[?locations=NAME_OR_ID,...]`: the replica's
    /// [`Replica::digest`] (or, with `locations`, the subset digest a store
    /// node keeping them reports, [`Replica::digest_of`]) and the seq it
    /// reflects (`digest_seq`), to compare replicas with the authority at
    /// the same seq. O(cells) once per change of the replica, then cached.
    pub(crate) fn digest_json(&self, query: &str) -> Result<Value, ApiError> {
        let params = parse_query(query, &["locations"])?;
        let Some(list) = param(&params, "locations") else {
            let (seq, digest) = self.digest();
            return Ok(json!({
                "digest": format!("{digest:016x}"),
                "digest_seq": seq,
                "oversold": self.replica.oversold(),
            }));
        };
        let mut locations = Vec::new();
        for item in list.split(',') {
            if item.is_empty() {
                return Err(ApiError::bad_request(
                    "locations must be location names or ids separated by commas",
                ));
            }
            if locations.len() == DIGEST_LOCATIONS_MAX {
                return Err(ApiError::bad_request(format!(
                    "locations names more than {DIGEST_LOCATIONS_MAX} locations"
                )));
            }
            locations.push(self.location_of(item)?);
        }
        locations.sort_unstable();
        locations.dedup();
        let (seq, digest) = self.digest_of(&locations);
        Ok(json!({
            "digest": format!("{digest:016x}"),
            "digest_seq": seq,
            "locations": locations,
            "oversold": self.replica.oversold(),
        }))
    }

    /// `GET /health`: 200 while the stream is alive, 503 when stale or the
    /// stream thread failed.
    pub(crate) fn health(&self, now_ns: u64, fresh: Freshness) -> Reply {
        let counters = self.replica.counters();
        let (status, code) = match (&self.live.failed, fresh.stale) {
            (Some(_), _) => ("failed", 503),
            (None, true) => ("stale", 503),
            (None, false) => ("ok", 200),
        };
        let body = json!({
            "status": status,
            "error": self.live.failed,
            "newest_seq": fresh.newest_seq,
            "silent_ms": now_ns.saturating_sub(self.live.last_activity_ns) / 1_000_000,
            "stale_timeout_ms": self.live.stale_timeout_ns / 1_000_000,
            "session": self.live.session,
            "mode": self.live.mode,
            "recovering": self.live.recovering,
            "ended": self.live.ended,
            "authority_online_seq": self.replica.authority_online_seq(),
            "oversold": self.replica.oversold(),
            "consumer": self.live.consumer,
            "replica": {
                "messages": counters.messages,
                "commands": counters.commands,
                "events": counters.events,
                "rejects": counters.rejects,
                "gateway_rejects": counters.gateway_rejects,
                "violations": counters.violations,
                "unknown_refs": counters.unknown_refs,
                "dropped_events": counters.dropped_events,
                "sku_overflow": counters.sku_overflow,
                "location_overflow": counters.location_overflow,
                "hold_overflow": counters.hold_overflow,
                "ids_evicted": counters.ids_evicted,
                "pending_evicted": counters.pending_evicted,
                "unattributed": counters.unattributed,
                "anomalies": counters.anomalies,
                "skus": self.replica.sku_count(),
                "locations": self.replica.location_count(),
                "open_holds": self.replica.hold_count(),
            },
            "indexes": self.indexes.counters,
            "limit_met": self.replica.limit_met(),
            "digests_computed": self.digests_computed(),
            "memory_bytes": self.memory_bytes(),
        });
        json_reply(code, body, fresh)
    }

    /// `GET /ready`: 200 once caught up with the authority online.
    pub(crate) fn ready(&self, now_ns: u64, fresh: Freshness) -> Reply {
        let authority = self.replica.authority_online_seq();
        match self.readiness(now_ns) {
            Ok(()) => json_reply(
                200,
                json!({ "ready": true, "authority_online_seq": authority }),
                fresh,
            ),
            Err(reason) => json_reply(
                503,
                json!({ "ready": false, "reason": reason, "authority_online_seq": authority }),
                fresh,
            ),
        }
    }
}

/// A SKU's stock summed over its stocked cells, and where none is
/// available.
#[derive(Default)]
struct SkuTotals {
    on_hand: u64,
    reserved: u64,
    available: u64,
    out_at: Vec<u16>,
}

impl SkuTotals {
    fn add(&mut self, location: u16, cell: tally_client::replica::Cell) {
        self.on_hand += u64::from(cell.on_hand);
        self.reserved += u64::from(cell.reserved);
        self.available += u64::from(cell.available);
        if cell.available == 0 {
            self.out_at.push(location);
        }
    }
}
