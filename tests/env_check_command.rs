//! `kosli-operator check IMAGE --environment ENV` through the built binary,
//! resolving tags against the real registry and asking the strict fake Kosli.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use serde_json::json;
use support::fake_kosli::FakeKosli;
use support::testenv::TestEnv;
use support::{run_async, stdout, strings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exits_zero_when_compliant_and_one_with_reasons_when_not() {
    let t = TestEnv::get();
    let fake = FakeKosli::start().await;
    let single = t.single_digest.trim_start_matches("sha256:").to_owned();
    let index = t.index_digest.trim_start_matches("sha256:").to_owned();
    fake.state()
        .asserts
        .insert(single.clone(), json!({"compliant": true}));
    fake.state().asserts.insert(
        index.clone(),
        json!({"compliant": false,
        "policy_evaluations": [{"policy_name": "prod-requirements", "status": "NON-COMPLIANT"}],
        "html_url": "https://app.kosli.com/acme/x"}),
    );

    let image = format!("{}/{}:{}", t.registry, t.image_repo, t.single_tag);
    let o = run_async(
        vec![
            "check".into(),
            image.clone(),
            "--environment".into(),
            "prod".into(),
        ],
        fake.cli_env(),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", support::stderr(&o));
    assert_eq!(
        stdout(&o),
        format!("{image} -> sha256:{single}\ncompliant\n")
    );
    let query = fake.requests()[0].query.clone();
    assert_eq!(query.as_deref(), Some("environment_name=prod"));

    let image = format!("{}/{}:{}", t.registry, t.image_repo, t.index_tag);
    let o = run_async(
        vec!["check".into(), image, "--policy".into(), "p1,p2".into()],
        fake.cli_env(),
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains(&index)
            && out.contains("policy prod-requirements is NON-COMPLIANT")
            && out.contains("https://app.kosli.com/acme/x"),
        "{out}"
    );
    assert_eq!(
        fake.requests().last().unwrap().query.as_deref(),
        Some("policy_name=p1&policy_name=p2"),
        "comma-separated policies, as `kosli assert artifact` takes them, and no environment"
    );

    let nope = format!("{}/{}:nope", t.registry, t.image_repo);
    let o = run_async(
        vec!["check".into(), nope.clone(), "-e".into(), "prod".into()],
        fake.cli_env(),
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("cannot resolve tag"), "{}", stdout(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "{nope}: cannot resolve tag (failed to resolve {nope}: tag \"nope\" not found in {}/{}); \
             pin a digest (image@sha256:...)\n",
            t.registry, t.image_repo
        )
    );
}

/// `--fingerprint` checks a fingerprint without asking a registry; `-o json`
/// prints Kosli's answer as it came; `--environment` and `--policy` are
/// exclusive, as in `kosli assert artifact`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_takes_a_fingerprint_prints_kosli_json_and_refuses_both_scopes() {
    let fake = FakeKosli::start().await;
    let hex = "d".repeat(64);
    let answer = json!({"compliant": true, "scope": "environment", "environment": "prod",
        "html_url": "https://app.kosli.com/acme/fingerprint/d", "extra": {"kept": [1, 2]}});
    fake.state().asserts.insert(hex.clone(), answer.clone());
    // A registry that does not exist: reaching for it would fail the check.
    let image = "registry.invalid/app:1.0";

    let o = run_async(
        strings(&["check", image, "-F", &hex, "--environment", "prod"]),
        fake.cli_env(),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", support::stderr(&o));
    assert_eq!(stdout(&o), format!("{image} -> sha256:{hex}\ncompliant\n"));

    let o = run_async(
        strings(&[
            "check",
            image,
            "--fingerprint",
            &format!("sha256:{hex}"),
            "-e",
            "prod",
            "-o",
            "json",
        ]),
        fake.cli_env(),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", support::stderr(&o));
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(printed, answer, "Kosli's answer, unknown fields included");

    let unknown = "e".repeat(64);
    let o = run_async(
        strings(&["check", image, "-F", &unknown, "-e", "prod", "-o", "json"]),
        fake.cli_env(),
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert!(
        support::stderr(&o).contains("never seen fingerprint"),
        "{}",
        support::stderr(&o)
    );

    let asked = fake.requests().len();
    for bad in [
        vec![
            "check",
            image,
            "-F",
            &hex,
            "--environment",
            "prod",
            "--policy",
            "p",
        ],
        vec!["check", image, "-F", "not-hex", "-e", "prod"],
    ] {
        let o = run_async(strings(&bad), fake.cli_env()).await;
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", support::stderr(&o));
    }
    assert_eq!(
        fake.requests().len(),
        asked,
        "usage errors ask Kosli nothing"
    );
}
