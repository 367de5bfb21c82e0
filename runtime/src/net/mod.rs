//! io_uring socket helpers: UDP multicast send and receive, UDP unicast, and
//! TCP server and client.
//!
//! Each type owns one io_uring instance, its socket(s) and every buffer the
//! kernel reads or writes, all allocated in its constructor; nothing on the
//! per-message path allocates, locks or logs (set-up and teardown log through
//! `tracing`). A type is used by one thread at a time and can be moved to
//! the thread that runs it (build in `main`, move into the pinned loop).
//! Sockets are `SOCK_NONBLOCK | SOCK_CLOEXEC`; TCP sockets set `TCP_NODELAY`.
//!
//! Buffer lifetime: memory an operation points at stays owned by the object
//! that owns the ring and is freed only after the operation's final
//! completion. On drop each type cancels everything in flight and reaps
//! until nothing is (bounded by [`DROP_DRAIN_TIMEOUT`]); if that bound
//! passes, it deliberately leaks its buffers rather than free memory the
//! kernel may still write.
//!
//! `user_data` packs the operation kind (8 bits), a slab generation (24
//! bits) and a slab or slot index (32 bits).
//!
//! Counters are plain `u64` fields returned by each type's `stats()`; a loop
//! copies them into the shared-memory counters if it wants them exported.

use std::net::Ipv4Addr;
use std::time::Duration;

mod allow;
mod dgram;
mod multicast;
pub(crate) mod ring;
mod send_slots;
mod sock;
mod tcp;
mod udp;

pub use allow::{interface_network, AllowList, Ipv4Network, NetworkParseError, ALLOW_NETWORKS_MAX};
pub use dgram::RecvStats;
pub use multicast::{MulticastReceiver, MulticastSender};
pub use send_slots::SendStats;
pub use tcp::{
    CloseReason, ConnId, SendError, TcpConn, TcpConnStats, TcpEvent, TcpServer, TcpServerConfig,
    TcpServerHandle, TcpStats, CLOSE_FLUSH_TIMEOUT,
};
pub use udp::UdpSocketRing;

/// How long a drop waits for cancelled operations to complete before it
/// leaks their buffers.
pub const DROP_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// `SO_RCVBUF` the receivers ask for.
pub const RECEIVE_BUFFER_BYTES_WANTED: usize = 8 << 20;

/// `SO_SNDBUF` the multicast sender asks for.
pub const SEND_BUFFER_BYTES_WANTED: usize = 4 << 20;

/// Where a multicast stream goes and how it leaves the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MulticastConfig {
    /// Multicast group (224.0.0.0/4).
    pub group: Ipv4Addr,
    pub port: u16,
    /// Address of the interface to send from / join on (127.0.0.1 for
    /// loopback).
    pub interface: Ipv4Addr,
    /// `IP_MULTICAST_TTL`: 0 stays on the host, 1 stays on the LAN.
    pub ttl: u8,
    /// `IP_MULTICAST_LOOP`: deliver to receivers on the sending host too.
    pub loopback: bool,
}

/// How a datagram receiver takes datagrams from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecvMode {
    /// One multishot `recvmsg` that picks buffers from a provided buffer
    /// ring (Linux 6.0+): one submission for any number of datagrams.
    Multishot,
    /// Fallback: one single-shot `recvmsg` at a time into an owned buffer,
    /// submitted again after each datagram (one `io_uring_enter` per
    /// datagram; strictly in order).
    SingleShot,
}

/// Every type is built on one thread and moved to the loop that runs it.
const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<MulticastSender>();
    is_send::<MulticastReceiver>();
    is_send::<UdpSocketRing>();
    is_send::<TcpServer>();
    is_send::<TcpConn>();
};
