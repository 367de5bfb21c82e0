//! Interop with a third-party decoder: MoldUDP64 packets and SoupBinTCP
//! sessions produced by `tally-wire` are written into a pcap file (Ethernet,
//! IPv4, UDP and TCP headers built by hand in `support/pcap.rs`), decoded by
//! Wireshark's own `moldudp64` and `soupbintcp` dissectors through `tshark`,
//! and every field tshark reports is compared with what was written:
//! sessions, sequence numbers, message counts, message lengths and bytes,
//! packet types and lengths, usernames, passwords, requested and next
//! sequence numbers, the sequence numbers tshark counts for sequenced data,
//! login reject codes, debug text. No frame may be malformed or carry expert
//! info of warning or error severity, and the IPv4, UDP and TCP checksums
//! must verify.
//!
//! When tshark is not installed the test prints `SKIPPED: tshark not
//! installed` to stderr and returns, unless `TALLY_REQUIRE_TSHARK=1` (set by
//! `.ci/run`), in which case it fails.

#[path = "support/pcap.rs"]
mod pcap;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Command;

use pcap::{Endpoint, PcapWriter, Side, TcpConnection};
use tally_wire::mold::{self, PacketBuilder, ReRequest, Session};
use tally_wire::soup::{self, login_reject};
use tally_wire::*;

/// UDP port of the MoldUDP64 multicast stream (`-d udp.port==P,moldudp64`).
const STREAM_PORT: u16 = 26_400;
/// UDP port of the retransmit server (re-requests in, replies out).
const RETRANSMIT_PORT: u16 = 26_401;
/// TCP port of the SoupBinTCP gateway (`-d tcp.port==Q,soupbintcp`).
const SOUP_PORT: u16 = 26_402;

const SESSION: &str = "TALLY-D1";

/// The fields asked of tshark, one column each (`-T fields -e …`).
const FIELDS: &[&str] = &[
    "frame.number",
    "ip.checksum.status",
    "udp.checksum.status",
    "tcp.checksum.status",
    "moldudp64.session",
    "moldudp64.sequence",
    "moldudp64.count",
    "moldudp64.msglen",
    "moldudp64.msgseq",
    "moldudp64.msgdata",
    "soupbintcp.packet_length",
    "soupbintcp.packet_type",
    "soupbintcp.username",
    "soupbintcp.password",
    "soupbintcp.session",
    "soupbintcp.req_seq_num",
    "soupbintcp.next_seq_num",
    "soupbintcp.seq_num",
    "soupbintcp.reject_code",
    "soupbintcp.text",
    "soupbintcp.message",
    "_ws.malformed",
    "_ws.expert.severity",
    "_ws.expert.message",
];

/// Joins the occurrences of one field within a frame. No value written in
/// this test contains it.
const AGGREGATOR: char = '|';

/// What tshark must report for one frame: field name to its occurrences, in
/// order. Fields not named must be absent.
type FrameExpectation = BTreeMap<&'static str, Vec<String>>;

/// Everything written into the pcap, and what tshark should say about it.
struct Capture {
    pcap: PcapWriter,
    /// Frame number (1-based) to expected fields. Frames not listed (TCP
    /// handshake, pure ACKs, the first part of a split PDU) must carry no
    /// MoldUDP64 or SoupBinTCP fields.
    expected: BTreeMap<usize, FrameExpectation>,
}

impl Capture {
    fn new() -> Self {
        Self {
            pcap: PcapWriter::new(),
            expected: BTreeMap::new(),
        }
    }

    fn expect(&mut self, frame: usize) -> &mut FrameExpectation {
        self.expected.entry(frame).or_default()
    }

