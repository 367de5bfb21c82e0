//! What every application binary asks on its command line: where the
//! appliance is and who to log in as. The appliance's own configuration file
//! names every address (stream, gateway, retransmit, replay), so an
//! application on the same host — or with a copy of that file — needs only
//! `--config` and its credentials.
//!
//! No default credentials: [`ConnectArgs::login`] is the start-up check
//! every tool makes (credentials given, user configured, role fits, the
//! appliance takes the password), and [`exit`] the statuses a tool stops
//! with when one fails ([`ToolError`], [`finish`]).

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tally_config::gateway::Role;
use tally_config::ApplianceConfig;

use crate::client::{ClientConfig, ClientError, OrderEntryClient};
use crate::consumer::ConsumerConfig;
use crate::credentials::{self, CredentialArgs, Credentials, CredentialsError, Identity};
use crate::replica::ReplicaLimits;

/// `--config`, the credentials (`--user`, `--password-file`, or
/// `TALLY_USER` with `TALLY_PASSWORD_FILE` / `TALLY_PASSWORD`; there is no
/// default) and `--connect-timeout-ms`.
#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    /// The appliance configuration file (it names the stream, gateway,
    /// retransmit and replay addresses, and the user's client id and role).
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        env = "TALLY_CONFIG",
        default_value = "config/tally.toml"
    )]
    pub config: PathBuf,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// The password itself (prefer --password-file or TALLY_PASSWORD_FILE:
    /// a command line is visible to every user of the host).
    #[arg(long, value_name = "PASSWORD", conflicts_with = "password_file")]
    pub password: Option<String>,
    /// How long start-up waits for the appliance to answer the login
    /// before it gives up (exit status 22), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
}

/// What a tool needs its login to do, checked at start-up by
/// [`ConnectArgs::login`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Read the stream (the replay feed): any configured role.
    Read,
    /// Send messages of this type through the gateway (and read the
    /// stream); `what` says what for, in a person's words ("place orders").
    Send { msg_type: u8, what: &'static str },
}

/// A checked login: the credentials the gateway or the replay feed
/// accepted, and the user's client id and role.
#[derive(Clone, Debug)]
pub struct Login {
    pub credentials: Credentials,
    pub identity: Identity,
}

impl ConnectArgs {
    /// The appliance configuration (exit status 1 when it cannot be read).
    pub fn appliance(&self) -> anyhow::Result<ApplianceConfig> {
        ApplianceConfig::load(&self.config)
            .map_err(|error| anyhow::anyhow!("configuration {}: {error}", self.config.display()))
    }

    /// The credentials given: `--password` wins, then what
    /// [`CredentialArgs::credentials`] finds (flags, then the environment).
    pub fn credentials(&self) -> Result<Credentials, CredentialsError> {
        match &self.password {
            Some(password) => CredentialArgs {
                password_env: Some(password.clone()),
                password_file: None,
                ..self.credentials.clone()
            }
            .credentials(),
            None => self.credentials.credentials(),
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }

    /// The start-up check every tool makes before it does anything: the
    /// credentials are given ([`exit::BAD_INPUT`]), the user is configured
    /// ([`exit::LOGIN_REFUSED`]), its role may do what the tool needs
    /// ([`exit::REFUSED`]), and the appliance accepts the login (gateway
    /// for senders, replay feed for readers: [`exit::LOGIN_REFUSED`], or
    /// [`exit::UNREACHABLE`] when nothing answers within
    /// `--connect-timeout-ms`). Each failure is a [`ToolError`] that says
    /// what happened and what to do.
    pub fn login(&self, appliance: &ApplianceConfig, need: Need) -> Result<Login, ToolError> {
        let credentials = self
            .credentials()
            .map_err(|error| ToolError::new(exit::BAD_INPUT, error.to_string()))?;
        let identity = Identity::of(appliance, &credentials.username).map_err(|error| {
            ToolError::new(
                exit::LOGIN_REFUSED,
                format!(
                    "{error} of {}: check --user (or TALLY_USER) and --config",
                    self.config.display()
                ),
            )
        })?;
        match need {
            Need::Read => check_replay(appliance, &credentials, self.connect_timeout())?,
            Need::Send { msg_type, what } => {
                check_role(&credentials.username, identity.role, msg_type, what)?;
                check_gateway(appliance, &credentials, self.connect_timeout())?;
            }
        }
        Ok(Login {
            credentials,
            identity,
        })
    }
}

impl Login {
    /// A stream consumer logging in to the replay feed as this user. It
    /// joins the appliance's current session (blank session: the replay
    /// feed's or the first packet's), which after rollovers is a later one
    /// than the configured `[stream] session` ([`crate::follow`]).
    pub fn consumer(&self, appliance: &ApplianceConfig) -> ConsumerConfig {
        let mut config = ConsumerConfig::for_appliance(
            appliance,
            &self.credentials.username,
            &self.credentials.password,
        );
        config.session = tally_wire::mold::Session::BLANK;
        config
    }

