//! One admission review, end to end: parse, decide whether to look anything up,
//! resolve images and verdicts within the deadline, answer. The API server always
//! gets an explicit answer before its own timeout.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, join_all};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::api::Api;
use kube::core::TypeMeta;
use kube::core::admission::{AdmissionResponse, Operation};
use tokio::time::Instant;

use super::bounded_map::BoundedMap;
use super::decision::{self, Answer, BreakGlassAuthority, ImageVerdict, Skip, Target};
use super::pull_secrets::{self, PullCredentials};
use super::resolver::Resolver;
use super::workload::{Workload, kind_label, parse_review, review_uid};
use crate::core::crd::GateMode;
use crate::core::fingerprint::ImageRef;
use crate::environments::{EnvironmentIndex, Gating, IndexedEnvironment};
use crate::gate::registry::RegistryCredentials;
use crate::gate::server::{ReviewHandler, ReviewRejection};
use crate::k8s::events::{EventPublisher, EventType};
use crate::k8s::store::SharedState;
use crate::observe::metrics::Metrics;

#[derive(Clone, Debug)]
pub struct GateOptions {
    /// Time to answer within: well inside the webhook's timeoutSeconds. Every
    /// step of a review (namespace, pull secrets, registries, Kosli) runs
    /// inside it; what is not done by then gets the fallback answer.
    pub deadline: Duration,
    /// Never checked: kube-system, the operator's own namespace, and any given.
    pub exempt_namespaces: BTreeSet<String>,
    /// Read pods' pull secrets (and their service accounts') to resolve
    /// private tags. Off: no Secret or ServiceAccount is ever read.
    pub pull_secrets: bool,
    /// At most this many pull secrets read per review, the service account's included.
    pub max_pull_secrets: usize,
    /// At most this many images looked up at once per review.
    pub max_lookups_per_review: usize,
    /// Who may use the break-glass annotation.
    pub break_glass: BreakGlassAuthority,
    /// Refuse images named by tag alone (Enforce denies, Warn warns).
    pub require_digests: bool,
}

impl GateOptions {
    /// The defaults of the command line, for `deadline`.
    pub fn new(deadline: Duration) -> Self {
        Self {
            deadline,
            exempt_namespaces: BTreeSet::new(),
            pull_secrets: false,
            max_pull_secrets: 8,
            max_lookups_per_review: 8,
            break_glass: BreakGlassAuthority {
                users: BTreeSet::new(),
                groups: BTreeSet::from([DEFAULT_BREAK_GLASS_GROUP.to_owned()]),
            },
            require_digests: false,
        }
    }
}

/// The group allowed to break glass unless the install names others.
pub const DEFAULT_BREAK_GLASS_GROUP: &str = "kosli-operator:break-glass";

/// Pull-secret credentials are read from the API server at most this often per
/// namespace, service account and secret list: a warm review must not wait on it.
const CREDENTIALS_TTL: Duration = Duration::from_secs(30);

/// How much earlier than the review's deadline its lookups stop (at most a
/// tenth of the deadline).
const LOOKUP_MARGIN: Duration = Duration::from_millis(200);

/// Entries of the credentials cache: forged reviews naming ever new secret
/// lists must not grow it without bound (the oldest entry goes when full).
const CREDENTIALS_CACHE_MAX: usize = 1024;

type CredentialsKey = (String, String, Vec<String>);

/// What a review has reached, for the answer when its deadline passes first.
#[derive(Clone, Copy, Debug)]
struct Progress {
    /// The strictest mode known to be involved so far.
    mode: GateMode,
    /// What the review was doing.
    stage: &'static str,
}

type SharedProgress = std::sync::Mutex<Progress>;

fn note(progress: &SharedProgress, mode: Option<GateMode>, stage: &'static str) {
    let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(mode) = mode {
        p.mode = decision::strictest([p.mode, mode]);
    }
    p.stage = stage;
}

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
    credentials: std::sync::Mutex<BoundedMap<CredentialsKey, (Arc<PullCredentials>, Instant)>>,
}

