//! What each source may ask and be sent: a count-min table of request
//! buckets and reply byte budgets per source, and the global reply budget.

use std::net::Ipv4Addr;

use super::TOKEN_NANO;

/// Rows of the per-source table: each source address owns one cell per row.
pub const SOURCE_TABLE_ROWS: usize = 4;

/// One cell of the per-source table: a request bucket and a reply byte
/// budget, shared by every address that hashes to it. Both in nano-units:
/// a bucket refills `rate` nano-units per nanosecond.
#[derive(Clone, Copy, Debug)]
pub(super) struct SourceCell {
    pub(super) requests_nano: u64,
    pub(super) reply_nano_bytes: u64,
    pub(super) refilled_ns: u64,
}

/// Largest byte burst a bucket may have (its nano-bytes fit a u64); the
/// configuration refuses more.
pub use tally_config::REPLY_BURST_BYTES_MAX;

/// A token bucket's level after `elapsed_ns` at `rate_per_sec` (tokens per
/// second, so nano-tokens per nanosecond), capped at `burst_nano`.
pub(super) fn refilled(
    level_nano: u64,
    elapsed_ns: u64,
    rate_per_sec: u64,
    burst_nano: u64,
) -> u64 {
    let refill = (u128::from(elapsed_ns) * u128::from(rate_per_sec)).min(u128::from(burst_nano));
    (u128::from(level_nano) + refill).min(u128::from(burst_nano)) as u64
}

/// Request buckets and reply byte budgets per IPv4 source, in a fixed table
/// of `SOURCE_TABLE_ROWS` × `width` cells allocated at start and never
/// evicted (a count-min sketch of token buckets). A source's allowance is
/// the smallest of its cells'; whatever it is granted is taken from all of
/// them. Cells are shared, so a source that collides with a heavy one gets
/// less, never more: what one address receives is at most what one of its
/// cells ever held (`burst + rate × t`), however many other addresses ask,
/// and no request from anywhere refills or forgets a cell early. The row
/// hashes are keyed with secrets drawn at start, so an outsider cannot aim
/// addresses at a victim's cells.
#[derive(Debug)]
pub(crate) struct SourceTable {
    cells: Box<[SourceCell]>,
    /// Cells per row, a power of two.
    width: usize,
    seeds: [u64; SOURCE_TABLE_ROWS],
    request_rate_per_sec: u64,
    request_burst_nano: u64,
    reply_bytes_per_sec: u64,
    reply_burst_nano_bytes: u64,
}

impl SourceTable {
    pub(crate) fn new(
        cells_per_row: usize,
        request_rate_per_sec: u32,
        request_burst: u32,
        reply_bytes_per_sec: u64,
        reply_burst_bytes: u64,
    ) -> Self {
        assert!(cells_per_row > 0 && cells_per_row <= 1 << 24);
        assert!(request_rate_per_sec > 0 && request_burst > 0);
        assert!(reply_bytes_per_sec > 0);
        assert!(reply_burst_bytes > 0 && reply_burst_bytes <= REPLY_BURST_BYTES_MAX);
        use std::hash::BuildHasher;
        let keys = std::collections::hash_map::RandomState::new();
        let width = cells_per_row.next_power_of_two();
        let request_burst_nano = u64::from(request_burst) * TOKEN_NANO;
        let reply_burst_nano_bytes = reply_burst_bytes * TOKEN_NANO;
        let full = SourceCell {
            requests_nano: request_burst_nano,
            reply_nano_bytes: reply_burst_nano_bytes,
            refilled_ns: 0,
        };
        SourceTable {
            cells: vec![full; SOURCE_TABLE_ROWS * width].into_boxed_slice(),
            width,
            seeds: std::array::from_fn(|row| keys.hash_one(row as u64) | 1),
            request_rate_per_sec: u64::from(request_rate_per_sec),
            request_burst_nano,
            reply_bytes_per_sec,
            reply_burst_nano_bytes,
        }
    }

