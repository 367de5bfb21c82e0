//! Logging for the binaries: one call at the top of a `main`.
//!
//! Like [`crate::notify::Notifier::from_env`], this reads the environment
//! (`RUST_LOG`) and is for `main` functions only; library code logs through
//! `tracing` and never installs a subscriber.

use std::io::IsTerminal;

/// Installs the process's `tracing` subscriber: human-readable lines on
/// stderr (coloured on a terminal), filtered by `RUST_LOG` (default `info`).
///
/// # Panics
///
/// When a subscriber is already installed (a second call).
pub fn init_from_env() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
