//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! replicas exactly one sends reports and writes status while the others keep
//! warm caches and take over when it goes away.
//!
//! No two processes may lead at once, even when their clocks disagree. Two rules
//! give that, and neither reads a wall clock:
//!
//! - Every write carries the last seen `resourceVersion` as a precondition, so
//!   of two processes racing for the Lease the apiserver lets exactly one win;
//!   the other gets 409 Conflict and stays a standby.
//! - Another holder's lease counts as expired only when `lease_duration` has
//!   passed on *this* process's monotonic clock since it last saw the record
//!   change. The remote `renewTime` is written for humans and never compared
//!   with local time: that comparison is exactly what clock skew breaks.
//!
//! A leader measures its `renew_deadline` from *before* it sent its last
//! successful renewal, and a standby measures `lease_duration` from *after* it
//! saw that renewal; with `renew_deadline < lease_duration` the leader has
//! stepped down (published `false`) before any standby may take over.
//!
//! ## One writer at a time
//!
//! A flag that says "leading" is not enough: the process that reads it may be
//! cut off from the apiserver, its elector stuck, or a write of its already
//! on the wire. So what consumers get, a [`Leadership`], carries the term's
//! *validity*: `sent + renew_deadline`, where `sent` is when (on this
//! process's monotonic clock) the last successful write of the Lease was
//! sent. Writes to Kosli are fenced by it (`kosli::WriteFence`): asked right
//! before every attempt and every retry, and an attempt in flight is dropped
//! the moment the validity ends or a step-down is published, whether or not
//! the elector has noticed anything.
//!
//! The timing argument. Let `sent` be the send time of the last renewal that
//! succeeded. The apiserver applied it after `sent`; any standby must read
//! that version before it can write over it (resourceVersion precondition),
//! and then waits `lease_duration` on its own clock after reading it. So no
//! other process holds the Lease before `sent + lease_duration`, and its first
//! report comes later still. Every write of ours has ended (sent, or abandoned
//! and its connection closed) by `sent + renew_deadline`. Between the two lie
//! `lease_duration - renew_deadline` (5 s with the defaults 15 s / 10 s; the
//! renewal every `retry_period`, 2 s, keeps the validity 8 to 10 s ahead while
//! all is well): the slack for Kosli to finish a request it had already
//! received when we gave up, and for the two monotonic clocks' rates to
//! differ. What it cannot cover: Kosli taking longer than that to commit a
//! request whose client has gone, or this process being frozen (SIGSTOP, a
//! paused VM) between the check and the bytes leaving it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use crate::Error;

/// Where the Lease lives, who we are, and the election's timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease: `POD_NAMESPACE`, falling back to "default" (the caller decides).
    pub namespace: String,
    /// Name of the Lease, shared by all replicas.
    pub name: String,
    /// Unique per process, so that a restarted pod never mistakes its
    /// predecessor's lease for its own.
    pub identity: String,
    /// How long a standby waits, on its own clock, without seeing the record
    /// change before it may take the Lease over.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down. Shorter than
    /// `lease_duration`, so it steps down before others may take over.
    pub renew_deadline: Duration,
    /// How often a leader renews and a standby re-reads the Lease.
    pub retry_period: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            namespace: "default".to_owned(),
            name: "kosli-operator".to_owned(),
            identity: default_identity(std::env::var("HOSTNAME").ok()),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The pod name (or "kosli-operator") plus a random suffix: a pod restarted
/// under the same name is still a different process.
fn default_identity(hostname: Option<String>) -> String {
    let base = hostname
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kosli-operator".to_owned());
    format!("{base}-{:08x}", fastrand::u32(..))
}

impl LeaseConfig {
    /// Checks what the no-two-leaders argument relies on; `spawn` refuses to
    /// elect with a configuration that fails it.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |m: &str| Err(Error::Config(format!("leader election: {m}")));
        if self.name.is_empty() || self.namespace.is_empty() || self.identity.is_empty() {
            return invalid("Lease name, namespace and identity must not be empty");
        }
        if self.retry_period.is_zero() {
            return invalid("the retry period must be positive");
        }
        if self.retry_period >= self.renew_deadline {
            return invalid("the retry period must be shorter than the renew deadline");
        }
        if self.renew_deadline >= self.lease_duration {
            return invalid("the renew deadline must be shorter than the lease duration");
        }
        Ok(())
    }

    /// `leaseDurationSeconds` as written: whole seconds, rounded up so other
    /// electors never wait less than we do.
    fn lease_seconds(&self) -> i32 {
        let d = self.lease_duration;
        let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
        i32::try_from(secs).unwrap_or(i32::MAX).max(1)
    }
}

