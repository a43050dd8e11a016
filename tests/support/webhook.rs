//! Helpers for the admission webhook tests: throw-away serving certificates
//! (a CA and a leaf for 127.0.0.1 / localhost), ValidatingWebhookConfigurations
//! on the real API server, and raw TLS clients.
//!
//! Registration is asynchronous in the API server (its webhook informer picks a
//! new configuration up within about a second), so after registering, call
//! [`wait_until_called`]: it sends dry-run probe pods into the labelled
//! namespace until the handler has seen one. Dry runs call webhooks whose
//! sideEffects are None and store nothing, so there is nothing to clean up.
//!
//! Tests run in parallel against one API server: every configuration selects
//! only namespaces carrying a label unique to its test, and [`CleanupOnPanic`]
//! deletes it when a test fails half-way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::net::TcpStream;

/// A CA and a server certificate signed by it, as files a server can load.
pub struct ServingCert {
    pub ca_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

/// A fresh CA and a server certificate for IP 127.0.0.1 and DNS localhost.
pub fn serving_cert() -> ServingCert {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, issuer) = new_ca();
    let cert = ServingCert {
        ca_pem,
        cert_file: dir.path().join("tls.crt"),
        key_file: dir.path().join("tls.key"),
        issuer,
        dir,
    };
    cert.rotate();
    cert
}

fn new_ca() -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        DnType::CommonName,
        format!("kosli-test-ca-{:08x}", fastrand::u32(..)),
    );
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

impl ServingCert {
    /// Writes a new key and leaf certificate signed by the current CA. Each
    /// file is replaced by a rename, so a reader never sees half a file (a
    /// reader may see a new key with the old certificate for a moment, as
    /// with any rotation of two files).
    pub fn rotate(&self) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        self.replace(&self.key_file, key.serialize_pem().as_bytes());
        self.replace(&self.cert_file, cert.pem().as_bytes());
    }

    /// Switches to a brand-new CA (updating `ca_pem`) and writes a leaf signed by it.
    pub fn rotate_ca(&mut self) {
        let (ca_pem, issuer) = new_ca();
        self.ca_pem = ca_pem;
        self.issuer = issuer;
        self.rotate();
    }

    /// Replaces the certificate file with text that is no certificate.
    pub fn write_garbage_cert(&self) {
        self.replace(&self.cert_file, b"this is not a certificate\n");
    }

    /// DER of the leaf certificate in the certificate file now.
    pub fn leaf_der(&self) -> Vec<u8> {
        let pem = std::fs::read(&self.cert_file).unwrap();
        CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn replace(&self, path: &Path, contents: &[u8]) {
        let tmp = self.dir.path().join(".writing");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

/// The label a test puts on its namespaces so that only its webhook sees them.
pub fn webhook_label() -> &'static str {
    "kosli-webhook-test"
}

/// Creates a ValidatingWebhookConfiguration `name` with one webhook
/// `<name>.kosli.com` calling `url` (trusting `ca_pem`) for CREATE and UPDATE
/// of pods and of the workload kinds that carry pod templates, in namespaces
/// labelled `namespace_label` only.
pub async fn register_validating_webhook(
    client: &Client,
    name: &str,
    url: &str,
    ca_pem: &str,
    namespace_label: (&str, &str),
    failure_policy: &str,
    timeout_seconds: i32,
) {
    let rule = |group: &str, version: &str, resources: &[&str]| RuleWithOperations {
        api_groups: Some(vec![group.to_owned()]),
        api_versions: Some(vec![version.to_owned()]),
        operations: Some(vec!["CREATE".to_owned(), "UPDATE".to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        scope: Some("Namespaced".to_owned()),
    };
    let configuration = ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        webhooks: Some(vec![ValidatingWebhook {
            name: format!("{name}.kosli.com"),
            admission_review_versions: vec!["v1".to_owned()],
            client_config: WebhookClientConfig {
                url: Some(url.to_owned()),
                // ByteString holds raw bytes; the API carries them base64-encoded.
                ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
                service: None,
            },
            rules: Some(vec![
                rule("", "v1", &["pods"]),
                rule(
                    "apps",
                    "v1",
                    &["deployments", "statefulsets", "daemonsets", "replicasets"],
                ),
                rule("batch", "v1", &["jobs", "cronjobs"]),
            ]),
            side_effects: "None".to_owned(),
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    [(namespace_label.0.to_owned(), namespace_label.1.to_owned())].into(),
                ),
                match_expressions: None,
            }),
            failure_policy: Some(failure_policy.to_owned()),
            timeout_seconds: Some(timeout_seconds),
            ..Default::default()
        }]),
    };
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &configuration)
        .await
        .unwrap();
}

/// Deletes the configuration; one already gone is fine.
pub async fn delete_validating_webhook(client: &Client, name: &str) {
    match Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => panic!("failed to delete ValidatingWebhookConfiguration {name}: {e}"),
    }
}

/// Deletes a webhook configuration if the test panics before it does so itself
/// (a leftover with failurePolicy Fail would only hit its own namespaces, but
/// it would still call a dead port on every pod created there).
pub struct CleanupOnPanic {
    kubeconfig: PathBuf,
    name: String,
}

