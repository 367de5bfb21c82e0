//! A damaged journal against the real binaries: bit flips in the middle of a
//! journal are refused (exit status 65) with the offset and sequence numbers
//! named; torn tails, with or without zero fill, are cut and numbering
//! continues; a journal shorter than its checkpoint (truncated to its header
//! after kill -9 following acknowledged traffic), or missing, is refused;
//! `--accept-journal-loss` cuts and continues; `tally-journal` verifies,
//! dumps and repairs.

mod support;

use std::ffi::OsStr;
use std::time::Duration;

use support::*;
use tally_wire::{Ack, Order};

const LONG: Duration = Duration::from_secs(60);
const EXIT_WAIT: Duration = Duration::from_secs(30);
const JOURNAL_DAMAGED: i32 = 65;

/// Logs in as pos1 and sends orders `client_seqs`, one at a time, each
/// acknowledged; returns the stream sequence number of each.
fn send_orders(setup: &TestSetup, client_seqs: std::ops::RangeInclusive<u32>) -> Vec<u64> {
    let mut pos = SoupClient::connect(setup.gateway);
    let next = pos.login_ok("pos1", POS_PASSWORD);
    assert_eq!(
        next,
        u64::from(*client_seqs.start()),
        "pos1's next client_seq"
    );
    let mut stream_seqs = Vec::new();
    for client_seq in client_seqs {
        pos.send(
            Order::new(u64::from(client_seq), 1, 7, 1)
                .with_client_seq(client_seq)
                .as_bytes(),
        );
        match pos.recv(LONG) {
            Some(Reply::Sequenced(payload)) => {
                let ack = Ack::parse(&payload).expect("an ack");
                assert_eq!(ack.client_seq(), client_seq);
                stream_seqs.push(ack.stream_seq());
            }
            other => panic!("expected an ack for {client_seq}, got {other:?}"),
        }
    }
    stream_seqs
}

/// A fresh session with `orders` acknowledged orders, stopped cleanly.
fn session_with_orders(setup: &TestSetup, orders: u32) {
    let appliance = Appliance::start(setup);
    send_orders(setup, 1..=orders);
    let status = appliance.stop_with(libc::SIGTERM);
    assert!(status.success(), "clean stop: {status}");
}

/// The client_seq of the first message of `record` (an order from pos1).
fn client_seq_of(bytes: &[u8], record: &JournalRecord) -> u32 {
    let message = record.offset as usize + 24 + 2;
    u32::from_be_bytes(bytes[message + 3..message + 7].try_into().unwrap())
}

/// The checkpoint's (next_seq, end_offset), or None when it does not read
/// as one (absent, or caught mid-rewrite).
fn try_read_checkpoint(setup: &TestSetup) -> Option<(u64, u64)> {
    let bytes = std::fs::read(checkpoint_file(setup)).ok()?;
    let valid = bytes.len() == 32
        && &bytes[0..8] == b"TALLYCKP"
        && crc32c::crc32c(&bytes[0..24]) == u32::from_be_bytes(bytes[24..28].try_into().unwrap());
    valid.then(|| {
        (
            u64::from_be_bytes(bytes[8..16].try_into().unwrap()),
            u64::from_be_bytes(bytes[16..24].try_into().unwrap()),
        )
    })
}

fn read_checkpoint(setup: &TestSetup) -> (u64, u64) {
    try_read_checkpoint(setup).expect("a valid checkpoint")
}

