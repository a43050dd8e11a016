#!/usr/bin/env bash
# hack/demo/test.sh [--binary PATH] — the demo's test (hack/test.sh runs it): runs
# hack/demo.sh as CI does (no stdin, no terminal), waits until it has seen every
# scripted change reported, then presses Ctrl-C (SIGINT to its whole process group, as
# a terminal sends it) and checks that
#   - every report the demo waits for arrived, and the stand-in's lines show the
#     changes (first report, pods added, new artifact, pods and an artifact gone);
#   - it stopped within seconds, exit status 130;
#   - nothing it started is left: no process under its directories, no directory.
# About 40 s. Arguments go to hack/demo.sh (e.g. --binary target/debug/kosli-operator).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

log=$(mktemp "${TMPDIR:-/tmp}/kosli-demo-test.XXXXXX")
pid=""
failed=0
fail() { echo "hack/demo/test.sh: FAILED: $*" >&2; failed=1; }
# shellcheck disable=SC2317  # invoked by the trap
on_exit() {
  # Never leave the demo behind, even if this script is stopped half-way.
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM -- "-$pid" 2>/dev/null || true; fi
  rm -f "$log"
}
trap on_exit EXIT

# Its own session and process group, so that the interrupt below reaches exactly
# the demo's group; SIGINT restored to its default, which a background job of a
# script would otherwise start with ignored (and then could not trap).
setsid env --default-signal=INT "$ROOT/hack/demo.sh" --duration 300 "$@" </dev/null >"$log" 2>&1 &
pid=$!

deadline=$((SECONDS + 150))
until grep -q '^demo: done: ' "$log"; do
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" || true
    cat "$log" >&2
    echo "hack/demo/test.sh: FAILED: the demo ended before its scripted changes were reported" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    cat "$log" >&2
    echo "hack/demo/test.sh: FAILED: no 'demo: done' within 150 s" >&2
    exit 1
  fi
  sleep 0.5
done

work=$(sed -n 's/^demo: working in \(.*\) (removed at exit)$/\1/p' "$log")
testenv=$(sed -n 's/^demo: test environment in \(.*\) (removed at exit)$/\1/p' "$log")
if [ -z "$work" ] || [ -z "$testenv" ]; then fail "the demo did not name its directories"; fi
# Running: its processes are there to be found, so their absence below means something.
pgrep -f -- "$testenv/" >/dev/null || fail "no process of the demo's test environment while it runs"
pgrep -f -- "$work/" >/dev/null || fail "no Kosli stand-in while the demo runs"

kill -INT -- "-$pid"
stopped_by=$((SECONDS + 30))
while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$stopped_by" ]; do sleep 0.2; done
if kill -0 "$pid" 2>/dev/null; then
  fail "still running 30 s after Ctrl-C"
  kill -KILL -- "-$pid" 2>/dev/null || true
fi
rc=0
wait "$pid" || rc=$?
pid=""
[ "$rc" = 130 ] || fail "exit status $rc after Ctrl-C, expected 130"

for line in \
  "demo: ok: Kosli has the empty namespace" \
  "demo: ok: Kosli has 3 pods" \
  "demo: ok: Kosli has 5 pods" \
  "demo: ok: Kosli has the rolled-out web: 5 pods, all on the new digest" \
  "demo: stopped everything it started and removed its temporary directories"; do
  grep -qF -- "$line" "$log" || fail "missing: $line"
done
for pattern in \
  "^kosli: created environment 'shop' \(K8S\)$" \
  "^kosli: report #1 for 'shop': 0 pods, 0 artifacts \(the first\)$" \
  "^kosli: report #[0-9]+ for 'shop': 3 pods, 2 artifacts; since the last: \+[0-9]+ pods? .*new artifact " \
  "^kosli: report #[0-9]+ for 'shop': 5 pods, 2 artifacts; since the last: \+[0-9]+ pods? " \
  "^kosli: report #[0-9]+ for 'shop': [0-9]+ pods?, [0-9]+ artifacts?; since the last: .*-[0-9]+ pods? .*artifact gone "; do
  grep -qE -- "$pattern" "$log" || fail "no stand-in line matching: $pattern"
done
reports=$(grep -c '^kosli: report #' "$log" || true)
[ "$reports" -ge 4 ] || fail "only $reports reports"

for dir in "$work" "$testenv"; do
  [ -n "$dir" ] || continue
  if [ -e "$dir" ]; then fail "$dir is left behind"; fi
  if pgrep -af -- "$dir/" >&2; then fail "processes under $dir are left running"; fi
done

if [ "$failed" = 1 ]; then
  echo "----- the demo's output" >&2
  cat "$log" >&2
  exit 1
fi
echo "hack/demo/test.sh: the demo works: $reports reports arrived, and Ctrl-C left nothing behind"
