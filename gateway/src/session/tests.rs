//! Unit tests of [`GatewayCore`] over a fake [`GatewayIo`]: every session
//! rule, on one thread, with simulated time.

use std::collections::{HashSet, VecDeque};
use std::sync::OnceLock;

use tally_config::gateway::{GatewayConfig, Role};
use tally_wire::ack::Ack;
use tally_wire::mold::Session;
use tally_wire::soup::{self, login_reject, ServerPacket};
use tally_wire::{reject_reason, GatewayReject, Order, Recount, SkuDirectory};

use super::*;
use crate::{AuthRequest, AuthResult, GatewayCounters, Inbound, Outcome, OutcomeKind};
use tally_config::gateway::{hash_password, ClientEntry};

const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000_000_000;
/// The simulated clock starts here (any value works; not 0, to catch
/// arithmetic that assumes it).
const START_NS: u64 = 1_700_000_000 * SECOND;

const TILL: u16 = 1;
const OPS: u16 = 2;
const WAREHOUSE: u16 = 3;
const READER: u16 = 4;

/// What the core did to one connection, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Out {
    LoginAccepted {
        next_seq: u64,
    },
    LoginRejected(u8),
    /// `k` ack: client_seq, stream_seq, timestamp.
    K(u32, u64, u64),
    /// `j` ack: client_seq, stream_seq, reason.
    J(u32, u64, u8),
    Heartbeat,
    Debug(String),
    Closed,
}

#[derive(Default)]
struct FakeIo {
    out: Vec<(SlotId, Out)>,
    forwarded: VecDeque<Inbound>,
    ring_capacity: usize,
    auth: VecDeque<AuthRequest>,
    auth_capacity: usize,
    /// Slots whose send buffer is full.
    full: HashSet<SlotId>,
    /// Slots closed and not yet released.
    closed: HashSet<SlotId>,
}

impl GatewayIo for FakeIo {
    fn send_room(&self, slot: SlotId) -> usize {
        if self.full.contains(&slot) {
            0
        } else {
            usize::MAX / 2
        }
    }

    fn send(&mut self, slot: SlotId, mut bytes: &[u8]) -> Result<(), SendError> {
        if self.full.contains(&slot) {
            return Err(SendError::Full);
        }
        if self.closed.contains(&slot) {
            return Err(SendError::Closed);
        }
        while !bytes.is_empty() {
            let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
            let frame = &bytes[2..2 + len];
            bytes = &bytes[2 + len..];
            let out = match ServerPacket::parse(frame).expect("the core sends valid packets") {
                ServerPacket::LoginAccepted { session, next_seq } => {
                    assert_eq!(session, self::session());
                    Out::LoginAccepted { next_seq }
                }
                ServerPacket::LoginRejected { reason } => Out::LoginRejected(reason),
                ServerPacket::Sequenced(payload) => match Ack::parse(payload).unwrap() {
                    Ack::Accepted(k) => {
                        Out::K(k.client_seq.get(), k.stream_seq.get(), k.timestamp_ns.get())
                    }
                    Ack::Rejected(j) => Out::J(j.client_seq.get(), j.stream_seq.get(), j.reason),
                },
                ServerPacket::Heartbeat => Out::Heartbeat,
                ServerPacket::Debug(text) => Out::Debug(String::from_utf8(text.to_vec()).unwrap()),
                ServerPacket::EndOfSession => panic!("the gateway never ends the session"),
            };
            self.out.push((slot, out));
        }
        Ok(())
    }

    fn close(&mut self, slot: SlotId) {
        assert!(self.closed.insert(slot), "{slot:?} closed twice");
        self.out.push((slot, Out::Closed));
    }

    fn sequencer_capacity(&self) -> usize {
        self.ring_capacity - self.forwarded.len()
    }

    fn forward(&mut self, inbound: Inbound) -> Result<(), Inbound> {
        if self.forwarded.len() >= self.ring_capacity {
            return Err(inbound);
        }
        self.forwarded.push_back(inbound);
        Ok(())
    }

    fn authenticate(&mut self, request: AuthRequest) -> Result<(), AuthRequest> {
        if self.auth.len() >= self.auth_capacity {
            return Err(request);
        }
        self.auth.push_back(request);
        Ok(())
    }
}

fn session() -> Session {
    Session::from_str("TODAY").unwrap()
}

fn any_hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password("unused")).clone()
}

fn config() -> GatewayConfig {
    let client = |username: &str, client_id, role| ClientEntry {
        username: username.into(),
        password_hash: any_hash(),
        client_id,
        role,
    };
    let mut config = GatewayConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        session(),
        vec![
            client("till", TILL, Role::Pos),
            client("ops", OPS, Role::Ops),
            client("wh", WAREHOUSE, Role::Authority),
            client("reader", READER, Role::Reader),
        ],
    );
    config.max_sessions = 4;
    config.max_login_connections = 4;
    config.max_login_connections_per_source = 2;
    config.ack_history_per_client = 8;
    config
}

fn ip(last: u8) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, last))
}

struct Harness {
    core: GatewayCore,
    io: FakeIo,
    now_ns: u64,
    next_stream_seq: u64,
}

impl Harness {
    fn new() -> Self {
        Self::with(config(), &[])
    }

    fn with(config: GatewayConfig, recovery: &[ClientRecovery]) -> Self {
        let core = GatewayCore::new(&config, GatewayCounters::in_memory(), recovery).unwrap();
        Harness {
            core,
            io: FakeIo {
                ring_capacity: 64,
                auth_capacity: 8,
                ..FakeIo::default()
            },
            now_ns: START_NS,
            next_stream_seq: 100,
        }
    }

    fn counters(&self) -> &GatewayCounters {
        self.core.counters()
    }

    fn advance(&mut self, ns: u64) -> usize {
        self.now_ns += ns;
        self.core.service(&mut self.io, self.now_ns)
    }

    fn service(&mut self) -> usize {
        self.core.service(&mut self.io, self.now_ns)
    }

    fn connect(&mut self) -> SlotId {
        self.core.on_accept(self.now_ns).expect("a free slot")
    }

    fn connect_from(&mut self, source: std::net::IpAddr) -> Result<SlotId, Refusal> {
        self.core.on_accept_from(Some(source), self.now_ns)
    }

    fn receive(&mut self, slot: SlotId, bytes: &[u8]) {
        let taken = self.core.on_data(&mut self.io, slot, bytes, self.now_ns);
        assert_eq!(taken, bytes.len(), "the core left bytes behind");
    }

    fn send_login(
        &mut self,
        slot: SlotId,
        username: &str,
        password: &str,
        session: Session,
        requested_seq: u64,
    ) {
        let mut frame = [0u8; 64];
        let len = soup::write_login_request(&mut frame, username, password, session, requested_seq)
            .unwrap();
        self.receive(slot, &frame[..len]);
    }

    /// Answers every queued password check: the password is "pw".
    fn answer_auth(&mut self) {
        while let Some(request) = self.io.auth.pop_front() {
            let verified = request.client_index.is_some()
                && tally_wire::trim_ascii(&request.password) == b"pw";
            let result = AuthResult {
                slot: request.slot,
                ticket: request.ticket,
                verified,
            };
            self.core.on_auth_result(&mut self.io, result, self.now_ns);
        }
    }

