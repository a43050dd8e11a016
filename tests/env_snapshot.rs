//! `kosli-operator snapshot` against the real kube-apiserver: pods created in
//! several namespaces and brought to Running by playing the kubelet are reported
//! to the strict fake Kosli with exactly the expected payload; namespace flags and
//! config files select; RBAC refusals fail only their environment; long lists are
//! paginated to the end.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::fake_kosli::FakeKosli;
use support::testenv::{
    RunningContainer, TestEnv, create_namespace, create_pod, play_kubelet, running_pod, unique,
};
use support::{run_async, stderr, strings};

const NGINX: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const API: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const JOB: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

/// What Kosli must receive for a pod, written out independently of the engine.
fn artifact(pod: &Pod, digests: &[(&str, &str)], owners: Value) -> Value {
    let digests: BTreeMap<&str, &str> = digests.iter().copied().collect();
    json!({
        "podName": pod.metadata.name,
        "namespace": pod.metadata.namespace,
        "digests": digests,
        "creationTimestamp": pod.metadata.creation_timestamp.as_ref().unwrap().0.as_second(),
        "owners": owners,
    })
}

/// Two namespaces of pods in every state a report must handle.
struct Fixture {
    client: Client,
    prefix: String,
    ns_a: String,
    ns_b: String,
    /// The artifacts of namespace a and b, in report order.
    expected_a: Vec<Value>,
    expected_b: Vec<Value>,
}

async fn fixture() -> Fixture {
    let env = TestEnv::get();
    let client = env.client().await;
    let prefix = unique("snap");
    let (ns_a, ns_b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    create_namespace(&client, &ns_a, &[("team", "shop")]).await;
    create_namespace(&client, &ns_b, &[]).await;

    let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
    let web_1 = running_pod(
        &client,
        &ns_a,
        "web-1",
        &[("app", "web")],
        std::slice::from_ref(&web),
    )
    .await;
    // Owned by a ReplicaSet: owners pass through as the API serialises them.
    let owned: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-2", "namespace": ns_a, "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f",
            "uid": "0b6f0c1e-1111-2222-3333-444455556666", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"containers": [{"name": "web", "image": "docker.io/library/nginx:1.27"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), &ns_a)
        .create(&PostParams::default(), &owned)
        .await
        .unwrap();
    let web_2 = play_kubelet(
        &client,
        &ns_a,
        "web-2",
        "Running",
        std::slice::from_ref(&web),
    )
    .await;
    // Never scheduled: stays Pending and is not reported.
    create_pod(&client, &ns_a, "pending", &[], std::slice::from_ref(&web)).await;

    // Digest-pinned: containerd reports the image ID as the status image.
    let pinned = RunningContainer {
        name: "api".into(),
        spec_image: format!("registry.acme.io/shop/api:4.2@sha256:{API}"),
        status_image: format!("sha256:{JOB}"),
        image_id: format!("registry.acme.io/shop/api@sha256:{API}"),
    };
    let pulling = RunningContainer {
        name: "sidecar".into(),
        spec_image: "busybox:1.37".into(),
        status_image: "busybox:1.37".into(),
        image_id: String::new(),
    };
    let api_1 = running_pod(
        &client,
        &ns_b,
        "api-1",
        &[("app", "api")],
        &[pinned, pulling.clone()],
    )
    .await;
    let job = RunningContainer::pulled("report", "registry.acme.io/ops/report:1.9", JOB);
    create_pod(
        &client,
        &ns_b,
        "job-failed",
        &[],
        std::slice::from_ref(&job),
    )
    .await;
    let failed = play_kubelet(
        &client,
        &ns_b,
        "job-failed",
        "Failed",
        std::slice::from_ref(&job),
    )
    .await;
    create_pod(&client, &ns_b, "job-done", &[], std::slice::from_ref(&job)).await;
    play_kubelet(
        &client,
        &ns_b,
        "job-done",
        "Succeeded",
        std::slice::from_ref(&job),
    )
    .await;
    // Running but every image still pulling: skipped with a warning, not fatal.
    running_pod(&client, &ns_b, "all-pulling", &[], &[pulling]).await;

    let rs_owner = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f",
        "uid": "0b6f0c1e-1111-2222-3333-444455556666", "controller": true, "blockOwnerDeletion": true}]);
    Fixture {
        expected_a: vec![
            artifact(
                &web_1,
                &[("docker.io/library/nginx:1.27", NGINX)],
                Value::Null,
            ),
            artifact(&web_2, &[("docker.io/library/nginx:1.27", NGINX)], rs_owner),
        ],
        expected_b: vec![
            artifact(
                &api_1,
                // A bare status image: named by the spec image as written, as the CLI does.
                &[(&format!("registry.acme.io/shop/api:4.2@sha256:{API}"), API)],
                Value::Null,
            ),
            artifact(
                &failed,
                &[("registry.acme.io/ops/report:1.9", JOB)],
                Value::Null,
            ),
        ],
        client,
        prefix,
        ns_a,
        ns_b,
    }
}

