//! The command line: flags and environment variables named as the Kosli CLI
//! names them, so users carry their habits over. As in the Kosli CLI, every
//! flag can also be set by the variable `KOSLI_<FLAG>` (upper case, `-` as
//! `_`: `--exclude-namespaces` is `KOSLI_EXCLUDE_NAMESPACES`); a flag on the
//! command line wins over its variable. The few flags that read a variable
//! other systems set (`POD_NAMESPACE`, `REGISTRY_USERNAME`, `REGISTRY_PASSWORD`)
//! keep that one.

pub mod config_file;
pub mod environments_file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

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

/// The prefix of the variable every flag also reads.
pub const ENV_PREFIX: &str = "KOSLI_";

/// The API token that means "dry run", as in the Kosli CLI.
pub const DRY_RUN_TOKEN: &str = "DRY_RUN";

impl Cli {
    /// The command line's definition, every flag reading `KOSLI_<FLAG>` too.
    pub fn command_with_env() -> clap::Command {
        with_env(Self::command())
    }

    /// Parses the process's arguments; exits with usage on an error.
    pub fn parse_with_env() -> Self {
        let matches = Self::command_with_env().get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the first is the program name), variables included.
    pub fn try_parse_with_env_from<I, T>(args: I) -> std::result::Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command_with_env().try_get_matches_from(args)?;
        Self::from_arg_matches(&matches)
    }

    /// `--debug` on the command line or in `KOSLI_DEBUG`.
    pub fn debug(&self) -> bool {
        match &self.command {
            Command::Run(args) => args.kosli.debug,
            Command::Check(args) => args.kosli.debug,
            Command::Snapshot(args) => args.kosli.debug,
            Command::Crd => false,
        }
    }
}

/// The variable a flag reads: `--max-api-retries` reads `KOSLI_MAX_API_RETRIES`.
pub fn env_name(long: &str) -> String {
    format!("{ENV_PREFIX}{}", long.to_uppercase().replace('-', "_"))
}

/// Every flag of `command` and its subcommands that names no variable of its
/// own reads `KOSLI_<FLAG>`. Positional arguments read none, as in the CLI.
fn with_env(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| {
            if arg.get_env().is_some() || arg.is_positional() {
                return arg;
            }
            match arg.get_long().map(env_name) {
                Some(name) => arg.env(name),
                None => arg,
            }
        })
        .mut_subcommands(with_env)
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
    #[arg(
        short = 'H',
        long,
        env = "KOSLI_HOST",
        default_value = "https://app.kosli.com"
    )]
    pub host: String,

    /// Kosli organization.
    #[arg(long, env = "KOSLI_ORG", default_value = "")]
    pub org: String,

    /// Kosli API token. Prefer the environment variable or --api-token-file:
    /// command lines are visible to other processes. DRY_RUN means --dry-run,
    /// as in the Kosli CLI.
    #[arg(short = 'a', long, env = "KOSLI_API_TOKEN", hide_env_values = true)]
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
    #[arg(short = 'r', long, env = "KOSLI_MAX_API_RETRIES", default_value_t = 3)]
    pub max_api_retries: u32,

    /// Log at debug level, whatever RUST_LOG says.
    #[arg(long)]
    pub debug: bool,
}

impl KosliArgs {
    /// The API token is `DRY_RUN`: the Kosli CLI's other way to ask for a dry run.
    pub fn token_asks_dry_run(&self) -> bool {
        self.api_token.as_deref().map(str::trim) == Some(DRY_RUN_TOKEN)
    }

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

/// What `snapshot --output` prints in a dry run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DryRunOutput {
    /// One JSON document: the body, or with --config-file an object from
    /// environment name to body.
    #[default]
    Json,
    /// What the Kosli CLI prints: a banner, the URL and the body indented.
    Cli,
}

#[derive(Debug, Args)]
#[command(
    override_usage = "kosli-operator snapshot [OPTIONS] [k8s|kubernetes] <ENVIRONMENT-NAME>\n       kosli-operator snapshot [OPTIONS] [k8s|kubernetes] --config-file <FILE>"
)]
pub struct SnapshotArgs {
    /// The Kosli environment to report to (omit with --config-file), after
    /// an optional `k8s` or `kubernetes` as in `kosli snapshot k8s ENV`.
    #[arg(value_name = "ENVIRONMENT-NAME", num_args = 0..=2)]
    pub target: Vec<String>,

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
    #[arg(long, conflicts_with_all = ["namespaces", "namespaces_regex", "exclude_namespaces", "exclude_namespaces_regex"])]
    pub config_file: Option<PathBuf>,

    /// Read pods from this file (`kubectl get pods -A -o json`), or `-` for stdin,
    /// instead of asking a cluster.
    #[arg(long, value_name = "FILE|-", conflicts_with = "kubeconfig")]
    pub from_file: Option<PathBuf>,

    /// Kubeconfig to use (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(short = 'k', long)]
    pub kubeconfig: Option<PathBuf>,

