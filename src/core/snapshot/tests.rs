use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::*;

const A: &str = "644a70516a26004c97d0d85c7fe1d0c3a67ea8ab7ddf4aff193d9f301670cf36";
const B: &str = "b1f0f2d4a1e3c5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5";
const C: &str = "0c1d2e3f405162738495a6b7c8d9eafb0c1d2e3f405162738495a6b7c8d9eafb";

fn pod(v: Value) -> PodRecord {
    let pod: Pod = serde_json::from_value(v).expect("test pod parses");
    PodRecord::from(&pod)
}

/// A Running pod with one app container.
fn running(ns: &str, name: &str, image: &str, image_id: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                     "creationTimestamp": "2026-08-19T10:09:58Z"},
        "spec": {"containers": [{"name": "app", "image": image}]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "app", "image": image, "imageID": image_id, "ready": true, "restartCount": 0}
        ]}
    })
}

fn body(snapshot: &Snapshot) -> Value {
    serde_json::from_slice(&snapshot.body).expect("body is JSON")
}

fn build_default(pods: &[PodRecord]) -> Snapshot {
    build(pods, ContainerOptions::default())
}

#[test]
fn exact_bytes_of_a_one_pod_report() {
    let mut v = running(
        "prod",
        "web-7d9c5b6f7b-x2k4q",
        "docker.io/library/nginx:1.21.3",
        &format!("docker.io/library/nginx@sha256:{A}"),
    );
    v["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "web-7d9c5b6f7b", "uid": "0b6f0c1e-1111-2222-3333-444455556666",
        "controller": true, "blockOwnerDeletion": true}]);
    let snap = build_default(&[pod(v)]);
    let expected = format!(
        concat!(
            r#"{{"artifacts":[{{"podName":"web-7d9c5b6f7b-x2k4q","namespace":"prod","#,
            r#""digests":{{"docker.io/library/nginx:1.21.3":"{}"}},"creationTimestamp":1787134198,"#,
            r#""owners":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d9c5b6f7b","#,
            r#""uid":"0b6f0c1e-1111-2222-3333-444455556666","controller":true,"blockOwnerDeletion":true}}]}}]}}"#
        ),
        A
    );
    assert_eq!(String::from_utf8(snap.body.clone()).unwrap(), expected);
    assert_eq!(snap.hash, hex::encode(Sha256::digest(expected.as_bytes())));
    assert_eq!(
        (snap.pod_count, snap.artifact_count, snap.config_id_count),
        (1, 1, 0)
    );
}

