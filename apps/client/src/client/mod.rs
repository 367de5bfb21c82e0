//! The order-entry client (DESIGN.md §4): one SoupBinTCP session to the
//! gateway that logs in, numbers commands, pipelines them, surfaces their
//! `k`/`j` acks, and survives dropped connections without sending anything
//! twice.
//!
//! Numbering: Login Accepted says which client_seq comes next; the client
//! stamps each command's header with the next number (origin and timestamp
//! zero, as the gateway and sequencer stamp those) and keeps every command
//! until its ack arrives, in a ring of `window` slots. A full ring is
//! back-pressure ([`ClientError::WindowFull`]), never growth.
//!
//! Exactly once across a reconnect: after a drop the client reconnects with
//! a backoff and logs in asking for acks from its oldest unacknowledged
//! command. Login Accepted carries the appliance's next number `N`, final
//! because the gateway holds it back until none of the client's commands are
//! in flight: everything below `N` was sequenced (its ack is replayed), so
//! only commands from `N` on are sent again. A command that was sequenced is
//! never resent. When the gateway's ack history no longer reaches back far
//! enough, the commands it cannot replay are reported as
//! [`ClientEvent::AckUnavailable`] (they were sequenced; their stream numbers
//! are on the stream).
//!
//! Heartbeats go out after `heartbeat_interval_ns` without sending; a server
//! silent for `peer_timeout_ns` is dropped and the client reconnects.
//!
//! Realtime contract: one thread owns a client. The ring, the frame decoder
//! and the connection buffers are allocated at construction and at each
//! (re)connect; sending, acks and heartbeats never allocate, lock or log.
//! `connect` to the gateway blocks for at most `connect_timeout_ns` (on
//! loopback, a refused connection returns at once); everything else is
//! non-blocking except the `*_blocking`/`wait*` helpers for tools and tests.

//! ```no_run
//! use std::time::Duration;
//! use tally_client::client::{ClientConfig, ClientEvent, OrderEntryClient};
//! use tally_client::consumer::monotonic_ns;
//! use tally_wire::Order;
//! # fn run(appliance: &tally_config::ApplianceConfig) -> Result<(), tally_client::client::ClientError> {
//! let config = ClientConfig::for_appliance(appliance, "pos1", "pos1pass");
//! let mut client = OrderEntryClient::connect(config, Duration::from_secs(10))?;
//! let client_seq = client.send(Order::new(1, 0, 42, 2).as_bytes())?;
//! loop {
//!     client.poll(monotonic_ns(), |event| {
//!         if let ClientEvent::Ack(ack) = event {
//!             // ack.client_seq == client_seq, ack.stream_seq = its number
//!             let _ = (ack, client_seq);
//!         }
//!     });
//! }
//! # }
//! ```

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use tally_runtime::net::{SendError, TcpConn};
use tally_wire::mold::Session;
use tally_wire::soup::DEBUG_TEXT_BYTES_MAX;
use tally_wire::soup::{self, FrameDecoder};
use tally_wire::Header;

use crate::consumer::monotonic_ns;

mod state;
#[cfg(test)]
mod tests;
mod types;

use state::*;
pub use types::*;

/// Bytes per command slot; every stream message fits.
pub const COMMAND_BYTES_MAX: usize = 64;
const _: () = assert!(tally_wire::MAX_MESSAGE_SIZE <= COMMAND_BYTES_MAX);
/// Largest window (commands awaiting their ack).
pub const WINDOW_MAX: usize = 1 << 20;
/// Largest server frame accepted (acks are 22 bytes, Debug text short).
const FRAME_BYTES_MAX: usize = 1024;
/// Bytes of `U` frames handed to the connection in one send.
const BATCH_BYTES: usize = 8192;

/// The order-entry client. See the module documentation.
pub struct OrderEntryClient {
    config: ClientConfig,
    conn: Option<TcpConn>,
    decoder: FrameDecoder,
    state: State,
}

