//! The warehouse application: the authority, wired to the appliance.
//!
//! It logs in to the gateway as the `authority` client, follows the stream
//! with a [`StreamConsumer`], lets the [`Warehouse`] engine decide every
//! command, and sends the engine's events back through its
//! [`OrderEntryClient`]. Everything runs on one thread ([`WarehouseApp::poll`]
//! is its duty cycle); the demo runs it in-process, `tally-warehouse` as a
//! process.
//!
//! Start-up, in order:
//! 1. log in; Login Accepted's next number starts this run's numbering;
//! 2. state: the snapshot file when there is one for this stream session,
//!    else empty — either way decisions are deferred;
//! 3. catch up: read the stream from the snapshot's seq + 1 (or from 1)
//!    until the consumer has delivered everything the stream has; commands
//!    answered by outcome events on the way are not decided again;
//! 4. a session that never had an authority (no `S(W)` on the stream) gets
//!    the initial inventory file and the session-start broadcast (`L`, `R`,
//!    `I`, `H`, `S(W)`), of any size: the engine produces its events lazily,
//!    only as many per cycle as the order-entry window has room for, while
//!    the loop keeps reading the stream (its own events coming back) and the
//!    acks; nothing is buffered beyond the window;
//! 5. decide what is still unanswered, in stream order (as soon as `S(W)` is
//!    handed to the client), then live.
//!
//! A state limit met on the way (a directory, hold or cell table the stream
//! overflows, an inventory file too big) stops the app with an error naming
//! the limit and the numbers; nothing panics on input.
//!
//! Snapshots are written when nothing of the warehouse's is in flight: on a
//! timer the engine pauses decisions, the loop keeps reading the stream until
//! its own events have all come back, saves, and resumes (deciding what
//! queued meanwhile). The same happens on shutdown.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tally_wire::MAX_MESSAGE_SIZE;

use crate::decide::{CatchUp, CatchUpError, EventSink, SessionStart, Warehouse};
use tally_client::client::{ClientConfig, ClientEvent, OrderEntryClient};
use tally_client::consumer::{monotonic_ns, ConsumerConfig, StreamConsumer};
use tally_client::replica::ReplicaLimits;

/// How the warehouse application is set up.
#[derive(Clone, Debug)]
pub struct WarehouseAppConfig {
    /// The stream (starting seq is chosen by the app).
    pub consumer: ConsumerConfig,
    /// The authority's order-entry login.
    pub client: ClientConfig,
    /// The authority's client id (its events' origin).
    pub own_origin: u16,
    /// Replica table sizes.
    pub limits: ReplicaLimits,
    /// Initial inventory (CSV: location, sku symbol, quantity) for a session
    /// that has none yet.
    pub inventory: Option<PathBuf>,
    /// Snapshot file: read at start when present, written periodically and
    /// on shutdown.
    pub snapshot: Option<PathBuf>,
    /// Time between snapshots; 0 = only on shutdown.
    pub snapshot_interval: Duration,
    /// How often holds are checked for expiry.
    pub expiry_check_interval: Duration,
    /// Longest wait to catch up with the stream at start.
    pub catch_up_timeout: Duration,
}

/// Events waiting for room in the client's window, at most.
const OUTBOX_EVENTS_MAX: usize = 1 << 18;

/// The engine's sink: events go to a bounded outbox, drained into the
/// client as its window allows.
struct Outbox {
    events: VecDeque<([u8; MAX_MESSAGE_SIZE], u8)>,
}

impl EventSink for Outbox {
    fn publish(&mut self, message: &[u8]) {
        let mut bytes = [0u8; MAX_MESSAGE_SIZE];
        bytes[..message.len()].copy_from_slice(message);
        assert!(
            self.events.len() < OUTBOX_EVENTS_MAX,
            "outbox room was checked"
        );
        self.events.push_back((bytes, message.len() as u8));
    }

    fn room(&self) -> usize {
        OUTBOX_EVENTS_MAX - self.events.len()
    }
}

/// The outbox seen through a smaller room: the session-start broadcast
/// produces only what the client's window can take this cycle.
struct Metered<'a> {
    outbox: &'a mut Outbox,
    room: usize,
}

impl EventSink for Metered<'_> {
    fn publish(&mut self, message: &[u8]) {
        self.room -= 1;
        self.outbox.publish(message);
    }

    fn room(&self) -> usize {
        self.room.min(self.outbox.room())
    }
}

