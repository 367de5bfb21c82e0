//! The journal's byte layout: the file header, the record header and its
//! checksum, and the check of one record. No I/O.

use tally_wire::mold::Session;

/// Bytes in the file header.
pub const FILE_HEADER_BYTES: usize = 64;
/// Bytes in each record header.
pub const RECORD_HEADER_BYTES: usize = 24;
/// Largest payload a record may hold: a MoldUDP64 packet's block area is
/// bounded by the UDP datagram size.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 65_507 - 20;
/// Record count value that marks the end of the session.
pub const COUNT_END_OF_SESSION: u16 = 0xFFFF;

pub(crate) const MAGIC: &[u8; 8] = b"TALLYJNL";
pub(crate) const VERSION: u32 = 1;

/// A record found by a reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    /// File offset of the record header.
    pub offset: u64,
    /// Sequence number of the first message.
    pub first_seq: u64,
    /// Messages in the record.
    pub count: u16,
    /// Payload bytes.
    pub payload_bytes: u32,
}

impl RecordInfo {
    /// Sequence number one past the record's last message.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }

    /// File offset one past the record.
    pub fn end_offset(&self) -> u64 {
        self.offset + RECORD_HEADER_BYTES as u64 + u64::from(self.payload_bytes)
    }
}

pub(crate) fn parse_record_header(offset: u64, header: &[u8; RECORD_HEADER_BYTES]) -> RecordInfo {
    RecordInfo {
        offset,
        payload_bytes: u32::from_be_bytes(header[0..4].try_into().unwrap()),
        first_seq: u64::from_be_bytes(header[8..16].try_into().unwrap()),
        count: u16::from_be_bytes(header[16..18].try_into().unwrap()),
    }
}

pub(crate) fn record_header(
    first_seq: u64,
    count: u16,
    blocks: &[u8],
) -> [u8; RECORD_HEADER_BYTES] {
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[0..4].copy_from_slice(&(blocks.len() as u32).to_be_bytes());
    header[8..16].copy_from_slice(&first_seq.to_be_bytes());
    header[16..18].copy_from_slice(&count.to_be_bytes());
    let crc = record_crc(&header, blocks);
    header[4..8].copy_from_slice(&crc.to_be_bytes());
    header
}

pub(crate) fn record_crc(header: &[u8; RECORD_HEADER_BYTES], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header[0..4]);
    let crc = crc32c::crc32c_append(crc, &header[8..RECORD_HEADER_BYTES]);
    crc32c::crc32c_append(crc, payload)
}

pub(crate) fn file_header(session: Session, created_ns: u64) -> [u8; FILE_HEADER_BYTES] {
    let mut header = [0u8; FILE_HEADER_BYTES];
    header[0..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_be_bytes());
    header[12..16].copy_from_slice(&(FILE_HEADER_BYTES as u32).to_be_bytes());
    header[16..26].copy_from_slice(session.as_bytes());
    header[32..40].copy_from_slice(&created_ns.to_be_bytes());
    header
}

/// The fields of a file header that passed [`check_file_header`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHeader {
    /// The session named in the header, without its space padding.
    pub session: String,
    /// When the file was created, ns since the Unix epoch.
    pub created_ns: u64,
}

