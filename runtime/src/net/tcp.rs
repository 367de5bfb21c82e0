//! TCP through io_uring: a server reactor for one loop ([`TcpServer`]) and a
//! client connection ([`TcpConn`]).
//!
//! Every connection receives into its own buffer (one receive in flight at a
//! time) and sends from its own bounded send buffer (a byte ring; one send in
//! flight at a time, the next chunk queued when it completes). All of it is
//! allocated when the server or connection is created.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{opcode, types};

use super::ring::{
    kind, until_done, user_data, Cqe, HeapArray, Region, Ring, CQE_BATCH, GENERATION_MASK,
};
use super::{sock, DROP_DRAIN_TIMEOUT};

/// How long [`TcpServerHandle::close`] keeps flushing queued bytes before it
/// closes anyway.
pub const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Why [`TcpServerHandle::send`] or [`TcpConn::send`] refused bytes. Nothing
/// was queued in either case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The send buffer cannot take all of the bytes now (the peer reads too
    /// slowly, or the bytes exceed the whole buffer). The caller decides:
    /// retry later, or close a slow consumer.
    Full,
    /// The connection is closed or closing, or the id is stale.
    Closed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full => f.write_str("send buffer full"),
            SendError::Closed => f.write_str("connection closed"),
        }
    }
}

impl std::error::Error for SendError {}

/// A bounded byte ring that a send in flight reads from: bytes are appended
/// after the queued ones, and the in-flight chunk is never overwritten.
#[derive(Clone, Copy, Debug)]
struct SendQueue {
    capacity: usize,
    head: usize,
    len: usize,
    /// Bytes of the send in flight (0 = none).
    in_flight: usize,
}

impl SendQueue {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            head: 0,
            len: 0,
            in_flight: 0,
        }
    }

    /// Copies `bytes` in after the queued bytes (the buffer is
    /// `region[offset..offset + capacity]`); `false` if they do not all fit.
    fn append(&mut self, region: &Region, offset: usize, bytes: &[u8]) -> bool {
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
    fn next_chunk(&mut self) -> Option<(usize, usize)> {
        if self.in_flight > 0 || self.len == 0 {
            return None;
        }
        let len = self.len.min(self.capacity - self.head);
        self.in_flight = len;
        Some((self.head, len))
    }

    fn sent(&mut self, bytes: usize) {
        assert!(bytes <= self.in_flight, "sent more than was in flight");
        self.head = (self.head + bytes) % self.capacity;
        self.len -= bytes;
        self.in_flight = 0;
        if self.len == 0 {
            self.head = 0;
        }
    }

    fn failed(&mut self) {
        self.in_flight = 0;
    }

    fn clear(&mut self) {
        assert_eq!(self.in_flight, 0);
        self.head = 0;
        self.len = 0;
    }
}

/// Capacity of a [`TcpServer`], fixed at construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpServerConfig {
    /// Connections served at once; more are accepted and closed at once
    /// ([`TcpEvent::Rejected`]).
    pub max_connections: usize,
    /// Receive buffer per connection.
    pub recv_buffer_bytes: usize,
    /// Send buffer per connection: bytes queued and not yet taken by the
    /// kernel. [`SendError::Full`] past this.
    pub send_buffer_bytes: usize,
    /// `listen(2)` backlog.
    pub backlog: u32,
}

/// A connection of a [`TcpServer`]: slab index plus generation, so an id kept
/// after its connection closed never reaches the connection that reuses the
/// slot.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    /// Slab index, `0..max_connections`: usable to index per-connection
    /// state the caller keeps in its own fixed array.
    pub fn index(&self) -> usize {
        self.index as usize
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }
}

/// Why a connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side (end of stream).
    PeerClosed,
    /// This side called `close` or `close_now`.
    Local,
    /// `close` could not flush the queued bytes in time.
    FlushTimeout,
    /// A receive or send failed with this `errno` (e.g. `ECONNRESET`, `EPIPE`).
    Error(i32),
}

/// What a [`TcpServer::poll`] reports.
#[derive(Debug)]
pub enum TcpEvent<'a> {
    Accepted {
        conn: ConnId,
        peer: SocketAddr,
    },
    /// Bytes received; valid only during the callback (the buffer receives
    /// again once it returns).
    Data {
        conn: ConnId,
        bytes: &'a [u8],
    },
    /// The connection is gone and its id stale. Every `Accepted` connection
    /// gets exactly one `Closed`, whoever closed it.
    Closed {
        conn: ConnId,
        reason: CloseReason,
    },
    /// Over `max_connections`: accepted and closed at once.
    Rejected {
        peer: SocketAddr,
    },
}

/// Server counters. Plain integers, updated only by the owning loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    pub accepted: u64,
    pub rejected: u64,
    pub closed: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// `send` calls refused with [`SendError::Full`].
    pub send_full: u64,
    /// `close` calls that hit [`CLOSE_FLUSH_TIMEOUT`].
    pub flush_timeouts: u64,
    pub accept_errors: u64,
    /// Times the multishot accept ended and was submitted again.
    pub accept_rearms: u64,
    /// Operations that could not be queued (submission queue stuck).
    pub submit_errors: u64,
    /// Last accept/submit `errno`, 0 if none.
    pub last_errno: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    Free,
    Open,
    /// `close` called: flushing queued bytes, new sends refused, received
    /// bytes discarded.
    Draining,
    /// Cancelling what is in flight; the descriptor is closed and the slot
    /// released when nothing is.
    Closing,
}

