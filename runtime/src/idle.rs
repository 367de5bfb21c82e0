//! Idle strategies: what a loop does when a duty cycle did no work.
//!
//! Every tally loop runs `let work = loop.poll(now_ns); idler.idle(work);`.
//! The strategy decides how eagerly the loop comes back, trading latency for
//! CPU (after Aeron's `IdleStrategy` family):
//!
//! - [`IdleStrategy::BusySpin`]: never gives up the core; one
//!   [`core::hint::spin_loop`] per idle cycle. For an isolated core only.
//! - [`IdleStrategy::Yield`]: [`std::thread::yield_now`] per idle cycle. Lets
//!   other runnable threads on the same core run, still burns the core when
//!   nothing else wants it.
//! - [`IdleStrategy::BackOff`]: spin up to `max_spins` times, then yield up to
//!   `max_yields` times, and go on yielding until `busy_window_ns` has passed
//!   since the last cycle that did work; then park for `min_park_ns`, doubling
//!   on every further idle cycle up to `max_park_ns`. Any cycle with work
//!   starts over. This is the one for a shared laptop core or a low-rate loop:
//!   a request that follows the last one within the window (a till waiting
//!   for its ack and sending the next order) is picked up by a loop that is
//!   still polling, without a wake-up (on a small VM, waking a parked thread
//!   costs tens of microseconds), while a loop that saw nothing for longer
//!   parks and costs nothing.
//!
//! A loop that owns an io_uring should not sleep in `park_timeout`: it should
//! wait in `io_uring_enter` so that a completion wakes it at once. For that,
//! [`Idler::idle_with`] hands the park duration to a closure instead of
//! parking, and [`Idler::park_ns`] says ahead of time whether (and how long)
//! the next idle cycle would park.
//!
//! Realtime contract: [`Idler::idle`] and [`Idler::idle_with`] never allocate,
//! never lock and never log. A parked loop can be woken early with
//! [`std::thread::Thread::unpark`].

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How a loop waits when a cycle did no work. Build an [`Idler`] from it with
/// [`IdleStrategy::idler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleStrategy {
    /// Spin with a CPU pause hint; lowest latency, one full core per loop.
    BusySpin,
    /// Yield the core to the scheduler on every idle cycle.
    Yield,
    /// Spin, then yield, then park with a doubling, capped duration.
    BackOff {
        /// Idle cycles spent spinning before yielding.
        max_spins: u32,
        /// Idle cycles spent yielding before parking.
        max_yields: u32,
        /// First park duration, nanoseconds (must be at least 1).
        min_park_ns: u64,
        /// Cap on the park duration, nanoseconds (at least `min_park_ns`).
        max_park_ns: u64,
        /// After a cycle with work, keep yielding (never park) until this
        /// long has passed since it, nanoseconds; 0 = only the counts.
        busy_window_ns: u64,
    },
}

impl IdleStrategy {
    /// Back-off with 100 spins, 10 yields, more yields until 200 µs have
    /// passed since the last work, then parks from 1 µs doubling to 10 ms.
    ///
    /// The window: a till that waits for its ack sends its next order some
    /// 10–40 µs after the ack left (its own wake-up and send on loopback);
    /// a loop still yielding then finds it in its next cycle, where a parked
    /// one needed a wake-up through the scheduler (measured on the 2-core
    /// VM: request/response round trips at a fraction of the rate, p50
    /// doubled). 200 µs covers several such gaps, and a loop that saw no
    /// work for that long parks: an idle appliance wakes at most once per
    /// `max_park_ns` per loop. Every appliance loop parks in its own
    /// io_uring or eventfd, so a completion or a wake-up ends the park at
    /// once: the cap bounds only how late timers (heartbeats, deadlines) run
    /// and how often an idle loop wakes for nothing (100 times a second: an
    /// idle appliance costs well under 1 % of a core).
    pub const DEFAULT_BACK_OFF: IdleStrategy = IdleStrategy::BackOff {
        max_spins: 100,
        max_yields: 10,
        min_park_ns: 1_000,
        max_park_ns: 10_000_000,
        busy_window_ns: 200_000,
    };

