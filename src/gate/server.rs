//! The admission webhook's HTTPS server: TLS with certificate reload, routing,
//! size limits and timeouts. What a review decides lives behind
//! [`ReviewHandler`]; this module only carries requests to it, safely.
//!
//! The API server is the only legitimate client, but the port is reachable by
//! anything in the cluster network, so every input is treated as hostile: bodies
//! are capped, every request (and every TLS handshake) has a deadline, and
//! nothing a client sends can panic or stall the server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result, chain};

/// The API server refuses request bodies over 3 MiB itself, so a larger
/// AdmissionReview cannot come from it.
pub const DEFAULT_MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The API server waits at most 30 s for a webhook (`timeoutSeconds` maximum).
/// `kosli-operator run` passes one derived from `--webhook-timeout` instead.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections served at once (`--webhook-max-connections`). The API server
/// reuses a few keep-alive connections per replica, so this is far above what
/// it needs and far below what exhausts file descriptors or memory.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// How often the certificate files are compared with what is served.
/// cert-manager renews days before expiry, so a second is plenty.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The pause after a failed accept (typically EMFILE), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Handles one POST /validate body; returns the response body (an
/// AdmissionReview JSON) or a client error.
pub trait ReviewHandler: Send + Sync + 'static {
    fn review(&self, body: Bytes) -> BoxFuture<'static, Result<Vec<u8>, ReviewRejection>>;
}

/// A request the handler refuses to review (e.g. 400 for a body that is not an
/// AdmissionReview). The API server applies the webhook's failurePolicy to it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {status}: {message}")]
pub struct ReviewRejection {
    pub status: u16,
    pub message: String,
}

impl ReviewRejection {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }
}

/// Where and how the webhook serves.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    /// PEM certificate chain, leaf first (cert-manager's `tls.crt`).
    pub cert_file: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 or SEC1 (cert-manager's `tls.key`).
    pub key_file: PathBuf,
    /// Larger bodies get 413.
    pub max_body_bytes: usize,
    /// Deadline for the TLS handshake, for the request headers (which also
    /// bounds how long a keep-alive connection may idle), and for reading the
    /// body plus the review.
    pub request_timeout: Duration,
    /// Connections served at once. Beyond it the server stops accepting: new
    /// connections wait in the kernel's backlog (not refused, so a burst from
    /// the API server is served late rather than failed) until one of the
    /// served connections ends, which the deadlines above guarantee.
    pub max_connections: usize,
    /// PEM CA certificates: when set, only clients presenting a certificate
    /// chained to one of them (the API server, configured through its
    /// AdmissionConfiguration) complete the TLS handshake. Read once at start.
    pub client_ca_file: Option<PathBuf>,
}

impl WebhookConfig {
    /// A config with the default limits.
    pub fn new(addr: SocketAddr, cert_file: PathBuf, key_file: PathBuf) -> Self {
        Self {
            addr,
            cert_file,
            key_file,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            client_ca_file: None,
        }
    }
}

/// Binds now (a port in use, or an unreadable or invalid certificate or key,
/// fails start-up with an error naming it) and serves HTTPS until `shutdown`.
/// Returns the bound address (so callers can ask for port 0) and the server
/// task, which ends once in-flight requests have finished after `shutdown`.
pub async fn serve(
    config: WebhookConfig,
    handler: Arc<dyn ReviewHandler>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    crate::tls::install_crypto_provider();
    // An explicit provider, so the server never depends on which default
    // another part of the process installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let files = CertFiles {
        cert_file: config.cert_file.clone(),
        key_file: config.key_file.clone(),
    };
    let contents = files.read().await?;
    let key = files.parse(&provider, &contents)?;
    let resolver = Arc::new(ReloadingCert(RwLock::new(Arc::new(key))));

    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::WebhookCertificate {
            problem: "no usable protocol version".to_owned(),
            source: Some(Box::new(e)),
        })?;
    let builder = match &config.client_ca_file {
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, &provider).await?),
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder.with_cert_resolver(resolver.clone());
    // Only HTTP/1.1 is served; advertising it makes a client that offers h2
    // (the API server does) settle on HTTP/1.1 instead of failing.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| Error::Io {
            what: format!("listen on webhook address {}", config.addr),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| Error::Io {
        what: format!("read the bound webhook address {}", config.addr),
        source,
    })?;
    tracing::info!(
        addr = %bound,
        client_auth = config.client_ca_file.is_some(),
        max_connections = config.max_connections,
        "serving the admission webhook (HTTPS)"
    );

    let reloader = tokio::spawn(reload_loop(
        files,
        contents,
        provider,
        resolver,
        shutdown.clone(),
    ));
    let context = Arc::new(Context {
        handler,
        max_body_bytes: config.max_body_bytes,
        request_timeout: config.request_timeout,
    });
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let task = tokio::spawn(async move {
        accept_loop(listener, acceptor, slots, context.clone(), shutdown).await;
        // The reloader stops on the same token; a panic in it is already
        // reported by the runtime, nothing to add here.
        let _ = reloader.await;
        tracing::info!(addr = %bound, "admission webhook stopped");
    });
    Ok((bound, task))
}

