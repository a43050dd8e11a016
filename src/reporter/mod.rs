//! The event-driven reporter: one worker per KosliEnvironment keeps its snapshot
//! in Kosli true within seconds of a change.
//!
//! The watches (`k8s::watches`) keep the shared cluster state and tell the
//! [`Reporter`], which wakes the workers whose selection a change touches. Each
//! worker (`worker.rs`) performs what its pure state machine (`machine.rs`)
//! decides: debounce, rebuild the snapshot, send it only when its hash changed
//! or the heartbeat is due — never before every watch it depends on has a
//! complete view. Workers run independently, so one environment's failures
//! never delay another's. Only the leader sends, writes status and records
//! events; standbys stay warm.

pub mod machine;
pub mod status;
mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::core::crd::KosliEnvironment;
use crate::core::pod::PodRecord;
use crate::environments::{Applied, EnvironmentIndex, IndexedEnvironment, Ownership};
use crate::k8s::events::EventPublisher;
use crate::k8s::leader::Leadership;
use crate::k8s::store::{Change, SharedState};
use crate::k8s::watches::WatchListener;
use crate::kosli::{KosliClient, RetryPolicy};
use crate::observe::metrics::Metrics;

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
    /// Whether KosliEnvironment objects exist to take a status; not for
    /// environments read from a file.
    pub write_status: bool,
    /// Only KosliEnvironments with matching labels are handled.
    pub environment_selector: Option<String>,
    /// Backoff between report attempts after Kosli failed (on top of the
    /// client's own retries within one attempt).
    pub retry: RetryPolicy,
    /// After a permanent failure, try again this long after (or on a spec or
    /// token change).
    pub permanent_hold: Duration,
    /// After a first permanent failure, a change of what the environment
    /// selects tries again this long after; doubled per failure in a row, up
    /// to `permanent_hold`.
    pub permanent_retry: Duration,
    /// How often the token file is checked for a new token.
    pub token_poll: Duration,
}

impl Default for ReporterOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_secs(1),
            max_debounce: Duration::from_secs(2),
            dry_run: false,
            watch_namespaces: None,
            write_status: true,
            environment_selector: None,
            retry: RetryPolicy {
                max_retries: u32::MAX,
                base: Duration::from_secs(2),
                cap: Duration::from_secs(120),
                max_retry_after: Duration::from_secs(300),
            },
            permanent_hold: Duration::from_secs(600),
            permanent_retry: Duration::from_secs(5),
            token_poll: Duration::from_secs(1),
        }
    }
}

/// What the workers share: clients, the cluster view and where to report.
pub(crate) struct Shared {
    pub client: Client,
    /// `None` in dry-run mode.
    pub kosli: Option<KosliClient>,
    pub state: Arc<SharedState>,
    pub metrics: Arc<Metrics>,
    pub events: EventPublisher,
    pub options: ReporterOptions,
}

impl Shared {
    /// Changes of the Kosli token, when it comes from a file.
    pub(crate) fn token_changes(&self) -> Option<watch::Receiver<u64>> {
        self.kosli.as_ref()?.token_changes()
    }
}

/// Returns when the Kosli token changes; never without a token file.
pub(crate) async fn token_changed(changes: &mut Option<watch::Receiver<u64>>) {
    if let Some(rx) = changes
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Checks the token file every `every` until `shutdown`: a held environment
/// sends no request that would notice a rotated token by itself.
async fn poll_token_file(kosli: KosliClient, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        kosli.reload_token();
    }
}

/// What the reporter is made of besides its options.
pub struct Wiring {
    pub client: Client,
    pub kosli: Option<KosliClient>,
    pub state: Arc<SharedState>,
    pub environments: Arc<EnvironmentIndex>,
    pub metrics: Arc<Metrics>,
    pub leadership: Leadership,
    pub events: EventPublisher,
    pub shutdown: CancellationToken,
}

/// A running worker.
struct WorkerHandle {
    wake: Arc<worker::Wake>,
    spec: watch::Sender<Arc<IndexedEnvironment>>,
    cancel: CancellationToken,
}

/// Starts, wakes and stops one worker per KosliEnvironment, as the watches say.
pub struct Reporter {
    shared: Arc<Shared>,
    environments: Arc<EnvironmentIndex>,
    leadership: Leadership,
    shutdown: CancellationToken,
    workers: Mutex<BTreeMap<String, WorkerHandle>>,
    /// Every worker task, those of deleted environments included, so that
    /// shutdown can wait for their sends before the Lease is released.
    tasks: Mutex<JoinSet<()>>,
}

