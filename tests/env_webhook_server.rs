#![allow(clippy::unwrap_used)]
//! The webhook HTTPS server (`kosli_operator::gate::server::serve`) on its own and
//! called by the real kube-apiserver of the test environment: admission through
//! a toy handler, certificate rotation, hostile clients, and what the API server
//! does when the webhook is down under each failurePolicy.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kosli_operator::Error;
use kosli_operator::gate::server::{ReviewHandler, ReviewRejection, WebhookConfig, serve};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::fake_kosli::FakeKosli;
use support::operator::Operator;
use support::testenv::{TestEnv, api_error, create_namespace, unique};
use support::testenv::{apply_crd, var};
use support::webhook::{
    CleanupOnPanic, ClientIdentity, ServingCert, client_ca, delete_validating_webhook, exchange_as,
    forged_review, https_client, pod, presented_leaf, register_validating_webhook, serving_cert,
    tls_connect, wait_until_called, webhook_label,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DENIAL: &str = "objects labelled deny=yes are refused by the toy gate";

/// Denies objects labelled `deny=yes`, allows the rest; records what it saw.
#[derive(Clone, Default)]
struct ToyHandler {
    seen: Arc<Mutex<Vec<Value>>>,
}

impl ToyHandler {
    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// (operation, kind, name) of every non-probe request seen.
    fn requests(&self) -> Vec<(String, String, String)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r["object"]["metadata"]["labels"]["kosli-webhook-probe"] != "yes")
            .map(|r| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (s(&r["operation"]), s(&r["kind"]["kind"]), s(&r["name"]))
            })
            .collect()
    }
}

impl ReviewHandler for ToyHandler {
    fn review(&self, body: Bytes) -> BoxFuture<'static, Result<Vec<u8>, ReviewRejection>> {
        let seen = self.seen.clone();
        Box::pin(async move {
            let review: Value = serde_json::from_slice(&body).map_err(|e| {
                ReviewRejection::bad_request(format!("not an AdmissionReview: {e}"))
            })?;
            let request = review
                .get("request")
                .filter(|r| r["uid"].is_string())
                .ok_or_else(|| {
                    ReviewRejection::bad_request("an AdmissionReview without request.uid")
                })?
                .clone();
            let deny = request["object"]["metadata"]["labels"]["deny"] == "yes";
            let uid = request["uid"].clone();
            seen.lock().unwrap().push(request);
            let response = if deny {
                json!({"uid": uid, "allowed": false, "status": {"code": 403, "message": DENIAL}})
            } else {
                json!({"uid": uid, "allowed": true})
            };
            Ok(serde_json::to_vec(&json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": response,
            }))
            .unwrap())
        })
    }
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(cert: &ServingCert, handler: ToyHandler, request_timeout: Duration) -> Self {
        Self::start_with(cert, handler, |config| {
            config.request_timeout = request_timeout;
        })
        .await
    }

    /// A server with a 64 KiB body limit and whatever `configure` sets.
    async fn start_with(
        cert: &ServingCert,
        handler: ToyHandler,
        configure: impl FnOnce(&mut WebhookConfig),
    ) -> Self {
        let mut config = WebhookConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            cert.cert_file.clone(),
            cert.key_file.clone(),
        );
        config.max_body_bytes = 64 * 1024;
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let (addr, task) = serve(config, Arc::new(handler), shutdown.clone())
            .await
            .unwrap();
        Self {
            addr,
            shutdown,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Cancels and waits for the server task to end.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops within 10 s of its token")
            .unwrap();
    }
}

