//! Agents and the one runner that drives them (after Aeron's agents and duty
//! cycles).
//!
//! An [`Agent`] is a loop body: [`Agent::do_work`] runs one duty cycle and
//! says how much work it did; [`Agent::park`] waits for the agent's own events
//! (its io_uring, its eventfd) when there was none. [`run_agents`] owns
//! everything around that: the idle strategy, the stop flag, the shutdown
//! ([`Agent::on_close`]) and the duty-cycle counters ([`DutyCycleCounters`]).
//! Several agents can share one thread: the runner calls each one's
//! `do_work` in turn and parks in the first one's events, so the others must
//! wake that one (register their completion sources with its eventfd).
//!
//! Realtime contract: a cycle of the runner makes no allocation, takes no
//! lock and logs nothing; it reads the monotonic clock twice (start and end
//! of the cycle) and updates a few relaxed counters.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::counters::{Counter, CounterFile};
use crate::idle::IdleStrategy;

/// One loop body run by [`run_agents`].
pub trait Agent {
    /// One duty cycle at `now_ns` (monotonic, from the runner's start):
    /// bounded work, never a wait. Returns how much was done (0 = idle).
    fn do_work(&mut self, now_ns: u64) -> io::Result<usize>;
    /// Waits up to `timeout` for this agent's events; any event (a
    /// completion, a wake-up) ends the wait early.
    fn park(&mut self, timeout: Duration) -> io::Result<()>;
    /// Called once after the stop flag is seen (finish, flush, close).
    fn on_close(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The duty-cycle counters of one runner thread, in a counter file: cycles,
/// cycles that did work, total work, the longest cycle, and a histogram of
/// cycle times by decade.
#[derive(Clone, Debug)]
pub struct DutyCycleCounters {
    cycles: Counter,
    busy_cycles: Counter,
    work: Counter,
    max_cycle_ns: Counter,
    /// Cycle times ≤ 1 µs, ≤ 10 µs, ≤ 100 µs, ≤ 1 ms, > 1 ms.
    histogram: [Counter; 5],
}

/// Upper bounds of the histogram's buckets; the last bucket is everything
/// longer.
const BUCKET_BOUNDS_NS: [u64; 4] = [1_000, 10_000, 100_000, 1_000_000];

impl DutyCycleCounters {
    /// Counter names for a thread called `thread` (e.g. `orders`), in the
    /// order [`DutyCycleCounters::from_file`] takes them.
    pub fn names(thread: &str) -> Vec<String> {
        [
            "cycles",
            "busy_cycles",
            "work",
            "max_cycle_ns",
            "cycle_le_1us",
            "cycle_le_10us",
            "cycle_le_100us",
            "cycle_le_1ms",
            "cycle_gt_1ms",
        ]
        .iter()
        .map(|what| format!("agent.{thread}.{what}"))
        .collect()
    }

    /// Handles to the names of [`DutyCycleCounters::names`] starting at
    /// `first` in `file`.
    pub fn from_file(file: &CounterFile, first: usize) -> DutyCycleCounters {
        let c = |i: usize| file.counter(first + i);
        DutyCycleCounters {
            cycles: c(0),
            busy_cycles: c(1),
            work: c(2),
            max_cycle_ns: c(3),
            histogram: [c(4), c(5), c(6), c(7), c(8)],
        }
    }

    fn record(&self, cycle_ns: u64, work: usize) {
        self.cycles.increment();
        if work > 0 {
            self.busy_cycles.increment();
            self.work.add(work as u64);
        }
        self.max_cycle_ns.set_max(cycle_ns);
        let bucket = BUCKET_BOUNDS_NS
            .iter()
            .position(|&bound| cycle_ns <= bound)
            .unwrap_or(BUCKET_BOUNDS_NS.len());
        self.histogram[bucket].increment();
    }
}

/// Runs `agents` on the calling thread until `stop` is set: each cycle calls
/// every agent's `do_work` in order; a cycle with no work idles with `idle`,
/// parking in the first agent's events. Then calls every agent's `on_close`
/// (all of them, even after an error; the first error is returned). An
/// agent's error stops the runner.
pub fn run_agents(
    agents: &mut [&mut dyn Agent],
    idle: IdleStrategy,
    stop: &AtomicBool,
    counters: Option<&DutyCycleCounters>,
) -> io::Result<()> {
    assert!(!agents.is_empty(), "a runner needs at least one agent");
    let mut idler = idle.idler();
    let start = Instant::now();
    let mut result = Ok(());
    'run: while !stop.load(Ordering::Acquire) {
        let cycle_start = start.elapsed().as_nanos() as u64;
        let mut work = 0;
        for agent in agents.iter_mut() {
            match agent.do_work(cycle_start) {
                Ok(done) => work += done,
                Err(error) => {
                    result = Err(error);
                    break 'run;
                }
            }
        }
        let cycle_end = start.elapsed().as_nanos() as u64;
        if let Some(counters) = counters {
            counters.record(cycle_end - cycle_start, work);
        }
        let mut parked = Ok(());
        let (first, _) = agents.split_first_mut().expect("not empty");
        idler.idle_at(work, cycle_end, |timeout| parked = first.park(timeout));
        if let Err(error) = parked {
            result = Err(error);
            break;
        }
    }
    for agent in agents.iter_mut() {
        let closed = agent.on_close();
        if result.is_ok() {
            result = closed;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Does `budget` units of work, one per cycle, then idles; counts parks.
    struct Counting {
        budget: usize,
        done: usize,
        parks: usize,
        closed: bool,
        stop: Arc<AtomicBool>,
        stop_after_parks: usize,
        fail_at: Option<usize>,
    }

    impl Counting {
        fn new(budget: usize, stop: &Arc<AtomicBool>) -> Counting {
            Counting {
                budget,
                done: 0,
                parks: 0,
                closed: false,
                stop: Arc::clone(stop),
                stop_after_parks: usize::MAX,
                fail_at: None,
            }
        }
    }

    impl Agent for Counting {
        fn do_work(&mut self, _now_ns: u64) -> io::Result<usize> {
            if self.fail_at == Some(self.done) {
                return Err(io::Error::other("agent failed"));
            }
            if self.done < self.budget {
                self.done += 1;
                return Ok(1);
            }
            Ok(0)
        }

        fn park(&mut self, _timeout: Duration) -> io::Result<()> {
            self.parks += 1;
            if self.parks >= self.stop_after_parks {
                self.stop.store(true, Ordering::Release);
            }
            Ok(())
        }

        fn on_close(&mut self) -> io::Result<()> {
            self.closed = true;
            Ok(())
        }
    }

    const FAST_PARK: IdleStrategy = IdleStrategy::BackOff {
        max_spins: 1,
        max_yields: 1,
        min_park_ns: 1,
        max_park_ns: 1,
        busy_window_ns: 0,
    };

    #[test]
    fn shared_agents_all_work_then_park_in_the_first_and_close() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut first = Counting::new(10, &stop);
        first.stop_after_parks = 3;
        let mut second = Counting::new(25, &stop);
        let file = CounterFile::in_memory(
            &DutyCycleCounters::names("test")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        let counters = DutyCycleCounters::from_file(&file, 0);
        run_agents(
            &mut [&mut first, &mut second],
            FAST_PARK,
            &stop,
            Some(&counters),
        )
        .unwrap();
        assert_eq!((first.done, second.done), (10, 25), "every agent ran");
        assert_eq!(second.parks, 0, "only the first agent parks");
        assert!(first.parks >= 3);
        assert!(first.closed && second.closed);
        assert_eq!(counters.work.get(), 35);
        assert_eq!(counters.busy_cycles.get(), 25);
        let histogram: u64 = counters.histogram.iter().map(Counter::get).sum();
        assert_eq!(histogram, counters.cycles.get());
        assert!(counters.cycles.get() > 25);
    }

    #[test]
    fn an_error_stops_the_runner_and_every_agent_still_closes() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut first = Counting::new(10, &stop);
        let mut second = Counting::new(10, &stop);
        second.fail_at = Some(4);
        let error = run_agents(&mut [&mut first, &mut second], FAST_PARK, &stop, None).unwrap_err();
        assert_eq!(error.to_string(), "agent failed");
        assert!(first.closed && second.closed);
        assert_eq!(second.done, 4);
    }
}
