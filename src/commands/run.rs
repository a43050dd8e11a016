//! `kosli-operator run`: the long-running reporter.
//!
//! Wiring only: clients, metrics, leader election, the HTTP endpoints, the three
//! watches. One cancellation token, fired by SIGTERM or SIGINT, stops them all;
//! the leader releases its Lease on the way out so a standby takes over at once,
//! but only once no report of ours is in flight any more.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;
use crate::environments::EnvironmentIndex;
use crate::error::{Error, Result};
use crate::gate::handler::{GateCluster, GateHandler};
use crate::k8s::events::EventPublisher;
use crate::k8s::leader::{self, Leadership, LeaseConfig};
use crate::k8s::store::{ClusterState, SharedState};
use crate::k8s::watches::Watches;
use crate::kosli::KosliClient;
use crate::observe::health::Health;
use crate::observe::metrics::Metrics;
use crate::reporter::{Reporter, ReporterOptions, Wiring};

/// How long a report in flight at shutdown may take to end before it is
/// abandoned. With the Lease's release (at most its renew deadline) and the
/// other tasks' 10 s, shutdown stays within Kubernetes' default 30 s grace.
const REPORT_GRACE: Duration = Duration::from_secs(12);

pub async fn run(args: RunArgs) -> ExitCode {
    match start(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
fn on_signals(token: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handle = |kind, name: &str| {
        signal(kind).map_err(|source| Error::Io {
            what: format!("handle {name}"),
            source,
        })
    };
    let mut term = handle(SignalKind::terminate(), "SIGTERM")?;
    let mut int = handle(SignalKind::interrupt(), "SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    Ok(())
}

fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "kosli-operator".to_owned());
    format!("{base}-{:06x}", fastrand::u32(..0x100_0000))
}

async fn start(args: RunArgs) -> Result<()> {
    // One watch per scope: two into one store would clobber each other's lists.
    let scopes = args.watch_scopes()?;
    let watch_namespaces: Option<Vec<String>> = scopes.iter().cloned().collect();
    let fixed = match &args.environments_file {
        Some(path) => Some(fixed_environments(path, watch_namespaces.as_deref())?),
        None => None,
    };
    let shutdown = CancellationToken::new();
    on_signals(shutdown.clone())?;
    let metrics = Arc::new(Metrics::new().map_err(Error::Metrics)?);
    let kosli = if args.dry_run || args.kosli.token_asks_dry_run() {
        tracing::warn!("dry run: reports are logged, nothing is sent to Kosli");
        None
    } else {
        Some(KosliClient::new(&args.kosli.to_config()?)?.with_observer(metrics.clone()))
    };
    let client = crate::k8s::client::client(args.kubeconfig.as_deref()).await?;
    let identity = identity();

    // Keeps the always-leader channel open when election is off.
    let mut _always_leader = None;
    // The Lease is released on its own token, fired only after the reporter's
    // workers have ended: a report still in flight would overlap the next
    // leader's.
    let release = CancellationToken::new();
    let (leadership, leader_task) = if args.leader_election {
        let config = LeaseConfig {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            lease_duration: args.lease_duration,
            renew_deadline: args.lease_renew_deadline,
            retry_period: args.lease_retry_period,
        };
        config.validate()?;
        let (leadership, task) = leader::spawn(client.clone(), config, release.clone());
        (leadership, Some(task))
    } else {
        let (leadership, tx) = Leadership::unbounded();
        _always_leader = Some(tx);
        (leadership, None)
    };
    mirror_leadership(leadership.watch(), metrics.clone());

    let options = ReporterOptions {
        debounce: args.debounce,
        max_debounce: args.max_debounce.max(args.debounce),
        dry_run: args.dry_run || args.kosli.token_asks_dry_run(),
        watch_namespaces,
        environment_selector: args.environment_selector.clone(),
        write_status: fixed.is_none(),
        ..ReporterOptions::default()
    };
    let events = if fixed.is_some() {
        // No KosliEnvironment object for an Event to be about: logged instead.
        EventPublisher::log_only()
    } else {
        EventPublisher::new(client.clone(), args.events_namespace.clone(), identity)
    };
    let state = Arc::new(SharedState::new(ClusterState::new(scopes.clone())));
    let environments = Arc::new(EnvironmentIndex::new(options.watch_namespaces.clone()));
    let reporter = Arc::new(Reporter::new(
        options,
        Wiring {
            client: client.clone(),
            kosli,
            state: state.clone(),
            environments: environments.clone(),
            metrics: metrics.clone(),
            leadership,
            events: events.clone(),
            shutdown: shutdown.clone(),
        },
    ));
    let gate = match args.gate.webhook_addr {
        Some(_) => Some(gate_handler(
            &args,
            GateCluster {
                client: client.clone(),
                state: state.clone(),
                environments,
                events,
                metrics: metrics.clone(),
            },
        )?),
        None => None,
    };
    let readiness = Arc::new(Readiness {
        reporter: reporter.clone(),
        gate: gate.clone(),
    });
    let http =
        crate::observe::health::serve(args.http_addr, metrics.clone(), readiness, shutdown.clone())
            .await?;
    let webhook = match (args.gate.webhook_addr, gate) {
        (Some(addr), Some(handler)) => {
            Some(serve_gate(&args, addr, handler, shutdown.clone()).await?)
        }
        _ => None,
    };

    let watches = Arc::new(Watches {
        client,
        state,
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        environment_selector: args.environment_selector.clone(),
        listener: reporter.clone(),
        stale_view_after: args.stale_view_after,
        label_keys: watch::channel(0).0,
    });
    let mut tasks = Vec::new();
    // Namespace labels are read cluster-wide: from a file of environments
    // that select by none, an operator with namespaced rights needs none.
    let by_namespace_labels = fixed
        .as_ref()
        .is_none_or(|envs| envs.iter().any(|e| e.spec.namespace_selector.is_some()));
    if by_namespace_labels {
        tasks.push(tokio::spawn(crate::k8s::watches::watch_namespaces(
            watches.clone(),
        )));
    }
    match fixed {
        Some(envs) => crate::k8s::watches::fixed_environments(&watches, envs),
        None => tasks.push(tokio::spawn(crate::k8s::watches::watch_environments(
            watches.clone(),
        ))),
    }
    for scope in scopes {
        tasks.push(tokio::spawn(crate::k8s::watches::watch_pods(
            watches.clone(),
            scope,
        )));
    }
    tracing::info!("kosli-operator started");

    shutdown.cancelled().await;
    // First every report ends (or is abandoned), and only then is the Lease
    // released: until then it is renewed, so no one else may report yet.
    reporter.stop_workers(REPORT_GRACE).await;
    release.cancel();
    let stopping = async {
        if let Some(task) = leader_task {
            let _ = task.await;
        }
        for task in tasks {
            let _ = task.await;
        }
        let _ = http.await;
        if let Some(webhook) = webhook {
            let _ = webhook.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 10 s");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The environments of `--environments-file`, each one servable: with no
/// status to show an invalid spec later, it stops the start instead.
fn fixed_environments(
    path: &std::path::Path,
    watch_namespaces: Option<&[String]>,
) -> Result<Vec<crate::core::crd::KosliEnvironment>> {
    let envs = crate::cli::environments_file::read(path)?;
    for env in &envs {
        let compiled =
            crate::environments::IndexedEnvironment::compile(env.clone(), watch_namespaces);
        if let Err(invalid) = &compiled.selection {
            return Err(Error::Config(format!(
                "--environments-file {}: KosliEnvironment {}: {}",
                path.display(),
                compiled.object,
                invalid.message
            )));
        }
    }
    Ok(envs)
}

fn mirror_leadership(mut leader: watch::Receiver<bool>, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        loop {
            let leading = *leader.borrow_and_update();
            metrics.leader.set(i64::from(leading));
            if leader.changed().await.is_err() {
                return;
            }
        }
    });
}

/// `/readyz`: every part that runs is ready.
struct Readiness {
    reporter: Arc<Reporter>,
    gate: Option<GateHandler>,
}

impl Health for Readiness {
    fn is_ready(&self) -> bool {
        self.reporter.is_ready() && self.gate.as_ref().is_none_or(GateHandler::is_ready)
    }
}

/// The admission gate: its own Kosli client (no retries, bounded by the review
/// deadline), the registry client, the resolver and the HTTPS server.
fn gate_handler(args: &RunArgs, cluster: GateCluster) -> Result<GateHandler> {
    use crate::gate::decision::BreakGlassAuthority;
    use crate::gate::handler::GateOptions;
    use crate::gate::registry::{RegistryClient, RegistryConfig};
    use crate::gate::resolver::{Resolver, ResolverOptions};

    let deadline = args.gate.deadline();
    let kosli = if args.dry_run || args.kosli.token_asks_dry_run() {
        None
    } else {
        let mut config = args.kosli.to_config()?;
        config.retry.max_retries = 0;
        config.request_timeout = deadline;
        config.connect_timeout = deadline.min(config.connect_timeout);
        Some(KosliClient::new(&config)?.with_observer(cluster.metrics.clone()))
    };
    let ca_bundle = match &args.gate.registry_ca_bundle {
        Some(path) => Some(std::fs::read(path).map_err(|source| Error::ReadFile {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let registry = RegistryClient::new(&RegistryConfig {
        request_timeout: deadline,
        connect_timeout: deadline.min(Duration::from_secs(5)),
        ca_bundle,
        plain_http: args.gate.insecure_registries.clone(),
        token_hosts: args.gate.registry_token_hosts.clone(),
        ..RegistryConfig::default()
    })?;
    let options = ResolverOptions {
        compliant_ttl: args.gate.gate_compliant_cache,
        non_compliant_ttl: args.gate.gate_non_compliant_cache,
        max_lookups: args.gate.gate_max_lookups as usize,
        lookup_timeout: deadline,
        ..ResolverOptions::default()
    };
    let resolver =
        Arc::new(Resolver::new(registry, kosli, options).with_observer(cluster.metrics.clone()));
    let mut exempt: std::collections::BTreeSet<String> =
        args.gate.gate_exempt_namespaces.iter().cloned().collect();
    exempt.insert("kube-system".to_owned());
    exempt.insert(args.lease_namespace.clone());
    Ok(GateHandler::new(
        cluster,
        resolver,
        GateOptions {
            exempt_namespaces: exempt,
            pull_secrets: args.gate.gate_pull_secrets,
            max_pull_secrets: args.gate.gate_max_pull_secrets,
            max_lookups_per_review: args.gate.gate_max_lookups_per_review,
            require_digests: args.gate.gate_require_digests,
            break_glass: BreakGlassAuthority {
                users: non_empty(&args.gate.gate_break_glass_users),
                groups: non_empty(&args.gate.gate_break_glass_groups),
            },
            ..GateOptions::new(deadline)
        },
    ))
}

/// The gate's HTTPS server, its limits following `--webhook-timeout` so that
/// no request outlives the API server's patience.
async fn serve_gate(
    args: &RunArgs,
    addr: std::net::SocketAddr,
    handler: GateHandler,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let deadline = args.gate.deadline();
    let mut config = crate::gate::server::WebhookConfig::new(
        addr,
        args.gate.webhook_cert.clone(),
        args.gate.webhook_key.clone(),
    );
    config.request_timeout = args.gate.server_timeout();
    config.max_connections = args.gate.webhook_max_connections;
    config.client_ca_file = args.gate.webhook_client_ca.clone();
    let (bound, task) = crate::gate::server::serve(config, Arc::new(handler), shutdown).await?;
    tracing::info!(addr = %bound, deadline_ms = deadline.as_millis() as u64, "admission gate serving /validate");
    Ok(task)
}

/// The chart renders `--gate-break-glass-groups=` for an empty list: nobody.
fn non_empty(names: &[String]) -> std::collections::BTreeSet<String> {
    names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}
