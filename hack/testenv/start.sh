#!/usr/bin/env bash
# start.sh RUN_DIR — start the real test components on 127.0.0.1, with fresh state under RUN_DIR:
#   etcd + kube-apiserver v1.20 (TLS, token auth, RBAC), three docker-registry instances
#   (anonymous, Basic auth, Bearer token auth + token_issuer.py), and test images pushed to each.
# Stop with stop.sh RUN_DIR. Tools come from install.sh (or the env vars listed in lib.sh).
# Ports are free ones picked at start; override with TESTENV_ETCD_PORT, TESTENV_ETCD_PEER_PORT,
# TESTENV_APISERVER_PORT, TESTENV_REGISTRY_PORT, TESTENV_REGISTRY_BASIC_PORT,
# TESTENV_REGISTRY_BEARER_PORT, TESTENV_TOKEN_ISSUER_PORT.
# TESTENV_STORAGE_JSON=1 makes the apiserver store objects in etcd as JSON instead of protobuf
# (--storage-media-type=application/json), so a benchmark can write objects straight into etcd
# (as JSON under /registry/<resource>/<namespace>/<name>) far faster than through the API.
#
# It writes RUN_DIR/testenv.env: KEY=VALUE lines (no quotes, no export) for the tests:
#   TESTENV_RUN_DIR               absolute RUN_DIR (logs: RUN_DIR/*.log)
#   TESTENV_KUBECONFIG            kubeconfig of the admin (group system:masters)
#   TESTENV_KUBECONFIG_NOBODY     kubeconfig of user testenv-nobody: no groups, no RBAC rights
#   TESTENV_KUBECONFIG_SA         kubeconfig of system:serviceaccount:kosli-operator:kosli-operator
#                                 (groups system:serviceaccounts, system:serviceaccounts:kosli-operator,
#                                 system:authenticated); no rights until a chart's RBAC grants them
#   TESTENV_APISERVER_URL         https://127.0.0.1:PORT
#   TESTENV_ADMIN_TOKEN           bearer token of the admin
#   TESTENV_NOBODY_TOKEN          bearer token of testenv-nobody
#   TESTENV_SA_TOKEN              bearer token of the service-account identity
#   TESTENV_SA_NAMESPACE, TESTENV_SA_NAME   kosli-operator, kosli-operator
#   TESTENV_CA_CERT               CA that signed the apiserver cert (RUN_DIR/tls/ca.crt)
#   TESTENV_TLS_DIR               holds ca.crt/ca.key (to mint more certs, e.g. for webhooks)
#   TESTENV_WEBHOOK_CLIENT_CA     CA (its own, not ca.crt) of the client certificate the apiserver
#                                 presents to every webhook that asks for one (its admission
#                                 config's kubeconfig names the default user '*'): what a webhook
#                                 gives as --webhook-client-ca
#   TESTENV_WEBHOOK_CLIENT_CERT, TESTENV_WEBHOOK_CLIENT_KEY   that client certificate and key
#   TESTENV_ETCD_URL              http://127.0.0.1:PORT (plain HTTP, loopback)
#   TESTENV_STORAGE_JSON          1 if objects are stored in etcd as JSON (see above), else 0
#   TESTENV_REGISTRY              host:port of the anonymous plain-HTTP registry
#   TESTENV_REGISTRY_BASIC        host:port of the registry behind HTTP Basic auth
#   TESTENV_REGISTRY_BASIC_USER, TESTENV_REGISTRY_BASIC_PASSWORD
#   TESTENV_REGISTRY_BEARER       host:port of the registry behind the Bearer token flow
#   TESTENV_REGISTRY_BEARER_USER, TESTENV_REGISTRY_BEARER_PASSWORD   (checked by the token issuer)
#   TESTENV_REGISTRY_BEARER_REALM    http://127.0.0.1:PORT/token (the token issuer)
#   TESTENV_REGISTRY_BEARER_SERVICE  the `service` the registry announces and tokens target
#   TESTENV_IMAGE_REPO            repository pushed to all three registries (testenv/hello)
#   TESTENV_IMAGE_SINGLE_TAG      tag of a single-platform (linux/amd64) OCI image manifest
#   TESTENV_IMAGE_SINGLE_DIGEST   its manifest digest (sha256:...)
#   TESTENV_IMAGE_INDEX_TAG       tag of a two-platform OCI image index
#   TESTENV_IMAGE_INDEX_DIGEST    the index digest
#   TESTENV_IMAGE_AMD64_DIGEST, TESTENV_IMAGE_ARM64_DIGEST   the index's per-platform manifests
#   HELM, KUBECTL, KUBERNETES_VALIDATE, PROMTOOL, KUBE_APISERVER, ETCD, SKOPEO   tool paths
# All digests are what the registries answer in Docker-Content-Digest to a HEAD with OCI
# Accept headers; start.sh checks that on every registry and fails if they differ.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

