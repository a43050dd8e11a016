//! The one error type of the crate.
//!
//! Messages read "failed to …" and name what was being done; the source error is
//! carried, not repeated. Kosli errors keep the HTTP status and Kosli's own message
//! because they end up in status conditions, logs and exit messages. No variant
//! ever carries the API token.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting, flag, config file entry or CRD field that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),

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

    #[error("failed to read {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Input that should be a v1 List of pods (or one pod in it) and is not.
    #[error("failed to parse pod list from {origin}: {message}")]
    PodList { origin: String, message: String },

    /// The Kubernetes client could not be configured.
    #[error("failed to configure the Kubernetes client: {0}")]
    KubeConfig(String),

    /// Listing pods failed: the environment that needed them is not reported.
    #[error("failed to list pods {scope}: {source}")]
    ListPods {
        scope: String,
        #[source]
        source: Box<kube::Error>,
    },

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

    /// A registry could not tell the digest of an image.
    #[error("failed to resolve {image}: {message}")]
    Registry { image: String, message: String },

    #[error("failed to serialize {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// An error and its sources, joined: HTTP client errors say little on their own
/// ("error sending request"); the cause is in the chain.
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
            Error::KosliStatus { status, .. } => crate::kosli::retry::is_retryable_status(*status),
            Error::KosliTransport { certificate, .. } => !certificate,
            // RBAC refusals and bad credentials wait for a change; the rest may pass.
            Error::ListPods { source, .. } => !matches!(
                source.as_ref(),
                kube::Error::Api(status) if status.code == 401 || status.code == 403
            ),
            _ => false,
        }
    }

    /// The wait Kosli asked for with `Retry-After`, if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::KosliStatus { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status Kosli answered with, if it answered.
    pub fn kosli_status(&self) -> Option<u16> {
        match self {
            Error::KosliStatus { status, .. } => Some(*status),
            _ => None,
        }
    }
}
