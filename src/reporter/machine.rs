//! The reporter's decisions for one environment, as a pure state machine.
//!
//! [`Machine::step`] takes what happened (an [`Input`]) and the time, and
//! returns what to do ([`Effect`]s); [`Machine::next_wake`] says when to call it
//! again with [`Input::Tick`]. No I/O and no clock of its own: the worker
//! (`worker.rs`) performs the effects and feeds their results back, and the
//! tests drive it with made-up times.
//!
//! The rules:
//! - **Leading edge, then debounce**: a change after a quiet period (no
//!   attempt for `debounce`) is reported at once; changes that follow within
//!   the debounce wait until they stop for `debounce`, or `max_debounce` after
//!   the first of them, so a rollout is one report after the first.
//! - **Send on change or heartbeat**: a snapshot is sent when its hash differs
//!   from the last one Kosli accepted in this leadership term, or when the last
//!   report is `heartbeat` old.
//! - **Retry**: a transient failure waits a jittered exponential backoff, or the
//!   `Retry-After` Kosli asked for when that is longer.
//! - **Hold**: a permanent failure holds the environment until something that
//!   could fix it happens: a spec change or a new Kosli token tries again at
//!   once; a change of what it selects tries again once `permanent_retry` has
//!   passed, doubling with each failure in a row up to `permanent_hold` (so a
//!   broken spec under pod churn cannot hot-loop); with nothing changed, again
//!   after `permanent_hold`. An invalid spec waits for a spec change.
//! - **One owner**: a KosliEnvironment that an older one shadows (same Kosli
//!   environment) is not reported and says why; it reports at once when it
//!   becomes the owner.
//! - **Stale**: no report accepted for two heartbeats marks the status Stale.
//! - **Frozen view**: while a watch the environment depends on has failed for
//!   too long ([`Input::ViewStale`]), nothing is sent, heartbeats included, and
//!   the status is Stale; the next complete build reports afresh.
//! - **Only the leader** acts; a new term reports and writes status afresh.
//! - **Events**: each kind of trouble is recorded when it starts, not again
//!   while it lasts; a recovery is recorded once.
//! - Every due time triggers at most one attempt, so nothing can spin.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::core::crd::{KosliEnvironment, KosliEnvironmentStatus, KosliErrorStatus};
use crate::environments::{InvalidSpec, Ownership};
use crate::k8s::events::EventType;
use crate::kosli::RetryPolicy;
use crate::reporter::status::{Outcome, desired_conditions, merge_conditions};

/// How the machine paces reports.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Quiet time after a change before reporting.
    pub debounce: Duration,
    /// The longest a report waits while changes keep coming.
    pub max_debounce: Duration,
    /// Backoff between attempts after transient failures.
    pub retry: RetryPolicy,
    /// After a permanent failure, the longest wait before trying again unchanged.
    pub permanent_hold: Duration,
    /// After a first permanent failure, the wait before a change of what the
    /// environment selects tries again; it doubles with each failure in a row.
    pub permanent_retry: Duration,
    /// Reports are logged, not sent.
    pub dry_run: bool,
}

/// A moment on both clocks: monotonic for waits, wall for what status shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moment {
    pub at: Instant,
    pub wall: jiff::Timestamp,
}

impl Moment {
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            wall: jiff::Timestamp::now(),
        }
    }
}

/// The spec as the machine needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// The Kosli environment's name.
    pub kosli_env: String,
    pub generation: Option<i64>,
    pub heartbeat: Duration,
    pub auto_create: bool,
    /// Why the spec cannot be served, if it cannot.
    pub invalid: Option<InvalidSpec>,
    /// Whether this KosliEnvironment reports its Kosli environment.
    pub ownership: Ownership,
}

/// What a built snapshot amounts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub pods: usize,
    pub artifacts: usize,
    pub config_ids: usize,
    pub hash: String,
}