impl CleanupOnPanic {
    pub fn new(kubeconfig: &Path, name: &str) -> Self {
        Self {
            kubeconfig: kubeconfig.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl Drop for CleanupOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // The test's runtime is unwinding and polls nothing any more, so the
        // deletion needs a runtime (and a client) of its own.
        let (kubeconfig, name) = (self.kubeconfig.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let client = super::testenv::client_for(&kubeconfig).await;
                let _ = Api::<ValidatingWebhookConfiguration>::all(client)
                    .delete(&name, &DeleteParams::default())
                    .await;
            });
        })
        .join();
    }
}

/// A pod the toy handlers admit (no `deny` label).
pub fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
    let labels: std::collections::BTreeMap<_, _> = labels.iter().copied().collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]}
    }))
    .unwrap()
}

/// Waits until the webhook registered for `namespace` is in effect: sends
/// dry-run pod creates there until `calls()` grows. Panics after 30 s.
pub async fn wait_until_called(client: &Client, namespace: &str, calls: impl Fn() -> usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let before = calls();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    for attempt in 0..150 {
        let probe = pod(
            &format!("webhook-probe-{attempt}"),
            &[("kosli-webhook-probe", "yes")],
        );
        // Refusals are fine here: only whether the handler was called matters.
        let _ = pods.create(&dry_run, &probe).await;
        if calls() > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the webhook for namespace {namespace} was not called within 30 s");
}

/// A rustls client config trusting only `ca_pem`, offering `alpn`.
pub fn client_tls(ca_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    client_tls_as(ca_pem, alpn, None)
}

/// As [`client_tls`], presenting `identity` (PEM certificate, PEM key) when
/// the server asks for a client certificate.
pub fn client_tls_as(
    ca_pem: &str,
    alpn: &[&[u8]],
    identity: Option<&ClientIdentity>,
) -> rustls::ClientConfig {
    kosli_operator::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => {
            let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A client certificate (PEM) and its key.
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl ClientIdentity {
    /// Reads a PEM certificate and key from files (e.g. the testenv's).
    pub fn from_files(cert: &Path, key: &Path) -> Self {
        Self {
            cert_pem: std::fs::read_to_string(cert).unwrap(),
            key_pem: std::fs::read_to_string(key).unwrap(),
        }
    }
}

/// A throw-away CA for client certificates, written to `ca_file` (what a
/// server takes as its client CA), and a client certificate it issued.
pub struct ClientCa {
    pub ca_file: PathBuf,
    pub client: ClientIdentity,
    _dir: tempfile::TempDir,
}

pub fn client_ca() -> ClientCa {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, issuer) = new_ca();
    let ca_file = dir.path().join("client-ca.crt");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "kosli-test-webhook-client");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    ClientCa {
        ca_file,
        client: ClientIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        _dir: dir,
    }
}

/// A minimal AdmissionReview of a pod, as a forger would send it.
pub fn forged_review() -> Vec<u8> {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "forged-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default", "operation": "CREATE", "name": "forged",
            "userInfo": {"username": "forger"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "forged", "namespace": "default"},
                "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]}}
        }
    })
    .to_string();
    let mut request = format!(
        "POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        review.len()
    )
    .into_bytes();
    request.extend_from_slice(review.as_bytes());
    request
}

/// Sends `request` over TLS (trusting `ca_pem`, presenting `identity` if
/// any) and reads until the server closes: Ok(what it answered), or Err(the
/// TLS or I/O error that ended the exchange before any answer).
pub async fn exchange_as(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&ClientIdentity>,
    request: &[u8],
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_tls_as(ca_pem, &[], identity)));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    // With TLS 1.3 the client's side of the handshake completes before the
    // server has checked the client's certificate: a refusal shows on read.
    let mut tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(request).await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut answer))
        .await
        .map_err(|_| "no answer and no close within 15 s".to_owned())?;
    match read {
        Err(e) if answer.is_empty() => Err(e.to_string()),
        _ => Ok(String::from_utf8_lossy(&answer).into_owned()),
    }
}

/// A TLS connection to `addr` as 127.0.0.1, verified against `ca_pem`.
pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(ca_pem, &[])));
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

/// DER of the leaf certificate the server at `addr` presents now, or the
/// handshake error (e.g. when it does not verify against `ca_pem`).
pub async fn presented_leaf(addr: SocketAddr, ca_pem: &str) -> Result<Vec<u8>, String> {
    let tls = tls_connect(addr, ca_pem).await.map_err(|e| e.to_string())?;
    let (_, connection) = tls.get_ref();
    let chain = connection
        .peer_certificates()
        .ok_or("no peer certificate")?;
    Ok(chain[0].to_vec())
}

/// An HTTPS client trusting only `ca_pem`, ignoring proxy variables.
pub fn https_client(ca_pem: &str) -> reqwest::Client {
    kosli_operator::tls::install_crypto_provider();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The `kosli-operator run` flags serving the gate on `port` with `cert`, a 5 s
/// webhook timeout and no leader election.
pub fn operator_args(cert: &ServingCert, port: u16) -> Vec<String> {
    vec![
        "--webhook-addr".to_owned(),
        format!("127.0.0.1:{port}"),
        "--webhook-cert".to_owned(),
        cert.cert_file.to_str().unwrap().to_owned(),
        "--webhook-key".to_owned(),
        cert.key_file.to_str().unwrap().to_owned(),
        "--webhook-timeout".to_owned(),
        "5s".to_owned(),
        "--leader-election=false".to_owned(),
    ]
}
