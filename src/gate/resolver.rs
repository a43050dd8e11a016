//! Lookups behind the gate: image -> fingerprint through the registry, and
//! fingerprint -> verdict through Kosli's assert endpoint.
//!
//! Fast and safe: definitive verdicts are cached (compliant for minutes,
//! non-compliant for seconds, errors never), identical lookups in flight are
//! shared, tag digests are cached briefly and kept as a fallback, and a circuit
//! breaker stops asking a Kosli that keeps failing. While Kosli cannot answer,
//! the last compliant verdict of a digest stands in (the caller warns).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::decision::{ImageVerdict, reasons};
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
/// A normalised image reference and the registry user it was resolved as.
type DigestKey = (String, Option<String>);
// A shared future's output is cloned to every waiter: the error goes in an Arc.
type SharedAssert = Shared<BoxFuture<'static, Result<AssertOutcome, Arc<Error>>>>;
type SharedDigest = Shared<BoxFuture<'static, Result<String, Arc<Error>>>>;

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

pub struct Resolver {
    registry: Arc<RegistryClient>,
    kosli: Option<KosliClient>,
    options: ResolverOptions,
    observer: Option<Arc<dyn ResolverObserver>>,
    digests: Mutex<HashMap<DigestKey, (String, Instant)>>,
    digests_in_flight: Mutex<HashMap<DigestKey, SharedDigest>>,
    verdicts: Mutex<HashMap<VerdictKey, CachedVerdict>>,
    /// The last compliant verdict per digest and environment, for outages.
    last_compliant: Mutex<HashMap<VerdictKey, Instant>>,
    asserts_in_flight: Mutex<HashMap<VerdictKey, SharedAssert>>,
    breaker: Mutex<Breaker>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Resolver {
    pub fn new(
        registry: RegistryClient,
        kosli: Option<KosliClient>,
        options: ResolverOptions,
    ) -> Self {
        Self {
            registry: Arc::new(registry),
            kosli,
            options,
            observer: None,
            digests: Mutex::default(),
            digests_in_flight: Mutex::default(),
            verdicts: Mutex::default(),
            last_compliant: Mutex::default(),
            asserts_in_flight: Mutex::default(),
            breaker: Mutex::default(),
        }
    }

    pub fn with_observer(mut self, observer: Arc<dyn ResolverObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn cache_use(&self, cache: &'static str, use_: CacheUse) {
        if let Some(o) = &self.observer {
            o.cache(cache, use_);
        }
    }

    /// The sha256 fingerprint of an image: its own digest, or its tag's digest
    /// from the registry (cached; a stale digest serves when the registry fails).
    pub async fn fingerprint(
        &self,
        image: &str,
        credentials: Option<RegistryCredentials>,
    ) -> Result<String> {
        let reference = ImageRef::parse(image).map_err(Error::InvalidImageReference)?;
        if let Some(digest) = &reference.digest {
            return Ok(digest.sha256_hex()?.to_owned());
        }
        let key = (
            reference.to_string(),
            credentials.as_ref().map(|c| c.username.clone()),
        );
        let cached = lock(&self.digests).get(&key).cloned();
        if let Some((digest, at)) = &cached
            && at.elapsed() < self.options.tag_ttl
        {
            self.cache_use("digest", CacheUse::Hit);
            return Ok(digest.clone());
        }
        let shared = {
            let mut in_flight = lock(&self.digests_in_flight);
            in_flight
                .entry(key.clone())
                .or_insert_with(|| {
                    let registry = self.registry.clone();
                    let observer = self.observer.clone();
                    async move {
                        let started = Instant::now();
                        let result = registry.resolve(&reference, credentials.as_ref()).await;
                        if let Some(o) = &observer {
                            o.lookup("registry", started.elapsed());
                        }
                        result
                            .and_then(|d| Ok(d.sha256_hex()?.to_owned()))
                            .map_err(Arc::new)
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let result = shared.await;
        lock(&self.digests_in_flight).remove(&key);
        match result {
            Ok(digest) => {
                self.cache_use("digest", CacheUse::Miss);
                lock(&self.digests).insert(key, (digest.clone(), Instant::now()));
                Ok(digest)
            }
            Err(e) => match cached {
                Some((digest, _)) => {
                    self.cache_use("digest", CacheUse::Stale);
                    tracing::warn!(
                        image,
                        "registry failed, using the last known digest: {}",
                        chain(&*e)
                    );
                    Ok(digest)
                }
                None => Err(Error::Shared(e)),
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
        if let Some(cached) = lock(&self.verdicts).get(&key).cloned() {
            let ttl = match cached.verdict {
                ImageVerdict::Compliant { .. } => self.options.compliant_ttl,
                _ => self.options.non_compliant_ttl,
            };
            if cached.at.elapsed() < ttl {
                self.cache_use("verdict", CacheUse::Hit);
                return cached.verdict;
            }
        }
        let Some(kosli) = self.kosli.clone() else {
            return self.unreachable(&key, "no Kosli client (dry run)".to_owned());
        };
        if let Some(until) = lock(&self.breaker).open_until
            && Instant::now() < until
        {
            return self.unreachable(
                &key,
                "circuit open after repeated Kosli failures".to_owned(),
            );
        }
        let shared = {
            let mut in_flight = lock(&self.asserts_in_flight);
            in_flight
                .entry(key.clone())
                .or_insert_with(|| {
                    let (digest, env, policies) = key.clone();
                    let observer = self.observer.clone();
                    async move {
                        let started = Instant::now();
                        let env = (!env.is_empty()).then_some(env);
                        let result = kosli
                            .assert_artifact(&digest, env.as_deref(), &policies)
                            .await;
                        if let Some(o) = &observer {
                            o.lookup("kosli", started.elapsed());
                        }
                        result.map_err(Arc::new)
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let result = shared.await;
        lock(&self.asserts_in_flight).remove(&key);
        self.cache_use("verdict", CacheUse::Miss);
        match result {
            Ok(outcome) => {
                self.breaker_success();
                let verdict = match outcome {
                    AssertOutcome::Known(a) if a.compliant => ImageVerdict::Compliant {
                        digest: digest.to_owned(),
                    },
                    AssertOutcome::Known(a) => ImageVerdict::NonCompliant {
                        digest: digest.to_owned(),
                        reasons: reasons(&a),
                        url: a.html_url,
                    },
                    AssertOutcome::Unknown => ImageVerdict::Unknown {
                        digest: digest.to_owned(),
                    },
                };
                if matches!(verdict, ImageVerdict::Compliant { .. }) {
                    lock(&self.last_compliant).insert(key.clone(), Instant::now());
                }
                lock(&self.verdicts).insert(
                    key,
                    CachedVerdict {
                        verdict: verdict.clone(),
                        at: Instant::now(),
                    },
                );
                verdict
            }
            Err(e) => {
                self.breaker_failure();
                self.unreachable(&key, chain(&*e))
            }
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
        let last = lock(&self.last_compliant).get(key).copied();
        match last {
            Some(at) if at.elapsed() < self.options.stale_compliant => {
                self.cache_use("verdict", CacheUse::Stale);
                ImageVerdict::CompliantCached { digest, why }
            }
            _ => ImageVerdict::KosliUnreachable { digest, why },
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
            b.open_until = Some(Instant::now() + self.options.breaker_cooldown);
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
