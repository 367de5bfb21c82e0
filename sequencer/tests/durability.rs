//! What each fsync policy promises, tested against the real binary:
//!
//! - kill -9 under pipelined load, at every policy, several times in a row:
//!   every acknowledged command is in the journal at the sequence number its
//!   ack named, with the bytes that were sent; no command is journaled twice;
//!   numbering has no gap; after each restart the client resumes right after
//!   its last journaled command and new commands continue the numbering (no
//!   number handed out twice).
//! - `batch` and a simulated power loss (everything written after the last
//!   completed sync dropped: the journal cut back to its checkpoint): every
//!   acknowledged command is still there.
//! - a full disk (a small tmpfs): the appliance stops with exit status 74
//!   naming the journal and the free space; nothing acknowledged is lost; with
//!   room again it restarts and continues.
//!
//! `TALLY_LONG_TESTS=1` runs seven kills per policy (21) instead of two.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tally_wire::{soup, Ack, Order};

const LONG: Duration = Duration::from_secs(60);

fn kills_per_policy() -> usize {
    if std::env::var_os("TALLY_LONG_TESTS").is_some() {
        7
    } else {
        2
    }
}

/// The order a client sends as `client_seq`: its bytes depend only on
/// client_seq, so the journal's copy can be compared with what was sent.
fn order(client_seq: u32) -> Order {
    Order::new(
        u64::from(client_seq),
        1,
        client_seq % 997,
        1 + client_seq % 5,
    )
    .with_client_seq(client_seq)
}

/// Client seq → stream seq of every acknowledged command, over all runs.
type Acked = BTreeMap<u32, u64>;

/// Logs in as pos1, pipelines orders from the client_seq the gateway expects
/// until `acks_wanted` more are acknowledged, then kills the appliance with
/// SIGKILL while the sender is still sending. Returns the next client_seq.
fn load_then_kill(appliance: Appliance, setup: &TestSetup, acks_wanted: usize, acked: &mut Acked) {
    let mut pos = SoupClient::connect(setup.gateway);
    let first = pos.login_ok("pos1", POS_PASSWORD) as u32;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let mut stream = pos.try_clone_stream();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = Vec::with_capacity(1 << 16);
            let mut frame = [0u8; 64];
            // Bounded: at most this many, or until the appliance is killed.
            for client_seq in first..first + 5_000_000 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let n = soup::write_unsequenced(&mut frame, order(client_seq).as_bytes()).unwrap();
                buf.extend_from_slice(&frame[..n]);
                if buf.len() > 16_000 {
                    if stream.write_all(&buf).is_err() {
                        return;
                    }
                    buf.clear();
                }
            }
        })
    };
    let mut got = 0usize;
    while got < acks_wanted {
        match pos.recv(LONG) {
            Some(Reply::Sequenced(payload)) => {
                let ack = Ack::parse(&payload).unwrap();
                assert!(
                    acked.insert(ack.client_seq(), ack.stream_seq()).is_none(),
                    "client_seq {} acknowledged twice",
                    ack.client_seq()
                );
                got += 1;
            }
            other => panic!("unexpected {other:?} after {got} acks"),
        }
    }
    appliance.kill9();
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
}

/// The journal's promises after a crash: contiguous numbering, every ack
/// present with its bytes, no command twice. Returns (next seq, last
/// journaled client_seq of pos1).
fn check_journal(setup: &TestSetup, acked: &Acked, what: &str) -> (u64, u32) {
    let journal = journal_messages(&setup.journal_file());
    let mut by_client_seq: BTreeMap<u32, u64> = BTreeMap::new();
    for (index, (seq, message)) in journal.iter().enumerate() {
        assert_eq!(
            *seq,
            index as u64 + 1,
            "{what}: journal numbering has a gap"
        );
        let origin = u16::from_be_bytes([message[1], message[2]]);
        if origin != 1 {
            continue;
        }
        let client_seq = u32::from_be_bytes(message[3..7].try_into().unwrap());
        assert_eq!(
            message[0], b'O',
            "{what}: pos1's command {client_seq} was rejected"
        );
        assert_eq!(
            message[tally_wire::Header::SIZE..],
            order(client_seq).as_bytes()[tally_wire::Header::SIZE..],
            "{what}: journaled bytes of command {client_seq} differ from what was sent"
        );
        assert!(
            by_client_seq.insert(client_seq, *seq).is_none(),
            "{what}: command {client_seq} journaled twice"
        );
    }
    for (client_seq, stream_seq) in acked {
        assert_eq!(
            by_client_seq.get(client_seq),
            Some(stream_seq),
            "{what}: acknowledged command {client_seq} (seq {stream_seq}) is not in the journal at its seq"
        );
    }
    let last_client_seq = by_client_seq.keys().next_back().copied().unwrap_or(0);
    assert!(
        by_client_seq.keys().copied().eq(1..=last_client_seq),
        "{what}: pos1's journaled commands are not 1..={last_client_seq}"
    );
    (journal.len() as u64 + 1, last_client_seq)
}

