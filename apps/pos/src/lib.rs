//! The point of sale (DESIGN.md §6): a till that keeps its own inventory
//! replica from the stream, checks it before sending a command, and matches
//! the warehouse's answers to its commands. With a [`LoadConfig`] it is also
//! a load generator: a seeded random mix of orders, modifies, cancels,
//! reservations, confirms and releases at a given rate (or as fast as the
//! answers come back), with counters and a round-trip latency histogram.
//!
//! One [`Pos`] owns
//! - a [`StreamConsumer`] feeding a [`Replica`] (the whole session, from seq
//!   1: the warehouse's session-start broadcast is the directory);
//! - an [`OrderEntryClient`] logged in as a `pos` client;
//! - a ring of its commands awaiting their outcome, indexed by client_seq;
//! - bounded tables of its own open orders (for modify/cancel) and open
//!   holds (for confirm/release).
//!
//! **Never sends what it can see would fail.** Before each command the
//! replica is asked: an unknown SKU or location, less available than the
//! quantity at the given location (or at every location for location 0), an
//! order or hold that is not open (or a hold already past its expiry) — the
//! command is not sent and is counted in [`PosStats::skipped_would_fail`].
//! Commands can still be rejected: other tills race for the same stock.
//!
//! **Matching outcomes.** The warehouse's events carry the `cmd_seq` of the
//! command they answer (`D`, `J`, `H`; `E(R)` answers the oldest pending
//! release, which the replica resolves). The replica reports which command an
//! event answered ([`Applied::Event`]); that command's header on the stream
//! holds its origin and client_seq, so an outcome is ours when the origin is
//! ours and the client_seq is one we sent in this run — whether its ack came
//! before or after. A gateway reject (`j` ack, or the `j` on the stream) is
//! the outcome of a command the gateway refused. Round-trip latency is the
//! time from queueing a command to seeing its outcome on the stream.
//!
//! Order and hold ids are the client_seq of the `O`/`V` that opens them:
//! unique per origin within a session, also across restarts of the till.
//!
//! Realtime contract: one thread owns a `Pos`. Every table (replica, pending
//! ring, open orders and holds, histograms, directory lists) is allocated in
//! [`Pos::new`]; the duty cycle ([`Pos::poll`]) does not allocate, lock or
//! log (the consumer's and client's own contracts apply to their recoveries).
//! Times passed to `poll` are [`monotonic_ns`] readings; hold expiry is
//! compared with the wall clock, as the sequencer stamps it. A till relies
//! on its replica's pending-command ring (`ReplicaLimits::pending_max`
//! stream messages) to attribute outcomes: an answer arriving later than
//! that is not matched, and its command stays in flight.
//!
//! A till in load mode on its own thread, as the demo runs several:
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use std::time::{Duration, Instant};
//! use tally_pos::{LoadConfig, Pos, PosConfig, RttSummary};
//! # fn run(appliance: &tally_config::ApplianceConfig) -> Result<(), tally_pos::PosError> {
//! let mut config = PosConfig::for_appliance(appliance, "pos2", "pos2pass")?;
//! config.load = Some(LoadConfig::new(42)); // 1 000 commands/s, seed 42
//! let mut pos = Pos::new(config)?;
//! pos.wait_ready(Duration::from_secs(30))?; // logged in, directory seen
//! let stop = AtomicBool::new(false); // set by another thread to stop early
//! let until = Instant::now() + Duration::from_secs(10);
//! let drained = pos.run(&stop, Some(until), |pos| {
//!     let _per_second = (pos.stats(), RttSummary::of(pos.interval_histogram()));
//!     pos.reset_interval();
//! })?;
//! // Aggregate: PosStats::merge, Histogram::add, and the replica at its seq.
//! let (stats, rtt) = (pos.stats(), pos.histogram());
//! let (seq, digest) = (pos.replica().last_seq(), pos.replica().digest());
//! # let _ = (drained, stats, rtt, seq, digest);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;
use tally_wire::{
    hold_outcome, reject_reason, system_code, CancelOrder, ConfirmHold, Message, ModifyOrder,
    Order, ReleaseHold, Reserve,
};

use tally_runtime::counters::{Counter, CounterFile};

use tally_client::client::{
    ClientConfig, ClientCounters, ClientError, ClientEvent, OrderEntryClient,
};
use tally_client::consumer::{
    monotonic_ns, ConsumerConfig, ConsumerCounters, RecoveryMode, StreamConsumer,
};
use tally_client::replica::{Applied, Replica, ReplicaLimits};

/// Largest latency the histograms record (longer ones are clamped): 60 s.
pub const RTT_NS_MAX: u64 = 60_000_000_000;
/// Attempts (sent or skipped) one [`Pos::poll`] makes at most.
const ATTEMPTS_PER_POLL_MAX: u32 = 64;
/// In rate mode, sends owed from the past are forgiven beyond this much time
/// (the till fell behind, e.g. its in-flight limit was reached): no bursts.
const PACING_BACKLOG_NS: u64 = 10_000_000;
/// Longest park of [`Pos::run`] between polls (client heartbeats, acks and
/// reconnects need a poll now and then).
const PARK_NS_MAX: u64 = 5_000_000;

/// What a [`Pos`] can fail with.
#[derive(Debug)]
pub enum PosError {
    /// The stream's sockets failed.
    Io(io::Error),
    /// The order-entry client stopped for good (login rejected, end of
    /// session, numbering conflict).
    Client(ClientError),
    /// The user is not a client of the appliance configuration.
    UnknownUser(String),
    /// Our first command came back on the stream with another origin: the
    /// configured origin is not this login's client id.
    OriginMismatch { configured: u16, on_stream: u16 },
    /// The configuration is unusable.
    Config(&'static str),
    /// The replica's limits (`[limits]`) are smaller than the stream needs:
    /// which one, with the numbers.
    LimitMet(String),
}

impl fmt::Display for PosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PosError::Io(error) => write!(f, "stream: {error}"),
            PosError::Client(error) => write!(f, "order entry: {error}"),
            PosError::UnknownUser(user) => {
                write!(f, "{user:?} is not a client in the appliance configuration")
            }
            PosError::OriginMismatch {
                configured,
                on_stream,
            } => write!(
                f,
                "configured origin {configured}, but our commands carry origin {on_stream}"
            ),
            PosError::Config(what) => f.write_str(what),
            PosError::LimitMet(what) => write!(
                f,
                "the stream does not fit this till's replica: {what} (raise it in [limits])"
            ),
        }
    }
}

