//! The demo's back office: an ops client moving stock between locations.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tally_client::client::{ClientConfig, ClientEvent, OrderEntryClient};
use tally_client::consumer::monotonic_ns;
use tally_runtime::rand::SplitMix64;
use tally_wire::{delta_reason, Adjust, Transfer};

/// The back-office client: a transfer or a restock every 100 ms, until
/// `until`. Returns the commands sent.
pub(crate) fn back_office(
    config: ClientConfig,
    locations: u16,
    skus: u32,
    until: Instant,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let mut client = OrderEntryClient::connect(config, Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("ops login: {e}"))?;
    let mut rng = SplitMix64::new(0x2545_f491_4f6c_dd1d);
    let mut random = move |bound: u64| rng.below(bound.max(1));
    let mut sent = 0u64;
    let mut next = Instant::now();
    while Instant::now() < until && !stop.load(Ordering::Acquire) {
        client.poll(monotonic_ns(), |event| {
            if let ClientEvent::Closed(error) = event {
                eprintln!("tally-demo: back office: {error}");
            }
        });
        if Instant::now() < next || !client.has_room() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        next += Duration::from_millis(100);
        let sku = 1 + random(u64::from(skus)) as u32;
        let message = if locations >= 2 && random(3) > 0 {
            let from = 1 + random(u64::from(locations)) as u16;
            let to = 1 + (from % locations);
            Transfer::new(sent + 1, from, to, sku, 1 + random(3) as u32)
                .as_bytes()
                .to_vec()
        } else {
            let location = 1 + random(u64::from(locations.max(1))) as u16;
            Adjust::new(location, sku, 5 + random(20) as i32, delta_reason::ADJUST)
                .as_bytes()
                .to_vec()
        };
        if client.send(&message).is_ok() {
            sent += 1;
        }
    }
    let _ = client.wait_all_acked(Duration::from_secs(10), |_| {});
    Ok(sent)
}
