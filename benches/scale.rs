//! The reporter at Kubernetes' largest supported size, against the real test
//! environment (kube-apiserver 1.20 + etcd) and the strict fake Kosli, with the
//! operator's binary (`hack/bench.sh` gives it the `dist` build the image
//! ships, and the image's environment) and its default pacing:
//!
//! 1. 150,000 Running pods of 2 containers (50 namespaces, deployments of 20
//!    replicas sharing labels, owner and images; realistic objects with
//!    managed fields, env, volumes, probes and tolerations) are written
//!    straight into etcd as JSON: through the API they would take many minutes
//!    on 2 cores. The API server must store JSON (`TESTENV_STORAGE_JSON=1`).
//! 2. The operator's floor: its memory with no pods, before the pods exist.
//! 3. The operator with one KosliEnvironment selecting every pod: time to the
//!    first full report; lone changes; a rollout of 1% of the pods; a quiet
//!    period; a forced re-list (a second KosliEnvironment whose pod selector
//!    names a label key no selector used before). Its resident set is sampled
//!    every 50 ms throughout.
//! 4. The CronJob way at the same size: one `kosli-operator snapshot` run.
//!
//! ```sh
//! TESTENV_STORAGE_JSON=1 hack/testenv/with-testenv.sh \
//!     cargo bench --locked --bench scale -- --pods 150000
//! ```

#![allow(clippy::unwrap_used)] // a benchmark may panic on what it does not expect

#[path = "../tests/support/mod.rs"]
mod support;
#[macro_use]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{
    ApiMetrics, ApiServer, Key, cpu_seconds, fmt_duration, met, peak_rss_kb, percentile, rss_kb,
    snapshot_once,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kosli_operator::core::crd::KosliEnvironment;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};
use support::fake_kosli::{FakeKosli, ORG};
use support::operator::Operator;
use support::testenv::{TestEnv, apply_crd, create_namespace, unique};

/// Pods are spread over this many namespaces...
const NAMESPACES: usize = 50;
/// ...in deployments of this many replicas (deployment d lives in namespace d % 50).
const REPLICAS: usize = 20;
/// Lone changes measured, one at a time.
const LONE_CHANGES: usize = 20;
/// A lone change is made this long after the last report and the last
/// change: a quiet period, well past the default debounce of 1 s.
const LONE_SPACING: Duration = Duration::from_millis(2500);
/// Status patches in flight during the rollout.
const PATCH_CONCURRENCY: usize = 16;
/// Pods per etcd transaction, and transactions in flight.
const ETCD_BATCH: usize = 100;
const ETCD_IN_FLIGHT: usize = 4;
/// The quiet period after the rollout, in which nothing changes.
const QUIET: Duration = Duration::from_secs(15);
/// How often the operator's resident set is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Far beyond the run, so that no heartbeat falls into it and every PUT
/// counted is one a change (or a start) caused.
const HEARTBEAT_SECONDS: u64 = 3600;
/// Limits per step; the whole run is aborted after `OVERALL_LIMIT`.
const WRITE_LIMIT: Duration = Duration::from_secs(360);
const FIRST_REPORT_LIMIT: Duration = Duration::from_secs(240);
const LONE_LIMIT: Duration = Duration::from_secs(20);
const ROLLOUT_LIMIT: Duration = Duration::from_secs(60);
const RELIST_LIMIT: Duration = Duration::from_secs(240);
const SNAPSHOT_LIMIT: Duration = Duration::from_secs(240);
const OVERALL_LIMIT: Duration = Duration::from_secs(14 * 60);

/// The budgets of docs/performance.md at 150k pods.
const PEAK_RSS_BUDGET_MIB: f64 = 256.0;
const FLOOR_BUDGET_MB: f64 = 20.0;
const PER_POD_BUDGET_B: f64 = 1000.0;
const FIRST_REPORT_BUDGET: Duration = Duration::from_secs(60);
const LONE_P50_BUDGET: Duration = Duration::from_millis(500);
const LONE_P99_BUDGET: Duration = Duration::from_secs(1);
const ROLLOUT_P99_BUDGET: Duration = Duration::from_secs(5);

fn usage(message: &str) -> ! {
    eprintln!("scale: {message}\nusage: scale [--pods N (a multiple of 2000, default 150000)]");
    std::process::exit(2)
}

/// The number of pods: a multiple of 2,000 so that 1% of them is whole deployments.
fn parse_args() -> usize {
    let mut pods = 150_000;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            "--pods" => {
                pods = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n: &usize| *n >= 2000 && n.is_multiple_of(2000))
                    .unwrap_or_else(|| usage("--pods takes a multiple of 2000"));
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    pods
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    common::start("scale");
    let pods = parse_args();
    match tokio::time::timeout(OVERALL_LIMIT, run(pods)).await {
        Ok(markdown) => {
            print!("{markdown}");
            progress!("done");
        }
        Err(_) => {
            progress!(
                "hard time limit of {} s reached: aborted",
                OVERALL_LIMIT.as_secs()
            );
            std::process::exit(1);
        }
    }
}

// ------------------------------------------------------------------ the fleet of pods

const APPS: [&str; 25] = [
    "checkout",
    "cart",
    "catalog",
    "payments",
    "search",
    "auth",
    "orders",
    "inventory",
    "shipping",
    "billing",
    "reviews",
    "recommend",
    "notify",
    "gateway",
    "profile",
    "ledger",
    "pricing",
    "media",
    "session",
    "analytics",
    "fraud",
    "loyalty",
    "support",
    "returns",
    "tax",
];
const TEAMS: [&str; 10] = [
    "shop", "pay", "core", "data", "growth", "platform", "search", "ops", "mobile", "partners",
];
const TIERS: [&str; 3] = ["frontend", "backend", "worker"];
/// The label the second KosliEnvironment selects on; no selector uses its key before.
const RELIST_TIER: &str = "backend";
const SIDECAR_IMAGE: &str = "docker.io/envoyproxy/envoy:v1.28.1";
const SIDECAR_ID: &str = "docker.io/envoyproxy/envoy@sha256:\
                          7b1f5b2e6d0c4a3f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f";

/// A cheap, well-mixed hash (splitmix64), so generated names and uids look random.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `len` characters of the alphabet Kubernetes uses for generated name suffixes.
fn suffix(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = mix(seed);
    (0..len)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize];
            x /= ALPHABET.len() as u64;
            c as char
        })
        .collect()
}

