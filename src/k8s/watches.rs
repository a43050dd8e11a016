//! The three watches the reporter lives on: pods (cluster-wide or per watched
//! namespace), namespaces (for namespace selectors) and KosliEnvironments.
//!
//! kube-runtime watchers with its default backoff: a failing list or watch is
//! retried, never turned into an empty view. A (re-)list is buffered by the store
//! and swapped in whole; until then its watch counts as unsynced.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::core::crd::KosliEnvironment;
use crate::core::pod::PodRecord;
use crate::k8s::store::{Change, SharedState, pod_key};
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
    /// A KosliEnvironment was added or changed (status-only updates included).
    fn environment_applied(&self, env: KosliEnvironment);
    /// A KosliEnvironment was deleted.
    fn environment_deleted(&self, env: &KosliEnvironment);
    /// A full list of KosliEnvironments is in: `present` names every one.
    fn environments_listed(&self, present: &BTreeSet<String>);
}

/// What the watch tasks share.
pub struct Watches {
    pub client: Client,
    pub state: Arc<SharedState>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// Only KosliEnvironments with matching labels are watched.
    pub environment_selector: Option<String>,
    pub listener: Arc<dyn WatchListener>,
}

fn config() -> watcher::Config {
    // resourceVersion=0 lists from the API server's cache, sparing etcd; the
    // watch that follows brings the view up to date.
    watcher::Config::default().any_semantic()
}

type EventStream<K> = futures::stream::BoxStream<'static, Result<Event<K>, watcher::Error>>;

/// The next event of a watch; errors are counted, logged and retried (the
/// stream backs off), `None` once shutting down.
async fn next_event<K>(
    ctx: &Watches,
    stream: &mut EventStream<K>,
    resource: &'static str,
) -> Option<Event<K>> {
    loop {
        let event = tokio::select! {
            () = ctx.shutdown.cancelled() => return None,
            event = stream.next() => event?,
        };
        match event {
            Ok(event) => return Some(event),
            Err(e) => {
                ctx.metrics
                    .watch_errors
                    .with_label_values(&[resource])
                    .inc();
                tracing::warn!(resource, "watch failed, retrying: {e}");
            }
        }
    }
}

/// Feeds one pod store: `namespace` `None` watches the whole cluster.
pub async fn watch_pods(ctx: Arc<Watches>, namespace: Option<String>) {
    let api: Api<Pod> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let scope = namespace.clone();
    let mut stream: EventStream<Pod> = watcher::watcher(api, config()).default_backoff().boxed();
    while let Some(event) = next_event(&ctx, &mut stream, "pods").await {
        let (changes, listed) = {
            let mut state = ctx.state.write();
            let Some(store) = state.pod_scopes.get_mut(&scope) else {
                return;
            };
            let result = match event {
                Event::Apply(pod) => {
                    let record = PodRecord::from(&pod);
                    (
                        store.apply(pod_key(&record), record).into_iter().collect(),
                        false,
                    )
                }
                Event::Delete(pod) => {
                    let key = (pod.namespace().unwrap_or_default(), pod.name_any());
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
                Event::InitApply(pod) => {
                    let record = PodRecord::from(&pod);
                    store.relisted(pod_key(&record), record);
                    (Vec::new(), false)
                }
                Event::InitDone => {
                    let changes = store.relist_done();
                    tracing::info!(namespace = ?scope, pods = store.len(), "pod watch synced");
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
    let mut stream: EventStream<Namespace> =
        watcher::watcher(api, config()).default_backoff().boxed();
    while let Some(event) = next_event(&ctx, &mut stream, "namespaces").await {
        let (changed, synced_now) = {
            let mut state = ctx.state.write();
            let store = &mut state.namespaces;
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

/// Tells the listener which KosliEnvironments exist.
pub async fn watch_environments(ctx: Arc<Watches>) {
    let api: Api<KosliEnvironment> = Api::all(ctx.client.clone());
    let mut config = watcher::Config::default();
    if let Some(selector) = &ctx.environment_selector {
        config = config.labels(selector);
    }
    let mut stream: EventStream<KosliEnvironment> =
        watcher::watcher(api, config).default_backoff().boxed();
    let mut relisted: Option<BTreeSet<String>> = None;
    while let Some(event) = next_event(&ctx, &mut stream, "koslienvironments").await {
        match event {
            Event::Apply(env) => ctx.listener.environment_applied(env),
            Event::Delete(env) => ctx.listener.environment_deleted(&env),
            Event::Init => relisted = Some(BTreeSet::new()),
            Event::InitApply(env) => {
                relisted
                    .get_or_insert_with(BTreeSet::new)
                    .insert(env.name_any());
                ctx.listener.environment_applied(env);
            }
            Event::InitDone => {
                ctx.listener
                    .environments_listed(&relisted.take().unwrap_or_default());
                tracing::info!("KosliEnvironment watch synced");
            }
        }
    }
}
