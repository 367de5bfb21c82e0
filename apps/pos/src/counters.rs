//! A till's counters in a counter file, for `tally-stat`.

use std::io;

use tally_client::client::ClientCounters;
use tally_client::consumer::ConsumerCounters;
use tally_runtime::counters::{Counter, CounterFile};

use crate::core::wall_clock_ns;
use crate::Pos;

/// A till's counters in a process's shared-memory counter file, for
/// `tally-stat`: the till's own (`pos.*`), its consumer's (`consumer.*`) and
/// its client's (`client.*`). Create it at start-up, then
/// [`publish`](Self::publish) from the till's thread now and then (a few
/// dozen relaxed stores).
pub struct PosCounterFile {
    file: CounterFile,
    pos: Vec<Counter>,
    /// The caller's own counters, after the till's (the store node's).
    extra: Vec<Counter>,
    consumer: ConsumerCounters,
    client: ClientCounters,
}

impl PosCounterFile {
    /// The till's own counter names, in the order `publish` writes them.
    /// `pos.commands_active` (awaiting their outcome) is a gauge.
    pub const NAMES: &'static [&'static str] = &[
        "pos.commands_sent",
        "pos.outcomes",
        "pos.filled",
        "pos.rejected",
        "pos.gateway_rejected",
        "pos.skipped_would_fail",
        "pos.holds_placed",
        "pos.holds_expired",
        "pos.commands_active",
    ];

    /// Creates the counter file at `path` (replacing one left by an earlier
    /// run), owned by `process_name`.
    pub fn create(path: &std::path::Path, process_name: &str) -> io::Result<PosCounterFile> {
        Self::create_with(Some(path), process_name, &[])
    }

    /// As [`create`](Self::create), with `extra` counters after the till's
    /// ([`extra`](Self::extra) hands them out); `None` keeps the counters
    /// in memory (metrics without a file).
    pub fn create_with(
        path: Option<&std::path::Path>,
        process_name: &str,
        extra: &[&str],
    ) -> io::Result<PosCounterFile> {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .chain(ConsumerCounters::NAMES)
            .chain(ClientCounters::NAMES)
            .chain(extra)
            .copied()
            .collect();
        let file = match path {
            Some(path) => CounterFile::create(path, process_name, &names)?,
            None => CounterFile::in_memory(&names),
        };
        let pos = (0..Self::NAMES.len()).map(|i| file.counter(i)).collect();
        let consumer = ConsumerCounters::from_file(&file, Self::NAMES.len());
        let own = Self::NAMES.len() + ConsumerCounters::NAMES.len();
        let client = ClientCounters::from_file(&file, own);
        let first_extra = own + ClientCounters::NAMES.len();
        let extra = file.counters_at(first_extra, extra);
        Ok(PosCounterFile {
            file,
            pos,
            extra,
            consumer,
            client,
        })
    }

    /// The `extra` counters of [`create_with`](Self::create_with), in order.
    pub fn extra(&self) -> &[Counter] {
        &self.extra
    }

    /// The file's counters (for metrics).
    pub fn file(&self) -> &CounterFile {
        &self.file
    }

    /// Writes every counter of `pos` and the heartbeat.
    pub fn publish(&self, pos: &Pos) {
        let stats = pos.stats();
        let values = [
            stats.sent.total(),
            stats.outcomes,
            stats.filled,
            stats.rejected,
            stats.gateway_rejected,
            stats.skipped_would_fail,
            stats.holds_placed,
            stats.holds_expired,
            stats.in_flight,
        ];
        const _: () = assert!(PosCounterFile::NAMES.len() == 9);
        for (counter, value) in self.pos.iter().zip(values) {
            counter.set(value);
        }
        self.consumer.publish(pos.consumer());
        self.client.publish(pos.client());
        self.file.set_heartbeat(wall_clock_ns());
    }
}