    /// Writes a MoldUDP64 datagram and records what tshark must decode from
    /// it: `messages` are the blocks the packet holds, `count` its count field.
    fn mold_datagram(
        &mut self,
        src: Endpoint,
        dst: Endpoint,
        datagram: &[u8],
        sequence: u64,
        count: u16,
        messages: &[&[u8]],
    ) {
        let frame = self.pcap.udp(src, dst, datagram);
        let expect = self.expect(frame);
        expect.insert("moldudp64.session", vec![format!("{SESSION:<10}")]);
        expect.insert("moldudp64.sequence", vec![sequence.to_string()]);
        expect.insert("moldudp64.count", vec![count.to_string()]);
        let lengths = messages.iter().map(|m| m.len().to_string()).collect();
        let seqs = (0..messages.len() as u64)
            .map(|i| (sequence + i).to_string())
            .collect();
        let data = messages.iter().map(|m| hex(m)).collect();
        for (field, values) in [
            ("moldudp64.msglen", lengths),
            ("moldudp64.msgseq", seqs),
            ("moldudp64.msgdata", data),
        ] {
            if !messages.is_empty() {
                expect.insert(field, values);
            }
        }
    }
}

/// One SoupBinTCP frame written by tally-wire and the fields tshark must
/// decode from it.
struct SoupFrame {
    bytes: Vec<u8>,
    fields: Vec<(&'static str, String)>,
}

/// Encodes a frame with one of tally-wire's `soup::write_*` functions and
/// notes the length and type fields every frame has.
fn soup_frame(
    write: impl FnOnce(&mut [u8]) -> Result<usize, SoupError>,
    fields: &[(&'static str, String)],
) -> SoupFrame {
    let mut buf = [0u8; 256];
    let len = write(&mut buf).expect("frame fits");
    let bytes = buf[..len].to_vec();
    let packet_length = u16::from_be_bytes([bytes[0], bytes[1]]);
    assert_eq!(usize::from(packet_length), len - 2);
    let mut all = vec![
        ("soupbintcp.packet_length", packet_length.to_string()),
        ("soupbintcp.packet_type", quoted_char(bytes[2])),
    ];
    all.extend_from_slice(fields);
    SoupFrame { bytes, fields: all }
}

/// Writes `frames` from `side` as one byte stream cut into TCP segments at
/// the stream offsets in `cuts`; each frame's fields are expected on the
/// segment holding its last byte (where tshark finishes reassembling it).
fn send_stream(
    capture: &mut Capture,
    connection: &mut TcpConnection,
    side: Side,
    frames: &[SoupFrame],
    cuts: &[usize],
) {
    let stream: Vec<u8> = frames.iter().flat_map(|f| f.bytes.clone()).collect();
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(stream.len());
    assert!(bounds.windows(2).all(|w| w[0] < w[1]), "cuts in order");
    let mut segment_frames = Vec::new();
    for window in bounds.windows(2) {
        segment_frames.push((
            window[1],
            connection.send(&mut capture.pcap, side, &stream[window[0]..window[1]]),
        ));
    }
    let mut end = 0;
    for frame in frames {
        end += frame.bytes.len();
        let (_, pcap_frame) = *segment_frames
            .iter()
            .find(|(segment_end, _)| *segment_end >= end)
            .expect("every byte is in a segment");
        let expect = capture.expect(pcap_frame);
        for (field, value) in &frame.fields {
            expect.entry(field).or_default().push(value.clone());
        }
    }
}

/// A session as tshark shows it: all 10 bytes, padding included.
fn padded(session: Session) -> String {
    String::from_utf8(session.as_bytes().to_vec()).expect("ASCII session")
}

/// A type or code byte as tshark shows a character field: `'L'`.
fn quoted_char(byte: u8) -> String {
    format!("'{}'", char::from(byte))
}

/// Bytes as tshark shows a bytes field: lowercase hex, no separators.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The stream of the test: a session's opening snapshot, then traffic.
fn stream_messages() -> Vec<Vec<u8>> {
    let stamp = |seq: u64| 1_704_164_645_000_000_000 + seq * 1_000;
    let mut messages: Vec<Vec<u8>> = vec![
        SystemEvent::new(system_code::START_OF_SESSION)
            .with_timestamp_ns(stamp(1))
            .as_bytes()
            .to_vec(),
        LocationDirectory::new(7, pad_ascii("STORE-7").unwrap())
            .with_timestamp_ns(stamp(2))
            .as_bytes()
            .to_vec(),
        SkuDirectory::new(1001, pad_ascii("WIDGET-BLUE").unwrap())
            .with_timestamp_ns(stamp(3))
            .as_bytes()
            .to_vec(),
        InventoryLevel::new(7, 1001, 500, 0)
            .with_timestamp_ns(stamp(4))
            .as_bytes()
            .to_vec(),
        SystemEvent::new(system_code::AUTHORITY_ONLINE)
            .with_timestamp_ns(stamp(5))
            .as_bytes()
            .to_vec(),
    ];
    let mut seq = messages.len() as u64;
    let mut next = |bytes: &[u8]| {
        seq += 1;
        let mut bytes = bytes.to_vec();
        header_mut(&mut bytes).unwrap().timestamp_ns = stamp(seq).into();
        bytes
    };
    let traffic = [
        next(
            Order::new(1, 7, 1001, 3)
                .with_origin(12)
                .with_client_seq(1)
                .as_bytes(),
        ),
        next(OnHandDelta::new(7, 1001, -3, delta_reason::ORDER, 6).as_bytes()),
        next(
            Reserve::new(2, 7, 1001, 5, 60_000)
                .with_origin(12)
                .with_client_seq(2)
                .as_bytes(),
        ),
        next(HoldPlaced::new(8, 7, 1001, 5, 1_704_164_705_000_000_000).as_bytes()),
        next(
            ConfirmHold::new(2)
                .with_origin(12)
                .with_client_seq(3)
                .as_bytes(),
        ),
        next(HoldEnded::new(8, 7, 1001, 5, hold_outcome::CONFIRMED).as_bytes()),
        next(OnHandDelta::new(7, 1001, -5, delta_reason::HOLD_CONFIRMED, 10).as_bytes()),
        next(
            CancelOrder::new(99)
                .with_origin(12)
                .with_client_seq(4)
                .as_bytes(),
        ),
        next(CommandRejected::new(13, reject_reason::NO_SUCH).as_bytes()),
        next(
            GatewayReject::new(reject_reason::WRONG_LENGTH)
                .with_origin(12)
                .with_client_seq(5)
                .as_bytes(),
        ),
        next(
            Transfer::new(3, 7, 8, 1001, 10)
                .with_origin(13)
                .with_client_seq(1)
                .as_bytes(),
        ),
        next(Recount::new(8, 1001, 10, 0).as_bytes()),
        next(Adjust::new(7, 1001, 20, delta_reason::ADJUST).as_bytes()),
        next(ModifyOrder::new(1, 2).as_bytes()),
        next(ReleaseHold::new(4).as_bytes()),
    ];
    messages.extend(traffic);
    for message in &messages {
        Message::parse(message).expect("the test's stream messages are valid");
    }
    messages
}

/// Builds the whole capture: the MoldUDP64 stream with a gap fill, then three
/// SoupBinTCP connections (order entry, a rejected login, the replay feed).
fn build_capture() -> Capture {
    let mut capture = Capture::new();
    let session = Session::from_str(SESSION).unwrap();
    let sequencer = Endpoint::host(Ipv4Addr::new(10, 0, 0, 1), 40_000);
    let group = Endpoint::multicast_group(Ipv4Addr::new(239, 1, 2, 3), STREAM_PORT);
    let retransmitter = Endpoint::host(Ipv4Addr::new(10, 0, 0, 1), RETRANSMIT_PORT);
    let receiver = Endpoint::host(Ipv4Addr::new(10, 0, 0, 9), 45_000);
    let messages = stream_messages();

    // ---- MoldUDP64 ------------------------------------------------------
    let mut next_seq = 1u64;
    let mut buf = [0u8; mold::DEFAULT_PAYLOAD_LIMIT];
    // Data packets: the snapshot (5 messages of 4 sizes) in one packet, then
    // the traffic in packets of at most 300 bytes (two of them).
    for (chunk, limit_bytes) in [(&messages[..5], 1400), (&messages[5..], 300)] {
        let mut rest = chunk;
        while !rest.is_empty() {
            let first = next_seq;
            let mut packet = PacketBuilder::new(&mut buf, limit_bytes, session, first);
            let taken = rest
                .iter()
                .take_while(|message| packet.append(message).is_ok())
                .count();
            assert!(taken > 0, "a message always fits an empty packet");
            let count = packet.count();
            let len = packet.finish();
            let blocks: Vec<&[u8]> = rest[..taken].iter().map(Vec::as_slice).collect();
            capture.mold_datagram(sequencer, group, &buf[..len], first, count, &blocks);
            next_seq += taken as u64;
            rest = &rest[taken..];
        }
    }
    assert_eq!(next_seq, messages.len() as u64 + 1);

    // A full 1400-byte packet of orders.
    let first = next_seq;
    let mut packet = PacketBuilder::new(&mut buf, mold::DEFAULT_PAYLOAD_LIMIT, session, first);
    let mut orders = Vec::new();
    for i in 0.. {
        let order = Order::new(1000 + i, 7, 1001, 1)
            .with_origin(12)
            .with_client_seq(6 + i as u32)
            .with_timestamp_ns(1_704_164_646_000_000_000 + i);
        if packet.append(order.as_bytes()).is_err() {
            break;
        }
        orders.push(order);
    }
    let count = packet.count();
    assert_eq!(usize::from(count), (1400 - 20) / (2 + Order::SIZE));
    let len = packet.finish();
    let blocks: Vec<&[u8]> = orders.iter().map(|o| o.as_bytes()).collect();
    capture.mold_datagram(sequencer, group, &buf[..len], first, count, &blocks);
    next_seq += u64::from(count);

    // A heartbeat: count 0, sequence = the next one.
    let len = mold::write_heartbeat(&mut buf, session, next_seq);
    capture.mold_datagram(sequencer, group, &buf[..len], next_seq, 0, &[]);

    // Gap fill: a receiver re-requests 3 messages from sequence 6; the reply
    // goes to it by unicast.
    let request = ReRequest::new(session, 6, 3);
    capture.mold_datagram(receiver, retransmitter, request.as_bytes(), 6, 3, &[]);
    let mut packet = PacketBuilder::new(&mut buf, mold::DEFAULT_PAYLOAD_LIMIT, session, 6);
    for message in &messages[5..8] {
        packet.append(message).unwrap();
    }
    let len = packet.finish();
    let blocks: Vec<&[u8]> = messages[5..8].iter().map(Vec::as_slice).collect();
    capture.mold_datagram(retransmitter, receiver, &buf[..len], 6, 3, &blocks);

    // End of session: count 0xFFFF, sequence = one past the last.
    let len = mold::write_end_of_session(&mut buf, session, next_seq);
    capture.mold_datagram(sequencer, group, &buf[..len], next_seq, 0xFFFF, &[]);

    // ---- SoupBinTCP -----------------------------------------------------
    order_entry_session(&mut capture, session);
    rejected_login(&mut capture);
    replay_feed(&mut capture, session, &messages);
    capture
}

fn login_request(
    username: &str,
    password: &str,
    session: Session,
    requested_seq: u64,
) -> SoupFrame {
    soup_frame(
        |buf| soup::write_login_request(buf, username, password, session, requested_seq),
        &[
            ("soupbintcp.username", format!("{username:<6}")),
            ("soupbintcp.password", format!("{password:<10}")),
            ("soupbintcp.session", padded(session)),
            ("soupbintcp.req_seq_num", requested_seq.to_string()),
        ],
    )
}

fn login_accepted(session: Session, next_seq: u64) -> SoupFrame {
    soup_frame(
        |buf| soup::write_login_accepted(buf, session, next_seq),
        &[
            ("soupbintcp.session", padded(session)),
            ("soupbintcp.next_seq_num", next_seq.to_string()),
        ],
    )
}

fn unsequenced(message: &[u8]) -> SoupFrame {
    soup_frame(
        |buf| soup::write_unsequenced(buf, message),
        &[("soupbintcp.message", hex(message))],
    )
}

/// A sequenced data frame; `seq_num` is the number tshark must count for it
/// (from the login accepted's next sequence number on).
fn sequenced(payload: &[u8], seq_num: u64) -> SoupFrame {
    soup_frame(
        |buf| soup::write_sequenced(buf, payload),
        &[
            ("soupbintcp.seq_num", seq_num.to_string()),
            ("soupbintcp.message", hex(payload)),
        ],
    )
}

fn debug(text: &str) -> SoupFrame {
    soup_frame(
        |buf| soup::write_debug(buf, text.as_bytes()),
        &[("soupbintcp.text", text.to_owned())],
    )
}

/// A logged-in client of the gateway reconnects, has acks 3 and 4 replayed,
/// submits commands 5, 6 and 7 and gets their acks; heartbeats both ways, a
/// debug packet, end of session, logout.
fn order_entry_session(capture: &mut Capture, session: Session) {
    let client = Endpoint::host(Ipv4Addr::new(10, 0, 0, 2), 50_000);
    let gateway = Endpoint::host(Ipv4Addr::new(10, 0, 0, 1), SOUP_PORT);
    let mut tcp = TcpConnection::open(&mut capture.pcap, client, gateway, 1_000, 5_000);
    let stamp = 1_704_164_647_000_000_000u64;
    let order = Order::new(77, 7, 1001, 2).with_client_seq(5);
    let reserve = Reserve::new(78, 7, 1001, 1, 30_000).with_client_seq(6);
    let cancel = CancelOrder::new(77).with_client_seq(7);

    let login = login_request("alice", "s3cret", session, 3);
    send_stream(capture, &mut tcp, Side::Client, &[login], &[]);
    let accepted = login_accepted(session, 3);
    send_stream(capture, &mut tcp, Side::Server, &[accepted], &[]);
    // Acks 3 and 4 replayed, both in one segment.
    let replayed = [
        sequenced(Accepted::new(3, 103, stamp).as_bytes(), 3),
        sequenced(
            Rejected::new(4, 104, reject_reason::WRONG_LENGTH).as_bytes(),
            4,
        ),
    ];
    send_stream(capture, &mut tcp, Side::Server, &replayed, &[]);
    send_stream(
        capture,
        &mut tcp,
        Side::Client,
        &[unsequenced(order.as_bytes())],
        &[],
    );
    // The reserve split after 10 bytes; its tail shares a segment with a
    // client heartbeat.
    let client_heartbeat = soup_frame(soup::write_client_heartbeat, &[]);
    send_stream(
        capture,
        &mut tcp,
        Side::Client,
        &[unsequenced(reserve.as_bytes()), client_heartbeat],
        &[10],
    );
    // Acks 5 and 6 and a server heartbeat, cut inside ack 6.
    let acks = [
        sequenced(Accepted::new(5, 120, stamp + 1_000).as_bytes(), 5),
        sequenced(Accepted::new(6, 121, stamp + 2_000).as_bytes(), 6),
        soup_frame(soup::write_server_heartbeat, &[]),
    ];
    let cut = acks[0].bytes.len() + 7;
    send_stream(capture, &mut tcp, Side::Server, &acks, &[cut]);
    send_stream(
        capture,
        &mut tcp,
        Side::Server,
        &[debug("client 12 resent 2 duplicates")],
        &[],
    );
    send_stream(
        capture,
        &mut tcp,
        Side::Client,
        &[unsequenced(cancel.as_bytes())],
        &[],
    );
    let rejected = sequenced(
        Rejected::new(7, 122, reject_reason::NOT_PERMITTED).as_bytes(),
        7,
    );
    send_stream(capture, &mut tcp, Side::Server, &[rejected], &[]);
    let end = soup_frame(soup::write_end_of_session, &[]);
    send_stream(capture, &mut tcp, Side::Server, &[end], &[]);
    let logout = soup_frame(soup::write_logout, &[]);
    send_stream(capture, &mut tcp, Side::Client, &[logout], &[]);
    tcp.close(&mut capture.pcap, Side::Client);
}

/// A login with a wrong password, rejected as not authorized; the server
/// closes.
fn rejected_login(capture: &mut Capture) {
    let client = Endpoint::host(Ipv4Addr::new(10, 0, 0, 3), 50_001);
    let gateway = Endpoint::host(Ipv4Addr::new(10, 0, 0, 1), SOUP_PORT);
    let mut tcp = TcpConnection::open(&mut capture.pcap, client, gateway, 70_000, 90_000);
    let login = login_request("eve", "guess", Session::BLANK, 0);
    send_stream(capture, &mut tcp, Side::Client, &[login], &[]);
    let reject = soup_frame(
        |buf| soup::write_login_rejected(buf, login_reject::NOT_AUTHORIZED),
        &[(
            "soupbintcp.reject_code",
            quoted_char(login_reject::NOT_AUTHORIZED),
        )],
    );
    send_stream(capture, &mut tcp, Side::Server, &[reject], &[]);
    tcp.close(&mut capture.pcap, Side::Server);
}

/// A reader on the replay feed asks for the stream from sequence 1 and gets
/// each message as sequenced data: the first three in one segment, the rest
/// one segment each.
fn replay_feed(capture: &mut Capture, session: Session, messages: &[Vec<u8>]) {
    let client = Endpoint::host(Ipv4Addr::new(10, 0, 0, 4), 50_002);
    let feed = Endpoint::host(Ipv4Addr::new(10, 0, 0, 1), SOUP_PORT);
    let mut tcp = TcpConnection::open(&mut capture.pcap, client, feed, 3_000_000, 4_000_000);
    let login = login_request("feed01", "reader", session, 1);
    send_stream(capture, &mut tcp, Side::Client, &[login], &[]);
    let accepted = login_accepted(session, 1);
    send_stream(capture, &mut tcp, Side::Server, &[accepted], &[]);
    let replayed: Vec<SoupFrame> = messages
        .iter()
        .zip(1..)
        .map(|(message, seq)| sequenced(message, seq))
        .collect();
    let (first, rest) = replayed.split_at(3);
    send_stream(capture, &mut tcp, Side::Server, first, &[]);
    for frame in rest {
        send_stream(
            capture,
            &mut tcp,
            Side::Server,
            std::slice::from_ref(frame),
            &[],
        );
    }
    let client_heartbeat = soup_frame(soup::write_client_heartbeat, &[]);
    send_stream(capture, &mut tcp, Side::Client, &[client_heartbeat], &[]);
    let logout = soup_frame(soup::write_logout, &[]);
    send_stream(capture, &mut tcp, Side::Client, &[logout], &[]);
    tcp.close(&mut capture.pcap, Side::Server);
}

/// Runs tshark, or explains why it cannot: `Ok(None)` when it is not
/// installed (and not required).
fn tshark(args: &[&str], config_dir: &std::path::Path) -> Option<String> {
    let output = match Command::new("tshark")
        .args(args)
        // Keep the engineer's own Wireshark profile out of the test.
        .env("WIRESHARK_CONFIG_DIR", config_dir)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("TALLY_REQUIRE_TSHARK").as_deref() == Ok("1") {
                panic!(
                    "tshark is not installed but TALLY_REQUIRE_TSHARK=1 requires it \
                     (apt-get install tshark)"
                );
            }
            // Straight to the process's stderr: libtest captures `eprintln!`
            // of a passing test, and a skip must not look like a pass.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: tshark not installed; the MoldUDP64/SoupBinTCP interop \
                 test did not run (install tshark, or set TALLY_REQUIRE_TSHARK=1 to fail)"
            );
            return None;
        }
        Err(e) => panic!("cannot run tshark: {e}"),
    };
    assert!(
        output.status.success(),
        "tshark {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).expect("tshark prints UTF-8"))
}

/// Parses `-T fields` output into frame number to field to occurrences
/// (empty fields left out).
fn parse_fields(output: &str) -> BTreeMap<usize, BTreeMap<String, Vec<String>>> {
    let mut frames = BTreeMap::new();
    for line in output.lines() {
        let columns: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            columns.len(),
            FIELDS.len(),
            "tshark printed {} columns for {} fields: {line:?}",
            columns.len(),
            FIELDS.len()
        );
        let number: usize = columns[0].parse().expect("frame number");
        let mut fields = BTreeMap::new();
        for (name, column) in FIELDS.iter().zip(&columns).skip(1) {
            if !column.is_empty() {
                let values = column.split(AGGREGATOR).map(str::to_owned).collect();
                fields.insert((*name).to_owned(), values);
            }
        }
        assert!(
            frames.insert(number, fields).is_none(),
            "frame {number} printed twice"
        );
    }
    frames
}

