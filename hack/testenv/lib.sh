# shellcheck shell=bash
# Shared helpers for hack/testenv/*.sh: where the cache lives and how each tool is found.
# Sourced, not executed.

TESTENV_CACHE=${KOSLI_TESTENV_CACHE:-$HOME/.cache/kosli-operator/testenv}
TESTENV_BIN=$TESTENV_CACHE/bin

testenv_log() { echo "[testenv] $*" >&2; }
testenv_die() { echo "[testenv] ERROR: $*" >&2; exit 1; }

# Resolve every tool path: an env var set by the user wins, then our cache, then $PATH.
# Results are exported so child scripts and tests see the same binaries.
testenv_resolve_tools() {
  : "${KUBE_APISERVER:=$TESTENV_BIN/kube-apiserver}"
  : "${ETCD:=$(command -v etcd || echo /usr/bin/etcd)}"
  : "${REGISTRY:=$(command -v docker-registry || echo /usr/bin/docker-registry)}"
  : "${SKOPEO:=$(command -v skopeo || echo /usr/bin/skopeo)}"
  : "${HELM:=$TESTENV_BIN/helm}"
  : "${KUBECTL:=$TESTENV_BIN/kubectl}"
  : "${KUBERNETES_VALIDATE:=$TESTENV_CACHE/venv/bin/kubernetes-validate}"
  : "${HTPASSWD:=$(command -v htpasswd || echo /usr/bin/htpasswd)}"
  : "${PROMTOOL:=$(command -v promtool || echo /usr/bin/promtool)}"
  # The token issuer and the port picker only need the Python 3 standard library.
  : "${TESTENV_PYTHON:=$(command -v python3)}"
  export KUBE_APISERVER ETCD REGISTRY SKOPEO HELM KUBECTL KUBERNETES_VALIDATE HTPASSWD PROMTOOL TESTENV_PYTHON
}

# True if PID is alive and its command line mentions RUN_DIR/ — every process start.sh launches
# has a path under RUN_DIR in its arguments, so a recycled PID is never mistaken for ours.
testenv_pid_is_ours() {
  local pid=$1 dir=$2 cmd
  # A process that is gone (or a zombie, whose cmdline is empty) does not count.
  cmd=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || return 1
  [[ $cmd == *"$dir/"* ]]
}

# Our daemons are orphans once start.sh exits, so init reaps them, on some machines only about
# once a second; wait (up to ~3 s, best effort) so that `ps` right after stop shows no zombies.
_testenv_wait_reaped() {
  local pid i z
  for i in $(seq 1 30); do
    z=0
    for pid in "$@"; do
      [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" = Z ] && z=1
    done
    [ "$z" = 0 ] && return 0
    sleep 0.1
  done
}

# _testenv_stop_group RUN_DIR PID...: TERM, up to ~5 s grace, then KILL; non-zero if any survives.
_testenv_stop_group() {
  local dir=$1 pid i
  shift
  local -a pids=("$@") alive=()
  [ "${#pids[@]}" -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for i in $(seq 1 70); do
    alive=()
    for pid in "${pids[@]}"; do testenv_pid_is_ours "$pid" "$dir" && alive+=("$pid"); done
    if [ "${#alive[@]}" -eq 0 ]; then
      _testenv_wait_reaped "${pids[@]}"
      return 0
    fi
    if [ "$i" -eq 50 ]; then
      testenv_log "no exit 5 s after TERM, sending KILL to: ${alive[*]}"
      kill -KILL "${alive[@]}" 2>/dev/null || true
    fi
    sleep 0.1
  done
  testenv_log "still running after KILL: ${alive[*]}"
  return 1
}

# Stop every process recorded in RUN_DIR/*.pid. The apiserver goes first, while etcd is still
# there to let it shut down cleanly; then the rest together. Pid files are removed at the end.
testenv_stop_pids() {
  local dir=$1 f pid rc=0
  local -a first=() rest=()
  for f in "$dir"/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null || true)
    if ! [[ $pid =~ ^[0-9]+$ ]] || ! testenv_pid_is_ours "$pid" "$dir"; then continue; fi
    if [ "$(basename "$f")" = apiserver.pid ]; then first+=("$pid"); else rest+=("$pid"); fi
  done
  _testenv_stop_group "$dir" "${first[@]}" || rc=1
  _testenv_stop_group "$dir" "${rest[@]}" || rc=1
  if [ "$rc" -eq 0 ]; then rm -f "$dir"/*.pid; fi
  return "$rc"
}
