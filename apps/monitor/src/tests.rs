//! Unit tests of the read model, the tables and the HTTP helpers.

use crate::answer::*;
use crate::auth::*;
use crate::config::*;
use crate::indexes::*;
use crate::metrics::*;
use crate::model::*;
use crate::tables::*;
use serde_json::Value;
use tally_client::consumer::monotonic_ns;
use tally_client::replica::ReplicaLimits;
use tally_wire::Message;

use tally_wire::{
    delta_reason, hold_outcome, reject_reason, CancelOrder, CommandRejected, ConfirmHold,
    HoldEnded, HoldPlaced, InventoryLevel, LocationDirectory, ModifyOrder, OnHandDelta, Order,
    ReleaseHold, Reserve, SkuDirectory, SystemEvent, WireMessage,
};

fn model() -> ReadModel {
    let limits = IndexLimits {
        history_depth: 3,
        history_cells_max: 3,
        orders_max: 4,
        holds_max: 4,
        timeline_events_max: 8,
        events_max: 64,
    };
    ReadModel::new(ReplicaLimits::small(), limits, 1_000_000_000, 10)
}

/// Feeds messages as seq 1, 2, … from `next`.
struct Feed {
    model: ReadModel,
    next: u64,
}

impl Feed {
    fn new() -> Feed {
        let mut feed = Feed {
            model: model(),
            next: 1,
        };
        feed.send(LocationDirectory::new(
            1,
            tally_wire::pad_ascii("STORE-A").unwrap(),
        ));
        feed.send(LocationDirectory::new(
            2,
            tally_wire::pad_ascii("STORE-B").unwrap(),
        ));
        feed.send(SkuDirectory::new(7, tally_wire::pad_ascii("MUG").unwrap()));
        feed.send(SkuDirectory::new(8, tally_wire::pad_ascii("TEE").unwrap()));
        feed.send(InventoryLevel::new(1, 7, 10, 0));
        feed.send(InventoryLevel::new(2, 7, 5, 0));
        feed.send(InventoryLevel::new(1, 8, 0, 0));
        feed.send(SystemEvent::new(tally_wire::system_code::AUTHORITY_ONLINE));
        feed
    }

    fn send<M: WireMessage>(&mut self, message: M) -> u64 {
        let seq = self.next;
        self.next += 1;
        assert!(self
            .model
            .apply(seq, &Message::parse(message.as_bytes()).unwrap()));
        seq
    }

    fn get(&self, url: &str) -> (u16, Value) {
        let reply = self
            .model
            .respond("GET", url, monotonic_ns(), &HttpCounters::default());
        let value = if reply.content_type == JSON {
            serde_json::from_str(&reply.body).unwrap()
        } else {
            Value::String(reply.body)
        };
        (reply.status, value)
    }
}

