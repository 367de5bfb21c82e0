//! Login and connection throttling: what the gateway remembers about source
//! addresses and usernames so that a flood of connections or wrong passwords
//! from one place costs the appliance (almost) nothing and slows nobody else.
//!
//! - **Per source address** (a fixed, hashed table of
//!   `source_table_entries` buckets, allocated at start-up and never grown or
//!   evicted from): a GCRA token bucket charged by every accepted connection
//!   (a reconnect storm is refused at accept), and an exponential back-off
//!   after (`login_backoff_base_ns`, doubling up to
//!   `login_backoff_max_ns`; forgiven after `login_backoff_max_ns` without a
//!   failure). Addresses that hash to the same bucket share it: a collision
//!   can only make the gateway stricter, never let a source escape its budget
//!   by churning through addresses (unlike an LRU, nothing is forgotten early).
//! - **Per username** (one bucket per configured client): a GCRA token bucket
//!   charged by each failed login, `username_failure_burst` at once and
//!   `username_failures_per_min` after that. It bounds a guessing attack
//!   spread over many addresses; a single address is stopped long before by
//!   its own back-off.
//!
//! A throttled attempt is refused before its password is checked: it costs no
//! argon2 work. Nothing here allocates after [`Throttle::new`]; time is passed
//! in (`now_ns`, monotonic).

use std::net::IpAddr;
use tally_runtime::rand::mix64;

use tally_config::gateway::GatewayConfig;

/// Why a login attempt was refused without checking its password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Throttled {
    /// The source address failed recently; it may try again in `retry_in_ns`.
    SourceBackoff { retry_in_ns: u64 },
    /// The username failed too often (from anywhere) lately.
    UsernameFailures { retry_in_ns: u64 },
}

#[derive(Clone, Copy, Debug, Default)]
struct SourceEntry {
    /// GCRA theoretical arrival time of the next connection.
    connect_tat_ns: u64,
    /// Failed logins since the source was last forgiven.
    failures: u32,
    /// No login is checked from this source before this time.
    blocked_until_ns: u64,
    /// When the last failure was recorded.
    last_failure_ns: u64,
}

/// The throttle state of one gateway (see the module doc).
#[derive(Debug)]
pub struct Throttle {
    sources: Vec<SourceEntry>,
    /// Drawn at start-up and mixed into every address's hash, so nobody
    /// can pick addresses that share a victim's bucket (a shared bucket
    /// would let them back the victim off with their own failures).
    source_key: u64,
    /// `sources.len() - 1` (a power of two).
    source_mask: u64,
    connect_interval_ns: u64,
    connect_tolerance_ns: u64,
    backoff_base_ns: u64,
    backoff_max_ns: u64,
    /// Failures a source may have before its back-off starts.
    free_failures: u32,
    /// GCRA theoretical arrival time of the next failure, per client index.
    username_tat_ns: Vec<u64>,
    username_interval_ns: u64,
    username_tolerance_ns: u64,
}

impl Throttle {
    /// Tables for `config` (validated), for `clients` configured usernames.
    pub fn new(config: &GatewayConfig) -> Self {
        let entries = config.source_table_entries.next_power_of_two();
        let connect_interval_ns =
            (1_000_000_000 / u64::from(config.source_connects_per_sec)).max(1);
        let username_interval_ns =
            (60_000_000_000 / u64::from(config.username_failures_per_min)).max(1);
        let source_key = {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(0x7A11_u64)
        };
        Throttle {
            sources: vec![SourceEntry::default(); entries],
            source_key,
            source_mask: entries as u64 - 1,
            connect_interval_ns,
            connect_tolerance_ns: connect_interval_ns
                * u64::from(config.source_connect_burst.saturating_sub(1)),
            backoff_base_ns: config.login_backoff_base_ns,
            backoff_max_ns: config.login_backoff_max_ns,
            free_failures: config.login_failures_before_backoff,
            username_tat_ns: vec![0; config.clients.len()],
            username_interval_ns,
            username_tolerance_ns: username_interval_ns
                * u64::from(config.username_failure_burst.saturating_sub(1)),
        }
    }

