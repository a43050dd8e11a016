use std::process::ExitCode;

use clap::Parser;
use kosli_operator::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    kosli_operator::observe::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(kosli_operator::commands::dispatch(cli))
}
