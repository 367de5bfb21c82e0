//! Datagram receive engine shared by [`MulticastReceiver`] and
//! [`UdpSocketRing`]: multishot `recvmsg` on a provided buffer ring when the
//! kernel has it, single-shot `recvmsg` into owned buffers when it does not.
//!
//! Both modes use `recvmsg` rather than `recv` so a datagram larger than its
//! buffer is reported (`MSG_TRUNC`) and counted instead of being delivered cut
//! short, and so the UDP socket learns each datagram's source address.
//!
//! [`MulticastReceiver`]: super::MulticastReceiver
//! [`UdpSocketRing`]: super::UdpSocketRing

use std::io;
use std::mem;
use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{opcode, types};

use super::ring::{kind, user_data, zeroed, Cqe, HeapArray, Region, Ring, CQE_BATCH};
use super::sock;
use super::RecvMode;

/// Single-shot receives kept in flight in fallback mode. One, on purpose:
/// every receive waiting on a socket is woken for each datagram, and the
/// ones that lose the race are retried through io-wq (seen as `EAGAIN`
/// completions), where one that does find a datagram can complete out of
/// order. Measured on loopback, one at a time is no slower (100 000
/// datagrams to two receivers: 2.2 s with 16 or 1 in flight).
pub(crate) const SINGLE_SHOT_DEPTH_MAX: u16 = 1;

/// Buffer group id; each ring has its own group namespace.
const BUFFER_GROUP: u16 = 0;

/// Size of `struct io_uring_recvmsg_out`, which multishot recvmsg writes at
/// the start of each buffer.
const RECVMSG_OUT_BYTES: usize = 16;

/// Size of one `struct io_uring_buf` entry in a provided buffer ring.
const BUF_RING_ENTRY_BYTES: usize = 16;

/// Byte offset of the ring's tail (it overlays `resv` of entry 0).
const BUF_RING_TAIL_OFFSET: usize = 14;

/// Receive counters. Plain integers, updated only by the owning loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvStats {
    /// Datagrams delivered to the callback.
    pub datagrams: u64,
    /// Payload bytes delivered to the callback.
    pub bytes: u64,
    /// Times the provided buffer ring ran dry (the kernel ends the multishot
    /// receive with `ENOBUFS`; datagrams wait in the socket queue meanwhile).
    pub enobufs: u64,
    /// Datagrams larger than the buffer, dropped and not delivered.
    pub truncated: u64,
    /// Times a multishot receive ended and was submitted again.
    pub rearms: u64,
    /// Single-shot receives that completed with `EAGAIN` and were re-armed
    /// (woken for a datagram another receive took; benign).
    pub eagain: u64,
    /// Receive completions with any other error.
    pub errors: u64,
    /// The last such error (`errno`), 0 if none.
    pub last_errno: i32,
}

/// What the engine needs per mode.
enum Mode {
    Multishot {
        /// The provided buffer ring (`struct io_uring_buf` array), registered.
        buf_ring: Region,
        /// Our copy of the ring tail (entries published to the kernel).
        tail: u16,
        /// The tail value last stored into shared memory.
        published_tail: u16,
        /// Whether the multishot receive is in flight.
        armed: bool,
    },
    SingleShot {
        /// One `msghdr`, `iovec` and source address per buffer in flight.
        headers: HeapArray<libc::msghdr>,
        iovecs: HeapArray<libc::iovec>,
        names: HeapArray<libc::sockaddr_in>,
        /// Which buffers have a receive in flight.
        armed: HeapArray<bool>,
        depth: u16,
    },
}

pub(crate) struct DatagramRecv {
    fd: RawFd,
    mode: Mode,
    with_source: bool,
    /// Largest payload delivered.
    payload_bytes: usize,
    /// Bytes the kernel may fill per buffer: recvmsg_out header + name +
    /// payload (multishot layout).
    entry_bytes: usize,
    /// Distance between buffers: `entry_bytes` rounded up to a cache line.
    stride: usize,
    buffer_count: u16,
    buffers: Region,
    /// The `msghdr` template for multishot (only name/control lengths count).
    template: HeapArray<libc::msghdr>,
    /// Completions reaped while no callback was at hand (UDP send paths),
    /// delivered in order at the next poll. At most one per buffer plus the
    /// end of one multishot, so it never grows past its start-up capacity.
    stash: Vec<Cqe>,
    stash_head: usize,
    stats: RecvStats,
}

