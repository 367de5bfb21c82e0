//! The server's connection table and what event handlers may do with it
//! (`TcpServerHandle`: send, close, peer, stats).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{opcode, types};

use super::{CloseReason, ConnId, SendError, SendQueue, TcpEvent, TcpStats, CLOSE_FLUSH_TIMEOUT};
use crate::net::ring::{kind, user_data, HeapArray, Region, Ring};
use crate::net::sock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConnState {
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
pub(super) struct Conn {
    pub(super) fd: RawFd,
    pub(super) generation: u32,
    pub(super) state: ConnState,
    pub(super) recv_armed: bool,
    /// The owner asked for no more receives until it resumes.
    pub(super) recv_paused: bool,
    pub(super) timeout_armed: bool,
    pub(super) send: SendQueue,
    pub(super) reason: CloseReason,
    pub(super) peer: SocketAddr,
}

pub(super) const UNSPECIFIED: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// The part of a [`TcpServer`](super::TcpServer) an event handler may use while it holds the
/// bytes of a `Data` event: sending, closing, looking connections up.
pub struct TcpServerHandle {
    pub(super) ring: Ring,
    pub(super) conns: Vec<Conn>,
    /// Free slots (a stack; capacity max_connections, never grows).
    pub(super) free: Vec<u32>,
    pub(super) send_buffers: Region,
    pub(super) send_buffer_bytes: usize,
    /// Per slot: the close-flush deadline the kernel reads while draining.
    pub(super) deadlines: HeapArray<types::Timespec>,
    /// Connections closed whose `Closed` event is not delivered yet. A slot
    /// returns to `free` only when its event is delivered, so each slot is
    /// here at most once.
    pub(super) closed: Vec<(ConnId, CloseReason)>,
    pub(super) closed_head: usize,
    /// Connections resumed with [`TcpServerHandle::resume_recv`] whose
    /// receive the server arms at its next poll (capacity max_connections;
    /// a connection is listed at most once).
    pub(super) resumed: Vec<ConnId>,
    pub(super) open_connections: usize,
    pub(super) stats: TcpStats,
}

impl TcpServerHandle {
    pub(super) fn lookup(&self, conn: ConnId) -> Option<usize> {
        let index = conn.index as usize;
        let c = self.conns.get(index)?;
        (c.generation == conn.generation && c.state != ConnState::Free).then_some(index)
    }

    /// Appends `bytes` to the connection's send buffer and makes sure a send
    /// is in flight (submitted at the end of the current `poll`, or at once
    /// when called through [`TcpServer::send`](super::TcpServer::send)). All or nothing.
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

    pub(super) fn count_submit_error(&mut self, e: &io::Error) {
        self.stats.submit_errors += 1;
        self.stats.last_errno = e.raw_os_error().unwrap_or(0);
    }

    pub(super) fn start_send(&mut self, index: usize) {
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

    pub(super) fn cancel(&mut self, target: u64) {
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

    pub(super) fn begin_close(&mut self, index: usize, reason: CloseReason) {
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

    pub(super) fn try_finish_close(&mut self, index: usize) {
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

    pub(super) fn deliver_closed(
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
