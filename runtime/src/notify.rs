//! The systemd service notification protocol (`sd_notify(3)`), in a few
//! lines and without libsystemd: one `KEY=VALUE` datagram per call on an
//! `AF_UNIX` datagram socket whose address systemd passes in `NOTIFY_SOCKET`.
//!
//! - [`Notifier::ready`] (`READY=1`): a `Type=notify` unit is started only
//!   once this arrives, so send it when every loop runs and every socket is
//!   bound (clients that connect after that succeed).
//! - [`Notifier::status`] (`STATUS=…`): the one-line text `systemctl status`
//!   shows.
//! - [`Notifier::stopping`] (`STOPPING=1`): shutdown has begun.
//! - [`Notifier::watchdog`] (`WATCHDOG=1`): keep-alive for `WatchdogSec=`;
//!   [`Notifier::watchdog_interval`] says whether the unit asked for one and
//!   how long systemd waits before it kills the service (ping at half of it).
//!
//! When `NOTIFY_SOCKET` is unset (run by hand, under a test, under another
//! supervisor) every call is a no-op that returns `Ok`.
//!
//! The environment is read only by [`Notifier::from_env`], which a binary's
//! `main` calls once; library code is handed the [`Notifier`] (or the values,
//! through [`Notifier::from_values`]). Cold path only: every call allocates a
//! little and makes a system call; never call it from a loop's duty cycle.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Longest a notification may block when the service manager's queue is full:
/// the caller is a cold thread, but it must not hang on a stuck manager.
pub const SEND_TIMEOUT: Duration = Duration::from_millis(200);

/// A handle that sends service notifications, or does nothing when the
/// process was not started with `NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    watchdog_interval: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    address: SocketAddr,
    /// What `NOTIFY_SOCKET` said, for error messages.
    name: OsString,
}

impl Notifier {
    /// The notifier systemd asked for through the environment:
    /// `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (see
    /// [`Notifier::from_values`]). For a binary's `main`, called once.
    pub fn from_env() -> io::Result<Notifier> {
        let watchdog_usec = std::env::var_os("WATCHDOG_USEC");
        let watchdog_pid = std::env::var_os("WATCHDOG_PID");
        Self::from_values(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            watchdog_usec.as_deref(),
            watchdog_pid.as_deref(),
            std::process::id(),
        )
    }

