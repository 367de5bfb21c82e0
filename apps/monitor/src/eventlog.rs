//! The recent events `/v1/events` serves and replays: every decision on the
//! stream (`D`, `H`, `E`, `J`, `I`, `j`) and the notifications derived from
//! them (`depleted`, `low_stock`, `restocked`), in stream order, in a
//! bounded ring written by the stream thread under the model's write lock.
//!
//! Resuming: SSE's `id` is the event's place in the stream across
//! sessions: the stream seq plus the last seq of every session before this
//! one the service followed (in the first session, the seq itself), so ids
//! keep growing through a rollover (where seqs start again at 1) and a
//! `Last-Event-ID` from the previous session resumes with its remaining
//! events, then the new session's. Several events can share one seq (a
//! decision and the depletion it caused); only the last of them carries
//! the `id`, so a client that resumes from its `Last-Event-ID` never misses
//! the rest of a seq nor sees one twice. The ring (kept across sessions)
//! covers every event from `covered_from` on: a resume from an older id is
//! answered 410.

use std::collections::VecDeque;

use serde_json::{json, Value};
use tally_client::replica::Replica;
use tally_client::text;
use tally_wire::Message;

/// One event as the SSE stream writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamEvent {
    /// Its SSE id: the stream seq it belongs to plus the session's base
    /// (see the module docs); ids grow across sessions.
    pub(crate) id: u64,
    /// SSE `event:` name: `decision`, `depleted`, `low_stock`, `restocked`.
    pub(crate) kind: &'static str,
    /// SSE `data:` (one line of JSON).
    pub(crate) data: String,
    /// The last event of its seq: it carries the SSE `id`.
    pub(crate) last_of_seq: bool,
}

/// The ring. See the module docs.
#[derive(Debug)]
pub(crate) struct EventLog {
    events: VecDeque<StreamEvent>,
    capacity: usize,
    /// Every event of an id ≥ this is in the ring (1: nothing dropped yet).
    covered_from: u64,
    /// Added to this session's seqs to make ids: the sum of the last seqs
    /// of the sessions before (0 in the first one followed).
    id_base: u64,
    /// Events ever recorded.
    recorded: u64,
}

/// Why a resume cannot be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TooOld {
    /// The oldest `Last-Event-ID` that can be resumed from.
    pub(crate) oldest_resumable: u64,
}

impl EventLog {
    pub(crate) fn new(capacity: usize) -> EventLog {
        assert!(capacity >= 1);
        EventLog {
            events: VecDeque::with_capacity(capacity),
            capacity,
            covered_from: 1,
            id_base: 0,
            recorded: 0,
        }
    }

    /// The SSE id of stream seq `seq` of the current session.
    pub(crate) fn id_of(&self, seq: u64) -> u64 {
        self.id_base + seq
    }

    /// The session whose last seq was `ended_last_seq` has ended; the next
    /// one's ids follow on from its last (its seqs start at 1 again).
    pub(crate) fn next_session(&mut self, ended_last_seq: u64) {
        let newest = self.events.back().map_or(0, |event| event.id);
        self.id_base = self.id_of(ended_last_seq).max(newest);
    }

    /// Events ever recorded.
    pub(crate) fn recorded(&self) -> u64 {
        self.recorded
    }

    /// Bytes held (for `/metrics`' memory figure; an estimate).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.events.capacity() * std::mem::size_of::<StreamEvent>()
            + self.events.iter().map(|e| e.data.capacity()).sum::<usize>()
    }

    fn push(&mut self, event: StreamEvent) {
        if self.events.len() == self.capacity {
            if let Some(dropped) = self.events.pop_front() {
                self.covered_from = self.covered_from.max(dropped.id + 1);
            }
        }
        self.recorded += 1;
        self.events.push_back(event);
    }

    /// Records what the message at `seq` (just applied to `replica`)
    /// decided; `touched` is the cell it changed and its available before.
    pub(crate) fn record(
        &mut self,
        seq: u64,
        message: &Message,
        replica: &Replica,
        touched: Option<Touched>,
        low_stock_at: u32,
    ) {
        if !is_decision(message.msg_type()) {
            return;
        }
        let mut pending = vec![("decision", decision_json(seq, message, replica))];
        if let Some(touched) = touched {
            if let Some(kind) = touched.notification(replica, low_stock_at) {
                pending.push((kind, touched.json(seq, replica)));
            }
        }
        let last = pending.len() - 1;
        let id = self.id_of(seq);
        for (index, (kind, data)) in pending.into_iter().enumerate() {
            self.push(StreamEvent {
                id,
                kind,
                data: data.to_string(),
                last_of_seq: index == last,
            });
        }
    }

    /// Events after id `after_id` (at most `max`), or why they cannot be
    /// given: the ring no longer holds every event after it.
    pub(crate) fn since(&self, after_id: u64, max: usize) -> Result<Vec<StreamEvent>, TooOld> {
        if after_id.saturating_add(1) < self.covered_from {
            return Err(TooOld {
                oldest_resumable: self.covered_from - 1,
            });
        }
        let start = self.events.partition_point(|e| e.id <= after_id);
        Ok(self.events.range(start..).take(max).cloned().collect())
    }
}

