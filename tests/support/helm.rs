//! The Helm chart (charts/kosli-operator) as the real tools see it: what
//! `helm template` renders, as documents to query, and the checks of
//! `kubernetes-validate --strict`, a server-side dry run and Pod Security on them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::testenv::tool;
use super::tools::{isolated, kubectl, run, text};

/// Kinds kubernetes-validate has no schema for.
pub const CUSTOM_KINDS: [&str; 4] = [
    "KosliEnvironment",
    "Certificate",
    "Issuer",
    "ServiceMonitor",
];
/// Kinds whose CRDs the test API server does not have (cert-manager, Prometheus Operator).
pub const NOT_INSTALLED_KINDS: [&str; 3] = ["Certificate", "Issuer", "ServiceMonitor"];
/// The Kubernetes version kubernetes-validate checks against.
pub const VALIDATE_VERSION: &str = "1.30.0";

pub fn chart() -> PathBuf {
    super::repo_file("charts/kosli-operator")
}

/// examples/values/*.yaml, sorted; the four documented setups must be among them.
pub fn example_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(super::repo_file("examples/values"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for required in [
        "reporter-only.yaml",
        "gate-cert-manager.yaml",
        "single-tenant.yaml",
        "proxy-custom-ca.yaml",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(required)),
            "examples/values/{required} is missing"
        );
    }
    files
}

/// `helm template RELEASE chart -n NAMESPACE -f VALUES... ARGS...`: the manifests,
/// or Helm's error.
pub fn helm_template(
    release: &str,
    namespace: &str,
    values: &[&Path],
    args: &[&str],
) -> Result<String, String> {
    let mut cmd = isolated(tool("HELM"));
    cmd.arg("template")
        .arg(release)
        .arg(chart())
        .args(["--namespace", namespace]);
    for file in values {
        cmd.arg("--values").arg(file);
    }
    cmd.args(args);
    let output = run(&mut cmd, "");
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap())
    } else {
        Err(text(&output))
    }
}

pub fn render(release: &str, namespace: &str, values: &[&Path], args: &[&str]) -> Vec<Doc> {
    let manifests = helm_template(release, namespace, values, args)
        .unwrap_or_else(|e| panic!("helm template {values:?} {args:?} failed:\n{e}"));
    documents(&manifests)
}

pub fn write_values(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

/// One rendered document: its text as Helm wrote it, and its parsed value.
#[derive(Clone, Debug)]
pub struct Doc {
    pub raw: String,
    pub value: Value,
}

impl Doc {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }
}

/// Splits `helm template` output into its documents, skipping empty ones.
pub fn documents(manifests: &str) -> Vec<Doc> {
    let mut chunks = vec![String::new()];
    for line in manifests.lines() {
        if line.trim_end() == "---" {
            chunks.push(String::new());
        } else {
            let chunk = chunks.last_mut().unwrap();
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    chunks
        .into_iter()
        .filter(|c| {
            c.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|raw| {
            let value: Value = serde_saphyr::from_str(&raw)
                .unwrap_or_else(|e| panic!("rendered document is not YAML ({e}):\n{raw}"));
            assert!(
                value["kind"].is_string(),
                "rendered document without a kind:\n{raw}"
            );
            Doc { raw, value }
        })
        .collect()
}

pub fn joined(docs: &[&Doc]) -> String {
    docs.iter()
        .map(|d| d.raw.trim_end())
        .collect::<Vec<_>>()
        .join("\n---\n")
        + "\n"
}

pub fn only<'a>(docs: &'a [Doc], kind: &str) -> &'a Doc {
    let found: Vec<&Doc> = docs.iter().filter(|d| d.kind() == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
    found[0]
}

pub fn all<'a>(docs: &'a [Doc], kind: &str) -> Vec<&'a Doc> {
    docs.iter().filter(|d| d.kind() == kind).collect()
}

pub fn kinds(docs: &[Doc]) -> Vec<String> {
    docs.iter().map(|d| d.kind().to_owned()).collect()
}

