use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::*;
use crate::core::fingerprint::FingerprintKind;

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

    // The content hash, as documented: over each entry's fields, the name by
    // its digest, the namespace length first.
    let mut content = Sha256::new();
    content.update(b"kosli-operator K8S report content v3\n");
    let name = "web-7d9c5b6f7b-x2k4q";
    let mut name_digest = Sha256::new();
    name_digest.update((name.len() as u64).to_le_bytes());
    name_digest.update(name);
    content.update(name_digest.finalize());
    content.update([1]); // a namespace unlike the entry before's
    content.update(4_u64.to_le_bytes());
    content.update("prod");
    content.update(1_787_134_198_i64.to_le_bytes());
    content.update([1]); // shared parts unlike the entry before's
    content.update(Sha256::digest(format!(
        r#"{{"docker.io/library/nginx:1.21.3":"{A}"}}"#
    )));
    content.update(Sha256::digest(concat!(
        r#"[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d9c5b6f7b","#,
        r#""uid":"0b6f0c1e-1111-2222-3333-444455556666","controller":true,"blockOwnerDeletion":true}]"#
    )));
    assert_eq!(snap.hash, hex::encode(content.finalize()));
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

/// Equal bodies, equal hashes; different bodies, different hashes — also
/// where a naive concatenation of the fields would be equal.
#[test]
fn the_content_hash_changes_exactly_when_the_body_does() {
    let p = |ns: &str, name: &str, hex: &str, created: &str| {
        let mut v = running(ns, name, "nginx:1", &format!("nginx@sha256:{hex}"));
        v["metadata"]["creationTimestamp"] = json!(created);
        v
    };
    let t1 = "2026-08-19T10:09:58Z";
    let t2 = "2026-08-19T10:09:59Z";
    let reports = [
        vec![p("ab", "c", A, t1)],
        vec![p("a", "bc", A, t1)],
        vec![p("a", "bc", B, t1)],
        vec![p("a", "bc", A, t2)],
        vec![p("a", "bc", A, t1), p("a", "bd", A, t1)],
        vec![p("a", "bcbd", A, t1)],
        vec![],
    ];
    let mut seen = std::collections::BTreeMap::new();
    for values in reports {
        let shared: Vec<PodRecord> = {
            let mut interner = crate::core::pod::Interner::default();
            values
                .iter()
                .map(|v| {
                    let pod: Pod = serde_json::from_value(v.clone()).unwrap();
                    PodRecord::decode(&pod, None, &mut interner)
                })
                .collect()
        };
        let alone: Vec<PodRecord> = values.into_iter().map(pod).collect();
        let (a, b) = (build_default(&shared), build_default(&alone));
        assert_eq!(a, b, "sharing changes neither body nor hash");
        if let Some(other) = seen.insert(a.hash.clone(), a.body.clone()) {
            panic!(
                "two bodies, one hash: {} and {}",
                String::from_utf8_lossy(&other),
                String::from_utf8_lossy(&a.body)
            );
        }
    }
    assert_eq!(seen.len(), 7);
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
fn bare_id_status_image_falls_back_to_the_spec_image_as_written() {
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
        json!({"nginx:1.25": A})
    );
}

#[test]
fn spec_image_with_tag_and_digest_is_kept_whole() {
    let spec = format!("registry.example.com/team/app:v2@sha256:{A}");
    let mut v = running(
        "ns",
        "p",
        &spec,
        &format!("registry.example.com/team/app@sha256:{A}"),
    );
    v["status"]["containerStatuses"][0]["image"] = json!(format!("sha256:{B}"));
    let snap = build_default(&[pod(v)]);
    assert_eq!(body(&snap)["artifacts"][0]["digests"], json!({spec: A}));
}