fn assert_contiguous(records: &[JournalRecord]) {
    let mut next = 1;
    for record in records {
        assert_eq!(record.first_seq, next, "journal numbering: {records:?}");
        next = record.end_seq();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_bit_flip_mid_journal_is_refused_naming_offset_and_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(50, dir.path());
    session_with_orders(&setup, 6);
    let path = setup.journal_file();
    let original = std::fs::read(&path).unwrap();
    let records = journal_records(&path);
    assert!(records.len() >= 6, "{records:?}");
    let victim = records[2];
    let next = records[3];

    for (what, byte, mask) in [
        // 0x10 in the length's third byte: the length grows by 4 KiB and
        // runs past the end of this small file, which a naive recovery takes
        // for a torn tail.
        ("length field", victim.offset + 2, 0x10u8),
        ("CRC", victim.offset + 5, 0x01),
        ("payload", victim.offset + 24 + 5, 0x80),
    ] {
        let mut damaged = original.clone();
        damaged[byte as usize] ^= mask;
        std::fs::write(&path, &damaged).unwrap();
        let (code, stderr) = sequencer_exit(&setup, &[], EXIT_WAIT);
        assert_eq!(code, Some(JOURNAL_DAMAGED), "{what}: {stderr}");
        for needle in [
            format!("{}", path.display()),
            format!("damaged record at byte {}", victim.offset),
            format!("last good sequence number {}", victim.first_seq - 1),
            format!("byte {}, sequence number {}", next.offset, next.first_seq),
        ] {
            assert!(stderr.contains(&needle), "{what}: {needle:?} in {stderr}");
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            damaged,
            "{what}: a refused journal is left as it was"
        );
    }

    // The operator accepts the loss: cut at the damage, numbering continues
    // right after the last intact record.
    let lost_client_seq = client_seq_of(&original, &victim);
    let appliance = Appliance::start_with_args(&setup, &["--accept-journal-loss"]);
    let stream_seqs = send_orders(&setup, lost_client_seq..=lost_client_seq);
    assert_eq!(stream_seqs, vec![victim.first_seq]);
    let status = appliance.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}");
    let after = journal_records(&path);
    assert_contiguous(&after);
    assert_eq!(after[..2], records[..2]);
    assert_eq!(after.last().unwrap().end_seq(), victim.first_seq + 1);
    let (checkpoint_next_seq, _) = read_checkpoint(&setup);
    assert!(checkpoint_next_seq >= victim.first_seq);
    // And it starts again without the flag.
    let appliance = Appliance::start(&setup);
    drop(appliance);
}

#[test]
fn a_torn_tail_with_or_without_zero_fill_is_cut_and_numbering_continues() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(51, dir.path());
    session_with_orders(&setup, 4);
    let path = setup.journal_file();

    for zero_fill in [0usize, 256 * 1024] {
        let bytes = std::fs::read(&path).unwrap();
        let records = journal_records(&path);
        let last = *records.last().unwrap();
        let client_seq = client_seq_of(&bytes, &last);
        // A crash during the last write, before the sync that would have
        // moved the checkpoint past it.
        write_checkpoint(&setup, last.first_seq, last.offset);
        let mut torn = bytes[..(last.end_offset() - 5) as usize].to_vec();
        torn.resize(torn.len() + zero_fill, 0);
        std::fs::write(&path, &torn).unwrap();

        let appliance = Appliance::start(&setup);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            last.offset,
            "zero fill {zero_fill}: cut at the last intact record"
        );
        let stream_seqs = send_orders(&setup, client_seq..=client_seq);
        assert_eq!(stream_seqs, vec![last.first_seq], "zero fill {zero_fill}");
        let status = appliance.stop_with(libc::SIGTERM);
        assert!(status.success(), "{status}");
        let after = journal_records(&path);
        assert_contiguous(&after);
        assert_eq!(after.len(), records.len());
    }
}