    /// An order-entry client logging in to the gateway as this user.
    pub fn client(&self, appliance: &ApplianceConfig) -> ClientConfig {
        ClientConfig::for_appliance(
            appliance,
            &self.credentials.username,
            &self.credentials.password,
        )
    }
}

/// The role check of [`ConnectArgs::login`] (the words are
/// [`crate::command::check_role`]'s).
fn check_role(username: &str, role: Role, msg_type: u8, what: &str) -> Result<(), ToolError> {
    crate::command::check_role(role, msg_type).map_err(|text| {
        ToolError::new(
            exit::REFUSED,
            format!(
                "user {username:?} may not {what}: {text}; log in as a user whose role may (its \
                 role is the configuration's [[clients]] entry)"
            ),
        )
    })
}

/// Logs in to the gateway once and out again.
fn check_gateway(
    appliance: &ApplianceConfig,
    credentials: &Credentials,
    timeout: Duration,
) -> Result<(), ToolError> {
    let config =
        ClientConfig::for_appliance(appliance, &credentials.username, &credentials.password);
    let gateway = config.gateway;
    match OrderEntryClient::connect(config, timeout) {
        Ok(mut client) => {
            client.logout();
            Ok(())
        }
        Err(error @ (ClientError::LoginRejected(_) | ClientError::InvalidCredentials)) => {
            Err(ToolError::new(
                exit::LOGIN_REFUSED,
                format!("the gateway {gateway} refused the login: {error}"),
            ))
        }
        Err(ClientError::Unreachable(kind)) => Err(unreachable("gateway", gateway, kind, timeout)),
        Err(error) => Err(ToolError::new(
            exit::UNREACHABLE,
            format!(
                "the gateway {gateway} did not accept the login within {timeout:?} ({error}): \
                 is the appliance running and is --config its configuration?"
            ),
        )),
    }
}

/// Logs in to the replay feed once and out again: the check
/// [`ConnectArgs::login`] makes for [`Need::Read`], for tools with their own
/// options.
pub fn check_replay(
    appliance: &ApplianceConfig,
    credentials: &Credentials,
    timeout: Duration,
) -> Result<(), ToolError> {
    let replay = crate::consumer::reachable(appliance.replay.listen);
    credentials::check_replay_login(replay, credentials, timeout).map_err(|error| match error {
        credentials::LoginCheckError::Refused(text) => ToolError::new(
            exit::LOGIN_REFUSED,
            format!("the replay feed {replay} refused the login: {text}"),
        ),
        credentials::LoginCheckError::Unreachable(kind) => {
            unreachable("replay feed", replay, kind, timeout)
        }
        credentials::LoginCheckError::NoAnswer(text) => ToolError::new(
            exit::UNREACHABLE,
            format!("the replay feed {replay} did not answer the login within {timeout:?}: {text}"),
        ),
    })
}

fn unreachable(
    what: &str,
    addr: std::net::SocketAddr,
    kind: std::io::ErrorKind,
    timeout: Duration,
) -> ToolError {
    ToolError::new(
        exit::UNREACHABLE,
        format!(
            "appliance unreachable: no connection to the {what} at {addr} within {timeout:?} \
             ({kind}): is tally-sequencer running there, and is --config its configuration? \
             (--connect-timeout-ms waits longer)"
        ),
    )
}

/// The exit statuses every tally tool shares (README "Exit statuses");
/// `tally-ctl` adds its own for decisions (10..=16 rejections, 3 no
/// decision, 4 batch rejections).
pub mod exit {
    /// Done (a command: accepted).
    pub const OK: u8 = 0;
    /// An error not listed below (a configuration file that does not load,
    /// a failed socket, a broken state file, a limit met).
    pub const ERROR: u8 = 1;
    /// The command line is not understood, or no credentials were given
    /// (clap uses 2 too).
    pub const BAD_INPUT: u8 = 2;
    /// Refused: the user's role may not do this (checked against the
    /// configuration before sending, or the gateway's `j`: role, rate
    /// limit, malformed).
    pub const REFUSED: u8 = 20;
    /// The login was refused: wrong user or password (the gateway or the
    /// replay feed answered Login Rejected), or the user is not in the
    /// configuration's `[[clients]]`.
    pub const LOGIN_REFUSED: u8 = 21;
    /// The appliance did not answer: nothing listening at the configured
    /// address, or no login answer in time.
    pub const UNREACHABLE: u8 = 22;
    /// Stopped by a signal (Ctrl-C, SIGTERM) before the end of a batch.
    pub const INTERRUPTED: u8 = 130;
}

/// An error with the exit status a tool stops with; carried in an
/// `anyhow::Error` and found again by [`exit_status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolError {
    pub status: u8,
    pub text: String,
}

