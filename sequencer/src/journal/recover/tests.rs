use super::*;

fn session() -> Session {
    Session::from_str("TEST01").unwrap()
}

/// A journal of `records` records in memory; returns the bytes and each
/// record's (offset, first_seq, count).
fn journal(records: &[&[&[u8]]]) -> (Vec<u8>, Vec<(u64, u64, u16)>) {
    let mut bytes = file_header(session(), 1).to_vec();
    let mut layout = Vec::new();
    let mut seq = 1u64;
    for messages in records {
        let mut blocks = Vec::new();
        for message in *messages {
            blocks.extend_from_slice(&(message.len() as u16).to_be_bytes());
            blocks.extend_from_slice(message);
        }
        let count = messages.len() as u16;
        layout.push((bytes.len() as u64, seq, count));
        bytes.extend_from_slice(&record_header(seq, count, &blocks));
        bytes.extend_from_slice(&blocks);
        seq += u64::from(count);
    }
    (bytes, layout)
}

fn scan_bytes(bytes: &[u8]) -> ScanSummary {
    scan(
        bytes,
        bytes.len() as u64,
        |_| ControlFlow::Continue(()),
        |_| {},
    )
    .unwrap()
}

const RECORDS: &[&[&[u8]]] = &[
    &[b"first message"],
    &[b"second", b"third"],
    &[b"fourth", b"", b"sixth!"],
    &[b"seventh"],
    &[b"eighth", b"ninth"],
];

#[test]
fn intact_journal_scans_clean() {
    let (bytes, layout) = journal(RECORDS);
    let summary = scan_bytes(&bytes);
    assert_eq!(summary.damage, None);
    assert_eq!(summary.records, layout.len() as u64);
    assert_eq!(summary.messages, 9);
    assert_eq!(summary.next_seq, 10);
    assert_eq!(summary.end_offset, bytes.len() as u64);
}

/// Every bit of every record byte, flipped: the damage is found at the
/// record that holds the byte; it is a torn tail only in the final
/// record, and otherwise the first intact record after it is the next
/// one. No intact record is ever cut. With zero fill after the journal,
/// the same.
#[test]
fn every_bit_flip_is_refused_or_cut_at_the_final_record() {
    for zero_fill in [0usize, 4096] {
        let (mut bytes, layout) = journal(RECORDS);
        bytes.resize(bytes.len() + zero_fill, 0);
        let records_end = (bytes.len() - zero_fill) as u64;
        for byte in FILE_HEADER_BYTES..records_end as usize {
            let holder = layout
                .iter()
                .rposition(|&(offset, _, _)| offset <= byte as u64)
                .unwrap();
            let (offset, first_seq, _) = layout[holder];
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                let summary = scan_bytes(&damaged);
                let what = format!("byte {byte} bit {bit}, zero fill {zero_fill}");
                let damage = summary.damage.as_ref().expect(&what);
                assert_eq!(damage.offset, offset, "{what}");
                assert_eq!(summary.end_offset, offset, "{what}");
                assert_eq!(summary.next_seq, first_seq, "{what}");
                assert_eq!(summary.records, holder as u64, "{what}");
                if holder + 1 == layout.len() {
                    assert!(damage.is_torn_tail(), "{what}: {damage:?}");
                } else {
                    let after = damage.after.expect(&what);
                    assert_eq!(after.offset, layout[holder + 1].0, "{what}");
                    assert_eq!(after.first_seq, layout[holder + 1].1, "{what}");
                    assert_eq!(after.records, (layout.len() - holder - 1) as u64);
                    assert_eq!(after.end_seq, 10, "{what}");
                }
            }
        }
    }
}

#[test]
fn torn_tail_at_every_length_with_and_without_zero_fill() {
    let (bytes, layout) = journal(RECORDS);
    let (last_offset, last_seq, _) = *layout.last().unwrap();
    for cut in last_offset as usize + 1..bytes.len() {
        for zero_fill in [0usize, 1, 23, 24, 100_000] {
            let mut torn = bytes[..cut].to_vec();
            torn.resize(cut + zero_fill, 0);
            let summary = scan_bytes(&torn);
            let what = format!("cut at {cut}, zero fill {zero_fill}");
            let damage = summary.damage.as_ref().expect(&what);
            assert!(damage.is_torn_tail(), "{what}: {damage:?}");
            assert_eq!(summary.end_offset, last_offset, "{what}");
            assert_eq!(summary.next_seq, last_seq, "{what}");
        }
    }
    // Zero fill right after the last record.
    let mut filled = bytes.clone();
    filled.resize(bytes.len() + 5000, 0);
    let summary = scan_bytes(&filled);
    let damage = summary.damage.unwrap();
    assert!(damage.is_torn_tail() && damage.zero_fill);
    assert_eq!(summary.end_offset, bytes.len() as u64);
    assert_eq!(summary.next_seq, 10);
}

