//! The warehouse's snapshot: its replica with its origin and the last own
//! client_seq it saw, written when nothing is in flight, read back to
//! restart deferring.

use std::path::Path;

use super::{Warehouse, WarehouseConfig, WarehouseCounters};
use tally_client::snapshot::{self, SnapshotError, SnapshotInfo};

/// `app` word 0 of a warehouse snapshot: "WAREHOUS".
const SNAPSHOT_TAG: u64 = u64::from_be_bytes(*b"WAREHOUS");
/// The snapshot's fourth application word when it holds the state at the
/// end of its session ([`Warehouse::save_snapshot_ended`]); 0 otherwise.
pub const SNAPSHOT_ENDED: u64 = u64::from_be_bytes(*b"ENDED\0\0\0");

impl Warehouse {
    /// A warehouse rebuilt from a snapshot file written by
    /// [`Self::save_snapshot`], deferring decisions until
    /// [`Self::finish_catch_up`]. Feed it the stream from `info.seq + 1`.
    pub fn restore(
        path: &Path,
        config: WarehouseConfig,
    ) -> Result<(Self, SnapshotInfo), SnapshotError> {
        let (replica, info) = snapshot::load(path, config.limits)?;
        if info.app[0] != SNAPSHOT_TAG {
            return Err(SnapshotError::Invalid("not a warehouse snapshot"));
        }
        if info.app[1] != u64::from(config.own_origin) {
            return Err(SnapshotError::Invalid(
                "the snapshot belongs to a warehouse with another origin",
            ));
        }
        let own_last_seen = u32::try_from(info.app[2])
            .map_err(|_| SnapshotError::Invalid("own client_seq out of range"))?;
        let warehouse = Self {
            replica,
            own_origin: config.own_origin,
            first_client_seq: own_last_seen + 1,
            next_client_seq: own_last_seen + 1,
            own_last_seen,
            deferring: true,
            deferred_cursor: 0,
            counters: WarehouseCounters::default(),
        };
        Ok((warehouse, info))
    }

    /// Writes the state to `path` (atomically: temp file, then rename),
    /// tagged with the stream `session`. Refuses while own events are in
    /// flight, since the state then holds effects the stream does not yet.
    /// Returns the bytes written.
    pub fn save_snapshot(&self, path: &Path, session: &[u8; 10]) -> Result<u64, SnapshotError> {
        self.save_tagged(path, session, 0)
    }

    /// [`Self::save_snapshot`] of the state at the end of its session
    /// (after `S(C)`, nothing in flight): marked so a warehouse starting in
    /// the next session carries it over ([`SNAPSHOT_ENDED`]).
    pub fn save_snapshot_ended(
        &self,
        path: &Path,
        session: &[u8; 10],
    ) -> Result<u64, SnapshotError> {
        self.save_tagged(path, session, SNAPSHOT_ENDED)
    }

    /// Saves with `ended` as the fourth application word (0 or
    /// [`SNAPSHOT_ENDED`]), refusing while own events are in flight.
    fn save_tagged(
        &self,
        path: &Path,
        session: &[u8; 10],
        ended: u64,
    ) -> Result<u64, SnapshotError> {
        let in_flight = self.in_flight();
        if in_flight != 0 {
            return Err(SnapshotError::NotQuiescent { in_flight });
        }
        let app = [
            SNAPSHOT_TAG,
            u64::from(self.own_origin),
            u64::from(self.own_last_seen),
            ended,
        ];
        snapshot::save(path, &self.replica, session, app)
    }
}
