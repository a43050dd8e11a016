//! The command line: flags and environment variables named as the Kosli CLI
//! names them, so users carry their habits over.

pub mod config_file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::cli::config_file::NamespaceLists;
use crate::error::Result;
use crate::kosli::{ApiToken, KosliConfig, RetryPolicy};

#[derive(Debug, Parser)]
#[command(
    name = "kosli-operator",
    version,
    about = "Records what runs in a Kubernetes cluster to Kosli",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log lines on stderr: text for people, or json (one object per line) for log pipelines.
    #[arg(
        long,
        global = true,
        env = "KOSLI_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: crate::observe::logging::LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: report every KosliEnvironment to Kosli as pods change.
    Run(Box<RunArgs>),
    /// Ask Kosli whether an image is compliant for an environment (exit 0 yes, 1 no).
    Check(Box<CheckArgs>),
    /// Report the running pods of a cluster to Kosli once (a drop-in for `kosli snapshot k8s`).
    Snapshot(Box<SnapshotArgs>),
    /// Print the KosliEnvironment CustomResourceDefinition as YAML.
    Crd,
}

/// How to reach Kosli; shared by every command that talks to it.
#[derive(Debug, Args)]
pub struct KosliArgs {
    /// Kosli host.
    #[arg(long, env = "KOSLI_HOST", default_value = "https://app.kosli.com")]
    pub host: String,

    /// Kosli organization.
    #[arg(long, env = "KOSLI_ORG", default_value = "")]
    pub org: String,

    /// Kosli API token. Prefer the environment variable or --api-token-file:
    /// command lines are visible to other processes.
    #[arg(long, env = "KOSLI_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// File holding the Kosli API token (e.g. a mounted Secret); wins over --api-token.
    #[arg(long, env = "KOSLI_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Proxy for every request to Kosli; without it HTTPS_PROXY/NO_PROXY apply.
    #[arg(long, env = "KOSLI_HTTP_PROXY")]
    pub http_proxy: Option<String>,

    /// Extra PEM CA certificates to trust for Kosli (e.g. a TLS-inspecting proxy's).
    #[arg(long, env = "KOSLI_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,

    /// How many times a failed Kosli request is retried.
    #[arg(long, env = "KOSLI_MAX_API_RETRIES", default_value_t = 3)]
    pub max_api_retries: u32,
}