impl OrderEntryClient {
    /// A client that connects and logs in on its first [`poll`](Self::poll);
    /// [`send`](Self::send) answers `Disconnected` until then.
    pub fn new(config: ClientConfig) -> Result<OrderEntryClient, ClientError> {
        let mut login = [0u8; 64];
        soup::write_login_request(
            &mut login,
            &config.username,
            &config.password,
            config.session,
            0,
        )
        .map_err(|_| ClientError::InvalidCredentials)?;
        assert!(
            (1..=WINDOW_MAX).contains(&config.window),
            "window {} must be 1..={WINDOW_MAX}",
            config.window
        );
        let capacity = config.window.next_power_of_two();
        let state = State {
            link: Link::Down,
            logged_in_once: false,
            next_client_seq: 0,
            first_unacked: 0,
            sent_up_to: 0,
            written_high: 0,
            slots: vec![[0u8; COMMAND_BYTES_MAX]; capacity].into_boxed_slice(),
            lens: vec![0u8; capacity].into_boxed_slice(),
            mask: capacity as u32 - 1,
            window: config.window as u32,
            since_ns: 0,
            last_recv_ns: 0,
            last_sent_ns: 0,
            sent_since_poll: false,
            retry_at_ns: 0,
            backoff_ns: config.reconnect_backoff_min_ns,
            broken: false,
            last_connect_error: None,
            debug_text: [0; DEBUG_TEXT_BYTES_MAX],
            debug_len: 0,
            stats: ClientStats::default(),
            accepted_session: Session::BLANK,
        };
        let decoder = FrameDecoder::with_buffer_bytes(
            FRAME_BYTES_MAX,
            config.recv_buffer_bytes.max(4 * FRAME_BYTES_MAX),
        );
        Ok(OrderEntryClient {
            config,
            conn: None,
            decoder,
            state,
        })
    }

    /// The session the gateway accepted the login into (blank until the
    /// first Login Accepted): the appliance's current one when the
    /// configured session is blank.
    pub fn session(&self) -> Session {
        self.state.accepted_session
    }

    /// Connects and logs in, waiting up to `timeout` for Login Accepted
    /// (retrying refused connections with the backoff meanwhile).
    pub fn connect(
        config: ClientConfig,
        timeout: Duration,
    ) -> Result<OrderEntryClient, ClientError> {
        let mut client = OrderEntryClient::new(config)?;
        let deadline = Instant::now() + timeout;
        loop {
            client.wait(deadline.saturating_duration_since(Instant::now()), |_| {});
            match client.state.link {
                Link::Ready => return Ok(client),
                Link::Closed(error) => return Err(error),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(match client.state.last_connect_error {
                    Some(kind) if client.conn.is_none() => ClientError::Unreachable(kind),
                    _ => ClientError::Timeout,
                });
            }
        }
    }

    /// Takes `message` (a stream message: header + body), stamps the next
    /// client_seq into its header (origin and timestamp zero) and writes it
    /// at once. Returns its client_seq.
    pub fn send(&mut self, message: &[u8]) -> Result<u32, ClientError> {
        let client_seq = self.queue(message)?;
        self.flush();
        Ok(client_seq)
    }

    /// As [`send`](Self::send), but the write waits for the next
    /// [`flush`](Self::flush) or poll: many commands go out in one write.
    pub fn queue(&mut self, message: &[u8]) -> Result<u32, ClientError> {
        match self.state.link {
            Link::Ready => {}
            Link::Closed(error) => return Err(error),
            Link::Down | Link::LoggingIn => return Err(ClientError::Disconnected),
        }
        if message.len() < Header::SIZE || message.len() > COMMAND_BYTES_MAX {
            return Err(ClientError::InvalidMessage { len: message.len() });
        }
        let state = &mut self.state;
        if state.next_client_seq - state.first_unacked >= state.window {
            return Err(ClientError::WindowFull);
        }
        let client_seq = state.next_client_seq;
        let index = (client_seq & state.mask) as usize;
        let slot = &mut state.slots[index];
        slot[..message.len()].copy_from_slice(message);
        // Header: origin (1..3) and timestamp (7..15) zero, client_seq (3..7).
        slot[1..3].fill(0);
        slot[3..7].copy_from_slice(&client_seq.to_be_bytes());
        slot[7..15].fill(0);
        state.lens[index] = message.len() as u8;
        state.next_client_seq += 1;
        state.stats.commands += 1;
        Ok(client_seq)
    }

    /// Writes queued commands now (as far as the send buffer takes them).
    pub fn flush(&mut self) {
        if self.state.link != Link::Ready {
            return;
        }
        if let Some(conn) = &mut self.conn {
            if !self.state.pump(conn, self.config.send_buffer_bytes) {
                // Noticed as a drop by the next poll.
                self.state.broken = true;
            }
        }
    }