    /// Connects and logs in as `username` (password "pw"), answering the
    /// password check at once; returns the slot.
    fn login(&mut self, username: &str, requested_seq: u64) -> SlotId {
        let slot = self.connect();
        self.send_login(slot, username, "pw", Session::BLANK, requested_seq);
        self.answer_auth();
        slot
    }

    fn send_unsequenced(&mut self, slot: SlotId, message: &[u8]) {
        let mut frame = [0u8; 1024];
        let len = soup::write_unsequenced(&mut frame, message).unwrap();
        self.receive(slot, &frame[..len]);
    }

    fn send_order(&mut self, slot: SlotId, client_seq: u32) {
        let order = Order::new(u64::from(client_seq), 1, 42, 1).with_client_seq(client_seq);
        self.send_unsequenced(slot, order.as_bytes());
    }

    /// Plays the sequencer: answers every forwarded message in order with
    /// the next stream sequence number.
    fn sequence_all(&mut self) -> Vec<Inbound> {
        let mut answered = Vec::new();
        while let Some(inbound) = self.io.forwarded.pop_front() {
            let kind = match inbound.reject_reason {
                0 => OutcomeKind::Accepted,
                reason => OutcomeKind::Rejected { reason },
            };
            self.answer(&inbound, kind);
            answered.push(inbound);
        }
        answered
    }

    fn answer(&mut self, inbound: &Inbound, kind: OutcomeKind) {
        let (stream_seq, timestamp_ns) = match kind {
            OutcomeKind::Accepted | OutcomeKind::Rejected { .. } => {
                self.next_stream_seq += 1;
                (self.next_stream_seq - 1, self.now_ns)
            }
            OutcomeKind::Duplicate | OutcomeKind::SkippedAhead => (0, 0),
        };
        let outcome = Outcome {
            origin: inbound.origin,
            client_seq: inbound.client_seq,
            stream_seq,
            timestamp_ns,
            kind,
        };
        self.core.on_outcome(&mut self.io, outcome, self.now_ns);
    }

    /// What the core did to `slot` since the last call.
    fn take(&mut self, slot: SlotId) -> Vec<Out> {
        let mut taken = Vec::new();
        self.io.out.retain(|(to, out)| {
            if *to == slot {
                taken.push(out.clone());
                false
            } else {
                true
            }
        });
        taken
    }

    /// The transport released `slot` (closed by either side).
    /// What was sent to it and not yet taken is dropped: the slot may
    /// serve another connection next.
    fn release(&mut self, slot: SlotId) {
        self.core.on_closed(slot);
        self.io.closed.remove(&slot);
        self.take(slot);
    }

    /// Reports every connection the core closed back as released.
    fn release_closed(&mut self) {
        let closed: Vec<SlotId> = self.io.closed.iter().copied().collect();
        for slot in closed {
            self.release(slot);
        }
    }
}

fn assert_protocol_error(outs: &[Out], needle: &str) {
    match outs {
        [Out::Debug(text), Out::Closed] => {
            assert!(text.starts_with("protocol error: "), "{text}");
            assert!(
                text.contains(needle),
                "{text:?} does not mention {needle:?}"
            );
        }
        other => panic!("expected a debug packet then close, got {other:?}"),
    }
}

fn frame(packet_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 3 + payload.len()];
    let len = soup::write_frame(&mut buf, packet_type, payload).unwrap();
    buf.truncate(len);
    buf
}

// ---- login ------------------------------------------------------------

#[test]
fn login_then_order_is_stamped_forwarded_and_acked() {
    let mut h = Harness::new();
    let slot = h.login("till", 0);
    assert_eq!(h.take(slot), [Out::LoginAccepted { next_seq: 1 }]);
    assert_eq!(
        h.core.connection_state(slot),
        Some(ConnectionState::LoggedIn)
    );
    assert_eq!(h.counters().logins_accepted.get(), 1);
    assert_eq!(h.counters().sessions_active.get(), 1);

    // The client's header carries junk origin and timestamp: both restamped.
    let order = Order::new(7, 1, 42, 3)
        .with_client_seq(1)
        .with_origin(999)
        .with_timestamp_ns(12345);
    h.send_unsequenced(slot, order.as_bytes());
    let inbound = *h.io.forwarded.front().unwrap();
    assert_eq!(
        (inbound.origin, inbound.client_seq, inbound.reject_reason),
        (TILL, 1, 0)
    );
    let expected = Order::new(7, 1, 42, 3).with_client_seq(1).with_origin(TILL);
    assert_eq!(inbound.message(), expected.as_bytes());
    assert_eq!(h.core.in_flight(TILL), Some(1));

    h.sequence_all();
    assert_eq!(h.take(slot), [Out::K(1, 100, h.now_ns)]);
    assert_eq!(h.core.last_sequenced(TILL), Some(1));
    assert_eq!(h.core.in_flight(TILL), Some(0));
    assert_eq!(h.counters().messages_in.get(), 1);
    assert_eq!(h.counters().acks_out.get(), 1);
}

#[test]
fn wrong_password_unknown_user_and_reader_are_rejected_a() {
    let mut h = Harness::new();
    for (username, password) in [("till", "nope"), ("nobody", "pw"), ("reader", "pw")] {
        let slot = h.connect();
        h.send_login(slot, username, password, Session::BLANK, 0);
        assert_eq!(h.take(slot), [], "nothing before the password check");
        assert_eq!(
            h.core.connection_state(slot),
            Some(ConnectionState::Authenticating)
        );
        h.answer_auth();
        assert_eq!(
            h.take(slot),
            [
                Out::LoginRejected(login_reject::NOT_AUTHORIZED),
                Out::Closed
            ],
            "{username}/{password}"
        );
        h.release(slot);
    }
    assert_eq!(h.counters().logins_rejected.get(), 3);
    assert_eq!(h.counters().logins_accepted.get(), 0);
    assert_eq!(h.slots_free(), 8);
}

impl Harness {
    fn slots_free(&self) -> usize {
        8 - self.core.slots_in_use()
    }
}

#[test]
fn unknown_users_are_checked_like_known_ones() {
    // No shortcut that would reveal which usernames exist by timing.
    let mut h = Harness::new();
    let slot = h.connect();
    h.send_login(slot, "nobody", "pw", Session::BLANK, 0);
    let request = h.io.auth.front().expect("an unknown user is checked too");
    assert_eq!(request.client_index, None);
}

#[test]
fn session_must_be_blank_or_current() {
    let mut h = Harness::new();
    let slot = h.connect();
    h.send_login(
        slot,
        "till",
        "pw",
        Session::from_str("YESTERDAY").unwrap(),
        0,
    );
    h.answer_auth();
    assert_eq!(
        h.take(slot),
        [
            Out::LoginRejected(login_reject::SESSION_UNAVAILABLE),
            Out::Closed
        ]
    );
    h.release(slot);

    let slot = h.connect();
    h.send_login(slot, "till", "pw", session(), 0);
    h.answer_auth();
    assert_eq!(h.take(slot), [Out::LoginAccepted { next_seq: 1 }]);
}

