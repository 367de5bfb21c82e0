//! The warehouse's side of the daily rollover (README, "Daily session
//! rollover"; docs/protocol.md, "Session rollover").
//!
//! - **Closing.** The appliance sequences `S(E)`. Every command before it
//!   is decided as usual; commands after it are not given to the engine
//!   (they get no outcome in this session). Once nothing before `S(E)` is
//!   left undecided, the warehouse publishes `S(F)`, its last event of the
//!   session; the appliance ends the session right after it, so every
//!   event the warehouse sent is on the stream and its state is exactly the
//!   stream's.
//! - **Following.** At the end of the session the warehouse writes its
//!   snapshot marked as the session's closing state, joins the next session
//!   ([`Session::successor`]) from seq 1, and broadcasts its state as that
//!   session's start (`L`, `R`, `I`, `H`, `S(W)`), without a restart.
//! - **Starting** in a session that follows the one its snapshot closed,
//!   it carries that closing state over the same way; a snapshot of an
//!   earlier session that is not a closing state is refused (the stock at
//!   that session's end is unknown to it).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tally_client::client::{ClientConfig, ClientError, OrderEntryClient};
use tally_client::consumer::StreamConsumer;
use tally_client::snapshot;
use tally_wire::mold::Session;
use tally_wire::{system_code, Message};

use super::{Outbox, WarehouseApp, WarehouseAppConfig};
use crate::decide::{CatchUp, CatchUpError, Warehouse, WarehouseConfig, SNAPSHOT_ENDED};

/// The session the carried state was for already holds a session-start
/// broadcast: the stream, not the carried state, is the truth.
#[derive(Debug)]
pub(super) struct CarriedStateSuperseded;

impl std::fmt::Display for CarriedStateSuperseded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the session already holds a session-start broadcast")
    }
}

impl std::error::Error for CarriedStateSuperseded {}

/// Hands one stream message to the engine, noting the appliance's `S(E)`;
/// after it, commands are not given to the engine (never decided in this
/// session).
pub(super) fn deliver(
    engine: &mut Warehouse,
    outbox: &mut Outbox,
    closing_at: &mut Option<u64>,
    seq: u64,
    message: &Message,
) {
    if closing_at.is_some() && !message.is_event() {
        return;
    }
    if let Message::SystemEvent(event) = message {
        if event.code == system_code::END_REQUESTED && event.header.origin.get() == 0 {
            *closing_at = Some(seq);
        }
    }
    engine.on_stream(seq, message, outbox);
}

/// The engine to start with in `session`, the seq to read the stream
/// from, and whether the state was carried over from a previous session.
pub(super) fn initial_state(
    config: &WarehouseAppConfig,
    session: &[u8; 10],
    client: &OrderEntryClient,
) -> anyhow::Result<(Warehouse, u64, bool)> {
    let engine_config = WarehouseConfig {
        own_origin: config.own_origin,
        limits: config.limits,
    };
    let fresh = |client: &OrderEntryClient| {
        let mut engine = Warehouse::new(engine_config);
        engine.pause_decisions();
        engine.begin_run(client.next_client_seq());
        engine
    };
    let Some(path) = config.snapshot.as_ref().filter(|path| path.exists()) else {
        return Ok((fresh(client), 1, false));
    };
    let info = snapshot::read_info(path)
        .with_context(|| format!("reading the snapshot {}", path.display()))?;
    let (mut engine, _) = Warehouse::restore(path, engine_config)
        .with_context(|| format!("restoring the snapshot {}", path.display()))?;
    if info.session == *session {
        tracing::info!(path = %path.display(), seq = info.seq, "warehouse restored from its snapshot");
        engine.begin_run(client.next_client_seq());
        return Ok((engine, info.seq + 1, false));
    }
    let ended = Session(info.session);
    let current = Session(*session);
    let follows = current
        .chain_position(&ended)
        .is_some_and(|steps| steps >= 1);
    if info.app[3] != SNAPSHOT_ENDED || !follows {
        bail!(
            "the snapshot {} is of session {ended}, which {} (the appliance runs {current}); \
             the stock at that session's end is unknown to this warehouse. Restore the \
             snapshot it wrote at that session's end, or move the snapshot away to start \
             from the inventory file",
            path.display(),
            if follows {
                "it did not see end"
            } else {
                "this session does not follow"
            },
        );
    }
    tracing::info!(path = %path.display(), ended = %ended, session = %current, "carrying the closing state of the previous session over");
    engine.start_new_session();
    engine.pause_decisions();
    engine.begin_run(client.next_client_seq());
    Ok((engine, 1, true))
}