impl KosliArgs {
    /// The client configuration.
    pub fn to_config(&self) -> Result<KosliConfig> {
        let token = ApiToken::new(self.api_token.clone().unwrap_or_default());
        let mut config = KosliConfig::new(&self.host, &self.org, token);
        config.token_file = self.api_token_file.clone();
        config.http_proxy = self.http_proxy.clone().filter(|p| !p.is_empty());
        config.ca_bundle = self.ca_bundle.clone();
        config.retry = RetryPolicy {
            max_retries: self.max_api_retries,
            ..RetryPolicy::default()
        };
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The Kosli environment to report to (omit with --config-file).
    #[arg(value_name = "ENVIRONMENT-NAME")]
    pub environment: Option<String>,

    /// Namespaces to report (comma-separated exact names).
    #[arg(short = 'n', long, value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Regular expressions for namespaces to report (comma-separated; any match counts).
    #[arg(long, value_delimiter = ',')]
    pub namespaces_regex: Vec<String>,

    /// Namespaces to leave out (comma-separated exact names).
    #[arg(short = 'x', long, value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,

    /// Regular expressions for namespaces to leave out (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_namespaces_regex: Vec<String>,

    /// YAML file listing several environments (the Kosli CLI's format).
    #[arg(long, conflicts_with_all = ["environment", "namespaces", "namespaces_regex", "exclude_namespaces", "exclude_namespaces_regex"])]
    pub config_file: Option<PathBuf>,

    /// Read pods from this file (`kubectl get pods -A -o json`), or `-` for stdin,
    /// instead of asking a cluster.
    #[arg(long, value_name = "FILE|-", conflicts_with = "kubeconfig")]
    pub from_file: Option<PathBuf>,

    /// Kubeconfig to use (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(short = 'k', long)]
    pub kubeconfig: Option<PathBuf>,

    /// Print the request body on stdout and send nothing.
    #[arg(short = 'D', long, env = "KOSLI_DRY_RUN")]
    pub dry_run: bool,

    /// Create the Kosli environment (type K8S) when it does not exist.
    #[arg(short = 'A', long)]
    pub auto_environment: bool,

    /// Description for an environment created by --auto-environment.
    #[arg(long, default_value = "")]
    pub environment_description: String,

    #[command(flatten)]
    pub kosli: KosliArgs,
}

impl SnapshotArgs {
    pub fn namespace_lists(&self) -> NamespaceLists {
        NamespaceLists {
            namespaces: self.namespaces.clone(),
            namespaces_regex: self.namespaces_regex.clone(),
            exclude_namespaces: self.exclude_namespaces.clone(),
            exclude_namespaces_regex: self.exclude_namespaces_regex.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The image, by tag or digest (e.g. registry.example.com/app:1.2 or app@sha256:...).
    pub image: String,

    /// The Kosli environment whose rules apply.
    #[arg(short = 'e', long)]
    pub environment: Option<String>,

    /// Kosli policies to assert instead of the environment's own (repeatable).
    #[arg(long = "policy")]
    pub policies: Vec<String>,

    /// Registry username for resolving a tag (with REGISTRY_PASSWORD).
    #[arg(long, env = "REGISTRY_USERNAME")]
    pub registry_username: Option<String>,

    #[arg(long, env = "REGISTRY_PASSWORD", hide_env_values = true)]
    pub registry_password: Option<String>,

    /// Registries (host[:port]) spoken to over plain HTTP; loopback ones always are.
    #[arg(long, value_delimiter = ',')]
    pub insecure_registries: Vec<String>,

    #[command(flatten)]
    pub kosli: KosliArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address for /metrics, /livez and /readyz (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Elect one leader among replicas through a Lease; only the leader reports.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub leader_election: bool,

    /// Name of the Lease used for leader election.
    #[arg(long, default_value = "kosli-operator")]
    pub lease_name: String,

    /// Namespace of the Lease (the operator's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// How long a standby waits, on its own clock, without seeing the Lease
    /// renewed before it takes over.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// A leader that could not renew the Lease for this long stops reporting,
    /// abandoning a report in flight. Must be shorter than --lease-duration: the
    /// difference is the margin that keeps two leaders' reports from overlapping.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub lease_renew_deadline: Duration,

    /// How often the leader renews the Lease and a standby looks at it.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub lease_retry_period: Duration,

    /// Namespace for Kubernetes Events about KosliEnvironments (cluster-scoped
    /// objects: older API servers accept their events only in kube-system).
    #[arg(long, default_value = "kube-system")]
    pub events_namespace: String,

    /// Only handle KosliEnvironments matching this label selector (e.g. `shard=a`),
    /// so several operators can split a cluster's environments.
    #[arg(long)]
    pub environment_selector: Option<String>,

    /// Watch pods only in these namespaces (comma-separated) instead of cluster-wide;
    /// KosliEnvironments must then list their namespaces in spec.namespaces.
    /// A namespace named twice is watched once; an empty name is refused.
    #[arg(long, value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,

    /// A pod or namespace watch failing this long makes its view stale: no
    /// report (heartbeats included) is sent from it, status turns Stale, and
    /// it is listed afresh. Watch calls are renewed at least this often.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub stale_view_after: Duration,

    /// Log each body that would be sent, and send nothing.
    #[arg(short = 'D', long, env = "KOSLI_DRY_RUN")]
    pub dry_run: bool,

    /// Quiet time after a change before reporting, so a rollout becomes one report.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub debounce: Duration,

    /// The longest a report is held back while changes keep coming: a
    /// rollout reaches Kosli within about this long, in one report per period.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub max_debounce: Duration,

    /// Kubeconfig to use (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(short = 'k', long)]
    pub kubeconfig: Option<PathBuf>,

    #[command(flatten)]
    pub gate: GateArgs,

    #[command(flatten)]
    pub kosli: KosliArgs,
}

impl RunArgs {
    /// The pod watch scopes: `None` for one cluster-wide watch, else each
    /// namespace once. An empty name (which would mean all namespaces beside
    /// named ones: overlapping watches) or an invalid one is a usage error.
    pub fn watch_scopes(&self) -> Result<Vec<Option<String>>> {
        if self.watch_namespaces.is_empty() {
            return Ok(vec![None]);
        }
        let mut scopes = std::collections::BTreeSet::new();
        for name in &self.watch_namespaces {
            let name = name.trim();
            if !is_namespace_name(name) {
                return Err(crate::error::Error::Config(format!(
                    "--watch-namespaces: {name:?} is not a namespace name (lowercase letters, digits and '-', at most 63); \
                     leave the flag out to watch all namespaces"
                )));
            }
            scopes.insert(name.to_owned());
        }
        Ok(scopes.into_iter().map(Some).collect())
    }
}

/// A DNS-1123 label, as namespace names are.
fn is_namespace_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// The admission gate: served only when --webhook-addr is given.
#[derive(Debug, Args)]
pub struct GateArgs {
    /// Serve the validating admission webhook (HTTPS) on this address.
    #[arg(long)]
    pub webhook_addr: Option<SocketAddr>,

    /// PEM certificate of the webhook (reloaded when the file changes).
    #[arg(
        long,
        requires = "webhook_addr",
        default_value = "/etc/kosli-operator/webhook/tls.crt"
    )]
    pub webhook_cert: PathBuf,

    /// PEM private key of the webhook (reloaded when the file changes).
    #[arg(
        long,
        requires = "webhook_addr",
        default_value = "/etc/kosli-operator/webhook/tls.key"
    )]
    pub webhook_key: PathBuf,

