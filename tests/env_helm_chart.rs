//! The Helm chart (charts/kosli-operator) against the real tools and API server:
//! `helm lint`, `helm template` of the defaults and of every examples/values file,
//! `kubernetes-validate --strict` and a server-side dry run of what it renders, its
//! RBAC proven by running the operator binary with exactly the ServiceAccount
//! identity the chart binds, its KosliEnvironments from values, its values schema,
//! and the gate's webhook certificate.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kosli_operator::core::crd::{KosliEnvironment, KosliEnvironmentSpec};
use kosli_operator::observe::metrics::Metrics;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use regex::Regex;
use serde_json::{Value, json};
use support::chart_pod::ChartPod;
use support::fake_kosli::{FakeKosli, ORG, TOKEN};
use support::helm::{
    Applied, Doc, all, args_of, assert_restricted, chart, env_of, example_values, grant, grants,
    helm_template, joined, kinds, kubernetes_validate, only, operator_container, render,
    server_dry_run, write_values,
};
use support::operator::eventually;
use support::testenv::{
    RunningContainer, TestEnv, api_error, apply_crd, client_for, ensure_namespace, running_pod,
    tool, unique, var,
};
use support::tools::{isolated, kubectl, run, text};

/// The namespace the test environment's ServiceAccount identity lives in.
const RELEASE_NAMESPACE: &str = "kosli-operator";
/// The ServiceAccount of that identity (TESTENV_KUBECONFIG_SA).
const SERVICE_ACCOUNT: &str = "kosli-operator";
/// The test API server's version: rendered for it, the chart picks the APIs it serves.
const TEST_APISERVER_VERSION: &str = "1.20.2";
const NGINX: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const SECONDS: Duration = Duration::from_secs(30);

/// Every value group switched on at once (the examples leave some off).
const EVERYTHING_ON: &str = r#"
replicaCount: 3
image:
  digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
  pullPolicy: Always
imagePullSecrets: [{name: regcred}]
serviceAccount:
  annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::123456789012:role/kosli"}
reporterConfig:
  kosliOrg: acme
  httpProxy: http://proxy.example:3128
  maxApiRetries: 5
  dryRun: false
  watchNamespaces: [default, kosli-operator]
  environmentSelector: {shard: a}
  eventsNamespace: default
  debounce: 2s
  maxDebounce: 20s
  logLevel: debug
  securityContext: {runAsUser: 1000}
  environments:
    - name: apps
      namespaces: [default]
      podSelector: {matchLabels: {tier: backend}}
      gate: {mode: Audit}
leaderElection: {leaseName: kosli-operator-shard-a}
env: {KOSLI_HOST: "https://app.us.kosli.com"}
extraEnvVars: [{name: HTTPS_PROXY, value: "http://proxy.example:3128"}]
extraVolumes: [{name: scratch, emptyDir: {}}]
extraVolumeMounts: [{name: scratch, mountPath: /scratch}]
customCA: {enabled: true, secretName: corp-ca}
podLabels: {team: platform}
podAnnotations: {example.com/a: "1"}
podTemplateAnnotations: {example.com/b: "2"}
deploymentAnnotations: {example.com/c: "3"}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: platform, effect: NoSchedule}]
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector: {matchLabels: {app.kubernetes.io/name: kosli-operator}}
topologySpreadConstraints:
  - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway}
priorityClassName: platform-critical
podDisruptionBudget: {maxUnavailable: 1}
metrics:
  service: {annotations: {prometheus.io/scrape: "true"}}
  serviceMonitor: {enabled: true, labels: {release: prometheus}}
networkPolicy:
  enabled: true
  metricsFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
  egress: [{ports: [{port: 443, protocol: TCP}]}]
gate:
  enabled: true
  failurePolicy: Fail
  timeoutSeconds: 5
  exemptNamespaces: [monitoring]
  namespaceSelector:
    matchLabels: {kosli.com/gate: enabled}
    matchExpressions: [{key: team, operator: Exists}]
  objectSelector: {matchLabels: {gated: "yes"}}
  insecureRegistries: ["registry.local:5000"]
  compliantCacheTTL: 10m
  nonCompliantCacheTTL: 30s
  pullSecrets: true
  pullSecretNamespaces: [default]
  maxPullSecrets: 3
  maxLookupsPerReview: 4
  maxLookups: 16
  maxConnections: 100
  breakGlass: {groups: [sre, platform], users: [alice]}
  clientAuth: {enabled: true, caSecret: apiserver-client-ca, caKey: ca.pem}
  registryCA: {enabled: true, secretName: registry-ca}
  tls: {validityDays: 365}
"#;

/// Asserts that RBAC refused the chart's ServiceAccount exactly `verb` on
/// `group`/`resource`: HTTP 403 with the API server's reason naming all three,
/// so that no other refusal (a missing object, another identity) passes for it.
fn assert_forbidden<T: std::fmt::Debug>(
    result: Result<T, kube::Error>,
    verb: &str,
    group: &str,
    resource: &str,
    why: &str,
) {
    let account = (RELEASE_NAMESPACE, SERVICE_ACCOUNT);
    assert_forbidden_to(account, result, verb, group, resource, why);
}

/// As [`assert_forbidden`], for the ServiceAccount `(namespace, name)`.
fn assert_forbidden_to<T: std::fmt::Debug>(
    (namespace, name): (&str, &str),
    result: Result<T, kube::Error>,
    verb: &str,
    group: &str,
    resource: &str,
    why: &str,
) {
    let (code, message) = api_error(result);
    let reason = format!(
        "User \"system:serviceaccount:{namespace}:{name}\" \
         cannot {verb} resource \"{resource}\" in API group \"{group}\""
    );
    assert!(
        code == 403 && message.contains(" is forbidden: ") && message.contains(&reason),
        "{why}: expected 403 with {reason:?}, got {code}: {message}"
    );
}

#[test]
fn chart_crd_is_the_generated_crd() {
    let generated =
        std::fs::read_to_string(support::repo_file("crds/koslienvironments.kosli.com.yaml"))
            .unwrap();
    let in_chart = std::fs::read_to_string(chart().join("crds/koslienvironments.kosli.com.yaml"))
        .unwrap_or_else(|e| panic!("the chart has no crds/koslienvironments.kosli.com.yaml: {e}"));
    assert!(
        in_chart == generated,
        "charts/kosli-operator/crds/koslienvironments.kosli.com.yaml differs from \
         crds/koslienvironments.kosli.com.yaml; copy it: \
         cp crds/koslienvironments.kosli.com.yaml charts/kosli-operator/crds/"
    );
}

#[test]
fn helm_lint_passes_for_defaults_and_every_example() {
    let mut sets: Vec<Option<PathBuf>> = vec![None];
    sets.extend(example_values().into_iter().map(Some));
    for values in sets {
        let mut cmd = isolated(tool("HELM"));
        cmd.args(["lint", "--strict"]).arg(chart());
        if let Some(file) = &values {
            cmd.arg("--values").arg(file);
        }
        let output = run(&mut cmd, "");
        let out = text(&output);
        assert!(
            output.status.success() && out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint --strict with {values:?}:\n{out}"
        );
    }
}

#[tokio::test]
async fn every_values_set_renders_manifests_that_validate_and_the_apiserver_accepts() {
    let env = TestEnv::get();
    let admin = env.client().await;
    apply_crd(&admin).await;
    ensure_namespace(&admin, RELEASE_NAMESPACE).await;
    // examples/values/namespace-scope.yaml puts Roles in the namespaces it watches.
    for watched in ["shop", "payments"] {
        ensure_namespace(&admin, watched).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let everything = write_values(dir.path(), "everything-on.yaml", EVERYTHING_ON);
    let mut sets: Vec<(String, Vec<&Path>)> = vec![("the default values".into(), vec![])];
    let examples = example_values();
    for file in &examples {
        sets.push((file.display().to_string(), vec![file.as_path()]));
    }
    sets.push(("every value group on".into(), vec![everything.as_path()]));

    for (what, values) in &sets {
        // As Helm renders for a current cluster: validated against the 1.30 schemas.
        let docs = render("kosli-operator", RELEASE_NAMESPACE, values, &[]);
        let deployment = only(&docs, "Deployment");
        assert_restricted(deployment, what);
        kubernetes_validate(&docs, what);
        for pdb in all(&docs, "PodDisruptionBudget") {
            assert_eq!(pdb.value["apiVersion"], "policy/v1", "{what}");
        }

        // As Helm renders for the test API server (v1.20): accepted by it.
        let old = render(
            "kosli-operator",
            RELEASE_NAMESPACE,
            values,
            &["--kube-version", TEST_APISERVER_VERSION],
        );
        for pdb in all(&old, "PodDisruptionBudget") {
            assert_eq!(pdb.value["apiVersion"], "policy/v1beta1", "{what}");
        }
        server_dry_run(&env.kubeconfig, &old, what);
    }

    // The defaults: the documented resources, probes and security settings.
    let docs = render("kosli-operator", RELEASE_NAMESPACE, &[], &[]);
    let deployment = only(&docs, "Deployment");
    let container = operator_container(deployment);
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        deployment.value["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        65532
    );
    assert_eq!(deployment.value["spec"]["replicas"], 1);
    assert_eq!(
        container["image"], "ghcr.io/kosli-dev/kosli-operator:0.1.0",
        "the tag defaults to appVersion"
    );
    let env_vars = env_of(deployment);
    assert!(
        !env_vars.contains_key("KOSLI_API_TOKEN"),
        "the token must never be in the environment"
    );
    assert_eq!(
        env_vars["KOSLI_API_TOKEN_FILE"]["value"],
        "/etc/kosli-operator/api-token/token"
    );
    let volumes = &deployment.value["spec"]["template"]["spec"]["volumes"];
    assert_eq!(
        volumes[0]["secret"],
        json!({"secretName": "kosli-api-token", "items": [{"key": "key", "path": "token"}]}),
        "the k8s-reporter defaults: Secret kosli-api-token, key `key`"
    );
    let mut rendered_kinds = kinds(&docs);
    rendered_kinds.sort();
    assert_eq!(
        rendered_kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "NetworkPolicy",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ],
        "by default: no gate, no PodDisruptionBudget for one replica, a NetworkPolicy, \
         no ServiceMonitor, no KosliEnvironments"
    );

    // Every value group on: each reaches the manifests.
    let docs = render("kosli-operator", RELEASE_NAMESPACE, &[&everything], &[]);
    let deployment = only(&docs, "Deployment");
    let args = args_of(deployment);
    for expected in [
        "--environment-selector=shard=a",
        "--watch-namespaces=default,kosli-operator",
        "--events-namespace=default",
        "--lease-name=kosli-operator-shard-a",
        "--debounce=2s",
        "--max-debounce=20s",
        "--webhook-timeout=5s",
        "--gate-exempt-namespaces=monitoring",
        "--insecure-registries=registry.local:5000",
        "--registry-ca-bundle=/etc/kosli-operator/registry-ca/ca.crt",
        "--gate-compliant-cache=10m",
        "--gate-non-compliant-cache=30s",
        "--gate-pull-secrets",
        "--gate-max-pull-secrets=3",
        "--gate-max-lookups-per-review=4",
        "--gate-max-lookups=16",
        "--webhook-max-connections=100",
        "--gate-break-glass-groups=sre,platform",
        "--gate-break-glass-users=alice",
        "--webhook-client-ca=/etc/kosli-operator/webhook-client-ca/ca.crt",
    ] {
        assert!(
            args.contains(&expected.to_owned()),
            "{expected} missing: {args:?}"
        );
    }
    let env_vars = env_of(deployment);
    for (name, value) in [
        ("KOSLI_ORG", "acme"),
        ("KOSLI_HOST", "https://app.us.kosli.com"),
        ("KOSLI_HTTP_PROXY", "http://proxy.example:3128"),
        ("KOSLI_CA_BUNDLE", "/etc/kosli-operator/custom-ca/ca.crt"),
        ("KOSLI_MAX_API_RETRIES", "5"),
        ("HTTPS_PROXY", "http://proxy.example:3128"),
        ("RUST_LOG", "debug"),
    ] {
        assert_eq!(env_vars[name]["value"], value, "{name}");
    }
    let pod = &deployment.value["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    assert_eq!(pod["metadata"]["annotations"]["example.com/a"], "1");
    assert_eq!(pod["metadata"]["annotations"]["example.com/b"], "2");
    assert_eq!(
        deployment.value["metadata"]["annotations"],
        json!({"example.com/c": "3"}),
        "deploymentAnnotations on the Deployment object, and nothing else there"
    );
    assert!(
        pod["metadata"]["annotations"]
            .get("example.com/c")
            .is_none()
    );
    assert_eq!(pod["spec"]["priorityClassName"], "platform-critical");
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}])
    );
    assert_eq!(
        operator_container(deployment)["image"],
        "ghcr.io/kosli-dev/kosli-operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(
        operator_container(deployment)["securityContext"]["runAsUser"],
        1000,
        "a k8s-reporter securityContext merges into the hardened defaults"
    );
    for kind in [
        "NetworkPolicy",
        "ServiceMonitor",
        "PodDisruptionBudget",
        "ValidatingWebhookConfiguration",
        "KosliEnvironment",
    ] {
        only(&docs, kind);
    }
    assert_eq!(
        only(&docs, "PodDisruptionBudget").value["spec"]["maxUnavailable"],
        1
    );
}

