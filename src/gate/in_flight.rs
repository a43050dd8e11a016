//! Identical lookups in flight, shared: the first caller starts the lookup as
//! a task of its own, later callers of the same key wait for the same answer.
//!
//! The entry for a key leaves the map on every exit path: the task removes it
//! when it ends (answer, error, its own timeout, a panic: a drop guard runs in
//! each case), and the last waiter to give up (a review's deadline drops its
//! future) aborts the task and removes it, so the next review starts afresh
//! instead of inheriting a lookup nobody drives.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::error::Error;

/// A lookup's answer as every waiter sees it: the error is shared, not cloned.
pub type LookupResult<T> = Result<T, Arc<Error>>;

type Lookups<K, T> = Mutex<HashMap<K, Lookup<T>>>;

struct Lookup<T> {
    /// Tells this lookup from a later one of the same key.
    id: u64,
    answer: Shared<BoxFuture<'static, LookupResult<T>>>,
    waiters: usize,
    task: tokio::task::AbortHandle,
}

pub struct InFlight<K, T> {
    /// Names the lookup in errors: "the registry lookup".
    what: &'static str,
    lookups: Arc<Lookups<K, T>>,
    next_id: AtomicU64,
}

fn lock<K, T>(m: &Lookups<K, T>) -> MutexGuard<'_, HashMap<K, Lookup<T>>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K, T> InFlight<K, T>
where
    K: Clone + Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            lookups: Arc::default(),
            next_id: AtomicU64::new(0),
        }
    }

    /// Lookups in flight now.
    pub fn len(&self) -> usize {
        lock(&self.lookups).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The answer of the lookup of `key`: joins the one in flight, or spawns
    /// `start()` bounded by `timeout`. Dropping the returned future is safe at
    /// any point.
    pub async fn join<F>(
        &self,
        key: K,
        timeout: Duration,
        start: impl FnOnce() -> F,
    ) -> LookupResult<T>
    where
        F: Future<Output = LookupResult<T>> + Send + 'static,
    {
        let (id, answer) = {
            let mut lookups = lock(&self.lookups);
            match lookups.get_mut(&key) {
                Some(lookup) => {
                    lookup.waiters += 1;
                    (lookup.id, lookup.answer.clone())
                }
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let lookup = self.spawn(key.clone(), id, timeout, start());
                    let answer = lookup.answer.clone();
                    lookups.insert(key.clone(), lookup);
                    (id, answer)
                }
            }
        };
        let mut waiter = Waiter {
            lookups: &self.lookups,
            key,
            id,
            answered: false,
        };
        let result = answer.await;
        waiter.answered = true;
        result
    }

    fn spawn<F>(&self, key: K, id: u64, timeout: Duration, lookup: F) -> Lookup<T>
    where
        F: Future<Output = LookupResult<T>> + Send + 'static,
    {
        let what = self.what;
        let forget = Forget {
            lookups: Arc::downgrade(&self.lookups),
            key,
            id,
        };
        let task = tokio::spawn(async move {
            let _forget = forget;
            match tokio::time::timeout(timeout, lookup).await {
                Ok(result) => result,
                Err(_) => Err(Arc::new(Error::Lookup {
                    what,
                    problem: format!("timed out after {timeout:?}"),
                })),
            }
        });
        let abort = task.abort_handle();
        let answer = async move {
            task.await.unwrap_or_else(|e| {
                let problem = if e.is_panic() {
                    "failed: it panicked"
                } else {
                    "was cancelled"
                };
                Err(Arc::new(Error::Lookup {
                    what,
                    problem: problem.to_owned(),
                }))
            })
        }
        .boxed()
        .shared();
        Lookup {
            id,
            answer,
            waiters: 1,
            task: abort,
        }
    }
}

/// Held by the lookup's task: the entry goes when the task ends, however.
struct Forget<K: Hash + Eq, T> {
    lookups: Weak<Lookups<K, T>>,
    key: K,
    id: u64,
}

