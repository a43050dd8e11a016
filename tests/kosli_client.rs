//! The Kosli client against the strict loopback fake: happy paths, the contract
//! checks the fake enforces, every misbehaviour and where retries must stop.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use std::time::{Duration, Instant};

use kosli_operator::Error;
use kosli_operator::error::ImageError;
use kosli_operator::kosli::{
    ApiToken, AssertOutcome, EnsureOutcome, KosliClient, KosliConfig, RetryPolicy, Streamed,
    WriteFence,
};
use serde_json::json;
use support::fake_kosli::{FakeKosli, ORG, Scripted, TOKEN};
use tokio_util::sync::CancellationToken;

const HEX: &str = "644a70516a26004c97d0d85c7fe1d0c3a67ea8ab7ddf4aff193d9f301670cf36";

fn config(url: &str) -> KosliConfig {
    let mut config = KosliConfig::new(url, ORG, ApiToken::new(TOKEN));
    config.retry = RetryPolicy {
        max_retries: 3,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(40),
        max_retry_after: Duration::from_secs(5),
    };
    config.request_timeout = Duration::from_secs(5);
    config
}

fn client(fake: &FakeKosli) -> KosliClient {
    KosliClient::new(&config(&fake.url)).expect("client")
}

/// The HTTP status and Kosli's message of a `KosliStatus` error; any other
/// error fails the test.
fn kosli_answer(err: &Error) -> (u16, &str) {
    match err {
        Error::KosliStatus {
            status, message, ..
        } => (*status, message.as_str()),
        other => panic!("expected Kosli's HTTP answer, got {other:?}"),
    }
}

fn report_body() -> Vec<u8> {
    format!(
        r#"{{"artifacts":[{{"podName":"p","namespace":"ns","digests":{{"nginx:1":"{HEX}"}},"creationTimestamp":1,"owners":null}}]}}"#
    )
    .into_bytes()
}

#[tokio::test]
async fn report_arrives_with_auth_user_agent_and_exact_body() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    client(&fake)
        .report_k8s("prod", report_body())
        .await
        .expect("report accepted");
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("PUT", "/api/v2/environments/acme/prod/report/K8S")
    );
    assert_eq!(r.body, report_body());
    assert_eq!(
        r.headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );
    assert_eq!(r.headers["content-type"], "application/json");
    let agent = r.headers["user-agent"].to_str().unwrap();
    assert_eq!(
        agent,
        format!("kosli-operator/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(fake.reports("prod").len(), 1);
}

#[tokio::test]
async fn strict_contract_rejects_unknown_fields_and_bad_digests() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    let c = client(&fake);
    let unknown = br#"{"artifacts":[],"type":"K8S"}"#.to_vec();
    let err = c.report_k8s("prod", unknown).await.unwrap_err();
    let text = err.to_string();
    assert_eq!(err.kosli_status(), Some(400), "{text}");
    assert!(
        text.contains("Input payload validation failed") && text.contains("'type' was unexpected"),
        "{text}"
    );

    let bad_digest = format!(
        r#"{{"artifacts":[{{"podName":"p","namespace":"ns","digests":{{"nginx:1":"sha256:{HEX}"}},"creationTimestamp":1,"owners":null}}]}}"#
    );
    let err = c
        .report_k8s("prod", bad_digest.into_bytes())
        .await
        .unwrap_err();
    assert_eq!(err.kosli_status(), Some(400), "{err}");
    assert!(
        err.to_string().contains("artifacts[0].digests.nginx:1"),
        "{err}"
    );

    let wrong_type = br#"{"artifacts":[{"podName":"p","namespace":"ns","digests":{},"creationTimestamp":"1","owners":null}]}"#;
    let err = c.report_k8s("prod", wrong_type.to_vec()).await.unwrap_err();
    assert_eq!(err.kosli_status(), Some(400), "{err}");
    assert!(
        err.to_string().contains("is not of type 'integer'"),
        "{err}"
    );
    assert_eq!(fake.requests().len(), 3, "a 400 is final: no retries");
    assert!(fake.reports("prod").is_empty());
}

