//! `kosli-operator check IMAGE --environment ENV`: the gate's resolution and
//! verdict from the command line, exit 0 when compliant, 1 when not.

use std::process::ExitCode;

use crate::cli::CheckArgs;
use crate::core::crd::GateMode;
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
            Ok(Resolver::new(
                registry,
                Some(kosli),
                ResolverOptions::default(),
            ))
        });
    let resolver = match setup {
        Ok(resolver) => resolver,
        Err(e) => return super::fail(&e),
    };
    let credentials = match (&args.registry_username, &args.registry_password) {
        (Some(username), Some(password)) => Some(RegistryCredentials {
            username: username.clone(),
            password: password.clone(),
        }),
        _ => None,
    };
    let environment = args.environment.clone().unwrap_or_default();
    let verdict = match resolver.fingerprint(&args.image, credentials).await {
        Ok(digest) => {
            println!("{} -> sha256:{digest}", args.image);
            resolver
                .verdict(&digest, &environment, &args.policies)
                .await
        }
        Err(e) => ImageVerdict::Unresolvable {
            why: crate::error::chain(&e),
        },
    };
    let target = Target {
        object: String::new(),
        kosli_env: if environment.is_empty() {
            "any environment".to_owned()
        } else {
            environment
        },
        mode: GateMode::Enforce,
        policies: args.policies.clone(),
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