/// A report Kosli did not accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `Transient` or `Permanent` (see [`Outcome::from_error`]).
    pub outcome: Outcome,
    /// Kosli's HTTP status, if it answered.
    pub status: Option<u16>,
    pub message: String,
    /// The wait Kosli asked for.
    pub retry_after: Option<Duration>,
}

/// Kosli's verdict on what runs in the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compliance {
    Compliant,
    NonCompliant,
    Unknown,
}

impl Compliance {
    pub fn as_str(self) -> &'static str {
        match self {
            Compliance::Compliant => "compliant",
            Compliance::NonCompliant => "non-compliant",
            Compliance::Unknown => "unknown",
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Something the environment may select changed (a pod, namespace labels, a
    /// completed list). `since`: when the first change not yet told came in,
    /// which is earlier than now when the worker was busy (a send) meanwhile;
    /// the batch's `max_debounce` counts from then, not from when it was told.
    Changed { since: Instant },
    /// The spec changed.
    Spec(Spec),
    /// This process gained or lost leadership.
    Leadership(bool),
    /// The Kosli API token changed (its file was rewritten).
    CredentialsChanged,
    /// A time returned by [`Machine::next_wake`] came.
    Tick,
    /// The snapshot asked for by [`Effect::Build`]: `None` while a watch's view is
    /// incomplete (nothing is reported from a partial view).
    Built(Option<Summary>),
    /// Answers [`Effect::Build`] instead of [`Input::Built`] when a watch the
    /// environment depends on has failed for too long: its view may be behind
    /// the cluster, so it is neither sent nor passed off as current.
    ViewStale { since: Instant, reason: String },
    /// The outcome of [`Effect::Send`]; `ensured` once the environment is known
    /// to exist in Kosli.
    Sent {
        ensured: bool,
        result: Result<(), Failure>,
    },
    /// The outcome of [`Effect::RefreshCompliance`]: `None` when Kosli did not say.
    Compliance(Option<(Compliance, String)>),
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Build the snapshot from the current view and answer with [`Input::Built`].
    Build,
    /// Send the snapshot just built (creating the environment first when
    /// `ensure_environment`), and answer with [`Input::Sent`].
    Send { ensure_environment: bool },
    /// Ask Kosli for its verdict and answer with [`Input::Compliance`].
    RefreshCompliance,
    /// Record a Kubernetes Event on the KosliEnvironment.
    Event {
        type_: EventType,
        reason: &'static str,
        message: String,
    },
    /// Write [`Machine::status_to_write`], if any.
    WriteStatus,
}

/// Changes seen and not yet reported.
#[derive(Clone, Copy, Debug)]
struct Pending {
    first: Instant,
    last: Instant,
    /// The first change after a quiet period: due at once (the leading edge).
    leading_edge: bool,
}

/// A permanent failure of one generation, waiting for something to change.
#[derive(Clone, Copy, Debug)]
struct Hold {
    generation: Option<i64>,
    /// From when a change of what the environment selects tries again; `None`:
    /// only a spec change can help (an invalid spec).
    on_change: Option<Instant>,
    /// When to try again unchanged.
    until: Instant,
}

/// One environment's reporting state.
#[derive(Debug)]
pub struct Machine {
    timing: Timing,
    spec: Spec,
    leading: bool,
    pending: Option<Pending>,
    /// When the last attempt started: due times up to it are spent.
    last_attempt: Option<Instant>,
    /// Hash and time of the last report Kosli accepted in this term.
    last_sent: Option<(String, Instant)>,
    last_reported_at: Option<Time>,
    last_changed_at: Option<Time>,
    last_hash: Option<String>,
    summary: Option<Summary>,
    outcome: Outcome,
    retry_at: Option<Instant>,
    failures: u32,
    /// Permanent failures in a row: the exponent of the hold's backoff.
    permanent_failures: u32,
    hold: Option<Hold>,
    ensured: bool,
    compliance: Option<Compliance>,
    kosli_url: Option<String>,
    last_error: Option<KosliErrorStatus>,
    written: Option<KosliEnvironmentStatus>,
    /// Why the view is not current, since the last build found it so.
    view_stale: Option<String>,
    /// When the earliest change that no accepted report carries yet came in:
    /// the next report sent carries it (see [`Machine::unreported_since`]).
    unreported_since: Option<Instant>,
    rng: fastrand::Rng,
}

impl Machine {
    pub fn new(timing: Timing, spec: Spec, leading: bool) -> Self {
        Self {
            timing,
            spec,
            leading,
            pending: None,
            last_attempt: None,
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
            permanent_failures: 0,
            hold: None,
            ensured: false,
            compliance: None,
            kosli_url: None,
            last_error: None,
            written: None,
            view_stale: None,
            unreported_since: None,
            rng: fastrand::Rng::new(),
        }
    }

    /// A machine whose backoff jitter is drawn from `seed` (for tests).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = fastrand::Rng::with_seed(seed);
        self
    }

    /// The spec it works by.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn summary(&self) -> Option<&Summary> {
        self.summary.as_ref()
    }

