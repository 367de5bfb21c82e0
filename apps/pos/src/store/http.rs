//! The store node's HTTP port: the checkouts' API.
//!
//! | method and path | body | does |
//! |---|---|---|
//! | `GET /v1/skus/{sku}` | | this location's stock of one SKU |
//! | `GET /v1/skus?after=N&limit=N` | | this location's stock, a page of SKUs in directory order (`next` is the following page's `after`; `limit` at most 1 000) |
//! | `POST /v1/orders` | `{"sku": "MUG", "qty": 2}` | sells: an order at this location |
//! | `POST /v1/holds` | `{"sku": "MUG", "qty": 1, "ttl_ms": 60000}` | holds stock for a while |
//! | `POST /v1/holds/{id}/confirm`, `…/release` | | the hold becomes a sale, or is released |
//! | `POST /v1/returns` | `{"order_id": 17, "qty": 1}` | takes back units of one of this store's orders |
//! | `GET /health` | | 200 while linked to the appliance, else 503 and why |
//! | `GET /metrics` | | the node's counters, Prometheus text |
//!
//! A `POST` may carry `Idempotency-Key: KEY` (1 to 64 printable ASCII
//! characters): a retry with the same key and request gets the first
//! answer (202 while it awaits its decision), nothing sent twice; the same
//! key with another request is refused (422). Keys live in the node's
//! memory (the newest 65 536 decided ones).
//!
//! A body may name `"location"`: it must be this node's. Every answer is
//! JSON with `message` (a sentence), `seq`, `lag`, `stale` and `link`;
//! refusals add `error`. Bodies over `body_bytes_max` (413), bodies that
//! are not the JSON expected (400, with the parser's words), another
//! location (403), an unknown SKU (404), an unknown path (404) or method
//! (405) are refused with their reason and counted in
//! `store.requests_refused`.
//!
//! Built on axum over tokio, the HTTP service's stack: a small runtime
//! (`workers` threads) parses each request and hands it to the node as a
//! [`Job`], then waits for the node's [`Answer`] on a blocking-pool thread.
//! Every accepted connection gets `TCP_NODELAY`, so answers are not held
//! back by Nagle's algorithm.

use std::net::SocketAddr;
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use serde::Deserialize;
use serde_json::json;
use tally_client::metrics::MetricSet;
use tally_runtime::counters::Counter;

use super::{Answer, Ask, IdempotencyKey, Job, JobSender, IDEMPOTENCY_KEY_BYTES_MAX};

/// How the HTTP port is set up.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Runtime worker threads.
    pub workers: usize,
    /// Largest request body accepted.
    pub body_bytes_max: usize,
    /// How long a request waits for the node's answer (a sale waits for
    /// its decision; give the node's decision timeout plus a margin).
    pub answer_timeout: Duration,
    /// This node's location name.
    pub location: String,
}

/// The running HTTP port.
pub struct HttpFront {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    local_addr: SocketAddr,
}

/// What every request handler shares.
struct Worker {
    config: HttpConfig,
    jobs: JobSender,
    metrics: MetricSet,
    refused: Counter,
    busy: Counter,
}

impl HttpFront {
    /// Binds `config.listen` and serves on a runtime of its own. `refused`
    /// and `busy` count what the HTTP side refuses itself.
    pub fn start(
        config: HttpConfig,
        jobs: JobSender,
        metrics: MetricSet,
        refused: Counter,
        busy: Counter,
    ) -> std::io::Result<HttpFront> {
        let listener = std::net::TcpListener::bind(config.listen).map_err(|e| {
            std::io::Error::new(e.kind(), format!("the HTTP port {}: {e}", config.listen))
        })?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.workers.max(1))
            .max_blocking_threads(64)
            .thread_name("store-http")
            .enable_all()
            .build()?;
        let worker = Arc::new(Worker {
            config,
            jobs,
            metrics,
            refused,
            busy,
        });
        let app = axum::Router::new().fallback(handle).with_state(worker);
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        runtime.spawn(async move {
            let listener = listener.tap_io(|tcp| {
                // Best effort: a socket that refuses it still works.
                let _ = tcp.set_nodelay(true);
            });
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the HTTP port stopped");
            }
        });
        Ok(HttpFront {
            runtime: Some(runtime),
            shutdown: Some(shutdown),
            local_addr,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting; requests in progress get up to a second.
    pub fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// `POST /v1/orders` and `POST /v1/holds`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaleBody {
    sku: String,
    qty: u32,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    ttl_ms: Option<u32>,
}

/// `POST /v1/returns`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReturnBody {
    order_id: u64,
    qty: u32,
    #[serde(default)]
    location: Option<String>,
}

/// A refusal the worker gives itself, before the node sees anything.
fn refuse(status: u16, error: &str, message: String) -> Answer {
    Answer {
        status,
        body: json!({ "error": error, "message": message }),
        retry_after_s: (status == 503).then_some(1),
    }
}

/// Every request: routed, checked, and answered by the node.
async fn handle(
    State(worker): State<Arc<Worker>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method == Method::GET && uri.path() == "/metrics" {
        let text = worker.metrics.text();
        let kind = HeaderValue::from_static("text/plain; version=0.0.4");
        return ([(header::CONTENT_TYPE, kind)], text).into_response();
    }
    let bytes = match read_body(&worker.config, &headers, body).await {
        Ok(bytes) => bytes,
        Err(answer) => {
            worker.refused.add_shared(1);
            return respond(&answer);
        }
    };
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    let key = match idempotency_key(&method, path, &headers, &bytes) {
        Ok(key) => key,
        Err(answer) => {
            worker.refused.add_shared(1);
            return respond(&answer);
        }
    };
    let answer = match worker.ask_for(&method, path, query, &bytes) {
        Ok(ask) => worker.ask_node(ask, key).await,
        Err(answer) => {
            worker.refused.add_shared(1);
            answer
        }
    };
    respond(&answer)
}