impl DatagramRecv {
    /// Sets up buffers and arms receiving on `fd`.
    ///
    /// Call this before the socket is bound, so nothing can arrive before the
    /// probe below has run: any completion seen here is the kernel refusing
    /// multishot recvmsg or the buffer ring, and the engine falls back to
    /// single-shot receives.
    pub(crate) fn new(
        ring: &mut Ring,
        fd: RawFd,
        buffer_count: u16,
        payload_bytes: usize,
        with_source: bool,
        preferred: RecvMode,
    ) -> io::Result<Self> {
        if buffer_count == 0 || buffer_count > 32768 || payload_bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "need 1..=32768 buffers of at least one byte",
            ));
        }
        if payload_bytes > u32::MAX as usize / 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer too large",
            ));
        }
        let buffer_count = buffer_count.next_power_of_two();
        let name_bytes = if with_source {
            mem::size_of::<libc::sockaddr_in>()
        } else {
            0
        };
        let entry_bytes = RECVMSG_OUT_BYTES + name_bytes + payload_bytes;
        let stride = entry_bytes.next_multiple_of(64);
        let buffers = Region::new(stride * buffer_count as usize)?;
        let mut header: libc::msghdr = zeroed();
        header.msg_namelen = name_bytes as libc::socklen_t;
        let template = HeapArray::new(1, header);
        let mut engine = Self {
            fd,
            mode: Mode::SingleShot {
                headers: HeapArray::new(0, zeroed()),
                iovecs: HeapArray::new(0, zeroed()),
                names: HeapArray::new(0, zeroed()),
                armed: HeapArray::new(0, false),
                depth: 0,
            },
            with_source,
            payload_bytes,
            entry_bytes,
            stride,
            buffer_count,
            buffers,
            template,
            stash: Vec::with_capacity(buffer_count as usize + 2),
            stash_head: 0,
            stats: RecvStats::default(),
        };
        if preferred == RecvMode::Multishot {
            match engine.try_multishot(ring) {
                Ok(()) => return Ok(engine),
                Err(e) => tracing::warn!(
                    error = %e,
                    "multishot recvmsg with a provided buffer ring refused; using single-shot receives"
                ),
            }
        }
        engine.start_single_shot(ring)?;
        Ok(engine)
    }

    fn try_multishot(&mut self, ring: &mut Ring) -> io::Result<()> {
        assert_eq!(ring.in_flight(), 0, "probe needs an idle ring");
        let buf_ring = Region::new(self.buffer_count as usize * BUF_RING_ENTRY_BYTES)?;
        for bid in 0..self.buffer_count {
            write_buf_ring_entry(
                &buf_ring,
                self.buffer_count,
                bid,
                self.buffer_addr(bid),
                self.entry_bytes,
                bid,
            );
        }
        store_tail(&buf_ring, self.buffer_count);
        // SAFETY: buf_ring is page-aligned, holds buffer_count entries, and is
        // owned by this engine, which unregisters it (or leaks it) before
        // freeing it; its entries point into self.buffers, owned likewise.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buf_ring.as_ptr() as u64,
                self.buffer_count,
                BUFFER_GROUP,
                0,
            )?;
        }
        self.mode = Mode::Multishot {
            buf_ring,
            tail: self.buffer_count,
            published_tail: self.buffer_count,
            armed: false,
        };
        let probe = self.arm_multishot(ring).and_then(|()| ring.submit());
        // The socket is not bound yet, so a completion now is a refusal.
        let mut cqes = [Cqe::default(); CQE_BATCH];
        let reaped = ring.reap(&mut cqes);
        let refused = cqes[..reaped]
            .iter()
            .find(|c| c.result < 0)
            .map(|c| c.result);
        if probe.is_ok() && refused.is_none() && reaped == 0 {
            return Ok(());
        }
        // Leave nothing in flight that could use the buffer ring, then drop it.
        if !ring.cancel_all_and_drain(std::time::Duration::from_secs(1)) {
            // The kernel still holds the buffer ring: keep its memory forever.
            if let Mode::Multishot { buf_ring, .. } = &mut self.mode {
                buf_ring.leak();
            }
            self.buffers.leak();
            return Err(io::Error::other("could not withdraw the multishot probe"));
        }
        let _ = ring.submitter().unregister_buf_ring(BUFFER_GROUP);
        self.mode = Mode::SingleShot {
            headers: HeapArray::new(0, zeroed()),
            iovecs: HeapArray::new(0, zeroed()),
            names: HeapArray::new(0, zeroed()),
            armed: HeapArray::new(0, false),
            depth: 0,
        };
        probe?;
        Err(io::Error::from_raw_os_error(
            refused.map(|r| -r).unwrap_or(libc::EINVAL),
        ))
    }

    fn start_single_shot(&mut self, ring: &mut Ring) -> io::Result<()> {
        let depth = self.buffer_count.min(SINGLE_SHOT_DEPTH_MAX);
        self.mode = Mode::SingleShot {
            headers: HeapArray::new(depth as usize, zeroed()),
            iovecs: HeapArray::new(depth as usize, zeroed()),
            names: HeapArray::new(depth as usize, zeroed()),
            armed: HeapArray::new(depth as usize, false),
            depth,
        };
        for index in 0..depth {
            self.arm_single(ring, index)?;
        }
        ring.submit()
    }

    pub(crate) fn mode(&self) -> RecvMode {
        match self.mode {
            Mode::Multishot { .. } => RecvMode::Multishot,
            Mode::SingleShot { .. } => RecvMode::SingleShot,
        }
    }

    pub(crate) fn stats(&self) -> RecvStats {
        self.stats
    }

    pub(crate) fn is_recv(cqe: &Cqe) -> bool {
        matches!(cqe.kind(), kind::RECV_MULTI | kind::RECV_SINGLE)
    }

    fn buffer_addr(&self, index: u16) -> *mut u8 {
        self.buffers.at(index as usize * self.stride)
    }

    fn arm_multishot(&mut self, ring: &mut Ring) -> io::Result<()> {
        let Mode::Multishot { armed, .. } = &mut self.mode else {
            unreachable!("arm_multishot in single-shot mode")
        };
        assert!(!*armed);
        let entry =
            opcode::RecvMsgMulti::new(types::Fd(self.fd), self.template.ptr(0), BUFFER_GROUP)
                .build()
                .user_data(user_data(kind::RECV_MULTI, 0, 0));
        // SAFETY: the msghdr template and the registered buffer ring (and the
        // buffers its entries point at) are owned by this engine and outlive
        // the operation (the owner drains the ring before dropping us).
        unsafe { ring.push(&entry)? };
        *armed = true;
        Ok(())
    }

    fn arm_single(&mut self, ring: &mut Ring, index: u16) -> io::Result<()> {
        let buffer = self.buffer_addr(index);
        let name_bytes = if self.with_source {
            mem::size_of::<libc::sockaddr_in>()
        } else {
            0
        };
        let Mode::SingleShot {
            headers,
            iovecs,
            names,
            armed,
            ..
        } = &mut self.mode
        else {
            unreachable!("arm_single in multishot mode")
        };
        let i = index as usize;
        assert!(!armed.get(i));
        iovecs.set(
            i,
            libc::iovec {
                iov_base: buffer.cast(),
                iov_len: self.payload_bytes,
            },
        );
        names.set(i, zeroed());
        let mut header: libc::msghdr = zeroed();
        if self.with_source {
            header.msg_name = names.ptr(i).cast();
            header.msg_namelen = name_bytes as libc::socklen_t;
        }
        header.msg_iov = iovecs.ptr(i);
        header.msg_iovlen = 1;
        headers.set(i, header);
        // MSG_TRUNC: the result is the datagram's real length, so a datagram
        // longer than the buffer is seen as such.
        let entry = opcode::RecvMsg::new(types::Fd(self.fd), headers.ptr(i))
            .flags(libc::MSG_TRUNC as u32)
            .build()
            .user_data(user_data(kind::RECV_SINGLE, 0, index as u32));
        // SAFETY: header, iovec, name and buffer `index` belong to this engine,
        // are not touched again until this operation completes, and outlive it
        // (the owner drains the ring before dropping us).
        unsafe { ring.push(&entry)? };
        armed.set(i, true);
        Ok(())
    }

    /// Keeps a receive completion for delivery at the next poll (used when
    /// completions are reaped on a path that has no callback).
    pub(crate) fn stash(&mut self, cqe: Cqe) {
        assert!(
            self.stash.len() < self.stash.capacity(),
            "receive stash overflow"
        );
        self.stash.push(cqe);
    }

    /// Delivers stashed completions in order.
    pub(crate) fn deliver_stashed(
        &mut self,
        ring: &mut Ring,
        on_datagram: &mut impl FnMut(Option<SocketAddrV4>, &[u8]),
    ) -> io::Result<usize> {
        let mut delivered = 0;
        while self.stash_head < self.stash.len() {
            let cqe = self.stash[self.stash_head];
            self.stash_head += 1;
            delivered += self.complete(ring, cqe, on_datagram)?;
        }
        self.stash.clear();
        self.stash_head = 0;
        Ok(delivered)
    }

    /// Handles one receive completion; returns 1 if a datagram was delivered.
    pub(crate) fn complete(
        &mut self,
        ring: &mut Ring,
        cqe: Cqe,
        on_datagram: &mut impl FnMut(Option<SocketAddrV4>, &[u8]),
    ) -> io::Result<usize> {
        match cqe.kind() {
            kind::RECV_MULTI => Ok(self.complete_multishot(cqe, on_datagram)),
            kind::RECV_SINGLE => self.complete_single(ring, cqe, on_datagram),
            other => unreachable!("not a receive completion: kind {other}"),
        }
    }

    fn count_error(&mut self, result: i32) {
        match -result {
            libc::ENOBUFS => self.stats.enobufs += 1,
            libc::EAGAIN => self.stats.eagain += 1,
            libc::ECANCELED => {}
            errno => {
                self.stats.errors += 1;
                self.stats.last_errno = errno;
            }
        }
    }

    fn complete_multishot(
        &mut self,
        cqe: Cqe,
        on_datagram: &mut impl FnMut(Option<SocketAddrV4>, &[u8]),
    ) -> usize {
        if !cqe.more() {
            if let Mode::Multishot { armed, .. } = &mut self.mode {
                *armed = false;
            }
        }
        if cqe.result < 0 {
            self.count_error(cqe.result);
            return 0;
        }
        let Some(bid) = cqe.buffer_id() else {
            self.stats.errors += 1;
            return 0;
        };
        let len = (cqe.result as usize).min(self.entry_bytes);
        let template = self.template.get(0);
        let mut delivered = 0;
        {
            // SAFETY: the kernel has finished writing buffer `bid` (this is its
            // completion) and will not pick it again until it is recycled below.
            let bytes = unsafe { self.buffers.slice(bid as usize * self.stride, len) };
            match types::RecvMsgOut::parse(bytes, &template) {
                Ok(out) if out.is_payload_truncated() => self.stats.truncated += 1,
                Ok(out) => {
                    let source = if self.with_source {
                        parse_source(out.name_data())
                    } else {
                        None
                    };
                    let payload = out.payload_data();
                    on_datagram(source, payload);
                    self.stats.datagrams += 1;
                    self.stats.bytes += payload.len() as u64;
                    delivered = 1;
                }
                Err(()) => self.stats.errors += 1,
            }
        }
        self.recycle(bid);
        delivered
    }

    /// Puts buffer `bid` back on the ring (published in `finish_batch`).
    fn recycle(&mut self, bid: u16) {
        let addr = self.buffer_addr(bid);
        let Mode::Multishot { buf_ring, tail, .. } = &mut self.mode else {
            unreachable!("recycle in single-shot mode")
        };
        write_buf_ring_entry(
            buf_ring,
            self.buffer_count,
            *tail,
            addr,
            self.entry_bytes,
            bid,
        );
        *tail = tail.wrapping_add(1);
    }

    fn complete_single(
        &mut self,
        ring: &mut Ring,
        cqe: Cqe,
        on_datagram: &mut impl FnMut(Option<SocketAddrV4>, &[u8]),
    ) -> io::Result<usize> {
        let index = cqe.index() as u16;
        let i = index as usize;
        let source = {
            let Mode::SingleShot { armed, names, .. } = &mut self.mode else {
                unreachable!("single-shot completion in multishot mode")
            };
            armed.set(i, false);
            names.get(i)
        };
        if cqe.result == -libc::ECANCELED {
            return Ok(0);
        }
        let mut delivered = 0;
        if cqe.result < 0 {
            self.count_error(cqe.result);
        } else if cqe.result as usize > self.payload_bytes {
            self.stats.truncated += 1;
        } else {
            let len = cqe.result as usize;
            let source = if self.with_source {
                sock::from_sockaddr_in(&source)
            } else {
                None
            };
            // SAFETY: the receive into this buffer has completed and the
            // buffer is re-armed only after the slice is gone.
            let payload = unsafe { self.buffers.slice(i * self.stride, len) };
            on_datagram(source, payload);
            self.stats.datagrams += 1;
            self.stats.bytes += len as u64;
            delivered = 1;
        }
        self.arm_single(ring, index)?;
        Ok(delivered)
    }

    /// End of a batch: publishes recycled buffers and re-arms a multishot
    /// receive that ended. Does not submit.
    pub(crate) fn finish_batch(&mut self, ring: &mut Ring) -> io::Result<()> {
        let Mode::Multishot {
            buf_ring,
            tail,
            published_tail,
            armed,
        } = &mut self.mode
        else {
            return Ok(());
        };
        if *tail != *published_tail {
            store_tail(buf_ring, *tail);
            *published_tail = *tail;
        }
        if !*armed && self.stash_head == self.stash.len() {
            self.stats.rearms += 1;
            self.arm_multishot(ring)?;
        }
        Ok(())
    }

    /// Before dropping: gives the buffer ring back (the owner has drained the
    /// ring) or, if draining failed, leaks every buffer the kernel may use.
    pub(crate) fn release(&mut self, ring: &mut Ring, drained: bool) {
        if !drained {
            self.buffers.leak();
            self.template.leak();
            match &mut self.mode {
                Mode::Multishot { buf_ring, .. } => buf_ring.leak(),
                Mode::SingleShot {
                    headers,
                    iovecs,
                    names,
                    ..
                } => {
                    headers.leak();
                    iovecs.leak();
                    names.leak();
                }
            }
            return;
        }
        if let Mode::Multishot { .. } = self.mode {
            let _ = ring.submitter().unregister_buf_ring(BUFFER_GROUP);
        }
    }

    /// Buffers in single-shot mode, or buffer ring entries in multishot mode.
    pub(crate) fn buffer_count(&self) -> u16 {
        match self.mode {
            Mode::Multishot { .. } => self.buffer_count,
            Mode::SingleShot { depth, .. } => depth,
        }
    }
}