    /// Print the request body on stdout and send nothing (also when the API
    /// token is DRY_RUN).
    #[arg(short = 'D', long, env = "KOSLI_DRY_RUN")]
    pub dry_run: bool,

    /// What a dry run prints.
    #[arg(short = 'o', long, value_enum, default_value_t = DryRunOutput::Json)]
    pub output: DryRunOutput,

    /// Create the Kosli environment (type K8S) when it does not exist, before
    /// listing its pods.
    #[arg(short = 'A', long, visible_alias = "auto-env")]
    pub auto_environment: bool,

    /// Description for an environment created by --auto-environment
    /// (default: the Kosli CLI's, "Auto-created by kosli snapshot").
    #[arg(long, default_value = "")]
    pub environment_description: String,

    /// Deprecated in the Kosli CLI, accepted here with a warning and no effect.
    #[arg(long, conflicts_with = "exclude_scaling")]
    pub include_scaling: bool,

    /// Deprecated in the Kosli CLI, accepted here with a warning and no effect.
    #[arg(long)]
    pub exclude_scaling: bool,

    #[command(flatten)]
    pub kosli: KosliArgs,
}

/// What the Kosli CLI's `snapshot` names the one kind of snapshot we take.
const KUBERNETES_WORDS: [&str; 2] = ["k8s", "kubernetes"];

/// The description of an environment `--auto-environment` creates, as the
/// Kosli CLI writes it.
pub const AUTO_ENVIRONMENT_DESCRIPTION: &str = "Auto-created by kosli snapshot";

impl SnapshotArgs {
    /// The environment named on the command line: `snapshot ENV` or
    /// `snapshot k8s ENV`; `None` with `--config-file` (then `snapshot k8s
    /// --config-file F` is fine, and any other name is a usage error).
    pub fn environment(&self) -> Result<Option<String>> {
        let usage = |text: String| crate::error::Error::Config(text);
        let name = match self.target.as_slice() {
            [] => None,
            [kind] if self.config_file.is_some() && KUBERNETES_WORDS.contains(&kind.as_str()) => {
                None
            }
            [name] => Some(name.clone()),
            [kind, name] if KUBERNETES_WORDS.contains(&kind.as_str()) => Some(name.clone()),
            [kind, _] => {
                return Err(usage(format!(
                    "snapshot takes one environment name, or `k8s` (or `kubernetes`) and one; got {kind:?} first"
                )));
            }
            _ => return Err(usage("snapshot takes at most two arguments".to_owned())),
        };
        match (&name, &self.config_file) {
            (Some(_), Some(_)) => Err(usage(
                "cannot use --config-file together with an environment name argument".to_owned(),
            )),
            (None, None) => Err(usage(
                "an ENVIRONMENT-NAME argument or --config-file is required".to_owned(),
            )),
            _ => Ok(name),
        }
    }

    /// A dry run: `--dry-run`, `KOSLI_DRY_RUN=true` or the token `DRY_RUN`.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run || self.kosli.token_asks_dry_run()
    }

    /// The description an environment created by `--auto-environment` gets.
    pub fn created_description(&self) -> &str {
        if self.environment_description.is_empty() {
            AUTO_ENVIRONMENT_DESCRIPTION
        } else {
            &self.environment_description
        }
    }

    pub fn namespace_lists(&self) -> NamespaceLists {
        NamespaceLists {
            namespaces: self.namespaces.clone(),
            namespaces_regex: self.namespaces_regex.clone(),
            exclude_namespaces: self.exclude_namespaces.clone(),
            exclude_namespaces_regex: self.exclude_namespaces_regex.clone(),
        }
    }
}

