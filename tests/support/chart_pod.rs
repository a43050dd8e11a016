//! The chart's operator container run as a local process, as a kubelet would run
//! the rendered Deployment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::Api;
use serde_json::Value;

use super::helm::{Doc, operator_container};

/// The rendered Deployment's operator container, run as a local process the way
/// a kubelet would run it: its args and env as rendered (the downward API filled
/// in), its Secret and ConfigMap volumes written from the cluster's objects into a directory that
/// stands in for their mount paths, loopback ports instead of 0.0.0.0, and the
/// given kubeconfig as its identity.
pub struct ChartPod {
    child: Child,
    http: String,
    pub webhook: Option<std::net::SocketAddr>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ChartPod {
    pub async fn start(
        deployment: &Doc,
        admin: &Client,
        kubeconfig: &Path,
        pod_name: &str,
    ) -> Self {
        let namespace = deployment.namespace().unwrap().to_owned();
        let container = operator_container(deployment);
        let volumes: BTreeMap<&str, &Value> =
            deployment.value["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| (v["name"].as_str().unwrap(), v))
                .collect();
        let dir = tempfile::tempdir().unwrap();
        // Mount path -> the directory standing in for it.
        let mut mounts: Vec<(String, String)> = Vec::new();
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let name = mount["name"].as_str().unwrap();
            let volume = volumes[name];
            let (source, data): (&Value, BTreeMap<String, Vec<u8>>) = if let Some(secret) =
                volume.get("secret")
            {
                let secret_name = secret["secretName"].as_str().unwrap();
                let data = Api::<Secret>::namespaced(admin.clone(), &namespace)
                    .get(secret_name)
                    .await
                    .unwrap_or_else(|e| panic!("Secret {namespace}/{secret_name} to mount: {e}"))
                    .data
                    .unwrap_or_default();
                (secret, data.into_iter().map(|(k, v)| (k, v.0)).collect())
            } else if let Some(config_map) = volume.get("configMap") {
                let map_name = config_map["name"].as_str().unwrap();
                let data = Api::<ConfigMap>::namespaced(admin.clone(), &namespace)
                    .get(map_name)
                    .await
                    .unwrap_or_else(|e| panic!("ConfigMap {namespace}/{map_name} to mount: {e}"))
                    .data
                    .unwrap_or_default();
                (
                    config_map,
                    data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
                )
            } else {
                continue;
            };
            let volume_name = source
                .get("secretName")
                .or_else(|| source.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let target = dir.path().join(format!("volume-{name}"));
            std::fs::create_dir_all(&target).unwrap();
            let items: Vec<(String, String)> = match source["items"].as_array() {
                Some(items) => items
                    .iter()
                    .map(|i| {
                        let key = i["key"].as_str().unwrap().to_owned();
                        (key, i["path"].as_str().unwrap().to_owned())
                    })
                    .collect(),
                None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            };
            for (key, path) in items {
                let bytes = data
                    .get(&key)
                    .unwrap_or_else(|| panic!("volume {volume_name} has no key {key}"));
                std::fs::write(target.join(path), bytes).unwrap();
            }
            mounts.push((
                mount["mountPath"].as_str().unwrap().to_owned(),
                target.to_str().unwrap().to_owned(),
            ));
        }
        let local = |s: &str| -> String {
            for (path, target) in &mounts {
                if let Some(rest) = s.strip_prefix(path.as_str()) {
                    return format!("{target}{rest}");
                }
            }
            s.to_owned()
        };

        let http_port = super::free_port();
        let mut webhook = None;
        let mut args: Vec<String> = Vec::new();
        for arg in container["args"].as_array().unwrap() {
            let arg = arg.as_str().unwrap();
            if arg.starts_with("--http-addr=") {
                args.push(format!("--http-addr=127.0.0.1:{http_port}"));
            } else if arg.starts_with("--webhook-addr=") {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], super::free_port()));
                webhook = Some(addr);
                args.push(format!("--webhook-addr={addr}"));
            } else if let Some((flag, value)) = arg.split_once('=') {
                args.push(format!("{flag}={}", local(value)));
            } else {
                args.push(arg.to_owned());
            }
        }
        args.push("--kubeconfig".into());
        args.push(kubeconfig.to_str().unwrap().into());

        let log = dir.path().join("operator.log");
        let mut cmd = Command::new(super::binary());
        cmd.args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for env in container["env"].as_array().into_iter().flatten() {
            let name = env["name"].as_str().unwrap();
            let value = if let Some(value) = env["value"].as_str() {
                local(value)
            } else {
                match env["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.namespace") => namespace.clone(),
                    Some("metadata.name") => pod_name.to_owned(),
                    _ => panic!("env {name}: only values and the downward API are expected: {env}"),
                }
            };
            cmd.env(name, value);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            http: format!("http://127.0.0.1:{http_port}"),
            webhook,
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for /readyz, failing with the operator's log if it never comes.
    pub async fn wait_ready(&mut self) {
        super::operator::wait_ready(&mut self.child, &self.http, &self.log).await;
    }
}

impl Drop for ChartPod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