/// The fake's settings, and no retries.
fn kosli_env(fake: &FakeKosli) -> Vec<(String, String)> {
    let mut env = fake.cli_env();
    env.push(("KOSLI_MAX_API_RETRIES".into(), "0".into()));
    env
}

fn kubeconfig(env: &TestEnv) -> String {
    env.kubeconfig.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn live_snapshot_sends_exactly_the_running_pods() {
    let f = fixture().await;
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    let regex = format!("^{}-", f.prefix);
    let o = run_async(
        strings(&[
            "snapshot",
            "prod",
            "--kubeconfig",
            &kubeconfig(&TestEnv::get()),
            "--namespaces-regex",
            &regex,
        ]),
        kosli_env(&fake),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let mut expected = f.expected_a.clone();
    expected.extend(f.expected_b.clone());
    assert_eq!(fake.reports("prod"), [json!({ "artifacts": expected })]);
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "skipping Running pod all-pulling in namespace {}",
            f.ns_b
        )),
        "{err}"
    );
    assert!(err.contains("has containers without a usable image ID, reporting it without them: sidecar (empty image ID)"), "{err}");
}

#[tokio::test]
async fn namespace_flags_select_on_a_live_cluster() {
    let f = fixture().await;
    let fake = FakeKosli::start().await;
    for name in ["by-name", "by-exclude"] {
        fake.add_environment(name, "K8S");
    }
    let kc = kubeconfig(&TestEnv::get());
    let o = run_async(
        strings(&["snapshot", "by-name", "--kubeconfig", &kc, "-n", &f.ns_b]),
        kosli_env(&fake),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fake.reports("by-name"),
        [json!({ "artifacts": f.expected_b })]
    );

    // Excluding lists the whole cluster (other tests' pods too): check ours only.
    let o = run_async(
        strings(&["snapshot", "by-exclude", "--kubeconfig", &kc, "-x", &f.ns_b]),
        kosli_env(&fake),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let report = &fake.reports("by-exclude")[0];
    let ours: Vec<&Value> = report["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["namespace"].as_str().unwrap().starts_with(&f.prefix))
        .collect();
    assert_eq!(ours, f.expected_a.iter().collect::<Vec<_>>());
}

#[tokio::test]
async fn config_file_reports_each_environment_its_own_pods() {
    let f = fixture().await;
    let fake = FakeKosli::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "environments:\n  - name: shop\n    namespaces: [{}]\n  - name: backend\n    namespacesRegex: ['^{}-b$']\n",
            f.ns_a, f.prefix
        ),
    )
    .unwrap();
    let o = run_async(
        strings(&[
            "snapshot",
            "-A",
            "--config-file",
            config.to_str().unwrap(),
            "--kubeconfig",
            &kubeconfig(&TestEnv::get()),
        ]),
        kosli_env(&fake),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fake.reports("shop"), [json!({ "artifacts": f.expected_a })]);
    assert_eq!(
        fake.reports("backend"),
        [json!({ "artifacts": f.expected_b })]
    );
}

/// Lets testenv-nobody list pods in one namespace only.
async fn grant_pod_list(client: &Client, namespace: &str) {
    let nobody =
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "testenv-nobody"});
    grant_pod_list_to(client, namespace, nobody).await;
}

/// Lets `subject` list pods in one namespace only, by a Role and RoleBinding.
async fn grant_pod_list_to(client: &Client, namespace: &str, subject: Value) {
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "pod-reader", "namespace": namespace},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "pod-reader", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [subject]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// A kubeconfig for a fresh ServiceAccount of `namespace`: the identity a
/// CronJob's pod has.
async fn service_account_kubeconfig(
    client: &Client,
    namespace: &str,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let name = "snapshotter";
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": namespace}}))
            .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    support::testenv::token_kubeconfig(client, namespace, name, dir).await
}

/// `-n a,b` lists pods namespace by namespace: a ServiceAccount with nothing
/// but a RoleBinding in each namespace it reports is enough, as it is for the
/// Kosli CLI. The same account is refused a cluster-wide list, which an
/// environment without `-n` needs.
#[tokio::test]
async fn exact_namespaces_need_only_namespaced_rights() {
    let f = fixture().await;
    let account = json!({"kind": "ServiceAccount", "name": "snapshotter", "namespace": f.ns_a});
    for ns in [&f.ns_a, &f.ns_b] {
        grant_pod_list_to(&f.client, ns, account.clone()).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let kc = service_account_kubeconfig(&f.client, &f.ns_a, dir.path()).await;
    let kc = kc.to_str().unwrap();
    let fake = FakeKosli::start().await;
    fake.add_environment("scoped", "K8S");
    let both = format!("{},{}", f.ns_a, f.ns_b);
    let o = run_async(
        strings(&["snapshot", "k8s", "scoped", "-n", &both, "--kubeconfig", kc]),
        kosli_env(&fake),
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let mut expected = f.expected_a.clone();
    expected.extend(f.expected_b.iter().cloned());
    assert_eq!(fake.reports("scoped"), [json!({ "artifacts": expected })]);

    let o = run_async(
        strings(&["snapshot", "scoped", "--kubeconfig", kc]),
        kosli_env(&fake),
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "User \"system:serviceaccount:{}:snapshotter\" cannot list resource \"pods\" in API group \"\" at the cluster scope",
            f.ns_a
        )),
        "{err}"
    );
    assert_eq!(
        fake.reports("scoped").len(),
        1,
        "nothing sent from the refused list"
    );
}