    /// The webhook's timeoutSeconds in the ValidatingWebhookConfiguration; every
    /// review is answered 2 s before it (half of it, when shorter than 4 s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,

    /// Webhook connections served at once; beyond it new connections wait in the
    /// listen backlog until a served one ends (each is bounded by the deadlines).
    #[arg(long, default_value_t = crate::gate::server::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub webhook_max_connections: usize,

    /// PEM CA of the API server's client certificate: when set, the webhook
    /// completes the TLS handshake only with clients presenting a certificate
    /// chained to it (configure the API server's AdmissionConfiguration to
    /// present one). Read at start.
    #[arg(long, requires = "webhook_addr")]
    pub webhook_client_ca: Option<PathBuf>,

    /// Namespaces the gate never checks, besides kube-system and its own.
    #[arg(long, value_delimiter = ',')]
    pub gate_exempt_namespaces: Vec<String>,

    /// Registries (host[:port]) spoken to over plain HTTP; loopback ones always are.
    #[arg(long, value_delimiter = ',')]
    pub insecure_registries: Vec<String>,

    /// How long a compliant verdict is reused without asking Kosli.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub gate_compliant_cache: Duration,

    /// How long a non-compliant (or unknown) verdict is reused.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub gate_non_compliant_cache: Duration,

    /// Extra PEM CA certificates trusted for registries.
    #[arg(long)]
    pub registry_ca_bundle: Option<PathBuf>,

    /// Hosts (host or host:port) a registry's Bearer token realm may name,
    /// besides the registry's own host, its parent domain and, for Docker Hub,
    /// auth.docker.io. Registry credentials are sent to no other host.
    #[arg(long, value_delimiter = ',')]
    pub registry_token_hosts: Vec<String>,

    /// Registry and Kosli lookups in flight at once, across all reviews; a
    /// review waits for a free one within its deadline. Each can hold up to
    /// about 1 MiB of buffers while a registry streams at it.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub gate_max_lookups: u32,

    /// Read pods' imagePullSecrets (and their service accounts') to resolve
    /// private tags. Off: the gate reads no Secret or ServiceAccount at all.
    #[arg(long)]
    pub gate_pull_secrets: bool,

    /// At most this many pull secrets read per review, the service account's
    /// included; the rest are ignored with a warning.
    #[arg(long, default_value_t = 8)]
    pub gate_max_pull_secrets: usize,

    /// At most this many image lookups in flight per review (0 counts as 1).
    #[arg(long, default_value_t = 8)]
    pub gate_max_lookups_per_review: usize,

    /// Users who may use the break-glass annotation.
    #[arg(long, value_delimiter = ',')]
    pub gate_break_glass_users: Vec<String>,

    /// Refuse images named by tag alone, without resolving them: Enforce
    /// denies with "pin the image by digest", Warn warns.
    #[arg(long)]
    pub gate_require_digests: bool,

    /// Groups whose members may use the break-glass annotation.
    #[arg(long, value_delimiter = ',', default_value = crate::gate::handler::DEFAULT_BREAK_GLASS_GROUP)]
    pub gate_break_glass_groups: Vec<String>,
}

