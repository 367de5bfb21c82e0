//! `TcpConn`: one outgoing connection (clients: order entry, replay feed).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{opcode, types};

use super::{SendError, SendQueue, UNSPECIFIED};
use crate::net::ring::{
    kind, until_delivered, until_done, user_data, Cqe, HeapArray, Region, Ring, CQE_BATCH,
};
use crate::net::{sock, DROP_DRAIN_TIMEOUT};

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
    pub(super) ring: Ring,
    pub(super) socket: OwnedFd,
    pub(super) recv_buffer: Region,
    pub(super) recv_buffer_bytes: usize,
    pub(super) send_buffer: Region,
    pub(super) send: SendQueue,
    pub(super) recv_armed: bool,
    /// Bytes received (by a completion reaped in `flush` or `send`) and not
    /// yet handed to a callback; the receive is re-armed once they are.
    pub(super) unread: usize,
    /// `Some(0)`: the peer closed; `Some(errno)`: failed.
    pub(super) closed: Option<i32>,
    pub(super) peer_addr: SocketAddr,
    pub(super) local_addr: SocketAddr,
    /// The connect target, read by the kernel during the connect.
    pub(super) target: HeapArray<libc::sockaddr_storage>,
    pub(super) stats: TcpConnStats,
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

    pub(super) fn arm_recv(&mut self) -> io::Result<()> {
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

    pub(super) fn start_send(&mut self) -> io::Result<()> {
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
    pub(super) fn reap(&mut self) -> io::Result<()> {
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

    pub(super) fn closed_error(errno: i32) -> io::Error {
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
        until_delivered(timeout, |wait| {
            if let Some(wait) = wait {
                self.ring.wait(wait)?;
            }
            self.poll_recv(&mut on_bytes)
        })
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
