//! `tally-benches` holds tally's criterion micro-benchmarks (one file per
//! scenario under `benches/`), the end-to-end load tool `tally-bench`
//! (`src/bin/tally-bench.rs`), and the few helpers the benchmarks share: a
//! seeded generator for their inputs and a stopwatch that can time a
//! thread's CPU time on a shared machine. [`till_load`] is `tally-bench
//! --scenario till-load`: the random load generator against a running
//! appliance.

use std::time::{Duration, Instant};

pub mod till_load;

/// The seeded generator for benchmark inputs: runtime's one splitmix64.
pub use tally_runtime::rand::SplitMix64 as Rng;

/// Times the measured batches: wall time by default (criterion's usual
/// clock), or this thread's CPU time with `TALLY_BENCH_CLOCK=thread-cpu`, so
/// that other processes on a shared machine do not count (on an idle machine
/// the two agree for this single-threaded, I/O-free loop).
#[derive(Clone, Copy)]
pub struct Stopwatch {
    thread_cpu: bool,
}

impl Stopwatch {
    /// Reads `TALLY_BENCH_CLOCK` (a benchmark binary's own setting).
    pub fn from_env() -> Self {
        let thread_cpu = std::env::var("TALLY_BENCH_CLOCK").is_ok_and(|v| v == "thread-cpu");
        if thread_cpu {
            eprintln!("timing with this thread's CPU time (TALLY_BENCH_CLOCK=thread-cpu)");
        }
        Self { thread_cpu }
    }

    /// The time now on the chosen clock.
    pub fn now(self) -> Duration {
        if self.thread_cpu {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes one timespec into the one we own.
            let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
            Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
        } else {
            EPOCH.with(|epoch| epoch.elapsed())
        }
    }
}

thread_local! {
    static EPOCH: Instant = Instant::now();
}

/// `bytes` (one stream message) with its header's origin, client_seq and
/// timestamp set.
pub fn stamp(mut bytes: Vec<u8>, origin: u16, client_seq: u32, timestamp_ns: u64) -> Vec<u8> {
    let header = tally_wire::header_mut(&mut bytes).expect("a complete stream message");
    header.origin = origin.into();
    header.client_seq = client_seq.into();
    header.timestamp_ns = timestamp_ns.into();
    bytes
}

/// The ten commands of one round of the benchmarks' mixed workload, in
/// equal parts: an order at `location`, an order at location 0, a modify, a
/// reserve, its confirm, a cancel, a transfer to the next location, a
/// restock, a recount, and an order for an unknown SKU (`skus + 1`).
pub fn mixed_commands(g: u64, location: u16, sku: u32, locations: u16, skus: u32) -> [Vec<u8>; 10] {
    use tally_wire::{
        delta_reason, Adjust, CancelOrder, ConfirmHold, ModifyOrder, Order, Recount, Reserve,
        Transfer,
    };
    let to = 1 + (location % locations);
    [
        Order::new(2 * g, location, sku, 2).as_bytes().to_vec(),
        Order::new(2 * g + 1, 0, sku, 1).as_bytes().to_vec(),
        ModifyOrder::new(2 * g, 1).as_bytes().to_vec(),
        Reserve::new(g, location, sku, 2, 60_000)
            .as_bytes()
            .to_vec(),
        ConfirmHold::new(g).as_bytes().to_vec(),
        CancelOrder::new(2 * g).as_bytes().to_vec(),
        Transfer::new(g, location, to, sku, 1).as_bytes().to_vec(),
        Adjust::new(location, sku, 3, delta_reason::ADJUST)
            .as_bytes()
            .to_vec(),
        Recount::new(to, sku, 1_000_000, 0).as_bytes().to_vec(),
        Order::new(2 * g + 1, location, skus + 1, 1)
            .as_bytes()
            .to_vec(),
    ]
}