    /// One bounded round: (re)connects when due, reads acks, writes what is
    /// queued, sends a heartbeat when due, notices a dead connection.
    /// Returns the work done (0 = idle). `now_ns` is [`monotonic_ns`].
    pub fn poll(&mut self, now_ns: u64, mut on_event: impl FnMut(ClientEvent)) -> usize {
        let mut work = 0;
        match self.state.link {
            Link::Closed(_) => return 0,
            Link::Down => {
                if now_ns < self.state.retry_at_ns {
                    return 0;
                }
                self.open(now_ns);
                work += 1;
            }
            Link::LoggingIn | Link::Ready => {}
        }
        let Some(conn) = &mut self.conn else {
            return work;
        };
        let state = &mut self.state;
        let decoder = &mut self.decoder;
        let received = conn.poll_recv(|bytes| feed(decoder, state, bytes, now_ns, &mut on_event));
        let mut lost = match received {
            Ok(n) => {
                work += usize::from(n > 0);
                false
            }
            Err(_) => true,
        };
        if matches!(state.link, Link::Closed(_)) {
            self.conn = None;
            return work + 1;
        }
        lost |= state.broken
            || (state.link == Link::LoggingIn
                && now_ns.saturating_sub(state.since_ns) > self.config.login_timeout_ns)
            || now_ns.saturating_sub(state.last_recv_ns) > self.config.peer_timeout_ns;
        if !lost && state.link == Link::Ready {
            let before = state.sent_up_to;
            lost = !state.pump(conn, self.config.send_buffer_bytes);
            work += (state.sent_up_to - before) as usize;
        }
        if state.sent_since_poll {
            state.sent_since_poll = false;
            state.last_sent_ns = now_ns;
        }
        // Only once logged in: anything before Login Accepted is a protocol
        // error for the gateway.
        if !lost
            && state.link == Link::Ready
            && now_ns.saturating_sub(state.last_sent_ns) >= self.config.heartbeat_interval_ns
        {
            let mut frame = [0u8; 8];
            let len = soup::write_client_heartbeat(&mut frame).expect("fits");
            match conn.send(&frame[..len]) {
                Ok(()) => state.stats.heartbeats_sent += 1,
                Err(SendError::Full) => {}
                Err(SendError::Closed) => lost = true,
            }
            state.last_sent_ns = now_ns;
        }
        if lost {
            self.lose_connection(now_ns, &mut on_event);
            work += 1;
        }
        work
    }

    /// Polls until at least one event happened or `timeout` passed; returns
    /// the number of events.
    pub fn wait(&mut self, timeout: Duration, mut on_event: impl FnMut(ClientEvent)) -> usize {
        let deadline = Instant::now() + timeout;
        let mut events = 0;
        loop {
            self.poll(monotonic_ns(), |event| {
                events += 1;
                on_event(event)
            });
            if events > 0 || matches!(self.state.link, Link::Closed(_)) {
                return events;
            }
            let now = Instant::now();
            if now >= deadline {
                return 0;
            }
            let mut slice = deadline - now;
            match &mut self.conn {
                Some(conn) => {
                    let heartbeat_due = (self.state.last_sent_ns
                        + self.config.heartbeat_interval_ns)
                        .saturating_sub(monotonic_ns());
                    slice = slice.min(Duration::from_nanos(heartbeat_due.max(1_000_000)));
                    let state = &mut self.state;
                    let decoder = &mut self.decoder;
                    // A closed connection is noticed by the next poll.
                    let _ = conn.wait_recv(slice, |bytes| {
                        feed(decoder, state, bytes, monotonic_ns(), &mut |event| {
                            events += 1;
                            on_event(event)
                        })
                    });
                    if events > 0 {
                        return events;
                    }
                }
                None => {
                    let until_retry = self.state.retry_at_ns.saturating_sub(monotonic_ns());
                    std::thread::sleep(slice.min(Duration::from_nanos(until_retry)));
                }
            }
        }
    }

