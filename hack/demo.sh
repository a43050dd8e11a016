#!/usr/bin/env bash
# hack/demo.sh — see the operator report a cluster's changes to Kosli, end to end, in
# one command (under a minute; needs nothing but what hack/testenv/install.sh installs).
#
#   hack/demo.sh [--binary PATH] [--duration SECONDS]
#
# It starts the real test environment (hack/testenv: kube-apiserver + etcd, a local
# registry with test images, all on 127.0.0.1), a local stand-in for Kosli that prints
# a line per report it receives (hack/demo/kosli_standin.py), and `kosli-operator run`
# against both; then it creates a few workloads, scales a Deployment and rolls it to
# a new image, waiting each time until the report showing the change has arrived.
#
# That environment has no kubelet and no controller-manager, so pods never appear or
# run by themselves: the demo plays both. For each Deployment it creates the
# ReplicaSet (owned by the Deployment) and its pods (owned by the ReplicaSet), then
# patches each pod's status to Running with the image digest a kubelet would report.
#
#   --binary PATH       the kosli-operator binary to run (default: build it with
#                       `cargo build --release --locked`, into CARGO_TARGET_DIR or
#                       ~/.cache/kosli-operator/target)
#   --duration SECONDS  after the scripted changes, keep everything running this long
#                       (to look around with the kubectl commands it prints); default 0
#
# It reads nothing from stdin, ends by itself, and on exit, Ctrl-C or TERM stops
# everything it started and removes its temporary directories.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/testenv/lib.sh
source "$ROOT/hack/testenv/lib.sh"

binary=""
duration=0
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --duration) duration=${2:?--duration needs seconds}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $duration =~ ^[0-9]+$ ]] || { echo "demo: --duration takes whole seconds" >&2; exit 2; }

say() { echo "demo: $*"; }
die() { echo "demo: ERROR: $*" >&2; exit 1; }

ORG=demo-org
TOKEN=demo-token-$RANDOM$RANDOM
NS=shop
ENVIRONMENT=shop
WORK=""
RUN=""
OPERATOR_PID=""
STANDIN_PID=""