#[test]
fn a_record_out_of_sequence_or_after_the_end_is_corruption() {
    let (mut bytes, layout) = journal(RECORDS);
    // Record 3 claims the numbers of record 2: intact, but out of order.
    let (offset, _, count) = layout[2];
    let payload_start = offset as usize + RECORD_HEADER_BYTES;
    let payload_end = layout[3].0 as usize;
    let blocks = bytes[payload_start..payload_end].to_vec();
    let header = record_header(2, count, &blocks);
    bytes[offset as usize..payload_start].copy_from_slice(&header);
    let summary = scan_bytes(&bytes);
    let damage = summary.damage.unwrap();
    assert_eq!(damage.offset, offset);
    assert_eq!(damage.after.unwrap().offset, offset);
    assert_eq!(damage.after.unwrap().first_seq, 2);

    // Anything intact after the end-of-session record.
    let (mut bytes, _) = journal(&RECORDS[..1]);
    bytes.extend_from_slice(&record_header(2, COUNT_END_OF_SESSION, &[]));
    let end = bytes.len() as u64;
    bytes.extend_from_slice(&record_header(2, 1, &[0, 1, b'x']));
    bytes.extend_from_slice(&[0, 1, b'x']);
    let summary = scan_bytes(&bytes);
    assert!(summary.ended);
    let damage = summary.damage.unwrap();
    assert_eq!(damage.offset, end);
    assert!(!damage.is_torn_tail());
}

fn write_journal(dir: &Path, bytes: &[u8]) {
    std::fs::write(journal_path(dir, session()), bytes).unwrap();
}

fn open(dir: &Path, accept_loss: bool) -> Result<(Recovery, Vec<u64>), JournalError> {
    let mut seen = Vec::new();
    let (_, _, recovery) = open_and_recover(
        dir,
        session(),
        &RecoveryOptions { accept_loss },
        &mut |seq, _| seen.push(seq),
    )?;
    Ok((recovery, seen))
}

fn stored_checkpoint(dir: &Path) -> Checkpoint {
    Checkpoint::read(&checkpoint_path(dir, session()))
        .unwrap()
        .unwrap()
        .unwrap()
}

#[test]
fn a_fresh_journal_gets_a_checkpoint_and_a_reopen_refreshes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (recovery, _) = open(dir.path(), false).unwrap();
    assert!(recovery.created);
    assert_eq!(stored_checkpoint(dir.path()), Checkpoint::FRESH);
    let (bytes, _) = journal(RECORDS);
    write_journal(dir.path(), &bytes);
    let (recovery, seen) = open(dir.path(), false).unwrap();
    assert_eq!(recovery.next_seq, 10);
    assert_eq!(seen, (1..10).collect::<Vec<_>>());
    assert_eq!(
        stored_checkpoint(dir.path()),
        Checkpoint {
            next_seq: 10,
            end_offset: bytes.len() as u64
        }
    );
}

#[test]
fn corruption_is_refused_with_its_numbers_and_accepted_only_with_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bytes, layout) = journal(RECORDS);
    let original = bytes.clone();
    bytes[layout[2].0 as usize + 1] ^= 0x40; // the length of record 3
    write_journal(dir.path(), &bytes);
    let error = open(dir.path(), false).unwrap_err();
    match &error {
        JournalError::Corrupt {
            offset,
            last_good_seq,
            intact_offset,
            intact_seq,
            ..
        } => {
            assert_eq!(*offset, layout[2].0);
            assert_eq!(*last_good_seq, 3);
            assert_eq!(*intact_offset, layout[3].0);
            assert_eq!(*intact_seq, 7);
        }
        other => panic!("expected corrupt, got {other}"),
    }
    let text = error.to_string();
    assert!(text.contains(&format!("byte {}", layout[2].0)), "{text}");
    // Nothing was changed by the refusal.
    assert_eq!(
        std::fs::read(journal_path(dir.path(), session())).unwrap(),
        bytes
    );
    let (recovery, seen) = open(dir.path(), true).unwrap();
    assert_eq!(recovery.next_seq, 4);
    assert_eq!(seen, vec![1, 2, 3]);
    assert_eq!(
        std::fs::read(journal_path(dir.path(), session())).unwrap(),
        original[..layout[2].0 as usize]
    );
    assert_eq!(
        stored_checkpoint(dir.path()),
        Checkpoint {
            next_seq: 4,
            end_offset: layout[2].0
        }
    );
    // And it opens cleanly afterwards.
    assert_eq!(open(dir.path(), false).unwrap().0.next_seq, 4);
}

