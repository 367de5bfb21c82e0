//! Receivers recovering what they missed, against the real binary: gap fill
//! through MoldUDP64 re-requests with a seeded in-process drop filter, a late
//! joiner through the replay feed that then follows live, and a re-request
//! flood that is rate-limited.

mod support;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use support::*;
use tally_runtime::net::MulticastReceiver;
use tally_wire::mold::{MoldPacket, PacketKind, ReRequest};
use tally_wire::{Ack, Message, Order};

const LONG: Duration = Duration::from_secs(30);

/// A deterministic drop filter: xorshift64 seeded per test.
struct DropFilter {
    state: u64,
    drop_per_mille: u64,
    dropped: u64,
}

impl DropFilter {
    fn new(seed: u64, drop_per_mille: u64) -> Self {
        DropFilter {
            state: seed.max(1),
            drop_per_mille,
            dropped: 0,
        }
    }
    fn drop_next(&mut self) -> bool {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let drop = self.state % 1000 < self.drop_per_mille;
        self.dropped += u64::from(drop);
        drop
    }
}

fn send_orders(setup: &TestSetup, count: u32) -> u64 {
    let mut pos = SoupClient::connect(setup.gateway);
    let first = pos.login_ok("pos1", POS_PASSWORD) as u32;
    for client_seq in first..first + count {
        pos.queue(
            Order::new(u64::from(client_seq), 1, 9, 1)
                .with_client_seq(client_seq)
                .as_bytes(),
        );
    }
    pos.flush();
    let mut last_stream_seq = 0;
    let mut acked = 0;
    while acked < count {
        match pos.recv(LONG) {
            Some(Reply::Sequenced(payload)) => {
                last_stream_seq = Ack::parse(&payload).unwrap().stream_seq();
                acked += 1;
            }
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    last_stream_seq
}

#[test]
fn a_lossy_receiver_recovers_every_dropped_packet_through_re_requests() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(30, dir.path());
    let mut receiver = MulticastReceiver::new(&setup.multicast, 256, 2048).unwrap();
    let _appliance = Appliance::start(&setup);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();

    let last = send_orders(&setup, 20_000);

    // Receive with 10 % of packets dropped in-process (seeded), re-request
    // every gap, deliver in order.
    let mut filter = DropFilter::new(0x5eed_0030, 100);
    let mut buffered: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut delivered: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut next = 1u64;
    let mut highest_seen = 0u64;
    let mut last_request = Instant::now() - Duration::from_secs(1);
    let mut re_requests = 0u64;
    let deadline = Instant::now() + LONG;
    let mut reply = vec![0u8; 65_536];
    while next <= last {
        assert!(Instant::now() < deadline, "stuck at {next} of {last}");
        let mut datagrams = Vec::new();
        receiver
            .wait(Duration::from_millis(5), |d| datagrams.push(d.to_vec()))
            .unwrap();
        while let Ok((n, _)) = socket.recv_from(&mut reply) {
            datagrams.push(reply[..n].to_vec());
        }
        for datagram in datagrams {
            let packet = MoldPacket::parse(&datagram).unwrap();
            if packet.kind() == PacketKind::Heartbeat {
                highest_seen = highest_seen.max(packet.sequence().saturating_sub(1));
                continue;
            }
            if filter.drop_next() {
                continue;
            }
            for (seq, message) in packet.messages() {
                highest_seen = highest_seen.max(seq);
                if seq >= next {
                    buffered.entry(seq).or_insert_with(|| message.to_vec());
                }
            }
        }
        while let Some(message) = buffered.remove(&next) {
            delivered.push((next, message));
            next += 1;
        }
        if next <= highest_seen && last_request.elapsed() > Duration::from_millis(20) {
            let gap_end = buffered.keys().next().copied().unwrap_or(highest_seen + 1);
            let count = (gap_end - next).min(1000) as u16;
            let request = ReRequest::new(setup.session(), next, count);
            socket
                .send_to(request.as_bytes(), setup.retransmit)
                .unwrap();
            re_requests += 1;
            last_request = Instant::now();
        }
    }
    assert!(
        filter.dropped > 10,
        "the filter dropped packets ({})",
        filter.dropped
    );
    assert!(re_requests > 0);
    assert_eq!(delivered.len() as u64, last);
    let orders: Vec<u32> = delivered
        .iter()
        .filter_map(|(_, m)| match Message::parse(m).unwrap() {
            Message::Order(o) => Some(o.header.client_seq.get()),
            _ => None,
        })
        .collect();
    assert_eq!(
        orders,
        (1..=20_000).collect::<Vec<_>>(),
        "every order once, in order"
    );
}

#[test]
fn a_late_joiner_replays_the_session_then_follows_live() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(31, dir.path());
    let _appliance = Appliance::start(&setup);
    let first_batch_end = send_orders(&setup, 5_000);

    let mut reader = SoupClient::connect(setup.replay);
    reader.login("read1", READER_PASSWORD, "", 1);
    assert!(matches!(
        reader.recv(LONG),
        Some(Reply::LoginAccepted { next_seq: 1, .. })
    ));
    let mut seq = 0u64;
    let mut orders = Vec::new();
    let take = |reader: &mut SoupClient, until: u64, seq: &mut u64, orders: &mut Vec<u32>| {
        while *seq < until {
            match reader.recv(LONG) {
                Some(Reply::Sequenced(message)) => {
                    *seq += 1;
                    if let Message::Order(o) = Message::parse(&message).unwrap() {
                        orders.push(o.header.client_seq.get());
                    }
                }
                other => panic!("replay stopped at {seq}: {other:?}"),
            }
        }
    };
    take(&mut reader, first_batch_end, &mut seq, &mut orders);
    // Now live: more orders arrive over the same connection, no gap, no dup.
    let second_batch_end = send_orders(&setup, 2_000);
    take(&mut reader, second_batch_end, &mut seq, &mut orders);
    assert_eq!(orders, (1..=7_000).collect::<Vec<_>>());
}

#[test]
fn a_re_request_flood_from_one_address_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::with(32, dir.path(), |text| {
        text.replace(
            "requests_per_sec_per_requester = 100000",
            "requests_per_sec_per_requester = 50",
        )
        .replace("request_burst = 100000", "request_burst = 20")
    });
    let _appliance = Appliance::start(&setup);
    send_orders(&setup, 100);

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let request = ReRequest::new(setup.session(), 1, 10);
    let started = Instant::now();
    for _ in 0..1000 {
        socket
            .send_to(request.as_bytes(), setup.retransmit)
            .unwrap();
    }
    let mut replies = 0u64;
    let mut buf = [0u8; 2048];
    while socket.recv(&mut buf).is_ok() {
        replies += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = 20.0 + 50.0 * elapsed + 1.0;
    assert!(replies >= 1, "some requests are served");
    assert!(
        (replies as f64) <= allowed,
        "{replies} replies in {elapsed:.2}s; at most {allowed:.0} allowed"
    );
    let counters = tally_runtime::counters::CounterReader::open(&setup.counters_file()).unwrap();
    let limited: u64 = counters
        .read()
        .filter(|(name, _)| name.contains("rate_limited") && name.starts_with("retransmit"))
        .map(|(_, value)| value)
        .sum();
    assert!(
        limited >= 1000 - replies - 5,
        "ignored requests are counted ({limited})"
    );
}