impl ToolError {
    pub fn new(status: u8, text: impl Into<String>) -> ToolError {
        ToolError {
            status,
            text: text.into(),
        }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for ToolError {}

/// The status an error stops a tool with: a [`ToolError`]'s anywhere in
/// its chain, else [`exit::ERROR`].
pub fn exit_status(error: &anyhow::Error) -> u8 {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<ToolError>())
        .map_or(exit::ERROR, |error| error.status)
}

/// A tool's `main` ending: `TOOL: error: …` on stderr and its status, or 0.
pub fn finish(tool: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{tool}: error: {error:#}");
            ExitCode::from(exit_status(&error))
        }
    }
}

/// Logs to stderr through `tracing`, `RUST_LOG` deciding the level (default
/// `info`), without colours when stderr is not a terminal: the runtime's
/// one set-up ([`tally_runtime::logging::init_from_env`]), for `main`s.
pub fn init_logging() {
    tally_runtime::logging::init_from_env();
}

/// `--skus-max` … `--pending-max`: one process's overrides of the
/// configuration's [limits], the one place the state's capacity lives.
// The field docs are `--help` text: `[limits]` is the configuration's table,
// not a link.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Args, Clone, Debug, Default)]
pub struct LimitsArgs {
    /// SKUs the state can hold (default: the configuration's [limits]).
    #[arg(long)]
    pub skus_max: Option<u32>,
    /// Locations the state can hold (default: [limits]).
    #[arg(long)]
    pub locations_max: Option<u16>,
    /// Cells (location, sku) the state can hold (default: [limits]).
    #[arg(long)]
    pub cells_max: Option<u32>,
    /// Open holds the state can hold (default: [limits]).
    #[arg(long)]
    pub holds_max: Option<u32>,
    /// Order, hold and transfer ids remembered, for modify/cancel and
    /// duplicate checks (default: [limits]).
    #[arg(long)]
    pub orders_max: Option<u32>,
    /// Commands remembered until their outcome arrives (default: [limits]).
    #[arg(long)]
    pub pending_max: Option<u32>,
}

impl LimitsArgs {
    /// The configuration's `[limits]` with this process's overrides,
    /// validated; `what` names the table in the error ("replica", "state").
    pub fn limits(&self, appliance: &ApplianceConfig, what: &str) -> anyhow::Result<ReplicaLimits> {
        let mut limits = ReplicaLimits::from_config(&appliance.limits);
        let overrides = [
            (self.skus_max, &mut limits.skus_max),
            (self.cells_max, &mut limits.cells_max),
            (self.holds_max, &mut limits.holds_max),
            (self.orders_max, &mut limits.orders_max),
            (self.pending_max, &mut limits.pending_max),
        ];
        for (flag, limit) in overrides {
            if let Some(value) = flag {
                *limit = value;
            }
        }
        if let Some(value) = self.locations_max {
            limits.locations_max = value;
        }
        limits
            .validate()
            .map_err(|error| anyhow::anyhow!("{what} limits {limits:?}: {error}"))?;
        Ok(limits)
    }
}
