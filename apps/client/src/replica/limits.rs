//! Capacities of a replica's tables and the location sets a store node keeps.

use core::fmt;

/// Capacities of every table of a [`Replica`](super::Replica), fixed at construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplicaLimits {
    /// Most SKUs in the directory.
    pub skus_max: u32,
    /// Most locations in the directory (location ids themselves may be any
    /// `u16` but 0).
    pub locations_max: u16,
    /// Most cells (location, sku) that exist: memory grows with this, not
    /// with `skus_max × locations_max`. When it is at least that product the
    /// cells are stored densely (no index: the cheapest layout); below it, in
    /// a slab with an open-addressing index. A cell event that needs a new
    /// cell in a full table is dropped (counted in `dropped_events`); the
    /// warehouse rejects the command instead.
    pub cells_max: u32,
    /// Most open holds.
    pub holds_max: u32,
    /// Length of the client-id history: accepted orders and used hold and
    /// transfer ids together. The oldest record is evicted when full.
    pub orders_max: u32,
    /// Pending commands remembered (rounded up to a power of two): a command
    /// whose answer has not arrived within this many stream messages is
    /// forgotten (counted).
    pub pending_max: u32,
}

impl ReplicaLimits {
    /// Small tables for tests and the sample inventory: 4096 SKUs × 16
    /// locations (every cell: 65 536), 4096 holds, 65 536 id records, 65 536
    /// pending commands.
    pub const fn small() -> Self {
        Self {
            skus_max: 4096,
            locations_max: 16,
            cells_max: 4096 * 16,
            holds_max: 4096,
            orders_max: 1 << 16,
            pending_max: 1 << 16,
        }
    }

    /// Checks every limit is usable; `Replica::new` asserts the same.
    pub fn validate(&self) -> Result<(), LimitsError> {
        const HALF: u32 = 1 << 31;
        if self.skus_max == 0 || self.skus_max > HALF {
            return Err(LimitsError("skus_max must be in 1..=2^31"));
        }
        if self.locations_max == 0 {
            return Err(LimitsError("locations_max must be at least 1"));
        }
        if self.holds_max == 0 || self.holds_max > HALF {
            return Err(LimitsError("holds_max must be in 1..=2^31"));
        }
        if self.orders_max == 0 || self.orders_max > HALF {
            return Err(LimitsError("orders_max must be in 1..=2^31"));
        }
        if self.pending_max == 0 || self.pending_max > HALF {
            return Err(LimitsError("pending_max must be in 1..=2^31"));
        }
        if self.cells_max == 0 || self.cells_max > HALF {
            return Err(LimitsError("cells_max must be in 1..=2^31"));
        }
        Ok(())
    }

    /// The limits of the appliance configuration's `[limits]` section.
    pub fn from_config(limits: &tally_config::LimitsConfig) -> Self {
        Self {
            skus_max: limits.skus_max,
            locations_max: limits.locations_max,
            cells_max: limits.cells_max,
            holds_max: limits.holds_max,
            orders_max: limits.orders_max,
            pending_max: limits.pending_max,
        }
    }

    /// Says, with the numbers, which limit is smaller than a state with
    /// `skus`, `locations` and `cells` needs (a snapshot's or inventory
    /// file's counts, or a stream's directory), if any.
    pub fn check_fits(&self, skus: u64, locations: u64, cells: u64) -> Result<(), String> {
        let mut short = Vec::new();
        if skus > u64::from(self.skus_max) {
            short.push(format!("skus_max = {} < {skus} SKUs", self.skus_max));
        }
        if locations > u64::from(self.locations_max) {
            short.push(format!(
                "locations_max = {} < {locations} locations",
                self.locations_max
            ));
        }
        if cells > u64::from(self.cells_max) {
            short.push(format!("cells_max = {} < {cells} cells", self.cells_max));
        }
        if short.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the state's limits are too small: {} (raise them in the configuration's \
                 [limits] section or with the --*-max flags)",
                short.join(", ")
            ))
        }
    }

    /// Whether cells are stored densely (`cells_max` covers every
    /// `skus_max × locations_max` cell).
    pub fn is_dense(&self) -> bool {
        u64::from(self.skus_max) * u64::from(self.locations_max) <= u64::from(self.cells_max)
    }
}

/// A set of location ids (a bitmap over every `u16`, 8 KiB): the locations a
/// store node keeps ([`Replica::keep_only`](super::Replica::keep_only)) or a subset digest covers
/// ([`Replica::digest_of`](super::Replica::digest_of)).
#[derive(Clone, PartialEq, Eq)]
pub struct LocationSet {
    words: Box<[u64]>,
    all: bool,
}

impl LocationSet {
    /// Every location.
    pub fn all() -> Self {
        Self {
            words: vec![u64::MAX; 1 << 10].into_boxed_slice(),
            all: true,
        }
    }

    /// Exactly `locations` (0, "any", is never a member).
    pub fn of(locations: &[u16]) -> Self {
        let mut words = vec![0u64; 1 << 10].into_boxed_slice();
        for &location in locations.iter().filter(|&&l| l != 0) {
            words[usize::from(location >> 6)] |= 1 << (location & 63);
        }
        Self { words, all: false }
    }

    /// Whether `location` is in the set.
    #[inline]
    pub fn contains(&self, location: u16) -> bool {
        self.words[usize::from(location >> 6)] & (1 << (location & 63)) != 0
    }

    /// Whether it is [`Self::all`].
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Number of members (65 535 for [`Self::all`]).
    pub fn len(&self) -> usize {
        let bits: u32 = self.words.iter().map(|w| w.count_ones()).sum();
        // Location 0 is never a member (all() sets its bit too).
        bits as usize - usize::from(self.all)
    }

    /// Whether it has no member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The members, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (1..=u16::MAX).filter(move |&l| self.contains(l))
    }
}

impl fmt::Debug for LocationSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.all {
            f.write_str("LocationSet(all)")
        } else {
            f.debug_set().entries(self.iter()).finish()
        }
    }
}

/// Why a [`ReplicaLimits`] is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitsError(pub &'static str);

impl fmt::Display for LimitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for LimitsError {}
