//! The three watches the reporter lives on: pods (cluster-wide or per watched
//! namespace), namespaces (for namespace selectors) and KosliEnvironments.
//!
//! kube-runtime watchers with its default backoff: a failing list or watch is
//! retried, never turned into an empty view. A (re-)list is buffered by the store
//! and swapped in whole; until then its watch counts as unsynced.
//!
//! Lists read the most recent state (a quorum read, not the API server's
//! watch cache), so a re-list never brings back a state older than one
//! already reported. A pod or namespace watch that keeps failing for
//! `stale_view_after` marks its view stale and starts over with a full list;
//! its watch calls last at most that long, so a revoked right or a silently
//! dropped connection shows within about two bounds.
//!
//! Pods keep only the labels some KosliEnvironment's pod selector uses: pods
//! are listed once the KosliEnvironments are, and listed again when a
//! selector starts using a new label key.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, ListSemantic};

use kube::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::core::crd::KosliEnvironment;
use crate::core::pod::{LabelKeys, PodRecord, selector_keys};
use crate::k8s::reported_pod::ReportedPod;
use crate::k8s::store::{Change, ClusterState, SharedState, WatchHealth, key_of, pod_key};
use crate::observe::metrics::Metrics;

/// Who is told what the watches saw (the reporter): called after the store is
/// updated and its lock released.
pub trait WatchListener: Send + Sync + 'static {
    /// Pods were added, changed or removed: each change is (before, after).
    fn pods_changed(&self, changes: &[Change<PodRecord>]);
    /// Namespace labels changed, or the namespace watch (re-)synced.
    fn namespaces_changed(&self);
    /// A pod watch finished (re-)listing: the view is complete again.
    fn pods_listed(&self);
    /// A watch's view turned stale: what depends on it must stop passing it
    /// off as current.
    fn view_stale(&self);
    /// A KosliEnvironment was added or changed (status-only updates included).
    fn environment_applied(&self, env: KosliEnvironment);
    /// A KosliEnvironment was deleted.
    fn environment_deleted(&self, env: &KosliEnvironment);
    /// A full list of KosliEnvironments is in: `present` names every one.
    fn environments_listed(&self, present: &BTreeSet<String>);
}

/// The longest watch call the API server allows by default (kube-runtime's too).
const MAX_WATCH_SECONDS: u64 = 290;

/// What the watch tasks share.
pub struct Watches {
    pub client: Client,
    pub state: Arc<SharedState>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// Only KosliEnvironments with matching labels are watched.
    pub environment_selector: Option<String>,
    pub listener: Arc<dyn WatchListener>,
    /// How long a pod or namespace watch may fail before its view is stale.
    pub stale_view_after: Duration,
    /// The label-key generation ([`ClusterState::label_generation`]): 0 until
    /// the KosliEnvironments are listed; a bump makes the pod watches list again.
    pub label_keys: watch::Sender<u64>,
}

/// Pods and namespaces. Lists are quorum reads (`MostRecent`, not
/// resourceVersion=0 from a possibly lagging cache): dearer for the API
/// server, but they happen only at start and when a watch must start over.
fn config(stale_view_after: Duration) -> watcher::Config {
    let seconds = stale_view_after.as_secs().clamp(1, MAX_WATCH_SECONDS);
    watcher::Config::default()
        .list_semantic(ListSemantic::MostRecent)
        .timeout(u32::try_from(seconds).unwrap_or(1))
}

type EventStream<K> = futures::stream::BoxStream<'static, Result<Event<K>, watcher::Error>>;

/// Which store a watch feeds.
#[derive(Clone, Debug)]
enum View {
    Pods(Option<String>),
    Namespaces,
}

impl View {
    fn resource(&self) -> &'static str {
        match self {
            View::Pods(_) => "pods",
            View::Namespaces => "namespaces",
        }
    }

    fn health<'a>(&self, state: &'a mut ClusterState) -> Option<&'a mut WatchHealth> {
        match self {
            View::Pods(scope) => state.pod_scopes.get_mut(scope).map(|s| &mut s.health),
            View::Namespaces => Some(&mut state.namespaces.health),
        }
    }

    fn health_now(&self, state: &ClusterState) -> Option<WatchHealth> {
        match self {
            View::Pods(scope) => state.pod_scopes.get(scope).map(|s| s.health),
            View::Namespaces => Some(state.namespaces.health),
        }
    }
}

