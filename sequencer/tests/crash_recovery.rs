//! Crash and restart of the real binary: kill -9 in the middle of a
//! million-message run, restart from the same journal, and a torn final
//! record cut on restart.

mod support;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::Duration;

use support::*;
use tally_wire::soup;
use tally_wire::{Ack, Order};

const LONG: Duration = Duration::from_secs(60);

fn journal_messages(setup: &TestSetup) -> Vec<(u64, Vec<u8>)> {
    support::journal_messages(&setup.journal_file())
}

/// Reads the replay feed from `from` until `count` messages arrived.
fn replay(setup: &TestSetup, from: u64, count: usize) -> Vec<(u64, Vec<u8>)> {
    let mut reader = SoupClient::connect(setup.replay);
    reader.login("read1", READER_PASSWORD, "", from);
    match reader.recv(LONG) {
        Some(Reply::LoginAccepted { next_seq, .. }) => assert_eq!(next_seq, from),
        other => panic!("expected login accepted on the replay feed, got {other:?}"),
    }
    let mut out = Vec::with_capacity(count);
    let mut seq = from;
    while out.len() < count {
        match reader.recv(LONG) {
            Some(Reply::Sequenced(message)) => {
                out.push((seq, message));
                seq += 1;
            }
            other => panic!("replay stopped after {} messages: {other:?}", out.len()),
        }
    }
    out
}

#[test]
fn kill_9_mid_run_then_restart_continues_without_reuse_or_gap() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(20, dir.path());

    let appliance = Appliance::start(&setup);

    // A million orders, pipelined; kill -9 once a good part is acked.
    const TOTAL: u32 = 1_000_000;
    let mut pos = SoupClient::connect(setup.gateway);
    pos.login_ok("pos1", POS_PASSWORD);
    let sender = {
        let mut stream = pos.try_clone_stream();
        std::thread::spawn(move || {
            let mut buf = Vec::with_capacity(1 << 16);
            let mut frame = [0u8; 64];
            for client_seq in 1..=TOTAL {
                let order = Order::new(u64::from(client_seq), 1, client_seq % 1000, 1)
                    .with_client_seq(client_seq);
                let n = soup::write_unsequenced(&mut frame, order.as_bytes()).unwrap();
                buf.extend_from_slice(&frame[..n]);
                if buf.len() > 60_000 {
                    if std::io::Write::write_all(&mut stream, &buf).is_err() {
                        return;
                    }
                    buf.clear();
                }
            }
            let _ = std::io::Write::write_all(&mut stream, &buf);
        })
    };
    let mut acked = 0u32;
    while acked < 300_000 {
        match pos.recv(LONG) {
            Some(Reply::Sequenced(payload)) => {
                acked = Ack::parse(&payload).unwrap().client_seq();
            }
            other => panic!("unexpected {other:?} after {acked} acks"),
        }
    }
    appliance.kill9();
    let _ = sender.join();

    let before = journal_messages(&setup);
    assert!(
        before.len() as u32 > acked,
        "every acked command is journaled"
    );
    for (index, (seq, _)) in before.iter().enumerate() {
        assert_eq!(*seq, index as u64 + 1, "journal has no gap");
    }
    let journaled_next = before.len() as u64 + 1;

    // Restart: the stream continues at the next number.
    let appliance = Appliance::start(&setup);
    let mut stream = StreamReader::join_live(&setup);
    let mut pos = SoupClient::connect(setup.gateway);
    let next = pos.login_ok("pos1", POS_PASSWORD);
    let last_journaled = before
        .iter()
        .filter(|(_, m)| u16::from_be_bytes([m[1], m[2]]) == 1)
        .map(|(_, m)| u64::from(u32::from_be_bytes([m[3], m[4], m[5], m[6]])))
        .max()
        .unwrap();
    assert_eq!(
        next,
        last_journaled + 1,
        "the client resumes after its last journaled command"
    );
    assert!(
        before.iter().all(|(_, m)| m[0] != b'j'),
        "no command was rejected"
    );
    pos.send(
        Order::new(u64::from(TOTAL) + 1, 1, 1, 1)
            .with_client_seq(next as u32)
            .as_bytes(),
    );
    let stream_seq = match pos.recv(LONG) {
        Some(Reply::Sequenced(payload)) => Ack::parse(&payload).unwrap().stream_seq(),
        other => panic!("expected an ack, got {other:?}"),
    };
    assert_eq!(stream_seq, journaled_next, "no number reused, none skipped");

    // Every journaled message is retransmittable and unchanged.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let by_seq: BTreeMap<u64, &Vec<u8>> = before.iter().map(|(s, m)| (*s, m)).collect();
    let mut seq = 1u64;
    while seq < journaled_next {
        let reply =
            re_request(&setup, &socket, seq, 1000, Duration::from_secs(5)).unwrap_or_else(|| {
                panic!("no reply to a re-request for {seq} (journal next {journaled_next})")
            });
        assert!(!reply.is_empty());
        for (s, message) in reply.iter().filter(|(s, _)| *s < journaled_next) {
            assert_eq!(*s, seq);
            assert_eq!(
                by_seq[s], message,
                "retransmitted bytes equal the journal at {s}"
            );
            seq += 1;
        }
    }
    // The replay feed serves them too, then the new one.
    let replayed = replay(&setup, 1, journaled_next as usize);
    for ((seq, message), (journal_seq, journal_message)) in replayed.iter().zip(&before) {
        assert_eq!(seq, journal_seq);
        assert_eq!(message, journal_message);
    }
    assert_eq!(replayed.last().unwrap().0, journaled_next);
    assert!(
        stream.read_until(LONG, |s| s.next_seq > stream_seq),
        "the live stream carries the new order"
    );
    assert_eq!(stream.messages.last().unwrap().0, stream_seq);
    drop(appliance);
}

