//! The running service: the stream thread (sole writer of the
//! [`ReadModel`]) and the HTTP runtime (axum on tokio) that reads it.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;
use tally_client::consumer::{monotonic_ns, ConsumerStats, StreamConsumer};
use tally_client::follow::SessionFollower;

use crate::auth::HttpAuth;
use crate::config::MonitorConfig;
use crate::indexes::IndexCounters;
use crate::listener::BoundedListener;
use crate::metrics::HttpCounters;
use crate::model::{Freshness, ReadModel};
use crate::tables::StoredMessage;

/// What the stream thread and the HTTP side share.
pub(crate) struct Shared {
    model: RwLock<ReadModel>,
    /// Batches published; [`MonitorHandle::wait_until`] watches it change.
    published: Mutex<u64>,
    published_changed: Condvar,
    /// The same count for the async side (SSE streams and writes waiting
    /// for a decision wake on it).
    pub(crate) published_watch: tokio::sync::watch::Sender<u64>,
    pub(crate) http: HttpCounters,
    pub(crate) auth: HttpAuth,
    pub(crate) stop: AtomicBool,
    /// Open `/v1/events` streams.
    pub(crate) event_streams: std::sync::atomic::AtomicUsize,
    /// Limits of the HTTP side.
    pub(crate) limits: crate::config::HttpLimits,
    /// The write side (`/v1` commands), when configured.
    pub(crate) writes: Option<crate::writes::Writes>,
}

impl Shared {
    /// The model under the read lock. Hold it for one bounded answer only:
    /// the stream thread's next batch waits meanwhile.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, ReadModel> {
        self.model.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, ReadModel> {
        self.model.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn published(&self) -> u64 {
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn notify_published(&self) {
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *published += 1;
        self.published_watch.send_replace(*published);
        drop(published);
        self.published_changed.notify_all();
    }
}

/// A summary of the monitor's state, for the demo and tools.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MonitorStatus {
    /// seq the replica reflects, newest seq seen, lag, stale.
    #[serde(flatten)]
    pub freshness: Freshness,
    /// `/ready` would answer 200.
    pub ready: bool,
    /// Caught up with the stream ([`ReadModel::caught_up`]).
    pub caught_up: bool,
    /// seq of the last `S(W)`; 0 = none yet.
    pub authority_online_seq: u64,
    /// Messages the replica applied.
    pub messages: u64,
    /// Must be 0 ([`tally_client::replica::Replica::oversold`]).
    pub oversold: u64,
    /// Why the stream thread stopped, if it failed.
    pub failed: Option<String>,
    /// The consumer's counters.
    pub consumer: ConsumerStats,
    /// What the indexes dropped.
    pub indexes: IndexCounters,
}

/// The monitor: see the crate docs. [`Monitor::start`] runs it.
pub struct Monitor;

impl Monitor {
    /// Joins the stream, binds the HTTP listener, starts the stream thread
    /// and the HTTP runtime (`http_workers` threads). The listener accepts
    /// at return. Stop with [`MonitorHandle::stop`] (or drop the handle).
    pub fn start(config: MonitorConfig) -> io::Result<MonitorHandle> {
        config.validate()?;
        let consumer = StreamConsumer::new(&config.consumer)?;
        let listener = std::net::TcpListener::bind(config.listen).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("HTTP listener on {}: {error}", config.listen),
            )
        })?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.http_workers)
            .max_blocking_threads(config.http_workers.max(2))
            .thread_name("monitor-http")
            .enable_all()
            .build()?;
        let shared = Arc::new(shared_state(&config)?);
        let stream_shared = Arc::clone(&shared);
        let stream = StreamThread::of(&config);
        let stream_thread = thread::Builder::new()
            .name("monitor-stream".into())
            .spawn(move || run_stream(consumer, &stream_shared, stream))?;
        let stop_tx = serve_http(&runtime, listener, &config, &shared)?;
        tracing::info!(%local_addr, workers = config.http_workers, "monitor serving");
        Ok(MonitorHandle {
            local_addr,
            shared,
            runtime: Some(runtime),
            stop_tx: Some(stop_tx),
            stream_thread: Some(stream_thread),
        })
    }
}

