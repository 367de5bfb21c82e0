use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use tally_wire::Message;

use crate::config::*;
use crate::eventlog::*;
use crate::indexes::*;
use tally_client::consumer::{monotonic_ns, ConsumerStats, RecoveryMode, StreamConsumer};
use tally_client::replica::{Applied, LocationSet, Replica, ReplicaLimits};

// ---------------------------------------------------------------------------
// The read model.

/// What the stream thread last recorded about the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Liveness {
    /// Last seq the consumer delivered (the replica applied everything up
    /// to it; undecodable messages are skipped but take their number).
    pub delivered_seq: u64,
    /// Newest seq known to exist on the stream.
    pub newest_seq: u64,
    /// When data or a heartbeat last arrived ([`monotonic_ns`]).
    pub last_activity_ns: u64,
    /// The stream is stale after this long without data or a heartbeat.
    pub stale_timeout_ns: u64,
    /// Multicast with re-requests, or the replay feed.
    pub mode: RecoveryMode,
    /// Replaying, filling a gap or waiting for re-requests.
    pub recovering: bool,
    /// The session ended (end-of-session seen and everything delivered).
    pub ended: bool,
    /// The stream's session name (blank until known).
    pub session: String,
    /// The consumer's counters.
    pub consumer: ConsumerStats,
    /// Batches the stream thread published.
    pub batches: u64,
    /// Why the stream thread stopped, if it failed.
    pub failed: Option<String>,
}

impl Liveness {
    pub(crate) fn new(stale_timeout_ns: u64, now_ns: u64) -> Liveness {
        Liveness {
            delivered_seq: 0,
            newest_seq: 0,
            last_activity_ns: now_ns,
            stale_timeout_ns,
            mode: RecoveryMode::Live,
            recovering: true,
            ended: false,
            session: String::new(),
            consumer: ConsumerStats::default(),
            batches: 0,
            failed: None,
        }
    }

    pub(crate) fn refresh(&mut self, consumer: &StreamConsumer) {
        self.delivered_seq = consumer.delivered_seq();
        self.newest_seq = consumer.newest_seq();
        self.last_activity_ns = consumer.last_activity_ns();
        self.mode = consumer.mode();
        self.recovering = consumer.is_recovering();
        self.ended = consumer.is_ended();
        let session = consumer.session();
        if self.session.as_bytes() != session.as_str().trim_end().as_bytes() {
            self.session = session.as_str().trim_end().to_string();
        }
        self.consumer = consumer.stats();
        self.batches += 1;
    }
}

/// The three figures every answer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Freshness {
    /// The stream sequence number the answer reflects.
    pub seq: u64,
    /// Newest seq seen on the stream.
    pub newest_seq: u64,
    /// `newest_seq − seq`.
    pub lag: u64,
    /// No data or heartbeat within the stale timeout, or the stream thread
    /// failed.
    pub stale: bool,
}

/// The replica, the indexes and the liveness figures: everything an answer
/// is made from. [`Monitor::start`](crate::Monitor::start) keeps one behind a lock; tests and tools
/// can also drive one directly with [`ReadModel::apply`] and answer with
/// [`ReadModel::respond`].
#[derive(Debug)]
pub struct ReadModel {
    pub(crate) replica: Replica,
    pub(crate) indexes: Indexes,
    pub(crate) live: Liveness,
    pub(crate) ready_lag_max: u64,
    /// Messages applied to the replica, ever (never reset): what a cached
    /// digest was computed at.
    pub(crate) applied: u64,
    /// The last full and subset digests, valid while `applied` has not
    /// moved (the HTTP workers share it under the read lock).
    pub(crate) digests: Mutex<DigestCache>,
    /// Recent decisions and notifications, for `/v1/events`.
    pub(crate) events: EventLog,
    /// See [`Self::set_low_stock_at`].
    pub(crate) low_stock_at: u32,
}

/// `/digest` answers computed since the replica last changed: the full
/// digest and the last subset asked for.
#[derive(Debug, Default)]
pub(crate) struct DigestCache {
    /// (applied, digest).
    pub(crate) full: Option<(u64, u64)>,
    /// (applied, location ids ascending, digest).
    pub(crate) subset: Option<(u64, Vec<u16>, u64)>,
    /// Digests computed (cache misses), for tests and `/health`.
    pub(crate) computed: u64,
}

impl ReadModel {
    /// A model with every table allocated: the replica to `limits`, the
    /// indexes to `indexes`. `stale_timeout_ns` is the consumer's.
    ///
    /// # Panics
    /// When a limit is invalid ([`ReplicaLimits::validate`],
    /// [`IndexLimits::validate`]).
    pub fn new(
        limits: ReplicaLimits,
        indexes: IndexLimits,
        stale_timeout_ns: u64,
        ready_lag_max: u64,
    ) -> ReadModel {
        if let Err(e) = indexes.validate() {
            panic!("invalid index limits {indexes:?}: {e}");
        }
        ReadModel {
            replica: Replica::new(limits),
            indexes: Indexes::new(&indexes),
            live: Liveness::new(stale_timeout_ns, monotonic_ns()),
            ready_lag_max,
            applied: 0,
            digests: Mutex::new(DigestCache::default()),
            events: EventLog::new(indexes.events_max as usize),
            low_stock_at: crate::config::HttpLimits::DEFAULT.low_stock_at,
        }
    }

    /// Applies the stream message at `seq` to the replica, then to the
    /// indexes. Returns false (and changes nothing) for a seq already
    /// applied.
    pub fn apply(&mut self, seq: u64, message: &Message) -> bool {
        let touched = Touched::before(message, &self.replica);
        if self.replica.apply(seq, message) == Applied::Ignored {
            return false;
        }
        self.applied += 1;
        self.indexes.on_message(seq, message, &self.replica);
        self.events
            .record(seq, message, &self.replica, touched, self.low_stock_at);
        true
    }