/// A rate for the session-start broadcast (a token bucket kept below the
/// gateway's own, so none of its events is refused for rate).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BroadcastPacing {
    /// Events per second, at most.
    pub events_per_sec: f64,
    /// Events at once, at most.
    pub burst: f64,
}

impl BroadcastPacing {
    /// 90 % of the gateway's per-session `rate_limit_per_sec`, and half its
    /// `rate_burst`, of the appliance configuration.
    pub fn for_appliance(appliance: &tally_config::ApplianceConfig) -> BroadcastPacing {
        BroadcastPacing {
            events_per_sec: 0.9 * f64::from(appliance.gateway.rate_limit_per_sec),
            burst: (f64::from(appliance.gateway.rate_burst) / 2.0).max(1.0),
        }
    }
}

/// What the warehouse application reports.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct WarehouseAppStats {
    pub snapshots_saved: u64,
    pub events_sent: u64,
    pub rejected_acks: u64,
    /// The reason of the last refused event (`j` ack), 0 = none.
    pub last_reject_reason: u8,
    pub holds_expired: u64,
    /// Milliseconds the initial inventory file took to load (0: none).
    pub inventory_load_ms: u64,
    /// Events of this run's session-start broadcast (0: none) and the
    /// milliseconds until its `S(W)` was handed to the gateway.
    pub broadcast_events: u64,
    pub broadcast_handed_ms: u64,
    /// Milliseconds the last snapshot took to write.
    pub snapshot_save_ms: u64,
}

/// The running authority.
pub struct WarehouseApp {
    config: WarehouseAppConfig,
    engine: Warehouse,
    consumer: StreamConsumer,
    client: OrderEntryClient,
    outbox: Outbox,
    session: [u8; 10],
    pacing: Option<BroadcastPacing>,
    next_snapshot: Option<Instant>,
    snapshot_wanted: bool,
    next_expiry_check: Instant,
    stats: WarehouseAppStats,
    /// The seq of the appliance's `S(E)` once seen: the session is closing.
    closing_at: Option<u64>,
    /// `S(F)` was handed to the outbox: nothing more is decided.
    closed: bool,
    /// The state was carried over from the previous session's end.
    carried: bool,
}

mod rollover;

impl WarehouseApp {
    /// Logs in, restores or starts the state, catches up with the stream,
    /// broadcasts the session start if the session has none, and returns the
    /// app deciding live.
    pub fn start(config: WarehouseAppConfig) -> anyhow::Result<WarehouseApp> {
        Self::start_paced(config, None)
    }

    /// [`Self::start`], with the session-start broadcast paced to stay
    /// within the gateway's per-session rate limit: at most
    /// `events_per_sec` (and bursts of `burst`), taken from the appliance
    /// configuration's `[gateway] rate_limit_per_sec` and `rate_burst` (see
    /// [`BroadcastPacing::for_appliance`]). Without pacing a broadcast
    /// faster than that limit has events refused, and the warehouse stops.
    pub fn start_paced(
        config: WarehouseAppConfig,
        pacing: Option<BroadcastPacing>,
    ) -> anyhow::Result<WarehouseApp> {
        // A blank session logs in to the appliance's current one (the
        // configured session may have ended and rolled over since).
        let mut client_config = config.client.clone();
        client_config.session = tally_wire::mold::Session::BLANK;
        let client =
            OrderEntryClient::connect(client_config, Duration::from_secs(10)).map_err(|error| {
                anyhow::anyhow!("logging in as {}: {error}", config.client.username)
            })?;
        let session = *client.session().as_bytes();
        let (engine, start_seq, carried) = rollover::initial_state(&config, &session, &client)?;
        let mut consumer_config = config.consumer.clone();
        consumer_config.session = client.session();
        consumer_config.start_seq = start_seq;
        let consumer = StreamConsumer::new(&consumer_config).context("joining the stream")?;
        let mut app = WarehouseApp {
            next_snapshot: (!config.snapshot_interval.is_zero() && config.snapshot.is_some())
                .then(|| Instant::now() + config.snapshot_interval),
            next_expiry_check: Instant::now(),
            config,
            engine,
            consumer,
            client,
            outbox: Outbox {
                events: VecDeque::with_capacity(OUTBOX_EVENTS_MAX),
            },
            session,
            pacing,
            snapshot_wanted: false,
            stats: WarehouseAppStats::default(),
            closing_at: None,
            closed: false,
            carried,
        };
        if let Err(error) = app.catch_up() {
            if !error.is::<rollover::CarriedStateSuperseded>() {
                return Err(error);
            }
            // This session already had its broadcast: the stream alone
            // holds the whole state; rebuild from it.
            tracing::info!(
                "the session already holds a session-start broadcast; rebuilding from the stream"
            );
            app.rebuild_from_stream()?;
        }
        Ok(app)
    }