/// The body, at most `body_bytes_max` bytes (a declared length over it is
/// refused before a byte is read).
async fn read_body(
    config: &HttpConfig,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<u8>, Answer> {
    let limit = config.body_bytes_max;
    let too_big = || {
        refuse(
            413,
            "body_too_large",
            format!("the body is over {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_big());
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(_) => Err(too_big()),
    }
}

impl Worker {
    /// The ask a request stands for, or its refusal.
    fn ask_for(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Result<Ask, Answer> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let get = *method == Method::GET;
        let post = *method == Method::POST;
        match segments.as_slice() {
            ["health"] if get => Ok(Ask::Health),
            ["v1", "skus", sku] if get => Ok(Ask::Stock {
                sku: (*sku).to_string(),
            }),
            ["v1", "skus"] if get => page(query),
            ["v1", "orders"] if post => {
                let body: SaleBody = parse(body)?;
                self.check_location(body.location.as_deref())?;
                if body.ttl_ms.is_some() {
                    return Err(refuse(400, "bad_json", "an order has no ttl_ms".into()));
                }
                Ok(Ask::Sale {
                    sku: body.sku,
                    qty: body.qty,
                })
            }
            ["v1", "holds"] if post => {
                let body: SaleBody = parse(body)?;
                self.check_location(body.location.as_deref())?;
                let Some(ttl_ms) = body.ttl_ms else {
                    return Err(refuse(400, "bad_json", "a hold needs ttl_ms".into()));
                };
                Ok(Ask::Hold {
                    sku: body.sku,
                    qty: body.qty,
                    ttl_ms,
                })
            }
            ["v1", "holds", id, action @ ("confirm" | "release")] if post => {
                let hold_id = id
                    .parse::<u64>()
                    .map_err(|_| refuse(404, "no_such_hold", format!("{id:?} is not a hold id")))?;
                Ok(if *action == "confirm" {
                    Ask::Confirm { hold_id }
                } else {
                    Ask::Release { hold_id }
                })
            }
            ["v1", "returns"] if post => {
                let body: ReturnBody = parse(body)?;
                self.check_location(body.location.as_deref())?;
                Ok(Ask::Return {
                    order_id: body.order_id,
                    qty: body.qty,
                })
            }
            ["health" | "metrics"] | ["v1", "skus", ..] => Err(refuse(
                405,
                "method_not_allowed",
                format!("{method} is not served here: GET only"),
            )),
            ["v1", "orders" | "holds" | "returns", ..] => Err(refuse(
                405,
                "method_not_allowed",
                format!("{method} is not served here: POST only"),
            )),
            _ => Err(refuse(
                404,
                "not_found",
                format!("no such path {path:?} (see the README's store node API)"),
            )),
        }
    }

    fn check_location(&self, location: Option<&str>) -> Result<(), Answer> {
        match location {
            Some(location) if location != self.config.location => Err(refuse(
                403,
                "wrong_location",
                format!(
                    "this store node serves {}; a sale for {location} goes to that store's node",
                    self.config.location
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Hands `ask` to the node and waits (off the runtime's workers) for
    /// its answer.
    async fn ask_node(&self, ask: Ask, key: Option<IdempotencyKey>) -> Answer {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        match self.jobs.try_send(Job { ask, reply, key }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.busy.add_shared(1);
                let message = "the store node is busy: retry in a moment".to_string();
                return refuse(503, "busy", message);
            }
            Err(TrySendError::Disconnected(_)) => {
                return refuse(503, "stopping", "the store node is stopping".to_string());
            }
        }
        let timeout = self.config.answer_timeout;
        let waited = tokio::task::spawn_blocking(move || answer.recv_timeout(timeout)).await;
        match waited {
            Ok(Ok(answer)) => answer,
            _ => refuse(
                504,
                "no_answer",
                "the store node did not answer in time".to_string(),
            ),
        }
    }
}

/// A write's `Idempotency-Key` (optional; 1 to 64 printable ASCII
/// characters), with the request it is good for.
fn idempotency_key(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<IdempotencyKey>, Answer> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| {
            (1..=IDEMPOTENCY_KEY_BYTES_MAX).contains(&key.len())
                && key.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            refuse(
                400,
                "bad_idempotency_key",
                format!(
                    "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} printable ASCII \
                     characters without spaces"
                ),
            )
        })?;
    if *method != Method::POST {
        return Ok(None);
    }
    Ok(Some(IdempotencyKey {
        key: key.to_string(),
        request: format!("{method} {path} {}", String::from_utf8_lossy(body)),
    }))
}

/// A JSON body of type `T`, or a 400 with the parser's words.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(body).map_err(|e| {
        refuse(
            400,
            "bad_json",
            format!("the body is not the JSON expected: {e}"),
        )
    })
}

/// `?after=N&limit=N`.
fn page(query: &str) -> Result<Ask, Answer> {
    let (mut after, mut limit) = (0u32, 100u32);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = value.parse::<u32>().map_err(|_| {
            refuse(
                400,
                "bad_query",
                format!("{key} must be a whole number, not {value:?}"),
            )
        })?;
        match key {
            "after" => after = number,
            "limit" => limit = number,
            _ => {
                return Err(refuse(
                    400,
                    "bad_query",
                    format!("unknown parameter {key:?} (after, limit)"),
                ))
            }
        }
    }
    Ok(Ask::StockPage { after, limit })
}

fn respond(answer: &Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(answer.body.clone())).into_response();
    if let Some(seconds) = answer.retry_after_s {
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}
