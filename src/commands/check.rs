//! `kosli-operator check IMAGE --environment ENV`: the gate's resolution and
//! verdict from the command line, exit 0 when compliant, 1 when not.
//!
//! As `kosli assert artifact`: `--environment` or `--policy` (comma-separated
//! or repeated), never both; `--fingerprint` checks a known fingerprint
//! without asking a registry; `-o json` prints Kosli's answer as it came.

use std::process::ExitCode;

use crate::cli::{CheckArgs, CheckOutput};
use crate::core::crd::{GateMode, UnknownArtifacts};
use crate::error::{Error, Result};
use crate::gate::decision::{ImageVerdict, Target, answer};
use crate::gate::registry::{RegistryClient, RegistryConfig, RegistryCredentials};
use crate::gate::resolver::{Resolver, ResolverOptions};
use crate::kosli::KosliClient;

pub async fn run(args: CheckArgs) -> ExitCode {
    let setup = args
        .kosli
        .to_config()
        .and_then(|c| KosliClient::new(&c))
        .and_then(|kosli| {
            let registry = RegistryClient::new(&RegistryConfig {
                plain_http: args.insecure_registries.clone(),
                ..RegistryConfig::default()
            })?;
            let resolver = Resolver::new(registry, Some(kosli.clone()), ResolverOptions::default());
            Ok((kosli, resolver))
        });
    let (kosli, resolver) = match setup {
        Ok(setup) => setup,
        Err(e) => return super::fail(&e),
    };
    let given = match given_fingerprint(&args) {
        Ok(given) => given,
        Err(e) => return super::fail(&e),
    };
    let environment = args.environment.clone().unwrap_or_default();
    let digest = match given {
        Some(hex) => Ok(hex),
        None => fingerprint(&args, &resolver).await,
    };
    let digest = match digest {
        Ok(digest) => digest,
        Err(e) if args.output == CheckOutput::Json => return super::fail(&e),
        Err(e) => {
            let verdict = ImageVerdict::Unresolvable {
                why: crate::error::chain(&e),
            };
            return print_verdict(&args, environment, verdict);
        }
    };
    if args.output == CheckOutput::Text {
        println!("{} -> sha256:{digest}", args.image);
    }
    match args.output {
        CheckOutput::Json => print_answer(&kosli, &args, &digest).await,
        CheckOutput::Text => {
            let verdict = resolver
                .verdict(&digest, &environment, &args.policies)
                .await;
            print_verdict(&args, environment, verdict)
        }
    }
}

/// `--fingerprint`, without its `sha256:` prefix; a usage error when it is
/// not a sha256 fingerprint.
fn given_fingerprint(args: &CheckArgs) -> Result<Option<String>> {
    let Some(given) = &args.fingerprint else {
        return Ok(None);
    };
    let hex = given.trim().trim_start_matches("sha256:");
    if !crate::core::fingerprint::is_sha256_hex(hex) {
        return Err(Error::Config(format!(
            "--fingerprint {given:?} is not a sha256 fingerprint (64 lowercase hex characters)"
        )));
    }
    Ok(Some(hex.to_owned()))
}

/// The image's digest, from its reference or its registry.
async fn fingerprint(args: &CheckArgs, resolver: &Resolver) -> Result<String> {
    let credentials = match (&args.registry_username, &args.registry_password) {
        (Some(username), Some(password)) => Some(RegistryCredentials {
            username: username.clone(),
            password: password.clone(),
        }),
        _ => None,
    };
    resolver.fingerprint(&args.image, credentials).await
}

/// Kosli's answer, pretty-printed; exit 0 when it says compliant.
async fn print_answer(kosli: &KosliClient, args: &CheckArgs, digest: &str) -> ExitCode {
    let environment = args.environment.as_deref();
    match kosli
        .assert_artifact_json(digest, environment, &args.policies)
        .await
    {
        Ok(Some(answer)) => {
            match serde_json::to_string_pretty(&answer) {
                Ok(text) => println!("{text}"),
                Err(e) => {
                    tracing::error!("failed to print Kosli's answer: {e}");
                    return ExitCode::FAILURE;
                }
            }
            if answer.get("compliant") == Some(&serde_json::Value::Bool(true)) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(None) => {
            tracing::error!(
                "Kosli has never seen fingerprint {digest} (no artifact with it was reported): unknown, not compliant"
            );
            ExitCode::FAILURE
        }
        Err(e) => super::fail(&e),
    }
}

fn print_verdict(args: &CheckArgs, environment: String, verdict: ImageVerdict) -> ExitCode {
    let target = Target {
        object: String::new(),
        kosli_env: if environment.is_empty() {
            "any environment".to_owned()
        } else {
            environment
        },
        mode: GateMode::Enforce,
        policies: args.policies.clone(),
        unknown_artifacts: UnknownArtifacts::Deny,
        require_digest: false,
    };
    let compliant = matches!(verdict, ImageVerdict::Compliant { .. });
    let result = answer(&[(target, args.image.clone(), verdict)]);
    if compliant {
        println!("compliant");
        ExitCode::SUCCESS
    } else {
        for line in result.failures {
            println!("{line}");
        }
        ExitCode::FAILURE
    }
}
