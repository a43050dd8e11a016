//! One admission review through the gate's handler, offline: a loopback stub
//! stands in for the API server (recording every request, answering canned
//! JSON, or hanging) and another for Kosli (counting lookups in flight). Each
//! test is a way the gate used to fail open or overstep (issue 11).

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kosli_operator::core::crd::KosliEnvironment;
use kosli_operator::environments::EnvironmentIndex;
use kosli_operator::gate::decision::BreakGlassAuthority;
use kosli_operator::gate::handler::{GateCluster, GateHandler, GateOptions};
use kosli_operator::gate::registry::{RegistryClient, RegistryConfig};
use kosli_operator::gate::resolver::{Resolver, ResolverOptions};
use kosli_operator::gate::server::ReviewHandler;
use kosli_operator::k8s::events::EventPublisher;
use kosli_operator::k8s::store::{ClusterState, SharedState};
use kosli_operator::kosli::{ApiToken, KosliClient, KosliConfig};
use kosli_operator::observe::metrics::Metrics;
use prometheus::core::Collector;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const DIGEST: &str = "644a70516a26004c97d0d85c7fe1d0c3a67ea8ab7ddf4aff193d9f301670cf36";

/// How a stub answers one request: status, JSON body, delay before answering.
type Answerer = dyn Fn(&str, &str) -> (u16, String, Duration) + Send + Sync;

/// A loopback HTTP/1.1 server answering every request through `answer`,
/// recording `METHOD path` and the most requests it had in flight at once.
struct Stub {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Stub {
    async fn start(
        answer: impl Fn(&str, &str) -> (u16, String, Duration) + Send + Sync + 'static,
    ) -> Self {
        let answer: Arc<Answerer> = Arc::new(answer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let (r, i, m) = (requests.clone(), in_flight.clone(), max_in_flight.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (answer, r, i, m) = (answer.clone(), r.clone(), i.clone(), m.clone());
                tokio::spawn(async move {
                    let Some((method, path)) = read_request(&mut stream).await else {
                        return;
                    };
                    r.lock().unwrap().push(format!("{method} {path}"));
                    let now = i.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    let (status, body, delay) = answer(&method, &path);
                    tokio::time::sleep(delay).await;
                    i.fetch_sub(1, Ordering::SeqCst);
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                });
            }
        });
        Self {
            url,
            requests,
            max_in_flight,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn count(&self, part: &str) -> usize {
        self.requests().iter().filter(|r| r.contains(part)).count()
    }
}

/// Reads one request's head and body; its method and path (query dropped).
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let mut parts = head.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?;
    let path = target.split('?').next().unwrap_or(target).to_owned();
    Some((method, path))
}

/// Kosli answering every assert after `delay`, compliant or not.
async fn kosli(compliant: bool, delay: Duration) -> Stub {
    Stub::start(move |_, path| {
        if path.contains("/asserts/") {
            let body =
                json!({"compliant": compliant, "scope": "environment", "environment": "prod"});
            (200, body.to_string(), delay)
        } else {
            (404, "{}".to_owned(), Duration::ZERO)
        }
    })
    .await
}

fn quiet_api() -> impl Fn(&str, &str) -> (u16, String, Duration) + Send + Sync + 'static {
    |method, path| {
        match method {
        "POST" => (201, json!({"metadata": {"name": "e"}}).to_string(), Duration::ZERO),
        _ => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")}).to_string(),
            Duration::ZERO,
        ),
    }
    }
}

struct Rig {
    handler: GateHandler,
    api: Stub,
    metrics: Arc<Metrics>,
    index: Arc<EnvironmentIndex>,
}