    /// A notifier from the three variables' values (`None` = unset) and this
    /// process's pid. A watchdog interval is set when `WATCHDOG_USEC` is a
    /// positive number and `WATCHDOG_PID` is unset or equals `own_pid` (it
    /// names the process the watchdog is meant for; a child that inherited
    /// the variables must not answer for its parent).
    ///
    /// Errors (`InvalidInput`) when `NOTIFY_SOCKET` is neither an absolute
    /// path nor an `@` abstract name, or a watchdog variable is not a number.
    pub fn from_values(
        notify_socket: Option<&OsStr>,
        watchdog_usec: Option<&OsStr>,
        watchdog_pid: Option<&OsStr>,
        own_pid: u32,
    ) -> io::Result<Notifier> {
        let number = |name: &str, value: &OsStr| -> io::Result<u64> {
            value
                .to_str()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| invalid(format!("{name}={value:?} is not a non-negative integer")))
        };
        let mut watchdog_interval = match watchdog_usec {
            None => None,
            Some(value) => match number("WATCHDOG_USEC", value)? {
                0 => None,
                usec => Some(Duration::from_micros(usec)),
            },
        };
        if let Some(value) = watchdog_pid {
            if number("WATCHDOG_PID", value)? != u64::from(own_pid) {
                watchdog_interval = None;
            }
        }
        let notifier = match notify_socket {
            None => Notifier::disabled(),
            Some(name) if name.is_empty() => Notifier::disabled(),
            Some(name) => Notifier::new(name)?,
        };
        Ok(Notifier {
            watchdog_interval,
            ..notifier
        })
    }

    /// A notifier that sends to `socket`: an absolute path, or `@name` for a
    /// socket in the abstract namespace (as systemd spells it). No watchdog.
    pub fn new(socket: impl AsRef<OsStr>) -> io::Result<Notifier> {
        let name = socket.as_ref();
        let bytes = name.as_bytes();
        let address = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(name),
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
            _ => {
                return Err(invalid(format!(
                    "NOTIFY_SOCKET={name:?} is neither an absolute path nor an @abstract name"
                )))
            }
        }
        .map_err(|error| invalid(format!("NOTIFY_SOCKET={name:?}: {error}")))?;
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Notifier {
            target: Some(Target {
                socket,
                address,
                name: name.to_owned(),
            }),
            watchdog_interval: None,
        })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog_interval: None,
        }
    }

    /// The same notifier with a watchdog interval (as `WATCHDOG_USEC` sets
    /// it): for tests.
    pub fn with_watchdog_interval(self, interval: Option<Duration>) -> Notifier {
        Notifier {
            watchdog_interval: interval.filter(|interval| !interval.is_zero()),
            ..self
        }
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How long the service manager waits for a `WATCHDOG=1` before it
    /// declares the service hung; `None` when no watchdog is configured for
    /// this process. Send [`Notifier::watchdog`] at least twice per interval.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    /// `READY=1`: start-up is complete.
    pub fn ready(&self) -> io::Result<()> {
        self.notify("READY=1")
    }

    /// `STATUS=text`: a one-line status (line breaks become spaces).
    pub fn status(&self, text: &str) -> io::Result<()> {
        if self.target.is_none() {
            return Ok(());
        }
        let line: String = text
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.notify(&format!("STATUS={line}"))
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) -> io::Result<()> {
        self.notify("STOPPING=1")
    }

    /// `WATCHDOG=1`: the service is alive. Sent only when a watchdog is
    /// configured for this process.
    pub fn watchdog(&self) -> io::Result<()> {
        if self.watchdog_interval.is_none() {
            return Ok(());
        }
        self.notify("WATCHDOG=1")
    }

    /// Sends `state` (one or more `KEY=VALUE` lines) as one datagram.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let sent = target
            .socket
            .send_to_addr(state.as_bytes(), &target.address)
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("sd_notify to {:?}: {error}", target.name),
                )
            })?;
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sd_notify to {:?}: short datagram", target.name),
            ));
        }
        Ok(())
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn unset_is_a_no_op() {
        let notifier = Notifier::from_values(None, None, None, 1).unwrap();
        assert!(!notifier.is_enabled());
        assert_eq!(notifier.watchdog_interval(), None);
        notifier.ready().unwrap();
        notifier.status("x").unwrap();
        notifier.stopping().unwrap();
        notifier.watchdog().unwrap();
        let empty = Notifier::from_values(Some(OsStr::new("")), None, None, 1).unwrap();
        assert!(!empty.is_enabled());
    }

    #[test]
    fn path_socket_receives_each_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(&path)
            .unwrap()
            .with_watchdog_interval(Some(Duration::from_secs(4)));
        notifier.ready().unwrap();
        assert_eq!(receive(&server), "READY=1");
        notifier.status("seq 42\nnext").unwrap();
        assert_eq!(receive(&server), "STATUS=seq 42 next");
        notifier.watchdog().unwrap();
        assert_eq!(receive(&server), "WATCHDOG=1");
        notifier.stopping().unwrap();
        assert_eq!(receive(&server), "STOPPING=1");
    }

    #[test]
    fn abstract_socket_is_supported() {
        let name = format!("tally-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&address).unwrap();
        let notifier = Notifier::new(format!("@{name}")).unwrap();
        notifier.ready().unwrap();
        assert_eq!(receive(&server), "READY=1");
    }

    #[test]
    fn watchdog_only_for_the_named_pid() {
        let usec = Some(OsStr::new("3000000"));
        let mine = Notifier::from_values(None, usec, Some(OsStr::new("77")), 77).unwrap();
        assert_eq!(mine.watchdog_interval(), Some(Duration::from_secs(3)));
        let any = Notifier::from_values(None, usec, None, 77).unwrap();
        assert_eq!(any.watchdog_interval(), Some(Duration::from_secs(3)));
        let other = Notifier::from_values(None, usec, Some(OsStr::new("78")), 77).unwrap();
        assert_eq!(other.watchdog_interval(), None);
        let zero = Notifier::from_values(None, Some(OsStr::new("0")), None, 77).unwrap();
        assert_eq!(zero.watchdog_interval(), None);
    }

    #[test]
    fn watchdog_is_silent_without_an_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        let notifier = Notifier::new(&path).unwrap();
        notifier.watchdog().unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            server.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_named() {
        for (socket, usec, pid, needle) in [
            (Some("relative/path"), None, None, "NOTIFY_SOCKET"),
            (None, Some("soon"), None, "WATCHDOG_USEC"),
            (None, Some("1"), Some("me"), "WATCHDOG_PID"),
        ] {
            let error = Notifier::from_values(
                socket.map(OsStr::new),
                usec.map(OsStr::new),
                pid.map(OsStr::new),
                1,
            )
            .unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
            assert!(error.to_string().contains(needle), "{error}");
        }
    }

    #[test]
    fn a_missing_listener_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let notifier = Notifier::new(dir.path().join("nobody.sock")).unwrap();
        assert!(notifier.ready().is_err());
    }
}
