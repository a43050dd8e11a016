//! Logs go to stderr (stdout is reserved for command output such as dry-run
//! bodies), filtered by `RUST_LOG` (default `info`); `--debug` logs at debug level.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(debug: bool) {
    // `--debug` asks for debug logs in so many words: it wins over RUST_LOG.
    let filter = if debug {
        EnvFilter::new("debug")
    } else {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
