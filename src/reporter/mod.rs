//! The event-driven reporter: one worker per KosliEnvironment keeps its snapshot
//! in Kosli true within seconds of a change.
//!
//! Watch tasks (`watch.rs`) keep the shared [`ClusterState`] and wake the workers
//! whose selection a change touches. A worker debounces, rebuilds its snapshot
//! with the pure engine, and sends it only when its hash changed or the heartbeat
//! is due — never before every watch it depends on has a complete view. Workers
//! run independently, so one environment's failures never delay another's. Only
//! the leader sends, writes status and records events; standbys stay warm.

pub mod status;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::core::crd::{
    GateMode, GateSpec, KosliEnvironment, KosliEnvironmentStatus, KosliErrorStatus,
};
use crate::core::pod::PodRecord;
use crate::core::selection::Selection;
use crate::core::snapshot::{self, Snapshot};
use crate::gate::decision::Target;
use crate::k8s::events::{EventPublisher, EventType};
use crate::k8s::store::{Change, ClusterState};
use crate::kosli::{KosliClient, RetryPolicy};
use crate::observe::metrics::Metrics;
use crate::reporter::status::{Outcome, desired_conditions, merge_conditions};

/// The field manager of everything the reporter writes.
pub const FIELD_MANAGER: &str = "kosli-operator";

/// How the reporter paces itself.
#[derive(Clone, Debug)]
pub struct ReporterOptions {
    /// Quiet time after a change before reporting, so a rollout is one report.
    pub debounce: Duration,
    /// The longest a report waits while changes keep coming.
    pub max_debounce: Duration,
    /// Log bodies instead of sending them.
    pub dry_run: bool,
    /// Pods are watched only in these namespaces (`None`: cluster-wide).
    pub watch_namespaces: Option<Vec<String>>,
    /// Only KosliEnvironments with matching labels are handled.
    pub environment_selector: Option<String>,
    /// Backoff between report attempts after Kosli failed (on top of the
    /// client's own retries within one attempt).
    pub retry: RetryPolicy,
    /// After a permanent failure, try again this long after (or on a change).
    pub permanent_retry: Duration,
}

impl Default for ReporterOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_secs(1),
            max_debounce: Duration::from_secs(10),
            dry_run: false,
            watch_namespaces: None,
            environment_selector: None,
            retry: RetryPolicy {
                max_retries: u32::MAX,
                base: Duration::from_secs(2),
                cap: Duration::from_secs(120),
                max_retry_after: Duration::from_secs(300),
            },
            permanent_retry: Duration::from_secs(600),
        }
    }
}

/// Shared by the watch tasks, the workers and the HTTP endpoints.
pub struct Context {
    pub client: Client,
    /// `None` in dry-run mode.
    pub kosli: Option<KosliClient>,
    pub state: RwLock<ClusterState>,
    pub metrics: Arc<Metrics>,
    pub leader: watch::Receiver<bool>,
    pub events: EventPublisher,
    pub options: ReporterOptions,
    pub shutdown: CancellationToken,
    environments: Mutex<BTreeMap<String, EnvironmentHandle>>,
    environments_synced: std::sync::atomic::AtomicBool,
}

struct EnvironmentHandle {
    /// The compiled selection, when the spec is valid.
    selection: Option<Arc<Selection>>,
    /// The admission gate of the environment, and its Kosli name.
    gate: GateSpec,
    kosli_env: String,
    generation: Option<i64>,
    notify: Arc<Notify>,
    spec: watch::Sender<Arc<KosliEnvironment>>,
    cancel: CancellationToken,
}

/// What a [`Context`] is made of besides the clients and options.
pub struct Wiring {
    pub metrics: Arc<Metrics>,
    pub leader: watch::Receiver<bool>,
    pub events: EventPublisher,
    pub shutdown: CancellationToken,
}

