//! A loopback Kosli that enforces the API contract as strictly as the real one
//! (docs/kosli-api.md): bearer auth, JSON content type, request models that reject
//! unknown fields, wrong types and malformed digests with a 400 in Kosli's error
//! shape; a body without a Content-Length is refused (411), and so is an assert
//! naming both an environment and policies (400). It records every
//! request and misbehaves on demand: scripted statuses
//! (404, 409, 429 with Retry-After, 5xx, non-JSON pages) and slow answers.
//!
//! Several clients can be told apart by a first path segment before `/api`
//! (`KOSLI_HOST=http://127.0.0.1:PORT/a`): it is recorded as `via`, and reports
//! arriving via one of them can be held back on demand. A held request whose
//! client hangs up is dropped unanswered and never stored (hyper drops the
//! handler when the connection closes), as a request that never fully reached
//! Kosli would be.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const ORG: &str = "acme";
pub const TOKEN: &str = "fake-kosli-token-5f2a9c";

/// A request as it arrived.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The request target as sent: a path, or an absolute URI through a proxy.
    pub uri: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// Shared, not copied: a report body can be tens of megabytes.
    pub body: Bytes,
    /// When its head arrived (`at`: when its body had).
    pub began: Instant,
    pub at: Instant,
    /// The first path segment before `/api`, if any: which client sent it.
    pub via: Option<String>,
}

/// A report Kosli stored: when its request arrived and when it was stored.
#[derive(Clone, Debug)]
pub struct Landed {
    pub env: String,
    pub via: Option<String>,
    pub started: Instant,
    pub landed: Instant,
    pub landed_wall: std::time::SystemTime,
}

/// An answer given instead of the normal one to the next request.
#[derive(Clone, Debug)]
pub struct Scripted {
    /// `None`: answer normally, only later.
    pub status: Option<u16>,
    pub body: String,
    pub content_type: &'static str,
    pub retry_after: Option<String>,
    pub delay: Duration,
}

impl Scripted {
    /// A JSON error in Kosli's shape.
    pub fn status(status: u16, message: &str) -> Self {
        Self {
            status: Some(status),
            body: json!({ "message": message }).to_string(),
            content_type: "application/json",
            retry_after: None,
            delay: Duration::ZERO,
        }
    }

    /// A non-JSON page, as a proxy or load balancer sends.
    pub fn page(status: u16, html: &str) -> Self {
        Self {
            status: Some(status),
            body: html.to_owned(),
            content_type: "text/html",
            retry_after: None,
            delay: Duration::ZERO,
        }
    }

    /// The normal answer, after a delay.
    pub fn slow(delay: Duration) -> Self {
        Self {
            status: None,
            body: String::new(),
            content_type: "application/json",
            retry_after: None,
            delay,
        }
    }

    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.to_owned());
        self
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FakeEnvironment {
    pub kind: String,
    pub description: String,
    pub last_reported_at: Option<f64>,
    pub state: Option<bool>,
}

#[derive(Default)]
pub struct State {
    pub environments: BTreeMap<String, FakeEnvironment>,
    pub requests: Vec<Recorded>,
    /// Accepted report bodies, per environment, in arrival order.
    pub reports: BTreeMap<String, Vec<Value>>,
    pub script: VecDeque<Scripted>,
    /// Answers for requests about one environment only, before `script`.
    pub env_script: BTreeMap<String, VecDeque<Scripted>>,
    /// Assert answers by fingerprint; unknown fingerprints get 404.
    pub asserts: BTreeMap<String, Value>,
    /// Reports arriving via these prefixes are held this long before being handled.
    pub hold_reports_via: BTreeMap<String, Duration>,
    /// Every stored report, in the order stored.
    pub landed: Vec<Landed>,
    /// The one token accepted, once rotated away from `TOKEN`.
    pub token: Option<String>,
}

