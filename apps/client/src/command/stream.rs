//! The stream side of a command client, usable alone by read-only tools: a
//! [`StreamConsumer`] from seq 1 feeding a [`Replica`], and "caught up".

use std::time::{Duration, Instant};

use tally_wire::Message;

use super::CommandError;
use crate::consumer::{monotonic_ns, ConsumerConfig, StreamConsumer};
use crate::replica::{Replica, ReplicaLimits};

/// A replica of the session, kept by a stream consumer.
pub struct StreamReplica {
    consumer: StreamConsumer,
    replica: Replica,
    replay: std::net::SocketAddr,
}

impl StreamReplica {
    /// Joins the stream (reading the session from `config.start_seq`).
    pub fn new(
        config: &ConsumerConfig,
        limits: ReplicaLimits,
    ) -> Result<StreamReplica, CommandError> {
        Ok(StreamReplica {
            consumer: StreamConsumer::new(config)?,
            replica: Replica::new(limits),
            replay: config.replay,
        })
    }

    /// Joins and reads until caught up with the stream, up to `timeout`.
    pub fn connect(
        config: &ConsumerConfig,
        limits: ReplicaLimits,
        timeout: Duration,
    ) -> Result<StreamReplica, CommandError> {
        let mut stream = StreamReplica::new(config, limits)?;
        let deadline = Instant::now() + timeout;
        while !stream.caught_up(timeout, deadline)? {
            stream.wait(Duration::from_millis(20), |replica, seq, message| {
                replica.apply(seq, message);
            })?;
        }
        Ok(stream)
    }

    /// Whether everything the stream had is applied (the newest number a
    /// packet or heartbeat announced, nothing being recovered). After
    /// `deadline`, why not, as an error.
    pub fn caught_up(&self, timeout: Duration, deadline: Instant) -> Result<bool, CommandError> {
        let consumer = &self.consumer;
        if consumer.newest_seq() > 0
            && consumer.delivered_seq() >= consumer.newest_seq()
            && !consumer.is_recovering()
        {
            if let Some(limit) = self.replica.limit_met() {
                return Err(CommandError::LimitMet(limit));
            }
            return Ok(true);
        }
        if Instant::now() < deadline {
            return Ok(false);
        }
        let detail = format!(
            "delivered {} of {} in {timeout:?} (is the replay feed at {} reachable, and does it accept these credentials?)",
            consumer.delivered_seq(),
            consumer.newest_seq(),
            self.replay,
        );
        Err(if consumer.delivered_seq() == 0 {
            CommandError::Unreachable(detail)
        } else {
            CommandError::CatchUp(detail)
        })
    }

    /// One bounded round; `on_message` applies each message (and may look
    /// at the replica before and after).
    pub fn poll(
        &mut self,
        now_ns: u64,
        mut on_message: impl FnMut(&mut Replica, u64, &Message),
    ) -> Result<usize, CommandError> {
        let replica = &mut self.replica;
        Ok(self
            .consumer
            .poll(now_ns, |seq, message| on_message(replica, seq, &message))?)
    }

    /// As [`poll`](Self::poll), blocking in the kernel up to `timeout`
    /// while nothing arrives.
    pub fn wait(
        &mut self,
        timeout: Duration,
        mut on_message: impl FnMut(&mut Replica, u64, &Message),
    ) -> Result<usize, CommandError> {
        let replica = &mut self.replica;
        let work = self
            .consumer
            .wait(timeout, |seq, message| on_message(replica, seq, &message))?;
        Ok(work + self.poll(monotonic_ns(), on_message)?)
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn consumer(&self) -> &StreamConsumer {
        &self.consumer
    }
}
