use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::*;

impl ReadModel {
    /// `GET /metrics`: Prometheus text format 0.0.4.
    pub(crate) fn metrics(&self, now_ns: u64, fresh: Freshness, http: &HttpCounters) -> String {
        let mut out = String::with_capacity(8192);
        let mut m = Metrics { out: &mut out };
        self.metrics_freshness(&mut m, now_ns, fresh);
        self.metrics_stream(&mut m);
        self.metrics_replica(&mut m);
        self.metrics_indexes(&mut m);
        metrics_http(&mut m, http);
        out
    }

    /// seq, lag, stale, readiness, silence, authority, oversold.
    fn metrics_freshness(&self, m: &mut Metrics<'_>, now_ns: u64, fresh: Freshness) {
        m.gauge(
            "tally_monitor_seq",
            "Stream sequence number the monitor's replica reflects.",
            fresh.seq,
        );
        m.gauge(
            "tally_monitor_newest_seq",
            "Newest sequence number seen on the stream.",
            fresh.newest_seq,
        );
        m.gauge(
            "tally_monitor_lag",
            "Messages the replica is behind the newest seen (newest_seq - seq).",
            fresh.lag,
        );
        m.gauge(
            "tally_monitor_stale",
            "1 when the stream went silent past the stale timeout (or the stream thread failed).",
            u64::from(fresh.stale),
        );
        m.gauge(
            "tally_monitor_ready",
            "1 when /ready answers 200.",
            u64::from(self.readiness(now_ns).is_ok()),
        );
        m.gauge(
            "tally_monitor_recovering",
            "1 while the consumer replays or fills a gap.",
            u64::from(self.live.recovering),
        );
        m.gauge(
            "tally_monitor_silent_seconds",
            "Seconds since data or a heartbeat last arrived.",
            format_args!(
                "{:.3}",
                now_ns.saturating_sub(self.live.last_activity_ns) as f64 / 1e9
            ),
        );
        m.gauge(
            "tally_monitor_authority_online_seq",
            "Sequence number of the last authority-online event S(W); 0 = none.",
            self.replica.authority_online_seq(),
        );
        m.gauge(
            "tally_monitor_oversold",
            "Events that would have made on_hand or reserved negative: must be 0.",
            self.replica.oversold(),
        );
    }

    /// The consumer's counters.
    fn metrics_stream(&self, m: &mut Metrics<'_>) {
        let stats = &self.live.consumer;
        let counters = self.replica.counters();
        m.counter(
            "tally_monitor_messages_applied_total",
            "Stream messages applied to the replica.",
            counters.messages,
        );
        m.counter(
            "tally_monitor_datagrams_total",
            "Multicast datagrams received.",
            stats.datagrams,
        );
        m.counter(
            "tally_monitor_heartbeats_total",
            "Heartbeats received.",
            stats.heartbeats,
        );
        m.counter(
            "tally_monitor_gaps_total",
            "Missing runs of messages detected.",
            stats.gaps_detected,
        );
        m.counter(
            "tally_monitor_re_requests_total",
            "MoldUDP64 re-requests sent.",
            stats.re_requests_sent,
        );
        m.counter(
            "tally_monitor_re_request_timeouts_total",
            "Re-requests that timed out and were sent again.",
            stats.re_request_timeouts,
        );
        m.family(
            "tally_monitor_recovered_total",
            "counter",
            "Messages first received through gap fill, by path.",
        );
        m.sample(
            "tally_monitor_recovered_total",
            "path=\"retransmit\"",
            stats.recovered_by_retransmit,
        );
        m.sample(
            "tally_monitor_recovered_total",
            "path=\"replay\"",
            stats.recovered_by_replay,
        );
        m.counter("tally_monitor_replay_recoveries_total", "Switches to the replay feed (late join, unanswered re-requests, overflow, large or old gap).", stats.replay_recoveries());
        m.counter(
            "tally_monitor_duplicates_discarded_total",
            "Messages received again after delivery.",
            stats.duplicates_discarded,
        );
        m.counter(
            "tally_monitor_reorder_overflows_total",
            "Messages too far ahead for the reorder buffer.",
            stats.reorder_overflows,
        );
        m.counter(
            "tally_monitor_stale_transitions_total",
            "Times the stream went stale.",
            stats.stale_transitions,
        );
        m.counter(
            "tally_monitor_undecodable_messages_total",
            "Stream messages that did not decode (skipped).",
            stats.undecodable_messages,
        );
    }

