use std::collections::BTreeMap;

use kube::core::admission::Operation;

use super::*;
use crate::core::crd::UnknownArtifacts;
use crate::gate::workload::{ContainerImage, PodTemplate, Requester, Workload};
use crate::kosli::{AssertResponse, PolicyEvaluation};

const D: &str = "644a70516a26004c97d0d85c7fe1d0c3a67ea8ab7ddf4aff193d9f301670cf36";

fn now() -> jiff::Timestamp {
    "2026-11-26T12:00:00Z".parse().unwrap()
}

fn template(images: &[&str]) -> PodTemplate {
    PodTemplate {
        images: images
            .iter()
            .map(|i| ContainerImage {
                container: "c".into(),
                list: "containers",
                image: (*i).into(),
            })
            .collect(),
        service_account: "default".into(),
        ..PodTemplate::default()
    }
}

fn workload(operation: Operation, images: &[&str]) -> Workload {
    Workload {
        kind: "Pod".into(),
        namespace: "shop".into(),
        name: "p".into(),
        operation,
        sub_resource: None,
        annotations: BTreeMap::new(),
        template: Some(template(images)),
        old_template: None,
        unreadable: None,
        user: Requester {
            username: "alice".into(),
            groups: vec!["system:authenticated".into(), "oncall".into()],
        },
        dry_run: false,
    }
}

/// Members of `oncall` and the user `root` may break glass.
fn authority() -> BreakGlassAuthority {
    BreakGlassAuthority {
        users: ["root".to_owned()].into(),
        groups: ["oncall".to_owned()].into(),
    }
}

fn target(mode: GateMode) -> Target {
    Target {
        object: "shop".into(),
        kosli_env: "prod".into(),
        mode,
        policies: vec![],
        unknown_artifacts: UnknownArtifacts::Deny,
        require_digest: false,
    }
}

#[test]
fn a_create_with_an_enforcing_environment_is_checked_with_images_deduplicated() {
    let w = workload(Operation::Create, &["nginx:1", "nginx:1", "redis:7"]);
    let plan = plan(
        &w,
        vec![target(GateMode::Enforce)],
        false,
        &authority(),
        now(),
    )
    .unwrap();
    assert_eq!(plan.images, ["nginx:1", "redis:7"]);
}

#[test]
fn skips_are_cheap_and_labelled() {
    let mut w = workload(Operation::Create, &["nginx:1"]);
    let t = || vec![target(GateMode::Enforce)];
    assert_eq!(
        plan(&w, t(), true, &authority(), now()),
        Err(Skip::ExemptNamespace)
    );
    assert_eq!(
        plan(&w, vec![], false, &authority(), now()),
        Err(Skip::NoEnvironment)
    );
    assert_eq!(
        plan(&w, vec![target(GateMode::Off)], false, &authority(), now()),
        Err(Skip::NoEnvironment)
    );
    w.operation = Operation::Delete;
    assert_eq!(
        plan(&w, t(), false, &authority(), now()),
        Err(Skip::Operation)
    );
    w.operation = Operation::Update;
    w.sub_resource = Some("status".into());
    assert_eq!(
        plan(&w, t(), false, &authority(), now()),
        Err(Skip::Subresource("status".into()))
    );
    w.sub_resource = Some("scale".into());
    assert!(matches!(
        plan(&w, t(), false, &authority(), now()),
        Err(Skip::Subresource(_))
    ));
    w.sub_resource = Some("ephemeralcontainers".into());
    assert!(
        plan(&w, t(), false, &authority(), now()).is_ok(),
        "debug containers are checked"
    );
    w.template = None;
    w.sub_resource = None;
    assert_eq!(
        plan(&w, t(), false, &authority(), now()),
        Err(Skip::NotInspected)
    );
}

#[test]
fn updates_check_only_the_images_they_bring() {
    let mut w = workload(Operation::Update, &["nginx:1", "redis:7"]);
    w.old_template = Some(template(&["redis:7", "nginx:1"]));
    assert_eq!(
        plan(
            &w,
            vec![target(GateMode::Enforce)],
            false,
            &authority(),
            now()
        ),
        Err(Skip::ImagesUnchanged)
    );
    w.old_template = Some(template(&["nginx:1"]));
    assert_eq!(
        plan(
            &w,
            vec![target(GateMode::Enforce)],
            false,
            &authority(),
            now()
        )
        .unwrap()
        .images,
        ["redis:7"]
    );
}

