use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::auth::*;
use tally_client::consumer::ConsumerConfig;
use tally_client::replica::ReplicaLimits;

// ---------------------------------------------------------------------------
// Configuration.

/// Sizes of the monitor's own indexes (next to the replica's
/// [`ReplicaLimits`]). Every table is allocated once, at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexLimits {
    /// Events kept per cell (the newest).
    pub history_depth: u32,
    /// Cells with a history.
    pub history_cells_max: u32,
    /// Orders with a timeline.
    pub orders_max: u32,
    /// Holds with a timeline.
    pub holds_max: u32,
    /// Messages kept per order or hold timeline (the newest). An order that
    /// is placed, modified and cancelled has 6.
    pub timeline_events_max: u32,
    /// Decisions and notifications `/v1/events` can replay (the newest).
    pub events_max: u32,
}

impl IndexLimits {
    /// 16 events × 8 192 cells, 16 384 orders and 8 192 holds with 8
    /// messages each: about 23 MiB; 65 536 recent events for `/v1/events`
    /// (about 300 bytes each).
    pub const DEFAULT: IndexLimits = IndexLimits {
        history_depth: 16,
        history_cells_max: 8192,
        orders_max: 16_384,
        holds_max: 8192,
        timeline_events_max: 8,
        events_max: 65_536,
    };

    /// Checks every limit is usable.
    pub fn validate(&self) -> Result<(), &'static str> {
        const MAX: u32 = 1 << 24;
        let all = [
            self.history_depth,
            self.history_cells_max,
            self.orders_max,
            self.holds_max,
            self.timeline_events_max,
            self.events_max,
        ];
        if all.iter().any(|&n| n == 0 || n > MAX) {
            return Err("every index limit must be in 1..=16777216");
        }
        if u64::from(self.history_depth) * u64::from(self.history_cells_max) > 1 << 26 {
            return Err("history_depth × history_cells_max must be at most 2^26 events");
        }
        Ok(())
    }
}

impl Default for IndexLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Everything [`Monitor::start`](crate::Monitor::start) needs; [`MonitorConfig::new`] fills in
/// defaults.
#[derive(Clone, Debug)]
pub struct MonitorConfig {
    /// HTTP listen address (port 0: any free port, see
    /// [`MonitorHandle::local_addr`](crate::MonitorHandle::local_addr)).
    pub listen: SocketAddr,
    /// The stream to follow. `start_seq` 1 (the default) rebuilds the whole
    /// session from the replay feed, including the authority's snapshot
    /// broadcast.
    pub consumer: ConsumerConfig,
    /// Table sizes of the replica.
    pub limits: ReplicaLimits,
    /// Table sizes of the monitor's indexes.
    pub indexes: IndexLimits,
    /// HTTP worker threads.
    pub http_workers: usize,
    /// `/ready` answers 200 only while the lag is at most this.
    pub ready_lag_max: u64,
    /// The stream thread publishes liveness at least this often while the
    /// stream is quiet.
    pub publish_interval: Duration,
    /// Messages the staging buffer holds before it must grow (growth is
    /// counted; one consumer poll rarely delivers more).
    pub staging_messages: usize,
    /// Who may read ([`HttpAuthConfig::deny_all`] by default: only
    /// `/health` and `/ready` answer until clients are configured).
    pub auth: HttpAuthConfig,
    /// Bounds of the HTTP side.
    pub http: HttpLimits,
    /// The `/v1` writes, when enabled (they need the appliance's
    /// configuration and a state directory for idempotency keys).
    pub writes: Option<crate::WritesConfig>,
}

/// Bounds of the HTTP side: what one client can make the service hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Open connections; the listener stops accepting at this many (the
    /// kernel's backlog queues the rest).
    pub connections_max: usize,
    /// Open connections from one address; one more is closed at accept, so
    /// one source cannot hold every slot.
    pub connections_per_source_max: usize,
    /// Largest request body read; a larger one is refused with 413.
    pub body_bytes_max: usize,
    /// Open `/v1/events` streams; one more is refused with 503.
    pub sse_clients_max: usize,
    /// A cell whose available falls to this or below (from above) makes a
    /// `low_stock` event on `/v1/events`.
    pub low_stock_at: u32,
}

impl HttpLimits {
    /// 1 024 connections (256 from one address), 16 KiB bodies, 256 event streams, low stock at 5.
    pub const DEFAULT: HttpLimits = HttpLimits {
        connections_max: 1024,
        connections_per_source_max: 256,
        body_bytes_max: 16 * 1024,
        sse_clients_max: 256,
        low_stock_at: 5,
    };
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl MonitorConfig {
    /// Defaults: the replica's [`ReplicaLimits::small`], [`IndexLimits::DEFAULT`],
    /// 2 HTTP workers, ready within 1 000 messages of the newest, liveness
    /// published every 50 ms, 16 384 staged messages.
    pub fn new(listen: SocketAddr, consumer: ConsumerConfig) -> MonitorConfig {
        MonitorConfig {
            listen,
            consumer,
            limits: ReplicaLimits::small(),
            indexes: IndexLimits::DEFAULT,
            http_workers: 2,
            ready_lag_max: 1000,
            publish_interval: Duration::from_millis(50),
            staging_messages: 16_384,
            auth: HttpAuthConfig::deny_all(),
            http: HttpLimits::DEFAULT,
            writes: None,
        }
    }

    pub(crate) fn validate(&self) -> io::Result<()> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        self.limits
            .validate()
            .map_err(|e| invalid(format!("replica limits: {e}")))?;
        self.indexes
            .validate()
            .map_err(|e| invalid(format!("index limits: {e}")))?;
        if !(1..=64).contains(&self.http_workers) {
            return Err(invalid("http_workers must be 1..=64".into()));
        }
        if self.publish_interval.is_zero() || self.publish_interval > Duration::from_secs(1) {
            return Err(invalid("publish_interval must be within (0, 1 s]".into()));
        }
        if self.staging_messages == 0 {
            return Err(invalid("staging_messages must be at least 1".into()));
        }
        self.auth.validate().map_err(invalid)?;
        let http = &self.http;
        if !(1..=1 << 20).contains(&http.connections_max)
            || !(1..=http.connections_max).contains(&http.connections_per_source_max)
            || !(1024..=1 << 24).contains(&http.body_bytes_max)
            || !(1..=1 << 16).contains(&http.sse_clients_max)
        {
            return Err(invalid(
                "http limits: connections_max 1..=2^20, connections_per_source_max 1..=connections_max, body_bytes_max 1 KiB..=16 MiB, \
                 sse_clients_max 1..=65536"
                    .into(),
            ));
        }
        Ok(())
    }
}
