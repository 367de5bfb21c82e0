//! The gateway loop: one thread that owns the SoupBinTCP listener (an
//! io_uring [`TcpServer`]), the [`GatewayCore`], both rings to and from the
//! sequencer and the authenticator, and drives them with a duty cycle.
//!
//! [`GatewayLoop::poll`] does one cycle: drain the sequencer's outcomes (at
//! most [`OUTCOMES_PER_POLL`]), take password-check answers, let the core
//! resume connections whose frames waited and run its timers, then handle
//! every network completion waiting — unless a connection's backlog of
//! frames (waiting for room in the sequencer ring) is too large to take
//! another receive, in which case the network waits (back-pressure through
//! TCP flow control, never a dropped byte). It returns the work done; as an
//! [`Agent`], the runtime's runner pairs it with an idle strategy that waits
//! in `io_uring_enter` ([`GatewayLoop::park`]) when there is none.
//! Nothing in a cycle allocates or locks; the only log line is the
//! hostile-client report, at most once per [`REPORT_INTERVAL_NS`], when
//! refusals or throttled logins were counted since the last one.

use std::io;
use std::time::Duration;

use tally_runtime::agent::Agent;
use tally_runtime::net::{self, ConnId, TcpEvent, TcpServer, TcpServerConfig, TcpServerHandle};
use tally_runtime::wake::Waker;
use tally_wire::soup;

use crate::auth::{AuthRequest, AuthThread, Authenticator};
use crate::counters::GatewayCounters;
use crate::link::{Inbound, Outcome};
use crate::session::{GatewayCore, GatewayIo, SendError, SlotId};
use tally_config::gateway::GatewayConfig;

/// Outcomes taken from the sequencer ring per [`GatewayLoop::poll`].
pub const OUTCOMES_PER_POLL: usize = 4096;

/// Shortest time between two hostile-client log lines: 10 s.
pub const REPORT_INTERVAL_NS: u64 = 10_000_000_000;

/// What the hostile-client report last saw of each counter it reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HostileCounts {
    connects_throttled: u64,
    login_pool_refused: u64,
    login_pool_evictions: u64,
    login_source_refused: u64,
    login_timeouts: u64,
    logins_throttled: u64,
    login_failures: u64,
    password_checks: u64,
    unnumbered_rejects: u64,
}

impl HostileCounts {
    fn read(counters: &GatewayCounters) -> Self {
        HostileCounts {
            connects_throttled: counters.connects_throttled.get(),
            login_pool_refused: counters.login_pool_refused.get(),
            login_pool_evictions: counters.login_pool_evictions.get(),
            login_source_refused: counters.login_source_refused.get(),
            login_timeouts: counters.login_timeouts.get(),
            logins_throttled: counters.logins_throttled.get(),
            login_failures: counters.login_failures.get(),
            password_checks: counters.password_checks.get(),
            unnumbered_rejects: counters.unnumbered_rejects.get(),
        }
    }
}

/// One gateway loop (see the module doc). Build it on any thread, move it to
/// its own and run it with `tally_runtime::agent::run_agents` (it is an
/// [`Agent`]), alone or with other agents on one thread.
pub struct GatewayLoop<A: Authenticator = AuthThread> {
    server: TcpServer,
    core: GatewayCore,
    to_sequencer: rtrb::Producer<Inbound>,
    from_sequencer: rtrb::Consumer<Outcome>,
    auth: A,
    /// Connection of each core slot.
    slot_conns: Vec<Option<ConnId>>,
    /// Core slot of each server connection index.
    conn_slots: Vec<Option<SlotId>>,
    /// Slots whose receiving is paused (back-pressure).
    paused_slots: Vec<bool>,
    /// Bytes one receive may bring.
    recv_buffer_bytes: usize,
    /// Wakes the sequencer loop when it parked with nothing to do.
    sequencer_waker: Option<Waker>,
    /// Whether [`GatewayLoop::poll`] leaves its submission to
    /// [`GatewayLoop::deliver_outcomes`] (a thread that runs the sequencer
    /// between the two: one `io_uring_enter` per cycle carries the receives
    /// re-armed and the acks).
    submit_after_outcomes: bool,
    /// When the next hostile-client report may be logged.
    next_report_ns: u64,
    /// The counts at the last report.
    reported: HostileCounts,
}

