//! What each subcommand does; `main` only parses and dispatches.

pub mod check;
pub mod run;
pub mod snapshot;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Exit code for input that cannot work (bad flags, config, files): as clap's usage errors.
pub const EXIT_USAGE: u8 = 2;

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check(args) => check::run(*args).await,
        Command::Run(args) => run::run(*args).await,
        Command::Snapshot(args) => snapshot::run(*args).await,
        Command::Crd => match crate::core::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}
