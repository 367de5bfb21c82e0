use tally_wire::{
    delta_reason, hold_outcome, pad_ascii, CancelOrder, HoldEnded, HoldPlaced, InventoryLevel,
    LocationDirectory, Message, ModifyOrder, OnHandDelta, Order, ReleaseHold, SkuDirectory,
};

use super::*;

fn msg(bytes: &[u8]) -> Message<'_> {
    Message::parse(bytes).unwrap()
}

fn sym(s: &str) -> [u8; 16] {
    pad_ascii(s).unwrap()
}

#[test]
fn slot_index_backward_shift_keeps_every_key_reachable() {
    // Homes chosen to collide and wrap around a 16-bucket index (the
    // low bits pick the bucket, the high bits keep the hashes distinct).
    let homes = [15u64, 15, 0, 15, 1, 0, 14, 2];
    let hash = |s: u32| homes[s as usize] | (u64::from(s) << 8);
    let mut index = SlotIndex::<Tagged>::with_entries_max(8);
    for s in 0..8u32 {
        index.insert(hash(s), s);
    }
    let mut gone = Vec::new();
    for removed in [3u32, 0, 7, 4, 6] {
        assert!(index.remove(hash(removed), removed));
        assert!(!index.remove(hash(removed), removed));
        gone.push(removed);
        for s in 0..8u32 {
            let found = index.find(hash(s), |x| x == s);
            assert_eq!(
                found.is_none(),
                gone.contains(&s),
                "slot {s} after {gone:?}"
            );
        }
    }
    assert_eq!(index.len, 3);
}

#[test]
fn compact_index_backward_shift_keeps_every_key_reachable() {
    let homes = [15u64, 15, 0, 15, 1, 0, 14, 2];
    let hash = |s: u32| homes[s as usize] | (u64::from(s) << 8);
    let mut index = CompactIndex::with_entries_max(8);
    for s in 0..8u32 {
        index.insert(hash(s), s);
    }
    let mut gone = Vec::new();
    for removed in [3u32, 0, 7, 4, 6] {
        assert!(index.remove(hash(removed), removed, hash));
        assert!(!index.remove(hash(removed), removed, hash));
        gone.push(removed);
        for s in 0..8u32 {
            let found = index.find(hash(s), |x| x == s);
            assert_eq!(
                found.is_none(),
                gone.contains(&s),
                "slot {s} after {gone:?}"
            );
        }
    }
    assert_eq!(index.len, 3);
}

#[test]
fn a_store_node_keeps_its_locations_densely_and_matches_the_subset_digest() {
    let limits = ReplicaLimits {
        skus_max: 100,
        locations_max: 8,
        cells_max: 200,
        ..ReplicaLimits::small()
    };
    let mut full = Replica::new(limits);
    let mut node = Replica::keeping(limits, LocationSet::of(&[5, 3]));
    let mut late = Replica::new(limits);
    late.keep_only(LocationSet::of(&[5, 3]));
    // Two kept locations × 100 SKUs fit cells_max: dense, no index.
    assert_eq!(node.cells.dense_width, Some(2));
    assert_eq!(late.cells.dense_width, Some(2));
    assert!(node.memory_bytes() < full.memory_bytes());
    let mut seq = 0;
    let mut feed = |bytes: &[u8]| {
        seq += 1;
        for r in [&mut full, &mut node, &mut late] {
            r.apply(seq, &msg(bytes));
        }
    };
    for l in 1..=6u16 {
        feed(LocationDirectory::new(l, sym(&format!("L{l}"))).as_bytes());
    }
    for sku in 0..50u32 {
        feed(SkuDirectory::new(1000 + sku, sym(&format!("S{sku}"))).as_bytes());
        // Two locations per SKU; 3 and 5 take their columns in the
        // order their first cell event comes.
        let (a, b) = (1 + (sku % 6) as u16, 1 + ((sku + 2) % 6) as u16);
        feed(InventoryLevel::new(a, 1000 + sku, sku + 1, 0).as_bytes());
        feed(InventoryLevel::new(b, 1000 + sku, 2 * sku, 0).as_bytes());
    }
    feed(OnHandDelta::new(5, 1004, -1, delta_reason::ADJUST, 0).as_bytes());
    feed(HoldPlaced::new(77, 3, 1002, 1, 9).as_bytes());
    let set = LocationSet::of(&[3, 5]);
    assert_eq!(node.digest(), full.digest_of(&set));
    assert_eq!(late.digest(), full.digest_of(&set));
    assert_ne!(node.digest(), full.digest());
    assert_eq!(node.counters().dropped_events, 0);
    assert_eq!(node.cell(3, 1002), full.cell(3, 1002));
    assert_eq!(node.cell(3, 1002).unwrap().reserved, 1);
    assert_eq!(full.oversold(), 0);
    assert_eq!(node.cell(1, 1000).unwrap().version, 0, "not kept");
    let mut stocked = Vec::new();
    node.for_each_stocked_cell(1004, |l, c| stocked.push((l, c.on_hand)));
    assert_eq!(stocked, [(5, 4)]);
    assert_eq!(node.hold_count(), 1);
    node.clear();
    assert_eq!(node.digest(), Replica::keeping(limits, set).digest());
}

