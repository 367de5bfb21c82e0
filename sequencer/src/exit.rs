//! The appliance's exit statuses: what each one tells the operator, and which
//! ones systemd must not restart on (`RestartPreventExitStatus=` in
//! `systemd/tally-sequencer.service`).
//!
//! A restart cannot fix a damaged journal or a full disk; restarting in a loop
//! would only hide the cause. Those statuses stop the unit and wait for a
//! person; every other failure is restarted.

/// Stopped cleanly (SIGINT, SIGTERM; SIGUSR1 rolls over and keeps running).
pub const OK: i32 = 0;
/// Any other failure (a bug, a lost socket): systemd restarts the appliance,
/// which recovers from its journal.
pub const FAILURE: i32 = 1;
/// Bad command line.
pub const USAGE: i32 = 2;
/// The journal is damaged: a corrupt record with intact records after it, a
/// journal shorter than its checkpoint, a header that is not this session's.
/// Not restarted: see the README's operations section
/// (`tally-journal verify`, then `repair` or `--accept-journal-loss`).
pub const JOURNAL_DAMAGED: i32 = 65;
/// A journal write or sync failed (disk full, I/O error). Nothing after the
/// last successful write was acknowledged or published. Not restarted: free
/// space or fix the disk, then start the unit again.
pub const JOURNAL_WRITE_FAILED: i32 = 74;
/// The configuration is invalid, or an ended session of the chain has no
/// successor name (README, "Daily session rollover"). Not restarted.
pub const CONFIG: i32 = 78;

/// A journal write or sync failed on the sequencer thread. Carried inside the
/// loop's error so `main` exits with [`JOURNAL_WRITE_FAILED`].
#[derive(Debug)]
pub struct JournalWriteFailed {
    /// The journal file.
    pub path: std::path::PathBuf,
    /// What failed: "write" or "fdatasync" or "checkpoint write".
    pub operation: &'static str,
    /// The kernel's error.
    pub source: std::io::Error,
    /// Free bytes on the journal's file system when the error was seen.
    pub free_bytes: Option<u64>,
}

impl std::fmt::Display for JournalWriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "journal {} failed on {}: {}",
            self.operation,
            self.path.display(),
            self.source
        )?;
        if let Some(free) = self.free_bytes {
            write!(f, " ({free} bytes free on its file system)")?;
        }
        write!(
            f,
            "; nothing after the last good write was acknowledged or published"
        )
    }
}

impl std::error::Error for JournalWriteFailed {}

/// The configured session has already ended (its journal holds the
/// end-of-session record). Carried in the start-up error so `main` exits
/// with [`CONFIG`]: only a new `stream.session` fixes it.
#[derive(Debug)]
pub struct SessionEnded {
    /// The configured session.
    pub session: String,
    /// Its journal.
    pub journal: std::path::PathBuf,
}

impl std::fmt::Display for SessionEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "session {:?} has ended (its journal {} holds the end-of-session record); \
             configure a new stream.session to start the next one",
            self.session,
            self.journal.display()
        )
    }
}

impl std::error::Error for SessionEnded {}
