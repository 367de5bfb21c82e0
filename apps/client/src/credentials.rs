//! Who a tool logs in as: `--user` and `--password-file`, or the environment
//! (`TALLY_USER`, `TALLY_PASSWORD`, `TALLY_PASSWORD_FILE`). There is no
//! default: a tool that is not told who it is refuses to start and says how
//! to tell it.
//!
//! The environment is read by the binary's argument parser (clap's `env`),
//! never by this library: [`CredentialArgs::credentials`] only looks at what
//! the parser filled in. A flag wins over the environment; a password file
//! wins over a password in the environment.
//!
//! What the credentials may do is the configuration's business:
//! [`Identity::of`] finds the user among the configuration's `[[clients]]`
//! (its client id, the `origin` the gateway stamps, and its role), so a tool
//! can refuse a command the role may not send before it sends anything.

use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use tally_config::gateway::Role;
use tally_config::ApplianceConfig;
use tally_wire::mold::Session;
use tally_wire::soup::{self, FrameDecoder, ServerPacket};

/// Longest password file read (a password is at most 10 bytes; the rest of
/// the first line is refused, not silently cut).
const PASSWORD_FILE_BYTES_MAX: u64 = 4096;

/// `--user`, `--password-file`, and their environment variables.
#[derive(Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialArgs {
    /// Username to log in with (environment: TALLY_USER).
    #[arg(long, value_name = "NAME", env = "TALLY_USER", global = true)]
    pub user: Option<String>,
    /// File whose first line is the password (environment:
    /// TALLY_PASSWORD_FILE, or the password itself in TALLY_PASSWORD).
    #[arg(long, value_name = "FILE", env = "TALLY_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// The password itself, from the environment only (a command line is
    /// visible to every user of the host).
    #[arg(
        long = "password-from-env-only",
        env = "TALLY_PASSWORD",
        global = true,
        hide = true,
        hide_env_values = true
    )]
    pub password_env: Option<String>,
}

/// A username and its password, as given.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"…")
            .finish()
    }
}

/// Why no usable credentials were given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialsError {
    /// Neither `--user` nor `TALLY_USER`.
    NoUser,
    /// Neither `--password-file`, `TALLY_PASSWORD_FILE` nor `TALLY_PASSWORD`.
    NoPassword,
    /// The password file could not be read.
    PasswordFile { path: PathBuf, reason: String },
    /// The user is not among the configuration's `[[clients]]`.
    UnknownUser(String),
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialsError::NoUser => f.write_str(
                "no user given: pass --user NAME or set TALLY_USER (there is no default user)",
            ),
            CredentialsError::NoPassword => f.write_str(
                "no password given: pass --password-file FILE, or set TALLY_PASSWORD_FILE or \
                 TALLY_PASSWORD (there is no default password)",
            ),
            CredentialsError::PasswordFile { path, reason } => {
                write!(f, "password file {}: {reason}", path.display())
            }
            CredentialsError::UnknownUser(user) => write!(
                f,
                "user {user:?} is not a client in the configuration's [[clients]]"
            ),
        }
    }
}

impl std::error::Error for CredentialsError {}

impl CredentialArgs {
    /// The credentials given (flag, then environment), or why there are
    /// none.
    pub fn credentials(&self) -> Result<Credentials, CredentialsError> {
        let username = self
            .user
            .as_deref()
            .filter(|user| !user.is_empty())
            .ok_or(CredentialsError::NoUser)?
            .to_string();
        let password = match (&self.password_file, &self.password_env) {
            (Some(path), _) => read_password_file(path)?,
            (None, Some(password)) if !password.is_empty() => password.clone(),
            _ => return Err(CredentialsError::NoPassword),
        };
        Ok(Credentials { username, password })
    }
}

/// The first line of `path` (without its line end): at most
/// `PASSWORD_FILE_BYTES_MAX` bytes are read, and an empty first line is
/// refused.
pub fn read_password_file(path: &Path) -> Result<String, CredentialsError> {
    let error = |reason: String| CredentialsError::PasswordFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(PASSWORD_FILE_BYTES_MAX)
        .read_to_end(&mut bytes)
        .map_err(|e| error(e.to_string()))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| error("not UTF-8 text".into()))?;
    let first = text.lines().next().unwrap_or("");
    if first.is_empty() {
        return Err(error("its first line is empty".into()));
    }
    Ok(first.to_string())
}

/// A configured client: the origin the gateway stamps on what it sends, and
/// its role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub client_id: u16,
    pub role: Role,
}

impl Identity {
    /// `username`'s entry in `appliance`'s `[[clients]]`.
    pub fn of(appliance: &ApplianceConfig, username: &str) -> Result<Identity, CredentialsError> {
        let entry = appliance
            .clients
            .iter()
            .find(|client| client.username == username)
            .ok_or_else(|| CredentialsError::UnknownUser(username.to_string()))?;
        // The configuration validated every role when it loaded.
        let role = entry.role.parse().unwrap_or(Role::Reader);
        Ok(Identity {
            client_id: entry.client_id,
            role,
        })
    }
}

/// Why [`check_replay_login`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginCheckError {
    /// The server answered Login Rejected: what it means, in words.
    Refused(String),
    /// No connection could be made in time (the last error's kind).
    Unreachable(io::ErrorKind),
    /// Connected, but no login answer in time (or the connection closed).
    NoAnswer(String),
}

/// Largest frame read while waiting for the login answer.
const LOGIN_CHECK_FRAME_BYTES_MAX: usize = 1024;
/// Wait between connection attempts while the server is not listening yet.
const LOGIN_CHECK_RETRY: Duration = Duration::from_millis(100);

