//! The control gate end to end: the real API server calls `kosli-operator run`'s
//! webhook (ValidatingWebhookConfiguration with clientConfig.url on loopback and
//! the test CA), which resolves tags against the real registries and asks the
//! strict fake Kosli.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::fake_kosli::{FakeKosli, Scripted};
use support::operator::{Operator, eventually};
use support::setup::{Setup, setup};
use support::testenv::{TestEnv, api_error, unique};
use support::tools::kubectl;
use support::webhook::{ServingCert, delete_validating_webhook};

struct Gate {
    env: TestEnv,
    client: Client,
    fake: FakeKosli,
    id: String,
    ns: String,
    op: Operator,
    _cert: ServingCert,
}

fn hex(digest: &str) -> String {
    digest.trim_start_matches("sha256:").to_owned()
}

/// A gated namespace with a KosliEnvironment in `mode`, the operator serving
/// the webhook, and the API server calling it.
async fn gate(mode: &str, extra: &[&str]) -> Gate {
    let s = setup("g").await;
    let ns = s.gated_namespace(mode).await;
    let (op, _, cert) = s.serve_gate(extra, "Fail", 5).await;
    let Setup {
        env,
        client,
        fake,
        id,
    } = s;
    Gate {
        env,
        client,
        fake,
        id,
        ns,
        op,
        _cert: cert,
    }
}

impl Gate {
    fn image(&self, registry: &str, tag: &str) -> String {
        format!("{registry}/{}:{tag}", self.env.image_repo)
    }

    fn set_verdict(&self, digest: &str, compliant: bool) {
        let answer = if compliant {
            json!({"compliant": true, "scope": "environment", "environment": "prod"})
        } else {
            json!({
                "compliant": false, "scope": "environment", "environment": "prod",
                "policy_evaluations": [{"policy_name": "prod-requirements", "status": "NON-COMPLIANT",
                    "rule_evaluations": [{"rule": {"definition": {"name": "unit-tests", "type": "junit"}},
                        "satisfied": false, "ignored": false, "resolutions": [{"type": "missing_attestation"}]}]}],
                "html_url": format!("https://app.kosli.com/acme/fingerprint/{}", hex(digest)),
            })
        };
        self.fake.state().asserts.insert(hex(digest), answer);
    }

    async fn create_pod(
        &self,
        name: &str,
        image: &str,
        pull_secret: Option<&str>,
    ) -> Result<Pod, kube::Error> {
        let mut spec = json!({"containers": [{"name": "app", "image": image}]});
        if let Some(secret) = pull_secret {
            spec["imagePullSecrets"] = json!([{"name": secret}]);
        }
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": self.ns}, "spec": spec}),
        )
        .unwrap();
        Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &pod)
            .await
    }

    /// What the API server says before the gate's own message when the gate denies.
    fn denial_prefix(&self) -> String {
        format!(
            "admission webhook \"{}.kosli.com\" denied the request: denied by the Kosli gate: ",
            self.id
        )
    }

    /// The API server's message for a request this test's gate denied: HTTP 400
    /// (the gate's answer carries no code, and the API server raises any code
    /// below 400 to 400), the webhook named, the gate's message after
    /// `denial_prefix`.
    fn denial<T: std::fmt::Debug>(&self, result: Result<T, kube::Error>) -> String {
        let (code, message) = api_error(result);
        assert_eq!(code, 400, "{message}");
        assert!(
            message.starts_with(&self.denial_prefix()),
            "not a denial by this test's gate: {message}"
        );
        message
    }

    /// Waits until the API server calls the webhook (configurations load asynchronously).
    async fn wait_active(&self) {
        let probe = self.image(&self.env.registry, &self.env.index_tag);
        self.set_verdict(&self.env.index_digest, false);
        eventually(
            Duration::from_secs(20),
            "the webhook to be called",
            || async {
                match self.create_pod(&unique("probe"), &probe, None).await {
                    Err(e) if e.to_string().contains("denied") => Some(()),
                    _ => None,
                }
            },
        )
        .await;
        self.fake.state().requests.clear();
    }
}

impl Gate {
    /// A client acting as `user` in `groups` (the test env's admin may impersonate).
    async fn impersonating(&self, user: &str, groups: &[&str]) -> Client {
        let kc = kube::config::Kubeconfig::read_from(&self.env.kubeconfig).unwrap();
        let mut config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups =
            Some(groups.iter().map(|g| (*g).to_owned()).collect());
        Client::try_from(config).unwrap()
    }