#[test]
fn digest_pinned_spec_image_is_the_name() {
    let spec = format!("nginx@sha256:{A}");
    let mut v = running(
        "ns",
        "p",
        &spec,
        &format!("docker.io/library/nginx@sha256:{A}"),
    );
    v["status"]["containerStatuses"][0]["image"] = json!(format!("sha256:{B}"));
    let snap = build_default(&[pod(v)]);
    assert_eq!(body(&snap)["artifacts"][0]["digests"], json!({spec: A}));
}

#[test]
fn without_a_spec_image_the_image_id_names_the_artifact() {
    let id = format!("docker.io/library/nginx@sha256:{A}");
    assert_eq!(artifact_name(&format!("sha256:{B}"), None, &id), id);
    assert_eq!(artifact_name(&format!("sha256:{B}"), Some(""), &id), id);
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
    assert!(p.containers.list().iter().all(|c| c.name != "migrate"));
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

/// The body as serde writes it from the records (each value by serde, in
/// Kosli's field order): what the assembled body must equal byte for byte.
fn serialised_by_serde(pods: &[PodRecord], options: ContainerOptions) -> String {
    let mut sorted: Vec<&PodRecord> = pods.iter().filter(|p| p.is_reportable_phase()).collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut entries = Vec::new();
    for pod in sorted {
        let mut digests = std::collections::BTreeMap::new();
        for c in pod.containers.list().iter().filter(|c| c.counts(options)) {
            if let Ok(image) = &c.image {
                digests.insert(image.name.as_str(), image.fingerprint.hex.as_str());
            }
        }
        if digests.is_empty() {
            continue;
        }
        let owners = pod.owners.list();
        let owners = (!owners.is_empty()).then_some(owners);
        let text = |s: &str| serde_json::to_string(s);
        entries.push(format!(
            "{{\"podName\":{},\"namespace\":{},\"digests\":{},\"creationTimestamp\":{},\"owners\":{}}}",
            text(&pod.name).unwrap(),
            text(&pod.namespace).unwrap(),
            serde_json::to_string(&digests).unwrap(),
            pod.created.unwrap_or_default(),
            serde_json::to_string(&owners).unwrap(),
        ));
    }
    format!("{{\"artifacts\":[{}]}}", entries.join(","))
}

#[test]
fn strings_are_escaped_exactly_as_serde_escapes_them() {
    let mut every_char: String = (0u8..=0x7f).map(char::from).collect();
    every_char.push_str("é€😀\u{2028}");
    for s in [
        every_char.as_str(),
        "",
        "plain-name",
        "\"\\",
        "a\u{0}b\u{1f}c\u{7f}",
    ] {
        let mut ours = Vec::new();
        write_json_string(&mut ours, s);
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            serde_json::to_string(s).unwrap()
        );
    }
}

#[test]
fn integers_are_written_as_serde_writes_them() {
    for n in [0, 7, -7, 1_700_000_000, i64::MAX, i64::MIN, -1, 10, 100] {
        let mut ours = Vec::new();
        write_integer(&mut ours, n);
        assert_eq!(String::from_utf8(ours).unwrap(), n.to_string());
    }
}