/// Every grant on secrets or serviceaccounts, in any Role or ClusterRole:
/// (kind, namespace, resource, verb).
fn secret_grants(docs: &[Doc]) -> Vec<(String, Option<String>, String, String)> {
    docs.iter()
        .filter(|d| d.kind() == "Role" || d.kind() == "ClusterRole")
        .flat_map(|role| {
            grants(role)
                .into_iter()
                .filter(|(_, r, _, _)| r == "secrets" || r == "serviceaccounts")
                .map(|(_, r, v, _)| {
                    let ns = role.namespace().map(str::to_owned);
                    (role.kind().to_owned(), ns, r, v)
                })
        })
        .collect()
}

/// Without gate.pullSecrets no secrets or serviceaccounts access exists
/// anywhere (whatever else is set); with gate.pullSecretNamespaces the access
/// is in Roles of exactly those namespaces, and nothing cluster-wide.
#[test]
fn pull_secret_access_exists_only_with_pull_secrets_and_only_where_listed() {
    for (what, args) in [
        ("the defaults", vec![]),
        ("the gate", vec!["--set", "gate.enabled=true"]),
        (
            "the gate with namespaces listed but pullSecrets off",
            vec![
                "--set",
                "gate.enabled=true",
                "--set",
                "gate.pullSecretNamespaces={a,b}",
            ],
        ),
        (
            "pullSecrets without the gate",
            vec![
                "--set",
                "gate.pullSecrets=true",
                "--set",
                "gate.pullSecretNamespaces={a,b}",
            ],
        ),
    ] {
        let docs = render("rel", "ops", &[], &args);
        assert_eq!(secret_grants(&docs), vec![], "{what}");
        assert!(
            !args_of(only(&docs, "Deployment")).contains(&"--gate-pull-secrets".to_owned()),
            "{what}"
        );
    }

    let cluster_wide = render(
        "rel",
        "ops",
        &[],
        &[
            "--set",
            "gate.enabled=true",
            "--set",
            "gate.pullSecrets=true",
        ],
    );
    let s = |v: &str| v.to_owned();
    assert_eq!(
        secret_grants(&cluster_wide),
        vec![
            (s("ClusterRole"), None, s("secrets"), s("get")),
            (s("ClusterRole"), None, s("serviceaccounts"), s("get")),
        ]
    );

    let listed = render(
        "rel",
        "ops",
        &[],
        &[
            "--set",
            "gate.enabled=true",
            "--set",
            "gate.pullSecrets=true",
            "--set",
            "gate.pullSecretNamespaces={a,b}",
        ],
    );
    let mut found = secret_grants(&listed);
    found.sort();
    let role = |ns: &str, resource: &str| (s("Role"), Some(s(ns)), s(resource), s("get"));
    assert_eq!(
        found,
        vec![
            role("a", "secrets"),
            role("a", "serviceaccounts"),
            role("b", "secrets"),
            role("b", "serviceaccounts"),
        ]
    );
    let bindings: Vec<(Option<&str>, &Value)> = all(&listed, "RoleBinding")
        .into_iter()
        .filter(|b| b.name() == "rel-kosli-operator-pull-secrets")
        .map(|b| (b.namespace(), &b.value["subjects"]))
        .collect();
    let subjects =
        json!([{"kind": "ServiceAccount", "name": "rel-kosli-operator", "namespace": "ops"}]);
    assert_eq!(
        bindings,
        vec![(Some("a"), &subjects), (Some("b"), &subjects)]
    );
    assert!(args_of(only(&listed, "Deployment")).contains(&"--gate-pull-secrets".to_owned()));
}

/// The gate's limits and break-glass authority reach the command line with
/// their documented defaults; users, client auth and pull secrets only when set.
/// `gate.matchConditions` reach the ValidatingWebhookConfiguration on 1.28+
/// clusters only; per-environment gate options reach the KosliEnvironment.
#[test]
fn match_conditions_are_rendered_from_1_28_and_environment_gate_options_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let values = write_values(
        dir.path(),
        "values.yaml",
        r#"
gate:
  enabled: true
  matchConditions:
    - name: not-the-deployer
      expression: "request.userInfo.username != 'system:serviceaccount:argocd:controller'"
reporterConfig:
  environments:
    - name: prod
      namespaces: [shop]
      gate: {mode: "Enforce", unknownArtifacts: Warn, requireDigest: true}
"#,
    );
    let webhook = |version: &str| {
        let docs = render("rel", "ops", &[&values], &["--kube-version", version]);
        let environment = only(&docs, "KosliEnvironment").value["spec"]["gate"].clone();
        assert_eq!(
            environment,
            serde_json::json!({"mode": "Enforce", "unknownArtifacts": "Warn", "requireDigest": true})
        );
        only(&docs, "ValidatingWebhookConfiguration").value["webhooks"][0].clone()
    };
    let recent = webhook("1.29.0");
    assert_eq!(
        recent["matchConditions"],
        serde_json::json!([{"name": "not-the-deployer",
            "expression": "request.userInfo.username != 'system:serviceaccount:argocd:controller'"}])
    );
    assert!(
        webhook("1.27.3").get("matchConditions").is_none(),
        "not before 1.28"
    );
    let bad = write_values(
        dir.path(),
        "bad.yaml",
        "gate:\n  enabled: true\n  matchConditions: [{name: x}]\n",
    );
    let err = helm_template("rel", "ops", &[&bad], &["--kube-version", "1.29.0"]).unwrap_err();
    assert!(err.contains("expression"), "{err}");
}

#[test]
fn gate_flags_are_rendered_with_their_defaults() {
    let docs = render("rel", "ops", &[], &["--set", "gate.enabled=true"]);
    let args = args_of(only(&docs, "Deployment"));
    let gate_flags: Vec<&String> = args
        .iter()
        .filter(|a| {
            [
                "--gate-pull-secrets",
                "--gate-max-",
                "--gate-break-glass-",
                "--webhook-max-connections",
                "--webhook-client-ca",
            ]
            .iter()
            .any(|p| a.starts_with(p))
        })
        .collect();
    assert_eq!(
        gate_flags,
        [
            "--webhook-max-connections=256",
            "--gate-max-pull-secrets=8",
            "--gate-max-lookups-per-review=8",
            "--gate-max-lookups=32",
            "--gate-break-glass-groups=kosli-operator:break-glass",
        ]
    );
    let docs = render(
        "rel",
        "ops",
        &[],
        &[
            "--set",
            "gate.enabled=true",
            "--set",
            "gate.clientAuth.enabled=true",
            "--set-string",
            "gate.clientAuth.caBundle=-----BEGIN CERTIFICATE-----",
        ],
    );
    let deployment = only(&docs, "Deployment");
    assert!(
        args_of(deployment)
            .contains(&"--webhook-client-ca=/etc/kosli-operator/webhook-client-ca/ca.crt".into())
    );
    let secret = all(&docs, "Secret")
        .into_iter()
        .find(|s| s.name() == "rel-kosli-operator-webhook-client-ca")
        .expect("the chart puts caBundle in a Secret");
    assert_eq!(
        secret.value["data"]["ca.crt"],
        "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"
    );
    let volumes = &deployment.value["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes
            .as_array()
            .unwrap()
            .contains(&json!({"name": "webhook-client-ca",
            "secret": {"secretName": "rel-kosli-operator-webhook-client-ca",
                "items": [{"key": "ca.crt", "path": "ca.crt"}]}})),
        "{volumes}"
    );
    // Client auth without a CA is refused at render time.
    let err = helm_template(
        "rel",
        "ops",
        &[],
        &[
            "--set",
            "gate.enabled=true",
            "--set",
            "gate.clientAuth.enabled=true",
        ],
    )
    .unwrap_err();
    assert!(
        err.contains(
            "gate.clientAuth.enabled needs gate.clientAuth.caSecret or gate.clientAuth.caBundle"
        ),
        "{err}"
    );
}

