//! `kosli-operator snapshot`: report each environment's running pods once.
//!
//! Environments fail alone: a list error or a Kosli error fails that environment,
//! the others still report, and the exit code says something failed. A failed
//! list is never reported as fewer pods.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::SnapshotArgs;
use crate::cli::config_file::{self, EnvironmentTarget};
use crate::core::pod::PodRecord;
use crate::core::snapshot::{self, Snapshot};
use crate::error::{Error, Result, chain};
use crate::k8s::client::PodLister;
use crate::kosli::{EnsureOutcome, KosliClient};

/// Where the pods come from.
enum PodSource {
    File(Vec<PodRecord>),
    Cluster(PodLister),
}

impl PodSource {
    /// The pods the target selects, or why they cannot be known.
    async fn select(&mut self, target: &EnvironmentTarget) -> Result<Vec<PodRecord>> {
        let selection = &target.selection;
        let keep = |p: &&PodRecord| selection.selects_pod(&p.namespace, None, &p.labels);
        Ok(match self {
            PodSource::File(pods) => pods.iter().filter(keep).cloned().collect(),
            PodSource::Cluster(lister) => {
                let lists: Vec<Arc<Vec<PodRecord>>> =
                    lister.pods_for(&selection.namespaces).await?;
                lists
                    .iter()
                    .flat_map(|l| l.iter())
                    .filter(keep)
                    .cloned()
                    .collect()
            }
        })
    }
}

pub async fn run(args: SnapshotArgs) -> ExitCode {
    let targets = match targets(&args) {
        Ok(targets) => targets,
        Err(e) => return super::fail(&e),
    };
    let kosli = if args.dry_run {
        None
    } else {
        match args.kosli.to_config().and_then(|c| KosliClient::new(&c)) {
            Ok(client) => Some(client),
            Err(e) => return super::fail(&e),
        }
    };
    let mut source = match &args.from_file {
        Some(path) => match crate::k8s::pod_file::read_pod_list(path) {
            Ok(pods) => PodSource::File(pods),
            Err(e) => return super::fail(&e),
        },
        None => match crate::k8s::client::client(args.kubeconfig.as_deref()).await {
            Ok(client) => PodSource::Cluster(PodLister::new(client)),
            Err(e) => return super::fail(&e),
        },
    };

    let mut failed = 0;
    let mut dry_run_bodies: Vec<(String, Vec<u8>)> = Vec::new();
    for target in &targets {
        let outcome = match source.select(target).await {
            Ok(pods) => {
                let snap = snapshot::build(&pods, target.selection.containers);
                for warning in &snap.warnings {
                    tracing::warn!(environment = %target.name, "{warning}");
                }
                match &kosli {
                    None => {
                        dry_run_bodies.push((target.name.clone(), snap.body));
                        Ok(())
                    }
                    Some(client) => report(client, &args, target, snap).await,
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            failed += 1;
            tracing::error!(environment = %target.name, "environment not reported: {}", chain(&e));
        }
    }

    if args.dry_run
        && let Err(e) = print_dry_run(args.config_file.is_some(), &dry_run_bodies)
    {
        tracing::error!("failed to write the dry-run output: {e}");
        return ExitCode::FAILURE;
    }
    if failed > 0 {
        tracing::error!(
            "{failed} of {} environments were not reported",
            targets.len()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn targets(args: &SnapshotArgs) -> Result<Vec<EnvironmentTarget>> {
    match (&args.config_file, &args.environment) {
        (Some(path), _) => config_file::read_config_file(path),
        (None, Some(name)) => Ok(vec![config_file::single_target(
            name,
            &args.namespace_lists(),
        )?]),
        (None, None) => Err(Error::Config(
            "an ENVIRONMENT-NAME argument or --config-file is required".to_owned(),
        )),
    }
}

async fn report(
    client: &KosliClient,
    args: &SnapshotArgs,
    target: &EnvironmentTarget,
    snap: Snapshot,
) -> Result<()> {
    if args.auto_environment
        && client
            .ensure_environment(&target.name, &args.environment_description)
            .await?
            == EnsureOutcome::Created
    {
        tracing::info!(environment = %target.name, "environment {} was created", target.name);
    }
    let pods = snap.pod_count;
    client.report_k8s(&target.name, snap.body).await?;
    tracing::info!(environment = %target.name, "[{pods}] pods were reported to environment {}", target.name);
    Ok(())
}

/// Exactly one JSON document on stdout: the body, or with a config file an object
/// from environment name to body.
fn print_dry_run(keyed: bool, bodies: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    let mut out = Vec::new();
    if keyed {
        out.push(b'{');
        for (i, (name, body)) in bodies.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, name)?;
            out.push(b':');
            out.extend_from_slice(body);
        }
        out.push(b'}');
    } else if let Some((_, body)) = bodies.first() {
        out.extend_from_slice(body);
    } else {
        return Ok(());
    }
    out.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()
}
