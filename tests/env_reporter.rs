//! `kosli-operator run` against the real kube-apiserver and the strict fake
//! Kosli: reports follow pod changes within seconds, only the leader reports,
//! Kosli failures are retried and shown in status, invalid specs are Degraded,
//! and a restarted apiserver never causes a partial report.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kosli_operator::core::crd::{KosliEnvironment, KosliEnvironmentStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::fake_kosli::{ORG, Scripted};
use support::operator::{Operator, eventually};
use support::pod_names;
use support::setup::{Setup, setup};
use support::testenv::{RunningContainer, create_namespace, running_pod, unique};

const NGINX: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const REDIS: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const SECONDS: Duration = Duration::from_secs(15);

impl Setup {
    fn operator(&self, extra: &[&str], env: &[(&str, &str)]) -> Operator {
        self.operator_as(&self.env.kubeconfig, extra, env)
    }

    /// Waits until the latest report for `env` satisfies `check`.
    async fn report_where(&self, env: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(SECONDS, what, || async {
            self.fake.reports(env).last().filter(|r| check(r)).cloned()
        })
        .await
    }
}

fn condition<'a>(
    status: &'a KosliEnvironmentStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

fn has_condition(status: &KosliEnvironmentStatus, type_: &str, value: &str, reason: &str) -> bool {
    condition(status, type_).is_some_and(|c| c.status == value && c.reason == reason)
}

#[tokio::test]
async fn reports_follow_pods_within_seconds_and_status_tells() {
    let s = setup("t").await;
    let ns = unique("rep");
    create_namespace(&s.client, &ns, &[]).await;
    let name = s.environment("shop", json!({"namespaces": [ns]})).await;
    let mut op = s.operator(&[], &[]);
    op.wait_ready().await;

    // Synced: reported once even though nothing runs yet.
    s.report_where(&name, "the first, empty report", |r| {
        *r == json!({"artifacts": []})
    })
    .await;

    let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
    let started = Instant::now();
    let pod = running_pod(
        &s.client,
        &ns,
        "web-1",
        &[("app", "web")],
        std::slice::from_ref(&web),
    )
    .await;
    let expected = json!({"artifacts": [{
        "podName": "web-1", "namespace": ns,
        "digests": {"docker.io/library/nginx:1.27": NGINX},
        "creationTimestamp": pod.metadata.creation_timestamp.as_ref().unwrap().0.as_second(),
        "owners": null,
    }]});
    s.report_where(&name, "the report with web-1", |r| *r == expected)
        .await;
    let latency = started.elapsed();
    assert!(latency < Duration::from_secs(10), "took {latency:?}");

    let status = eventually(SECONDS, "status after the report", || async {
        let st = s.status(&name).await;
        (st.pod_count == Some(1) && has_condition(&st, "Ready", "True", "Reported")).then_some(st)
    })
    .await;
    assert_eq!(status.artifact_count, Some(1));
    assert_eq!(status.config_id_fingerprints, Some(0));
    assert_eq!(status.environment.as_deref(), Some(name.as_str()));
    assert_eq!(status.compliance.as_deref(), Some("unknown"));
    assert!(
        status
            .kosli_url
            .as_deref()
            .unwrap()
            .ends_with(&format!("/environments/{name}"))
    );
    assert!(status.last_reported_at.is_some() && status.last_changed_at.is_some());
    let sent_body = s
        .fake
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.method == "PUT")
        .unwrap()
        .body;
    // The status names the content hash of what was sent: the snapshot of
    // the one pod running.
    let running = kosli_operator::core::pod::PodRecord::from(&pod);
    let built = kosli_operator::core::snapshot::build([&running], Default::default());
    assert_eq!(built.body, sent_body);
    assert_eq!(status.snapshot_hash.as_deref(), Some(built.hash.as_str()));
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(1))
    );

    Api::<Pod>::namespaced(s.client.clone(), &ns)
        .delete("web-1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    s.report_where(&name, "the report without web-1", |r| {
        *r == json!({"artifacts": []})
    })
    .await;

    let sent = op
        .metric(&format!(
            "kosli_operator_reports_total{{environment=\"{name}\",result=\"sent\"}}"
        ))
        .await;
    assert_eq!(sent, Some(3.0), "{}", op.metrics().await);
    assert_eq!(op.metric("kosli_operator_leader").await, Some(1.0));
    let payload = op
        .metric(&format!(
            "kosli_operator_report_payload_bytes{{environment=\"{name}\"}}"
        ))
        .await;
    assert!(
        payload.is_some_and(|bytes| bytes > 0.0),
        "payload bytes {payload:?}: {}",
        op.metrics().await
    );
    let exit = op.terminate().await;
    assert!(exit.success(), "{exit}: {}", op.log());
}

