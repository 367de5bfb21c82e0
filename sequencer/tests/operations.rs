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
fn sigterm_keeps_the_session_open_and_sigusr1_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let setup = TestSetup::new(41, dir.path());
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

    // Restart continues the session; SIGUSR1 ends it.
    let appliance = Appliance::start(&setup);
    let status = appliance.stop_with(libc::SIGUSR1);
    assert!(status.success(), "{status}");
    assert!(
        stream.read_until(LONG, |s| s.ended),
        "end-of-session packet sent"
    );
    let (seq, last) = stream.messages.last().unwrap();
    assert_eq!(*seq, 3);
    assert_eq!(&last[..1], b"S");
    assert_eq!(last[15], b'C', "S(C) end of session");

    // An ended session is not restarted: a new session name is needed.
    let output = sequencer()
        .arg("--config")
        .arg(&setup.config_path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("has ended"));
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
