//! What the gate fetches, against a registry (and a Kosli) that misbehave on
//! purpose: the pod's author picks the registry, so its answers are hostile.
//! A loopback stub answers whatever each test scripts: tokens that never
//! expire, bodies that never end, realms on other hosts, answers that hang.
//! Issue 11, findings 2, 3, 6, 7 and 11.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kosli_operator::Error;
use kosli_operator::core::fingerprint::ImageRef;
use kosli_operator::gate::decision::ImageVerdict;
use kosli_operator::gate::registry::{RegistryClient, RegistryConfig, RegistryCredentials};
use kosli_operator::gate::resolver::{Resolver, ResolverOptions};
use kosli_operator::kosli::{ApiToken, KosliClient, KosliConfig};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use support::fake_kosli::{FakeKosli, ORG, Scripted, TOKEN};
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, Infallible>;

/// A request as the stub saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    host: String,
    authorization: Option<String>,
}

type Handler = Arc<dyn Fn(Seen) -> BoxFuture<'static, Response<Body>> + Send + Sync>;

/// An HTTP/1 server on a loopback address answering with `handler`; it
/// records every request and the most it had in progress at once.
struct Stub {
    host: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    peak: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stub {
    async fn start<F>(ip: &str, handler: impl Fn(Seen) -> F + Send + Sync + 'static) -> Self
    where
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |seen| handler(seen).boxed());
        let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
            .await
            .unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let peak = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let (seen_, peak_) = (seen.clone(), peak.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (handler, seen, peak, active) = (
                    handler.clone(),
                    seen_.clone(),
                    peak_.clone(),
                    active.clone(),
                );
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let header = |name| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        let request = Seen {
                            method: req.method().to_string(),
                            path: req.uri().to_string(),
                            host: header("host").unwrap_or_default(),
                            authorization: header("authorization"),
                        };
                        seen.lock().unwrap().push(request.clone());
                        let (handler, peak, active) =
                            (handler.clone(), peak.clone(), active.clone());
                        async move {
                            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            let response = handler(request).await;
                            active.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            host: addr.to_string(),
            seen,
            peak,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, path_part: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.path.contains(path_part))
            .count()
    }
}

fn reply(status: u16, headers: &[(&str, String)], body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, value);
    }
    response.body(Full::new(body.into()).boxed()).unwrap()
}

/// A body of spaces (JSON whitespace) that goes on far past every cap: it
/// stops at 256 MiB only so that a client without a cap finishes the test.
struct Endless {
    sent: Arc<AtomicU64>,
}

const ENDLESS_STOP: u64 = 256 << 20;
static CHUNK: [u8; 64 * 1024] = [b' '; 64 * 1024];

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent.fetch_add(CHUNK.len() as u64, Ordering::SeqCst) >= ENDLESS_STOP {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
    }
}

fn endless(sent: &Arc<AtomicU64>) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Endless { sent: sent.clone() }.boxed())
        .unwrap()
}

/// What the stub's manifests hash to: a digest derived from the path.
fn digest_of(path: &str) -> String {
    hex::encode(Sha256::digest(path.as_bytes()))
}

fn manifest(seen: &Seen) -> Response<Body> {
    let digest = format!("sha256:{}", digest_of(&seen.path));
    reply(200, &[("docker-content-digest", digest)], "{}")
}

