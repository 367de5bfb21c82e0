//! The HTTP listener: TCP_NODELAY on every connection and a bound on open
//! connections.
//!
//! Without TCP_NODELAY a response written in two pieces (headers, then
//! body) waits for the client's delayed ACK: ~40 ms per request (what the
//! tiny_http monitor measured). At `connections_max` open connections the
//! listener stops accepting until one closes; the kernel's backlog holds
//! the rest, so a connection flood costs a bounded amount of memory.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A [`TcpListener`] that holds one permit per open connection.
pub(crate) struct BoundedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    sources: Arc<Sources>,
}

/// Open connections by source address.
struct Sources {
    open: Mutex<HashMap<IpAddr, usize>>,
    per_source_max: usize,
}

impl Sources {
    /// Counts one more connection from `ip`, unless it has the most.
    fn admit(&self, ip: IpAddr) -> bool {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.per_source_max {
            return false;
        }
        *count += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

impl BoundedListener {
    pub(crate) fn new(
        inner: TcpListener,
        connections_max: usize,
        per_source_max: usize,
    ) -> BoundedListener {
        BoundedListener {
            inner,
            permits: Arc::new(Semaphore::new(connections_max)),
            sources: Arc::new(Sources {
                open: Mutex::new(HashMap::new()),
                per_source_max,
            }),
        }
    }
}

impl Listener for BoundedListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    if !self.sources.admit(peer.ip()) {
                        tracing::debug!(%peer, "HTTP connection refused: too many from its address");
                        drop(stream); // closed; the permit stays for the next
                        continue;
                    }
                    // Best effort: a socket that refuses it still works.
                    let _ = stream.set_nodelay(true);
                    let connection = Connection {
                        stream,
                        source: peer.ip(),
                        sources: Arc::clone(&self.sources),
                        _permit: permit,
                    };
                    return (connection, peer);
                }
                Err(error) if per_connection(&error) => continue,
                Err(error) => {
                    // Out of file descriptors or memory: back off instead of
                    // spinning on accept.
                    tracing::warn!(%error, "HTTP accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Errors that concern one connection only (it went away before accept).
fn per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// An accepted connection; its permit and its source's count return when
/// it closes.
pub(crate) struct Connection {
    stream: TcpStream,
    source: IpAddr,
    sources: Arc<Sources>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.sources.release(self.source);
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The peer's address, as handlers extract it
/// (`ConnectInfo<Peer>`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub(crate) SocketAddr);

impl Connected<IncomingStream<'_, BoundedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, BoundedListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}
