//! `GET /v1/events`: Server-Sent Events of every decision and of the
//! depletion / low-stock notifications ([`crate::eventlog`]), plus a
//! `stats` event every second (seq, lag, stale, messages per second) for
//! the dashboard.
//!
//! Where it starts: after the `Last-Event-ID` header (an event id: the
//! stream seq in the first session, growing on across rollovers,
//! [`crate::eventlog`]), else after the `after` query parameter (an id too),
//! else at the newest seq applied (only what happens from now on). An id
//! older than the ring can replay: 410.
//! A client that reads slower than the ring turns over gets an `error`
//! event and the stream ends (it resumes, or learns with a 410 that it
//! cannot). At most `sse_clients_max` streams are open at once (503).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;
use tally_client::consumer::monotonic_ns;

use crate::eventlog::StreamEvent;
use crate::routes::json_answer;
use crate::server::Shared;

/// Events taken from the ring per wake-up (the rest on the next).
const EVENTS_PER_READ_MAX: usize = 1024;
/// How often a `stats` event goes out.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// `/v1/events` query parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Start after this stream seq (when there is no `Last-Event-ID`).
    after: Option<u64>,
}

/// Where a stream starts: the seq after which events are sent.
fn start_seq(shared: &Shared, headers: &HeaderMap, query: &EventsQuery) -> Result<u64, String> {
    if let Some(value) = headers.get("last-event-id") {
        let text = value.to_str().unwrap_or("");
        if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "Last-Event-ID must be an event id (a number), not {text:?}"
            ));
        }
        return text
            .parse()
            .map_err(|_| "Last-Event-ID is out of range".into());
    }
    Ok(match query.after {
        Some(after) => after,
        None => {
            let model = shared.read();
            model.events().id_of(model.freshness(monotonic_ns()).seq)
        }
    })
}

/// `GET /v1/events`.
pub(crate) async fn events(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => {
            return json_answer(&shared, 400, json!({ "error": rejection.body_text() }))
        }
    };
    let after = match start_seq(&shared, &headers, &query) {
        Ok(after) => after,
        Err(error) => return json_answer(&shared, 400, json!({ "error": error })),
    };
    if let Err(too_old) = shared.read().events().since(after, 0) {
        return json_answer(
            &shared,
            410,
            json!({
                "error": format!(
                    "events after seq {after} are no longer held: the oldest seq to resume \
                     after is {} (re-read state from /v1/skus, then follow from now)",
                    too_old.oldest_resumable
                ),
                "oldest_resumable": too_old.oldest_resumable,
            }),
        );
    }
    let Some(slot) = StreamSlot::take(&shared) else {
        return json_answer(
            &shared,
            503,
            json!({ "error": "too many open event streams; retry later" }),
        );
    };
    let state = Follow {
        shared: Arc::clone(&shared),
        watch: shared.published_watch.subscribe(),
        after,
        queue: VecDeque::new(),
        next_stats: Instant::now(),
        last_messages: None,
        ended: false,
        _slot: slot,
    };
    Sse::new(follow(state))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One of the `sse_clients_max` stream slots; freed on drop.
struct StreamSlot(Arc<Shared>);

impl StreamSlot {
    fn take(shared: &Arc<Shared>) -> Option<StreamSlot> {
        let open: &AtomicUsize = &shared.event_streams;
        if open.fetch_add(1, Ordering::AcqRel) >= shared.limits.sse_clients_max {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(StreamSlot(Arc::clone(shared)))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.event_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One open stream's position.
struct Follow {
    shared: Arc<Shared>,
    watch: tokio::sync::watch::Receiver<u64>,
    /// Events after this seq are still to be sent.
    after: u64,
    queue: VecDeque<Event>,
    next_stats: Instant,
    /// (when, messages applied) at the last `stats` event.
    last_messages: Option<(Instant, u64)>,
    ended: bool,
    _slot: StreamSlot,
}

fn follow(state: Follow) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.queue.pop_front() {
                return Some((Ok(event), state));
            }
            if state.ended || state.shared.stop.load(Ordering::Acquire) {
                return None;
            }
            state.refill();
            if !state.queue.is_empty() {
                continue;
            }
            let wait = state.next_stats.saturating_duration_since(Instant::now());
            // Woken by the stream thread's next batch, or the stats tick.
            let _ = tokio::time::timeout(wait, state.watch.changed()).await;
        }
    })
}

impl Follow {
    /// Queues the events after `after` and, when due, a `stats` event.
    fn refill(&mut self) {
        let now = Instant::now();
        let model = self.shared.read();
        match model.events().since(self.after, EVENTS_PER_READ_MAX) {
            Ok(events) => {
                for event in events {
                    self.after = self.after.max(event.id);
                    self.queue.push_back(sse_event(event));
                }
            }
            Err(too_old) => {
                self.ended = true;
                let data = json!({
                    "error": "this client fell behind the events the service holds; \
                              reconnect with Last-Event-ID to learn whether it can resume",
                    "oldest_resumable": too_old.oldest_resumable,
                });
                self.queue
                    .push_back(Event::default().event("error").data(data.to_string()));
                return;
            }
        }
        if now < self.next_stats {
            return;
        }
        self.next_stats = now + STATS_INTERVAL;
        let fresh = model.freshness(monotonic_ns());
        let messages = model.replica().counters().messages;
        let per_sec = match self.last_messages {
            Some((at, before)) => {
                let seconds = now.duration_since(at).as_secs_f64().max(1e-3);
                (messages.saturating_sub(before) as f64 / seconds).round()
            }
            None => 0.0,
        };
        self.last_messages = Some((now, messages));
        let data = json!({
            "seq": fresh.seq,
            "newest_seq": fresh.newest_seq,
            "lag": fresh.lag,
            "stale": fresh.stale,
            "messages": messages,
            "msgs_per_sec": per_sec,
            "session": model.liveness().session,
            "ready": model.readiness(monotonic_ns()).is_ok(),
            "oversold": model.replica().oversold(),
        });
        drop(model);
        self.queue.push_back(
            Event::default()
                .event("stats")
                .data(data.to_string())
                .retry(Duration::from_secs(1)),
        );
    }
}

fn sse_event(event: StreamEvent) -> Event {
    let sse = Event::default().event(event.kind).data(event.data);
    if event.last_of_seq {
        sse.id(event.id.to_string())
    } else {
        sse
    }
}
