//! The dashboard in a real headless browser (Chromium from the
//! distribution's packages): served by `tally-demo --serve`, opened with
//! the reader's HTTP Basic credentials while orders are placed over HTTP,
//! it must show live numbers changing (the stream seq it received over
//! SSE, the decisions as they happen) and the stock table.
//!
//! Without Chromium the test prints `chromium not installed` to stderr and
//! returns, unless `TALLY_REQUIRE_CHROMIUM=1` (set by `.ci/run`, which
//! installs it): then it fails.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tally_demo::http::{basic, request};

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The distribution's Chromium, by the names Debian and Ubuntu give it.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
}

/// `tally-demo --serve --json` for test id 58 of block 100.
fn serve(dir: &std::path::Path) -> (Guard, SocketAddr) {
    let id = 58u16;
    let mut child = Command::new(tally_demo::bin("tally-demo"))
        .args(["--serve", "--json", "--inventory"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/inventory.csv"
        ))
        .args(["--port-base", &(20_000 + 5 * id).to_string()])
        .args(["--group", &format!("239.255.100.{id}")])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let guard = Guard(child);
    let summary: serde_json::Value = serde_json::from_str(&line).expect("the JSON line");
    let http = summary["http"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://");
    (guard, http.parse().unwrap())
}

/// Orders of one unit every 50 ms until `stop`, alternating SKUs.
fn keep_ordering(http: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let auth = basic("pos1", "pos1pass");
        let mut placed = 0;
        while !stop.load(Ordering::Acquire) {
            let sku = ["TSHIRT-WHT-L", "TSHIRT-BLK-M"][placed as usize % 2];
            let body = format!(r#"{{"sku":"{sku}","qty":1,"location":"DC-NORTH"}}"#);
            let key = format!("dash-{placed}");
            let headers = [
                ("Authorization", auth.as_str()),
                ("Idempotency-Key", key.as_str()),
            ];
            let reply = request(
                http,
                "POST",
                "/v1/orders",
                &headers,
                Some(body.as_bytes()),
                Duration::from_secs(10),
            )
            .unwrap();
            assert_eq!(reply.status, 201, "{}", reply.body);
            placed += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        placed
    })
}

/// Chromium driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: JSON messages ending in NUL, in on fd 3, out
/// on fd 4), so the test can read the live page as often as it needs.
struct Browser {
    _child: Guard,
    to: std::fs::File,
    from: BufReader<std::fs::File>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

/// A pipe whose ends close on exec (the child gets its end by `dup2`).
fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded: both descriptors are open and ours alone.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

impl Browser {
    fn open(binary: &str, url: &str) -> Browser {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let (chrome_reads, we_write) = pipe();
        let (we_read, chrome_writes) = pipe();
        let (read_fd, write_fd) = (chrome_reads.as_raw_fd(), chrome_writes.as_raw_fd());
        let profile = tempfile::tempdir().unwrap();
        let mut command = Command::new(binary);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only fcntl and dup2 run (both
        // async-signal-safe); they install the pipe ends as fds 3 and 4,
        // without CLOEXEC.
        unsafe {
            command.pre_exec(move || {
                // First above 4, so neither end is clobbered by the other's
                // dup2 (and dup2 onto the same number would keep CLOEXEC).
                let high_read = libc::fcntl(read_fd, libc::F_DUPFD, 10);
                let high_write = libc::fcntl(write_fd, libc::F_DUPFD, 10);
                if high_read < 0
                    || high_write < 0
                    || libc::dup2(high_read, 3) < 0
                    || libc::dup2(high_write, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let _child = Guard(command.spawn().unwrap());
        drop((chrome_reads, chrome_writes));
        let mut browser = Browser {
            _child,
            to: std::fs::File::from(we_write),
            from: BufReader::new(std::fs::File::from(we_read)),
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", serde_json::json!({ "url": url }));
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = browser.call(
            "Target.attachToTarget",
            serde_json::json!({ "targetId": target_id, "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser
    }

    /// Sends one command and returns its `result` (events are skipped).
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        use std::io::Write;
        self.next_id += 1;
        let mut message =
            serde_json::json!({ "id": self.next_id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = self.session.clone().into();
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let mut raw = Vec::new();
            let read = self.from.read_until(0, &mut raw).unwrap();
            assert!(read > 0, "the browser closed its pipe");
            raw.pop();
            let answer: serde_json::Value = serde_json::from_slice(&raw).unwrap();
            if answer["id"].as_u64() == Some(self.next_id) {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let result = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true }),
        );
        result["result"]["value"].clone()
    }
}

#[test]
fn the_dashboard_shows_live_numbers_in_a_headless_browser() {
    let Some(browser) = chromium() else {
        if std::env::var("TALLY_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
            panic!("chromium is not installed but TALLY_REQUIRE_CHROMIUM=1 requires it (apt-get install chromium)");
        }
        eprintln!("chromium not installed: skipping the browser test");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_served, http) = serve(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let orders = keep_ordering(http, Arc::clone(&stop));
    let mut page = Browser::open(browser, &format!("http://read1:readpass@{http}/"));
    // Watch the page until it has shown the stream seq change at least
    // three times (each change came over SSE: the page reads no seq
    // otherwise).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let seqs = loop {
        let seqs: Vec<u64> = page
            .eval("document.getElementById('seen').dataset.seqs")
            .as_str()
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        if seqs.len() >= 3 || std::time::Instant::now() >= deadline {
            break seqs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let dom = page
        .eval("document.documentElement.outerHTML")
        .as_str()
        .unwrap_or_default()
        .to_string();
    stop.store(true, Ordering::Release);
    let placed = orders.join().unwrap();
    assert!(
        seqs.len() >= 3 && seqs.windows(2).all(|w| w[0] < w[1]),
        "the page saw the stream seq change live: {seqs:?} ({placed} orders placed)"
    );
    // Decisions arrived while the page was open (the stream starts at
    // "now", so every one listed came live).
    assert!(
        dom.contains("<ol id=\"decisions\"><li"),
        "no live decisions in the page"
    );
    assert!(dom.contains("order 1/"), "the orders' decisions are listed");
    // The stock table was filled from /v1/skus.
    assert!(dom.contains("data-sku=\"TSHIRT-WHT-M\""), "no stock table");
    assert!(
        dom.contains("id=\"link\" class=\"ok\">live"),
        "the event stream was not live"
    );
}