/// After a restart: the client resumes after its last journaled command, and
/// one new command gets the journal's next number.
fn check_resume(setup: &TestSetup, next_seq: u64, last_client_seq: u32, acked: &mut Acked) {
    let mut pos = SoupClient::connect(setup.gateway);
    let next = pos.login_ok("pos1", POS_PASSWORD) as u32;
    assert_eq!(
        next,
        last_client_seq + 1,
        "the client resumes after its last journaled command"
    );
    pos.send(order(next).as_bytes());
    match pos.recv(LONG) {
        Some(Reply::Sequenced(payload)) => {
            let ack = Ack::parse(&payload).unwrap();
            assert_eq!(ack.client_seq(), next);
            assert_eq!(ack.stream_seq(), next_seq, "no number reused, none skipped");
            acked.insert(next, next_seq);
        }
        other => panic!("expected an ack, got {other:?}"),
    }
}

/// `threading`: both layouts of the order path are crashed (the default on
/// this machine is `shared`).
fn kill_9_cycles(id: u16, fsync: &str, threading: &str) {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::with(id, dir.path(), |text| {
        text.replace("fsync = \"none\"", &format!("fsync = \"{fsync}\""))
            + &format!("\n[loops]\nthreading = \"{threading}\"\n")
    });
    let mut acked = Acked::new();
    for cycle in 0..kills_per_policy() {
        let appliance = Appliance::start(&setup);
        // A different kill point each cycle (deterministic).
        let acks_wanted = 3_000 + (cycle * 7_919) % 20_000;
        load_then_kill(appliance, &setup, acks_wanted, &mut acked);
        let what = format!("fsync = {fsync}, kill {}", cycle + 1);
        let (next_seq, last) = check_journal(&setup, &acked, &what);
        let appliance = Appliance::start(&setup);
        check_resume(&setup, next_seq, last, &mut acked);
        let status = appliance.stop_with(libc::SIGTERM);
        assert!(status.success(), "{what}: clean stop, got {status}");
        check_journal(&setup, &acked, &format!("{what}, after the clean stop"));
    }
}

#[test]
fn kill_9_under_load_with_fsync_none_loses_and_repeats_nothing() {
    kill_9_cycles(10, "none", "shared");
}

#[test]
fn kill_9_under_load_with_fsync_interval_loses_and_repeats_nothing() {
    kill_9_cycles(11, "interval", "dedicated");
}

#[test]
fn kill_9_under_load_with_fsync_batch_loses_and_repeats_nothing() {
    kill_9_cycles(12, "batch", "shared");
}