/// What the stream thread and the HTTP handlers share, empty.
fn shared_state(config: &MonitorConfig) -> io::Result<Shared> {
    let writes = match &config.writes {
        Some(writes) => Some(crate::writes::Writes::open(writes)?),
        None => None,
    };
    let mut model = ReadModel::new(
        config.limits,
        config.indexes,
        config.consumer.stale_timeout_ns,
        config.ready_lag_max,
    );
    model.set_low_stock_at(config.http.low_stock_at);
    Ok(Shared {
        model: RwLock::new(model),
        published: Mutex::new(0),
        published_changed: Condvar::new(),
        published_watch: tokio::sync::watch::Sender::new(0),
        http: HttpCounters::default(),
        auth: HttpAuth::new(config.auth.clone()),
        stop: AtomicBool::new(false),
        event_streams: std::sync::atomic::AtomicUsize::new(0),
        limits: config.http,
        writes,
    })
}

/// Serves the routes on `listener` in `runtime` until the returned sender
/// is used (or dropped).
fn serve_http(
    runtime: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    config: &MonitorConfig,
    shared: &Arc<Shared>,
) -> io::Result<tokio::sync::oneshot::Sender<()>> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let listener = BoundedListener::new(
        listener,
        config.http.connections_max,
        config.http.connections_per_source_max,
    );
    let app = crate::routes::router(Arc::clone(shared))
        .into_make_service_with_connect_info::<crate::listener::Peer>();
    runtime.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "monitor HTTP server failed");
        }
    });
    Ok(stop_tx)
}

/// The running monitor. Dropping it stops it.
pub struct MonitorHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
    stream_thread: Option<JoinHandle<()>>,
}

impl MonitorHandle {
    /// The HTTP listener's address (with the port chosen for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs `f` on the read model under the read lock (keep it short: the
    /// stream thread waits meanwhile).
    pub fn read<R>(&self, f: impl FnOnce(&ReadModel) -> R) -> R {
        f(&self.shared.read())
    }

    /// `(seq, digest)`: the replica's digest and the seq it is at, taken
    /// together.
    pub fn digest(&self) -> (u64, u64) {
        self.read(ReadModel::digest)
    }

    /// `(answers, errors)`: HTTP answers given, and those with a 4xx or
    /// 5xx status.
    pub fn http_answers(&self) -> (u64, u64) {
        self.shared
            .http
            .by_code()
            .fold((0, 0), |(all, errors), (code, count)| {
                let error = code.starts_with('4') || code.starts_with('5');
                (all + count, errors + if error { count } else { 0 })
            })
    }

    /// A summary: freshness, readiness, counters.
    pub fn status(&self) -> MonitorStatus {
        let now_ns = monotonic_ns();
        self.read(|model| MonitorStatus {
            freshness: model.freshness(now_ns),
            ready: model.readiness(now_ns).is_ok(),
            caught_up: model.caught_up(now_ns),
            authority_online_seq: model.replica().authority_online_seq(),
            messages: model.replica().counters().messages,
            oversold: model.replica().oversold(),
            failed: model.liveness().failed.clone(),
            consumer: model.liveness().consumer,
            indexes: model.index_counters(),
        })
    }

