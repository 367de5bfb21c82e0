//! `tally-demo --json` passes its own verification (4 s with no loss, then
//! 10 s with 2 % injected loss): every
//! replica's digest equals the warehouse's at the final seq, nothing is
//! oversold, every command got its outcome. The demo uses the example
//! configuration's fixed ports and group (no other test uses them).

use std::process::Command;

/// Runs `tally-demo --json ARGS` from the repository root; its summary.
fn run_demo(args: &[&str]) -> serde_json::Value {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let output = Command::new(env!("CARGO_BIN_EXE_tally-demo"))
        .current_dir(root)
        .args(["--json", "--monitor", "127.0.0.1:0"])
        .args(args)
        .output()
        .expect("run tally-demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tally-demo failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

/// As [`run_demo`], while `tally-stat` watches: every process of the demo
/// (the appliance, the warehouse, the HTTP service, the four tills) shows
/// as running.
fn run_demo_watched_by_tally_stat(args: &[&str]) -> serde_json::Value {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let journal = std::path::Path::new(root).join("target/tally-demo/journal");
    let child = Command::new(env!("CARGO_BIN_EXE_tally-demo"))
        .current_dir(root)
        .args(["--json", "--monitor", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tally-demo");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let seen: Vec<String> = loop {
        let stat = Command::new(tally_demo::bin("tally-stat"))
            .args(["--once", "--json", "--interval", "0"])
            .arg(&journal)
            .output()
            .expect("run tally-stat");
        let report: serde_json::Value =
            serde_json::from_slice(&stat.stdout).unwrap_or(serde_json::Value::Null);
        let seen: Vec<String> = report["processes"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|row| row["state"] == "running")
                    .filter_map(|row| row["process"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let running = |prefix: &str| seen.iter().filter(|n| n.starts_with(prefix)).count();
        if running("tally-sequencer") == 1
            && running("tally-warehouse") == 1
            && running("tally-monitor") == 1
            && running("tally-pos ") == 4
        {
            break seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tally-stat shows every process of the demo running: {seen:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let output = child.wait_with_output().expect("tally-demo ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tally-demo failed: {stdout} (tally-stat saw {seen:?})"
    );
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

/// One test for both runs: the demo uses the example configuration's fixed
/// ports and journal directory, so two demos must not overlap.
#[test]
fn the_demo_passes_its_own_verification() {
    // No loss injected: every gap filled by re-request is one the kernel
    // dropped and counted (on loopback nothing else loses a datagram).
    let quiet = run_demo_watched_by_tally_stat(&["--seconds", "6"]);
    assert_eq!(quiet["replicas_consistent"], true, "{quiet}");
    if quiet["kernel_drops"] == 0 {
        assert_eq!(quiet["gaps_filled"], 0, "gaps with no kernel drop: {quiet}");
    }

    let summary = run_demo(&["--seconds", "10", "--loss", "2"]);
    for key in [
        "final_seq",
        "messages",
        "orders",
        "accepted",
        "rejected",
        "holds",
        "transfers",
        "replicas",
        "replicas_consistent",
        "oversold",
        "gaps_recovered",
        "gaps_filled",
        "caught_up_by_replay",
        "kernel_drops",
        "rtt_p50_us",
        "rtt_p99_us",
    ] {
        assert!(summary.get(key).is_some(), "summary lacks {key}: {summary}");
    }
    assert_eq!(summary["replicas_consistent"], true, "{summary}");
    assert_eq!(summary["oversold"], 0, "{summary}");
    assert!(
        summary["orders"].as_u64().unwrap() > 1000,
        "the tills traded: {summary}"
    );
    assert!(summary["replicas"].as_u64().unwrap() >= 6, "{summary}");
    assert!(
        summary["gaps_filled"].as_u64().unwrap() > 0,
        "2 % injected loss shows as gaps filled: {summary}"
    );
    assert_eq!(
        summary["messages"], summary["final_seq"],
        "the tap saw every message once: {summary}"
    );

    // The logins it used: the example configuration's demo passwords,
    // written beside its journal, owner-only.
    use std::os::unix::fs::PermissionsExt as _;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let written =
        std::path::Path::new(root).join("target/tally-demo/journal/tally-demo.credentials");
    let text = std::fs::read_to_string(&written).expect("the demo's credentials file");
    for login in [
        "pos1 pos1pass",
        "ops1 ops1pass",
        "wh whpass",
        "read1 readpass",
    ] {
        assert!(text.lines().any(|line| line == login), "{login}: {text}");
    }
    let mode = std::fs::metadata(&written).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "owner-only: {mode:o}");
}

/// No hidden logins: the demo writes the passwords it uses where the user
/// can read them (owner-only), and logs in with what its credentials file
/// says: a file without an ops login stops it before anything starts.
#[test]
fn the_demo_logs_in_with_the_credentials_file_it_shows() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join("partial.credentials");
    std::fs::write(
        &partial,
        "# no ops user\npos1 pos1pass\nwh whpass\nread1 readpass\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tally-demo"))
        .current_dir(root)
        .args(["--pos", "1", "--seconds", "1", "--monitor", "127.0.0.1:0"])
        .arg("--credentials")
        .arg(&partial)
        .output()
        .expect("run tally-demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "logging in with the users and passwords in {}",
            partial.display()
        )),
        "{stdout}"
    );
    assert!(
        stderr.contains("gives no password for a ops client"),
        "{stderr}"
    );

    let bad = dir.path().join("bad.credentials");
    std::fs::write(&bad, "pos1 pos1pass extra\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tally-demo"))
        .current_dir(root)
        .args(["--pos", "1", "--seconds", "1", "--monitor", "127.0.0.1:0"])
        .arg("--credentials")
        .arg(&bad)
        .output()
        .expect("run tally-demo");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("line 1: expected `USER PASSWORD`"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
