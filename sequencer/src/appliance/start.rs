//! Starting the appliance, step by step: the counter file, journal
//! recovery (which rebuilds the gateway's per-client state), binding every
//! socket, the sequencer core's start, then the runner threads of the
//! threading mode. Everything that can fail happens here, on the main
//! thread, before any loop runs.

use std::sync::Arc;

use anyhow::Context;
use tally_config::{ApplianceConfig, LoopPlacement, Threading};
use tally_gateway::auth::AuthThread;
use tally_gateway::counters::GatewayCounters;
use tally_gateway::gateway_loop::GatewayLoop;
use tally_gateway::link::{Inbound, Outcome};
use tally_gateway::session::{AckRecord, GatewayCore, RecoveryError};
use tally_runtime::agent::DutyCycleCounters;
use tally_runtime::counters::CounterFile;
use tally_runtime::wake::Waker;

use super::{
    clock_ns, counter_names, journal_write_failed, spawn_agents, Appliance, Control, OrdersAgent,
    RunnerThread, SequencerAgent,
};
use crate::core::{CoreConfig, CoreCounters, SequencerCore};
use crate::journal::{JournalWriter, Recovery};
use crate::publisher::MulticastPublisher;
use crate::replay::{ReplayCounters, ReplayLoop};
use crate::retransmit::{RetransmitCounters, RetransmitLoop};

impl Appliance {
    /// Opens, recovers, binds and starts every loop. `recovery_options`
    /// come from the operator (`--accept-journal-loss`); the default refuses
    /// a damaged journal with a [`crate::journal::JournalError`] in the
    /// error chain.
    pub fn start(
        config: &ApplianceConfig,
        control: Arc<Control>,
        recovery_options: &crate::journal::RecoveryOptions,
    ) -> anyhow::Result<Appliance> {
        let session = config.session()?;
        let gateway_config = config.gateway_config();
        let (threading, threading_auto) = config.threading()?;
        let counters = ApplianceCounters::create(config, threading)?;
        let recovered = recover_journal(
            config,
            session,
            &gateway_config,
            &counters,
            recovery_options,
        )?;

        // Rings between the gateway and the sequencer.
        let (to_sequencer, inbound) =
            rtrb::RingBuffer::<Inbound>::new(config.gateway.ring_messages);
        let (outcomes, from_sequencer) =
            rtrb::RingBuffer::<Outcome>::new(config.gateway.ring_messages);

        // Bind everything before any loop runs.
        let publisher =
            MulticastPublisher::new(&config.multicast(), config.stream.payload_bytes_max)
                .context("opening the multicast publisher")?;
        let (gateway, gateway_waker, sequencer_waker) = bind_gateway(
            &gateway_config,
            recovered.gateway_core,
            to_sequencer,
            from_sequencer,
            threading,
        )?;
        log_threading(threading, threading_auto);
        let (retransmit, replay, replay_waker) = bind_feeds(config, &recovered.journal, &counters)?;

        let duty = RunnerDuty::new(&counters, threading);
        let sequencer = build_sequencer(
            config,
            &control,
            threading,
            counters,
            SequencerParts {
                session,
                journal: recovered.journal,
                publisher,
                next_seq: recovered.recovery.next_seq,
                last_seqs: recovered.last_seqs,
                closing: recovered.closing,
                inbound,
                outcomes,
                replay_waker,
                gateway_waker,
                sequencer_waker,
            },
        )?;
        let threads = spawn_loops(
            config,
            &control,
            threading,
            duty,
            Loops {
                gateway,
                sequencer,
                retransmit,
                replay,
            },
        )?;
        Ok(Appliance {
            control,
            threads,
            recovery: recovered.recovery,
        })
    }
}

/// The appliance's counter file and its names, in order.
struct ApplianceCounters {
    file: CounterFile,
    names: Vec<String>,
}

impl ApplianceCounters {
    /// Creates the counter file (and its directory) with every counter of
    /// this threading mode.
    fn create(config: &ApplianceConfig, threading: Threading) -> anyhow::Result<Self> {
        let path = config.counters_path();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let names = counter_names(threading);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let file = CounterFile::create(&path, "tally-sequencer", &refs)
            .with_context(|| format!("creating counter file {}", path.display()))?;
        Ok(ApplianceCounters { file, names })
    }

    /// The index of a counter this file was created with.
    fn index_of(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .expect("a counter of the appliance's own list")
    }

