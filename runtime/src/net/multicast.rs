//! UDP multicast through io_uring: a sender with a fixed pool of send slots,
//! and a receiver that joins a group on one interface.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use io_uring::{opcode, types};

use super::dgram::{DatagramRecv, RecvStats};
use super::ring::{
    kind, until_delivered, until_done, user_data, Cqe, Ring, WatchedWaker, CQE_BATCH,
};
use super::send_slots::{SendSlots, SendStats};
use crate::wake::Waker;

use super::{
    sock, MulticastConfig, RecvMode, DROP_DRAIN_TIMEOUT, RECEIVE_BUFFER_BYTES_WANTED,
    SEND_BUFFER_BYTES_WANTED,
};

/// UDP multicast sender bound to the interface address (`IP_MULTICAST_IF`,
/// TTL, `IP_MULTICAST_LOOP`) and connected to the group, sending through its
/// own io_uring from a fixed pool of send slots allocated in [`new`].
///
/// A slot is in one of three states: free, *claimed* (handed out by
/// [`slot`] to build a packet in; at most one at a time, and it stays claimed,
/// content intact, until it is sent) or in flight (its send has not
/// completed; the kernel reads it). [`poll_completions`] frees slots.
///
/// [`new`]: MulticastSender::new
/// [`slot`]: MulticastSender::slot
/// [`poll_completions`]: MulticastSender::poll_completions
pub struct MulticastSender {
    ring: Ring,
    socket: OwnedFd,
    slots: SendSlots,
    /// The slot handed out by `slot()` and not yet sent.
    claimed: Option<u32>,
    local_addr: SocketAddrV4,
    destination: SocketAddrV4,
    send_buffer_bytes: usize,
}