impl std::error::Error for PosError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PosError::Io(error) => Some(error),
            PosError::Client(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for PosError {
    fn from(error: io::Error) -> Self {
        PosError::Io(error)
    }
}

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
}

/// One of our commands and its outcome, as [`Pos::poll_with`] reports it.
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
    fn add(&mut self, kind: CommandKind) {
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
    fn add(&mut self, reason: u8) {
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
    /// Sends owed by the pacing that were dropped because the till fell
    /// more than 10 ms behind (rate mode).
    pub pacing_dropped: u64,
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
        self.pacing_dropped += other.pacing_dropped;
        self.acks += other.acks;
        self.acks_unavailable += other.acks_unavailable;
        self.duplicate_outcomes += other.duplicate_outcomes;
        self.open_orders_untracked += other.open_orders_untracked;
        self.open_holds_untracked += other.open_holds_untracked;
    }
}

/// Relative weights of the command kinds in load mode (0 = never).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Mix {
    pub order: u32,
    pub modify: u32,
    pub cancel: u32,
    pub reserve: u32,
    pub confirm: u32,
    pub release: u32,
}

impl Default for Mix {
    /// Half orders; the rest split between changing orders and holds.
    fn default() -> Self {
        Mix {
            order: 50,
            modify: 10,
            cancel: 10,
            reserve: 15,
            confirm: 8,
            release: 7,
        }
    }
}

impl Mix {
    fn weights(&self) -> [(CommandKind, u32); 6] {
        [
            (CommandKind::Order, self.order),
            (CommandKind::Modify, self.modify),
            (CommandKind::Cancel, self.cancel),
            (CommandKind::Reserve, self.reserve),
            (CommandKind::Confirm, self.confirm),
            (CommandKind::Release, self.release),
        ]
    }

    fn total(&self) -> u64 {
        self.weights().iter().map(|&(_, w)| u64::from(w)).sum()
    }

    fn pick(&self, roll: u64) -> CommandKind {
        let mut roll = roll % self.total();
        for (kind, weight) in self.weights() {
            if roll < u64::from(weight) {
                return kind;
            }
            roll -= u64::from(weight);
        }
        unreachable!("roll is below the total weight")
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `order=50,modify=10,cancel=10,reserve=15,confirm=8,release=7`; kinds
    /// left out weigh 0.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut mix = Mix {
            order: 0,
            modify: 0,
            cancel: 0,
            reserve: 0,
            confirm: 0,
            release: 0,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected kind=weight"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
            let slot = match name.trim() {
                "order" => &mut mix.order,
                "modify" => &mut mix.modify,
                "cancel" => &mut mix.cancel,
                "reserve" => &mut mix.reserve,
                "confirm" => &mut mix.confirm,
                "release" => &mut mix.release,
                other => {
                    return Err(format!(
                        "unknown kind {other:?} (order, modify, cancel, reserve, confirm, release)"
                    ))
                }
            };
            *slot = weight;
        }
        if mix.total() == 0 || mix.order == 0 && mix.reserve == 0 {
            return Err("the mix needs a positive weight for order or reserve".to_string());
        }
        Ok(mix)
    }
}

/// Load mode: what to send, how fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LoadConfig {
    /// Commands attempted per second (sent or skipped); 0 = closed loop, as
    /// fast as outcomes free the in-flight limit.
    pub rate_per_sec: u64,
    /// Seed of the random choices: the same seed makes the same choices on
    /// the same replica states.
    pub seed: u64,
    pub mix: Mix,
    /// Quantities are 1..=qty_max.
    pub qty_max: u32,
    /// Reservations live ttl_ms_min..=ttl_ms_max.
    pub ttl_ms_min: u32,
    pub ttl_ms_max: u32,
    /// Share of orders sent for location 0 ("any", the warehouse picks).
    pub any_location_percent: u8,
}

impl LoadConfig {
    /// 1 000 commands/s, the default mix, quantities 1..=3, holds of 1–5 s,
    /// a quarter of orders for any location.
    pub fn new(seed: u64) -> LoadConfig {
        LoadConfig {
            rate_per_sec: 1000,
            seed,
            mix: Mix::default(),
            qty_max: 3,
            ttl_ms_min: 1000,
            ttl_ms_max: 5000,
            any_location_percent: 25,
        }
    }
}

/// How [`Pos::run`] waits when a poll found nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Idle {
    /// Block on the stream socket until a message or the next send is due
    /// (a laptop, the demo).
    Park,
    /// Poll again at once (a dedicated core, lowest latency).
    Spin,
}

/// Everything a [`Pos`] needs; [`PosConfig::new`] fills in defaults.
#[derive(Clone, Debug)]
pub struct PosConfig {
    /// The stream (its `start_seq` should be 1: the directory is the
    /// warehouse's session-start broadcast).
    pub consumer: ConsumerConfig,
    /// The till's order-entry login (role `pos`).
    pub client: ClientConfig,
    /// The login's client id: the origin its commands carry on the stream.
    pub origin: u16,
    /// Replica table sizes.
    pub limits: ReplicaLimits,
    /// Commands awaiting their outcome, at most.
    pub in_flight_max: usize,
    /// Own open orders and holds tracked for modify/cancel and
    /// confirm/release, at most.
    pub open_orders_max: usize,
    pub open_holds_max: usize,
    /// Load mode, or `None` to send only through the command methods.
    pub load: Option<LoadConfig>,
    pub idle: Idle,
    /// How long [`Pos::run`] waits for outstanding outcomes after it stops
    /// sending.
    pub drain_timeout: Duration,
}

impl PosConfig {
    /// Defaults: small replica limits, in-flight limit = the client's
    /// window, 1 024 open orders and 256 open holds tracked, no load,
    /// parking, 5 s drain.
    pub fn new(consumer: ConsumerConfig, client: ClientConfig, origin: u16) -> PosConfig {
        let in_flight_max = client.window;
        PosConfig {
            consumer,
            client,
            origin,
            limits: ReplicaLimits::small(),
            in_flight_max,
            open_orders_max: 1024,
            open_holds_max: 256,
            load: None,
            idle: Idle::Park,
            drain_timeout: Duration::from_secs(5),
        }
    }

