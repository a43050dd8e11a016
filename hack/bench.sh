#!/usr/bin/env bash
# Runs every benchmark and writes BENCHMARKS.md: the micro-benchmarks
# (cargo bench --bench micro), then the end-to-end ones against the real test
# environment (benches/e2e.rs: reporter latency and API-server load at 1k and
# 10k pods, side by side with the CronJob way; the admission webhook warm and
# cold; benches/scale.rs: the reporter's budgets at 150k pods, which it writes
# straight into etcd, so that test environment stores JSON). Run it on an
# otherwise idle machine: the figures are timings.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kosli-operator/target}"
export CARGO_TERM_COLOR=never
out=${1:-BENCHMARKS.md}
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2/1024/1024}' /proc/meminfo)

# Build everything first, so compiling never overlaps a measurement. The
# end-to-end benchmarks run the operator as the image ships it: the `dist`
# build (fat LTO; see Cargo.toml), with the Dockerfile's environment.
cargo bench --locked --no-run >&2
cargo build --profile dist --locked --bin kosli-operator >&2
export KOSLI_OPERATOR_BIN="$CARGO_TARGET_DIR/dist/kosli-operator"

{
  echo "# Benchmarks"
  echo
  echo "Produced by \`hack/bench.sh\` — do not edit by hand; run it again instead."
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
  echo "| commit | $(git rev-parse --short HEAD 2>/dev/null || echo unknown) |"
  echo "| machine | $(nproc) cores ($cpu), $mem, $(uname -sr) |"
  echo "| toolchain | $(rustc --version) |"
  echo "| budgets | [\`docs/performance.md\`](docs/performance.md) |"
  echo
  cargo bench --locked --bench micro 2>/dev/null
  echo
  hack/testenv/with-testenv.sh cargo bench --locked --bench e2e -- --pods 1000 --only reporter 2>/dev/null
  echo
  hack/testenv/with-testenv.sh cargo bench --locked --bench e2e -- --pods 10000 --only reporter 2>/dev/null
  echo
  hack/testenv/with-testenv.sh cargo bench --locked --bench e2e -- --only admission 2>/dev/null
  echo
  TESTENV_STORAGE_JSON=1 hack/testenv/with-testenv.sh \
    cargo bench --locked --bench scale -- --pods 150000 2>/dev/null
} > "$tmp"
chmod 644 "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out" >&2
