//! TCP through io_uring: a server reactor for one loop ([`TcpServer`]) and a
//! client connection ([`TcpConn`]).
//!
//! Every connection receives into its own buffer (one receive in flight at a
//! time) and sends from its own bounded send buffer (a byte ring; one send in
//! flight at a time, the next chunk queued when it completes). All of it is
//! allocated when the server or connection is created.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

mod conn;
mod handle;
mod queue;
mod server;
#[cfg(test)]
mod tests;

pub use conn::*;
pub use handle::*;
use queue::*;
pub use server::*;

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