/// The NetworkPolicy is on by default; with the gate, the webhook port is
/// open only to webhookFrom (private ranges and kube-system by default), and
/// the metrics port as metricsFrom says.
#[test]
fn the_network_policy_admits_the_webhook_port_only_from_webhook_from() {
    let docs = render("rel", "ops", &[], &["--set", "gate.enabled=true"]);
    let policy = only(&docs, "NetworkPolicy");
    assert_eq!(policy.value["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        policy.value["spec"]["ingress"],
        json!([
            {"ports": [{"port": "http", "protocol": "TCP"}]},
            {"ports": [{"port": "webhook", "protocol": "TCP"}], "from": [
                {"ipBlock": {"cidr": "10.0.0.0/8"}},
                {"ipBlock": {"cidr": "172.16.0.0/12"}},
                {"ipBlock": {"cidr": "192.168.0.0/16"}},
                {"ipBlock": {"cidr": "100.64.0.0/10"}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}},
            ]},
        ])
    );
    let dir = tempfile::tempdir().unwrap();
    let values = write_values(
        dir.path(),
        "narrow.yaml",
        "gate: {enabled: true}\nnetworkPolicy:\n  webhookFrom: [{ipBlock: {cidr: 10.1.2.3/32}}]\n  \
         metricsFrom: [{namespaceSelector: {matchLabels: {team: monitoring}}}]\n",
    );
    let docs = render("rel", "ops", &[&values], &[]);
    assert_eq!(
        only(&docs, "NetworkPolicy").value["spec"]["ingress"],
        json!([
            {"ports": [{"port": "http", "protocol": "TCP"}],
             "from": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]},
            {"ports": [{"port": "webhook", "protocol": "TCP"}],
             "from": [{"ipBlock": {"cidr": "10.1.2.3/32"}}]},
        ])
    );
    kubernetes_validate(&docs, "a narrowed NetworkPolicy");
    // Without the gate the webhook port is not opened at all.
    let docs = render("rel", "ops", &[], &[]);
    assert_eq!(
        only(&docs, "NetworkPolicy").value["spec"]["ingress"],
        json!([{"ports": [{"port": "http", "protocol": "TCP"}]}])
    );
}

#[test]
fn rbac_is_least_privilege_as_rendered() {
    let dir = tempfile::tempdir().unwrap();
    let docs = render("rel", "ops", &[], &[]);
    let cluster_role = only(&docs, "ClusterRole");
    let mut cluster = grants(cluster_role);
    cluster.sort();
    let mut expected = vec![
        grant("", "pods", "get"),
        grant("", "pods", "list"),
        grant("", "pods", "watch"),
        grant("", "namespaces", "get"),
        grant("", "namespaces", "list"),
        grant("", "namespaces", "watch"),
        grant("kosli.com", "koslienvironments", "get"),
        grant("kosli.com", "koslienvironments", "list"),
        grant("kosli.com", "koslienvironments", "watch"),
        grant("kosli.com", "koslienvironments/status", "get"),
        grant("kosli.com", "koslienvironments/status", "patch"),
        grant("kosli.com", "koslienvironments/status", "update"),
    ];
    expected.sort();
    assert_eq!(cluster, expected, "nothing else cluster-wide (no secrets)");
    let roles = all(&docs, "Role");
    let lease_role = roles
        .iter()
        .find(|r| r.name().ends_with("-leader-election"))
        .unwrap();
    assert_eq!(
        lease_role.namespace(),
        Some("ops"),
        "leases in its own namespace"
    );
    let mut leases = grants(lease_role);
    leases.sort();
    let named = |verb: &str| {
        (
            "coordination.k8s.io".to_owned(),
            "leases".to_owned(),
            verb.to_owned(),
            vec!["kosli-operator".to_owned()],
        )
    };
    assert_eq!(
        leases,
        vec![
            grant("coordination.k8s.io", "leases", "create"),
            named("get"),
            named("update")
        ]
    );
    let events_role = roles
        .iter()
        .find(|r| r.name().ends_with("-events"))
        .unwrap();
    assert_eq!(events_role.namespace(), Some("kube-system"));
    assert_eq!(
        grants(events_role),
        vec![grant("events.k8s.io", "events", "create")]
    );
    for binding in all(&docs, "RoleBinding")
        .into_iter()
        .chain(all(&docs, "ClusterRoleBinding"))
    {
        assert_eq!(
            binding.value["subjects"],
            json!([{"kind": "ServiceAccount", "name": "rel-kosli-operator", "namespace": "ops"}])
        );
    }

    // The gate alone adds nothing; gate.pullSecrets adds reading pull secrets.
    let gate = render("rel", "ops", &[], &["--set", "gate.enabled=true"]);
    assert_eq!(grants(only(&gate, "ClusterRole")).len(), cluster.len());
    let pull = render(
        "rel",
        "ops",
        &[],
        &[
            "--set",
            "gate.enabled=true",
            "--set",
            "gate.pullSecrets=true",
        ],
    );
    let pull_grants = grants(only(&pull, "ClusterRole"));
    assert!(pull_grants.contains(&grant("", "secrets", "get")));
    assert!(pull_grants.contains(&grant("", "serviceaccounts", "get")));
    assert!(
        !pull_grants
            .iter()
            .any(|(_, r, v, _)| r == "secrets" && v != "get"),
        "get only, never list or watch: {pull_grants:?}"
    );

    // permissionScope "namespace": no cluster-wide right at all; pods only in
    // the watched namespaces.
    let values = write_values(
        dir.path(),
        "scoped.yaml",
        "serviceAccount: {permissionScope: namespace}\nreporterConfig: {watchNamespaces: [shop, payments], \
         environments: [{name: shop, namespaces: [shop, payments]}]}\n",
    );
    let scoped = render("rel", "ops", &[&values], &[]);
    let kinds = kinds(&scoped);
    assert!(!kinds.iter().any(|k| k.starts_with("Cluster")), "{kinds:?}");
    let pod_roles: Vec<&str> = all(&scoped, "Role")
        .into_iter()
        .filter(|r| r.name().ends_with("-pods"))
        .map(|r| r.namespace().unwrap())
        .collect();
    assert_eq!(pod_roles, ["shop", "payments"]);
    assert!(
        args_of(only(&scoped, "Deployment")).contains(&"--watch-namespaces=shop,payments".into())
    );
}

/// The RBAC kinds the chart can render.
const RBAC_KINDS: [&str; 4] = ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"];

fn rbac_docs(docs: &[Doc]) -> Vec<&Doc> {
    docs.iter()
        .filter(|d| RBAC_KINDS.contains(&d.kind()))
        .collect()
}

/// As in Kosli's k8s-reporter chart, `serviceAccount.create: false` creates no
/// RBAC for the existing ServiceAccount unless `rbac.create: true` asks for it;
/// `rbac.create: false` creates none even with the chart's own ServiceAccount.
#[tokio::test]
async fn service_account_create_false_renders_no_rbac_unless_asked() {
    let env = TestEnv::get();
    let admin = env.client().await;
    apply_crd(&admin).await;
    ensure_namespace(&admin, RELEASE_NAMESPACE).await;
    let existing = [
        "--set",
        "serviceAccount.create=false",
        "--set",
        "serviceAccount.name=existing-sa",
    ];

    let docs = render("rel", RELEASE_NAMESPACE, &[], &existing);
    assert!(all(&docs, "ServiceAccount").is_empty());
    let names: Vec<String> = rbac_docs(&docs)
        .iter()
        .map(|d| format!("{} {}", d.kind(), d.name()))
        .collect();
    assert!(
        names.is_empty(),
        "no RBAC for a ServiceAccount the chart did not create: {names:?}"
    );
    assert_eq!(
        only(&docs, "Deployment").value["spec"]["template"]["spec"]["serviceAccountName"],
        "existing-sa"
    );

    // Asked for: the same rules as by default, bound to the existing ServiceAccount.
    let mut asked = existing.to_vec();
    asked.extend(["--set", "rbac.create=true"]);
    let docs = render("rel", RELEASE_NAMESPACE, &[], &asked);
    assert!(all(&docs, "ServiceAccount").is_empty());
    let defaults = render("rel", RELEASE_NAMESPACE, &[], &[]);
    let mut kinds_asked: Vec<String> = rbac_docs(&docs)
        .iter()
        .map(|d| d.kind().to_owned())
        .collect();
    let mut kinds_default: Vec<String> = rbac_docs(&defaults)
        .iter()
        .map(|d| d.kind().to_owned())
        .collect();
    kinds_asked.sort();
    kinds_default.sort();
    assert_eq!(kinds_asked, kinds_default);
    assert_eq!(
        grants(only(&docs, "ClusterRole")),
        grants(only(&defaults, "ClusterRole"))
    );
    for binding in all(&docs, "RoleBinding")
        .into_iter()
        .chain(all(&docs, "ClusterRoleBinding"))
    {
        assert_eq!(
            binding.value["subjects"],
            json!([{"kind": "ServiceAccount", "name": "existing-sa", "namespace": RELEASE_NAMESPACE}])
        );
    }
    let mut old_args = asked.clone();
    old_args.extend(["--kube-version", TEST_APISERVER_VERSION]);
    let old = render("rel", RELEASE_NAMESPACE, &[], &old_args);
    server_dry_run(
        &env.kubeconfig,
        &old,
        "serviceAccount.create=false with rbac.create=true",
    );

    // Refused: the chart's ServiceAccount without RBAC.
    let docs = render(
        "rel",
        RELEASE_NAMESPACE,
        &[],
        &["--set", "rbac.create=false"],
    );
    only(&docs, "ServiceAccount");
    assert!(rbac_docs(&docs).is_empty());
}

