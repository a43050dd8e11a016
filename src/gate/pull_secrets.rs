//! Registry credentials from a pod's `imagePullSecrets` and its service
//! account's, as the kubelet would use them (`kubernetes.io/dockerconfigjson`).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Client;
use kube::api::Api;
use serde::Deserialize;

use crate::core::fingerprint::DOCKER_HUB;
use crate::gate::registry::RegistryCredentials;

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    username: Option<String>,
    password: Option<String>,
    auth: Option<String>,
}

/// `https://index.docker.io/v1/` -> `docker.io`; `https://host:5000/x` -> `host:5000`.
fn registry_key(key: &str) -> String {
    let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = without_scheme.split('/').next().unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_owned(),
        other => other.to_owned(),
    }
}

/// The error for a `.dockerconfigjson` that does not parse, without any of
/// its text.
fn docker_config_error(e: &serde_json::Error) -> crate::error::Error {
    let (category, line, column) = crate::error::json_error_position(e);
    crate::error::Error::DockerConfig {
        category,
        line,
        column,
    }
}

/// Registry -> credentials, from the bytes of a `.dockerconfigjson`.
pub fn parse_docker_config(
    bytes: &[u8],
) -> crate::error::Result<BTreeMap<String, RegistryCredentials>> {
    use base64::Engine as _;
    let config: DockerConfig =
        serde_json::from_slice(bytes).map_err(|e| docker_config_error(&e))?;
    let mut out = BTreeMap::new();
    for (key, auth) in config.auths {
        let pair = match (auth.username, auth.password, auth.auth) {
            (Some(username), Some(password), _) => Some((username, password)),
            (_, _, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|text| {
                    text.split_once(':')
                        .map(|(u, p)| (u.to_owned(), p.to_owned()))
                }),
            _ => None,
        };
        if let Some((username, password)) = pair {
            out.entry(registry_key(&key))
                .or_insert(RegistryCredentials { username, password });
        }
    }
    Ok(out)
}

/// Registry credentials found for a review, and what was left unread.
#[derive(Debug, Default)]
pub struct PullCredentials {
    pub by_registry: BTreeMap<String, RegistryCredentials>,
    /// Why some named secrets were not read (beyond the cap), for a warning.
    pub ignored: Option<String>,
}

/// Names in order, each once.
fn distinct(names: impl IntoIterator<Item = String>, seen: &mut BTreeSet<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| seen.insert(n.clone()))
        .collect()
}

/// Which secrets to read: the pod's own first, then its service account's, at
/// most `max` in all; the rest are named in `ignored`.
pub fn choose(
    own: &[String],
    from_service_account: &[String],
    max: usize,
) -> (Vec<String>, Vec<String>) {
    let mut seen = BTreeSet::new();
    let mut all = distinct(own.iter().cloned(), &mut seen);
    all.extend(distinct(from_service_account.iter().cloned(), &mut seen));
    let ignored = all.split_off(max.min(all.len()));
    (all, ignored)
}