impl<A: Authenticator> std::fmt::Debug for GatewayLoop<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayLoop")
            .field("local_addr", &self.server.local_addr())
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl<A: Authenticator> GatewayLoop<A> {
    /// Binds `config.listen` and takes over `core` (built from the same
    /// `config`, with the clients' state recovered from the journal), the
    /// producer end of the ring to the sequencer, the consumer end of the
    /// ring back, and the authenticator (an [`AuthThread`] in production).
    pub fn new(
        config: &GatewayConfig,
        core: GatewayCore,
        to_sequencer: rtrb::Producer<Inbound>,
        from_sequencer: rtrb::Consumer<Outcome>,
        auth: A,
    ) -> io::Result<Self> {
        let slots = config.connection_slots();
        let server_config = TcpServerConfig {
            max_connections: config.server_connections(),
            recv_buffer_bytes: config.recv_buffer_bytes,
            send_buffer_bytes: config.send_buffer_bytes,
            backlog: slots.clamp(16, 4096) as u32,
        };
        let server = TcpServer::bind(config.listen, &server_config)?;
        Ok(GatewayLoop {
            server,
            core,
            to_sequencer,
            from_sequencer,
            auth,
            slot_conns: vec![None; slots],
            conn_slots: vec![None; config.server_connections()],
            paused_slots: vec![false; slots],
            recv_buffer_bytes: config.recv_buffer_bytes,
            sequencer_waker: None,
            submit_after_outcomes: false,
            next_report_ns: 0,
            reported: HostileCounts::default(),
        })
    }

    /// Wakes `waker` whenever this loop has handed commands to the sequencer
    /// (so a parked sequencer starts at once instead of at its park timeout).
    pub fn wake_sequencer_with(&mut self, waker: Waker) {
        self.sequencer_waker = Some(waker);
    }

    /// Lets another thread (the sequencer, after pushing acks) end this
    /// loop's park at once. Returns the waker to hand to that thread.
    pub fn waker(&mut self) -> io::Result<Waker> {
        self.server.waker()
    }

    /// The address the listener is bound to (the port, when `listen` said 0).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The session core (e.g. to read a client's state in tests).
    pub fn core(&self) -> &GatewayCore {
        &self.core
    }

    /// The counters the loop writes.
    pub fn counters(&self) -> &GatewayCounters {
        self.core.counters()
    }

    /// The TCP server's own counters (bytes, accepts, send-buffer refusals).
    pub fn tcp_stats(&self) -> net::TcpStats {
        self.server.stats()
    }

    /// One duty cycle at `now_ns` (a monotonic clock, nanoseconds); returns
    /// the work done (0 = idle). Bounded: at most [`OUTCOMES_PER_POLL`]
    /// outcomes, the completions the ring holds, and
    /// `FRAMES_PER_SLOT_PER_SERVICE` frames per stalled connection.
    pub fn poll(&mut self, now_ns: u64) -> usize {
        let mut work = 0;
        let GatewayLoop {
            server,
            core,
            to_sequencer,
            from_sequencer,
            auth,
            slot_conns,
            conn_slots,
            paused_slots,
            recv_buffer_bytes,
            sequencer_waker,
            submit_after_outcomes,
            next_report_ns,
            reported,
        } = self;

        // Acks first: they free ring space and release waiting logins.
        work += take_outcomes(
            core,
            from_sequencer,
            server,
            slot_conns,
            to_sequencer,
            auth,
            now_ns,
        );

        // Resume connections whose frames waited (ring full, login just
        // completed), and run the timers.
        {
            let mut io = LoopIo {
                handle: server.handle(),
                slot_conns,
                to_sequencer,
                auth,
            };
            work += core.service(&mut io, now_ns);
        }

        work += resume_paused(server, core, slot_conns, paused_slots, *recv_buffer_bytes);

        let polled = server.poll(|handle, event| {
            let mut io = LoopIo {
                handle,
                slot_conns,
                to_sequencer,
                auth,
            };
            on_tcp_event(
                core,
                &mut io,
                conn_slots,
                paused_slots,
                *recv_buffer_bytes,
                event,
                now_ns,
            );
        });
        // An io_uring submit error is counted in the server's stats; the
        // loop keeps serving what it can.
        work += polled.unwrap_or(0);
        if now_ns >= *next_report_ns {
            *next_report_ns = now_ns.saturating_add(REPORT_INTERVAL_NS);
            report_hostile_clients(core.counters(), reported);
        }
        if !*submit_after_outcomes {
            let _ = server.submit();
        }
        if work > 0 {
            if let Some(waker) = sequencer_waker {
                waker.wake();
            }
        }
        work
    }

    /// For a thread that runs the sequencer on this loop's thread, between
    /// [`GatewayLoop::poll`] and [`GatewayLoop::deliver_outcomes`]: `poll`
    /// then queues its operations without submitting them, and
    /// `deliver_outcomes` submits them with the acks of the same cycle.
    pub fn submit_after_outcomes(&mut self, enabled: bool) {
        self.submit_after_outcomes = enabled;
        self.server.submit_after_poll(!enabled);
    }

    /// Hands the sequencer's outcomes waiting on the ring to their sessions
    /// (acks, at most [`OUTCOMES_PER_POLL`]) and submits every queued
    /// operation; returns the outcomes handled. A shared thread calls it
    /// right after the sequencer's cycle, so an order's ack leaves in the
    /// cycle that received the order.
    pub fn deliver_outcomes(&mut self, now_ns: u64) -> usize {
        let GatewayLoop {
            server,
            core,
            to_sequencer,
            from_sequencer,
            auth,
            slot_conns,
            ..
        } = self;
        let mut io = LoopIo {
            handle: server.handle(),
            slot_conns,
            to_sequencer,
            auth,
        };
        let work = pop_outcomes(core, from_sequencer, &mut io, now_ns);
        // An io_uring submit error is counted in the server's stats.
        let _ = server.submit();
        work
    }

    /// Waits up to `duration` in the ring: a TCP completion, or a wake-up of
    /// this loop's waker ([`GatewayLoop::waker`]: acks on the ring, or any
    /// other completion source registered with its eventfd), ends the wait
    /// early. For a thread that runs this loop with others.
    pub fn park(&mut self, duration: Duration) {
        let GatewayLoop {
            server,
            from_sequencer,
            ..
        } = self;
        let _ = server.park_unless(duration, || !from_sequencer.is_empty());
    }
}

