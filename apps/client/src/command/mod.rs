//! The command client: send one command (or a pipeline of them) through the
//! gateway, exactly once, and wait for the warehouse's decision on the
//! stream. What `tally-ctl` and the HTTP service build their writes on.
//!
//! A [`CommandClient`] owns
//! - an [`OrderEntryClient`] logged in as the user (exactly-once numbering:
//!   each command gets the next client_seq, resent after a reconnect only if
//!   it was never sequenced);
//! - a [`StreamConsumer`] feeding a [`Replica`] of the whole session (from
//!   seq 1), which is the directory SKUs and locations are resolved against
//!   ([`Spec::resolve`]) and where decisions are read;
//! - a ring of its commands awaiting their decision (`window` of them).
//!
//! **Matching decisions.** A command is ours when its header on the stream
//! carries our origin (the user's `client_id` in the configuration's
//! `[[clients]]`) and a client_seq we sent: the answer's `cmd_seq` names
//! the command, the command names origin and client_seq (docs/protocol.md,
//! "How replicas tie outcomes to commands"). A gateway reject (`j` ack or
//! `j` on the stream) decides the command at once. The decision carries the
//! stream seq of the deciding event and, for an accepted command, the cells
//! it changed as the replica holds them right after it
//! ([`Decision`], [`Verdict`]); a rejection carries the reason and the
//! numbers behind it (available units, a cell's current version).
//!
//! **Use.** [`CommandClient::connect`] logs in (a wrong password or an
//! unreachable gateway fails here, with [`CommandError`] saying which) and
//! catches up with the stream. Then either
//! [`execute`](CommandClient::execute) one [`Request`] and wait for its
//! [`Decision`] up to a timeout, or pipeline: [`submit`](CommandClient::submit)
//! while [`has_room`](CommandClient::has_room), and
//! [`poll`](CommandClient::poll) / [`wait`](CommandClient::wait) for
//! decisions as they come.
//!
//! One process per user at a time: the gateway replaces a user's connection
//! when the same user logs in again, and the two would fight over the
//! numbering ([`ClientError::NumberingConflict`]). The HTTP service logs in
//! as its own user.
//!
//! Threading: one thread owns a `CommandClient`; every table is allocated in
//! [`CommandClient::connect`].
//!
//! ```no_run
//! use std::time::Duration;
//! use tally_client::command::{CommandClient, CommandConfig, Ref, Spec};
//! use tally_client::credentials::Credentials;
//! # fn run(appliance: &tally_config::ApplianceConfig) -> Result<(), tally_client::command::CommandError> {
//! let credentials = Credentials { username: "pos1".into(), password: "pos1pass".into() };
//! let config = CommandConfig::for_appliance(appliance, &credentials)?;
//! let mut commands = CommandClient::connect(config)?;
//! let spec = Spec::Order { id: 17, sku: Ref::from("MUG"), qty: 2, location: None };
//! let request = commands.resolve(&spec)?;
//! let decision = commands.execute(&request, Duration::from_secs(5))?;
//! println!("{decision}"); // filled seq=… on_hand=…  or  rejected: insufficient stock (available 1)
//! # Ok(()) }
//! ```

mod decision;
mod request;
mod stream;
mod track;

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

pub use decision::{reject_words, CellAfter, Decision, Effect, RejectedBy, Rejection, Verdict};
pub use request::{
    check_role, printable, AdjustReason, Name, Ref, Request, ResolveError, Spec, DEFAULT_TTL_MS,
    QTY_MAX,
};
pub use stream::StreamReplica;

use tally_config::ApplianceConfig;

use crate::client::{ClientConfig, ClientError, ClientEvent, OrderEntryClient};
use crate::consumer::{monotonic_ns, ConsumerConfig, StreamConsumer};
use crate::credentials::{Credentials, CredentialsError, Identity};
use crate::replica::{Replica, ReplicaLimits};
use track::Tracker;

/// Everything a [`CommandClient`] needs.
#[derive(Clone, Debug)]
pub struct CommandConfig {
    pub consumer: ConsumerConfig,
    pub client: ClientConfig,
    /// The user's client id and role (from the configuration's `[[clients]]`).
    pub identity: Identity,
    pub limits: ReplicaLimits,
    /// Logging in and catching up with the stream, each, at most this long.
    pub connect_timeout: Duration,
}

