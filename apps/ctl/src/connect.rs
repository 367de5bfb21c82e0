//! The options every subcommand shares and the connections they open.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tally_client::cli::{check_replay, ToolError};
use tally_client::command::{
    check_role, CommandClient, CommandConfig, CommandError, StreamReplica,
};
use tally_client::consumer::ConsumerConfig;
use tally_client::credentials::{CredentialArgs, Credentials, Identity};
use tally_client::replica::ReplicaLimits;
use tally_client::tally_config::ApplianceConfig;

use crate::exit;

/// `--config`, the credentials, `--json`, `--timeout-ms`.
#[derive(Args, Clone, Debug)]
pub struct Global {
    /// The appliance configuration file (it names every address, and the
    /// user's client id and role).
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        env = "TALLY_CONFIG",
        global = true,
        default_value = "config/tally.toml"
    )]
    pub config: PathBuf,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// Print JSON (one object a line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for the warehouse's decision (and for login and
    /// catching up with the stream), in milliseconds.
    #[arg(long, value_name = "MS", global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

/// An error with the exit status it ends the process with.
#[derive(Debug)]
pub struct Failure {
    pub text: String,
    pub status: u8,
}

impl Failure {
    pub fn new(status: u8, text: impl Into<String>) -> Failure {
        Failure {
            text: text.into(),
            status,
        }
    }
}

impl From<ToolError> for Failure {
    fn from(error: ToolError) -> Failure {
        Failure::new(error.status, error.text)
    }
}

impl From<CommandError> for Failure {
    fn from(error: CommandError) -> Failure {
        Failure::new(exit::of_error(&error), error.to_string())
    }
}

impl Global {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }

    pub fn appliance(&self) -> Result<ApplianceConfig, Failure> {
        ApplianceConfig::load(&self.config).map_err(|error| {
            Failure::new(
                exit::ERROR,
                format!("configuration {}: {error}", self.config.display()),
            )
        })
    }

    pub fn credentials(&self) -> Result<Credentials, Failure> {
        self.credentials
            .credentials()
            .map_err(|error| Failure::from(CommandError::from(error)))
    }

    /// Logged in and caught up with the stream, for commands.
    pub fn command_client(&self) -> Result<CommandClient, Failure> {
        let appliance = self.appliance()?;
        let credentials = self.credentials()?;
        let mut config = CommandConfig::for_appliance(&appliance, &credentials)?;
        config.connect_timeout = self.timeout();
        Ok(CommandClient::connect(config)?)
    }

    /// Whether the user's role may send `msg_type` (before connecting:
    /// nothing is sent when it may not).
    pub fn check_role(&self, msg_type: u8) -> Result<(), Failure> {
        let appliance = self.appliance()?;
        let credentials = self.credentials()?;
        let identity =
            Identity::of(&appliance, &credentials.username).map_err(CommandError::from)?;
        check_role(identity.role, msg_type)
            .map_err(|text| Failure::from(CommandError::NotPermitted(text)))
    }

    /// What reading the stream takes (any role, `reader` too); the replay
    /// feed's login is checked first, so a wrong password says so at once.
    pub fn stream_config(&self) -> Result<(ConsumerConfig, ReplicaLimits, Identity), Failure> {
        let appliance = self.appliance()?;
        let credentials = self.credentials()?;
        let identity =
            Identity::of(&appliance, &credentials.username).map_err(CommandError::from)?;
        check_replay(&appliance, &credentials, self.timeout())?;
        let consumer =
            ConsumerConfig::for_appliance(&appliance, &credentials.username, &credentials.password);
        Ok((
            consumer,
            ReplicaLimits::from_config(&appliance.limits),
            identity,
        ))
    }

    /// Caught up with the stream, for reading.
    pub fn stream(&self) -> Result<(StreamReplica, Identity), Failure> {
        let (consumer, limits, identity) = self.stream_config()?;
        Ok((
            StreamReplica::connect(&consumer, limits, self.timeout())?,
            identity,
        ))
    }
}
