use tally_wire::Message;

use super::*;
use crate::replica::ReplicaLimits;

#[test]
fn xxh64_matches_the_reference_vectors() {
    assert_eq!(xxh64(b""), 0xEF46_DB37_51D8_E999);
    assert_eq!(xxh64(b"a"), 0xD24E_C4F1_A98C_6E5B);
    assert_eq!(xxh64(b"abc"), 0x44BC_2CF5_AD77_0999);
    assert_eq!(
        xxh64(b"Nobody inspects the spammish repetition"),
        0xFBCE_A83C_8A37_8BF1
    );
}

/// A format-1 file (every skus × locations cell, sku-major) made from a
/// format-2 one: the same body with the cell section rewritten densely.
fn as_format_1(v2: &[u8], r: &Replica) -> Vec<u8> {
    let skus = r.sku_count as usize;
    let locations = usize::from(r.location_count);
    let cells_at = HEADER_SIZE as usize + locations * 18 + skus * 20;
    let listed = u64::from_le_bytes(v2[112..120].try_into().unwrap()) as usize;
    let mut out = v2[..cells_at].to_vec();
    out[8..12].copy_from_slice(&FORMAT_VERSION_DENSE.to_le_bytes());
    out[112..128].fill(0);
    for s in 0..skus as u32 {
        for l in 0..locations as u16 {
            let c = r.cell_at(s, l);
            out.extend_from_slice(&c.on_hand.to_le_bytes());
            out.extend_from_slice(&c.reserved.to_le_bytes());
            out.extend_from_slice(&c.version.to_le_bytes());
        }
    }
    out.extend_from_slice(&v2[cells_at + listed * 22..v2.len() - 8]);
    let sum = xxh64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

#[test]
fn format_1_dense_files_still_load_into_dense_and_sparse_replicas() {
    use tally_wire::{pad_ascii, InventoryLevel, LocationDirectory, SkuDirectory};
    let dense = ReplicaLimits {
        skus_max: 8,
        locations_max: 4,
        cells_max: 32,
        ..ReplicaLimits::small()
    };
    let mut r = Replica::new(dense);
    let mut seq = 0;
    let mut apply = |r: &mut Replica, bytes: &[u8]| {
        seq += 1;
        r.apply(seq, &Message::parse(bytes).unwrap());
    };
    for l in 1..=3u16 {
        let name = pad_ascii(&format!("S{l}")).unwrap();
        apply(&mut r, LocationDirectory::new(l, name).as_bytes());
    }
    for k in 1..=5u32 {
        let symbol = pad_ascii(&format!("K{k}")).unwrap();
        apply(&mut r, SkuDirectory::new(k * 10, symbol).as_bytes());
        // Each SKU stocked in some of the locations only.
        for l in (1..=3u16).filter(|l| (u32::from(*l) + k) % 3 != 0) {
            apply(
                &mut r,
                InventoryLevel::new(l, k * 10, k + u32::from(l), 0).as_bytes(),
            );
        }
    }
    let dir = std::env::temp_dir().join(format!("tally-snapshot-v1-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let v2_path = dir.join("v2.snap");
    save(&v2_path, &r, b"SESSION001", [1, 2, 3, 4]).unwrap();
    let v2 = std::fs::read(&v2_path).unwrap();
    let v1_path = dir.join("v1.snap");
    std::fs::write(&v1_path, as_format_1(&v2, &r)).unwrap();
    let sparse = ReplicaLimits {
        cells_max: 12,
        ..dense
    };
    for limits in [dense, sparse] {
        for path in [&v1_path, &v2_path] {
            let (loaded, info) = load(path, limits).unwrap();
            assert_eq!(info.app, [1, 2, 3, 4]);
            assert_eq!(loaded.digest(), r.digest(), "{} {limits:?}", path.display());
            assert_eq!(loaded.cell(2, 10), r.cell(2, 10));
        }
    }
    // Too few cells for what the file lists: said, with the numbers.
    let tiny = ReplicaLimits {
        cells_max: 5,
        ..dense
    };
    for path in [&v1_path, &v2_path] {
        assert!(
            matches!(
                load(path, tiny),
                Err(SnapshotError::TooLarge {
                    what: "cells",
                    max: 5,
                    ..
                })
            ),
            "{}",
            path.display()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn xxh64_streaming_equals_one_shot() {
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    for split in [0usize, 1, 7, 31, 32, 33, 64, 100, 999, 1000] {
        let mut h = Xxh64::new();
        h.update(&data[..split]);
        for chunk in data[split..].chunks(13) {
            h.update(chunk);
        }
        assert_eq!(h.digest(), xxh64(&data), "split at {split}");
    }
}