fn challenge(realm: &str) -> Response<Body> {
    let value = format!(r#"Bearer realm="{realm}",service="stub",scope="repository:app:pull""#);
    reply(401, &[("www-authenticate", value)], "")
}

/// A token answer minted for the Authorization it came with.
fn token(seen: &Seen, expires_in: serde_json::Value) -> Response<Body> {
    let auth = seen.authorization.clone().unwrap_or_default();
    let token = format!("tok-{}", &digest_of(&auth)[..16]);
    let body = json!({ "token": token, "expires_in": expires_in }).to_string();
    reply(
        200,
        &[("content-type", "application/json".to_owned())],
        body,
    )
}

fn has_token(seen: &Seen) -> bool {
    seen.authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Bearer tok-"))
}

fn registry_config() -> RegistryConfig {
    RegistryConfig {
        request_timeout: Duration::from_secs(5),
        ..RegistryConfig::default()
    }
}

fn client() -> RegistryClient {
    RegistryClient::new(&registry_config()).unwrap()
}

fn image(host: &str, tag: &str) -> ImageRef {
    ImageRef::parse(&format!("{host}/app:{tag}")).unwrap()
}

fn creds(user: &str, password: &str) -> RegistryCredentials {
    RegistryCredentials {
        username: user.into(),
        password: password.into(),
    }
}

fn resolver(kosli: Option<&FakeKosli>, options: ResolverOptions) -> Resolver {
    let kosli = kosli.map(|fake| {
        let mut config = KosliConfig::new(&fake.url, ORG, ApiToken::new(TOKEN));
        config.retry.max_retries = 0;
        config.request_timeout = Duration::from_secs(2);
        KosliClient::new(&config).unwrap()
    });
    Resolver::new(client(), kosli, options)
}

/// A registry with the Bearer flow on its own host whose tokens claim to live
/// `expires_in` seconds.
async fn bearer_registry(expires_in: serde_json::Value) -> Stub {
    Stub::start("127.0.0.1", move |seen: Seen| {
        let expires_in = expires_in.clone();
        async move {
            if seen.path.starts_with("/token") {
                token(&seen, expires_in)
            } else if has_token(&seen) {
                manifest(&seen)
            } else {
                challenge(&format!("http://{}/token", seen.host))
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_claims_to_live_forever_neither_panics_nor_is_kept_forever() {
    let stub = bearer_registry(json!(u64::MAX)).await;
    let c = client();
    let first = c.resolve(&image(&stub.host, "1"), None).await.unwrap();
    assert_eq!(first.hex, digest_of("/v2/app/manifests/1"));
    let second = c.resolve(&image(&stub.host, "2"), None).await.unwrap();
    assert_eq!(second.hex, digest_of("/v2/app/manifests/2"));
    assert_eq!(stub.count("/token"), 1, "the token was cached and reused");

    // Through the resolver too: the shared lookup ends cleanly, and the next works.
    let r = resolver(None, ResolverOptions::default());
    for tag in ["3", "4"] {
        let got = r
            .fingerprint(&format!("{}/app:{tag}", stub.host), None)
            .await;
        assert_eq!(got.unwrap(), digest_of(&format!("/v2/app/manifests/{tag}")));
        assert_eq!(r.lookups_in_flight(), (0, 0));
    }
}

/// A registry whose HEAD gives no digest and whose GET never ends.
async fn endless_manifest_registry(sent: Arc<AtomicU64>) -> Stub {
    Stub::start("127.0.0.1", move |seen: Seen| {
        let sent = sent.clone();
        async move {
            match seen.method.as_str() {
                "HEAD" => reply(405, &[], ""),
                _ => endless(&sent),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_that_never_ends_is_cut_at_4_mib() {
    let sent = Arc::new(AtomicU64::new(0));
    let stub = endless_manifest_registry(sent.clone()).await;
    let img = image(&stub.host, "1");
    let err = client().resolve(&img, None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("failed to resolve {img}: the manifest is larger than 4 MiB")
    );
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        sent < 64 << 20,
        "reading stopped at the cap: the stub produced {sent} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_declaring_more_than_the_cap_is_refused_before_reading() {
    let stub = Stub::start("127.0.0.1", |seen: Seen| async move {
        match seen.method.as_str() {
            "HEAD" => reply(405, &[], ""),
            _ => reply(200, &[], vec![b' '; (4 << 20) + 1]),
        }
    })
    .await;
    let img = image(&stub.host, "1");
    let err = client().resolve(&img, None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "failed to resolve {img}: the manifest is larger than 4 MiB (it declares {} bytes)",
            (4 << 20) + 1
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_answer_that_never_ends_is_cut_at_256_kib() {
    let sent = Arc::new(AtomicU64::new(0));
    let sent_ = sent.clone();
    let stub = Stub::start("127.0.0.1", move |seen: Seen| {
        let sent = sent_.clone();
        async move {
            if seen.path.starts_with("/token") {
                endless(&sent)
            } else {
                challenge(&format!("http://{}/token", seen.host))
            }
        }
    })
    .await;
    let img = image(&stub.host, "1");
    let err = client().resolve(&img, None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("failed to resolve {img}: the token response is larger than 256 KiB")
    );
    assert!(sent.load(Ordering::SeqCst) < 64 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kosli_answer_that_never_ends_is_cut_at_4_mib() {
    let sent = Arc::new(AtomicU64::new(0));
    let sent_ = sent.clone();
    let stub = Stub::start("127.0.0.1", move |_| {
        let sent = sent_.clone();
        async move { endless(&sent) }
    })
    .await;
    let mut config = KosliConfig::new(format!("http://{}", stub.host), ORG, ApiToken::new("t"));
    config.retry.max_retries = 0;
    config.request_timeout = Duration::from_secs(5);
    let kosli = KosliClient::new(&config).unwrap();
    let hex = "a".repeat(64);
    let err = kosli
        .assert_artifact(&hex, Some("prod"), &[])
        .await
        .unwrap_err();
    match &err {
        Error::KosliDecode { message, .. } => {
            assert_eq!(message, "Kosli's answer is larger than 4 MiB")
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert!(!err.is_transient(), "an answer that large is not retried");
    assert!(sent.load(Ordering::SeqCst) < 64 << 20);
    assert_eq!(stub.seen().len(), 1);
}

/// A registry whose 401 sends the token flow to `realm`.
async fn registry_with_realm(realm: String) -> Stub {
    Stub::start("127.0.0.1", move |seen: Seen| {
        let realm = realm.clone();
        async move {
            if has_token(&seen) {
                manifest(&seen)
            } else {
                challenge(&realm)
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_do_not_follow_a_realm_to_another_host() {
    let token_host = Stub::start(
        "127.0.0.2",
        |seen: Seen| async move { token(&seen, json!(60)) },
    )
    .await;
    let stub = registry_with_realm(format!("http://{}/token", token_host.host)).await;
    let img = image(&stub.host, "1");
    let err = client()
        .resolve(&img, Some(&creds("ci", "pull-s3cret")))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "failed to resolve {img}: the token realm http://{}/token is not on {}'s own \
             host; credentials are sent only to the registry (add the host to \
             --registry-token-hosts to trust it)",
            token_host.host, stub.host
        )
    );
    assert!(
        token_host.seen().is_empty(),
        "the token host saw no request"
    );

    // Trusted by name, the same realm is followed.
    let trusting = RegistryClient::new(&RegistryConfig {
        token_hosts: vec![token_host.host.clone()],
        ..registry_config()
    })
    .unwrap();
    let got = trusting
        .resolve(&img, Some(&creds("ci", "pull-s3cret")))
        .await
        .unwrap();
    assert_eq!(got.hex, digest_of("/v2/app/manifests/1"));
    assert_eq!(token_host.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_do_not_go_over_plain_http_to_a_host_off_loopback() {
    // Trusted by name, so that only the scheme is at fault; `.invalid` never
    // resolves, so any attempt to connect would fail differently.
    let stub = registry_with_realm("http://tokens.invalid/token".to_owned()).await;
    let client = RegistryClient::new(&RegistryConfig {
        token_hosts: vec!["tokens.invalid".to_owned()],
        ..registry_config()
    })
    .unwrap();
    let img = image(&stub.host, "1");
    let err = client
        .resolve(&img, Some(&creds("ci", "pull-s3cret")))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "failed to resolve {img}: the token realm http://tokens.invalid/token is not \
             HTTPS; credentials go over plain HTTP only to loopback"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_secrets_with_the_same_user_get_two_tokens_and_two_digests() {
    let stub = bearer_registry(json!(300)).await;
    let c = client();
    let img = image(&stub.host, "1");
    c.resolve(&img, Some(&creds("ci", "old"))).await.unwrap();
    c.resolve(&img, Some(&creds("ci", "new"))).await.unwrap();
    c.resolve(&img, Some(&creds("ci", "new"))).await.unwrap();
    let asked: Vec<_> = stub
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/token"))
        .map(|s| s.authorization)
        .collect();
    assert_eq!(asked.len(), 2, "one token per password, reused: {asked:?}");
    assert_ne!(asked[0], asked[1]);

    // The resolver's digest cache is keyed by the credentials too.
    let r = resolver(None, ResolverOptions::default());
    let name = format!("{}/app:2", stub.host);
    let before = stub.count("/manifests/2");
    r.fingerprint(&name, Some(creds("ci", "old")))
        .await
        .unwrap();
    r.fingerprint(&name, Some(creds("ci", "new")))
        .await
        .unwrap();
    r.fingerprint(&name, Some(creds("ci", "new")))
        .await
        .unwrap();
    let lookups = stub
        .seen()
        .iter()
        .filter(|s| s.path.contains("/manifests/2") && has_token(s))
        .count();
    assert!(stub.count("/manifests/2") > before);
    assert_eq!(
        lookups, 2,
        "one registry lookup per password, then the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_that_gives_up_leaves_no_lookup_behind() {
    let hang = Arc::new(AtomicBool::new(true));
    let hang_ = hang.clone();
    let stub = Stub::start("127.0.0.1", move |seen: Seen| {
        let hang = hang_.clone();
        async move {
            if hang.load(Ordering::SeqCst) {
                futures::future::pending::<()>().await;
            }
            manifest(&seen)
        }
    })
    .await;
    let r = resolver(None, ResolverOptions::default());
    let name = format!("{}/app:1", stub.host);
    let cut = tokio::time::timeout(Duration::from_millis(200), r.fingerprint(&name, None)).await;
    assert!(cut.is_err(), "the review's deadline cut the lookup");
    assert_eq!(r.lookups_in_flight(), (0, 0), "no entry is left behind");

    hang.store(false, Ordering::SeqCst);
    let next = tokio::time::timeout(Duration::from_secs(3), r.fingerprint(&name, None))
        .await
        .expect("the next review starts a fresh lookup, not the abandoned one")
        .unwrap();
    assert_eq!(next, digest_of("/v2/app/manifests/1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_in_flight_are_capped_across_reviews() {
    let stub = Stub::start("127.0.0.1", |seen: Seen| async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        manifest(&seen)
    })
    .await;
    let options = ResolverOptions {
        max_lookups: 2,
        ..ResolverOptions::default()
    };
    let r = Arc::new(resolver(None, options));
    let lookups = (0..6).map(|i| {
        let (r, name) = (r.clone(), format!("{}/app:{i}", stub.host));
        tokio::spawn(async move { r.fingerprint(&name, None).await })
    });
    for (i, got) in futures::future::join_all(lookups)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            got.unwrap().unwrap(),
            digest_of(&format!("/v2/app/manifests/{i}"))
        );
    }
    assert_eq!(
        stub.peak.load(Ordering::SeqCst),
        2,
        "never more than two at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_digest_older_than_its_limit_is_not_used() {
    let failing = Arc::new(AtomicBool::new(false));
    let failing_ = failing.clone();
    let stub = Stub::start("127.0.0.1", move |seen: Seen| {
        let failing = failing_.clone();
        async move {
            if failing.load(Ordering::SeqCst) {
                reply(500, &[], "down")
            } else {
                manifest(&seen)
            }
        }
    })
    .await;
    let options = ResolverOptions {
        tag_ttl: Duration::ZERO,
        stale_digest: Duration::from_millis(300),
        ..ResolverOptions::default()
    };
    let r = resolver(None, options);
    let name = format!("{}/app:1", stub.host);
    let digest = digest_of("/v2/app/manifests/1");
    assert_eq!(r.fingerprint(&name, None).await.unwrap(), digest);
    failing.store(true, Ordering::SeqCst);
    assert_eq!(
        r.fingerprint(&name, None).await.unwrap(),
        digest,
        "a recent digest stands in for a failing registry"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let err = r.fingerprint(&name, None).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!("failed to resolve {name}: registry answered HTTP 500 for the manifest")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_hold_at_most_their_bound() {
    let stub = Stub::start("127.0.0.1", |seen: Seen| async move { manifest(&seen) }).await;
    let fake = FakeKosli::start().await;
    let options = ResolverOptions {
        cache_entries: 3,
        ..ResolverOptions::default()
    };
    let r = resolver(Some(&fake), options);
    for i in 0..5 {
        let digest = r
            .fingerprint(&format!("{}/app:{i}", stub.host), None)
            .await
            .unwrap();
        fake.state()
            .asserts
            .insert(digest.clone(), json!({"compliant": true}));
        assert_eq!(
            r.verdict(&digest, "prod", &[]).await,
            ImageVerdict::Compliant { digest }
        );
    }
    assert_eq!(r.cache_sizes(), (3, 3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_lookup_counts_once_in_the_breaker_however_many_reviews_wait() {
    let fake = FakeKosli::start().await;
    fake.script([Scripted {
        delay: Duration::from_millis(300),
        ..Scripted::status(429, "slow down")
    }]);
    let options = ResolverOptions {
        breaker_threshold: 3,
        ..ResolverOptions::default()
    };
    let r = Arc::new(resolver(Some(&fake), options));
    let big = "b".repeat(64);
    let waiting = (0..10).map(|_| {
        let (r, big) = (r.clone(), big.clone());
        tokio::spawn(async move { r.verdict(&big, "prod", &[]).await })
    });
    for verdict in futures::future::join_all(waiting).await {
        assert!(matches!(
            verdict.unwrap(),
            ImageVerdict::KosliUnreachable { .. }
        ));
    }
    let asked = || {
        fake.requests()
            .iter()
            .filter(|q| q.path.contains("/asserts/"))
            .count()
    };
    assert_eq!(asked(), 1, "ten reviews, one lookup");
    let other = "c".repeat(64);
    assert_eq!(
        r.verdict(&other, "prod", &[]).await,
        ImageVerdict::Unknown { digest: other },
        "one failure does not open the circuit"
    );
    assert_eq!(asked(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kosli_refusing_the_token_says_so_and_is_not_an_outage() {
    let fake = FakeKosli::start().await;
    fake.script(std::iter::repeat_n(Scripted::status(401, "bad token"), 5));
    let options = ResolverOptions {
        breaker_threshold: 2,
        ..ResolverOptions::default()
    };
    let r = resolver(Some(&fake), options);
    for c in ['1', '2', '3', '4', '5'] {
        let digest = c.to_string().repeat(64);
        assert_eq!(
            r.verdict(&digest, "prod", &[]).await,
            ImageVerdict::KosliUnreachable {
                digest,
                why: "Kosli refused the operator's API token (HTTP 401)".to_owned()
            }
        );
    }
    assert_eq!(
        fake.requests().len(),
        5,
        "the circuit never opened: each lookup asked Kosli"
    );
}