#[test]
fn empty_selection_is_an_empty_artifact_list() {
    let snap = build_default(&[]);
    assert_eq!(snap.body, br#"{"artifacts":[]}"#);
    assert_eq!(snap.pod_count, 0);
}

#[test]
fn only_running_and_failed_pods_are_reported() {
    let pods: Vec<PodRecord> = ["Running", "Failed", "Pending", "Succeeded", "Unknown", ""]
        .iter()
        .enumerate()
        .map(|(i, phase)| {
            let mut v = running(
                "ns",
                &format!("p{i}"),
                "nginx:1",
                &format!("nginx@sha256:{A}"),
            );
            v["status"]["phase"] = json!(phase);
            pod(v)
        })
        .collect();
    let snap = build_default(&pods);
    let names: Vec<String> = body(&snap)["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["podName"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["p0", "p1"]);
    assert!(snap.warnings.is_empty(), "{:?}", snap.warnings);
}

#[test]
fn owners_are_null_when_none() {
    let snap = build_default(&[pod(running(
        "ns",
        "bare",
        "nginx:1",
        &format!("nginx@sha256:{A}"),
    ))]);
    assert_eq!(body(&snap)["artifacts"][0]["owners"], Value::Null);
    assert!(
        String::from_utf8(snap.body)
            .unwrap()
            .contains(r#""owners":null"#)
    );
}

#[test]
fn owner_optional_fields_are_left_out_when_absent() {
    let mut v = running("ns", "p", "nginx:1", &format!("nginx@sha256:{A}"));
    v["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "u"}]);
    let snap = build_default(&[pod(v)]);
    assert_eq!(
        body(&snap)["artifacts"][0]["owners"],
        json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "u"}])
    );
}

#[test]
fn creation_timestamp_is_epoch_seconds() {
    let mut v = running("ns", "p", "nginx:1", &format!("nginx@sha256:{A}"));
    v["metadata"]["creationTimestamp"] = json!("1970-01-02T00:00:01Z");
    assert_eq!(
        body(&build_default(&[pod(v)]))["artifacts"][0]["creationTimestamp"],
        json!(86401)
    );
}

#[test]
fn artifacts_sorted_by_namespace_then_pod_name() {
    let pods = vec![
        pod(running("b", "a", "nginx:1", &format!("nginx@sha256:{A}"))),
        pod(running("a", "z", "nginx:1", &format!("nginx@sha256:{A}"))),
        pod(running("a", "m", "nginx:1", &format!("nginx@sha256:{A}"))),
    ];
    let snap = build_default(&pods);
    let order: Vec<(String, String)> = body(&snap)["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["namespace"].as_str().unwrap().into(),
                a["podName"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("a".into(), "m".into()),
            ("a".into(), "z".into()),
            ("b".into(), "a".into())
        ]
    );
    let mut reversed = pods.clone();
    reversed.reverse();
    assert_eq!(
        build_default(&reversed).hash,
        snap.hash,
        "input order must not change the hash"
    );
}

#[test]
fn hash_changes_when_a_digest_changes() {
    let one = build_default(&[pod(running(
        "ns",
        "p",
        "nginx:1",
        &format!("nginx@sha256:{A}"),
    ))]);
    let two = build_default(&[pod(running(
        "ns",
        "p",
        "nginx:1",
        &format!("nginx@sha256:{B}"),
    ))]);
    assert_ne!(one.hash, two.hash);
}

#[test]
fn every_image_id_form_gives_its_digest() {
    let forms = [
        (
            format!("docker.io/library/nginx@sha256:{A}"),
            FingerprintKind::RegistryDigest,
        ),
        (
            format!("docker-pullable://nginx@sha256:{A}"),
            FingerprintKind::RegistryDigest,
        ),
        (
            format!("quay.io/org/app@sha256:{A}"),
            FingerprintKind::RegistryDigest,
        ),
        (format!("docker://sha256:{A}"), FingerprintKind::ConfigId),
        (format!("sha256:{A}"), FingerprintKind::ConfigId),
        (A.to_owned(), FingerprintKind::ConfigId),
    ];
    for (image_id, kind) in forms {
        let snap = build_default(&[pod(running("ns", "p", "app:1", &image_id))]);
        assert_eq!(
            body(&snap)["artifacts"][0]["digests"]["app:1"],
            json!(A),
            "{image_id}"
        );
        let want_config = usize::from(kind == FingerprintKind::ConfigId);
        assert_eq!(snap.config_id_count, want_config, "{image_id}");
    }
}

#[test]
fn bare_id_status_image_falls_back_to_normalised_spec_image() {
    let mut v = running(
        "ns",
        "p",
        "nginx:1.25",
        &format!("docker.io/library/nginx@sha256:{A}"),
    );
    v["status"]["containerStatuses"][0]["image"] = json!(format!("sha256:{B}"));
    let snap = build_default(&[pod(v)]);
    assert_eq!(
        body(&snap)["artifacts"][0]["digests"],
        json!({"docker.io/library/nginx:1.25": A})
    );
}

#[test]
fn spec_image_with_tag_and_digest_drops_the_digest_from_the_name() {
    let spec = format!("registry.example.com/team/app:v2@sha256:{A}");
    let mut v = running(
        "ns",
        "p",
        &spec,
        &format!("registry.example.com/team/app@sha256:{A}"),
    );
    v["status"]["containerStatuses"][0]["image"] = json!(format!("sha256:{B}"));
    let snap = build_default(&[pod(v)]);
    assert_eq!(
        body(&snap)["artifacts"][0]["digests"],
        json!({"registry.example.com/team/app:v2": A})
    );
}

#[test]
fn digest_pinned_spec_image_falls_back_to_the_image_id_name() {
    let spec = format!("nginx@sha256:{A}");
    let mut v = running(
        "ns",
        "p",
        &spec,
        &format!("docker.io/library/nginx@sha256:{A}"),
    );
    v["status"]["containerStatuses"][0]["image"] = json!(format!("sha256:{B}"));
    let snap = build_default(&[pod(v)]);
    let key = format!("docker.io/library/nginx@sha256:{A}");
    assert_eq!(body(&snap)["artifacts"][0]["digests"], json!({key: A}));
}

#[test]
fn with_nothing_readable_the_status_image_is_kept() {
    let mut v = running("ns", "p", &format!("sha256:{B}"), &format!("sha256:{A}"));
    v["status"]["containerStatuses"][0]["image"] = json!(format!("sha256:{B}"));
    let snap = build_default(&[pod(v)]);
    let key = format!("sha256:{B}");
    assert_eq!(body(&snap)["artifacts"][0]["digests"], json!({key: A}));
}

#[test]
fn container_without_image_id_is_skipped_with_a_warning() {
    let mut v = running("ns", "p", "nginx:1", &format!("nginx@sha256:{A}"));
    v["spec"]["containers"] =
        json!([{"name": "app", "image": "nginx:1"}, {"name": "pulling", "image": "busybox:1"}]);
    v["status"]["containerStatuses"] = json!([
        {"name": "app", "image": "docker.io/library/nginx:1", "imageID": format!("docker.io/library/nginx@sha256:{A}"), "ready": true, "restartCount": 0},
        {"name": "pulling", "image": "busybox:1", "imageID": "", "ready": false, "restartCount": 0}
    ]);
    let snap = build_default(&[pod(v)]);
    assert_eq!(
        body(&snap)["artifacts"][0]["digests"],
        json!({"docker.io/library/nginx:1": A})
    );
    assert_eq!(snap.warnings.len(), 1);
    assert!(
        snap.warnings[0].contains("pulling (empty image ID)"),
        "{:?}",
        snap.warnings
    );
}

#[test]
fn pod_without_any_digest_is_skipped_not_fatal() {
    let broken = running("ns", "broken", "busybox:1", "");
    let fine = running("ns", "fine", "nginx:1", &format!("nginx@sha256:{A}"));
    let snap = build_default(&[pod(broken), pod(fine)]);
    assert_eq!(snap.pod_count, 1);
    assert_eq!(body(&snap)["artifacts"][0]["podName"], json!("fine"));
    assert!(
        snap.warnings[0].starts_with("skipping Running pod broken in namespace ns"),
        "{:?}",
        snap.warnings
    );
}

#[test]
fn running_pod_without_container_statuses_is_skipped() {
    let mut v = running("ns", "p", "nginx:1", "");
    v["status"] = json!({"phase": "Running"});
    let snap = build_default(&[pod(v)]);
    assert_eq!(snap.pod_count, 0);
    assert_eq!(snap.warnings.len(), 1);
}

#[test]
fn same_image_twice_gives_one_key() {
    let mut v = running("ns", "p", "nginx:1", &format!("nginx@sha256:{A}"));
    let status = v["status"]["containerStatuses"][0].clone();
    let mut second = status.clone();
    second["name"] = json!("again");
    v["status"]["containerStatuses"] = json!([status, second]);
    let snap = build_default(&[pod(v)]);
    assert_eq!(
        body(&snap)["artifacts"][0]["digests"]
            .as_object()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(snap.artifact_count, 1);
}

fn pod_with_sidecar_init_and_ephemeral() -> PodRecord {
    let mut v = running("ns", "p", "app:1", &format!("app@sha256:{A}"));
    v["spec"]["initContainers"] = json!([
        {"name": "migrate", "image": "migrate:1"},
        {"name": "proxy", "image": "envoy:1", "restartPolicy": "Always"}
    ]);
    v["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox:1"}]);
    v["status"]["initContainerStatuses"] = json!([
        {"name": "migrate", "image": "docker.io/library/migrate:1", "imageID": format!("docker.io/library/migrate@sha256:{C}"), "ready": false, "restartCount": 0},
        {"name": "proxy", "image": "docker.io/library/envoy:1", "imageID": format!("docker.io/library/envoy@sha256:{B}"), "ready": true, "restartCount": 0}
    ]);
    v["status"]["ephemeralContainerStatuses"] = json!([
        {"name": "debug", "image": "docker.io/library/busybox:1", "imageID": format!("docker.io/library/busybox@sha256:{C}"), "ready": false, "restartCount": 0}
    ]);
    pod(v)
}