/// What to do with the Lease record as last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Free (no Lease, no holder) or expired by our own clock: try to take it.
    Acquire,
    /// The record names us: write to it (a renewal, or resuming after a step-down).
    Renew,
    /// Another holder whose lease has not expired by our own clock.
    Standby,
}

/// The election's one decision. `record` is the Lease's spec (None when there
/// is no Lease), `observed_at` when this process last saw the record change,
/// `now` this process's monotonic now. `renewTime` is deliberately ignored:
/// another holder expires only after the longer of our `lease_duration` and its
/// declared `leaseDurationSeconds` has passed locally without a change.
pub fn decide(
    record: Option<&LeaseSpec>,
    observed_at: Instant,
    now: Instant,
    identity: &str,
    lease_duration: Duration,
) -> Decision {
    match holder(record) {
        None => Decision::Acquire,
        Some(h) if h == identity => Decision::Renew,
        Some(_) => {
            let valid_for = lease_duration.max(declared_duration(record));
            if now.saturating_duration_since(observed_at) >= valid_for {
                Decision::Acquire
            } else {
                Decision::Standby
            }
        }
    }
}

/// The holder named by a record; an empty string (a released lease) is none.
fn holder(record: Option<&LeaseSpec>) -> Option<&str> {
    record
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// The holder's own `leaseDurationSeconds`, so we never take over sooner than it asked.
fn declared_duration(record: Option<&LeaseSpec>) -> Duration {
    record
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or_default()
}

/// What identifies one version of the record: any write changes it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LeaseVersion {
    resource_version: Option<String>,
    holder: Option<String>,
    renew_time: Option<MicroTime>,
}

impl LeaseVersion {
    fn of(lease: Option<&Lease>) -> Self {
        let spec = lease.and_then(|l| l.spec.as_ref());
        Self {
            resource_version: lease.and_then(|l| l.metadata.resource_version.clone()),
            holder: holder(spec).map(str::to_owned),
            renew_time: spec.and_then(|s| s.renew_time.clone()),
        }
    }
}

/// When this process last saw the record change, on its own monotonic clock:
/// the only clock expiry is judged by.
#[derive(Clone, Debug)]
struct Observation {
    seen: Option<LeaseVersion>,
    at: Instant,
}

impl Observation {
    fn new(now: Instant) -> Self {
        Self {
            seen: None,
            at: now,
        }
    }

    /// Records what was read at `now`; the time moves only when the record changed.
    fn observe(&mut self, lease: Option<&Lease>, now: Instant) {
        let version = LeaseVersion::of(lease);
        if self.seen.as_ref() != Some(&version) {
            self.seen = Some(version);
            self.at = now;
        }
    }
}

/// The spec that makes us the holder. `old` is None when no Lease exists yet.
/// A new holder counts one transition and gets a fresh acquireTime.
fn taken_spec(old: Option<&LeaseSpec>, identity: &str, now: Timestamp, seconds: i32) -> LeaseSpec {
    let previous = holder(old);
    let same_holder = previous == Some(identity);
    let old = old.cloned().unwrap_or_default();
    // A released Lease keeps its acquireTime: it had a holder, so taking it is a transition.
    let ever_held = old.holder_identity.is_some() || old.acquire_time.is_some();
    let transitions = old.lease_transitions.unwrap_or(0);
    let lease_transitions = if ever_held && !same_holder {
        transitions.saturating_add(1)
    } else {
        transitions
    };
    let acquire_time = match (same_holder, old.acquire_time) {
        (true, Some(t)) => t,
        _ => MicroTime(now),
    };
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(seconds),
        acquire_time: Some(acquire_time),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(lease_transitions),
        ..old
    }
}

/// The spec of a renewal: only renewTime (and our duration) change.
fn renewed_spec(old: LeaseSpec, now: Timestamp, seconds: i32) -> LeaseSpec {
    LeaseSpec {
        renew_time: Some(MicroTime(now)),
        lease_duration_seconds: Some(seconds),
        ..old
    }
}

