use super::*;
use crate::net::ring::{kind, user_data, Cqe, Region, GENERATION_MASK};

#[test]
fn send_queue_wraps_and_never_overwrites_the_chunk_in_flight() {
    let region = Region::new(8).unwrap();
    let mut q = SendQueue::new(8);
    assert!(q.append(&region, 0, b"abcdef"));
    assert_eq!(q.next_chunk(), Some((0, 6)));
    assert!(!q.append(&region, 0, b"xyz"), "only 2 bytes free");
    q.sent(4); // "ef" left at 4..6
    assert!(q.append(&region, 0, b"ghijk")); // 6,7 then wraps to 0..3
    assert_eq!(q.len, 7);
    assert_eq!(q.next_chunk(), Some((4, 4))); // up to the end of the buffer
    q.sent(4);
    assert_eq!(q.next_chunk(), Some((0, 3)));
    // SAFETY: no kernel operation uses this region in the test.
    assert_eq!(unsafe { region.slice(0, 3) }, b"ijk");
    q.sent(3);
    assert_eq!(q.len, 0);
    assert_eq!(q.head, 0);
}

#[test]
fn user_data_round_trips() {
    let cqe = Cqe {
        user_data: user_data(kind::RECV, 0x0123_4567, 0x89ab_cdef),
        result: 0,
        flags: 0,
    };
    assert_eq!(cqe.kind(), kind::RECV);
    assert_eq!(cqe.generation(), 0x0123_4567 & GENERATION_MASK);
    assert_eq!(cqe.index(), 0x89ab_cdef);
}
