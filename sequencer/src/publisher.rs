//! The multicast [`Publisher`]: MoldUDP64 packets go out through the
//! runtime's io_uring multicast sender. A duty cycle's packets are queued and
//! submitted with one `io_uring_enter`.

use std::io;
use std::time::Duration;

use tally_runtime::net::{MulticastConfig, MulticastSender, SendStats};

use crate::core::Publisher;

/// Send buffers the publisher keeps in flight at most.
pub const SEND_SLOTS: usize = 256;

/// Publishes packets to the multicast group.
pub struct MulticastPublisher {
    sender: MulticastSender,
}

impl MulticastPublisher {
    /// Opens the sender: bound to `config.interface`, connected to the group.
    pub fn new(config: &MulticastConfig, packet_bytes_max: usize) -> io::Result<Self> {
        Ok(MulticastPublisher {
            sender: MulticastSender::new(config, SEND_SLOTS, packet_bytes_max)?,
        })
    }

    /// Reaps finished sends (call when idle).
    pub fn poll_completions(&mut self) -> io::Result<usize> {
        self.sender.poll_completions()
    }

    /// Waits for every send in flight (shutdown).
    pub fn flush(&mut self, timeout: Duration) -> io::Result<()> {
        self.sender.flush(timeout)
    }

    /// The sender's statistics.
    pub fn stats(&self) -> SendStats {
        self.sender.stats()
    }
}

impl Publisher for MulticastPublisher {
    fn publish(&mut self, packet: &[u8]) -> io::Result<()> {
        // Every slot in flight: submit what is queued and wait for the kernel
        // to finish one. UDP sends complete in microseconds; the bound only
        // guards against a wedged socket.
        let mut waits = 0;
        loop {
            if let Some((slot, buffer)) = self.sender.slot() {
                buffer[..packet.len()].copy_from_slice(packet);
                return self.sender.queue_slot(slot, packet.len());
            }
            self.sender.submit()?;
            self.sender.wait_completions(Duration::from_millis(10))?;
            waits += 1;
            if waits == 100 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "multicast send slots stayed full for a second",
                ));
            }
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        self.sender.submit()?;
        self.sender.poll_completions().map(|_| ())
    }
}
