//! The gate under hostile input, end to end, with the chart's default
//! `failurePolicy: Ignore`: any review not answered in time, any dropped
//! connection and any HTTP error would admit the pod. The pod's author picks
//! the registry, so the registry here is hostile (see `support::hostile_registry`),
//! and anyone who reaches the webhook port can forge reviews.
//!
//! Every review must get a decision inside `timeoutSeconds - 1 s`, the process
//! must stay alive, and its memory must grow by less than 64 MiB.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::fake_kosli::FakeKosli;
use support::hostile_registry::{HostileRegistry, OVERFLOW_DIGEST};
use support::operator::Operator;
use support::setup::{Setup, setup};
use support::testenv::unique;
use support::webhook::{ServingCert, delete_validating_webhook, https_client};

/// The webhook's timeoutSeconds in these tests.
const TIMEOUT_SECONDS: u64 = 5;
/// Every answer must arrive within this: a second inside the API server's timeout.
const ANSWER_WITHIN: Duration = Duration::from_secs(TIMEOUT_SECONDS - 1);

struct Hostile {
    client: Client,
    fake: FakeKosli,
    id: String,
    ns: String,
    op: Operator,
    port: u16,
    cert: ServingCert,
    registry: HostileRegistry,
}

/// An Enforce namespace behind a webhook registered with failurePolicy Ignore,
/// the operator serving it with pull-secret resolution on.
async fn hostile() -> Hostile {
    let s = setup("h").await;
    let ns = s.gated_namespace("Enforce").await;
    let registry = HostileRegistry::start().await;
    // The victim's credentials for the hostile registry: they may go to it,
    // never to another host.
    let auth = format!(
        "{{\"auths\":{{\"{}\":{{\"username\":\"victim\",\"password\":\"s3cret-hostile\"}}}}}}",
        registry.addr
    );
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "pull", "namespace": ns},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": ByteString(auth.into_bytes())},
    }))
    .unwrap();
    Api::<Secret>::namespaced(s.client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let (op, port, cert) = s
        .serve_gate(&["--gate-pull-secrets"], "Ignore", TIMEOUT_SECONDS as i32)
        .await;
    let Setup {
        client, fake, id, ..
    } = s;
    let h = Hostile {
        client,
        fake,
        id,
        ns,
        op,
        port,
        cert,
        registry,
    };
    h.wait_active().await;
    h
}

impl Hostile {
    async fn create_pod(&self, name: &str, images: &[String]) -> Result<Pod, kube::Error> {
        let containers: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
            .collect();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {"containers": containers, "imagePullSecrets": [{"name": "pull"}]},
        }))
        .unwrap();
        Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &pod)
            .await
    }

    /// Creates the pod and returns the gate's denial, failing if the pod was
    /// admitted, if anything but the gate refused it, or if the answer came late.
    async fn denied_in_time(&self, name: &str, images: &[String]) -> String {
        let started = Instant::now();
        let result = self.create_pod(name, images).await;
        let took = started.elapsed();
        let message = match result {
            Ok(_) => panic!("{name} was admitted: the gate failed open ({images:?})"),
            Err(e) => e.to_string(),
        };
        let prefix = format!(
            "admission webhook \"{}.kosli.com\" denied the request",
            self.id
        );
        assert!(
            message.contains(&prefix),
            "{name}: not a decision of the gate: {message}"
        );
        assert!(
            took < ANSWER_WITHIN,
            "{name}: answered after {took:?}, not within {ANSWER_WITHIN:?}"
        );
        message
    }

    /// Waits until the API server calls the webhook (configurations load
    /// asynchronously): a digest-pinned unknown artifact is denied.
    async fn wait_active(&self) {
        let probe = format!("{}/probe@sha256:{}", self.registry.addr, "e".repeat(64));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self
                .create_pod(&unique("probe"), std::slice::from_ref(&probe))
                .await
            {
                Err(e) if e.to_string().contains("denied") => break,
                _ => assert!(Instant::now() < deadline, "the webhook was never called"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn set_non_compliant(&self, digest: &str) {
        let hex = digest.trim_start_matches("sha256:");
        self.fake.state().asserts.insert(
            hex.to_owned(),
            json!({
                "compliant": false, "scope": "environment", "environment": "prod",
                "policy_evaluations": [], "html_url": format!("https://app.kosli.com/acme/fingerprint/{hex}"),
            }),
        );
    }

    /// Peak and current resident memory of the operator, in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.op.pid())).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    async fn alive(&mut self) {
        self.op.wait_ready().await;
    }

    async fn cleanup(self) {
        delete_validating_webhook(&self.client, &self.id).await;
    }
}

/// Registries that never finish a body, never answer, overflow a token's
/// lifetime or send credentials elsewhere: each pod is denied by the gate
/// itself, in time, and the victim's password never leaves for another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_registries_get_a_decision_in_time_not_a_dropped_review() {
    let mut h = hostile().await;
    let (_, rss_before) = h.memory_kib();

    for behaviour in ["endless", "hang", "bigtoken", "elsewhere"] {
        let image = h.registry.image(behaviour, "1");
        let message = h
            .denied_in_time(behaviour, std::slice::from_ref(&image))
            .await;
        assert!(message.contains(&image), "{behaviour}: {message}");
        h.alive().await;
    }
    assert!(
        h.registry.elsewhere.lock().unwrap().is_empty(),
        "a token realm on another host was followed: {:?}",
        h.registry.elsewhere.lock().unwrap()
    );

    // A token that lives u64::MAX seconds: resolved (or refused) without a
    // panic, and the same image is decided again afterwards.
    h.set_non_compliant(OVERFLOW_DIGEST);
    let image = h.registry.image("overflow", "1");
    for name in ["overflow-1", "overflow-2"] {
        let message = h.denied_in_time(name, std::slice::from_ref(&image)).await;
        assert!(message.contains(&image), "{name}: {message}");
        h.alive().await;
    }

    // A pod naming many hostile images at once is still decided in time.
    let many: Vec<String> = (0..40)
        .map(|i| {
            h.registry.image(
                if i % 2 == 0 { "hang" } else { "endless" },
                &format!("m{i}"),
            )
        })
        .collect();
    h.denied_in_time("many", &many).await;
    h.alive().await;

    let (peak, _) = h.memory_kib();
    eprintln!(
        "operator memory: {rss_before} KiB before, peak {peak} KiB (+{} KiB)",
        peak.saturating_sub(rss_before)
    );
    assert!(
        peak.saturating_sub(rss_before) < 64 * 1024,
        "memory grew by {} KiB under hostile registries (from {rss_before} KiB to a peak of {peak} KiB)",
        peak.saturating_sub(rss_before)
    );
    h.cleanup().await;
}

