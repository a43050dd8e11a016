//! Prometheus metrics, prefixed `kosli_operator_`. Labels stay low-cardinality:
//! environments (a handful per cluster), results, statuses, decisions — never
//! pods.
//!
//! The chart's PrometheusRule and Grafana dashboard query these by name; a
//! test of the chart checks every name and label they use against
//! [`Metrics::series`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::kosli::RequestObserver;

/// Buckets of Kosli request and report durations: tens of milliseconds for a
/// small report, up to minutes for a large one retried by the client.
const REQUEST_BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Buckets of the change-to-report latency: the debounce (1 s) and
/// `--max-debounce` (3 s) are the usual answer; minutes mean Kosli kept
/// failing or the environment was held.
const LATENCY_BUCKETS: [f64; 13] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Buckets of report bodies, 1 KiB to 256 MiB by fours: about 500 bytes a pod,
/// so from a couple of pods to Kubernetes' largest clusters.
const SIZE_BUCKETS: [f64; 10] = [
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
];

pub struct Metrics {
    registry: Registry,
    /// Everything registered, to list the series a query may name.
    collectors: Vec<Box<dyn Collector>>,
    /// Report attempts by environment and result (`sent`, `failed`).
    pub reports: IntCounterVec,
    /// One report attempt, from the first request to Kosli's answer (the
    /// environment created when needed, the client's retries included), by
    /// environment and result.
    report_seconds: HistogramVec,
    /// From the first change a report carries (as its worker took it in) to
    /// Kosli's acceptance of that report, by environment.
    change_to_report_seconds: HistogramVec,
    /// Sizes of the report bodies sent, by environment.
    report_size_bytes: HistogramVec,
    pub kosli_request_seconds: HistogramVec,
    pub kosli_retries: IntCounterVec,
    /// Size of the last report body sent, per environment.
    pub payload_bytes: IntGaugeVec,
    seconds_since_report: GaugeVec,
    /// Each environment's heartbeat, so that an alert can compare the time
    /// since the last report with it.
    heartbeat_seconds: IntGaugeVec,
    /// The leader's KosliEnvironment conditions (1 True, 0 False), by
    /// KosliEnvironment and condition.
    environment_condition: IntGaugeVec,
    /// Restarts of a watch (a re-list), by resource.
    pub watch_restarts: IntCounterVec,
    pub watch_errors: IntCounterVec,
    /// Stores whose watch failed past `--stale-view-after`, by resource
    /// (`pods`, `namespaces`): their views are not reported as current.
    pub watch_stale: IntGaugeVec,
    pub store_pods: IntGauge,
    pub store_namespaces: IntGauge,
    pub leader: IntGauge,
    /// Admission reviews by kind, operation, decision and mode.
    pub reviews: IntCounterVec,
    /// Time to answer a review, by decision.
    pub review_seconds: HistogramVec,
    pub lookup_seconds: HistogramVec,
    pub gate_cache: IntCounterVec,
    pub circuit_open: IntGauge,
    pub break_glass: IntCounterVec,
    last_report: Mutex<HashMap<String, Instant>>,
}

/// The conditions a KosliEnvironment carries, as the metric names them.
pub const CONDITIONS: [&str; 4] = ["Ready", "Reporting", "Degraded", "Stale"];

/// What is registered, in the process registry and in a list of its own.
struct Registrar {
    registry: Registry,
    collectors: Vec<Box<dyn Collector>>,
}

