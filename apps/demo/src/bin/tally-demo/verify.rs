//! The load run's verification: every replica's digest equals the
//! warehouse's at the final seq, nothing was oversold, every command got its
//! outcome; said as text or as one JSON object.

use hdrhistogram::Histogram;
use tally_pos::{rtt_histogram, Pos, PosStats};
use tally_warehouse::app::WarehouseApp;

use crate::run::User;
use crate::tap::Tap;
use crate::tills::rtt_quantile_us;
use crate::Cli;

/// Where everything stands once the run stopped and caught up.
pub(crate) struct Finish<'a> {
    pub(crate) final_seq: u64,
    pub(crate) warehouse: &'a WarehouseApp,
    pub(crate) tap: &'a Tap,
    /// The HTTP service's last seq, digest and oversold units.
    pub(crate) monitor: (u64, u64, u64),
    pub(crate) tills: &'a [User],
    /// Each till once it drained, and whether every command got its outcome.
    pub(crate) tills_done: &'a [(Pos, bool)],
    /// Commands the back office sent.
    pub(crate) ops_sent: u64,
}

/// A replica's name, last seq, digest and oversold units.
type ReplicaRow = (String, u64, u64, u64);

/// What the verification found.
pub(crate) struct Verification {
    warehouse_seq: u64,
    warehouse_digest: u64,
    replicas: Vec<ReplicaRow>,
    rtt: Histogram<u64>,
    stats_total: PosStats,
    gaps_filled: u64,
    caught_up: u64,
    kernel_drops: u64,
    all_drained: bool,
    consistent: bool,
    oversold: u64,
}

impl Verification {
    /// Compares every replica with the warehouse and adds up the tills.
    pub(crate) fn of(finish: &Finish<'_>) -> Verification {
        let Finish {
            final_seq,
            warehouse,
            tap,
            monitor: (monitor_seq, monitor_digest, monitor_oversold),
            ..
        } = *finish;
        let mut verification = Verification {
            warehouse_seq: warehouse.engine().replica().last_seq(),
            warehouse_digest: warehouse.engine().digest(),
            replicas: vec![
                (
                    "tap".to_string(),
                    tap.replica.last_seq(),
                    tap.replica.digest(),
                    tap.replica.oversold(),
                ),
                (
                    "monitor".to_string(),
                    monitor_seq,
                    monitor_digest,
                    monitor_oversold,
                ),
            ],
            rtt: rtt_histogram(),
            stats_total: PosStats::default(),
            gaps_filled: 0,
            caught_up: 0,
            kernel_drops: 0,
            all_drained: true,
            consistent: false,
            oversold: 0,
        };
        for (user, (pos, drained)) in finish.tills.iter().zip(finish.tills_done) {
            verification.add_till(&user.name, pos, *drained);
        }
        let Verification {
            warehouse_seq,
            warehouse_digest,
            ..
        } = verification;
        verification.consistent = verification
            .replicas
            .iter()
            .all(|(_, seq, digest, _)| *seq == final_seq && *digest == warehouse_digest)
            && warehouse_seq == final_seq;
        verification.oversold = verification
            .replicas
            .iter()
            .map(|(_, _, _, oversold)| *oversold)
            .sum::<u64>()
            + warehouse.engine().replica().oversold();
        verification
    }

    /// A till's replica and its figures.
    fn add_till(&mut self, user: &str, pos: &Pos, drained: bool) {
        self.replicas.push((
            user.to_string(),
            pos.replica().last_seq(),
            pos.replica().digest(),
            pos.replica().oversold(),
        ));
        let _ = self.rtt.add(pos.histogram());
        let stats = pos.stats();
        let total = &mut self.stats_total;
        total.outcomes += stats.outcomes;
        total.filled += stats.filled;
        total.rejected += stats.rejected;
        total.gateway_rejected += stats.gateway_rejected;
        total.skipped_would_fail += stats.skipped_would_fail;
        total.units_sold += stats.units_sold;
        self.gaps_filled += pos.consumer().stats().recovered_by_retransmit;
        self.caught_up += pos.consumer().stats().recovered_by_replay;
        self.kernel_drops += pos.consumer().stats().kernel_drops;
        self.all_drained &= drained;
    }

