//! The task per KosliEnvironment: waits for inputs and timers, feeds them to its
//! [`Machine`], and performs the effects it returns (build, send, Events,
//! status). Every decision is the machine's; this file only does I/O.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::k8s::leader::Leadership;
use crate::kosli::{Streamed, WriteFence};

use super::machine::{Compliance, Effect, Failure, Input, Machine, Moment, Spec, Summary, Timing};
use super::status::Outcome;
use super::{FIELD_MANAGER, Shared};
use crate::core::crd::KosliEnvironment;
use crate::core::pod::PodRecord;
use crate::core::selection::{PodFilter, Selection};
use crate::core::snapshot;
use crate::environments::{IndexedEnvironment, Ownership};
use crate::k8s::events::EventType;
use crate::k8s::store::PodsView;

/// How long to sleep when the machine waits only for inputs.
const IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

/// How often to look again when the flag says leading but the term had run out
/// (a renewal that landed just late extends it without raising the flag anew).
const RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// What a send to Kosli is fenced by: this process's leadership, checked on its
/// own monotonic clock before every attempt and retry and ending an attempt in
/// flight the moment it is lost; and the worker's shutdown, which stops retries
/// but lets the attempt in flight end (the Lease is released only after).
struct ReportFence<'a> {
    leadership: &'a Leadership,
    cancel: &'a CancellationToken,
}

impl WriteFence for ReportFence<'_> {
    fn may_start(&self) -> bool {
        !self.cancel.is_cancelled() && self.leadership.is_leading()
    }

    fn revoked(&self) -> impl std::future::Future<Output = ()> + Send {
        self.leadership.lost()
    }

    async fn closed(&self) {
        tokio::select! {
            () = self.leadership.lost() => {}
            () = self.cancel.cancelled() => {}
        }
    }
}

/// Wakes a worker when something it may select changed, and remembers when
/// the first change it has not yet been told of came in: while the worker is
/// busy sending, changes wait here, and their batch is due by when they came.
#[derive(Default)]
pub(super) struct Wake {
    notify: Notify,
    since: Mutex<Option<Instant>>,
}

impl Wake {
    pub(super) fn changed(&self) {
        self.since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
        self.notify.notify_one();
    }

    /// Waits for a change; returns when the first one untold came in.
    async fn notified(&self) -> Instant {
        self.notify.notified().await;
        self.since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(Instant::now)
    }
}

pub(super) struct Worker {
    shared: Arc<Shared>,
    /// The KosliEnvironment object's name.
    name: String,
    spec: watch::Receiver<Arc<IndexedEnvironment>>,
    wake: Arc<Wake>,
    leadership: Leadership,
    /// Wakes the worker when leadership is gained or given up.
    leader: watch::Receiver<bool>,
    /// What the machine was last told about leadership.
    believed_leading: bool,
    cancel: CancellationToken,
    machine: Machine,
    token_changes: Option<watch::Receiver<u64>>,
    /// What the snapshot last built was built from, until it is sent (or
    /// not): the body is written only for a send, from this same view.
    built: Option<Arc<Built>>,
}

/// A snapshot decided on but not yet written: the view and the spec it was
/// summarised from, so that the body sent is exactly the one hashed, and the
/// length the summary counted.
struct Built {
    view: PodsView,
    env: Arc<IndexedEnvironment>,
    body_len: usize,
}

impl Built {
    /// The body, piece by piece (empty for an invalid spec, which is never
    /// sent).
    fn pieces(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.env
            .selection
            .as_ref()
            .ok()
            .into_iter()
            .flat_map(|selection| {
                snapshot::pieces(
                    selected(&self.view, selection),
                    selection.containers,
                    snapshot::PIECE_LEN,
                )
            })
    }

    /// The body held whole, for a dry run's log.
    fn whole(&self) -> Bytes {
        Bytes::from(self.pieces().collect::<Vec<_>>().concat())
    }

    /// The body written while it is sent, afresh for each attempt.
    fn streamed(self: Arc<Self>) -> Streamed {
        let len = self.body_len as u64;
        Streamed::new(len, move |sender| {
            let built = Arc::clone(&self);
            async move {
                for piece in built.pieces() {
                    if sender.send(Bytes::from(piece)).await.is_err() {
                        return;
                    }
                }
            }
        })
    }
}