    /// `(seq, digest)`: the replica's [`Replica::digest`] and the seq it
    /// reflects, computed once per change of the replica (O(cells)) and
    /// cached until the next message is applied.
    pub fn digest(&self) -> (u64, u64) {
        let mut cache = self.digests.lock().unwrap_or_else(PoisonError::into_inner);
        let digest = match cache.full {
            Some((applied, digest)) if applied == self.applied => digest,
            _ => {
                let digest = self.replica.digest();
                cache.full = Some((self.applied, digest));
                cache.computed += 1;
                digest
            }
        };
        (self.replica.last_seq(), digest)
    }

    /// `(seq, digest)` of the part of the state a store node keeping
    /// `locations` holds ([`Replica::digest_of`]), cached like
    /// [`Self::digest`] (the last set asked for).
    pub fn digest_of(&self, locations: &[u16]) -> (u64, u64) {
        let mut ids = locations.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut cache = self.digests.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((applied, cached, digest)) = &cache.subset {
            if *applied == self.applied && *cached == ids {
                return (self.replica.last_seq(), *digest);
            }
        }
        let digest = self.replica.digest_of(&LocationSet::of(&ids));
        cache.subset = Some((self.applied, ids, digest));
        cache.computed += 1;
        (self.replica.last_seq(), digest)
    }

    /// Digests computed so far ([`Self::digest`] and [`Self::digest_of`]
    /// cache misses).
    pub fn digests_computed(&self) -> u64 {
        self.digests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .computed
    }

    /// Records what the consumer says about the stream (what the stream
    /// thread does after every batch). For tools and tests that drive a
    /// model with their own consumer.
    pub fn refresh_liveness(&mut self, consumer: &StreamConsumer) {
        self.live.refresh(consumer);
    }

    /// Sets the liveness figures directly (tests).
    pub fn set_liveness(&mut self, live: Liveness) {
        self.live = live;
    }

    /// A cell whose available falls to `units` or below makes a
    /// `low_stock` event (default 5).
    pub fn set_low_stock_at(&mut self, units: u32) {
        self.low_stock_at = units;
    }

    /// The recent decisions and notifications (`/v1/events`).
    pub(crate) fn events(&self) -> &EventLog {
        &self.events
    }

    /// The stream moved to the next session: this model becomes `fresh`
    /// (an empty replica the new session's broadcast rebuilds), keeping
    /// the recent events, whose ids go on growing (`/v1/events` clients
    /// resume across the rollover).
    pub fn start_next_session(&mut self, mut fresh: ReadModel) {
        let ended_last_seq = self.replica.last_seq();
        std::mem::swap(&mut fresh.events, &mut self.events);
        fresh.events.next_session(ended_last_seq);
        *self = fresh;
    }

    pub(crate) fn set_staging_growths(&mut self, growths: u64) {
        self.indexes.counters.staging_growths = growths;
    }

    pub(crate) fn set_failed(&mut self, error: String) {
        self.live.failed = Some(error);
    }

    /// The replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// What the stream thread last recorded.
    pub fn liveness(&self) -> &Liveness {
        &self.live
    }

    /// What the indexes dropped.
    pub fn index_counters(&self) -> IndexCounters {
        self.indexes.counters
    }

    /// Bytes of the replica's and the indexes' tables and the event ring.
    pub fn memory_bytes(&self) -> usize {
        self.replica.memory_bytes() + self.indexes.memory_bytes() + self.events.memory_bytes()
    }

    /// seq, lag and staleness at `now_ns` ([`monotonic_ns`]).
    pub fn freshness(&self, now_ns: u64) -> Freshness {
        let seq = self.replica.last_seq().max(self.live.delivered_seq);
        let newest_seq = self.live.newest_seq.max(seq);
        let silent_ns = now_ns.saturating_sub(self.live.last_activity_ns);
        Freshness {
            seq,
            newest_seq,
            lag: newest_seq - seq,
            stale: self.live.failed.is_some() || silent_ns > self.live.stale_timeout_ns,
        }
    }

    /// `Ok` when `/ready` answers 200: the stream thread runs, the stream is
    /// not stale, the authority's snapshot broadcast (`S(W)`) was applied
    /// and the lag is at most `ready_lag_max`. Otherwise why not.
    pub fn readiness(&self, now_ns: u64) -> Result<(), String> {
        let fresh = self.freshness(now_ns);
        if let Some(error) = &self.live.failed {
            return Err(format!("the stream consumer failed: {error}"));
        }
        if fresh.stale {
            return Err(format!(
                "the stream is stale: nothing heard for {} ms (sequencer stopped or link cut)",
                now_ns.saturating_sub(self.live.last_activity_ns) / 1_000_000
            ));
        }
        if let Some(limit) = self.replica.limit_met() {
            return Err(format!(
                "limit met: {limit}; the replica holds less than the stream"
            ));
        }
        if self.replica.authority_online_seq() == 0 {
            return Err("waiting for the authority's snapshot broadcast (S W)".to_string());
        }
        if fresh.lag > self.ready_lag_max {
            return Err(format!(
                "catching up: {} messages behind the stream (ready at {} or fewer)",
                fresh.lag, self.ready_lag_max
            ));
        }
        Ok(())
    }

    /// Whether the replica has caught up with the stream: the stream thread
    /// published at least once, nothing is being recovered, the lag is at
    /// most `ready_lag_max`. (Unlike [`Self::readiness`], it does not wait
    /// for the authority.)
    pub fn caught_up(&self, now_ns: u64) -> bool {
        self.live.batches > 0
            && !self.live.recovering
            && self.freshness(now_ns).lag <= self.ready_lag_max
    }
}