/// The SoupBinTCP fields whose value tshark computes and shows only in the
/// display text (their `-T fields` value is a placeholder `X`): read from
/// `-T pdml` `showname` attributes, e.g. `Sequence number: 3 (Calculated)`.
const COMPUTED_FIELDS: &[&str] = &[
    "soupbintcp.req_seq_num",
    "soupbintcp.next_seq_num",
    "soupbintcp.seq_num",
];

/// Parses `-T pdml` output into frame number to computed field to the
/// numbers shown, in order.
fn parse_pdml_computed(output: &str) -> BTreeMap<usize, BTreeMap<String, Vec<String>>> {
    let attribute = |line: &str, name: &str| -> Option<String> {
        let start = line.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = line[start..].find('"')?;
        Some(line[start..start + len].to_owned())
    };
    let mut frames: BTreeMap<usize, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut frame = None;
    for line in output.lines() {
        let Some(name) = attribute(line, "name") else {
            continue;
        };
        if name == "frame.number" {
            let number = attribute(line, "show").expect("frame number shown");
            frame = Some(number.parse::<usize>().expect("frame number"));
        } else if COMPUTED_FIELDS.contains(&name.as_str()) {
            let showname = attribute(line, "showname").expect("computed field has a showname");
            // "Label: 42" or "Label: 42 (Calculated)".
            let value = showname
                .split_once(": ")
                .and_then(|(_, value)| value.split(' ').next())
                .unwrap_or_else(|| panic!("unexpected showname {showname:?}"));
            let frame = frame.expect("fields come after the frame number");
            frames
                .entry(frame)
                .or_default()
                .entry(name)
                .or_default()
                .push(value.to_owned());
        }
    }
    frames
}

