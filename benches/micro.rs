//! Micro-benchmarks of the hot paths, against docs/performance.md's budgets. Prints a
//! Markdown section on stdout (hack/bench.sh puts it into BENCHMARKS.md).
//!
//! A small harness of its own: each figure is the median of several samples of
//! many iterations, in release mode. Memory is measured in child processes of
//! this binary (resident set growth while holding N pods), so one measurement
//! cannot disturb another.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kosli_operator::core::pod::{Interner, PodRecord};
use kosli_operator::core::selection::{ContainerOptions, PodFilter, Selection};
use kosli_operator::core::snapshot;
use kosli_operator::gate::decision::{self, ImageVerdict, Target};
use kosli_operator::gate::workload::parse_review;
use kosli_operator::k8s::store::{ClusterState, PodKey, Watched, pod_key};
use serde_json::{Value, json};

#[path = "../tests/support/image_env.rs"]
mod image_env;

const MEMORY_ENV: &str = "KOSLI_BENCH_MEMORY";

/// A realistic pod as the API server sends it in a watch event: metadata with
/// managedFields, a spec with probes and resources, a status with conditions.
///
/// Pods come in replicas of 20 (one Deployment each, 50 namespaces), which
/// share labels, owners and images, as in a real cluster.
fn pod_json(i: usize) -> Value {
    let deployment = i / 20;
    let hex = format!("{:064x}", deployment as u128 * 0x9e37_79b9_7f4a_7c15);
    let ns = format!("team-{}", deployment % 50);
    let app = format!("web-{deployment}");
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{app}-7d9c5b6f7b-{i:06}"), "namespace": ns,
            "uid": format!("0b6f0c1e-1111-2222-3333-{i:012}"), "resourceVersion": "123456",
            "creationTimestamp": "2026-11-20T09:14:07Z", "generateName": "web-7d9c5b6f7b-",
            "labels": {"app": app, "pod-template-hash": "7d9c5b6f7b", "tier": "frontend"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-20T09:14:00Z", "prometheus.io/scrape": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-7d9c5b6f7b"),
                "uid": format!("0b6f0c1e-1111-2222-3333-{deployment:012}"), "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": "2026-11-20T09:14:07Z",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}}, "f:ownerReferences": {}},
                 "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:ports": {}, "f:resources": {}}}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-11-20T09:14:12Z", "subresource": "status",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}}}
            ]
        },
        "spec": {
            "containers": [
                {"name": "web", "image": format!("registry.acme.io/shop/{app}:4.2.0"), "imagePullPolicy": "IfNotPresent",
                 "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 5},
                 "livenessProbe": {"httpGet": {"path": "/live", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10},
                 "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                 "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]},
                {"name": "proxy", "image": "docker.io/envoyproxy/envoy:v1.32.1", "imagePullPolicy": "IfNotPresent"}
            ],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
            "nodeName": format!("node-{}", i % 20), "serviceAccountName": "web", "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler", "terminationGracePeriodSeconds": 30,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running", "hostIP": "10.0.3.17", "podIP": "10.244.1.23", "startTime": "2026-11-20T09:14:07Z", "qosClass": "Burstable",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-20T09:14:07Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-20T09:14:15Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-20T09:14:15Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-20T09:14:07Z"}
            ],
            "containerStatuses": [
                {"name": "web", "image": format!("registry.acme.io/shop/{app}:4.2.0"), "imageID": format!("registry.acme.io/shop/{app}@sha256:{hex}"),
                 "ready": true, "restartCount": 0, "started": true, "containerID": format!("containerd://{hex}"),
                 "state": {"running": {"startedAt": "2026-11-20T09:14:12Z"}}, "lastState": {}},
                {"name": "proxy", "image": "docker.io/envoyproxy/envoy:v1.32.1",
                 "imageID": "docker.io/envoyproxy/envoy@sha256:aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999",
                 "ready": true, "restartCount": 0, "started": true, "containerID": "containerd://proxy",
                 "state": {"running": {"startedAt": "2026-11-20T09:14:12Z"}}, "lastState": {}}
            ]
        }
    })
}