/// The API server calls the webhook for pods and workloads in a labelled
/// namespace, sees the denial (with its message), and admits the rest — which
/// also proves the response echoes the request uid, or it would be refused.
#[tokio::test]
async fn the_api_server_calls_the_webhook_and_shows_its_denial() {
    let env = TestEnv::get();
    let client = env.client().await;
    let cert = serving_cert();
    let handler = ToyHandler::default();
    let server = Server::start(&cert, handler.clone(), Duration::from_secs(10)).await;

    let ns = unique("webhook-deny");
    create_namespace(&client, &ns, &[(webhook_label(), &ns)]).await;
    let unwatched = unique("webhook-unwatched");
    create_namespace(&client, &unwatched, &[]).await;
    let name = unique("webhook-deny");
    let _cleanup = CleanupOnPanic::new(&env.kubeconfig, &name);
    register_validating_webhook(
        &client,
        &name,
        &server.url("/validate"),
        &cert.ca_pem,
        (webhook_label(), &ns),
        "Fail",
        5,
    )
    .await;
    wait_until_called(&client, &ns, || handler.calls()).await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // The API server passes on the code and message of the webhook's answer.
    let denied = format!("admission webhook \"{name}.kosli.com\" denied the request: {DENIAL}");
    let assert_denied = |(code, message): (u16, String)| {
        assert!(
            message.contains(DENIAL) && message.contains(&format!("{name}.kosli.com")),
            "{message}"
        );
        assert_eq!((code, message.as_str()), (403, denied.as_str()));
    };
    assert_denied(api_error(
        pods.create(&PostParams::default(), &pod("denied", &[("deny", "yes")]))
            .await,
    ));
    pods.create(&PostParams::default(), &pod("admitted", &[("app", "ok")]))
        .await
        .unwrap();
    // UPDATE is reviewed too.
    assert_denied(api_error(
        pods.patch(
            "admitted",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"deny": "yes"}}})),
        )
        .await,
    ));

    // Workloads with pod templates go through the same webhook.
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"deny": "yes"}},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]}
            }
        }
    }))
    .unwrap();
    assert_denied(api_error(
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &deployment)
            .await,
    ));
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "batch", "labels": {"deny": "yes"}},
        "spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "app", "image": "example.com/app:1"}]
        }}}
    }))
    .unwrap();
    assert_denied(api_error(
        Api::<Job>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &job)
            .await,
    ));

    // A namespace without the label is not the webhook's business.
    Api::<Pod>::namespaced(client.clone(), &unwatched)
        .create(&PostParams::default(), &pod("denied", &[("deny", "yes")]))
        .await
        .unwrap();

    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    let mut requests = handler.requests();
    // A refused UPDATE can be reviewed twice: the API server first tries it on
    // its cached copy of the pod and, when that fails, once more on a fresh read.
    requests.dedup();
    assert_eq!(
        requests,
        vec![
            s("CREATE", "Pod", "denied"),
            s("CREATE", "Pod", "admitted"),
            s("UPDATE", "Pod", "admitted"),
            s("CREATE", "Deployment", "web"),
            s("CREATE", "Job", "batch"),
        ]
    );

    delete_validating_webhook(&client, &name).await;
    server.stop().await;
}

/// Rotated files are served to new connections within seconds; a broken
/// certificate file keeps the last good pair; a new CA works once trusted.
#[tokio::test]
async fn rotated_certificates_are_served_and_broken_ones_ignored() {
    let mut cert = serving_cert();
    let server = Server::start(&cert, ToyHandler::default(), Duration::from_secs(10)).await;
    let first = cert.leaf_der();
    assert_eq!(
        presented_leaf(server.addr, &cert.ca_pem).await.unwrap(),
        first
    );
    healthz(&server, &cert.ca_pem).await;

    cert.rotate();
    let second = cert.leaf_der();
    assert_ne!(first, second);
    wait_for_leaf(server.addr, &cert.ca_pem, &second).await;
    healthz(&server, &cert.ca_pem).await;

    cert.write_garbage_cert();
    // Three reload periods: the garbage has been seen and refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        presented_leaf(server.addr, &cert.ca_pem).await.unwrap(),
        second
    );

    let old_ca = cert.ca_pem.clone();
    cert.rotate_ca();
    let third = cert.leaf_der();
    wait_for_leaf(server.addr, &cert.ca_pem, &third).await;
    healthz(&server, &cert.ca_pem).await;
    let err = presented_leaf(server.addr, &old_ca).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(err, "invalid peer certificate: UnknownIssuer");

    server.stop().await;
}

