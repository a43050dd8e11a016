use std::process::ExitCode;

use kosli_operator::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse_with_env();
    kosli_operator::observe::logging::init(cli.log_format, cli.debug());
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