fn machine_spec(env: &IndexedEnvironment) -> Spec {
    Spec {
        kosli_env: env.kosli_env.clone(),
        generation: env.generation,
        heartbeat: env.heartbeat(),
        auto_create: env.resource.spec.auto_create,
        invalid: env.selection.as_ref().err().cloned(),
        ownership: env.ownership.clone(),
    }
}

impl Worker {
    pub(super) fn new(
        shared: Arc<Shared>,
        name: String,
        spec: watch::Receiver<Arc<IndexedEnvironment>>,
        wake: Arc<Wake>,
        leadership: Leadership,
        cancel: CancellationToken,
    ) -> Self {
        let options = &shared.options;
        let timing = Timing {
            debounce: options.debounce,
            max_debounce: options.max_debounce,
            retry: options.retry,
            permanent_hold: options.permanent_hold,
            permanent_retry: options.permanent_retry,
            dry_run: shared.kosli.is_none(),
        };
        let mut leader = leadership.watch();
        leader.borrow_and_update();
        let leading = leadership.is_leading();
        let machine = Machine::new(timing, machine_spec(&spec.borrow()), leading);
        let token_changes = shared.token_changes();
        publish_heartbeat(&shared, &spec.borrow());
        Self {
            shared,
            name,
            spec,
            wake,
            leadership,
            leader,
            believed_leading: leading,
            cancel,
            machine,
            token_changes,
            built: None,
        }
    }

    fn env(&self) -> Arc<IndexedEnvironment> {
        self.spec.borrow().clone()
    }

