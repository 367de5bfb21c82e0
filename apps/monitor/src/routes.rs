//! The routes: which path goes to which answer, authentication in front
//! of all of them, the request counters, and the pre-`/v1` paths answered
//! as before ([`ReadModel::respond`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tally_client::consumer::monotonic_ns;

use crate::answer::{json_reply, Reply};
use crate::auth::AuthVerdict;
use crate::listener::Peer;
use crate::server::Shared;

/// The dashboard: one static page, no build step.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");
/// The OpenAPI 3 document of `/v1`, written by hand.
pub(crate) const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Who sent a request, once authenticated (an extension on the request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caller {
    /// Index of the configured client.
    pub(crate) client: usize,
}

/// Every route. Authentication and counting wrap them all.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let body_bytes_max = shared.limits.body_bytes_max;
    Router::new()
        .route("/", get(dashboard))
        .route("/v1/openapi.json", get(openapi))
        .merge(crate::v1::routes())
        .route("/v1/events", get(crate::events::events))
        .fallback(legacy)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            authenticate,
        ))
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .with_state(shared)
}

/// Authenticates every request but the public ones, refuses what the
/// caller's role may not do, and counts every answer by status.
async fn authenticate(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let response = if shared.auth.is_public(path) {
        next.run(request).await
    } else {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let verdict = match shared.auth.check_cached(authorization.as_deref()) {
            Some(verdict) => verdict,
            // A cache miss runs argon2 (tens of ms of CPU): off the async
            // workers, at most the source's verification rate.
            None => {
                let checker = Arc::clone(&shared);
                let source = Some(peer.0.ip());
                tokio::task::spawn_blocking(move || {
                    checker.auth.check(authorization.as_deref(), source)
                })
                .await
                .unwrap_or(AuthVerdict::Unauthorized)
            }
        };
        match verdict {
            AuthVerdict::Allowed { client } if may(&shared, client, &request) => {
                request.extensions_mut().insert(Caller { client });
                next.run(request).await
            }
            AuthVerdict::Allowed { .. } => refusal(&shared, AuthVerdict::Forbidden),
            refused => refusal(&shared, refused),
        }
    };
    shared.http.count(response.status().as_u16());
    response
}

/// Reads need a read role ([http] read_roles); `/v1` writes a role that
/// may use the gateway (which then checks the command's type against the
/// role). Other methods elsewhere are answered 405 to readers.
fn may(shared: &Shared, client: usize, request: &Request) -> bool {
    let write = !matches!(*request.method(), Method::GET | Method::HEAD)
        && request.uri().path().starts_with("/v1/");
    if write {
        shared.auth.client(client).role.may_use_gateway()
    } else {
        shared.auth.may_read(client)
    }
}

/// 401 (with `WWW-Authenticate`), 403 or 429 (with `Retry-After`).
fn refusal(shared: &Shared, verdict: AuthVerdict) -> Response {
    let fresh = shared.read().freshness(monotonic_ns());
    let reply = json_reply(
        verdict.status(),
        json!({ "error": verdict.reason() }),
        fresh,
    );
    into_response(reply)
}

/// A [`Reply`] as an axum response, with the headers its status needs.
pub(crate) fn into_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, reply.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    match reply.status {
        401 => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tally-monitor\", charset=\"UTF-8\""),
            );
        }
        429 | 503 => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    response
}

/// A JSON answer with `seq`, `lag` and `stale` added from the model now.
pub(crate) fn json_answer(shared: &Shared, status: u16, body: Value) -> Response {
    let fresh = shared.read().freshness(monotonic_ns());
    into_response(json_reply(status, body, fresh))
}

/// The paths from before `/v1` (`/availability/…`, `/orders/{origin}/{id}`,
/// `/health`, `/metrics`, …), answered exactly as before.
async fn legacy(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    let url = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or_else(|| uri.path());
    let reply = shared
        .read()
        .respond(method.as_str(), url, monotonic_ns(), &shared.http);
    let mut response = into_response(reply);
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
    }
    response
}

/// A `/v1` path asked with a method it does not take.
async fn method_not_allowed(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
) -> Response {
    json_answer(
        &shared,
        405,
        json!({ "error": format!("{method} is not allowed on {} (see /v1/openapi.json)", uri.path()) }),
    )
}

/// `GET /`: the dashboard page.
async fn dashboard() -> Response {
    let mut response = Response::new(Body::from(DASHBOARD_HTML));
    let headers: &mut HeaderMap = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /v1/openapi.json`.
async fn openapi() -> Response {
    let mut response = Response::new(Body::from(OPENAPI_JSON));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