#[derive(Clone, Copy, Debug)]
struct Conn {
    fd: RawFd,
    generation: u32,
    state: ConnState,
    recv_armed: bool,
    /// The owner asked for no more receives until it resumes.
    recv_paused: bool,
    timeout_armed: bool,
    send: SendQueue,
    reason: CloseReason,
    peer: SocketAddr,
}

const UNSPECIFIED: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// The part of a [`TcpServer`] an event handler may use while it holds the
/// bytes of a `Data` event: sending, closing, looking connections up.
pub struct TcpServerHandle {
    ring: Ring,
    conns: Vec<Conn>,
    /// Free slots (a stack; capacity max_connections, never grows).
    free: Vec<u32>,
    send_buffers: Region,
    send_buffer_bytes: usize,
    /// Per slot: the close-flush deadline the kernel reads while draining.
    deadlines: HeapArray<types::Timespec>,
    /// Connections closed whose `Closed` event is not delivered yet. A slot
    /// returns to `free` only when its event is delivered, so each slot is
    /// here at most once.
    closed: Vec<(ConnId, CloseReason)>,
    closed_head: usize,
    /// Connections resumed with [`TcpServerHandle::resume_recv`] whose
    /// receive the server arms at its next poll (capacity max_connections;
    /// a connection is listed at most once).
    resumed: Vec<ConnId>,
    open_connections: usize,
    stats: TcpStats,
}

impl TcpServerHandle {
    fn lookup(&self, conn: ConnId) -> Option<usize> {
        let index = conn.index as usize;
        let c = self.conns.get(index)?;
        (c.generation == conn.generation && c.state != ConnState::Free).then_some(index)
    }

    /// Appends `bytes` to the connection's send buffer and makes sure a send
    /// is in flight (submitted at the end of the current `poll`, or at once
    /// when called through [`TcpServer::send`]). All or nothing.
    pub fn send(&mut self, conn: ConnId, bytes: &[u8]) -> Result<(), SendError> {
        let index = self.lookup(conn).ok_or(SendError::Closed)?;
        let offset = index * self.send_buffer_bytes;
        let c = &mut self.conns[index];
        if c.state != ConnState::Open {
            return Err(SendError::Closed);
        }
        if !c.send.append(&self.send_buffers, offset, bytes) {
            self.stats.send_full += 1;
            return Err(SendError::Full);
        }
        self.start_send(index);
        Ok(())
    }

    /// Bytes queued and not yet taken by the kernel (0 for a stale id).
    pub fn pending_send_bytes(&self, conn: ConnId) -> usize {
        self.lookup(conn).map_or(0, |i| self.conns[i].send.len)
    }

    /// Bytes `send` would accept now (0 for a stale or closing id).
    /// Stops receiving on `conn` after the receive in flight completes: its
    /// bytes stay in the kernel and TCP flow control slows the peer. For an
    /// owner that cannot take more input from this one connection (a full
    /// ring downstream, unread acks) while others carry on.
    pub fn pause_recv(&mut self, conn: ConnId) {
        if let Some(i) = self.lookup(conn) {
            self.conns[i].recv_paused = true;
        }
    }

    /// Undoes [`pause_recv`](Self::pause_recv); the receive is armed again at
    /// the server's next poll.
    pub fn resume_recv(&mut self, conn: ConnId) {
        if let Some(i) = self.lookup(conn) {
            let c = &mut self.conns[i];
            if c.recv_paused {
                c.recv_paused = false;
                if !c.recv_armed && c.state == ConnState::Open {
                    debug_assert!(self.resumed.len() < self.resumed.capacity());
                    self.resumed.push(conn);
                }
            }
        }
    }

    /// Whether receiving on `conn` is paused.
    pub fn is_recv_paused(&self, conn: ConnId) -> bool {
        self.lookup(conn).is_some_and(|i| self.conns[i].recv_paused)
    }

    pub fn send_capacity(&self, conn: ConnId) -> usize {
        match self.lookup(conn) {
            Some(i) if self.conns[i].state == ConnState::Open => {
                let q = &self.conns[i].send;
                q.capacity - q.len
            }
            _ => 0,
        }
    }