#[test]
fn a_journal_behind_its_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, layout) = journal(RECORDS);
    write_journal(dir.path(), &bytes);
    open(dir.path(), false).unwrap();
    // Torn inside the last record, which the checkpoint covers.
    write_journal(dir.path(), &bytes[..bytes.len() - 3]);
    let error = open(dir.path(), false).unwrap_err();
    assert!(
        matches!(error, JournalError::BehindCheckpoint { .. }),
        "{error}"
    );
    // Header only.
    write_journal(dir.path(), &bytes[..FILE_HEADER_BYTES]);
    let error = open(dir.path(), false).unwrap_err();
    assert!(
        matches!(
            error,
            JournalError::BehindCheckpoint {
                journal_next_seq: 1,
                ..
            }
        ),
        "{error}"
    );
    // Missing, then empty: refused, and not created.
    let path = journal_path(dir.path(), session());
    std::fs::remove_file(&path).unwrap();
    let error = open(dir.path(), false).unwrap_err();
    assert!(matches!(error, JournalError::Missing { .. }), "{error}");
    assert!(!path.exists());
    std::fs::write(&path, b"").unwrap();
    let error = open(dir.path(), false).unwrap_err();
    assert!(matches!(error, JournalError::Missing { .. }), "{error}");
    // The torn journal, accepted: cut at the last intact record.
    write_journal(dir.path(), &bytes[..bytes.len() - 3]);
    let (recovery, _) = open(dir.path(), true).unwrap();
    assert_eq!(recovery.next_seq, layout[4].1);
    assert_eq!(
        stored_checkpoint(dir.path()),
        Checkpoint {
            next_seq: layout[4].1,
            end_offset: layout[4].0
        }
    );
}

#[test]
fn a_torn_tail_past_the_checkpoint_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, layout) = journal(RECORDS);
    write_journal(dir.path(), &bytes[..layout[3].0 as usize]);
    open(dir.path(), false).unwrap(); // checkpoint at record 4
    let mut torn = bytes[..bytes.len() - 5].to_vec();
    torn.resize(torn.len() + 8192, 0);
    write_journal(dir.path(), &torn);
    let (recovery, _) = open(dir.path(), false).unwrap();
    assert_eq!(recovery.next_seq, layout[4].1);
    assert_eq!(recovery.cut_bytes, torn.len() as u64 - layout[4].0);
}

#[test]
fn a_damaged_checkpoint_is_refused_and_accepted_only_with_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _) = journal(RECORDS);
    write_journal(dir.path(), &bytes);
    open(dir.path(), false).unwrap();
    let checkpoint = checkpoint_path(dir.path(), session());
    let mut stored = std::fs::read(&checkpoint).unwrap();
    stored[9] ^= 1;
    std::fs::write(&checkpoint, &stored).unwrap();
    let error = open(dir.path(), false).unwrap_err();
    assert!(
        matches!(error, JournalError::CheckpointDamaged { .. }),
        "{error}"
    );
    assert_eq!(open(dir.path(), true).unwrap().0.next_seq, 10);
    assert_eq!(stored_checkpoint(dir.path()).next_seq, 10);
}

#[test]
fn a_missing_journal_is_started_again_only_with_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _) = journal(RECORDS);
    write_journal(dir.path(), &bytes);
    open(dir.path(), false).unwrap();
    std::fs::remove_file(journal_path(dir.path(), session())).unwrap();
    assert!(matches!(
        open(dir.path(), false).unwrap_err(),
        JournalError::Missing { .. }
    ));
    let (recovery, seen) = open(dir.path(), true).unwrap();
    assert!(recovery.created);
    assert!(seen.is_empty());
    assert_eq!(stored_checkpoint(dir.path()), Checkpoint::FRESH);
    assert_eq!(
        std::fs::metadata(journal_path(dir.path(), session()))
            .unwrap()
            .len(),
        FILE_HEADER_BYTES as u64
    );
}

#[test]
fn a_header_cut_short_at_creation_is_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let header = file_header(session(), 1);
    write_journal(dir.path(), &header[..20]);
    let (recovery, _) = open(dir.path(), false).unwrap();
    assert!(recovery.created);
    assert_eq!(open(dir.path(), false).unwrap().0.next_seq, 1);
    // Not a journal's beginning: refused, never overwritten.
    write_journal(dir.path(), b"hello");
    std::fs::remove_file(checkpoint_path(dir.path(), session())).unwrap();
    assert!(matches!(
        open(dir.path(), false).unwrap_err(),
        JournalError::BadHeader { .. }
    ));
}

#[test]
fn another_sessions_journal_is_refused_even_with_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let mut header = file_header(Session::from_str("OTHER").unwrap(), 1).to_vec();
    header.extend_from_slice(&[0u8; 10]);
    write_journal(dir.path(), &header);
    let error = open(dir.path(), true).unwrap_err();
    assert!(matches!(error, JournalError::BadHeader { .. }), "{error}");
}