[ $# -eq 1 ] || { echo "usage: $0 RUN_DIR" >&2; exit 2; }
mkdir -p "$1"
RUN=$(cd "$1" && pwd -P)
if compgen -G "$RUN/*.pid" >/dev/null; then
  testenv_die "$RUN has pid files: already started? run stop.sh $RUN first"
fi
# Marks the directory as ours, so stop.sh may delete it.
touch "$RUN/.kosli-testenv"

testenv_resolve_tools
for t in "$KUBE_APISERVER" "$ETCD" "$REGISTRY" "$SKOPEO" "$HTPASSWD" "$TESTENV_PYTHON"; do
  [ -x "$t" ] || testenv_die "missing tool $t (run hack/testenv/install.sh)"
done

# Fresh state every time: nothing survives from an earlier run in the same RUN_DIR.
rm -rf "$RUN/tls" "$RUN/etcd" "$RUN/apiserver" "$RUN/registry" "$RUN/registry-basic" \
  "$RUN/registry-bearer" "$RUN/oci" "$RUN/testenv.env" "$RUN"/*.log
TLS=$RUN/tls
mkdir -p "$TLS" "$RUN/apiserver"

# ------------------------------------------------------------------ failure handling
CURRENT_LOG=""   # the log to show if the current step fails
STARTED=0
on_exit() {
  local rc=$?
  [ "$rc" -eq 0 ] && [ "$STARTED" = 1 ] && return 0
  testenv_log "start failed (exit $rc); stopping what was started"
  if [ -n "$CURRENT_LOG" ] && [ -f "$CURRENT_LOG" ]; then
    echo "----- last lines of $CURRENT_LOG" >&2
    tail -n 40 "$CURRENT_LOG" >&2 || true
    echo "-----" >&2
  fi
  testenv_stop_pids "$RUN" || true
  exit "$rc"
}
trap on_exit EXIT

# wait_ready NAME TIMEOUT_S CMD...: poll CMD until it succeeds; fail fast if NAME's process died.
wait_ready() {
  local name=$1 timeout=$2 pid deadline
  shift 2
  pid=$(cat "$RUN/$name.pid")
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    testenv_pid_is_ours "$pid" "$RUN" || testenv_die "$name exited during start-up"
    [ "$SECONDS" -lt "$deadline" ] || testenv_die "$name not ready after ${timeout}s"
    sleep 0.2
  done
}

# launch NAME CMD...: run CMD in the background, log to RUN/NAME.log, pid in RUN/NAME.pid.
launch() {
  local name=$1
  shift
  CURRENT_LOG=$RUN/$name.log
  "$@" > "$CURRENT_LOG" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
}

# ------------------------------------------------------------------ ports
read -r P_ETCD P_ETCD_PEER P_API P_REG P_REG_BASIC P_REG_BEARER P_ISSUER < <(
  "$TESTENV_PYTHON" - <<'PY'
import socket
# Bind them all at once so the seven ports are distinct; the kernel won't hand them out again soon.
socks = [socket.socket() for _ in range(7)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
)
P_ETCD=${TESTENV_ETCD_PORT:-$P_ETCD}
P_ETCD_PEER=${TESTENV_ETCD_PEER_PORT:-$P_ETCD_PEER}
P_API=${TESTENV_APISERVER_PORT:-$P_API}
P_REG=${TESTENV_REGISTRY_PORT:-$P_REG}
P_REG_BASIC=${TESTENV_REGISTRY_BASIC_PORT:-$P_REG_BASIC}
P_REG_BEARER=${TESTENV_REGISTRY_BEARER_PORT:-$P_REG_BEARER}
P_ISSUER=${TESTENV_TOKEN_ISSUER_PORT:-$P_ISSUER}
HOST=127.0.0.1

# ------------------------------------------------------------------ TLS
CURRENT_LOG=$RUN/openssl.log
# A throw-away CA; tests can mint more certs from TLS/ca.{crt,key}.
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 -subj "/CN=kosli-testenv-ca" \
  -keyout "$TLS/ca.key" -out "$TLS/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  >>"$CURRENT_LOG" 2>&1
# mkcert NAME CN SAN: an RSA key + cert signed by the CA, for server and client use.
mkcert() {
  local name=$1 cn=$2 san=$3
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$cn" \
    -keyout "$TLS/$name.key" -out "$TLS/$name.csr" >>"$CURRENT_LOG" 2>&1
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "$san" > "$TLS/$name.ext"
  openssl x509 -req -sha256 -days 30 -in "$TLS/$name.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -extfile "$TLS/$name.ext" -out "$TLS/$name.crt" \
    >>"$CURRENT_LOG" 2>&1
  rm -f "$TLS/$name.csr" "$TLS/$name.ext"
}
mkcert apiserver kube-apiserver \
  "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
# The registry trusts tokens signed by this key because its cert is the rootcertbundle.
mkcert token-signer testenv-token-issuer "DNS:localhost"
# The client certificate the apiserver presents to webhooks, from a CA of its own so that a
# webhook trusting it trusts nothing else the testenv issued.
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 -subj "/CN=kosli-testenv-webhook-client-ca" \
  -keyout "$TLS/webhook-client-ca.key" -out "$TLS/webhook-client-ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  >>"$CURRENT_LOG" 2>&1
openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=kube-apiserver-webhook-client" \
  -keyout "$TLS/webhook-client.key" -out "$TLS/webhook-client.csr" >>"$CURRENT_LOG" 2>&1
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' \
  > "$TLS/webhook-client.ext"
openssl x509 -req -sha256 -days 30 -in "$TLS/webhook-client.csr" -CA "$TLS/webhook-client-ca.crt" \
  -CAkey "$TLS/webhook-client-ca.key" -set_serial "0x$(openssl rand -hex 16)" \
  -extfile "$TLS/webhook-client.ext" -out "$TLS/webhook-client.crt" >>"$CURRENT_LOG" 2>&1
rm -f "$TLS/webhook-client.csr" "$TLS/webhook-client.ext"
# Service-account token signing pair for the apiserver.
openssl genrsa -out "$TLS/sa.key" 2048 >>"$CURRENT_LOG" 2>&1
openssl rsa -in "$TLS/sa.key" -pubout -out "$TLS/sa.pub" >>"$CURRENT_LOG" 2>&1
chmod 600 "$TLS"/*.key

# ------------------------------------------------------------------ etcd
ETCD_URL=http://$HOST:$P_ETCD
launch etcd "$ETCD" --name testenv --data-dir "$RUN/etcd" \
  --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
  --listen-peer-urls "http://$HOST:$P_ETCD_PEER" --initial-advertise-peer-urls "http://$HOST:$P_ETCD_PEER" \
  --initial-cluster "testenv=http://$HOST:$P_ETCD_PEER" --initial-cluster-state new
etcd_healthy() { curl -fsS --max-time 2 "$ETCD_URL/health" | grep -q '"health":"true"'; }
wait_ready etcd 30 etcd_healthy

# ------------------------------------------------------------------ kube-apiserver
ADMIN_TOKEN=$(openssl rand -hex 24)
NOBODY_TOKEN=$(openssl rand -hex 24)
SA_TOKEN=$(openssl rand -hex 24)
SA_NS=kosli-operator
SA_NAME=kosli-operator
SA_USER=system:serviceaccount:$SA_NS:$SA_NAME
# token,user,uid,"group1,group2"
cat > "$RUN/apiserver/tokens.csv" <<EOF
$ADMIN_TOKEN,testenv-admin,uid-testenv-admin,"system:masters"
$NOBODY_TOKEN,testenv-nobody,uid-testenv-nobody
$SA_TOKEN,$SA_USER,uid-testenv-sa,"system:serviceaccounts,system:serviceaccounts:$SA_NS,system:authenticated"
EOF
chmod 600 "$RUN/apiserver/tokens.csv"
API_URL=https://$HOST:$P_API
# How the apiserver authenticates to webhooks: kube-apiserver picks the kubeconfig user named
# exactly after the webhook's host (URL host:port, or <service>.<namespace>.svc with the port
# unless 443), then '*.<suffix>' wildcards, then '*'. Tests' webhooks listen on random loopback
# ports, so the default '*' carries the client certificate; webhooks that ask for none (most
# tests') are unaffected.
cat > "$RUN/apiserver/webhook-kubeconfig.yaml" <<EOF
apiVersion: v1
kind: Config
users:
- name: '*'
  user:
    client-certificate: $TLS/webhook-client.crt
    client-key: $TLS/webhook-client.key
EOF
cat > "$RUN/apiserver/admission.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: ValidatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $RUN/apiserver/webhook-kubeconfig.yaml
- name: MutatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $RUN/apiserver/webhook-kubeconfig.yaml
EOF
STORAGE_JSON=${TESTENV_STORAGE_JSON:-0}
STORAGE_ARGS=()
if [ "$STORAGE_JSON" = 1 ]; then STORAGE_ARGS=(--storage-media-type=application/json); fi
# No controller-manager runs, so the ServiceAccount admission plugin (which needs default SAs) is off.
launch apiserver "$KUBE_APISERVER" --etcd-servers="$ETCD_URL" "${STORAGE_ARGS[@]}" \
  --bind-address=$HOST --advertise-address=$HOST --secure-port="$P_API" --insecure-port=0 \
  --tls-cert-file="$TLS/apiserver.crt" --tls-private-key-file="$TLS/apiserver.key" \
  --client-ca-file="$TLS/ca.crt" --cert-dir="$RUN/apiserver/certs" \
  --token-auth-file="$RUN/apiserver/tokens.csv" --authorization-mode=RBAC \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$TLS/sa.pub" --service-account-signing-key-file="$TLS/sa.key" \
  --service-cluster-ip-range=10.96.0.0/24 --disable-admission-plugins=ServiceAccount \
  --allow-privileged=true --admission-control-config-file="$RUN/apiserver/admission.yaml"
api_get() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$TLS/ca.crt" \
    -H "Authorization: Bearer $ADMIN_TOKEN" "$API_URL$1")" = 200 ]
}
wait_ready apiserver 120 api_get /readyz
# The bootstrap controller creates the default namespace just after readiness; tests use it.
wait_ready apiserver 30 api_get /api/v1/namespaces/default

# write_kubeconfig FILE USER TOKEN
write_kubeconfig() {
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: $API_URL
    certificate-authority: $TLS/ca.crt
users:
- name: $2
  user:
    token: $3
contexts:
- name: testenv
  context:
    cluster: testenv
    user: $2
    namespace: default
current-context: testenv
EOF
  chmod 600 "$1"
}
write_kubeconfig "$RUN/kubeconfig" testenv-admin "$ADMIN_TOKEN"
write_kubeconfig "$RUN/kubeconfig-nobody" testenv-nobody "$NOBODY_TOKEN"
write_kubeconfig "$RUN/kubeconfig-sa" "$SA_USER" "$SA_TOKEN"

# ------------------------------------------------------------------ registries
# write_registry NAME PORT AUTH_YAML: our own config (the packaged one listens on all interfaces).
write_registry() {
  local dir=$RUN/$1
  mkdir -p "$dir/data"
  cat > "$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $HOST:$2
  secret: $(openssl rand -hex 16)
  headers:
    X-Content-Type-Options: [nosniff]
$3
EOF
}
registry_up() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1/v2/")
  [ "$code" = 200 ] || [ "$code" = 401 ]
}

REG=$HOST:$P_REG
write_registry registry "$P_REG" ""
launch registry "$REGISTRY" serve "$RUN/registry/config.yml"

REG_BASIC=$HOST:$P_REG_BASIC
BASIC_USER=testenv-basic
BASIC_PASSWORD=$(openssl rand -hex 12)
mkdir -p "$RUN/registry-basic"
"$HTPASSWD" -Bbc "$RUN/registry-basic/htpasswd" "$BASIC_USER" "$BASIC_PASSWORD" 2>/dev/null
write_registry registry-basic "$P_REG_BASIC" "auth:
  htpasswd:
    realm: testenv-basic
    path: $RUN/registry-basic/htpasswd"
launch registry-basic "$REGISTRY" serve "$RUN/registry-basic/config.yml"

REG_BEARER=$HOST:$P_REG_BEARER
BEARER_USER=testenv-bearer
BEARER_PASSWORD=$(openssl rand -hex 12)
BEARER_REALM=http://$HOST:$P_ISSUER/token
BEARER_SERVICE=testenv-registry
BEARER_ISSUER=testenv-token-issuer
mkdir -p "$RUN/registry-bearer"
(umask 077 && printf '%s:%s\n' "$BEARER_USER" "$BEARER_PASSWORD" > "$RUN/registry-bearer/credentials")
write_registry registry-bearer "$P_REG_BEARER" "auth:
  token:
    realm: $BEARER_REALM
    service: $BEARER_SERVICE
    issuer: $BEARER_ISSUER
    rootcertbundle: $TLS/token-signer.crt"
launch token-issuer "$TESTENV_PYTHON" "$HERE/token_issuer.py" --listen $HOST --port "$P_ISSUER" \
  --key "$TLS/token-signer.key" --cert "$TLS/token-signer.crt" \
  --issuer "$BEARER_ISSUER" --service "$BEARER_SERVICE" \
  --credentials-file "$RUN/registry-bearer/credentials"
launch registry-bearer "$REGISTRY" serve "$RUN/registry-bearer/config.yml"

CURRENT_LOG=$RUN/registry.log; wait_ready registry 30 registry_up "$REG"
CURRENT_LOG=$RUN/registry-basic.log; wait_ready registry-basic 30 registry_up "$REG_BASIC"
CURRENT_LOG=$RUN/token-issuer.log
wait_ready token-issuer 30 curl -fsS --max-time 2 "http://$HOST:$P_ISSUER/healthz"
CURRENT_LOG=$RUN/registry-bearer.log; wait_ready registry-bearer 30 registry_up "$REG_BEARER"

# ------------------------------------------------------------------ images
REPO=testenv/hello
SINGLE_TAG=v1
INDEX_TAG=multi
CURRENT_LOG=$RUN/images.log
"$TESTENV_PYTHON" "$HERE/mk_oci_layout.py" "$RUN/oci" --single-tag "$SINGLE_TAG" --index-tag "$INDEX_TAG" \
  > "$RUN/oci-digests.json" 2>>"$CURRENT_LOG"
jqd() { jq -er ".$1" "$RUN/oci-digests.json"; }
SINGLE_DIGEST=$(jqd single_digest)
INDEX_DIGEST=$(jqd index_digest)
AMD64_DIGEST=$(jqd amd64_digest)
ARM64_DIGEST=$(jqd arm64_digest)
# Our own policy so skopeo does not depend on /etc/containers/policy.json being present.
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$RUN/oci/policy.json"

# push HOSTPORT [CREDS]: both tags, byte for byte (--preserve-digests fails rather than convert).
push() {
  local hp=$1 creds=${2:-}
  local -a c=()
  [ -n "$creds" ] && c=(--dest-creds "$creds")
  "$SKOPEO" --policy "$RUN/oci/policy.json" copy --quiet --preserve-digests --dest-tls-verify=false \
    "${c[@]}" "oci:$RUN/oci:$SINGLE_TAG" "docker://$hp/$REPO:$SINGLE_TAG" >>"$CURRENT_LOG" 2>&1
  "$SKOPEO" --policy "$RUN/oci/policy.json" copy --quiet --preserve-digests --dest-tls-verify=false --all \
    "${c[@]}" "oci:$RUN/oci:$INDEX_TAG" "docker://$hp/$REPO:$INDEX_TAG" >>"$CURRENT_LOG" 2>&1
}
push "$REG"
push "$REG_BASIC" "$BASIC_USER:$BASIC_PASSWORD"
push "$REG_BEARER" "$BEARER_USER:$BEARER_PASSWORD"

# ------------------------------------------------------------------ verify digests
ACCEPT="application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"
ACCEPT="$ACCEPT, application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT="$ACCEPT, application/vnd.docker.distribution.manifest.v2+json"
# head HOSTPORT REF [curl auth args...]: prints "HTTP_CODE DIGEST".
head_manifest() {
  local hp=$1 ref=$2
  shift 2
  curl -s -I --max-time 10 -H "Accept: $ACCEPT" "$@" "http://$hp/v2/$REPO/manifests/$ref" \
    | tr -d '\r' | awk 'NR==1{code=$2} tolower($1)=="docker-content-digest:"{d=$2} END{print code, d}'
}
bearer_token() {
  curl -fsS --max-time 10 -u "$BEARER_USER:$BEARER_PASSWORD" \
    "$BEARER_REALM?service=$BEARER_SERVICE&scope=repository:$REPO:pull" | jq -er .token
}
# check HOSTPORT [curl auth args...]: every tag and digest answers with the expected digest.
check_registry() {
  local hp=$1 ref want got
  shift
  for pair in "$SINGLE_TAG=$SINGLE_DIGEST" "$INDEX_TAG=$INDEX_DIGEST" "$SINGLE_DIGEST=$SINGLE_DIGEST" \
      "$INDEX_DIGEST=$INDEX_DIGEST" "$AMD64_DIGEST=$AMD64_DIGEST" "$ARM64_DIGEST=$ARM64_DIGEST"; do
    ref=${pair%=*}; want=${pair##*=}
    got=$(head_manifest "$hp" "$ref" "$@")
    [ "$got" = "200 $want" ] || testenv_die "HEAD $hp/$REPO:$ref gave '$got', expected '200 $want'"
  done
}
CURRENT_LOG=$RUN/registry.log
check_registry "$REG"
CURRENT_LOG=$RUN/registry-basic.log
check_registry "$REG_BASIC" -u "$BASIC_USER:$BASIC_PASSWORD"
[ "$(head_manifest "$REG_BASIC" "$SINGLE_TAG")" = "401 " ] || testenv_die "anonymous HEAD on $REG_BASIC not refused"
CURRENT_LOG=$RUN/registry-bearer.log
check_registry "$REG_BEARER" -H "Authorization: Bearer $(bearer_token)"
[ "$(head_manifest "$REG_BEARER" "$SINGLE_TAG")" = "401 " ] || testenv_die "anonymous HEAD on $REG_BEARER not refused"

# ------------------------------------------------------------------ env file
CURRENT_LOG=""
cat > "$RUN/testenv.env.tmp" <<EOF
TESTENV_RUN_DIR=$RUN
TESTENV_KUBECONFIG=$RUN/kubeconfig
TESTENV_KUBECONFIG_NOBODY=$RUN/kubeconfig-nobody
TESTENV_KUBECONFIG_SA=$RUN/kubeconfig-sa
TESTENV_APISERVER_URL=$API_URL
TESTENV_ADMIN_TOKEN=$ADMIN_TOKEN
TESTENV_NOBODY_TOKEN=$NOBODY_TOKEN
TESTENV_SA_TOKEN=$SA_TOKEN
TESTENV_SA_NAMESPACE=$SA_NS
TESTENV_SA_NAME=$SA_NAME
TESTENV_CA_CERT=$TLS/ca.crt
TESTENV_TLS_DIR=$TLS
TESTENV_WEBHOOK_CLIENT_CA=$TLS/webhook-client-ca.crt
TESTENV_WEBHOOK_CLIENT_CERT=$TLS/webhook-client.crt
TESTENV_WEBHOOK_CLIENT_KEY=$TLS/webhook-client.key
TESTENV_ETCD_URL=$ETCD_URL
TESTENV_STORAGE_JSON=$STORAGE_JSON
TESTENV_REGISTRY=$REG
TESTENV_REGISTRY_BASIC=$REG_BASIC
TESTENV_REGISTRY_BASIC_USER=$BASIC_USER
TESTENV_REGISTRY_BASIC_PASSWORD=$BASIC_PASSWORD
TESTENV_REGISTRY_BEARER=$REG_BEARER
TESTENV_REGISTRY_BEARER_USER=$BEARER_USER
TESTENV_REGISTRY_BEARER_PASSWORD=$BEARER_PASSWORD
TESTENV_REGISTRY_BEARER_REALM=$BEARER_REALM
TESTENV_REGISTRY_BEARER_SERVICE=$BEARER_SERVICE
TESTENV_IMAGE_REPO=$REPO
TESTENV_IMAGE_SINGLE_TAG=$SINGLE_TAG
TESTENV_IMAGE_SINGLE_DIGEST=$SINGLE_DIGEST
TESTENV_IMAGE_INDEX_TAG=$INDEX_TAG
TESTENV_IMAGE_INDEX_DIGEST=$INDEX_DIGEST
TESTENV_IMAGE_AMD64_DIGEST=$AMD64_DIGEST
TESTENV_IMAGE_ARM64_DIGEST=$ARM64_DIGEST
HELM=$HELM
KUBECTL=$KUBECTL
KUBERNETES_VALIDATE=$KUBERNETES_VALIDATE
PROMTOOL=$PROMTOOL
KUBE_APISERVER=$KUBE_APISERVER
ETCD=$ETCD
SKOPEO=$SKOPEO
EOF
mv "$RUN/testenv.env.tmp" "$RUN/testenv.env"
STARTED=1
testenv_log "ready in ${SECONDS}s: apiserver $API_URL, registries $REG $REG_BASIC $REG_BEARER; env: $RUN/testenv.env"