    /// When the first change that the snapshot about to be sent carries came
    /// in (the [`Input::Changed`] that started the batch, or the earliest
    /// batch that failed to reach Kosli since): Kosli's acceptance of it ends
    /// the change-to-report latency. `None` when it carries no change Kosli
    /// does not hold yet (a heartbeat, the first report of a term, a spec change).
    pub fn unreported_since(&self) -> Option<Instant> {
        self.unreported_since
    }

    /// Takes one input; returns the effects to perform, in order.
    pub fn step(&mut self, input: Input, now: Moment) -> Vec<Effect> {
        match input {
            Input::Changed { since } => {
                if self.leading {
                    // A change that came in before the last attempt began is
                    // in the view that attempt built: its batch starts there.
                    let first = since
                        .min(now.at)
                        .max(self.last_attempt.unwrap_or(since).min(now.at));
                    let pending = match self.pending {
                        Some(p) => Pending { last: now.at, ..p },
                        None => Pending {
                            first,
                            last: now.at,
                            leading_edge: self.quiet_since_last_attempt(first),
                        },
                    };
                    self.pending = Some(pending);
                }
                Vec::new()
            }
            Input::Spec(spec) => {
                let mut effects = Vec::new();
                if spec.ownership != self.spec.ownership {
                    // Whoever reported meanwhile, this object's last report is
                    // not what Kosli holds now: report afresh.
                    self.last_sent = None;
                    if spec.ownership == Ownership::Owner
                        && matches!(self.outcome, Outcome::NotOwner { .. })
                    {
                        let message = format!(
                            "no older KosliEnvironment names Kosli environment {}: reporting it now",
                            spec.kosli_env
                        );
                        effects.push(Effect::Event {
                            type_: EventType::Normal,
                            reason: "KosliEnvironmentTakenOver",
                            message: message.clone(),
                        });
                        self.outcome = Outcome::Pending { message };
                    }
                }
                self.spec = spec;
                self.hold = None;
                self.retry_at = None;
                self.ensured = false;
                effects.extend(self.attempt(now));
                effects
            }
            Input::CredentialsChanged => match self.hold {
                // Kosli refused (a 401 among them): the new token may be the fix.
                Some(hold) if hold.on_change.is_some() => {
                    self.hold = None;
                    self.attempt(now)
                }
                _ => Vec::new(),
            },
            Input::Leadership(leading) => {
                if leading && !self.leading {
                    // A new term starts from scratch: another process may have
                    // reported meanwhile, so report and write status afresh.
                    self.last_sent = None;
                    self.written = None;
                }
                if !leading {
                    // Whoever leads next reports these changes.
                    self.pending = None;
                    self.unreported_since = None;
                }
                self.leading = leading;
                self.attempt(now)
            }
            Input::Tick => match self.pending {
                Some(pending) if now.at < self.pending_due(pending) => Vec::new(),
                _ => self.attempt(now),
            },
            Input::Built(None) => Vec::new(),
            Input::Built(Some(summary)) => {
                self.view_stale = None;
                self.built(summary, now)
            }
            Input::ViewStale { since, reason } => {
                let mut effects = Vec::new();
                if self.view_stale.is_none() {
                    let failing = now.at.saturating_duration_since(since).as_secs();
                    effects.push(Effect::Event {
                        type_: EventType::Warning,
                        reason: "ViewStale",
                        message: format!(
                            "{reason} (stale for {failing} s); nothing is reported until then"
                        ),
                    });
                }
                self.view_stale = Some(reason);
                effects.push(Effect::WriteStatus);
                effects
            }
            Input::Sent { ensured, result } => {
                self.ensured |= ensured;
                match result {
                    Ok(()) => self.sent(now),
                    Err(failure) => self.failed(failure, now),
                }
            }
            Input::Compliance(verdict) => {
                let mut effects = Vec::new();
                if let Some((compliance, url)) = verdict {
                    if compliance == Compliance::NonCompliant
                        && self.compliance != Some(Compliance::NonCompliant)
                    {
                        effects.push(Effect::Event {
                            type_: EventType::Warning,
                            reason: "NonCompliant",
                            message: format!(
                                "Kosli judges what runs in {} non-compliant: {url}",
                                self.spec.kosli_env
                            ),
                        });
                    }
                    self.compliance = Some(compliance);
                    self.kosli_url = Some(url);
                }
                effects.push(Effect::WriteStatus);
                effects
            }
        }
    }