/// The spec of a released Lease: no holder, so a standby takes it at once
/// (and a 1 s duration for electors that judge by it, like client-go's).
fn released_spec(old: LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..old
    }
}

/// Why a Lease call did not succeed, sorted by what the election does about it.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Someone else wrote the Lease since we read it (or created it first).
    #[error("the Lease changed since it was read (409 Conflict)")]
    Conflict,
    #[error("the Lease does not exist")]
    NotFound,
    #[error("the apiserver did not answer before the deadline")]
    TimedOut,
    #[error(transparent)]
    Kube(kube::Error),
}

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 409 => Failure::Conflict,
            kube::Error::Api(s) if s.code == 404 => Failure::NotFound,
            _ => Failure::Kube(e),
        }
    }
}

/// Runs a Lease call that must not outlive `deadline`: a hung request must not
/// keep a leader from stepping down in time.
async fn call<T>(
    deadline: Instant,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout_at(deadline, request).await {
        Ok(result) => result.map_err(Failure::from),
        Err(_) => Err(Failure::TimedOut),
    }
}

/// Until when this process may act as leader, on its own monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    NotLeading,
    /// Leading while the monotonic clock reads before this.
    Until(Instant),
    /// Leader election is off: this process is the only one.
    Unbounded,
}

impl Validity {
    /// The term a successful Lease write sent at `sent` gives: it ends when
    /// the leader would step down had no renewal succeeded since.
    pub fn after_write(sent: Instant, renew_deadline: Duration) -> Self {
        Validity::Until(sent + renew_deadline)
    }

    /// Whether a process may act as leader at `now`.
    pub fn holds_at(self, now: Instant) -> bool {
        match self {
            Validity::NotLeading => false,
            Validity::Until(end) => now < end,
            Validity::Unbounded => true,
        }
    }
}

/// This process's leadership, as the work it gates sees it: a flag that
/// changes on acquisition and step-down (to wake consumers), and the current
/// term's validity (to check right before acting, without waiting for a
/// wake-up that a stuck elector may never send). See the module's "one writer
/// at a time".
#[derive(Clone, Debug)]
pub struct Leadership {
    flag: watch::Receiver<bool>,
    validity: Arc<Mutex<Validity>>,
}

impl Leadership {
    /// Leadership with election off: always leading. The sender keeps the
    /// flag's channel open; hold it as long as the leadership is used.
    pub fn unbounded() -> (Self, watch::Sender<bool>) {
        let (tx, flag) = watch::channel(true);
        let validity = Arc::new(Mutex::new(Validity::Unbounded));
        (Self { flag, validity }, tx)
    }

