//! Validation: every value checked once at load, section by section; the
//! error names the first bad key.

use std::net::SocketAddr;

use super::{bad, ApplianceConfig, ConfigError, REPLY_BURST_BYTES_MAX};

impl ApplianceConfig {
    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.session()?;
        self.check_roles()?;
        self.check_stream()?;
        self.check_gateway()?;
        self.check_retransmit()?;
        self.check_replay()?;
        self.check_http()?;
        self.check_journal_and_loops()?;
        self.check_listens()?;
        Ok(())
    }

    /// The stream: a multicast group, a port, a datagram size that fits the largest message, a heartbeat.
    fn check_stream(&self) -> Result<(), ConfigError> {
        let stream = &self.stream;
        if !stream.group.is_multicast() {
            return Err(bad(
                "stream.group",
                format!("{} is not a multicast address", stream.group),
            ));
        }
        if stream.port == 0 {
            return Err(bad("stream.port", "must not be 0"));
        }
        let smallest = tally_wire::mold::MoldHeader::SIZE + 2 + tally_wire::MAX_MESSAGE_SIZE;
        if !(smallest + 1..=65_507).contains(&stream.payload_bytes_max) {
            return Err(bad(
                "stream.payload_bytes_max",
                format!("must be between {} and 65507 bytes", smallest + 1),
            ));
        }
        if stream.heartbeat_interval_ms == 0 {
            return Err(bad("stream.heartbeat_interval_ms", "must be at least 1"));
        }
        Ok(())
    }

    /// The gateway section and the clients it lets in.
    fn check_gateway(&self) -> Result<(), ConfigError> {
        if self.gateway.ring_messages < 2 {
            return Err(bad("gateway.ring_messages", "must be at least 2"));
        }
        self.gateway_config().validate().map_err(|error| {
            let key = if error.field.starts_with("clients") {
                error.field.clone()
            } else {
                format!("gateway.{}", error.field)
            };
            bad(key, error.reason)
        })?;
        Ok(())
    }

    /// The retransmit server: request and reply budgets, the allow-list.
    fn check_retransmit(&self) -> Result<(), ConfigError> {
        if self.retransmit.messages_per_request_max == 0 {
            return Err(bad(
                "retransmit.messages_per_request_max",
                "must be at least 1",
            ));
        }
        if self.retransmit.requests_per_sec_per_requester == 0 {
            return Err(bad(
                "retransmit.requests_per_sec_per_requester",
                "must be at least 1",
            ));
        }
        if self.retransmit.request_burst == 0 {
            return Err(bad("retransmit.request_burst", "must be at least 1"));
        }
        if self.retransmit.requesters_max == 0 {
            return Err(bad("retransmit.requesters_max", "must be at least 1"));
        }
        if self.retransmit.requesters_max > 1 << 24 {
            return Err(bad("retransmit.requesters_max", "must be at most 16777216"));
        }
        self.retransmit_allow()?;
        for (key, value) in [
            (
                "retransmit.reply_bytes_per_sec_per_source",
                self.retransmit.reply_bytes_per_sec_per_source,
            ),
            (
                "retransmit.reply_bytes_per_sec",
                self.retransmit.reply_bytes_per_sec,
            ),
        ] {
            if value == 0 {
                return Err(bad(key, "must be at least 1"));
            }
        }
        let smallest_reply =
            (tally_wire::mold::MoldHeader::SIZE + 2 + tally_wire::MAX_MESSAGE_SIZE) as u64;
        for (key, value) in [
            (
                "retransmit.reply_burst_bytes_per_source",
                self.retransmit.reply_burst_bytes_per_source,
            ),
            (
                "retransmit.reply_burst_bytes",
                self.retransmit.reply_burst_bytes,
            ),
        ] {
            if value < smallest_reply {
                return Err(bad(
                    key,
                    format!("must be at least {smallest_reply} (one reply of the largest message)"),
                ));
            }
            if value > REPLY_BURST_BYTES_MAX {
                return Err(bad(key, "must be at most 8589934592 (8 GiB)"));
            }
        }
        Ok(())
    }

    /// The replay feed's limits.
    fn check_replay(&self) -> Result<(), ConfigError> {
        if self.replay.clients_max == 0 {
            return Err(bad("replay.clients_max", "must be at least 1"));
        }
        if self.replay.sessions_per_client_max == 0 {
            return Err(bad("replay.sessions_per_client_max", "must be at least 1"));
        }
        if self.replay.login_timeout_ms == 0 {
            return Err(bad("replay.login_timeout_ms", "must be at least 1"));
        }
        if self.replay.logins_pending_per_source_max == 0 {
            return Err(bad(
                "replay.logins_pending_per_source_max",
                "must be at least 1",
            ));
        }
        if self.replay.stall_timeout_ms == 0 {
            return Err(bad("replay.stall_timeout_ms", "must be at least 1"));
        }
        if self.replay.heartbeat_timeout_min_ms < 1000
            || self.replay.heartbeat_timeout_min_ms > self.replay.heartbeat_timeout_max_ms
        {
            return Err(bad(
                "replay.heartbeat_timeout_min_ms",
                "must be at least 1000 and at most replay.heartbeat_timeout_max_ms",
            ));
        }
        Ok(())
    }

    /// The HTTP read side: roles and the credential cache.
    fn check_http(&self) -> Result<(), ConfigError> {
        self.http.roles()?;
        if self.http.credential_cache_entries == 0 || self.http.credential_cache_entries > 65_536 {
            return Err(bad("http.credential_cache_entries", "must be in 1..=65536"));
        }
        if self.http.verifications_per_sec_per_source == 0 {
            return Err(bad(
                "http.verifications_per_sec_per_source",
                "must be at least 1",
            ));
        }
        if self.http.verification_burst == 0 {
            return Err(bad("http.verification_burst", "must be at least 1"));
        }
        Ok(())
    }

    /// The replay send buffer, the journal, the threading mode and every loop's placement.
    fn check_journal_and_loops(&self) -> Result<(), ConfigError> {
        if self.replay.send_buffer_bytes < 64 * 1024 {
            return Err(bad("replay.send_buffer_bytes", "must be at least 65536"));
        }
        self.fsync_policy()?;
        if self.journal.retention_messages == 0 {
            return Err(bad("journal.retention_messages", "must be at least 1"));
        }
        self.threading()?;
        for (name, _) in self.loop_configs() {
            self.placement(name)?;
        }
        Ok(())
    }

    /// No two servers on one address.
    fn check_listens(&self) -> Result<(), ConfigError> {
        let listens = [
            ("gateway.listen", self.gateway.listen),
            ("retransmit.listen", SocketAddr::V4(self.retransmit.listen)),
            ("replay.listen", self.replay.listen),
        ];
        for (index, (key, addr)) in listens.iter().enumerate() {
            for (other_key, other) in &listens[..index] {
                if addr == other && addr.port() != 0 {
                    return Err(bad(*key, format!("{addr} is also {other_key}")));
                }
            }
        }
        Ok(())
    }
}