    /// A lone change is reported at once; changes that follow an attempt
    /// within the debounce are batched until they stop for `debounce`, or
    /// until `max_debounce` after the first of them.
    fn debounce_due(&self, pending: Pending) -> Instant {
        if pending.leading_edge {
            return pending.first;
        }
        (pending.last + self.timing.debounce).min(pending.first + self.timing.max_debounce)
    }

    /// No attempt within the last `debounce`: a change now starts a burst
    /// rather than continuing one.
    fn quiet_since_last_attempt(&self, now: Instant) -> bool {
        self.last_attempt
            .is_none_or(|at| now.saturating_duration_since(at) >= self.timing.debounce)
    }

    /// When pending changes are due: after the debounce, and not before a
    /// hold lets changes try again.
    fn pending_due(&self, pending: Pending) -> Instant {
        let debounced = self.debounce_due(pending);
        match self.hold {
            Some(hold) if hold.generation == self.spec.generation => match hold.on_change {
                Some(on_change) => debounced.max(on_change.min(hold.until)),
                None => debounced,
            },
            _ => debounced,
        }
    }

    /// When to [`Input::Tick`] next; `None`: only on an input.
    pub fn next_wake(&self) -> Option<Instant> {
        if !self.leading {
            return None;
        }
        if let Some(pending) = self.pending {
            // A debounce defers everything else: its attempt covers them all.
            return Some(self.pending_due(pending));
        }
        let heartbeat = self.spec.heartbeat;
        let sent_at = self.last_sent.as_ref().map(|(_, at)| *at);
        let candidates = [
            sent_at.map(|at| at + heartbeat),
            sent_at.map(|at| at + 2 * heartbeat + Duration::from_secs(1)),
            self.retry_at,
            self.hold.map(|hold| hold.until),
        ];
        candidates
            .into_iter()
            .flatten()
            .filter(|due| self.last_attempt.is_none_or(|spent| *due > spent))
            .min()
    }