impl Reporter {
    pub fn new(options: ReporterOptions, wiring: Wiring) -> Self {
        if let Some(kosli) = &wiring.kosli
            && kosli.token_changes().is_some()
        {
            tokio::spawn(poll_token_file(
                kosli.clone(),
                options.token_poll,
                wiring.shutdown.clone(),
            ));
        }
        Self {
            shared: Arc::new(Shared {
                client: wiring.client,
                kosli: wiring.kosli,
                state: wiring.state,
                metrics: wiring.metrics,
                events: wiring.events,
                options,
            }),
            environments: wiring.environments,
            leadership: wiring.leadership,
            shutdown: wiring.shutdown,
            workers: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(JoinSet::new()),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After the shutdown token fired: waits for every worker to end (a send
    /// in flight ends, no new one starts), for at most `grace`, then aborts
    /// the rest and waits for them to be dropped, their connections closed.
    /// Returns only when no worker can write any more: the Lease may then be
    /// released.
    pub async fn stop_workers(&self, grace: Duration) {
        let mut tasks = std::mem::take(&mut *self.tasks());
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "reports still in flight at the end of the shutdown grace: abandoned"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, WorkerHandle>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ready once the KosliEnvironments and pods are listed.
    pub fn is_ready(&self) -> bool {
        self.environments.is_synced() && self.shared.state.read().pods_synced()
    }

    fn notify_all(&self) {
        for worker in self.workers().values() {
            worker.wake.changed();
        }
    }

    /// Tells the workers whose ownership of their Kosli environment moved.
    fn settle_ownership(&self) {
        let moved = self.environments.settle_ownership();
        let workers = self.workers();
        for entry in moved {
            tracing::info!(kosli_environment = %entry.object, environment = %entry.kosli_env,
                ownership = ?entry.ownership, "ownership of the Kosli environment settled");
            if let Some(worker) = workers.get(&entry.object) {
                worker.spec.send_replace(entry);
            }
        }
    }

    fn stop(&self, name: &str) {
        self.shared.metrics.forget_conditions(name);
        if let Some(worker) = self.workers().remove(name) {
            worker.cancel.cancel();
            tracing::info!(
                kosli_environment = name,
                "KosliEnvironment deleted, reporting stopped"
            );
        }
    }
}

impl WatchListener for Reporter {
    /// Wakes the workers whose environment selects a changed pod, before or after.
    fn pods_changed(&self, changes: &[Change<PodRecord>]) {
        if changes.is_empty() {
            return;
        }
        let environments = self.environments.all();
        let state = self.shared.state.read();
        let workers = self.workers();
        for env in environments {
            let touched = changes.iter().any(|(before, after)| {
                before.iter().chain(after.iter()).any(|pod| {
                    env.selects(
                        &pod.namespace,
                        state.namespace_labels(&pod.namespace),
                        &pod.labels,
                    )
                })
            });
            if touched && let Some(worker) = workers.get(&env.object) {
                worker.wake.changed();
            }
        }
    }

    /// Environments selecting by namespace label may gain or lose pods.
    fn namespaces_changed(&self) {
        let workers = self.workers();
        for env in self.environments.all() {
            let by_label = env
                .selection
                .as_ref()
                .is_ok_and(|s| s.needs_namespace_labels());
            if by_label && let Some(worker) = workers.get(&env.object) {
                worker.wake.changed();
            }
        }
    }

    /// The view just became complete: every environment checks, even if nothing
    /// it selects changed (the first report after start).
    fn pods_listed(&self) {
        self.notify_all();
    }

    /// Every environment re-checks, so none heartbeats a view no longer current.
    fn view_stale(&self) {
        self.notify_all();
    }

    fn environment_applied(&self, env: KosliEnvironment) {
        match self.environments.apply(env) {
            Applied::Unchanged => {}
            Applied::Changed(entry) => {
                if let Some(worker) = self.workers().get(&entry.object) {
                    worker.spec.send_replace(entry);
                }
            }
            Applied::Added(entry) => {
                let name = entry.object.clone();
                let (spec, spec_rx) = watch::channel(entry);
                let wake = Arc::new(worker::Wake::default());
                let cancel = self.shutdown.child_token();
                let worker = worker::Worker::new(
                    self.shared.clone(),
                    name.clone(),
                    spec_rx,
                    wake.clone(),
                    self.leadership.clone(),
                    cancel.clone(),
                );
                {
                    // Checked under the lock `stop_workers` takes: a worker
                    // is either in the set it waits for, or never started.
                    let mut tasks = self.tasks();
                    if self.shutdown.is_cancelled() {
                        return;
                    }
                    while tasks.try_join_next().is_some() {}
                    tasks.spawn(worker.run());
                }
                wake.changed();
                self.workers()
                    .insert(name, WorkerHandle { wake, spec, cancel });
            }
        }
        self.settle_ownership();
    }

    /// Its worker stops; Kosli keeps the environment's history.
    fn environment_deleted(&self, env: &KosliEnvironment) {
        let name = env.name_any();
        // A shadowed duplicate has no series of its own: the owner's stay.
        let owned = self
            .environments
            .all()
            .iter()
            .any(|e| e.object == name && e.ownership == Ownership::Owner);
        self.environments.remove(&name);
        self.stop(&name);
        if owned {
            self.shared
                .metrics
                .forget_environment(&env.environment_name());
        }
        // The next oldest naming the same Kosli environment takes over at once.
        self.settle_ownership();
    }

    fn environments_listed(&self, present: &BTreeSet<String>) {
        for gone in self.environments.retain(present) {
            self.stop(&gone);
        }
        self.environments.set_synced();
        self.settle_ownership();
    }
}