    /// Says the verification (`--json`: one object on stdout); whether it
    /// passed.
    pub(crate) fn report(&self, cli: &Cli, finish: &Finish<'_>) -> bool {
        let ok = self.consistent && self.oversold == 0 && self.all_drained;
        if cli.json {
            println!("{}", self.summary_json(cli, finish));
        } else {
            self.print(finish);
            println!("tally-demo: {}", if ok { "OK" } else { "FAILED" });
        }
        ok
    }

    /// The `--json` summary.
    fn summary_json(&self, cli: &Cli, finish: &Finish<'_>) -> serde_json::Value {
        let tap = finish.tap;
        let warehouse = finish.warehouse;
        serde_json::json!({
            "final_seq": finish.final_seq,
            "messages": tap.messages,
            "orders": tap.count(b'O'),
            "accepted": warehouse.engine().counters().accepted,
            "rejected": warehouse.engine().counters().rejected(),
            "gateway_rejected": tap.count(b'j'),
            "fills": self.stats_total.filled,
            "holds": tap.count(b'H'),
            "hold_ends": tap.count(b'E'),
            "transfers": tap.count(b'T'),
            "back_office_commands": finish.ops_sent,
            "skipped_would_fail": self.stats_total.skipped_would_fail,
            "units_sold": self.stats_total.units_sold,
            "replicas": self.replicas.len() + 1,
            "replicas_consistent": self.consistent,
            "all_outcomes_received": self.all_drained,
            "oversold": self.oversold,
            "gaps_recovered": self.gaps_filled + self.caught_up,
            "gaps_filled": self.gaps_filled,
            "caught_up_by_replay": self.caught_up,
            "kernel_drops": self.kernel_drops,
            "loss_percent": cli.loss,
            "rtt_p50_us": rtt_quantile_us(&self.rtt, 0.5),
            "rtt_p99_us": rtt_quantile_us(&self.rtt, 0.99),
            "warehouse_digest": format!("{:016x}", self.warehouse_digest),
            "message_counts": tap.counts_json(),
        })
    }

    /// The text verification, a line per replica, without the verdict.
    fn print(&self, finish: &Finish<'_>) {
        let final_seq = finish.final_seq;
        let tap = finish.tap;
        let Verification {
            warehouse_seq,
            warehouse_digest,
            gaps_filled,
            caught_up,
            kernel_drops,
            consistent,
            oversold,
            all_drained,
            ..
        } = self;
        println!("tally-demo: verification at seq {final_seq}");
        println!("  warehouse     seq {warehouse_seq:>8}  digest {warehouse_digest:016x}");
        for (name, seq, digest, oversold) in &self.replicas {
            let mark = if *seq == final_seq && digest == warehouse_digest {
                "equal"
            } else {
                "DIFFERENT"
            };
            println!(
                "  {name:<12}  seq {seq:>8}  digest {digest:016x}  {mark}  oversold {oversold}"
            );
        }
        println!(
            "  messages {} (orders {}, fills {}, rejects {}, holds {}, transfers {})",
            tap.messages,
            tap.count(b'O'),
            self.stats_total.filled,
            finish.warehouse.engine().counters().rejected(),
            tap.count(b'H'),
            tap.count(b'T')
        );
        println!(
            "  gaps filled by re-request {gaps_filled}, caught up by replay {caught_up} (the tills join after the session start), kernel drops {kernel_drops}; order round trip p50 {:.0} us, p99 {:.0} us",
            rtt_quantile_us(&self.rtt, 0.5),
            rtt_quantile_us(&self.rtt, 0.99)
        );
        println!("  replicas consistent: {consistent}; oversold: {oversold}; every command answered: {all_drained}");
    }
}