#[test]
fn a_journal_behind_its_checkpoint_or_missing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(52, dir.path());
    // kill -9 after acknowledged traffic: the writer's checkpoint (every
    // 10 ms with fsync = "none") already covers it.
    let appliance = Appliance::start(&setup);
    send_orders(&setup, 1..=3);
    let path = setup.journal_file();
    wait_for("the checkpoint to cover the orders", LONG, || {
        let records = journal_records(&path);
        let last = records.last().unwrap();
        try_read_checkpoint(&setup) == Some((last.end_seq(), last.end_offset()))
    });
    appliance.kill9();
    let records = journal_records(&path);
    let last = *records.last().unwrap();
    assert_eq!(read_checkpoint(&setup), (last.end_seq(), last.end_offset()));

    // Truncated to its header.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..64]).unwrap();
    let (code, stderr) = sequencer_exit(&setup, &[], EXIT_WAIT);
    assert_eq!(code, Some(JOURNAL_DAMAGED), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "says messages up to sequence number {} ({} bytes) were written",
            last.end_seq() - 1,
            last.end_offset()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 64);

    // Deleted.
    std::fs::remove_file(&path).unwrap();
    let (code, stderr) = sequencer_exit(&setup, &[], EXIT_WAIT);
    assert_eq!(code, Some(JOURNAL_DAMAGED), "{stderr}");
    assert!(stderr.contains("missing or empty"), "{stderr}");
    assert!(!path.exists(), "a refused start creates no journal");

    // verify on the directory reports the orphaned checkpoint.
    let output = tally_journal(&[OsStr::new("verify"), path.parent().unwrap().as_os_str()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
}

#[test]
fn tally_journal_verify_tells_intact_torn_and_damaged_apart() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(53, dir.path());
    session_with_orders(&setup, 4);
    let path = setup.journal_file();
    let original = std::fs::read(&path).unwrap();
    let records = journal_records(&path);
    let verify = |json: bool| {
        let mut args = vec![OsStr::new("verify"), path.as_os_str()];
        if json {
            args.push(OsStr::new("--json"));
        }
        tally_journal(&args)
    };

    let output = verify(false);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("INTACT"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "sequence 1..{}",
            records.last().unwrap().end_seq() - 1
        )),
        "{stdout}"
    );
    let output = verify(true);
    assert_eq!(output.status.code(), Some(0));
    assert!(text(&output.stdout).contains("\"verdict\":\"intact\""));
    let output = tally_journal(&[OsStr::new("verify"), path.parent().unwrap().as_os_str()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));

    // A flipped payload bit in the middle: damaged, the offset named.
    let victim = records[1];
    let mut damaged = original.clone();
    damaged[victim.offset as usize + 30] ^= 0x04;
    std::fs::write(&path, &damaged).unwrap();
    let output = verify(false);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("first damage at byte {}", victim.offset)),
        "{stdout}"
    );
    assert!(stdout.contains("CORRUPT"), "{stdout}");
    let output = verify(true);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout.contains(&format!("\"damage\":{{\"offset\":{}", victim.offset)),
        "{stdout}"
    );

    // A torn tail past the checkpoint: reported, exit 0 (the start cuts it).
    let last = *records.last().unwrap();
    write_checkpoint(&setup, last.first_seq, last.offset);
    std::fs::write(&path, &original[..original.len() - 3]).unwrap();
    let output = verify(false);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("TORN-TAIL"), "{stdout}");
    assert!(
        stdout.contains(&format!("first damage at byte {}", last.offset)),
        "{stdout}"
    );

    // The same file with a checkpoint that covers the torn record: damaged.
    write_checkpoint(&setup, last.end_seq(), last.end_offset());
    let output = verify(false);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("DISAGREES"), "{stdout}");

    // Usage and I/O errors.
    let output = tally_journal(&[OsStr::new("verify"), dir.path().join("nope").as_os_str()]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn tally_journal_dump_prints_messages_from_and_to() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(54, dir.path());
    session_with_orders(&setup, 5);
    let path = setup.journal_file();
    let records = journal_records(&path);
    let messages = records.last().unwrap().end_seq() - 1;

    let output = tally_journal(&[OsStr::new("dump"), path.as_os_str()]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = text(&output.stdout);
    assert_eq!(stdout.lines().count() as u64, messages, "{stdout}");
    assert!(stdout.lines().next().unwrap().starts_with("seq=1 "));

    let output = tally_journal(&[
        OsStr::new("dump"),
        path.as_os_str(),
        OsStr::new("--from"),
        OsStr::new("3"),
        OsStr::new("--to"),
        OsStr::new("4"),
    ]);
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("seq=3 "), "{stdout}");
    assert!(lines[1].starts_with("seq=4 "), "{stdout}");
    assert!(
        lines[0].contains("type=O kind=Order origin=1 client_seq=2"),
        "{stdout}"
    );

    let output = tally_journal(&[
        OsStr::new("dump"),
        path.as_os_str(),
        OsStr::new("--json"),
        OsStr::new("--from"),
        OsStr::new("2"),
        OsStr::new("--to"),
        OsStr::new("2"),
    ]);
    let stdout = text(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    for needle in [
        "\"seq\":2",
        "\"type\":\"O\"",
        "\"origin\":1",
        "\"client_seq\":1",
        "\"hex\":\"4f",
    ] {
        assert!(stdout.contains(needle), "{needle} in {stdout}");
    }

    let output = tally_journal(&[
        OsStr::new("dump"),
        path.as_os_str(),
        OsStr::new("--records"),
    ]);
    assert_eq!(text(&output.stdout).lines().count(), records.len());

    // Damage inside the range: what comes before it, then exit 1.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[records[3].offset as usize + 30] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let output = tally_journal(&[OsStr::new("dump"), path.as_os_str()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stdout).lines().count() as u64,
        records[3].first_seq - 1
    );
    assert!(text(&output.stderr).contains(&format!("byte {}", records[3].offset)));
}

