use super::*;

const ALL_TYPES: &[u8] = b"OMXVCKTQPNRLIDHEJSj";

fn permitted(role: Role) -> Vec<u8> {
    (0..=255u8).filter(|&t| role.permits(t)).collect()
}

#[test]
fn roles_permit_exactly_the_design_table() {
    let mut pos = b"OMXVCK".to_vec();
    pos.sort_unstable();
    assert_eq!(permitted(Role::Pos), pos);
    let mut ops = b"TQPN".to_vec();
    ops.sort_unstable();
    assert_eq!(permitted(Role::Ops), ops);
    let mut authority = b"OMXVCKTQPNRLIDHEJS".to_vec();
    authority.sort_unstable();
    assert_eq!(permitted(Role::Authority), authority);
    assert!(permitted(Role::Reader).is_empty());
    for role in Role::ALL {
        assert!(!role.permits(b'j'), "{role} must not send j");
    }
    assert!(ALL_TYPES
        .iter()
        .all(|&t| Role::Authority.permits(t) || t == b'j'));
    assert!(!Role::Reader.may_use_gateway());
    assert!(Role::Pos.may_use_gateway());
}

#[test]
fn role_names_round_trip_and_bad_names_list_the_choices() {
    for (role, name) in Role::ALL.into_iter().zip(Role::NAMES) {
        assert_eq!(name.parse::<Role>(), Ok(role));
        assert_eq!(role.to_string(), name);
    }
    let error = "Pos".parse::<Role>().unwrap_err().to_string();
    assert!(error.contains("pos, ops, authority, reader"), "{error}");
}

// One hash for every test in this module: argon2 takes tens of ms.
fn hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("secret"))
}

fn valid() -> GatewayConfig {
    GatewayConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Session::from_str("DAY1").unwrap(),
        vec![
            ClientEntry {
                username: "till1".into(),
                password_hash: hash().into(),
                client_id: 1,
                role: Role::Pos,
            },
            ClientEntry {
                username: "wh".into(),
                password_hash: hash().into(),
                client_id: 7,
                role: Role::Authority,
            },
        ],
    )
}

#[test]
fn hash_verifies_the_right_password_only() {
    assert!(hash().starts_with("$argon2id$"));
    assert!(verify_password(b"secret", hash()));
    assert!(!verify_password(b"Secret", hash()));
    assert!(!verify_password(b"secret", "not a hash"));
    // A fresh salt every time.
    assert_ne!(hash_password("secret"), hash());
}

#[test]
fn password_fit_follows_the_login_field() {
    assert!(password_fits_login("secret"));
    assert!(password_fits_login("0123456789"));
    assert!(!password_fits_login(""));
    assert!(!password_fits_login("01234567890"));
    assert!(!password_fits_login("trailing "));
    assert!(!password_fits_login("tab\there"));
}

#[test]
fn the_defaults_validate() {
    valid().validate().unwrap();
}

fn bad_field(change: impl FnOnce(&mut GatewayConfig)) -> String {
    let mut config = valid();
    change(&mut config);
    let error = config.validate().unwrap_err();
    assert!(error.to_string().contains(&error.field));
    error.field
}

#[test]
fn every_bad_field_is_named() {
    assert_eq!(bad_field(|c| c.session = Session::BLANK), "session");
    assert_eq!(bad_field(|c| c.clients.clear()), "clients");
    assert_eq!(
        bad_field(|c| c.clients[1].username = "toolong".into()),
        "clients[1].username"
    );
    assert_eq!(
        bad_field(|c| c.clients[0].username = "a b".into()),
        "clients[0].username"
    );
    assert_eq!(
        bad_field(|c| c.clients[1].username = "till1".into()),
        "clients[1].username"
    );
    assert_eq!(
        bad_field(|c| c.clients[1].password_hash = "secret".into()),
        "clients[1].password_hash"
    );
    assert_eq!(
        bad_field(|c| c.clients[0].client_id = 0),
        "clients[0].client_id"
    );
    assert_eq!(
        bad_field(|c| c.clients[1].client_id = 1),
        "clients[1].client_id"
    );
    assert_eq!(bad_field(|c| c.max_sessions = 0), "max_sessions");
    assert_eq!(bad_field(|c| c.max_frame_bytes = 51), "max_frame_bytes");
    assert_eq!(
        bad_field(|c| c.max_login_connections = 0),
        "max_login_connections"
    );
    assert_eq!(
        bad_field(|c| c.max_login_connections_per_source = c.max_login_connections + 1),
        "max_login_connections_per_source"
    );
    assert_eq!(bad_field(|c| c.login_timeout_ns = 0), "login_timeout_ns");
    assert_eq!(
        bad_field(|c| c.source_connects_per_sec = 0),
        "source_connects_per_sec"
    );
    assert_eq!(
        bad_field(|c| c.source_connect_burst = 0),
        "source_connect_burst"
    );
    assert_eq!(
        bad_field(|c| c.login_failures_before_backoff = 1001),
        "login_failures_before_backoff"
    );
    assert_eq!(
        bad_field(|c| c.login_backoff_base_ns = 0),
        "login_backoff_base_ns"
    );
    assert_eq!(
        bad_field(|c| c.login_backoff_max_ns = c.login_backoff_base_ns - 1),
        "login_backoff_max_ns"
    );
    assert_eq!(
        bad_field(|c| c.username_failures_per_min = 0),
        "username_failures_per_min"
    );
    assert_eq!(
        bad_field(|c| c.username_failure_burst = 0),
        "username_failure_burst"
    );
    assert_eq!(
        bad_field(|c| c.auth_in_flight_per_source = 0),
        "auth_in_flight_per_source"
    );
    assert_eq!(
        bad_field(|c| c.source_table_entries = 0),
        "source_table_entries"
    );
    assert_eq!(
        bad_field(|c| c.heartbeat_timeout_min_ns = c.heartbeat_interval_ns),
        "heartbeat_timeout_min_ns"
    );
    assert_eq!(
        bad_field(|c| c.heartbeat_timeout_max_ns = c.heartbeat_timeout_min_ns - 1),
        "heartbeat_timeout_max_ns"
    );
    assert_eq!(bad_field(|c| c.max_frame_bytes = 65_536), "max_frame_bytes");
    assert_eq!(
        bad_field(|c| c.heartbeat_interval_ns = 0),
        "heartbeat_interval_ns"
    );
    assert_eq!(
        bad_field(|c| c.peer_timeout_ns = c.heartbeat_interval_ns),
        "peer_timeout_ns"
    );
    assert_eq!(
        bad_field(|c| c.rate_limit_per_sec = 0),
        "rate_limit_per_sec"
    );
    assert_eq!(bad_field(|c| c.rate_burst = 0), "rate_burst");
    assert_eq!(
        bad_field(|c| c.ack_history_per_client = 0),
        "ack_history_per_client"
    );
    assert_eq!(bad_field(|c| c.recv_buffer_bytes = 10), "recv_buffer_bytes");
    assert_eq!(
        bad_field(|c| c.send_buffer_bytes = c.replay_bytes_max() - 1),
        "send_buffer_bytes"
    );
    assert_eq!(bad_field(|c| c.auth_queue_depth = 0), "auth_queue_depth");
}
