//! One gateway session per HTTP user that writes: a thread owning the
//! foundation's [`CommandClient`] logged in *as that user* (with the
//! password of the request's HTTP Basic credentials, kept in memory only),
//! so the stream records the user (its `client_id`) as the origin of every
//! command, and the gateway checks the command against the user's role.
//!
//! The thread's round: take the queued jobs, resolve them against its
//! replica, write their idempotency intents (one fsync), submit them
//! pipelined, then collect decisions; decided outcomes are written (one
//! fsync) before their answers are handed back. A job is answered once,
//! through its oneshot; a caller that stopped waiting (the 202 path) finds
//! the outcome in the store on its next retry.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use tally_client::command::{
    CommandClient, CommandConfig, CommandError, Decision, ResolveError, Spec, Verdict,
};
use tally_client::credentials::Credentials;
use tally_config::ApplianceConfig;
use tally_wire::reject_reason;

use crate::idempotency::{Append, IdempotencyStore, KeyRecord};

/// What a write is answered with: status, JSON body, `Location`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WriteAnswer {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) location: Option<String>,
}

impl WriteAnswer {
    pub(crate) fn error(status: u16, message: impl Into<String>) -> WriteAnswer {
        WriteAnswer {
            status,
            body: json!({ "error": message.into() }),
            location: None,
        }
    }
}

/// One write to do.
pub(crate) struct Job {
    pub(crate) key: String,
    /// Method, path and body: what the key must be used with again.
    pub(crate) request: String,
    pub(crate) spec: Spec,
    /// The public id of what it creates or names (`ORIGIN-ID`), for the
    /// answer and `Location`.
    pub(crate) location: String,
    /// Whether acceptance is 201 (creates) or 200.
    pub(crate) creates: bool,
    pub(crate) reply: tokio::sync::oneshot::Sender<WriteAnswer>,
}

/// How long the session thread keeps trying to log in to the next session
/// after a rollover (the appliance starts it within moments).
const NEXT_SESSION_LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the rest of an ended session's stream is read for decisions.
const FINISH_SESSION_TIMEOUT: Duration = Duration::from_secs(5);

/// A session's thread: connect, then rounds until the channel closes. At
/// a session rollover it reads the ended session to its end (answering
/// what it decided), logs in to the next session and sends again what the
/// ended one did not decide (it was not carried out), under the same keys.
pub(crate) fn run(
    appliance: ApplianceConfig,
    credentials: Credentials,
    origin: u16,
    jobs: Receiver<Job>,
    store: Arc<Mutex<IdempotencyStore>>,
) {
    let config = match CommandConfig::for_appliance(&appliance, &credentials) {
        Ok(config) => config,
        Err(error) => return refuse_all(&jobs, 503, &error.to_string()),
    };
    let mut commands = match CommandClient::connect(config.clone()) {
        Ok(commands) => commands,
        Err(error) => return refuse_all(&jobs, unreachable_status(&error), &error.to_string()),
    };
    let mut session = Session {
        origin,
        store,
        waiting: HashMap::new(),
    };
    loop {
        match session.round(&mut commands, &jobs) {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) if error.is_session_end() => {
                let resend = session.finish(&mut commands);
                match next_session_client(&config) {
                    Ok(next) => {
                        tracing::info!(
                            origin,
                            resend = resend.len(),
                            "HTTP write session follows the next session"
                        );
                        commands = next;
                        if let Err(error) = session.submit(&mut commands, resend) {
                            session.fail_all(&error.to_string());
                        }
                    }
                    Err(error) => {
                        session.answer_all(resend, &error.to_string());
                        return refuse_all(&jobs, 503, &error.to_string());
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, origin, "HTTP write session ended");
                session.fail_all(&error.to_string());
                return refuse_all(&jobs, 503, &error.to_string());
            }
        }
    }
}

