//! One admission review, end to end: parse, decide whether to look anything up,
//! resolve images and verdicts within the deadline, answer. The API server always
//! gets an explicit answer before its own timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::core::admission::{AdmissionResponse, Operation};
use tokio::time::Instant;

use super::decision::{self, Answer, ImageVerdict, Skip, Target};
use super::pull_secrets;
use super::resolver::Resolver;
use super::workload::{Workload, parse_review};
use crate::core::fingerprint::ImageRef;
use crate::environments::EnvironmentIndex;
use crate::gate::registry::RegistryCredentials;
use crate::gate::server::{ReviewHandler, ReviewRejection};
use crate::k8s::events::{EventPublisher, EventType};
use crate::k8s::store::SharedState;
use crate::observe::metrics::Metrics;

#[derive(Clone, Debug)]
pub struct GateOptions {
    /// Time to answer within: well inside the webhook's timeoutSeconds.
    pub deadline: Duration,
    /// Never checked: kube-system, the operator's own namespace, and any given.
    pub exempt_namespaces: BTreeSet<String>,
}

/// Pull-secret credentials are read from the API server at most this often per
/// namespace, service account and secret list: a warm review must not wait on it.
const CREDENTIALS_TTL: Duration = Duration::from_secs(30);

type CredentialsKey = (String, String, Vec<String>);
type Credentials = BTreeMap<String, RegistryCredentials>;

/// What the gate reads and writes in the cluster.
pub struct GateCluster {
    pub client: kube::Client,
    /// Namespace labels, for environments that select namespaces by label.
    pub state: Arc<SharedState>,
    pub environments: Arc<EnvironmentIndex>,
    pub events: EventPublisher,
    pub metrics: Arc<Metrics>,
}

struct Inner {
    ctx: GateCluster,
    resolver: Arc<Resolver>,
    options: GateOptions,
    credentials: std::sync::Mutex<BTreeMap<CredentialsKey, (Arc<Credentials>, Instant)>>,
}

#[derive(Clone)]
pub struct GateHandler(Arc<Inner>);

impl GateHandler {
    pub fn new(ctx: GateCluster, resolver: Arc<Resolver>, options: GateOptions) -> Self {
        Self(Arc::new(Inner {
            ctx,
            resolver,
            options,
            credentials: std::sync::Mutex::default(),
        }))
    }

    /// Ready to decide: the KosliEnvironments and namespace labels are known.
    pub fn is_ready(&self) -> bool {
        self.0.ctx.environments.is_synced() && self.0.ctx.state.read().namespaces.is_synced()
    }
}

impl ReviewHandler for GateHandler {
    fn review(&self, body: Bytes) -> BoxFuture<'static, Result<Vec<u8>, ReviewRejection>> {
        let inner = self.0.clone();
        async move { inner.review(&body).await }.boxed()
    }
}

