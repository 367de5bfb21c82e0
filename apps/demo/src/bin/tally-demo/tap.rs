//! The tap of the load run: the progress line and the final message
//! counts come from it.

use std::time::Duration;

use anyhow::Context;
use tally_client::consumer::{monotonic_ns, ConsumerConfig, StreamConsumer};
use tally_client::replica::{Replica, ReplicaLimits};
use tally_wire::Message;

/// The demo's own stream reader: a replica and a count per message type.
pub(crate) struct Tap {
    consumer: StreamConsumer,
    pub(crate) replica: Replica,
    counts: [u64; 256],
    pub(crate) messages: u64,
}

impl Tap {
    pub(crate) fn new(mut config: ConsumerConfig, limits: ReplicaLimits) -> anyhow::Result<Tap> {
        config.start_seq = 1;
        Ok(Tap {
            consumer: StreamConsumer::new(&config).context("the demo's tap joining the stream")?,
            replica: Replica::new(limits),
            counts: [0; 256],
            messages: 0,
        })
    }

    pub(crate) fn poll_for(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let Tap {
            consumer,
            replica,
            counts,
            messages,
        } = self;
        let mut apply = |seq: u64, message: Message<'_>| {
            replica.apply(seq, &message);
            counts[usize::from(message.msg_type())] += 1;
            *messages += 1;
        };
        if consumer.poll(monotonic_ns(), &mut apply)? == 0 {
            consumer.wait(timeout, &mut apply)?;
        }
        Ok(())
    }

    pub(crate) fn count(&self, msg_type: u8) -> u64 {
        self.counts[usize::from(msg_type)]
    }

    pub(crate) fn counts_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (msg_type, &count) in self.counts.iter().enumerate() {
            if count > 0 {
                map.insert((msg_type as u8 as char).to_string(), count.into());
            }
        }
        serde_json::Value::Object(map)
    }
}