#[test]
fn a_wrong_password_is_rejected_a_even_for_a_wrong_session() {
    // Credentials first: an unauthenticated peer learns nothing about sessions.
    let mut h = Harness::new();
    let slot = h.connect();
    h.send_login(slot, "till", "bad", Session::from_str("OTHER").unwrap(), 0);
    h.answer_auth();
    assert_eq!(
        h.take(slot),
        [
            Out::LoginRejected(login_reject::NOT_AUTHORIZED),
            Out::Closed
        ]
    );
}

#[test]
fn a_full_auth_queue_rejects_the_login_a_and_counts_it() {
    let mut h = Harness::new();
    h.io.auth_capacity = 1;
    let first = h.connect();
    h.send_login(first, "till", "pw", Session::BLANK, 0);
    let second = h.connect();
    h.send_login(second, "ops", "pw", Session::BLANK, 0);
    assert_eq!(
        h.take(second),
        [
            Out::LoginRejected(login_reject::NOT_AUTHORIZED),
            Out::Closed
        ]
    );
    assert_eq!(h.counters().auth_busy.get(), 1);
    h.answer_auth();
    assert_eq!(h.take(first), [Out::LoginAccepted { next_seq: 1 }]);
}

#[test]
fn a_stale_auth_result_for_a_reused_slot_is_ignored() {
    let mut h = Harness::new();
    let slot = h.connect();
    h.send_login(slot, "till", "pw", Session::BLANK, 0);
    let stale = h.io.auth.pop_front().unwrap();
    h.release(slot); // the peer went away during the check
    let reused = h.connect();
    assert_eq!(reused, slot, "lowest free slot is reused");
    h.send_login(reused, "ops", "bad", Session::BLANK, 0);
    h.core.on_auth_result(
        &mut h.io,
        AuthResult {
            slot: stale.slot,
            ticket: stale.ticket,
            verified: true,
        },
        h.now_ns,
    );
    assert_eq!(
        h.take(reused),
        [],
        "the old answer does not log the new peer in"
    );
    h.answer_auth();
    assert_eq!(
        h.take(reused),
        [
            Out::LoginRejected(login_reject::NOT_AUTHORIZED),
            Out::Closed
        ]
    );
}

#[test]
fn frames_sent_during_the_login_are_served_after_login_accepted() {
    let mut h = Harness::new();
    let slot = h.connect();
    h.send_login(slot, "till", "pw", Session::BLANK, 0);
    h.send_order(slot, 1);
    assert!(
        h.io.forwarded.is_empty(),
        "nothing before the login completes"
    );
    h.answer_auth();
    assert_eq!(h.take(slot), [Out::LoginAccepted { next_seq: 1 }]);
    h.service();
    assert_eq!(h.io.forwarded.len(), 1);
}

#[test]
fn the_login_pool_bounds_connections_not_logged_in() {
    let mut h = Harness::new();
    let slots: Vec<_> = (0..4).map(|_| h.connect()).collect();
    assert_eq!(h.core.on_accept(h.now_ns), None);
    assert_eq!(
        h.connect_from(ip(9)),
        Err(Refusal::LoginPoolFull),
        "the pool is full, whatever the source"
    );
    assert_eq!(h.counters().login_pool_refused.get(), 2);
    assert_eq!(h.counters().login_pool_active.get(), 4);
    h.release(slots[2]);
    assert_eq!(h.connect(), slots[2]);
}

#[test]
fn an_idler_whose_login_wins_the_race_with_its_eviction_is_spared() {
    let mut h = Harness::new();
    let oldest = h.connect();
    h.advance(MS);
    let others = [h.connect(), h.connect(), h.connect()];
    h.advance(GatewayConfig::DEFAULT_LOGIN_TIMEOUT_NS / 8);
    // The newcomer marks `oldest` for eviction; before the core gets to
    // close it, its login arrives and is verified.
    h.core.on_accept(h.now_ns).expect("room made");
    h.send_login(oldest, "till", "pw", Session::BLANK, 0);
    h.answer_auth();
    assert_eq!(h.take(oldest), [Out::LoginAccepted { next_seq: 1 }]);
    h.service();
    assert!(h.take(oldest).is_empty(), "spared");
    // The pool is full again (three idlers and the newcomer): the next
    // newcomer evicts the oldest remaining idler.
    assert_eq!(h.counters().login_pool_active.get(), 4);
    h.core.on_accept(h.now_ns).expect("room made");
    h.service();
    assert_eq!(h.take(others[0]).last(), Some(&Out::Closed));
}

#[test]
fn a_full_login_pool_evicts_its_oldest_idler_for_a_newcomer() {
    let mut h = Harness::new();
    let oldest = h.connect();
    h.advance(100 * MS);
    let logging_in = h.connect();
    h.advance(100 * MS);
    let idlers = [h.connect(), h.connect()];
    // Everyone is young: nobody is evicted, the newcomer is refused.
    assert_eq!(h.core.on_accept(h.now_ns), None);
    // Once the pool's connections have had an eighth of their deadline,
    // the oldest that sent no login makes room.
    h.advance(GatewayConfig::DEFAULT_LOGIN_TIMEOUT_NS / 8);
    h.send_login(logging_in, "till", "pw", Session::BLANK, 0);
    let newcomer = h.core.on_accept(h.now_ns).expect("room made");
    assert_eq!(h.counters().login_pool_evictions.get(), 1);
    h.service();
    let outs = h.take(oldest);
    assert!(
        matches!(&outs[..], [Out::Debug(text), Out::Closed] if text.contains("login pool is full")),
        "{outs:?}"
    );
    h.release(oldest);
    // The one whose login is being checked is never evicted: the next
    // newcomer takes the next idler's place.
    let second = h.core.on_accept(h.now_ns).expect("room made");
    h.service();
    assert_eq!(h.take(idlers[0]).last(), Some(&Out::Closed));
    assert!(h.take(logging_in).is_empty());
    h.answer_auth();
    assert_eq!(h.take(logging_in), [Out::LoginAccepted { next_seq: 1 }]);
    assert_ne!(newcomer, second);
}

#[test]
fn sessions_have_their_own_slots_and_limit() {
    let mut config = config();
    config.max_sessions = 2;
    let mut h = Harness::with(config, &[]);
    for name in ["till", "ops"] {
        let slot = h.login(name, 0);
        assert_eq!(h.take(slot), [Out::LoginAccepted { next_seq: 1 }]);
    }
    // Both sessions are taken, and the login pool still holds all of its 4.
    assert_eq!(h.counters().login_pool_active.get(), 0);
    let waiting: Vec<_> = (0..4).map(|_| h.connect()).collect();
    assert_eq!(h.core.slots_in_use(), 6);
    assert_eq!(h.counters().login_pool_active.get(), 4);
    // A third client's login finds no session free: rejected S, and told why.
    h.send_login(waiting[0], "wh", "pw", Session::BLANK, 0);
    h.answer_auth();
    let outs = h.take(waiting[0]);
    assert_eq!(
        outs[0],
        Out::LoginRejected(login_reject::SESSION_UNAVAILABLE)
    );
    assert!(matches!(&outs[1], Out::Debug(text) if text.contains("2 sessions are logged in")));
    assert_eq!(outs[2], Out::Closed);
    assert_eq!(h.counters().sessions_refused.get(), 1);
    // A client replacing its own session is let in (the old one is closed).
    h.send_login(waiting[1], "till", "pw", Session::BLANK, 0);
    h.answer_auth();
    assert_eq!(h.take(waiting[1]), [Out::LoginAccepted { next_seq: 1 }]);
}

