//! `/v1` writes: orders, holds, transfers, recounts, adjustments. Each
//! needs an `Idempotency-Key`; it goes to the caller's own gateway session
//! ([`crate::session`]) and the answer waits for the warehouse's decision
//! up to `decision_timeout` (then 202 with a `Location` to poll; a retry
//! with the same key answers the decision once it is in).
//!
//! Answers: 201 (created) or 200 with the decision and its `seq`; 409
//! insufficient stock, version conflict (with the current version) or a
//! duplicate id; 422 invalid input or a key reused with another request;
//! 404 unknown SKU, location, order or hold; 403 a role that may not send
//! the command; 503 with `Retry-After` when the appliance or the warehouse
//! cannot be reached.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::json;
use tally_client::command::{AdjustReason, Ref, Spec};
use tally_client::credentials::Credentials;
use tally_config::ApplianceConfig;

use crate::answer::Reply;
use crate::auth::basic_credentials;
use crate::idempotency::IdempotencyStore;
use crate::routes::{into_response, Caller};
use crate::server::Shared;
use crate::session::{Job, WriteAnswer};
use crate::views::{parse_public_id, public_id};

/// Where writes go and how they are kept.
#[derive(Clone, Debug)]
pub struct WritesConfig {
    /// The appliance's configuration (gateway, replay feed, clients).
    pub appliance: ApplianceConfig,
    /// Where the idempotency keys are kept (fsync'd).
    pub state_dir: PathBuf,
    /// How long a write waits for its decision before answering 202.
    pub decision_timeout: Duration,
    /// Users with a gateway session at once (one thread each).
    pub sessions_max: usize,
    /// Idempotency keys kept.
    pub keys_max: usize,
}

impl WritesConfig {
    /// 2 s to decide, 16 sessions, 100 000 keys.
    pub fn new(appliance: ApplianceConfig, state_dir: PathBuf) -> WritesConfig {
        WritesConfig {
            appliance,
            state_dir,
            decision_timeout: Duration::from_secs(2),
            sessions_max: 16,
            keys_max: 100_000,
        }
    }
}

/// Ids the service assigns start here (plus the command's client_seq), far
/// from the small ids tills and `tally-ctl` users pick.
const ASSIGNED_ID_BASE: u64 = 1_000_000_000_000;
/// Jobs queued per session.
const SESSION_QUEUE: usize = 8192;
/// Longest `Idempotency-Key`.
const KEY_BYTES_MAX: usize = 64;
/// Largest write body (they are ~100 bytes): the store keeps each key's
/// request, so this bounds its memory to about `keys_max` KiB.
const WRITE_BODY_BYTES_MAX: usize = 1024;

/// The write side: sessions by origin, the key store.
pub(crate) struct Writes {
    config: WritesConfig,
    store: Arc<Mutex<IdempotencyStore>>,
    sessions: Mutex<HashMap<u16, SyncSender<Job>>>,
    /// Ids assigned so far (with [`ASSIGNED_ID_BASE`]).
    next_id: std::sync::atomic::AtomicU64,
}

impl Writes {
    pub(crate) fn open(config: &WritesConfig) -> std::io::Result<Writes> {
        let store = IdempotencyStore::open(&config.state_dir, config.keys_max)?;
        let start = tally_runtime::clock::wall_ns() / 1_000;
        Ok(Writes {
            config: config.clone(),
            store: Arc::new(Mutex::new(store)),
            sessions: Mutex::new(HashMap::new()),
            // Unique across restarts: microseconds since the epoch at start.
            next_id: std::sync::atomic::AtomicU64::new(ASSIGNED_ID_BASE + start),
        })
    }