impl MulticastSender {
    /// Opens the socket (bound to `cfg.interface`, connected to
    /// `cfg.group:cfg.port`), its ring and `slots` buffers of `slot_bytes`.
    pub fn new(cfg: &MulticastConfig, slots: usize, slot_bytes: usize) -> io::Result<Self> {
        if !cfg.group.is_multicast() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "group is not a multicast address",
            ));
        }
        if slots == 0 || slots > 1 << 16 || slot_bytes == 0 || slot_bytes > 1 << 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "need 1..=65536 slots of 1..=65536 bytes",
            ));
        }
        let socket = sock::socket(libc::AF_INET, libc::SOCK_DGRAM)?;
        let fd = socket.as_raw_fd();
        sock::set_option(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            sock::in_addr(cfg.interface),
        )?;
        sock::set_option(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_TTL,
            cfg.ttl as libc::c_int,
        )?;
        sock::set_option(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_LOOP,
            cfg.loopback as libc::c_int,
        )?;
        let send_buffer_bytes = sock::grow_buffer(fd, false, SEND_BUFFER_BYTES_WANTED)?;
        sock::bind(fd, &SocketAddr::V4(SocketAddrV4::new(cfg.interface, 0)))?;
        let destination = SocketAddrV4::new(cfg.group, cfg.port);
        sock::connect_datagram(fd, &SocketAddr::V4(destination))?;
        let local_addr = sock::local_addr_v4(&socket)?;
        let ring = Ring::new(slots as u32, 2 * slots as u32)?;
        let send_slots = SendSlots::new(slots, slot_bytes)?;
        tracing::info!(
            %destination, %local_addr, interface = %cfg.interface, ttl = cfg.ttl,
            loopback = cfg.loopback, slots, slot_bytes, send_buffer_bytes,
            "multicast sender ready"
        );
        Ok(Self {
            ring,
            socket,
            slots: send_slots,
            claimed: None,
            local_addr,
            destination,
            send_buffer_bytes,
        })
    }

    /// The buffer to build the next packet in: the claimed slot if there is
    /// one, else a newly claimed free slot. `None` when every slot is in
    /// flight even after reaping completions (back-pressure: call
    /// [`poll_completions`](Self::poll_completions) or
    /// [`wait_completions`](Self::wait_completions) and try again).
    pub fn slot(&mut self) -> Option<(usize, &mut [u8])> {
        if self.claimed.is_none() {
            if !self.slots.has_free() {
                let _ = self.poll_completions();
            }
            self.claimed = Some(self.slots.take()?);
        }
        let slot = self.claimed.expect("claimed above");
        // SAFETY: a claimed slot has no send in flight, and the returned
        // borrow of self prevents any other access until it ends.
        let bytes = unsafe { self.slots.buffer_mut(slot) };
        Some((slot as usize, bytes))
    }

    /// Queues the send of the first `len` bytes of the claimed `slot` without
    /// entering the kernel; [`submit`](Self::submit) sends everything queued
    /// with one system call.
    pub fn queue_slot(&mut self, slot: usize, len: usize) -> io::Result<()> {
        assert_eq!(
            self.claimed,
            Some(slot as u32),
            "queue_slot: slot {slot} is not the claimed slot"
        );
        self.slots.check_fits(len)?;
        self.push_send(slot as u32, len)?;
        self.claimed = None;
        Ok(())
    }

    /// Queues and submits the send of the first `len` bytes of `slot` (one
    /// `io_uring_enter`).
    pub fn send_slot(&mut self, slot: usize, len: usize) -> io::Result<()> {
        self.queue_slot(slot, len)?;
        self.submit()
    }

    /// Submits every queued send.
    pub fn submit(&mut self) -> io::Result<()> {
        self.ring.submit()
    }

    /// Copies `bytes` into a free slot (not the claimed one) and sends it.
    /// `WouldBlock` when every slot is in flight.
    pub fn send_copy(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.slots.check_fits(bytes.len())?;
        if !self.slots.has_free() {
            self.poll_completions()?;
        }
        let Some(slot) = self.slots.take() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        self.slots.fill(slot, bytes);
        if let Err(e) = self.push_send(slot, bytes.len()) {
            self.slots.put_back(slot);
            return Err(e);
        }
        self.submit()
    }

    fn push_send(&mut self, slot: u32, len: usize) -> io::Result<()> {
        let bytes = self.slots.ptr(slot);
        push_send(&mut self.ring, &self.socket, slot, bytes, len)?;
        self.slots.queued(slot, len);
        Ok(())
    }

    /// Submits anything queued, reaps send completions, frees their slots and
    /// counts errors. Non-blocking; returns the completions reaped.
    pub fn poll_completions(&mut self) -> io::Result<usize> {
        self.ring.submit()?;
        let mut cqes = [Cqe::default(); CQE_BATCH];
        let mut total = 0;
        loop {
            let n = self.ring.reap(&mut cqes);
            for cqe in &cqes[..n] {
                self.complete(*cqe);
            }
            total += n;
            if n < cqes.len() {
                return Ok(total);
            }
        }
    }

    fn complete(&mut self, cqe: Cqe) {
        let (ring, socket) = (&mut self.ring, &self.socket);
        self.slots.complete(cqe, |slot, bytes, len| {
            // The socket was non-blocking-busy when io_uring retried the send.
            push_send(ring, socket, slot, bytes, len)
        });
    }

    /// Blocks until at least one send completes or `timeout` passes, then
    /// reaps. Returns the completions reaped (0 if nothing was in flight).
    pub fn wait_completions(&mut self, timeout: Duration) -> io::Result<usize> {
        if self.ring.in_flight() == 0 {
            return Ok(0);
        }
        if !self.ring.has_completions() {
            self.ring.wait(timeout)?;
        }
        self.poll_completions()
    }

    /// Waits until no send is in flight; `TimedOut` if that takes longer than
    /// `timeout`.
    pub fn flush(&mut self, timeout: Duration) -> io::Result<()> {
        until_done(timeout, "sends still in flight", |wait| {
            if let Some(wait) = wait {
                self.ring.wait(wait)?;
            }
            self.poll_completions()?;
            Ok(self.ring.in_flight() == 0)
        })
    }

    /// Sends not yet completed.
    pub fn in_flight(&self) -> usize {
        self.ring.in_flight() as usize
    }

    /// The address the socket is bound to (interface address, ephemeral port).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local_addr
    }

    /// `group:port`.
    pub fn destination(&self) -> SocketAddrV4 {
        self.destination
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.slots.slot_bytes()
    }

    /// `SO_SNDBUF` as the kernel reports it.
    pub fn send_buffer_bytes(&self) -> usize {
        self.send_buffer_bytes
    }

    pub fn stats(&self) -> SendStats {
        self.slots.stats()
    }
}

/// Queues a send of `len` bytes at `bytes` (slot `slot`'s buffer) on the
/// connected `socket`.
fn push_send(
    ring: &mut Ring,
    socket: &OwnedFd,
    slot: u32,
    bytes: *mut u8,
    len: usize,
) -> io::Result<()> {
    let entry = opcode::Send::new(types::Fd(socket.as_raw_fd()), bytes, len as u32)
        .build()
        .user_data(user_data(kind::SEND, 0, slot));
    // SAFETY: the slot's bytes are owned by the sender's SendSlots, are not
    // written until the slot is freed by its completion, and outlive the
    // send (Drop drains the ring or leaks the buffers).
    unsafe { ring.push(&entry) }
}