impl CommandConfig {
    /// For `appliance`, logged in (gateway and replay feed) as `credentials`;
    /// the user must be one of the configuration's clients, with a role that
    /// may use the gateway.
    pub fn for_appliance(
        appliance: &ApplianceConfig,
        credentials: &Credentials,
    ) -> Result<CommandConfig, CommandError> {
        let identity = Identity::of(appliance, &credentials.username)?;
        if !identity.role.may_use_gateway() {
            return Err(CommandError::NotPermitted(format!(
                "user {:?} has role {}, which may not send commands (pos, ops or authority may)",
                credentials.username, identity.role
            )));
        }
        // The appliance's current session (blank: Login Accepted names it),
        // which after a rollover is a later one than the configured
        // `[stream] session`.
        let mut client =
            ClientConfig::for_appliance(appliance, &credentials.username, &credentials.password);
        client.session = tally_wire::mold::Session::BLANK;
        let mut consumer =
            ConsumerConfig::for_appliance(appliance, &credentials.username, &credentials.password);
        consumer.session = tally_wire::mold::Session::BLANK;
        Ok(CommandConfig {
            consumer,
            client,
            identity,
            limits: ReplicaLimits::from_config(&appliance.limits),
            connect_timeout: Duration::from_secs(10),
        })
    }
}

/// What a [`CommandClient`] can fail with (decisions, rejections included,
/// are not errors).
#[derive(Debug)]
pub enum CommandError {
    /// No usable credentials, or the user is not configured.
    Credentials(CredentialsError),
    /// The user's role may not send this (checked before sending).
    NotPermitted(String),
    /// A SKU, location or quantity that does not resolve.
    Resolve(ResolveError),
    /// The gateway refused the login (wrong user or password, or throttled):
    /// its reason code and the text of its debug packet, if any.
    LoginRefused { reason: u8, detail: String },
    /// The gateway or the replay feed cannot be reached.
    Unreachable(String),
    /// The stream's sockets failed.
    Stream(io::Error),
    /// The stream could not be caught up with in time.
    CatchUp(String),
    /// The warehouse has not come online in this session (no `S(W)`):
    /// nobody would decide.
    WarehouseOffline,
    /// No decision within the timeout. The command was taken (it may still
    /// be decided); `cmd_seq` is its stream number when known (0 = not yet
    /// sequenced).
    NoDecision { client_seq: u32, cmd_seq: u64 },
    /// The order-entry client stopped (session ended, numbering conflict).
    Client(ClientError),
    /// The replica's `[limits]` are smaller than the stream needs.
    LimitMet(String),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Credentials(error) => error.fmt(f),
            CommandError::NotPermitted(text) => f.write_str(text),
            CommandError::Resolve(error) => error.fmt(f),
            CommandError::LoginRefused { reason, detail } => write!(
                f,
                "login refused by the gateway: {}",
                crate::credentials::login_refusal_words(*reason, detail)
            ),
            CommandError::Unreachable(text) => write!(f, "appliance unreachable: {text}"),
            CommandError::Stream(error) => write!(f, "stream: {error}"),
            CommandError::CatchUp(text) => write!(f, "could not catch up with the stream: {text}"),
            CommandError::WarehouseOffline => f.write_str(
                "the warehouse has not come online in this session (no authority-online \
                 event on the stream): nothing was sent, nobody would decide it",
            ),
            CommandError::NoDecision {
                client_seq,
                cmd_seq,
            } => {
                write!(f, "no decision in time for command client_seq={client_seq}")?;
                if *cmd_seq != 0 {
                    write!(
                        f,
                        " (sequenced at seq={cmd_seq}; the warehouse may still decide it)"
                    )
                } else {
                    f.write_str(" (not yet sequenced)")
                }
            }
            CommandError::Client(error) => write!(f, "order entry: {error}"),
            CommandError::LimitMet(text) => write!(f, "the stream does not fit [limits]: {text}"),
        }
    }
}

impl std::error::Error for CommandError {}

impl From<CredentialsError> for CommandError {
    fn from(error: CredentialsError) -> Self {
        CommandError::Credentials(error)
    }
}

impl From<ResolveError> for CommandError {
    fn from(error: ResolveError) -> Self {
        CommandError::Resolve(error)
    }
}

impl From<io::Error> for CommandError {
    fn from(error: io::Error) -> Self {
        CommandError::Stream(error)
    }
}

/// The command client. See the module documentation.
pub struct CommandClient {
    client: OrderEntryClient,
    stream: StreamReplica,
    tracker: Tracker,
    identity: Identity,
    window: usize,
    /// The client_seq of the first command of this process (0 = none yet).
    first_client_seq: u32,
}