    /// The configuration for `username` on `appliance`: its stream (the
    /// replay feed read with the same login), gateway, and the origin the
    /// configuration gives `username`.
    pub fn for_appliance(
        appliance: &tally_config::ApplianceConfig,
        username: &str,
        password: &str,
    ) -> Result<PosConfig, PosError> {
        let origin = appliance
            .clients
            .iter()
            .find(|client| client.username == username)
            .map(|client| client.client_id)
            .ok_or_else(|| PosError::UnknownUser(username.to_string()))?;
        let mut consumer = ConsumerConfig::for_appliance(appliance, username, password);
        consumer.start_seq = 1;
        let client = ClientConfig::for_appliance(appliance, username, password);
        let mut config = PosConfig::new(consumer, client, origin);
        // The state's capacity comes from the configuration's [limits].
        config.limits = ReplicaLimits::from_config(&appliance.limits);
        Ok(config)
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
/// digits (what [`Pos::histogram`] holds; merge tills' with `add`).
pub fn rtt_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, RTT_NS_MAX, 3).expect("valid bounds")
}

/// A till's counters in a process's shared-memory counter file, for
/// `tally-stat`: the till's own (`pos.*`), its consumer's (`consumer.*`) and
/// its client's (`client.*`). Create it at start-up, then
/// [`publish`](Self::publish) from the till's thread now and then (a few
/// dozen relaxed stores).
pub struct PosCounterFile {
    file: CounterFile,
    pos: Vec<Counter>,
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
        let names: Vec<&str> = Self::NAMES
            .iter()
            .chain(ConsumerCounters::NAMES)
            .chain(ClientCounters::NAMES)
            .copied()
            .collect();
        let file = CounterFile::create(path, process_name, &names)?;
        let pos = (0..Self::NAMES.len()).map(|i| file.counter(i)).collect();
        let consumer = ConsumerCounters::from_file(&file, Self::NAMES.len());
        let client =
            ClientCounters::from_file(&file, Self::NAMES.len() + ConsumerCounters::NAMES.len());
        Ok(PosCounterFile {
            file,
            pos,
            consumer,
            client,
        })
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

// ---------------------------------------------------------------------------
// Internal state.

const SLOT_FREE: u8 = 0;
const SLOT_AWAITING: u8 = 1;

/// A command of ours awaiting its outcome.
#[derive(Clone, Copy, Debug)]
struct Pending {
    client_seq: u32,
    state: u8,
    kind: CommandKind,
    /// Order or hold id.
    id: u64,
    /// New quantity of a modify.
    qty: u32,
    sent_ns: u64,
}

impl Pending {
    const FREE: Pending = Pending {
        client_seq: 0,
        state: SLOT_FREE,
        kind: CommandKind::Order,
        id: 0,
        qty: 0,
        sent_ns: 0,
    };
}

/// An order of ours that filled and was not cancelled.
#[derive(Clone, Copy, Debug)]
struct OpenOrder {
    order_id: u64,
    remaining: u32,
    /// A modify or cancel of it awaits its outcome.
    busy: bool,
}

/// A hold of ours that has not ended.
#[derive(Clone, Copy, Debug)]
struct OpenHold {
    hold_id: u64,
    /// Stream seq of its `V` (the key `E` names).
    cmd_seq: u64,
    /// A confirm or release of it awaits its outcome.
    busy: bool,
}

/// splitmix64: small, fast, and the same sequence on every platform.
#[derive(Clone, Copy, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n ≥ 1).
    fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in lo..=hi.
    fn between(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.below(u64::from(hi.saturating_sub(lo)) + 1) as u32
    }
}

/// Load-mode state.
#[derive(Clone, Copy, Debug)]
struct Load {
    config: LoadConfig,
    rng: Rng,
    /// When the paced sending started (first poll ready to send).
    started_ns: u64,
    /// Attempts made (or forgiven) since `started_ns`.
    attempts: u64,
}

impl Load {
    /// Attempts due by `now_ns` (rate mode), after forgiving a backlog.
    fn due(&mut self, now_ns: u64, stats: &mut PosStats) -> u64 {
        let rate = u128::from(self.config.rate_per_sec);
        let elapsed = u128::from(now_ns.saturating_sub(self.started_ns));
        let owed = (elapsed * rate / 1_000_000_000) as u64 + 1;
        let due = owed.saturating_sub(self.attempts);
        let backlog_max = (rate * u128::from(PACING_BACKLOG_NS) / 1_000_000_000).max(1) as u64;
        if due > backlog_max {
            stats.pacing_dropped += due - backlog_max;
            self.attempts += due - backlog_max;
            return backlog_max;
        }
        due
    }

    /// When the next attempt is due (rate mode).
    fn next_due_ns(&self) -> u64 {
        let rate = u128::from(self.config.rate_per_sec.max(1));
        let at = u128::from(self.attempts) * 1_000_000_000 / rate;
        self.started_ns
            .saturating_add(at.min(u128::from(u64::MAX)) as u64)
    }
}

/// Everything but the consumer and the client, so their callbacks can
/// borrow it.
struct Core {
    origin: u16,
    replica: Replica,
    pending: Box<[Pending]>,
    mask: u32,
    in_flight_max: usize,
    in_flight: usize,
    /// client_seq of our first command in this run (0 = none sent yet).
    first_client_seq: u32,
    /// Oldest client_seq that may still await its outcome.
    oldest: u32,
    /// One past our newest command.
    next_client_seq: u32,
    open_orders: Vec<OpenOrder>,
    open_orders_max: usize,
    open_holds: Vec<OpenHold>,
    open_holds_max: usize,
    /// The directory as lists to draw from (refreshed on `S(W)` and after
    /// `R`/`L` events).
    skus: Vec<u32>,
    locations: Vec<u16>,
    directory_dirty: bool,
    load: Option<Load>,
    sending: bool,
    stats: PosStats,
    histogram: Histogram<u64>,
    interval_histogram: Histogram<u64>,
    /// Stream seq of our first acked command, checked for our origin when
    /// the consumer delivers it.
    verify_seq: Option<u64>,
    origin_verified: bool,
    error: Option<PosError>,
}