impl GateArgs {
    /// The internal deadline: 2 s inside the API server's timeout, or half of a
    /// timeout shorter than 4 s, so the answer always arrives before it.
    pub fn deadline(&self) -> Duration {
        if self.webhook_timeout >= Duration::from_secs(4) {
            self.webhook_timeout - Duration::from_secs(2)
        } else {
            self.webhook_timeout / 2
        }
    }

    /// The webhook server's outer limit on one request (headers in to answer
    /// out, and on the TLS handshake and idle time): 1 s inside the API
    /// server's timeout, or three quarters of a timeout under 2 s, so that
    /// even a request the review's own deadline did not stop is answered
    /// before the API server gives up. Never below [`GateArgs::deadline`].
    pub fn server_timeout(&self) -> Duration {
        if self.webhook_timeout >= Duration::from_secs(2) {
            self.webhook_timeout - Duration::from_secs(1)
        } else {
            self.webhook_timeout * 3 / 4
        }
    }
}

/// `500ms`, `2s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> crate::error::Result<Duration> {
    let text = text.trim();
    let invalid = |problem: String| crate::error::Error::InvalidDuration {
        text: text.to_owned(),
        problem,
        source: None,
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| invalid("is not a duration (e.g. 500ms, 2s, 5m)".to_owned()))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(invalid(format!(
                "has an unknown unit {unit:?} (use ms, s, m or h)"
            )));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|source| crate::error::Error::InvalidDuration {
        text: text.to_owned(),
        problem: "is too long".to_owned(),
        source: Some(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_server_answers_inside_the_api_servers_timeout() {
        for (timeout_ms, server_ms) in [
            (30_000, 29_000),
            (10_000, 9_000),
            (3_000, 2_000),
            (2_000, 1_000),
            (1_000, 750),
        ] {
            let cli = Cli::parse_from([
                "kosli-operator",
                "run",
                "--webhook-timeout",
                &format!("{timeout_ms}ms"),
            ]);
            let Command::Run(args) = cli.command else {
                panic!("not run")
            };
            let server = args.gate.server_timeout();
            assert_eq!(server, Duration::from_millis(server_ms), "{timeout_ms} ms");
            assert!(args.gate.deadline() <= server, "{timeout_ms} ms");
            assert_eq!(args.gate.webhook_max_connections, 256);
            assert_eq!(args.gate.webhook_client_ca, None);
        }
    }

    fn run_args(extra: &[&str]) -> RunArgs {
        let cli = Cli::parse_from(["kosli-operator", "run"].iter().chain(extra));
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        *args
    }

    #[test]
    fn watch_scopes_are_each_namespace_once() {
        assert_eq!(run_args(&[]).watch_scopes().unwrap(), vec![None]);
        let scopes = run_args(&["--watch-namespaces", "b,a,b, a"])
            .watch_scopes()
            .unwrap();
        assert_eq!(scopes, vec![Some("a".to_owned()), Some("b".to_owned())]);
    }

    #[test]
    fn overlapping_or_invalid_watch_scopes_are_usage_errors() {
        for flag in ["a,", ",a", "", "a,*", "A", "a_b", "a-"] {
            let err = run_args(&[&format!("--watch-namespaces={flag}")])
                .watch_scopes()
                .unwrap_err();
            assert!(err.is_usage(), "{flag:?}: {err}");
            assert!(
                err.to_string().contains("--watch-namespaces"),
                "{flag:?}: {err}"
            );
        }
    }

    #[test]
    fn views_turn_stale_after_a_minute_by_default() {
        assert_eq!(run_args(&[]).stale_view_after, Duration::from_secs(60));
        assert_eq!(
            run_args(&["--stale-view-after", "3s"]).stale_view_after,
            Duration::from_secs(3)
        );
    }

    #[test]
    fn durations() {
        let ok = |text| parse_duration(text).ok();
        assert_eq!(ok("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(ok("2s"), Some(Duration::from_secs(2)));
        assert_eq!(ok("3"), Some(Duration::from_secs(3)));
        assert_eq!(ok("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(ok("1h"), Some(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
        let err = |text| parse_duration(text).unwrap_err().to_string();
        assert_eq!(
            err("soon"),
            "\"soon\" is not a duration (e.g. 500ms, 2s, 5m)"
        );
        assert_eq!(
            err("5d"),
            "\"5d\" has an unknown unit \"d\" (use ms, s, m or h)"
        );
    }
}