fn review(uid: &str, namespace: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": uid,
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "forger"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
        }
    })
}

/// Forged reviews straight to the port, many at once, each naming many
/// endless images, and reviews whose object cannot be read: each is answered
/// with a decision (an AdmissionReview, not an HTTP error) in time, and the
/// operator's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_reviews_is_decided_in_time_within_bounded_memory() {
    let mut h = hostile().await;
    let https = https_client(&h.cert.ca_pem);
    let url = format!("https://127.0.0.1:{}/validate", h.port);
    let (_, rss_before) = h.memory_kib();

    let mut reviews = Vec::new();
    for r in 0..48 {
        let uid = format!("flood-{r}");
        let containers: Vec<Value> = (0..20)
            .map(|i| json!({"name": format!("c{i}"), "image": h.registry.image("endless", &format!("r{r}-{i}"))}))
            .collect();
        let object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": uid, "namespace": h.ns},
            "spec": {"containers": containers, "imagePullSecrets": [{"name": "pull"}]},
        });
        reviews.push((uid.clone(), review(&uid, &h.ns, object)));
    }
    // Objects that cannot be read as a pod: still a decision, never a 400.
    for (i, object) in [
        json!("not-an-object"),
        json!({"spec": {"containers": "nope"}}),
        json!({"spec": {"containers": [{"name": 7, "image": ["x"]}]}}),
    ]
    .into_iter()
    .enumerate()
    {
        let uid = format!("garbage-{i}");
        reviews.push((uid.clone(), review(&uid, &h.ns, object)));
    }

    let answers = futures::future::join_all(reviews.into_iter().map(|(uid, body)| {
        let https = https.clone();
        let url = url.clone();
        async move {
            let started = Instant::now();
            let response = https
                .post(&url)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap())
                .send()
                .await;
            let took = started.elapsed();
            let response = response.unwrap_or_else(|e| panic!("{uid}: no answer: {e}"));
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (uid, status, text, took)
        }
    }))
    .await;

    for (uid, status, text, took) in answers {
        assert_eq!(status, 200, "{uid}: HTTP {status} is no decision: {text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["response"]["uid"], uid, "{text}");
        assert_eq!(
            answer["response"]["allowed"], false,
            "{uid}: admitted in Enforce: {text}"
        );
        assert!(
            took < ANSWER_WITHIN,
            "{uid}: answered after {took:?}, not within {ANSWER_WITHIN:?}"
        );
    }
    h.alive().await;
    let (peak, _) = h.memory_kib();
    eprintln!(
        "operator memory: {rss_before} KiB before, peak {peak} KiB (+{} KiB)",
        peak.saturating_sub(rss_before)
    );
    assert!(
        peak.saturating_sub(rss_before) < 64 * 1024,
        "memory grew by {} KiB under forged reviews (from {rss_before} KiB to a peak of {peak} KiB)",
        peak.saturating_sub(rss_before)
    );
    h.cleanup().await;
}