#[tokio::test]
async fn pods_move_between_environments_with_their_labels() {
    let s = setup("t").await;
    let ns = unique("move");
    let other_ns = unique("move-ns");
    create_namespace(&s.client, &ns, &[]).await;
    create_namespace(&s.client, &other_ns, &[]).await;
    let a = s
        .environment(
            "a",
            json!({"namespaces": [ns], "podSelector": {"matchLabels": {"tier": "a"}}}),
        )
        .await;
    let b = s
        .environment(
            "b",
            json!({"namespaces": [ns], "podSelector": {"matchLabels": {"tier": "b"}}}),
        )
        .await;
    let team = s
        .environment(
            "team",
            json!({"namespaceSelector": {"matchLabels": {"team": s.id.clone()}}}),
        )
        .await;
    let mut op = s.operator(&[], &[]);
    op.wait_ready().await;

    let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
    running_pod(
        &s.client,
        &ns,
        "p",
        &[("tier", "a")],
        std::slice::from_ref(&web),
    )
    .await;
    s.report_where(&a, "p in a", |r| pod_names(r) == ["p"])
        .await;
    s.report_where(&b, "b empty", |r| pod_names(r).is_empty())
        .await;

    let relabel = json!({"metadata": {"labels": {"tier": "b"}}});
    Api::<Pod>::namespaced(s.client.clone(), &ns)
        .patch("p", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap();
    s.report_where(&a, "p gone from a", |r| pod_names(r).is_empty())
        .await;
    s.report_where(&b, "p in b", |r| pod_names(r) == ["p"])
        .await;

    let redis = RunningContainer::pulled("redis", "docker.io/library/redis:7", REDIS);
    running_pod(&s.client, &other_ns, "q", &[], std::slice::from_ref(&redis)).await;
    s.report_where(&team, "team empty while its namespace is unlabelled", |r| {
        pod_names(r).is_empty()
    })
    .await;
    let label = json!({"metadata": {"labels": {"team": s.id}}});
    let namespaces: Api<Namespace> = Api::all(s.client.clone());
    namespaces
        .patch(&other_ns, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    s.report_where(&team, "q joins with its namespace label", |r| {
        pod_names(r) == ["q"]
    })
    .await;
    let unlabel = json!({"metadata": {"labels": {"team": null}}});
    namespaces
        .patch(&other_ns, &PatchParams::default(), &Patch::Merge(&unlabel))
        .await
        .unwrap();
    s.report_where(&team, "q leaves with the label", |r| {
        pod_names(r).is_empty()
    })
    .await;
}

#[tokio::test]
async fn unchanged_snapshots_are_resent_only_at_the_heartbeat() {
    let s = setup("t").await;
    let ns = unique("beat");
    create_namespace(&s.client, &ns, &[]).await;
    let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
    running_pod(&s.client, &ns, "web", &[], std::slice::from_ref(&web)).await;
    let name = s
        .environment("beat", json!({"namespaces": [ns], "heartbeatSeconds": 30}))
        .await;
    let mut op = s.operator(&[], &[]);
    op.wait_ready().await;
    s.report_where(&name, "the first report", |r| pod_names(r) == ["web"])
        .await;
    let first = Instant::now();

    // Changes that do not touch the report (an annotation) send nothing.
    let annotate = json!({"metadata": {"annotations": {"touched": "yes"}}});
    Api::<Pod>::namespaced(s.client.clone(), &ns)
        .patch("web", &PatchParams::default(), &Patch::Merge(&annotate))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        s.fake.reports(&name).len(),
        1,
        "nothing changed: nothing sent"
    );

    eventually(Duration::from_secs(40), "the heartbeat", || async {
        (s.fake.reports(&name).len() == 2).then_some(())
    })
    .await;
    let gap = first.elapsed();
    assert!(
        gap >= Duration::from_secs(28),
        "heartbeat after only {gap:?}"
    );
    let reports = s.fake.reports(&name);
    assert_eq!(
        reports[0], reports[1],
        "the heartbeat resends the same snapshot"
    );
    drop(op);
}

#[tokio::test]
async fn kosli_failures_are_retried_shown_and_cleared() {
    let s = setup("t").await;
    let ns = unique("flaky");
    create_namespace(&s.client, &ns, &[]).await;
    let name = s.environment("flaky", json!({"namespaces": [ns]})).await;
    // Within one attempt the client retries 500, 429 (Retry-After) and 409.
    s.fake.script([
        Scripted::status(500, "boom"),
        Scripted::status(429, "slow down").retry_after("1"),
        Scripted::status(409, "locked"),
    ]);
    let mut op = s.operator(&[], &[("KOSLI_MAX_API_RETRIES", "3")]);
    op.wait_ready().await;
    s.report_where(&name, "the report after three retries", |r| {
        pod_names(r).is_empty()
    })
    .await;
    for status in ["500", "429", "409"] {
        let retries = op
            .metric(&format!(
                "kosli_operator_kosli_retries_total{{status=\"{status}\"}}"
            ))
            .await;
        assert_eq!(
            retries,
            Some(1.0),
            "retries after {status}: {}",
            op.metrics().await
        );
    }
    drop(op);

    // With no retries left in the client, failures show in status until Kosli recovers.
    let s = setup("t").await;
    let name = s
        .environment("down", json!({"namespaces": [unique("down")]}))
        .await;
    s.fake.script(std::iter::repeat_n(
        Scripted::page(503, "<html>maintenance</html>"),
        3,
    ));
    let mut op = s.operator(&[], &[("KOSLI_MAX_API_RETRIES", "0")]);
    op.wait_ready().await;
    let failing = eventually(SECONDS, "a failing status", || async {
        let st = s.status(&name).await;
        has_condition(&st, "Ready", "False", "KosliUnavailable").then_some(st)
    })
    .await;
    assert_eq!(
        failing.last_kosli_error.as_ref().and_then(|e| e.code),
        Some(503)
    );
    assert!(
        failing
            .last_kosli_error
            .as_ref()
            .unwrap()
            .message
            .contains("maintenance")
    );
    assert!(
        has_condition(&failing, "Degraded", "False", "AsExpected"),
        "transient failures are not Degraded"
    );
    let failed = op
        .metric(&format!(
            "kosli_operator_reports_total{{environment=\"{name}\",result=\"failed\"}}"
        ))
        .await;
    assert!(failed >= Some(1.0), "{}", op.metrics().await);

    let recovered = eventually(Duration::from_secs(30), "recovery", || async {
        let st = s.status(&name).await;
        has_condition(&st, "Ready", "True", "Reported").then_some(st)
    })
    .await;
    assert!(
        recovered.last_kosli_error.is_none(),
        "recovery clears the error"
    );
    assert_eq!(s.fake.reports(&name).len(), 1);
    let reasons: Vec<String> = support::testenv::events_about(&s.client, &name)
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.contains(&"ReportFailed".to_owned())
            && reasons.contains(&"ReportRecovered".to_owned()),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn rejected_credentials_degrade_without_a_hot_loop() {
    let s = setup("t").await;
    let ns = unique("auth");
    create_namespace(&s.client, &ns, &[]).await;
    let name = s.environment("auth", json!({"namespaces": [ns]})).await;
    let mut op = s.operator(&[], &[("KOSLI_API_TOKEN", "revoked-token")]);
    op.wait_ready().await;
    let degraded = eventually(SECONDS, "Degraded", || async {
        let st = s.status(&name).await;
        has_condition(&st, "Degraded", "True", "Unauthorized").then_some(st)
    })
    .await;
    assert_eq!(
        degraded.last_kosli_error.as_ref().and_then(|e| e.code),
        Some(401)
    );
    assert!(
        !op.log().contains("revoked-token"),
        "the token never reaches the log"
    );
    let before = s.fake.requests().len();
    // A pod change after a 401 tries again within seconds (the hold's first
    // backoff, 5 s after the failure), once: churn cannot make it loop.
    let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
    running_pod(&s.client, &ns, "web", &[], std::slice::from_ref(&web)).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let retried: Vec<_> = s.fake.requests().split_off(before);
    assert_eq!(
        retried
            .iter()
            .map(|r| r.method.as_str())
            .collect::<Vec<_>>(),
        vec!["PUT"],
        "one retry after the pod change, no more until the next backoff"
    );
}

#[tokio::test]
async fn invalid_specs_are_degraded_naming_the_field() {
    let s = setup("t").await;
    let regex = s
        .environment("regex", json!({"namespacesRegex": ["team-("]}))
        .await;
    let mixed = s
        .environment(
            "mixed",
            json!({"namespaces": ["a"], "excludeNamespaces": ["b"]}),
        )
        .await;
    let selector = s
        .environment(
            "selector",
            json!({"podSelector": {"matchExpressions": [{"key": "k", "operator": "Near"}]}}),
        )
        .await;
    let mut op = s.operator(&[], &[]);
    op.wait_ready().await;
    for (name, field) in [
        (&regex, "spec.namespacesRegex"),
        (&mixed, "spec.namespaces"),
        (&selector, "spec.podSelector"),
    ] {
        let st = eventually(SECONDS, "Degraded InvalidSpec", || async {
            let st = s.status(name).await;
            has_condition(&st, "Degraded", "True", "InvalidSpec").then_some(st)
        })
        .await;
        let message = &condition(&st, "Degraded").unwrap().message;
        assert!(message.starts_with(field), "{message}");
    }
    assert!(
        s.fake.requests().is_empty(),
        "nothing is sent for an invalid spec"
    );

    // Fixing the spec recovers.
    let fix = json!({"spec": {"namespacesRegex": ["^team-"]}});
    Api::<KosliEnvironment>::all(s.client.clone())
        .patch(&regex, &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    eventually(SECONDS, "Ready after the fix", || async {
        let st = s.status(&regex).await;
        (has_condition(&st, "Ready", "True", "Reported") && st.observed_generation == Some(2))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn only_the_leader_reports_and_a_standby_takes_over() {
    let s = setup("t").await;
    let ns = unique("lead");
    create_namespace(&s.client, &ns, &[]).await;
    let name = s.environment("lead", json!({"namespaces": [ns]})).await;
    let mut first = s.operator(&[], &[]);
    first.wait_ready().await;
    eventually(SECONDS, "a leader", || async {
        (first.metric("kosli_operator_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let mut second = s.operator(&[], &[]);
    second.wait_ready().await;
    s.report_where(&name, "the first report", |r| pod_names(r).is_empty())
        .await;

    let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
    running_pod(&s.client, &ns, "web", &[], std::slice::from_ref(&web)).await;
    s.report_where(&name, "web reported", |r| pod_names(r) == ["web"])
        .await;
    let sent = format!("kosli_operator_reports_total{{environment=\"{name}\",result=\"sent\"}}");
    assert_eq!(second.metric("kosli_operator_leader").await, Some(0.0));
    assert_eq!(second.metric(&sent).await, None, "a standby sends nothing");
    assert_eq!(first.metric(&sent).await, Some(2.0));

    // A crash: the Lease is not released, the standby waits for it to expire.
    let killed = Instant::now();
    first.kill();
    let reports_before = s.fake.reports(&name).len();
    eventually(Duration::from_secs(30), "the standby to report", || async {
        (s.fake.reports(&name).len() > reports_before).then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(25),
        "takeover took {takeover:?}"
    );
    assert_eq!(
        pod_names(s.fake.reports(&name).last().unwrap()),
        ["web"],
        "the new leader reports the full set"
    );
    assert_eq!(second.metric("kosli_operator_leader").await, Some(1.0));

    // A graceful stop releases the Lease: a new standby takes over at once.
    let mut third = s.operator(&[], &[]);
    third.wait_ready().await;
    let stopped = Instant::now();
    assert!(second.terminate().await.success());
    eventually(SECONDS, "the third to lead", || async {
        (third.metric("kosli_operator_leader").await == Some(1.0)).then_some(())
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "released lease taken over in {:?}",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn dry_run_logs_bodies_and_sends_nothing() {
    let s = setup("t").await;
    let ns = unique("dry");
    create_namespace(&s.client, &ns, &[]).await;
    let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
    running_pod(&s.client, &ns, "web", &[], std::slice::from_ref(&web)).await;
    let name = s
        .environment("dry", json!({"namespaces": [ns], "autoCreate": true}))
        .await;
    let mut op = s.operator(&["--dry-run"], &[]);
    op.wait_ready().await;
    eventually(SECONDS, "status DryRun", || async {
        let st = s.status(&name).await;
        (has_condition(&st, "Reporting", "True", "DryRun") && st.pod_count == Some(1)).then_some(())
    })
    .await;
    assert!(
        op.log()
            .contains(&format!("\"podName\":\"web\",\"namespace\":\"{ns}\"")),
        "{}",
        op.log()
    );
    assert!(s.fake.requests().is_empty(), "a dry run sends nothing");
}

#[tokio::test]
async fn watched_namespaces_limit_what_environments_may_select() {
    let s = setup("t").await;
    let ns = unique("watched");
    create_namespace(&s.client, &ns, &[]).await;
    let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
    running_pod(&s.client, &ns, "web", &[], std::slice::from_ref(&web)).await;
    let listed = s.environment("listed", json!({"namespaces": [ns]})).await;
    let wide = s
        .environment("wide", json!({"namespacesRegex": ["^watched-"]}))
        .await;
    let mut op = s.operator(&["--watch-namespaces", &ns], &[]);
    op.wait_ready().await;
    s.report_where(&listed, "the watched namespace's pods", |r| {
        pod_names(r) == ["web"]
    })
    .await;
    let st = eventually(
        SECONDS,
        "Degraded for a selection it cannot see whole",
        || async {
            let st = s.status(&wide).await;
            has_condition(&st, "Degraded", "True", "InvalidSpec").then_some(st)
        },
    )
    .await;
    assert!(
        condition(&st, "Degraded")
            .unwrap()
            .message
            .contains("--watch-namespaces")
    );
    assert!(s.fake.reports(&wide).is_empty());
}

#[tokio::test]
async fn auto_create_compliance_and_independent_environments() {
    let s = setup("t").await;
    let ns = unique("multi");
    create_namespace(&s.client, &ns, &[]).await;
    // Not known to Kosli: created first, with the description.
    let fresh = format!("{}-fresh", s.id);
    let object: KosliEnvironment = serde_json::from_value(json!({
        "apiVersion": "kosli.com/v1alpha1", "kind": "KosliEnvironment",
        "metadata": {"name": fresh, "labels": {"test": s.id}},
        "spec": {"namespaces": [ns], "autoCreate": true, "description": "made by the operator"},
    }))
    .unwrap();
    Api::<KosliEnvironment>::all(s.client.clone())
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    // Judged non-compliant by Kosli.
    let judged = s.environment("judged", json!({"namespaces": [ns]})).await;
    s.fake.set_compliance(&judged, Some(false));
    // Kosli hangs on this one: the others must not wait for it.
    let stuck = s.environment("stuck", json!({"namespaces": [ns]})).await;
    s.fake
        .script_for(&stuck, [Scripted::slow(Duration::from_secs(25))]);

    let mut op = s.operator(&[], &[("KOSLI_MAX_API_RETRIES", "0")]);
    op.wait_ready().await;
    s.report_where(&fresh, "the created environment's report", |r| {
        pod_names(r).is_empty()
    })
    .await;
    let created = s.fake.state().environments[&fresh].clone();
    assert_eq!(
        (created.kind.as_str(), created.description.as_str()),
        ("K8S", "made by the operator")
    );
    s.report_where(&judged, "the judged environment's report", |r| {
        pod_names(r).is_empty()
    })
    .await;
    assert!(
        s.fake.reports(&stuck).is_empty(),
        "still waiting on Kosli for {stuck}"
    );

    let st = eventually(SECONDS, "compliance in status", || async {
        let st = s.status(&judged).await;
        (st.compliance.as_deref() == Some("non-compliant")).then_some(st)
    })
    .await;
    assert!(st.kosli_url.is_some());
    // The fake's html_url for the environment.
    let page = format!("https://app.kosli.com/{ORG}/environments/{judged}");
    assert_eq!(st.kosli_url.as_deref(), Some(page.as_str()));
    let warning = eventually(SECONDS, "a NonCompliant warning", || async {
        support::testenv::events_about(&s.client, &judged)
            .await
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("NonCompliant") && e.type_.as_deref() == Some("Warning")
            })
    })
    .await;
    assert_eq!(
        warning.note.as_deref(),
        Some(format!("Kosli judges what runs in {judged} non-compliant: {page}").as_str())
    );

    // Nothing changes: the status is not rewritten (no status-write loop).
    let api: Api<KosliEnvironment> = Api::all(s.client.clone());
    let before = api.get(&judged).await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        api.get(&judged).await.unwrap().metadata.resource_version,
        before
    );
}
