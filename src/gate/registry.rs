//! Tag -> digest: asks a registry for the digest of a manifest, the way container
//! runtimes address it (Docker Registry HTTP API v2 / OCI distribution).
//!
//! The digest is the top-level one: for a multi-platform image it is the index
//! digest, which is what CI pushes and attests. HEAD first (cheap, and not counted
//! against Docker Hub's pull limits), GET when HEAD gives no digest. Anonymous,
//! Basic, and the Bearer token flow; registry tokens are cached until they expire.
//! Registries on loopback are spoken to over plain HTTP, as container runtimes do;
//! all others over verified HTTPS.
//!
//! The registry is whatever a pod spec names, so everything it answers is
//! hostile until checked: bodies are read with a cap, token lifetimes are
//! capped, and credentials follow a token realm only to the registry's own host
//! (or one the operator was told to trust), over HTTPS. See [`realm_refusal`].

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::bounded_map::BoundedMap;
use crate::core::fingerprint::{DOCKER_HUB, Digest, ImageRef};
use crate::error::{Error, Result, chain};
use crate::http_body::{KIB, MIB, read_capped, sha256_capped};

/// Every manifest media type we accept: the index kinds first, so a registry that
/// negotiates returns the top-level object for multi-platform images.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Docker Hub's API host: `docker.io` names it but does not serve it.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Docker Hub's token service, the one realm host it may name besides its own.
const DOCKER_HUB_AUTH: &str = "auth.docker.io";

/// The OCI distribution spec's limit for a manifest a registry must accept.
pub const MANIFEST_LIMIT: u64 = 4 * MIB;
/// A token answer is a few KiB of JSON; 256 KiB leaves room for huge JWTs
/// while 64 lookups at once hold at most 16 MiB of them.
pub const TOKEN_ANSWER_LIMIT: u64 = 256 * KIB;
/// Redirects followed per request: registries redirect once or twice at most.
const MAX_REDIRECTS: usize = 3;
/// Tokens are reused at most this long, whatever the registry says: an
/// `expires_in` near the numeric limit must neither overflow nor live forever.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Cached tokens: one per registry, repository and set of credentials.
pub const DEFAULT_TOKEN_CACHE_ENTRIES: usize = 10_000;

/// Tokens are dropped this long before the registry says they expire.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// Registries may omit `expires_in`; the distribution spec says assume 60 s.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A username and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryCredentials({}, <redacted>)", self.username)
    }
}

impl RegistryCredentials {
    /// What caches are keyed by: a hash of username and password, so that a
    /// rotated password never reuses the old one's token or digest, and two
    /// secrets with the same user never share. Never logged.
    pub fn cache_key(&self) -> String {
        let mut hash = Sha256::new();
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hash.update((self.username.len() as u64).to_be_bytes());
        hash.update(self.username.as_bytes());
        hash.update(self.password.as_bytes());
        hex::encode(hash.finalize())
    }
}

#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Extra PEM CA certificates trusted for registries.
    pub ca_bundle: Option<Vec<u8>>,
    /// Registries (host[:port]) spoken to over plain HTTP although not on loopback.
    pub plain_http: Vec<String>,
    /// Hosts (or host:port) a registry's token realm may name besides the
    /// registry's own host, its parent domain and Docker Hub's auth.docker.io.
    pub token_hosts: Vec<String>,
    /// Cached registry tokens at most; the oldest are forgotten first.
    pub token_cache_entries: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            ca_bundle: None,
            plain_http: Vec::new(),
            token_hosts: Vec::new(),
            token_cache_entries: DEFAULT_TOKEN_CACHE_ENTRIES,
        }
    }
}

#[derive(Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    plain_http: Vec<String>,
    token_hosts: Vec<String>,
    /// Bearer tokens by (registry, repository) and the credentials they were minted for.
    tokens: Mutex<BoundedMap<TokenKey, CachedToken>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct TokenKey {
    registry: String,
    repository: String,
    /// [`RegistryCredentials::cache_key`]: the credentials' hash, not the user.
    credentials: Option<String>,
}

