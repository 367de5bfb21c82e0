//! Composes the appliance: opens the journal and rebuilds state from it,
//! binds every socket, then runs each loop on its own (optionally pinned)
//! thread until asked to stop.
//!
//! Start-up order matters: everything that can fail (configuration, journal
//! recovery, socket binding, counter file) happens on the main thread before
//! any loop starts, so a bad start exits with one clear error and nothing
//! half-running.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use tally_gateway::counters::GatewayCounters;
use tally_gateway::gateway_loop::GatewayLoop;
use tally_gateway::link::{Inbound, Outcome};
use tally_runtime::agent::{run_agents, Agent, DutyCycleCounters};
use tally_runtime::counters::{Counter, CounterFile};
use tally_runtime::thread::spawn_loop;
use tally_runtime::wake::Waker;

use crate::core::{CoreCounters, SequencerCore};
use crate::exit::JournalWriteFailed;
use crate::journal::{JournalWriter, Recovery, WriteError};
use crate::publisher::MulticastPublisher;
use crate::replay::ReplayCounters;
use crate::retransmit::RetransmitCounters;
use tally_config::{LoopPlacement, Threading};

mod start;

/// Wall-clock nanoseconds since the Unix epoch: the stream's timestamps.
pub use tally_runtime::clock::wall_ns as clock_ns;

/// A journal write error, with the path and the free space of its file
/// system, as the sequencer loop reports it.
fn journal_write_failed(path: &std::path::Path, error: WriteError) -> JournalWriteFailed {
    let free_bytes = free_bytes(path.parent().unwrap_or(path));
    tracing::error!(
        path = %path.display(),
        operation = error.operation,
        error = %error.source,
        free_bytes,
        "journal write failed; stopping: nothing after the last good write was acknowledged or published"
    );
    JournalWriteFailed {
        path: path.to_path_buf(),
        operation: error.operation,
        source: error.source,
        free_bytes,
    }
}

/// Bytes available to unprivileged users on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into the struct we pass; path is a valid
    // NUL-terminated string for the duration of the call.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let result = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
    (result == 0).then(|| stats.f_bavail as u64 * stats.f_frsize as u64)
}

/// The sequencer's duty cycle and shutdown, run by its own thread
/// (`dedicated`) or by the thread it shares with the gateway (`shared`).
struct SequencerAgent {
    core: SequencerCore<JournalWriter, MulticastPublisher>,
    inbound: rtrb::Consumer<Inbound>,
    outcomes: rtrb::Producer<Outcome>,
    journal_path: std::path::PathBuf,
    journal_bytes: Counter,
    journal_fsyncs: Counter,
    counter_file: CounterFile,
    /// Wakes the replay loop when the journal grew (a no-op unless it is
    /// parked with clients connected).
    replay_waker: Waker,
    /// What the gateway wakes, and the journal's completions signal, while
    /// this agent parks on its own thread (`dedicated`).
    own_waker: Waker,
    /// `dedicated`: the gateway's thread, woken when acks are ready.
    gateway_waker: Option<Waker>,
    /// Whether to end the session on close, or roll over.
    control: Arc<Control>,
    /// Rollover: the longest wait for the authority's `S(F)` after `S(E)`.
    close_grace_ns: u64,
    /// When this run saw the session closing (`S(E)` sequenced).
    closing_since_ns: Option<u64>,
}

/// The sequencer as an agent of the runtime's runner. `do_work` stamps with
/// the wall clock (the stream's timestamps are wall-clock nanoseconds).
impl Agent for SequencerAgent {
    fn do_work(&mut self, _monotonic_ns: u64) -> io::Result<usize> {
        let work = SequencerAgent::do_work(self, clock_ns())?;
        if work > 0 {
            if let Some(gateway) = &self.gateway_waker {
                gateway.wake();
            }
        }
        Ok(work)
    }

    fn park(&mut self, timeout: Duration) -> io::Result<()> {
        let inbound = &self.inbound;
        let waker = &self.own_waker;
        waker.park_with(|| !inbound.is_empty(), || waker.park(timeout));
        Ok(())
    }

    fn on_close(&mut self) -> io::Result<()> {
        self.close(self.control.end_session.load(Ordering::Acquire))
    }
}

/// The `shared` thread's agent: the gateway and the sequencer in one duty
/// cycle, ordered so that an order received in a cycle is sequenced and
/// acknowledged in it: the gateway's cycle (receive, frame, forward), the
/// sequencer's (journal, publish, outcomes), then the gateway hands the
/// outcomes to their sessions and submits the receives it re-armed and the
/// acks together (one `io_uring_enter`). It parks in the gateway's ring,
/// which TCP completions, the journal's group commits and acks wake.
struct OrdersAgent {
    gateway: GatewayLoop,
    sequencer: SequencerAgent,
}

