//! The real test environment hack/testenv/start.sh brings up: a kube-apiserver
//! with etcd, three OCI registries (anonymous, Basic, Bearer) with test images.
//! Tests get it from the TESTENV_* variables `./hack/test.sh` exports; without
//! them a test fails loudly instead of skipping.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

/// Everything a test needs to know about the environment.
#[derive(Clone, Debug)]
pub struct TestEnv {
    /// Admin (system:masters).
    pub kubeconfig: PathBuf,
    /// User testenv-nobody: authenticated, no RBAC rights until a test grants some.
    pub kubeconfig_nobody: PathBuf,
    pub registry: String,
    pub registry_basic: String,
    pub registry_basic_user: String,
    pub registry_basic_password: String,
    pub registry_bearer: String,
    pub registry_bearer_user: String,
    pub registry_bearer_password: String,
    pub image_repo: String,
    pub single_tag: String,
    pub single_digest: String,
    pub index_tag: String,
    pub index_digest: String,
    pub amd64_digest: String,
}

/// A variable the test environment exports; without it the test fails, naming it.
pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the test environment (kube-apiserver, \
             registries, helm, kubectl, kubernetes-validate, promtool); run them through \
             ./hack/test.sh or hack/testenv/with-testenv.sh, which install and start it and \
             export TESTENV_*, HELM, KUBECTL, KUBERNETES_VALIDATE and PROMTOOL"
        )
    })
}

/// The path of a tool (or file) the test environment provides: HELM, KUBECTL, ...
pub fn tool(name: &str) -> PathBuf {
    PathBuf::from(var(name))
}

impl TestEnv {
    pub fn get() -> Self {
        kosli_operator::tls::install_crypto_provider();
        Self {
            kubeconfig: var("TESTENV_KUBECONFIG").into(),
            kubeconfig_nobody: var("TESTENV_KUBECONFIG_NOBODY").into(),
            registry: var("TESTENV_REGISTRY"),
            registry_basic: var("TESTENV_REGISTRY_BASIC"),
            registry_basic_user: var("TESTENV_REGISTRY_BASIC_USER"),
            registry_basic_password: var("TESTENV_REGISTRY_BASIC_PASSWORD"),
            registry_bearer: var("TESTENV_REGISTRY_BEARER"),
            registry_bearer_user: var("TESTENV_REGISTRY_BEARER_USER"),
            registry_bearer_password: var("TESTENV_REGISTRY_BEARER_PASSWORD"),
            image_repo: var("TESTENV_IMAGE_REPO"),
            single_tag: var("TESTENV_IMAGE_SINGLE_TAG"),
            single_digest: var("TESTENV_IMAGE_SINGLE_DIGEST"),
            index_tag: var("TESTENV_IMAGE_INDEX_TAG"),
            index_digest: var("TESTENV_IMAGE_INDEX_DIGEST"),
            amd64_digest: var("TESTENV_IMAGE_AMD64_DIGEST"),
        }
    }

    /// A client acting as the admin.
    pub async fn client(&self) -> Client {
        client_for(&self.kubeconfig).await
    }
}

pub async fn client_for(kubeconfig: &PathBuf) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// A name no other test uses: tests run in parallel against one apiserver.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

/// Applies the committed CRD and waits until the server has Established it.
pub async fn apply_crd(client: &Client) {
    let text =
        std::fs::read_to_string(super::repo_file("crds/koslienvironments.kosli.com.yaml")).unwrap();
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&text).unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap();
    api.patch(
        &name,
        &PatchParams::apply("kosli-operator-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    for _ in 0..100 {
        let current = api.get(&name).await.unwrap();
        let established = current
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("CRD {name} did not become Established within 10 s");
}

pub async fn create_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

/// Creates the namespace unless it exists: tests share one API server.
pub async fn ensure_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("cannot create namespace {name}: {e}"),
    }
}

/// The HTTP code and message of the API server's refusal; panics on success or
/// on an error that is not the API server's answer.
pub fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message),
        other => panic!("expected the API server to refuse, got {other:?}"),
    }
}

/// A container as the kubelet reports it once running.
#[derive(Clone, Debug)]
pub struct RunningContainer {
    pub name: String,
    /// The spec image.
    pub spec_image: String,
    /// `status.containerStatuses[].image`.
    pub status_image: String,
    /// `status.containerStatuses[].imageID` ("" while the image is pulling).
    pub image_id: String,
}

impl RunningContainer {
    /// A container whose runtime reports the same name it was given, pulled by digest.
    pub fn pulled(name: &str, image: &str, hex: &str) -> Self {
        let repo = image.split(':').next().unwrap_or(image);
        Self {
            name: name.into(),
            spec_image: image.into(),
            status_image: image.into(),
            image_id: format!("{repo}@sha256:{hex}"),
        }
    }
}

/// Creates a pod (which stays Pending: there is no scheduler or kubelet here).
pub async fn create_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    containers: &[RunningContainer],
) -> Pod {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": containers.iter()
            .map(|c| json!({"name": c.name, "image": c.spec_image}))
            .collect::<Vec<_>>()}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
}

/// Plays the kubelet: sets the pod's phase and container statuses through the
/// status subresource, as a kubelet does once containers run.
pub async fn play_kubelet(
    client: &Client,
    namespace: &str,
    name: &str,
    phase: &str,
    containers: &[RunningContainer],
) -> Pod {
    let statuses: Vec<_> = containers
        .iter()
        .map(|c| json!({
            "name": c.name, "image": c.status_image, "imageID": c.image_id,
            "ready": !c.image_id.is_empty(), "restartCount": 0, "started": !c.image_id.is_empty(),
            "state": if c.image_id.is_empty() {
                json!({"waiting": {"reason": "ImagePullBackOff"}})
            } else {
                json!({"running": {"startedAt": "2026-11-26T10:00:00Z"}})
            },
            "containerID": if c.image_id.is_empty() { json!(null) } else { json!(format!("containerd://{}", c.name)) },
        }))
        .collect();
    let patch = json!({"status": {"phase": phase, "containerStatuses": statuses}});
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap()
}

/// Creates a pod and plays the kubelet for it: Running with the given containers.
pub async fn running_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    containers: &[RunningContainer],
) -> Pod {
    create_pod(client, namespace, name, labels, containers).await;
    play_kubelet(client, namespace, name, "Running", containers).await
}

/// The Events the operator recorded about a KosliEnvironment, from the
/// namespace it puts them in (kube-system by default).
pub async fn events_about(
    client: &Client,
    object: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), "kube-system")
        .list(&Default::default())
        .await
        .map(|list| list.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object))
        .collect()
}

/// A kubeconfig for the existing ServiceAccount `namespace/name`, with a token
/// the API server issued for it (TokenRequest), as a pod of it would have.
pub async fn token_kubeconfig(
    client: &Client,
    namespace: &str,
    name: &str,
    dir: &std::path::Path,
) -> PathBuf {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 600}}))
            .unwrap();
    let token = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();
    // testenv-nobody's kubeconfig (server, CA) with the account's token instead.
    let nobody = std::fs::read_to_string(&TestEnv::get().kubeconfig_nobody).unwrap();
    let nobody_token = var("TESTENV_NOBODY_TOKEN");
    assert!(nobody.contains(&nobody_token));
    let path = dir.join(format!("kubeconfig-{namespace}-{name}"));
    std::fs::write(&path, nobody.replace(&nobody_token, &token)).unwrap();
    path
}