/// Credentials from the named secrets and the service account's pull secrets,
/// the pod's own first, at most `max` secrets read, all at once (the caller
/// bounds the whole by the review's deadline). Unreadable secrets are skipped
/// with a warning: the lookup then goes anonymous and the registry decides.
pub async fn credentials(
    client: &Client,
    namespace: &str,
    secrets: &[String],
    service_account: &str,
    max: usize,
) -> PullCredentials {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let (own, _) = choose(secrets, &[], max);
    // The service account is read only when the pod's own secrets leave room.
    let service_account_secrets = async {
        if own.len() >= max {
            return Vec::new();
        }
        match Api::<ServiceAccount>::namespaced(client.clone(), namespace)
            .get_opt(service_account)
            .await
        {
            Ok(Some(sa)) => sa
                .image_pull_secrets
                .into_iter()
                .flatten()
                .map(|r| r.name)
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(
                    namespace,
                    service_account,
                    "failed to read the service account: {e}"
                );
                Vec::new()
            }
        }
    };
    let (from_sa, mut read) =
        futures::join!(service_account_secrets, read_all(&api, namespace, &own));
    let (chosen, ignored) = choose(secrets, &from_sa, max);
    let more: Vec<String> = chosen
        .iter()
        .filter(|n| !own.contains(n))
        .cloned()
        .collect();
    read.extend(read_all(&api, namespace, &more).await);
    let mut by_registry = BTreeMap::new();
    // In `chosen` order, so the pod's own secret wins for a registry.
    for name in &chosen {
        let Some((_, found)) = read.iter().find(|(n, _)| n == name) else {
            continue;
        };
        for (registry, creds) in found {
            by_registry
                .entry(registry.clone())
                .or_insert_with(|| creds.clone());
        }
    }
    let ignored = (!ignored.is_empty()).then(|| {
        let note = format!(
            "{} pull secret(s) not read, beyond the limit of {max} per review (--gate-max-pull-secrets): {}",
            ignored.len(),
            ignored.join(", ")
        );
        tracing::warn!(namespace, "{note}");
        note
    });
    PullCredentials {
        by_registry,
        ignored,
    }
}

/// Reads `names` concurrently; each secret's credentials, by name.
async fn read_all(
    api: &Api<Secret>,
    namespace: &str,
    names: &[String],
) -> Vec<(String, BTreeMap<String, RegistryCredentials>)> {
    let reads = names.iter().map(|name| async move {
        let secret = match api.get_opt(name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(namespace, secret = %name, "failed to read the pull secret: {e}");
                return None;
            }
        };
        let bytes = secret.data.as_ref()?.get(".dockerconfigjson")?;
        match parse_docker_config(&bytes.0) {
            Ok(found) => Some((name.clone(), found)),
            Err(e) => {
                tracing::warn!(namespace, secret = %name, "{}", crate::error::chain(&e));
                None
            }
        }
    });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_forms() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
            "127.0.0.1:5000":{"username":"u","password":"p:with:colons"},
            "https://ghcr.io":{"auth":"bm9jb2xvbg=="},
            "quay.io":{}}}"#;
        let creds = parse_docker_config(json).unwrap();
        assert_eq!(creds["docker.io"].username, "user");
        assert_eq!(creds["docker.io"].password, "pass");
        assert_eq!(creds["127.0.0.1:5000"].password, "p:with:colons");
        assert!(
            !creds.contains_key("ghcr.io"),
            "an auth without ':' is unusable"
        );
        assert!(!creds.contains_key("quay.io"));
        assert!(parse_docker_config(b"garbage").is_err());
    }

    #[test]
    fn a_malformed_config_is_reported_without_its_text() {
        // serde_json quotes an unexpected string in its message; here that
        // string is a password.
        let json = br#"{"auths":"dXNlcjpodW50ZXIy-hunter2"}"#;
        let error = parse_docker_config(json).unwrap_err();
        let text = crate::error::chain(&error);
        assert_eq!(
            text,
            "invalid .dockerconfigjson: structure error at line 1, column 35"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let truncated = parse_docker_config(br#"{"auths":{"r":{"auth":"c2VjcmV0"#).unwrap_err();
        let text = crate::error::chain(&truncated);
        assert!(
            text.starts_with("invalid .dockerconfigjson: truncation error at line 1"),
            "{text}"
        );
        assert!(!text.contains("c2VjcmV0"), "{text}");
    }

    #[test]
    fn the_pods_own_secrets_come_first_and_at_most_the_cap_are_read() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let (chosen, ignored) = choose(&names(&["a", "b", "a"]), &names(&["b", "c", "d"]), 3);
        assert_eq!(chosen, names(&["a", "b", "c"]));
        assert_eq!(ignored, names(&["d"]));
        let (chosen, ignored) = choose(&names(&["a", "b"]), &[], 0);
        assert!(chosen.is_empty());
        assert_eq!(ignored, names(&["a", "b"]));
    }
}