    /// The duty-cycle counters of one runner thread.
    fn duty(&self, runner: &str) -> DutyCycleCounters {
        DutyCycleCounters::from_file(
            &self.file,
            self.index_of(&DutyCycleCounters::names(runner)[0]),
        )
    }
}

/// The duty-cycle counters of each runner thread of a threading mode.
struct RunnerDuty {
    /// `shared`: the orders thread; `dedicated`: the sequencer's.
    orders: DutyCycleCounters,
    /// `dedicated` only.
    gateway: Option<DutyCycleCounters>,
    retransmit: DutyCycleCounters,
    replay: DutyCycleCounters,
}

impl RunnerDuty {
    fn new(counters: &ApplianceCounters, threading: Threading) -> RunnerDuty {
        let (orders, gateway) = match threading {
            Threading::Shared => (counters.duty("orders"), None),
            Threading::Dedicated => (counters.duty("sequencer"), Some(counters.duty("gateway"))),
        };
        RunnerDuty {
            orders,
            gateway,
            retransmit: counters.duty("retransmit"),
            replay: counters.duty("replay"),
        }
    }
}

/// What journal recovery rebuilt.
struct Recovered {
    journal: JournalWriter,
    recovery: Recovery,
    /// The gateway with every client's numbering and ack history.
    gateway_core: GatewayCore,
    /// Each origin's last client_seq, for the core's duplicate check.
    last_seqs: Vec<(u16, u32)>,
    /// A restart in the middle of a rollover: the journal holds `S(E)`.
    closing: bool,
}

/// Opens (or creates) the session's journal and replays it into the
/// gateway's per-client numbering and ack history and the core's per-origin
/// last client_seq. An ended session is refused
/// ([`crate::exit::SessionEnded`]).
fn recover_journal(
    config: &ApplianceConfig,
    session: tally_wire::mold::Session,
    gateway_config: &tally_config::gateway::GatewayConfig,
    counters: &ApplianceCounters,
    recovery_options: &crate::journal::RecoveryOptions,
) -> anyhow::Result<Recovered> {
    let gateway_counters =
        GatewayCounters::from_file(&counters.file, counters.index_of(GatewayCounters::NAMES[0]));
    let mut gateway_core = GatewayCore::new(gateway_config, gateway_counters, &[])
        .map_err(|error| anyhow::anyhow!("gateway recovery: {error}"))?;
    let mut state = RecoveryState {
        gateway_core: &mut gateway_core,
        last_client_seq: vec![0u32; 1 << 16],
        closing: false,
        error: None,
    };
    let (journal, recovery) = JournalWriter::open(
        &config.journal.dir,
        session,
        config.fsync_policy()?,
        recovery_options,
        |seq, message| state.on_message(seq, message),
    )?;
    let RecoveryState {
        last_client_seq,
        closing,
        error: recovery_error,
        ..
    } = state;
    if let Some(error) = recovery_error {
        return Err(error);
    }
    if recovery.ended {
        return Err(crate::exit::SessionEnded {
            session: session.as_str().to_string(),
            journal: journal.path().to_path_buf(),
        }
        .into());
    }
    tracing::info!(
        journal = %journal.path().display(),
        next_seq = recovery.next_seq,
        messages = recovery.messages,
        cut_bytes = recovery.cut_bytes,
        created = recovery.created,
        "journal open"
    );
    counters
        .file
        .counter(counters.index_of("journal.records_recovered"))
        .set(recovery.records);
    counters
        .file
        .counter(counters.index_of("journal.torn_bytes_cut"))
        .set(recovery.cut_bytes);
    let last_seqs = last_client_seq
        .iter()
        .enumerate()
        .filter(|(_, &seq)| seq != 0)
        .map(|(origin, &seq)| (origin as u16, seq))
        .collect();
    Ok(Recovered {
        journal,
        recovery,
        gateway_core,
        last_seqs,
        closing,
    })
}

/// Says which threading mode runs and what chose it.
fn log_threading(threading: Threading, threading_auto: bool) {
    tracing::info!(
        threading = threading.name(),
        chosen_by = if threading_auto {
            "the CPU count (loops.threading = \"auto\")"
        } else {
            "loops.threading"
        },
        cpus = tally_runtime::thread::available_cores().len(),
        "threading mode"
    );
}

