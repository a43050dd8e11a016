//! The command line: flags and environment variables named as the Kosli CLI
//! names them, so users carry their habits over.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::NamespaceLists;
use crate::error::{Error, Result};
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
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// The client configuration; reads the token file.
    pub fn to_config(&self) -> Result<KosliConfig> {
        let token = match (&self.api_token, &self.api_token_file) {
            (_, Some(path)) => {
                std::fs::read_to_string(path)
                    .map(ApiToken::new)
                    .map_err(|source| Error::ReadFile {
                        path: path.clone(),
                        source,
                    })?
            }
            (Some(token), None) => ApiToken::new(token.clone()),
            (None, None) => ApiToken::new(""),
        };
        let mut config = KosliConfig::new(&self.host, &self.org, token);
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
