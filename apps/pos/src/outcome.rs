//! What a till counts and reports: command kinds, outcomes, reasons a
//! command was not sent, per-kind and per-reason counts, and round-trip
//! latency.

use hdrhistogram::Histogram;
use serde::Serialize;
use tally_wire::{
    reject_reason, CancelOrder, ConfirmHold, ModifyOrder, Order, ReleaseHold, Reserve,
};

/// Largest latency the histograms record (longer ones are clamped): 60 s.
pub const RTT_NS_MAX: u64 = 60_000_000_000;

/// The kinds of command a till sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Order,
    Modify,
    Cancel,
    Reserve,
    Confirm,
    Release,
}

impl CommandKind {
    /// The command's wire type.
    pub fn msg_type(self) -> u8 {
        match self {
            CommandKind::Order => Order::TYPE,
            CommandKind::Modify => ModifyOrder::TYPE,
            CommandKind::Cancel => CancelOrder::TYPE,
            CommandKind::Reserve => Reserve::TYPE,
            CommandKind::Confirm => ConfirmHold::TYPE,
            CommandKind::Release => ReleaseHold::TYPE,
        }
    }
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `D`: an order filled, modified or cancelled, or a hold confirmed
    /// (`delta` as on the stream: negative takes stock).
    Filled { location: u16, sku: u32, delta: i32 },
    /// `H`: the reservation holds `qty` until `expires_at_ns` (wall clock).
    HoldPlaced {
        location: u16,
        sku: u32,
        qty: u32,
        expires_at_ns: u64,
    },
    /// `E(R)`: the hold was released.
    HoldReleased,
    /// `J`: the warehouse rejected it (`reason`, DESIGN §3).
    Rejected { reason: u8 },
    /// `j`: the gateway refused it (role, rate limit…).
    GatewayRejected { reason: u8 },
    /// The session ended before the warehouse decided it: it was not
    /// carried out (docs/protocol.md, "Session rollover"); send it again.
    NotDecided,
}

/// One of our commands and its outcome, as [`Pos::poll_with`](crate::Pos::poll_with) reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct OutcomeReport {
    pub client_seq: u32,
    /// Stream seq of the command (0 when only a `j` ack told).
    pub cmd_seq: u64,
    pub kind: CommandKind,
    /// The order or hold id the command named.
    pub id: u64,
    pub outcome: Outcome,
    /// Command queued → outcome seen on the stream.
    pub rtt_ns: u64,
}

/// Why a command was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The replica shows it would fail with this reject reason (counted in
    /// [`PosStats::skipped_would_fail`]).
    WouldFail(u8),
    /// Not logged in, or the directory (`S(W)`) not seen yet, or the stream
    /// still catching up.
    NotReady,
    /// The in-flight limit or the client's window is reached: poll, retry.
    Full,
    /// A command about this order or hold is still awaiting its outcome.
    Busy,
    /// The till stopped for good.
    Closed,
}

/// Counts per command kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KindCounts {
    pub order: u64,
    pub modify: u64,
    pub cancel: u64,
    pub reserve: u64,
    pub confirm: u64,
    pub release: u64,
}

impl KindCounts {
    pub(crate) fn add(&mut self, kind: CommandKind) {
        *match kind {
            CommandKind::Order => &mut self.order,
            CommandKind::Modify => &mut self.modify,
            CommandKind::Cancel => &mut self.cancel,
            CommandKind::Reserve => &mut self.reserve,
            CommandKind::Confirm => &mut self.confirm,
            CommandKind::Release => &mut self.release,
        } += 1;
    }

    pub fn total(&self) -> u64 {
        self.order + self.modify + self.cancel + self.reserve + self.confirm + self.release
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &KindCounts) {
        self.order += other.order;
        self.modify += other.modify;
        self.cancel += other.cancel;
        self.reserve += other.reserve;
        self.confirm += other.confirm;
        self.release += other.release;
    }
}

/// Counts per reject reason (DESIGN §3's letters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReasonCounts {
    /// `I`
    pub insufficient: u64,
    /// `U`
    pub unknown_sku: u64,
    /// `L`
    pub unknown_location: u64,
    /// `D`
    pub duplicate_id: u64,
    /// `N`
    pub no_such: u64,
    /// `Z`
    pub invalid_quantity: u64,
    /// `P`
    pub not_permitted: u64,
    /// `R`
    pub rate_limited: u64,
    /// Any other letter.
    pub other: u64,
}

impl ReasonCounts {
    pub(crate) fn add(&mut self, reason: u8) {
        *match reason {
            reject_reason::INSUFFICIENT => &mut self.insufficient,
            reject_reason::UNKNOWN_SKU => &mut self.unknown_sku,
            reject_reason::UNKNOWN_LOCATION => &mut self.unknown_location,
            reject_reason::DUPLICATE_ID => &mut self.duplicate_id,
            reject_reason::NO_SUCH => &mut self.no_such,
            reject_reason::INVALID_QUANTITY => &mut self.invalid_quantity,
            reject_reason::NOT_PERMITTED => &mut self.not_permitted,
            reject_reason::RATE_LIMITED => &mut self.rate_limited,
            _ => &mut self.other,
        } += 1;
    }

