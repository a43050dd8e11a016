//! The one error type of the crate.
//!
//! Messages read "failed to …" and name what was being done; the source error is
//! carried, not repeated: the CLI and logs print [`chain`]. Kosli errors keep the
//! HTTP status and Kosli's own message because they end up in status conditions,
//! logs and exit messages. No variant ever carries the API token.
//!
//! Kinds: the user's input ([`Error::is_usage`]: flags, settings, files, the
//! kubeconfig, the webhook certificate), Kubernetes API calls, Kosli, registries,
//! images, admission requests, local I/O and metrics set-up. This module depends
//! on nothing else in the crate, so every layer may use it.

use std::path::PathBuf;
use std::sync::Arc;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting, flag, config file entry or CRD field that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A config file that cannot be used; the source says where and why.
    #[error("invalid config file {}", path.display())]
    InvalidConfigFile {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },

    /// Config file text that cannot be used: `problem` names the entry at
    /// fault (`environments[0]: name is required`); `source` is the YAML or
    /// entry error behind it, if there is one.
    #[error("{problem}")]
    ConfigEntry {
        problem: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// A duration flag that is not one (`500ms`, `2s`, `5m`, `1h`, seconds).
    #[error("{text:?} {problem}")]
    InvalidDuration {
        text: String,
        problem: String,
        #[source]
        source: Option<std::time::TryFromFloatSecsError>,
    },

    /// A namespace regex that does not compile; `reason` is the regex error's
    /// last line ("unclosed group"), without the multi-line caret diagram.
    #[error("invalid {kind} namespace regex {pattern:?}: {reason}")]
    InvalidRegex {
        kind: &'static str,
        pattern: String,
        reason: String,
    },

    /// A Kubernetes label selector that cannot be evaluated.
    #[error("invalid {field}: {message}")]
    InvalidSelector {
        field: &'static str,
        message: String,
    },

    #[error("failed to read {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Input that should be a v1 List of pods (or one pod in it) and is not.
    #[error("failed to parse pod list from {origin}: {message}")]
    PodList { origin: String, message: String },

    /// The Kubernetes client could not be configured; `origin` says from what
    /// (a kubeconfig path, or the usual inference).
    #[error("failed to configure the Kubernetes client from {origin}")]
    KubeConfig {
        origin: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A webhook certificate or key that cannot be served; `problem` names the
    /// file at fault. Unreadable files carry the I/O error, broken ones the
    /// TLS library's.
    #[error("webhook TLS: {problem}")]
    WebhookCertificate {
        problem: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// A Kubernetes API call failed; `action` says what was asked ("list pods
    /// in namespace shop"). Listing pods failing fails the environment that
    /// needed them: it is never reported as fewer pods.
    #[error("failed to {action}")]
    Kube {
        action: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// A local I/O failure at run time: binding a port, installing a signal
    /// handler. `what` says what was being done ("listen on --http-addr …").
    #[error("failed to {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// The metrics registry refused a metric (a duplicate or invalid name).
    #[error("failed to set up metrics")]
    Metrics(#[source] prometheus::Error),

    /// Kosli answered with a status other than 200/201.
    #[error("Kosli {method} {path} failed with HTTP {status}: {message}")]
    KosliStatus {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
        /// The wait Kosli asked for (429/503 with `Retry-After`).
        retry_after: Option<std::time::Duration>,
    },

    /// No HTTP answer from Kosli: connect, TLS, timeout or a broken body.
    #[error("Kosli {method} {path} failed: {message}")]
    KosliTransport {
        method: &'static str,
        path: String,
        message: String,
        /// A TLS certificate that did not verify: retrying cannot help.
        certificate: bool,
    },

    /// The Kosli environment exists with a type that cannot take K8S reports.
    #[error(
        "Kosli environment {name:?} exists with type {found:?}; a K8S report needs type \"K8S\""
    )]
    EnvironmentType { name: String, found: String },

    /// Kosli answered 200 with a body we cannot read.
    #[error("failed to decode Kosli's answer to {method} {path}: {message}")]
    KosliDecode {
        method: &'static str,
        path: String,
        message: String,
    },

    /// An image reference the gate was asked to check does not parse.
    #[error("invalid image reference")]
    InvalidImageReference(#[source] ImageError),

    /// A digest or image ID that cannot serve as a Kosli fingerprint.
    #[error(transparent)]
    Image(#[from] ImageError),

    /// An admission request body that is not a usable AdmissionReview; the
    /// API server gets `problem` and the source as a 400 answer.
    #[error("{problem}")]
    InvalidReview {
        problem: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A break-glass annotation that is not honoured; `problem` says why
    /// (a workload warning, not a failure).
    #[error("{problem}")]
    BreakGlass {
        problem: String,
        #[source]
        source: Option<jiff::Error>,
    },

    /// A pull secret whose `.dockerconfigjson` does not parse. Only where and
    /// what kind of error: serde_json's own message quotes the input, which
    /// here is credentials.
    #[error("invalid .dockerconfigjson: {category} error at line {line}, column {column}")]
    DockerConfig {
        category: &'static str,
        line: usize,
        column: usize,
    },

    /// A registry could not tell the digest of an image.
    #[error("failed to resolve {image}: {message}")]
    Registry { image: String, message: String },

    /// A document this program renders (the CRD) could not be rendered.
    #[error("failed to render {what} as YAML")]
    RenderYaml {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("failed to serialize {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// An HTTP answer whose body is over what we read of it: registries and
    /// Kosli are read with a cap so that an endless body cannot exhaust memory.
    #[error("{what} is larger than {}{}", size_text(*limit), declared.map(|d| format!(" (it declares {d} bytes)")).unwrap_or_default())]
    BodyTooLarge {
        what: &'static str,
        limit: u64,
        /// The Content-Length the answer declared, when that alone refused it.
        declared: Option<u64>,
    },

    /// The connection failed while an answer's body was being read.
    #[error("failed to read {what}")]
    BodyRead {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },

    /// A shared gate lookup that ended without an answer of its own: it ran
    /// out of its time or panicked. `what` names it ("the registry lookup").
    #[error("{what} {problem}")]
    Lookup { what: &'static str, problem: String },

    /// A write to Kosli not started, or abandoned in flight, because this
    /// process may no longer write: it lost (or could not confirm) leadership,
    /// or it is shutting down. Nothing failed at Kosli.
    #[error("Kosli {method} {path} {why}")]
    WriteFenced {
        method: &'static str,
        path: String,
        why: &'static str,
    },

    /// One error seen by every caller that waited on the same in-flight lookup
    /// (a shared future's output must be `Clone`).
    #[error(transparent)]
    Shared(Arc<Error>),
}

/// `4 MiB`, `512 KiB` or `100 bytes`: body limits as people write them.
fn size_text(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Statuses worth retrying: 429, 409 (a transient lock on Kosli's side) and 5xx
/// except 501 (Not Implemented will not change). Here rather than in
/// `kosli::retry` so that this module depends on nothing else in the crate.
pub fn is_retryable_status(status: u16) -> bool {
    status == 429 || status == 409 || ((500..600).contains(&status) && status != 501)
}

/// Why a reference, digest or image ID cannot be used (parsed in
/// `core::fingerprint`). A small type of its own, wrapped by `Error::Image`
/// and `Error::InvalidImageReference`: pod records keep it (why a container is
/// not reported), so it must be `Clone` and `Eq`, which `Error` (holding I/O
/// and HTTP errors) cannot be. The texts are those of the snapshot warnings
/// and the gate's denials: keep them as they are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("{0:?} is not a digest (algorithm:hex)")]
    NotADigest(String),
    #[error("{0:?} has an invalid digest algorithm")]
    DigestAlgorithm(String),
    #[error("{digest:?} uses the unsupported digest algorithm {algorithm}")]
    UnsupportedAlgorithm { digest: String, algorithm: String },
    #[error("{digest:?} is not a valid {algorithm} digest ({want} lowercase hex characters)")]
    DigestHex {
        digest: String,
        algorithm: String,
        want: usize,
    },
    #[error("digest {0} is not sha256, which is what Kosli fingerprints are")]
    NotSha256(String),
    #[error("empty image reference")]
    EmptyReference,
    #[error("{0:?} is an image ID, not a repository name")]
    ImageIdAsName(String),
    #[error("{reference:?} has an invalid tag {tag:?}")]
    Tag { reference: String, tag: String },
    #[error("{0:?} is invalid: repository names must be lowercase")]
    Uppercase(String),
    #[error("{reference:?} has an invalid registry {registry:?}")]
    Registry { reference: String, registry: String },
    #[error("{reference:?} has an invalid repository name {repository:?}")]
    Repository {
        reference: String,
        repository: String,
    },
    #[error("{reference:?} is invalid: the repository name is longer than {max} characters")]
    TooLong { reference: String, max: usize },
    #[error("{0:?} is not a sha256 fingerprint (64 lowercase hex characters)")]
    NotAFingerprint(String),
    #[error("empty image ID")]
    EmptyImageId,
    #[error("image ID {0:?} has no digest")]
    NoDigest(String),
    /// The source is in the text too: the warnings have always said it.
    #[error("unparseable image ID {image_id:?}: {source}")]
    UnparseableImageId {
        image_id: String,
        #[source]
        source: Box<ImageError>,
    },
}

/// An error and its sources, joined: HTTP client errors say little on their own
/// ("error sending request"); the cause is in the chain.
/// Where and what kind of JSON error, without serde_json's own message:
/// that quotes the input, which may be credentials or a workload's secrets.
pub fn json_error_position(e: &serde_json::Error) -> (&'static str, usize, usize) {
    use serde_json::error::Category;
    let category = match e.classify() {
        Category::Io => "read",
        Category::Syntax => "syntax",
        Category::Data => "structure",
        Category::Eof => "truncation",
    };
    (category, e.line(), e.column())
}

pub fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = e.source();
    }
    message
}

impl Error {
    /// Whether retrying the same request later can succeed. Permanent errors
    /// (bad credentials, wrong environment type, invalid input) wait for a change.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::KosliStatus { status, .. } => is_retryable_status(*status),
            Error::KosliTransport { certificate, .. } => !certificate,
            // RBAC refusals and bad credentials wait for a change; the rest may pass.
            Error::Kube { source, .. } => !matches!(
                source.as_ref(),
                kube::Error::Api(status) if status.code == 401 || status.code == 403
            ),
            Error::Shared(inner) => inner.is_transient(),
            _ => false,
        }
    }

    /// Whether the error is the user's input: flags, settings, files, the
    /// kubeconfig. Commands exit with 2 for these (as clap does for bad flags)
    /// and with 1 for everything that failed while running.
    pub fn is_usage(&self) -> bool {
        match self {
            Error::Config(_)
            | Error::InvalidConfigFile { .. }
            | Error::ConfigEntry { .. }
            | Error::InvalidDuration { .. }
            | Error::InvalidRegex { .. }
            | Error::InvalidSelector { .. }
            | Error::ReadFile { .. }
            | Error::PodList { .. }
            | Error::KubeConfig { .. }
            | Error::WebhookCertificate { .. } => true,
            Error::Shared(inner) => inner.is_usage(),
            Error::Kube { .. }
            | Error::Io { .. }
            | Error::Metrics(_)
            | Error::KosliStatus { .. }
            | Error::KosliTransport { .. }
            | Error::EnvironmentType { .. }
            | Error::KosliDecode { .. }
            | Error::Registry { .. }
            | Error::InvalidImageReference(_)
            | Error::InvalidReview { .. }
            | Error::BreakGlass { .. }
            | Error::DockerConfig { .. }
            | Error::Image(_)
            | Error::RenderYaml { .. }
            | Error::Serialize { .. }
            | Error::BodyTooLarge { .. }
            | Error::BodyRead { .. }
            | Error::Lookup { .. }
            | Error::WriteFenced { .. } => false,
        }
    }

    /// The wait Kosli asked for with `Retry-After`, if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::KosliStatus { retry_after, .. } => *retry_after,
            Error::Shared(inner) => inner.retry_after(),
            _ => None,
        }
    }

    /// The HTTP status Kosli answered with, if it answered.
    pub fn kosli_status(&self) -> Option<u16> {
        match self {
            Error::KosliStatus { status, .. } => Some(*status),
            Error::Shared(inner) => inner.kosli_status(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_the_users_input_and_run_time_failures_are_not() {
        let io = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert!(Error::Config("x".to_owned()).is_usage());
        assert!(
            Error::ReadFile {
                path: "/x".into(),
                source: io()
            }
            .is_usage()
        );
        let bind = Error::Io {
            what: "listen on --http-addr 0.0.0.0:8080".to_owned(),
            source: io(),
        };
        assert!(!bind.is_usage());
        assert_eq!(
            bind.to_string(),
            "failed to listen on --http-addr 0.0.0.0:8080"
        );
        assert!(chain(&bind).starts_with("failed to listen on --http-addr 0.0.0.0:8080: "));
        assert!(!Error::Metrics(prometheus::Error::Msg("dup".to_owned())).is_usage());
        let shared = Error::Shared(Arc::new(Error::Config("x".to_owned())));
        assert!(shared.is_usage());
        assert_eq!(shared.to_string(), "invalid configuration: x");
    }

    #[test]
    fn body_limits_read_as_people_write_them() {
        let big = |limit, declared| Error::BodyTooLarge {
            what: "the manifest",
            limit,
            declared,
        };
        assert_eq!(
            big(4 << 20, None).to_string(),
            "the manifest is larger than 4 MiB"
        );
        assert_eq!(
            big(512 << 10, Some(1 << 30)).to_string(),
            "the manifest is larger than 512 KiB (it declares 1073741824 bytes)"
        );
        assert_eq!(
            big(100, None).to_string(),
            "the manifest is larger than 100 bytes"
        );
    }
}
