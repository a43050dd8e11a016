//! What each subcommand does; `main` only parses and dispatches.

pub mod check;
pub mod run;
pub mod snapshot;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::error::{Error, chain};

/// Exit code for input that cannot work (bad flags, config, files): as clap's usage errors.
pub const EXIT_USAGE: u8 = 2;

/// 2 for the user's input ([`Error::is_usage`]), 1 for a failure while running.
pub fn exit_code(e: &Error) -> ExitCode {
    if e.is_usage() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::FAILURE
    }
}

/// Logs the error with its sources and gives its exit code.
pub fn fail(e: &Error) -> ExitCode {
    tracing::error!("{}", chain(e));
    exit_code(e)
}

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
            // The command takes no input: a failure to render is never usage.
            Err(e) => {
                tracing::error!("{}", chain(&e));
                ExitCode::FAILURE
            }
        },
    }
}
