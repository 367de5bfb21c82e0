//! Counters as Prometheus metrics, for every long-running application.
//!
//! Each application keeps its counters in a counter file
//! (`tally_runtime::counters::CounterFile`, what `tally-stat` reads). The
//! same counters are its Prometheus metrics: [`MetricSet`] holds handles to
//! them (readable from any thread, relaxed loads) and writes the text
//! exposition format, one metric per counter: `tally_` + the counter's name
//! with every character outside `[A-Za-z0-9_]` turned into `_`
//! (`consumer.gaps_detected` → `tally_consumer_gaps_detected`), typed
//! `gauge` when [`is_gauge`] says the counter is a level, else `counter`,
//! and labelled with the process (`{process="tally-warehouse"}`).
//!
//! [`serve`] answers `GET /metrics` on a TCP address for applications that
//! have no HTTP port of their own (`tally-warehouse --metrics ADDR`): one
//! thread, one connection at a time, `Connection: close`, a request head of
//! at most 8 KiB read within 2 s, anything but `GET /metrics` refused with
//! its status. A scraper's request costs one read of every counter.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tally_runtime::counters::{Counter, CounterFile};

/// Whether a counter is a gauge (a level, not a running total): its rate
/// means nothing. `tally-stat` and the metrics agree through this.
pub fn is_gauge(name: &str) -> bool {
    name.ends_with("next_seq")
        || name.ends_with("_active")
        || name.ends_with("lag_messages")
        || name.ends_with(".lag")
        || name.contains("_max")
        || name.starts_with("max_")
        || name.contains(".max_")
}

/// The Prometheus name of counter `name`: `tally_` and the name with every
/// character outside `[A-Za-z0-9_]` replaced by `_`.
pub fn metric_name(name: &str) -> String {
    let mut out = String::with_capacity(6 + name.len());
    out.push_str("tally_");
    out.extend(
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
    );
    out
}

/// Handles to a counter file's counters, with their names: the metrics of
/// one process. Cheap to clone and share between threads.
#[derive(Clone)]
pub struct MetricSet {
    process: String,
    names: Arc<[String]>,
    counters: Arc<[Counter]>,
}

impl MetricSet {
    /// Every counter of `file`, labelled `process`.
    pub fn of(file: &CounterFile, process: &str) -> MetricSet {
        let names: Vec<String> = file.names().map(str::to_owned).collect();
        let counters: Vec<Counter> = (0..names.len()).map(|i| file.counter(i)).collect();
        MetricSet {
            process: process.replace(['"', '\\', '\n'], "_"),
            names: names.into(),
            counters: counters.into(),
        }
    }

    /// The counters' names, in the file's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Appends the text exposition of every counter to `out`.
    pub fn write_text(&self, out: &mut String) {
        for (name, counter) in self.names.iter().zip(self.counters.iter()) {
            let metric = metric_name(name);
            let kind = if is_gauge(name) { "gauge" } else { "counter" };
            let _ = writeln!(out, "# HELP {metric} tally counter {name}.");
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            let _ = writeln!(
                out,
                "{metric}{{process=\"{}\"}} {}",
                self.process,
                counter.get()
            );
        }
    }

    /// The text exposition as a string.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.names.len() * 128);
        self.write_text(&mut out);
        out
    }
}

/// Longest request head [`serve`] reads.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8192;
/// How long [`serve`] waits for a request head, and for a reply to drain.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds `listen` and answers `GET /metrics` with `metrics` on a thread of
/// its own until `stop` is set (checked every 100 ms). See the module
/// documentation for what it refuses.
pub fn serve(
    listen: SocketAddr,
    metrics: MetricSet,
    stop: Arc<AtomicBool>,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(listen)
        .map_err(|e| io::Error::new(e.kind(), format!("metrics address {listen}: {e}")))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let thread = std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = answer(stream, &metrics);
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })?;
    Ok((local, thread))
}

/// Reads one request head and answers it; closes the connection.
fn answer(mut stream: TcpStream, metrics: &MetricSet) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut head = [0u8; REQUEST_HEAD_BYTES_MAX];
    let mut len = 0;
    while !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == head.len() {
            return reply(&mut stream, "431 Request Header Fields Too Large", "");
        }
        let n = stream.read(&mut head[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let line = head[..len].split(|&b| b == b'\r').next().unwrap_or(&[]);
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    match (method, path) {
        (b"GET", b"/metrics") => reply(&mut stream, "200 OK", &metrics.text()),
        (_, b"/metrics") => reply(&mut stream, "405 Method Not Allowed", "GET only\n"),
        _ => reply(
            &mut stream,
            "404 Not Found",
            "only /metrics is served here\n",
        ),
    }
}

fn reply(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_become_typed_metrics_with_the_process_label() {
        let file = CounterFile::in_memory(&["consumer.gaps_detected", "consumer.lag"]);
        file.counter(0).set(3);
        file.counter(1).set(7);
        let text = MetricSet::of(&file, "tally-pos STORE-A").text();
        assert!(text.contains("# TYPE tally_consumer_gaps_detected counter\n"));
        assert!(text.contains("tally_consumer_gaps_detected{process=\"tally-pos STORE-A\"} 3\n"));
        assert!(text.contains("# TYPE tally_consumer_lag gauge\n"));
        assert!(text.contains("tally_consumer_lag{process=\"tally-pos STORE-A\"} 7\n"));
        assert_eq!(
            metric_name("agent.orders.max_cycle_ns"),
            "tally_agent_orders_max_cycle_ns"
        );
    }

    #[test]
    fn the_metrics_port_answers_get_metrics_and_refuses_the_rest() {
        let file = CounterFile::in_memory(&["warehouse.decided"]);
        file.counter(0).set(42);
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, thread) = serve(
            "127.0.0.1:0".parse().unwrap(),
            MetricSet::of(&file, "t"),
            Arc::clone(&stop),
        )
        .unwrap();
        let get = |request: &[u8]| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.write_all(request).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        };
        let ok = get(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(
            ok.contains("tally_warehouse_decided{process=\"t\"} 42"),
            "{ok}"
        );
        assert!(get(b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get(b"GET /secrets HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let huge = vec![b'a'; REQUEST_HEAD_BYTES_MAX];
        assert!(get(&huge).starts_with("HTTP/1.1 431"));
        stop.store(true, Ordering::Release);
        thread.join().unwrap();
    }
}