    /// True while the connection is open (not closing, not stale).
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.lookup(conn)
            .is_some_and(|i| self.conns[i].state == ConnState::Open)
    }

    pub fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        self.lookup(conn).map(|i| self.conns[i].peer)
    }

    /// Connections accepted and not yet fully closed.
    pub fn connections(&self) -> usize {
        self.open_connections
    }

    pub fn stats(&self) -> TcpStats {
        self.stats
    }

    /// Closes after flushing what is queued, for at most
    /// [`CLOSE_FLUSH_TIMEOUT`]. Received bytes are discarded meanwhile.
    pub fn close(&mut self, conn: ConnId) {
        self.close_with_timeout(conn, CLOSE_FLUSH_TIMEOUT);
    }

    /// As [`close`](Self::close) with an explicit flush bound.
    pub fn close_with_timeout(&mut self, conn: ConnId, flush_timeout: Duration) {
        let Some(index) = self.lookup(conn) else {
            return;
        };
        let c = &mut self.conns[index];
        if c.state != ConnState::Open {
            return;
        }
        if c.send.len == 0 {
            self.begin_close(index, CloseReason::Local);
            return;
        }
        c.state = ConnState::Draining;
        self.deadlines
            .set(index, types::Timespec::from(flush_timeout));
        let entry = opcode::Timeout::new(self.deadlines.ptr(index))
            .build()
            .user_data(user_data(kind::TIMEOUT, c.generation, index as u32));
        // SAFETY: the timespec lives in self.deadlines for the server's life
        // and is not rewritten while this timeout is armed.
        match unsafe { self.ring.push(&entry) } {
            Ok(()) => self.conns[index].timeout_armed = true,
            Err(e) => {
                self.count_submit_error(&e);
                self.begin_close(index, CloseReason::Local);
            }
        }
    }

    /// Closes at once, dropping queued bytes.
    pub fn close_now(&mut self, conn: ConnId) {
        let Some(index) = self.lookup(conn) else {
            return;
        };
        if matches!(
            self.conns[index].state,
            ConnState::Open | ConnState::Draining
        ) {
            self.begin_close(index, CloseReason::Local);
        }
    }

    fn count_submit_error(&mut self, e: &io::Error) {
        self.stats.submit_errors += 1;
        self.stats.last_errno = e.raw_os_error().unwrap_or(0);
    }

    fn start_send(&mut self, index: usize) {
        let offset = index * self.send_buffer_bytes;
        let c = &mut self.conns[index];
        let Some((start, len)) = c.send.next_chunk() else {
            return;
        };
        let entry = opcode::Send::new(
            types::Fd(c.fd),
            self.send_buffers.at(offset + start),
            len as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data(kind::SEND, c.generation, index as u32));
        // SAFETY: the chunk lies in this slot's send buffer, owned by the
        // server; appends never write queued bytes, and the slot is not
        // released while the send is in flight.
        if let Err(e) = unsafe { self.ring.push(&entry) } {
            self.conns[index].send.failed();
            self.count_submit_error(&e);
            self.begin_close(
                index,
                CloseReason::Error(e.raw_os_error().unwrap_or(libc::EIO)),
            );
        }
    }

    fn cancel(&mut self, target: u64) {
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data(kind::CANCEL, 0, 0));
        // SAFETY: an async cancel references no memory of ours.
        if let Err(e) = unsafe { self.ring.push(&entry) } {
            // The operation completes on its own eventually (the peer closes
            // or the timer fires); the slot is released then.
            self.count_submit_error(&e);
        }
    }

    fn begin_close(&mut self, index: usize, reason: CloseReason) {
        let c = &mut self.conns[index];
        assert!(matches!(c.state, ConnState::Open | ConnState::Draining));
        c.state = ConnState::Closing;
        c.reason = reason;
        let (generation, recv, send, timeout) = (
            c.generation,
            c.recv_armed,
            c.send.in_flight > 0,
            c.timeout_armed,
        );
        let i = index as u32;
        if recv {
            self.cancel(user_data(kind::RECV, generation, i));
        }
        if send {
            self.cancel(user_data(kind::SEND, generation, i));
        }
        if timeout {
            self.cancel(user_data(kind::TIMEOUT, generation, i));
        }
        self.try_finish_close(index);
    }

    fn try_finish_close(&mut self, index: usize) {
        let c = &mut self.conns[index];
        if c.state != ConnState::Closing || c.recv_armed || c.send.in_flight > 0 || c.timeout_armed
        {
            return;
        }
        sock::close_raw(c.fd);
        let id = ConnId {
            index: index as u32,
            generation: c.generation,
        };
        c.fd = -1;
        c.generation = c.generation.wrapping_add(1);
        c.state = ConnState::Free;
        c.send.clear();
        let reason = c.reason;
        self.open_connections -= 1;
        self.stats.closed += 1;
        assert!(
            self.closed.len() < self.closed.capacity(),
            "closed queue overflow"
        );
        self.closed.push((id, reason));
    }

    fn deliver_closed(
        &mut self,
        on_event: &mut impl FnMut(&mut TcpServerHandle, TcpEvent<'_>),
    ) -> usize {
        let mut delivered = 0;
        while self.closed_head < self.closed.len() {
            let (conn, reason) = self.closed[self.closed_head];
            self.closed_head += 1;
            self.free.push(conn.index);
            on_event(self, TcpEvent::Closed { conn, reason });
            delivered += 1;
        }
        self.closed.clear();
        self.closed_head = 0;
        delivered
    }
}

/// A TCP server reactor for one loop: listens, accepts with a multishot
/// accept, receives into each connection's own buffer, sends from each
/// connection's own bounded send buffer. Capacity is fixed in [`bind`].
///
/// Handle events with [`poll`]; the handler gets a [`TcpServerHandle`] to send
/// and close with, also while it holds the bytes of a `Data` event:
///
/// ```no_run
/// # use tally_runtime::net::*;
/// # fn main() -> std::io::Result<()> {
/// let cfg = TcpServerConfig { max_connections: 64, recv_buffer_bytes: 4096, send_buffer_bytes: 65536, backlog: 128 };
/// let mut server = TcpServer::bind("127.0.0.1:0".parse().unwrap(), &cfg)?;
/// loop {
///     server.poll(|io, event| {
///         if let TcpEvent::Data { conn, bytes } = event {
///             if io.send(conn, bytes).is_err() {
///                 io.close_now(conn); // slow consumer
///             }
///         }
///     })?;
///     server.wait(std::time::Duration::from_millis(100))?;
/// }
/// # }
/// ```
///
/// [`bind`]: TcpServer::bind
/// [`poll`]: TcpServer::poll
pub struct TcpServer {
    handle: TcpServerHandle,
    recv_buffers: Region,
    recv_buffer_bytes: usize,
    listener: OwnedFd,
    local_addr: SocketAddr,
    accept_armed: bool,
    /// Another thread's way to end this server's [`TcpServer::wait`] early.
    waker: Option<crate::wake::Waker>,
    waker_armed: bool,
}