    pub(super) async fn run(mut self) {
        loop {
            let mut wake_at = self
                .machine
                .next_wake()
                .unwrap_or_else(|| std::time::Instant::now() + IDLE);
            if !self.believed_leading && *self.leader.borrow() {
                wake_at = wake_at.min(std::time::Instant::now() + RECHECK);
            }
            let input = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                changed = self.leader.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.leader.borrow_and_update();
                    None
                }
                changed = self.spec.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let env = self.spec.borrow_and_update().clone();
                    self.spec_changed(&env);
                    Some(Input::Spec(machine_spec(&env)))
                }
                since = self.wake.notified() => Some(Input::Changed { since }),
                () = super::token_changed(&mut self.token_changes) => Some(Input::CredentialsChanged),
                () = tokio::time::sleep_until(wake_at.into()) => Some(Input::Tick),
            };
            if self.cancel.is_cancelled() {
                return;
            }
            self.sync_leadership().await;
            if let Some(input) = input {
                self.perform(input).await;
            }
        }
    }

    /// Tells the machine whether this process leads now, by the term's
    /// validity rather than by the last flag seen, when that differs from
    /// what it was last told.
    async fn sync_leadership(&mut self) {
        let leading = self.leadership.is_leading();
        if leading != self.believed_leading {
            self.believed_leading = leading;
            self.perform(Input::Leadership(leading)).await;
        }
    }

    /// Steps the machine with `input`, now.
    fn step(&mut self, input: Input) -> Vec<Effect> {
        if matches!(input, Input::Leadership(false)) {
            // Only the leader's view of the status is published: the next
            // leader writes, and publishes, its own.
            self.shared.metrics.forget_conditions(&self.name);
        }
        self.machine.step(input, Moment::now())
    }

    /// What a new spec changes in the metrics: the heartbeat, and the series
    /// of a Kosli environment this one reported and no longer names.
    fn spec_changed(&self, env: &IndexedEnvironment) {
        let before = self.machine.spec();
        if before.kosli_env != env.kosli_env && before.ownership == Ownership::Owner {
            self.shared.metrics.forget_environment(&before.kosli_env);
        }
        publish_heartbeat(&self.shared, env);
    }

    /// Steps the machine with `input` and performs what it returns, feeding
    /// each effect's result back, until nothing is left to do.
    async fn perform(&mut self, input: Input) {
        let mut queue: VecDeque<Effect> = self.step(input).into();
        while let Some(effect) = queue.pop_front() {
            // Once shutting down, nothing new starts: the Lease is released
            // as soon as the effect in progress (a send) has ended.
            if self.cancel.is_cancelled() {
                return;
            }
            // A debounce or a send can take a while: what was decided while
            // leading is performed only if this process still leads.
            if !matches!(effect, Effect::Build) && !self.leadership.is_leading() {
                self.believed_leading = false;
                queue = self.step(Input::Leadership(false)).into();
                continue;
            }
            let next = match effect {
                Effect::Build => Some(self.build()),
                Effect::Send { ensure_environment } => self.send(ensure_environment).await,
                Effect::RefreshCompliance => Some(Input::Compliance(self.compliance().await)),
                Effect::Event {
                    type_,
                    reason,
                    message,
                } => {
                    self.event(type_, reason, &message).await;
                    None
                }
                Effect::WriteStatus => {
                    self.write_status().await;
                    None
                }
            };
            if let Some(input) = next {
                queue.extend(self.step(input));
            }
            // A view the machine did not decide to send is not kept: it
            // holds on to records the store has since replaced.
            if !queue.iter().any(|e| matches!(e, Effect::Send { .. })) {
                self.built = None;
            }
        }
    }

    /// The snapshot from a complete, current view: `Built(None)` while a watch
    /// is incomplete, `ViewStale` while one has failed for too long. The view
    /// is copied under the state lock in constant time and the report built
    /// after it is let go: watches and reviews never wait for a large report.
    fn build(&mut self) -> Input {
        let env = self.env();
        let Ok(selection) = env.selection.as_ref() else {
            return Input::Built(None);
        };
        let view = {
            let state = self.shared.state.read();
            if let Some(stale) = state.stale_view(selection.needs_namespace_labels()) {
                return Input::ViewStale {
                    since: stale.since,
                    reason: stale.reason,
                };
            }
            if !state.pods_synced()
                || (selection.needs_namespace_labels() && !state.namespaces.is_synced())
            {
                return Input::Built(None);
            }
            state.pods_view()
        };
        let snap = snapshot::summarise_ordered(selected(&view, selection), selection.containers);
        for warning in &snap.warnings {
            tracing::warn!(environment = %env.kosli_env, "{warning}");
        }
        let summary = Summary {
            pods: snap.pod_count,
            artifacts: snap.artifact_count,
            config_ids: snap.config_id_count,
            hash: snap.hash,
        };
        self.built = Some(Arc::new(Built {
            view,
            env,
            body_len: snap.body_len,
        }));
        Input::Built(Some(summary))
    }

    /// Sends the snapshot just built; `None` when the send was fenced off
    /// because this process is shutting down (nothing to tell the machine).
    async fn send(&mut self, ensure_environment: bool) -> Option<Input> {
        let env = self.env();
        let kosli_env = &env.kosli_env;
        // Written only now that it is to be sent (at scale, tens of
        // megabytes that no unchanged report needs), from the view summarised.
        let Some(built) = self.built.take() else {
            // The machine sends only what it has just been told was built.
            let message = "no snapshot was built to send; building again".to_owned();
            tracing::error!(environment = %kosli_env, "{message}");
            return Some(Input::Sent {
                ensured: false,
                result: Err(Failure {
                    outcome: Outcome::Transient {
                        message: message.clone(),
                    },
                    status: None,
                    message,
                    retry_after: None,
                }),
            });
        };
        let bytes = built.body_len;
        let pods = self.machine.summary().map_or(0, |s| s.pods);
        // The clocks of the change-to-report latency and of the attempt.
        let carried = self.machine.unreported_since();
        let started = Instant::now();
        let Some(kosli) = &self.shared.kosli else {
            let body = built.whole();
            tracing::info!(environment = %kosli_env, bytes, body = %String::from_utf8_lossy(&body),
                "dry run: would report");
            self.shared.metrics.report_sent(
                kosli_env,
                bytes,
                started.elapsed(),
                carried.map(|at| at.elapsed()),
            );
            return Some(Input::Sent {
                ensured: false,
                result: Ok(()),
            });
        };
        let fence = ReportFence {
            leadership: &self.leadership,
            cancel: &self.cancel,
        };
        let mut ensured = false;
        let mut result = Ok(());
        if ensure_environment {
            let description = env.resource.spec.description.clone().unwrap_or_default();
            result = kosli
                .ensure_environment_fenced(kosli_env, &description, &fence)
                .await
                .map(drop);
            ensured = result.is_ok();
        }
        if result.is_ok() {
            result = kosli
                .report_k8s_fenced(kosli_env, built.streamed(), &fence)
                .await;
        }
        if let Err(error @ Error::WriteFenced { .. }) = &result {
            tracing::warn!(environment = %kosli_env, "report not made: {error}");
            if self.cancel.is_cancelled() && self.leadership.is_leading() {
                return None;
            }
            self.believed_leading = false;
            return Some(Input::Leadership(false));
        }
        let result = match result {
            Ok(()) => {
                let took = started.elapsed();
                let latency = carried.map(|at| at.elapsed());
                self.shared
                    .metrics
                    .report_sent(kosli_env, bytes, took, latency);
                tracing::info!(environment = %kosli_env, pods, bytes,
                    took_ms = took.as_millis() as u64,
                    change_to_report_ms = latency.map(|l| l.as_millis() as u64),
                    "reported");
                Ok(())
            }
            Err(error) => {
                self.shared
                    .metrics
                    .report_failed(kosli_env, started.elapsed());
                tracing::warn!(environment = %kosli_env, "report failed: {}", crate::error::chain(&error));
                Err(Failure {
                    outcome: Outcome::from_error(&error),
                    status: error.kosli_status(),
                    message: crate::error::chain(&error),
                    retry_after: error.retry_after(),
                })
            }
        };
        Some(Input::Sent { ensured, result })
    }

    /// Kosli's verdict on what now runs, and its link.
    async fn compliance(&self) -> Option<(Compliance, String)> {
        let kosli = self.shared.kosli.as_ref()?;
        let kosli_env = self.env().kosli_env.clone();
        match kosli.get_environment(&kosli_env).await {
            Ok(Some(found)) => {
                let compliance = match found.state {
                    Some(true) => Compliance::Compliant,
                    Some(false) => Compliance::NonCompliant,
                    None => Compliance::Unknown,
                };
                let url = found
                    .html_url
                    .unwrap_or_else(|| kosli.environment_url(&kosli_env));
                Some((compliance, url))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(environment = %kosli_env, "failed to read compliance: {e}");
                None
            }
        }
    }

    /// Writes the machine's status when it differs from what was last written.
    async fn write_status(&mut self) {
        let env = self.env();
        let resource: &KosliEnvironment = &env.resource;
        let Some(status) = self.machine.status_to_write(resource, Moment::now()) else {
            return;
        };
        self.shared.metrics.set_conditions(
            &self.name,
            status
                .conditions
                .iter()
                .map(|c| (c.type_.as_str(), c.status.as_str())),
        );
        if !self.shared.options.write_status {
            // Read from a file: the metrics above and the log are all there is.
            self.machine.status_written(status);
            return;
        }
        let api: Api<KosliEnvironment> = Api::all(self.shared.client.clone());
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
            Ok(_) => self.machine.status_written(status),
            Err(e) => tracing::warn!(kosli_environment = %self.name, "failed to write status: {e}"),
        }
    }

    async fn event(&self, type_: EventType, reason: &str, note: &str) {
        let env = self.env();
        let published = self
            .shared
            .events
            .publish(env.resource.object_ref(&()), type_, reason, "Report", note)
            .await;
        if let Err(e) = published {
            tracing::warn!(kosli_environment = %self.name, "failed to record event {reason}: {e}");
        }
    }
}

/// The environment's heartbeat, published by the KosliEnvironment that reports
/// it (one that an older one shadows would overwrite the owner's).
fn publish_heartbeat(shared: &Shared, env: &IndexedEnvironment) {
    if env.ownership == Ownership::Owner {
        shared
            .metrics
            .set_heartbeat(&env.kosli_env, env.heartbeat());
    }
}

/// The pods of `view` that `selection` takes, in report order.
fn selected<'a>(
    view: &'a PodsView,
    selection: &'a Selection,
) -> impl Iterator<Item = &'a PodRecord> {
    let mut filter = PodFilter::new(selection);
    view.pods()
        .filter(move |p| filter.selects(p, |ns| view.namespace_labels(ns)))
}
