//! Plain UDP unicast through io_uring, for the retransmit server and its
//! clients: receive with the source address, send to an address.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use io_uring::{opcode, types};

use super::dgram::{DatagramRecv, RecvStats};
use super::ring::{
    kind, until_delivered, until_done, user_data, zeroed, Cqe, HeapArray, Ring, CQE_BATCH,
};
use super::send_slots::{SendSlots, SendStats};
use super::{sock, RecvMode, DROP_DRAIN_TIMEOUT, RECEIVE_BUFFER_BYTES_WANTED};

/// A UDP socket bound to one address, receiving (with each datagram's source)
/// and sending (to any address) through its own io_uring.
///
/// Receiving uses the same engine as [`MulticastReceiver`]: `slots` buffers
/// (rounded up to a power of two) of `slot_bytes`, multishot where the
/// kernel has it. Sending copies into one of `slots` owned send slots.
/// Send completions are reaped by [`poll_recv`], [`wait_recv`] and
/// [`flush`]; a receive that completes while [`send_to`] or [`flush`] reaps
/// is kept and delivered, in order, by the next [`poll_recv`].
///
/// [`MulticastReceiver`]: super::MulticastReceiver
/// [`poll_recv`]: UdpSocketRing::poll_recv
/// [`wait_recv`]: UdpSocketRing::wait_recv
/// [`flush`]: UdpSocketRing::flush
/// [`send_to`]: UdpSocketRing::send_to
pub struct UdpSocketRing {
    ring: Ring,
    engine: DatagramRecv,
    socket: OwnedFd,
    send_slots: SendSlots,
    /// Per send slot: the msghdr, iovec and destination of its `SendMsg`.
    headers: HeapArray<libc::msghdr>,
    iovecs: HeapArray<libc::iovec>,
    destinations: HeapArray<libc::sockaddr_in>,
    local_addr: SocketAddrV4,
}

impl UdpSocketRing {
    /// Binds `addr` (port 0 picks one) with `slots` receive buffers and
    /// `slots` send slots of `slot_bytes` each.
    pub fn bind(addr: SocketAddrV4, slots: usize, slot_bytes: usize) -> io::Result<Self> {
        Self::bind_with_mode(addr, slots, slot_bytes, RecvMode::Multishot)
    }