/// OpenShift assigns the uid, gid and fsGroup: values set to null leave them
/// out of the pod's and the container's securityContext (not rendered as null,
/// nor as the chart's defaults), the rest of the hardening stays, and the API
/// server accepts the result.
#[tokio::test]
async fn openshift_nulls_leave_uid_gid_and_fs_group_to_the_platform() {
    let env = TestEnv::get();
    let admin = env.client().await;
    apply_crd(&admin).await;
    ensure_namespace(&admin, RELEASE_NAMESPACE).await;
    let dir = tempfile::tempdir().unwrap();
    // fsGroup has no chart default, so Helm keeps its null: the chart must drop it.
    let values = write_values(
        dir.path(),
        "openshift.yaml",
        r#"
podSecurityContext:
  runAsUser: null
  runAsGroup: null
  fsGroup: null
reporterConfig:
  securityContext:
    runAsUser: null
    runAsGroup: null
    fsGroup: null
"#,
    );
    let what = "OpenShift's nulls";
    let docs = render("kosli-operator", RELEASE_NAMESPACE, &[&values], &[]);
    let deployment = only(&docs, "Deployment");
    let pod_sc = &deployment.value["spec"]["template"]["spec"]["securityContext"];
    let container_sc = &operator_container(deployment)["securityContext"];
    for (level, sc) in [("pod", pod_sc), ("container", container_sc)] {
        let keys: Vec<&String> = sc
            .as_object()
            .unwrap_or_else(|| panic!("{level} securityContext missing:\n{}", deployment.raw))
            .keys()
            .collect();
        for key in ["runAsUser", "runAsGroup", "fsGroup"] {
            assert!(
                !keys.iter().any(|k| *k == key),
                "{level} securityContext must leave {key} out: {sc}"
            );
        }
        assert_eq!(sc["runAsNonRoot"], json!(true), "{level}: {sc}");
    }
    assert_eq!(pod_sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container_sc["readOnlyRootFilesystem"], json!(true));
    assert_eq!(container_sc["capabilities"]["drop"], json!(["ALL"]));
    assert!(
        !deployment.raw.contains("null"),
        "nothing rendered as null:\n{}",
        deployment.raw
    );
    assert_restricted(deployment, what);
    kubernetes_validate(&docs, what);
    let old = render(
        "kosli-operator",
        RELEASE_NAMESPACE,
        &[&values],
        &["--kube-version", TEST_APISERVER_VERSION],
    );
    server_dry_run(&env.kubeconfig, &old, what);

    // A value given is rendered where it belongs: fsGroup at pod level.
    let docs = render(
        "kosli-operator",
        RELEASE_NAMESPACE,
        &[&values],
        &["--set", "podSecurityContext.fsGroup=1000650000"],
    );
    let pod_sc = &only(&docs, "Deployment").value["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod_sc["fsGroup"], 1000650000);
    // And without the nulls the chart's defaults stand.
    let docs = render("kosli-operator", RELEASE_NAMESPACE, &[], &[]);
    let deployment = only(&docs, "Deployment");
    assert_eq!(
        deployment.value["spec"]["template"]["spec"]["securityContext"]["runAsGroup"],
        65532
    );
    assert_eq!(
        operator_container(deployment)["securityContext"]["runAsGroup"],
        65532
    );
}

/// customCA (a proxy's or a corporate CA) is trusted for registries too when
/// the gate is on, unless gate.registryCA names a bundle of its own (the
/// operator takes one registry bundle).
#[test]
fn custom_ca_reaches_the_registry_ca_flag_with_the_gate() {
    let registry_ca = |args: &[&str]| -> Vec<String> {
        let docs = render("rel", "ops", &[], args);
        args_of(only(&docs, "Deployment"))
            .into_iter()
            .filter(|a| a.starts_with("--registry-ca-bundle"))
            .collect()
    };
    let custom_ca = [
        "--set",
        "customCA.enabled=true",
        "--set",
        "customCA.secretName=corp-ca",
    ];
    let gate = ["--set", "gate.enabled=true"];

    let custom_ca_and_gate: Vec<&str> = custom_ca.iter().chain(&gate).copied().collect();
    let docs = render("rel", "ops", &[], &custom_ca_and_gate);
    let deployment = only(&docs, "Deployment");
    assert_eq!(
        args_of(deployment)
            .into_iter()
            .filter(|a| a.starts_with("--registry-ca-bundle"))
            .collect::<Vec<_>>(),
        ["--registry-ca-bundle=/etc/kosli-operator/custom-ca/ca.crt"]
    );
    assert_eq!(
        env_of(deployment)["KOSLI_CA_BUNDLE"]["value"],
        "/etc/kosli-operator/custom-ca/ca.crt",
        "and still for Kosli"
    );
    let container = operator_container(deployment);
    assert!(
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "custom-ca", "mountPath": "/etc/kosli-operator/custom-ca", "readOnly": true})),
        "the file the flag names is mounted: {container}"
    );

    assert_eq!(
        registry_ca(&custom_ca),
        Vec::<String>::new(),
        "without the gate there are no registries to trust it for"
    );
    assert_eq!(registry_ca(&gate), Vec::<String>::new(), "no CA, no flag");
    let mut both = custom_ca_and_gate.clone();
    both.extend([
        "--set",
        "gate.registryCA.enabled=true",
        "--set",
        "gate.registryCA.secretName=registry-ca",
    ]);
    assert_eq!(
        registry_ca(&both),
        ["--registry-ca-bundle=/etc/kosli-operator/registry-ca/ca.crt"],
        "gate.registryCA wins: the flag takes one file"
    );
}

#[tokio::test]
async fn chart_rbac_lets_the_operator_report_and_refuses_secrets() {
    let env = TestEnv::get();
    let admin = env.client().await;
    let sa_kubeconfig = tool("TESTENV_KUBECONFIG_SA");
    assert_eq!(var("TESTENV_SA_NAMESPACE"), RELEASE_NAMESPACE);
    assert_eq!(var("TESTENV_SA_NAME"), SERVICE_ACCOUNT);
    apply_crd(&admin).await;
    ensure_namespace(&admin, RELEASE_NAMESPACE).await;
    let fake = FakeKosli::start().await;
    // The release name keeps this test's cluster-scoped objects apart from other tests'.
    let id = unique("helm");
    let app_ns = unique("helm-app");
    ensure_namespace(&admin, &app_ns).await;
    let shop = format!("{id}-shop");
    let missing = format!("{id}-missing");
    let token_secret = format!("{id}-token");

    let dir = tempfile::tempdir().unwrap();
    let values = write_values(
        dir.path(),
        "values.yaml",
        &format!(
            r#"
serviceAccount: {{name: {SERVICE_ACCOUNT}}}
kosliApiToken: {{secretName: {token_secret}, secretKey: api-token}}
leaderElection: {{leaseName: {id}}}
reporterConfig:
  kosliOrg: {ORG}
  kosliHost: {host}
  autoEnvironment: true
  environmentDescription: Reported by the chart test
  environmentSelector: {{test: {id}}}
  environments:
    - name: {shop}
      namespaces: [{app_ns}]
    - name: {missing}
      namespaces: [{app_ns}]
      autoCreate: false
"#,
            host = fake.url
        ),
    );
    let docs = render(&id, RELEASE_NAMESPACE, &[&values], &[]);
    let sa = only(&docs, "ServiceAccount");
    assert_eq!(
        (sa.name(), sa.namespace()),
        (SERVICE_ACCOUNT, Some(RELEASE_NAMESPACE)),
        "the chart must bind the identity of TESTENV_KUBECONFIG_SA"
    );

    // What `helm install` would create, minus the Deployment (no kubelet here):
    // the RBAC, the ServiceAccount and the KosliEnvironments; and the token Secret.
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": token_secret, "namespace": RELEASE_NAMESPACE},
        "stringData": {"api-token": TOKEN},
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), RELEASE_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let applied: Vec<&Doc> = docs
        .iter()
        .filter(|d| {
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "KosliEnvironment",
            ]
            .contains(&d.kind())
        })
        .collect();
    // Every right must come from this rendering: the identity starts with none.
    let sa = client_for(&sa_kubeconfig).await;
    assert_forbidden(
        Api::<Namespace>::all(sa.clone())
            .list(&ListParams::default())
            .await,
        "list",
        "",
        "namespaces",
        &format!(
            "{SERVICE_ACCOUNT} may list namespaces before the chart's RBAC is applied: something \
             else granted it rights on this API server, so this test would prove nothing"
        ),
    );
    let _applied = Applied::new(&env.kubeconfig, &applied);
    let output = kubectl(&env.kubeconfig, &["apply", "-f", "-"], &joined(&applied));
    assert!(output.status.success(), "{}", text(&output));

    let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
    running_pod(&admin, &app_ns, "web-1", &[], std::slice::from_ref(&web)).await;

    // The operator container as rendered, with the ServiceAccount's identity.
    let pod_name = format!("{id}-7d9f8b6c5-x2x4z");
    let mut op =
        ChartPod::start(only(&docs, "Deployment"), &admin, &sa_kubeconfig, &pod_name).await;
    op.wait_ready().await;

    // It reports: pods, namespaces and KosliEnvironments are readable, the token
    // file from the Secret works, autoCreate and the description came from values.
    let report = eventually(SECONDS, "the report with web-1", || async {
        fake.reports(&shop)
            .last()
            .filter(|r| r["artifacts"][0]["podName"] == "web-1")
            .cloned()
    })
    .await;
    assert_eq!(report["artifacts"][0]["namespace"], json!(app_ns));
    let created: Vec<Value> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path == format!("/api/v2/environments/{ORG}"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert!(
        created.iter().any(|b| b["name"] == json!(shop)
            && b["type"] == "K8S"
            && b["description"] == "Reported by the chart test"),
        "{created:?}"
    );
    assert!(
        !created.iter().any(|b| b["name"] == json!(missing)),
        "autoCreate: false on one environment wins over autoEnvironment"
    );

    // It writes status (koslienvironments/status).
    let environments: Api<KosliEnvironment> = Api::all(admin.clone());
    eventually(
        SECONDS,
        "status Ready=True on the reported environment",
        || {
            let environments = environments.clone();
            let shop = shop.clone();
            async move {
                let status = environments.get(&shop).await.ok()?.status?;
                status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                    .then_some(())
            }
        },
    )
    .await;

    // It records Events in the events namespace (kube-system).
    eventually(SECONDS, "the EnvironmentNotFound event", || async {
        support::testenv::events_about(&admin, &missing)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("EnvironmentNotFound"))
    })
    .await;

    // It leads through its Lease in the release namespace.
    let lease = Api::<Lease>::namespaced(admin.clone(), RELEASE_NAMESPACE)
        .get(&id)
        .await
        .unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    assert!(holder.starts_with(&pod_name), "{holder}");

    let log = op.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the chart's RBAC refused the operator something:\n{log}"
    );

    // And what it must not do, as the same identity.
    assert_forbidden(
        Api::<Secret>::namespaced(sa.clone(), RELEASE_NAMESPACE)
            .get(&token_secret)
            .await,
        "get",
        "",
        "secrets",
        "reading a Secret must be forbidden",
    );
    assert_forbidden(
        Api::<Secret>::all(sa.clone())
            .list(&ListParams::default())
            .await,
        "list",
        "",
        "secrets",
        "listing Secrets must be forbidden",
    );
    assert_forbidden(
        Api::<Pod>::namespaced(sa.clone(), &app_ns)
            .delete("web-1", &DeleteParams::default())
            .await,
        "delete",
        "",
        "pods",
        "pods are read-only",
    );
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": id}})).unwrap();
    assert_forbidden(
        Api::<Lease>::namespaced(sa.clone(), "default")
            .create(&PostParams::default(), &lease)
            .await,
        "create",
        "coordination.k8s.io",
        "leases",
        "Leases only in the release namespace",
    );
    let event: Event = serde_json::from_value(json!({
        "metadata": {"generateName": "x-"},
        "eventTime": "2026-11-26T10:00:00.000000Z",
        "reportingController": "kosli.com/test", "reportingInstance": "test",
        "action": "Test", "reason": "Test", "type": "Normal",
    }))
    .unwrap();
    assert_forbidden(
        Api::<Event>::namespaced(sa.clone(), &app_ns)
            .create(&PostParams::default(), &event)
            .await,
        "create",
        "events.k8s.io",
        "events",
        "Events only in the events namespace",
    );
}