/// The point of sale. See the module documentation.
pub struct Pos {
    consumer: StreamConsumer,
    client: OrderEntryClient,
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
        if let Some(load) = &config.load {
            if load.mix.total() == 0 || load.mix.order == 0 && load.mix.reserve == 0 {
                return Err(PosError::Config(
                    "the mix needs a positive weight for order or reserve",
                ));
            }
            if load.qty_max == 0 || load.qty_max > i32::MAX as u32 {
                return Err(PosError::Config("qty_max must be 1..=2^31-1"));
            }
            if load.ttl_ms_min == 0 || load.ttl_ms_min > load.ttl_ms_max {
                return Err(PosError::Config("hold ttl must be 1 ≤ min ≤ max ms"));
            }
            if load.any_location_percent > 100 {
                return Err(PosError::Config("any_location_percent must be 0..=100"));
            }
        }
        config
            .limits
            .validate()
            .map_err(|e| PosError::Config(e.0))?;
        let consumer = StreamConsumer::new(&config.consumer)?;
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
            skus: Vec::with_capacity(config.limits.skus_max as usize),
            locations: Vec::with_capacity(usize::from(config.limits.locations_max)),
            directory_dirty: true,
            load: config.load.map(|load| Load {
                config: load,
                rng: Rng(load.seed),
                started_ns: 0,
                attempts: 0,
            }),
            sending: true,
            stats: PosStats::default(),
            histogram: rtt_histogram(),
            interval_histogram: rtt_histogram(),
            verify_seq: None,
            origin_verified: false,
            error: None,
        };
        Ok(Pos {
            consumer,
            client,
            core,
            idle: config.idle,
            drain_timeout: config.drain_timeout,
        })
    }

    /// One bounded round: takes stream messages (applying them and matching
    /// outcomes), acks, and in load mode sends what is due. Returns the work
    /// done (0 = idle). `now_ns` is [`monotonic_ns`].
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
        if core.load.is_some() && core.sending && self.ready_inner() {
            work += self.generate(now_ns);
        }
        Ok(work)
    }

    fn ready_inner(&self) -> bool {
        self.client.is_ready()
            && self.core.replica.authority_online_seq() != 0
            && self.consumer.mode() == RecoveryMode::Live
    }

    /// Logged in, the warehouse's directory (`S(W)`) seen, and the stream
    /// followed live: commands can be checked and sent.
    pub fn is_ready(&self) -> bool {
        self.ready_inner()
    }

    /// Polls until [`is_ready`](Self::is_ready), up to `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<bool, PosError> {
        let sending = self.core.sending;
        self.core.sending = false;
        let result = self.poll_until(timeout, |pos| pos.is_ready());
        self.core.sending = sending;
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
    /// spinning, as configured) up to `timeout` for a stream message or the
    /// next send; reports our commands' outcomes to `on_outcome`. Returns
    /// the work done.
    pub fn wait_with(
        &mut self,
        timeout: Duration,
        mut on_outcome: impl FnMut(&OutcomeReport),
    ) -> Result<usize, PosError> {
        let now_ns = monotonic_ns();
        let work = self.poll_with(now_ns, &mut on_outcome)?;
        if work == 0 {
            let max_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
            self.park(now_ns, max_ns, &mut on_outcome)?;
        }
        Ok(work)
    }

    /// Waits (parked or spinning) until a stream message arrives, the next
    /// send is due, or `max_ns` passed.
    fn park(
        &mut self,
        now_ns: u64,
        max_ns: u64,
        on_outcome: &mut impl FnMut(&OutcomeReport),
    ) -> Result<(), PosError> {
        if self.idle == Idle::Spin {
            std::hint::spin_loop();
            return Ok(());
        }
        let mut wait_ns = max_ns;
        if let Some(load) = &self.core.load {
            if self.core.sending && load.config.rate_per_sec > 0 && load.started_ns != 0 {
                wait_ns = wait_ns.min(load.next_due_ns().saturating_sub(now_ns));
            }
        }
        if wait_ns == 0 {
            return Ok(());
        }
        let core = &mut self.core;
        self.consumer
            .wait(Duration::from_nanos(wait_ns), |seq, message| {
                core.on_stream(seq, &message, on_outcome)
            })?;
        if let Some(error) = core.error.take() {
            return Err(error);
        }
        Ok(())
    }

    /// Runs the duty cycle until `stop` is set, `until` passes, the session
    /// ends or an error; calls `on_tick` about once a second. Then stops
    /// sending and waits (up to the configured drain timeout) for the
    /// outcomes of what is in flight. Returns whether nothing was left in
    /// flight.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        until: Option<Instant>,
        on_tick: impl FnMut(&mut Pos),
    ) -> Result<bool, PosError> {
        self.run_load(stop, until, on_tick)?;
        self.drain(self.drain_timeout)
    }

    /// [`run`](Self::run) without the drain at the end: returns when `stop`
    /// is set, `until` passes or the session ends, still sending (call
    /// [`drain`](Self::drain) next, or poll on).
    pub fn run_load(
        &mut self,
        stop: &AtomicBool,
        until: Option<Instant>,
        mut on_tick: impl FnMut(&mut Pos),
    ) -> Result<(), PosError> {
        const TICK_NS: u64 = 1_000_000_000;
        let mut next_tick_ns = monotonic_ns() + TICK_NS;
        while !stop.load(Ordering::Acquire)
            && until.is_none_or(|until| Instant::now() < until)
            && !self.consumer.is_ended()
        {
            let now_ns = monotonic_ns();
            if now_ns >= next_tick_ns {
                on_tick(self);
                next_tick_ns += TICK_NS;
                if next_tick_ns <= now_ns {
                    next_tick_ns = now_ns + TICK_NS;
                }
            }
            if self.poll(now_ns)? == 0 {
                let max_ns = PARK_NS_MAX.min(next_tick_ns.saturating_sub(now_ns));
                self.park(now_ns, max_ns, &mut |_| {})?;
            }
        }
        Ok(())
    }

    /// Stops sending and polls until every command sent has its outcome, up
    /// to `timeout` (the drain timeout of the configuration is what
    /// [`run`](Self::run) uses); returns whether none is left in flight.
    pub fn drain(&mut self, timeout: Duration) -> Result<bool, PosError> {
        self.core.sending = false;
        self.client.flush();
        self.poll_until(timeout, |pos| pos.core.in_flight == 0)
    }

    /// Polls (without sending) until the replica has applied `seq`, up to
    /// `timeout`.
    pub fn catch_up(&mut self, seq: u64, timeout: Duration) -> Result<bool, PosError> {
        let sending = self.core.sending;
        self.core.sending = false;
        let result = self.poll_until(timeout, |pos| pos.core.replica.last_seq() >= seq);
        self.core.sending = sending;
        result
    }

    /// Starts or stops load-mode sending (the stream is followed either way).
    pub fn set_sending(&mut self, sending: bool) {
        self.core.sending = sending;
    }

    /// Logs out of the gateway; the till sends nothing more.
    pub fn logout(&mut self) {
        self.core.sending = false;
        self.client.logout();
    }

    // -------------------------------------------------------------------
    // Commands. Each checks the replica first; ids are the client_seq.

    /// Sends an order for `qty` of `sku` at `location` (0 = any); returns
    /// its client_seq, which is also its order id.
    pub fn order(&mut self, location: u16, sku: u32, qty: u32) -> Result<u32, Refused> {
        self.try_command(|core, id| core.check_order(id, location, sku, qty))
    }

    /// Sends a modify of our open order `order_id` to `new_qty`.
    pub fn modify(&mut self, order_id: u64, new_qty: u32) -> Result<u32, Refused> {
        self.try_command(|core, _| core.check_modify(order_id, new_qty))
    }

    /// Sends a cancel of our open order `order_id`.
    pub fn cancel(&mut self, order_id: u64) -> Result<u32, Refused> {
        self.try_command(|core, _| core.check_cancel(order_id))
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
        self.try_command(|core, id| core.check_reserve(id, location, sku, qty, ttl_ms))
    }

    /// Sends a confirm of our open hold `hold_id`.
    pub fn confirm(&mut self, hold_id: u64) -> Result<u32, Refused> {
        self.try_command(|core, _| core.check_hold_end(CommandKind::Confirm, hold_id))
    }

    /// Sends a release of our open hold `hold_id`.
    pub fn release(&mut self, hold_id: u64) -> Result<u32, Refused> {
        self.try_command(|core, _| core.check_hold_end(CommandKind::Release, hold_id))
    }

    /// Checks room and readiness, builds the command with `build(core, id)`
    /// (which checks the replica), queues and flushes it.
    fn try_command(
        &mut self,
        build: impl FnOnce(&mut Core, u64) -> Result<Command, u8>,
    ) -> Result<u32, Refused> {
        if self.client.closed().is_some() {
            return Err(Refused::Closed);
        }
        if !self.ready_inner() {
            return Err(Refused::NotReady);
        }
        if !self.core.has_room(&self.client) {
            self.core.stats.full += 1;
            return Err(Refused::Full);
        }
        let id = u64::from(self.client.next_client_seq());
        let command = match build(&mut self.core, id) {
            Ok(command) => command,
            Err(BUSY) => return Err(Refused::Busy),
            Err(reason) => {
                self.core.skip(reason);
                return Err(Refused::WouldFail(reason));
            }
        };
        let client_seq = self.core.send(&mut self.client, &command, monotonic_ns())?;
        self.client.flush();
        Ok(client_seq)
    }

    /// Load mode: attempts what the pacing (or the in-flight room) allows.
    fn generate(&mut self, now_ns: u64) -> usize {
        let core = &mut self.core;
        let Some(load) = &mut core.load else {
            return 0;
        };
        if load.started_ns == 0 {
            load.started_ns = now_ns.max(1);
        }
        let due = if load.config.rate_per_sec == 0 {
            u64::from(ATTEMPTS_PER_POLL_MAX)
        } else {
            load.due(now_ns, &mut core.stats)
                .min(u64::from(ATTEMPTS_PER_POLL_MAX))
        };
        if core.directory_dirty {
            core.refresh_directory();
        }
        let mut work = 0;
        for _ in 0..due {
            if !core.has_room(&self.client) {
                core.stats.full += 1;
                break;
            }
            let id = u64::from(self.client.next_client_seq());
            let attempt = core.random_command(id);
            if let Some(load) = &mut core.load {
                load.attempts += 1;
            }
            match attempt {
                Ok(command) => {
                    // Stamped now, not at the start of the poll: the RTT
                    // must not include the stream work before it.
                    if core
                        .send(&mut self.client, &command, monotonic_ns())
                        .is_err()
                    {
                        break;
                    }
                    work += 1;
                }
                Err(BUSY) => {}
                Err(reason) => core.skip(reason),
            }
        }
        if work > 0 {
            self.client.flush();
        }
        work
    }

    // -------------------------------------------------------------------
    // Accessors for the demo and tests.

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

    /// How long [`run`](Self::run) waits for outstanding outcomes.
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

    /// Our orders that filled and are not cancelled (tracked ones).
    pub fn open_orders(&self) -> usize {
        self.core.open_orders.len()
    }

    /// Our holds not yet ended (tracked ones).
    pub fn open_holds(&self) -> usize {
        self.core.open_holds.len()
    }
}

