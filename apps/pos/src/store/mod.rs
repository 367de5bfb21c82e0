//! The store node (`tally-pos --location NAME`): one store's till server.
//!
//! A [`StoreNode`] owns a [`Pos`](crate::Pos) — its own replica of the
//! stream and its order-entry login — and serves the checkouts of one
//! location:
//!
//! - over a local HTTP port ([`http`]): the order, hold and return subset
//!   of the HTTP API plus stock reads, JSON in and out;
//! - to a person at the till ([`tty`]): type or scan `SKU [QTY]`, see the
//!   outcome and the stock left at once.
//!
//! **Every sale is checked against the replica first**: a SKU the
//! directory does not know, a quantity the location does not have, a hold
//! or order that is not open is refused on the spot with the reason and
//! the stock the replica shows — nothing is sent, no round trip
//! (`store.sales_refused_locally`). A sale that passes is sent through the
//! gateway and its answer waits for the warehouse's decision on the
//! stream, up to `decision_timeout`.
//!
//! **Cut off from the appliance** (order entry not logged in, or the
//! stream silent past its stale timeout) the node keeps answering stock
//! reads from its replica, marked `"stale": true` with how long the link
//! has been down; it refuses sales with 503 and the reason
//! (`store.sales_refused_link_down`); it logs the loss once and the return
//! once. It recovers by itself: the client reconnects and resends what was
//! never sequenced, the consumer fills the gap by re-request or replay.
//!
//! Threads: the node's own thread owns the `Pos` and answers every
//! [`Job`]; HTTP workers and the interactive till only parse, send a job
//! over a bounded channel (full: 503, counted in `store.requests_busy`) and
//! wait for its [`Answer`]. Handing over a job wakes the node (a
//! [`Waker`] watched in its stream socket's ring), so a job is picked up at
//! once, not when the node's park (at most 10 ms) times out. Off the order
//! path of the appliance; the node's own duty cycle allocates only to build
//! answers.

mod answer;
pub mod http;
mod node;
pub mod tty;

use std::sync::mpsc::{Receiver, SendError, SyncSender, TrySendError};
use std::time::Duration;

use tally_runtime::wake::Waker;

use crate::PosConfig;

pub use answer::reason_words;
pub use node::StoreNode;

/// What a checkout or the person at the till asks the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// One SKU's stock at this location.
    Stock { sku: String },
    /// This location's stock, SKUs in directory order from position
    /// `after` on, at most `limit`.
    StockPage { after: u32, limit: u32 },
    /// Sell `qty` of `sku` here (an order for this location).
    Sale { sku: String, qty: u32 },
    /// Hold `qty` of `sku` here for `ttl_ms`.
    Hold { sku: String, qty: u32, ttl_ms: u32 },
    /// Our hold becomes a sale.
    Confirm { hold_id: u64 },
    /// Release our hold.
    Release { hold_id: u64 },
    /// A customer brings back `qty` units of our order `order_id` (a modify
    /// down, or a cancel of all that remains).
    Return { order_id: u64, qty: u32 },
    /// Whether the node is linked to the appliance, and its seq.
    Health,
}

/// The node's answer: an HTTP status and a JSON body. Every body has
/// `message` (a sentence for a person) and `stale`; sales that failed have
/// `error` too.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
    /// Seconds for a `Retry-After` header (503 answers).
    pub retry_after_s: Option<u32>,
}

/// An [`Ask`] and where its [`Answer`] goes.
pub struct Job {
    pub ask: Ask,
    pub reply: SyncSender<Answer>,
    /// A write's idempotency key: a retry with the same key gets the first
    /// attempt's answer, nothing sent twice.
    pub key: Option<IdempotencyKey>,
}

/// An `Idempotency-Key` and the request it came with (method, path and
/// body: a key is good for one request only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub request: String,
}

/// Longest `Idempotency-Key` (as the HTTP service's).
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 64;

/// Everything a store node needs.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The till underneath (its login must have the `pos` role).
    pub pos: PosConfig,
    /// The location this node serves, by its name in the directory.
    pub location: String,
    /// How long a sale's answer waits for the warehouse's decision; after
    /// that it answers 202 (sent, not decided yet).
    pub decision_timeout: Duration,
    /// Jobs waiting for the node at most (HTTP workers and the till).
    pub jobs_max: usize,
    /// Longest hold a checkout may ask for.
    pub hold_ttl_ms_max: u32,
}

