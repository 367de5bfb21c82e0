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
    /// Copies the packet into a free send slot. When every slot is in
    /// flight it reaps finished sends once and, if none finished, says
    /// `WouldBlock`: the sequencer holds the packet and goes on (it never
    /// sleeps here).
    fn publish(&mut self, packet: &[u8]) -> io::Result<()> {
        for attempt in 0..2 {
            if let Some((slot, buffer)) = self.sender.slot() {
                buffer[..packet.len()].copy_from_slice(packet);
                return self.sender.queue_slot(slot, packet.len());
            }
            if attempt == 0 {
                self.sender.submit()?;
                self.sender.poll_completions()?;
            }
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "every multicast send slot is in flight",
        ))
    }

    fn submit(&mut self) -> io::Result<()> {
        self.sender.submit()?;
        self.sender.poll_completions().map(|_| ())
    }

    fn wait_for_room(&mut self, timeout: Duration) -> io::Result<()> {
        self.sender.submit()?;
        self.sender.wait_completions(timeout)?;
        self.sender.poll_completions().map(|_| ())
    }
}