fn uuid(seed: u64) -> String {
    let (a, b) = (mix(seed), mix(seed ^ 0x5555_5555_5555_5555));
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// The app image digest of deployment `d` at `version` (0: as created).
fn digest(version: usize, d: usize) -> String {
    format!("{:016x}{:016x}{:032x}", mix(d as u64), version, d + 1)
}

/// One deployment: its replicas share labels, owner and images.
struct Deployment {
    d: usize,
    app: String,
    team: &'static str,
    tier: &'static str,
    namespace: String,
    replica_set: String,
    hash: String,
    rs_uid: String,
    repo: String,
    /// The spec image: by tag, or for a few deployments pinned by digest.
    image: String,
}

impl Deployment {
    fn pinned(d: usize) -> bool {
        d % 25 == 7
    }

    fn new(id: &str, d: usize) -> Self {
        let app = format!("{}-{d:04}", APPS[d % APPS.len()]);
        let team = TEAMS[d % TEAMS.len()];
        let hash = suffix(d as u64 ^ 0xd3b1, 10);
        let repo = format!("registry.example.com/{team}/{app}");
        let image = if Self::pinned(d) {
            format!("{repo}@sha256:{}", digest(0, d))
        } else {
            format!("{repo}:1.{}.{}", d % 9, d % 4)
        };
        Self {
            d,
            team,
            tier: TIERS[d % TIERS.len()],
            namespace: format!("{id}-ns{:02}", d % NAMESPACES),
            replica_set: format!("{app}-{hash}"),
            rs_uid: uuid(d as u64 ^ 0x7a11_0000_0000),
            hash,
            repo,
            image,
            app,
        }
    }

    fn labels(&self) -> Value {
        json!({
            "app": self.app,
            "app.kubernetes.io/name": self.app,
            "app.kubernetes.io/instance": self.app,
            "app.kubernetes.io/version": format!("1.{}.{}", self.d % 9, self.d % 4),
            "app.kubernetes.io/component": "server",
            "app.kubernetes.io/part-of": "shop",
            "app.kubernetes.io/managed-by": "Helm",
            "pod-template-hash": self.hash,
            "team": self.team,
            "tier": self.tier,
        })
    }
}

/// The container statuses a kubelet reports, the app running `app_hex`.
fn container_statuses(dep: &Deployment, pod_seed: u64, app_hex: &str) -> Value {
    let started = "2026-11-20T08:14:07Z";
    json!([
        {"name": "app", "state": {"running": {"startedAt": started}}, "lastState": {},
         "ready": true, "restartCount": 0, "image": dep.image,
         "imageID": format!("{}@sha256:{app_hex}", dep.repo),
         "containerID": format!("containerd://{:016x}{:016x}", mix(pod_seed), mix(pod_seed.wrapping_add(1))),
         "started": true},
        {"name": "envoy", "state": {"running": {"startedAt": started}}, "lastState": {},
         "ready": true, "restartCount": 0, "image": SIDECAR_IMAGE, "imageID": SIDECAR_ID,
         "containerID": format!("containerd://{:016x}{:016x}", mix(pod_seed.wrapping_add(2)), mix(pod_seed.wrapping_add(3))),
         "started": true}
    ])
}

/// `{".":{},"f:a":{},"f:b":{}}` for the given keys, as managedFields list them.
fn fields(keys: impl IntoIterator<Item = String>) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(".".into(), json!({}));
    for key in keys {
        map.insert(format!("f:{key}"), json!({}));
    }
    Value::Object(map)
}

/// A list item's key in managedFields: `k:{"name":"app"}`.
fn keyed(key: &str, value: &str) -> String {
    format!("k:{{\"{key}\":\"{value}\"}}")
}

struct Fleet {
    id: String,
    n: usize,
}

impl Fleet {
    fn deployments(&self) -> usize {
        self.n / REPLICAS
    }

    fn namespace(&self, k: usize) -> String {
        format!("{}-ns{k:02}", self.id)
    }

    fn pod_name(dep: &Deployment, i: usize) -> String {
        format!("{}-{}", dep.replica_set, suffix(i as u64, 5))
    }

    /// Pod `i` as the API server stores it: Running, both containers pulled.
    fn pod(&self, i: usize) -> Value {
        let dep = Deployment::new(&self.id, i / REPLICAS);
        let name = Self::pod_name(&dep, i);
        let seed = mix(i as u64 ^ 0xb0d5);
        let node = format!("node-{:04}", i % 1400);
        let host_ip = format!("10.0.{}.{}", (i % 1400) / 250, (i % 1400) % 250 + 2);
        let pod_ip = format!("10.{}.{}.{}", 64 + i / 65_000, (i / 250) % 260, i % 250 + 2);
        let created = format!(
            "2026-11-20T08:{:02}:{:02}Z",
            (dep.d / 60) % 60,
            (dep.d + i % REPLICAS) % 60
        );
        let labels = dep.labels();
        let env = [
            ("LOG_LEVEL", "info"),
            ("LOG_FORMAT", "json"),
            ("PORT", "8080"),
            ("APP_ENV", "prod"),
            ("REGION", "eu-west-1"),
            ("OTEL_ENDPOINT", "http://otel:4317"),
            ("SERVICE", dep.app.as_str()),
            ("DB_HOST", "pg.db.svc"),
            ("DB_PORT", "5432"),
            ("DB_USER", dep.app.as_str()),
            ("MAX_CONN", "64"),
            ("CACHE_TTL", "300"),
            ("TZ", "UTC"),
        ]
        .into_iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .chain(
            [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")].map(
                |(k, path)| json!({"name": k, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}),
            ),
        )
        .collect::<Vec<_>>();
        let token_volume = format!(
            "default-token-{}",
            suffix(dep.d as u64 % NAMESPACES as u64, 5)
        );
        let mounts = json!([
            {"name": "config", "readOnly": true, "mountPath": "/etc/app"},
            {"name": token_volume, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
        ]);
        let label_keys = labels
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>();
        let controller_fields = json!({
            "f:metadata": {
                "f:generateName": {},
                "f:labels": fields(label_keys),
                "f:ownerReferences": {".": {}, keyed("uid", &dep.rs_uid): {}},
            },
            "f:spec": {
                "f:containers": {
                    keyed("name", "app"): {
                        ".": {}, "f:env": {}, "f:image": {}, "f:name": {}, "f:readinessProbe": {},
                        "f:resources": {}, "f:volumeMounts": {},
                    },
                    keyed("name", "envoy"): {".": {}, "f:image": {}, "f:name": {}},
                },
            }
        });
        let kubelet_fields = json!({
            "f:status": {
                "f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {},
                "f:podIP": {}, "f:podIPs": {},
                "f:startTime": {},
            }
        });
        let condition =
            |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": created});
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "generateName": format!("{}-", dep.replica_set),
                "namespace": dep.namespace,
                "uid": uuid(seed),
                "creationTimestamp": created,
                "labels": labels,
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": dep.replica_set,
                    "uid": dep.rs_uid, "controller": true, "blockOwnerDeletion": true
                }],
                "managedFields": [
                    {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                     "time": created, "fieldsType": "FieldsV1", "fieldsV1": controller_fields},
                    {"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                     "time": created, "fieldsType": "FieldsV1", "fieldsV1": kubelet_fields}
                ]
            },
            "spec": {
                "volumes": [
                    {"name": "config", "configMap": {"name": format!("{}-config", dep.app), "defaultMode": 420}},
                    {"name": token_volume, "secret": {"secretName": token_volume, "defaultMode": 420}}
                ],
                "containers": [
                    {
                        "name": "app",
                        "image": dep.image,
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "env": env,
                        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "requests": {"cpu": "250m", "memory": "256Mi"}},
                        "volumeMounts": mounts,
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
                            "timeoutSeconds": 1, "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 3},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                        "imagePullPolicy": "IfNotPresent"
                    },
                    {
                        "name": "envoy",
                        "image": SIDECAR_IMAGE,
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                        "imagePullPolicy": "IfNotPresent"
                    }
                ],
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 30,
                "dnsPolicy": "ClusterFirst",
                "serviceAccountName": "default",
                "serviceAccount": "default",
                "nodeName": node,
                "securityContext": {},
                "schedulerName": "default-scheduler",
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
                ],
                "priority": 0,
                "enableServiceLinks": true,
                "preemptionPolicy": "PreemptLowerPriority"
            },
            "status": {
                "phase": "Running",
                "conditions": [condition("Initialized"), condition("Ready"), condition("ContainersReady"), condition("PodScheduled")],
                "hostIP": host_ip,
                "podIP": pod_ip,
                "podIPs": [{"ip": pod_ip}],
                "startTime": created,
                "containerStatuses": container_statuses(&dep, seed, &digest(0, dep.d)),
                "qosClass": "Burstable"
            }
        })
    }

    /// The etcd key and stored bytes of pod `i`.
    fn stored(&self, i: usize) -> (String, Vec<u8>) {
        let pod = self.pod(i);
        let key = format!(
            "/registry/pods/{}/{}",
            pod["metadata"]["namespace"].as_str().unwrap(),
            pod["metadata"]["name"].as_str().unwrap()
        );
        (key, serde_json::to_vec(&pod).unwrap())
    }

    /// The rollout: 1% of the pods, all replicas of whole deployments spread
    /// over the fleet, none pinned by digest.
    fn rollout_deployments(&self) -> Vec<usize> {
        let count = self.n / 100 / REPLICAS;
        let step = self.deployments() / count;
        (0..count)
            .map(|j| {
                let d = j * step + 1;
                if Deployment::pinned(d) { d + 1 } else { d }
            })
            .collect()
    }

    /// The pod of the `k`-th lone change: in a deployment neither rolled out
    /// nor pinned, a different one each time.
    fn lone_pod(&self, k: usize, rollout: &[usize]) -> usize {
        let candidates: Vec<usize> = (0..self.deployments())
            .filter(|d| !Deployment::pinned(*d) && !rollout.contains(d))
            .collect();
        let d = candidates[(k * 37 + 11) % candidates.len()];
        d * REPLICAS + k % REPLICAS
    }

    /// Pods the second KosliEnvironment selects.
    fn relist_selected(&self) -> usize {
        (0..self.deployments())
            .filter(|d| TIERS[d % TIERS.len()] == RELIST_TIER)
            .count()
            * REPLICAS
    }

    /// Plays the kubelet after a new image was pulled: pod `i`'s app container
    /// now runs `hex`. Returns when the API server has answered.
    async fn patch(&self, client: &Client, i: usize, hex: &str) -> Change {
        let dep = Deployment::new(&self.id, i / REPLICAS);
        let name = Self::pod_name(&dep, i);
        let seed = mix(i as u64 ^ 0xb0d5);
        let patch = json!({"status": {"containerStatuses": container_statuses(&dep, seed, hex)}});
        Api::<Pod>::namespaced(client.clone(), &dep.namespace)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        Change {
            namespace: dep.namespace,
            name,
            hex: hex.to_owned(),
            patched: Instant::now(),
        }
    }
}