    /// Changes when leadership is gained or given up (not on every renewal).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.flag.clone()
    }

    pub fn validity(&self) -> Validity {
        *self.validity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this process may act as leader right now: the flag says so and
    /// the term has not run out on this process's monotonic clock.
    pub fn is_leading(&self) -> bool {
        *self.flag.borrow() && self.validity().holds_at(Instant::now())
    }

    /// Resolves once this process may no longer act as leader: at once if it
    /// may not now, else at the step-down or when the term runs out
    /// (whichever is first; a renewal meanwhile extends the term).
    pub async fn lost(&self) {
        let mut flag = self.flag.clone();
        loop {
            if !*flag.borrow_and_update() {
                return;
            }
            let end = match self.validity() {
                Validity::NotLeading => return,
                Validity::Until(end) if Instant::now() >= end => return,
                Validity::Until(end) => Some(end),
                Validity::Unbounded => None,
            };
            let expiry = async {
                match end {
                    Some(end) => tokio::time::sleep_until(end).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = flag.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = expiry => {}
            }
        }
    }
}

/// Publishes leadership. Publishes `false` when dropped, so an elector task that
/// panics or is aborted never leaves its consumers believing they lead.
struct Publisher {
    flag: watch::Sender<bool>,
    validity: Arc<Mutex<Validity>>,
}

impl Publisher {
    fn new() -> (Self, Leadership) {
        let (flag, rx) = watch::channel(false);
        let validity = Arc::new(Mutex::new(Validity::NotLeading));
        let leadership = Leadership {
            flag: rx,
            validity: validity.clone(),
        };
        (Self { flag, validity }, leadership)
    }

    /// The validity is written before the flag changes, so a consumer woken by
    /// the flag reads the validity that goes with it.
    fn set(&self, validity: Validity) {
        *self.validity.lock().unwrap_or_else(|p| p.into_inner()) = validity;
        let leading = validity != Validity::NotLeading;
        self.flag.send_if_modified(|current| {
            let changed = *current != leading;
            *current = leading;
            changed
        });
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.set(Validity::NotLeading);
    }
}

/// Runs the election until `release` is cancelled and publishes in the returned
/// [`Leadership`] whether this process leads (it starts not leading). Gate only
/// the work that must happen once (sends to Kosli, status writes) on it, so
/// standbys keep warm caches. On `release` a leader first publishes that it no
/// longer leads, then releases the Lease (holder cleared, `leaseDurationSeconds`
/// 1, resourceVersion precondition) so a standby takes over at once; the task
/// then ends. Cancel `release` only once the work gated on the leadership has
/// stopped: a write still in flight would overlap the successor's. If the task
/// dies otherwise (abort, panic) the leadership reads not leading and the Lease
/// simply expires. A configuration failing [`LeaseConfig::validate`] is logged
/// and the task ends at once without ever leading.
pub fn spawn(
    client: kube::Client,
    config: LeaseConfig,
    release: CancellationToken,
) -> (Leadership, JoinHandle<()>) {
    let (publisher, leadership) = Publisher::new();
    let span = tracing::info_span!(
        "leader_election",
        lease = %config.name,
        namespace = %config.namespace,
        identity = %config.identity,
    );
    let elector = Elector::new(client, config, publisher);
    let handle = tokio::spawn(elector.run(release).instrument(span));
    (leadership, handle)
}

/// The state of one process's election.
struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    publisher: Publisher,
    /// The Lease as last read or written (None: it does not exist). Its
    /// resourceVersion is the precondition of our next write.
    lease: Option<Lease>,
    observation: Observation,
    /// While leading: when the last successful write was sent. Leadership ends
    /// `renew_deadline` after it unless a renewal succeeds.
    renewed_at: Option<Instant>,
}