/// A journal file written by hand with the documented layout: one record of
/// three messages.
fn handmade_journal(session: &str) -> Vec<u8> {
    let mut bytes = vec![0u8; 64];
    bytes[0..8].copy_from_slice(b"TALLYJNL");
    bytes[8..12].copy_from_slice(&1u32.to_be_bytes());
    bytes[12..16].copy_from_slice(&64u32.to_be_bytes());
    let mut name = [b' '; 10];
    name[..session.len()].copy_from_slice(session.as_bytes());
    bytes[16..26].copy_from_slice(&name);
    let mut payload = Vec::new();
    for message in [b"aa".as_slice(), b"bbb", b"c"] {
        payload.extend_from_slice(&(message.len() as u16).to_be_bytes());
        payload.extend_from_slice(message);
    }
    let mut header = [0u8; 24];
    header[0..4].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    header[8..16].copy_from_slice(&1u64.to_be_bytes());
    header[16..18].copy_from_slice(&3u16.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[0..4]), &header[8..24]);
    let crc = crc32c::crc32c_append(crc, &payload);
    header[4..8].copy_from_slice(&crc.to_be_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&payload);
    bytes
}

#[test]
fn tally_journal_repair_refuses_without_confirmation_then_cuts_and_the_sequencer_starts() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(55, dir.path());
    session_with_orders(&setup, 5);
    let path = setup.journal_file();
    let records = journal_records(&path);
    let victim = records[2];
    let mut bytes = std::fs::read(&path).unwrap();
    let client_seq = client_seq_of(&bytes, &victim);
    bytes[victim.offset as usize + 27] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let (code, _) = sequencer_exit(&setup, &[], EXIT_WAIT);
    assert_eq!(code, Some(JOURNAL_DAMAGED));

    let repair = |seq: u64, confirmed: bool| {
        let seq = seq.to_string();
        let mut args = vec![
            OsStr::new("repair"),
            path.as_os_str(),
            OsStr::new("--truncate-at"),
            OsStr::new(&seq),
        ];
        if confirmed {
            args.push(OsStr::new("--yes-i-accept-losing-messages"));
        }
        tally_journal(&args)
    };
    // Without the flag: says what it would drop, changes nothing.
    let output = repair(victim.first_seq, false);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(
        stderr.contains(&format!("cut at byte {}", victim.offset)),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // Beyond the damage: refused even with the flag.
    let output = repair(records[3].first_seq, true);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("beyond the good part"));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // With it: cut at the damaged record, checkpoint rewritten.
    let output = repair(victim.first_seq, true);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("repaired"), "{stdout}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), victim.offset);
    assert_eq!(read_checkpoint(&setup), (victim.first_seq, victim.offset));
    let output = tally_journal(&[OsStr::new("verify"), path.as_os_str()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));

    // The sequencer starts and numbers the next message where the cut was.
    let appliance = Appliance::start(&setup);
    assert_eq!(
        send_orders(&setup, client_seq..=client_seq),
        vec![victim.first_seq]
    );
    drop(appliance);

    // A sequence number inside a record is refused, with the boundaries.
    let handmade = dir.path().join("X.journal");
    std::fs::write(&handmade, handmade_journal("X")).unwrap();
    let output = tally_journal(&[
        OsStr::new("repair"),
        handmade.as_os_str(),
        OsStr::new("--truncate-at"),
        OsStr::new("2"),
        OsStr::new("--yes-i-accept-losing-messages"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("--truncate-at 1") && stderr.contains("--truncate-at 4"),
        "{stderr}"
    );
    let output = tally_journal(&[OsStr::new("dump"), handmade.as_os_str()]);
    assert_eq!(text(&output.stdout).lines().count(), 3);
}

#[test]
fn a_damaged_checkpoint_is_refused_and_accepted_only_with_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(56, dir.path());
    session_with_orders(&setup, 2);
    let checkpoint = checkpoint_file(&setup);
    let mut bytes = std::fs::read(&checkpoint).unwrap();
    bytes[10] ^= 0x01;
    std::fs::write(&checkpoint, &bytes).unwrap();

    let (code, stderr) = sequencer_exit(&setup, &[], EXIT_WAIT);
    assert_eq!(code, Some(JOURNAL_DAMAGED), "{stderr}");
    assert!(
        stderr.contains(&format!("checkpoint {}: damaged", checkpoint.display())),
        "{stderr}"
    );
    let output = tally_journal(&[OsStr::new("verify"), setup.journal_file().as_os_str()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stdout).contains("checkpoint damaged"));

    let appliance = Appliance::start_with_args(&setup, &["--accept-journal-loss"]);
    assert!(appliance.stop_with(libc::SIGTERM).success());
    let records = journal_records(&setup.journal_file());
    let last = records.last().unwrap();
    let (next_seq, end_offset) = read_checkpoint(&setup);
    assert!(next_seq <= last.end_seq() && end_offset <= last.end_offset());
    assert!(next_seq > 1);
}
