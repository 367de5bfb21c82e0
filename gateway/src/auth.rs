//! Password checks off the gateway loop.
//!
//! Verifying an argon2 hash takes tens of milliseconds of deliberate work; the
//! gateway loop must never spend that. The loop hands an [`AuthRequest`] (which
//! connection, which client, the password bytes) to an [`Authenticator`] and
//! picks the [`AuthResult`] up on a later poll.
//!
//! - [`AuthThread`]: the production one. A dedicated thread fed by a bounded
//!   `rtrb` ring, answering on another. The loop never waits for it: when
//!   `auth_queue_depth` logins are already being checked, [`Authenticator::submit`]
//!   hands the request back and the gateway rejects that login `A` (counted).
//! - [`InlineAuthenticator`]: verifies inside `submit` on the caller's thread
//!   and queues the answer. For tests and tools only: it blocks its caller.
//!
//! A login for an unknown username is checked against a dummy hash, so that
//! it takes as long as a wrong password and does not reveal which usernames
//! exist.

use std::collections::VecDeque;
use std::io;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tally_wire::soup;

use tally_config::gateway::{hash_password, verify_password, ClientEntry};

/// A login's password to check (gateway loop → authenticator).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuthRequest {
    /// The gateway's connection slot that sent the login.
    pub slot: u32,
    /// The slot's login ticket: a result whose ticket no longer matches (the
    /// connection closed and the slot was reused) is ignored.
    pub ticket: u32,
    /// Index of the client in the configuration, `None` for an unknown
    /// username (checked against a dummy hash, always fails).
    pub client_index: Option<u16>,
    /// The login's password field, right-padded with spaces.
    pub password: [u8; soup::PASSWORD_SIZE],
}

impl std::fmt::Debug for AuthRequest {
    // Never print a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthRequest")
            .field("slot", &self.slot)
            .field("ticket", &self.ticket)
            .field("client_index", &self.client_index)
            .finish_non_exhaustive()
    }
}

/// The answer to one [`AuthRequest`] (authenticator → gateway loop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthResult {
    /// As in the request.
    pub slot: u32,
    /// As in the request.
    pub ticket: u32,
    /// Whether the password matched the client's hash.
    pub verified: bool,
}

/// Something that checks passwords for the gateway without blocking it (or,
/// for tests, blocking it on purpose).
pub trait Authenticator {
    /// Queues `request`. Hands it back when the queue is full: the gateway
    /// rejects that login rather than wait.
    fn submit(&mut self, request: AuthRequest) -> Result<(), AuthRequest>;

    /// The next answer, if one is ready. Never blocks.
    fn poll_result(&mut self) -> Option<AuthResult>;
}

/// The password hashes, indexed like the configuration's clients, and the
/// dummy hash unknown usernames are checked against.
struct Verifier {
    hashes: Vec<String>,
    dummy_hash: String,
}

impl Verifier {
    fn new(clients: &[ClientEntry]) -> Self {
        Verifier {
            hashes: clients.iter().map(|c| c.password_hash.clone()).collect(),
            // The same default parameters as real hashes: the same cost.
            dummy_hash: hash_password("tally-no-such-user"),
        }
    }

    fn verify(&self, request: &mut AuthRequest) -> AuthResult {
        let password = tally_wire::trim_ascii(&request.password);
        let hash = request
            .client_index
            .and_then(|index| self.hashes.get(usize::from(index)));
        let verified = match hash {
            Some(hash) => verify_password(password, hash),
            None => {
                // Spend the same time as a real check, then fail.
                let _ = verify_password(password, &self.dummy_hash);
                false
            }
        };
        request.password.fill(0);
        AuthResult {
            slot: request.slot,
            ticket: request.ticket,
            verified,
        }
    }
}

/// Checks passwords on its own thread (`tally-gw-auth`). Dropping it stops
/// and joins the thread (after the check in progress, if any).
pub struct AuthThread {
    requests: Option<rtrb::Producer<AuthRequest>>,
    results: rtrb::Consumer<AuthResult>,
    /// Requests submitted and not yet answered; at most `depth`, so the
    /// results ring (also `depth`) can never be full when the thread answers.
    outstanding: usize,
    depth: usize,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AuthThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthThread")
            .field("outstanding", &self.outstanding)
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

impl AuthThread {
    /// How long the idle thread sleeps between looks at its ring; `submit`
    /// wakes it at once, so this only bounds a missed wake-up.
    const IDLE_PARK: Duration = Duration::from_millis(100);

    /// Starts the thread with the clients' hashes; at most `depth` logins are
    /// checked or waiting at once.
    ///
    /// # Panics
    ///
    /// When `depth` is 0 (a configuration bug; `validate` rejects it).
    pub fn spawn(clients: &[ClientEntry], depth: usize) -> io::Result<Self> {
        assert!(depth > 0, "auth queue depth must be at least 1");
        let verifier = Verifier::new(clients);
        let (requests, mut request_rx) = rtrb::RingBuffer::<AuthRequest>::new(depth);
        let (mut result_tx, results) = rtrb::RingBuffer::<AuthResult>::new(depth);
        let worker = thread::Builder::new()
            .name("tally-gw-auth".into())
            .spawn(move || loop {
                match request_rx.pop() {
                    Ok(mut request) => {
                        let result = verifier.verify(&mut request);
                        if result_tx.push(result).is_err() {
                            // Cannot happen: the gateway keeps at most `depth`
                            // requests outstanding. A lost answer would only
                            // leave one login to time out, so do not crash.
                            debug_assert!(false, "auth result ring full");
                        }
                    }
                    Err(_) if request_rx.is_abandoned() => return,
                    Err(_) => thread::park_timeout(Self::IDLE_PARK),
                }
            })?;
        Ok(AuthThread {
            requests: Some(requests),
            results,
            outstanding: 0,
            depth,
            worker: Some(worker),
        })
    }
}

impl Authenticator for AuthThread {
    fn submit(&mut self, request: AuthRequest) -> Result<(), AuthRequest> {
        if self.outstanding >= self.depth {
            return Err(request);
        }
        let Some(requests) = self.requests.as_mut() else {
            return Err(request);
        };
        match requests.push(request) {
            Ok(()) => {
                self.outstanding += 1;
                if let Some(worker) = &self.worker {
                    worker.thread().unpark();
                }
                Ok(())
            }
            Err(rtrb::PushError::Full(request)) => Err(request),
        }
    }