/// A power loss keeps what the last completed `fdatasync` covered and may
/// drop anything written after it. The checkpoint is written only after a
/// sync completed and acks are released only after the checkpoint write, so
/// cutting the journal back to the checkpoint's length drops at least
/// everything a power loss could: every acknowledged command must survive.
#[test]
fn fsync_batch_keeps_every_acknowledged_command_through_a_simulated_power_loss() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::with(13, dir.path(), |text| {
        text.replace("fsync = \"none\"", "fsync = \"batch\"")
            + "\n[loops]\nthreading = \"dedicated\"\n"
    });
    let mut acked = Acked::new();
    for cycle in 0..kills_per_policy() {
        let appliance = Appliance::start(&setup);
        load_then_kill(appliance, &setup, 5_000 + cycle * 3_000, &mut acked);
        let (checkpoint_next_seq, checkpoint_end) = checkpoint(&setup);
        let journal = std::fs::OpenOptions::new()
            .write(true)
            .open(setup.journal_file())
            .unwrap();
        let length = journal.metadata().unwrap().len();
        assert!(
            length >= checkpoint_end,
            "the checkpoint never claims more than the journal"
        );
        journal.set_len(checkpoint_end).unwrap();
        drop(journal);
        let what = format!("power loss {}", cycle + 1);
        let (next_seq, last) = check_journal(&setup, &acked, &what);
        assert_eq!(
            next_seq, checkpoint_next_seq,
            "{what}: checkpoint seq and length agree"
        );
        let appliance = Appliance::start(&setup);
        check_resume(&setup, next_seq, last, &mut acked);
        assert!(appliance.stop_with(libc::SIGTERM).success());
    }
}

/// Mounts a tmpfs of `size` on `path` (root only); None when that is not
/// possible here (the caller skips, unless CI requires it).
fn mount_tmpfs(path: &Path, size: &str) -> Option<()> {
    std::fs::create_dir_all(path).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tally-test"])
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .ok()?;
    status.success().then_some(())
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn disk_full_stops_cleanly_and_resumes(id: u16, fsync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    if mount_tmpfs(&journal_dir, "1m").is_none() {
        let required = std::env::var_os("TALLY_REQUIRE_TMPFS").is_some();
        assert!(
            !required,
            "TALLY_REQUIRE_TMPFS is set but a tmpfs cannot be mounted"
        );
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _unmount = Unmount(journal_dir.clone());
    let setup = TestSetup::with(id, dir.path(), |text| {
        text.replace("fsync = \"none\"", &format!("fsync = \"{fsync}\""))
    });
    let appliance = Appliance::start_capturing(&setup);
    let mut pos = SoupClient::connect(setup.gateway);
    let first = pos.login_ok("pos1", POS_PASSWORD) as u32;
    let mut acked = Acked::new();
    // 1 MiB holds ~15 000 orders: send 100 000, one window at a time,
    // reading acks until the appliance goes away.
    let mut client_seq = first;
    'load: while client_seq < first + 100_000 {
        for _ in 0..500 {
            pos.queue(order(client_seq).as_bytes());
            client_seq += 1;
        }
        pos.flush();
        while acked.len() + (first as usize) < client_seq as usize {
            match pos.recv(Duration::from_secs(10)) {
                Some(Reply::Sequenced(payload)) => {
                    let ack = Ack::parse(&payload).unwrap();
                    acked.insert(ack.client_seq(), ack.stream_seq());
                }
                None => break 'load,
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
    }
    let (status, stderr) = appliance.wait_exit(LONG);
    eprintln!("tally-sequencer's stderr on a full disk:\n{stderr}");
    assert_eq!(
        status.code(),
        Some(74),
        "disk full exits with 74; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&setup.journal_file().display().to_string())
            && stderr.contains("bytes free"),
        "the error names the journal and the free space:\n{stderr}"
    );
    assert!(
        !acked.is_empty() && acked.len() < 100_000,
        "the disk filled mid-run"
    );
    let (_, _) = check_journal(&setup, &acked, "after disk full");
    // Room again: it restarts, cuts the torn tail, continues.
    let status = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&journal_dir)
        .status()
        .unwrap();
    assert!(status.success());
    let (next_seq, last) = check_journal(&setup, &acked, "before restart");
    let appliance = Appliance::start(&setup);
    check_resume(&setup, next_seq, last, &mut acked);
    assert!(appliance.stop_with(libc::SIGTERM).success());
}

#[test]
fn disk_full_with_fsync_none_stops_with_74_and_loses_nothing() {
    disk_full_stops_cleanly_and_resumes(14, "none");
}

#[test]
fn disk_full_with_fsync_batch_stops_with_74_and_loses_nothing() {
    disk_full_stops_cleanly_and_resumes(15, "batch");
}