    fn attempt(&mut self, now: Moment) -> Vec<Effect> {
        if !self.leading {
            return Vec::new();
        }
        let taken = self.pending.take();
        let changed = taken.is_some();
        if let Some(pending) = taken {
            // Until a report carrying them is accepted, the earliest change waits.
            self.unreported_since.get_or_insert(pending.first);
        }
        self.last_attempt = Some(now.at);
        match &self.spec.ownership {
            Ownership::Owner => {}
            Ownership::Unsettled => return Vec::new(),
            Ownership::OwnedBy(owner) => return self.not_owner(owner.clone()),
        }
        if let Some(hold) = self.hold {
            let released = hold.generation != self.spec.generation
                || now.at >= hold.until
                || (changed && hold.on_change.is_some_and(|at| now.at >= at));
            if !released {
                return Vec::new();
            }
            self.hold = None;
        }
        if let Some(invalid) = self.spec.invalid.clone() {
            let mut effects = Vec::new();
            if !matches!(&self.outcome, Outcome::InvalidSpec { message } if *message == invalid.message)
            {
                effects.push(Effect::Event {
                    type_: EventType::Warning,
                    reason: "InvalidSpec",
                    message: invalid.message.clone(),
                });
            }
            self.outcome = Outcome::InvalidSpec {
                message: invalid.message,
            };
            self.hold = Some(Hold {
                generation: self.spec.generation,
                on_change: None,
                until: now.at + self.timing.permanent_hold,
            });
            effects.push(Effect::WriteStatus);
            return effects;
        }
        vec![Effect::Build]
    }

    /// An older KosliEnvironment reports this one's Kosli environment: say so,
    /// and send nothing.
    fn not_owner(&mut self, owner: String) -> Vec<Effect> {
        let message = format!(
            "Kosli environment {} is reported by KosliEnvironment {owner}, the oldest naming it; \
             this one is not reported while {owner} exists",
            self.spec.kosli_env
        );
        let mut effects = Vec::new();
        if !matches!(&self.outcome, Outcome::NotOwner { message: shown } if *shown == message) {
            effects.push(Effect::Event {
                type_: EventType::Warning,
                reason: crate::reporter::status::DUPLICATE_REASON,
                message: message.clone(),
            });
        }
        self.outcome = Outcome::NotOwner { message };
        // What it built before is not what Kosli holds: status shows no snapshot.
        self.summary = None;
        self.unreported_since = None;
        self.last_sent = None;
        self.hold = None;
        self.retry_at = None;
        effects.push(Effect::WriteStatus);
        effects
    }

    fn built(&mut self, summary: Summary, now: Moment) -> Vec<Effect> {
        let changed = self.last_sent.as_ref().map(|(hash, _)| hash) != Some(&summary.hash);
        let heartbeat_due = self
            .last_sent
            .as_ref()
            .is_some_and(|(_, at)| now.at >= *at + self.spec.heartbeat);
        let retry_due = self.retry_at.is_none_or(|at| now.at >= at);
        if !changed {
            // Kosli already holds this snapshot: the changes cancelled out.
            self.unreported_since = None;
        }
        self.summary = Some(summary);
        if self.leading && (changed || heartbeat_due) && retry_due {
            vec![Effect::Send {
                ensure_environment: self.spec.auto_create && !self.ensured,
            }]
        } else {
            vec![Effect::WriteStatus]
        }
    }

    fn sent(&mut self, now: Moment) -> Vec<Effect> {
        let mut effects = Vec::new();
        if !matches!(
            self.outcome,
            Outcome::Reported | Outcome::DryRun | Outcome::Pending { .. }
        ) {
            effects.push(Effect::Event {
                type_: EventType::Normal,
                reason: "ReportRecovered",
                message: "Kosli accepted the report again".to_owned(),
            });
        }
        let hash = self
            .summary
            .as_ref()
            .map(|s| s.hash.clone())
            .unwrap_or_default();
        let wall = Time(now.wall);
        if self.last_hash.as_ref() != Some(&hash) {
            self.last_changed_at = Some(wall.clone());
            self.last_hash = Some(hash.clone());
        }
        self.last_reported_at = Some(wall);
        self.last_sent = Some((hash, now.at));
        self.unreported_since = None;
        self.outcome = if self.timing.dry_run {
            Outcome::DryRun
        } else {
            Outcome::Reported
        };
        self.failures = 0;
        self.permanent_failures = 0;
        self.retry_at = None;
        self.last_error = None;
        effects.push(if self.timing.dry_run {
            Effect::WriteStatus
        } else {
            Effect::RefreshCompliance
        });
        effects
    }

