//! The inventory replica: allocation-free apply, digests, snapshot files,
//! memory at 1 M SKUs × 16 locations, and property tests over event
//! sequences.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell as StdCell;
use std::collections::HashMap;

use proptest::prelude::*;
use tally_client::replica::{Applied, Replica, ReplicaLimits};
use tally_client::snapshot::{self, SnapshotError};
use tally_wire::{
    delta_reason, hold_outcome, pad_ascii, reject_reason, system_code, CancelOrder,
    CommandRejected, ConfirmHold, GatewayReject, HoldEnded, HoldPlaced, InventoryLevel,
    LocationDirectory, Message, ModifyOrder, OnHandDelta, Order, Recount, ReleaseHold, Reserve,
    SkuDirectory, SystemEvent, Transfer,
};

// ---------------------------------------------------------------------------
// A per-thread counting allocator.

struct Counting;

thread_local! {
    static ALLOCATIONS: StdCell<u64> = const { StdCell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(|a| a.get())
}

// ---------------------------------------------------------------------------
// Stream building.

fn sym(s: &str) -> [u8; 16] {
    pad_ascii(s).unwrap()
}

/// A stream as the warehouse would produce it: directories, levels, and a
/// run of orders, modifies, cancels, holds, confirms, releases, expiries,
/// transfers, recounts and rejects from several origins.
fn realistic_stream(orders: u64) -> Vec<Vec<u8>> {
    let mut s: Vec<Vec<u8>> = Vec::new();
    let mut push = |bytes: &[u8]| {
        s.push(bytes.to_vec());
        s.len() as u64
    };
    for l in 1..=4u16 {
        push(LocationDirectory::new(l, sym(&format!("STORE-{l}"))).as_bytes());
    }
    for k in 1..=50u32 {
        push(SkuDirectory::new(k, sym(&format!("SKU-{k}"))).as_bytes());
    }
    for k in 1..=50u32 {
        for l in 1..=4u16 {
            push(InventoryLevel::new(l, k, 1_000_000, 0).as_bytes());
        }
    }
    push(SystemEvent::new(system_code::AUTHORITY_ONLINE).as_bytes());
    for i in 0..orders {
        let origin = 1 + (i % 7) as u16;
        let l = 1 + (i % 4) as u16;
        let k = 1 + (i % 50) as u32;
        let o = push(Order::new(i, l, k, 3).with_origin(origin).as_bytes());
        push(OnHandDelta::new(l, k, -3, delta_reason::ORDER, o).as_bytes());
        match i % 6 {
            0 => {
                let m = push(ModifyOrder::new(i, 1).with_origin(origin).as_bytes());
                push(OnHandDelta::new(l, k, 2, delta_reason::MODIFY, m).as_bytes());
            }
            1 => {
                let x = push(CancelOrder::new(i).with_origin(origin).as_bytes());
                push(OnHandDelta::new(l, k, 3, delta_reason::CANCEL, x).as_bytes());
            }
            2 => {
                let v = push(
                    Reserve::new(i, l, k, 2, 1000)
                        .with_origin(origin)
                        .as_bytes(),
                );
                push(HoldPlaced::new(v, l, k, 2, 1_000_000 + i).as_bytes());
                let c = push(ConfirmHold::new(i).with_origin(origin).as_bytes());
                push(HoldEnded::new(v, l, k, 2, hold_outcome::CONFIRMED).as_bytes());
                push(OnHandDelta::new(l, k, -2, delta_reason::HOLD_CONFIRMED, c).as_bytes());
            }
            3 => {
                let v = push(
                    Reserve::new(i, l, k, 2, 1000)
                        .with_origin(origin)
                        .as_bytes(),
                );
                push(HoldPlaced::new(v, l, k, 2, 1_000_000 + i).as_bytes());
                if i % 12 == 3 {
                    push(ReleaseHold::new(i).with_origin(origin).as_bytes());
                    push(HoldEnded::new(v, l, k, 2, hold_outcome::RELEASED).as_bytes());
                } else {
                    push(HoldEnded::new(v, l, k, 2, hold_outcome::EXPIRED).as_bytes());
                }
            }
            4 => {
                let to = 1 + ((i + 1) % 4) as u16;
                let t = push(Transfer::new(i, l, to, k, 1).with_origin(9).as_bytes());
                push(OnHandDelta::new(l, k, -1, delta_reason::TRANSFER, t).as_bytes());
                push(OnHandDelta::new(to, k, 1, delta_reason::TRANSFER, t).as_bytes());
            }
            _ => {
                if i % 12 == 5 {
                    let q = push(Recount::new(l, k, 999_000, 0).with_origin(9).as_bytes());
                    push(InventoryLevel::new(l, k, 999_000, 0).as_bytes());
                    push(CommandRejected::new(q + 5, reject_reason::NO_SUCH).as_bytes());
                } else {
                    let o = push(Order::new(i, l, k, 0).with_origin(origin).as_bytes());
                    push(CommandRejected::new(o, reject_reason::INVALID_QUANTITY).as_bytes());
                    push(
                        GatewayReject::new(reject_reason::WRONG_LENGTH)
                            .with_origin(origin)
                            .as_bytes(),
                    );
                }
            }
        }
    }
    s
}

fn apply_all(replica: &mut Replica, stream: &[Vec<u8>], from_seq: u64) {
    for (i, bytes) in stream.iter().enumerate() {
        let seq = i as u64 + 1;
        if seq >= from_seq {
            replica.apply(seq, &Message::parse(bytes).unwrap());
        }
    }
}

// ---------------------------------------------------------------------------

#[test]
fn apply_does_not_allocate() {
    let stream = realistic_stream(5000);
    let messages: Vec<Message> = stream.iter().map(|b| Message::parse(b).unwrap()).collect();
    let mut replica = Replica::new(ReplicaLimits {
        orders_max: 1024, // small, so the history evicts too
        ..ReplicaLimits::small()
    });
    let before = allocations();
    for (i, message) in messages.iter().enumerate() {
        replica.apply(i as u64 + 1, message);
    }
    let digest = replica.digest();
    let mug = replica.cell(1, 1).unwrap();
    let depleted = replica.depleted().count();
    let available = replica.available_by_symbol("SKU-7");
    let after = allocations();
    assert_eq!(after - before, 0, "apply allocated");
    assert_ne!(digest, 0);
    assert!(mug.on_hand > 0 && depleted == 0 && available.is_some());
    let c = replica.counters();
    assert_eq!(c.violations, 0);
    assert_eq!(c.unattributed, 0);
    assert_eq!(c.pending_evicted, 0);
    assert!(c.ids_evicted > 0);
    assert_eq!(replica.pending_count(), 0, "every command was answered");
    assert_eq!(replica.hold_count(), 0);
}

#[test]
fn digests_agree_across_limits_and_join_points_and_differ_on_any_change() {
    let stream = realistic_stream(600);
    let mut a = Replica::new(ReplicaLimits::small());
    let mut b = Replica::new(ReplicaLimits {
        skus_max: 100,
        locations_max: 5,
        // Below 100 × 5: stored sparsely, digest as the dense one.
        cells_max: 300,
        holds_max: 64,
        orders_max: 50,
        pending_max: 128,
    });
    apply_all(&mut a, &stream, 1);
    apply_all(&mut b, &stream, 1);
    assert_eq!(a.last_seq(), b.last_seq());
    assert_eq!(a.digest(), b.digest());

    // Layout independence: SKUs registered in the opposite order.
    let mut reversed: Vec<Vec<u8>> = stream.clone();
    reversed[4..54].reverse(); // the 50 R messages
    let mut c = Replica::new(ReplicaLimits::small());
    apply_all(&mut c, &reversed, 1);
    assert_eq!(c.digest(), a.digest());

    // One unit different anywhere: different digest.
    let mut changed = stream.clone();
    let last_delta = changed.iter().rposition(|m| m[0] == b'D').expect("a delta");
    let d = OnHandDelta::parse_copy(&changed[last_delta]);
    changed[last_delta] = OnHandDelta::new(
        d.location.get(),
        d.sku.get(),
        d.delta.get() - 1,
        d.reason,
        d.cmd_seq.get(),
    )
    .as_bytes()
    .to_vec();
    let mut e = Replica::new(ReplicaLimits::small());
    apply_all(&mut e, &changed, 1);
    assert_ne!(e.digest(), a.digest());

    // The same quantities at a different version: different digest.
    let zero = OnHandDelta::new(1, 1, 0, delta_reason::ADJUST, 0);
    let pause = SystemEvent::new(system_code::END_OF_SESSION);
    let n = stream.len() as u64;
    let mut f = Replica::new(ReplicaLimits::small());
    apply_all(&mut f, &stream, 1);
    f.apply(n + 1, &Message::parse(zero.as_bytes()).unwrap());
    let mut g = Replica::new(ReplicaLimits::small());
    apply_all(&mut g, &stream, 1);
    g.apply(n + 1, &Message::parse(pause.as_bytes()).unwrap());
    g.apply(n + 2, &Message::parse(zero.as_bytes()).unwrap());
    assert_eq!(f.cell(1, 1).unwrap().on_hand, g.cell(1, 1).unwrap().on_hand);
    assert_ne!(f.digest(), g.digest());
}

trait ParseCopy: Sized {
    fn parse_copy(bytes: &[u8]) -> Self;
}

impl ParseCopy for OnHandDelta {
    fn parse_copy(bytes: &[u8]) -> Self {
        *<OnHandDelta as tally_wire::WireMessage>::parse(bytes).unwrap()
    }
}

#[test]
fn snapshot_round_trip_then_both_continue_identically() {
    let stream = realistic_stream(2000);
    let cut = stream.len() * 2 / 3;
    let mut live = Replica::new(ReplicaLimits::small());
    apply_all(&mut live, &stream[..cut], 1);
    // Leave a command unanswered across the snapshot, and an open hold.
    let v = Reserve::new(777_777, 2, 3, 5, 1000).with_origin(4);
    live.apply(cut as u64 + 1, &Message::parse(v.as_bytes()).unwrap());
    let o = Order::new(888_888, 1, 1, 1).with_origin(4);
    live.apply(cut as u64 + 2, &Message::parse(o.as_bytes()).unwrap());
    let h = HoldPlaced::new(cut as u64 + 1, 2, 3, 5, 42);
    live.apply(cut as u64 + 3, &Message::parse(h.as_bytes()).unwrap());
    assert!(live.is_pending(cut as u64 + 2));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.snap");
    let bytes = snapshot::save(&path, &live, b"SESSION042", [1, 2, 3, 4]).unwrap();
    assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
    let info = snapshot::read_info(&path).unwrap();
    assert_eq!(info.seq, live.last_seq());
    assert_eq!(&info.session, b"SESSION042");
    assert_eq!(info.app, [1, 2, 3, 4]);

    let (mut loaded, info) = snapshot::load(&path, ReplicaLimits::small()).unwrap();
    assert_eq!(info.seq, live.last_seq());
    assert_eq!(loaded.last_seq(), live.last_seq());
    assert_eq!(loaded.digest(), live.digest());
    assert_eq!(loaded.counters(), live.counters());
    assert_eq!(loaded.hold(cut as u64 + 1), live.hold(cut as u64 + 1));
    assert_eq!(loaded.hold_by_client(4, 777_777).unwrap().qty, 5);
    assert_eq!(loaded.order(3, 1000), live.order(3, 1000));
    assert!(loaded.is_pending(cut as u64 + 2));
    assert_eq!(loaded.pending_count(), live.pending_count());
    assert_eq!(loaded.symbol(7), Some(&b"SKU-7"[..]));
    assert_eq!(loaded.sku_by_symbol("SKU-7"), Some(7));
    assert_eq!(loaded.next_expiry(), live.next_expiry());

    // Both continue with the same events, including the answer to the
    // pending order and the end of the hold.
    let mut rest: Vec<Vec<u8>> = vec![
        OnHandDelta::new(1, 1, -1, delta_reason::ORDER, cut as u64 + 2)
            .as_bytes()
            .to_vec(),
        HoldEnded::new(cut as u64 + 1, 2, 3, 5, hold_outcome::EXPIRED)
            .as_bytes()
            .to_vec(),
    ];
    rest.extend(stream[cut..].iter().cloned());
    let base = live.last_seq();
    for (i, bytes) in rest.iter().enumerate() {
        let m = Message::parse(bytes).unwrap();
        let a = live.apply(base + 1 + i as u64, &m);
        let b = loaded.apply(base + 1 + i as u64, &m);
        assert_eq!(a, b);
    }
    assert_eq!(loaded.digest(), live.digest());
    assert_eq!(loaded.order(4, 888_888).unwrap().qty, 1);
    assert_eq!(loaded.pending_count(), live.pending_count());

    // Re-applying the overlap is harmless.
    let again = loaded.apply(base + 1, &Message::parse(&rest[0]).unwrap());
    assert_eq!(again, Applied::Ignored);
}

#[test]
fn corrupt_truncated_or_foreign_snapshots_are_refused() {
    let stream = realistic_stream(200);
    let mut r = Replica::new(ReplicaLimits::small());
    apply_all(&mut r, &stream, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.snap");
    snapshot::save(&path, &r, b"SESSION001", [0; 4]).unwrap();
    let good = std::fs::read(&path).unwrap();
    let bad = dir.path().join("bad.snap");
    let limits = ReplicaLimits::small();

    // A flipped bit anywhere in the body: checksum mismatch.
    for at in [200usize, good.len() / 2, good.len() - 20] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x10;
        std::fs::write(&bad, &bytes).unwrap();
        let err = snapshot::load(&bad, limits).unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::ChecksumMismatch { .. } | SnapshotError::Invalid(_)
            ),
            "flip at {at}: {err}"
        );
    }
    // Cut short anywhere: truncated.
    for len in [0usize, 7, 100, 128, 500, good.len() / 2, good.len() - 1] {
        std::fs::write(&bad, &good[..len]).unwrap();
        let err = snapshot::load(&bad, limits).unwrap_err();
        assert!(
            matches!(err, SnapshotError::Truncated),
            "cut at {len}: {err}"
        );
        assert!(err.to_string().contains("truncated"));
    }
    // Extra bytes after the checksum.
    let mut long = good.clone();
    long.push(0);
    std::fs::write(&bad, &long).unwrap();
    assert!(matches!(
        snapshot::load(&bad, limits),
        Err(SnapshotError::Invalid(_))
    ));
    // Not a snapshot.
    let mut foreign = good.clone();
    foreign[..8].copy_from_slice(b"NOTSNAPS");
    std::fs::write(&bad, &foreign).unwrap();
    assert!(matches!(
        snapshot::load(&bad, limits),
        Err(SnapshotError::BadMagic)
    ));
    // A future format.
    let mut future = good.clone();
    future[8] = 9;
    std::fs::write(&bad, &future).unwrap();
    assert!(matches!(
        snapshot::load(&bad, limits),
        Err(SnapshotError::UnsupportedVersion(9))
    ));
    // Too big for the replica asked for.
    let small = ReplicaLimits {
        skus_max: 10,
        ..limits
    };
    let err = snapshot::load(&path, small).unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotError::TooLarge {
                what: "SKUs",
                count: 50,
                max: 10
            }
        ),
        "{err}"
    );
    // Missing file.
    assert!(matches!(
        snapshot::load(&dir.path().join("none"), limits),
        Err(SnapshotError::Io(_))
    ));
    // The good one still loads, and saving replaced no file partially.
    assert!(snapshot::load(&path, limits).is_ok());
    assert!(!dir.path().join("replica.snap.tmp").exists());
}

