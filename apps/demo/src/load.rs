//! The random load generator: drives a [`Pos`] with a seeded random mix of
//! orders, modifies, cancels, reservations, confirms and releases at a
//! given rate (or as fast as the answers come back). It moved here from
//! `tally-pos` (issue 12): the till a shop runs is the store node; load is
//! for the demo, the tests and `tally-bench --scenario till-load`.
//!
//! Every command goes through [`Pos::queue`], so the generator never sends
//! what the till's replica shows would fail (those are counted in
//! [`PosStats::skipped_would_fail`](tally_pos::PosStats)).
//!
//! Realtime contract: one thread owns a generator and its till. The lists
//! the generator draws SKUs and locations from are sized to the replica's
//! limits when it first sees the directory and refreshed within that
//! capacity afterwards, so the duty cycle ([`LoadGenerator::generate`])
//! does not allocate once the directory is known.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tally_client::consumer::monotonic_ns;
use tally_pos::{CommandKind, OpenOrder, Pos, PosError, Refused, Request, PARK_NS_MAX};
use tally_runtime::rand::SplitMix64 as Rng;

/// Attempts (sent or skipped) one [`LoadGenerator::generate`] makes at most.
const ATTEMPTS_PER_POLL_MAX: u32 = 64;
/// In rate mode, sends owed from the past are forgiven beyond this much time
/// (the till fell behind, e.g. its in-flight limit was reached): no bursts.
const PACING_BACKLOG_NS: u64 = 10_000_000;

/// Relative weights of the command kinds (0 = never).
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

/// What to send, how fast.
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

/// Drives one till with random commands. See the module documentation.
#[derive(Debug)]
pub struct LoadGenerator {
    config: LoadConfig,
    rng: Rng,
    /// When the paced sending started (first poll ready to send).
    started_ns: u64,
    /// Attempts made (or forgiven) since `started_ns`.
    attempts: u64,
    pacing_dropped: u64,
    /// The directory as lists to draw from, as of `directory_version`.
    skus: Vec<u32>,
    locations: Vec<u16>,
    directory_version: Option<u64>,
}

impl LoadGenerator {
    /// Checks `config`.
    pub fn new(config: LoadConfig) -> Result<LoadGenerator, PosError> {
        if config.mix.total() == 0 || config.mix.order == 0 && config.mix.reserve == 0 {
            return Err(PosError::Config(
                "the mix needs a positive weight for order or reserve",
            ));
        }
        if config.qty_max == 0 || config.qty_max > i32::MAX as u32 {
            return Err(PosError::Config("qty_max must be 1..=2^31-1"));
        }
        if config.ttl_ms_min == 0 || config.ttl_ms_min > config.ttl_ms_max {
            return Err(PosError::Config("hold ttl must be 1 ≤ min ≤ max ms"));
        }
        if config.any_location_percent > 100 {
            return Err(PosError::Config("any_location_percent must be 0..=100"));
        }
        Ok(LoadGenerator {
            config,
            rng: Rng::new(config.seed),
            started_ns: 0,
            attempts: 0,
            pacing_dropped: 0,
            skus: Vec::new(),
            locations: Vec::new(),
            directory_version: None,
        })
    }

    pub fn config(&self) -> &LoadConfig {
        &self.config
    }

    /// Sends owed by the pacing that were dropped because the till fell
    /// more than 10 ms behind (rate mode).
    pub fn pacing_dropped(&self) -> u64 {
        self.pacing_dropped
    }

