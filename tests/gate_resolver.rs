//! The gate's lookups against the strict fake Kosli: caches hold definitive
//! verdicts only, identical lookups in flight are shared, the circuit breaker
//! stops asking a failing Kosli, and outages fall back to cached compliance.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use std::sync::Arc;
use std::time::Duration;

use kosli_operator::core::fingerprint::ImageRef;
use kosli_operator::gate::decision::ImageVerdict;
use kosli_operator::gate::registry::{RegistryClient, RegistryConfig};
use kosli_operator::gate::resolver::{Resolver, ResolverOptions};
use kosli_operator::kosli::{ApiToken, KosliClient, KosliConfig};
use serde_json::json;
use support::fake_kosli::{FakeKosli, ORG, Scripted, TOKEN};

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn resolver(fake: &FakeKosli, options: ResolverOptions) -> Resolver {
    let mut config = KosliConfig::new(&fake.url, ORG, ApiToken::new(TOKEN));
    config.retry.max_retries = 0;
    config.request_timeout = Duration::from_secs(2);
    let kosli = KosliClient::new(&config).unwrap();
    Resolver::new(
        RegistryClient::new(&RegistryConfig::default()).unwrap(),
        Some(kosli),
        options,
    )
}

fn asserts(fake: &FakeKosli) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.path.contains("/asserts/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliant_verdicts_are_cached_and_shared_in_flight() {
    let fake = FakeKosli::start().await;
    fake.state()
        .asserts
        .insert(A.into(), json!({"compliant": true}));
    fake.script([Scripted::slow(Duration::from_millis(300))]);
    let r = Arc::new(resolver(&fake, ResolverOptions::default()));
    let lookups = (0..10).map(|_| {
        let r = r.clone();
        tokio::spawn(async move { r.verdict(A, "prod", &[]).await })
    });
    for verdict in futures::future::join_all(lookups).await {
        assert_eq!(
            verdict.unwrap(),
            ImageVerdict::Compliant { digest: A.into() }
        );
    }
    assert_eq!(
        asserts(&fake),
        1,
        "ten identical lookups in flight make one request"
    );
    r.verdict(A, "prod", &[]).await;
    assert_eq!(asserts(&fake), 1, "a compliant verdict is cached");
    r.verdict(A, "staging", &[]).await;
    r.verdict(A, "prod", &["p".to_owned()]).await;
    assert_eq!(
        asserts(&fake),
        3,
        "environment and policies are part of the key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_compliant_verdicts_expire_fast_and_errors_are_never_cached() {
    let fake = FakeKosli::start().await;
    fake.state()
        .asserts
        .insert(B.into(), json!({"compliant": false}));
    let options = ResolverOptions {
        non_compliant_ttl: Duration::from_millis(200),
        ..ResolverOptions::default()
    };
    let r = resolver(&fake, options);
    assert!(matches!(
        r.verdict(B, "prod", &[]).await,
        ImageVerdict::NonCompliant { .. }
    ));
    assert!(matches!(
        r.verdict(B, "prod", &[]).await,
        ImageVerdict::NonCompliant { .. }
    ));
    assert_eq!(asserts(&fake), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    fake.state()
        .asserts
        .insert(B.into(), json!({"compliant": true}));
    assert_eq!(
        r.verdict(B, "prod", &[]).await,
        ImageVerdict::Compliant { digest: B.into() },
        "a fix shows within seconds"
    );

    fake.script([Scripted::status(500, "boom")]);
    let other = "c".repeat(64);
    assert!(matches!(
        r.verdict(&other, "prod", &[]).await,
        ImageVerdict::KosliUnreachable { .. }
    ));
    assert_eq!(
        r.verdict(&other, "prod", &[]).await,
        ImageVerdict::Unknown {
            digest: other.clone()
        },
        "the error was not cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_serves_the_last_compliant_verdict_and_the_breaker_stops_asking() {
    let fake = FakeKosli::start().await;
    fake.state()
        .asserts
        .insert(A.into(), json!({"compliant": true}));
    let options = ResolverOptions {
        compliant_ttl: Duration::from_millis(1),
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_millis(500),
        ..ResolverOptions::default()
    };
    let r = resolver(&fake, options);
    assert_eq!(
        r.verdict(A, "prod", &[]).await,
        ImageVerdict::Compliant { digest: A.into() }
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    fake.script(std::iter::repeat_n(Scripted::status(503, "down"), 100));
    assert!(matches!(
        r.verdict(A, "prod", &[]).await,
        ImageVerdict::CompliantCached { .. }
    ));
    assert!(matches!(
        r.verdict(B, "prod", &[]).await,
        ImageVerdict::KosliUnreachable { .. }
    ));
    assert!(matches!(
        r.verdict(B, "prod", &[]).await,
        ImageVerdict::KosliUnreachable { .. }
    ));
    let before = asserts(&fake);
    assert_eq!(before, 4, "three failures in a row open the circuit");
    for _ in 0..5 {
        match r.verdict(B, "prod", &[]).await {
            ImageVerdict::KosliUnreachable { why, .. } => {
                assert!(why.contains("circuit open"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(asserts(&fake), before, "an open circuit sends nothing");
    tokio::time::sleep(Duration::from_millis(550)).await;
    fake.state().script.clear();
    assert_eq!(
        r.verdict(B, "prod", &[]).await,
        ImageVerdict::Unknown { digest: B.into() },
        "half-open: Kosli is asked again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_in_the_reference_needs_no_registry_and_a_bad_reference_is_unresolvable() {
    let fake = FakeKosli::start().await;
    let r = resolver(&fake, ResolverOptions::default());
    assert_eq!(
        r.fingerprint(&format!("127.0.0.1:9/app@sha256:{A}"), None)
            .await
            .unwrap(),
        A
    );
    let err = r.fingerprint("Not A Reference", None).await.unwrap_err();
    let err = kosli_operator::error::chain(&err);
    assert!(err.contains("invalid image reference"), "{err}");
    assert_eq!(
        err,
        format!(
            "invalid image reference: {}",
            ImageRef::parse("Not A Reference").unwrap_err()
        )
    );
    let closed = support::closed_loopback_url();
    let host = closed.trim_start_matches("http://");
    let err = r
        .fingerprint(&format!("{host}/app:1"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("failed to reach"), "{err}");
    assert!(
        err.starts_with(&format!(
            "failed to resolve {host}/app:1: failed to reach {host}: "
        )),
        "{err}"
    );
}