/// `permissionScope: namespace`, as a team without cluster-wide rights
/// installs it: the operator container runs as the chart's own ServiceAccount
/// with nothing but the rendered Roles, reads its environments from the
/// rendered ConfigMap, reports the pods of its namespaces and nothing else,
/// and leads through its Lease; no ClusterRole is rendered at all.
#[tokio::test]
async fn permission_scope_namespace_reports_with_roles_only() {
    let env = TestEnv::get();
    let admin = env.client().await;
    let id = unique("nsscope");
    let release = unique("nsscope-rel");
    let (shop, payments, elsewhere) = (unique("ns-shop"), unique("ns-pay"), unique("ns-other"));
    for ns in [&release, &shop, &payments, &elsewhere] {
        ensure_namespace(&admin, ns).await;
    }
    let fake = FakeKosli::start().await;
    let kosli_env = format!("{id}-prod");
    fake.add_environment(&kosli_env, "K8S");
    let dir = tempfile::tempdir().unwrap();
    let values = write_values(
        dir.path(),
        "values.yaml",
        &format!(
            r#"
serviceAccount: {{name: {id}, permissionScope: namespace}}
kosliApiToken: {{secretName: {id}-token, secretKey: api-token}}
leaderElection: {{leaseName: {id}}}
reporterConfig:
  kosliOrg: {ORG}
  kosliHost: {host}
  watchNamespaces: [{shop}, {payments}]
  environments:
    - name: {kosli_env}
      namespaces: [{shop}, {payments}]
      gate: {{mode: "Off"}}
"#,
            host = fake.url
        ),
    );
    let docs = render(&id, &release, &[&values], &[]);
    let rendered = kinds(&docs);
    for absent in ["ClusterRole", "ClusterRoleBinding", "KosliEnvironment"] {
        assert!(
            !rendered.iter().any(|k| k == absent),
            "{absent}: {rendered:?}"
        );
    }
    let deployment = only(&docs, "Deployment");
    let args = args_of(deployment);
    for expected in [
        "--environments-file=/etc/kosli-operator/environments/environments.yaml".to_owned(),
        format!("--watch-namespaces={shop},{payments}"),
    ] {
        assert!(args.contains(&expected), "{expected}: {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--environment-selector")),
        "{args:?}"
    );

    // What `helm install` creates, but the Deployment (no kubelet here), and the
    // token Secret; all of it in namespaces of this test only.
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("{id}-token"), "namespace": release},
        "stringData": {"api-token": TOKEN},
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &release)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let applied: Vec<&Doc> = docs
        .iter()
        .filter(|d| ["ServiceAccount", "Role", "RoleBinding", "ConfigMap"].contains(&d.kind()))
        .collect();
    let output = kubectl(&env.kubeconfig, &["apply", "-f", "-"], &joined(&applied));
    assert!(output.status.success(), "{}", text(&output));
    let sa_kubeconfig = support::testenv::token_kubeconfig(&admin, &release, &id, dir.path()).await;
    let sa = client_for(&sa_kubeconfig).await;
    let account = (release.as_str(), id.as_str());
    for (result, resource) in [
        (
            Api::<Pod>::all(sa.clone())
                .list(&ListParams::default())
                .await
                .map(drop),
            "pods",
        ),
        (
            Api::<Namespace>::all(sa.clone())
                .list(&ListParams::default())
                .await
                .map(drop),
            "namespaces",
        ),
    ] {
        assert_forbidden_to(
            account,
            result,
            "list",
            "",
            resource,
            "no cluster-wide right",
        );
    }
    assert_forbidden_to(
        account,
        Api::<KosliEnvironment>::all(sa.clone())
            .list(&ListParams::default())
            .await,
        "list",
        "kosli.com",
        "koslienvironments",
        "no cluster-wide right",
    );

    let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
    for ns in [&shop, &payments, &elsewhere] {
        running_pod(&admin, ns, "web-1", &[], std::slice::from_ref(&web)).await;
    }
    let pod_name = format!("{id}-7d9f8b6c5-x2x4z");
    let mut op = ChartPod::start(deployment, &admin, &sa_kubeconfig, &pod_name).await;
    op.wait_ready().await;
    let report = eventually(SECONDS, "a report of both namespaces", || async {
        fake.reports(&kosli_env)
            .last()
            .filter(|r| r["artifacts"].as_array().is_some_and(|a| a.len() == 2))
            .cloned()
    })
    .await;
    let mut namespaces: Vec<String> = report["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["namespace"].as_str().unwrap().to_owned())
        .collect();
    namespaces.sort();
    let mut expected = vec![shop.clone(), payments.clone()];
    expected.sort();
    assert_eq!(namespaces, expected, "{report}");

    let lease = Api::<Lease>::namespaced(admin.clone(), &release)
        .get(&id)
        .await
        .unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    assert!(holder.starts_with(&pod_name), "{holder}");
    let log = op.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the Roles refused the operator something:\n{log}"
    );
    assert!(
        log.contains("KosliEnvironments read from the environments file"),
        "{log}"
    );
}

