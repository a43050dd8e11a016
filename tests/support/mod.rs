//! Shared by the integration tests. Each test file uses a part of it.
#![allow(dead_code, clippy::unwrap_used)]

pub mod fake_kosli;

use std::path::PathBuf;

/// The built binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kosli-operator"))
}

/// A file of the repository.
pub fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// An `http://127.0.0.1:PORT` URL where nothing listens (the port was just freed).
pub fn closed_loopback_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}