pub struct FakeKosli {
    pub url: String,
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for FakeKosli {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Acceptor = Option<tokio_rustls::TlsAcceptor>;

impl FakeKosli {
    /// Plain HTTP on 127.0.0.1, an ephemeral port.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// KOSLI_HOST (first), KOSLI_ORG and KOSLI_API_TOKEN: what points the
    /// binary at this fake.
    pub fn cli_env(&self) -> Vec<(String, String)> {
        vec![
            ("KOSLI_HOST".into(), self.url.clone()),
            ("KOSLI_ORG".into(), ORG.into()),
            ("KOSLI_API_TOKEN".into(), TOKEN.into()),
        ]
    }

    /// HTTPS on 127.0.0.1 with the given server certificate chain and key (PEM).
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        kosli_operator::tls::install_crypto_provider();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("test cert parses");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("test key parses");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("test TLS config");
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(acceptor: Acceptor) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let builder = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            url,
            addr,
            state,
            task,
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fake Kosli state")
    }

    pub fn add_environment(&self, name: &str, kind: &str) {
        self.state().environments.insert(
            name.to_owned(),
            FakeEnvironment {
                kind: kind.to_owned(),
                description: String::new(),
                last_reported_at: None,
                state: None,
            },
        );
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.state().script.extend(answers);
    }

    /// Scripts the answers to requests about environment `env` only.
    pub fn script_for(&self, env: &str, answers: impl IntoIterator<Item = Scripted>) {
        self.state()
            .env_script
            .entry(env.to_owned())
            .or_default()
            .extend(answers);
    }

    /// Rotates the API token: from now on only `token` is accepted.
    pub fn set_token(&self, token: &str) {
        self.state().token = Some(token.to_owned());
    }

    pub fn set_compliance(&self, env: &str, state: Option<bool>) {
        if let Some(e) = self.state().environments.get_mut(env) {
            e.state = state;
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    pub fn reports(&self, env: &str) -> Vec<Value> {
        self.state().reports.get(env).cloned().unwrap_or_default()
    }

    /// The URL a client should use so that its requests are recorded `via`.
    pub fn url_via(&self, via: &str) -> String {
        format!("{}/{via}", self.url)
    }

    /// Holds every report arriving via `via` for `delay` before handling it
    /// (`Duration::ZERO`: no longer).
    pub fn hold_reports_via(&self, via: &str, delay: Duration) {
        self.state().hold_reports_via.insert(via.to_owned(), delay);
    }

    pub fn landed(&self) -> Vec<Landed> {
        self.state().landed.clone()
    }
}

fn respond(status: u16, body: String, content_type: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).expect("valid status");
    if let Ok(v) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

fn json_response(status: u16, body: Value) -> Response<Full<Bytes>> {
    respond(status, body.to_string(), "application/json")
}

fn message(status: u16, text: &str) -> Response<Full<Bytes>> {
    json_response(status, json!({ "message": text }))
}

fn validation_failed(errors: BTreeMap<String, String>) -> Response<Full<Bytes>> {
    json_response(
        400,
        json!({ "message": "Input payload validation failed", "errors": errors }),
    )
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let began = Instant::now();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let full_path = parts.uri.path();
    let (via, path) = match full_path.trim_start_matches('/').split_once('/') {
        Some((first, rest)) if first != "api" && rest.starts_with("api/") => {
            (Some(first.to_owned()), format!("/{rest}"))
        }
        _ => (None, full_path.to_owned()),
    };
    let recorded = Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        path,
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body,
        began,
        at: Instant::now(),
        via,
    };
    let (scripted, hold) = {
        let mut state = state.lock().expect("state");
        state.requests.push(recorded.clone());
        let segments: Vec<&str> = recorded.path.trim_start_matches('/').split('/').collect();
        let env = match segments.as_slice() {
            ["api", "v2", "environments", _, env, ..] => Some((*env).to_owned()),
            _ => None,
        };
        let is_report = recorded.method == "PUT"
            && matches!(
                segments.as_slice(),
                ["api", "v2", "environments", _, _, "report", _]
            );
        let hold = recorded
            .via
            .as_ref()
            .filter(|_| is_report)
            .and_then(|via| state.hold_reports_via.get(via).copied());
        let scripted = env
            .and_then(|env| state.env_script.get_mut(&env)?.pop_front())
            .or_else(|| state.script.pop_front());
        (scripted, hold)
    };
    if let Some(hold) = hold {
        tokio::time::sleep(hold).await;
    }
    if let Some(s) = scripted {
        tokio::time::sleep(s.delay).await;
        if let Some(status) = s.status {
            let mut response = respond(status, s.body, s.content_type);
            if let Some(retry_after) = s.retry_after.and_then(|r| r.parse().ok()) {
                response
                    .headers_mut()
                    .insert(hyper::header::RETRY_AFTER, retry_after);
            }
            return Ok(response);
        }
    }
    // Parsing a report of tens of megabytes takes a while: off the runtime's
    // workers, so that other connections (the next upload) keep moving.
    Ok(
        tokio::task::spawn_blocking(move || route(&state, &recorded))
            .await
            .expect("the fake Kosli's route panicked"),
    )
}

fn route(state: &Arc<Mutex<State>>, req: &Recorded) -> Response<Full<Bytes>> {
    let auth = req
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    // A report is parsed and validated before the state is locked: what other
    // requests and the tests read does not wait for it.
    let report = (req.method == "PUT"
        && matches!(
            segments.as_slice(),
            ["api", "v2", "environments", _, _, "report", "K8S"]
        ))
    .then(|| {
        json_body(req).and_then(|body| match validate_k8s_report(&body) {
            Ok(()) => Ok(body),
            Err(errors) => Err(Box::new(validation_failed(errors))),
        })
    });
    let mut state = state.lock().expect("state");
    let accepted = state.token.as_deref().unwrap_or(TOKEN);
    if auth != Some(&format!("Bearer {accepted}")) {
        return message(401, "Invalid API token");
    }
    // As the Kosli CLI does, every body declares its length up front: a
    // chunked one is refused, as proxies in front of APIs often refuse it.
    let declared = req
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if matches!(req.method.as_str(), "PUT" | "POST") && declared != Some(req.body.len()) {
        return message(411, "A request body must declare its Content-Length");
    }
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["api", "v2", "environments", org, env]) if *org == ORG => {
            match state.environments.get(*env) {
                Some(e) => json_response(
                    200,
                    json!({
                        "name": env, "type": e.kind, "description": e.description,
                        "last_modified_at": 1795166047.5, "last_reported_at": e.last_reported_at,
                        "last_changed_at": null, "state": e.state, "tags": {}, "policies": [],
                        "html_url": format!("https://app.kosli.com/{ORG}/environments/{env}"),
                    }),
                ),
                None => message(
                    404,
                    &format!("Environment named '{env}' does not exist for organization '{ORG}'"),
                ),
            }
        }
        ("PUT", ["api", "v2", "environments", org]) if *org == ORG => {
            let body = match json_body(req) {
                Ok(v) => v,
                Err(r) => return *r,
            };
            if let Err(errors) = validate_create(&body) {
                return validation_failed(errors);
            }
            let name = body["name"].as_str().unwrap_or_default().to_owned();
            state.environments.insert(
                name,
                FakeEnvironment {
                    kind: body["type"].as_str().unwrap_or_default().to_owned(),
                    description: body["description"].as_str().unwrap_or_default().to_owned(),
                    last_reported_at: None,
                    state: None,
                },
            );
            json_response(201, json!("OK"))
        }
        ("PUT", ["api", "v2", "environments", org, env, "report", "K8S"]) if *org == ORG => {
            let body = match report {
                Some(Ok(v)) => v,
                Some(Err(r)) => return *r,
                None => unreachable!("a report is parsed above"),
            };
            match state.environments.get_mut(*env) {
                None => message(
                    404,
                    &format!("Environment named '{env}' does not exist for organization '{ORG}'"),
                ),
                Some(e) if e.kind != "K8S" => message(
                    400,
                    &format!(
                        "Environment '{env}' is of type {} and cannot take a K8S report",
                        e.kind
                    ),
                ),
                Some(e) => {
                    e.last_reported_at = Some(1795166047.0);
                    state
                        .reports
                        .entry((*env).to_owned())
                        .or_default()
                        .push(body);
                    state.landed.push(Landed {
                        env: (*env).to_owned(),
                        via: req.via.clone(),
                        started: req.at,
                        landed: Instant::now(),
                        landed_wall: std::time::SystemTime::now(),
                    });
                    json_response(201, json!("OK"))
                }
            }
        }
        ("GET", ["api", "v2", "asserts", org, "fingerprint", fingerprint]) if *org == ORG => {
            if !is_hex64(fingerprint) {
                return message(400, "Invalid fingerprint");
            }
            // One scope per assert, as `kosli assert artifact` sends it: the
            // environment's policies or the named ones, never both.
            let query = req.query.as_deref().unwrap_or_default();
            let has = |key: &str| {
                query
                    .split('&')
                    .any(|pair| pair.split('=').next() == Some(key))
            };
            if has("environment_name") && has("policy_name") {
                return message(
                    400,
                    "environment_name and policy_name are mutually exclusive",
                );
            }
            match state.asserts.get(*fingerprint) {
                Some(answer) => json_response(200, answer.clone()),
                None => message(
                    404,
                    &format!(
                        "Artifact with fingerprint '{fingerprint}' does not exist in organization '{ORG}'"
                    ),
                ),
            }
        }
        (_, ["api", "v2", ..]) => message(404, "Not Found"),
        _ => respond(
            404,
            "<html><body>Not Found</body></html>".to_owned(),
            "text/html",
        ),
    }
}

