//! Properties of the gate's inputs: whatever a client sends (random JSON,
//! real reviews cut short or mutated, odd pod specs, odd image references),
//! nothing panics, and the handler answers with a decision; only a body that
//! is not an AdmissionReview at all (no request uid to answer) gets a 400.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

use std::sync::Arc;
use std::time::Duration;

use kosli_operator::core::crd::KosliEnvironment;
use kosli_operator::core::fingerprint::ImageRef;
use kosli_operator::environments::EnvironmentIndex;
use kosli_operator::gate::handler::{GateCluster, GateHandler, GateOptions};
use kosli_operator::gate::registry::{RegistryClient, RegistryConfig};
use kosli_operator::gate::resolver::{Resolver, ResolverOptions};
use kosli_operator::gate::server::ReviewHandler;
use kosli_operator::gate::workload::{parse_review, review_uid};
use kosli_operator::k8s::events::EventPublisher;
use kosli_operator::k8s::store::{ClusterState, SharedState};
use kosli_operator::kosli::{ApiToken, KosliClient, KosliConfig};
use kosli_operator::observe::metrics::Metrics;
use proptest::prelude::*;
use serde_json::{Value, json};

/// A loopback address where nothing listens: every lookup fails at once,
/// and nothing leaves the machine.
fn closed() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// A handler gating namespace `shop` in Enforce, with nothing to ask.
fn handler(runtime: &tokio::runtime::Runtime) -> GateHandler {
    let _guard = runtime.enter();
    let client = kube::Client::try_from(kube::Config::new(closed().parse().unwrap())).unwrap();
    let index = Arc::new(EnvironmentIndex::new(None));
    let spec = json!({"name": "prod", "namespaces": ["shop"], "gate": {"mode": "Enforce"}});
    let mut env = KosliEnvironment::new("shop-env", serde_json::from_value(spec).unwrap());
    env.metadata.generation = Some(1);
    index.apply(env);
    let state = Arc::new(SharedState::new(ClusterState::new([None])));
    state
        .write()
        .namespaces
        .apply("shop".into(), Default::default());
    let mut config = KosliConfig::new(closed(), "acme", ApiToken::new("token"));
    config.retry.max_retries = 0;
    let registry = RegistryClient::new(&RegistryConfig {
        connect_timeout: Duration::from_millis(200),
        request_timeout: Duration::from_millis(500),
        ..RegistryConfig::default()
    })
    .unwrap();
    let resolver = Resolver::new(
        registry,
        Some(KosliClient::new(&config).unwrap()),
        ResolverOptions::default(),
    );
    let mut options = GateOptions::new(Duration::from_secs(1));
    options.pull_secrets = true;
    GateHandler::new(
        GateCluster {
            client: client.clone(),
            state,
            environments: index,
            events: EventPublisher::new(client, "kube-system".into(), "test".into()),
            metrics: Arc::new(Metrics::new().unwrap()),
        },
        Arc::new(resolver),
        options,
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One runtime and handler for every case of a test binary: building the
/// clients per case would dominate the run time.
fn shared() -> &'static (tokio::runtime::Runtime, GateHandler) {
    static SHARED: std::sync::OnceLock<(tokio::runtime::Runtime, GateHandler)> =
        std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = runtime();
        let handler = handler(&runtime);
        (runtime, handler)
    })
}

/// The handler's answer to `body` obeys the contract: a review answer for
/// the request's uid, or a 400 only when no uid can be read.
fn assert_answered(handler: &GateHandler, runtime: &tokio::runtime::Runtime, body: Vec<u8>) {
    let uid = review_uid(&body);
    match runtime.block_on(handler.review(body.clone().into())) {
        Ok(out) => {
            let review: Value = serde_json::from_slice(&out).unwrap();
            let response = &review["response"];
            assert!(response["allowed"].is_boolean(), "{review}");
            assert_eq!(response["uid"].as_str(), uid.as_deref(), "{review}");
            assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        }
        Err(rejection) => {
            assert_eq!(rejection.status, 400, "{rejection}");
            assert_eq!(uid, None, "a review with a uid must get a decision");
        }
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("x".repeat(10_000))),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("request".to_owned()),
                    Just("uid".to_owned()),
                    Just("kind".to_owned()),
                    Just("object".to_owned()),
                    Just("spec".to_owned()),
                    // Never "image": a random image string could name a
                    // real registry, and these tests stay on loopback.
                    Just("containers".to_owned()),
                    ".{0,10}"
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A real review of a Pod in `shop` with `spec`, by `user`.
fn review(kind: &str, spec: Value, user: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "p", "namespace": "shop", "operation": "CREATE",
            "userInfo": user,
            "object": {"apiVersion": "v1", "kind": kind,
                "metadata": {"name": "p", "namespace": "shop",
                    "annotations": {"gate.kosli.com/break-glass-until": "2099-01-01T00:00:00Z"}},
                "spec": spec},
            "oldObject": null, "dryRun": true
        }
    })
}

