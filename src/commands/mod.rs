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

/// Runs the subcommand the command line names.
pub async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check(args) => check::run(*args).await,
        Command::Run(args) => run::run(*args).await,
        Command::Snapshot(args) => snapshot::run(*args).await,
        Command::Crd => match crate::core::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_exits_2_and_run_time_failures_exit_1() {
        let io = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let usage = Error::ReadFile {
            path: "/x".into(),
            source: io(),
        };
        assert_eq!(exit_code(&usage), ExitCode::from(EXIT_USAGE));
        let bind = Error::Io {
            what: "listen on --http-addr 127.0.0.1:8080".to_owned(),
            source: io(),
        };
        assert_eq!(exit_code(&bind), ExitCode::FAILURE);
        let metrics = Error::Metrics(prometheus::Error::AlreadyReg);
        assert_eq!(exit_code(&metrics), ExitCode::FAILURE);
    }
}
