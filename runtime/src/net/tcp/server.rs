//! `TcpServer`: the listening socket, accepts and the io_uring event loop.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use io_uring::{opcode, types};

use super::{
    CloseReason, Conn, ConnId, ConnState, SendError, SendQueue, TcpEvent, TcpServerConfig,
    TcpStats, UNSPECIFIED,
};
use crate::net::ring::{
    kind, user_data, Cqe, HeapArray, Region, Ring, WatchedWaker, CQE_BATCH, GENERATION_MASK,
};
use crate::net::{sock, TcpServerHandle, DROP_DRAIN_TIMEOUT};

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
    pub(super) handle: TcpServerHandle,
    pub(super) recv_buffers: Region,
    pub(super) recv_buffer_bytes: usize,
    pub(super) listener: OwnedFd,
    pub(super) local_addr: SocketAddr,
    pub(super) accept_armed: bool,
    /// Another thread's way to end this server's [`TcpServer::wait`] early.
    pub(super) waker: Option<WatchedWaker>,
    /// Whether [`TcpServer::poll`] submits what it queued before it
    /// returns (see [`TcpServer::submit_after_poll`]).
    pub(super) submit_after_poll: bool,
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
            submit_after_poll: true,
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
        let watched = self.waker.insert(WatchedWaker::new(waker));
        watched.arm(&mut self.handle.ring)?;
        self.handle.ring.submit()
    }

    /// The waker another thread calls to end this server's waits: the
    /// watched one, or a new one watched from now on.
    pub fn waker(&mut self) -> io::Result<crate::wake::Waker> {
        if let Some(watched) = &self.waker {
            return Ok(watched.waker().clone());
        }
        let waker = crate::wake::Waker::new()?;
        self.watch_waker(waker.clone())?;
        Ok(waker)
    }

    /// [`wait`](Self::wait), as a loop parks between duty cycles: with a
    /// watched waker, the waker is marked parked first and `has_work` (work
    /// handed over by the waker's callers) checked after, so work handed
    /// over just before the park ends it ([`Waker::park_with`]); without
    /// one, a plain wait.
    ///
    /// [`Waker::park_with`]: crate::wake::Waker::park_with
    pub fn park_unless(
        &mut self,
        timeout: Duration,
        has_work: impl FnOnce() -> bool,
    ) -> io::Result<()> {
        let TcpServer { handle, waker, .. } = self;
        let Some(watched) = waker else {
            return wait_in(handle, timeout);
        };
        let mut waited = Ok(());
        watched
            .waker()
            .park_with(has_work, || waited = wait_in(handle, timeout));
        waited
    }

    pub(super) fn arm_accept(&mut self) -> io::Result<()> {
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
        if let Some(waker) = &mut self.waker {
            if let Err(e) = waker.arm(&mut self.handle.ring) {
                self.handle.count_submit_error(&e);
            }
        }
        if !self.accept_armed {
            self.handle.stats.accept_rearms += 1;
            if let Err(e) = self.arm_accept() {
                self.handle.count_submit_error(&e);
            }
        }
        if self.submit_after_poll {
            self.handle.ring.submit()?;
        }
        Ok(events)
    }

    /// With `false`, [`TcpServer::poll`] leaves what it queued (receives
    /// re-armed, sends its callback made) for the caller's next
    /// [`TcpServer::submit`] or [`TcpServer::wait`]: a loop that answers
    /// what it received later in the same cycle then submits the receives
    /// and the answers with one `io_uring_enter`. The caller must submit
    /// before it waits for anything else. Default `true`.
    pub fn submit_after_poll(&mut self, enabled: bool) {
        self.submit_after_poll = enabled;
    }

    pub(super) fn dispatch(
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
                if let Some(waker) = &mut self.waker {
                    waker.complete(cqe);
                }
                0
            }
            _ => 0, // cancels
        }
    }

    pub(super) fn complete_accept(
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

    pub(super) fn arm_recv(&mut self, index: usize) {
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

    pub(super) fn check_generation(&self, index: usize, cqe: &Cqe) {
        assert_eq!(
            self.handle.conns[index].generation & GENERATION_MASK,
            cqe.generation(),
            "completion for a released slot"
        );
    }

    pub(super) fn complete_recv(
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

    pub(super) fn complete_send(&mut self, cqe: Cqe) {
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

    pub(super) fn complete_timeout(&mut self, cqe: Cqe) {
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
        wait_in(&mut self.handle, timeout)
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

/// [`TcpServer::wait`] on the server's handle (its ring and closed list).
fn wait_in(handle: &mut TcpServerHandle, timeout: Duration) -> io::Result<()> {
    if handle.closed.len() > handle.closed_head || handle.ring.has_completions() {
        return handle.ring.submit();
    }
    handle.ring.wait(timeout)
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
