//! What the reporter's end-to-end tests share: the test environment, an admin
//! client, a fresh fake Kosli and an id that labels this test's
//! KosliEnvironments and names its Lease.

use std::path::Path;

use kosli_operator::core::crd::{KosliEnvironment, KosliEnvironmentStatus};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::fake_kosli::FakeKosli;
use super::operator::Operator;
use super::testenv::{TestEnv, apply_crd, create_namespace, unique};
use super::webhook::{
    ServingCert, operator_args, register_validating_webhook, serving_cert, webhook_label,
};

pub struct Setup {
    pub env: TestEnv,
    pub client: Client,
    pub fake: FakeKosli,
    /// Labels this test's KosliEnvironments and names its Lease.
    pub id: String,
}

/// The CRD applied, a fake Kosli started, an id starting with `prefix`.
pub async fn setup(prefix: &str) -> Setup {
    let env = TestEnv::get();
    let client = env.client().await;
    apply_crd(&client).await;
    Setup {
        env,
        client,
        fake: FakeKosli::start().await,
        id: unique(prefix),
    }
}

impl Setup {
    /// Creates KosliEnvironment `name` (as given) of this test with `spec`.
    pub async fn create_environment(&self, name: &str, spec: Value) {
        let object: KosliEnvironment = serde_json::from_value(json!({
            "apiVersion": "kosli.com/v1alpha1", "kind": "KosliEnvironment",
            "metadata": {"name": name, "labels": {"test": self.id}},
            "spec": spec,
        }))
        .unwrap();
        Api::<KosliEnvironment>::all(self.client.clone())
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
    }

    /// A KosliEnvironment `<id>-<name>` of this test, registered in the fake
    /// Kosli; returns its name.
    pub async fn environment(&self, name: &str, spec: Value) -> String {
        let name = format!("{}-{name}", self.id);
        self.create_environment(&name, spec).await;
        self.fake.add_environment(&name, "K8S");
        name
    }

    /// The operator for this test's KosliEnvironments and Lease, as `kubeconfig`.
    pub fn operator_as(&self, kubeconfig: &Path, extra: &[&str], env: &[(&str, &str)]) -> Operator {
        Operator::start(
            kubeconfig,
            &self.fake,
            &self.id,
            &format!("lease-{}", self.id),
            extra,
            env,
        )
    }

    pub async fn status(&self, name: &str) -> KosliEnvironmentStatus {
        Api::<KosliEnvironment>::all(self.client.clone())
            .get(name)
            .await
            .unwrap()
            .status
            .unwrap_or_default()
    }
}

/// The gate's side: a namespace the test's webhook covers and the operator
/// serving that webhook.
impl Setup {
    /// Namespace `<id>-ns`, labelled for this test's webhook, covered by
    /// KosliEnvironment `<id>-env` (Kosli environment `prod`) in gate `mode`.
    pub async fn gated_namespace(&self, mode: &str) -> String {
        let ns = format!("{}-ns", self.id);
        create_namespace(&self.client, &ns, &[(webhook_label(), &self.id)]).await;
        self.create_environment(
            &format!("{}-env", self.id),
            json!({"name": "prod", "namespaces": [ns], "gate": {"mode": mode}}),
        )
        .await;
        self.fake.add_environment("prod", "K8S");
        ns
    }

    /// The operator serving the gate (with `extra` flags) once ready, and the
    /// API server calling it for this test's namespaces with
    /// `failure_policy` and `timeout_seconds`; returns the operator, its
    /// webhook port and its serving certificate.
    pub async fn serve_gate(
        &self,
        extra: &[&str],
        failure_policy: &str,
        timeout_seconds: i32,
    ) -> (Operator, u16, ServingCert) {
        let cert = serving_cert();
        let port = super::free_port();
        let mut args = operator_args(&cert, port);
        args.extend(extra.iter().map(|s| s.to_string()));
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut op = self.operator_as(&self.env.kubeconfig, &arg_refs, &[]);
        op.wait_ready().await;
        register_validating_webhook(
            &self.client,
            &self.id,
            &format!("https://127.0.0.1:{port}/validate"),
            &cert.ca_pem,
            (webhook_label(), &self.id),
            failure_policy,
            timeout_seconds,
        )
        .await;
        (op, port, cert)
    }
}