/// What a watch task does next.
enum Step<K> {
    Event(Event<K>),
    /// Start over with a full list.
    Restart,
    Stop,
}

/// Brings the stale-view gauges up to date: stale stores per resource.
fn publish_staleness(metrics: &Metrics, state: &ClusterState) {
    let pods = state
        .pod_scopes
        .values()
        .filter(|s| s.health.stale_since().is_some())
        .count();
    let namespaces = usize::from(state.namespaces.health.stale_since().is_some());
    for (resource, count) in [("pods", pods), ("namespaces", namespaces)] {
        metrics
            .watch_stale
            .with_label_values(&[resource])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// The next step of the watch feeding `view`. Errors are counted, logged and
/// retried (the stream backs off); one that lasts `stale_view_after` marks
/// the view stale and starts the watch over. `relists` (pods only) asks for a
/// new list when selectors need new label keys.
async fn next_step<K>(
    ctx: &Watches,
    stream: &mut EventStream<K>,
    view: &View,
    mut relists: Option<&mut watch::Receiver<u64>>,
) -> Step<K> {
    let resource = view.resource();
    loop {
        let stale_at = view
            .health_now(&ctx.state.read())
            .and_then(|h| h.stale_due(ctx.stale_view_after));
        let relist = async {
            match relists.as_deref_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let stale = async {
            match stale_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = ctx.shutdown.cancelled() => return Step::Stop,
            open = relist => return if open { Step::Restart } else { Step::Stop },
            () = stale => {
                {
                    let mut state = ctx.state.write();
                    if let Some(health) = view.health(&mut state) {
                        health.mark_stale(Instant::now());
                    }
                    publish_staleness(&ctx.metrics, &state);
                }
                tracing::warn!(resource, ?view, after = ?ctx.stale_view_after,
                    "watch failing too long: its view is stale, listing again");
                ctx.listener.view_stale();
                return Step::Restart;
            }
            event = stream.next() => match event {
                None => return Step::Stop,
                Some(Ok(event)) => return Step::Event(event),
                Some(Err(e)) => {
                    ctx.metrics.watch_errors.with_label_values(&[resource]).inc();
                    if let Some(health) = view.health(&mut ctx.state.write()) {
                        health.failing(Instant::now());
                    }
                    tracing::warn!(resource, "watch failed, retrying: {e}");
                }
            },
        }
    }
}

fn pod_stream(api: &Api<ReportedPod>, ctx: &Watches) -> EventStream<ReportedPod> {
    watcher::watcher(api.clone(), config(ctx.stale_view_after))
        .default_backoff()
        .boxed()
}

/// Feeds one pod store: `namespace` `None` watches the whole cluster.
pub async fn watch_pods(ctx: Arc<Watches>, namespace: Option<String>) {
    let scope = namespace.clone();
    if !ctx.state.write().claim(&scope) {
        // Two watches into one store would swap in each other's partial lists.
        tracing::error!(namespace = ?scope, "this pod scope is already watched; not watching it twice");
        return;
    }
    // Pods are read as `ReportedPod`: only what a report or a selection uses.
    let api: Api<ReportedPod> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let view = View::Pods(scope.clone());
    let mut label_keys = ctx.label_keys.subscribe();
    // Pods are decoded with the label keys selectors use: known once the
    // KosliEnvironments are listed.
    tokio::select! {
        () = ctx.shutdown.cancelled() => return,
        known = label_keys.wait_for(|generation| *generation > 0) => if known.is_err() { return },
    }
    label_keys.mark_unchanged();
    let mut generation = ctx.state.read().label_generation;
    let mut stream = pod_stream(&api, &ctx);
    loop {
        let event = match next_step(&ctx, &mut stream, &view, Some(&mut label_keys)).await {
            Step::Stop => return,
            Step::Restart => {
                label_keys.mark_unchanged();
                generation = ctx.state.read().label_generation;
                stream = pod_stream(&api, &ctx);
                continue;
            }
            Step::Event(event) => event,
        };
        let (changes, listed) = {
            let mut guard = ctx.state.write();
            let state = &mut *guard;
            let keys = state.label_keys();
            let current = state.lists_complete_at(generation);
            let Some(store) = state.pod_scopes.get_mut(&scope) else {
                return;
            };
            store.health.answered();
            let shared = &mut state.shared;
            let mut decode = |pod: &ReportedPod| PodRecord::decode(&pod.0, keys.as_deref(), shared);
            let result = match event {
                Event::Apply(pod) => {
                    let record = decode(&pod);
                    (
                        store.apply(pod_key(&record), record).into_iter().collect(),
                        false,
                    )
                }
                Event::Delete(pod) => {
                    let key = key_of(&pod.namespace().unwrap_or_default(), &pod.name_any());
                    (store.delete(&key).into_iter().collect(), false)
                }
                Event::Init => {
                    if store.is_synced() {
                        ctx.metrics
                            .watch_restarts
                            .with_label_values(&["pods"])
                            .inc();
                        tracing::info!(namespace = ?scope, "pod watch re-listing; reports wait for it");
                    }
                    store.relist_started();
                    (Vec::new(), false)
                }
                // Reports wait for the list to end, and then every
                // environment checks: changes met on the way need no wake-up.
                Event::InitApply(pod) => {
                    let record = decode(&pod);
                    store.relisted(pod_key(&record), record);
                    (Vec::new(), false)
                }
                // Listed with label keys selectors have since outgrown: not
                // complete; the restart that follows lists again.
                Event::InitDone if !current => (Vec::new(), false),
                Event::InitDone => {
                    let changes = store.relist_done();
                    tracing::info!(namespace = ?scope, pods = store.len(), "pod watch synced");
                    publish_staleness(&ctx.metrics, state);
                    (changes, true)
                }
            };
            ctx.metrics
                .store_pods
                .set(i64::try_from(state.pod_count()).unwrap_or(i64::MAX));
            result
        };
        if listed {
            // The view just became complete: every environment checks, even if
            // nothing it selects changed (the first report after start).
            ctx.listener.pods_listed();
        } else {
            ctx.listener.pods_changed(&changes);
        }
    }
}

/// Feeds the namespace labels that namespace selectors match.
pub async fn watch_namespaces(ctx: Arc<Watches>) {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let stream = || -> EventStream<Namespace> {
        watcher::watcher(api.clone(), config(ctx.stale_view_after))
            .default_backoff()
            .boxed()
    };
    let mut events = stream();
    loop {
        let event = match next_step(&ctx, &mut events, &View::Namespaces, None).await {
            Step::Stop => return,
            Step::Restart => {
                events = stream();
                continue;
            }
            Step::Event(event) => event,
        };
        let (changed, synced_now) = {
            let mut state = ctx.state.write();
            let store = &mut state.namespaces;
            store.health.answered();
            let result = match event {
                Event::Apply(ns) => (
                    store.apply(ns.name_any(), ns.labels().clone()).is_some(),
                    false,
                ),
                Event::Delete(ns) => (store.delete(&ns.name_any()).is_some(), false),
                Event::Init => {
                    if store.is_synced() {
                        ctx.metrics
                            .watch_restarts
                            .with_label_values(&["namespaces"])
                            .inc();
                    }
                    store.relist_started();
                    (false, false)
                }
                Event::InitApply(ns) => {
                    store.relisted(ns.name_any(), ns.labels().clone());
                    (false, false)
                }
                Event::InitDone => {
                    store.relist_done();
                    publish_staleness(&ctx.metrics, &state);
                    (true, true)
                }
            };
            ctx.metrics
                .store_namespaces
                .set(i64::try_from(state.namespaces.len()).unwrap_or(i64::MAX));
            result
        };
        if changed || synced_now {
            ctx.listener.namespaces_changed();
        }
    }
}

/// The label keys of one KosliEnvironment's pod selector.
fn pod_label_keys(env: &KosliEnvironment) -> LabelKeys {
    env.spec
        .pod_selector
        .iter()
        .flat_map(selector_keys)
        .map(str::to_owned)
        .collect()
}

/// Tells the store which pod label keys the selectors use, before anyone
/// acts on a KosliEnvironment that needs a new one: the pod stores are
/// unsynced at once and the pod watches list again.
fn publish_label_keys(ctx: &Watches, by_environment: &BTreeMap<String, LabelKeys>) {
    let keys: LabelKeys = by_environment.values().flatten().cloned().collect();
    let (relist, generation) = {
        let mut state = ctx.state.write();
        (state.set_label_keys(keys), state.label_generation)
    };
    if relist {
        tracing::info!("a pod selector uses a new label key: pods are listed again");
    }
    ctx.label_keys.send_if_modified(|current| {
        let modified = *current != generation;
        *current = generation;
        modified
    });
}

/// Tells the listener of the KosliEnvironments of a file, once, as the
/// first list of a watch would.
pub fn fixed_environments(ctx: &Watches, envs: Vec<KosliEnvironment>) {
    let keys: BTreeMap<String, LabelKeys> = envs
        .iter()
        .map(|env| (env.name_any(), pod_label_keys(env)))
        .collect();
    let present: BTreeSet<String> = keys.keys().cloned().collect();
    for env in envs {
        ctx.listener.environment_applied(env);
    }
    publish_label_keys(ctx, &keys);
    ctx.listener.environments_listed(&present);
    tracing::info!(
        count = present.len(),
        "KosliEnvironments read from the environments file"
    );
}

/// Tells the listener which KosliEnvironments exist.
pub async fn watch_environments(ctx: Arc<Watches>) {
    let api: Api<KosliEnvironment> = Api::all(ctx.client.clone());
    let mut config = watcher::Config::default().list_semantic(ListSemantic::MostRecent);
    if let Some(selector) = &ctx.environment_selector {
        config = config.labels(selector);
    }
    let mut stream: EventStream<KosliEnvironment> =
        watcher::watcher(api, config).default_backoff().boxed();
    let mut relisted: Option<BTreeSet<String>> = None;
    let mut keys: BTreeMap<String, LabelKeys> = BTreeMap::new();
    // Until the first list is in, the keys are not known: pods wait for them.
    let mut listed_once = false;
    loop {
        let event = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            event = stream.next() => match event {
                None => return,
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    ctx.metrics.watch_errors.with_label_values(&["koslienvironments"]).inc();
                    tracing::warn!(resource = "koslienvironments", "watch failed, retrying: {e}");
                    continue;
                }
            },
        };
        match event {
            Event::Apply(env) => {
                keys.insert(env.name_any(), pod_label_keys(&env));
                if listed_once {
                    publish_label_keys(&ctx, &keys);
                }
                ctx.listener.environment_applied(env);
            }
            Event::Delete(env) => {
                keys.remove(&env.name_any());
                if listed_once {
                    publish_label_keys(&ctx, &keys);
                }
                ctx.listener.environment_deleted(&env);
            }
            Event::Init => relisted = Some(BTreeSet::new()),
            Event::InitApply(env) => {
                relisted
                    .get_or_insert_with(BTreeSet::new)
                    .insert(env.name_any());
                keys.insert(env.name_any(), pod_label_keys(&env));
                if listed_once {
                    publish_label_keys(&ctx, &keys);
                }
                ctx.listener.environment_applied(env);
            }
            Event::InitDone => {
                let present = relisted.take().unwrap_or_default();
                keys.retain(|name, _| present.contains(name));
                publish_label_keys(&ctx, &keys);
                listed_once = true;
                ctx.listener.environments_listed(&present);
                tracing::info!("KosliEnvironment watch synced");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_the_most_recent_state_and_watch_calls_end_within_the_bound() {
        let c = config(Duration::from_secs(60));
        assert_eq!(c.list_semantic, ListSemantic::MostRecent);
        assert_eq!(c.timeout, Some(60));
        assert_eq!(config(Duration::from_millis(10)).timeout, Some(1));
        assert_eq!(config(Duration::from_secs(3600)).timeout, Some(290));
    }

    #[test]
    fn the_label_keys_of_an_environment_are_those_its_pod_selector_names() {
        let env: KosliEnvironment = serde_json::from_value(serde_json::json!({
            "apiVersion": "kosli.com/v1alpha1", "kind": "KosliEnvironment",
            "metadata": {"name": "e"},
            "spec": {
                "podSelector": {
                    "matchLabels": {"app": "web"},
                    "matchExpressions": [{"key": "tier", "operator": "Exists"}],
                },
                "namespaceSelector": {"matchLabels": {"team": "a"}},
            },
        }))
        .unwrap();
        let keys: Vec<String> = pod_label_keys(&env).into_iter().collect();
        assert_eq!(
            keys,
            ["app", "tier"],
            "namespace selectors read namespace labels"
        );
        let none: KosliEnvironment = serde_json::from_value(serde_json::json!({
            "apiVersion": "kosli.com/v1alpha1", "kind": "KosliEnvironment",
            "metadata": {"name": "e"}, "spec": {},
        }))
        .unwrap();
        assert!(pod_label_keys(&none).is_empty());
    }
}