#[derive(Clone, Debug)]
struct CachedToken {
    token: String,
    valid_until: Instant,
}

/// A `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    /// Any JSON: a float, a string or a negative number is nonsense, not an error.
    expires_in: Option<serde_json::Value>,
}

/// How long a token is reused: what the registry says, capped at an hour; a
/// missing, zero or nonsensical lifetime is the spec's 60 s.
fn token_lifetime(expires_in: Option<&serde_json::Value>) -> Duration {
    match expires_in.and_then(serde_json::Value::as_u64) {
        None | Some(0) => DEFAULT_TOKEN_LIFETIME,
        Some(seconds) => Duration::from_secs(seconds).min(MAX_TOKEN_LIFETIME),
    }
}

/// Why credentials must not go to `realm`, the token service a registry at
/// `registry_host` named in its 401; `None` when they may. Credentials stay with
/// their registry: the realm must be the registry's own host (any port), its
/// parent domain (registry.gitlab.com gets tokens from gitlab.com: a registry
/// is run by whoever owns the domain above it), Docker Hub's auth.docker.io
/// for Docker Hub, or a host in `trusted`; and it must be HTTPS, or plain HTTP
/// to loopback or to a registry the operator was told speaks plain HTTP.
pub fn realm_refusal(
    registry_host: &str,
    realm: &Url,
    trusted: &[String],
    plain_http: &[String],
) -> Option<String> {
    let Some(host) = realm.host_str() else {
        return Some(format!("the token realm {realm} has no host"));
    };
    let host = host.to_ascii_lowercase();
    let with_port = match realm.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let registry = host_of(registry_host).to_ascii_lowercase();
    let named = |list: &[String]| {
        list.iter()
            .any(|h| h.eq_ignore_ascii_case(&host) || h.eq_ignore_ascii_case(&with_port))
    };
    let own = host == registry
        || (registry == DOCKER_HUB_API && host == DOCKER_HUB_AUTH)
        || parent_domain(&registry).is_some_and(|parent| parent == host)
        || named(trusted);
    if !own {
        return Some(format!(
            "the token realm {realm} is not on {registry_host}'s own host; credentials are \
             sent only to the registry (add the host to --registry-token-hosts to trust it)"
        ));
    }
    match realm.scheme() {
        "https" => None,
        "http" if is_loopback_registry(&with_port) || named(plain_http) => None,
        _ => Some(format!(
            "the token realm {realm} is not HTTPS; credentials go over plain HTTP only to loopback"
        )),
    }
}

/// `registry.gitlab.com` -> `gitlab.com`; none for a two-label name or an IP.
fn parent_domain(host: &str) -> Option<&str> {
    if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
        return None;
    }
    let (_, parent) = host.split_once('.')?;
    parent.contains('.').then_some(parent)
}

/// `host:port` -> `host` (IPv6 brackets kept).
fn host_of(registry: &str) -> &str {
    match registry.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.is_empty() => name,
        _ => registry,
    }
}

/// Why a redirect from `previous` (after `hops` requests) to `next` must not be
/// followed; `None` when it may. Never from HTTPS down to plain HTTP, plain HTTP
/// only to loopback, and a few hops at most. Cross-host redirects lose the
/// Authorization header on the way (reqwest strips it).
pub fn redirect_refusal(previous: &Url, next: &Url, hops: usize) -> Option<String> {
    if hops > MAX_REDIRECTS {
        return Some(format!("more than {MAX_REDIRECTS} redirects"));
    }
    match next.scheme() {
        "https" => None,
        "http" if previous.scheme() == "https" => Some(format!(
            "refused a redirect from HTTPS to plain HTTP ({next})"
        )),
        "http" if is_loopback_url(next) => None,
        _ => Some(format!("refused a redirect to {next}: not HTTPS")),
    }
}