#[test]
fn one_source_holds_at_most_its_share_of_the_login_pool() {
    let mut h = Harness::new();
    let a = h.connect_from(ip(2)).unwrap();
    h.connect_from(ip(2)).unwrap();
    assert_eq!(h.connect_from(ip(2)), Err(Refusal::SourceLimit));
    assert_eq!(h.counters().login_source_refused.get(), 1);
    // Others still get in.
    h.connect_from(ip(3)).unwrap();
    // A login moves the connection out of the pool, freeing the share.
    h.send_login(a, "till", "pw", Session::BLANK, 0);
    h.answer_auth();
    assert_eq!(h.take(a), [Out::LoginAccepted { next_seq: 1 }]);
    h.connect_from(ip(2)).unwrap();
}

#[test]
fn a_reconnect_storm_is_refused_at_accept() {
    let mut config = config();
    config.source_connects_per_sec = 10;
    config.source_connect_burst = 3;
    let mut h = Harness::with(config, &[]);
    for _ in 0..3 {
        let slot = h.connect_from(ip(2)).unwrap();
        h.release(slot);
    }
    assert_eq!(h.connect_from(ip(2)), Err(Refusal::ConnectRate));
    assert_eq!(h.counters().connects_throttled.get(), 1);
    assert!(
        h.connect_from(ip(3)).is_ok(),
        "another source is not charged"
    );
    h.advance(100 * MS);
    assert!(h.connect_from(ip(2)).is_ok(), "the bucket refills");
}

#[test]
fn a_connection_not_logged_in_by_the_deadline_is_closed() {
    let mut h = Harness::new();
    let idle = h.connect();
    let slow = h.connect();
    // One byte of a login at a time: activity does not extend the deadline.
    let mut login = [0u8; 64];
    let len = soup::write_login_request(&mut login, "till", "pw", Session::BLANK, 0).unwrap();
    for byte in &login[..10] {
        h.receive(slow, std::slice::from_ref(byte));
        h.advance(450 * MS);
    }
    assert_eq!(h.counters().login_timeouts.get(), 0);
    h.advance(600 * MS);
    for slot in [idle, slow] {
        let outs = h.take(slot);
        assert!(
            matches!(&outs[..], [Out::Debug(text), Out::Closed] if text.contains("not logged in within 5000 ms")),
            "{outs:?}"
        );
    }
    assert_eq!(h.counters().login_timeouts.get(), 2);
    assert_eq!(len, 49);
}

#[test]
fn failed_logins_back_the_source_off_without_hashing() {
    let mut config = config();
    config.login_failures_before_backoff = 0;
    let mut h = Harness::with(config, &[]);
    let slot = h.connect_from(ip(2)).unwrap();
    h.send_login(slot, "till", "wrong", Session::BLANK, 0);
    h.answer_auth();
    assert_eq!(
        h.take(slot),
        [
            Out::LoginRejected(login_reject::NOT_AUTHORIZED),
            Out::Closed
        ]
    );
    h.release(slot);
    assert_eq!(h.counters().login_failures.get(), 1);
    // Within the back-off: rejected at once, nothing queued for argon2.
    let slot = h.connect_from(ip(2)).unwrap();
    h.send_login(slot, "till", "pw", Session::BLANK, 0);
    assert!(h.io.auth.is_empty(), "a throttled login is not checked");
    let outs = h.take(slot);
    assert!(
        matches!(&outs[..], [Out::LoginRejected(b'A'), Out::Debug(text), Out::Closed] if text.contains("login throttled")),
        "{outs:?}"
    );
    h.release(slot);
    assert_eq!(h.counters().logins_throttled.get(), 1);
    assert_eq!(h.counters().password_checks.get(), 1);
    // The same user from another address is not slowed.
    let other = h.connect_from(ip(3)).unwrap();
    h.send_login(other, "till", "pw", Session::BLANK, 0);
    h.answer_auth();
    assert_eq!(h.take(other), [Out::LoginAccepted { next_seq: 1 }]);
    // After the back-off the source may try again.
    h.advance(GatewayConfig::DEFAULT_LOGIN_BACKOFF_BASE_NS);
    let slot = h.connect_from(ip(2)).unwrap();
    h.send_login(slot, "ops", "pw", Session::BLANK, 0);
    assert_eq!(h.io.auth.len(), 1);
}

#[test]
fn one_source_may_have_only_a_few_checks_in_flight() {
    let mut config = config();
    config.max_login_connections_per_source = 4;
    config.auth_in_flight_per_source = 2;
    let mut h = Harness::with(config, &[]);
    let slots: Vec<_> = (0..3).map(|_| h.connect_from(ip(2)).unwrap()).collect();
    for &slot in &slots {
        h.send_login(slot, "till", "wrong", Session::BLANK, 0);
    }
    assert_eq!(h.io.auth.len(), 2, "auth_in_flight_per_source");
    let outs = h.take(slots[2]);
    assert!(matches!(
        &outs[..],
        [Out::LoginRejected(b'A'), Out::Debug(_), Out::Closed]
    ));
    assert_eq!(h.counters().logins_throttled.get(), 1);
}

#[test]
fn a_4_1_login_sets_the_peer_timeout_within_bounds() {
    for (requested_ms, timeout_ms) in [
        (0, 15_000),
        (10_000, 10_000),
        (100, 3_000),
        (99_999, 60_000),
    ] {
        let mut h = Harness::new();
        let slot = h.connect();
        let mut frame = [0u8; 64];
        let len = soup::write_login_request_v41(
            &mut frame,
            "till",
            "pw",
            Session::BLANK,
            0,
            requested_ms,
        )
        .unwrap();
        h.receive(slot, &frame[..len]);
        h.answer_auth();
        assert_eq!(h.take(slot), [Out::LoginAccepted { next_seq: 1 }]);
        h.advance(timeout_ms * MS - MS);
        assert_eq!(h.counters().sessions_timed_out.get(), 0, "{requested_ms}");
        h.advance(2 * MS);
        h.advance(SECOND);
        assert_eq!(h.counters().sessions_timed_out.get(), 1, "{requested_ms}");
        let outs = h.take(slot);
        assert_eq!(outs.last(), Some(&Out::Closed));
    }
}

// ---- protocol errors ----------------------------------------------------

#[test]
fn data_before_login_is_a_protocol_error() {
    let mut h = Harness::new();
    let slot = h.connect();
    h.send_order(slot, 1);
    assert_protocol_error(
        &h.take(slot),
        "first packet must be a login request, not 'U'",
    );
    assert!(h.io.forwarded.is_empty());
    assert!(h.io.auth.is_empty());
    assert_eq!(h.counters().protocol_errors.get(), 1);
    assert_eq!(
        h.core.connection_state(slot),
        Some(ConnectionState::Closing)
    );

    let slot = {
        h.release(slot);
        h.connect()
    };
    h.receive(slot, &frame(b'R', &[]));
    assert_protocol_error(&h.take(slot), "not 'R'");
}

