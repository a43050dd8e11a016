//! Tag -> digest against real OCI registries (docker-registry on loopback):
//! anonymous, Basic auth and the Bearer token flow, single images and indexes.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use kosli_operator::Error;
use kosli_operator::core::fingerprint::ImageRef;
use kosli_operator::gate::registry::{RegistryClient, RegistryConfig, RegistryCredentials};
use support::testenv::TestEnv;

fn client() -> RegistryClient {
    RegistryClient::new(&RegistryConfig::default()).unwrap()
}

fn image(registry: &str, repo: &str, tag: &str) -> ImageRef {
    ImageRef::parse(&format!("{registry}/{repo}:{tag}")).unwrap()
}

fn creds(user: &str, password: &str) -> RegistryCredentials {
    RegistryCredentials {
        username: user.into(),
        password: password.into(),
    }
}

async fn resolve(
    image: &ImageRef,
    credentials: Option<&RegistryCredentials>,
) -> Result<String, String> {
    client()
        .resolve(image, credentials)
        .await
        .map(|d| d.to_string())
        .map_err(|e| e.to_string())
}

/// The message of the registry error resolving `image` ends in; the error must
/// be a registry error about exactly that image, and its text both.
async fn refusal(image: &ImageRef, credentials: Option<&RegistryCredentials>) -> String {
    let err = client().resolve(image, credentials).await.unwrap_err();
    match &err {
        Error::Registry {
            image: about,
            message,
            ..
        } => {
            assert_eq!(*about, image.to_string(), "{err}");
            assert_eq!(
                err.to_string(),
                format!("failed to resolve {image}: {message}")
            );
            message.clone()
        }
        other => panic!("expected a registry error, got {other:?}"),
    }
}

#[tokio::test]
async fn single_platform_tag_resolves_to_its_manifest_digest() {
    let env = TestEnv::get();
    let got = resolve(
        &image(&env.registry, &env.image_repo, &env.single_tag),
        None,
    )
    .await
    .unwrap();
    assert_eq!(got, env.single_digest);
}

#[tokio::test]
async fn multi_platform_tag_resolves_to_the_index_digest() {
    let env = TestEnv::get();
    let got = resolve(&image(&env.registry, &env.image_repo, &env.index_tag), None)
        .await
        .unwrap();
    assert_eq!(got, env.index_digest);
    assert_ne!(
        got, env.amd64_digest,
        "the index digest, not a platform's manifest"
    );
}

#[tokio::test]
async fn unknown_tag_is_a_clear_error() {
    let env = TestEnv::get();
    let err = resolve(&image(&env.registry, &env.image_repo, "no-such-tag"), None)
        .await
        .unwrap_err();
    assert!(err.contains("tag \"no-such-tag\" not found"), "{err}");
    assert_eq!(
        refusal(&image(&env.registry, &env.image_repo, "no-such-tag"), None).await,
        format!(
            "tag \"no-such-tag\" not found in {}/{}",
            env.registry, env.image_repo
        )
    );
    let err = resolve(&image(&env.registry, "testenv/no-such-repo", "v1"), None)
        .await
        .unwrap_err();
    assert!(err.contains("not found"), "{err}");
    assert_eq!(
        refusal(&image(&env.registry, "testenv/no-such-repo", "v1"), None).await,
        format!(
            "tag \"v1\" not found in {}/testenv/no-such-repo",
            env.registry
        )
    );
}

#[tokio::test]
async fn basic_auth_registry() {
    let env = TestEnv::get();
    let img = image(&env.registry_basic, &env.image_repo, &env.index_tag);
    let good = creds(&env.registry_basic_user, &env.registry_basic_password);
    assert_eq!(resolve(&img, Some(&good)).await.unwrap(), env.index_digest);

    let err = resolve(&img, None).await.unwrap_err();
    assert!(
        err.contains("requires credentials and none were found"),
        "{err}"
    );
    assert_eq!(
        refusal(&img, None).await,
        format!(
            "{} requires credentials and none were found",
            env.registry_basic
        )
    );
    let wrong = creds(&env.registry_basic_user, "wrong");
    let err = resolve(&img, Some(&wrong)).await.unwrap_err();
    assert!(err.contains("refused the credentials (HTTP 401)"), "{err}");
    assert!(!err.contains("wrong"), "the password never shows: {err}");
    assert_eq!(
        refusal(&img, Some(&wrong)).await,
        format!("{} refused the credentials (HTTP 401)", env.registry_basic)
    );
}

#[tokio::test]
async fn bearer_token_registry() {
    let env = TestEnv::get();
    let img = image(&env.registry_bearer, &env.image_repo, &env.single_tag);
    let good = creds(&env.registry_bearer_user, &env.registry_bearer_password);
    let c = client();
    assert_eq!(
        c.resolve(&img, Some(&good)).await.unwrap().to_string(),
        env.single_digest
    );
    // The token is cached: a second lookup works with the same client too.
    let index = image(&env.registry_bearer, &env.image_repo, &env.index_tag);
    assert_eq!(
        c.resolve(&index, Some(&good)).await.unwrap().to_string(),
        env.index_digest
    );

    let wrong = creds(&env.registry_bearer_user, "wrong");
    let err = resolve(&img, Some(&wrong)).await.unwrap_err();
    assert!(
        err.contains("token service") && err.contains("refused the credentials"),
        "{err}"
    );
    assert_eq!(
        refusal(&img, Some(&wrong)).await,
        format!(
            "the token service of {} refused the credentials (HTTP 401)",
            env.registry_bearer
        )
    );
    let err = resolve(&img, None).await.unwrap_err();
    assert!(err.contains("refused"), "{err}");
    assert_eq!(
        refusal(&img, None).await,
        format!(
            "the token service of {} refused the credentials (HTTP 401)",
            env.registry_bearer
        )
    );
}

#[tokio::test]
async fn unreachable_registry_is_a_clear_error() {
    let closed = support::closed_loopback_url();
    let host = closed.trim_start_matches("http://");
    let err = resolve(&image(host, "app", "v1"), None).await.unwrap_err();
    assert!(
        err.starts_with(&format!(
            "failed to resolve {host}/app:v1: failed to reach {host}"
        )),
        "{err}"
    );
    let message = refusal(&image(host, "app", "v1"), None).await;
    assert!(
        message.starts_with(&format!("failed to reach {host}: ")),
        "{message}"
    );
}

#[tokio::test]
async fn a_cached_token_serves_only_the_credentials_it_was_minted_for() {
    // Issue 11, finding 11: tokens were cached by username, so a wrong (or
    // rotated-away) password with the same user reused the right one's token.
    let env = TestEnv::get();
    let img = image(&env.registry_bearer, &env.image_repo, &env.single_tag);
    let good = creds(&env.registry_bearer_user, &env.registry_bearer_password);
    let wrong = creds(&env.registry_bearer_user, "wrong");
    let c = client();
    assert_eq!(
        c.resolve(&img, Some(&good)).await.unwrap().to_string(),
        env.single_digest
    );
    let err = c.resolve(&img, Some(&wrong)).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "failed to resolve {img}: the token service of {} refused the credentials (HTTP 401)",
            env.registry_bearer
        )
    );
}
