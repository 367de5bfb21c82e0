use super::*;
use std::net::Ipv4Addr;

const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$hmIkIn7P32nSp0oF7ibLSQqvtQ0iT4AdYnCsgEG1+Yo";

fn minimal() -> String {
    format!(
        r#"
[stream]
session = "DAY1"
group = "239.255.0.1"
port = 31001
interface = "127.0.0.1"

[gateway]
listen = "127.0.0.1:31000"

[[clients]]
username = "pos1"
password_hash = "{HASH}"
client_id = 1
role = "pos"

[retransmit]
listen = "127.0.0.1:31002"

[replay]
listen = "127.0.0.1:31003"

[journal]
dir = "journal"
"#
    )
}

#[test]
fn minimal_file_parses_with_defaults() {
    let config = ApplianceConfig::parse(&minimal()).unwrap();
    assert_eq!(config.stream.payload_bytes_max, 1400);
    assert_eq!(config.fsync_policy().unwrap(), FsyncPolicy::None);
    assert_eq!(
        config.placement("sequencer").unwrap().idle,
        IdleStrategy::DEFAULT_BACK_OFF
    );
    assert_eq!(config.session().unwrap().as_str(), "DAY1");
}

fn error_for(from: &str, to: &str) -> String {
    let text = minimal().replacen(from, to, 1);
    assert_ne!(text, minimal(), "replacement {from:?} did not apply");
    ApplianceConfig::parse(&text).unwrap_err()
}

/// The documented example parses, with the hostile-client defaults it
/// shows.
#[test]
fn the_example_file_parses() {
    let text = include_str!("../../tally.toml");
    let config = ApplianceConfig::parse(text).unwrap();
    assert_eq!(config.retransmit.allow, None);
    let allow = config.retransmit_allow().unwrap();
    assert!(allow.allows(Ipv4Addr::new(127, 9, 9, 9)));
    assert!(!allow.allows(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(config.replay.sessions_per_client_max, 8);
    assert_eq!(config.http.roles().unwrap().len(), 3);
    assert!(!config.http.metrics_public);
    // Absent sections and keys: the same safe defaults.
    let minimal = ApplianceConfig::parse(&minimal()).unwrap();
    assert_eq!(
        minimal.replay.login_timeout_ms,
        config.replay.login_timeout_ms
    );
    assert_eq!(
        minimal.retransmit.reply_burst_bytes_per_source,
        config.retransmit.reply_burst_bytes_per_source
    );
    assert_eq!(minimal.http.read_roles, config.http.read_roles);
}

#[test]
fn hostile_client_keys_are_checked() {
    let retransmit = "listen = \"127.0.0.1:31002\"";
    assert!(error_for(
        retransmit,
        &format!("{retransmit}\nallow = [\"10.0.0.0/33\"]")
    )
    .contains("retransmit.allow[0]"));
    assert!(
        error_for(retransmit, &format!("{retransmit}\nallow = []")).contains("retransmit.allow")
    );
    assert!(error_for(
        retransmit,
        &format!("{retransmit}\nreply_burst_bytes_per_source = 10")
    )
    .contains("retransmit.reply_burst_bytes_per_source"));
    let replay = "listen = \"127.0.0.1:31003\"";
    assert!(
        error_for(replay, &format!("{replay}\nsessions_per_client_max = 0"))
            .contains("replay.sessions_per_client_max")
    );
    assert!(
        error_for(replay, &format!("{replay}\nheartbeat_timeout_min_ms = 500"))
            .contains("replay.heartbeat_timeout_min_ms")
    );
    assert!(
        error_for("[journal]", "[http]\nread_roles = [\"king\"]\n[journal]")
            .contains("http.read_roles[0]")
    );
}

#[test]
fn errors_name_the_key() {
    assert!(error_for("group = \"239.255.0.1\"", "group = \"10.0.0.1\"").contains("stream.group"));
    assert!(
        error_for("session = \"DAY1\"", "session = \"MUCH-TOO-LONG\"").contains("stream.session")
    );
    assert!(error_for("[journal]", "[journal]\nfsync = \"sometimes\"").contains("journal.fsync"));
    assert!(error_for("role = \"pos\"", "role = \"king\"").contains("clients[0].role"));
    assert!(error_for("client_id = 1", "client_id = 0").contains("clients[0].client_id"));
    assert!(error_for("[gateway]", "[gateway]\nbogus = 1").contains("bogus"));
    assert!(error_for(
        "listen = \"127.0.0.1:31003\"",
        "listen = \"127.0.0.1:31002\""
    )
    .contains("replay.listen"));
    assert!(
        error_for("[journal]", "[loops.gateway]\nidle = \"nap\"\n[journal]")
            .contains("loops.gateway.idle")
    );
    assert!(
        error_for("[journal]", "[loops.sequencer]\ncore = 4096\n[journal]")
            .contains("loops.sequencer.core")
    );
    assert!(error_for("password_hash = ", "password_hash = \"plain\" #")
        .contains("clients[0].password_hash"));
}
