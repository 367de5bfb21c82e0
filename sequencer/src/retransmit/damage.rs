//! Damaged journal records met while serving: logged once each.

use std::io;

/// Damaged records already logged (by a hash of the reader's error, which
/// names the record's offset), so each is logged once, not per request.
#[derive(Debug)]
pub(crate) struct DamageLog {
    seen: [u64; 64],
    len: usize,
}

impl DamageLog {
    pub(crate) fn new() -> Self {
        DamageLog {
            seen: [0; 64],
            len: 0,
        }
    }

    /// True the first time this error is seen (then the caller logs it).
    pub(crate) fn first_time(&mut self, error: &io::Error) -> bool {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        error.to_string().hash(&mut hasher);
        let key = hasher.finish();
        if self.seen[..self.len.min(self.seen.len())].contains(&key) {
            return false;
        }
        self.seen[self.len % self.seen.len()] = key;
        self.len += 1;
        true
    }
}

/// Whether `error` is a record that failed its check (the reader's
/// `InvalidData`), as opposed to an I/O failure.
pub(crate) fn is_damaged_record(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::InvalidData
}

// The appliance builds each loop on the main thread and moves it to its own.