    /// The cell of `address` in `row`, refilled up to `now_ns`.
    pub(super) fn cell(&mut self, row: usize, address: u32, now_ns: u64) -> usize {
        let mut h =
            (u64::from(address) ^ self.seeds[row].rotate_left(17)).wrapping_mul(self.seeds[row]);
        h ^= h >> 29;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 32;
        let index = row * self.width + (h as usize & (self.width - 1));
        let cell = &mut self.cells[index];
        let elapsed_ns = now_ns.saturating_sub(cell.refilled_ns);
        cell.requests_nano = refilled(
            cell.requests_nano,
            elapsed_ns,
            self.request_rate_per_sec,
            self.request_burst_nano,
        );
        cell.reply_nano_bytes = refilled(
            cell.reply_nano_bytes,
            elapsed_ns,
            self.reply_bytes_per_sec,
            self.reply_burst_nano_bytes,
        );
        cell.refilled_ns = cell.refilled_ns.max(now_ns);
        index
    }

    pub(super) fn cells_of(
        &mut self,
        address: Ipv4Addr,
        now_ns: u64,
    ) -> [usize; SOURCE_TABLE_ROWS] {
        let address = address.to_bits();
        std::array::from_fn(|row| self.cell(row, address, now_ns))
    }

    /// Takes one request token from `address` (from each of its cells);
    /// false, taking nothing, when one of its cells has none.
    pub(crate) fn admit(&mut self, address: Ipv4Addr, now_ns: u64) -> bool {
        let cells = self.cells_of(address, now_ns);
        if cells
            .iter()
            .any(|&index| self.cells[index].requests_nano < TOKEN_NANO)
        {
            return false;
        }
        for index in cells {
            self.cells[index].requests_nano -= TOKEN_NANO;
        }
        true
    }

    /// Reply bytes `address` may receive now.
    pub(crate) fn reply_budget(&mut self, address: Ipv4Addr, now_ns: u64) -> u64 {
        let cells = self.cells_of(address, now_ns);
        cells
            .iter()
            .map(|&index| self.cells[index].reply_nano_bytes / TOKEN_NANO)
            .min()
            .unwrap_or(0)
    }

    /// Takes `bytes` (at most its [`reply_budget`](Self::reply_budget)) from
    /// every cell of `address`.
    pub(crate) fn charge(&mut self, address: Ipv4Addr, bytes: u64, now_ns: u64) {
        let nano = bytes * TOKEN_NANO;
        for index in self.cells_of(address, now_ns) {
            let cell = &mut self.cells[index];
            debug_assert!(cell.reply_nano_bytes >= nano, "charged past the budget");
            cell.reply_nano_bytes = cell.reply_nano_bytes.saturating_sub(nano);
        }
    }

    /// Memory held, bytes.
    #[cfg(test)]
    pub(crate) fn memory_bytes(&self) -> usize {
        self.cells.len() * std::mem::size_of::<SourceCell>()
    }
}

/// One token bucket of bytes: the server's reply byte rate, all sources
/// together.
#[derive(Clone, Copy, Debug)]
pub(super) struct ByteBucket {
    pub(super) nano_bytes: u64,
    pub(super) refilled_ns: u64,
    pub(super) bytes_per_sec: u64,
    pub(super) burst_nano_bytes: u64,
}

impl ByteBucket {
    pub(super) fn new(bytes_per_sec: u64, burst_bytes: u64) -> Self {
        assert!(bytes_per_sec > 0 && burst_bytes > 0 && burst_bytes <= REPLY_BURST_BYTES_MAX);
        ByteBucket {
            nano_bytes: burst_bytes * TOKEN_NANO,
            refilled_ns: 0,
            bytes_per_sec,
            burst_nano_bytes: burst_bytes * TOKEN_NANO,
        }
    }

    pub(super) fn available(&mut self, now_ns: u64) -> u64 {
        let elapsed_ns = now_ns.saturating_sub(self.refilled_ns);
        self.nano_bytes = refilled(
            self.nano_bytes,
            elapsed_ns,
            self.bytes_per_sec,
            self.burst_nano_bytes,
        );
        self.refilled_ns = self.refilled_ns.max(now_ns);
        self.nano_bytes / TOKEN_NANO
    }

    pub(super) fn take(&mut self, bytes: u64) {
        let nano = bytes * TOKEN_NANO;
        debug_assert!(self.nano_bytes >= nano);
        self.nano_bytes = self.nano_bytes.saturating_sub(nano);
    }
}
