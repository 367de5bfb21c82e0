//! The store node's writes carry an idempotency key: a checkout that
//! retries a sale with the same `Idempotency-Key` gets the first answer
//! and nothing is sold twice; the same key with another request is refused
//! (422), a key that does not fit is refused (400), a new key sells again;
//! `/metrics` counts the replays. The real tally-pos against the whole
//! appliance in process and the real warehouse on a thread.
//!
//! Test block 100, id 226 (the day2 range); HTTP port 30000 + 4·26.
//! Every wait has a deadline; the child is killed on drop.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tally_demo::http::{request, Reply};
use tally_demo::{bin, demo_client, wait_for_200, ApplianceSpec, ChildGuard, TestStack};

const ID: u8 = 226;
const TIMEOUT: Duration = Duration::from_secs(10);

fn sale(store: SocketAddr, key: Option<&str>, body: &str) -> Reply {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(key) = key {
        headers.push(("Idempotency-Key", key));
    }
    request(
        store,
        "POST",
        "/v1/orders",
        &headers,
        Some(body.as_bytes()),
        TIMEOUT,
    )
    .unwrap()
}

fn available(store: SocketAddr) -> u64 {
    let reply = request(store, "GET", "/v1/skus/MUG", &[], None, TIMEOUT).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["available"]
        .as_u64()
        .unwrap_or_else(|| panic!("available in {}", reply.body))
}

#[test]
fn a_retried_checkout_with_the_same_key_does_not_sell_twice() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ApplianceSpec::for_test(100, ID, dir.path().join("journal"));
    let stack = TestStack::start(
        &spec,
        dir.path(),
        "location,sku_symbol,quantity\nSTORE-A,MUG,10\n",
    );

    let store = SocketAddr::from(([127, 0, 0, 1], 30_000 + 4 * u16::from(ID - 200)));
    let client = demo_client("pos2");
    let node = Command::new(bin("tally-pos"))
        .arg("--config")
        .arg(&stack.config)
        .args(["--location", "STORE-A", "--listen", &store.to_string()])
        .args(["--user", client.username])
        .env("TALLY_PASSWORD", client.password)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _node = ChildGuard(node);
    wait_for_200(store, "/health", Duration::from_secs(30));
    assert_eq!(available(store), 10);

    // The checkout sells 2, loses the answer, and retries: one sale.
    let body = r#"{"sku":"MUG","qty":2}"#;
    let first = sale(store, Some("till-7-basket-1"), body);
    assert_eq!(first.status, 201, "{}", first.body);
    let first_body: Value = first.json();
    assert_eq!(first_body["stock"]["available"], 8, "{first_body}");
    for _ in 0..3 {
        let again = sale(store, Some("till-7-basket-1"), body);
        assert_eq!(again.status, 201, "{}", again.body);
        assert_eq!(again.json(), first_body, "the first answer, as it was");
    }
    assert_eq!(available(store), 8, "sold once");

    // The same key with another request: refused, nothing sold.
    let other = sale(store, Some("till-7-basket-1"), r#"{"sku":"MUG","qty":3}"#);
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(other.json()["error"], "key_reused");
    // Keys that do not fit: refused before anything is asked.
    for bad in ["has space", &"k".repeat(65)] {
        let refused = sale(store, Some(bad), body);
        assert_eq!(refused.status, 400, "{bad:?}: {}", refused.body);
    }
    // A sale the replica refuses keeps no key (nothing was sent): the key
    // is free for the checkout's corrected basket.
    let too_many = sale(store, Some("basket-2"), r#"{"sku":"MUG","qty":9}"#);
    assert_eq!(too_many.status, 409, "{}", too_many.body);
    assert_eq!(sale(store, Some("basket-2"), body).status, 201);
    // A new key and a keyless sale each sell.
    assert_eq!(sale(store, Some("basket-3"), body).status, 201);
    assert_eq!(sale(store, None, body).status, 201);
    assert_eq!(available(store), 2);

    let metrics = request(store, "GET", "/metrics", &[], None, TIMEOUT).unwrap();
    let replays = metrics
        .body
        .lines()
        .find(|line| line.starts_with("tally_store_idempotent_replays{"))
        .unwrap_or_else(|| panic!("no replay counter: {}", metrics.body));
    assert!(replays.ends_with(" 3"), "{replays}");
}
