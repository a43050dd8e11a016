//! Lookups behind the gate: image -> fingerprint through the registry, and
//! fingerprint -> verdict through Kosli's assert endpoint.
//!
//! Fast and safe: definitive verdicts are cached (compliant for minutes,
//! non-compliant for seconds, errors never), identical lookups in flight are
//! shared, tag digests are cached briefly and kept as a fallback, and a circuit
//! breaker stops asking a Kosli that keeps failing. While Kosli cannot answer,
//! the last compliant verdict of a digest stands in (the caller warns).
//!
//! Bounded under hostile input: each lookup runs as its own task with its own
//! timeout and holds one of a fixed number of slots shared by all reviews;
//! every cache holds a bounded number of entries; the breaker and the caches
//! are updated once per lookup, inside its task, however many reviews wait.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::bounded_map::BoundedMap;
use super::decision::{ImageVerdict, reasons};
use super::in_flight::InFlight;
use crate::core::fingerprint::ImageRef;
use crate::error::{Error, Result, chain};
use crate::gate::registry::{RegistryClient, RegistryCredentials};
use crate::kosli::{AssertOutcome, KosliClient};

#[derive(Clone, Debug)]
pub struct ResolverOptions {
    pub compliant_ttl: Duration,
    pub non_compliant_ttl: Duration,
    /// How long a tag's digest is trusted without asking the registry again.
    pub tag_ttl: Duration,
    /// How long a compliant verdict may stand in while Kosli is unreachable.
    pub stale_compliant: Duration,
    /// Consecutive Kosli failures that open the circuit, and for how long.
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    /// How long a tag's last known digest may stand in when the registry fails.
    pub stale_digest: Duration,
    /// Entries each cache (digests, verdicts, last compliant) holds at most.
    pub cache_entries: usize,
    /// Lookups (registry and Kosli) in flight at once, across all reviews.
    pub max_lookups: usize,
    /// How long one lookup may take, waiting for a slot included.
    pub lookup_timeout: Duration,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        Self {
            compliant_ttl: Duration::from_secs(300),
            non_compliant_ttl: Duration::from_secs(10),
            tag_ttl: Duration::from_secs(30),
            stale_compliant: Duration::from_secs(24 * 3600),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            stale_digest: Duration::from_secs(3600),
            cache_entries: 10_000,
            max_lookups: 32,
            lookup_timeout: Duration::from_secs(10),
        }
    }
}

/// What a cache answered, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheUse {
    Hit,
    Miss,
    Stale,
}

