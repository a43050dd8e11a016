//! `kosli-operator run` against the real kube-apiserver and the strict fake
//! Kosli: every report is built from a whole, current view. A namespace
//! watched twice still reports every pod across re-lists; a watch cut off by
//! RBAC after it synced is not heartbeaten as if current, turns Stale, and
//! reports afresh once access returns; labels no selector uses cost no memory.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kosli_operator::core::crd::KosliEnvironmentStatus;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::operator::{Operator, eventually};
use support::pod_names;
use support::setup::{Setup, setup};
use support::testenv::{RunningContainer, create_namespace, running_pod, unique};

const NGINX: &str = "1111111111111111111111111111111111111111111111111111111111111111";

impl Setup {
    fn operator(&self, kubeconfig: &std::path::Path, extra: &[&str]) -> Operator {
        self.operator_as(kubeconfig, extra, &[])
    }

    /// Creates `count` Running pods named `{prefix}-{i}` in `ns`, 16 at a time.
    async fn pods(&self, ns: &str, prefix: &str, count: usize, labels: &[(String, String)]) {
        let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        futures::stream::iter(0..count)
            .map(|i| {
                let (web, labels) = (web.clone(), labels.clone());
                async move {
                    let name = format!("{prefix}-{i:03}");
                    running_pod(&self.client, ns, &name, &labels, &[web]).await;
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
    }
}

fn condition(status: &KosliEnvironmentStatus, type_: &str) -> Option<(String, String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test]
async fn a_namespace_watched_twice_reports_every_pod_across_relists() {
    const PODS: usize = 300;
    let s = setup("v").await;
    let ns = unique("twice");
    create_namespace(&s.client, &ns, &[]).await;
    s.pods(&ns, "p", PODS, &[]).await;
    let all = s.environment("all", json!({"namespaces": [ns]})).await;
    let twice = format!("{ns},{ns}");
    let mut op = s.operator(&s.env.kubeconfig, &["--watch-namespaces", &twice]);
    op.wait_ready().await;
    let first: BTreeSet<String> = (0..PODS).map(|i| format!("p-{i:03}")).collect();
    eventually(Duration::from_secs(30), "the first report", || async {
        (!s.fake.reports(&all).is_empty()).then_some(())
    })
    .await;

    // Each KosliEnvironment selecting on a label key no selector used before
    // makes the pod watch list again; a pod added after each makes a report.
    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        let key = format!("relist-{round}");
        s.environment(
            &key,
            json!({"namespaces": [ns], "podSelector": {"matchLabels": {key.clone(): "x"}}}),
        )
        .await;
        eventually(Duration::from_secs(30), "the re-list", || async {
            let synced = op.log().matches("pod watch synced").count();
            (synced > round + 1).then_some(())
        })
        .await;
        let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
        running_pod(&s.client, &ns, &format!("extra-{round}"), &[], &[web]).await;
        eventually(
            Duration::from_secs(30),
            "the report with the extra pod",
            || async {
                let last = s.fake.reports(&all).last().cloned()?;
                pod_names(&last)
                    .contains(&format!("extra-{round}"))
                    .then_some(())
            },
        )
        .await;
    }

    let reports = s.fake.reports(&all);
    assert!(reports.len() > ROUNDS, "{} reports", reports.len());
    for (i, report) in reports.iter().enumerate() {
        let names: BTreeSet<String> = pod_names(report).into_iter().collect();
        let missing: Vec<&String> = first.difference(&names).collect();
        assert!(
            missing.is_empty(),
            "report {i} of {} lacks {} of the {PODS} pods, e.g. {:?}",
            reports.len(),
            missing.len(),
            missing.first()
        );
    }
    let log = op.log();
    assert_eq!(
        log.matches("pods are listed again").count(),
        ROUNDS,
        "every round re-listed:\n{log}"
    );
}

/// RBAC for the user testenv-nobody: all the operator needs cluster-wide
/// besides pods, and pods in `ns` only through a RoleBinding a test can revoke.
async fn grant(s: &Setup, ns: &str) -> RoleBinding {
    let nobody = json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "testenv-nobody"}]);
    let base = format!("{}-operator", s.id);
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": base},
        "rules": [
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["kosli.com"], "resources": ["koslienvironments"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["kosli.com"], "resources": ["koslienvironments/status"], "verbs": ["get", "patch", "update"]},
        ],
    }))
    .unwrap();
    Api::<ClusterRole>::all(s.client.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": base},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": base},
        "subjects": nobody,
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(s.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let pods: Role = serde_json::from_value(json!({
        "metadata": {"name": "pod-watcher", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(s.client.clone(), ns)
        .create(&PostParams::default(), &pods)
        .await
        .unwrap();
    serde_json::from_value(json!({
        "metadata": {"name": "pod-watcher", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-watcher"},
        "subjects": nobody,
    }))
    .unwrap()
}

async fn bind(s: &Setup, ns: &str, binding: &RoleBinding) {
    Api::<RoleBinding>::namespaced(s.client.clone(), ns)
        .create(&PostParams::default(), binding)
        .await
        .unwrap();
}

async fn drop_cluster_grant(s: &Setup) {
    let base = format!("{}-operator", s.id);
    let _ = Api::<ClusterRoleBinding>::all(s.client.clone())
        .delete(&base, &DeleteParams::default())
        .await;
    let _ = Api::<ClusterRole>::all(s.client.clone())
        .delete(&base, &DeleteParams::default())
        .await;
}

#[tokio::test]
async fn a_revoked_pod_watch_is_not_heartbeaten_turns_stale_and_reports_afresh() {
    let s = setup("v").await;
    let ns = unique("frozen");
    create_namespace(&s.client, &ns, &[]).await;
    let binding = grant(&s, &ns).await;
    bind(&s, &ns, &binding).await;
    s.pods(&ns, "p", 2, &[]).await;
    let name = s
        .environment(
            "frozen",
            json!({"namespaces": [ns], "heartbeatSeconds": 30}),
        )
        .await;
    let bound = Duration::from_secs(3);
    let mut op = s.operator(
        &s.env.kubeconfig_nobody,
        &[
            "--watch-namespaces",
            &ns,
            "--leader-election",
            "false",
            "--stale-view-after",
            "3s",
        ],
    );
    op.wait_ready().await;
    eventually(Duration::from_secs(20), "the first report", || async {
        let last = s.fake.reports(&name).last().cloned()?;
        (pod_names(&last) == ["p-000", "p-001"]).then_some(())
    })
    .await;

    // Pods access revoked: the open watch ends within the bound (its calls
    // last no longer), and the next one is refused.
    Api::<RoleBinding>::namespaced(s.client.clone(), &ns)
        .delete("pod-watcher", &DeleteParams::default())
        .await
        .unwrap();
    let revoked = Instant::now();
    let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
    running_pod(&s.client, &ns, "during", &[], &[web]).await;

    let (_, _, message) = eventually(Duration::from_secs(20), "Stale", || async {
        let st = s.status(&name).await;
        let stale = condition(&st, "Stale").filter(|(status, _, _)| status == "True")?;
        let ready = condition(&st, "Ready")?;
        (ready.0 == "False").then_some(stale)
    })
    .await;
    let stale_after = revoked.elapsed();
    assert!(
        stale_after <= 2 * bound + Duration::from_secs(6),
        "Stale only after {stale_after:?}"
    );
    assert!(message.contains("pod watch"), "{message}");
    assert_eq!(
        op.metric("kosli_operator_watch_stale{resource=\"pods\"}")
            .await,
        Some(1.0),
        "{}",
        op.metrics().await
    );

    // Two heartbeat periods pass: nothing is sent from the frozen view.
    let sent = s.fake.reports(&name).len();
    tokio::time::sleep(Duration::from_secs(65)).await;
    let reports = s.fake.reports(&name);
    assert_eq!(
        reports.len(),
        sent,
        "heartbeats of a frozen view: {:?}",
        &reports[sent..]
    );

    // Access returns: a full, fresh report (the pod created meanwhile in it).
    bind(&s, &ns, &binding).await;
    eventually(Duration::from_secs(60), "the fresh report", || async {
        let last = s.fake.reports(&name).last().cloned()?;
        (pod_names(&last) == ["during", "p-000", "p-001"]).then_some(())
    })
    .await;
    eventually(Duration::from_secs(20), "Ready again", || async {
        let st = s.status(&name).await;
        let fresh = condition(&st, "Stale").is_some_and(|c| c.0 == "False");
        let ready = condition(&st, "Ready").is_some_and(|c| c.0 == "True");
        (fresh && ready).then_some(())
    })
    .await;
    assert_eq!(
        op.metric("kosli_operator_watch_stale{resource=\"pods\"}")
            .await,
        Some(0.0)
    );
    drop_cluster_grant(&s).await;
}

#[tokio::test]
async fn labels_no_selector_uses_cost_no_memory() {
    const PODS: usize = 300;
    const LABELS: usize = 400;
    const BUDGET: u64 = 6 << 20;
    let s = setup("v").await;
    let ns = unique("labels");
    create_namespace(&s.client, &ns, &[]).await;
    let web = s
        .environment(
            "web",
            json!({"namespaces": [ns], "podSelector": {"matchLabels": {"app": "web"}}}),
        )
        .await;
    let mut op = s.operator(&s.env.kubeconfig, &["--watch-namespaces", &ns]);
    op.wait_ready().await;
    let reported = |count: usize| {
        let web = web.clone();
        let s = &s;
        async move {
            eventually(
                Duration::from_secs(60),
                "the report with every pod",
                || async {
                    let last = s.fake.reports(&web).last().cloned()?;
                    (pod_names(&last).len() == count).then_some(())
                },
            )
            .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let app = ("app".to_owned(), "web".to_owned());

    // Pods with no other labels first: what the operator's own warm-up costs
    // (buffers, allocator arenas, the first reports) is not counted.
    s.pods(&ns, "plain", PODS, std::slice::from_ref(&app)).await;
    reported(PODS).await;
    let before = rss(op.pid());

    // As many pods again, each with ~50 KB of labels no selector reads.
    let big_key = |i: usize| format!("example.com/unused-{i:03}-{}", "k".repeat(40));
    let mut labels: Vec<(String, String)> =
        (0..LABELS).map(|i| (big_key(i), "v".repeat(63))).collect();
    labels.push(app);
    s.pods(&ns, "big", PODS, &labels).await;
    reported(2 * PODS).await;
    let after = rss(op.pid());
    let grown = after.saturating_sub(before);
    assert!(
        grown < BUDGET,
        "RSS grew by {} KiB for {PODS} pods with large label sets ({} KiB before): labels no selector uses are kept",
        grown >> 10,
        before >> 10
    );

    // A selector on one of those keys: pods are listed again with it.
    let seven = s
        .environment(
            "seven",
            json!({"namespaces": [ns], "podSelector": {"matchLabels": {big_key(7): "v".repeat(63)}}}),
        )
        .await;
    eventually(
        Duration::from_secs(30),
        "the newly selected pods",
        || async {
            let last = s.fake.reports(&seven).last().cloned()?;
            (pod_names(&last).len() == PODS).then_some(())
        },
    )
    .await;
    assert!(
        s.fake
            .reports(&seven)
            .iter()
            .all(|r| pod_names(r).len() == PODS),
        "never a report from records decoded without the new key"
    );
}
