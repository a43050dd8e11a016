//! Image references and the fingerprints inside container `imageID`s.
//!
//! The grammar is the one container runtimes and Docker's reference library use:
//! `[registry/]repository[:tag][@algorithm:hex]`, with Docker Hub as the default
//! registry and `library/` as its default namespace. Kosli fingerprints are sha256
//! digests as 64 lowercase hex characters.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

/// The registry a reference without one points at.
pub const DOCKER_HUB: &str = "docker.io";

fn anchored(pattern: &str) -> Regex {
    // The patterns are constants of this module; a typo fails every test at once.
    #[allow(clippy::expect_used)]
    Regex::new(&format!("^(?:{pattern})$")).expect("constant regex compiles")
}

static HEX64: LazyLock<Regex> = LazyLock::new(|| anchored("[a-f0-9]{64}"));
static DOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    anchored(
        r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?|\[[a-fA-F0-9:]+\](?::[0-9]+)?",
    )
});
static PATH_COMPONENT: LazyLock<Regex> =
    LazyLock::new(|| anchored(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"));
// ASCII, as in the reference grammar: the regex crate's `\w` is any Unicode
// word character, which would pass tags registries refuse, and its 128-fold
// repetition compiled to a 15 MB program, 8 MB of it held for good.
static TAG: LazyLock<Regex> = LazyLock::new(|| anchored(r"[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127}"));
static DIGEST_ALGORITHM: LazyLock<Regex> =
    LazyLock::new(|| anchored(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*"));

const MAX_NAME_LEN: usize = 255;

/// Why a reference, digest or image ID cannot be used (defined with the
/// crate's error type, which depends on nothing).
pub use crate::error::ImageError;

/// A content digest such as `sha256:<64 hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Digest {
    pub algorithm: String,
    pub hex: String,
}

impl Digest {
    /// Parses `algorithm:hex`, validating the encoded part of the algorithms
    /// registries use (sha256, sha384, sha512).
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let (algorithm, hex) = s
            .split_once(':')
            .ok_or_else(|| ImageError::NotADigest(s.to_owned()))?;
        if !DIGEST_ALGORITHM.is_match(algorithm) {
            return Err(ImageError::DigestAlgorithm(s.to_owned()));
        }
        let want = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            other => {
                return Err(ImageError::UnsupportedAlgorithm {
                    digest: s.to_owned(),
                    algorithm: other.to_owned(),
                });
            }
        };
        if hex.len() != want || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ImageError::DigestHex {
                digest: s.to_owned(),
                algorithm: algorithm.to_owned(),
                want,
            });
        }
        Ok(Digest {
            algorithm: algorithm.to_owned(),
            hex: hex.to_owned(),
        })
    }

    /// The Kosli fingerprint: the hex of a sha256 digest.
    pub fn sha256_hex(&self) -> Result<&str, ImageError> {
        if self.algorithm == "sha256" {
            Ok(&self.hex)
        } else {
            Err(ImageError::NotSha256(self.to_string()))
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

/// A normalised image reference: registry and repository always present.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host (and port), `docker.io` for Docker Hub.
    pub registry: String,
    /// Repository path within the registry, `library/nginx` for `nginx`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and normalises a reference the way container runtimes do
    /// (`nginx` -> `docker.io/library/nginx`). A bare 64-hex string is refused:
    /// it is an image ID, not a repository.
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        if reference.is_empty() {
            return Err(ImageError::EmptyReference);
        }
        if HEX64.is_match(reference) {
            return Err(ImageError::ImageIdAsName(reference.to_owned()));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => (rest, Some(Digest::parse(digest)?)),
            None => (reference, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag
            && !TAG.is_match(tag)
        {
            return Err(ImageError::Tag {
                reference: reference.to_owned(),
                tag: tag.to_owned(),
            });
        }
        let (registry, repository) = split_registry(name);
        if repository.to_lowercase() != repository {
            return Err(ImageError::Uppercase(reference.to_owned()));
        }
        if !DOMAIN.is_match(registry) {
            return Err(ImageError::Registry {
                reference: reference.to_owned(),
                registry: registry.to_owned(),
            });
        }
        if repository.is_empty() || !repository.split('/').all(|c| PATH_COMPONENT.is_match(c)) {
            return Err(ImageError::Repository {
                reference: reference.to_owned(),
                repository: repository.to_owned(),
            });
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(ImageError::TooLong {
                reference: reference.to_owned(),
                max: MAX_NAME_LEN,
            });
        }
        Ok(ImageRef {
            registry: registry.to_owned(),
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// `registry/repository`, e.g. `docker.io/library/nginx`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, dropping any digest; `None` when untagged.
    pub fn tagged_name(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|tag| format!("{}:{tag}", self.name()))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Splits a name into registry and repository: the first component is a registry
/// when it looks like a host (has '.', ':', is `localhost`, or has upper case).
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            let registry = if first == "index.docker.io" {
                DOCKER_HUB
            } else {
                first
            };
            (registry, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

/// What a reference that may be a bare digest turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnyReference {
    /// `sha256:<hex>` or 64 bare hex characters: an image ID.
    Digest(Digest),
    Named(ImageRef),
}

impl AnyReference {
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        if HEX64.is_match(s) {
            return Ok(AnyReference::Digest(Digest {
                algorithm: "sha256".to_owned(),
                hex: s.to_owned(),
            }));
        }
        // `sha256:abc` would parse as repository "sha256" tagged "abc"; a known
        // algorithm prefix without a '/' is a (possibly malformed) digest instead.
        let looks_like_digest = !s.contains('/')
            && ["sha256:", "sha384:", "sha512:"]
                .iter()
                .any(|p| s.starts_with(p));
        if looks_like_digest {
            return Digest::parse(s).map(AnyReference::Digest);
        }
        ImageRef::parse(s).map(AnyReference::Named)
    }
}

/// Whether `image` names a repository, as opposed to being a bare image ID or garbage.
pub fn is_named(image: &str) -> bool {
    matches!(AnyReference::parse(image), Ok(AnyReference::Named(_)))
}

/// Drops the `docker-pullable://` or `docker://` prefix dockershim puts on image IDs.
pub fn trim_runtime_prefix(image_id: &str) -> &str {
    image_id
        .split_once("://")
        .map_or(image_id, |(_, rest)| rest)
}

/// Where a fingerprint came from, which decides whether CI can ever have attested it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FingerprintKind {
    /// A registry manifest (or index) digest: what CI pushed and attested.
    RegistryDigest,
    /// An image config ID (side-loaded or locally built images, some CRI-O
    /// reports): reported for parity but it will never match a CI attestation.
    ConfigId,
}

/// The fingerprint Kosli records for a running container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// 64 lowercase hex characters.
    pub hex: String,
    pub kind: FingerprintKind,
}

/// Reads the fingerprint out of a container status `imageID`, in every form runtimes
/// use: `repo@sha256:…` (containerd, CRI-O), `docker-pullable://repo@sha256:…`,
/// `docker://sha256:…`, `sha256:…` and bare 64-hex IDs. The error says why an
/// imageID is unusable (empty, no digest, not sha256, malformed).
pub fn parse_image_id(image_id: &str) -> Result<Fingerprint, ImageError> {
    if image_id.is_empty() {
        return Err(ImageError::EmptyImageId);
    }
    let trimmed = trim_runtime_prefix(image_id);
    let (digest, kind) = match AnyReference::parse(trimmed) {
        Ok(AnyReference::Digest(digest)) => (digest, FingerprintKind::ConfigId),
        Ok(AnyReference::Named(ImageRef {
            digest: Some(digest),
            ..
        })) => (digest, FingerprintKind::RegistryDigest),
        Ok(AnyReference::Named(_)) => {
            return Err(ImageError::NoDigest(trimmed.to_owned()));
        }
        Err(e) => {
            return Err(ImageError::UnparseableImageId {
                image_id: trimmed.to_owned(),
                source: Box::new(e),
            });
        }
    };
    Ok(Fingerprint {
        hex: digest.sha256_hex()?.to_owned(),
        kind,
    })
}

/// Whether `s` is a valid Kosli fingerprint (64 lowercase hex characters).
pub fn is_sha256_hex(s: &str) -> bool {
    HEX64.is_match(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "644a70516a26004c97d0d85c7fe1d0c3a67ea8ab7ddf4aff193d9f301670cf36";

    fn image(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn image_id_containerd_is_a_registry_digest() {
        let f = parse_image_id(&format!("docker.io/library/nginx@sha256:{HEX}")).unwrap();
        assert_eq!(f.hex, HEX);
        assert_eq!(f.kind, FingerprintKind::RegistryDigest);
    }

    #[test]
    fn image_id_docker_pullable_is_a_registry_digest() {
        let f = parse_image_id(&format!("docker-pullable://nginx@sha256:{HEX}")).unwrap();
        assert_eq!(
            (f.hex.as_str(), f.kind),
            (HEX, FingerprintKind::RegistryDigest)
        );
    }

    #[test]
    fn image_id_crio_with_registry_port() {
        let f = parse_image_id(&format!("quay.io:443/org/app@sha256:{HEX}")).unwrap();
        assert_eq!(
            (f.hex.as_str(), f.kind),
            (HEX, FingerprintKind::RegistryDigest)
        );
    }

    #[test]
    fn image_id_docker_config_id() {
        let f = parse_image_id(&format!("docker://sha256:{HEX}")).unwrap();
        assert_eq!((f.hex.as_str(), f.kind), (HEX, FingerprintKind::ConfigId));
    }

    #[test]
    fn image_id_bare_sha256_is_a_config_id() {
        let f = parse_image_id(&format!("sha256:{HEX}")).unwrap();
        assert_eq!((f.hex.as_str(), f.kind), (HEX, FingerprintKind::ConfigId));
    }

    #[test]
    fn image_id_bare_hex_crio_is_a_config_id() {
        let f = parse_image_id(HEX).unwrap();
        assert_eq!((f.hex.as_str(), f.kind), (HEX, FingerprintKind::ConfigId));
    }

    #[test]
    fn image_id_unusable_forms_say_why() {
        let err = |id: &str| parse_image_id(id).unwrap_err().to_string();
        assert_eq!(err(""), "empty image ID");
        assert!(err("docker.io/library/nginx:1.25").contains("has no digest"));
        assert!(err(&format!("sha512:{HEX}{HEX}")).contains("not sha256"));
        assert!(err("sha256:abc").contains("unparseable"));
        let upper = HEX.to_uppercase();
        assert!(parse_image_id(&format!("sha256:{upper}")).is_err());
        assert!(parse_image_id(&format!("nginx@sha256:{}", &HEX[..63])).is_err());
    }

    #[test]
    fn docker_hub_defaults() {
        let r = image("nginx");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/nginx")
        );
        assert_eq!(r.tag, None);
        assert_eq!(
            image("nginx:1.25").tagged_name().as_deref(),
            Some("docker.io/library/nginx:1.25")
        );
        assert_eq!(image("bitnami/redis:7").name(), "docker.io/bitnami/redis");
        assert_eq!(
            image("index.docker.io/library/nginx:1").name(),
            "docker.io/library/nginx"
        );
        assert_eq!(image("docker.io/nginx").name(), "docker.io/library/nginx");
    }

    #[test]
    fn registries_with_ports_dots_and_localhost() {
        let r = image("localhost:5000/team/app:v1.2.3");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "team/app")
        );
        assert_eq!(r.tag.as_deref(), Some("v1.2.3"));
        assert_eq!(image("localhost/app").registry, "localhost");
        assert_eq!(image("ghcr.io/org/sub/app:main").repository, "org/sub/app");
        assert_eq!(image("127.0.0.1:5000/app").registry, "127.0.0.1:5000");
        assert_eq!(image("[::1]:5000/app").registry, "[::1]:5000");
        assert_eq!(image("Registry/app").registry, "Registry");
    }

    #[test]
    fn tag_and_digest_together() {
        let r = image(&format!("nginx:1.25@sha256:{HEX}"));
        assert_eq!(r.tag.as_deref(), Some("1.25"));
        assert_eq!(r.digest.as_ref().map(|d| d.hex.as_str()), Some(HEX));
        assert_eq!(
            r.tagged_name().as_deref(),
            Some("docker.io/library/nginx:1.25")
        );
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/nginx:1.25@sha256:{HEX}")
        );
        let untagged = image(&format!("nginx@sha256:{HEX}"));
        assert_eq!(untagged.tagged_name(), None);
    }

    #[test]
    fn invalid_references_are_refused() {
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "nginx:-bad",
            "nginx:vé",
            "nginx:\u{ff11}",
            "nginx:.hidden",
            "nginx@sha256:short",
            "nginx@md5:0123",
            "reg.io/UPPER/app",
            "a//b",
            "app/",
            HEX,
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("reg.io/{}", "a".repeat(260));
        assert!(ImageRef::parse(&long).is_err());
        let long_tag = format!("app:{}", "a".repeat(129));
        assert!(ImageRef::parse(&long_tag).is_err());
    }

    #[test]
    fn tags_are_the_grammar_s_ascii_words() {
        for good in ["app:v1.2_3-rc", "app:_x", "app:Latest", "app:1"] {
            assert!(ImageRef::parse(good).is_ok(), "{good:?} should be accepted");
        }
        let longest = format!("app:{}", "a".repeat(128));
        assert!(ImageRef::parse(&longest).is_ok());
    }

    #[test]
    fn any_reference_tells_ids_from_names() {
        assert!(!is_named(&format!("sha256:{HEX}")));
        assert!(!is_named(HEX));
        assert!(!is_named(""));
        assert!(is_named("nginx:1.25"));
        assert!(is_named(&format!("nginx@sha256:{HEX}")));
    }

    #[test]
    fn runtime_prefixes_are_trimmed() {
        assert_eq!(
            trim_runtime_prefix("docker-pullable://nginx@sha256:x"),
            "nginx@sha256:x"
        );
        assert_eq!(trim_runtime_prefix("docker://sha256:x"), "sha256:x");
        assert_eq!(trim_runtime_prefix("nginx"), "nginx");
    }
}
