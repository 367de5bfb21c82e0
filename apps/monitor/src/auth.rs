use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tally_config::gateway::{ClientEntry, Role};
use tally_config::ApplianceConfig;

// ---------------------------------------------------------------------------
// HTTP authentication.

/// Who may read the monitor over HTTP. See the module docs ("Who may
/// read").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAuthConfig {
    /// The clients whose credentials are checked (username, argon2 hash,
    /// role), as in the appliance's `[[clients]]`.
    pub clients: Vec<ClientEntry>,
    /// Roles that may read; a verified client with another role gets 403.
    pub read_roles: Vec<Role>,
    /// Whether `/metrics` answers without credentials.
    pub metrics_public: bool,
    /// Verified credentials remembered (1..=65 536).
    pub cache_entries: usize,
    /// How long one is remembered.
    pub cache_ttl: Duration,
    /// argon2 verifications one source address may cause per second...
    pub verifications_per_sec_per_source: u32,
    /// ...and back to back.
    pub verification_burst: u32,
}

impl HttpAuthConfig {
    /// Nobody may read: every endpoint but `/health` and `/ready` answers 401.
    pub fn deny_all() -> HttpAuthConfig {
        HttpAuthConfig {
            clients: Vec::new(),
            read_roles: vec![Role::Reader, Role::Ops, Role::Authority],
            metrics_public: false,
            cache_entries: 256,
            cache_ttl: Duration::from_secs(600),
            verifications_per_sec_per_source: 2,
            verification_burst: 5,
        }
    }

    /// The appliance's `[[clients]]` and `[http]` section.
    pub fn from_appliance(config: &ApplianceConfig) -> Result<HttpAuthConfig, String> {
        let http = &config.http;
        Ok(HttpAuthConfig {
            clients: config.gateway_config().clients,
            read_roles: http.roles().map_err(|error| error.to_string())?,
            metrics_public: http.metrics_public,
            cache_entries: http.credential_cache_entries,
            cache_ttl: Duration::from_millis(http.credential_cache_ttl_ms),
            verifications_per_sec_per_source: http.verifications_per_sec_per_source,
            verification_burst: http.verification_burst,
        })
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(1..=65_536).contains(&self.cache_entries) {
            return Err("auth cache_entries must be 1..=65536".into());
        }
        if self.verifications_per_sec_per_source == 0 || self.verification_burst == 0 {
            return Err("auth verification rate and burst must be at least 1".into());
        }
        Ok(())
    }
}

/// What [`HttpAuth::check`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthVerdict {
    /// Credentials verified: the index of the configured client.
    Allowed { client: usize },
    /// No credentials, malformed ones, or wrong ones: 401.
    Unauthorized,
    /// Verified, but the role may not read: 403.
    Forbidden,
    /// The source caused too many verifications: 429.
    Throttled,
}

impl AuthVerdict {
    pub(crate) fn status(self) -> u16 {
        match self {
            AuthVerdict::Allowed { .. } => 200,
            AuthVerdict::Unauthorized => 401,
            AuthVerdict::Forbidden => 403,
            AuthVerdict::Throttled => 429,
        }
    }

    pub(crate) fn reason(self) -> &'static str {
        match self {
            AuthVerdict::Allowed { .. } => "",
            AuthVerdict::Unauthorized => {
                "credentials required: HTTP Basic with a configured client's username and password"
            }
            AuthVerdict::Forbidden => {
                "this client's role may not do this (see [http] read_roles and the gateway's roles)"
            }
            AuthVerdict::Throttled => {
                "too many password checks from this address; retry in a second"
            }
        }
    }
}

/// Longest `Authorization` header value looked at.
pub(crate) const AUTHORIZATION_BYTES_MAX: usize = 512;
/// Cells of the per-source verification throttle.
pub(crate) const THROTTLE_CELLS: usize = 4096;

/// A parsed `Authorization: Basic` value.
struct Credential {
    client: Option<usize>,
    tag: u128,
    password: Vec<u8>,
}