impl Context {
    pub fn new(
        client: Client,
        kosli: Option<KosliClient>,
        state: ClusterState,
        options: ReporterOptions,
        wiring: Wiring,
    ) -> Self {
        Self {
            client,
            kosli,
            state: RwLock::new(state),
            metrics: wiring.metrics,
            leader: wiring.leader,
            events: wiring.events,
            options,
            shutdown: wiring.shutdown,
            environments: Mutex::new(BTreeMap::new()),
            environments_synced: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn read_state(&self) -> std::sync::RwLockReadGuard<'_, ClusterState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, ClusterState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, EnvironmentHandle>> {
        self.environments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ready once the KosliEnvironments and pods are listed.
    pub fn is_ready(&self) -> bool {
        self.environments_synced
            .load(std::sync::atomic::Ordering::Relaxed)
            && self.read_state().pods_synced()
    }

    pub fn set_environments_synced(&self) {
        self.environments_synced
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Wakes the workers whose environment selects a changed pod, before or after.
    pub fn pods_changed(&self, changes: &[Change<PodRecord>]) {
        if changes.is_empty() {
            return;
        }
        let state = self.read_state();
        let selects = |selection: &Selection, pod: &PodRecord| {
            selection.selects_pod(
                &pod.namespace,
                state.namespace_labels(&pod.namespace),
                &pod.labels,
            )
        };
        for handle in self.handles().values() {
            let Some(selection) = &handle.selection else {
                continue;
            };
            let touched = changes.iter().any(|(before, after)| {
                before
                    .iter()
                    .chain(after.iter())
                    .any(|pod| selects(selection, pod))
            });
            if touched {
                handle.notify.notify_one();
            }
        }
    }

    /// Namespace labels changed: environments selecting by label may gain or lose pods.
    pub fn namespaces_changed(&self) {
        for handle in self.handles().values() {
            if handle
                .selection
                .as_ref()
                .is_some_and(|s| s.needs_namespace_labels())
            {
                handle.notify.notify_one();
            }
        }
    }

    /// A watch finished (re-)listing, or leadership moved: every environment checks.
    pub fn wake_all(&self) {
        for handle in self.handles().values() {
            handle.notify.notify_one();
        }
    }

    /// A KosliEnvironment was added or changed.
    pub fn environment_applied(self: &Arc<Self>, env: KosliEnvironment) {
        let name = env.name_any();
        let generation = env.metadata.generation;
        let selection = env.spec.validate().ok().map(Arc::new);
        let gate = env.spec.gate.clone();
        let kosli_env = env.environment_name();
        let env = Arc::new(env);
        let mut handles = self.handles();
        match handles.get_mut(&name) {
            Some(handle) => {
                // Status-only updates come back through the watch: ignore them.
                if handle.generation != generation {
                    handle.generation = generation;
                    handle.selection = selection;
                    handle.gate = gate;
                    handle.kosli_env = kosli_env;
                    handle.spec.send_replace(env);
                    handle.notify.notify_one();
                }
            }
            None => {
                let (spec, spec_rx) = watch::channel(env);
                let notify = Arc::new(Notify::new());
                let cancel = self.shutdown.child_token();
                let worker = Worker::new(
                    self.clone(),
                    name.clone(),
                    spec_rx,
                    notify.clone(),
                    cancel.clone(),
                );
                tokio::spawn(worker.run());
                notify.notify_one();
                handles.insert(
                    name,
                    EnvironmentHandle {
                        selection,
                        gate,
                        kosli_env,
                        generation,
                        notify,
                        spec,
                        cancel,
                    },
                );
            }
        }
    }

    /// The environments whose gate covers a pod in `namespace` with `labels`.
    pub fn gate_targets(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Vec<Target> {
        let namespace_labels = self.read_state().namespace_labels(namespace).cloned();
        self.handles()
            .iter()
            .filter(|(_, h)| h.gate.mode != GateMode::Off)
            .filter(|(_, h)| {
                h.selection
                    .as_ref()
                    .is_some_and(|s| s.selects_pod(namespace, namespace_labels.as_ref(), labels))
            })
            .map(|(object, h)| Target {
                object: object.clone(),
                kosli_env: h.kosli_env.clone(),
                mode: h.gate.mode,
                policies: h.gate.policies.clone(),
            })
            .collect()
    }

    /// A KosliEnvironment was deleted: its worker stops (Kosli keeps its history).
    pub fn environment_deleted(&self, name: &str) {
        if let Some(handle) = self.handles().remove(name) {
            handle.cancel.cancel();
            tracing::info!(
                kosli_environment = name,
                "KosliEnvironment deleted, reporting stopped"
            );
        }
    }

    /// After a re-list of KosliEnvironments: stops workers of those that are gone.
    pub fn retain_environments(&self, present: &std::collections::BTreeSet<String>) {
        let gone: Vec<String> = self
            .handles()
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for name in gone {
            self.environment_deleted(&name);
        }
    }
}

/// What a worker remembers between attempts.
struct Worker {
    ctx: Arc<Context>,
    /// The KosliEnvironment object's name.
    name: String,
    spec: watch::Receiver<Arc<KosliEnvironment>>,
    notify: Arc<Notify>,
    cancel: CancellationToken,
    leader: watch::Receiver<bool>,
    /// Leadership as last seen: only a false -> true change starts a new term.
    leading: bool,
    /// Hash and time of the last report Kosli accepted (this leadership term).
    last_sent: Option<(String, Instant)>,
    last_reported_at: Option<Time>,
    last_changed_at: Option<Time>,
    last_hash: Option<String>,
    summary: Option<Summary>,
    outcome: Outcome,
    /// Backoff after failures.
    retry_at: Option<Instant>,
    failures: u32,
    /// A permanent failure for this generation: wait for a change or `until`.
    blocked: Option<(Option<i64>, Instant)>,
    ensured: bool,
    compliance: Option<String>,
    kosli_url: Option<String>,
    last_error: Option<KosliErrorStatus>,
    written: Option<KosliEnvironmentStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Summary {
    pods: usize,
    artifacts: usize,
    config_ids: usize,
    hash: String,
}

fn now_time() -> Time {
    Time(jiff::Timestamp::now())
}

impl Worker {
    fn new(
        ctx: Arc<Context>,
        name: String,
        spec: watch::Receiver<Arc<KosliEnvironment>>,
        notify: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Self {
        let mut leader = ctx.leader.clone();
        let leading = *leader.borrow_and_update();
        Self {
            ctx,
            name,
            spec,
            notify,
            cancel,
            leader,
            leading,
            last_sent: None,
            last_reported_at: None,
            last_changed_at: None,
            last_hash: None,
            summary: None,
            outcome: Outcome::Pending {
                message: "waiting for the first report".to_owned(),
            },
            retry_at: None,
            failures: 0,
            blocked: None,
            ensured: false,
            compliance: None,
            kosli_url: None,
            last_error: None,
            written: None,
        }
    }

    fn env(&self) -> Arc<KosliEnvironment> {
        self.spec.borrow().clone()
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_secs(
            u64::try_from(self.env().spec.heartbeat_seconds)
                .unwrap_or(300)
                .max(1),
        )
    }

    async fn run(mut self) {
        loop {
            let wake_at = self.next_wake();
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = self.notify.notified() => self.debounce().await,
                changed = self.spec.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.blocked = None;
                    self.retry_at = None;
                    self.ensured = false;
                }
                changed = self.leader.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let leading = *self.leader.borrow_and_update();
                    if leading && !self.leading {
                        // A new term starts from scratch: another process may have
                        // reported meanwhile, so report and write status afresh.
                        self.last_sent = None;
                        self.written = None;
                    }
                    self.leading = leading;
                }
                () = tokio::time::sleep_until(wake_at.into()) => {}
            }
            if self.cancel.is_cancelled() {
                return;
            }
            self.attempt().await;
        }
    }

    /// Waits until changes stop for `debounce`, or `max_debounce` has passed.
    async fn debounce(&self) {
        let options = &self.ctx.options;
        let deadline = Instant::now() + options.max_debounce;
        loop {
            let quiet = tokio::time::timeout(options.debounce, self.notify.notified());
            tokio::select! {
                () = self.cancel.cancelled() => return,
                result = quiet => if result.is_err() { return },
            }
            if Instant::now() >= deadline {
                return;
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let heartbeat = self
            .last_sent
            .as_ref()
            .map(|(_, at)| *at + self.heartbeat());
        let stale_check = self
            .last_sent
            .as_ref()
            .map(|(_, at)| *at + 2 * self.heartbeat() + Duration::from_secs(1));
        let blocked = self.blocked.as_ref().map(|(_, until)| *until);
        [heartbeat, stale_check, self.retry_at, blocked]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(far)
            .min(far)
    }

    async fn attempt(&mut self) {
        if !self.leading {
            return;
        }
        let env = self.env();
        let now = Instant::now();
        if let Some((generation, until)) = self.blocked {
            if generation == env.metadata.generation && now < until {
                return;
            }
            self.blocked = None;
        }
        let selection = match self.check_spec(&env) {
            Ok(selection) => selection,
            Err(message) => {
                if !matches!(&self.outcome, Outcome::InvalidSpec { message: m } if *m == message) {
                    self.event(EventType::Warning, "InvalidSpec", &message)
                        .await;
                }
                self.outcome = Outcome::InvalidSpec { message };
                self.blocked = Some((
                    env.metadata.generation,
                    now + self.ctx.options.permanent_retry,
                ));
                self.write_status(&env).await;
                return;
            }
        };
        let Some(snap) = self.build(&selection) else {
            // Some watch is (re-)listing: its view is incomplete, report nothing.
            return;
        };
        self.summary = Some(Summary {
            pods: snap.pod_count,
            artifacts: snap.artifact_count,
            config_ids: snap.config_id_count,
            hash: snap.hash.clone(),
        });
        let changed = self.last_sent.as_ref().map(|(hash, _)| hash) != Some(&snap.hash);
        let heartbeat_due = self
            .last_sent
            .as_ref()
            .is_some_and(|(_, at)| now >= *at + self.heartbeat());
        let retry_due = self.retry_at.is_none_or(|at| now >= at);
        if (changed || heartbeat_due) && retry_due {
            self.report(&env, snap).await;
        }
        self.write_status(&env).await;
    }

    /// The compiled selection, or why the spec cannot be served.
    fn check_spec(&self, env: &KosliEnvironment) -> Result<Arc<Selection>, String> {
        let selection = env.spec.validate().map_err(|e| match e {
            crate::Error::Config(message) => message,
            other => other.to_string(),
        })?;
        crate::core::crd::validate_environment_name(&env.environment_name())
            .map_err(|e| format!("spec.name: {e}"))?;
        if let Some(watched) = &self.ctx.options.watch_namespaces {
            let covered = selection
                .namespaces
                .exact_namespaces()
                .is_some_and(|names| names.iter().all(|n| watched.contains(n)));
            if !covered {
                return Err(format!(
                    "spec selects namespaces outside --watch-namespaces ({}); with --watch-namespaces, list the namespaces in spec.namespaces",
                    watched.join(",")
                ));
            }
        }
        Ok(Arc::new(selection))
    }

    /// The snapshot from a complete view, or `None` while a watch is incomplete.
    fn build(&self, selection: &Selection) -> Option<Snapshot> {
        let state = self.ctx.read_state();
        if !state.pods_synced()
            || (selection.needs_namespace_labels() && !state.namespaces.is_synced())
        {
            return None;
        }
        let pods = state.pods().filter(|p| {
            selection.selects_pod(
                &p.namespace,
                state.namespace_labels(&p.namespace),
                &p.labels,
            )
        });
        Some(snapshot::build(pods, selection.containers))
    }

    async fn report(&mut self, env: &KosliEnvironment, snap: Snapshot) {
        let kosli_env = env.environment_name();
        for warning in &snap.warnings {
            tracing::warn!(environment = %kosli_env, "{warning}");
        }
        let bytes = snap.body.len();
        let hash = snap.hash.clone();
        let ctx = self.ctx.clone();
        let result = match &ctx.kosli {
            None => {
                tracing::info!(environment = %kosli_env, bytes, body = %String::from_utf8_lossy(&snap.body),
                    "dry run: would report");
                Ok(())
            }
            Some(kosli) => self.send(kosli, env, &kosli_env, snap.body).await,
        };
        let now = Instant::now();
        match result {
            Ok(()) => {
                if !matches!(
                    self.outcome,
                    Outcome::Reported | Outcome::DryRun | Outcome::Pending { .. }
                ) {
                    self.event(
                        EventType::Normal,
                        "ReportRecovered",
                        "Kosli accepted the report again",
                    )
                    .await;
                }
                self.ctx.metrics.report_sent(&kosli_env, bytes);
                tracing::info!(environment = %kosli_env, pods = self.summary.as_ref().map_or(0, |s| s.pods), bytes, "reported");
                let time = now_time();
                if self.last_hash.as_ref() != Some(&hash) {
                    self.last_changed_at = Some(time.clone());
                    self.last_hash = Some(hash.clone());
                }
                self.last_reported_at = Some(time);
                self.last_sent = Some((hash, now));
                self.outcome = if self.ctx.kosli.is_some() {
                    Outcome::Reported
                } else {
                    Outcome::DryRun
                };
                self.failures = 0;
                self.retry_at = None;
                self.last_error = None;
                self.refresh_compliance(&kosli_env).await;
            }
            Err(error) => {
                self.ctx.metrics.report_failed(&kosli_env);
                let outcome = Outcome::from_error(&error);
                self.last_error = Some(KosliErrorStatus {
                    code: error.kosli_status().map(i32::from),
                    message: error.to_string(),
                    at: Some(now_time()),
                });
                tracing::warn!(environment = %kosli_env, "report failed: {error}");
                let reason = match &outcome {
                    Outcome::Permanent { reason, .. } => *reason,
                    _ => "ReportFailed",
                };
                if std::mem::discriminant(&outcome) != std::mem::discriminant(&self.outcome) {
                    self.event(EventType::Warning, reason, &error.to_string())
                        .await;
                }
                match &outcome {
                    Outcome::Permanent { .. } => {
                        self.blocked = Some((
                            env.metadata.generation,
                            now + self.ctx.options.permanent_retry,
                        ));
                        self.retry_at = None;
                    }
                    _ => {
                        let delay = self
                            .ctx
                            .options
                            .retry
                            .backoff(self.failures, fastrand::f64());
                        self.failures = self.failures.saturating_add(1);
                        self.retry_at = Some(now + delay);
                    }
                }
                self.outcome = outcome;
            }
        }
    }

    async fn send(
        &mut self,
        kosli: &KosliClient,
        env: &KosliEnvironment,
        kosli_env: &str,
        body: Vec<u8>,
    ) -> crate::Result<()> {
        if env.spec.auto_create && !self.ensured {
            let description = env.spec.description.clone().unwrap_or_default();
            kosli.ensure_environment(kosli_env, &description).await?;
            self.ensured = true;
        }
        kosli.report_k8s(kosli_env, body).await
    }

    /// Kosli's verdict on what now runs, and a Warning when it turns non-compliant.
    async fn refresh_compliance(&mut self, kosli_env: &str) {
        let Some(kosli) = &self.ctx.kosli else { return };
        match kosli.get_environment(kosli_env).await {
            Ok(Some(found)) => {
                let compliance = match found.state {
                    Some(true) => "compliant",
                    Some(false) => "non-compliant",
                    None => "unknown",
                };
                let url = found
                    .html_url
                    .unwrap_or_else(|| kosli.environment_url(kosli_env));
                if compliance == "non-compliant"
                    && self.compliance.as_deref() != Some("non-compliant")
                {
                    let message =
                        format!("Kosli judges what runs in {kosli_env} non-compliant: {url}");
                    self.event(EventType::Warning, "NonCompliant", &message)
                        .await;
                }
                self.compliance = Some(compliance.to_owned());
                self.kosli_url = Some(url);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(environment = kosli_env, "failed to read compliance: {e}"),
        }
    }

    fn stale_message(&self) -> Option<String> {
        let (_, at) = self.last_sent.as_ref()?;
        let limit = 2 * self.heartbeat();
        (at.elapsed() > limit).then(|| {
            format!(
                "no report accepted for {} s (heartbeat {} s)",
                at.elapsed().as_secs(),
                self.heartbeat().as_secs()
            )
        })
    }

    fn status(&self, env: &KosliEnvironment) -> KosliEnvironmentStatus {
        let now = now_time();
        let previous = self
            .written
            .as_ref()
            .or(env.status.as_ref())
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let stale = self.stale_message();
        let desired = desired_conditions(
            &self.outcome,
            stale.as_deref(),
            env.metadata.generation,
            &now,
        );
        let count = |n: usize| Some(i64::try_from(n).unwrap_or(i64::MAX));
        KosliEnvironmentStatus {
            conditions: merge_conditions(&previous, desired),
            observed_generation: env.metadata.generation,
            environment: Some(env.environment_name()),
            last_reported_at: self.last_reported_at.clone(),
            last_changed_at: self.last_changed_at.clone(),
            pod_count: self.summary.as_ref().and_then(|s| count(s.pods)),
            artifact_count: self.summary.as_ref().and_then(|s| count(s.artifacts)),
            config_id_fingerprints: self.summary.as_ref().and_then(|s| count(s.config_ids)),
            snapshot_hash: self.summary.as_ref().map(|s| s.hash.clone()),
            compliance: self.compliance.clone(),
            kosli_url: self.kosli_url.clone(),
            last_kosli_error: self.last_error.clone(),
        }
    }

    /// Writes status when it differs from what was last written.
    async fn write_status(&mut self, env: &KosliEnvironment) {
        let status = self.status(env);
        if self.written.as_ref() == Some(&status) {
            return;
        }
        let api: Api<KosliEnvironment> = Api::all(self.ctx.client.clone());
        // Server-side apply: fields this manager wrote before and leaves out now
        // (a cleared lastKosliError) are removed, which a merge patch would not do.
        let patch = json!({
            "apiVersion": "kosli.com/v1alpha1",
            "kind": "KosliEnvironment",
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&self.name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => self.written = Some(status),
            Err(e) => tracing::warn!(kosli_environment = %self.name, "failed to write status: {e}"),
        }
    }

    async fn event(&self, type_: EventType, reason: &str, note: &str) {
        let env = self.env();
        let published = self
            .ctx
            .events
            .publish(env.object_ref(&()), type_, reason, "Report", note)
            .await;
        if let Err(e) = published {
            tracing::warn!(kosli_environment = %self.name, "failed to record event {reason}: {e}");
        }
    }
}

impl crate::observe::health::Health for Context {
    fn is_ready(&self) -> bool {
        Context::is_ready(self)
    }
}