/// `report_body()` in pieces of `piece` bytes, declared as `declared` long.
fn streamed(piece: usize, declared: usize) -> Streamed {
    Streamed::new(declared as u64, move |sender| async move {
        for chunk in report_body().chunks(piece) {
            if sender.send(chunk.to_vec().into()).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test]
async fn a_streamed_report_declares_its_length_and_is_written_afresh_for_a_retry() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    fake.script([Scripted::status(503, "Service unavailable")]);
    let len = report_body().len();
    client(&fake)
        .report_k8s("prod", streamed(7, len))
        .await
        .expect("accepted after the retry");
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!(r.body, report_body());
        assert_eq!(r.headers["content-length"], len.to_string().as_str());
        assert!(!r.headers.contains_key("transfer-encoding"));
    }
    assert_eq!(fake.reports("prod").len(), 1);
}

#[tokio::test]
async fn a_streamed_body_that_disagrees_with_its_length_never_lands() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    let len = report_body().len();
    for declared in [len + 5, len - 5] {
        let err = client(&fake)
            .report_k8s("prod", streamed(16, declared))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::KosliTransport { .. }),
            "declared {declared} of {len}: {err:?}"
        );
    }
    assert!(fake.reports("prod").is_empty());
}

#[tokio::test]
async fn wrong_token_is_a_final_401_and_the_token_never_shows() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    let mut cfg = config(&fake.url);
    cfg.token = ApiToken::new("wrong-token-value");
    let err = KosliClient::new(&cfg)
        .unwrap()
        .report_k8s("prod", report_body())
        .await
        .unwrap_err();
    assert_eq!(err.kosli_status(), Some(401));
    assert_eq!(kosli_answer(&err), (401, "Invalid API token"));
    assert!(!err.is_transient());
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("wrong-token-value"), "{shown}");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn retries_429_honouring_retry_after() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    fake.script([Scripted::status(429, "Too many requests").retry_after("1")]);
    let started = Instant::now();
    client(&fake)
        .report_k8s("prod", report_body())
        .await
        .expect("accepted after the retry");
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "waited only {gap:?} despite Retry-After: 1"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn retry_after_as_http_date_is_honoured() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2);
    let date = jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&soon)
        .unwrap();
    fake.script([Scripted::status(503, "maintenance").retry_after(&date)]);
    client(&fake)
        .report_k8s("prod", report_body())
        .await
        .expect("accepted after the retry");
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(900));
}

#[tokio::test]
async fn retry_after_beyond_the_limit_fails_now() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    fake.script([Scripted::status(429, "slow down").retry_after("3600")]);
    let err = client(&fake)
        .report_k8s("prod", report_body())
        .await
        .unwrap_err();
    assert_eq!(err.kosli_status(), Some(429));
    assert_eq!(kosli_answer(&err), (429, "slow down"));
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn retries_5xx_and_409_then_succeeds() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    fake.script([
        Scripted::status(500, "boom"),
        Scripted::page(502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
        Scripted::status(409, "locked"),
    ]);
    client(&fake)
        .report_k8s("prod", report_body())
        .await
        .expect("fourth attempt accepted");
    assert_eq!(fake.requests().len(), 4);
    assert_eq!(fake.reports("prod").len(), 1);
}