/// The gateway as an agent of the runtime's runner: a duty cycle is
/// [`GatewayLoop::poll`], a park waits in its ring ([`GatewayLoop::park`]).
impl<A: Authenticator> Agent for GatewayLoop<A> {
    fn do_work(&mut self, now_ns: u64) -> std::io::Result<usize> {
        Ok(self.poll(now_ns))
    }

    fn park(&mut self, timeout: Duration) -> std::io::Result<()> {
        GatewayLoop::park(self, timeout);
        Ok(())
    }
}

/// Logs one line when refusals, throttled logins or failures were counted
/// since the last report (the caller calls it at most once per
/// [`REPORT_INTERVAL_NS`], so a flood costs one line per interval).
fn report_hostile_clients(counters: &GatewayCounters, reported: &mut HostileCounts) {
    let now = HostileCounts::read(counters);
    if now == *reported {
        return;
    }
    let last = *reported;
    *reported = now;
    if now.connects_throttled == last.connects_throttled
        && now.login_pool_refused == last.login_pool_refused
        && now.login_pool_evictions == last.login_pool_evictions
        && now.login_source_refused == last.login_source_refused
        && now.login_timeouts == last.login_timeouts
        && now.logins_throttled == last.logins_throttled
        && now.login_failures == last.login_failures
        && now.unnumbered_rejects == last.unnumbered_rejects
    {
        return;
    }
    tracing::warn!(
        connects_throttled = now.connects_throttled - last.connects_throttled,
        login_pool_refused = now.login_pool_refused - last.login_pool_refused,
        login_pool_evictions = now.login_pool_evictions - last.login_pool_evictions,
        login_source_refused = now.login_source_refused - last.login_source_refused,
        login_timeouts = now.login_timeouts - last.login_timeouts,
        logins_throttled = now.logins_throttled - last.logins_throttled,
        login_failures = now.login_failures - last.login_failures,
        password_checks = now.password_checks - last.password_checks,
        unnumbered_rejects = now.unnumbered_rejects - last.unnumbered_rejects,
        "gateway: refused or throttled clients since the last report (see the gateway counters)"
    );
}

