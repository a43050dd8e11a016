#!/usr/bin/env bash
# stop.sh RUN_DIR — stop everything start.sh RUN_DIR started (by the PIDs in RUN_DIR/*.pid:
# TERM, ~5 s grace, KILL), check none is left, then delete RUN_DIR. Safe to run twice and
# after a start that failed halfway.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

[ $# -eq 1 ] || { echo "usage: $0 RUN_DIR" >&2; exit 2; }
[ -d "$1" ] || exit 0   # already stopped and removed
RUN=$(cd "$1" && pwd -P)
[ "$RUN" != / ] || testenv_die "refusing to use / as RUN_DIR"

testenv_stop_pids "$RUN" || testenv_die "processes survived; $RUN kept for inspection"

# Only delete a directory start.sh marked as its own (or an empty one), never anything else.
if [ -e "$RUN/.kosli-testenv" ]; then
  rm -rf "$RUN"
elif rmdir "$RUN" 2>/dev/null; then
  :
else
  testenv_log "$RUN is not a testenv run dir; processes stopped, directory left alone"
fi