#[derive(Clone)]
pub struct GateHandler(Arc<Inner>);

impl GateHandler {
    pub fn new(ctx: GateCluster, resolver: Arc<Resolver>, options: GateOptions) -> Self {
        Self(Arc::new(Inner {
            ctx,
            resolver,
            options,
            credentials: std::sync::Mutex::new(BoundedMap::new(CREDENTIALS_CACHE_MAX)),
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

/// The targets of gated environments.
fn targets(found: Vec<(Arc<IndexedEnvironment>, Gating)>) -> Vec<Target> {
    found
        .into_iter()
        .map(|(e, gating)| Target {
            object: e.object.clone(),
            kosli_env: e.kosli_env.clone(),
            mode: gating.gate.mode,
            policies: gating.gate.policies,
            unknown_artifacts: gating.gate.unknown_artifacts,
            require_digest: gating.gate.require_digest,
        })
        .collect()
}

/// Whether a review could need lookups at all (before asking which
/// environments cover it): the cheap skips of `decision::plan`.
fn may_need_checking(workload: &Workload, exempt: bool) -> bool {
    !exempt
        && (workload.template.is_some() || workload.unreadable.is_some())
        && matches!(workload.operation, Operation::Create | Operation::Update)
}

impl Inner {
    /// The environments whose gate covers the workload, or why that cannot be
    /// told (namespace labels neither known nor readable), with the strictest
    /// mode that could be involved.
    async fn targets(
        &self,
        workload: &Workload,
        check: bool,
        progress: &SharedProgress,
    ) -> Result<Vec<Target>, (GateMode, String)> {
        let namespace = &workload.namespace;
        let labels = workload
            .template
            .as_ref()
            .map(|t| t.labels.clone())
            .unwrap_or_default();
        let index = &self.ctx.environments;
        let known = self.ctx.state.read().namespace_labels(namespace).cloned();
        if let Some(namespace_labels) = known {
            return Ok(targets(index.gated(
                namespace,
                Some(&namespace_labels),
                &labels,
            )));
        }
        let by_labels = index.gated_by_namespace_labels();
        if !check || by_labels.is_empty() {
            return Ok(targets(index.gated(namespace, None, &labels)));
        }
        // A namespace the watch has not delivered yet (just created): ask for
        // it, inside the deadline, rather than match no environment.
        let possible = decision::strictest(
            targets(by_labels)
                .into_iter()
                .chain(targets(index.gated(namespace, None, &labels)))
                .map(|t| t.mode),
        );
        note(progress, Some(possible), "reading the namespace's labels");
        let api: Api<Namespace> = Api::all(self.ctx.client.clone());
        match api.get_opt(namespace).await {
            Ok(Some(found)) => {
                let namespace_labels = found.metadata.labels.unwrap_or_default();
                Ok(targets(index.gated(
                    namespace,
                    Some(&namespace_labels),
                    &labels,
                )))
            }
            Ok(None) => Err((
                possible,
                format!(
                    "namespace {namespace} was not found, so the environments selecting namespaces by label cannot be matched"
                ),
            )),
            Err(e) => Err((
                possible,
                format!(
                    "the labels of namespace {namespace} are not known yet and could not be read ({e}), so the environments selecting namespaces by label cannot be matched"
                ),
            )),
        }
    }

    async fn review(&self, body: &[u8]) -> Result<Vec<u8>, ReviewRejection> {
        let started = Instant::now();
        let deadline = started + self.options.deadline;
        let (request, workload) = match parse_review(body) {
            Ok(parsed) => parsed,
            Err(e) => return self.unreadable(body, &e, started),
        };
        let progress = std::sync::Mutex::new(Progress {
            mode: GateMode::Off,
            stage: "matching environments",
        });
        // Lookups end a little earlier than the review, so their own verdicts
        // (not the generic fallback below) make the answer when they are slow.
        let margin = (self.options.deadline / 10).min(LOOKUP_MARGIN);
        let decide = self.decide(&workload, deadline - margin, &progress);
        let decided = tokio::time::timeout_at(deadline, decide).await;
        let (answer, decision, mode) = match decided {
            Ok(decided) => decided,
            Err(_) => {
                let p = *progress.lock().unwrap_or_else(|p| p.into_inner());
                let reason = format!(
                    "the gate could not decide within {}s: no answer in time while {}",
                    self.options.deadline.as_secs_f64(),
                    p.stage
                );
                (decision::undecided(p.mode, &reason), "timed-out", p.mode)
            }
        };

        let mut response = AdmissionResponse::from(&request);
        if !answer.allowed {
            response = response.deny(answer.message.clone().unwrap_or_default());
        }
        if !answer.warnings.is_empty() {
            response.warnings = Some(answer.warnings.clone());
        }
        let mode = decision::mode_label(mode);
        let metrics = &self.ctx.metrics;
        let operation = operation_label(&workload.operation);
        metrics
            .reviews
            .with_label_values(&[kind_label(&workload.kind), operation, decision, mode])
            .inc();
        metrics
            .review_seconds
            .with_label_values(&[decision])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            kind = %workload.kind, namespace = %workload.namespace, name = %workload.name, operation,
            decision, mode, allowed = answer.allowed, failures = ?answer.failures,
            allowed_unknown = ?answer.allowed_unknown,
            dry_run = workload.dry_run,
            elapsed_ms = started.elapsed().as_millis() as u64, "admission review"
        );
        encode(response)
    }

    /// A body that is not a readable AdmissionReview: denied if it names its
    /// request (so the API server gets a decision, not an HTTP error it would
    /// treat under the failure policy); only a body without a uid gets 400.
    fn unreadable(
        &self,
        body: &[u8],
        error: &crate::error::Error,
        started: Instant,
    ) -> Result<Vec<u8>, ReviewRejection> {
        let reason = crate::error::chain(error);
        let Some(uid) = review_uid(body) else {
            return Err(ReviewRejection::bad_request(reason));
        };
        let mut response = AdmissionResponse::invalid(format!(
            "denied by the Kosli gate: unreadable review: {reason}"
        ));
        response.uid = uid;
        let metrics = &self.ctx.metrics;
        metrics
            .reviews
            .with_label_values(&["other", "unknown", "unreadable", "none"])
            .inc();
        metrics
            .review_seconds
            .with_label_values(&["unreadable"])
            .observe(started.elapsed().as_secs_f64());
        tracing::warn!("admission review denied: unreadable review: {reason}");
        encode(response)
    }

    /// The answer, a decision label and the strictest mode involved.
    async fn decide(
        &self,
        workload: &Workload,
        lookup_deadline: Instant,
        progress: &SharedProgress,
    ) -> (Answer, &'static str, GateMode) {
        let allow = |label| {
            (
                Answer {
                    allowed: true,
                    ..Answer::default()
                },
                label,
                GateMode::Off,
            )
        };
        let exempt = self.options.exempt_namespaces.contains(&workload.namespace);
        let check = may_need_checking(workload, exempt);
        let targets = match self.targets(workload, check, progress).await {
            Ok(targets) => targets,
            Err((mode, reason)) => {
                let answer = decision::undecided(mode, &reason);
                let label = label(&answer);
                return (answer, label, mode);
            }
        };
        let mode = decision::strictest(targets.iter().map(|t| t.mode));
        note(progress, Some(mode), "deciding");
        let now = jiff::Timestamp::now();
        let unservable = self.ctx.environments.unservable_enforce();
        let plan = decision::plan(
            workload,
            targets.clone(),
            exempt,
            &self.options.break_glass,
            now,
        );
        let plan = match plan {
            Ok(_) | Err(Skip::NoEnvironment) if check && !unservable.is_empty() => {
                let reasons: Vec<String> = unservable
                    .iter()
                    .map(|(object, invalid)| {
                        format!("KosliEnvironment {object} has an invalid spec ({invalid})")
                    })
                    .collect();
                let answer = decision::undecided(GateMode::Enforce, &reasons.join(" | "));
                return (answer, "denied", GateMode::Enforce);
            }
            Ok(plan) => plan,
            Err(Skip::BreakGlass { until, user }) => {
                self.record_break_glass(workload, &targets, until, &user);
                return allow("break-glass");
            }
            Err(Skip::BreakGlassNotAuthorised { reason }) => {
                tracing::warn!(namespace = %workload.namespace, name = %workload.name, "break-glass refused: {reason}");
                let answer = decision::undecided(mode, &reason);
                return (answer, "break-glass-refused", mode);
            }
            Err(Skip::Unreadable { reason }) => {
                tracing::warn!(namespace = %workload.namespace, name = %workload.name, "unreadable object: {reason}");
                let answer = decision::undecided(mode, &reason);
                return (answer, "unreadable", mode);
            }
            Err(skip) => return allow(skip.label()),
        };
        let mut answer = self
            .check(
                workload,
                &plan.images,
                &plan.targets,
                lookup_deadline,
                progress,
            )
            .await;
        if let decision::BreakGlass::Ignored(ignored) =
            decision::break_glass_for(workload, &self.options.break_glass, now)
        {
            answer.warnings.push(format!(
                "break-glass not honoured: {}",
                crate::error::chain(&ignored)
            ));
        }
        let label = label(&answer);
        (answer, label, mode)
    }

    async fn check(
        &self,
        workload: &Workload,
        images: &[String],
        targets: &[Target],
        deadline: Instant,
        progress: &SharedProgress,
    ) -> Answer {
        // Pull secrets matter only for tags: digest-pinned images need no
        // registry, and where digests are required a tag is refused unresolved.
        let needs_registry = !self.options.require_digests
            && targets.iter().any(|t| !t.require_digest)
            && images
                .iter()
                .any(|i| ImageRef::parse(i).is_ok_and(|r| r.digest.is_none()));
        let credentials = match &workload.template {
            Some(t) if needs_registry && self.options.pull_secrets => {
                note(progress, None, "reading pull secrets");
                self.credentials(
                    &workload.namespace,
                    &t.image_pull_secrets,
                    &t.service_account,
                )
                .await
            }
            _ => Arc::default(),
        };
        note(progress, None, "resolving images and asking Kosli");
        // Boxed: a stream of borrowing futures is otherwise not provably Send.
        let per_image: Vec<BoxFuture<'_, _>> = images
            .iter()
            .map(|image| {
                let creds = ImageRef::parse(image)
                    .ok()
                    .and_then(|r| credentials.by_registry.get(&r.registry).cloned());
                self.check_image(image, creds, targets, deadline).boxed()
            })
            .collect();
        // A pod naming many images must not start that many lookups at once.
        let results: Vec<(Target, String, ImageVerdict)> = futures::stream::iter(per_image)
            .buffer_unordered(self.options.max_lookups_per_review.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flatten()
            .collect();
        let mut answer = decision::answer(&results);
        answer.warnings.extend(credentials.ignored.iter().cloned());
        answer
    }

    /// The registry credentials of a pod's pull secrets and service account,
    /// cached briefly (Secret rotation shows within CREDENTIALS_TTL).
    async fn credentials(
        &self,
        namespace: &str,
        secrets: &[String],
        service_account: &str,
    ) -> Arc<PullCredentials> {
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
            pull_secrets::credentials(
                &self.ctx.client,
                namespace,
                secrets,
                service_account,
                self.options.max_pull_secrets,
            )
            .await,
        );
        self.credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (fresh.clone(), Instant::now()));
        fresh
    }

    /// One image's verdict for every target. Lookups stop at `deadline`, a
    /// little before the review's own, so a slow registry or Kosli still gets
    /// its specific verdict (unresolvable, unreachable, cached compliant)
    /// rather than the review's generic fallback.
    async fn check_image(
        &self,
        image: &str,
        credentials: Option<RegistryCredentials>,
        targets: &[Target],
        deadline: Instant,
    ) -> Vec<(Target, String, ImageVerdict)> {
        // A tag is refused unresolved by the environments that require
        // digests (all of them with --gate-require-digests); the others
        // resolve it as usual.
        let (refused, targets): (Vec<Target>, Vec<Target>) = match decision::require_digest(image) {
            Some(_) => targets
                .iter()
                .cloned()
                .partition(|t| self.options.require_digests || t.require_digest),
            None => (Vec::new(), targets.to_vec()),
        };
        let mut results = for_every(&refused, image, &ImageVerdict::NotPinned);
        if !targets.is_empty() {
            results.extend(
                self.resolve_and_assert(image, credentials, &targets, deadline)
                    .await,
            );
        }
        results
    }

    /// One image's verdict for targets that accept it by tag or digest.
    async fn resolve_and_assert(
        &self,
        image: &str,
        credentials: Option<RegistryCredentials>,
        targets: &[Target],
        deadline: Instant,
    ) -> Vec<(Target, String, ImageVerdict)> {
        let lookup = self.resolver.fingerprint(image, credentials);
        let digest = match tokio::time::timeout_at(deadline, lookup).await {
            Ok(Ok(digest)) => digest,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => crate::error::chain(&e),
                    _ => "the registry did not answer in time".to_owned(),
                };
                return for_every(targets, image, &ImageVerdict::Unresolvable { why });
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

    /// Logs an honoured break-glass, counts it and records it as an Event
    /// naming who used it, in the background: an Event must never hold the
    /// answer up. A dry run is only logged (`sideEffects: None`).
    fn record_break_glass(
        &self,
        workload: &Workload,
        targets: &[Target],
        until: jiff::Timestamp,
        user: &str,
    ) {
        for target in targets {
            let note = format!(
                "{} {}/{} admitted without a Kosli check through break-glass by {user:?} until {until}",
                workload.kind, workload.namespace, workload.name
            );
            tracing::warn!(environment = %target.kosli_env, dry_run = workload.dry_run, "{note}");
            if workload.dry_run {
                continue;
            }
            self.ctx
                .metrics
                .break_glass
                .with_label_values(&[target.kosli_env.as_str()])
                .inc();
            let regarding = ObjectReference {
                api_version: Some("kosli.com/v1alpha1".to_owned()),
                kind: Some("KosliEnvironment".to_owned()),
                name: Some(target.object.clone()),
                ..ObjectReference::default()
            };
            let events = self.ctx.events.clone();
            let limit = self.options.deadline;
            tokio::spawn(async move {
                let publish =
                    events.publish(regarding, EventType::Warning, "BreakGlass", "Admit", &note);
                match tokio::time::timeout(limit, publish).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("failed to record the break-glass event: {e}"),
                    Err(_) => tracing::warn!(
                        "failed to record the break-glass event: no answer within {limit:?}"
                    ),
                }
            });
        }
    }
}

/// The same verdict on `image` for every target.
fn for_every(
    targets: &[Target],
    image: &str,
    verdict: &ImageVerdict,
) -> Vec<(Target, String, ImageVerdict)> {
    targets
        .iter()
        .map(|t| (t.clone(), image.to_owned(), verdict.clone()))
        .collect()
}

/// The decision label of an answer that was worked out.
fn label(answer: &Answer) -> &'static str {
    match (answer.allowed, answer.failures.is_empty()) {
        (false, _) => "denied",
        (true, true) => "allowed",
        (true, false) => "allowed-with-failures",
    }
}

/// The answer as the API server reads it. Always `admission.k8s.io/v1`: the
/// webhook is registered for v1 only, and echoing whatever version a
/// (mangled) request named would make the API server discard the answer and
/// apply the failure policy.
fn encode(mut response: AdmissionResponse) -> Result<Vec<u8>, ReviewRejection> {
    response.types = TypeMeta {
        api_version: "admission.k8s.io/v1".to_owned(),
        kind: "AdmissionReview".to_owned(),
    };
    serde_json::to_vec(&response.into_review()).map_err(|e| ReviewRejection {
        status: 500,
        message: format!("failed to encode the answer: {e}"),
    })
}
