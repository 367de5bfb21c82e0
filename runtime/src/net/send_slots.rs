//! A fixed pool of send slots: the buffers a datagram socket sends from
//! through io_uring, the stack of free slots, and the accounting of each
//! send's completion. [`MulticastSender`] and [`UdpSocketRing`] own one each;
//! they differ only in how a send is queued (a connected `Send`, or a
//! `SendMsg` with a destination), which they pass in as a closure.
//!
//! Everything is allocated in [`SendSlots::new`]; nothing after it
//! allocates (the free stack's capacity is the slot count).
//!
//! [`MulticastSender`]: super::MulticastSender
//! [`UdpSocketRing`]: super::UdpSocketRing

use std::io;

use super::ring::{kind, Cqe, Region};

/// Send counters of a datagram socket. Plain integers, updated only by the
/// owning loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Datagrams the kernel accepted in full.
    pub datagrams: u64,
    /// Payload bytes of those datagrams.
    pub bytes: u64,
    /// Send completions with an error (the datagram was not sent).
    pub errors: u64,
    /// The last such error (`errno`), 0 if none.
    pub last_errno: i32,
    /// Sends that completed with `EAGAIN` and were submitted again.
    pub retries: u64,
    /// Sends that completed with fewer bytes than queued (not expected for UDP).
    pub short_sends: u64,
    /// Times a caller asked for a slot and every slot was in flight.
    pub back_pressure: u64,
}

/// `slots` buffers of `slot_bytes`, each free or in use (claimed by the
/// owner or in flight in the kernel).
pub(crate) struct SendSlots {
    buffers: Region,
    slot_bytes: usize,
    /// Free slots (a stack; capacity = slot count, never grows).
    free: Vec<u32>,
    /// Length queued per slot, to check its completion.
    queued_len: Vec<u32>,
    stats: SendStats,
}

impl SendSlots {
    /// Allocates `slots` buffers of `slot_bytes` (the caller checked both).
    pub(crate) fn new(slots: usize, slot_bytes: usize) -> io::Result<Self> {
        debug_assert!(slots > 0 && slot_bytes > 0);
        Ok(Self {
            buffers: Region::new(slots * slot_bytes)?,
            slot_bytes,
            free: (0..slots as u32).rev().collect(),
            queued_len: vec![0; slots],
            stats: SendStats::default(),
        })
    }