/// What every request needs.
struct Context {
    handler: Arc<dyn ReviewHandler>,
    max_body_bytes: usize,
    request_timeout: Duration,
}

/// The CA file of `--webhook-client-ca` as a verifier that requires a client
/// certificate chained to it; errors name the file.
async fn client_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let shown = path.display();
    let pem = tokio::fs::read(path)
        .await
        .map_err(|e| unusable(format!("failed to read webhook client CA file {shown}"), e))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert
            .map_err(|e| unusable(format!("invalid PEM in webhook client CA file {shown}"), e))?;
        roots.add(cert).map_err(|e| {
            unusable(
                format!("unusable certificate in webhook client CA file {shown}"),
                e,
            )
        })?;
    }
    if roots.is_empty() {
        return Err(Error::WebhookCertificate {
            problem: format!("no certificate in webhook client CA file {shown}"),
            source: None,
        });
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| unusable(format!("unusable webhook client CA file {shown}"), e))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    slots: Arc<Semaphore>,
    context: Arc<Context>,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow with every one served.
        while connections.try_join_next().is_some() {}
        let Some((slot, stream, peer)) = crate::observe::health::accept_capped(
            &listener,
            &slots,
            &shutdown,
            ACCEPT_BACKOFF,
            "webhook",
        )
        .await
        else {
            break;
        };
        let connection = serve_connection(
            stream,
            peer,
            acceptor.clone(),
            context.clone(),
            shutdown.clone(),
        );
        connections.spawn(async move {
            connection.await;
            drop(slot);
        });
    }
    // Stop accepting at once, so clients get "connection refused" rather than
    // a connection nobody serves.
    drop(listener);
    // Every connection bounds itself by the request timeout after shutdown;
    // the extra second only guards against a bug there.
    let grace = context.request_timeout + Duration::from_secs(1);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("webhook connections still open after shutdown; aborting them");
        connections.abort_all();
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    context: Arc<Context>,
    shutdown: CancellationToken,
) {
    let timeout = context.request_timeout;
    // A client that opens TCP and never finishes the handshake would otherwise
    // hold a task and a socket forever.
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "webhook TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "webhook TLS handshake timed out after {timeout:?}");
            return;
        }
    };
    let service = service_fn(move |request| {
        let context = context.clone();
        async move { Ok::<_, Infallible>(handle(request, &context).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Cuts clients that trickle their headers (and idle keep-alive connections).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout);
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, "webhook connection ended: {e}");
            }
        }
        () = shutdown.cancelled() => {
            // Finish the request in flight (bounded by its own deadline), then close.
            connection.as_mut().graceful_shutdown();
            if tokio::time::timeout(timeout, connection).await.is_err() {
                tracing::debug!(%peer, "webhook connection cut at shutdown");
            }
        }
    }
}

/// Where a request goes, decided from its method, path and content type alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Validate,
    Healthz,
    NotFound,
    /// With the `Allow` header value.
    MethodNotAllowed(&'static str),
    UnsupportedMediaType,
}

fn route(method: &Method, path: &str, content_type: Option<&HeaderValue>) -> Route {
    match path {
        "/validate" if method == Method::POST => {
            if is_json(content_type) {
                Route::Validate
            } else {
                Route::UnsupportedMediaType
            }
        }
        "/validate" => Route::MethodNotAllowed("POST"),
        "/healthz" if method == Method::GET || method == Method::HEAD => Route::Healthz,
        "/healthz" => Route::MethodNotAllowed("GET, HEAD"),
        _ => Route::NotFound,
    }
}

/// `application/json`, with or without parameters such as `charset`.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// A declared Content-Length over the limit: refused before reading a byte.
fn declared_too_large(headers: &HeaderMap, max: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|length| length > max as u64)
}