#[test]
fn a_second_login_is_a_protocol_error() {
    let mut h = Harness::new();
    let slot = h.login("till", 0);
    h.take(slot);
    h.send_login(slot, "till", "pw", Session::BLANK, 0);
    assert_protocol_error(&h.take(slot), "second login");
    assert!(h.io.auth.is_empty());
    assert_eq!(h.counters().sessions_active.get(), 0);
}

#[test]
fn unknown_packet_types_and_bad_packets_are_protocol_errors() {
    for (bytes, needle) in [
        (frame(b'Z', &[]), "unknown SoupBinTCP packet type 'Z'"),
        (frame(b'R', b"x"), "cannot have a 1-byte payload"),
        (vec![0, 0], "length 0"),
    ] {
        let mut h = Harness::new();
        let slot = h.login("till", 0);
        h.take(slot);
        h.receive(slot, &bytes);
        assert_protocol_error(&h.take(slot), needle);
        assert_eq!(h.counters().protocol_errors.get(), 1);
    }
    // Before login as well.
    let mut h = Harness::new();
    let slot = h.connect();
    h.receive(slot, &frame(b'?', &[]));
    assert_protocol_error(&h.take(slot), "unknown SoupBinTCP packet type '?'");
}

#[test]
fn an_oversize_frame_is_a_protocol_error_before_it_is_buffered() {
    let mut h = Harness::new();
    let slot = h.login("till", 0);
    h.take(slot);
    // Only the length prefix has arrived: that is enough to know.
    h.receive(slot, &(257u16).to_be_bytes());
    assert_protocol_error(&h.take(slot), "257 bytes exceeds the maximum of 256");
    assert!(h.io.forwarded.is_empty());
}

#[test]
fn a_skip_ahead_is_a_protocol_error_and_nothing_is_sequenced() {
    let mut h = Harness::new();
    let slot = h.login("till", 0);
    h.take(slot);
    h.send_order(slot, 1);
    h.send_order(slot, 3);
    assert_protocol_error(&h.take(slot), "client_seq 3 skips ahead of the expected 2");
    assert_eq!(h.io.forwarded.len(), 1, "only client_seq 1");
    // Whatever else was in the buffer is not handled.
    h.send_order(slot, 2);
    assert_eq!(h.io.forwarded.len(), 1);
}

#[test]
fn a_protocol_error_leaves_other_sessions_alone() {
    let mut h = Harness::new();
    let good = h.login("ops", 0);
    let bad = h.login("till", 0);
    h.take(good);
    h.take(bad);
    h.receive(bad, &frame(b'Z', &[]));
    h.release_closed();
    let transfer = tally_wire::Transfer::new(1, 1, 2, 42, 5).with_client_seq(1);
    h.send_unsequenced(good, transfer.as_bytes());
    h.sequence_all();
    assert_eq!(h.take(good), [Out::K(1, 100, h.now_ns)]);
}

// ---- message validation ---------------------------------------------------

/// Sends `message` as client_seq 1 of a fresh `username` session and returns
/// the forwarded inbound and the ack.
fn submit(username: &str, message: &[u8]) -> (Inbound, Vec<Out>) {
    let mut h = Harness::new();
    let slot = h.login(username, 0);
    h.take(slot);
    h.send_unsequenced(slot, message);
    let inbound = *h.io.forwarded.front().expect("every message is forwarded");
    h.sequence_all();
    (inbound, h.take(slot))
}

fn assert_gateway_reject(inbound: &Inbound, origin: u16, client_seq: u32, reason: u8) {
    assert_eq!(inbound.reject_reason, reason);
    assert_eq!((inbound.origin, inbound.client_seq), (origin, client_seq));
    let expected = GatewayReject::new(reason)
        .with_origin(origin)
        .with_client_seq(client_seq);
    assert_eq!(inbound.message(), expected.as_bytes());
    assert_eq!(inbound.message().len(), 16);
}

#[test]
fn unknown_message_type_is_recorded_j_t() {
    let mut message = Order::new(1, 1, 1, 1)
        .with_client_seq(1)
        .as_bytes()
        .to_vec();
    message[0] = b'@';
    let (inbound, acks) = submit("till", &message);
    assert_gateway_reject(&inbound, TILL, 1, reject_reason::UNKNOWN_TYPE);
    assert_eq!(acks, [Out::J(1, 100, b'T')]);
}

#[test]
fn wrong_length_is_recorded_j_w() {
    let order = Order::new(1, 1, 1, 1).with_client_seq(1);
    let (inbound, acks) = submit("till", &order.as_bytes()[..32]);
    assert_gateway_reject(&inbound, TILL, 1, reject_reason::WRONG_LENGTH);
    assert_eq!(acks, [Out::J(1, 100, b'W')]);

    // Longer than any message (but within the frame limit) too.
    let mut long = order.as_bytes().to_vec();
    long.resize(200, 0);
    let (inbound, _) = submit("till", &long);
    assert_gateway_reject(&inbound, TILL, 1, reject_reason::WRONG_LENGTH);
}

#[test]
fn a_message_without_a_usable_client_seq_is_answered_and_consumes_nothing() {
    let mut h = Harness::new();
    let slot = h.login("till", 0);
    h.take(slot);
    let order = Order::new(1, 1, 42, 1).with_client_seq(0);
    let whole = Order::new(1, 1, 42, 1).with_client_seq(1);
    let short = &whole.as_bytes()[..14];
    for message in [
        &b""[..],
        b"O",
        b"O\0\0",
        &short[..7],
        short,
        order.as_bytes(),
    ] {
        h.send_unsequenced(slot, message);
        let outs = h.take(slot);
        assert!(
            matches!(&outs[..], [Out::Debug(text)] if text.starts_with(UNNUMBERED_REJECT_PREFIX)
                && text.contains("next client_seq 1")),
            "{message:?}: {outs:?}"
        );
    }
    assert!(h.io.forwarded.is_empty(), "nothing reaches the sequencer");
    assert_eq!(h.counters().unnumbered_rejects.get(), 6);
    assert_eq!(h.counters().protocol_errors.get(), 0);
    // Numbering did not move: client_seq 1 is still the next.
    h.send_order(slot, 1);
    h.sequence_all();
    assert_eq!(h.take(slot), [Out::K(1, 100, h.now_ns)]);
}

#[test]
fn a_type_outside_the_role_is_recorded_j_p() {
    let recount = Recount::new(1, 42, 10, 0).with_client_seq(1);
    let (inbound, acks) = submit("till", recount.as_bytes());
    assert_gateway_reject(&inbound, TILL, 1, reject_reason::NOT_PERMITTED);
    assert_eq!(acks, [Out::J(1, 100, b'P')]);

    let order = Order::new(1, 1, 1, 1).with_client_seq(1);
    let (inbound, _) = submit("ops", order.as_bytes());
    assert_gateway_reject(&inbound, OPS, 1, reject_reason::NOT_PERMITTED);

    // Events are the authority's.
    let directory = SkuDirectory::new(42, *b"WIDGET          ").with_client_seq(1);
    let (inbound, _) = submit("till", directory.as_bytes());
    assert_gateway_reject(&inbound, TILL, 1, reject_reason::NOT_PERMITTED);
    let (inbound, acks) = submit("wh", directory.as_bytes());
    assert_eq!(inbound.reject_reason, 0);
    assert_eq!(acks, [Out::K(1, 100, START_NS)]);
    let (inbound, _) = submit("wh", order.as_bytes());
    assert_eq!(inbound.reject_reason, 0);

    // Nobody may submit a gateway reject.
    let reject = GatewayReject::new(b'P').with_client_seq(1);
    let (inbound, _) = submit("wh", reject.as_bytes());
    assert_gateway_reject(&inbound, WAREHOUSE, 1, reject_reason::NOT_PERMITTED);
}

