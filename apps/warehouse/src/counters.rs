//! The warehouse's counters in a counter file, for `tally-stat` and its
//! Prometheus metrics (`tally-warehouse --metrics ADDR`): its decisions
//! (`warehouse.*`), its stream consumer's (`consumer.*`) and its order-entry
//! client's (`client.*`). Published from the warehouse's thread about once
//! a second ([`WarehouseApp::run_with`]).

use std::io;
use std::path::Path;

use tally_client::client::ClientCounters;
use tally_client::consumer::ConsumerCounters;
use tally_runtime::counters::{Counter, CounterFile};

use crate::app::WarehouseApp;

/// The warehouse's counter file.
pub struct WarehouseCounterFile {
    file: CounterFile,
    own: Vec<Counter>,
    consumer: ConsumerCounters,
    client: ClientCounters,
}

impl WarehouseCounterFile {
    /// The warehouse's own counter names, in the order `publish` writes
    /// them. `warehouse.in_flight_active` (decisions not yet back from the
    /// stream) is a gauge.
    pub const NAMES: &'static [&'static str] = &[
        "warehouse.decided",
        "warehouse.accepted",
        "warehouse.rejected",
        "warehouse.rejected_insufficient",
        "warehouse.rejected_unknown_sku",
        "warehouse.rejected_no_such",
        "warehouse.rejected_version_conflict",
        "warehouse.holds_expired",
        "warehouse.holds_full",
        "warehouse.cells_full",
        "warehouse.own_events_rejected",
        "warehouse.events_sent",
        "warehouse.snapshots_saved",
        "warehouse.in_flight_active",
    ];

    /// Creates the counter file at `path` (or in memory, for metrics
    /// alone), owned by `process_name`.
    pub fn create(path: Option<&Path>, process_name: &str) -> io::Result<WarehouseCounterFile> {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .chain(ConsumerCounters::NAMES)
            .chain(ClientCounters::NAMES)
            .copied()
            .collect();
        let file = match path {
            Some(path) => CounterFile::create(path, process_name, &names)?,
            None => CounterFile::in_memory(&names),
        };
        let own = file.counters_at(0, Self::NAMES);
        let consumer = ConsumerCounters::from_file(&file, Self::NAMES.len());
        let client =
            ClientCounters::from_file(&file, Self::NAMES.len() + ConsumerCounters::NAMES.len());
        Ok(WarehouseCounterFile {
            file,
            own,
            consumer,
            client,
        })
    }

    /// The file's counters (for metrics).
    pub fn file(&self) -> &CounterFile {
        &self.file
    }

    /// Writes every counter of `app` and the heartbeat.
    pub fn publish(&self, app: &WarehouseApp) {
        let engine = app.engine();
        let c = engine.counters();
        let stats = app.stats();
        let values = [
            c.decided,
            c.accepted,
            c.rejected(),
            c.insufficient,
            c.unknown_sku,
            c.no_such,
            c.version_conflict,
            c.expired,
            c.holds_full,
            c.cells_full,
            c.own_events_rejected,
            stats.events_sent,
            stats.snapshots_saved,
            engine.in_flight() as u64,
        ];
        const _: () = assert!(WarehouseCounterFile::NAMES.len() == 14);
        for (counter, value) in self.own.iter().zip(values) {
            counter.set(value);
        }
        self.consumer.publish(app.consumer());
        self.client.publish(app.client());
        self.file.set_heartbeat(tally_runtime::clock::wall_ns());
    }
}
