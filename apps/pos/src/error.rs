//! What a till can fail with.

use std::fmt;
use std::io;

use tally_client::client::ClientError;

/// What a [`Pos`](crate::Pos) can fail with.
#[derive(Debug)]
pub enum PosError {
    /// The stream's sockets failed.
    Io(io::Error),
    /// The order-entry client stopped for good (login rejected, end of
    /// session, numbering conflict).
    Client(ClientError),
    /// The user is not a client of the appliance configuration.
    UnknownUser(String),
    /// Our first command came back on the stream with another origin: the
    /// configured origin is not this login's client id.
    OriginMismatch { configured: u16, on_stream: u16 },
    /// The configuration is unusable.
    Config(&'static str),
    /// The replica's limits (`[limits]`) are smaller than the stream needs:
    /// which one, with the numbers.
    LimitMet(String),
}

impl fmt::Display for PosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PosError::Io(error) => write!(f, "stream: {error}"),
            PosError::Client(error) => write!(f, "order entry: {error}"),
            PosError::UnknownUser(user) => {
                write!(f, "{user:?} is not a client in the appliance configuration")
            }
            PosError::OriginMismatch {
                configured,
                on_stream,
            } => write!(
                f,
                "configured origin {configured}, but our commands carry origin {on_stream}"
            ),
            PosError::Config(what) => f.write_str(what),
            PosError::LimitMet(what) => write!(
                f,
                "the stream does not fit this till's replica: {what} (raise it in [limits])"
            ),
        }
    }
}

impl std::error::Error for PosError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PosError::Io(error) => Some(error),
            PosError::Client(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for PosError {
    fn from(error: io::Error) -> Self {
        PosError::Io(error)
    }
}
