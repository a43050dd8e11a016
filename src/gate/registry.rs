//! Tag -> digest: asks a registry for the digest of a manifest, the way container
//! runtimes address it (Docker Registry HTTP API v2 / OCI distribution).
//!
//! The digest is the top-level one: for a multi-platform image it is the index
//! digest, which is what CI pushes and attests. HEAD first (cheap, and not counted
//! against Docker Hub's pull limits), GET when HEAD gives no digest. Anonymous,
//! Basic, and the Bearer token flow; registry tokens are cached until they expire.
//! Registries on loopback are spoken to over plain HTTP, as container runtimes do;
//! all others over verified HTTPS.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::core::fingerprint::{DOCKER_HUB, Digest, ImageRef};
use crate::error::{Error, Result, chain};

/// Every manifest media type we accept: the index kinds first, so a registry that
/// negotiates returns the top-level object for multi-platform images.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Docker Hub's API host: `docker.io` names it but does not serve it.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

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

#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Extra PEM CA certificates trusted for registries.
    pub ca_bundle: Option<Vec<u8>>,
    /// Registries (host[:port]) spoken to over plain HTTP although not on loopback.
    pub plain_http: Vec<String>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            ca_bundle: None,
            plain_http: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    plain_http: Vec<String>,
    /// Bearer tokens by (registry, repository) and the credentials they were minted for.
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct TokenKey {
    registry: String,
    repository: String,
    username: Option<String>,
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
    expires_in: Option<u64>,
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
        let mut builder = reqwest::Client::builder()
            .user_agent(crate::kosli::USER_AGENT)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout);
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
            tokens: Mutex::new(HashMap::new()),
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
        let body = get
            .bytes()
            .await
            .map_err(|e| registry_error(image, format!("failed to read the manifest: {e}")))?;
        Ok(Digest {
            algorithm: "sha256".to_owned(),
            hex: hex::encode(Sha256::digest(&body)),
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
            username: credentials.map(|c| c.username.clone()),
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
        let bytes = response.bytes().await.map_err(|e| {
            registry_error(image, format!("failed to read the token response: {e}"))
        })?;
        let body: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| registry_error(image, format!("unreadable token response: {e}")))?;
        let token = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| registry_error(image, "token response holds no token"))?;
        let lifetime = body
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        Ok(CachedToken {
            token,
            valid_until: Instant::now() + lifetime.saturating_sub(TOKEN_EXPIRY_MARGIN),
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
        tokens.retain(|_, t| t.valid_until > Instant::now());
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

    #[tokio::test]
    async fn a_digest_in_the_reference_is_used_without_asking() {
        let client = RegistryClient::new(&RegistryConfig::default()).unwrap();
        let hex = "a".repeat(64);
        // Port 9 on loopback: any request would fail.
        let image = ImageRef::parse(&format!("127.0.0.1:9/app:1@sha256:{hex}")).unwrap();
        assert_eq!(client.resolve(&image, None).await.unwrap().hex, hex);
    }
}
