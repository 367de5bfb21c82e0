//! Journal contents for tests: message blocks as a record carries them, and
//! a writer filled with messages whose content follows from their seq.

use super::JournalWriter;

/// `messages` as a record's blocks: each one's u16 length (big-endian),
/// then its bytes.
pub(crate) fn blocks(messages: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for message in messages {
        out.extend_from_slice(&(message.len() as u16).to_be_bytes());
        out.extend_from_slice(message);
    }
    out
}

/// Message `seq`: 20..=41 bytes, its content derived from `seq` (the seq
/// itself in its first 8 bytes).
pub(crate) fn message(seq: u64) -> Vec<u8> {
    let len = 20 + (seq % 22) as usize;
    let mut out = vec![(seq % 251) as u8; len];
    out[..8].copy_from_slice(&seq.to_be_bytes());
    out
}

/// Appends the next `count` messages ([`message`]) in records of up to
/// `per_record`.
pub(crate) fn append(writer: &mut JournalWriter, count: u64, per_record: u64) {
    let mut seq = writer.next_seq();
    let end = seq + count;
    while seq < end {
        let n = (end - seq).min(per_record);
        let messages: Vec<Vec<u8>> = (seq..seq + n).map(message).collect();
        let slices: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        writer.append(seq, n as u16, &blocks(&slices), 0).unwrap();
        seq += n;
    }
}