#[test]
fn order_timeline_follows_accept_modify_cancel_and_rejects() {
    let mut f = Feed::new();
    let o = f.send(Order::new(1, 1, 7, 3).with_origin(5));
    f.send(OnHandDelta::new(1, 7, -3, delta_reason::ORDER, o));
    let (_, v) = f.get("/orders/5/1");
    assert_eq!(
        (v["status"].as_str(), v["remaining"].as_u64()),
        (Some("accepted"), Some(3))
    );
    let m = f.send(ModifyOrder::new(1, 2).with_origin(5));
    f.send(OnHandDelta::new(1, 7, 1, delta_reason::MODIFY, m));
    let bad = f.send(ModifyOrder::new(1, 100).with_origin(5));
    f.send(CommandRejected::new(bad, reject_reason::INSUFFICIENT));
    let (_, v) = f.get("/orders/5/1");
    assert_eq!(
        (v["status"].as_str(), v["remaining"].as_u64()),
        (Some("accepted"), Some(2))
    );
    let dup = f.send(Order::new(1, 1, 7, 1).with_origin(5));
    f.send(CommandRejected::new(dup, reject_reason::DUPLICATE_ID));
    let x = f.send(CancelOrder::new(1).with_origin(5));
    f.send(OnHandDelta::new(1, 7, 2, delta_reason::CANCEL, x));
    let (status, v) = f.get("/orders/5/1");
    assert_eq!(status, 200);
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["remaining"], 0);
    assert_eq!(v["events_recorded"], 10);
    assert_eq!(v["truncated"], true, "8 of 10 kept");
    let names: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["M", "D", "M", "J", "O", "J", "X", "D"]);

    let o2 = f.send(Order::new(2, 1, 7, 50).with_origin(5));
    f.send(CommandRejected::new(o2, reject_reason::INSUFFICIENT));
    let (_, v) = f.get("/orders/5/2");
    assert_eq!(
        (v["status"].as_str(), v["reject_reason"].as_str()),
        (Some("rejected"), Some("I"))
    );
    assert_eq!(f.get("/orders/5/3").0, 404);
    assert_eq!(f.get("/orders/5/x").0, 400);
    assert_eq!(f.get("/orders/70000/1").0, 400);
    assert_eq!(f.get("/orders/5/1?verbose=1").0, 400);
}

#[test]
fn hold_status_follows_place_confirm_release_expire() {
    let mut f = Feed::new();
    let statuses = [
        (hold_outcome::CONFIRMED, "confirmed"),
        (hold_outcome::RELEASED, "released"),
        (hold_outcome::EXPIRED, "expired"),
    ];
    for (i, (outcome, name)) in statuses.into_iter().enumerate() {
        let hold_id = 10 + i as u64;
        let v = f.send(Reserve::new(hold_id, 2, 7, 1, 1000).with_origin(5));
        let (_, body) = f.get(&format!("/holds/5/{hold_id}"));
        assert_eq!(body["status"], "pending");
        f.send(HoldPlaced::new(v, 2, 7, 1, 99));
        let (_, body) = f.get(&format!("/holds/5/{hold_id}"));
        assert_eq!(body["status"], "open");
        assert_eq!(body["expires_at_ns"], 99);
        let c = match outcome {
            hold_outcome::CONFIRMED => f.send(ConfirmHold::new(hold_id).with_origin(5)),
            hold_outcome::RELEASED => f.send(ReleaseHold::new(hold_id).with_origin(5)),
            _ => 0,
        };
        f.send(HoldEnded::new(v, 2, 7, 1, outcome));
        if outcome == hold_outcome::CONFIRMED {
            f.send(OnHandDelta::new(2, 7, -1, delta_reason::HOLD_CONFIRMED, c));
        }
        let (_, body) = f.get(&format!("/holds/5/{hold_id}"));
        assert_eq!(body["status"], name);
    }
    let (_, body) = f.get("/holds/5/10");
    let types: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["V", "H", "C", "E", "D"]);
    let v = f.send(Reserve::new(20, 2, 7, 100, 1000).with_origin(5));
    f.send(CommandRejected::new(v, reject_reason::INSUFFICIENT));
    assert_eq!(f.get("/holds/5/20").1["status"], "rejected");
    assert_eq!(f.get("/holds/5/21").0, 404);
    assert_eq!(f.model.index_counters().outcomes_unattributed, 0);
}

#[test]
fn cell_history_keeps_the_newest_events_with_the_state_after_each() {
    let mut f = Feed::new();
    for i in 0..3 {
        let o = f.send(Order::new(100 + i, 1, 7, 1).with_origin(5));
        f.send(OnHandDelta::new(1, 7, -1, delta_reason::ORDER, o));
    }
    let (status, v) = f.get("/cells/STORE-A/MUG/history");
    assert_eq!(status, 200);
    assert_eq!(v["events_recorded"], 4, "I then three D");
    let after: Vec<u64> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["after"]["on_hand"].as_u64().unwrap())
        .collect();
    assert_eq!(after, [9, 8, 7], "depth 3 keeps the newest three");
    assert_eq!(v["cell"]["available"], 7);
    let (_, v) = f.get("/cells/1/MUG/history?limit=1");
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    assert_eq!(f.get("/cells/STORE-Z/MUG/history").0, 400);
    assert_eq!(f.get("/cells/STORE-A/NOPE/history").0, 404);
    assert_eq!(f.get("/cells/STORE-A/MUG/history?limit=x").0, 400);
    // Three cells tracked at most: a fourth evicts one.
    f.send(InventoryLevel::new(2, 8, 4, 0));
    assert!(f.model.index_counters().cells_evicted >= 1);
}

