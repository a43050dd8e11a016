//! End-to-end benchmarks against the real test environment (kube-apiserver 1.20
//! with etcd, an OCI registry) and the strict fake Kosli, which records when
//! each request arrived:
//!
//! 1. reporter latency: a pod's status patch -> the first Kosli PUT carrying
//!    its new digest, under a scripted churn (rollouts of 5% of the pods at once
//!    and single-pod changes), with the operator's default debounce;
//! 2. API-server load over a time-compressed scripted hour, read from the API
//!    server's own /metrics: the operator (one watch) next to the CronJob way
//!    (12 one-shot `snapshot` runs, each a full paginated LIST), and the
//!    operator's peak RSS and CPU time;
//! 3. admission: decision latency and throughput through the real TLS endpoint,
//!    warm cache and cold (registry + a fake Kosli answering after 100 ms).
//!
//! Run it through the test environment (Markdown on stdout, progress on stderr):
//!
//! ```sh
//! hack/testenv/with-testenv.sh cargo bench --locked --bench e2e -- --pods 1000 --only all
//! ```

#![allow(clippy::unwrap_used)] // a benchmark may panic on what it does not expect

#[path = "../tests/support/mod.rs"]
mod support;
#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    ApiMetrics, ApiServer, Key, children_cpu_seconds, cpu_seconds, fmt_bytes, fmt_duration, met,
    peak_rss_kb, percentile, snapshot_once,
};
use futures::StreamExt;
use kosli_operator::core::crd::KosliEnvironment;
use kube::Client;
use kube::api::{Api, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};
use support::fake_kosli::{FakeKosli, ORG, Scripted};
use support::operator::Operator;
use support::testenv::{
    RunningContainer, TestEnv, apply_crd, create_namespace, create_pod, play_kubelet, unique,
};

/// Pods are spread over this many namespaces...
const NAMESPACES: usize = 20;
/// ...and belong to this many "deployments" (deployment d lives in namespace d % 20).
const DEPLOYMENTS: usize = 100;
/// Rollouts in the scripted hour; each rolls out 5 deployments, 5% of the pods.
const WAVES: usize = 10;
const WAVE_DEPLOYMENTS: usize = 5;
/// Single-pod changes after each rollout.
const SINGLES_PER_WAVE: usize = 2;
/// How long a lone change waits after the last report: the default debounce
/// (1 s) and a margin.
const LONE_CHANGE_GAP: Duration = Duration::from_millis(1500);
/// Requests in flight to the API server from the bench.
const CONCURRENCY: usize = 16;
/// The CronJob way: one run every 5 minutes for an hour.
const SNAPSHOT_RUNS: usize = 12;
/// The whole run is aborted after this.
const OVERALL_LIMIT: Duration = Duration::from_secs(25 * 60);
/// Kosli's answer time injected for cold admission lookups.
const KOSLI_DELAY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    Reporter,
    Admission,
    All,
}

struct Args {
    pods: usize,
    only: Only,
}