fn is_loopback_url(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn registry_error(image: &ImageRef, message: impl Into<String>) -> Error {
    Error::Registry {
        image: image.to_string(),
        message: message.into(),
    }
}

impl RegistryClient {
    pub fn new(config: &RegistryConfig) -> Result<Self> {
        crate::tls::install_crypto_provider();
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let refusal = attempt.previous().last().and_then(|previous| {
                redirect_refusal(previous, attempt.url(), attempt.previous().len())
            });
            match refusal {
                Some(why) => attempt.error(why),
                None => attempt.follow(),
            }
        });
        let mut builder = reqwest::Client::builder()
            .user_agent(crate::kosli::USER_AGENT)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .redirect(redirects);
        if let Some(pem) = &config.ca_bundle {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Config(format!("invalid registry CA bundle: {e}")))?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| Error::Config(format!("failed to build the registry HTTP client: {e}")))?;
        Ok(Self {
            http,
            plain_http: config.plain_http.clone(),
            token_hosts: config.token_hosts.clone(),
            tokens: Mutex::new(BoundedMap::new(config.token_cache_entries)),
        })
    }

    /// The digest a reference points at: its own digest when it carries one (no
    /// network), else the registry's manifest digest for its tag (`latest` when
    /// it has none).
    pub async fn resolve(
        &self,
        image: &ImageRef,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<Digest> {
        if let Some(digest) = &image.digest {
            return Ok(digest.clone());
        }
        let tag = image.tag.as_deref().unwrap_or("latest");
        let url = self.manifest_url(image, tag)?;

        let head = self
            .request(image, reqwest::Method::HEAD, &url, credentials)
            .await?;
        match head.status() {
            StatusCode::OK => {
                if let Some(digest) = content_digest(head.headers()) {
                    return Ok(digest);
                }
            }
            StatusCode::NOT_FOUND => {
                return Err(registry_error(
                    image,
                    format!("tag {tag:?} not found in {}", image.name()),
                ));
            }
            // Some registries refuse HEAD (405) or answer it badly: GET decides.
            _ => {}
        }
        let get = self
            .request(image, reqwest::Method::GET, &url, credentials)
            .await?;
        let status = get.status();
        if status == StatusCode::NOT_FOUND {
            return Err(registry_error(
                image,
                format!("tag {tag:?} not found in {}", image.name()),
            ));
        }
        if !status.is_success() {
            return Err(registry_error(
                image,
                format!(
                    "registry answered HTTP {} for the manifest",
                    status.as_u16()
                ),
            ));
        }
        if let Some(digest) = content_digest(get.headers()) {
            return Ok(digest);
        }
        let hex = sha256_capped(get, "the manifest", MANIFEST_LIMIT)
            .await
            .map_err(|e| registry_error(image, chain(&e)))?;
        Ok(Digest {
            algorithm: "sha256".to_owned(),
            hex,
        })
    }

    fn base_url(&self, registry: &str) -> Result<Url> {
        let host = if registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            registry
        };
        let scheme = if is_loopback_registry(host) || self.plain_http.iter().any(|r| r == host) {
            "http"
        } else {
            "https"
        };
        // The registry comes from an image reference, not from our settings.
        Url::parse(&format!("{scheme}://{host}/")).map_err(|e| Error::Registry {
            image: registry.to_owned(),
            message: format!("invalid registry {registry:?}: {e}"),
        })
    }

    fn manifest_url(&self, image: &ImageRef, reference: &str) -> Result<Url> {
        let mut url = self.base_url(&image.registry)?;
        url.set_path(&format!("/v2/{}/manifests/{reference}", image.repository));
        Ok(url)
    }

    /// One request, answering an authentication challenge once if one comes.
    async fn request(
        &self,
        image: &ImageRef,
        method: reqwest::Method,
        url: &Url,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<reqwest::Response> {
        let key = TokenKey {
            registry: image.registry.clone(),
            repository: image.repository.clone(),
            credentials: credentials.map(RegistryCredentials::cache_key),
        };
        let cached = self.cached_token(&key);
        let response = self
            .send(
                image,
                method.clone(),
                url,
                cached.as_deref(),
                credentials,
                false,
            )
            .await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let retried = match challenge {
            Some(Challenge::Basic) => {
                if credentials.is_none() {
                    return Err(registry_error(
                        image,
                        format!(
                            "{} requires credentials and none were found",
                            image.registry
                        ),
                    ));
                }
                self.send(image, method, url, None, credentials, true)
                    .await?
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope =
                    scope.unwrap_or_else(|| format!("repository:{}:pull", image.repository));
                let token = self
                    .fetch_token(image, &realm, service.as_deref(), &scope, credentials)
                    .await?;
                self.store_token(key, &token);
                self.send(image, method, url, Some(&token.token), None, false)
                    .await?
            }
            None => {
                return Err(registry_error(
                    image,
                    "registry answered 401 without a usable WWW-Authenticate challenge",
                ));
            }
        };
        if retried.status() == StatusCode::UNAUTHORIZED || retried.status() == StatusCode::FORBIDDEN
        {
            return Err(registry_error(
                image,
                format!(
                    "{} refused the credentials (HTTP {})",
                    image.registry,
                    retried.status().as_u16()
                ),
            ));
        }
        Ok(retried)
    }

    async fn send(
        &self,
        image: &ImageRef,
        method: reqwest::Method,
        url: &Url,
        bearer: Option<&str>,
        credentials: Option<&RegistryCredentials>,
        basic: bool,
    ) -> Result<reqwest::Response> {
        let mut request = self
            .http
            .request(method, url.clone())
            .header(header::ACCEPT, MANIFEST_ACCEPT);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        } else if let (true, Some(c)) = (basic, credentials) {
            request = request.basic_auth(&c.username, Some(&c.password));
        }
        request.send().await.map_err(|e| {
            registry_error(
                image,
                format!("failed to reach {}: {}", image.registry, chain(&e)),
            )
        })
    }

    async fn fetch_token(
        &self,
        image: &ImageRef,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<CachedToken> {
        let mut url = Url::parse(realm)
            .map_err(|e| registry_error(image, format!("invalid token realm {realm:?}: {e}")))?;
        let registry = self.base_url(&image.registry)?;
        let registry_host = match registry.port() {
            Some(port) => format!("{}:{port}", registry.host_str().unwrap_or_default()),
            None => registry.host_str().unwrap_or_default().to_owned(),
        };
        if let Some(why) = realm_refusal(&registry_host, &url, &self.token_hosts, &self.plain_http)
        {
            return Err(registry_error(image, why));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let mut request = self.http.get(url);
        if let Some(c) = credentials {
            request = request.basic_auth(&c.username, Some(&c.password));
        }
        let response = request.send().await.map_err(|e| {
            registry_error(
                image,
                format!("failed to reach the token service {realm}: {}", chain(&e)),
            )
        })?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(registry_error(
                image,
                format!(
                    "the token service of {} refused the credentials (HTTP {})",
                    image.registry,
                    status.as_u16()
                ),
            ));
        }
        if !status.is_success() {
            return Err(registry_error(
                image,
                format!(
                    "the token service of {} answered HTTP {}",
                    image.registry,
                    status.as_u16()
                ),
            ));
        }
        let bytes = read_capped(response, "the token response", TOKEN_ANSWER_LIMIT)
            .await
            .map_err(|e| registry_error(image, chain(&e)))?;
        let body: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| registry_error(image, format!("unreadable token response: {e}")))?;
        let token = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| registry_error(image, "token response holds no token"))?;
        let lifetime = token_lifetime(body.expires_in.as_ref());
        let now = Instant::now();
        Ok(CachedToken {
            token,
            valid_until: now
                .checked_add(lifetime.saturating_sub(TOKEN_EXPIRY_MARGIN))
                .unwrap_or(now),
        })
    }

    fn cached_token(&self, key: &TokenKey) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(key)
            .filter(|t| t.valid_until > Instant::now())
            .map(|t| t.token.clone())
    }

    fn store_token(&self, key: TokenKey, token: &CachedToken) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.insert(key, token.clone());
    }
}