impl<K: Hash + Eq, T> Drop for Forget<K, T> {
    fn drop(&mut self) {
        if let Some(lookups) = self.lookups.upgrade() {
            let mut lookups = lock(&lookups);
            if lookups.get(&self.key).is_some_and(|l| l.id == self.id) {
                lookups.remove(&self.key);
            }
        }
    }
}

/// Held by each caller: the last one to leave without an answer stops the task.
struct Waiter<'a, K: Hash + Eq, T> {
    lookups: &'a Lookups<K, T>,
    key: K,
    id: u64,
    answered: bool,
}

impl<K: Hash + Eq, T> Drop for Waiter<'_, K, T> {
    fn drop(&mut self) {
        let abandoned = {
            let mut lookups = lock(self.lookups);
            let Some(lookup) = lookups.get_mut(&self.key).filter(|l| l.id == self.id) else {
                return;
            };
            lookup.waiters = lookup.waiters.saturating_sub(1);
            if lookup.waiters == 0 && !self.answered {
                lookups.remove(&self.key)
            } else {
                None
            }
        };
        // Outside the lock: the aborted task's guard takes it too.
        if let Some(lookup) = abandoned {
            lookup.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_panicking_lookup_is_an_error_and_leaves_no_entry() {
        let flights: InFlight<&str, u32> = InFlight::new("the test lookup");
        let err = flights
            .join("k", LONG, || async {
                #[allow(clippy::panic)]
                if true {
                    panic!("boom");
                }
                Ok(1)
            })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "the test lookup failed: it panicked");
        assert!(flights.is_empty());
        assert_eq!(
            flights.join("k", LONG, || async { Ok(2) }).await.unwrap(),
            2
        );
    }

    #[tokio::test]
    async fn a_lookup_past_its_own_timeout_is_an_error_and_leaves_no_entry() {
        let flights: InFlight<&str, u32> = InFlight::new("the test lookup");
        let err = flights
            .join("k", Duration::from_millis(20), || {
                futures::future::pending::<LookupResult<u32>>()
            })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "the test lookup timed out after 20ms");
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn the_last_waiter_to_give_up_stops_the_lookup_and_the_next_starts_afresh() {
        let flights: Arc<InFlight<&str, u32>> = Arc::new(InFlight::new("the test lookup"));
        let started = Arc::new(AtomicUsize::new(0));
        let stopped = Arc::new(AtomicUsize::new(0));
        struct CountDrop(Arc<AtomicUsize>);
        impl Drop for CountDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let hanging = || {
            let started = started.clone();
            let stopped = stopped.clone();
            move || async move {
                started.fetch_add(1, Ordering::SeqCst);
                let _dropped = CountDrop(stopped);
                futures::future::pending::<LookupResult<u32>>().await
            }
        };
        let first = tokio::time::timeout(
            Duration::from_millis(50),
            flights.join("k", LONG, hanging()),
        );
        let second = tokio::time::timeout(
            Duration::from_millis(100),
            flights.join("k", LONG, hanging()),
        );
        let (a, b) = tokio::join!(first, second);
        assert!(a.is_err() && b.is_err(), "both gave up");
        assert_eq!(started.load(Ordering::SeqCst), 1, "the lookup was shared");
        assert!(flights.is_empty(), "no entry is left behind");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(stopped.load(Ordering::SeqCst), 1, "the task was stopped");
        assert_eq!(
            flights.join("k", LONG, || async { Ok(7) }).await.unwrap(),
            7
        );
    }

    #[tokio::test]
    async fn one_waiter_giving_up_leaves_the_lookup_to_the_others() {
        let flights: Arc<InFlight<&str, u32>> = Arc::new(InFlight::new("the test lookup"));
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(5)
        };
        let impatient =
            tokio::time::timeout(Duration::from_millis(10), flights.join("k", LONG, slow));
        let patient = flights.join("k", LONG, slow);
        let (a, b) = tokio::join!(impatient, patient);
        assert!(a.is_err());
        assert_eq!(b.unwrap(), 5);
        assert!(flights.is_empty());
    }
}
