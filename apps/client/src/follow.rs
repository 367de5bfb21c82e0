//! Following the stream across session rollovers (docs/protocol.md,
//! "Session rollover").
//!
//! A session ends with `S(C)` and the MoldUDP64 end-of-session packet; the
//! appliance then starts the next session, whose name is the ended one's
//! [`Session::successor`] (`D20261122` → `D20261123`; the rule needs no
//! name on the wire). A [`SessionFollower`] notices the end once every
//! message of the session was delivered, and replaces the consumer with
//! one of the next session from seq 1: the new session opens with the
//! warehouse's broadcast of the whole state (`L`, `R`, `I`, `H`, `S(W)`),
//! so a replica clears itself at the switch and rebuilds from it.
//!
//! The next session's consumer may be made before the appliance has
//! started it: it waits for it like a consumer that joined early (its
//! replay logins are refused with `S` until then, and retried).
//!
//! ```no_run
//! # use tally_client::consumer::{monotonic_ns, ConsumerConfig, StreamConsumer};
//! # use tally_client::follow::SessionFollower;
//! # use tally_client::replica::{Replica, ReplicaLimits};
//! # fn run(config: ConsumerConfig) -> std::io::Result<()> {
//! let follower = SessionFollower::new(config.clone());
//! let mut consumer = StreamConsumer::new(&config)?;
//! let mut replica = Replica::new(ReplicaLimits::small());
//! loop {
//!     consumer.poll(monotonic_ns(), |seq, message| {
//!         replica.apply(seq, &message);
//!     })?;
//!     if follower.follow(&mut consumer)?.is_some() {
//!         replica.clear(); // the next session's broadcast rebuilds it
//!     }
//! }
//! # }
//! ```

use std::io;

use tally_wire::mold::Session;

use crate::consumer::{ConsumerConfig, StreamConsumer};

/// Moves a consumer to the next session when its session has ended.
#[derive(Clone, Debug)]
pub struct SessionFollower {
    config: ConsumerConfig,
}

impl SessionFollower {
    /// A follower making consumers like `config` (its session and start
    /// seq are replaced at each switch).
    pub fn new(config: ConsumerConfig) -> SessionFollower {
        SessionFollower { config }
    }

    /// When `consumer` has delivered the whole of its session (its end
    /// included), replaces it with a consumer of the next session reading
    /// from seq 1, and returns that session; otherwise `None`. An ended
    /// session whose name has no successor is an error (the appliance
    /// cannot roll over it either).
    pub fn follow(&self, consumer: &mut StreamConsumer) -> io::Result<Option<Session>> {
        if !consumer.is_ended() {
            return Ok(None);
        }
        let ended = consumer.session();
        let next = ended.successor().ok_or_else(|| {
            io::Error::other(format!(
                "session {ended} ended and its name has no successor to follow"
            ))
        })?;
        let mut config = self.config.clone();
        config.session = next;
        config.start_seq = 1;
        // Receivers share the group's port (as every consumer on a host
        // does), so the new one binds while the old one still exists.
        *consumer = StreamConsumer::new(&config)?;
        tracing::info!(ended = %ended, session = %next, "following the next session");
        Ok(Some(next))
    }
}