impl AsRawFd for MulticastSender {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Drop for MulticastSender {
    fn drop(&mut self) {
        if !self.ring.cancel_all_and_drain(DROP_DRAIN_TIMEOUT) {
            tracing::error!("multicast sender: sends still in flight at drop; leaking its buffers");
            self.slots.leak();
        }
    }
}

/// Joins a multicast group on one interface and receives through its own
/// io_uring: multishot `recvmsg` with a provided buffer ring where the kernel
/// supports it, else single-shot receives into owned buffers (decided once,
/// at construction; see [`mode`](Self::mode)).
pub struct MulticastReceiver {
    ring: Ring,
    engine: DatagramRecv,
    socket: OwnedFd,
    receive_buffer_bytes: usize,
    local_addr: SocketAddrV4,
    /// A waker watched in the ring ([`watch_waker`](Self::watch_waker)).
    waker: Option<WatchedWaker>,
    /// The waker was woken and nobody took it yet.
    woken: bool,
}

impl MulticastReceiver {
    /// Binds `group:port` (`SO_REUSEADDR` + `SO_REUSEPORT`, so several
    /// receivers on one host share it), joins the group on `cfg.interface`,
    /// asks for an 8 MiB `SO_RCVBUF` (`SO_RCVBUFFORCE` when privileged) and
    /// arms receiving into `buffers` buffers (rounded up to a power of two,
    /// at most 32768) of `buffer_bytes` payload bytes each. Datagrams longer
    /// than `buffer_bytes` are counted as truncated and not delivered.
    pub fn new(cfg: &MulticastConfig, buffers: u16, buffer_bytes: usize) -> io::Result<Self> {
        Self::with_mode(cfg, buffers, buffer_bytes, RecvMode::Multishot)
    }