/// `build` result meaning "a command about this order/hold is in flight".
const BUSY: u8 = 0;

/// A command ready to send.
#[derive(Clone, Copy, Debug)]
struct Command {
    kind: CommandKind,
    id: u64,
    qty: u32,
    bytes: [u8; Reserve::SIZE],
    len: usize,
}

impl Command {
    fn new(kind: CommandKind, id: u64, qty: u32, message: &[u8]) -> Command {
        let mut bytes = [0u8; Reserve::SIZE];
        bytes[..message.len()].copy_from_slice(message);
        Command {
            kind,
            id,
            qty,
            bytes,
            len: message.len(),
        }
    }
}

fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Core {
    /// Whether another command may be sent now.
    fn has_room(&self, client: &OrderEntryClient) -> bool {
        if self.in_flight >= self.in_flight_max || !client.has_room() {
            return false;
        }
        let next = client.next_client_seq();
        self.first_client_seq == 0 || next.wrapping_sub(self.oldest) <= self.mask
    }

    fn skip(&mut self, reason: u8) {
        self.stats.skipped_would_fail += 1;
        self.stats.skipped.add(reason);
    }

    /// Queues `command` and records it as awaiting its outcome.
    fn send(
        &mut self,
        client: &mut OrderEntryClient,
        command: &Command,
        now_ns: u64,
    ) -> Result<u32, Refused> {
        let client_seq = match client.queue(&command.bytes[..command.len]) {
            Ok(client_seq) => client_seq,
            Err(ClientError::WindowFull) => {
                self.stats.full += 1;
                return Err(Refused::Full);
            }
            Err(ClientError::Disconnected) => return Err(Refused::NotReady),
            Err(_) => return Err(Refused::Closed),
        };
        if self.first_client_seq == 0 {
            self.first_client_seq = client_seq;
            self.oldest = client_seq;
        }
        self.next_client_seq = client_seq + 1;
        let slot = &mut self.pending[(client_seq & self.mask) as usize];
        assert_eq!(slot.state, SLOT_FREE, "has_room keeps slots from wrapping");
        *slot = Pending {
            client_seq,
            state: SLOT_AWAITING,
            kind: command.kind,
            id: command.id,
            qty: command.qty,
            sent_ns: now_ns,
        };
        self.in_flight += 1;
        self.stats.sent.add(command.kind);
        match command.kind {
            CommandKind::Modify | CommandKind::Cancel => {
                if let Some(order) = self.open_order_mut(command.id) {
                    order.busy = true;
                }
            }
            CommandKind::Confirm | CommandKind::Release => {
                if let Some(i) = self.open_hold_index(command.id) {
                    self.open_holds[i].busy = true;
                }
            }
            CommandKind::Order | CommandKind::Reserve => {}
        }
        Ok(client_seq)
    }

    // -------------------------------------------------------------------
    // Checks against the replica. `Err(reason)` = would fail with it.

    fn check_order(&self, id: u64, location: u16, sku: u32, qty: u32) -> Result<Command, u8> {
        if qty == 0 || qty > i32::MAX as u32 {
            return Err(reject_reason::INVALID_QUANTITY);
        }
        let replica = &self.replica;
        if replica.symbol(sku).is_none() {
            return Err(reject_reason::UNKNOWN_SKU);
        }
        let available = if location == 0 {
            replica
                .cells_of(sku)
                .map(|(_, cell)| cell.available)
                .max()
                .unwrap_or(0)
        } else {
            match replica.cell(location, sku) {
                Some(cell) => cell.available,
                None => return Err(reject_reason::UNKNOWN_LOCATION),
            }
        };
        if available < qty {
            return Err(reject_reason::INSUFFICIENT);
        }
        let message = Order::new(id, location, sku, qty);
        Ok(Command::new(
            CommandKind::Order,
            id,
            qty,
            message.as_bytes(),
        ))
    }

    fn check_modify(&self, order_id: u64, new_qty: u32) -> Result<Command, u8> {
        if new_qty == 0 || new_qty > i32::MAX as u32 {
            return Err(reject_reason::INVALID_QUANTITY);
        }
        let Some(order) = self.open_orders.iter().find(|o| o.order_id == order_id) else {
            return Err(reject_reason::NO_SUCH);
        };
        if order.busy {
            return Err(BUSY);
        }
        let Some(record) = self
            .replica
            .order(self.origin, order_id)
            .filter(|r| r.remaining > 0)
        else {
            return Err(reject_reason::NO_SUCH);
        };
        if new_qty > record.remaining {
            let more = new_qty - record.remaining;
            let available = self
                .replica
                .cell(record.location, record.sku)
                .map_or(0, |cell| cell.available);
            if available < more {
                return Err(reject_reason::INSUFFICIENT);
            }
        }
        let message = ModifyOrder::new(order_id, new_qty);
        Ok(Command::new(
            CommandKind::Modify,
            order_id,
            new_qty,
            message.as_bytes(),
        ))
    }

    fn check_cancel(&self, order_id: u64) -> Result<Command, u8> {
        let Some(order) = self.open_orders.iter().find(|o| o.order_id == order_id) else {
            return Err(reject_reason::NO_SUCH);
        };
        if order.busy {
            return Err(BUSY);
        }
        if self
            .replica
            .order(self.origin, order_id)
            .is_none_or(|r| r.remaining == 0)
        {
            return Err(reject_reason::NO_SUCH);
        }
        let message = CancelOrder::new(order_id);
        Ok(Command::new(
            CommandKind::Cancel,
            order_id,
            0,
            message.as_bytes(),
        ))
    }

    fn check_reserve(
        &self,
        id: u64,
        location: u16,
        sku: u32,
        qty: u32,
        ttl_ms: u32,
    ) -> Result<Command, u8> {
        if qty == 0 || qty > i32::MAX as u32 || ttl_ms == 0 {
            return Err(reject_reason::INVALID_QUANTITY);
        }
        if self.replica.symbol(sku).is_none() {
            return Err(reject_reason::UNKNOWN_SKU);
        }
        let Some(cell) = self.replica.cell(location, sku) else {
            return Err(reject_reason::UNKNOWN_LOCATION);
        };
        if cell.available < qty {
            return Err(reject_reason::INSUFFICIENT);
        }
        let message = Reserve::new(id, location, sku, qty, ttl_ms);
        Ok(Command::new(
            CommandKind::Reserve,
            id,
            qty,
            message.as_bytes(),
        ))
    }

    fn check_hold_end(&self, kind: CommandKind, hold_id: u64) -> Result<Command, u8> {
        let Some(i) = self.open_hold_index(hold_id) else {
            return Err(reject_reason::NO_SUCH);
        };
        if self.open_holds[i].busy {
            return Err(BUSY);
        }
        match self.replica.hold_by_client(self.origin, hold_id) {
            Some(hold) if hold.expires_at_ns > wall_clock_ns() => {}
            _ => return Err(reject_reason::NO_SUCH),
        }
        let command = match kind {
            CommandKind::Confirm => {
                Command::new(kind, hold_id, 0, ConfirmHold::new(hold_id).as_bytes())
            }
            CommandKind::Release => {
                Command::new(kind, hold_id, 0, ReleaseHold::new(hold_id).as_bytes())
            }
            _ => unreachable!("only confirm and release end a hold"),
        };
        Ok(command)
    }

    /// Load mode: one random command, checked. Kinds with nothing to act on
    /// (no open order or hold) become orders.
    fn random_command(&mut self, id: u64) -> Result<Command, u8> {
        let load = self.load.as_mut().expect("load mode");
        let config = load.config;
        let rng = &mut load.rng;
        let mut kind = config.mix.pick(rng.next());
        if matches!(kind, CommandKind::Modify | CommandKind::Cancel)
            && self.open_orders.iter().all(|o| o.busy)
        {
            kind = CommandKind::Order;
        }
        if matches!(kind, CommandKind::Confirm | CommandKind::Release)
            && self.open_holds.iter().all(|h| h.busy)
        {
            kind = CommandKind::Order;
        }
        if kind == CommandKind::Order && config.mix.order == 0 {
            kind = CommandKind::Reserve;
        }
        if self.skus.is_empty() || self.locations.is_empty() {
            return Err(reject_reason::UNKNOWN_SKU);
        }
        let sku = self.skus[rng.below(self.skus.len() as u64) as usize];
        let location = self.locations[rng.below(self.locations.len() as u64) as usize];
        let qty = rng.between(1, config.qty_max);
        match kind {
            CommandKind::Order => {
                let any = rng.below(100) < u64::from(config.any_location_percent);
                self.check_order(id, if any { 0 } else { location }, sku, qty)
            }
            CommandKind::Reserve => {
                let ttl_ms = rng.between(config.ttl_ms_min, config.ttl_ms_max);
                self.check_reserve(id, location, sku, qty, ttl_ms)
            }
            CommandKind::Modify | CommandKind::Cancel => {
                let n = self.open_orders.len();
                let start = rng.below(n as u64) as usize;
                let order = (0..n)
                    .map(|k| self.open_orders[(start + k) % n])
                    .find(|o| !o.busy)
                    .expect("checked above");
                if kind == CommandKind::Cancel {
                    return self.check_cancel(order.order_id);
                }
                // A different quantity: one more or one less, or a random one.
                let mut new_qty = qty;
                if new_qty == order.remaining {
                    new_qty = if order.remaining > 1 {
                        order.remaining - 1
                    } else {
                        2
                    };
                }
                self.check_modify(order.order_id, new_qty)
            }
            CommandKind::Confirm | CommandKind::Release => {
                let n = self.open_holds.len();
                let start = rng.below(n as u64) as usize;
                let hold = (0..n)
                    .map(|k| self.open_holds[(start + k) % n])
                    .find(|h| !h.busy)
                    .expect("checked above");
                self.check_hold_end(kind, hold.hold_id)
            }
        }
    }

    /// Rebuilds the lists random commands draw SKUs and locations from
    /// (within their capacity: no allocation).
    fn refresh_directory(&mut self) {
        self.skus.clear();
        let room = self.skus.capacity();
        self.skus
            .extend(self.replica.skus().map(|(sku, _)| sku).take(room));
        self.locations.clear();
        let room = self.locations.capacity();
        self.locations.extend(
            self.replica
                .locations()
                .map(|(location, _)| location)
                .take(room),
        );
        self.directory_dirty = false;
    }

    // -------------------------------------------------------------------
    // The stream and the client.

    fn on_stream(
        &mut self,
        seq: u64,
        message: &Message,
        on_outcome: &mut impl FnMut(&OutcomeReport),
    ) {
        let applied = self.replica.apply(seq, message);
        match *message {
            Message::HoldEnded(e) => {
                let cmd_seq = e.cmd_seq.get();
                if let Some(i) = self.open_holds.iter().position(|h| h.cmd_seq == cmd_seq) {
                    self.open_holds.swap_remove(i);
                    if e.outcome == hold_outcome::EXPIRED {
                        self.stats.holds_expired += 1;
                    }
                }
            }
            Message::GatewayReject(j) if j.header.origin.get() == self.origin => {
                let outcome = Outcome::GatewayRejected { reason: j.reason };
                self.resolve(j.header.client_seq.get(), seq, outcome, on_outcome);
            }
            Message::SkuDirectory(_) | Message::LocationDirectory(_) => {
                self.directory_dirty = true;
            }
            Message::SystemEvent(s) if s.code == system_code::AUTHORITY_ONLINE => {
                self.directory_dirty = true;
            }
            _ => {}
        }
        if let Applied::Event {
            answers: Some(cmd_seq),
        } = applied
        {
            let command = self.replica.command(cmd_seq).map(|c| *c.header());
            if let Some(header) = command {
                if header.origin.get() == self.origin {
                    if let Some(outcome) = outcome_of(message) {
                        self.resolve(header.client_seq.get(), cmd_seq, outcome, on_outcome);
                    }
                }
            }
        }
        if self.verify_seq == Some(seq) {
            self.verify_origin(message);
        }
    }

    /// Checks that our first acked command carries our origin.
    fn verify_origin(&mut self, message: &Message) {
        self.verify_seq = None;
        let origin = message.header().origin.get();
        if origin == self.origin {
            self.origin_verified = true;
        } else {
            self.error = Some(PosError::OriginMismatch {
                configured: self.origin,
                on_stream: origin,
            });
            self.sending = false;
        }
    }

    fn on_client(&mut self, event: ClientEvent, on_outcome: &mut impl FnMut(&OutcomeReport)) {
        match event {
            ClientEvent::Ack(ack) => {
                self.stats.acks += 1;
                if let Some(reason) = ack.reject {
                    let outcome = Outcome::GatewayRejected { reason };
                    self.resolve(ack.client_seq, ack.stream_seq, outcome, on_outcome);
                } else if !self.origin_verified && self.verify_seq.is_none() {
                    if ack.stream_seq <= self.replica.last_seq() {
                        if let Some(command) = self.replica.command(ack.stream_seq) {
                            let header = *command.header();
                            let origin = header.origin.get();
                            if origin == self.origin {
                                self.origin_verified = true;
                            } else {
                                self.error = Some(PosError::OriginMismatch {
                                    configured: self.origin,
                                    on_stream: origin,
                                });
                                self.sending = false;
                            }
                        }
                    } else {
                        self.verify_seq = Some(ack.stream_seq);
                    }
                }
            }
            ClientEvent::AckUnavailable { .. } => self.stats.acks_unavailable += 1,
            ClientEvent::Closed(error) => {
                self.sending = false;
                if error != ClientError::LoggedOut {
                    self.error = Some(PosError::Client(error));
                }
            }
            ClientEvent::LoggedIn { .. } | ClientEvent::Disconnected => {}
        }
    }

    /// Records the outcome of our command `client_seq` (once).
    fn resolve(
        &mut self,
        client_seq: u32,
        cmd_seq: u64,
        outcome: Outcome,
        on_outcome: &mut impl FnMut(&OutcomeReport),
    ) {
        let ours = self.first_client_seq != 0
            && client_seq >= self.first_client_seq
            && client_seq < self.next_client_seq;
        if !ours {
            // An earlier run of this till (same login), before a restart.
            return;
        }
        let slot = &mut self.pending[(client_seq & self.mask) as usize];
        if slot.state != SLOT_AWAITING || slot.client_seq != client_seq {
            // A `j` comes as an ack and on the stream: only the first counts.
            if !matches!(outcome, Outcome::GatewayRejected { .. }) {
                self.stats.duplicate_outcomes += 1;
            }
            return;
        }
        let pending = *slot;
        slot.state = SLOT_FREE;
        self.in_flight -= 1;
        while self.oldest != self.next_client_seq
            && self.pending[(self.oldest & self.mask) as usize].state == SLOT_FREE
        {
            self.oldest += 1;
        }
        let rtt_ns = monotonic_ns().saturating_sub(pending.sent_ns).max(1);
        self.histogram.saturating_record(rtt_ns);
        self.interval_histogram.saturating_record(rtt_ns);
        self.stats.outcomes += 1;
        self.apply_outcome(&pending, cmd_seq, outcome);
        on_outcome(&OutcomeReport {
            client_seq,
            cmd_seq,
            kind: pending.kind,
            id: pending.id,
            outcome,
            rtt_ns,
        });
    }

    /// Counts an outcome and updates our open orders and holds.
    fn apply_outcome(&mut self, pending: &Pending, cmd_seq: u64, outcome: Outcome) {
        let stats = &mut self.stats;
        match outcome {
            Outcome::Rejected { reason } => {
                stats.rejected += 1;
                stats.rejects.add(reason);
            }
            Outcome::GatewayRejected { reason } => {
                stats.gateway_rejected += 1;
                stats.gateway_rejects.add(reason);
            }
            Outcome::Filled { delta, .. } => stats.units_sold -= i64::from(delta),
            Outcome::HoldPlaced { .. } | Outcome::HoldReleased => {}
        }
        let accepted = !matches!(
            outcome,
            Outcome::Rejected { .. } | Outcome::GatewayRejected { .. }
        );
        let no_such = outcome
            == Outcome::Rejected {
                reason: reject_reason::NO_SUCH,
            };
        match pending.kind {
            CommandKind::Order => {
                if let Outcome::Filled { delta, .. } = outcome {
                    self.stats.filled += 1;
                    let order = OpenOrder {
                        order_id: pending.id,
                        remaining: delta.unsigned_abs(),
                        busy: false,
                    };
                    self.track_order(order);
                }
            }
            CommandKind::Modify | CommandKind::Cancel => {
                let cancelled = pending.kind == CommandKind::Cancel && accepted;
                if accepted {
                    if pending.kind == CommandKind::Cancel {
                        self.stats.cancelled += 1;
                    } else {
                        self.stats.modified += 1;
                    }
                }
                if let Some(i) = self
                    .open_orders
                    .iter()
                    .position(|o| o.order_id == pending.id)
                {
                    if cancelled || no_such {
                        self.open_orders.swap_remove(i);
                    } else {
                        let order = &mut self.open_orders[i];
                        order.busy = false;
                        if accepted {
                            order.remaining = pending.qty;
                        }
                    }
                }
            }
            CommandKind::Reserve => {
                if let Outcome::HoldPlaced { .. } = outcome {
                    self.stats.holds_placed += 1;
                    if self.open_holds.len() < self.open_holds_max {
                        self.open_holds.push(OpenHold {
                            hold_id: pending.id,
                            cmd_seq,
                            busy: false,
                        });
                    } else {
                        self.stats.open_holds_untracked += 1;
                    }
                }
            }
            CommandKind::Confirm | CommandKind::Release => {
                if accepted {
                    if pending.kind == CommandKind::Confirm {
                        self.stats.holds_confirmed += 1;
                    } else {
                        self.stats.holds_released += 1;
                    }
                }
                // Its `E` removed the hold; a rejected one is free again,
                // unless it is gone.
                if let Some(i) = self.open_hold_index(pending.id) {
                    if no_such {
                        self.open_holds.swap_remove(i);
                    } else {
                        self.open_holds[i].busy = false;
                    }
                }
            }
        }
    }

    /// Tracks a filled order; a full table gives up its oldest idle entry.
    fn track_order(&mut self, order: OpenOrder) {
        if self.open_orders.len() < self.open_orders_max {
            self.open_orders.push(order);
            return;
        }
        self.stats.open_orders_untracked += 1;
        if let Some(i) = self.open_orders.iter().position(|o| !o.busy) {
            self.open_orders[i] = order;
        }
    }

    fn open_order_mut(&mut self, order_id: u64) -> Option<&mut OpenOrder> {
        self.open_orders.iter_mut().find(|o| o.order_id == order_id)
    }

    fn open_hold_index(&self, hold_id: u64) -> Option<usize> {
        self.open_holds.iter().position(|h| h.hold_id == hold_id)
    }
}

