//! `kosli-operator run` against the real kube-apiserver and the strict fake
//! Kosli: one writer per Kosli environment (two KosliEnvironments naming it do
//! not overwrite each other; the oldest reports, the other says why and takes
//! over when the owner goes), and a permanent failure recovers within seconds
//! when the Kosli token rotates.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use kosli_operator::core::crd::{KosliEnvironment, KosliEnvironmentStatus};
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};
use support::operator::{Operator, eventually};
use support::pod_names;
use support::setup::{Setup, setup};
use support::testenv::{RunningContainer, create_namespace, events_about, running_pod};

const NGINX: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const SECONDS: Duration = Duration::from_secs(15);

impl Setup {
    fn operator(&self, env: &[(&str, &str)]) -> Operator {
        self.operator_as(&self.env.kubeconfig, &[], env)
    }
}

fn condition(status: &KosliEnvironmentStatus, type_: &str) -> Option<(String, String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn web() -> RunningContainer {
    RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX)
}

/// The namespaces of the pods a report holds.
fn namespaces(report: &Value) -> Vec<String> {
    let mut found: Vec<String> = report["artifacts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["namespace"].as_str().map(str::to_owned))
        .collect();
    found.sort();
    found.dedup();
    found
}

#[tokio::test]
async fn two_kosli_environments_naming_one_kosli_environment_have_one_writer() {
    let s = setup("o").await;
    let kosli_env = format!("{}-shared", s.id);
    s.fake.add_environment(&kosli_env, "K8S");
    let (ns_old, ns_new) = (format!("{}-old", s.id), format!("{}-new", s.id));
    create_namespace(&s.client, &ns_old, &[]).await;
    create_namespace(&s.client, &ns_new, &[]).await;
    running_pod(&s.client, &ns_old, "old-1", &[], &[web()]).await;
    running_pod(&s.client, &ns_new, "new-1", &[], &[web()]).await;

    // The newer object's name sorts first: only its creation time makes it second.
    let (older, newer) = (format!("{}-z-older", s.id), format!("{}-a-newer", s.id));
    s.create_environment(&older, json!({"name": kosli_env, "namespaces": [ns_old]}))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.create_environment(&newer, json!({"name": kosli_env, "namespaces": [ns_new]}))
        .await;

    let mut op = s.operator(&[]);
    op.wait_ready().await;
    let degraded = eventually(SECONDS, "the newer object Degraded", || async {
        let status = s.status(&newer).await;
        condition(&status, "Degraded")
            .filter(|(value, reason, _)| value == "True" && reason == "DuplicateKosliEnvironment")
    })
    .await;
    assert!(
        degraded.2.contains(&format!(
            "Kosli environment {kosli_env} is reported by KosliEnvironment {older}"
        )),
        "the reason names the owner: {degraded:?}"
    );
    eventually(SECONDS, "an Event on the newer object", || async {
        events_about(&s.client, &newer)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("DuplicateKosliEnvironment"))
    })
    .await;
    eventually(SECONDS, "the owner Ready, reporting as usual", || async {
        let status = s.status(&older).await;
        condition(&status, "Ready").filter(|c| c.0 == "True")
    })
    .await;

    // Changes on both sides: every report is the owner's view, none the other's.
    running_pod(&s.client, &ns_new, "new-2", &[], &[web()]).await;
    running_pod(&s.client, &ns_old, "old-2", &[], &[web()]).await;
    eventually(SECONDS, "the owner's report with old-2", || async {
        let reports = s.fake.reports(&kosli_env);
        reports
            .last()
            .filter(|r| pod_names(r) == ["old-1", "old-2"])
            .cloned()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reports = s.fake.reports(&kosli_env);
    for report in &reports {
        assert_eq!(
            namespaces(report),
            vec![ns_old.clone()],
            "one writer: {reports:?}"
        );
    }

    // The owner goes: the other takes over and reports its own view at once.
    Api::<KosliEnvironment>::all(s.client.clone())
        .delete(&older, &DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    eventually(SECONDS, "the newer object's report", || async {
        s.fake
            .reports(&kosli_env)
            .last()
            .filter(|r| pod_names(r) == ["new-1", "new-2"])
            .cloned()
    })
    .await;
    assert!(
        deleted.elapsed() < Duration::from_secs(5),
        "taken over at once, not at a heartbeat: {:?}",
        deleted.elapsed()
    );
    eventually(SECONDS, "the newer object Ready", || async {
        let status = s.status(&newer).await;
        condition(&status, "Ready").filter(|c| c.0 == "True")
    })
    .await;
    eventually(SECONDS, "a takeover Event", || async {
        events_about(&s.client, &newer)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("KosliEnvironmentTakenOver"))
    })
    .await;
}

/// Lays the token out as the kubelet projects a Secret volume: `token` ->
/// `..data/token`, and `..data` swapped atomically to a new directory.
fn project_token(dir: &Path, version: &str, token: &str) {
    std::fs::create_dir(dir.join(version)).unwrap();
    std::fs::write(dir.join(version).join("token"), token).unwrap();
    let staged = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &staged).unwrap();
    std::fs::rename(&staged, dir.join("..data")).unwrap();
    if std::fs::symlink_metadata(dir.join("token")).is_err() {
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
    }
}

#[tokio::test]
async fn a_rotated_token_is_used_within_seconds_after_a_401() {
    let s = setup("o").await;
    let name = format!("{}-rotated", s.id);
    s.fake.add_environment(&name, "K8S");
    let ns = format!("{}-rot", s.id);
    create_namespace(&s.client, &ns, &[]).await;
    running_pod(&s.client, &ns, "web-1", &[], &[web()]).await;
    s.create_environment(&name, json!({"namespaces": [ns]}))
        .await;

    // The mounted Secret holds a token Kosli does not accept (yet).
    let secret = tempfile::tempdir().unwrap();
    project_token(secret.path(), "..2026_01_01_v1", "token-not-yet-valid-1");
    let token_file = secret.path().join("token");
    let mut op = s.operator(&[("KOSLI_API_TOKEN_FILE", token_file.to_str().unwrap())]);
    op.wait_ready().await;
    eventually(SECONDS, "Degraded: Unauthorized", || async {
        let status = s.status(&name).await;
        condition(&status, "Degraded").filter(|c| c.0 == "True" && c.1 == "Unauthorized")
    })
    .await;
    assert!(s.fake.reports(&name).is_empty());

    // Rotation: Kosli now accepts only the new token, and the kubelet swaps it in.
    s.fake.set_token("token-rotated-in-22");
    project_token(secret.path(), "..2026_01_01_v2", "token-rotated-in-22");
    let rotated = Instant::now();
    eventually(SECONDS, "a report with the rotated token", || async {
        s.fake
            .reports(&name)
            .last()
            .filter(|r| pod_names(r) == ["web-1"])
            .cloned()
    })
    .await;
    assert!(
        rotated.elapsed() < Duration::from_secs(5),
        "reported again within seconds of the rotation: {:?}",
        rotated.elapsed()
    );
    eventually(SECONDS, "Ready again", || async {
        let status = s.status(&name).await;
        condition(&status, "Ready").filter(|c| c.0 == "True")
    })
    .await;
    let log = op.log();
    assert!(
        !log.contains("token-rotated-in-22") && !log.contains("token-not-yet-valid-1"),
        "no token reaches the log"
    );
}