/// Logs in to the replay feed at `addr` as `credentials` (the current
/// session, from seq 1) and out again at once: whether the appliance takes
/// these credentials, before a tool starts reading. A refused connection is
/// tried again until `timeout` (the appliance may be starting). Blocking; a
/// start-up check, never on a hot path.
pub fn check_replay_login(
    addr: SocketAddr,
    credentials: &Credentials,
    timeout: Duration,
) -> Result<(), LoginCheckError> {
    let mut request = [0u8; 64];
    let len = soup::write_login_request(
        &mut request,
        &credentials.username,
        &credentials.password,
        Session::BLANK,
        1,
    )
    .map_err(|_| {
        LoginCheckError::Refused(
            "the username (1 to 6 characters) or password (1 to 10 printable ASCII) does not \
             fit a login"
                .into(),
        )
    })?;
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(1))) {
            Ok(stream) => break stream,
            Err(error) if Instant::now() + LOGIN_CHECK_RETRY >= deadline => {
                return Err(LoginCheckError::Unreachable(error.kind()))
            }
            // Retried with a deadline: the server may not listen yet.
            Err(_) => std::thread::sleep(LOGIN_CHECK_RETRY),
        }
    };
    let no_answer = |error: io::Error| LoginCheckError::NoAnswer(error.to_string());
    stream.write_all(&request[..len]).map_err(no_answer)?;
    let answer = read_login_answer(&mut stream, deadline);
    if answer.is_ok() {
        let mut logout = [0u8; 8];
        let len = soup::write_logout(&mut logout).expect("fits");
        let _ = stream.write_all(&logout[..len]);
    }
    answer
}

/// Reads frames until Login Accepted (Ok) or Login Rejected, up to
/// `deadline`; a debug packet's text is kept for the refusal.
fn read_login_answer(stream: &mut TcpStream, deadline: Instant) -> Result<(), LoginCheckError> {
    let mut decoder = FrameDecoder::new(LOGIN_CHECK_FRAME_BYTES_MAX);
    let mut debug = String::new();
    loop {
        while let Some(frame) = decoder
            .next_frame()
            .map_err(|error| LoginCheckError::NoAnswer(format!("{error:?}")))?
        {
            match ServerPacket::parse(frame) {
                Ok(ServerPacket::LoginAccepted { .. }) => return Ok(()),
                Ok(ServerPacket::LoginRejected { reason }) => {
                    return Err(LoginCheckError::Refused(login_refusal_words(
                        reason, &debug,
                    )))
                }
                Ok(ServerPacket::Debug(text)) => {
                    debug = String::from_utf8_lossy(text).into_owned();
                }
                _ => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LoginCheckError::NoAnswer("no login answer".into()));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|error| LoginCheckError::NoAnswer(error.to_string()))?;
        match stream.read(decoder.spare()) {
            Ok(0) => {
                return Err(LoginCheckError::NoAnswer(
                    "the connection closed before the login was answered".into(),
                ))
            }
            Ok(n) => decoder.commit(n),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(LoginCheckError::NoAnswer(error.to_string())),
        }
    }
}

/// A Login Rejected reason in words, with what to do.
pub fn login_refusal_words(reason: u8, debug: &str) -> String {
    let mut text = match reason {
        b'A' => "not authorized (A): the username or password is wrong (or logins from here are \
                 throttled after failures); check --user and the password (--password-file, \
                 TALLY_PASSWORD_FILE or TALLY_PASSWORD) against the configuration's [[clients]]"
            .to_string(),
        b'S' => "session unavailable (S): the session asked for is not the one the appliance \
                 runs (it ended, or has not started yet), or every session slot is taken; log \
                 in with a blank session to get the current one"
            .to_string(),
        other => format!("reason {}", char::from(other)),
    };
    if !debug.is_empty() {
        text.push_str(&format!(" (the server said: {debug})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(user: Option<&str>, file: Option<&Path>, env: Option<&str>) -> CredentialArgs {
        CredentialArgs {
            user: user.map(str::to_string),
            password_file: file.map(Path::to_path_buf),
            password_env: env.map(str::to_string),
        }
    }

    #[test]
    fn nothing_given_is_refused_with_what_to_do() {
        let error = args(None, None, Some("x")).credentials().unwrap_err();
        assert_eq!(error, CredentialsError::NoUser);
        assert!(error.to_string().contains("--user"));
        assert!(error.to_string().contains("TALLY_USER"));
        let error = args(Some("pos1"), None, None).credentials().unwrap_err();
        assert_eq!(error, CredentialsError::NoPassword);
        assert!(error.to_string().contains("--password-file"));
        assert_eq!(
            args(Some(""), None, Some("x")).credentials(),
            Err(CredentialsError::NoUser)
        );
        assert_eq!(
            args(Some("pos1"), None, Some("")).credentials(),
            Err(CredentialsError::NoPassword)
        );
    }

    #[test]
    fn a_password_file_wins_over_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "filepass\nignored\n").unwrap();
        let credentials = args(Some("pos1"), Some(&path), Some("envpass"))
            .credentials()
            .unwrap();
        assert_eq!(credentials.password, "filepass");
        let credentials = args(Some("pos1"), None, Some("envpass"))
            .credentials()
            .unwrap();
        assert_eq!(credentials.password, "envpass");
        assert!(!format!("{credentials:?}").contains("envpass"));
    }

    #[test]
    fn unreadable_or_empty_password_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = read_password_file(&missing).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\nsecond").unwrap();
        assert!(read_password_file(&empty)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe, b'\n']).unwrap();
        assert!(read_password_file(&binary).is_err());
    }
}
