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