/// As in the Kosli CLI, `--auto-environment` creates the environment before
/// the pods are listed: a list the identity is refused leaves the environment
/// created, with the CLI's default description, and no report.
#[tokio::test]
async fn auto_environment_is_ensured_before_pods_are_listed() {
    let f = fixture().await;
    let fake = FakeKosli::start().await;
    let nobody = TestEnv::get()
        .kubeconfig_nobody
        .to_str()
        .unwrap()
        .to_owned();
    let o = run_async(
        strings(&[
            "snapshot",
            "k8s",
            "fresh",
            "-A",
            "-n",
            &f.ns_a,
            "--kubeconfig",
            &nobody,
        ]),
        kosli_env(&fake),
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("forbidden"), "{}", stderr(&o));
    let env = fake.state().environments["fresh"].clone();
    assert_eq!(
        (env.kind.as_str(), env.description.as_str()),
        ("K8S", "Auto-created by kosli snapshot")
    );
    assert!(fake.reports("fresh").is_empty());
}

#[tokio::test]
async fn rbac_refusal_fails_only_its_environment_and_sends_nothing_for_it() {
    let f = fixture().await;
    grant_pod_list(&f.client, &f.ns_a).await;
    let fake = FakeKosli::start().await;
    for name in ["allowed", "forbidden", "whole-cluster"] {
        fake.add_environment(name, "K8S");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "environments:\n  - name: allowed\n    namespaces: [{}]\n  - name: forbidden\n    namespaces: [{}, {}]\n  - name: whole-cluster\n",
            f.ns_a, f.ns_a, f.ns_b
        ),
    )
    .unwrap();
    let nobody = TestEnv::get()
        .kubeconfig_nobody
        .to_str()
        .unwrap()
        .to_owned();
    let o = run_async(
        strings(&[
            "snapshot",
            "--config-file",
            config.to_str().unwrap(),
            "--kubeconfig",
            &nobody,
        ]),
        kosli_env(&fake),
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        fake.reports("allowed"),
        [json!({ "artifacts": f.expected_a })]
    );
    assert!(
        fake.reports("forbidden").is_empty(),
        "a partial view must never be reported"
    );
    assert!(fake.reports("whole-cluster").is_empty());
    let err = stderr(&o);
    assert!(
        err.contains(&format!("failed to list pods in namespace {}", f.ns_b)),
        "{err}"
    );
    assert!(err.contains("failed to list pods cluster-wide"), "{err}");
    assert!(err.contains("forbidden"), "{err}");
    // Refused by RBAC, for exactly that identity and scope.
    for reason in [
        format!(
            "User \"testenv-nobody\" cannot list resource \"pods\" in API group \"\" in the namespace \"{}\"",
            f.ns_b
        ),
        "User \"testenv-nobody\" cannot list resource \"pods\" in API group \"\" at the cluster scope"
            .to_owned(),
    ] {
        assert!(err.contains(&reason), "stderr lacks {reason:?}: {err}");
    }
    assert!(
        err.contains("2 of 3 environments were not reported"),
        "{err}"
    );
}

#[tokio::test]
async fn long_pod_lists_are_read_to_the_last_page() {
    const PODS: usize = 520; // the page size is 500
    let env = TestEnv::get();
    let client = env.client().await;
    let ns = unique("many");
    create_namespace(&client, &ns, &[]).await;
    let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in (0..PODS).collect::<Vec<_>>().chunks(PODS / 8) {
        let (client, ns, web, chunk) = (client.clone(), ns.clone(), web.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for i in chunk {
                running_pod(
                    &client,
                    &ns,
                    &format!("web-{i:04}"),
                    &[],
                    std::slice::from_ref(&web),
                )
                .await;
            }
        });
    }
    tasks.join_all().await;

    let fake = FakeKosli::start().await;
    fake.add_environment("many", "K8S");
    // A regex lists cluster-wide, a name list namespace by namespace: page through both.
    for selector in [
        vec!["--namespaces-regex".to_owned(), format!("^{ns}$")],
        vec!["-n".to_owned(), ns.clone()],
    ] {
        let mut a = strings(&["snapshot", "many", "--kubeconfig", &kubeconfig(&env)]);
        a.extend(selector);
        let o = run_async(a, kosli_env(&fake)).await;
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for report in fake.reports("many") {
        let names: Vec<&str> = report["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["podName"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = (0..PODS).map(|i| format!("web-{i:04}")).collect();
        assert_eq!(names, expected);
    }
    assert_eq!(fake.reports("many").len(), 2);
}