    /// The bucket of `source`.
    fn source_index(&self, source: IpAddr) -> usize {
        let bits: u64 = match source {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                // An IPv4-mapped address shares its IPv4 bucket.
                if let Some(v4) = v6.to_ipv4_mapped() {
                    u64::from(u32::from(v4))
                } else {
                    let value = u128::from(v6);
                    mix64((value >> 64) as u64) ^ value as u64
                }
            }
        };
        (mix64(bits ^ self.source_key) & self.source_mask) as usize
    }

    /// Whether two addresses share a bucket (tests use it to pick addresses).
    pub fn same_bucket(&self, a: IpAddr, b: IpAddr) -> bool {
        self.source_index(a) == self.source_index(b)
    }

    /// A connection from `source` was accepted: charges its bucket. `false`
    /// when the source is over its connection rate (close it at once).
    pub fn on_connect(&mut self, source: IpAddr, now_ns: u64) -> bool {
        let index = self.source_index(source);
        let entry = &mut self.sources[index];
        gcra_take(
            &mut entry.connect_tat_ns,
            now_ns,
            self.connect_interval_ns,
            self.connect_tolerance_ns,
        )
    }

    /// Whether a login from `source` (if known) for client `client` (if a
    /// configured username) may have its password checked now.
    pub fn login_allowed(
        &mut self,
        source: Option<IpAddr>,
        client: Option<u16>,
        now_ns: u64,
    ) -> Result<(), Throttled> {
        if let Some(source) = source {
            let index = self.source_index(source);
            let entry = &mut self.sources[index];
            if entry.failures > 0
                && now_ns >= entry.blocked_until_ns.saturating_add(self.backoff_max_ns)
                && now_ns >= entry.last_failure_ns.saturating_add(self.backoff_max_ns)
            {
                // Quiet for a whole maximum back-off: forgiven.
                entry.failures = 0;
            }
            if now_ns < entry.blocked_until_ns {
                return Err(Throttled::SourceBackoff {
                    retry_in_ns: entry.blocked_until_ns - now_ns,
                });
            }
        }
        if let Some(client) = client {
            let tat_ns = self.username_tat_ns[usize::from(client)].max(now_ns);
            if tat_ns - now_ns > self.username_tolerance_ns {
                return Err(Throttled::UsernameFailures {
                    retry_in_ns: tat_ns - now_ns - self.username_tolerance_ns,
                });
            }
        }
        Ok(())
    }

    /// A login from `source` for `client` failed its password check (or
    /// named an unknown username): backs the source off and charges the
    /// username.
    pub fn on_login_failed(&mut self, source: Option<IpAddr>, client: Option<u16>, now_ns: u64) {
        if let Some(source) = source {
            let index = self.source_index(source);
            let entry = &mut self.sources[index];
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure_ns = now_ns;
            // The first few are free: a mistyped password is not punished.
            if entry.failures > self.free_failures {
                let shift = (entry.failures - self.free_failures - 1).min(40);
                let backoff_ns = self
                    .backoff_base_ns
                    .saturating_mul(1u64 << shift)
                    .min(self.backoff_max_ns);
                entry.blocked_until_ns = now_ns.saturating_add(backoff_ns);
            }
        }
        if let Some(client) = client {
            let tat_ns = &mut self.username_tat_ns[usize::from(client)];
            // Charged even past the limit, so a sustained attack keeps the
            // username throttled rather than letting every other one through.
            let start = (*tat_ns).max(now_ns);
            *tat_ns = start
                .saturating_add(self.username_interval_ns)
                .min(now_ns.saturating_add(self.username_tolerance_ns + self.username_interval_ns));
        }
    }
}

