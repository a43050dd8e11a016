//! Pods from a live cluster, for the one-shot snapshot: complete paginated lists
//! or an error, never a partial list.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::core::pod::{Interner, PodRecord};
use crate::core::selection::NamespaceFilter;
use crate::error::{Error, Result};

/// Page size for LIST: the API server's and client-go's usual chunk.
const PAGE_SIZE: u32 = 500;
/// A list whose continue token expires (410) is started again this many times.
const LIST_ATTEMPTS: usize = 3;

/// A Kubernetes client from `--kubeconfig`, or the usual inference (`KUBECONFIG`,
/// `~/.kube/config`, in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    crate::tls::install_crypto_provider();
    let (config, origin) = match kubeconfig {
        Some(path) => {
            let origin = path.display().to_string();
            let fail = |source: kube::config::KubeconfigError| Error::KubeConfig {
                origin: origin.clone(),
                source: Box::new(source),
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(fail)?;
            let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(fail)?;
            (config, origin)
        }
        None => {
            let origin = "KUBECONFIG, ~/.kube/config or the in-cluster service account";
            let config = Config::infer().await.map_err(|source| Error::KubeConfig {
                origin: origin.to_owned(),
                source: Box::new(source),
            })?;
            (config, origin.to_owned())
        }
    };
    Client::try_from(config).map_err(|source| Error::KubeConfig {
        origin,
        source: Box::new(source),
    })
}

/// Lists pods once per scope and shares the result between environments.
pub struct PodLister {
    client: Client,
    cache: HashMap<Option<String>, Arc<Vec<PodRecord>>>,
}

impl PodLister {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: HashMap::new(),
        }
    }

    /// The pods a namespace filter may select: namespace by namespace for a plain
    /// list of names (which needs no cluster-wide rights), else one cluster-wide
    /// list. The caller still applies the selection.
    pub async fn pods_for(&mut self, filter: &NamespaceFilter) -> Result<Vec<Arc<Vec<PodRecord>>>> {
        match filter.exact_namespaces() {
            Some(namespaces) => {
                // A name given twice must not list (and report) its pods twice.
                let unique: std::collections::BTreeSet<&String> = namespaces.iter().collect();
                let mut lists = Vec::with_capacity(unique.len());
                for namespace in unique {
                    lists.push(self.scope(Some(namespace.clone())).await?);
                }
                Ok(lists)
            }
            None => Ok(vec![self.scope(None).await?]),
        }
    }

    async fn scope(&mut self, namespace: Option<String>) -> Result<Arc<Vec<PodRecord>>> {
        if let Some(pods) = self.cache.get(&namespace) {
            return Ok(pods.clone());
        }
        let api: Api<Pod> = match &namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let scope = match &namespace {
            Some(ns) => format!("in namespace {ns}"),
            None => "cluster-wide".to_owned(),
        };
        let pods = Arc::new(list_all(&api, &scope).await?);
        tracing::debug!(scope = %scope, pods = pods.len(), "listed pods");
        self.cache.insert(namespace, pods.clone());
        Ok(pods)
    }
}

/// Every page of a LIST, restarting from scratch if the continue token expires.
async fn list_all(api: &Api<Pod>, scope: &str) -> Result<Vec<PodRecord>> {
    let fail = |source: kube::Error| Error::Kube {
        action: format!("list pods {scope}"),
        source: Box::new(source),
    };
    let mut attempt = 0;
    'attempts: loop {
        attempt += 1;
        let mut pods = Vec::new();
        let mut shared = Interner::default();
        let mut params = ListParams::default().limit(PAGE_SIZE);
        loop {
            let page = match api.list(&params).await {
                Ok(page) => page,
                Err(kube::Error::Api(status)) if status.code == 410 && attempt < LIST_ATTEMPTS => {
                    tracing::warn!(scope, "pod list continue token expired, listing again");
                    continue 'attempts;
                }
                Err(e) => return Err(fail(e)),
            };
            pods.extend(
                page.items
                    .iter()
                    .map(|pod| PodRecord::decode(pod, None, &mut shared)),
            );
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(pods),
            }
        }
    }
}
