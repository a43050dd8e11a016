use serde_json::{Value, json};

use super::*;

fn review(kind: &str, group: &str, operation: &str, object: Value, old: Option<Value>) -> Vec<u8> {
    let (g, v) = group.split_once('/').unwrap_or(("", group));
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": g, "version": v, "kind": kind},
            "resource": {"group": g, "version": v, "resource": format!("{}s", kind.to_lowercase())},
            "name": "x", "namespace": "shop", "operation": operation,
            "userInfo": {"username": "admin"},
            "object": object, "oldObject": old, "dryRun": false
        }
    })
    .to_string()
    .into_bytes()
}

fn pod_spec(images: &[&str]) -> Value {
    json!({
        "initContainers": [{"name": "init", "image": "busybox:1"}],
        "containers": images.iter().enumerate().map(|(i, im)| json!({"name": format!("c{i}"), "image": im})).collect::<Vec<_>>(),
        "ephemeralContainers": [{"name": "debug", "image": "debug:1"}],
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccountName": "builder"
    })
}

fn template(images: &[&str]) -> Value {
    json!({"metadata": {"labels": {"app": "web"}}, "spec": pod_spec(images)})
}

#[test]
fn every_kind_finds_its_pod_template() {
    let cases = [
        (
            "Pod",
            "v1",
            json!({"metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}}, "spec": pod_spec(&["nginx:1"])}),
        ),
        (
            "Deployment",
            "apps/v1",
            json!({"metadata": {"annotations": {"a": "b"}}, "spec": {"template": template(&["nginx:1"])}}),
        ),
        (
            "StatefulSet",
            "apps/v1",
            json!({"metadata": {"annotations": {"a": "b"}}, "spec": {"template": template(&["nginx:1"])}}),
        ),
        (
            "DaemonSet",
            "apps/v1",
            json!({"metadata": {"annotations": {"a": "b"}}, "spec": {"template": template(&["nginx:1"])}}),
        ),
        (
            "ReplicaSet",
            "apps/v1",
            json!({"metadata": {"annotations": {"a": "b"}}, "spec": {"template": template(&["nginx:1"])}}),
        ),
        (
            "Job",
            "batch/v1",
            json!({"metadata": {"annotations": {"a": "b"}}, "spec": {"template": template(&["nginx:1"])}}),
        ),
        (
            "CronJob",
            "batch/v1",
            json!({"metadata": {"annotations": {"a": "b"}}, "spec": {"jobTemplate": {"spec": {"template": template(&["nginx:1"])}}}}),
        ),
    ];
    for (kind, group, object) in cases {
        let (_, w) = parse_review(&review(kind, group, "CREATE", object, None)).unwrap();
        let t = w.template.unwrap_or_else(|| panic!("{kind}: no template"));
        let images: Vec<(&str, &str)> = t
            .images
            .iter()
            .map(|c| (c.list, c.image.as_str()))
            .collect();
        assert_eq!(
            images,
            [
                ("initContainers", "busybox:1"),
                ("containers", "nginx:1"),
                ("ephemeralContainers", "debug:1")
            ],
            "{kind}"
        );
        assert_eq!(
            t.labels.get("app").map(String::as_str),
            Some("web"),
            "{kind}"
        );
        assert_eq!(t.image_pull_secrets, ["regcred"], "{kind}");
        assert_eq!(t.service_account, "builder", "{kind}");
        assert_eq!(
            w.annotations.get("a").map(String::as_str),
            Some("b"),
            "{kind}"
        );
        assert_eq!((w.namespace.as_str(), w.kind.as_str()), ("shop", kind));
    }
}

#[test]
fn an_inspected_kind_whose_template_cannot_be_read_says_where() {
    let cases = [
        (
            "Pod",
            "v1",
            json!({"spec": {"containers": "nope"}}),
            "spec.containers is not a list of containers (a pod has at least one)",
        ),
        (
            "Pod",
            "v1",
            json!({"spec": {"containers": []}}),
            "spec.containers is not a list of containers (a pod has at least one)",
        ),
        (
            "Pod",
            "v1",
            json!({"metadata": {}}),
            "spec is missing or not an object",
        ),
        (
            "Pod",
            "v1",
            json!({"spec": {"containers": [{"name": 7, "image": ["x"]}]}}),
            "spec.containers[0] has no image",
        ),
        (
            "Pod",
            "v1",
            json!({"spec": {"containers": [{"image": "a:1"}], "initContainers": {"x": 1}}}),
            "spec.initContainers is not a list of containers",
        ),
        (
            "Deployment",
            "apps/v1",
            json!({"spec": {"replicas": 1}}),
            "spec.template is missing",
        ),
        (
            "CronJob",
            "batch/v1",
            json!({"spec": {"jobTemplate": {"spec": {"template": []}}}}),
            "the object at spec.jobTemplate.spec.template is not a JSON object",
        ),
        (
            "Job",
            "batch/v1",
            json!({"spec": {"template": {"spec": {"containers": [{"image": "a:1"}], "ephemeralContainers": [{"name": "d"}]}}}}),
            "spec.template.spec.ephemeralContainers[0] has no image",
        ),
    ];
    for (kind, group, object, problem) in cases {
        let (_, w) = parse_review(&review(kind, group, "CREATE", object, None)).unwrap();
        assert_eq!(w.template, None, "{kind}: {problem}");
        assert_eq!(w.unreadable.as_deref(), Some(problem), "{kind}");
    }
    // Null lists are absent lists; a readable object has no problem.
    let (_, w) = parse_review(&review(
        "Pod",
        "v1",
        "CREATE",
        json!({"spec": {"containers": [{"image": "a:1"}], "initContainers": null}}),
        None,
    ))
    .unwrap();
    assert_eq!(w.unreadable, None);
    assert_eq!(w.template.unwrap().images.len(), 1);
}

#[test]
fn other_kinds_are_not_inspected() {
    let (_, w) = parse_review(&review(
        "ConfigMap",
        "v1",
        "CREATE",
        json!({"data": {}}),
        None,
    ))
    .unwrap();
    assert_eq!(w.template, None);
}

#[test]
fn update_carries_the_old_template_and_defaults_apply() {
    let old =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "a:1"}]}}}});
    let new =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "a:2"}]}}}});
    let (_, w) = parse_review(&review("Deployment", "apps/v1", "UPDATE", new, Some(old))).unwrap();
    assert_eq!(w.operation, Operation::Update);
    assert_eq!(w.old_template.unwrap().images[0].image, "a:1");
    assert_eq!(w.template.unwrap().service_account, "default");
}

