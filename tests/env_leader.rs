//! Leader election against the real kube-apiserver: one elector acquires, two
//! never lead at once, a graceful shutdown hands over at once, a crash hands
//! over after the lease duration, remote timestamps are not trusted (clock
//! skew either way), a foreign write makes the leader step down, and a leader
//! cut off from the apiserver steps down before a standby takes over.
//!
//! Then the operator itself, two processes against one Lease and the strict
//! fake Kosli: a leader cut off from the apiserver while Kosli holds its report
//! lands nothing after its successor's first report and starts nothing after
//! it steps down; and SIGTERM during a slow report releases the Lease only
//! after that report has ended.
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
use kosli_operator::core::crd::KosliEnvironment;
use kosli_operator::k8s::leader::{self, Leadership, LeaseConfig};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use support::fake_kosli::{FakeKosli, Recorded};
use support::operator::{Operator, eventually};
use support::pod_names;
use support::testenv::{
    RunningContainer, TestEnv, apply_crd, create_namespace, running_pod, unique,
};
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
    leadership: Leadership,
    rx: watch::Receiver<bool>,
    handle: JoinHandle<()>,
    token: CancellationToken,
}

impl Elector {
    fn start(client: &Client, lease: &str) -> Self {
        let identity = unique("elector");
        let token = CancellationToken::new();
        let (leadership, handle) =
            leader::spawn(client.clone(), config(lease, &identity), token.clone());
        Self {
            identity,
            rx: leadership.watch(),
            leadership,
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
    // The term runs out on the leader's own clock, whatever its elector does.
    tokio::time::sleep(RENEW_DEADLINE).await;
    assert!(
        !a.leadership.is_leading(),
        "the term outlived the renew deadline"
    );
    let limit = RETRY;
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

/// What makes the operator's election as fast as the electors' above.
const OPERATOR_LEASE: [&str; 6] = [
    "--lease-duration",
    "3s",
    "--lease-renew-deadline",
    "2s",
    "--lease-retry-period",
    "300ms",
];
const NGINX: &str = "4444444444444444444444444444444444444444444444444444444444444444";
const SECONDS: Duration = Duration::from_secs(15);

/// A KosliEnvironment selecting one fresh namespace, labelled for operators
/// started with `id`, known to the fake Kosli. Returns its name and namespace.
async fn environment(client: &Client, fake: &FakeKosli, id: &str) -> (String, String) {
    apply_crd(client).await;
    let ns = unique("fence");
    create_namespace(client, &ns, &[]).await;
    let name = format!("{id}-fence");
    let env: KosliEnvironment = serde_json::from_value(json!({
        "apiVersion": "kosli.com/v1alpha1", "kind": "KosliEnvironment",
        "metadata": {"name": name, "labels": {"test": id}},
        "spec": {"namespaces": [ns]},
    }))
    .unwrap();
    Api::<KosliEnvironment>::all(client.clone())
        .create(&PostParams::default(), &env)
        .await
        .unwrap();
    fake.add_environment(&name, "K8S");
    (name, ns)
}

/// A copy of the test kubeconfig whose server is `server`.
async fn kubeconfig_through(server: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(TestEnv::get().kubeconfig).unwrap();
    let direct = format!("https://{}", apiserver_address().await);
    let through = text.replace(&direct, server);
    assert_ne!(through, text, "the kubeconfig names {direct}");
    let path = dir.join("kubeconfig");
    std::fs::write(&path, through).unwrap();
    path
}

async fn leads(op: &Operator) -> Option<()> {
    (op.metric("kosli_operator_leader").await == Some(1.0)).then_some(())
}

/// A report PUT sent via `via` whose body names `pod`.
fn is_report_of(r: &Recorded, via: &str, pod: &str) -> bool {
    r.via.as_deref() == Some(via)
        && r.method == "PUT"
        && r.path.ends_with("/report/K8S")
        && String::from_utf8_lossy(&r.body).contains(&format!("\"{pod}\""))
}

fn is_report_via(r: &Recorded, via: &str) -> bool {
    r.via.as_deref() == Some(via) && r.method == "PUT" && r.path.ends_with("/report/K8S")
}

/// Starts a running pod named `pod` and waits until its report, sent via
/// `via`, has reached the fake Kosli (which may be holding it). Returns when.
async fn report_arrives(
    client: &Client,
    fake: &FakeKosli,
    ns: &str,
    via: &str,
    pod: &str,
) -> Instant {
    let web = RunningContainer::pulled("web", "docker.io/library/nginx:1.27", NGINX);
    running_pod(client, ns, pod, &[], std::slice::from_ref(&web)).await;
    eventually(SECONDS, "the report to reach Kosli", || async {
        fake.requests()
            .iter()
            .find(|r| is_report_of(r, via, pod))
            .map(|r| r.at)
    })
    .await
}

/// Samples an operator's `kosli_operator_leader` every 20 ms until stopped:
/// the first moment it read 0 (or could not be read).
fn step_down_sampler(http: String) -> (CancellationToken, JoinHandle<Option<Instant>>) {
    let stop = CancellationToken::new();
    let handle = tokio::spawn({
        let stop = stop.clone();
        async move {
            while !stop.is_cancelled() {
                let sampled = Instant::now();
                let value = support::operator::metric(&http, "kosli_operator_leader").await;
                if value != Some(1.0) {
                    return Some(sampled);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        }
    });
    (stop, handle)
}

#[tokio::test]
async fn a_deposed_leader_lands_no_report_after_its_successor_and_starts_none_after_stepping_down()
{
    let env = TestEnv::get();
    let client = env.client().await;
    let fake = FakeKosli::start().await;
    let id = unique("t");
    let (name, ns) = environment(&client, &fake, &id).await;
    let lease = format!("lease-{id}");
    let (server, cut) = partitionable_proxy(apiserver_address().await).await;
    let dir = tempfile::tempdir().unwrap();
    let a_kubeconfig = kubeconfig_through(&server, dir.path()).await;
    let a_host = fake.url_via("a");
    let mut a = Operator::start(
        &a_kubeconfig,
        &fake,
        &id,
        &lease,
        &OPERATOR_LEASE,
        &[("KOSLI_HOST", a_host.as_str())],
    );
    a.wait_ready().await;
    eventually(SECONDS, "a to lead", || leads(&a)).await;
    eventually(SECONDS, "a's first report", || async {
        fake.landed()
            .iter()
            .any(|l| l.via.as_deref() == Some("a"))
            .then_some(())
    })
    .await;
    let b_host = fake.url_via("b");
    let mut b = Operator::start(
        &env.kubeconfig,
        &fake,
        &id,
        &lease,
        &OPERATOR_LEASE,
        &[("KOSLI_HOST", b_host.as_str())],
    );
    b.wait_ready().await;
    assert_eq!(b.metric("kosli_operator_leader").await, Some(0.0));

    // Kosli holds a's next report far beyond its lease; while it does, a is
    // cut off from the apiserver and cannot learn that it lost the Lease.
    let hold = Duration::from_secs(12);
    fake.hold_reports_via("a", hold);
    let held_since = report_arrives(&client, &fake, &ns, "a", "web-1").await;
    let (stop_sampling, sampler) = step_down_sampler(a.http.clone());
    cut.cancel();
    let cut_at = Instant::now();

    eventually(Duration::from_secs(20), "b to report", || async {
        fake.landed()
            .iter()
            .any(|l| l.via.as_deref() == Some("b"))
            .then_some(())
    })
    .await;
    eprintln!(
        "b's first report landed {:?} after the cut",
        cut_at.elapsed()
    );
    // Long enough for the held report to have landed, had a kept it going.
    tokio::time::sleep_until((held_since + hold + Duration::from_secs(2)).into()).await;
    stop_sampling.cancel();
    let stepped_down = sampler
        .await
        .unwrap()
        .expect("a never stepped down after the cut");
    eprintln!("a stepped down {:?} after the cut", stepped_down - cut_at);

    let landed = fake.landed();
    let b_first = landed
        .iter()
        .filter(|l| l.via.as_deref() == Some("b") && l.env == name)
        .map(|l| l.landed)
        .min()
        .unwrap();
    if let Some(late) = landed
        .iter()
        .find(|l| l.via.as_deref() == Some("a") && l.landed >= b_first)
    {
        panic!(
            "a's report (it reached Kosli {:?} before the cut) landed {:?} after b's first: two writers",
            cut_at.saturating_duration_since(late.started),
            late.landed - b_first
        );
    }
    for request in fake.requests().iter().filter(|r| is_report_via(r, "a")) {
        assert!(
            request.at < stepped_down,
            "a started a report {:?} after it stepped down",
            request.at - stepped_down
        );
    }
    let b_reports = fake.reports(&name);
    assert_eq!(
        pod_names(b_reports.last().unwrap()),
        ["web-1"],
        "the successor reports the full set"
    );
    assert!(
        a.log().contains("abandoned a Kosli request in flight"),
        "{}",
        a.log()
    );
    assert!(b.terminate().await.success(), "{}", b.log());
    a.kill();
}

#[tokio::test]
async fn sigterm_during_a_slow_report_releases_the_lease_only_after_the_report_ends() {
    let env = TestEnv::get();
    let client = env.client().await;
    let fake = FakeKosli::start().await;
    let id = unique("t");
    let (_name, ns) = environment(&client, &fake, &id).await;
    let lease = format!("lease-{id}");
    let a_host = fake.url_via("a");
    let mut a = Operator::start(
        &env.kubeconfig,
        &fake,
        &id,
        &lease,
        &OPERATOR_LEASE,
        &[("KOSLI_HOST", a_host.as_str())],
    );
    a.wait_ready().await;
    eventually(SECONDS, "a to lead", || leads(&a)).await;
    eventually(SECONDS, "a's first report", || async {
        (!fake.landed().is_empty()).then_some(())
    })
    .await;

    fake.hold_reports_via("a", Duration::from_secs(3));
    let held_since = report_arrives(&client, &fake, &ns, "a", "web-1").await;
    // Samples the Lease's holder until the process has exited.
    let stop = CancellationToken::new();
    let sampler = tokio::spawn({
        let (api, lease, stop) = (leases(&client), lease.clone(), stop.clone());
        async move {
            let mut samples = Vec::new();
            while !stop.is_cancelled() {
                let at = Instant::now();
                let spec = api.get(&lease).await.unwrap().spec.unwrap();
                samples.push((at, spec.holder_identity.filter(|h| !h.is_empty())));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The release may come within the last sampling interval before
            // the exit: one look after it (the wall-clock check below still
            // pins the release after the report).
            let at = Instant::now();
            let spec = api.get(&lease).await.unwrap().spec.unwrap();
            samples.push((at, spec.holder_identity.filter(|h| !h.is_empty())));
            samples
        }
    });
    let terminated = Instant::now();
    assert!(a.terminate().await.success(), "{}", a.log());
    eprintln!("stopped {:?} after SIGTERM", terminated.elapsed());
    stop.cancel();
    let samples = sampler.await.unwrap();

    let landed = fake
        .landed()
        .into_iter()
        .find(|l| l.started == held_since)
        .unwrap_or_else(|| panic!("the report in flight at SIGTERM never landed:\n{}", a.log()));
    let released = samples
        .iter()
        .find(|(_, holder)| holder.is_none())
        .map(|(at, _)| *at)
        .expect("the Lease was not released");
    assert!(
        released > landed.landed,
        "the Lease was seen released {:?} before the report in flight landed",
        landed.landed - released
    );
    let spec = spec(&client, &lease).await;
    assert_eq!(spec.holder_identity, None, "released on the way out");
    let released_wall = std::time::SystemTime::from(spec.renew_time.unwrap().0);
    assert!(
        released_wall >= landed.landed_wall,
        "the release was written before the report in flight landed"
    );
}
