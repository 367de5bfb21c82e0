//! The load run's tills: one thread each, driven by the load generator, and
//! the once-a-second progress line built from what they share.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use tally_config::ApplianceConfig;
use tally_demo::load::{LoadConfig, LoadGenerator};
use tally_pos::{rtt_histogram, Pos, PosConfig, PosCounterFile, PosStats};

use crate::run::User;
use crate::tap::Tap;
use crate::{say, Cli};

/// A till's thread: its till once the load stopped, and whether every
/// command got its outcome.
pub(crate) type TillThread = JoinHandle<anyhow::Result<(Pos, bool)>>;

/// What each till's thread shares once a second for the progress line.
#[derive(Clone, Debug, Default)]
pub(crate) struct TillView {
    stats: PosStats,
    rtt: Option<Histogram<u64>>,
    /// Messages recovered by re-request (gaps in the live stream).
    gaps_filled: u64,
    /// Messages read from the replay feed (the late join at start, or a
    /// large gap).
    caught_up: u64,
    kernel_drops: u64,
}

/// The views of all tills, index by index.
pub(crate) type TillViews = Arc<Mutex<Vec<TillView>>>;

/// Starts one thread per till; each sends until `until` or `stop`, then
/// drains its outcomes.
pub(crate) fn start_tills(
    cli: &Cli,
    config: &ApplianceConfig,
    tills: &[User],
    journal_dir: &Path,
    until: Instant,
    stop: &Arc<AtomicBool>,
    views: &TillViews,
) -> anyhow::Result<Vec<TillThread>> {
    let mut till_threads = Vec::new();
    for (index, user) in tills.iter().enumerate() {
        let (pos_config, load) = till_config(cli, config, index, user)?;
        let stop = Arc::clone(stop);
        let views = Arc::clone(views);
        let username = &user.name;
        let counters = PosCounterFile::create(
            &journal_dir.join(format!("tally-pos-{username}.counters")),
            &format!("tally-pos {username} (demo)"),
        )?;
        till_threads.push(
            std::thread::Builder::new()
                .name(format!("demo-{username}"))
                .spawn(move || {
                    run_till(index, pos_config, load, until, &stop, &views, &counters)
                })?,
        );
    }
    Ok(till_threads)
}

/// Till `index`'s configuration (its share of `--loss`) and load generator
/// (its own seed from `--seed`).
fn till_config(
    cli: &Cli,
    config: &ApplianceConfig,
    index: usize,
    user: &User,
) -> anyhow::Result<(PosConfig, LoadGenerator)> {
    let mut pos_config = PosConfig::for_appliance(config, &user.name, &user.password)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut load = LoadConfig::new(cli.seed.wrapping_add(index as u64 * 7919));
    load.rate_per_sec = cli.rate;
    let load = LoadGenerator::new(load).map_err(|e| anyhow::anyhow!("{e}"))?;
    if cli.loss > 0.0 {
        pos_config.consumer.loss = Some((
            cli.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9),
            cli.loss / 100.0,
        ));
    }
    pos_config.drain_timeout = Duration::from_secs(20);
    Ok((pos_config, load))
}

/// One till's thread: wait for the warehouse's directory, send until
/// `until` (sharing its view and counters as it goes), drain.
fn run_till(
    index: usize,
    pos_config: PosConfig,
    mut load: LoadGenerator,
    until: Instant,
    stop: &AtomicBool,
    views: &TillViews,
    counters: &PosCounterFile,
) -> anyhow::Result<(Pos, bool)> {
    let mut pos = Pos::new(pos_config).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !pos
        .wait_ready(Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        bail!("till {index} never saw the warehouse's directory");
    }
    let drained = load
        .run(&mut pos, stop, Some(until), |pos| {
            let view = TillView {
                stats: pos.stats(),
                rtt: Some(pos.histogram().clone()),
                gaps_filled: pos.consumer().stats().recovered_by_retransmit,
                caught_up: pos.consumer().stats().recovered_by_replay,
                kernel_drops: pos.consumer().stats().kernel_drops,
            };
            if let Ok(mut views) = views.lock() {
                views[index] = view;
            }
            counters.publish(pos);
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    counters.publish(&pos);
    anyhow::Ok((pos, drained))
}

/// Reads the stream with `tap` until `until`, saying a progress line every
/// second.
pub(crate) fn report_progress(
    cli: &Cli,
    tap: &mut Tap,
    views: &TillViews,
    until: Instant,
    mut every_second: impl FnMut(),
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut next_line = started + Duration::from_secs(1);
    let mut last_seq = 0u64;
    let mut last_orders = 0u64;
    while Instant::now() < until {
        tap.poll_for(Duration::from_millis(50))?;
        if Instant::now() >= next_line {
            next_line += Duration::from_secs(1);
            every_second();
            let views = views.lock().map(|v| v.clone()).unwrap_or_default();
            let seq = tap.replica.last_seq();
            let orders = tap.count(b'O');
            let totals = ViewTotals::of(&views);
            say(
                cli,
                &totals.progress_line(started, seq - last_seq, orders - last_orders, seq),
            );
            last_seq = seq;
            last_orders = orders;
        }
    }
    Ok(())
}

/// The tills' views added up.
struct ViewTotals {
    rtt: Histogram<u64>,
    fills: u64,
    rejects: u64,
    gaps: u64,
    caught_up: u64,
    drops: u64,
}

impl ViewTotals {
    fn of(views: &[TillView]) -> ViewTotals {
        let mut totals = ViewTotals {
            rtt: rtt_histogram(),
            fills: 0,
            rejects: 0,
            gaps: 0,
            caught_up: 0,
            drops: 0,
        };
        for view in views {
            totals.fills += view.stats.filled;
            totals.rejects += view.stats.rejected + view.stats.gateway_rejected;
            totals.gaps += view.gaps_filled;
            totals.caught_up += view.caught_up;
            totals.drops += view.kernel_drops;
            if let Some(h) = &view.rtt {
                let _ = totals.rtt.add(h);
            }
        }
        totals
    }

    /// `t=… seq=… msgs/s=…`: one second of the run.
    fn progress_line(&self, started: Instant, messages: u64, orders: u64, seq: u64) -> String {
        let ViewTotals {
            rtt,
            fills,
            rejects,
            gaps,
            caught_up,
            drops,
        } = self;
        format!(
            "t={:>3}s seq={seq:>8} msgs/s={:>7} orders/s={:>6} fills={fills:>7} rejects={rejects:>6} gaps_filled={gaps:>5} caught_up={caught_up:>5} kernel_drops={drops:>4} rtt_p50={:.0}us p99={:.0}us",
            started.elapsed().as_secs(),
            messages,
            orders,
            rtt_quantile_us(rtt, 0.5),
            rtt_quantile_us(rtt, 0.99)
        )
    }
}

/// Quantile `q` of the round trips, in µs (0 when there are none).
pub(crate) fn rtt_quantile_us(rtt: &Histogram<u64>, q: f64) -> f64 {
    if rtt.is_empty() {
        0.0
    } else {
        rtt.value_at_quantile(q) as f64 / 1000.0
    }
}