/// Assembled from shared parts, the body is the serde body byte for byte, in
/// any input order, with shared and unshared records mixed.
#[test]
fn the_assembled_body_is_the_serialised_body() {
    let mut shared = crate::core::pod::Interner::default();
    let mut pods = Vec::new();
    for i in 0..300usize {
        let hex = [A, B, C][i % 3];
        let mut v = running(
            &format!("ns-{}", (i * 7) % 5),
            &format!("web-\"{}\\-{i}", i % 11),
            &format!("registry.example/app-{}:1.{}", i % 4, i % 2),
            &format!("registry.example/app@sha256:{hex}"),
        );
        v["metadata"]["creationTimestamp"] = json!(format!("20{:02}-01-02T03:04:05Z", 10 + i % 50));
        if i % 3 != 0 {
            v["metadata"]["ownerReferences"] = json!([{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("web-{}", i % 5),
                "uid": "u", "controller": i % 2 == 0,
            }]);
        }
        if i % 13 == 0 {
            v["status"]["phase"] = json!(["Pending", "Failed", "Succeeded"][i % 3]);
        }
        if i % 17 == 0 {
            v["status"]["containerStatuses"][0]["imageID"] = json!("");
        }
        let pod: Pod = serde_json::from_value(v).unwrap();
        pods.push(if i % 2 == 0 {
            PodRecord::decode(&pod, None, &mut shared)
        } else {
            PodRecord::from(&pod)
        });
    }
    let options = ContainerOptions::default();
    let snap = build(&pods, options);
    assert!(snap.pod_count > 200, "{}", snap.pod_count);
    let expected = serialised_by_serde(&pods, options);
    let ours = String::from_utf8(snap.body.clone()).unwrap();
    let first_difference = ours
        .bytes()
        .zip(expected.bytes())
        .position(|(a, b)| a != b)
        .map(|at| &ours[at.saturating_sub(80)..(at + 40).min(ours.len())]);
    assert_eq!(first_difference, None, "the bodies differ");
    assert_eq!(ours.len(), expected.len());
    pods.reverse();
    assert_eq!(build(&pods, options), snap, "input order does not matter");
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    assert_eq!(build(&pods, options), snap, "in order: not sorted again");
    assert_eq!(summarise_ordered(&pods, options).hash, snap.hash);
    assert_eq!(snap.artifact_count, 3);
    assert_eq!(snap.body_len, snap.body.len());
    assert_eq!(summarise_ordered(&pods, options).body_len, snap.body.len());
    for piece_len in [1, 7, 4096, 1 << 24] {
        let in_pieces: Vec<Vec<u8>> = pieces(pods.iter(), options, piece_len).collect();
        assert_eq!(in_pieces.concat(), snap.body, "pieces of {piece_len}");
        let (last, whole) = in_pieces.split_last().unwrap();
        assert!(
            whole.iter().all(|p| p.len() >= piece_len),
            "pieces of {piece_len}"
        );
        assert!(!last.is_empty());
    }
}

#[test]
fn an_empty_body_in_pieces_is_the_empty_report() {
    let none: [PodRecord; 0] = [];
    let options = ContainerOptions::default();
    let body: Vec<u8> = pieces(none.iter(), options, 1).flatten().collect();
    assert_eq!(body, b"{\"artifacts\":[]}");
    assert_eq!(summarise(&none, options).body_len, body.len());
    let whole: Vec<Vec<u8>> = pieces(none.iter(), options, 64).collect();
    assert_eq!(whole, [body], "one piece when it fits");
    let failed_only = [pod(running("a", "p", "nginx:1", ""))];
    let body: Vec<u8> = pieces(failed_only.iter(), options, 1).flatten().collect();
    assert_eq!(body, b"{\"artifacts\":[]}");
}

#[test]
fn lengths_are_counted_as_written() {
    for s in [
        "",
        "plain",
        "q\"b\\n\nr\rt\tb\u{8}f\u{c}",
        "\u{0}\u{1f}\u{7f}é",
    ] {
        let mut out = Vec::new();
        write_json_string(&mut out, s);
        assert_eq!(json_string_len(s), out.len(), "{s:?}");
    }
    for n in [0, 9, 10, -1, -10, 1_700_000_000, i64::MAX, i64::MIN] {
        let mut out = Vec::new();
        write_integer(&mut out, n);
        assert_eq!(integer_len(n), out.len(), "{n}");
    }
}

#[test]
fn a_summary_is_the_snapshot_without_its_body() {
    let pods = [
        pod(running("a", "p1", "nginx:1", &format!("nginx@sha256:{A}"))),
        pod(running("a", "p2", "nginx:1", "")),
        pod(running("b", "p1", "redis:7", &format!("redis@sha256:{B}"))),
    ];
    let full = build_default(&pods);
    let summary = summarise(&pods, ContainerOptions::default());
    assert!(summary.body.is_empty());
    assert_eq!(
        Snapshot {
            body: full.body.clone(),
            ..summary
        },
        full
    );
}
