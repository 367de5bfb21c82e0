//! [`StoreNode`]: the store node's thread — the till, its jobs, the sales
//! awaiting their decision, and the link to the appliance.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use serde_json::json;
use tally_client::consumer::{monotonic_ns, RecoveryMode};
use tally_client::replica::Cell;

use super::answer::{
    answer, reason_words, refusal, refusal_with_stock, status_for, Freshness, StockLine,
};
use super::{counter, Answer, Ask, Job, JobQueue, StoreConfig};
use crate::{Outcome, OutcomeReport, Pos, PosCounterFile, PosError, Refused, Request};

mod keys;
mod sale;

use keys::{Keys, Known};

/// Jobs taken from the channel in one round at most.
const JOBS_PER_ROUND_MAX: usize = 64;
/// Longest park between rounds. A new job or a stream message ends the
/// park at once; the bound is how late a timed-out wait for a decision or
/// a change of the link is noticed.
const PARK_MAX: Duration = Duration::from_millis(10);
/// Stock lines one page holds at most.
pub const PAGE_LIMIT_MAX: u32 = 1000;

/// What a sale that was sent is waiting for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Waiting {
    Sale { qty: u32 },
    Hold { qty: u32 },
    Confirm { hold_id: u64 },
    Release { hold_id: u64 },
    Return { order_id: u64, qty: u32 },
}

/// A sent command whose asker waits for the warehouse's decision.
struct Waiter {
    client_seq: u32,
    sku: u32,
    waiting: Waiting,
    deadline: Instant,
    reply: SyncSender<Answer>,
}

/// The store node. See the module documentation of [`crate::store`].
pub struct StoreNode {
    pos: Pos,
    location_name: String,
    location: Option<u16>,
    location_missing_logged: bool,
    decision_timeout: Duration,
    hold_ttl_ms_max: u32,
    jobs: JobQueue,
    waiters: Vec<Waiter>,
    reports: Vec<OutcomeReport>,
    /// When the link went down (None: up, or never up yet).
    down_since: Option<Instant>,
    ever_up: bool,
    counters: PosCounterFile,
    /// Idempotency keys of the writes ([`keys`]).
    keys: Keys,
}

impl StoreNode {
    /// Starts the till (it connects on the first round) and takes its jobs
    /// from `jobs` (whose senders wake it); its counters go to `counters`
    /// (made with [`STORE_COUNTERS`](super::STORE_COUNTERS) as extra names).
    pub fn new(
        mut config: StoreConfig,
        jobs: JobQueue,
        counters: PosCounterFile,
    ) -> Result<StoreNode, PosError> {
        assert_eq!(counters.extra().len(), super::STORE_COUNTERS.len());
        if config.location.is_empty() || config.location.len() > 16 {
            return Err(PosError::Config(
                "--location must be a name of 1 to 16 bytes",
            ));
        }
        let in_flight_max = config.pos.in_flight_max;
        config.pos.consumer.waker = Some(jobs.waker().clone());
        let pos = Pos::new(config.pos)?;
        Ok(StoreNode {
            pos,
            location_name: config.location,
            location: None,
            location_missing_logged: false,
            decision_timeout: config.decision_timeout,
            hold_ttl_ms_max: config.hold_ttl_ms_max,
            jobs,
            waiters: Vec::with_capacity(in_flight_max),
            reports: Vec::with_capacity(in_flight_max),
            down_since: None,
            ever_up: false,
            counters,
            keys: Keys::default(),
        })
    }

