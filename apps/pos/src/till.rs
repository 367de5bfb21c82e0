//! [`Pos`]: the till's duty cycle and its public interface.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tally_client::client::{ClientConfig, OrderEntryClient};
use tally_client::consumer::{monotonic_ns, RecoveryMode, StreamConsumer};
use tally_client::follow::SessionFollower;
use tally_client::replica::Replica;

use crate::check::{Request, BUSY};
use crate::core::{Core, OpenHold, OpenOrder, Pending};
use crate::outcome::rtt_histogram;
use crate::{Idle, OutcomeReport, PosConfig, PosError, PosStats, Refused};

/// Longest park between polls while waiting for a condition (client
/// heartbeats, acks and reconnects need a poll now and then).
pub const PARK_NS_MAX: u64 = 5_000_000;

/// The point of sale. See the crate documentation.
pub struct Pos {
    consumer: StreamConsumer,
    /// Moves the consumer to the next session at a rollover.
    follower: SessionFollower,
    client: OrderEntryClient,
    /// What a new client (for the next session) is made from.
    client_config: ClientConfig,
    core: Core,
    idle: Idle,
    drain_timeout: Duration,
}

const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<Pos>();
};

impl Pos {
    /// Joins the stream (replaying from `consumer.start_seq`) and prepares
    /// the client, which connects on the first poll. Allocates every table.
    pub fn new(config: PosConfig) -> Result<Pos, PosError> {
        if config.in_flight_max == 0 || config.in_flight_max > tally_client::client::WINDOW_MAX {
            return Err(PosError::Config("in_flight_max must be 1..=2^20"));
        }
        if config.origin == 0 {
            return Err(PosError::Config("origin 0 is the appliance's"));
        }
        config
            .limits
            .validate()
            .map_err(|e| PosError::Config(e.0))?;
        let consumer = StreamConsumer::new(&config.consumer)?;
        let follower = SessionFollower::new(config.consumer.clone());
        let client = OrderEntryClient::new(config.client.clone()).map_err(PosError::Client)?;
        let capacity = config.in_flight_max.next_power_of_two();
        let core = Core {
            origin: config.origin,
            replica: Replica::new(config.limits),
            pending: vec![Pending::FREE; capacity].into_boxed_slice(),
            mask: capacity as u32 - 1,
            in_flight_max: config.in_flight_max,
            in_flight: 0,
            first_client_seq: 0,
            oldest: 0,
            next_client_seq: 0,
            open_orders: Vec::with_capacity(config.open_orders_max),
            open_orders_max: config.open_orders_max,
            open_holds: Vec::with_capacity(config.open_holds_max),
            open_holds_max: config.open_holds_max,
            directory_version: 0,
            stats: PosStats::default(),
            histogram: rtt_histogram(),
            interval_histogram: rtt_histogram(),
            verify_seq: None,
            origin_verified: false,
            error: None,
        };
        Ok(Pos {
            consumer,
            follower,
            client,
            client_config: config.client,
            core,
            idle: config.idle,
            drain_timeout: config.drain_timeout,
        })
    }

    /// One bounded round: takes stream messages (applying them and matching
    /// outcomes) and acks. Returns the work done (0 = idle). `now_ns` is
    /// [`monotonic_ns`].
    pub fn poll(&mut self, now_ns: u64) -> Result<usize, PosError> {
        self.poll_with(now_ns, |_| {})
    }

    /// As [`poll`](Self::poll), reporting each of our commands' outcome.
    pub fn poll_with(
        &mut self,
        now_ns: u64,
        mut on_outcome: impl FnMut(&OutcomeReport),
    ) -> Result<usize, PosError> {
        let core = &mut self.core;
        let mut work = self.consumer.poll(now_ns, |seq, message| {
            core.on_stream(seq, &message, &mut on_outcome)
        })?;
        work += self
            .client
            .poll(now_ns, |event| core.on_client(event, &mut on_outcome));
        if let Some(error) = core.error.take() {
            return Err(error);
        }
        if self.consumer.is_ended() {
            work += self.next_session(&mut on_outcome)?;
        }
        Ok(work)
    }