/// A client of the next session: logs in (blank session: the current one)
/// again until it is up, within [`NEXT_SESSION_LOGIN_TIMEOUT`].
fn next_session_client(config: &CommandConfig) -> Result<CommandClient, CommandError> {
    let deadline = std::time::Instant::now() + NEXT_SESSION_LOGIN_TIMEOUT;
    loop {
        match CommandClient::connect(config.clone()) {
            Ok(commands) => return Ok(commands),
            Err(error) if std::time::Instant::now() >= deadline => return Err(error),
            Err(error) => {
                tracing::debug!(%error, "the next session is not up yet");
                // Retried with a deadline: the appliance starts it shortly.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn unreachable_status(error: &CommandError) -> u16 {
    match error {
        CommandError::LoginRefused { .. } | CommandError::Credentials(_) => 401,
        CommandError::NotPermitted(_) => 403,
        _ => 503,
    }
}

/// Answers every queued job (the session could not start or ended).
fn refuse_all(jobs: &Receiver<Job>, status: u16, message: &str) {
    while let Ok(job) = jobs.try_recv() {
        let _ = job.reply.send(WriteAnswer::error(
            status,
            format!("the gateway session could not be used: {message}"),
        ));
    }
}

/// A submitted job waiting for its decision (with what it was, to send it
/// again in the next session if the ended one did not decide it).
struct Waiting {
    key: String,
    request: String,
    spec: Spec,
    location: String,
    creates: bool,
    reply: tokio::sync::oneshot::Sender<WriteAnswer>,
}

struct Session {
    origin: u16,
    store: Arc<Mutex<IdempotencyStore>>,
    /// By client_seq.
    waiting: HashMap<u32, Waiting>,
}

impl Session {
    /// One round; `Ok(false)` when the channel closed (service stopping).
    fn round(
        &mut self,
        commands: &mut CommandClient,
        jobs: &Receiver<Job>,
    ) -> Result<bool, CommandError> {
        let mut taken = Vec::new();
        if self.waiting.is_empty() {
            // Idle: block on the queue (briefly, so heartbeats go out).
            match jobs.recv_timeout(Duration::from_millis(20)) {
                Ok(job) => taken.push(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(false),
            }
        }
        while taken.len() < 4096 {
            match jobs.try_recv() {
                Ok(job) => taken.push(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if taken.is_empty() && self.waiting.is_empty() => {
                    return Ok(false)
                }
                Err(TryRecvError::Disconnected) => break,
            }
        }
        self.submit(commands, taken)?;
        let mut decided = Vec::new();
        let timeout = if self.waiting.is_empty() {
            Duration::ZERO
        } else {
            Duration::from_micros(200)
        };
        commands.wait(timeout, |decision| decided.push(decision))?;
        self.answer(decided);
        Ok(true)
    }

    /// Resolves `jobs`, writes their intents (one fsync), submits them.
    fn submit(&mut self, commands: &mut CommandClient, jobs: Vec<Job>) -> Result<(), CommandError> {
        let mut ready = Vec::new();
        for job in jobs {
            match commands.resolve(&job.spec) {
                Ok(request) => ready.push((job, request)),
                Err(error) => {
                    let _ = job.reply.send(resolve_answer(&error));
                }
            }
        }
        // Wait for room for all of them (bounded: the window drains as
        // decisions come).
        while !ready.is_empty() && !commands.has_room() {
            let mut decided = Vec::new();
            commands.wait(Duration::from_micros(200), |d| decided.push(d))?;
            self.answer(decided);
        }
        let first = commands.next_client_seq();
        let records: Vec<KeyRecord> = ready
            .iter()
            .enumerate()
            .map(|(i, (job, _))| KeyRecord {
                request: job.request.clone(),
                client_seq: first + i as u32,
                location: job.location.clone(),
                outcome: None,
            })
            .collect();
        let appends: Vec<Append> = ready
            .iter()
            .zip(&records)
            .map(|((job, _), record)| Append::Intent {
                origin: self.origin,
                key: &job.key,
                record,
            })
            .collect();
        let stored = lock(&self.store).append(&appends);
        if let Err(error) = stored {
            for (job, _) in ready {
                let _ = job.reply.send(WriteAnswer::error(503, format!("{error}")));
            }
            return Ok(());
        }
        for ((job, request), record) in ready.into_iter().zip(records) {
            let client_seq = commands.submit(&request)?;
            assert_eq!(client_seq, record.client_seq, "numbering predicted");
            self.waiting.insert(
                client_seq,
                Waiting {
                    key: job.key,
                    request: job.request,
                    spec: job.spec,
                    location: job.location,
                    creates: job.creates,
                    reply: job.reply,
                },
            );
        }
        commands.flush();
        Ok(())
    }

    /// Stores the outcomes of `decided` (one fsync), then answers them.
    fn answer(&mut self, decided: Vec<Decision>) {
        let mut answers = Vec::new();
        for decision in decided {
            if let Some(waiting) = self.waiting.remove(&decision.client_seq) {
                let answer = decision_answer(&decision, &waiting.location, waiting.creates);
                answers.push((waiting, answer));
            }
        }
        if answers.is_empty() {
            return;
        }
        let bodies: Vec<String> = answers.iter().map(|(_, a)| a.body.to_string()).collect();
        let appends: Vec<Append> = answers
            .iter()
            .zip(&bodies)
            .map(|((waiting, answer), body)| Append::Outcome {
                origin: self.origin,
                key: &waiting.key,
                status: answer.status,
                body,
            })
            .collect();
        if let Err(error) = lock(&self.store).append(&appends) {
            tracing::error!(%error, "idempotency outcomes not stored");
            for (waiting, _) in answers {
                let _ = waiting
                    .reply
                    .send(WriteAnswer::error(503, error.to_string()));
            }
            return;
        }
        for (waiting, answer) in answers {
            let _ = waiting.reply.send(answer);
        }
    }

    /// The session ended: reads the rest of it (answering what it
    /// decided); returns the jobs it did not decide, to send again.
    fn finish(&mut self, commands: &mut CommandClient) -> Vec<Job> {
        let mut decided = Vec::new();
        match commands.finish_session(FINISH_SESSION_TIMEOUT, |d| decided.push(d)) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                origin = self.origin,
                "the ended session's stream did not reach its end in time"
            ),
            Err(error) => tracing::warn!(%error, origin = self.origin, "reading the ended session"),
        }
        self.answer(decided);
        self.waiting
            .drain()
            .map(|(_, waiting)| Job {
                key: waiting.key,
                request: waiting.request,
                spec: waiting.spec,
                location: waiting.location,
                creates: waiting.creates,
                reply: waiting.reply,
            })
            .collect()
    }

    /// Answers `jobs` with 503 and `message`.
    fn answer_all(&mut self, jobs: Vec<Job>, message: &str) {
        for job in jobs {
            let _ = job.reply.send(WriteAnswer::error(503, message.to_string()));
        }
    }

    fn fail_all(&mut self, message: &str) {
        for (_, waiting) in self.waiting.drain() {
            let _ = waiting
                .reply
                .send(WriteAnswer::error(503, message.to_string()));
        }
    }
}

fn lock(store: &Mutex<IdempotencyStore>) -> std::sync::MutexGuard<'_, IdempotencyStore> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A SKU, location or quantity that does not resolve: nothing was sent.
fn resolve_answer(error: &CommandError) -> WriteAnswer {
    let status = match error {
        CommandError::Resolve(ResolveError::UnknownSku(_) | ResolveError::UnknownLocation(_)) => {
            404
        }
        CommandError::Resolve(_) => 422,
        CommandError::NotPermitted(_) => 403,
        _ => 503,
    };
    WriteAnswer::error(status, error.to_string())
}

/// The HTTP answer to a decision.
fn decision_answer(decision: &Decision, location: &str, creates: bool) -> WriteAnswer {
    let mut body = serde_json::to_value(decision).unwrap_or_else(|_| json!({}));
    if !location.starts_with("/v1/skus/") {
        body["id"] = location.rsplit('/').next().unwrap_or_default().into();
    }
    let status = match &decision.verdict {
        Verdict::Accepted { .. } if creates => 201,
        Verdict::Accepted { .. } => 200,
        Verdict::Rejected(rejection) => {
            body["error"] = rejection.to_string().into();
            match rejection.reason {
                reject_reason::INSUFFICIENT
                | reject_reason::VERSION_CONFLICT
                | reject_reason::DUPLICATE_ID => 409,
                reject_reason::UNKNOWN_SKU
                | reject_reason::UNKNOWN_LOCATION
                | reject_reason::NO_SUCH => 404,
                reject_reason::NOT_PERMITTED => 403,
                reject_reason::RATE_LIMITED => 503,
                _ => 422,
            }
        }
    };
    WriteAnswer {
        status,
        body,
        location: Some(location.to_string()),
    }
}