fn json_body(req: &Recorded) -> Result<Value, Box<Response<Full<Bytes>>>> {
    let content_type = req
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if content_type != Some("application/json") {
        return Err(Box::new(message(
            415,
            "Content-Type must be application/json",
        )));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| Box::new(message(400, &format!("Malformed JSON: {e}"))))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn unexpected(
    errors: &mut BTreeMap<String, String>,
    at: &str,
    obj: &serde_json::Map<String, Value>,
    allowed: &[&str],
) {
    for key in obj.keys().filter(|k| !allowed.contains(&k.as_str())) {
        errors.insert(
            at.to_owned(),
            format!("Additional properties are not allowed ('{key}' was unexpected)"),
        );
    }
}

fn require<'a>(
    errors: &mut BTreeMap<String, String>,
    at: &str,
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
) -> Option<&'a Value> {
    let value = obj.get(key);
    if value.is_none() {
        errors.insert(at.to_owned(), format!("'{key}' is a required property"));
    }
    value
}

/// The K8S report model: `{"artifacts": [{podName, namespace, digests, creationTimestamp, owners}]}`.
pub fn validate_k8s_report(body: &Value) -> Result<(), BTreeMap<String, String>> {
    let mut errors = BTreeMap::new();
    let Some(top) = body.as_object() else {
        errors.insert("$".into(), "is not of type 'object'".into());
        return Err(errors);
    };
    unexpected(&mut errors, "$", top, &["artifacts"]);
    match require(&mut errors, "$", top, "artifacts") {
        Some(Value::Array(artifacts)) => {
            for (i, artifact) in artifacts.iter().enumerate() {
                validate_artifact(&mut errors, &format!("artifacts[{i}]"), artifact);
            }
        }
        Some(_) => {
            errors.insert("artifacts".into(), "is not of type 'array'".into());
        }
        None => {}
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn validate_artifact(errors: &mut BTreeMap<String, String>, at: &str, artifact: &Value) {
    let Some(obj) = artifact.as_object() else {
        errors.insert(at.to_owned(), "is not of type 'object'".into());
        return;
    };
    unexpected(
        errors,
        at,
        obj,
        &[
            "podName",
            "namespace",
            "digests",
            "creationTimestamp",
            "owners",
        ],
    );
    for key in ["podName", "namespace"] {
        if let Some(v) = require(errors, at, obj, key)
            && !v.is_string()
        {
            errors.insert(format!("{at}.{key}"), "is not of type 'string'".into());
        }
    }
    if let Some(v) = require(errors, at, obj, "creationTimestamp")
        && !(v.is_i64() || v.is_u64())
    {
        errors.insert(
            format!("{at}.creationTimestamp"),
            "is not of type 'integer'".into(),
        );
    }
    match require(errors, at, obj, "digests") {
        Some(Value::Object(digests)) => {
            for (name, digest) in digests {
                if !digest.as_str().is_some_and(is_hex64) {
                    errors.insert(
                        format!("{at}.digests.{name}"),
                        format!("{digest} does not match '^[a-f0-9]{{64}}$'"),
                    );
                }
            }
        }
        Some(_) => {
            errors.insert(format!("{at}.digests"), "is not of type 'object'".into());
        }
        None => {}
    }
    match require(errors, at, obj, "owners") {
        Some(Value::Null) | None => {}
        Some(Value::Array(owners)) => {
            for (j, owner) in owners.iter().enumerate() {
                let at = format!("{at}.owners[{j}]");
                let Some(o) = owner.as_object() else {
                    errors.insert(at, "is not of type 'object'".into());
                    continue;
                };
                unexpected(
                    errors,
                    &at,
                    o,
                    &[
                        "apiVersion",
                        "kind",
                        "name",
                        "uid",
                        "controller",
                        "blockOwnerDeletion",
                    ],
                );
                for key in ["apiVersion", "kind", "name", "uid"] {
                    if !require(errors, &at, o, key).is_some_and(Value::is_string) {
                        errors.insert(format!("{at}.{key}"), "is not of type 'string'".into());
                    }
                }
                for key in ["controller", "blockOwnerDeletion"] {
                    if o.get(key).is_some_and(|v| !v.is_boolean()) {
                        errors.insert(format!("{at}.{key}"), "is not of type 'boolean'".into());
                    }
                }
            }
        }
        Some(_) => {
            errors.insert(
                format!("{at}.owners"),
                "is not of type 'array', 'null'".into(),
            );
        }
    }
}

/// The create-environment model: `{"name", "type", "description"}`.
pub fn validate_create(body: &Value) -> Result<(), BTreeMap<String, String>> {
    let mut errors = BTreeMap::new();
    let Some(obj) = body.as_object() else {
        errors.insert("$".into(), "is not of type 'object'".into());
        return Err(errors);
    };
    unexpected(&mut errors, "$", obj, &["name", "type", "description"]);
    match require(&mut errors, "$", obj, "name").and_then(Value::as_str) {
        Some(name) if kosli_operator::core::crd::validate_environment_name(name).is_ok() => {}
        _ => {
            errors.insert(
                "name".into(),
                "does not match '^[a-zA-Z0-9][a-zA-Z0-9\\.\\-_]*$'".into(),
            );
        }
    }
    const TYPES: [&str; 9] = [
        "K8S",
        "ECS",
        "S3",
        "lambda",
        "server",
        "docker",
        "azure-apps",
        "cloud-run",
        "logical",
    ];
    if !require(&mut errors, "$", obj, "type")
        .and_then(Value::as_str)
        .is_some_and(|t| TYPES.contains(&t))
    {
        errors.insert("type".into(), format!("is not one of {TYPES:?}"));
    }
    if obj.get("description").is_some_and(|d| !d.is_string()) {
        errors.insert("description".into(), "is not of type 'string'".into());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