impl TcpServer {
    /// Listens on `addr` (port 0 picks one) and allocates every buffer.
    pub fn bind(addr: SocketAddr, cfg: &TcpServerConfig) -> io::Result<Self> {
        if cfg.max_connections == 0
            || cfg.max_connections > 1 << 20
            || cfg.recv_buffer_bytes == 0
            || cfg.recv_buffer_bytes > u32::MAX as usize / 2
            || cfg.send_buffer_bytes == 0
            || cfg.send_buffer_bytes > u32::MAX as usize / 2
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid TcpServerConfig",
            ));
        }
        let listener = sock::socket(sock::domain_of(&addr), libc::SOCK_STREAM)?;
        let fd = listener.as_raw_fd();
        sock::set_reuse(fd, false)?;
        sock::set_nodelay(fd)?;
        sock::bind(fd, &addr)?;
        sock::listen(fd, cfg.backlog)?;
        let local_addr = sock::local_addr(fd)?;
        let n = cfg.max_connections;
        // Per connection: a receive, a send, a timeout and their cancels.
        let ring = Ring::new((2 * n + 16) as u32, (4 * n + 64) as u32)?;
        let recv_buffers = Region::new(n * cfg.recv_buffer_bytes)?;
        let send_buffers = Region::new(n * cfg.send_buffer_bytes)?;
        let conn = Conn {
            fd: -1,
            generation: 0,
            state: ConnState::Free,
            recv_armed: false,
            recv_paused: false,
            timeout_armed: false,
            send: SendQueue::new(cfg.send_buffer_bytes),
            reason: CloseReason::Local,
            peer: UNSPECIFIED,
        };
        let mut server = Self {
            handle: TcpServerHandle {
                ring,
                conns: vec![conn; n],
                free: (0..n as u32).rev().collect(),
                send_buffers,
                send_buffer_bytes: cfg.send_buffer_bytes,
                deadlines: HeapArray::new(n, types::Timespec::new()),
                closed: Vec::with_capacity(n),
                closed_head: 0,
                resumed: Vec::with_capacity(n),
                open_connections: 0,
                stats: TcpStats::default(),
            },
            recv_buffers,
            recv_buffer_bytes: cfg.recv_buffer_bytes,
            listener,
            local_addr,
            accept_armed: false,
            waker: None,
            waker_armed: false,
        };
        server.arm_accept()?;
        server.handle.ring.submit()?;
        tracing::info!(
            %local_addr, max_connections = n, recv_buffer_bytes = cfg.recv_buffer_bytes,
            send_buffer_bytes = cfg.send_buffer_bytes, "tcp server listening"
        );
        Ok(server)
    }

    /// Watches `waker`'s eventfd in this server's ring, so a
    /// [`Waker::wake`](crate::wake::Waker::wake) from another thread ends a
    /// [`wait`](Self::wait) at once (the gateway waits for TCP completions
    /// and for acks from the sequencer at the same time).
    pub fn watch_waker(&mut self, waker: crate::wake::Waker) -> io::Result<()> {
        self.waker = Some(waker);
        self.arm_waker()?;
        self.handle.ring.submit()
    }

    fn arm_waker(&mut self) -> io::Result<()> {
        let Some(waker) = &self.waker else {
            return Ok(());
        };
        let entry = opcode::PollAdd::new(types::Fd(waker.fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(kind::WAKE, 0, 0));
        // SAFETY: a poll references no memory of ours; the eventfd stays open
        // while the server (which holds the waker) lives, and Drop cancels
        // the poll before the fields are dropped.
        unsafe { self.handle.ring.push(&entry)? };
        self.waker_armed = true;
        Ok(())
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let entry = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(kind::ACCEPT, 0, 0));
        // SAFETY: a multishot accept without an address buffer references no
        // memory of ours.
        unsafe { self.handle.ring.push(&entry)? };
        self.accept_armed = true;
        Ok(())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Non-blocking: turns every completion waiting into events for
    /// `on_event`, in order, and submits what the handler queued. Returns the
    /// events delivered. Allocation-free.
    pub fn poll(
        &mut self,
        mut on_event: impl FnMut(&mut TcpServerHandle, TcpEvent<'_>),
    ) -> io::Result<usize> {
        while let Some(conn) = self.handle.resumed.pop() {
            if let Some(i) = self.handle.lookup(conn) {
                let c = &self.handle.conns[i];
                if c.state == ConnState::Open && !c.recv_armed && !c.recv_paused {
                    self.arm_recv(i);
                }
            }
        }
        self.handle.ring.submit()?;
        let mut events = self.handle.deliver_closed(&mut on_event);
        let budget = self.handle.ring.cq_capacity();
        let mut cqes = [Cqe::default(); CQE_BATCH];
        let mut seen = 0;
        while seen < budget {
            let n = self.handle.ring.reap(&mut cqes);
            for cqe in &cqes[..n] {
                events += self.dispatch(*cqe, &mut on_event);
            }
            seen += n;
            if n < cqes.len() {
                break;
            }
        }
        events += self.handle.deliver_closed(&mut on_event);
        if self.waker.is_some() && !self.waker_armed {
            if let Err(e) = self.arm_waker() {
                self.handle.count_submit_error(&e);
            }
        }
        if !self.accept_armed {
            self.handle.stats.accept_rearms += 1;
            if let Err(e) = self.arm_accept() {
                self.handle.count_submit_error(&e);
            }
        }
        self.handle.ring.submit()?;
        Ok(events)
    }

    fn dispatch(
        &mut self,
        cqe: Cqe,
        on_event: &mut impl FnMut(&mut TcpServerHandle, TcpEvent<'_>),
    ) -> usize {
        match cqe.kind() {
            kind::ACCEPT => self.complete_accept(cqe, on_event),
            kind::RECV => self.complete_recv(cqe, on_event),
            kind::SEND => {
                self.complete_send(cqe);
                0
            }
            kind::TIMEOUT => {
                self.complete_timeout(cqe);
                0
            }
            kind::WAKE => {
                if let Some(waker) = &self.waker {
                    waker.clear();
                }
                if !cqe.more() {
                    self.waker_armed = false;
                }
                0
            }
            _ => 0, // cancels
        }
    }

    fn complete_accept(
        &mut self,
        cqe: Cqe,
        on_event: &mut impl FnMut(&mut TcpServerHandle, TcpEvent<'_>),
    ) -> usize {
        if !cqe.more() {
            self.accept_armed = false;
        }
        if cqe.result < 0 {
            self.handle.stats.accept_errors += 1;
            self.handle.stats.last_errno = -cqe.result;
            return 0;
        }
        let fd = cqe.result;
        let peer = sock::peer_addr(fd).unwrap_or(UNSPECIFIED);
        // Best effort: a connection without TCP_NODELAY still works.
        let _ = sock::set_nodelay(fd);
        let mut events = 0;
        if self.handle.free.is_empty() {
            // Release slots whose Closed events are pending, then look again.
            events += self.handle.deliver_closed(on_event);
        }
        let Some(index) = self.handle.free.pop() else {
            sock::close_raw(fd);
            self.handle.stats.rejected += 1;
            on_event(&mut self.handle, TcpEvent::Rejected { peer });
            return events + 1;
        };
        let i = index as usize;
        let c = &mut self.handle.conns[i];
        assert_eq!(c.state, ConnState::Free);
        c.fd = fd;
        c.state = ConnState::Open;
        c.peer = peer;
        c.reason = CloseReason::Local;
        c.recv_paused = false;
        c.send.clear();
        let conn = ConnId {
            index,
            generation: c.generation,
        };
        self.handle.open_connections += 1;
        self.handle.stats.accepted += 1;
        self.arm_recv(i);
        on_event(&mut self.handle, TcpEvent::Accepted { conn, peer });
        events + 1
    }

    fn arm_recv(&mut self, index: usize) {
        let c = &mut self.handle.conns[index];
        assert!(!c.recv_armed);
        let entry = opcode::Recv::new(
            types::Fd(c.fd),
            self.recv_buffers.at(index * self.recv_buffer_bytes),
            self.recv_buffer_bytes as u32,
        )
        .build()
        .user_data(user_data(kind::RECV, c.generation, index as u32));
        // SAFETY: the slot's receive buffer is owned by the server, not read
        // until this receive completes, and the slot is not released while
        // the receive is in flight.
        match unsafe { self.handle.ring.push(&entry) } {
            Ok(()) => self.handle.conns[index].recv_armed = true,
            Err(e) => {
                self.handle.count_submit_error(&e);
                self.handle.begin_close(
                    index,
                    CloseReason::Error(e.raw_os_error().unwrap_or(libc::EIO)),
                );
            }
        }
    }

    fn check_generation(&self, index: usize, cqe: &Cqe) {
        assert_eq!(
            self.handle.conns[index].generation & GENERATION_MASK,
            cqe.generation(),
            "completion for a released slot"
        );
    }

    fn complete_recv(
        &mut self,
        cqe: Cqe,
        on_event: &mut impl FnMut(&mut TcpServerHandle, TcpEvent<'_>),
    ) -> usize {
        let index = cqe.index() as usize;
        self.check_generation(index, &cqe);
        let c = &mut self.handle.conns[index];
        c.recv_armed = false;
        let state = c.state;
        let generation = c.generation;
        match state {
            ConnState::Open if cqe.result > 0 => {
                let len = cqe.result as usize;
                self.handle.stats.bytes_received += len as u64;
                let conn = ConnId {
                    index: index as u32,
                    generation,
                };
                // SAFETY: this receive has completed and the buffer is armed
                // again only after the handler has returned.
                let bytes = unsafe { self.recv_buffers.slice(index * self.recv_buffer_bytes, len) };
                on_event(&mut self.handle, TcpEvent::Data { conn, bytes });
                // The handler may have closed it; Draining still receives (and discards).
                let c = &self.handle.conns[index];
                if c.generation == generation
                    && (c.state == ConnState::Draining
                        || (c.state == ConnState::Open && !c.recv_paused))
                {
                    self.arm_recv(index);
                }
                1
            }
            // Draining discards what arrives; EAGAIN is a spurious wake-up
            // of a non-blocking socket: receive again either way.
            ConnState::Draining if cqe.result > 0 => {
                self.arm_recv(index);
                0
            }
            ConnState::Open | ConnState::Draining if cqe.result == -libc::EAGAIN => {
                if !(state == ConnState::Open && self.handle.conns[index].recv_paused) {
                    self.arm_recv(index);
                }
                0
            }
            ConnState::Open | ConnState::Draining => {
                let reason = if cqe.result == 0 {
                    CloseReason::PeerClosed
                } else {
                    CloseReason::Error(-cqe.result)
                };
                self.handle.begin_close(index, reason);
                0
            }
            ConnState::Closing => {
                self.handle.try_finish_close(index);
                0
            }
            ConnState::Free => unreachable!("receive completion on a free slot"),
        }
    }

    fn complete_send(&mut self, cqe: Cqe) {
        let index = cqe.index() as usize;
        self.check_generation(index, &cqe);
        let h = &mut self.handle;
        let c = &mut h.conns[index];
        if cqe.result >= 0 {
            c.send.sent(cqe.result as usize);
            h.stats.bytes_sent += cqe.result as u64;
        } else {
            c.send.failed();
        }
        match c.state {
            // Spurious wake-up of a non-blocking socket: send the chunk again.
            ConnState::Open | ConnState::Draining if cqe.result == -libc::EAGAIN => {
                h.start_send(index)
            }
            ConnState::Open | ConnState::Draining if cqe.result < 0 => {
                h.begin_close(index, CloseReason::Error(-cqe.result));
            }
            ConnState::Open => h.start_send(index),
            ConnState::Draining => {
                if c.send.len == 0 {
                    h.begin_close(index, CloseReason::Local);
                } else {
                    h.start_send(index);
                }
            }
            ConnState::Closing => h.try_finish_close(index),
            ConnState::Free => unreachable!("send completion on a free slot"),
        }
    }

    fn complete_timeout(&mut self, cqe: Cqe) {
        let index = cqe.index() as usize;
        self.check_generation(index, &cqe);
        let h = &mut self.handle;
        h.conns[index].timeout_armed = false;
        match h.conns[index].state {
            ConnState::Draining => {
                h.stats.flush_timeouts += 1;
                h.begin_close(index, CloseReason::FlushTimeout);
            }
            ConnState::Closing => h.try_finish_close(index),
            state => unreachable!("close timeout in state {state:?}"),
        }
    }

    /// Blocks until a completion arrives or `timeout` passes (for idle
    /// strategies that park); returns at once if events are pending. Does
    /// not handle anything: call [`poll`](Self::poll) next.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        if self.handle.closed.len() > self.handle.closed_head || self.handle.ring.has_completions()
        {
            return self.handle.ring.submit();
        }
        self.handle.ring.wait(timeout)
    }

    /// [`TcpServerHandle::send`], submitted at once.
    pub fn send(&mut self, conn: ConnId, bytes: &[u8]) -> Result<(), SendError> {
        self.handle.send(conn, bytes)?;
        if let Err(e) = self.handle.ring.submit() {
            self.handle.count_submit_error(&e);
        }
        Ok(())
    }

    pub fn pending_send_bytes(&self, conn: ConnId) -> usize {
        self.handle.pending_send_bytes(conn)
    }

    /// [`TcpServerHandle::close`], submitted at once.
    pub fn close(&mut self, conn: ConnId) {
        self.handle.close(conn);
        let _ = self.handle.ring.submit();
    }

    /// [`TcpServerHandle::close_now`], submitted at once. The `Closed` event
    /// comes from the next `poll`.
    pub fn close_now(&mut self, conn: ConnId) {
        self.handle.close_now(conn);
        let _ = self.handle.ring.submit();
    }

    pub fn is_open(&self, conn: ConnId) -> bool {
        self.handle.is_open(conn)
    }

    pub fn connections(&self) -> usize {
        self.handle.connections()
    }

    pub fn stats(&self) -> TcpStats {
        self.handle.stats
    }

    /// The handle, for sending and closing outside `poll` (call `poll` or
    /// [`submit`](Self::submit) afterwards).
    pub fn handle(&mut self) -> &mut TcpServerHandle {
        &mut self.handle
    }

    /// Submits what was queued through [`handle`](Self::handle).
    pub fn submit(&mut self) -> io::Result<()> {
        self.handle.ring.submit()
    }

    pub fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

impl AsRawFd for TcpServer {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        let drained = self.handle.ring.cancel_all_and_drain(DROP_DRAIN_TIMEOUT);
        if !drained {
            tracing::error!("tcp server: operations still in flight at drop; leaking its buffers");
            self.recv_buffers.leak();
            self.handle.send_buffers.leak();
            self.handle.deadlines.leak();
        }
        for c in &self.handle.conns {
            if c.state != ConnState::Free {
                sock::close_raw(c.fd);
            }
        }
    }
}

/// Client connection counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpConnStats {
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// `send` calls refused with [`SendError::Full`].
    pub send_full: u64,
}

/// A TCP client connection through its own io_uring: one receive in flight
/// into its own buffer, sends from its own bounded send buffer.
pub struct TcpConn {
    ring: Ring,
    socket: OwnedFd,
    recv_buffer: Region,
    recv_buffer_bytes: usize,
    send_buffer: Region,
    send: SendQueue,
    recv_armed: bool,
    /// Bytes received (by a completion reaped in `flush` or `send`) and not
    /// yet handed to a callback; the receive is re-armed once they are.
    unread: usize,
    /// `Some(0)`: the peer closed; `Some(errno)`: failed.
    closed: Option<i32>,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    /// The connect target, read by the kernel during the connect.
    target: HeapArray<libc::sockaddr_storage>,
    stats: TcpConnStats,
}

impl TcpConn {
    /// Connects (waiting for the kernel's own verdict) and allocates both buffers.
    pub fn connect(
        addr: SocketAddr,
        recv_buffer_bytes: usize,
        send_buffer_bytes: usize,
    ) -> io::Result<Self> {
        Self::connect_timeout(
            addr,
            recv_buffer_bytes,
            send_buffer_bytes,
            Duration::from_secs(u32::MAX as u64),
        )
    }

    /// As [`connect`](Self::connect), giving up with `TimedOut` after `timeout`.
    pub fn connect_timeout(
        addr: SocketAddr,
        recv_buffer_bytes: usize,
        send_buffer_bytes: usize,
        timeout: Duration,
    ) -> io::Result<Self> {
        if recv_buffer_bytes == 0
            || recv_buffer_bytes > u32::MAX as usize / 2
            || send_buffer_bytes == 0
            || send_buffer_bytes > u32::MAX as usize / 2
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid buffer sizes",
            ));
        }
        let socket = sock::socket(sock::domain_of(&addr), libc::SOCK_STREAM)?;
        sock::set_nodelay(socket.as_raw_fd())?;
        let (storage, len) = sock::sockaddr_storage(&addr);
        let mut conn = Self {
            ring: Ring::new(8, 16)?,
            socket,
            recv_buffer: Region::new(recv_buffer_bytes)?,
            recv_buffer_bytes,
            send_buffer: Region::new(send_buffer_bytes)?,
            send: SendQueue::new(send_buffer_bytes),
            recv_armed: false,
            unread: 0,
            closed: None,
            peer_addr: addr,
            local_addr: UNSPECIFIED,
            target: HeapArray::new(1, storage),
            stats: TcpConnStats::default(),
        };
        let entry = opcode::Connect::new(
            types::Fd(conn.socket.as_raw_fd()),
            conn.target.ptr(0).cast::<libc::sockaddr>(),
            len,
        )
        .build()
        .user_data(user_data(kind::CONNECT, 0, 0));
        // SAFETY: the target address is owned by conn and outlives the
        // connect (Drop drains the ring or leaks it).
        unsafe { conn.ring.push(&entry)? };
        let deadline = Instant::now() + timeout;
        let mut cqes = [Cqe::default(); CQE_BATCH];
        loop {
            conn.ring.submit()?;
            let n = conn.ring.reap(&mut cqes);
            if let Some(done) = cqes[..n].iter().find(|c| c.kind() == kind::CONNECT) {
                if done.result < 0 {
                    return Err(io::Error::from_raw_os_error(-done.result));
                }
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
            conn.ring.wait(deadline - now)?;
        }
        conn.local_addr = sock::local_addr(conn.socket.as_raw_fd())?;
        conn.arm_recv()?;
        conn.ring.submit()?;
        Ok(conn)
    }

    fn arm_recv(&mut self) -> io::Result<()> {
        assert!(!self.recv_armed && self.unread == 0);
        let entry = opcode::Recv::new(
            types::Fd(self.socket.as_raw_fd()),
            self.recv_buffer.as_ptr(),
            self.recv_buffer_bytes as u32,
        )
        .build()
        .user_data(user_data(kind::RECV, 0, 0));
        // SAFETY: the receive buffer is owned by self, not read until this
        // receive completes, and outlives it (Drop drains or leaks).
        unsafe { self.ring.push(&entry)? };
        self.recv_armed = true;
        Ok(())
    }

    fn start_send(&mut self) -> io::Result<()> {
        let Some((start, len)) = self.send.next_chunk() else {
            return Ok(());
        };
        let entry = opcode::Send::new(
            types::Fd(self.socket.as_raw_fd()),
            self.send_buffer.at(start),
            len as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data(kind::SEND, 0, 0));
        // SAFETY: the chunk is queued bytes of our send buffer, which appends
        // never overwrite; the buffer outlives the send (Drop drains or leaks).
        if let Err(e) = unsafe { self.ring.push(&entry) } {
            self.send.failed();
            return Err(e);
        }
        Ok(())
    }

    /// Reaps completions: receives are kept in `unread`, sends advance.
    fn reap(&mut self) -> io::Result<()> {
        self.ring.submit()?;
        let mut cqes = [Cqe::default(); CQE_BATCH];
        loop {
            let n = self.ring.reap(&mut cqes);
            for cqe in &cqes[..n] {
                match cqe.kind() {
                    kind::RECV => {
                        self.recv_armed = false;
                        if cqe.result > 0 {
                            self.unread = cqe.result as usize;
                            self.stats.bytes_received += cqe.result as u64;
                        } else if cqe.result == -libc::EAGAIN {
                            // Spurious wake-up: poll_recv receives again.
                        } else {
                            self.closed.get_or_insert(-cqe.result);
                        }
                    }
                    kind::SEND => {
                        if cqe.result >= 0 {
                            self.send.sent(cqe.result as usize);
                            self.stats.bytes_sent += cqe.result as u64;
                            if self.closed.is_none() {
                                self.start_send()?;
                            }
                        } else if cqe.result == -libc::EAGAIN {
                            self.send.failed();
                            self.start_send()?;
                        } else {
                            self.send.failed();
                            self.closed.get_or_insert(-cqe.result);
                        }
                    }
                    _ => {}
                }
            }
            if n < cqes.len() {
                return self.ring.submit();
            }
        }
    }

    fn closed_error(errno: i32) -> io::Error {
        if errno == 0 {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by peer")
        } else {
            io::Error::from_raw_os_error(errno)
        }
    }

    /// Appends `bytes` to the send buffer and submits a send if none is in
    /// flight. All or nothing.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        if self.closed.is_some() {
            return Err(SendError::Closed);
        }
        if !self.send.append(&self.send_buffer, 0, bytes) {
            // Completed sends may have made room.
            if self.reap().is_err() || !self.send.append(&self.send_buffer, 0, bytes) {
                self.stats.send_full += 1;
                return Err(SendError::Full);
            }
        }
        if self.start_send().and_then(|()| self.ring.submit()).is_err() {
            self.closed.get_or_insert(libc::EIO);
            return Err(SendError::Closed);
        }
        Ok(())
    }

    /// Non-blocking: hands received bytes to `on_bytes` and returns how many.
    /// Once the peer has closed (or the connection failed) and every byte was
    /// delivered, returns `Err` (`UnexpectedEof` for an orderly close).
    pub fn poll_recv(&mut self, mut on_bytes: impl FnMut(&[u8])) -> io::Result<usize> {
        self.reap()?;
        let delivered = self.unread;
        if delivered > 0 {
            // SAFETY: the receive into this buffer has completed; it is armed
            // again only after the callback returns.
            on_bytes(unsafe { self.recv_buffer.slice(0, delivered) });
            self.unread = 0;
        }
        if !self.recv_armed && self.closed.is_none() {
            self.arm_recv()?;
            self.ring.submit()?;
        }
        match self.closed {
            Some(errno) if delivered == 0 => Err(Self::closed_error(errno)),
            _ => Ok(delivered),
        }
    }

    /// Blocks until some bytes were delivered, the connection closed (`Err`)
    /// or `timeout` passed (`Ok(0)`).
    pub fn wait_recv(
        &mut self,
        timeout: Duration,
        mut on_bytes: impl FnMut(&[u8]),
    ) -> io::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.poll_recv(&mut on_bytes)?;
            if n > 0 {
                return Ok(n);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            self.ring.wait(deadline - now)?;
        }
    }

    /// Waits until the kernel has taken every queued byte. `TimedOut` after
    /// `timeout`; the close error if the connection closes first.
    pub fn flush(&mut self, timeout: Duration) -> io::Result<()> {
        until_done(timeout, "bytes still queued", |wait| {
            if let Some(wait) = wait {
                self.ring.wait(wait)?;
            }
            self.reap()?;
            if self.send.len == 0 {
                return Ok(true);
            }
            match self.closed {
                Some(errno) => Err(Self::closed_error(errno)),
                None => Ok(false),
            }
        })
    }

    /// Bytes queued and not yet taken by the kernel.
    pub fn pending_send_bytes(&self) -> usize {
        self.send.len
    }

    /// True once the peer closed or the connection failed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> TcpConnStats {
        self.stats
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl AsRawFd for TcpConn {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        if !self.ring.cancel_all_and_drain(DROP_DRAIN_TIMEOUT) {
            tracing::error!(
                "tcp connection: operations still in flight at drop; leaking its buffers"
            );
            self.recv_buffer.leak();
            self.send_buffer.leak();
            self.target.leak();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_queue_wraps_and_never_overwrites_the_chunk_in_flight() {
        let region = Region::new(8).unwrap();
        let mut q = SendQueue::new(8);
        assert!(q.append(&region, 0, b"abcdef"));
        assert_eq!(q.next_chunk(), Some((0, 6)));
        assert!(!q.append(&region, 0, b"xyz"), "only 2 bytes free");
        q.sent(4); // "ef" left at 4..6
        assert!(q.append(&region, 0, b"ghijk")); // 6,7 then wraps to 0..3
        assert_eq!(q.len, 7);
        assert_eq!(q.next_chunk(), Some((4, 4))); // up to the end of the buffer
        q.sent(4);
        assert_eq!(q.next_chunk(), Some((0, 3)));
        // SAFETY: no kernel operation uses this region in the test.
        assert_eq!(unsafe { region.slice(0, 3) }, b"ijk");
        q.sent(3);
        assert_eq!(q.len, 0);
        assert_eq!(q.head, 0);
    }

    #[test]
    fn user_data_round_trips() {
        let cqe = Cqe {
            user_data: user_data(kind::RECV, 0x0123_4567, 0x89ab_cdef),
            result: 0,
            flags: 0,
        };
        assert_eq!(cqe.kind(), kind::RECV);
        assert_eq!(cqe.generation(), 0x0123_4567 & GENERATION_MASK);
        assert_eq!(cqe.index(), 0x89ab_cdef);
    }
}