/// Hands at most [`OUTCOMES_PER_POLL`] of the sequencer's outcomes to
/// their sessions; returns how many.
#[inline]
fn pop_outcomes<A: Authenticator>(
    core: &mut GatewayCore,
    from_sequencer: &mut rtrb::Consumer<Outcome>,
    io: &mut LoopIo<'_, A>,
    now_ns: u64,
) -> usize {
    let mut work = 0;
    while work < OUTCOMES_PER_POLL {
        let Ok(outcome) = from_sequencer.pop() else {
            break;
        };
        core.on_outcome(io, outcome, now_ns);
        work += 1;
    }
    work
}

/// Hands the sequencer's outcomes (at most [`OUTCOMES_PER_POLL`]) and the
/// password-check verdicts to the sessions; returns how many.
fn take_outcomes<A: Authenticator>(
    core: &mut GatewayCore,
    from_sequencer: &mut rtrb::Consumer<Outcome>,
    server: &mut TcpServer,
    slot_conns: &mut [Option<ConnId>],
    to_sequencer: &mut rtrb::Producer<Inbound>,
    auth: &mut A,
    now_ns: u64,
) -> usize {
    let mut io = LoopIo {
        handle: server.handle(),
        slot_conns,
        to_sequencer,
        auth,
    };
    let mut work = pop_outcomes(core, from_sequencer, &mut io, now_ns);
    while let Some(result) = io.auth.poll_result() {
        core.on_auth_result(&mut io, result, now_ns);
        work += 1;
    }
    work
}

/// Back-pressure, per connection: a connection whose waiting frames leave
/// less than one receive of room (the ring to the sequencer is full, or its
/// client has too many unread acks) gets no further receive; its bytes stay
/// in the kernel and TCP flow control slows that client alone. Resumes
/// those that have room again; returns how many.
fn resume_paused(
    server: &mut TcpServer,
    core: &GatewayCore,
    slot_conns: &[Option<ConnId>],
    paused_slots: &mut [bool],
    recv_buffer_bytes: usize,
) -> usize {
    let mut resumed = 0;
    for (index, paused) in paused_slots.iter_mut().enumerate() {
        if *paused {
            let slot = SlotId::from_index(index);
            if core.receive_room(slot) >= recv_buffer_bytes {
                if let Some(conn) = slot_conns[index] {
                    server.handle().resume_recv(conn);
                }
                *paused = false;
                resumed += 1;
            }
        }
    }
    resumed
}

