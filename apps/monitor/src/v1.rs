//! The `/v1` routes: reads here, writes in [`crate::writes`].

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::Value;
use tally_client::consumer::monotonic_ns;

use crate::answer::{error_reply, json_reply, ApiError};
use crate::routes::{into_response, Caller};
use crate::server::Shared;
use crate::views::parse_public_id;

/// The `/v1` routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    crate::writes::routes()
        .route("/v1/skus", get(skus))
        .route("/v1/skus/{sku}", get(sku))
        .route(
            "/v1/orders/{id}",
            get(order)
                .patch(crate::writes::change_order)
                .delete(crate::writes::change_order),
        )
        .route("/v1/holds/{id}", get(hold))
        .route("/v1/transfers/{id}", get(transfer))
}

/// Answers with what `view` makes of the model, with seq, lag and stale.
fn answer(
    shared: &Shared,
    view: impl FnOnce(&crate::model::ReadModel) -> Result<Value, ApiError>,
) -> Response {
    let model = shared.read();
    let fresh = model.freshness(monotonic_ns());
    let reply = match view(&model) {
        Ok(body) => json_reply(200, body, fresh),
        Err(error) => error_reply(error, fresh),
    };
    drop(model);
    into_response(reply)
}

/// The client id (origin) of the caller.
fn origin(shared: &Shared, caller: Caller) -> u16 {
    shared.auth.client(caller.client).client_id
}

async fn skus(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    answer(&shared, |model| {
        model.v1_skus(query.as_deref().unwrap_or(""))
    })
}

async fn sku(
    State(shared): State<Arc<Shared>>,
    Path(sku): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    answer(&shared, |model| {
        model.v1_sku(&sku, query.as_deref().unwrap_or(""))
    })
}

/// A read of one order, hold or transfer by public id (`ORIGIN-ID`, or
/// `ID` for the caller's own).
fn by_public_id(
    shared: &Shared,
    caller: Caller,
    id: &str,
    view: impl FnOnce(&crate::model::ReadModel, u16, u64) -> Result<Value, ApiError>,
) -> Response {
    let origin = origin(shared, caller);
    answer(shared, |model| {
        let (origin, own_id) = parse_public_id(id, origin)?;
        let mut body = view(model, origin, own_id)?;
        body["id"] = crate::views::public_id(origin, own_id).into();
        Ok(body)
    })
}

async fn order(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    by_public_id(&shared, caller, &id, |model, origin, id| {
        model.order_json(origin, id)
    })
}

async fn hold(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    by_public_id(&shared, caller, &id, |model, origin, id| {
        model.hold_json(origin, id)
    })
}

async fn transfer(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    by_public_id(&shared, caller, &id, |model, origin, id| {
        model.v1_transfer(origin, id)
    })
}