impl CommandClient {
    /// Logs in to the gateway, then reads the session's stream from seq 1
    /// until it has caught up (everything the stream had when it started).
    pub fn connect(config: CommandConfig) -> Result<CommandClient, CommandError> {
        let client = login(&config)?;
        let window = config.client.window;
        let mut commands = CommandClient {
            client,
            stream: StreamReplica::new(&config.consumer, config.limits)?,
            tracker: Tracker::new(window, config.identity.client_id),
            identity: config.identity,
            window,
            first_client_seq: 0,
        };
        let deadline = Instant::now() + config.connect_timeout;
        while !commands
            .stream
            .caught_up(config.connect_timeout, deadline)?
        {
            commands.wait(Duration::from_millis(20), |_| {})?;
        }
        if commands.replica().authority_online_seq() == 0 {
            return Err(CommandError::WarehouseOffline);
        }
        Ok(commands)
    }

    /// One bounded round: the client's acks, then the stream's messages;
    /// calls `on_decision` for every command decided. Returns the work done.
    pub fn poll(&mut self, mut on_decision: impl FnMut(Decision)) -> Result<usize, CommandError> {
        let mut closed = None;
        let tracker = &mut self.tracker;
        let now_ns = monotonic_ns();
        let mut work = self.client.poll(now_ns, |event| match event {
            ClientEvent::Ack(ack) => tracker.on_ack(ack, &mut on_decision),
            ClientEvent::Closed(error) => closed = Some(error),
            _ => {}
        });
        if let Some(error) = closed {
            return Err(CommandError::Client(error));
        }
        work += self.stream.poll(now_ns, |replica, seq, message| {
            tracker.on_stream(replica, seq, message, &mut on_decision)
        })?;
        Ok(work)
    }

    /// Polls, blocking in the kernel up to `timeout` while nothing happens.
    pub fn wait(
        &mut self,
        timeout: Duration,
        mut on_decision: impl FnMut(Decision),
    ) -> Result<usize, CommandError> {
        let work = self.poll(&mut on_decision)?;
        if work > 0 {
            return Ok(work);
        }
        // Decisions arrive on the stream: block there, briefly, so acks and
        // heartbeats of the client are served too.
        let tracker = &mut self.tracker;
        let slice = timeout.min(Duration::from_millis(5));
        let work = self.stream.wait(slice, |replica, seq, message| {
            tracker.on_stream(replica, seq, message, &mut on_decision)
        })?;
        Ok(work + self.poll(&mut on_decision)?)
    }

    /// `spec` with its SKUs and locations resolved, checked against the
    /// user's role.
    pub fn resolve(&self, spec: &Spec) -> Result<Request, CommandError> {
        check_role(self.identity.role, spec.msg_type()).map_err(CommandError::NotPermitted)?;
        Ok(spec.resolve(self.stream.replica())?)
    }

    /// Whether another command can be submitted now (the window of
    /// undecided commands, and the client's own window, have room).
    pub fn has_room(&self) -> bool {
        self.client.is_ready()
            && self.client.has_room()
            && self.tracker.in_flight < self.window
            && self.tracker.has_room(self.client.next_client_seq())
    }

    /// Queues `request` (written at the next poll or [`flush`](Self::flush));
    /// returns its client_seq. [`ClientError::WindowFull`] or
    /// [`ClientError::Disconnected`] (as [`CommandError::Client`]) mean
    /// "poll, then try again": nothing was taken.
    pub fn submit(&mut self, request: &Request) -> Result<u32, CommandError> {
        check_role(self.identity.role, request.msg_type()).map_err(CommandError::NotPermitted)?;
        if !self.has_room() {
            return Err(CommandError::Client(if self.client.is_ready() {
                ClientError::WindowFull
            } else {
                ClientError::Disconnected
            }));
        }
        let client_seq = self
            .client
            .queue(request.encode().as_bytes())
            .map_err(CommandError::Client)?;
        self.tracker.insert(client_seq, *request);
        if self.first_client_seq == 0 {
            self.first_client_seq = client_seq;
        }
        Ok(client_seq)
    }

    /// Writes what [`submit`](Self::submit) queued.
    pub fn flush(&mut self) {
        self.client.flush();
    }