/// The reporter's state holding `pods`, decoded as the pod watch decodes
/// them (shared values interned, labels kept for the `app` selector key).
fn state_of(pods: impl Iterator<Item = Pod>) -> ClusterState {
    let mut state = ClusterState::new([None]);
    state.set_label_keys(["app".to_owned()].into());
    let keys = state.label_keys();
    let ClusterState {
        pod_scopes, shared, ..
    } = &mut state;
    let store = pod_scopes.get_mut(&None).expect("the cluster-wide store");
    store.relist_started();
    for pod in pods {
        let record = PodRecord::decode(&pod, keys.as_deref(), shared);
        store.relisted(pod_key(&record), record);
    }
    store.relist_done();
    state
}

fn state_with(n: usize) -> ClusterState {
    state_of((0..n).map(|i| serde_json::from_value(pod_json(i)).expect("bench pod")))
}

/// What a reporter worker does for a report it sends: copy the view, select
/// and summarise (content hash, length), then select again and write the
/// body piece by piece, each piece handed on and dropped as the connection
/// would. Returns the body's length.
fn report_from(state: &ClusterState, selection: &Selection) -> usize {
    let view = &state.pods_view();
    let selected = move || {
        let mut filter = PodFilter::new(selection);
        view.pods()
            .filter(move |p| filter.selects(p, |ns| view.namespace_labels(ns)))
    };
    let summary = snapshot::summarise_ordered(selected(), ContainerOptions::default());
    black_box(&summary.hash);
    let mut written = 0;
    for piece in snapshot::pieces(selected(), ContainerOptions::default(), snapshot::PIECE_LEN) {
        written += black_box(piece).len();
    }
    assert_eq!(written, summary.body_len, "the body is as long as counted");
    written
}

/// Median time per iteration over `samples` samples of `iters` iterations.
fn median_per_iter(samples: usize, iters: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed() / u32::try_from(iters).unwrap_or(1)
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn verdict(ok: bool) -> &'static str {
    if ok { "within" } else { "**missed**" }
}

fn snapshot_rows() -> Vec<String> {
    let mut rows = Vec::new();
    let selection = Selection::default();
    for n in [1_000usize, 10_000, 100_000, 150_000] {
        let state = state_with(n);
        let body_len = report_from(&state, &selection);
        let iters = (100_000 / n).max(1);
        let per_build = median_per_iter(7, iters, || {
            black_box(report_from(black_box(&state), &selection));
        });
        let per_pod = per_build / u32::try_from(n).unwrap_or(1);
        let copy = median_per_iter(7, 10_000, || {
            black_box(black_box(&state).pods_view());
        });
        rows.push(format!(
            "| snapshot assembly of a report sent (view copy; selection, content hash and length; selection again and the body in {} KiB pieces), {n} pods | {:.2} µs/pod ({:.1} ms per report, {} KiB body); view copied under the lock in {:.2} µs | <= 0.5 µs/pod, off the lock | {} |",
            snapshot::PIECE_LEN / 1024,
            micros(per_pod),
            per_build.as_secs_f64() * 1e3,
            body_len / 1024,
            micros(copy),
            verdict(micros(per_pod) <= 0.5)
        ));
    }
    rows
}