impl Elector {
    fn new(client: kube::Client, config: LeaseConfig, publisher: Publisher) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            publisher,
            lease: None,
            observation: Observation::new(Instant::now()),
            renewed_at: None,
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        if let Err(e) = self.config.validate() {
            error!(error = %e, "not taking part in leader election");
            return;
        }
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.round() => {}
            }
            let pause = self.pause();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        self.shut_down().await;
    }

    async fn round(&mut self) {
        match self.renewed_at {
            Some(renewed_at) => self.renew(renewed_at).await,
            None => self.contend().await,
        }
    }

    /// A leader renews every retry period, sooner if its deadline comes first;
    /// a standby polls with a little jitter so standbys do not move in step.
    fn pause(&self) -> Duration {
        let retry = self.config.retry_period;
        match self.renewed_at {
            Some(renewed_at) => {
                let deadline = renewed_at + self.config.renew_deadline;
                retry.min(deadline.saturating_duration_since(Instant::now()))
            }
            None => {
                let tenth = u64::try_from(retry.as_millis() / 10).unwrap_or(u64::MAX);
                retry.saturating_add(Duration::from_millis(fastrand::u64(0..=tenth)))
            }
        }
    }

    fn name(&self) -> &str {
        &self.config.name
    }

    fn spec(&self) -> Option<&LeaseSpec> {
        self.lease.as_ref().and_then(|l| l.spec.as_ref())
    }

    fn holds_record(&self) -> bool {
        holder(self.spec()) == Some(self.config.identity.as_str())
    }

    /// As a standby: read the Lease and take it when free, expired or ours.
    async fn contend(&mut self) {
        let deadline = Instant::now() + self.config.renew_deadline;
        let current = match call(deadline, self.api.get_opt(&self.config.name)).await {
            Ok(current) => current,
            Err(e) => {
                warn!(error = %e, "failed to read the Lease; retrying");
                return;
            }
        };
        let now = Instant::now();
        self.observation.observe(current.as_ref(), now);
        self.lease = current;
        let decision = decide(
            self.spec(),
            self.observation.at,
            now,
            &self.config.identity,
            self.config.lease_duration,
        );
        match decision {
            Decision::Standby => debug!(holder = ?holder(self.spec()), "standing by"),
            Decision::Acquire | Decision::Renew => self.take().await,
        }
    }

    /// Writes ourselves in as holder, with the read version as precondition.
    async fn take(&mut self) {
        let sent = Instant::now();
        let deadline = sent + self.config.renew_deadline;
        let old = self
            .lease
            .as_ref()
            .map(|l| l.spec.clone().unwrap_or_default());
        let spec = taken_spec(
            old.as_ref(),
            &self.config.identity,
            Timestamp::now(),
            self.config.lease_seconds(),
        );
        let params = PostParams::default();
        let result = match self.lease.clone() {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                call(deadline, self.api.create(&params, &lease)).await
            }
            Some(mut lease) => {
                lease.spec = Some(spec);
                call(deadline, self.api.replace(self.name(), &params, &lease)).await
            }
        };
        match result {
            Ok(lease) => self.renewed(lease, sent),
            Err(Failure::Conflict) => debug!("another process wrote the Lease first"),
            Err(e) => warn!(error = %e, "failed to acquire the Lease; retrying"),
        }
    }

    /// As leader: renew, or step down when the deadline passes or someone else holds it.
    async fn renew(&mut self, renewed_at: Instant) {
        let deadline = renewed_at + self.config.renew_deadline;
        let lease = self.lease.clone().filter(|_| Instant::now() < deadline);
        let Some(mut lease) = lease else {
            return self.step_down("could not renew the Lease within the renew deadline");
        };
        let sent = Instant::now();
        let old = lease.spec.take().unwrap_or_default();
        lease.spec = Some(renewed_spec(
            old,
            Timestamp::now(),
            self.config.lease_seconds(),
        ));
        let params = PostParams::default();
        match call(deadline, self.api.replace(self.name(), &params, &lease)).await {
            Ok(lease) => self.renewed(lease, sent),
            Err(Failure::Conflict) => self.recheck(deadline).await,
            Err(Failure::NotFound) => {
                self.lease = None;
                self.step_down("the Lease was deleted");
            }
            Err(Failure::TimedOut) => {
                self.step_down("could not renew the Lease within the renew deadline");
            }
            Err(e) => warn!(error = %e, "failed to renew the Lease; retrying"),
        }
    }

    /// After a 409 while leading: someone else wrote the Lease. Stay leader only
    /// if it still names us (then renew against its new version next round).
    async fn recheck(&mut self, deadline: Instant) {
        let current = match call(deadline, self.api.get_opt(&self.config.name)).await {
            Ok(current) => current,
            Err(e) => {
                warn!(error = %e, "failed to re-read the Lease after a conflict");
                return;
            }
        };
        self.observation.observe(current.as_ref(), Instant::now());
        self.lease = current;
        if self.holds_record() {
            debug!("the Lease was changed by someone else but still names us");
        } else {
            let other = holder(self.spec()).unwrap_or("nobody").to_owned();
            self.step_down(&format!("the Lease now names {other}"));
        }
    }

    /// Records a successful write of ours, which started at `sent`.
    fn renewed(&mut self, lease: Lease, sent: Instant) {
        self.observation.observe(Some(&lease), Instant::now());
        self.lease = Some(lease);
        // Every success extends the term, not only the first.
        self.publisher
            .set(Validity::after_write(sent, self.config.renew_deadline));
        if self.renewed_at.replace(sent).is_none() {
            info!("became leader");
        }
    }

    fn step_down(&mut self, reason: &str) {
        if self.renewed_at.take().is_some() {
            self.publisher.set(Validity::NotLeading);
            info!(reason, "lost leadership");
        }
    }

    /// Publishes `false` first (nothing may act as leader once someone else can
    /// take over), then releases the Lease if we held it.
    async fn shut_down(mut self) {
        let was_leading = self.renewed_at.take().is_some();
        self.publisher.set(Validity::NotLeading);
        if !was_leading {
            return;
        }
        let deadline = Instant::now() + self.config.renew_deadline;
        match self.release(deadline).await {
            Ok(true) => info!("released lease"),
            Ok(false) => info!("lost leadership; the Lease no longer names us, nothing to release"),
            Err(e) => warn!(error = %e, "failed to release the Lease; it will expire"),
        }
    }

    /// Clears the holder with our version as precondition. A conflict is
    /// re-read once: a renewal cut short by the shutdown may have landed.
    async fn release(&mut self, deadline: Instant) -> Result<bool, Failure> {
        let mut last = Failure::Conflict;
        for _ in 0..2 {
            let Some(mut lease) = self.lease.clone().filter(|_| self.holds_record()) else {
                return Ok(false);
            };
            let old = lease.spec.take().unwrap_or_default();
            lease.spec = Some(released_spec(old, Timestamp::now()));
            let params = PostParams::default();
            match call(deadline, self.api.replace(self.name(), &params, &lease)).await {
                Ok(_) => return Ok(true),
                Err(Failure::Conflict) => {
                    self.lease = call(deadline, self.api.get_opt(&self.config.name)).await?;
                }
                Err(Failure::NotFound) => return Ok(false),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const ME: &str = "me-1";
    const LEASE: Duration = Duration::from_secs(15);

    fn spec(holder: Option<&str>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(1_800_000_000).unwrap())),
            lease_transitions: Some(2),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..LeaseSpec::default()
        }
    }

    fn lease(holder: Option<&str>, rv: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(rv.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(spec(holder)),
        }
    }

    fn at(observed: Instant, after: Duration, record: Option<&LeaseSpec>) -> Decision {
        decide(record, observed, observed + after, ME, LEASE)
    }

    #[test]
    fn a_missing_or_released_lease_is_acquired_at_once() {
        let t = Instant::now();
        assert_eq!(at(t, Duration::ZERO, None), Decision::Acquire);
        assert_eq!(at(t, Duration::ZERO, Some(&spec(None))), Decision::Acquire);
        assert_eq!(
            at(t, Duration::ZERO, Some(&spec(Some("")))),
            Decision::Acquire
        );
        assert_eq!(
            at(t, Duration::ZERO, Some(&LeaseSpec::default())),
            Decision::Acquire
        );
    }

    #[test]
    fn our_own_record_is_renewed() {
        let t = Instant::now();
        assert_eq!(
            at(t, Duration::ZERO, Some(&spec(Some(ME)))),
            Decision::Renew
        );
        assert_eq!(at(t, LEASE * 10, Some(&spec(Some(ME)))), Decision::Renew);
    }

    #[test]
    fn a_foreign_holder_expires_only_after_the_lease_duration_on_our_clock() {
        let t = Instant::now();
        let other = spec(Some("other"));
        assert_eq!(at(t, Duration::ZERO, Some(&other)), Decision::Standby);
        let just_before = LEASE - Duration::from_millis(1);
        assert_eq!(at(t, just_before, Some(&other)), Decision::Standby);
        assert_eq!(at(t, LEASE, Some(&other)), Decision::Acquire);
        // A `now` before the observation (cannot happen with a monotonic clock) is no expiry.
        assert_eq!(
            decide(Some(&other), t + LEASE, t, ME, LEASE),
            Decision::Standby
        );
    }

    #[test]
    fn remote_renew_time_is_never_trusted() {
        let t = Instant::now();
        let hour = jiff::SignedDuration::from_hours(1);
        for renew in [
            Timestamp::now() + hour,
            Timestamp::now() - hour,
            Timestamp::UNIX_EPOCH,
        ] {
            let record = LeaseSpec {
                renew_time: Some(MicroTime(renew)),
                ..spec(Some("other"))
            };
            assert_eq!(
                at(t, Duration::from_secs(1), Some(&record)),
                Decision::Standby
            );
            assert_eq!(at(t, LEASE, Some(&record)), Decision::Acquire);
        }
    }

    #[test]
    fn a_longer_declared_duration_is_respected_and_a_shorter_one_is_not_trusted() {
        let t = Instant::now();
        let long = LeaseSpec {
            lease_duration_seconds: Some(60),
            ..spec(Some("other"))
        };
        assert_eq!(at(t, LEASE, Some(&long)), Decision::Standby);
        assert_eq!(
            at(t, Duration::from_secs(60), Some(&long)),
            Decision::Acquire
        );
        let short = LeaseSpec {
            lease_duration_seconds: Some(1),
            ..spec(Some("other"))
        };
        assert_eq!(
            at(t, Duration::from_secs(2), Some(&short)),
            Decision::Standby
        );
        let negative = LeaseSpec {
            lease_duration_seconds: Some(-5),
            ..spec(Some("other"))
        };
        assert_eq!(at(t, LEASE, Some(&negative)), Decision::Acquire);
    }

    #[test]
    fn observation_time_moves_only_when_the_record_changes() {
        let t0 = Instant::now();
        let mut seen = Observation::new(t0);
        let t1 = t0 + Duration::from_secs(1);
        seen.observe(Some(&lease(Some("a"), "10")), t1);
        assert_eq!(seen.at, t1, "the first read is an observation");
        seen.observe(Some(&lease(Some("a"), "10")), t1 + LEASE);
        assert_eq!(seen.at, t1, "an unchanged record does not refresh it");
        let t2 = t1 + Duration::from_secs(20);
        seen.observe(Some(&lease(Some("a"), "11")), t2);
        assert_eq!(seen.at, t2, "a new resourceVersion is a change");
        let t3 = t2 + Duration::from_secs(1);
        seen.observe(Some(&lease(Some("b"), "11")), t3);
        assert_eq!(seen.at, t3, "a new holder is a change");
        let t4 = t3 + Duration::from_secs(1);
        seen.observe(None, t4);
        assert_eq!(seen.at, t4, "deletion is a change");
    }

    #[test]
    fn taking_a_lease_from_another_holder_counts_a_transition() {
        let now = Timestamp::now();
        let taken = taken_spec(Some(&spec(Some("other"))), ME, now, 15);
        assert_eq!(taken.holder_identity.as_deref(), Some(ME));
        assert_eq!(taken.lease_transitions, Some(3));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.renew_time, Some(MicroTime(now)));
        assert_eq!(taken.lease_duration_seconds, Some(15));
        let released = released_spec(spec(Some("other")), now);
        assert_eq!(
            taken_spec(Some(&released), ME, now, 15).lease_transitions,
            Some(3)
        );
    }

    #[test]
    fn taking_back_our_own_lease_keeps_acquire_time_and_transitions() {
        let now = Timestamp::now();
        let taken = taken_spec(Some(&spec(Some(ME))), ME, now, 15);
        assert_eq!(taken.lease_transitions, Some(2));
        assert_eq!(taken.acquire_time, Some(MicroTime(Timestamp::UNIX_EPOCH)));
        assert_eq!(taken.renew_time, Some(MicroTime(now)));
    }

    #[test]
    fn a_new_lease_starts_with_no_transitions() {
        let now = Timestamp::now();
        let created = taken_spec(None, ME, now, 15);
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.acquire_time, Some(MicroTime(now)));
        let empty = taken_spec(Some(&LeaseSpec::default()), ME, now, 15);
        assert_eq!(empty.lease_transitions, Some(0));
    }

    #[test]
    fn renewing_and_releasing_touch_only_what_they_must() {
        let now = Timestamp::now();
        let renewed = renewed_spec(spec(Some(ME)), now, 15);
        assert_eq!(renewed.holder_identity.as_deref(), Some(ME));
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(renewed.lease_transitions, Some(2));
        let released = released_spec(spec(Some(ME)), now);
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.lease_transitions, Some(2));
    }

    #[test]
    fn lease_seconds_round_up() {
        let seconds = |lease_duration| {
            LeaseConfig {
                lease_duration,
                ..LeaseConfig::default()
            }
            .lease_seconds()
        };
        assert_eq!(seconds(Duration::from_millis(2500)), 3);
        assert_eq!(seconds(Duration::from_secs(15)), 15);
        assert_eq!(seconds(Duration::from_millis(10)), 1);
    }

    #[test]
    fn defaults_are_valid_and_timings_must_nest() {
        let config = LeaseConfig::default();
        assert_eq!(config.name, "kosli-operator");
        assert_eq!(config.namespace, "default");
        assert!(config.validate().is_ok());
        let unsafe_deadline = LeaseConfig {
            renew_deadline: config.lease_duration,
            ..config.clone()
        };
        assert!(unsafe_deadline.validate().is_err());
        let slow_retry = LeaseConfig {
            retry_period: config.renew_deadline,
            ..config.clone()
        };
        assert!(slow_retry.validate().is_err());
        let nameless = LeaseConfig {
            identity: String::new(),
            ..config
        };
        assert!(nameless.validate().is_err());
    }

    #[test]
    fn default_identity_is_the_hostname_with_a_random_suffix() {
        let a = default_identity(Some("pod-7".to_owned()));
        let b = default_identity(Some("pod-7".to_owned()));
        let suffix = a.strip_prefix("pod-7-").unwrap();
        assert_eq!(suffix.len(), 8);
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b, "two processes on one pod name differ");
        assert!(default_identity(None).starts_with("kosli-operator-"));
        assert!(default_identity(Some(" ".to_owned())).starts_with("kosli-operator-"));
    }

    #[test]
    fn a_dropped_publisher_reads_false() {
        let (publisher, leadership) = Publisher::new();
        let rx = leadership.watch();
        publisher.set(Validity::after_write(Instant::now(), LEASE));
        assert!(*rx.borrow());
        assert!(leadership.is_leading());
        drop(publisher);
        assert!(!*rx.borrow());
        assert!(!leadership.is_leading());
        assert_eq!(leadership.validity(), Validity::NotLeading);
    }

    #[test]
    fn a_term_ends_renew_deadline_after_its_last_write_was_sent() {
        let sent = Instant::now();
        let deadline = Duration::from_secs(10);
        let term = Validity::after_write(sent, deadline);
        assert!(term.holds_at(sent));
        assert!(term.holds_at(sent + deadline - Duration::from_millis(1)));
        assert!(
            !term.holds_at(sent + deadline),
            "over at the renew deadline"
        );
        assert!(!Validity::NotLeading.holds_at(sent));
        assert!(Validity::Unbounded.holds_at(sent + deadline * 1000));
    }

    #[test]
    fn every_term_ends_before_a_standby_may_take_over() {
        // A standby reads our last write no earlier than we sent it, and takes
        // over no earlier than `lease_duration` after that read (`decide`).
        let config = LeaseConfig::default();
        let sent = Instant::now();
        let term = Validity::after_write(sent, config.renew_deadline);
        let mut takeover = None;
        for read_after_ms in [0_u64, 1, 500, 2000] {
            let seen = sent + Duration::from_millis(read_after_ms);
            let record = spec(Some("the-old-leader"));
            for step_ms in (0..30_000).step_by(50) {
                let now = seen + Duration::from_millis(step_ms);
                if decide(Some(&record), seen, now, "standby", config.lease_duration)
                    == Decision::Acquire
                {
                    assert!(!term.holds_at(now), "two writers at {step_ms} ms");
                    let margin = now - (sent + config.renew_deadline);
                    assert!(margin >= Duration::from_secs(5), "{margin:?}");
                    takeover.get_or_insert(now);
                    break;
                }
            }
        }
        assert!(takeover.is_some(), "the standby never took over");
    }

    #[tokio::test]
    async fn lost_resolves_when_the_term_runs_out_unless_renewed() {
        let (publisher, leadership) = Publisher::new();
        let short = Duration::from_millis(100);
        publisher.set(Validity::after_write(Instant::now(), short));
        // A renewal halfway extends the term; nothing else is published.
        let renewer = async {
            tokio::time::sleep(short / 2).await;
            publisher.set(Validity::after_write(Instant::now(), short));
        };
        let start = Instant::now();
        tokio::join!(leadership.lost(), renewer);
        let lasted = start.elapsed();
        assert!(
            lasted >= short * 3 / 2 - Duration::from_millis(5),
            "{lasted:?}"
        );
        assert!(*leadership.watch().borrow(), "the flag never went down");
        assert!(!leadership.is_leading(), "yet the term is over");
    }

    #[tokio::test]
    async fn lost_resolves_at_a_step_down_and_at_once_when_not_leading() {
        let (publisher, leadership) = Publisher::new();
        leadership.lost().await;
        publisher.set(Validity::after_write(
            Instant::now(),
            Duration::from_secs(60),
        ));
        let stepping_down = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            publisher.set(Validity::NotLeading);
        };
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(leadership.lost(), stepping_down)
        })
        .await;
        assert!(waited.is_ok(), "a step-down did not end the term");
        let (unbounded, _keep) = Leadership::unbounded();
        assert!(unbounded.is_leading());
        let pending = tokio::time::timeout(Duration::from_millis(20), unbounded.lost()).await;
        assert!(pending.is_err(), "unbounded leadership is never lost");
    }
}