    /// The names [`FromStr`] accepts and [`fmt::Display`] writes.
    pub const NAMES: [&'static str; 3] = ["busy-spin", "yield", "back-off"];

    /// A fresh idler (in the not-idle state) that follows this strategy.
    ///
    /// # Panics
    ///
    /// For a `BackOff` with `min_park_ns == 0` or `min_park_ns > max_park_ns`
    /// (a configuration bug; [`FromStr`] rejects such values).
    pub fn idler(self) -> Idler {
        if let IdleStrategy::BackOff {
            min_park_ns,
            max_park_ns,
            ..
        } = self
        {
            assert!(min_park_ns > 0, "back-off: min_park_ns must be at least 1");
            assert!(
                min_park_ns <= max_park_ns,
                "back-off: min_park_ns {min_park_ns} exceeds max_park_ns {max_park_ns}"
            );
        }
        Idler {
            strategy: self,
            state: IdleState::NotIdle,
            spins: 0,
            yields: 0,
            park_ns: self.min_park_ns(),
            origin: Instant::now(),
            last_work_ns: 0,
        }
    }

    fn min_park_ns(self) -> u64 {
        match self {
            IdleStrategy::BackOff { min_park_ns, .. } => min_park_ns,
            IdleStrategy::BusySpin | IdleStrategy::Yield => 0,
        }
    }
}

/// Writes `busy-spin`, `yield`, `back-off` (the default back-off), or
/// `back-off(max_spins=…,max_yields=…,min_park_ns=…,max_park_ns=…,busy_window_ns=…)` for other
/// parameters; [`FromStr`] reads every one of these back.
impl fmt::Display for IdleStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IdleStrategy::BusySpin => f.write_str("busy-spin"),
            IdleStrategy::Yield => f.write_str("yield"),
            IdleStrategy::BackOff { .. } if *self == IdleStrategy::DEFAULT_BACK_OFF => {
                f.write_str("back-off")
            }
            IdleStrategy::BackOff {
                max_spins,
                max_yields,
                min_park_ns,
                max_park_ns,
                busy_window_ns,
            } => write!(
                f,
                "back-off(max_spins={max_spins},max_yields={max_yields},\
                 min_park_ns={min_park_ns},max_park_ns={max_park_ns},\
                 busy_window_ns={busy_window_ns})"
            ),
        }
    }
}

/// Why a string is not an [`IdleStrategy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseIdleStrategyError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for ParseIdleStrategyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid idle strategy {:?}: {}; expected one of busy-spin, yield, back-off \
             (or back-off(max_spins=N,max_yields=N,min_park_ns=N,max_park_ns=N,\
             busy_window_ns=N))",
            self.input, self.reason
        )
    }
}

impl std::error::Error for ParseIdleStrategyError {}

