//! `tally-monitor` as a user first meets it: `--help` explains and exits 0; an
//! unknown option is refused with a message and a non-zero status. (This
//! integration test also makes `cargo test --workspace` build the binary,
//! which the end-to-end tests in apps/demo run.)

use std::process::Command;

#[test]
fn help_explains_and_an_unknown_option_is_refused() {
    let help = Command::new(env!("CARGO_BIN_EXE_tally-monitor"))
        .arg("--help")
        .output()
        .expect("running tally-monitor --help");
    assert!(help.status.success(), "{help:?}");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Usage"), "{text}");
    assert!(text.contains("--help"), "{text}");

    let bad = Command::new(env!("CARGO_BIN_EXE_tally-monitor"))
        .arg("--no-such-option")
        .output()
        .expect("running tally-monitor --no-such-option");
    assert!(!bad.status.success(), "{bad:?}");
    let text = String::from_utf8_lossy(&bad.stderr);
    assert!(text.contains("--no-such-option"), "{text}");
}