async fn healthz(server: &Server, ca_pem: &str) {
    let response = https_client(ca_pem)
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok\n");
}

async fn wait_for_leaf(addr: SocketAddr, ca_pem: &str, leaf: &[u8]) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if presented_leaf(addr, ca_pem).await.as_deref() == Ok(leaf) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the rotated certificate was not served within 10 s");
}

/// Writes `request` on a fresh TLS connection and reads until the server
/// closes it; returns what it answered and how long that took.
async fn raw_exchange(addr: SocketAddr, ca_pem: &str, request: &[u8]) -> (String, Duration) {
    let mut tls = tls_connect(addr, ca_pem).await.unwrap();
    let start = Instant::now();
    tls.write_all(request).await.unwrap();
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    // A reset instead of a clean close is still a close.
    let _ = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection");
    (
        String::from_utf8_lossy(&answer).into_owned(),
        start.elapsed(),
    )
}

/// Hostile and mistaken clients get the right status, slow ones are cut after
/// the request timeout, and none of it disturbs anyone else.
#[tokio::test]
async fn garbage_gets_client_errors_and_slow_clients_are_cut() {
    let cert = serving_cert();
    let timeout = Duration::from_secs(2);
    let server = Server::start(&cert, ToyHandler::default(), timeout).await;
    let http = https_client(&cert.ca_pem);
    let post = |content_type: &'static str, body: Vec<u8>| {
        http.post(server.url("/validate"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    // A well-formed review is answered with the uid echoed.
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "abc-123", "object": {"metadata": {"labels": {"deny": "yes"}}}}
    });
    let response = post("application/json; charset=utf-8", review.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let answer: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["response"]["uid"], "abc-123");
    assert_eq!(answer["response"]["allowed"], false);

    let response = post("application/json", b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("not an AdmissionReview")
    );
    let response = post("text/plain", review.to_string().into()).await.unwrap();
    assert_eq!(response.status(), 415);
    let response = post("application/json", vec![b' '; 64 * 1024 + 1])
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let response = http.get(server.url("/validate")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let response = http.get(server.url("/mutate")).send().await.unwrap();
    assert_eq!(response.status(), 404);

    // A chunked body (no Content-Length to refuse up front) over the limit.
    let mut chunked = b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\n\
        Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for _ in 0..5 {
        chunked.extend_from_slice(format!("{:x}\r\n", 16 * 1024).as_bytes());
        chunked.extend_from_slice(&[b' '; 16 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (answer, _) = raw_exchange(server.addr, &cert.ca_pem, &chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Only HTTP/1.1 is offered, even to a client that prefers h2.
    let connector = tokio_rustls::TlsConnector::from(Arc::new(support::webhook::client_tls(
        &cert.ca_pem,
        &[b"h2", b"http/1.1"],
    )));
    let tls = connector
        .connect(
            "127.0.0.1".try_into().unwrap(),
            tokio::net::TcpStream::connect(server.addr).await.unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(tls);

    // Slow clients, all at once: half a body, half the headers, a TCP
    // connection that never starts TLS, and plain HTTP on the TLS port.
    let half_body = raw_exchange(
        server.addr,
        &cert.ca_pem,
        b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"apiVersion\":",
    );
    let half_headers = raw_exchange(
        server.addr,
        &cert.ca_pem,
        b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty",
    );
    let silent = async {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let start = Instant::now();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut buf))
            .await
            .expect("a silent connection is closed");
        start.elapsed()
    };
    let plaintext = async {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut buf))
            .await
            .expect("a plaintext connection is closed");
        buf
    };
    // Meanwhile others are served at once.
    let others = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        for _ in 0..3 {
            let response = https_client(&cert.ca_pem)
                .get(server.url("/healthz"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        start.elapsed()
    };
    let ((body_answer, body_took), (_, headers_took), silent_took, plain, others_took) =
        tokio::join!(half_body, half_headers, silent, plaintext, others);
    assert!(body_answer.starts_with("HTTP/1.1 408"), "{body_answer}");
    for took in [body_took, headers_took, silent_took] {
        assert!(
            took >= timeout - Duration::from_millis(100) && took < timeout * 5,
            "cut after {took:?}, timeout {timeout:?}"
        );
    }
    assert!(!String::from_utf8_lossy(&plain).contains("200 OK"));
    assert!(others_took < timeout, "others waited {others_took:?}");

    // Still serving after all that.
    let response = http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

/// Start-up errors name what is wrong: a taken port, a missing or broken file.
#[tokio::test]
async fn start_up_errors_name_the_port_or_file() {
    let cert = serving_cert();
    let start = |addr: SocketAddr, cert_file, key_file| {
        serve(
            WebhookConfig::new(addr, cert_file, key_file),
            Arc::new(ToyHandler::default()),
            CancellationToken::new(),
        )
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = start(addr, cert.cert_file.clone(), cert.key_file.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(
        matches!(&err, Error::Io { what, .. }
            if *what == format!("listen on webhook address {addr}")),
        "{err:?}"
    );

    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let missing = cert.dir().join("missing.key");
    let err = start(any, cert.cert_file.clone(), missing.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
    assert!(
        matches!(&err, Error::WebhookCertificate { problem, source: Some(_) }
            if *problem == format!("failed to read webhook key file {}", missing.display())),
        "{err:?}"
    );

    cert.write_garbage_cert();
    let err = start(any, cert.cert_file.clone(), cert.key_file.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(cert.cert_file.to_str().unwrap()),
        "{err}"
    );
    assert!(
        matches!(&err, Error::WebhookCertificate { source: None, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "webhook TLS: no certificate in certificate file {}",
            cert.cert_file.display()
        ),
        "{err:?}"
    );
}

/// With the webhook down, failurePolicy Fail refuses every pod in its
/// namespaces (naming the webhook) while Ignore lets them through: why the
/// chart defaults to Ignore, or to Fail only with care (replicas, a PDB, the
/// operator's own namespace exempt).
#[tokio::test]
async fn a_stopped_webhook_blocks_pods_only_under_failure_policy_fail() {
    let env = TestEnv::get();
    let client = env.client().await;
    let cert = serving_cert();
    let handler = ToyHandler::default();
    let server = Server::start(&cert, handler.clone(), Duration::from_secs(10)).await;

    let mut names = Vec::new();
    let mut _cleanups = Vec::new();
    for policy in ["Fail", "Ignore"] {
        let ns = unique(&format!("webhook-{}", policy.to_lowercase()));
        create_namespace(&client, &ns, &[(webhook_label(), &ns)]).await;
        let name = unique(&format!("webhook-{}", policy.to_lowercase()));
        _cleanups.push(CleanupOnPanic::new(&env.kubeconfig, &name));
        register_validating_webhook(
            &client,
            &name,
            &server.url("/validate"),
            &cert.ca_pem,
            (webhook_label(), &ns),
            policy,
            2,
        )
        .await;
        wait_until_called(&client, &ns, || handler.calls()).await;
        names.push((ns, name));
    }
    server.stop().await;

    let (fail_ns, fail_name) = &names[0];
    let (code, message) = api_error(
        Api::<Pod>::namespaced(client.clone(), fail_ns)
            .create(&PostParams::default(), &pod("blocked", &[]))
            .await,
    );
    assert!(
        message.contains("failed calling webhook")
            && message.contains(&format!("{fail_name}.kosli.com")),
        "{message}"
    );
    assert_eq!(code, 500, "{message}");
    assert!(
        message.starts_with(&format!(
            "Internal error occurred: failed calling webhook \"{fail_name}.kosli.com\": "
        )),
        "{message}"
    );
    let (ignore_ns, _) = &names[1];
    Api::<Pod>::namespaced(client.clone(), ignore_ns)
        .create(&PostParams::default(), &pod("let-through", &[]))
        .await
        .unwrap();

    for (_, name) in &names {
        delete_validating_webhook(&client, name).await;
    }
}

/// Beyond `max_connections` the server stops accepting: a later client waits
/// (in the backlog, not refused) while the earlier ones idle, is served once
/// the request timeout has cut them, and the server stays healthy.
#[tokio::test]
async fn connections_beyond_the_cap_wait_until_served_ones_end() {
    let cert = serving_cert();
    let timeout = Duration::from_secs(2);
    let server = Server::start_with(&cert, ToyHandler::default(), |config| {
        config.request_timeout = timeout;
        config.max_connections = 4;
    })
    .await;
    // Four TCP connections that never start TLS take every slot.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let late = exchange_as(
        server.addr,
        &cert.ca_pem,
        None,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    let answer = late.await.unwrap();
    let waited = start.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    // Served only once the held connections were cut, about `timeout` after they came.
    assert!(
        waited >= timeout - Duration::from_millis(400) && waited < timeout * 3,
        "the fifth connection waited {waited:?}; request timeout {timeout:?}"
    );
    for mut tcp in held {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(1), tcp.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "a held connection is still open");
    }
    // Healthy, and serving at once again.
    let start = Instant::now();
    healthz(&server, &cert.ca_pem).await;
    assert!(start.elapsed() < Duration::from_secs(1));
    server.stop().await;
}

/// With a client CA, the handshake completes only for clients presenting a
/// certificate it issued: no certificate, or one from another CA, gets no
/// answer at all (not even an HTTP error), the right one is served.
#[tokio::test]
async fn with_a_client_ca_only_its_certificates_are_served() {
    let cert = serving_cert();
    let clients = client_ca();
    let strangers = client_ca();
    let handler = ToyHandler::default();
    let server = Server::start_with(&cert, handler.clone(), |config| {
        config.client_ca_file = Some(clients.ca_file.clone());
    })
    .await;
    let forged = forged_review();
    for (who, identity) in [
        ("no certificate", None),
        ("another CA's certificate", Some(&strangers.client)),
    ] {
        let result = exchange_as(server.addr, &cert.ca_pem, identity, &forged).await;
        match result {
            Err(e) => assert!(
                e.contains("CertificateRequired")
                    || e.contains("UnknownCA")
                    || e.contains("BadCertificate")
                    || e.contains("reset")
                    || e.contains("handshake"),
                "{who}: {e}"
            ),
            Ok(answer) => assert!(answer.is_empty(), "{who} was answered: {answer}"),
        }
    }
    assert_eq!(
        handler.calls(),
        0,
        "a review without the client certificate reached the handler"
    );
    let answer = exchange_as(server.addr, &cert.ca_pem, Some(&clients.client), &forged)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert_eq!(handler.calls(), 1);
    server.stop().await;

    // A client CA file that is not there fails start-up, naming it.
    let missing = cert.dir().join("no-such-ca.crt");
    let mut config = WebhookConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        cert.cert_file.clone(),
        cert.key_file.clone(),
    );
    config.client_ca_file = Some(missing.clone());
    let err = serve(
        config,
        Arc::new(ToyHandler::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::WebhookCertificate { problem, source: Some(_) }
            if *problem == format!("failed to read webhook client CA file {}", missing.display())),
        "{err:?}"
    );
}

/// `kosli-operator run` serving the gate on a fresh port with `extra` flags,
/// ready, and the fake Kosli it talks to.
async fn operator(env: &TestEnv, cert: &ServingCert, extra: &[&str]) -> (Operator, u16, FakeKosli) {
    let client = env.client().await;
    apply_crd(&client).await;
    let fake = FakeKosli::start().await;
    let port = support::free_port();
    let mut args = support::webhook::operator_args(cert, port);
    // `extra` is flag-value pairs; a flag already there gets the new value.
    for pair in extra.chunks(2) {
        match args.iter().position(|a| a == pair[0]) {
            Some(at) => args[at + 1] = pair[1].to_owned(),
            None => args.extend(pair.iter().map(|s| s.to_string())),
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = unique("edge");
    let mut op = Operator::start(
        &env.kubeconfig,
        &fake,
        &id,
        &format!("lease-{id}"),
        &args,
        &[],
    );
    op.wait_ready().await;
    (op, port, fake)
}

/// Reviews the operator answered, from its own metrics.
async fn reviews_answered(op: &Operator) -> u64 {
    op.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("kosli_operator_admission_review_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The webhook's outer request limit follows --webhook-timeout: a request
/// whose body stalls is answered 408 inside `timeoutSeconds - 1 s`, not after
/// a fixed 30 s the API server would never wait for.
#[tokio::test]
async fn the_operator_answers_a_stalled_request_inside_the_webhook_timeout() {
    let env = TestEnv::get();
    let cert = serving_cert();
    let (mut op, port, _fake) = operator(&env, &cert, &["--webhook-timeout", "3s"]).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (answer, took) = raw_exchange(
        addr,
        &cert.ca_pem,
        b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"apiVersion\":",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        took >= Duration::from_millis(1800)
            && took < Duration::from_secs(2) + Duration::from_millis(900),
        "answered after {took:?}; --webhook-timeout 3s must be answered within 2 s"
    );
    assert!(op.terminate().await.success(), "{}", op.log());
}

/// Against the real API server, whose admission configuration presents the
/// testenv's webhook client certificate: an operator given its CA with
/// --webhook-client-ca still gets and answers the API server's reviews,
/// while a forged review sent straight to the port without that certificate
/// gets no answer (the handshake is refused) and reaches no handler.
#[tokio::test]
async fn with_a_client_ca_the_operator_answers_the_api_server_and_no_forger() {
    let env = TestEnv::get();
    let client = env.client().await;
    let cert = serving_cert();
    let ca = var("TESTENV_WEBHOOK_CLIENT_CA");
    let (mut op, port, _fake) = operator(&env, &cert, &["--webhook-client-ca", &ca]).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let ns = unique("webhook-mtls");
    create_namespace(&client, &ns, &[(webhook_label(), &ns)]).await;
    let name = unique("webhook-mtls");
    let _cleanup = CleanupOnPanic::new(&env.kubeconfig, &name);
    register_validating_webhook(
        &client,
        &name,
        &format!("https://{addr}/validate"),
        &cert.ca_pem,
        (webhook_label(), &ns),
        "Fail",
        5,
    )
    .await;
    // Under Fail a refused handshake would refuse the pod; so every pod
    // admitted here was reviewed. Probe until the configuration is in effect.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let before = reviews_answered(&op).await;
    let mut admitted = 0;
    for attempt in 0..150 {
        let probe = pod(&format!("probe-{attempt}"), &[]);
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        pods.create(&dry_run, &probe).await.unwrap_or_else(|e| {
            panic!(
                "the API server could not get a review answered: {e}\n{}",
                op.log()
            )
        });
        admitted += 1;
        if reviews_answered(&op).await > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reviewed = reviews_answered(&op).await - before;
    assert!(
        reviewed >= 1,
        "the API server never called the webhook ({admitted} pods)"
    );
    pods.create(&PostParams::default(), &pod("admitted", &[]))
        .await
        .unwrap();
    assert_eq!(reviews_answered(&op).await - before, reviewed + 1);

    // A forger without the certificate: no answer at all, and nothing reviewed.
    let forged = forged_review();
    let result = exchange_as(addr, &cert.ca_pem, None, &forged).await;
    assert!(
        result.as_ref().is_err() || result.as_ref().is_ok_and(|a| a.is_empty()),
        "a review without a client certificate was answered: {result:?}"
    );
    let after_forgery = reviews_answered(&op).await;
    assert_eq!(
        after_forgery - before,
        reviewed + 1,
        "the forged review was reviewed"
    );
    // The same review with the API server's certificate is answered: it is the
    // certificate that makes the difference.
    let identity = ClientIdentity::from_files(
        Path::new(&var("TESTENV_WEBHOOK_CLIENT_CERT")),
        Path::new(&var("TESTENV_WEBHOOK_CLIENT_KEY")),
    );
    let answer = exchange_as(addr, &cert.ca_pem, Some(&identity), &forged)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");

    delete_validating_webhook(&client, &name).await;
    assert!(op.terminate().await.success(), "{}", op.log());
}
