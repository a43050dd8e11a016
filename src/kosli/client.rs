//! HTTP to Kosli: bearer auth, our own User-Agent, timeouts, proxies, extra CAs,
//! and the retries of docs/kosli-api.md. Errors keep Kosli's status and message; the
//! token never leaves the Authorization header.

use bytes::Bytes;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::body::RequestBody;
use super::retry::{self, RetryPolicy};
use super::types::{AssertOutcome, AssertResponse, CreateEnvironment, Environment};
use crate::error::{Error, ImageError, Result, chain};
use crate::http_body::{MIB, read_capped};

/// The most of one Kosli answer we read. Kosli's answers are small JSON
/// documents (an assert, an environment); 4 MiB is far above any of them and
/// keeps a broken proxy's endless page from exhausting memory.
pub const ANSWER_LIMIT: u64 = 4 * MIB;

/// The User-Agent every request carries.
pub const USER_AGENT: &str = concat!("kosli-operator/", env!("CARGO_PKG_VERSION"));

/// A Kosli API token. Its `Debug` is redacted so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().trim().to_owned())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// Sees every Kosli request: metrics hang here.
pub trait RequestObserver: Send + Sync {
    /// One attempt ended: with an HTTP status, or `None` for a transport error.
    fn attempt(&self, operation: &'static str, status: Option<u16>, elapsed: Duration);
    /// An attempt is about to be retried after `status` (`None`: transport error).
    fn retry(&self, operation: &'static str, status: Option<u16>);
}

/// Whether this process may still write to Kosli. A write checks
/// [`may_start`](WriteFence::may_start) right before each attempt and each
/// retry, abandons an attempt in flight once [`revoked`](WriteFence::revoked)
/// resolves, and ends a backoff once [`closed`](WriteFence::closed) does. The
/// reporter's fence is its leadership (and its shutdown): see `k8s::leader`
/// for why abandoning at the end of the lease's validity keeps a deposed
/// leader's writes from landing after its successor's.
pub trait WriteFence: Sync {
    /// Whether a new attempt may start now.
    fn may_start(&self) -> bool;
    /// Resolves once an attempt in flight must be abandoned (at once if it
    /// must be now).
    fn revoked(&self) -> impl Future<Output = ()> + Send;
    /// Resolves once no new attempt may start: revoked, or shutting down.
    fn closed(&self) -> impl Future<Output = ()> + Send;
}

/// No fence: one-shot commands (`snapshot`) and reads.
pub struct Unfenced;

impl WriteFence for Unfenced {
    fn may_start(&self) -> bool {
        true
    }
    fn revoked(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
    fn closed(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// What one attempt came to.
enum Attempt {
    /// A final answer: success, or an error not worth retrying.
    Done(Result<bytes::Bytes>),
    /// A failure that may be retried, with the wait Kosli asked for.
    Failed(Error, Option<Duration>),
}

/// Everything needed to talk to Kosli.
#[derive(Clone)]
pub struct KosliConfig {
    /// `https://app.kosli.com` by default; plain HTTP only for loopback hosts.
    pub host: String,
    pub org: String,
    pub token: ApiToken,
    /// A file holding the token, re-read whenever it changes (Secret rotation);
    /// wins over `token`.
    pub token_file: Option<PathBuf>,
    /// An explicit proxy for every request (`KOSLI_HTTP_PROXY`); without it the
    /// standard `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` variables apply.
    pub http_proxy: Option<String>,
    /// Extra PEM CA certificates trusted besides the system's.
    pub ca_bundle: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Per attempt, from connect to the end of the body.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl KosliConfig {
    pub fn new(host: impl Into<String>, org: impl Into<String>, token: ApiToken) -> Self {
        Self {
            host: host.into(),
            org: org.into(),
            token,
            token_file: None,
            http_proxy: None,
            ca_bundle: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

impl fmt::Debug for KosliConfig {
    // By hand: the proxy URL may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KosliConfig")
            .field("host", &self.host)
            .field("org", &self.org)
            .field("token", &self.token)
            .field("token_file", &self.token_file)
            .field(
                "http_proxy",
                &self.http_proxy.as_deref().map(redact_userinfo),
            )
            .field("ca_bundle", &self.ca_bundle)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

/// What ensuring an environment did.
#[derive(Clone, Debug, PartialEq)]
pub enum EnsureOutcome {
    Existed(Environment),
    Created,
}

#[derive(Clone)]
pub struct KosliClient {
    http: reqwest::Client,
    base: Url,
    org: String,
    token: Arc<TokenSource>,
    retry: RetryPolicy,
    observer: Option<Arc<dyn RequestObserver>>,
}

impl fmt::Debug for KosliClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KosliClient")
            .field("base", &self.base.as_str())
            .field("org", &self.org)
            .finish_non_exhaustive()
    }
}

/// Where the Authorization header comes from.
enum TokenSource {
    Fixed(HeaderValue),
    /// Re-read when the file behind the path changes.
    File {
        path: PathBuf,
        current: Mutex<TokenFile>,
        /// Counts token changes, so the reporter can retry what the old token
        /// could not do without waiting for its own schedule.
        revision: tokio::sync::watch::Sender<u64>,
    },
}

/// The token file as last read.
struct TokenFile {
    stamp: FileStamp,
    header: HeaderValue,
}

/// What tells one version of the token file from another without reading it.
/// A mounted Secret is updated by swapping a symlink to a new directory: the
/// path then leads to another file (another inode), whatever its time and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    device: u64,
    inode: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let (device, inode) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (device, inode) = (0, 0);
        Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            device,
            inode,
        }
    }
}

fn bearer(token: &ApiToken) -> Result<HeaderValue> {
    if token.is_empty() {
        return Err(Error::Config(
            "a Kosli API token is required (KOSLI_API_TOKEN or --api-token-file)".to_owned(),
        ));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.0))
        .map_err(|_| Error::Config("the Kosli API token contains invalid characters".to_owned()))?;
    value.set_sensitive(true);
    Ok(value)
}

fn read_token_file(path: &Path) -> Result<TokenFile> {
    let read_error = |source| Error::ReadFile {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    let token = std::fs::read_to_string(path).map_err(read_error)?;
    let header = bearer(&ApiToken::new(token)).map_err(|e| match e {
        // Not "invalid configuration: token file …: invalid configuration: …".
        Error::Config(message) => {
            Error::Config(format!("token file {}: {message}", path.display()))
        }
        other => other,
    })?;
    Ok(TokenFile {
        stamp: FileStamp::of(&meta),
        header,
    })
}

impl TokenSource {
    fn header(&self) -> Result<HeaderValue> {
        match self {
            TokenSource::Fixed(value) => Ok(value.clone()),
            TokenSource::File { current, .. } => {
                self.reload();
                Ok(current
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .header
                    .clone())
            }
        }
    }

    /// Re-reads the token file if it changed; `true` when the token did.
    fn reload(&self) -> bool {
        let TokenSource::File {
            path,
            current,
            revision,
        } = self
        else {
            return false;
        };
        let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
        let changed = std::fs::metadata(path)
            .map(|m| FileStamp::of(&m) != current.stamp)
            .unwrap_or(false);
        if !changed {
            return false;
        }
        match read_token_file(path) {
            Ok(fresh) => {
                let new_token = fresh.header != current.header;
                *current = fresh;
                if new_token {
                    tracing::info!(path = %path.display(), "Kosli API token file changed, using the new token");
                    revision.send_modify(|r| *r = r.wrapping_add(1));
                }
                new_token
            }
            // Mid-rotation the file can be briefly empty: keep the last good token.
            Err(e) => {
                tracing::warn!("keeping the previous Kosli API token: {}", chain(&e));
                false
            }
        }
    }
}

/// Kosli is spoken to over HTTPS; plain HTTP only on loopback, where tests run.
/// The URL of `env`'s K8S report at `host`, as a dry run names it.
pub fn report_url(host: &str, org: &str, env: &str) -> Result<Url> {
    let mut url = parse_host(host)?;
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend(["api", "v2", "environments", org, env, "report", "K8S"]);
    }
    Ok(url)
}

pub fn parse_host(host: &str) -> Result<Url> {
    let url = Url::parse(host.trim_end_matches('/'))
        .map_err(|e| Error::Config(format!("KOSLI_HOST {host:?} is not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(Error::Config(format!(
                "KOSLI_HOST {host:?} is plain HTTP; Kosli is only spoken to over HTTPS \
                 (plain HTTP is accepted for loopback addresses only)"
            )));
        }
        other => {
            return Err(Error::Config(format!(
                "KOSLI_HOST {host:?} has scheme {other:?}; use https://"
            )));
        }
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(Error::Config(format!("KOSLI_HOST {host:?} has no host")));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

impl KosliClient {
    pub fn new(config: &KosliConfig) -> Result<Self> {
        crate::tls::install_crypto_provider();
        let base = parse_host(&config.host)?;
        if config.org.is_empty() {
            return Err(Error::Config(
                "a Kosli organization is required (--org or KOSLI_ORG)".to_owned(),
            ));
        }
        let token = match &config.token_file {
            Some(path) => TokenSource::File {
                current: Mutex::new(read_token_file(path)?),
                path: path.clone(),
                revision: tokio::sync::watch::Sender::new(0),
            },
            None => TokenSource::Fixed(bearer(&config.token)?),
        };

        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .https_only(base.scheme() == "https");
        if let Some(proxy) = &config.http_proxy {
            let proxy = reqwest::Proxy::all(proxy)
                .map_err(|e| {
                    // Neither the URL nor the error's text (which may quote
                    // it) can be trusted to hold no password.
                    let shown = redact_userinfo(proxy);
                    let why = chain(&e).replace(proxy.as_str(), &shown);
                    let why = redact_secret_of(proxy, &why);
                    Error::Config(format!("invalid Kosli HTTP proxy {shown:?}: {why}"))
                })?
                .no_proxy(reqwest::NoProxy::from_env());
            builder = builder.proxy(proxy);
        }
        if let Some(path) = &config.ca_bundle {
            let pem = std::fs::read(path).map_err(|source| Error::ReadFile {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Config(format!("invalid CA bundle {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "CA bundle {} holds no PEM certificate",
                    path.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| {
            Error::Config(format!(
                "failed to build the Kosli HTTP client: {}",
                chain(&e)
            ))
        })?;
        Ok(Self {
            http,
            base,
            org: config.org.clone(),
            token: Arc::new(token),
            retry: config.retry,
            observer: None,
        })
    }

    /// Changes of the token read from `--api-token-file`, if the token comes
    /// from a file; they are noticed by [`KosliClient::reload_token`] or by
    /// the next request.
    pub fn token_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match self.token.as_ref() {
            TokenSource::File { revision, .. } => Some(revision.subscribe()),
            TokenSource::Fixed(_) => None,
        }
    }

    /// Re-reads the token file if it changed on disk; `true` when the token did.
    pub fn reload_token(&self) -> bool {
        self.token.reload()
    }

    /// Reports every attempt and retry to `observer` (metrics).
    pub fn with_observer(mut self, observer: Arc<dyn RequestObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The link to an environment in Kosli's web app.
    pub fn environment_url(&self, env: &str) -> String {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend([self.org.as_str(), "environments", env]);
        }
        url.to_string()
    }

    /// `PUT /api/v2/environments/{org}/{env}/report/K8S` with a prepared body.
    pub async fn report_k8s(&self, env: &str, body: impl Into<RequestBody>) -> Result<()> {
        self.report_k8s_fenced(env, body, &Unfenced).await
    }

    /// As [`report_k8s`](Self::report_k8s), every attempt and retry behind `fence`.
    pub async fn report_k8s_fenced(
        &self,
        env: &str,
        body: impl Into<RequestBody>,
        fence: &impl WriteFence,
    ) -> Result<()> {
        let path = ["environments", &self.org, env, "report", "K8S"];
        self.send_fenced("report", Method::PUT, &path, &[], Some(body.into()), fence)
            .await
            .map(drop)
    }

    /// `GET /api/v2/environments/{org}/{env}`; `None` on 404.
    pub async fn get_environment(&self, env: &str) -> Result<Option<Environment>> {
        let path = ["environments", &self.org, env];
        match self
            .send("get_environment", Method::GET, &path, &[], None)
            .await
        {
            Ok(bytes) => decode("GET", &path, &bytes).map(Some),
            Err(Error::KosliStatus { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes sure a K8S environment exists: GET, and PUT only on a genuine 404
    /// (the PUT is an upsert that would overwrite an existing one's settings).
    /// An environment of another type, `logical` included, is an error.
    pub async fn ensure_environment(&self, env: &str, description: &str) -> Result<EnsureOutcome> {
        self.ensure_environment_fenced(env, description, &Unfenced)
            .await
    }

    /// As [`ensure_environment`](Self::ensure_environment), the creating PUT behind `fence`.
    pub async fn ensure_environment_fenced(
        &self,
        env: &str,
        description: &str,
        fence: &impl WriteFence,
    ) -> Result<EnsureOutcome> {
        if let Some(existing) = self.get_environment(env).await? {
            if existing.kind != "K8S" {
                return Err(Error::EnvironmentType {
                    name: env.to_owned(),
                    found: existing.kind,
                });
            }
            return Ok(EnsureOutcome::Existed(existing));
        }
        let body = serde_json::to_vec(&CreateEnvironment {
            name: env,
            kind: "K8S",
            description,
        })
        .map_err(|source| Error::Serialize {
            what: "the environment",
            source,
        })?;
        self.send_fenced(
            "create_environment",
            Method::PUT,
            &["environments", &self.org],
            &[],
            Some(body.into()),
            fence,
        )
        .await?;
        tracing::info!(environment = env, "created Kosli environment of type K8S");
        Ok(EnsureOutcome::Created)
    }

    /// `GET /api/v2/asserts/{org}/fingerprint/{sha256}` for an environment or
    /// named policies; `Unknown` when Kosli has never seen the fingerprint.
    pub async fn assert_artifact(
        &self,
        fingerprint: &str,
        environment: Option<&str>,
        policies: &[String],
    ) -> Result<AssertOutcome> {
        let path = ["asserts", &self.org, "fingerprint", fingerprint];
        match self
            .assert_answer(fingerprint, environment, policies)
            .await?
        {
            Some(bytes) => decode::<AssertResponse>("GET", &path, &bytes).map(AssertOutcome::Known),
            None => Ok(AssertOutcome::Unknown),
        }
    }

    /// As [`assert_artifact`](Self::assert_artifact), Kosli's answer as it
    /// came (any JSON value); `None` when Kosli has never seen the fingerprint.
    pub async fn assert_artifact_json(
        &self,
        fingerprint: &str,
        environment: Option<&str>,
        policies: &[String],
    ) -> Result<Option<serde_json::Value>> {
        let path = ["asserts", &self.org, "fingerprint", fingerprint];
        match self
            .assert_answer(fingerprint, environment, policies)
            .await?
        {
            Some(bytes) => decode("GET", &path, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The assert's answer. Policies, when named, are asked for instead of
    /// the environment's own, and then the environment is not sent: Kosli
    /// takes one or the other, as `kosli assert artifact` does.
    async fn assert_answer(
        &self,
        fingerprint: &str,
        environment: Option<&str>,
        policies: &[String],
    ) -> Result<Option<Bytes>> {
        if !crate::core::fingerprint::is_sha256_hex(fingerprint) {
            return Err(ImageError::NotAFingerprint(fingerprint.to_owned()).into());
        }
        let path = ["asserts", &self.org, "fingerprint", fingerprint];
        let query: Vec<(&str, &str)> = if policies.is_empty() {
            environment
                .map(|env| ("environment_name", env))
                .into_iter()
                .collect()
        } else {
            policies
                .iter()
                .map(|p| ("policy_name", p.as_str()))
                .collect()
        };
        match self.send("assert", Method::GET, &path, &query, None).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Error::KosliStatus { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn url(&self, path: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["api", "v2"]).extend(path);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// One logical request: attempts and retries until a final answer.
    async fn send(
        &self,
        operation: &'static str,
        method: Method,
        path: &[&str],
        query: &[(&str, &str)],
        body: Option<RequestBody>,
    ) -> Result<Bytes> {
        self.send_fenced(operation, method, path, query, body, &Unfenced)
            .await
    }

    /// One logical request behind `fence`: it is asked right before every
    /// attempt and every retry, an attempt in flight is dropped (its connection
    /// closed) the moment the fence is revoked, and a backoff ends when it closes.
    async fn send_fenced(
        &self,
        operation: &'static str,
        method: Method,
        path: &[&str],
        query: &[(&str, &str)],
        body: Option<RequestBody>,
        fence: &impl WriteFence,
    ) -> Result<Bytes> {
        let url = self.url(path, query);
        let method_name = method_name(&method);
        let display_path = format!("/api/v2/{}", path.join("/"));
        let fenced = |why| Error::WriteFenced {
            method: method_name,
            path: display_path.clone(),
            why,
        };
        let mut retry = 0;
        loop {
            if !fence.may_start() {
                return Err(fenced("not sent: this process may no longer write"));
            }
            let started = Instant::now();
            let attempt = self.attempt(
                &method,
                &url,
                body.as_ref(),
                operation,
                method_name,
                &display_path,
                started,
            );
            let (error, retry_after) = tokio::select! {
                biased;
                () = fence.revoked() => {
                    tracing::warn!(method = method_name, path = %display_path,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "abandoned a Kosli request in flight: this process may no longer write");
                    return Err(fenced("abandoned in flight: this process may no longer write"));
                }
                outcome = attempt => match outcome? {
                    Attempt::Done(result) => return result,
                    Attempt::Failed(error, retry_after) => (error, retry_after),
                },
            };
            self.observe(operation, error.kosli_status(), started);
            if !error.is_transient() || retry >= self.retry.max_retries {
                return Err(error);
            }
            let delay = match retry_after {
                Some(asked) => match self.retry.honoured_retry_after(asked) {
                    Some(delay) => delay,
                    None => return Err(error),
                },
                None => self.retry.backoff(retry, fastrand::f64()),
            };
            retry += 1;
            if let Some(observer) = &self.observer {
                observer.retry(operation, error.kosli_status());
            }
            tracing::warn!(method = method_name, path = %display_path, error = %error,
                retry, of = self.retry.max_retries, delay_ms = delay.as_millis() as u64,
                "Kosli request failed, retrying");
            tokio::select! {
                biased;
                () = fence.closed() => return Err(error),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One attempt: the request, its answer read within the cap.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&RequestBody>,
        operation: &'static str,
        method_name: &'static str,
        display_path: &str,
        started: Instant,
    ) -> Result<Attempt> {
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .header(header::AUTHORIZATION, self.token.header()?)
            .header(header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                // Whole: a shared handle, no copy per attempt. Streamed:
                // written afresh for this attempt, under the same length.
                .header(header::CONTENT_LENGTH, body.len())
                .body(body.open());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                return Ok(Attempt::Failed(
                    transport_error(method_name, display_path, &e),
                    None,
                ));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, jiff::Timestamp::now()));
        let success = status == StatusCode::OK || status == StatusCode::CREATED;
        Ok(
            match read_capped(response, "Kosli's answer", ANSWER_LIMIT).await {
                Ok(bytes) if success => {
                    self.observe(operation, Some(status.as_u16()), started);
                    tracing::debug!(method = method_name, path = %display_path, status = status.as_u16(),
                        elapsed_ms = started.elapsed().as_millis() as u64, "Kosli answered");
                    Attempt::Done(Ok(bytes))
                }
                Ok(bytes) => {
                    let retry_after = retry_after.filter(|_| {
                        status == StatusCode::TOO_MANY_REQUESTS
                            || status == StatusCode::SERVICE_UNAVAILABLE
                    });
                    let error = Error::KosliStatus {
                        method: method_name,
                        path: display_path.to_owned(),
                        status: status.as_u16(),
                        message: error_message(status, &bytes),
                        retry_after,
                    };
                    Attempt::Failed(error, retry_after)
                }
                // An answer this large is no answer: retrying would read it again.
                Err(e @ Error::BodyTooLarge { .. }) if success => {
                    self.observe(operation, Some(status.as_u16()), started);
                    Attempt::Done(Err(Error::KosliDecode {
                        method: method_name,
                        path: display_path.to_owned(),
                        message: e.to_string(),
                    }))
                }
                // An error page this large still tells its status.
                Err(e @ Error::BodyTooLarge { .. }) => Attempt::Failed(
                    Error::KosliStatus {
                        method: method_name,
                        path: display_path.to_owned(),
                        status: status.as_u16(),
                        message: e.to_string(),
                        retry_after: None,
                    },
                    None,
                ),
                Err(Error::BodyRead { source, .. }) => {
                    Attempt::Failed(transport_error(method_name, display_path, &source), None)
                }
                Err(e) => Attempt::Done(Err(e)),
            },
        )
    }
}

impl KosliClient {
    fn observe(&self, operation: &'static str, status: Option<u16>, started: Instant) {
        if let Some(observer) = &self.observer {
            observer.attempt(operation, status, started.elapsed());
        }
    }
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        _ => "request",
    }
}

fn decode<T: DeserializeOwned>(method: &'static str, path: &[&str], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::KosliDecode {
        method,
        path: format!("/api/v2/{}", path.join("/")),
        message: e.to_string(),
    })
}

/// The most useful text of an error body: Kosli's `message` (with its per-field
/// `errors`), a bare JSON string, or the start of a non-JSON page.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    const MAX: usize = 300;
    let reason = status.canonical_reason().unwrap_or("error").to_owned();
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => {
            let mut message = map
                .get("message")
                .and_then(|m| m.as_str())
                .map_or_else(|| reason.clone(), str::to_owned);
            if let Some(errors) = map.get("errors").filter(|e| !e.is_null()) {
                message.push_str(&format!(" (errors: {errors})"));
            }
            truncate(message, MAX)
        }
        Ok(serde_json::Value::String(s)) if !s.is_empty() => truncate(s, MAX),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if text.is_empty() {
                reason
            } else {
                truncate(format!("{reason}: {text}"), MAX)
            }
        }
    }
}

/// `scheme://user:password@host` -> `scheme://***@host`: proxy URLs carry
/// credentials, and messages about them end up in logs.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_owned(),
        };
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

/// `text` without the password (or whole userinfo) of `url`, wherever it
/// appears: a parser error may quote a piece of the URL.
fn redact_secret_of(url: &str, text: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let Some((userinfo, _)) = rest.rsplit_once('@') else {
        return text.to_owned();
    };
    let mut text = text.replace(userinfo, "***");
    if let Some((_, password)) = userinfo.split_once(':')
        && !password.is_empty()
    {
        text = text.replace(password, "***");
    }
    text
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn transport_error(method: &'static str, path: &str, error: &reqwest::Error) -> Error {
    Error::KosliTransport {
        method,
        path: path.to_owned(),
        message: chain(error),
        certificate: is_certificate_error(error),
    }
}

fn is_certificate_error(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        // io::Error hides what it wraps from source(): look inside, at any depth.
        source = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_hosts_are_accepted() {
        assert!(parse_host("https://app.kosli.com").is_ok());
        assert!(parse_host("https://app.us.kosli.com/").is_ok());
    }

    #[test]
    fn plain_http_is_refused_unless_loopback() {
        let err = parse_host("http://app.kosli.com").unwrap_err().to_string();
        assert!(err.contains("plain HTTP"), "{err}");
        assert!(parse_host("http://10.0.0.1:8080").is_err());
        for ok in [
            "http://127.0.0.1:9",
            "http://127.1.2.3",
            "http://localhost:80",
            "http://[::1]:9",
        ] {
            assert!(parse_host(ok).is_ok(), "{ok}");
        }
        assert!(parse_host("ftp://x").is_err());
        assert!(parse_host("not a url").is_err());
    }

    #[test]
    fn urls_keep_a_path_prefix_and_encode_segments() {
        let config = KosliConfig::new(
            "https://kosli.example.com/prefix/",
            "my org",
            ApiToken::new("t"),
        );
        let client = KosliClient::new(&config).unwrap();
        assert_eq!(
            client
                .url(
                    &["environments", "my org", "prod"],
                    &[("policy_name", "a&b")]
                )
                .as_str(),
            "https://kosli.example.com/prefix/api/v2/environments/my%20org/prod?policy_name=a%26b"
        );
        assert_eq!(
            client.environment_url("prod"),
            "https://kosli.example.com/prefix/my%20org/environments/prod"
        );
    }

    /// Lays a token out as the kubelet projects a Secret: `token` ->
    /// `..data/token`, `..data` -> a directory per version.
    #[cfg(unix)]
    fn project_secret(dir: &Path, version: &str, token: &str, modified: SystemTime) {
        let versioned = dir.join(version);
        std::fs::create_dir(&versioned).unwrap();
        let file = versioned.join("token");
        std::fs::write(&file, token).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        let staged = dir.join("..data_tmp");
        std::os::unix::fs::symlink(version, &staged).unwrap();
        std::fs::rename(&staged, dir.join("..data")).unwrap();
        let link = dir.join("token");
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("..data/token", &link).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_volume_swap_is_a_new_token_even_with_the_same_size_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        project_secret(dir.path(), "..v1", "token-aaaa", modified);
        let mut config = KosliConfig::new("https://app.kosli.com", "org", ApiToken::new(""));
        config.token_file = Some(dir.path().join("token"));
        let client = KosliClient::new(&config).unwrap();
        let mut changes = client.token_changes().expect("a token file is watched");
        assert!(!client.reload_token(), "nothing changed yet");
        assert_eq!(client.token.header().unwrap(), "Bearer token-aaaa");

        // Same length, same modification time: only the file behind the link differs.
        project_secret(dir.path(), "..v2", "token-bbbb", modified);
        assert!(client.reload_token(), "the swapped-in token is seen");
        assert!(changes.has_changed().unwrap(), "and announced");
        changes.mark_unchanged();
        assert_eq!(client.token.header().unwrap(), "Bearer token-bbbb");

        // The kubelet re-projecting the same Secret is no new token.
        project_secret(dir.path(), "..v3", "token-bbbb", modified);
        assert!(!client.reload_token());
        assert!(!changes.has_changed().unwrap());
    }

    #[test]
    fn a_fixed_token_has_no_changes() {
        let client = KosliClient::new(&KosliConfig::new(
            "https://app.kosli.com",
            "org",
            ApiToken::new("t"),
        ))
        .unwrap();
        assert!(client.token_changes().is_none());
        assert!(!client.reload_token());
    }

    #[test]
    fn token_is_redacted_in_debug_output() {
        let config = KosliConfig::new(
            "https://app.kosli.com",
            "org",
            ApiToken::new("s3cret-token"),
        );
        let client = KosliClient::new(&config).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(!format!("{client:?}").contains("s3cret"));
    }

    #[test]
    fn a_bad_proxy_url_is_reported_without_its_password() {
        for bad in [
            "http://u:s3cret@bad host",
            "http://u:s3cret@bad host:99999",
            "u:s3cret@:::",
        ] {
            let mut config = KosliConfig::new("https://app.kosli.com", "org", ApiToken::new("t"));
            config.http_proxy = Some(bad.to_owned());
            let err = KosliClient::new(&config).unwrap_err();
            let text = format!("{} | {} | {err:?} | {config:?}", err, chain(&err));
            assert!(text.contains("invalid Kosli HTTP proxy"), "{text}");
            assert!(!text.contains("s3cret"), "{bad}: {text}");
        }
        assert_eq!(
            redact_userinfo("http://u:p@proxy:3128"),
            "http://***@proxy:3128"
        );
        assert_eq!(redact_userinfo("http://proxy:3128"), "http://proxy:3128");
    }

    #[test]
    fn missing_org_or_token_are_clear_errors() {
        let no_org = KosliConfig::new("https://app.kosli.com", "", ApiToken::new("t"));
        assert!(
            KosliClient::new(&no_org)
                .unwrap_err()
                .to_string()
                .contains("organization")
        );
        let no_token = KosliConfig::new("https://app.kosli.com", "org", ApiToken::new("  "));
        assert!(
            KosliClient::new(&no_token)
                .unwrap_err()
                .to_string()
                .contains("API token")
        );
    }

    #[test]
    fn error_messages_from_every_body_shape() {
        let s = StatusCode::BAD_REQUEST;
        assert_eq!(
            error_message(
                s,
                br#"{"message":"Input payload validation failed","errors":{"artifacts[0]":"bad"}}"#
            ),
            r#"Input payload validation failed (errors: {"artifacts[0]":"bad"})"#
        );
        assert_eq!(
            error_message(StatusCode::FORBIDDEN, br#""Denied""#),
            "Denied"
        );
        assert_eq!(
            error_message(
                StatusCode::BAD_GATEWAY,
                b"<html><body>\n<h1>502</h1>\n</body></html>"
            ),
            "Bad Gateway: <html><body> <h1>502</h1> </body></html>"
        );
        assert_eq!(
            error_message(StatusCode::SERVICE_UNAVAILABLE, b""),
            "Service Unavailable"
        );
        assert_eq!(error_message(s, br#"{"other":1}"#), "Bad Request");
        assert!(
            error_message(s, "x".repeat(1000).as_bytes())
                .chars()
                .count()
                <= 301
        );
    }
}