/// 1 M SKUs × 16 locations, with room for 64 Ki holds, 1 Mi client ids and
/// 64 Ki pending commands.
fn million_limits() -> ReplicaLimits {
    ReplicaLimits {
        skus_max: 1_000_000,
        locations_max: 16,
        cells_max: 16_000_000,
        holds_max: 1 << 16,
        orders_max: 1 << 20,
        pending_max: 1 << 16,
    }
}

#[test]
fn a_million_skus_by_16_locations_fit_in_512_mib() {
    let replica = Replica::new(million_limits());
    let bytes = replica.memory_bytes();
    eprintln!(
        "replica 1M x 16: {} bytes ({:.1} MiB)",
        bytes,
        bytes as f64 / (1 << 20) as f64
    );
    assert!(bytes < 512 << 20, "{bytes} bytes");
    // The cells alone are 16 bytes each.
    assert!(bytes >= 16_000_000 * 16);
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Fills every one of the 16 M cells through `apply` and measures the
/// process's resident memory. Run alone, optimised:
/// `cargo test --release -p tally-apps --test replica -- --ignored --nocapture rss`.
#[test]
#[ignore = "allocates and touches ~350 MiB; run alone with --release"]
fn rss_of_a_full_million_by_16_replica_is_under_512_mib() {
    let before = rss_bytes();
    let mut replica = Replica::new(million_limits());
    let mut seq = 0u64;
    let mut apply = |replica: &mut Replica, bytes: &[u8]| {
        seq += 1;
        replica.apply(seq, &Message::parse(bytes).unwrap());
    };
    for l in 1..=16u16 {
        apply(
            &mut replica,
            LocationDirectory::new(l, sym(&format!("STORE-{l:02}"))).as_bytes(),
        );
    }
    for k in 1..=1_000_000u32 {
        apply(
            &mut replica,
            SkuDirectory::new(k, sym(&format!("SKU-{k:07}"))).as_bytes(),
        );
    }
    for k in 1..=1_000_000u32 {
        for l in 1..=16u16 {
            apply(
                &mut replica,
                InventoryLevel::new(l, k, k % 100, 0).as_bytes(),
            );
        }
    }
    let after = rss_bytes();
    assert_eq!(replica.sku_count(), 1_000_000);
    assert_eq!(replica.cell(16, 1_000_000).unwrap().on_hand, 0);
    eprintln!(
        "RSS before {:.1} MiB, after {:.1} MiB, growth {:.1} MiB; accounted {:.1} MiB",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after - before) as f64 / 1048576.0,
        replica.memory_bytes() as f64 / 1048576.0
    );
    assert!(after < 512 << 20, "RSS {after} bytes");
}