/// Checks a file header's magic, version and header length (not which
/// session it names: the caller compares that).
pub fn check_file_header(header: &[u8]) -> Result<FileHeader, String> {
    if header.len() < FILE_HEADER_BYTES {
        return Err(format!(
            "{} bytes, shorter than the {FILE_HEADER_BYTES}-byte file header",
            header.len()
        ));
    }
    if &header[0..8] != MAGIC {
        return Err("wrong magic (expected TALLYJNL)".to_string());
    }
    let version = u32::from_be_bytes(header[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(format!("version {version}, this build reads {VERSION}"));
    }
    let header_bytes = u32::from_be_bytes(header[12..16].try_into().unwrap());
    if header_bytes as usize != FILE_HEADER_BYTES {
        return Err(format!(
            "header length {header_bytes}, this build reads {FILE_HEADER_BYTES}"
        ));
    }
    Ok(FileHeader {
        session: String::from_utf8_lossy(&header[16..26])
            .trim_end()
            .to_string(),
        created_ns: u64::from_be_bytes(header[32..40].try_into().unwrap()),
    })
}

/// Walks the blocks of a payload: Some(count) when they tile it exactly.
pub(crate) fn count_blocks(payload: &[u8]) -> Option<u64> {
    let mut at = 0usize;
    let mut count = 0u64;
    while at < payload.len() {
        if at + 2 > payload.len() {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([payload[at], payload[at + 1]]));
        at += 2 + len;
        count += 1;
    }
    (at == payload.len()).then_some(count)
}

/// Checks that a whole, intact record starts at `rest[0]`, whatever its
/// sequence number: its length fits, its header is plausible (a count, zero
/// reserved bytes), its checksum matches and its blocks tile the payload.
/// Returns the record (offset 0) and its length in bytes.
///
/// The cheap checks come first: recovery calls this at every byte offset
/// after a damaged record to find out whether anything intact follows it,
/// and random bytes or zero fill fail on the length or the count.
pub(crate) fn intact_record(rest: &[u8]) -> Result<(RecordInfo, usize), String> {
    if rest.len() < RECORD_HEADER_BYTES {
        return Err(format!(
            "{} bytes left, a record header is {RECORD_HEADER_BYTES}",
            rest.len()
        ));
    }
    let header: &[u8; RECORD_HEADER_BYTES] = rest[..RECORD_HEADER_BYTES].try_into().unwrap();
    let info = parse_record_header(0, header);
    let payload_len = info.payload_bytes as usize;
    if payload_len > RECORD_PAYLOAD_BYTES_MAX {
        return Err(format!(
            "payload length {payload_len} is over the maximum {RECORD_PAYLOAD_BYTES_MAX}"
        ));
    }
    let record_len = RECORD_HEADER_BYTES + payload_len;
    if rest.len() < record_len {
        return Err(format!(
            "record of {record_len} bytes, only {} left in the file",
            rest.len()
        ));
    }
    if info.count == 0 {
        return Err("message count 0".to_string());
    }
    if info.count == COUNT_END_OF_SESSION {
        if payload_len != 0 {
            return Err(format!(
                "end-of-session record with a {payload_len}-byte payload"
            ));
        }
    } else if payload_len < 2 * usize::from(info.count) {
        return Err(format!(
            "{} messages cannot fit in {payload_len} payload bytes",
            info.count
        ));
    }
    if header[18..RECORD_HEADER_BYTES]
        .iter()
        .any(|&byte| byte != 0)
    {
        return Err("reserved header bytes 18..24 are not zero".to_string());
    }
    if info.first_seq == 0 {
        return Err("sequence number 0".to_string());
    }
    let payload = &rest[RECORD_HEADER_BYTES..record_len];
    let stored_crc = u32::from_be_bytes(header[4..8].try_into().unwrap());
    let computed_crc = record_crc(header, payload);
    if computed_crc != stored_crc {
        return Err(format!(
            "checksum mismatch (stored {stored_crc:#010x}, computed {computed_crc:#010x})"
        ));
    }
    if info.count != COUNT_END_OF_SESSION && count_blocks(payload) != Some(u64::from(info.count)) {
        return Err(format!(
            "the payload's blocks do not match the count {}",
            info.count
        ));
    }
    Ok((info, record_len))
}

/// Whether `rest` could start with an intact record: the cheap header checks
/// of [`intact_record`] (length, count, reserved bytes, sequence number), no
/// checksum and no allocation. Recovery calls it at every byte offset after
/// a damaged record; random bytes and zero fill fail it almost always.
pub(crate) fn could_be_record(rest: &[u8]) -> bool {
    if rest.len() < RECORD_HEADER_BYTES {
        return false;
    }
    let payload_len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if payload_len > RECORD_PAYLOAD_BYTES_MAX || rest.len() < RECORD_HEADER_BYTES + payload_len {
        return false;
    }
    let count = u16::from_be_bytes([rest[16], rest[17]]);
    let count_fits = match count {
        0 => false,
        COUNT_END_OF_SESSION => payload_len == 0,
        count => payload_len >= 2 * usize::from(count),
    };
    count_fits
        && rest[18..RECORD_HEADER_BYTES].iter().all(|&byte| byte == 0)
        && rest[8..16].iter().any(|&byte| byte != 0)
}

/// Checks one record at the start of `rest` that must begin with message
/// `expected_seq`: Ok((record bytes, count)).
pub(crate) fn check_record(rest: &[u8], expected_seq: u64) -> Result<(usize, u16), String> {
    let (info, record_len) = intact_record(rest)?;
    if info.first_seq != expected_seq {
        return Err(format!(
            "record starts at sequence {}, expected {expected_seq}",
            info.first_seq
        ));
    }
    Ok((record_len, info.count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::test_records::blocks;

    #[test]
    fn a_written_record_is_intact_and_every_bit_flip_is_not() {
        let payload = blocks(&[b"one", b"two"]);
        let mut record = record_header(7, 2, &payload).to_vec();
        record.extend_from_slice(&payload);
        assert_eq!(check_record(&record, 7), Ok((record.len(), 2)));
        assert!(check_record(&record, 8).is_err());
        for byte in 0..record.len() {
            for bit in 0..8 {
                let mut damaged = record.clone();
                damaged[byte] ^= 1 << bit;
                assert!(intact_record(&damaged).is_err(), "byte {byte} bit {bit}");
            }
        }
        assert!(intact_record(&[0u8; 100]).is_err());
        assert!(could_be_record(&record));
        assert!(!could_be_record(&[0u8; 100]));
    }

    #[test]
    fn file_header_round_trip() {
        let session = Session::from_str("ABC").unwrap();
        let header = file_header(session, 42);
        assert_eq!(
            check_file_header(&header),
            Ok(FileHeader {
                session: "ABC".to_string(),
                created_ns: 42
            })
        );
        let mut bad = header;
        bad[0] ^= 1;
        assert!(check_file_header(&bad).is_err());
        assert!(check_file_header(&header[..63]).is_err());
    }
}
