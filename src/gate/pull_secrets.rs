//! Registry credentials from a pod's `imagePullSecrets` and its service
//! account's, as the kubelet would use them (`kubernetes.io/dockerconfigjson`).

use std::collections::BTreeMap;

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

/// Registry -> credentials, from the bytes of a `.dockerconfigjson`.
pub fn parse_docker_config(
    bytes: &[u8],
) -> crate::error::Result<BTreeMap<String, RegistryCredentials>> {
    use base64::Engine as _;
    let config: DockerConfig =
        serde_json::from_slice(bytes).map_err(crate::error::Error::DockerConfig)?;
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

/// Credentials from the named secrets and the service account's pull secrets,
/// the pod's own first. Unreadable secrets are skipped with a warning: the
/// lookup then goes anonymous and the registry decides.
pub async fn credentials(
    client: &Client,
    namespace: &str,
    secrets: &[String],
    service_account: &str,
) -> BTreeMap<String, RegistryCredentials> {
    let mut names: Vec<String> = secrets.to_vec();
    match Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .get_opt(service_account)
        .await
    {
        Ok(Some(sa)) => names.extend(sa.image_pull_secrets.into_iter().flatten().map(|r| r.name)),
        Ok(None) => {}
        Err(e) => tracing::warn!(
            namespace,
            service_account,
            "failed to read the service account: {e}"
        ),
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut out = BTreeMap::new();
    for name in names {
        let secret = match api.get_opt(&name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(namespace, secret = %name, "failed to read the pull secret: {e}");
                continue;
            }
        };
        let Some(bytes) = secret
            .data
            .as_ref()
            .and_then(|d| d.get(".dockerconfigjson"))
        else {
            continue;
        };
        match parse_docker_config(&bytes.0) {
            Ok(found) => {
                for (registry, creds) in found {
                    out.entry(registry).or_insert(creds);
                }
            }
            Err(e) => tracing::warn!(namespace, secret = %name, "{}", crate::error::chain(&e)),
        }
    }
    out
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
}