#[tokio::test]
async fn environments_from_values_carry_over_a_k8s_reporter_list() {
    let env = TestEnv::get();
    let admin = env.client().await;
    apply_crd(&admin).await;
    ensure_namespace(&admin, RELEASE_NAMESPACE).await;
    let dir = tempfile::tempdir().unwrap();
    // A k8s-reporter values file's reporterConfig, plus our extras on one entry.
    let values = write_values(
        dir.path(),
        "values.yaml",
        r#"
reporterConfig:
  kosliOrg: acme
  autoEnvironment: true
  environmentDescription: Migrated from k8s-reporter
  environments:
    - name: Prod_EU.1
      namespaces: [shop, payments]
    - name: teams
      namespacesRegex: ["^team-"]
    - name: everything-else
      excludeNamespaces: [kube-system]
      excludeNamespacesRegex: ["^openshift-"]
    - name: backend
      resourceName: backend-tier
      namespaceSelector: {matchLabels: {env: production}}
      podSelector:
        matchExpressions: [{key: tier, operator: In, values: [backend, api]}]
      autoCreate: false
      description: Backend tier
      heartbeatSeconds: 600
      includeSidecars: true
      includeEphemeral: true
      gate: {mode: Enforce, policies: [release-requirements]}
      labels: {team: backend}
"#,
    );
    let docs = render("kosli-operator", RELEASE_NAMESPACE, &[&values], &[]);
    let rendered: Vec<KosliEnvironment> = all(&docs, "KosliEnvironment")
        .into_iter()
        .map(|d| {
            serde_json::from_value(d.value.clone())
                .unwrap_or_else(|e| panic!("not a KosliEnvironment ({e}):\n{}", d.raw))
        })
        .collect();
    let names: Vec<(String, String)> = rendered
        .iter()
        .map(|e| (e.metadata.name.clone().unwrap(), e.environment_name()))
        .collect();
    assert_eq!(
        names,
        [
            ("prod-eu.1", "Prod_EU.1"),
            ("teams", "teams"),
            ("everything-else", "everything-else"),
            ("backend-tier", "backend")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let spec = |value: Value| -> KosliEnvironmentSpec { serde_json::from_value(value).unwrap() };
    let expected = [
        spec(
            json!({"name": "Prod_EU.1", "namespaces": ["shop", "payments"],
            "autoCreate": true, "description": "Migrated from k8s-reporter"}),
        ),
        spec(json!({"name": "teams", "namespacesRegex": ["^team-"],
            "autoCreate": true, "description": "Migrated from k8s-reporter"})),
        spec(
            json!({"name": "everything-else", "excludeNamespaces": ["kube-system"],
            "excludeNamespacesRegex": ["^openshift-"],
            "autoCreate": true, "description": "Migrated from k8s-reporter"}),
        ),
        spec(json!({"name": "backend",
            "namespaceSelector": {"matchLabels": {"env": "production"}},
            "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["backend", "api"]}]},
            "autoCreate": false, "description": "Backend tier", "heartbeatSeconds": 600,
            "includeSidecars": true, "includeEphemeral": true,
            "gate": {"mode": "Enforce", "policies": ["release-requirements"]}})),
    ];
    for (environment, expected) in rendered.iter().zip(&expected) {
        assert_eq!(&environment.spec, expected);
        environment
            .spec
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", environment.environment_name()));
    }
    assert_eq!(
        rendered[3].metadata.labels.as_ref().unwrap()["team"],
        "backend"
    );
    // The API server's schema accepts them too.
    let environments: Vec<Doc> = docs
        .iter()
        .filter(|d| d.kind() == "KosliEnvironment")
        .cloned()
        .collect();
    server_dry_run(
        &env.kubeconfig,
        &environments,
        "reporterConfig.environments",
    );

    // The environment selector labels the chart's own environments, so its
    // operator always handles them.
    let selected = render(
        "kosli-operator",
        RELEASE_NAMESPACE,
        &[&values],
        &["--set", "reporterConfig.environmentSelector.shard=eu"],
    );
    for environment in all(&selected, "KosliEnvironment") {
        assert_eq!(environment.value["metadata"]["labels"]["shard"], "eu");
    }

    // Refused before anything reaches the cluster: the schema, then the chart's checks.
    let refused = |args: &[&str], extra: &str, needle: &str| {
        let file = write_values(dir.path(), "refused.yaml", extra);
        let err = helm_template("kosli-operator", RELEASE_NAMESPACE, &[&file], args)
            .err()
            .unwrap_or_else(|| panic!("helm template accepted {args:?} {extra}"));
        assert!(err.contains(needle), "{args:?} {extra}: {err}");
    };
    refused(
        &["--set", "cronSchedule=*/5 * * * *"],
        "",
        "Additional property cronSchedule is not allowed",
    );
    refused(
        &["--set", "image.repository=ghcr.io/kosli-dev/cli"],
        "",
        "image.repository ghcr.io/kosli-dev/cli is the Kosli CLI",
    );
    refused(
        &[],
        "reporterConfig:\n  includeScaling: null\n",
        "Additional property includeScaling is not allowed",
    );
    refused(
        &["--set", "replicaCount=two"],
        "",
        "replicaCount: Invalid type. Expected: integer, given: string",
    );
    refused(
        &["--set", "gate.failurePolicy=Sometimes"],
        "",
        "gate.failurePolicy",
    );
    refused(
        &["--set", "gate.timeoutSeconds=60"],
        "",
        "gate.timeoutSeconds",
    );
    refused(
        &["--set", "reporterConfig.dryRun=maybe"],
        "",
        "reporterConfig.dryRun: Invalid type",
    );
    refused(
        &[],
        "reporterConfig:\n  environments:\n    - name: prod\n      namespace: [shop]\n",
        "Additional property namespace is not allowed",
    );
    refused(
        &[],
        "reporterConfig:\n  environments:\n    - name: prod\n      gate: {mode: Off}\n",
        "reporterConfig.environments[0] (prod): gate.mode is the boolean false: YAML reads an \
         unquoted Off as false; write mode: \"Off\" (quoted)",
    );
    refused(
        &[],
        "reporterConfig:\n  environments:\n    - name: prod\n      gate: {mode: On}\n",
        "mode must be one of the following",
    );
    // permissionScope "namespace": what needs a cluster-wide right is refused.
    let scoped = "serviceAccount: {permissionScope: namespace}\nreporterConfig:\n  watchNamespaces: [shop]\n";
    refused(
        &[],
        scoped,
        "reports the environments of reporterConfig.environments only: list at least one",
    );
    refused(
        &[],
        &format!(
            "{scoped}  environments:\n    - name: prod\n      namespaces: [shop]\n      \
             namespaceSelector: {{matchLabels: {{tier: prod}}}}\n"
        ),
        "namespaceSelector needs namespace labels, which only cluster-wide rights can read",
    );
    refused(
        &[],
        &format!(
            "{scoped}  environmentSelector: {{shard: a}}\n  environments:\n    - name: prod\n      \
             namespaces: [shop]\n"
        ),
        "reporterConfig.environmentSelector picks KosliEnvironment objects in the cluster",
    );
    refused(
        &[],
        &format!(
            "{scoped}  environments:\n    - name: prod\n      namespaces: [shop]\n\
             gate: {{enabled: true, pullSecrets: true}}\n"
        ),
        "list the namespaces whose pull secrets the gate may read in gate.pullSecretNamespaces",
    );
    refused(
        &[],
        "reporterConfig:\n  environments:\n    - namespaces: [shop]\n",
        "name is required",
    );
    refused(
        &[],
        "reporterConfig:\n  environments:\n    - name: prod\n      namespaces: [shop]\n      excludeNamespaces: [kube-system]\n",
        "cannot be combined",
    );
    refused(
        &[],
        "reporterConfig:\n  environments:\n    - name: Prod\n    - name: prod\n",
        "both become the KosliEnvironment",
    );
    refused(
        &[
            "--set",
            "replicaCount=2",
            "--set",
            "leaderElection.enabled=false",
        ],
        "",
        "needs leaderElection.enabled",
    );
}

#[tokio::test]
async fn gate_registers_safely_and_its_chart_made_certificate_is_stable_and_served() {
    let env = TestEnv::get();
    let admin = env.client().await;
    apply_crd(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let id = unique("helm-gate");
    let ns = unique("helm-gate-ns");
    ensure_namespace(&admin, &ns).await;
    let values = write_values(
        dir.path(),
        "values.yaml",
        &format!(
            r#"
replicaCount: 2
reporterConfig:
  dryRun: true
  environmentSelector: {{test: {id}}}
leaderElection: {{leaseName: {id}}}
gate:
  enabled: true
  timeoutSeconds: 7
  exemptNamespaces: [monitoring]
  namespaceSelector:
    matchLabels: {{kosli.com/gate: enabled}}
    matchExpressions: [{{key: team, operator: Exists}}]
"#
        ),
    );
    let docs = render(&id, &ns, &[&values], &[]);

    // The registration: always excluding kube-system and the release namespace.
    let configuration = only(&docs, "ValidatingWebhookConfiguration");
    let webhooks = configuration.value["webhooks"].as_array().unwrap();
    assert_eq!(webhooks.len(), 1);
    let webhook = &webhooks[0];
    assert_eq!(webhook["failurePolicy"], "Ignore", "the default");
    assert_eq!(webhook["timeoutSeconds"], 7);
    assert_eq!(webhook["sideEffects"], "None");
    assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(
        webhook["namespaceSelector"],
        json!({
            "matchLabels": {"kosli.com/gate": "enabled"},
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                 "values": ["kube-system", ns, "monitoring"]},
                {"key": "team", "operator": "Exists"},
            ],
        })
    );
    let mut rules: Vec<(String, String)> = Vec::new();
    for rule in webhook["rules"].as_array().unwrap() {
        assert_eq!(rule["operations"], json!(["CREATE", "UPDATE"]));
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                rules.push((
                    group.as_str().unwrap().to_owned(),
                    resource.as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    rules.sort();
    let mut expected: Vec<(String, String)> = [
        ("", "pods"),
        ("", "pods/ephemeralcontainers"),
        ("apps", "daemonsets"),
        ("apps", "deployments"),
        ("apps", "replicasets"),
        ("apps", "statefulsets"),
        ("batch", "cronjobs"),
        ("batch", "jobs"),
    ]
    .iter()
    .map(|(g, r)| ((*g).to_owned(), (*r).to_owned()))
    .collect();
    expected.sort();
    assert_eq!(rules, expected);
    let service = &webhook["clientConfig"]["service"];
    assert_eq!(service["namespace"], json!(ns));
    assert_eq!(service["path"], "/validate");
    let args = args_of(only(&docs, "Deployment"));
    assert!(
        args.contains(&"--webhook-timeout=7s".to_owned()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--gate-exempt-namespaces=monitoring".to_owned()),
        "{args:?}"
    );
    assert_eq!(
        only(&docs, "PodDisruptionBudget").value["spec"]["minAvailable"],
        1
    );

    // The chart-made certificate: its CA is the caBundle.
    let secret = only(&docs, "Secret");
    let ca_bundle = webhook["clientConfig"]["caBundle"].as_str().unwrap();
    assert_eq!(secret.value["data"]["ca.crt"], ca_bundle);

    // Installed, a later render (an upgrade, with lookup against the cluster)
    // reuses the certificate instead of generating another.
    let output = kubectl(&env.kubeconfig, &["apply", "-f", "-"], &secret.raw);
    assert!(output.status.success(), "{}", text(&output));
    let upgrade = render(
        &id,
        &ns,
        &[&values],
        &[
            "--dry-run=server",
            "--kubeconfig",
            env.kubeconfig.to_str().unwrap(),
        ],
    );
    assert!(
        only(&upgrade, "Secret").value["data"] == secret.value["data"],
        "an upgrade must keep the installed CA, certificate and key"
    );
    assert!(
        only(&upgrade, "ValidatingWebhookConfiguration").value["webhooks"][0]["clientConfig"]["caBundle"]
            == ca_bundle,
        "an upgrade must keep the installed caBundle"
    );
    let fresh = render(&id, &ns, &[&values], &[]);
    assert!(
        only(&fresh, "Secret").value["data"]["ca.crt"] != ca_bundle,
        "without an installed Secret a new CA is made (so the reuse above is real)"
    );

    // The operator, run as rendered with that Secret mounted, serves the gate with
    // a certificate the API server accepts: verified against the caBundle for the
    // name it calls, <service>.<namespace>.svc.
    let mut op = ChartPod::start(
        only(&docs, "Deployment"),
        &admin,
        &env.kubeconfig,
        &format!("{id}-pod"),
    )
    .await;
    op.wait_ready().await;
    use base64::Engine as _;
    let ca_pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(ca_bundle)
            .unwrap(),
    )
    .unwrap();
    let server_name = format!("{}.{ns}.svc", service["name"].as_str().unwrap());
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(support::webhook::client_tls(&ca_pem, &[])));
    let addr = op.webhook.unwrap();
    let name = rustls::pki_types::ServerName::try_from(server_name.clone()).unwrap();
    let handshake = eventually(SECONDS, "a verified TLS handshake", || {
        let connector = connector.clone();
        let name = name.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            connector.connect(name, tcp).await.ok()
        }
    })
    .await;
    drop(handshake);
    // And a name it does not hold is refused: the verification above is real.
    let other = rustls::pki_types::ServerName::try_from("elsewhere.example.com").unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let refused = connector
        .connect(other, tcp)
        .await
        .err()
        .unwrap_or_else(|| {
            panic!(
                "the certificate must be valid for {server_name} only:\n{}",
                op.log()
            )
        })
        .to_string();
    assert!(
        refused.starts_with(
            "invalid peer certificate: certificate not valid for name \"elsewhere.example.com\""
        ),
        "refused for another reason than the name: {refused}"
    );

    // With cert-manager: a Certificate for the same names, the CA injected.
    let cert_manager = render(
        &id,
        &ns,
        &[&values],
        &["--set", "gate.certManager.enabled=true"],
    );
    assert!(all(&cert_manager, "Secret").is_empty());
    let certificate = only(&cert_manager, "Certificate");
    assert!(
        certificate.value["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .contains(&json!(server_name))
    );
    assert_eq!(
        certificate.value["spec"]["secretName"],
        secret.value["metadata"]["name"]
    );
    assert_eq!(
        only(&cert_manager, "Issuer").value["spec"]["selfSigned"],
        json!({})
    );
    let configuration = only(&cert_manager, "ValidatingWebhookConfiguration");
    assert_eq!(
        configuration.value["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        json!(format!("{ns}/{}", certificate.name()))
    );
    assert!(configuration.value["webhooks"][0]["clientConfig"]["caBundle"].is_null());
}

// ---------------------------------------------------------------- observability

/// The PrometheusRule and the dashboard on, with labels a Prometheus and a
/// Grafana sidecar select by.
const OBSERVABILITY_ON: &str = r#"
metrics:
  serviceMonitor: {enabled: true}
  prometheusRule:
    enabled: true
    labels: {release: prometheus}
    alertLabels: {severity: page, team: platform}
  grafanaDashboard:
    enabled: true
    annotations: {grafana_folder: Kosli}
"#;

/// The alerts the README recommends, by name.
const ALERTS: [&str; 3] = [
    "KosliReportOverdue",
    "KosliEnvironmentNotReady",
    "KosliReportsFailing",
];

/// Labels Prometheus gives every series it scrapes (the target's), which a
/// query may use besides the operator's own.
const TARGET_LABELS: [&str; 4] = ["job", "namespace", "pod", "instance"];

/// What the operator exports: every series name a query may use, with its labels.
fn exported() -> BTreeMap<String, BTreeSet<String>> {
    Metrics::new().unwrap().series()
}

/// The dashboard as the chart ships it.
fn dashboard_file() -> Value {
    let text = std::fs::read_to_string(chart().join("dashboards/kosli-operator.json")).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("the dashboard is not JSON: {e}"))
}

fn metric_names(expr: &str) -> Vec<String> {
    Regex::new(r"\bkosli_operator_[a-z0-9_]+")
        .unwrap()
        .find_iter(expr)
        .map(|m| m.as_str().to_owned())
        .collect()
}

/// Asserts that `expr` names only series the operator exports, that every
/// label matcher and every `by`/`on` label is one those series carry (or a
/// target label), and returns the names.
fn assert_queries_exported(
    expr: &str,
    exported: &BTreeMap<String, BTreeSet<String>>,
    what: &str,
) -> Vec<String> {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{what}: no operator series in {expr}");
    let has =
        |name: &str, label: &str| TARGET_LABELS.contains(&label) || exported[name].contains(label);
    for name in &names {
        assert!(
            exported.contains_key(name),
            "{what}: {name} is not a series the operator exports: {expr}"
        );
    }
    let selector = Regex::new(r"(kosli_operator_[a-z0-9_]+)\{([^}]*)\}").unwrap();
    let matcher =
        Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*""#).unwrap();
    for cap in selector.captures_iter(expr) {
        let (name, matchers) = (&cap[1], &cap[2]);
        for m in matcher.captures_iter(matchers) {
            assert!(
                has(name, &m[1]),
                "{what}: {name} has no label {}: {expr}",
                &m[1]
            );
        }
        let rest = matcher.replace_all(matchers, "");
        assert!(
            rest.chars().all(|c| c == ',' || c.is_whitespace()),
            "{what}: unreadable matchers {matchers:?}: {expr}"
        );
    }
    // A grouping names labels of the series it applies to: the next one named.
    let grouping = Regex::new(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)").unwrap();
    for cap in grouping.captures_iter(expr) {
        let after = &expr[cap.get(0).unwrap().end()..];
        let name = metric_names(after)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("{what}: a grouping with no series after it: {expr}"));
        for label in cap[1].split(',').map(str::trim).filter(|l| !l.is_empty()) {
            assert!(
                has(&name, label),
                "{what}: groups by {label}, which {name} does not carry: {expr}"
            );
        }
    }
    names
}

/// `promtool check rules` on `rules` (a Prometheus rule file's `groups`):
/// Prometheus' own parser accepts every expression; returns its output.
fn promtool_check(dir: &Path, name: &str, groups: &Value) -> String {
    let file = dir.join(name);
    std::fs::write(&file, json!({ "groups": groups }).to_string()).unwrap();
    let mut cmd = isolated(tool("PROMTOOL"));
    cmd.args(["check", "rules"]).arg(&file);
    let output = run(&mut cmd, "");
    let out = text(&output);
    assert!(
        output.status.success(),
        "promtool check rules {name}:\n{out}"
    );
    out
}

/// The one PrometheusRule of a rendering, and its rules by alert name.
fn alert_rules(docs: &[Doc]) -> BTreeMap<String, Value> {
    let rule = only(docs, "PrometheusRule");
    let groups = rule.value["spec"]["groups"].as_array().unwrap();
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| (r["alert"].as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

#[test]
fn prometheus_rule_and_dashboard_render_only_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let dashboards = |docs: &[Doc]| -> usize {
        all(docs, "ConfigMap")
            .iter()
            .filter(|d| d.value["metadata"]["labels"]["grafana_dashboard"].is_string())
            .count()
    };
    let defaults = render("kosli-operator", RELEASE_NAMESPACE, &[], &[]);
    assert!(
        all(&defaults, "PrometheusRule").is_empty(),
        "off by default"
    );
    assert_eq!(dashboards(&defaults), 0, "off by default");

    let rule_only = write_values(
        dir.path(),
        "rule.yaml",
        "metrics: {prometheusRule: {enabled: true}}",
    );
    let docs = render("kosli-operator", RELEASE_NAMESPACE, &[&rule_only], &[]);
    only(&docs, "PrometheusRule");
    assert_eq!(dashboards(&docs), 0);

    let dashboard_only = write_values(
        dir.path(),
        "dashboard.yaml",
        "metrics: {grafanaDashboard: {enabled: true, namespace: monitoring}}",
    );
    let docs = render("kosli-operator", RELEASE_NAMESPACE, &[&dashboard_only], &[]);
    assert!(all(&docs, "PrometheusRule").is_empty());
    assert_eq!(dashboards(&docs), 1);
    let configmap = only(&docs, "ConfigMap");
    assert_eq!(configmap.namespace(), Some("monitoring"));
    assert_eq!(
        configmap.value["metadata"]["labels"]["grafana_dashboard"], "1",
        "the Grafana sidecar's default label"
    );

    // Unknown keys are refused, as everywhere in the values.
    let typo = write_values(
        dir.path(),
        "typo.yaml",
        "metrics: {prometheusRule: {enable: true}}",
    );
    let err = helm_template("kosli-operator", RELEASE_NAMESPACE, &[&typo], &[]).unwrap_err();
    assert!(err.contains("enable"), "{err}");
}

#[tokio::test]
async fn the_dashboard_configmap_carries_the_shipped_json_and_the_apiserver_accepts_it() {
    let env = TestEnv::get();
    let admin = env.client().await;
    ensure_namespace(&admin, RELEASE_NAMESPACE).await;
    let dir = tempfile::tempdir().unwrap();
    let values = write_values(dir.path(), "observability.yaml", OBSERVABILITY_ON);
    let docs = render("kosli-operator", RELEASE_NAMESPACE, &[&values], &[]);
    let configmap = only(&docs, "ConfigMap");
    assert_eq!(configmap.name(), "kosli-operator-dashboard");
    assert_eq!(configmap.namespace(), Some(RELEASE_NAMESPACE));
    let metadata = &configmap.value["metadata"];
    assert_eq!(metadata["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        metadata["labels"]["app.kubernetes.io/instance"],
        "kosli-operator"
    );
    assert_eq!(metadata["annotations"]["grafana_folder"], "Kosli");
    let data = configmap.value["data"].as_object().unwrap();
    assert_eq!(data.len(), 1, "one dashboard: {data:?}");
    let json_text = data["kosli-operator.json"].as_str().unwrap();
    let shipped: Value = serde_json::from_str(json_text)
        .unwrap_or_else(|e| panic!("the ConfigMap's dashboard is not JSON: {e}"));
    assert_eq!(
        shipped,
        dashboard_file(),
        "the ConfigMap carries the file as is"
    );
    // Client-side `kubectl apply` keeps the whole object in an annotation of at
    // most 256 KiB.
    assert!(json_text.len() < 200 * 1024, "{} bytes", json_text.len());

    kubernetes_validate(std::slice::from_ref(configmap), "the dashboard ConfigMap");
    let old = render(
        "kosli-operator",
        RELEASE_NAMESPACE,
        &[&values],
        &["--kube-version", TEST_APISERVER_VERSION],
    );
    server_dry_run(
        &env.kubeconfig,
        &[only(&old, "ConfigMap").clone()],
        "the dashboard ConfigMap",
    );
}

#[test]
fn the_prometheus_rule_is_well_formed_and_alerts_on_what_the_readme_recommends() {
    let dir = tempfile::tempdir().unwrap();
    let values = write_values(dir.path(), "observability.yaml", OBSERVABILITY_ON);
    let docs = render("kosli-operator", RELEASE_NAMESPACE, &[&values], &[]);
    let rule = only(&docs, "PrometheusRule");

    // The structure the Prometheus Operator's CRD (monitoring.coreos.com/v1) takes.
    assert_eq!(rule.value["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule.name(), "kosli-operator");
    assert_eq!(rule.namespace(), Some(RELEASE_NAMESPACE));
    let labels = &rule.value["metadata"]["labels"];
    assert_eq!(labels["release"], "prometheus", "the rule selector's label");
    assert_eq!(labels["app.kubernetes.io/instance"], "kosli-operator");
    let spec = rule.value["spec"].as_object().unwrap();
    assert_eq!(spec.keys().collect::<Vec<_>>(), ["groups"], "{spec:?}");
    let duration = Regex::new(r"^([0-9]+(ms|s|m|h|d|w|y))+$").unwrap();
    let alert_name = Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").unwrap();
    let mut alerts = Vec::new();
    for group in spec["groups"].as_array().unwrap() {
        let group = group.as_object().unwrap();
        assert!(
            group
                .keys()
                .all(|k| ["name", "rules", "interval"].contains(&k.as_str())),
            "{group:?}"
        );
        assert!(group["name"].as_str().is_some_and(|n| !n.is_empty()));
        for r in group["rules"].as_array().unwrap() {
            let r = r.as_object().unwrap();
            assert!(
                r.keys().all(
                    |k| ["alert", "expr", "for", "labels", "annotations"].contains(&k.as_str())
                ),
                "{r:?}"
            );
            let name = r["alert"].as_str().unwrap();
            assert!(alert_name.is_match(name), "{name}");
            assert!(r["expr"].as_str().is_some_and(|e| !e.trim().is_empty()));
            if let Some(f) = r.get("for") {
                assert!(duration.is_match(f.as_str().unwrap()), "{name}: for {f}");
            }
            assert_eq!(
                r["labels"],
                json!({"severity": "page", "team": "platform"}),
                "{name}: alertLabels"
            );
            let annotations = r["annotations"].as_object().unwrap();
            for key in ["summary", "description"] {
                assert!(
                    annotations[key].as_str().is_some_and(|a| a.len() > 20),
                    "{name}: {key}"
                );
            }
            alerts.push(name.to_owned());
        }
    }
    assert_eq!(alerts, ALERTS);

    // Only this release's series: the ServiceMonitor's job in the release namespace.
    let rules = alert_rules(&docs);
    let selector = r#"job="kosli-operator-metrics",namespace="kosli-operator""#;
    let exported = exported();
    for (name, r) in &rules {
        let expr = r["expr"].as_str().unwrap();
        for series in assert_queries_exported(expr, &exported, name) {
            assert!(
                expr.contains(&format!("{series}{{{selector}")),
                "{name}: {series} is not scoped to the release: {expr}"
            );
        }
    }
    // The README's conditions, read without the release's scoping.
    let unscoped = |name: &str| {
        rules[name]["expr"]
            .as_str()
            .unwrap()
            .replace(&format!("{{{selector},"), "{")
            .replace(&format!("{{{selector}}}"), "")
    };
    let readme = std::fs::read_to_string(support::repo_file("README.md")).unwrap();
    let recommended = r#"rate(kosli_operator_reports_total{result="failed"}[10m]) > 0"#;
    for said in [
        "Alert on `kosli_operator_seconds_since_last_report` above twice the heartbeat",
        "`Ready=False` (or `Stale=True`) KosliEnvironments",
        recommended,
    ] {
        assert!(readme.contains(said), "the README no longer says {said:?}");
    }
    let overdue = unscoped("KosliReportOverdue");
    assert!(
        overdue
            .contains("min by (namespace, environment) (kosli_operator_seconds_since_last_report)")
            && overdue
                .contains("2 * max by (namespace, environment) (kosli_operator_heartbeat_seconds)"),
        "{overdue}"
    );
    let not_ready = unscoped("KosliEnvironmentNotReady");
    assert!(
        not_ready.contains(r#"condition="Ready"}) == 0"#)
            && not_ready.contains(r#"condition="Stale"}) == 1"#),
        "{not_ready}"
    );
    let failing = unscoped("KosliReportsFailing");
    assert!(
        failing.contains(r#"rate(kosli_operator_reports_total{result="failed"}[10m])"#)
            && failing.trim_end().ends_with("> 0"),
        "{failing}"
    );

    // Prometheus parses them.
    let out = promtool_check(dir.path(), "rules.json", &rule.value["spec"]["groups"]);
    assert!(out.contains("SUCCESS: 3 rules found"), "{out}");

    // Another scope, as set.
    let other = write_values(
        dir.path(),
        "selector.yaml",
        "metrics: {prometheusRule: {enabled: true, selector: 'job=\"kosli\"'}}",
    );
    let docs = render("kosli-operator", RELEASE_NAMESPACE, &[&other], &[]);
    for (name, r) in alert_rules(&docs) {
        let expr = r["expr"].as_str().unwrap();
        assert!(
            expr.contains(r#"{job="kosli""#) && !expr.contains("kosli-operator-metrics"),
            "{name}: {expr}"
        );
    }
}

/// One input series of a promtool unit test: the release's labels plus `labels`.
fn series(name: &str, labels: &str, values: &str) -> Value {
    json!({
        "series": format!(
            r#"{name}{{job="kosli-operator-metrics",namespace="kosli-operator",pod="kosli-operator-0",{labels}}}"#
        ),
        "values": values,
    })
}

/// An alert promtool should see firing, its annotations expanded from the
/// rule's own templates with `labels`.
fn firing(rule: &Value, labels: &[(&str, &str)]) -> Value {
    let mut exp_labels =
        json!({"namespace": "kosli-operator", "severity": "page", "team": "platform"});
    let mut annotations = rule["annotations"].clone();
    for (label, value) in labels {
        exp_labels[*label] = json!(value);
        for (_, text) in annotations.as_object_mut().unwrap() {
            *text = json!(
                text.as_str()
                    .unwrap()
                    .replace(&format!("{{{{ $labels.{label} }}}}"), value)
            );
        }
    }
    for (_, text) in annotations.as_object().unwrap() {
        assert!(!text.as_str().unwrap().contains("{{"), "{text}");
    }
    json!({"exp_labels": exp_labels, "exp_annotations": annotations})
}

#[test]
fn the_alerts_fire_on_what_they_say_and_only_for_this_release() {
    let dir = tempfile::tempdir().unwrap();
    let values = write_values(dir.path(), "observability.yaml", OBSERVABILITY_ON);
    let docs = render("kosli-operator", RELEASE_NAMESPACE, &[&values], &[]);
    let rules = alert_rules(&docs);
    let groups = &only(&docs, "PrometheusRule").value["spec"]["groups"];
    promtool_check(dir.path(), "rules.json", groups);

    let overdue = &rules["KosliReportOverdue"];
    let not_ready = &rules["KosliEnvironmentNotReady"];
    let failing = &rules["KosliReportsFailing"];
    let another_release = |name: &str, labels: &str, values: &str| {
        json!({
            "series": format!(r#"{name}{{job="another-operator-metrics",namespace="kosli-operator",{labels}}}"#),
            "values": values,
        })
    };
    let input_series = json!([
        // prod: the leader reported at minute 0 and not since; heartbeat 300 s.
        series(
            "kosli_operator_seconds_since_last_report",
            r#"environment="prod""#,
            "0+60x30"
        ),
        // A former leader's age keeps growing: the least across replicas counts.
        json!({
            "series": r#"kosli_operator_seconds_since_last_report{job="kosli-operator-metrics",namespace="kosli-operator",pod="kosli-operator-1",environment="prod"}"#,
            "values": "5000+60x30",
        }),
        series(
            "kosli_operator_heartbeat_seconds",
            r#"environment="prod""#,
            "300x30"
        ),
        // Another operator's series never alert here.
        another_release(
            "kosli_operator_seconds_since_last_report",
            r#"environment="theirs""#,
            "9000+60x30"
        ),
        another_release(
            "kosli_operator_heartbeat_seconds",
            r#"environment="theirs""#,
            "30x30"
        ),
        another_release(
            "kosli_operator_reports_total",
            r#"environment="theirs",result="failed""#,
            "0+1x30"
        ),
        // shop turns Ready=False at minute 6; stale-one is Stale from the start;
        // fine stays Ready.
        series(
            "kosli_operator_environment_condition",
            r#"kosli_environment="shop",condition="Ready""#,
            "1x5 0x25"
        ),
        series(
            "kosli_operator_environment_condition",
            r#"kosli_environment="stale-one",condition="Ready""#,
            "1x30"
        ),
        series(
            "kosli_operator_environment_condition",
            r#"kosli_environment="stale-one",condition="Stale""#,
            "1x30"
        ),
        series(
            "kosli_operator_environment_condition",
            r#"kosli_environment="fine",condition="Ready""#,
            "1x30"
        ),
        series(
            "kosli_operator_environment_condition",
            r#"kosli_environment="fine",condition="Stale""#,
            "0x30"
        ),
        // prod: one failed report at minute 6, sent ones all along.
        series(
            "kosli_operator_reports_total",
            r#"environment="prod",result="failed""#,
            "0x5 1x25"
        ),
        series(
            "kosli_operator_reports_total",
            r#"environment="prod",result="sent""#,
            "0+3x30"
        ),
    ]);
    let at = |minute: u32, alert: &str, expected: Vec<Value>| json!({"eval_time": format!("{minute}m"), "alertname": alert, "exp_alerts": expected});
    let prod = [("environment", "prod")];
    let tests = json!({
        "rule_files": ["rules.json"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": input_series,
            "alert_rule_test": [
                // 600 s is not above twice 300 s; 660 s is.
                at(10, "KosliReportOverdue", vec![]),
                at(11, "KosliReportOverdue", vec![firing(overdue, &prod)]),
                // Each fires once it has lasted 5 minutes: stale-one from
                // minute 5, shop (not Ready from minute 6) from minute 11.
                at(4, "KosliEnvironmentNotReady", vec![]),
                at(8, "KosliEnvironmentNotReady", vec![firing(not_ready, &[("kosli_environment", "stale-one")])]),
                at(12, "KosliEnvironmentNotReady", vec![
                    firing(not_ready, &[("kosli_environment", "shop")]),
                    firing(not_ready, &[("kosli_environment", "stale-one")]),
                ]),
                // A failure within the last 10 minutes, and not after.
                at(5, "KosliReportsFailing", vec![]),
                at(12, "KosliReportsFailing", vec![firing(failing, &prod)]),
                at(20, "KosliReportsFailing", vec![]),
            ],
        }],
    });
    let file = dir.path().join("tests.json");
    std::fs::write(&file, tests.to_string()).unwrap();
    let mut cmd = isolated(tool("PROMTOOL"));
    cmd.current_dir(dir.path())
        .args(["test", "rules"])
        .arg(&file);
    let output = run(&mut cmd, "");
    assert!(
        output.status.success(),
        "promtool test rules:\n{}\n{}",
        text(&output),
        serde_json::to_string_pretty(&tests).unwrap()
    );
}

#[test]
fn the_dashboard_queries_only_what_the_operator_exports() {
    let dashboard = dashboard_file();
    assert_eq!(dashboard["uid"], "kosli-operator");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable: the sidecar's Grafana names its own");
    assert_eq!(datasource["query"], "prometheus");
    let ds = json!({"type": "prometheus", "uid": format!("${{{}}}", datasource["name"].as_str().unwrap())});
    let exported = exported();

    // Each variable's query: label_values(SERIES, LABEL), of a series that has it.
    let label_values = Regex::new(r"^label_values\((.+),\s*([a-z_]+)\)$").unwrap();
    let mut names: Vec<String> = vec![datasource["name"].as_str().unwrap().to_owned()];
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let query = variable["query"]["query"].as_str().unwrap();
        let cap = label_values
            .captures(query)
            .unwrap_or_else(|| panic!("{query}"));
        let expr = cap[1].replace("$job", ".+");
        let series = assert_queries_exported(&expr, &exported, query);
        assert!(
            TARGET_LABELS.contains(&&cap[2]) || exported[&series[0]].contains(&cap[2]),
            "{query}"
        );
        assert_eq!(variable["datasource"], ds, "{query}");
        names.push(variable["name"].as_str().unwrap().to_owned());
    }

    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut records = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let id = panel["id"].as_u64().unwrap();
        assert!(ids.insert(id), "panel id {id} twice");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && w > 0 && grid["h"].as_u64().unwrap() > 0,
            "{panel}"
        );
        let title = panel["title"].as_str().unwrap();
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], ds, "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert_eq!(target["datasource"], ds, "{title}");
            assert!(ref_ids.insert(target["refId"].as_str().unwrap()), "{title}");
            let expr = target["expr"].as_str().unwrap();
            // Grafana's variables, as Grafana fills them in.
            let mut filled = expr
                .replace("$__rate_interval", "5m")
                .replace("$job", ".+")
                .replace("$environment", ".*");
            assert!(
                !filled.contains('$'),
                "{title}: an unknown variable in {expr}"
            );
            for name in assert_queries_exported(&filled, &exported, title) {
                used.insert(name);
            }
            filled = filled.trim().to_owned();
            records.push(json!({"record": format!("dashboard:panel_{id}:{}", target["refId"].as_str().unwrap()), "expr": filled}));
        }
    }
    // Reports, latency, failures, store size and gate decisions are all there.
    for needed in [
        "kosli_operator_reports_total",
        "kosli_operator_change_to_report_seconds_bucket",
        "kosli_operator_report_duration_seconds_bucket",
        "kosli_operator_kosli_request_duration_seconds_bucket",
        "kosli_operator_report_size_bytes_sum",
        "kosli_operator_seconds_since_last_report",
        "kosli_operator_kosli_retries_total",
        "kosli_operator_store_pods",
        "kosli_operator_environment_condition",
        "kosli_operator_admission_reviews_total",
        "kosli_operator_admission_review_duration_seconds_bucket",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard shows no {needed}: {used:?}"
        );
    }
    assert!(
        names.contains(&"job".to_owned()) && names.contains(&"environment".to_owned()),
        "{names:?}"
    );

    // Prometheus parses every query.
    let dir = tempfile::tempdir().unwrap();
    let count = records.len();
    let out = promtool_check(
        dir.path(),
        "dashboard.json",
        &json!([{"name": "dashboard", "rules": records}]),
    );
    assert!(
        out.contains(&format!("SUCCESS: {count} rules found")),
        "{out}"
    );
}

#[test]
fn log_format_reaches_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let docs = render("kosli-operator", RELEASE_NAMESPACE, &[], &[]);
    assert!(
        args_of(only(&docs, "Deployment")).contains(&"--log-format=text".to_owned()),
        "the default"
    );
    let json_logs = write_values(dir.path(), "json.yaml", "reporterConfig: {logFormat: json}");
    let docs = render("kosli-operator", RELEASE_NAMESPACE, &[&json_logs], &[]);
    let args = args_of(only(&docs, "Deployment"));
    assert!(args.contains(&"--log-format=json".to_owned()), "{args:?}");
    let yaml_logs = write_values(dir.path(), "yaml.yaml", "reporterConfig: {logFormat: yaml}");
    let err = helm_template("kosli-operator", RELEASE_NAMESPACE, &[&yaml_logs], &[]).unwrap_err();
    assert!(err.contains("logFormat"), "{err}");
}
