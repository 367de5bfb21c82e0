//! `tally-monitor`'s library: the HTTP service over the read side of
//! DESIGN.md §6. A replica of the stream, with bounded indexes of its
//! recent history, served over HTTP/JSON: the `/v1` API (SKUs paged and one
//! by one, orders, holds, transfers, Server-Sent Events of every decision
//! and of depletion / low stock, an OpenAPI document), the dashboard at
//! `/`, and the earlier paths: availability by SKU symbol, a cell's recent
//! events, an order's timeline, a hold's status, depleted SKUs, the
//! replica's digest (`/digest`), `/health`, `/ready` and Prometheus
//! `/metrics`.
//!
//! Modules: `server` (start, stop, the stream thread), `routes` (the
//! router, authentication, the earlier paths), `v1` and `views` (the `/v1`
//! reads), `events` and `eventlog` (SSE), `listener` (TCP_NODELAY, the
//! connection bound), `auth`, `metrics`, `model`, `indexes`, `tables`,
//! `legacy` (the earlier paths' answers), `answer` (replies and query
//! parsing), `config`.
//!
//! # Threads and sharing
//!
//! [`Monitor::start`] spawns
//! - one **stream thread**, which owns the [`StreamConsumer`]. It waits for
//!   a batch of messages (one [`StreamConsumer::wait`]: whatever one poll of
//!   the sockets delivered, or nothing after `publish_interval`), copies them
//!   into a preallocated staging buffer *without* holding any lock, then
//!   takes the write lock of the [`ReadModel`] **once per batch**, applies
//!   the batch to the replica, the indexes and the event ring, and refreshes
//!   the liveness figures (newest seq, last activity, consumer counters);
//! - the **HTTP runtime** (axum on a tokio runtime of `http_workers`
//!   threads, TCP_NODELAY on every connection, at most `connections_max`
//!   of them). Each answer takes the read lock for the time it takes to
//!   build that one answer (bounded work, see "Paging"), never across an
//!   `.await`. Event streams and writes waiting for a decision sleep on a
//!   `watch` channel the stream thread bumps after every batch.
//!
//! Why a `RwLock` and not a second copy of the replica: it is the simplest
//! thing that is correct. The consumer never waits on HTTP while it
//! receives: sockets are read and re-requests sent with no lock held, and
//! the kernel and the consumer's io_uring buffers queue datagrams
//! meanwhile. The apply step waits at most for the answers in progress
//! (std's `RwLock` queues new readers behind a waiting writer, so it is
//! never starved), each bounded in work. A double-buffered replica would
//! remove even that wait at twice the memory and a second apply per
//! message; nothing measured asks for it yet. The appliance's hot path
//! never waits on any of this: this process only *consumes* the stream.
//!
//! # Freshness on every answer
//!
//! Every JSON body carries `"seq"` (the stream sequence number the answer
//! reflects), `"lag"` (newest seq seen on the stream − `seq`) and `"stale"`
//! (true when no data or heartbeat arrived for the consumer's
//! `stale_timeout_ns` — the sequencer is stopped or the link is cut — or
//! when the stream thread failed). `stale` is computed when the answer is
//! made, from the last activity the stream thread recorded, so it turns true
//! even when the stream thread itself is stuck.
//!
//! # Bounded indexes
//!
//! Next to the [`Replica`] (itself fixed-size), the model keeps, all
//! allocated in [`ReadModel::new`] from [`IndexLimits`]:
//! - **cell history**: for up to `history_cells_max` cells (location, sku),
//!   the last `history_depth` events that touched the cell (`I`, `D`, `H`,
//!   `E`) with the cell's on_hand/reserved right after each;
//! - **order timelines**: for up to `orders_max` orders (origin, order_id),
//!   the last `timeline_events_max` messages about the order (its `O`, `M`,
//!   `X` commands and the `D`/`J` events that answered them) and its status;
//! - **holds**: for up to `holds_max` holds (origin, hold_id), the same for
//!   `V`, `C`, `K` and their `H`/`E`/`D`/`J`, and the hold's status.
//!
//! The tables evict by the clock algorithm (a second chance for entries
//! touched since the hand last passed), rings overwrite their oldest entry;
//! every eviction and overwrite is counted ([`IndexCounters`], also in
//! `/metrics`). An order or hold evicted from the index is still answered
//! from the replica's own records while the replica has them (status, no
//! events). Holds carried over from an earlier session (re-announced by the
//! warehouse's snapshot broadcast without their client ids) count in every
//! cell's `reserved` but cannot be looked up by hold id.
//!
//! # Depleted
//!
//! `GET /depleted` (`scope=all`, the default) lists the SKUs of the
//! directory with nothing available anywhere: available (on_hand −
//! reserved) is 0 at every location, so no order for it can succeed. With
//! `scope=any` it lists the SKUs that are out at one location or more: a
//! cell that some event named (version ≠ 0: the location carries the SKU)
//! with available 0. Each entry names the locations where the SKU is out
//! (ascending by id) and its directory `position`.
//!
//! # Paging
//!
//! No answer serialises the whole catalogue. Listings come in pages of at
//! most `limit` entries ([`PAGE_LIMIT_DEFAULT`] when absent, a larger one
//! capped at [`PAGE_LIMIT_MAX`]; 0 or not a number: 400), and each answer's
//! `next` is the `after` of the next page, null on the last:
//! - `/depleted?after=POSITION` walks the SKU directory in its order
//!   (positions are stable: SKUs are only added at the end, so a walk sees
//!   every SKU once, and SKUs added meanwhile at its end). One request
//!   examines at most [`DEPLETED_SCAN_SKUS_MAX`] SKUs and
//!   [`DEPLETED_SCAN_CELLS_MAX`] stocked cells (each SKU through its own
//!   cells, [`Replica::for_each_stocked_cell`]), so a page may hold fewer
//!   than `limit` entries, or none, and still have a `next`; `count` is the
//!   SKUs found in the part examined (`scanned`). An `after` outside the
//!   directory: 400.
//! - `/availability/{symbol}?after=LOCATION_ID` lists the SKU's stocked
//!   cells ascending by location id (work: the SKU's stocked cells); the
//!   totals always cover every stocked cell.
//!
//! `/digest?locations=A,B` gives the subset digest a store node keeping
//! those locations reports ([`Replica::digest_of`]); the full digest and
//! the last subset asked for are cached until the replica changes.
//!
//! # Who may read
//!
//! Every endpoint but `/health` and `/ready` needs HTTP Basic credentials of
//! a configured client ([`HttpAuthConfig`]: the appliance's `[[clients]]`
//! and their argon2 hashes) whose role may read; `/metrics` may be opened to
//! an unauthenticated scraper. No or wrong credentials: 401 with
//! `WWW-Authenticate`; a role that may not read: 403. A verified credential
//! is remembered (a bounded cache keyed by a keyed hash of user and
//! password, never the password), so a request costs no argon2 run; a cache
//! miss costs one, and each source address may cause at most
//! `verifications_per_sec_per_source` of those (429 beyond), so a
//! wrong-password flood burns at most that much CPU per source and never
//! more than the 2 blocking threads that verify.
//!
//! This module never sends to the appliance, never writes files, and reads
//! no environment variables.
//!
//! [`StreamConsumer`]: tally_client::consumer::StreamConsumer
//! [`StreamConsumer::wait`]: tally_client::consumer::StreamConsumer::wait
//! [`Replica`]: tally_client::replica::Replica
//! [`Replica::for_each_stocked_cell`]: tally_client::replica::Replica::for_each_stocked_cell
//! [`Replica::digest_of`]: tally_client::replica::Replica::digest_of

mod answer;
mod auth;
mod config;
pub mod counters;
mod eventlog;
mod events;
mod idempotency;
mod indexes;
mod legacy;
mod listener;
mod metrics;
mod model;
mod routes;
mod server;
mod session;
mod tables;
mod v1;
mod views;
mod writes;

pub use answer::Reply;
pub use auth::{base64_encode, basic_authorization, HttpAuthConfig};
pub use config::{HttpLimits, IndexLimits, MonitorConfig};
pub use indexes::IndexCounters;
pub use legacy::{
    DEPLETED_SCAN_CELLS_MAX, DEPLETED_SCAN_SKUS_MAX, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX,
};
pub use metrics::HttpCounters;
pub use model::{Freshness, Liveness, ReadModel};
pub use server::{Monitor, MonitorHandle, MonitorStatus};
pub use writes::WritesConfig;

#[cfg(test)]
mod tests;