    /// Closes every session's queue: their threads end after their round.
    pub(crate) fn stop(&self) {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn assign_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues `job` on the session of `origin`, starting it with
    /// `credentials` when there is none (or it ended).
    fn enqueue(&self, origin: u16, credentials: Credentials, job: Job) -> Result<(), WriteAnswer> {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let job = match sessions.get(&origin) {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(_)) => {
                    return Err(WriteAnswer::error(
                        503,
                        "this user's write queue is full; retry",
                    ))
                }
                // The session ended (its login failed, or the gateway
                // went away): a new one for this request.
                Err(TrySendError::Disconnected(job)) => job,
            },
            None => job,
        };
        sessions.remove(&origin);
        if sessions.len() >= self.config.sessions_max {
            return Err(WriteAnswer::error(
                503,
                "too many users writing at once (sessions_max); retry",
            ));
        }
        let (tx, rx) = sync_channel(SESSION_QUEUE);
        let appliance = self.config.appliance.clone();
        let store = Arc::clone(&self.store);
        std::thread::Builder::new()
            .name(format!("http-session-{origin}"))
            .spawn(move || crate::session::run(appliance, credentials, origin, rx, store))
            .map_err(|error| WriteAnswer::error(503, error.to_string()))?;
        tx.try_send(job)
            .map_err(|_| WriteAnswer::error(503, "the session did not take the request"))?;
        sessions.insert(origin, tx);
        Ok(())
    }
}