fn operation_label(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

impl Inner {
    /// The environments whose gate covers a pod in `namespace` with `labels`.
    fn targets(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<Target> {
        let namespace_labels = self.ctx.state.read().namespace_labels(namespace).cloned();
        self.ctx
            .environments
            .gated(namespace, namespace_labels.as_ref(), labels)
            .into_iter()
            .map(|e| Target {
                object: e.object.clone(),
                kosli_env: e.kosli_env.clone(),
                mode: e.gate.mode,
                policies: e.gate.policies.clone(),
            })
            .collect()
    }

    async fn review(&self, body: &[u8]) -> Result<Vec<u8>, ReviewRejection> {
        let started = Instant::now();
        let (request, workload) = parse_review(body).map_err(|e| ReviewRejection {
            status: 400,
            message: crate::error::chain(&e),
        })?;
        let deadline = started + self.options.deadline;
        let (answer, mode, decision) = self.decide(&workload, deadline).await;

        let mut response = AdmissionResponse::from(&request);
        if !answer.allowed {
            response = response.deny(answer.message.clone().unwrap_or_default());
        }
        if !answer.warnings.is_empty() {
            response.warnings = Some(answer.warnings.clone());
        }
        let metrics = &self.ctx.metrics;
        let operation = operation_label(&workload.operation);
        metrics
            .reviews
            .with_label_values(&[workload.kind.as_str(), operation, decision, mode])
            .inc();
        metrics
            .review_seconds
            .with_label_values(&[decision])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            kind = %workload.kind, namespace = %workload.namespace, name = %workload.name, operation,
            decision, mode, allowed = answer.allowed, failures = ?answer.failures,
            elapsed_ms = started.elapsed().as_millis() as u64, "admission review"
        );
        serde_json::to_vec(&response.into_review()).map_err(|e| ReviewRejection {
            status: 500,
            message: format!("failed to encode the answer: {e}"),
        })
    }

    /// The answer, the strictest mode involved and a decision label.
    async fn decide(
        &self,
        workload: &Workload,
        deadline: Instant,
    ) -> (Answer, &'static str, &'static str) {
        let allow = |label| {
            (
                Answer {
                    allowed: true,
                    ..Answer::default()
                },
                "none",
                label,
            )
        };
        let labels = workload
            .template
            .as_ref()
            .map(|t| t.labels.clone())
            .unwrap_or_default();
        let targets = self.targets(&workload.namespace, &labels);
        let exempt = self.options.exempt_namespaces.contains(&workload.namespace);
        let now = jiff::Timestamp::now();
        let plan = match decision::plan(workload, targets.clone(), exempt, now) {
            Ok(plan) => plan,
            Err(Skip::BreakGlass { until }) => {
                self.record_break_glass(workload, &targets, until).await;
                return allow("break-glass");
            }
            Err(skip) => return allow(skip.label()),
        };
        let mode = strictest(&plan.targets);
        let mut answer = self
            .check(workload, &plan.images, &plan.targets, deadline)
            .await;
        if let Some(Err(ignored)) = decision::break_glass(workload, now) {
            answer.warnings.push(format!(
                "break-glass not honoured: {}",
                crate::error::chain(&ignored)
            ));
        }
        let label = match (answer.allowed, answer.failures.is_empty()) {
            (false, _) => "denied",
            (true, true) => "allowed",
            (true, false) => "allowed-with-failures",
        };
        (answer, mode, label)
    }

    async fn check(
        &self,
        workload: &Workload,
        images: &[String],
        targets: &[Target],
        deadline: Instant,
    ) -> Answer {
        // Pull secrets matter only for tags: digest-pinned images need no registry.
        let needs_registry = images
            .iter()
            .any(|i| ImageRef::parse(i).is_ok_and(|r| r.digest.is_none()));
        let credentials = match &workload.template {
            Some(t) if needs_registry => {
                self.credentials(
                    &workload.namespace,
                    &t.image_pull_secrets,
                    &t.service_account,
                )
                .await
            }
            _ => Arc::default(),
        };
        let per_image = images.iter().map(|image| {
            let creds = ImageRef::parse(image)
                .ok()
                .and_then(|r| credentials.get(&r.registry).cloned());
            self.check_image(image, creds, targets, deadline)
        });
        let results: Vec<(Target, String, ImageVerdict)> =
            join_all(per_image).await.into_iter().flatten().collect();
        decision::answer(&results)
    }

    /// The registry credentials of a pod's pull secrets and service account,
    /// cached briefly (Secret rotation shows within CREDENTIALS_TTL).
    async fn credentials(
        &self,
        namespace: &str,
        secrets: &[String],
        service_account: &str,
    ) -> Arc<Credentials> {
        let key = (
            namespace.to_owned(),
            service_account.to_owned(),
            secrets.to_vec(),
        );
        let cached = {
            let cache = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(&key)
                .filter(|(_, at)| at.elapsed() < CREDENTIALS_TTL)
                .map(|(c, _)| c.clone())
        };
        if let Some(credentials) = cached {
            return credentials;
        }
        let fresh = Arc::new(
            pull_secrets::credentials(&self.ctx.client, namespace, secrets, service_account).await,
        );
        let mut cache = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (_, at)| at.elapsed() < CREDENTIALS_TTL);
        cache.insert(key, (fresh.clone(), Instant::now()));
        fresh
    }

    async fn check_image(
        &self,
        image: &str,
        credentials: Option<RegistryCredentials>,
        targets: &[Target],
        deadline: Instant,
    ) -> Vec<(Target, String, ImageVerdict)> {
        let digest =
            match tokio::time::timeout_at(deadline, self.resolver.fingerprint(image, credentials))
                .await
            {
                Ok(Ok(digest)) => digest,
                Ok(Err(e)) => {
                    let verdict = ImageVerdict::Unresolvable {
                        why: crate::error::chain(&e),
                    };
                    return targets
                        .iter()
                        .map(|t| (t.clone(), image.to_owned(), verdict.clone()))
                        .collect();
                }
                Err(_) => {
                    let verdict = ImageVerdict::Unresolvable {
                        why: "the registry did not answer in time".to_owned(),
                    };
                    return targets
                        .iter()
                        .map(|t| (t.clone(), image.to_owned(), verdict.clone()))
                        .collect();
                }
            };
        let verdicts = targets.iter().map(|target| {
            let digest = digest.clone();
            async move {
                let lookup = self
                    .resolver
                    .verdict(&digest, &target.kosli_env, &target.policies);
                let verdict = match tokio::time::timeout_at(deadline, lookup).await {
                    Ok(verdict) => verdict,
                    Err(_) => self.resolver.fallback(
                        &digest,
                        &target.kosli_env,
                        &target.policies,
                        "no answer in time",
                    ),
                };
                (target.clone(), image.to_owned(), verdict)
            }
        });
        join_all(verdicts).await
    }

    async fn record_break_glass(
        &self,
        workload: &Workload,
        targets: &[Target],
        until: jiff::Timestamp,
    ) {
        for target in targets {
            self.ctx
                .metrics
                .break_glass
                .with_label_values(&[target.kosli_env.as_str()])
                .inc();
            let note = format!(
                "{} {}/{} admitted without a Kosli check through break-glass until {until}",
                workload.kind, workload.namespace, workload.name
            );
            tracing::warn!(environment = %target.kosli_env, "{note}");
            let regarding = ObjectReference {
                api_version: Some("kosli.com/v1alpha1".to_owned()),
                kind: Some("KosliEnvironment".to_owned()),
                name: Some(target.object.clone()),
                ..ObjectReference::default()
            };
            if let Err(e) = self
                .ctx
                .events
                .publish(regarding, EventType::Warning, "BreakGlass", "Admit", &note)
                .await
            {
                tracing::warn!("failed to record the break-glass event: {e}");
            }
        }
    }
}

fn strictest(targets: &[Target]) -> &'static str {
    use crate::core::crd::GateMode;
    let modes: BTreeSet<GateMode> = targets.iter().map(|t| t.mode).collect();
    if modes.contains(&GateMode::Enforce) {
        "Enforce"
    } else if modes.contains(&GateMode::Warn) {
        "Warn"
    } else {
        "Audit"
    }
}
