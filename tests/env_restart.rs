//! The reporter across an API server restart, on a cluster of its own (the other
//! tests keep the shared one): watches break, resume or re-list, and no report
//! is ever sent from a partial view; reporting resumes with the full set.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kosli_operator::core::crd::KosliEnvironment;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::fake_kosli::FakeKosli;
use support::operator::{Operator, eventually};
use support::pod_names;
use support::testenv::{
    RunningContainer, apply_crd, client_for, create_namespace, running_pod, unique,
};

const NGINX: &str = "3333333333333333333333333333333333333333333333333333333333333333";

/// A second test environment, stopped when dropped.
struct OwnCluster {
    run: PathBuf,
    env: HashMap<String, String>,
}

impl OwnCluster {
    fn start(dir: &Path) -> Self {
        let run = dir.join("run");
        let status = Command::new(support::repo_file("hack/testenv/start.sh"))
            .arg(&run)
            .status()
            .unwrap();
        assert!(status.success(), "hack/testenv/start.sh failed");
        let env = std::fs::read_to_string(run.join("testenv.env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self { run, env }
    }

    fn kubeconfig(&self) -> PathBuf {
        PathBuf::from(&self.env["TESTENV_KUBECONFIG"])
    }

    /// Kills the API server (SIGKILL) and starts it again with the same command line.
    async fn restart_apiserver(&self, client: &Client) {
        let pid_file = self.run.join("apiserver.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .to_owned();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        eventually(Duration::from_secs(10), "the API server to die", || async {
            (!Path::new(&format!("/proc/{pid}/cmdline")).exists()
                || std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| c.is_empty())
                    .unwrap_or(true))
            .then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.run.join("apiserver.log"))
            .unwrap();
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(&pid_file, child.id().to_string()).unwrap();
        // stop.sh ends it by the pid file; this reaps it then.
        let mut child = child;
        std::thread::spawn(move || child.wait());
        eventually(
            Duration::from_secs(60),
            "the API server to come back",
            || async { client.apiserver_version().await.ok().map(drop) },
        )
        .await;
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new(support::repo_file("hack/testenv/stop.sh"))
            .arg(&self.run)
            .status();
    }
}

#[tokio::test]
async fn apiserver_restart_never_causes_a_partial_report() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || OwnCluster::start(&dir)
    })
    .await
    .unwrap();
    let client = client_for(&cluster.kubeconfig()).await;
    apply_crd(&client).await;
    let ns = unique("restart");
    create_namespace(&client, &ns, &[]).await;
    let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
    for i in 0..3 {
        running_pod(
            &client,
            &ns,
            &format!("web-{i}"),
            &[],
            std::slice::from_ref(&web),
        )
        .await;
    }
    let id = unique("t");
    let name = format!("{id}-restart");
    let env: KosliEnvironment = serde_json::from_value(json!({
        "apiVersion": "kosli.com/v1alpha1", "kind": "KosliEnvironment",
        "metadata": {"name": name, "labels": {"test": id}},
        "spec": {"namespaces": [ns]},
    }))
    .unwrap();
    Api::<KosliEnvironment>::all(client.clone())
        .create(&PostParams::default(), &env)
        .await
        .unwrap();
    let fake = FakeKosli::start().await;
    fake.add_environment(&name, "K8S");
    let mut op = Operator::start(&cluster.kubeconfig(), &fake, &id, "lease-restart", &[], &[]);
    op.wait_ready().await;
    let full = ["web-0", "web-1", "web-2"];
    eventually(Duration::from_secs(15), "the full report", || async {
        fake.reports(&name)
            .last()
            .filter(|r| pod_names(r) == full)
            .map(drop)
    })
    .await;

    cluster.restart_apiserver(&client).await;
    running_pod(&client, &ns, "web-3", &[], std::slice::from_ref(&web)).await;
    eventually(
        Duration::from_secs(60),
        "reporting to resume with the full set",
        || async {
            fake.reports(&name)
                .last()
                .filter(|r| pod_names(r) == ["web-0", "web-1", "web-2", "web-3"])
                .map(drop)
        },
    )
    .await;

    for report in fake.reports(&name) {
        let names = pod_names(&report);
        assert!(
            full.iter().all(|p| names.contains(&p.to_string())),
            "a partial report was sent: {names:?}"
        );
    }
    let metrics = op.metrics().await;
    let disrupted = metrics
        .lines()
        .filter(|l| {
            l.starts_with("kosli_operator_watch_errors_total")
                || l.starts_with("kosli_operator_watch_restarts_total")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(
        disrupted >= 1.0,
        "the restart should have broken the watches:\n{metrics}"
    );
    assert!(op.terminate().await.success(), "{}", op.log());
}