    pub fn total(&self) -> u64 {
        self.insufficient
            + self.unknown_sku
            + self.unknown_location
            + self.duplicate_id
            + self.no_such
            + self.invalid_quantity
            + self.not_permitted
            + self.rate_limited
            + self.other
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &ReasonCounts) {
        self.insufficient += other.insufficient;
        self.unknown_sku += other.unknown_sku;
        self.unknown_location += other.unknown_location;
        self.duplicate_id += other.duplicate_id;
        self.no_such += other.no_such;
        self.invalid_quantity += other.invalid_quantity;
        self.not_permitted += other.not_permitted;
        self.rate_limited += other.rate_limited;
        self.other += other.other;
    }

    /// `(letter, count)` for every reason counted at least once.
    pub fn nonzero(&self) -> impl Iterator<Item = (char, u64)> {
        [
            ('I', self.insufficient),
            ('U', self.unknown_sku),
            ('L', self.unknown_location),
            ('D', self.duplicate_id),
            ('N', self.no_such),
            ('Z', self.invalid_quantity),
            ('P', self.not_permitted),
            ('R', self.rate_limited),
            ('?', self.other),
        ]
        .into_iter()
        .filter(|&(_, n)| n > 0)
    }
}

/// A till's counters. Plain integers, updated by the owning thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PosStats {
    /// Commands sent, by kind.
    pub sent: KindCounts,
    /// Commands that got their outcome (each exactly once).
    pub outcomes: u64,
    /// Orders filled (`D(O)`).
    pub filled: u64,
    /// Modifies and cancels accepted.
    pub modified: u64,
    pub cancelled: u64,
    /// Reservations accepted, holds confirmed, released.
    pub holds_placed: u64,
    pub holds_confirmed: u64,
    pub holds_released: u64,
    /// Our open holds the warehouse expired.
    pub holds_expired: u64,
    /// Commands the warehouse rejected (`J`), and why.
    pub rejected: u64,
    pub rejects: ReasonCounts,
    /// Commands the gateway refused (`j`), and why.
    pub gateway_rejected: u64,
    pub gateway_rejects: ReasonCounts,
    /// Commands not sent because the replica showed they would fail, and
    /// the reason they would have been rejected with.
    pub skipped_would_fail: u64,
    pub skipped: ReasonCounts,
    /// Net units this till took from stock: orders filled and holds
    /// confirmed, less what modifies and cancels gave back.
    pub units_sold: i64,
    /// Commands awaiting their outcome now.
    pub in_flight: u64,
    /// Times a send waited for the in-flight limit or the client's window.
    pub full: u64,
    /// Acks received, and acks the gateway could no longer replay.
    pub acks: u64,
    pub acks_unavailable: u64,
    /// Outcome events for a command of ours already answered: 0 unless the
    /// authority misbehaves.
    pub duplicate_outcomes: u64,
    /// Own open orders or holds not tracked because the table was full.
    pub open_orders_untracked: u64,
    pub open_holds_untracked: u64,
}

impl PosStats {
    /// Adds `other`'s counts to these (the demo's total over its tills).
    pub fn merge(&mut self, other: &PosStats) {
        self.sent.merge(&other.sent);
        self.outcomes += other.outcomes;
        self.filled += other.filled;
        self.modified += other.modified;
        self.cancelled += other.cancelled;
        self.holds_placed += other.holds_placed;
        self.holds_confirmed += other.holds_confirmed;
        self.holds_released += other.holds_released;
        self.holds_expired += other.holds_expired;
        self.rejected += other.rejected;
        self.rejects.merge(&other.rejects);
        self.gateway_rejected += other.gateway_rejected;
        self.gateway_rejects.merge(&other.gateway_rejects);
        self.skipped_would_fail += other.skipped_would_fail;
        self.skipped.merge(&other.skipped);
        self.units_sold += other.units_sold;
        self.in_flight += other.in_flight;
        self.full += other.full;
        self.acks += other.acks;
        self.acks_unavailable += other.acks_unavailable;
        self.duplicate_outcomes += other.duplicate_outcomes;
        self.open_orders_untracked += other.open_orders_untracked;
        self.open_holds_untracked += other.open_holds_untracked;
    }
}

/// A summary of a latency histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct RttSummary {
    pub count: u64,
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
    pub rtt_p999_us: f64,
    pub rtt_max_us: f64,
}

impl RttSummary {
    pub fn of(histogram: &Histogram<u64>) -> RttSummary {
        if histogram.is_empty() {
            return RttSummary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        RttSummary {
            count: histogram.len(),
            rtt_p50_us: us(histogram.value_at_quantile(0.50)),
            rtt_p99_us: us(histogram.value_at_quantile(0.99)),
            rtt_p999_us: us(histogram.value_at_quantile(0.999)),
            rtt_max_us: us(histogram.max()),
        }
    }
}

/// A latency histogram in nanoseconds, 1 ns..=[`RTT_NS_MAX`], 3 significant
/// digits (what [`Pos::histogram`](crate::Pos::histogram) holds; merge tills' with `add`).
pub fn rtt_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, RTT_NS_MAX, 3).expect("valid bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_counts_name_their_letters() {
        let mut counts = ReasonCounts::default();
        counts.add(b'I');
        counts.add(b'I');
        counts.add(b'N');
        counts.add(b'q');
        assert_eq!(counts.total(), 4);
        let letters: Vec<(char, u64)> = counts.nonzero().collect();
        assert_eq!(letters, [('I', 2), ('N', 1), ('?', 1)]);
    }
}