#[test]
fn break_glass_holds_only_until_it_expires_and_at_most_a_day() {
    let mut w = workload(Operation::Create, &["nginx:1"]);
    let t = || vec![target(GateMode::Enforce)];
    w.annotations
        .insert(BREAK_GLASS_ANNOTATION.into(), "2026-11-26T13:00:00Z".into());
    assert_eq!(
        plan(&w, t(), false, &authority(), now()),
        Err(Skip::BreakGlass {
            until: "2026-11-26T13:00:00Z".parse().unwrap(),
            user: "alice".into(),
        })
    );
    w.annotations
        .insert(BREAK_GLASS_ANNOTATION.into(), "2026-11-26T11:59:59Z".into());
    assert!(
        plan(&w, t(), false, &authority(), now()).is_ok(),
        "expired: checked as usual"
    );
    assert!(
        break_glass(&w, now())
            .unwrap()
            .unwrap_err()
            .to_string()
            .contains("expired")
    );
    w.annotations
        .insert(BREAK_GLASS_ANNOTATION.into(), "2026-11-28T12:00:00Z".into());
    assert!(
        plan(&w, t(), false, &authority(), now()).is_ok(),
        "too far ahead: not honoured"
    );
    w.annotations
        .insert(BREAK_GLASS_ANNOTATION.into(), "tomorrow".into());
    assert!(plan(&w, t(), false, &authority(), now()).is_ok());
    assert!(
        break_glass(&w, now())
            .unwrap()
            .unwrap_err()
            .to_string()
            .contains("RFC 3339")
    );
}

fn non_compliant() -> ImageVerdict {
    ImageVerdict::NonCompliant {
        digest: D.into(),
        reasons: vec!["policy prod: unit-tests (missing_attestation)".into()],
        url: Some("https://app.kosli.com/acme/fingerprint/x".into()),
    }
}

#[test]
fn each_mode_answers_as_documented() {
    let bad = |mode| vec![(target(mode), "app:1".to_owned(), non_compliant())];
    let enforce = answer(&bad(GateMode::Enforce));
    assert!(!enforce.allowed);
    let message = enforce.message.unwrap();
    assert!(
        message.contains("app:1")
            && message.contains(D)
            && message.contains("missing_attestation")
            && message.contains("https://app.kosli.com/"),
        "{message}"
    );
    let warn = answer(&bad(GateMode::Warn));
    assert!(warn.allowed && warn.warnings.len() == 1 && warn.message.is_none());
    let audit = answer(&bad(GateMode::Audit));
    assert!(audit.allowed && audit.warnings.is_empty() && audit.failures.len() == 1);
}

#[test]
fn unknown_unreachable_and_unresolvable_say_so() {
    let cases = [
        (
            ImageVerdict::Unknown { digest: D.into() },
            "unknown to Kosli",
        ),
        (
            ImageVerdict::KosliUnreachable {
                digest: D.into(),
                why: "timeout".into(),
            },
            "Kosli is unreachable",
        ),
        (
            ImageVerdict::Unresolvable {
                why: "connection refused".into(),
            },
            "cannot resolve tag",
        ),
    ];
    for (verdict, needle) in cases {
        let a = answer(&[(target(GateMode::Enforce), "app:1".into(), verdict)]);
        let message = a.message.unwrap();
        assert!(!a.allowed && message.contains(needle), "{message}");
        assert!(
            !message.contains("not compliant"),
            "an outage is not a non-compliance: {message}"
        );
    }
    let a = answer(&[(
        target(GateMode::Enforce),
        "app:1".into(),
        ImageVerdict::Unresolvable { why: "x".into() },
    )]);
    assert!(a.message.unwrap().contains("pin a digest"));
}

#[test]
fn a_cached_compliant_verdict_admits_with_a_warning() {
    let a = answer(&[(
        target(GateMode::Enforce),
        "app:1".into(),
        ImageVerdict::CompliantCached {
            digest: D.into(),
            why: "down".into(),
        },
    )]);
    assert!(a.allowed);
    assert!(
        a.warnings[0].contains("cached compliant verdict"),
        "{:?}",
        a.warnings
    );
}

#[test]
fn any_enforcing_environment_denies() {
    let results = vec![
        (target(GateMode::Warn), "app:1".to_owned(), non_compliant()),
        (
            target(GateMode::Enforce),
            "app:1".to_owned(),
            ImageVerdict::Compliant { digest: D.into() },
        ),
        (
            target(GateMode::Enforce),
            "db:1".to_owned(),
            ImageVerdict::Unknown { digest: D.into() },
        ),
    ];
    let a = answer(&results);
    assert!(!a.allowed);
    assert_eq!(a.warnings.len(), 1);
    assert_eq!(a.failures.len(), 2);
}

