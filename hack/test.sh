#!/usr/bin/env bash
# The project's test command (README: "Run all tests"). Builds into a cache
# outside the repository, installs and starts the real test components
# (hack/testenv: etcd + kube-apiserver, OCI registries), runs every test tier
# against them, and stops them again whatever the outcome. Without ARGS it also
# checks the workflow files (.github/workflows) with actionlint and runs the
# demo (hack/demo/test.sh: hack/demo.sh with its own test environment).
#
#   ./hack/test.sh [ARGS...]            every test, under hack/testenv/with-testenv.sh
#   ./hack/test.sh --offline [ARGS...]  only the tests that need no test environment:
#                                       unit tests and tests/*.rs not named env_*;
#                                       nothing is installed or started
#
# ARGS go to cargo nextest run (or cargo test, where nextest is not installed).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kosli-operator/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

offline=false
if [ "${1:-}" = "--offline" ]; then
  offline=true
  shift
fi

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install a stable Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi

# nextest runs each test in its own process and ends on one summary line;
# plain cargo test is the fallback where it is not installed.
if cargo nextest --version >/dev/null 2>&1; then
  nextest=true
  runner=(cargo nextest run --locked --no-fail-fast)
  build=(cargo nextest run --locked --no-run)
else
  nextest=false
  runner=(cargo test --locked --no-fail-fast)
  build=(cargo test --locked --no-run)
fi

if $offline; then
  # A test binary that needs the test environment is named tests/env_*.rs; the
  # rest need nothing but loopback. Only those targets are built, so the env_
  # binaries cost no compile time either.
  targets=(--lib --bins)
  for file in tests/*.rs; do
    name=$(basename "$file" .rs)
    case "$name" in env_*) ;; *) targets+=(--test "$name") ;; esac
  done
  if $nextest; then
    # The offline profile (.config/nextest.toml) filters out binary(/^env_/):
    # the same as the targets, and it still holds if ARGS add targets, while
    # an -E in ARGS narrows the tier further.
    exec "${runner[@]}" --profile offline "${targets[@]}" "$@"
  fi
  exec "${runner[@]}" "${targets[@]}" "$@"
fi

# Build before starting anything, so a compile error costs no cluster start.
"${build[@]}" "$@"

# With ARGS (a filter, a single binary) only those tests run. Without, the checks
# that are not Rust tests run first, so that the test runner's summary stays the
# last thing printed; a failure among them fails the run after the tests.
failures=()
if [ $# -eq 0 ]; then
  hack/testenv/install.sh >&2
  # shellcheck source=hack/testenv/lib.sh
  source hack/testenv/lib.sh
  actionlint=${ACTIONLINT:-$TESTENV_CACHE/venv/bin/actionlint}
  # With shellcheck on PATH (install.sh installs it where it can) actionlint also
  # checks the run: scripts; without it, it skips that check rather than fail.
  if "$actionlint" -oneline .github/workflows/*.yml; then
    echo "actionlint: .github/workflows/*.yml are valid" >&2
  else
    failures+=("actionlint found errors in .github/workflows (above)")
  fi
  # The tests' debug build of the binary (KOSLI_OPERATOR_BIN names another, as
  # for the tests): no release build just for the demo.
  if ! hack/demo/test.sh --binary "${KOSLI_OPERATOR_BIN:-$CARGO_TARGET_DIR/debug/kosli-operator}"; then
    failures+=("hack/demo/test.sh failed (above)")
  fi
fi

if [ "${#failures[@]}" -eq 0 ]; then
  exec hack/testenv/with-testenv.sh "${runner[@]}" "$@"
fi
# The tests still run, so one failure does not hide others; the run fails anyway.
hack/testenv/with-testenv.sh "${runner[@]}" "$@" || true
for failure in "${failures[@]}"; do echo "hack/test.sh: $failure" >&2; done
exit 1