/// What the sequencer agent is built from.
struct SequencerParts {
    /// The session the configuration names (parsed once, in `start`).
    session: tally_wire::mold::Session,
    journal: JournalWriter,
    publisher: MulticastPublisher,
    /// The first sequence number this run gives.
    next_seq: u64,
    /// Each origin's last client_seq (from the journal).
    last_seqs: Vec<(u16, u32)>,
    /// The journal holds `S(E)`: resume the rollover.
    closing: bool,
    /// The rings' sequencer ends.
    inbound: rtrb::Consumer<Inbound>,
    outcomes: rtrb::Producer<Outcome>,
    replay_waker: Waker,
    gateway_waker: Waker,
    sequencer_waker: Waker,
}

/// Builds the sequencer core, sequences the session's start and wraps the
/// core in its agent (which takes the counter file over).
fn build_sequencer(
    config: &ApplianceConfig,
    control: &Arc<Control>,
    threading: Threading,
    counters: ApplianceCounters,
    parts: SequencerParts,
) -> anyhow::Result<SequencerAgent> {
    let core_config = CoreConfig {
        session: parts.session,
        payload_limit_bytes: config.stream.payload_bytes_max,
        heartbeat_interval_ns: config.stream.heartbeat_interval_ms * 1_000_000,
        batch_messages_max: 4096,
    };
    let core_counters =
        CoreCounters::from_file(&counters.file, counters.index_of(CoreCounters::NAMES[0]));
    let mut core = SequencerCore::new(
        core_config,
        parts.journal,
        parts.publisher,
        parts.next_seq,
        &parts.last_seqs,
        core_counters,
    );
    if parts.closing {
        core.resume_closing();
    }
    let journal_path = core.journal_mut().path().to_path_buf();
    core.start(clock_ns())
        .map_err(|error| journal_write_failed(&journal_path, error))
        .context("starting the session")?;
    // A group commit's completion wakes the parked sequencer loop; the
    // shared thread parks in the gateway's ring.
    let journal_wake_fd = match threading {
        Threading::Dedicated => parts.sequencer_waker.fd(),
        Threading::Shared => parts.gateway_waker.fd(),
    };
    core.journal_mut()
        .register_eventfd(journal_wake_fd)
        .context("registering the sequencer's waker with the journal's io_uring")?;
    Ok(SequencerAgent {
        journal_path,
        core,
        inbound: parts.inbound,
        outcomes: parts.outcomes,
        journal_bytes: counters.file.counter(counters.index_of("journal.bytes")),
        journal_fsyncs: counters.file.counter(counters.index_of("journal.fsyncs")),
        counter_file: counters.file,
        replay_waker: parts.replay_waker,
        own_waker: parts.sequencer_waker,
        // Dedicated: the gateway's thread is woken when acks are ready.
        gateway_waker: (threading == Threading::Dedicated).then_some(parts.gateway_waker),
        control: Arc::clone(control),
        close_grace_ns: config.stream.close_grace_ms.saturating_mul(1_000_000),
        closing_since_ns: None,
    })
}

/// Every loop of the appliance, bound and ready to run.
struct Loops {
    gateway: GatewayLoop<AuthThread>,
    sequencer: SequencerAgent,
    retransmit: RetransmitLoop,
    replay: ReplayLoop<AuthThread>,
}

/// Starts the runner threads of the threading mode.
fn spawn_loops(
    config: &ApplianceConfig,
    control: &Arc<Control>,
    threading: Threading,
    duty: RunnerDuty,
    loops: Loops,
) -> anyhow::Result<Vec<RunnerThread>> {
    let Loops {
        gateway,
        sequencer,
        retransmit,
        replay,
    } = loops;
    let mut threads = Vec::new();
    let mut spawn = |label, thread_name, placement: LoopPlacement, agents, duty| {
        spawn_agents(control, label, thread_name, placement, agents, duty)
            .map(|handle| threads.push((label, handle)))
    };
    match threading {
        Threading::Shared => spawn(
            "gateway+sequencer",
            "tally-orders",
            config.placement("sequencer")?,
            vec![Box::new(OrdersAgent::new(gateway, sequencer))],
            duty.orders,
        )?,
        Threading::Dedicated => {
            spawn(
                "sequencer",
                "tally-sequencer",
                config.placement("sequencer")?,
                vec![Box::new(sequencer)],
                duty.orders,
            )?;
            spawn(
                "gateway",
                "tally-gateway",
                config.placement("gateway")?,
                vec![Box::new(gateway)],
                duty.gateway.expect("dedicated mode has gateway counters"),
            )?;
        }
    }
    spawn(
        "retransmit",
        "tally-retransmit",
        config.placement("retransmit")?,
        vec![Box::new(retransmit)],
        duty.retransmit,
    )?;
    spawn(
        "replay",
        "tally-replay",
        config.placement("replay")?,
        vec![Box::new(replay)],
        duty.replay,
    )?;
    Ok(threads)
}