impl WarehouseApp {
    /// After `S(E)`: decides what is left before it, then publishes `S(F)`.
    /// Returns the work done.
    pub(super) fn close_session(&mut self) -> anyhow::Result<usize> {
        self.snapshot_wanted = false;
        if !self.engine.is_live() {
            match self.engine.finish_catch_up(&mut self.outbox) {
                Ok(CatchUp::Done { decided }) => {
                    tracing::info!(decided, "decided what was left before S(E)")
                }
                Ok(CatchUp::More { .. }) => return Ok(1),
                // An earlier run's events are still coming back: later.
                Err(CatchUpError::AwaitingOwnEvents { .. }) => return Ok(0),
            }
        }
        self.engine.close_session(&mut self.outbox);
        self.closed = true;
        tracing::info!(
            end_requested_seq = self.closing_at.unwrap_or(0),
            "session closing: S(F) published; nothing more is decided in it"
        );
        self.drain_outbox();
        Ok(1)
    }

    /// At the end of the session: writes the closing snapshot, joins the
    /// next session and broadcasts the state as its start.
    pub(super) fn follow_next_session(&mut self) -> anyhow::Result<()> {
        let ended = self.consumer.session();
        if self.engine.in_flight() != 0 || !self.outbox.events.is_empty() {
            bail!(
                "session {ended} ended with {} of the warehouse's events not on its stream \
                 (the appliance ended it without waiting for S(F): no warehouse answered within \
                 stream.close_grace_ms); its state is ahead of the stream, so it does not carry \
                 it over. Raise stream.close_grace_ms",
                self.engine.in_flight() as usize + self.outbox.events.len()
            );
        }
        if let Some(path) = &self.config.snapshot {
            let bytes = self
                .engine
                .save_snapshot_ended(path, &self.session)
                .with_context(|| format!("writing the closing snapshot {}", path.display()))?;
            self.stats.snapshots_saved += 1;
            tracing::info!(path = %path.display(), bytes, session = %ended, "closing snapshot saved");
        }
        let Some(next) = ended.successor() else {
            bail!("session {ended} has no successor name; the appliance cannot roll over either");
        };
        let client = connect_to(&self.config.client, next, self.config.catch_up_timeout)?;
        let mut consumer_config = self.config.consumer.clone();
        consumer_config.session = next;
        consumer_config.start_seq = 1;
        // The old consumer's sockets go before the new one binds.
        self.consumer =
            StreamConsumer::new(&consumer_config).context("joining the next session")?;
        self.client = client;
        self.session = *next.as_bytes();
        self.engine.start_new_session();
        self.engine.pause_decisions();
        self.engine.begin_run(self.client.next_client_seq());
        self.closing_at = None;
        self.closed = false;
        self.carried = true;
        tracing::info!(ended = %ended, session = %next, "following the next session");
        self.catch_up()?;
        if let Some(interval) = self.next_snapshot.map(|_| self.config.snapshot_interval) {
            self.next_snapshot = Some(Instant::now() + interval);
        }
        Ok(())
    }

    /// Starts over with an empty engine reading the session from seq 1 (its
    /// session-start broadcast holds the whole state).
    pub(super) fn rebuild_from_stream(&mut self) -> anyhow::Result<()> {
        let engine_config = WarehouseConfig {
            own_origin: self.config.own_origin,
            limits: self.config.limits,
        };
        let mut engine = Warehouse::new(engine_config);
        engine.pause_decisions();
        engine.begin_run(self.client.next_client_seq());
        let mut consumer_config = self.config.consumer.clone();
        consumer_config.session = self.consumer.session();
        consumer_config.start_seq = 1;
        self.consumer = StreamConsumer::new(&consumer_config).context("joining the stream")?;
        self.engine = engine;
        self.outbox.events.clear();
        self.carried = false;
        self.catch_up()
    }
}

/// Logs in to `session`, retrying while the appliance still runs the
/// previous one (`S`: session unavailable) or is restarting, up to
/// `timeout`.
fn connect_to(
    config: &ClientConfig,
    session: Session,
    timeout: Duration,
) -> anyhow::Result<OrderEntryClient> {
    let mut config = config.clone();
    config.session = session;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match OrderEntryClient::connect(config.clone(), left.min(Duration::from_secs(2))) {
            Ok(client) => return Ok(client),
            Err(
                error @ (ClientError::LoginRejected(b'S')
                | ClientError::Unreachable(_)
                | ClientError::Timeout),
            ) if Instant::now() < deadline => {
                tracing::debug!(%error, session = %session, "the next session is not open yet");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => {
                bail!(
                    "logging in to the next session {session} as {}: {error}",
                    config.username
                )
            }
        }
    }
}