impl OrdersAgent {
    fn new(mut gateway: GatewayLoop, sequencer: SequencerAgent) -> OrdersAgent {
        gateway.submit_after_outcomes(true);
        OrdersAgent { gateway, sequencer }
    }
}

impl Agent for OrdersAgent {
    fn do_work(&mut self, now_ns: u64) -> io::Result<usize> {
        let received = self.gateway.poll(now_ns);
        let sequenced = Agent::do_work(&mut self.sequencer, now_ns)?;
        let delivered = self.gateway.deliver_outcomes(now_ns);
        Ok(received + sequenced + delivered)
    }

    fn park(&mut self, timeout: Duration) -> io::Result<()> {
        self.gateway.park(timeout);
        Ok(())
    }

    fn on_close(&mut self) -> io::Result<()> {
        let gateway = Agent::on_close(&mut self.gateway);
        let sequencer = self.sequencer.on_close();
        gateway.and(sequencer)
    }
}

/// Spawns one runner thread for `agents` (the first one parks), with its
/// duty-cycle counters.
fn spawn_agents(
    control: &Arc<Control>,
    label: &'static str,
    thread_name: &str,
    placement: LoopPlacement,
    mut agents: Vec<Box<dyn Agent + Send>>,
    duty: DutyCycleCounters,
) -> anyhow::Result<JoinHandle<io::Result<()>>> {
    let control = Arc::clone(control);
    let handle = spawn_loop(thread_name, placement.core, move || {
        let mut refs: Vec<&mut dyn Agent> = agents
            .iter_mut()
            .map(|agent| agent.as_mut() as &mut dyn Agent)
            .collect();
        run_agents(&mut refs, placement.idle, &control.stop, Some(&duty))
    })
    .with_context(|| format!("starting the {label} thread"))?;
    Ok(handle)
}

impl SequencerAgent {
    /// One duty cycle; on an idle one, reaps send completions and stores
    /// the journal counters and the liveness heartbeat.
    fn do_work(&mut self, now_ns: u64) -> io::Result<usize> {
        let mut work = self
            .core
            .poll(&mut self.inbound, &mut self.outcomes, now_ns)
            .map_err(|error| io::Error::other(journal_write_failed(&self.journal_path, error)))?;
        work += self.rollover_step(now_ns)?;
        if work > 0 {
            self.replay_waker.wake();
        } else {
            self.core.publisher_mut().poll_completions()?;
            self.journal_bytes
                .set(self.core.journal_mut().bytes_written());
            self.journal_fsyncs.set(self.core.journal_mut().fsyncs());
            self.counter_file.set_heartbeat(now_ns);
        }
        Ok(work)
    }

    /// The rollover's steps (README, "Daily session rollover"): when asked
    /// ([`Control::end_requested`]), sequence `S(E)`; once the authority's
    /// `S(F)` is sequenced, or `close_grace_ns` after `S(E)` without it, end
    /// the session and tell the main thread ([`Control::session_ended`]).
    /// Two relaxed loads per cycle otherwise.
    fn rollover_step(&mut self, now_ns: u64) -> io::Result<usize> {
        let fatal =
            |path: &std::path::Path, error| io::Error::other(journal_write_failed(path, error));
        if self.core.ended() {
            return Ok(0);
        }
        let mut work = 0;
        if !self.core.closing() && self.control.end_requested.load(Ordering::Relaxed) {
            let seq = self
                .core
                .request_end(now_ns)
                .map_err(|error| fatal(&self.journal_path, error))?;
            tracing::info!(
                seq,
                "end of session requested: S(E) sequenced; waiting for the authority's S(F)"
            );
            work += 1;
        }
        if !self.core.closing() {
            return Ok(work);
        }
        let since = *self.closing_since_ns.get_or_insert(now_ns);
        let grace_over = now_ns.saturating_sub(since) >= self.close_grace_ns;
        if self.core.authority_closed() || grace_over {
            if !self.core.authority_closed() {
                tracing::warn!(
                    grace_ms = self.close_grace_ns / 1_000_000,
                    "no S(F) from the authority within stream.close_grace_ms: ending the session \
                     without it (the warehouse may hold decisions the stream lacks; see the README)"
                );
            }
            self.core
                .end_session(&mut self.outcomes, now_ns)
                .map_err(|error| fatal(&self.journal_path, error))?;
            tracing::info!(next_seq = self.core.next_seq(), "session ended");
            self.control.session_ended.store(true, Ordering::Release);
            work += 1;
        }
        Ok(work)
    }