#[test]
fn malformed_bodies_are_errors_not_panics() {
    for body in [
        &b""[..],
        b"not json",
        b"[]",
        b"{}",
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":1}}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":"x"}"#,
    ] {
        assert!(
            parse_review(body).is_err(),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn odd_shapes_inside_a_valid_review_do_not_panic_and_are_not_read_as_empty() {
    // Before, entries without a name or image read as empty strings; now the
    // first thing that cannot be read is named, and the object is refused.
    let object = json!({"spec": {"containers": [{"image": "a:1"}], "initContainers": [5, {"image": 7}], "imagePullSecrets": [{"nom": 1}]}});
    let (_, w) = parse_review(&review("Pod", "v1", "CREATE", object, None)).unwrap();
    assert_eq!(w.template, None);
    assert_eq!(
        w.unreadable.as_deref(),
        Some("spec.initContainers[0] has no image")
    );
    // Pull secrets without a name are skipped: they only ever add credentials.
    let object =
        json!({"spec": {"containers": [{"image": "a:1"}], "imagePullSecrets": [{"nom": 1}]}});
    let (_, w) = parse_review(&review("Pod", "v1", "CREATE", object, None)).unwrap();
    assert!(w.template.unwrap().image_pull_secrets.is_empty());
}

#[test]
fn a_malformed_review_is_reported_without_its_text() {
    let object =
        json!({"metadata": {"labels": "db-password=hunter2"}, "spec": pod_spec(&["nginx:1"])});
    let body = review("Pod", "v1", "CREATE", object, None);
    let error = parse_review(&body).unwrap_err();
    let text = crate::error::chain(&error);
    assert!(
        text.starts_with("not an AdmissionReview: structure error at line 1, column "),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}