impl Registrar {
    fn add<C: Collector + Clone + 'static>(&mut self, collector: C) -> prometheus::Result<C> {
        self.registry.register(Box::new(collector.clone()))?;
        self.collectors.push(Box::new(collector.clone()));
        Ok(collector)
    }

    fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        self.add(IntCounterVec::new(
            Opts::new(name, help).namespace("kosli_operator"),
            labels,
        )?)
    }

    fn gauge(&mut self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.add(IntGauge::with_opts(
            Opts::new(name, help).namespace("kosli_operator"),
        )?)
    }

    fn gauges(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        self.add(IntGaugeVec::new(
            Opts::new(name, help).namespace("kosli_operator"),
            labels,
        )?)
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> prometheus::Result<HistogramVec> {
        self.add(HistogramVec::new(
            HistogramOpts::new(name, help)
                .namespace("kosli_operator")
                .buckets(buckets.to_vec()),
            labels,
        )?)
    }
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let mut r = Registrar {
            registry: Registry::new(),
            collectors: Vec::new(),
        };
        let watch_stale = r.gauges(
            "watch_stale",
            "Stores whose watch has failed too long to count as current, by resource.",
            &["resource"],
        )?;
        for resource in ["pods", "namespaces"] {
            watch_stale.with_label_values(&[resource]).set(0);
        }
        Ok(Self {
            watch_stale,
            reviews: r.counter(
                "admission_reviews_total",
                "Admission reviews by kind, operation, decision and mode.",
                &["kind", "operation", "decision", "mode"],
            )?,
            review_seconds: r.histogram(
                "admission_review_duration_seconds",
                "Time to answer an admission review, by decision.",
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
                &["decision"],
            )?,
            lookup_seconds: r.histogram(
                "gate_lookup_duration_seconds",
                "Registry and Kosli lookups made by the gate.",
                &[
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
                &["backend"],
            )?,
            gate_cache: r.counter(
                "gate_cache_total",
                "Gate cache uses by cache and result (hit, miss, stale).",
                &["cache", "result"],
            )?,
            circuit_open: r.gauge(
                "gate_circuit_open",
                "1 while the gate has stopped asking a failing Kosli.",
            )?,
            break_glass: r.counter(
                "gate_break_glass_total",
                "Workloads admitted through a break-glass annotation.",
                &["environment"],
            )?,
            reports: r.counter(
                "reports_total",
                "Report attempts by environment and result.",
                &["environment", "result"],
            )?,
            report_seconds: r.histogram(
                "report_duration_seconds",
                "Duration of report attempts (creating the environment when needed, the \
                 report, the client's retries), by environment and result.",
                &REQUEST_BUCKETS,
                &["environment", "result"],
            )?,
            change_to_report_seconds: r.histogram(
                "change_to_report_seconds",
                "From the first change a report carries to Kosli's acceptance of the report.",
                &LATENCY_BUCKETS,
                &["environment"],
            )?,
            report_size_bytes: r.histogram(
                "report_size_bytes",
                "Sizes of the report bodies sent, by environment.",
                &SIZE_BUCKETS,
                &["environment"],
            )?,
            kosli_request_seconds: r.histogram(
                "kosli_request_duration_seconds",
                "Duration of Kosli HTTP attempts by operation.",
                &REQUEST_BUCKETS,
                &["operation"],
            )?,
            kosli_retries: r.counter(
                "kosli_retries_total",
                "Kosli requests retried, by the status that caused it (0: transport error).",
                &["status"],
            )?,
            payload_bytes: r.gauges(
                "report_payload_bytes",
                "Size of the last report body per environment.",
                &["environment"],
            )?,
            seconds_since_report: r.add(GaugeVec::new(
                Opts::new(
                    "seconds_since_last_report",
                    "Seconds since Kosli last accepted a report for the environment.",
                )
                .namespace("kosli_operator"),
                &["environment"],
            )?)?,
            heartbeat_seconds: r.gauges(
                "heartbeat_seconds",
                "The environment's heartbeat: an unchanged snapshot is sent again this often.",
                &["environment"],
            )?,
            environment_condition: r.gauges(
                "environment_condition",
                "The KosliEnvironment's status conditions as the leader last wrote them \
                 (1 True, 0 False), by KosliEnvironment and condition.",
                &["kosli_environment", "condition"],
            )?,
            watch_restarts: r.counter(
                "watch_restarts_total",
                "Watches that started over with a full list.",
                &["resource"],
            )?,
            watch_errors: r.counter(
                "watch_errors_total",
                "Watch errors, retried with backoff.",
                &["resource"],
            )?,
            store_pods: r.gauge("store_pods", "Pods held in the compact store.")?,
            store_namespaces: r.gauge("store_namespaces", "Namespaces held in the store.")?,
            leader: r.gauge("leader", "1 while this process is the leader that reports.")?,
            registry: r.registry,
            collectors: r.collectors,
            last_report: Mutex::new(HashMap::new()),
        })
    }

    /// Records a report Kosli accepted: `bytes` long, `took` to send, and
    /// `since_change` after the first change it carries (`None` when it
    /// carries none: a heartbeat, a first report).
    pub fn report_sent(
        &self,
        environment: &str,
        bytes: usize,
        took: Duration,
        since_change: Option<Duration>,
    ) {
        self.reports.with_label_values(&[environment, "sent"]).inc();
        self.report_seconds
            .with_label_values(&[environment, "sent"])
            .observe(took.as_secs_f64());
        if let Some(latency) = since_change {
            self.change_to_report_seconds
                .with_label_values(&[environment])
                .observe(latency.as_secs_f64());
        }
        self.report_size_bytes
            .with_label_values(&[environment])
            .observe(bytes as f64);
        self.payload_bytes
            .with_label_values(&[environment])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.last_report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(environment.to_owned(), Instant::now());
    }

    /// Records a report attempt Kosli did not accept, after `took`.
    pub fn report_failed(&self, environment: &str, took: Duration) {
        self.reports
            .with_label_values(&[environment, "failed"])
            .inc();
        self.report_seconds
            .with_label_values(&[environment, "failed"])
            .observe(took.as_secs_f64());
    }

    /// The environment's heartbeat, as its spec says.
    pub fn set_heartbeat(&self, environment: &str, heartbeat: Duration) {
        self.heartbeat_seconds
            .with_label_values(&[environment])
            .set(i64::try_from(heartbeat.as_secs()).unwrap_or(i64::MAX));
    }

    /// The conditions of KosliEnvironment `object` as the leader writes them:
    /// (type, status) with Kubernetes' spelling. A condition that is neither
    /// True nor False (Reporting is Unknown before the first attempt) has no
    /// series.
    pub fn set_conditions<'a>(
        &self,
        object: &str,
        conditions: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let mut seen = BTreeSet::new();
        for (type_, status) in conditions {
            let value = match status {
                "True" => 1,
                "False" => 0,
                _ => continue,
            };
            seen.insert(type_.to_owned());
            self.environment_condition
                .with_label_values(&[object, type_])
                .set(value);
        }
        for condition in CONDITIONS {
            if !seen.contains(condition) {
                let _ = self
                    .environment_condition
                    .remove_label_values(&[object, condition]);
            }
        }
    }

    /// Drops KosliEnvironment `object`'s conditions: it is deleted, or this
    /// process no longer leads (the new leader publishes its own).
    pub fn forget_conditions(&self, object: &str) {
        for condition in CONDITIONS {
            let _ = self
                .environment_condition
                .remove_label_values(&[object, condition]);
        }
    }

    /// Drops an environment's series once it is gone.
    pub fn forget_environment(&self, environment: &str) {
        for result in ["sent", "failed"] {
            let _ = self.reports.remove_label_values(&[environment, result]);
            let _ = self
                .report_seconds
                .remove_label_values(&[environment, result]);
        }
        let _ = self
            .change_to_report_seconds
            .remove_label_values(&[environment]);
        let _ = self.report_size_bytes.remove_label_values(&[environment]);
        let _ = self.payload_bytes.remove_label_values(&[environment]);
        let _ = self.heartbeat_seconds.remove_label_values(&[environment]);
        let _ = self
            .seconds_since_report
            .remove_label_values(&[environment]);
        self.last_report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(environment);
    }

    /// Every series name a query may use, with the labels it carries:
    /// counters and gauges by their name, histograms as `_bucket` (with
    /// `le`), `_sum` and `_count`. Series with no value yet count too.
    pub fn series(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out = BTreeMap::new();
        for collector in &self.collectors {
            for family in collector.collect() {
                let name = family.name().to_owned();
                let labels: BTreeSet<String> = collector
                    .desc()
                    .iter()
                    .flat_map(|d| d.variable_labels.iter().cloned())
                    .collect();
                if family.get_field_type() == MetricType::HISTOGRAM {
                    let mut bucket = labels.clone();
                    bucket.insert("le".to_owned());
                    out.insert(format!("{name}_bucket"), bucket);
                    out.insert(format!("{name}_sum"), labels.clone());
                    out.insert(format!("{name}_count"), labels);
                } else {
                    out.insert(name, labels);
                }
            }
        }
        out
    }

    /// The text exposition format, with the age gauges brought up to date.
    pub fn encode(&self) -> Vec<u8> {
        for (environment, at) in self
            .last_report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            self.seconds_since_report
                .with_label_values(&[environment.as_str()])
                .set(at.elapsed().as_secs_f64());
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("failed to encode metrics: {e}");
        }
        out
    }
}