fn parse_source(name: &[u8]) -> Option<SocketAddrV4> {
    if name.len() < mem::size_of::<libc::sockaddr_in>() {
        return None;
    }
    // SAFETY: name holds at least a sockaddr_in's bytes; read_unaligned copes
    // with the buffer's alignment.
    let sa = unsafe { name.as_ptr().cast::<libc::sockaddr_in>().read_unaligned() };
    sock::from_sockaddr_in(&sa)
}

/// Writes ring entry `position` (mod the ring size). Only addr, len and bid
/// are written: `resv` of entry 0 is the tail, which the kernel reads.
fn write_buf_ring_entry(
    buf_ring: &Region,
    count: u16,
    position: u16,
    addr: *mut u8,
    len: usize,
    bid: u16,
) {
    let index = (position & (count - 1)) as usize;
    let entry = buf_ring.at(index * BUF_RING_ENTRY_BYTES);
    // SAFETY: entry `index` lies inside buf_ring (count entries); the kernel
    // reads an entry only after the tail moves past it, which happens after
    // these writes (Release store in store_tail). Offsets follow
    // struct io_uring_buf { u64 addr; u32 len; u16 bid; u16 resv; }.
    unsafe {
        entry.cast::<u64>().write(addr as u64);
        entry.add(8).cast::<u32>().write(len as u32);
        entry.add(12).cast::<u16>().write(bid);
    }
}

fn store_tail(buf_ring: &Region, tail: u16) {
    let tail_ptr = buf_ring.at(BUF_RING_TAIL_OFFSET).cast::<u16>();
    // SAFETY: the tail is a naturally aligned u16 inside the mapping that the
    // kernel reads atomically; we are its only writer.
    let atomic = unsafe { AtomicU16::from_ptr(tail_ptr) };
    atomic.store(tail, Ordering::Release);
}