/// The outcome an event that answered a command stands for.
fn outcome_of(message: &Message) -> Option<Outcome> {
    match *message {
        Message::OnHandDelta(d) => Some(Outcome::Filled {
            location: d.location.get(),
            sku: d.sku.get(),
            delta: d.delta.get(),
        }),
        Message::HoldPlaced(h) => Some(Outcome::HoldPlaced {
            location: h.location.get(),
            sku: h.sku.get(),
            qty: h.qty.get(),
            expires_at_ns: h.expires_at_ns.get(),
        }),
        Message::HoldEnded(_) => Some(Outcome::HoldReleased),
        Message::CommandRejected(j) => Some(Outcome::Rejected { reason: j.reason }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_picks_by_weight() {
        let mix: Mix = "order=3, reserve=1".parse().unwrap();
        assert_eq!(mix.order, 3);
        assert_eq!(mix.reserve, 1);
        assert_eq!(mix.modify, 0);
        let picks: Vec<CommandKind> = (0..4).map(|roll| mix.pick(roll)).collect();
        assert_eq!(
            picks,
            [
                CommandKind::Order,
                CommandKind::Order,
                CommandKind::Order,
                CommandKind::Reserve
            ]
        );
        assert!("order=x".parse::<Mix>().is_err());
        assert!("bogus=1".parse::<Mix>().is_err());
        assert!("modify=1".parse::<Mix>().is_err());
        assert!("".parse::<Mix>().is_err());
    }

    #[test]
    fn rng_is_seeded_and_in_range() {
        let mut a = Rng(7);
        let mut b = Rng(7);
        for _ in 0..1000 {
            let x = a.between(1, 3);
            assert_eq!(x, b.between(1, 3));
            assert!((1..=3).contains(&x));
            assert!(a.below(10) < 10);
            b.below(10);
        }
        assert_ne!(Rng(1).next(), Rng(2).next());
    }

    #[test]
    fn pacing_owes_one_attempt_per_interval_and_forgives_a_backlog() {
        let mut stats = PosStats::default();
        let mut load = Load {
            config: LoadConfig::new(1),
            rng: Rng(1),
            started_ns: 1_000,
            attempts: 0,
        };
        // 1000/s: one at the start, one more each millisecond.
        assert_eq!(load.due(1_000, &mut stats), 1);
        load.attempts = 1;
        assert_eq!(load.due(1_000 + 999_999, &mut stats), 0);
        assert_eq!(load.due(1_000 + 1_000_000, &mut stats), 1);
        assert_eq!(load.next_due_ns(), 1_000 + 1_000_000);
        // A second behind: only 10 ms worth is owed, the rest forgiven.
        assert_eq!(load.due(1_000 + 1_000_000_000, &mut stats), 10);
        assert_eq!(stats.pacing_dropped, 1001 - 1 - 10);
    }

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