    /// The replica's counters and sizes.
    fn metrics_replica(&self, m: &mut Metrics<'_>) {
        let counters = self.replica.counters();
        m.family(
            "tally_monitor_replica_total",
            "counter",
            "Replica counters (messages by kind, and everything unusual it met).",
        );
        for (name, value) in [
            ("commands", counters.commands),
            ("events", counters.events),
            ("rejects", counters.rejects),
            ("gateway_rejects", counters.gateway_rejects),
            ("stale", counters.stale),
            ("violations", counters.violations),
            ("unknown_refs", counters.unknown_refs),
            ("dropped_events", counters.dropped_events),
            ("sku_overflow", counters.sku_overflow),
            ("location_overflow", counters.location_overflow),
            ("hold_overflow", counters.hold_overflow),
            ("ids_evicted", counters.ids_evicted),
            ("pending_evicted", counters.pending_evicted),
            ("unattributed", counters.unattributed),
            ("anomalies", counters.anomalies),
        ] {
            m.sample(
                "tally_monitor_replica_total",
                &format!("counter=\"{name}\""),
                value,
            );
        }
        m.gauge(
            "tally_monitor_skus",
            "SKUs in the directory.",
            self.replica.sku_count(),
        );
        m.gauge(
            "tally_monitor_locations",
            "Locations in the directory.",
            self.replica.location_count(),
        );
        m.gauge(
            "tally_monitor_open_holds",
            "Open holds.",
            self.replica.hold_count(),
        );
    }

    /// The indexes, memory and the event ring.
    fn metrics_indexes(&self, m: &mut Metrics<'_>) {
        let index = &self.indexes.counters;
        m.family(
            "tally_monitor_index_total",
            "counter",
            "What the monitor's bounded indexes evicted, overwrote or could not place.",
        );
        for (name, value) in [
            ("cells_evicted", index.cells_evicted),
            ("cell_events_overwritten", index.cell_events_overwritten),
            ("orders_evicted", index.orders_evicted),
            ("order_events_overwritten", index.order_events_overwritten),
            ("holds_evicted", index.holds_evicted),
            ("hold_events_overwritten", index.hold_events_overwritten),
            ("outcomes_unattributed", index.outcomes_unattributed),
            ("carried_holds", index.carried_holds),
            ("staging_growths", index.staging_growths),
        ] {
            m.sample(
                "tally_monitor_index_total",
                &format!("counter=\"{name}\""),
                value,
            );
        }
        m.family(
            "tally_monitor_index_entries",
            "gauge",
            "Entries in the monitor's indexes.",
        );
        m.sample(
            "tally_monitor_index_entries",
            "index=\"cells\"",
            self.indexes.cells.len(),
        );
        m.sample(
            "tally_monitor_index_entries",
            "index=\"orders\"",
            self.indexes.orders.len(),
        );
        m.sample(
            "tally_monitor_index_entries",
            "index=\"holds\"",
            self.indexes.holds.len(),
        );
        m.gauge(
            "tally_monitor_memory_bytes",
            "Bytes of the replica's and the indexes' tables and the event ring.",
            self.memory_bytes(),
        );
        m.counter(
            "tally_monitor_events_recorded_total",
            "Decisions and notifications recorded for /v1/events.",
            self.events.recorded(),
        );
    }
}

/// Answers by status code.
fn metrics_http(m: &mut Metrics<'_>, http: &HttpCounters) {
    m.family(
        "tally_monitor_http_requests_total",
        "counter",
        "HTTP requests answered, by status code.",
    );
    for (code, value) in http.by_code() {
        m.sample(
            "tally_monitor_http_requests_total",
            &format!("code=\"{code}\""),
            value,
        );
    }
}

/// Writes Prometheus text exposition lines.
pub(crate) struct Metrics<'a> {
    pub(crate) out: &'a mut String,
}

impl Metrics<'_> {
    pub(crate) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub(crate) fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    pub(crate) fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "gauge", help);
        self.sample(name, "", value);
    }

    pub(crate) fn counter(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "counter", help);
        self.sample(name, "", value);
    }
}

// ---------------------------------------------------------------------------
// HTTP counters.

/// Requests answered, by status code; shared by the HTTP workers (relaxed
/// atomics).
#[derive(Debug, Default)]
pub struct HttpCounters {
    pub(crate) counts: [AtomicU64; HTTP_CODES.len() + 1],
}

/// The status codes the monitor answers with; anything else counts as
/// "other".
pub(crate) const HTTP_CODES: [u16; 9] = [200, 400, 401, 403, 404, 405, 429, 500, 503];

impl HttpCounters {
    /// Counts one answer with `status`.
    pub fn count(&self, status: u16) {
        let index = HTTP_CODES
            .iter()
            .position(|&c| c == status)
            .unwrap_or(HTTP_CODES.len());
        self.counts[index].fetch_add(1, Ordering::Relaxed);
    }

    /// `(code, count)` for every code, then `("other", count)`.
    pub fn by_code(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        HTTP_CODES
            .iter()
            .map(|c| c.to_string())
            .chain(std::iter::once("other".to_string()))
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
    }
}