    fn catch_up(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.config.catch_up_timeout;
        // Read until everything the stream has is delivered (a heartbeat or
        // packet tells the newest seq).
        loop {
            self.poll_stream(monotonic_ns())?;
            self.poll_client(monotonic_ns());
            let consumer = &self.consumer;
            if consumer.newest_seq() > 0
                && consumer.delivered_seq() >= consumer.newest_seq()
                && !consumer.is_recovering()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "could not catch up with the stream in {:?} (delivered {}, newest {})",
                    self.config.catch_up_timeout,
                    consumer.delivered_seq(),
                    consumer.newest_seq()
                );
            }
            self.wait_stream(Duration::from_millis(20))?;
        }
        if self.carried && self.engine.replica().authority_online_seq() != 0 {
            return Err(rollover::CarriedStateSuperseded.into());
        }
        if self.engine.replica().authority_online_seq() == 0 {
            let empty = self.engine.replica().sku_count() == 0
                && self.engine.replica().location_count() == 0;
            if let Some(path) = self.config.inventory.as_ref().filter(|_| empty) {
                let loading = Instant::now();
                let summary = self
                    .engine
                    .load_inventory_file(path)
                    .with_context(|| format!("loading the inventory {}", path.display()))?;
                self.stats.inventory_load_ms = loading.elapsed().as_millis() as u64;
                tracing::info!(path = %path.display(), ?summary, elapsed_ms = self.stats.inventory_load_ms, "initial inventory loaded");
            }
            let started = Instant::now();
            let events = self.broadcast_session_start()?;
            self.stats.broadcast_events = events;
            self.stats.broadcast_handed_ms = started.elapsed().as_millis() as u64;
            tracing::info!(
                events,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "session start broadcast handed to the gateway"
            );
        }
        if let Some(limit) = self.engine.limit_met() {
            bail!("the stream does not fit this warehouse's state: {limit}");
        }
        // Decide what queued while catching up, once our previous run's
        // events are all back.
        loop {
            match self.engine.finish_catch_up(&mut self.outbox) {
                Ok(CatchUp::Done { decided }) => {
                    tracing::info!(
                        decided,
                        seq = self.consumer.delivered_seq(),
                        "warehouse live"
                    );
                    break;
                }
                Ok(CatchUp::More { .. }) => self.drain_outbox(),
                Err(CatchUpError::AwaitingOwnEvents { seen, expected }) => {
                    if Instant::now() > deadline {
                        bail!(
                            "the stream never carried the previous run's events {seen}..{expected}"
                        );
                    }
                    self.poll_stream(monotonic_ns())?;
                    self.poll_client(monotonic_ns());
                    self.wait_stream(Duration::from_millis(20))?;
                }
            }
        }
        self.drain_outbox();
        Ok(())
    }

    /// Streams the session-start broadcast: each cycle the engine produces
    /// only as many events as the client's window has room for, the loop
    /// reads the acks and the stream (its own events coming back, commands
    /// that queue meanwhile, deferred), so the broadcast has any size with
    /// at most a window's worth in flight. Stops with an error when the
    /// window makes no progress for `catch_up_timeout`.
    fn broadcast_session_start(&mut self) -> anyhow::Result<u64> {
        let mut broadcast: SessionStart = self.engine.begin_session_start();
        let mut progress_at = Instant::now();
        // Pacing: a token bucket, full at the start.
        let mut tokens = self.pacing.map_or(f64::INFINITY, |pacing| pacing.burst);
        let mut refilled_at = Instant::now();
        loop {
            if let Some(pacing) = self.pacing {
                let now = Instant::now();
                let earned = now.duration_since(refilled_at).as_secs_f64() * pacing.events_per_sec;
                tokens = (tokens + earned).min(pacing.burst);
                refilled_at = now;
            }
            let window_room = self
                .client
                .config()
                .window
                .saturating_sub(self.client.unacked() as usize);
            let room = window_room
                .saturating_sub(self.outbox.events.len())
                .min(tokens as usize);
            let mut sink = Metered {
                outbox: &mut self.outbox,
                room,
            };
            let before = broadcast.events();
            let done = self.engine.session_start_step(&mut broadcast, &mut sink);
            tokens -= (broadcast.events() - before) as f64;
            self.drain_outbox();
            let now_ns = monotonic_ns();
            let mut work = self.poll_client(now_ns);
            work += self.poll_stream(now_ns)?;
            if self.stats.rejected_acks > 0 {
                bail!(
                    "the gateway refused {} of the session-start broadcast's events (reason {}; \
                     R: faster than its per-session rate limit — start the warehouse paced to \
                     [gateway] rate_limit_per_sec and rate_burst, or raise them)",
                    self.stats.rejected_acks,
                    char::from(self.stats.last_reject_reason)
                );
            }
            if let Some(error) = self.client.closed() {
                bail!("the order-entry session closed during the session-start broadcast: {error}");
            }
            if done {
                return Ok(broadcast.events());
            }
            if broadcast.events() > before || work > 0 {
                progress_at = Instant::now();
            } else if progress_at.elapsed() > self.config.catch_up_timeout {
                bail!(
                    "the session-start broadcast made no progress for {:?} ({} events sent, \
                     {} awaiting acks)",
                    self.config.catch_up_timeout,
                    broadcast.events(),
                    self.client.unacked()
                );
            }
            if broadcast.events() == before {
                // The window is full or the bucket empty: wait for acks
                // (bounded), not spin.
                let stats = &mut self.stats;
                self.client.wait(Duration::from_millis(1), |event| {
                    if let ClientEvent::Ack(ack) = event {
                        if let Some(reason) = ack.reject {
                            stats.rejected_acks += 1;
                            stats.last_reject_reason = reason;
                        }
                    }
                });
            }
        }
    }

    /// One duty cycle: stream in, decisions out, acks, expiry, snapshots.
    pub fn poll(&mut self) -> anyhow::Result<usize> {
        let now_ns = monotonic_ns();
        let mut work = self.poll_stream(now_ns)?;
        work += self.poll_client(now_ns);
        if self.closing_at.is_some() && !self.closed {
            work += self.close_session()?;
        }
        if self.consumer.is_ended() {
            self.follow_next_session()?;
            return Ok(work + 1);
        }
        if let Some(limit) = self.engine.limit_met() {
            // Its state no longer holds what the stream carried: stop
            // rather than decide on it.
            bail!("a state limit was met: {limit}; raise it in [limits] and restart");
        }
        if self.stats.rejected_acks > 0 {
            // The engine applied an event the stream will never carry: its
            // state is ahead of every replica's. Stop; a restart rebuilds it
            // from the snapshot and the stream.
            bail!(
                "the gateway refused {} of the warehouse's events; its state is ahead of the \
                 stream, so it stops (restart it: it rebuilds from its snapshot and the stream)",
                self.stats.rejected_acks
            );
        }
        let now = Instant::now();
        if now >= self.next_expiry_check && self.engine.is_live() {
            self.next_expiry_check = now + self.config.expiry_check_interval;
            // Holds expire on the wall clock their expires_at is stamped in.
            let expired = self.engine.expire(wall_clock_ns(), &mut self.outbox);
            self.stats.holds_expired += expired as u64;
            work += expired;
        }
        if let Some(at) = self.next_snapshot.filter(|_| self.closing_at.is_none()) {
            if now >= at && !self.snapshot_wanted {
                self.engine.pause_decisions();
                self.snapshot_wanted = true;
            }
        }
        if self.snapshot_wanted && self.engine.in_flight() == 0 && self.outbox.events.is_empty() {
            self.save_snapshot()?;
            self.snapshot_wanted = false;
            self.next_snapshot = Some(now + self.config.snapshot_interval);
            self.resume()?;
        }
        self.drain_outbox();
        Ok(work)
    }

    /// Runs until `stop` is set, then saves a final snapshot.
    pub fn run(&mut self, stop: &std::sync::atomic::AtomicBool) -> anyhow::Result<()> {
        self.run_with(stop, |_| {})
    }

    /// [`run`](Self::run), calling `every_second` about once a second
    /// (counters, systemd status) and once more before the shutdown.
    pub fn run_with(
        &mut self,
        stop: &std::sync::atomic::AtomicBool,
        mut every_second: impl FnMut(&WarehouseApp),
    ) -> anyhow::Result<()> {
        let mut next_second = std::time::Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            if std::time::Instant::now() >= next_second {
                every_second(self);
                next_second = std::time::Instant::now() + Duration::from_secs(1);
            }
            if self.poll()? == 0 {
                self.wait_stream(Duration::from_millis(1))?;
            }
        }
        let result = self.shutdown();
        every_second(self);
        result
    }

    /// Stops deciding, waits (bounded) for its events to come back, and
    /// writes the snapshot.
    pub fn shutdown(&mut self) -> anyhow::Result<()> {
        if self.config.snapshot.is_none() {
            return Ok(());
        }
        self.engine.pause_decisions();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.engine.in_flight() > 0 || !self.outbox.events.is_empty() {
            if Instant::now() > deadline {
                bail!(
                    "{} events still in flight after 10 s; no snapshot written",
                    self.engine.in_flight()
                );
            }
            self.poll_stream(monotonic_ns())?;
            self.poll_client(monotonic_ns());
            self.drain_outbox();
            self.wait_stream(Duration::from_millis(5))?;
        }
        self.save_snapshot()
    }

    fn save_snapshot(&mut self) -> anyhow::Result<()> {
        let Some(path) = &self.config.snapshot else {
            return Ok(());
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).ok();
        }
        let saving = Instant::now();
        let bytes = self
            .engine
            .save_snapshot(path, &self.session)
            .with_context(|| format!("writing the snapshot {}", path.display()))?;
        self.stats.snapshot_save_ms = saving.elapsed().as_millis() as u64;
        self.stats.snapshots_saved += 1;
        tracing::info!(path = %path.display(), bytes, seq = self.engine.replica().last_seq(), "snapshot saved");
        Ok(())
    }

    fn resume(&mut self) -> anyhow::Result<()> {
        loop {
            match self.engine.finish_catch_up(&mut self.outbox) {
                Ok(CatchUp::Done { .. }) => return Ok(()),
                Ok(CatchUp::More { .. }) => self.drain_outbox(),
                Err(error) => bail!("resuming after a snapshot: {error}"),
            }
        }
    }

    fn poll_stream(&mut self, now_ns: u64) -> io::Result<usize> {
        // Back-pressure: while the outbox is half full, leave the stream in
        // the socket (the consumer recovers anything the kernel drops).
        if self.outbox.events.len() > OUTBOX_EVENTS_MAX / 2 {
            return Ok(0);
        }
        let engine = &mut self.engine;
        let outbox = &mut self.outbox;
        let closing_at = &mut self.closing_at;
        self.consumer.poll(now_ns, |seq, message| {
            rollover::deliver(engine, outbox, closing_at, seq, &message);
        })
    }

    /// Blocks until the stream delivers something or `timeout` passes;
    /// what it delivers goes to the engine like in `poll_stream`.
    fn wait_stream(&mut self, timeout: Duration) -> io::Result<usize> {
        if self.outbox.events.len() > OUTBOX_EVENTS_MAX / 2 {
            return Ok(0);
        }
        let engine = &mut self.engine;
        let outbox = &mut self.outbox;
        let closing_at = &mut self.closing_at;
        self.consumer.wait(timeout, |seq, message| {
            rollover::deliver(engine, outbox, closing_at, seq, &message);
        })
    }

    fn poll_client(&mut self, now_ns: u64) -> usize {
        let stats = &mut self.stats;
        self.client.poll(now_ns, |event| match event {
            ClientEvent::Ack(ack) if ack.reject.is_some() => {
                stats.rejected_acks += 1;
                stats.last_reject_reason = ack.reject.unwrap_or(0);
                tracing::warn!(client_seq = ack.client_seq, reason = ?ack.reject.map(char::from), "an event was rejected by the gateway");
            }
            ClientEvent::Closed(error) => tracing::error!(%error, "order-entry session closed"),
            _ => {}
        })
    }

    fn drain_outbox(&mut self) {
        while let Some((bytes, len)) = self.outbox.events.front() {
            if !self.client.has_room() {
                break;
            }
            match self.client.queue(&bytes[..usize::from(*len)]) {
                Ok(_) => {
                    self.outbox.events.pop_front();
                    self.stats.events_sent += 1;
                }
                Err(_) => break,
            }
        }
        self.client.flush();
    }

    /// The decision engine (its replica is the authoritative state).
    pub fn engine(&self) -> &Warehouse {
        &self.engine
    }

    /// The order-entry client.
    pub fn client(&self) -> &OrderEntryClient {
        &self.client
    }

    /// The stream consumer.
    pub fn consumer(&self) -> &StreamConsumer {
        &self.consumer
    }

    /// Counters of the app.
    pub fn stats(&self) -> WarehouseAppStats {
        self.stats
    }

    /// Whether nothing of the warehouse's is waiting or in flight.
    pub fn is_quiet(&self) -> bool {
        self.engine.in_flight() == 0 && self.outbox.events.is_empty()
    }
}

use tally_runtime::clock::wall_ns as wall_clock_ns;