#[test]
fn gateway_rejects_are_counted() {
    let mut h = Harness::new();
    let slot = h.login("till", 0);
    h.send_unsequenced(
        slot,
        Recount::new(1, 42, 10, 0).with_client_seq(1).as_bytes(),
    );
    h.send_order(slot, 2);
    assert_eq!(h.counters().gateway_rejects.get(), 1);
    assert_eq!(h.counters().messages_in.get(), 2);
}

// ---- exactly-once -----------------------------------------------------------

#[test]
fn a_resent_client_seq_is_dropped_silently_and_counted() {
    let mut h = Harness::new();
    let slot = h.login("till", 0);
    h.take(slot);
    h.send_order(slot, 1);
    h.send_order(slot, 1); // in flight: still a duplicate
    h.sequence_all();
    h.send_order(slot, 1); // sequenced: a duplicate
    h.send_order(slot, 2);
    let forwarded: Vec<u32> = h.sequence_all().iter().map(|i| i.client_seq).collect();
    assert_eq!(forwarded, [2]);
    assert_eq!(
        h.take(slot),
        [Out::K(1, 100, h.now_ns), Out::K(2, 101, h.now_ns)]
    );
    assert_eq!(h.counters().duplicates_dropped.get(), 2);
}

#[test]
fn a_duplicate_outcome_is_counted_and_not_acked() {
    let mut h = Harness::new();
    let slot = h.login("till", 0);
    h.take(slot);
    h.send_order(slot, 1);
    let inbound = h.io.forwarded.pop_front().unwrap();
    h.answer(&inbound, OutcomeKind::Duplicate);
    assert_eq!(h.take(slot), []);
    assert_eq!(h.counters().duplicates_dropped.get(), 1);
    assert_eq!(h.core.in_flight(TILL), Some(0));
}

#[test]
fn a_skipped_ahead_outcome_closes_the_session() {
    let mut h = Harness::new();
    let slot = h.login("till", 0);
    h.take(slot);
    h.send_order(slot, 1);
    let inbound = h.io.forwarded.pop_front().unwrap();
    h.answer(&inbound, OutcomeKind::SkippedAhead);
    assert_protocol_error(
        &h.take(slot),
        "client_seq 1 is not the next the sequencer expects",
    );
    h.release_closed();
    // The next login resynchronises on what was really sequenced.
    let slot = h.login("till", 0);
    assert_eq!(h.take(slot), [Out::LoginAccepted { next_seq: 1 }]);
}

#[test]
fn login_accepted_carries_the_next_client_seq_after_a_reconnect() {
    let mut h = Harness::new();
    let slot = h.login("till", 0);
    for client_seq in 1..=5 {
        h.send_order(slot, client_seq);
    }
    h.sequence_all();
    h.release(slot); // cut off
    let slot = h.login("till", 0);
    assert_eq!(h.take(slot), [Out::LoginAccepted { next_seq: 6 }]);
    h.send_order(slot, 5);
    assert!(h.io.forwarded.is_empty(), "5 was already sequenced");
    h.send_order(slot, 6);
    assert_eq!(h.io.forwarded.len(), 1);
}

// ---- resume and replay -------------------------------------------------------

#[test]
fn a_lower_requested_seq_replays_the_acks_after_login_accepted() {
    let mut h = Harness::new();
    let slot = h.login("till", 0);
    h.send_order(slot, 1);
    h.send_unsequenced(slot, Recount::new(1, 1, 1, 0).with_client_seq(2).as_bytes());
    h.send_order(slot, 3);
    h.sequence_all();
    let t = h.now_ns;
    h.release(slot);

    let slot = h.login("till", 2);
    assert_eq!(
        h.take(slot),
        [
            Out::LoginAccepted { next_seq: 4 },
            Out::J(2, 101, b'P'),
            Out::K(3, 102, t),
        ]
    );
    // requested_seq = next, above next, and 0: no replay.
    for requested_seq in [4, 9, 0] {
        h.release_closed();
        let slot = h.login("till", requested_seq);
        assert_eq!(h.take(slot), [Out::LoginAccepted { next_seq: 4 }]);
    }
}