// ------------------------------------------------------------------ etcd

/// etcd's v3 JSON gateway (plain HTTP on loopback).
struct Etcd {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/v3` (or `/v3beta` on older etcd).
    base: String,
}

impl Etcd {
    async fn connect() -> Self {
        let url = support::testenv::var("TESTENV_ETCD_URL");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        for prefix in ["v3", "v3beta"] {
            let base = format!("{url}/{prefix}");
            let ok = http
                .post(format!("{base}/maintenance/status"))
                .body("{}")
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Self { http, base };
            }
        }
        panic!("etcd at {url} serves neither /v3/ nor /v3beta/ JSON gateway");
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> Value {
        let response = self
            .http
            .post(format!("{}/{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        assert!(
            status.is_success(),
            "etcd {path}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Writes the pairs in one transaction.
    async fn put_all(&self, pairs: &[(String, Vec<u8>)]) {
        let ops: Vec<Value> = pairs
            .iter()
            .map(|(k, v)| json!({"requestPut": {"key": BASE64.encode(k), "value": BASE64.encode(v)}}))
            .collect();
        let answer = self
            .post(
                "kv/txn",
                serde_json::to_vec(&json!({"success": ops})).unwrap(),
            )
            .await;
        assert_eq!(
            answer["succeeded"].as_bool(),
            Some(true),
            "etcd transaction failed: {answer}"
        );
    }

    async fn db_size(&self) -> u64 {
        let status = self.post("maintenance/status", b"{}".to_vec()).await;
        match &status["dbSize"] {
            Value::String(s) => s.parse().unwrap_or(0),
            v => v.as_u64().unwrap_or(0),
        }
    }
}

/// Writes every pod of the fleet into etcd, in streaming batches (never all
/// in memory), the last pod alone and last of all: once the API server's
/// watch cache has it, it has every other. Returns the JSON bytes written.
async fn write_pods(etcd: &Etcd, fleet: &Fleet) -> usize {
    let bytes = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let last = fleet.n - 1;
    let batches: Vec<std::ops::Range<usize>> = (0..last)
        .step_by(ETCD_BATCH)
        .map(|start| start..(start + ETCD_BATCH).min(last))
        .collect();
    futures::stream::iter(batches)
        .map(|range| {
            let pairs: Vec<(String, Vec<u8>)> = range.map(|i| fleet.stored(i)).collect();
            bytes.fetch_add(
                pairs.iter().map(|(_, v)| v.len()).sum::<usize>(),
                Ordering::Relaxed,
            );
            async move {
                etcd.put_all(&pairs).await;
                pairs.len()
            }
        })
        .buffer_unordered(ETCD_IN_FLIGHT)
        .for_each(|written| {
            let before = done.fetch_add(written, Ordering::Relaxed);
            if (before + written) / 10_000 > before / 10_000 {
                progress!("{} pods written to etcd", before + written);
            }
            async {}
        })
        .await;
    let pair = fleet.stored(last);
    bytes.fetch_add(pair.1.len(), Ordering::Relaxed);
    etcd.put_all(&[pair]).await;
    bytes.into_inner()
}

/// Waits until the API server serves the fleet: the last pod written is in
/// its watch cache (so every earlier one is), a quorum list counts all of
/// them, and a pod reads back Running with digests.
async fn verify_served(api: &ApiServer, fleet: &Fleet) {
    let last = fleet.n - 1;
    let dep = Deployment::new(&fleet.id, last / REPLICAS);
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}",
        dep.namespace,
        Fleet::pod_name(&dep, last)
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (status, body) = api.get(&format!("{path}?resourceVersion=0")).await;
        if status == 200 {
            let pod: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(pod["status"]["phase"], "Running", "served pod: {pod}");
            let ids: Vec<&str> = pod["status"]["containerStatuses"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|c| c["imageID"].as_str())
                .collect();
            assert!(
                ids.len() == 2 && ids.iter().all(|id| id.contains("@sha256:")),
                "served pod has no digests: {ids:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the API server's watch cache does not have {path} after 180 s (status {status})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, body) = api.get("/api/v1/pods?limit=1").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let list: Value = serde_json::from_slice(&body).unwrap();
    let listed = list["items"].as_array().map_or(0, Vec::len) as u64
        + list["metadata"]["remainingItemCount"].as_u64().unwrap_or(0);
    assert_eq!(
        listed, fleet.n as u64,
        "the API server lists {listed} pods, {} were written",
        fleet.n
    );
}

// ------------------------------------------------------------------ Kosli PUTs

/// The part of a report body the bench reads, borrowed from the body.
#[derive(Deserialize)]
struct ReportRef<'a> {
    #[serde(borrow)]
    artifacts: Vec<ArtifactRef<'a>>,
}

#[derive(Deserialize)]
struct ArtifactRef<'a> {
    #[serde(rename = "podName")]
    pod_name: &'a str,
    namespace: &'a str,
    #[serde(borrow)]
    digests: BTreeMap<&'a str, &'a str>,
}

/// When a watch of the bench's own first saw each expected change: the
/// API server delivers it to the operator's watch at about the same time, so
/// a change's latency splits into the API server's delivery (patch to seen)
/// and the operator's own (seen to Kosli).
struct Sightings {
    seen: Arc<Mutex<HashMap<(String, String), Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sightings {
    /// Starts watching every pod from now; `expected`: (namespace, name) ->
    /// the digest hex its status will carry.
    async fn start(client: &Client, expected: HashMap<(String, String), String>) -> Self {
        let api = Api::<Pod>::all(client.clone());
        let version = api
            .list_metadata(&kube::api::ListParams::default().limit(1))
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let stream = api
            .watch(&kube::api::WatchParams::default().timeout(290), &version)
            .await
            .unwrap();
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(event)) = stream.next().await {
                let kube::api::WatchEvent::Modified(pod) = event else {
                    continue;
                };
                let at = Instant::now();
                let key = (
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    pod.metadata.name.clone().unwrap_or_default(),
                );
                let Some(hex) = expected.get(&key) else {
                    continue;
                };
                let carries = pod
                    .status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
                    .any(|c| c.image_id.contains(hex.as_str()));
                if carries {
                    recorded.lock().unwrap().entry(key).or_insert(at);
                }
            }
        });
        Self { seen, task }
    }

    /// Per settled change: (patch to seen, seen to Kosli); changes the watch
    /// did not see are left out.
    fn split(
        self,
        arrivals: &[(String, String, Instant, Instant)],
    ) -> (Vec<Duration>, Vec<Duration>) {
        self.task.abort();
        let seen = self.seen.lock().unwrap();
        let (mut delivery, mut own) = (Vec::new(), Vec::new());
        for (namespace, name, patched, arrived) in arrivals {
            if let Some(at) = seen.get(&(namespace.clone(), name.clone())) {
                delivery.push(at.saturating_duration_since(*patched));
                own.push(arrived.saturating_duration_since(*at));
            }
        }
        delivery.sort();
        own.sort();
        (delivery, own)
    }
}

/// A pod whose status was patched to a new digest, waiting for a PUT with it.
struct Change {
    namespace: String,
    name: String,
    hex: String,
    patched: Instant,
}

/// A report PUT as it reached the fake Kosli.
#[derive(Clone)]
struct Put {
    env: String,
    /// When its head reached the fake (`at`: when its whole body had).
    began: Instant,
    at: Instant,
    artifacts: usize,
    bytes: usize,
}

/// Follows the PUTs of every environment as they reach the fake Kosli, and
/// settles the pending changes of one.
struct Tracker {
    /// The environment whose changes are followed.
    env: String,
    puts: Vec<Put>,
    /// namespace -> name -> (new digest, patched at)
    pending: HashMap<String, HashMap<String, (String, Instant)>>,
    pending_count: usize,
    latencies: Vec<Duration>,
    /// (namespace, name, patched, arrived at the fake) of each settled change.
    arrivals: Vec<(String, String, Instant, Instant)>,
    /// How long the fake took to validate and store each report.
    handling: Vec<Duration>,
}

impl Tracker {
    fn new(env: &str) -> Self {
        Self {
            env: env.to_owned(),
            puts: Vec::new(),
            pending: HashMap::new(),
            pending_count: 0,
            latencies: Vec::new(),
            arrivals: Vec::new(),
            handling: Vec::new(),
        }
    }

    fn expect(&mut self, change: Change) {
        let previous = self
            .pending
            .entry(change.namespace)
            .or_default()
            .insert(change.name, (change.hex, change.patched));
        if previous.is_none() {
            self.pending_count += 1;
        }
    }

    /// Takes what the fake recorded so far (so 60 MB bodies do not pile up
    /// there) and settles the changes the new PUTs carry.
    fn poll(&mut self, fake: &FakeKosli) {
        let (requests, landed, reports) = {
            let mut state = fake.state();
            (
                std::mem::take(&mut state.requests),
                std::mem::take(&mut state.landed),
                std::mem::take(&mut state.reports),
            )
        };
        // Freeing parsed 80 MB reports takes a while: not while the fake,
        // which stores the next one under this lock, waits for it.
        drop(reports);
        self.handling
            .extend(landed.iter().map(|l| l.landed.duration_since(l.started)));
        let prefix = format!("/api/v2/environments/{ORG}/");
        for request in requests {
            let Some(env) = request
                .path
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix("/report/K8S"))
            else {
                continue;
            };
            if request.method != "PUT" {
                continue;
            }
            // Parsing a 60 MB body takes a while: let the runtime move the
            // fake Kosli's tasks to the other worker meanwhile.
            let artifacts = tokio::task::block_in_place(|| {
                let report: ReportRef = serde_json::from_slice(&request.body).unwrap();
                if env == self.env && self.pending_count > 0 {
                    for a in &report.artifacts {
                        let Some(names) = self.pending.get_mut(a.namespace) else {
                            continue;
                        };
                        let Some((hex, patched)) = names.get(a.pod_name) else {
                            continue;
                        };
                        if a.digests.values().any(|d| d == hex) {
                            self.latencies
                                .push(request.at.saturating_duration_since(*patched));
                            self.arrivals.push((
                                a.namespace.to_owned(),
                                a.pod_name.to_owned(),
                                *patched,
                                request.at,
                            ));
                            names.remove(a.pod_name);
                            self.pending_count -= 1;
                        }
                    }
                }
                report.artifacts.len()
            });
            self.puts.push(Put {
                env: env.to_owned(),
                began: request.began,
                at: request.at,
                artifacts,
                bytes: request.body.len(),
            });
        }
    }

    /// PUTs to `env` that arrived at or after `from` (and before `to`).
    fn count(&self, env: Option<&str>, from: Instant, to: Option<Instant>) -> usize {
        self.puts
            .iter()
            .filter(|p| env.is_none_or(|e| p.env == e))
            .filter(|p| p.at >= from && to.is_none_or(|t| p.at < t))
            .count()
    }

    fn last_put(&self) -> Option<Instant> {
        self.puts.iter().map(|p| p.at).max()
    }

    /// Polls until a PUT to `env` with `artifacts` pods arrived at or after
    /// `after`; fails with the operator's log if the operator died or
    /// `limit` passed.
    async fn wait_report(
        &mut self,
        fake: &FakeKosli,
        op: &Operator,
        env: &str,
        after: Instant,
        artifacts: usize,
        limit: Duration,
    ) -> Put {
        let deadline = Instant::now() + limit;
        loop {
            self.poll(fake);
            if let Some(put) = self
                .puts
                .iter()
                .find(|p| p.env == env && p.at >= after && p.artifacts == artifacts)
            {
                return put.clone();
            }
            check_alive(op);
            if Instant::now() >= deadline {
                let seen: Vec<usize> = self
                    .puts
                    .iter()
                    .filter(|p| p.env == env && p.at >= after)
                    .map(|p| p.artifacts)
                    .collect();
                panic!(
                    "no report of {env} with {artifacts} pods within {limit:?} (reports seen, by size: {seen:?}); \
                     the operator's log ends with:\n{}",
                    log_tail(op)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until every pending change was reported, or `limit` passed;
    /// returns how many were not reported (and forgets them).
    async fn settle(&mut self, fake: &FakeKosli, op: &Operator, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            self.poll(fake);
            if self.pending_count == 0 {
                return 0;
            }
            check_alive(op);
            if Instant::now() >= deadline {
                let missing = self.pending_count;
                progress!("{missing} changes not reported within {limit:?}");
                self.pending.clear();
                self.pending_count = 0;
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Keeps polling (so bodies do not pile up in the fake) for `period`.
    async fn idle(&mut self, fake: &FakeKosli, op: &Operator, period: Duration) {
        let until = Instant::now() + period;
        while Instant::now() < until {
            self.poll(fake);
            check_alive(op);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.poll(fake);
    }
}

// ------------------------------------------------------------------ the operator's process

fn log_tail(op: &Operator) -> String {
    let log = op.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Fails the benchmark, with the operator's log, if the operator has exited.
fn check_alive(op: &Operator) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", op.pid())).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    assert!(
        matches!(state, Some(s) if s != "Z" && s != "X"),
        "the operator exited; its log ends with:\n{}",
        log_tail(op)
    );
}

/// Whether the operator answers 200 on /readyz.
async fn ready(http: &reqwest::Client, op: &Operator) -> bool {
    http.get(format!("{}/readyz", op.http))
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() == 200)
}

/// Reads VmRSS of one process every 50 ms on a thread of its own.
struct Sampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kb) = rss_kb(pid) {
                        samples.lock().unwrap().push((Instant::now(), kb));
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        Self {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// The largest VmRSS sampled in [from, to), in kB.
    fn peak(&self, from: Instant, to: Instant) -> u64 {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, kb)| *kb)
            .max()
            .unwrap_or(0)
    }

    fn count(&self) -> usize {
        self.samples.lock().unwrap().len()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The machine's 1-minute load average: the run shares the machine.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// A process of the test environment, by its pid file.
fn testenv_pid(name: &str) -> u32 {
    let dir = support::testenv::var("TESTENV_RUN_DIR");
    std::fs::read_to_string(format!("{dir}/{name}.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The API server counts as quiet when it used less than this share of a
/// core over `QUIET_WINDOW`; waited for at most `QUIET_LIMIT`.
const QUIET_CPU: f64 = 0.25;
const QUIET_WINDOW: Duration = Duration::from_secs(3);
const QUIET_LIMIT: Duration = Duration::from_secs(120);

/// Waits until the API server is quiet (or `QUIET_LIMIT` passed); returns
/// how long that took.
async fn api_server_quiet(pids: &Pids) -> Duration {
    let started = Instant::now();
    loop {
        let before = cpu_seconds(pids.apiserver);
        tokio::time::sleep(QUIET_WINDOW).await;
        let used = cpu_seconds(pids.apiserver) - before;
        if used < QUIET_CPU * QUIET_WINDOW.as_secs_f64() || started.elapsed() >= QUIET_LIMIT {
            return started.elapsed();
        }
    }
}

/// What is read at each phase boundary.
struct Reading {
    at: Instant,
    /// The operator's VmHWM so far, in kB.
    operator_hwm_kb: u64,
    operator_cpu: f64,
    apiserver_cpu: f64,
    etcd_cpu: f64,
    metrics: ApiMetrics,
}

struct Pids {
    apiserver: u32,
    etcd: u32,
}

impl Pids {
    async fn read(&self, api: &ApiServer, operator: Option<u32>) -> Reading {
        Reading {
            at: Instant::now(),
            operator_hwm_kb: operator.and_then(peak_rss_kb).unwrap_or(0),
            operator_cpu: operator.map_or(0.0, cpu_seconds),
            apiserver_cpu: cpu_seconds(self.apiserver),
            etcd_cpu: cpu_seconds(self.etcd),
            metrics: api.metrics().await,
        }
    }
}

/// One phase of the operator's run, between two readings.
struct Phase {
    name: &'static str,
    took: Duration,
    peak_rss_kb: u64,
    hwm_kb: u64,
    operator_cpu: f64,
    apiserver_cpu: f64,
    pod_lists: f64,
    pod_list_bytes: f64,
}

fn pod_lists(metrics: &ApiMetrics) -> (f64, f64) {
    let key: Key = ("pods".into(), String::new(), "LIST".into());
    (
        metrics.requests.get(&key).copied().unwrap_or(0.0),
        metrics.response_bytes.get(&key).copied().unwrap_or(0.0),
    )
}

fn phase(name: &'static str, from: &Reading, to: &Reading, sampler: &Sampler) -> Phase {
    let (pod_lists, pod_list_bytes) = pod_lists(&to.metrics.since(&from.metrics));
    Phase {
        name,
        took: to.at - from.at,
        peak_rss_kb: sampler.peak(from.at, to.at),
        hwm_kb: to.operator_hwm_kb,
        operator_cpu: to.operator_cpu - from.operator_cpu,
        apiserver_cpu: to.apiserver_cpu - from.apiserver_cpu,
        pod_lists,
        pod_list_bytes,
    }
}

// ------------------------------------------------------------------ the run

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}

async fn create_environment(client: &Client, id: &str, name: &str, spec: Value) {
    let object: KosliEnvironment = serde_json::from_value(json!({
        "apiVersion": "kosli.com/v1alpha1", "kind": "KosliEnvironment",
        "metadata": {"name": name, "labels": {"test": id}},
        "spec": spec,
    }))
    .unwrap();
    Api::<KosliEnvironment>::all(client.clone())
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
}

async fn run(n: usize) -> String {
    assert_eq!(
        std::env::var("TESTENV_STORAGE_JSON").as_deref(),
        Ok("1"),
        "this benchmark writes pods into etcd as JSON: start the test environment with \
         TESTENV_STORAGE_JSON=1 (TESTENV_STORAGE_JSON=1 hack/testenv/with-testenv.sh ...)"
    );
    let load_at_start = load_average();
    let env = TestEnv::get();
    let client = env.client().await;
    apply_crd(&client).await;
    let api = ApiServer::new(&env);
    let pids = Pids {
        apiserver: testenv_pid("apiserver"),
        etcd: testenv_pid("etcd"),
    };
    let etcd = Etcd::connect().await;
    let id = unique("scale");
    let fleet = Fleet { id: id.clone(), n };
    let fake = FakeKosli::start().await;
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();

    for k in 0..NAMESPACES {
        create_namespace(&client, &fleet.namespace(k), &[]).await;
    }
    let main_env = format!("{id}-all");
    let regex = format!("^{id}-ns");
    create_environment(
        &client,
        &id,
        &main_env,
        json!({"namespacesRegex": [regex], "heartbeatSeconds": HEARTBEAT_SECONDS}),
    )
    .await;
    fake.add_environment(&main_env, "K8S");
    let mut tracker = Tracker::new(&main_env);

    // The floor: the operator with its environment and no pods yet.
    progress!("floor: the operator with no pods");
    let floor = {
        let mut op = Operator::start_default_pacing(
            &env.kubeconfig,
            &fake,
            &id,
            &format!("lease-{id}-floor"),
            &[],
            &[],
        );
        let started = Instant::now();
        op.wait_ready().await;
        tracker
            .wait_report(&fake, &op, &main_env, started, 0, Duration::from_secs(30))
            .await;
        tracker.idle(&fake, &op, Duration::from_secs(3)).await;
        let figures = (
            peak_rss_kb(op.pid()).unwrap_or(0),
            rss_kb(op.pid()).unwrap_or(0),
        );
        op.terminate().await;
        figures
    };
    progress!(
        "floor: VmHWM {:.1} MB, VmRSS {:.1} MB",
        mb(floor.0),
        mb(floor.1)
    );

    // The pods, straight into etcd.
    progress!(
        "writing {n} pods into etcd ({ETCD_BATCH} per transaction, {ETCD_IN_FLIGHT} in flight)"
    );
    let written = Instant::now();
    let json_bytes = tokio::time::timeout(WRITE_LIMIT, write_pods(&etcd, &fleet))
        .await
        .unwrap_or_else(|_| panic!("writing {n} pods into etcd took over {WRITE_LIMIT:?}"));
    let write_time = written.elapsed();
    progress!(
        "written in {:.1} s, {:.0} B of JSON per pod; waiting for the API server to serve them",
        write_time.as_secs_f64(),
        json_bytes as f64 / n as f64
    );
    verify_served(&api, &fleet).await;
    let served_after = written.elapsed();
    let db_size = etcd.db_size().await;
    progress!(
        "the API server serves {n} pods ({:.1} s after the first write); etcd holds {:.0} MB",
        served_after.as_secs_f64(),
        db_size as f64 / 1e6
    );

    // Pods written straight into etcd reach the API server's watch cache as
    // a backlog of events it decodes for a while after it serves them: the
    // operator starts once that is done, as on a cluster whose pods came
    // one by one, or its start-up list would be measured against it.
    let settled_after = api_server_quiet(&pids).await;
    progress!(
        "the API server was quiet (under {:.0}% of a core over {:.0} s) {:.1} s later",
        QUIET_CPU * 100.0,
        QUIET_WINDOW.as_secs_f64(),
        settled_after.as_secs_f64()
    );

    // The operator, measured.
    fake.state().requests.clear();
    let r0 = pids.read(&api, None).await;
    // SCALE_OPERATOR_RUST_LOG: the operator's log filter, for a diagnosis
    // (SCALE_OPERATOR_LOG names a file its log is copied to after the rollout).
    let log_filter = std::env::var("SCALE_OPERATOR_RUST_LOG").ok();
    let op_env: Vec<(&str, &str)> = log_filter
        .as_deref()
        .map(|filter| ("RUST_LOG", filter))
        .into_iter()
        .collect();
    let mut op = Operator::start_default_pacing(
        &env.kubeconfig,
        &fake,
        &id,
        &format!("lease-{id}"),
        &[],
        &op_env,
    );
    let started = Instant::now();
    let pid = op.pid();
    let sampler = Sampler::start(pid);
    let mut ready_after = None;
    let first = {
        let deadline = started + FIRST_REPORT_LIMIT;
        loop {
            if ready_after.is_none() && ready(&plain, &op).await {
                ready_after = Some(started.elapsed());
                progress!(
                    "operator ready after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let put = tokio::time::timeout(
                Duration::from_millis(500),
                tracker.wait_report(&fake, &op, &main_env, started, n, remaining),
            )
            .await;
            if let Ok(put) = put {
                break put;
            }
        }
    };
    let first_report = first.at - started;
    // Readiness is polled between waits of up to 500 ms for the report: when
    // the report follows readiness within one wait, it is seen only after.
    let ready_note = match ready_after {
        Some(d) => format!("after {:.1} s", d.as_secs_f64()),
        None if ready(&plain, &op).await => "by the first report".to_owned(),
        None => "never".to_owned(),
    };
    progress!(
        "first full report after {:.1} s ({:.1} MB body)",
        first_report.as_secs_f64(),
        first.bytes as f64 / 1e6
    );
    let r1 = pids.read(&api, Some(pid)).await;

    // Lone changes, each after a quiet period.
    let rollout = fleet.rollout_deployments();
    let mut lone_unreported = 0;
    for k in 0..LONE_CHANGES {
        let quiet_since = tracker.last_put().unwrap_or(started);
        let wait = (quiet_since + LONE_SPACING).saturating_duration_since(Instant::now());
        tracker.idle(&fake, &op, wait).await;
        let i = fleet.lone_pod(k, &rollout);
        let change = fleet
            .patch(&client, i, &digest(1000 + k, i / REPLICAS))
            .await;
        let patched = change.patched;
        tracker.expect(change);
        lone_unreported += tracker.settle(&fake, &op, LONE_LIMIT).await;
        // The next change waits for quiet after this one too.
        let wait = (patched + LONE_SPACING).saturating_duration_since(Instant::now());
        tracker.idle(&fake, &op, wait).await;
    }
    let mut lone = std::mem::take(&mut tracker.latencies);
    lone.sort();
    progress!(
        "{} lone changes: p50 {}, max {}",
        lone.len(),
        fmt_duration(percentile(&lone, 50.0)),
        fmt_duration(lone.last().copied().unwrap_or_default())
    );
    let r2 = pids.read(&api, Some(pid)).await;

    // A rollout of 1% of the pods at once.
    let rollout_pods: Vec<usize> = rollout
        .iter()
        .flat_map(|d| d * REPLICAS..(d + 1) * REPLICAS)
        .collect();
    let expected = rollout_pods
        .iter()
        .map(|&i| {
            let dep = Deployment::new(&fleet.id, i / REPLICAS);
            let name = Fleet::pod_name(&dep, i);
            ((dep.namespace, name), digest(1, i / REPLICAS))
        })
        .collect();
    let sightings = Sightings::start(&client, expected).await;
    tracker.arrivals.clear();
    let rollout_start = Instant::now();
    let changes: Vec<Change> = futures::stream::iter(rollout_pods.iter().copied())
        .map(|i| {
            let (client, fleet) = (&client, &fleet);
            async move { fleet.patch(client, i, &digest(1, i / REPLICAS)).await }
        })
        .buffer_unordered(PATCH_CONCURRENCY)
        .collect()
        .await;
    let rollout_applied = rollout_start.elapsed();
    for change in changes {
        tracker.expect(change);
    }
    let rollout_unreported = tracker.settle(&fake, &op, ROLLOUT_LIMIT).await;
    if let Ok(path) = std::env::var("SCALE_OPERATOR_LOG") {
        std::fs::write(path, op.log()).unwrap();
    }
    // Reports that trail the last change still belong to the rollout.
    tracker.idle(&fake, &op, Duration::from_secs(3)).await;
    let rollout_puts = tracker.count(Some(&main_env), rollout_start, None);
    let mut rolled = std::mem::take(&mut tracker.latencies);
    rolled.sort();
    let (delivery, own) = sightings.split(&std::mem::take(&mut tracker.arrivals));
    let uploads: Vec<String> = tracker
        .puts
        .iter()
        .filter(|p| p.env == main_env && p.began >= rollout_start)
        .map(|p| format!("{:.2}", p.at.duration_since(p.began).as_secs_f64()))
        .collect();
    progress!("rollout PUTs, upload seconds each: {}", uploads.join(" "));
    progress!(
        "rollout, {} changes seen by a watch: API server delivery p50 {} p99 {}; operator's own p50 {} p99 {}",
        own.len(),
        fmt_duration(percentile(&delivery, 50.0)),
        fmt_duration(percentile(&delivery, 99.0)),
        fmt_duration(percentile(&own, 50.0)),
        fmt_duration(percentile(&own, 99.0))
    );
    progress!(
        "rollout of {} pods (applied in {:.1} s): p99 {}, {rollout_puts} PUTs",
        rollout_pods.len(),
        rollout_applied.as_secs_f64(),
        fmt_duration(percentile(&rolled, 99.0))
    );
    let r3 = pids.read(&api, Some(pid)).await;

    // A quiet period: nothing changes, nothing should be sent.
    let quiet_start = Instant::now();
    tracker.idle(&fake, &op, QUIET).await;
    let quiet_puts = tracker.count(None, quiet_start, None);
    let settled_rss = rss_kb(pid).unwrap_or(0);
    progress!(
        "quiet {} s: {quiet_puts} PUTs; VmRSS {:.1} MiB",
        QUIET.as_secs(),
        mib(settled_rss)
    );
    let r4 = pids.read(&api, Some(pid)).await;

    // A forced re-list: a selector on a label key no selector used before.
    let relist_env = format!("{id}-{RELIST_TIER}");
    fake.add_environment(&relist_env, "K8S");
    let relist_start = Instant::now();
    create_environment(
        &client,
        &id,
        &relist_env,
        json!({
            "namespacesRegex": [regex],
            "podSelector": {"matchLabels": {"tier": RELIST_TIER}},
            "heartbeatSeconds": HEARTBEAT_SECONDS,
        }),
    )
    .await;
    let relist_selected = fleet.relist_selected();
    let relisted = tracker
        .wait_report(
            &fake,
            &op,
            &relist_env,
            relist_start,
            relist_selected,
            RELIST_LIMIT,
        )
        .await;
    let relist_took = relisted.at - relist_start;
    tracker.idle(&fake, &op, Duration::from_secs(2)).await;
    let relist_main_puts = tracker.count(Some(&main_env), relist_start, None);
    progress!(
        "re-list: {relist_env} reported {relist_selected} pods after {:.1} s",
        relist_took.as_secs_f64()
    );
    let r5 = pids.read(&api, Some(pid)).await;

    let phases = [
        phase("start-up: list, first full report", &r0, &r1, &sampler),
        phase("lone changes", &r1, &r2, &sampler),
        phase("rollout of 1%", &r2, &r3, &sampler),
        phase("quiet", &r3, &r4, &sampler),
        phase("re-list for a new label key", &r4, &r5, &sampler),
    ];
    let samples = sampler.count();
    drop(sampler);
    let hwm = peak_rss_kb(pid).unwrap_or(0);
    let operator_cpu = cpu_seconds(pid);
    let partial = tracker
        .puts
        .iter()
        .filter(|p| p.env == main_env && p.at >= first.at && p.artifacts != n)
        .count();
    let main_puts = tracker.count(Some(&main_env), started, None);
    let main_log = op.log();
    let relists_logged = main_log.matches("pods are listed again").count();
    op.terminate().await;
    drop(op);
    progress!(
        "operator stopped: VmHWM {:.1} MiB, CPU {operator_cpu:.1} s",
        mib(hwm)
    );

    // The CronJob way: one snapshot run at this size.
    let c0 = pids.read(&api, None).await;
    let (snapshot_took, snapshot_peak) =
        snapshot_once(&env, &fake, &main_env, &regex, SNAPSHOT_LIMIT).await;
    let c1 = pids.read(&api, None).await;
    tracker.poll(&fake);
    let snapshot_put = tracker
        .puts
        .iter()
        .rev()
        .find(|p| p.env == main_env && p.at >= c0.at)
        .map(|p| p.artifacts);
    assert_eq!(
        snapshot_put,
        Some(n),
        "the snapshot run did not report {n} pods"
    );
    let (snapshot_lists, snapshot_list_bytes) = pod_lists(&c1.metrics.since(&c0.metrics));
    progress!(
        "snapshot run: {:.1} s, peak RSS {:.1} MiB",
        snapshot_took.as_secs_f64(),
        mib(snapshot_peak)
    );
    // Every report PUT the fake received, and every one it validated and stored.
    let rejected = tracker.puts.len().saturating_sub(tracker.handling.len());
    let fake_handling = {
        let mut h = tracker.handling.clone();
        h.sort();
        percentile(&h, 50.0)
    };

    // ---- Markdown
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    let per_pod_json = json_bytes as f64 / n as f64;
    let binary = support::binary_label();
    writeln!(
        out,
        "## At {n} pods (`benches/scale.rs`)\n\n\
         Real kube-apiserver 1.20 + etcd on loopback, the strict fake Kosli in the bench process, \
         {binary} with its defaults (`--debounce 1s`, `--max-debounce 2s`). \
         Everything (API server, etcd, operator, fake Kosli, load generator) shares the machine's {cores} \
         cores. {n} Running pods of 2 containers in {NAMESPACES} namespaces, {} deployments of \
         {REPLICAS} replicas sharing labels, owner and images (every 25th pinned by digest), each pod \
         {per_pod_json:.0} B of JSON on average (10 labels, 15 env vars, volumes, probes, tolerations, \
         managedFields of the controller manager and the kubelet); written straight into etcd as JSON \
         (the API server runs with `--storage-media-type=application/json`) in {:.0} s, served by the \
         API server {:.0} s after the first write (a quorum list counted all {n}); etcd's database: \
         {:.0} MB. The operator was started once the API server had digested that backlog of watch \
         events (under {:.0}% of a core over {:.0} s, {:.0} s later). One KosliEnvironment selects every pod; `heartbeatSeconds: {HEARTBEAT_SECONDS}` \
         keeps heartbeats out of the run, so every PUT counted was caused by the start or a change.\n",
        fleet.deployments(),
        write_time.as_secs_f64(),
        served_after.as_secs_f64(),
        db_size as f64 / 1e6,
        QUIET_CPU * 100.0,
        QUIET_WINDOW.as_secs_f64(),
        settled_after.as_secs_f64()
    )
    .unwrap();
    writeln!(
        out,
        "Latency is from a pod's status patch returning (the bench playing the kubelet: the app \
         container's imageID moves to a new digest) to the arrival at the fake Kosli of the first PUT \
         whose body carries that digest for that pod. Lone changes: {LONE_CHANGES}, one pod each, each \
         at least {:.1} s after the last PUT and the last change. Rollout: all {} pods of {} deployments \
         ({}% of the pods) patched at once, {PATCH_CONCURRENCY} patches in flight (applying them took \
         {:.1} s). Each full PUT carries a {:.1} MB body, which the fake validates and stores in {} \
         (median) before it answers.\n",
        LONE_SPACING.as_secs_f64(),
        rollout_pods.len(),
        rollout.len(),
        rollout_pods.len() * 100 / n,
        rollout_applied.as_secs_f64(),
        first.bytes as f64 / 1e6,
        fmt_duration(fake_handling),
    )
    .unwrap();

    let peak_phase = phases
        .iter()
        .max_by_key(|p| p.peak_rss_kb)
        .map_or("—", |p| p.name);
    let floor_mb = mb(floor.0);
    let per_pod = (settled_rss.saturating_sub(floor.1)) as f64 * 1024.0 / n as f64;
    let (p50, p99, max) = (
        percentile(&lone, 50.0),
        percentile(&lone, 99.0),
        lone.last().copied().unwrap_or_default(),
    );
    let (r_p50, r_p99, r_max) = (
        percentile(&rolled, 50.0),
        percentile(&rolled, 99.0),
        rolled.last().copied().unwrap_or_default(),
    );
    let startup = &phases[0];
    let unreported = |count: usize| {
        if count == 0 {
            String::new()
        } else {
            format!("; **{count} not reported** within the limit")
        }
    };
    writeln!(out, "### Budgets at {n} pods\n").unwrap();
    writeln!(
        out,
        "| budget (docs/performance.md) | measured | verdict | where it goes |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|").unwrap();
    writeln!(
        out,
        "| peak RSS ≤ {PEAK_RSS_BUDGET_MIB:.0} MiB, start-up list and re-list included | {:.1} MiB (VmHWM) | {} | highest sampled VmRSS in phase \"{peak_phase}\"; {:.1} MiB held after sync (VmRSS after the quiet period) |",
        mib(hwm),
        met(mib(hwm) <= PEAK_RSS_BUDGET_MIB),
        mib(settled_rss)
    )
    .unwrap();
    writeln!(
        out,
        "| fixed floor ≤ {FLOOR_BUDGET_MB:.0} MB | {floor_mb:.2} MB (VmHWM, no pods) | {} | the operator started, synced and reported its environment empty; VmRSS {:.2} MB 3 s later |",
        met(floor_mb <= FLOOR_BUDGET_MB),
        mb(floor.1)
    )
    .unwrap();
    writeln!(
        out,
        "| ≤ 1 KB per pod marginal | {per_pod:.0} B per pod | {} | (VmRSS after sync {:.1} MB − VmRSS with no pods {:.2} MB) / {n} |",
        met(per_pod <= PER_POD_BUDGET_B),
        mb(settled_rss),
        mb(floor.1)
    )
    .unwrap();
    writeln!(
        out,
        "| first full report ≤ {} s after start | {:.1} s | {} | /readyz answered 200 {}; the start-up pod list: {:.0} LIST requests, {:.0} MB of responses; the operator used {:.1} s of CPU, the API server {:.1} s |",
        FIRST_REPORT_BUDGET.as_secs(),
        first_report.as_secs_f64(),
        met(first_report <= FIRST_REPORT_BUDGET),
        ready_note,
        startup.pod_lists,
        startup.pod_list_bytes / 1e6,
        startup.operator_cpu,
        startup.apiserver_cpu
    )
    .unwrap();
    writeln!(
        out,
        "| lone change p50 ≤ {} | {} | {} | {} changes measured{}; the operator used {:.2} s of CPU per lone change |",
        fmt_duration(LONE_P50_BUDGET),
        fmt_duration(p50),
        met(lone_unreported == 0 && p50 <= LONE_P50_BUDGET),
        lone.len(),
        unreported(lone_unreported),
        phases[1].operator_cpu / LONE_CHANGES as f64
    )
    .unwrap();
    writeln!(
        out,
        "| lone change p99 ≤ {} | {} (max {}) | {} | each lone change is one full PUT of {:.1} MB |",
        fmt_duration(LONE_P99_BUDGET),
        fmt_duration(p99),
        fmt_duration(max),
        met(lone_unreported == 0 && p99 <= LONE_P99_BUDGET),
        first.bytes as f64 / 1e6
    )
    .unwrap();
    writeln!(
        out,
        "| rollout of 1% ({} pods) p99 ≤ {} | {} (p50 {}, max {}) | {} | {rollout_puts} PUTs from the first patch until 3 s after the last change arrived; of the {} changes a watch of the bench's own saw, the API server's delivery (patch to watch event) p50 {} p99 {}, the operator's own (watch event to Kosli) p50 {} p99 {}{} |",
        rollout_pods.len(),
        fmt_duration(ROLLOUT_P99_BUDGET),
        fmt_duration(r_p99),
        fmt_duration(r_p50),
        fmt_duration(r_max),
        met(rollout_unreported == 0 && r_p99 <= ROLLOUT_P99_BUDGET),
        own.len(),
        fmt_duration(percentile(&delivery, 50.0)),
        fmt_duration(percentile(&delivery, 99.0)),
        fmt_duration(percentile(&own, 50.0)),
        fmt_duration(percentile(&own, 99.0)),
        unreported(rollout_unreported)
    )
    .unwrap();
    writeln!(
        out,
        "| nothing sent when nothing changed | {quiet_puts} PUTs in {} s of quiet | {} | after the rollout had settled; during the re-list below, {relist_main_puts} PUTs for the unchanged environment |",
        QUIET.as_secs(),
        met(quiet_puts == 0)
    )
    .unwrap();
    writeln!(
        out,
        "| never a partial view | {partial} PUTs of the full environment with other than {n} pods | {} | {main_puts} PUTs of it in all, from start to the end of the re-list; {} |\n",
        met(partial == 0),
        if rejected == 0 {
            "the fake accepted every report".to_owned()
        } else {
            format!("**{rejected} reports rejected by the fake Kosli**")
        }
    )
    .unwrap();

    writeln!(out, "### Memory and CPU by phase\n").unwrap();
    writeln!(
        out,
        "The operator's VmRSS read every {} ms from /proc ({samples} samples); VmHWM (the kernel's \
         high-water mark) at the end of each phase; CPU seconds (user + system) in the phase; the \
         API server's pod LISTs from its own metrics. The re-list is forced by a second \
         KosliEnvironment whose pod selector names the label key `tier`, which no selector used \
         before: the operator lists every pod again to keep that label ({relists_logged} such \
         re-list logged); the phase ends when that environment's first report ({relist_selected} \
         pods) arrived, {:.1} s after it was created.\n",
        SAMPLE_EVERY.as_millis(),
        relist_took.as_secs_f64()
    )
    .unwrap();
    writeln!(
        out,
        "| phase | took | peak VmRSS | VmHWM at end | operator CPU | API-server CPU | pods LIST (responses) |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|").unwrap();
    for p in &phases {
        writeln!(
            out,
            "| {} | {:.1} s | {:.1} MiB | {:.1} MiB | {:.1} s | {:.1} s | {:.0} ({:.0} MB) |",
            p.name,
            p.took.as_secs_f64(),
            mib(p.peak_rss_kb),
            mib(p.hwm_kb),
            p.operator_cpu,
            p.apiserver_cpu,
            p.pod_lists,
            p.pod_list_bytes / 1e6
        )
        .unwrap();
    }
    out.push('\n');

    writeln!(out, "### The CronJob way at {n} pods: one run\n").unwrap();
    writeln!(
        out,
        "One `kosli-operator snapshot ENV --namespaces-regex` run (the drop-in for `kosli snapshot \
         k8s`) with the operator stopped, next to the operator's own start-up; the CronJob does this \
         every 5 minutes.\n"
    )
    .unwrap();
    writeln!(
        out,
        "| figure | CronJob way: one snapshot run | operator: start-up to first full report |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|").unwrap();
    writeln!(
        out,
        "| wall time | {:.1} s | {:.1} s |",
        snapshot_took.as_secs_f64(),
        first_report.as_secs_f64()
    )
    .unwrap();
    writeln!(
        out,
        "| pods LIST requests (response bytes) | {snapshot_lists:.0} ({:.0} MB) | {:.0} ({:.0} MB) |",
        snapshot_list_bytes / 1e6,
        startup.pod_lists,
        startup.pod_list_bytes / 1e6
    )
    .unwrap();
    writeln!(
        out,
        "| API-server CPU seconds | {:.1} s | {:.1} s |",
        c1.apiserver_cpu - c0.apiserver_cpu,
        startup.apiserver_cpu
    )
    .unwrap();
    writeln!(
        out,
        "| etcd CPU seconds | {:.1} s | {:.1} s |",
        c1.etcd_cpu - c0.etcd_cpu,
        r1.etcd_cpu - r0.etcd_cpu
    )
    .unwrap();
    writeln!(
        out,
        "| its own peak RSS | {:.1} MiB (VmHWM sampled every 10 ms) | {:.1} MiB in that phase; {:.1} MiB over the whole run |\n",
        mib(snapshot_peak),
        mib(startup.hwm_kb),
        mib(hwm)
    )
    .unwrap();
    writeln!(
        out,
        "For scale: the API server's VmHWM was {:.0} MiB and etcd's {:.0} MiB by the end of the run.\n",
        mib(peak_rss_kb(pids.apiserver).unwrap_or(0)),
        mib(peak_rss_kb(pids.etcd).unwrap_or(0))
    )
    .unwrap();
    writeln!(
        out,
        "_This run took {:.0} s; the machine's 1-minute load average was {load_at_start} at its start \
         and {} at its end._\n",
        common::elapsed(),
        load_average()
    )
    .unwrap();
    out
}