    fn failed(&mut self, failure: Failure, now: Moment) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.last_error = Some(KosliErrorStatus {
            code: failure.status.map(i32::from),
            message: failure.message.clone(),
            at: Some(Time(now.wall)),
        });
        let reason = match &failure.outcome {
            Outcome::Permanent { reason, .. } => reason,
            _ => "ReportFailed",
        };
        if std::mem::discriminant(&failure.outcome) != std::mem::discriminant(&self.outcome) {
            effects.push(Effect::Event {
                type_: EventType::Warning,
                reason,
                message: failure.message.clone(),
            });
        }
        if matches!(failure.outcome, Outcome::Permanent { .. }) {
            let backoff = self
                .timing
                .permanent_retry
                .saturating_mul(2u32.saturating_pow(self.permanent_failures.min(16)))
                .min(self.timing.permanent_hold);
            self.permanent_failures = self.permanent_failures.saturating_add(1);
            self.hold = Some(Hold {
                generation: self.spec.generation,
                on_change: Some(now.at + backoff),
                until: now.at + self.timing.permanent_hold,
            });
            self.retry_at = None;
        } else {
            let backoff = self.timing.retry.backoff(self.failures, self.rng.f64());
            let asked = failure
                .retry_after
                .and_then(|asked| self.timing.retry.honoured_retry_after(asked));
            self.failures = self.failures.saturating_add(1);
            self.retry_at = Some(now.at + asked.map_or(backoff, |asked| asked.max(backoff)));
        }
        self.outcome = failure.outcome;
        effects.push(Effect::WriteStatus);
        effects
    }

    fn stale_message(&self, now: Instant) -> Option<String> {
        if let Some(reason) = &self.view_stale {
            return Some(reason.clone());
        }
        let (_, at) = self.last_sent.as_ref()?;
        let heartbeat = self.spec.heartbeat;
        let elapsed = now.saturating_duration_since(*at);
        (elapsed > 2 * heartbeat).then(|| {
            format!(
                "no report accepted for {} s (heartbeat {} s)",
                elapsed.as_secs(),
                heartbeat.as_secs()
            )
        })
    }

    /// The status this environment should show now.
    pub fn status(&self, resource: &KosliEnvironment, now: Moment) -> KosliEnvironmentStatus {
        let previous = self
            .written
            .as_ref()
            .or(resource.status.as_ref())
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let stale = self.stale_message(now.at);
        let generation = resource.metadata.generation;
        let desired =
            desired_conditions(&self.outcome, stale.as_deref(), generation, &Time(now.wall));
        let count = |n: usize| Some(i64::try_from(n).unwrap_or(i64::MAX));
        let summary = self.summary.as_ref();
        KosliEnvironmentStatus {
            conditions: merge_conditions(&previous, desired),
            observed_generation: generation,
            environment: Some(resource.environment_name()),
            last_reported_at: self.last_reported_at.clone(),
            last_changed_at: self.last_changed_at.clone(),
            pod_count: summary.and_then(|s| count(s.pods)),
            artifact_count: summary.and_then(|s| count(s.artifacts)),
            config_id_fingerprints: summary.and_then(|s| count(s.config_ids)),
            snapshot_hash: summary.map(|s| s.hash.clone()),
            compliance: self.compliance.map(|c| c.as_str().to_owned()),
            kosli_url: self.kosli_url.clone(),
            last_kosli_error: self.last_error.clone(),
        }
    }

    /// The status to write now, unless it is what was last written.
    pub fn status_to_write(
        &self,
        resource: &KosliEnvironment,
        now: Moment,
    ) -> Option<KosliEnvironmentStatus> {
        let status = self.status(resource, now);
        (self.written.as_ref() != Some(&status)).then_some(status)
    }

    /// `status` was written.
    pub fn status_written(&mut self, status: KosliEnvironmentStatus) {
        self.written = Some(status);
    }
}

#[cfg(test)]
mod tests;