/// One event of the TCP server: an accepted connection gets a core slot
/// (or a refusal in words), data goes to its session (pausing the
/// connection's receives when its room runs out), a close frees the slot.
fn on_tcp_event<A: Authenticator>(
    core: &mut GatewayCore,
    io: &mut LoopIo<'_, A>,
    conn_slots: &mut [Option<SlotId>],
    paused_slots: &mut [bool],
    recv_buffer_bytes: usize,
    event: TcpEvent<'_>,
    now_ns: u64,
) {
    match event {
        TcpEvent::Accepted { conn, peer } => {
            match core.on_accept_from(Some(peer.ip()), now_ns) {
                Ok(slot) => {
                    io.slot_conns[slot.index()] = Some(conn);
                    conn_slots[conn.index()] = Some(slot);
                }
                // Say why, then close (the server keeps
                // REFUSAL_CONNECTIONS spare for this). The connection
                // has no slot: its data and close are ignored.
                Err(refusal) => {
                    let mut frame = [0u8; 128];
                    let len = soup::write_debug(&mut frame, refusal.text().as_bytes())
                        .expect("refusal texts fit 128 bytes");
                    let _ = io.handle.send(conn, &frame[..len]);
                    io.handle.close(conn);
                }
            }
        }
        TcpEvent::Data { conn, bytes } => {
            if let Some(slot) = slot_of(conn_slots, io.slot_conns, conn) {
                let taken = core.on_data(io, slot, bytes, now_ns);
                if taken < bytes.len() {
                    core.on_receive_overflow(io, slot, now_ns);
                } else if core.receive_room(slot) < recv_buffer_bytes {
                    io.handle.pause_recv(conn);
                    paused_slots[slot.index()] = true;
                }
            }
        }
        TcpEvent::Closed { conn, .. } => {
            if let Some(slot) = slot_of(conn_slots, io.slot_conns, conn) {
                core.on_closed(slot);
                io.slot_conns[slot.index()] = None;
                conn_slots[conn.index()] = None;
                paused_slots[slot.index()] = false;
            }
        }
        TcpEvent::Rejected { .. } => core.counters().sessions_refused.increment(),
    }
}

/// The core slot of `conn`, if it is the connection that slot serves.
fn slot_of(
    conn_slots: &[Option<SlotId>],
    slot_conns: &[Option<ConnId>],
    conn: ConnId,
) -> Option<SlotId> {
    let slot = (*conn_slots.get(conn.index())?)?;
    (slot_conns[slot.index()] == Some(conn)).then_some(slot)
}

/// The core's view of the world during one part of a cycle.
struct LoopIo<'a, A> {
    handle: &'a mut TcpServerHandle,
    slot_conns: &'a mut [Option<ConnId>],
    to_sequencer: &'a mut rtrb::Producer<Inbound>,
    auth: &'a mut A,
}

impl<A: Authenticator> GatewayIo for LoopIo<'_, A> {
    fn send(&mut self, slot: SlotId, bytes: &[u8]) -> Result<(), SendError> {
        let Some(conn) = self.slot_conns[slot.index()] else {
            return Err(SendError::Closed);
        };
        self.handle.send(conn, bytes).map_err(|error| match error {
            net::SendError::Full => SendError::Full,
            net::SendError::Closed => SendError::Closed,
        })
    }

    fn close(&mut self, slot: SlotId) {
        if let Some(conn) = self.slot_conns[slot.index()] {
            // Flushes what is queued (a debug packet, a login reject) first.
            self.handle.close(conn);
        }
    }

    fn sequencer_capacity(&self) -> usize {
        self.to_sequencer.slots()
    }

    fn send_room(&self, slot: SlotId) -> usize {
        match self.slot_conns[slot.index()] {
            Some(conn) => self.handle.send_capacity(conn),
            None => 0,
        }
    }

    fn forward(&mut self, inbound: Inbound) -> Result<(), Inbound> {
        self.to_sequencer
            .push(inbound)
            .map_err(|error| match error {
                rtrb::PushError::Full(inbound) => inbound,
            })
    }

    fn authenticate(&mut self, request: AuthRequest) -> Result<(), AuthRequest> {
        self.auth.submit(request)
    }
}