// ---------------------------------------------------------------------------
// Property tests.

/// A reference model of the cells and holds of a correct stream.
#[derive(Default)]
struct Model {
    cells: HashMap<(u16, u32), (u32, u32)>,
    holds: HashMap<u64, (u16, u32, u32)>,
}

/// Turns intents into events a correct warehouse could emit (never making a
/// cell negative), applying each to the model.
fn valid_stream(intents: &[(u8, u8, u8, u16)]) -> (Vec<Vec<u8>>, Model) {
    let mut model = Model::default();
    let mut stream: Vec<Vec<u8>> = Vec::new();
    for &(op, a, b, c) in intents {
        let seq = stream.len() as u64 + 1;
        let location = 1 + u16::from(a % 4);
        let sku = 1 + u32::from(b % 5);
        let (on_hand, reserved) = *model.cells.get(&(location, sku)).unwrap_or(&(0, 0));
        let available = on_hand - reserved;
        let bytes: Vec<u8> = match op % 9 {
            0 => LocationDirectory::new(location, sym(&format!("L{c}")))
                .as_bytes()
                .to_vec(),
            1 => SkuDirectory::new(sku, sym(&format!("S{c}")))
                .as_bytes()
                .to_vec(),
            2 => {
                let new = (u32::from(c) % 100).max(reserved);
                model.cells.insert((location, sku), (new, reserved));
                InventoryLevel::new(location, sku, new, reserved)
                    .as_bytes()
                    .to_vec()
            }
            3 => {
                let span = i64::from(available) + 50;
                let delta = (i64::from(c) % (span + 1) - i64::from(available)) as i32;
                model
                    .cells
                    .insert((location, sku), ((on_hand as i32 + delta) as u32, reserved));
                OnHandDelta::new(location, sku, delta, delta_reason::ADJUST, 0)
                    .as_bytes()
                    .to_vec()
            }
            4 if available > 0 => {
                let qty = 1 + u32::from(c) % available;
                model
                    .cells
                    .insert((location, sku), (on_hand, reserved + qty));
                model.holds.insert(seq, (location, sku, qty));
                HoldPlaced::new(seq, location, sku, qty, u64::from(c))
                    .as_bytes()
                    .to_vec()
            }
            5 if !model.holds.is_empty() => {
                let mut keys: Vec<u64> = model.holds.keys().copied().collect();
                keys.sort();
                let key = keys[usize::from(c) % keys.len()];
                let (l, k, qty) = model.holds.remove(&key).unwrap();
                let cell = model.cells.get_mut(&(l, k)).unwrap();
                cell.1 -= qty;
                let outcome = [hold_outcome::RELEASED, hold_outcome::EXPIRED][usize::from(a % 2)];
                HoldEnded::new(key, l, k, qty, outcome).as_bytes().to_vec()
            }
            6 => CommandRejected::new(u64::from(c), reject_reason::INSUFFICIENT)
                .as_bytes()
                .to_vec(),
            7 => Order::new(u64::from(c), location, sku, u32::from(a))
                .with_origin(u16::from(b))
                .as_bytes()
                .to_vec(),
            _ => SystemEvent::new(system_code::START_OF_SESSION)
                .as_bytes()
                .to_vec(),
        };
        stream.push(bytes);
    }
    (stream, model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Events a correct authority could emit: the replica matches the model,
    /// counts no violation, and another replica with other limits agrees.
    #[test]
    fn valid_event_sequences_match_the_model(
        intents in proptest::collection::vec(any::<(u8, u8, u8, u16)>(), 1..300)
    ) {
        let (stream, model) = valid_stream(&intents);
        let mut r = Replica::new(ReplicaLimits::small());
        apply_all(&mut r, &stream, 1);
        prop_assert_eq!(r.oversold(), 0);
        for (&(l, k), &(on_hand, reserved)) in &model.cells {
            let cell = r.cell(l, k).unwrap();
            prop_assert_eq!((cell.on_hand, cell.reserved), (on_hand, reserved));
            prop_assert_eq!(cell.available, on_hand - reserved);
        }
        prop_assert_eq!(r.hold_count() as usize, model.holds.len());
        let mut other = Replica::new(ReplicaLimits {
            skus_max: 5, locations_max: 4, cells_max: 20, holds_max: 300, orders_max: 2, pending_max: 2,
        });
        apply_all(&mut other, &stream, 1);
        prop_assert_eq!(other.digest(), r.digest());
    }

    /// Arbitrary events, most of them wrong, into tiny tables: no panic, no
    /// wrapped quantity (violations are counted), and the snapshot of
    /// whatever state results round-trips.
    #[test]
    fn arbitrary_event_sequences_never_panic_or_wrap(
        events in proptest::collection::vec(
            (0u8..12, any::<u16>(), any::<u32>(), any::<u32>(), any::<u64>()), 1..200)
    ) {
        let limits = ReplicaLimits {
            skus_max: 3, locations_max: 2, cells_max: 6, holds_max: 2, orders_max: 2, pending_max: 4,
        };
        let mut r = Replica::new(limits);
        let mut negative_attempts = 0u64;
        for (i, &(op, l, k, q, x)) in events.iter().enumerate() {
            let l = l % 4; // 0 is never a location
            let k = k % 5;
            let d = (q as i32) % 40;
            let bytes: Vec<u8> = match op {
                0 => LocationDirectory::new(l, sym("X")).as_bytes().to_vec(),
                1 => SkuDirectory::new(k, sym(["A", "B", "C"][(q % 3) as usize])).as_bytes().to_vec(),
                2 => InventoryLevel::new(l, k, q % 50, (x % 60) as u32).as_bytes().to_vec(),
                3 => OnHandDelta::new(l, k, d, [b'O', b'M', b'X', b'T', b'A'][(q % 5) as usize], x % 8)
                    .as_bytes().to_vec(),
                4 => HoldPlaced::new((x % 8) | ((q as u64 & 1) << 63), l, k, q % 30, x).as_bytes().to_vec(),
                5 => HoldEnded::new(x % 8, l, k, q % 30, [b'C', b'R', b'X'][(q % 3) as usize])
                    .as_bytes().to_vec(),
                6 => CommandRejected::new(x % 8, b'I').as_bytes().to_vec(),
                7 => Order::new(x % 3, l, k, q % 5).with_origin(l).as_bytes().to_vec(),
                8 => ModifyOrder::new(x % 3, q % 5).with_origin(l).as_bytes().to_vec(),
                9 => ReleaseHold::new(x % 3).with_origin(l).as_bytes().to_vec(),
                10 => Reserve::new(x % 3, l, k, q % 5, 1).with_origin(l).as_bytes().to_vec(),
                _ => GatewayReject::new(b'W').as_bytes().to_vec(),
            };
            if let Some(cell) = r.cell(l, k) {
                if op == 3 && i64::from(cell.on_hand) + i64::from(d) < 0 {
                    negative_attempts += 1;
                }
            }
            r.apply(i as u64 + 1, &Message::parse(&bytes).unwrap());
        }
        prop_assert!(r.oversold() >= negative_attempts);
        prop_assert!(r.sku_count() <= 3 && r.location_count() <= 2 && r.hold_count() <= 2);
        let _ = r.digest();
        let _ = r.depleted().count();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        snapshot::save(&path, &r, b"SESSION001", [0; 4]).unwrap();
        let (loaded, _) = snapshot::load(&path, limits).unwrap();
        prop_assert_eq!(loaded.digest(), r.digest());
        prop_assert_eq!(loaded.last_seq(), r.last_seq());
    }
}