/// Sees cache uses and lookups: metrics hang here.
pub trait ResolverObserver: Send + Sync {
    fn cache(&self, cache: &'static str, use_: CacheUse);
    fn lookup(&self, backend: &'static str, elapsed: Duration);
    fn circuit(&self, open: bool);
}

/// The gate's series in the process metrics. Here, not in `observe`, so that
/// the lower layer does not depend on the gate.
impl ResolverObserver for crate::observe::metrics::Metrics {
    fn cache(&self, cache: &'static str, use_: CacheUse) {
        let result = match use_ {
            CacheUse::Hit => "hit",
            CacheUse::Miss => "miss",
            CacheUse::Stale => "stale",
        };
        self.gate_cache.with_label_values(&[cache, result]).inc();
    }

    fn lookup(&self, backend: &'static str, elapsed: Duration) {
        self.lookup_seconds
            .with_label_values(&[backend])
            .observe(elapsed.as_secs_f64());
    }

    fn circuit(&self, open: bool) {
        self.circuit_open.set(i64::from(open));
    }
}

type VerdictKey = (String, String, Vec<String>);
/// A normalised image reference and the hash of the registry credentials it
/// was resolved with ([`RegistryCredentials::cache_key`]).
type DigestKey = (String, Option<String>);

#[derive(Clone, Debug)]
struct CachedVerdict {
    verdict: ImageVerdict,
    at: Instant,
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// What lookup tasks share with the resolver: they outlive the review that
/// started them and settle the caches and the breaker themselves.
struct Shared {
    registry: RegistryClient,
    kosli: Option<KosliClient>,
    options: ResolverOptions,
    observer: Option<Arc<dyn ResolverObserver>>,
    slots: Arc<Semaphore>,
    digests: Mutex<BoundedMap<DigestKey, (String, Instant)>>,
    verdicts: Mutex<BoundedMap<VerdictKey, CachedVerdict>>,
    /// The last compliant verdict per digest and environment, for outages.
    last_compliant: Mutex<BoundedMap<VerdictKey, Instant>>,
    breaker: Mutex<Breaker>,
}

pub struct Resolver {
    shared: Arc<Shared>,
    digests_in_flight: InFlight<DigestKey, String>,
    asserts_in_flight: InFlight<VerdictKey, ImageVerdict>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kosli refusing the operator's token is a configuration fault, not an
/// outage: it says so, and it does not count toward the breaker.
fn token_refused(error: &Error) -> Option<u16> {
    error.kosli_status().filter(|s| *s == 401 || *s == 403)
}

/// Why Kosli gave no verdict, as the denial says it.
fn unreachable_why(error: &Error) -> String {
    match token_refused(error) {
        Some(status) => format!("Kosli refused the operator's API token (HTTP {status})"),
        None => chain(error),
    }
}

fn verdict_of(digest: &str, outcome: AssertOutcome) -> ImageVerdict {
    let digest = digest.to_owned();
    match outcome {
        AssertOutcome::Known(a) if a.compliant => ImageVerdict::Compliant { digest },
        AssertOutcome::Known(a) => ImageVerdict::NonCompliant {
            digest,
            reasons: reasons(&a),
            url: a.html_url,
        },
        AssertOutcome::Unknown => ImageVerdict::Unknown { digest },
    }
}

impl Resolver {
    pub fn new(
        registry: RegistryClient,
        kosli: Option<KosliClient>,
        options: ResolverOptions,
    ) -> Self {
        let entries = options.cache_entries;
        Self {
            shared: Arc::new(Shared {
                registry,
                kosli,
                slots: Arc::new(Semaphore::new(options.max_lookups.max(1))),
                options,
                observer: None,
                digests: Mutex::new(BoundedMap::new(entries)),
                verdicts: Mutex::new(BoundedMap::new(entries)),
                last_compliant: Mutex::new(BoundedMap::new(entries)),
                breaker: Mutex::default(),
            }),
            digests_in_flight: InFlight::new("the registry lookup"),
            asserts_in_flight: InFlight::new("the Kosli lookup"),
        }
    }

    /// A builder step, before any lookup: later it would race lookup tasks.
    pub fn with_observer(mut self, observer: Arc<dyn ResolverObserver>) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.observer = Some(observer),
            None => tracing::warn!("resolver observer set after lookups started: ignored"),
        }
        self
    }

    /// Lookups in flight now (registry, Kosli): shared ones count once.
    pub fn lookups_in_flight(&self) -> (usize, usize) {
        (self.digests_in_flight.len(), self.asserts_in_flight.len())
    }

    /// Entries in the caches now: digests, verdicts, last compliant verdicts.
    pub fn cache_sizes(&self) -> (usize, usize, usize) {
        let s = &self.shared;
        (
            lock(&s.digests).len(),
            lock(&s.verdicts).len(),
            lock(&s.last_compliant).len(),
        )
    }

    fn cache_use(&self, cache: &'static str, use_: CacheUse) {
        self.shared.cache_use(cache, use_);
    }

    /// The sha256 fingerprint of an image: its own digest, or its tag's digest
    /// from the registry (cached; a recent digest serves when the registry fails).
    pub async fn fingerprint(
        &self,
        image: &str,
        credentials: Option<RegistryCredentials>,
    ) -> Result<String> {
        let reference = ImageRef::parse(image).map_err(Error::InvalidImageReference)?;
        if let Some(digest) = &reference.digest {
            return Ok(digest.sha256_hex()?.to_owned());
        }
        let key: DigestKey = (
            reference.to_string(),
            credentials.as_ref().map(RegistryCredentials::cache_key),
        );
        let cached = lock(&self.shared.digests).get(&key).cloned();
        if let Some((digest, at)) = &cached
            && at.elapsed() < self.shared.options.tag_ttl
        {
            self.cache_use("digest", CacheUse::Hit);
            return Ok(digest.clone());
        }
        let shared = self.shared.clone();
        let lookup_key = key.clone();
        let result = self
            .digests_in_flight
            .join(key, self.shared.task_timeout(), move || async move {
                shared
                    .resolve_digest(lookup_key, reference, credentials)
                    .await
            })
            .await;
        match result {
            Ok(digest) => {
                self.cache_use("digest", CacheUse::Miss);
                Ok(digest)
            }
            Err(e) => match cached {
                Some((digest, at)) if at.elapsed() < self.shared.options.stale_digest => {
                    self.cache_use("digest", CacheUse::Stale);
                    tracing::warn!(
                        image,
                        "registry failed, using the last known digest: {}",
                        chain(&*e)
                    );
                    Ok(digest)
                }
                _ => Err(Error::Shared(e)),
            },
        }
    }

    /// Kosli's verdict on a fingerprint for an environment (or its named policies).
    pub async fn verdict(
        &self,
        digest: &str,
        kosli_env: &str,
        policies: &[String],
    ) -> ImageVerdict {
        let key: VerdictKey = (digest.to_owned(), kosli_env.to_owned(), policies.to_vec());
        if let Some(cached) = lock(&self.shared.verdicts).get(&key).cloned() {
            let ttl = match cached.verdict {
                ImageVerdict::Compliant { .. } => self.shared.options.compliant_ttl,
                _ => self.shared.options.non_compliant_ttl,
            };
            if cached.at.elapsed() < ttl {
                self.cache_use("verdict", CacheUse::Hit);
                return cached.verdict;
            }
        }
        let Some(kosli) = self.shared.kosli.clone() else {
            return self.unreachable(&key, "no Kosli client (dry run)".to_owned());
        };
        if let Some(until) = lock(&self.shared.breaker).open_until
            && Instant::now() < until
        {
            return self.unreachable(
                &key,
                "circuit open after repeated Kosli failures".to_owned(),
            );
        }
        let shared = self.shared.clone();
        let lookup_key = key.clone();
        let result = self
            .asserts_in_flight
            .join(
                key.clone(),
                self.shared.task_timeout(),
                move || async move { shared.assert(kosli, lookup_key).await },
            )
            .await;
        self.cache_use("verdict", CacheUse::Miss);
        match result {
            Ok(verdict) => verdict,
            Err(e) => self.unreachable(&key, unreachable_why(&e)),
        }
    }

    /// The answer when the lookup ran out of time.
    pub fn fallback(
        &self,
        digest: &str,
        kosli_env: &str,
        policies: &[String],
        why: &str,
    ) -> ImageVerdict {
        self.unreachable(
            &(digest.to_owned(), kosli_env.to_owned(), policies.to_vec()),
            why.to_owned(),
        )
    }

    /// Kosli cannot answer: a recent compliant verdict stands in, else unreachable.
    fn unreachable(&self, key: &VerdictKey, why: String) -> ImageVerdict {
        let digest = key.0.clone();
        let last = lock(&self.shared.last_compliant).get(key).copied();
        match last {
            Some(at) if at.elapsed() < self.shared.options.stale_compliant => {
                self.cache_use("verdict", CacheUse::Stale);
                ImageVerdict::CompliantCached { digest, why }
            }
            _ => ImageVerdict::KosliUnreachable { digest, why },
        }
    }
}

impl Shared {
    fn cache_use(&self, cache: &'static str, use_: CacheUse) {
        if let Some(o) = &self.observer {
            o.cache(cache, use_);
        }
    }

    /// A backstop over the lookup's own bounds: the slot wait and the request
    /// each have `lookup_timeout`.
    fn task_timeout(&self) -> Duration {
        self.options
            .lookup_timeout
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(1))
    }

    /// One of the `max_lookups` slots shared by every review, waited for at
    /// most `lookup_timeout` (the review's own deadline usually ends it first).
    async fn slot(&self, what: &'static str) -> Result<OwnedSemaphorePermit> {
        let wait = self.options.lookup_timeout;
        match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::Lookup {
                what,
                problem: format!(
                    "found no free slot within {wait:?} ({} lookups in flight)",
                    self.options.max_lookups
                ),
            }),
        }
    }

    /// `request` bounded by `lookup_timeout`.
    async fn bounded<T>(
        &self,
        what: &'static str,
        request: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let limit = self.options.lookup_timeout;
        tokio::time::timeout(limit, request)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Lookup {
                    what,
                    problem: format!("timed out after {limit:?}"),
                })
            })
    }

    /// The lookup task of a tag's digest; caches what it finds.
    async fn resolve_digest(
        self: Arc<Self>,
        key: DigestKey,
        reference: ImageRef,
        credentials: Option<RegistryCredentials>,
    ) -> Result<String, Arc<Error>> {
        const WHAT: &str = "the registry lookup";
        let _slot = self.slot(WHAT).await.map_err(Arc::new)?;
        let started = Instant::now();
        let result = self
            .bounded(
                WHAT,
                self.registry.resolve(&reference, credentials.as_ref()),
            )
            .await
            .and_then(|d| Ok(d.sha256_hex()?.to_owned()));
        if let Some(o) = &self.observer {
            o.lookup("registry", started.elapsed());
        }
        if let Ok(digest) = &result {
            lock(&self.digests).insert(key, (digest.clone(), Instant::now()));
        }
        result.map_err(Arc::new)
    }

    /// The lookup task of a verdict: caches it and settles the breaker, once
    /// per lookup however many reviews wait for it.
    async fn assert(
        self: Arc<Self>,
        kosli: KosliClient,
        key: VerdictKey,
    ) -> Result<ImageVerdict, Arc<Error>> {
        const WHAT: &str = "the Kosli lookup";
        // No slot is our own limit, not Kosli failing: the breaker is not told.
        let _slot = self.slot(WHAT).await.map_err(Arc::new)?;
        let (digest, env, policies) = &key;
        let started = Instant::now();
        let env = (!env.is_empty()).then_some(env.as_str());
        let result = self
            .bounded(WHAT, kosli.assert_artifact(digest, env, policies))
            .await;
        if let Some(o) = &self.observer {
            o.lookup("kosli", started.elapsed());
        }
        match result {
            Ok(outcome) => {
                self.breaker_success();
                let verdict = verdict_of(digest, outcome);
                let now = Instant::now();
                if matches!(verdict, ImageVerdict::Compliant { .. }) {
                    lock(&self.last_compliant).insert(key.clone(), now);
                }
                let cached = CachedVerdict {
                    verdict: verdict.clone(),
                    at: now,
                };
                lock(&self.verdicts).insert(key, cached);
                Ok(verdict)
            }
            Err(e) => {
                if token_refused(&e).is_none() {
                    self.breaker_failure();
                }
                Err(Arc::new(e))
            }
        }
    }

    fn breaker_success(&self) {
        let mut b = lock(&self.breaker);
        if b.open_until.is_some()
            && let Some(o) = &self.observer
        {
            o.circuit(false);
        }
        *b = Breaker::default();
    }

    fn breaker_failure(&self) {
        let mut b = lock(&self.breaker);
        b.failures = b.failures.saturating_add(1);
        if b.failures >= self.options.breaker_threshold {
            // Half-open after the cooldown: the next lookup tries Kosli again.
            let now = Instant::now();
            b.open_until = Some(
                now.checked_add(self.options.breaker_cooldown)
                    .unwrap_or(now),
            );
            tracing::warn!(
                failures = b.failures,
                "Kosli keeps failing: circuit open for {:?}",
                self.options.breaker_cooldown
            );
            if let Some(o) = &self.observer {
                o.circuit(true);
            }
        }
    }
}