fn usage(message: &str) -> ! {
    eprintln!("e2e: {message}\nusage: e2e [--pods N (>= 100)] [--only reporter|admission|all]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        pods: 1000,
        only: Only::All,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            "--pods" => {
                args.pods = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n >= DEPLOYMENTS)
                    .unwrap_or_else(|| usage("--pods takes a number >= 100"));
            }
            "--only" => {
                args.only = match it.next().as_deref() {
                    Some("reporter") => Only::Reporter,
                    Some("admission") => Only::Admission,
                    Some("all") => Only::All,
                    _ => usage("--only takes reporter, admission or all"),
                }
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    args
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    common::start("e2e");
    let args = parse_args();
    match tokio::time::timeout(OVERALL_LIMIT, run(&args)).await {
        Ok(markdown) => {
            print!("{markdown}");
            progress!("done");
        }
        Err(_) => {
            progress!(
                "hard time limit of {} s reached: aborted",
                OVERALL_LIMIT.as_secs()
            );
            std::process::exit(1);
        }
    }
}

async fn run(args: &Args) -> String {
    let env = TestEnv::get();
    let client = env.client().await;
    apply_crd(&client).await;
    let id = unique("bench");
    let mut out = String::new();
    writeln!(
        out,
        "## End to end (`benches/e2e.rs`, {} pods)\n\n\
         Real kube-apiserver 1.20 + etcd and an OCI registry on loopback, the strict fake \
         Kosli in the bench process, {}. Everything (API \
         server, etcd, operator, fake Kosli, load generator) shares the machine's {} cores.\n",
        args.pods,
        support::binary_label(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
    .unwrap();
    if args.only != Only::Admission {
        out.push_str(&reporter(&env, &client, &id, args.pods).await);
    }
    if args.only != Only::Reporter {
        out.push_str(&admission(&env, &client, &id).await);
    }
    writeln!(out, "_This run took {:.0} s._\n", common::elapsed()).unwrap();
    out
}

// ------------------------------------------------------------------ the fleet of pods

fn digest(version: usize, deployment: usize) -> String {
    format!("{:032x}{:032x}", version + 1, deployment + 1)
}

struct Fleet {
    id: String,
    n: usize,
}

impl Fleet {
    fn namespace(&self, i: usize) -> String {
        format!("{}-ns{:02}", self.id, i % NAMESPACES)
    }

    fn name(&self, i: usize) -> String {
        format!("app{:02}-{i}", i % DEPLOYMENTS)
    }

    fn container(&self, i: usize, version: usize) -> RunningContainer {
        let d = i % DEPLOYMENTS;
        RunningContainer::pulled(
            "app",
            &format!("registry.example.com/shop/app{d:02}:1.0"),
            &digest(version, d),
        )
    }

    /// The pods of wave `w`: every pod of 5 deployments (5% of the pods).
    fn wave(&self, w: usize) -> Vec<usize> {
        let deployments = w * WAVE_DEPLOYMENTS..(w + 1) * WAVE_DEPLOYMENTS;
        (0..self.n)
            .filter(|i| deployments.contains(&(i % DEPLOYMENTS)))
            .collect()
    }

    /// The `k`-th single-pod change: one pod of a deployment no wave touches.
    fn single(&self, k: usize) -> usize {
        let d = 50 + k % 50;
        d + DEPLOYMENTS * ((k * 7) % (self.n / DEPLOYMENTS))
    }

    async fn create(&self, client: &Client) -> Duration {
        let started = Instant::now();
        for k in 0..NAMESPACES {
            create_namespace(client, &format!("{}-ns{k:02}", self.id), &[]).await;
        }
        let done = AtomicUsize::new(0);
        futures::stream::iter(0..self.n)
            .map(|i| {
                let client = client.clone();
                let (ns, name, c) = (self.namespace(i), self.name(i), self.container(i, 0));
                let app = format!("app{:02}", i % DEPLOYMENTS);
                async move {
                    create_pod(
                        &client,
                        &ns,
                        &name,
                        &[("app", &app)],
                        std::slice::from_ref(&c),
                    )
                    .await;
                    play_kubelet(&client, &ns, &name, "Running", std::slice::from_ref(&c)).await;
                }
            })
            .buffer_unordered(CONCURRENCY)
            .for_each(|()| {
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(1000) {
                    progress!("{n} pods created and Running");
                }
                async {}
            })
            .await;
        started.elapsed()
    }

    /// Plays the kubelet after a rollout: patches the status of `pods` to the
    /// image digest of `version`, 16 at a time.
    async fn patch(
        &self,
        client: &Client,
        pods: &[usize],
        version: usize,
        single: bool,
    ) -> Vec<Change> {
        futures::stream::iter(pods.iter().copied())
            .map(|i| {
                let client = client.clone();
                let (ns, name, c) = (self.namespace(i), self.name(i), self.container(i, version));
                let hex = digest(version, i % DEPLOYMENTS);
                async move {
                    play_kubelet(&client, &ns, &name, "Running", std::slice::from_ref(&c)).await;
                    Change {
                        key: format!("{ns}/{name}"),
                        digest: hex,
                        patched: Instant::now(),
                        single,
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    }
}

// ------------------------------------------------------------------ Kosli PUTs

#[derive(Deserialize)]
struct Report {
    artifacts: Vec<Artifact>,
}

#[derive(Deserialize)]
struct Artifact {
    #[serde(rename = "podName")]
    pod_name: String,
    namespace: String,
    digests: BTreeMap<String, String>,
}

/// A pod whose status was patched to a new digest, waiting for a PUT with it.
struct Change {
    key: String,
    digest: String,
    patched: Instant,
    single: bool,
}

/// Follows the PUTs of one environment as they reach the fake Kosli.
struct Tracker {
    env: String,
    pending: Vec<Change>,
    latencies: Vec<Duration>,
    single_latencies: Vec<Duration>,
    unreported: usize,
    puts: usize,
    last_artifacts: usize,
}

impl Tracker {
    fn new(env: &str) -> Self {
        Self {
            env: env.to_owned(),
            pending: Vec::new(),
            latencies: Vec::new(),
            single_latencies: Vec::new(),
            unreported: 0,
            puts: 0,
            last_artifacts: 0,
        }
    }

    /// Takes the requests the fake Kosli recorded so far (the fake keeps none,
    /// so 10k-pod bodies do not pile up) and settles the changes they carry.
    fn poll(&mut self, fake: &FakeKosli) {
        let new = std::mem::take(&mut fake.state().requests);
        fake.state().reports.clear();
        let path = format!("/api/v2/environments/{ORG}/{}/report/K8S", self.env);
        for request in new
            .into_iter()
            .filter(|r| r.method == "PUT" && r.path == path)
        {
            let report: Report = serde_json::from_slice(&request.body).unwrap();
            self.puts += 1;
            self.last_artifacts = report.artifacts.len();
            if self.pending.is_empty() {
                continue;
            }
            let digests: HashMap<String, String> = report
                .artifacts
                .into_iter()
                .filter_map(|a| {
                    let d = a.digests.into_values().next()?;
                    Some((format!("{}/{}", a.namespace, a.pod_name), d))
                })
                .collect();
            let (latencies, singles) = (&mut self.latencies, &mut self.single_latencies);
            self.pending.retain(|c| {
                if digests.get(&c.key) != Some(&c.digest) {
                    return true;
                }
                let latency = request.at.saturating_duration_since(c.patched);
                latencies.push(latency);
                if c.single {
                    singles.push(latency);
                }
                false
            });
        }
    }

    /// Polls until every pending change was reported, or `limit` passed (the
    /// rest are counted as unreported).
    async fn settle(&mut self, fake: &FakeKosli, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            self.poll(fake);
            if self.pending.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                progress!(
                    "{} changes not reported within {limit:?}",
                    self.pending.len()
                );
                self.unreported += self.pending.len();
                self.pending.clear();
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until a PUT with `n` artifacts arrives after `puts_before` PUTs.
    async fn full_report(
        &mut self,
        fake: &FakeKosli,
        n: usize,
        puts_before: usize,
        limit: Duration,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            self.poll(fake);
            if self.puts > puts_before && self.last_artifacts == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no report with {n} pods within {limit:?} (last had {})",
                self.last_artifacts
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ------------------------------------------------------------------ 1 + 2: the reporter

/// The resources whose requests are shown.
const RESOURCES: [&str; 5] = [
    "pods",
    "namespaces",
    "koslienvironments",
    "leases",
    "events",
];

async fn reporter(env: &TestEnv, client: &Client, id: &str, n: usize) -> String {
    let fleet = Fleet {
        id: id.to_owned(),
        n,
    };
    let api = ApiServer::new(env);
    let fake = FakeKosli::start().await;
    progress!(
        "creating {n} Running pods in {NAMESPACES} namespaces ({} requests, {CONCURRENCY} at a time)",
        2 * n
    );
    let creation = fleet.create(client).await;
    progress!("created in {:.1} s", creation.as_secs_f64());

    let name = format!("{id}-env");
    let regex = format!("^{id}-ns");
    let object: KosliEnvironment = serde_json::from_value(json!({
        "apiVersion": "kosli.com/v1alpha1", "kind": "KosliEnvironment",
        "metadata": {"name": name, "labels": {"test": id}},
        "spec": {"namespacesRegex": [regex]},
    }))
    .unwrap();
    Api::<KosliEnvironment>::all(client.clone())
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    fake.add_environment(&name, "K8S");
    let mut tracker = Tracker::new(&name);

    // Phase A: the operator.
    let m0 = api.metrics().await;
    let phase_a = Instant::now();
    let mut op = Operator::start_default_pacing(
        &env.kubeconfig,
        &fake,
        id,
        &format!("lease-{id}"),
        &[],
        &[],
    );
    op.wait_ready().await;
    let ready = phase_a.elapsed();
    tracker
        .full_report(&fake, n, 0, Duration::from_secs(180))
        .await;
    let first_report = phase_a.elapsed();
    progress!(
        "operator ready after {:.1} s, first full report after {:.1} s",
        ready.as_secs_f64(),
        first_report.as_secs_f64()
    );
    let m_sync = api.metrics().await;

    let churn = Instant::now();
    let mut single = 0;
    let mut wave_durations = Vec::new();
    for w in 0..WAVES {
        let pods = fleet.wave(w);
        let started = Instant::now();
        let changes = fleet.patch(client, &pods, 1 + w, false).await;
        wave_durations.push(started.elapsed());
        tracker.pending.extend(changes);
        tracker.settle(&fake, Duration::from_secs(60)).await;
        for _ in 0..SINGLES_PER_WAVE {
            // A lone change comes after a quiet period: more than the
            // debounce after the last report and the last change.
            tokio::time::sleep(LONE_CHANGE_GAP).await;
            let changes = fleet
                .patch(client, &[fleet.single(single)], 100 + single, true)
                .await;
            single += 1;
            tracker.pending.extend(changes);
            tracker.settle(&fake, Duration::from_secs(30)).await;
        }
        progress!(
            "wave {}/{WAVES}: {} pods patched in {:.1} s; {} changes reported so far",
            w + 1,
            pods.len(),
            wave_durations[w].as_secs_f64(),
            tracker.latencies.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let churn_time = churn.elapsed();
    let op_pid = op.pid();
    let rss_kb = peak_rss_kb(op_pid).unwrap_or(0);
    let cpu = cpu_seconds(op_pid);
    let puts_a = tracker.puts;
    let phase_a_time = phase_a.elapsed();
    op.terminate().await;
    // Watches are counted by the API server when they end.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m1 = api.metrics().await;
    progress!(
        "phase A done in {:.1} s: peak RSS {} kB, CPU {cpu:.1} s",
        phase_a_time.as_secs_f64(),
        rss_kb
    );

    // Phase B: the CronJob way, while the operator is not running.
    let cpu_children = children_cpu_seconds();
    let phase_b = Instant::now();
    let mut run_times = Vec::new();
    let mut run_peak = 0;
    for r in 0..SNAPSHOT_RUNS {
        let puts_before = tracker.puts;
        let (took, peak) = snapshot_once(env, &fake, &name, &regex, Duration::from_secs(120)).await;
        tracker
            .full_report(&fake, n, puts_before, Duration::from_secs(30))
            .await;
        run_times.push(took);
        run_peak = run_peak.max(peak);
        progress!(
            "snapshot run {}/{SNAPSHOT_RUNS}: {:.1} s, peak RSS {peak} kB",
            r + 1,
            took.as_secs_f64()
        );
        if r < WAVES {
            fleet.patch(client, &fleet.wave(r), 20 + r, false).await;
            for k in 0..SINGLES_PER_WAVE {
                let s = r * SINGLES_PER_WAVE + k;
                fleet.patch(client, &[fleet.single(s)], 200 + s, true).await;
            }
        }
    }
    let phase_b_time = phase_b.elapsed();
    let cpu_b = children_cpu_seconds() - cpu_children;
    let m2 = api.metrics().await;

    // ---- section 1
    let mut lat = tracker.latencies.clone();
    lat.sort();
    let mut singles = tracker.single_latencies.clone();
    singles.sort();
    let (p50, p99, max) = (
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or_default(),
    );
    let wave_size = fleet.wave(0).len();
    let mut out = String::new();
    writeln!(
        out,
        "### Reporter: pod status patch → Kosli PUT carrying its new digest\n"
    )
    .unwrap();
    writeln!(
        out,
        "{n} pods Running in {NAMESPACES} namespaces, one KosliEnvironment selecting them all, the operator \
         with its defaults (`--debounce 1s`, `--max-debounce 2s`). Scripted churn: {WAVES} rollouts, each \
         patching the status of {wave_size} pods (5%) to a new imageID digest as a kubelet would \
         ({CONCURRENCY} patches in flight; a rollout took {:.1}–{:.1} s to apply), each followed by \
         {SINGLES_PER_WAVE} single-pod changes. Latency is from the status patch returning to the arrival \
         of the first PUT whose body has the new digest for that pod (the fake Kosli's arrival time).\n",
        wave_durations.iter().min().unwrap().as_secs_f64(),
        wave_durations.iter().max().unwrap().as_secs_f64(),
    )
    .unwrap();
    writeln!(
        out,
        "| figure | measured | budget (docs/performance.md) | CronJob way |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|").unwrap();
    writeln!(
        out,
        "| every change (rollouts and lone changes): p50 | {} | — | ~150 s on average |",
        fmt_duration(p50),
    )
    .unwrap();
    writeln!(
        out,
        "| every change: p99 / max | {} / {} | — | up to 300 s |",
        fmt_duration(p99),
        fmt_duration(max)
    )
    .unwrap();
    let (lone_p50, lone_max) = (
        percentile(&singles, 50.0),
        singles.last().copied().unwrap_or_default(),
    );
    writeln!(
        out,
        "| lone changes: p50 | {} | ≤ 0.5 s: {} | as above |",
        fmt_duration(lone_p50),
        met(lone_p50 <= Duration::from_millis(500))
    )
    .unwrap();
    writeln!(
        out,
        "| lone changes: p99 (the slowest of {}) | {} | ≤ 1 s: {} | as above |",
        singles.len(),
        fmt_duration(lone_max),
        met(lone_max <= Duration::from_secs(1))
    )
    .unwrap();
    writeln!(
        out,
        "| changes measured | {} ({} in rollouts, {} single); {} not reported within 60 s | — | — |\n",
        lat.len(),
        lat.len() - singles.len(),
        singles.len(),
        tracker.unreported
    )
    .unwrap();
    writeln!(
        out,
        "A change after a quiet period (no report attempt for `--debounce`) is reported at once; \
         the changes of a rollout that follow within the debounce wait until 1 s passes without a change \
         (at most `--max-debounce` after the first), so a rollout is a few reports, not one per pod. \
         The lone-change budget is the one of docs/performance.md (at 10k and at 150k pods). The CronJob figures are by construction, not measured: a report every 5 \
         minutes means a change waits up to 300 s, 150 s on average. Setup: creating the {n} pods and playing the kubelet for them \
         took {:.1} s ({} API requests, {CONCURRENCY} in flight); the operator was ready {:.1} s after \
         start and sent the first full report after {:.1} s; {puts_a} PUTs in phase A.\n",
        creation.as_secs_f64(),
        2 * n,
        ready.as_secs_f64(),
        first_report.as_secs_f64()
    )
    .unwrap();

    // ---- section 2
    let sync = m_sync.since(&m0);
    let steady = m1.since(&m_sync);
    let cron = m2.since(&m1);
    writeln!(
        out,
        "### API-server load over a scripted hour (time-compressed)\n"
    )
    .unwrap();
    writeln!(
        out,
        "Deltas of the API server's own `apiserver_request_total`, `apiserver_response_sizes_sum` and \
         `apiserver_watch_events_*` around each phase. Phase A ({:.0} s): the operator starts, syncs, \
         follows the churn above, and stops. Phase B ({:.0} s): with the operator stopped, `kosli-operator \
         snapshot ENV --namespaces-regex` runs {SNAPSHOT_RUNS} times (one simulated hour at one run per 5 \
         minutes), with the same churn (new digests) applied between runs.\n",
        phase_a_time.as_secs_f64(),
        phase_b_time.as_secs_f64()
    )
    .unwrap();
    writeln!(out, "| requests (resource verb) | operator: start-up sync | operator: churn, to stop | CronJob way: {SNAPSHOT_RUNS} runs |").unwrap();
    writeln!(out, "|---|---|---|---|").unwrap();
    let keys: BTreeSet<Key> = [&sync, &steady, &cron]
        .iter()
        .flat_map(|m| m.requests.keys().cloned())
        .filter(|(resource, _, _)| RESOURCES.contains(&resource.as_str()))
        .collect();
    let count = |m: &ApiMetrics, k: &Key| m.requests.get(k).copied().unwrap_or(0.0);
    for k in &keys {
        let (resource, sub, verb) = k;
        let label = if sub.is_empty() {
            resource.clone()
        } else {
            format!("{resource}/{sub}")
        };
        let note = if resource == "pods" && sub == "status" && verb == "PATCH" {
            " (the bench playing the kubelet)"
        } else {
            ""
        };
        writeln!(
            out,
            "| {label} {verb}{note} | {} | {} | {} |",
            count(&sync, k),
            count(&steady, k),
            count(&cron, k)
        )
        .unwrap();
    }
    writeln!(out, "| **response bytes** | | | |").unwrap();
    let bytes = |m: &ApiMetrics, resource: &str, verb: &str| {
        m.response_bytes
            .iter()
            .filter(|((r, s, v), _)| r == resource && s.is_empty() && v == verb)
            .fold(0.0, |sum, (_, b)| sum + b)
    };
    for resource in ["pods", "namespaces"] {
        for verb in ["LIST", "GET"] {
            let row = [
                bytes(&sync, resource, verb),
                bytes(&steady, resource, verb),
                bytes(&cron, resource, verb),
            ];
            if row.iter().any(|b| *b > 0.0) {
                writeln!(
                    out,
                    "| {resource} {verb} responses | {} | {} | {} |",
                    fmt_bytes(row[0]),
                    fmt_bytes(row[1]),
                    fmt_bytes(row[2])
                )
                .unwrap();
            }
        }
    }
    for kind in ["Pod", "Namespace"] {
        let ev = |m: &ApiMetrics| {
            format!(
                "{} events, {}",
                m.watch_events.get(kind).copied().unwrap_or(0.0),
                fmt_bytes(m.watch_bytes.get(kind).copied().unwrap_or(0.0))
            )
        };
        writeln!(
            out,
            "| {kind} watch events sent (all watchers) | {} | {} | {} |",
            ev(&sync),
            ev(&steady),
            ev(&cron)
        )
        .unwrap();
    }
    let list_key = ("pods".to_owned(), String::new(), "LIST".to_owned());
    let steady_lists = count(&steady, &list_key);
    writeln!(
        out,
        "\nBudget \"no periodic LIST in steady state; one watch serves every environment\": pods LIST \
         during the churn = {steady_lists}: {}. WATCH requests are counted by the API server when a watch \
         ends, so they show in the column where the operator stopped. The API server also watches pods \
         itself (one registered Pod watcher over its loopback connection with no operator running), so \
         every phase's Pod watch events include one copy of each change for it; the operator's share is \
         the difference. Not compressed into the phase: \
         the watch is re-opened about every 290 s (no LIST; ~12 WATCH per resource per hour) and a \
         leader renews its Lease every 2 s; phase A ran {:.0} s. The CronJob runs took {:.1}–{:.1} s each.\n",
        met(steady_lists == 0.0),
        phase_a_time.as_secs_f64(),
        run_times.iter().min().unwrap().as_secs_f64(),
        run_times.iter().max().unwrap().as_secs_f64(),
    )
    .unwrap();
    // docs/performance.md's units: 20 MB + 1 KB per pod is "about 120 MB at 100k pods".
    let budget_mb = 20.0 + n as f64 / 1000.0;
    let rss_mb = rss_kb as f64 * 1024.0 / 1e6;
    writeln!(
        out,
        "| resources | operator, phase A ({:.0} s) | budget | CronJob way, {SNAPSHOT_RUNS} runs |",
        phase_a_time.as_secs_f64()
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|").unwrap();
    writeln!(
        out,
        "| peak RSS (VmHWM) | {rss_mb:.1} MB | ≤ 20 MB + 1 KB/pod = {budget_mb:.1} MB: {} | {:.1} MB, the largest run (VmHWM sampled every 10 ms) |",
        met(rss_mb <= budget_mb),
        run_peak as f64 * 1024.0 / 1e6
    )
    .unwrap();
    writeln!(
        out,
        "| CPU time (user + system) | {cpu:.1} s: start, sync and {:.0} s of churn | — | {cpu_b:.1} s in total |\n",
        churn_time.as_secs_f64()
    )
    .unwrap();
    out
}

// ------------------------------------------------------------------ 3: admission

/// An AdmissionReview for a Pod CREATE, as the API server sends it (defaults filled in).
fn review_template(namespace: &str) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "__UID__",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "web-7d4b9c8f6-__UID__", "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "0b4c8b1e-3f7a-4c55-9d0e-1c2b3a4d5e6f",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": "web-7d4b9c8f6-__UID__", "generateName": "web-7d4b9c8f6-", "namespace": namespace,
                    "labels": {"app": "web", "pod-template-hash": "7d4b9c8f6"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f6",
                        "uid": "5e9f8a7b-1c2d-4e3f-8a9b-0c1d2e3f4a5b", "controller": true, "blockOwnerDeletion": true}]
                },
                "spec": {
                    "containers": [{
                        "name": "web", "image": "__IMAGE__",
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "env": [{"name": "LOG_LEVEL", "value": "info"}],
                        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
                            "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3},
                        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                        "imagePullPolicy": "IfNotPresent"
                    }],
                    "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                    "securityContext": {}, "schedulerName": "default-scheduler", "enableServiceLinks": true,
                    "tolerations": [
                        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
                    ],
                    "priority": 0, "preemptionPolicy": "PreemptLowerPriority"
                },
                "status": {"phase": "Pending", "qosClass": "Burstable"}
            },
            "oldObject": null, "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
    .to_string()
}

struct Load {
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// Transport errors or answers other than `allowed: true`.
    bad: usize,
    first_bad: Option<String>,
}

/// Sends up to `count` reviews (body `i` from `body(i)`), `concurrency` at a
/// time over keep-alive connections, stopping at `limit`.
async fn load(
    http: &reqwest::Client,
    url: &str,
    count: usize,
    concurrency: usize,
    limit: Duration,
    body: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> Load {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, url, next, body) =
                (http.clone(), url.to_owned(), next.clone(), body.clone());
            tokio::spawn(async move {
                let (mut latencies, mut bad, mut first_bad) = (Vec::new(), 0, None);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || Instant::now() >= deadline {
                        break;
                    }
                    let body = body(i);
                    let sent = Instant::now();
                    let answer = match http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                    {
                        Ok(r) => r.bytes().await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    latencies.push(sent.elapsed());
                    let allowed = answer.as_ref().ok().and_then(|b| {
                        serde_json::from_slice::<Value>(b).ok()?["response"]["allowed"].as_bool()
                    });
                    if allowed != Some(true) {
                        bad += 1;
                        first_bad.get_or_insert_with(|| match answer {
                            Ok(b) => String::from_utf8_lossy(&b).chars().take(400).collect(),
                            Err(e) => e,
                        });
                    }
                }
                (latencies, bad, first_bad)
            })
        })
        .collect();
    let mut out = Load {
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
        bad: 0,
        first_bad: None,
    };
    for w in workers {
        let (latencies, bad, first_bad) = w.await.unwrap();
        out.latencies.extend(latencies);
        out.bad += bad;
        if out.first_bad.is_none() {
            out.first_bad = first_bad;
        }
    }
    out.elapsed = started.elapsed();
    out.latencies.sort();
    out
}

/// Pushes a variant of the single-platform manifest (an extra annotation, so a
/// distinct digest) under `tag`; returns its digest's hex.
async fn push_variant(
    http: &reqwest::Client,
    registry: &str,
    repo: &str,
    manifest: &Value,
    media_type: &str,
    tag: &str,
) -> String {
    use sha2::Digest as _;
    let mut variant = manifest.clone();
    variant["annotations"] = json!({"bench.kosli.com/variant": tag});
    let bytes = serde_json::to_vec(&variant).unwrap();
    http.put(format!("http://{registry}/v2/{repo}/manifests/{tag}"))
        .header("content-type", media_type)
        .body(bytes.clone())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    hex::encode(sha2::Sha256::digest(&bytes))
}

struct Scenario {
    case: &'static str,
    concurrency: usize,
    requested: usize,
    load: Load,
    asserts: usize,
    registry_note: &'static str,
}

async fn admission(env: &TestEnv, client: &Client, id: &str) -> String {
    let gid = format!("{id}-g");
    let ns = format!("{id}-gate");
    create_namespace(client, &ns, &[]).await;
    let object: KosliEnvironment = serde_json::from_value(json!({
        "apiVersion": "kosli.com/v1alpha1", "kind": "KosliEnvironment",
        "metadata": {"name": format!("{gid}-env"), "labels": {"test": gid}},
        "spec": {"name": "prod", "namespaces": [ns], "gate": {"mode": "Enforce"}},
    }))
    .unwrap();
    Api::<KosliEnvironment>::all(client.clone())
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    let fake = FakeKosli::start().await;
    fake.add_environment("prod", "K8S");
    let cert = support::webhook::serving_cert();
    let port = support::free_port();
    let args = support::webhook::operator_args(&cert, port);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut op = Operator::start(
        &env.kubeconfig,
        &fake,
        &gid,
        &format!("lease-{gid}"),
        &arg_refs,
        &[],
    );
    op.wait_ready().await;
    // The first (empty) report goes out before any delay is scripted.
    support::operator::eventually(
        Duration::from_secs(30),
        "the gate environment's first report",
        || async { (!fake.reports("prod").is_empty()).then_some(()) },
    )
    .await;
    progress!("gate operator ready");

    let compliant = json!({"compliant": true, "scope": "environment", "environment": "prod"});
    let set_compliant = |hex: &str| {
        fake.state()
            .asserts
            .insert(hex.to_owned(), compliant.clone());
    };
    let registry = env.registry.clone();
    let repo = env.image_repo.clone();
    let by_digest = {
        let prefix = format!("{registry}/{repo}@sha256:");
        move |hex: &str| format!("{prefix}{hex}")
    };
    let warm_hex = "a".repeat(64);
    set_compliant(&warm_hex);
    let single_hex = env.single_digest.trim_start_matches("sha256:").to_owned();
    set_compliant(&single_hex);

    // Cold tags: distinct manifests (so distinct digests) under distinct tags.
    const COLD_C1: usize = 100;
    const COLD_C8: usize = 200;
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = plain
        .get(format!("http://{registry}/v2/{repo}/manifests/{}", env.single_tag))
        .header("accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let media_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_owned();
    let manifest: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    for i in 0..COLD_C1 + COLD_C8 {
        let hex = push_variant(
            &plain,
            &registry,
            &repo,
            &manifest,
            &media_type,
            &format!("bench-cold-{i}"),
        )
        .await;
        set_compliant(&hex);
    }
    for i in 0..COLD_C1 + COLD_C8 {
        set_compliant(&format!("{:064x}", 0xc01d_0000_u64 + i as u64));
    }
    progress!("{} cold tags pushed to the registry", COLD_C1 + COLD_C8);

    let http = support::webhook::https_client(&cert.ca_pem);
    let url = format!("https://127.0.0.1:{port}/validate");
    let template = Arc::new(review_template(&ns));
    let body_for = |image: Arc<dyn Fn(usize) -> String + Send + Sync>| -> Arc<dyn Fn(usize) -> String + Send + Sync> {
        let template = template.clone();
        Arc::new(move |i| template.replace("__UID__", &format!("{i:08x}")).replace("__IMAGE__", &image(i)))
    };
    let fixed = |image: String| body_for(Arc::new(move |_| image.clone()));

    // The gate covers the namespace: an unknown digest is denied in Enforce.
    let probe = load(
        &http,
        &url,
        1,
        1,
        Duration::from_secs(10),
        fixed(by_digest(&"9".repeat(64))),
    )
    .await;
    assert!(
        probe.bad == 1
            && probe
                .first_bad
                .as_deref()
                .is_some_and(|b| b.contains("\"allowed\":false")),
        "the gate does not enforce in {ns}: {:?}",
        probe.first_bad
    );
    let tag_image = format!("{registry}/{repo}:{}", env.single_tag);
    let warm_digest = fixed(by_digest(&warm_hex));
    let warm_tag = fixed(tag_image.clone());
    // Warm: one request caches the verdict (and the tag's digest).
    for body in [&warm_digest, &warm_tag] {
        let primed = load(&http, &url, 1, 1, Duration::from_secs(10), body.clone()).await;
        assert_eq!(primed.bad, 0, "priming failed: {:?}", primed.first_bad);
    }
    fake.state().requests.clear();

    let mut scenarios = Vec::new();
    let asserts_since = |fake: &FakeKosli| {
        let mut state = fake.state();
        let n = state
            .requests
            .iter()
            .filter(|r| r.path.contains("/asserts/"))
            .count();
        state.requests.clear();
        state.script.clear();
        n
    };
    let warm_limit = Duration::from_secs(6);
    for (case, body, note) in [
        ("warm, image by digest", &warm_digest, "none"),
        ("warm, image by tag", &warm_tag, "tag digest cached 30 s"),
    ] {
        for concurrency in [1, 8] {
            progress!("admission: {case}, concurrency {concurrency}");
            let result = load(&http, &url, 20_000, concurrency, warm_limit, body.clone()).await;
            scenarios.push(Scenario {
                case,
                concurrency,
                requested: 20_000,
                load: result,
                asserts: asserts_since(&fake),
                registry_note: note,
            });
        }
    }
    let mut offset = 0;
    for (concurrency, count, limit) in [
        (1, COLD_C1, Duration::from_secs(12)),
        (8, COLD_C8, Duration::from_secs(6)),
    ] {
        progress!("admission: cold, image by digest, concurrency {concurrency}");
        fake.script(std::iter::repeat_n(Scripted::slow(KOSLI_DELAY), count));
        let base = offset;
        let body = body_for(Arc::new({
            let by_digest = by_digest.clone();
            move |i| by_digest(&format!("{:064x}", 0xc01d_0000_u64 + (base + i) as u64))
        }));
        let result = load(&http, &url, count, concurrency, limit, body).await;
        scenarios.push(Scenario {
            case: "cold, image by digest",
            concurrency,
            requested: count,
            load: result,
            asserts: asserts_since(&fake),
            registry_note: "none",
        });

        progress!("admission: cold, image by tag, concurrency {concurrency}");
        fake.script(std::iter::repeat_n(Scripted::slow(KOSLI_DELAY), count));
        let image_base = format!("{registry}/{repo}:bench-cold-");
        let body = body_for(Arc::new(move |i| format!("{image_base}{}", base + i)));
        let result = load(&http, &url, count, concurrency, limit, body).await;
        scenarios.push(Scenario {
            case: "cold, image by tag",
            concurrency,
            requested: count,
            load: result,
            asserts: asserts_since(&fake),
            registry_note: "HEAD per review (distinct tags)",
        });
        offset += count;
    }
    drop(op);
    progress!("admission done");

    let mut out = String::new();
    writeln!(out, "### Admission: decision latency and throughput\n").unwrap();
    writeln!(
        out,
        "AdmissionReviews of a Pod CREATE (a realistic, defaulted pod, ~2.5 kB) POSTed to the operator's \
         `https://127.0.0.1:PORT/validate` (gate in Enforce for the namespace) by a reqwest client \
         trusting the test CA, HTTP/1.1 keep-alive, 1 request in flight for latency and 8 for \
         throughput; latency is measured at the client (TLS and HTTP on loopback included). The load \
         generator runs on the same 2 cores as the operator, the API server and etcd. Warm: after one \
         request cached the verdict (a digest-pinned image needs no registry; a tag's digest is \
         asked of the registry again at most every 30 s; pull secrets are off, the default). Cold: \
         every review a digest the cache has never seen (by digest) or a tag never resolved (by tag: \
         distinct manifests pushed to the loopback registry under distinct tags), the fake Kosli \
         answering each assert after {} ms; the loopback registry adds no delay. Each case stops at \
         its request count or its time limit (6 s warm, 12 s / 6 s cold; at most 60 s in all).\n",
        KOSLI_DELAY.as_millis()
    )
    .unwrap();
    writeln!(
        out,
        "| case | in flight | reviews | p50 | p99 | max | reviews/s | Kosli asserts | budget |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|---|---|").unwrap();
    for s in &scenarios {
        let l = &s.load;
        let (p50, p99) = (
            percentile(&l.latencies, 50.0),
            percentile(&l.latencies, 99.0),
        );
        let rate = l.latencies.len() as f64 / l.elapsed.as_secs_f64();
        let budget = match (s.case.starts_with("warm"), s.concurrency) {
            (true, 1) => format!(
                "p50 ≤ 1 ms: {}; p99 ≤ 5 ms: {}",
                met(p50 <= Duration::from_millis(1)),
                met(p99 <= Duration::from_millis(5))
            ),
            (true, _) => format!("≥ 3,000 reviews/s on 2 cores: {}", met(rate >= 3000.0)),
            (false, _) => format!("p99 ≤ 1.5 s: {}", met(p99 <= Duration::from_millis(1500))),
        };
        let limited = if l.latencies.len() < s.requested {
            " (time limit)"
        } else {
            ""
        };
        let bad = if l.bad > 0 {
            format!(
                " ({} not allowed: {})",
                l.bad,
                l.first_bad.as_deref().unwrap_or_default().replace('|', "/")
            )
        } else {
            String::new()
        };
        writeln!(
            out,
            "| {} (registry: {}) | {} | {}{limited}{bad} | {} | {} | {} | {rate:.0} | {} | {budget} |",
            s.case,
            s.registry_note,
            s.concurrency,
            l.latencies.len(),
            fmt_duration(p50),
            fmt_duration(p99),
            fmt_duration(l.latencies.last().copied().unwrap_or_default()),
            s.asserts
        )
        .unwrap();
    }
    out.push('\n');
    out
}