/// Parses `busy-spin`, `yield`, `back-off` (the default parameters) or
/// `back-off(key=value,…)` where the keys are `max_spins`, `max_yields`,
/// `min_park_ns`, `max_park_ns`, `busy_window_ns`; a key left out keeps its
/// default.
impl FromStr for IdleStrategy {
    type Err = ParseIdleStrategyError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |reason| ParseIdleStrategyError {
            input: input.to_owned(),
            reason,
        };
        let text = input.trim();
        match text {
            "busy-spin" => return Ok(IdleStrategy::BusySpin),
            "yield" => return Ok(IdleStrategy::Yield),
            "back-off" => return Ok(IdleStrategy::DEFAULT_BACK_OFF),
            _ => {}
        }
        let params = text
            .strip_prefix("back-off(")
            .and_then(|rest| rest.strip_suffix(')'))
            .ok_or_else(|| error("unknown name"))?;
        let IdleStrategy::BackOff {
            mut max_spins,
            mut max_yields,
            mut min_park_ns,
            mut max_park_ns,
            mut busy_window_ns,
        } = IdleStrategy::DEFAULT_BACK_OFF
        else {
            unreachable!("DEFAULT_BACK_OFF is a BackOff");
        };
        for pair in params.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| error("back-off parameter without '='"))?;
            let value = value.trim();
            match key.trim() {
                "max_spins" => {
                    max_spins = value.parse().map_err(|_| error("max_spins is not a u32"))?
                }
                "max_yields" => {
                    max_yields = value
                        .parse()
                        .map_err(|_| error("max_yields is not a u32"))?
                }
                "min_park_ns" => {
                    min_park_ns = value
                        .parse()
                        .map_err(|_| error("min_park_ns is not a u64"))?
                }
                "max_park_ns" => {
                    max_park_ns = value
                        .parse()
                        .map_err(|_| error("max_park_ns is not a u64"))?
                }
                "busy_window_ns" => {
                    busy_window_ns = value
                        .parse()
                        .map_err(|_| error("busy_window_ns is not a u64"))?
                }
                _ => return Err(error("unknown back-off parameter")),
            }
        }
        if min_park_ns == 0 {
            return Err(error("min_park_ns must be at least 1"));
        }
        if min_park_ns > max_park_ns {
            return Err(error("min_park_ns exceeds max_park_ns"));
        }
        Ok(IdleStrategy::BackOff {
            max_spins,
            max_yields,
            min_park_ns,
            max_park_ns,
            busy_window_ns,
        })
    }
}

/// What the last idle cycle did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleState {
    /// The last cycle did work (or the idler is new / was reset).
    NotIdle,
    /// The last idle cycle spun.
    Spinning,
    /// The last idle cycle yielded.
    Yielding,
    /// The last idle cycle parked (or handed its duration to `idle_with`).
    Parking,
}

/// The per-loop state of an [`IdleStrategy`]. Owned by one loop; not shared.
#[derive(Clone, Debug)]
pub struct Idler {
    strategy: IdleStrategy,
    state: IdleState,
    /// Idle cycles spent spinning since the last reset.
    spins: u32,
    /// Idle cycles spent yielding since the last reset.
    yields: u32,
    /// Duration of the next park (BackOff only), nanoseconds.
    park_ns: u64,
    /// The clock [`Idler::idle_with`] reads (callers of [`Idler::idle_at`]
    /// pass their own).
    origin: Instant,
    /// When the last cycle with work ended, on the caller's clock.
    last_work_ns: u64,
}

/// The action one idle cycle takes; computed by [`Idler::step`], then done.
enum Action {
    Spin,
    Yield,
    Park(Duration),
}

impl Idler {
    /// The strategy this idler follows.
    pub fn strategy(&self) -> IdleStrategy {
        self.strategy
    }

    /// Call once per loop cycle with the work that cycle did: `work_count > 0`
    /// resets the back-off; `0` spins, yields or parks (with
    /// [`std::thread::park_timeout`]) as the strategy says.
    #[inline]
    pub fn idle(&mut self, work_count: usize) {
        self.idle_with(work_count, std::thread::park_timeout);
    }

    /// Like [`Idler::idle`], but in the park phase calls `park` with the
    /// duration instead of parking the thread: a loop with an io_uring passes
    /// a closure that waits in `submit_and_wait` with that timeout, so a
    /// completion ends the wait early. `park` is not called in the spin or
    /// yield phases, nor for `BusySpin`/`Yield`.
    ///
    /// Reads the monotonic clock for the busy window; a runner that reads
    /// it anyway calls [`Idler::idle_at`] instead.
    #[inline]
    pub fn idle_with(&mut self, work_count: usize, park: impl FnOnce(Duration)) {
        let now_ns = self.origin.elapsed().as_nanos() as u64;
        self.idle_at(work_count, now_ns, park);
    }