/// One remembered verified credential.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CachedCredential {
    /// Keyed hash of (username, password).
    pub(crate) tag: u128,
    pub(crate) client: u16,
    pub(crate) expires: Instant,
}

/// A per-source token bucket cell (sources hash into a fixed table; never
/// evicted, so churning through addresses resets nobody's bucket).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ThrottleCell {
    pub(crate) tokens_nano: u64,
    pub(crate) refilled_ns: u64,
}

/// The monitor's credential checker, shared by the HTTP workers.
pub(crate) struct HttpAuth {
    pub(crate) config: HttpAuthConfig,
    /// argon2 hash of nothing anyone knows: an unknown username costs the
    /// same as a wrong password.
    pub(crate) dummy_hash: String,
    /// Keys of the credential tag (two SipHash keys → 128 bits).
    pub(crate) tag_keys: [std::collections::hash_map::RandomState; 2],
    pub(crate) cache: Mutex<Vec<CachedCredential>>,
    pub(crate) throttle: Mutex<Box<[ThrottleCell]>>,
    pub(crate) throttle_key: std::collections::hash_map::RandomState,
    pub(crate) started: Instant,
}

impl HttpAuth {
    pub(crate) fn new(config: HttpAuthConfig) -> HttpAuth {
        let burst_nano = u64::from(config.verification_burst) * 1_000_000_000;
        HttpAuth {
            dummy_hash: tally_config::gateway::hash_password("tally-monitor-no-such-user"),
            tag_keys: Default::default(),
            cache: Mutex::new(Vec::with_capacity(config.cache_entries)),
            throttle: Mutex::new(
                vec![
                    ThrottleCell {
                        tokens_nano: burst_nano,
                        refilled_ns: 0,
                    };
                    THROTTLE_CELLS
                ]
                .into_boxed_slice(),
            ),
            throttle_key: Default::default(),
            started: Instant::now(),
            config,
        }
    }

    /// Whether `path` answers without credentials.
    pub(crate) fn is_public(&self, path: &str) -> bool {
        path == "/health" || path == "/ready" || (path == "/metrics" && self.config.metrics_public)
    }

    /// The client `authorization` names when its credential was verified
    /// recently (no argon2 run): `Some(Allowed)`; `None` when it must be
    /// verified ([`Self::check`]).
    pub(crate) fn check_cached(&self, authorization: Option<&str>) -> Option<AuthVerdict> {
        let Some(credential) = self.credential(authorization) else {
            return Some(AuthVerdict::Unauthorized);
        };
        let client = credential.client?;
        let now = Instant::now();
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let hit = cache.iter().any(|entry| {
            entry.tag == credential.tag
                && usize::from(entry.client) == client
                && entry.expires > now
        });
        hit.then_some(AuthVerdict::Allowed { client })
    }

    /// Who `authorization` names: `Allowed` with the client's index once
    /// its password is verified (one argon2 run on a cache miss, at most
    /// the source's verification rate: `Throttled` beyond it). The role is
    /// not looked at here ([`Self::may_read`]).
    pub(crate) fn check(
        &self,
        authorization: Option<&str>,
        source: Option<std::net::IpAddr>,
    ) -> AuthVerdict {
        if let Some(verdict) = self.check_cached(authorization) {
            return verdict;
        }
        let Some(credential) = self.credential(authorization) else {
            return AuthVerdict::Unauthorized;
        };
        if !self.admit_verification(source) {
            return AuthVerdict::Throttled;
        }
        let verified = match credential.client {
            Some(index) => tally_config::gateway::verify_password(
                &credential.password,
                &self.config.clients[index].password_hash,
            ),
            None => {
                let _ =
                    tally_config::gateway::verify_password(&credential.password, &self.dummy_hash);
                false
            }
        };
        let (Some(client), true) = (credential.client, verified) else {
            return AuthVerdict::Unauthorized;
        };
        self.remember(credential.tag, client, Instant::now());
        AuthVerdict::Allowed { client }
    }