impl RequestObserver for Metrics {
    fn attempt(&self, operation: &'static str, _status: Option<u16>, elapsed: Duration) {
        self.kosli_request_seconds
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
    }

    fn retry(&self, _operation: &'static str, status: Option<u16>) {
        let status = status.map_or_else(|| "0".to_owned(), |s| s.to_string());
        self.kosli_retries
            .with_label_values(&[status.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(m: &Metrics) -> String {
        String::from_utf8(m.encode()).unwrap()
    }

    fn assert_has(text: &str, needles: &[&str]) {
        for needle in needles {
            assert!(text.contains(needle), "missing {needle}:\n{text}");
        }
    }

    #[test]
    fn exposition_has_the_prefix_and_the_environment_series() {
        let m = Metrics::new().unwrap();
        m.report_sent("prod", 1234, Duration::from_millis(200), None);
        m.report_failed("prod", Duration::from_secs(3));
        m.retry("report", Some(503));
        m.attempt("report", Some(201), Duration::from_millis(30));
        m.set_heartbeat("prod", Duration::from_secs(300));
        let text = scrape(&m);
        assert_has(
            &text,
            &[
                "kosli_operator_reports_total{environment=\"prod\",result=\"sent\"} 1",
                "kosli_operator_reports_total{environment=\"prod\",result=\"failed\"} 1",
                "kosli_operator_report_payload_bytes{environment=\"prod\"} 1234",
                "kosli_operator_kosli_retries_total{status=\"503\"} 1",
                "kosli_operator_kosli_request_duration_seconds_count{operation=\"report\"} 1",
                "kosli_operator_seconds_since_last_report{environment=\"prod\"}",
                "kosli_operator_heartbeat_seconds{environment=\"prod\"} 300",
                "kosli_operator_watch_stale{resource=\"pods\"} 0",
                "kosli_operator_watch_stale{resource=\"namespaces\"} 0",
            ],
        );
        m.forget_environment("prod");
        let text = scrape(&m);
        assert!(!text.contains("environment=\"prod\""), "{text}");
    }

    #[test]
    fn report_histograms_have_their_labels_and_buckets() {
        let m = Metrics::new().unwrap();
        m.report_sent(
            "prod",
            3_000_000,
            Duration::from_millis(700),
            Some(Duration::from_millis(1500)),
        );
        m.report_sent("prod", 500, Duration::from_millis(40), None);
        m.report_failed("prod", Duration::from_secs(20));
        let text = scrape(&m);
        assert_has(
            &text,
            &[
                "# TYPE kosli_operator_report_duration_seconds histogram",
                "kosli_operator_report_duration_seconds_bucket{environment=\"prod\",result=\"sent\",le=\"0.05\"} 1",
                "kosli_operator_report_duration_seconds_bucket{environment=\"prod\",result=\"sent\",le=\"1\"} 2",
                "kosli_operator_report_duration_seconds_count{environment=\"prod\",result=\"sent\"} 2",
                "kosli_operator_report_duration_seconds_bucket{environment=\"prod\",result=\"failed\",le=\"10\"} 0",
                "kosli_operator_report_duration_seconds_bucket{environment=\"prod\",result=\"failed\",le=\"30\"} 1",
                "# TYPE kosli_operator_change_to_report_seconds histogram",
                // Only the report that carried a change counts.
                "kosli_operator_change_to_report_seconds_bucket{environment=\"prod\",le=\"1\"} 0",
                "kosli_operator_change_to_report_seconds_bucket{environment=\"prod\",le=\"2\"} 1",
                "kosli_operator_change_to_report_seconds_count{environment=\"prod\"} 1",
                "kosli_operator_change_to_report_seconds_sum{environment=\"prod\"} 1.5",
                "# TYPE kosli_operator_report_size_bytes histogram",
                "kosli_operator_report_size_bytes_bucket{environment=\"prod\",le=\"1024\"} 1",
                "kosli_operator_report_size_bytes_bucket{environment=\"prod\",le=\"1048576\"} 1",
                "kosli_operator_report_size_bytes_bucket{environment=\"prod\",le=\"4194304\"} 2",
                "kosli_operator_report_size_bytes_count{environment=\"prod\"} 2",
                // The gauge keeps the last one.
                "kosli_operator_report_payload_bytes{environment=\"prod\"} 500",
            ],
        );
        m.forget_environment("prod");
        assert!(!scrape(&m).contains("prod"), "{}", scrape(&m));
    }

    #[test]
    fn review_latency_is_labelled_by_decision() {
        let m = Metrics::new().unwrap();
        for (decision, ms) in [("allowed", 2), ("denied", 300), ("denied", 400)] {
            m.review_seconds
                .with_label_values(&[decision])
                .observe(Duration::from_millis(ms).as_secs_f64());
        }
        assert_has(
            &scrape(&m),
            &[
                "# TYPE kosli_operator_admission_review_duration_seconds histogram",
                "kosli_operator_admission_review_duration_seconds_bucket{decision=\"allowed\",le=\"0.0025\"} 1",
                "kosli_operator_admission_review_duration_seconds_count{decision=\"denied\"} 2",
                "kosli_operator_admission_review_duration_seconds_bucket{decision=\"denied\",le=\"0.25\"} 0",
                "kosli_operator_admission_review_duration_seconds_bucket{decision=\"denied\",le=\"0.5\"} 2",
            ],
        );
    }

    #[test]
    fn conditions_are_one_or_zero_and_go_with_their_object() {
        let m = Metrics::new().unwrap();
        m.set_conditions(
            "shop",
            [
                ("Ready", "False"),
                ("Reporting", "Unknown"),
                ("Degraded", "False"),
                ("Stale", "True"),
            ],
        );
        m.set_conditions("other", [("Ready", "True")]);
        let text = scrape(&m);
        assert_has(
            &text,
            &[
                "kosli_operator_environment_condition{condition=\"Ready\",kosli_environment=\"shop\"} 0",
                "kosli_operator_environment_condition{condition=\"Degraded\",kosli_environment=\"shop\"} 0",
                "kosli_operator_environment_condition{condition=\"Stale\",kosli_environment=\"shop\"} 1",
                "kosli_operator_environment_condition{condition=\"Ready\",kosli_environment=\"other\"} 1",
            ],
        );
        assert!(
            !text.contains("condition=\"Reporting\""),
            "Unknown has no series: {text}"
        );
        // A condition that turns Unknown loses its series.
        m.set_conditions("shop", [("Ready", "True"), ("Stale", "Unknown")]);
        let text = scrape(&m);
        assert_has(
            &text,
            &[
                "kosli_operator_environment_condition{condition=\"Ready\",kosli_environment=\"shop\"} 1",
            ],
        );
        assert!(!text.contains("condition=\"Stale\""), "{text}");
        m.forget_conditions("shop");
        let text = scrape(&m);
        assert!(!text.contains("kosli_environment=\"shop\""), "{text}");
        assert!(text.contains("kosli_environment=\"other\""), "{text}");
    }

    #[test]
    fn series_lists_every_family_with_its_labels_even_before_a_value() {
        let m = Metrics::new().unwrap();
        let series = m.series();
        let labels = |name: &str| -> Vec<&str> {
            series
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing: {series:?}"))
                .iter()
                .map(String::as_str)
                .collect()
        };
        assert_eq!(
            labels("kosli_operator_change_to_report_seconds_bucket"),
            ["environment", "le"]
        );
        assert_eq!(
            labels("kosli_operator_change_to_report_seconds_count"),
            ["environment"]
        );
        assert_eq!(
            labels("kosli_operator_report_duration_seconds_sum"),
            ["environment", "result"]
        );
        assert_eq!(
            labels("kosli_operator_admission_review_duration_seconds_bucket"),
            ["decision", "le"]
        );
        assert_eq!(
            labels("kosli_operator_environment_condition"),
            ["condition", "kosli_environment"]
        );
        assert!(labels("kosli_operator_leader").is_empty());
        assert!(
            !series.contains_key("kosli_operator_report_size_bytes"),
            "a histogram is queried by its series, not its family name"
        );
        // Whatever a scrape shows is listed: nothing is exported unlisted.
        m.report_sent("prod", 10, Duration::ZERO, Some(Duration::ZERO));
        m.report_failed("prod", Duration::ZERO);
        m.set_heartbeat("prod", Duration::from_secs(60));
        m.set_conditions("prod", [("Ready", "True")]);
        m.retry("report", None);
        m.attempt("report", None, Duration::ZERO);
        for line in scrape(&m).lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(series.contains_key(name), "{name} is not in series()");
        }
    }
}
