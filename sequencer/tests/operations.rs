//! The binary's command line and life cycle: hash-password, configuration
//! errors that name the key, end of session on SIGUSR1, a plain stop that
//! is not an end of session, the rate limit answered with `j R`, and the
//! session limit.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;
use tally_wire::{reject_reason, Ack, Order};

const LONG: Duration = Duration::from_secs(20);

fn sequencer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tally-sequencer"))
}

#[test]
fn hash_password_prints_a_hash_that_verifies_and_refuses_what_a_login_cannot_carry() {
    let mut child = sequencer()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret!\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap();
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(tally_config::gateway::verify_password(b"s3cret!", hash));
    assert!(!tally_config::gateway::verify_password(b"s3cret", hash));

    let mut child = sequencer()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"much-too-long-password\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 to 10"));
}

#[test]
fn a_bad_configuration_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::with(40, dir.path(), |text| {
        text.replace("group = \"239.255.101.40\"", "group = \"10.1.2.3\"")
    });
    let output = sequencer()
        .arg("--config")
        .arg(&setup.config_path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stream.group"), "{stderr}");

    let setup = TestSetup::with(40, dir.path(), |text| {
        text.replace("[replay]", "[replay]\nspeed = 3")
    });
    let output = sequencer()
        .args(["check-config", "--config"])
        .arg(&setup.config_path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("speed"));

    let setup = TestSetup::new(40, dir.path());
    let output = sequencer()
        .args(["check-config", "--config"])
        .arg(&setup.config_path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = sequencer()
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.toml"));
}

#[test]
fn sigterm_keeps_the_session_open_and_sigusr1_rolls_it_over() {
    let dir = tempfile::tempdir().unwrap();
    // No warehouse answers S(E) here: the session ends after the grace.
    let setup = TestSetup::with(41, dir.path(), |text| {
        text.replacen(
            "heartbeat_interval_ms = 200",
            "heartbeat_interval_ms = 200\nclose_grace_ms = 300",
            1,
        )
    });
    let mut stream = StreamReader::join(&setup);

    let appliance = Appliance::start(&setup);
    let mut pos = SoupClient::connect(setup.gateway);
    pos.login_ok("pos1", POS_PASSWORD);
    pos.send(Order::new(1, 1, 1, 1).with_client_seq(1).as_bytes());
    assert!(matches!(pos.recv(LONG), Some(Reply::Sequenced(_))));
    let status = appliance.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(stream.read_until(LONG, |s| s.next_seq > 2));
    assert!(!stream.ended, "a plain stop is not an end of session");

    // Restart continues the session; SIGUSR1 rolls it over: S(E), then
    // (no authority to answer with S(F)) S(C) and the end-of-session packet
    // once close_grace_ms is over, and the next session starts in the same
    // process.
    let appliance = Appliance::start(&setup);
    appliance.signal(libc::SIGUSR1);
    assert!(
        stream.read_until(LONG, |s| s.ended),
        "end-of-session packet sent"
    );
    let codes: Vec<(u64, u8, u8)> = stream
        .messages
        .iter()
        .skip(2)
        .map(|(seq, message)| (*seq, message[0], message[15]))
        .collect();
    assert_eq!(
        codes,
        vec![(3, b'S', b'E'), (4, b'S', b'C')],
        "S(E), then S(C)"
    );
    let next = setup.dir.join("journal/T42.journal");
    let deadline = std::time::Instant::now() + LONG;
    while !next.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the next session T42 started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = appliance.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}");

    // Started again with the same configuration (naming T41, which has
    // ended), the appliance continues the newest session of the chain.
    let appliance = Appliance::start(&setup);
    let mut pos = SoupClient::connect(setup.gateway);
    pos.login_ok("pos1", POS_PASSWORD);
    drop(appliance);
    let ended = setup.dir.join("journal/T41.journal");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally-journal"))
        .arg("verify")
        .arg(&ended)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the ended session's journal is kept and verifies"
    );
}

#[test]
fn over_the_rate_limit_commands_are_answered_j_r_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::with(42, dir.path(), |text| {
        text.replace("rate_limit_per_sec = 100000000", "rate_limit_per_sec = 10")
            .replace("rate_burst = 10000000", "rate_burst = 5")
    });
    let _appliance = Appliance::start(&setup);
    let mut pos = SoupClient::connect(setup.gateway);
    pos.login_ok("pos1", POS_PASSWORD);
    for client_seq in 1..=50u32 {
        pos.queue(
            Order::new(u64::from(client_seq), 1, 1, 1)
                .with_client_seq(client_seq)
                .as_bytes(),
        );
    }
    pos.flush();
    let mut accepted = 0;
    let mut limited = 0;
    for client_seq in 1..=50u32 {
        match pos.recv(LONG) {
            Some(Reply::Sequenced(payload)) => {
                let ack = Ack::parse(&payload).unwrap();
                assert_eq!(
                    ack.client_seq(),
                    client_seq,
                    "one answer per command, in order"
                );
                match ack {
                    Ack::Accepted(_) => accepted += 1,
                    Ack::Rejected(r) => {
                        assert_eq!(r.reason, reject_reason::RATE_LIMITED);
                        limited += 1;
                    }
                }
            }
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    assert!((5..50).contains(&accepted), "accepted {accepted}");
    assert_eq!(accepted + limited, 50);
}

#[test]
fn connections_past_max_sessions_are_refused_and_others_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::with(43, dir.path(), |text| {
        text.replace(
            "peer_timeout_ms = 15000",
            "peer_timeout_ms = 15000\nmax_sessions = 2",
        )
    });
    let _appliance = Appliance::start(&setup);
    let mut first = SoupClient::connect(setup.gateway);
    first.login_ok("pos1", POS_PASSWORD);
    let mut second = SoupClient::connect(setup.gateway);
    second.login_ok("ops1", OPS_PASSWORD);
    let mut third = SoupClient::connect(setup.gateway);
    third.login("wh", WH_PASSWORD, "", 0);
    assert!(third.closed_within(LONG), "a third session is refused");
    first.send(Order::new(1, 1, 1, 1).with_client_seq(1).as_bytes());
    assert!(matches!(first.recv(LONG), Some(Reply::Sequenced(_))));
}