    /// The parsed `Authorization` value: the client it names (if any), the
    /// keyed tag of (username, password), the password.
    fn credential(&self, authorization: Option<&str>) -> Option<Credential> {
        let (username, password) = authorization.and_then(basic_credentials)?;
        let client = self
            .config
            .clients
            .iter()
            .position(|client| client.username.as_bytes() == username.as_slice());
        let tag = {
            use std::hash::BuildHasher;
            let [a, b] = &self.tag_keys;
            let key = (username.as_slice(), password.as_slice());
            (u128::from(a.hash_one(key)) << 64) | u128::from(b.hash_one(key))
        };
        Some(Credential {
            client,
            tag,
            password,
        })
    }

    /// Whether client `client` (an index of the configured clients) may
    /// read.
    pub(crate) fn may_read(&self, client: usize) -> bool {
        self.config
            .read_roles
            .contains(&self.config.clients[client].role)
    }

    /// The configured client at `index`.
    pub(crate) fn client(&self, index: usize) -> &ClientEntry {
        &self.config.clients[index]
    }

    /// Caches a verified credential, replacing an expired or the oldest
    /// entry when full.
    pub(crate) fn remember(&self, tag: u128, client: usize, now: Instant) {
        let entry = CachedCredential {
            tag,
            client: client as u16,
            expires: now + self.config.cache_ttl,
        };
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.iter().any(|cached| cached.tag == tag) {
            return;
        }
        if cache.len() < self.config.cache_entries {
            cache.push(entry);
        } else if let Some(oldest) = cache.iter_mut().min_by_key(|cached| cached.expires) {
            *oldest = entry;
        }
    }

    /// Takes a verification token from `source`'s bucket.
    pub(crate) fn admit_verification(&self, source: Option<std::net::IpAddr>) -> bool {
        use std::hash::BuildHasher;
        let cell = match source {
            Some(ip) => self.throttle_key.hash_one(ip) as usize % THROTTLE_CELLS,
            None => 0,
        };
        let now_ns = self.started.elapsed().as_nanos() as u64;
        let rate = u128::from(self.config.verifications_per_sec_per_source);
        let burst_nano = u64::from(self.config.verification_burst) * 1_000_000_000;
        let mut cells = self.throttle.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = &mut cells[cell];
        let elapsed = u128::from(now_ns.saturating_sub(bucket.refilled_ns));
        bucket.tokens_nano =
            (u128::from(bucket.tokens_nano) + elapsed * rate).min(u128::from(burst_nano)) as u64;
        bucket.refilled_ns = bucket.refilled_ns.max(now_ns);
        if bucket.tokens_nano >= 1_000_000_000 {
            bucket.tokens_nano -= 1_000_000_000;
            true
        } else {
            false
        }
    }
}

/// `(username, password)` of an `Authorization: Basic …` value.
pub(crate) fn basic_credentials(value: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    if value.len() > AUTHORIZATION_BYTES_MAX {
        return None;
    }
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(encoded.trim())?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

/// Standard base64 with padding (RFC 4648 §4), as HTTP Basic uses.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, chunk) in bytes.chunks(4).enumerate() {
        let last = index + 1 == bytes.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut word = 0u32;
        for &c in &chunk[..4 - pad] {
            word = (word << 6) | value(c)?;
        }
        word <<= 6 * pad as u32;
        let group = [(word >> 16) as u8, (word >> 8) as u8, word as u8];
        out.extend_from_slice(&group[..3 - pad]);
    }
    Some(out)
}

/// Standard base64 with padding: for clients and tests building an
/// `Authorization: Basic` header.
pub fn base64_encode(bytes: &[u8]) -> String {
    pub(crate) const ALPHABET: &[u8; 64] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for position in 0..4 {
            if position <= chunk.len() {
                out.push(ALPHABET[(word >> (18 - 6 * position)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `Authorization` header value for `username` and `password`.
pub fn basic_authorization(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{username}:{password}").as_bytes())
    )
}