/// Stream messages that are decisions (or, for `I`, levels the authority
/// sets): what `/v1/events` sends as `decision`.
fn is_decision(msg_type: u8) -> bool {
    matches!(msg_type, b'D' | b'H' | b'E' | b'J' | b'I' | b'j')
}

/// The event as [`text::json`] with, when the replica still has it, the
/// command it answers (`command`), and the symbol of its SKU.
fn decision_json(seq: u64, message: &Message, replica: &Replica) -> Value {
    let mut value = text::json(seq, message);
    if let Some(cmd_seq) = value.get("cmd_seq").and_then(Value::as_u64) {
        if let Some(command) = replica.command(cmd_seq) {
            value["command"] = text::json(cmd_seq, &command);
        }
    }
    if let Some(sku) = value.get("sku").and_then(Value::as_u64) {
        if let Some(symbol) = u32::try_from(sku).ok().and_then(|sku| replica.symbol(sku)) {
            value["symbol"] = String::from_utf8_lossy(symbol).into_owned().into();
        }
    }
    value
}

/// The cell a message changes, with its available before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Touched {
    pub(crate) location: u16,
    pub(crate) sku: u32,
    pub(crate) available_before: u32,
}

impl Touched {
    /// The cell `message` changes (`D`, `I`, `H`, `E`) and its available
    /// in `replica` before the message is applied.
    pub(crate) fn before(message: &Message, replica: &Replica) -> Option<Touched> {
        let (location, sku) = match message {
            Message::OnHandDelta(m) => (m.location.get(), m.sku.get()),
            Message::InventoryLevel(m) => (m.location.get(), m.sku.get()),
            Message::HoldPlaced(m) => (m.location.get(), m.sku.get()),
            Message::HoldEnded(m) => (m.location.get(), m.sku.get()),
            _ => return None,
        };
        let available_before = replica.cell(location, sku).map_or(0, |c| c.available);
        Some(Touched {
            location,
            sku,
            available_before,
        })
    }

    fn available_after(&self, replica: &Replica) -> u32 {
        replica
            .cell(self.location, self.sku)
            .map_or(0, |c| c.available)
    }

    /// `depleted` (available fell to 0), `low_stock` (fell to
    /// `low_stock_at` or below, not 0), `restocked` (rose from 0).
    fn notification(&self, replica: &Replica, low_stock_at: u32) -> Option<&'static str> {
        let (before, after) = (self.available_before, self.available_after(replica));
        if before > 0 && after == 0 {
            Some("depleted")
        } else if before > low_stock_at && after <= low_stock_at && after > 0 {
            Some("low_stock")
        } else if before == 0 && after > 0 {
            Some("restocked")
        } else {
            None
        }
    }

    fn json(&self, seq: u64, replica: &Replica) -> Value {
        let cell = replica.cell(self.location, self.sku).unwrap_or_default();
        let symbol = replica
            .symbol(self.sku)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_default();
        let location_name = replica
            .location_name(self.location)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_default();
        json!({
            "seq": seq,
            "location": self.location,
            "location_name": location_name,
            "sku": self.sku,
            "symbol": symbol,
            "on_hand": cell.on_hand,
            "reserved": cell.reserved,
            "available": cell.available,
            "available_before": self.available_before,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, last_of_seq: bool) -> StreamEvent {
        StreamEvent {
            id,
            kind: "decision",
            data: String::new(),
            last_of_seq,
        }
    }

    #[test]
    fn resumes_after_a_seq_until_its_events_are_dropped() {
        let mut log = EventLog::new(3);
        log.push(event(2, false));
        log.push(event(2, true));
        log.push(event(5, true));
        assert_eq!(log.since(0, 10).unwrap().len(), 3);
        assert_eq!(log.since(2, 10).unwrap(), vec![event(5, true)]);
        assert_eq!(log.since(5, 10).unwrap(), vec![]);
        log.push(event(7, true)); // drops the first event of seq 2
        assert_eq!(
            log.since(1, 10),
            Err(TooOld {
                oldest_resumable: 2
            })
        );
        // Seq 2 is no longer whole: resuming after it is fine, at it is not.
        assert_eq!(
            log.since(2, 10).unwrap(),
            vec![event(5, true), event(7, true)]
        );
        assert_eq!(log.since(5, 1).unwrap(), vec![event(7, true)]);
        assert_eq!(log.recorded(), 4);
    }

    #[test]
    fn ids_keep_growing_across_sessions() {
        let mut log = EventLog::new(8);
        assert_eq!(log.id_of(7), 7, "the first session: id = seq");
        log.push(event(log.id_of(7), true));
        log.next_session(9); // the session ended at seq 9
        assert_eq!(log.id_of(1), 10);
        log.push(event(log.id_of(3), true));
        // A client of the old session resumes with the new one's events.
        assert_eq!(log.since(7, 10).unwrap(), vec![event(12, true)]);
        assert_eq!(log.since(0, 10).unwrap().len(), 2);
        // A session that ended before the ring's newest id (never from a
        // real stream) still cannot make ids go back.
        log.next_session(1);
        assert!(log.id_of(1) > 12);
    }
}
