//! A minimal writer of classic libpcap files (LINKTYPE_ETHERNET) with
//! hand-built Ethernet II, IPv4, UDP and TCP headers, for interop tests that
//! hand tally's bytes to a third-party decoder (tshark).
//!
//! Every length field and every checksum (IPv4 header, UDP and TCP with their
//! pseudo-headers) is computed, so a decoder that checks them finds nothing
//! to complain about. TCP connections keep their sequence and
//! acknowledgement numbers consistent across segments, handshake and close
//! included.

use std::net::Ipv4Addr;

/// libpcap magic number, microsecond timestamps.
const PCAP_MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// DLT/LINKTYPE_ETHERNET.
const LINKTYPE_ETHERNET: u32 = 1;
/// Snapshot length written in the file header, in bytes.
const SNAPLEN_BYTES: u32 = 65_535;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const ETHERNET_HEADER_BYTES: usize = 14;
const IPV4_HEADER_BYTES: usize = 20;
const UDP_HEADER_BYTES: usize = 8;
const TCP_HEADER_BYTES: usize = 20;

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// One end of a flow: MAC, IPv4 address and port.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl Endpoint {
    /// A unicast host with a locally administered MAC derived from its address.
    pub fn host(ip: Ipv4Addr, port: u16) -> Self {
        let [a, b, c, d] = ip.octets();
        Self {
            mac: [0x02, 0x00, a, b, c, d],
            ip,
            port,
        }
    }

    /// A multicast group: the MAC is 01:00:5e plus the group's low 23 bits
    /// (RFC 1112 §6.4).
    pub fn multicast_group(ip: Ipv4Addr, port: u16) -> Self {
        assert!(ip.is_multicast(), "{ip} is not a multicast group");
        let [_, b, c, d] = ip.octets();
        Self {
            mac: [0x01, 0x00, 0x5e, b & 0x7f, c, d],
            ip,
            port,
        }
    }
}

/// A pcap file being written into memory, one frame per call, with
/// timestamps advancing 100 µs per frame.
pub struct PcapWriter {
    bytes: Vec<u8>,
    frames: usize,
    time_us: u64,
    ip_id: u16,
}

impl PcapWriter {
    pub fn new() -> Self {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&PCAP_MAGIC_MICROS.to_le_bytes());
        bytes.extend_from_slice(&2u16.to_le_bytes()); // version major
        bytes.extend_from_slice(&4u16.to_le_bytes()); // version minor
        bytes.extend_from_slice(&0i32.to_le_bytes()); // thiszone: UTC
        bytes.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        bytes.extend_from_slice(&SNAPLEN_BYTES.to_le_bytes());
        bytes.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        Self {
            bytes,
            frames: 0,
            // 2024-01-02T03:04:05Z, an arbitrary fixed start.
            time_us: 1_704_164_645_000_000,
            ip_id: 1,
        }
    }

    /// Frames written so far; the next frame's number (1-based, as tshark
    /// counts) is this plus one.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// The file's bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Writes one UDP datagram from `src` to `dst` and returns its frame number.
    pub fn udp(&mut self, src: Endpoint, dst: Endpoint, payload: &[u8]) -> usize {
        let udp_len = UDP_HEADER_BYTES + payload.len();
        let mut segment = Vec::with_capacity(udp_len);
        segment.extend_from_slice(&src.port.to_be_bytes());
        segment.extend_from_slice(&dst.port.to_be_bytes());
        segment.extend_from_slice(&len_u16(udp_len).to_be_bytes());
        segment.extend_from_slice(&[0, 0]); // checksum, filled below
        segment.extend_from_slice(payload);
        let mut checksum = transport_checksum(src.ip, dst.ip, IPPROTO_UDP, &segment);
        if checksum == 0 {
            // RFC 768: a computed 0 is sent as all ones (0 means "none").
            checksum = 0xffff;
        }
        segment[6..8].copy_from_slice(&checksum.to_be_bytes());
        // Multicast datagrams go out with a small TTL, unicast with 64.
        let ttl = if dst.ip.is_multicast() { 8 } else { 64 };
        self.ipv4(src, dst, IPPROTO_UDP, ttl, &segment)
    }

    /// Writes one TCP segment and returns its frame number.
    fn tcp(
        &mut self,
        src: Endpoint,
        dst: Endpoint,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: &[u8],
    ) -> usize {
        let mut segment = Vec::with_capacity(TCP_HEADER_BYTES + payload.len());
        segment.extend_from_slice(&src.port.to_be_bytes());
        segment.extend_from_slice(&dst.port.to_be_bytes());
        segment.extend_from_slice(&seq.to_be_bytes());
        segment.extend_from_slice(&ack.to_be_bytes());
        segment.push(((TCP_HEADER_BYTES / 4) as u8) << 4); // data offset, no options
        segment.push(flags);
        segment.extend_from_slice(&65_535u16.to_be_bytes()); // window
        segment.extend_from_slice(&[0, 0]); // checksum, filled below
        segment.extend_from_slice(&[0, 0]); // urgent pointer
        segment.extend_from_slice(payload);
        let checksum = transport_checksum(src.ip, dst.ip, IPPROTO_TCP, &segment);
        segment[16..18].copy_from_slice(&checksum.to_be_bytes());
        self.ipv4(src, dst, IPPROTO_TCP, 64, &segment)
    }

    fn ipv4(&mut self, src: Endpoint, dst: Endpoint, protocol: u8, ttl: u8, body: &[u8]) -> usize {
        let total_len = IPV4_HEADER_BYTES + body.len();
        let mut frame = Vec::with_capacity(ETHERNET_HEADER_BYTES + total_len);
        frame.extend_from_slice(&dst.mac);
        frame.extend_from_slice(&src.mac);
        frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip_start = frame.len();
        frame.push(0x45); // version 4, IHL 5 words
        frame.push(0); // DSCP/ECN
        frame.extend_from_slice(&len_u16(total_len).to_be_bytes());
        frame.extend_from_slice(&self.ip_id.to_be_bytes());
        self.ip_id = self.ip_id.wrapping_add(1);
        frame.extend_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
        frame.push(ttl);
        frame.push(protocol);
        frame.extend_from_slice(&[0, 0]); // header checksum, filled below
        frame.extend_from_slice(&src.ip.octets());
        frame.extend_from_slice(&dst.ip.octets());
        let checksum = internet_checksum(&[&frame[ip_start..]]);
        frame[ip_start + 10..ip_start + 12].copy_from_slice(&checksum.to_be_bytes());
        frame.extend_from_slice(body);
        self.record(&frame)
    }

    fn record(&mut self, frame: &[u8]) -> usize {
        let len = u32::try_from(frame.len()).expect("frame fits a pcap record");
        assert!(
            len <= SNAPLEN_BYTES,
            "frame longer than the snapshot length"
        );
        let seconds = u32::try_from(self.time_us / 1_000_000).expect("timestamp fits u32");
        let micros = (self.time_us % 1_000_000) as u32;
        self.bytes.extend_from_slice(&seconds.to_le_bytes());
        self.bytes.extend_from_slice(&micros.to_le_bytes());
        self.bytes.extend_from_slice(&len.to_le_bytes()); // captured
        self.bytes.extend_from_slice(&len.to_le_bytes()); // on the wire
        self.bytes.extend_from_slice(frame);
        self.time_us += 100;
        self.frames += 1;
        self.frames
    }
}