#[tokio::test]
async fn retries_stop_after_the_maximum_and_the_error_names_status_and_message() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    fake.script(std::iter::repeat_n(
        Scripted::page(503, "<html><body>upstream unavailable</body></html>"),
        10,
    ));
    let err = client(&fake)
        .report_k8s("prod", report_body())
        .await
        .unwrap_err();
    assert_eq!(fake.requests().len(), 4, "1 attempt + 3 retries");
    let text = err.to_string();
    assert!(
        text.starts_with(
            "Kosli PUT /api/v2/environments/acme/prod/report/K8S failed with HTTP 503"
        ),
        "{text}"
    );
    assert!(text.contains("upstream unavailable"), "{text}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn zero_retries_means_one_attempt() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    fake.script([Scripted::status(500, "boom")]);
    let mut cfg = config(&fake.url);
    cfg.retry.max_retries = 0;
    let err = KosliClient::new(&cfg)
        .unwrap()
        .report_k8s("prod", report_body())
        .await
        .unwrap_err();
    assert_eq!(kosli_answer(&err), (500, "boom"));
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn not_implemented_and_other_4xx_are_final() {
    for (status, msg) in [
        (501, "Not Implemented"),
        (403, "Denied"),
        (422, "unprocessable"),
    ] {
        let fake = FakeKosli::start().await;
        fake.add_environment("prod", "K8S");
        fake.script([Scripted::status(status, msg)]);
        let err = client(&fake)
            .report_k8s("prod", report_body())
            .await
            .unwrap_err();
        assert_eq!(err.kosli_status(), Some(status));
        assert!(err.to_string().contains(msg));
        assert_eq!(kosli_answer(&err), (status, msg));
        assert_eq!(
            fake.requests().len(),
            1,
            "HTTP {status} must not be retried"
        );
    }
}

#[tokio::test]
async fn bare_json_string_errors_are_kept() {
    let fake = FakeKosli::start().await;
    let mut denied = Scripted::status(403, "");
    denied.body = "\"Denied\"".into();
    fake.script([denied]);
    let err = client(&fake)
        .report_k8s("prod", report_body())
        .await
        .unwrap_err();
    assert!(
        err.to_string().ends_with("failed with HTTP 403: Denied"),
        "{err}"
    );
    assert_eq!(kosli_answer(&err), (403, "Denied"));
}

#[tokio::test]
async fn slow_answers_time_out_and_are_retried() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    fake.script([Scripted::slow(Duration::from_secs(3))]);
    let mut cfg = config(&fake.url);
    cfg.request_timeout = Duration::from_millis(300);
    KosliClient::new(&cfg)
        .unwrap()
        .report_k8s("prod", report_body())
        .await
        .expect("second attempt in time");
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn unreachable_kosli_is_a_transport_error_after_retries() {
    let url = support::closed_loopback_url();
    let err = KosliClient::new(&config(&url))
        .unwrap()
        .report_k8s("prod", report_body())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KosliTransport { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("Kosli PUT /api/v2/environments/acme/prod/report/K8S failed:"),
        "{err}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn report_to_a_missing_environment_is_404() {
    let fake = FakeKosli::start().await;
    let err = client(&fake)
        .report_k8s("nowhere", report_body())
        .await
        .unwrap_err();
    assert_eq!(err.kosli_status(), Some(404));
    assert!(err.to_string().contains("does not exist"));
    assert_eq!(
        kosli_answer(&err),
        (
            404,
            "Environment named 'nowhere' does not exist for organization 'acme'"
        )
    );
}

#[tokio::test]
async fn ensure_creates_only_on_a_genuine_404() {
    let fake = FakeKosli::start().await;
    let c = client(&fake);
    assert_eq!(
        c.ensure_environment("fresh", "made by a test")
            .await
            .unwrap(),
        EnsureOutcome::Created
    );
    let created = fake.state().environments["fresh"].clone();
    assert_eq!(
        (created.kind.as_str(), created.description.as_str()),
        ("K8S", "made by a test")
    );
    let put = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(put.path, "/api/v2/environments/acme");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&put.body).unwrap(),
        json!({"name": "fresh", "type": "K8S", "description": "made by a test"})
    );

    let before = fake.requests().len();
    assert!(matches!(
        c.ensure_environment("fresh", "other").await.unwrap(),
        EnsureOutcome::Existed(_)
    ));
    let after: Vec<_> = fake.requests()[before..]
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(after, ["GET"], "an existing environment is never PUT");
    assert_eq!(
        fake.state().environments["fresh"].description,
        "made by a test"
    );
}