/// The status for a handler's rejection; anything that is not an error status
/// would tell the API server the review succeeded, so it becomes a 500.
fn rejection_status(status: u16) -> StatusCode {
    StatusCode::from_u16(status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

type HttpResponse = Response<Full<Bytes>>;

fn text(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    let mut body = message.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// For answers given before the body was read: the rest of it may still be
/// on the wire, so the connection cannot be reused.
fn closing(mut response: HttpResponse) -> HttpResponse {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn handle(request: Request<Incoming>, context: &Context) -> HttpResponse {
    // The headers are in: the body and the review share what is left.
    let deadline = Instant::now() + context.request_timeout;
    let route = route(
        request.method(),
        request.uri().path(),
        request.headers().get(header::CONTENT_TYPE),
    );
    match route {
        Route::Validate => {}
        Route::Healthz => return text(StatusCode::OK, "ok"),
        Route::NotFound => return text(StatusCode::NOT_FOUND, "not found"),
        Route::MethodNotAllowed(allow) => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            return response;
        }
        Route::UnsupportedMediaType => {
            return closing(text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "POST /validate takes Content-Type: application/json",
            ));
        }
    }
    let max = context.max_body_bytes;
    let too_large = || {
        closing(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {max} bytes"),
        ))
    };
    if declared_too_large(request.headers(), max) {
        return too_large();
    }
    let collected =
        tokio::time::timeout_at(deadline, Limited::new(request.into_body(), max).collect()).await;
    let body = match collected {
        Ok(Ok(collected)) => collected.to_bytes(),
        // A chunked body that turned out too large.
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(e)) => {
            tracing::debug!("webhook failed to read a request body: {e}");
            return closing(text(
                StatusCode::BAD_REQUEST,
                "failed to read the request body",
            ));
        }
        Err(_) => {
            return closing(text(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {:?}",
                    context.request_timeout
                ),
            ));
        }
    };
    match tokio::time::timeout_at(deadline, context.handler.review(body)).await {
        Ok(Ok(review)) => {
            let mut response = Response::new(Full::new(Bytes::from(review)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Ok(Err(rejection)) => {
            tracing::debug!(
                status = rejection.status,
                "webhook rejected a review request: {}",
                rejection.message
            );
            text(rejection_status(rejection.status), rejection.message)
        }
        Err(_) => {
            tracing::warn!(
                "webhook review did not finish within {:?}",
                context.request_timeout
            );
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("review did not finish within {:?}", context.request_timeout),
            )
        }
    }
}

/// Serves whichever certificate was loaded last. Handshakes read it, the
/// reloader replaces it; no handshake ever waits on a file.
#[derive(Debug)]
struct ReloadingCert(RwLock<Arc<CertifiedKey>>);

impl ReloadingCert {
    fn current(&self) -> Arc<CertifiedKey> {
        // A poisoned lock still holds a valid pair: writers only assign.
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, key: CertifiedKey) {
        let key = Arc::new(key);
        match self.0.write() {
            Ok(mut guard) => *guard = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

struct CertFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// The bytes of the certificate and key files, as last read.
#[derive(Clone, PartialEq, Eq)]
struct CertContents {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl CertFiles {
    async fn read(&self) -> Result<CertContents> {
        let read = |path: &Path, what: &'static str| {
            let path = path.to_path_buf();
            async move {
                tokio::fs::read(&path)
                    .await
                    .map_err(|e| Error::WebhookCertificate {
                        problem: format!("failed to read webhook {what} file {}", path.display()),
                        source: Some(Box::new(e)),
                    })
            }
        };
        Ok(CertContents {
            cert: read(&self.cert_file, "certificate").await?,
            key: read(&self.key_file, "key").await?,
        })
    }

    /// A certificate chain and the key that belongs to its leaf; the errors
    /// name the file at fault.
    fn parse(&self, provider: &CryptoProvider, contents: &CertContents) -> Result<CertifiedKey> {
        let (cert_file, key_file) = (self.cert_file.display(), self.key_file.display());
        let chain = CertificateDer::pem_slice_iter(&contents.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unusable(format!("invalid PEM in certificate file {cert_file}"), e))?;
        if chain.is_empty() {
            return Err(Error::WebhookCertificate {
                problem: format!("no certificate in certificate file {cert_file}"),
                source: None,
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&contents.key)
            .map_err(|e| unusable(format!("no private key in key file {key_file}"), e))?;
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| unusable(format!("unusable private key in key file {key_file}"), e))?;
        let certified = CertifiedKey::new(chain, signing_key);
        // Also catches a leaf that is not a parsable certificate.
        certified.keys_match().map_err(|e| {
            unusable(
                format!("key file {key_file} does not match certificate file {cert_file}"),
                e,
            )
        })?;
        Ok(certified)
    }
}

/// A certificate or key file that does not load, and the TLS library's reason.
fn unusable(problem: String, source: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::WebhookCertificate {
        problem,
        source: Some(Box::new(source)),
    }
}

/// Polls the files and swaps in a new pair when their contents change. The
/// contents are compared, not mtimes: a Secret volume replaces files through
/// a symlink swap and some filesystems keep coarse mtimes, while reading two
/// small files a second costs nothing. A pair that fails to load (a half-done
/// rotation, garbage) keeps the last good one serving, with one warning per
/// distinct failure.
async fn reload_loop(
    files: CertFiles,
    mut seen: CertContents,
    provider: Arc<CryptoProvider>,
    resolver: Arc<ReloadingCert>,
    shutdown: CancellationToken,
) {
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RELOAD_INTERVAL) => {}
        }
        let contents = match files.read().await {
            Ok(contents) => contents,
            Err(e) => {
                let e = chain(&e);
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!("keeping the served webhook certificate: {e}");
                    last_error = Some(e);
                }
                continue;
            }
        };
        if contents == seen {
            continue;
        }
        match files.parse(&provider, &contents) {
            Ok(key) => {
                resolver.replace(key);
                last_error = None;
                tracing::info!(
                    cert_file = %files.cert_file.display(),
                    "reloaded the webhook certificate"
                );
            }
            Err(e) => {
                let e = chain(&e);
                tracing::warn!("keeping the served webhook certificate: {e}");
                last_error = Some(e);
            }
        }
        seen = contents;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ct(value: &'static str) -> Option<HeaderValue> {
        Some(HeaderValue::from_static(value))
    }

    #[test]
    fn routes() {
        let json = ct("application/json");
        assert_eq!(
            route(&Method::POST, "/validate", json.as_ref()),
            Route::Validate
        );
        assert_eq!(
            route(&Method::POST, "/validate", ct("text/plain").as_ref()),
            Route::UnsupportedMediaType
        );
        assert_eq!(
            route(&Method::POST, "/validate", None),
            Route::UnsupportedMediaType
        );
        assert_eq!(
            route(&Method::GET, "/validate", json.as_ref()),
            Route::MethodNotAllowed("POST")
        );
        assert_eq!(route(&Method::GET, "/healthz", None), Route::Healthz);
        assert_eq!(route(&Method::HEAD, "/healthz", None), Route::Healthz);
        assert_eq!(
            route(&Method::POST, "/healthz", json.as_ref()),
            Route::MethodNotAllowed("GET, HEAD")
        );
        assert_eq!(
            route(&Method::POST, "/validate/", json.as_ref()),
            Route::NotFound
        );
        assert_eq!(route(&Method::GET, "/", None), Route::NotFound);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(ct("application/json").as_ref()));
        assert!(is_json(ct("application/json; charset=utf-8").as_ref()));
        assert!(is_json(ct("Application/JSON").as_ref()));
        assert!(is_json(ct(" application/json ;charset=UTF-8").as_ref()));
        assert!(!is_json(None));
        assert!(!is_json(ct("").as_ref()));
        assert!(!is_json(ct("application/json-patch+json").as_ref()));
        assert!(!is_json(ct("application/yaml").as_ref()));
        assert!(!is_json(ct("text/json").as_ref()));
        let not_utf8 = HeaderValue::from_bytes(b"application/json\xff").unwrap();
        assert!(!is_json(Some(&not_utf8)));
    }

    #[test]
    fn declared_lengths() {
        let mut headers = HeaderMap::new();
        assert!(!declared_too_large(&headers, 10));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert!(!declared_too_large(&headers, 10));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
        assert!(declared_too_large(&headers, 10));
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from_static("99999999999999999999999"),
        );
        // Unparsable: hyper itself refuses such a request before it gets here.
        assert!(!declared_too_large(&headers, 10));
    }

    #[test]
    fn rejection_statuses() {
        assert_eq!(rejection_status(400), StatusCode::BAD_REQUEST);
        assert_eq!(rejection_status(422), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(rejection_status(503), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rejection_status(200), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(rejection_status(302), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(rejection_status(7), StatusCode::INTERNAL_SERVER_ERROR);
    }

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn parse(cert: &str, key: &str) -> Result<CertifiedKey> {
        let files = CertFiles {
            cert_file: "/certs/tls.crt".into(),
            key_file: "/certs/tls.key".into(),
        };
        let contents = CertContents {
            cert: cert.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
        };
        files.parse(&rustls::crypto::ring::default_provider(), &contents)
    }

    #[test]
    fn certificate_pairs_are_checked_and_errors_name_the_file() {
        let (cert, key) = pair();
        let (other_cert, other_key) = pair();
        assert!(parse(&cert, &key).is_ok());
        assert!(parse(&other_cert, &other_key).is_ok());

        let err = parse("garbage", &key).err().unwrap().to_string();
        assert!(err.contains("/certs/tls.crt"), "{err}");
        let err = parse(&cert, "garbage").err().unwrap().to_string();
        assert!(err.contains("/certs/tls.key"), "{err}");
        let err = parse(&cert, &other_key).err().unwrap().to_string();
        assert!(
            err.contains("does not match") && err.contains("/certs/tls.crt"),
            "{err}"
        );
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = parse(broken, &key).err().unwrap().to_string();
        assert!(err.contains("/certs/tls.crt"), "{err}");
    }
}