/// `environments` are KosliEnvironment specs by object name; the namespace
/// `shop` is known with label `team=shop`.
async fn rig(
    api: Stub,
    kosli: &Stub,
    environments: &[(&str, Value)],
    options: impl FnOnce(&mut GateOptions),
) -> Rig {
    let client = kube::Client::try_from(kube::Config::new(api.url.parse().unwrap())).unwrap();
    let index = Arc::new(EnvironmentIndex::new(None));
    for (name, spec) in environments {
        let mut env = KosliEnvironment::new(name, serde_json::from_value(spec.clone()).unwrap());
        env.metadata.generation = Some(1);
        index.apply(env);
    }
    index.set_synced();
    let state = Arc::new(SharedState::new(ClusterState::new([None])));
    state.write().namespaces.apply(
        "shop".into(),
        [("team".to_owned(), "shop".to_owned())].into(),
    );
    let metrics = Arc::new(Metrics::new().unwrap());
    let mut config = KosliConfig::new(&kosli.url, "acme", ApiToken::new("token"));
    config.retry.max_retries = 0;
    let registry = RegistryClient::new(&RegistryConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        ..RegistryConfig::default()
    })
    .unwrap();
    let resolver = Arc::new(Resolver::new(
        registry,
        Some(KosliClient::new(&config).unwrap()),
        ResolverOptions::default(),
    ));
    let mut gate_options = GateOptions::new(Duration::from_secs(2));
    options(&mut gate_options);
    let handler = GateHandler::new(
        GateCluster {
            client: client.clone(),
            state,
            environments: index.clone(),
            events: EventPublisher::new(client, "kube-system".into(), "test".into()),
            metrics: metrics.clone(),
        },
        resolver,
        gate_options,
    );
    Rig {
        handler,
        api,
        metrics,
        index,
    }
}

fn enforce_shop() -> (&'static str, Value) {
    (
        "shop-env",
        json!({"name": "prod", "namespaces": ["shop"], "gate": {"mode": "Enforce"}}),
    )
}

fn pinned(n: usize) -> String {
    format!("127.0.0.1:9/app{n}@sha256:{DIGEST}")
}

/// An AdmissionReview of a Pod in `namespace` with `spec`, by `user`.
fn review(namespace: &str, spec: Value, annotations: Value, user: Value, dry_run: bool) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "p", "namespace": namespace, "operation": "CREATE",
            "userInfo": user,
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": namespace, "annotations": annotations},
                "spec": spec},
            "oldObject": null, "dryRun": dry_run
        }
    })
    .to_string()
    .into_bytes()
}

fn pod(images: &[String]) -> Value {
    json!({"containers": images.iter().enumerate()
        .map(|(i, im)| json!({"name": format!("c{i}"), "image": im})).collect::<Vec<_>>()})
}

fn alice() -> Value {
    json!({"username": "alice", "groups": ["system:authenticated"]})
}