#[tokio::test]
async fn ensure_refuses_other_types_and_logical() {
    let fake = FakeKosli::start().await;
    fake.add_environment("servers", "server");
    fake.add_environment("all-prod", "logical");
    let c = client(&fake);
    let err = c.ensure_environment("servers", "").await.unwrap_err();
    assert!(
        err.to_string().contains("exists with type \"server\""),
        "{err}"
    );
    assert!(
        matches!(&err, Error::EnvironmentType { name, found, .. }
            if name == "servers" && found == "server"),
        "{err:?}"
    );
    let err = c.ensure_environment("all-prod", "").await.unwrap_err();
    assert!(
        err.to_string().contains("exists with type \"logical\""),
        "{err}"
    );
    assert!(
        matches!(&err, Error::EnvironmentType { name, found, .. }
            if name == "all-prod" && found == "logical"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(fake.requests().iter().all(|r| r.method == "GET"));
}

#[tokio::test]
async fn ensure_does_not_create_when_the_get_fails() {
    let fake = FakeKosli::start().await;
    fake.script(std::iter::repeat_n(Scripted::status(500, "db down"), 4));
    let err = client(&fake).ensure_environment("x", "").await.unwrap_err();
    assert_eq!(kosli_answer(&err), (500, "db down"));
    assert!(
        err.is_transient(),
        "a 500 may pass: the next reconcile asks again"
    );
    assert!(fake.requests().iter().all(|r| r.method == "GET"));
    assert_eq!(
        fake.requests().len(),
        4,
        "1 attempt + 3 retries, then no PUT"
    );
}

#[tokio::test]
async fn assert_known_unknown_and_query() {
    let fake = FakeKosli::start().await;
    fake.state().asserts.insert(HEX.into(), json!({
        "compliant": false, "scope": "environment", "environment": "prod",
        "policy_evaluations": [{"policy_name": "prod-requirements", "status": "NON-COMPLIANT",
            "rule_evaluations": [{"rule": {"definition": {"name": "unit-tests", "type": "junit"}},
                "satisfied": false, "ignored": false, "resolutions": [{"type": "missing_attestation"}]}]}],
        "html_url": "https://app.kosli.com/acme/fingerprint/x"
    }));
    let c = client(&fake);
    let policies = vec!["prod-requirements".to_owned(), "sec baseline".to_owned()];
    match c
        .assert_artifact(HEX, Some("prod"), &policies)
        .await
        .unwrap()
    {
        AssertOutcome::Known(a) => {
            assert!(!a.compliant);
            assert_eq!(
                a.policy_evaluations[0].rule_evaluations[0].resolutions[0].kind,
                "missing_attestation"
            );
        }
        AssertOutcome::Unknown => panic!("known fingerprint reported unknown"),
    }
    let r = &fake.requests()[0];
    assert_eq!(r.path, format!("/api/v2/asserts/acme/fingerprint/{HEX}"));
    assert_eq!(
        r.query.as_deref(),
        Some("policy_name=prod-requirements&policy_name=sec+baseline"),
        "named policies replace the environment's: Kosli takes one or the other"
    );
    c.assert_artifact(HEX, Some("prod"), &[]).await.unwrap();
    assert_eq!(
        fake.requests()[1].query.as_deref(),
        Some("environment_name=prod")
    );
    // The fake refuses both at once, as `kosli assert artifact` never sends both.
    kosli_operator::tls::install_crypto_provider();
    let both = reqwest::Client::new()
        .get(format!(
            "{}/api/v2/asserts/{ORG}/fingerprint/{HEX}?environment_name=prod&policy_name=p",
            fake.url
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(both.status().as_u16(), 400);
    let other = "1".repeat(64);
    assert_eq!(
        c.assert_artifact(&other, None, &[]).await.unwrap(),
        AssertOutcome::Unknown
    );
    let asked = fake.requests().len();
    let err = c
        .assert_artifact("not-a-digest", None, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Image(ImageError::NotAFingerprint(given)) if given == "not-a-digest"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "\"not-a-digest\" is not a sha256 fingerprint (64 lowercase hex characters)"
    );
    assert_eq!(fake.requests().len(), asked, "refused before asking Kosli");
}

#[tokio::test]
async fn get_environment_reads_state_and_404_is_none() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    let c = client(&fake);
    let env = c.get_environment("prod").await.unwrap().unwrap();
    assert_eq!(
        (env.name.as_str(), env.kind.as_str(), env.state),
        ("prod", "K8S", None)
    );
    assert_eq!(c.get_environment("missing").await.unwrap(), None);
}

#[tokio::test]
async fn explicit_proxy_carries_every_request() {
    // The "proxy" is the fake itself: it answers absolute-form requests, which
    // only a client speaking through a proxy sends. Nothing listens on the host.
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    let nowhere = support::closed_loopback_url();
    let mut cfg = config(&nowhere);
    cfg.http_proxy = Some(fake.url.clone());
    KosliClient::new(&cfg)
        .unwrap()
        .report_k8s("prod", report_body())
        .await
        .expect("through the proxy");
    let r = &fake.requests()[0];
    assert_eq!(
        r.uri,
        format!("{nowhere}/api/v2/environments/acme/prod/report/K8S")
    );
}

struct TestCa {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

fn test_ca() -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let server_cert = params.signed_by(&server_key, &issuer).unwrap();
    TestCa {
        ca_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    }
}

#[tokio::test]
async fn tls_is_verified_and_an_extra_ca_bundle_is_trusted() {
    let ca = test_ca();
    let fake = FakeKosli::start_tls(&ca.server_cert_pem, &ca.server_key_pem).await;
    fake.add_environment("prod", "K8S");

    let err = client(&fake)
        .report_k8s("prod", report_body())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::KosliTransport {
                certificate: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_transient(), "a certificate failure is not retried");
    assert_eq!(fake.requests().len(), 0);

    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, &ca.ca_pem).unwrap();
    let mut cfg = config(&fake.url);
    cfg.ca_bundle = Some(bundle);
    KosliClient::new(&cfg)
        .unwrap()
        .report_k8s("prod", report_body())
        .await
        .expect("trusted through the bundle");
    assert_eq!(fake.reports("prod").len(), 1);
}

#[tokio::test]
async fn ca_bundle_problems_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("https://app.kosli.com");
    let missing = dir.path().join("missing.pem");
    cfg.ca_bundle = Some(missing.clone());
    let err = KosliClient::new(&cfg).unwrap_err();
    assert!(err.to_string().contains("missing.pem"));
    assert!(
        matches!(&err, Error::ReadFile { path, source, .. }
            if *path == missing && source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    cfg.ca_bundle = Some(empty.clone());
    let err = KosliClient::new(&cfg).unwrap_err();
    assert!(err.to_string().contains("holds no PEM certificate"));
    assert!(
        matches!(&err, Error::Config(message)
            if *message == format!("CA bundle {} holds no PEM certificate", empty.display())),
        "{err:?}"
    );
}

#[tokio::test]
async fn token_file_is_reread_when_it_changes() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "old-revoked-token\n").unwrap();
    let mut cfg = config(&fake.url);
    cfg.token = ApiToken::new("");
    cfg.token_file = Some(path.clone());
    let c = KosliClient::new(&cfg).unwrap();
    let err = c.report_k8s("prod", report_body()).await.unwrap_err();
    assert_eq!(err.kosli_status(), Some(401));
    assert_eq!(kosli_answer(&err), (401, "Invalid API token"));

    // A Secret rotation replaces the file; the next request uses the new token.
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    c.report_k8s("prod", report_body())
        .await
        .expect("the rotated token is used");
    assert_eq!(fake.reports("prod").len(), 1);

    // Mid-rotation the file may be briefly empty: the last good token stays.
    std::fs::write(&path, "").unwrap();
    c.report_k8s("prod", report_body())
        .await
        .expect("the last good token is kept");
    let err = KosliClient::new(&cfg).expect_err("an empty token file is refused at start");
    assert!(
        matches!(&err, Error::Config(message)
            if message.starts_with(&format!("token file {}: ", path.display()))
                && message.contains("a Kosli API token is required")),
        "{err:?}"
    );
}

/// A fence that holds until its token is cancelled.
struct TokenFence(CancellationToken);

impl WriteFence for TokenFence {
    fn may_start(&self) -> bool {
        !self.0.is_cancelled()
    }
    async fn revoked(&self) {
        self.0.cancelled().await
    }
    async fn closed(&self) {
        self.0.cancelled().await
    }
}

#[tokio::test]
async fn a_revoked_fence_abandons_the_report_in_flight_and_it_never_lands() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    fake.hold_reports_via("x", Duration::from_secs(2));
    let client = KosliClient::new(&config(&fake.url_via("x"))).unwrap();
    let fence = TokenFence(CancellationToken::new());
    let revoke = {
        let token = fence.0.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel();
        }
    };
    let start = Instant::now();
    let (result, ()) = tokio::join!(
        client.report_k8s_fenced("prod", report_body(), &fence),
        revoke
    );
    let took = start.elapsed();
    assert!(
        matches!(result, Err(Error::WriteFenced { .. })),
        "{result:?}"
    );
    assert!(
        took < Duration::from_secs(1),
        "abandoned only after {took:?}"
    );
    assert_eq!(fake.requests().len(), 1, "it had reached Kosli");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(fake.landed().is_empty(), "an abandoned report landed");
}

#[tokio::test]
async fn a_closed_fence_ends_the_backoff_and_no_retry_starts() {
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    fake.script([Scripted::status(503, "busy").retry_after("2")]);
    let fence = TokenFence(CancellationToken::new());
    let close = {
        let token = fence.0.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel();
        }
    };
    let client = client(&fake);
    let start = Instant::now();
    let (result, ()) = tokio::join!(
        client.report_k8s_fenced("prod", report_body(), &fence),
        close
    );
    assert_eq!(kosli_answer(&result.unwrap_err()).0, 503);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(fake.requests().len(), 1, "no retry after the fence closed");
    // A fence that does not hold lets nothing start at all.
    let err = client
        .report_k8s_fenced("prod", report_body(), &fence)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WriteFenced { .. }), "{err:?}");
    assert_eq!(fake.requests().len(), 1);
}