fn real_review() -> Vec<u8> {
    let spec = json!({
        "containers": [{"name": "app", "image": "127.0.0.1:9/app:v1"},
                       {"name": "pinned", "image": format!("127.0.0.1:9/app@sha256:{}", "a".repeat(64))}],
        "imagePullSecrets": [{"name": "regcred"}],
    });
    review("Pod", spec, json!({"username": "alice", "groups": ["g"]}))
        .to_string()
        .into_bytes()
}

/// Odd pod specs: containers whose fields are anything, images on the
/// closed loopback registry (never a real host) or anything at all.
fn pod_spec() -> impl Strategy<Value = Value> {
    let image = prop_oneof![
        ".{0,60}".prop_map(|s| json!(format!("127.0.0.1:9/{s}"))),
        "[a-z0-9]{1,10}".prop_map(|s| json!(format!("127.0.0.1:9/{s}@sha256:{}", "b".repeat(64)))),
        json_value().prop_filter("no string that could name a real registry", |v| !v
            .is_string()),
    ];
    let container = (json_value(), image)
        .prop_map(|(name, image)| json!({"name": name, "image": image}))
        .boxed();
    (
        prop::collection::vec(container.clone(), 0..12),
        prop::collection::vec(container, 0..3),
        json_value(),
        json_value(),
    )
        .prop_map(|(containers, init, secrets, account)| {
            json!({"containers": containers, "initContainers": init,
                   "imagePullSecrets": secrets, "serviceAccountName": account})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn image_references_never_panic(text in ".{0,300}") {
        let _ = ImageRef::parse(&text);
    }

    #[test]
    fn random_json_never_panics_and_is_answered_or_refused(value in json_value()) {
        let body = value.to_string().into_bytes();
        let _ = parse_review(&body);
        let (runtime, handler) = shared();
        assert_answered(handler, runtime, body);
    }

    #[test]
    fn real_reviews_cut_short_or_mutated_are_answered_or_refused(
        cut in 0usize..2000,
        flips in prop::collection::vec((0usize..2000, any::<u8>()), 0..4),
    ) {
        let mut body = real_review();
        for (at, byte) in flips {
            let at = at % body.len();
            body[at] = byte;
        }
        body.truncate(cut.min(body.len()));
        let (runtime, handler) = shared();
        assert_answered(handler, runtime, body);
    }

    #[test]
    fn odd_requests_inside_a_review_get_a_decision(
        field in prop_oneof![Just("kind"), Just("operation"), Just("object"), Just("userInfo"), Just("namespace"), Just("dryRun")],
        value in json_value(),
    ) {
        let mut review: Value = serde_json::from_slice(&real_review()).unwrap();
        review["request"][field] = value;
        let (runtime, handler) = shared();
        assert_answered(handler, runtime, review.to_string().into_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn odd_pod_specs_always_get_a_decision(spec in pod_spec(), kind in prop_oneof![Just("Pod"), Just("Deployment"), Just("CronJob")]) {
        let body = review(kind, spec, json!({"username": "alice"})).to_string().into_bytes();
        let (runtime, handler) = shared();
        let out = runtime.block_on(handler.review(body.into())).unwrap();
        let review: Value = serde_json::from_slice(&out).unwrap();
        prop_assert!(review["response"]["allowed"].is_boolean(), "{}", review);
    }
}