fn store_rows() -> Vec<String> {
    let mut shared = Interner::default();
    let pods: Vec<PodRecord> = (0..10_000)
        .map(|i| {
            let pod: Pod = serde_json::from_value(pod_json(i)).expect("bench pod");
            PodRecord::decode(&pod, None, &mut shared)
        })
        .collect();
    let mut store: Watched<PodKey, PodRecord> = Watched::default();
    for p in &pods {
        store.apply(pod_key(p), p.clone());
    }
    let same = pods[42].clone();
    let unchanged = median_per_iter(7, 20_000, || {
        black_box(store.apply(pod_key(&same), same.clone()));
    });
    let mut changed = pods[43].clone();
    let mut flip = false;
    let change = median_per_iter(7, 20_000, || {
        flip = !flip;
        changed.phase = if flip {
            "Failed".into()
        } else {
            "Running".into()
        };
        black_box(store.apply(pod_key(&changed), changed.clone()));
    });
    let bytes = serde_json::to_vec(&pod_json(7)).expect("pod json");
    let decode = median_per_iter(7, 2_000, || {
        let pod: Pod = serde_json::from_slice(black_box(&bytes)).expect("decode");
        black_box(PodRecord::decode(&pod, None, &mut shared));
    });
    vec![
        format!(
            "| decode one pod watch event ({} B of JSON) into the compact record | {:.1} µs | <= 30 µs | {} |",
            bytes.len(),
            micros(decode),
            verdict(micros(decode) <= 30.0)
        ),
        format!(
            "| change detection: an event that changes nothing a report uses (10k-pod store) | {:.2} µs | — | — |",
            micros(unchanged)
        ),
        format!(
            "| change detection: an event that changes the pod (10k-pod store) | {:.2} µs | — | — |",
            micros(change)
        ),
    ]
}

fn review_body() -> Vec<u8> {
    let hex = "644a70516a26004c97d0d85c7fe1d0c3a67ea8ab7ddf4aff193d9f301670cf36";
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "web-1", "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod_json(1).as_object().cloned().map(|mut o| {
                o["spec"]["containers"][0]["image"] = json!(format!("registry.acme.io/shop/web@sha256:{hex}"));
                Value::Object(o)
            }),
            "dryRun": false
        }
    })
    .to_string()
    .into_bytes()
}