    /// As [`new`](Self::new), with `RecvMode::SingleShot` forcing the
    /// fallback (tests, or kernels where multishot misbehaves).
    pub fn with_mode(
        cfg: &MulticastConfig,
        buffers: u16,
        buffer_bytes: usize,
        preferred: RecvMode,
    ) -> io::Result<Self> {
        if !cfg.group.is_multicast() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "group is not a multicast address",
            ));
        }
        let socket = sock::socket(libc::AF_INET, libc::SOCK_DGRAM)?;
        let fd = socket.as_raw_fd();
        sock::set_reuse(fd, true)?;
        // Deliver only the groups this socket joined, not every group joined
        // by any socket on the host (Linux's default).
        sock::set_option(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_ALL,
            0 as libc::c_int,
        )?;
        let receive_buffer_bytes = sock::grow_buffer(fd, true, RECEIVE_BUFFER_BYTES_WANTED)?;
        let count = u32::from(buffers).max(1).next_power_of_two();
        let mut ring = Ring::new(
            2 * u32::from(super::dgram::SINGLE_SHOT_DEPTH_MAX),
            2 * count,
        )?;
        // Armed before bind: see DatagramRecv::new.
        let mut engine = DatagramRecv::new(&mut ring, fd, buffers, buffer_bytes, false, preferred)?;
        let bound = sock::bind(fd, &SocketAddr::V4(SocketAddrV4::new(cfg.group, cfg.port)))
            .and_then(|()| {
                let membership = libc::ip_mreq {
                    imr_multiaddr: sock::in_addr(cfg.group),
                    imr_interface: sock::in_addr(cfg.interface),
                };
                sock::set_option(fd, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, membership)
            })
            .and_then(|()| sock::local_addr_v4(&socket));
        let local_addr = match bound {
            Ok(addr) => addr,
            Err(e) => {
                let drained = ring.cancel_all_and_drain(DROP_DRAIN_TIMEOUT);
                engine.release(&mut ring, drained);
                return Err(e);
            }
        };
        tracing::info!(
            group = %cfg.group, port = cfg.port, interface = %cfg.interface,
            mode = ?engine.mode(), buffers = engine.buffer_count(), buffer_bytes,
            receive_buffer_bytes, "multicast receiver joined"
        );
        Ok(Self {
            ring,
            engine,
            socket,
            receive_buffer_bytes,
            local_addr,
            waker: None,
            woken: false,
        })
    }

    /// Watches `waker`'s eventfd in this receiver's ring, so that a
    /// [`Waker::wake`] from another thread ends a [`wait`](Self::wait) at
    /// once: a loop that waits for the stream and for work handed over by
    /// other threads (the store node's HTTP and till threads) parks here.
    /// A wake stays noted until [`take_woken`](Self::take_woken) takes it;
    /// until then `wait` returns at once.
    pub fn watch_waker(&mut self, waker: Waker) -> io::Result<()> {
        let watched = self.waker.insert(WatchedWaker::new(waker));
        watched.arm(&mut self.ring)?;
        self.ring.submit()
    }

    /// Whether the watched waker was woken since the last call; clears it.
    pub fn take_woken(&mut self) -> bool {
        std::mem::take(&mut self.woken)
    }

    /// How this receiver receives on this kernel.
    pub fn mode(&self) -> RecvMode {
        self.engine.mode()
    }

    /// Non-blocking: hands the datagrams already received to `on_datagram`
    /// (at most one completion queue's worth per call, so one call is
    /// bounded), re-arms the multishot receive if it ended, and returns how
    /// many datagrams were delivered. Makes no system call when idle.
    pub fn poll(&mut self, mut on_datagram: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut deliver = |_: Option<SocketAddrV4>, bytes: &[u8]| on_datagram(bytes);
        self.ring.submit()?;
        let budget = self.ring.cq_capacity();
        let mut cqes = [Cqe::default(); CQE_BATCH];
        let mut seen = 0;
        let mut delivered = 0;
        while seen < budget {
            let n = self.ring.reap(&mut cqes);
            for cqe in &cqes[..n] {
                if DatagramRecv::is_recv(cqe) {
                    delivered += self.engine.complete(&mut self.ring, *cqe, &mut deliver)?;
                } else if let (kind::WAKE, Some(waker)) = (cqe.kind(), &mut self.waker) {
                    waker.complete(*cqe);
                    self.woken = true;
                }
            }
            seen += n;
            if n < cqes.len() {
                break;
            }
        }
        self.engine.finish_batch(&mut self.ring)?;
        if let Some(waker) = &mut self.waker {
            waker.arm(&mut self.ring)?;
        }
        self.ring.submit()?;
        Ok(delivered)
    }

    /// Blocks until at least one datagram was delivered, the watched waker
    /// was woken (see [`watch_waker`](Self::watch_waker)), or `timeout`
    /// passed; returns how many datagrams were delivered.
    pub fn wait(
        &mut self,
        timeout: Duration,
        mut on_datagram: impl FnMut(&[u8]),
    ) -> io::Result<usize> {
        let mut delivered = 0;
        until_delivered(timeout, |wait| {
            if let Some(wait) = wait {
                self.ring.wait(wait)?;
            }
            delivered += self.poll(&mut on_datagram)?;
            Ok(delivered + usize::from(self.woken))
        })?;
        Ok(delivered)
    }

    pub fn stats(&self) -> RecvStats {
        self.engine.stats()
    }

    /// `SO_RCVBUF` as the kernel reports it (twice what was granted, per the
    /// kernel's bookkeeping).
    pub fn receive_buffer_bytes(&self) -> usize {
        self.receive_buffer_bytes
    }

    /// `group:port`.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local_addr
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Datagrams the kernel dropped on this socket since it was opened (its
    /// receive queue was full: the loop fell behind or `SO_RCVBUF` is too
    /// small), read with `SO_MEMINFO`. One system call: call it off the hot
    /// path (once per second, or when idle). `None` where the kernel does not
    /// report it.
    pub fn kernel_drops(&self) -> Option<u64> {
        kernel_drops(self.socket.as_raw_fd())
    }
}

/// `SK_MEMINFO_DROPS` of `fd` through `getsockopt(SOL_SOCKET, SO_MEMINFO)`.
pub(crate) fn kernel_drops(fd: RawFd) -> Option<u64> {
    /// `SK_MEMINFO_VARS` in include/uapi/linux/sock_diag.h (Linux 4.x+).
    const SK_MEMINFO_VARS: usize = 9;
    /// `SK_MEMINFO_DROPS`: the last field.
    const SK_MEMINFO_DROPS: usize = 8;
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is
    // that large, and updates `len`; both live for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize >= (SK_MEMINFO_DROPS + 1) * 4)
        .then(|| u64::from(info[SK_MEMINFO_DROPS]))
}

impl AsRawFd for MulticastReceiver {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Drop for MulticastReceiver {
    fn drop(&mut self) {
        let drained = self.ring.cancel_all_and_drain(DROP_DRAIN_TIMEOUT);
        if !drained {
            tracing::error!(
                "multicast receiver: receives still in flight at drop; leaking its buffers"
            );
        }
        self.engine.release(&mut self.ring, drained);
    }
}