#[test]
fn order_modify_cancel_records_follow_the_deltas() {
    let mut r = Replica::new(ReplicaLimits::small());
    let l = LocationDirectory::new(1, sym("STORE-1"));
    let k = SkuDirectory::new(7, sym("MUG"));
    let i = InventoryLevel::new(1, 7, 10, 0);
    r.apply(1, &msg(l.as_bytes()));
    r.apply(2, &msg(k.as_bytes()));
    r.apply(3, &msg(i.as_bytes()));
    let o = Order::new(99, 0, 7, 4).with_origin(5);
    assert_eq!(r.apply(4, &msg(o.as_bytes())), Applied::Recorded);
    assert!(r.is_pending(4));
    let d = OnHandDelta::new(1, 7, -4, delta_reason::ORDER, 4);
    assert_eq!(
        r.apply(5, &msg(d.as_bytes())),
        Applied::Event { answers: Some(4) }
    );
    assert!(!r.is_pending(4));
    let order = r.order(5, 99).unwrap();
    assert_eq!((order.location, order.qty, order.remaining), (1, 4, 4));
    let m = ModifyOrder::new(99, 1).with_origin(5);
    r.apply(6, &msg(m.as_bytes()));
    r.apply(
        7,
        &msg(OnHandDelta::new(1, 7, 3, delta_reason::MODIFY, 6).as_bytes()),
    );
    assert_eq!(r.order(5, 99).unwrap().remaining, 1);
    let x = CancelOrder::new(99).with_origin(5);
    r.apply(8, &msg(x.as_bytes()));
    r.apply(
        9,
        &msg(OnHandDelta::new(1, 7, 1, delta_reason::CANCEL, 8).as_bytes()),
    );
    let order = r.order(5, 99).unwrap();
    assert_eq!((order.remaining, order.last_cmd_seq), (0, 8));
    let cell = r.cell(1, 7).unwrap();
    assert_eq!((cell.on_hand, cell.version), (10, 9));
    assert_eq!(r.oversold(), 0);
}

#[test]
fn release_is_matched_to_the_oldest_pending_k() {
    let mut r = Replica::new(ReplicaLimits::small());
    r.apply(1, &msg(LocationDirectory::new(1, sym("A")).as_bytes()));
    r.apply(2, &msg(SkuDirectory::new(7, sym("MUG")).as_bytes()));
    r.apply(3, &msg(InventoryLevel::new(1, 7, 10, 0).as_bytes()));
    let v = Reserve::new(5, 1, 7, 3, 1000).with_origin(2);
    r.apply(4, &msg(v.as_bytes()));
    r.apply(5, &msg(HoldPlaced::new(4, 1, 7, 3, 77).as_bytes()));
    assert_eq!(r.hold_by_client(2, 5).unwrap().cmd_seq, 4);
    let k = ReleaseHold::new(5).with_origin(2);
    r.apply(6, &msg(k.as_bytes()));
    let e = HoldEnded::new(4, 1, 7, 3, hold_outcome::RELEASED);
    assert_eq!(
        r.apply(7, &msg(e.as_bytes())),
        Applied::Event { answers: Some(6) }
    );
    assert_eq!(r.hold(4), None);
    assert_eq!(r.cell(1, 7).unwrap().reserved, 0);
    assert_eq!(r.pending_count(), 0);
}

#[test]
fn holds_expire_in_order_of_expiry_then_key() {
    let mut r = Replica::new(ReplicaLimits::small());
    r.apply(1, &msg(LocationDirectory::new(1, sym("A")).as_bytes()));
    r.apply(2, &msg(SkuDirectory::new(7, sym("MUG")).as_bytes()));
    r.apply(3, &msg(InventoryLevel::new(1, 7, 100, 0).as_bytes()));
    let expiries = [50u64, 10, 30, 10, 70, 20];
    for (i, &at) in expiries.iter().enumerate() {
        let seq = 10 + i as u64;
        r.apply(seq, &msg(HoldPlaced::new(seq, 1, 7, 1, at).as_bytes()));
    }
    // End one in the middle of the heap.
    r.apply(
        20,
        &msg(HoldEnded::new(12, 1, 7, 1, hold_outcome::RELEASED).as_bytes()),
    );
    let mut order = Vec::new();
    while let Some(slot) = r.first_expiring_slot() {
        let h = r.remove_hold(slot);
        order.push((h.expires_at_ns, h.cmd_seq));
    }
    assert_eq!(
        order,
        vec![(10, 11), (10, 13), (20, 15), (50, 10), (70, 14)]
    );
}

#[test]
fn violations_are_counted_and_clamped() {
    let mut r = Replica::new(ReplicaLimits::small());
    r.apply(1, &msg(InventoryLevel::new(1, 7, 2, 0).as_bytes()));
    assert_eq!(r.counters().unknown_refs, 1);
    r.apply(
        2,
        &msg(OnHandDelta::new(1, 7, -5, delta_reason::ADJUST, 0).as_bytes()),
    );
    assert_eq!(r.oversold(), 1);
    assert_eq!(r.cell(1, 7).unwrap().on_hand, 0);
    r.apply(
        3,
        &msg(HoldEnded::new(9, 1, 7, 1, hold_outcome::EXPIRED).as_bytes()),
    );
    assert_eq!(r.oversold(), 2);
    assert_eq!(r.cell(1, 7).unwrap().reserved, 0);
}