    /// Like [`Idler::idle_with`], with the time of the cycle given: `now_ns`
    /// on any monotonic clock, the same one on every call.
    #[inline]
    pub fn idle_at(&mut self, work_count: usize, now_ns: u64, park: impl FnOnce(Duration)) {
        if work_count > 0 {
            self.reset();
            self.last_work_ns = now_ns;
            return;
        }
        match self.step(now_ns) {
            Action::Spin => core::hint::spin_loop(),
            Action::Yield => std::thread::yield_now(),
            Action::Park(duration) => park(duration),
        }
    }

    /// Back to the not-idle state: the next idle cycle starts spinning again
    /// and the park duration starts again at its minimum.
    #[inline]
    pub fn reset(&mut self) {
        self.state = IdleState::NotIdle;
        self.spins = 0;
        self.yields = 0;
        self.park_ns = self.strategy.min_park_ns();
    }

    /// How long the next idle cycle would park, in nanoseconds; `0` when it
    /// would spin or yield instead. A loop that waits on its own io_uring
    /// can use this as the `io_uring_enter` timeout.
    /// (Not counting the busy window, which needs the time.)
    #[inline]
    pub fn park_ns(&self) -> u64 {
        match self.strategy {
            IdleStrategy::BackOff {
                max_spins,
                max_yields,
                ..
            } if self.spins >= max_spins && self.yields >= max_yields => self.park_ns,
            _ => 0,
        }
    }

    /// What the last idle cycle did.
    #[inline]
    pub fn state(&self) -> IdleState {
        self.state
    }