/// Binds the retransmit server and the replay feed, which read the
/// journal; returns them and the replay feed's waker (the sequencer wakes
/// it when the journal grows).
fn bind_feeds(
    config: &ApplianceConfig,
    journal: &JournalWriter,
    counters: &ApplianceCounters,
) -> anyhow::Result<(RetransmitLoop, ReplayLoop<AuthThread>, Waker)> {
    let retransmit = RetransmitLoop::new(
        config,
        journal.path(),
        journal.progress(),
        RetransmitCounters::from_file(
            &counters.file,
            counters.index_of(RetransmitCounters::NAMES[0]),
        ),
    )
    .with_context(|| format!("binding retransmit.listen {}", config.retransmit.listen))?;
    let mut replay = ReplayLoop::new(
        config,
        journal.path(),
        journal.progress(),
        ReplayCounters::from_file(&counters.file, counters.index_of(ReplayCounters::NAMES[0])),
    )
    .with_context(|| format!("binding replay.listen {}", config.replay.listen))?;
    let replay_waker = replay.waker().context("creating the replay feed's waker")?;
    Ok((retransmit, replay, replay_waker))
}

/// What journal recovery rebuilds while it reads the journal.
struct RecoveryState<'a> {
    gateway_core: &'a mut GatewayCore,
    /// The last client_seq of each origin.
    last_client_seq: Vec<u32>,
    /// The journal holds `S(E)` (a restart in the middle of a rollover).
    closing: bool,
    /// The first message the gateway could not take back.
    error: Option<anyhow::Error>,
}

impl RecoveryState<'_> {
    /// One recovered journal message: its origin's numbering, and, for a
    /// client's message, the ack the gateway gave it.
    fn on_message(&mut self, seq: u64, message: &[u8]) {
        if self.error.is_some() || message.len() < tally_wire::Header::SIZE {
            return;
        }
        let origin = u16::from_be_bytes([message[1], message[2]]);
        let client_seq = u32::from_be_bytes([message[3], message[4], message[5], message[6]]);
        let timestamp_ns = u64::from_be_bytes(message[7..15].try_into().unwrap());
        self.last_client_seq[usize::from(origin)] = client_seq;
        if origin == 0 {
            self.closing |= message[0] == tally_wire::SystemEvent::TYPE
                && message.get(15) == Some(&tally_wire::system_code::END_REQUESTED);
            return;
        }
        let reject_reason = if message[0] == tally_wire::GatewayReject::TYPE {
            message.get(15).copied().unwrap_or(0)
        } else {
            0
        };
        let record = AckRecord {
            stream_seq: seq,
            timestamp_ns,
            reject_reason,
        };
        match self.gateway_core.recover_ack(origin, client_seq, record) {
            Ok(()) | Err(RecoveryError::UnknownClient(_)) => {}
            Err(error) => self.error = Some(anyhow::anyhow!("journal message {seq}: {error}")),
        }
    }
}

/// Binds the gateway's listener (with its password-check thread) and makes
/// the wakers of the gateway and the sequencer: each side wakes the other
/// when it hands over work and the other is parked, so a lone command never
/// waits for a park to time out.
fn bind_gateway(
    gateway_config: &tally_config::gateway::GatewayConfig,
    gateway_core: GatewayCore,
    to_sequencer: rtrb::Producer<Inbound>,
    from_sequencer: rtrb::Consumer<Outcome>,
    threading: Threading,
) -> anyhow::Result<(GatewayLoop<AuthThread>, Waker, Waker)> {
    let auth = AuthThread::spawn(&gateway_config.clients, gateway_config.auth_queue_depth)
        .context("starting the gateway's password-check thread")?;
    let mut gateway = GatewayLoop::new(
        gateway_config,
        gateway_core,
        to_sequencer,
        from_sequencer,
        auth,
    )
    .with_context(|| format!("binding gateway.listen {}", gateway_config.listen))?;
    let gateway_waker = gateway.waker().context("creating the gateway's waker")?;
    let sequencer_waker = Waker::new().context("creating the sequencer's waker")?;
    if threading == Threading::Dedicated {
        gateway.wake_sequencer_with(sequencer_waker.clone());
    }
    Ok((gateway, gateway_waker, sequencer_waker))
}
