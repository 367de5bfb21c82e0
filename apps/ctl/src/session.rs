//! `tally-ctl session end`: the daily rollover in one command (README,
//! "Daily session rollover"), run on the sequencer's host.
//!
//! It finds the running sequencer through its counter file (the path the
//! configuration names; the file holds the owner's pid and a heartbeat),
//! sends it SIGUSR1 — exactly what `systemctl kill -s USR1 tally-sequencer`
//! does — and waits until the appliance has started the next session (it
//! writes a new counter file when it does), then prints the session now
//! running.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Subcommand;
use tally_client::tally_runtime::counters::CounterReader;

use crate::connect::{Failure, Global};
use crate::exit;

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// End the session and start the next one: the sequencer writes S(E),
    /// the warehouse decides what came before it and answers S(F), the
    /// sequencer ends the session and starts its successor. Waits up to
    /// --timeout-ms (plus the configured close grace) for the new session.
    End,
}

pub fn run(command: &SessionCommand, global: &Global) -> Result<u8, Failure> {
    match command {
        SessionCommand::End => end(global),
    }
}

fn end(global: &Global) -> Result<u8, Failure> {
    let appliance = global.appliance()?;
    let path = appliance.counters_path();
    let (pid, inode) = running_sequencer(&path)?;
    let before = newest_journal(&appliance.journal.dir);
    // SAFETY: kill(2) with a pid read from the sequencer's own counter file
    // and checked alive just above; SIGUSR1 only asks it to roll over.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) } != 0 {
        let error = std::io::Error::last_os_error();
        return Err(Failure::new(
            exit::ERROR,
            format!(
                "cannot signal the sequencer (pid {pid}): {error}; run tally-ctl as the user \
                 that runs it (or root), or use `systemctl kill -s USR1 tally-sequencer`"
            ),
        ));
    }
    let wait = global.timeout() + Duration::from_millis(appliance.stream.close_grace_ms);
    let deadline = Instant::now() + wait;
    loop {
        // A new counter file, then the next session's journal.
        let now_inode = std::fs::metadata(&path).ok().map(|meta| meta.ino());
        let newest = newest_journal(&appliance.journal.dir);
        if now_inode.is_some_and(|now| now != inode) && newest.is_some() && newest != before {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Failure::new(
                exit::NO_DECISION,
                format!(
                    "the sequencer (pid {pid}) was asked to roll over but has not started the \
                     next session within {} ms; look at its log",
                    wait.as_millis()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let session = newest_journal(&appliance.journal.dir).unwrap_or_else(|| "?".to_string());
    if global.json {
        println!(
            "{}",
            serde_json::json!({ "rolled_over": true, "session": session, "pid": pid })
        );
    } else {
        println!("rolled over: session {session} running (sequencer pid {pid})");
    }
    Ok(exit::ACCEPTED)
}

/// The pid of the sequencer that owns the counter file at `path`, and the
/// file's inode, or why there is none.
fn running_sequencer(path: &Path) -> Result<(u32, u64), Failure> {
    let not_running = |why: String| {
        Failure::new(
            exit::ERROR,
            format!(
                "no running tally-sequencer found through its counter file {}: {why}; \
                 run `tally-ctl session end` on the sequencer's host with its configuration",
                path.display()
            ),
        )
    };
    let inode = std::fs::metadata(path)
        .map_err(|error| not_running(error.to_string()))?
        .ino();
    let reader = CounterReader::open(path).map_err(|error| not_running(error.to_string()))?;
    let pid = reader.pid();
    // SAFETY: signal 0 only checks that the process exists.
    let alive = pid != 0 && unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    if !alive {
        return Err(not_running(format!("its owner (pid {pid}) is not running")));
    }
    Ok((pid, inode))
}

/// The session of the most recently modified journal in `dir`.
fn newest_journal(dir: &Path) -> Option<String> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let session = name.strip_suffix(".journal")?.to_string();
            let modified = entry.metadata().ok()?.modified().ok()?;
            Some((modified, session))
        })
        .max()
        .map(|(_, session)| session)
}
