//! Leader election against the real kube-apiserver: one elector acquires, two
//! never lead at once, a graceful shutdown hands over at once, a crash hands
//! over after the lease duration, remote timestamps are not trusted (clock
//! skew either way), a foreign write makes the leader step down, and a leader
//! cut off from the apiserver steps down before a standby takes over.
//!
//! Short timings throughout: lease 3 s, renew deadline 2 s, retry 300 ms.

#![allow(clippy::unwrap_used)] // tests may panic on what they do not expect

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kosli_operator::k8s::leader::{self, LeaseConfig};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use support::testenv::{TestEnv, unique};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(300);
/// Slack for "not before the lease duration": the standby may have seen the
/// dead leader's last renewal up to one retry period before the crash.
const EARLIEST_TAKEOVER: Duration = Duration::from_millis(2400);

fn config(lease: &str, identity: &str) -> LeaseConfig {
    LeaseConfig {
        namespace: "default".into(),
        name: lease.into(),
        identity: identity.into(),
        lease_duration: LEASE,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY,
    }
}

fn leases(client: &Client) -> Api<Lease> {
    Api::namespaced(client.clone(), "default")
}

async fn spec(client: &Client, lease: &str) -> LeaseSpec {
    leases(client).get(lease).await.unwrap().spec.unwrap()
}

/// One elector under test.
struct Elector {
    identity: String,
    rx: watch::Receiver<bool>,
    handle: JoinHandle<()>,
    token: CancellationToken,
}

impl Elector {
    fn start(client: &Client, lease: &str) -> Self {
        let identity = unique("elector");
        let token = CancellationToken::new();
        let (rx, handle) = leader::spawn(client.clone(), config(lease, &identity), token.clone());
        Self {
            identity,
            rx,
            handle,
            token,
        }
    }

    fn leads(&self) -> bool {
        *self.rx.borrow()
    }

    /// How long until the receiver reads `want`, or None if not within `within`.
    async fn wait(&mut self, want: bool, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        let reached = tokio::time::timeout(within, self.rx.wait_for(|v| *v == want)).await;
        matches!(reached, Ok(Ok(_))).then(|| start.elapsed())
    }

    /// Graceful shutdown: cancel and wait for the task to finish.
    async fn stop(self) {
        self.token.cancel();
        self.handle.await.unwrap();
    }
}

/// Samples two receivers every 10 ms in the background and counts the moments
/// both read true. Reads a, b, a again: a true on both sides of b's read means
/// both were true at the moment b was read.
struct Monitor {
    stop: CancellationToken,
    overlaps: Arc<AtomicUsize>,
    handle: JoinHandle<()>,
}

