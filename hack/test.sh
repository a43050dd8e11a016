#!/usr/bin/env bash
# The project's test command (README: "Run all tests"). Builds into a cache
# outside the repository, installs and starts the real test components
# (hack/testenv: etcd + kube-apiserver, OCI registries), runs every test tier
# against them, and stops them again whatever the outcome.
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
  runner=(cargo nextest run --locked --no-fail-fast)
  build=(cargo nextest run --locked --no-run)
else
  runner=(cargo test --locked --no-fail-fast)
  build=(cargo test --locked --no-run)
fi

# Build before starting anything, so a compile error costs no cluster start.
"${build[@]}" "$@"
exec hack/testenv/with-testenv.sh "${runner[@]}" "$@"