    fn poll_result(&mut self) -> Option<AuthResult> {
        let result = self.results.pop().ok()?;
        self.outstanding -= 1;
        Some(result)
    }
}

impl Drop for AuthThread {
    fn drop(&mut self) {
        // Abandon the ring, wake the thread so it sees that, and wait for it.
        self.requests = None;
        if let Some(worker) = self.worker.take() {
            worker.thread().unpark();
            let _ = worker.join();
        }
    }
}

/// Checks each password inside [`Authenticator::submit`], on the caller's
/// thread, and queues the answer (at most `depth`). Blocks the caller for the
/// length of an argon2 check: for tests and tools, never for a live loop.
pub struct InlineAuthenticator {
    verifier: Verifier,
    results: VecDeque<AuthResult>,
    depth: usize,
}

impl std::fmt::Debug for InlineAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineAuthenticator")
            .field("queued", &self.results.len())
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

impl InlineAuthenticator {
    /// An authenticator for `clients` queuing at most `depth` answers.
    pub fn new(clients: &[ClientEntry], depth: usize) -> Self {
        assert!(depth > 0, "auth queue depth must be at least 1");
        InlineAuthenticator {
            verifier: Verifier::new(clients),
            results: VecDeque::with_capacity(depth),
            depth,
        }
    }
}

impl Authenticator for InlineAuthenticator {
    fn submit(&mut self, mut request: AuthRequest) -> Result<(), AuthRequest> {
        if self.results.len() >= self.depth {
            return Err(request);
        }
        let result = self.verifier.verify(&mut request);
        self.results.push_back(result);
        Ok(())
    }

    fn poll_result(&mut self) -> Option<AuthResult> {
        self.results.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tally_config::gateway::Role;

    fn clients() -> Vec<ClientEntry> {
        vec![ClientEntry {
            username: "till1".into(),
            password_hash: hash_password("pw1"),
            client_id: 1,
            role: Role::Pos,
        }]
    }

    fn request(slot: u32, client_index: Option<u16>, password: &str) -> AuthRequest {
        AuthRequest {
            slot,
            ticket: slot + 100,
            client_index,
            password: tally_wire::pad_ascii(password).unwrap(),
        }
    }

    fn wait_result(auth: &mut impl Authenticator) -> AuthResult {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(result) = auth.poll_result() {
                return result;
            }
            assert!(Instant::now() < deadline, "no auth result within 30 s");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn thread_verifies_right_wrong_and_unknown() {
        let mut auth = AuthThread::spawn(&clients(), 4).unwrap();
        auth.submit(request(1, Some(0), "pw1")).unwrap();
        auth.submit(request(2, Some(0), "pw2")).unwrap();
        auth.submit(request(3, None, "pw1")).unwrap();
        auth.submit(request(4, Some(9), "pw1")).unwrap();
        let mut results: Vec<_> = (0..4).map(|_| wait_result(&mut auth)).collect();
        results.sort_by_key(|r| r.slot);
        let verdicts: Vec<_> = results
            .iter()
            .map(|r| (r.slot, r.ticket, r.verified))
            .collect();
        assert_eq!(
            verdicts,
            [
                (1, 101, true),
                (2, 102, false),
                (3, 103, false),
                (4, 104, false)
            ]
        );
    }

    #[test]
    fn thread_hands_back_requests_beyond_its_depth() {
        let mut auth = AuthThread::spawn(&clients(), 2).unwrap();
        auth.submit(request(1, Some(0), "pw1")).unwrap();
        auth.submit(request(2, Some(0), "pw1")).unwrap();
        let refused = auth.submit(request(3, Some(0), "pw1")).unwrap_err();
        assert_eq!(refused.slot, 3);
        wait_result(&mut auth);
        // One answered: room for one more.
        auth.submit(request(4, Some(0), "pw1")).unwrap();
        wait_result(&mut auth);
        wait_result(&mut auth);
        assert!(auth.poll_result().is_none());
    }

    #[test]
    fn inline_answers_at_once_and_bounds_its_queue() {
        let mut auth = InlineAuthenticator::new(&clients(), 1);
        auth.submit(request(1, Some(0), "pw1")).unwrap();
        assert!(auth.submit(request(2, Some(0), "pw1")).is_err());
        assert_eq!(
            auth.poll_result(),
            Some(AuthResult {
                slot: 1,
                ticket: 101,
                verified: true
            })
        );
        auth.submit(request(2, Some(0), "bad")).unwrap();
        assert!(!auth.poll_result().unwrap().verified);
    }

    #[test]
    fn debug_never_shows_the_password() {
        let text = format!("{:?}", request(1, Some(0), "hunter2"));
        assert!(!text.contains("hunter2"), "{text}");
    }
}
