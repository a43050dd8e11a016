#!/usr/bin/env bash
# The project's test command (README: "Run all tests"). Builds into a cache
# outside the repository so a second run reuses the build, then runs every test
# tier: unit tests, the loopback fake Kosli, and the built binary.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kosli-operator/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install a stable Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi

# nextest runs each test in its own process and ends on one summary line;
# plain cargo test is the fallback where it is not installed.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast "$@"
else
  cargo test --locked --no-fail-fast "$@"
fi