#[test]
fn availability_depleted_health_ready_and_metrics() {
    let mut f = Feed::new();
    let (status, v) = f.get("/availability/MUG");
    assert_eq!(status, 200);
    assert_eq!(v["total"]["available"], 15);
    assert_eq!(v["locations"].as_array().unwrap().len(), 2);
    for key in ["seq", "lag", "stale"] {
        assert!(v.get(key).is_some(), "{key}");
    }
    assert_eq!(v["seq"], 8);
    let (_, v) = f.get("/availability/MUG?location=STORE-B");
    assert_eq!(v["total"]["available"], 5);
    let (_, v) = f.get("/availability/MUG?location=1");
    assert_eq!(v["locations"][0]["name"], "STORE-A");
    assert_eq!(f.get("/availability/MUG?location=9").0, 400);
    assert_eq!(f.get("/availability/MUG?where=1").0, 400);
    assert_eq!(f.get("/availability/NOPE").0, 404);
    assert_eq!(f.get("/availability/MU%47").0, 200, "percent-decoded");
    assert_eq!(f.get("/availability/MU%4").0, 400);

    let v = f.send(Reserve::new(1, 2, 7, 5, 1000).with_origin(5));
    f.send(HoldPlaced::new(v, 2, 7, 5, 99));
    let (_, all) = f.get("/depleted");
    let symbols: Vec<&str> = all["skus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["symbol"].as_str().unwrap())
        .collect();
    assert_eq!(symbols, ["TEE"]);
    let (_, any) = f.get("/depleted?scope=any");
    let symbols: Vec<&str> = any["skus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["symbol"].as_str().unwrap())
        .collect();
    assert_eq!(symbols, ["MUG", "TEE"]);
    assert_eq!(any["skus"][0]["out_at"][0]["name"], "STORE-B");
    assert_eq!(f.get("/depleted?scope=some").0, 400);

    assert_eq!(f.get("/health").0, 200);
    assert_eq!(f.get("/ready").0, 200);
    let (status, v) = f.get("/digest");
    assert_eq!(status, 200);
    let digest = format!("{:016x}", f.model.replica.digest());
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["digest_seq"], f.model.replica.last_seq());
    assert_eq!(v["digest_seq"], v["seq"]);
    assert_eq!(v["oversold"], 0);
    assert_eq!(f.get("/digest?x=1").0, 400);
    assert_eq!(f.get("/nope").0, 404);
    let reply = f
        .model
        .respond("POST", "/health", monotonic_ns(), &HttpCounters::default());
    assert_eq!(reply.status, 405);
    let (status, Value::String(text)) = f.get("/metrics") else {
        panic!("metrics are text");
    };
    assert_eq!(status, 200);
    assert!(text.contains("\ntally_monitor_seq 10\n"), "{text}");
    assert!(text.contains("tally_monitor_oversold 0\n"));

    // Silent past the stale timeout: stale, /health 503, /ready 503.
    let later = monotonic_ns() + 5_000_000_000;
    let http = HttpCounters::default();
    assert_eq!(f.model.respond("GET", "/health", later, &http).status, 503);
    assert_eq!(f.model.respond("GET", "/ready", later, &http).status, 503);
    let reply = f.model.respond("GET", "/availability/MUG", later, &http);
    let v: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(v["stale"], true);
}

#[test]
fn default_indexes_take_about_23_mib() {
    let indexes = Indexes::new(&IndexLimits::DEFAULT);
    let mib = indexes.memory_bytes() as f64 / (1 << 20) as f64;
    assert!((20.0..26.0).contains(&mib), "{mib} MiB");
}

#[test]
fn clock_table_gives_a_second_chance() {
    let mut t = ClockTable::new(2);
    assert_eq!(t.claim(1), Claim::Fresh(0));
    assert_eq!(t.claim(2), Claim::Fresh(1));
    // Both referenced: the hand clears both, then evicts slot 0.
    assert_eq!(t.claim(3), Claim::Evicted(0, 1));
    // 3 is referenced, 2 is not: 2 goes.
    assert_eq!(t.claim(4), Claim::Evicted(1, 2));
    assert_eq!(t.claim(3), Claim::Existing(0));
    assert_eq!(t.find(&2), None);
    assert_eq!(t.len(), 2);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

    /// The one decoder of HTTP input that is ours (tiny_http parses the
    /// request): any `Authorization` value is answered, never a panic.
    #[test]
    fn authorization_values_never_panic(value in "\\PC{0,300}") {
        let _ = basic_credentials(&value);
        let _ = basic_credentials(&format!("Basic {value}"));
        let _ = base64_decode(&value);
    }

    #[test]
    fn base64_round_trips(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
        proptest::prop_assert_eq!(base64_decode(&base64_encode(&bytes)), Some(bytes));
    }

    #[test]
    fn basic_credentials_round_trip(user in "[!-9;-~]{1,16}", password in "[ -~]{0,32}") {
        let header = basic_authorization(&user, &password);
        proptest::prop_assert_eq!(
            basic_credentials(&header),
            Some((user.into_bytes(), password.into_bytes()))
        );
    }
}

#[test]
fn base64_and_basic_credentials() {
    for text in ["", "a", "ab", "abc", "read1:readpass", "r:p:with:colons"] {
        let encoded = base64_encode(text.as_bytes());
        assert_eq!(
            base64_decode(&encoded).unwrap(),
            text.as_bytes(),
            "{encoded}"
        );
    }
    assert_eq!(base64_encode(b"read1:readpass"), "cmVhZDE6cmVhZHBhc3M=");
    assert_eq!(
        basic_credentials("Basic cmVhZDE6cmVhZHBhc3M="),
        Some((b"read1".to_vec(), b"readpass".to_vec()))
    );
    assert_eq!(
        basic_credentials("basic   cmVhZDE6cmVhZHBhc3M= "),
        Some((b"read1".to_vec(), b"readpass".to_vec()))
    );
    for bad in [
        "Bearer cmVhZDE6cmVhZHBhc3M=",
        "Basic",
        "Basic cmVhZDE",
        "Basic cmVh=DE6",
        "Basic bm9jb2xvbg==", // "nocolon"
        "Basic ****",
    ] {
        assert_eq!(basic_credentials(bad), None, "{bad}");
    }
    assert_eq!(basic_credentials(&"A".repeat(600)), None, "too long");
}

#[test]
fn query_strings_and_numbers() {
    assert_eq!(percent_decode("A%20B+C", true).unwrap(), "A B C");
    assert_eq!(percent_decode("A+B", false).unwrap(), "A+B");
    assert!(percent_decode("%zz", false).is_err());
    assert!(percent_decode("%ff", false).is_err(), "not UTF-8");
    assert!(parse_query("a=1&a=2", &["a"]).is_err());
    assert!(parse_query("b=1", &["a"]).is_err());
    assert_eq!(
        parse_query("a=x&", &["a"]).unwrap(),
        [("a".to_string(), "x".to_string())]
    );
    assert!(parse_number::<u64>("+1", "n").is_err());
    assert!(parse_number::<u16>("65536", "n").is_err());
    assert_eq!(parse_number::<u64>("42", "n").unwrap(), 42);
}