    /// Finishes what the gateway already handed over, ends the session if
    /// asked, makes the journal durable and flushes the stream.
    fn close(&mut self, end_session: bool) -> io::Result<()> {
        let fatal =
            |path: &std::path::Path, error| io::Error::other(journal_write_failed(path, error));
        let now_ns = clock_ns();
        while self
            .core
            .poll(&mut self.inbound, &mut self.outcomes, now_ns)
            .map_err(|error| fatal(&self.journal_path, error))?
            > 0
        {}
        if end_session {
            self.core
                .end_session(&mut self.outcomes, now_ns)
                .map_err(|error| fatal(&self.journal_path, error))?;
        }
        self.core
            .shutdown(&mut self.outcomes, now_ns)
            .map_err(|error| fatal(&self.journal_path, error))?;
        let _ = self.core.publisher_mut().flush(Duration::from_secs(1));
        self.journal_bytes
            .set(self.core.journal_mut().bytes_written());
        self.journal_fsyncs.set(self.core.journal_mut().fsyncs());
        tracing::info!(
            next_seq = self.core.next_seq(),
            "sequencer loop stopped; journal synced"
        );
        Ok(())
    }
}

/// Flags the signal handlers set and the loops read.
#[derive(Debug, Default)]
pub struct Control {
    /// Stop every loop (SIGINT, SIGTERM).
    pub stop: AtomicBool,
    /// End the session before stopping.
    pub end_session: AtomicBool,
    /// Roll over (SIGUSR1, `tally-ctl session end`): sequence `S(E)`, wait
    /// for the authority's `S(F)` (bounded), end the session.
    pub end_requested: AtomicBool,
    /// Set by the sequencer loop once the session has ended after a
    /// rollover request: the main thread stops this appliance and starts
    /// the next session.
    pub session_ended: AtomicBool,
}

/// The runner threads of a threading mode, by the short name their
/// duty-cycle counters carry (`agent.NAME.*`).
fn runner_names(threading: Threading) -> &'static [&'static str] {
    match threading {
        Threading::Shared => &["orders", "retransmit", "replay"],
        Threading::Dedicated => &["sequencer", "gateway", "retransmit", "replay"],
    }
}

/// Every counter name in the appliance's counter file, in order.
fn counter_names(threading: Threading) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for group in [
        CoreCounters::NAMES,
        GatewayCounters::NAMES,
        RetransmitCounters::NAMES,
        ReplayCounters::NAMES,
        &[
            "journal.bytes",
            "journal.fsyncs",
            "journal.records_recovered",
            "journal.torn_bytes_cut",
        ],
    ] {
        names.extend(group.iter().map(|name| name.to_string()));
    }
    for runner in runner_names(threading) {
        names.extend(DutyCycleCounters::names(runner));
    }
    names
}

/// A runner thread, by the label its errors carry.
type RunnerThread = (&'static str, JoinHandle<io::Result<()>>);

/// A started appliance: its threads and how to stop them.
pub struct Appliance {
    control: Arc<Control>,
    threads: Vec<RunnerThread>,
    /// What journal recovery found.
    pub recovery: Recovery,
}

impl Appliance {
    /// The flags this appliance's loops read (shared with the caller).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Whether the session ended after a rollover request (the caller
    /// stops this appliance and starts the next session).
    pub fn session_ended(&self) -> bool {
        self.control.session_ended.load(Ordering::Acquire)
    }

    /// Whether any loop has stopped (a failure, or after [`Self::request_stop`]).
    pub fn any_stopped(&self) -> bool {
        self.threads.iter().any(|(_, handle)| handle.is_finished())
    }

    /// Asks every loop to stop; with `end_session`, the sequencer ends the
    /// session first.
    pub fn request_stop(&self, end_session: bool) {
        if end_session {
            self.control.end_session.store(true, Ordering::Release);
        }
        self.control.stop.store(true, Ordering::Release);
    }

    /// Stops every loop and waits for them. Returns the first loop error.
    pub fn stop(self) -> anyhow::Result<()> {
        self.control.stop.store(true, Ordering::Release);
        let mut first_error = None;
        for (name, handle) in self.threads {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    // A journal write failure keeps its type, so `main`
                    // exits with its own status.
                    let is_journal = error
                        .get_ref()
                        .is_some_and(|inner| inner.is::<JournalWriteFailed>());
                    let error = if is_journal {
                        let failed = error
                            .into_inner()
                            .and_then(|inner| inner.downcast::<JournalWriteFailed>().ok())
                            .expect("checked above");
                        anyhow::Error::new(*failed).context(format!("{name} loop failed"))
                    } else {
                        anyhow::anyhow!("{name} loop failed: {error}")
                    };
                    first_error.get_or_insert(error);
                }
                Err(_) => {
                    first_error.get_or_insert(anyhow::anyhow!("{name} loop panicked"));
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}