# ------------------------------------------------------------------ clean-up
stopped=0
# shellcheck disable=SC2317  # invoked by the traps
stop_pid() {
  local pid=$1 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  # The operator releases nothing here (no leader election) and stops within seconds.
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
# shellcheck disable=SC2317
cleanup() {
  local rc=$?
  [ "$stopped" = 1 ] && return
  stopped=1
  trap - INT TERM
  stop_pid "$OPERATOR_PID"
  stop_pid "$STANDIN_PID"
  if [ -n "$RUN" ]; then
    "$ROOT/hack/testenv/stop.sh" "$RUN" >/dev/null 2>&1 || echo "demo: WARNING: could not stop the test environment in $RUN" >&2
  fi
  if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
  say "stopped everything it started and removed its temporary directories"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kosli-demo.XXXXXX")
say "working in $WORK (removed at exit)"

# ------------------------------------------------------------------ the operator binary
if [ -z "$binary" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kosli-operator/target}"
  say "building kosli-operator (cargo build --release --locked; quick when already built)"
  (cd "$ROOT" && cargo build --release --locked --bin kosli-operator) </dev/null >"$WORK/build.log" 2>&1 \
    || { tail -n 30 "$WORK/build.log" >&2; die "the build failed"; }
  binary=$CARGO_TARGET_DIR/release/kosli-operator
fi
[ -x "$binary" ] || die "no operator binary at $binary"

# ------------------------------------------------------------------ the test environment
say "starting the test environment: kube-apiserver + etcd and a registry, on 127.0.0.1"
"$ROOT/hack/testenv/install.sh" </dev/null >"$WORK/install.log" 2>&1 \
  || { tail -n 30 "$WORK/install.log" >&2; die "hack/testenv/install.sh failed"; }
testenv_resolve_tools
RUN=$(mktemp -d "${TMPDIR:-/tmp}/kosli-demo-testenv.XXXXXX")
say "test environment in $RUN (removed at exit)"
"$ROOT/hack/testenv/start.sh" "$RUN" </dev/null >"$WORK/testenv.log" 2>&1 \
  || { tail -n 30 "$WORK/testenv.log" >&2; die "hack/testenv/start.sh failed"; }
while IFS= read -r line; do
  [ -n "$line" ] && declare "${line%%=*}=${line#*=}"
done < "$RUN/testenv.env"
export KUBECONFIG=$TESTENV_KUBECONFIG
k() { "$KUBECTL" "$@" </dev/null; }
# k_apply: kubectl apply of the manifest on stdin.
k_apply() { "$KUBECTL" apply -f - >/dev/null; }

# ------------------------------------------------------------------ Kosli's stand-in
"$TESTENV_PYTHON" "$ROOT/hack/demo/kosli_standin.py" --org "$ORG" --token "$TOKEN" \
  --port-file "$WORK/kosli.port" --reports "$WORK/reports.jsonl" </dev/null &
STANDIN_PID=$!
for _ in $(seq 1 50); do [ -s "$WORK/kosli.port" ] && break; sleep 0.1; done
[ -s "$WORK/kosli.port" ] || die "the Kosli stand-in did not start"
KOSLI_URL=http://127.0.0.1:$(cat "$WORK/kosli.port")
: > "$WORK/reports.jsonl"
say "Kosli's stand-in listens on $KOSLI_URL (organization $ORG); its lines start with 'kosli:'"

# wait_report WHAT JQ_FILTER: until the latest report satisfies the filter (30 s at most).
wait_report() {
  local what=$1 filter=$2 deadline=$((SECONDS + 30)) last
  while :; do
    last=$(tail -n 1 "$WORK/reports.jsonl")
    if [ -n "$last" ] && jq -e "$filter" >/dev/null 2>&1 <<<"$last"; then
      say "ok: Kosli has $what (report #$(jq -r .n <<<"$last"))"
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "----- operator log (last lines)" >&2
      tail -n 30 "$WORK/operator.log" >&2 || true
      die "no report with $what within 30 s"
    fi
    sleep 0.2
  done
}

# ------------------------------------------------------------------ the operator
k apply -f "$ROOT/crds/koslienvironments.kosli.com.yaml" >/dev/null
k wait --for condition=established --timeout=30s crd/koslienvironments.kosli.com >/dev/null
k create namespace "$NS" >/dev/null
k_apply <<EOF
apiVersion: kosli.com/v1alpha1
kind: KosliEnvironment
metadata:
  name: $ENVIRONMENT
spec:
  namespaces: [$NS]
  autoCreate: true
  description: Made by hack/demo.sh
  heartbeatSeconds: 30
EOF
say "applied KosliEnvironment '$ENVIRONMENT': the pods of namespace '$NS', created in Kosli if missing"

HTTP_PORT=$("$TESTENV_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KOSLI_HOST=$KOSLI_URL KOSLI_ORG=$ORG KOSLI_API_TOKEN=$TOKEN RUST_LOG=info \
  "$binary" run --kubeconfig "$TESTENV_KUBECONFIG" --leader-election=false \
  --http-addr "127.0.0.1:$HTTP_PORT" </dev/null >"$WORK/operator.log" 2>&1 &
OPERATOR_PID=$!
for _ in $(seq 1 150); do
  curl -fs --max-time 1 "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$OPERATOR_PID" 2>/dev/null || { tail -n 30 "$WORK/operator.log" >&2; die "the operator exited"; }
  sleep 0.2
done
say "started the operator ($binary run), KOSLI_HOST=$KOSLI_URL; log: $WORK/operator.log"
wait_report "the empty namespace" '.pods == 0'

# ------------------------------------------------------------------ playing the cluster
# The registry of the test environment holds one image in two versions; their digests
# are what a kubelet would report as each container's imageID.
IMAGE_V1=$TESTENV_REGISTRY/$TESTENV_IMAGE_REPO:$TESTENV_IMAGE_SINGLE_TAG
DIGEST_V1=$TESTENV_IMAGE_SINGLE_DIGEST
IMAGE_V2=$TESTENV_REGISTRY/$TESTENV_IMAGE_REPO:$TESTENV_IMAGE_INDEX_TAG
DIGEST_V2=$TESTENV_IMAGE_INDEX_DIGEST

# A pod-template-hash (of the Deployment's name and image: its pod template here) and
# pod name suffixes, as the controllers make them up.
template_hash() { printf '%s %s' "$1" "$2" | sha256sum | tr -dc 'bcdfghjklmnpqrstvwxz2456789' | cut -c1-10; }
suffix() { tr -dc 'bcdfghjklmnpqrstvwxz2456789' </dev/urandom | head -c 5 || true; }

# deployment NAME IMAGE REPLICAS: the Deployment object, as `kubectl create` would make it.
deployment() {
  k_apply <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1, namespace: $NS}
spec:
  replicas: $3
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      containers: [{name: $1, image: "$2"}]
EOF
}

# replicaset DEPLOYMENT IMAGE REPLICAS: what the Deployment controller would create.
replicaset() {
  local name=$1 image=$2 replicas=$3 hash uid
  hash=$(template_hash "$name" "$image")
  uid=$(k -n "$NS" get deployment "$name" -o jsonpath='{.metadata.uid}')
  k_apply <<EOF
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: $name-$hash
  namespace: $NS
  labels: {app: $name, pod-template-hash: "$hash"}
  ownerReferences:
    - {apiVersion: apps/v1, kind: Deployment, name: $name, uid: $uid, controller: true, blockOwnerDeletion: true}
spec:
  replicas: $replicas
  selector: {matchLabels: {app: $name, pod-template-hash: "$hash"}}
  template:
    metadata: {labels: {app: $name, pod-template-hash: "$hash"}}
    spec:
      containers: [{name: $name, image: "$image"}]
EOF
  echo "$name-$hash"
}

# pods DEPLOYMENT IMAGE DIGEST COUNT: the ReplicaSet controller's pods, then the kubelet's
# status for each: Running, the container started from the image with this digest.
pods() {
  local name=$1 image=$2 digest=$3 count=$4 rs hash uid pod _
  hash=$(template_hash "$name" "$image")
  rs=$name-$hash
  uid=$(k -n "$NS" get replicaset "$rs" -o jsonpath='{.metadata.uid}')
  for _ in $(seq 1 "$count"); do
    pod=$rs-$(suffix)
    k_apply <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $pod
  namespace: $NS
  labels: {app: $name, pod-template-hash: "$hash"}
  ownerReferences:
    - {apiVersion: apps/v1, kind: ReplicaSet, name: $rs, uid: $uid, controller: true, blockOwnerDeletion: true}
spec:
  containers: [{name: $name, image: "$image"}]
EOF
    k -n "$NS" patch pod "$pod" --subresource=status --type=merge -p "$(cat <<EOF
{"status": {"phase": "Running", "startTime": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "containerStatuses": [{"name": "$name", "image": "$image",
    "imageID": "${image%:*}@$digest", "containerID": "containerd://$(suffix)$(suffix)",
    "ready": true, "started": true, "restartCount": 0,
    "state": {"running": {"startedAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"}}}]}}
EOF
)" >/dev/null
    echo "  pod $pod Running, imageID ${image%:*}@${digest:0:19}..."
  done
}

say "--- 1. two workloads: Deployment 'web' (2 replicas) and Deployment 'worker' (1)"
say "    (no controller-manager or kubelet here: the demo creates each ReplicaSet and its"
say "    pods itself and patches their status to Running, as those would)"
deployment web "$IMAGE_V1" 2
replicaset web "$IMAGE_V1" 2 >/dev/null
pods web "$IMAGE_V1" "$DIGEST_V1" 2
deployment worker "$IMAGE_V2" 1
replicaset worker "$IMAGE_V2" 1 >/dev/null
pods worker "$IMAGE_V2" "$DIGEST_V2" 1
wait_report "3 pods" '.pods == 3 and .artifacts == 2'

say "--- 2. scale: kubectl scale deployment web --replicas=4 (the demo adds the 2 pods)"
k -n "$NS" scale deployment web --replicas=4 >/dev/null
k -n "$NS" scale replicaset "web-$(template_hash web "$IMAGE_V1")" --replicas=4 >/dev/null
pods web "$IMAGE_V1" "$DIGEST_V1" 2
wait_report "5 pods" '.pods == 5'

say "--- 3. roll out: kubectl set image deployment/web web=$IMAGE_V2"
say "    (the demo makes the new ReplicaSet and its 4 pods, then removes the old ones)"
k -n "$NS" set image deployment/web "web=$IMAGE_V2" >/dev/null
old_rs=web-$(template_hash web "$IMAGE_V1")
replicaset web "$IMAGE_V2" 4 >/dev/null
pods web "$IMAGE_V2" "$DIGEST_V2" 4
k -n "$NS" scale replicaset "$old_rs" --replicas=0 >/dev/null
k -n "$NS" delete pods -l "pod-template-hash=$(template_hash web "$IMAGE_V1")" --wait=false >/dev/null
echo "  deleted the 4 pods of $old_rs"
wait_report "the rolled-out web: 5 pods, all on the new digest" \
  ".pods == 5 and .artifacts == 1 and .fingerprints == [\"${DIGEST_V2#sha256:}\"]"

reports=$(wc -l < "$WORK/reports.jsonl")
say "done: $reports reports arrived, each within seconds of the change it shows"
if [ "$duration" -gt 0 ]; then
  say "running $duration s more (a heartbeat every 30 s); look around meanwhile:"
  say "  KUBECONFIG=$TESTENV_KUBECONFIG $KUBECTL get kenv"
  say "  KUBECONFIG=$TESTENV_KUBECONFIG $KUBECTL -n $NS get deploy,rs,pods"
  say "  curl -s http://127.0.0.1:$HTTP_PORT/metrics | grep ^kosli_operator_reports"
  end=$((SECONDS + duration))
  while [ "$SECONDS" -lt "$end" ]; do sleep 1; done
fi
