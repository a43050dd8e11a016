#!/usr/bin/env bash
# with-testenv.sh CMD... — install the test components if needed, start them in a fresh temp
# RUN_DIR, run CMD with every key of RUN_DIR/testenv.env exported, and always stop them again
# (on normal exit, failure, INT or TERM). Exits with CMD's exit code (or start's, if start failed).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

[ $# -ge 1 ] || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }

"$HERE/install.sh" >&2
RUN=$(mktemp -d "${TMPDIR:-/tmp}/kosli-testenv.XXXXXX")
child=""
# shellcheck disable=SC2317  # invoked by the traps
cleanup() { "$HERE/stop.sh" "$RUN" || echo "[testenv] WARNING: stop.sh $RUN failed" >&2; }
# shellcheck disable=SC2317
on_signal() {
  # Pass the signal on to CMD and let it finish; the EXIT trap then stops the components.
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; fi
  exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

"$HERE/start.sh" "$RUN" >&2
# KEY=VALUE lines without quoting: split on the first '=' only.
while IFS= read -r line; do
  [ -n "$line" ] || continue
  export "${line%%=*}=${line#*=}"
done < "$RUN/testenv.env"

# CMD runs in the background (stdin kept) so that a signal to this script is handled at once
# instead of after CMD ends.
"$@" <&0 &
child=$!
set +e
wait "$child"
rc=$?
set -e
child=""
exit "$rc"