#[test]
fn a_torn_final_record_is_cut_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(21, dir.path());
    let appliance = Appliance::start(&setup);
    let mut pos = SoupClient::connect(setup.gateway);
    pos.login_ok("pos1", POS_PASSWORD);
    for client_seq in 1..=3u32 {
        pos.send(
            Order::new(u64::from(client_seq), 1, 7, 1)
                .with_client_seq(client_seq)
                .as_bytes(),
        );
        assert!(matches!(pos.recv(LONG), Some(Reply::Sequenced(_))));
    }
    let status = appliance.stop_with(libc::SIGTERM);
    assert!(status.success(), "clean stop exits 0: {status}");

    // Tear the last record: cut the file in the middle of it.
    let path = setup.journal_file();
    let len = std::fs::metadata(&path).unwrap().len();
    let before = journal_messages(&setup);
    assert_eq!(before.len(), 4, "S(O) and three orders");
    // A crash before the sync that would have covered the last record: the
    // checkpoint still describes the journal without it (a record the
    // checkpoint covers is never cut: that start is refused).
    let last = *journal_records(&path).last().unwrap();
    write_checkpoint(&setup, last.first_seq, last.offset);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 10).unwrap();
    drop(file);

    let _appliance = Appliance::start(&setup);
    let after = journal_messages(&setup);
    assert_eq!(after.len(), 3, "the torn record is gone");
    assert_eq!(after[..], before[..3]);
    let mut pos = SoupClient::connect(setup.gateway);
    assert_eq!(
        pos.login_ok("pos1", POS_PASSWORD),
        3,
        "the cut order was never sequenced"
    );
    let counters = tally_runtime::counters::CounterReader::open(&setup.counters_file()).unwrap();
    let cut = counters
        .read()
        .find(|(name, _)| *name == "journal.torn_bytes_cut")
        .unwrap()
        .1;
    assert!(cut > 0);
}