fn gate_rows() -> Vec<String> {
    let body = review_body();
    let target = Target {
        object: "shop".into(),
        kosli_env: "prod".into(),
        mode: kosli_operator::core::crd::GateMode::Enforce,
        policies: vec![],
        unknown_artifacts: kosli_operator::core::crd::UnknownArtifacts::Deny,
        require_digest: false,
    };
    let now = jiff::Timestamp::now();
    let decide = median_per_iter(7, 5_000, || {
        let (_, workload) = parse_review(black_box(&body)).expect("review");
        let plan = decision::plan(
            &workload,
            vec![target.clone()],
            false,
            &decision::BreakGlassAuthority::default(),
            now,
        )
        .expect("plan");
        let results: Vec<_> = plan
            .images
            .iter()
            .map(|i| {
                (
                    target.clone(),
                    i.clone(),
                    ImageVerdict::Compliant { digest: "x".into() },
                )
            })
            .collect();
        black_box(decision::answer(&results));
    });
    vec![format!(
        "| gate decision, warm cache: parse a {} B AdmissionReview, plan, answer (verdicts cached) | {:.1} µs | p50 <= 1 ms at the webhook | {} |",
        body.len(),
        micros(decide),
        verdict(decide <= Duration::from_millis(1))
    )]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Child process: hold N pods the given way and print the resident growth in bytes.
fn memory_child(spec: &str) {
    let (kind, n) = spec.split_once(':').expect("kind:n");
    let n: usize = n.parse().expect("n");
    let jsons: Vec<Vec<u8>> = (0..n)
        .map(|i| serde_json::to_vec(&pod_json(i)).expect("json"))
        .collect();
    let before = rss_kib();
    let held: usize = match kind {
        "compact" => {
            let state = state_of(
                jsons
                    .iter()
                    .map(|j| serde_json::from_slice(j).expect("pod")),
            );
            let len = state.pod_count();
            let after = rss_kib();
            black_box(&state);
            println!("{}", (after.saturating_sub(before)) * 1024);
            len
        }
        _ => {
            let mut store: HashMap<(String, String), Pod> = HashMap::new();
            for j in &jsons {
                let pod: Pod = serde_json::from_slice(j).expect("pod");
                let key = (
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    pod.metadata.name.clone().unwrap_or_default(),
                );
                store.insert(key, pod);
            }
            let len = store.len();
            let after = rss_kib();
            black_box(&store);
            println!("{}", (after.saturating_sub(before)) * 1024);
            len
        }
    };
    black_box(held);
}

fn memory_rows() -> Vec<String> {
    let exe = std::env::current_exe().expect("own path");
    let measure = |kind: &str, n: usize| -> f64 {
        let out = std::process::Command::new(&exe)
            .env(MEMORY_ENV, format!("{kind}:{n}"))
            .output()
            .expect("child runs");
        let bytes: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(f64::NAN);
        bytes / n as f64
    };
    // Growth per pod held, then the budget's figure: the growth per pod
    // added between the two sizes. The average at 10k pods also carries what
    // the store costs whatever its size (its tables, the allocator's arenas).
    let (small, large) = (10_000usize, 150_000usize);
    let row = |n: usize| {
        let compact = measure("compact", n);
        let full = measure("full", n);
        let text = format!(
            "| {n} pods held | the reporter's store: {:.0} B per pod | full `Pod` objects: {:.0} B per pod ({:.0}x) | |",
            compact,
            full,
            full / compact,
        );
        (compact * n as f64, text)
    };
    let (small_total, small_row) = row(small);
    let (large_total, large_row) = row(large);
    let marginal = (large_total - small_total) / (large - small) as f64;
    vec![
        small_row,
        large_row,
        format!(
            "| each pod added, {small} to {large} pods | the reporter's store: {marginal:.0} B | | <= 1 KiB per pod: {} |",
            verdict(marginal <= 1024.0)
        ),
    ]
}

/// Runs this benchmark again under the variables the image sets for the
/// operator (its allocator settings, which change what memory reads cost),
/// unless they are set already: the figures are the operator's as it ships.
fn rerun_as_the_image_runs(image_env: &[(String, String)]) -> Option<std::process::ExitStatus> {
    let unset = image_env
        .iter()
        .any(|(name, value)| std::env::var(name).ok().as_deref() != Some(value.as_str()));
    unset.then(|| {
        std::process::Command::new(std::env::current_exe().expect("own path"))
            .args(std::env::args_os().skip(1))
            .envs(image_env.iter().map(|(name, value)| (name, value)))
            .status()
            .expect("the benchmark runs again")
    })
}

fn main() {
    if let Ok(spec) = std::env::var(MEMORY_ENV) {
        memory_child(&spec);
        return;
    }
    let image_env = image_env::image_env();
    if let Some(status) = rerun_as_the_image_runs(&image_env) {
        std::process::exit(status.code().unwrap_or(1));
    }
    // `cargo bench --bench micro -- snapshot` runs only the sections named
    // (snapshot, store, gate, memory), to profile one of them.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    println!("## Micro-benchmarks (`cargo bench --bench micro`)\n");
    let settings: Vec<String> = image_env
        .iter()
        .map(|(name, value)| format!("`{name}={value}`"))
        .collect();
    println!(
        "Median of 7 samples, release build, one core in use, with the variables the image sets: {}.\n",
        if settings.is_empty() {
            "none".to_owned()
        } else {
            settings.join(", ")
        }
    );
    println!("| what | measured | budget | |");
    println!("|---|---|---|---|");
    type Rows = fn() -> Vec<String>;
    let sections: [(&str, Rows); 3] = [
        ("snapshot", snapshot_rows),
        ("store", store_rows),
        ("gate", gate_rows),
    ];
    for (_, rows) in sections.iter().filter(|(name, _)| wanted(name)) {
        for row in rows() {
            println!("{row}");
        }
    }
    if !wanted("memory") {
        return;
    }
    println!("\n### Memory: the compact store against whole `Pod` objects\n");
    println!(
        "Growth of the resident set while holding N pods decoded from watch-event JSON (~6 KB each, with managedFields; replicas of 20 sharing labels, owners and images), each way in a fresh process. The budget is on the marginal cost: the growth per pod added between the two sizes.\n"
    );
    println!("| pods | compact | full | budget |");
    println!("|---|---|---|---|");
    for row in memory_rows() {
        println!("{row}");
    }
}