#[test]
fn a_replay_older_than_the_history_says_where_it_starts() {
    let mut h = Harness::new(); // 8 acks per client
    let slot = h.login("till", 0);
    for client_seq in 1..=10 {
        h.send_order(slot, client_seq);
    }
    h.sequence_all();
    h.release(slot);
    let slot = h.login("till", 1);
    let outs = h.take(slot);
    assert_eq!(outs[0], Out::LoginAccepted { next_seq: 11 });
    assert_eq!(
        outs[1],
        Out::Debug(
            "acks before client_seq 3 are no longer held; replay starts at client_seq 3".into()
        )
    );
    let replayed: Vec<u32> = outs[2..]
        .iter()
        .map(|out| match out {
            Out::K(client_seq, stream_seq, _) => {
                assert_eq!(u64::from(*client_seq) + 99, *stream_seq);
                *client_seq
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(replayed, (3..=10).collect::<Vec<_>>());
    assert_eq!(h.counters().acks_out.get(), 10 + 8);
}

#[test]
fn a_new_login_replaces_the_live_session() {
    let mut h = Harness::new();
    let old = h.login("till", 0);
    h.take(old);
    let new = h.login("till", 0);
    assert_eq!(
        h.take(old),
        [Out::Debug("replaced by a new login".into()), Out::Closed]
    );
    assert_eq!(h.take(new), [Out::LoginAccepted { next_seq: 1 }]);
    assert_eq!(h.counters().sessions_active.get(), 1);
    // Acks go to the new session.
    h.send_order(new, 1);
    h.sequence_all();
    assert_eq!(h.take(new), [Out::K(1, 100, h.now_ns)]);
    assert_eq!(h.take(old), []);
}

#[test]
fn login_accepted_waits_for_the_commands_in_flight() {
    let mut h = Harness::new();
    let old = h.login("till", 0);
    h.take(old);
    for client_seq in 1..=3 {
        h.send_order(old, client_seq);
    }
    let new = h.login("till", 1);
    assert_eq!(
        h.take(old),
        [Out::Debug("replaced by a new login".into()), Out::Closed]
    );
    assert_eq!(
        h.take(new),
        [],
        "3 commands in flight: next is not known yet"
    );
    assert_eq!(
        h.core.connection_state(new),
        Some(ConnectionState::AwaitingAcks)
    );
    // Frames the new session sends meanwhile wait.
    h.send_order(new, 4);
    assert_eq!(h.io.forwarded.len(), 3);

    let inbounds: Vec<Inbound> = h.io.forwarded.drain(..).collect();
    h.answer(&inbounds[0], OutcomeKind::Accepted);
    h.answer(&inbounds[1], OutcomeKind::Accepted);
    assert_eq!(h.take(new), []);
    h.answer(&inbounds[2], OutcomeKind::Accepted);
    let t = h.now_ns;
    assert_eq!(
        h.take(new),
        [
            Out::LoginAccepted { next_seq: 4 },
            Out::K(1, 100, t),
            Out::K(2, 101, t),
            Out::K(3, 102, t),
        ]
    );
    assert_eq!(h.take(old), []);
    h.service();
    assert_eq!(h.io.forwarded.front().map(|i| i.client_seq), Some(4));
}

// ---- rate limit -----------------------------------------------------------------

#[test]
fn over_the_rate_limit_is_answered_j_r() {
    let mut config = config();
    config.rate_limit_per_sec = 10; // one per 100 ms
    config.rate_burst = 3;
    let mut h = Harness::with(config, &[]);
    let slot = h.login("till", 0);
    h.take(slot);
    for client_seq in 1..=5 {
        h.send_order(slot, client_seq);
    }
    let reasons: Vec<u8> = h.io.forwarded.iter().map(|i| i.reject_reason).collect();
    assert_eq!(reasons, [0, 0, 0, RATE_LIMITED, RATE_LIMITED]);
    assert_gateway_reject(&h.io.forwarded[3], TILL, 4, RATE_LIMITED);
    h.sequence_all();
    let acks = h.take(slot);
    assert_eq!(acks[3], Out::J(4, 103, b'R'));
    assert_eq!(acks.len(), 5, "every message is answered");
    assert_eq!(h.counters().rate_limited.get(), 2);
    assert_eq!(h.counters().gateway_rejects.get(), 2);

    // 100 ms refills one token.
    h.advance(100 * MS);
    h.send_order(slot, 6);
    h.send_order(slot, 7);
    let reasons: Vec<u8> = h.io.forwarded.iter().map(|i| i.reject_reason).collect();
    assert_eq!(reasons, [0, RATE_LIMITED]);
}

// ---- heartbeats, timeouts, slow clients, logout ----------------------------------

#[test]
fn heartbeat_after_a_second_without_sending() {
    // Timers run every quarter interval: a heartbeat is up to 250 ms late.
    let mut h = Harness::new();
    let slot = h.login("till", 0);
    h.take(slot);
    h.advance(999 * MS); // timers run; next run at 1249 ms
    assert_eq!(h.take(slot), []);
    h.advance(251 * MS);
    assert_eq!(h.take(slot), [Out::Heartbeat]);
    assert_eq!(h.counters().heartbeats_sent.get(), 1);
    // Sending an ack counts as sending.
    h.advance(500 * MS); // 1750 ms; next run at 1999 ms
    h.send_order(slot, 1);
    h.sequence_all();
    assert_eq!(h.take(slot).len(), 1);
    h.advance(750 * MS); // 2500 ms: 750 ms since the ack
    assert_eq!(h.take(slot), []);
    h.advance(250 * MS); // 2750 ms: 1 s since the ack
    assert_eq!(h.take(slot), [Out::Heartbeat]);
}

#[test]
fn a_silent_peer_is_dropped_after_the_timeout() {
    let mut h = Harness::new();
    let talker = h.login("till", 0);
    let silent = h.login("ops", 0);
    let never_logged_in = h.connect();
    h.take(talker);
    h.take(silent);
    let heartbeat = frame(b'R', &[]);
    for _ in 0..14 {
        h.advance(SECOND);
        h.receive(talker, &heartbeat);
    }
    assert_eq!(h.counters().sessions_timed_out.get(), 0);
    h.advance(SECOND);
    h.receive(talker, &heartbeat);
    let outs = h.take(silent);
    assert!(outs
        .iter()
        .all(|o| *o == Out::Heartbeat || matches!(o, Out::Debug(_)) || *o == Out::Closed));
    assert!(
        matches!(&outs[outs.len() - 2], Out::Debug(text) if text.contains("nothing received for 15000 ms"))
    );
    assert_eq!(outs.last(), Some(&Out::Closed));
    // The login deadline (5 s) closed it long before the peer timeout.
    assert_eq!(h.take(never_logged_in).last(), Some(&Out::Closed));
    assert_eq!(h.counters().login_timeouts.get(), 1);
    assert_eq!(h.counters().sessions_timed_out.get(), 1);
    assert_eq!(
        h.core.connection_state(talker),
        Some(ConnectionState::LoggedIn)
    );
    assert!(h.take(talker).iter().all(|o| *o == Out::Heartbeat));
}

#[test]
fn a_full_send_buffer_closes_the_slow_client() {
    let mut h = Harness::new();
    let slot = h.login("till", 0);
    h.take(slot);
    h.send_order(slot, 1);
    h.io.full.insert(slot);
    h.sequence_all();
    h.io.full.remove(&slot);
    assert_eq!(h.take(slot), [Out::Closed]);
    assert_eq!(h.counters().slow_clients_closed.get(), 1);
    assert_eq!(
        h.core.last_sequenced(TILL),
        Some(1),
        "the ack is remembered"
    );
    h.release_closed();
    let slot = h.login("till", 1);
    assert_eq!(
        h.take(slot),
        [Out::LoginAccepted { next_seq: 2 }, Out::K(1, 100, h.now_ns)]
    );
}

#[test]
fn logout_closes() {
    let mut h = Harness::new();
    let slot = h.login("till", 0);
    h.take(slot);
    h.receive(slot, &frame(b'O', &[]));
    assert_eq!(h.take(slot), [Out::Closed]);
    assert_eq!(h.counters().protocol_errors.get(), 0);
    assert_eq!(h.counters().sessions_active.get(), 0);
}

// ---- back-pressure and framing ------------------------------------------------------

#[test]
fn a_full_sequencer_ring_stalls_the_connection_without_dropping() {
    let mut h = Harness::new();
    h.io.ring_capacity = 2;
    let slot = h.login("till", 0);
    h.take(slot);
    let mut bytes = Vec::new();
    for client_seq in 1..=5 {
        let order = Order::new(1, 1, 1, 1).with_client_seq(client_seq);
        bytes.extend_from_slice(&frame(b'U', order.as_bytes()));
    }
    h.receive(slot, &bytes);
    assert_eq!(h.io.forwarded.len(), 2);
    assert_eq!(h.counters().ring_full.get(), 1);
    h.service();
    assert_eq!(h.counters().ring_full.get(), 1, "one stall, counted once");

    let mut forwarded = Vec::new();
    for _ in 0..10 {
        forwarded.extend(h.sequence_all().iter().map(|i| i.client_seq));
        h.service();
    }
    assert_eq!(forwarded, [1, 2, 3, 4, 5]);
    assert_eq!(h.take(slot).len(), 5);
}

#[test]
fn a_stalled_connection_takes_only_its_backlog_then_overflow_closes_it() {
    let mut config = config();
    config.recv_buffer_bytes = 1024;
    let backlog = config.receive_backlog_bytes();
    assert_eq!(backlog, 4 * 1024 + 2 + 256);
    let mut h = Harness::with(config, &[]);
    h.io.ring_capacity = 0;
    let slot = h.login("till", 0);
    h.take(slot);
    let order = Order::new(1, 1, 1, 1).with_client_seq(1);
    let one = frame(b'U', order.as_bytes());
    let many: Vec<u8> = one.iter().copied().cycle().take(backlog * 2).collect();
    let taken = h.core.on_data(&mut h.io, slot, &many, h.now_ns);
    assert_eq!(taken, backlog, "the backlog is bounded");
    h.core.on_receive_overflow(&mut h.io, slot, h.now_ns);
    let outs = h.take(slot);
    assert!(
        matches!(&outs[..], [Out::Debug(text), Out::Closed] if text.contains("receive buffer full"))
    );
    assert_eq!(h.counters().receive_overflows.get(), 1);
    assert_eq!(h.counters().protocol_errors.get(), 0);
}

#[test]
fn a_large_backlog_behind_a_full_ring_stalls_the_network() {
    let mut config = config();
    config.recv_buffer_bytes = 1024;
    // Backlog 4 × 1024 + 258; stalled above 3 × 1024 buffered.
    let mut h = Harness::with(config, &[]);
    h.io.ring_capacity = 0;
    let slot = h.login("till", 0);
    h.take(slot);
    let one = frame(b'U', Order::new(1, 1, 1, 1).with_client_seq(1).as_bytes());
    let chunk: Vec<u8> = one.iter().copied().cycle().take(1024).collect();
    for _ in 0..3 {
        h.receive(slot, &chunk);
        assert!(!h.core.is_stalled(), "room for another receive");
    }
    h.receive(slot, &one);
    assert!(h.core.is_stalled());
    h.io.ring_capacity = 1000;
    h.service();
    assert!(!h.core.is_stalled(), "64 frames handled: room again");
    assert_eq!(
        h.io.forwarded.len(),
        1,
        "the rest are duplicates of client_seq 1"
    );
}

#[test]
fn frames_split_at_every_byte_are_reassembled() {
    let mut h = Harness::new();
    let slot = h.connect();
    let mut login = [0u8; 64];
    let len = soup::write_login_request(&mut login, "till", "pw", Session::BLANK, 0).unwrap();
    for byte in &login[..len] {
        h.receive(slot, std::slice::from_ref(byte));
    }
    h.answer_auth();
    assert_eq!(h.take(slot), [Out::LoginAccepted { next_seq: 1 }]);
    let order = frame(b'U', Order::new(1, 1, 1, 1).with_client_seq(1).as_bytes());
    for byte in &order {
        h.receive(slot, std::slice::from_ref(byte));
    }
    assert_eq!(h.io.forwarded.len(), 1);
}

#[test]
fn service_bounds_the_frames_per_connection_per_call() {
    let mut h = Harness::new();
    h.io.ring_capacity = 1000;
    let slot = h.connect();
    let mut bytes = Vec::new();
    let mut login = [0u8; 64];
    let len = soup::write_login_request(&mut login, "till", "pw", Session::BLANK, 0).unwrap();
    bytes.extend_from_slice(&login[..len]);
    for client_seq in 1..=100 {
        let order = Order::new(1, 1, 1, 1).with_client_seq(client_seq);
        bytes.extend_from_slice(&frame(b'U', order.as_bytes()));
    }
    h.receive(slot, &bytes);
    h.answer_auth();
    assert_eq!(h.service(), FRAMES_PER_SLOT_PER_SERVICE);
    assert_eq!(h.io.forwarded.len(), FRAMES_PER_SLOT_PER_SERVICE);
    h.service();
    assert_eq!(h.io.forwarded.len(), 100);
}

// ---- recovery -------------------------------------------------------------------------

#[test]
fn recovery_rebuilds_next_client_seq_and_the_ack_history() {
    let acks: Vec<(u32, AckRecord)> = (1..=3)
        .map(|client_seq| {
            (
                client_seq,
                AckRecord {
                    stream_seq: u64::from(client_seq) * 10,
                    timestamp_ns: 5,
                    reject_reason: if client_seq == 2 { b'P' } else { 0 },
                },
            )
        })
        .collect();
    let recovery = [ClientRecovery {
        client_id: TILL,
        last_client_seq: 3,
        acks,
    }];
    let mut h = Harness::with(config(), &recovery);
    assert_eq!(h.core.last_sequenced(TILL), Some(3));
    let slot = h.login("till", 1);
    assert_eq!(
        h.take(slot),
        [
            Out::LoginAccepted { next_seq: 4 },
            Out::K(1, 10, 5),
            Out::J(2, 20, b'P'),
            Out::K(3, 30, 5),
        ]
    );
    h.send_order(slot, 3);
    assert!(
        h.io.forwarded.is_empty(),
        "3 was sequenced before the restart"
    );
    h.send_order(slot, 4);
    assert_eq!(h.io.forwarded.len(), 1);
}

#[test]
fn recovery_with_a_last_client_seq_beyond_the_acks_replays_nothing_older() {
    let recovery = [ClientRecovery {
        client_id: OPS,
        last_client_seq: 50,
        acks: vec![(1, AckRecord::default())],
    }];
    let mut h = Harness::with(config(), &recovery);
    let slot = h.login("ops", 1);
    assert_eq!(
        h.take(slot),
        [
            Out::LoginAccepted { next_seq: 51 },
            Out::Debug(
                "acks before client_seq 51 are no longer held; replay starts at client_seq 51"
                    .into()
            ),
        ]
    );
}

#[test]
fn recover_ack_per_journaled_message_keeps_the_newest() {
    let mut core = GatewayCore::new(&config(), GatewayCounters::in_memory(), &[]).unwrap();
    for client_seq in 1..=20u32 {
        let record = AckRecord {
            stream_seq: u64::from(client_seq),
            ..AckRecord::default()
        };
        core.recover_ack(WAREHOUSE, client_seq, record).unwrap();
    }
    assert_eq!(core.last_sequenced(WAREHOUSE), Some(20));
    assert_eq!(
        core.recover_ack(WAREHOUSE, 20, AckRecord::default()),
        Err(RecoveryError::OutOfOrder {
            client_id: WAREHOUSE,
            client_seq: 20,
            last_client_seq: 20
        })
    );
    assert_eq!(
        core.recover_ack(77, 1, AckRecord::default()),
        Err(RecoveryError::UnknownClient(77))
    );
    core.recover_last_client_seq(WAREHOUSE, 10).unwrap(); // lower: no change
    assert_eq!(core.last_sequenced(WAREHOUSE), Some(20));
    core.on_accept(START_NS).unwrap();
    assert_eq!(
        core.recover_ack(WAREHOUSE, 21, AckRecord::default()),
        Err(RecoveryError::AfterStart)
    );
}

#[test]
fn history_wraps_around_its_capacity() {
    let mut h = Harness::new(); // 8 per client
    let slot = h.login("wh", 0);
    for client_seq in 1..=30 {
        let directory =
            SkuDirectory::new(client_seq, *b"X               ").with_client_seq(client_seq);
        h.send_unsequenced(slot, directory.as_bytes());
        h.sequence_all();
    }
    h.release(slot);
    let slot = h.login("wh", 25);
    let outs = h.take(slot);
    let replayed: Vec<(u32, u64)> = outs[1..]
        .iter()
        .map(|o| match o {
            Out::K(client_seq, stream_seq, _) => (*client_seq, *stream_seq),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        replayed,
        (25..=30)
            .map(|s| (s, u64::from(s) + 99))
            .collect::<Vec<_>>()
    );
}