    /// Advances the state machine by one idle cycle and says what to do.
    #[inline]
    fn step(&mut self, now_ns: u64) -> Action {
        match self.strategy {
            IdleStrategy::BusySpin => {
                self.state = IdleState::Spinning;
                Action::Spin
            }
            IdleStrategy::Yield => {
                self.state = IdleState::Yielding;
                Action::Yield
            }
            IdleStrategy::BackOff {
                max_spins,
                max_yields,
                max_park_ns,
                busy_window_ns,
                ..
            } => {
                if self.spins < max_spins {
                    self.spins += 1;
                    self.state = IdleState::Spinning;
                    Action::Spin
                } else if self.yields < max_yields
                    || (self.state != IdleState::Parking
                        && now_ns.saturating_sub(self.last_work_ns) < busy_window_ns)
                {
                    self.yields = self.yields.saturating_add(1);
                    self.state = IdleState::Yielding;
                    Action::Yield
                } else {
                    let park_ns = self.park_ns;
                    debug_assert!(park_ns > 0 && park_ns <= max_park_ns);
                    self.park_ns = park_ns.saturating_mul(2).min(max_park_ns);
                    self.state = IdleState::Parking;
                    Action::Park(Duration::from_nanos(park_ns))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn back_off(spins: u32, yields: u32, min_ns: u64, max_ns: u64) -> IdleStrategy {
        IdleStrategy::BackOff {
            max_spins: spins,
            max_yields: yields,
            min_park_ns: min_ns,
            max_park_ns: max_ns,
            busy_window_ns: 0,
        }
    }

    fn with_window(strategy: IdleStrategy, window_ns: u64) -> IdleStrategy {
        match strategy {
            IdleStrategy::BackOff {
                max_spins,
                max_yields,
                min_park_ns,
                max_park_ns,
                ..
            } => IdleStrategy::BackOff {
                max_spins,
                max_yields,
                min_park_ns,
                max_park_ns,
                busy_window_ns: window_ns,
            },
            other => other,
        }
    }

    /// Runs one idle cycle and returns (state after, park duration if parked).
    fn cycle(idler: &mut Idler) -> (IdleState, Option<u64>) {
        let mut parked = None;
        idler.idle_with(0, |d| parked = Some(d.as_nanos() as u64));
        (idler.state(), parked)
    }

    #[test]
    fn back_off_spins_then_yields_then_parks_doubling_to_cap() {
        let mut idler = back_off(3, 2, 1_000, 5_000).idler();
        assert_eq!(idler.state(), IdleState::NotIdle);
        for _ in 0..3 {
            assert_eq!(idler.park_ns(), 0);
            assert_eq!(cycle(&mut idler), (IdleState::Spinning, None));
        }
        for _ in 0..2 {
            assert_eq!(idler.park_ns(), 0);
            assert_eq!(cycle(&mut idler), (IdleState::Yielding, None));
        }
        for expected_ns in [1_000, 2_000, 4_000, 5_000, 5_000, 5_000] {
            assert_eq!(idler.park_ns(), expected_ns);
            assert_eq!(cycle(&mut idler), (IdleState::Parking, Some(expected_ns)));
        }
    }

    #[test]
    fn work_resets_back_off_to_spinning_and_minimum_park() {
        let mut idler = back_off(1, 1, 10, 1_000).idler();
        for _ in 0..6 {
            cycle(&mut idler);
        }
        assert_eq!(idler.state(), IdleState::Parking);
        assert_eq!(idler.park_ns(), 160);

        idler.idle_with(5, |_| panic!("a cycle with work must not park"));
        assert_eq!(idler.state(), IdleState::NotIdle);
        assert_eq!(idler.park_ns(), 0);
        assert_eq!(cycle(&mut idler), (IdleState::Spinning, None));
        assert_eq!(cycle(&mut idler), (IdleState::Yielding, None));
        assert_eq!(cycle(&mut idler), (IdleState::Parking, Some(10)));

        idler.reset();
        assert_eq!(idler.state(), IdleState::NotIdle);
        assert_eq!(cycle(&mut idler), (IdleState::Spinning, None));
    }

    /// Runs one idle cycle at `now_ns` and returns what it did.
    fn cycle_at(idler: &mut Idler, now_ns: u64) -> (IdleState, Option<u64>) {
        let mut parked = None;
        idler.idle_at(0, now_ns, |d| parked = Some(d.as_nanos() as u64));
        (idler.state(), parked)
    }

    #[test]
    fn back_off_keeps_yielding_within_the_busy_window_after_work() {
        let mut idler = with_window(back_off(1, 1, 10, 40), 1_000).idler();
        idler.idle_at(3, 5_000, |_| panic!("work never parks"));
        assert_eq!(cycle_at(&mut idler, 5_010), (IdleState::Spinning, None));
        // The counts are spent, but the last work was under 1 µs ago.
        for now_ns in [5_020, 5_100, 5_500, 5_999] {
            assert_eq!(cycle_at(&mut idler, now_ns), (IdleState::Yielding, None));
        }
        // The window has passed: park, doubling as before.
        assert_eq!(cycle_at(&mut idler, 6_000), (IdleState::Parking, Some(10)));
        assert_eq!(cycle_at(&mut idler, 6_100), (IdleState::Parking, Some(20)));
        // Once parked, it stays parked until work comes, whatever the clock.
        idler.reset();
        assert_eq!(cycle_at(&mut idler, 6_200), (IdleState::Spinning, None));
        assert_eq!(cycle_at(&mut idler, 6_300), (IdleState::Yielding, None));
        assert_eq!(cycle_at(&mut idler, 6_400), (IdleState::Parking, Some(10)));
        // Work restarts the window.
        idler.idle_at(1, 10_000, |_| panic!("work never parks"));
        assert_eq!(cycle_at(&mut idler, 10_001), (IdleState::Spinning, None));
        assert_eq!(cycle_at(&mut idler, 10_500), (IdleState::Yielding, None));
        assert_eq!(cycle_at(&mut idler, 10_999), (IdleState::Yielding, None));
        assert_eq!(cycle_at(&mut idler, 11_000), (IdleState::Parking, Some(10)));
    }

    #[test]
    fn back_off_without_spins_or_yields_parks_at_once() {
        let mut idler = back_off(0, 0, 7, 7).idler();
        assert_eq!(idler.park_ns(), 7);
        assert_eq!(cycle(&mut idler), (IdleState::Parking, Some(7)));
        assert_eq!(cycle(&mut idler), (IdleState::Parking, Some(7)));
    }

    #[test]
    fn park_doubling_saturates_instead_of_overflowing() {
        let mut idler = back_off(0, 0, u64::MAX / 2 + 1, u64::MAX).idler();
        assert_eq!(cycle(&mut idler).1, Some(u64::MAX / 2 + 1));
        assert_eq!(idler.park_ns(), u64::MAX);
    }

    #[test]
    fn busy_spin_and_yield_never_park() {
        let mut spin = IdleStrategy::BusySpin.idler();
        let mut yielder = IdleStrategy::Yield.idler();
        for _ in 0..1_000 {
            assert_eq!(cycle(&mut spin), (IdleState::Spinning, None));
            assert_eq!(spin.park_ns(), 0);
        }
        for _ in 0..10 {
            assert_eq!(cycle(&mut yielder), (IdleState::Yielding, None));
            assert_eq!(yielder.park_ns(), 0);
        }
        spin.idle(1);
        assert_eq!(spin.state(), IdleState::NotIdle);
    }

    #[test]
    fn idle_parks_the_thread_in_the_park_phase() {
        // Parks for real (1 µs, then 2 µs): returns promptly on any host.
        let mut idler = back_off(0, 0, 1_000, 2_000).idler();
        idler.idle(0);
        idler.idle(0);
        assert_eq!(idler.state(), IdleState::Parking);
    }

    #[test]
    fn names_parse_and_display_round_trip() {
        assert_eq!("busy-spin".parse(), Ok(IdleStrategy::BusySpin));
        assert_eq!("yield".parse(), Ok(IdleStrategy::Yield));
        assert_eq!("back-off".parse(), Ok(IdleStrategy::DEFAULT_BACK_OFF));
        assert_eq!(" back-off ".parse(), Ok(IdleStrategy::DEFAULT_BACK_OFF));
        for strategy in [
            IdleStrategy::BusySpin,
            IdleStrategy::Yield,
            IdleStrategy::DEFAULT_BACK_OFF,
            back_off(5, 6, 7, 8),
        ] {
            assert_eq!(strategy.to_string().parse(), Ok(strategy));
        }
        assert_eq!(IdleStrategy::DEFAULT_BACK_OFF.to_string(), "back-off");
        for name in IdleStrategy::NAMES {
            assert_eq!(name.parse::<IdleStrategy>().unwrap().to_string(), name);
        }
        assert_eq!(
            "back-off(max_spins=1, max_park_ns=2000000)".parse(),
            Ok(with_window(back_off(1, 10, 1_000, 2_000_000), 200_000))
        );
        assert_eq!(
            "back-off(busy_window_ns=0)".parse(),
            Ok(back_off(100, 10, 1_000, 10_000_000))
        );
    }

    #[test]
    fn bad_names_and_parameters_are_rejected_with_the_allowed_names() {
        for bad in [
            "",
            "spin",
            "Back-Off",
            "back-off(",
            "back-off(max_spins)",
            "back-off(max_spins=-1)",
            "back-off(sleep_ns=5)",
            "back-off(min_park_ns=0)",
            "back-off(min_park_ns=10,max_park_ns=5)",
        ] {
            let error = bad.parse::<IdleStrategy>().unwrap_err().to_string();
            assert!(
                error.contains("busy-spin, yield, back-off"),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "min_park_ns")]
    fn idler_rejects_inverted_park_bounds() {
        back_off(0, 0, 10, 5).idler();
    }
}
