//! A seeded, deterministic packet-drop filter: receivers put one in front of
//! their multicast socket to inject loss in-process (tests, `--loss`), where
//! no `netem` is at hand. Like Aeron's loss-injecting transport: the same seed
//! and ratio drop the same positions of the datagram sequence on every run.
//!
//! The generator is splitmix64 (a full-period 64-bit generator that is fine
//! with any seed, 0 included); `drop_next` costs a few arithmetic operations
//! and never allocates.

use crate::rand::SplitMix64;

/// Drops a seeded pseudo-random share of the datagrams it is asked about.
#[derive(Clone, Debug)]
pub struct LossFilter {
    rng: SplitMix64,
    /// A draw below this drops: `drop_ratio × 2^64`, saturating.
    threshold: u64,
    drop_all: bool,
    seen: u64,
    dropped: u64,
}

impl LossFilter {
    /// A filter that drops `drop_ratio` (0.0 ..= 1.0) of what it sees,
    /// deterministically for a given `seed`.
    ///
    /// # Panics
    /// When `drop_ratio` is not within 0.0 ..= 1.0 (a caller bug).
    pub fn new(seed: u64, drop_ratio: f64) -> LossFilter {
        assert!(
            (0.0..=1.0).contains(&drop_ratio),
            "drop ratio {drop_ratio} must be within 0.0..=1.0"
        );
        // 2^64 as f64 is exact; the product saturates at u64::MAX in `as`.
        let threshold = (drop_ratio * 18_446_744_073_709_551_616.0) as u64;
        LossFilter {
            rng: SplitMix64::new(seed),
            threshold,
            drop_all: drop_ratio >= 1.0,
            seen: 0,
            dropped: 0,
        }
    }

    /// Whether to drop the next datagram.
    #[inline]
    pub fn drop_next(&mut self) -> bool {
        self.seen += 1;
        let drop = self.drop_all || self.rng.next_u64() < self.threshold;
        self.dropped += u64::from(drop);
        drop
    }

    /// Datagrams asked about.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Datagrams dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The configured share, as `threshold / 2^64`.
    pub fn drop_ratio(&self) -> f64 {
        if self.drop_all {
            1.0
        } else {
            self.threshold as f64 / 18_446_744_073_709_551_616.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_drops_the_same_positions() {
        let mut a = LossFilter::new(42, 0.1);
        let mut b = LossFilter::new(42, 0.1);
        let pattern_a: Vec<bool> = (0..10_000).map(|_| a.drop_next()).collect();
        let pattern_b: Vec<bool> = (0..10_000).map(|_| b.drop_next()).collect();
        assert_eq!(pattern_a, pattern_b);
        let mut c = LossFilter::new(43, 0.1);
        let pattern_c: Vec<bool> = (0..10_000).map(|_| c.drop_next()).collect();
        assert_ne!(pattern_a, pattern_c, "another seed, another pattern");
    }

    #[test]
    fn the_share_dropped_is_close_to_the_ratio() {
        for ratio in [0.0, 0.01, 0.05, 0.2, 0.5] {
            let mut filter = LossFilter::new(7, ratio);
            for _ in 0..100_000 {
                filter.drop_next();
            }
            let share = filter.dropped() as f64 / filter.seen() as f64;
            assert!(
                (share - ratio).abs() < 0.01,
                "ratio {ratio}: dropped {share}"
            );
        }
    }

    #[test]
    fn the_bounds_drop_nothing_and_everything() {
        let mut none = LossFilter::new(0, 0.0);
        let mut all = LossFilter::new(0, 1.0);
        for _ in 0..1000 {
            assert!(!none.drop_next());
            assert!(all.drop_next());
        }
        assert_eq!((none.seen(), none.dropped()), (1000, 0));
        assert_eq!((all.seen(), all.dropped()), (1000, 1000));
        assert_eq!(all.drop_ratio(), 1.0);
    }

    #[test]
    #[should_panic(expected = "must be within")]
    fn a_ratio_above_one_is_a_bug() {
        LossFilter::new(0, 1.5);
    }
}