impl Monitor {
    fn start(a: &Elector, b: &Elector) -> Self {
        let (a, b) = (a.rx.clone(), b.rx.clone());
        let stop = CancellationToken::new();
        let overlaps = Arc::new(AtomicUsize::new(0));
        let handle = tokio::spawn({
            let (stop, overlaps) = (stop.clone(), overlaps.clone());
            async move {
                while !stop.is_cancelled() {
                    if *a.borrow() && *b.borrow() && *a.borrow() {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Self {
            stop,
            overlaps,
            handle,
        }
    }

    async fn assert_never_both(self) {
        self.stop.cancel();
        self.handle.await.unwrap();
        let n = self.overlaps.load(Ordering::SeqCst);
        assert_eq!(n, 0, "two electors led at once in {n} samples");
    }
}

#[tokio::test]
async fn one_elector_acquires_the_lease() {
    let client = TestEnv::get().client().await;
    let lease = unique("leader-one");
    let mut a = Elector::start(&client, &lease);

    let took = a.wait(true, Duration::from_secs(5)).await;
    assert!(took.is_some(), "did not become leader within 5 s");
    eprintln!("acquired a new Lease in {took:?}");
    let spec = spec(&client, &lease).await;
    assert_eq!(spec.holder_identity.as_deref(), Some(a.identity.as_str()));
    assert_eq!(spec.lease_duration_seconds, Some(3));
    assert_eq!(spec.lease_transitions, Some(0));
    assert!(spec.acquire_time.is_some());
    let first_renew = spec.renew_time.unwrap();

    tokio::time::sleep(RETRY * 3).await;
    let later = self::spec(&client, &lease).await;
    assert!(a.leads(), "still leads while renewing");
    assert!(
        later.renew_time.unwrap() > first_renew,
        "renewTime advances"
    );
    assert_eq!(
        later.acquire_time, spec.acquire_time,
        "renewals keep acquireTime"
    );
    a.stop().await;
}

#[tokio::test]
async fn two_electors_never_lead_at_once() {
    let client = TestEnv::get().client().await;
    let lease = unique("leader-two");
    let a = Elector::start(&client, &lease);
    let b = Elector::start(&client, &lease);
    let monitor = Monitor::start(&a, &b);

    let start = Instant::now();
    let mut led = (0, 0);
    while start.elapsed() < Duration::from_secs(5) {
        let (la, lb) = (a.leads(), b.leads());
        assert!(!(la && lb), "both lead at {:?}", start.elapsed());
        if start.elapsed() > Duration::from_millis(1500) {
            assert!(la || lb, "nobody leads at {:?}", start.elapsed());
        }
        led.0 += usize::from(la);
        led.1 += usize::from(lb);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    monitor.assert_never_both().await;
    assert!(led.0 == 0 || led.1 == 0, "leadership flapped: {led:?}");
    let leader = if a.leads() { &a.identity } else { &b.identity };
    let holder = spec(&client, &lease).await.holder_identity;
    assert_eq!(holder.as_ref(), Some(leader));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn shutdown_releases_the_lease() {
    let client = TestEnv::get().client().await;
    let lease = unique("leader-release");
    let mut a = Elector::start(&client, &lease);
    assert!(a.wait(true, Duration::from_secs(5)).await.is_some());

    let rx = a.rx.clone();
    a.stop().await;
    assert!(!*rx.borrow(), "a stopped elector does not lead");
    let spec = spec(&client, &lease).await;
    assert_eq!(spec.holder_identity, None, "holder cleared");
    assert_eq!(spec.lease_duration_seconds, Some(1));
}

#[tokio::test]
async fn graceful_shutdown_hands_over_at_once() {
    let client = TestEnv::get().client().await;
    let lease = unique("leader-handover");
    let mut a = Elector::start(&client, &lease);
    assert!(a.wait(true, Duration::from_secs(5)).await.is_some());
    let mut b = Elector::start(&client, &lease);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!b.leads(), "the standby waits while the leader renews");
    let monitor = Monitor::start(&a, &b);

    let start = Instant::now();
    let a_identity = a.identity.clone();
    a.stop().await;
    let took = b.wait(true, Duration::from_secs(2)).await;
    eprintln!("graceful handover took {:?}", start.elapsed());
    assert!(
        took.is_some(),
        "standby did not lead within 2 s of a release"
    );
    monitor.assert_never_both().await;
    let spec = spec(&client, &lease).await;
    assert_eq!(spec.holder_identity.as_deref(), Some(b.identity.as_str()));
    assert_ne!(spec.holder_identity.as_deref(), Some(a_identity.as_str()));
    assert_eq!(spec.lease_transitions, Some(1));
    b.stop().await;
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_after_the_lease_duration() {
    let client = TestEnv::get().client().await;
    let lease = unique("leader-crash");
    let mut a = Elector::start(&client, &lease);
    assert!(a.wait(true, Duration::from_secs(5)).await.is_some());
    let mut b = Elector::start(&client, &lease);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let start = Instant::now();
    a.handle.abort(); // no release: as if the process died
    let _ = (&mut a.handle).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let holder = spec(&client, &lease).await.holder_identity;
    assert_eq!(
        holder.as_ref(),
        Some(&a.identity),
        "a crash releases nothing"
    );
    assert!(!b.leads(), "no takeover 1 s after the crash");

    assert!(
        b.wait(true, Duration::from_secs(5)).await.is_some(),
        "no takeover"
    );
    let took = start.elapsed();
    eprintln!("takeover after a crash took {took:?} (lease {LEASE:?})");
    assert!(
        took >= EARLIEST_TAKEOVER,
        "took over after {took:?}, before the lease expired"
    );
    assert!(
        took <= LEASE + Duration::from_secs(2),
        "took over only after {took:?}"
    );
    assert!(!a.leads(), "an aborted elector's receiver reads false");
    b.stop().await;
}

/// Creates a Lease held by `holder` with the given renewTime, as a process
/// with a skewed clock would write it.
async fn foreign_lease(client: &Client, lease: &str, holder: &str, renew: Timestamp) {
    let object = Lease {
        metadata: ObjectMeta {
            name: Some(lease.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(3),
            acquire_time: Some(MicroTime(renew)),
            renew_time: Some(MicroTime(renew)),
            lease_transitions: Some(4),
            ..LeaseSpec::default()
        }),
    };
    leases(client)
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_renew_time_in_the_future_does_not_keep_a_dead_holder_alive() {
    let client = TestEnv::get().client().await;
    let lease = unique("leader-future");
    let hour_ahead = Timestamp::now() + SignedDuration::from_hours(1);
    foreign_lease(&client, &lease, "skewed-clock", hour_ahead).await;

    let start = Instant::now();
    let mut a = Elector::start(&client, &lease);
    assert!(
        a.wait(true, EARLIEST_TAKEOVER).await.is_none(),
        "took over before the lease duration passed locally"
    );
    assert!(
        a.wait(true, Duration::from_secs(3)).await.is_some(),
        "trusted a renewTime an hour ahead: never took over"
    );
    eprintln!("took over a future-dated Lease after {:?}", start.elapsed());
    let spec = spec(&client, &lease).await;
    assert_eq!(spec.holder_identity.as_deref(), Some(a.identity.as_str()));
    assert_eq!(spec.lease_transitions, Some(5));
    a.stop().await;
}

#[tokio::test]
async fn a_renew_time_in_the_past_does_not_expire_a_live_holder() {
    let client = TestEnv::get().client().await;
    let lease = unique("leader-past");
    let hour_ago = || Timestamp::now() - SignedDuration::from_hours(1);
    foreign_lease(&client, &lease, "slow-clock", hour_ago()).await;

    // The foreign holder keeps renewing, with a clock an hour behind.
    let renewing = CancellationToken::new();
    let renewer = tokio::spawn({
        let (api, lease, renewing) = (leases(&client), lease.clone(), renewing.clone());
        async move {
            while !renewing.is_cancelled() {
                let mut current = api.get(&lease).await.unwrap();
                if let Some(spec) = current.spec.as_mut() {
                    spec.renew_time = Some(MicroTime(hour_ago()));
                }
                let _ = api.replace(&lease, &PostParams::default(), &current).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });

    let mut a = Elector::start(&client, &lease);
    assert!(
        a.wait(true, Duration::from_secs(5)).await.is_none(),
        "took over a Lease that is being renewed, because its renewTime is old"
    );
    renewing.cancel();
    renewer.await.unwrap();
    let stopped = Instant::now();
    assert!(a.wait(true, Duration::from_secs(5)).await.is_some());
    eprintln!(
        "took over once renewals stopped after {:?}",
        stopped.elapsed()
    );
    assert!(stopped.elapsed() >= EARLIEST_TAKEOVER);
    a.stop().await;
}

/// Rewrites the holder behind the elector's back, retrying over its renewals.
async fn intrude(client: &Client, lease: &str) {
    let api = leases(client);
    for _ in 0..20 {
        let mut current = api.get(lease).await.unwrap();
        current.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
        if api
            .replace(lease, &PostParams::default(), &current)
            .await
            .is_ok()
        {
            return;
        }
    }
    panic!("could not write the intruder");
}

#[tokio::test]
async fn a_foreign_write_makes_the_leader_step_down() {
    let client = TestEnv::get().client().await;
    let lease = unique("leader-intruder");
    let mut a = Elector::start(&client, &lease);
    assert!(a.wait(true, Duration::from_secs(5)).await.is_some());

    intrude(&client, &lease).await;
    let start = Instant::now();
    let noticed = a.wait(false, Duration::from_millis(1500)).await;
    eprintln!("noticed the intruder after {noticed:?}");
    assert!(noticed.is_some(), "kept leading over an intruder");
    assert!(
        a.wait(true, EARLIEST_TAKEOVER.saturating_sub(start.elapsed()))
            .await
            .is_none(),
        "took the Lease back from the intruder before it expired"
    );
    assert!(
        a.wait(true, Duration::from_secs(4)).await.is_some(),
        "never took the abandoned Lease back"
    );
    eprintln!("re-acquired {:?} after the intrusion", start.elapsed());
    let spec = spec(&client, &lease).await;
    assert_eq!(spec.holder_identity.as_deref(), Some(a.identity.as_str()));
    a.stop().await;
}

/// A TCP forwarder to the apiserver that can be cut: after `cut`, it holds
/// every connection open and forwards nothing, as a network partition would.
async fn partitionable_proxy(upstream: String) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = CancellationToken::new();
    let token = cut.clone();
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            let (upstream, cut) = (upstream.clone(), cut.clone());
            tokio::spawn(async move {
                if !cut.is_cancelled() {
                    let mut outbound = TcpStream::connect(&upstream).await.unwrap();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                        () = cut.cancelled() => {}
                    }
                }
                std::future::pending::<()>().await; // hold the socket, say nothing
                drop(inbound);
            });
        }
    });
    (format!("https://{addr}"), token)
}

async fn client_through(server: &str) -> Client {
    let mut kubeconfig = Kubeconfig::read_from(TestEnv::get().kubeconfig).unwrap();
    for named in &mut kubeconfig.clusters {
        named.cluster.as_mut().unwrap().server = Some(server.into());
    }
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

async fn apiserver_address() -> String {
    let kubeconfig = Kubeconfig::read_from(TestEnv::get().kubeconfig).unwrap();
    let server = kubeconfig.clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .server
        .clone();
    server
        .unwrap()
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned()
}

#[tokio::test]
async fn a_partitioned_leader_steps_down_before_a_standby_takes_over() {
    let client = TestEnv::get().client().await;
    let (server, cut) = partitionable_proxy(apiserver_address().await).await;
    let partitioned = client_through(&server).await;
    let lease = unique("leader-partition");
    let mut a = Elector::start(&partitioned, &lease);
    assert!(a.wait(true, Duration::from_secs(5)).await.is_some());
    let mut b = Elector::start(&client, &lease);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let monitor = Monitor::start(&a, &b);

    let start = Instant::now();
    cut.cancel();
    let limit = RENEW_DEADLINE + RETRY;
    let stepped_down = a.wait(false, limit).await;
    assert!(
        stepped_down.is_some(),
        "partitioned leader still led after {limit:?}"
    );
    let stepped_down = start.elapsed();
    assert!(
        b.wait(true, Duration::from_secs(5)).await.is_some(),
        "no takeover"
    );
    let took_over = start.elapsed();
    eprintln!(
        "partition: leader stepped down after {stepped_down:?}, standby took over after {took_over:?}"
    );
    assert!(stepped_down < took_over);
    assert!(
        took_over >= EARLIEST_TAKEOVER,
        "took over after {took_over:?}"
    );
    monitor.assert_never_both().await;
    b.stop().await;
    a.token.cancel();
}
