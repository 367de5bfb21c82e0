//! A connection's send queue: bytes the kernel did not take yet.

use crate::net::ring::Region;

/// A bounded byte ring that a send in flight reads from: bytes are appended
/// after the queued ones, and the in-flight chunk is never overwritten.
#[derive(Clone, Copy, Debug)]
pub(super) struct SendQueue {
    pub(super) capacity: usize,
    pub(super) head: usize,
    pub(super) len: usize,
    /// Bytes of the send in flight (0 = none).
    pub(super) in_flight: usize,
}

impl SendQueue {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            head: 0,
            len: 0,
            in_flight: 0,
        }
    }

    /// Copies `bytes` in after the queued bytes (the buffer is
    /// `region[offset..offset + capacity]`); `false` if they do not all fit.
    pub(super) fn append(&mut self, region: &Region, offset: usize, bytes: &[u8]) -> bool {
        if bytes.len() > self.capacity - self.len {
            return false;
        }
        assert!(offset + self.capacity <= region.len());
        let tail = (self.head + self.len) % self.capacity;
        let first = bytes.len().min(self.capacity - tail);
        // SAFETY: both ranges lie in region[offset..offset + capacity]
        // (asserted above) and in the free part of the ring, which no send
        // in flight reads (a send reads only queued bytes).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), region.at(offset + tail), first);
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr().add(first),
                region.at(offset),
                bytes.len() - first,
            );
        }
        self.len += bytes.len();
        true
    }

    /// The next contiguous chunk to send, if none is in flight; marks it in flight.
    pub(super) fn next_chunk(&mut self) -> Option<(usize, usize)> {
        if self.in_flight > 0 || self.len == 0 {
            return None;
        }
        let len = self.len.min(self.capacity - self.head);
        self.in_flight = len;
        Some((self.head, len))
    }

    pub(super) fn sent(&mut self, bytes: usize) {
        assert!(bytes <= self.in_flight, "sent more than was in flight");
        self.head = (self.head + bytes) % self.capacity;
        self.len -= bytes;
        self.in_flight = 0;
        if self.len == 0 {
            self.head = 0;
        }
    }

    pub(super) fn failed(&mut self) {
        self.in_flight = 0;
    }

    pub(super) fn clear(&mut self) {
        assert_eq!(self.in_flight, 0);
        self.head = 0;
        self.len = 0;
    }
}
