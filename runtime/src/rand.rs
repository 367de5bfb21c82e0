//! One small pseudo-random generator and one 64-bit mix for all of tally.
//!
//! [`SplitMix64`] (Steele, Lea, Flood 2014) is a full-period 64-bit generator
//! that is fine with any seed, 0 included, and gives the same sequence on
//! every platform: the loss filter, load generators and benchmark inputs use
//! it so that a seed reproduces a run. [`mix64`] is its finaliser, a cheap
//! well-mixing hash of a 64-bit word: hash tables and throttle buckets use it
//! (keyed with a secret where a hostile peer chooses the input).
//!
//! Not cryptographic. Never allocates; a few arithmetic operations a call.

/// The splitmix64 increment (the golden ratio, 2^64 / φ).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's finaliser: spreads neighbouring inputs over all 64 bits.
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A seeded splitmix64 generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub const fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift, no modulo bias worth
    /// the name for n far below 2^64).
    ///
    /// # Panics
    ///
    /// When `n` is 0 (a caller bug).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi` (`lo <= hi`).
    #[inline]
    pub fn between(&mut self, lo: u32, hi: u32) -> u32 {
        debug_assert!(lo <= hi);
        lo + self.below(u64::from(hi - lo) + 1) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_sequence() {
        // splitmix64 from seed 0, as published with the algorithm.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn below_and_between_stay_in_range() {
        let mut rng = SplitMix64::new(7);
        let mut seen = [false; 10];
        for _ in 0..10_000 {
            let value = rng.below(10);
            assert!(value < 10);
            seen[value as usize] = true;
            let value = rng.between(3, 5);
            assert!((3..=5).contains(&value));
        }
        assert!(seen.iter().all(|&hit| hit), "every value turns up");
    }

    #[test]
    fn mix64_spreads_neighbours() {
        let a = mix64(1);
        let b = mix64(2);
        assert!((a ^ b).count_ones() > 16, "{a:x} {b:x}");
    }
}
