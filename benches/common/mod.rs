//! What the end-to-end benchmarks share: progress lines, number formatting,
//! the API server's own metrics, /proc readings of processes, and one run of
//! the CronJob way (`kosli-operator snapshot`).
#![allow(dead_code)] // each benchmark uses a part of it

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::fake_kosli::{FakeKosli, ORG, TOKEN};
use crate::support::testenv::TestEnv;

/// When the benchmark started, and its name, for the progress lines.
pub static START: OnceLock<Instant> = OnceLock::new();
pub static NAME: OnceLock<&'static str> = OnceLock::new();

/// Names the benchmark in its progress lines and starts its clock.
pub fn start(name: &'static str) {
    NAME.get_or_init(|| name);
    START.get_or_init(Instant::now);
}

/// Seconds since [`start`].
pub fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// A progress line on stderr (stdout is the Markdown).
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!(
            "[{} {:>6.1}s] {}",
            crate::common::NAME.get().copied().unwrap_or("bench"),
            crate::common::elapsed(),
            format!($($arg)*)
        )
    };
}

// ------------------------------------------------------------------ formatting

pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.3} s", ms / 1000.0)
    }
}

pub fn fmt_bytes(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

pub fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The `p`-th percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

// ------------------------------------------------------------------ the API server's metrics

/// (resource, subresource, verb)
pub type Key = (String, String, String);

#[derive(Clone, Default)]
pub struct ApiMetrics {
    pub requests: BTreeMap<Key, f64>,
    pub response_bytes: BTreeMap<Key, f64>,
    /// By kind: events sent to watchers, and their bytes.
    pub watch_events: BTreeMap<String, f64>,
    pub watch_bytes: BTreeMap<String, f64>,
}
pub fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

pub fn parse_metrics(text: &str) -> ApiMetrics {
    let mut m = ApiMetrics::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (Some(open), Some(close)) = (line.find('{'), line.rfind('}')) else {
            continue;
        };
        let Ok(value) = line[close + 1..].trim().parse::<f64>() else {
            continue;
        };
        let name = &line[..open];
        let labels = parse_labels(&line[open + 1..close]);
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let key = || (get("resource"), get("subresource"), get("verb"));
        match name {
            "apiserver_request_total" => *m.requests.entry(key()).or_default() += value,
            "apiserver_response_sizes_sum" => *m.response_bytes.entry(key()).or_default() += value,
            "apiserver_watch_events_total" => {
                *m.watch_events.entry(get("kind")).or_default() += value
            }
            "apiserver_watch_events_sizes_sum" => {
                *m.watch_bytes.entry(get("kind")).or_default() += value
            }
            _ => {}
        }
    }
    m
}

pub fn delta<K: Ord + Clone>(
    after: &BTreeMap<K, f64>,
    before: &BTreeMap<K, f64>,
) -> BTreeMap<K, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

impl ApiMetrics {
    pub fn since(&self, before: &ApiMetrics) -> ApiMetrics {
        ApiMetrics {
            requests: delta(&self.requests, &before.requests),
            response_bytes: delta(&self.response_bytes, &before.response_bytes),
            watch_events: delta(&self.watch_events, &before.watch_events),
            watch_bytes: delta(&self.watch_bytes, &before.watch_bytes),
        }
    }
}

pub struct ApiServer {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl ApiServer {
    pub fn new(env: &TestEnv) -> Self {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
        let ca = std::fs::read(var("TESTENV_CA_CERT")).unwrap();
        let token = std::env::var("TESTENV_ADMIN_TOKEN").unwrap_or_else(|_| {
            // Else the admin kubeconfig's token.
            let text = std::fs::read_to_string(&env.kubeconfig).unwrap();
            text.lines()
                .find_map(|l| l.trim().strip_prefix("token:"))
                .unwrap()
                .trim()
                .to_owned()
        });
        Self {
            http: reqwest::Client::builder()
                .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
                .no_proxy()
                .build()
                .unwrap(),
            url: var("TESTENV_APISERVER_URL"),
            token,
        }
    }

    /// GET `path` as the admin: the status and the body.
    pub async fn get(&self, path: &str) -> (u16, bytes::Bytes) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap())
    }

    pub async fn metrics(&self) -> ApiMetrics {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap();
        parse_metrics(&text)
    }
}

// ------------------------------------------------------------------ processes

pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Fields of /proc/PID/stat after the command name; index 0 is field 3 (state).
pub fn stat_fields(pid: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect()
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let f = stat_fields(&pid.to_string());
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / clock_ticks()
}

/// cutime + cstime of this process: the CPU time of the children it has waited for.
pub fn children_cpu_seconds() -> f64 {
    let f = stat_fields("self");
    (f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0)) as f64 / clock_ticks()
}

/// A `kB` field of /proc/PID/status (`VmHWM`, `VmRSS`, ...).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// VmHWM (peak resident set) of a process, in kB.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM")
}

/// VmRSS (current resident set) of a process, in kB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS")
}

/// One run of the one-shot `snapshot`, as the CronJob does every 5 minutes:
/// its wall time and peak RSS (VmHWM sampled every 10 ms). A run still going
/// after `limit` is killed and fails the benchmark.
pub async fn snapshot_once(
    env: &TestEnv,
    fake: &FakeKosli,
    name: &str,
    regex: &str,
    limit: Duration,
) -> (Duration, u64) {
    let kubeconfig = env.kubeconfig.to_str().unwrap().to_owned();
    let (name, regex, url) = (name.to_owned(), regex.to_owned(), fake.url.clone());
    tokio::task::spawn_blocking(move || {
        let log = tempfile::NamedTempFile::new().unwrap();
        let started = Instant::now();
        let mut child = support::command(
            &[
                "snapshot",
                &name,
                "--kubeconfig",
                &kubeconfig,
                "--namespaces-regex",
                &regex,
            ],
            &[
                ("KOSLI_HOST", &url),
                ("KOSLI_ORG", ORG),
                ("KOSLI_API_TOKEN", TOKEN),
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
        let mut peak = 0;
        let status = loop {
            if let Some(kb) = peak_rss_kb(child.id()) {
                peak = peak.max(kb);
            }
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "snapshot still running after {limit:?}; killed:\n{}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            status.success(),
            "snapshot failed with {status}:\n{}",
            std::fs::read_to_string(log.path()).unwrap_or_default()
        );
        (started.elapsed(), peak)
    })
    .await
    .unwrap()
}
