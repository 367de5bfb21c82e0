//! A till's configuration.

use std::time::Duration;

use serde::Serialize;
use tally_client::client::ClientConfig;
use tally_client::consumer::ConsumerConfig;
use tally_client::replica::ReplicaLimits;

use crate::PosError;

/// How a [`Pos`](crate::Pos) waits when a poll found nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Idle {
    /// Block on the stream socket until a message or the next send is due
    /// (a laptop, the demo).
    Park,
    /// Poll again at once (a dedicated core, lowest latency).
    Spin,
}

/// Everything a [`Pos`](crate::Pos) needs; [`PosConfig::new`] fills in defaults.
#[derive(Clone, Debug)]
pub struct PosConfig {
    /// The stream (its `start_seq` should be 1: the directory is the
    /// warehouse's session-start broadcast).
    pub consumer: ConsumerConfig,
    /// The till's order-entry login (role `pos`).
    pub client: ClientConfig,
    /// The login's client id: the origin its commands carry on the stream.
    pub origin: u16,
    /// Replica table sizes.
    pub limits: ReplicaLimits,
    /// Commands awaiting their outcome, at most.
    pub in_flight_max: usize,
    /// Own open orders and holds tracked for modify/cancel and
    /// confirm/release, at most.
    pub open_orders_max: usize,
    pub open_holds_max: usize,
    pub idle: Idle,
    /// How long [`Pos::drain`](crate::Pos::drain) waits by default for outstanding outcomes after it stops
    /// sending.
    pub drain_timeout: Duration,
}

impl PosConfig {
    /// Defaults: small replica limits, in-flight limit = the client's
    /// window, 1 024 open orders and 256 open holds tracked, parking, 5 s
    /// drain.
    pub fn new(consumer: ConsumerConfig, client: ClientConfig, origin: u16) -> PosConfig {
        let in_flight_max = client.window;
        PosConfig {
            consumer,
            client,
            origin,
            limits: ReplicaLimits::small(),
            in_flight_max,
            open_orders_max: 1024,
            open_holds_max: 256,
            idle: Idle::Park,
            drain_timeout: Duration::from_secs(5),
        }
    }

    /// The configuration for `username` on `appliance`: its stream (the
    /// replay feed read with the same login), gateway, and the origin the
    /// configuration gives `username`.
    pub fn for_appliance(
        appliance: &tally_config::ApplianceConfig,
        username: &str,
        password: &str,
    ) -> Result<PosConfig, PosError> {
        let origin = appliance
            .clients
            .iter()
            .find(|client| client.username == username)
            .map(|client| client.client_id)
            .ok_or_else(|| PosError::UnknownUser(username.to_string()))?;
        // The appliance's current session (blank: the stream and Login
        // Accepted name it), a later one than the configured `[stream]
        // session` after rollovers; the till follows the next by itself.
        let mut consumer = ConsumerConfig::for_appliance(appliance, username, password);
        consumer.start_seq = 1;
        consumer.session = tally_wire::mold::Session::BLANK;
        let mut client = ClientConfig::for_appliance(appliance, username, password);
        client.session = tally_wire::mold::Session::BLANK;
        let mut config = PosConfig::new(consumer, client, origin);
        // The state's capacity comes from the configuration's [limits].
        config.limits = ReplicaLimits::from_config(&appliance.limits);
        Ok(config)
    }
}