#[test]
fn reasons_name_policies_rules_and_attestations() {
    let assert: AssertResponse = serde_json::from_value(serde_json::json!({
        "compliant": false,
        "policy_evaluations": [
            {"policy_name": "prod-requirements", "status": "NON-COMPLIANT", "rule_evaluations": [
                {"rule": {"definition": {"name": "unit-tests", "type": "junit"}}, "satisfied": false, "ignored": false,
                 "resolutions": [{"type": "missing_attestation"}]},
                {"rule": {"definition": {"name": "sbom"}}, "satisfied": true}
            ]},
            {"policy_name": "ok-policy", "status": "COMPLIANT"}
        ],
        "flows": [{"flow": "web", "trail": "abc123", "compliance_status": {"attestations_statuses": [
            {"attestation_name": "snyk", "attestation_type": "snyk", "status": "FAILED", "is_compliant": false},
            {"attestation_name": "tests", "is_compliant": true}
        ]}}]
    }))
    .unwrap();
    assert_eq!(
        reasons(&assert),
        [
            "policy prod-requirements: unit-tests (missing_attestation)",
            "attestation snyk is FAILED in trail abc123",
        ]
    );
    let bare = AssertResponse {
        compliant: false,
        policy_evaluations: vec![PolicyEvaluation {
            policy_name: "p".into(),
            status: "NON-COMPLIANT".into(),
            rule_evaluations: vec![],
        }],
        ..AssertResponse::default()
    };
    assert_eq!(reasons(&bare), ["policy p is NON-COMPLIANT"]);
}

#[test]
fn break_glass_is_honoured_only_for_the_users_and_groups_named() {
    let mut w = workload(Operation::Create, &["nginx:1"]);
    let t = || vec![target(GateMode::Enforce)];
    let until: jiff::Timestamp = "2026-11-26T13:00:00Z".parse().unwrap();
    w.annotations
        .insert(BREAK_GLASS_ANNOTATION.into(), until.to_string());
    // A member of an allowed group.
    assert!(matches!(
        break_glass_for(&w, &authority(), now()),
        BreakGlass::Honoured { until: u } if u == until
    ));
    // A named user, in no allowed group.
    w.user = Requester {
        username: "root".into(),
        groups: vec![],
    };
    assert_eq!(
        plan(&w, t(), false, &authority(), now()),
        Err(Skip::BreakGlass {
            until,
            user: "root".into()
        })
    );
    // Anyone else: refused, and the reason names who tried.
    w.user = Requester {
        username: "mallory".into(),
        groups: vec!["system:authenticated".into(), "devs".into()],
    };
    let expected = "gate.kosli.com/break-glass-until used by \"mallory\" (groups: devs, system:authenticated), who may not break glass; allowed users: root; allowed groups: oncall";
    assert_eq!(
        plan(&w, t(), false, &authority(), now()),
        Err(Skip::BreakGlassNotAuthorised {
            reason: expected.into()
        })
    );
    // Nobody is authorised by an empty authority, not even a cluster admin.
    w.user = Requester {
        username: "kubernetes-admin".into(),
        groups: vec!["system:masters".into()],
    };
    let nobody = BreakGlassAuthority::default();
    let BreakGlass::NotAuthorised { reason } = break_glass_for(&w, &nobody, now()) else {
        panic!("an empty authority authorises nobody")
    };
    assert!(
        reason.ends_with("allowed users: none; allowed groups: none"),
        "{reason}"
    );
    // A group name is matched exactly, not as a prefix.
    w.user.groups = vec!["oncall-2".into(), "Oncall".into()];
    assert!(matches!(
        break_glass_for(&w, &authority(), now()),
        BreakGlass::NotAuthorised { .. }
    ));
    // Expired: ignored whoever asks (checked as usual, with its own reason).
    w.annotations
        .insert(BREAK_GLASS_ANNOTATION.into(), "2026-11-26T11:00:00Z".into());
    assert!(matches!(
        break_glass_for(&w, &authority(), now()),
        BreakGlass::Ignored(_)
    ));
    assert!(plan(&w, t(), false, &authority(), now()).is_ok());
    w.annotations.clear();
    assert!(matches!(
        break_glass_for(&w, &authority(), now()),
        BreakGlass::Absent
    ));
}

#[test]
fn a_review_that_cannot_be_decided_is_denied_in_enforce_and_warned_about_otherwise() {
    let denied = undecided(GateMode::Enforce, "no answer in time");
    assert!(!denied.allowed);
    assert_eq!(
        denied.message.as_deref(),
        Some("denied by the Kosli gate: no answer in time")
    );
    assert_eq!(
        denied.failures,
        ["the Kosli gate could not check this: no answer in time"]
    );
    for mode in [GateMode::Warn, GateMode::Audit] {
        let admitted = undecided(mode, "no answer in time");
        assert!(admitted.allowed, "{mode:?}");
        assert_eq!(admitted.message, None);
        assert_eq!(
            admitted.warnings,
            ["the Kosli gate could not check this: no answer in time"]
        );
    }
    assert_eq!(
        strictest([GateMode::Audit, GateMode::Enforce, GateMode::Warn]),
        GateMode::Enforce
    );
    assert_eq!(strictest([GateMode::Audit, GateMode::Warn]), GateMode::Warn);
    assert_eq!(strictest([]), GateMode::Off);
    assert_eq!(mode_label(GateMode::Off), "none");
}

