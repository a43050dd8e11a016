//! Prometheus metrics, prefixed `kosli_operator_`. Labels stay low-cardinality:
//! environments (a handful per cluster), results, statuses — never pods.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::kosli::RequestObserver;

pub struct Metrics {
    registry: Registry,
    /// Report attempts by environment and result (`sent`, `failed`).
    pub reports: IntCounterVec,
    pub kosli_request_seconds: HistogramVec,
    pub kosli_retries: IntCounterVec,
    /// Size of the last report body sent, per environment.
    pub payload_bytes: IntGaugeVec,
    seconds_since_report: GaugeVec,
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
    pub review_seconds: HistogramVec,
    pub lookup_seconds: HistogramVec,
    pub gate_cache: IntCounterVec,
    pub circuit_open: IntGauge,
    pub break_glass: IntCounterVec,
    last_report: Mutex<HashMap<String, Instant>>,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help).namespace("kosli_operator"), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::with_opts(Opts::new(name, help).namespace("kosli_operator"))?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let kosli_request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "kosli_request_duration_seconds",
                "Duration of Kosli HTTP attempts by operation.",
            )
            .namespace("kosli_operator")
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["operation"],
        )?;
        registry.register(Box::new(kosli_request_seconds.clone()))?;
        let payload_bytes = IntGaugeVec::new(
            Opts::new(
                "report_payload_bytes",
                "Size of the last report body per environment.",
            )
            .namespace("kosli_operator"),
            &["environment"],
        )?;
        registry.register(Box::new(payload_bytes.clone()))?;
        let seconds_since_report = GaugeVec::new(
            Opts::new(
                "seconds_since_last_report",
                "Seconds since Kosli last accepted a report for the environment.",
            )
            .namespace("kosli_operator"),
            &["environment"],
        )?;
        registry.register(Box::new(seconds_since_report.clone()))?;
        let review_seconds = HistogramVec::new(
            HistogramOpts::new(
                "admission_review_duration_seconds",
                "Time to answer an admission review.",
            )
            .namespace("kosli_operator")
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["decision"],
        )?;
        registry.register(Box::new(review_seconds.clone()))?;
        let lookup_seconds = HistogramVec::new(
            HistogramOpts::new(
                "gate_lookup_duration_seconds",
                "Registry and Kosli lookups made by the gate.",
            )
            .namespace("kosli_operator")
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["backend"],
        )?;
        registry.register(Box::new(lookup_seconds.clone()))?;
        let watch_stale = IntGaugeVec::new(
            Opts::new(
                "watch_stale",
                "Stores whose watch has failed too long to count as current, by resource.",
            )
            .namespace("kosli_operator"),
            &["resource"],
        )?;
        registry.register(Box::new(watch_stale.clone()))?;
        for resource in ["pods", "namespaces"] {
            watch_stale.with_label_values(&[resource]).set(0);
        }
        Ok(Self {
            watch_stale,
            reviews: counter(
                &registry,
                "admission_reviews_total",
                "Admission reviews by kind, operation, decision and mode.",
                &["kind", "operation", "decision", "mode"],
            )?,
            gate_cache: counter(
                &registry,
                "gate_cache_total",
                "Gate cache uses by cache and result (hit, miss, stale).",
                &["cache", "result"],
            )?,
            circuit_open: gauge(
                &registry,
                "gate_circuit_open",
                "1 while the gate has stopped asking a failing Kosli.",
            )?,
            break_glass: counter(
                &registry,
                "gate_break_glass_total",
                "Workloads admitted through a break-glass annotation.",
                &["environment"],
            )?,
            review_seconds,
            lookup_seconds,
            reports: counter(
                &registry,
                "reports_total",
                "Report attempts by environment and result.",
                &["environment", "result"],
            )?,
            kosli_retries: counter(
                &registry,
                "kosli_retries_total",
                "Kosli requests retried, by the status that caused it (0: transport error).",
                &["status"],
            )?,
            watch_restarts: counter(
                &registry,
                "watch_restarts_total",
                "Watches that started over with a full list.",
                &["resource"],
            )?,
            watch_errors: counter(
                &registry,
                "watch_errors_total",
                "Watch errors, retried with backoff.",
                &["resource"],
            )?,
            store_pods: gauge(&registry, "store_pods", "Pods held in the compact store.")?,
            store_namespaces: gauge(
                &registry,
                "store_namespaces",
                "Namespaces held in the store.",
            )?,
            leader: gauge(
                &registry,
                "leader",
                "1 while this process is the leader that reports.",
            )?,
            kosli_request_seconds,
            payload_bytes,
            seconds_since_report,
            registry,
            last_report: Mutex::new(HashMap::new()),
        })
    }

    /// Records an accepted report.
    pub fn report_sent(&self, environment: &str, bytes: usize) {
        self.reports.with_label_values(&[environment, "sent"]).inc();
        self.payload_bytes
            .with_label_values(&[environment])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.last_report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(environment.to_owned(), Instant::now());
    }

    pub fn report_failed(&self, environment: &str) {
        self.reports
            .with_label_values(&[environment, "failed"])
            .inc();
    }

    /// Drops an environment's series once it is gone.
    pub fn forget_environment(&self, environment: &str) {
        for result in ["sent", "failed"] {
            let _ = self.reports.remove_label_values(&[environment, result]);
        }
        let _ = self.payload_bytes.remove_label_values(&[environment]);
        let _ = self
            .seconds_since_report
            .remove_label_values(&[environment]);
        self.last_report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(environment);
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

    #[test]
    fn exposition_has_the_prefix_and_the_environment_series() {
        let m = Metrics::new().unwrap();
        m.report_sent("prod", 1234);
        m.report_failed("prod");
        m.retry("report", Some(503));
        m.attempt("report", Some(201), Duration::from_millis(30));
        let text = String::from_utf8(m.encode()).unwrap();
        for needle in [
            "kosli_operator_reports_total{environment=\"prod\",result=\"sent\"} 1",
            "kosli_operator_reports_total{environment=\"prod\",result=\"failed\"} 1",
            "kosli_operator_report_payload_bytes{environment=\"prod\"} 1234",
            "kosli_operator_kosli_retries_total{status=\"503\"} 1",
            "kosli_operator_kosli_request_duration_seconds_count{operation=\"report\"} 1",
            "kosli_operator_seconds_since_last_report{environment=\"prod\"}",
            "kosli_operator_watch_stale{resource=\"pods\"} 0",
            "kosli_operator_watch_stale{resource=\"namespaces\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle}:\n{text}");
        }
        m.forget_environment("prod");
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(!text.contains("environment=\"prod\""), "{text}");
    }
}
