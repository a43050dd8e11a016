//! The committed CRD against the real kube-apiserver: it is accepted and becomes
//! Established, its schema rejects invalid values and fills defaults, and the
//! example KosliEnvironments are accepted.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use kosli_operator::core::crd::{GateMode, KosliEnvironment};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};
use support::testenv::{TestEnv, api_error, apply_crd, unique};

async fn setup() -> kube::Client {
    let client = TestEnv::get().client().await;
    apply_crd(&client).await;
    client
}

fn dynamic(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &ApiResource::erase::<KosliEnvironment>(&()))
}

async fn create(
    client: &kube::Client,
    name: &str,
    spec: Value,
) -> Result<DynamicObject, kube::Error> {
    let object = DynamicObject::new(name, &ApiResource::erase::<KosliEnvironment>(&()))
        .data(json!({ "spec": spec }));
    dynamic(client)
        .create(&PostParams::default(), &object)
        .await
}

#[tokio::test]
async fn crd_is_established_and_defaults_are_applied() {
    let client = setup().await;
    let name = unique("defaults");
    create(&client, &name, json!({"namespaces": ["shop"]}))
        .await
        .unwrap();
    let typed: Api<KosliEnvironment> = Api::all(client.clone());
    let env = typed.get(&name).await.unwrap();
    assert_eq!(env.spec.namespaces, ["shop"]);
    assert_eq!(
        env.spec.heartbeat_seconds, 300,
        "the server applies the schema default"
    );
    assert_eq!(env.spec.gate.mode, GateMode::Off);
    assert!(!env.spec.auto_create && !env.spec.include_sidecars);
    assert_eq!(env.environment_name(), name);
}

#[tokio::test]
async fn invalid_field_values_are_rejected_by_the_schema() {
    let client = setup().await;
    let cases = [
        (json!({"gate": {"mode": "Sometimes"}}), "spec.gate.mode"),
        // An unquoted `mode: Off`, as kubectl's YAML (1.1) reads it.
        (json!({"gate": {"mode": false}}), "spec.gate.mode"),
        (
            json!({"gate": {"unknownArtifacts": "Maybe"}}),
            "spec.gate.unknownArtifacts",
        ),
        (json!({"heartbeatSeconds": 5}), "spec.heartbeatSeconds"),
        (
            json!({"heartbeatSeconds": "often"}),
            "spec.heartbeatSeconds",
        ),
        (json!({"name": "has space"}), "spec.name"),
        (json!({"namespaces": "shop"}), "spec.namespaces"),
        (
            json!({"podSelector": {"matchLabels": {"app": 3}}}),
            "spec.podSelector.matchLabels",
        ),
    ];
    for (spec, field) in cases {
        let (code, message) = api_error(create(&client, &unique("invalid"), spec.clone()).await);
        assert_eq!(code, 422, "{spec}: {message}");
        assert!(
            message.contains(field),
            "{spec}: message does not name {field}: {message}"
        );
    }
}

#[tokio::test]
async fn example_kosli_environments_are_accepted_by_the_server() {
    let client = setup().await;
    let dir = support::repo_file("examples/environments");
    let mut accepted = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in text.split("\n---\n") {
            let mut object: DynamicObject = serde_saphyr::from_str(doc).unwrap();
            // Cluster-scoped and fixed names: a server-side dry run validates without storing.
            object.metadata.name = Some(unique("example"));
            let params = PostParams {
                dry_run: true,
                ..PostParams::default()
            };
            dynamic(&client)
                .create(&params, &object)
                .await
                .unwrap_or_else(|e| panic!("{} rejected: {e}", path.display()));
            accepted += 1;
        }
    }
    assert!(accepted >= 5, "{accepted}");
}