fn content_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .and_then(|v| Digest::parse(v.trim()).ok())
}

fn is_loopback_registry(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Parses `Basic realm="x"` or `Bearer realm="…",service="…",scope="…"`.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    for (key, value) in auth_params(params) {
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            "scope" => scope = Some(value),
            _ => {}
        }
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
        scope,
    })
}

/// `key="value", key2=value2` pairs; commas inside quotes (scopes have them) are kept.
fn auth_params(params: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (quoted[..end].to_owned(), &quoted[end + 1..]),
                None => (quoted.to_owned(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim().to_owned(), &after[end..]),
                None => (after.trim().to_owned(), ""),
            }
        };
        pairs.push((key, value));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge("Basic realm=\"Registry Realm\""),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge("Bearer realm=http://127.0.0.1:5/token, service=reg"),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:5/token".into(),
                service: Some("reg".into()),
                scope: None,
            })
        );
        assert_eq!(
            parse_challenge("Bearer service=\"x\""),
            None,
            "a realm is required"
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        for host in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.9.9.9",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback_registry(host), "{host}");
        }
        for host in [
            "docker.io",
            "10.0.0.1:5000",
            "registry.local:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback_registry(host), "{host}");
        }
        let client = RegistryClient::new(&RegistryConfig::default()).unwrap();
        assert_eq!(
            client.base_url("127.0.0.1:5000").unwrap().as_str(),
            "http://127.0.0.1:5000/"
        );
        assert_eq!(
            client.base_url("docker.io").unwrap().as_str(),
            "https://registry-1.docker.io/"
        );
        assert_eq!(
            client.base_url("ghcr.io").unwrap().as_str(),
            "https://ghcr.io/"
        );
    }

    #[test]
    fn credentials_are_redacted() {
        let c = RegistryCredentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn token_lifetimes_are_capped_and_nonsense_is_the_default() {
        let life = |v: serde_json::Value| token_lifetime(Some(&v));
        assert_eq!(token_lifetime(None), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(life(serde_json::json!(300)), Duration::from_secs(300));
        assert_eq!(life(serde_json::json!(u64::MAX)), MAX_TOKEN_LIFETIME);
        for nonsense in [
            serde_json::json!(0),
            serde_json::json!(-5),
            serde_json::json!(1.5e300),
            serde_json::json!("300"),
            serde_json::json!(null),
        ] {
            assert_eq!(life(nonsense.clone()), DEFAULT_TOKEN_LIFETIME, "{nonsense}");
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn credentials_follow_a_realm_only_to_their_registry() {
        let none: &[String] = &[];
        let allowed = [
            ("ghcr.io", "https://ghcr.io/token"),
            (
                "registry.example.com:5000",
                "https://registry.example.com/auth",
            ),
            ("registry-1.docker.io", "https://auth.docker.io/token"),
            ("registry.gitlab.com", "https://gitlab.com/jwt/auth"),
            ("127.0.0.1:5000", "http://127.0.0.1:5001/token"),
            ("[::1]:5000", "http://[::1]:7/token"),
            ("localhost:5000", "http://localhost/token"),
        ];
        for (registry, realm) in allowed {
            assert_eq!(
                realm_refusal(registry, &url(realm), none, none),
                None,
                "{registry} -> {realm}"
            );
        }
        let elsewhere = [
            ("ghcr.io", "https://evil.example/token"),
            ("ghcr.io", "https://ghcr.io.evil.example/token"),
            ("registry.gitlab.com", "https://evilgitlab.com/token"),
            // A two-label registry has no parent to trust: "io" is not an owner.
            ("ghcr.io", "https://io/token"),
            ("quay.io", "https://auth.docker.io/token"),
            ("127.0.0.1:5000", "http://localhost:5001/token"),
            ("10.0.0.1:5000", "https://0.0.1/token"),
        ];
        for (registry, realm) in elsewhere {
            let why = realm_refusal(registry, &url(realm), none, none)
                .unwrap_or_else(|| panic!("{registry} -> {realm} allowed"));
            assert!(why.contains("not on"), "{why}");
        }
        let trusted = vec![
            "auth.example.com".to_owned(),
            "tokens.example:8443".to_owned(),
        ];
        assert_eq!(
            realm_refusal(
                "ghcr.io",
                &url("https://AUTH.example.com/t"),
                &trusted,
                none
            ),
            None
        );
        assert_eq!(
            realm_refusal(
                "ghcr.io",
                &url("https://tokens.example:8443/t"),
                &trusted,
                none
            ),
            None
        );
        assert!(
            realm_refusal("ghcr.io", &url("https://tokens.example/t"), &trusted, none).is_some()
        );
    }

    #[test]
    fn credentials_follow_a_realm_over_plain_http_only_to_loopback() {
        let none: &[String] = &[];
        let trusted = vec!["auth.example.com".to_owned()];
        let why =
            realm_refusal("ghcr.io", &url("http://auth.example.com/t"), &trusted, none).unwrap();
        assert_eq!(
            why,
            "the token realm http://auth.example.com/t is not HTTPS; credentials go over plain \
             HTTP only to loopback"
        );
        assert!(realm_refusal("ghcr.io", &url("http://ghcr.io/token"), none, none).is_some());
        assert!(realm_refusal("ghcr.io", &url("ftp://ghcr.io/token"), none, none).is_some());
        // A registry the operator was told speaks plain HTTP may hand out tokens so.
        let insecure = vec!["registry.lan:5000".to_owned()];
        assert_eq!(
            realm_refusal(
                "registry.lan:5000",
                &url("http://registry.lan:5000/token"),
                none,
                &insecure
            ),
            None
        );
    }

    #[test]
    fn redirects_never_go_from_https_to_http_nor_far() {
        let https = url("https://ghcr.io/v2/x/manifests/1");
        let http_loop = url("http://127.0.0.1:5000/v2/x/manifests/1");
        assert_eq!(
            redirect_refusal(&https, &url("https://cdn.example/blob"), 1),
            None
        );
        assert_eq!(
            redirect_refusal(&https, &url("http://cdn.example/blob"), 1).as_deref(),
            Some("refused a redirect from HTTPS to plain HTTP (http://cdn.example/blob)")
        );
        assert!(redirect_refusal(&https, &url("http://127.0.0.1/blob"), 1).is_some());
        assert_eq!(
            redirect_refusal(&http_loop, &url("http://localhost:1/b"), 1),
            None
        );
        assert!(redirect_refusal(&http_loop, &url("http://10.0.0.1/b"), 1).is_some());
        assert!(redirect_refusal(&https, &url("https://a.example/"), MAX_REDIRECTS).is_none());
        assert_eq!(
            redirect_refusal(&https, &url("https://a.example/"), MAX_REDIRECTS + 1).as_deref(),
            Some("more than 3 redirects")
        );
    }

    #[test]
    fn cache_keys_are_the_whole_credentials() {
        let c = |u: &str, p: &str| RegistryCredentials {
            username: u.into(),
            password: p.into(),
        };
        assert_eq!(c("u", "p").cache_key(), c("u", "p").cache_key());
        assert_ne!(c("u", "old").cache_key(), c("u", "new").cache_key());
        assert_ne!(c("ab", "c").cache_key(), c("a", "bc").cache_key());
        assert!(!c("u", "hunter2").cache_key().contains("hunter2"));
    }

    #[tokio::test]
    async fn a_digest_in_the_reference_is_used_without_asking() {
        let client = RegistryClient::new(&RegistryConfig::default()).unwrap();
        let hex = "a".repeat(64);
        // Port 9 on loopback: any request would fail.
        let image = ImageRef::parse(&format!("127.0.0.1:9/app:1@sha256:{hex}")).unwrap();
        assert_eq!(client.resolve(&image, None).await.unwrap().hex, hex);
    }
}