    /// Removes the webhook configuration (it selects only this test's namespace,
    /// so one left behind by a failed test harms nobody).
    async fn cleanup(self) {
        delete_validating_webhook(&self.client, &self.id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliant_pods_are_admitted_and_non_compliant_deployments_denied_with_reasons() {
    let g = gate("Enforce", &[]).await;
    g.wait_active().await;
    g.set_verdict(&g.env.single_digest, true);
    g.create_pod("good", &g.image(&g.env.registry, &g.env.single_tag), None)
        .await
        .unwrap();
    let asserts: Vec<String> = g.fake.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        asserts
            .iter()
            .any(|p| p.ends_with(&hex(&g.env.single_digest))),
        "{asserts:?}"
    );

    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": g.ns},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"initContainers": [{"name": "init", "image": g.image(&g.env.registry, &g.env.single_tag)}],
                     "containers": [{"name": "web", "image": g.image(&g.env.registry, &g.env.index_tag)}]}}}
    }))
    .unwrap();
    let err = g.denial(
        Api::<Deployment>::namespaced(g.client.clone(), &g.ns)
            .create(&PostParams::default(), &deployment)
            .await,
    );
    for needle in [
        "denied the request",
        &g.image(&g.env.registry, &g.env.index_tag),
        &hex(&g.env.index_digest),
        "policy prod-requirements: unit-tests (missing_attestation)",
        "https://app.kosli.com/acme/fingerprint/",
    ] {
        assert!(err.contains(needle), "denial lacks {needle:?}: {err}");
    }
    assert!(
        !err.contains(&hex(&g.env.single_digest)),
        "the compliant init image is not blamed: {err}"
    );

    // A digest-pinned unknown artifact: no registry lookup, and Kosli's 404 says so.
    let unknown = format!(
        "{}/{}@sha256:{}",
        g.env.registry,
        g.env.image_repo,
        "9".repeat(64)
    );
    let err = g.denial(g.create_pod("unknown", &unknown, None).await);
    assert!(err.contains("unknown to Kosli"), "{err}");
    assert_eq!(
        err,
        format!(
            "{}{unknown} (sha256:{}) is unknown to Kosli: no build of this fingerprint was reported",
            g.denial_prefix(),
            "9".repeat(64)
        )
    );

    let metrics = g.op.metrics().await;
    assert!(metrics.contains("kosli_operator_admission_reviews_total{decision=\"denied\",kind=\"Deployment\",mode=\"Enforce\",operation=\"CREATE\"} 1"), "{metrics}");
    g.cleanup().await;
}