/// GCRA: takes one token from the bucket whose theoretical arrival time is
/// `tat_ns`; `false` (nothing taken) when it is empty.
fn gcra_take(tat_ns: &mut u64, now_ns: u64, interval_ns: u64, tolerance_ns: u64) -> bool {
    let tat = (*tat_ns).max(now_ns);
    if tat - now_ns > tolerance_ns {
        return false;
    }
    *tat_ns = tat + interval_ns;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tally_config::gateway::{ClientEntry, Role};
    use tally_wire::mold::Session;

    const MS: u64 = 1_000_000;

    fn config() -> GatewayConfig {
        let mut config = GatewayConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Session::from_str("T").unwrap(),
            vec![ClientEntry {
                username: "pos1".into(),
                password_hash: String::new(),
                client_id: 1,
                role: Role::Pos,
            }],
        );
        config.source_connects_per_sec = 10;
        config.source_connect_burst = 3;
        config.login_backoff_base_ns = 100 * MS;
        config.login_backoff_max_ns = 1_000 * MS;
        config.login_failures_before_backoff = 0;
        config.username_failures_per_min = 60;
        config.username_failure_burst = 3;
        config
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn connects_follow_the_bucket() {
        let mut throttle = Throttle::new(&config());
        let now = 1_000 * MS;
        assert!((0..3).all(|_| throttle.on_connect(ip(2), now)));
        assert!(!throttle.on_connect(ip(2), now), "burst of 3 used");
        assert!(
            throttle.on_connect(ip(3), now),
            "another source is not charged"
        );
        assert!(
            throttle.on_connect(ip(2), now + 100 * MS),
            "refilled at 10/s"
        );
        assert!(!throttle.on_connect(ip(2), now + 100 * MS));
    }

    #[test]
    fn failures_back_off_exponentially_and_are_forgiven() {
        let mut throttle = Throttle::new(&config());
        let source = Some(ip(2));
        let mut now = 1_000 * MS;
        let mut expected = [100, 200, 400, 800, 1000, 1000].into_iter();
        for _ in 0..6 {
            assert_eq!(throttle.login_allowed(source, None, now), Ok(()));
            throttle.on_login_failed(source, None, now);
            let backoff = expected.next().unwrap() * MS;
            assert_eq!(
                throttle.login_allowed(source, None, now + 1),
                Err(Throttled::SourceBackoff {
                    retry_in_ns: backoff - 1
                })
            );
            assert_eq!(throttle.login_allowed(Some(ip(3)), None, now + 1), Ok(()));
            now += backoff;
        }
        // Quiet for the maximum back-off after the block: forgiven, so the
        // next failure backs off by the base again.
        now += 1_000 * MS;
        assert_eq!(throttle.login_allowed(source, None, now), Ok(()));
        throttle.on_login_failed(source, None, now);
        assert_eq!(
            throttle.login_allowed(source, None, now),
            Err(Throttled::SourceBackoff {
                retry_in_ns: 100 * MS
            })
        );
    }

    #[test]
    fn the_first_failures_are_free() {
        let mut config = config();
        config.login_failures_before_backoff = 2;
        let mut throttle = Throttle::new(&config);
        let now = 1_000 * MS;
        for _ in 0..2 {
            throttle.on_login_failed(Some(ip(2)), None, now);
            assert_eq!(throttle.login_allowed(Some(ip(2)), None, now), Ok(()));
        }
        throttle.on_login_failed(Some(ip(2)), None, now);
        assert_eq!(
            throttle.login_allowed(Some(ip(2)), None, now),
            Err(Throttled::SourceBackoff {
                retry_in_ns: 100 * MS
            })
        );
    }

    #[test]
    fn username_failures_are_bounded_from_any_address() {
        let mut throttle = Throttle::new(&config());
        let now = 1_000 * MS;
        for last in 10..13 {
            assert_eq!(throttle.login_allowed(Some(ip(last)), Some(0), now), Ok(()));
            throttle.on_login_failed(Some(ip(last)), Some(0), now);
        }
        assert!(matches!(
            throttle.login_allowed(Some(ip(20)), Some(0), now),
            Err(Throttled::UsernameFailures { .. })
        ));
        // One failure a second comes back.
        assert_eq!(
            throttle.login_allowed(Some(ip(20)), Some(0), now + 1_000 * MS),
            Ok(())
        );
    }

    #[test]
    fn the_test_addresses_have_their_own_buckets() {
        let mut config = GatewayConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Session::from_str("T").unwrap(),
            Vec::new(),
        );
        // The tests' size (sequencer/tests/support/mod.rs): with a key drawn
        // at start-up, two addresses share a bucket with probability
        // 1 / 2^20 per run.
        config.source_table_entries = 1 << 20;
        let throttle = Throttle::new(&config);
        // sequencer/tests/hostile_gateway.rs floods from 127.0.0.2 and logs
        // in from 127.0.0.3.
        assert!(!throttle.same_bucket(ip(2), ip(3)));
        assert!(throttle.same_bucket(
            ip(2),
            IpAddr::V6(Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped())
        ));
    }
}