#[test]
fn required_digests_refuse_tags_before_any_lookup() {
    assert_eq!(require_digest("nginx:1"), Some(ImageVerdict::NotPinned));
    assert_eq!(require_digest("nginx"), Some(ImageVerdict::NotPinned));
    assert_eq!(require_digest(&format!("nginx@sha256:{D}")), None);
    assert_eq!(require_digest(&format!("nginx:1@sha256:{D}")), None);
    assert_eq!(require_digest(""), None, "unparsable: left to the resolver");
    let denied = answer(&[(
        target(GateMode::Enforce),
        "nginx:1".into(),
        ImageVerdict::NotPinned,
    )]);
    assert!(!denied.allowed);
    assert_eq!(
        denied.message.as_deref(),
        Some(
            "denied by the Kosli gate: nginx:1: prod requires digests: pin the image by digest (image@sha256:...), a tag can move between this check and the pull"
        )
    );
    let warned = answer(&[(
        target(GateMode::Warn),
        "nginx:1".into(),
        ImageVerdict::NotPinned,
    )]);
    assert!(warned.allowed);
    assert_eq!(warned.warnings.len(), 1);
}

#[test]
fn an_unreadable_pod_template_is_refused_where_a_gate_applies_and_only_there() {
    let mut w = workload(Operation::Create, &[]);
    w.template = None;
    w.unreadable = Some("spec.containers is not a list of containers".into());
    let why = match plan(
        &w,
        vec![target(GateMode::Enforce)],
        false,
        &authority(),
        now(),
    ) {
        Err(Skip::Unreadable { reason }) => reason,
        other => panic!("not refused: {other:?}"),
    };
    assert_eq!(
        why,
        "the Pod cannot be read: spec.containers is not a list of containers"
    );
    assert!(matches!(
        plan(&w, vec![target(GateMode::Off)], false, &authority(), now()),
        Err(Skip::NoEnvironment)
    ));
    assert!(matches!(
        plan(&w, vec![], false, &authority(), now()),
        Err(Skip::NoEnvironment)
    ));
    assert!(matches!(
        plan(
            &w,
            vec![target(GateMode::Enforce)],
            true,
            &authority(),
            now()
        ),
        Err(Skip::ExemptNamespace)
    ));
}

#[test]
fn unknown_images_follow_their_environments_unknown_artifacts() {
    let unknown = ImageVerdict::Unknown { digest: D.into() };
    let with = |mode, unknown_artifacts| Target {
        unknown_artifacts,
        ..target(mode)
    };
    let one = |t: Target, v: &ImageVerdict| answer(&[(t, "app:1".to_owned(), v.clone())]);

    let denied = one(with(GateMode::Enforce, UnknownArtifacts::Deny), &unknown);
    assert!(!denied.allowed);
    assert!(denied.message.unwrap().contains("is unknown to Kosli"));

    let warned = one(with(GateMode::Enforce, UnknownArtifacts::Warn), &unknown);
    assert!(warned.allowed, "a warning, even in Enforce");
    assert_eq!(warned.warnings.len(), 1);
    assert_eq!(
        warned.failures.len(),
        1,
        "still a failure for logs and audit"
    );

    let allowed = one(with(GateMode::Enforce, UnknownArtifacts::Allow), &unknown);
    assert!(allowed.allowed && allowed.warnings.is_empty() && allowed.failures.is_empty());
    assert_eq!(allowed.allowed_unknown.len(), 1, "logged");

    let in_warn = one(with(GateMode::Warn, UnknownArtifacts::Deny), &unknown);
    assert!(in_warn.allowed);
    assert_eq!(in_warn.warnings.len(), 1);

    // Only unknown images: a non-compliant one is denied whatever it says.
    let non_compliant = ImageVerdict::NonCompliant {
        digest: D.into(),
        reasons: vec!["policy p is NON-COMPLIANT".into()],
        url: None,
    };
    for choice in [UnknownArtifacts::Warn, UnknownArtifacts::Allow] {
        assert!(!one(with(GateMode::Enforce, choice), &non_compliant).allowed);
        assert!(!one(with(GateMode::Enforce, choice), &ImageVerdict::NotPinned).allowed);
    }
}