impl StoreConfig {
    /// Defaults: decisions awaited 5 s, 256 jobs queued, holds up to 1 h.
    pub fn new(pos: PosConfig, location: &str) -> StoreConfig {
        StoreConfig {
            pos,
            location: location.to_string(),
            decision_timeout: Duration::from_secs(5),
            jobs_max: 256,
            hold_ttl_ms_max: 3_600_000,
        }
    }
}

/// The node's own counters, after the till's in its counter file.
/// `store.link_active` (1 while linked) is a gauge.
pub const STORE_COUNTERS: &[&str] = &[
    "store.sales_requested",
    "store.sales_filled",
    "store.sales_refused_locally",
    "store.sales_rejected",
    "store.sales_refused_link_down",
    "store.decision_timeouts",
    "store.reads",
    "store.reads_stale",
    "store.requests_refused",
    "store.requests_busy",
    "store.link_active",
    "store.link_losses",
    "store.idempotent_replays",
];

/// Index of each of [`STORE_COUNTERS`] (in [`PosCounterFile::extra`](crate::PosCounterFile::extra)).
pub mod counter {
    pub const SALES_REQUESTED: usize = 0;
    pub const SALES_FILLED: usize = 1;
    pub const SALES_REFUSED_LOCALLY: usize = 2;
    pub const SALES_REJECTED: usize = 3;
    pub const SALES_REFUSED_LINK_DOWN: usize = 4;
    pub const DECISION_TIMEOUTS: usize = 5;
    pub const READS: usize = 6;
    pub const READS_STALE: usize = 7;
    pub const REQUESTS_REFUSED: usize = 8;
    pub const REQUESTS_BUSY: usize = 9;
    pub const LINK_ACTIVE: usize = 10;
    pub const LINK_LOSSES: usize = 11;
    pub const IDEMPOTENT_REPLAYS: usize = 12;
}

/// A bounded job channel (`config.jobs_max` jobs): the senders' end and
/// the node's end.
pub fn job_channel(config: &StoreConfig) -> std::io::Result<(JobSender, JobQueue)> {
    job_queue(config.jobs_max)
}

/// A job channel of `capacity` jobs (at least 1) whose senders wake the
/// node.
pub fn job_queue(capacity: usize) -> std::io::Result<(JobSender, JobQueue)> {
    let (sender, jobs) = std::sync::mpsc::sync_channel(capacity.max(1));
    let waker = Waker::new()?;
    let queue = JobQueue {
        jobs,
        waker: waker.clone(),
        next: None,
    };
    Ok((JobSender { sender, waker }, queue))
}

/// The senders' end of the job channel (the HTTP port's workers, the
/// interactive till): each job handed over wakes the node.
#[derive(Clone)]
pub struct JobSender {
    sender: SyncSender<Job>,
    waker: Waker,
}

impl JobSender {
    /// Hands over `job` unless the channel is full or the node is gone.
    pub fn try_send(&self, job: Job) -> Result<(), TrySendError<Job>> {
        self.sender.try_send(job)?;
        self.waker.wake();
        Ok(())
    }

    /// Hands over `job`, waiting while the channel is full; fails only when
    /// the node is gone.
    pub fn send(&self, job: Job) -> Result<(), SendError<Job>> {
        self.sender.send(job)?;
        self.waker.wake();
        Ok(())
    }
}

/// The node's end of the job channel.
pub struct JobQueue {
    jobs: Receiver<Job>,
    waker: Waker,
    /// A job taken by [`has_job`](Self::has_job) and not yet served.
    next: Option<Job>,
}

impl JobQueue {
    /// The next job, if one is waiting.
    pub fn try_recv(&mut self) -> Option<Job> {
        self.next.take().or_else(|| self.jobs.try_recv().ok())
    }

    /// Runs `park` (which blocks until the node's ring wakes or times out)
    /// unless a job is waiting. The waker is marked parked before the
    /// check, so a job handed over meanwhile wakes the park; a job the
    /// check took stays first in line.
    pub fn park_unless_job(&mut self, park: impl FnOnce()) {
        let (jobs, next) = (&self.jobs, &mut self.next);
        self.waker.park_with(
            || {
                if next.is_none() {
                    *next = jobs.try_recv().ok();
                }
                next.is_some()
            },
            park,
        );
    }

    /// What the senders wake.
    pub fn waker(&self) -> &Waker {
        &self.waker
    }
}