/// `kubernetes-validate --strict` on the documents it has schemas for; every one
/// of them must be reported as passed (an unknown kind only warns).
pub fn kubernetes_validate(docs: &[Doc], what: &str) {
    let known: Vec<&Doc> = docs
        .iter()
        .filter(|d| !CUSTOM_KINDS.contains(&d.kind()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = write_values(dir.path(), "manifests.yaml", &joined(&known));
    let mut cmd = isolated(tool("KUBERNETES_VALIDATE"));
    cmd.args(["--strict", "-k", VALIDATE_VERSION]).arg(&file);
    let output = run(&mut cmd, "");
    let out = text(&output);
    assert!(
        output.status.success(),
        "kubernetes-validate --strict -k {VALIDATE_VERSION} rejects the rendering of {what}:\n{out}"
    );
    let passed = out
        .lines()
        .filter(|l| l.contains("passed for resource"))
        .count();
    assert_eq!(
        passed,
        known.len(),
        "kubernetes-validate did not check every document of {what}:\n{out}"
    );
}

/// `kubectl apply --dry-run=server`: the API server validates and admits each
/// document (the CRD is applied first), storing nothing.
pub fn server_dry_run(kubeconfig: &Path, docs: &[Doc], what: &str) {
    let wanted: Vec<&Doc> = docs
        .iter()
        .filter(|d| !NOT_INSTALLED_KINDS.contains(&d.kind()))
        .collect();
    let output = kubectl(
        kubeconfig,
        &["apply", "--dry-run=server", "-f", "-"],
        &joined(&wanted),
    );
    let out = text(&output);
    assert!(
        output.status.success(),
        "the API server refuses the rendering of {what}:\n{out}"
    );
    let accepted = out
        .lines()
        .filter(|l| l.contains("(server dry run)"))
        .count();
    assert_eq!(
        accepted,
        wanted.len(),
        "not every document of {what} was accepted:\n{out}"
    );
}

/// Checks the pod template against the Pod Security "restricted" profile.
pub fn assert_restricted(deployment: &Doc, what: &str) {
    let pod = &deployment.value["spec"]["template"]["spec"];
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod[host], json!(true), "{what}: {host}");
    }
    let allowed_volumes = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        let source = volume
            .as_object()
            .unwrap()
            .keys()
            .find(|k| *k != "name")
            .unwrap();
        assert!(
            allowed_volumes.contains(&source.as_str()),
            "{what}: volume type {source} is not allowed"
        );
    }
    let pod_sc = &pod["securityContext"];
    assert_eq!(
        pod_sc["runAsNonRoot"],
        json!(true),
        "{what}: pod runAsNonRoot"
    );
    assert_eq!(
        pod_sc["seccompProfile"]["type"],
        json!("RuntimeDefault"),
        "{what}: pod seccompProfile"
    );
    assert_ne!(pod_sc["runAsUser"], json!(0), "{what}: pod runAsUser 0");
    let containers = pod["containers"].as_array().unwrap();
    assert!(!containers.is_empty());
    for c in containers
        .iter()
        .chain(pod["initContainers"].as_array().into_iter().flatten())
    {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], json!(false), "{what}: {c}");
        assert_eq!(sc["readOnlyRootFilesystem"], json!(true), "{what}: {c}");
        assert_ne!(sc["privileged"], json!(true), "{what}: {c}");
        assert_ne!(sc["runAsNonRoot"], json!(false), "{what}: {c}");
        assert_ne!(sc["runAsUser"], json!(0), "{what}: {c}");
        assert!(
            sc["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.contains(&json!("ALL"))),
            "{what}: capabilities must drop ALL: {c}"
        );
        for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            assert_eq!(cap, &json!("NET_BIND_SERVICE"), "{what}: {c}");
        }
        if !sc["seccompProfile"].is_null() {
            assert_eq!(sc["seccompProfile"]["type"], json!("RuntimeDefault"));
        }
    }
}

pub fn operator_container(deployment: &Doc) -> &Value {
    deployment.value["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "operator")
        .unwrap_or_else(|| panic!("no container named operator:\n{}", deployment.raw))
}

pub fn args_of(deployment: &Doc) -> Vec<String> {
    operator_container(deployment)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

pub fn env_of(deployment: &Doc) -> BTreeMap<String, Value> {
    operator_container(deployment)["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

/// The rules of a Role or ClusterRole, as (apiGroup, resource, verb, resourceNames) tuples.
pub fn grants(role: &Doc) -> Vec<(String, String, String, Vec<String>)> {
    let mut out = Vec::new();
    for rule in role.value["rules"].as_array().unwrap() {
        let names: Vec<String> = rule["resourceNames"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    out.push((
                        group.as_str().unwrap().to_owned(),
                        resource.as_str().unwrap().to_owned(),
                        verb.as_str().unwrap().to_owned(),
                        names.clone(),
                    ));
                }
            }
        }
    }
    out
}

pub fn grant(group: &str, resource: &str, verb: &str) -> (String, String, String, Vec<String>) {
    (group.into(), resource.into(), verb.into(), Vec::new())
}

/// Objects applied for a test, deleted again when it ends (also on a panic), so
/// that no right granted to the shared ServiceAccount identity outlives the test.
/// The ServiceAccount itself stays: it is the test environment's.
pub struct Applied {
    kubeconfig: PathBuf,
    manifests: String,
}

impl Applied {
    pub fn new(kubeconfig: &Path, docs: &[&Doc]) -> Self {
        let owned: Vec<&Doc> = docs
            .iter()
            .copied()
            .filter(|d| d.kind() != "ServiceAccount")
            .collect();
        Self {
            kubeconfig: kubeconfig.to_owned(),
            manifests: joined(&owned),
        }
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        let output = kubectl(
            &self.kubeconfig,
            &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
            &self.manifests,
        );
        if !output.status.success() && !std::thread::panicking() {
            panic!("cleanup failed:\n{}", text(&output));
        }
    }
}