/// Per environment: `requireDigest` refuses a tag without resolving it, and
/// `unknownArtifacts: Warn` admits an image Kosli has never seen with a
/// warning, even in Enforce; a non-compliant image is still denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_digest_and_unknown_artifacts_are_per_environment() {
    let g = gate("Enforce", &[]).await;
    g.wait_active().await;
    let environments = Api::<kosli_operator::core::crd::KosliEnvironment>::all(g.client.clone());
    environments
        .patch(
            &format!("{}-env", g.id),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"gate": {
                "mode": "Enforce", "requireDigest": true, "unknownArtifacts": "Warn"}}})),
        )
        .await
        .unwrap();
    let tag = g.image(&g.env.registry, &g.env.single_tag);
    let err = eventually(
        Duration::from_secs(20),
        "the tag refused unresolved",
        || async {
            let name = unique("tagged");
            match g.create_pod(&name, &tag, None).await {
                Err(e) => Some(format!("{e}")),
                Ok(_) => None,
            }
        },
    )
    .await;
    assert!(
        err.contains("prod requires digests: pin the image by digest"),
        "{err}"
    );

    let unknown = format!(
        "{}/{}@sha256:{}",
        g.env.registry,
        g.env.image_repo,
        "8".repeat(64)
    );
    let manifest = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": unique("unknown"), "namespace": g.ns},
        "spec": {"containers": [{"name": "app", "image": unknown}]}})
    .to_string();
    let kubeconfig = g.env.kubeconfig.clone();
    let out = tokio::task::spawn_blocking(move || {
        kubectl(&kubeconfig, &["create", "-f", "-"], &manifest)
    })
    .await
    .unwrap();
    let warned = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "admitted: {warned}");
    assert!(
        warned.contains("Warning:") && warned.contains("is unknown to Kosli"),
        "{warned}"
    );

    g.set_verdict(&g.env.single_digest, false);
    let pinned = format!(
        "{}/{}@{}",
        g.env.registry, g.env.image_repo, g.env.single_digest
    );
    let err = g.denial(g.create_pod(&unique("pinned"), &pinned, None).await);
    assert!(err.contains("is not compliant for prod"), "{err}");
    g.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_mode_admits_with_a_warning_kubectl_shows() {
    let g = gate("Warn", &[]).await;
    g.set_verdict(&g.env.index_digest, false);
    let image = g.image(&g.env.registry, &g.env.index_tag);
    let manifest = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "warned", "namespace": g.ns},
        "spec": {"containers": [{"name": "app", "image": image}]}});
    let output = eventually(
        Duration::from_secs(20),
        "a warning from the webhook",
        || {
            let manifest = manifest.to_string();
            let kubeconfig = g.env.kubeconfig.clone();
            let name = unique("warned");
            async move {
                let manifest = manifest.replace("\"warned\"", &format!("\"{name}\""));
                tokio::task::spawn_blocking(move || {
                    let out = kubectl(&kubeconfig, &["create", "-f", "-"], &manifest);
                    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                    (out.status.success() && stderr.contains("Warning:")).then_some(stderr)
                })
                .await
                .unwrap()
            }
        },
    )
    .await;
    assert!(
        output.contains("is not compliant for prod") && output.contains("missing_attestation"),
        "{output}"
    );
    g.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kosli_outage_admits_cached_compliant_digests_only_and_a_hang_still_gets_an_answer() {
    let g = gate("Enforce", &["--gate-compliant-cache", "1s"]).await;
    g.wait_active().await;
    g.set_verdict(&g.env.single_digest, true);
    let known = g.image(&g.env.registry, &g.env.single_tag);
    g.create_pod("before-outage", &known, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Kosli down: the compliant digest is admitted on its cached verdict, an
    // unknown one is denied as unreachable, not as non-compliant.
    g.fake.script(std::iter::repeat_n(
        Scripted::page(503, "<html>down</html>"),
        2,
    ));
    g.create_pod("during-outage", &known, None).await.unwrap();
    let other = format!(
        "{}/{}@sha256:{}",
        g.env.registry,
        g.env.image_repo,
        "8".repeat(64)
    );
    let err = g.denial(g.create_pod("unknown-during-outage", &other, None).await);
    assert!(err.contains("Kosli is unreachable"), "{err}");
    assert!(
        err.starts_with(&format!(
            "{}{other} (sha256:{}) could not be checked for prod: Kosli is unreachable (",
            g.denial_prefix(),
            "8".repeat(64)
        )),
        "{err}"
    );
    assert!(!err.contains("not compliant"), "{err}");

    // Kosli hangs: the answer still comes from the webhook, before its timeout.
    g.fake.script([Scripted::slow(Duration::from_secs(30))]);
    let hanging = format!(
        "{}/{}@sha256:{}",
        g.env.registry,
        g.env.image_repo,
        "7".repeat(64)
    );
    let started = Instant::now();
    let err = g.denial(g.create_pod("while-kosli-hangs", &hanging, None).await);
    let took = started.elapsed();
    assert!(
        err.contains("denied the request") && err.contains("Kosli is unreachable"),
        "{err}"
    );
    assert!(
        err.starts_with(&format!(
            "{}{hanging} (sha256:{}) could not be checked for prod: Kosli is unreachable (",
            g.denial_prefix(),
            "7".repeat(64)
        )),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(5),
        "answered after {took:?}, beyond the 5 s timeout"
    );
    // Break-glass: only for the install's break-glass group (both users may
    // create pods: system:masters), admitted until it expires, and recorded
    // as an Event naming who used it.
    let until = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(600)).to_string();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "emergency", "namespace": g.ns,
            "annotations": {"gate.kosli.com/break-glass-until": until}},
        "spec": {"containers": [{"name": "app", "image": g.image(&g.env.registry, &g.env.index_tag)}]}
    }))
    .unwrap();
    let mallory = g.impersonating("mallory", &["system:masters"]).await;
    let err = g.denial(
        Api::<Pod>::namespaced(mallory, &g.ns)
            .create(&PostParams::default(), &pod)
            .await,
    );
    let refused = err.strip_prefix(&g.denial_prefix()).unwrap();
    assert!(
        refused.starts_with(
            "gate.kosli.com/break-glass-until used by \"mallory\" (groups: "
        ) && refused.contains("system:masters")
            && refused.ends_with(
                "), who may not break glass; allowed users: none; allowed groups: kosli-operator:break-glass"
            ),
        "{err}"
    );
    let oncall = g
        .impersonating("oncall", &["system:masters", "kosli-operator:break-glass"])
        .await;
    // A dry run is admitted and writes nothing (the webhook has sideEffects: None).
    let mut rehearsal = pod.clone();
    rehearsal.metadata.name = Some("rehearsal".into());
    Api::<Pod>::namespaced(oncall.clone(), &g.ns)
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &rehearsal,
        )
        .await
        .unwrap();
    Api::<Pod>::namespaced(oncall, &g.ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let environment = format!("{}-env", g.id);
    let event = eventually(Duration::from_secs(10), "a BreakGlass event", || async {
        support::testenv::events_about(&g.client, &environment)
            .await
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("BreakGlass")
                    && e.note.as_deref().is_some_and(|n| n.contains("emergency"))
            })
    })
    .await;
    assert!(
        event.note.as_deref().unwrap().starts_with(&format!(
            "Pod {}/emergency admitted without a Kosli check through break-glass by \"oncall\" until ",
            g.ns
        )),
        "{event:?}"
    );
    // The Event of the real create is in; one for the earlier dry run would be too.
    let rehearsed: Vec<_> = support::testenv::events_about(&g.client, &environment)
        .await
        .into_iter()
        .filter(|e| e.note.as_deref().is_some_and(|n| n.contains("rehearsal")))
        .collect();
    assert!(rehearsed.is_empty(), "a dry run wrote {rehearsed:?}");
    let expired = (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60)).to_string();
    let mut late = pod.clone();
    late.metadata.name = Some("too-late".into());
    late.metadata.annotations =
        Some([("gate.kosli.com/break-glass-until".to_owned(), expired)].into());
    let err = g.denial(
        Api::<Pod>::namespaced(g.client.clone(), &g.ns)
            .create(&PostParams::default(), &late)
            .await,
    );
    assert!(
        err.contains("not compliant"),
        "an expired break-glass is not honoured: {err}"
    );

    let metrics = g.op.metrics().await;
    assert!(
        metrics.contains("kosli_operator_gate_break_glass_total{environment=\"prod\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kosli_operator_gate_cache_total{cache=\"verdict\",result=\"stale\"}"),
        "{metrics}"
    );
    g.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_behind_basic_auth_resolves_with_the_pods_pull_secret() {
    // The probe's non-compliant verdict must not outlive the probe.
    let g = gate(
        "Enforce",
        &["--gate-non-compliant-cache", "100ms", "--gate-pull-secrets"],
    )
    .await;
    g.wait_active().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    g.set_verdict(&g.env.single_digest, true);
    g.set_verdict(&g.env.index_digest, true);
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        g.env.registry_basic_user, g.env.registry_basic_password
    ));
    let config = json!({"auths": {g.env.registry_basic.clone(): {"auth": auth}}}).to_string();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "regcred", "namespace": g.ns},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config},
    }))
    .unwrap();
    Api::<Secret>::namespaced(g.client.clone(), &g.ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let image = g.image(&g.env.registry_basic, &g.env.single_tag);
    let err = g.denial(g.create_pod("no-secret", &image, None).await);
    assert!(
        err.contains("cannot resolve tag") && err.contains("pin a digest"),
        "{err}"
    );
    assert!(
        err.starts_with(&format!(
            "{}{image}: cannot resolve tag (",
            g.denial_prefix()
        )) && err.ends_with("); pin a digest (image@sha256:...)"),
        "{err}"
    );
    g.create_pod("with-secret", &image, Some("regcred"))
        .await
        .unwrap();

    // The same secret through the pod's service account (another tag, so no
    // digest cached from the lookup above can stand in).
    let image = g.image(&g.env.registry_basic, &g.env.index_tag);
    let sa: k8s_openapi::api::core::v1::ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": "builder", "namespace": g.ns},
        "imagePullSecrets": [{"name": "regcred"}],
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(g.client.clone(), &g.ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "via-service-account", "namespace": g.ns},
        "spec": {"serviceAccountName": "builder", "containers": [{"name": "app", "image": image}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(g.client.clone(), &g.ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();

    // Fifty pull secrets named (none exists): at most the cap is read, all at
    // once, and the review is answered inside the webhook's 5 s timeout.
    let image = g.image(&g.env.registry_basic, "never-pushed");
    let secrets: Vec<_> = (0..50)
        .map(|i| json!({"name": format!("missing-{i}")}))
        .collect();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "many-secrets", "namespace": g.ns},
        "spec": {"imagePullSecrets": secrets, "containers": [{"name": "app", "image": image}]}
    }))
    .unwrap();
    let started = Instant::now();
    let err = g.denial(
        Api::<Pod>::namespaced(g.client.clone(), &g.ns)
            .create(&PostParams::default(), &pod)
            .await,
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    assert!(
        err.starts_with(&format!(
            "{}{image}: cannot resolve tag (",
            g.denial_prefix()
        )),
        "{err}"
    );
    g.cleanup().await;
}