/// A TCP connection between a client and a server, tracking both sides'
/// next sequence numbers so every segment acknowledges all the peer sent.
pub struct TcpConnection {
    client: Endpoint,
    server: Endpoint,
    client_next_seq: u32,
    server_next_seq: u32,
}

/// Which side sends a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl TcpConnection {
    /// Writes the three-way handshake (SYN, SYN-ACK, ACK) with the given
    /// initial sequence numbers.
    pub fn open(
        pcap: &mut PcapWriter,
        client: Endpoint,
        server: Endpoint,
        client_isn: u32,
        server_isn: u32,
    ) -> Self {
        pcap.tcp(client, server, client_isn, 0, tcp_flags::SYN, &[]);
        pcap.tcp(
            server,
            client,
            server_isn,
            client_isn.wrapping_add(1),
            tcp_flags::SYN | tcp_flags::ACK,
            &[],
        );
        let connection = Self {
            client,
            server,
            client_next_seq: client_isn.wrapping_add(1),
            server_next_seq: server_isn.wrapping_add(1),
        };
        pcap.tcp(
            client,
            server,
            connection.client_next_seq,
            connection.server_next_seq,
            tcp_flags::ACK,
            &[],
        );
        connection
    }

    /// Writes one data segment (PSH|ACK) from `side` and returns its frame
    /// number.
    pub fn send(&mut self, pcap: &mut PcapWriter, side: Side, payload: &[u8]) -> usize {
        assert!(!payload.is_empty(), "a data segment carries data");
        self.segment(pcap, side, tcp_flags::PSH | tcp_flags::ACK, payload)
    }

    /// Writes an orderly close: FIN from `first`, FIN-ACK from the other
    /// side, the final ACK from `first`.
    pub fn close(mut self, pcap: &mut PcapWriter, first: Side) {
        let second = match first {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        };
        self.segment(pcap, first, tcp_flags::FIN | tcp_flags::ACK, &[]);
        self.segment(pcap, second, tcp_flags::FIN | tcp_flags::ACK, &[]);
        self.segment(pcap, first, tcp_flags::ACK, &[]);
    }

    fn segment(&mut self, pcap: &mut PcapWriter, side: Side, flags: u8, payload: &[u8]) -> usize {
        let (src, dst, seq, ack) = match side {
            Side::Client => (
                self.client,
                self.server,
                self.client_next_seq,
                self.server_next_seq,
            ),
            Side::Server => (
                self.server,
                self.client,
                self.server_next_seq,
                self.client_next_seq,
            ),
        };
        let frame = pcap.tcp(src, dst, seq, ack, flags, payload);
        // SYN and FIN each take one sequence number.
        let advance = u32::try_from(payload.len()).expect("segment fits u32")
            + u32::from(flags & tcp_flags::FIN != 0);
        match side {
            Side::Client => self.client_next_seq = seq.wrapping_add(advance),
            Side::Server => self.server_next_seq = seq.wrapping_add(advance),
        }
        frame
    }
}

fn len_u16(len: usize) -> u16 {
    u16::try_from(len).expect("length fits a 16-bit header field")
}

/// The RFC 1071 one's-complement checksum over the concatenation of `parts`
/// (each of even length except possibly the last).
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &byte in *part {
            match odd.take() {
                Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(high) = odd {
        sum += u32::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The UDP/TCP checksum: over the IPv4 pseudo-header and the segment (whose
/// checksum field is zero).
fn transport_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = protocol;
    pseudo[10..12].copy_from_slice(&len_u16(segment.len()).to_be_bytes());
    internet_checksum(&[&pseudo, segment])
}

#[test]
fn checksum_matches_rfc1071_example() {
    // RFC 1071 §3: the sum of these words is 0xddf2, its complement 0x220d.
    let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(internet_checksum(&[&bytes]), !0xddf2);
    // Split across parts at an odd boundary gives the same sum.
    assert_eq!(internet_checksum(&[&bytes[..3], &bytes[3..]]), !0xddf2);
}