    pub(crate) fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// `InvalidInput` when `len` bytes do not fit one slot.
    pub(crate) fn check_fits(&self, len: usize) -> io::Result<()> {
        if len > self.slot_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "datagram exceeds slot size",
            ));
        }
        Ok(())
    }

    pub(crate) fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Takes a free slot; `None` (counted as back-pressure) when every slot
    /// is in use. The owner reaps completions first if it can.
    pub(crate) fn take(&mut self) -> Option<u32> {
        let slot = self.free.pop();
        if slot.is_none() {
            self.stats.back_pressure += 1;
        }
        slot
    }

    /// Gives back a slot whose send could not be queued.
    pub(crate) fn put_back(&mut self, slot: u32) {
        debug_assert!(
            self.free.len() < self.queued_len.len(),
            "slot {slot} freed twice"
        );
        self.free.push(slot);
    }

    /// Slots not free: claimed by the owner or in flight.
    pub(crate) fn in_use(&self) -> usize {
        self.queued_len.len() - self.free.len()
    }

    /// Where `slot`'s bytes start (for the kernel).
    pub(crate) fn ptr(&self, slot: u32) -> *mut u8 {
        self.buffers.at(slot as usize * self.slot_bytes)
    }

    /// The whole buffer of `slot`, to build a datagram in.
    ///
    /// # Safety
    /// `slot` must be taken (not free) and have no send in flight, and the
    /// slice must end before its send is queued.
    pub(crate) unsafe fn buffer_mut(&mut self, slot: u32) -> &mut [u8] {
        // SAFETY: per the contract, nothing else reads or writes the slot.
        unsafe {
            self.buffers
                .slice_mut(slot as usize * self.slot_bytes, self.slot_bytes)
        }
    }

    /// Copies `bytes` (already checked to fit) into the taken `slot`, which
    /// has no send in flight.
    pub(crate) fn fill(&mut self, slot: u32, bytes: &[u8]) {
        // SAFETY: a taken slot has no send in flight; the slice ends here.
        unsafe {
            self.buffers
                .slice_mut(slot as usize * self.slot_bytes, bytes.len())
        }
        .copy_from_slice(bytes);
    }

    /// Records that `len` bytes of `slot` were queued to the kernel.
    pub(crate) fn queued(&mut self, slot: u32, len: usize) {
        debug_assert!(len <= self.slot_bytes);
        self.queued_len[slot as usize] = len as u32;
    }

    /// Accounts for one completion: frees its slot, or, on `EAGAIN`, sends
    /// the same bytes again through `resend(slot, bytes, len)` rather than lose the
    /// datagram (freed and counted as an error only if that fails).
    /// Completions that are not sends (a cancel issued by a drop) are
    /// ignored.
    pub(crate) fn complete(
        &mut self,
        cqe: Cqe,
        resend: impl FnOnce(u32, *mut u8, usize) -> io::Result<()>,
    ) {
        if cqe.kind() != kind::SEND {
            return;
        }
        let slot = cqe.index();
        let queued = self.queued_len[slot as usize];
        if cqe.result == -libc::EAGAIN {
            self.stats.retries += 1;
            if resend(slot, self.ptr(slot), queued as usize).is_ok() {
                return;
            }
        }
        if cqe.result < 0 {
            self.stats.errors += 1;
            self.stats.last_errno = -cqe.result;
        } else if cqe.result as u32 != queued {
            self.stats.short_sends += 1;
        } else {
            self.stats.datagrams += 1;
            self.stats.bytes += u64::from(queued);
        }
        self.put_back(slot);
    }

    pub(crate) fn stats(&self) -> SendStats {
        self.stats
    }

    /// Never frees the buffers: the kernel may still read them (a drop whose
    /// drain timed out).
    pub(crate) fn leak(&mut self) {
        self.buffers.leak();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::ring::user_data;

    fn completion(slot: u32, result: i32) -> Cqe {
        Cqe {
            user_data: user_data(kind::SEND, 0, slot),
            result,
            flags: 0,
        }
    }

    #[test]
    fn slots_are_taken_until_none_is_free_then_back_pressure_is_counted() {
        let mut slots = SendSlots::new(3, 64).unwrap();
        let taken: Vec<u32> = (0..3).map(|_| slots.take().unwrap()).collect();
        assert_eq!(taken, [0, 1, 2], "lowest slot first");
        assert_eq!(slots.in_use(), 3);
        assert!(!slots.has_free());
        assert_eq!(slots.take(), None);
        assert_eq!(slots.take(), None);
        assert_eq!(slots.stats().back_pressure, 2);
        slots.put_back(1);
        assert_eq!(slots.take(), Some(1));
    }

    #[test]
    fn a_datagram_larger_than_a_slot_is_refused() {
        let slots = SendSlots::new(1, 64).unwrap();
        assert!(slots.check_fits(64).is_ok());
        let refused = slots.check_fits(65).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn completions_free_their_slot_and_count_what_happened() {
        let mut slots = SendSlots::new(4, 64).unwrap();
        let never = |_: u32, _: *mut u8, _: usize| -> io::Result<()> { panic!("no resend") };
        for slot in 0..4 {
            assert_eq!(slots.take(), Some(slot));
            slots.fill(slot, &[slot as u8; 10]);
            slots.queued(slot, 10);
        }
        slots.complete(completion(0, 10), never);
        slots.complete(completion(1, 7), never);
        slots.complete(completion(2, -libc::ENETUNREACH), never);
        // A cancel's completion is not a send: slot 3 stays in flight.
        let cancel = Cqe {
            user_data: user_data(kind::CANCEL, 0, 3),
            result: 0,
            flags: 0,
        };
        slots.complete(cancel, never);
        let stats = slots.stats();
        assert_eq!((stats.datagrams, stats.bytes), (1, 10));
        assert_eq!(stats.short_sends, 1);
        assert_eq!((stats.errors, stats.last_errno), (1, libc::ENETUNREACH));
        assert_eq!(slots.in_use(), 1, "slot 3 is still in flight");
    }

    #[test]
    fn eagain_sends_the_same_bytes_again_and_frees_only_if_that_fails() {
        let mut slots = SendSlots::new(2, 64).unwrap();
        let slot = slots.take().unwrap();
        slots.fill(slot, b"hello");
        slots.queued(slot, 5);
        let mut resent = Vec::new();
        slots.complete(completion(slot, -libc::EAGAIN), |s, bytes, len| {
            // SAFETY: the slot's buffer holds at least `len` bytes we wrote.
            resent.push((
                s,
                unsafe { std::slice::from_raw_parts(bytes, len) }.to_vec(),
            ));
            Ok(())
        });
        assert_eq!(resent, [(slot, b"hello".to_vec())]);
        assert_eq!(slots.in_use(), 1, "resent: still in flight");
        slots.complete(completion(slot, -libc::EAGAIN), |_, _, _| {
            Err(io::ErrorKind::Other.into())
        });
        let stats = slots.stats();
        assert_eq!(stats.retries, 2);
        assert_eq!((stats.errors, stats.last_errno), (1, libc::EAGAIN));
        assert_eq!(slots.in_use(), 0, "freed once the resend failed");
    }
}