    /// Sends `message`, waiting (and polling) while the window is full or
    /// the client is reconnecting, up to `timeout`.
    pub fn send_blocking(
        &mut self,
        message: &[u8],
        timeout: Duration,
        mut on_event: impl FnMut(ClientEvent),
    ) -> Result<u32, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.send(message) {
                Err(ClientError::WindowFull | ClientError::Disconnected) => {}
                other => return other,
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            self.wait(deadline - now, &mut on_event);
        }
    }

    /// Polls until command `client_seq` (and every one before it) has its
    /// ack, up to `timeout`.
    pub fn wait_acked(
        &mut self,
        client_seq: u32,
        timeout: Duration,
        mut on_event: impl FnMut(ClientEvent),
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.state.first_unacked > client_seq {
                return Ok(());
            }
            if let Link::Closed(error) = self.state.link {
                return Err(error);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            self.wait(deadline - now, &mut on_event);
        }
    }

    /// Polls until every command sent has its ack, up to `timeout`.
    pub fn wait_all_acked(
        &mut self,
        timeout: Duration,
        on_event: impl FnMut(ClientEvent),
    ) -> Result<(), ClientError> {
        if self.state.first_unacked == self.state.next_client_seq {
            return Ok(());
        }
        let last = self.state.next_client_seq - 1;
        self.wait_acked(last, timeout, on_event)
    }

    /// Sends Logout and closes the connection; the client stops.
    pub fn logout(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let mut frame = [0u8; 8];
            let len = soup::write_logout(&mut frame).expect("fits");
            if conn.send(&frame[..len]).is_ok() {
                let _ = conn.flush(Duration::from_millis(100));
            }
        }
        self.state.link = Link::Closed(ClientError::LoggedOut);
    }

    /// Drops the connection now, as a network failure would; the client
    /// reconnects and resends on its own (for tools and tests).
    pub fn drop_connection(&mut self) {
        if self.conn.is_some() {
            self.lose_connection(monotonic_ns(), &mut |_| {});
        }
    }

    fn open(&mut self, now_ns: u64) {
        let connected = TcpConn::connect_timeout(
            self.config.gateway,
            self.config.recv_buffer_bytes,
            self.config.send_buffer_bytes,
            Duration::from_nanos(self.config.connect_timeout_ns),
        );
        let state = &mut self.state;
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(error) => {
                state.stats.connect_failures += 1;
                state.last_connect_error = Some(error.kind());
                state.retry_at_ns = now_ns + state.backoff_ns;
                state.backoff_ns = (state.backoff_ns * 2).min(self.config.reconnect_backoff_max_ns);
                return;
            }
        };
        // Resuming: ask for the acks of everything still unacknowledged.
        let requested = if state.logged_in_once {
            u64::from(state.first_unacked)
        } else {
            0
        };
        let mut login = [0u8; 64];
        let len = soup::write_login_request(
            &mut login,
            &self.config.username,
            &self.config.password,
            self.config.session,
            requested,
        )
        .expect("credentials checked in new");
        if conn.send(&login[..len]).is_err() {
            state.stats.connect_failures += 1;
            state.retry_at_ns = now_ns + state.backoff_ns;
            return;
        }
        state.stats.connects += 1;
        state.link = Link::LoggingIn;
        state.broken = false;
        state.since_ns = now_ns;
        state.last_recv_ns = now_ns;
        state.last_sent_ns = now_ns;
        state.backoff_ns = self.config.reconnect_backoff_min_ns;
        self.decoder.clear();
        self.conn = Some(conn);
    }

    fn lose_connection(&mut self, now_ns: u64, on_event: &mut impl FnMut(ClientEvent)) {
        self.conn = None;
        let state = &mut self.state;
        if matches!(state.link, Link::Closed(_)) {
            return;
        }
        state.link = Link::Down;
        state.broken = false;
        state.stats.disconnects += 1;
        state.retry_at_ns = now_ns + state.backoff_ns;
        state.backoff_ns = (state.backoff_ns * 2).min(self.config.reconnect_backoff_max_ns);
        on_event(ClientEvent::Disconnected);
    }

    /// The client_seq the next new command gets (0 before the first login).
    pub fn next_client_seq(&self) -> u32 {
        self.state.next_client_seq
    }

    /// The oldest command without an ack (== `next_client_seq` when none).
    pub fn first_unacked(&self) -> u32 {
        self.state.first_unacked
    }

    /// Commands awaiting their ack.
    pub fn unacked(&self) -> u32 {
        self.state.next_client_seq - self.state.first_unacked
    }

    /// Whether another command fits the window now.
    pub fn has_room(&self) -> bool {
        self.unacked() < self.state.window
    }

    /// Logged in and able to send.
    pub fn is_ready(&self) -> bool {
        self.state.link == Link::Ready
    }

    /// Why the client stopped, once it has.
    pub fn closed(&self) -> Option<ClientError> {
        match self.state.link {
            Link::Closed(error) => Some(error),
            _ => None,
        }
    }

    /// The text of the server's last Debug packet.
    pub fn last_debug(&self) -> &str {
        std::str::from_utf8(&self.state.debug_text[..self.state.debug_len]).unwrap_or("")
    }

    pub fn stats(&self) -> ClientStats {
        self.state.stats
    }

    /// The connection's socket, while connected (tests cut it with
    /// `shutdown(2)` to simulate a network failure).
    pub fn connection_fd(&self) -> Option<RawFd> {
        self.conn.as_ref().map(|conn| conn.as_raw_fd())
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }
}

const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<OrderEntryClient>();
};