/// Expert info severities (`_ws.expert.severity`): chat 0x200000, note
/// 0x400000, warning 0x600000, error 0x800000.
const SEVERITY_WARNING: u32 = 0x60_0000;
/// `ip/udp/tcp.checksum.status` of a checksum that verified.
const CHECKSUM_GOOD: &str = "1";

#[test]
fn tshark_decodes_what_tally_wire_writes() {
    let capture = build_capture();
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("tally-interop.pcap");
    let frame_count = capture.pcap.frames();
    std::fs::write(&path, capture.pcap.into_bytes()).expect("pcap written");
    let path_str = path.to_str().expect("UTF-8 temporary path");
    let config_dir = dir.path().join("wireshark-config");
    std::fs::create_dir(&config_dir).expect("config dir");

    let stream_decode = format!("udp.port=={STREAM_PORT},moldudp64");
    let retransmit_decode = format!("udp.port=={RETRANSMIT_PORT},moldudp64");
    let soup_decode = format!("tcp.port=={SOUP_PORT},soupbintcp");
    let common = [
        "-r",
        path_str,
        "-n",
        "-d",
        &stream_decode,
        "-d",
        &retransmit_decode,
        "-d",
        &soup_decode,
        // Wireshark's OUCH heuristic claims any sequenced payload whose type
        // and length match an OUCH message (our `J`, 24 bytes, looks like
        // OUCH's Rejected); tally's payloads are not OUCH.
        "--disable-protocol",
        "ouch",
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
        "-o",
        "tcp.check_checksum:TRUE",
    ];
    let aggregator = format!("aggregator={AGGREGATOR}");
    let mut fields_args = common.to_vec();
    fields_args.extend([
        "-T",
        "fields",
        "-E",
        "header=n",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=a",
        "-E",
        &aggregator,
        "-E",
        "quote=n",
    ]);
    for field in FIELDS {
        fields_args.extend(["-e", field]);
    }
    let Some(fields_output) = tshark(&fields_args, &config_dir) else {
        return;
    };
    let mut pdml_args = common.to_vec();
    pdml_args.extend(["-T", "pdml"]);
    let pdml_output = tshark(&pdml_args, &config_dir).expect("tshark ran a moment ago");

    let mut decoded = parse_fields(&fields_output);
    for (frame, computed) in parse_pdml_computed(&pdml_output) {
        let fields = decoded.get_mut(&frame).expect("PDML frame also in fields");
        for (name, values) in computed {
            assert_eq!(
                fields.get(&name).map(|v| v.iter().all(|x| x == "X")),
                Some(true),
                "frame {frame}: {name} in PDML but not as the `X` placeholder in fields"
            );
            fields.insert(name, values);
        }
    }

    for values in capture.expected.values().flat_map(BTreeMap::values) {
        for value in values {
            assert!(
                !value.contains([AGGREGATOR, '\t', '\n']),
                "expected value {value:?} would be ambiguous in tshark's field output"
            );
        }
    }
    let mut problems = Vec::new();
    let numbers: Vec<usize> = decoded.keys().copied().collect();
    if numbers != (1..=frame_count).collect::<Vec<_>>() {
        problems.push(format!(
            "tshark read frames {numbers:?}, the file has 1..={frame_count}"
        ));
    }
    for (&frame, fields) in &decoded {
        let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
        if field("ip.checksum.status") != [CHECKSUM_GOOD] {
            problems.push(format!("frame {frame}: IPv4 header checksum not good"));
        }
        let transport = [field("udp.checksum.status"), field("tcp.checksum.status")].concat();
        if transport != [CHECKSUM_GOOD] {
            problems.push(format!(
                "frame {frame}: UDP/TCP checksum status {transport:?}, expected one good"
            ));
        }
        if fields.contains_key("_ws.malformed") {
            problems.push(format!("frame {frame}: malformed"));
        }
        let messages = field("_ws.expert.message");
        for (i, severity) in field("_ws.expert.severity").iter().enumerate() {
            let severity: u32 = severity.parse().expect("numeric severity");
            if severity >= SEVERITY_WARNING {
                problems.push(format!(
                    "frame {frame}: expert info of severity {severity:#x}: {:?}",
                    messages.get(i)
                ));
            }
        }
        let decoded_protocol_fields: BTreeMap<&str, &Vec<String>> = fields
            .iter()
            .filter(|(name, _)| name.starts_with("moldudp64.") || name.starts_with("soupbintcp."))
            .map(|(name, values)| (name.as_str(), values))
            .collect();
        let empty = FrameExpectation::new();
        let expected = capture.expected.get(&frame).unwrap_or(&empty);
        let expected: BTreeMap<&str, &Vec<String>> = expected
            .iter()
            .map(|(name, values)| (*name, values))
            .collect();
        if decoded_protocol_fields != expected {
            problems.push(format!(
                "frame {frame}:\n  tshark decoded {decoded_protocol_fields:?}\n  tally wrote   {expected:?}"
            ));
        }
    }
    let expected_frames: Vec<&usize> = capture.expected.keys().collect();
    assert!(
        expected_frames.len() > 40,
        "the capture has {} frames with MoldUDP64 or SoupBinTCP content",
        expected_frames.len()
    );
    if !problems.is_empty() {
        let kept = dir.keep();
        panic!(
            "tshark disagrees with tally-wire ({} problems; pcap kept in {}):\n{}",
            problems.len(),
            kept.display(),
            problems.join("\n")
        );
    }
}