/// What `check` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CheckOutput {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The image, by tag or digest (e.g. registry.example.com/app:1.2 or app@sha256:...).
    pub image: String,

    /// The Kosli environment whose policies apply.
    #[arg(short = 'e', long, conflicts_with = "policies")]
    pub environment: Option<String>,

    /// Kosli policies to assert, instead of an environment's (comma-separated
    /// or repeated, as in `kosli assert artifact`).
    #[arg(long = "policy", value_delimiter = ',')]
    pub policies: Vec<String>,

    /// The artifact's fingerprint (sha256, 64 hex characters): checked as it
    /// is, without asking a registry; IMAGE is then only its name.
    #[arg(short = 'F', long)]
    pub fingerprint: Option<String>,

    /// `text` (the verdict and why), or `json` (Kosli's answer as it came).
    #[arg(short = 'o', long, value_enum, default_value_t = CheckOutput::Text)]
    pub output: CheckOutput,

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

    /// Report the KosliEnvironments in this file (manifests separated by
    /// `---`) instead of watching them in the cluster: no cluster-wide rights
    /// are needed with --watch-namespaces, and no status or Events are
    /// written (the log and the metrics say what they would). Read at start.
    #[arg(long, conflicts_with = "environment_selector")]
    pub environments_file: Option<PathBuf>,

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
    /// rollout reaches Kosli within about this long plus one report's upload,
    /// in one report per period.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
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

    /// Every flag of every command reads `KOSLI_<FLAG>`, but for the three
    /// that read a variable other systems set; positional arguments read none.
    #[test]
    fn every_flag_reads_its_kosli_variable() {
        const OWN: [(&str, &str); 3] = [
            ("lease-namespace", "POD_NAMESPACE"),
            ("registry-username", "REGISTRY_USERNAME"),
            ("registry-password", "REGISTRY_PASSWORD"),
        ];
        let cli = Cli::command_with_env();
        let mut flags = 0;
        for command in cli.get_subcommands() {
            for arg in command.get_arguments() {
                if arg.is_positional() {
                    assert_eq!(arg.get_env(), None, "{}", command.get_name());
                    continue;
                }
                let long = arg.get_long().expect("every flag has a long name");
                let expected = OWN
                    .iter()
                    .find(|(flag, _)| *flag == long)
                    .map_or_else(|| env_name(long), |(_, var)| (*var).to_owned());
                assert_eq!(
                    arg.get_env().and_then(|v| v.to_str()),
                    Some(expected.as_str()),
                    "{} --{long}",
                    command.get_name()
                );
                flags += 1;
            }
        }
        assert!(flags > 60, "{flags} flags seen");
        assert_eq!(
            env_name("exclude-namespaces-regex"),
            "KOSLI_EXCLUDE_NAMESPACES_REGEX"
        );
    }

    fn snapshot_args(args: &[&str]) -> std::result::Result<SnapshotArgs, clap::Error> {
        let cli = Cli::try_parse_with_env_from(["kosli-operator", "snapshot"].iter().chain(args))?;
        match cli.command {
            Command::Snapshot(args) => Ok(*args),
            _ => panic!("not snapshot"),
        }
    }

    #[test]
    fn snapshot_takes_the_clis_k8s_word_and_one_environment() {
        let environment = |args: &[&str]| snapshot_args(args).unwrap().environment();
        for args in [&["prod"][..], &["k8s", "prod"], &["kubernetes", "prod"]] {
            assert_eq!(
                environment(args).unwrap().as_deref(),
                Some("prod"),
                "{args:?}"
            );
        }
        // An environment named k8s is still an environment.
        assert_eq!(environment(&["k8s"]).unwrap().as_deref(), Some("k8s"));
        assert_eq!(
            environment(&["k8s", "--config-file", "c.yaml"]).unwrap(),
            None
        );
        assert_eq!(environment(&["--config-file", "c.yaml"]).unwrap(), None);
        for (args, needle) in [
            (&["docker", "prod"][..], "got \"docker\" first"),
            (
                &["prod", "--config-file", "c.yaml"],
                "cannot use --config-file together",
            ),
            (
                &["k8s", "prod", "--config-file", "c.yaml"],
                "cannot use --config-file together",
            ),
            (
                &[],
                "an ENVIRONMENT-NAME argument or --config-file is required",
            ),
        ] {
            let err = environment(args).unwrap_err();
            assert!(err.is_usage(), "{args:?}");
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
        assert!(
            snapshot_args(&["k8s", "a", "b"]).is_err(),
            "three arguments"
        );
    }

    #[test]
    fn the_clis_short_flags_and_spellings() {
        let args = snapshot_args(&[
            "prod",
            "-H",
            "https://kosli.example",
            "-a",
            "DRY_RUN",
            "-r",
            "5",
            "--auto-env",
            "--debug",
        ])
        .unwrap();
        assert_eq!(args.kosli.host, "https://kosli.example");
        assert_eq!(args.kosli.max_api_retries, 5);
        assert!(args.is_dry_run(), "the token DRY_RUN is a dry run");
        assert!(args.auto_environment && args.kosli.debug);
        assert_eq!(args.created_description(), AUTO_ENVIRONMENT_DESCRIPTION);
        let args = snapshot_args(&[
            "prod",
            "-a",
            "real-token",
            "--environment-description",
            "Shop",
        ])
        .unwrap();
        assert!(!args.is_dry_run());
        assert_eq!(args.created_description(), "Shop");
        assert_eq!(
            snapshot_args(&["prod", "-o", "cli"]).unwrap().output,
            DryRunOutput::Cli
        );
        assert!(snapshot_args(&["prod", "--include-scaling", "--exclude-scaling"]).is_err());
    }

    #[test]
    fn check_takes_policies_as_the_cli_does() {
        let check = |args: &[&str]| -> std::result::Result<CheckArgs, clap::Error> {
            let cli = Cli::try_parse_with_env_from(
                ["kosli-operator", "check", "app:1"].iter().chain(args),
            )?;
            match cli.command {
                Command::Check(args) => Ok(*args),
                _ => panic!("not check"),
            }
        };
        let args = check(&["--policy", "a,b", "--policy", "c", "-F", "x", "-o", "json"]).unwrap();
        assert_eq!(args.policies, ["a", "b", "c"]);
        assert_eq!(args.fingerprint.as_deref(), Some("x"));
        assert_eq!(args.output, CheckOutput::Json);
        assert!(
            check(&["--environment", "prod", "--policy", "a"]).is_err(),
            "exclusive"
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