    /// The session ended and the stream delivered all of it: follows the
    /// next session by itself (a rollover needs no restart) — the stream
    /// from its seq 1, whose broadcast rebuilds the replica, and a new
    /// login to its gateway session. Commands the ended session did not
    /// decide are reported [`Outcome::NotDecided`](crate::Outcome).
    fn next_session(
        &mut self,
        on_outcome: &mut impl FnMut(&OutcomeReport),
    ) -> Result<usize, PosError> {
        let Some(session) = self.follower.follow(&mut self.consumer)? else {
            return Ok(0);
        };
        let undecided = self.core.end_session(on_outcome);
        let mut config = self.client_config.clone();
        config.session = session;
        self.client.logout();
        self.client = OrderEntryClient::new(config).map_err(PosError::Client)?;
        tracing::info!(
            %session,
            undecided,
            "the session ended: following the next one (commands it did not decide were not \
             carried out)"
        );
        Ok(1)
    }

    /// Logged in, the warehouse's directory (`S(W)`) seen, and the stream
    /// followed live: commands can be checked and sent.
    pub fn is_ready(&self) -> bool {
        self.client.is_ready()
            && self.core.replica.authority_online_seq() != 0
            && self.consumer.mode() == RecoveryMode::Live
    }

    /// Polls until [`is_ready`](Self::is_ready), up to `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<bool, PosError> {
        let result = self.poll_until(timeout, |pos| pos.is_ready());
        if let Some(limit) = self.core.replica.limit_met() {
            return Err(PosError::LimitMet(limit));
        }
        result
    }

    /// Polls (parking as configured) until `done(self)` or `timeout`.
    pub fn poll_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Pos) -> bool,
    ) -> Result<bool, PosError> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.wait_with(Duration::from_nanos(PARK_NS_MAX), |_| {})?;
        }
    }

    /// Polls once and, when that found nothing to do, waits (parked or
    /// spinning, as configured) up to `timeout` for a stream message;
    /// reports our commands' outcomes to `on_outcome`. Returns the work
    /// done.
    pub fn wait_with(
        &mut self,
        timeout: Duration,
        mut on_outcome: impl FnMut(&OutcomeReport),
    ) -> Result<usize, PosError> {
        let work = self.poll_with(monotonic_ns(), &mut on_outcome)?;
        if work == 0 {
            self.park(timeout, &mut on_outcome)?;
        }
        Ok(work)
    }

    /// Waits (parked, or one spin with [`Idle::Spin`]) until a stream
    /// message arrives or `timeout` passed, applying what arrives.
    pub fn park(
        &mut self,
        timeout: Duration,
        on_outcome: &mut impl FnMut(&OutcomeReport),
    ) -> Result<(), PosError> {
        if self.idle == Idle::Spin {
            std::hint::spin_loop();
            return Ok(());
        }
        if timeout.is_zero() {
            return Ok(());
        }
        let core = &mut self.core;
        self.consumer.wait(timeout, |seq, message| {
            core.on_stream(seq, &message, on_outcome)
        })?;
        if let Some(error) = core.error.take() {
            return Err(error);
        }
        Ok(())
    }

    /// Polls until every command sent has its outcome, up to `timeout`
    /// ([`drain_timeout`](Self::drain_timeout) is the configured one);
    /// returns whether none is left in flight.
    pub fn drain(&mut self, timeout: Duration) -> Result<bool, PosError> {
        self.client.flush();
        self.poll_until(timeout, |pos| pos.core.in_flight == 0)
    }

    /// Polls until the replica has applied `seq`, up to `timeout`.
    pub fn catch_up(&mut self, seq: u64, timeout: Duration) -> Result<bool, PosError> {
        self.poll_until(timeout, |pos| pos.core.replica.last_seq() >= seq)
    }

    /// Logs out of the gateway; the till sends nothing more.
    pub fn logout(&mut self) {
        self.client.logout();
    }

    // -------------------------------------------------------------------
    // Commands. Each checks the replica first; ids are the client_seq.

    /// Sends an order for `qty` of `sku` at `location` (0 = any); returns
    /// its client_seq, which is also its order id.
    pub fn order(&mut self, location: u16, sku: u32, qty: u32) -> Result<u32, Refused> {
        self.submit(Request::Order { location, sku, qty })
    }

    /// Sends a modify of our open order `order_id` to `new_qty`.
    pub fn modify(&mut self, order_id: u64, new_qty: u32) -> Result<u32, Refused> {
        self.submit(Request::Modify { order_id, new_qty })
    }

    /// Sends a cancel of our open order `order_id`.
    pub fn cancel(&mut self, order_id: u64) -> Result<u32, Refused> {
        self.submit(Request::Cancel { order_id })
    }

    /// Sends a reservation of `qty` of `sku` at `location` for `ttl_ms`;
    /// returns its client_seq, which is also its hold id.
    pub fn reserve(
        &mut self,
        location: u16,
        sku: u32,
        qty: u32,
        ttl_ms: u32,
    ) -> Result<u32, Refused> {
        self.submit(Request::Reserve {
            location,
            sku,
            qty,
            ttl_ms,
        })
    }

    /// Sends a confirm of our open hold `hold_id`.
    pub fn confirm(&mut self, hold_id: u64) -> Result<u32, Refused> {
        self.submit(Request::Confirm { hold_id })
    }

    /// Sends a release of our open hold `hold_id`.
    pub fn release(&mut self, hold_id: u64) -> Result<u32, Refused> {
        self.submit(Request::Release { hold_id })
    }

    /// [`queue`](Self::queue)s `request` and sends it at once.
    pub fn submit(&mut self, request: Request) -> Result<u32, Refused> {
        let client_seq = self.queue(request)?;
        self.client.flush();
        Ok(client_seq)
    }

    /// Checks room, readiness and the replica, then queues the command
    /// (sent by the next [`flush`](Self::flush) or poll); returns its
    /// client_seq. A command the replica shows would fail is not sent and
    /// is counted in [`PosStats::skipped_would_fail`].
    pub fn queue(&mut self, request: Request) -> Result<u32, Refused> {
        if self.client.closed().is_some() {
            return Err(Refused::Closed);
        }
        if !self.is_ready() {
            return Err(Refused::NotReady);
        }
        if !self.core.has_room(&self.client) {
            self.core.stats.full += 1;
            return Err(Refused::Full);
        }
        let id = u64::from(self.client.next_client_seq());
        let command = match self.core.check(request, id) {
            Ok(command) => command,
            Err(BUSY) => return Err(Refused::Busy),
            Err(reason) => {
                self.core.skip(reason);
                return Err(Refused::WouldFail(reason));
            }
        };
        // Stamped now, not at the start of the poll: the RTT must not
        // include the stream work before it.
        self.core.send(&mut self.client, &command, monotonic_ns())
    }

    /// Sends what [`queue`](Self::queue) queued.
    pub fn flush(&mut self) {
        self.client.flush();
    }

    // -------------------------------------------------------------------
    // Accessors.

    pub fn stats(&self) -> PosStats {
        let mut stats = self.core.stats;
        stats.in_flight = self.core.in_flight as u64;
        stats
    }

    /// Round-trip latency of every outcome since start, ns.
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.core.histogram
    }

    /// Round-trip latency since the last [`reset_interval`](Self::reset_interval).
    pub fn interval_histogram(&self) -> &Histogram<u64> {
        &self.core.interval_histogram
    }

    pub fn reset_interval(&mut self) {
        self.core.interval_histogram.reset();
    }

    /// The till's inventory replica (digest, last seq, cells).
    pub fn replica(&self) -> &Replica {
        &self.core.replica
    }

    pub fn consumer(&self) -> &StreamConsumer {
        &self.consumer
    }

    pub fn client(&self) -> &OrderEntryClient {
        &self.client
    }

    /// How long a till is configured to wait for outstanding outcomes.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// The origin our commands carry.
    pub fn origin(&self) -> u16 {
        self.core.origin
    }

    /// Commands awaiting their outcome.
    pub fn in_flight(&self) -> usize {
        self.core.in_flight
    }

    /// Whether another command could be queued now (in-flight limit and
    /// the client's window).
    pub fn has_room(&self) -> bool {
        self.core.has_room(&self.client)
    }

    /// Our orders that filled and are not cancelled (tracked ones).
    pub fn open_orders(&self) -> usize {
        self.core.open_orders.len()
    }

    /// Our holds not yet ended (tracked ones).
    pub fn open_holds(&self) -> usize {
        self.core.open_holds.len()
    }

    /// The tracked open orders themselves.
    pub fn open_order_list(&self) -> &[OpenOrder] {
        &self.core.open_orders
    }

    /// The tracked open holds themselves.
    pub fn open_hold_list(&self) -> &[OpenHold] {
        &self.core.open_holds
    }

    /// Moves whenever the replica's SKU or location directory may have
    /// changed: a caller that keeps lists drawn from it refreshes them.
    pub fn directory_version(&self) -> u64 {
        self.core.directory_version
    }
}
