//! libFuzzer entry point; the check itself is `tests/fuzz/server_packet.rs`, which
//! the test suite also runs (`tests/fuzz_in_suite.rs`).
#![no_main]

#[path = "../../tests/fuzz/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::server_packet::check(data));
