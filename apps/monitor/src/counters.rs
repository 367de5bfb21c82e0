//! The HTTP service's counters in a counter file, for `tally-stat` (the
//! same figures `/metrics` serves, docs/metrics.md): its replica's position
//! and the stream consumer's recoveries, the answers it gave. Created at
//! start-up, published about once a second from the supervising thread
//! (a few relaxed stores; the model is read under its lock once).

use std::io;
use std::path::Path;

use tally_runtime::counters::CounterFile;

use crate::server::MonitorHandle;

tally_runtime::counter_set! {
    /// `monitor.*`: see the module documentation.
    pub struct MonitorCounters, prefix "monitor.";
    /// Gauge: the seq the replica reflects, plus one (tally-stat's seq).
    next_seq,
    /// Gauge: messages seen on the stream and not applied yet.
    lag,
    /// Gauge: 1 while `/ready` answers 200.
    ready_active,
    /// Gauge: 1 while the stream is stale.
    stale_active,
    messages_applied,
    datagrams,
    gaps_detected,
    re_requests_sent,
    recovered_by_retransmit,
    recovered_by_replay,
    replay_recoveries,
    kernel_drops,
    /// Answers given, any status.
    http_answers,
    /// Answers 4xx and 5xx.
    http_errors,
}

/// A counter file with [`MonitorCounters`].
pub struct MonitorCounterFile {
    file: CounterFile,
    counters: MonitorCounters,
}

impl MonitorCounterFile {
    /// At `path` (replacing one an earlier run left) or, `None`, in memory
    /// only; owned by `process_name`.
    pub fn create(path: Option<&Path>, process_name: &str) -> io::Result<MonitorCounterFile> {
        let file = match path {
            Some(path) => CounterFile::create(path, process_name, MonitorCounters::NAMES)?,
            None => CounterFile::in_memory(MonitorCounters::NAMES),
        };
        let counters = MonitorCounters::from_file(&file, 0);
        Ok(MonitorCounterFile { file, counters })
    }

    /// Writes every counter of `monitor` and the heartbeat.
    pub fn publish(&self, monitor: &MonitorHandle) {
        let status = monitor.status();
        let c = &self.counters;
        let stats = status.consumer;
        c.next_seq.set(status.freshness.seq + 1);
        c.lag.set(status.freshness.lag);
        c.ready_active.set(u64::from(status.ready));
        c.stale_active.set(u64::from(status.freshness.stale));
        c.messages_applied.set(status.messages);
        c.datagrams.set(stats.datagrams);
        c.gaps_detected.set(stats.gaps_detected);
        c.re_requests_sent.set(stats.re_requests_sent);
        c.recovered_by_retransmit.set(stats.recovered_by_retransmit);
        c.recovered_by_replay.set(stats.recovered_by_replay);
        c.replay_recoveries.set(stats.replay_recoveries());
        c.kernel_drops.set(stats.kernel_drops);
        let (answers, errors) = monitor.http_answers();
        c.http_answers.set(answers);
        c.http_errors.set(errors);
        self.file.set_heartbeat(tally_runtime::clock::wall_ns());
    }
}