    /// Attempts due by `now_ns` (rate mode), after forgiving a backlog.
    fn due(&mut self, now_ns: u64) -> u64 {
        let rate = u128::from(self.config.rate_per_sec);
        let elapsed = u128::from(now_ns.saturating_sub(self.started_ns));
        let owed = (elapsed * rate / 1_000_000_000) as u64 + 1;
        let due = owed.saturating_sub(self.attempts);
        let backlog_max = (rate * u128::from(PACING_BACKLOG_NS) / 1_000_000_000).max(1) as u64;
        if due > backlog_max {
            self.pacing_dropped += due - backlog_max;
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

    /// How long the till may park before the next attempt is due, at most
    /// `max_ns`.
    pub fn wait_ns(&self, now_ns: u64, max_ns: u64) -> u64 {
        if self.config.rate_per_sec == 0 || self.started_ns == 0 {
            return max_ns;
        }
        max_ns.min(self.next_due_ns().saturating_sub(now_ns))
    }

    /// Attempts what the pacing (or the in-flight room) allows, when the
    /// till is ready; returns the commands sent.
    pub fn generate(&mut self, pos: &mut Pos, now_ns: u64) -> usize {
        if !pos.is_ready() {
            return 0;
        }
        if self.started_ns == 0 {
            self.started_ns = now_ns.max(1);
        }
        let due = if self.config.rate_per_sec == 0 {
            u64::from(ATTEMPTS_PER_POLL_MAX)
        } else {
            self.due(now_ns).min(u64::from(ATTEMPTS_PER_POLL_MAX))
        };
        if self.directory_version != Some(pos.directory_version()) {
            self.refresh_directory(pos);
        }
        let mut work = 0;
        for _ in 0..due {
            let Some(request) = self.random_request(pos) else {
                self.attempts += 1;
                continue;
            };
            self.attempts += 1;
            match pos.queue(request) {
                Ok(_) => work += 1,
                Err(Refused::WouldFail(_) | Refused::Busy) => {}
                Err(Refused::Full | Refused::NotReady | Refused::Closed) => break,
            }
        }
        if work > 0 {
            pos.flush();
        }
        work
    }

    /// One random request. Kinds with nothing to act on (no open order or
    /// hold) become orders; `None` while the directory is empty.
    fn random_request(&mut self, pos: &Pos) -> Option<Request> {
        let config = self.config;
        let rng = &mut self.rng;
        let mut kind = config.mix.pick(rng.next_u64());
        let orders = pos.open_order_list();
        let holds = pos.open_hold_list();
        if matches!(kind, CommandKind::Modify | CommandKind::Cancel)
            && orders.iter().all(|o| o.busy)
        {
            kind = CommandKind::Order;
        }
        if matches!(kind, CommandKind::Confirm | CommandKind::Release)
            && holds.iter().all(|h| h.busy)
        {
            kind = CommandKind::Order;
        }
        if kind == CommandKind::Order && config.mix.order == 0 {
            kind = CommandKind::Reserve;
        }
        if self.skus.is_empty() || self.locations.is_empty() {
            return None;
        }
        let sku = self.skus[rng.below(self.skus.len() as u64) as usize];
        let location = self.locations[rng.below(self.locations.len() as u64) as usize];
        let qty = rng.between(1, config.qty_max);
        Some(match kind {
            CommandKind::Order => {
                let any = rng.below(100) < u64::from(config.any_location_percent);
                let location = if any { 0 } else { location };
                Request::Order { location, sku, qty }
            }
            CommandKind::Reserve => {
                let ttl_ms = rng.between(config.ttl_ms_min, config.ttl_ms_max);
                Request::Reserve {
                    location,
                    sku,
                    qty,
                    ttl_ms,
                }
            }
            CommandKind::Modify | CommandKind::Cancel => {
                change_order(rng, orders, kind == CommandKind::Cancel, qty)
            }
            CommandKind::Confirm | CommandKind::Release => {
                let n = holds.len();
                let start = rng.below(n as u64) as usize;
                let hold = (0..n)
                    .map(|k| holds[(start + k) % n])
                    .find(|h| !h.busy)
                    .expect("checked above");
                if kind == CommandKind::Confirm {
                    Request::Confirm {
                        hold_id: hold.hold_id,
                    }
                } else {
                    Request::Release {
                        hold_id: hold.hold_id,
                    }
                }
            }
        })
    }

    /// Rebuilds the lists random commands draw SKUs and locations from. The
    /// first call sizes them to the replica's limits; later ones stay
    /// within that capacity (no allocation).
    fn refresh_directory(&mut self, pos: &Pos) {
        let replica = pos.replica();
        if self.directory_version.is_none() {
            let limits = replica.limits();
            self.skus = Vec::with_capacity(limits.skus_max as usize);
            self.locations = Vec::with_capacity(usize::from(limits.locations_max));
        }
        self.skus.clear();
        let room = self.skus.capacity();
        self.skus
            .extend(replica.skus().map(|(sku, _)| sku).take(room));
        self.locations.clear();
        let room = self.locations.capacity();
        self.locations
            .extend(replica.locations().map(|(location, _)| location).take(room));
        self.directory_version = Some(pos.directory_version());
    }

    /// Runs the till and the load until `stop` is set, `until` passes, the
    /// session ends or an error; calls `on_tick` about once a second. Then
    /// stops sending and waits (up to the till's drain timeout) for the
    /// outcomes of what is in flight. Returns whether nothing was left in
    /// flight.
    pub fn run(
        &mut self,
        pos: &mut Pos,
        stop: &AtomicBool,
        until: Option<Instant>,
        on_tick: impl FnMut(&mut Pos),
    ) -> Result<bool, PosError> {
        self.run_load(pos, stop, until, on_tick)?;
        let timeout = pos.drain_timeout();
        pos.drain(timeout)
    }

    /// [`run`](Self::run) without the drain at the end: returns when `stop`
    /// is set, `until` passes or the session ends (call [`Pos::drain`]
    /// next, or poll on).
    pub fn run_load(
        &mut self,
        pos: &mut Pos,
        stop: &AtomicBool,
        until: Option<Instant>,
        mut on_tick: impl FnMut(&mut Pos),
    ) -> Result<(), PosError> {
        const TICK_NS: u64 = 1_000_000_000;
        let mut next_tick_ns = monotonic_ns() + TICK_NS;
        while !stop.load(Ordering::Acquire)
            && until.is_none_or(|until| Instant::now() < until)
            && !pos.consumer().is_ended()
        {
            let now_ns = monotonic_ns();
            if now_ns >= next_tick_ns {
                on_tick(pos);
                next_tick_ns += TICK_NS;
                if next_tick_ns <= now_ns {
                    next_tick_ns = now_ns + TICK_NS;
                }
            }
            let work = pos.poll(now_ns)? + self.generate(pos, now_ns);
            if work == 0 {
                let max_ns = PARK_NS_MAX.min(next_tick_ns.saturating_sub(now_ns));
                let wait_ns = self.wait_ns(now_ns, max_ns);
                pos.park(Duration::from_nanos(wait_ns), &mut |_| {})?;
            }
        }
        Ok(())
    }
}

/// A modify (to a different quantity: one less, or 2 for a single unit,
/// or `qty`) or a cancel of a random idle order of `orders` (one exists).
fn change_order(rng: &mut Rng, orders: &[OpenOrder], cancel: bool, qty: u32) -> Request {
    let n = orders.len();
    let start = rng.below(n as u64) as usize;
    let order = (0..n)
        .map(|k| orders[(start + k) % n])
        .find(|o| !o.busy)
        .expect("an idle order (checked by the caller)");
    if cancel {
        return Request::Cancel {
            order_id: order.order_id,
        };
    }
    let mut new_qty = qty;
    if new_qty == order.remaining {
        new_qty = if order.remaining > 1 {
            order.remaining - 1
        } else {
            2
        };
    }
    Request::Modify {
        order_id: order.order_id,
        new_qty,
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
    fn pacing_owes_one_attempt_per_interval_and_forgives_a_backlog() {
        let mut load = LoadGenerator::new(LoadConfig::new(1)).unwrap();
        load.started_ns = 1_000;
        // 1000/s: one at the start, one more each millisecond.
        assert_eq!(load.due(1_000), 1);
        load.attempts = 1;
        assert_eq!(load.due(1_000 + 999_999), 0);
        assert_eq!(load.due(1_000 + 1_000_000), 1);
        assert_eq!(load.next_due_ns(), 1_000 + 1_000_000);
        // A second behind: only 10 ms worth is owed, the rest forgiven.
        assert_eq!(load.due(1_000 + 1_000_000_000), 10);
        assert_eq!(load.pacing_dropped(), 1001 - 1 - 10);
    }
}
