//! The two clocks tally reads, in nanoseconds as `u64`.
//!
//! - [`monotonic_ns`]: `CLOCK_MONOTONIC`, for every interval, deadline and
//!   timeout (loops are handed `now_ns` from it; it never jumps).
//! - [`wall_ns`]: the Unix epoch, for what a person or another host reads:
//!   the stream's timestamps, counter-file start times, logs.
//!
//! Both are one vDSO call (no system call on Linux), never allocate and never
//! fail: `wall_ns` before 1970 reads 0.

/// `CLOCK_MONOTONIC` in nanoseconds.
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`, which we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0, "CLOCK_MONOTONIC is always available on Linux");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Nanoseconds since the Unix epoch (0 for a clock set before 1970).
#[inline]
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back_and_wall_is_after_2020() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
        assert!(wall_ns() > 1_577_836_800_000_000_000);
    }
}