/// The handler's answer: the AdmissionReview's `response`.
async fn answer(rig: &Rig, body: Vec<u8>) -> Value {
    let out = rig.handler.review(body.into()).await.unwrap();
    let review: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(
        review["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    review["response"].clone()
}

fn message(response: &Value) -> String {
    response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn warnings(response: &Value) -> Vec<String> {
    serde_json::from_value(response["warnings"].clone()).unwrap_or_default()
}

/// A pod naming 50 pull secrets, for a tag (which needs the registry).
fn fifty_secrets() -> Value {
    let mut spec = pod(&["127.0.0.1:9/app:v1".to_owned()]);
    spec["imagePullSecrets"] = (0..50)
        .map(|i| json!({"name": format!("s{i:02}")}))
        .collect();
    spec["serviceAccountName"] = json!("builder");
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pull_secret_resolution_no_secret_or_service_account_is_read() {
    let kosli = kosli(true, Duration::ZERO).await;
    let r = rig(
        Stub::start(quiet_api()).await,
        &kosli,
        &[enforce_shop()],
        |_| {},
    )
    .await;
    let response = answer(
        &r,
        review("shop", fifty_secrets(), json!({}), alice(), false),
    )
    .await;
    assert_eq!(
        response["allowed"], false,
        "the tag cannot be resolved: {response}"
    );
    assert_eq!(r.api.count("/secrets/"), 0, "{:?}", r.api.requests());
    assert_eq!(
        r.api.count("/serviceaccounts/"),
        0,
        "{:?}",
        r.api.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_the_cap_of_pull_secrets_is_read_at_once_within_the_deadline() {
    let kosli = kosli(true, Duration::ZERO).await;
    // Every GET takes 300 ms: 51 of them in a row would take 15 s.
    let api = Stub::start(|_, path| {
        (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")}).to_string(),
            Duration::from_millis(300),
        )
    })
    .await;
    let r = rig(api, &kosli, &[enforce_shop()], |o| o.pull_secrets = true).await;
    let started = Instant::now();
    let response = answer(
        &r,
        review("shop", fifty_secrets(), json!({}), alice(), false),
    )
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    assert_eq!(r.api.count("/secrets/"), 8, "{:?}", r.api.requests());
    assert_eq!(
        r.api.count("/serviceaccounts/"),
        0,
        "the pod's own secrets fill the cap"
    );
    assert_eq!(
        r.api.max_in_flight.load(Ordering::SeqCst),
        8,
        "read at once"
    );
    let said = warnings(&response);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].starts_with("42 pull secret(s) not read, beyond the limit of 8 per review (--gate-max-pull-secrets): s08, s09,"),
        "{said:?}"
    );
    assert_eq!(response["allowed"], false);

    // Room left: the service account is read, and its secrets count too.
    let kosli = self::kosli(true, Duration::ZERO).await;
    let api = Stub::start(|_, path| {
        if path.ends_with("/serviceaccounts/builder") {
            let refs: Vec<Value> = (0..10).map(|i| json!({"name": format!("sa{i}")})).collect();
            (200, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder"}, "imagePullSecrets": refs}).to_string(), Duration::ZERO)
        } else {
            (404, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}).to_string(), Duration::ZERO)
        }
    })
    .await;
    let warn = (
        "shop-env",
        json!({"name": "prod", "namespaces": ["shop"], "gate": {"mode": "Warn"}}),
    );
    let r = rig(api, &kosli, &[warn], |o| {
        o.pull_secrets = true;
        o.max_pull_secrets = 4;
    })
    .await;
    let mut spec = fifty_secrets();
    spec["imagePullSecrets"] = json!([{"name": "own"}]);
    let response = answer(&r, review("shop", spec, json!({}), alice(), false)).await;
    assert_eq!(response["allowed"], true);
    assert_eq!(r.api.count("/serviceaccounts/builder"), 1);
    let mut secrets: Vec<String> = r
        .api
        .requests()
        .into_iter()
        .filter(|p| p.contains("/secrets/"))
        .collect();
    secrets.sort();
    assert_eq!(
        secrets,
        [
            "GET /api/v1/namespaces/shop/secrets/own",
            "GET /api/v1/namespaces/shop/secrets/sa0",
            "GET /api/v1/namespaces/shop/secrets/sa1",
            "GET /api/v1/namespaces/shop/secrets/sa2",
        ]
    );
    assert!(
        warnings(&response).contains(
            &"7 pull secret(s) not read, beyond the limit of 4 per review (--gate-max-pull-secrets): sa3, sa4, sa5, sa6, sa7, sa8, sa9".to_owned()
        ),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_api_server_still_gets_an_answer_before_the_deadline() {
    let kosli = kosli(true, Duration::ZERO).await;
    let hang = || Stub::start(|_, _| (404, "{}".to_owned(), Duration::from_secs(30)));
    let r = rig(hang().await, &kosli, &[enforce_shop()], |o| {
        o.pull_secrets = true;
        o.deadline = Duration::from_secs(1);
    })
    .await;
    let started = Instant::now();
    let response = answer(
        &r,
        review("shop", fifty_secrets(), json!({}), alice(), false),
    )
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1300),
        "answered after {took:?}"
    );
    assert_eq!(response["allowed"], false);
    assert_eq!(
        message(&response),
        "denied by the Kosli gate: the gate could not decide within 1s: no answer in time while reading pull secrets"
    );
    let timed_out = r
        .metrics
        .reviews
        .with_label_values(&["Pod", "CREATE", "timed-out", "Enforce"])
        .get();
    assert_eq!(timed_out, 1);

    let warn = (
        "shop-env",
        json!({"name": "prod", "namespaces": ["shop"], "gate": {"mode": "Warn"}}),
    );
    let r = rig(hang().await, &kosli, &[warn], |o| {
        o.pull_secrets = true;
        o.deadline = Duration::from_secs(1);
    })
    .await;
    let response = answer(
        &r,
        review("shop", fifty_secrets(), json!({}), alice(), false),
    )
    .await;
    assert_eq!(response["allowed"], true);
    assert_eq!(
        warnings(&response),
        [
            "the Kosli gate could not check this: the gate could not decide within 1s: no answer in time while reading pull secrets"
        ]
    );
}

fn break_glass() -> Value {
    let until = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(600);
    json!({"gate.kosli.com/break-glass-until": until.to_string()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_needs_authority_is_recorded_by_name_and_never_in_a_dry_run() {
    // Kosli would deny: only a break-glass admits.
    let kosli = kosli(false, Duration::ZERO).await;
    // Event writes hang: they must not hold the answer up.
    let api = Stub::start(|method, _| match method {
        "POST" => (
            201,
            json!({"metadata": {"name": "e"}}).to_string(),
            Duration::from_secs(30),
        ),
        _ => (404, "{}".to_owned(), Duration::ZERO),
    })
    .await;
    let r = rig(api, &kosli, &[enforce_shop()], |o| {
        o.break_glass = BreakGlassAuthority {
            users: ["root".to_owned()].into(),
            groups: ["oncall".to_owned()].into(),
        };
    })
    .await;
    let spec = pod(&[pinned(0)]);
    let response = answer(
        &r,
        review("shop", spec.clone(), break_glass(), alice(), false),
    )
    .await;
    assert_eq!(response["allowed"], false);
    assert_eq!(
        message(&response),
        "denied by the Kosli gate: gate.kosli.com/break-glass-until used by \"alice\" (groups: system:authenticated), who may not break glass; allowed users: root; allowed groups: oncall"
    );
    assert_eq!(
        kosli.count("/asserts/"),
        0,
        "a refused break-glass needs no lookup"
    );

    let oncall = json!({"username": "bob", "groups": ["oncall"]});
    let started = Instant::now();
    let response = answer(
        &r,
        review("shop", spec.clone(), break_glass(), oncall.clone(), true),
    )
    .await;
    assert_eq!(response["allowed"], true);
    assert!(started.elapsed() < Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        r.api.count("POST"),
        0,
        "a dry run writes no Event: {:?}",
        r.api.requests()
    );

    let started = Instant::now();
    let response = answer(&r, review("shop", spec, break_glass(), oncall, false)).await;
    assert_eq!(response["allowed"], true);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the Event write hangs, the answer does not"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while r.api.count("POST") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        r.api
            .requests()
            .iter()
            .filter(|p| p.starts_with("POST"))
            .cloned()
            .collect::<Vec<_>>(),
        ["POST /apis/events.k8s.io/v1/namespaces/kube-system/events"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_in_flight_per_review_are_capped_and_images_deduplicated() {
    let kosli = kosli(true, Duration::from_millis(100)).await;
    let r = rig(
        Stub::start(quiet_api()).await,
        &kosli,
        &[enforce_shop()],
        |o| {
            o.max_lookups_per_review = 3;
        },
    )
    .await;
    // Twelve distinct digests, each named twice.
    let distinct: Vec<String> = (0..12)
        .map(|i| format!("127.0.0.1:9/app@sha256:{:064x}", i + 1))
        .collect();
    let images: Vec<String> = distinct.iter().chain(&distinct).cloned().collect();
    let response = answer(&r, review("shop", pod(&images), json!({}), alice(), false)).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(kosli.count("/asserts/"), 12, "each distinct image once");
    assert_eq!(kosli.max_in_flight.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_kinds_count_as_other_and_unreadable_reviews_with_a_uid_are_denied() {
    let kosli = kosli(true, Duration::ZERO).await;
    let r = rig(
        Stub::start(quiet_api()).await,
        &kosli,
        &[enforce_shop()],
        |_| {},
    )
    .await;
    for i in 0..5 {
        let mut body: Value = serde_json::from_slice(&review(
            "shop",
            pod(&[pinned(0)]),
            json!({}),
            alice(),
            false,
        ))
        .unwrap();
        body["request"]["kind"]["kind"] = json!(format!("Forged{i}"));
        let response = answer(&r, body.to_string().into_bytes()).await;
        assert_eq!(response["allowed"], true, "not an inspected kind");
    }
    let families = r.metrics.reviews.collect();
    let kinds: std::collections::BTreeSet<String> = families[0]
        .get_metric()
        .iter()
        .flat_map(|m| m.get_label().iter())
        .filter(|l| l.name() == "kind")
        .map(|l| l.value().to_owned())
        .collect();
    assert_eq!(kinds, ["other".to_owned()].into());

    // An object that does not parse, in a review that names its uid: denied.
    let mut body: Value = serde_json::from_slice(&review(
        "shop",
        pod(&[pinned(0)]),
        json!({}),
        alice(),
        false,
    ))
    .unwrap();
    body["request"]["object"] = json!("not an object");
    let response = answer(&r, body.to_string().into_bytes()).await;
    assert_eq!(response["allowed"], false);
    assert!(
        message(&response)
            .starts_with("denied by the Kosli gate: unreadable review: not an AdmissionReview"),
        "{response}"
    );
    body["request"]["operation"] = json!("EXPLODE");
    assert_eq!(
        answer(&r, body.to_string().into_bytes()).await["allowed"],
        false
    );
    // No uid: not an AdmissionReview at all, refused with 400.
    for garbage in [
        &b"{}"[..],
        b"[1,2]",
        b"{\"request\": {\"uid\": 7}}",
        b"\xff",
    ] {
        let rejection = r.handler.review(garbage.to_vec().into()).await.unwrap_err();
        assert_eq!(rejection.status, 400, "{garbage:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_whose_labels_are_not_known_yet_is_fetched_or_denied() {
    let by_label = (
        "team-env",
        json!({"name": "prod", "namespaceSelector": {"matchLabels": {"team": "shop"}}, "gate": {"mode": "Enforce"}}),
    );
    let kosli = kosli(false, Duration::ZERO).await;
    let api = Stub::start(|_, path| {
        if path == "/api/v1/namespaces/new-shop" {
            (200, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "new-shop", "labels": {"team": "shop"}}}).to_string(), Duration::ZERO)
        } else {
            (500, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500, "message": "etcd is down"}).to_string(), Duration::ZERO)
        }
    })
    .await;
    let r = rig(api, &kosli, &[by_label], |_| {}).await;
    let response = answer(
        &r,
        review("new-shop", pod(&[pinned(0)]), json!({}), alice(), false),
    )
    .await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(
        message(&response).contains("is not compliant for prod"),
        "{response}"
    );
    assert_eq!(r.api.count("GET /api/v1/namespaces/new-shop"), 1);

    let response = answer(
        &r,
        review("other", pod(&[pinned(0)]), json!({}), alice(), false),
    )
    .await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(
        message(&response).starts_with("denied by the Kosli gate: the labels of namespace other are not known yet and could not be read ("),
        "{response}"
    );
    // A known namespace is not fetched.
    answer(
        &r,
        review("shop", pod(&[pinned(0)]), json!({}), alice(), false),
    )
    .await;
    assert_eq!(r.api.count("/api/v1/namespaces/shop"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_spec_keeps_gating_by_the_last_valid_one_or_denies() {
    let kosli = kosli(false, Duration::ZERO).await;
    let r = rig(
        Stub::start(quiet_api()).await,
        &kosli,
        &[enforce_shop()],
        |_| {},
    )
    .await;
    // Applied through the handler's own index: an edit that breaks the spec.
    let index = r.index.clone();
    let mut broken = KosliEnvironment::new(
        "shop-env",
        serde_json::from_value(
            json!({"name": "prod", "namespacesRegex": ["("], "gate": {"mode": "Enforce"}}),
        )
        .unwrap(),
    );
    broken.metadata.generation = Some(2);
    index.apply(broken);
    let response = answer(
        &r,
        review("shop", pod(&[pinned(0)]), json!({}), alice(), false),
    )
    .await;
    assert_eq!(response["allowed"], false, "still gated: {response}");
    assert!(
        message(&response).contains("is not compliant for prod"),
        "{response}"
    );

    let never = (
        "never-env",
        json!({"name": "never", "namespacesRegex": ["("], "gate": {"mode": "Enforce"}}),
    );
    let r = rig(Stub::start(quiet_api()).await, &kosli, &[never], |_| {}).await;
    let response = answer(
        &r,
        review("shop", pod(&[pinned(0)]), json!({}), alice(), false),
    )
    .await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(
        message(&response).starts_with(
            "denied by the Kosli gate: KosliEnvironment never-env has an invalid spec ("
        ),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_digests_required_a_tag_is_denied_without_a_lookup() {
    let kosli = kosli(true, Duration::ZERO).await;
    let r = rig(
        Stub::start(quiet_api()).await,
        &kosli,
        &[enforce_shop()],
        |o| {
            o.require_digests = true;
            o.pull_secrets = true;
        },
    )
    .await;
    let images = ["127.0.0.1:9/app:v1".to_owned(), pinned(0)];
    let response = answer(
        &r,
        review(
            "shop",
            fifty_secrets_with(&images),
            json!({}),
            alice(),
            false,
        ),
    )
    .await;
    assert_eq!(response["allowed"], false);
    assert_eq!(
        message(&response),
        "denied by the Kosli gate: 127.0.0.1:9/app:v1: prod requires digests: pin the image by digest (image@sha256:...), a tag can move between this check and the pull"
    );
    assert_eq!(
        r.api.count("/secrets/"),
        0,
        "no registry, so no pull secret"
    );
    assert_eq!(
        kosli.count("/asserts/"),
        1,
        "the pinned image is still checked"
    );
}

fn fifty_secrets_with(images: &[String]) -> Value {
    let mut spec = fifty_secrets();
    spec["containers"] = pod(images)["containers"].clone();
    spec
}