#[test]
fn sidecars_and_ephemeral_containers_are_opt_in() {
    let p = pod_with_sidecar_init_and_ephemeral();
    let keys = |options| -> Vec<String> {
        let snap = build(std::slice::from_ref(&p), options);
        body(&snap)["artifacts"][0]["digests"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(keys(ContainerOptions::default()), ["app:1"]);
    assert_eq!(
        keys(ContainerOptions {
            include_sidecars: true,
            include_ephemeral: false
        }),
        ["app:1", "docker.io/library/envoy:1"]
    );
    assert_eq!(
        keys(ContainerOptions {
            include_sidecars: true,
            include_ephemeral: true
        }),
        [
            "app:1",
            "docker.io/library/busybox:1",
            "docker.io/library/envoy:1"
        ]
    );
}

#[test]
fn plain_init_containers_are_never_reported() {
    let p = pod_with_sidecar_init_and_ephemeral();
    assert!(p.containers.iter().all(|c| c.name != "migrate"));
}

#[test]
fn config_ids_are_counted_once_per_fingerprint() {
    let pods = vec![
        pod(running("ns", "a", "local:dev", &format!("sha256:{A}"))),
        pod(running("ns", "b", "local:dev", &format!("sha256:{A}"))),
        pod(running("ns", "c", "nginx:1", &format!("nginx@sha256:{B}"))),
    ];
    let snap = build_default(&pods);
    assert_eq!(
        (snap.pod_count, snap.artifact_count, snap.config_id_count),
        (3, 2, 1)
    );
}
