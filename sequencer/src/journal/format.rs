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

/// Checks one record at the start of `rest`: Ok((record bytes, count)).
pub(crate) fn check_record(rest: &[u8], expected_seq: u64) -> Result<(usize, u16), String> {
    if rest.len() < RECORD_HEADER_BYTES {
        return Err(format!("{} bytes left, a record header is 24", rest.len()));
    }
    let header: &[u8; RECORD_HEADER_BYTES] = rest[..RECORD_HEADER_BYTES].try_into().unwrap();
    let info = parse_record_header(0, header);
    let payload_len = info.payload_bytes as usize;
    if payload_len > RECORD_PAYLOAD_BYTES_MAX {
        return Err(format!("payload length {payload_len} is over the maximum"));
    }
    let record_len = RECORD_HEADER_BYTES + payload_len;
    if rest.len() < record_len {
        return Err(format!("record of {record_len} bytes, {} left", rest.len()));
    }
    let payload = &rest[RECORD_HEADER_BYTES..record_len];
    let stored_crc = u32::from_be_bytes(header[4..8].try_into().unwrap());
    if record_crc(header, payload) != stored_crc {
        return Err("checksum mismatch".to_string());
    }
    if info.first_seq != expected_seq {
        return Err(format!(
            "record starts at sequence {}, expected {expected_seq}",
            info.first_seq
        ));
    }
    if info.count == COUNT_END_OF_SESSION {
        if payload_len != 0 {
            return Err("end-of-session record with a payload".to_string());
        }
        return Ok((record_len, info.count));
    }
    match count_blocks(payload) {
        Some(blocks) if blocks == u64::from(info.count) && blocks > 0 => {
            Ok((record_len, info.count))
        }
        _ => Err(format!("blocks do not match the count {}", info.count)),
    }
}