    /// Waits until `done(model, now_ns)` holds, re-checking after every
    /// batch the stream thread publishes (at least every
    /// `publish_interval`), for at most `timeout`. Returns whether it holds.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&ReadModel, u64) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let published = self.shared.published();
            if done(&self.shared.read(), monotonic_ns()) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Bounded slices: the condition may turn on time alone (stale)
            // and the stream thread may have stopped.
            let slice = (deadline - now).min(Duration::from_millis(100));
            let guard = self
                .shared
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let _ = self
                .shared
                .published_changed
                .wait_timeout_while(guard, slice, |n| *n == published);
        }
    }

    /// Waits until the replica has applied `seq`; returns whether it did
    /// within `timeout`.
    pub fn wait_for_seq(&self, seq: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |model, now_ns| model.freshness(now_ns).seq >= seq)
    }

    /// Whether the stream thread stopped with an error.
    pub fn failed(&self) -> Option<String> {
        self.read(|model| model.liveness().failed.clone())
    }

    /// Stops the stream thread and the HTTP runtime (open connections are
    /// closed). Errors when the stream thread panicked.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        let Some(runtime) = self.runtime.take() else {
            return Ok(());
        };
        self.shared.stop.store(true, Ordering::Release);
        if let Some(stop) = self.stop_tx.take() {
            let _ = stop.send(());
        }
        let panicked = self
            .stream_thread
            .take()
            .map(JoinHandle::join)
            .is_some_and(|joined| joined.is_err());
        if let Some(writes) = &self.shared.writes {
            writes.stop();
        }
        // Long-lived answers (SSE) end here: the runtime drops every task.
        runtime.shutdown_timeout(Duration::from_millis(500));
        if panicked {
            return Err(io::Error::other("the monitor's stream thread panicked"));
        }
        Ok(())
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::warn!(%error, "monitor stopped with an error");
        }
    }
}

/// The stream thread: stage a batch without the lock, apply it under the
/// write lock (once per batch), publish.
/// What the stream thread needs besides the consumer.
struct StreamThread {
    /// Moves the consumer to the next session at a rollover.
    follower: SessionFollower,
    /// An empty model for a new session.
    fresh_model: Box<dyn Fn() -> ReadModel + Send>,
    staging_messages: usize,
    publish_interval: Duration,
}

impl StreamThread {
    fn of(config: &MonitorConfig) -> StreamThread {
        // At a rollover the next session's broadcast rebuilds the model
        // from nothing (the stream numbers from 1 again).
        let (limits, indexes, low_stock_at) =
            (config.limits, config.indexes, config.http.low_stock_at);
        let (stale_timeout_ns, ready_lag_max) =
            (config.consumer.stale_timeout_ns, config.ready_lag_max);
        StreamThread {
            follower: SessionFollower::new(config.consumer.clone()),
            fresh_model: Box::new(move || {
                let mut model = ReadModel::new(limits, indexes, stale_timeout_ns, ready_lag_max);
                model.set_low_stock_at(low_stock_at);
                model
            }),
            staging_messages: config.staging_messages,
            publish_interval: config.publish_interval,
        }
    }
}

fn run_stream(mut consumer: StreamConsumer, shared: &Shared, stream: StreamThread) {
    let StreamThread {
        follower,
        fresh_model,
        staging_messages,
        publish_interval,
    } = stream;
    let mut staged: Vec<StoredMessage> = Vec::with_capacity(staging_messages);
    let mut growths = 0u64;
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        let result = if stopping {
            Ok(0)
        } else {
            consumer.wait(publish_interval, |seq, message| {
                if staged.len() == staged.capacity() {
                    growths += 1;
                }
                staged.push(StoredMessage::new(seq, &message));
            })
        };
        {
            let mut model = shared.write();
            for entry in &staged {
                model.apply(entry.seq, &entry.message());
            }
            model.refresh_liveness(&consumer);
            model.set_staging_growths(growths);
            if let Err(error) = &result {
                tracing::error!(%error, "monitor stream consumer failed");
                model.set_failed(error.to_string());
            }
        }
        staged.clear();
        shared.notify_published();
        if stopping || result.is_err() {
            return;
        }
        match follower.follow(&mut consumer) {
            Ok(None) => {}
            Ok(Some(session)) => {
                let mut fresh = fresh_model();
                fresh.refresh_liveness(&consumer);
                shared.write().start_next_session(fresh);
                tracing::info!(%session, "monitor following the next session");
            }
            Err(error) => {
                tracing::error!(%error, "monitor cannot follow the next session");
                shared.write().set_failed(error.to_string());
                return;
            }
        }
    }
}
