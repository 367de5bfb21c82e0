//! `tally-demo --seconds 10 --json` passes its own verification: every
//! replica's digest equals the warehouse's at the final seq, nothing is
//! oversold, every command got its outcome. The demo uses the example
//! configuration's fixed ports and group (no other test uses them).

use std::process::Command;

#[test]
fn the_demo_passes_its_own_verification() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = Command::new(env!("CARGO_BIN_EXE_tally-demo"))
        .current_dir(root)
        .args([
            "--seconds",
            "10",
            "--json",
            "--loss",
            "2",
            "--monitor",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run tally-demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tally-demo failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
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
    assert_eq!(
        summary["messages"], summary["final_seq"],
        "the tap saw every message once: {summary}"
    );
}
