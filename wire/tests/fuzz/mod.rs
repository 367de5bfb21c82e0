//! The fuzz checks, one module per decoder: each `check(input)` asserts
//! more than "does not panic" (see `fuzz/README.md`). Shared by the
//! libFuzzer targets in `fuzz/fuzz_targets/` and by the bounded in-suite
//! run in `tests/fuzz_in_suite.rs`, so the suite and the fuzzer check the
//! same things.
#![allow(dead_code)]

pub mod ack;
pub mod client_packet;
pub mod frame_decoder;
pub mod message;
pub mod mold_packet;
pub mod re_request;
pub mod server_packet;

/// A check: panics when the decoder breaks its contract on this input.
pub type Check = fn(&[u8]);

/// Every check by name (the libFuzzer target of the same name runs it).
pub const TARGETS: &[(&str, Check)] = &[
    ("ack", ack::check),
    ("client_packet", client_packet::check),
    ("frame_decoder", frame_decoder::check),
    ("message", message::check),
    ("mold_packet", mold_packet::check),
    ("re_request", re_request::check),
    ("server_packet", server_packet::check),
];