    /// Serves until `stop` is set; calls `every_second` about once a
    /// second (after publishing the counters). Fails when the till does
    /// (login rejected, a state limit met, the stream's sockets).
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        mut every_second: impl FnMut(&StoreNode),
    ) -> Result<(), PosError> {
        let mut next_second = Instant::now();
        while !stop.load(Ordering::Acquire) {
            let work = self.round()?;
            self.update_link();
            if Instant::now() >= next_second {
                self.publish();
                every_second(self);
                next_second = Instant::now() + Duration::from_secs(1);
            }
            if work == 0 {
                self.park()?;
            }
        }
        self.answer_stopping();
        self.publish();
        Ok(())
    }

    /// Parks on the stream until a message arrives, a job is handed over
    /// or [`PARK_MAX`] passes.
    fn park(&mut self) -> Result<(), PosError> {
        let (pos, reports) = (&mut self.pos, &mut self.reports);
        let mut parked = Ok(());
        self.jobs
            .park_unless_job(|| parked = pos.park(PARK_MAX, &mut |report| reports.push(*report)));
        parked
    }

    /// One round: the stream and acks, decisions to answer, new jobs,
    /// waits that timed out. Returns the work done.
    pub fn round(&mut self) -> Result<usize, PosError> {
        let reports = &mut self.reports;
        let mut work = self
            .pos
            .poll_with(monotonic_ns(), |report| reports.push(*report))?;
        work += self.answer_decisions();
        if self.location.is_none() {
            self.resolve_location();
        }
        for _ in 0..JOBS_PER_ROUND_MAX {
            let Some(job) = self.jobs.try_recv() else {
                break;
            };
            self.serve(job);
            work += 1;
        }
        self.expire_waiters();
        Ok(work)
    }

    /// The till underneath.
    pub fn pos(&self) -> &Pos {
        &self.pos
    }

    /// The location's id, once the directory named it.
    pub fn location(&self) -> Option<u16> {
        self.location
    }

    /// Why the node is cut off from the appliance, or `None` when linked.
    pub fn link_down_reason(&self, now_ns: u64) -> Option<&'static str> {
        let consumer = self.pos.consumer();
        if !self.pos.client().is_ready() {
            Some("order entry is not logged in to the appliance's gateway")
        } else if consumer.is_stale(now_ns) {
            Some("the stream from the appliance has gone silent (no data, no heartbeat)")
        } else if self.pos.replica().authority_online_seq() == 0 {
            Some("the warehouse's directory has not been seen on the stream yet")
        } else if consumer.mode() != RecoveryMode::Live {
            Some("the replica is catching up with the stream")
        } else {
            None
        }
    }

    /// One line for systemd's STATUS= and the log.
    pub fn status_line(&self) -> String {
        let replica = self.pos.replica();
        let link = match self.down_since {
            Some(since) => format!("link down {:.0} s", since.elapsed().as_secs_f64()),
            None if self.ever_up => "link up".to_string(),
            None => "starting".to_string(),
        };
        let stats = self.pos.stats();
        format!(
            "store {}: {link}, seq {}, sales sent {}, filled {}, refused locally {}",
            self.location_name,
            replica.last_seq(),
            stats.sent.total(),
            stats.filled,
            stats.skipped_would_fail
        )
    }

    /// Writes every counter to the counter file.
    pub fn publish(&self) {
        let linked = u64::from(self.ever_up && self.down_since.is_none());
        self.count_set(counter::LINK_ACTIVE, linked);
        self.counters.publish(&self.pos);
    }

    fn count(&self, index: usize) {
        self.counters.extra()[index].add_shared(1);
    }

    fn count_set(&self, index: usize, value: u64) {
        self.counters.extra()[index].set(value);
    }

    fn freshness(&self) -> Freshness {
        let now_ns = monotonic_ns();
        let consumer = self.pos.consumer();
        let link_down_s = self.link_down_reason(now_ns).map(|_| {
            self.down_since
                .map_or(0.0, |since| since.elapsed().as_secs_f64())
        });
        Freshness {
            seq: self.pos.replica().last_seq(),
            lag: consumer.lag(),
            stale: consumer.is_stale(now_ns)
                || consumer.mode() != RecoveryMode::Live
                || link_down_s.is_some(),
            link_down_s,
        }
    }

    /// Logs the link's loss and return, once each.
    fn update_link(&mut self) {
        let reason = self.link_down_reason(monotonic_ns());
        match (self.down_since, reason) {
            (None, Some(reason)) if self.ever_up => {
                tracing::warn!(
                    location = self.location_name,
                    reason,
                    "cut off from the appliance: sales are refused and stock reads are served \
                     stale until the link returns"
                );
                self.down_since = Some(Instant::now());
                self.count(counter::LINK_LOSSES);
            }
            (None, None) if !self.ever_up => {
                self.ever_up = true;
                tracing::info!(
                    location = self.location_name,
                    seq = self.pos.replica().last_seq(),
                    "linked to the appliance: serving sales"
                );
            }
            (Some(since), None) => {
                tracing::info!(
                    location = self.location_name,
                    down_for_s = since.elapsed().as_secs_f64(),
                    seq = self.pos.replica().last_seq(),
                    "the link to the appliance is back: sales resume"
                );
                self.down_since = None;
            }
            _ => {}
        }
    }

    fn resolve_location(&mut self) {
        let replica = self.pos.replica();
        if replica.authority_online_seq() == 0 {
            return;
        }
        self.location = replica.location_by_name(&self.location_name);
        if self.location.is_none() && !self.location_missing_logged {
            self.location_missing_logged = true;
            tracing::error!(
                location = self.location_name,
                "the warehouse's directory has no such location: every sale is refused \
                 (check --location against the inventory's location names)"
            );
        }
    }

    // -------------------------------------------------------------------
    // Jobs.

    fn serve(&mut self, job: Job) {
        let answer = match &job.ask {
            Ask::Stock { sku } => self.stock(sku),
            Ask::StockPage { after, limit } => self.stock_page(*after, *limit),
            Ask::Health => self.health(),
            _ => match self.start_once(&job) {
                Ok((client_seq, sku, waiting)) => {
                    self.waiters.push(Waiter {
                        client_seq,
                        sku,
                        waiting,
                        deadline: Instant::now() + self.decision_timeout,
                        reply: job.reply,
                    });
                    return;
                }
                Err(answer) => answer,
            },
        };
        // The asker may have given up: nothing to do then.
        let _ = job.reply.try_send(answer);
    }

    /// [`start`](Self::start), unless the job's idempotency key was seen:
    /// then its answer (or, while it awaits its decision, a 202), nothing
    /// sent.
    fn start_once(&mut self, job: &Job) -> Result<(u32, u32, Waiting), Answer> {
        let Some(key) = &job.key else {
            return self.start(&job.ask);
        };
        match self.keys.known(key) {
            Known::New => {
                let (client_seq, sku, waiting) = self.start(&job.ask)?;
                self.keys.sent(key, client_seq, sku, waiting);
                Ok((client_seq, sku, waiting))
            }
            Known::Answer(answer) => {
                self.count(counter::IDEMPOTENT_REPLAYS);
                Err(answer)
            }
            Known::Pending => {
                self.count(counter::IDEMPOTENT_REPLAYS);
                let message = format!(
                    "Idempotency-Key {:?} was sent and awaits its decision: nothing sent again; \
                     retry with the same key for the answer",
                    key.key
                );
                let extra = json!({ "decided": false });
                Err(answer(202, message, extra, self.freshness()))
            }
            Known::Mismatch(first) => Err(refusal(
                422,
                "key_reused",
                format!(
                    "Idempotency-Key {:?} was used with another request ({first}): one key, \
                     one request",
                    key.key
                ),
                self.freshness(),
            )),
        }
    }

    /// Idempotency keys held (decided and pending).
    pub fn keys_held(&self) -> usize {
        self.keys.len()
    }

    fn health(&self) -> Answer {
        let fresh = self.freshness();
        let extra = json!({ "location": self.location_name, "location_id": self.location });
        match self.link_down_reason(monotonic_ns()) {
            None if self.location.is_some() => {
                answer(200, "linked to the appliance".to_string(), extra, fresh)
            }
            None => answer(
                503,
                format!("location {} is not in the directory", self.location_name),
                extra,
                fresh,
            ),
            Some(reason) => answer(503, format!("cut off: {reason}"), extra, fresh),
        }
    }

    /// The location, or the refusal that says why it is not known yet.
    fn known_location(&self) -> Result<u16, Answer> {
        self.location.ok_or_else(|| {
            let message = if self.pos.replica().authority_online_seq() == 0 {
                "not ready: the warehouse's directory has not been seen yet".to_string()
            } else {
                format!(
                    "location {} is not in the warehouse's directory",
                    self.location_name
                )
            };
            refusal(503, "not_ready", message, self.freshness())
        })
    }

    fn sku(&self, symbol: &str) -> Result<u32, Answer> {
        self.pos.replica().sku_by_symbol(symbol).ok_or_else(|| {
            let message = format!("unknown SKU {symbol:?}: the directory has no such symbol");
            refusal(404, "unknown_sku", message, self.freshness())
        })
    }

    fn cell(&self, location: u16, sku: u32) -> Cell {
        self.pos.replica().cell(location, sku).unwrap_or_default()
    }

    fn symbol(&self, sku: u32) -> String {
        let symbol = self.pos.replica().symbol(sku).unwrap_or(b"?");
        String::from_utf8_lossy(symbol).into_owned()
    }

    fn stock(&self, symbol: &str) -> Answer {
        self.count(counter::READS);
        let fresh = self.freshness();
        if fresh.stale {
            self.count(counter::READS_STALE);
        }
        let (location, sku) = match (self.known_location(), self.sku(symbol)) {
            (Ok(location), Ok(sku)) => (location, sku),
            (Err(answer), _) | (_, Err(answer)) => return answer,
        };
        let line = StockLine {
            location: &self.location_name,
            sku: symbol,
            cell: self.cell(location, sku),
        };
        // The staleness travels in the answer (`stale`, `link_down_s`);
        // whoever shows it to a person adds it once.
        answer(200, line.sentence(), line.json(), fresh)
    }

    fn stock_page(&self, after: u32, limit: u32) -> Answer {
        self.count(counter::READS);
        let fresh = self.freshness();
        if fresh.stale {
            self.count(counter::READS_STALE);
        }
        let location = match self.known_location() {
            Ok(location) => location,
            Err(answer) => return answer,
        };
        let limit = limit.clamp(1, PAGE_LIMIT_MAX);
        let replica = self.pos.replica();
        let end = after.saturating_add(limit).min(replica.sku_count());
        let items: Vec<serde_json::Value> = (after..end)
            .filter_map(|position| replica.sku_at(position))
            .map(|(sku, symbol)| {
                let symbol = String::from_utf8_lossy(symbol);
                let cell = self.cell(location, sku);
                StockLine {
                    location: &self.location_name,
                    sku: &symbol,
                    cell,
                }
                .json()
            })
            .collect();
        let next = (end < replica.sku_count()).then_some(end);
        let message = format!("{} SKUs at {}", items.len(), self.location_name);
        answer(200, message, json!({ "items": items, "next": next }), fresh)
    }
}