    /// As [`bind`](Self::bind), with `RecvMode::SingleShot` forcing the
    /// receive fallback.
    pub fn bind_with_mode(
        addr: SocketAddrV4,
        slots: usize,
        slot_bytes: usize,
        preferred: RecvMode,
    ) -> io::Result<Self> {
        if slots == 0 || slots > 32768 || slot_bytes == 0 || slot_bytes > 1 << 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "need 1..=32768 slots of 1..=65536 bytes",
            ));
        }
        let socket = sock::socket(libc::AF_INET, libc::SOCK_DGRAM)?;
        let fd = socket.as_raw_fd();
        sock::grow_buffer(fd, true, RECEIVE_BUFFER_BYTES_WANTED)?;
        let receive_count = (slots as u32).next_power_of_two();
        let mut ring = Ring::new(slots as u32 + 32, 2 * (receive_count + slots as u32))?;
        // Armed before bind: see DatagramRecv::new.
        let mut engine =
            DatagramRecv::new(&mut ring, fd, slots as u16, slot_bytes, true, preferred)?;
        let local_addr = match sock::bind(fd, &SocketAddr::V4(addr))
            .and_then(|()| sock::local_addr_v4(&socket))
        {
            Ok(addr) => addr,
            Err(e) => {
                let drained = ring.cancel_all_and_drain(DROP_DRAIN_TIMEOUT);
                engine.release(&mut ring, drained);
                return Err(e);
            }
        };
        let send_slots = SendSlots::new(slots, slot_bytes)?;
        tracing::info!(%local_addr, mode = ?engine.mode(), slots, slot_bytes, "udp socket ready");
        Ok(Self {
            ring,
            engine,
            socket,
            send_slots,
            headers: HeapArray::new(slots, zeroed()),
            iovecs: HeapArray::new(slots, zeroed()),
            destinations: HeapArray::new(slots, zeroed()),
            local_addr,
        })
    }

    /// Non-blocking: delivers every datagram already received (with its
    /// source) and reaps send completions; returns datagrams delivered.
    pub fn poll_recv(
        &mut self,
        mut on_datagram: impl FnMut(SocketAddrV4, &[u8]),
    ) -> io::Result<usize> {
        let unspecified = SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0);
        let mut deliver = |source: Option<SocketAddrV4>, bytes: &[u8]| {
            on_datagram(source.unwrap_or(unspecified), bytes)
        };
        self.ring.submit()?;
        let mut delivered = self.engine.deliver_stashed(&mut self.ring, &mut deliver)?;
        let budget = self.ring.cq_capacity();
        let mut cqes = [Cqe::default(); CQE_BATCH];
        let mut seen = 0;
        while seen < budget {
            let n = self.ring.reap(&mut cqes);
            for cqe in &cqes[..n] {
                if DatagramRecv::is_recv(cqe) {
                    delivered += self.engine.complete(&mut self.ring, *cqe, &mut deliver)?;
                } else {
                    self.complete_send(*cqe);
                }
            }
            seen += n;
            if n < cqes.len() {
                break;
            }
        }
        self.engine.finish_batch(&mut self.ring)?;
        self.ring.submit()?;
        Ok(delivered)
    }

    /// Waits in the ring up to `timeout` for a completion (a datagram, or a
    /// send finishing) without delivering anything: an idle loop's park.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.ring.submit()?;
        if self.ring.has_completions() {
            return Ok(());
        }
        self.ring.wait(timeout)
    }

    /// Blocks until at least one datagram was delivered or `timeout` passed.
    pub fn wait_recv(
        &mut self,
        timeout: Duration,
        mut on_datagram: impl FnMut(SocketAddrV4, &[u8]),
    ) -> io::Result<usize> {
        until_delivered(timeout, |wait| {
            if let Some(wait) = wait {
                self.ring.wait(wait)?;
            }
            self.poll_recv(&mut on_datagram)
        })
    }

    /// Copies `bytes` into a free send slot and sends it to `to` (one
    /// `io_uring_enter`). `WouldBlock` when every slot is in flight.
    pub fn send_to(&mut self, to: SocketAddrV4, bytes: &[u8]) -> io::Result<()> {
        self.send_slots.check_fits(bytes.len())?;
        if !self.send_slots.has_free() {
            self.reap_without_callback()?;
        }
        let Some(slot) = self.send_slots.take() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let i = slot as usize;
        self.send_slots.fill(slot, bytes);
        self.destinations.set(i, sock::sockaddr_in(to));
        self.iovecs.set(
            i,
            libc::iovec {
                iov_base: self.send_slots.ptr(slot).cast(),
                iov_len: bytes.len(),
            },
        );
        let mut header: libc::msghdr = zeroed();
        header.msg_name = self.destinations.ptr(i).cast();
        header.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        header.msg_iov = self.iovecs.ptr(i);
        header.msg_iovlen = 1;
        self.headers.set(i, header);
        self.send_slots.queued(slot, bytes.len());
        if let Err(e) = push_send(&mut self.ring, &self.socket, &self.headers, slot) {
            self.send_slots.put_back(slot);
            return Err(e);
        }
        self.ring.submit()
    }

    fn complete_send(&mut self, cqe: Cqe) {
        let (ring, socket, headers) = (&mut self.ring, &self.socket, &self.headers);
        // On EAGAIN the slot's msghdr still describes the same datagram.
        self.send_slots
            .complete(cqe, |slot, _, _| push_send(ring, socket, headers, slot));
    }

    /// Reaps completions where no callback is at hand: sends are completed,
    /// receives kept for the next poll_recv.
    fn reap_without_callback(&mut self) -> io::Result<()> {
        self.ring.submit()?;
        let mut cqes = [Cqe::default(); CQE_BATCH];
        loop {
            let n = self.ring.reap(&mut cqes);
            for cqe in &cqes[..n] {
                if DatagramRecv::is_recv(cqe) {
                    self.engine.stash(*cqe);
                } else {
                    self.complete_send(*cqe);
                }
            }
            if n < cqes.len() {
                return Ok(());
            }
        }
    }

    /// Sends not yet completed.
    pub fn sends_in_flight(&self) -> usize {
        self.send_slots.in_use()
    }

    /// Waits until no send is in flight; `TimedOut` after `timeout`.
    pub fn flush(&mut self, timeout: Duration) -> io::Result<()> {
        until_done(timeout, "sends still in flight", |wait| {
            if let Some(wait) = wait {
                self.ring.wait(wait)?;
            }
            self.reap_without_callback()?;
            Ok(self.sends_in_flight() == 0)
        })
    }

    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local_addr
    }

    pub fn mode(&self) -> RecvMode {
        self.engine.mode()
    }

    pub fn recv_stats(&self) -> RecvStats {
        self.engine.stats()
    }

    pub fn send_stats(&self) -> SendStats {
        self.send_slots.stats()
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// Queues the `SendMsg` of `slot`, whose msghdr in `headers` is filled in.
fn push_send(
    ring: &mut Ring,
    socket: &OwnedFd,
    headers: &HeapArray<libc::msghdr>,
    slot: u32,
) -> io::Result<()> {
    let entry = opcode::SendMsg::new(types::Fd(socket.as_raw_fd()), headers.ptr(slot as usize))
        .build()
        .user_data(user_data(kind::SEND, 0, slot));
    // SAFETY: the slot's bytes, iovec, destination and msghdr are owned by
    // the socket, untouched until the send completes, and outlive it (Drop
    // drains the ring or leaks them).
    unsafe { ring.push(&entry) }
}

impl AsRawFd for UdpSocketRing {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Drop for UdpSocketRing {
    fn drop(&mut self) {
        let drained = self.ring.cancel_all_and_drain(DROP_DRAIN_TIMEOUT);
        if !drained {
            tracing::error!("udp socket: operations still in flight at drop; leaking its buffers");
            self.send_slots.leak();
            self.headers.leak();
            self.iovecs.leak();
            self.destinations.leak();
        }
        self.engine.release(&mut self.ring, drained);
    }
}