    /// Sends `request` and waits up to `timeout` for its decision (other
    /// decisions meanwhile are dropped: use [`poll`](Self::poll) when
    /// pipelining).
    pub fn execute(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Decision, CommandError> {
        let deadline = Instant::now() + timeout;
        let client_seq = loop {
            match self.submit(request) {
                Ok(client_seq) => break client_seq,
                Err(CommandError::Client(ClientError::WindowFull | ClientError::Disconnected))
                    if Instant::now() < deadline =>
                {
                    self.wait(Duration::from_millis(5), |_| {})?;
                }
                Err(CommandError::Client(ClientError::WindowFull | ClientError::Disconnected)) => {
                    return Err(CommandError::NoDecision {
                        client_seq: 0,
                        cmd_seq: 0,
                    });
                }
                Err(error) => return Err(error),
            }
        };
        self.flush();
        let mut decided = None;
        while decided.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return Err(CommandError::NoDecision {
                    client_seq,
                    cmd_seq: self.tracker.cmd_seq(client_seq),
                });
            }
            self.wait(deadline - now, |decision| {
                if decision.client_seq == client_seq {
                    decided = Some(decision);
                }
            })?;
        }
        Ok(decided.expect("loop ends with a decision"))
    }

    /// Waits up to `timeout` until every submitted command is decided;
    /// returns whether they all are.
    pub fn drain(
        &mut self,
        timeout: Duration,
        mut on_decision: impl FnMut(Decision),
    ) -> Result<bool, CommandError> {
        let deadline = Instant::now() + timeout;
        self.flush();
        while self.tracker.in_flight > 0 {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.wait(deadline - now, &mut on_decision)?;
        }
        Ok(true)
    }

    /// Whether command `client_seq` is still undecided.
    pub fn is_awaiting(&self, client_seq: u32) -> bool {
        self.tracker.is_awaiting(client_seq)
    }

    /// Commands submitted and not yet decided.
    pub fn in_flight(&self) -> usize {
        self.tracker.in_flight
    }

    /// The replica (directory, cells, holds, orders) as of the stream's
    /// [`Replica::last_seq`].
    pub fn replica(&self) -> &Replica {
        self.stream.replica()
    }

    pub fn consumer(&self) -> &StreamConsumer {
        self.stream.consumer()
    }

    pub fn client(&self) -> &OrderEntryClient {
        &self.client
    }

    /// The user's origin and role.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// The client_seq the next command gets (Login Accepted's number, plus
    /// the commands sent since).
    pub fn next_client_seq(&self) -> u32 {
        self.client.next_client_seq()
    }

    /// Logs out of the gateway.
    pub fn logout(&mut self) {
        self.client.logout();
    }

    /// After the session ended ([`CommandError::is_session_end`]): reads
    /// the rest of the ended session's stream, up to `timeout`, so every
    /// decision it holds reaches `on_decision`. Returns whether the end
    /// was reached; the commands still undecided then were not carried
    /// out, and never will be in that session (docs/protocol.md "Session
    /// rollover"): send them again in the next one, with a new client.
    pub fn finish_session(
        &mut self,
        timeout: Duration,
        mut on_decision: impl FnMut(Decision),
    ) -> Result<bool, CommandError> {
        let deadline = Instant::now() + timeout;
        let tracker = &mut self.tracker;
        while !self.stream.consumer().is_ended() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.stream.wait(
                left.min(Duration::from_millis(20)),
                |replica, seq, message| tracker.on_stream(replica, seq, message, &mut on_decision),
            )?;
        }
        Ok(true)
    }
}

impl CommandError {
    /// Whether this is the end of the session (a rollover): the next
    /// session can be joined with a new [`CommandClient`].
    pub fn is_session_end(&self) -> bool {
        matches!(self, CommandError::Client(ClientError::SessionEnded))
    }
}

/// Connects and logs in, mapping the client's failures to what a person
/// needs to hear (with the gateway's debug text for a refused login).
fn login(config: &CommandConfig) -> Result<OrderEntryClient, CommandError> {
    let gateway = config.client.gateway;
    let mut client =
        OrderEntryClient::new(config.client.clone()).map_err(|_| CommandError::LoginRefused {
            reason: b'A',
            detail: "the username (1 to 6 characters) or password (1 to 10) does not fit a login"
                .into(),
        })?;
    let deadline = Instant::now() + config.connect_timeout;
    loop {
        client.wait(deadline.saturating_duration_since(Instant::now()), |_| {});
        if client.is_ready() {
            return Ok(client);
        }
        match client.closed() {
            Some(ClientError::LoginRejected(reason)) => {
                return Err(CommandError::LoginRefused {
                    reason,
                    detail: client.last_debug().to_string(),
                })
            }
            Some(error) => return Err(CommandError::Client(error)),
            None => {}
        }
        if Instant::now() >= deadline {
            let stats = client.stats();
            return Err(CommandError::Unreachable(if stats.connects == 0 {
                format!(
                    "gateway {gateway}: no connection in {:?}",
                    config.connect_timeout
                )
            } else {
                format!(
                    "gateway {gateway}: no login answer in {:?}",
                    config.connect_timeout
                )
            }));
        }
    }
}
