//! `kosli-operator snapshot`: report each environment's running pods once.
//!
//! Environments fail alone: a list error or a Kosli error fails that environment,
//! the others still report, and the exit code says something failed. A failed
//! list is never reported as fewer pods. As in the Kosli CLI, an environment
//! `--auto-environment` creates is created before its pods are listed.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::config_file::{self, EnvironmentTarget};
use crate::cli::{DryRunOutput, SnapshotArgs};
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

/// The Kosli CLI's words for its deprecated scaling flags.
const SCALING_DEPRECATED: &str = "this flag is deprecated and will be removed in a future version. Scaling events do not trigger new snapshots.";

pub async fn run(args: SnapshotArgs) -> ExitCode {
    let targets = match targets(&args) {
        Ok(targets) => targets,
        Err(e) => return super::fail(&e),
    };
    warn_of_ignored_flags(&args);
    let dry_run = args.is_dry_run();
    let kosli = if dry_run {
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
        let outcome = match &kosli {
            Some(client) => report(client, &mut source, &args, target).await,
            None => dry_run_body(&mut source, &args, target)
                .await
                .map(|body| dry_run_bodies.push((target.name.clone(), body))),
        };
        if let Err(e) = outcome {
            failed += 1;
            tracing::error!(environment = %target.name, "environment not reported: {}", chain(&e));
        }
    }

    let printed = match args.output {
        _ if !dry_run => Ok(()),
        DryRunOutput::Json => print_dry_run(args.config_file.is_some(), &dry_run_bodies),
        DryRunOutput::Cli => print_as_the_cli(&args, &dry_run_bodies),
    };
    if let Err(e) = printed {
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
    match (&args.config_file, args.environment()?) {
        (Some(path), _) => config_file::read_config_file(path),
        (None, Some(name)) => Ok(vec![config_file::single_target(
            &name,
            &args.namespace_lists(),
        )?]),
        (None, None) => Err(Error::Config(
            "an ENVIRONMENT-NAME argument or --config-file is required".to_owned(),
        )),
    }
}

/// The Kosli CLI's warnings for flags that do nothing here.
fn warn_of_ignored_flags(args: &SnapshotArgs) {
    for (set, flag) in [
        (args.include_scaling, "include-scaling"),
        (args.exclude_scaling, "exclude-scaling"),
    ] {
        if set {
            tracing::warn!("Flag --{flag} has been deprecated, {SCALING_DEPRECATED}");
        }
    }
    let optional_set =
        !args.environment_description.is_empty() || args.include_scaling || args.exclude_scaling;
    if optional_set && !args.auto_environment {
        tracing::warn!(
            "--environment-description, --include-scaling and --exclude-scaling are ignored unless --auto-environment is set"
        );
    }
}

/// The environment first (with `--auto-environment`), then its pods.
async fn report(
    client: &KosliClient,
    source: &mut PodSource,
    args: &SnapshotArgs,
    target: &EnvironmentTarget,
) -> Result<()> {
    if args.auto_environment {
        match client
            .ensure_environment(&target.name, args.created_description())
            .await?
        {
            EnsureOutcome::Created => {
                tracing::info!(environment = %target.name, "environment {} was created", target.name);
            }
            EnsureOutcome::Existed(_) if !args.environment_description.is_empty() => {
                tracing::warn!(environment = %target.name,
                    "environment {} already exists; --environment-description, --include-scaling and --exclude-scaling are ignored",
                    target.name);
            }
            EnsureOutcome::Existed(_) => {}
        }
    }
    let snap = build(source, target).await?;
    let pods = snap.pod_count;
    client.report_k8s(&target.name, snap.body).await?;
    tracing::info!(environment = %target.name, "[{pods}] pods were reported to environment {}", target.name);
    Ok(())
}

/// The body a dry run prints; nothing is asked of Kosli.
async fn dry_run_body(
    source: &mut PodSource,
    args: &SnapshotArgs,
    target: &EnvironmentTarget,
) -> Result<Vec<u8>> {
    if args.auto_environment {
        let note = format!(
            "dry-run: environment {} would be created with type K8S if it does not exist",
            target.name
        );
        match args.output {
            DryRunOutput::Cli => println!("{note}"),
            DryRunOutput::Json => tracing::info!(environment = %target.name, "{note}"),
        }
    }
    Ok(build(source, target).await?.body)
}

async fn build(source: &mut PodSource, target: &EnvironmentTarget) -> Result<Snapshot> {
    let pods = source.select(target).await?;
    let snap = snapshot::build(&pods, target.selection.containers);
    for warning in &snap.warnings {
        tracing::warn!(environment = %target.name, "{warning}");
    }
    tracing::debug!(environment = %target.name, selected = pods.len(), reported = snap.pod_count,
        bytes = snap.body.len(), "report built");
    Ok(snap)
}

/// What the Kosli CLI prints for a dry run, environment by environment: a
/// banner, the URL the PUT would go to, and the body indented as Go's
/// `json.Indent` indents it (four spaces).
fn print_as_the_cli(args: &SnapshotArgs, bodies: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    let mut out = String::new();
    for (name, body) in bodies {
        let url = crate::kosli::report_url(&args.kosli.host, &args.kosli.org, name)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        out.push_str("############### THIS IS A DRY-RUN  ###############\n");
        out.push_str(&format!("the request would have been sent to: {url}\n"));
        out.push_str("this is the payload that would be sent in a real run: \n ");
        out.push_str(&indent_as_go(body));
        out.push('\n');
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()
}

/// Compact JSON indented by four spaces per level, as Go's `json.Indent`
/// writes it: `": "` after keys, empty objects and arrays kept as `{}` and
/// `[]`, strings copied byte for byte.
fn indent_as_go(json: &[u8]) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        out.extend(std::iter::repeat_n("    ", depth));
    }
    let text = String::from_utf8_lossy(json);
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut opened = false;
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if opened {
            opened = false;
            if c == '}' || c == ']' {
                depth = depth.saturating_sub(1);
                out.push(c);
                continue;
            }
            newline(&mut out, depth);
        }
        match c {
            '{' | '[' => {
                out.push(c);
                depth += 1;
                opened = true;
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            '"' => {
                in_string = true;
                out.push(c);
            }
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_indented_as_go_indents_them() {
        assert_eq!(
            indent_as_go(br#"{"artifacts":[]}"#),
            "{\n    \"artifacts\": []\n}"
        );
        assert_eq!(
            indent_as_go(br#"{"a":[{"b":"x,{:}\"\\","c":1,"d":null,"e":{}}]}"#),
            concat!(
                "{\n",
                "    \"a\": [\n",
                "        {\n",
                "            \"b\": \"x,{:}\\\"\\\\\",\n",
                "            \"c\": 1,\n",
                "            \"d\": null,\n",
                "            \"e\": {}\n",
                "        }\n",
                "    ]\n",
                "}"
            )
        );
    }
}