/// The write routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/orders", post(create))
        .route("/v1/holds", post(create))
        .route("/v1/transfers", post(create))
        .route("/v1/recounts", post(create))
        .route("/v1/adjustments", post(create))
        .route("/v1/holds/{id}/confirm", post(on_hold))
        .route("/v1/holds/{id}/release", post(on_hold))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    sku: String,
    qty: u64,
    location: Option<String>,
    id: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewHold {
    sku: String,
    qty: u64,
    location: String,
    ttl_ms: u32,
    id: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTransfer {
    sku: String,
    qty: u64,
    from: String,
    to: String,
    id: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRecount {
    sku: String,
    location: String,
    on_hand: u64,
    expected_version: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAdjustment {
    sku: String,
    location: String,
    qty: u64,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeOrder {
    qty: u64,
}

/// What a write asks for, parsed: the spec, the path of what it names
/// (for `Location` and the id), and whether it creates.
struct Parsed {
    spec: Spec,
    location: String,
    creates: bool,
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, WriteAnswer> {
    serde_json::from_slice(body)
        .map_err(|error| WriteAnswer::error(422, format!("invalid JSON body: {error}")))
}

/// `POST /v1/{orders,holds,transfers,recounts,adjustments}`.
fn parse_create(
    writes: &Writes,
    origin: u16,
    path: &str,
    body: &[u8],
) -> Result<Parsed, WriteAnswer> {
    let id = |given: Option<u64>| given.unwrap_or_else(|| writes.assign_id());
    let (spec, location) = match path {
        "/v1/orders" => {
            let b: NewOrder = json_body(body)?;
            let id = id(b.id);
            let spec = Spec::Order {
                id,
                sku: Ref(b.sku),
                qty: b.qty,
                location: b.location.map(Ref),
            };
            (spec, format!("/v1/orders/{}", public_id(origin, id)))
        }
        "/v1/holds" => {
            let b: NewHold = json_body(body)?;
            let id = id(b.id);
            let spec = Spec::Hold {
                id,
                sku: Ref(b.sku),
                qty: b.qty,
                location: Ref(b.location),
                ttl_ms: b.ttl_ms,
            };
            (spec, format!("/v1/holds/{}", public_id(origin, id)))
        }
        "/v1/transfers" => {
            let b: NewTransfer = json_body(body)?;
            let id = id(b.id);
            let spec = Spec::Transfer {
                id,
                sku: Ref(b.sku),
                qty: b.qty,
                from: Ref(b.from),
                to: Ref(b.to),
            };
            (spec, format!("/v1/transfers/{}", public_id(origin, id)))
        }
        "/v1/recounts" => {
            let b: NewRecount = json_body(body)?;
            let location = format!("/v1/skus/{}", b.sku);
            let spec = Spec::Recount {
                sku: Ref(b.sku),
                location: Ref(b.location),
                on_hand: b.on_hand,
                expected_version: b.expected_version.unwrap_or(0),
            };
            (spec, location)
        }
        _ => {
            let b: NewAdjustment = json_body(body)?;
            let reason = AdjustReason::parse(&b.reason).ok_or_else(|| {
                WriteAnswer::error(
                    422,
                    format!("reason must be one of {:?}", AdjustReason::NAMES),
                )
            })?;
            let location = format!("/v1/skus/{}", b.sku);
            let spec = Spec::Adjust {
                sku: Ref(b.sku),
                location: Ref(b.location),
                qty: b.qty,
                reason,
            };
            (spec, location)
        }
    };
    Ok(Parsed {
        spec,
        location,
        creates: true,
    })
}

/// The caller's credentials, origin and idempotency key.
struct Writer {
    origin: u16,
    credentials: Credentials,
    key: String,
}

fn writer(
    shared: &Shared,
    caller: Caller,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Writer, WriteAnswer> {
    if body.len() > WRITE_BODY_BYTES_MAX {
        return Err(WriteAnswer::error(
            413,
            format!("a write's body is at most {WRITE_BODY_BYTES_MAX} bytes"),
        ));
    }
    let key = match headers.get("idempotency-key").map(HeaderValue::to_str) {
        None => {
            return Err(WriteAnswer::error(
                400,
                "every write needs an Idempotency-Key header",
            ))
        }
        Some(Ok(key))
            if !key.is_empty()
                && key.len() <= KEY_BYTES_MAX
                && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            key.to_string()
        }
        Some(_) => {
            return Err(WriteAnswer::error(
                422,
                format!("Idempotency-Key must be 1..={KEY_BYTES_MAX} printable ASCII characters"),
            ))
        }
    };
    let (username, password) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(basic_credentials)
        .ok_or_else(|| WriteAnswer::error(401, "credentials required"))?;
    let credentials = Credentials {
        username: String::from_utf8_lossy(&username).into_owned(),
        password: String::from_utf8_lossy(&password).into_owned(),
    };
    Ok(Writer {
        origin: shared.auth.client(caller.client).client_id,
        credentials,
        key,
    })
}

/// Runs a parsed write: the stored answer for a known key, else the
/// session's, waiting up to the decision timeout.
async fn execute(shared: &Shared, writer: Writer, request: String, parsed: Parsed) -> WriteAnswer {
    let Some(writes) = &shared.writes else {
        return not_enabled();
    };
    if let Some(answer) = stored_answer(writes, writer.origin, &writer.key, &request) {
        return answer;
    }
    let (reply, answered) = tokio::sync::oneshot::channel();
    let (origin, key) = (writer.origin, writer.key.clone());
    let job = Job {
        key: writer.key,
        request: request.clone(),
        spec: parsed.spec,
        location: parsed.location,
        creates: parsed.creates,
        reply,
    };
    if let Err(answer) = writes.enqueue(writer.origin, writer.credentials, job) {
        return answer;
    }
    match tokio::time::timeout(writes.config.decision_timeout, answered).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => WriteAnswer::error(503, "the gateway session ended; retry with the same key"),
        // Sent (its intent is stored) but not decided yet: 202. Not even
        // sent (the user's session is still logging in): 503, retry.
        Err(_) => match stored_answer(writes, origin, &key, &request) {
            Some(answer) => answer,
            None => WriteAnswer::error(
                503,
                "the gateway session is not up (logging in or the appliance unreachable); \
                 retry with the same Idempotency-Key",
            ),
        },
    }
}

fn not_enabled() -> WriteAnswer {
    WriteAnswer::error(
        503,
        "writes are not enabled on this service (start it with --state-dir)",
    )
}

fn pending(location: &str) -> WriteAnswer {
    WriteAnswer {
        status: 202,
        body: json!({ "status": "pending", "location": location,
            "detail": "no decision yet; GET the location, or retry with the same Idempotency-Key" }),
        location: Some(location.to_string()),
    }
}

/// The answer a known key gets: the stored one; 422 for another request;
/// 202 while its decision is not in.
fn stored_answer(writes: &Writes, origin: u16, key: &str, request: &str) -> Option<WriteAnswer> {
    let store = writes.store.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(record) = store.get(origin, key) else {
        if !store.has_room() {
            return Some(WriteAnswer::error(
                503,
                "the idempotency store is full (keys_max)",
            ));
        }
        return None;
    };
    if record.request != request {
        return Some(WriteAnswer::error(
            422,
            format!(
                "Idempotency-Key {key:?} was used with another request: {}",
                record.request
            ),
        ));
    }
    Some(match &record.outcome {
        Some((status, body)) => WriteAnswer {
            status: *status,
            body: serde_json::from_str(body).unwrap_or_else(|_| json!({ "body": body })),
            location: Some(record.location.clone()),
        },
        None => pending(&record.location),
    })
}

/// The answer as is: a write's body is the decision (its own `seq` is the
/// deciding event's), the same bytes on every retry, so no freshness
/// figures are added.
fn respond(answer: WriteAnswer) -> Response {
    let mut response = into_response(Reply {
        status: answer.status,
        content_type: "application/json",
        body: answer.body.to_string(),
    });
    if let Some(location) = answer
        .location
        .filter(|_| answer.status == 202 || answer.status == 201)
    {
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
    }
    response
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = async {
        let writes = shared.writes.as_ref().ok_or_else(not_enabled)?;
        let writer = writer(&shared, caller, &headers, &body)?;
        let request = format!("POST {} {}", uri.path(), String::from_utf8_lossy(&body));
        let parsed = parse_create(writes, writer.origin, uri.path(), &body)?;
        Ok(execute(&shared, writer, request, parsed).await)
    }
    .await
    .unwrap_or_else(|answer| answer);
    respond(answer)
}

/// A write on an existing order or hold (`kind`: `orders` or `holds`) of
/// the caller's: its public id resolved against the caller's origin, the
/// command `make` builds from the id and the body.
async fn on_existing(
    shared: &Shared,
    caller: Caller,
    headers: &HeaderMap,
    body: &[u8],
    (method, path, id): (&Method, &str, &str),
    kind: &str,
    make: impl FnOnce(u64, &[u8]) -> Result<Spec, WriteAnswer>,
) -> WriteAnswer {
    let attempt = async {
        let writer = writer(shared, caller, headers, body)?;
        let (origin, own_id) = parse_public_id(id, writer.origin)
            .map_err(|e| WriteAnswer::error(e.status, e.message))?;
        if origin != writer.origin {
            return Err(WriteAnswer::error(
                403,
                format!("only the user who placed it may change one of its {kind}"),
            ));
        }
        let spec = make(own_id, body)?;
        let request = format!("{method} {path} {}", String::from_utf8_lossy(body));
        let location = format!("/v1/{kind}/{}", public_id(origin, own_id));
        let parsed = Parsed {
            spec,
            location,
            creates: false,
        };
        Ok(execute(shared, writer, request, parsed).await)
    };
    attempt.await.unwrap_or_else(|answer| answer)
}

/// `PATCH /v1/orders/{id}` (quantity) and `DELETE /v1/orders/{id}`.
pub(crate) async fn change_order(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    method: Method,
    uri: Uri,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let cancel = method == Method::DELETE;
    let target = (&method, uri.path(), id.as_str());
    let answer = on_existing(
        &shared,
        caller,
        &headers,
        &body,
        target,
        "orders",
        |id, body| {
            if cancel {
                return Ok(Spec::Cancel { id });
            }
            let change: ChangeOrder = json_body(body)?;
            Ok(Spec::Modify {
                id,
                qty: change.qty,
            })
        },
    )
    .await;
    respond(answer)
}

/// `POST /v1/holds/{id}/confirm` and `/release`.
async fn on_hold(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    method: Method,
    uri: Uri,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let confirm = uri.path().ends_with("/confirm");
    let target = (&method, uri.path(), id.as_str());
    let answer = on_existing(
        &shared,
        caller,
        &headers,
        &body,
        target,
        "holds",
        |id, _| {
            Ok(if confirm {
                Spec::Confirm { id }
            } else {
                Spec::Release { id }
            })
        },
    )
    .await;
    respond(answer)
}
